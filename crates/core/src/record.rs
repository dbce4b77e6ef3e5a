//! Saving and loading modules and optimizer states as safetensors files.
//!
//! A module's file holds every tensor under its path in the module
//! (`encoder.fc1.weight`). An optimizer's holds each parameter's Adam
//! moments under the parameter's path (`encoder.fc1.weight.moment_1`),
//! with its step count in the header (`encoder.fc1.weight.time`): state is
//! matched to parameters by where they sit in the module, not by burn's
//! random parameter ids. Both are plain safetensors that other tools read.
//!
//! burn's own recorders (serde records) are not used: their code is
//! generated for every model type and was a third of each training
//! binary's compiled code. Loading also checks what they leave out: every
//! tensor's shape against the module it loads into (burn's recorders give
//! the module the file's shapes), and no tensor missing or left over.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::record::AdaptorRecord;
use burn::optim::{Adam, AdamState, AdaptiveMomentumState, Optimizer, SimpleOptimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn_store::{ApplyError, ModuleSnapshot, SafetensorsStore, SafetensorsStoreError};

use crate::error::{Error, Result};
use crate::weights::{NamedTensors, read_safetensors, write_safetensors};

/// The file a module or optimizer state named `stem` is written to
/// (`stem.safetensors`).
pub fn record_file(stem: &Path) -> PathBuf {
    stem.with_extension("safetensors")
}

/// Every float tensor of a module with its dotted path and shape, in visit order.
pub fn param_shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    struct Shapes {
        path: Vec<String>,
        out: Vec<(String, Vec<usize>)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.out
                .push((self.path.join("."), param.val().dims().to_vec()));
        }
    }
    let mut v = Shapes {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

/// Number of trainable scalars: every float tensor except non-trainable
/// state, which by convention lives in fields named `running_*` (burn's
/// BatchNorm statistics, genzoo's spectral-norm vectors). burn's
/// `num_params` counts that state too.
pub fn trainable_params<B: Backend, M: Module<B>>(module: &M) -> usize {
    param_shapes::<B, M>(module)
        .iter()
        .filter(|(path, _)| is_trainable(path))
        .map(|(_, shape)| shape.iter().product::<usize>())
        .sum()
}

/// Whether the tensor at dotted `path` is trainable (not a `running_*` field).
fn is_trainable(path: &str) -> bool {
    !path
        .rsplit('.')
        .next()
        .unwrap_or("")
        .starts_with("running_")
}

/// The values of the trainable parameters only (see [`trainable_params`]),
/// flattened in visit order.
pub fn trainable_values<B: Backend, M: Module<B>>(module: &M) -> Vec<f32> {
    let shapes = param_shapes::<B, M>(module);
    let values = param_values::<B, M>(module);
    let mut out = Vec::new();
    let mut offset = 0;
    for (path, shape) in shapes {
        let len: usize = shape.iter().product();
        if is_trainable(&path) {
            out.extend_from_slice(&values[offset..offset + len]);
        }
        offset += len;
    }
    out
}

/// Every float parameter's values, flattened and concatenated in visit
/// order: two modules of one architecture compare equal exactly when their
/// weights do (used by resume and equivalence tests).
pub fn param_values<B: Backend, M: Module<B>>(module: &M) -> Vec<f32> {
    struct Values(Vec<f32>);
    impl<B: Backend> ModuleVisitor<B> for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let data = param.val().into_data().convert::<f32>();
            self.0
                .extend(data.to_vec::<f32>().expect("f32 after convert"));
        }
    }
    let mut v = Values(Vec::new());
    module.visit(&mut v);
    v.0
}

/// Materialises a module's lazily initialised parameters in place.
///
/// burn initialises parameters on first use; a clone taken before that
/// initialises *its own* random values under the same parameter ids. Call
/// this before cloning a fresh module (EMA copies, saving, threads).
pub fn force_init<B: Backend, M: Module<B>>(module: &M) {
    struct Touch;
    impl<B: Backend> ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
}

