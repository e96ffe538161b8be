//! Content-addressed storage behind one trait: the only way the registry touches bytes.
//!
//! Blobs (layers, configs and manifest bytes alike) are stored once per registry by digest.
//! Repositories hold small metadata documents (links, tags, referrers) whose keys come from
//! [`layout`]. Upload sessions live in the store too, so an upload survives a restart and (on a
//! shared backend) can continue on another replica. Every write that makes something visible is
//! atomic: readers see the old state or the new one, never a torn blob.

pub mod fs;
pub mod layout;
pub mod s3;

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::oci::{Algorithm, Digest, RepoName};
pub use layout::{EntryId, MetaDir, MetaKey, QueueName, UploadId};

/// A stream of body bytes flowing into or out of the store.
pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("upload session not found")]
    UploadUnknown,
    #[error("chunk starts at offset {got}, but the upload holds {expected} bytes")]
    OffsetMismatch { expected: u64, got: u64 },
    #[error("chunk length {got} does not match the declared length {expected}")]
    LengthMismatch { expected: u64, got: u64 },
    #[error("content digest is {computed}, not the digest given")]
    DigestMismatch { computed: Digest },
    #[error("request body ended early: {0}")]
    Body(std::io::Error),
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The backend cannot be reached or refused the request (an object store that is down,
    /// timing out or denying access): the request may succeed later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An open blob: its size is known, and its bytes (or a range of them) can be streamed.
pub struct BlobHandle {
    pub size: u64,
    source: Box<dyn BlobSource>,
}

impl BlobHandle {
    pub fn new(size: u64, source: Box<dyn BlobSource>) -> Self {
        BlobHandle { size, source }
    }

    /// Streams bytes `start..=end` (inclusive, already checked against `size`).
    pub fn stream(self, start: u64, end: u64) -> ByteStream {
        self.source.stream(start, end)
    }

    /// Streams every byte (nothing for an empty blob, which has no inclusive range).
    pub fn stream_all(self) -> ByteStream {
        match self.size {
            0 => Box::pin(futures::stream::empty()),
            n => self.stream(0, n - 1),
        }
    }
}

pub trait BlobSource: Send {
    fn stream(self: Box<Self>, start: u64, end: u64) -> ByteStream;
}

/// An upload session's bytes, readable while another request is still writing them.
#[async_trait]
pub trait UploadReader: Send + Sync {
    /// Up to `max` of the bytes written so far, from `pos`; empty when there are none yet.
    async fn read_at(&self, pos: u64, max: usize) -> Result<Bytes>;
}

/// A blob as listed for garbage collection.
#[derive(Clone, Debug)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    pub modified: SystemTime,
    /// Left staged for deletion by a garbage collection that was interrupted.
    pub staged: bool,
}

/// An upload session as listed for garbage collection.
#[derive(Clone, Debug)]
pub struct UploadInfo {
    pub id: UploadId,
    pub modified: SystemTime,
}

