//! Filling the cache. Manifests by digest are immutable and kept for good. A tag is served
//! from the cache for its upstream's `tagTtl` (measured from when it was fetched or last
//! revalidated, a time kept in the store so every replica sees it), then revalidated with one
//! HEAD; one revalidation runs per tag at a time, and the others wait for it and use its
//! answer. When the upstream fails, rate-limits or is offline, the cached copy is served
//! (stale) and a warning says so; only a miss with no cached copy is an error.
//!
//! A blob is fetched once however many clients ask: the first request streams the upstream's
//! bytes to its client while they are written to an upload session and hashed, and the blob
//! becomes visible (linked) only when its digest verifies; requests that arrive meanwhile wait
//! for that outcome and then read the stored copy. Memory stays bounded by a few chunks.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::{Proxy, ProxyError, Target};
use crate::oci::{Digest, Manifest, Reference};
use crate::repo::Repository;
use crate::store::{ByteStream, Store};

/// Chunks in flight between the upstream, the store and the first client.
const CHANNEL_CHUNKS: usize = 16;

/// The digest and media type of `reference` in a proxied repository, cached first if need be.
/// The pull is recorded on the revision (at most once an hour) for `proxy.retention`.
pub async fn manifest(
    proxy: &Proxy,
    store: &dyn Store,
    target: &Target,
    reference: &Reference,
) -> Result<(Digest, String), ProxyError> {
    let found = lookup(proxy, store, target, reference).await?;
    if proxy.pull_is_news(&target.local, &found.0) {
        Repository::new(store, &target.local)
            .touch_manifest(&found.0)
            .await?;
    }
    Ok(found)
}

async fn lookup(
    proxy: &Proxy,
    store: &dyn Store,
    target: &Target,
    reference: &Reference,
) -> Result<(Digest, String), ProxyError> {
    let repo = Repository::new(store, &target.local);
    let count = |event| proxy.metrics.count(&target.upstream.prefix, event);
    match reference {
        Reference::Digest(d) => {
            if let Some(media) = repo.manifest_media_type(d).await? {
                count("hit");
                return Ok((d.clone(), media));
            }
            let media = fetch_manifest(&repo, target, d).await?;
            count("miss");
            Ok((d.clone(), media))
        }
        Reference::Tag(tag) => {
            if let Some(hit) = fresh(&repo, target, tag).await? {
                count("hit");
                return Ok(hit);
            }
            let lock = proxy.tag_lock(&target.local, tag);
            let _flight = lock.lock().await;
            // Another request may have revalidated it while we waited.
            if let Some(hit) = fresh(&repo, target, tag).await? {
                count("hit");
                return Ok(hit);
            }
            let cached = match repo.tag(tag).await? {
                Some(d) => repo.manifest_media_type(&d).await?.map(|m| (d, m)),
                None => None,
            };
            match revalidate(&repo, target, tag, cached.as_ref()).await {
                Ok(hit) => {
                    let same = cached.as_ref().is_some_and(|(d, _)| d == &hit.0);
                    count(if same { "hit" } else { "miss" });
                    Ok(hit)
                }
                Err(e) => match cached {
                    Some(hit) => {
                        count("stale");
                        tracing::warn!(repository = %target.local, %tag, upstream = %target.upstream.url, error = %e, "serving the cached manifest: the upstream could not revalidate it");
                        Ok(hit)
                    }
                    None => Err(e),
                },
            }
        }
    }
}

/// The cached manifest of `tag` if it is within its TTL (or the upstream is offline).
async fn fresh(
    repo: &Repository<'_>,
    target: &Target,
    tag: &crate::oci::Tag,
) -> Result<Option<(Digest, String)>, ProxyError> {
    let Some((digest, when)) = repo.tag_pushed(tag).await? else {
        return Ok(None);
    };
    let age = SystemTime::now().duration_since(when).unwrap_or_default();
    if age >= target.upstream.tag_ttl && !target.upstream.offline {
        return Ok(None);
    }
    Ok(repo
        .manifest_media_type(&digest)
        .await?
        .map(|m| (digest, m)))
}

