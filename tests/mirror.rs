//! `berth mirror sync` from a real registry on loopback (another `berth serve`, with a fault
//! proxy in between) into a storage root that a `berth serve` then serves: tag selection,
//! platform filtering into a sparse index whose digest is the source's, referrers, a second
//! sync that moves nothing, a source cut off mid-copy and the re-run that finishes it.

mod common;

use std::path::Path;
use std::process::Command;

use common::faults::{Faults, Mode};
use common::*;
use serde_json::{Value, json};

/// Pushes a two-platform index (amd64, arm64; a shared base layer) to `repo:tag`; returns its
/// digest and the amd64 and arm64 manifests' digests.
async fn push_index(
    c: &reqwest::Client,
    s: &Server,
    repo: &str,
    tag: &str,
) -> (String, String, String) {
    let base = vec![7u8; 300 << 10];
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        let config = format!(r#"{{"architecture":"{arch}","os":"linux","tag":"{tag}"}}"#);
        let own = format!("{arch} layer of {tag} ").repeat(20_000);
        let (m, d) = push_image_of(
            c,
            s,
            repo,
            &format!("build-{arch}-{tag}"),
            config.as_bytes(),
            &[&base, own.as_bytes()],
        )
        .await;
        children.push(json!({
            "mediaType": OCI_MANIFEST, "digest": d, "size": m.len(),
            "platform": {"architecture": arch, "os": "linux"}
        }));
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children
    }))
    .unwrap();
    let r = c
        .put(s.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header("content-type", OCI_INDEX)
        .body(index.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    (
        sha256(&index),
        children[0]["digest"].as_str().unwrap().to_owned(),
        children[1]["digest"].as_str().unwrap().to_owned(),
    )
}

/// A cosign-style signature of `subject` (an artifact manifest with it as subject).
async fn push_signature(
    c: &reqwest::Client,
    s: &Server,
    repo: &str,
    subject: &str,
    size: usize,
) -> String {
    let empty = push_blob(c, s, repo, b"{}").await;
    let sig = push_blob(c, s, repo, b"a signature payload").await;
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": sig, "size": 19}],
        "subject": {"mediaType": OCI_INDEX, "digest": subject, "size": size}
    }))
    .unwrap();
    let d = sha256(&m);
    let r = c
        .put(s.url(&format!("/v2/{repo}/manifests/{d}")))
        .header("content-type", OCI_MANIFEST)
        .body(m)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    d
}

