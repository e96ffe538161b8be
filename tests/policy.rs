//! Registry policy against a real `berth serve`: immutable tags through the Docker CLI and
//! gc's retention, webhooks to a receiver in the test that fails, hangs, redirects forever
//! and recovers (with the server killed while events wait), and bad policy refusing to
//! start with one line naming the field.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::*;
use serde_json::Value;

fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(args)
        .output()
        .expect("run docker");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Builds a one-file image `tag` whose content is `text`.
fn build(tag: &str, text: &str) {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("f"), text).unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\nCOPY f /f\n").unwrap();
    let (ok, out) = docker(&["build", "-q", "-t", tag, ctx.path().to_str().unwrap()]);
    assert!(ok, "docker build: {out}");
}

fn config(dir: &std::path::Path, policy: &str) -> std::path::PathBuf {
    let cfg = dir.join("berth.yaml");
    std::fs::write(&cfg, format!("policy:\n{policy}")).unwrap();
    cfg
}

async fn status_of(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn immutable_tags_hold_against_docker_deletes_and_retention() {
    needs::need("docker");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "  immutableTags:\n    - repository: \"prod/**\"\n      tags: \"^v[0-9]\"\ngc:\n  retention:\n    - repositories: \"prod/**\"\n      keepLast: 1\n",
    );
    let root = dir.path().join("data");
    let s = Server::start_on(&root, &["--config", cfg.to_str().unwrap()]);
    let c = client();
    let n = format!("{:016x}", rand::random::<u64>());
    let tag = format!("{}/prod/app:v1", s.host());
    let cleanup = [tag.clone()];
    build(&tag, &format!("first {n}"));
    let (ok, out) = docker(&["push", &tag]);
    assert!(ok, "first push: {out}");
    // A CI re-run pushes the same image again: that must pass.
    let (ok, out) = docker(&["push", &tag]);
    assert!(ok, "the same digest again: {out}");
    let (_, first) = docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .RepoDigests 0}}",
        &tag,
    ]);
    let first = first.trim().rsplit('@').next().unwrap().to_owned();

    build(&tag, &format!("second {n}"));
    let (ok, out) = docker(&["push", &tag]);
    assert!(
        !ok,
        "another image under an immutable tag was accepted: {out}"
    );
    assert!(out.contains("denied"), "{out}");
    assert!(
        out.contains("policy.immutableTags[0]"),
        "the refusal names the rule: {out}"
    );
    let (st, v) = status_of(c.head(s.url("/v2/prod/app/manifests/v1"))).await;
    assert_eq!(st, 200, "{v}");
    let r = c.get(s.url("/v2/prod/app/manifests/v1")).header("accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json").send().await.unwrap();
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        first
    );

    // A tag the rule does not cover moves freely; the immutable one cannot be deleted, nor
    // the manifest it names.
    push_image(&c, &s, "prod/app", "latest", "a").await;
    push_image(&c, &s, "prod/app", "latest", "b").await;
    let (st, v) = status_of(c.delete(s.url("/v2/prod/app/manifests/v1"))).await;
    assert_eq!(
        (st, v["errors"][0]["code"].as_str()),
        (403, Some("DENIED")),
        "{v}"
    );
    let (st, v) = status_of(c.delete(s.url(&format!("/v2/prod/app/manifests/{first}")))).await;
    assert_eq!(
        (st, v["errors"][0]["code"].as_str()),
        (403, Some("DENIED")),
        "{v}"
    );
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("tagged v1"),
        "{v}"
    );
    // Outside prod/** nothing is immutable.
    push_image(&c, &s, "dev/app", "v1", "a").await;
    push_image(&c, &s, "dev/app", "v1", "b").await;
    let (st, _) = status_of(c.delete(s.url("/v2/dev/app/manifests/v1"))).await;
    assert_eq!(st, 202);

    // Retention keeps the newest tag and would remove the rest: never an immutable one.
    push_image(&c, &s, "prod/app", "v2", "c").await;
    push_image(&c, &s, "prod/app", "nightly", "d").await;
    std::thread::sleep(Duration::from_millis(20));
    push_image(&c, &s, "prod/app", "newest", "e").await;
    // Past gc's clock margin, so the tags are not "just moved".
    std::thread::sleep(Duration::from_millis(200));
    gc_json(&root, &["--grace", "0s", "--config", cfg.to_str().unwrap()]);
    let tags = get_json(&s.url("/v2/prod/app/tags/list")).await;
    let mut tags: Vec<&str> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tags.sort();
    assert_eq!(
        tags,
        ["newest", "v1", "v2"],
        "retention removed latest and nightly only"
    );
    for t in cleanup {
        let _ = docker(&["rmi", "-f", &t]);
    }
}

