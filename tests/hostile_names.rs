//! Hostile repository names and patterns (issue 12, findings 6 and 8), against a real
//! `berth serve`: percent-encoded bytes in a name are NAME_INVALID (an encoded `/` must not
//! become a path separator behind a path-prefix ACL), and access-rule globs match in
//! polynomial time whatever the name.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

#[tokio::test]
async fn percent_encoded_bytes_in_names_are_name_invalid() {
    let s = Server::start();
    let c = client();
    push_image(&c, &s, "team-a/app", "v1", "x").await;
    for path in [
        "/v2/team-a%2fapp/manifests/v1",
        "/v2/team-a%2Fapp/tags/list",
        "/v2/team-a%2fapp/blobs/uploads/",
        "/v2/team%2da/app/manifests/v1",
        "/v2/team-a/app%2ex/manifests/v1",
        "/v2/%74eam-a/app/tags/list",
    ] {
        let r = c.get(s.url(path)).send().await.unwrap();
        let st = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(st, 400, "{path}: {body}");
        assert!(body.contains("NAME_INVALID"), "{path}: {body}");
    }
    // An encoded keyword is not the keyword.
    let r = c
        .get(s.url("/v2/team-a/app/manifest%73/v1"))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 200);
    // The reference may still carry an encoded ':' as clients send it.
    let (_, d) = push_image(&c, &s, "team-a/app", "v2", "y").await;
    let r = c
        .get(s.url(&format!(
            "/v2/team-a/app/manifests/{}",
            d.replace(':', "%3A")
        )))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn config(dir: &Path) -> PathBuf {
    let htpasswd = dir.join("htpasswd");
    write_htpasswd(&htpasswd, &[("alice", "alice-pw")]);
    let cfg = dir.join("berth.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
auth:
  htpasswd: {}
  access:
    - repository: "*-*-*-*-*-*-x"
      users: [alice]
      actions: [pull]
    - repository: "**/**/**/**/**/**/**/**/x"
      users: [alice]
      actions: [pull]
"#,
            htpasswd.display()
        ),
    )
    .unwrap();
    cfg
}

#[tokio::test]
async fn glob_rules_do_not_backtrack() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let c = client();
    let alice = basic("alice", "alice-pw");
    let flat = "a-".repeat(126) + "a";
    let deep = vec!["a"; 127].join("/");
    for name in [flat.as_str(), deep.as_str()] {
        let start = Instant::now();
        let r = c
            .get(s.url(&format!("/v2/{name}/tags/list")))
            .header("authorization", &alice)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("the request finished (the old matcher takes minutes)");
        let took = start.elapsed();
        assert_eq!(r.status(), 403, "{name}");
        // Linear matching takes microseconds; 5 s leaves room for a loaded machine.
        assert!(
            took < Duration::from_secs(5),
            "{took:?} for {} chars",
            name.len()
        );
    }
    // The rules still match what they should.
    let r = c
        .get(s.url("/v2/a-b-c-d-e-f-x/tags/list"))
        .header("authorization", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "allowed, and unknown");
}
