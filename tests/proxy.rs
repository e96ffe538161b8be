//! The pull-through cache against real upstreams on loopback: another `berth serve` with
//! token auth (so the Bearer flow is exercised) and CNCF Distribution (`docker-registry`),
//! each behind a small fault proxy (tests/common/faults.rs) that counts what the upstream is
//! asked and can rate-limit, corrupt or cut it off.

mod common;

use std::path::Path;
use std::time::Duration;

use common::faults::{Faults, Mode};
use common::*;

/// An upstream Berth with token auth, holding `team/app:v1` (a config and a 4 MiB layer).
/// Returns the server, the manifest digest and the layer's digest and bytes.
async fn token_upstream(dir: &Path) -> (Server, String, String, Vec<u8>) {
    let root = dir.join("upstream");
    let seeded = Server::start_on(&root, &[]);
    let c = client();
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let (_, md) = push_image_of(&c, &seeded, "team/app", "v1", config, &[&layer]).await;
    drop(seeded);
    let htpasswd = dir.join("htpasswd");
    write_htpasswd(&htpasswd, &[("puller", "pull-pw")]);
    let cfg = dir.join("upstream.yaml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  filesystem:\n    root: {}\nauth:\n  htpasswd: {}\n  token: {{}}\n  access:\n    - repository: \"**\"\n      users: [puller]\n      actions: [pull]\n",
            root.display(),
            htpasswd.display()
        ),
    )
    .unwrap();
    let up = Server::start_config(&cfg, &[]);
    (up, md, sha256(&layer), layer)
}

/// A caching Berth whose upstream `up` (prefix `up.local`, the default) is at `url`.
fn cache(dir: &Path, url: &str, ttl: &str) -> Server {
    cache_with(dir, url, ttl, "")
}

/// [`cache`] with more top-level config (`auth:`, say).
fn cache_with(dir: &Path, url: &str, ttl: &str, extra: &str) -> Server {
    let pw = dir.join("upstream-password");
    std::fs::write(&pw, "pull-pw\n").unwrap();
    let cfg = dir.join("cache.yaml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  filesystem:\n    root: {}\nproxy:\n  upstreams:\n    - prefix: up.local\n      url: {url}\n      default: true\n      username: puller\n      passwordFile: {}\n      tagTtl: {ttl}\n{extra}",
            dir.join("cache").display(),
            pw.display()
        ),
    )
    .unwrap();
    Server::start_config(&cfg, &[])
}

