//! Manifest PUT/GET/HEAD/DELETE by tag or digest: parse and validate the request (size, digest,
//! shape, tags), call the repository layer (`crate::repo`, where a PUT's record order and gc's
//! touch protocol live), and answer.

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::Registry;
use super::errors::{RegistryError, Result};
use super::request::{Req, header_value};
use crate::oci::manifest::{MAX_MANIFEST_BYTES, kind_of_media_type};
use crate::oci::{Algorithm, Digest, Manifest, ManifestKind, Reference, RepoName, Tag};
use crate::repo::Repository;
use crate::repo::queue::{Detail, Event};

/// What a webhook says about a request beyond the names.
fn detail(req: &Req, media_type: &str, size: usize) -> Detail {
    Detail {
        media_type: Some(media_type.to_owned()),
        size: Some(size as u64),
        actor: req.user.clone(),
        client: req.client.map(|c| c.to_string()),
    }
}

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
    if let (Some(proxy), Some(target)) = (&reg.proxy, reg.proxied(repo)) {
        return crate::proxy::cache::manifest(proxy, &*reg.store, &target, reference)
            .await
            .map_err(|e| RegistryError::from_proxy(e, "MANIFEST_UNKNOWN"));
    }
    let repo = Repository::new(&*reg.store, repo);
    let digest = match reference {
        Reference::Digest(d) => d.clone(),
        Reference::Tag(t) => repo.tag(t).await?.ok_or(RegistryError::ManifestUnknown)?,
    };
    let media = repo
        .manifest_media_type(&digest)
        .await?
        .ok_or(RegistryError::ManifestUnknown)?;
    Ok((digest, media))
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
    let by_tag = match &reference {
        Reference::Tag(t) => Some(t),
        Reference::Digest(_) => None,
    };
    if !reg.policy.signatures.is_empty() {
        let here = Repository::new(&*reg.store, repo);
        reg.policy
            .signatures
            .check_pull(&here, &digest, by_tag)
            .await?;
    }
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
    if req.method == Method::GET
        && let Some(n) = &reg.policy.notifications
    {
        let event = Event::pull(repo, &digest, by_tag).with(detail(req, &media_type, len));
        if let Err(e) = n.record(&*reg.store, &event).await {
            tracing::warn!(error = %e, "cannot queue a pull notification");
        }
    }
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
    let mut tags: Vec<&Tag> = extra_tags.iter().collect();
    if let Reference::Tag(tag) = &reference {
        tags.insert(0, tag);
    }
    let here = Repository::new(&*reg.store, repo);
    // Pushes naming one immutable tag take turns (within this replica, and across replicas
    // for a tag's first push), so the second sees what the first wrote.
    let turn = reg
        .policy
        .immutable
        .lock_tags(&reg.store, repo, &tags)
        .await?;
    let published = publish_checked(reg, &here, &digest, &bytes, &manifest, &tags).await;
    if let Some(t) = turn {
        t.release().await;
    }
    published?;
    let len = bytes.len();
    reg.manifests.insert(digest.clone(), bytes);
    if let Some(r) = &reg.replication {
        r.pushed(&*reg.store, repo, &digest, &tags).await?;
    }
    if let Some(n) = &reg.policy.notifications {
        let event = Event::push(repo, &digest, &tags).with(detail(&req, &manifest.media_type, len));
        n.record(&*reg.store, &event).await?;
    }

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

/// The policy checks and the record of a push, while its immutable tags' turn is held.
async fn publish_checked(
    reg: &Registry,
    here: &Repository<'_>,
    digest: &Digest,
    bytes: &Bytes,
    manifest: &Manifest,
    tags: &[&Tag],
) -> Result<()> {
    let policy = &reg.policy;
    policy.immutable.check_push(here, tags, digest).await?;
    let admitted = if policy.quotas.covers(here.name()) {
        let this = [(digest.clone(), bytes.len() as u64)];
        Some(policy.quotas.admit(&*reg.store, here.name(), &this).await?)
    } else {
        None
    };
    here.publish(digest, bytes, manifest, tags, reg.allow_sparse_indexes)
        .await?;
    if let Some(a) = admitted {
        a.record().await;
    }
    Ok(())
}

pub async fn delete(
    reg: &Registry,
    repo: &RepoName,
    reference: &str,
    req: &Req,
) -> Result<Response> {
    let reference: Reference = reference.parse()?;
    let name = repo;
    let repo = Repository::new(&*reg.store, name);
    let deleted = match &reference {
        Reference::Tag(tag) => {
            reg.policy.immutable.check_delete_tag(name, tag)?;
            repo.delete_tag(tag).await?
        }
        Reference::Digest(digest) => {
            reg.policy
                .immutable
                .check_delete_manifest(&repo, digest)
                .await?;
            let bytes = bytes_of(reg, digest).await.ok();
            repo.delete_manifest(digest, bytes.as_ref()).await?
        }
    };
    if !deleted {
        return Err(RegistryError::ManifestUnknown);
    }
    if let Some(r) = &reg.replication {
        r.deleted(&*reg.store, name, &reference).await?;
    }
    if let Some(n) = &reg.policy.notifications {
        let event = match &reference {
            Reference::Tag(t) => Event::delete_tag(name, t),
            Reference::Digest(d) => Event::delete_manifest(name, d),
        };
        let who = Detail {
            actor: req.user.clone(),
            client: req.client.map(|c| c.to_string()),
            ..Detail::default()
        };
        n.record(&*reg.store, &event.with(who)).await?;
    }
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
}
