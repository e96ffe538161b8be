//! reconcile(Registry) against the fake API server, one scenario per test.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::Context;
use super::crd::Registry;
use super::fake::{Fake, event_notes, event_reasons, writes};
use super::quota::QuotaReader;
use super::registry::{FINALIZER, QUOTA_POLL, reconcile, references_secret};
use super::resources::CONFIG_HASH_ANNOTATION;

const REG: &str = "/apis/berth.dev/v1alpha1/namespaces/team/registries/hub";
const CM: &str = "/api/v1/namespaces/team/configmaps/hub-config";
const PVC: &str = "/api/v1/namespaces/team/persistentvolumeclaims/hub-data";
const SVC: &str = "/api/v1/namespaces/team/services/hub";
const DEP: &str = "/apis/apps/v1/namespaces/team/deployments/hub";
const ING: &str = "/apis/networking.k8s.io/v1/namespaces/team/ingresses/hub";

/// A Registry with `spec`, as an earlier reconcile left it: with the finalizer only where
/// deletion needs the operator (S3 with Delete).
fn setup(spec: Value) -> (Arc<Context>, Fake) {
    let (ctx, fake) = Fake::context();
    let finalizers = if spec["storage"]["s3"].is_object() && spec["deletionPolicy"] == "Delete" {
        json!([FINALIZER])
    } else {
        json!(null)
    };
    fake.put(
        REG,
        json!({
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "Registry",
            "metadata": {"name": "hub", "namespace": "team", "uid": "uid-hub", "generation": 1,
                         "resourceVersion": "1", "finalizers": finalizers},
            "spec": spec,
        }),
    );
    (ctx, fake)
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
        json!({"status": {"observedGeneration": generation, "replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n}}),
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

const S3_DELETE: fn() -> Value = || {
    json!({"storage": {"s3": {"bucket": "images", "prefix": "hub", "endpoint": "http://garage:3900",
                              "region": "garage", "credentialsSecret": "hub-s3"}},
           "deletionPolicy": "Delete"})
};

#[tokio::test]
async fn first_sight_of_an_s3_delete_registry_adds_the_finalizer_and_nothing_else() {
    let (ctx, fake) = setup(S3_DELETE());
    fake.edit(REG, json!({"metadata": {"finalizers": null}}));
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::await_change());
    assert_eq!(writes(&fake.take_calls()), [format!("PATCH {REG}")]);
    assert_eq!(
        fake.get(REG).unwrap()["metadata"]["finalizers"],
        json!([FINALIZER])
    );
}

#[tokio::test]
async fn only_s3_with_delete_carries_a_finalizer() {
    for policy in ["Retain", "Delete"] {
        let (ctx, fake) =
            setup(json!({"storage": {"pvc": {"size": "1Gi"}}, "deletionPolicy": policy}));
        run(&ctx, &fake).await.unwrap();
        assert!(
            fake.get(REG).unwrap()["metadata"]["finalizers"].is_null(),
            "{policy}"
        );
    }
    let (ctx, fake) = setup(json!({"storage": {"s3": {"bucket": "b", "credentialsSecret": "s"}}}));
    run(&ctx, &fake).await.unwrap();
    assert!(
        fake.get(REG).unwrap()["metadata"]["finalizers"].is_null(),
        "S3 Retain"
    );
    // A finalizer an older operator added (or from an earlier Delete) is taken off, and the
    // reconcile goes on to apply.
    let (ctx, fake) = setup(minimal());
    fake.edit(
        REG,
        json!({"metadata": {"finalizers": [FINALIZER, "example.com/other"]}}),
    );
    run(&ctx, &fake).await.unwrap();
    let calls = writes(&fake.take_calls());
    assert_eq!(calls[0], format!("PATCH {REG}"), "{calls:?}");
    assert!(calls.contains(&format!("PATCH {DEP}")), "{calls:?}");
    assert_eq!(
        fake.get(REG).unwrap()["metadata"]["finalizers"],
        json!(["example.com/other"])
    );
}

/// The uninstall the issue saw: the operator is gone (nothing reconciles) and the
/// Registries are deleted. Without a finalizer the API server removes them at once and the
/// garbage collector takes the children; the data goes by policy.
#[tokio::test]
async fn with_the_operator_gone_deleting_a_registry_never_wedges() {
    for (policy, volume_kept) in [("Retain", true), ("Delete", false)] {
        let (ctx, fake) =
            setup(json!({"storage": {"pvc": {"size": "1Gi"}}, "deletionPolicy": policy}));
        run(&ctx, &fake).await.unwrap();
        assert!(fake.get(DEP).is_some());
        // Only the API server and its garbage collector act from here on.
        let api: kube::Api<Registry> = kube::Api::namespaced(ctx.client.clone(), "team");
        api.delete("hub", &Default::default()).await.unwrap();
        assert!(
            fake.get(REG).is_none(),
            "{policy}: gone at once, not Terminating"
        );
        for child in [CM, SVC, DEP] {
            assert!(fake.get(child).is_none(), "{policy}: {child} collected");
        }
        assert_eq!(fake.get(PVC).is_some(), volume_kept, "{policy}");
    }
}

/// Retain must hold while the Registry lives: a switch from Delete takes the owner
/// reference off the volume at once, so deleting later (with no finalizer) keeps it.
#[tokio::test]
async fn switching_to_retain_disowns_the_volume_before_any_delete() {
    let (ctx, fake) =
        setup(json!({"storage": {"pvc": {"size": "1Gi"}}, "deletionPolicy": "Delete"}));
    run(&ctx, &fake).await.unwrap();
    assert_eq!(
        fake.get(PVC).unwrap()["metadata"]["ownerReferences"][0]["uid"],
        "uid-hub"
    );
    fake.edit(
        REG,
        json!({"metadata": {"generation": 2}, "spec": {"deletionPolicy": "Retain"}}),
    );
    run(&ctx, &fake).await.unwrap();
    assert_eq!(
        fake.get(PVC).unwrap()["metadata"]["ownerReferences"],
        json!([])
    );
    let api: kube::Api<Registry> = kube::Api::namespaced(ctx.client.clone(), "team");
    api.delete("hub", &Default::default()).await.unwrap();
    assert!(fake.get(DEP).is_none());
    assert!(fake.get(PVC).is_some(), "the data outlives the Registry");
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
        ("True".into(), "DeploymentUpdating".into())
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
        ("True".into(), "DeploymentUpdating".into())
    );
    assert_eq!(fake.get(REG).unwrap()["status"]["observedGeneration"], 2);
}

#[tokio::test]
async fn scale_changes_only_the_replica_count() {
    // Several replicas need a volume several nodes mount.
    let (ctx, fake) =
        setup(json!({"storage": {"pvc": {"size": "10Gi", "accessModes": ["ReadWriteMany"]}}}));
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

const CERT: &str = "/apis/cert-manager.io/v1/namespaces/team/certificates/hub-tls";
const TLS_SECRET: &str = "/api/v1/namespaces/team/secrets/hub-tls";

fn issuer_spec() -> Value {
    json!({
        "storage": {"pvc": {"size": "1Gi"}},
        "tls": {"issuerRef": {"name": "internal-ca", "kind": "ClusterIssuer"}},
    })
}

/// What the API server's discovery says once cert-manager's CRDs are installed.
fn install_cert_manager(fake: &Fake) {
    fake.put(
        "/apis/cert-manager.io/v1",
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "cert-manager.io/v1",
               "resources": [{"name": "certificates", "singularName": "certificate", "namespaced": true,
                              "kind": "Certificate", "verbs": ["get", "list", "watch", "create", "patch"]}]}),
    );
}

#[tokio::test]
async fn issuer_without_cert_manager_is_a_condition_and_a_slow_retry() {
    let (ctx, fake) = setup(issuer_spec());
    assert_eq!(
        run(&ctx, &fake).await.unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    let calls = fake.take_calls();
    assert_eq!(writes(&calls), [format!("PATCH {REG}/status")]);
    assert!(event_reasons(&calls).contains(&"CertManagerMissing".to_owned()));
    assert_eq!(
        condition(&fake, "Degraded"),
        ("True".into(), "CertManagerMissing".into())
    );
    let msg = fake.get(REG).unwrap()["status"]["conditions"][0]["message"].clone();
    assert!(
        msg.as_str().unwrap().contains("install cert-manager"),
        "{msg}"
    );
    assert!(fake.get(DEP).is_none() && fake.get(CERT).is_none());
    // Again with nothing changed: no write at all.
    run(&ctx, &fake).await.unwrap();
    assert!(writes(&fake.take_calls()).is_empty());
}

#[tokio::test]
async fn issuer_without_ingress_gets_a_certificate_then_serves_https_once_issued() {
    let (ctx, fake) = setup(issuer_spec());
    install_cert_manager(&fake);
    assert_eq!(
        run(&ctx, &fake).await.unwrap(),
        Action::requeue(Duration::from_secs(60))
    );
    let calls = fake.take_calls();
    assert_eq!(
        writes(&calls),
        [format!("PATCH {CERT}"), format!("PATCH {REG}/status")]
    );
    let cert = fake.get(CERT).unwrap();
    assert_eq!(cert["spec"]["secretName"], "hub-tls");
    assert_eq!(cert["spec"]["issuerRef"]["name"], "internal-ca");
    assert_eq!(cert["spec"]["dnsNames"][2], "hub.team.svc");
    assert_eq!(cert["metadata"]["ownerReferences"][0]["uid"], "uid-hub");
    assert_eq!(
        condition(&fake, "Ready"),
        ("False".into(), "CertificatePending".into())
    );
    // Issuing is progress, not a fault (Argo CD shows Progressing, not Degraded).
    assert_eq!(
        condition(&fake, "Progressing"),
        ("True".into(), "CertificatePending".into())
    );
    assert_eq!(condition(&fake, "Degraded").0, "False");
    assert!(fake.get(DEP).is_none(), "no pods until the Secret exists");

    // cert-manager's own account while it works: the condition carries its words.
    fake.edit(
        CERT,
        json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "DoesNotExist",
            "message": "Issuing certificate as Secret does not exist", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
    );
    run(&ctx, &fake).await.unwrap();
    let msg = fake.get(REG).unwrap()["status"]["conditions"][0]["message"].clone();
    assert!(
        msg.as_str()
            .unwrap()
            .contains("Issuing certificate as Secret does not exist"),
        "{msg}"
    );
    assert!(
        !writes(&fake.take_calls()).contains(&format!("PATCH {CERT}")),
        "an unchanged Certificate is not re-applied"
    );

    // cert-manager gives up: that is Degraded, with its reason.
    fake.edit(
        CERT,
        json!({"status": {"conditions": [
            {"type": "Ready", "status": "False", "reason": "DoesNotExist", "message": "Issuing certificate as Secret does not exist", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Issuing", "status": "False", "reason": "Failed", "message": "The certificate request has failed to complete and will be retried: issuer internal-ca not ready", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
    );
    assert_eq!(
        run(&ctx, &fake).await.unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    assert_eq!(
        condition(&fake, "Degraded"),
        ("True".into(), "CertificateFailed".into())
    );
    let msg = fake.get(REG).unwrap()["status"]["conditions"][0]["message"].clone();
    assert!(
        msg.as_str()
            .unwrap()
            .contains("issuer internal-ca not ready"),
        "{msg}"
    );
    fake.edit(CERT, json!({"status": null}));

    // cert-manager issues the Secret: the pods mount it and probe over HTTPS.
    fake.put(
        TLS_SECRET,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hub-tls", "namespace": "team"},
               "type": "kubernetes.io/tls", "data": {"tls.crt": "Y3J0", "tls.key": "a2V5", "ca.crt": "Y2E="}}),
    );
    let reg: Registry = serde_json::from_value(fake.get(REG).unwrap()).unwrap();
    assert!(
        references_secret(&reg, "hub-tls"),
        "the issued Secret wakes the Registry"
    );
    run(&ctx, &fake).await.unwrap();
    let dep = fake.get(DEP).unwrap();
    let pod = &dep["spec"]["template"]["spec"];
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "hub-tls")
    );
    assert_eq!(
        pod["containers"][0]["readinessProbe"]["httpGet"]["scheme"],
        "HTTPS"
    );
    let status = &fake.get(REG).unwrap()["status"];
    assert_eq!(status["endpoint"], "https://hub.team.svc:5000");
    assert_eq!(status["certificate"], "hub-tls");
    pods_ready(&fake, 1);
    run(&ctx, &fake).await.unwrap();
    assert_eq!(
        condition(&fake, "Ready"),
        ("True".into(), "Available".into())
    );
    fake.take_calls();
    run(&ctx, &fake).await.unwrap();
    assert!(writes(&fake.take_calls()).is_empty(), "steady state");

    // Switching to a Secret of the user's own removes the Certificate the operator made.
    fake.edit(
        REG,
        json!({"metadata": {"generation": 2}, "spec": {"tls": {"issuerRef": null, "secretName": "hub-tls"}}}),
    );
    run(&ctx, &fake).await.unwrap();
    assert!(writes(&fake.take_calls()).contains(&format!("DELETE {CERT}")));
    assert!(fake.get(CERT).is_none());
    assert!(fake.get(REG).unwrap()["status"]["certificate"].is_null());
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

/// A PVC Registry that still carries the finalizer an older operator added, deleted: the
/// cleanup runs once more, the finalizer goes, and with it the Registry.
async fn delete_with(policy: &str) -> (Fake, Vec<super::fake::Call>) {
    let (ctx, fake) = setup(json!({"storage": {"pvc": {"size": "1Gi"}}, "deletionPolicy": policy}));
    run(&ctx, &fake).await.unwrap();
    fake.edit(
        REG,
        json!({"metadata": {"finalizers": [FINALIZER], "deletionTimestamp": "2026-01-01T00:00:00Z"}}),
    );
    fake.take_calls();
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::await_change());
    let calls = fake.take_calls();
    assert!(fake.get(REG).is_none(), "finalizer released, Registry gone");
    (fake, calls)
}

#[tokio::test]
async fn an_old_finalizer_with_retain_keeps_the_volume() {
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
async fn an_old_finalizer_with_delete_removes_the_volume() {
    let (fake, calls) = delete_with("Delete").await;
    assert!(fake.get(PVC).is_none());
    assert_eq!(
        writes(&calls),
        [format!("DELETE {PVC}"), format!("PATCH {REG}")]
    );
    assert_eq!(event_reasons(&calls), ["DataDeleted"]);
}

const PURGE: &str = "/apis/batch/v1/namespaces/team/jobs/hub-purge";
const S3_CREDS: &str = "/api/v1/namespaces/team/secrets/hub-s3";

/// An S3 Registry with `policy`, deployed, then marked for deletion.
async fn s3_registry_being_deleted(policy: &str, with_credentials: bool) -> (Arc<Context>, Fake) {
    let (ctx, fake) = setup(json!({
        "storage": {"s3": {"bucket": "images", "prefix": "hub", "endpoint": "http://garage:3900",
                           "region": "garage", "credentialsSecret": "hub-s3"}},
        "deletionPolicy": policy,
    }));
    fake.put(
        S3_CREDS,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hub-s3", "namespace": "team"},
               "data": {"accessKeyId": "R0s=", "secretAccessKey": "c2VjcmV0"}}),
    );
    run(&ctx, &fake).await.unwrap();
    assert!(fake.get(DEP).is_some());
    if !with_credentials {
        fake.remove(S3_CREDS);
    }
    fake.edit(
        REG,
        json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
    );
    fake.take_calls();
    (ctx, fake)
}

fn finalizer_held(fake: &Fake) -> bool {
    fake.get(REG).unwrap()["metadata"]["finalizers"] == json!([FINALIZER])
}

/// Plays the Job controller and kubelet for the purge Job.
fn purge_finished(fake: &Fake, ok: bool, message: &str) {
    let cond = if ok { "Complete" } else { "Failed" };
    fake.edit(
        PURGE,
        json!({"status": {"conditions": [{"type": cond, "status": "True", "lastTransitionTime": "2026-01-01T03:01:00Z"}]}}),
    );
    fake.put(
        "/api/v1/namespaces/team/pods/hub-purge-abcde",
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "hub-purge-abcde", "namespace": "team", "labels": {"batch.kubernetes.io/job-name": "hub-purge"}},
               "status": {"containerStatuses": [{"name": "purge", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                   "state": {"terminated": {"exitCode": if ok {0} else {1}, "message": message}}}]}}),
    );
}

