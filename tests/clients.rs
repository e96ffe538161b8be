//! Real clients against a real `berth serve`: the Docker Engine, skopeo and the `oci-client`
//! crate each push and pull through the registry, and what comes back must be what went in.
//!
//! docker and skopeo are required: a test fails (never skips) when its tool is missing.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{OCI_INDEX, OCI_MANIFEST, Server, client, get_json, sha256};
use serde_json::{Value, json};

/// Bound on any one external command.
const TOOL_TIMEOUT: Duration = Duration::from_secs(45);

// ---------------------------------------------------------------------------------------------
// Running external tools
// ---------------------------------------------------------------------------------------------

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion (killing it after `TOOL_TIMEOUT`), capturing its output.
fn run(cmd: &mut Command) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not run {desc}: {e}"));
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let end = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for tool") {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{desc} did not finish within {TOOL_TIMEOUT:?}\n--- stdout\n{}\n--- stderr\n{}",
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        ok: status.success(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// A Berth caching `upstream` under `prefix`, on a fresh directory (returned: keep it alive).
fn pull_through_cache(upstream: &Server, prefix: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cache.yaml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  filesystem:\n    root: {}\nproxy:\n  upstreams:\n    - prefix: {prefix}\n      url: http://{}\n",
            dir.path().join("cache").display(),
            upstream.host()
        ),
    )
    .unwrap();
    let cache = Server::start_config(&cfg, &[]);
    (dir, cache)
}

/// Runs `cmd` and panics with its output unless it succeeds; returns stdout.
fn run_ok(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let o = run(cmd);
    assert!(
        o.ok,
        "{desc} failed\n--- stdout\n{}\n--- stderr\n{}",
        o.stdout, o.stderr
    );
    o.stdout
}

fn require_docker() {
    common::needs::need("docker");
}

fn docker() -> Command {
    let mut c = Command::new("docker");
    // No buildx here: use the classic builder, which handles `FROM scratch` offline.
    c.env("DOCKER_BUILDKIT", "0");
    c
}

fn skopeo() -> Command {
    Command::new("skopeo")
}

/// Removes the docker images and containers a test created, even when it panics.
#[derive(Default)]
struct DockerCleanup {
    images: Vec<String>,
    containers: Vec<String>,
}

impl DockerCleanup {
    fn image(&mut self, r: &str) {
        self.images.push(r.to_owned());
    }
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = run(docker().args(["rm", "-f", c]));
        }
        // Most specific first: names, then IDs (which also drop any tag still left).
        for i in self.images.iter().rev() {
            let _ = run(docker().args(["rmi", "-f", i]));
        }
    }
}

/// `docker image inspect --format <fmt> <r>`, or None when the image is not there.
fn docker_inspect(r: &str, fmt: &str) -> Option<String> {
    let o = run(docker().args(["image", "inspect", "--format", fmt, r]));
    o.ok.then(|| o.stdout.trim().to_owned())
}

fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

