//! `berth purge`, the built binary against real storage: a registry's whole data goes (on the
//! filesystem, and on S3 with and without a key prefix, on Garage), its neighbours' data stays,
//! upload sessions' multipart uploads are aborted, a second run finds nothing, and nothing is
//! deleted without `--yes`. Garage is required: these tests fail (never skip) without it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::garage::Garage;
use common::{Server, berth_token, client, push_image};
use object_store::ObjectStore;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::MultipartStore;
use object_store::path::Path as Key;
use serde_json::Value;

/// Runs `berth purge ARGS` with a clean environment; returns its output.
fn purge(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("purge").args(args);
    for v in [
        "BERTH_CONFIG",
        "BERTH_CONFIG_INLINE",
        "BERTH_ROOT",
        "RUST_LOG",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("NO_COLOR", "1").envs(env.iter().copied());
    cmd.output().expect("run berth purge")
}

fn os(args: &[&str]) -> Vec<std::ffi::OsString> {
    args.iter().map(Into::into).collect()
}

fn run(args: &[std::ffi::OsString], env: &[(&str, &str)]) -> Output {
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    purge(&refs, env)
}

/// The one-line JSON report of a run that must succeed.
fn report(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "berth purge failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line of JSON on stdout: {stdout:?}");
    let v: Value = serde_json::from_str(lines[0]).expect("JSON report");
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["bytesFreed", "objectsDeleted"], "{v}");
    v
}

