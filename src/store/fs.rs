//! The filesystem backend: a directory tree laid out by [`super::layout`].
//!
//! Writes that make something visible end in a rename within the same filesystem: blob bytes
//! are fsynced once, renamed into place and the directory fsynced, so a crash leaves either no
//! blob or the whole verified blob. Upload sessions are plain files under `uploads/`, so they
//! survive a restart; the running digest of each session is kept in memory as a cache and is
//! recomputed from the file when it is missing (after a restart) or stale.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::task::JoinHandle;

use super::layout::{self, MetaDir, MetaKey, UploadId};
use super::{
    BlobHandle, BlobInfo, BlobSource, ByteStream, PurgeReport, Result, Store, StoreError,
    UploadInfo, UploadReader,
};
use crate::oci::{Algorithm, Digest, Digester, RepoName};

/// Blobs up to this size are read whole in one step (one blocking hop per request).
const SMALL_BLOB: u64 = 64 * 1024;
/// Read size when streaming a blob out.
const READ_CHUNK: usize = 1024 * 1024;
/// Received bytes are hashed and written in batches of about this size.
const WRITE_BATCH: usize = 1024 * 1024;
/// Upload digest states kept in memory before idle ones are dropped (they can be recomputed).
const MAX_UPLOAD_STATES: usize = 4096;

/// The running digest of one upload session: `hasher` covers the first `hashed` bytes.
#[derive(Default)]
struct UploadState {
    hasher: Option<Digester>,
    hashed: u64,
}

pub struct FsStore {
    root: PathBuf,
    uploads: Mutex<HashMap<UploadId, Arc<tokio::sync::Mutex<UploadState>>>>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("blocking task failed: {e}")))?
}

/// Adds the path to an I/O error, keeping its kind, so a storage error says where it happened.
trait At<T> {
    fn at(self, path: &Path) -> io::Result<T>;
}

impl<T> At<T> for io::Result<T> {
    fn at(self, path: &Path) -> io::Result<T> {
        self.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }
}

fn not_found_as_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Stored files are readable by the process's group at most (a registry's content is not for
/// every local user), directories likewise.
const FILE_MODE: u32 = 0o640;
const DIR_MODE: u32 = 0o750;

/// Creates (truncating) a file with `FILE_MODE`.
fn create_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Creates a directory and its missing parents with `DIR_MODE`.
fn create_dirs(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// The file under an upload's directory that holds how many of `data`'s bytes are committed:
/// bytes past it belong to a chunk that never finished (the process died mid-chunk) and are
/// cut off before the session is used again, so a chunk is all or nothing.
const COMMITTED: &str = "committed";

fn read_committed(dir: &Path) -> io::Result<Option<u64>> {
    let Some(text) = not_found_as_none(fs::read_to_string(dir.join(COMMITTED)))? else {
        return Ok(None);
    };
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| io::Error::other(format!("{}: not a size", dir.join(COMMITTED).display())))
}

