//! A fault-injecting HTTP proxy for upstream tests: forwards each request (one per
//! connection, `Connection: close`) to a real registry and records "METHOD path STATUS", or
//! answers 429, corrupts a blob body, or cuts it off midway, as the test sets.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// 429 with this Retry-After, without asking the upstream.
    TooMany(u64),
    /// Blob bodies get one byte flipped.
    Corrupt,
    /// Blob bodies stop halfway and the connection closes.
    Cut,
    /// The connection is closed at once.
    Down,
    /// Blob GETs are refused with 403 DENIED (an upstream whose manifests name blobs it will
    /// not serve).
    RefuseBlobs,
    /// Requests whose path contains this answer 404 MANIFEST_UNKNOWN (a tag deleted at the
    /// source after its tag list was read).
    Gone(&'static str),
    /// Blob bodies are sent in pieces of 128 KiB every 50 ms (a slow upstream), and with
    /// `cut` stop after half.
    Trickle {
        cut: bool,
    },
}

/// [`Mode::Trickle`]'s pace.
const TRICKLE_PIECE: usize = 128 << 10;
const TRICKLE_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Clone)]
pub struct Faults {
    pub addr: String,
    mode: Arc<Mutex<Mode>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Faults {
    pub async fn start(upstream: &str) -> Faults {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let f = Faults {
            addr: listener.local_addr().unwrap().to_string(),
            mode: Arc::new(Mutex::new(Mode::Pass)),
            log: Arc::new(Mutex::new(Vec::new())),
        };
        let (mode, log, upstream) = (f.mode.clone(), f.log.clone(), upstream.to_owned());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (mode, log, upstream) = (mode.clone(), log.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, &upstream, mode, log).await;
                });
            }
        });
        f
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    /// "METHOD path STATUS" of every request seen, in order.
    pub fn seen(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }

    /// How many requests matched `method`, a path containing `path` and `status`.
    pub fn count(&self, method: &str, path: &str, status: u16) -> usize {
        self.seen()
            .iter()
            .filter(|l| {
                let mut p = l.split(' ');
                p.next() == Some(method)
                    && p.next().is_some_and(|x| x.contains(path))
                    && p.next() == Some(status.to_string().as_str())
            })
            .count()
    }
}

async fn read_head(conn: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok((buf, rest));
        }
    }
}

async fn serve(
    mut conn: TcpStream,
    upstream: &str,
    mode: Arc<Mutex<Mode>>,
    log: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let (head, rest) = read_head(&mut conn).await?;
    let text = String::from_utf8_lossy(&head).to_string();
    let mut first = text.lines().next().unwrap_or_default().split(' ');
    let (method, path) = (
        first.next().unwrap_or_default().to_owned(),
        first.next().unwrap_or_default().to_owned(),
    );
    let m = *mode.lock().unwrap();
    let record = |status: u16| {
        log.lock()
            .unwrap()
            .push(format!("{method} {path} {status}"))
    };
    match m {
        Mode::Down => return Ok(()),
        Mode::Gone(part) if path.contains(part) => {
            record(404);
            let body = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
            let resp = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(resp.as_bytes()).await?;
            return conn.shutdown().await;
        }
        Mode::RefuseBlobs if path.contains("/blobs/") => {
            record(403);
            let body = r#"{"errors":[{"code":"DENIED","message":"this blob is not for you"}]}"#;
            let resp = format!(
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(resp.as_bytes()).await?;
            return conn.shutdown().await;
        }
        Mode::TooMany(secs) => {
            record(429);
            let resp = format!(
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {secs}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            conn.write_all(resp.as_bytes()).await?;
            return conn.shutdown().await;
        }
        _ => {}
    }
    // Forward with Connection: close, so one request is one connection.
    let mut lines: Vec<&str> = text.trim_end().split("\r\n").collect();
    lines.retain(|l| !l.to_ascii_lowercase().starts_with("connection:"));
    let head = format!("{}\r\nConnection: close\r\n\r\n", lines.join("\r\n"));
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(head.as_bytes()).await?;
    up.write_all(&rest).await?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp).await?;
    let status: u16 = String::from_utf8_lossy(&resp[..resp.len().min(16)])
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    record(status);
    let body_at = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(resp.len());
    let blob = path.contains("/blobs/") && method == "GET" && status == 200 && resp.len() > body_at;
    match m {
        Mode::Corrupt if blob => {
            let i = body_at + (resp.len() - body_at) / 2;
            resp[i] ^= 0xff;
            conn.write_all(&resp).await?;
        }
        Mode::Cut if blob => {
            let half = body_at + (resp.len() - body_at) / 2;
            conn.write_all(&resp[..half]).await?;
        }
        Mode::Trickle { cut } if blob => {
            conn.write_all(&resp[..body_at]).await?;
            let end = if cut {
                body_at + (resp.len() - body_at) / 2
            } else {
                resp.len()
            };
            for piece in resp[body_at..end].chunks(TRICKLE_PIECE) {
                conn.write_all(piece).await?;
                conn.flush().await?;
                tokio::time::sleep(TRICKLE_EVERY).await;
            }
        }
        _ => conn.write_all(&resp).await?,
    }
    conn.shutdown().await
}
