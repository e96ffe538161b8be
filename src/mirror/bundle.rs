//! Mirror bundles: a set written as an OCI image layout in one tar file (`oci-layout`,
//! `blobs/<alg>/<hex>`, then `index.json` naming each image `<repository>:<tag>` in
//! `org.opencontainers.image.ref.name`), which skopeo and other OCI tools read as
//! `oci-archive:bundle.tar:<repository>:<tag>`. With `--since` a bundle leaves out the blobs an
//! earlier one holds; its index still names every image.
//!
//! Referrers (signatures, SBOMs) are listed in the index too, without a ref name, so that an
//! import finds them. `mirror import` reads a bundle as a source (`Reader`): one pass over
//! the tar's headers finds every entry, then manifests and blobs are read where they lie.
//!
//! Blobs are streamed from the source straight into the tar (one at a time: a tar is written
//! in order), each checked against its digest and size as it passes; a mismatch ends the
//! export, and a bundle is renamed into place only once it is whole.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::json;

use crate::oci::manifest::MAX_MANIFEST_BYTES;
use crate::oci::{Descriptor, Digest, Digester, Manifest, RepoName, Tag};
use crate::proxy::upstream::{FetchedBlob, FetchedManifest};
use crate::store::ByteStream;

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("blob {digest} from the source: {reason}")]
    Bad { digest: Digest, reason: String },
}

/// A bundle being written.
pub struct Writer {
    out: PathBuf,
    tmp: PathBuf,
    /// Held across each blob's write (a tar is written in order); `None` once a write failed.
    tar: tokio::sync::Mutex<Option<tar::Builder<std::fs::File>>>,
    /// What this bundle holds so far.
    written: Mutex<HashSet<Digest>>,
    /// The blobs of the bundle given with `--since`. Manifests are written again all the
    /// same (they are small), so that every bundle names whole images.
    since: HashSet<Digest>,
    refs: Mutex<Vec<serde_json::Value>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_owned(),
        source,
    }
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm(), d.hex())
}

/// The digest a `blobs/<alg>/<hex>` entry holds ([`blob_path`] read back).
fn entry_digest(name: &str) -> Option<Digest> {
    let (alg, hex) = name.strip_prefix("blobs/")?.split_once('/')?;
    Digest::from_parts(crate::oci::Algorithm::parse(alg).ok()?, hex).ok()
}

/// The blobs an earlier bundle holds (its `blobs/<alg>/<hex>` entries).
pub fn blobs_of(path: &Path) -> Result<HashSet<Digest>, BundleError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut archive = tar::Archive::new(file);
    let mut out = HashSet::new();
    for entry in archive.entries_with_seek().map_err(io(path))? {
        let entry = entry.map_err(io(path))?;
        let name = entry
            .path()
            .map_err(io(path))?
            .to_string_lossy()
            .into_owned();
        if let Some(d) = entry_digest(&name) {
            out.insert(d);
        }
    }
    Ok(out)
}

impl Writer {
    /// Starts `out` (written beside it as `out.partial` until [`Writer::finish`]).
    pub fn create(out: &Path, since: HashSet<Digest>) -> Result<Writer, BundleError> {
        let tmp = out.with_extension("partial");
        let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut tar = tar::Builder::new(file);
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        append(
            &mut tar,
            "oci-layout",
            layout.len() as u64,
            &mut &layout[..],
        )
        .map_err(io(&tmp))?;
        Ok(Writer {
            out: out.to_owned(),
            tmp,
            tar: tokio::sync::Mutex::new(Some(tar)),
            written: Mutex::new(HashSet::new()),
            since,
            refs: Mutex::new(Vec::new()),
        })
    }

    /// Whether the bundle holds manifest `d` already.
    pub fn has_manifest(&self, d: &Digest) -> bool {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(d)
    }

