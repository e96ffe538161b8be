//! The `berth` command line: parse arguments, set up logging, call into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use berth::config::{Config, LogFormat};
use berth::serve::{self, Overrides, Settings};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "A fast OCI registry and its Kubernetes operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the OCI Distribution v1.1 registry.
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// YAML config file (the schema the operator renders); flags and BERTH_* variables win over it.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, host:port (port 0 picks a free one) [default: 127.0.0.1:5000]
    #[arg(long, env = "BERTH_ADDR")]
    addr: Option<String>,
    /// Storage root directory for the filesystem backend [default: ./berth-data]
    #[arg(long, env = "BERTH_ROOT")]
    root: Option<PathBuf>,
    /// Log format [default: plain]
    #[arg(long, env = "BERTH_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. info, debug (one line per request), berth=debug [default: info; RUST_LOG wins]
    #[arg(long, env = "BERTH_LOG_LEVEL")]
    log_level: Option<String>,
    /// Bytes of manifests cached in memory by digest [default: 8388608]
    #[arg(long, env = "BERTH_MANIFEST_CACHE_BYTES")]
    manifest_cache_bytes: Option<usize>,
    /// Mount `?mount=` blobs without `from` when the registry already stores them [default: true]
    #[arg(long, env = "BERTH_AUTOMATIC_CROSS_MOUNT")]
    automatic_cross_mount: Option<bool>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => {
            let file = match a.config.as_deref().map(Config::load).transpose() {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("berth: {e}");
                    return ExitCode::from(2);
                }
            };
            let settings = Settings::resolve(
                file,
                Overrides {
                    addr: a.addr,
                    root: a.root,
                    log_format: a.log_format,
                    log_level: a.log_level,
                    manifest_cache_bytes: a.manifest_cache_bytes,
                    automatic_cross_mount: a.automatic_cross_mount,
                },
            );
            serve::init_tracing(settings.log_format, &settings.log_level);
            limit_malloc_arenas();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(64)
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("berth: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve::run(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("berth: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// glibc gives each thread that allocates its own arena (up to 8 per core), and memory freed in
/// one arena is not reused by another: with blob reads and writes on blocking threads, that
/// fragmentation is most of the resident size. Two arenas keep it flat.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
