//! `berth serve`: resolve the settings (flags > BERTH_* variables > config file > defaults),
//! open the store, and run the HTTP server until SIGINT or SIGTERM, finishing requests in
//! flight before exiting.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, AuthConfig, Config, LogFormat, TlsConfig};
use crate::registry::auth::{Auth, AuthSetupError};
use crate::registry::{Registry, server};
use crate::store::{Backend, MetaKey, OpenError, Store};

/// The settings `serve` runs with, after every source has been merged.
#[derive(Clone, Debug)]
pub struct Settings {
    pub addr: String,
    pub storage: Backend,
    pub log_format: LogFormat,
    pub log_level: String,
    pub manifest_cache_bytes: usize,
    pub automatic_cross_mount: bool,
    pub allow_sparse_indexes: bool,
    /// Run a garbage collection this often inside the server.
    pub gc_interval: Option<std::time::Duration>,
    pub gc: crate::gc::GcOptions,
    pub auth: AuthConfig,
    pub tls: Option<TlsConfig>,
    pub limits: Limits,
    /// The pull-through cache, checked (upstream URLs, credentials files) at resolve time.
    pub proxy: Option<Arc<crate::proxy::Proxy>>,
    /// Push replication, checked (URLs, patterns, credentials files) at resolve time.
    pub replication: Option<Arc<crate::mirror::replicate::Replication>>,
    /// `policy`, checked and its files read at resolve time.
    pub policy: Arc<crate::policy::Policy>,
}

/// The `limits` section, resolved: what one client may hold and for how long.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_blob_bytes: u64,
    pub max_upload_sessions: usize,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    pub const DEFAULT_MAX_BLOB_BYTES: u64 = 32 << 30;
    pub const DEFAULT_MAX_UPLOAD_SESSIONS: usize = 100;
    pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
}

/// Values given on the command line or in the environment; `None` means "not given".
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub addr: Option<String>,
    pub root: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub manifest_cache_bytes: Option<usize>,
    pub automatic_cross_mount: Option<bool>,
    pub gc_interval: Option<String>,
    pub htpasswd: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_blob_bytes: Option<u64>,
    pub max_upload_sessions: Option<usize>,
    pub max_connections: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
}

fn duration_option(
    what: &str,
    v: Option<String>,
    default: Duration,
) -> Result<Duration, ServeError> {
    let Some(v) = v else { return Ok(default) };
    let d = humantime::parse_duration(&v)
        .map_err(|e| ServeError::Option(format!("{what} {v:?}: {e}")))?;
    if d.is_zero() {
        return Err(ServeError::Option(format!("{what} must be more than 0s")));
    }
    Ok(d)
}

