//! reconcile(Mirror) against the fake API server, one scenario per test.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::Context;
use super::crd::Mirror;
use super::fake::{Fake, event_reasons, writes};
use super::mirror::reconcile;

const MIRROR: &str = "/apis/berth.dev/v1alpha1/namespaces/team/mirrors/alpine";
const REG: &str = "/apis/berth.dev/v1alpha1/namespaces/team/registries/hub";
const JOB: &str = "/apis/batch/v1/namespaces/team/jobs/alpine-sync-1";
const CRON: &str = "/apis/batch/v1/namespaces/team/cronjobs/alpine-sync";
const SET: &str = "/api/v1/namespaces/team/configmaps/alpine-mirror-set";

fn spec() -> Value {
    json!({"registryRef": {"name": "hub"}, "mirrors": [
        {"source": "https://registry-1.docker.io/library/alpine", "semver": ">=3.19 <4",
         "platforms": ["linux/amd64"], "destination": "mirror/alpine"}]})
}

fn setup(spec: Value, registry: Option<Value>) -> (Arc<Context>, Fake) {
    let (ctx, fake) = Fake::context();
    fake.put(
        MIRROR,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Mirror",
            "metadata": {"name": "alpine", "namespace": "team", "uid": "uid-alpine", "generation": 1, "resourceVersion": "1"},
            "spec": spec,
        }),
    );
    if let Some(reg_spec) = registry {
        fake.put(
            REG,
            json!({
                "apiVersion": "berth.dev/v1alpha1", "kind": "Registry",
                "metadata": {"name": "hub", "namespace": "team", "uid": "uid-hub", "generation": 1},
                "spec": reg_spec,
            }),
        );
    }
    (ctx, fake)
}

fn open_registry() -> Option<Value> {
    Some(json!({"storage": {"pvc": {"size": "1Gi"}}, "allowSparseIndexes": true}))
}

async fn run(ctx: &Arc<Context>, fake: &Fake) -> Action {
    let m: Mirror = serde_json::from_value(fake.get(MIRROR).unwrap()).unwrap();
    reconcile(Arc::new(m), ctx.clone()).await.unwrap()
}

fn status(fake: &Fake) -> Value {
    fake.get(MIRROR).unwrap()["status"].clone()
}

fn condition(fake: &Fake, kind: &str) -> Value {
    status(fake)["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap()
        .clone()
}

/// Plays the Job controller and the kubelet: the job's pod ended with `message`.
fn job_finished(fake: &Fake, job: &str, ok: bool, message: &str) {
    let cond = if ok { "Complete" } else { "Failed" };
    fake.edit(
        &format!("/apis/batch/v1/namespaces/team/jobs/{job}"),
        json!({"status": {"startTime": "2026-01-01T03:00:00Z", "completionTime": if ok { json!("2026-01-01T03:05:00Z") } else { Value::Null },
                          "conditions": [{"type": cond, "status": "True", "lastTransitionTime": "2026-01-01T03:05:00Z"}]}}),
    );
    fake.put(
        &format!("/api/v1/namespaces/team/pods/{job}-abcde"),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": format!("{job}-abcde"), "namespace": "team", "labels": {"batch.kubernetes.io/job-name": job}},
               "status": {"containerStatuses": [{"name": "mirror", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                   "state": {"terminated": {"exitCode": if ok {0} else {1}, "message": message}}}]}}),
    );
}