    /// Whether blob `d` is in this bundle or in the one it is `--since`.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.since.contains(d) || self.has_manifest(d)
    }

    /// Writes a manifest's bytes (once) and, with `tag`, names it in the index.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        bytes: &bytes::Bytes,
        m: &Manifest,
        tag: Option<&Tag>,
    ) -> Result<(), BundleError> {
        if !self.has_manifest(digest) {
            use futures::StreamExt;
            let body: ByteStream =
                futures::stream::once(std::future::ready(Ok(bytes.clone()))).boxed();
            self.put_blob(digest, body, bytes.len() as u64).await?;
        }
        let mut entry = json!({
            "mediaType": m.media_type,
            "digest": digest.to_string(),
            "size": bytes.len(),
        });
        match (tag, &m.subject) {
            (Some(t), _) => {
                entry["annotations"] = json!({ REF_NAME: format!("{repo}:{}", t.as_str()) })
            }
            (None, Some(_)) => {} // a referrer: listed so that an import finds it
            (None, None) => return Ok(()),
        }
        self.refs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry);
        Ok(())
    }

    /// Streams blob `digest` of `size` bytes into the bundle, checking both as it goes.
    pub async fn put_blob(
        &self,
        digest: &Digest,
        body: ByteStream,
        size: u64,
    ) -> Result<u64, BundleError> {
        let mut slot = self.tar.lock().await;
        let mut tar = slot.take().ok_or_else(|| BundleError::Bad {
            digest: digest.clone(),
            reason: "the bundle was abandoned after an earlier error".into(),
        })?;
        let (d, tmp) = (digest.clone(), self.tmp.clone());
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(body));
        let (tar, result) = tokio::task::spawn_blocking(move || {
            let mut checked = Checked {
                inner: reader,
                hash: d.algorithm().digester(),
                n: 0,
                limit: size,
            };
            let wrote = append(&mut tar, &blob_path(&d), size, &mut checked);
            let result = match wrote {
                Err(e) => Err(BundleError::Io {
                    path: tmp,
                    source: e,
                }),
                Ok(()) if checked.n != size => Err(BundleError::Bad {
                    digest: d.clone(),
                    reason: format!("{} bytes, not {size}", checked.n),
                }),
                Ok(()) => match checked.hash.finish() {
                    got if got == d => Ok(size),
                    got => Err(BundleError::Bad {
                        digest: d.clone(),
                        reason: format!("the bytes have digest {got}"),
                    }),
                },
            };
            (tar, result)
        })
        .await
        .map_err(|e| BundleError::Io {
            path: self.tmp.clone(),
            source: std::io::Error::other(e),
        })?;
        if result.is_ok() {
            // After a bad entry the bundle is given up: the slot stays empty.
            *slot = Some(tar);
            self.written
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(digest.clone());
        }
        result
    }

    /// Writes `index.json`, closes the tar and renames it into place.
    pub fn finish(self) -> Result<PathBuf, BundleError> {
        let Some(mut tar) = self.tar.into_inner() else {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(BundleError::Io {
                path: self.out,
                source: std::io::Error::other("not written: a blob failed"),
            });
        };
        let refs = self.refs.into_inner().unwrap_or_else(|p| p.into_inner());
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": refs,
        }))
        .unwrap_or_default();
        let tmp = self.tmp.clone();
        append(&mut tar, "index.json", index.len() as u64, &mut &index[..]).map_err(io(&tmp))?;
        let file = tar.into_inner().map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &self.out).map_err(io(&tmp))?;
        Ok(self.out)
    }

    /// Removes what was written of a bundle that failed.
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn append(
    tar: &mut tar::Builder<std::fs::File>,
    path: &str,
    size: u64,
    data: &mut dyn Read,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, data.take(size))?;
    tar.get_mut().flush()
}

/// Counts and hashes what passes through, and stops at the declared size.
struct Checked<R> {
    inner: R,
    hash: Digester,
    n: u64,
    limit: u64,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        if self.n > self.limit {
            return Err(std::io::Error::other(
                "more bytes than the descriptor's size",
            ));
        }
        Ok(n)
    }
}

/// A bundle read as a mirror source: where each entry lies, and its index.
pub struct Reader {
    path: PathBuf,
    /// digest -> (offset of its bytes in the file, size)
    entries: HashMap<Digest, (u64, u64)>,
    /// `<repository>:<tag>` -> the manifest's descriptor
    refs: BTreeMap<String, Descriptor>,
    /// subject -> the referrers the bundle carries (index entries without a ref name)
    referrers: HashMap<Digest, Vec<Descriptor>>,
}