#[tokio::test]
async fn s3_delete_runs_a_purge_job_and_holds_the_finalizer_until_it_ends() {
    let (ctx, fake) = s3_registry_being_deleted("Delete", true).await;
    let err = run(&ctx, &fake).await.unwrap_err();
    assert_eq!(err.pending(), Some(Duration::from_secs(10)), "{err}");
    let calls = fake.take_calls();
    assert_eq!(
        writes(&calls),
        [
            format!("DELETE {DEP}"),
            "POST /apis/batch/v1/namespaces/team/jobs".to_owned()
        ],
        "the registry pods stop before the bucket is emptied"
    );
    assert_eq!(event_reasons(&calls), ["Purging"]);
    assert!(finalizer_held(&fake));
    let job = fake.get(PURGE).unwrap();
    assert!(
        job["metadata"]["ownerReferences"].is_null(),
        "outlives the Registry's children"
    );
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["args"], json!(["purge", "--yes"]));
    assert!(
        c["env"][0]["value"]
            .as_str()
            .unwrap()
            .contains("bucket: images")
    );

    // Still running: no write, still held.
    assert!(run(&ctx, &fake).await.unwrap_err().pending().is_some());
    assert!(writes(&fake.take_calls()).is_empty());
    assert!(finalizer_held(&fake));

    purge_finished(&fake, true, r#"{"objectsDeleted":42,"bytesFreed":1048576}"#);
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::await_change());
    let calls = fake.take_calls();
    assert_eq!(event_reasons(&calls), ["DataDeleted"]);
    let note = &event_notes(&calls)[0];
    assert!(
        note.contains("42 objects (1048576 bytes) under s3://images/hub"),
        "{note}"
    );
    assert_eq!(
        writes(&calls),
        [format!("DELETE {PURGE}"), format!("PATCH {REG}")]
    );
    assert!(fake.get(PURGE).is_none());
    assert!(fake.get(REG).is_none(), "released: the Registry is gone");
}

