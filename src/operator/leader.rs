//! Leader election on a coordination.k8s.io Lease, so two operator replicas never both act.
//! Acquiring and renewing are optimistic writes (create, or replace at the read
//! resourceVersion): of two replicas racing, the API server lets exactly one win.

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
pub async fn acquire(api: &Api<Lease>, cfg: &LeaseConfig) {
    loop {
        match try_hold(api, cfg).await {
            Ok(true) => {
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
/// caller must stop acting (another replica may take over).
pub async fn keep(api: &Api<Lease>, cfg: &LeaseConfig) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.renew_every).await;
        match try_hold(api, cfg).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::error!("lost the leader Lease to another replica");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the leader Lease"),
        }
        if last_ok.elapsed() > cfg.duration {
            tracing::error!("could not renew the leader Lease in time");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
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
