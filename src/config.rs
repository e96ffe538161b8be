//! The one configuration schema. `berth serve --config FILE` reads it, `berth gc` reads the same
//! file, and the operator renders it into a ConfigMap, so a registry on a laptop and one in a
//! cluster are configured the same way. Command-line flags and `BERTH_*` variables override the
//! file; the file overrides the defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const DEFAULT_ADDR: &str = "127.0.0.1:5000";
pub const DEFAULT_ROOT: &str = "./berth-data";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Address to listen on, `host:port` (default 127.0.0.1:5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Where blobs, manifests, tags and upload sessions are stored.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// In-memory caches (content-addressed, safe to size down to zero).
    #[serde(default)]
    pub cache: CacheConfig,
    /// `POST ?mount=<digest>` without `from` mounts a blob the registry already stores
    /// (default true). Turn off to answer such requests with a new upload session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic_cross_mount: Option<bool>,
    /// Accept an index whose child manifests are not all here (default false): a mirror that
    /// copies only some platforms keeps the index whole, so its digest and signatures hold,
    /// and a pull of a platform it left out gets MANIFEST_UNKNOWN.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_sparse_indexes: bool,
    /// Garbage collection: `berth gc` and `serve --gc-interval` read this.
    #[serde(default)]
    pub gc: GcConfig,
    /// Who may do what. Without an `htpasswd` file or a trusted token issuer the registry is
    /// open to anyone who can reach it.
    #[serde(default)]
    pub auth: AuthConfig,
    /// HTTPS: PEM certificate chain and private key, re-read when the files change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// What one client may hold: connections, upload sessions, blob sizes, and how long a
    /// connection may sit without sending.
    #[serde(default, skip_serializing_if = "LimitsConfig::is_empty")]
    pub limits: LimitsConfig,
    /// Pull-through cache of upstream registries: `docker pull berth/<prefix>/<name>` fetches
    /// from the upstream with that prefix and keeps what it fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConfig>,
    /// Push replication: every push and delete in matching repositories is sent on to another
    /// registry, from a durable queue in the store, with a periodic full reconcile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replication: Vec<ReplicationRule>,
    /// Rules that hold without anyone watching: immutable tags, storage quotas, webhooks,
    /// and signatures required to pull.
    #[serde(default, skip_serializing_if = "PolicyConfig::is_empty")]
    pub policy: PolicyConfig,
}

/// The registry's policy, kept in Git with the rest of the config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyConfig {
    /// Tags that, once pushed, never move and are never deleted (by clients or retention).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub immutable_tags: Vec<ImmutableTagRule>,
    /// Storage budgets by repository pattern, each blob counted once per budget.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaRule>,
    /// Webhooks told of pushes, deletes and (sampled) pulls, from a durable queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<NotificationRule>,
    /// Repositories whose images are pulled only with a signature that verifies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<SignatureRule>,
    /// Write an audit line for requests nobody signed in for, as `anonymous` (default false:
    /// an open registry audits nothing).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit_anonymous: bool,
}

impl PolicyConfig {
    pub fn is_empty(&self) -> bool {
        self == &PolicyConfig::default()
    }
}

/// Tags matching `tags` in repositories matching `repository` are immutable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImmutableTagRule {
    /// A repository glob, as in access rules (`prod/**`).
    pub repository: String,
    /// A regular expression a tag must match to be immutable (`^v[0-9]`); searched, not
    /// anchored, unless it says `^`/`$`.
    pub tags: String,
}

/// A storage budget.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaRule {
    /// A repository glob: one budget for everything it matches (`team-a/**`).
    pub repository: String,
    /// The budget, in bytes: a number or a size (`50G`, `500Gi`).
    pub max_bytes: ByteSize,
    /// Fraction of the budget at which a warning is raised (metric, log, Event), default 0.9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_at: Option<f64>,
}

/// A byte count written as a number or as a size string (see [`parse_bytes`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ByteSize {
    Bytes(u64),
    Text(String),
}

impl Default for ByteSize {
    fn default() -> Self {
        ByteSize::Bytes(0)
    }
}

impl ByteSize {
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            ByteSize::Bytes(n) => Ok(*n),
            ByteSize::Text(t) => parse_bytes(t),
        }
    }
}

/// Where webhooks go, in which format, for what.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotificationRule {
    /// Names the endpoint's queue and metrics (lowercase letters, digits, `-`); default
    /// derived from the URL, so reordering the list keeps each queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The receiver, `https://hooks.example.com/registry`.
    pub url: String,
    /// File holding the HMAC-SHA256 key; each request carries `X-Berth-Signature-256:
    /// sha256=<hex of HMAC(body)>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// `push`, `delete`, `pull` (default push and delete).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
    /// Which repositories (a glob, default `**`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repositories: Option<String>,
    /// `distribution` (CNCF Distribution's envelope, default) or `cloudevents`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<NotificationFormat>,
    /// Fraction of pulls sent, when `pull` is among the actions (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_sample: Option<f64>,
    /// How long one delivery may take before it counts as failed (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotificationFormat {
    #[default]
    Distribution,
    Cloudevents,
}

