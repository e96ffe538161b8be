//! Delivering a durable queue (`super::queue`): one replica at a time holds the queue's lease
//! (`super::lease`) and hands its entries, oldest first, to a [`Deliver`]er: push replication
//! sends them to another registry, webhooks to a receiver. A failure that may pass (the other
//! end down, throttling) backs off and retries the same entry, so order holds; one that will
//! not pass is dropped and counted. The holder checks its lease before every delivery, so a
//! holder that stalled past the lease's life stops before it could deliver out of order.

use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use super::RepoError;
use super::lease::{self, Claim};
use super::queue::{Entry, Queue};
use crate::store::{EntryId, MetaKey, QueueName, Store};

/// The first wait after a failed delivery; doubled per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often a holder looks for entries other replicas queued (its own wake it at once).
const POLL: Duration = Duration::from_secs(1);
/// How often a replica that does not hold a queue's lease tries to take it over.
const TAKEOVER: Duration = Duration::from_secs(5);
/// How long a claimer of a queue waits before reading its claim back: takeovers are rare,
/// and two holders could deliver out of order.
const SETTLE: Duration = Duration::from_secs(1);

/// Why one delivery did not happen.
#[derive(Debug)]
pub struct Failure {
    /// Worth trying again later (the same entry, first).
    pub retry: bool,
    pub why: String,
}

impl Failure {
    pub fn retry(why: impl ToString) -> Failure {
        Failure {
            retry: true,
            why: why.to_string(),
        }
    }

    pub fn permanent(why: impl ToString) -> Failure {
        Failure {
            retry: false,
            why: why.to_string(),
        }
    }
}

/// What a queue's entries are delivered to.
#[async_trait::async_trait]
pub trait Deliver: Send + Sync {
    /// Delivers `entries` (oldest first, at most [`Self::batch`]) as one, or fails as one.
    async fn deliver(&self, entries: &[Entry]) -> Result<(), Failure>;
    /// How many entries one delivery takes (a webhook sends many events per request).
    fn batch(&self) -> usize {
        1
    }
    /// Called now and then while the queue is empty and this replica holds it.
    async fn idle(&self) {}
}

/// Per queue (labelled `L`): what waits, how old the oldest waiting entry is, what was
/// delivered, failed (an attempt that will be retried) and dropped (refused for good).
#[derive(Debug)]
pub struct QueueMetrics<L: EncodeLabelSet + Clone + Hash + Eq> {
    pub queue_depth: Family<L, Gauge>,
    pub lag_seconds: Family<L, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub delivered: Family<L, Counter>,
    pub failures: Family<L, Counter>,
    pub dropped: Family<L, Counter>,
}

impl<L: EncodeLabelSet + Clone + Hash + Eq> Default for QueueMetrics<L> {
    fn default() -> Self {
        QueueMetrics {
            queue_depth: Family::default(),
            lag_seconds: Family::default(),
            delivered: Family::default(),
            failures: Family::default(),
            dropped: Family::default(),
        }
    }
}

impl<L: EncodeLabelSet + Clone + Hash + Eq> Clone for QueueMetrics<L> {
    fn clone(&self) -> Self {
        QueueMetrics {
            queue_depth: self.queue_depth.clone(),
            lag_seconds: self.lag_seconds.clone(),
            delivered: self.delivered.clone(),
            failures: self.failures.clone(),
            dropped: self.dropped.clone(),
        }
    }
}

/// One queue's delivery loop, for the life of the process.
pub struct Worker<'a, L: EncodeLabelSet + Clone + Hash + Eq, D> {
    pub store: Arc<dyn Store>,
    pub name: &'a QueueName,
    /// This replica's id in leases.
    pub me: &'a str,
    /// Notified when this replica queues an entry.
    pub wake: &'a Notify,
    pub metrics: &'a QueueMetrics<L>,
    pub label: L,
    pub to: &'a D,
}

