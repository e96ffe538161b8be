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

#[test]
fn past_the_connection_cap_open_ones_are_served_and_the_rest_wait() {
    let s = Server::start_with(&["--max-connections", "4", "--header-read-timeout", "2s"]);
    let hold: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(&s.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Once the header timeout drops the silent ones, a normal client gets through.
    let t = Instant::now();
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "got {out:?}");
    assert!(t.elapsed() < Duration::from_secs(8));
    let logs = s.logs.lock().unwrap().join("\n");
    assert!(
        logs.contains("connection limit reached"),
        "no warning: {logs}"
    );
    drop(hold);
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
