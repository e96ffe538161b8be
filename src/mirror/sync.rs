//! Copying a mirror set into a registry (`berth mirror sync`), its storage or its API.
//!
//! Each chosen tag's manifest is copied children first: blobs (each verified by its digest
//! as it is written, and linked only then), an index's chosen platforms, then the manifest
//! itself through the repository layer's `publish`, the same write path a push takes, so gc's
//! touch protocol holds while a registry serves the same storage. What the destination
//! already has by digest is linked or skipped without a byte moved; a sync that was killed is
//! resumed by running it again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::dest::{DestError, Destination};
use super::progress::Progress;
use super::set::Mirror;
use super::source::{Source, SourceError};
use crate::oci::{Descriptor, Digest, Manifest, ManifestKind, Tag};
use crate::proxy::Upstream;
use crate::proxy::metrics::ProxyMetrics;

/// Blobs copied at once per image.
const BLOB_CONCURRENCY: usize = 4;
/// Tags copied at once per mirror.
const TAG_CONCURRENCY: usize = 4;

/// What a sync did; printed as one JSON line with `--json`.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Tags copied or found up to date.
    pub images: u64,
    pub manifests_copied: u64,
    pub blobs_copied: u64,
    /// Blobs the destination had (by digest): nothing moved.
    pub blobs_skipped: u64,
    pub bytes_copied: u64,
    /// Tags the source listed but no longer had when asked for them (deleted meanwhile):
    /// skipped, not failed.
    pub tags_vanished: u64,
    /// One line per failure; the sync goes on with the rest.
    pub errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_compact_report_fits_a_termination_message() {
        let mut r = super::Report {
            images: 3,
            bytes_copied: 1 << 30,
            ..Default::default()
        };
        r.errors = (0..100)
            .map(|i| format!("image {i}: {}", "x".repeat(500)))
            .collect();
        let text = r.compact();
        assert!(text.len() <= 4000, "{}", text.len());
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["errorCount"], 100);
        assert_eq!(v["bytesCopied"], 1u64 << 30);
        assert!(!v["errors"].as_array().unwrap().is_empty());
        assert!(v["errors"][0].as_str().unwrap().chars().count() <= 300);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("{0}")]
    Dest(#[from] DestError),
    #[error("blob {digest}: {source}")]
    Blob { digest: Digest, source: DestError },
    #[error("{0}")]
    Invalid(String),
    #[error("the source has no manifest {0}")]
    Missing(String),
    #[error("the tag is gone from the source")]
    Vanished,
}

impl CopyError {
    /// Whether the same copy may succeed later (a side down, busy or refusing credentials),
    /// rather than never (content the destination refuses, a source that lies).
    pub fn retryable(&self) -> bool {
        match self {
            CopyError::Source(e) => e.retryable(),
            CopyError::Dest(e) | CopyError::Blob { source: e, .. } => e.retryable(),
            CopyError::Invalid(_) | CopyError::Missing(_) | CopyError::Vanished => false,
        }
    }
}

/// One mirror's source and destination, and the running totals.
struct Copier<'a> {
    mirror: &'a Mirror,
    source: &'a Source,
    dest: &'a Destination,
    /// What a person watching sees (nothing for `--json`).
    progress: &'a Progress,
    report: Mutex<Report>,
    /// Manifests done in this run (indexes share children; referrers may repeat).
    done: Mutex<HashSet<Digest>>,
    /// One copy of a digest at a time: tags copied at once share layers and children, and
    /// the second waits for the first, then finds it there.
    busy: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

/// Copies every mirror of the set into `dest`; failures are counted in the report, never
/// fatal to the rest. Each mirror's source is its registry.
pub async fn sync(mirrors: &[Mirror], dest: &Destination, progress: &Progress) -> Report {
    let mut total = Report::default();
    for m in mirrors {
        let source = match Upstream::from_config(0, &m.upstream_config(), ProxyMetrics::default()) {
            Ok(u) => Source::Registry(Box::new(u)),
            Err(e) => {
                total
                    .errors
                    .push(format!("{}: {}: {}", m.registry, e.field, e.reason));
                continue;
            }
        };
        let r = sync_one(m, &source, dest, progress).await;
        total.add(r);
    }
    total
}

