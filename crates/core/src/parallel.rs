//! Data parallelism on burn's collective operations (`burn::collective`).
//!
//! A data-parallel run has `world` replicas (threads on one machine, across
//! one or more processes). Each holds the same weights, takes its shard of
//! every global batch, and averages its gradients with the others between
//! backward and the optimizer step, so every replica applies the same
//! update as one device would on the whole batch.
//!
//! This module holds the replica-side pieces the engine and the layers
//! share: who this thread is ([`Replica`], [`current`]), the gradient
//! all-reduce ([`all_reduce_grads`]), the start-up broadcast
//! ([`broadcast_module`]), and a mean of host values for metrics and
//! agreement checks ([`all_reduce_values`]). The engine sets the thread's
//! replica; layers that need the whole batch (synchronised BatchNorm) read
//! it with [`current`].

use std::any::TypeId;
use std::cell::Cell;
use std::marker::PhantomData;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::collective::{self, CollectiveError, PeerId, ReduceOperation};
use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn_flex::Flex;

use crate::error::{Error, Result};
use crate::fused::{route_as, routed};

/// One replica of a data-parallel run, as seen by the thread that runs it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Replica {
    /// This replica's rank among all replicas of the run (0 is the leader:
    /// it logs, evaluates and writes checkpoints).
    pub rank: usize,
    /// Number of replicas in the run, over all nodes.
    pub world: usize,
    /// The size of this step's global batch (set by the engine each step).
    pub batch: Option<usize>,
}

impl Replica {
    /// Replica `rank` of `world`, for a batch that splits evenly.
    pub fn new(rank: usize, world: usize) -> Self {
        Self {
            rank,
            world,
            batch: None,
        }
    }

    /// This step's share of the global batch times `world`: 1 when the
    /// batch splits evenly, otherwise the factor that keeps uneven shards
    /// exact (gradients are scaled by it before the mean over replicas).
    pub fn weight(&self) -> f64 {
        match self.batch {
            Some(b) if b > 0 => {
                let (start, end) = self.shard_range(b);
                (end - start) as f64 * self.world as f64 / b as f64
            }
            _ => 1.0,
        }
    }

    /// The collective peer id of this replica.
    pub fn peer(&self) -> PeerId {
        PeerId::from(self.rank)
    }

    /// Whether this replica leads the run (rank 0).
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// The rows `[start, end)` of a global batch of `rows` that this
    /// replica takes: contiguous, sizes differing by at most one.
    pub fn shard_range(&self, rows: usize) -> (usize, usize) {
        (
            self.rank * rows / self.world,
            (self.rank + 1) * rows / self.world,
        )
    }
}

thread_local! {
    static CURRENT: Cell<Option<Replica>> = const { Cell::new(None) };
}

/// The replica the calling thread runs, if it runs one.
pub fn current() -> Option<Replica> {
    CURRENT.with(|c| c.get())
}

/// Marks the calling thread as running `replica` until the guard drops.
pub fn enter(replica: Replica) -> ReplicaGuard {
    let previous = CURRENT.with(|c| c.replace(Some(replica)));
    ReplicaGuard { previous }
}

/// Restores the thread's previous replica (usually none) when dropped.
pub struct ReplicaGuard {
    previous: Option<Replica>,
}

impl Drop for ReplicaGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

/// Sets the size of this step's global batch on the calling thread's replica.
pub fn set_batch(batch: usize) {
    CURRENT.with(|c| {
        if let Some(mut r) = c.get() {
            r.batch = Some(batch);
            c.set(Some(r));
        }
    });
}

/// A collective failure as genzoo's error, saying which replica saw it.
pub fn collective_error(replica: &Replica, what: &str, err: CollectiveError) -> Error {
    let reason = match err {
        // What a replica sees after another one failed and reset the collective.
        CollectiveError::LocalServerMissing | CollectiveError::RegisterNotFirstOperation => {
            "the collective was reset: another replica failed or the run was stopped".to_string()
        }
        other => format!("{other:?}"),
    };
    Error::Parallel(format!(
        "replica {} of {}: {what} failed: {reason}",
        replica.rank, replica.world
    ))
}

/// Flattens every gradient of `module` found in `grads` into one vector, in
/// the module's own parameter order (the same on every replica, whatever
/// the parameters' ids), so one all-reduce moves them all.
struct Flatten<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let n = g.shape().num_elements();
            self.parts.push(g.reshape([n]));
        }
    }
}

/// Puts the reduced vector's slices back as the gradients, in the same order.
struct Unflatten<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    flat: Tensor<B::InnerBackend, 1>,
    offset: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let shape = g.shape();
            let n = shape.num_elements();
            let slice = self
                .flat
                .clone()
                .slice(self.offset..self.offset + n)
                .reshape(shape);
            self.offset += n;
            self.grads.register::<B::InnerBackend, D>(param.id, slice);
        }
    }
}

