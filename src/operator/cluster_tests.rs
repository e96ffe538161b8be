//! Scenarios a real API server showed (issue 13), against the fake API server: what admission
//! would let through is still refused by the operator before any child is made.

use std::sync::Arc;

use serde_json::{Value, json};

use super::Context;
use super::crd::Registry;
use super::fake::{Fake, writes};
use super::registry::reconcile;

fn registry_at(name: &str, spec: Value) -> (Arc<Context>, Fake, String) {
    let (ctx, fake) = Fake::context();
    let key = format!("/apis/berth.dev/v1alpha1/namespaces/team/registries/{name}");
    fake.put(
        &key,
        json!({
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "Registry",
            "metadata": {"name": name, "namespace": "team", "uid": "uid-reg", "generation": 1,
                         "resourceVersion": "1"},
            "spec": spec,
        }),
    );
    (ctx, fake, key)
}

async fn reconcile_once(ctx: &Arc<Context>, fake: &Fake, key: &str) {
    let reg: Registry = serde_json::from_value(fake.get(key).unwrap()).unwrap();
    reconcile(Arc::new(reg), ctx.clone()).await.unwrap();
}

/// The Degraded condition's reason and message.
fn degraded(fake: &Fake, key: &str) -> (String, String) {
    let reg = fake.get(key).unwrap();
    let c = reg["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    (
        c["reason"].as_str().unwrap().into(),
        c["message"].as_str().unwrap().into(),
    )
}

async fn refused(name: &str, spec: Value) -> String {
    let (ctx, fake, key) = registry_at(name, spec);
    reconcile_once(&ctx, &fake, &key).await;
    let made: Vec<String> = writes(&fake.take_calls())
        .into_iter()
        .filter(|w| !w.ends_with("/status") && !w.ends_with(&key))
        .collect();
    assert_eq!(made, Vec::<String>::new(), "{name}: no child is made");
    let (reason, message) = degraded(&fake, &key);
    assert_eq!(reason, "InvalidSpec", "{name}");
    message
}

#[tokio::test]
async fn names_children_cannot_carry_are_a_condition_before_any_child() {
    let long = "a".repeat(70);
    for name in [long.as_str(), "hub.team"] {
        let message = refused(name, json!({"storage": {"pvc": {"size": "10Gi"}}})).await;
        assert!(message.contains("metadata.name"), "{message}");
    }
}

#[tokio::test]
async fn several_replicas_on_a_single_node_volume_are_refused() {
    let message = refused(
        "hub",
        json!({"replicas": 2, "storage": {"pvc": {"size": "10Gi"}}}),
    )
    .await;
    assert!(message.contains("ReadWriteMany"), "{message}");
    let autoscaled = json!({"autoscaling": {"maxReplicas": 3},
                            "storage": {"pvc": {"size": "10Gi", "accessModes": ["ReadWriteOnce"]}}});
    refused("hub", autoscaled).await;
}

#[tokio::test]
async fn the_hpa_spelling_of_the_cpu_target_is_refused_not_dropped() {
    let spec = json!({"autoscaling": {"maxReplicas": 3, "targetCPUUtilizationPercentage": 50},
                      "storage": {"s3": {"bucket": "b", "credentialsSecret": "s3"}}});
    let message = refused("hub", spec).await;
    assert!(
        message.contains("targetCpuUtilizationPercentage"),
        "{message}"
    );
}

#[tokio::test]
async fn the_longest_name_the_operator_accepts_makes_children_the_api_server_accepts() {
    let name = format!("r{}", "a".repeat(52));
    let spec = json!({"replicas": 2, "ingress": {"host": "h.example"},
                      "autoscaling": {"maxReplicas": 3},
                      "storage": {"pvc": {"size": "10Gi", "accessModes": ["ReadWriteMany"]}}});
    let (ctx, fake, key) = registry_at(&name, spec);
    reconcile_once(&ctx, &fake, &key).await;
    let made = writes(&fake.take_calls());
    for kind in [
        "configmaps",
        "persistentvolumeclaims",
        "services",
        "deployments",
        "ingresses",
        "horizontalpodautoscalers",
    ] {
        assert!(
            made.iter().any(|w| w.contains(&format!("/{kind}/"))),
            "{kind}: {made:?}"
        );
    }
    let (reason, message) = degraded(&fake, &key);
    assert_ne!(reason, "Rejected", "{message}");
}