#[tokio::test]
async fn a_failed_purge_is_reported_and_deletion_goes_on() {
    let (ctx, fake) = s3_registry_being_deleted("Delete", true).await;
    assert!(run(&ctx, &fake).await.unwrap_err().pending().is_some());
    purge_finished(
        &fake,
        false,
        "berth purge: cannot reach bucket \"images\": 403 AccessDenied",
    );
    fake.take_calls();
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::await_change());
    let calls = fake.take_calls();
    assert_eq!(event_reasons(&calls), ["DataNotDeleted"]);
    let note = &event_notes(&calls)[0];
    assert!(
        note.contains("AccessDenied") && note.contains("s3://images/hub are kept"),
        "{note}"
    );
    assert!(fake.get(PURGE).is_none());
    assert!(fake.get(REG).is_none(), "released: the Registry is gone");
}

#[tokio::test]
async fn a_purge_that_cannot_start_never_wedges_deletion() {
    // The credentials went first (a namespace being deleted takes everything at once).
    let (ctx, fake) = s3_registry_being_deleted("Delete", false).await;
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::await_change());
    let calls = fake.take_calls();
    assert_eq!(event_reasons(&calls), ["DataNotDeleted"]);
    assert!(fake.get(PURGE).is_none());
    assert!(fake.get(REG).is_none(), "released: the Registry is gone");

    // A terminating namespace refuses the Job.
    let (ctx, fake) = s3_registry_being_deleted("Delete", true).await;
    fake.fail_once("POST", "/jobs", 403);
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::await_change());
    assert_eq!(event_reasons(&fake.take_calls()), ["DataNotDeleted"]);
    assert!(fake.get(REG).is_none(), "released: the Registry is gone");
}

