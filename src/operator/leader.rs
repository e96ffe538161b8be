//! Leader election on a coordination.k8s.io Lease, so two operator replicas never both act.
//! Acquiring and renewing are optimistic writes (create, or replace at the read
//! resourceVersion): of two replicas racing, the API server lets exactly one win.
//!
//! Holding the Lease is not enough to act: a leader that was paused (SIGSTOP, a frozen node,
//! a long GC pause of the VM) wakes up believing it leads while another replica has taken
//! over. [`Leadership`] is the guard every reconcile checks first: it is valid only for a
//! while after the last renewal that landed, by this process's monotonic clock, so a woken
//! leader refuses to act until [`keep`] has read the Lease again. On shutdown [`release`]
//! hands the Lease back, so an upgrade has no leaderless gap.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica's name (its pod name).
    pub identity: String,
    /// How long a holder that stops renewing keeps the Lease.
    pub duration: Duration,
    /// How often the holder renews (well inside `duration`).
    pub renew_every: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// We hold it: renew.
    Renew,
    /// Someone else holds a live Lease.
    Wait { holder: String },
}

/// What to do with the Lease as read at `now`.
pub fn decide(lease: Option<&Lease>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let expired = match &spec.renew_time {
        Some(t) => t.0 + SignedDuration::from_secs(secs) < now,
        None => true,
    };
    if holder.is_empty() || expired {
        Decision::Acquire
    } else {
        Decision::Wait { holder }
    }
}

fn spec_for(
    cfg: &LeaseConfig,
    old: Option<&LeaseSpec>,
    now: Timestamp,
    taking_over: bool,
) -> LeaseSpec {
    let transitions = old.and_then(|s| s.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(cfg.duration.as_secs()).unwrap_or(15)),
        acquire_time: if taking_over {
            Some(MicroTime(now))
        } else {
            old.and_then(|s| s.acquire_time.clone())
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if taking_over && old.is_some() {
            transitions + 1
        } else {
            transitions
        }),
        ..LeaseSpec::default()
    }
}

/// Until when this replica may act. Reconciles call [`Leadership::check`] before any write.
#[derive(Debug)]
pub struct Leadership {
    /// `None` with `elected == false`: leader election is off, always act.
    until: Mutex<Option<tokio::time::Instant>>,
    elected: bool,
}

impl Leadership {
    /// A single replica with leader election off: always the leader.
    pub fn unconditional() -> Leadership {
        Leadership {
            until: Mutex::new(None),
            elected: false,
        }
    }

    /// Leader election on: nothing may act until the first renewal is recorded.
    pub fn elected() -> Leadership {
        Leadership {
            until: Mutex::new(None),
            elected: true,
        }
    }

    /// A round that started at `started` renewed (or took) the Lease. Other replicas may take
    /// it `duration` after our write; we stop one renew period earlier, which leaves room for
    /// a slow write and clock skew between nodes.
    pub fn renewed(&self, started: tokio::time::Instant, cfg: &LeaseConfig) {
        let margin = cfg.duration.saturating_sub(cfg.renew_every);
        if let Ok(mut until) = self.until.lock() {
            *until = Some(started + margin);
        }
    }

    /// The Lease is lost or being handed back: stop acting now.
    pub fn revoke(&self) {
        if let Ok(mut until) = self.until.lock() {
            *until = None;
        }
    }

    /// Whether this replica may act now.
    pub fn is_valid(&self) -> bool {
        if !self.elected {
            return true;
        }
        match self.until.lock() {
            Ok(until) => until.is_some_and(|t| tokio::time::Instant::now() < t),
            Err(_) => false,
        }
    }
}

