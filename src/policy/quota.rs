//! Storage quotas: a budget of bytes for the repositories a pattern matches, each blob counted
//! once per budget however many of its images share it (manifests count as the blobs they
//! are). An upload, mount or manifest push that would take a budget past its limit is refused
//! with DENIED, naming the rule, what is used and the limit.
//!
//! The count lives in the store, so replicas sharing it share the budget: `members/` says
//! which blobs a budget already counts (a second link of the same blob adds nothing), `base`
//! is what the last full count found, and each replica adds what it let in since under
//! `usage/<replica>`. A check reads the base and every replica's addition, so two replicas
//! can overshoot a limit only by the uploads they admit at the same instant. Deleting frees
//! nothing until gc has removed what no manifest uses any more; gc then counts every budget
//! again from the repositories' links ([`Quotas::recount`]), which makes usage exact.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use super::{PolicyError, Refusal};
use crate::config::QuotaRule;
use crate::oci::pattern::Pattern;
use crate::oci::{Algorithm, Digest, RepoName};
use crate::repo::{RepoError, Repository};
use crate::store::{MetaDir, MetaKey, QueueName, Store, StoreError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    /// The rule's repository pattern.
    pub quota: String,
}

/// Per budget: bytes used and allowed, whether the warning threshold is passed, refusals.
#[derive(Clone, Debug, Default)]
pub struct QuotaMetrics {
    pub used_bytes: Family<QuotaLabels, Gauge>,
    pub limit_bytes: Family<QuotaLabels, Gauge>,
    pub warning: Family<QuotaLabels, Gauge>,
    pub refused: Family<QuotaLabels, Counter>,
}

/// A count as stored: the bytes, and the epoch of the full count it belongs to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Count {
    epoch: String,
    bytes: u64,
}

#[derive(Debug)]
struct Budget {
    index: usize,
    pattern: Pattern,
    /// The store's name for it: `q-` and the start of the pattern's SHA-256, so reordering the
    /// rules keeps each count.
    id: QueueName,
    max: u64,
    warn_at: f64,
    /// What this replica added since the full count of `epoch`.
    added: Mutex<Count>,
    warned: AtomicBool,
    /// The usage last read or written here, and when: enough for [`Quotas::precheck`], which
    /// only spares clients a doomed transfer (admission reads the store).
    recent: Mutex<Option<(std::time::Instant, u64)>>,
}

/// How old a usage figure [`Quotas::precheck`] takes may be.
const PRECHECK_STALENESS: std::time::Duration = std::time::Duration::from_secs(1);

impl Budget {
    fn note(&self, used: u64) {
        *self.recent.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::Instant::now(), used));
    }

    fn recent(&self) -> Option<u64> {
        let r = *self.recent.lock().unwrap_or_else(|p| p.into_inner());
        r.filter(|(at, _)| at.elapsed() < PRECHECK_STALENESS)
            .map(|(_, u)| u)
    }
}

impl Budget {
    fn describe(&self) -> String {
        format!("policy.quotas[{}] ({})", self.index, self.pattern.as_str())
    }

