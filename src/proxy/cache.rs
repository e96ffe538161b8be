//! Filling the cache. Manifests by digest are immutable and kept for good. A tag is served
//! from the cache for its upstream's `tagTtl` (measured from when it was fetched or last
//! revalidated, a time kept in the store so every replica sees it), then revalidated with one
//! HEAD; one revalidation runs per tag at a time, and the others wait for it and use its
//! answer. When the upstream fails, rate-limits or is offline, the cached copy is served
//! (stale) and a warning says so; only a miss with no cached copy is an error.
//! Blobs are filled by `fill`.

use std::time::SystemTime;

use bytes::Bytes;

use super::{Proxy, ProxyError, Target};
use crate::oci::{Digest, Manifest, Reference};
use crate::repo::Repository;
use crate::store::Store;

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
            if let Some(hit) = fresh(proxy, &repo, target, tag).await? {
                count("hit");
                return Ok(hit);
            }
            let lock = proxy.tag_lock(&target.local, tag);
            let _flight = lock.lock().await;
            // Another request may have revalidated it while we waited.
            if let Some(hit) = fresh(proxy, &repo, target, tag).await? {
                count("hit");
                return Ok(hit);
            }
            let cached = match repo.tag(tag).await? {
                Some(d) => repo.manifest_media_type(&d).await?.map(|m| (d, m)),
                None => None,
            };
            match revalidate(&repo, target, tag, cached.as_ref()).await {
                Ok(hit) => {
                    proxy.remember_fresh(&target.local, tag, &hit.0, target.upstream.tag_ttl);
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

/// The cached manifest of `tag` if it is within its TTL (or the upstream is offline). The
/// TTL's end is remembered in memory, so a warm tag costs one store read (the manifest's
/// link, which also proves gc has not taken it), fewer than a local tag's two.
async fn fresh(
    proxy: &Proxy,
    repo: &Repository<'_>,
    target: &Target,
    tag: &crate::oci::Tag,
) -> Result<Option<(Digest, String)>, ProxyError> {
    if let Some(digest) = proxy.fresh_tag(&target.local, tag)
        && let Some(media) = repo.manifest_media_type(&digest).await?
    {
        return Ok(Some((digest, media)));
    }
    let Some((digest, when)) = repo.tag_pushed(tag).await? else {
        return Ok(None);
    };
    let age = SystemTime::now().duration_since(when).unwrap_or_default();
    if age >= target.upstream.tag_ttl && !target.upstream.offline {
        return Ok(None);
    }
    let Some(media) = repo.manifest_media_type(&digest).await? else {
        return Ok(None);
    };
    if !target.upstream.offline {
        proxy.remember_fresh(&target.local, tag, &digest, target.upstream.tag_ttl - age);
    }
    Ok(Some((digest, media)))
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