#[tokio::test]
async fn a_one_shot_mirror_runs_a_job_into_the_registry_and_reports_what_it_copied() {
    let (ctx, fake) = setup(spec(), open_registry());
    assert_eq!(
        run(&ctx, &fake).await,
        Action::requeue(Duration::from_secs(30))
    );
    let calls = fake.take_calls();
    let w = writes(&calls);
    assert!(w.contains(&format!("PATCH {SET}")), "{w:?}");
    assert!(w.contains(&format!("PATCH {JOB}")), "{w:?}");
    assert!(event_reasons(&calls).contains(&"Started".to_owned()));
    let set = fake.get(SET).unwrap();
    assert!(
        set["data"]["set.yaml"]
            .as_str()
            .unwrap()
            .contains("semver: '>=3.19 <4'")
    );
    let job = fake.get(JOB).unwrap();
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["args"][0], "mirror");
    assert!(
        c["args"]
            .as_array()
            .unwrap()
            .contains(&json!("http://hub.team.svc:5000"))
    );
    assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "uid-alpine");
    assert_eq!(status(&fake)["phase"], "Pending");

    job_finished(
        &fake,
        "alpine-sync-1",
        true,
        r#"{"images":4,"manifestsCopied":8,"blobsCopied":12,"blobsSkipped":3,"bytesCopied":52428800,"errorCount":0,"errors":[]}"#,
    );
    assert_eq!(run(&ctx, &fake).await, Action::await_change());
    let calls = fake.take_calls();
    assert!(event_reasons(&calls).contains(&"Succeeded".to_owned()));
    let st = status(&fake);
    assert_eq!(st["phase"], "Succeeded");
    assert_eq!(st["images"], 4);
    assert_eq!(st["bytesCopied"], 52428800);
    assert_eq!(st["blobsSkipped"], 3);
    assert_eq!(st["lastSuccessTime"], "2026-01-01T03:05:00Z");
    assert_eq!(condition(&fake, "Ready")["status"], "True");

    // Done is done: no write, even after the Job is cleaned away.
    fake.remove(JOB);
    run(&ctx, &fake).await;
    assert!(writes(&fake.take_calls()).is_empty());
}

#[tokio::test]
async fn a_sync_with_errors_is_degraded_naming_the_first() {
    let (ctx, fake) = setup(spec(), open_registry());
    run(&ctx, &fake).await;
    job_finished(
        &fake,
        "alpine-sync-1",
        false,
        r#"{"images":1,"manifestsCopied":1,"blobsCopied":2,"blobsSkipped":0,"bytesCopied":100,"errorCount":2,"errors":["https://registry-1.docker.io/library/alpine:3.20: destination refused index sha256:ab: 400 MANIFEST_BLOB_UNKNOWN"]}"#,
    );
    fake.take_calls();
    assert_eq!(
        run(&ctx, &fake).await,
        Action::await_change(),
        "a failed one-shot run is not retried in a loop"
    );
    assert!(event_reasons(&fake.take_calls()).contains(&"Failed".to_owned()));
    let st = status(&fake);
    assert_eq!(
        (st["phase"].clone(), st["errors"].clone()),
        (json!("Failed"), json!(2))
    );
    let degraded = condition(&fake, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "SyncFailed");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("MANIFEST_BLOB_UNKNOWN")
    );
    run(&ctx, &fake).await;
    assert!(writes(&fake.take_calls()).is_empty(), "steady state");
}

#[tokio::test]
async fn a_scheduled_mirror_is_a_cronjob_and_stops_while_its_registry_is_gone() {
    let mut s = spec();
    s["schedule"] = json!("0 * * * *");
    let (ctx, fake) = setup(s, open_registry());
    assert_eq!(
        run(&ctx, &fake).await,
        Action::requeue(Duration::from_secs(30))
    );
    assert!(event_reasons(&fake.take_calls()).contains(&"Scheduled".to_owned()));
    assert!(fake.get(JOB).is_none(), "no one-shot Job for a schedule");
    let cron = fake.get(CRON).unwrap();
    assert_eq!(cron["spec"]["schedule"], "0 * * * *");
    assert_eq!(cron["spec"]["suspend"], false);

    // The CronJob's Job succeeds; its figures reach the status.
    let job = "alpine-sync-29000000";
    fake.put(
        &format!("/apis/batch/v1/namespaces/team/jobs/{job}"),
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": job, "namespace": "team", "labels": {"berth.dev/mirror": "alpine"}}}),
    );
    job_finished(
        &fake,
        job,
        true,
        r#"{"images":2,"manifestsCopied":0,"blobsCopied":0,"blobsSkipped":0,"bytesCopied":0,"errorCount":0,"errors":[]}"#,
    );
    assert_eq!(
        run(&ctx, &fake).await,
        Action::requeue(Duration::from_secs(300))
    );
    assert_eq!(status(&fake)["images"], 2);
    fake.take_calls();
    run(&ctx, &fake).await;
    assert!(writes(&fake.take_calls()).is_empty(), "steady state");

    // The Registry goes: the CronJob is suspended and the reason shown.
    fake.remove(REG);
    run(&ctx, &fake).await;
    assert_eq!(fake.get(CRON).unwrap()["spec"]["suspend"], true);
    assert_eq!(condition(&fake, "Degraded")["reason"], "RegistryNotFound");
}