/// Averages `module`'s gradients over all replicas (each scaled first by
/// the replica's shard weight), so that every replica holds the gradient
/// of the whole global batch.
pub fn all_reduce_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    mut grads: GradientsParams,
    replica: &Replica,
) -> Result<GradientsParams> {
    let mut flatten = Flatten::<B> {
        grads: &grads,
        parts: Vec::new(),
    };
    module.visit(&mut flatten);
    if flatten.parts.is_empty() {
        return Ok(grads);
    }
    let mut flat = Tensor::cat(flatten.parts, 0);
    let weight = replica.weight();
    if weight != 1.0 {
        flat = flat * weight;
    }
    let flat = all_reduce(flat, ReduceOperation::Mean, replica, "gradient all-reduce")?;
    module.visit(&mut Unflatten::<B> {
        grads: &mut grads,
        flat,
        offset: 0,
    });
    Ok(grads)
}

/// The mean over replicas of each of `values` (each scaled first by
/// `weight`): metrics of the global batch, or a check that all replicas
/// agree (equal values have their own value as mean, and the max-min spread
/// is visible through a second call on the squares).
pub fn all_reduce_values<B: Backend>(
    values: &[f64],
    weight: f64,
    replica: &Replica,
    device: &B::Device,
) -> Result<Vec<f64>> {
    let scaled: Vec<f32> = values.iter().map(|v| (v * weight) as f32).collect();
    let t = Tensor::<B, 1>::from_data(TensorData::new(scaled, [values.len()]), device);
    let t = all_reduce(t, ReduceOperation::Mean, replica, "metric all-reduce")?;
    Ok(t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| Error::Other(format!("{e:?}")))?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// Whether every replica passed the same `values`, exactly for values below
/// 2³² and up to 64 replicas. Each value crosses the all-reduce as four
/// base-256 digits and their squares: the mean of a digit's squares equals
/// its mean squared only where every replica holds that digit, and digits
/// keep the f32 sums exact, where the squares of large values would lose
/// a difference of one (steps 100 and 101 on two replicas differ by a
/// variance of 0.25 only).
pub fn all_replicas_equal<B: Backend>(
    values: &[u64],
    replica: &Replica,
    device: &B::Device,
) -> Result<bool> {
    let digits: Vec<f64> = values
        .iter()
        .flat_map(|&v| (0..4).map(move |i| ((v >> (8 * i)) & 0xff) as f64))
        .collect();
    let squares = digits.iter().map(|d| d * d);
    let both: Vec<f64> = digits.iter().copied().chain(squares).collect();
    let mean = all_reduce_values::<B>(&both, 1.0, replica, device)?;
    let n = digits.len();
    // The smallest variance of digits not all equal: one replica off by one.
    let world = replica.world.max(1) as f64;
    let smallest = (world - 1.0) / (world * world);
    Ok((0..n).all(|i| mean[n + i] - mean[i] * mean[i] < smallest / 2.0))
}

/// Replaces each parameter (and running statistic) with the leader's.
struct Broadcast<B: Backend> {
    replica: Replica,
    error: Option<Error>,
    _b: PhantomData<B>,
}

impl<B: Backend> ModuleMapper<B> for Broadcast<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if self.error.is_some() {
            return param;
        }
        let (id, value, mapper) = param.consume();
        let shape = value.shape();
        // A broadcast as a sum in which only the leader contributes (exact:
        // x + 0 + ... + 0 = x): burn 0.21's collective has no broadcast
        // between nodes yet, and the all-reduce works everywhere.
        let sent = if self.replica.is_leader() {
            value.clone()
        } else {
            value.zeros_like()
        };
        match all_reduce(
            sent,
            ReduceOperation::Sum,
            &self.replica,
            "weight broadcast",
        ) {
            Ok(received) => {
                if received.shape() != shape {
                    self.error = Some(Error::Parallel(format!(
                        "replica {}: the leader's parameter has shape {:?}, this replica's {:?}: \
                         the replicas do not run the same model",
                        self.replica.rank,
                        received.shape().dims::<D>(),
                        shape.dims::<D>()
                    )));
                    return Param::from_mapped_value(id, value, mapper);
                }
                Param::from_mapped_value(id, received, mapper)
            }
            Err(e) => {
                self.error = Some(e);
                Param::from_mapped_value(id, value, mapper)
            }
        }
    }
}

/// `module` with every parameter replaced by the leader's (rank 0's), so
/// all replicas start from the same weights.
pub fn broadcast_module<B: Backend, M: Module<B>>(module: M, replica: &Replica) -> Result<M> {
    let mut mapper = Broadcast::<B> {
        replica: *replica,
        error: None,
        _b: PhantomData,
    };
    let module = module.map(&mut mapper);
    match mapper.error {
        Some(e) => Err(e),
        None => Ok(module),
    }
}