/// Signs `repo:tag` (whose index is `index`) as cosign does; returns the signature's digest.
async fn sign(c: &reqwest::Client, s: &Server, repo: &str, tag: &str, index: &str) -> String {
    let size = c
        .get(s.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header("accept", OCI_INDEX)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    push_signature(c, s, repo, index, size).await
}

/// The set most tests use: 3.2x tags of `source/repo`, amd64 only, with referrers, into
/// `mirror/alpine`.
fn alpine_set(dir: &Path, source: &str, repo: &str) -> std::path::PathBuf {
    let set = dir.join("set.yaml");
    std::fs::write(
        &set,
        format!(
            "mirrors:\n  - source: {source}/{repo}\n    tags: [\"3\\\\.2[0-9]\"]\n    platforms: [linux/amd64]\n    referrers: true\n    destination: mirror/alpine\n"
        ),
    )
    .unwrap();
    set
}

fn sync(set: &Path, root: &Path) -> (bool, Value, String) {
    sync_into(set, &["--root", root.to_str().unwrap()])
}

/// `berth mirror sync --json --config SET` with `into` (`--root DIR` or `--to URL ...`).
fn sync_into(set: &Path, into: &[&str]) -> (bool, Value, String) {
    let set = set.to_str().unwrap();
    mirror(&[&["sync", "--config", set][..], into].concat())
}

/// `berth mirror ARGS --json`: whether it succeeded, its report, its stderr.
fn mirror(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("mirror")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (
        out.status.success(),
        report,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs skopeo, which must succeed; its stdout.
fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

async fn status(c: &reqwest::Client, url: String) -> u16 {
    c.get(url)
        .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_copies_chosen_tags_and_platforms_with_referrers_and_resumes() {
    let c = client();
    let source = Server::start();
    let repo = "library/alpine";
    let mut indexes = Vec::new();
    for tag in ["3.18", "3.20", "3.21"] {
        indexes.push(push_index(&c, &source, repo, tag).await);
    }
    let (i21, _, _) = &indexes[2];
    let sig = sign(&c, &source, repo, "3.21", i21).await;
    let faults = Faults::start(source.host()).await;
    let dir = tempfile::tempdir().unwrap();
    let set = alpine_set(dir.path(), &faults.url(), repo);
    let root = dir.path().join("dest");
    let (ok, report, err) = sync(&set, &root);
    assert!(ok, "{err}");
    assert_eq!(report["images"], 2, "{report}");
    assert_eq!(report["errors"], json!([]));
    // Per tag: the index, the amd64 image, its config and two layers (the base shared).
    assert_eq!(report["manifestsCopied"], 2 * 2 + 1, "{report}");
    assert_eq!(report["blobsCopied"], 2 * 2 + 1 + 2, "{report}");
    assert_eq!(
        report["blobsSkipped"], 1,
        "the shared base layer once: {report}"
    );

    let dest = Server::start_on(&root, &[]);
    let tags = get_json(&dest.url("/v2/mirror/alpine/tags/list")).await;
    assert_eq!(tags["tags"], json!(["3.20", "3.21"]));
    for (index, amd64, arm64) in &indexes[1..] {
        let r = c
            .get(dest.url(&format!("/v2/mirror/alpine/manifests/{index}")))
            .header("accept", OCI_INDEX)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the index is kept whole, digest and all");
        assert_eq!(sha256(&r.bytes().await.unwrap()), *index);
        assert_eq!(
            status(
                &c,
                dest.url(&format!("/v2/mirror/alpine/manifests/{amd64}"))
            )
            .await,
            200
        );
        assert_eq!(
            status(
                &c,
                dest.url(&format!("/v2/mirror/alpine/manifests/{arm64}"))
            )
            .await,
            404,
            "arm64 was left out"
        );
        let m = get_json(&dest.url(&format!("/v2/mirror/alpine/manifests/{amd64}"))).await;
        for l in m["layers"].as_array().unwrap() {
            let d = l["digest"].as_str().unwrap();
            let r = c
                .get(dest.url(&format!("/v2/mirror/alpine/blobs/{d}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(sha256(&r.bytes().await.unwrap()), d);
        }
    }
    let refs = get_json(&dest.url(&format!("/v2/mirror/alpine/referrers/{i21}"))).await;
    assert_eq!(
        refs["manifests"][0]["digest"],
        sig.as_str(),
        "the signature came along"
    );
    assert_eq!(
        status(&c, dest.url("/v2/mirror/alpine/manifests/3.18")).await,
        404
    );

    // Nothing changed: nothing moves.
    faults.clear();
    let (ok, again, err) = sync(&set, &root);
    assert!(ok, "{err}");
    assert_eq!(again["images"], 2);
    assert_eq!(again["blobsCopied"], 0, "{again}");
    assert_eq!(again["bytesCopied"], 0);
    assert_eq!(again["manifestsCopied"], 0);
    assert_eq!(
        faults.count("GET", "/blobs/", 200),
        0,
        "{:?}",
        faults.seen()
    );

    // A new tag, and the source cut off mid-blob: an error, nothing torn; the re-run finishes.
    let (i22, amd22, _) = push_index(&c, &source, repo, "3.22").await;
    faults.set(Mode::Cut);
    let (ok, cut, _) = sync(&set, &root);
    assert!(!ok, "a cut-off sync fails: {cut}");
    assert!(!cut["errors"].as_array().unwrap().is_empty());
    assert_blob_store_consistent(&root);
    assert_eq!(
        status(&c, dest.url("/v2/mirror/alpine/manifests/3.22")).await,
        404
    );
    faults.set(Mode::Pass);
    let (ok, resumed, err) = sync(&set, &root);
    assert!(ok, "{err}");
    assert_eq!(resumed["errors"], json!([]));
    assert_eq!(
        status(&c, dest.url(&format!("/v2/mirror/alpine/manifests/{i22}"))).await,
        200
    );
    assert_eq!(
        status(
            &c,
            dest.url(&format!("/v2/mirror/alpine/manifests/{amd22}"))
        )
        .await,
        200
    );
    let tags = get_json(&dest.url("/v2/mirror/alpine/tags/list")).await;
    assert_eq!(tags["tags"], json!(["3.20", "3.21", "3.22"]));
    assert_blob_store_consistent(&root);

    // A source sending wrong bytes: refused by digest, nothing of the image visible.
    let (i23, _, _) = push_index(&c, &source, repo, "3.23").await;
    faults.set(Mode::Corrupt);
    let (ok, bad, _) = sync(&set, &root);
    assert!(!ok, "{bad}");
    let e = bad["errors"].to_string();
    assert!(
        e.contains("3.23") && e.to_lowercase().contains("digest"),
        "{e}"
    );
    assert_eq!(
        status(&c, dest.url(&format!("/v2/mirror/alpine/manifests/{i23}"))).await,
        404
    );
    assert_eq!(
        status(&c, dest.url("/v2/mirror/alpine/manifests/3.23")).await,
        404
    );
    assert_blob_store_consistent(&root);
}

#[test]
fn a_bad_set_file_is_one_line_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set.yaml");
    std::fs::write(&set, "mirrors:\n  - source: https://ghcr.io/org/app\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["mirror", "sync", "--config"])
        .arg(&set)
        .arg("--root")
        .arg(dir.path().join("dest"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("mirrors[0].tags: say which tags"), "{err}");
    assert!(!dir.path().join("dest").exists());
}

/// CNCF Distribution (`docker-registry`) as the source, filled by `skopeo copy --all` from a
/// Berth; skopeo then reads what the mirror stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_from_cncf_distribution_and_skopeo_reads_the_result() {
    common::needs::need("skopeo");
    let c = client();
    let seed = Server::start();
    let (index, amd64, _) = push_index(&c, &seed, "team/app", "1.0").await;

    let dir = tempfile::tempdir().unwrap();
    let dist = Distribution::start(dir.path());
    let (port, dist_url) = (dist.port, dist.url());
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{}/team/app:1.0", seed.host()),
        &format!("docker://127.0.0.1:{port}/team/app:1.0"),
    ]);

    let set = dir.path().join("set.yaml");
    std::fs::write(
        &set,
        format!("mirrors:\n  - source: {dist_url}/team/app\n    semver: \">=1 <2\"\n    platforms: [linux/amd64]\n"),
    )
    .unwrap();
    let root = dir.path().join("dest");
    let (ok, report, err) = sync(&set, &root);
    assert!(ok, "{err}");
    assert_eq!(report["images"], 1, "{report}");

    let dest = Server::start_on(&root, &[]);
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/team/app:1.0", dest.host()),
    ]);
    assert_eq!(
        sha256(&raw),
        index,
        "skopeo reads the source's index, digest unchanged"
    );
    let layout = dir.path().join("out");
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--override-arch",
        "amd64",
        "--override-os",
        "linux",
        "--src-tls-verify=false",
        &format!("docker://{}/team/app:1.0", dest.host()),
        &format!("oci:{}:x", layout.display()),
    ]);
    let copied: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        copied["manifests"][0]["digest"],
        amd64.as_str(),
        "the amd64 image, whole"
    );
}

