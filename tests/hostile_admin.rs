//! Hostile cases against administration and token scoping (issue 12, findings 1, 2 and 7),
//! against a real `berth serve`: a token narrowed to one repository must not carry its
//! holder's admin rights, a robot can never create robots, a re-created robot's old tokens
//! die with the old record, and the token realm is never taken from the request's Host.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};

fn config(dir: &Path, extra: &str) -> PathBuf {
    let htpasswd = dir.join("htpasswd");
    write_htpasswd(&htpasswd, &[("admin", "admin-pw"), ("alice", "alice-pw")]);
    let cfg = dir.join("berth.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
auth:
  htpasswd: {}
  admins: [admin]
  maxFailedLogins: 1000
{extra}
  access:
    - repository: "**"
      users: [admin]
      actions: [pull, push, delete]
  token:
    service: berth-test
"#,
            htpasswd.display()
        ),
    )
    .unwrap();
    cfg
}

async fn token(c: &reqwest::Client, s: &Server, auth: &str, scope: &str) -> String {
    let r = c
        .get(s.url(&format!("/token?service=berth-test&scope={scope}")))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["token"].as_str().unwrap().to_owned()
}

async fn create_robot(c: &reqwest::Client, s: &Server, auth: &str, name: &str) -> (u16, Value) {
    let r = c
        .post(s.url("/admin/robots"))
        .header("authorization", auth)
        .json(&json!({"name": name, "scopes": ["repository:**:pull,push,delete"]}))
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_pull_token_of_an_admin_cannot_administer() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let c = client();
    let pull = token(
        &c,
        &s,
        &basic("admin", "admin-pw"),
        "repository:one/repo:pull",
    )
    .await;
    let (st, _) = create_robot(&c, &s, &format!("Bearer {pull}"), "evil").await;
    assert_eq!(st, 403, "a pull-only token created a robot");
    let r = c
        .get(s.url("/admin/robots"))
        .header("authorization", format!("Bearer {pull}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A token asked for administration works, for an admin only.
    let adm = token(&c, &s, &basic("admin", "admin-pw"), "registry:admin:*").await;
    let (st, _) = create_robot(&c, &s, &format!("Bearer {adm}"), "ok").await;
    assert_eq!(st, 201);
    let alice = token(&c, &s, &basic("alice", "alice-pw"), "registry:admin:*").await;
    assert_eq!(
        create_robot(&c, &s, &format!("Bearer {alice}"), "no")
            .await
            .0,
        403
    );
    // And the admin's password, as before.
    assert_eq!(
        create_robot(&c, &s, &basic("admin", "admin-pw"), "pw")
            .await
            .0,
        201
    );
}

#[tokio::test]
async fn a_robot_can_never_create_robots() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let c = client();
    let (st, v) = create_robot(&c, &s, &basic("admin", "admin-pw"), "ci").await;
    assert_eq!(st, 201);
    let robot = basic("robot$ci", v["secret"].as_str().unwrap());
    assert_eq!(create_robot(&c, &s, &robot, "child").await.0, 403);
    let t = token(&c, &s, &robot, "registry:admin:*").await;
    assert_eq!(
        create_robot(&c, &s, &format!("Bearer {t}"), "child")
            .await
            .0,
        403
    );
}

#[tokio::test]
async fn a_recreated_robots_old_tokens_are_dead() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let c = client();
    let admin = basic("admin", "admin-pw");
    let (_, v) = create_robot(&c, &s, &admin, "ci").await;
    let robot = basic("robot$ci", v["secret"].as_str().unwrap());
    let old = token(&c, &s, &robot, "repository:team/app:pull,push").await;
    let r = c
        .delete(s.url("/admin/robots/ci"))
        .header("authorization", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (st, _) = create_robot(&c, &s, &admin, "ci").await;
    assert_eq!(st, 201);
    let r = c
        .get(s.url("/v2/team/app/tags/list"))
        .header("authorization", format!("Bearer {old}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the old record's token still works");
}

fn realm_of(h: &str) -> String {
    let start = h.find("realm=\"").unwrap() + 7;
    h[start..start + h[start..].find('"').unwrap()].to_owned()
}

async fn challenge(c: &reqwest::Client, s: &Server, headers: &[(&str, &str)]) -> String {
    let mut rb = c.get(s.url("/v2/"));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), 401);
    realm_of(r.headers()["www-authenticate"].to_str().unwrap())
}

#[tokio::test]
async fn the_realm_is_never_the_clients_host_header() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let c = client();
    let realm = challenge(&c, &s, &[("host", "evil.example")]).await;
    assert_eq!(realm, s.url("/token"), "Host reflected into the realm");
    let realm = challenge(
        &c,
        &s,
        &[
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(
        realm,
        s.url("/token"),
        "untrusted forwarded headers believed"
    );
}

#[tokio::test]
async fn the_realm_follows_configuration_and_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "  trustedProxies: [127.0.0.1/32]");
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let c = client();
    let realm = challenge(
        &c,
        &s,
        &[
            ("x-forwarded-host", "registry.example.com"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(realm, "https://registry.example.com/token");
    let cfg = dir.path().join("realm.yaml");
    let text = std::fs::read_to_string(dir.path().join("berth.yaml"))
        .unwrap()
        .replace(
            "service: berth-test",
            "service: berth-test\n    realm: https://r.example/token",
        );
    std::fs::write(&cfg, text).unwrap();
    drop(s);
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let realm = challenge(&c, &s, &[("host", "evil.example")]).await;
    assert_eq!(realm, "https://r.example/token");
}