#[tokio::test]
async fn bad_input_is_a_condition_not_a_job() {
    // A schedule that is not cron.
    let mut s = spec();
    s["schedule"] = json!("hourly");
    let (ctx, fake) = setup(s, open_registry());
    assert_eq!(run(&ctx, &fake).await, Action::await_change());
    assert_eq!(
        writes(&fake.take_calls()),
        [format!("PATCH {MIRROR}/status")]
    );
    assert_eq!(condition(&fake, "Degraded")["reason"], "InvalidSpec");

    // An entry the set file would refuse, named by field.
    let mut s = spec();
    s["mirrors"][0]["platforms"] = json!(["linux"]);
    let (ctx, fake) = setup(s, open_registry());
    run(&ctx, &fake).await;
    let d = condition(&fake, "Degraded");
    assert_eq!(d["reason"], "InvalidSpec");
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("spec.mirrors.platforms"),
        "{d}"
    );
    assert!(fake.get(JOB).is_none());

    // A source password Secret that does not exist.
    let mut s = spec();
    s["mirrors"][0]["username"] = json!("me");
    s["mirrors"][0]["passwordSecret"] = json!("hub-token");
    let (ctx, fake) = setup(s, open_registry());
    assert_eq!(
        run(&ctx, &fake).await,
        Action::requeue(Duration::from_secs(300))
    );
    let d = condition(&fake, "Degraded");
    assert_eq!(d["reason"], "SecretMissing");
    assert!(
        d["message"].as_str().unwrap().contains("team/hub-token"),
        "{d}"
    );
    assert!(fake.get(JOB).is_none());

    // A Registry with its own users and no generated admin: say which Secret to give.
    let locked = json!({"storage": {"pvc": {"size": "1Gi"}}, "allowSparseIndexes": true,
                        "auth": {"htpasswdSecret": "users"}});
    let (ctx, fake) = setup(spec(), Some(locked));
    run(&ctx, &fake).await;
    let d = condition(&fake, "Degraded");
    assert!(
        d["message"].as_str().unwrap().contains("spec.pushSecret"),
        "{d}"
    );
}

#[tokio::test]
async fn a_registry_with_a_generated_admin_is_pushed_to_as_that_admin() {
    let reg = json!({"storage": {"pvc": {"size": "1Gi"}}, "allowSparseIndexes": true, "auth": {"admin": {}}});
    let (ctx, fake) = setup(spec(), Some(reg));
    run(&ctx, &fake).await;
    let job = fake.get(JOB).unwrap();
    let pod = &job["spec"]["template"]["spec"];
    let args = pod["containers"][0]["args"].as_array().unwrap().clone();
    let at = |flag: &str| {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1].clone()
    };
    assert_eq!(at("--to-username"), "$(BERTH_MIRROR_USER)");
    assert_eq!(pod["containers"][0]["env"][0]["value"], "admin");
    assert_eq!(at("--to-password-file"), "/etc/berth-mirror-push/password");
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "hub-admin")
    );
}
