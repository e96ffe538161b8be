//! `berth operator`: reconciles Registry, GarbageCollection and Mirror resources into the Kubernetes
//! objects that run Berth. Builders are pure (`resources`), reconciles decide and apply
//! (`registry`, `gc`, `mirror`; `jobs` is what the Job runners share; `quota` reads the
//! registry's quota usage for the Registry's status), `run` wires the Controllers, leader election and the HTTP endpoints.
//! Never imports the registry or store modules: it only renders config and objects.

pub mod apply;
pub mod certmanager;
pub mod conditions;
pub mod crd;
pub mod gc;
pub mod jobs;
pub mod leader;
pub mod metrics;
pub mod mirror;
pub mod quota;
pub mod registry;
pub mod resources;
pub mod run;

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod gc_tests;
#[cfg(test)]
mod mirror_tests;
#[cfg(test)]
mod registry_tests;

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};

use resources::{BuildError, Defaults};

/// The one field manager every server-side apply uses.
pub const FIELD_MANAGER: &str = "berth-operator";

/// What every reconcile shares.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub reporter: Reporter,
    pub defaults: Defaults,
    pub metrics: Arc<metrics::Metrics>,
    /// Whether this replica may act now (see [`leader::Leadership`]).
    pub leadership: Arc<leader::Leadership>,
    /// Reads each registry's quota usage from its /metrics (tests point it elsewhere).
    pub quota_reader: Arc<quota::QuotaReader>,
}

impl Context {
    pub fn new(client: Client, defaults: Defaults, metrics: Arc<metrics::Metrics>) -> Context {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            reporter,
            client,
            defaults,
            metrics,
            leadership: Arc::new(leader::Leadership::unconditional()),
            quota_reader: Arc::new(quota::QuotaReader::default()),
        }
    }

    /// The same context, reading quota usage with `reader`.
    pub fn with_quota_reader(mut self, reader: quota::QuotaReader) -> Context {
        self.quota_reader = Arc::new(reader);
        self
    }

    /// The same context, acting only while `leadership` is valid.
    pub fn with_leadership(mut self, leadership: Arc<leader::Leadership>) -> Context {
        self.leadership = leadership;
        self
    }

    /// Refuses to act when this replica is not (or may no longer be) the leader: every
    /// reconcile starts here, before any read that could lead to a write.
    pub fn check_leader(&self) -> Result<(), Error> {
        if self.leadership.is_valid() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// Publishes an Event about `obj`; a failure to publish is logged, never fatal.
    ///
    /// Each call makes its own Event object. kube's `Recorder` folds events with the same
    /// type, reason and action into one series that keeps the *first* note ("1/1 replicas
    /// ready" x3 when 2/2 were), so a shared Recorder would repeat stale messages; reconciles
    /// only publish on transitions, so there is no flood to fold.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(e) = recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "cannot publish event");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("building objects: {0}")]
    Build(#[from] BuildError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("cannot encode {0}")]
    Encode(#[from] serde_json::Error),
    /// Not a failure: work outside this reconcile (a purge Job) is still running. An error
    /// only because the finalizer helper releases the finalizer when cleanup returns Ok.
    #[error("waiting: {what}")]
    Pending { what: String, retry: Duration },
    /// Not a failure either: the leader Lease has not been confirmed lately (after a pause,
    /// say), so nothing is done until the renew loop has read it again.
    #[error("not the confirmed leader; waiting for the Lease to be renewed")]
    NotLeader,
}

impl Error {
    /// The wait of a [`Error::Pending`], looking through the finalizer helper's wrapping.
    pub fn pending(&self) -> Option<Duration> {
        match self {
            Error::Pending { retry, .. } => Some(*retry),
            Error::NotLeader => Some(NOT_LEADER_RETRY),
            Error::Finalizer(f) => match f.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.pending(),
                _ => None,
            },
            _ => None,
        }
    }

    /// API conflicts and throttling clear up fast; other transient errors get a longer wait.
    pub fn retry_after(&self) -> Duration {
        if let Some(wait) = self.pending() {
            return wait;
        }
        let code = match self {
            Error::Kube(kube::Error::Api(s)) => Some(s.code),
            Error::Finalizer(f) => match f.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => return e.retry_after(),
                kube::runtime::finalizer::Error::AddFinalizer(kube::Error::Api(s))
                | kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(s)) => {
                    Some(s.code)
                }
                _ => None,
            },
            _ => None,
        };
        match code {
            Some(409) => Duration::from_secs(1),
            Some(429) => Duration::from_secs(5),
            _ => Duration::from_secs(15),
        }
    }
}

/// How soon a reconcile refused for want of a confirmed Lease looks again (the renew loop
/// reads the Lease every few seconds).
const NOT_LEADER_RETRY: Duration = Duration::from_secs(2);

/// Shared by both controllers: log, count, and requeue after a delay that suits the error.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    if error.pending().is_some() {
        tracing::debug!(object = %obj.name_any(), %error, "will look again");
        return Action::requeue(error.retry_after());
    }
    tracing::warn!(object = %obj.name_any(), error = %error, "reconcile failed, will retry");
    ctx.metrics.reconcile_failed(K::kind(&()).as_ref());
    Action::requeue(error.retry_after())
}
