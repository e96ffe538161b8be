//! reconcile(Registry) against the fake API server, one scenario per test.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::Context;
use super::crd::Registry;
use super::fake::{Fake, event_reasons, writes};
use super::metrics::Metrics;
use super::registry::{FINALIZER, reconcile, references_secret};
use super::resources::{CONFIG_HASH_ANNOTATION, Defaults};

const REG: &str = "/apis/berth.dev/v1alpha1/namespaces/team/registries/hub";
const CM: &str = "/api/v1/namespaces/team/configmaps/hub-config";
const PVC: &str = "/api/v1/namespaces/team/persistentvolumeclaims/hub-data";
const SVC: &str = "/api/v1/namespaces/team/services/hub";
const DEP: &str = "/apis/apps/v1/namespaces/team/deployments/hub";
const ING: &str = "/apis/networking.k8s.io/v1/namespaces/team/ingresses/hub";

fn setup(spec: Value) -> (Arc<Context>, Fake) {
    let (client, fake) = Fake::start();
    let ctx = Context::new(
        client,
        Defaults {
            image: "ghcr.io/berth-dev/berth:test".into(),
        },
        Arc::new(Metrics::default()),
    );
    fake.put(
        REG,
        json!({
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "Registry",
            "metadata": {"name": "hub", "namespace": "team", "uid": "uid-hub", "generation": 1,
                         "resourceVersion": "1", "finalizers": [FINALIZER]},
            "spec": spec,
        }),
    );
    (Arc::new(ctx), fake)
}

fn minimal() -> Value {
    json!({"storage": {"pvc": {"size": "10Gi"}}})
}

async fn run(ctx: &Arc<Context>, fake: &Fake) -> Result<Action, super::Error> {
    let reg: Registry = serde_json::from_value(fake.get(REG).unwrap()).unwrap();
    reconcile(Arc::new(reg), ctx.clone()).await
}

/// Plays the Deployment controller and kubelet: `n` pods of the current template are ready.
fn pods_ready(fake: &Fake, n: i64) {
    let generation = fake.get(DEP).unwrap()["metadata"]["generation"].clone();
    fake.edit(
        DEP,
        json!({"status": {"observedGeneration": generation, "replicas": n, "updatedReplicas": n, "readyReplicas": n}}),
    );
}

fn condition(fake: &Fake, type_: &str) -> (String, String) {
    let reg = fake.get(REG).unwrap();
    let c = reg["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
        .clone();
    (
        c["status"].as_str().unwrap().into(),
        c["reason"].as_str().unwrap().into(),
    )
}

fn config_hash(fake: &Fake) -> String {
    fake.get(DEP).unwrap()["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn first_sight_adds_the_finalizer_and_nothing_else() {
    let (ctx, fake) = setup(minimal());
    fake.edit(REG, json!({"metadata": {"finalizers": null}}));
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::await_change());
    assert_eq!(writes(&fake.take_calls()), [format!("PATCH {REG}")]);
    assert_eq!(
        fake.get(REG).unwrap()["metadata"]["finalizers"],
        json!([FINALIZER])
    );
}

#[tokio::test]
async fn create_applies_every_child_and_reports_progress() {
    let (ctx, fake) = setup(minimal());
    let action = run(&ctx, &fake).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    let calls = fake.take_calls();
    assert_eq!(
        writes(&calls),
        [CM, PVC, SVC, DEP, &format!("{REG}/status")].map(|p| format!("PATCH {p}"))
    );
    // Every child write is a server-side apply under the one field manager.
    for c in calls
        .iter()
        .filter(|c| c.method == "PATCH" && !c.is_event())
    {
        assert!(c.content_type.contains("apply-patch"), "{c:?}");
        assert!(c.query.contains("fieldManager=berth-operator"), "{c:?}");
    }
    assert!(event_reasons(&calls).contains(&"Applied".to_owned()));
    let dep = fake.get(DEP).unwrap();
    assert_eq!(dep["metadata"]["ownerReferences"][0]["uid"], "uid-hub");
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["args"],
        json!(["serve", "--config", "/etc/berth/config.yaml"])
    );
    let cm = fake.get(CM).unwrap();
    let config: crate::config::Config =
        serde_yaml::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(config.root(), std::path::PathBuf::from("/var/lib/berth"));
    assert_eq!(
        condition(&fake, "Ready"),
        ("False".into(), "ReplicasNotReady".into())
    );
    assert_eq!(
        condition(&fake, "Progressing"),
        ("True".into(), "RollingOut".into())
    );
    let status = &fake.get(REG).unwrap()["status"];
    assert_eq!(status["endpoint"], "http://hub.team.svc:5000");
    assert_eq!(status["observedGeneration"], 1);
}