/// Saves every tensor of `module` to `stem.safetensors`, named by its path.
pub fn save_module<B: Backend, M: Module<B>>(module: &M, stem: &Path) -> Result<()> {
    let file = record_file(stem);
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    // burn's RunningState (BatchNorm's statistics) keeps a step's update
    // apart until it is synced, and visitors (the store's) read the value
    // from before it. Taking a record syncs; a clone shares the state (once
    // initialised: a lazy parameter's clone would draw its own values).
    force_init(module);
    let _ = module.clone().into_record();
    let mut store = SafetensorsStore::from_file(&file).overwrite(true);
    module.save_into(&mut store).map_err(|e| {
        // A full disk in the OS's words, without burn-store's wrappers.
        let reason = match e {
            SafetensorsStoreError::Io(e)
            | SafetensorsStoreError::Safetensors(safetensors::SafeTensorError::IoError(e)) => {
                e.to_string()
            }
            e => e.to_string(),
        };
        Error::checkpoint(&file, format!("cannot write weights: {reason}"))
    })?;
    crate::weights::sort_header(&file)
}

/// Loads `stem.safetensors` into `module` (on the module's device). Refused,
/// naming the tensor: a shape that differs from the module's, a tensor the
/// file lacks, or one the module lacks (a checkpoint of another
/// architecture or config).
pub fn load_module<B: Backend, M: Module<B>>(mut module: M, stem: &Path) -> Result<M> {
    let file = record_file(stem);
    if !file.exists() {
        return Err(Error::checkpoint(&file, "file is missing"));
    }
    let mut store = SafetensorsStore::from_file(&file)
        .validate(false)
        .allow_partial(true);
    let applied = module
        .load_from(&mut store)
        .map_err(|e| Error::checkpoint(&file, format!("not a weights file: {e}")))?;
    let other = "it was saved from another architecture or config";
    if let Some(error) = applied.errors.first() {
        let why = match error {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => format!(
                "tensor '{path}' has shape {:?} in the file but {:?} in the model: {other}",
                found.to_vec(),
                expected.to_vec()
            ),
            error => format!("{error}"),
        };
        return Err(Error::checkpoint(&file, why));
    }
    if let Some((path, _)) = applied.missing.first() {
        return Err(Error::checkpoint(
            &file,
            format!("has no tensor '{path}', which the model has: {other}"),
        ));
    }
    if let Some(path) = applied.unused.first() {
        return Err(Error::checkpoint(
            &file,
            format!("holds tensor '{path}', which the model lacks: {other}"),
        ));
    }
    Ok(module)
}

/// An optimizer whose per-parameter state is burn's `AdamState` (burn's
/// `Adam`, genzoo's `FusedAdam`): what [`save_optimizer`] writes.
pub trait AdamStated<B: Backend>: SimpleOptimizer<B> {
    /// The state as burn's `AdamState`.
    fn to_adam<const D: usize>(state: Self::State<D>) -> AdamState<B, D>;
    /// The state from burn's `AdamState`.
    fn from_adam<const D: usize>(state: AdamState<B, D>) -> Self::State<D>;
}

impl<B: Backend> AdamStated<B> for Adam {
    fn to_adam<const D: usize>(state: AdamState<B, D>) -> AdamState<B, D> {
        state
    }
    fn from_adam<const D: usize>(state: AdamState<B, D>) -> AdamState<B, D> {
        state
    }
}

/// Names of a parameter's state tensors, after its path.
const MOMENTS: [&str; 3] = ["moment_1", "moment_2", "max_moment_2"];

