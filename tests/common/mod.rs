//! Test harness: a real `berth serve` process on an ephemeral loopback port, over a temporary
//! directory, plus small helpers that push blobs and manifests over plain HTTP.
#![allow(dead_code)]

pub mod faults;
pub mod garage;
pub mod helm;
pub mod needs;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth::oci::Algorithm;

pub struct Server {
    child: Child,
    pub addr: String,
    pub root: PathBuf,
    _dir: Option<tempfile::TempDir>,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// A server on a fresh temporary directory.
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        let mut s = Self::start_on(&root, args);
        s._dir = Some(dir);
        s
    }

    /// A server on `root` (which may already hold data from an earlier server).
    pub fn start_on(root: &Path, args: &[&str]) -> Server {
        let mut all: Vec<std::ffi::OsString> = vec!["--root".into(), root.into()];
        all.extend(args.iter().map(|a| a.into()));
        Self::launch(root, &all)
    }

    /// A server configured by a YAML file (an object-store backend, say); `root` is only a
    /// label then.
    pub fn start_config(config: &Path, args: &[&str]) -> Server {
        let mut all: Vec<std::ffi::OsString> = vec!["--config".into(), config.into()];
        all.extend(args.iter().map(|a| a.into()));
        Self::launch(Path::new("/nonexistent-s3-backed"), &all)
    }

    fn launch(root: &Path, args: &[std::ffi::OsString]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("serve")
            .args(["--addr", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn berth serve");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(t) = &tx
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["fields"]["message"] == "listening"
                {
                    let _ = t.send(v["fields"]["addr"].as_str().unwrap_or_default().to_owned());
                    tx = None;
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "berth serve did not start; logs: {:?}",
                    logs.lock().unwrap()
                )
            });
        Server {
            child,
            addr,
            root: root.to_owned(),
            _dir: None,
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `host:port`, as docker and skopeo want it.
    pub fn host(&self) -> &str {
        &self.addr
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// CNCF Distribution (Debian's `docker-registry`) on a loopback port over `dir`, stopped and
/// reaped however the test ends.
pub struct Distribution {
    child: Child,
    pub port: u16,
}

impl Distribution {
    pub fn start(dir: &Path) -> Distribution {
        needs::need("docker-registry");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("its address")
            .port();
        let cfg = dir.join("dist.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("dist").display()
            ),
        )
        .expect("write dist.yml");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn docker-registry");
        let d = Distribution { child, port };
        assert!(
            wait_until(Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "Distribution did not start"
        );
        d
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `len` bytes that differ with `seed` and do not compress: a layer for tests that need one
/// of some size.
pub fn noise(len: u32, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8)
        .collect()
}

pub fn sha256(bytes: &[u8]) -> String {
    Algorithm::Sha256.digest_of(bytes).to_string()
}

pub fn sha512(bytes: &[u8]) -> String {
    Algorithm::Sha512.digest_of(bytes).to_string()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Pushes `bytes` to `repo` with a monolithic POST; returns the digest.
pub async fn push_blob(c: &reqwest::Client, s: &Server, repo: &str, bytes: &[u8]) -> String {
    let d = sha256(bytes);
    let r = c
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
        .body(bytes.to_vec())
        .send()
        .await
        .expect("push blob");
    assert_eq!(r.status(), 201, "push blob: {:?}", r.text().await);
    d
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// An OCI image manifest over `config` and `layers` (digest, size) pairs.
pub fn image_manifest(config: (&str, usize), layers: &[(&str, usize)], extra: &str) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, n)| {
            format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{n}}}"#)
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}]{extra}}}"#,
        config.0,
        config.1,
        layers.join(",")
    )
}

/// Pushes a small image (config + one layer) to `repo:reference`; returns the manifest and its
/// digest.
pub async fn push_image(
    c: &reqwest::Client,
    s: &Server,
    repo: &str,
    reference: &str,
    seed: &str,
) -> (String, String) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#);
    let layer = format!("layer bytes for {seed}").repeat(10);
    push_image_of(
        c,
        s,
        repo,
        reference,
        config.as_bytes(),
        &[layer.as_bytes()],
    )
    .await
}