#[tokio::test]
async fn s3_retain_keeps_the_bucket_without_a_job() {
    let (ctx, fake) = s3_registry_being_deleted("Retain", true).await;
    assert!(
        fake.get(REG).unwrap()["metadata"]["finalizers"].is_null(),
        "none to hold it"
    );
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::await_change());
    let calls = fake.take_calls();
    assert!(writes(&calls).is_empty(), "{calls:?}");
    assert!(fake.get(PURGE).is_none());
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
    // Another controller's finalizer holds the Registry while it is deleted.
    fake.edit(
        REG,
        json!({"spec": {"deletionPolicy": "Retain"}, "metadata": {
        "finalizers": ["example.com/backup"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}),
    );
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
            ..Default::default()
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
async fn token_auth_makes_its_signing_key_once_and_waits_for_trusted_issuer_keys() {
    let (ctx, fake) = setup(json!({
        "storage": {"pvc": {"size": "1Gi"}},
        "auth": {"admin": {}, "token": {"trustedIssuers": [{"issuer": "sso", "publicKeySecret": "sso-key"}]}},
    }));
    let key = "/api/v1/namespaces/team/secrets/hub-token-key";
    run(&ctx, &fake).await.unwrap();
    assert_eq!(
        condition(&fake, "Degraded"),
        ("True".into(), "SecretMissing".into())
    );
    let msg = fake.get(REG).unwrap()["status"]["conditions"][0]["message"].clone();
    assert!(msg.as_str().unwrap().contains("team/sso-key"), "{msg}");
    let made = fake.get(key).unwrap();
    assert_eq!(made["metadata"]["ownerReferences"][0]["uid"], "uid-hub");
    let reg: Registry = serde_json::from_value(fake.get(REG).unwrap()).unwrap();
    assert!(references_secret(&reg, "sso-key"));

    fake.put(
        "/api/v1/namespaces/team/secrets/sso-key",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sso-key", "namespace": "team"},
               "data": {"public-key.pem": "cGVt"}}),
    );
    fake.take_calls();
    run(&ctx, &fake).await.unwrap();
    let w = writes(&fake.take_calls());
    assert!(w.contains(&format!("PATCH {DEP}")), "{w:?}");
    assert!(
        !w.iter().any(|c| c.contains("secrets")),
        "the key is not remade: {w:?}"
    );
    assert_eq!(fake.get(key).unwrap()["data"], made["data"]);
    let cm = fake.get(CM).unwrap();
    let config: crate::config::Config =
        serde_yaml::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let token = config.auth.token.unwrap();
    assert_eq!(token.key, Some("/etc/berth-token/token-key.pem".into()));
    assert_eq!(token.trusted_issuers.len(), 1);

    // Deleted by the user to rotate it: the next reconcile makes a new, different key.
    fake.remove(key);
    run(&ctx, &fake).await.unwrap();
    assert_ne!(fake.get(key).unwrap()["data"], made["data"]);
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

#[tokio::test]
async fn replicas_zero_with_autoscaling_suspends_the_autoscaler_and_resumes_it() {
    const HPA: &str = "/apis/autoscaling/v2/namespaces/team/horizontalpodautoscalers/hub";
    let (ctx, fake) = setup(
        json!({"storage": {"pvc": {"size": "10Gi", "accessModes": ["ReadWriteMany"]}},
        "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}),
    );
    run(&ctx, &fake).await.unwrap();
    run(&ctx, &fake).await.unwrap();
    assert!(fake.get(HPA).is_some());
    // Scale to zero: an HPA cannot scale up from 0 (ScalingDisabled), so it goes away and the
    // Deployment is held at 0.
    fake.edit(
        REG,
        json!({"spec": {"replicas": 0}, "metadata": {"generation": 2}}),
    );
    run(&ctx, &fake).await.unwrap();
    assert!(fake.get(HPA).is_none(), "no autoscaler while suspended");
    assert_eq!(fake.get(DEP).unwrap()["spec"]["replicas"], 0);
    fake.edit(DEP, json!({"status": {"observedGeneration": fake.get(DEP).unwrap()["metadata"]["generation"], "replicas": 0}}));
    run(&ctx, &fake).await.unwrap();
    assert_eq!(
        condition(&fake, "Ready"),
        ("False".into(), "ScaledToZero".into())
    );
    // Back: the HPA returns and owns the count again.
    let mut reg = fake.get(REG).unwrap();
    reg["spec"].as_object_mut().unwrap().remove("replicas");
    reg["metadata"]["generation"] = json!(3);
    fake.put(REG, reg);
    run(&ctx, &fake).await.unwrap();
    assert!(fake.get(HPA).is_some(), "autoscaler resumed");
}

#[tokio::test]
async fn a_read_write_once_volume_rolls_with_a_surge_beside_the_volume() {
    let (ctx, fake) = setup(minimal());
    run(&ctx, &fake).await.unwrap();
    run(&ctx, &fake).await.unwrap();
    let dep = fake.get(DEP).unwrap();
    assert_eq!(
        dep["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}})
    );
    let term = &dep["spec"]["template"]["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        [0];
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        term["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        "hub"
    );
    // ReadWriteOncePod admits one pod only: the old one must go first.
    let (ctx, fake) =
        setup(json!({"storage": {"pvc": {"size": "10Gi", "accessModes": ["ReadWriteOncePod"]}}}));
    run(&ctx, &fake).await.unwrap();
    run(&ctx, &fake).await.unwrap();
    let dep = fake.get(DEP).unwrap();
    assert_eq!(dep["spec"]["strategy"]["type"], "Recreate");
    assert!(dep["spec"]["template"]["spec"]["affinity"].is_null());
}

#[tokio::test]
async fn progressing_and_events_say_what_is_true_now() {
    let (ctx, fake) = setup(
        json!({"storage": {"pvc": {"size": "10Gi", "accessModes": ["ReadWriteMany"]}}, "replicas": 2}),
    );
    run(&ctx, &fake).await.unwrap();
    run(&ctx, &fake).await.unwrap();
    // Every pod runs the new template but none is ready: not complete.
    let generation = fake.get(DEP).unwrap()["metadata"]["generation"].clone();
    fake.edit(
        DEP,
        json!({"status": {"observedGeneration": generation, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 0}}),
    );
    run(&ctx, &fake).await.unwrap();
    assert_eq!(
        condition(&fake, "Progressing"),
        ("True".into(), "WaitingForReadiness".into())
    );
    // A surge: the new pod is ready, the old one still runs.
    fake.edit(
        DEP,
        json!({"status": {"replicas": 3, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2}}),
    );
    run(&ctx, &fake).await.unwrap();
    assert_eq!(
        condition(&fake, "Progressing"),
        ("True".into(), "OldReplicasTerminating".into())
    );
    // One ready, then a drop, then both: each Ready Event quotes its own count.
    fake.edit(
        DEP,
        json!({"status": {"replicas": 2, "readyReplicas": 1, "availableReplicas": 1}}),
    );
    run(&ctx, &fake).await.unwrap();
    pods_ready(&fake, 2);
    fake.take_calls();
    run(&ctx, &fake).await.unwrap();
    assert_eq!(
        condition(&fake, "Progressing"),
        ("False".into(), "RolloutComplete".into())
    );
    let notes = event_notes(&fake.take_calls());
    assert!(
        notes.iter().any(|n| n.contains("2/2 replicas ready")),
        "{notes:?}"
    );
    assert!(
        !notes.iter().any(|n| n.contains("1/2")),
        "a stale message repeated: {notes:?}"
    );
}

const HOOK_SECRET: &str = "/api/v1/namespaces/team/secrets/registry-hooks";

/// A P-256 public key, as examples/registry-policy.yaml carries one.
const P256_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEAGNwvnZFote2Yee5JhrgjTiJtKnV
hboHrEGCn4VYmKo/7HtmOjRtU76hWqP+ysZI0IRBov3T16Cm9cIIUI4SjA==
-----END PUBLIC KEY-----
";

/// A Registry with every kind of policy rule and a webhook signed with a Secret's key.
fn with_policy() -> Value {
    json!({
        "storage": {"pvc": {"size": "1Gi"}},
        "policy": {
            "immutableTags": [{"repository": "prod/**", "tags": "^v[0-9]"}],
            "quotas": [{"repository": "team-a/**", "maxBytes": "50Gi", "warnAt": 0.8}],
            "notifications": [{"name": "release-hooks", "url": "https://hooks.example.com/registry",
                               "secretRef": "registry-hooks"}],
            "signatures": [{"repository": "prod/**", "publicKey": P256_PEM}],
        },
    })
}

fn hook_secret() -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": "registry-hooks", "namespace": "team"},
           "data": {"secret": "aG1hYy1rZXk="}})
}

#[tokio::test]
async fn a_missing_hook_secret_is_a_condition_and_nothing_is_deployed() {
    let (ctx, fake) = setup(with_policy());
    let action = run(&ctx, &fake).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let calls = fake.take_calls();
    assert_eq!(
        writes(&calls),
        [format!("PATCH {REG}/status")],
        "no Deployment that would crash-loop without its HMAC key"
    );
    assert_eq!(
        condition(&fake, "Degraded"),
        ("True".into(), "SecretMissing".into())
    );
    let msg = fake.get(REG).unwrap()["status"]["conditions"][0]["message"].clone();
    assert!(
        msg.as_str()
            .unwrap()
            .contains("Secret team/registry-hooks does not exist; create it with keys secret"),
        "{msg}"
    );
    // The Secret's arrival wakes this Registry, which then deploys with it mounted.
    let reg: Registry = serde_json::from_value(fake.get(REG).unwrap()).unwrap();
    assert!(references_secret(&reg, "registry-hooks"));
    fake.put(HOOK_SECRET, hook_secret());
    run(&ctx, &fake).await.unwrap();
    let pod = &fake.get(DEP).unwrap()["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "notification-0")
        .cloned()
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], "registry-hooks");
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().any(|m| m["name"] == "notification-0"
        && m["mountPath"] == "/etc/berth-policy/notifications/0"
        && m["readOnly"] == true));
    let cm = fake.get(CM).unwrap();
    let config: crate::config::Config =
        serde_yaml::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(
        config.policy.notifications[0].secret_file.as_deref(),
        Some(std::path::Path::new(
            "/etc/berth-policy/notifications/0/secret"
        ))
    );
    assert_eq!(
        config.policy.signatures[0].public_key,
        std::path::PathBuf::from("/etc/berth/signature-0.pem")
    );
    assert_eq!(cm["data"]["signature-0.pem"], P256_PEM);
    assert_eq!(
        condition(&fake, "Degraded"),
        ("False".into(), "AsExpected".into())
    );
}

