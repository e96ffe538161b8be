//! What the controllers that run `berth` as Jobs share (GarbageCollection, Mirror, and the
//! Registry's purge): a Job's phase, its pod's JSON report (termination message, or the log
//! tail), the Jobs one owner made, and a CronJob suspended while what it needs is gone.

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams};
use serde_json::json;

use super::crd::GcPhase;
use super::{Error, FIELD_MANAGER};

/// Finds the JSON report in a termination message or log tail: the whole text, or the last
/// line that parses.
pub fn parse_report<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    serde_json::from_str(text.trim()).ok().or_else(|| {
        text.lines()
            .rev()
            .find_map(|l| serde_json::from_str(l.trim()).ok())
    })
}

pub fn job_phase(job: &Job) -> GcPhase {
    let st = job.status.clone().unwrap_or_default();
    let has = |t: &str| {
        st.conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == t && c.status == "True")
    };
    if has("Complete") {
        GcPhase::Succeeded
    } else if has("Failed") {
        GcPhase::Failed
    } else if st.active.unwrap_or(0) > 0 {
        GcPhase::Running
    } else {
        GcPhase::Pending
    }
}

/// When a Job was made (and its name, to order Jobs made in the same second).
pub fn created(j: &Job) -> (Option<Timestamp>, String) {
    (
        j.metadata.creation_timestamp.clone().map(|t| t.0),
        j.name_any(),
    )
}

/// Every Job of one owner (its one-shot Jobs and its CronJob's), found by its `label`.
pub async fn owned_jobs(jobs: &Api<Job>, label: &str, owner: &str) -> Result<Vec<Job>, Error> {
    let list = jobs
        .list(&ListParams::default().labels(&format!("{label}={owner}")))
        .await?;
    Ok(list.items)
}

/// The most recent Job of one owner.
pub async fn latest_job(jobs: &Api<Job>, label: &str, owner: &str) -> Result<Option<Job>, Error> {
    Ok(owned_jobs(jobs, label, owner)
        .await?
        .into_iter()
        .max_by_key(created))
}

/// A Job container's termination message, or the tail of its log when that is empty.
pub async fn termination_message(
    client: &kube::Client,
    ns: &str,
    job: &str,
    container: &str,
) -> Result<Option<String>, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await?;
    let Some(pod) = list
        .items
        .into_iter()
        .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0))
    else {
        return Ok(None);
    };
    let message = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == container))
        .and_then(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
        .filter(|m| !m.trim().is_empty());
    if message.is_some() {
        return Ok(message);
    }
    let lp = LogParams {
        container: Some(container.into()),
        tail_lines: Some(20),
        ..LogParams::default()
    };
    match pods.logs(&pod.name_any(), &lp).await {
        Ok(text) => Ok(Some(text)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Suspends a CronJob, if there is one and it runs; true when it exists.
pub async fn suspend_cronjob(cronjobs: &Api<CronJob>, name: &str) -> Result<bool, Error> {
    let Some(cron) = cronjobs.get_opt(name).await? else {
        return Ok(false);
    };
    if cron.spec.as_ref().and_then(|s| s.suspend) != Some(true) {
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let patch = json!({ "spec": { "suspend": true } });
        cronjobs.patch(name, &pp, &Patch::Merge(&patch)).await?;
    }
    Ok(true)
}

/// The objects naming Registry `reg` (same namespace) by `registry_of`: what a Registry event
/// should wake among a controller's GarbageCollections or Mirrors.
pub fn naming_registry<K>(
    objs: &[std::sync::Arc<K>],
    reg: &super::crd::Registry,
    registry_of: impl Fn(&K) -> &str,
) -> Vec<kube::runtime::reflector::ObjectRef<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone,
{
    let name = reg.name_any();
    let ns = reg.namespace();
    objs.iter()
        .filter(|o| o.namespace() == ns && registry_of(o) == name)
        .map(|o| kube::runtime::reflector::ObjectRef::from_obj(&**o))
        .collect()
}
