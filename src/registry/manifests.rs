//! Manifest PUT/GET/HEAD/DELETE by tag or digest. A PUT is validated (shape, media type,
//! every referenced blob and child manifest present in the repository) before anything is
//! written; then the bytes are stored by digest, linked into the repository, the referrers
//! index of its subject updated, and the tag moved, in that order, so a reader never sees a tag
//! that points at something missing.

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::try_join_all;

use super::Registry;
use super::errors::{RegistryError, Result};
use super::request::{Req, header_value};
use crate::oci::manifest::{MAX_MANIFEST_BYTES, kind_of_media_type};
use crate::oci::{Algorithm, Descriptor, Digest, Manifest, ManifestKind, Reference, RepoName, Tag};
use crate::store::{MetaDir, MetaKey};

fn too_large() -> RegistryError {
    RegistryError::PayloadTooLarge(format!(
        "manifest exceeds the {MAX_MANIFEST_BYTES} byte limit"
    ))
}

/// Bodies up to this size are read and discarded before a 413, so the client sees the answer
/// instead of a reset connection; larger ones are cut off.
const DRAIN_LIMIT: u64 = 32 * 1024 * 1024;

/// Reads a manifest body, refusing more than the limit without buffering it.
async fn read_limited(req: &Req, body: Body) -> Result<Bytes> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut over = req
        .content_length()
        .is_some_and(|n| n > MAX_MANIFEST_BYTES as u64);
    let mut seen: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            RegistryError::ManifestInvalid(format!("could not read the manifest body: {e}"))
        })?;
        seen += chunk.len() as u64;
        over |= seen > MAX_MANIFEST_BYTES as u64;
        if over {
            if seen > DRAIN_LIMIT {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&chunk);
    }
    if over {
        return Err(too_large());
    }
    Ok(buf.freeze())
}

/// Where `reference` points in `repo`: the digest and the media type recorded at push time.
pub async fn resolve(
    reg: &Registry,
    repo: &RepoName,
    reference: &Reference,
) -> Result<(Digest, String)> {
    let digest = match reference {
        Reference::Digest(d) => d.clone(),
        Reference::Tag(t) => {
            let raw = reg
                .store
                .meta_get(&MetaKey::tag(repo, t))
                .await?
                .ok_or(RegistryError::ManifestUnknown)?;
            std::str::from_utf8(&raw)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| RegistryError::Storage(format!("tag {t} holds an invalid digest")))?
        }
    };
    let link = MetaKey::manifest_link(repo, &digest);
    let media = match reg.store.meta_get(&link).await? {
        Some(m) => m,
        // A collection may have staged it an instant ago: a touch brings it back.
        None if reg.store.meta_touch(&link).await? => reg
            .store
            .meta_get(&link)
            .await?
            .ok_or(RegistryError::ManifestUnknown)?,
        None => return Err(RegistryError::ManifestUnknown),
    };
    Ok((digest, String::from_utf8_lossy(&media).into_owned()))
}

/// The manifest bytes for a digest, from the cache or the store.
pub async fn bytes_of(reg: &Registry, digest: &Digest) -> Result<Bytes> {
    if let Some(b) = reg.manifests.get(digest) {
        return Ok(b);
    }
    let b = reg
        .store
        .blob_read(digest)
        .await?
        .ok_or(RegistryError::ManifestUnknown)?;
    reg.manifests.insert(digest.clone(), b.clone());
    Ok(b)
}

/// Media types the client lists in `Accept` (parameters dropped); empty when it accepts any.
fn accepted(req: &Req) -> Vec<String> {
    let mut out = Vec::new();
    for v in req.headers.get_all(header::ACCEPT) {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let t = item.split(';').next().unwrap_or("").trim();
            if t == "*/*" {
                return Vec::new();
            }
            if !t.is_empty() {
                out.push(t.to_owned());
            }
        }
    }
    out
}

