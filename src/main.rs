//! The `berth` command line: parse arguments, set up logging, call into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use berth::config::{Config, LogFormat};
use berth::registry::auth::{robots, token};
use berth::serve::{self, Overrides, Settings};
use berth::store::{Backend, Store};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "A fast OCI registry and its Kubernetes operator",
    after_help = "Examples:\n  berth serve --root ./berth-data                 # a registry on localhost:5000\n  docker push localhost:5000/hello:1\n  berth gc --root ./berth-data --dry-run          # what garbage collection would delete\n  berth operator                                  # in a cluster: reconcile Registry resources\n\nEach command's --help says more."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the OCI Distribution v1.1 registry.
    #[command(
        after_help = "Examples:\n  berth serve --root ./berth-data\n  berth serve --addr 0.0.0.0:5000 --htpasswd ./htpasswd --tls-cert cert.pem --tls-key key.pem\n  berth serve --config berth.yaml                 # storage, auth, proxy, gc: see README"
    )]
    Serve(ServeArgs),
    /// Delete unreferenced blobs and manifests, apply tag retention, purge abandoned uploads.
    /// Safe to run while registries serve the same storage.
    #[command(
        after_help = "Examples:\n  berth gc --root ./berth-data --dry-run --json\n  berth gc --config berth.yaml --delete-untagged --rule 'ci/**:keep-last=10'"
    )]
    Gc(GcArgs),
    /// Delete all of a registry's stored data (blobs, manifests, tags, uploads, robot accounts),
    /// and nothing else in its bucket or directory. Irreversible: needs --yes.
    #[command(
        after_help = "Examples:\n  berth purge --config berth.yaml --dry-run\n  berth purge --root ./berth-data --yes"
    )]
    Purge(PurgeArgs),
    /// Manage robot accounts (CI credentials) in the registry's storage.
    #[command(
        subcommand,
        after_help = "Examples:\n  berth token create --root ./berth-data --name ci --scope 'repository:team-a/**:pull,push' --expires 90d\n  berth token list --root ./berth-data"
    )]
    Token(TokenCommand),
    /// Run the Kubernetes operator (Registry, GarbageCollection and Mirror controllers).
    #[command(
        after_help = "Examples:\n  berth operator                                  # in-cluster, all namespaces\n  KUBECONFIG=~/.kube/config berth operator --namespace team --leader-elect false"
    )]
    Operator(OperatorArgs),
    /// Copy a declared set of images from other registries into this one's storage.
    #[command(subcommand)]
    Mirror(MirrorCommand),
    /// Print the CustomResourceDefinitions (Registry, GarbageCollection, Mirror) as YAML.
    #[command(after_help = "Example:\n  berth crd | kubectl apply --server-side -f -")]
    Crd,
}

