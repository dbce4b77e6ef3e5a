use clap::Parser;

fn main() {
    genzoo::core::backend::tune_allocator();
    let cli = genzoo::cli::Cli::parse();
    if let Err(e) = genzoo::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
