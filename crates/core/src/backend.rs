//! Backend choice: the Flex CPU backend by default, wgpu, CUDA and
//! LibTorch (`tch`, on the CPU, for comparison) behind cargo features of the
//! same names.
//!
//! Library code is generic over `B: Backend`; only binaries pick a concrete
//! backend, through [`BackendKind`] and [`with_backend`].

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::AutodiffBackend;

use crate::error::{Error, Result};

/// The default CPU backend (burn's Flex: pure Rust, SIMD, rayon).
pub type CpuBackend = burn::backend::Flex;
/// The CPU backend's device.
pub type CpuDevice = burn::backend::flex::FlexDevice;
/// The CPU backend with autodiff, used for training.
pub type CpuAutodiff = burn::backend::Autodiff<CpuBackend>;

/// Tunes the C allocator for tensor work: keep freed memory for reuse
/// instead of returning it to the OS after every operation.
///
/// Every burn CPU op allocates its output; with glibc's defaults, blocks over
/// 128 KiB (most activations) are fresh `mmap`s whose pages the kernel must
/// zero on first touch, and freed heap tops are trimmed back. Raising the
/// mmap threshold to 32 MiB and keeping 512 MiB before trimming made whole
/// training steps 10–45 % faster here at 2 threads (vae-mlp 15.6 → 8–9.5 ms,
/// dcgan-28 235 → 175 ms, ddpm-unet 2.36 → 1.54–1.60 s, gpt-pixel 1.92 →
/// 1.46–1.77 s). Call it once, early; the `genzoo` binary does. A no-op
/// outside Linux/glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; any value is accepted or refused with 0.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Makes the calling thread's float arithmetic treat subnormal numbers
/// (magnitudes below 1.2e-38) as zero: x86-64's flush-to-zero and
/// denormals-are-zero flags (MXCSR bits 15 and 6), AArch64's flush-to-zero
/// flag (FPCR bit 24, which flushes inputs and results alike); a no-op on
/// other CPUs.
///
/// Arithmetic on subnormals takes a slow path, ~100 times the cost. They
/// appear in training as Adam's first moment decays (×0.9 a step) on a
/// weight whose gradient stays zero (a dead ReLU, a pixel that is black in
/// every image): from ~750 steps on, vae-mlp's step went from 4.8 to
/// 6.4 ms. Only values already below the smallest normal float change;
/// TensorFlow flushes them by default and PyTorch offers
/// `set_flush_denormal`. [`set_cpu_threads`] sets it on every thread of
/// the CPU pool; [`prepare_cpu`] does both, as the `genzoo` binary does.
pub fn flush_subnormals() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads and writes this thread's MXCSR register, setting two
    // flags that change only how subnormal floats are treated.
    unsafe {
        let mut csr: u32 = 0;
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
        csr |= (1 << 15) | (1 << 6);
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: reads and writes this thread's FPCR register, setting one
    // flag that changes only how subnormal floats are treated.
    unsafe {
        let mut fpcr: u64;
        std::arch::asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack));
        fpcr |= 1 << 24;
        std::arch::asm!("msr fpcr, {}", in(reg) fpcr, options(nostack));
    }
}

/// Sets the process up for tensor work on the CPU, as the `genzoo` binary
/// does: [`tune_allocator`], and subnormal floats flushed to zero on this
/// thread and on every thread of the CPU pool ([`flush_subnormals`]). The
/// pool is built here with `threads` threads, or when `None` sized by
/// `RAYON_NUM_THREADS` or every core, and then a pool something built
/// before is kept; a size that cannot be set is an error. Call it first
/// thing in `main`.
///
/// ```
/// genzoo_core::backend::prepare_cpu(None).unwrap();
/// ```
pub fn prepare_cpu(threads: Option<usize>) -> Result<()> {
    tune_allocator();
    flush_subnormals();
    match set_cpu_threads(threads.map_or(0, |n| n.max(1))) {
        // The pool exists already: it keeps its threads.
        Err(_) if threads.is_none() => Ok(()),
        other => other,
    }
}

