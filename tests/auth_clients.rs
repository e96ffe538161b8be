//! Real clients against a registry with auth on: `docker login` + push + pull through the
//! local Docker engine (token auth, following the Bearer challenge), `skopeo copy
//! --dest-creds` (Basic), and the oci-client crate with credentials (Bearer challenge).
//! These tests fail, never skip, when docker or skopeo is missing.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

fn config(dir: &Path, token: bool) -> std::path::PathBuf {
    let htpasswd = dir.join("htpasswd");
    write_htpasswd(&htpasswd, &[("alice", "alice-pw"), ("bob", "bob-pw")]);
    let cfg = dir.join("berth.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
auth:
  htpasswd: {}
  access:
    - repository: "team-a/**"
      users: [alice]
      actions: [pull, push, delete]
    - repository: "team-a/**"
      users: [bob]
      actions: [pull]
{}
"#,
            htpasswd.display(),
            if token { "  token: {}\n" } else { "" }
        ),
    )
    .unwrap();
    cfg
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (the tool must be installed)"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn docker(cfg: &Path, args: &[&str]) -> (bool, String) {
    run(Command::new("docker").env("DOCKER_CONFIG", cfg).args(args))
}

fn docker_login(cfg: &Path, host: &str, user: &str, password: &str) -> (bool, String) {
    let mut child = Command::new("docker")
        .env("DOCKER_CONFIG", cfg)
        .args(["login", host, "-u", user, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker must be installed");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(password.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn docker_login_push_pull_with_tokens() {
    docker_login_push_pull(true);
}

#[test]
fn docker_login_push_pull_with_basic_auth() {
    docker_login_push_pull(false);
}

fn docker_login_push_pull(tokens: bool) {
    common::needs::need("docker");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), tokens);
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let docker_cfg = dir.path().join("docker");
    std::fs::create_dir_all(&docker_cfg).unwrap();
    // A one-file image made locally (nothing can be pulled from outside).
    let ctx = dir.path().join("rootfs");
    std::fs::create_dir_all(&ctx).unwrap();
    let marker = format!("berth auth test {}", std::process::id());
    std::fs::write(ctx.join("hello.txt"), &marker).unwrap();
    let tar = dir.path().join("rootfs.tar");
    let (ok, out) = run(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&ctx)
        .arg("hello.txt"));
    assert!(ok, "{out}");
    let image = format!("{}/team-a/hello:v1", s.host());
    let (ok, out) = docker(&docker_cfg, &["import", tar.to_str().unwrap(), &image]);
    assert!(ok, "docker import: {out}");
    let cleanup = |img: &str| {
        let _ = docker(&docker_cfg, &["rmi", "-f", img]);
    };

    // Without login, the push is refused.
    let (ok, out) = docker(&docker_cfg, &["push", &image]);
    assert!(!ok, "anonymous push must fail: {out}");
    // Wrong password: login fails.
    let (ok, out) = docker_login(&docker_cfg, s.host(), "alice", "wrong");
    assert!(!ok, "{out}");
    // bob may pull but not push.
    let (ok, out) = docker_login(&docker_cfg, s.host(), "bob", "bob-pw");
    assert!(ok, "bob login: {out}");
    let (ok, out) = docker(&docker_cfg, &["push", &image]);
    assert!(!ok, "bob must not push: {out}");
    // alice logs in, pushes, and the image comes back after removal.
    let (ok, out) = docker_login(&docker_cfg, s.host(), "alice", "alice-pw");
    assert!(ok, "alice login: {out}");
    let (ok, out) = docker(&docker_cfg, &["push", &image]);
    assert!(ok, "alice push: {out}");
    cleanup(&image);
    let (ok, out) = docker_login(&docker_cfg, s.host(), "bob", "bob-pw");
    assert!(ok, "{out}");
    let (ok, out) = docker(&docker_cfg, &["pull", &image]);
    assert!(ok, "bob pull: {out}");
    let (ok, out) = docker(&docker_cfg, &["image", "inspect", &image]);
    assert!(ok, "{out}");
    cleanup(&image);
    // The audit log saw alice push and bob pull.
    let audit = audit_lines_after(&s, |v| {
        v["fields"]["event"] == "pull" && v["fields"]["who"] == "bob"
    });
    assert!(
        audit
            .iter()
            .any(|v| v["fields"]["event"] == "push" && v["fields"]["who"] == "alice"),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|v| v["fields"]["event"] == "pull" && v["fields"]["who"] == "bob"),
        "{audit:?}"
    );
    // Blobs too: who pushed and pulled which digest, and how many bytes.
    for (event, who) in [("blob-push", "alice"), ("blob-pull", "bob")] {
        let line = audit
            .iter()
            .find(|v| v["fields"]["event"] == event && v["fields"]["who"] == who)
            .unwrap_or_else(|| panic!("no {event} by {who}: {audit:?}"));
        let f = &line["fields"];
        assert!(f["digest"].as_str().unwrap().starts_with("sha256:"), "{f}");
        assert!(f["bytes"].as_u64().unwrap() > 0, "{f}");
        assert_eq!(f["result"], "success", "{f}");
    }
}

