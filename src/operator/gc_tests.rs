//! reconcile(GarbageCollection) against the fake API server, one scenario per test.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::Context;
use super::crd::GarbageCollection;
use super::fake::{Fake, event_reasons, writes};
use super::gc::reconcile;

const GC: &str = "/apis/berth.dev/v1alpha1/namespaces/team/garbagecollections/sweep";
const REG: &str = "/apis/berth.dev/v1alpha1/namespaces/team/registries/hub";
const JOB: &str = "/apis/batch/v1/namespaces/team/jobs/sweep-1";
const CRON: &str = "/apis/batch/v1/namespaces/team/cronjobs/sweep";
const POD: &str = "/api/v1/namespaces/team/pods/sweep-1-abcde";

fn setup(spec: Value, with_registry: bool) -> (Arc<Context>, Fake) {
    let (ctx, fake) = Fake::context();
    fake.put(
        GC,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "GarbageCollection",
            "metadata": {"name": "sweep", "namespace": "team", "uid": "uid-sweep", "generation": 1, "resourceVersion": "1"},
            "spec": spec,
        }),
    );
    if with_registry {
        fake.put(
            REG,
            json!({
                "apiVersion": "berth.dev/v1alpha1", "kind": "Registry",
                "metadata": {"name": "hub", "namespace": "team", "uid": "uid-hub", "generation": 1},
                "spec": {"storage": {"pvc": {"size": "1Gi"}}},
            }),
        );
    }
    (ctx, fake)
}

async fn run(ctx: &Arc<Context>, fake: &Fake) -> Action {
    let gc: GarbageCollection = serde_json::from_value(fake.get(GC).unwrap()).unwrap();
    reconcile(Arc::new(gc), ctx.clone()).await.unwrap()
}

fn status(fake: &Fake) -> Value {
    fake.get(GC).unwrap()["status"].clone()
}

/// Plays the Job controller and the kubelet: the job's pod ended with `message`.
fn job_finished(fake: &Fake, job: &str, ok: bool, message: &str) {
    let job_path = format!("/apis/batch/v1/namespaces/team/jobs/{job}");
    let cond = if ok { "Complete" } else { "Failed" };
    fake.edit(
        &job_path,
        json!({"status": {"startTime": "2026-01-01T03:00:00Z", "completionTime": if ok { json!("2026-01-01T03:01:00Z") } else { Value::Null },
                          "conditions": [{"type": cond, "status": "True", "lastTransitionTime": "2026-01-01T03:01:00Z"}]}}),
    );
    fake.put(
        &format!("/api/v1/namespaces/team/pods/{job}-abcde"),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": format!("{job}-abcde"), "namespace": "team", "labels": {"batch.kubernetes.io/job-name": job}},
               "status": {"containerStatuses": [{"name": "gc", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                   "state": {"terminated": {"exitCode": if ok {0} else {1}, "message": message}}}]}}),
    );
}

#[tokio::test]
async fn one_shot_success_reports_what_was_freed() {
    let (ctx, fake) = setup(
        json!({"registryRef": {"name": "hub"}, "deleteUntagged": true}),
        true,
    );
    assert_eq!(
        run(&ctx, &fake).await,
        Action::requeue(Duration::from_secs(30))
    );
    let calls = fake.take_calls();
    assert!(
        writes(&calls).contains(&format!("PATCH {JOB}")),
        "{:?}",
        writes(&calls)
    );
    assert!(event_reasons(&calls).contains(&"Started".to_owned()));
    let job = fake.get(JOB).unwrap();
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["args"],
        json!([
            "gc",
            "--config",
            "/etc/berth/config.yaml",
            "--json",
            "--report-file",
            "/dev/termination-log",
            "--delete-untagged"
        ])
    );
    assert_eq!(pod["volumes"][0]["configMap"]["name"], "hub-config");
    assert_eq!(
        pod["volumes"][2]["persistentVolumeClaim"]["claimName"],
        "hub-data"
    );
    assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "uid-sweep");
    assert_eq!(status(&fake)["phase"], "Pending");

    fake.edit(
        JOB,
        json!({"status": {"active": 1, "startTime": "2026-01-01T03:00:00Z"}}),
    );
    run(&ctx, &fake).await;
    assert_eq!(status(&fake)["phase"], "Running");
    assert!(event_reasons(&fake.take_calls()).contains(&"Running".to_owned()));

    job_finished(
        &fake,
        "sweep-1",
        true,
        r#"{"blobsDeleted":3,"bytesFreed":1048576}"#,
    );
    assert_eq!(run(&ctx, &fake).await, Action::await_change());
    let calls = fake.take_calls();
    assert!(event_reasons(&calls).contains(&"Succeeded".to_owned()));
    let st = status(&fake);
    assert_eq!(st["phase"], "Succeeded");
    assert_eq!(st["blobsDeleted"], 3);
    assert_eq!(st["bytesFreed"], 1048576);
    assert_eq!(st["startTime"], "2026-01-01T03:00:00Z");
    assert_eq!(st["completionTime"], "2026-01-01T03:01:00Z");

    // Done is done: no write, even after the Job is cleaned away.
    fake.remove(JOB);
    run(&ctx, &fake).await;
    assert!(writes(&fake.take_calls()).is_empty());
}