#[tokio::test]
async fn an_invalid_tag_regex_is_a_condition_naming_the_field() {
    let mut spec = with_policy();
    spec["policy"]["immutableTags"] = json!([
        {"repository": "prod/**", "tags": "^v[0-9]"},
        {"repository": "base/*", "tags": "^(stable"},
    ]);
    let (ctx, fake) = setup(spec);
    fake.put(HOOK_SECRET, hook_secret());
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::await_change());
    let calls = fake.take_calls();
    assert_eq!(writes(&calls), [format!("PATCH {REG}/status")]);
    assert!(fake.get(DEP).is_none() && fake.get(CM).is_none());
    assert_eq!(
        condition(&fake, "Degraded"),
        ("True".into(), "InvalidSpec".into())
    );
    let msg = fake.get(REG).unwrap()["status"]["conditions"][0]["message"].clone();
    assert!(
        msg.as_str().unwrap().contains(
            "spec.policy.immutableTags[1].tags: \"^(stable\" is not a regular expression"
        ),
        "{msg}"
    );
    assert!(
        event_notes(&calls)
            .iter()
            .any(|n| n.contains("immutableTags[1].tags"))
    );
    // No hot loop: the same spec again writes nothing.
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::await_change());
    assert!(writes(&fake.take_calls()).is_empty());
    // A warnAt of 2 is refused the same way.
    let mut spec = with_policy();
    spec["policy"]["quotas"][0]["warnAt"] = json!(2);
    let (ctx, fake) = setup(spec);
    fake.put(HOOK_SECRET, hook_secret());
    run(&ctx, &fake).await.unwrap();
    let msg = fake.get(REG).unwrap()["status"]["conditions"][0]["message"].clone();
    assert!(
        msg.as_str()
            .unwrap()
            .contains("spec.policy.quotas[0].warnAt: 2 is not between 0 and 1"),
        "{msg}"
    );
    assert!(fake.get(DEP).is_none());
}

