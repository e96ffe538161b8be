//! Berth on S3 (Garage, started on loopback by the tests): several replicas on one bucket act as
//! one registry, uploads continue across replicas, and a bucket that goes away gives clear 503s
//! and loses nothing. Garage is required: these tests fail (never skip) without it; `.ci/run`
//! installs it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::garage::Garage;
use common::{OCI_MANIFEST, Server, client, image_manifest, push_blob, push_image, sha256};
use serde_json::Value;

/// Writes a config file for a registry on `bucket` through Garage node `node`.
fn config(dir: &Path, g: &Garage, node: usize, bucket: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!(
        "berth-{bucket}-{node}-{}.yaml",
        rand::random::<u32>()
    ));
    let yaml = format!(
        "storage:\n  s3:\n    bucket: {bucket}\n    region: {region}\n    endpoint: {endpoint}\n    \
         accessKeyId: {key}\n    secretAccessKey: {secret}\n    partSizeMib: 5\n    \
         requestTimeoutSeconds: 20\n{extra}",
        region = g.region,
        endpoint = g.s3_endpoint(node),
        key = g.key_id,
        secret = g.secret,
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

fn bucket_name(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![0u8; n];
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    for b in v.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    v
}

async fn get_bytes(c: &reqwest::Client, url: String) -> (u16, Vec<u8>) {
    let r = c.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.bytes().await.unwrap().to_vec())
}

/// GETs a manifest as an OCI client would.
async fn get_manifest(
    c: &reqwest::Client,
    s: &Server,
    repo: &str,
    reference: &str,
) -> reqwest::Response {
    c.get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap()
}