#[tokio::test]
async fn report_falls_back_to_the_log_when_the_message_is_empty() {
    let (ctx, fake) = setup(json!({"registryRef": {"name": "hub"}}), true);
    run(&ctx, &fake).await;
    job_finished(&fake, "sweep-1", true, "");
    fake.put(
        &format!("{POD}/log"),
        json!("marking\n{\"blobsDeleted\":7,\"bytesFreed\":70}\n"),
    );
    run(&ctx, &fake).await;
    let st = status(&fake);
    assert_eq!(
        (st["blobsDeleted"].clone(), st["bytesFreed"].clone()),
        (json!(7), json!(70))
    );
}

#[tokio::test]
async fn failed_job_is_degraded_with_the_pod_message() {
    let (ctx, fake) = setup(json!({"registryRef": {"name": "hub"}}), true);
    run(&ctx, &fake).await;
    job_finished(
        &fake,
        "sweep-1",
        false,
        "error: cannot open storage at /var/lib/berth",
    );
    fake.take_calls();
    assert_eq!(
        run(&ctx, &fake).await,
        Action::await_change(),
        "a failed run is not retried in a loop"
    );
    let calls = fake.take_calls();
    assert!(event_reasons(&calls).contains(&"Failed".to_owned()));
    let st = status(&fake);
    assert_eq!(st["phase"], "Failed");
    let degraded = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "JobFailed");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("cannot open storage"),
        "{degraded}"
    );
    run(&ctx, &fake).await;
    assert!(writes(&fake.take_calls()).is_empty());
}