/// Copies every image a bundle names into `dest` (`mirror import`).
pub async fn import(
    bundle: std::sync::Arc<super::bundle::Reader>,
    dest: &Destination,
    progress: &Progress,
) -> Report {
    let mut total = Report::default();
    let source = Source::Bundle(bundle.clone());
    for (repo, tags) in bundle.repositories() {
        let m = match Mirror::of_bundle(&repo, &tags) {
            Ok(m) => m,
            Err(e) => {
                total.errors.push(format!("{repo}: {e}"));
                continue;
            }
        };
        total.add(sync_one(&m, &source, dest, progress).await);
    }
    total
}

/// The most a compact report holds (a Kubernetes termination message is cut at 4096 bytes).
const COMPACT_MAX: usize = 4000;

impl Report {
    /// The report as one JSON line of at most 4000 bytes: the counts, `errorCount`, and as
    /// many of the errors (each cut to 300 characters) as fit.
    pub fn compact(&self) -> String {
        let cut = |e: &String| e.chars().take(300).collect::<String>();
        let mut errors: Vec<String> = Vec::new();
        loop {
            let v = serde_json::json!({
                "images": self.images,
                "manifestsCopied": self.manifests_copied,
                "blobsCopied": self.blobs_copied,
                "blobsSkipped": self.blobs_skipped,
                "bytesCopied": self.bytes_copied,
                "tagsVanished": self.tags_vanished,
                "errorCount": self.errors.len(),
                "errors": errors,
            });
            let text = v.to_string();
            let more = self.errors.get(errors.len());
            match more {
                Some(e) if text.len() + e.len().min(300) + 8 < COMPACT_MAX => errors.push(cut(e)),
                _ => return text,
            }
        }
    }

    fn add(&mut self, r: Report) {
        self.images += r.images;
        self.manifests_copied += r.manifests_copied;
        self.blobs_copied += r.blobs_copied;
        self.blobs_skipped += r.blobs_skipped;
        self.bytes_copied += r.bytes_copied;
        self.tags_vanished += r.tags_vanished;
        self.errors.extend(r.errors);
    }
}

/// Copies manifest `digest` of `m`'s repository (children, blobs and, when `m` takes them,
/// referrers first) and points `tags` at it: one push, replicated. The report counts what
/// moved; the error says whether trying again may help.
pub async fn copy_image(
    m: &Mirror,
    source: &Source,
    dest: &Destination,
    digest: &Digest,
    tags: &[Tag],
) -> Result<Report, CopyError> {
    let quiet = Progress::quiet();
    let c = Copier::new(m, source, dest, &quiet);
    let (digest, bytes, media) = c.fetch_manifest(&digest.to_string(), Some(digest)).await?;
    let parsed = Manifest::parse(&bytes, media.as_deref())
        .map_err(|e| CopyError::Invalid(format!("manifest {digest}: {e}")))?;
    c.copy_manifest(&digest, &bytes, &parsed).await?;
    for tag in tags {
        c.point(tag, &digest, &bytes, &parsed).await?;
    }
    c.with(|r| r.images += 1);
    Ok(c.finish())
}

/// Copies every chosen tag of one mirror.
pub async fn sync_one(
    m: &Mirror,
    source: &Source,
    dest: &Destination,
    progress: &Progress,
) -> Report {
    let c = Copier::new(m, source, dest, progress);
    let from = format!("{}/{}", m.registry, m.repository);
    let tags = match c.source.tags(&m.repository).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            c.error(format!("{from}: no such repository"));
            return c.finish();
        }
        Err(e) => {
            c.error(format!("{from}: cannot list tags: {e}"));
            return c.finish();
        }
    };
    let mut chosen: Vec<String> = m
        .tags
        .choose(&tags)
        .into_iter()
        .map(str::to_owned)
        .collect();
    if let Some(n) = m.tags.newest_by_created() {
        let c = &c;
        let timed: Vec<(String, Option<std::time::SystemTime>)> = futures::stream::iter(chosen)
            .map(|t| async move {
                let when = c.created(&t).await;
                (t, when)
            })
            .buffered(BLOB_CONCURRENCY * 2)
            .collect()
            .await;
        chosen = crate::mirror::select::TagSelect::newest_by_time(timed, n);
    }
    tracing::info!(source = %from, destination = %m.destination, tags = chosen.len(), "mirroring");
    progress.chosen(chosen.len());
    futures::stream::iter(chosen)
        .for_each_concurrent(TAG_CONCURRENCY, |tag| {
            let (c, from) = (&c, &from);
            async move {
                match c.copy_tag(&tag).await {
                    Ok(()) => {
                        c.with(|r| r.images += 1);
                        let line = format!("{}:{tag} from {from}", m.destination);
                        c.progress.image(&line, false);
                    }
                    Err(CopyError::Vanished) => {
                        c.with(|r| r.tags_vanished += 1);
                        tracing::info!(source = %from, %tag, "a listed tag is gone from the source; skipped");
                        let line = format!("{from}:{tag} is gone from the source; skipped");
                        c.progress.image(&line, false);
                    }
                    Err(e) => {
                        let line = format!("{from}:{tag}: {e}");
                        c.progress.image(&line, true);
                        c.error(line);
                    }
                }
            }
        })
        .await;
    c.finish()
}