/// What the receiver does with a request.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Fail,
    Hang,
    Ok,
}

#[derive(Default)]
struct Received {
    bodies: Vec<(String, Value)>,
    attempts: usize,
}

struct Receiver {
    url: String,
    mode: Arc<Mutex<Mode>>,
    got: Arc<Mutex<Received>>,
}

/// A webhook receiver on loopback: `/hook` answers by mode, `/loop` redirects to itself.
async fn receiver(secret: &'static [u8]) -> Receiver {
    let mode = Arc::new(Mutex::new(Mode::Fail));
    let got = Arc::new(Mutex::new(Received::default()));
    let (m, g) = (mode.clone(), got.clone());
    let hook = move |headers: HeaderMap, body: Bytes| {
        let (m, g) = (m.clone(), g.clone());
        async move {
            g.lock().unwrap().attempts += 1;
            let mode = *m.lock().unwrap();
            match mode {
                Mode::Fail => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                Mode::Hang => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return StatusCode::OK.into_response();
                }
                Mode::Ok => {}
            }
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
            let sig = headers["x-berth-signature-256"].to_str().unwrap();
            let sig = hex::decode(sig.strip_prefix("sha256=").unwrap()).unwrap();
            assert!(
                ring::hmac::verify(&key, &body, &sig).is_ok(),
                "HMAC must verify"
            );
            let ct = headers["content-type"].to_str().unwrap().to_owned();
            g.lock()
                .unwrap()
                .bodies
                .push((ct, serde_json::from_slice(&body).unwrap()));
            StatusCode::OK.into_response()
        }
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .route(
            "/loop",
            axum::routing::post(|| async { axum::response::Redirect::temporary("/loop") }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    Receiver { url, mode, got }
}

fn distribution_events(got: &Received) -> Vec<Value> {
    got.bodies
        .iter()
        .filter(|(ct, _)| ct == "application/vnd.docker.distribution.events.v1+json")
        .flat_map(|(_, b)| b["events"].as_array().unwrap().clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_wait_out_failing_hanging_and_looping_receivers_and_a_kill() {
    const SECRET: &[u8] = b"hook-secret";
    let rx = receiver(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), b"hook-secret\n").unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "  notifications:
    - name: main
      url: {url}/hook
      secretFile: {secret}
      timeout: 1s
    - name: ce
      url: {url}/hook
      secretFile: {secret}
      format: cloudevents
      actions: [pull]
      repositories: \"team/**\"
    - name: looping
      url: {url}/loop
",
            url = rx.url,
            secret = dir.path().join("secret").display()
        ),
    );
    let root = dir.path().join("data");
    let args = ["--config", cfg.to_str().unwrap()];
    let mut s = Server::start_on(&root, &args);
    let c = client();

    // The receiver fails, then hangs: pushes are answered at once all the same.
    let mut digests = Vec::new();
    for i in 0..6 {
        if i == 3 {
            *rx.mode.lock().unwrap() = Mode::Hang;
        }
        let started = Instant::now();
        let (_, d) = push_image(&c, &s, "team/app", &format!("v{i}"), &format!("s{i}")).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "push {i} waited on a webhook"
        );
        digests.push(d);
    }
    assert!(wait_until(Duration::from_secs(10), || rx
        .got
        .lock()
        .unwrap()
        .attempts
        >= 2));
    // Killed while every event waits; a new process delivers them.
    s.kill9();
    *rx.mode.lock().unwrap() = Mode::Ok;
    let s = Server::start_on(&root, &args);
    let r = c
        .get(s.url("/v2/team/app/manifests/v5"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (st, _) = status_of(c.delete(s.url("/v2/team/app/manifests/v0"))).await;
    assert_eq!(st, 202);
    assert!(
        wait_until(Duration::from_secs(60), || distribution_events(
            &rx.got.lock().unwrap()
        )
        .len()
            >= 7),
        "events delivered: {:?}",
        rx.got.lock().unwrap().bodies
    );
    let got = std::mem::take(&mut *rx.got.lock().unwrap());
    let events = distribution_events(&got);
    let pushes: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["action"] == "push")
        .map(|e| {
            (
                e["target"]["tag"].as_str().unwrap(),
                e["target"]["digest"].as_str().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, &str)> = (0..6)
        .map(|i| (format!("v{i}"), digests[i].as_str()))
        .collect();
    let want: Vec<(&str, &str)> = want.iter().map(|(t, d)| (t.as_str(), *d)).collect();
    assert_eq!(pushes, want, "every push once, in order, across the kill");
    let first = &events[0];
    assert_eq!(first["target"]["repository"], "team/app");
    assert_eq!(first["target"]["mediaType"], OCI_MANIFEST);
    assert!(first["target"]["size"].as_u64().unwrap() > 100);
    assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(first["request"]["method"], "PUT");
    assert_eq!(first["request"]["addr"], "127.0.0.1");
    let delete = events
        .iter()
        .find(|e| e["action"] == "delete")
        .expect("the delete");
    assert_eq!(delete["target"]["tag"], "v0");
    // The pull went to the CloudEvents endpoint only (the main one takes push and delete).
    assert!(!events.iter().any(|e| e["action"] == "pull"));
    let ce: Vec<&Value> = got
        .bodies
        .iter()
        .filter(|(ct, _)| ct == "application/cloudevents-batch+json")
        .flat_map(|(_, b)| b.as_array().unwrap())
        .collect();
    assert_eq!(ce.len(), 1, "{ce:?}");
    assert_eq!(ce[0]["specversion"], "1.0");
    assert_eq!(ce[0]["type"], "dev.berth.registry.pull");
    assert_eq!(ce[0]["subject"], "team/app:v5");
    assert_eq!(ce[0]["data"]["digest"], digests[5].as_str());

    // The redirect loop never delivers; its failures are counted and it holds up nobody.
    let metrics = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .unwrap_or(0.0)
    };
    assert!(
        line("berth_notification_failures_total{endpoint=\"looping\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        line("berth_notification_queue_depth{endpoint=\"looping\"}") >= 7.0,
        "{metrics}"
    );
    assert_eq!(
        line("berth_notification_queue_depth{endpoint=\"main\"}"),
        0.0,
        "{metrics}"
    );
}

#[test]
fn bad_policy_refuses_to_start_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (policy, field) in [
        (
            "  immutableTags:\n    - repository: \"prod/**\"\n      tags: \"v[\"\n",
            "policy.immutableTags[0].tags",
        ),
        (
            "  immutableTags:\n    - repository: \"../x\"\n      tags: \"v\"\n",
            "policy.immutableTags[0].repository",
        ),
        (
            "  notifications:\n    - url: ftp://x\n",
            "policy.notifications[0].url",
        ),
        (
            "  notifications:\n    - url: http://x\n      pullSample: 2\n",
            "policy.notifications[0].pullSample",
        ),
        (
            "  notifications:\n    - url: http://x\n      timeout: soon\n",
            "policy.notifications[0].timeout",
        ),
        (
            "  notifications:\n    - url: http://x\n      secretFile: /nonexistent/s\n",
            "policy.notifications[0].secretFile",
        ),
        (
            "  notifications:\n    - url: http://x\n    - url: http://x\n",
            "policy.notifications[1].name",
        ),
    ] {
        let cfg = config(dir.path(), policy);
        let err = serve_refuses(dir.path(), &cfg);
        assert!(err.contains(field), "{field}: {err}");
    }
}

#[tokio::test]
async fn an_open_registry_audits_as_anonymous_when_asked() {
    let c = client();
    let quiet = Server::start();
    push_image(&c, &quiet, "team/app", "v1", "q").await;
    assert!(
        audit_lines(&quiet).is_empty(),
        "an open registry audits nothing by default"
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "  auditAnonymous: true\n");
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    // A chunked upload (POST, PATCH, PUT), a monolithic one, a mount, pulls.
    let layer = noise(100_000, 7);
    let r = c
        .post(s.url("/v2/team/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let at = r.headers()["location"].to_str().unwrap().to_owned();
    let at = if at.starts_with('/') { s.url(&at) } else { at };
    let r = c.patch(&at).body(layer.clone()).send().await.unwrap();
    let at = r.headers()["location"].to_str().unwrap().to_owned();
    let at = if at.starts_with('/') { s.url(&at) } else { at };
    let sep = if at.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{at}{sep}digest={}", sha256(&layer)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (_, d) = push_image(&c, &s, "team/app", "v1", "a").await;
    let r = c
        .post(s.url(&format!(
            "/v2/team/other/blobs/uploads/?mount={}&from=team/app",
            sha256(&layer)
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .get(s.url(&format!("/v2/team/app/blobs/{}", sha256(&layer))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), layer.len());
    let r = c
        .get(s.url("/v2/team/app/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let lines = audit_lines_after(&s, |v| v["fields"]["event"] == "pull");
    let find = |event: &str, digest: &str| {
        lines
            .iter()
            .map(|v| &v["fields"])
            .find(|f| f["event"] == event && f["digest"] == digest)
            .unwrap_or_else(|| panic!("no {event} of {digest} in {lines:?}"))
            .clone()
    };
    let layer_d = sha256(&layer);
    for event in ["blob-push", "blob-mount", "blob-pull"] {
        let f = find(event, &layer_d);
        assert_eq!(f["who"], "anonymous", "{f}");
        assert_eq!(f["bytes"], layer.len() as u64, "{f}");
        assert_eq!(f["client"], "127.0.0.1", "{f}");
    }
    assert_eq!(find("blob-mount", &layer_d)["repository"], "team/other");
    assert_eq!(find("push", &d)["reference"], "v1");
    assert_eq!(find("pull", &d)["status"], 200);
    // Opening a session stores nothing: no line for it.
    let opened = lines
        .iter()
        .filter(|v| v["fields"]["event"] == "blob-push")
        .count();
    assert_eq!(
        opened, 3,
        "the chunked layer, and the image's config and layer: {lines:?}"
    );
}

/// The value of one metric line (`name{labels}`), 0 when absent.
async fn metric(c: &reqwest::Client, s: &Server, series: &str) -> f64 {
    let text = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A monolithic blob upload: its status and error message.
async fn upload(c: &reqwest::Client, s: &Server, repo: &str, bytes: &[u8]) -> (u16, String) {
    let r = c
        .post(s.url(&format!(
            "/v2/{repo}/blobs/uploads/?digest={}",
            sha256(bytes)
        )))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    status_and_message(r).await
}

#[tokio::test]
async fn quotas_refuse_past_the_budget_count_shared_blobs_once_and_free_after_gc() {
    needs::need("skopeo");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "  quotas:\n    - repository: \"team-a/**\"\n      maxBytes: 300000\n      warnAt: 0.8\n    - repository: \"tiny\"\n      maxBytes: 1Ki\n",
    );
    let root = dir.path().join("data");
    let args = ["--config", cfg.to_str().unwrap()];
    let a = Server::start_on(&root, &args);
    let b = Server::start_on(&root, &args); // a second replica on the same volume
    let c = client();
    let used = "berth_quota_used_bytes{quota=\"team-a/**\"}";
    let base = noise(100_000, 1);
    let config_blob = br#"{"architecture":"amd64","os":"linux"}"#;
    push_image_of(&c, &a, "team-a/one", "v1", config_blob, &[&base]).await;
    let after_one = metric(&c, &a, used).await;
    assert!((100_000.0..101_500.0).contains(&after_one), "{after_one}");
    // The same image in another repository of the budget (through the other replica) adds
    // nothing: each blob counts once.
    push_image_of(&c, &b, "team-a/two", "v1", config_blob, &[&base]).await;
    // (A gauge moves when its replica admits something: ten bytes through a.)
    assert_eq!(upload(&c, &a, "team-a/one", b"ten bytes!").await.0, 201);
    assert_eq!(metric(&c, &a, used).await, after_one + 10.0);

    // 150 kB more passes the warning threshold (240 kB) but not the limit.
    let big = noise(150_000, 2);
    push_image_of(&c, &b, "team-a/three", "v1", config_blob, &[&big]).await;
    let after_three = metric(&c, &b, used).await;
    assert!(
        after_three > 250_000.0,
        "b's count includes a's pushes: {after_three}"
    );
    assert_eq!(
        metric(&c, &b, "berth_quota_warning{quota=\"team-a/**\"}").await,
        1.0
    );

    // 100 kB more would pass 300 kB: refused, naming the rule, the usage and the limit, on
    // either replica; elsewhere nothing is limited.
    let more = noise(100_000, 3);
    for s in [&a, &b] {
        let (st, msg) = upload(&c, s, "team-a/four", &more).await;
        assert_eq!(st, 403, "{msg}");
        assert!(
            msg.contains("quota policy.quotas[0] (team-a/**) exceeded"),
            "{msg}"
        );
        assert!(msg.contains("of 300000 bytes used"), "{msg}");
    }
    assert_eq!(upload(&c, &a, "dev/x", &noise(1_000_000, 4)).await.0, 201);
    // A budget filled to the byte takes no new upload session at all.
    assert_eq!(upload(&c, &a, "tiny", &noise(1024, 9)).await.0, 201);
    let r = c
        .post(a.url("/v2/tiny/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Declared up front, a monolithic upload that cannot fit is refused before its body.
    let r = c
        .post(a.url(&format!(
            "/v2/team-a/four/blobs/uploads/?digest={}",
            sha256(&more)
        )))
        .header("content-length", more.len())
        .body(more.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A mount of a blob the budget lacks is refused too; of one it has, free.
    let r = c
        .post(a.url(&format!(
            "/v2/team-a/five/blobs/uploads/?mount={}&from=dev/x",
            sha256(&noise(1_000_000, 4))
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(a.url(&format!(
            "/v2/team-a/five/blobs/uploads/?mount={}&from=team-a/one",
            sha256(&base)
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // skopeo copying an image that does not fit is refused with the quota's words.
    let src = Server::start();
    push_image_of(
        &c,
        &src,
        "big/img",
        "v1",
        config_blob,
        // Random, so that skopeo's compression of an uncompressed layer cannot shrink it.
        &[&(0..200_000)
            .map(|_| rand::random::<u8>())
            .collect::<Vec<u8>>()],
    )
    .await;
    let out = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
        .arg(format!("docker://{}/big/img:v1", src.host()))
        .arg(format!("docker://{}/team-a/copied:v1", a.host()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "skopeo copy into a full quota succeeded: {err}; used {}",
        metric(&c, &a, used).await
    );
    assert!(err.contains("denied") && err.contains("quota"), "{err}");

    // Deleting frees nothing until gc; after gc usage is exact and the push fits.
    let r = c
        .get(a.url("/v2/team-a/three/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    let three = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned();
    let r = c
        .delete(a.url(&format!("/v2/team-a/three/manifests/{three}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(upload(&c, &a, "team-a/four", &more).await.0, 403);
    std::thread::sleep(Duration::from_millis(200));
    let report = gc_json(&root, &["--grace", "0s", "--config", cfg.to_str().unwrap()]);
    assert!(report["linksRemoved"].as_u64().unwrap() >= 1, "{report}");
    // Left: the base layer, the config and the manifests of one, two and five (base only).
    let one_manifest = c
        .get(a.url("/v2/team-a/one/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len() as u64;
    let exact = (base.len() + config_blob.len()) as u64 + one_manifest;
    let (st, msg) = upload(&c, &b, "team-a/four", &more).await;
    assert_eq!(st, 201, "{msg}");
    // The store's count is exact: base + config + the one manifest both repositories share,
    // + the new 100 kB.
    let want = (exact + more.len() as u64) as f64;
    let mut seen = 0.0;
    for _ in 0..100 {
        seen = metric(&c, &b, used).await;
        if seen == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(seen, want, "exact usage after gc");
}

/// Two replicas on one store, each pushing a different manifest under the same new immutable
/// tag at the same instant: one wins, the other is refused, and the tag stays the winner's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_pushes_of_an_immutable_tag_on_two_replicas_cannot_both_pass() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "  immutableTags:\n    - repository: \"prod/**\"\n      tags: \"^v\"\n",
    );
    let root = dir.path().join("data");
    let args = ["--config", cfg.to_str().unwrap()];
    let (a, b) = (
        Server::start_on(&root, &args),
        Server::start_on(&root, &args),
    );
    let c = client();
    let layer = push_blob(&c, &a, "prod/app", b"the one layer").await;
    let manifest = |seed: String| {
        let (c, a, layer) = (&c, &a, &layer);
        async move {
            let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#);
            let cd = push_blob(c, a, "prod/app", config.as_bytes()).await;
            image_manifest((&cd, config.len()), &[(layer, 13)], "")
        }
    };
    let put = |s: &Server, tag: String, m: String| {
        let url = s.url(&format!("/v2/prod/app/manifests/{tag}"));
        let c = c.clone();
        async move {
            let r = c
                .put(url)
                .header("content-type", OCI_MANIFEST)
                .body(m)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    for i in 0..10 {
        let tag = format!("v{i}");
        let (ma, mb) = (
            manifest(format!("a{i}")).await,
            manifest(format!("b{i}")).await,
        );
        let (sa, sb) = tokio::join!(
            put(&a, tag.clone(), ma.clone()),
            put(&b, tag.clone(), mb.clone())
        );
        let mut got = [sa, sb];
        got.sort();
        assert_eq!(
            got,
            [201, 403],
            "round {i}: both first pushes of {tag} passed"
        );
        let winner = if sa == 201 { &ma } else { &mb };
        let r = c
            .head(a.url(&format!("/v2/prod/app/manifests/{tag}")))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers()["docker-content-digest"].to_str().unwrap(),
            sha256(winner.as_bytes()),
            "round {i}: the tag is the winner's"
        );
    }
}