/// `--to`: pushing into a running Berth with token auth, as any client pushes; a wrong
/// password and a destination that refuses sparse indexes are clear errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_pushes_into_a_registry_with_token_auth() {
    let c = client();
    let source = Server::start();
    let mut digests = Vec::new();
    for tag in ["2.0", "2.1"] {
        digests.push(push_index(&c, &source, "team/app", tag).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd, &[("ci", "ci-pw")]);
    let cfg = dir.path().join("dest.yaml");
    std::fs::write(
        &cfg,
        format!(
            "allowSparseIndexes: true\nauth:\n  htpasswd: {}\n  token: {{}}\n  access:\n    - repository: \"mirror/**\"\n      users: [ci]\n      actions: [pull, push]\n",
            htpasswd.display()
        ),
    )
    .unwrap();
    let dest = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let strict = Server::start();
    let pw = dir.path().join("ci.pw");
    std::fs::write(&pw, "ci-pw\n").unwrap();
    let bad_pw = dir.path().join("bad.pw");
    std::fs::write(&bad_pw, "nope\n").unwrap();
    let set = dir.path().join("set.yaml");
    std::fs::write(
        &set,
        format!(
            "mirrors:\n  - source: {}/team/app\n    newest: 5\n    platforms: [linux/amd64]\n    destination: mirror/app\n",
            source.url("")
        ),
    )
    .unwrap();
    let to = dest.url("");
    let push = |pw: &Path| {
        sync_into(
            &set,
            &[
                "--to",
                &to,
                "--to-username",
                "ci",
                "--to-password-file",
                pw.to_str().unwrap(),
            ],
        )
    };

    let (ok, report, err) = push(&pw);
    assert!(ok, "{err}");
    assert_eq!(report["images"], 2, "{report}");
    assert_eq!(report["errors"], json!([]));
    let auth = basic("ci", "ci-pw");
    let get = |path: String| {
        c.get(dest.url(&path))
            .header("authorization", auth.clone())
            .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
    };
    let tags: Value = get("/v2/mirror/app/tags/list".into())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!(["2.0", "2.1"]));
    for (index, amd64, arm64) in &digests {
        let r = get(format!("/v2/mirror/app/manifests/{index}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(sha256(&r.bytes().await.unwrap()), *index);
        assert_eq!(
            get(format!("/v2/mirror/app/manifests/{amd64}"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            get(format!("/v2/mirror/app/manifests/{arm64}"))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
    }

    let (ok, again, err) = push(&pw);
    assert!(ok, "{err}");
    assert_eq!(again["bytesCopied"], 0, "{again}");
    assert_eq!(again["manifestsCopied"], 0, "{again}");

    let (ok, denied, _) = push(&bad_pw);
    assert!(!ok, "a wrong password must fail");
    let e = denied["errors"].to_string();
    assert!(
        e.contains("401") || e.to_lowercase().contains("unauthorized") || e.contains("refused"),
        "{e}"
    );

    let (ok, refused, _) = sync_into(&set, &["--to", &strict.url("")]);
    assert!(!ok);
    assert!(
        refused["errors"].to_string().contains("allowSparseIndexes"),
        "{refused}"
    );
}

/// The entries of a tar file.
fn tar_names(path: &Path) -> Vec<String> {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// `mirror export`: a bundle skopeo reads by `<repository>:<tag>`, an incremental one with
/// `--since` that leaves out what the first holds, and none at all when the source lies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_bundles_skopeo_reads_and_since_leaves_out_old_blobs() {
    common::needs::need("skopeo");
    let c = client();
    let source = Server::start();
    let repo = "library/alpine";
    let (i20, _, _) = push_index(&c, &source, repo, "3.20").await;
    let (i21, amd21, arm21) = push_index(&c, &source, repo, "3.21").await;
    let sig = sign(&c, &source, repo, "3.21", &i21).await;
    let faults = Faults::start(source.host()).await;
    let dir = tempfile::tempdir().unwrap();
    let set = alpine_set(dir.path(), &faults.url(), repo);
    let export = |out: &Path, since: Option<&Path>| {
        let (set, out) = (set.to_str().unwrap(), out.to_str().unwrap());
        let mut args = vec!["export", "--config", set, "--out", out];
        if let Some(s) = since {
            args.extend(["--since", s.to_str().unwrap()]);
        }
        mirror(&args)
    };

    let b1 = dir.path().join("b1.tar");
    let (ok, report, err) = export(&b1, None);
    assert!(ok, "{err}");
    assert_eq!(report["images"], 2, "{report}");
    let names = tar_names(&b1);
    assert_eq!(names.first().map(String::as_str), Some("oci-layout"));
    assert_eq!(names.last().map(String::as_str), Some("index.json"));
    for (tag, index) in [("3.20", &i20), ("3.21", &i21)] {
        let raw = skopeo(&[
            "inspect",
            "--raw",
            &format!("oci-archive:{}:mirror/alpine:{tag}", b1.display()),
        ]);
        assert_eq!(
            sha256(&raw),
            **index,
            "{tag}: the index as the source has it"
        );
    }
    // skopeo copies the amd64 image out of the bundle into a registry, whole.
    let dest = Server::start();
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--override-arch",
        "amd64",
        "--override-os",
        "linux",
        "--dest-tls-verify=false",
        &format!("oci-archive:{}:mirror/alpine:3.21", b1.display()),
        &format!("docker://{}/site/alpine:3.21", dest.host()),
    ]);
    let r = c
        .get(dest.url("/v2/site/alpine/manifests/3.21"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        amd21
    );

    // The next bundle, --since the first: only what is new.
    push_index(&c, &source, repo, "3.22").await;
    let b2 = dir.path().join("b2.tar");
    let (ok, report, err) = export(&b2, Some(&b1));
    assert!(ok, "{err}");
    assert_eq!(report["images"], 3, "{report}");
    assert_eq!(
        report["blobsCopied"], 2,
        "3.22's config and own layer: {report}"
    );
    // Manifests are written again (small; each bundle names whole images), blobs are not.
    assert_eq!(
        report["manifestsCopied"], 7,
        "three indexes, three amd64 images, the signature: {report}"
    );
    let old: std::collections::HashSet<String> = tar_names(&b1)
        .into_iter()
        .filter(|n| n.starts_with("blobs/"))
        .collect();
    let new: Vec<String> = tar_names(&b2)
        .into_iter()
        .filter(|n| n.starts_with("blobs/"))
        .collect();
    assert_eq!(new.len(), 9, "{new:?}");
    assert_eq!(
        new.iter().filter(|n| old.contains(*n)).count(),
        5,
        "of b1, only its five manifests again"
    );
    let raw = skopeo(&[
        "inspect",
        "--raw",
        &format!("oci-archive:{}:mirror/alpine:3.22", b2.display()),
    ]);
    assert_eq!(Manifest::media(&raw), OCI_INDEX);

    // Import: b1 into a fresh root, then b2 on top; what a registry serves from it is the
    // source's index (sparse), the amd64 image, the signature.
    let root = dir.path().join("site");
    let import = |bundle: &Path, into: &[&str]| {
        mirror(&[&["import", bundle.to_str().unwrap()][..], into].concat())
    };
    let at_root = ["--root", root.to_str().unwrap()];
    let (ok, report, err) = import(&b1, &at_root);
    assert!(ok, "{err}");
    assert_eq!(report["images"], 2, "{report}");
    let (ok, report, err) = import(&b2, &at_root);
    assert!(ok, "{err}");
    assert_eq!(report["blobsCopied"], 2, "only 3.22's own blobs: {report}");
    let site = Server::start_on(&root, &[]);
    let tags = get_json(&site.url("/v2/mirror/alpine/tags/list")).await;
    assert_eq!(tags["tags"], json!(["3.20", "3.21", "3.22"]));
    let r = c
        .get(site.url("/v2/mirror/alpine/manifests/3.21"))
        .header("accept", OCI_INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&r.bytes().await.unwrap()), i21);
    assert_eq!(
        status(
            &c,
            site.url(&format!("/v2/mirror/alpine/manifests/{amd21}"))
        )
        .await,
        200
    );
    assert_eq!(
        status(
            &c,
            site.url(&format!("/v2/mirror/alpine/manifests/{arm21}"))
        )
        .await,
        404
    );
    let refs = get_json(&site.url(&format!("/v2/mirror/alpine/referrers/{i21}"))).await;
    assert_eq!(
        refs["manifests"][0]["digest"],
        sig.as_str(),
        "the signature came across"
    );
    assert_blob_store_consistent(&root);
    // Re-running an import moves nothing.
    let (ok, again, _) = import(&b1, &at_root);
    assert!(ok && again["blobsCopied"] == 0, "{again}");

    // An incremental bundle alone: the blobs it leaves out are named, nothing is published.
    let lone = dir.path().join("lone");
    let (ok, report, _) = import(&b2, &["--root", lone.to_str().unwrap()]);
    assert!(!ok, "{report}");
    assert!(report["errors"].to_string().contains("no blob"), "{report}");
    let lone_site = Server::start_on(&lone, &[]);
    assert_eq!(
        status(&c, lone_site.url("/v2/mirror/alpine/manifests/3.20")).await,
        404
    );

    // A tampered bundle (one byte of a layer flipped) and a truncated one are refused.
    let mut bytes = std::fs::read(&b1).unwrap();
    let m = get_json(&site.url(&format!("/v2/mirror/alpine/manifests/{amd21}"))).await;
    let layer = m["layers"][1]["digest"].as_str().unwrap().to_owned();
    let hex = layer.trim_start_matches("sha256:");
    let name_at = bytes
        .windows(hex.len())
        .position(|w| w == hex.as_bytes())
        .expect("the layer's entry");
    let data_at = (name_at / 512 + 1) * 512; // the header's block, then the data
    bytes[data_at + 100] ^= 0xff;
    let tampered = dir.path().join("tampered.tar");
    std::fs::write(&tampered, &bytes).unwrap();
    let fresh = dir.path().join("fresh");
    let (ok, report, _) = import(&tampered, &["--root", fresh.to_str().unwrap()]);
    assert!(!ok, "{report}");
    let e = report["errors"].to_string();
    assert!(e.contains(hex), "the bad blob is named: {e}");
    let fresh_site = Server::start_on(&fresh, &[]);
    assert_eq!(
        status(&c, fresh_site.url("/v2/mirror/alpine/manifests/3.21")).await,
        404
    );
    let truncated = dir.path().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, _, err) = import(&truncated, &["--root", fresh.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("truncated"), "{err}");

    // A source that sends wrong bytes: no bundle, and nothing half-written left beside it.

    push_index(&c, &source, repo, "3.23").await;
    faults.set(Mode::Corrupt);
    let b3 = dir.path().join("b3.tar");
    let (ok, report, _) = export(&b3, Some(&b2));
    assert!(!ok, "{report}");
    assert!(report["errors"].to_string().contains("digest"), "{report}");
    assert!(!b3.exists() && !dir.path().join("b3.partial").exists());
}

/// The media type a manifest's bytes declare.
struct Manifest;

impl Manifest {
    fn media(raw: &[u8]) -> String {
        let v: Value = serde_json::from_slice(raw).unwrap();
        v["mediaType"].as_str().unwrap_or_default().to_owned()
    }
}

/// kill -9 in the middle of a sync (a slow source) leaves nothing torn, and the next sync
/// finishes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_killed_mid_copy_is_finished_by_the_next() {
    let c = client();
    let source = Server::start();
    // A 4 MiB layer: at the trickle's pace (2.5 MB/s) its copy takes over a second.
    let big = noise(4 << 20, 0);
    let config = br#"{"os":"linux","architecture":"amd64"}"#;
    let (_, digest) = push_image_of(&c, &source, "team/app", "1.0", config, &[&big]).await;
    let faults = Faults::start(source.host()).await;
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set.yaml");
    std::fs::write(
        &set,
        format!(
            "mirrors:\n  - source: {}/team/app\n    newest: 1\n",
            faults.url()
        ),
    )
    .unwrap();
    let root = dir.path().join("dest");
    faults.set(Mode::Trickle { cut: false });
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["mirror", "sync", "--json", "--config"])
        .arg(&set)
        .arg("--root")
        .arg(&root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let layer = sha256(&big);
    assert!(
        wait_until(std::time::Duration::from_secs(10), || {
            faults.count("GET", &layer, 200) > 0
        }),
        "the sync started copying the layer"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL, with the layer half copied
    child.wait().unwrap();
    assert_blob_store_consistent(&root);
    let dest = Server::start_on(&root, &[]);
    assert_eq!(
        status(&c, dest.url("/v2/team/app/manifests/1.0")).await,
        404
    );

    faults.set(Mode::Pass);
    let (ok, report, err) = sync(&set, &root);
    assert!(ok, "{err}");
    assert_eq!(report["images"], 1, "{report}");
    let r = c
        .get(dest.url("/v2/team/app/manifests/1.0"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
    let r = c
        .get(dest.url(&format!("/v2/team/app/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.unwrap() == big, "the layer, whole");
    assert_blob_store_consistent(&root);
}

/// The operator's Mirror Job, run here as rendered: its set file (the ConfigMap's) and its
/// command line, with the in-cluster paths and URL swapped for local ones, push into a Berth
/// with auth as the Registry's generated admin, and the report it writes to the termination
/// message is the one the operator's status parser reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_mirror_job_runs_as_rendered_and_reports_what_the_status_reads() {
    use berth::operator::crd::{Mirror, Registry};
    use berth::operator::resources::{Defaults, mirror_job, set_config_map};
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let source = Server::start();
    let (_, want) = push_image(&c, &source, "library/app", "1.0", "app").await;
    push_image(&c, &source, "library/app", "0.9", "old").await;
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd, &[("admin", "s3cret")]);
    let dest = Server::start_with(&["--htpasswd", htpasswd.to_str().unwrap()]);

    let m: Mirror = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Mirror",
        "metadata": {"name": "apps", "namespace": "team", "uid": "u", "generation": 1},
        "spec": {"registryRef": {"name": "hub"}, "mirrors": [
            {"source": source.url("/library/app"), "tags": ["1\\.0"], "destination": "mirror/app"}]},
    }))
    .unwrap();
    let reg: Registry = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Registry",
        "metadata": {"name": "hub", "namespace": "team", "uid": "r"},
        "spec": {"storage": {"pvc": {"size": "1Gi"}}, "auth": {"admin": {}}},
    }))
    .unwrap();
    let set = dir.path().join("set.yaml");
    let cm = set_config_map(&m).unwrap();
    std::fs::write(&set, &cm.data.unwrap()["set.yaml"]).unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret").unwrap();
    let report = dir.path().join("termination-log");
    let job = serde_json::to_value(mirror_job(&m, &reg, &Defaults { image: "x".into() }).unwrap())
        .unwrap();
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    let user = container["env"][0]["value"].as_str().unwrap().to_owned();
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| match a.as_str().unwrap() {
            "/etc/berth-mirror/set.yaml" => set.display().to_string(),
            "http://hub.team.svc:5000" => dest.url(""),
            "$(BERTH_MIRROR_USER)" => user.clone(),
            "/etc/berth-mirror-push/password" => password.display().to_string(),
            "/dev/termination-log" => report.display().to_string(),
            other => other.to_owned(),
        })
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&report).unwrap();
    let r: berth::operator::mirror::SyncReport =
        berth::operator::jobs::parse_report(&text).expect("the status parser reads the report");
    assert_eq!((r.images, r.error_count), (1, 0), "{text}");
    assert!(r.bytes_copied > 0);
    let head = c
        .head(dest.url("/v2/mirror/app/manifests/1.0"))
        .header("authorization", basic("admin", "s3cret"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["docker-content-digest"], want.as_str());
}

