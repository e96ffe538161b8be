//! reconcile(GarbageCollection): run `berth gc` as a Job (or a CronJob on a schedule) against
//! the referenced Registry's config and volume, then report the run's phase, times and result.
//! The result comes from the gc container's termination message (its `--json` report), with
//! the container log as a fallback when the message is empty.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
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
use super::crd::{GarbageCollection, GarbageCollectionStatus, GcPhase, GcRunResult, Registry};
use super::jobs::{
    created, job_phase, latest_job, owned_jobs, parse_report, suspend_cronjob, termination_message,
};
use super::resources::{self as build, BuildError, GC_LABEL};
use super::{Context, Error, FIELD_MANAGER};

/// The part of `berth gc --json`'s report the status shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
}

/// What one Job says about its run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunState {
    pub phase: GcPhase,
    pub job_name: String,
    pub start_time: Option<Time>,
    pub completion_time: Option<Time>,
}

#[instrument(skip(gc, ctx), fields(gc = %gc.name_any(), namespace = gc.namespace().unwrap_or_default()))]
pub async fn reconcile(gc: Arc<GarbageCollection>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.check_leader()?;
    ctx.metrics.reconciled("GarbageCollection");
    let ns = gc.namespace().unwrap_or_default();
    let client = &ctx.client;
    let old = gc.status.clone().unwrap_or_default();
    if let Some(s) = &gc.spec.schedule
        && !build::is_cron(s)
    {
        let msg = format!("spec.schedule {s:?} is not a cron expression such as \"0 3 * * *\"");
        write_status(&gc, &ctx, blocked("InvalidSpec", &msg), old.clone()).await?;
        return Ok(Action::await_change());
    }
    let reg_name = &gc.spec.registry_ref.name;
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let reg = Api::<Registry>::namespaced(client.clone(), &ns)
        .get_opt(reg_name)
        .await?
        // A Registry being deleted is going: its ConfigMap and volume go with it.
        .filter(|r| r.meta().deletion_timestamp.is_none());
    let Some(reg) = reg else {
        // A CronJob would start Jobs that mount the Registry's deleted ConfigMap: stop it
        // until the Registry is back (the Registry watch brings us here at once then).
        let suspended = suspend_cronjob(&cronjobs, &gc.name_any()).await?;
        let msg = if suspended {
            format!(
                "Registry {ns}/{reg_name} does not exist; CronJob {} is suspended until it does",
                gc.name_any()
            )
        } else {
            format!("Registry {ns}/{reg_name} does not exist; fix spec.registryRef or create it")
        };
        let mut next = old.clone();
        next.phase = Some(next.phase.unwrap_or_default());
        write_status(&gc, &ctx, blocked("RegistryNotFound", &msg), next).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    };

    let job = if gc.spec.schedule.is_some() {
        let cron =
            build_or_block(&gc, &ctx, &old, build::gc_cronjob(&gc, &reg, &ctx.defaults)).await?;
        let Some(cron) = cron else {
            return Ok(Action::await_change());
        };
        let was_suspended = cronjobs
            .get_opt(&cron.name_any())
            .await?
            .and_then(|c| c.spec?.suspend)
            .unwrap_or(false);
        if ensure(&cronjobs, &cron).await?.changed {
            let note = if was_suspended {
                format!(
                    "Registry {reg_name} is back: CronJob {} resumes `berth gc` on {:?}",
                    cron.name_any(),
                    gc.spec.schedule.clone().unwrap_or_default()
                )
            } else {
                format!(
                    "CronJob {} runs `berth gc` on {:?}",
                    cron.name_any(),
                    gc.spec.schedule.clone().unwrap_or_default()
                )
            };
            ctx.event(gc.as_ref(), EventType::Normal, "Scheduled", note)
                .await;
        }
        latest_job(&jobs, GC_LABEL, &gc.name_any()).await?
    } else {
        remove_owned(&cronjobs, &gc.name_any(), &gc.uid().unwrap_or_default()).await?;
        let name = build::gc_job_name(&gc)?;
        let finished = matches!(old.phase, Some(GcPhase::Succeeded | GcPhase::Failed));
        if old.job_name.as_deref() == Some(name.as_str())
            && finished
            && old.observed_generation == gc.meta().generation
        {
            // This generation already ran; its Job may be gone, its result is in the status.
            return Ok(Action::await_change());
        }
        match jobs.get_opt(&name).await? {
            Some(j) => Some(j),
            None => {
                let Some(job) =
                    build_or_block(&gc, &ctx, &old, build::gc_job(&gc, &reg, &ctx.defaults))
                        .await?
                else {
                    return Ok(Action::await_change());
                };
                let made = ensure(&jobs, &job).await?.object;
                ctx.event(
                    gc.as_ref(),
                    EventType::Normal,
                    "Started",
                    format!("Job {name} runs `berth gc` against Registry {reg_name}"),
                )
                .await;
                Some(made)
            }
        }
    };

    let mut next = old.clone();
    // Every finished Job is looked at, not only the current one: a CronJob may start the next
    // run right after one ends, and that one's result must still be recorded.
    let owned = owned_jobs(&jobs, GC_LABEL, &gc.name_any()).await?;
    let mut recorded = vec![];
    for finished in newest_finished(&owned) {
        let already = [&old.last_result, &old.last_successful_result]
            .into_iter()
            .flatten()
            .any(|r| r.job_name == finished.name_any());
        if already {
            continue;
        }
        let result = read_result(client, &ns, finished).await?;
        if result.phase == GcPhase::Succeeded {
            next.last_successful_result = Some(result.clone());
        }
        let newer = next.last_result.as_ref().is_none_or(|r| {
            owned
                .iter()
                .find(|j| j.name_any() == r.job_name)
                .is_none_or(|j| created(j) <= created(finished))
        });
        if newer {
            next.blobs_deleted = result.blobs_deleted;
            next.bytes_freed = result.bytes_freed;
            next.last_result = Some(result.clone());
        }
        recorded.push(result);
    }
    match &job {
        None => {
            next.phase = Some(GcPhase::Pending);
        }
        Some(j) => {
            let st = j.status.clone().unwrap_or_default();
            next.phase = Some(job_phase(j));
            next.job_name = Some(j.name_any());
            next.start_time = st.start_time.clone();
            next.completion_time = match next.last_result.as_ref() {
                Some(r) if r.job_name == j.name_any() => r.completion_time.clone(),
                _ => st.completion_time.clone(),
            };
        }
    }
    let phase = next.phase.unwrap_or_default();
    let job_name = next.job_name.clone().unwrap_or_default();
    let wanted = match phase {
        GcPhase::Succeeded => {
            let msg = match (next.blobs_deleted, next.bytes_freed) {
                (Some(b), Some(f)) => format!("Job {job_name} deleted {b} blobs, freed {f} bytes"),
                _ => format!("Job {job_name} succeeded but printed no report"),
            };
            vec![
                wanted(READY, true, "Succeeded", msg),
                wanted(PROGRESSING, false, "Finished", "the run is over"),
                wanted(DEGRADED, false, "AsExpected", "no problems found"),
            ]
        }
        GcPhase::Failed => {
            let detail = next
                .last_result
                .as_ref()
                .filter(|r| r.job_name == job_name)
                .and_then(|r| r.message.clone())
                .unwrap_or_default();
            let msg = format!(
                "Job {job_name} failed: {}; see `kubectl logs job/{job_name}`",
                detail.trim()
            );
            vec![
                wanted(READY, false, "JobFailed", msg.clone()),
                wanted(PROGRESSING, false, "Finished", "the run is over"),
                wanted(DEGRADED, true, "JobFailed", msg),
            ]
        }
        GcPhase::Running | GcPhase::Pending => vec![
            wanted(
                READY,
                gc.spec.schedule.is_some() && job.is_none(),
                if job.is_none() {
                    "WaitingForSchedule"
                } else {
                    "Running"
                },
                match &next.last_result {
                    Some(r) => format!("the last finished run, Job {}, {:?}", r.job_name, r.phase),
                    None => "no run has finished yet".to_owned(),
                },
            ),
            wanted(
                PROGRESSING,
                job.is_some(),
                if job.is_some() {
                    "Running"
                } else {
                    "WaitingForSchedule"
                },
                format!("phase {phase:?}"),
            ),
            wanted(DEGRADED, false, "AsExpected", "no problems found"),
        ],
    };
    let started =
        phase == GcPhase::Running && (old.phase != next.phase || old.job_name != next.job_name);
    write_status(&gc, &ctx, wanted, next.clone()).await?;
    // One Event per recorded result, oldest first, each naming its Job.
    for r in recorded.iter().rev() {
        match r.phase {
            GcPhase::Succeeded => {
                ctx.event(
                    gc.as_ref(),
                    EventType::Normal,
                    "Succeeded",
                    format!(
                        "Job {} deleted {} blobs, freed {} bytes",
                        r.job_name,
                        r.blobs_deleted.unwrap_or(0),
                        r.bytes_freed.unwrap_or(0)
                    ),
                )
                .await
            }
            _ => {
                ctx.event(
                    gc.as_ref(),
                    EventType::Warning,
                    "Failed",
                    format!(
                        "Job {} failed: {}",
                        r.job_name,
                        r.message.clone().unwrap_or_default().trim()
                    ),
                )
                .await
            }
        }
    }
    if started {
        ctx.event(
            gc.as_ref(),
            EventType::Normal,
            "Running",
            format!("Job {job_name} is running"),
        )
        .await
    }
    Ok(match (phase, gc.spec.schedule.is_some()) {
        (GcPhase::Running | GcPhase::Pending, _) => Action::requeue(Duration::from_secs(30)),
        (_, true) => Action::requeue(Duration::from_secs(300)),
        _ => Action::await_change(),
    })
}

