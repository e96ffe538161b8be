//! reconcile(Mirror): keep the mirror set in a ConfigMap and run `berth mirror sync` with it
//! as a Job (or a CronJob on a schedule) that pushes into the referenced Registry through its
//! Service, then report the last run's figures (images, blobs and bytes copied, the first
//! error) from the container's termination message, as GarbageCollection does for gc.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::Deserialize;
use serde_json::json;
use tracing::instrument;

use super::apply::{ensure, remove_owned};
use super::conditions::{self, DEGRADED, PROGRESSING, READY, Wanted, blocked, wanted};
use super::crd::{GcPhase, Mirror, MirrorStatus, Registry};
use super::jobs::{
    created, job_phase, latest_job, owned_jobs, parse_report, suspend_cronjob, termination_message,
};
use super::resources::{self as build, BuildError, MIRROR_LABEL};
use super::{Context, Error, FIELD_MANAGER};

/// `berth mirror sync --report-file`'s compact report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncReport {
    pub images: u64,
    pub manifests_copied: u64,
    pub blobs_copied: u64,
    pub blobs_skipped: u64,
    pub bytes_copied: u64,
    pub error_count: u64,
    #[serde(default)]
    pub errors: Vec<String>,
}

#[instrument(skip(m, ctx), fields(mirror = %m.name_any(), namespace = m.namespace().unwrap_or_default()))]
pub async fn reconcile(m: Arc<Mirror>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.check_leader()?;
    ctx.metrics.reconciled("Mirror");
    let ns = m.namespace().unwrap_or_default();
    let client = &ctx.client;
    let old = m.status.clone().unwrap_or_default();
    let name = m.name_any();
    let cron_name = format!("{name}-sync");
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let pending = || {
        let mut next = old.clone();
        next.phase = Some(next.phase.unwrap_or_default());
        next
    };
    if let Some(s) = &m.spec.schedule
        && !build::is_cron(s)
    {
        let msg = format!("spec.schedule {s:?} is not a cron expression such as \"0 * * * *\"");
        write_status(&m, &ctx, blocked("InvalidSpec", &msg), pending()).await?;
        return Ok(Action::await_change());
    }
    let reg_name = &m.spec.registry_ref.name;
    let reg = Api::<Registry>::namespaced(client.clone(), &ns)
        .get_opt(reg_name)
        .await?
        .filter(|r| r.meta().deletion_timestamp.is_none());
    let Some(reg) = reg else {
        let suspended = suspend_cronjob(&cronjobs, &cron_name).await?;
        let msg = format!(
            "Registry {ns}/{reg_name} does not exist; {}",
            if suspended {
                format!("CronJob {cron_name} is suspended until it does")
            } else {
                "fix spec.registryRef or create it".to_owned()
            }
        );
        write_status(&m, &ctx, blocked("RegistryNotFound", &msg), pending()).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    };
    if let Some(msg) =
        super::registry::check_secrets(client, &ns, &build::mirror_secrets(&m)).await?
    {
        write_status(&m, &ctx, blocked("SecretMissing", &msg), pending()).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    let Some(set) = build_or_block(&m, &ctx, &old, build::set_config_map(&m)).await? else {
        return Ok(Action::await_change());
    };
    ensure(&Api::<ConfigMap>::namespaced(client.clone(), &ns), &set).await?;

    let job = if m.spec.schedule.is_some() {
        let built = build::mirror_cronjob(&m, &reg, &ctx.defaults);
        let Some(cron) = build_or_block(&m, &ctx, &old, built).await? else {
            return Ok(Action::await_change());
        };
        if ensure(&cronjobs, &cron).await?.changed {
            let note = format!(
                "CronJob {cron_name} runs `berth mirror sync` into Registry {reg_name} on {:?}",
                m.spec.schedule.clone().unwrap_or_default()
            );
            ctx.event(m.as_ref(), EventType::Normal, "Scheduled", note)
                .await;
        }
        latest_job(&jobs, MIRROR_LABEL, &name).await?
    } else {
        remove_owned(&cronjobs, &cron_name, &m.uid().unwrap_or_default()).await?;
        let job_name = build::mirror_job_name(&m)?;
        let finished = matches!(old.phase, Some(GcPhase::Succeeded | GcPhase::Failed));
        if old.job_name.as_deref() == Some(job_name.as_str())
            && finished
            && old.observed_generation == m.meta().generation
        {
            // This generation already ran; its result is in the status.
            return Ok(Action::await_change());
        }
        match jobs.get_opt(&job_name).await? {
            Some(j) => Some(j),
            None => {
                let built = build::mirror_job(&m, &reg, &ctx.defaults);
                let Some(job) = build_or_block(&m, &ctx, &old, built).await? else {
                    return Ok(Action::await_change());
                };
                let made = ensure(&jobs, &job).await?.object;
                let note =
                    format!("Job {job_name} runs `berth mirror sync` into Registry {reg_name}");
                ctx.event(m.as_ref(), EventType::Normal, "Started", note)
                    .await;
                Some(made)
            }
        }
    };

    let mut next = old.clone();
    let owned = owned_jobs(&jobs, MIRROR_LABEL, &name).await?;
    let newest_finished = owned
        .iter()
        .filter(|j| matches!(job_phase(j), GcPhase::Succeeded | GcPhase::Failed))
        .max_by_key(|j| created(j));
    let mut recorded = None;
    if let Some(f) = newest_finished
        && old.last_job_name.as_deref() != Some(f.name_any().as_str())
    {
        recorded = Some(record(client, &ns, f, &mut next).await?);
    }
    match &job {
        None => next.phase = Some(GcPhase::Pending),
        Some(j) => {
            let st = j.status.clone().unwrap_or_default();
            next.phase = Some(job_phase(j));
            next.job_name = Some(j.name_any());
            next.start_time = st.start_time.clone();
            next.completion_time = st.completion_time.clone();
        }
    }
    let phase = next.phase.unwrap_or_default();
    write_status(
        &m,
        &ctx,
        phase_conditions(&m, &next, job.is_some()),
        next.clone(),
    )
    .await?;
    if let Some((job_name, ok, line)) = recorded {
        let (kind, reason) = match ok {
            true => (EventType::Normal, "Succeeded"),
            false => (EventType::Warning, "Failed"),
        };
        ctx.event(m.as_ref(), kind, reason, format!("Job {job_name}: {line}"))
            .await;
    }
    Ok(match (phase, m.spec.schedule.is_some()) {
        (GcPhase::Running | GcPhase::Pending, _) => Action::requeue(Duration::from_secs(30)),
        (_, true) => Action::requeue(Duration::from_secs(300)),
        _ => Action::await_change(),
    })
}

/// Reads a finished Job's report into the status; returns its name, whether it succeeded,
/// and the line its Event says.
async fn record(
    client: &kube::Client,
    ns: &str,
    j: &Job,
    next: &mut MirrorStatus,
) -> Result<(String, bool, String), Error> {
    let ok = job_phase(j) == GcPhase::Succeeded;
    let msg = termination_message(client, ns, &j.name_any(), "mirror")
        .await?
        .unwrap_or_default();
    let report = parse_report::<SyncReport>(&msg);
    next.last_job_name = Some(j.name_any());
    let line = match &report {
        Some(r) => {
            next.images = Some(r.images);
            next.manifests_copied = Some(r.manifests_copied);
            next.blobs_copied = Some(r.blobs_copied);
            next.blobs_skipped = Some(r.blobs_skipped);
            next.bytes_copied = Some(r.bytes_copied);
            next.errors = Some(r.error_count);
            format!(
                "{} images, {} blobs ({} bytes) copied, {} blobs already there, {} errors",
                r.images, r.blobs_copied, r.bytes_copied, r.blobs_skipped, r.error_count
            )
        }
        None => format!("no report ({})", msg.trim()),
    };
    let first_error = report.as_ref().and_then(|r| r.errors.first().cloned());
    match (ok, first_error) {
        (true, None) => {
            next.last_error = None;
            next.last_success_time = j
                .status
                .as_ref()
                .and_then(|s| s.completion_time.clone())
                .or_else(|| Some(Time(Timestamp::now())));
        }
        (_, Some(e)) => next.last_error = Some(e),
        (false, None) => {
            next.last_error = Some(msg.trim().chars().take(300).collect());
        }
    }
    Ok((j.name_any(), ok, line))
}

fn phase_conditions(m: &Mirror, next: &MirrorStatus, has_job: bool) -> Vec<Wanted> {
    let job = next.job_name.clone().unwrap_or_default();
    let finished = next.last_job_name.as_deref() == Some(job.as_str());
    match next.phase.unwrap_or_default() {
        GcPhase::Succeeded if finished => vec![
            wanted(
                READY,
                true,
                "Synced",
                format!(
                    "Job {job} copied {} images ({} bytes)",
                    next.images.unwrap_or(0),
                    next.bytes_copied.unwrap_or(0)
                ),
            ),
            wanted(PROGRESSING, false, "Finished", "the run is over"),
            wanted(DEGRADED, false, "AsExpected", "no problems found"),
        ],
        GcPhase::Failed if finished => {
            let msg = format!(
                "Job {job} failed: {}; see `kubectl logs job/{job}`",
                next.last_error.clone().unwrap_or_default()
            );
            vec![
                wanted(READY, false, "SyncFailed", msg.clone()),
                wanted(PROGRESSING, false, "Finished", "the run is over"),
                wanted(DEGRADED, true, "SyncFailed", msg),
            ]
        }
        phase => vec![
            wanted(
                READY,
                m.spec.schedule.is_some()
                    && next.last_error.is_none()
                    && next.last_success_time.is_some(),
                if has_job {
                    "Running"
                } else {
                    "WaitingForSchedule"
                },
                match &next.last_job_name {
                    Some(j) => format!("the last finished run was Job {j}"),
                    None => "no run has finished yet".to_owned(),
                },
            ),
            wanted(
                PROGRESSING,
                has_job && matches!(phase, GcPhase::Running | GcPhase::Pending),
                if has_job {
                    "Running"
                } else {
                    "WaitingForSchedule"
                },
                format!("phase {phase:?}"),
            ),
            wanted(DEGRADED, false, "AsExpected", "no problems found"),
        ],
    }
}

/// The Mirrors a Registry event should wake: those in its namespace naming it.
pub fn mirrors_for_registry(
    mirrors: &[Arc<Mirror>],
    reg: &Registry,
) -> Vec<kube::runtime::reflector::ObjectRef<Mirror>> {
    super::jobs::naming_registry(mirrors, reg, |o| o.spec.registry_ref.name.as_str())
}

/// A builder's verdict on bad input becomes a condition; other errors propagate.
async fn build_or_block<T>(
    m: &Mirror,
    ctx: &Context,
    old: &MirrorStatus,
    built: Result<T, BuildError>,
) -> Result<Option<T>, Error> {
    match built {
        Ok(t) => Ok(Some(t)),
        Err(e @ BuildError::Invalid { .. }) => {
            let mut next = old.clone();
            next.phase = Some(next.phase.unwrap_or_default());
            write_status(m, ctx, blocked("InvalidSpec", &e.to_string()), next).await?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

async fn write_status(
    m: &Mirror,
    ctx: &Context,
    wanted: Vec<Wanted>,
    mut next: MirrorStatus,
) -> Result<(), Error> {
    let old = m.status.clone().unwrap_or_default();
    let generation = m.meta().generation;
    next.observed_generation = generation;
    next.conditions = conditions::merge(
        &old.conditions,
        &wanted,
        generation,
        &Time(Timestamp::now()),
    );
    if next == old {
        return Ok(());
    }
    let api: Api<Mirror> = Api::namespaced(ctx.client.clone(), &m.namespace().unwrap_or_default());
    let patch = json!({ "apiVersion": "berth.dev/v1alpha1", "kind": "Mirror", "status": next });
    api.patch_status(
        &m.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    for c in conditions::transitions(&old.conditions, &next.conditions) {
        if c.type_ == DEGRADED && c.status == "True" && c.reason != "SyncFailed" {
            ctx.event(m, EventType::Warning, &c.reason, c.message.clone())
                .await;
        }
    }
    Ok(())
}