fn counts(v: &Value) -> (u64, u64) {
    (
        v["objectsDeleted"].as_u64().unwrap(),
        v["bytesFreed"].as_u64().unwrap(),
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Files (and their bytes) under `p`, recursively; (0, 0) when it does not exist.
fn tree(p: &Path) -> (u64, u64) {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return (0, 0);
    };
    if !meta.is_dir() {
        return (1, meta.len());
    }
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| tree(&e.unwrap().path()))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

const TOP: [&str; 4] = ["blobs", "repositories", "uploads", "auth"];

fn registry_files(root: &Path) -> (u64, u64) {
    TOP.iter()
        .map(|d| tree(&root.join(d)))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// Starts an upload session on `repo` and sends `bytes` of it without finishing.
async fn unfinished_upload(c: &reqwest::Client, s: &Server, repo: &str, bytes: usize) -> String {
    let r = c
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let url = if location.starts_with("http") {
        location.clone()
    } else {
        s.url(&location)
    };
    let r = c
        .patch(url)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("0-{}", bytes - 1))
        .body(vec![7u8; bytes])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    location
}

async fn catalog(c: &reqwest::Client, s: &Server) -> Value {
    let r = c.get(s.url("/v2/_catalog")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Push two images, tag them, leave an upload session unfinished, create a robot account;
/// plus files in the root that are not the registry's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_purge_removes_the_registry_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let s = Server::start_on(&root, &[]);
    let c = client();
    let (_, md) = push_image(&c, &s, "team/app", "v1", "one").await;
    push_image(&c, &s, "other", "latest", "two").await;
    let session = unfinished_upload(&c, &s, "team/app", 1000).await;
    drop(s);
    berth_token(
        &root,
        &[
            "create",
            "--name",
            "ci",
            "--scope",
            "repository:team/*:pull",
        ],
    );
    std::fs::create_dir_all(root.join("lost+found/deep")).unwrap();
    std::fs::write(root.join("lost+found/deep/keep"), b"not the registry's").unwrap();
    std::fs::write(root.join("README"), b"mine").unwrap();
    let (files, bytes) = registry_files(&root);
    assert!(files >= 10 && root.join("auth/robots/ci.json").exists());
    let session_id = session.trim_end_matches('/').rsplit('/').next().unwrap();
    assert!(root.join("uploads").join(session_id).exists(), "{session}");

    // A dry run counts exactly what is there and deletes nothing.
    let out = run(
        &[os(&["--dry-run", "--root"]), vec![root.clone().into()]].concat(),
        &[],
    );
    assert_eq!(counts(&report(&out)), (files, bytes));
    assert_eq!(registry_files(&root), (files, bytes));

    // The real thing, with a termination log to write to.
    let termination = dir.path().join("termination-log");
    std::fs::write(&termination, b"").unwrap();
    let args = [
        os(&["--yes", "--root"]),
        vec![root.clone().into()],
        os(&["--report-file"]),
        vec![termination.clone().into()],
    ]
    .concat();
    let out = run(&args, &[]);
    let v = report(&out);
    assert_eq!(counts(&v), (files, bytes));
    assert!(files > 0 && bytes > 0);
    let written: Value = serde_json::from_slice(&std::fs::read(&termination).unwrap()).unwrap();
    assert_eq!(written, v, "the termination message is the same report");
    assert!(stderr(&out).contains("purge finished"), "{}", stderr(&out));
    for d in TOP {
        assert!(!root.join(d).exists(), "{d} is gone");
    }
    assert!(root.is_dir(), "the root itself stays");
    assert_eq!(
        std::fs::read(root.join("lost+found/deep/keep")).unwrap(),
        b"not the registry's"
    );
    assert_eq!(std::fs::read(root.join("README")).unwrap(), b"mine");

    // Again: nothing left to delete. A report file that does not exist is not created.
    let missing = dir.path().join("no-such-log");
    let args = [
        os(&["--yes", "--root"]),
        vec![root.clone().into()],
        os(&["--report-file"]),
        vec![missing.clone().into()],
    ]
    .concat();
    assert_eq!(counts(&report(&run(&args, &[]))), (0, 0));
    assert!(!missing.exists());

    // A registry on the same root starts empty.
    assert_serves_nothing(&Server::start_on(&root, &[]), &md).await;
}

/// An empty catalog, and the manifest pushed before the purge is unknown.
async fn assert_serves_nothing(s: &Server, md: &str) {
    let c = client();
    assert_eq!(catalog(&c, s).await["repositories"], serde_json::json!([]));
    let r = c
        .get(s.url(&format!("/v2/team/app/manifests/{md}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// Nothing is deleted without `--yes`, an ambiguous or missing storage choice is refused, a
/// root that does not exist is not created, and an unreachable bucket fails naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_delete_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let s = Server::start_on(&root, &[]);
    push_image(&client(), &s, "keep/me", "v1", "refusals").await;
    drop(s);
    let before = registry_files(&root);
    assert!(before.0 > 0);
    let root_arg: std::ffi::OsString = root.clone().into();

    // No --yes: exit 2, a message saying why, nothing deleted.
    let out = run(&[os(&["--root"]), vec![root_arg.clone()]].concat(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert_eq!(registry_files(&root), before);

    // --config and --config-inline (here through its variable) together.
    let cfg = dir.path().join("berth.yaml");
    let yaml = format!("storage:\n  filesystem:\n    root: {}\n", root.display());
    std::fs::write(&cfg, &yaml).unwrap();
    let out = run(
        &[os(&["--yes", "--config"]), vec![cfg.clone().into()]].concat(),
        &[("BERTH_CONFIG_INLINE", &yaml)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not both"),
        "a clear error: {}",
        stderr(&out)
    );
    assert_eq!(registry_files(&root), before);

    // No storage named at all: no default for a command like this one.
    let out = run(&os(&["--yes"]), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--root"), "{}", stderr(&out));

    // A bad inline config.
    let out = run(&os(&["--yes", "--config-inline", "storage: ["]), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("inline config"), "{}", stderr(&out));

    // The inline config alone works (dry run: counts, deletes nothing, needs no --yes).
    let out = run(&os(&["--dry-run", "--config-inline", &yaml]), &[]);
    assert_eq!(counts(&report(&out)), before);
    assert_eq!(registry_files(&root), before);

    // A root that does not exist: an error, and it is not created.
    let nowhere = dir.path().join("nowhere");
    let out = run(
        &[os(&["--yes", "--root"]), vec![nowhere.clone().into()]].concat(),
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(!nowhere.exists());

    // A bucket nobody serves: non-zero, and the message names the bucket.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s3 = format!(
        "storage:\n  s3:\n    bucket: nobody-home\n    region: garage\n    \
         endpoint: http://127.0.0.1:{port}\n    accessKeyId: GK0\n    secretAccessKey: x\n"
    );
    let out = run(&os(&["--yes", "--config-inline", &s3]), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("nobody-home"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

/// The config text for a registry on `bucket` (under `prefix`, if any).
fn s3_yaml(g: &Garage, bucket: &str, prefix: Option<&str>) -> String {
    format!(
        "storage:\n  s3:\n    bucket: {bucket}\n    region: {region}\n    endpoint: {endpoint}\n    \
         accessKeyId: {key}\n    secretAccessKey: {secret}\n    partSizeMib: 5\n    \
         requestTimeoutSeconds: 20\n{prefix}",
        region = g.region,
        endpoint = g.endpoint,
        key = g.key_id,
        secret = g.secret,
        prefix = prefix
            .map(|p| format!("    prefix: {p}\n"))
            .unwrap_or_default(),
    )
}

/// A plain object_store client on the bucket: the test's own view of it.
fn bucket(g: &Garage, name: &str) -> AmazonS3 {
    AmazonS3Builder::new()
        .with_bucket_name(name)
        .with_region(&g.region)
        .with_endpoint(&g.endpoint)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_access_key_id(&g.key_id)
        .with_secret_access_key(&g.secret)
        .build()
        .unwrap()
}

/// Every object key in the bucket with its size.
async fn objects(b: &AmazonS3) -> Vec<(String, u64)> {
    use futures::TryStreamExt;
    let mut v: Vec<(String, u64)> = b
        .list(None)
        .map_ok(|m| (m.location.to_string(), m.size))
        .try_collect()
        .await
        .unwrap();
    v.sort();
    v
}

/// The keys of the bucket's multipart uploads in progress, asked with S3's
/// ListMultipartUploads through curl (independent of the code under test).
fn multipart_uploads(g: &Garage, bucket: &str) -> Vec<String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            // curl leaves out the payload hash that S3 requires: that of an empty body.
            "-H",
            "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "--aws-sigv4",
            &format!("aws:amz:{}:s3", g.region),
            "--user",
            &format!("{}:{}", g.key_id, g.secret),
            &format!("{}/{bucket}?uploads=", g.endpoint),
        ])
        .output()
        .expect("run curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && body.contains("ListMultipartUploadsResult"),
        "ListMultipartUploads: {} {body} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut keys: Vec<String> = body
        .split("<Upload>")
        .skip(1)
        .filter_map(|u| {
            let start = u.find("<Key>")? + 5;
            let end = u.find("</Key>")?;
            Some(u[start..end].to_owned())
        })
        .collect();
    keys.sort();
    keys
}

/// Puts `key` with a few bytes.
async fn put(b: &AmazonS3, key: &str) {
    b.put(&Key::from(key), b"someone else's".to_vec().into())
        .await
        .unwrap();
}

/// Starts a multipart upload at `key` with one part, as a process that died mid-upload leaves.
async fn dangling_multipart(b: &AmazonS3, key: &str) {
    let k = Key::from(key);
    let id = b.create_multipart(&k).await.unwrap();
    b.put_part(&k, &id, 0, vec![1u8; 5 << 20].into())
        .await
        .unwrap();
}

/// Fills a registry on `yaml`: two images, a session with a multipart upload in flight
/// (6 MiB with 5 MiB parts) and one with only a tail. Returns a manifest digest.
async fn fill_registry(dir: &Path, yaml: &str) -> String {
    let cfg = dir.join(format!("berth-{}.yaml", rand::random::<u32>()));
    std::fs::write(&cfg, yaml).unwrap();
    let s = Server::start_config(&cfg, &[]);
    let c = client();
    let (_, md) = push_image(&c, &s, "team/app", "v1", "s3 one").await;
    push_image(&c, &s, "other", "latest", "s3 two").await;
    unfinished_upload(&c, &s, "team/app", 6 << 20).await;
    unfinished_upload(&c, &s, "other", 1000).await;
    md
}

/// A registry on an empty catalog after the purge, through a fresh server.
async fn assert_empty_registry(dir: &Path, yaml: &str, md: &str) {
    let cfg = dir.join(format!("berth-after-{}.yaml", rand::random::<u32>()));
    std::fs::write(&cfg, yaml).unwrap();
    assert_serves_nothing(&Server::start_config(&cfg, &[]), md).await;
}

/// With prefix `team`: everything under `team/` goes (objects, the sessions' multipart upload
/// and one no session recorded), `team2/...`, `teamx` and unprefixed objects stay, and so does
/// a multipart upload under `team2/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_purge_with_prefix_keeps_neighbours_and_aborts_uploads() {
    let g = tokio::task::spawn_blocking(|| Garage::start(1, 1))
        .await
        .unwrap();
    let name = format!("purge-prefix-{:08x}", rand::random::<u32>());
    g.create_bucket(&name);
    let b = bucket(&g, &name);
    let dir = tempfile::tempdir().unwrap();
    let yaml = s3_yaml(&g, &name, Some("team"));
    let md = fill_registry(dir.path(), &yaml).await;
    for k in ["team2/x", "teamx", "outside.txt", "other/team/y"] {
        put(&b, k).await;
    }
    let orphan =
        "team/blobs/sha256/ab/ab00000000000000000000000000000000000000000000000000000000000000";
    dangling_multipart(&b, orphan).await;
    dangling_multipart(&b, "team2/big").await;

    let all = objects(&b).await;
    let ours: Vec<&(String, u64)> = all.iter().filter(|(k, _)| k.starts_with("team/")).collect();
    let want = (ours.len() as u64, ours.iter().map(|(_, n)| n).sum::<u64>());
    assert!(want.0 >= 10, "{all:?}");
    let uploads = multipart_uploads(&g, &name);
    let session_upload = uploads
        .iter()
        .find(|k| k.starts_with("team/uploads/") && k.ends_with("/data"))
        .unwrap_or_else(|| panic!("the session's multipart upload is in flight: {uploads:?}"))
        .clone();
    assert_eq!(uploads.len(), 3, "{uploads:?}");

    // Dry run: the count, nothing deleted or aborted.
    let out = run(&os(&["--dry-run", "--config-inline", &yaml]), &[]);
    assert_eq!(counts(&report(&out)), want);
    assert_eq!(objects(&b).await, all);
    assert_eq!(multipart_uploads(&g, &name), uploads);

    let out = run(&os(&["--yes", "--config-inline", &yaml]), &[]);
    assert_eq!(counts(&report(&out)), want);
    let log = stderr(&out);
    // The session's upload is aborted through its recorded state, the orphan by the sweep.
    assert!(log.contains("multipart_uploads_aborted=2"), "{log}");
    assert!(
        log.contains(orphan) && !log.contains(&session_upload),
        "{log}"
    );
    let left: Vec<String> = objects(&b).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(left, ["other/team/y", "outside.txt", "team2/x", "teamx"]);
    assert_eq!(multipart_uploads(&g, &name), ["team2/big"]);

    // Again, with the config from the variable the Job may use: nothing left.
    let out = run(&os(&["--yes"]), &[("BERTH_CONFIG_INLINE", &yaml)]);
    assert_eq!(counts(&report(&out)), (0, 0));
    assert_empty_registry(dir.path(), &yaml, &md).await;
}

/// Without a prefix only the layout's top-level directories go: other objects in the bucket,
/// even `blobsx/...`, stay, and so does a multipart upload outside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_purge_without_prefix_keeps_foreign_objects() {
    let g = tokio::task::spawn_blocking(|| Garage::start(1, 1))
        .await
        .unwrap();
    let name = format!("purge-root-{:08x}", rand::random::<u32>());
    g.create_bucket(&name);
    let b = bucket(&g, &name);
    let dir = tempfile::tempdir().unwrap();
    let yaml = s3_yaml(&g, &name, None);
    let md = fill_registry(dir.path(), &yaml).await;
    for k in ["backups/db.tar", "readme.txt", "blobsx/y"] {
        put(&b, k).await;
    }
    dangling_multipart(&b, "backups/big").await;
    let all = objects(&b).await;
    let ours: Vec<&(String, u64)> = all
        .iter()
        .filter(|(k, _)| TOP.iter().any(|d| k.starts_with(&format!("{d}/"))))
        .collect();
    let want = (ours.len() as u64, ours.iter().map(|(_, n)| n).sum::<u64>());
    assert_eq!(multipart_uploads(&g, &name).len(), 2);

    let cfg: PathBuf = dir.path().join("purge.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let out = run(
        &[os(&["--yes", "--config"]), vec![cfg.clone().into()]].concat(),
        &[],
    );
    assert_eq!(counts(&report(&out)), want);
    let left: Vec<String> = objects(&b).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(left, ["backups/db.tar", "blobsx/y", "readme.txt"]);
    assert_eq!(multipart_uploads(&g, &name), ["backups/big"]);
    let out = run(
        &[os(&["--yes", "--config"]), vec![cfg.into()]].concat(),
        &[],
    );
    assert_eq!(counts(&report(&out)), (0, 0));
    assert_empty_registry(dir.path(), &yaml, &md).await;
}