#[tokio::test]
async fn steady_state_makes_no_write() {
    let (ctx, fake) = setup(minimal());
    run(&ctx, &fake).await.unwrap();
    pods_ready(&fake, 1);
    fake.take_calls();
    let action = run(&ctx, &fake).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(600)));
    let calls = fake.take_calls();
    assert_eq!(
        writes(&calls),
        [format!("PATCH {REG}/status")],
        "only the status moved"
    );
    assert!(event_reasons(&calls).contains(&"Ready".to_owned()));
    assert_eq!(
        condition(&fake, "Ready"),
        ("True".into(), "Available".into())
    );
    assert_eq!(fake.get(REG).unwrap()["status"]["readyReplicas"], 1);

    run(&ctx, &fake).await.unwrap();
    let calls = fake.take_calls();
    assert!(
        calls.iter().all(|c| !c.is_write()),
        "steady state wrote: {:?}",
        writes(&calls)
    );
}

#[tokio::test]
async fn config_change_rolls_the_deployment() {
    let (ctx, fake) = setup(minimal());
    run(&ctx, &fake).await.unwrap();
    pods_ready(&fake, 1);
    run(&ctx, &fake).await.unwrap();
    let before = config_hash(&fake);
    fake.edit(
        REG,
        json!({"metadata": {"generation": 2}, "spec": {"logFormat": "json"}}),
    );
    fake.take_calls();
    run(&ctx, &fake).await.unwrap();
    let w = writes(&fake.take_calls());
    assert_eq!(
        w,
        [
            format!("PATCH {CM}"),
            format!("PATCH {DEP}"),
            format!("PATCH {REG}/status")
        ]
    );
    assert_ne!(
        config_hash(&fake),
        before,
        "a new config hash rolls the pods"
    );
    assert!(
        fake.get(CM).unwrap()["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .contains("format: json")
    );
    assert_eq!(
        condition(&fake, "Progressing"),
        ("True".into(), "RollingOut".into())
    );
    assert_eq!(fake.get(REG).unwrap()["status"]["observedGeneration"], 2);
}

#[tokio::test]
async fn scale_changes_only_the_replica_count() {
    let (ctx, fake) = setup(minimal());
    run(&ctx, &fake).await.unwrap();
    pods_ready(&fake, 1);
    run(&ctx, &fake).await.unwrap();
    let hash = config_hash(&fake);
    fake.edit(
        REG,
        json!({"metadata": {"generation": 2}, "spec": {"replicas": 3}}),
    );
    fake.take_calls();
    run(&ctx, &fake).await.unwrap();
    assert_eq!(
        writes(&fake.take_calls()),
        [format!("PATCH {DEP}"), format!("PATCH {REG}/status")]
    );
    assert_eq!(fake.get(DEP).unwrap()["spec"]["replicas"], 3);
    assert_eq!(config_hash(&fake), hash);
    assert_eq!(
        condition(&fake, "Ready"),
        ("False".into(), "ReplicasNotReady".into())
    );
    pods_ready(&fake, 3);
    run(&ctx, &fake).await.unwrap();
    assert_eq!(
        condition(&fake, "Ready"),
        ("True".into(), "Available".into())
    );
    assert_eq!(fake.get(REG).unwrap()["status"]["readyReplicas"], 3);
}

#[tokio::test]
async fn missing_secret_is_a_condition_until_it_appears() {
    let spec = json!({"storage": {"pvc": {"size": "1Gi"}}, "tls": {"secretName": "hub-cert"},
                      "ingress": {"host": "hub.example.com"}});
    let (ctx, fake) = setup(spec);
    let action = run(&ctx, &fake).await.unwrap();
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(300)),
        "a slow safety net, not a hot loop"
    );
    let calls = fake.take_calls();
    assert_eq!(
        writes(&calls),
        [format!("PATCH {REG}/status")],
        "nothing deployed without the Secret"
    );
    assert!(event_reasons(&calls).contains(&"SecretMissing".to_owned()));
    assert_eq!(
        condition(&fake, "Degraded"),
        ("True".into(), "SecretMissing".into())
    );
    let msg = fake.get(REG).unwrap()["status"]["conditions"][0]["message"].clone();
    assert!(msg.as_str().unwrap().contains("team/hub-cert"), "{msg}");

    // Again without the Secret: same status, no write.
    run(&ctx, &fake).await.unwrap();
    assert!(writes(&fake.take_calls()).is_empty());

    // The Secret appears; the Secret watch maps it to this Registry, which now deploys.
    let reg: Registry = serde_json::from_value(fake.get(REG).unwrap()).unwrap();
    assert!(references_secret(&reg, "hub-cert"));
    assert!(!references_secret(&reg, "other"));
    fake.put(
        "/api/v1/namespaces/team/secrets/hub-cert",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hub-cert", "namespace": "team"},
               "data": {"tls.crt": "Y3J0", "tls.key": "a2V5"}}),
    );
    run(&ctx, &fake).await.unwrap();
    let w = writes(&fake.take_calls());
    assert!(
        w.contains(&format!("PATCH {DEP}")) && w.contains(&format!("PATCH {ING}")),
        "{w:?}"
    );
    assert_eq!(
        fake.get(ING).unwrap()["spec"]["tls"][0]["secretName"],
        "hub-cert"
    );
    assert_eq!(
        condition(&fake, "Degraded"),
        ("False".into(), "AsExpected".into())
    );
    assert_eq!(
        fake.get(REG).unwrap()["status"]["endpoint"],
        "https://hub.example.com"
    );
}