impl Settings {
    pub fn resolve(file: Option<Config>, o: Overrides) -> Result<Settings, ServeError> {
        let file = file.unwrap_or_default();
        let policy = crate::policy::Policy::from_config(&file.policy)
            .map(Arc::new)
            .map_err(|e| ServeError::Option(e.to_string()))?;
        let gc = crate::gc::GcOptions::from_config(&file.gc)?
            .with_proxy(file.proxy.as_ref())?
            .with_policy(&file.policy)?;
        let gc_interval = o
            .gc_interval
            .or(file.gc.interval.clone())
            .map(|v| {
                humantime::parse_duration(&v)
                    .map_err(|e| ServeError::Option(format!("gc interval {v:?}: {e}")))
            })
            .transpose()?;
        let l = &file.limits;
        let limits = Limits {
            max_blob_bytes: o
                .max_blob_bytes
                .or(l.max_blob_bytes)
                .unwrap_or(Limits::DEFAULT_MAX_BLOB_BYTES),
            max_upload_sessions: o
                .max_upload_sessions
                .or(l.max_upload_sessions)
                .unwrap_or(Limits::DEFAULT_MAX_UPLOAD_SESSIONS),
            max_connections: o
                .max_connections
                .or(l.max_connections)
                .unwrap_or(Limits::DEFAULT_MAX_CONNECTIONS),
            header_read_timeout: duration_option(
                "limits.headerReadTimeout",
                o.header_read_timeout.or(l.header_read_timeout.clone()),
                Limits::DEFAULT_HEADER_READ_TIMEOUT,
            )?,
            idle_timeout: duration_option(
                "limits.idleTimeout",
                o.idle_timeout.or(l.idle_timeout.clone()),
                Limits::DEFAULT_IDLE_TIMEOUT,
            )?,
        };
        if limits.max_connections == 0 || limits.max_upload_sessions == 0 {
            return Err(ServeError::Option(
                "limits.maxConnections and limits.maxUploadSessions must be at least 1".into(),
            ));
        }
        let proxy = file
            .proxy
            .as_ref()
            .map(crate::proxy::Proxy::from_config)
            .transpose()
            .map_err(|e| ServeError::Option(e.to_string()))?
            .map(Arc::new);
        let replication = crate::mirror::replicate::Replication::from_config(&file.replication)
            .map_err(|e| ServeError::Option(e.to_string()))?
            .map(Arc::new);
        Ok(Settings {
            policy,
            gc,
            gc_interval,
            limits,
            proxy,
            replication,
            addr: o
                .addr
                .or(file.addr.clone())
                .unwrap_or_else(|| config::DEFAULT_ADDR.to_owned()),
            storage: Backend::choose(o.root, &file)?,
            log_format: o.log_format.or(file.log.format).unwrap_or_default(),
            log_level: o
                .log_level
                .or(file.log.level.clone())
                .unwrap_or_else(|| "info".to_owned()),
            manifest_cache_bytes: o
                .manifest_cache_bytes
                .or(file.cache.manifest_bytes)
                .unwrap_or(8 << 20),
            automatic_cross_mount: o
                .automatic_cross_mount
                .or(file.automatic_cross_mount)
                .unwrap_or(true),
            allow_sparse_indexes: file.allow_sparse_indexes,
            auth: AuthConfig {
                htpasswd: o.htpasswd.or(file.auth.htpasswd.clone()),
                ..file.auth.clone()
            },
            tls: match (o.tls_cert, o.tls_key, file.tls.clone()) {
                (Some(cert), Some(key), _) => Some(TlsConfig { cert, key }),
                (Some(cert), None, Some(f)) => Some(TlsConfig { cert, key: f.key }),
                (None, Some(key), Some(f)) => Some(TlsConfig { cert: f.cert, key }),
                (None, None, f) => f,
                (Some(cert), None, None) => Some(TlsConfig {
                    key: PathBuf::new(),
                    cert,
                }),
                (None, Some(key), None) => Some(TlsConfig {
                    cert: PathBuf::new(),
                    key,
                }),
            },
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error("storage: {0}")]
    Storage(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {source}{}", bind_hint(source))]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error("invalid option: {0}")]
    Option(String),
    #[error(transparent)]
    Gc(#[from] crate::gc::GcError),
    #[error("auth configuration: {0}")]
    Auth(#[from] AuthSetupError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// The log filter: RUST_LOG when set, else `level`. A filter that does not parse, or a bare
/// word that is not a level (`loud` would otherwise be read as a target name and silence
/// everything), refuses to start rather than run with no logs.
pub fn log_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, ServeError> {
    let (source, text) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => ("RUST_LOG", v),
        _ => ("log level", level.to_owned()),
    };
    let bad = |why: String| {
        ServeError::Option(format!(
            "{source} {text:?} is not a log filter ({why}); try info, debug, warn or berth=debug"
        ))
    };
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains('=') && !directive.contains('[');
        if bare && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(bad(format!("{directive:?} is not a level")));
        }
    }
    tracing_subscriber::EnvFilter::try_new(&text).map_err(|e| bad(e.to_string()))
}

/// Sets up logging: plain or JSON lines on stderr, filtered before formatting. Lines are
/// formatted on the thread that logs and written by a background thread in batches, so a
/// request never waits for a write to stderr (audit lines are one per pull). Keep the guard
/// until exit: dropping it flushes what is queued.
pub fn init_tracing(
    format: LogFormat,
    level: &str,
) -> Result<tracing_appender::non_blocking::WorkerGuard, ServeError> {
    let filter = log_filter(level)?;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("berth-log")
        .finish(std::io::BufWriter::with_capacity(
            64 << 10,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Plain => builder.try_init(),
    };
    Ok(guard)
}

/// Where the token service's generated signing key is read from. On the filesystem it lives
/// under the root; on an object store every replica must sign with the same key, so it lives
/// in the bucket (generated by the first replica to start) and is copied to a private file.
async fn token_key_path(settings: &Settings, store: &dyn Store) -> Result<PathBuf, ServeError> {
    let root = match &settings.storage {
        Backend::Filesystem(root) => return Ok(root.join("auth").join("token-key.pem")),
        Backend::S3(_) => std::env::temp_dir().join(format!("berth-{}", std::process::id())),
    };
    let path = root.join("token-key.pem");
    let wanted = settings
        .auth
        .token
        .as_ref()
        .is_some_and(|t| t.key.is_none());
    if !wanted {
        return Ok(path);
    }
    let key = MetaKey::token_key();
    let pem = match store.meta_get(&key).await? {
        Some(pem) => pem,
        None => {
            let pem = crate::keys::generate_token_key_pem()
                .map_err(|e| ServeError::Option(format!("token signing key: {e}")))?;
            store.meta_put(&key, pem.as_bytes()).await?;
            // Replicas starting together may both have written one: settle on the last.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            store.meta_get(&key).await?.unwrap_or_else(|| pem.into())
        }
    };
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(&pem)
    };
    write()
        .map_err(|e| ServeError::Option(format!("token signing key at {}: {e}", path.display())))?;
    Ok(path)
}

/// What to do about a failed bind, for the one line a newcomer reads.
fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "; another process holds that port: stop it or choose another with --addr"
        }
        std::io::ErrorKind::InvalidInput => "; expected host:port, e.g. 127.0.0.1:5000",
        std::io::ErrorKind::PermissionDenied => {
            "; ports below 1024 need privileges: choose a higher one with --addr"
        }
        std::io::ErrorKind::AddrNotAvailable => "; no network interface here has that address",
        _ => "",
    }
}

