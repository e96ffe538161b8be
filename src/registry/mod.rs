//! The OCI registry's HTTP side: route table, handlers per API area, error mapping, metrics.
//! Handlers parse and validate requests into `oci` newtypes, call the store, and map errors to
//! the spec's codes; they never touch files themselves.

pub mod auth;
pub mod blobs;
pub mod cache;
pub mod catalog;
pub mod errors;
pub mod linger;
pub mod manifests;
pub mod metrics;
pub mod proxies;
pub mod referrers;
pub mod request;
pub mod server;
pub mod tags;
pub mod uploads;

use std::sync::Arc;

use crate::store::Store;

/// What every handler shares: the store, caches and metrics.
pub struct Registry {
    pub store: Arc<dyn Store>,
    pub manifests: cache::ManifestCache,
    pub metrics: metrics::Metrics,
    pub tag_lists: tags::TagListCache,
    /// Mount a blob given `?mount=` without `from` when the registry already stores it.
    pub automatic_cross_mount: bool,
    /// Accept indexes whose child manifests are not all stored (a platform-filtered mirror).
    pub allow_sparse_indexes: bool,
    /// Access control; `None` is an open registry.
    pub auth: Option<Arc<auth::Auth>>,
    /// The largest blob and the open sessions one repository or user may have.
    pub upload_limits: uploads::UploadLimits,
    /// The pull-through cache's upstreams; `None` when nothing is proxied.
    pub proxy: Option<Arc<crate::proxy::Proxy>>,
    /// Push replication rules; each push and delete they cover is queued before the answer.
    pub replication: Option<Arc<crate::mirror::replicate::Replication>>,
    /// Immutable tags, quotas, webhooks and signature requirements (empty: none).
    pub policy: Arc<crate::policy::Policy>,
}

impl Registry {
    /// Where a proxied repository's content comes from; `None` for local repositories.
    pub fn proxied(&self, repo: &crate::oci::RepoName) -> Option<crate::proxy::Target> {
        self.proxy.as_ref()?.target(repo)
    }

    /// The name a read of `repo` is served under: a proxied repository's canonical local name
    /// (see `crate::proxy`), with containerd's `ns` choosing the upstream; `None` when `repo`
    /// is read as it is. Shared by the router and the token endpoint, so that a token asked
    /// for `library/alpine` through `registry-mirrors` covers the name the read is checked on.
    pub async fn read_name(
        &self,
        repo: &crate::oci::RepoName,
        ns: Option<&str>,
    ) -> crate::store::Result<Option<crate::oci::RepoName>> {
        let Some(proxy) = &self.proxy else {
            return Ok(None);
        };
        if let Some(t) = proxy.target(repo) {
            return Ok(Some(t.local));
        }
        let is_local = if ns.is_none() && proxy.has_default() {
            match proxy.known_local(repo) {
                Some(local) => local,
                None => {
                    let local = self.store.repository_exists(repo).await?;
                    proxy.note_local(repo, local);
                    local
                }
            }
        } else {
            false
        };
        Ok(proxy.canonical(repo, ns, is_local))
    }

    pub fn new(store: Arc<dyn Store>, manifest_cache_bytes: usize) -> Self {
        Registry {
            store,
            manifests: cache::ManifestCache::new(manifest_cache_bytes),
            metrics: metrics::Metrics::new(),
            tag_lists: tags::TagListCache::default(),
            automatic_cross_mount: true,
            allow_sparse_indexes: false,
            auth: None,
            upload_limits: uploads::UploadLimits::default(),
            proxy: None,
            replication: None,
            policy: Default::default(),
        }
    }
}
