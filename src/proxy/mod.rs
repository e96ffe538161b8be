//! The pull-through cache: repositories under a configured prefix (`docker.io/...`) are read
//! from an upstream registry on a miss and kept, through the same repository layer as local
//! content. [`Proxy`] knows the upstreams and maps names; `cache` fills manifests and `fill`
//! blobs, with one upstream request per item however many clients ask; `upstream` is the
//! client.
//!
//! Local names are canonical: `docker.io/alpine` is cached as `docker.io/library/alpine`, and
//! a request that arrives without a prefix (the Docker daemon's `registry-mirrors`, or
//! containerd's `?ns=docker.io`) is mapped to the prefixed name before access rules are
//! checked, so rules written for `docker.io/**` hold whichever way a client asks.

pub mod cache;
pub mod fill;
mod memo;
pub mod metrics;
mod spool;
pub mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::ProxyConfig;
use crate::oci::{Digest, RepoName, Tag};
use crate::repo::RepoError;
use crate::store::StoreError;
use memo::Memo;
pub use upstream::{Upstream, UpstreamConfigError, UpstreamError};

#[derive(Debug, thiserror::Error)]
pub enum ProxyConfigError {
    #[error(transparent)]
    Upstream(#[from] UpstreamConfigError),
    #[error("proxy.upstreams[{index}].prefix: {reason}")]
    Prefix { index: usize, reason: String },
    #[error("proxy.upstreams: only one upstream can be the default, not {0} and {1}")]
    TwoDefaults(String, String),
    #[error("proxy.retention.maxBytes: {0}")]
    MaxBytes(String),
    #[error("proxy.retention.unpulledFor: {0}")]
    UnpulledFor(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Upstream(UpstreamError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The upstream has no such manifest or blob.
    #[error("{0}")]
    NotFound(String),
    /// What the upstream sent does not verify (digest, shape); nothing was cached.
    #[error("{0}")]
    Invalid(String),
}

impl From<UpstreamError> for ProxyError {
    /// An upstream's 404 is an answer (it has no such thing), not a failure.
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Status {
                status: 404,
                upstream,
                message,
            } => ProxyError::NotFound(format!("upstream {upstream}: {message}")),
            e => ProxyError::Upstream(e),
        }
    }
}

/// Where a proxied repository's content comes from.
#[derive(Clone)]
pub struct Target {
    pub upstream: Arc<Upstream>,
    /// The canonical local name, `docker.io/library/alpine`.
    pub local: RepoName,
    /// The upstream's name for it, `library/alpine`.
    pub remote: String,
}

/// Held while one request revalidates a tag.
type TagFlight = Arc<tokio::sync::Mutex<()>>;

pub struct Proxy {
    upstreams: Vec<Arc<Upstream>>,
    pub metrics: metrics::ProxyMetrics,
    /// One revalidation per tag at a time.
    tag_flights: Mutex<HashMap<(RepoName, Tag), TagFlight>>,
    /// One upstream fetch per blob at a time: later requests join it.
    blob_flights: Mutex<HashMap<Digest, watch::Receiver<fill::FillState>>>,
    /// This process among the replicas sharing the store: the holder name in fill leases.
    replica: String,
    /// Cached manifests whose pull this process recorded within [`RECORD_PULLS_EVERY`].
    pulls: Memo<(RepoName, Digest), ()>,
    /// Cached tags known to be within their TTL (see `cache::fresh`).
    fresh_tags: Memo<(RepoName, Tag), Digest>,
    /// Whether prefix-less names are local repositories, as last looked up (see
    /// [`Proxy::known_local`]).
    local_names: Memo<RepoName, bool>,
}

/// How long a lookup of whether a prefix-less name is local is believed. Every read through
/// `registry-mirrors` needs the answer, and on S3 it is a listing; a repository another
/// replica creates is seen within this long (a write through this replica is seen at once).
const LOCAL_NAME_TTL: Duration = Duration::from_secs(10);
/// Bounds on the memos (see `memo`).
const LOCAL_NAMES_MAX: usize = 50_000;
const FRESH_TAGS_MAX: usize = 100_000;
const PULLS_MAX: usize = 100_000;

/// A cached manifest's last pull is written to the store at most this often per process:
/// retention works in days, and a write per pull would cost more than the pull.
const RECORD_PULLS_EVERY: Duration = Duration::from_secs(3600);

impl Proxy {
    pub fn from_config(cfg: &ProxyConfig) -> Result<Proxy, ProxyConfigError> {
        if let Some(r) = &cfg.retention {
            if let Some(v) = &r.max_bytes {
                crate::config::parse_bytes(v).map_err(ProxyConfigError::MaxBytes)?;
            }
            if let Some(v) = &r.unpulled_for {
                humantime::parse_duration(v)
                    .map_err(|e| ProxyConfigError::UnpulledFor(format!("{v:?}: {e}")))?;
            }
        }
        let metrics = metrics::ProxyMetrics::default();
        let mut upstreams: Vec<Arc<Upstream>> = Vec::new();
        for (index, u) in cfg.upstreams.iter().enumerate() {
            let bad = |reason: String| ProxyConfigError::Prefix { index, reason };
            if u.prefix.parse::<RepoName>().is_err() {
                return Err(bad(format!(
                    "{:?} is not a repository name prefix such as docker.io",
                    u.prefix
                )));
            }
            if let Some(other) = upstreams.iter().find(|o| {
                o.prefix == u.prefix
                    || u.prefix.starts_with(&format!("{}/", o.prefix))
                    || o.prefix.starts_with(&format!("{}/", u.prefix))
            }) {
                return Err(bad(format!(
                    "{:?} overlaps the prefix {:?} of another upstream",
                    u.prefix, other.prefix
                )));
            }
            let up = Upstream::from_config(index, u, metrics.clone())?;
            if up.default
                && let Some(d) = upstreams.iter().find(|o| o.default)
            {
                return Err(ProxyConfigError::TwoDefaults(
                    d.prefix.clone(),
                    up.prefix.clone(),
                ));
            }
            upstreams.push(Arc::new(up));
        }
        Ok(Proxy {
            upstreams,
            metrics,
            tag_flights: Mutex::new(HashMap::new()),
            blob_flights: Mutex::new(HashMap::new()),
            replica: format!("{:032x}", rand::random::<u128>()),
            pulls: Memo::new(PULLS_MAX),
            local_names: Memo::new(LOCAL_NAMES_MAX),
            fresh_tags: Memo::new(FRESH_TAGS_MAX),
        })
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.upstreams.iter().map(|u| (&u.prefix, &u.url)))
            .finish()
    }
}

