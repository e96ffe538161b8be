//! The Garage test harness (tests/common/garage.rs) works: a one-node and a three-node cluster
//! start, take a bucket, and serve SigV4-signed PUT and GET (made with curl), and the
//! three-node cluster (replication factor 3) still takes writes with one node down.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::garage::Garage;

/// `curl` with SigV4 signing as the harness's key; returns the status and the body. Garage
/// wants `x-amz-content-sha256`, which curl does not send by itself.
fn s3(g: &Garage, args: &[&str], url: &str) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(["--aws-sigv4", &format!("aws:amz:{}:s3", g.region)])
        .args(["--user", &format!("{}:{}", g.key_id, g.secret)])
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl (is it installed?)");
    assert!(
        out.status.success(),
        "curl {args:?} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut body = out.stdout;
    let nl = body.iter().rposition(|&b| b == b'\n').expect("status line");
    let code = String::from_utf8_lossy(&body[nl + 1..])
        .parse()
        .expect("code");
    body.truncate(nl);
    (code, body)
}

/// PUTs `bytes` to `endpoint/bucket/key` and reads them back through `endpoint`.
fn put_get(g: &Garage, endpoint: &str, bucket: &str, key: &str, bytes: &[u8], dir: &Path) {
    let file = dir.join(key.replace('/', "_"));
    std::fs::write(&file, bytes).unwrap();
    let url = format!("{endpoint}/{bucket}/{key}");
    let (code, body) = s3(g, &["-T", file.to_str().unwrap()], &url);
    assert_eq!(code, 200, "PUT {url}: {}", String::from_utf8_lossy(&body));
    let (code, body) = s3(g, &[], &url);
    assert_eq!(code, 200, "GET {url}: {}", String::from_utf8_lossy(&body));
    assert!(body == bytes, "GET {url} returned other bytes");
}

#[test]
fn one_node_cluster_serves_signed_put_and_get() {
    let t = Instant::now();
    let g = Garage::start(1, 1);
    eprintln!("Garage::start(1, 1) took {:?}", t.elapsed());
    g.create_bucket("harness");
    let dir = tempfile::tempdir().unwrap();
    // Over a block (1 MiB) so that the data path, not only inline metadata, is exercised.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    put_get(&g, &g.endpoint, "harness", "a/big", &big, dir.path());
    put_get(&g, &g.endpoint, "harness", "small", b"hello", dir.path());

    // Unsigned requests are refused, and a missing key is a 404.
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/harness/small", g.endpoint))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    let (code, _) = s3(&g, &[], &format!("{}/harness/missing", g.endpoint));
    assert_eq!(code, 404);
}

#[test]
fn three_node_cluster_takes_writes_with_one_node_down() {
    let t = Instant::now();
    let mut g = Garage::start(3, 3);
    eprintln!("Garage::start(3, 3) took {:?}", t.elapsed());
    g.create_bucket("harness");
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..2_500_000u32).map(|i| (i * 13 % 253) as u8).collect();
    for i in 0..3 {
        put_get(
            &g,
            &g.s3_endpoint(i),
            "harness",
            &format!("via{i}"),
            &big,
            dir.path(),
        );
    }

    // Quorum is 2 of 3: with node 2 killed, writes and reads still succeed, and the objects
    // written before are still readable. (The first request stalls until the peers notice the
    // crash, ~8 s; wait_settled waits for that.)
    g.stop_node(2);
    assert!(!g.is_running(2));
    let t = Instant::now();
    put_get(&g, &g.s3_endpoint(0), "harness", "down0", &big, dir.path());
    eprintln!("first PUT+GET with node 2 down took {:?}", t.elapsed());
    g.wait_settled();
    assert_eq!(g.health(0).as_deref(), Some("degraded"));
    assert_eq!(g.health(1).as_deref(), Some("degraded"));
    put_get(&g, &g.s3_endpoint(1), "harness", "down1", &big, dir.path());
    for i in 0..2 {
        let (code, body) = s3(&g, &[], &format!("{}/harness/via2", g.s3_endpoint(i)));
        assert_eq!(code, 200);
        assert!(body == big);
    }

    // Back up, node 2 serves what was written while it was down.
    let t = Instant::now();
    g.start_node(2);
    eprintln!("start_node took {:?}", t.elapsed());
    assert_eq!(g.health(2).as_deref(), Some("healthy"));
    let (code, body) = s3(&g, &[], &format!("{}/harness/down0", g.s3_endpoint(2)));
    assert_eq!(code, 200);
    assert!(body == big);

    // Garage away entirely: requests fail to connect; then it comes back with the data.
    g.stop_all();
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null"])
        .arg(format!("{}/harness/down1", g.endpoint))
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(7), "curl should fail to connect");
    let t = Instant::now();
    g.start_all();
    eprintln!("start_all took {:?}", t.elapsed());
    let (code, body) = s3(&g, &[], &format!("{}/harness/down1", g.endpoint));
    assert_eq!(code, 200);
    assert!(body == big);
}
