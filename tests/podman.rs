//! podman and buildah (Debian's packages) against a running `berth serve`: build a FROM-scratch
//! image offline, push it in both manifest formats, pull it back into a clean store and compare
//! the layers byte for byte; then `podman login` with token auth and push where the user may,
//! refused where not. These tests fail, never skip, when podman or buildah is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

/// podman/buildah with a private image store, so parallel tests and the host's images never
/// meet, and a private auth file.
struct Tool {
    program: &'static str,
    dir: tempfile::TempDir,
}

impl Tool {
    fn new(program: &'static str) -> Tool {
        common::needs::need(program);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("auth.json"), "{}").unwrap();
        Tool { program, dir }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.program);
        c.arg("--root")
            .arg(self.store())
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("REGISTRY_AUTH_FILE", self.dir.path().join("auth.json"))
            .stdin(Stdio::null());
        c
    }

    /// Runs and returns (success, stdout + stderr).
    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.program));
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.run(args);
        assert!(ok, "{} {args:?} failed: {out}", self.program);
        out
    }
}

/// A build context: a FROM-scratch Containerfile copying two files, one of them 3 MiB of
/// incompressible bytes so the layer is more than a token.
fn context(dir: &Path) -> Vec<u8> {
    let payload: Vec<u8> = (0..3 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("hello.txt"), b"hello from berth\n").unwrap();
    std::fs::write(dir.join("payload.bin"), &payload).unwrap();
    std::fs::write(
        dir.join("Containerfile"),
        "FROM scratch\nCOPY hello.txt payload.bin /\nLABEL org.opencontainers.image.title=hello\n",
    )
    .unwrap();
    payload
}

async fn manifest(s: &Server, repo: &str, tag: &str, auth: Option<&str>) -> (String, Value) {
    let mut rb = client()
        .get(s.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        );
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), 200, "{repo}:{tag}");
    let media = r.headers()["content-type"].to_str().unwrap().to_owned();
    (media, r.json().await.unwrap())
}