pub async fn run(settings: Settings) -> Result<(), ServeError> {
    // What a newcomer gets wrong most (a busy port, a missing TLS file) fails before the
    // storage is touched.
    let tls = settings
        .tls
        .as_ref()
        .map(|t| crate::tls::ReloadingTls::load(&t.cert, &t.key))
        .transpose()?;
    let listener = tokio::net::TcpListener::bind(&settings.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: settings.addr.clone(),
            source,
        })?;
    let store = crate::store::open(&settings.storage).await?;
    let token_key = token_key_path(&settings, store.as_ref()).await?;
    let mut registry = Registry::new(store.clone(), settings.manifest_cache_bytes);
    registry.automatic_cross_mount = settings.automatic_cross_mount;
    registry.allow_sparse_indexes = settings.allow_sparse_indexes;
    registry.upload_limits = crate::registry::uploads::UploadLimits::new(
        settings.limits.max_blob_bytes,
        settings.limits.max_upload_sessions,
        settings.gc.upload_ttl,
    );
    warn_careless_auth(&settings.auth);
    let auth = Auth::from_config(&settings.auth, &token_key, store, settings.tls.is_some())?;
    match &auth {
        Some(a) => {
            tracing::info!(auth = %a.describe(), "authentication is on; what no rule grants is denied");
            if registry.automatic_cross_mount {
                // A mount without `from` names no repository whose pull right could be
                // checked: it would hand any blob to anyone who knows its digest.
                tracing::info!("automatic cross-repository mount is off while auth is on");
                registry.automatic_cross_mount = false;
            }
        }
        None => tracing::warn!(
            "no authentication is configured: anyone who can reach this registry can push and pull"
        ),
    }
    registry.auth = auth.map(Arc::new);
    registry.proxy = settings.proxy.clone();
    if let Some(p) = &registry.proxy {
        registry.metrics.register_proxy(&p.metrics);
        for u in p.upstreams() {
            tracing::info!(prefix = %u.prefix, upstream = %u.url, default = u.default, offline = u.offline, tag_ttl = ?u.tag_ttl, "pull-through cache");
        }
    }
    if let Some(r) = &settings.replication {
        registry.metrics.register_replication(&r.metrics);
        for (name, url) in r.rules() {
            tracing::info!(rule = %name, destination = %url, "push replication");
        }
        r.spawn(registry.store.clone());
    }
    registry.replication = settings.replication.clone();
    registry.policy = settings.policy.clone();
    if !registry.policy.quotas.is_empty() {
        registry
            .metrics
            .register_quotas(&registry.policy.quotas.metrics);
        tokio::spawn(watch_quotas(
            registry.policy.clone(),
            registry.store.clone(),
        ));
    }
    if let Some(n) = &registry.policy.notifications {
        registry.metrics.register_notifications(&n.metrics);
        for (name, url) in n.endpoints() {
            tracing::info!(endpoint = %name, url = %url, "webhook notifications");
        }
        n.spawn(registry.store.clone());
    }
    let registry = Arc::new(registry);
    tokio::spawn(purge_idle_uploads(registry.clone(), settings.gc.upload_ttl));
    if let Some(every) = settings.gc_interval {
        tokio::spawn(collect_periodically(
            registry.clone(),
            every,
            settings.gc.clone(),
        ));
    }
    let local = listener.local_addr().map_err(ServeError::Serve)?;
    if let Some(a) = &registry.auth {
        a.set_listen_addr(local);
        if a.tokens.is_some() {
            tracing::info!(realm = %a.realm(None), trusted_proxies = !a.proxies.is_empty(), "token realm (set auth.token.realm when clients reach Berth by another name)");
        }
    }
    tracing::info!(addr = %local, storage = %settings.storage.describe(), tls = tls.is_some(), "listening");
    let limits = crate::listen::ConnLimits {
        max_connections: crate::listen::fit_to_fd_limit(settings.limits.max_connections),
        header_read_timeout: settings.limits.header_read_timeout,
        idle_timeout: settings.limits.idle_timeout,
    };
    if limits.max_connections < settings.limits.max_connections {
        tracing::warn!(
            max_connections = limits.max_connections,
            asked = settings.limits.max_connections,
            "limits.maxConnections lowered to fit the open-file limit"
        );
    }
    crate::listen::serve(
        listener,
        tls,
        server::router(registry),
        limits,
        shutdown_signal(),
    )
    .await
    .map_err(ServeError::Serve)
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// Says at start-up what in the auth settings is probably a mistake: anonymous push or
/// delete, an htpasswd file with no users, or users with no rule granting them anything.
fn warn_careless_auth(auth: &AuthConfig) {
    use crate::config::Action;
    for rule in &auth.access {
        let anonymous = rule.users.iter().any(|u| u == "anonymous");
        let writes: Vec<&str> = rule
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Push => Some("push"),
                Action::Delete => Some("delete"),
                Action::Pull => None,
            })
            .collect();
        if anonymous && !writes.is_empty() {
            tracing::warn!(
                repository = %rule.repository,
                actions = %writes.join(","),
                "an access rule lets anonymous clients {} without signing in",
                writes.join(" and ")
            );
        }
    }
    if let Some(path) = &auth.htpasswd {
        let users = std::fs::read_to_string(path).map(|t| {
            t.lines()
                .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                .count()
        });
        if let Ok(0) = users {
            tracing::warn!(file = %path.display(), "the htpasswd file holds no users: nobody can sign in");
        }
    }
    let auth_on = auth.htpasswd.is_some() || auth.token.is_some();
    if auth_on && auth.access.is_empty() {
        tracing::warn!(
            "authentication is on and auth.access has no rules: as with Distribution, every \
             signed-in user may pull, push and delete every repository and anonymous callers \
             nothing; add auth.access rules to restrict"
        );
    }
}