/// Pushes an image of `config` and `layers` to `repo:reference`; returns the manifest and its
/// digest.
pub async fn push_image_of(
    c: &reqwest::Client,
    s: &Server,
    repo: &str,
    reference: &str,
    config: &[u8],
    layers: &[&[u8]],
) -> (String, String) {
    let cd = push_blob(c, s, repo, config).await;
    let mut refs = Vec::new();
    for l in layers {
        refs.push((push_blob(c, s, repo, l).await, l.len()));
    }
    let refs: Vec<(&str, usize)> = refs.iter().map(|(d, n)| (d.as_str(), *n)).collect();
    let m = image_manifest((&cd, config.len()), &refs, "");
    let r = c
        .put(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("content-type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .expect("push manifest");
    assert_eq!(r.status(), 201, "push manifest: {:?}", r.text().await);
    let d = sha256(m.as_bytes());
    (m, d)
}

/// GETs `url`, expects 200 and returns the JSON body.
pub async fn get_json(url: &str) -> serde_json::Value {
    let r = client().get(url).send().await.expect("GET");
    assert_eq!(r.status(), 200, "GET {url}");
    r.json().await.expect("JSON body")
}

/// Reads a response to its end; returns when its first byte came, the bytes, and whether it
/// was a 200 whose body ended cleanly.
pub async fn read_timed(r: reqwest::Response) -> (Instant, Vec<u8>, bool) {
    use futures::StreamExt;
    let ok = r.status() == 200;
    let mut first = None;
    let mut body = Vec::new();
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => {
                first.get_or_insert_with(Instant::now);
                body.extend_from_slice(&b);
            }
            Err(_) => return (first.unwrap_or_else(Instant::now), body, false),
        }
    }
    (first.unwrap_or_else(Instant::now), body, ok)
}

/// Waits until `f` is true or the deadline passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Every file under `root/blobs` hashes to its own name: nothing torn or partial is visible.
pub fn assert_blob_store_consistent(root: &Path) -> usize {
    let mut n = 0;
    for alg in ["sha256", "sha512"] {
        let Ok(prefixes) = std::fs::read_dir(root.join("blobs").join(alg)) else {
            continue;
        };
        for p in prefixes {
            for f in std::fs::read_dir(p.unwrap().path()).unwrap() {
                let f = f.unwrap();
                let name = f.file_name().into_string().unwrap();
                if name.starts_with('.') {
                    continue;
                }
                let bytes = std::fs::read(f.path()).unwrap();
                let got = match alg {
                    "sha256" => sha256(&bytes),
                    _ => sha512(&bytes),
                };
                assert_eq!(
                    got,
                    format!("{alg}:{name}"),
                    "blob file {name} does not match its digest"
                );
                n += 1;
            }
        }
    }
    n
}

/// Writes an htpasswd file of bcrypt entries (cost 4: fast tests, same format).
pub fn write_htpasswd(path: &Path, users: &[(&str, &str)]) {
    let text: String = users
        .iter()
        .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).expect("bcrypt")))
        .collect();
    std::fs::write(path, text).expect("write htpasswd");
}

/// An `Authorization: Basic` value.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Runs `berth token ...` on `root`; returns stdout (panics on failure).
pub fn berth_token(root: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("token")
        .args(args)
        .arg("--root")
        .arg(root)
        .output()
        .expect("run berth token");
    assert!(
        out.status.success(),
        "berth token {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// The audit lines, once one matching `pred` has arrived (the log is read by another thread).
pub fn audit_lines_after(
    s: &Server,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    wait_until(Duration::from_secs(5), || audit_lines(s).iter().any(&pred));
    audit_lines(s)
}

/// The lines of the server's JSON log with target `audit`.
pub fn audit_lines(s: &Server) -> Vec<serde_json::Value> {
    s.logs
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "audit")
        .collect()
}

/// `berth gc --json --root <root> <args>`: the report, after checking it succeeded.
pub fn gc_json(root: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["gc", "--json", "--root"])
        .arg(root)
        .args(args)
        .output()
        .expect("run berth gc");
    assert!(
        out.status.success(),
        "berth gc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("gc --json prints JSON")
}

/// Starts `berth serve` on `config` (a root under `dir`) expecting it to refuse: returns its
/// stderr, after checking it failed and said so in one line.
pub fn serve_refuses(dir: &Path, config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--addr", "127.0.0.1:0", "--root"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(config)
        .output()
        .expect("run berth serve");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "berth serve started: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    err
}

/// A response's status and the message of its first OCI error (empty when it has none).
pub async fn status_and_message(r: reqwest::Response) -> (u16, String) {
    let st = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    (
        st,
        v["errors"][0]["message"].as_str().unwrap_or("").to_owned(),
    )
}