/// Saves an optimizer's state (moments and step counts of `module`'s
/// parameters) to `stem.safetensors`. `module` is the one the optimizer
/// steps: it names the parameters.
///
/// ```
/// use burn::backend::Autodiff;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::optim::{AdamConfig, GradientsParams, Optimizer};
/// use burn::prelude::*;
/// use genzoo_core::record::{load_optimizer, save_optimizer};
/// use genzoo_core::{CpuBackend, CpuDevice};
/// type B = Autodiff<CpuBackend>;
/// let device = CpuDevice::default();
/// let layer: Linear<B> = LinearConfig::new(3, 2).init(&device);
/// let mut adam = AdamConfig::new().init::<B, Linear<B>>();
/// let loss = layer.forward(Tensor::<B, 2>::ones([4, 3], &device)).sum();
/// let layer = adam.step(1e-3, layer.clone(), GradientsParams::from_grads(loss.backward(), &layer));
/// let dir = tempfile::tempdir().unwrap();
/// save_optimizer(&adam, &layer, &dir.path().join("adam")).unwrap();
/// let fresh = AdamConfig::new().init::<B, Linear<B>>();
/// let adam = load_optimizer(fresh, &layer, &dir.path().join("adam")).unwrap();
/// ```
pub fn save_optimizer<B, M, O>(
    optimizer: &OptimizerAdaptor<O, M, B>,
    module: &M,
    stem: &Path,
) -> Result<()>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: AdamStated<B::InnerBackend>,
{
    struct Collect<O: SimpleOptimizer<B::InnerBackend>, B: AutodiffBackend> {
        records: HashMap<burn::module::ParamId, AdaptorRecord<O, B>>,
        path: Vec<String>,
        tensors: NamedTensors,
        metadata: Vec<(String, String)>,
    }
    impl<O: AdamStated<B::InnerBackend>, B: AutodiffBackend> ModuleVisitor<B> for Collect<O, B> {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let Some(record) = self.records.remove(&param.id) else {
                return; // never stepped (no gradient yet, or not trainable)
            };
            let state = O::to_adam(record.into_state::<D>()).momentum;
            let path = self.path.join(".");
            let moments = [
                Some(state.moment_1),
                Some(state.moment_2),
                state.max_moment_2,
            ];
            for (name, moment) in MOMENTS.iter().zip(moments) {
                if let Some(moment) = moment {
                    let data = moment.into_data().convert::<f32>();
                    self.tensors.push((format!("{path}.{name}"), data));
                }
            }
            self.metadata
                .push((format!("{path}.time"), state.time.to_string()));
        }
    }
    let file = record_file(stem);
    let mut collect = Collect {
        records: optimizer.to_record().into_iter().collect(),
        path: Vec::new(),
        tensors: Vec::new(),
        metadata: Vec::new(),
    };
    module.visit(&mut collect);
    if !collect.records.is_empty() {
        return Err(Error::checkpoint(
            &file,
            format!(
                "the optimizer holds state for {} parameters the module does not have: save it with the module it steps",
                collect.records.len()
            ),
        ));
    }
    let metadata: Vec<(&str, String)> = collect
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    write_safetensors(&file, &collect.tensors, &metadata).map_err(|e| match e {
        // The path once: `write_safetensors`' errors name it already.
        Error::Io { source, .. } => {
            Error::checkpoint(&file, format!("cannot write optimizer state: {source}"))
        }
        e => e,
    })
}