#[tokio::test]
async fn malformed_secret_names_the_missing_keys() {
    let spec = json!({"storage": {"pvc": {"size": "1Gi"}}, "tls": {"secretName": "hub-cert"},
                      "ingress": {"host": "hub.example.com"}});
    let (ctx, fake) = setup(spec);
    fake.put(
        "/api/v1/namespaces/team/secrets/hub-cert",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hub-cert", "namespace": "team"},
               "data": {"tls.crt": "Y3J0"}}),
    );
    run(&ctx, &fake).await.unwrap();
    let msg = fake.get(REG).unwrap()["status"]["conditions"][0]["message"].clone();
    assert!(
        msg.as_str().unwrap().contains("lacks key(s) tls.key"),
        "{msg}"
    );
}

#[tokio::test]
async fn api_conflict_is_retried_soon() {
    let (ctx, fake) = setup(minimal());
    fake.fail_once("PATCH", "/deployments/hub", 409);
    let err = run(&ctx, &fake).await.unwrap_err();
    assert_eq!(err.retry_after(), Duration::from_secs(1));
    let reg: Registry = serde_json::from_value(fake.get(REG).unwrap()).unwrap();
    let action = super::error_policy(Arc::new(reg), &err, ctx.clone());
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    assert!(
        ctx.metrics
            .encode()
            .contains("reconcile_failures_total{kind=\"Registry\"} 1")
    );
    assert!(fake.get(DEP).is_none());
    // The retry finds the ConfigMap, PVC and Service already right and applies the rest.
    fake.take_calls();
    run(&ctx, &fake).await.unwrap();
    assert_eq!(
        writes(&fake.take_calls()),
        [format!("PATCH {DEP}"), format!("PATCH {REG}/status")]
    );
}

#[tokio::test]
async fn invalid_spec_is_a_condition_not_a_hot_loop() {
    let (ctx, fake) = setup(json!({"storage": {"pvc": {"size": "ten gigs"}}}));
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::await_change());
    let calls = fake.take_calls();
    assert_eq!(writes(&calls), [format!("PATCH {REG}/status")]);
    assert!(event_reasons(&calls).contains(&"InvalidSpec".to_owned()));
    assert_eq!(
        condition(&fake, "Degraded"),
        ("True".into(), "InvalidSpec".into())
    );
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::await_change());
    assert!(writes(&fake.take_calls()).is_empty());
}

