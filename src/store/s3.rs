//! S3-compatible object storage (AWS S3, Ceph RGW, Garage, MinIO) behind the [`Store`] trait.
//!
//! Keys are the ones [`layout`] builds, under an optional prefix. Everything a replica knows
//! lives in the bucket, so several `berth serve` processes on one bucket are one registry:
//!
//! * **Uploads** stream into an S3 multipart upload (`uploads/<id>/data`) in parts of
//!   `part_size` bytes as they arrive; the bytes that do not fill a part yet (at most one part)
//!   wait in a tail object. The session's state (`uploads/<id>/state`: owner, size, multipart
//!   id, part ETags, tail, and the *saved SHA-2 state*, see [`ResumableDigester`]) is rewritten
//!   after each chunk, so the next `PATCH` may land on any replica, and a chunk is
//!   all-or-nothing: until the state is written, nothing the chunk uploaded is part of the
//!   session. Commit verifies the digest, completes the multipart upload and copies the
//!   object to its blob key in one server-side copy, which makes it visible whole.
//! * **Garbage collection** follows `crate::gc`'s touch protocol. S3 has no settable mtime
//!   and no rename, so each object `dir/name` has a *touch marker* `dir/.t-name` whose body is
//!   the writer's precise clock (nanoseconds), and staging is a copy to `dir/.gc-name` followed
//!   by a delete. Every write of an object writes its marker first; a touch writes the marker,
//!   then looks for the object (bringing back a staged copy). A sweep looks at the object's time
//!   (marker, or the `berth-written` attribute, or last-modified), stages it, and looks at the
//!   marker again: a touch it has not seen happened after the object was gone, so that touch
//!   found the staged copy or nothing, exactly as on the filesystem.
//!   One residual difference from the filesystem: a *tag* that retention deletes while the same
//!   tag is pushed again within the sweep's few milliseconds may come back with the older value
//!   (content-addressed objects have one value per key, so they cannot).
//! * **Reads** stream the object; ranges become ranged GETs. With `redirect`, blob GETs are
//!   answered with a presigned URL instead.
//! * **Purge** (`berth purge`) empties the prefix, or without one the layout's top-level
//!   directories, with batched deletes; it first aborts the multipart uploads that sessions
//!   recorded, then any others in scope (found with ListMultipartUploads, the one request here
//!   object_store has no call for), whose parts would otherwise stay billed and unlisted.
//!
//! Errors other than "not found" become [`StoreError::Unavailable`] (503): requests are bounded
//! by a connect timeout, a request timeout and a short retry budget, so a missing bucket fails
//! requests promptly instead of hanging them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesOrdered, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::{HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    Attribute, AttributeValue, Attributes, BackoffConfig, ClientOptions, GetOptions, GetRange,
    ObjectMeta, ObjectStore, PutOptions, PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};

use super::{
    BlobHandle, BlobInfo, BlobSource, ByteStream, MetaDir, MetaKey, PurgeReport, Result, Store,
    StoreError, UploadId, UploadInfo, layout,
};
use crate::config::S3Config;
use crate::oci::resumable::ResumableDigester;
use crate::oci::{Algorithm, Digest, RepoName};

/// S3's smallest part (all but the last part of a multipart upload must be at least this).
const MIN_PART: usize = 5 << 20;
/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;
/// Tries of a server-side copy before it is reported unavailable (see `copy`).
const COPY_ATTEMPTS: usize = 5;
/// The object attribute holding the writer's clock at write time (nanoseconds).
const WRITTEN: &str = "berth-written";
/// How long a presigned blob URL stays valid.
const PRESIGN_FOR: Duration = Duration::from_secs(20 * 60);
/// Readiness checks give up after this long.
const READY_TIMEOUT: Duration = Duration::from_secs(3);
/// Listing-and-deleting passes a purge makes before it gives up on a store that keeps filling.
const PURGE_ROUNDS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum S3OpenError {
    #[error("invalid storage.s3 setting {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("cannot use bucket {bucket:?}: {reason}")]
    Build { bucket: String, reason: String },
    #[error(
        "cannot reach bucket {bucket:?} at {endpoint}: {reason} (check storage.s3 endpoint, region and credentials)"
    )]
    Unreachable {
        bucket: String,
        endpoint: String,
        reason: String,
    },
}

pub struct S3Store {
    s3: Arc<AmazonS3>,
    /// The same bucket without a whole-request timeout, for streaming blob bodies.
    reader: Arc<AmazonS3>,
    /// How long a blob stream may wait for the bucket's next bytes.
    idle: Duration,
    /// Tails this replica wrote recently (a cache: the bucket's copy is the truth).
    tails: TailCache,
    prefix: String,
    part_size: usize,
    redirect: bool,
    bucket: String,
    endpoint: String,
    /// For the request object_store lacks (ListMultipartUploads, in a purge): how to sign it
    /// and how to connect.
    region: String,
    http_options: ClientOptions,
}

/// Valid prefix: `/`-separated segments of `[A-Za-z0-9._-]`, none empty, `.` or `..`.
fn normalize_prefix(p: Option<&str>) -> Result<String, S3OpenError> {
    let p = p.unwrap_or("").trim_matches('/');
    if p.is_empty() {
        return Ok(String::new());
    }
    for seg in p.split('/') {
        let ok = !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(S3OpenError::Invalid {
                what: "prefix",
                reason: format!("{p:?}: segments must be non-empty [A-Za-z0-9._-], not . or .."),
            });
        }
    }
    Ok(format!("{p}/"))
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn from_nanos(n: u128) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// An object's last-modified time (the server's clock).
fn last_modified(m: &ObjectMeta) -> SystemTime {
    from_nanos(m.last_modified.timestamp_nanos_opt().unwrap_or(0).max(0) as u128)
}

fn unavailable(e: object_store::Error) -> StoreError {
    StoreError::Unavailable(format!("object storage: {e}"))
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

/// `dir/name` -> (`dir/.t-name`, `dir/.gc-name`).
fn marker_and_staged(key: &str) -> (String, String) {
    let (dir, name) = key.rsplit_once('/').unwrap_or(("", key));
    (format!("{dir}/.t-{name}"), format!("{dir}/.gc-{name}"))
}

/// The last tail written per upload, by name (a name is never reused for other bytes), bounded
/// in total size so abandoned uploads cannot grow it.
#[derive(Default)]
struct TailCache(std::sync::Mutex<std::collections::HashMap<UploadId, (String, Bytes)>>);

const TAIL_CACHE_BYTES: usize = 64 << 20;

impl TailCache {
    fn get(&self, id: &UploadId, name: &str) -> Option<Bytes> {
        let map = self.0.lock().ok()?;
        map.get(id)
            .filter(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
    }

    fn insert(&self, id: &UploadId, name: &str, bytes: Bytes) {
        if let Ok(mut map) = self.0.lock() {
            let held: usize = map.values().map(|(_, b)| b.len()).sum();
            if held + bytes.len() > TAIL_CACHE_BYTES {
                map.clear();
            }
            map.insert(id.clone(), (name.to_owned(), bytes));
        }
    }

    fn remove(&self, id: &UploadId) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(id);
        }
    }
}

