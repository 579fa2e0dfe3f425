use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tars_index::cli::{self, Cli, LogWriter};
use tracing_subscriber::EnvFilter;

/// mimalloc: the local model allocates and frees large activation buffers; with glibc malloc much of inference time
/// was spent in the kernel (BENCHMARKS.md: +40% embeddings/s, measured with the earlier candle-tensor encoder).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter)
        .with_ansi(ansi)
        .with_target(false)
        .without_time()
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::from(cli::exit::FAILURES);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => cli::report(&failure),
    }
}
