//! Access control over HTTP against a real `berth serve`: the authorization matrix (users,
//! groups, anonymous, robots x repositories x pull/push/delete), bad credentials and tokens,
//! the token endpoint, robot accounts, failed-login limiting and the audit log.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const USERS: &[(&str, &str)] = &[
    ("alice", "alice-pw"),
    ("bob", "bob-pw"),
    ("carol", "carol-pw"),
    ("admin", "admin-pw"),
];

fn policy(dir: &Path, extra: &str) -> std::path::PathBuf {
    let htpasswd = dir.join("htpasswd");
    write_htpasswd(&htpasswd, USERS);
    let cfg = dir.join("berth.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
auth:
  htpasswd: {}
  admins: [admin]
  groups:
    team-a: [alice]
    team-b: [bob]
  access:
    - repository: "team-a/**"
      groups: [team-a]
      actions: [pull, push]
    - repository: "team-a/**"
      users: [alice]
      actions: [delete]
    - repository: "team-b/*"
      groups: [team-b]
      actions: [pull, push, delete]
    - repository: "public/**"
      users: [anonymous]
      actions: [pull]
    - repository: "public/**"
      users: [carol]
      actions: [push]
    - repository: "**"
      users: [admin]
      actions: [pull, push, delete]
{extra}
"#,
            htpasswd.display()
        ),
    )
    .unwrap();
    cfg
}

async fn code(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        v["errors"][0]["code"].as_str().unwrap_or("").to_owned(),
        challenge,
    )
}

fn send(
    c: &reqwest::Client,
    rb: reqwest::RequestBuilder,
    auth: Option<&str>,
) -> reqwest::RequestBuilder {
    let _ = c;
    match auth {
        Some(a) => rb.header("authorization", a),
        None => rb,
    }
}

const REPOS: &[&str] = &["team-a/app", "team-b/app", "public/lib", "other/x"];

/// The expected rights, written out by hand from the policy above.
fn expected(principal: &str, repo: &str) -> &'static str {
    match (principal, repo) {
        ("admin", _) => "pull,push,delete",
        ("alice", "team-a/app") => "pull,push,delete",
        ("bob", "team-b/app") => "pull,push,delete",
        ("carol", "public/lib") => "pull,push",
        ("robot-ci", "team-a/app") => "pull,push",
        ("robot-reader", "team-b/app") => "pull",
        (_, "public/lib") => "pull",
        _ => "",
    }
}

