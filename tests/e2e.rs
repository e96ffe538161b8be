//! End to end against the cluster KUBECONFIG points at: install the CRDs, run the operator
//! (in this process, watching a fresh namespace), apply examples/registry-minimal.yaml, wait for
//! Ready, push a blob and a manifest through a port-forward to the endpoint, then run
//! examples/gc-once.yaml and wait for it to succeed. Where no cluster is reachable it prints
//! that it was NOT RUN and passes without proving anything.
//!
//! The cluster must be able to pull the image in BERTH_E2E_IMAGE (this build's image, e.g.
//! `kind load docker-image berth:dev`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth::operator::crd::{GarbageCollection, Registry};
use berth::operator::run::{Options, run};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt};
use sha2::{Digest, Sha256};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Says so on the terminal even under the test harness's output capture.
fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

async fn cluster() -> Option<Client> {
    let client = tokio::time::timeout(Duration::from_secs(10), Client::try_default())
        .await
        .ok()?
        .ok()?;
    tokio::time::timeout(Duration::from_secs(10), client.apiserver_version())
        .await
        .ok()?
        .ok()?;
    Some(client)
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    panic!("timed out waiting for {what}");
}

fn example<T: serde::de::DeserializeOwned>(file: &str) -> T {
    serde_yaml::from_str(&std::fs::read_to_string(format!("{ROOT}/examples/{file}")).unwrap())
        .unwrap()
}

#[tokio::test]
async fn operator_end_to_end_on_a_real_cluster() {
    let Some(client) = cluster().await else {
        say(
            "e2e: NOT RUN - no Kubernetes API server reachable through KUBECONFIG; nothing was tested",
        );
        return;
    };
    let Ok(image) = std::env::var("BERTH_E2E_IMAGE") else {
        say(
            "e2e: NOT RUN - a cluster is reachable but BERTH_E2E_IMAGE (an image of this build it can pull) is not set",
        );
        return;
    };
    let ns = format!("berth-e2e-{}", std::process::id());
    let pp = PatchParams::apply("berth-e2e").force();

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [
        berth::operator::crd::registry_crd(),
        GarbageCollection::crd(),
    ] {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(&name, &pp, &Patch::Apply(&crd)).await.unwrap();
        wait_for("the CRD to be established", Duration::from_secs(60), || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let c = crds.get(&name).await.unwrap();
                c.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            }
        })
        .await;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut n = Namespace::default();
    n.metadata.name = Some(ns.clone());
    namespaces.create(&PostParams::default(), &n).await.unwrap();

    let operator = tokio::spawn(run(Options {
        namespace: Some(ns.clone()),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        lease: None,
        image,
    }));

    let registries: Api<Registry> = Api::namespaced(client.clone(), &ns);
    let reg: Registry = example("registry-minimal.yaml");
    registries
        .create(&PostParams::default(), &reg)
        .await
        .unwrap();
    wait_for("the Registry to be Ready", Duration::from_secs(300), || {
        let registries = registries.clone();
        async move {
            let r = registries.get("hub").await.unwrap();
            r.status.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        }
    })
    .await;

    // Push through a port-forward to the Service the status names.
    let mut pf = Command::new("kubectl")
        .args(["port-forward", "-n", &ns, "svc/hub", ":5000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(pf.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("Forwarding from ")
        .nth(1)
        .and_then(|s| s.split(" ->").next())
        .unwrap()
        .trim()
        .to_owned();
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let digest = |b: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(b)));
    let r = http
        .post(format!(
            "{base}/v2/e2e/app/blobs/uploads/?digest={}",
            digest(&config)
        ))
        .body(config.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[]}}"#,
        digest(&config),
        config.len()
    );
    let r = http
        .put(format!("{base}/v2/e2e/app/manifests/v1"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let _ = pf.kill();
    let _ = pf.wait();

    let gcs: Api<GarbageCollection> = Api::namespaced(client.clone(), &ns);
    let gc: GarbageCollection = example("gc-once.yaml");
    gcs.create(&PostParams::default(), &gc).await.unwrap();
    wait_for(
        "the GarbageCollection to finish",
        Duration::from_secs(300),
        || {
            let gcs = gcs.clone();
            async move {
                let g = gcs.get("hub-cleanup").await.unwrap();
                matches!(
                    g.status.and_then(|s| s.phase),
                    Some(
                        berth::operator::crd::GcPhase::Succeeded
                            | berth::operator::crd::GcPhase::Failed
                    )
                )
            }
        },
    )
    .await;
    let g = gcs.get("hub-cleanup").await.unwrap();
    assert_eq!(
        g.status.unwrap().phase,
        Some(berth::operator::crd::GcPhase::Succeeded)
    );

    operator.abort();
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    say("e2e: RAN against the cluster and passed");
}
