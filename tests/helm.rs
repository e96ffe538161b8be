//! Helm charts through the OCI protocol against a running `berth serve`: Helm v4 itself (PyPI's
//! helm-python-sdk, driven by tests/helm/helm.py) packages charts/berth, pushes it, lists its
//! versions and pulls it back byte for byte, anonymously and after a login with token auth.

mod common;

use std::path::Path;

use common::helm::helm;
use common::*;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn chart_version() -> String {
    let chart: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("charts/berth/Chart.yaml")).unwrap(),
    )
    .unwrap();
    chart["version"].as_str().unwrap().to_owned()
}

/// Pushes charts/berth to `oci://host/charts`, checks what the registry stored, pulls it back.
async fn push_and_pull(s: &Server, creds: &[&str]) {
    let remote = format!("oci://{}/charts", s.host());
    let version = chart_version();
    let pushed = helm(&[&["push", "charts/berth", &remote][..], creds].concat())
        .unwrap_or_else(|e| panic!("helm push: {e}"));
    let archive_digest = pushed["archiveDigest"].as_str().unwrap().to_owned();

    // What Helm pushed is a Helm chart manifest whose one layer is the archive.
    let mut rb = client()
        .get(s.url(&format!("/v2/charts/berth/manifests/{version}")))
        .header("accept", "application/vnd.oci.image.manifest.v1+json");
    if let [user, password] = creds {
        rb = rb.header("authorization", basic(user, password));
    }
    let m: Value = rb.send().await.unwrap().json().await.unwrap();
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.cncf.helm.config.v1+json"
    );
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
    );
    assert_eq!(m["layers"][0]["digest"], archive_digest.as_str());

    let chart_ref = format!("{remote}/berth");
    let tags = helm(&[&["tags", &chart_ref][..], creds].concat()).unwrap();
    assert_eq!(tags, serde_json::json!([version]));

    let dest = tempfile::tempdir().unwrap();
    helm(
        &[
            &["pull", &chart_ref, &version, dest.path().to_str().unwrap()][..],
            creds,
        ]
        .concat(),
    )
    .unwrap_or_else(|e| panic!("helm pull: {e}"));
    let got = std::fs::read(dest.path().join(format!("berth-{version}.tgz"))).unwrap();
    assert_eq!(
        sha256(&got),
        archive_digest,
        "the pulled archive is the pushed one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_pushes_lists_and_pulls_a_chart() {
    let s = Server::start();
    push_and_pull(&s, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_signs_in_with_token_auth_and_is_refused_without_the_right() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd, &[("ci", "ci-pw"), ("reader", "reader-pw")]);
    let cfg = dir.path().join("berth.yaml");
    std::fs::write(
        &cfg,
        format!(
            "auth:\n  htpasswd: {}\n  token: {{}}\n  access:\n    - repository: \"charts/**\"\n      users: [ci]\n      actions: [pull, push]\n    - repository: \"charts/**\"\n      users: [reader]\n      actions: [pull]\n",
            htpasswd.display()
        ),
    )
    .unwrap();
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let remote = format!("oci://{}/charts", s.host());

    let e = helm(&["push", "charts/berth", &remote]).expect_err("an anonymous push");
    assert!(
        e.contains("401") || e.to_lowercase().contains("unauthorized"),
        "{e}"
    );
    let e = helm(&["push", "charts/berth", &remote, "ci", "wrong"]).expect_err("a wrong password");
    assert!(
        e.to_lowercase().contains("unauthorized") || e.contains("401"),
        "{e}"
    );

    push_and_pull(&s, &["ci", "ci-pw"]).await;

    let e = helm(&["push", "charts/berth", &remote, "reader", "reader-pw"])
        .expect_err("a reader's push");
    assert!(
        e.to_lowercase().contains("denied") || e.contains("403"),
        "the refusal says why: {e}"
    );
}