#[derive(Args)]
struct GcArgs {
    /// YAML config file (the same file `serve` reads; its `gc` section sets the defaults).
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Storage root directory [default: the config file's, else ./berth-data]
    #[arg(long, env = "BERTH_ROOT")]
    root: Option<PathBuf>,
    /// Report what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also delete manifests no tag reaches (children of tagged indexes and referrers of kept
    /// manifests are kept).
    #[arg(long)]
    delete_untagged: bool,
    /// Keep unreferenced items touched within this long, e.g. 1h, 30m; 0s sweeps at once [default: 1h]
    #[arg(long)]
    grace: Option<String>,
    /// Purge upload sessions idle for longer than this [default: 24h]
    #[arg(long)]
    upload_ttl: Option<String>,
    /// A retention rule, PATTERN[:keep-last=N,keep-tags=REGEX,older-than=DURATION]; repeatable,
    /// replaces the config file's rules.
    #[arg(long = "rule", value_name = "RULE")]
    rules: Vec<String>,
    /// Print the report as JSON on one line (with --dry-run: every deletion and its reason).
    #[arg(long)]
    json: bool,
    /// Also write the report's counts as JSON to this file (a Kubernetes Job passes
    /// /dev/termination-log, where the operator reads it; per-item lists are left out to stay
    /// within the 4 KiB such a message may hold).
    #[arg(long, value_name = "FILE")]
    report_file: Option<PathBuf>,
}

#[derive(Args)]
struct PurgeArgs {
    /// Really delete. Without it (and without --dry-run) nothing is deleted and the exit
    /// status is 2.
    #[arg(long)]
    yes: bool,
    /// Count what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// YAML config file naming the storage (the file `serve` reads).
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// The config file's whole text instead of --config (a Job that must not depend on a
    /// ConfigMap).
    #[arg(
        long,
        env = "BERTH_CONFIG_INLINE",
        value_name = "YAML",
        hide_env_values = true
    )]
    config_inline: Option<String>,
    /// Storage root directory; wins over the config's storage, as for `serve`.
    #[arg(long, env = "BERTH_ROOT")]
    root: Option<PathBuf>,
    /// Also write the JSON report here when this file exists and is writable (in a Kubernetes
    /// Job: the container's termination message, where the operator reads it).
    #[arg(long, value_name = "FILE", default_value = "/dev/termination-log")]
    report_file: PathBuf,
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
    #[command(
        after_help = "Example:\n  berth token create --root ./berth-data --name ci --scope 'repository:team-a/*:pull,push'"
    )]
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
    #[command(after_help = "Example:\n  berth token revoke --root ./berth-data --name ci")]
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        name: String,
    },
    /// List robot accounts.
    #[command(after_help = "Example:\n  berth token list --root ./berth-data")]
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum MirrorCommand {
    /// Copy the set's images (chosen tags, platforms, referrers) into a registry's storage;
    /// what is there already is skipped, and a killed sync is resumed by running it again.
    #[command(
        after_help = "Example:\n  berth mirror sync --config set.yaml --root /var/lib/berth --json\n  berth mirror sync --config set.yaml --to https://registry.site.example --to-username ci --to-password-file ci.pw\n\nset.yaml:\n  mirrors:\n    - source: https://registry-1.docker.io/library/alpine\n      semver: \">=3.19 <4\"        # or tags: [regexes], newest: 3\n      platforms: [linux/amd64, linux/arm64]\n      referrers: true\n      destination: mirror/alpine"
    )]
    Sync {
        /// The mirror set file.
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        into: MirrorInto,
        /// Print the report as one JSON line.
        #[arg(long)]
        json: bool,
        /// Also write the report, errors cut to fit 4 KiB, to this file (a Kubernetes Job's
        /// /dev/termination-log, where the operator reads it).
        #[arg(long, value_name = "FILE")]
        report_file: Option<PathBuf>,
    },
    /// Copy every image of a bundle (from `mirror export`) into a registry; each blob is
    /// verified before it is used, and a failed import is finished by running it again.
    #[command(
        after_help = "Examples:\n  berth mirror import site-2026-12.tar --root /var/lib/berth\n  berth mirror import site-2026-12.tar --to https://registry.site.example --to-username ci --to-password-file ci.pw"
    )]
    Import {
        /// The bundle.
        #[arg(value_name = "BUNDLE.tar")]
        bundle: PathBuf,
        #[command(flatten)]
        into: MirrorInto,
        /// Print the report as one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Write the set's images to one tar file (an OCI image layout) to carry across an air gap.
    #[command(
        after_help = "Examples:\n  berth mirror export --config set.yaml --out site-2026-12.tar\n  berth mirror export --config set.yaml --out site-2027-01.tar --since site-2026-12.tar   # only new blobs\n  skopeo inspect oci-archive:site-2026-12.tar:mirror/alpine:3.21"
    )]
    Export {
        /// The mirror set file.
        #[arg(long)]
        config: PathBuf,
        /// The bundle to write (in place only once it is whole).
        #[arg(long, value_name = "BUNDLE.tar")]
        out: PathBuf,
        /// An earlier bundle: blobs it holds are left out of this one.
        #[arg(long, value_name = "OLD.tar")]
        since: Option<PathBuf>,
        /// Print the report as one JSON line.
        #[arg(long)]
        json: bool,
    },
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
    /// Collect garbage inside the server this often, e.g. 6h (the config file's gc section
    /// sets grace, retention and the rest) [default: off]
    #[arg(long, env = "BERTH_GC_INTERVAL")]
    gc_interval: Option<String>,
    /// htpasswd file (bcrypt) of users; turns authentication on
    #[arg(long, env = "BERTH_HTPASSWD")]
    htpasswd: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS (re-read when the file changes)
    #[arg(long, env = "BERTH_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[arg(long, env = "BERTH_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Largest blob accepted, in bytes [default: 34359738368 (32 GiB)]
    #[arg(long, env = "BERTH_MAX_BLOB_BYTES")]
    max_blob_bytes: Option<u64>,
    /// Open upload sessions per repository and per user [default: 100]
    #[arg(long, env = "BERTH_MAX_UPLOAD_SESSIONS")]
    max_upload_sessions: Option<usize>,
    /// Open client connections; more wait in the listen queue [default: 4096, fitted to the fd limit]
    #[arg(long, env = "BERTH_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Time a client has to send a request's headers (and to start the next one) [default: 30s]
    #[arg(long, env = "BERTH_HEADER_READ_TIMEOUT")]
    header_read_timeout: Option<String>,
    /// Close a connection on which nothing moves for this long [default: 2m]
    #[arg(long, env = "BERTH_IDLE_TIMEOUT")]
    idle_timeout: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Gc(a) => gc(a),
        Command::Purge(a) => purge(a),
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
        Command::Mirror(m) => mirror(m),
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
                    gc_interval: a.gc_interval,
                    htpasswd: a.htpasswd,
                    tls_cert: a.tls_cert,
                    tls_key: a.tls_key,
                    max_blob_bytes: a.max_blob_bytes,
                    max_upload_sessions: a.max_upload_sessions,
                    max_connections: a.max_connections,
                    header_read_timeout: a.header_read_timeout,
                    idle_timeout: a.idle_timeout,
                },
            );
            let settings = match settings {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("berth: {e}");
                    return ExitCode::from(2);
                }
            };
            let _log_guard = match logging(settings.log_format, &settings.log_level) {
                Ok(g) => g,
                Err(c) => return c,
            };
            raise_fd_limit();
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
            let format = settings.log_format;
            match runtime.block_on(serve::run(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    fatal(format, "berth", &e);
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

/// Where `--root`/`--to` (and its credentials) point a mirror command.
#[derive(Args)]
struct MirrorInto {
    /// The storage root of the registry to fill (it may be serving meanwhile).
    #[arg(long, required_unless_present = "to", conflicts_with = "to")]
    root: Option<PathBuf>,
    /// The registry to push to, e.g. https://registry.example.com (any OCI registry).
    #[arg(long, value_name = "URL")]
    to: Option<String>,
    /// User at --to (Basic, or to obtain a token with push rights).
    #[arg(long, requires = "to_password_file")]
    to_username: Option<String>,
    /// File holding the password or token for --to-username.
    #[arg(long, requires = "to_username")]
    to_password_file: Option<PathBuf>,
    /// PEM CA certificates to trust for --to beside the system's (a private CA).
    #[arg(long, requires = "to")]
    to_ca_file: Option<PathBuf>,
}

fn mirror_destination(
    into: MirrorInto,
    rt: &tokio::runtime::Runtime,
) -> Result<berth::mirror::dest::Destination, ExitCode> {
    use berth::mirror::dest::Destination;
    if let Some(root) = into.root {
        return match rt.block_on(berth::store::open(&Backend::Filesystem(root))) {
            Ok(s) => Ok(Destination::Store(s)),
            Err(e) => {
                eprintln!("berth mirror: {e}");
                Err(ExitCode::FAILURE)
            }
        };
    }
    let cfg = berth::config::UpstreamConfig {
        prefix: "destination".into(),
        url: into.to.unwrap_or_default(),
        username: into.to_username,
        password_file: into.to_password_file,
        ca_file: into.to_ca_file,
        ..Default::default()
    };
    match berth::proxy::Upstream::from_config(0, &cfg, Default::default()) {
        Ok(u) => Ok(Destination::Registry(Box::new(u))),
        Err(e) => {
            let flag = match e.field {
                "passwordFile" => "--to-password-file",
                "username" => "--to-username",
                "caFile" => "--to-ca-file",
                _ => "--to",
            };
            eprintln!("berth mirror: {flag}: {}", e.reason);
            Err(ExitCode::from(2))
        }
    }
}

/// A bar on a terminal, lines in a log, nothing with `--json`.
fn progress(json: bool) -> berth::mirror::progress::Progress {
    use berth::mirror::progress::Progress;
    if json {
        Progress::quiet()
    } else {
        Progress::for_stderr()
    }
}

fn mirror(cmd: MirrorCommand) -> ExitCode {
    use berth::mirror::{bundle, dest::Destination, set, sync};
    let _log_guard = match logging(LogFormat::Plain, "warn") {
        Ok(g) => g,
        Err(c) => return c,
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    let load = |config: &std::path::Path| {
        set::load(config).map_err(|e| {
            eprintln!("berth mirror: {e}");
            ExitCode::from(2)
        })
    };
    let json = match &cmd {
        MirrorCommand::Sync { json, .. }
        | MirrorCommand::Import { json, .. }
        | MirrorCommand::Export { json, .. } => *json,
    };
    let shown = progress(json);
    let (report, json) = match cmd {
        MirrorCommand::Sync {
            config,
            into,
            json,
            report_file,
        } => {
            let mirrors = match load(&config) {
                Ok(m) => m,
                Err(c) => return c,
            };
            let dest = match mirror_destination(into, &rt) {
                Ok(d) => d,
                Err(c) => return c,
            };
            let report = rt.block_on(sync::sync(&mirrors, &dest, &shown));
            if let Some(f) = report_file
                && let Err(e) = std::fs::write(&f, report.compact())
            {
                eprintln!("berth mirror: --report-file {}: {e}", f.display());
            }
            (report, json)
        }
        MirrorCommand::Import {
            bundle: path,
            into,
            json,
        } => {
            let reader = match bundle::Reader::open(&path) {
                Ok(r) => std::sync::Arc::new(r),
                Err(e) => {
                    eprintln!("berth mirror: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let dest = match mirror_destination(into, &rt) {
                Ok(d) => d,
                Err(c) => return c,
            };
            (rt.block_on(sync::import(reader, &dest, &shown)), json)
        }
        MirrorCommand::Export {
            config,
            out,
            since,
            json,
        } => {
            let mirrors = match load(&config) {
                Ok(m) => m,
                Err(c) => return c,
            };
            let have = match since.as_deref().map(bundle::blobs_of).transpose() {
                Ok(h) => h.unwrap_or_default(),
                Err(e) => {
                    eprintln!("berth mirror: --since: {e}");
                    return ExitCode::from(2);
                }
            };
            let dest = match bundle::Writer::create(&out, have) {
                Ok(w) => Destination::Bundle(Box::new(w)),
                Err(e) => {
                    eprintln!("berth mirror: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut report = rt.block_on(sync::sync(&mirrors, &dest, &shown));
            let Destination::Bundle(w) = dest else {
                return ExitCode::FAILURE;
            };
            // A bundle with an image missing is not written: the next export starts afresh.
            if report.errors.is_empty() {
                match w.finish() {
                    Ok(path) => eprintln!("berth mirror: wrote {}", path.display()),
                    Err(e) => report.errors.push(e.to_string()),
                }
            } else {
                w.abandon();
            }
            (report, json)
        }
    };
    shown.finish();
    if json {
        match serde_json::to_string(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("berth mirror: {e}"),
        }
    }
    eprintln!(
        "berth mirror: {} images, {} manifests and {} blobs ({} bytes) copied, {} blobs already there, {} errors",
        report.images,
        report.manifests_copied,
        report.blobs_copied,
        report.bytes_copied,
        report.blobs_skipped,
        report.errors.len()
    );
    if report.tags_vanished > 0 {
        eprintln!(
            "berth mirror: {} listed tags were gone from their source by the time they were fetched (skipped)",
            report.tags_vanished
        );
    }
    for e in &report.errors {
        eprintln!("berth mirror: {e}");
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The one line a fatal error makes: plain text for a person at a terminal, a JSON log line for
/// a log collector, never both.
fn fatal(format: LogFormat, command: &str, e: &dyn std::fmt::Display) {
    match format {
        LogFormat::Json => tracing::error!("{e}"),
        _ => eprintln!("{command}: {e}"),
    }
}

/// The registry's storage; `create` makes a filesystem root that is not there yet (a robot may
/// be made before the first `serve`), else a missing root is an error.
async fn open_store(a: &StoreArgs, create: bool) -> Result<std::sync::Arc<dyn Store>, String> {
    let file = a
        .config
        .as_deref()
        .map(Config::load)
        .transpose()
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let backend = Backend::choose(a.root.clone(), &file).map_err(|e| e.to_string())?;
    let opened = if create {
        berth::store::open(&backend).await
    } else {
        berth::store::open_existing(&backend).await
    };
    opened.map_err(|e| e.to_string())
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
                let store = open_store(&store, true).await?;
                let expires = expires
                    .as_deref()
                    .map(robots::parse_duration)
                    .transpose()
                    .map_err(|e| e.to_string())?;
                let (record, secret) = robots::create(store.as_ref(), &name, &scopes, expires)
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
                let store = open_store(&store, false).await?;
                robots::revoke(store.as_ref(), &name)
                    .await
                    .map_err(|e| e.to_string())?;
                eprintln!("revoked robot {name}");
                Ok(())
            }
            TokenCommand::List { store } => {
                let store = open_store(&store, false).await?;
                let list = robots::list(store.as_ref()).await.map_err(|e| e.to_string())?;
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

fn run_operator(a: OperatorArgs) -> ExitCode {
    use berth::operator::run;
    let _log_guard = match logging(a.log_format, "info") {
        Ok(g) => g,
        Err(c) => return c,
    };
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
            fatal(a.log_format, "berth", &e);
            ExitCode::FAILURE
        }
    }
}

fn logging(
    format: LogFormat,
    level: &str,
) -> Result<tracing_appender::non_blocking::WorkerGuard, ExitCode> {
    serve::init_tracing(format, level).map_err(|e| {
        eprintln!("berth: {e}");
        ExitCode::from(2)
    })
}

/// Raises the soft open-file limit to the hard one: every connection is a descriptor, and the
/// usual soft limit (1024) would otherwise be the real cap on clients.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                tracing::warn!(
                    soft = lim.rlim_cur,
                    hard = lim.rlim_max,
                    "cannot raise the open-file limit"
                );
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
        // Upload parts (MiBs each) come from mmap and go back to the kernel when freed, instead
        // of raising glibc's dynamic threshold and staying in the heap.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(64)
        .build()
        .map_err(|e| {
            eprintln!("berth: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

/// `berth gc`: one collection, a report on stdout, progress on stderr, non-zero on failure.
fn gc(a: GcArgs) -> ExitCode {
    let file = match a.config.as_deref().map(Config::load).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => {
            eprintln!("berth gc: {e}");
            return ExitCode::from(2);
        }
    };
    let _log_guard = match logging(file.log.format.unwrap_or_default(), "warn") {
        Ok(g) => g,
        Err(c) => return c,
    };
    let options = (|| {
        let mut o = berth::gc::GcOptions::from_config(&file.gc)?
            .with_proxy(file.proxy.as_ref())?
            .with_policy(&file.policy)?;
        o.dry_run = a.dry_run;
        o.delete_untagged |= a.delete_untagged;
        if let Some(g) = &a.grace {
            o.set_grace(g)?;
        }
        if let Some(t) = &a.upload_ttl {
            o.set_upload_ttl(t)?;
        }
        if !a.rules.is_empty() {
            o.retention = a
                .rules
                .iter()
                .map(|r| berth::gc::parse_rule(r))
                .collect::<Result<_, _>>()?;
        }
        Ok::<_, berth::gc::GcError>(o)
    })();
    let options = match options {
        Ok(o) => o,
        Err(e) => {
            eprintln!("berth gc: {e}");
            return ExitCode::from(2);
        }
    };
    let backend = match Backend::choose(a.root, &file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("berth gc: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    let store = match rt.block_on(berth::store::open_existing(&backend)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("berth gc: {e}");
            return ExitCode::FAILURE;
        }
    };
    let progress = |line: &str| eprintln!("berth gc: {line}");
    match rt.block_on(berth::gc::collect(store.as_ref(), &options, &progress)) {
        Ok(report) => {
            if let Some(path) = &a.report_file {
                let counts = berth::gc::GcReport {
                    deletions: Vec::new(),
                    ..report.clone()
                };
                if let Err(e) = write_report_file(path, &counts, true) {
                    eprintln!(
                        "berth gc: cannot write the report to {}: {e}",
                        path.display()
                    );
                    return ExitCode::FAILURE;
                }
            }
            if a.json {
                match serde_json::to_string(&report) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("berth gc: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                println!("{}", report.summary());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth gc: failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes a report's JSON to `path`: a Kubernetes Job's /dev/termination-log, where the operator
/// reads it (at most 4 KiB). `create` makes the file when it is missing.
fn write_report_file(
    path: &std::path::Path,
    report: &impl serde::Serialize,
    create: bool,
) -> std::io::Result<()> {
    use std::io::Write;
    let json = serde_json::to_vec(report).map_err(std::io::Error::other)?;
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(create)
        .open(path)?
        .write_all(&json)
}

/// `berth purge`: the JSON report on stdout (and in the termination message), progress on
/// stderr; exit 2 for a refusal or a usage mistake (nothing deleted), 1 when deleting failed.
fn purge(a: PurgeArgs) -> ExitCode {
    let request = berth::purge::PurgeRequest {
        config: a.config,
        config_inline: a.config_inline,
        root: a.root,
        yes: a.yes,
        dry_run: a.dry_run,
    };
    let plan = match berth::purge::plan(request) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("berth purge: {e}");
            return ExitCode::from(if e.is_usage() { 2 } else { 1 });
        }
    };
    let _log_guard = match logging(plan.config.log.format.unwrap_or_default(), "info") {
        Ok(g) => g,
        Err(c) => return c,
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    let report = match rt.block_on(berth::purge::run(&plan)) {
        Ok(r) => r,
        Err(e) => {
            fatal(
                plan.config.log.format.unwrap_or_default(),
                "berth purge",
                &e,
            );
            return ExitCode::from(if e.is_usage() { 2 } else { 1 });
        }
    };
    match write_report_file(&a.report_file, &report, false) {
        Ok(()) => {}
        // Outside Kubernetes there is usually no termination log: the report is on stdout.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(
            file = %a.report_file.display(),
            error = %e,
            "cannot write the report file"
        ),
    }
    match serde_json::to_string(&report) {
        Ok(j) => {
            println!("{j}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth purge: {e}");
            ExitCode::FAILURE
        }
    }
}