impl Proxy {
    /// The upstream whose prefix `repo` is under, with the names on both sides.
    pub fn target(&self, repo: &RepoName) -> Option<Target> {
        let name = repo.as_str();
        self.upstreams.iter().find_map(|u| {
            let rest = name.strip_prefix(u.prefix.as_str())?.strip_prefix('/')?;
            self.under(u, rest)
        })
    }

    /// `rest` (the upstream's own name, or the part after the prefix) under upstream `u`.
    fn under(&self, u: &Arc<Upstream>, rest: &str) -> Option<Target> {
        let remote = u.remote_name(rest);
        let local = format!("{}/{remote}", u.prefix).parse().ok()?;
        Some(Target {
            upstream: u.clone(),
            local,
            remote,
        })
    }

    /// The canonical local name for a request's `repo`: under a prefix, Docker Hub's
    /// `library/` added; with containerd's `ns` naming an upstream (its prefix or its host),
    /// the name under that upstream; else, when `repo` is not a local repository
    /// (`is_local`), the name under the default upstream. `None`: not proxied.
    pub fn canonical(&self, repo: &RepoName, ns: Option<&str>, is_local: bool) -> Option<RepoName> {
        if let Some(t) = self.target(repo) {
            return Some(t.local);
        }
        if let Some(ns) = ns.filter(|n| !n.is_empty()) {
            return self.under(self.by_ns(ns)?, repo.as_str()).map(|t| t.local);
        }
        if is_local {
            return None;
        }
        let u = self.upstreams.iter().find(|u| u.default)?;
        self.under(u, repo.as_str()).map(|t| t.local)
    }