/// Finishes an upload session at `location` with `PUT ?digest=` (no body).
async fn finish_upload(c: &reqwest::Client, s: &Server, location: &str, digest: &str) -> u16 {
    let sep = if location.contains('?') { '&' } else { '?' };
    c.put(s.url(&format!("{location}{sep}digest={digest}")))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Push through one replica, pull through the other; an upload whose chunks alternate between
/// replicas; catalog, tags and referrers agree; both replicas racing on one tag end consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_bucket_are_one_registry() {
    let g = Garage::start(1, 1);
    let bucket = bucket_name("replicas");
    g.create_bucket(&bucket);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &g, 0, &bucket, "");
    let a = Server::start_config(&cfg, &[]);
    let b = Server::start_config(&cfg, &[]);
    let c = client();

    // Push through A, pull everything through B.
    let (m, md) = push_image(&c, &a, "team/app", "v1", "replicas").await;
    let r = get_manifest(&c, &b, "team/app", "v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), md);
    assert_eq!(r.text().await.unwrap(), m);
    let mv: Value = serde_json::from_str(&m).unwrap();
    for d in [&mv["config"]["digest"], &mv["layers"][0]["digest"]] {
        let d = d.as_str().unwrap();
        let (status, body) = get_bytes(&c, b.url(&format!("/v2/team/app/blobs/{d}"))).await;
        assert_eq!(status, 200);
        assert_eq!(sha256(&body), d);
    }

    // A chunked upload whose requests alternate A, B, A, B: 12 MiB in three chunks (two full
    // parts of 5 MiB and tails carried across replicas), status checks on the other replica.
    let blob = data(12 << 20, 7);
    let digest = sha256(&blob);
    let r = c
        .post(a.url("/v2/team/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut location = r.headers()["location"].to_str().unwrap().to_owned();
    let chunks = [&blob[..3 << 20], &blob[3 << 20..9 << 20], &blob[9 << 20..]];
    let mut offset = 0usize;
    for (i, chunk) in chunks.iter().enumerate() {
        let server = if i % 2 == 0 { &a } else { &b };
        let url = if location.starts_with("http") {
            location.clone()
        } else {
            server.url(&location)
        };
        let r = c
            .patch(url)
            .header("content-type", "application/octet-stream")
            .header(
                "content-range",
                format!("{}-{}", offset, offset + chunk.len() - 1),
            )
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "chunk {i}: {:?}", r.text().await);
        offset += chunk.len();
        assert_eq!(
            r.headers()["range"].to_str().unwrap(),
            format!("0-{}", offset - 1)
        );
        location = r.headers()["location"].to_str().unwrap().to_owned();
        // The other replica sees the same progress.
        let other = if i % 2 == 0 { &b } else { &a };
        let r = c.get(other.url(&location)).send().await.unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(
            r.headers()["range"].to_str().unwrap(),
            format!("0-{}", offset - 1)
        );
    }
    // An out-of-order chunk on the other replica is refused and changes nothing.
    let r = c
        .patch(a.url(&location))
        .header("content-range", "5-9")
        .body(vec![0u8; 5])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(finish_upload(&c, &b, &location, &digest).await, 201);
    let (status, body) = get_bytes(&c, a.url(&format!("/v2/team/app/blobs/{digest}"))).await;
    assert_eq!(status, 200);
    assert!(body == blob, "the blob assembled across replicas differs");
    // Ranges come from the bucket too.
    let r = c
        .get(b.url(&format!("/v2/team/app/blobs/{digest}")))
        .header("range", "bytes=5242870-5242889")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        &blob[5_242_870..5_242_890]
    );

    // Catalog, tags and referrers agree.
    push_image(&c, &b, "team/other", "latest", "other").await;
    for s in [&a, &b] {
        let v: Value = c
            .get(s.url("/v2/_catalog"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            v["repositories"],
            serde_json::json!(["team/app", "team/other"])
        );
        let v: Value = c
            .get(s.url("/v2/team/app/tags/list"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["tags"], serde_json::json!(["v1"]));
    }
    let cfg_d = push_blob(&c, &a, "team/app", b"{}").await;
    let sig = image_manifest(
        (&cfg_d, 2),
        &[],
        &format!(
            r#","artifactType":"application/vnd.example.sig","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{md}","size":{}}}"#,
            m.len()
        ),
    );
    let r = c
        .put(a.url("/v2/team/app/manifests/sig"))
        .header("content-type", OCI_MANIFEST)
        .body(sig.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = c
        .get(b.url(&format!("/v2/team/app/referrers/{md}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["manifests"][0]["digest"], sha256(sig.as_bytes()));

    // Both replicas push different images to one tag at once, ten times: afterwards both
    // replicas name the same manifest, and it is one of the two pushed.
    for round in 0..10 {
        let (sa, sb) = (format!("a{round}"), format!("b{round}"));
        let (ra, rb) = tokio::join!(
            push_image(&c, &a, "race/tag", "latest", &sa),
            push_image(&c, &b, "race/tag", "latest", &sb),
        );
        let mut seen = Vec::new();
        for s in [&a, &b] {
            let r = c
                .head(s.url("/v2/race/tag/manifests/latest"))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            seen.push(
                r.headers()["docker-content-digest"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        assert_eq!(seen[0], seen[1], "round {round}: replicas disagree");
        assert!(
            seen[0] == ra.1 || seen[0] == rb.1,
            "round {round}: the tag names neither push"
        );
    }
}

fn require_docker() {
    common::needs::need("docker");
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `docker push` through one replica, `docker pull` through the other.
#[test]
fn docker_push_through_one_replica_pull_through_the_other() {
    require_docker();
    let g = Garage::start(1, 1);
    let bucket = bucket_name("docker");
    g.create_bucket(&bucket);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &g, 0, &bucket, "");
    let a = Server::start_config(&cfg, &[]);
    let b = Server::start_config(&cfg, &[]);
    let nonce = format!("{:016x}", rand::random::<u64>());
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("hello.txt"), format!("s3 {nonce}\n")).unwrap();
    std::fs::write(ctx.path().join("big.bin"), data(7 << 20, 3)).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /hello.txt\nCOPY big.bin /big.bin\n",
    )
    .unwrap();
    let push_ref = format!("{}/s3/hello:{nonce}", a.host());
    let pull_ref = format!("{}/s3/hello:{nonce}", b.host());
    run_ok(
        Command::new("docker")
            .args(["build", "-q", "-t", &push_ref])
            .arg(ctx.path()),
    );
    let id = run_ok(Command::new("docker").args(["inspect", "-f", "{{.Id}}", &push_ref]));
    run_ok(Command::new("docker").args(["push", &push_ref]));
    run_ok(Command::new("docker").args(["rmi", "-f", &push_ref]));
    run_ok(Command::new("docker").args(["pull", &pull_ref]));
    let pulled = run_ok(Command::new("docker").args(["inspect", "-f", "{{.Id}}", &pull_ref]));
    let _ = Command::new("docker")
        .args(["rmi", "-f", &pull_ref])
        .output();
    assert_eq!(id.trim(), pulled.trim(), "the pulled image differs");
}

/// Garage stops during a push: the client gets a clear 503 (not a hang, not a 500), /readyz
/// fails, nothing partial becomes visible, and once Garage is back the same session (or a retry)
/// completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bucket_outage_gives_503_and_loses_nothing() {
    let mut g = Garage::start(1, 1);
    let bucket = bucket_name("outage");
    g.create_bucket(&bucket);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &g, 0, &bucket, "");
    let s = Server::start_config(&cfg, &[]);
    let c = client();
    assert_eq!(c.get(s.url("/readyz")).send().await.unwrap().status(), 200);
    let before = push_image(&c, &s, "keep/me", "v1", "before outage").await;

    let blob = data(11 << 20, 9);
    let digest = sha256(&blob);
    let r = c
        .post(s.url("/v2/out/age/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let first = 6 << 20;
    let r = c
        .patch(s.url(&location))
        .header("content-range", format!("0-{}", first - 1))
        .body(blob[..first].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();

    // The second chunk streams slowly; Garage dies while it arrives.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let rest = blob[first..].to_vec();
    let feeder = tokio::spawn(async move {
        for piece in rest.chunks(256 << 10) {
            if tx.send(Ok(piece.to_vec())).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let patch = {
        let (c, url) = (c.clone(), s.url(&location));
        let len = blob.len() - first;
        tokio::spawn(async move {
            c.patch(url)
                .header("content-range", format!("{first}-{}", first + len - 1))
                .body(body)
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    g.stop_all();
    let started = Instant::now();
    match patch.await.unwrap() {
        Ok(r) => {
            assert_eq!(r.status(), 503, "a chunk during the outage");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["errors"][0]["code"], "UNAVAILABLE");
        }
        // The server may answer before it has read the whole body; the client can see that
        // as a reset connection. Either way the chunk did not land.
        Err(e) => eprintln!("PATCH during the outage failed at the client: {e}"),
    }
    feeder.abort();
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "an outage must fail requests promptly, took {:?}",
        started.elapsed()
    );
    // Every kind of request answers 503 promptly while the bucket is gone.
    let t = Instant::now();
    let r = c.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    let r = get_manifest(&c, &s, "keep/me", "v1").await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAVAILABLE");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("storage")
    );

    g.start_all();
    assert!(
        common::wait_until(Duration::from_secs(30), || {
            std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(s.url("/readyz"))
                .output()
                .map(|o| o.stdout == b"200")
                .unwrap_or(false)
        }),
        "/readyz did not recover after Garage came back"
    );
    // Nothing partial is visible, the first chunk is still held, and the push completes.
    let r = c
        .head(s.url(&format!("/v2/out/age/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c.get(s.url(&location)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["range"].to_str().unwrap(),
        format!("0-{}", first - 1)
    );
    let r = c
        .patch(s.url(&location))
        .header("content-range", format!("{first}-{}", blob.len() - 1))
        .body(blob[first..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(finish_upload(&c, &s, &location, &digest).await, 201);
    let (status, body) = get_bytes(&c, s.url(&format!("/v2/out/age/blobs/{digest}"))).await;
    assert_eq!(status, 200);
    assert!(body == blob);
    let r = get_manifest(&c, &s, "keep/me", "v1").await;
    assert_eq!(r.text().await.unwrap(), before.0);
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Wrong credentials (or an unreachable endpoint) stop `berth serve` at start-up with a message
/// that names the bucket and the problem.
#[test]
fn wrong_credentials_fail_start_up_clearly() {
    let g = Garage::start(1, 1);
    let bucket = bucket_name("creds");
    g.create_bucket(&bucket);
    let dir = tempfile::tempdir().unwrap();
    let good = config(dir.path(), &g, 0, &bucket, "");
    let text = std::fs::read_to_string(&good).unwrap();
    let cases = [
        (
            "wrong secret",
            text.replace(&g.secret, &"0".repeat(g.secret.len())),
        ),
        (
            "unknown key",
            text.replace(&g.key_id, "GK000000000000000000000000"),
        ),
        (
            "no such endpoint",
            text.replace(&g.s3_endpoint(0), "http://127.0.0.1:9"),
        ),
    ];
    for (what, yaml) in cases {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, yaml).unwrap();
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--addr", "127.0.0.1:0", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: started anyway");
        assert!(
            err.contains("cannot reach bucket") && err.contains(&bucket),
            "{what}: {err}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{what}: took {:?}",
            t.elapsed()
        );
        eprintln!("{what}: {}", err.trim());
    }
    // Both storage kinds at once is a configuration error, not a guess.
    let both = text.replace("storage:\n", "storage:\n  filesystem:\n    root: /tmp/x\n");
    let path = dir.path().join("both.yaml");
    std::fs::write(&path, both).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--addr", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not both"));
}

/// A three-node Garage cluster (replication factor 3) loses one node mid-run: pushes and pulls
/// through two replicas, each on a different Garage node, still succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_node_garage_survives_losing_a_node() {
    let mut g = Garage::start(3, 3);
    let bucket = bucket_name("cluster");
    g.create_bucket(&bucket);
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start_config(&config(dir.path(), &g, 0, &bucket, ""), &[]);
    let b = Server::start_config(&config(dir.path(), &g, 1, &bucket, ""), &[]);
    let c = client();
    let before = push_image(&c, &a, "ha/app", "before", "three nodes").await;
    let big = data(9 << 20, 5);
    let big_d = push_blob(&c, &a, "ha/app", &big).await;

    g.stop_node(2);
    let after = push_image(&c, &b, "ha/app", "after", "two nodes").await;
    let big2 = data(6 << 20, 6);
    let big2_d = push_blob(&c, &b, "ha/app", &big2).await;
    for s in [&a, &b] {
        for (tag, (m, _)) in [("before", &before), ("after", &after)] {
            let r = get_manifest(&c, s, "ha/app", tag).await;
            assert_eq!(r.status(), 200);
            assert_eq!(&r.text().await.unwrap(), m);
        }
        for (d, bytes) in [(&big_d, &big), (&big2_d, &big2)] {
            let (status, body) = get_bytes(&c, s.url(&format!("/v2/ha/app/blobs/{d}"))).await;
            assert_eq!(status, 200);
            assert!(&body == bytes, "blob {d} differs with a node down");
        }
    }
    // The node comes back; everything is still there.
    g.start_node(2);
    let (status, body) = get_bytes(&c, b.url(&format!("/v2/ha/app/blobs/{big_d}"))).await;
    assert_eq!(status, 200);
    assert!(body == big);
}

/// With `redirect: true`, blob GETs answer 307 to a presigned URL that serves the bytes.
#[tokio::test]
async fn redirect_to_presigned_urls() {
    let g = Garage::start(1, 1);
    let bucket = bucket_name("redirect");
    g.create_bucket(&bucket);
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_config(
        &config(dir.path(), &g, 0, &bucket, "    redirect: true\n"),
        &[],
    );
    let c = client();
    let bytes = data(300_000, 1);
    let d = push_blob(&c, &s, "red/irect", &bytes).await;
    let r = c
        .get(s.url(&format!("/v2/red/irect/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    let to = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(to.contains("X-Amz-Signature"), "{to}");
    let (status, body) = get_bytes(&c, to).await;
    assert_eq!(status, 200);
    assert!(body == bytes);
    // HEAD is still answered by the registry; unknown blobs are still 404.
    let r = c
        .head(s.url(&format!("/v2/red/irect/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let unknown = sha256(b"nope");
    let r = c
        .get(s.url(&format!("/v2/red/irect/blobs/{unknown}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// A pull-through cache on S3: two replicas on one bucket share what either fetched (the
/// second replica asks the upstream nothing), a cold blob pulled by many clients at once is
/// fetched once, a client that joins a slow fill streams it from the fill's spool (a
/// part-written S3 upload cannot be read), a fill cut off midway leaves nothing in the
/// bucket, and with the upstream gone both replicas serve what is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_through_cache_on_s3_is_shared_by_its_replicas() {
    use common::faults::{Faults, Mode};
    use futures::StreamExt;
    let c = client();
    let upstream = Server::start();
    let (_, md) = push_image(&c, &upstream, "team/app", "v1", "s3-cache").await;
    let big = data(12 << 20, 9); // more than two S3 parts
    let bd = push_blob(&c, &upstream, "team/app", &big).await;
    let slow = data(4 << 20, 10);
    let sd = push_blob(&c, &upstream, "team/app", &slow).await;
    let storm = data(12 << 20, 11);
    let stormd = push_blob(&c, &upstream, "team/app", &storm).await;
    let faults = Faults::start(upstream.host()).await;

    let g = Garage::start(1, 1);
    let bucket = bucket_name("cache");
    g.create_bucket(&bucket);
    let dir = tempfile::tempdir().unwrap();
    let proxy = format!(
        "proxy:\n  upstreams:\n    - prefix: hub\n      url: {}\n      tagTtl: 1h\n",
        faults.url()
    );
    let cfg = config(dir.path(), &g, 0, &bucket, &proxy);
    let a = Server::start_config(&cfg, &[]);
    let b = Server::start_config(&cfg, &[]);

    // Through A: the manifest by tag, then its blobs.
    let r = get_manifest(&c, &a, "hub/team/app", "v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), md);
    let m: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let mut digests: Vec<String> = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
    digests.extend(
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned()),
    );
    for d in &digests {
        let (status, body) = get_bytes(&c, a.url(&format!("/v2/hub/team/app/blobs/{d}"))).await;
        assert_eq!(status, 200);
        assert_eq!(&sha256(&body), d);
    }
    let asked = faults.seen().len();

    // Through B: everything from the bucket, nothing from the upstream.
    let r = get_manifest(&c, &b, "hub/team/app", "v1").await;
    assert_eq!(r.status(), 200);
    for d in &digests {
        let (status, body) = get_bytes(&c, b.url(&format!("/v2/hub/team/app/blobs/{d}"))).await;
        assert_eq!(status, 200);
        assert_eq!(&sha256(&body), d);
    }
    assert_eq!(
        faults.seen().len(),
        asked,
        "B asked the upstream: {:?}",
        faults.seen()
    );

    // A cold 12 MiB blob cut off midway: the client gets an error, the bucket keeps nothing.
    let url = |s: &Server| s.url(&format!("/v2/hub/team/app/blobs/{bd}"));
    faults.set(Mode::Cut);
    let r = c.get(url(&a)).send().await.unwrap();
    let whole = r.status() == 200 && r.bytes().await.is_ok_and(|b| b.as_ref() == big.as_slice());
    assert!(!whole, "a cut-off fill must not look whole");
    faults.set(Mode::Down);
    assert_ne!(
        get_bytes(&c, url(&b)).await.0,
        200,
        "nothing of the cut fill was kept"
    );

    // 20 clients on A at once: one upstream GET, every client gets every byte.
    faults.set(Mode::Pass);
    faults.clear();
    let pulls = (0..20).map(|_| get_bytes(&c, url(&a)));
    for (status, body) in futures::future::join_all(pulls).await {
        assert_eq!(status, 200);
        assert!(body == big, "a client got {} bytes", body.len());
    }
    assert_eq!(
        faults.count("GET", "/blobs/", 200),
        1,
        "{:?}",
        faults.seen()
    );

    // 20 clients split across A and B at once, on a blob neither has: the replicas agree
    // through the fill lease in the bucket, and the upstream still sees one GET.
    faults.clear();
    let storm_url = |s: &Server| s.url(&format!("/v2/hub/team/app/blobs/{stormd}"));
    let pulls = (0..20).map(|i| get_bytes(&c, storm_url(if i % 2 == 0 { &a } else { &b })));
    for (status, body) in futures::future::join_all(pulls).await {
        assert_eq!(status, 200);
        assert!(body == storm, "a client got {} bytes", body.len());
    }
    assert_eq!(
        faults.count("GET", &stormd, 200),
        1,
        "one fetch for both replicas: {:?}",
        faults.seen()
    );

    // A slow upstream: a client that joins a fill under way on A reads it from A's spool as
    // it arrives, long before the fill ends.
    faults.set(Mode::Trickle { cut: false });
    let slow_url = a.url(&format!("/v2/hub/team/app/blobs/{sd}"));
    let mut first = c.get(&slow_url).send().await.unwrap().bytes_stream();
    let mut lead = Vec::new();
    while lead.len() < 1 << 20 {
        lead.extend_from_slice(&first.next().await.unwrap().unwrap());
    }
    let joiner = tokio::spawn({
        let (c, url) = (c.clone(), slow_url.clone());
        async move { common::read_timed(c.get(url).send().await.unwrap()).await }
    });
    while let Some(chunk) = first.next().await {
        lead.extend_from_slice(&chunk.unwrap());
    }
    let lead_done = Instant::now();
    let (joined_at, joined, clean) = joiner.await.unwrap();
    assert!(
        clean && lead == slow && joined == slow,
        "{} and {} bytes",
        lead.len(),
        joined.len()
    );
    assert!(
        lead_done.saturating_duration_since(joined_at) > Duration::from_millis(500),
        "the joiner waited for the fill"
    );
    assert_eq!(faults.count("GET", &sd, 200), 1, "{:?}", faults.seen());
    faults.set(Mode::Pass);

    // The upstream gone: both replicas serve the cached image and the big blob.
    faults.set(Mode::Down);
    for s in [&a, &b] {
        assert_eq!(
            get_manifest(&c, s, "hub/team/app", "v1").await.status(),
            200
        );
        let (status, body) = get_bytes(&c, url(s)).await;
        assert_eq!(status, 200);
        assert!(body == big);
    }
    drop(upstream);
}