/// How often the server looks for upload sessions idle past their TTL.
const UPLOAD_PURGE_EVERY: Duration = Duration::from_secs(600);

/// Removes upload sessions idle for longer than `ttl`, in the background, whatever the store
/// (`berth gc` does the same; several replicas doing it at once is harmless).
async fn purge_idle_uploads(registry: Arc<Registry>, ttl: Duration) {
    let mut tick = tokio::time::interval(UPLOAD_PURGE_EVERY.min(ttl));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match crate::gc::purge_uploads(registry.store.as_ref(), ttl, false, None).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "removed idle upload sessions"),
            Err(e) => tracing::warn!(error = %e, "cannot purge idle upload sessions"),
        }
    }
}

/// `serve --gc-interval`: collect garbage in the background while serving, and report it on
/// /metrics. Safe beside pushes (see `crate::gc`), and beside other replicas doing the same.
/// Counts budgets that were never counted (a new rule), then keeps the usage gauges fresh.
async fn watch_quotas(policy: Arc<crate::policy::Policy>, store: Arc<dyn crate::store::Store>) {
    if let Err(e) = policy.quotas.recount(&*store, true).await {
        tracing::warn!(error = %e, "cannot count quota usage; it is counted at the next gc");
    }
    for (quota, used, limit) in policy.quotas.usage(&*store).await {
        tracing::info!(%quota, used, limit, "quota");
    }
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(15)).await;
        policy.quotas.observe(&*store).await;
    }
}

async fn collect_periodically(
    registry: Arc<Registry>,
    every: std::time::Duration,
    opts: crate::gc::GcOptions,
) {
    use crate::registry::metrics::GcLabels;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let quiet = |_: &str| {};
        match crate::gc::collect(registry.store.as_ref(), &opts, &quiet).await {
            Ok(report) => {
                tracing::info!(target: "berth::gc", "{}", report.summary());
                let m = &registry.metrics;
                m.gc_runs
                    .get_or_create(&GcLabels { result: "success" })
                    .inc();
                m.gc_last_bytes_freed.set(report.bytes_freed as i64);
                m.gc_bytes_freed.inc_by(report.bytes_freed);
                m.gc_blobs_deleted.inc_by(report.blobs_deleted as u64);
            }
            Err(e) => {
                tracing::error!(target: "berth::gc", error = %e, "garbage collection failed");
                registry
                    .metrics
                    .gc_runs
                    .get_or_create(&GcLabels { result: "failure" })
                    .inc();
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        registry.metrics.gc_last_run_timestamp.set(now);
    }
}