#[tokio::test]
async fn skopeo_copy_with_dest_creds() {
    common::needs::need("skopeo");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), false);
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    // Seed a source image through an open registry.
    let src = Server::start();
    let c = client();
    push_image(&c, &src, "seed/img", "v1", "skopeo").await;
    let from = format!("docker://{}/seed/img:v1", src.host());
    let to = format!("docker://{}/team-a/copied:v1", s.host());
    let copy = |creds: Option<&str>| {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"]);
        if let Some(c) = creds {
            cmd.args(["--dest-creds", c]);
        }
        cmd.args([&from, &to]);
        run(&mut cmd)
    };
    let (ok, out) = copy(None);
    assert!(!ok, "anonymous copy must fail: {out}");
    let (ok, out) = copy(Some("alice:wrong"));
    assert!(!ok, "wrong password must fail: {out}");
    let (ok, out) = copy(Some("bob:bob-pw"));
    assert!(!ok, "bob may not push: {out}");
    let (ok, out) = copy(Some("alice:alice-pw"));
    assert!(ok, "alice copy: {out}");
    let (ok, out) = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--creds",
        "bob:bob-pw",
        &to,
    ]));
    assert!(ok, "bob inspects: {out}");
}

#[tokio::test]
async fn oci_client_follows_the_bearer_challenge() {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::secrets::RegistryAuth;
    use oci_client::{Client, Reference};

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), true);
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let reference: Reference = format!("{}/team-a/oci:v1", s.host()).parse().unwrap();
    let layers = vec![ImageLayer::oci_v1(b"oci-client layer".to_vec(), None)];
    let config = Config::oci_v1(br#"{"architecture":"amd64","os":"linux"}"#.to_vec(), None);
    let alice = RegistryAuth::Basic("alice".into(), "alice-pw".into());
    let bob = RegistryAuth::Basic("bob".into(), "bob-pw".into());
    let denied = client
        .push(&reference, &layers, config.clone(), &bob, None)
        .await;
    assert!(denied.is_err(), "bob must not push");
    let fresh = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    fresh
        .push(&reference, &layers, config, &alice, None)
        .await
        .expect("alice pushes");
    let reader = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let image = reader
        .pull(
            &reference,
            &bob,
            vec![oci_client::manifest::IMAGE_LAYER_MEDIA_TYPE],
        )
        .await
        .expect("bob pulls");
    assert_eq!(&image.layers[0].data[..], b"oci-client layer");
    let anon = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    assert!(
        anon.pull(
            &reference,
            &RegistryAuth::Anonymous,
            vec![oci_client::manifest::IMAGE_LAYER_MEDIA_TYPE]
        )
        .await
        .is_err(),
        "anonymous pull is refused"
    );
}
