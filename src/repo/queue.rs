//! A durable, ordered queue of events in the store: what a push or a delete must still tell
//! another registry (push replication; webhooks can ride the same queue). An event is written,
//! and synced to disk, before the client's request is answered, so an acknowledged push is
//! never forgotten by a restart or a replica's death; it is removed only once delivered.
//! Entries list in stamp order, so one queue is delivered in the order its events happened,
//! whichever replica wrote them (to within the replicas' clock skew).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::{RepoError, Result};
use crate::oci::{Digest, RepoName, Tag};
use crate::store::{EntryId, MetaDir, MetaKey, QueueName, Store};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// A manifest was pushed: `digest`, and `tags` pointed at it.
    Push,
    /// A tag (in `tags`) or a manifest (`digest`) was deleted.
    Delete,
    /// A manifest was pulled (`digest`, by tag when `tags` holds it): webhooks only.
    Pull,
}

/// What happened, as stored (JSON). Names are checked again when read back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub action: Action,
    pub repository: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Who and what, for webhooks (replication needs none of it).
    #[serde(default, flatten)]
    pub detail: Detail,
}

/// What a webhook tells beyond the names: the manifest's media type and size, who asked and
/// from where.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Detail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// An event read back, its names validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub id: EntryId,
    pub action: Action,
    pub repository: RepoName,
    pub digest: Option<Digest>,
    pub tags: Vec<Tag>,
    pub detail: Detail,
}

impl Event {
    pub fn pull(repo: &RepoName, digest: &Digest, tag: Option<&Tag>) -> Event {
        Event {
            action: Action::Pull,
            repository: repo.to_string(),
            digest: Some(digest.clone()),
            tags: tag.map(|t| t.to_string()).into_iter().collect(),
            detail: Detail::default(),
        }
    }

    pub fn with(mut self, detail: Detail) -> Event {
        self.detail = detail;
        self
    }

    pub fn push(repo: &RepoName, digest: &Digest, tags: &[&Tag]) -> Event {
        Event {
            action: Action::Push,
            repository: repo.to_string(),
            digest: Some(digest.clone()),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            detail: Detail::default(),
        }
    }

    pub fn delete_tag(repo: &RepoName, tag: &Tag) -> Event {
        Event {
            action: Action::Delete,
            repository: repo.to_string(),
            digest: None,
            tags: vec![tag.to_string()],
            detail: Detail::default(),
        }
    }

    pub fn delete_manifest(repo: &RepoName, digest: &Digest) -> Event {
        Event {
            action: Action::Delete,
            repository: repo.to_string(),
            digest: Some(digest.clone()),
            tags: Vec::new(),
            detail: Detail::default(),
        }
    }
}

/// A strictly increasing stamp within this process: microseconds since the epoch, bumped
/// past the last one handed out.
fn next_stamp() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let prev = LAST
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(now);
    now.max(prev + 1)
}

/// This process's writer id in entry names.
fn writer() -> u32 {
    static ID: OnceLock<u32> = OnceLock::new();
    *ID.get_or_init(rand::random::<u32>)
}

/// One named queue over the store.
pub struct Queue<'a> {
    store: &'a dyn Store,
    name: &'a QueueName,
}

impl<'a> Queue<'a> {
    pub fn new(store: &'a dyn Store, name: &'a QueueName) -> Self {
        Queue { store, name }
    }

    /// Appends `event` durably; returns its entry.
    pub async fn push(&self, event: &Event) -> Result<EntryId> {
        let (id, key, bytes) = self.entry(event)?;
        self.store.meta_put(&key, &bytes).await?;
        Ok(id)
    }

    /// Appends `event` without waiting for the disk: for events a crash may lose (sampled
    /// pulls), kept off the request's critical path.
    pub async fn push_volatile(&self, event: &Event) -> Result<EntryId> {
        let (id, key, bytes) = self.entry(event)?;
        self.store.meta_put_volatile(&key, &bytes).await?;
        Ok(id)
    }

