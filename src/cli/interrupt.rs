//! Ctrl-C (SIGINT) and SIGTERM while a run trains: the step in progress
//! finishes and is checkpointed, then genzoo exits with 128 + the signal's
//! number, as a shell reports a process the signal ended. A second signal
//! ends the process at once (the handler is installed to fire once).
//!
//! Job schedulers send SIGTERM before they kill a job: with this, a
//! pre-empted run loses no steps and `genzoo resume` continues it.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

/// The flag the trainer reads, set by the handler.
static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();
/// The signal that set it (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The handler, installed while it lives (and the previous dispositions
/// restored when it drops), so that a signal outside training ends the
/// process as usual.
pub(crate) struct Armed {
    #[cfg(unix)]
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

/// Installs the handler and returns the flag it sets, cleared.
pub(crate) fn arm() -> (Armed, Arc<AtomicBool>) {
    let flag = STOP
        .get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone();
    flag.store(false, Ordering::SeqCst);
    SIGNAL.store(0, Ordering::SeqCst);
    (install(), flag)
}

/// The signal that interrupted training, if one did.
pub(crate) fn received() -> Option<i32> {
    Some(SIGNAL.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

#[cfg(unix)]
fn install() -> Armed {
    let mut previous = Vec::new();
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid empty one; the handler only
        // stores atomics and calls write(2), both async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            // Once: a second signal takes the default action and ends the
            // process. Restart: reads and writes under way carry on.
            action.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, &action, &mut old) == 0 {
                previous.push((signal, old));
            }
        }
    }
    Armed { previous }
}

#[cfg(not(unix))]
fn install() -> Armed {
    Armed {}
}

#[cfg(unix)]
extern "C" fn on_signal(signal: libc::c_int) {
    SIGNAL.store(signal, Ordering::SeqCst);
    if let Some(flag) = STOP.get() {
        flag.store(true, Ordering::SeqCst);
    }
    const MESSAGE: &[u8] =
        b"\ngenzoo: stopping after this step, with a checkpoint (interrupt again to stop at once)\n";
    // SAFETY: write(2) of a static buffer; nothing to do if it fails.
    unsafe {
        libc::write(2, MESSAGE.as_ptr().cast(), MESSAGE.len());
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        #[cfg(unix)]
        for (signal, old) in &self.previous {
            // SAFETY: puts back the disposition sigaction returned.
            unsafe {
                libc::sigaction(*signal, old, std::ptr::null_mut());
            }
        }
    }
}