impl<'a> Copier<'a> {
    fn new(
        mirror: &'a Mirror,
        source: &'a Source,
        dest: &'a Destination,
        progress: &'a Progress,
    ) -> Self {
        Copier {
            mirror,
            source,
            dest,
            progress,
            report: Mutex::new(Report::default()),
            done: Mutex::new(HashSet::new()),
            busy: Mutex::new(HashMap::new()),
        }
    }

    /// When the image `tag` names was built: its config's `created` (for an index, that of
    /// the first platform the mirror takes). `None` when the source does not say.
    async fn created(&self, tag: &str) -> Option<std::time::SystemTime> {
        let (_, bytes, media) = self.fetch_manifest(tag, None).await.ok()?;
        let mut m = Manifest::parse(&bytes, media.as_deref()).ok()?;
        if m.kind == ManifestKind::Index {
            let child = m.manifests.iter().find(|c| self.wanted(c))?.clone();
            let (_, bytes, media) = self
                .fetch_manifest(&child.digest.to_string(), Some(&child.digest))
                .await
                .ok()?;
            m = Manifest::parse(&bytes, media.as_deref().or(Some(&child.media_type))).ok()?;
        }
        let config = m.config.as_ref().filter(|c| c.size <= 1 << 20)?;
        let blob = self
            .source
            .blob(&self.mirror.repository, &config.digest)
            .await
            .ok()??;
        let body: Vec<bytes::Bytes> = blob.body.take(64).try_collect().await.ok()?;
        let v: serde_json::Value = serde_json::from_slice(&body.concat()).ok()?;
        humantime::parse_rfc3339_weak(v["created"].as_str()?).ok()
    }

    /// Points `tag` at the copied manifest, unless it points there already. Done last: a
    /// tag never points at something not all there.
    async fn point(
        &self,
        tag: &Tag,
        digest: &Digest,
        bytes: &Bytes,
        m: &Manifest,
    ) -> Result<(), CopyError> {
        let dest = &self.mirror.destination;
        if self.dest.tag(dest, tag).await?.as_ref() != Some(digest) {
            self.dest
                .put_manifest(dest, digest, bytes, m, Some(tag), self.sparse(m))
                .await?;
        }
        Ok(())
    }