pub async fn get(reg: &Registry, repo: &RepoName, reference: &str, req: &Req) -> Result<Response> {
    // A reference that is not a valid tag names no manifest: 404, as clients and the
    // conformance suite expect. A malformed digest is still DIGEST_INVALID.
    let reference: Reference = match reference.parse() {
        Ok(r) => r,
        Err(crate::oci::name::ReferenceError::Tag(_)) => {
            return Err(RegistryError::ManifestUnknown);
        }
        Err(e) => return Err(e.into()),
    };
    let (digest, media_type) = resolve(reg, repo, &reference).await?;
    // Content negotiation as Distribution does it: a client that lists manifest types but no
    // index type cannot use an index, so it is told the manifest is not available to it.
    let accept = accepted(req);
    if kind_of_media_type(&media_type) == Some(ManifestKind::Index)
        && !accept.is_empty()
        && !accept.iter().any(|a| a == &media_type)
        && accept.iter().any(|a| kind_of_media_type(a).is_some())
        && !accept
            .iter()
            .any(|a| kind_of_media_type(a) == Some(ManifestKind::Index))
    {
        return Err(RegistryError::ManifestNotAcceptable(format!(
            "manifest is a {media_type}, which the Accept header does not include"
        )));
    }
    let bytes = bytes_of(reg, &digest).await?;
    let len = bytes.len();
    let headers = [
        (header::CONTENT_TYPE, header_value(&media_type)?),
        (
            header::HeaderName::from_static("docker-content-digest"),
            header_value(&digest.to_string())?,
        ),
        (header::ETAG, header_value(&format!("\"{digest}\""))?),
    ];
    let body = if req.method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    let mut resp = (StatusCode::OK, headers, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(resp)
}

/// Checks that every blob and child manifest `m` references is in `repo`, touching each so
/// that garbage collection's grace period restarts for it (see `crate::gc`): a collection that
/// raced this check either sees the touch and keeps the item, or has already removed it and
/// the check fails.
async fn touch_references(reg: &Registry, repo: &RepoName, m: &Manifest) -> Result<()> {
    let blob_checks = m.required_blobs().map(|d: &Descriptor| async move {
        let linked = reg
            .store
            .meta_exists(&MetaKey::blob_link(repo, &d.digest))
            .await?;
        let size = if linked {
            reg.store.blob_touch(&d.digest).await?
        } else {
            None
        };
        match size {
            None => Err(RegistryError::ManifestBlobUnknown(d.digest.to_string())),
            Some(s) if s != d.size => Err(RegistryError::ManifestInvalid(format!(
                "descriptor for {} says {} bytes, the blob has {s}",
                d.digest, d.size
            ))),
            Some(_) => Ok(()),
        }
    });
    try_join_all(blob_checks).await?;
    let child_checks = m.manifests.iter().map(|d| async move {
        if reg
            .store
            .meta_touch(&MetaKey::manifest_link(repo, &d.digest))
            .await?
            && reg.store.blob_touch(&d.digest).await?.is_some()
        {
            Ok(())
        } else {
            Err(RegistryError::ManifestBlobUnknown(d.digest.to_string()))
        }
    });
    try_join_all(child_checks).await?;
    Ok(())
}

pub async fn put(
    reg: &Registry,
    repo: &RepoName,
    reference: &str,
    req: Req,
    body: Body,
) -> Result<Response> {
    let reference: Reference = reference.parse()?;
    let content_type = req.header(header::CONTENT_TYPE).map(str::to_owned);
    let bytes = read_limited(&req, body).await?;
    reg.metrics.bytes_received.inc_by(bytes.len() as u64);
    let digest = match &reference {
        Reference::Digest(d) => {
            let computed = d.algorithm().digest_of(&bytes);
            if &computed != d {
                return Err(RegistryError::DigestInvalid(format!(
                    "manifest digest is {computed}, not {d}"
                )));
            }
            computed
        }
        Reference::Tag(_) => Algorithm::Sha256.digest_of(&bytes),
    };
    // Extra tags from `?tag=` (distribution-spec's tag parameter), validated before any write.
    let extra_tags: Vec<Tag> = req
        .query
        .get_all("tag")
        .map(|t| t.parse::<Tag>())
        .collect::<Result<_, _>>()?;
    let manifest = Manifest::parse(&bytes, content_type.as_deref())?;
    touch_references(reg, repo, &manifest).await?;

    let link = MetaKey::manifest_link(repo, &digest);
    let existed = reg.store.meta_exists(&link).await?;
    reg.store.blob_put(&digest, bytes.clone()).await?;
    reg.store
        .meta_put(&link, manifest.media_type.as_bytes())
        .await?;
    if let Some(subject) = &manifest.subject {
        let entry = Descriptor {
            media_type: manifest.media_type.clone(),
            digest: digest.clone(),
            size: bytes.len() as u64,
            urls: None,
            artifact_type: manifest.referrer_artifact_type(),
            annotations: manifest.annotations.clone(),
            platform: None,
        };
        let json = serde_json::to_vec(&entry).map_err(|e| RegistryError::Storage(e.to_string()))?;
        reg.store
            .meta_put(&MetaKey::referrer(repo, &subject.digest, &digest), &json)
            .await?;
    }
    // Now that the manifest is recorded, touch everything again. If a collection removed
    // something between the first touch and the record, this is where it shows: undo the
    // record and fail, so a 201 never points at anything missing.
    let recheck = async {
        touch_references(reg, repo, &manifest).await?;
        if reg.store.blob_touch(&digest).await?.is_none() {
            return Err(RegistryError::ManifestBlobUnknown(digest.to_string()));
        }
        Ok(())
    }
    .await;
    if let Err(e) = recheck {
        if !existed {
            reg.store.meta_delete(&link).await?;
            if let Some(subject) = &manifest.subject {
                reg.store
                    .meta_delete(&MetaKey::referrer(repo, &subject.digest, &digest))
                    .await?;
            }
        }
        return Err(e);
    }
    let mut tags: Vec<&Tag> = extra_tags.iter().collect();
    if let Reference::Tag(tag) = &reference {
        tags.insert(0, tag);
    }
    for tag in &tags {
        reg.store
            .meta_put(&MetaKey::tag(repo, tag), digest.to_string().as_bytes())
            .await?;
    }
    reg.manifests.insert(digest.clone(), bytes);

    let mut resp = (
        StatusCode::CREATED,
        [
            (
                header::LOCATION,
                header_value(&format!("/v2/{repo}/manifests/{digest}"))?,
            ),
            (
                header::HeaderName::from_static("docker-content-digest"),
                header_value(&digest.to_string())?,
            ),
            (header::CONTENT_LENGTH, HeaderValue::from_static("0")),
        ],
    )
        .into_response();
    if let Some(subject) = &manifest.subject {
        resp.headers_mut()
            .insert("oci-subject", header_value(&subject.digest.to_string())?);
    }
    if !extra_tags.is_empty() {
        let list: Vec<&str> = tags.iter().map(|t| t.as_str()).collect();
        resp.headers_mut()
            .insert("oci-tag", header_value(&list.join(", "))?);
    }
    Ok(resp)
}

/// Tags in `repo` that point at `digest`.
async fn tags_pointing_at(reg: &Registry, repo: &RepoName, digest: &Digest) -> Result<Vec<Tag>> {
    let names = reg.store.meta_list(&MetaDir::tags(repo)).await?;
    let want = digest.to_string();
    let mut out = Vec::new();
    for n in names {
        let Ok(tag) = n.parse::<Tag>() else { continue };
        if let Some(v) = reg.store.meta_get(&MetaKey::tag(repo, &tag)).await?
            && v.as_ref() == want.as_bytes()
        {
            out.push(tag);
        }
    }
    Ok(out)
}

pub async fn delete(reg: &Registry, repo: &RepoName, reference: &str) -> Result<Response> {
    let reference: Reference = reference.parse()?;
    match reference {
        Reference::Tag(tag) => {
            if !reg.store.meta_delete(&MetaKey::tag(repo, &tag)).await? {
                return Err(RegistryError::ManifestUnknown);
            }
        }
        Reference::Digest(digest) => {
            let link = MetaKey::manifest_link(repo, &digest);
            if !reg.store.meta_exists(&link).await? {
                return Err(RegistryError::ManifestUnknown);
            }
            // Drop its entry in its subject's referrers list, and the tags that point at it.
            if let Ok(bytes) = bytes_of(reg, &digest).await
                && let Ok(m) = Manifest::parse(&bytes, None)
                && let Some(subject) = m.subject
            {
                reg.store
                    .meta_delete(&MetaKey::referrer(repo, &subject.digest, &digest))
                    .await?;
            }
            for tag in tags_pointing_at(reg, repo, &digest).await? {
                reg.store.meta_delete(&MetaKey::tag(repo, &tag)).await?;
            }
            reg.store.meta_delete(&link).await?;
        }
    }
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
}