// ---------------------------------------------------------------------------------------------
// 1. docker push / pull
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn docker_push_pull_roundtrip() {
    require_docker();
    let s = Server::start();
    let host = s.host().to_owned();
    let mut cleanup = DockerCleanup::default();

    // A two-layer image, the second a few MiB (several write batches on the server, and more
    // than one chunk for docker); the nonce keeps layers and image IDs apart across parallel
    // runs.
    let n = nonce();
    let ctx = tempfile::tempdir().unwrap();
    let hello = format!("hello from berth {n}\n");
    let mut two = vec![0u8; 3 * 1024 * 1024 + 333];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut two);
    std::fs::write(ctx.path().join("hello.txt"), &hello).unwrap();
    std::fs::write(ctx.path().join("two.bin"), &two).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /hello.txt\nCOPY two.bin /two.bin\n",
    )
    .unwrap();

    let name = format!("{host}/test/hello");
    let tag = format!("{name}:v1");
    cleanup.image(&tag);
    run_ok(docker().args(["build", "-q", "-t", &tag]).arg(ctx.path()));
    let image_id = docker_inspect(&tag, "{{.Id}}").expect("built image");
    cleanup.images.insert(0, image_id.clone());

    // Push, and read the manifest digest docker reports.
    let out = run_ok(docker().args(["push", &tag]));
    let digest = out
        .lines()
        .find_map(|l| {
            let rest = l.split("digest: ").nth(1)?;
            Some(rest.split_whitespace().next()?.to_owned())
        })
        .unwrap_or_else(|| panic!("no digest in docker push output:\n{out}"));
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    let by_digest = format!("{name}@{digest}");
    cleanup.image(&by_digest);
    assert_eq!(
        docker_inspect(&tag, "{{index .RepoDigests 0}}").as_deref(),
        Some(by_digest.as_str())
    );

    // What the registry holds: the pushed bytes, under that digest, whose config is the image.
    let c = client();
    let r = c
        .get(s.url("/v2/test/hello/manifests/v1"))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        digest
    );
    let media_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    let body = r.bytes().await.unwrap();
    assert_eq!(
        sha256(&body),
        digest,
        "manifest bytes do not hash to the pushed digest"
    );
    let m: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(m["mediaType"], media_type);
    assert_eq!(
        m["config"]["digest"], image_id,
        "config digest is the image ID"
    );
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{m}");
    for l in layers {
        let d = l["digest"].as_str().unwrap();
        let r = c
            .head(s.url(&format!("/v2/test/hello/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "layer {d}");
        assert_eq!(
            r.headers()["content-length"].to_str().unwrap(),
            l["size"].to_string()
        );
    }

    // Remove it locally and pull it back by tag: same image, same repo digest.
    run_ok(docker().args(["rmi", "-f", &image_id]));
    assert!(
        docker_inspect(&tag, "{{.Id}}").is_none(),
        "image still present after rmi"
    );
    run_ok(docker().args(["pull", &tag]));
    assert_eq!(
        docker_inspect(&tag, "{{.Id}}").as_deref(),
        Some(image_id.as_str())
    );
    let repo_digests = docker_inspect(&tag, "{{json .RepoDigests}}").unwrap();
    assert!(repo_digests.contains(&by_digest), "{repo_digests}");

    // The pulled layers hold the files that were built into them.
    let cid = run_ok(docker().args(["create", &tag, "/nothing"]))
        .trim()
        .to_owned();
    cleanup.containers.push(cid.clone());
    let out_dir = tempfile::tempdir().unwrap();
    for (f, want) in [("hello.txt", hello.as_bytes()), ("two.bin", &two[..])] {
        let dst = out_dir.path().join(f);
        run_ok(docker().args(["cp", &format!("{cid}:/{f}")]).arg(&dst));
        assert!(
            std::fs::read(&dst).unwrap() == want,
            "{f} differs after the round trip"
        );
    }
    run_ok(docker().args(["rm", "-f", &cid]));
    cleanup.containers.clear();

    // Pushing the same image to another repository mounts its layers across repositories.
    let other = format!("{host}/test/other:v1");
    cleanup.images.insert(1, other.clone());
    run_ok(docker().args(["tag", &tag, &other]));
    let out = run_ok(docker().args(["push", &other]));
    assert!(
        out.contains("Mounted from test/hello"),
        "docker did not mount the layers from test/hello:\n{out}"
    );
    assert!(
        out.contains(&format!("digest: {digest}")),
        "the same image pushed elsewhere has another digest:\n{out}"
    );
    run_ok(docker().args(["rmi", &other]));

    // And by digest, from nothing.
    run_ok(docker().args(["rmi", "-f", &image_id]));
    assert!(docker_inspect(&by_digest, "{{.Id}}").is_none());
    run_ok(docker().args(["pull", &by_digest]));
    assert_eq!(
        docker_inspect(&by_digest, "{{.Id}}").as_deref(),
        Some(image_id.as_str())
    );

    let tags = get_json(&s.url("/v2/test/hello/tags/list")).await;
    assert_eq!(tags["name"], "test/hello");
    assert!(
        tags["tags"].as_array().unwrap().iter().any(|t| t == "v1"),
        "{tags}"
    );
    drop(cleanup);
}

// ---------------------------------------------------------------------------------------------
// 2. skopeo both ways, over a hand-built two-platform OCI layout
// ---------------------------------------------------------------------------------------------

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid gzip stream made of stored (uncompressed) deflate blocks.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks: Vec<&[u8]> = data.chunks(65_535).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    for (i, c) in chunks.iter().enumerate() {
        out.push(u8::from(i == last));
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// A ustar archive holding regular files.
fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    fn octal(field: &mut [u8], v: u64) {
        let s = format!("{:0w$o}\0", v, w = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    }
    let mut out = Vec::new();
    for (name, data) in files {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], 0o644);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], 1_700_000_000);
        h[148..156].fill(b' ');
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// An OCI image layout, written by hand.
struct Layout {
    blobs: BTreeMap<String, Vec<u8>>,
}

impl Layout {
    fn add(&mut self, bytes: Vec<u8>) -> (String, usize) {
        let d = sha256(&bytes);
        let n = bytes.len();
        self.blobs.insert(d.clone(), bytes);
        (d, n)
    }

    fn write(&self, dir: &Path, index_json: &Value) {
        let b = dir.join("blobs/sha256");
        std::fs::create_dir_all(&b).unwrap();
        for (d, bytes) in &self.blobs {
            std::fs::write(b.join(d.strip_prefix("sha256:").unwrap()), bytes).unwrap();
        }
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        std::fs::write(dir.join("index.json"), index_json.to_string()).unwrap();
    }
}

/// Every file under `dir/blobs/sha256`, by name.
fn read_blobs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                format!("sha256:{}", e.file_name().to_str().unwrap()),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

struct Platform {
    arch: &'static str,
    variant: Option<&'static str>,
    manifest: (String, usize),
    config: String,
    layer: String,
}

#[tokio::test]
async fn skopeo_copy_both_ways() {
    common::needs::need("skopeo");
    require_docker();
    let s = Server::start();
    let host = s.host().to_owned();
    let n = nonce();
    let mut cleanup = DockerCleanup::default();

    // Two platforms, each a config and one gzip layer over a one-file tar.
    let mut layout = Layout {
        blobs: BTreeMap::new(),
    };
    let mut platforms = Vec::new();
    for (arch, variant) in [("amd64", None), ("arm64", Some("v8"))] {
        let content = format!("built for {arch} by the berth tests, {n}\n").repeat(50);
        let tar = tar(&[(&format!("{arch}.txt"), content.as_bytes())]);
        let diff_id = sha256(&tar);
        let (layer, layer_size) = layout.add(gzip_stored(&tar));
        let mut config = json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch,
            "os": "linux",
            "config": {"Labels": {"berth.test.nonce": n}},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "berth tests"}],
        });
        if let Some(v) = variant {
            config["variant"] = json!(v);
        }
        let (config, config_size) = layout.add(serde_json::to_vec(&config).unwrap());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config,
                "size": config_size,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer,
                "size": layer_size,
            }],
        });
        let manifest = layout.add(serde_json::to_vec(&manifest).unwrap());
        platforms.push(Platform {
            arch,
            variant,
            manifest,
            config,
            layer,
        });
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": platforms.iter().map(|p| {
            let mut platform = json!({"architecture": p.arch, "os": "linux"});
            if let Some(v) = p.variant {
                platform["variant"] = json!(v);
            }
            json!({
                "mediaType": OCI_MANIFEST,
                "digest": p.manifest.0,
                "size": p.manifest.1,
                "platform": platform,
            })
        }).collect::<Vec<_>>(),
    });
    let index_bytes = serde_json::to_vec(&index).unwrap();
    let (index_digest, index_size) = layout.add(index_bytes.clone());
    let src = tempfile::tempdir().unwrap();
    layout.write(
        src.path(),
        &json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": OCI_INDEX,
                "digest": index_digest,
                "size": index_size,
                "annotations": {"org.opencontainers.image.ref.name": "v1"},
            }],
        }),
    );

    // Layout -> registry.
    let remote = format!("docker://{host}/multi/app:v1");
    run_ok(
        skopeo()
            .args(["copy", "--all", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:v1", src.path().display()))
            .arg(&remote),
    );

    // The index comes back byte for byte, and so does each child by digest.
    let raw = run_ok(skopeo().args(["inspect", "--tls-verify=false", "--raw", &remote]));
    assert_eq!(
        raw.as_bytes(),
        index_bytes.as_slice(),
        "skopeo inspect --raw did not print the pushed index"
    );
    let c = client();
    for p in &platforms {
        let r = c
            .get(s.url(&format!("/v2/multi/app/manifests/{}", p.manifest.0)))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
        assert_eq!(
            &r.bytes().await.unwrap()[..],
            &layout.blobs[&p.manifest.0][..]
        );
    }

    // The non-raw inspect resolves the index to the linux/amd64 image.
    let out = run_ok(
        skopeo()
            .args(["--override-os", "linux", "--override-arch", "amd64"])
            .args(["inspect", "--tls-verify=false", &remote]),
    );
    let info: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(info["Architecture"], "amd64", "{info}");
    assert_eq!(info["Os"], "linux", "{info}");
    assert_eq!(info["Digest"], index_digest, "{info}");
    assert_eq!(info["Layers"], json!([platforms[0].layer]), "{info}");
    assert_eq!(info["Labels"]["berth.test.nonce"], n, "{info}");
    let tags = get_json(&s.url("/v2/multi/app/tags/list")).await;
    assert_eq!(tags["tags"], json!(["v1"]));
    let out = run_ok(skopeo().args([
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{host}/multi/app"),
    ]));
    let listed: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(listed["Tags"], json!(["v1"]), "{listed}");

    // Registry -> a fresh layout: the same index and the very same blob files.
    let back = tempfile::tempdir().unwrap();
    run_ok(
        skopeo()
            .args(["copy", "--all", "--src-tls-verify=false", &remote])
            .arg(format!("oci:{}:v1", back.path().display())),
    );
    let back_index: Value =
        serde_json::from_slice(&std::fs::read(back.path().join("index.json")).unwrap()).unwrap();
    let entry = back_index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "v1")
        .unwrap_or_else(|| panic!("no v1 in the copied index.json: {back_index}"));
    assert_eq!(entry["digest"], index_digest);
    assert_eq!(entry["mediaType"], OCI_INDEX);
    let got = read_blobs(back.path());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        layout.blobs.keys().collect::<Vec<_>>(),
        "the copied layout holds a different set of blobs"
    );
    for (d, bytes) in &layout.blobs {
        assert!(got[d] == *bytes, "blob {d} differs after the round trip");
    }

    // Docker pulls the index and picks its own platform, linux/amd64.
    let tag = format!("{host}/multi/app:v1");
    cleanup.image(&tag);
    cleanup.images.insert(0, platforms[0].config.clone());
    run_ok(docker().args(["pull", &tag]));
    let got = docker_inspect(&tag, "{{.Os}}/{{.Architecture}} {{.Id}}").unwrap();
    assert_eq!(got, format!("linux/amd64 {}", platforms[0].config));
    let repo_digests = docker_inspect(&tag, "{{json .RepoDigests}}").unwrap();
    assert!(
        repo_digests.contains(&format!("{host}/multi/app@{index_digest}")),
        "{repo_digests}"
    );
    drop(cleanup);
}