    /// The upstream containerd's `ns` names: by its prefix or its URL's host.
    pub fn by_ns(&self, ns: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| {
            u.prefix == ns
                || reqwest::Url::parse(&u.url)
                    .ok()
                    .and_then(|url| url.host_str().map(|h| h == ns))
                    .unwrap_or(false)
        })
    }

    /// Whether a request without a prefix could go to the default upstream (so the caller
    /// must look up whether the name is local).
    pub fn has_default(&self) -> bool {
        self.upstreams.iter().any(|u| u.default)
    }

    /// Whether prefix-less `repo` is a local repository, if looked up within the last
    /// [`LOCAL_NAME_TTL`].
    pub fn known_local(&self, repo: &RepoName) -> Option<bool> {
        self.local_names.get(repo)
    }

    /// Remembers whether `repo` is local, as a lookup found.
    pub fn note_local(&self, repo: &RepoName, local: bool) {
        self.local_names.set(repo.clone(), local, LOCAL_NAME_TTL);
    }

    /// Forgets what was looked up about `repo` (a write may have created it).
    pub fn forget_local(&self, repo: &RepoName) {
        self.local_names.remove(repo);
    }

    /// Where `tag` of cached `repo` points, while it is within its TTL as last seen here.
    pub fn fresh_tag(&self, repo: &RepoName, tag: &Tag) -> Option<Digest> {
        self.fresh_tags.get(&(repo.clone(), tag.clone()))
    }

    /// Remembers that `tag` points at `digest` and stays fresh for `left`.
    pub fn remember_fresh(&self, repo: &RepoName, tag: &Tag, digest: &Digest, left: Duration) {
        self.fresh_tags
            .set((repo.clone(), tag.clone()), digest.clone(), left);
    }

    /// Whether a pull of `digest` in `repo` should be recorded now.
    fn pull_is_news(&self, repo: &RepoName, digest: &Digest) -> bool {
        self.pulls
            .claim((repo.clone(), digest.clone()), (), RECORD_PULLS_EVERY)
    }

    fn tag_lock(&self, repo: &RepoName, tag: &Tag) -> TagFlight {
        let mut map = self.tag_flights.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, m| Arc::strong_count(m) > 1);
        }
        map.entry((repo.clone(), tag.clone()))
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamConfig;

    fn proxy(upstreams: Vec<UpstreamConfig>) -> Result<Proxy, ProxyConfigError> {
        Proxy::from_config(&ProxyConfig {
            upstreams,
            retention: None,
        })
    }

    fn up(prefix: &str, url: &str, default: bool) -> UpstreamConfig {
        UpstreamConfig {
            prefix: prefix.into(),
            url: url.into(),
            default,
            ..UpstreamConfig::default()
        }
    }

    fn name(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn names_map_to_one_canonical_local_name() {
        let p = proxy(vec![
            up("docker.io", "https://registry-1.docker.io", true),
            up("ghcr.io", "https://ghcr.io", false),
        ])
        .unwrap();
        let c = |n: &str, ns: Option<&str>, local: bool| {
            p.canonical(&name(n), ns, local).map(|r| r.to_string())
        };
        assert_eq!(
            c("docker.io/alpine", None, false).as_deref(),
            Some("docker.io/library/alpine")
        );
        assert_eq!(
            c("docker.io/library/alpine", None, false).as_deref(),
            Some("docker.io/library/alpine")
        );
        assert_eq!(
            c("ghcr.io/org/app", None, false).as_deref(),
            Some("ghcr.io/org/app")
        );
        // registry-mirrors: no prefix, not a local repository: the default upstream.
        assert_eq!(
            c("library/alpine", None, false).as_deref(),
            Some("docker.io/library/alpine")
        );
        assert_eq!(
            c("team/app", None, true),
            None,
            "a local repository stays local"
        );
        // containerd: ?ns= picks the upstream by prefix or host.
        assert_eq!(
            c("org/app", Some("ghcr.io"), false).as_deref(),
            Some("ghcr.io/org/app")
        );
        assert_eq!(
            c("library/alpine", Some("registry-1.docker.io"), false).as_deref(),
            Some("docker.io/library/alpine")
        );
        assert_eq!(
            c("x/y", Some("quay.io"), false),
            None,
            "an unknown ns is not proxied"
        );
        let t = p.target(&name("docker.io/library/alpine")).unwrap();
        assert_eq!(t.remote, "library/alpine");
        assert!(
            p.target(&name("docker.io")).is_none(),
            "the prefix alone names nothing"
        );
        assert!(p.target(&name("docker.iox/a")).is_none());
    }

    #[test]
    fn bad_configs_name_the_field() {
        let e = |r: Result<Proxy, ProxyConfigError>| r.err().unwrap().to_string();
        assert!(
            e(proxy(vec![up("Docker.io", "https://x", false)]))
                .starts_with("proxy.upstreams[0].prefix:")
        );
        assert!(
            e(proxy(vec![
                up("a", "https://x", false),
                up("a/b", "https://y", false)
            ]))
            .contains("overlaps")
        );
        assert!(
            e(proxy(vec![
                up("a", "https://x", true),
                up("b", "https://y", true)
            ]))
            .contains("only one upstream can be the default")
        );
        assert!(e(proxy(vec![up("a", "not a url", false)])).starts_with("proxy.upstreams[0].url:"));
        let mut ttl = up("a", "https://x", false);
        ttl.tag_ttl = Some("soon".into());
        assert!(e(proxy(vec![ttl])).starts_with("proxy.upstreams[0].tagTtl:"));
    }
}
