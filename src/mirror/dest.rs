//! Where a sync writes: a registry's storage directly (`--root`, through the repository layer,
//! as a push would), a registry over HTTP (`--to`, pushed to as any client pushes), or a
//! bundle to carry across an air gap (`export`).

use std::sync::Arc;

use bytes::Bytes;
use reqwest::Method;

use crate::oci::{Digest, Manifest, Reference, RepoName, Tag};
use crate::proxy::upstream::Body;
use crate::proxy::{Upstream, UpstreamError};
use crate::repo::{RepoError, Repository};
use crate::store::{ByteStream, Store, StoreError};

pub enum Destination {
    Store(Arc<dyn Store>),
    Registry(Box<Upstream>),
    Bundle(Box<super::bundle::Writer>),
}

#[derive(Debug, thiserror::Error)]
pub enum DestError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Repo(#[from] RepoError),
    #[error("destination: {0}")]
    Http(#[from] UpstreamError),
    #[error("{0}")]
    Bundle(#[from] super::bundle::BundleError),
    #[error("destination refused {what}: {status} {message}")]
    Refused {
        what: String,
        status: u16,
        message: String,
    },
}

/// Whether a status may change if asked again later: the destination busy or down, or
/// refusing credentials an administrator may fix; not a refusal of the content itself.
pub fn transient_status(status: u16) -> bool {
    matches!(status, 401 | 403 | 408 | 429) || status >= 500
}

impl DestError {
    /// Whether trying again later may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            DestError::Store(_) | DestError::Repo(RepoError::Store(_)) => true,
            DestError::Repo(_) | DestError::Bundle(_) => false,
            DestError::Http(e) => upstream_retryable(e),
            DestError::Refused { status, .. } => transient_status(*status),
        }
    }
}

/// Whether an upstream client's failure may pass: unreachable, rate-limited, a transient
/// status.
pub fn upstream_retryable(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Status { status, .. } => transient_status(*status),
        UpstreamError::TooLarge { .. } => false,
        UpstreamError::Offline(_)
        | UpstreamError::RateLimited { .. }
        | UpstreamError::Unreachable { .. } => true,
    }
}

/// A refusal's status and OCI error message, for the one line a failed image gets.
async fn refused(what: String, resp: reqwest::Response) -> DestError {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let e = &v["errors"][0];
            Some(format!(
                "{} {}",
                e["code"].as_str()?,
                e["message"].as_str().unwrap_or("")
            ))
        })
        .unwrap_or(body);
    let hint = if message.contains("MANIFEST_BLOB_UNKNOWN") && what.contains("index") {
        " (a platform-filtered index needs allowSparseIndexes: true at the destination)"
    } else {
        ""
    };
    DestError::Refused {
        what,
        status,
        message: format!("{}{hint}", message.trim()),
    }
}

impl Destination {
    /// Whether `repo` has manifest `digest`.
    pub async fn has_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool, DestError> {
        match self {
            Destination::Store(s) => Ok(Repository::new(&**s, repo).has_manifest(digest).await?),
            Destination::Bundle(b) => Ok(b.has_manifest(digest)),
            Destination::Registry(r) => {
                let resp = r
                    .write(
                        Method::HEAD,
                        repo.as_str(),
                        &format!("/v2/{repo}/manifests/{digest}"),
                        None,
                        Body::Empty,
                    )
                    .await?;
                Ok(resp.status().is_success())
            }
        }
    }

