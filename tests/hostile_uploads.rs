//! Hostile uploads: blobs past `maxBlobBytes`, more sessions than `maxUploadSessions`.

mod common;

use common::Server;

#[tokio::test]
async fn a_chunked_patch_past_max_blob_bytes_is_refused_and_removed() {
    let s = Server::start_with(&["--max-blob-bytes", "1000"]);
    let c = common::client();
    let r = c.post(s.url("/v2/a/blobs/uploads/")).send().await.unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    // No Content-Length: a streamed body of 5000 bytes.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..5).map(|_| Ok(vec![7u8; 1000])).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let r = c
        .patch(s.url(&loc))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("SIZE_INVALID"));
    let r = c.get(s.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), 404, "the oversized session was kept");
}

#[tokio::test]
async fn a_declared_blob_past_max_blob_bytes_is_refused() {
    let s = Server::start_with(&["--max-blob-bytes", "10"]);
    let c = common::client();
    let bytes = vec![1u8; 11];
    let r = c
        .post(s.url(&format!(
            "/v2/a/blobs/uploads/?digest={}",
            common::sha256(&bytes)
        )))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn sessions_past_max_upload_sessions_are_denied() {
    let s = Server::start_with(&["--max-upload-sessions", "3"]);
    let c = common::client();
    for _ in 0..3 {
        let r = c.post(s.url("/v2/a/blobs/uploads/")).send().await.unwrap();
        assert_eq!(r.status(), 202);
    }
    let r = c.post(s.url("/v2/a/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("maxUploadSessions"));
    // Another repository has its own allowance.
    let r = c.post(s.url("/v2/b/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn stored_files_are_not_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::start();
    let c = common::client();
    let d = common::push_blob(&c, &s, "a", b"secret layer").await;
    let hex = d.strip_prefix("sha256:").unwrap();
    let blob = s.root.join("blobs/sha256").join(&hex[..2]).join(hex);
    let mode = std::fs::metadata(&blob).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o007, 0, "blob mode {mode:o}");
    let dir = std::fs::metadata(s.root.join("blobs"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir & 0o007, 0, "dir mode {dir:o}");
}

/// 32 MiB of body in 64 KiB pieces, streamed (no Content-Length) or declared.
fn big_body(declared: bool) -> reqwest::Body {
    let piece = vec![7u8; 64 << 10];
    if declared {
        return reqwest::Body::from(piece.repeat(512));
    }
    let chunks = (0..512).map(move |_| Ok::<_, std::io::Error>(piece.clone()));
    reqwest::Body::wrap_stream(futures::stream::iter(chunks))
}

/// A client still sending when the upload is refused reads the refusal, not a reset: the
/// server reads what is left of the body before answering (what hyper alone does not).
#[tokio::test]
async fn a_refused_upload_still_being_sent_gets_its_answer() {
    let s = Server::start_with(&["--max-blob-bytes", "1000"]);
    let c = common::client();
    let digest = common::sha256(b"never stored");
    for declared in [false, true, false, true] {
        let r = c
            .post(s.url(&format!("/v2/a/blobs/uploads/?digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(big_body(declared))
            .send()
            .await
            .unwrap_or_else(|e| panic!("declared={declared}: {e:?}"));
        assert_eq!(r.status(), 413, "declared={declared}");
        assert!(r.text().await.unwrap().contains("SIZE_INVALID"));
    }
}

/// After a refused body was read to its end, the same connection serves the next request.
#[test]
fn the_connection_of_a_drained_refusal_stays_usable() {
    use std::io::{BufRead, BufReader, Read, Write};
    let s = Server::start_with(&["--max-blob-bytes", "1000"]);
    let mut conn = std::net::TcpStream::connect(s.host()).unwrap();
    let body = vec![1u8; 4 << 20];
    let digest = common::sha256(&body);
    write!(
        conn,
        "POST /v2/a/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let sent = std::thread::spawn(move || writer.write_all(&body));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    sent.join().unwrap().unwrap();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    reader.read_exact(&mut vec![0; length]).unwrap();
    conn.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut next = String::new();
    reader.read_line(&mut next).unwrap();
    assert!(next.starts_with("HTTP/1.1 200"), "{next}");
}
