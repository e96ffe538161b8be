//! Prometheus metrics for the registry: requests by route and status, durations, bytes in and
//! out, upload requests in progress. Served on /metrics beside /healthz and /readyz.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as PromRegistry;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Method {
    GET,
    HEAD,
    PUT,
    POST,
    PATCH,
    DELETE,
    OTHER,
}

impl Method {
    pub fn of(m: &axum::http::Method) -> Self {
        match *m {
            axum::http::Method::GET => Method::GET,
            axum::http::Method::HEAD => Method::HEAD,
            axum::http::Method::PUT => Method::PUT,
            axum::http::Method::POST => Method::POST,
            axum::http::Method::PATCH => Method::PATCH,
            axum::http::Method::DELETE => Method::DELETE,
            _ => Method::OTHER,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: Method,
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: Method,
    pub route: &'static str,
}

pub struct Metrics {
    registry: PromRegistry,
    pub requests: Family<RequestLabels, Counter>,
    pub durations: Family<RouteLabels, Histogram>,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub uploads_in_progress: Gauge,
    pub gc_runs: Family<GcLabels, Counter>,
    pub gc_last_run_timestamp: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub gc_last_bytes_freed: Gauge,
    pub gc_bytes_freed: Counter,
    pub gc_blobs_deleted: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GcLabels {
    pub result: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = PromRegistry::with_prefix("berth");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 4.0, 10))
        });
        let bytes_received = Counter::default();
        let bytes_sent = Counter::default();
        let uploads_in_progress = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to produce a response (streaming bodies excluded)",
            durations.clone(),
        );
        registry.register(
            "http_received_bytes",
            "Blob and manifest bytes received",
            bytes_received.clone(),
        );
        registry.register(
            "http_sent_bytes",
            "Response body bytes sent",
            bytes_sent.clone(),
        );
        registry.register(
            "uploads_in_progress",
            "Upload requests currently receiving bytes",
            uploads_in_progress.clone(),
        );
        let gc_runs = Family::<GcLabels, Counter>::default();
        let gc_last_run_timestamp = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let gc_last_bytes_freed = Gauge::default();
        let gc_bytes_freed = Counter::default();
        let gc_blobs_deleted = Counter::default();
        registry.register(
            "gc_runs",
            "Garbage collections run in this process",
            gc_runs.clone(),
        );
        registry.register(
            "gc_last_run_timestamp_seconds",
            "When the last garbage collection in this process finished",
            gc_last_run_timestamp.clone(),
        );
        registry.register(
            "gc_last_freed_bytes",
            "Bytes the last garbage collection freed",
            gc_last_bytes_freed.clone(),
        );
        registry.register(
            "gc_freed_bytes",
            "Bytes freed by garbage collection",
            gc_bytes_freed.clone(),
        );
        registry.register(
            "gc_deleted_blobs",
            "Blobs deleted by garbage collection",
            gc_blobs_deleted.clone(),
        );
        Metrics {
            registry,
            gc_runs,
            gc_last_run_timestamp,
            gc_last_bytes_freed,
            gc_bytes_freed,
            gc_blobs_deleted,
            requests,
            durations,
            bytes_received,
            bytes_sent,
            uploads_in_progress,
        }
    }

    /// Adds the pull-through cache's counters (per upstream) to /metrics.
    pub fn register_proxy(&mut self, m: &crate::proxy::metrics::ProxyMetrics) {
        self.registry.register(
            "proxy_events",
            "Pull-through cache: hits, misses filled from the upstream, stale serves, upstream errors and 429s, by upstream prefix",
            m.events.clone(),
        );
        self.registry.register(
            "proxy_fetched_bytes",
            "Bytes fetched from each upstream",
            m.fetched_bytes.clone(),
        );
    }

    /// A durable queue's figures (`repo::deliver`) under `<prefix>_...`; `what` names its
    /// events and `other` the end that receives them, in the help texts.
    fn register_queue<L>(
        &mut self,
        prefix: &str,
        what: &str,
        other: &str,
        m: &crate::repo::deliver::QueueMetrics<L>,
    ) where
        L: prometheus_client::encoding::EncodeLabelSet
            + Clone
            + std::hash::Hash
            + Eq
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let r = &mut self.registry;
        r.register(
            format!("{prefix}_queue_depth"),
            format!("{what} events waiting for delivery"),
            m.queue_depth.clone(),
        );
        r.register(
            format!("{prefix}_lag_seconds"),
            format!("Age of the oldest {what} event waiting (0 when none wait)"),
            m.lag_seconds.clone(),
        );
        r.register(
            format!("{prefix}_delivered_events"),
            format!("{what} events delivered by this process"),
            m.delivered.clone(),
        );
        r.register(
            format!("{prefix}_failures"),
            format!("{what} deliveries that failed and will be retried"),
            m.failures.clone(),
        );
        r.register(
            format!("{prefix}_dropped_events"),
            format!("{what} events the {other} refused for good"),
            m.dropped.clone(),
        );
    }

    /// Adds push replication's gauges and counters (per rule) to /metrics.
    pub fn register_replication(&mut self, m: &crate::mirror::replicate::ReplicationMetrics) {
        self.register_queue("replication", "replication", "destination", &m.queue);
        self.registry.register(
            "replication_reconciled_manifests",
            "Manifests a periodic reconcile found missing at the destination and copied",
            m.reconciled.clone(),
        );
    }

    /// Adds the webhooks' queue figures (per endpoint) to /metrics.
    pub fn register_notifications(
        &mut self,
        m: &crate::repo::deliver::QueueMetrics<crate::policy::notify::EndpointLabels>,
    ) {
        self.register_queue("notification", "webhook", "receiver", m);
    }

    pub fn register_quotas(&mut self, m: &crate::policy::quota::QuotaMetrics) {
        let r = &mut self.registry;
        r.register(
            "quota_used_bytes",
            "Bytes a storage budget counts (each blob once), as the store records it",
            m.used_bytes.clone(),
        );
        r.register(
            "quota_limit_bytes",
            "A storage budget's limit",
            m.limit_bytes.clone(),
        );
        r.register(
            "quota_warning",
            "1 while a budget's usage is at or past its warnAt threshold",
            m.warning.clone(),
        );
        r.register(
            "quota_refused",
            "Uploads, mounts and manifest pushes refused for a budget",
            m.refused.clone(),
        );
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
