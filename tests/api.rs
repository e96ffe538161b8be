//! The distribution spec over HTTP against a real `berth serve`: every endpoint, and every bad
//! input the registry must answer with the spec's error code (never a 5xx, nothing written).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::Value;

async fn error_code(r: reqwest::Response) -> String {
    let v: Value = r.json().await.expect("error body is JSON");
    v["errors"][0]["code"]
        .as_str()
        .expect("errors[0].code")
        .to_owned()
}

/// Sends raw bytes over TCP (for paths a URL library would normalise) and returns the status.
fn raw_status(s: &Server, request: &str) -> u16 {
    let mut tcp = TcpStream::connect(&s.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(request.as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    let n = tcp.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()["location"].to_str().unwrap().to_owned()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

#[tokio::test]
async fn base_health_ready_metrics() {
    let s = Server::start();
    let c = client();
    let r = c.get(s.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(c.get(s.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(s.url("/readyz")).send().await.unwrap().status(), 200);
    push_blob(&c, &s, "m/x", b"metrics").await;
    let text = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"berth_http_requests_total{method="POST",route="upload",status="201"} 1"#),
        "{text}"
    );
    assert!(text.contains("berth_http_request_duration_seconds"));
    assert!(text.contains("berth_http_received_bytes_total 7"), "{text}");
    assert!(text.contains("berth_uploads_in_progress 0"));
}

#[tokio::test]
async fn monolithic_blob_push_head_get_delete() {
    let s = Server::start();
    let c = client();
    let data = b"0123456789abcdefghij".repeat(100);
    let d = push_blob(&c, &s, "a/b", &data).await;
    let r = c
        .head(s.url(&format!("/v2/a/b/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), "2000");
    assert_eq!(header(&r, "docker-content-digest"), d);
    let r = c
        .get(s.url(&format!("/v2/a/b/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);
    // Another repository cannot read it without a mount.
    let r = c
        .get(s.url(&format!("/v2/other/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    // Delete is per repository, 202, and immediate.
    let r = c
        .delete(s.url(&format!("/v2/a/b/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .head(s.url(&format!("/v2/a/b/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .delete(s.url(&format!("/v2/a/b/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Zero-length blob.
    let e = push_blob(&c, &s, "a/b", b"").await;
    let r = c
        .get(s.url(&format!("/v2/a/b/blobs/{e}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), "0");
}

#[tokio::test]
async fn blob_ranges() {
    let s = Server::start();
    let c = client();
    // Large enough to be streamed from the file rather than read whole.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let d = push_blob(&c, &s, "r", &data).await;
    let url = s.url(&format!("/v2/r/blobs/{d}"));
    let n = data.len();
    for (range, start, end) in [
        ("bytes=500-1499", 500, 1499),
        ("bytes=500-", 500, n - 1),
        ("bytes=-500", n - 500, n - 1),
        ("bytes=299000-999999", 299_000, n - 1),
        ("bytes=-999999", 0, n - 1),
        ("bytes=0-0", 0, 0),
    ] {
        let r = c.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            header(&r, "content-range"),
            format!("bytes {start}-{end}/{n}"),
            "{range}"
        );
        assert_eq!(header(&r, "content-length"), (end - start + 1).to_string());
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            &data[start..=end],
            "{range}"
        );
    }
    for range in [
        "bytes=500-0",
        "bytes=300000-",
        "bytes=400000-500000",
        "bytes=-0",
    ] {
        let r = c.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(r.status(), 416, "{range}");
        assert_eq!(header(&r, "content-range"), format!("bytes */{n}"));
    }
    // Headers a server may ignore: several ranges, other units, garbage.
    for range in ["bytes=0-1,5-6", "items=0-5", "bytes=x-y", "garbage"] {
        let r = c.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(r.status(), 200, "{range}");
        assert_eq!(r.bytes().await.unwrap().len(), n);
    }
}

#[tokio::test]
async fn post_put_and_chunked_uploads() {
    let s = Server::start();
    let c = client();
    let data: Vec<u8> = (0..3067u32).map(|i| (i * 7 % 256) as u8).collect();
    let d = sha256(&data);

    // POST then PUT with the whole body.
    let r = c.post(s.url("/v2/up/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), "0-0");
    assert!(!header(&r, "docker-upload-uuid").is_empty());
    let loc = location(&r);
    assert!(loc.starts_with("/v2/up/blobs/uploads/"));
    let r = c
        .put(s.url(&format!("{loc}?digest={d}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(location(&r), format!("/v2/up/blobs/{d}"));

    // Chunked, with an out-of-order chunk and a re-sent chunk in between, the last chunk in the PUT.
    let r = c.post(s.url("/v2/up/blobs/uploads/")).send().await.unwrap();
    let loc = location(&r);
    let patch = |range: String, body: Vec<u8>| {
        c.patch(s.url(&loc))
            .header("content-range", range)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
    };
    let r = patch("0-1023".into(), data[..1024].to_vec()).await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), "0-1023");
    assert_eq!(location(&r), loc);
    let r = patch("2048-3066".into(), data[2048..].to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 416, "skipping ahead");
    let r = patch("0-1023".into(), data[..1024].to_vec()).await.unwrap();
    assert_eq!(r.status(), 416, "re-sending");
    let r = c.get(s.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), "0-1023");
    assert_eq!(location(&r), loc);
    let r = patch("1024-2047".into(), data[1024..2048].to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), "0-2047");
    // An out-of-order PUT is 416 too (range checked before the digest), and the session lives.
    let r = c
        .put(s.url(&format!("{loc}?digest={d}")))
        .header("content-range", "0-1018")
        .body(data[..1019].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    let r = c
        .put(s.url(&format!("{loc}?digest={d}")))
        .header("content-range", "2048-3066")
        .body(data[2048..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = c
        .get(s.url(&format!("/v2/up/blobs/{d}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), &data[..]);

    // Streamed PATCH (chunked transfer encoding, no Content-Length), then an empty PUT.
    let r = c.post(s.url("/v2/up/blobs/uploads/")).send().await.unwrap();
    let loc = location(&r);
    let stream = futures::stream::iter(
        data.chunks(1000)
            .map(|ch| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(ch)))
            .collect::<Vec<_>>(),
    );
    let r = c
        .patch(s.url(&loc))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), "0-3066");
    let r = c
        .put(s.url(&format!("{loc}?digest={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Cancel.
    let r = c.post(s.url("/v2/up/blobs/uploads/")).send().await.unwrap();
    let loc = location(&r);
    assert_eq!(c.delete(s.url(&loc)).send().await.unwrap().status(), 204);
    let r = c.get(s.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn upload_errors_leave_nothing_visible() {
    let s = Server::start();
    let c = client();
    let data = b"some blob bytes".to_vec();
    let wrong = sha256(b"other bytes");

    // Digest mismatch on a monolithic POST.
    let r = c
        .post(s.url(&format!("/v2/e/blobs/uploads/?digest={wrong}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    // Digest mismatch on PUT after PATCH.
    let loc = location(&c.post(s.url("/v2/e/blobs/uploads/")).send().await.unwrap());
    c.patch(s.url(&loc))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    let r = c
        .put(s.url(&format!("{loc}?digest={wrong}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    for repo in ["e", "x"] {
        let r = c
            .head(s.url(&format!("/v2/{repo}/blobs/{wrong}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    assert_eq!(
        assert_blob_store_consistent(&s.root),
        0,
        "no blob may have been stored"
    );

    // Malformed and unsupported digests: DIGEST_INVALID, never a 5xx.
    for bad in [
        "sha256:abc",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha256:../../../../etc/passwd",
        "nonsense",
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
    ] {
        let enc = bad.replace('/', "%2F");
        let r = c
            .post(s.url(&format!("/v2/e/blobs/uploads/?digest={enc}")))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(error_code(r).await, "DIGEST_INVALID", "{bad}");
        let r = c
            .get(s.url(&format!("/v2/e/blobs/{enc}")))
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == 400 || r.status() == 404,
            "{bad}: {}",
            r.status()
        );
    }
    let loc = location(&c.post(s.url("/v2/e/blobs/uploads/")).send().await.unwrap());
    let r = c.put(s.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), 400, "PUT without ?digest=");
    assert_eq!(error_code(r).await, "DIGEST_INVALID");

    // Unknown upload sessions, well-formed or not, and sessions of another repository.
    for id in [
        "0123456789abcdef0123456789abcdef",
        "not-an-id",
        "..%2F..%2Fetc",
    ] {
        let r = c
            .patch(s.url(&format!("/v2/e/blobs/uploads/{id}")))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{id}");
        assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    }
    let other = loc.replace("/v2/e/", "/v2/f/");
    let r = c.get(s.url(&other)).send().await.unwrap();
    assert_eq!(r.status(), 404, "a session belongs to its repository");

    // Bad Content-Range values.
    for range in ["abc", "5-1", "-3", "0-"] {
        let r = c
            .patch(s.url(&loc))
            .header("content-range", range)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 416, "{range}");
    }
    let r = c
        .patch(s.url(&loc))
        .header("content-range", "0-9")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416, "range and body length disagree");
    for range in ["0-18446744073709551615", "0-99999999999999999999999"] {
        let r = c
            .patch(s.url(&loc))
            .header("content-range", range)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 416, "{range}");
    }
    // Absurd pagination and deeply nested JSON are client errors too.
    let r = c
        .get(s.url("/v2/_catalog?n=99999999999999999999999"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let r = c
        .put(s.url("/v2/e/manifests/deep"))
        .header("content-type", OCI_MANIFEST)
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let r = c.get(s.url(&loc)).send().await.unwrap();
    assert_eq!(header(&r, "range"), "0-0", "rejected chunks append nothing");
}

#[tokio::test]
async fn client_disconnect_mid_upload_loses_nothing() {
    let s = Server::start();
    let c = client();
    let loc = location(&c.post(s.url("/v2/d/blobs/uploads/")).send().await.unwrap());
    let first = vec![1u8; 5000];
    let r = c
        .patch(s.url(&loc))
        .header("content-range", "0-4999")
        .body(first.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // A PATCH that promises 1 MiB, sends 200 KiB and hangs up.
    {
        let mut tcp = TcpStream::connect(&s.addr).unwrap();
        let head = format!(
            "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Range: 5000-1053575\r\nContent-Length: 1048576\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).unwrap();
        tcp.write_all(&vec![2u8; 200 * 1024]).unwrap();
    }
    // A monolithic POST that hangs up halfway.
    {
        let d = sha256(&vec![3u8; 1 << 20]);
        let mut tcp = TcpStream::connect(&s.addr).unwrap();
        let head = format!(
            "POST /v2/d/blobs/uploads/?digest={d} HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).unwrap();
        tcp.write_all(&vec![3u8; 300 * 1024]).unwrap();
    }
    // The interrupted chunk is dropped whole: the session holds exactly the first chunk.
    assert!(wait_until(Duration::from_secs(10), || {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-D", "-"])
            .arg(s.url(&loc))
            .output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .to_lowercase()
                .contains("range: 0-4999")
        })
        .unwrap_or(false)
    }));
    let rest = vec![4u8; 100];
    let mut all = first.clone();
    all.extend_from_slice(&rest);
    let d = sha256(&all);
    let r = c
        .put(s.url(&format!("{loc}?digest={d}")))
        .header("content-range", "5000-5099")
        .body(rest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        assert_blob_store_consistent(&s.root),
        1,
        "only the completed blob is stored"
    );
}

#[tokio::test]
async fn uploads_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let c = client();
    let data = vec![9u8; 10_000];
    let loc;
    {
        let s = Server::start_on(&root, &[]);
        loc = location(
            &c.post(s.url("/v2/keep/blobs/uploads/"))
                .send()
                .await
                .unwrap(),
        );
        let r = c
            .patch(s.url(&loc))
            .header("content-range", "0-5999")
            .body(data[..6000].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let s = Server::start_on(&root, &[]);
    let r = c.get(s.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), "0-5999");
    let d = sha256(&data);
    let r = c
        .put(s.url(&format!("{loc}?digest={d}")))
        .header("content-range", "6000-9999")
        .body(data[6000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        201,
        "the digest state is rebuilt from the stored bytes"
    );
}

#[tokio::test]
async fn cross_repository_mount() {
    let s = Server::start();
    let c = client();
    let d = push_blob(&c, &s, "src/repo", b"mount me").await;
    let r = c
        .post(s.url(&format!("/v2/dst/blobs/uploads/?mount={d}&from=src/repo")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(location(&r), format!("/v2/dst/blobs/{d}"));
    assert_eq!(header(&r, "docker-content-digest"), d);
    assert_eq!(
        c.get(s.url(&format!("/v2/dst/blobs/{d}")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // From a repository that does not hold it: a new session instead.
    let missing = sha256(b"nowhere");
    let r = c
        .post(s.url(&format!(
            "/v2/dst2/blobs/uploads/?mount={missing}&from=src/repo"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(location(&r).starts_with("/v2/dst2/blobs/uploads/"));
    // Without `from`: mounted when the registry stores it (automatic cross-mount, default on).
    let r = c
        .post(s.url(&format!("/v2/dst3/blobs/uploads/?mount={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .post(s.url(&format!("/v2/dst3/blobs/uploads/?mount={missing}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Bad input.
    let r = c
        .post(s.url("/v2/dst/blobs/uploads/?mount=sha256:zz&from=src/repo"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = c
        .post(s.url(&format!("/v2/dst/blobs/uploads/?mount={d}&from=..%2Fetc")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "NAME_INVALID");

    let s2 = Server::start_with(&["--automatic-cross-mount", "false"]);
    let d = push_blob(&c, &s2, "src", b"mount me").await;
    let r = c
        .post(s2.url(&format!("/v2/dst/blobs/uploads/?mount={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "automatic cross-mount disabled");
}

#[tokio::test]
async fn manifests_by_tag_and_digest() {
    let s = Server::start();
    let c = client();
    let (m, d) = push_image(&c, &s, "img", "v1", "one").await;
    for reference in ["v1", d.as_str()] {
        let r = c
            .get(s.url(&format!("/v2/img/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&r, "docker-content-digest"), d);
        assert_eq!(r.text().await.unwrap(), m, "byte-exact");
        let r = c
            .head(s.url(&format!("/v2/img/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-length"), m.len().to_string());
    }
    // Manifests are also readable as blobs of their repository.
    assert_eq!(
        c.get(s.url(&format!("/v2/img/blobs/{d}")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Moving a tag.
    let (_, d2) = push_image(&c, &s, "img", "v1", "two").await;
    let r = c.head(s.url("/v2/img/manifests/v1")).send().await.unwrap();
    assert_eq!(header(&r, "docker-content-digest"), d2);
    // Unknown manifests and invalid references.
    for reference in ["nope", ".INVALID_MANIFEST_NAME", "a%2Fb"] {
        let r = c
            .get(s.url(&format!("/v2/img/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{reference}");
        assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    }
    let r = c
        .get(s.url("/v2/img/manifests/sha256:totallywrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = c
        .get(s.url(&format!("/v2/nothere/manifests/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Tag delete removes only the tag; digest delete removes the manifest and its tags.
    push_image(&c, &s, "img", "v2", "two").await;
    let r = c
        .delete(s.url("/v2/img/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        c.head(s.url("/v2/img/manifests/v1"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.head(s.url(&format!("/v2/img/manifests/{d2}")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.delete(s.url("/v2/img/manifests/v1"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let r = c
        .delete(s.url(&format!("/v2/img/manifests/{d2}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        c.head(s.url("/v2/img/manifests/v2"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let tags: Value = c
        .get(s.url("/v2/img/tags/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        tags["tags"],
        serde_json::json!([]),
        "repository stays, with no tags"
    );
    let r = c
        .delete(s.url(&format!("/v2/img/manifests/{d2}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn manifest_validation() {
    let s = Server::start();
    let c = client();
    let cfg = b"{}";
    let cd = push_blob(&c, &s, "v", cfg).await;
    let put = |reference: &str, ct: &str, body: String| {
        c.put(s.url(&format!("/v2/v/manifests/{reference}")))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    // Not JSON, missing fields, wrong schemaVersion, unsupported media type.
    for (body, ct) in [
        ("blablabla".to_owned(), OCI_MANIFEST),
        (
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#
                .to_owned(),
            OCI_MANIFEST,
        ),
        (
            image_manifest((&cd, 2), &[], "").replace("\"schemaVersion\":2", "\"schemaVersion\":1"),
            OCI_MANIFEST,
        ),
        (
            image_manifest((&cd, 2), &[], "").replace(&cd, "sha256:nothex"),
            OCI_MANIFEST,
        ),
        (image_manifest((&cd, 2), &[], ""), OCI_INDEX),
        (
            image_manifest((&cd, 2), &[], "").replace(OCI_MANIFEST, "application/x-unknown"),
            "application/x-unknown",
        ),
    ] {
        let r = put("bad", ct, body.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(error_code(r).await, "MANIFEST_INVALID", "{body}");
    }
    // A layer that was never pushed: MANIFEST_BLOB_UNKNOWN; with `urls` (foreign) it is fine.
    let missing = sha256(b"never pushed");
    let r = put(
        "m",
        OCI_MANIFEST,
        image_manifest((&cd, 2), &[(&missing, 12)], ""),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    let foreign = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{cd}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip","digest":"{missing}","size":12,"urls":["https://example.com/layer"]}}]}}"#
    );
    assert_eq!(
        put("foreign", OCI_MANIFEST, foreign)
            .await
            .unwrap()
            .status(),
        201
    );
    // A descriptor whose size disagrees with the blob.
    let r = put("m", OCI_MANIFEST, image_manifest((&cd, 3), &[], ""))
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    // No mediaType field: taken from Content-Type; empty layers are fine.
    let no_mt =
        image_manifest((&cd, 2), &[], "").replace(&format!(r#""mediaType":"{OCI_MANIFEST}","#), "");
    assert_eq!(
        put("nomt", OCI_MANIFEST, no_mt).await.unwrap().status(),
        201
    );
    // Digest references must match the body, in the algorithm given.
    let body = image_manifest((&cd, 2), &[], "");
    let r = put(&sha256(b"different"), OCI_MANIFEST, body.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert_eq!(
        put("sha256:baddigeststring", OCI_MANIFEST, body.clone())
            .await
            .unwrap()
            .status(),
        400
    );
    // Invalid tags on PUT.
    let r = put(".bad", OCI_MANIFEST, body.clone()).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = put(&"t".repeat(129), OCI_MANIFEST, body.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Over 4 MiB: 413; just under: accepted.
    let pad = "A".repeat(4 * 1024 * 1024);
    let huge = image_manifest(
        (&cd, 2),
        &[],
        &format!(r#","annotations":{{"pad":"{pad}"}}"#),
    );
    let r = put("huge", OCI_MANIFEST, huge).await.unwrap();
    assert_eq!(r.status(), 413);
    let big = image_manifest(
        (&cd, 2),
        &[],
        &format!(r#","annotations":{{"pad":"{}"}}"#, "A".repeat(3_900_000)),
    );
    assert_eq!(put("big", OCI_MANIFEST, big).await.unwrap().status(), 201);
    for tag in ["bad", "m", "huge"] {
        assert_eq!(
            c.head(s.url(&format!("/v2/v/manifests/{tag}")))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
    }
}

/// `allowSparseIndexes`: an index may leave out platforms (what a platform-filtered mirror
/// stores, keeping the index's digest); a pull of a left-out platform is MANIFEST_UNKNOWN, and
/// gc keeps what is there. Off, such an index is MANIFEST_BLOB_UNKNOWN.
#[tokio::test]
async fn sparse_indexes_are_accepted_only_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("berth.yaml");
    std::fs::write(&cfg, "allowSparseIndexes: true\n").unwrap();
    let sparse = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let strict = Server::start();
    let c = client();
    let absent = sha256(b"the arm64 image, not mirrored");
    for s in [&sparse, &strict] {
        let (m1, d1) = push_image(&c, s, "mirror/app", "amd64", "a").await;
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d1}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{absent}","size":1234,"platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#,
            m1.len()
        );
        let r = c
            .put(s.url("/v2/mirror/app/manifests/1.0"))
            .header("content-type", OCI_INDEX)
            .body(index.clone())
            .send()
            .await
            .unwrap();
        if std::ptr::eq(s, &strict) {
            assert_eq!(r.status(), 400);
            assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
            continue;
        }
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        let r = c
            .get(s.url("/v2/mirror/app/manifests/1.0"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "docker-content-digest"),
            sha256(index.as_bytes())
        );
        let r = c
            .get(s.url(&format!("/v2/mirror/app/manifests/{absent}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
        // Untag the amd64 image: the index still holds it, and gc keeps it and its blobs.
        let r = c
            .delete(s.url("/v2/mirror/app/manifests/amd64"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["gc", "--grace", "0s", "--delete-untagged", "--root"])
            .arg(&s.root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = c
            .get(s.url(&format!("/v2/mirror/app/manifests/{d1}")))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "gc kept the platform the index has");
        let m: Value = r.json().await.unwrap();
        let layer = m["layers"][0]["digest"].as_str().unwrap();
        let r = c
            .get(s.url(&format!("/v2/mirror/app/blobs/{layer}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test]
async fn indexes_docker_types_and_accept() {
    let s = Server::start();
    let c = client();
    let (m1, d1) = push_image(&c, &s, "multi", "amd64", "a").await;
    let (m2, d2) = push_image(&c, &s, "multi", "arm64", "b").await;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d1}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{d2}","size":{},"platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#,
        m1.len(),
        m2.len()
    );
    let r = c
        .put(s.url("/v2/multi/manifests/latest"))
        .header("content-type", OCI_INDEX)
        .body(index.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // A child missing from the repository.
    let orphan = index.replace(&d1, &sha256(b"no such manifest"));
    let r = c
        .put(s.url("/v2/multi/manifests/broken"))
        .header("content-type", OCI_INDEX)
        .body(orphan)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    // Content negotiation: an index is served to clients that accept it or anything.
    for accept in [
        None,
        Some("*/*"),
        Some(OCI_INDEX),
        Some("application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"),
    ] {
        let mut rq = c.get(s.url("/v2/multi/manifests/latest"));
        if let Some(a) = accept {
            rq = rq.header("accept", a);
        }
        let r = rq.send().await.unwrap();
        assert_eq!(r.status(), 200, "{accept:?}");
        assert_eq!(header(&r, "content-type"), OCI_INDEX);
    }
    let r = c
        .get(s.url("/v2/multi/manifests/latest"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a client that cannot read indexes");
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");

    // Docker schema 2 manifest and manifest list.
    let docker_m = m1
        .replace(
            OCI_MANIFEST,
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .replace(
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.docker.container.image.v1+json",
        );
    let r = c
        .put(s.url("/v2/multi/manifests/docker"))
        .header(
            "content-type",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .body(docker_m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let dd = sha256(docker_m.as_bytes());
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{dd}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        docker_m.len()
    );
    let r = c
        .put(s.url("/v2/multi/manifests/dlist"))
        .header(
            "content-type",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        )
        .body(list)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .get(s.url("/v2/multi/manifests/dlist"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "content-type"),
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
}

#[tokio::test]
async fn sha512_blobs_and_manifests() {
    let s = Server::start();
    let c = client();
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = vec![7u8; 100_000];
    let cd = sha512(cfg);
    let r = c
        .post(s.url(&format!("/v2/s5/blobs/uploads/?digest={cd}")))
        .body(cfg.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), cd);
    // Chunked upload finished with a sha512 digest (hashed sha256 on the way; re-hashed once).
    let ld = sha512(&layer);
    let loc = location(&c.post(s.url("/v2/s5/blobs/uploads/")).send().await.unwrap());
    c.patch(s.url(&loc))
        .header("content-range", "0-49999")
        .body(layer[..50_000].to_vec())
        .send()
        .await
        .unwrap();
    c.patch(s.url(&loc))
        .header("content-range", "50000-99999")
        .body(layer[50_000..].to_vec())
        .send()
        .await
        .unwrap();
    let r = c
        .put(s.url(&format!("{loc}?digest={ld}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .head(s.url(&format!("/v2/s5/blobs/{ld}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), ld);
    let m = image_manifest((&cd, cfg.len()), &[(&ld, layer.len())], "");
    let md = sha512(m.as_bytes());
    let r = c
        .put(s.url(&format!("/v2/s5/manifests/{md}")))
        .header("content-type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), md);
    assert_eq!(location(&r), format!("/v2/s5/manifests/{md}"));
    let r = c
        .get(s.url(&format!("/v2/s5/manifests/{md}")))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "docker-content-digest"), md);
    assert_eq!(r.text().await.unwrap(), m);
    assert_eq!(
        c.delete(s.url(&format!("/v2/s5/manifests/{md}")))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        c.delete(s.url(&format!("/v2/s5/blobs/{ld}")))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    // ?tag= on a push by digest tags it and says so.
    let m2 = image_manifest((&cd, cfg.len()), &[], "");
    let md2 = sha512(m2.as_bytes());
    let r = c
        .put(s.url(&format!("/v2/s5/manifests/{md2}?tag=t1&tag=t2")))
        .header("content-type", OCI_MANIFEST)
        .body(m2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "oci-tag"), "t1, t2");
    let r = c.head(s.url("/v2/s5/manifests/t2")).send().await.unwrap();
    assert_eq!(header(&r, "docker-content-digest"), md2);
}

#[tokio::test]
async fn tags_and_catalog_pagination() {
    let s = Server::start();
    let c = client();
    let (m, _) = push_image(&c, &s, "pag", "t00", "x").await;
    for i in 1..12 {
        let r = c
            .put(s.url(&format!("/v2/pag/manifests/t{i:02}")))
            .header("content-type", OCI_MANIFEST)
            .body(m.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let all: Value = c
        .get(s.url("/v2/pag/tags/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["name"], "pag");
    assert_eq!(all["tags"].as_array().unwrap().len(), 12);
    let r = c.get(s.url("/v2/pag/tags/list?n=5")).send().await.unwrap();
    assert_eq!(
        header(&r, "link"),
        "</v2/pag/tags/list?n=5&last=t04>; rel=\"next\""
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["tags"],
        serde_json::json!(["t00", "t01", "t02", "t03", "t04"])
    );
    let r = c
        .get(s.url("/v2/pag/tags/list?n=5&last=t09"))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("link").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["t10", "t11"]));
    let v: Value = c
        .get(s.url("/v2/pag/tags/list?last=t10"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tags"], serde_json::json!(["t11"]));
    let r = c.get(s.url("/v2/pag/tags/list?n=0")).send().await.unwrap();
    assert!(r.headers().get("link").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!([]));
    for bad in ["-1", "x", "1.5"] {
        let r = c
            .get(s.url(&format!("/v2/pag/tags/list?n={bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "n={bad}");
    }
    let r = c
        .get(s.url("/v2/unknown/repo/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");

    for repo in ["b/one", "a", "b", "c/d/e"] {
        push_blob(&c, &s, repo, b"x").await;
    }
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
        serde_json::json!(["a", "b", "b/one", "c/d/e", "pag"])
    );
    let r = c
        .get(s.url("/v2/_catalog?n=2&last=b"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "link"),
        "</v2/_catalog?n=2&last=c/d/e>; rel=\"next\""
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["b/one", "c/d/e"]));
}

#[tokio::test]
async fn referrers_api() {
    let s = Server::start();
    let c = client();
    let (_, subject) = push_image(&c, &s, "ref", "v1", "subject").await;
    let empty = push_blob(&c, &s, "ref", b"{}").await;
    let sig = push_blob(&c, &s, "ref", b"signature").await;
    let mut pushed = Vec::new();
    for (i, at) in [
        "application/vnd.example.sig",
        "application/vnd.example.sbom",
        "application/vnd.example.sig",
    ]
    .iter()
    .enumerate()
    {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{at}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[{{"mediaType":"application/octet-stream","digest":"{sig}","size":9}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":1}},"annotations":{{"n":"{i}"}}}}"#
        );
        let d = sha256(m.as_bytes());
        let r = c
            .put(s.url(&format!("/v2/ref/manifests/{d}")))
            .header("content-type", OCI_MANIFEST)
            .body(m)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(header(&r, "oci-subject"), subject);
        pushed.push(d);
    }
    // An index with a subject that does not exist yet.
    let ghost = sha256(b"not pushed yet");
    let idx = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{ghost}","size":123}}}}"#
    );
    let r = c
        .put(s.url("/v2/ref/manifests/idx"))
        .header("content-type", OCI_INDEX)
        .body(idx)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "oci-subject"), ghost);

    let r = c
        .get(s.url(&format!("/v2/ref/referrers/{subject}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), OCI_INDEX);
    assert!(r.headers().get("oci-filters-applied").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    let ms = v["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 3);
    assert!(
        ms.iter()
            .all(|m| m["annotations"]["n"].is_string() && m["mediaType"] == OCI_MANIFEST)
    );
    let r = c
        .get(s.url(&format!(
            "/v2/ref/referrers/{subject}?artifactType=application%2Fvnd.example.sig"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "oci-filters-applied"), "artifactType");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
    let v: Value = c
        .get(s.url(&format!("/v2/ref/referrers/{ghost}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    // Deleting a referrer removes it from the list.
    assert_eq!(
        c.delete(s.url(&format!("/v2/ref/manifests/{}", pushed[1])))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let v: Value = c
        .get(s.url(&format!("/v2/ref/referrers/{subject}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
    // Unknown subjects and repositories: an empty list; a bad digest: DIGEST_INVALID.
    let r = c
        .get(s.url(&format!("/v2/nope/referrers/{ghost}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(s.url("/v2/ref/referrers/sha256:zz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
}

#[tokio::test]
async fn hostile_names_and_paths() {
    let s = Server::start();
    let c = client();
    let too_long = "a".repeat(256);
    for name in [
        "UPPER",
        "a..b",
        "-a",
        "a__-b",
        too_long.as_str(),
        "a%20b",
        "_catalog/x",
    ] {
        let r = c
            .get(s.url(&format!("/v2/{name}/tags/list")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{name}");
        assert_eq!(error_code(r).await, "NAME_INVALID", "{name}");
        let r = c
            .post(s.url(&format!("/v2/{name}/blobs/uploads/")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{name}");
    }
    // Traversal in raw request paths, which no URL library would send as written.
    let host = s.addr.clone();
    for path in [
        "/v2/../../../etc/manifests/latest",
        "/v2/a/../../../../tmp/blobs/uploads/",
        "/v2/%2e%2e/%2e%2e/manifests/x",
        "/v2/a%2F..%2F..%2Fb/tags/list",
        "/v2/a/blobs/sha256:..%2F..%2F..%2Fetc%2Fpasswd",
        "/v2/a/blobs/uploads/..%2F..%2Fblobs",
        "/v2/a/manifests/..%2F..%2F_tags%2Fx",
        "/v2//etc/passwd/manifests/x",
    ] {
        for method in ["GET", "PUT", "POST", "PATCH", "DELETE"] {
            let st = raw_status(
                &s,
                &format!(
                    "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
                ),
            );
            assert!((400..500).contains(&st), "{method} {path} answered {st}");
        }
    }
    // Nothing was written outside the store, and no repository was created.
    let parent = s.root.parent().unwrap();
    let entries: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("data")]);
    let v: Value = c
        .get(s.url("/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["repositories"], serde_json::json!([]));
    // Methods a route does not support.
    let r = c.post(s.url("/v2/a/tags/list")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(error_code(r).await, "UNSUPPORTED");
}

#[test]
fn config_file_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("from-config");
    let cfg = dir.path().join("berth.yaml");
    std::fs::write(
        &cfg,
        format!(
            "addr: 127.0.0.1:0\nstorage:\n  filesystem:\n    root: {}\nlog:\n  format: json\n",
            root.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || root.join("blobs").is_dir()),
        "root taken from the config file"
    );
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("\"listening\""),
        "JSON log from the config file: {log}"
    );
    // A broken config file is a clear start-up error.
    std::fs::write(&cfg, "adr: typo\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid config file"));
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--addr",
        "--root",
        "--config",
        "--log-format",
        "BERTH_ADDR",
        "BERTH_ROOT",
    ] {
        assert!(help.contains(flag), "serve --help documents {flag}");
    }
}

#[tokio::test]
async fn cached_tag_lists_see_every_change() {
    let s = Server::start();
    let c = client();
    let (m, _) = push_image(&c, &s, "cache", "a", "x").await;
    let tags = |c: reqwest::Client, url: String| async move {
        let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
        v["tags"].clone()
    };
    let url = s.url("/v2/cache/tags/list");
    // Let the directory stamp settle so the next listings are served from the cache.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(tags(c.clone(), url.clone()).await, serde_json::json!(["a"]));
    assert_eq!(tags(c.clone(), url.clone()).await, serde_json::json!(["a"]));
    for round in 0..3 {
        let t = format!("b{round}");
        let r = c
            .put(s.url(&format!("/v2/cache/manifests/{t}")))
            .header("content-type", OCI_MANIFEST)
            .body(m.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let listed = tags(c.clone(), url.clone()).await;
        assert!(
            listed.as_array().unwrap().iter().any(|v| v == &t),
            "round {round}: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        tags(c.clone(), url.clone()).await;
        assert_eq!(
            c.delete(s.url(&format!("/v2/cache/manifests/{t}")))
                .send()
                .await
                .unwrap()
                .status(),
            202
        );
        let listed = tags(c.clone(), url.clone()).await;
        assert!(
            !listed.as_array().unwrap().iter().any(|v| v == &t),
            "round {round}: {listed}"
        );
    }
}
