//! Manifest revisions: `_manifests/<alg>/<hex>` says the repository holds the manifest with
//! that digest (its bytes are a blob) and records the media type it was pushed with.

use std::time::SystemTime;

use super::{Repository, Result};
use crate::oci::{Algorithm, Digest};
use crate::store::{MetaDir, MetaKey};

impl Repository<'_> {
    /// The media type `digest` was pushed with, `None` when the repository does not hold it.
    /// For serving: a revision a collection staged an instant ago is brought back.
    pub async fn manifest_media_type(&self, digest: &Digest) -> Result<Option<String>> {
        let link = MetaKey::manifest_link(self.name, digest);
        let media = match self.store.meta_get(&link).await? {
            Some(m) => m,
            None if self.store.meta_touch(&link).await? => {
                match self.store.meta_get(&link).await? {
                    Some(m) => m,
                    None => return Ok(None),
                }
            }
            None => return Ok(None),
        };
        Ok(Some(String::from_utf8_lossy(&media).into_owned()))
    }

    /// The media type as recorded, without reviving a staged revision (for gc's mark).
    pub async fn recorded_media_type(&self, digest: &Digest) -> Result<Option<String>> {
        let link = MetaKey::manifest_link(self.name, digest);
        Ok(self
            .store
            .meta_get(&link)
            .await?
            .map(|m| String::from_utf8_lossy(&m).into_owned()))
    }

    pub async fn has_manifest(&self, digest: &Digest) -> Result<bool> {
        Ok(self
            .store
            .meta_exists(&MetaKey::manifest_link(self.name, digest))
            .await?)
    }

    /// Every manifest revision the repository holds.
    pub async fn manifest_revisions(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = MetaDir::repo_manifests(self.name, alg);
            for name in self.store.meta_list(&dir).await? {
                if let Ok(d) = Digest::from_parts(alg, &name) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// When the revision was recorded or last touched.
    pub async fn manifest_touched_at(&self, digest: &Digest) -> Result<Option<SystemTime>> {
        Ok(self
            .store
            .meta_modified(&MetaKey::manifest_link(self.name, digest))
            .await?)
    }

    pub(super) async fn link_manifest(&self, digest: &Digest, media_type: &str) -> Result<()> {
        self.store
            .meta_put(
                &MetaKey::manifest_link(self.name, digest),
                media_type.as_bytes(),
            )
            .await?;
        Ok(())
    }

    /// Marks the revision as in use now (gc's protocol, and a cached manifest's last pull);
    /// `false` when it is gone.
    pub async fn touch_manifest(&self, digest: &Digest) -> Result<bool> {
        Ok(self
            .store
            .meta_touch(&MetaKey::manifest_link(self.name, digest))
            .await?)
    }

    pub(super) async fn unlink_manifest(&self, digest: &Digest) -> Result<bool> {
        Ok(self
            .store
            .meta_delete(&MetaKey::manifest_link(self.name, digest))
            .await?)
    }

    /// Removes the revision unless it was touched at or after `cutoff` (gc's protocol).
    pub async fn unlink_manifest_if_stale(
        &self,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<bool> {
        Ok(self
            .store
            .meta_delete_if_stale(&MetaKey::manifest_link(self.name, digest), cutoff)
            .await?)
    }
}