/// Extracts `path` from the image `r` in `tool`'s store by mounting a container (no run).
fn file_in_image(tool: &Tool, r: &str, path: &str) -> Vec<u8> {
    let out = tempfile::tempdir().unwrap();
    let id = tool.ok(&["create", r, "/none"]).trim().to_owned();
    tool.ok(&[
        "cp",
        &format!("{id}:{path}"),
        out.path().join("f").to_str().unwrap(),
    ]);
    tool.ok(&["rm", &id]);
    std::fs::read(out.path().join("f")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_builds_pushes_and_pulls_in_both_formats() {
    let s = Server::start();
    let podman = Tool::new("podman");
    let ctx = tempfile::tempdir().unwrap();
    let payload = context(ctx.path());
    let host = s.host();
    for (format, media) in [
        ("oci", "application/vnd.oci.image.manifest.v1+json"),
        (
            "docker",
            "application/vnd.docker.distribution.manifest.v2+json",
        ),
    ] {
        let r = format!("{host}/team/hello:{format}");
        podman.ok(&[
            "build",
            "-q",
            "--format",
            format,
            "--network",
            "none",
            "-t",
            &r,
            ctx.path().to_str().unwrap(),
        ]);
        podman.ok(&["push", "--tls-verify=false", &r]);
        let (got, m) = manifest(&s, "team/hello", format, None).await;
        assert_eq!(got, media, "podman pushed {format}");
        assert_eq!(m["layers"].as_array().unwrap().len(), 1);

        // A clean store pulls it back whole.
        let fresh = Tool::new("podman");
        fresh.ok(&["pull", "-q", "--tls-verify=false", &r]);
        assert_eq!(file_in_image(&fresh, &r, "/payload.bin"), payload);
        assert_eq!(
            file_in_image(&fresh, &r, "/hello.txt"),
            b"hello from berth\n"
        );
        let label = fresh.ok(&[
            "image",
            "inspect",
            "-f",
            "{{index .Labels \"org.opencontainers.image.title\"}}",
            &r,
        ]);
        assert_eq!(label.trim(), "hello");
    }
    // Both tags are listed; pushing the same image again moves nothing and succeeds.
    let tags = get_json(&s.url("/v2/team/hello/tags/list")).await;
    assert_eq!(tags["tags"], serde_json::json!(["docker", "oci"]));
    let again = podman.ok(&[
        "push",
        "--tls-verify=false",
        &format!("{host}/team/hello:oci"),
    ]);
    assert!(
        !again.contains("Error"),
        "a second push of the same image: {again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildah_commits_from_scratch_pushes_and_pulls() {
    let s = Server::start();
    let buildah = Tool::new("buildah");
    let ctx = tempfile::tempdir().unwrap();
    let payload = context(ctx.path());
    let r = format!("{}/tools/made-by-buildah:1", s.host());

    let working = buildah.ok(&["from", "scratch"]).trim().to_owned();
    buildah.ok(&[
        "copy",
        &working,
        ctx.path().join("payload.bin").to_str().unwrap(),
        "/payload.bin",
    ]);
    buildah.ok(&["config", "--label", "made-by=buildah", &working]);
    buildah.ok(&["commit", "-q", &working, &r]);
    buildah.ok(&["push", "--tls-verify=false", &r]);

    let (media, m) = manifest(&s, "tools/made-by-buildah", "1", None).await;
    assert_eq!(media, "application/vnd.oci.image.manifest.v1+json");
    let config = m["config"]["digest"].as_str().unwrap();
    let cfg = get_json(&s.url(&format!("/v2/tools/made-by-buildah/blobs/{config}"))).await;
    assert_eq!(cfg["config"]["Labels"]["made-by"], "buildah");

    let fresh = Tool::new("buildah");
    fresh.ok(&["pull", "-q", "--tls-verify=false", &r]);
    let pulled = fresh.ok(&["from", &r]).trim().to_owned();
    let mnt = fresh.ok(&["mount", &pulled]).trim().to_owned();
    assert_eq!(
        std::fs::read(Path::new(&mnt).join("payload.bin")).unwrap(),
        payload
    );
    fresh.ok(&["umount", &pulled]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_login_with_token_auth_pushes_where_allowed_only() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd, &[("alice", "alice-pw"), ("bob", "bob-pw")]);
    let cfg = dir.path().join("berth.yaml");
    std::fs::write(
        &cfg,
        format!(
            "auth:\n  htpasswd: {}\n  token: {{}}\n  access:\n    - repository: \"team-a/**\"\n      users: [alice]\n      actions: [pull, push]\n    - repository: \"team-a/**\"\n      users: [bob]\n      actions: [pull]\n",
            htpasswd.display()
        ),
    )
    .unwrap();
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let host = s.host();
    let ctx = tempfile::tempdir().unwrap();
    context(ctx.path());
    let podman = Tool::new("podman");
    let r = format!("{host}/team-a/app:1");
    podman.ok(&[
        "build",
        "-q",
        "--network",
        "none",
        "-t",
        &r,
        ctx.path().to_str().unwrap(),
    ]);

    // Not signed in: refused.
    let (ok, out) = podman.run(&["push", "--tls-verify=false", &r]);
    assert!(!ok, "an anonymous push succeeded: {out}");

    let (ok, out) = podman.run(&[
        "login",
        "--tls-verify=false",
        "-u",
        "alice",
        "-p",
        "wrong",
        host,
    ]);
    assert!(!ok, "a wrong password signed in: {out}");
    podman.ok(&[
        "login",
        "--tls-verify=false",
        "-u",
        "alice",
        "-p",
        "alice-pw",
        host,
    ]);
    podman.ok(&["push", "--tls-verify=false", &r]);
    manifest(&s, "team-a/app", "1", Some(&basic("alice", "alice-pw"))).await;

    // bob may pull but not push.
    let bob = Tool::new("podman");
    bob.ok(&[
        "login",
        "--tls-verify=false",
        "-u",
        "bob",
        "-p",
        "bob-pw",
        host,
    ]);
    bob.ok(&["pull", "-q", "--tls-verify=false", &r]);
    let other = format!("{host}/team-a/bobs:1");
    bob.ok(&["tag", &r, &other]);
    let (ok, out) = bob.run(&["push", "--tls-verify=false", &other]);
    assert!(!ok, "bob pushed without the right: {out}");
    assert!(
        out.contains("denied") || out.contains("DENIED") || out.contains("403"),
        "the refusal says why: {out}"
    );
}