#[tokio::test]
async fn spec_the_config_schema_lacks_is_refused_with_a_reason() {
    let (ctx, fake) = setup(json!({
        "storage": {"pvc": {"size": "1Gi"}},
        "tls": {"issuerRef": {"name": "letsencrypt"}},
    }));
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::await_change());
    assert_eq!(
        condition(&fake, "Degraded"),
        ("True".into(), "Unsupported".into())
    );
    assert!(fake.get(DEP).is_none());
}

#[tokio::test]
async fn removed_ingress_is_deleted() {
    let (ctx, fake) =
        setup(json!({"storage": {"pvc": {"size": "1Gi"}}, "ingress": {"host": "h.example"}}));
    run(&ctx, &fake).await.unwrap();
    assert!(fake.get(ING).is_some());
    fake.edit(
        REG,
        json!({"metadata": {"generation": 2}, "spec": {"ingress": null}}),
    );
    fake.take_calls();
    run(&ctx, &fake).await.unwrap();
    assert!(writes(&fake.take_calls()).contains(&format!("DELETE {ING}")));
    assert!(fake.get(ING).is_none());
}

async fn delete_with(policy: &str) -> (Fake, Vec<super::fake::Call>) {
    let (ctx, fake) = setup(json!({"storage": {"pvc": {"size": "1Gi"}}, "deletionPolicy": policy}));
    run(&ctx, &fake).await.unwrap();
    fake.edit(
        REG,
        json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
    );
    fake.take_calls();
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::await_change());
    let calls = fake.take_calls();
    assert_eq!(
        fake.get(REG).unwrap()["metadata"]["finalizers"],
        json!([]),
        "finalizer released"
    );
    (fake, calls)
}

#[tokio::test]
async fn delete_with_retain_keeps_the_volume() {
    let (fake, calls) = delete_with("Retain").await;
    assert!(fake.get(PVC).is_some());
    assert!(
        fake.get(PVC).unwrap()["metadata"]["ownerReferences"].is_null(),
        "nothing will collect it"
    );
    assert_eq!(writes(&calls), [format!("PATCH {REG}")]);
    assert_eq!(event_reasons(&calls), ["DataRetained"]);
}

#[tokio::test]
async fn delete_with_delete_removes_the_volume() {
    let (fake, calls) = delete_with("Delete").await;
    assert!(fake.get(PVC).is_none());
    assert_eq!(
        writes(&calls),
        [format!("DELETE {PVC}"), format!("PATCH {REG}")]
    );
    assert_eq!(event_reasons(&calls), ["DataDeleted"]);
}

#[tokio::test]
async fn retain_after_delete_takes_the_owner_reference_off() {
    let (ctx, fake) =
        setup(json!({"storage": {"pvc": {"size": "1Gi"}}, "deletionPolicy": "Delete"}));
    run(&ctx, &fake).await.unwrap();
    assert_eq!(
        fake.get(PVC).unwrap()["metadata"]["ownerReferences"][0]["uid"],
        "uid-hub"
    );
    fake.edit(REG, json!({"spec": {"deletionPolicy": "Retain"}, "metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}));
    run(&ctx, &fake).await.unwrap();
    assert_eq!(
        fake.get(PVC).unwrap()["metadata"]["ownerReferences"],
        json!([])
    );
}

#[tokio::test]
async fn a_child_the_api_server_rejects_is_a_condition_not_a_retry_loop() {
    let (ctx, fake) = setup(minimal());
    fake.fail_once("PATCH", "/persistentvolumeclaims/hub-data", 422);
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::await_change());
    assert_eq!(
        condition(&fake, "Degraded"),
        ("True".into(), "Rejected".into())
    );
    assert!(fake.get(DEP).is_none(), "stops at the rejected object");
}

#[tokio::test]
async fn a_server_error_is_retried_with_backoff() {
    let (ctx, fake) = setup(minimal());
    fake.fail_once("PATCH", "/services/hub", 500);
    let err = run(&ctx, &fake).await.unwrap_err();
    assert_eq!(err.retry_after(), Duration::from_secs(15));
}

#[test]
fn a_secret_wakes_only_the_registries_that_name_it() {
    use k8s_openapi::api::core::v1::Secret;
    let reg = |name: &str, ns: &str, tls: Option<&str>| {
        let mut r: Registry = serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Registry",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"storage": {"pvc": {"size": "1Gi"}}, "ingress": {"host": "h"}},
        }))
        .unwrap();
        r.spec.tls = tls.map(|t| super::crd::TlsSpec {
            secret_name: Some(t.into()),
            issuer_ref: None,
        });
        Arc::new(r)
    };
    let all = [
        reg("a", "team", Some("cert")),
        reg("b", "team", None),
        reg("c", "other", Some("cert")),
    ];
    let mut secret = Secret::default();
    secret.metadata.name = Some("cert".into());
    secret.metadata.namespace = Some("team".into());
    let woken: Vec<String> = super::registry::registries_for_secret(&all, &secret)
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(woken, ["a"]);
}