/// What [`Store::purge`] deleted, or on a dry run would delete. Serialized as the one-line
/// report of `berth purge` (and its Kubernetes termination message).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PurgeReport {
    /// Files (filesystem) or objects (S3) removed.
    pub objects_deleted: u64,
    /// Their sizes added up, as listed.
    pub bytes_freed: u64,
    /// S3 multipart uploads aborted (their parts are not objects, so not counted above); logged,
    /// not part of the JSON report.
    #[serde(skip)]
    pub multipart_aborted: u64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The size of a blob, or `None` when it is not stored.
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>>;
    /// Opens a blob for streaming, or `None` when it is not stored.
    async fn blob_open(&self, digest: &Digest) -> Result<Option<BlobHandle>>;
    /// Reads a small blob (a manifest) whole; `None` when not stored.
    async fn blob_read(&self, digest: &Digest) -> Result<Option<Bytes>>;
    /// Stores bytes whose digest the caller has computed; atomic and idempotent.
    async fn blob_put(&self, digest: &Digest, bytes: Bytes) -> Result<()>;
    /// Marks a blob as in use now (its "last touched" time, which garbage collection's grace
    /// period is measured from), bringing it back if a collection had staged it for deletion.
    /// Returns its size, or `None` when it is gone.
    async fn blob_touch(&self, digest: &Digest) -> Result<Option<u64>>;
    /// Deletes a blob unless it was touched at or after `cutoff`, safely against concurrent
    /// touches (see `crate::gc`). Returns the bytes freed, `None` when it was kept or absent.
    async fn blob_delete_if_stale(
        &self,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<Option<u64>>;
    /// A URL the client may download the blob from directly (a presigned object-store URL),
    /// when the backend is set up to redirect; `None` to serve the bytes ourselves.
    async fn blob_url(&self, _digest: &Digest) -> Result<Option<String>> {
        Ok(None)
    }
    /// Every stored blob, including ones an interrupted collection left staged.
    async fn blob_list(&self) -> Result<Vec<BlobInfo>>;

    /// Starts an upload session owned by `repo`.
    async fn upload_create(&self, repo: &RepoName) -> Result<UploadId>;
    /// Bytes received so far; `UploadUnknown` when the session does not exist for `repo`.
    async fn upload_size(&self, repo: &RepoName, id: &UploadId) -> Result<u64>;
    /// Appends a chunk. `offset`, when given, must equal the bytes received so far, and `len`,
    /// when given, the chunk's length. A chunk is all-or-nothing: if the body fails midway the
    /// session is left as it was. `hint` is the digest algorithm the client will finish with,
    /// when known up front. Returns the new size.
    async fn upload_append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        offset: Option<u64>,
        len: Option<u64>,
        hint: Option<Algorithm>,
        body: ByteStream,
    ) -> Result<u64>;
    /// Verifies the session's bytes against `digest` and makes them the blob `digest`
    /// (atomically); the session is gone afterwards whatever the outcome. Returns the size;
    /// `UploadUnknown` when the session does not exist for `repo`.
    async fn upload_commit(&self, repo: &RepoName, id: &UploadId, digest: &Digest) -> Result<u64>;
    /// Appends a final chunk and commits, as a monolithic `PUT` does. `OffsetMismatch` and
    /// `LengthMismatch` and a failing body leave the session as it was; after any other outcome
    /// the session is gone. Backends may do both in one pass.
    async fn upload_append_commit(
        &self,
        repo: &RepoName,
        id: &UploadId,
        offset: Option<u64>,
        len: Option<u64>,
        body: ByteStream,
        digest: &Digest,
    ) -> Result<u64> {
        self.upload_append(repo, id, offset, len, Some(digest.algorithm()), body)
            .await?;
        self.upload_commit(repo, id, digest).await
    }
    /// Receives a whole blob whose digest is known up front (`POST ?digest=`): stored only if
    /// the bytes match, nothing left behind otherwise.
    async fn blob_receive(
        &self,
        repo: &RepoName,
        digest: &Digest,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        let id = self.upload_create(repo).await?;
        let result = self
            .upload_append_commit(repo, &id, Some(0), len, body, digest)
            .await;
        if result.is_err() {
            let _ = self.upload_cancel(repo, &id).await;
        }
        result
    }
    /// Opens a session's bytes for reading while another request appends them, so that late
    /// joiners of a pull-through fill get what is written, then the rest. The reader keeps
    /// working after the session is committed. `None` when the backend cannot: an S3
    /// multipart upload's parts cannot be read before it completes.
    async fn upload_open(
        &self,
        _repo: &RepoName,
        _id: &UploadId,
    ) -> Result<Option<std::sync::Arc<dyn UploadReader>>> {
        Ok(None)
    }
    /// Abandons a session.
    async fn upload_cancel(&self, repo: &RepoName, id: &UploadId) -> Result<()>;
    /// Removes a session whatever its repository (garbage collection of abandoned uploads).
    async fn upload_delete(&self, id: &UploadId) -> Result<()>;
    /// Every upload session with its last activity.
    async fn upload_list(&self) -> Result<Vec<UploadInfo>>;
    /// Removes (or on a dry run counts) temporary files of writes that were interrupted, last
    /// modified before `cutoff`; returns how many. Object stores write atomically and leave
    /// none.
    async fn sweep_temporaries(&self, _cutoff: SystemTime, _dry_run: bool) -> Result<usize> {
        Ok(0)
    }

    /// Writes a metadata document atomically (replacing any previous value).
    async fn meta_put(&self, key: &MetaKey, value: &[u8]) -> Result<()>;
    /// [`Store::meta_put`] for a document whose loss in a crash is harmless (a fill lease): as
    /// atomic, but without waiting for the disk, and outside gc's touch protocol.
    async fn meta_put_volatile(&self, key: &MetaKey, value: &[u8]) -> Result<()> {
        self.meta_put(key, value).await
    }
    /// Reads a metadata document.
    async fn meta_get(&self, key: &MetaKey) -> Result<Option<Bytes>>;
    /// Whether a metadata document exists.
    async fn meta_exists(&self, key: &MetaKey) -> Result<bool>;
    /// When a metadata document was last written or touched.
    async fn meta_modified(&self, key: &MetaKey) -> Result<Option<SystemTime>>;
    /// Marks a document as in use now, like [`Store::blob_touch`]; `false` when it is gone.
    async fn meta_touch(&self, key: &MetaKey) -> Result<bool>;
    /// Deletes a document unless it was written or touched at or after `cutoff`, with the
    /// same protocol as [`Store::blob_delete_if_stale`]. Returns whether it was deleted.
    async fn meta_delete_if_stale(&self, key: &MetaKey, cutoff: SystemTime) -> Result<bool>;
    /// Removes a metadata document; `false` when there was none.
    async fn meta_delete(&self, key: &MetaKey) -> Result<bool>;
    /// The document names in a directory, sorted; empty when the directory does not exist.
    async fn meta_list(&self, dir: &MetaDir) -> Result<Vec<String>>;
    /// A value that changes whenever a document in `dir` is added, replaced or removed, for
    /// validating caches of `meta_list`. `None` when the directory does not exist, when the
    /// backend has no cheap stamp, or when the stamp is too recent to be trusted yet.
    async fn meta_dir_stamp(&self, _dir: &MetaDir) -> Result<Option<u128>> {
        Ok(None)
    }
    /// Every repository that has ever held content, sorted by name.
    async fn repositories(&self) -> Result<Vec<RepoName>>;
    /// Whether a repository exists.
    async fn repository_exists(&self, repo: &RepoName) -> Result<bool>;
    /// Whether the backend can serve requests now (for /readyz).
    async fn ready(&self) -> Result<()>;
    /// Deletes everything this registry stores (the [`layout::TOP_LEVEL`] directories: blobs,
    /// repositories, upload sessions, robot accounts, the token key; on S3 with a prefix,
    /// everything under the prefix) and nothing beside it, aborting the multipart uploads of
    /// upload sessions first. A filesystem root itself stays (it is often a mount point).
    /// `dry_run` counts without deleting. Idempotent: a second run deletes nothing. Not meant
    /// to run while a registry serves the store (S3 gives up if objects keep appearing).
    async fn purge(&self, dry_run: bool) -> Result<PurgeReport>;
}

