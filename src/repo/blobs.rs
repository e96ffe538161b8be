//! Blob links: `_blobs/<alg>/<hex>` (empty) says the repository may serve that blob. The
//! bytes themselves are stored once per registry.

use std::time::SystemTime;

use super::{Repository, Result};
use crate::oci::{Algorithm, Digest};
use crate::store::{MetaDir, MetaKey};

impl Repository<'_> {
    /// Whether the repository may serve `digest` as a blob: a linked layer or config, or one
    /// of its manifests.
    pub async fn serves_blob(&self, digest: &Digest) -> Result<bool> {
        Ok(self.blob_linked(digest).await? || self.has_manifest(digest).await?)
    }

    pub async fn blob_linked(&self, digest: &Digest) -> Result<bool> {
        Ok(self
            .store
            .meta_exists(&MetaKey::blob_link(self.name, digest))
            .await?)
    }

    /// Marks the link as in use now; `false` when there is none.
    pub async fn touch_blob_link(&self, digest: &Digest) -> Result<bool> {
        Ok(self
            .store
            .meta_touch(&MetaKey::blob_link(self.name, digest))
            .await?)
    }

    /// Links a blob the store holds (after an upload committed it).
    pub async fn link_blob(&self, digest: &Digest) -> Result<()> {
        self.store
            .meta_put(&MetaKey::blob_link(self.name, digest), b"")
            .await?;
        Ok(())
    }

    /// Links a blob that is already stored, as a mount does: `from`, when given, must link it
    /// too. The blob is touched first (restarting gc's grace period), so it cannot be swept
    /// between the check and the link. Returns whether it was linked.
    pub async fn mount_blob(&self, digest: &Digest, from: Option<&Repository<'_>>) -> Result<bool> {
        if let Some(from) = from
            && !from.blob_linked(digest).await?
        {
            return Ok(false);
        }
        if self.store.blob_touch(digest).await?.is_none() {
            return Ok(false);
        }
        self.link_blob(digest).await?;
        Ok(true)
    }

    /// Removes the link; `false` when there was none. The bytes stay for gc.
    pub async fn unlink_blob(&self, digest: &Digest) -> Result<bool> {
        Ok(self
            .store
            .meta_delete(&MetaKey::blob_link(self.name, digest))
            .await?)
    }

    /// Every linked blob.
    pub async fn blob_links(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = MetaDir::repo_blobs(self.name, alg);
            for name in self.store.meta_list(&dir).await? {
                if let Ok(d) = Digest::from_parts(alg, &name) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Removes the link unless it was written at or after `cutoff` (gc's protocol).
    pub async fn unlink_blob_if_stale(&self, digest: &Digest, cutoff: SystemTime) -> Result<bool> {
        Ok(self
            .store
            .meta_delete_if_stale(&MetaKey::blob_link(self.name, digest), cutoff)
            .await?)
    }
}
