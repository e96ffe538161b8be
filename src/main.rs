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
    /// Run the Kubernetes operator (Registry and GarbageCollection controllers).
    Operator(OperatorArgs),
    /// Print the CustomResourceDefinitions (Registry, GarbageCollection) as YAML.
    Crd,
}

#[derive(Args)]
struct OperatorArgs {
    /// Watch only this namespace [default: all namespaces]
    #[arg(long, env = "BERTH_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address for /metrics, /healthz and /readyz
    #[arg(long, env = "BERTH_OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: std::net::SocketAddr,
    /// Take a coordination Lease before acting, so only one replica reconciles
    #[arg(long, env = "BERTH_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader Lease (normally the operator's own)
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease (normally the pod name)
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Image the Registry pods and gc Jobs run when a Registry names none (the operator's own)
    #[arg(long, env = "BERTH_IMAGE", default_value = concat!("ghcr.io/berth-dev/berth:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// Log format
    #[arg(long, env = "BERTH_LOG_FORMAT", value_enum, default_value = "plain")]
    log_format: LogFormat,
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
        Command::Crd => match berth::operator::crd::crds_yaml() {
            Ok(text) => {
                use std::io::Write;
                // A closed pipe (`berth crd | head`) is the reader's choice, not an error.
                match std::io::stdout().lock().write_all(text.as_bytes()) {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                        eprintln!("berth: {e}");
                        ExitCode::FAILURE
                    }
                    _ => ExitCode::SUCCESS,
                }
            }
            Err(e) => {
                eprintln!("berth: cannot render the CRDs: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Operator(a) => run_operator(a),
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

fn run_operator(a: OperatorArgs) -> ExitCode {
    use berth::operator::run;
    serve::init_tracing(a.log_format, "info");
    let identity = a
        .identity
        .unwrap_or_else(|| format!("berth-operator-{}", std::process::id()));
    let options = run::Options {
        namespace: a.namespace,
        http_addr: a.http_addr,
        lease: a
            .leader_elect
            .then(|| run::lease_config(a.lease_namespace, identity)),
        image: a.image,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("berth: {e}");
            ExitCode::FAILURE
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