/// A tag listed by the source but gone when fetched is skipped and counted, not failed; the
/// rest of the set is copied. Into CNCF Distribution over its API, which skopeo then reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_gone_from_the_source_is_skipped_and_distribution_takes_the_rest() {
    common::needs::need("skopeo");
    let c = client();
    let source = Server::start();
    let (_, kept) = push_image(&c, &source, "team/app", "1.0", "kept").await;
    push_image(&c, &source, "team/app", "1.1", "deleted meanwhile").await;
    let faults = Faults::start(source.host()).await;
    faults.set(Mode::Gone("/manifests/1.1"));
    let dir = tempfile::tempdir().unwrap();
    let dist = Distribution::start(dir.path());
    let set = dir.path().join("set.yaml");
    std::fs::write(
        &set,
        format!(
            "mirrors:\n  - source: {}/team/app\n    tags: [\"1\\\\..*\"]\n",
            faults.url()
        ),
    )
    .unwrap();
    let (ok, report, err) = sync_into(&set, &["--to", &dist.url()]);
    assert!(ok, "{err}");
    assert_eq!(
        (report["images"].clone(), report["tagsVanished"].clone()),
        (json!(1), json!(1)),
        "{report}"
    );
    assert!(err.contains("gone from their source"), "{err}");
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://127.0.0.1:{}/team/app:1.0", dist.port),
    ]);
    assert_eq!(sha256(&raw), kept);
}