/// A backend that can be selected at run time (`--backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// burn's Flex CPU backend (always compiled in).
    #[default]
    Cpu,
    /// wgpu (Vulkan, Metal, DX12; lavapipe as a software fallback). Feature `wgpu`.
    Wgpu,
    /// CUDA. Feature `cuda`.
    Cuda,
    /// burn's LibTorch backend on the CPU (PyTorch's own kernels). Feature
    /// `tch`; for comparison, not needed for anything.
    Tch,
}

impl BackendKind {
    /// All kinds, in the order `--help` lists them.
    pub const ALL: [BackendKind; 4] = [
        BackendKind::Cpu,
        BackendKind::Wgpu,
        BackendKind::Cuda,
        BackendKind::Tch,
    ];

    /// Whether this backend was compiled into the running binary.
    pub fn is_compiled(self) -> bool {
        match self {
            BackendKind::Cpu => true,
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
            BackendKind::Tch => cfg!(feature = "tch"),
        }
    }

    /// The cargo feature that compiles this backend in.
    pub fn feature(self) -> Option<&'static str> {
        match self {
            BackendKind::Cpu => None,
            BackendKind::Wgpu => Some("wgpu"),
            BackendKind::Cuda => Some("cuda"),
            BackendKind::Tch => Some("tch"),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
            BackendKind::Tch => "tch",
        })
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(BackendKind::Cpu),
            "wgpu" => Ok(BackendKind::Wgpu),
            "cuda" => Ok(BackendKind::Cuda),
            "tch" | "libtorch" => Ok(BackendKind::Tch),
            other => Err(Error::Config(format!(
                "unknown backend '{other}': expected one of cpu, wgpu, cuda, tch"
            ))),
        }
    }
}

/// Code that runs on whichever autodiff backend the user chose.
///
/// Implement it for a small struct holding your arguments, then call
/// [`with_backend`]; generic code stays free of `#[cfg]`s.
pub trait BackendTask {
    /// What the task returns.
    type Output;
    /// Runs the task on backend `B` and its device.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output>;

    /// How many devices of this node a data-parallel task wants (`None`: a
    /// plain task on one device, run with [`BackendTask::run`]).
    fn devices(&self) -> Option<usize> {
        None
    }

    /// Runs the task on `devices()` devices of backend `B` (GPUs by index;
    /// the one CPU device repeated, its replicas sharing the cores).
    fn run_on_devices<B: AutodiffBackend>(self, _devices: Vec<B::Device>) -> Result<Self::Output>
    where
        Self: Sized,
    {
        Err(Error::Config("this task runs on one device".into()))
    }
}