/// Which backend to open: the one storage section of the config, after flags and variables.
#[derive(Clone, Debug, PartialEq)]
pub enum Backend {
    Filesystem(std::path::PathBuf),
    S3(crate::config::S3Config),
}

impl Backend {
    /// `--root` (given explicitly) wins; otherwise the config file's storage section, which
    /// may name one kind only.
    pub fn choose(
        root_override: Option<std::path::PathBuf>,
        file: &crate::config::Config,
    ) -> Result<Backend, OpenError> {
        if let Some(root) = root_override {
            return Ok(Backend::Filesystem(root));
        }
        match (&file.storage.filesystem, &file.storage.s3) {
            (Some(_), Some(_)) => Err(OpenError::Ambiguous),
            (_, Some(s3)) => Ok(Backend::S3(s3.clone())),
            _ => Ok(Backend::Filesystem(file.root())),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Backend::Filesystem(root) => root.display().to_string(),
            Backend::S3(s) => format!(
                "s3://{}/{}{}",
                s.bucket,
                s.prefix.as_deref().unwrap_or(""),
                s.endpoint
                    .as_deref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default()
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("storage: set either filesystem or s3, not both")]
    Ambiguous,
    #[error(
        "no registry storage at {0}: the directory does not exist (check --root or the config's storage.filesystem.root)"
    )]
    Missing(std::path::PathBuf),
    #[error("cannot open storage at {root}: {source}")]
    Filesystem {
        root: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    S3(#[from] s3::S3OpenError),
}

/// Opens the chosen backend (checking that an object store answers).
/// Opens the storage of a registry that already exists: what `gc`, `purge` and `token` work
/// on. A filesystem root that is not there is an error, not a new empty registry (a typo in
/// `--root` would otherwise collect nothing and say all is well).
pub async fn open_existing(backend: &Backend) -> Result<std::sync::Arc<dyn Store>, OpenError> {
    if let Backend::Filesystem(root) = backend
        && !root.is_dir()
    {
        return Err(OpenError::Missing(root.clone()));
    }
    open(backend).await
}

/// Opens the storage, creating a filesystem root that is not there yet (what `serve` does).
pub async fn open(backend: &Backend) -> Result<std::sync::Arc<dyn Store>, OpenError> {
    Ok(match backend {
        Backend::Filesystem(root) => {
            std::sync::Arc::new(fs::FsStore::open(root).map_err(|source| {
                OpenError::Filesystem {
                    root: root.clone(),
                    source,
                }
            })?)
        }
        Backend::S3(cfg) => std::sync::Arc::new(s3::S3Store::open(cfg).await?),
    })
}