#[tokio::test]
async fn scheduled_gc_runs_as_a_cronjob_and_reports_its_latest_job() {
    let (ctx, fake) = setup(
        json!({"registryRef": {"name": "hub"}, "schedule": "0 3 * * *", "dryRun": true}),
        true,
    );
    assert_eq!(
        run(&ctx, &fake).await,
        Action::requeue(Duration::from_secs(30))
    );
    let calls = fake.take_calls();
    assert!(writes(&calls).contains(&format!("PATCH {CRON}")));
    assert!(event_reasons(&calls).contains(&"Scheduled".to_owned()));
    assert!(fake.get(JOB).is_none(), "no one-shot Job for a schedule");
    let cron = fake.get(CRON).unwrap();
    assert_eq!(cron["spec"]["schedule"], "0 3 * * *");
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    assert!(
        cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--dry-run"))
    );

    // The CronJob controller makes a Job (with the template's labels); it succeeds.
    let job = "sweep-29000000";
    fake.put(
        &format!("/apis/batch/v1/namespaces/team/jobs/{job}"),
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": job, "namespace": "team", "labels": {"berth.dev/garbage-collection": "sweep"}}}),
    );
    job_finished(&fake, job, true, r#"{"blobsDeleted":1,"bytesFreed":10}"#);
    assert_eq!(
        run(&ctx, &fake).await,
        Action::requeue(Duration::from_secs(300))
    );
    let st = status(&fake);
    assert_eq!(st["phase"], "Succeeded");
    assert_eq!(st["jobName"], job);
    assert_eq!(st["blobsDeleted"], 1);
    fake.take_calls();
    run(&ctx, &fake).await;
    assert!(writes(&fake.take_calls()).is_empty(), "steady state");
}

#[tokio::test]
async fn bad_cron_is_a_condition() {
    let (ctx, fake) = setup(
        json!({"registryRef": {"name": "hub"}, "schedule": "at three"}),
        true,
    );
    assert_eq!(run(&ctx, &fake).await, Action::await_change());
    let calls = fake.take_calls();
    assert_eq!(writes(&calls), [format!("PATCH {GC}/status")]);
    assert!(event_reasons(&calls).contains(&"InvalidSpec".to_owned()));
    assert!(fake.get(CRON).is_none());
}

#[tokio::test]
async fn missing_registry_waits_with_a_reason() {
    let (ctx, fake) = setup(json!({"registryRef": {"name": "hub"}}), false);
    assert_eq!(
        run(&ctx, &fake).await,
        Action::requeue(Duration::from_secs(300))
    );
    let st = status(&fake);
    assert_eq!(st["phase"], "Pending");
    let degraded = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(degraded["reason"], "RegistryNotFound");
    assert!(fake.get(JOB).is_none());
    fake.take_calls();
    run(&ctx, &fake).await;
    assert!(
        writes(&fake.take_calls()).is_empty(),
        "no write while nothing changed"
    );
}

/// Plays the CronJob controller: it made Job `job` at `created`.
fn cron_made(fake: &Fake, job: &str, created: &str) {
    fake.put(
        &format!("/apis/batch/v1/namespaces/team/jobs/{job}"),
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": job, "namespace": "team", "creationTimestamp": created,
                            "labels": {"berth.dev/garbage-collection": "sweep"}}}),
    );
}

#[tokio::test]
async fn a_run_that_ends_as_the_next_starts_still_has_its_result_recorded() {
    let (ctx, fake) = setup(
        json!({"registryRef": {"name": "hub"}, "schedule": "0 3 * * *"}),
        true,
    );
    run(&ctx, &fake).await;
    cron_made(&fake, "sweep-a", "2026-01-01T03:00:00Z");
    fake.edit(
        "/apis/batch/v1/namespaces/team/jobs/sweep-a",
        json!({"status": {"active": 1}}),
    );
    run(&ctx, &fake).await;
    assert_eq!(status(&fake)["phase"], "Running");
    // Job A fails and the CronJob starts B (a missed run under Forbid) before we look again.
    job_finished(&fake, "sweep-a", false, "error: store unreachable");
    cron_made(&fake, "sweep-b", "2026-01-01T03:02:00Z");
    fake.edit(
        "/apis/batch/v1/namespaces/team/jobs/sweep-b",
        json!({"status": {"active": 1}}),
    );
    fake.take_calls();
    run(&ctx, &fake).await;
    let st = status(&fake);
    assert_eq!(
        (st["phase"].clone(), st["jobName"].clone()),
        (json!("Running"), json!("sweep-b"))
    );
    assert_eq!(st["lastResult"]["jobName"], "sweep-a");
    assert_eq!(st["lastResult"]["phase"], "Failed");
    assert!(
        st["lastResult"]["message"]
            .as_str()
            .unwrap()
            .contains("store unreachable")
    );
    assert!(st["lastSuccessfulResult"].is_null());
    assert!(event_reasons(&fake.take_calls()).contains(&"Failed".to_owned()));

    // B succeeds: the last result and the last success are B; the columns show B's counts.
    job_finished(
        &fake,
        "sweep-b",
        true,
        r#"{"blobsDeleted":4,"bytesFreed":40}"#,
    );
    run(&ctx, &fake).await;
    let st = status(&fake);
    assert_eq!(st["lastResult"]["jobName"], "sweep-b");
    assert_eq!(st["lastSuccessfulResult"]["jobName"], "sweep-b");
    assert_eq!(
        (st["blobsDeleted"].clone(), st["bytesFreed"].clone()),
        (json!(4), json!(40))
    );

    // C fails: B stays the last success, and the columns mean the last finished run (C).
    cron_made(&fake, "sweep-c", "2026-01-02T03:00:00Z");
    job_finished(&fake, "sweep-c", false, "error: disk full");
    fake.take_calls();
    run(&ctx, &fake).await;
    let st = status(&fake);
    assert_eq!(st["lastResult"]["jobName"], "sweep-c");
    assert_eq!(st["lastSuccessfulResult"]["jobName"], "sweep-b");
    assert_eq!(st["lastSuccessfulResult"]["blobsDeleted"], 4);
    assert!(st["blobsDeleted"].is_null(), "C reported no counts: {st}");
    let notes = super::fake::event_notes(&fake.take_calls());
    assert_eq!(
        notes.iter().filter(|n| n.contains("sweep-c")).count(),
        1,
        "{notes:?}"
    );
    run(&ctx, &fake).await;
    assert!(writes(&fake.take_calls()).is_empty(), "steady state");
}