/// One HEAD for the tag; a GET only when it moved (or the upstream does not say where).
async fn revalidate(
    repo: &Repository<'_>,
    target: &Target,
    tag: &crate::oci::Tag,
    cached: Option<&(Digest, String)>,
) -> Result<(Digest, String), ProxyError> {
    let up = &target.upstream;
    let digest = up.manifest_digest(&target.remote, tag.as_str()).await?;
    if let (Some(d), Some((have, media))) = (&digest, cached)
        && d == have
    {
        repo.set_tag(tag, d).await?; // restarts the TTL
        return Ok((d.clone(), media.clone()));
    }
    let (digest, media) = match digest {
        Some(d) => {
            let media = match repo.manifest_media_type(&d).await? {
                Some(m) => m,
                None => fetch_manifest(repo, target, &d).await?,
            };
            (d, media)
        }
        None => {
            // The upstream did not give the digest: fetch by tag and compute it.
            let fetched = up
                .manifest(&target.remote, tag.as_str())
                .await?
                .ok_or_else(|| not_found(target, tag.as_str()))?;
            let d = crate::oci::Algorithm::Sha256.digest_of(&fetched.bytes);
            let media = keep_manifest(repo, target, &d, fetched.bytes, fetched.media_type).await?;
            (d, media)
        }
    };
    repo.set_tag(tag, &digest).await?;
    Ok((digest, media))
}

fn not_found(target: &Target, reference: &str) -> ProxyError {
    ProxyError::NotFound(format!(
        "upstream {} has no manifest {}:{reference}",
        target.upstream.url, target.remote
    ))
}

/// Fetches manifest `d`, checks its digest and caches it; returns its media type.
async fn fetch_manifest(
    repo: &Repository<'_>,
    target: &Target,
    d: &Digest,
) -> Result<String, ProxyError> {
    let fetched = target
        .upstream
        .manifest(&target.remote, &d.to_string())
        .await?
        .ok_or_else(|| not_found(target, &d.to_string()))?;
    let computed = d.algorithm().digest_of(&fetched.bytes);
    if &computed != d {
        return Err(ProxyError::Invalid(format!(
            "upstream {} sent manifest bytes with digest {computed} for {d}; not cached",
            target.upstream.url
        )));
    }
    keep_manifest(repo, target, d, fetched.bytes, fetched.media_type).await
}

async fn keep_manifest(
    repo: &Repository<'_>,
    target: &Target,
    d: &Digest,
    bytes: Bytes,
    media_type: Option<String>,
) -> Result<String, ProxyError> {
    let m = Manifest::parse(&bytes, media_type.as_deref()).map_err(|e| {
        ProxyError::Invalid(format!(
            "upstream {} sent an invalid manifest {d}: {e}; not cached",
            target.upstream.url
        ))
    })?;
    repo.cache_manifest(d, &bytes, &m).await?;
    Ok(m.media_type)
}

fn receiver_stream(rx: mpsc::Receiver<std::io::Result<Bytes>>) -> ByteStream {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }).boxed()
}

/// What a blob request gets from [`blob`].
pub enum BlobFill {
    /// The bytes as they arrive from the upstream (this request started the fetch).
    Streaming { size: Option<u64>, body: ByteStream },
    /// The blob is now stored and linked: serve it as local content.
    Stored,
}