#[tokio::test]
async fn a_registry_with_policy_in_steady_state_makes_no_write() {
    let (ctx, fake) = setup(with_policy());
    fake.put(HOOK_SECRET, hook_secret());
    run(&ctx, &fake).await.unwrap();
    assert!(fake.get(DEP).is_some());
    pods_ready(&fake, 1);
    run(&ctx, &fake).await.unwrap();
    fake.take_calls();
    // Quotas are configured: looked at every minute, so the status follows usage.
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::requeue(QUOTA_POLL));
    let calls = fake.take_calls();
    assert!(
        calls.iter().all(|c| !c.is_write()),
        "steady state wrote: {:?}",
        writes(&calls)
    );
    // A new key, in place under the same file name, rolls the pods.
    let hash = config_hash(&fake);
    let mut policy = with_policy()["policy"].clone();
    policy["signatures"][0]["publicKey"] = json!(format!("{P256_PEM}{P256_PEM}"));
    fake.edit(
        REG,
        json!({"metadata": {"generation": 2}, "spec": {"policy": policy}}),
    );
    run(&ctx, &fake).await.unwrap();
    assert_eq!(
        writes(&fake.take_calls()),
        [
            format!("PATCH {CM}"),
            format!("PATCH {DEP}"),
            format!("PATCH {REG}/status")
        ]
    );
    assert_ne!(config_hash(&fake), hash);
}

/// Plays the registry's `/metrics`: answers what the test last set (status, body, delay) and
/// counts the requests.
struct RegistryMetrics {
    base: String,
    answer: Arc<std::sync::Mutex<(u16, String, Duration)>>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
}

