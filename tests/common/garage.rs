//! A throwaway Garage cluster (an S3-compatible object store) on loopback, for tests of the S3
//! storage backend: every node is a real `garage server` child process over its own directory in
//! a temporary directory, with its own free ports, and the cluster is ready (layout applied,
//! healthy, an access key imported, every S3 API answering) when [`Garage::start`] returns.
//!
//! Needs the `garage` binary: `GARAGE_BIN`, else `garage` on `PATH`, else
//! `$CARGO_HOME/bin/garage` (`~/.cargo/bin/garage`); install it with
//! `cargo install garage --locked`. Written against Garage v2.5 (its CLI talks to the local node
//! over RPC, reading the node's config file for the address and `rpc_secret`).
//!
//! Nodes keep Garage's defaults: metadata in SQLite, data in 1 MiB blocks (zstd level 1), and
//! `consistency_mode = "consistent"`. Quorums are then `read = ceil(rf / 2)` and
//! `write = rf + 1 - read`:
//! - `replication_factor = 3`: reads and writes need 2 of the 3 copies, so with one node of
//!   three down writes and reads **still succeed** (the cluster is "degraded"); with two down
//!   they fail ("unavailable").
//! - `replication_factor = 2`: reads need 1, writes need 2, so one node down makes writes fail.
//! - `replication_factor = 1`: any node holding a partition being down fails its requests.
//!
//! Each node logs to `node<i>/garage.log` under [`Garage::dir`]; panics here quote its tail.
//! Every node is killed (SIGKILL) when the [`Garage`] is dropped; its directory is removed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a cluster (or a restarted node) gets to become ready before we give up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Garage {
    /// `http://127.0.0.1:PORT`: node 0's S3 API. Use [`Garage::s3_endpoint`] for the others.
    pub endpoint: String,
    /// The S3 region every node answers for (`s3_region`): "garage".
    pub region: String,
    /// An access key with read, write and owner rights on every bucket made by
    /// [`Garage::create_bucket`].
    pub key_id: String,
    pub secret: String,
    /// Bearer token of every node's admin API ([`Garage::admin_endpoint`]).
    pub admin_token: String,
    pub replication: usize,
    nodes: Vec<Node>,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

struct Node {
    dir: PathBuf,
    config: PathBuf,
    s3_port: u16,
    rpc_port: u16,
    admin_port: u16,
    /// Full hex node id (public key), known once the node has started once.
    id: String,
    child: Option<Child>,
}

impl Node {
    fn log(&self) -> PathBuf {
        self.dir.join("garage.log")
    }

    fn rpc_addr(&self) -> String {
        format!("{}@127.0.0.1:{}", self.id, self.rpc_port)
    }
}