async fn get(c: &reqwest::Client, url: String) -> (u16, Vec<u8>, String) {
    let r = c
        .get(url)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let digest = r
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    (status, body, digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_upstream_request_per_item_however_many_clients_pull() {
    let dir = tempfile::tempdir().unwrap();
    let (up, manifest, layer_digest, layer) = token_upstream(dir.path()).await;
    let faults = Faults::start(&up.addr).await;
    let cache = cache(dir.path(), &faults.url(), "1h");
    let c = client();

    // 1,000 pulls of one tag, 50 at a time: one HEAD and one GET reach the upstream.
    for _ in 0..20 {
        let pulls = (0..50).map(|_| get(&c, cache.url("/v2/up.local/team/app/manifests/v1")));
        for (status, _, digest) in futures::future::join_all(pulls).await {
            assert_eq!((status, digest.as_str()), (200, manifest.as_str()));
        }
    }
    assert_eq!(
        faults.count("HEAD", "/manifests/v1", 200),
        1,
        "{:?}",
        faults.seen()
    );
    assert_eq!(
        faults.count("GET", "/manifests/", 200),
        1,
        "{:?}",
        faults.seen()
    );
    // The upstream's Bearer challenge was followed once; the token was reused after.
    assert_eq!(
        faults.count("HEAD", "/manifests/v1", 401),
        1,
        "{:?}",
        faults.seen()
    );

    // 100 clients pull the cold 4 MiB layer at once: each gets every byte, the upstream is
    // asked once.
    let blob = cache.url(&format!("/v2/up.local/team/app/blobs/{layer_digest}"));
    let pulls = (0..100).map(|_| get(&c, blob.clone()));
    for (status, body, _) in futures::future::join_all(pulls).await {
        assert_eq!(status, 200);
        assert!(
            body == layer,
            "a client got {} bytes, not the layer",
            body.len()
        );
    }
    assert_eq!(
        faults.count("GET", "/blobs/", 200),
        1,
        "{:?}",
        faults.seen()
    );

    let metrics = c
        .get(cache.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
    };
    assert_eq!(
        value(r#"berth_proxy_events_total{upstream="up.local",event="miss"}"#),
        2.0,
        "the manifest and the layer"
    );
    assert!(value(r#"berth_proxy_events_total{upstream="up.local",event="hit"}"#) >= 999.0);
    assert!(value(r#"berth_proxy_fetched_bytes_total{upstream="up.local"}"#) >= layer.len() as f64);

    // With the upstream gone, what was pulled is still served.
    faults.set(Mode::Down);
    assert_eq!(
        get(&c, cache.url("/v2/up.local/team/app/manifests/v1"))
            .await
            .0,
        200
    );
    assert_eq!(
        get(
            &c,
            cache.url(&format!("/v2/up.local/team/app/manifests/{manifest}"))
        )
        .await
        .0,
        200
    );
    let (status, body, _) = get(&c, blob).await;
    assert_eq!(status, 200);
    assert!(body == layer);
    drop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limiting_or_dead_upstream_gets_the_stale_copy_served_and_is_not_hammered() {
    let dir = tempfile::tempdir().unwrap();
    let (up, manifest, _, _) = token_upstream(dir.path()).await;
    let faults = Faults::start(&up.addr).await;
    let cache = cache(dir.path(), &faults.url(), "0s");
    let c = client();
    let tag = cache.url("/v2/up.local/team/app/manifests/v1");
    assert_eq!(get(&c, tag.clone()).await.0, 200);

    faults.set(Mode::TooMany(60));
    faults.clear();
    for _ in 0..10 {
        let (status, _, digest) = get(&c, tag.clone()).await;
        assert_eq!(
            (status, digest.as_str()),
            (200, manifest.as_str()),
            "stale, not an error"
        );
    }
    assert_eq!(
        faults.seen().len(),
        1,
        "one 429, then no request until Retry-After: {:?}",
        faults.seen()
    );
    // Not cached at all: the spec's 429, with the upstream's wait.
    let r = c
        .get(cache.url("/v2/up.local/team/other/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    assert!(r.text().await.unwrap().contains("TOOMANYREQUESTS"));
    // The server's stderr is read by another thread: give the line a moment to arrive.
    let logged = wait_until(Duration::from_secs(5), || {
        cache
            .logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("serving the cached manifest"))
    });
    assert!(logged, "a stale serve is logged");
    drop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_or_cut_blobs_are_never_cached_and_the_next_pull_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (up, _, layer_digest, layer) = token_upstream(dir.path()).await;
    let faults = Faults::start(&up.addr).await;
    let cache = cache(dir.path(), &faults.url(), "1h");
    let c = client();
    let blob = cache.url(&format!("/v2/up.local/team/app/blobs/{layer_digest}"));
    for fault in [Mode::Corrupt, Mode::Cut] {
        faults.set(fault);
        let r = c.get(blob.clone()).send().await.unwrap();
        let body = r.bytes().await;
        assert!(
            body.as_ref()
                .map_or(true, |b| b.as_ref() != layer.as_slice()),
            "{fault:?}: the client must not get a verified-looking whole blob"
        );
        // A request that comes while the fill is still verifying joins it and must not get a
        // clean whole body either; once it has ended, nothing is served.
        faults.set(Mode::Down);
        let mut refused = false;
        for _ in 0..40 {
            let r = c.get(blob.clone()).send().await.unwrap();
            if r.status() != 200 {
                refused = true;
                break;
            }
            let (_, body, clean) = read_timed(r).await;
            assert!(
                !clean || body != layer,
                "{fault:?}: a joiner got a whole blob"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(refused, "{fault:?}: nothing was cached");
        faults.set(Mode::Pass);
    }
    // The manifest comes, its layer is refused: the client hears the upstream's reason
    // (never a 500 or a 200), and nothing is kept.
    faults.set(Mode::RefuseBlobs);
    let (status, _, _) = get(&c, cache.url("/v2/up.local/team/app/manifests/v1")).await;
    assert_eq!(status, 200);
    let r = c.get(blob.clone()).send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(
        status == 403 && text.contains("DENIED") && text.contains("not for you"),
        "{status} {text}"
    );
    faults.set(Mode::Pass);
    let (status, body, _) = get(&c, blob.clone()).await;
    assert_eq!(status, 200);
    assert!(body == layer, "whole after the faults");
    assert_blob_store_consistent(&dir.path().join("cache"));
    drop(up);
}

/// A client that asks for a blob while another's fill of it is under way shares its one
/// upstream fetch: when the fetch breaks off, every client's body ends in an error and
/// nothing is cached; when it goes well, the late client gets what is written at once and the
/// rest as it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_joiners_stream_a_fill_under_way_and_share_its_fate() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let (up, _, layer_digest, layer) = token_upstream(dir.path()).await;
    let faults = Faults::start(&up.addr).await;
    let cache = cache(dir.path(), &faults.url(), "1h");
    let c = client();
    let blob = cache.url(&format!("/v2/up.local/team/app/blobs/{layer_digest}"));

    // A fill that breaks off: the joiner gets an error too, and nothing is kept.
    faults.set(Mode::Trickle { cut: true });
    let first = c.get(blob.clone()).send().await.unwrap();
    let mut stream = first.bytes_stream();
    let mut got = 0;
    while got < 512 << 10 {
        got += stream.next().await.unwrap().unwrap().len();
    }
    let joiner = tokio::spawn({
        let (c, blob) = (c.clone(), blob.clone());
        async move { read_timed(c.get(blob).send().await.unwrap()).await }
    });
    let lead_failed = loop {
        match stream.next().await {
            Some(Ok(_)) => {}
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    let (_, joined, clean) = joiner.await.unwrap();
    assert!(lead_failed, "the first client's body must end in an error");
    assert!(
        !clean,
        "the joiner must get an error status or a body that ends in an error, not a short \
         blob ({} bytes)",
        joined.len()
    );
    faults.set(Mode::Down);
    assert_ne!(get(&c, blob.clone()).await.0, 200, "nothing was cached");
    assert_eq!(
        faults.count("GET", "/blobs/", 200),
        1,
        "{:?}",
        faults.seen()
    );
    faults.clear();

    // Then the 4 MiB layer trickles in over about 1.6 s. The second client asks once the first
    // has 1 MiB, and must get bytes long before the fill ends.
    faults.set(Mode::Trickle { cut: false });
    let first = c.get(blob.clone()).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let mut stream = first.bytes_stream();
    let mut lead = Vec::new();
    while lead.len() < 1 << 20 {
        lead.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    let joiner = tokio::spawn({
        let (c, blob) = (c.clone(), blob.clone());
        async move {
            let r = c.get(blob).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.content_length(), Some(4 << 20), "a joiner knows the size");
            read_timed(r).await
        }
    });
    while let Some(chunk) = stream.next().await {
        lead.extend_from_slice(&chunk.unwrap());
    }
    let lead_done = std::time::Instant::now();
    let (joined_first, joined, clean) = joiner.await.unwrap();
    assert!(lead == layer, "the first client got {} bytes", lead.len());
    assert!(
        clean && joined == layer,
        "the joiner got {} bytes",
        joined.len()
    );
    assert!(
        lead_done.duration_since(joined_first) > Duration::from_millis(500),
        "the joiner's first byte came {:?} before the fill ended: it waited for the fill",
        lead_done.saturating_duration_since(joined_first)
    );
    assert_eq!(
        faults.count("GET", "/blobs/", 200),
        1,
        "{:?}",
        faults.seen()
    );

    assert_blob_store_consistent(&dir.path().join("cache"));
    drop(up);
}

/// Two replicas on one volume (a ReadWriteMany PVC): a blob both are asked for is fetched once,
/// through the fill lease in the store; when the replica that fetches it dies mid-fill, the
/// other takes the fetch over once the lease expires, and its client gets every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_volume_fetch_once_and_take_over_from_a_dead_one() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let (up, _, layer_digest, layer) = token_upstream(dir.path()).await;
    let faults = Faults::start(&up.addr).await;
    let mut a = cache(dir.path(), &faults.url(), "1h");
    let b = cache(dir.path(), &faults.url(), "1h");
    let c = client();
    let path = format!("/v2/up.local/team/app/blobs/{layer_digest}");

    // A fills slowly; B, asked meanwhile, waits for A instead of fetching too.
    faults.set(Mode::Trickle { cut: false });
    let mut on_a = c.get(a.url(&path)).send().await.unwrap().bytes_stream();
    let mut got = 0;
    while got < 256 << 10 {
        got += on_a.next().await.unwrap().unwrap().len();
    }
    let on_b = tokio::spawn({
        let (c, url) = (c.clone(), b.url(&path));
        async move { read_timed(c.get(url).send().await.unwrap()).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        faults.count("GET", &layer_digest, 200),
        1,
        "B waits for A's fetch: {:?}",
        faults.seen()
    );

    // A dies with the fill half done; B takes over when A's lease expires.
    a.kill9();
    faults.set(Mode::Pass);
    let (_, body, clean) = tokio::time::timeout(Duration::from_secs(40), on_b)
        .await
        .expect("B took the fetch over")
        .unwrap();
    assert!(
        clean && body == layer,
        "B's client got {} bytes",
        body.len()
    );
    assert_eq!(
        faults.count("GET", &layer_digest, 200),
        2,
        "{:?}",
        faults.seen()
    );

    // Both replicas stored nothing twice and nothing torn: B serves it with the upstream gone.
    faults.set(Mode::Down);
    let (status, again, _) = get(&c, b.url(&path)).await;
    assert_eq!(status, 200);
    assert!(again == layer);
    assert_blob_store_consistent(&dir.path().join("cache"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_pushes_and_misses_get_the_spec_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (up, manifest, _, _) = token_upstream(dir.path()).await;
    let cache = cache(dir.path(), &format!("http://{}", up.addr), "1h");
    let c = client();
    // registry-mirrors (no prefix, not local) and containerd's ?ns= reach the upstream.
    let (s, _, d) = get(&c, cache.url("/v2/team/app/manifests/v1")).await;
    assert_eq!((s, d.as_str()), (200, manifest.as_str()));
    let (s, _, d) = get(&c, cache.url("/v2/team/app/manifests/v1?ns=up.local")).await;
    assert_eq!((s, d.as_str()), (200, manifest.as_str()));
    // An `ns` no upstream serves is another registry: NAME_UNKNOWN, never the local
    // repository of the same name.
    push_image(&c, &cache, "mine/app", "v1", "mine").await;
    let r = c
        .get(cache.url("/v2/mine/app/manifests/v1?ns=quay.io"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("NAME_UNKNOWN") && text.contains("ns=quay.io"),
        "{text}"
    );
    assert_eq!(get(&c, cache.url("/v2/mine/app/manifests/v1")).await.0, 200);
    // A push into the cache is refused; a local name outside the prefixes is not.
    let r = c
        .post(cache.url("/v2/up.local/team/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("pull-through cache"));
    // Before the push, local/app is read from the default upstream (which has none); the
    // push makes it local at once, although the first answer was remembered.
    let (s, body, _) = get(&c, cache.url("/v2/local/app/manifests/v1")).await;
    assert_eq!(s, 404);
    assert!(String::from_utf8_lossy(&body).contains("upstream"));
    push_image(&c, &cache, "local/app", "v1", "local").await;
    assert_eq!(
        get(&c, cache.url("/v2/local/app/manifests/v1")).await.0,
        200,
        "local stays local"
    );
    // What the upstream does not have: the spec's 404, with the upstream's reason.
    let r = c
        .get(cache.url("/v2/up.local/team/nothing/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("MANIFEST_UNKNOWN") && text.contains("upstream"),
        "{text}"
    );
    // An upstream that cannot be reached, nothing cached: 503, and it says why.
    drop(up);
    let r = c
        .get(cache.url("/v2/up.local/team/other/manifests/v2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("cannot be reached"));
}

/// A cache with token auth of its own, asked as a Docker daemon with `registry-mirrors` asks:
/// no prefix in the path or in the token's scope. The token must cover the canonical name the
/// read is checked on, under the rules written for it (`up.local/**`), and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_mirrors_pulls_work_with_token_auth_on_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (up, manifest, _, _) = token_upstream(dir.path()).await;
    let htpasswd = dir.path().join("cache-htpasswd");
    write_htpasswd(&htpasswd, &[("dev", "dev-pw"), ("other", "other-pw")]);
    let auth = format!(
        "auth:\n  htpasswd: {}\n  token:\n    service: berth-cache\n  access:\n    - repository: \"up.local/**\"\n      users: [dev]\n      actions: [pull]\n",
        htpasswd.display()
    );
    let cache = cache_with(dir.path(), &format!("http://{}", up.addr), "1h", &auth);
    let c = client();
    let path = "/v2/team/app/manifests/v1";
    let r = c.get(cache.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.contains("repository:up.local/team/app:pull"),
        "the challenge names the canonical repository: {challenge}"
    );
    let token = |scope: &'static str| {
        let c = c.clone();
        let url = cache.url(&format!("/token?service=berth-cache&scope={scope}"));
        async move {
            let r = c
                .get(url)
                .header("authorization", basic("dev", "dev-pw"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()["token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    // What dockerd sends: the scope of the name it pulls, without the prefix.
    let t = token("repository:team/app:pull").await;
    let r = c
        .get(cache.url(path))
        .header("accept", OCI_MANIFEST)
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], manifest.as_str());
    // Docker Hub's short names are made canonical the same way.
    let r = c
        .get(cache.url("/v2/up.local/team/app/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A push scope grants no push on the cache, and a local name gets nothing from the
    // proxy's rules.
    let t = token("repository:team/app:pull,push").await;
    let claims = decode_claims(&t);
    let access = claims["access"].as_array().unwrap();
    assert!(
        access
            .iter()
            .all(|a| a["actions"].as_array().unwrap().iter().all(|x| x == "pull")),
        "{claims}"
    );
    // Someone the proxy's rules do not name gets nothing through the canonical name either.
    let r = c
        .get(cache.url("/token?service=berth-cache&scope=repository:team/app:pull"))
        .header("authorization", basic("other", "other-pw"))
        .send()
        .await
        .unwrap();
    let t = r.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = c.get(cache.url(path)).bearer_auth(&t).send().await.unwrap();
    assert!(r.status() == 401 || r.status() == 403, "{}", r.status());
}

/// The claims of a JWT, unverified (the test only reads what the server granted).
fn decode_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let part = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// skopeo pulls an image through the cache from CNCF Distribution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_from_cncf_distribution_through_the_cache() {
    common::needs::need("skopeo");
    let dir = tempfile::tempdir().unwrap();
    let dist = Distribution::start(dir.path());
    let (port, base) = (dist.port, dist.url());
    let c = client();
    // Seed Distribution with skopeo from an OCI layout we write.
    let src = dir.path().join("src");
    let local = Server::start();
    let (_, digest) = push_image(&c, &local, "team/app", "v1", "dist").await;
    let copy = |from: String, to: String| {
        std::process::Command::new("skopeo")
            .args([
                "copy",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                &from,
                &to,
            ])
            .output()
            .expect("skopeo must be installed")
    };
    let out = copy(
        format!("docker://{}/team/app:v1", local.addr),
        format!("docker://127.0.0.1:{port}/team/app:v1"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = dir.path().join("cache.yaml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  filesystem:\n    root: {}\nproxy:\n  upstreams:\n    - prefix: dist.local\n      url: {base}\n",
            dir.path().join("cache").display()
        ),
    )
    .unwrap();
    let cache = Server::start_config(&cfg, &[]);
    let out = copy(
        format!("docker://{}/dist.local/team/app:v1", cache.addr),
        format!("dir:{}", src.display()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What Distribution holds (skopeo may have converted what it copied there), byte for byte.
    let (_, _, upstream_digest) = get(&c, format!("{base}/v2/team/app/manifests/v1")).await;
    let pulled = std::fs::read(src.join("manifest.json")).unwrap();
    assert_eq!(
        sha256(&pulled),
        upstream_digest,
        "the same manifest, byte for byte (local push was {digest})"
    );
}

/// `proxy.retention.unpulledFor`: gc removes cached manifests nobody pulled within the window
/// (and the blobs only they used), keeps the rest and every local repository, and a later pull
/// brings the removed image back from the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_expires_cached_images_not_pulled_and_never_local_ones() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Server::start();
    let c = client();
    let (_, app) = push_image(&c, &upstream, "team/app", "v1", "app").await;
    let (old_manifest, old) = push_image(&c, &upstream, "team/old", "v1", "old").await;
    let cfg = dir.path().join("cache.yaml");
    let root = dir.path().join("cache");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  filesystem:\n    root: {}\nproxy:\n  upstreams:\n    - prefix: up.local\n      url: http://{}\n  retention:\n    unpulledFor: 1h\n",
            root.display(),
            upstream.host()
        ),
    )
    .unwrap();
    let cache = Server::start_config(&cfg, &[]);
    let old_layer: String =
        serde_json::from_str::<serde_json::Value>(&old_manifest).unwrap()["layers"][0]["digest"]
            .as_str()
            .unwrap()
            .to_owned();
    for (repo, digest) in [("team/app", &app), ("team/old", &old)] {
        let (s, body, _) = get(&c, cache.url(&format!("/v2/up.local/{repo}/manifests/v1"))).await;
        assert_eq!(s, 200);
        let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(&sha256(&body), digest);
        for b in [&m["config"]["digest"], &m["layers"][0]["digest"]] {
            let url = cache.url(&format!(
                "/v2/up.local/{repo}/blobs/{}",
                b.as_str().unwrap()
            ));
            assert_eq!(get(&c, url).await.0, 200);
        }
    }
    push_image(&c, &cache, "local/app", "v1", "local").await;
    let old_layer_file = root.join(format!(
        "blobs/sha256/{}/{}",
        &old_layer[7..9],
        &old_layer[7..]
    ));
    assert!(
        old_layer_file.exists(),
        "cached at {}",
        old_layer_file.display()
    );
    // team/old was last pulled two hours ago.
    let link = root.join(format!(
        "repositories/up.local/team/old/_manifests/sha256/{}",
        &old["sha256:".len()..]
    ));
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&link)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();

    // gc keeps what was touched within its clock margin (50 ms) of starting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["gc", "--json", "--grace", "0s", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["cachedManifestsExpired"], 1, "{report}");
    assert_eq!(report["tagsDeleted"], 1, "old's tag goes with it: {report}");
    assert!(
        report["blobsDeleted"].as_u64().unwrap() >= 2,
        "old's manifest bytes and layer: {report}"
    );
    let status = |path: String| {
        let c = c.clone();
        async move { c.head(path).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        status(cache.url("/v2/local/app/manifests/v1")).await,
        200,
        "local content is never expired"
    );
    assert_eq!(
        status(cache.url(&format!("/v2/up.local/team/app/manifests/{app}"))).await,
        200,
        "pulled recently"
    );
    assert!(!old_layer_file.exists(), "old's layer swept");
    // Pulled again, it comes back from the upstream.
    assert_eq!(
        get(&c, cache.url("/v2/up.local/team/old/manifests/v1"))
            .await
            .0,
        200
    );
    assert_eq!(
        get(
            &c,
            cache.url(&format!("/v2/up.local/team/old/blobs/{old_layer}"))
        )
        .await
        .0,
        200
    );
}

/// Pulls `repo:v1` through `cache` (the manifest, then its config and layers); returns the
/// manifest's digest.
async fn pull_through(c: &reqwest::Client, cache: &Server, repo: &str) -> String {
    let (s, body, _) = get(c, cache.url(&format!("/v2/up.local/{repo}/manifests/v1"))).await;
    assert_eq!(s, 200, "{repo}");
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let blobs = std::iter::once(&m["config"]).chain(m["layers"].as_array().unwrap());
    for b in blobs {
        let d = b["digest"].as_str().unwrap();
        let (s, bytes, _) = get(c, cache.url(&format!("/v2/up.local/{repo}/blobs/{d}"))).await;
        assert_eq!((s, sha256(&bytes)), (200, d.to_owned()));
    }
    sha256(&body)
}

/// Makes the cache believe `digest` in `repo` was last pulled `ago`.
fn set_last_pull(root: &Path, repo: &str, digest: &str, ago: Duration) {
    let link = root.join(format!(
        "repositories/up.local/{repo}/_manifests/sha256/{}",
        &digest["sha256:".len()..]
    ));
    std::fs::File::options()
        .write(true)
        .open(&link)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - ago)
        .unwrap();
}

/// `proxy.retention.maxBytes`: gc keeps the most recently pulled cached images that fit in
/// the budget and removes the rest, least recently pulled first, never a local repository
/// however large; a dry run says which and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_cached_content_within_max_bytes_least_recently_pulled_first() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Server::start();
    let c = client();
    // Three images of a 1 MiB layer each, sharing nothing.
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{name}"}}"#);
        let layer: Vec<u8> = (0..1u32 << 20)
            .map(|j| (j * (i as u32 + 3) % 251) as u8)
            .collect();
        let repo = format!("team/{name}");
        push_image_of(&c, &upstream, &repo, "v1", config.as_bytes(), &[&layer]).await;
    }
    let cfg = dir.path().join("cache.yaml");
    let root = dir.path().join("cache");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  filesystem:\n    root: {}\nproxy:\n  upstreams:\n    - prefix: up.local\n      url: http://{}\n  retention:\n    maxBytes: 2500Ki\n",
            root.display(),
            upstream.host()
        ),
    )
    .unwrap();
    let cache = Server::start_config(&cfg, &[]);
    let mut digests = Vec::new();
    for name in ["a", "b", "c"] {
        digests.push(pull_through(&c, &cache, &format!("team/{name}")).await);
    }
    // A local image bigger than the whole budget.
    let big = vec![7u8; 3 << 20];
    push_image_of(&c, &cache, "local/big", "v1", b"{}", &[&big]).await;
    let ld = sha256(&big);
    // Pulled in the order c (3 h ago), a (2 h ago), b (1 h ago): c is the least recent.
    for (name, d, hours) in [
        ("a", &digests[0], 2),
        ("b", &digests[1], 1),
        ("c", &digests[2], 3),
    ] {
        set_last_pull(
            &root,
            &format!("team/{name}"),
            d,
            Duration::from_secs(hours * 3600),
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let gc = |dry: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args(["gc", "--json", "--grace", "0s", "--config"])
            .arg(&cfg);
        if dry {
            cmd.arg("--dry-run");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let dry = gc(true);
    let manifests: Vec<&serde_json::Value> = dry["deletions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "manifest")
        .collect();
    assert_eq!(manifests.len(), 1, "{dry}");
    assert_eq!(manifests[0]["repository"], "up.local/team/c");
    assert!(
        manifests[0]["reason"]
            .as_str()
            .unwrap()
            .contains("maxBytes"),
        "{dry}"
    );
    let report = gc(false);
    assert_eq!(report["cachedManifestsExpired"], 1, "{report}");
    assert!(
        report["bytesFreed"].as_u64().unwrap() >= 1 << 20,
        "{report}"
    );
    let status = |path: String| {
        let c = c.clone();
        async move { c.head(path).send().await.unwrap().status().as_u16() }
    };
    for (name, d) in [("a", &digests[0]), ("b", &digests[1])] {
        assert_eq!(
            status(cache.url(&format!("/v2/up.local/team/{name}/manifests/{d}"))).await,
            200,
            "{name} was pulled more recently: kept"
        );
    }
    assert_eq!(status(cache.url("/v2/local/big/manifests/v1")).await, 200);
    assert_eq!(
        status(cache.url(&format!("/v2/local/big/blobs/{ld}"))).await,
        200,
        "local content is never counted or removed"
    );
    // c comes back from the upstream when pulled again.
    pull_through(&c, &cache, "team/c").await;
}
