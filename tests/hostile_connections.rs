//! Hostile connections: slowloris headers, idle keep-alives, a body that never ends, and a
//! flood past the connection cap, against a real `berth serve` with small timeouts.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Server;

/// Reads until the server closes the connection (or `within` passes); true if it closed.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn a_partial_header_is_dropped_after_the_header_read_timeout() {
    let s = Server::start_with(&["--header-read-timeout", "1s"]);
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").unwrap();
    let t = Instant::now();
    assert!(
        closed_within(&mut c, Duration::from_secs(5)),
        "slowloris kept open"
    );
    assert!(t.elapsed() < Duration::from_secs(4));
}

#[test]
fn an_idle_connection_is_closed() {
    let s = Server::start_with(&["--header-read-timeout", "1s", "--idle-timeout", "1s"]);
    let mut c = TcpStream::connect(&s.addr).unwrap();
    assert!(
        closed_within(&mut c, Duration::from_secs(5)),
        "idle connection kept open"
    );
}

#[test]
fn a_stalled_body_frees_the_upload_session() {
    let s = Server::start_with(&["--idle-timeout", "1s"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = common::client();
    let loc = rt.block_on(async {
        let r = c.post(s.url("/v2/a/blobs/uploads/")).send().await.unwrap();
        assert_eq!(r.status(), 202);
        r.headers()["location"].to_str().unwrap().to_owned()
    });
    let mut stall = TcpStream::connect(&s.addr).unwrap();
    write!(
        stall,
        "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\nabc"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let status = rt.block_on(async {
        let r = c
            .patch(s.url(&loc))
            .header("content-type", "application/octet-stream")
            .body("hello")
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("second PATCH hung behind a stalled body");
        r.status()
    });
    assert_eq!(status, 202);
    drop(stall);
}

/// Sends a GET on a kept-alive connection and reads its whole response.
fn get_keep_alive(c: &mut TcpStream, path: &str) -> String {
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    read_response(c)
}

/// Reads one response (headers and a Content-Length body) without waiting for a close.
fn read_response(c: &mut TcpStream) -> String {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return text;
            }
        }
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return text,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn at_the_connection_cap_idle_keep_alives_make_room_and_a_busy_upload_stays() {
    // A header timeout far longer than the test: without eviction nothing frees a slot.
    let s = Server::start_with(&["--max-connections", "20", "--header-read-timeout", "60s"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let loc = rt.block_on(async {
        let c = common::client();
        let r = c.post(s.url("/v2/a/blobs/uploads/")).send().await.unwrap();
        assert_eq!(r.status(), 202);
        r.headers()["location"].to_str().unwrap().to_owned()
    });
    // A connection mid-request: an upload whose body comes slowly.
    let mut upload = TcpStream::connect(&s.addr).unwrap();
    write!(
        upload,
        "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 10\r\n\r\nabc"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Fill the cap (20 with the upload) with idle keep-alive connections that have each
    // served a request.
    let mut idle: Vec<TcpStream> = (0..19)
        .map(|_| {
            let mut c = TcpStream::connect(&s.addr).unwrap();
            let r = get_keep_alive(&mut c, "/v2/");
            assert!(r.starts_with("HTTP/1.1 200"), "{r:?}");
            c
        })
        .collect();
    // Each new client is served at once, the longest-idle connection closed for it; more new
    // clients than there were idle connections, so the newcomers make room for each other too.
    let mut newcomers = Vec::new();
    for i in 0..30 {
        let t = Instant::now();
        let mut c = TcpStream::connect(&s.addr).unwrap();
        let r = get_keep_alive(&mut c, "/v2/");
        assert!(r.starts_with("HTTP/1.1 200"), "newcomer {i}: {r:?}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "newcomer {i} waited {:?} at the cap",
            t.elapsed()
        );
        newcomers.push(c);
    }
    assert!(
        closed_within(&mut idle[0], Duration::from_secs(2)),
        "the longest-idle connection was not closed"
    );
    // The upload was never taken for room: it finishes on its connection.
    upload.write_all(b"defghij").unwrap();
    let r = read_response(&mut upload);
    assert!(r.starts_with("HTTP/1.1 202"), "upload: {r:?}");
    assert!(
        r.to_ascii_lowercase().contains("range: 0-9"),
        "upload: {r:?}"
    );
    let logs = s.logs.lock().unwrap().join("\n");
    assert_eq!(
        logs.matches("connection limit reached").count(),
        1,
        "one warning, not one per connection: {logs}"
    );
}

#[test]
fn past_the_connection_cap_with_every_connection_busy_new_ones_wait() {
    let s = Server::start_with(&["--max-connections", "2", "--idle-timeout", "2s"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let locs: Vec<String> = rt.block_on(async {
        let c = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let mut out = vec![];
        for _ in 0..2 {
            let r = c.post(s.url("/v2/a/blobs/uploads/")).send().await.unwrap();
            assert_eq!(r.status(), 202);
            out.push(r.headers()["location"].to_str().unwrap().to_owned());
        }
        out
    });
    std::thread::sleep(Duration::from_millis(200));
    // Two stalled bodies: both connections busy, nothing to close for room.
    let stalled: Vec<TcpStream> = locs
        .iter()
        .map(|loc| {
            let mut c = TcpStream::connect(&s.addr).unwrap();
            write!(
                c,
                "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\nabc"
            )
            .unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let mut c = TcpStream::connect(&s.addr).unwrap();
    let r = get_keep_alive(&mut c, "/v2/");
    assert!(r.starts_with("HTTP/1.1 200"), "got {r:?}");
    // Served once the idle timeout ends a stalled body, not before.
    assert!(
        t.elapsed() > Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    let logs = s.logs.lock().unwrap().join("\n");
    assert!(
        logs.contains("connection limit reached"),
        "no warning: {logs}"
    );
    drop(stalled);
}

#[test]
fn an_invalid_log_level_refuses_to_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--log-level",
            "loud",
            "--root",
        ])
        .arg(tempfile::tempdir().unwrap().path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a log filter"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