#[tokio::test]
async fn authorization_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let c = client();
    // Seed every repository while the registry is still open.
    {
        let s = Server::start_on(&root, &[]);
        for repo in REPOS {
            push_image(&c, &s, repo, "v1", repo).await;
            for p in [
                "anonymous",
                "alice",
                "bob",
                "carol",
                "admin",
                "robot-ci",
                "robot-reader",
            ] {
                push_image(&c, &s, repo, &format!("del-{p}"), repo).await;
            }
        }
    }
    let ci = berth_token(
        &root,
        &[
            "create",
            "--name",
            "ci",
            "--scope",
            "repository:team-a/*:pull,push",
        ],
    );
    let reader = berth_token(
        &root,
        &[
            "create",
            "--name",
            "reader",
            "--scope",
            "repository:team-b/*:pull",
            "--expires",
            "30d",
        ],
    );
    let cfg = policy(dir.path(), "");
    let s = Server::start_on(&root, &["--config", cfg.to_str().unwrap()]);
    let principals: Vec<(&str, Option<String>)> = vec![
        ("anonymous", None),
        ("alice", Some(basic("alice", "alice-pw"))),
        ("bob", Some(basic("bob", "bob-pw"))),
        ("carol", Some(basic("carol", "carol-pw"))),
        ("admin", Some(basic("admin", "admin-pw"))),
        ("robot-ci", Some(basic("robot$ci", ci.trim()))),
        ("robot-reader", Some(basic("robot$reader", reader.trim()))),
    ];
    let mut cells = 0;
    for (who, auth) in &principals {
        let auth = auth.as_deref();
        let denied = |got: &(u16, String, String), what: &str| {
            if auth.is_none() {
                assert_eq!(got.0, 401, "{who} {what}: {got:?}");
                assert_eq!(got.1, "UNAUTHORIZED", "{who} {what}");
                assert!(got.2.starts_with("Basic realm="), "{who} {what}: {got:?}");
            } else {
                assert_eq!(got.0, 403, "{who} {what}: {got:?}");
                assert_eq!(got.1, "DENIED", "{who} {what}");
            }
        };
        // /v2/: any valid credentials; anonymous is challenged (that is what `docker login` needs).
        let r = send(&c, c.get(s.url("/v2/")), auth).send().await.unwrap();
        assert_eq!(
            r.status(),
            if auth.is_some() { 200 } else { 401 },
            "{who} /v2/"
        );
        let mut visible = Vec::new();
        for repo in REPOS {
            let rights = expected(who, repo);
            let may = |a: &str| rights.split(',').any(|x| x == a);
            // pull: manifest, blob, tag list
            let r = send(&c, c.get(s.url(&format!("/v2/{repo}/manifests/v1"))), auth)
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap();
            if may("pull") {
                assert_eq!(r.status(), 200, "{who} pull {repo}");
                let m: Value = r.json().await.unwrap();
                let layer = m["layers"][0]["digest"].as_str().unwrap();
                let r = send(&c, c.get(s.url(&format!("/v2/{repo}/blobs/{layer}"))), auth)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{who} pull blob {repo}");
                let r = send(&c, c.get(s.url(&format!("/v2/{repo}/tags/list"))), auth)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{who} tags {repo}");
                visible.push(repo.to_string());
            } else {
                denied(&code(r).await, &format!("pull {repo}"));
                let r = send(&c, c.get(s.url(&format!("/v2/{repo}/tags/list"))), auth)
                    .send()
                    .await
                    .unwrap();
                denied(&code(r).await, &format!("tags {repo}"));
            }
            cells += 1;
            // push: a blob, then a manifest
            let data = format!("{who} pushes to {repo}");
            let d = sha256(data.as_bytes());
            let r = send(
                &c,
                c.post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}"))),
                auth,
            )
            .body(data.clone())
            .send()
            .await
            .unwrap();
            let m = image_manifest((&d, data.len()), &[(&d, data.len())], "");
            let put = send(
                &c,
                c.put(s.url(&format!("/v2/{repo}/manifests/pushed-{who}"))),
                auth,
            )
            .header("content-type", OCI_MANIFEST)
            .body(m)
            .send()
            .await
            .unwrap();
            if may("push") {
                assert_eq!(r.status(), 201, "{who} push blob {repo}");
                assert_eq!(put.status(), 201, "{who} push manifest {repo}");
            } else {
                denied(&code(r).await, &format!("push blob {repo}"));
                denied(&code(put).await, &format!("push manifest {repo}"));
                let r = send(
                    &c,
                    c.post(s.url(&format!("/v2/{repo}/blobs/uploads/"))),
                    auth,
                )
                .send()
                .await
                .unwrap();
                denied(&code(r).await, &format!("start upload {repo}"));
            }
            cells += 1;
            // delete
            let r = send(
                &c,
                c.delete(s.url(&format!("/v2/{repo}/manifests/del-{who}"))),
                auth,
            )
            .send()
            .await
            .unwrap();
            if may("delete") {
                assert_eq!(r.status(), 202, "{who} delete {repo}");
            } else {
                denied(&code(r).await, &format!("delete {repo}"));
            }
            cells += 1;
        }
        // The catalog lists exactly what the caller may pull.
        let r = send(&c, c.get(s.url("/v2/_catalog")), auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{who} catalog");
        let v: Value = r.json().await.unwrap();
        visible.sort();
        assert_eq!(v["repositories"], json!(visible), "{who} catalog");
    }
    assert_eq!(cells, 7 * 4 * 3);
    // Denied cells left nothing behind: a tag nobody was allowed to delete is still there.
    let v: Value = c
        .get(s.url("/v2/other/x/tags/list"))
        .header("authorization", basic("admin", "admin-pw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tags: Vec<&str> = v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tags.contains(&"del-alice") && !tags.contains(&"del-admin"),
        "{tags:?}"
    );
    assert!(!tags.contains(&"pushed-alice") && tags.contains(&"pushed-admin"));
}