impl RegistryMetrics {
    async fn start() -> RegistryMetrics {
        use std::sync::atomic::Ordering;
        let answer = Arc::new(std::sync::Mutex::new((200, String::new(), Duration::ZERO)));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (a, h) = (answer.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let (a, h) = (a.clone(), h.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let (code, body, delay) = a.lock().unwrap().clone();
                    tokio::time::sleep(delay).await;
                    (axum::http::StatusCode::from_u16(code).unwrap(), body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        RegistryMetrics { base, answer, hits }
    }

    fn answer(&self, code: u16, body: impl Into<String>) {
        *self.answer.lock().unwrap() = (code, body.into(), Duration::ZERO);
    }

    fn stall(&self, delay: Duration) {
        self.answer.lock().unwrap().2 = delay;
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `ctx` with its quota reads sent here.
    fn context(&self, ctx: &Arc<Context>) -> Arc<Context> {
        Arc::new(
            (**ctx)
                .clone()
                .with_quota_reader(QuotaReader::with_base_url(self.base.clone())),
        )
    }
}

/// The registry's gauges for team-a/** (limit 1000) and base/* (limit 1 GiB, 5 bytes used).
fn quota_metrics(team_a_used: u64, team_a_warning: bool) -> String {
    format!(
        "# HELP berth_requests Requests served.\n# TYPE berth_requests counter\n\
         berth_requests_total{{route=\"manifest_get\",status=\"200\"}} 3\n\
         # TYPE berth_quota_used_bytes gauge\n\
         berth_quota_used_bytes{{quota=\"team-a/**\"}} {team_a_used}\n\
         berth_quota_used_bytes{{quota=\"base/*\"}} 5\n\
         # TYPE berth_quota_limit_bytes gauge\n\
         berth_quota_limit_bytes{{quota=\"team-a/**\"}} 1000\n\
         berth_quota_limit_bytes{{quota=\"base/*\"}} 1073741824\n\
         # TYPE berth_quota_warning gauge\n\
         berth_quota_warning{{quota=\"team-a/**\"}} {}\n\
         berth_quota_warning{{quota=\"base/*\"}} 0\n# EOF\n",
        u8::from(team_a_warning)
    )
}

fn with_quotas() -> Value {
    json!({
        "storage": {"pvc": {"size": "1Gi"}},
        "policy": {"quotas": [
            {"repository": "team-a/**", "maxBytes": 1000, "warnAt": 0.9},
            {"repository": "base/*", "maxBytes": "1Gi"},
        ]},
    })
}

fn status_quotas(fake: &Fake) -> Value {
    fake.get(REG).unwrap()["status"]["quotas"].clone()
}

/// A Registry with quotas, deployed and available, whose status shows team-a/** at
/// `used` bytes (below the threshold) and base/* at 5; calls so far taken.
async fn quotas_in_status(used: u64) -> (Arc<Context>, Fake, RegistryMetrics) {
    let (ctx, fake) = setup(with_quotas());
    let registry = RegistryMetrics::start().await;
    let ctx = registry.context(&ctx);
    registry.answer(200, quota_metrics(used, false));
    run(&ctx, &fake).await.unwrap();
    assert_eq!(
        registry.hits(),
        0,
        "no Deployment available yet: nothing to ask"
    );
    pods_ready(&fake, 1);
    run(&ctx, &fake).await.unwrap();
    assert_eq!(registry.hits(), 1);
    fake.take_calls();
    (ctx, fake, registry)
}

#[tokio::test]
async fn quota_usage_appears_in_status_in_spec_order_and_is_looked_at_every_minute() {
    let (ctx, fake) = setup(with_quotas());
    let registry = RegistryMetrics::start().await;
    let ctx = registry.context(&ctx);
    registry.answer(200, quota_metrics(420, false));
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::requeue(QUOTA_POLL));
    assert!(status_quotas(&fake).is_null());
    pods_ready(&fake, 1);
    fake.take_calls();
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::requeue(QUOTA_POLL));
    let calls = fake.take_calls();
    assert_eq!(writes(&calls), [format!("PATCH {REG}/status")]);
    let patch = calls.iter().find(|c| c.path.ends_with("/status")).unwrap();
    assert!(
        patch.content_type.contains("apply-patch"),
        "server-side apply"
    );
    assert_eq!(
        status_quotas(&fake),
        json!([
            {"repository": "team-a/**", "usedBytes": 420, "limitBytes": 1000, "warning": false},
            {"repository": "base/*", "usedBytes": 5, "limitBytes": 1073741824u64, "warning": false},
        ])
    );
    assert!(
        !event_reasons(&calls).iter().any(|r| r.starts_with("Quota")),
        "below the threshold is no news"
    );
    // Same figures: the registry is asked, nothing is written.
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::requeue(QUOTA_POLL));
    let calls = fake.take_calls();
    assert!(calls.iter().all(|c| !c.is_write()), "{:?}", writes(&calls));
    assert_eq!(registry.hits(), 2);
    // New usage is written.
    registry.answer(200, quota_metrics(500, false));
    run(&ctx, &fake).await.unwrap();
    assert_eq!(writes(&fake.take_calls()), [format!("PATCH {REG}/status")]);
    assert_eq!(status_quotas(&fake)[0]["usedBytes"], 500);
    // Quotas gone from the spec: gone from the status, and back to the slow requeue.
    fake.edit(
        REG,
        json!({"metadata": {"generation": 2}, "spec": {"policy": null}}),
    );
    assert_eq!(
        run(&ctx, &fake).await.unwrap(),
        Action::requeue(Duration::from_secs(600))
    );
    assert!(status_quotas(&fake).is_null());
    assert_eq!(registry.hits(), 3, "not asked without quotas");
}

#[tokio::test]
async fn crossing_the_warning_threshold_is_one_warning_event_and_falling_back_one_normal() {
    let (ctx, fake, registry) = quotas_in_status(500).await;
    registry.answer(200, quota_metrics(950, true));
    run(&ctx, &fake).await.unwrap();
    let calls = fake.take_calls();
    assert_eq!(writes(&calls), [format!("PATCH {REG}/status")]);
    assert_eq!(event_reasons(&calls), ["QuotaNearlyFull"]);
    let event = calls
        .iter()
        .find(|c| c.is_event() && c.method != "GET")
        .unwrap();
    assert_eq!(event.body["type"], "Warning");
    let note = &event_notes(&calls)[0];
    assert!(
        note.contains("quota team-a/** uses 950 of 1000 bytes (95%)"),
        "{note}"
    );
    assert_eq!(status_quotas(&fake)[0]["warning"], true);
    // The same figures again: no write, no second Event.
    run(&ctx, &fake).await.unwrap();
    let calls = fake.take_calls();
    assert!(calls.iter().all(|c| !c.is_write()), "{:?}", writes(&calls));
    assert!(event_reasons(&calls).is_empty());
    // Usage moves while still past the threshold: the status follows, no Event.
    registry.answer(200, quota_metrics(960, true));
    run(&ctx, &fake).await.unwrap();
    let calls = fake.take_calls();
    assert_eq!(writes(&calls), [format!("PATCH {REG}/status")]);
    assert!(event_reasons(&calls).is_empty());
    // Space freed: one Normal Event.
    registry.answer(200, quota_metrics(100, false));
    run(&ctx, &fake).await.unwrap();
    let calls = fake.take_calls();
    assert_eq!(event_reasons(&calls), ["QuotaBelowWarning"]);
    let event = calls
        .iter()
        .find(|c| c.is_event() && c.method != "GET")
        .unwrap();
    assert_eq!(event.body["type"], "Normal");
    assert_eq!(status_quotas(&fake)[0]["warning"], false);
}

#[tokio::test]
async fn a_registry_that_fails_garbles_or_stalls_keeps_the_last_quota_status() {
    let (ctx, fake, registry) = quotas_in_status(420).await;
    let before = status_quotas(&fake);
    assert_eq!(before[0]["usedBytes"], 420);
    let garbage = [
        (500, "internal error".to_owned()),
        (404, "404 page not found".to_owned()),
        (
            200,
            "<html><body>an Ingress default backend</body></html>".to_owned(),
        ),
        (200, quota_metrics(999, true).replace("} 999", "} lots")),
        (
            200,
            "berth_quota_used_bytes{quota=\"team-a/**\"} 1\n".repeat(2),
        ),
    ];
    for (code, body) in garbage {
        registry.answer(code, body.clone());
        assert_eq!(
            run(&ctx, &fake).await.unwrap(),
            Action::requeue(QUOTA_POLL),
            "{code} {body}"
        );
        let calls = fake.take_calls();
        assert!(
            calls.iter().all(|c| !c.is_write()),
            "{code} {body}: {:?}",
            writes(&calls)
        );
        assert_eq!(status_quotas(&fake), before, "{code} {body}");
    }
    // Slower than the read's 2 s timeout: the reconcile goes on without it.
    registry.answer(200, quota_metrics(999, true));
    registry.stall(Duration::from_secs(10));
    let started = std::time::Instant::now();
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::requeue(QUOTA_POLL));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(writes(&fake.take_calls()).is_empty());
    assert_eq!(status_quotas(&fake), before);
    // Nothing listening at all.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let unreachable = Arc::new(
        (*ctx)
            .clone()
            .with_quota_reader(QuotaReader::with_base_url(closed)),
    );
    for _ in 0..2 {
        assert_eq!(
            run(&unreachable, &fake).await.unwrap(),
            Action::requeue(QUOTA_POLL)
        );
        assert!(writes(&fake.take_calls()).is_empty());
    }
    assert_eq!(status_quotas(&fake), before);
    // Back to health: the figures move again.
    registry.answer(200, quota_metrics(430, false));
    run(&ctx, &fake).await.unwrap();
    assert_eq!(status_quotas(&fake)[0]["usedBytes"], 430);
}