#[tokio::test]
async fn a_deleted_registry_suspends_the_cronjob_until_it_returns() {
    let (ctx, fake) = setup(
        json!({"registryRef": {"name": "hub"}, "schedule": "0 3 * * *"}),
        true,
    );
    run(&ctx, &fake).await;
    assert_eq!(fake.get(CRON).unwrap()["spec"]["suspend"], false);
    let registry = fake.get(REG).unwrap();
    fake.remove(REG);
    fake.take_calls();
    run(&ctx, &fake).await;
    assert_eq!(
        fake.get(CRON).unwrap()["spec"]["suspend"],
        true,
        "no Job may mount the gone ConfigMap"
    );
    let st = status(&fake);
    let degraded = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(degraded["reason"], "RegistryNotFound");
    assert!(
        degraded["message"].as_str().unwrap().contains("suspended"),
        "{degraded}"
    );
    fake.take_calls();
    run(&ctx, &fake).await;
    assert!(writes(&fake.take_calls()).is_empty(), "suspended once");

    // A Registry being deleted counts as gone too.
    let mut going = registry.clone();
    going["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    fake.put(REG, going);
    run(&ctx, &fake).await;
    assert_eq!(fake.get(CRON).unwrap()["spec"]["suspend"], true);

    fake.put(REG, registry);
    fake.take_calls();
    run(&ctx, &fake).await;
    assert_eq!(fake.get(CRON).unwrap()["spec"]["suspend"], false, "resumed");
    let calls = fake.take_calls();
    assert!(
        super::fake::event_notes(&calls)
            .iter()
            .any(|n| n.contains("is back")),
        "{:?}",
        super::fake::event_notes(&calls)
    );
}

#[test]
fn a_registry_event_wakes_the_collections_that_name_it() {
    let gc = |name: &str, ns: &str, reg: &str| {
        let mut g = GarbageCollection::new(
            name,
            super::crd::GarbageCollectionSpec {
                registry_ref: super::crd::RegistryRef { name: reg.into() },
                ..Default::default()
            },
        );
        g.metadata.namespace = Some(ns.into());
        Arc::new(g)
    };
    let all = [
        gc("a", "team", "hub"),
        gc("b", "team", "other"),
        gc("c", "elsewhere", "hub"),
    ];
    let mut reg = super::crd::Registry::new("hub", Default::default());
    reg.metadata.namespace = Some("team".into());
    let woken: Vec<String> = super::gc::collections_for_registry(&all, &reg)
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(woken, ["a"]);
}

#[tokio::test]
async fn retention_rules_per_repository_reach_the_job() {
    let (ctx, fake) = setup(
        json!({"registryRef": {"name": "hub"}, "retention": {
            "keepLast": 5,
            "rules": [{"repositories": "team-a/**", "keepTags": "^v[0-9]", "olderThan": "30d"}]
        }}),
        true,
    );
    run(&ctx, &fake).await;
    let args = fake.get(JOB).unwrap()["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    let args: Vec<&str> = args
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let rules: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--rule")
        .map(|w| w[1])
        .collect();
    assert_eq!(
        rules,
        [
            "team-a/**:keep-tags=^v[0-9],older-than=30d",
            "**:keep-last=5"
        ]
    );
}
