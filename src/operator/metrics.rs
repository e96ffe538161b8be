//! The operator's Prometheus metrics: reconciles and failures per kind, and whether this
//! replica holds the leader Lease. Served on /metrics next to /healthz and /readyz.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

pub struct Metrics {
    registry: PromRegistry,
    reconciles: Family<KindLabel, Counter>,
    failures: Family<KindLabel, Counter>,
    leader: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = PromRegistry::with_prefix("berth_operator");
        let reconciles = Family::<KindLabel, Counter>::default();
        let failures = Family::<KindLabel, Counter>::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that returned an error",
            failures.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            failures,
            leader,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, kind: &str) {
        self.reconciles
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }
    pub fn reconcile_failed(&self, kind: &str) {
        self.failures
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
    /// Ready once the API server answered; a standby replica is ready too.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_up_in_the_text_format() {
        let m = Metrics::default();
        m.reconciled("Registry");
        m.reconciled("Registry");
        m.reconcile_failed("GarbageCollection");
        m.set_leader(true);
        let text = m.encode();
        assert!(
            text.contains("berth_operator_reconciles_total{kind=\"Registry\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("berth_operator_reconcile_failures_total{kind=\"GarbageCollection\"} 1")
        );
        assert!(text.contains("berth_operator_leader 1"));
    }
}