/// Replaces each trainable parameter with the leader's, keeping it trainable.
struct BroadcastAutodiff<B: AutodiffBackend> {
    inner: Broadcast<B::InnerBackend>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for BroadcastAutodiff<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, value, mapper) = param.consume();
        let trainable = value.is_require_grad();
        let inner = Param::initialized(id, value.inner());
        let (_, received, _) = self.inner.map_float(inner).consume();
        let mut value = Tensor::from_inner(received);
        if trainable {
            value = value.require_grad();
        }
        Param::from_mapped_value(id, value, mapper)
    }
}

/// [`broadcast_module`] for a trainable module (its parameters stay trainable).
pub fn broadcast_autodiff<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: M,
    replica: &Replica,
) -> Result<M> {
    let mut mapper = BroadcastAutodiff::<B> {
        inner: Broadcast {
            replica: *replica,
            error: None,
            _b: PhantomData,
        },
    };
    let module = module.map(&mut mapper);
    match mapper.inner.error {
        Some(e) => Err(e),
        None => Ok(module),
    }
}

/// burn's `collective::all_reduce` for one backend, compiled here, once.
///
/// burn's collective (its local server on a tokio runtime, the client of
/// the multi-node orchestrator) is generic over the backend, so a generic
/// call compiles all of it again in every crate that trains: with it, an
/// example took 62 s of CPU to build, 28 s without. [`all_reduce`] reaches
/// these implementations by type instead.
trait CompiledAllReduce: Backend {
    fn compiled_all_reduce(
        x: FloatTensor<Self>,
        peer: PeerId,
        op: ReduceOperation,
    ) -> std::result::Result<FloatTensor<Self>, CollectiveError>;
}

/// Implements [`CompiledAllReduce`] for a backend; `inline(never)` keeps
/// the body (and the collective's code) out of the crates that call it.
macro_rules! compiled_all_reduce {
    ($backend:ty) => {
        impl CompiledAllReduce for $backend {
            #[inline(never)]
            fn compiled_all_reduce(
                x: FloatTensor<Self>,
                peer: PeerId,
                op: ReduceOperation,
            ) -> std::result::Result<FloatTensor<Self>, CollectiveError> {
                collective::all_reduce::<Self>(peer, x, op)
            }
        }
    };
}

compiled_all_reduce!(Flex);
#[cfg(feature = "wgpu")]
compiled_all_reduce!(burn::backend::Wgpu);
#[cfg(feature = "cuda")]
compiled_all_reduce!(burn::backend::Cuda);

/// `x` all-reduced (`op`) over the replicas of the run, on the backends
/// genzoo trains in parallel on (the CPU backend; wgpu and CUDA with their
/// features); `what` names the operation in a failure.
fn all_reduce<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    op: ReduceOperation,
    replica: &Replica,
    what: &str,
) -> Result<Tensor<B, D>> {
    type Reduced<B, const D: usize> = std::result::Result<Tensor<B, D>, CollectiveError>;
    fn on<F: CompiledAllReduce, B: Backend, const D: usize>(
        x: Tensor<B, D>,
        peer: PeerId,
        op: ReduceOperation,
    ) -> std::result::Result<Reduced<B, D>, Tensor<B, D>> {
        route_as(x, |x: Tensor<F, D>| -> Reduced<F, D> {
            let reduced = F::compiled_all_reduce(x.into_primitive().tensor(), peer, op)?;
            Ok(Tensor::from_primitive(TensorPrimitive::Float(reduced)))
        })
    }
    let peer = replica.peer();
    let routed = on::<Flex, B, D>(x, peer, op);
    #[cfg(feature = "wgpu")]
    let routed = routed.or_else(|x| on::<burn::backend::Wgpu, B, D>(x, peer, op));
    #[cfg(feature = "cuda")]
    let routed = routed.or_else(|x| on::<burn::backend::Cuda, B, D>(x, peer, op));
    match routed {
        Ok(reduced) => reduced.map_err(|e| collective_error(replica, what, e)),
        Err(_) => Err(Error::Parallel(format!(
            "replica {}: {what}: data-parallel training is not available on backend {}",
            replica.rank,
            std::any::type_name::<B>()
        ))),
    }
}

/// The one collective op that sits inside a model's graph: the mean over
/// replicas of a tensor (weighted by the replicas' shard weights), whose
/// gradient is the same mean of the incoming gradients. Synchronised
/// BatchNorm builds its batch statistics with it.
///
/// Why the backward is a mean too: with g = mean_r(w_r·m_r) every replica's
/// loss depends on every replica's m_r, so the gradient reaching m_s sums
/// the upstream gradients of all replicas, which only a collective in the
/// backward pass can gather.
pub trait CollectiveOps: Backend {
    /// mean over replicas of `weight`·x (x is 1-D).
    fn all_reduce_weighted_mean(
        x: FloatTensor<Self>,
        replica: Replica,
        weight: f64,
    ) -> FloatTensor<Self> {
        let x = Tensor::<Self, 1>::from_primitive(TensorPrimitive::Float(x)) * weight;
        all_reduce(x, ReduceOperation::Mean, &replica, "batch statistics")
            .unwrap_or_else(|e| panic!("{e}"))
            .into_primitive()
            .tensor()
    }
}

