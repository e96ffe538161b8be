//! Tags: `_tags/<tag>` holds the digest the tag points at, as text.

use std::time::SystemTime;

use super::{RepoError, Repository, Result};
use crate::oci::{Digest, Tag};
use crate::store::{MetaDir, MetaKey};

impl Repository<'_> {
    /// Where `tag` points, `None` when it does not exist.
    pub async fn tag(&self, tag: &Tag) -> Result<Option<Digest>> {
        let key = MetaKey::tag(self.name, tag);
        match self.store.meta_get(&key).await? {
            Some(raw) => self.parse_tag(tag, &raw).map(Some),
            None => Ok(None),
        }
    }

    /// Where `tag` points and when it was last moved (for retention), `None` when it does not
    /// exist.
    pub async fn tag_pushed(&self, tag: &Tag) -> Result<Option<(Digest, SystemTime)>> {
        let key = MetaKey::tag(self.name, tag);
        let (Some(raw), Some(when)) = (
            self.store.meta_get(&key).await?,
            self.store.meta_modified(&key).await?,
        ) else {
            return Ok(None);
        };
        Ok(Some((self.parse_tag(tag, &raw)?, when)))
    }

    fn parse_tag(&self, tag: &Tag, raw: &[u8]) -> Result<Digest> {
        std::str::from_utf8(raw)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                RepoError::Corrupt(format!(
                    "tag {tag} of {} holds an invalid digest",
                    self.name
                ))
            })
    }

    /// Points `tag` at `digest` (creating or moving it).
    pub async fn set_tag(&self, tag: &Tag, digest: &Digest) -> Result<()> {
        let key = MetaKey::tag(self.name, tag);
        self.store
            .meta_put(&key, digest.to_string().as_bytes())
            .await?;
        Ok(())
    }

    /// Removes `tag`; `false` when there was none.
    pub async fn delete_tag(&self, tag: &Tag) -> Result<bool> {
        Ok(self
            .store
            .meta_delete(&MetaKey::tag(self.name, tag))
            .await?)
    }

    /// Removes `tag` unless it was moved at or after `cutoff` (gc's protocol).
    pub async fn delete_tag_if_stale(&self, tag: &Tag, cutoff: SystemTime) -> Result<bool> {
        Ok(self
            .store
            .meta_delete_if_stale(&MetaKey::tag(self.name, tag), cutoff)
            .await?)
    }

    /// Every tag name as stored, sorted (for listings).
    pub async fn tag_names(&self) -> Result<Vec<String>> {
        Ok(self.store.meta_list(&MetaDir::tags(self.name)).await?)
    }

    /// A value that changes whenever a tag is added, moved or removed (see
    /// `Store::meta_dir_stamp`), for validating cached tag lists.
    pub async fn tags_stamp(&self) -> Result<Option<u128>> {
        Ok(self.store.meta_dir_stamp(&MetaDir::tags(self.name)).await?)
    }

    /// Every valid tag.
    pub async fn tags(&self) -> Result<Vec<Tag>> {
        Ok(self
            .tag_names()
            .await?
            .into_iter()
            .filter_map(|n| n.parse().ok())
            .collect())
    }

    /// The tags that point at `digest`.
    pub async fn tags_pointing_at(&self, digest: &Digest) -> Result<Vec<Tag>> {
        let mut out = Vec::new();
        for tag in self.tags().await? {
            if let Ok(Some(d)) = self.tag(&tag).await
                && &d == digest
            {
                out.push(tag);
            }
        }
        Ok(out)
    }
}
