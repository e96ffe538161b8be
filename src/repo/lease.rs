//! One upstream fetch per blob across replicas that share a store. Within a process the
//! flights map already makes one fill per blob; replicas (pods on one bucket, or on one
//! ReadWriteMany volume) agree through a small lease document in the store.
//!
//! Object stores here offer no conditional create (Garage 2.5 has no `If-None-Match` on PUT),
//! so the lease is claimed by writing and reading back: a replica that finds no live lease
//! writes its own, waits a little longer than its own read-and-write took, and reads again.
//! Two replicas that claim together both see the same (last written) holder on the read-back,
//! because each wrote before the other read again; only the holder fetches. The worst a race
//! can do is a second fetch of the same bytes, never a wrong blob: every fill verifies its
//! digest before it links. A holder renews its lease while it fills and removes it when done;
//! a holder that dies leaves a lease that expires, and a waiting replica takes over.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::oci::{Algorithm, Digest};
use crate::store::{MetaDir, MetaKey, Store, StoreError};

/// A lease not renewed for this long is dead: its holder stopped or lost the store.
const TTL: Duration = Duration::from_secs(15);
/// A holder renews this often.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// A waiting replica looks at the blob and the lease this often.
pub const POLL: Duration = Duration::from_millis(100);

#[derive(Serialize, Deserialize)]
struct Doc {
    holder: String,
    /// Milliseconds since the Unix epoch after which the lease is dead.
    expires_ms: u64,
}

/// What a claim found.
pub enum Claim {
    /// This replica fills the blob; the lease is renewed until the value is dropped.
    Mine(Lease),
    /// Another replica is filling it.
    Theirs,
}

/// A held lease: renewed in the background, removed on [`Lease::release`].
pub struct Lease {
    store: Arc<dyn Store>,
    key: MetaKey,
    renew: tokio::task::JoinHandle<()>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn doc(holder: &str) -> Vec<u8> {
    let d = Doc {
        holder: holder.to_owned(),
        expires_ms: now_ms() + TTL.as_millis() as u64,
    };
    serde_json::to_vec(&d).unwrap_or_default()
}

/// The live holder of `key`, if any (an unreadable document counts as no lease).
async fn holder(store: &dyn Store, key: &MetaKey) -> Result<Option<String>, StoreError> {
    let Some(bytes) = store.meta_get(key).await? else {
        return Ok(None);
    };
    Ok(serde_json::from_slice::<Doc>(&bytes)
        .ok()
        .filter(|d| d.expires_ms > now_ms())
        .map(|d| d.holder))
}

/// Claims the fill of `digest` for `me` (this process's id), or finds another replica's.
pub async fn claim(store: &Arc<dyn Store>, digest: &Digest, me: &str) -> Result<Claim, StoreError> {
    claim_key(store, MetaKey::fill_lease(digest), me, FILL_SETTLE).await
}

/// The least a fill claimer waits before reading its claim back: a busy machine's scheduling
/// delays are milliseconds, and a cold fetch costs far more than this.
const FILL_SETTLE: Duration = Duration::from_millis(10);

/// Claims the lease at `key` for `me`: the same protocol for any one-holder job (a fill, the
/// delivery of a queue's events). `settle` is the least wait before the read-back: longer
/// makes two holders rarer, for jobs where a second holder costs more than a moment's wait.
pub async fn claim_key(
    store: &Arc<dyn Store>,
    key: MetaKey,
    me: &str,
    settle: Duration,
) -> Result<Claim, StoreError> {
    let started = std::time::Instant::now();
    if holder(&**store, &key).await?.is_some_and(|h| h != me) {
        return Ok(Claim::Theirs);
    }
    store.meta_put_volatile(&key, &doc(me)).await?;
    // Another claimer that read "no lease" before this write landed has written by now if
    // it is as quick as this replica was; the read-back then sees one holder for both.
    tokio::time::sleep((started.elapsed() * 2 + Duration::from_millis(1)).max(settle)).await;
    if holder(&**store, &key).await?.as_deref() != Some(me) {
        return Ok(Claim::Theirs);
    }
    let renew = tokio::spawn({
        let (store, key, me) = (store.clone(), key.clone(), me.to_owned());
        async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                if let Err(e) = store.meta_put_volatile(&key, &doc(&me)).await {
                    tracing::warn!(lease = key.as_str(), error = %e, "cannot renew a lease");
                }
            }
        }
    });
    Ok(Claim::Mine(Lease {
        store: store.clone(),
        key,
        renew,
    }))
}