/// Images in matching repositories need a signature by one of the keys to be pulled.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignatureRule {
    /// A repository glob (`prod/**`).
    pub repository: String,
    /// PEM file of an ECDSA P-256 public key (`cosign.pub`); a file may hold several keys,
    /// any of which verifies.
    pub public_key: PathBuf,
    /// Also refuse pulls by digest that are not signed (default: only pulls by tag).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_digest: bool,
}

/// One replication target and what it receives.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicationRule {
    /// Names the rule's queue and metrics: lowercase letters, digits and `-`.
    pub name: String,
    /// Which repositories (a glob as in access rules: `prod/**`).
    pub repositories: String,
    /// The destination registry's base URL, `https://dr.example.com`.
    pub url: String,
    /// Put before each repository's name at the destination (`dr/` sends `prod/app` to
    /// `dr/prod/app`); default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// User at the destination (Basic, or to obtain Bearer tokens with push scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the password or token for `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// What is replicated: `push`, `delete` (default both).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
    /// How often every matching tag is compared with the destination and what differs is
    /// copied, catching what events missed (default `1h`; `0s` never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile_every: Option<String>,
}

/// The pull-through cache: the upstreams, each under a local name prefix.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    pub upstreams: Vec<UpstreamConfig>,
    /// How long cached content is kept, and how much of it (enforced by gc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<ProxyRetentionConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Local name prefix: `docker.io` serves `docker.io/library/alpine` from this upstream.
    pub prefix: String,
    /// The upstream registry's base URL, `https://registry-1.docker.io`.
    pub url: String,
    /// Serves requests whose name carries no configured prefix (the Docker daemon's
    /// `registry-mirrors`) when the name is not a local repository. At most one upstream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
    /// User for the upstream (Basic, or to obtain Bearer tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the password or access token for `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// How long a tag is served from the cache before one HEAD revalidates it (default `5m`;
    /// `0s` revalidates on every pull). Manifests by digest are cached for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_ttl: Option<String>,
    /// Concurrent requests to this upstream (default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Never contact the upstream: serve only what is cached.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offline: bool,
    /// PEM file of CA certificates to trust for this upstream beside the system's (a registry
    /// whose certificate a private CA issued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyRetentionConfig {
    /// Cached content not pulled for this long is removed by gc (e.g. `30d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpulled_for: Option<String>,
    /// Size budget for cached content (e.g. `500Gi`): gc removes the least recently pulled
    /// cached images until the rest fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<String>,
}

/// Caps and timeouts that keep one client (careless or hostile) from exhausting the server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest blob accepted, in bytes (default 34359738368, 32 GiB); a push past it is refused
    /// with 413 SIZE_INVALID as soon as it is exceeded, and its session removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_blob_bytes: Option<u64>,
    /// Open upload sessions per repository and per user on one replica (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_upload_sessions: Option<usize>,
    /// Open client connections (default 4096, lowered to fit the file-descriptor limit);
    /// past it new connections wait in the listen queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Time a client has to send a request's headers, and to start the next request on a
    /// kept-alive connection (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<String>,
    /// A connection on which nothing moves either way for this long is closed, mid-request
    /// too, which ends a request body that stalls (default `2m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
}

/// One `auth.trustedProxies` entry, an address or a CIDR, as a network and its prefix length
/// (IPv4-mapped IPv6 addresses read as IPv4); `None` if it is neither.
/// A byte count as config files write it: digits with an optional binary (`Ki`, `Mi`, `Gi`,
/// `Ti`, `Pi`) or decimal (`k`, `M`, `G`, `T`, `P`) suffix, `500Gi` or `2T`; the error says why.
pub fn parse_bytes(v: &str) -> Result<u64, String> {
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, suffix) = v.split_at(digits);
    let unit: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        _ => {
            return Err(format!(
                "{v:?} is not a size: digits and one of Ki, Mi, Gi, Ti, Pi, k, M, G, T, P (500Gi)"
            ));
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{v:?} is not a size: it must start with digits (500Gi)"))?;
    n.checked_mul(unit)
        .ok_or_else(|| format!("{v:?} is too large"))
}

pub fn parse_trusted_proxy(item: &str) -> Option<(std::net::IpAddr, u8)> {
    use std::net::IpAddr;
    let (addr, len) = match item.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u8>().ok()?)),
        None => (item, None),
    };
    let ip = match addr.trim().parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    (len <= max).then_some((ip, len))
}