#[tokio::test]
async fn admin_credentials_are_made_once_and_never_overwritten() {
    let (ctx, fake) = setup(
        json!({"storage": {"pvc": {"size": "1Gi"}}, "auth": {"admin": {"username": "root"}}}),
    );
    let reg: Registry = serde_json::from_value(fake.get(REG).unwrap()).unwrap();
    let secret = "/api/v1/namespaces/team/secrets/hub-admin";
    fake.take_calls();
    let name = super::registry::ensure_admin_secret(&ctx.client, &reg)
        .await
        .unwrap();
    assert_eq!(name, "hub-admin");
    assert_eq!(
        writes(&fake.take_calls()),
        ["POST /api/v1/namespaces/team/secrets"]
    );
    let made = fake.get(secret).unwrap();
    let typed: k8s_openapi::api::core::v1::Secret = serde_json::from_value(made.clone()).unwrap();
    let data = typed.data.unwrap();
    let field = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    assert_eq!(field("username"), "root");
    let line = field("htpasswd");
    let (user, hash) = line.trim_end().split_once(':').unwrap();
    assert_eq!(user, "root");
    assert!(bcrypt::verify(field("password"), hash).unwrap());

    // Again: the Secret exists, nothing is written, the password stays.
    super::registry::ensure_admin_secret(&ctx.client, &reg)
        .await
        .unwrap();
    assert!(writes(&fake.take_calls()).is_empty());
    assert_eq!(fake.get(secret).unwrap()["data"], made["data"]);

    // A racing creator wins the POST: ours backs off without error.
    fake.remove(secret);
    fake.fail_once("POST", "/secrets", 409);
    super::registry::ensure_admin_secret(&ctx.client, &reg)
        .await
        .unwrap();
}

#[tokio::test]
async fn auth_with_an_admin_mounts_the_generated_htpasswd_and_names_it_in_status() {
    let (ctx, fake) = setup(json!({"storage": {"pvc": {"size": "1Gi"}},
        "auth": {"admin": {"username": "root"},
                 "access": [{"repository": "public/*", "users": ["anonymous"], "actions": ["pull"]}]}}));
    run(&ctx, &fake).await.unwrap();
    let w = writes(&fake.take_calls());
    assert_eq!(w[0], "POST /api/v1/namespaces/team/secrets", "{w:?}");
    assert!(w.contains(&format!("PATCH {DEP}")), "{w:?}");
    let secret = fake
        .get("/api/v1/namespaces/team/secrets/hub-admin")
        .unwrap();
    let pod = &fake.get(DEP).unwrap()["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "auth")
            .unwrap()["secret"]["secretName"],
        "hub-admin"
    );
    assert!(
        pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "auth", "mountPath": "/etc/berth-auth", "readOnly": true}))
    );
    let cm = fake.get(CM).unwrap();
    let config: crate::config::Config =
        serde_yaml::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(
        config.auth.htpasswd,
        Some(std::path::PathBuf::from("/etc/berth-auth/htpasswd"))
    );
    assert_eq!(config.auth.admins, ["root"]);
    assert_eq!(config.auth.access[1].repository, "public/*");
    assert_eq!(
        fake.get(REG).unwrap()["status"]["credentialsSecret"],
        "hub-admin"
    );

    // Steady state: the Secret is neither re-made nor rewritten.
    pods_ready(&fake, 1);
    run(&ctx, &fake).await.unwrap();
    fake.take_calls();
    run(&ctx, &fake).await.unwrap();
    assert!(writes(&fake.take_calls()).is_empty());
    assert_eq!(
        fake.get("/api/v1/namespaces/team/secrets/hub-admin")
            .unwrap()["data"],
        secret["data"]
    );
}

