fn main() {
    restore_default_sigpipe();
    let cli = genzoo::cli::Cli::parse_arguments();
    if let Err(e) = genzoo::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(genzoo::cli::exit_code(&e));
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