impl Reader {
    /// Reads the tar's headers and its `index.json`; a truncated or unreadable bundle is
    /// refused here, before anything is copied.
    pub fn open(path: &Path) -> Result<Reader, BundleError> {
        let bad = |reason: String| BundleError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(reason),
        };
        let file = std::fs::File::open(path).map_err(io(path))?;
        let file_len = file.metadata().map_err(io(path))?.len();
        let mut archive = tar::Archive::new(file);
        let mut entries = HashMap::new();
        let mut index = None;
        for entry in archive.entries_with_seek().map_err(io(path))? {
            let mut entry = entry.map_err(|e| bad(format!("truncated or corrupt: {e}")))?;
            let name = entry
                .path()
                .map_err(io(path))?
                .to_string_lossy()
                .into_owned();
            if name == "index.json" {
                let mut text = Vec::new();
                entry
                    .read_to_end(&mut text)
                    .map_err(|e| bad(format!("index.json: {e}")))?;
                index = Some(text);
            } else if let Some(d) = entry_digest(&name) {
                let (at, n) = (entry.raw_file_position(), entry.size());
                if at + n > file_len {
                    return Err(bad(format!("truncated: blob {d} runs past the end")));
                }
                entries.insert(d, (at, n));
            }
        }
        let index = index.ok_or_else(|| bad("truncated: it has no index.json".into()))?;
        let index = Manifest::parse(&index, Some("application/vnd.oci.image.index.v1+json"))
            .map_err(|e| bad(format!("index.json: {e}")))?;
        let mut reader = Reader {
            path: path.to_owned(),
            entries,
            refs: BTreeMap::new(),
            referrers: HashMap::new(),
        };
        for d in index.manifests {
            match d
                .annotations
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .cloned()
            {
                Some(name) => {
                    reader.refs.insert(name, d);
                }
                None => {
                    // A referrer: its subject is in its own bytes.
                    let bytes = reader.read_sync(&d.digest)?;
                    if let Some(subject) = Manifest::parse(&bytes, Some(&d.media_type))
                        .ok()
                        .and_then(|m| m.subject)
                    {
                        reader.referrers.entry(subject.digest).or_default().push(d);
                    }
                }
            }
        }
        Ok(reader)
    }

    /// The repositories the bundle names, with their tags.
    pub fn repositories(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in self.refs.keys() {
            if let Some((repo, tag)) = name.rsplit_once(':') {
                out.entry(repo.to_owned()).or_default().push(tag.to_owned());
            }
        }
        out
    }

    pub fn tags(&self, repo: &str) -> Vec<String> {
        self.repositories().remove(repo).unwrap_or_default()
    }

    pub fn holds(&self, d: &Digest) -> bool {
        self.entries.contains_key(d)
    }

    /// The referrers of `digest` the bundle carries.
    pub fn referrers(&self, digest: &Digest) -> Vec<Descriptor> {
        self.referrers.get(digest).cloned().unwrap_or_default()
    }

    /// The manifest a tag or digest names, checked against its digest.
    pub async fn manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<FetchedManifest>, BundleError> {
        let (digest, media_type) = match self.refs.get(&format!("{repo}:{reference}")) {
            Some(d) => (d.digest.clone(), Some(d.media_type.clone())),
            None => match reference.parse::<Digest>() {
                Ok(d) => (d, None),
                Err(_) => return Ok(None),
            },
        };
        if !self.holds(&digest) {
            return Ok(None);
        }
        let (path, d) = (self.path.clone(), digest.clone());
        let entry = self.entries.get(&digest).copied();
        let bytes = tokio::task::spawn_blocking(move || read_entry(&path, &d, entry))
            .await
            .map_err(|e| BundleError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(e),
            })??;
        Ok(Some(FetchedManifest {
            bytes: bytes.into(),
            media_type,
        }))
    }

    /// A blob's bytes as they lie in the bundle; the destination verifies its digest.
    pub async fn blob(&self, d: &Digest) -> Result<Option<FetchedBlob>, BundleError> {
        use futures::StreamExt;
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let Some(&(at, size)) = self.entries.get(d) else {
            return Ok(None);
        };
        let mut f = tokio::fs::File::open(&self.path)
            .await
            .map_err(io(&self.path))?;
        f.seek(std::io::SeekFrom::Start(at))
            .await
            .map_err(io(&self.path))?;
        let body = tokio_util::io::ReaderStream::with_capacity(f.take(size), 1 << 20).boxed();
        Ok(Some(FetchedBlob {
            size: Some(size),
            body,
        }))
    }

    fn read_sync(&self, d: &Digest) -> Result<Vec<u8>, BundleError> {
        read_entry(&self.path, d, self.entries.get(d).copied())
    }
}

/// A manifest entry's bytes, refused when they are not what their name says.
fn read_entry(path: &Path, d: &Digest, entry: Option<(u64, u64)>) -> Result<Vec<u8>, BundleError> {
    use std::io::{Seek, SeekFrom};
    let bad = |reason: String| BundleError::Bad {
        digest: d.clone(),
        reason,
    };
    let (at, size) = entry.ok_or_else(|| bad("not in the bundle".into()))?;
    if size > MAX_MANIFEST_BYTES as u64 {
        return Err(bad(format!("{size} bytes: too large for a manifest")));
    }
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    f.seek(SeekFrom::Start(at)).map_err(io(path))?;
    let mut buf = Vec::with_capacity(size as usize);
    f.take(size).read_to_end(&mut buf).map_err(io(path))?;
    let got = d.algorithm().digest_of(&buf);
    if &got != d {
        return Err(bad(format!(
            "the bundle's bytes have digest {got}: the bundle was altered"
        )));
    }
    Ok(buf)
}
