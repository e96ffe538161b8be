//! The `berth` command line: parse arguments, set up logging, call into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use berth::config::{Config, LogFormat};
use berth::registry::auth::{robots, token};
use berth::serve::{self, Overrides, Settings};
use berth::store::fs::FsStore;
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
    /// Manage robot accounts (CI credentials) in the registry's storage.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// Where the registry's storage is: the same `--config`/`--root` as `serve`.
#[derive(Args)]
struct StoreArgs {
    /// YAML config file whose storage root is used.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Storage root directory [default: ./berth-data]
    #[arg(long, env = "BERTH_ROOT")]
    root: Option<PathBuf>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a robot account and print its secret (once: only a hash is stored).
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// Robot name (a-z, 0-9, '-', '_'); it signs in as `robot$<name>`.
        #[arg(long)]
        name: String,
        /// What it may do: `repository:<glob>:<actions>` (repeatable), e.g. 'repository:team-a/*:pull,push'.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Lifetime such as 30d, 12h, 90m [default: no expiry]
        #[arg(long)]
        expires: Option<String>,
    },
    /// Revoke a robot account at once.
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        name: String,
    },
    /// List robot accounts.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
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
    /// htpasswd file (bcrypt) of users; turns authentication on
    #[arg(long, env = "BERTH_HTPASSWD")]
    htpasswd: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS (re-read when the file changes)
    #[arg(long, env = "BERTH_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[arg(long, env = "BERTH_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
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
                    htpasswd: a.htpasswd,
                    tls_cert: a.tls_cert,
                    tls_key: a.tls_key,
                },
            );
            let _log_guard = serve::init_tracing(settings.log_format, &settings.log_level);
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
        Command::Token(t) => match token_command(t) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("berth: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn open_store(a: &StoreArgs) -> Result<FsStore, String> {
    let file = a
        .config
        .as_deref()
        .map(Config::load)
        .transpose()
        .map_err(|e| e.to_string())?;
    let root = a
        .root
        .clone()
        .unwrap_or_else(|| file.unwrap_or_default().root());
    FsStore::open(&root).map_err(|e| format!("cannot open storage at {}: {e}", root.display()))
}

fn token_command(cmd: TokenCommand) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        match cmd {
            TokenCommand::Create {
                store,
                name,
                scopes,
                expires,
            } => {
                let store = open_store(&store)?;
                let expires = expires
                    .as_deref()
                    .map(robots::parse_duration)
                    .transpose()
                    .map_err(|e| e.to_string())?;
                let (record, secret) = robots::create(&store, &name, &scopes, expires)
                    .await
                    .map_err(|e| e.to_string())?;
                eprintln!(
                    "created robot {}: sign in as user '{}{}' with the secret below (shown only once){}",
                    record.name,
                    robots::ROBOT_PREFIX,
                    record.name,
                    record
                        .expires
                        .map(|e| format!("; expires at {}", token::rfc3339(e)))
                        .unwrap_or_default()
                );
                println!("{secret}");
                Ok(())
            }
            TokenCommand::Revoke { store, name } => {
                let store = open_store(&store)?;
                robots::revoke(&store, &name)
                    .await
                    .map_err(|e| e.to_string())?;
                eprintln!("revoked robot {name}");
                Ok(())
            }
            TokenCommand::List { store } => {
                let store = open_store(&store)?;
                let list = robots::list(&store).await.map_err(|e| e.to_string())?;
                println!("NAME\tSCOPES\tCREATED\tEXPIRES");
                for r in list {
                    let expires = match r.expires {
                        Some(e) if r.expired => format!("{} (expired)", token::rfc3339(e)),
                        Some(e) => token::rfc3339(e),
                        None => "never".into(),
                    };
                    println!(
                        "{}\t{}\t{}\t{}",
                        r.name,
                        r.scopes.join(" "),
                        token::rfc3339(r.created),
                        expires
                    );
                }
                Ok(())
            }
        }
    })
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