#[tokio::test]
async fn bad_credentials_are_401_never_5xx() {
    let dir = tempfile::tempdir().unwrap();
    // Many failures from one address: lift the limit (it has its own test).
    let cfg = policy(dir.path(), "  maxFailedLogins: 1000\n");
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let c = client();
    let bad = [
        "Basic".to_owned(),
        "Basic ".to_owned(),
        "Basic !!!notbase64".to_owned(),
        "Basic bm9jb2xvbg==".to_owned(), // "nocolon"
        "Basic /w==".to_owned(),         // invalid UTF-8
        "Digest username=alice".to_owned(),
        "alice:alice-pw".to_owned(),
        "Bearer".to_owned(),
        "Bearer abc.def.ghi".to_owned(), // tokens are not on in this config
        basic("alice", "wrong"),
        basic("alice", ""),
        basic("nobody", "alice-pw"),
        basic("", ""),
        basic("robot$ci", "berth_0000"),
        basic("robot$../../etc", "x"),
    ];
    for h in &bad {
        for path in ["/v2/", "/v2/public/lib/manifests/v1", "/v2/_catalog"] {
            let r = c
                .get(s.url(path))
                .header("authorization", h)
                .send()
                .await
                .unwrap();
            let got = code(r).await;
            assert_eq!(got.0, 401, "{h:?} {path}: {got:?}");
            assert_eq!(got.1, "UNAUTHORIZED", "{h:?} {path}");
            assert!(got.2.starts_with("Basic realm="), "{h:?}: {got:?}");
        }
    }
    // Good credentials still work after all that.
    let r = c
        .get(s.url("/v2/"))
        .header("authorization", basic("alice", "alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn failed_logins_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = policy(
        dir.path(),
        "  maxFailedLogins: 3\n  failedLoginWindowSeconds: 2\n",
    );
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let c = client();
    let get = |auth: String| c.get(s.url("/v2/")).header("authorization", auth).send();
    for _ in 0..3 {
        assert_eq!(
            code(get(basic("alice", "nope")).await.unwrap()).await.0,
            401
        );
    }
    let r = get(basic("alice", "nope")).await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(code(r).await.1, "TOOMANYREQUESTS");
    // Even the right password waits: that is what stops guessing.
    assert_eq!(get(basic("alice", "alice-pw")).await.unwrap().status(), 429);
    // Anonymous requests carry no guess and are not limited.
    assert_eq!(
        c.get(s.url("/v2/public/lib/tags/list"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get(basic("alice", "alice-pw")).await.unwrap().status(), 200);
    // Failed logins are in the audit log.
    let fails: Vec<Value> = audit_lines_after(&s, |v| v["fields"]["event"] == "login")
        .into_iter()
        .filter(|v| v["fields"]["event"] == "login")
        .collect();
    assert_eq!(fails.len(), 3, "{fails:?}");
    assert_eq!(fails[0]["fields"]["who"], "alice");
    assert_eq!(fails[0]["fields"]["client"], "127.0.0.1");
    assert_eq!(fails[0]["fields"]["result"], "failure");
}

#[tokio::test]
async fn audit_log_records_push_pull_delete() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = policy(dir.path(), "");
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let c = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                basic("alice", "alice-pw").parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let (_, d) = push_image(&c, &s, "team-a/app", "v1", "audit").await;
    let r = c
        .get(s.url("/v2/team-a/app/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(s.url("/v2/team-b/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .delete(s.url(&format!("/v2/team-a/app/manifests/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let lines = audit_lines_after(&s, |v| v["fields"]["event"] == "delete");
    let find = |event: &str, repo: &str| -> Value {
        lines
            .iter()
            .find(|v| v["fields"]["event"] == event && v["fields"]["repository"] == repo)
            .unwrap_or_else(|| panic!("no {event} {repo} in {lines:?}"))["fields"]
            .clone()
    };
    let push = find("push", "team-a/app");
    assert_eq!(push["who"], "alice");
    assert_eq!(push["client"], "127.0.0.1");
    assert_eq!(push["reference"], "v1");
    assert_eq!(push["digest"], d.as_str());
    assert_eq!(push["result"], "success");
    let pull = find("pull", "team-a/app");
    assert_eq!(pull["digest"], d.as_str());
    assert_eq!(pull["status"], 200);
    let denied = find("pull", "team-b/app");
    assert_eq!(denied["result"], "failure");
    assert_eq!(denied["status"], 403);
    let del = find("delete", "team-a/app");
    assert_eq!(del["digest"], d.as_str());
    assert_eq!(del["result"], "success");
}

#[tokio::test]
async fn mounts_need_pull_on_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = policy(dir.path(), "");
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let c = client();
    let admin = basic("admin", "admin-pw");
    let carol = basic("carol", "carol-pw");
    let post =
        |auth: String, path: String| c.post(s.url(&path)).header("authorization", auth).send();
    // A blob only admin (and team-b) can read.
    let secret = b"team-b secret layer";
    let d = sha256(secret);
    let r = c
        .post(s.url(&format!("/v2/team-b/app/blobs/uploads/?digest={d}")))
        .header("authorization", &admin)
        .body(secret.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // carol may push to public/lib but not pull team-b/app: a new session, no blob.
    let r = post(
        carol.clone(),
        format!("/v2/public/lib/blobs/uploads/?mount={d}&from=team-b/app"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    // Automatic mount (no from) is off while auth is on.
    let r = post(
        carol.clone(),
        format!("/v2/public/lib/blobs/uploads/?mount={d}"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .get(s.url(&format!("/v2/public/lib/blobs/{d}")))
        .header("authorization", &carol)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the blob did not leak into public/lib");
    // admin may pull the source: the mount happens.
    let r = post(
        admin.clone(),
        format!("/v2/public/lib/blobs/uploads/?mount={d}&from=team-b/app"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
}

#[test]
fn start_up_validates_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    for (bad, expect) in [
        (
            "- repository: \"../etc\"\n    users: [a]\n    actions: [pull]",
            "'..' escapes",
        ),
        (
            "- repository: \"team/../../x\"\n    users: [a]\n    actions: [pull]",
            "'..' escapes",
        ),
        (
            "- repository: \"a\"\n    groups: [nope]\n    actions: [pull]",
            "unknown group",
        ),
        (
            "- repository: \"a\"\n    users: [a]\n    actions: [fly]",
            "invalid config file",
        ),
    ] {
        let cfg = dir.path().join("bad.yaml");
        let htpasswd = dir.path().join("htpasswd");
        write_htpasswd(&htpasswd, &[("a", "b")]);
        std::fs::write(
            &cfg,
            format!(
                "auth:\n  htpasswd: {}\n  access:\n  {bad}\n",
                htpasswd.display()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--addr", "127.0.0.1:0", "--root"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{bad}: {err}");
    }
    // A missing htpasswd file is a start-up error too, not an open registry.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--htpasswd",
            "/nonexistent/htpasswd",
            "--root",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("htpasswd"));
}

#[tokio::test]
async fn open_registry_warns_and_htpasswd_flag_turns_auth_on() {
    let s = Server::start();
    let c = client();
    push_image(&c, &s, "open/x", "v1", "open").await;
    let r = c
        .get(s.url("/v2/open/x/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(audit_lines(&s).is_empty(), "no audit lines without auth");
    let warned = s
        .logs
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("no authentication is configured"));
    assert!(warned);
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path().join("htpasswd");
    write_htpasswd(&h, &[("u", "p")]);
    let s = Server::start_with(&["--htpasswd", h.to_str().unwrap()]);
    assert!(
        !s.logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("no authentication is configured"))
    );
    assert_eq!(c.get(s.url("/v2/")).send().await.unwrap().status(), 401);
    let r = c
        .get(s.url("/v2/"))
        .header("authorization", basic("u", "p"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // No rules, as with Distribution's htpasswd: every signed-in user may do everything (said
    // at start-up), anonymous callers nothing.
    assert!(
        s.logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("auth.access has no rules") && l.contains("every signed-in user")),
        "the start-up log says what no rules mean"
    );
    push_image_as(&c, &s, &basic("u", "p"), "any/where", "v1").await;
    let r = c
        .get(s.url("/v2/any/where/manifests/v1"))
        .header("authorization", basic("u", "p"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let digest = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned();
    let r = c
        .delete(s.url(&format!("/v2/any/where/manifests/{digest}")))
        .header("authorization", basic("u", "p"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .get(s.url("/v2/any/where/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "anonymous callers get nothing");
    let r = c
        .get(s.url("/v2/any/where/tags/list"))
        .header("authorization", basic("u", "wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn robot_accounts_cli_admin_endpoint_revocation_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let cfg = policy(dir.path(), "");
    let secret = berth_token(
        &root,
        &[
            "create",
            "--name",
            "ci",
            "--scope",
            "repository:team-a/*:pull,push",
            "--expires",
            "30d",
        ],
    );
    let secret = secret.trim().to_owned();
    let listed = berth_token(&root, &["list"]);
    assert!(
        listed.contains("ci\trepository:team-a/*:pull,push"),
        "{listed}"
    );
    assert!(!listed.contains(&secret));
    // Bad input to the CLI is refused.
    for args in [
        &[
            "create",
            "--name",
            "Bad/Name",
            "--scope",
            "repository:a:pull",
        ][..],
        &["create", "--name", "x", "--scope", "repository:../a:pull"],
        &["create", "--name", "x", "--scope", "repository:a:fly"],
        &[
            "create",
            "--name",
            "x",
            "--scope",
            "repository:a:pull",
            "--expires",
            "soon",
        ],
        &["create", "--name", "ci", "--scope", "repository:a:pull"],
        &["revoke", "--name", "nobody"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("token")
            .args(args)
            .arg("--root")
            .arg(&root)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
    }
    let s = Server::start_on(&root, &["--config", cfg.to_str().unwrap()]);
    let c = client();
    let ci = basic("robot$ci", &secret);
    push_image_as(&c, &s, &ci, "team-a/app", "v1").await;
    // Admin endpoint: anonymous 401, non-admin 403, admin creates.
    let body = json!({"name": "deploy", "scopes": ["repository:team-a/**:pull"], "expires": "1h"});
    let r = c
        .post(s.url("/admin/robots"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await.0, 401);
    let r = c
        .post(s.url("/admin/robots"))
        .header("authorization", basic("alice", "alice-pw"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await.1, "DENIED");
    let r = c
        .post(s.url("/admin/robots"))
        .header("authorization", basic("robot$ci", &secret))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "robots are never admins");
    let admin = basic("admin", "admin-pw");
    let r = c
        .post(s.url("/admin/robots"))
        .header("authorization", &admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["username"], "robot$deploy");
    let deploy = basic("robot$deploy", created["secret"].as_str().unwrap());
    let r = c
        .post(s.url("/admin/robots"))
        .header("authorization", &admin)
        .json(&json!({"name": "x", "scopes": ["repository:..:pull"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(s.url("/admin/robots"))
        .header("authorization", &admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let v: Value = c
        .get(s.url("/admin/robots"))
        .header("authorization", &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = v["robots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ci", "deploy"]);
    assert!(!v.to_string().contains("secret"));
    let pull = |auth: String| {
        c.get(s.url("/v2/team-a/app/manifests/v1"))
            .header("accept", OCI_MANIFEST)
            .header("authorization", auth)
            .send()
    };
    assert_eq!(pull(deploy.clone()).await.unwrap().status(), 200);
    // deploy may only pull.
    let r = c
        .delete(s.url("/v2/team-a/app/manifests/v1"))
        .header("authorization", &deploy)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Revocation through the CLI while the server runs takes effect on the next request.
    assert_eq!(pull(ci.clone()).await.unwrap().status(), 200);
    berth_token(&root, &["revoke", "--name", "ci"]);
    let got = code(pull(ci.clone()).await.unwrap()).await;
    assert_eq!((got.0, got.1.as_str()), (401, "UNAUTHORIZED"));
    // ... and through the admin endpoint.
    let r = c
        .delete(s.url("/admin/robots/deploy"))
        .header("authorization", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(pull(deploy).await.unwrap().status(), 401);
    // Expiry: a robot that lives two seconds.
    let short = berth_token(
        &root,
        &[
            "create",
            "--name",
            "short",
            "--scope",
            "repository:team-a/**:pull",
            "--expires",
            "2s",
        ],
    );
    let short = basic("robot$short", short.trim());
    assert_eq!(pull(short.clone()).await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(pull(short).await.unwrap().status(), 401);
    assert!(berth_token(&root, &["list"]).contains("(expired)"));
}

async fn push_image_as(c: &reqwest::Client, s: &Server, auth: &str, repo: &str, tag: &str) {
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = format!("layer of {repo}");
    for b in [&config[..], layer.as_bytes()] {
        let r = c
            .post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(b))))
            .header("authorization", auth)
            .body(b.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let m = image_manifest(
        (&sha256(config), config.len()),
        &[(&sha256(layer.as_bytes()), layer.len())],
        "",
    );
    let r = c
        .put(s.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header("authorization", auth)
        .header("content-type", OCI_MANIFEST)
        .body(m)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}