/// One round: returns true when this replica holds the Lease afterwards.
pub async fn try_hold(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&cfg.name).await?;
    let decision = decide(current.as_ref(), &cfg.identity, now);
    let result = match (decision, current) {
        (Decision::Wait { holder }, _) => {
            tracing::debug!(%holder, "another replica leads");
            return Ok(false);
        }
        (_, None) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec_for(cfg, None, now, true)),
            };
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        (d, Some(mut lease)) => {
            lease.spec = Some(spec_for(
                cfg,
                lease.spec.as_ref(),
                now,
                d == Decision::Acquire,
            ));
            // metadata.resourceVersion is kept: a concurrent writer makes this a 409.
            api.replace(&cfg.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
    };
    match result {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits until this replica holds the Lease.
pub async fn acquire(api: &Api<Lease>, cfg: &LeaseConfig, leadership: &Leadership) {
    loop {
        let started = tokio::time::Instant::now();
        match try_hold(api, cfg).await {
            Ok(true) => {
                leadership.renewed(started, cfg);
                tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
                return;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read or write the leader Lease"),
        }
        tokio::time::sleep(cfg.renew_every).await;
    }
}

/// Renews until a renewal fails to land within the Lease duration; then returns, and the
/// caller must stop acting (another replica may take over). `leadership` stays valid only
/// while renewals land, so after a pause the reconciles wait for this loop's next read.
pub async fn keep(api: &Api<Lease>, cfg: &LeaseConfig, leadership: &Leadership) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.renew_every).await;
        let started = tokio::time::Instant::now();
        match try_hold(api, cfg).await {
            Ok(true) => {
                leadership.renewed(started, cfg);
                last_ok = started;
            }
            Ok(false) => {
                leadership.revoke();
                tracing::error!("lost the leader Lease to another replica");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the leader Lease"),
        }
        if last_ok.elapsed() > cfg.duration {
            leadership.revoke();
            tracing::error!("could not renew the leader Lease in time");
            return;
        }
    }
}

/// Hands the Lease back on shutdown, as client-go's `ReleaseOnCancel` does: no holder, a
/// one-second duration, so a waiting replica takes over at its next try instead of after
/// the whole Lease duration. Only a Lease this replica still holds is touched.
pub async fn release(api: &Api<Lease>, cfg: &LeaseConfig, leadership: &Leadership) {
    leadership.revoke();
    let result = async {
        let Some(mut lease) = api.get_opt(&cfg.name).await? else {
            return Ok(false);
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(false);
        };
        if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
            return Ok(false);
        }
        let now = MicroTime(Timestamp::now());
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now.clone());
        spec.acquire_time = Some(now);
        api.replace(&cfg.name, &PostParams::default(), &lease)
            .await
            .map(|_| true)
    }
    .await;
    match result {
        Ok(true) => tracing::info!(lease = %cfg.name, "released the leader Lease"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot release the leader Lease; another replica takes over when it expires")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn lease(holder: &str, renewed: i64) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                ..LeaseSpec::default()
            }),
        }
    }

    #[tokio::test]
    async fn two_replicas_never_both_hold_the_lease() {
        let (client, fake) = crate::operator::fake::Fake::start();
        let api: Api<Lease> = Api::namespaced(client, "ops");
        let cfg = |id: &str| LeaseConfig {
            name: "berth-operator-leader".into(),
            namespace: "ops".into(),
            identity: id.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        };
        assert!(
            try_hold(&api, &cfg("a")).await.unwrap(),
            "first come takes it"
        );
        assert!(
            !try_hold(&api, &cfg("b")).await.unwrap(),
            "a live lease is respected"
        );
        assert!(
            try_hold(&api, &cfg("a")).await.unwrap(),
            "the holder renews"
        );
        let key = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/berth-operator-leader";
        assert_eq!(fake.get(key).unwrap()["spec"]["holderIdentity"], "a");
        // a stops renewing; once expired, b takes over and the transition is counted.
        fake.edit(
            key,
            serde_json::json!({"spec": {"renewTime": "2020-01-01T00:00:00.000000Z"}}),
        );
        assert!(try_hold(&api, &cfg("b")).await.unwrap());
        let lease = fake.get(key).unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "b");
        assert_eq!(lease["spec"]["leaseTransitions"], 1);
        // A write racing on a stale resourceVersion loses instead of stealing.
        fake.fail_once("PUT", "/leases/", 409);
        assert!(!try_hold(&api, &cfg("b")).await.unwrap());
    }

    const KEY: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/berth-operator-leader";

    fn cfg(id: &str) -> LeaseConfig {
        LeaseConfig {
            name: "berth-operator-leader".into(),
            namespace: "ops".into(),
            identity: id.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once_and_only_the_holder_releases() {
        let (client, fake) = crate::operator::fake::Fake::start();
        let api: Api<Lease> = Api::namespaced(client, "ops");
        let a = Leadership::elected();
        acquire(&api, &cfg("a"), &a).await;
        assert!(a.is_valid());
        // b releasing a Lease it does not hold changes nothing.
        release(&api, &cfg("b"), &Leadership::elected()).await;
        assert_eq!(fake.get(KEY).unwrap()["spec"]["holderIdentity"], "a");
        assert!(!try_hold(&api, &cfg("b")).await.unwrap(), "a still leads");
        release(&api, &cfg("a"), &a).await;
        assert!(!a.is_valid(), "a stops acting as it lets go");
        let lease = fake.get(KEY).unwrap();
        assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 1);
        // The next replica does not wait out the 15 s the old holder had.
        assert!(try_hold(&api, &cfg("b")).await.unwrap());
        assert_eq!(fake.get(KEY).unwrap()["spec"]["holderIdentity"], "b");
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_leader_does_not_act_until_it_has_read_the_lease_again() {
        let (ctx, fake) = crate::operator::fake::Fake::context();
        let api: Api<Lease> = Api::namespaced(ctx.client.clone(), "ops");
        let leadership = Arc::new(Leadership::elected());
        let ctx = Arc::new((*ctx).clone().with_leadership(leadership.clone()));
        assert!(
            !leadership.is_valid(),
            "nothing acts before the Lease is taken"
        );
        acquire(&api, &cfg("a"), &leadership).await;
        assert!(ctx.check_leader().is_ok());
        // The process is frozen for a minute; meanwhile b took the expired Lease.
        tokio::time::advance(Duration::from_secs(60)).await;
        fake.edit(
            KEY,
            serde_json::json!({"spec": {"holderIdentity": "b",
                "renewTime": MicroTime(Timestamp::now())}}),
        );
        fake.take_calls();
        // a wakes up: a reconcile that runs before the renew loop is refused, with no call.
        let reg: crate::operator::crd::Registry = serde_json::from_value(serde_json::json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Registry",
            "metadata": {"name": "r", "namespace": "ops", "uid": "u1", "resourceVersion": "1"},
            "spec": {"storage": {"pvc": {"size": "1Gi"}}}
        }))
        .unwrap();
        let refused = crate::operator::registry::reconcile(Arc::new(reg), ctx.clone()).await;
        assert!(
            matches!(refused, Err(crate::operator::Error::NotLeader)),
            "{refused:?}"
        );
        assert!(fake.take_calls().is_empty(), "a paused leader made calls");
        // The renew loop reads the Lease, sees b, and gives up for good.
        keep(&api, &cfg("a"), &leadership).await;
        assert!(!leadership.is_valid());
        assert_eq!(
            fake.get(KEY).unwrap()["spec"]["holderIdentity"],
            "b",
            "b keeps it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_keep_the_leader_acting_and_a_missed_window_stops_it() {
        let l = Leadership::elected();
        let c = cfg("a");
        l.renewed(tokio::time::Instant::now(), &c);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(l.is_valid(), "inside duration - renew period");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            !l.is_valid(),
            "past it: another replica may be close to taking over"
        );
        assert!(
            Leadership::unconditional().is_valid(),
            "no election: always act"
        );
    }

    #[test]
    fn only_an_absent_or_expired_lease_changes_hands() {
        let now = Timestamp::from_second(1_000).unwrap();
        assert_eq!(decide(None, "a", now), Decision::Acquire);
        assert_eq!(decide(Some(&lease("a", 990)), "a", now), Decision::Renew);
        assert_eq!(
            decide(Some(&lease("b", 990)), "a", now),
            Decision::Wait { holder: "b".into() }
        );
        assert_eq!(decide(Some(&lease("b", 900)), "a", now), Decision::Acquire);
        assert_eq!(decide(Some(&lease("", 999)), "a", now), Decision::Acquire);
    }
}