    fn with(&self, f: impl FnOnce(&mut Report)) {
        f(&mut self.report.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn error(&self, e: String) {
        tracing::debug!("{e}");
        self.with(|r| r.errors.push(e));
    }

    fn finish(self) -> Report {
        self.report.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until no other task of this sync is copying `digest`.
    async fn exclusive(&self, digest: &Digest) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(digest.clone())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    async fn copy_tag(&self, tag: &str) -> Result<(), CopyError> {
        let tag: Tag = tag
            .parse()
            .map_err(|_| CopyError::Invalid(format!("the source's tag {tag:?} is not valid")))?;
        let (digest, bytes, media) = match self.fetch_manifest(tag.as_str(), None).await {
            Err(CopyError::Missing(_)) => return Err(CopyError::Vanished),
            r => r?,
        };
        let m = Manifest::parse(&bytes, media.as_deref())
            .map_err(|e| CopyError::Invalid(format!("manifest {digest}: {e}")))?;
        self.copy_manifest(&digest, &bytes, &m).await?;
        self.point(&tag, &digest, &bytes, &m).await
    }

    /// A manifest's bytes from the source, checked against `want` (or the digest it has).
    async fn fetch_manifest(
        &self,
        reference: &str,
        want: Option<&Digest>,
    ) -> Result<(Digest, Bytes, Option<String>), CopyError> {
        let name = &self.mirror.repository;
        let fetched = self
            .source
            .manifest(name, reference)
            .await?
            .ok_or_else(|| CopyError::Missing(reference.to_owned()))?;
        let alg = want.map_or(crate::oci::Algorithm::Sha256, |d| d.algorithm());
        let digest = alg.digest_of(&fetched.bytes);
        if let Some(w) = want
            && w != &digest
        {
            return Err(CopyError::Invalid(format!(
                "the source sent manifest bytes of digest {digest} for {w}"
            )));
        }
        Ok((digest, fetched.bytes, fetched.media_type))
    }

    /// Copies `m` and all it needs (children first), then its referrers when asked.
    async fn copy_manifest(
        &self,
        digest: &Digest,
        bytes: &Bytes,
        m: &Manifest,
    ) -> Result<(), CopyError> {
        let _only = self.exclusive(digest).await;
        if self
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(digest)
        {
            return Ok(());
        }
        if m.kind == ManifestKind::Index {
            // Collected first: an iterator adapter held across an await keeps the future
            // from being Send (replication runs it in a spawned task).
            let children: Vec<&Descriptor> = m.manifests.iter().filter(|c| self.takes(c)).collect();
            for child in children {
                self.copy_child(child).await?;
            }
        }
        let dest = &self.mirror.destination;
        if !self.dest.has_manifest(dest, digest).await? {
            let blobs: Vec<Descriptor> = m
                .required_blobs()
                .filter(|d| !d.is_foreign())
                .cloned()
                .collect();
            futures::stream::iter(blobs)
                .map(|d| async move { self.copy_blob(&d).await })
                .buffer_unordered(BLOB_CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
            self.dest
                .put_manifest(dest, digest, bytes, m, None, self.sparse(m))
                .await?;
            self.with(|r| r.manifests_copied += 1);
        }
        if self.mirror.referrers {
            for r in self
                .source
                .referrers(&self.mirror.repository, digest)
                .await?
            {
                self.copy_child(&r).await?;
            }
        }
        // Only a copy that succeeded counts: a later path to it tries again.
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.clone());
        Ok(())
    }

    /// Copies a manifest named by a descriptor (an index's child, a referrer).
    async fn copy_child(&self, d: &Descriptor) -> Result<(), CopyError> {
        let (digest, bytes, media) = self
            .fetch_manifest(&d.digest.to_string(), Some(&d.digest))
            .await?;
        let m = Manifest::parse(&bytes, media.as_deref().or(Some(&d.media_type)))
            .map_err(|e| CopyError::Invalid(format!("manifest {digest}: {e}")))?;
        Box::pin(self.copy_manifest(&digest, &bytes, &m)).await
    }

    /// Whether the copy takes an index's child: a platform the mirror wants, which the source
    /// has (a bundle holds only the platforms its set chose).
    fn takes(&self, child: &Descriptor) -> bool {
        self.wanted(child) && !self.source.left_out(&child.digest)
    }

    /// Whether `m` is an index the copy leaves children of out (a sparse index).
    fn sparse(&self, m: &Manifest) -> bool {
        m.kind == ManifestKind::Index && !m.manifests.iter().all(|c| self.takes(c))
    }

    /// Whether an index entry is a platform the mirror takes (entries without a platform,
    /// such as attestation manifests, go with the index).
    fn wanted(&self, child: &Descriptor) -> bool {
        let platforms = &self.mirror.platforms;
        let Some(p) = child.platform.as_ref().filter(|_| !platforms.is_empty()) else {
            return true;
        };
        let field = |k: &str| p.get(k).and_then(|v| v.as_str());
        let (Some(os), Some(arch)) = (field("os"), field("architecture")) else {
            return true;
        };
        if os == "unknown" && arch == "unknown" {
            return true; // buildx's attestation manifests ride along with the images
        }
        platforms
            .iter()
            .any(|want| want.matches(os, arch, field("variant")))
    }

    /// Makes blob `d` servable by the destination: there already (or linked from another of
    /// the store's repositories), else copied from the source; the destination verifies it.
    async fn copy_blob(&self, d: &Descriptor) -> Result<(), CopyError> {
        let _only = self.exclusive(&d.digest).await;
        let dest = &self.mirror.destination;
        if self.dest.has_blob(dest, &d.digest).await? {
            self.with(|r| r.blobs_skipped += 1);
            self.progress.blob_skipped();
            return Ok(());
        }
        let fetched = self
            .source
            .blob(&self.mirror.repository, &d.digest)
            .await?
            .ok_or_else(|| CopyError::Invalid(format!("the source has no blob {}", d.digest)))?;
        let size = fetched.size.or(Some(d.size));
        let written = self
            .dest
            .put_blob(dest, &d.digest, fetched.body, size)
            .await
            .map_err(|source| CopyError::Blob {
                digest: d.digest.clone(),
                source,
            })?;
        self.with(|r| {
            r.blobs_copied += 1;
            r.bytes_copied += written;
        });
        self.progress.blob_copied(written);
        Ok(())
    }
}
