//! Referrers: `_referrers/<subject alg>/<hex>/<alg>-<hex>` records a manifest whose `subject`
//! is that digest, holding the referrer's descriptor as JSON (what the referrers API lists).

use super::{RepoError, Repository, Result};
use crate::oci::{Descriptor, Digest};
use crate::store::layout::referrer_entry_digest;
use crate::store::{MetaDir, MetaKey};

impl Repository<'_> {
    pub(super) async fn add_referrer(&self, subject: &Digest, entry: &Descriptor) -> Result<()> {
        let json = serde_json::to_vec(entry).map_err(|e| RepoError::Corrupt(e.to_string()))?;
        self.store
            .meta_put(&MetaKey::referrer(self.name, subject, &entry.digest), &json)
            .await?;
        Ok(())
    }

    pub(super) async fn remove_referrer(
        &self,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<bool> {
        Ok(self
            .store
            .meta_delete(&MetaKey::referrer(self.name, subject, referrer))
            .await?)
    }

    /// The digests recorded as referrers of `subject`, whether or not they still exist.
    pub async fn referrer_digests(&self, subject: &Digest) -> Result<Vec<Digest>> {
        let dir = MetaDir::referrers(self.name, subject);
        Ok(self
            .store
            .meta_list(&dir)
            .await?
            .iter()
            .filter_map(|n| referrer_entry_digest(n))
            .collect())
    }

    /// The descriptors of the manifests that refer to `subject`. An entry whose manifest was
    /// deleted since, or that cannot be read, is skipped (and left for gc).
    pub async fn referrers(&self, subject: &Digest) -> Result<Vec<Descriptor>> {
        let mut out = Vec::new();
        for referrer in self.referrer_digests(subject).await? {
            if !self.has_manifest(&referrer).await? {
                continue;
            }
            let key = MetaKey::referrer(self.name, subject, &referrer);
            let Some(raw) = self.store.meta_get(&key).await? else {
                continue;
            };
            match serde_json::from_slice::<Descriptor>(&raw) {
                Ok(d) => out.push(d),
                Err(_) => {
                    tracing::warn!(repo = %self.name, %subject, %referrer, "unreadable referrer entry skipped")
                }
            }
        }
        Ok(out)
    }
}
