//! The error type shared by genzoo's crates.

use std::path::PathBuf;

/// Result alias used across genzoo.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, where, and (in the message) how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying OS error.
        #[source]
        source: std::io::Error,
    },
    /// A data file is malformed or missing, or a dataset cannot be found.
    #[error("{0}")]
    Data(String),
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A checkpoint cannot be used (other model, other config, corrupt, newer format).
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The requested backend is not compiled in or has no usable device.
    #[error("{0}")]
    Backend(String),
    /// A loss or metric became NaN or infinite.
    #[error(
        "{name} is {value} at step {step}; training stopped and wrote nothing of that step \
         (earlier checkpoints are kept; a lower --lr or clip_norm under [train] may help)"
    )]
    NonFinite {
        /// The step at which the value was produced (1-based: the step that was being taken).
        step: u64,
        /// The metric's name.
        name: String,
        /// The offending value.
        value: f64,
    },
    /// A data-parallel run failed: a replica or node died, did not answer in
    /// time, or disagreed with the others.
    #[error("data-parallel training: {0}")]
    Parallel(String),
    /// Training was interrupted (Ctrl-C, SIGTERM) and stopped after a step
    /// it checkpointed.
    #[error("{}", interrupted_message(*.step, *.total, .resume))]
    Interrupted {
        /// The run's step when it stopped.
        step: u64,
        /// The run's planned steps.
        total: u64,
        /// The command that continues it (`genzoo resume runs/vae`).
        resume: String,
    },
    /// Anything else, with its explanation.
    #[error("{0}")]
    Other(String),
}

fn interrupted_message(step: u64, total: u64, resume: &str) -> String {
    if step < total {
        format!(
            "interrupted at step {step} of {total}, which is checkpointed: `{resume}` continues"
        )
    } else {
        format!("interrupted as the run finished its {total} steps: it is complete")
    }
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A checkpoint error for `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// The message a caught panic carried (`panic!`'s text), or `(no message)`.
///
/// ```
/// let panic = std::panic::catch_unwind(|| panic!("shape {} is wrong", 3)).unwrap_err();
/// assert_eq!(genzoo_core::error::panic_message(&panic), "shape 3 is wrong");
/// ```
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    payload_message(&**panic).to_string()
}

/// The message of a panic's payload, as a panic hook is given it
/// (`PanicHookInfo::payload`), or `(no message)`.
pub fn payload_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)")
}