impl CollectiveOps for Flex {}

#[cfg(feature = "wgpu")]
impl CollectiveOps for burn::backend::Wgpu {}

#[cfg(feature = "cuda")]
impl CollectiveOps for burn::backend::Cuda {}

impl<B: CollectiveOps, C: CheckpointStrategy> CollectiveOps for Autodiff<B, C> {
    fn all_reduce_weighted_mean(
        x: FloatTensor<Self>,
        replica: Replica,
        weight: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct WeightedMean;

        impl<B: CollectiveOps> Backward<B, 1> for WeightedMean {
            type State = (Replica, f64);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (replica, weight) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::all_reduce_weighted_mean(grad, replica, weight)
                });
            }
        }

        match WeightedMean
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                (replica, weight),
                B::all_reduce_weighted_mean(x.primitive, replica, weight),
            ),
            OpsKind::UnTracked(prep) => {
                prep.finish(B::all_reduce_weighted_mean(x.primitive, replica, weight))
            }
        }
    }
}

/// The weighted mean over replicas of a per-replica statistic `x` (`[C]`),
/// differentiable: [`CollectiveOps::all_reduce_weighted_mean`] on the
/// backends genzoo trains on (the CPU backend, wgpu, CUDA; plain or under
/// autodiff).
///
/// # Panics
/// On another backend (the engine refuses data-parallel runs there first),
/// or when the collective fails (the engine turns a replica's panic into
/// an error naming it).
pub fn replica_mean<B: Backend>(x: Tensor<B, 1>, replica: Replica) -> Tensor<B, 1> {
    let weight = replica.weight();
    fn mean<F: CollectiveOps, B: Backend>(
        x: Tensor<B, 1>,
        replica: Replica,
        weight: f64,
    ) -> std::result::Result<Tensor<B, 1>, Tensor<B, 1>> {
        routed::<F, B, 1>(x, |x| F::all_reduce_weighted_mean(x, replica, weight))
    }
    let x = match mean::<Flex, B>(x, replica, weight)
        .or_else(|x| mean::<Autodiff<Flex>, B>(x, replica, weight))
    {
        Ok(y) => return y,
        Err(x) => x,
    };
    #[cfg(feature = "wgpu")]
    let x = match mean::<burn::backend::Wgpu, B>(x, replica, weight)
        .or_else(|x| mean::<Autodiff<burn::backend::Wgpu>, B>(x, replica, weight))
    {
        Ok(y) => return y,
        Err(x) => x,
    };
    #[cfg(feature = "cuda")]
    let x = match mean::<burn::backend::Cuda, B>(x, replica, weight)
        .or_else(|x| mean::<Autodiff<burn::backend::Cuda>, B>(x, replica, weight))
    {
        Ok(y) => return y,
        Err(x) => x,
    };
    let _ = x;
    panic!(
        "data-parallel batch statistics are not available on backend {}",
        std::any::type_name::<B>()
    )
}

/// Whether [`replica_mean`] (and so data-parallel training) supports backend `B`.
pub fn supports_backend<B: Backend>() -> bool {
    let id = TypeId::of::<B>();
    let cpu = [TypeId::of::<Flex>(), TypeId::of::<Autodiff<Flex>>()];
    #[cfg(feature = "wgpu")]
    let wgpu = [
        TypeId::of::<burn::backend::Wgpu>(),
        TypeId::of::<Autodiff<burn::backend::Wgpu>>(),
    ];
    #[cfg(not(feature = "wgpu"))]
    let wgpu: [TypeId; 0] = [];
    #[cfg(feature = "cuda")]
    let cuda = [
        TypeId::of::<burn::backend::Cuda>(),
        TypeId::of::<Autodiff<burn::backend::Cuda>>(),
    ];
    #[cfg(not(feature = "cuda"))]
    let cuda: [TypeId; 0] = [];
    cpu.contains(&id) || wgpu.contains(&id) || cuda.contains(&id)
}

static PROGRESS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records progress (a finished step or evaluation batch) for the
/// data-parallel watchdog, which tells a stalled run from a slow one.
pub fn heartbeat() {
    PROGRESS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Progress recorded in this process so far (see [`heartbeat`]).
pub fn progress() -> u64 {
    PROGRESS.load(std::sync::atomic::Ordering::Relaxed)
}
