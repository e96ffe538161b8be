//! Counters per upstream: cache hits, misses (filled from the upstream), stale serves,
//! upstream errors and 429s, and the bytes fetched. Registered into the registry's /metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub upstream: String,
    /// hit, miss, stale, error, rate_limited
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Default)]
pub struct ProxyMetrics {
    pub events: Family<EventLabels, Counter>,
    pub fetched_bytes: Family<UpstreamLabels, Counter>,
}

impl ProxyMetrics {
    pub fn count(&self, upstream: &str, event: &'static str) {
        self.events
            .get_or_create(&EventLabels {
                upstream: upstream.to_owned(),
                event,
            })
            .inc();
    }

    pub fn fetched(&self, upstream: &str, bytes: u64) {
        self.fetched_bytes
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .inc_by(bytes);
    }
}
