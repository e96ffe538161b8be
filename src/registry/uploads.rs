//! Blob uploads: POST (session, monolithic `?digest=`, or cross-repository `?mount=&from=`),
//! PATCH chunks with `Content-Range`, GET status, PUT `?digest=` to finish, DELETE to cancel.
//! Bytes are hashed as they arrive and become visible only after the digest checks out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};

use super::Registry;
use super::errors::{RegistryError, Result};
use super::request::{Req, header_value};
use crate::oci::{Digest, RepoName};
use crate::repo::Repository;
use crate::store::{ByteStream, UploadId};

/// The largest blob accepted and the upload sessions one repository or one user may hold
/// open on this replica. Sessions are counted from their creation until they finish, are
/// cancelled or sit idle for `session_ttl` (when the in-server purge removes them).
pub struct UploadLimits {
    pub max_blob_bytes: u64,
    pub max_sessions: usize,
    pub session_ttl: Duration,
    open: Mutex<HashMap<UploadId, OpenSession>>,
}

struct OpenSession {
    repo: String,
    user: Option<String>,
    last_active: Instant,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits::new(u64::MAX, usize::MAX, Duration::from_secs(24 * 3600))
    }
}

impl UploadLimits {
    pub fn new(max_blob_bytes: u64, max_sessions: usize, session_ttl: Duration) -> Self {
        UploadLimits {
            max_blob_bytes,
            max_sessions,
            session_ttl,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<UploadId, OpenSession>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses a new session when the repository or the user already holds the maximum.
    fn admit(&self, repo: &RepoName, user: Option<&str>) -> Result<()> {
        let mut open = self.sessions();
        let ttl = self.session_ttl;
        open.retain(|_, s| s.last_active.elapsed() < ttl);
        let in_repo = open.values().filter(|s| s.repo == repo.as_str()).count();
        if in_repo >= self.max_sessions {
            return Err(RegistryError::Denied(format!(
                "repository {repo} has {in_repo} open upload sessions, the most allowed \
                 (limits.maxUploadSessions): finish or cancel one first"
            )));
        }
        if let Some(u) = user {
            let by_user = open
                .values()
                .filter(|s| s.user.as_deref() == Some(u))
                .count();
            if by_user >= self.max_sessions {
                return Err(RegistryError::Denied(format!(
                    "user {u} has {by_user} open upload sessions, the most allowed \
                     (limits.maxUploadSessions): finish or cancel one first"
                )));
            }
        }
        Ok(())
    }

    fn opened(&self, id: &UploadId, repo: &RepoName, user: Option<&str>) {
        self.sessions().insert(
            id.clone(),
            OpenSession {
                repo: repo.as_str().to_owned(),
                user: user.map(str::to_owned),
                last_active: Instant::now(),
            },
        );
    }

    fn touched(&self, id: &UploadId) {
        if let Some(s) = self.sessions().get_mut(id) {
            s.last_active = Instant::now();
        }
    }

    fn closed(&self, id: &UploadId) {
        self.sessions().remove(id);
    }
}

/// Caps a request body at `limit` bytes: past it the stream fails and `exceeded` is set, so
/// the store drops what it received and the handler answers 413 rather than a body error.
fn capped(body: ByteStream, limit: u64, exceeded: Arc<AtomicBool>) -> ByteStream {
    let mut seen: u64 = 0;
    body.map(move |chunk| {
        let chunk = chunk?;
        seen = seen.saturating_add(chunk.len() as u64);
        if seen > limit {
            exceeded.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("blob exceeds limits.maxBlobBytes"));
        }
        Ok(chunk)
    })
    .boxed()
}

fn too_large(max: u64) -> RegistryError {
    RegistryError::PayloadTooLarge(format!(
        "blob larger than {max} bytes, the most this registry accepts (limits.maxBlobBytes)"
    ))
}

/// Refuses up front a body that says it will not fit in `room` bytes.
fn check_declared(reg: &Registry, len: Option<u64>, room: u64) -> Result<()> {
    match len {
        Some(n) if n > room => Err(too_large(reg.upload_limits.max_blob_bytes)),
        _ => Ok(()),
    }
}

fn upload_location(repo: &RepoName, id: &UploadId) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

/// The `Range` an upload reports: `0-<last byte>` (`0-0` before any byte, as Distribution does).
fn range_of(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// 202 with the headers that let a client continue the session.
fn session_response(
    status: StatusCode,
    repo: &RepoName,
    id: &UploadId,
    size: u64,
) -> Result<Response> {
    Ok((
        status,
        [
            (header::LOCATION, header_value(&upload_location(repo, id))?),
            (header::RANGE, header_value(&range_of(size))?),
            (
                header::HeaderName::from_static("docker-upload-uuid"),
                header_value(id.as_str())?,
            ),
            (header::CONTENT_LENGTH, HeaderValue::from_static("0")),
        ],
    )
        .into_response())
}

/// 201 for a blob that is now in `repo`.
pub fn created_blob(repo: &RepoName, digest: &Digest) -> Result<Response> {
    Ok((
        StatusCode::CREATED,
        [
            (
                header::LOCATION,
                header_value(&format!("/v2/{repo}/blobs/{digest}"))?,
            ),
            (
                header::HeaderName::from_static("docker-content-digest"),
                header_value(&digest.to_string())?,
            ),
            (header::CONTENT_LENGTH, HeaderValue::from_static("0")),
        ],
    )
        .into_response())
}

fn parse_id(id: &str) -> Result<UploadId> {
    id.parse().map_err(|_| RegistryError::BlobUploadUnknown)
}

/// `Content-Range: <start>-<end>` (inclusive; a `bytes ` prefix and `/<total>` are tolerated).
pub fn parse_content_range(v: &str) -> Result<(u64, u64)> {
    let bad = || RegistryError::RangeNotSatisfiable {
        message: format!("malformed Content-Range {v:?}: expected <start>-<end>"),
        current: None,
    };
    let v = v.trim();
    let v = v.strip_prefix("bytes ").unwrap_or(v);
    let v = v.split('/').next().unwrap_or(v);
    let (a, b) = v.split_once('-').ok_or_else(bad)?;
    let start: u64 = a.trim().parse().map_err(|_| bad())?;
    let end: u64 = b.trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    Ok((start, end))
}

/// Where a chunk says it starts and how long it says it is: from `Content-Range` (which
/// must agree with `Content-Length`), else just the length.
fn declared_chunk(req: &Req) -> Result<(Option<u64>, Option<u64>)> {
    let Some(v) = req.header(header::CONTENT_RANGE) else {
        return Ok((None, req.content_length()));
    };
    let (start, end) = parse_content_range(v)?;
    let len = (end - start)
        .checked_add(1)
        .ok_or_else(|| RegistryError::RangeNotSatisfiable {
            message: format!("Content-Range {v:?} is out of range"),
            current: None,
        })?;
    if let Some(cl) = req.content_length()
        && cl != len
    {
        return Err(RegistryError::RangeNotSatisfiable {
            message: format!("Content-Range covers {len} bytes but Content-Length is {cl}"),
            current: None,
        });
    }
    Ok((Some(start), Some(len)))
}

/// The request body as a store stream, counted into the metrics.
fn body_stream(reg: &Registry, body: Body) -> ByteStream {
    let counter = reg.metrics.bytes_received.clone();
    body.into_data_stream()
        .map_err(std::io::Error::other)
        .inspect_ok(move |b| {
            counter.inc_by(b.len() as u64);
        })
        .boxed()
}

fn has_body(req: &Req) -> bool {
    req.content_length().is_some_and(|n| n > 0)
        || req.headers.contains_key(header::TRANSFER_ENCODING)
}

/// Keeps the in-progress gauge right whichever way a request ends.
struct InProgress(prometheus_client::metrics::gauge::Gauge);

impl InProgress {
    fn new(reg: &Registry) -> Self {
        reg.metrics.uploads_in_progress.inc();
        InProgress(reg.metrics.uploads_in_progress.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Links a stored blob into `repo`, once its quotas admit it (refused, the blob stays
/// unlinked for gc to remove).
async fn link_blob(reg: &Registry, repo: &RepoName, digest: &Digest) -> Result<()> {
    let quotas = &reg.policy.quotas;
    if !quotas.covers(repo) {
        return Ok(Repository::new(&*reg.store, repo).link_blob(digest).await?);
    }
    let size = reg.store.blob_size(digest).await?.unwrap_or(0);
    let admitted = quotas
        .admit(&*reg.store, repo, &[(digest.clone(), size)])
        .await?;
    Repository::new(&*reg.store, repo).link_blob(digest).await?;
    admitted.record().await;
    Ok(())
}

/// A mount into `repo`, within its quotas.
async fn mount_within_quota(
    reg: &Registry,
    target: &Repository<'_>,
    digest: &Digest,
    from: Option<&Repository<'_>>,
) -> Result<bool> {
    let quotas = &reg.policy.quotas;
    if !quotas.covers(target.name()) {
        return Ok(target.mount_blob(digest, from).await?);
    }
    let Some(size) = reg.store.blob_size(digest).await? else {
        return Ok(false);
    };
    let admitted = quotas
        .admit(&*reg.store, target.name(), &[(digest.clone(), size)])
        .await?;
    let mounted = target.mount_blob(digest, from).await?;
    if mounted {
        admitted.record().await;
    }
    Ok(mounted)
}

pub async fn start(reg: &Registry, repo: &RepoName, req: Req, body: Body) -> Result<Response> {
    if let Some(mount) = req.query.get("mount") {
        let digest: Digest = mount.parse()?;
        let target = Repository::new(&*reg.store, repo);
        let mounted = match req.query.get("from") {
            Some(from) => {
                let from: RepoName = from.parse()?;
                let from = Repository::new(&*reg.store, &from);
                mount_within_quota(reg, &target, &digest, Some(&from)).await?
            }
            // No `from`: mount when the registry already holds the bytes, if so configured.
            None => {
                reg.automatic_cross_mount && mount_within_quota(reg, &target, &digest, None).await?
            }
        };
        if mounted {
            return created_blob(repo, &digest);
        }
        // Cannot mount: fall back to a new session, as the spec asks.
    } else if let Some(d) = req.query.get("digest") {
        let digest: Digest = d.parse()?;
        let _g = InProgress::new(reg);
        let len = req.content_length();
        if let Some(n) = len
            && reg.policy.quotas.covers(repo)
        {
            reg.policy
                .quotas
                .precheck(&*reg.store, repo, Some(&digest), n)
                .await?;
        }
        let max = reg.upload_limits.max_blob_bytes;
        check_declared(reg, len, max)?;
        let exceeded = Arc::new(AtomicBool::new(false));
        let body = capped(body_stream(reg, body), max, exceeded.clone());
        match reg.store.blob_receive(repo, &digest, len, body).await {
            Err(_) if exceeded.load(Ordering::Relaxed) => return Err(too_large(max)),
            r => r?,
        };
        link_blob(reg, repo, &digest).await?;
        return created_blob(repo, &digest);
    }
    reg.upload_limits.admit(repo, req.user.as_deref())?;
    if reg.policy.quotas.covers(repo) {
        reg.policy
            .quotas
            .precheck(&*reg.store, repo, None, 0)
            .await?;
    }
    let id = reg.store.upload_create(repo).await?;
    reg.upload_limits.opened(&id, repo, req.user.as_deref());
    session_response(StatusCode::ACCEPTED, repo, &id, 0)
}

pub async fn status(reg: &Registry, repo: &RepoName, id: &str) -> Result<Response> {
    let id = parse_id(id)?;
    let size = reg.store.upload_size(repo, &id).await?;
    session_response(StatusCode::NO_CONTENT, repo, &id, size)
}

pub async fn patch(
    reg: &Registry,
    repo: &RepoName,
    id: &str,
    req: Req,
    body: Body,
) -> Result<Response> {
    let id = parse_id(id)?;
    let (offset, len) = declared_chunk(&req)?;
    let _g = InProgress::new(reg);
    reg.upload_limits.touched(&id);
    let size = append_capped(reg, repo, &id, offset, len, body).await?;
    reg.upload_limits.touched(&id);
    session_response(StatusCode::ACCEPTED, repo, &id, size)
}

/// The room left in a session under `maxBlobBytes`: from the chunk's declared start when it
/// gave one (checked by the store), else from the session's size.
async fn room_left(
    reg: &Registry,
    repo: &RepoName,
    id: &UploadId,
    offset: Option<u64>,
) -> Result<u64> {
    let held = match offset {
        Some(o) => o,
        None => reg.store.upload_size(repo, id).await?,
    };
    Ok(reg.upload_limits.max_blob_bytes.saturating_sub(held))
}

/// Appends a chunk, refusing it (and removing the session's data) once the blob would pass
/// `maxBlobBytes`.
async fn append_capped(
    reg: &Registry,
    repo: &RepoName,
    id: &UploadId,
    offset: Option<u64>,
    len: Option<u64>,
    body: Body,
) -> Result<u64> {
    let max = reg.upload_limits.max_blob_bytes;
    let room = room_left(reg, repo, id, offset).await?;
    if check_declared(reg, len, room).is_err() {
        discard(reg, repo, id).await;
        return Err(too_large(max));
    }
    let exceeded = Arc::new(AtomicBool::new(false));
    let body = capped(body_stream(reg, body), room, exceeded.clone());
    match reg
        .store
        .upload_append(repo, id, offset, len, None, body)
        .await
    {
        Err(_) if exceeded.load(Ordering::Relaxed) => {
            discard(reg, repo, id).await;
            Err(too_large(max))
        }
        r => Ok(r?),
    }
}

/// Removes an oversized upload's session and data; the client must start again anyway.
async fn discard(reg: &Registry, repo: &RepoName, id: &UploadId) {
    if let Err(e) = reg.store.upload_cancel(repo, id).await {
        tracing::warn!(upload = %id, error = %e, "cannot remove an oversized upload");
    }
    reg.upload_limits.closed(id);
}

pub async fn finish(
    reg: &Registry,
    repo: &RepoName,
    id: &str,
    req: Req,
    body: Body,
) -> Result<Response> {
    let id = parse_id(id)?;
    let digest: Digest = req
        .query
        .get("digest")
        .ok_or_else(|| {
            RegistryError::DigestInvalid("the digest query parameter is required".into())
        })?
        .parse()?;
    if has_body(&req) {
        let (offset, len) = declared_chunk(&req)?;
        let _g = InProgress::new(reg);
        let max = reg.upload_limits.max_blob_bytes;
        let room = room_left(reg, repo, &id, offset).await?;
        if check_declared(reg, len, room).is_err() {
            discard(reg, repo, &id).await;
            return Err(too_large(max));
        }
        let exceeded = Arc::new(AtomicBool::new(false));
        let body = capped(body_stream(reg, body), room, exceeded.clone());
        match reg
            .store
            .upload_append_commit(repo, &id, offset, len, body, &digest)
            .await
        {
            Err(_) if exceeded.load(Ordering::Relaxed) => {
                discard(reg, repo, &id).await;
                return Err(too_large(max));
            }
            r => r?,
        };
    } else {
        reg.store.upload_commit(repo, &id, &digest).await?;
    }
    reg.upload_limits.closed(&id);
    link_blob(reg, repo, &digest).await?;
    created_blob(repo, &digest)
}

pub async fn cancel(reg: &Registry, repo: &RepoName, id: &str) -> Result<Response> {
    let id = parse_id(id)?;
    reg.store.upload_cancel(repo, &id).await?;
    reg.upload_limits.closed(&id);
    Ok((StatusCode::NO_CONTENT, [(header::CONTENT_LENGTH, "0")]).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms() {
        assert_eq!(parse_content_range("0-99").unwrap(), (0, 99));
        assert_eq!(parse_content_range("bytes 100-199/*").unwrap(), (100, 199));
        assert!(parse_content_range("5-1").is_err());
        assert!(parse_content_range("abc").is_err());
        assert!(parse_content_range("-5").is_err());
    }
}