/// True while another replica holds a live lease on `digest`.
pub async fn held_elsewhere(
    store: &dyn Store,
    digest: &Digest,
    me: &str,
) -> Result<bool, StoreError> {
    Ok(holder(store, &MetaKey::fill_lease(digest))
        .await?
        .is_some_and(|h| h != me))
}

impl Lease {
    /// Whether this lease is still ours: a holder stalled past the TTL may have been replaced.
    pub async fn still_held(&self, me: &str) -> Result<bool, StoreError> {
        Ok(holder(&*self.store, &self.key).await?.as_deref() == Some(me))
    }

    /// Stops renewing and removes the lease (after the blob is linked, or the fill failed).
    pub async fn release(self) {
        self.renew.abort();
        if let Err(e) = self.store.meta_delete(&self.key).await {
            tracing::debug!(lease = self.key.as_str(), error = %e, "cannot remove a lease; it expires");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

/// A lease a dead holder left behind is swept by gc once it is this old.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// Removes the leases dead holders left behind (for gc); returns how many.
pub async fn sweep_stale(store: &dyn Store, dry_run: bool) -> Result<usize, StoreError> {
    let cutoff = SystemTime::now()
        .checked_sub(STALE_AFTER)
        .unwrap_or(UNIX_EPOCH);
    let mut swept = 0;
    for alg in [Algorithm::Sha256, Algorithm::Sha512] {
        for name in store.meta_list(&MetaDir::fill_leases(alg)).await? {
            let Ok(d) = Digest::from_parts(alg, &name) else {
                continue;
            };
            let key = MetaKey::fill_lease(&d);
            if dry_run {
                swept += usize::from(store.meta_modified(&key).await?.is_some_and(|t| t < cutoff));
            } else if store.meta_delete_if_stale(&key, cutoff).await? {
                swept += 1;
            }
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fs::FsStore;

    fn digest() -> Digest {
        crate::oci::Algorithm::Sha256.digest_of(b"a layer")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_claiming_together_get_one_holder_and_a_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FsStore::open(dir.path()).unwrap());
        for round in 0..20 {
            let (d, names) = (digest(), ["r0", "r1", "r2", "r3"]);
            let claims =
                futures::future::join_all(names.iter().map(|n| claim(&store, &d, n))).await;
            let mine: Vec<Lease> = claims
                .into_iter()
                .filter_map(|c| match c.unwrap() {
                    Claim::Mine(l) => Some(l),
                    Claim::Theirs => None,
                })
                .collect();
            assert_eq!(mine.len(), 1, "round {round}: one holder");
            assert!(
                held_elsewhere(&*store, &digest(), "someone-else")
                    .await
                    .unwrap()
            );
            for l in mine {
                l.release().await;
            }
            assert!(
                !held_elsewhere(&*store, &digest(), "someone-else")
                    .await
                    .unwrap()
            );
        }
    }

    #[tokio::test]
    async fn a_dead_holders_lease_expires_and_gc_sweeps_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FsStore::open(dir.path()).unwrap());
        let key = MetaKey::fill_lease(&digest());
        let dead = Doc {
            holder: "gone".into(),
            expires_ms: now_ms() - 1,
        };
        store
            .meta_put(&key, &serde_json::to_vec(&dead).unwrap())
            .await
            .unwrap();
        assert!(!held_elsewhere(&*store, &digest(), "me").await.unwrap());
        assert!(matches!(
            claim(&store, &digest(), "me").await.unwrap(),
            Claim::Mine(_)
        ));
        // A fresh lease is kept; one untouched for over STALE_AFTER goes.
        assert_eq!(sweep_stale(&*store, false).await.unwrap(), 0);
        let old = std::time::SystemTime::now() - STALE_AFTER - Duration::from_secs(60);
        let file = dir.path().join(key.as_str());
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(sweep_stale(&*store, true).await.unwrap(), 1);
        assert!(file.exists(), "a dry run deletes nothing");
        assert_eq!(sweep_stale(&*store, false).await.unwrap(), 1);
        assert!(!file.exists());
    }
}