/// The `garage` binary: `GARAGE_BIN`, `garage` on `PATH`, or `$CARGO_HOME/bin/garage`.
pub fn garage_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GARAGE_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("garage"));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|d| d.join("bin").join("garage"));
    on_path.chain(cargo_home).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Garage {
    /// Starts `nodes` nodes with `replication_factor = replication`, all storage nodes of
    /// capacity 1 GB in zone `dc1`, and returns once the cluster is healthy, the key exists, and
    /// every node's S3 API answers.
    pub fn start(nodes: usize, replication: usize) -> Garage {
        assert!(
            nodes >= 1 && (1..=nodes).contains(&replication),
            "Garage::start({nodes}, {replication}): need 1 <= replication <= nodes"
        );
        let bin = garage_bin().unwrap_or_else(|| {
            panic!(
                "this test needs garage (GARAGE_BIN, PATH or ~/.cargo/bin): `cargo install \
                 garage --locked --version 2.5.0` (tests/run-all.sh installs everything the \
                 tests need)"
            )
        });
        // Ports are picked by binding port 0 and releasing it, so another process can take one
        // in between: start again on fresh ports if a node could not bind.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(&bin, nodes, replication) {
                Ok(g) => return g,
                Err(e) if attempt < 3 && e.contains("in use") => continue,
                Err(e) => panic!("Garage::start({nodes}, {replication}) failed: {e}"),
            }
        }
    }

    fn try_start(bin: &Path, n: usize, replication: usize) -> Result<Garage, String> {
        let dir = tempfile::Builder::new()
            .prefix("berth-garage-")
            .tempdir()
            .expect("tempdir");
        let ports = free_ports(3 * n);
        let rpc_secret = random_hex(32);
        let admin_token = random_hex(32);
        let mut g = Garage {
            endpoint: String::new(),
            region: "garage".to_owned(),
            key_id: format!("GK{}", random_hex(12)),
            secret: random_hex(32),
            admin_token,
            replication,
            nodes: Vec::new(),
            bin: bin.to_owned(),
            dir,
        };
        for i in 0..n {
            let node_dir = g.dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            g.nodes.push(Node {
                config: node_dir.join("garage.toml"),
                dir: node_dir,
                s3_port: ports[3 * i],
                rpc_port: ports[3 * i + 1],
                admin_port: ports[3 * i + 2],
                id: String::new(),
                child: None,
            });
            g.write_config(i, &rpc_secret);
        }
        for i in 0..n {
            g.spawn(i);
        }
        // The node id is the public key each node generates in its metadata dir at startup.
        for i in 0..n {
            let pubkey = g.nodes[i].dir.join("meta").join("node_key.pub");
            g.wait(i, "its node key", || {
                std::fs::metadata(&pubkey).is_ok_and(|m| m.len() == 32)
            })?;
            let out = g.cli_on(i, &["node", "id", "-q"]);
            if !out.status.success() {
                return Err(format!(
                    "`garage node id` on node {i}: {}",
                    g.explain(i, &out)
                ));
            }
            let line = String::from_utf8_lossy(&out.stdout);
            g.nodes[i].id = line.trim().split('@').next().unwrap_or_default().to_owned();
        }
        // Peers are remembered in each node's metadata dir, but also name them in every config
        // file so that nodes restarted by start_node/start_all find each other.
        for i in 0..n {
            g.write_config(i, &rpc_secret);
        }
        for i in 1..n {
            let peer = g.nodes[i].rpc_addr();
            g.retry_cli(0, &["node", "connect", &peer])?;
        }
        let ids: Vec<String> = g.nodes.iter().map(|n| n.id.clone()).collect();
        let mut assign = vec!["layout", "assign", "-z", "dc1", "-c", "1G"];
        assign.extend(ids.iter().map(String::as_str));
        g.retry_cli(0, &assign)?;
        g.cli_once(0, &["layout", "apply", "--version", "1"])?;
        g.wait_healthy()?;
        let (key_id, secret) = (g.key_id.clone(), g.secret.clone());
        g.cli_once(
            0,
            &[
                "key",
                "import",
                "--yes",
                "-n",
                "berth-test",
                &key_id,
                &secret,
            ],
        )?;
        for i in 0..n {
            g.wait_s3(i)?;
        }
        g.endpoint = g.s3_endpoint(0);
        Ok(g)
    }

    /// Creates bucket `name` and gives the key read, write and owner rights on it.
    pub fn create_bucket(&self, name: &str) {
        let i = self.running_node();
        self.cli_once(i, &["bucket", "create", name])
            .unwrap_or_else(|e| panic!("create bucket {name}: {e}"));
        let key_id = self.key_id.clone();
        self.cli_once(
            i,
            &[
                "bucket", "allow", "--read", "--write", "--owner", name, "--key", &key_id,
            ],
        )
        .unwrap_or_else(|e| panic!("allow the key on bucket {name}: {e}"));
    }

    /// `http://127.0.0.1:PORT` of node `node`'s S3 API.
    pub fn s3_endpoint(&self, node: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[node].s3_port)
    }

    /// `http://127.0.0.1:PORT` of node `node`'s admin API (bearer [`Garage::admin_token`]).
    pub fn admin_endpoint(&self, node: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[node].admin_port)
    }

    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The temporary directory holding every node's config, data and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// Node `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].log()).unwrap_or_default()
    }

    /// Kills node `i` with SIGKILL, as a crash would, and reaps it. A no-op if it is stopped.
    ///
    /// Its peers notice only by a failed ping, about 8-10 s later: until then
    /// [`Garage::health`] still says `healthy`, and the first requests that need the dead node
    /// (a PUT, even of a few bytes) stall until then before succeeding on the others' quorum.
    /// Give S3 clients a timeout above that, or call [`Garage::wait_settled`] first.
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts node `i` on its config and data, and waits until its S3 API answers and the
    /// running nodes are all connected again (and, if every node runs, the cluster is healthy).
    pub fn start_node(&mut self, i: usize) {
        if self.nodes[i].child.is_some() {
            return;
        }
        self.spawn(i);
        self.wait_restarted(&[i]);
    }

    /// Kills every node (SIGKILL): Garage goes away entirely.
    pub fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i);
        }
    }

    /// Restarts every stopped node and waits until the cluster is healthy.
    pub fn start_all(&mut self) {
        let stopped: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_none())
            .collect();
        for &i in &stopped {
            self.spawn(i);
        }
        self.wait_restarted(&stopped);
    }

    /// Runs `garage -c <node i's config> args...` and returns its output, whatever its status.
    pub fn cli_on(&self, i: usize, args: &[&str]) -> Output {
        self.command(i)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bin.display()))
    }

    /// Runs a `garage` CLI command on a running node; panics unless it succeeds.
    pub fn cli(&self, args: &[&str]) -> String {
        let i = self.running_node();
        let out = self.cli_on(i, args);
        assert!(
            out.status.success(),
            "garage {args:?}: {}",
            self.explain(i, &out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `garage -c <node i's config>`, in an environment cleared of what would override it
    /// (`GARAGE_RPC_HOST`, `GARAGE_RPC_SECRET`, ...) and of colors in the logs.
    fn command(&self, i: usize) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("-c").arg(&self.nodes[i].config);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("GARAGE_") {
                c.env_remove(k);
            }
        }
        c.env_remove("RUST_LOG").env("NO_COLOR", "1");
        c
    }

    fn running_node(&self) -> usize {
        (0..self.nodes.len())
            .find(|&i| self.is_running(i))
            .expect("no Garage node is running")
    }

    fn write_config(&self, i: usize, rpc_secret: &str) {
        let node = &self.nodes[i];
        let peers: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, n)| *j != i && !n.id.is_empty())
            .map(|(_, n)| format!("\"{}\"", n.rpc_addr()))
            .collect();
        let config = format!(
            r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = {replication}
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{rpc_secret}"
bootstrap_peers = [{peers}]

[s3_api]
s3_region = "{region}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{token}"
"#,
            dir = node.dir.display(),
            replication = self.replication,
            rpc = node.rpc_port,
            peers = peers.join(", "),
            region = self.region,
            s3 = node.s3_port,
            admin = node.admin_port,
            token = self.admin_token,
        );
        std::fs::write(&node.config, config).expect("write garage.toml");
    }

    fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log())
            .expect("open garage.log");
        let child = self
            .command(i)
            .arg("server")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} server: {e}", self.bin.display()));
        self.nodes[i].child = Some(child);
    }

    /// Polls `ready` until it holds; fails early, with the log, if node `i` exits.
    fn wait(
        &mut self,
        i: usize,
        what: &str,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let end = Instant::now() + READY_TIMEOUT;
        let mut pause = Duration::from_millis(10);
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(c) = self.nodes[i].child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.nodes[i].child = None;
                return Err(format!(
                    "node {i} exited ({status}) waiting for {what}; log:\n{}",
                    self.log_tail(i)
                ));
            }
            if Instant::now() > end {
                return Err(format!(
                    "node {i}: timed out waiting for {what}; log:\n{}",
                    self.log_tail(i)
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Runs a CLI command on node `i`; its stdout, or why it failed.
    fn cli_once(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let out = self.cli_on(i, args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("garage {args:?}: {}", self.explain(i, &out)))
        }
    }

    /// Runs an idempotent CLI command on node `i` until it succeeds (the node may still be
    /// starting or connecting to its peers).
    fn retry_cli(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let end = Instant::now() + READY_TIMEOUT;
        loop {
            let out = self.cli_on(i, args);
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            if Instant::now() > end || !self.is_running(i) {
                return Err(format!("garage {args:?}: {}", self.explain(i, &out)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn explain(&self, i: usize, out: &Output) -> String {
        format!(
            "{}\nstdout: {}\nstderr: {}\nnode {i} log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim(),
            self.log_tail(i)
        )
    }

    fn log_tail(&self, i: usize) -> String {
        let log = self.log(i);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The `status` of node `i`'s GetClusterHealth (healthy, degraded or unavailable), if its
    /// admin API answers.
    pub fn health(&self, i: usize) -> Option<String> {
        let h = health_at(self.nodes[i].admin_port, &self.admin_token)?;
        h["status"].as_str().map(str::to_owned)
    }

    /// Waits until every running node sees exactly the running nodes up (and, when all run,
    /// reports the cluster `healthy`). After [`Garage::stop_node`] this takes ~10 s, the time
    /// peers take to notice a dead node; requests made meanwhile stall for the rest of it.
    pub fn wait_settled(&mut self) {
        if let Err(e) = self.wait_healthy() {
            panic!("{e}");
        }
    }

    fn wait_healthy(&mut self) -> Result<(), String> {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.is_running(i))
            .collect();
        let all = running.len() == self.nodes.len();
        for &i in &running {
            let (port, token) = (self.nodes[i].admin_port, self.admin_token.clone());
            let up = running.len() as u64;
            self.wait(i, "the cluster to connect", || {
                health_at(port, &token).is_some_and(|h| {
                    h["storageNodesUp"].as_u64() == Some(up) && (!all || h["status"] == "healthy")
                })
            })?;
        }
        Ok(())
    }

    /// Waits until node `i`'s S3 API answers HTTP (an unauthenticated GET gets an XML error).
    fn wait_s3(&mut self, i: usize) -> Result<(), String> {
        let port = self.nodes[i].s3_port;
        self.wait(i, "its S3 API", || {
            http_get(port, "/", None).is_some_and(|(_, body)| body.contains("<Error"))
        })
    }

    fn wait_restarted(&mut self, restarted: &[usize]) {
        for &i in restarted {
            if let Err(e) = self.wait_s3(i) {
                panic!("restart node {i}: {e}");
            }
        }
        // A restarted node dials its peers at once (bootstrap_peers), but a peer counts it up
        // only once its own connection is back, which its retry schedule delays by up to ~30 s:
        // have every running node dial the restarted ones now.
        for &i in restarted {
            let addr = self.nodes[i].rpc_addr();
            for j in 0..self.nodes.len() {
                if j != i && self.is_running(j) {
                    self.retry_cli(j, &["node", "connect", &addr])
                        .unwrap_or_else(|e| panic!("reconnect node {j} to node {i}: {e}"));
                }
            }
        }
        if let Err(e) = self.wait_healthy() {
            panic!("restart: {e}");
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The GetClusterHealth answer of the admin API on `port`.
fn health_at(port: u16, token: &str) -> Option<serde_json::Value> {
    let (code, body) = http_get(port, "/v2/GetClusterHealth", Some(token))?;
    if code != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// `count` distinct loopback ports that were free a moment ago.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// A bare HTTP/1.1 GET on 127.0.0.1:`port`: the status and body, or None if nothing answers.
fn http_get(port: u16, path: &str, bearer: Option<&str>) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Some((
        code,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    ))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
