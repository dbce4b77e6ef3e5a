//! The `genzoo` command-line tool.
//!
//! It lives in the binary, not in the `genzoo` library (a thin re-export of
//! the crates): the command line compiles the training, sampling and
//! evaluation of every family for every backend of the build, and only the
//! binary needs them. Examples and tests that use the library then build
//! beside it instead of waiting for it.

use clap::Parser;

mod bench;
mod cli;
mod compare;

fn main() {
    restore_default_sigpipe();
    let cli = cli::Cli::parse();
    if let Err(e) = cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Rust ignores SIGPIPE, so `println!` to a closed pipe (`genzoo list | head
/// -1`) panics with a backtrace. A command-line tool should stop quietly
/// instead, as C tools do: restore the default action.
fn restore_default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: sets one signal's disposition at start-up, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