impl LimitsConfig {
    pub fn is_empty(&self) -> bool {
        *self == LimitsConfig::default()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GcConfig {
    /// Run a collection inside `berth serve` this often (e.g. `6h`); off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Keep unreferenced blobs and manifests touched within this time (default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
    /// Remove upload sessions idle for longer than this (default `24h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_ttl: Option<String>,
    /// Remove manifests that no tag reaches (directly, through an index, or as a referrer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_untagged: Option<bool>,
    /// Tag retention rules; the first rule whose pattern matches a repository applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retention: Vec<RetentionRule>,
}

/// A retention rule for the repositories matching `repositories` (a glob: `*` within one path
/// component, `**` across components). A tag is kept if any of the rule's conditions keeps it;
/// a rule with no conditions keeps everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetentionRule {
    pub repositories: String,
    /// Keep the newest N tags (by when they were last pushed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<usize>,
    /// Keep tags matching this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_tags: Option<String>,
    /// Keep tags pushed more recently than this (e.g. `30d`); older ones go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    /// An htpasswd file of `user:bcrypt-hash` lines (the files Distribution uses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<PathBuf>,
    /// Users who may manage robot accounts through `/admin/robots`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admins: Vec<String>,
    /// Named groups of users, referred to by access rules.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Access rules: whatever no rule grants is denied. With no rules at all every
    /// signed-in user may do everything (as with Distribution's htpasswd auth).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<AccessRule>,
    /// Addresses or CIDRs of the proxies in front of Berth (an Ingress controller) whose
    /// `X-Forwarded-For`, `-Proto` and `-Host` headers are believed: failed logins are then
    /// counted per real client, and challenges name the host the client used. From any other
    /// peer these headers are ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Docker token auth (`GET /token`, Bearer challenges, external issuers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenConfig>,
    /// Seconds a successful password check is remembered (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_seconds: Option<u64>,
    /// Failed logins allowed from one client address per window (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failed_logins: Option<u32>,
    /// The window for `maxFailedLogins`, in seconds (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_login_window_seconds: Option<u64>,
}

/// One access rule: a repository glob and what it grants to whom.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessRule {
    /// A repository glob: `*` matches within one path segment, a `**` segment any number of
    /// segments (`team-a/**` covers `team-a` and everything below it).
    pub repository: String,
    /// User names; `anonymous` means everyone, signed in or not.
    #[serde(default)]
    pub users: Vec<String>,
    /// Group names from `groups`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// `pull`, `push`, `delete`.
    pub actions: Vec<Action>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pull,
    Push,
    Delete,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenConfig {
    /// The token endpoint clients are sent to, e.g. `https://registry.example.com/token`
    /// (default: `/token` on the host a trusted proxy names, else on the listen address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// The service name: the `service` of challenges and the audience of tokens (default berth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The issuer of tokens signed here (default berth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// PKCS#8 PEM EC P-256 private key that signs tokens (default: generated once into
    /// `<root>/auth/token-key.pem`, so replicas sharing the store share the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Lifetime of issued tokens in seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_seconds: Option<u64>,
    /// Token services whose tokens are accepted as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_issuers: Vec<TrustedIssuer>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustedIssuer {
    /// The `iss` claim of its tokens.
    pub issuer: String,
    /// PEM public key (EC or RSA) or certificate the tokens are signed with.
    pub public_key: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageConfig {
    /// Local filesystem storage (a directory, a PVC in Kubernetes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemConfig>,
    /// An S3-compatible bucket (AWS S3, Ceph RGW, Garage, MinIO). Several `berth serve`
    /// processes on one bucket act as one registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
}

/// S3-compatible object storage. Credentials not given here come from the standard AWS
/// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), and the
/// region and endpoint likewise (`AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket (e.g. `registry/prod`); empty for the bucket's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Region (default `us-east-1`; Garage's default is `garage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint URL for S3-compatible servers, e.g. `http://garage:3900`; unset for AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted style
    /// (`bucket.endpoint/key`). Default: true when `endpoint` is set, false for AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// Access key id (else `AWS_ACCESS_KEY_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Secret access key (else `AWS_SECRET_ACCESS_KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials (else `AWS_SESSION_TOKEN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// Answer blob GETs with a 307 redirect to a presigned URL, so clients download straight
    /// from the bucket (they must be able to reach the endpoint). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<bool>,
    /// Multipart part size in MiB (5 to 512, default 8): memory per upload in flight is about
    /// three parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_size_mib: Option<u64>,
    /// Seconds a request to the bucket may take before it fails with 503 (default 300;
    /// connecting is bounded separately at 5 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_seconds: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilesystemConfig {
    /// Root directory of the store (default ./berth-data).
    pub root: PathBuf,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogConfig {
    /// `plain` (default) or `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
    /// A tracing filter such as `info` or `berth=debug` (default `info`; RUST_LOG wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheConfig {
    /// Bytes of manifests kept in memory by digest (default 8 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_bytes: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}{hint}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
        /// ` (did you mean `x`?)` for an unknown key close to a valid one, else empty.
        hint: String,
    },
}

/// For serde's "unknown field `x`, expected one of `a`, `b`": the valid key nearest to `x`,
/// when it is close enough to be a typo.
pub fn did_you_mean(message: &str) -> String {
    let Some(rest) = message.split("unknown field `").nth(1) else {
        return String::new();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return String::new();
    };
    let nearest = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (edit_distance(&unknown.to_lowercase(), &k.to_lowercase()), k))
        .min();
    match nearest {
        Some((d, k)) if d <= unknown.len().max(3) / 3 + 1 => format!(" (did you mean `{k}`?)"),
        _ => String::new(),
    }
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            hint: did_you_mean(&source.to_string()),
            source,
        })
    }

    /// The filesystem root, falling back to the default.
    pub fn root(&self) -> PathBuf {
        self.storage
            .filesystem
            .as_ref()
            .map(|f| f.root.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_unknown_key_names_the_nearest_valid_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.yaml");
        std::fs::write(&file, "storage:\n  filesytem:\n    root: /x\n").unwrap();
        let e = Config::load(&file).unwrap_err().to_string();
        assert!(e.contains("unknown field `filesytem`"), "{e}");
        assert!(e.contains("line 2 column 3"), "{e}");
        assert!(e.ends_with("(did you mean `filesystem`?)"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        std::fs::write(&file, "zzzzzzzz: 1\n").unwrap();
        let e = Config::load(&file).unwrap_err().to_string();
        assert!(!e.contains("did you mean"), "nothing is near: {e}");
        assert_eq!(edit_distance("auht", "auth"), 2);
        assert_eq!(edit_distance("", "ab"), 2);
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_suffixes() {
        assert_eq!(parse_bytes("500Gi"), Ok(500 << 30));
        assert_eq!(parse_bytes("2T"), Ok(2_000_000_000_000));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        for bad in ["", "Gi", "5GB", "1.5Gi", "-1", "10 Gi", "99999999999999Pi"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn reads_the_documented_shape_and_rejects_typos() {
        let c: Config = serde_yaml::from_str(
            "addr: 0.0.0.0:5000\nstorage:\n  filesystem:\n    root: /data\nlog:\n  format: json\n",
        )
        .unwrap();
        assert_eq!(c.addr.as_deref(), Some("0.0.0.0:5000"));
        assert_eq!(c.root(), PathBuf::from("/data"));
        assert_eq!(c.log.format, Some(LogFormat::Json));
        assert!(serde_yaml::from_str::<Config>("adr: x\n").is_err());
        let round: Config = serde_yaml::from_str(&serde_yaml::to_string(&c).unwrap()).unwrap();
        assert_eq!(round, c);
    }

    #[test]
    fn reads_the_auth_section() {
        let c: Config = serde_yaml::from_str(
            r#"
auth:
  htpasswd: /etc/berth/htpasswd
  admins: [admin]
  groups: {team-a: [alice, bob]}
  access:
    - repository: "team-a/**"
      groups: [team-a]
      users: [carol, anonymous]
      actions: [pull, push, delete]
  maxFailedLogins: 5
  token:
    service: registry.example.com
    trustedIssuers:
      - issuer: acme
        publicKey: /etc/acme.pem
tls: {cert: /tls/crt, key: /tls/key}
"#,
        )
        .unwrap();
        assert_eq!(c.auth.htpasswd, Some(PathBuf::from("/etc/berth/htpasswd")));
        assert_eq!(c.auth.groups["team-a"], ["alice", "bob"]);
        assert_eq!(
            c.auth.access[0].actions,
            [Action::Pull, Action::Push, Action::Delete]
        );
        assert_eq!(c.auth.max_failed_logins, Some(5));
        let t = c.auth.token.as_ref().unwrap();
        assert_eq!(t.trusted_issuers[0].issuer, "acme");
        assert_eq!(c.tls.as_ref().unwrap().key, PathBuf::from("/tls/key"));
        let round: Config = serde_yaml::from_str(&serde_yaml::to_string(&c).unwrap()).unwrap();
        assert_eq!(round, c);
        // Typos and unknown actions are errors, not silently open doors.
        assert!(
            serde_yaml::from_str::<Config>(
                "auth:
  htpaswd: x
"
            )
            .is_err()
        );
        assert!(
            serde_yaml::from_str::<Config>(
                "auth:
  access:
    - repository: a
      actions: [pul]
"
            )
            .is_err()
        );
    }
}