#[tokio::test]
async fn the_fake_refuses_names_as_the_api_server_does() {
    let (client, _fake) = Fake::start();
    let services: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(client, "team");
    let long = "a".repeat(64);
    for (name, why) in [
        (long.as_str(), "must be no more than 63 characters"),
        (
            "hub.team",
            "a DNS-1035 label must consist of lower case alphanumeric characters",
        ),
    ] {
        let svc = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name}}))
        .unwrap();
        let err = services
            .create(&Default::default(), &svc)
            .await
            .unwrap_err();
        let kube::Error::Api(s) = err else {
            panic!("{err}")
        };
        assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
        let head =
            format!("Service {name:?} is invalid: metadata.name: Invalid value: {name:?}: {why}");
        assert!(s.message.starts_with(&head), "{}", s.message);
    }
}

#[tokio::test]
async fn the_fake_keeps_status_apart_and_deletes_as_the_api_server_does() {
    use kube::api::{Patch, PatchParams};
    let (ctx, fake, key) = registry_at("hub", json!({"storage": {"pvc": {"size": "10Gi"}}}));
    let api: kube::Api<Registry> = kube::Api::namespaced(ctx.client.clone(), "team");
    let pp = PatchParams::default();
    // A main-resource write cannot set status; a status write cannot change spec.
    let both = json!({"spec": {"replicas": 3}, "status": {"endpoint": "x"}});
    api.patch("hub", &pp, &Patch::Merge(&both)).await.unwrap();
    let stored = fake.get(&key).unwrap();
    assert_eq!(stored["spec"]["replicas"], 3);
    assert!(stored["status"].is_null(), "{stored}");
    assert_eq!(
        stored["metadata"]["generation"], 2,
        "a spec change bumps generation"
    );
    let both = json!({"spec": {"replicas": 5}, "status": {"endpoint": "x"}});
    api.patch_status("hub", &pp, &Patch::Merge(&both))
        .await
        .unwrap();
    let stored = fake.get(&key).unwrap();
    assert_eq!(
        (
            stored["spec"]["replicas"].clone(),
            stored["status"]["endpoint"].clone()
        ),
        (json!(3), json!("x"))
    );
    assert_eq!(stored["metadata"]["generation"], 2);
    // DELETE with a finalizer only marks the object; no finalizer may be added then; the
    // last one removed lets it go, and the garbage collector takes what it owned.
    fake.edit(&key, json!({"metadata": {"finalizers": ["a.example/x"]}}));
    let owned = "/api/v1/namespaces/team/configmaps/hub-config";
    fake.put(owned, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "hub-config",
        "namespace": "team", "uid": "uid-cm", "ownerReferences": [{"apiVersion": "berth.dev/v1alpha1",
        "kind": "Registry", "name": "hub", "uid": "uid-reg"}]}}));
    api.delete("hub", &Default::default()).await.unwrap();
    let stored = fake.get(&key).unwrap();
    assert!(!stored["metadata"]["deletionTimestamp"].is_null());
    let add = json!({"metadata": {"finalizers": ["a.example/x", "b.example/y"]}});
    let err = api
        .patch("hub", &pp, &Patch::Merge(&add))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("{err}")
    };
    assert_eq!(s.code, 422);
    assert!(
        s.message
            .contains("no new finalizers can be added if the object is being deleted"),
        "{}",
        s.message
    );
    assert!(fake.get(owned).is_some(), "the owner still exists");
    let none = json!({"metadata": {"finalizers": []}});
    api.patch("hub", &pp, &Patch::Merge(&none)).await.unwrap();
    assert!(fake.get(&key).is_none(), "gone with its last finalizer");
    assert!(fake.get(owned).is_none(), "collected with its owner");
}
