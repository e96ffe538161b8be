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
                         "resourceVersion": "1", "finalizers": [super::registry::FINALIZER]},
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