#[tokio::test]
async fn https_without_a_known_ca_skips_the_quota_read() {
    let mut spec = with_quotas();
    spec["tls"] = json!({"secretName": "hub-cert"});
    let (ctx, fake) = setup(spec);
    fake.put(
        "/api/v1/namespaces/team/secrets/hub-cert",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hub-cert", "namespace": "team"},
               "type": "kubernetes.io/tls", "data": {"tls.crt": "Y3J0", "tls.key": "a2V5"}}),
    );
    let registry = RegistryMetrics::start().await;
    let ctx = registry.context(&ctx);
    registry.answer(200, quota_metrics(420, false));
    run(&ctx, &fake).await.unwrap();
    pods_ready(&fake, 1);
    fake.take_calls();
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::requeue(QUOTA_POLL));
    assert_eq!(registry.hits(), 0, "verification is never turned off");
    assert!(status_quotas(&fake).is_null());
    fake.take_calls();
    run(&ctx, &fake).await.unwrap();
    assert!(writes(&fake.take_calls()).is_empty(), "steady state");
}

/// Plays a registry serving HTTPS: every connection gets `body` as the answer, under a
/// certificate for 127.0.0.1 signed by a fresh CA. Returns the base URL and the CA's PEM.
async fn https_registry_metrics(body: String) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(body.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (base, ca.pem())
}

#[tokio::test]
async fn https_is_read_trusting_only_the_ca_in_the_tls_secret() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut spec = with_quotas();
    spec["tls"] = json!({"secretName": "hub-cert"});
    let (ctx, fake) = setup(spec);
    let (base, ca) = https_registry_metrics(quota_metrics(420, false)).await;
    let (_, other_ca) = https_registry_metrics(String::new()).await;
    let secret = |ca: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hub-cert", "namespace": "team"},
               "type": "kubernetes.io/tls",
               "data": {"tls.crt": "Y3J0", "tls.key": "a2V5", "ca.crt": b64(ca)}})
    };
    let ctx = Arc::new(
        (*ctx)
            .clone()
            .with_quota_reader(QuotaReader::with_base_url(base)),
    );
    // A CA that did not sign the registry's certificate: the read fails, nothing is written.
    fake.put(
        "/api/v1/namespaces/team/secrets/hub-cert",
        secret(&other_ca),
    );
    run(&ctx, &fake).await.unwrap();
    pods_ready(&fake, 1);
    assert_eq!(run(&ctx, &fake).await.unwrap(), Action::requeue(QUOTA_POLL));
    assert!(status_quotas(&fake).is_null());
    // The CA that did (as cert-manager writes it into ca.crt).
    fake.put("/api/v1/namespaces/team/secrets/hub-cert", secret(&ca));
    run(&ctx, &fake).await.unwrap();
    assert_eq!(status_quotas(&fake)[0]["usedBytes"], 420);
}
