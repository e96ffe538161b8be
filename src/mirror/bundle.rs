//! Mirror bundles: a set written as an OCI image layout in one tar file (`oci-layout`,
//! `blobs/<alg>/<hex>`, then `index.json` naming each image `<repository>:<tag>` in
//! `org.opencontainers.image.ref.name`), which skopeo and other OCI tools read as
//! `oci-archive:bundle.tar:<repository>:<tag>`. With `--since` a bundle leaves out the blobs an
//! earlier one holds; its index still names every image.
//!
//! Blobs are streamed from the source straight into the tar (one at a time: a tar is written
//! in order), each checked against its digest and size as it passes; a mismatch ends the
//! export, and a bundle is renamed into place only once it is whole.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::json;

use crate::oci::{Digest, Digester, Manifest, RepoName, Tag};
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
    /// Blobs in this bundle or in the one given with `--since`.
    have: Mutex<HashSet<Digest>>,
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
        if let Some(rest) = name.strip_prefix("blobs/")
            && let Some((alg, hex)) = rest.split_once('/')
            && let Ok(alg) = crate::oci::Algorithm::parse(alg)
            && let Ok(d) = Digest::from_parts(alg, hex)
        {
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
            have: Mutex::new(since),
            refs: Mutex::new(Vec::new()),
        })
    }

    pub fn has(&self, d: &Digest) -> bool {
        self.have
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(d)
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
        if !self.has(digest) {
            use futures::StreamExt;
            let body: ByteStream =
                futures::stream::once(std::future::ready(Ok(bytes.clone()))).boxed();
            self.put_blob(digest, body, bytes.len() as u64).await?;
        }
        if let Some(t) = tag {
            self.refs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(json!({
                    "mediaType": m.media_type,
                    "digest": digest.to_string(),
                    "size": bytes.len(),
                    "annotations": { REF_NAME: format!("{repo}:{}", t.as_str()) },
                }));
        }
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
            self.have
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