#[tokio::test]
async fn a_missing_htpasswd_secret_is_a_condition_until_it_appears() {
    let (ctx, fake) = setup(
        json!({"storage": {"pvc": {"size": "1Gi"}}, "auth": {"htpasswdSecret": "hub-users"}}),
    );
    run(&ctx, &fake).await.unwrap();
    assert_eq!(
        writes(&fake.take_calls()),
        [format!("PATCH {REG}/status")],
        "nothing deployed without the Secret"
    );
    assert_eq!(
        condition(&fake, "Degraded"),
        ("True".into(), "SecretMissing".into())
    );
    let reg: Registry = serde_json::from_value(fake.get(REG).unwrap()).unwrap();
    assert!(references_secret(&reg, "hub-users"));
    fake.put(
        "/api/v1/namespaces/team/secrets/hub-users",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hub-users", "namespace": "team"},
               "data": {"htpasswd": "YWxpY2U6eAo="}}),
    );
    run(&ctx, &fake).await.unwrap();
    let pod = &fake.get(DEP).unwrap()["spec"]["template"]["spec"];
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "hub-users")
    );
    assert!(fake.get(REG).unwrap()["status"]["credentialsSecret"].is_null());
}

#[tokio::test]
async fn pod_tls_serves_https_from_the_mounted_secret() {
    let (ctx, fake) =
        setup(json!({"storage": {"pvc": {"size": "1Gi"}}, "tls": {"secretName": "hub-cert"}}));
    run(&ctx, &fake).await.unwrap();
    assert_eq!(
        condition(&fake, "Degraded"),
        ("True".into(), "SecretMissing".into())
    );
    assert!(fake.get(DEP).is_none());
    fake.put(
        "/api/v1/namespaces/team/secrets/hub-cert",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hub-cert", "namespace": "team"},
               "type": "kubernetes.io/tls", "data": {"tls.crt": "Y3J0", "tls.key": "a2V5"}}),
    );
    run(&ctx, &fake).await.unwrap();
    let container = &fake.get(DEP).unwrap()["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "tls", "mountPath": "/etc/berth-tls", "readOnly": true}))
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    let cm = fake.get(CM).unwrap();
    let config: crate::config::Config =
        serde_yaml::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(
        config.tls.unwrap().cert,
        std::path::PathBuf::from("/etc/berth-tls/tls.crt")
    );
    assert_eq!(
        fake.get(REG).unwrap()["status"]["endpoint"],
        "https://hub.team.svc:5000"
    );
    assert_eq!(
        condition(&fake, "Degraded"),
        ("False".into(), "AsExpected".into())
    );
}

#[tokio::test]
async fn s3_registry_waits_for_its_credentials_then_deploys_without_a_pvc() {
    let (ctx, fake) = setup(json!({
        "replicas": 3,
        "storage": {"s3": {"bucket": "images", "endpoint": "http://garage:3900",
                           "region": "garage", "credentialsSecret": "hub-s3"}},
    }));
    run(&ctx, &fake).await.unwrap();
    let calls = fake.take_calls();
    assert_eq!(writes(&calls), [format!("PATCH {REG}/status")]);
    assert_eq!(
        condition(&fake, "Degraded"),
        ("True".into(), "SecretMissing".into())
    );
    let msg = fake.get(REG).unwrap()["status"]["conditions"][0]["message"].clone();
    assert!(msg.as_str().unwrap().contains("team/hub-s3"), "{msg}");

    fake.put(
        "/api/v1/namespaces/team/secrets/hub-s3",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hub-s3", "namespace": "team"},
               "data": {"accessKeyId": "R0s=", "secretAccessKey": "c2VjcmV0"}}),
    );
    run(&ctx, &fake).await.unwrap();
    let w = writes(&fake.take_calls());
    assert!(w.contains(&format!("PATCH {DEP}")), "{w:?}");
    assert!(
        !w.iter().any(|c| c.contains("persistentvolumeclaims")),
        "{w:?}"
    );
    let dep = fake.get(DEP).unwrap();
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["env"][0]["valueFrom"]["secretKeyRef"]["name"], "hub-s3");
    assert_eq!(dep["spec"]["replicas"], 3);
    assert_eq!(
        condition(&fake, "Degraded"),
        ("False".into(), "AsExpected".into())
    );
}