/// Runs `task` on the backend `kind`, after checking that the backend is
/// compiled in and has a usable device.
///
/// Asking for a backend that was not compiled in is an error that names the
/// cargo feature to enable; asking for CUDA where no driver is present is an
/// error too (burn would panic on the first operation instead).
pub fn with_backend<T: BackendTask>(kind: BackendKind, task: T) -> Result<T::Output> {
    if !kind.is_compiled() {
        return Err(Error::Backend(format!(
            "the {kind} backend is not compiled into this binary; rebuild with `--features {}` \
             (for example `cargo run --release --features {} -- ...`)",
            kind.feature().unwrap_or_default(),
            kind.feature().unwrap_or_default()
        )));
    }
    let parallel = task.devices();
    let n = parallel.unwrap_or(1).max(1);
    match kind {
        BackendKind::Cpu if parallel.is_some() => {
            task.run_on_devices::<CpuAutodiff>(vec![CpuDevice::default(); n])
        }
        BackendKind::Cpu => task.run::<CpuAutodiff>(CpuDevice::default()),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            use burn::backend::{Autodiff, Wgpu, wgpu::WgpuDevice};
            if parallel.is_some() {
                let devices: Vec<WgpuDevice> = if n == 1 {
                    vec![WgpuDevice::default()]
                } else {
                    (0..n).map(WgpuDevice::DiscreteGpu).collect()
                };
                for (i, device) in devices.iter().enumerate() {
                    probe::<Wgpu>(device, &format!("wgpu GPU {i}"), WGPU_HINT)?;
                }
                return task.run_on_devices::<Autodiff<Wgpu>>(devices);
            }
            let device = WgpuDevice::default();
            probe::<Wgpu>(&device, "wgpu", WGPU_HINT)?;
            task.run::<Autodiff<Wgpu>>(device)
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            use burn::backend::{Autodiff, Cuda, cuda::CudaDevice};
            cuda_driver_present()?;
            if parallel.is_some() {
                let devices: Vec<CudaDevice> = (0..n).map(CudaDevice::new).collect();
                for (i, device) in devices.iter().enumerate() {
                    probe::<Cuda>(
                        device,
                        &format!("CUDA GPU {i}"),
                        &format!(
                            "CUDA device {i} could not be used (does the machine have {n} GPUs?)"
                        ),
                    )?;
                }
                return task.run_on_devices::<Autodiff<Cuda>>(devices);
            }
            let device = CudaDevice::default();
            probe::<Cuda>(&device, "cuda", "the CUDA device could not be used")?;
            task.run::<Autodiff<Cuda>>(device)
        }
        #[cfg(feature = "tch")]
        BackendKind::Tch => {
            use burn::backend::{Autodiff, LibTorch, libtorch::LibTorchDevice};
            if parallel.is_some() {
                return Err(Error::Backend(
                    "data-parallel training runs on the cpu, wgpu and cuda backends, not tch"
                        .into(),
                ));
            }
            task.run::<Autodiff<LibTorch>>(LibTorchDevice::Cpu)
        }
        #[allow(unreachable_patterns)]
        _ => unreachable!("checked by is_compiled"),
    }
}

/// Sizes the CPU thread pools: rayon's global pool, which the CPU backend's
/// kernels run on (its threads [`flush_subnormals`]), and with the `tch`
/// feature LibTorch's intra-op pool. `n = 0` leaves the size to rayon
/// (`RAYON_NUM_THREADS`, else every core). Call it once, before any tensor
/// work (rayon's pool can be built once).
pub fn set_cpu_threads(n: usize) -> Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .start_handler(|_| flush_subnormals())
        .build_global()
        .map_err(|e| Error::Config(format!("cannot set {n} threads: {e}")))?;
    #[cfg(feature = "tch")]
    if n > 0 {
        tch::set_num_threads(n as i32);
    }
    Ok(())
}

/// Runs `work` on a thread of rayon's global pool (the one the CPU
/// backend's kernels use) and returns its result.
///
/// Called from any other thread, every parallel operation is handed to the
/// pool while the calling thread sleeps until it is done: two thread
/// switches per tensor operation, which dominate small ones (batch-1
/// decoding, small layers). On a pool thread the operation starts where
/// it is asked for and the other threads join in by work stealing; with
/// one thread it runs inline. Size the pool first ([`set_cpu_threads`]).
///
/// ```
/// use genzoo_core::backend::on_cpu_pool;
/// assert!(rayon::current_thread_index().is_none()); // the main thread
/// assert!(on_cpu_pool(|| rayon::current_thread_index().is_some()));
/// assert_eq!(on_cpu_pool(|| (1..=10u64).sum::<u64>()), 55);
/// ```
pub fn on_cpu_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    // `scope` runs its body on a worker of the global pool.
    rayon::scope(|_| work())
}

/// Checks that backend `kind` is compiled in and has a usable device,
/// without running anything else: call it before creating files.
pub fn check_available(kind: BackendKind) -> Result<()> {
    struct Nothing;
    impl BackendTask for Nothing {
        type Output = ();
        fn run<B: AutodiffBackend>(self, _: B::Device) -> Result<()> {
            Ok(())
        }
    }
    with_backend(kind, Nothing)
}

/// What to do when the wgpu backend finds no adapter; [`probe`]'s hint for it.
pub const WGPU_HINT: &str = "no usable wgpu adapter was found (on Linux without a GPU, install a software Vulkan driver: `apt-get install mesa-vulkan-drivers`)";