    fn entry(&self, event: &Event) -> Result<(EntryId, MetaKey, Vec<u8>)> {
        let id = EntryId::new(next_stamp(), writer());
        let bytes = serde_json::to_vec(event)
            .map_err(|e| RepoError::Corrupt(format!("cannot encode an event: {e}")))?;
        Ok((id.clone(), MetaKey::queue_entry(self.name, &id), bytes))
    }

    /// The waiting entries, oldest first (names that are not entries are left alone).
    pub async fn entries(&self) -> Result<Vec<EntryId>> {
        let mut ids: Vec<EntryId> = self
            .store
            .meta_list(&MetaDir::queue(self.name))
            .await?
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Reads an entry back: `None` when it was removed meanwhile, `Corrupt` when it does not
    /// hold a valid event (the caller drops it).
    pub async fn get(&self, id: &EntryId) -> Result<Option<Entry>> {
        let Some(raw) = self
            .store
            .meta_get(&MetaKey::queue_entry(self.name, id))
            .await?
        else {
            return Ok(None);
        };
        let bad = |why: String| {
            RepoError::Corrupt(format!("queue {} entry {}: {why}", self.name, id.as_str()))
        };
        let e: Event = serde_json::from_slice(&raw).map_err(|e| bad(e.to_string()))?;
        let repository = e
            .repository
            .parse()
            .map_err(|_| bad(format!("{:?} is not a repository name", e.repository)))?;
        let tags = e
            .tags
            .iter()
            .map(|t| t.parse().map_err(|_| bad(format!("{t:?} is not a tag"))))
            .collect::<Result<Vec<Tag>>>()?;
        Ok(Some(Entry {
            id: id.clone(),
            action: e.action,
            repository,
            digest: e.digest,
            tags,
            detail: e.detail,
        }))
    }

    /// Removes an entry once delivered (or given up on); `false` when it was already gone.
    pub async fn remove(&self, id: &EntryId) -> Result<bool> {
        Ok(self
            .store
            .meta_delete(&MetaKey::queue_entry(self.name, id))
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fs::FsStore;

    #[tokio::test]
    async fn events_come_back_in_order_validated_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let name: QueueName = "dr".parse().unwrap();
        let repo: RepoName = "team/app".parse().unwrap();
        let d = crate::oci::Algorithm::Sha256.digest_of(b"m");
        let tags: Vec<Tag> = (0..50).map(|i| format!("v{i}").parse().unwrap()).collect();
        {
            let store = FsStore::open(dir.path()).unwrap();
            let q = Queue::new(&store, &name);
            for t in &tags {
                q.push(&Event::push(&repo, &d, &[t])).await.unwrap();
            }
            q.push(&Event::delete_tag(&repo, &tags[0])).await.unwrap();
        }
        let store = FsStore::open(dir.path()).unwrap();
        let q = Queue::new(&store, &name);
        let ids = q.entries().await.unwrap();
        assert_eq!(ids.len(), 51);
        for (i, id) in ids.iter().take(50).enumerate() {
            let e = q.get(id).await.unwrap().unwrap();
            assert_eq!((e.action, &e.tags[..]), (Action::Push, &tags[i..=i]));
        }
        let last = q.get(&ids[50]).await.unwrap().unwrap();
        assert_eq!(last.action, Action::Delete);
        assert!(q.remove(&ids[0]).await.unwrap());
        assert!(!q.remove(&ids[0]).await.unwrap());
        assert_eq!(q.entries().await.unwrap().len(), 50);

        // An entry that names no valid repository is reported, not delivered.
        let bogus = EntryId::new(1, 1);
        store
            .meta_put(
                &MetaKey::queue_entry(&name, &bogus),
                br#"{"action":"push","repository":"../etc"}"#,
            )
            .await
            .unwrap();
        assert!(matches!(q.get(&bogus).await, Err(RepoError::Corrupt(_))));
    }
}
