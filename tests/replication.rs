//! Push replication between real registries on loopback: a `berth serve` with a replication
//! rule sends each push and delete to another Berth (behind a fault proxy that can take it
//! down) or to CNCF Distribution. Events wait in the store while the destination is down,
//! survive SIGKILL of the replica holding them and a restart, and arrive in order; a reconcile
//! copies what no event announced.

mod common;

use std::path::Path;
use std::time::Duration;

use common::faults::{Faults, Mode};
use common::*;

fn rule_config(dir: &Path, root: &Path, url: &str, extra: &str) -> std::path::PathBuf {
    let cfg = dir.join("berth.yaml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  filesystem:\n    root: {}\nreplication:\n  - name: dr\n    repositories: \"prod/**\"\n    url: {url}\n{extra}",
            root.display()
        ),
    )
    .unwrap();
    cfg
}

/// Where `repo:tag` points at `base`, or `None` when it is not there.
async fn tag_at(c: &reqwest::Client, base: &str, repo: &str, tag: &str) -> Option<String> {
    let r = c
        .head(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .unwrap();
    if r.status() == 404 {
        return None;
    }
    assert_eq!(r.status(), 200, "HEAD {repo}:{tag}");
    Some(
        r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned(),
    )
}

/// Waits (up to `secs`) until every `(repo, tag, digest)` holds at `base` (`None`: absent).
async fn until_replicated(
    c: &reqwest::Client,
    base: &str,
    want: &[(&str, &str, Option<&str>)],
    secs: u64,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let mut now = Vec::new();
        for (repo, tag, _) in want {
            now.push(tag_at(c, base, repo, tag).await);
        }
        let expected: Vec<Option<String>> = want.iter().map(|w| w.2.map(str::to_owned)).collect();
        if now == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not replicated in {secs} s: have {now:?}, want {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (up to `secs`) until `f` holds.
async fn eventually<F: std::future::Future<Output = bool>>(
    secs: u64,
    mut f: impl FnMut() -> F,
) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// A gauge or counter of /metrics for the `dr` rule (0 when absent).
async fn metric(s: &Server, name: &str) -> f64 {
    let text = client()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("berth_{name}{{rule=\"dr\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn delete(c: &reqwest::Client, s: &Server, repo: &str, reference: &str) {
    let r = c
        .delete(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "DELETE {repo}:{reference}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_for_a_destination_that_is_down_and_survive_kill_and_restart_in_order() {
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let dest = Server::start();
    let faults = Faults::start(dest.host()).await;
    let root = dir.path().join("source");
    let cfg = rule_config(dir.path(), &root, &faults.url(), "    reconcileEvery: 0s\n");
    let args = ["--config", cfg.to_str().unwrap()];
    // Two replicas on one volume, as a Deployment of two on a ReadWriteMany PVC.
    let mut a1 = Server::start_on(&root, &args);
    let holds = |s: &Server| {
        s.logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("delivering queued events"))
    };
    assert!(
        wait_until(Duration::from_secs(10), || holds(&a1)),
        "a1 takes the queue"
    );
    let a2 = Server::start_on(&root, &args);

    // Replicated as pushed, blobs and all; repositories outside the rule stay home.
    let (_, x) = push_image(&c, &a1, "prod/app", "v1", "x").await;
    push_image(&c, &a1, "team/other", "v1", "other").await;
    until_replicated(&c, &dest.url(""), &[("prod/app", "v1", Some(&x))], 20).await;
    let pulled = c
        .get(dest.url(&format!("/v2/prod/app/manifests/{x}")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    let m: serde_json::Value = pulled.json().await.unwrap();
    for d in [&m["config"]["digest"], &m["layers"][0]["digest"]] {
        let r = c
            .get(dest.url(&format!("/v2/prod/app/blobs/{}", d.as_str().unwrap())))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "blob {d} replicated");
    }
    assert_eq!(tag_at(&c, &dest.url(""), "team/other", "v1").await, None);

    // The destination goes away. Pushes through either replica queue up, in order: v1 moves
    // to y and then to z, so a delivery out of order would leave it at y.
    faults.set(Mode::Down);
    let (_, y) = push_image(&c, &a2, "prod/app", "v2", "y").await;
    push_image(&c, &a1, "prod/app", "v1", "y").await;
    let (_, z) = push_image(&c, &a2, "prod/app", "v1", "z").await;
    push_image(&c, &a1, "prod/app", "tmp", "t").await;
    delete(&c, &a2, "prod/app", "tmp").await;
    assert!(
        eventually(30, || async {
            metric(&a1, "replication_failures_total").await
                + metric(&a2, "replication_failures_total").await
                > 0.0
        })
        .await,
        "delivery was tried and failed while the destination was down"
    );
    let depth = metric(&a1, "replication_queue_depth")
        .await
        .max(metric(&a2, "replication_queue_depth").await);
    assert!(depth >= 1.0, "events wait: depth {depth}");

    // The replica holding the queue dies; the other takes it over once the lease expires.
    assert!(!holds(&a2), "a2 waits while a1 holds the queue");
    a1.kill9();
    faults.set(Mode::Pass);
    until_replicated(
        &c,
        &dest.url(""),
        &[
            ("prod/app", "v1", Some(&z)),
            ("prod/app", "v2", Some(&y)),
            ("prod/app", "tmp", None),
        ],
        60,
    )
    .await;

    // Down again, more events, and every replica killed: a new one delivers them.
    faults.set(Mode::Down);
    let (_, w) = push_image(&c, &a2, "prod/app", "v3", "w").await;
    delete(&c, &a2, "prod/app", "v2").await;
    let mut a2 = a2;
    a2.kill9();
    let a3 = Server::start_on(&root, &args);
    faults.set(Mode::Pass);
    until_replicated(
        &c,
        &dest.url(""),
        &[
            ("prod/app", "v1", Some(&z)),
            ("prod/app", "v2", None),
            ("prod/app", "v3", Some(&w)),
        ],
        60,
    )
    .await;
    assert!(
        eventually(10, || async {
            metric(&a3, "replication_queue_depth").await == 0.0
        })
        .await,
        "nothing left waiting"
    );
    assert_blob_store_consistent(&dest.root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_copies_what_no_event_announced() {
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let dest = Server::start();
    let root = dir.path().join("source");
    // Pushed while no rule existed: no event was ever queued.
    let early = Server::start_on(&root, &[]);
    let (_, old) = push_image(&c, &early, "prod/legacy", "1.0", "legacy").await;
    let (_, other) = push_image(&c, &early, "prod/legacy", "2.0", "legacy2").await;
    drop(early);
    let cfg = rule_config(dir.path(), &root, &dest.url(""), "    prefix: dr/\n");
    let a = Server::start_on(&root, &["--config", cfg.to_str().unwrap()]);
    until_replicated(
        &c,
        &dest.url(""),
        &[
            ("dr/prod/legacy", "1.0", Some(&old)),
            ("dr/prod/legacy", "2.0", Some(&other)),
        ],
        30,
    )
    .await;
    assert!(metric(&a, "replication_reconciled_manifests_total").await >= 2.0);
    // The next push goes by event, under the same prefix.
    let (_, new) = push_image(&c, &a, "prod/legacy", "3.0", "new").await;
    until_replicated(
        &c,
        &dest.url(""),
        &[("dr/prod/legacy", "3.0", Some(&new))],
        20,
    )
    .await;
    assert!(metric(&a, "replication_delivered_events_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_and_signatures_replicate_to_cncf_distribution() {
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let dist = Distribution::start(dir.path());
    let root = dir.path().join("source");
    let cfg = rule_config(dir.path(), &root, &dist.url(), "    reconcileEvery: 0s\n");
    let a = Server::start_on(&root, &["--config", cfg.to_str().unwrap()]);
    let (m, d) = push_image(&c, &a, "prod/web", "1.0", "web").await;
    // A signature pushed by digest, naming the image as its subject.
    let sig_layer = push_blob(&c, &a, "prod/web", b"signature").await;
    let empty = push_blob(&c, &a, "prod/web", b"{}").await;
    let sig = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/vnd.dev.cosign.artifact.sig.v1+json","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[{{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"{sig_layer}","size":9}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":{}}}}}"#,
        m.len()
    );
    let sig_digest = sha256(sig.as_bytes());
    let r = c
        .put(a.url(&format!("/v2/prod/web/manifests/{sig_digest}")))
        .header("content-type", OCI_MANIFEST)
        .body(sig)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    until_replicated(&c, &dist.url(), &[("prod/web", "1.0", Some(&d))], 20).await;
    assert!(
        eventually(20, || async {
            tag_at(&c, &dist.url(), "prod/web", &sig_digest)
                .await
                .is_some()
        })
        .await,
        "the signature, pushed by digest, reached Distribution"
    );
    needs::need("skopeo");
    let out = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!(
                "docker://{}/prod/web:1.0",
                dist.url().trim_start_matches("http://")
            ),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&out.stdout), d, "skopeo reads the same manifest");
}

#[test]
fn an_invalid_rule_refuses_to_start_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (extra_rule, field) in [
        (
            "  - name: Bad_Name\n    repositories: \"**\"\n    url: http://x\n",
            "replication[0].name",
        ),
        (
            "  - name: a\n    repositories: \"**\"\n    url: ftp://x\n",
            "replication[0].url",
        ),
        (
            "  - name: a\n    repositories: \"**\"\n    url: http://x\n    actions: [pull]\n",
            "replication[0].actions",
        ),
        (
            "  - name: a\n    repositories: \"**\"\n    url: http://x\n    reconcileEvery: soon\n",
            "replication[0].reconcileEvery",
        ),
        (
            "  - name: a\n    repositories: \"**\"\n    url: http://x\n    prefix: \"UP/\"\n",
            "replication[0].prefix",
        ),
        (
            "  - name: a\n    repositories: \"**\"\n    url: http://x\n  - name: a\n    repositories: \"x\"\n    url: http://y\n",
            "replication[1].name",
        ),
    ] {
        let cfg = dir.path().join("berth.yaml");
        std::fs::write(&cfg, format!("replication:\n{extra_rule}")).unwrap();
        let err = serve_refuses(dir.path(), &cfg);
        assert!(err.contains(field), "{field}: {err}");
    }
}
