//! Saving and loading modules and optimizer states, with the checks burn's
//! recorders leave out.
//!
//! burn's recorders load a record whose tensors have other shapes than the
//! module without complaint (the module silently takes the file's shapes).
//! [`load_module`] compares every parameter's shape against the module it
//! loads into and refuses a mismatch, naming the parameter.

use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::Optimizer;
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;

use crate::error::{Error, Result};

/// The recorder genzoo uses: named MessagePack, full precision. Field names
/// are checked on load (a positional format would load a renamed field).
pub type FileRecorder = NamedMpkFileRecorder<FullPrecisionSettings>;

/// The file a record named `stem` is written to (`stem.mpk`).
pub fn record_file(stem: &Path) -> PathBuf {
    stem.with_extension("mpk")
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

/// Saves `module` to `stem.mpk`.
pub fn save_module<B: Backend, M: Module<B>>(module: &M, stem: &Path) -> Result<()> {
    force_init(module);
    module
        .clone()
        .save_file(stem.to_path_buf(), &FileRecorder::new())
        .map_err(|e| Error::checkpoint(record_file(stem), format!("cannot write weights: {e}")))
}

/// Loads `stem.mpk` into `module`, refusing any tensor whose shape differs
/// from the module's (a checkpoint of another architecture or config).
pub fn load_module<B: Backend, M: Module<B>>(
    module: M,
    stem: &Path,
    device: &B::Device,
) -> Result<M> {
    let file = record_file(stem);
    if !file.exists() {
        return Err(Error::checkpoint(&file, "file is missing"));
    }
    let expected = param_shapes::<B, M>(&module);
    let loaded = module
        .load_file(stem.to_path_buf(), &FileRecorder::new(), device)
        .map_err(|e| Error::checkpoint(&file, format!("not a record of this model: {e}")))?;
    let found = param_shapes::<B, M>(&loaded);
    if expected.len() != found.len() {
        return Err(Error::checkpoint(
            &file,
            format!(
                "holds {} tensors, the model has {}",
                found.len(),
                expected.len()
            ),
        ));
    }
    for ((name, want), (_, got)) in expected.iter().zip(&found) {
        if want != got {
            return Err(Error::checkpoint(
                &file,
                format!(
                    "tensor '{name}' has shape {got:?} in the file but {want:?} in the model: it was saved from another architecture or config"
                ),
            ));
        }
    }
    Ok(loaded)
}

/// Saves an optimizer's state (moments, step counts) to `stem.mpk`.
pub fn save_optimizer<B, M, O>(optimizer: &O, stem: &Path) -> Result<()>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    Recorder::<B>::record(
        &FileRecorder::new(),
        optimizer.to_record(),
        stem.to_path_buf(),
    )
    .map_err(|e| {
        Error::checkpoint(
            record_file(stem),
            format!("cannot write optimizer state: {e}"),
        )
    })
}

/// Loads an optimizer's state from `stem.mpk`. Hyper-parameters come from
/// the optimizer it is loaded into, not from the file.
pub fn load_optimizer<B, M, O>(optimizer: O, stem: &Path, device: &B::Device) -> Result<O>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    let file = record_file(stem);
    if !file.exists() {
        return Err(Error::checkpoint(&file, "file is missing"));
    }
    let record =
        Recorder::<B>::load(&FileRecorder::new(), stem.to_path_buf(), device).map_err(|e| {
            Error::checkpoint(&file, format!("not an optimizer state of this model: {e}"))
        })?;
    Ok(optimizer.load_record(record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{CpuBackend, CpuDevice};
    use burn::nn::{Linear, LinearConfig};

    #[test]
    fn refuses_weights_of_another_shape() {
        let dev = CpuDevice::default();
        let dir = std::env::temp_dir().join(format!("genzoo-record-{}", std::process::id()));
        let small: Linear<CpuBackend> = LinearConfig::new(4, 8).init(&dev);
        save_module(&small, &dir.join("m")).unwrap();
        let same: Linear<CpuBackend> = LinearConfig::new(4, 8).init(&dev);
        let loaded = load_module(same, &dir.join("m"), &dev).unwrap();
        let a = small.weight.val().into_data().to_vec::<f32>().unwrap();
        let b = loaded.weight.val().into_data().to_vec::<f32>().unwrap();
        assert_eq!(a, b);
        let big: Linear<CpuBackend> = LinearConfig::new(4, 16).init(&dev);
        let err = load_module(big, &dir.join("m"), &dev)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("weight") && err.contains("[4, 8]") && err.contains("[4, 16]"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