impl<L: EncodeLabelSet + Clone + Hash + Eq + Send + Sync, D: Deliver> Worker<'_, L, D> {
    /// Takes the queue's lease when nobody holds it and delivers while holding; forever.
    pub async fn run(&self) {
        loop {
            let key = MetaKey::queue_lease(self.name);
            match lease::claim_key(&self.store, key, self.me, SETTLE).await {
                Ok(Claim::Mine(l)) => {
                    tracing::info!(queue = %self.name, "delivering queued events");
                    self.hold(&l).await;
                    l.release().await;
                }
                Ok(Claim::Theirs) => {
                    self.observe().await;
                }
                Err(e) => {
                    tracing::warn!(queue = %self.name, error = %e, "cannot claim a queue")
                }
            }
            tokio::time::sleep(TAKEOVER).await;
        }
    }

    /// Sets the queue's gauges from what the store holds; returns the waiting entries.
    async fn observe(&self) -> Vec<EntryId> {
        let ids = Queue::new(&*self.store, self.name)
            .entries()
            .await
            .unwrap_or_default();
        let m = self.metrics;
        m.queue_depth
            .get_or_create(&self.label)
            .set(ids.len() as i64);
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let lag = ids
            .first()
            .map_or(0.0, |id| now_us.saturating_sub(id.stamp_us()) as f64 / 1e6);
        m.lag_seconds.get_or_create(&self.label).set(lag);
        ids
    }

    async fn remove(&self, queue: &Queue<'_>, id: &EntryId) {
        if let Err(e) = queue.remove(id).await {
            tracing::warn!(queue = %self.name, error = %e, "cannot remove a delivered event");
        }
    }

    /// Delivers the queue in order while the lease stays ours.
    async fn hold(&self, held: &lease::Lease) {
        let m = self.metrics;
        let mut backoff = MIN_BACKOFF;
        let queue = Queue::new(&*self.store, self.name);
        loop {
            let ids = self.observe().await;
            if ids.is_empty() {
                self.to.idle().await;
                let _ = tokio::time::timeout(POLL, self.wake.notified()).await;
            }
            for chunk in ids.chunks(self.to.batch().max(1)) {
                if !held.still_held(self.me).await.unwrap_or(false) {
                    tracing::warn!(queue = %self.name, "lost the queue's lease; another replica delivers");
                    return;
                }
                let mut entries = Vec::with_capacity(chunk.len());
                let mut unreadable = false;
                for id in chunk {
                    match queue.get(id).await {
                        Ok(None) => {}
                        Ok(Some(e)) => entries.push(e),
                        Err(RepoError::Store(e)) => {
                            tracing::warn!(queue = %self.name, error = %e, "cannot read a queued event");
                            unreadable = true;
                            break;
                        }
                        Err(e) => {
                            m.dropped.get_or_create(&self.label).inc();
                            tracing::error!(queue = %self.name, entry = id.as_str(), error = %e, "an unreadable event is dropped");
                            self.remove(&queue, id).await;
                        }
                    }
                }
                if unreadable {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    break;
                }
                if entries.is_empty() {
                    continue;
                }
                match self.to.deliver(&entries).await {
                    Ok(()) => {
                        backoff = MIN_BACKOFF;
                        m.delivered
                            .get_or_create(&self.label)
                            .inc_by(entries.len() as u64);
                    }
                    Err(Failure { retry: true, why }) => {
                        m.failures.get_or_create(&self.label).inc();
                        tracing::warn!(queue = %self.name, entry = entries[0].id.as_str(), events = entries.len(), error = %why, retry_in = ?backoff, "delivery failed; the events wait");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        break; // the same events again, first
                    }
                    Err(Failure { retry: false, why }) => {
                        m.dropped
                            .get_or_create(&self.label)
                            .inc_by(entries.len() as u64);
                        tracing::error!(queue = %self.name, entry = entries[0].id.as_str(), events = entries.len(), error = %why, "delivery refused for good; the events are dropped");
                    }
                }
                for e in &entries {
                    self.remove(&queue, &e.id).await;
                }
            }
        }
    }
}