    /// Where `tag` of `repo` points now.
    pub async fn tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, DestError> {
        match self {
            Destination::Store(s) => Ok(Repository::new(&**s, repo).tag(tag).await?),
            // Every image the set names is named in the bundle's index.
            Destination::Bundle(_) => Ok(None),
            Destination::Registry(r) => {
                match r.manifest_digest(repo.as_str(), tag.as_str()).await {
                    Ok(d) => Ok(d),
                    Err(UpstreamError::Status { status: 404, .. }) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Stores manifest `bytes` (digest `digest`, parsed `m`) in `repo`, and points `tag` at
    /// it. Everything it references must already be there, but for an index's children when
    /// `sparse`.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        bytes: &Bytes,
        m: &Manifest,
        tag: Option<&Tag>,
        sparse: bool,
    ) -> Result<(), DestError> {
        match self {
            Destination::Store(s) => {
                let tags: Vec<&Tag> = tag.into_iter().collect();
                Repository::new(&**s, repo)
                    .publish(digest, bytes, m, &tags, sparse)
                    .await?;
                Ok(())
            }
            Destination::Bundle(b) => Ok(b.put_manifest(repo, digest, bytes, m, tag).await?),
            Destination::Registry(r) => {
                let reference = tag.map_or_else(|| digest.to_string(), |t| t.as_str().to_owned());
                let resp = r
                    .write(
                        Method::PUT,
                        repo.as_str(),
                        &format!("/v2/{repo}/manifests/{reference}"),
                        Some(&m.media_type),
                        Body::Bytes(bytes.clone()),
                    )
                    .await?;
                if resp.status().is_success() {
                    return Ok(());
                }
                let kind = if m.manifests.is_empty() {
                    "manifest"
                } else {
                    "index"
                };
                Err(refused(format!("{kind} {digest}"), resp).await)
            }
        }
    }

    /// Deletes a tag or (by digest) a manifest of `repo`, as replication does after a delete
    /// here. Returns `false` when the destination did not have it (which counts as done).
    pub async fn delete(&self, repo: &RepoName, reference: &Reference) -> Result<bool, DestError> {
        match self {
            Destination::Store(s) => {
                let r = Repository::new(&**s, repo);
                Ok(match reference {
                    Reference::Tag(t) => r.delete_tag(t).await?,
                    Reference::Digest(d) => r.delete_manifest(d, None).await?,
                })
            }
            Destination::Bundle(_) => Err(DestError::Refused {
                what: format!("a delete of {repo}:{reference}"),
                status: 0,
                message: "a bundle is written whole, not edited".into(),
            }),
            Destination::Registry(r) => {
                let resp = r
                    .write(
                        Method::DELETE,
                        repo.as_str(),
                        &format!("/v2/{repo}/manifests/{reference}"),
                        None,
                        Body::Empty,
                    )
                    .await?;
                match resp.status().as_u16() {
                    200..=299 => Ok(true),
                    404 => Ok(false),
                    _ => Err(refused(format!("a delete of {repo}:{reference}"), resp).await),
                }
            }
        }
    }

    /// Whether `repo` can serve blob `digest` already (the store links one it holds for
    /// another repository, as a mount does).
    pub async fn has_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, DestError> {
        match self {
            Destination::Store(s) => {
                let r = Repository::new(&**s, repo);
                Ok(r.blob_linked(digest).await? || r.mount_blob(digest, None).await?)
            }
            Destination::Bundle(b) => Ok(b.has_blob(digest)),
            Destination::Registry(r) => {
                let resp = r
                    .write(
                        Method::HEAD,
                        repo.as_str(),
                        &format!("/v2/{repo}/blobs/{digest}"),
                        None,
                        Body::Empty,
                    )
                    .await?;
                Ok(resp.status().is_success())
            }
        }
    }

    /// Writes blob `digest` from `body` into `repo`; the destination verifies the digest
    /// before the blob is visible. Returns the bytes written.
    pub async fn put_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: ByteStream,
        size: Option<u64>,
    ) -> Result<u64, DestError> {
        match self {
            Destination::Store(s) => {
                let id = s.upload_create(repo).await?;
                match s
                    .upload_append_commit(repo, &id, Some(0), None, body, digest)
                    .await
                {
                    Ok(n) => {
                        Repository::new(&**s, repo).link_blob(digest).await?;
                        Ok(n)
                    }
                    Err(e) => {
                        let _ = s.upload_cancel(repo, &id).await;
                        Err(e.into())
                    }
                }
            }
            Destination::Bundle(b) => Ok(b.put_blob(digest, body, size.unwrap_or(0)).await?),
            Destination::Registry(r) => {
                let start = r
                    .write(
                        Method::POST,
                        repo.as_str(),
                        &format!("/v2/{repo}/blobs/uploads/"),
                        None,
                        Body::Empty,
                    )
                    .await?;
                if start.status().as_u16() != 202 {
                    return Err(refused(format!("an upload of {digest}"), start).await);
                }
                let Some(location) = start
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                else {
                    return Err(DestError::Refused {
                        what: format!("an upload of {digest}"),
                        status: 202,
                        message: "no Location for the upload".into(),
                    });
                };
                let sep = if location.contains('?') { '&' } else { '?' };
                let url = format!("{location}{sep}digest={digest}");
                let done = r
                    .write(
                        Method::PUT,
                        repo.as_str(),
                        &url,
                        Some("application/octet-stream"),
                        Body::Stream(body, size),
                    )
                    .await?;
                if done.status().as_u16() != 201 {
                    return Err(refused(format!("blob {digest}"), done).await);
                }
                Ok(size.unwrap_or(0))
            }
        }
    }
}