/// Removes `.tmp-*` files modified before `cutoff` under `dir`, recursively.
fn sweep_tmp(
    dir: &Path,
    cutoff: std::time::SystemTime,
    dry_run: bool,
    n: &mut usize,
) -> io::Result<()> {
    let Some(entries) = not_found_as_none(fs::read_dir(dir))? else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let Some(ft) = not_found_as_none(entry.file_type())? else {
            continue;
        };
        if ft.is_dir() {
            sweep_tmp(&entry.path(), cutoff, dry_run, n)?;
            continue;
        }
        let name = entry.file_name();
        let is_tmp = name
            .to_str()
            .is_some_and(|n| n.starts_with('.') && n.contains(".tmp-"));
        if !is_tmp {
            continue;
        }
        let Some(meta) = not_found_as_none(entry.metadata())? else {
            continue;
        };
        if meta.modified()? < cutoff {
            *n += 1;
            if !dry_run {
                not_found_as_none(fs::remove_file(entry.path()))?;
            }
        }
    }
    Ok(())
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` through a temporary file and a rename, fsyncing both.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_via_rename(path, bytes, true)
}

/// Writes `bytes` to `path` through a temporary file and a rename: readers see the old
/// content or the new, never a part. `durable` adds an fsync of the file and its directory.
fn write_via_rename(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let parent = path
        .parent()
        .ok_or_else(|| io::Error::other("key has no parent"))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other("key has no file name"))?;
    let tmp = parent.join(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
    let mut f = match create_file(&tmp) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            create_dirs(parent)?;
            create_file(&tmp)?
        }
        other => other?,
    };
    let result = f
        .write_all(bytes)
        .and_then(|_| if durable { f.sync_data() } else { Ok(()) })
        .and_then(|_| fs::rename(&tmp, path))
        .and_then(|_| if durable { fsync_dir(parent) } else { Ok(()) });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.at(path)
}

/// Where a collection stages an item it is about to delete: beside it, under a dot-name that
/// listings skip (see `crate::gc` for the protocol).
fn staged_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    Some(path.with_file_name(format!(".gc-{name}")))
}

/// Sets a file's modification time to the precise current time. (`UTIME_NOW` would use the
/// kernel's coarse clock, which can lag `SystemTime::now()` by a tick and so make a touch look
/// older than a collection that started just before it.)
fn set_mtime_now(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(io::Error::other)?;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let ts = libc::timespec {
        tv_sec: now.as_secs() as libc::time_t,
        tv_nsec: now.subsec_nanos() as libc::c_long,
    };
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        ts,
    ];
    // SAFETY: `c` is a valid NUL-terminated path and `times` holds two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Touches `path`, restoring it from its staged name first if a collection staged it.
/// Returns its size, or `None` when it is gone. Retries, because a collection may stage the
/// item again between our steps; whatever the interleaving, `Some` means the item is in place
/// with a fresh time, which that collection will see when it looks again.
fn touch(path: &Path) -> io::Result<Option<u64>> {
    let staged = staged_path(path).ok_or_else(|| io::Error::other("path has no file name"))?;
    for _ in 0..8 {
        match set_mtime_now(path) {
            Ok(()) => match not_found_as_none(fs::metadata(path)).at(path)? {
                Some(m) => return Ok(Some(m.len())),
                None => continue,
            },
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e).at(path),
            Err(_) => {}
        }
        match fs::rename(&staged, path) {
            Ok(()) => continue,
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e).at(&staged),
            // Neither in place nor staged: gone, unless someone restored it meanwhile.
            Err(_) if !path.exists() => return Ok(None),
            Err(_) => continue,
        }
    }
    Err(io::Error::other("item kept moving while being touched"))
}

/// The sweep side of the protocol: delete `path` only if it was not touched at or after
/// `cutoff`, checking again after staging it so a touch that raced the decision wins.
fn delete_if_stale(path: &Path, cutoff: std::time::SystemTime) -> io::Result<Option<u64>> {
    let staged = staged_path(path).ok_or_else(|| io::Error::other("path has no file name"))?;
    match not_found_as_none(fs::metadata(path)).at(path)? {
        Some(m) if m.modified()? >= cutoff => return Ok(None),
        // Stage it; if it vanished meanwhile, someone else finished the job.
        Some(_)
            if not_found_as_none(fs::rename(path, &staged))
                .at(path)?
                .is_none() =>
        {
            return Ok(None);
        }
        Some(_) => {}
        // Already staged by an interrupted collection: finish the job below.
        None => {}
    }
    let Some(m) = not_found_as_none(fs::metadata(&staged)).at(&staged)? else {
        return Ok(None); // restored by a toucher
    };
    if m.modified()? >= cutoff {
        // Touched between our first look and the staging: put it back.
        match fs::rename(&staged, path) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e).at(&staged),
            _ => return Ok(None),
        }
    }
    Ok(not_found_as_none(fs::remove_file(&staged))
        .at(&staged)?
        .map(|_| m.len()))
}

/// Removes `path` and everything below it, depth first, counting the files (and symlinks,
/// which are removed, never followed) and their sizes into `report`; with `dry_run` only
/// counts. Whatever vanishes meanwhile is skipped.
fn purge_tree(path: &Path, dry_run: bool, report: &mut PurgeReport) -> io::Result<()> {
    let Some(meta) = not_found_as_none(fs::symlink_metadata(path)).at(path)? else {
        return Ok(());
    };
    if meta.is_dir() {
        let Some(entries) = not_found_as_none(fs::read_dir(path)).at(path)? else {
            return Ok(());
        };
        for entry in entries {
            purge_tree(&entry.at(path)?.path(), dry_run, report)?;
        }
        if !dry_run {
            not_found_as_none(fs::remove_dir(path)).at(path)?;
        }
        return Ok(());
    }
    if !dry_run && not_found_as_none(fs::remove_file(path)).at(path)?.is_none() {
        return Ok(());
    }
    report.objects_deleted += 1;
    report.bytes_freed += meta.len();
    Ok(())
}

/// Hashes the first `len` bytes of `path` with `alg` (rebuilding a lost upload state).
fn hash_file(path: &Path, alg: Algorithm, len: u64) -> io::Result<Digester> {
    let mut h = alg.digester();
    let mut f = File::open(path)?.take(len);
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h)
}

/// Reads `len` bytes at `pos` straight into a fresh buffer (no zero-filling first: on a pull
/// every byte is copied once, from the page cache into the buffer hyper writes out).
fn read_chunk(file: &File, pos: u64, len: usize) -> io::Result<Bytes> {
    use std::os::fd::AsRawFd;
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        let filled = buf.len();
        let spare = buf.spare_capacity_mut();
        // SAFETY: pread writes at most `len - filled` bytes into the spare capacity, which is
        // at least that large; exactly the bytes it reports are then marked initialised.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                len - filled,
                (pos + filled as u64) as libc::off_t,
            )
        };
        match n {
            0 => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "blob shorter than its size",
                ));
            }
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            // SAFETY: pread initialised `n` more bytes after `filled`.
            n => unsafe { buf.set_len(filled + n as usize) },
        }
    }
    Ok(buf.freeze())
}

/// A session's data file, open while it grows; the open file outlives the commit's rename.
struct FsUploadReader(Arc<File>);

#[async_trait]
impl UploadReader for FsUploadReader {
    async fn read_at(&self, pos: u64, max: usize) -> Result<Bytes> {
        let file = self.0.clone();
        Ok(blocking(move || {
            let len = file.metadata()?.len();
            match len.saturating_sub(pos).min(max as u64) {
                0 => Ok(Bytes::new()),
                n => read_chunk(&file, pos, n as usize),
            }
        })
        .await?)
    }
}

enum FsBlob {
    Small(Bytes),
    File(Arc<File>),
}

impl BlobSource for FsBlob {
    fn stream(self: Box<Self>, start: u64, end: u64) -> ByteStream {
        match *self {
            FsBlob::Small(b) => {
                let part = if b.is_empty() {
                    b
                } else {
                    b.slice(start as usize..=end as usize)
                };
                futures::stream::once(async move { Ok(part) }).boxed()
            }
            FsBlob::File(file) => file_stream(file, start, end),
        }
    }
}

/// A piece of a blob, and the mapping it was cut from (none when it was read).
type Piece = (Bytes, Option<Arc<Mapped>>);

/// Streams `start..=end` of a file in large pieces, one piece ahead of the consumer.
fn file_stream(file: Arc<File>, start: u64, end: u64) -> ByteStream {
    struct St {
        file: Arc<File>,
        /// The window of the file the pieces are cut from (see [`Mapped`]).
        map: Option<Arc<Mapped>>,
        next_pos: u64,
        end_excl: u64,
        pending: Option<JoinHandle<io::Result<Piece>>>,
    }
    fn spawn_next(st: &mut St) {
        if st.pending.is_none() && st.next_pos < st.end_excl {
            let len = (st.end_excl - st.next_pos).min(READ_CHUNK as u64) as usize;
            let (file, pos, map, end) = (st.file.clone(), st.next_pos, st.map.clone(), st.end_excl);
            st.next_pos += len as u64;
            st.pending = Some(tokio::task::spawn_blocking(move || {
                let map = match map.filter(|m| m.holds(pos, len)) {
                    Some(m) => Some(m),
                    None => Mapped::window(&file, pos, (end - pos).min(MAP_WINDOW)).ok(),
                };
                if let Some(m) = &map
                    && let Ok(b) = m.piece(pos, len)
                {
                    return Ok((b, map));
                }
                read_chunk(&file, pos, len).map(|b| (b, None))
            }));
        }
    }
    let st = St {
        file,
        map: None,
        next_pos: start,
        end_excl: end + 1,
        pending: None,
    };
    futures::stream::unfold(st, |mut st| async move {
        spawn_next(&mut st);
        let handle = st.pending.take()?;
        let chunk = match handle.await {
            Ok(Ok((b, map))) => {
                st.map = map;
                Ok(b)
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(io::Error::other(e)),
        };
        if chunk.is_ok() {
            spawn_next(&mut st);
        } else {
            st.next_pos = st.end_excl;
        }
        Some((chunk, st))
    })
    .boxed()
}

/// How much of a blob one mapping covers.
const MAP_WINDOW: u64 = 8 << 20;

/// A window of a blob, mapped once and handed to hyper piece by piece as `Bytes` that share
/// the mapping, so a pull copies each byte once (page cache to socket) instead of twice, with
/// one map and one unmap per window (an unmap per piece cost TLB shootdowns across cores).
/// Windows bound what one GET keeps mapped (mapped page cache counts in the process's RSS).
/// Blob files are never modified once renamed into place (gc only unlinks them, which keeps
/// an open mapping valid), so the bytes cannot change under it. Upload sessions, which are
/// truncated, are never mapped.
struct Mapped {
    map: memmap2::Mmap,
    /// The file offset of the mapping's first byte (page-aligned), and its length.
    at: u64,
    len: u64,
}

impl Mapped {
    fn window(file: &File, pos: u64, len: u64) -> io::Result<Arc<Mapped>> {
        let at = pos - pos % 4096;
        let len = pos - at + len;
        // SAFETY: see above: the file's bytes in this range are immutable for the mapping's
        // life.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(at)
                .len(len as usize)
                .map(file)?
        };
        Ok(Arc::new(Mapped { map, at, len }))
    }

    fn holds(&self, pos: u64, len: usize) -> bool {
        pos >= self.at && pos + len as u64 <= self.at + self.len
    }

    /// `len` bytes at file offset `pos` (within the window), read in from disk here, on a
    /// blocking thread, so the async thread that writes them never waits on the disk.
    fn piece(self: &Arc<Self>, pos: u64, len: usize) -> io::Result<Bytes> {
        let from = (pos - self.at) as usize;
        self.map
            .advise_range(memmap2::Advice::PopulateRead, from, len)?;
        Ok(Bytes::from_owner(MapPiece {
            map: self.clone(),
            from,
            to: from + len,
        }))
    }
}

struct MapPiece {
    map: Arc<Mapped>,
    from: usize,
    to: usize,
}

impl AsRef<[u8]> for MapPiece {
    fn as_ref(&self) -> &[u8] {
        &self.map.map[self.from..self.to]
    }
}

impl FsStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        for d in [layout::BLOBS, layout::REPOSITORIES, layout::UPLOADS] {
            create_dirs(&root.join(d))?;
        }
        Ok(FsStore {
            root,
            uploads: Mutex::new(HashMap::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn upload_state(&self, id: &UploadId) -> Arc<tokio::sync::Mutex<UploadState>> {
        let mut map = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_UPLOAD_STATES && !map.contains_key(id) {
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        map.entry(id.clone()).or_default().clone()
    }

    fn forget_upload(&self, id: &UploadId) {
        let mut map = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(id);
    }

    /// The session's data file, after checking that the session exists and belongs to `repo`.
    async fn upload_data(&self, repo: &RepoName, id: &UploadId) -> Result<PathBuf> {
        let dir = self.path(&layout::upload_dir(id));
        let owner_path = dir.join("repo");
        let owner = blocking(move || not_found_as_none(fs::read(owner_path))).await?;
        match owner {
            Some(o) if o == repo.as_str().as_bytes() => Ok(dir.join("data")),
            _ => Err(StoreError::UploadUnknown),
        }
    }
}

/// How many bytes of an upload's `data` are committed: the `committed` file's count (capped
/// by the file's length), or the file's length for a session written before that file existed.
fn committed_size(data: &Path) -> io::Result<Option<u64>> {
    let Some(len) = not_found_as_none(fs::metadata(data).map(|m| m.len()))? else {
        return Ok(None);
    };
    let dir = data
        .parent()
        .ok_or_else(|| io::Error::other("upload data has no parent"))?;
    Ok(Some(read_committed(dir)?.map_or(len, |c| c.min(len))))
}

/// Makes `st` cover exactly the first `size` bytes of `data` with algorithm `alg`.
async fn bring_up_to_date(
    st: &mut UploadState,
    data: &Path,
    size: u64,
    alg: Algorithm,
) -> Result<()> {
    let current = st.hasher.as_ref().map(|h| h.algorithm());
    if current == Some(alg) && st.hashed == size {
        return Ok(());
    }
    let path = data.to_owned();
    let h = blocking(move || hash_file(&path, alg, size)).await?;
    st.hasher = Some(h);
    st.hashed = size;
    Ok(())
}

#[async_trait]
impl Store for FsStore {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let p = self.path(&layout::blob_key(digest));
        Ok(blocking(move || not_found_as_none(fs::metadata(p).map(|m| m.len()))).await?)
    }

    async fn blob_open(&self, digest: &Digest) -> Result<Option<BlobHandle>> {
        let p = self.path(&layout::blob_key(digest));
        let opened = blocking(move || {
            let Some(mut f) = not_found_as_none(File::open(p))? else {
                return Ok(None);
            };
            let size = f.metadata()?.len();
            if size <= SMALL_BLOB {
                let mut buf = Vec::with_capacity(size as usize);
                f.read_to_end(&mut buf)?;
                return Ok(Some((size, FsBlob::Small(Bytes::from(buf)))));
            }
            Ok(Some((size, FsBlob::File(Arc::new(f)))))
        })
        .await?;
        Ok(opened.map(|(size, src)| BlobHandle::new(size, Box::new(src))))
    }

    async fn blob_read(&self, digest: &Digest) -> Result<Option<Bytes>> {
        let p = self.path(&layout::blob_key(digest));
        Ok(blocking(move || not_found_as_none(fs::read(p)))
            .await?
            .map(Bytes::from))
    }

    async fn blob_put(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        let p = self.path(&layout::blob_key(digest));
        blocking(move || {
            // Already stored (the same bytes): touch it, so its grace period restarts.
            if touch(&p)?.is_some() {
                return Ok(());
            }
            write_atomic(&p, &bytes)
        })
        .await?;
        Ok(())
    }

    async fn blob_touch(&self, digest: &Digest) -> Result<Option<u64>> {
        let p = self.path(&layout::blob_key(digest));
        Ok(blocking(move || touch(&p)).await?)
    }

    async fn blob_delete_if_stale(
        &self,
        digest: &Digest,
        cutoff: std::time::SystemTime,
    ) -> Result<Option<u64>> {
        let p = self.path(&layout::blob_key(digest));
        Ok(blocking(move || delete_if_stale(&p, cutoff)).await?)
    }

    async fn blob_list(&self) -> Result<Vec<BlobInfo>> {
        let root = self.path(layout::BLOBS);
        Ok(blocking(move || {
            let mut out = Vec::new();
            for alg in [Algorithm::Sha256, Algorithm::Sha512] {
                let Some(prefixes) = not_found_as_none(fs::read_dir(root.join(alg.as_str())))?
                else {
                    continue;
                };
                for prefix in prefixes {
                    let prefix = prefix?.path();
                    for entry in fs::read_dir(&prefix).at(&prefix)? {
                        let entry = entry?;
                        let name = entry.file_name();
                        let Some(name) = name.to_str() else { continue };
                        let (staged, hex) = match name.strip_prefix(".gc-") {
                            Some(h) => (true, h),
                            None => (false, name),
                        };
                        let Ok(digest) = Digest::from_parts(alg, hex) else {
                            continue; // temporary files and strays are not blobs
                        };
                        let Some(meta) = not_found_as_none(entry.metadata()).at(&entry.path())?
                        else {
                            continue;
                        };
                        out.push(BlobInfo {
                            digest,
                            size: meta.len(),
                            modified: meta.modified()?,
                            staged,
                        });
                    }
                }
            }
            Ok(out)
        })
        .await?)
    }

    async fn upload_create(&self, repo: &RepoName) -> Result<UploadId> {
        let id = UploadId::random();
        let dir = self.path(&layout::upload_dir(&id));
        let owner = repo.as_str().to_owned();
        // The owner first, atomically: a crash part-way leaves a session that answers as
        // unknown and that gc's upload TTL purges, never one with a torn owner. Not fsynced:
        // a session lost to a power failure is simply started again by the client.
        blocking(move || {
            create_dirs(&dir)?;
            write_via_rename(&dir.join("repo"), owner.as_bytes(), false)?;
            write_via_rename(&dir.join(COMMITTED), b"0", false)?;
            create_file(&dir.join("data")).map(|_| ())
        })
        .await?;
        Ok(id)
    }

    async fn upload_size(&self, repo: &RepoName, id: &UploadId) -> Result<u64> {
        let data = self.upload_data(repo, id).await?;
        let len = blocking(move || committed_size(&data)).await?;
        len.ok_or(StoreError::UploadUnknown)
    }

    async fn upload_append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        offset: Option<u64>,
        len: Option<u64>,
        hint: Option<Algorithm>,
        mut body: ByteStream,
    ) -> Result<u64> {
        let data = self.upload_data(repo, id).await?;
        let state = self.upload_state(id);
        let mut st = state.lock().await;
        let path = data.clone();
        let opened = blocking(move || {
            let Some(size) = committed_size(&path)? else {
                return Ok(None);
            };
            let f = OpenOptions::new().append(true).open(&path)?;
            if f.metadata()?.len() > size {
                f.set_len(size)?; // the torn end of a chunk cut short by a crash
            }
            Ok(Some((f, size)))
        })
        .await?;
        let (file, start) = opened.ok_or(StoreError::UploadUnknown)?;
        if let Some(got) = offset
            && got != start
        {
            return Err(StoreError::OffsetMismatch {
                expected: start,
                got,
            });
        }
        // Hash with the algorithm the client will finish with when it said so; otherwise
        // keep the session's algorithm (sha256 for a new session).
        let alg = hint
            .or(st.hasher.as_ref().map(|h| h.algorithm()))
            .unwrap_or(Algorithm::Sha256);
        bring_up_to_date(&mut st, &data, start, alg).await?;
        let start_hasher = st.hasher.clone();
        let mut hasher = st.hasher.take().unwrap_or_else(|| alg.digester());

        // Receive while the previous batch is hashed and written on a blocking thread.
        let mut file = Some(file);
        let mut pending: Option<JoinHandle<io::Result<(File, Digester)>>> = None;
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batch_len = 0usize;
        let mut received: u64 = 0;
        let mut failure: Option<StoreError> = None;
        loop {
            let next = body.next().await;
            let last = match &next {
                None => true,
                Some(Err(_)) => true,
                Some(Ok(_)) => false,
            };
            match next {
                Some(Ok(chunk)) => {
                    received += chunk.len() as u64;
                    batch_len += chunk.len();
                    batch.push(chunk);
                }
                Some(Err(e)) => failure = Some(StoreError::Body(e)),
                None => {}
            }
            if failure.is_some() {
                break;
            }
            if batch_len >= WRITE_BATCH || (last && !batch.is_empty()) {
                if let Some(p) = pending.take() {
                    match p.await.map_err(io::Error::other).and_then(|r| r) {
                        Ok((f, h)) => {
                            file = Some(f);
                            hasher = h;
                        }
                        Err(e) => {
                            failure = Some(e.into());
                            break;
                        }
                    }
                }
                let (Some(mut f), mut h) = (file.take(), hasher.clone()) else {
                    failure = Some(io::Error::other("upload file lost").into());
                    break;
                };
                let work = std::mem::take(&mut batch);
                batch_len = 0;
                pending = Some(tokio::task::spawn_blocking(move || {
                    for b in &work {
                        h.update(b);
                        f.write_all(b)?;
                    }
                    Ok((f, h))
                }));
            }
            if last {
                break;
            }
        }
        if let Some(p) = pending.take() {
            match p.await.map_err(io::Error::other).and_then(|r| r) {
                Ok((f, h)) => {
                    file = Some(f);
                    hasher = h;
                }
                Err(e) => {
                    failure.get_or_insert(e.into());
                }
            }
        }
        if failure.is_none()
            && let Some(expected) = len
            && expected != received
        {
            failure = Some(StoreError::LengthMismatch {
                expected,
                got: received,
            });
        }
        if let Some(err) = failure {
            // All or nothing: cut the file back to where this chunk started.
            let path = data.clone();
            blocking(move || OpenOptions::new().write(true).open(path)?.set_len(start)).await?;
            st.hasher = start_hasher;
            st.hashed = start;
            return Err(err);
        }
        drop(file);
        let end = start + received;
        let dir = data.parent().map(Path::to_owned);
        if let Some(dir) = dir {
            blocking(move || {
                write_via_rename(&dir.join(COMMITTED), end.to_string().as_bytes(), false)
            })
            .await?;
        }
        st.hasher = Some(hasher);
        st.hashed = end;
        Ok(end)
    }

    async fn upload_commit(&self, repo: &RepoName, id: &UploadId, digest: &Digest) -> Result<u64> {
        let data = self.upload_data(repo, id).await?;
        let state = self.upload_state(id);
        let mut st = state.lock().await;
        let path = data.clone();
        let size = blocking(move || {
            let size = committed_size(&path)?;
            if let Some(size) = size
                && fs::metadata(&path)?.len() > size
            {
                OpenOptions::new().write(true).open(&path)?.set_len(size)?;
            }
            Ok(size)
        })
        .await?
        .ok_or(StoreError::UploadUnknown)?;
        bring_up_to_date(&mut st, &data, size, digest.algorithm()).await?;
        let computed = st
            .hasher
            .clone()
            .map(Digester::finish)
            .ok_or_else(|| io::Error::other("upload digest state missing"))?;
        let upload_dir = self.path(&layout::upload_dir(id));
        if &computed != digest {
            drop(st);
            self.forget_upload(id);
            blocking(move || not_found_as_none(fs::remove_dir_all(upload_dir)).map(|_| ())).await?;
            return Err(StoreError::DigestMismatch { computed });
        }
        let blob = self.path(&layout::blob_key(digest));
        blocking(move || {
            File::open(&data)?.sync_all()?;
            // Its grace period starts now, not at the upload's last write; stamped before the
            // rename (which keeps it) so nothing after the rename can race a collection.
            set_mtime_now(&data)?;
            let parent = blob
                .parent()
                .ok_or_else(|| io::Error::other("blob key has no parent"))?;
            create_dirs(parent)?;
            fs::rename(&data, &blob)?;
            fsync_dir(parent)?;
            not_found_as_none(fs::remove_dir_all(upload_dir)).map(|_| ())
        })
        .await?;
        drop(st);
        self.forget_upload(id);
        Ok(size)
    }

    async fn upload_open(
        &self,
        repo: &RepoName,
        id: &UploadId,
    ) -> Result<Option<Arc<dyn UploadReader>>> {
        let data = self.upload_data(repo, id).await?;
        let file = blocking(move || File::open(&data).at(&data)).await?;
        Ok(Some(Arc::new(FsUploadReader(Arc::new(file)))))
    }

    async fn upload_cancel(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        self.upload_data(repo, id).await?;
        let state = self.upload_state(id);
        let _st = state.lock().await;
        let dir = self.path(&layout::upload_dir(id));
        blocking(move || not_found_as_none(fs::remove_dir_all(dir)).map(|_| ())).await?;
        self.forget_upload(id);
        Ok(())
    }

    async fn upload_delete(&self, id: &UploadId) -> Result<()> {
        let state = self.upload_state(id);
        let _st = state.lock().await;
        let dir = self.path(&layout::upload_dir(id));
        blocking(move || not_found_as_none(fs::remove_dir_all(dir)).map(|_| ())).await?;
        self.forget_upload(id);
        Ok(())
    }

    async fn upload_list(&self) -> Result<Vec<UploadInfo>> {
        let dir = self.path(layout::UPLOADS);
        Ok(blocking(move || {
            let mut out = Vec::new();
            // Absent after a purge, until the store is opened again.
            let Some(entries) = not_found_as_none(fs::read_dir(&dir)).at(&dir)? else {
                return Ok(out);
            };
            for entry in entries {
                let entry = entry?;
                let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                    continue;
                };
                let data = entry.path().join("data");
                // A session may finish (and vanish) while we list.
                let meta = match not_found_as_none(fs::metadata(&data)).at(&data)? {
                    Some(m) => m,
                    None => match not_found_as_none(entry.metadata()).at(&entry.path())? {
                        Some(m) => m,
                        None => continue,
                    },
                };
                out.push(UploadInfo {
                    id,
                    modified: meta.modified()?,
                });
            }
            Ok(out)
        })
        .await?)
    }

    async fn sweep_temporaries(
        &self,
        cutoff: std::time::SystemTime,
        dry_run: bool,
    ) -> Result<usize> {
        let dirs = [self.path(layout::BLOBS), self.path(layout::REPOSITORIES)];
        Ok(blocking(move || {
            let mut n = 0;
            for d in &dirs {
                sweep_tmp(d, cutoff, dry_run, &mut n)?;
            }
            Ok(n)
        })
        .await?)
    }

    async fn meta_put(&self, key: &MetaKey, value: &[u8]) -> Result<()> {
        let p = self.path(key.as_str());
        let v = value.to_vec();
        blocking(move || write_atomic(&p, &v)).await?;
        Ok(())
    }

    async fn meta_put_volatile(&self, key: &MetaKey, value: &[u8]) -> Result<()> {
        let p = self.path(key.as_str());
        let v = value.to_vec();
        blocking(move || write_via_rename(&p, &v, false)).await?;
        Ok(())
    }

    async fn meta_get(&self, key: &MetaKey) -> Result<Option<Bytes>> {
        let p = self.path(key.as_str());
        Ok(blocking(move || not_found_as_none(fs::read(p)))
            .await?
            .map(Bytes::from))
    }

    async fn meta_exists(&self, key: &MetaKey) -> Result<bool> {
        let p = self.path(key.as_str());
        Ok(blocking(move || not_found_as_none(fs::metadata(p)))
            .await?
            .is_some())
    }

    async fn meta_modified(&self, key: &MetaKey) -> Result<Option<std::time::SystemTime>> {
        let p = self.path(key.as_str());
        let m = blocking(move || not_found_as_none(fs::metadata(p))).await?;
        Ok(m.map(|m| m.modified()).transpose()?)
    }

    async fn meta_touch(&self, key: &MetaKey) -> Result<bool> {
        let p = self.path(key.as_str());
        Ok(blocking(move || touch(&p)).await?.is_some())
    }

    async fn meta_delete_if_stale(
        &self,
        key: &MetaKey,
        cutoff: std::time::SystemTime,
    ) -> Result<bool> {
        let p = self.path(key.as_str());
        Ok(blocking(move || delete_if_stale(&p, cutoff))
            .await?
            .is_some())
    }

    async fn meta_delete(&self, key: &MetaKey) -> Result<bool> {
        let p = self.path(key.as_str());
        Ok(blocking(move || not_found_as_none(fs::remove_file(p)))
            .await?
            .is_some())
    }

    async fn meta_list(&self, dir: &MetaDir) -> Result<Vec<String>> {
        let p = self.path(dir.as_str());
        Ok(blocking(move || {
            let Some(entries) = not_found_as_none(fs::read_dir(&p)).at(&p)? else {
                return Ok(Vec::new());
            };
            let mut names = Vec::new();
            for e in entries {
                if let Some(n) = e?.file_name().to_str()
                    && !n.starts_with('.')
                {
                    names.push(n.to_owned());
                }
            }
            names.sort_unstable();
            Ok(names)
        })
        .await?)
    }

    async fn meta_dir_stamp(&self, dir: &MetaDir) -> Result<Option<u128>> {
        // A directory's mtime moves on every create, rename-over and unlink in it. Kernel
        // timestamps are coarse (a clock tick), so two changes within one tick can share an
        // mtime: a stamp is only offered once it is old enough that any later change must
        // carry a different one.
        let p = self.path(dir.as_str());
        Ok(blocking(move || {
            let Some(meta) = not_found_as_none(fs::metadata(p))? else {
                return Ok(None);
            };
            let mtime = meta.modified()?;
            let settled = mtime
                .elapsed()
                .is_ok_and(|age| age > std::time::Duration::from_secs(1));
            Ok(settled.then(|| {
                mtime
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            }))
        })
        .await?)
    }

    async fn repositories(&self) -> Result<Vec<RepoName>> {
        let root = self.path(layout::REPOSITORIES);
        Ok(blocking(move || {
            let mut out = Vec::new();
            let mut stack = vec![(root, String::new())];
            while let Some((dir, name)) = stack.pop() {
                let Some(entries) = not_found_as_none(fs::read_dir(&dir)).at(&dir)? else {
                    continue;
                };
                let mut is_repo = false;
                for e in entries {
                    let e = e?;
                    let Some(child) = e.file_name().to_str().map(str::to_owned) else {
                        continue;
                    };
                    if child.starts_with('_') {
                        is_repo |= child == layout::REPO_MANIFESTS || child == layout::REPO_BLOBS;
                    } else if e.file_type().at(&e.path())?.is_dir() {
                        let full = if name.is_empty() {
                            child
                        } else {
                            format!("{name}/{child}")
                        };
                        stack.push((e.path(), full));
                    }
                }
                if is_repo && let Ok(r) = name.parse() {
                    out.push(r);
                }
            }
            out.sort_unstable();
            Ok(out)
        })
        .await?)
    }

    async fn repository_exists(&self, repo: &RepoName) -> Result<bool> {
        let base = self.path(MetaDir::repo(repo).as_str());
        Ok(blocking(move || {
            Ok(
                base.join(layout::REPO_MANIFESTS).exists()
                    || base.join(layout::REPO_BLOBS).exists(),
            )
        })
        .await?)
    }

    async fn ready(&self) -> Result<()> {
        let p = self.root.clone();
        blocking(move || fs::metadata(p).map(|_| ())).await?;
        Ok(())
    }

    async fn purge(&self, dry_run: bool) -> Result<PurgeReport> {
        let root = self.root.clone();
        let report = blocking(move || {
            let mut total = PurgeReport::default();
            for top in layout::TOP_LEVEL {
                let dir = root.join(top);
                let mut part = PurgeReport::default();
                purge_tree(&dir, dry_run, &mut part)?;
                tracing::info!(
                    dir = %dir.display(),
                    files = part.objects_deleted,
                    bytes = part.bytes_freed,
                    dry_run,
                    "purged"
                );
                total.objects_deleted += part.objects_deleted;
                total.bytes_freed += part.bytes_freed;
            }
            Ok(total)
        })
        .await?;
        if !dry_run {
            self.uploads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
        Ok(report)
    }
}