// ---------------------------------------------------------------------------------------------
// 3. the oci-client crate
// ---------------------------------------------------------------------------------------------

mod oci {
    use super::*;
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::manifest::{IMAGE_LAYER_MEDIA_TYPE, OciImageManifest, OciManifest};
    use oci_client::secrets::RegistryAuth;
    use oci_client::{Client, Reference};
    use rand::RngCore;

    fn oci_client(monolithic: bool) -> Client {
        Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            use_monolithic_push: monolithic,
            ..Default::default()
        })
    }

    fn random_bytes(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        rand::rng().fill_bytes(&mut v);
        v
    }

    #[tokio::test]
    async fn oci_client_push_pull() {
        let s = Server::start();
        let host = s.host().to_owned();
        let auth = RegistryAuth::Anonymous;
        let reference: Reference = format!("{host}/oci/client:v1").parse().unwrap();
        let chunked = oci_client(false);

        // An image: two layers (one larger than a read batch) and a config.
        let layers = vec![
            ImageLayer::oci_v1(b"a small first layer".to_vec(), None),
            ImageLayer::oci_v1(random_bytes(1_500_000), None),
        ];
        let config_json = json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.sha256_digest()).collect::<Vec<_>>()},
        })
        .to_string();
        let config = Config::oci_v1(config_json.clone().into_bytes(), None);
        let manifest = OciImageManifest::build(&layers, &config, None);
        let pushed = chunked
            .push(
                &reference,
                &layers,
                config.clone(),
                &auth,
                Some(manifest.clone()),
            )
            .await
            .expect("push image");
        assert!(
            pushed
                .manifest_url
                .starts_with(&format!("http://{host}/v2/oci/client/manifests/sha256:")),
            "{}",
            pushed.manifest_url
        );

        // Pull it back whole.
        let image = chunked
            .pull(&reference, &auth, vec![IMAGE_LAYER_MEDIA_TYPE])
            .await
            .expect("pull image");
        assert_eq!(image.layers.len(), 2);
        // oci-client downloads layers concurrently and returns them in the order they finish:
        // match them by digest.
        for want in &layers {
            let got = image
                .layers
                .iter()
                .find(|l| l.sha256_digest() == want.sha256_digest())
                .unwrap_or_else(|| panic!("layer {} not pulled", want.sha256_digest()));
            assert_eq!(got.media_type, want.media_type);
            assert!(got.data == want.data, "layer bytes differ");
        }
        assert_eq!(image.config.data, config.data);
        let digest = image.digest.clone().expect("pulled digest");
        assert!(
            pushed.manifest_url.ends_with(&digest),
            "{} vs {digest}",
            pushed.manifest_url
        );
        assert_eq!(
            chunked
                .fetch_manifest_digest(&reference, &auth)
                .await
                .unwrap(),
            digest
        );

        // The manifest and config on their own.
        let (m, d, cfg) = chunked
            .pull_manifest_and_config(&reference, &auth)
            .await
            .expect("pull manifest and config");
        assert_eq!(d, digest);
        assert_eq!(cfg, config_json);
        assert_eq!(m.config.digest, config.sha256_digest());
        let got: Vec<_> = m
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.size))
            .collect();
        let want: Vec<_> = layers
            .iter()
            .map(|l| (l.sha256_digest(), l.data.len() as i64))
            .collect();
        assert_eq!(got, want);

        // Another tag for the same manifest, then the tag list, whole and paginated.
        let v2: Reference = format!("{host}/oci/client:v2").parse().unwrap();
        chunked
            .push_manifest(&v2, &OciManifest::Image(manifest.clone()))
            .await
            .expect("push manifest under v2");
        let tags = chunked
            .list_tags(&reference, &auth, None, None)
            .await
            .unwrap();
        assert_eq!(tags.name, "oci/client");
        assert_eq!(tags.tags, vec!["v1", "v2"]);
        let page = chunked
            .list_tags(&reference, &auth, Some(1), None)
            .await
            .unwrap();
        assert_eq!(page.tags, vec!["v1"]);
        let page = chunked
            .list_tags(&reference, &auth, Some(1), Some("v1"))
            .await
            .unwrap();
        assert_eq!(page.tags, vec!["v2"]);

        // Lone blobs of ~5 MiB: chunked (4 MiB + the rest) and monolithic.
        for (how, c) in [("chunked", &chunked), ("monolithic", &oci_client(true))] {
            let data = random_bytes(5 * 1024 * 1024 + 12_345);
            let digest = sha256(&data);
            c.push_blob(&reference, &data, &digest)
                .await
                .unwrap_or_else(|e| panic!("{how} push_blob: {e}"));
            let mut out: Vec<u8> = Vec::new();
            c.pull_blob(&reference, digest.as_str(), &mut out)
                .await
                .unwrap_or_else(|e| panic!("{how} pull_blob: {e}"));
            assert_eq!(out.len(), data.len(), "{how}");
            assert_eq!(sha256(&out), digest, "{how}");
        }
    }
    /// oci-client pulls an image through the pull-through cache by tag and by digest, whole and
    /// blob by blob, cold and then warm with the upstream gone; what it gets is what was pushed.
    #[tokio::test]
    async fn oci_client_pulls_through_the_cache() {
        let upstream = Server::start();
        let auth = RegistryAuth::Anonymous;
        let client = oci_client(false);
        let layers = vec![
            ImageLayer::oci_v1(random_bytes(3 << 20), None),
            ImageLayer::oci_v1(b"a small second layer".to_vec(), None),
        ];
        let config = Config::oci_v1(br#"{"architecture":"arm64","os":"linux"}"#.to_vec(), None);
        let manifest = OciImageManifest::build(&layers, &config, None);
        let pushed: Reference = format!("{}/lib/tool:1.0", upstream.host()).parse().unwrap();
        client
            .push(&pushed, &layers, config.clone(), &auth, Some(manifest))
            .await
            .expect("push to the upstream");

        let (_dir, cache) = pull_through_cache(&upstream, "mirror.example");
        let through: Reference = format!("{}/mirror.example/lib/tool:1.0", cache.host())
            .parse()
            .unwrap();
        let check = |image: &oci_client::client::ImageData| {
            assert_eq!(image.layers.len(), layers.len());
            for want in &layers {
                let got = image
                    .layers
                    .iter()
                    .find(|l| l.sha256_digest() == want.sha256_digest())
                    .unwrap_or_else(|| panic!("layer {} not pulled", want.sha256_digest()));
                assert!(got.data == want.data, "layer bytes differ");
            }
            assert_eq!(image.config.data, config.data);
        };
        let cold = client
            .pull(&through, &auth, vec![IMAGE_LAYER_MEDIA_TYPE])
            .await
            .expect("cold pull through the cache");
        check(&cold);
        let digest = cold.digest.clone().expect("pulled digest");
        assert_eq!(
            client.fetch_manifest_digest(&pushed, &auth).await.unwrap(),
            digest,
            "the cache serves the upstream's manifest bytes"
        );

        // The upstream goes away: by tag, by digest and blob by blob, all from the cache.
        drop(upstream);
        check(
            &client
                .pull(&through, &auth, vec![IMAGE_LAYER_MEDIA_TYPE])
                .await
                .expect("warm pull by tag"),
        );
        let by_digest: Reference = format!("{}/mirror.example/lib/tool@{digest}", cache.host())
            .parse()
            .unwrap();
        check(
            &client
                .pull(&by_digest, &auth, vec![IMAGE_LAYER_MEDIA_TYPE])
                .await
                .expect("warm pull by digest"),
        );
        let mut out = Vec::new();
        client
            .pull_blob(&through, layers[0].sha256_digest().as_str(), &mut out)
            .await
            .expect("pull_blob from the cache");
        assert!(out == layers[0].data, "pull_blob bytes differ");
        // Nothing new can come from a gone upstream: a clear error, not a hang or a 500.
        let missing: Reference = format!("{}/mirror.example/lib/tool:2.0", cache.host())
            .parse()
            .unwrap();
        let Err(err) = client
            .pull(&missing, &auth, vec![IMAGE_LAYER_MEDIA_TYPE])
            .await
        else {
            panic!("a tag never cached was pulled with the upstream gone");
        };
        assert!(
            err.to_string().contains("UNAVAILABLE") || err.to_string().contains("503"),
            "{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. docker pull through the pull-through cache
// ---------------------------------------------------------------------------------------------

/// The Docker engine pulls an image through the cache's prefix; with the upstream gone, a
/// second pull is served from what the first one cached.
#[tokio::test]
async fn docker_pulls_through_the_cache_and_again_with_the_upstream_gone() {
    require_docker();
    let upstream = Server::start();
    let mut cleanup = DockerCleanup::default();
    let n = nonce();
    let ctx = tempfile::tempdir().unwrap();
    let payload = format!("cached by berth {n}\n").repeat(50_000);
    std::fs::write(ctx.path().join("payload.txt"), &payload).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY payload.txt /payload.txt\n",
    )
    .unwrap();
    let pushed = format!("{}/test/cached:v1", upstream.host());
    cleanup.image(&pushed);
    run_ok(
        docker()
            .args(["build", "-q", "-t", &pushed])
            .arg(ctx.path()),
    );
    let image_id = docker_inspect(&pushed, "{{.Id}}").expect("built image");
    cleanup.images.insert(0, image_id.clone());
    run_ok(docker().args(["push", &pushed]));

    let (_dir, cache) = pull_through_cache(&upstream, "up.local");
    let through = format!("{}/up.local/test/cached:v1", cache.host());
    cleanup.image(&through);
    run_ok(docker().args(["rmi", "-f", &image_id]));
    let pull_and_check = |cleanup: &mut DockerCleanup| {
        run_ok(docker().args(["pull", &through]));
        assert_eq!(
            docker_inspect(&through, "{{.Id}}").as_deref(),
            Some(image_id.as_str())
        );
        let cid = run_ok(docker().args(["create", &through, "/nothing"]))
            .trim()
            .to_owned();
        cleanup.containers.push(cid.clone());
        let out = tempfile::tempdir().unwrap();
        let dst = out.path().join("payload.txt");
        run_ok(
            docker()
                .args(["cp", &format!("{cid}:/payload.txt")])
                .arg(&dst),
        );
        assert!(
            std::fs::read(&dst).unwrap() == payload.as_bytes(),
            "payload differs"
        );
        run_ok(docker().args(["rm", "-f", &cid]));
        cleanup.containers.clear();
        run_ok(docker().args(["rmi", "-f", &image_id]));
    };
    pull_and_check(&mut cleanup);
    drop(upstream);
    pull_and_check(&mut cleanup);
}