/// The newest finished Job and the newest succeeded one (the same Job when it succeeded),
/// newest first.
fn newest_finished(jobs: &[Job]) -> Vec<&Job> {
    let newest = |want: &dyn Fn(GcPhase) -> bool| {
        jobs.iter()
            .filter(|j| want(job_phase(j)))
            .max_by_key(|j| created(j))
    };
    let last = newest(&|p| matches!(p, GcPhase::Succeeded | GcPhase::Failed));
    let good = newest(&|p| p == GcPhase::Succeeded);
    let mut out: Vec<&Job> = last.into_iter().collect();
    if let Some(g) = good
        && out.iter().all(|j| j.name_any() != g.name_any())
    {
        out.push(g);
    }
    out
}

/// A finished Job's result, from its pod's termination message (or log).
async fn read_result(client: &kube::Client, ns: &str, j: &Job) -> Result<GcRunResult, Error> {
    let phase = job_phase(j);
    let st = j.status.clone().unwrap_or_default();
    let msg = termination_message(client, ns, &j.name_any(), "gc").await?;
    let report = match phase {
        GcPhase::Succeeded => msg.as_deref().and_then(parse_report::<GcReport>),
        _ => None,
    };
    let completion_time = match phase {
        GcPhase::Failed => st
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Failed")
            .and_then(|c| c.last_transition_time.clone()),
        _ => st.completion_time.clone(),
    };
    Ok(GcRunResult {
        job_name: j.name_any(),
        phase,
        start_time: st.start_time.clone(),
        completion_time,
        blobs_deleted: report.map(|r| r.blobs_deleted),
        bytes_freed: report.map(|r| r.bytes_freed),
        message: match phase {
            GcPhase::Failed => Some(msg.unwrap_or_default().trim().to_owned()),
            _ => None,
        },
    })
}