/// Runs one tiny operation on `device` inside `catch_unwind`: GPU backends
/// panic on the first operation when no device is usable, and a panic is no
/// error message. The error names the backend (`name`) and says what to do
/// (`hint`); [`with_backend`] probes every GPU device before its task.
///
/// ```
/// use genzoo_core::backend::{CpuBackend, CpuDevice, probe};
/// probe::<CpuBackend>(&CpuDevice::default(), "cpu", "").unwrap();
/// ```
pub fn probe<B: burn::tensor::backend::Backend>(
    device: &B::Device,
    name: &str,
    hint: &str,
) -> Result<()> {
    let device = device.clone();
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let t = burn::tensor::Tensor::<B, 1>::ones([4], &device);
        t.sum().into_scalar()
    }));
    std::panic::set_hook(previous_hook);
    match outcome {
        Ok(_) => Ok(()),
        Err(panic) => Err(Error::Backend(format!(
            "the {name} backend failed its first operation: {hint}. {}",
            crate::error::panic_message(&panic)
        ))),
    }
}

/// Checks that the CUDA driver library can be loaded before burn tries (and panics).
#[cfg(feature = "cuda")]
fn cuda_driver_present() -> Result<()> {
    let candidates = ["libcuda.so", "libcuda.so.1"];
    let found = std::env::var_os("LD_LIBRARY_PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(
            [
                "/usr/lib/x86_64-linux-gnu",
                "/usr/lib64",
                "/usr/lib",
                "/usr/local/cuda/lib64",
                "/usr/local/nvidia/lib64",
                "/usr/lib/wsl/lib",
            ]
            .iter()
            .map(std::path::PathBuf::from),
        )
        .any(|dir| candidates.iter().any(|c| dir.join(c).exists()));
    if found {
        Ok(())
    } else {
        Err(Error::Backend(
            "no CUDA driver found (libcuda.so is not on LD_LIBRARY_PATH or in the usual library directories); \
             install the NVIDIA driver or use `--backend cpu`"
                .into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backend_names() {
        assert_eq!("cpu".parse::<BackendKind>().unwrap(), BackendKind::Cpu);
        assert_eq!("CUDA".parse::<BackendKind>().unwrap(), BackendKind::Cuda);
        assert_eq!("libtorch".parse::<BackendKind>().unwrap(), BackendKind::Tch);
        assert!("tpu".parse::<BackendKind>().is_err());
    }

    #[test]
    fn missing_backend_names_its_feature() {
        struct Nothing;
        impl BackendTask for Nothing {
            type Output = ();
            fn run<B: AutodiffBackend>(self, _: B::Device) -> Result<()> {
                Ok(())
            }
        }
        for kind in BackendKind::ALL {
            let result = with_backend(kind, Nothing);
            if kind.is_compiled() {
                if kind == BackendKind::Cpu {
                    assert!(result.is_ok());
                }
            } else {
                let msg = result.unwrap_err().to_string();
                assert!(
                    msg.contains(&format!("--features {}", kind.feature().unwrap())),
                    "{msg}"
                );
            }
        }
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn flushed_threads_compute_subnormals_as_zero() {
        /// Not inlined: the compiler does not order float arithmetic after
        /// the flag change within one function, only after a call.
        #[inline(never)]
        fn products() -> (f32, f32) {
            use std::hint::black_box;
            let tiny = f32::MIN_POSITIVE; // the smallest normal float
            let subnormal = f32::from_bits(1);
            (
                black_box(tiny) * black_box(0.5),
                black_box(subnormal) * black_box(2.0),
            )
        }
        // Threads of their own: the flags are per thread.
        let before = std::thread::spawn(products).join().unwrap();
        let after = std::thread::spawn(|| {
            flush_subnormals();
            products()
        })
        .join()
        .unwrap();
        assert!(before.0 > 0.0 && before.1 > 0.0, "{before:?}");
        // Results below the normal range flush to zero, and subnormal inputs read as zero.
        assert_eq!(after, (0.0, 0.0));
    }
}