/// Unmounts a tmpfs however the test ends.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(
            ok,
            "mount a tmpfs at {} (this test runs as root)",
            at.display()
        );
        Tmpfs(at.to_owned())
    }

    fn grow(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A destination whose storage fills up refuses with 507 and says why, keeps nothing torn,
/// and once it has room the same sync finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_fills_up_refuses_clearly_and_the_next_sync_finishes() {
    let c = client();
    let source = Server::start();
    let big = noise(6 << 20, 0);
    let config = br#"{"os":"linux","architecture":"amd64"}"#;
    let (_, digest) = push_image_of(&c, &source, "team/app", "1.0", config, &[&big]).await;
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "3m");
    let root = dir.path().join("disk/data");
    let dest = Server::start_on(&root, &[]);
    let set = dir.path().join("set.yaml");
    std::fs::write(
        &set,
        format!(
            "mirrors:\n  - source: {}/team/app\n    newest: 1\n",
            source.url("")
        ),
    )
    .unwrap();
    let (ok, report, _) = sync_into(&set, &["--to", &dest.url("")]);
    assert!(!ok, "a full destination fails the sync");
    let e = report["errors"].to_string();
    assert!(e.contains("507") && e.contains("storage is full"), "{e}");
    assert_eq!(
        status(&c, dest.url("/v2/team/app/manifests/1.0")).await,
        404
    );
    assert_blob_store_consistent(&root);

    disk.grow("64m");
    let (ok, report, err) = sync_into(&set, &["--to", &dest.url("")]);
    assert!(ok, "{err}");
    assert_eq!(report["images"], 1, "{report}");
    let r = c
        .get(dest.url("/v2/team/app/manifests/1.0"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
    drop(dest);
    assert_blob_store_consistent(&root);
}

/// `mirror import` killed with SIGKILL midway leaves nothing torn or half-visible, and the
/// same import run again finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_midway_is_finished_by_the_next() {
    let c = client();
    let source = Server::start();
    let mut digests = Vec::new();
    for i in 0..6u32 {
        let layer = noise(24 << 20, i);
        let config = format!(r#"{{"os":"linux","architecture":"amd64","n":{i}}}"#);
        let (_, d) = push_image_of(
            &c,
            &source,
            "team/big",
            &format!("1.{i}"),
            config.as_bytes(),
            &[&layer],
        )
        .await;
        digests.push(d);
    }
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set.yaml");
    std::fs::write(
        &set,
        format!(
            "mirrors:\n  - source: {}/team/big\n    tags: [\".*\"]\n",
            source.url("")
        ),
    )
    .unwrap();
    let bundle = dir.path().join("big.tar");
    let (ok, _, err) = mirror(&[
        "export",
        "--config",
        set.to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let root = dir.path().join("dest");
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["mirror", "import", "--json"])
        .arg(&bundle)
        .arg("--root")
        .arg(&root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once some of the 144 MiB has landed, before all of it has.
    let landed = |root: &Path| -> u64 {
        walk(&root.join("blobs"))
            .iter()
            .map(|p| p.metadata().map_or(0, |m| m.len()))
            .sum()
    };
    assert!(
        wait_until(std::time::Duration::from_secs(30), || landed(&root)
            > 24 << 20),
        "the import started"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(landed(&root) < 140 << 20, "killed midway");
    assert_blob_store_consistent(&root);
    {
        let dest = Server::start_on(&root, &[]);
        let tags: Value = get_json(&dest.url("/v2/team/big/tags/list")).await;
        // Whatever is tagged is whole: each tag's manifest and layer are there.
        for t in tags["tags"].as_array().into_iter().flatten() {
            let r = c
                .get(dest.url(&format!("/v2/team/big/manifests/{}", t.as_str().unwrap())))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap();
            let m: Value = r.json().await.unwrap();
            let layer = m["layers"][0]["digest"].as_str().unwrap();
            let r = c
                .head(dest.url(&format!("/v2/team/big/blobs/{layer}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "tag {t} is whole");
        }
    }
    let (ok, report, err) = mirror(&[
        "import",
        bundle.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(report["images"], 6, "{report}");
    let dest = Server::start_on(&root, &[]);
    for (i, d) in digests.iter().enumerate() {
        let r = c
            .head(dest.url(&format!("/v2/team/big/manifests/1.{i}")))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    }
    drop(dest);
    assert_blob_store_consistent(&root);
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// On a terminal (a pty from util-linux's `script`) a sync draws a bar under a line per image;
/// in a log it prints the lines only, no escape codes; with `--json`, only the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_a_bar_on_a_terminal_and_plain_lines_in_a_log() {
    let c = client();
    let source = Server::start();
    for t in ["1.0", "1.1", "1.2"] {
        push_image(&c, &source, "team/app", t, t).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set.yaml");
    std::fs::write(
        &set,
        format!(
            "mirrors:\n  - source: {}/team/app\n    tags: [\".*\"]\n",
            source.url("")
        ),
    )
    .unwrap();
    let cmd = |root: &str| {
        format!(
            "{} mirror sync --config {} --root {}",
            env!("CARGO_BIN_EXE_berth"),
            set.display(),
            dir.path().join(root).display()
        )
    };
    let typescript = dir.path().join("typescript");
    let ok = Command::new("script")
        .args(["-qec", &cmd("a")])
        .arg(&typescript)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let seen = std::fs::read_to_string(&typescript).unwrap();
    assert!(seen.contains("\x1b[2K["), "a bar: {seen:?}");
    assert!(seen.contains("] 3/3 images"), "{seen:?}");
    assert_eq!(
        seen.matches("berth mirror: team/app:1.").count(),
        3,
        "{seen:?}"
    );

    let out = Command::new("sh").args(["-c", &cmd("b")]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success());
    assert!(!log.contains('\x1b'), "no escape codes in a log: {log:?}");
    assert_eq!(log.matches("berth mirror: team/app:1.").count(), 3, "{log}");

    let (ok, _, quiet) = sync(&set, &dir.path().join("c"));
    assert!(ok);
    assert!(
        !quiet.contains("team/app:1."),
        "--json prints no progress: {quiet}"
    );
}

/// `newest: N` with `newestBy: created` takes the images built last (their configs'
/// `created`), whatever their version numbers say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_by_created_takes_the_images_built_last() {
    let c = client();
    let source = Server::start();
    for (tag, created) in [
        ("9.0", "2024-01-01T00:00:00Z"),
        ("1.0", "2026-06-01T00:00:00.123456Z"),
        ("2.0", "2026-03-01T00:00:00Z"),
        ("3.0", "2025-01-01T00:00:00Z"),
    ] {
        let config = format!(r#"{{"os":"linux","architecture":"amd64","created":"{created}"}}"#);
        let layer = format!("layer of {tag}");
        push_image_of(
            &c,
            &source,
            "team/app",
            tag,
            config.as_bytes(),
            &[layer.as_bytes()],
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set.yaml");
    std::fs::write(
        &set,
        format!(
            "mirrors:\n  - source: {}/team/app\n    newest: 2\n    newestBy: created\n",
            source.url("")
        ),
    )
    .unwrap();
    let root = dir.path().join("dest");
    let (ok, report, err) = sync(&set, &root);
    assert!(ok, "{err}");
    assert_eq!(report["images"], 2, "{report}");
    let dest = Server::start_on(&root, &[]);
    let tags = get_json(&dest.url("/v2/team/app/tags/list")).await;
    let mut got: Vec<&str> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, ["1.0", "2.0"]);
    // Without newestBy, newest is by version.
    std::fs::write(
        &set,
        format!(
            "mirrors:\n  - source: {}/team/app\n    newest: 1\n",
            source.url("")
        ),
    )
    .unwrap();
    let (ok, _, _) = sync(&set, &dir.path().join("by-version"));
    assert!(ok);
    let dest = Server::start_on(&dir.path().join("by-version"), &[]);
    let tags = get_json(&dest.url("/v2/team/app/tags/list")).await;
    assert_eq!(tags["tags"], json!(["9.0"]));
    // newestBy without newest is a mistake named in one line.
    std::fs::write(
        &set,
        format!(
            "mirrors:\n  - source: {}/team/app\n    tags: [\".*\"]\n    newestBy: created\n",
            source.url("")
        ),
    )
    .unwrap();
    let (ok, _, err) = sync(&set, &dir.path().join("x"));
    assert!(!ok && err.contains("mirrors[0].newestBy"), "{err}");
}