    fn label(&self) -> QuotaLabels {
        QuotaLabels {
            quota: self.pattern.as_str().to_owned(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Quotas {
    budgets: Vec<Budget>,
    /// This replica's name in `usage/`.
    replica: Option<QueueName>,
    pub metrics: QuotaMetrics,
    /// Bytes this replica has admitted and not yet recorded, per budget (uploads in flight
    /// are counted as soon as they are admitted).
    pending: Vec<AtomicU64>,
}

impl Quotas {
    pub fn from_config(rules: &[QuotaRule]) -> Result<Self, PolicyError> {
        let mut budgets: Vec<Budget> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let bad = |field, why: String| PolicyError::new("quotas", i, field, why);
            let pattern =
                Pattern::parse(&r.repository).map_err(|e| bad("repository", e.to_string()))?;
            let max = r.max_bytes.bytes().map_err(|e| bad("maxBytes", e))?;
            if max == 0 {
                return Err(bad("maxBytes", "a budget must be above 0 bytes".into()));
            }
            let warn_at = r.warn_at.unwrap_or(0.9);
            if !(0.0..=1.0).contains(&warn_at) {
                return Err(bad("warnAt", format!("{warn_at} is not between 0 and 1")));
            }
            if budgets.iter().any(|b| b.pattern == pattern) {
                return Err(bad(
                    "repository",
                    format!("{} has a budget already", r.repository),
                ));
            }
            let hash = Algorithm::Sha256.digest_of(r.repository.as_bytes());
            let id = format!("q-{}", &hash.hex()[..16]).parse().map_err(
                |e: crate::store::layout::QueueNameError| bad("repository", e.to_string()),
            )?;
            budgets.push(Budget {
                index: i,
                pattern,
                id,
                max,
                warn_at,
                added: Mutex::default(),
                warned: AtomicBool::new(false),
                recent: Mutex::default(),
            });
        }
        let replica = format!("{:016x}", rand::random::<u64>()).parse().ok();
        let metrics = QuotaMetrics::default();
        for b in &budgets {
            metrics
                .limit_bytes
                .get_or_create(&b.label())
                .set(b.max as i64);
        }
        Ok(Quotas {
            pending: budgets.iter().map(|_| AtomicU64::new(0)).collect(),
            budgets,
            replica,
            metrics,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty()
    }

    /// Whether some budget counts `repo`.
    pub fn covers(&self, repo: &RepoName) -> bool {
        self.budgets
            .iter()
            .any(|b| b.pattern.matches(repo.as_str()))
    }

    fn covering<'a>(
        &'a self,
        repo: &'a RepoName,
    ) -> impl Iterator<Item = (usize, &'a Budget)> + 'a {
        self.budgets
            .iter()
            .enumerate()
            .filter(move |(_, b)| b.pattern.matches(repo.as_str()))
    }

    /// Admits `blobs` (digest, size) into `repo`, or refuses when a budget would be passed.
    /// On success the bytes are held as pending until [`Admitted::record`] (or dropped).
    pub async fn admit<'a>(
        &'a self,
        store: &'a dyn Store,
        repo: &'a RepoName,
        blobs: &[(Digest, u64)],
    ) -> Result<Admitted<'a>, Refusal> {
        let mut held = Vec::new();
        for (i, b) in self.covering(repo) {
            let mut new: Vec<(Digest, u64)> = Vec::new();
            for (d, size) in blobs {
                if !store
                    .meta_exists(&MetaKey::quota_member(&b.id, d))
                    .await
                    .map_err(RepoError::from)?
                {
                    new.push((d.clone(), *size));
                }
            }
            let adding: u64 = new.iter().map(|(_, s)| s).sum();
            if adding == 0 {
                continue;
            }
            let (stored, epoch) = self.used_since(store, b).await.map_err(RepoError::from)?;
            b.note(stored);
            let used = stored + self.pending[i].load(Ordering::Acquire);
            if used.saturating_add(adding) > b.max {
                self.metrics.refused.get_or_create(&b.label()).inc();
                return Err(Refusal::Denied(format!(
                    "quota {} exceeded: {used} of {} bytes used, this push needs {adding} more",
                    b.describe(),
                    b.max
                )));
            }
            self.pending[i].fetch_add(adding, Ordering::AcqRel);
            held.push(Hold {
                budget: i,
                new,
                bytes: adding,
                stored,
                epoch,
            });
        }
        Ok(Admitted {
            quotas: self,
            store,
            held,
        })
    }

    /// Before any bytes are taken: refuses when a budget of `repo` has no room for `bytes`
    /// more (0: is it full?), so a client is not left to send a large blob only to have it
    /// refused at the end. `digest`, when known, is free if the budget already counts it.
    pub async fn precheck(
        &self,
        store: &dyn Store,
        repo: &RepoName,
        digest: Option<&Digest>,
        bytes: u64,
    ) -> Result<(), Refusal> {
        for (i, b) in self.covering(repo) {
            if let Some(d) = digest
                && store
                    .meta_exists(&MetaKey::quota_member(&b.id, d))
                    .await
                    .map_err(RepoError::from)?
            {
                continue;
            }
            let pending = self.pending[i].load(Ordering::Acquire);
            let full = |stored: u64| {
                let used = stored + pending;
                if bytes == 0 {
                    used >= b.max
                } else {
                    used.saturating_add(bytes) > b.max
                }
            };
            // A recent figure with room lets the request through (admission decides); only a
            // refusal is worth a fresh read, so staleness never refuses anyone.
            if b.recent().is_some_and(|u| !full(u)) {
                continue;
            }
            let stored = self.used(store, b).await.map_err(RepoError::from)?;
            b.note(stored);
            let used = stored + pending;
            if full(stored) {
                self.metrics.refused.get_or_create(&b.label()).inc();
                return Err(Refusal::Denied(format!(
                    "quota {} exceeded: {used} of {} bytes used, this push needs {bytes} more",
                    b.describe(),
                    b.max
                )));
            }
        }
        Ok(())
    }

    /// The budget's usage as the store records it: the full count plus every replica's
    /// additions since (additions from an older count are already in it).
    async fn used(&self, store: &dyn Store, b: &Budget) -> Result<u64, StoreError> {
        Ok(self.used_since(store, b).await?.0)
    }

    /// [`Self::used`] and the epoch of the full count it builds on.
    async fn used_since(&self, store: &dyn Store, b: &Budget) -> Result<(u64, String), StoreError> {
        let base = read_count(store, &MetaKey::quota_base(&b.id))
            .await?
            .unwrap_or_default();
        let mut total = base.bytes;
        for name in store.meta_list(&MetaDir::quota_usages(&b.id)).await? {
            let Ok(replica) = name.parse::<QueueName>() else {
                continue;
            };
            if let Some(c) = read_count(store, &MetaKey::quota_usage(&b.id, &replica)).await?
                && c.epoch == base.epoch
            {
                total += c.bytes;
            }
        }
        Ok((total, base.epoch))
    }

    /// Counts every budget again from what the repositories link and hold (gc's last step,
    /// and a start-up with no count yet): members rewritten, a new base, the replicas'
    /// additions started over. Returns (budget pattern, bytes) per budget.
    pub async fn recount(
        &self,
        store: &dyn Store,
        only_missing: bool,
    ) -> Result<Vec<(String, u64)>, RepoError> {
        let mut out = Vec::new();
        if self.budgets.is_empty() {
            return Ok(out);
        }
        let repos = store.repositories().await?;
        for b in &self.budgets {
            if only_missing && store.meta_exists(&MetaKey::quota_base(&b.id)).await? {
                continue;
            }
            let mut digests: HashSet<Digest> = HashSet::new();
            for name in repos.iter().filter(|r| b.pattern.matches(r.as_str())) {
                let repo = Repository::new(store, name);
                digests.extend(repo.blob_links().await?);
                digests.extend(repo.manifest_revisions().await?);
            }
            let mut bytes = 0;
            for d in &digests {
                let Some(size) = store.blob_size(d).await? else {
                    continue; // linked, but gone: gc removes the link
                };
                bytes += size;
                let key = MetaKey::quota_member(&b.id, d);
                if !store.meta_exists(&key).await? {
                    store
                        .meta_put_volatile(&key, size.to_string().as_bytes())
                        .await?;
                }
            }
            for alg in [Algorithm::Sha256, Algorithm::Sha512] {
                for hex in store.meta_list(&MetaDir::quota_members(&b.id, alg)).await? {
                    if let Ok(d) = Digest::from_parts(alg, &hex)
                        && !digests.contains(&d)
                    {
                        store.meta_delete(&MetaKey::quota_member(&b.id, &d)).await?;
                    }
                }
            }
            let epoch = format!("{:016x}", rand::random::<u64>());
            write_count(store, &MetaKey::quota_base(&b.id), &Count { epoch, bytes }).await?;
            for name in store.meta_list(&MetaDir::quota_usages(&b.id)).await? {
                if let Ok(r) = name.parse::<QueueName>() {
                    store.meta_delete(&MetaKey::quota_usage(&b.id, &r)).await?;
                }
            }
            self.metrics
                .used_bytes
                .get_or_create(&b.label())
                .set(bytes as i64);
            self.warn(b, bytes);
            tracing::info!(quota = %b.pattern.as_str(), bytes, limit = b.max, blobs = digests.len(), "quota counted");
            out.push((b.pattern.as_str().to_owned(), bytes));
        }
        Ok(out)
    }

    /// Refreshes the usage gauges from the store (a replica that admits nothing still shows
    /// what the others did).
    pub async fn observe(&self, store: &dyn Store) {
        for b in &self.budgets {
            if let Ok(used) = self.used(store, b).await {
                self.metrics
                    .used_bytes
                    .get_or_create(&b.label())
                    .set(used as i64);
                self.warn(b, used);
            }
        }
    }

    /// Budgets with their limit and usage, for logs and status.
    pub async fn usage(&self, store: &dyn Store) -> Vec<(String, u64, u64)> {
        let mut out = Vec::new();
        for b in &self.budgets {
            let used = self.used(store, b).await.unwrap_or(0);
            out.push((b.pattern.as_str().to_owned(), used, b.max));
        }
        out
    }

    fn warn(&self, b: &Budget, used: u64) {
        let over = used as f64 >= b.warn_at * b.max as f64;
        self.metrics
            .warning
            .get_or_create(&b.label())
            .set(i64::from(over));
        if over && !b.warned.swap(true, Ordering::AcqRel) {
            tracing::warn!(quota = %b.pattern.as_str(), used, limit = b.max, warn_at = b.warn_at, "quota nearly used up");
        } else if !over {
            b.warned.store(false, Ordering::Release);
        }
    }
}

/// What one budget admitted: its index, the blobs new to it and their bytes, and the usage
/// the store showed then (with the epoch of its full count), so recording needs no second
/// read.
struct Hold {
    budget: usize,
    new: Vec<(Digest, u64)>,
    bytes: u64,
    stored: u64,
    epoch: String,
}

/// Bytes admitted into budgets, held until recorded.
pub struct Admitted<'a> {
    quotas: &'a Quotas,
    store: &'a dyn Store,
    held: Vec<Hold>,
}

impl Admitted<'_> {
    /// After the link or manifest is written: the blobs become members and this replica's
    /// addition grows. A failure here only undercounts until the next full count.
    pub async fn record(mut self) {
        let held = std::mem::take(&mut self.held);
        for h in &held {
            let q = self.quotas;
            let b = &q.budgets[h.budget];
            if let Err(e) = self.record_one(b, h).await {
                tracing::warn!(quota = %b.pattern.as_str(), error = %e, "cannot record quota usage");
            }
            q.pending[h.budget].fetch_sub(h.bytes, Ordering::AcqRel);
        }
    }

    /// Two writes: the members (admission checked they were new; a blob another replica
    /// counted in the same instant is counted twice until the next full count), and this
    /// replica's addition.
    async fn record_one(&self, b: &Budget, h: &Hold) -> Result<(), StoreError> {
        let store = self.store;
        let Some(replica) = &self.quotas.replica else {
            return Ok(());
        };
        for (d, size) in &h.new {
            store
                .meta_put_volatile(
                    &MetaKey::quota_member(&b.id, d),
                    size.to_string().as_bytes(),
                )
                .await?;
        }
        let count = {
            let mut mine = b.added.lock().unwrap_or_else(|p| p.into_inner());
            if mine.epoch != h.epoch {
                *mine = Count {
                    epoch: h.epoch.clone(),
                    bytes: 0,
                };
            }
            mine.bytes += h.bytes;
            mine.clone()
        };
        write_count(store, &MetaKey::quota_usage(&b.id, replica), &count).await?;
        let used = h.stored + h.bytes;
        b.note(used);
        self.quotas
            .metrics
            .used_bytes
            .get_or_create(&b.label())
            .set(used as i64);
        self.quotas.warn(b, used);
        Ok(())
    }
}

impl Drop for Admitted<'_> {
    /// Admitted but never recorded (the write failed): release the hold.
    fn drop(&mut self) {
        for h in &self.held {
            self.quotas.pending[h.budget].fetch_sub(h.bytes, Ordering::AcqRel);
        }
    }
}

async fn read_count(store: &dyn Store, key: &MetaKey) -> Result<Option<Count>, StoreError> {
    Ok(store
        .meta_get(key)
        .await?
        .and_then(|b| serde_json::from_slice(&b).ok()))
}

async fn write_count(store: &dyn Store, key: &MetaKey, c: &Count) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(c).unwrap_or_default();
    store.meta_put_volatile(key, &bytes).await
}