/// Loads an optimizer's state from `stem.safetensors` for the parameters
/// of `module` (the module it steps, already loaded: see [`save_optimizer`]).
/// Hyper-parameters come from the optimizer it is loaded into, not from
/// the file. State for a parameter the module lacks, or of another shape,
/// is refused.
pub fn load_optimizer<B, M, O>(
    optimizer: OptimizerAdaptor<O, M, B>,
    module: &M,
    stem: &Path,
) -> Result<OptimizerAdaptor<O, M, B>>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: AdamStated<B::InnerBackend>,
{
    struct Restore<O: SimpleOptimizer<B::InnerBackend>, B: AutodiffBackend> {
        tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
        times: HashMap<String, String>,
        path: Vec<String>,
        records: HashMap<burn::module::ParamId, AdaptorRecord<O, B>>,
        error: Option<String>,
    }
    impl<O: AdamStated<B::InnerBackend>, B: AutodiffBackend> Restore<O, B> {
        fn restore<const D: usize>(
            &mut self,
            param: &Param<Tensor<B, D>>,
        ) -> std::result::Result<(), String> {
            let path = self.path.join(".");
            let dims = param.val().dims().to_vec();
            let device = param.val().device();
            let mut moments = MOMENTS.iter().map(|name| {
                let key = format!("{path}.{name}");
                match self.tensors.remove(&key) {
                    Some((shape, _)) if shape != dims => Err(format!(
                        "'{key}' has shape {shape:?} but the parameter has {dims:?}"
                    )),
                    Some((shape, values)) => Ok(Some(Tensor::<B::InnerBackend, D>::from_data(
                        TensorData::new(values, shape),
                        &device,
                    ))),
                    None => Ok(None),
                }
            });
            let (m1, m2, max) = (
                moments.next().unwrap()?,
                moments.next().unwrap()?,
                moments.next().unwrap()?,
            );
            let (moment_1, moment_2) = match (m1, m2) {
                (Some(m1), Some(m2)) => (m1, m2),
                (None, None) => return Ok(()), // never stepped: no state
                _ => return Err(format!("'{path}' has only one of its two Adam moments")),
            };
            let time = self
                .times
                .remove(&format!("{path}.time"))
                .and_then(|t| t.parse::<usize>().ok())
                .ok_or_else(|| format!("the step count of '{path}' is missing"))?;
            let momentum = AdaptiveMomentumState {
                time,
                moment_1,
                moment_2,
                max_moment_2: max,
            };
            let state = O::from_adam::<D>(AdamState { momentum });
            self.records
                .insert(param.id, AdaptorRecord::from_state::<D>(state));
            Ok(())
        }
    }
    impl<O: AdamStated<B::InnerBackend>, B: AutodiffBackend> ModuleVisitor<B> for Restore<O, B> {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.error.is_none() {
                self.error = self.restore(param).err();
            }
        }
    }
    let file = record_file(stem);
    if !file.exists() {
        return Err(Error::checkpoint(&file, "file is missing"));
    }
    let stored = read_safetensors(&file)
        .map_err(|e| Error::checkpoint(&file, format!("not an optimizer state: {e}")))?;
    let mut restore = Restore::<O, B> {
        tensors: stored
            .tensors
            .into_iter()
            .map(|(name, shape, values)| (name, (shape, values)))
            .collect(),
        times: stored.metadata.into_iter().collect(),
        path: Vec::new(),
        records: HashMap::new(),
        error: None,
    };
    module.visit(&mut restore);
    let other = "it was saved from another architecture or config";
    if let Some(why) = restore.error {
        return Err(Error::checkpoint(&file, format!("{why}: {other}")));
    }
    let mut left: Vec<&String> = restore.tensors.keys().collect();
    left.sort();
    if let Some(name) = left.first() {
        return Err(Error::checkpoint(
            &file,
            format!("holds optimizer state '{name}' for a parameter the model lacks: {other}"),
        ));
    }
    // burn's record is a hashbrown map: collected into it.
    Ok(optimizer.load_record(restore.records.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{CpuBackend, CpuDevice};
    use burn::backend::Autodiff;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{AdamConfig, GradientsParams};

    fn linear(d_in: usize, d_out: usize, bias: bool) -> Linear<CpuBackend> {
        LinearConfig::new(d_in, d_out)
            .with_bias(bias)
            .init(&CpuDevice::default())
    }

    #[test]
    fn weights_load_back_and_other_shapes_or_tensors_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("nested").join("m");
        let small = linear(4, 8, true);
        save_module(&small, &stem).unwrap();
        assert!(stem.with_extension("safetensors").exists());
        let loaded = load_module(linear(4, 8, true), &stem).unwrap();
        assert_eq!(param_values(&small), param_values(&loaded));
        assert_ne!(param_values(&small), param_values(&linear(4, 8, true)));

        let err = load_module(linear(4, 16, true), &stem)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'weight' has shape [4, 8] in the file but [4, 16] in the model"),
            "{err}"
        );
        // A tensor the module has and the file lacks, and the reverse.
        save_module(&linear(4, 8, false), &dir.path().join("no_bias")).unwrap();
        let err = load_module(linear(4, 8, true), &dir.path().join("no_bias")).unwrap_err();
        assert!(err.to_string().contains("has no tensor 'bias'"), "{err}");
        let err = load_module(linear(4, 8, false), &stem).unwrap_err();
        assert!(err.to_string().contains("holds tensor 'bias'"), "{err}");
        // Not a safetensors file at all.
        std::fs::write(dir.path().join("junk.safetensors"), b"not weights").unwrap();
        let err = load_module(linear(4, 8, true), &dir.path().join("junk")).unwrap_err();
        assert!(err.to_string().contains("not a weights file"), "{err}");
    }

    type Ad = Autodiff<CpuBackend>;

    #[test]
    fn batch_norm_statistics_are_saved_as_of_the_last_training_forward() {
        use burn::nn::{BatchNorm, BatchNormConfig};
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("bn");
        let device = CpuDevice::default();
        let bn: BatchNorm<Ad> = BatchNormConfig::new(3).init(&device);
        // Channel means 2, 4, 6: far from the initial running mean of 0.
        let x = Tensor::<Ad, 1>::from_floats([2.0, 4.0, 6.0], &device)
            .reshape([1, 3, 1, 1])
            .repeat_dim(0, 4)
            .repeat_dim(2, 2)
            + Tensor::<Ad, 4>::ones([4, 3, 2, 2], &device);
        for _ in 0..2 {
            let _ = bn.forward(x.clone());
        }
        save_module(&bn, &stem).unwrap();

        let loaded = load_module(BatchNormConfig::new(3).init::<Ad>(&device), &stem).unwrap();
        let values = |t: Tensor<Ad, 1>| t.into_data().to_vec::<f32>().unwrap();
        let saved = values(loaded.running_mean.value());
        let trained = values(bn.running_mean.value_sync());
        // Two updates with momentum 0.1: 0.19 of the batch means 3, 5, 7.
        for (s, want) in saved.iter().zip([0.57f32, 0.95, 1.33]) {
            assert!((s - want).abs() < 1e-5, "saved running mean {saved:?}");
        }
        assert_eq!(saved, trained);
    }

    fn step(adam: &mut OptimizerAdaptor<Adam, Linear<Ad>, Ad>, layer: Linear<Ad>) -> Linear<Ad> {
        let [d_in, _] = layer.weight.dims();
        let x = Tensor::<Ad, 2>::ones([3, d_in], &CpuDevice::default());
        let grads =
            GradientsParams::from_grads(layer.forward(x).powf_scalar(2.0).sum().backward(), &layer);
        adam.step(1e-2, layer, grads)
    }

    #[test]
    fn optimizer_state_follows_parameter_paths_into_a_fresh_module() {
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("adam");
        let device = CpuDevice::default();
        let mut adam = AdamConfig::new().init::<Ad, Linear<Ad>>();
        let mut layer: Linear<Ad> = LinearConfig::new(3, 5).init(&device);
        // Before the first step there is no state, and none is loaded.
        save_optimizer(&adam, &layer, &stem).unwrap();
        load_optimizer(AdamConfig::new().init(), &layer, &stem).unwrap();
        for _ in 0..2 {
            layer = step(&mut adam, layer);
        }
        save_optimizer(&adam, &layer, &stem).unwrap();
        save_module(&layer, &dir.path().join("layer")).unwrap();

        // A new process: fresh module (new parameter ids), loaded weights and state.
        let fresh: Linear<Ad> = LinearConfig::new(3, 5).init(&device);
        let fresh = load_module(fresh, &dir.path().join("layer")).unwrap();
        assert_ne!(fresh.weight.id, layer.weight.id);
        let mut resumed = load_optimizer(AdamConfig::new().init(), &fresh, &stem).unwrap();
        let (a, b) = (step(&mut adam, layer), step(&mut resumed, fresh));
        assert_eq!(param_values(&a), param_values(&b), "the third step differs");

        // Without the state the next step is another (Adam's first-step size).
        let mut blank = AdamConfig::new().init::<Ad, Linear<Ad>>();
        let without = step(&mut blank, b.clone());
        assert_ne!(param_values(&step(&mut resumed, b)), param_values(&without));

        // State of another shape, or saved with the wrong module, is refused.
        let other: Linear<Ad> = LinearConfig::new(3, 7).init(&device);
        let err = load_optimizer(AdamConfig::new().init(), &other, &stem)
            .err()
            .expect("state of another shape");
        assert!(
            err.to_string().contains("weight.moment_1") && err.to_string().contains("[3, 5]"),
            "{err}"
        );
        let err = save_optimizer(&adam, &other, &stem).unwrap_err();
        assert!(err.to_string().contains("module it steps"), "{err}");
    }
}
