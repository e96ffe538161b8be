//! Where a copy reads: a registry (through the pull-through cache's upstream client), a
//! bundle (`mirror import`), or this registry's own store (push replication), behind the four
//! reads a copy needs.

use std::sync::Arc;

use super::bundle::{BundleError, Reader};
use crate::oci::{Descriptor, Digest, Reference, RepoName};
use crate::proxy::upstream::{FetchedBlob, FetchedManifest};
use crate::proxy::{Upstream, UpstreamError};
use crate::repo::{RepoError, Repository};
use crate::store::Store;

pub enum Source {
    Registry(Box<Upstream>),
    Bundle(Arc<Reader>),
    Store(Arc<dyn Store>),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Registry(#[from] UpstreamError),
    #[error("{0}")]
    Bundle(#[from] BundleError),
    #[error("{0}")]
    Repo(#[from] RepoError),
}

impl SourceError {
    /// Whether trying again later may succeed (the source was down or busy).
    pub fn retryable(&self) -> bool {
        match self {
            SourceError::Registry(e) => super::dest::upstream_retryable(e),
            SourceError::Bundle(_) => false,
            SourceError::Repo(e) => matches!(e, RepoError::Store(_)),
        }
    }
}

/// A name this registry could hold: anything else it does not have.
fn local(repo: &str) -> Option<RepoName> {
    repo.parse().ok()
}

async fn store_manifest(
    s: &dyn Store,
    repo: &str,
    reference: &str,
) -> Result<Option<FetchedManifest>, RepoError> {
    let (Some(name), Ok(reference)) = (local(repo), reference.parse::<Reference>()) else {
        return Ok(None);
    };
    let r = Repository::new(s, &name);
    let digest = match reference {
        Reference::Digest(d) => d,
        Reference::Tag(t) => match r.tag(&t).await? {
            Some(d) => d,
            None => return Ok(None),
        },
    };
    let Some(media_type) = r.manifest_media_type(&digest).await? else {
        return Ok(None);
    };
    Ok(s.blob_read(&digest).await?.map(|bytes| FetchedManifest {
        bytes,
        media_type: Some(media_type),
    }))
}

impl Source {
    pub async fn tags(&self, repo: &str) -> Result<Option<Vec<String>>, SourceError> {
        match self {
            Source::Registry(u) => Ok(u.tags(repo).await?),
            Source::Bundle(b) => Ok(Some(b.tags(repo))),
            Source::Store(s) => match local(repo) {
                Some(name) if s.repository_exists(&name).await.map_err(RepoError::from)? => {
                    Ok(Some(Repository::new(&**s, &name).tag_names().await?))
                }
                _ => Ok(None),
            },
        }
    }

    pub async fn manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<FetchedManifest>, SourceError> {
        match self {
            Source::Registry(u) => Ok(u.manifest(repo, reference).await?),
            Source::Bundle(b) => Ok(b.manifest(repo, reference).await?),
            Source::Store(s) => Ok(store_manifest(&**s, repo, reference).await?),
        }
    }

    pub async fn blob(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<FetchedBlob>, SourceError> {
        match self {
            Source::Registry(u) => Ok(u.blob(repo, digest).await?),
            Source::Bundle(b) => Ok(b.blob(digest).await?),
            Source::Store(s) => {
                let Some(name) = local(repo) else {
                    return Ok(None);
                };
                if !Repository::new(&**s, &name).serves_blob(digest).await? {
                    return Ok(None);
                }
                let Some(h) = s.blob_open(digest).await.map_err(RepoError::from)? else {
                    return Ok(None);
                };
                let size = h.size;
                let body = h.stream_all();
                Ok(Some(FetchedBlob {
                    size: Some(size),
                    body,
                }))
            }
        }
    }

    pub async fn referrers(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Vec<Descriptor>, SourceError> {
        match self {
            Source::Registry(u) => Ok(u.referrers(repo, digest).await?),
            Source::Bundle(b) => Ok(b.referrers(digest)),
            Source::Store(s) => match local(repo) {
                Some(name) => Ok(Repository::new(&**s, &name).referrers(digest).await?),
                None => Ok(Vec::new()),
            },
        }
    }

    /// Whether the source lacks manifest `d` by design: a bundle holds only the platforms its
    /// set chose, and the copy keeps the index whole without the rest.
    pub fn left_out(&self, d: &Digest) -> bool {
        match self {
            Source::Registry(_) | Source::Store(_) => false,
            Source::Bundle(b) => !b.holds(d),
        }
    }
}