/// An upload session's state, stored as JSON at `uploads/<id>/state`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadState {
    repo: String,
    size: u64,
    digester: crate::oci::resumable::SavedDigester,
    /// The multipart upload id, once the first full part was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    multipart: Option<String>,
    /// ETags of the parts sent, in order.
    #[serde(default)]
    parts: Vec<String>,
    /// Name of the tail object (bytes not yet in a part), when there are any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tail: Option<String>,
    generation: u64,
}

impl S3Store {
    /// Builds the client from the config (and the standard AWS variables for what it leaves
    /// out) and checks that the bucket answers, so a wrong endpoint or credential fails start-up
    /// with a message that names it.
    pub async fn open(cfg: &S3Config) -> Result<S3Store, S3OpenError> {
        if cfg.bucket.is_empty() {
            return Err(S3OpenError::Invalid {
                what: "bucket",
                reason: "must not be empty".into(),
            });
        }
        let prefix = normalize_prefix(cfg.prefix.as_deref())?;
        let part_mib = cfg.part_size_mib.unwrap_or(8);
        if !((MIN_PART >> 20) as u64..=512).contains(&part_mib) {
            return Err(S3OpenError::Invalid {
                what: "partSizeMib",
                reason: format!("{part_mib} is outside 5..=512"),
            });
        }
        let timeout = Duration::from_secs(cfg.request_timeout_seconds.unwrap_or(300).max(1));
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&cfg.bucket);
        if let Some(r) = &cfg.region {
            b = b.with_region(r);
        } else if let Ok(r) = std::env::var("AWS_REGION") {
            b = b.with_region(r);
        }
        let endpoint = cfg
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if let Some(e) = &endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        let path_style = cfg.path_style.unwrap_or(endpoint.is_some());
        b = b.with_virtual_hosted_style_request(!path_style);
        if let Some(k) = &cfg.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &cfg.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        if let Some(k) = &cfg.session_token {
            b = b.with_token(k);
        }
        let http = endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        let options = |timeout: Option<Duration>| {
            let options = ClientOptions::new()
                .with_connect_timeout(Duration::from_secs(5))
                .with_allow_http(http);
            match timeout {
                Some(t) => options.with_timeout(t),
                None => options.with_timeout_disabled(),
            }
        };
        let build = |timeout: Option<Duration>| {
            b.clone()
                .with_client_options(options(timeout))
                .with_retry(RetryConfig {
                    backoff: BackoffConfig {
                        init_backoff: Duration::from_millis(100),
                        max_backoff: Duration::from_secs(2),
                        base: 2.0,
                    },
                    max_retries: 3,
                    retry_timeout: Duration::from_secs(10),
                })
                .build()
                .map_err(|e| S3OpenError::Build {
                    bucket: cfg.bucket.clone(),
                    reason: e.to_string(),
                })
        };
        let s3 = build(Some(timeout))?;
        // Blob bodies go to clients at the clients' pace: a whole-request timeout would cut a
        // slow pull of a large layer. That client has none; its streams get an idle timeout.
        let reader = build(None)?;
        let store = S3Store {
            s3: Arc::new(s3),
            reader: Arc::new(reader),
            idle: timeout.min(Duration::from_secs(60)),
            tails: TailCache::default(),
            prefix,
            part_size: (part_mib as usize) << 20,
            redirect: cfg.redirect.unwrap_or(false),
            bucket: cfg.bucket.clone(),
            endpoint: endpoint.unwrap_or_else(|| "AWS S3".into()),
            region: b
                .get_config_value(&AmazonS3ConfigKey::Region)
                .unwrap_or_else(|| "us-east-1".into()),
            http_options: options(Some(timeout)),
        };
        store
            .check(Duration::from_secs(10))
            .await
            .map_err(|reason| S3OpenError::Unreachable {
                bucket: store.bucket.clone(),
                endpoint: store.endpoint.clone(),
                reason,
            })?;
        Ok(store)
    }

    /// Where the store lives, for logs.
    pub fn describe(&self) -> String {
        format!("s3://{}/{} at {}", self.bucket, self.prefix, self.endpoint)
    }

    /// One listing of the prefix: proves the endpoint, bucket and credentials work (a listing
    /// has an error body, unlike a HEAD, so a refusal says why).
    async fn check(&self, within: Duration) -> std::result::Result<(), String> {
        let prefix = self.path(layout::UPLOADS);
        let list = self.s3.list_with_delimiter(Some(&prefix));
        match tokio::time::timeout(within, list).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {within:?}")),
        }
    }

    fn path(&self, key: &str) -> Path {
        Path::from(format!("{}{key}", self.prefix))
    }

    /// The layout key of a listed object (its location without the prefix).
    fn key_of<'a>(&self, p: &'a Path) -> Option<&'a str> {
        p.as_ref().strip_prefix(self.prefix.as_str())
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
        match self.s3.get(&self.path(key)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(unavailable)?)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        match self.s3.head(&self.path(key)).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Metadata and attributes (a HEAD that keeps the `x-amz-meta-*` headers).
    async fn head_attrs(&self, key: &str) -> Result<Option<(ObjectMeta, Attributes)>> {
        let opts = GetOptions {
            head: true,
            ..Default::default()
        };
        match self.s3.get_opts(&self.path(key), opts).await {
            Ok(r) => Ok(Some((r.meta, r.attributes))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Writes an object whole (atomic on S3), stamped with the writer's clock.
    async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata(WRITTEN.into()),
            AttributeValue::from(now_nanos().to_string()),
        );
        let opts = PutOptions {
            attributes,
            ..Default::default()
        };
        self.s3
            .put_opts(&self.path(key), PutPayload::from_bytes(bytes), opts)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self.s3.delete(&self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Server-side copy, visible when this returns; `false` when the source is gone.
    ///
    /// Garage stamps a copy with its clock's millisecond, where a PUT or DELETE is stamped
    /// after the key's newest version. A copy onto a key deleted within the same millisecond
    /// (a touch restoring what a sweep just staged away) can therefore lose to the delete
    /// marker and stay hidden, though the copy succeeded. So look, and copy again in a later
    /// millisecond.
    async fn copy(&self, from: &str, to: &str) -> Result<bool> {
        for _ in 0..COPY_ATTEMPTS {
            match self.s3.copy(&self.path(from), &self.path(to)).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => return Ok(false),
                Err(e) => return Err(unavailable(e)),
            }
            if self.head(to).await?.is_some() {
                return Ok(true);
            }
            tracing::debug!(from, to, "copy not visible yet, copying again");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Err(StoreError::Unavailable(format!(
            "server-side copy of {from} to {to} is not visible after {COPY_ATTEMPTS} attempts"
        )))
    }

    async fn write_marker(&self, key: &str) -> Result<()> {
        let (marker, _) = marker_and_staged(key);
        self.s3
            .put(
                &self.path(&marker),
                PutPayload::from(now_nanos().to_string().into_bytes()),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn marker_time(&self, key: &str) -> Result<Option<SystemTime>> {
        let (marker, _) = marker_and_staged(key);
        Ok(self
            .get_bytes(&marker)
            .await?
            .and_then(|b| std::str::from_utf8(&b).ok()?.trim().parse::<u128>().ok())
            .map(from_nanos))
    }

    /// When an object was last written or touched, and its size; `None` when absent.
    async fn touched_at(&self, key: &str) -> Result<Option<(SystemTime, u64)>> {
        let (obj, marker) = tokio::try_join!(self.head_attrs(key), self.marker_time(key))?;
        let Some((meta, attrs)) = obj else {
            return Ok(None);
        };
        let written = attrs
            .get(&Attribute::Metadata(WRITTEN.into()))
            .and_then(|v| v.as_ref().parse::<u128>().ok())
            .map(from_nanos);
        // Last-modified is the server's clock, whole seconds in a HEAD: one second later is the
        // latest the write can have been.
        let fallback = last_modified(&meta) + Duration::from_secs(1);
        let t = match (written, marker) {
            (None, None) => fallback,
            (w, m) => w.max(m).unwrap_or(fallback),
        };
        Ok(Some((t, meta.size)))
    }

    /// The touch of the gc protocol: marker first, then the object (or its staged copy,
    /// brought back). Returns the size, `None` when the object is gone.
    async fn touch(&self, key: &str) -> Result<Option<u64>> {
        self.write_marker(key).await?;
        if let Some(m) = self.head(key).await? {
            return Ok(Some(m.size));
        }
        let (_, staged) = marker_and_staged(key);
        self.copy(&staged, key).await?;
        // Whether our copy or the sweep's own restore brought it back, it is there now; if
        // neither did, the sweep deleted it.
        Ok(self.head(key).await?.map(|m| m.size))
    }

    /// The sweep of the gc protocol (see the module docs). Returns the bytes freed.
    async fn delete_if_stale(&self, key: &str, cutoff: SystemTime) -> Result<Option<u64>> {
        let (marker, staged) = marker_and_staged(key);
        let size = match self.touched_at(key).await? {
            Some((t, _)) if t >= cutoff => return Ok(None),
            Some((_, size)) => {
                if !self.copy(key, &staged).await? {
                    return Ok(None); // deleted meanwhile
                }
                self.delete(key).await?;
                size
            }
            // Maybe an interrupted sweep left it staged: finish that.
            None => match self.head(&staged).await? {
                Some(m) => m.size,
                None => return Ok(None),
            },
        };
        if self.marker_time(key).await?.is_some_and(|t| t >= cutoff) {
            // Touched while staged: put it back unless the toucher already did.
            if self.head(key).await?.is_none() {
                self.copy(&staged, key).await?;
            }
            self.delete(&staged).await?;
            return Ok(None);
        }
        self.delete(&staged).await?;
        // A touch that wrote its marker after our second look may have copied the staged
        // object back before we deleted it: then it is in use, and not ours to report.
        if self.head(key).await?.is_some() {
            return Ok(None);
        }
        self.delete(&marker).await?;
        Ok(Some(size))
    }

    fn upload_key(id: &UploadId, name: &str) -> String {
        format!("{}/{name}", layout::upload_dir(id))
    }

    async fn load_upload(&self, id: &UploadId) -> Result<Option<UploadState>> {
        let Some(b) = self.get_bytes(&Self::upload_key(id, "state")).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| StoreError::Io(std::io::Error::other(format!("upload {id} state: {e}"))))
    }

    async fn load_owned(&self, repo: &RepoName, id: &UploadId) -> Result<UploadState> {
        match self.load_upload(id).await? {
            Some(s) if s.repo == repo.as_str() => Ok(s),
            _ => Err(StoreError::UploadUnknown),
        }
    }

    async fn save_upload(&self, id: &UploadId, s: &UploadState) -> Result<()> {
        let json = serde_json::to_vec(s).map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        self.put(&Self::upload_key(id, "state"), Bytes::from(json))
            .await
    }

    /// Aborts the multipart upload a session's state records. `false` when it records none or
    /// the bucket no longer knows it (aborted or completed already).
    async fn abort_session_multipart(&self, id: &UploadId, s: &UploadState) -> Result<bool> {
        let Some(mp) = &s.multipart else {
            return Ok(false);
        };
        let data = self.path(&Self::upload_key(id, "data"));
        match self.s3.abort_multipart(&data, mp).await {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Removes a session's objects (and its multipart upload).
    async fn discard_upload(&self, id: &UploadId, s: Option<&UploadState>) -> Result<()> {
        self.tails.remove(id);
        if let Some(s) = s
            && let Err(e) = self.abort_session_multipart(id, s).await
        {
            tracing::warn!(upload = %id, error = %e, "cannot abort multipart upload");
        }
        let dir = self.path(&layout::upload_dir(id));
        let keys: Vec<Path> = self
            .s3
            .list(Some(&dir))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(unavailable)?;
        // The state goes last: while it exists the session is listed and can be purged again.
        let state = self.path(&Self::upload_key(id, "state"));
        for k in keys.iter().filter(|k| **k != state) {
            match self.s3.delete(k).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        match self.s3.delete(&state).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn put_part(&self, id: &UploadId, mp: &str, idx: usize, bytes: Bytes) -> Result<PartId> {
        let data = self.path(&Self::upload_key(id, "data"));
        self.s3
            .put_part(&data, &mp.to_owned(), idx, PutPayload::from_bytes(bytes))
            .await
            .map_err(unavailable)
    }

    /// Streams `body` into the session's parts. On success returns the new state (not yet
    /// saved) and the tail object it replaces; on failure nothing saved has changed.
    async fn receive(
        &self,
        id: &UploadId,
        mut st: UploadState,
        mut digester: ResumableDigester,
        len: Option<u64>,
        body: ByteStream,
        created: &mut Option<String>,
    ) -> Result<(UploadState, Option<String>)> {
        let mut buf = BytesMut::with_capacity(self.part_size + (64 << 10));
        if let Some(tail) = &st.tail {
            // The replica that wrote the tail usually gets the next chunk too: skip the GET.
            let cached = self.tails.get(id, tail);
            let bytes = match cached {
                Some(b) => b,
                None => self
                    .get_bytes(&Self::upload_key(id, tail))
                    .await?
                    .ok_or_else(|| {
                        StoreError::Io(std::io::Error::other(format!(
                            "upload {id}: tail {tail} is missing"
                        )))
                    })?,
            };
            buf.extend_from_slice(&bytes);
        }
        let data = self.path(&Self::upload_key(id, "data"));
        let had_multipart = st.multipart.is_some();
        let first_part = st.parts.len();
        let streamed = self
            .stream_parts(
                &data,
                &mut st.multipart,
                first_part,
                &mut buf,
                len,
                body,
                &mut |b| digester.update(b),
            )
            .await;
        if !had_multipart {
            created.clone_from(&st.multipart);
        }
        let (received, new_parts) = streamed?;
        st.parts.extend(new_parts.into_iter().map(|p| p.content_id));
        st.size += received;
        st.generation += 1;
        st.digester = digester.save();
        let old_tail = st.tail.take();
        if !buf.is_empty() {
            let name = format!("tail-{}", st.generation);
            let tail = buf.freeze();
            self.put(&Self::upload_key(id, &name), tail.clone()).await?;
            self.tails.insert(id, &name, tail);
            st.tail = Some(name);
        }
        // The old tail is removed by the caller once the new state is saved.
        Ok((st, old_tail))
    }

    /// Puts the session's bytes together as one object: written whole at `target` when there is
    /// no multipart upload (they fit in the tail), else the multipart upload is completed at
    /// `uploads/<id>/data` and copied to `target` server-side. Without a target the bytes stay
    /// at `uploads/<id>/data`.
    async fn assemble(&self, id: &UploadId, st: &UploadState, target: Option<&str>) -> Result<()> {
        let data_key = Self::upload_key(id, "data");
        let tail = match &st.tail {
            Some(t) => self
                .get_bytes(&Self::upload_key(id, t))
                .await?
                .ok_or_else(|| io_other(format!("upload {id}: tail {t} is missing")))?,
            None => Bytes::new(),
        };
        let Some(mp) = &st.multipart else {
            return self.put(target.unwrap_or(&data_key), tail).await;
        };
        let mut parts: Vec<PartId> = st
            .parts
            .iter()
            .map(|e| PartId {
                content_id: e.clone(),
            })
            .collect();
        if !tail.is_empty() {
            parts.push(self.put_part(id, mp, parts.len(), tail).await?);
        }
        self.s3
            .complete_multipart(&self.path(&data_key), mp, parts)
            .await
            .map_err(unavailable)?;
        if let Some(dest) = target
            && !self.copy(&data_key, dest).await?
        {
            return Err(io_other(format!("upload {id}: assembled data vanished")));
        }
        Ok(())
    }

    async fn commit(&self, id: &UploadId, st: &UploadState, digest: &Digest) -> Result<u64> {
        let blob = layout::blob_key(digest);
        let dg = ResumableDigester::restore(&st.digester).map_err(|e| io_other(e.to_string()))?;
        if dg.algorithm() == digest.algorithm() || st.size == 0 {
            let computed = if st.size == 0 {
                digest.algorithm().digest_of(b"")
            } else {
                dg.finish()
            };
            if computed != *digest {
                return Err(StoreError::DigestMismatch { computed });
            }
            // Already stored (another push of the same bytes): keep that copy. The touch also
            // writes the marker that must precede the object (see the module docs).
            if let Some(size) = self.touch(&blob).await? {
                return Ok(size);
            }
            self.assemble(id, st, Some(&blob)).await?;
            return Ok(st.size);
        }
        // Hashed with the other algorithm (the client announced none): assemble, read back.
        self.assemble(id, st, None).await?;
        let data_key = Self::upload_key(id, "data");
        let mut d = digest.algorithm().digester();
        let mut stream = self
            .s3
            .get(&self.path(&data_key))
            .await
            .map_err(unavailable)?
            .into_stream();
        while let Some(chunk) = stream.next().await {
            d.update(&chunk.map_err(unavailable)?);
        }
        let computed = d.finish();
        if computed != *digest {
            return Err(StoreError::DigestMismatch { computed });
        }
        if let Some(size) = self.touch(&blob).await? {
            return Ok(size);
        }
        if !self.copy(&data_key, &blob).await? {
            return Err(io_other(format!("upload {id}: assembled data vanished")));
        }
        Ok(st.size)
    }

    /// Streams `body` into parts of `part_size` bytes of the multipart upload at `path`,
    /// after the bytes already in `buf` and the `first_part` parts already sent. The upload is
    /// created at the first full part when `mp` names none. Every byte is fed to `hash`, at
    /// most `PARTS_IN_FLIGHT` parts upload while more arrives, and what does not fill a part
    /// is left in `buf`. Returns the bytes received and the parts sent.
    #[allow(clippy::too_many_arguments)]
    async fn stream_parts(
        &self,
        path: &Path,
        mp: &mut Option<String>,
        first_part: usize,
        buf: &mut BytesMut,
        len: Option<u64>,
        mut body: ByteStream,
        hash: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<(u64, Vec<PartId>)> {
        let mut parts: Vec<PartId> = Vec::new();
        let mut in_flight = FuturesOrdered::new();
        let mut received: u64 = 0;
        loop {
            if in_flight.len() >= PARTS_IN_FLIGHT {
                let done: Result<PartId> = in_flight.next().await.unwrap_or_else(|| unreachable!());
                parts.push(done?);
                continue;
            }
            let Some(chunk) = body.next().await else {
                break;
            };
            let chunk = chunk.map_err(StoreError::Body)?;
            received += chunk.len() as u64;
            if let Some(l) = len
                && received > l
            {
                return Err(StoreError::LengthMismatch {
                    expected: l,
                    got: received,
                });
            }
            hash(&chunk);
            buf.extend_from_slice(&chunk);
            while buf.len() >= self.part_size {
                let part = buf.split_to(self.part_size).freeze();
                let id = match mp {
                    Some(id) => id.clone(),
                    None => {
                        let id = self.s3.create_multipart(path).await.map_err(unavailable)?;
                        *mp = Some(id.clone());
                        id
                    }
                };
                let idx = first_part + parts.len() + in_flight.len();
                let (s3, path) = (self.s3.clone(), path.clone());
                in_flight.push_back(async move {
                    s3.put_part(&path, &id, idx, PutPayload::from_bytes(part))
                        .await
                        .map_err(unavailable)
                });
                if buf.capacity() < self.part_size {
                    let rest = buf.split();
                    *buf = BytesMut::with_capacity(self.part_size + (64 << 10));
                    buf.extend_from_slice(&rest);
                }
            }
        }
        while let Some(done) = in_flight.next().await {
            parts.push(done?);
        }
        if let Some(l) = len
            && received != l
        {
            return Err(StoreError::LengthMismatch {
                expected: l,
                got: received,
            });
        }
        Ok((received, parts))
    }

    /// A whole blob whose digest is known up front (a monolithic upload): streamed straight
    /// into a multipart upload at its final key (or one PUT when it fits in a part), hashed
    /// on the way, and completed only when the digest matches, which is when it becomes
    /// visible. No session state, no copy. A body that fails leaves nothing behind.
    async fn receive_direct(
        &self,
        digest: &Digest,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        let key = layout::blob_key(digest);
        let path = self.path(&key);
        let mut hasher = digest.algorithm().digester();
        let mut buf = BytesMut::with_capacity(self.part_size + (64 << 10));
        let mut mp: Option<String> = None;
        let result = self
            .stream_parts(&path, &mut mp, 0, &mut buf, len, body, &mut |b| {
                hasher.update(b)
            })
            .await;
        let target = &path;
        let abort = move |mp: Option<String>| async move {
            if let Some(id) = mp
                && let Err(e) = self.s3.abort_multipart(target, &id).await
            {
                tracing::warn!(error = %e, "cannot abort a multipart upload");
            }
        };
        let (received, mut parts) = match result {
            Ok(r) => r,
            Err(e) => {
                abort(mp).await;
                return Err(e);
            }
        };
        let computed = hasher.finish();
        if computed != *digest {
            abort(mp).await;
            return Err(StoreError::DigestMismatch { computed });
        }
        // Already stored: keep that copy (and touch it). The touch also writes the marker that
        // must precede the object's appearance (see the module docs).
        if let Some(size) = self.touch(&key).await? {
            abort(mp).await;
            return Ok(size);
        }
        match mp {
            None => self.put(&key, buf.freeze()).await?,
            Some(id) => {
                let last = buf.freeze();
                if !last.is_empty() {
                    let idx = parts.len();
                    parts.push(
                        self.s3
                            .put_part(&path, &id, idx, PutPayload::from_bytes(last))
                            .await
                            .map_err(unavailable)?,
                    );
                }
                if let Err(e) = self.s3.complete_multipart(&path, &id, parts).await {
                    abort(Some(id)).await;
                    return Err(unavailable(e));
                }
            }
        }
        Ok(received)
    }

    /// Appends a chunk to a loaded session and saves its new state, which it returns.
    async fn append(
        &self,
        id: &UploadId,
        st: UploadState,
        offset: Option<u64>,
        len: Option<u64>,
        hint: Option<Algorithm>,
        body: ByteStream,
    ) -> Result<UploadState> {
        if let Some(o) = offset
            && o != st.size
        {
            return Err(StoreError::OffsetMismatch {
                expected: st.size,
                got: o,
            });
        }
        let mut dg =
            ResumableDigester::restore(&st.digester).map_err(|e| io_other(e.to_string()))?;
        if st.size == 0
            && let Some(h) = hint
            && h != dg.algorithm()
        {
            dg = ResumableDigester::new(h);
        }
        let mut created = None;
        match self.receive(id, st, dg, len, body, &mut created).await {
            Ok((st, old_tail)) => {
                self.save_upload(id, &st).await?;
                if let Some(t) = old_tail
                    && let Err(e) = self.delete(&Self::upload_key(id, &t)).await
                {
                    tracing::debug!(upload = %id, error = %e, "cannot remove an old upload tail");
                }
                Ok(st)
            }
            Err(e) => {
                if let Some(mp) = created {
                    let data = self.path(&Self::upload_key(id, "data"));
                    let _ = self.s3.abort_multipart(&data, &mp).await;
                }
                Err(e)
            }
        }
    }

    /// Commits a loaded session; the session is gone afterwards whatever the outcome.
    async fn finish(&self, id: &UploadId, st: &UploadState, digest: &Digest) -> Result<u64> {
        let result = self.commit(id, st, digest).await;
        if let Err(e) = self.discard_upload(id, Some(st)).await {
            tracing::warn!(upload = %id, error = %e, "cannot remove a finished upload's objects");
        }
        result
    }

    fn blob_info_from_listing(&self, metas: Vec<ObjectMeta>) -> Vec<BlobInfo> {
        #[derive(Default)]
        struct Seen {
            object: Option<(u64, SystemTime)>,
            staged: Option<(u64, SystemTime)>,
            marker: Option<SystemTime>,
        }
        let mut seen: BTreeMap<Digest, Seen> = BTreeMap::new();
        for m in metas {
            let Some(key) = self.key_of(&m.location) else {
                continue;
            };
            // blobs/<alg>/<hh>/<name>
            let mut parts = key.split('/');
            let (Some(_), Some(alg), Some(_), Some(name), None) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                continue;
            };
            let Ok(alg) = Algorithm::parse(alg) else {
                continue;
            };
            let (kind, hex) = if let Some(h) = name.strip_prefix(".gc-") {
                (1, h)
            } else if let Some(h) = name.strip_prefix(".t-") {
                (2, h)
            } else {
                (0, name)
            };
            let Ok(d) = Digest::from_parts(alg, hex) else {
                continue;
            };
            let e = seen.entry(d).or_default();
            let t = last_modified(&m);
            match kind {
                0 => e.object = Some((m.size, t)),
                1 => e.staged = Some((m.size, t)),
                _ => e.marker = Some(t),
            }
        }
        seen.into_iter()
            .filter_map(|(digest, s)| {
                let (size, t, staged) = match (s.object, s.staged) {
                    (Some((size, t)), _) => (size, t, false),
                    (None, Some((size, t))) => (size, t, true),
                    (None, None) => return None, // a marker alone: the blob is gone
                };
                Some(BlobInfo {
                    digest,
                    size,
                    // Listings carry milliseconds. This is the server's clock, a pre-filter
                    // only: the sweep re-checks each candidate against the precise marker.
                    modified: t.max(s.marker.unwrap_or(t)),
                    staged,
                })
            })
            .collect()
    }
}

// `Store::purge`: what it empties, and how.
impl S3Store {
    /// With a prefix, all of it (the prefix is the registry's); without one, only the layout's
    /// top-level directories, since the bucket may hold other things. Each scope is a key
    /// prefix ending in `/`.
    fn purge_scopes(&self) -> Vec<String> {
        if self.prefix.is_empty() {
            layout::TOP_LEVEL.iter().map(|d| format!("{d}/")).collect()
        } else {
            vec![self.prefix.clone()]
        }
    }

    /// Aborts the multipart uploads that upload sessions recorded in their state (before the
    /// states go, which are the only record of them). Returns the ids of those that were (or,
    /// on a dry run, would be) aborted.
    async fn abort_session_multiparts(&self, dry_run: bool) -> Result<BTreeSet<String>> {
        let mut aborted = BTreeSet::new();
        for session in self.upload_list().await? {
            let st = match self.load_upload(&session.id).await {
                Ok(Some(st)) => st,
                Ok(None) => continue,
                // A torn state cannot say which upload it had; its objects still go.
                Err(StoreError::Io(e)) => {
                    tracing::warn!(upload = %session.id, error = %e, "unreadable upload state");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(mp) = st.multipart.clone() else {
                continue;
            };
            if dry_run || self.abort_session_multipart(&session.id, &st).await? {
                self.tails.remove(&session.id);
                aborted.insert(mp);
            }
        }
        Ok(aborted)
    }

    /// Aborts the multipart uploads in the purge scopes that no session recorded: a monolithic
    /// upload (streamed straight to its blob key) or a session's first part whose process died
    /// before it could abort or record them. Their parts are not objects, so they would
    /// otherwise stay in the bucket, billed and unseen. `skip` holds ids already counted.
    async fn abort_unrecorded_multiparts(
        &self,
        dry_run: bool,
        skip: &BTreeSet<String>,
    ) -> Result<u64> {
        let mut aborted = 0;
        for prefix in self.purge_scopes() {
            let Some(uploads) = self.list_multipart_uploads(&prefix).await? else {
                return Ok(aborted);
            };
            for (key, id) in uploads {
                if skip.contains(&id) || !key.starts_with(&prefix) {
                    continue;
                }
                let Ok(path) = Path::parse(&key) else {
                    tracing::warn!(key, "cannot abort a multipart upload at this key");
                    continue;
                };
                if !dry_run {
                    match self.s3.abort_multipart(&path, &id).await {
                        Ok(()) => {}
                        Err(e) if is_not_found(&e) => continue,
                        Err(e) => return Err(unavailable(e)),
                    }
                }
                tracing::info!(
                    key,
                    dry_run,
                    "aborting a multipart upload that no session recorded"
                );
                aborted += 1;
            }
        }
        Ok(aborted)
    }

    /// The multipart uploads under `prefix` (key, upload id) by S3's ListMultipartUploads,
    /// which object_store does not offer, signed with its authorizer. `None` (and a warning)
    /// when the bucket refuses the call: not every S3-compatible store has it, and credentials
    /// may lack the right; such leftovers are then for the bucket's lifecycle rules.
    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Option<Vec<(String, String)>>> {
        use axum::http::Method;
        let credential = self
            .s3
            .credentials()
            .get_credential()
            .await
            .map_err(unavailable)?;
        // The bucket's URL as object_store builds it (path-style or virtual-hosted): a
        // presigned URL of a key, less the key and the signature.
        let mut base = self
            .s3
            .signed_url(Method::GET, &Path::from("k"), Duration::from_secs(60))
            .await
            .map_err(unavailable)?;
        base.set_query(None);
        let bucket_path = base.path().strip_suffix("/k").unwrap_or("").to_owned();
        base.set_path(&bucket_path);
        let http = ReqwestConnector::default()
            .connect(&self.http_options)
            .map_err(unavailable)?;
        let failed = |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!(
                "object storage: listing multipart uploads in bucket {}: {e}",
                self.bucket
            ))
        };
        let mut uploads = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut url = base.clone();
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("uploads", "").append_pair("prefix", prefix);
                if let Some((key, id)) = &markers {
                    q.append_pair("key-marker", key)
                        .append_pair("upload-id-marker", id);
                }
            }
            let mut request = axum::http::Request::builder()
                .method(Method::GET)
                .uri(url.as_str())
                .body(HttpRequestBody::empty())
                .map_err(|e| failed(&e))?;
            AwsAuthorizer::new(&credential, "s3", &self.region).authorize(&mut request, None);
            let response = http.execute(request).await.map_err(|e| failed(&e))?;
            let status = response.status();
            let body = response.into_body().bytes().await.map_err(|e| failed(&e))?;
            let text = String::from_utf8_lossy(&body);
            if !status.is_success() {
                if status.is_server_error() && status != axum::http::StatusCode::NOT_IMPLEMENTED {
                    return Err(failed(&status));
                }
                tracing::warn!(
                    bucket = %self.bucket,
                    %status,
                    answer = %text.chars().take(300).collect::<String>(),
                    "the bucket does not list multipart uploads: any that no upload session \
                     recorded stay (an AbortIncompleteMultipartUpload lifecycle rule removes them)"
                );
                return Ok(None);
            }
            let (page, next) = parse_multipart_listing(&text);
            uploads.extend(page);
            match next {
                Some(next) => markers = Some(next),
                None => return Ok(Some(uploads)),
            }
        }
    }

    /// One pass over the purge scopes: lists every object and deletes it in batches (S3's
    /// DeleteObjects, up to 1,000 keys a request) while the listing goes on.
    async fn purge_objects(&self, dry_run: bool) -> Result<PurgeReport> {
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        let mut report = PurgeReport::default();
        for scope in self.purge_scopes() {
            let scope = Path::from(scope.trim_end_matches('/'));
            let listed_bytes = AtomicU64::new(0);
            let listing = self.s3.list(Some(&scope)).map_ok(|m| {
                listed_bytes.fetch_add(m.size, Relaxed);
                m.location
            });
            let mut deleted = 0u64;
            if dry_run {
                let mut listing = listing.boxed();
                while let Some(r) = listing.next().await {
                    r.map_err(unavailable)?;
                    deleted += 1;
                }
            } else {
                let mut results = self.s3.delete_stream(listing.boxed());
                while let Some(r) = results.next().await {
                    match r {
                        Ok(_) => deleted += 1,
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => return Err(unavailable(e)),
                    }
                    if deleted > 0 && deleted.is_multiple_of(10_000) {
                        tracing::info!(scope = %scope, deleted, "purging");
                    }
                }
            }
            let bytes = listed_bytes.load(Relaxed);
            tracing::info!(scope = %scope, objects = deleted, bytes, dry_run, "purged");
            report.objects_deleted += deleted;
            report.bytes_freed += bytes;
        }
        Ok(report)
    }
}

/// A ListMultipartUploads answer: its uploads (key, upload id) and, when truncated, the
/// markers (key, upload id) the next page starts after.
type MultipartPage = (Vec<(String, String)>, Option<(String, String)>);

fn parse_multipart_listing(xml: &str) -> MultipartPage {
    let uploads = xml
        .split("<Upload>")
        .skip(1)
        .filter_map(|u| Some((xml_value(u, "Key")?, xml_value(u, "UploadId")?)))
        .collect();
    let next = match (
        xml_value(xml, "IsTruncated").as_deref(),
        xml_value(xml, "NextKeyMarker"),
        xml_value(xml, "NextUploadIdMarker"),
    ) {
        (Some("true"), Some(key), Some(id)) => Some((key, id)),
        _ => None,
    };
    (uploads, next)
}

/// The text of the first `<tag>` element in `xml`, unescaped: enough for S3's flat answers.
fn xml_value(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(
        xml[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

fn io_other(msg: String) -> StoreError {
    StoreError::Io(std::io::Error::other(msg))
}

/// A blob being read: the first GET is already answered; a range needs another.
struct S3Source {
    s3: Arc<AmazonS3>,
    path: Path,
    size: u64,
    idle: Duration,
    first: Option<object_store::GetResult>,
}

/// Fails a stream that waits longer than `idle` for its next item (time spent waiting for a
/// slow client does not count: the stream is only polled when the client takes more).
/// (Joining the client's small pieces into 256 KiB writes was measured: pulls got slower and
/// cost more CPU, so pieces pass through as they come.)
fn with_idle_timeout(
    s: futures::stream::BoxStream<'static, Result<Bytes, object_store::Error>>,
    idle: Duration,
) -> ByteStream {
    futures::stream::unfold(Some(s), move |state| async move {
        let mut s = state?;
        match tokio::time::timeout(idle, s.next()).await {
            Ok(Some(Ok(b))) => Some((Ok(b), Some(s))),
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("object storage sent nothing for {idle:?}"),
                )),
                None,
            )),
        }
    })
    .boxed()
}

impl BlobSource for S3Source {
    fn stream(self: Box<Self>, start: u64, end: u64) -> ByteStream {
        let S3Source {
            s3,
            path,
            size,
            idle,
            first,
        } = *self;
        if size == 0 {
            return futures::stream::empty().boxed();
        }
        if let Some(r) = first
            && start == 0
            && end + 1 >= size
        {
            return with_idle_timeout(r.into_stream(), idle);
        }
        let range = GetRange::Bounded(start..end.saturating_add(1).min(size));
        let ranged = futures::stream::once(async move {
            let opts = GetOptions {
                range: Some(range),
                ..Default::default()
            };
            s3.get_opts(&path, opts).await.map(|r| r.into_stream())
        })
        .try_flatten()
        .boxed();
        with_idle_timeout(ranged, idle)
    }
}

#[async_trait]
impl Store for S3Store {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.head(&layout::blob_key(digest)).await?.map(|m| m.size))
    }

    async fn blob_open(&self, digest: &Digest) -> Result<Option<BlobHandle>> {
        let path = self.path(&layout::blob_key(digest));
        let first = tokio::time::timeout(self.idle, self.reader.get(&path)).await;
        let first = first.map_err(|_| {
            StoreError::Unavailable(format!(
                "object storage: no answer for {digest} within {:?}",
                self.idle
            ))
        })?;
        match first {
            Ok(r) => {
                let size = r.meta.size;
                Ok(Some(BlobHandle::new(
                    size,
                    Box::new(S3Source {
                        s3: self.reader.clone(),
                        path,
                        size,
                        idle: self.idle,
                        first: Some(r),
                    }),
                )))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn blob_read(&self, digest: &Digest) -> Result<Option<Bytes>> {
        self.get_bytes(&layout::blob_key(digest)).await
    }

    async fn blob_put(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        let key = layout::blob_key(digest);
        self.write_marker(&key).await?;
        self.put(&key, bytes).await
    }

    async fn blob_touch(&self, digest: &Digest) -> Result<Option<u64>> {
        self.touch(&layout::blob_key(digest)).await
    }

    async fn blob_delete_if_stale(
        &self,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<Option<u64>> {
        self.delete_if_stale(&layout::blob_key(digest), cutoff)
            .await
    }

    async fn blob_list(&self) -> Result<Vec<BlobInfo>> {
        let metas: Vec<ObjectMeta> = self
            .s3
            .list(Some(&self.path(layout::BLOBS)))
            .try_collect()
            .await
            .map_err(unavailable)?;
        Ok(self.blob_info_from_listing(metas))
    }

    async fn blob_url(&self, digest: &Digest) -> Result<Option<String>> {
        if !self.redirect || self.blob_size(digest).await?.is_none() {
            return Ok(None);
        }
        let path = self.path(&layout::blob_key(digest));
        let url = self
            .s3
            .signed_url(axum::http::Method::GET, &path, PRESIGN_FOR)
            .await
            .map_err(unavailable)?;
        Ok(Some(url.to_string()))
    }

    async fn upload_create(&self, repo: &RepoName) -> Result<UploadId> {
        let id = UploadId::random();
        let st = UploadState {
            repo: repo.as_str().to_owned(),
            size: 0,
            digester: ResumableDigester::new(Algorithm::Sha256).save(),
            multipart: None,
            parts: Vec::new(),
            tail: None,
            generation: 0,
        };
        self.save_upload(&id, &st).await?;
        Ok(id)
    }

    async fn upload_size(&self, repo: &RepoName, id: &UploadId) -> Result<u64> {
        Ok(self.load_owned(repo, id).await?.size)
    }

    async fn upload_append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        offset: Option<u64>,
        len: Option<u64>,
        hint: Option<Algorithm>,
        body: ByteStream,
    ) -> Result<u64> {
        let st = self.load_owned(repo, id).await?;
        Ok(self.append(id, st, offset, len, hint, body).await?.size)
    }

    async fn upload_commit(&self, repo: &RepoName, id: &UploadId, digest: &Digest) -> Result<u64> {
        let st = self.load_owned(repo, id).await?;
        self.finish(id, &st, digest).await
    }

    async fn upload_append_commit(
        &self,
        repo: &RepoName,
        id: &UploadId,
        offset: Option<u64>,
        len: Option<u64>,
        body: ByteStream,
        digest: &Digest,
    ) -> Result<u64> {
        let st = self.load_owned(repo, id).await?;
        if st.size != 0 || !matches!(offset, None | Some(0)) {
            let hint = Some(digest.algorithm());
            let st = self.append(id, st, offset, len, hint, body).await?;
            return self.finish(id, &st, digest).await;
        }
        // The whole blob in one request: stream it straight to its key. A failed body leaves
        // the (empty) session as it was; any other outcome ends it.
        let result = self.receive_direct(digest, len, body).await;
        if !matches!(result, Err(StoreError::Body(_)))
            && let Err(e) = self.discard_upload(id, Some(&st)).await
        {
            tracing::warn!(upload = %id, error = %e, "cannot remove a finished upload's objects");
        }
        result
    }

    async fn blob_receive(
        &self,
        _repo: &RepoName,
        digest: &Digest,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        self.receive_direct(digest, len, body).await
    }

    async fn upload_cancel(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        let st = self.load_owned(repo, id).await?;
        self.discard_upload(id, Some(&st)).await
    }

    async fn upload_delete(&self, id: &UploadId) -> Result<()> {
        let st = self.load_upload(id).await.ok().flatten();
        self.discard_upload(id, st.as_ref()).await
    }

    async fn upload_list(&self) -> Result<Vec<UploadInfo>> {
        let metas: Vec<ObjectMeta> = self
            .s3
            .list(Some(&self.path(layout::UPLOADS)))
            .try_collect()
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        for m in metas {
            let Some(key) = self.key_of(&m.location) else {
                continue;
            };
            let mut parts = key.split('/');
            if let (Some(_), Some(id), Some("state"), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
                && let Ok(id) = id.parse::<UploadId>()
            {
                out.push(UploadInfo {
                    id,
                    modified: last_modified(&m) + Duration::from_secs(1),
                });
            }
        }
        Ok(out)
    }

    async fn meta_put(&self, key: &MetaKey, value: &[u8]) -> Result<()> {
        self.write_marker(key.as_str()).await?;
        self.put(key.as_str(), Bytes::copy_from_slice(value)).await
    }

    async fn meta_put_volatile(&self, key: &MetaKey, value: &[u8]) -> Result<()> {
        self.put(key.as_str(), Bytes::copy_from_slice(value)).await
    }

    async fn meta_get(&self, key: &MetaKey) -> Result<Option<Bytes>> {
        self.get_bytes(key.as_str()).await
    }

    async fn meta_exists(&self, key: &MetaKey) -> Result<bool> {
        Ok(self.head(key.as_str()).await?.is_some())
    }

    async fn meta_modified(&self, key: &MetaKey) -> Result<Option<SystemTime>> {
        Ok(self.touched_at(key.as_str()).await?.map(|(t, _)| t))
    }

    async fn meta_touch(&self, key: &MetaKey) -> Result<bool> {
        Ok(self.touch(key.as_str()).await?.is_some())
    }

    async fn meta_delete_if_stale(&self, key: &MetaKey, cutoff: SystemTime) -> Result<bool> {
        Ok(self.delete_if_stale(key.as_str(), cutoff).await?.is_some())
    }

    async fn meta_delete(&self, key: &MetaKey) -> Result<bool> {
        let existed = self.head(key.as_str()).await?.is_some();
        let (marker, _) = marker_and_staged(key.as_str());
        self.delete(key.as_str()).await?;
        self.delete(&marker).await?;
        Ok(existed)
    }

    async fn meta_list(&self, dir: &MetaDir) -> Result<Vec<String>> {
        let listing = self
            .s3
            .list_with_delimiter(Some(&self.path(dir.as_str())))
            .await
            .map_err(unavailable)?;
        let names: BTreeSet<String> = listing
            .objects
            .iter()
            .map(|m| &m.location)
            .chain(listing.common_prefixes.iter())
            .filter_map(|p| p.filename().map(str::to_owned))
            .filter(|n| !n.starts_with('.'))
            .collect();
        Ok(names.into_iter().collect())
    }

    async fn repositories(&self) -> Result<Vec<RepoName>> {
        let mut names = BTreeSet::new();
        let mut list = self.s3.list(Some(&self.path(layout::REPOSITORIES)));
        while let Some(m) = list.next().await {
            let m = m.map_err(unavailable)?;
            let Some(key) = self.key_of(&m.location) else {
                continue;
            };
            let segs: Vec<&str> = key.split('/').skip(1).collect();
            if let Some(i) = segs.iter().position(|s| s.starts_with('_'))
                && (segs[i] == layout::REPO_MANIFESTS || segs[i] == layout::REPO_BLOBS)
                && i > 0
                && let Ok(r) = segs[..i].join("/").parse::<RepoName>()
            {
                names.insert(r);
            }
        }
        Ok(names.into_iter().collect())
    }

    async fn repository_exists(&self, repo: &RepoName) -> Result<bool> {
        let listing = self
            .s3
            .list_with_delimiter(Some(&self.path(MetaDir::repo(repo).as_str())))
            .await
            .map_err(unavailable)?;
        Ok(listing.common_prefixes.iter().any(|p| {
            matches!(p.filename(), Some(n) if n == layout::REPO_MANIFESTS || n == layout::REPO_BLOBS)
        }))
    }

    async fn ready(&self) -> Result<()> {
        self.check(READY_TIMEOUT).await.map_err(|reason| {
            StoreError::Unavailable(format!("object storage: {}: {reason}", self.describe()))
        })
    }

    async fn purge(&self, dry_run: bool) -> Result<PurgeReport> {
        let mut total = PurgeReport::default();
        // Each round ends with nothing left unless something wrote meanwhile: the next round
        // (normally one empty listing) checks, and a store that keeps filling is an error.
        for round in 1..=PURGE_ROUNDS {
            let recorded = self.abort_session_multiparts(dry_run).await?;
            total.multipart_aborted += recorded.len() as u64;
            total.multipart_aborted += self.abort_unrecorded_multiparts(dry_run, &recorded).await?;
            let report = self.purge_objects(dry_run).await?;
            total.objects_deleted += report.objects_deleted;
            total.bytes_freed += report.bytes_freed;
            if dry_run || report.objects_deleted == 0 {
                return Ok(total);
            }
            tracing::info!(
                round,
                objects = report.objects_deleted,
                "purge round done; checking"
            );
        }
        Err(io_other(format!(
            "{}: objects kept appearing through {PURGE_ROUNDS} purge rounds: is a registry still \
             running on this storage? stop it and purge again",
            self.describe()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_multipart_listing() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>p/uploads/2/data</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>
  <Prefix>p/</Prefix><MaxUploads>2</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>p/blobs/a&amp;b</Key><UploadId>u1</UploadId><Initiator><ID>x</ID></Initiator></Upload>
  <Upload><Key>p/uploads/2/data</Key><UploadId>u2</UploadId></Upload>
</ListMultipartUploadsResult>"#;
        let (uploads, next) = parse_multipart_listing(xml);
        assert_eq!(
            uploads,
            vec![
                ("p/blobs/a&b".to_owned(), "u1".to_owned()),
                ("p/uploads/2/data".to_owned(), "u2".to_owned())
            ]
        );
        assert_eq!(next, Some(("p/uploads/2/data".into(), "u2".into())));
        let last = xml.replace("<IsTruncated>true", "<IsTruncated>false");
        assert_eq!(parse_multipart_listing(&last).1, None);
        assert!(
            parse_multipart_listing("<ListMultipartUploadsResult/>")
                .0
                .is_empty()
        );
    }
}
