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
