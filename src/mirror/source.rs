//! Where a copy reads: a registry (through the pull-through cache's upstream client) or a
//! bundle (`mirror import`), behind the four reads a copy needs.

use std::sync::Arc;

use super::bundle::{BundleError, Reader};
use crate::oci::{Descriptor, Digest};
use crate::proxy::upstream::{FetchedBlob, FetchedManifest};
use crate::proxy::{Upstream, UpstreamError};

pub enum Source {
    Registry(Box<Upstream>),
    Bundle(Arc<Reader>),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Registry(#[from] UpstreamError),
    #[error("{0}")]
    Bundle(#[from] BundleError),
}

impl Source {
    pub async fn tags(&self, repo: &str) -> Result<Option<Vec<String>>, SourceError> {
        match self {
            Source::Registry(u) => Ok(u.tags(repo).await?),
            Source::Bundle(b) => Ok(Some(b.tags(repo))),
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
        }
    }

    /// Whether the source lacks manifest `d` by design: a bundle holds only the platforms its
    /// set chose, and the copy keeps the index whole without the rest.
    pub fn left_out(&self, d: &Digest) -> bool {
        match self {
            Source::Registry(_) => false,
            Source::Bundle(b) => !b.holds(d),
        }
    }
}