/// The GarbageCollections a Registry event should wake: those in its namespace naming it.
pub fn collections_for_registry(
    collections: &[Arc<GarbageCollection>],
    reg: &Registry,
) -> Vec<kube::runtime::reflector::ObjectRef<GarbageCollection>> {
    super::jobs::naming_registry(collections, reg, |o| o.spec.registry_ref.name.as_str())
}

/// A builder's verdict on bad input becomes a condition; other errors propagate.
async fn build_or_block<T>(
    gc: &GarbageCollection,
    ctx: &Context,
    old: &GarbageCollectionStatus,
    built: Result<T, BuildError>,
) -> Result<Option<T>, Error> {
    match built {
        Ok(t) => Ok(Some(t)),
        Err(e @ BuildError::Invalid { .. }) => {
            write_status(gc, ctx, blocked("InvalidSpec", &e.to_string()), old.clone()).await?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

async fn write_status(
    gc: &GarbageCollection,
    ctx: &Context,
    wanted: Vec<Wanted>,
    mut next: GarbageCollectionStatus,
) -> Result<(), Error> {
    let old = gc.status.clone().unwrap_or_default();
    let generation = gc.meta().generation;
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
    let api: Api<GarbageCollection> =
        Api::namespaced(ctx.client.clone(), &gc.namespace().unwrap_or_default());
    let patch =
        json!({ "apiVersion": "berth.dev/v1alpha1", "kind": "GarbageCollection", "status": next });
    api.patch_status(
        &gc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    for c in conditions::transitions(&old.conditions, &next.conditions) {
        if c.type_ == DEGRADED && c.status == "True" && c.reason != "JobFailed" {
            ctx.event(gc, EventType::Warning, &c.reason, c.message.clone())
                .await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_found_in_messages_and_logs() {
        assert_eq!(
            parse_report(r#"{"blobsDeleted":3,"bytesFreed":1024,"dryRun":false}"#),
            Some(GcReport {
                blobs_deleted: 3,
                bytes_freed: 1024
            })
        );
        assert_eq!(
            parse_report("marking\nsweeping\n{\"blobsDeleted\":0,\"bytesFreed\":0}\n"),
            Some(GcReport::default())
        );
        assert_eq!(parse_report::<GcReport>("error: store unreachable"), None);
    }
}