/// Fetches blob `digest` of a proxied repository into the cache (see the module's doc).
pub async fn blob(
    proxy: &Arc<Proxy>,
    store: Arc<dyn Store>,
    target: &Target,
    digest: &Digest,
) -> Result<BlobFill, ProxyError> {
    let leader = {
        let mut flights = proxy.blob_flights.lock().unwrap_or_else(|p| p.into_inner());
        match flights.get(digest) {
            Some(rx) => Err(rx.clone()),
            None => {
                let (tx, rx) = watch::channel(None);
                flights.insert(digest.clone(), rx);
                Ok(tx)
            }
        }
    };
    let tx = match leader {
        Ok(tx) => tx,
        Err(mut rx) => {
            let outcome = rx.wait_for(Option::is_some).await.map(|v| v.clone());
            return match outcome {
                Ok(Some(Ok(()))) => Ok(BlobFill::Stored),
                Ok(Some(Err(e))) => Err(ProxyError::Invalid(e)),
                _ => Err(ProxyError::Invalid(
                    "the upstream fetch was abandoned".into(),
                )),
            };
        }
    };
    let fill = Fill {
        proxy: proxy.clone(),
        store,
        target: target.clone(),
        digest: digest.clone(),
        tx,
    };
    let fetched = match target.upstream.blob(&target.remote, digest).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            let e = format!(
                "upstream {} has no blob {digest} in {}",
                target.upstream.url, target.remote
            );
            fill.finish(Err(e.clone()));
            return Err(ProxyError::NotFound(e));
        }
        Err(e) => {
            fill.finish(Err(e.to_string()));
            return Err(e.into());
        }
    };
    let id = match fill.store.upload_create(&target.local).await {
        Ok(id) => id,
        Err(e) => {
            fill.finish(Err(e.to_string()));
            return Err(e.into());
        }
    };
    let (client_tx, client_rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::spawn(fill.run(id, fetched.body, client_tx));
    Ok(BlobFill::Streaming {
        size: fetched.size,
        body: receiver_stream(client_rx),
    })
}

/// One blob on its way from the upstream into the store (and to the first client).
struct Fill {
    proxy: Arc<Proxy>,
    store: Arc<dyn Store>,
    target: Target,
    digest: Digest,
    tx: watch::Sender<FillOutcome>,
}

type FillOutcome = Option<Result<(), String>>;

impl Fill {
    /// Tells the requests that joined, and lets the next miss start a new fetch.
    fn finish(&self, outcome: Result<(), String>) {
        let _ = self.tx.send(Some(outcome));
        self.proxy
            .blob_flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.digest);
    }

    /// Copies the upstream's bytes into the upload session and to the client, commits
    /// (which verifies the digest) and links the blob. The fill goes on if the client leaves.
    async fn run(
        self,
        id: crate::store::UploadId,
        mut upstream: ByteStream,
        client: mpsc::Sender<std::io::Result<Bytes>>,
    ) {
        let (to_store, from_pump) = mpsc::channel::<std::io::Result<Bytes>>(CHANNEL_CHUNKS);
        let store = self.store.clone();
        let (local, digest, sid) = (self.target.local.clone(), self.digest.clone(), id.clone());
        let commit = tokio::spawn(async move {
            let body = receiver_stream(from_pump);
            store
                .upload_append_commit(&local, &sid, Some(0), None, body, &digest)
                .await
        });
        let mut client_gone = false;
        let mut failed = None;
        while let Some(chunk) = upstream.next().await {
            match chunk {
                Ok(b) => {
                    if to_store.send(Ok(b.clone())).await.is_err() {
                        break; // the store gave up; its error comes from the commit
                    }
                    if !client_gone && client.send(Ok(b)).await.is_err() {
                        client_gone = true;
                    }
                }
                Err(e) => {
                    let why = format!(
                        "upstream {} broke off blob {}: {e}",
                        self.target.upstream.url, self.digest
                    );
                    let _ = to_store.send(Err(std::io::Error::other(why.clone()))).await;
                    failed = Some(why);
                    break;
                }
            }
        }
        drop(to_store);
        let committed = commit.await;
        let outcome = match (failed, committed) {
            (Some(why), _) => Err(why),
            (None, Ok(Ok(_))) => Repository::new(&*self.store, &self.target.local)
                .link_blob(&self.digest)
                .await
                .map_err(|e| e.to_string()),
            (None, Ok(Err(e))) => Err(format!(
                "blob {} from upstream {} not cached: {e}",
                self.digest, self.target.upstream.url
            )),
            (None, Err(e)) => Err(e.to_string()),
        };
        if let Err(why) = &outcome {
            tracing::warn!(repository = %self.target.local, digest = %self.digest, error = %why, "pull-through fill failed");
            let _ = self.store.upload_cancel(&self.target.local, &id).await;
            let _ = client.send(Err(std::io::Error::other(why.clone()))).await;
        }
        self.finish(outcome);
    }
}
