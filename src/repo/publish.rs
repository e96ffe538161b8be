//! The touch protocol that lets gc sweep while clients push, on the write side: every use
//! touches what it relies on, and a manifest is answered 201 only after a second touch that
//! follows its record. `crate::gc` sweeps by the same clock and explains why no 201 can point
//! at a deleted blob. This file and gc's sweep are the two halves; change them together.

use std::time::SystemTime;

use bytes::Bytes;
use futures::future::try_join_all;

use super::{RepoError, Repository, Result};
use crate::oci::{Descriptor, Digest, Manifest, Tag};

impl Repository<'_> {
    /// Checks that every blob and child manifest `m` references is in the repository,
    /// touching each so that gc's grace period restarts for it: a collection that raced this
    /// check either sees the touch and keeps the item, or has already removed it and the check
    /// fails. With `sparse`, an index's children that are not here are allowed (and those that
    /// are, touched).
    pub async fn touch_references(&self, m: &Manifest, sparse: bool) -> Result<()> {
        let blob_checks = m.required_blobs().map(|d: &Descriptor| async move {
            // Touching the link (not only asking for it) keeps gc from pruning it as unused
            // while this manifest is being recorded.
            let size = if self.touch_blob_link(&d.digest).await? {
                self.store.blob_touch(&d.digest).await?
            } else {
                None
            };
            match size {
                None => Err(RepoError::Missing(d.digest.clone())),
                Some(s) if s != d.size => Err(RepoError::SizeMismatch {
                    digest: d.digest.clone(),
                    declared: d.size,
                    actual: s,
                }),
                Some(_) => Ok(()),
            }
        });
        try_join_all(blob_checks).await?;
        let child_checks = m.manifests.iter().map(|d| async move {
            let present = self.touch_manifest(&d.digest).await?
                && self.store.blob_touch(&d.digest).await?.is_some();
            // With `sparse`, a missing child is a platform the index's pusher left out.
            if present || sparse {
                Ok(())
            } else {
                Err(RepoError::Missing(d.digest.clone()))
            }
        });
        try_join_all(child_checks).await?;
        Ok(())
    }

    /// Stores manifest `m` (`bytes`, whose digest the caller computed) as a revision of the
    /// repository, records it as a referrer of its subject, and points `tags` at it, in that
    /// order, so a reader never sees a tag that points at something missing. Nothing is
    /// recorded unless every reference is present, and if gc removed one between the first
    /// touch and the record, the record is undone and the reference reported missing.
    /// `sparse` lets an index leave out child manifests (see [`Self::touch_references`]).
    pub async fn publish(
        &self,
        digest: &Digest,
        bytes: &Bytes,
        m: &Manifest,
        tags: &[&Tag],
        sparse: bool,
    ) -> Result<()> {
        self.touch_references(m, sparse).await?;
        let existed = self.has_manifest(digest).await?;
        self.store.blob_put(digest, bytes.clone()).await?;
        self.link_manifest(digest, &m.media_type).await?;
        if let Some(subject) = &m.subject {
            self.add_referrer(&subject.digest, &referrer_entry(digest, bytes, m))
                .await?;
        }
        // Now that the manifest is recorded, touch everything again. If a collection removed
        // something between the first touch and the record, this is where it shows.
        let recheck = async {
            self.touch_references(m, sparse).await?;
            if self.store.blob_touch(digest).await?.is_none() {
                return Err(RepoError::Missing(digest.clone()));
            }
            Ok(())
        }
        .await;
        if let Err(e) = recheck {
            if !existed {
                self.unlink_manifest(digest).await?;
                if let Some(subject) = &m.subject {
                    self.remove_referrer(&subject.digest, digest).await?;
                }
            }
            return Err(e);
        }
        for tag in tags {
            self.set_tag(tag, digest).await?;
        }
        Ok(())
    }

    /// Keeps a manifest fetched from an upstream (pull-through cache), whose digest the
    /// caller verified: stored and linked, and recorded as a referrer of its subject. Unlike
    /// [`publish`](Self::publish) its references are not required: the cache fetches blobs
    /// when they are pulled.
    pub async fn cache_manifest(&self, digest: &Digest, bytes: &Bytes, m: &Manifest) -> Result<()> {
        self.store.blob_put(digest, bytes.clone()).await?;
        self.link_manifest(digest, &m.media_type).await?;
        if let Some(subject) = &m.subject {
            self.add_referrer(&subject.digest, &referrer_entry(digest, bytes, m))
                .await?;
        }
        Ok(())
    }

    /// Deletes a manifest revision: its entry among its subject's referrers, the tags that
    /// point at it, then the revision itself. `bytes` are the manifest's, when still readable.
    /// Returns `false` when the repository does not hold it.
    pub async fn delete_manifest(&self, digest: &Digest, bytes: Option<&Bytes>) -> Result<bool> {
        if !self.has_manifest(digest).await? {
            return Ok(false);
        }
        if let Some(b) = bytes
            && let Ok(m) = Manifest::parse(b, None)
            && let Some(subject) = m.subject
        {
            self.remove_referrer(&subject.digest, digest).await?;
        }
        for tag in self.tags_pointing_at(digest).await? {
            self.delete_tag(&tag).await?;
        }
        self.unlink_manifest(digest).await?;
        Ok(true)
    }

    /// gc's half: removes a revision nothing keeps unless it was touched at or after
    /// `cutoff`, then its entry among `subject`'s referrers. Returns whether it went.
    pub async fn retire_manifest_if_stale(
        &self,
        digest: &Digest,
        subject: Option<&Digest>,
        cutoff: SystemTime,
    ) -> Result<bool> {
        if !self.unlink_manifest_if_stale(digest, cutoff).await? {
            return Ok(false);
        }
        if let Some(s) = subject {
            self.remove_referrer(s, digest).await?;
        }
        Ok(true)
    }
}

/// What the referrers API lists for manifest `m`.
fn referrer_entry(digest: &Digest, bytes: &Bytes, m: &Manifest) -> Descriptor {
    Descriptor {
        media_type: m.media_type.clone(),
        digest: digest.clone(),
        size: bytes.len() as u64,
        urls: None,
        artifact_type: m.referrer_artifact_type(),
        annotations: m.annotations.clone(),
        platform: None,
    }
}
