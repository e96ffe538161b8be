//! Crash safety: `berth serve` is killed with SIGKILL while eight clients push concurrently
//! (monolithic and chunked uploads, then manifests), and restarted on the same directory, three
//! times over. Everything the registry acknowledged must still be there, byte for byte; nothing
//! torn or partial may be visible; and the registry must keep working.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{OCI_MANIFEST, Server, assert_blob_store_consistent, image_manifest, sha256};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const PUSHERS: usize = 8;
/// Push, kill, restart and check this many times over the same directory.
const ROUNDS: usize = 3;
const PUSH_FOR: Duration = Duration::from_secs(3);
/// At least this many pushes must be acknowledged before each kill...
const MIN_DONE: usize = 10;
/// ...which may stretch the pushing phase on a slow machine up to this long.
const MAX_PUSH_FOR: Duration = Duration::from_secs(20);
const MIN_BLOB: usize = 1024;
const MAX_BLOB: usize = 3 * 1024 * 1024;
/// The stalled upload: this many bytes are declared, and only the first `STALL_SENT` are sent.
const STALL_TOTAL: usize = 2 * 1024 * 1024;
const STALL_SENT: usize = 1536 * 1024;

#[derive(Clone, Debug)]
struct BlobRec {
    repo: String,
    digest: String,
    len: usize,
}

#[derive(Clone, Debug)]
struct PushRec {
    repo: String,
    tag: String,
    manifest_digest: String,
    blobs: Vec<BlobRec>,
}

#[derive(Default)]
struct Log {
    /// Pushes whose manifest PUT answered 201.
    done: Vec<PushRec>,
    /// Every push that was started, acknowledged or not.
    attempted: Vec<PushRec>,
    /// Failures seen before the kill: each one is a server bug.
    early_failures: Vec<String>,
    /// Failures seen after the kill (expected).
    late_failures: usize,
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// An absolute URL for a `Location` header value.
fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

fn with_digest(url: &str, digest: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={digest}")
}

fn location(r: &reqwest::Response) -> Result<String, String> {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| format!("{} has no Location", r.url()))
}

async fn expect(
    r: reqwest::Result<reqwest::Response>,
    status: u16,
    what: &str,
) -> Result<reqwest::Response, String> {
    let r = r.map_err(|e| format!("{what}: {e}"))?;
    if r.status() != status {
        let s = r.status();
        return Err(format!(
            "{what}: expected {status}, got {s}: {:?}",
            r.text().await
        ));
    }
    Ok(r)
}

async fn push_monolithic(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    bytes: Vec<u8>,
) -> Result<(), String> {
    let d = sha256(&bytes);
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await;
    let r = expect(r, 201, "monolithic POST").await?;
    match r.headers().get("docker-content-digest") {
        Some(v) if v == d.as_str() => Ok(()),
        other => Err(format!(
            "monolithic POST answered digest {other:?}, not {d}"
        )),
    }
}

/// POST, two to four PATCHes with `Content-Range`, PUT `?digest=` (sometimes carrying the last
/// chunk).
async fn push_chunked(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    bytes: &[u8],
    rng: &mut StdRng,
) -> Result<(), String> {
    let d = sha256(bytes);
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .header("content-length", "0")
        .send()
        .await;
    let r = expect(r, 202, "upload POST").await?;
    let mut url = absolute(base, &location(&r)?);
    let pieces = rng.random_range(2..=4usize);
    let mut cuts: Vec<usize> = (1..pieces)
        .map(|_| rng.random_range(1..bytes.len()))
        .collect();
    cuts.push(0);
    cuts.push(bytes.len());
    cuts.sort_unstable();
    cuts.dedup();
    let chunks: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
    let last_in_put = rng.random_bool(0.5);
    let patch_count = if last_in_put {
        chunks.len() - 1
    } else {
        chunks.len()
    };
    for &(start, end) in &chunks[..patch_count] {
        let r = c
            .patch(&url)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{start}-{}", end - 1))
            .body(bytes[start..end].to_vec())
            .send()
            .await;
        let r = expect(r, 202, "upload PATCH").await?;
        let range = r
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if range != format!("0-{}", end - 1) {
            return Err(format!("PATCH up to {end} answered Range {range:?}"));
        }
        url = absolute(base, &location(&r)?);
    }
    let put = c.put(with_digest(&url, &d));
    let put = if last_in_put {
        let (start, end) = chunks[chunks.len() - 1];
        put.header("content-type", "application/octet-stream")
            .body(bytes[start..end].to_vec())
    } else {
        put.header("content-length", "0")
    };
    let r = expect(put.send().await, 201, "upload PUT").await?;
    match r.headers().get("docker-content-digest") {
        Some(v) if v == d.as_str() => Ok(()),
        other => Err(format!("upload PUT answered digest {other:?}, not {d}")),
    }
}

/// One image push: a config, the shared layer, two or three random layers, the manifest.
async fn push_one(
    c: &reqwest::Client,
    base: &str,
    rec: &PushRec,
    layers: Vec<Vec<u8>>,
    config: Vec<u8>,
    manifest: String,
    rng: &mut StdRng,
) -> Result<(), String> {
    push_monolithic(c, base, &rec.repo, config).await?;
    for l in layers {
        if rng.random_bool(0.5) {
            push_monolithic(c, base, &rec.repo, l).await?;
        } else {
            push_chunked(c, base, &rec.repo, &l, rng).await?;
        }
    }
    let r = c
        .put(format!("{base}/v2/{}/manifests/{}", rec.repo, rec.tag))
        .header("content-type", OCI_MANIFEST)
        .body(manifest)
        .send()
        .await;
    let r = expect(r, 201, "manifest PUT").await?;
    match r.headers().get("docker-content-digest") {
        Some(v) if v == rec.manifest_digest.as_str() => Ok(()),
        other => Err(format!(
            "manifest PUT answered digest {other:?}, not {}",
            rec.manifest_digest
        )),
    }
}

/// What the pushers share with the test and with each other.
struct Shared {
    base: String,
    round: usize,
    /// A layer every push includes, so that the same digest is committed concurrently.
    common_layer: Vec<u8>,
    stop: AtomicBool,
    /// Set just before the SIGKILL: a failure seen while it is false is a server bug.
    killed: AtomicBool,
    in_flight: AtomicUsize,
    log: Mutex<Log>,
}

async fn pusher(id: usize, seed: u64, sh: Arc<Shared>) {
    let c = http();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut i = 0;
    while !sh.stop.load(Ordering::SeqCst) {
        i += 1;
        let repo = format!("crash/r{}", id % 3);
        let tag = format!("r{}-w{id}-{i}", sh.round);
        let config =
            format!(r#"{{"architecture":"amd64","os":"linux","tag":"{repo}:{tag}"}}"#).into_bytes();
        let mut layers = vec![sh.common_layer.clone()];
        for _ in 0..rng.random_range(2..=3) {
            let mut b = vec![0u8; rng.random_range(MIN_BLOB..=MAX_BLOB)];
            rng.fill_bytes(&mut b);
            layers.push(b);
        }
        let descs: Vec<(String, usize)> = layers.iter().map(|l| (sha256(l), l.len())).collect();
        let cd = sha256(&config);
        let refs: Vec<(&str, usize)> = descs.iter().map(|(d, n)| (d.as_str(), *n)).collect();
        let manifest = image_manifest((&cd, config.len()), &refs, "");
        let mut blobs = vec![BlobRec {
            repo: repo.clone(),
            digest: cd.clone(),
            len: config.len(),
        }];
        blobs.extend(descs.iter().map(|(d, n)| BlobRec {
            repo: repo.clone(),
            digest: d.clone(),
            len: *n,
        }));
        let rec = PushRec {
            repo,
            tag,
            manifest_digest: sha256(manifest.as_bytes()),
            blobs,
        };
        sh.log.lock().unwrap().attempted.push(rec.clone());
        sh.in_flight.fetch_add(1, Ordering::SeqCst);
        let result = push_one(&c, &sh.base, &rec, layers, config, manifest, &mut rng).await;
        sh.in_flight.fetch_sub(1, Ordering::SeqCst);
        let mut log = sh.log.lock().unwrap();
        match result {
            Ok(()) => log.done.push(rec),
            Err(e) if !sh.killed.load(Ordering::SeqCst) => log
                .early_failures
                .push(format!("{}:{}: {e}", rec.repo, rec.tag)),
            Err(_) => log.late_failures += 1,
        }
    }
}

/// Opens an upload session, then PATCHes a chunk that declares `STALL_TOTAL` bytes but stops
/// after `STALL_SENT` and never ends: an upload that is surely in progress when the server dies.
/// Returns the session id once the PATCH is under way.
async fn start_stalled_upload(
    base: &str,
    repo: &str,
    bytes: Arc<Vec<u8>>,
) -> (String, tokio::task::JoinHandle<()>) {
    let c = http();
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "stalled upload POST");
    let url = absolute(base, &location(&r).unwrap());
    let id = url
        .split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let sent: Vec<Result<Bytes, std::io::Error>> = bytes[..STALL_SENT]
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let body = futures::stream::iter(sent).chain(futures::stream::pending());
    let patch = c
        .patch(&url)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("0-{}", STALL_TOTAL - 1))
        .body(reqwest::Body::wrap_stream(body));
    let task = tokio::spawn(async move {
        // Ends with an error when the server is killed.
        let _ = patch.send().await;
    });
    (id, task)
}

fn file_len(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

fn blob_file(root: &Path, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    root.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// GET a blob: `Some(bytes)` on 200, `None` on 404, a panic otherwise.
async fn get_blob(c: &reqwest::Client, s: &Server, repo: &str, digest: &str) -> Option<Bytes> {
    let r = c
        .get(s.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET blob {repo}@{digest}: {e}"));
    match r.status().as_u16() {
        200 => {
            let len = r.content_length();
            let b = r.bytes().await.unwrap();
            assert_eq!(
                len,
                Some(b.len() as u64),
                "Content-Length of {repo}@{digest}"
            );
            Some(b)
        }
        404 => None,
        other => panic!(
            "GET blob {repo}@{digest}: unexpected status {other}: {:?}\nserver log tail: {:#?}",
            r.text().await,
            log_tail(s)
        ),
    }
}

fn log_tail(s: &Server) -> Vec<String> {
    let logs = s.logs.lock().unwrap();
    logs[logs.len().saturating_sub(20)..].to_vec()
}

/// GET a manifest by tag: `Some(bytes)` on 200, `None` on 404, a panic otherwise.
async fn get_manifest(c: &reqwest::Client, s: &Server, repo: &str, tag: &str) -> Option<Bytes> {
    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET manifest {repo}:{tag}: {e}"));
    match r.status().as_u16() {
        200 => Some(r.bytes().await.unwrap()),
        404 => None,
        other => panic!(
            "GET manifest {repo}:{tag}: unexpected status {other}: {:?}\nserver log tail: {:#?}",
            r.text().await,
            log_tail(s)
        ),
    }
}

/// One push-and-kill round against `s`, which is dead when this returns.
struct Round {
    log: Log,
    stalled: Vec<u8>,
    stall_id: String,
    /// The stalled upload's data file as the dead server left it.
    stall_partial: Option<Vec<u8>>,
}

async fn push_and_kill(s: &mut Server, round: usize, seed: u64) -> Round {
    let root = s.root.clone();
    let base = format!("http://{}", s.host());
    let mut rng = StdRng::seed_from_u64(seed);
    let mut common_layer = vec![0u8; 64 * 1024 + 7];
    rng.fill_bytes(&mut common_layer);
    let mut stalled = vec![0u8; STALL_TOTAL];
    rng.fill_bytes(&mut stalled);
    let stalled = Arc::new(stalled);

    let sh = Arc::new(Shared {
        base: base.clone(),
        round,
        common_layer,
        stop: AtomicBool::new(false),
        killed: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        log: Mutex::new(Log::default()),
    });
    let started = Instant::now();
    let tasks: Vec<_> = (0..PUSHERS)
        .map(|id| tokio::spawn(pusher(id, seed.wrapping_add(id as u64 + 1), sh.clone())))
        .collect();

    // Let the pushers run for PUSH_FOR, and on a slow machine until MIN_DONE pushes are
    // acknowledged (but no longer than MAX_PUSH_FOR), so the test cannot pass vacuously.
    let done = || sh.log.lock().unwrap().done.len();
    tokio::time::sleep(PUSH_FOR.saturating_sub(Duration::from_millis(500))).await;
    while done() < MIN_DONE && started.elapsed() < MAX_PUSH_FOR {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then start an upload that stalls half way, wait until part of it is on disk, and kill.
    let (stall_id, stall_task) =
        start_stalled_upload(&base, &stalled_repo(round), stalled.clone()).await;
    let stall_data = root.join("uploads").join(&stall_id).join("data");
    let t = Instant::now();
    while file_len(&stall_data).unwrap_or(0) == 0 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let at_kill = sh.in_flight.load(Ordering::SeqCst);
    let done_at_kill = done();
    sh.killed.store(true, Ordering::SeqCst);
    s.kill9();
    sh.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("a pusher did not stop after the kill")
            .expect("pusher panicked");
    }
    tokio::time::timeout(Duration::from_secs(30), stall_task)
        .await
        .expect("the stalled upload did not end after the kill")
        .unwrap();

    let log = std::mem::take(&mut *sh.log.lock().unwrap());
    let stall_partial = std::fs::read(&stall_data).ok();
    println!(
        "round {round}: {} pushes acknowledged ({done_at_kill} when the kill was sent), {} \
         attempted, {at_kill} in flight at the kill, {} failed after it; stalled upload \
         {stall_id} held {:?} bytes",
        log.done.len(),
        log.attempted.len(),
        log.late_failures,
        stall_partial.as_ref().map(Vec::len),
    );
    assert!(
        log.early_failures.is_empty(),
        "round {round}: pushes failed before the server was killed: {:#?}\nserver logs: {:#?}",
        log.early_failures,
        s.logs.lock().unwrap()
    );
    assert!(
        log.done.len() >= MIN_DONE,
        "round {round}: only {} pushes completed before the kill: the test proves nothing",
        log.done.len()
    );
    Round {
        log,
        stalled: Arc::try_unwrap(stalled).unwrap_or_else(|a| a.as_ref().clone()),
        stall_id,
        stall_partial,
    }
}

fn stalled_repo(round: usize) -> String {
    format!("crash/stalled{round}")
}

/// Every acknowledged push is intact: the tag gives the manifest that was pushed, and every
/// blob it references has its bytes.
async fn verify_acknowledged(c: &reqwest::Client, s: &Server, pushes: &[PushRec]) {
    let checks = futures::stream::iter(pushes)
        .map(|p| async move {
            let m = get_manifest(c, s, &p.repo, &p.tag)
                .await
                .unwrap_or_else(|| panic!("acknowledged {}:{} is gone", p.repo, p.tag));
            assert_eq!(
                sha256(&m),
                p.manifest_digest,
                "{}:{} changed",
                p.repo,
                p.tag
            );
            for b in &p.blobs {
                let bytes = get_blob(c, s, &b.repo, &b.digest)
                    .await
                    .unwrap_or_else(|| panic!("blob {} of {}:{} is gone", b.digest, p.repo, p.tag));
                assert_eq!(bytes.len(), b.len, "length of {}", b.digest);
                assert_eq!(sha256(&bytes), b.digest, "bytes of {}", b.digest);
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>();
    tokio::time::timeout(Duration::from_secs(60), checks)
        .await
        .expect("verifying the acknowledged pushes took too long");
}

/// Pushes cut off by the kill: whatever is visible is whole. A tag that resolves points at the
/// manifest that was pushed, and every blob it references is there. Returns how many resolve.
async fn verify_unacknowledged(c: &reqwest::Client, s: &Server, log: &Log) -> usize {
    let done: BTreeSet<(&str, &str)> = log
        .done
        .iter()
        .map(|p| (p.repo.as_str(), p.tag.as_str()))
        .collect();
    let mut visible = 0;
    for p in log
        .attempted
        .iter()
        .filter(|p| !done.contains(&(p.repo.as_str(), p.tag.as_str())))
    {
        if let Some(m) = get_manifest(c, s, &p.repo, &p.tag).await {
            visible += 1;
            assert_eq!(
                sha256(&m),
                p.manifest_digest,
                "{}:{} is torn",
                p.repo,
                p.tag
            );
            for b in &p.blobs {
                assert!(
                    get_blob(c, s, &b.repo, &b.digest).await.is_some(),
                    "tag {}:{} resolves but its blob {} is missing",
                    p.repo,
                    p.tag,
                    b.digest
                );
            }
        }
        for b in &p.blobs {
            if let Some(bytes) = get_blob(c, s, &b.repo, &b.digest).await {
                assert_eq!(bytes.len(), b.len, "length of {}", b.digest);
                assert_eq!(sha256(&bytes), b.digest, "bytes of {}", b.digest);
            }
        }
    }
    visible
}

/// No session left under uploads/ is visible as a blob, unless its bytes are exactly a whole
/// blob that some client pushed (a session cut off after its last byte, say). Returns how many
/// sessions hold data.
async fn verify_sessions_invisible(
    c: &reqwest::Client,
    s: &Server,
    whole: &BTreeSet<String>,
) -> usize {
    let mut sessions = 0;
    for e in std::fs::read_dir(s.root.join("uploads")).unwrap() {
        let dir = e.unwrap().path();
        let Ok(data) = std::fs::read(dir.join("data")) else {
            continue;
        };
        sessions += 1;
        let d = sha256(&data);
        if whole.contains(&d) {
            continue;
        }
        assert!(
            !blob_file(&s.root, &d).exists(),
            "partial upload {} is in the blob store",
            dir.display()
        );
        // A session created just as the server died may not have its owner recorded yet.
        let owner = std::fs::read_to_string(dir.join("repo")).unwrap_or_default();
        if owner.parse::<berth::oci::RepoName>().is_ok() {
            assert!(
                get_blob(c, s, &owner, &d).await.is_none(),
                "partial upload {} ({} bytes) is served as a blob",
                dir.display(),
                data.len()
            );
        } else {
            println!(
                "upload session {} has data ({} bytes) but no valid owner ({owner:?})",
                dir.display(),
                data.len()
            );
        }
    }
    sessions
}

/// The stalled upload is not a blob, in full or in part; if its session survived the restart,
/// it resumes from the offset on disk and completes correctly.
async fn verify_stalled(c: &reqwest::Client, s: &Server, round: usize, r: &Round) {
    let repo = stalled_repo(round);
    let digest = sha256(&r.stalled);
    assert!(
        !blob_file(&s.root, &digest).exists(),
        "the unfinished upload is in the blob store"
    );
    assert!(
        get_blob(c, s, &repo, &digest).await.is_none(),
        "the unfinished upload is served"
    );
    if let Some(partial) = &r.stall_partial {
        assert!(
            r.stalled.starts_with(partial),
            "the stalled upload's data file holds bytes that were never sent"
        );
        let pd = sha256(partial);
        assert!(
            get_blob(c, s, &repo, &pd).await.is_none(),
            "a partial upload is served"
        );
        assert!(
            !blob_file(&s.root, &pd).exists(),
            "a partial upload is in the blob store"
        );
    }

    let base = format!("http://{}", s.host());
    let resp = c
        .get(s.url(&format!("/v2/{repo}/blobs/uploads/{}", r.stall_id)))
        .send()
        .await
        .unwrap();
    match resp.status().as_u16() {
        204 => {
            // The server's word for where to resume ("0-0" stands for an empty session too).
            let range = resp.headers()["range"].to_str().unwrap().to_owned();
            let end: usize = range
                .strip_prefix("0-")
                .and_then(|e| e.parse().ok())
                .unwrap_or_else(|| panic!("bad Range {range:?} for the resumed session"));
            let have = if end == 0 { 0 } else { end + 1 };
            // The stalled upload is one PATCH that never finished: a chunk is all-or-nothing,
            // so whatever of it reached the data file is not part of the session.
            assert_eq!(
                have, 0,
                "the resumed session reports bytes of a chunk that never finished"
            );
            assert!(
                have <= STALL_SENT,
                "the session holds {have} bytes, more than were sent"
            );
            let url = absolute(&base, &location(&resp).unwrap());
            let resp = c
                .patch(&url)
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{have}-{}", STALL_TOTAL - 1))
                .body(r.stalled[have..].to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                202,
                "resuming the stalled upload: {:?}",
                resp.text().await
            );
            let url = absolute(&base, &location(&resp).unwrap());
            let resp = c
                .put(with_digest(&url, &digest))
                .header("content-length", "0")
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                201,
                "finishing the resumed upload: {:?}",
                resp.text().await
            );
            let got = get_blob(c, s, &repo, &digest).await.unwrap();
            assert!(
                got[..] == r.stalled[..],
                "the resumed upload stored other bytes"
            );
            println!(
                "round {round}: the stalled upload resumed after the restart from offset {have}"
            );
        }
        404 => println!("round {round}: the stalled upload session did not survive the restart"),
        other => panic!("status of the stalled upload after the restart: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_safety_kill9_during_concurrent_pushes() {
    let seed: u64 = rand::random();
    // The first server owns the temporary directory; later ones run on the same root.
    let mut servers = vec![Server::start()];
    let root = servers[0].root.clone();
    println!("crash test seed {seed:#x}, root {}", root.display());
    let c = http();
    let mut acknowledged: Vec<PushRec> = Vec::new();
    let mut whole: BTreeSet<String> = BTreeSet::new();
    let mut blobs_before = 0;

    for round in 0..ROUNDS {
        let r = push_and_kill(
            servers.last_mut().unwrap(),
            round,
            seed ^ ((round as u64) << 48),
        )
        .await;
        acknowledged.extend(r.log.done.iter().cloned());
        whole.extend(
            r.log
                .attempted
                .iter()
                .flat_map(|p| p.blobs.iter().map(|b| b.digest.clone())),
        );

        // What the dead server left on disk: every blob file is whole and hashes to its name.
        let blobs = assert_blob_store_consistent(&root);
        assert!(blobs > blobs_before, "round {round} stored no blobs");
        blobs_before = blobs;

        // Restart on the same directory and check everything, including earlier rounds.
        servers.push(Server::start_on(&root, &[]));
        let s = servers.last().unwrap();
        verify_acknowledged(&c, s, &acknowledged).await;
        let visible = verify_unacknowledged(&c, s, &r.log).await;
        let sessions = verify_sessions_invisible(&c, s, &whole).await;
        println!(
            "round {round}: {visible} unacknowledged pushes had completed server-side; \
             {sessions} upload sessions left under uploads/"
        );
        verify_stalled(&c, s, round, &r).await;
    }

    // The registry still takes pushes, in both styles, into old and new repositories.
    let s = servers.last().unwrap();
    let (_, d) = common::push_image(&c, s, "crash/after", "v1", "after-restart").await;
    assert_eq!(
        get_manifest(&c, s, "crash/after", "v1")
            .await
            .map(|m| sha256(&m)),
        Some(d)
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut blob = vec![0u8; 300_000];
    rng.fill_bytes(&mut blob);
    let base = format!("http://{}", s.host());
    push_chunked(&c, &base, "crash/r0", &blob, &mut rng)
        .await
        .unwrap();
    assert_eq!(
        get_blob(&c, s, "crash/r0", &sha256(&blob))
            .await
            .map(|b| sha256(&b)),
        Some(sha256(&blob))
    );
    let after = assert_blob_store_consistent(&root);
    assert!(
        after > blobs_before,
        "{after} blobs at the end, {blobs_before} before"
    );

    // Stop the servers before the first one removes the directory.
    while let Some(s) = servers.pop() {
        drop(s);
    }
}

/// kill -9 while a chunk is half received: the session must report the bytes before the
/// chunk, never a Range that ends inside it (a chunk is all or nothing).
#[tokio::test]
async fn kill9_mid_chunk_leaves_the_range_before_the_chunk() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let mut s = Server::start_on(&root, &[]);
    let c = http();
    let r = c.post(s.url("/v2/a/blobs/uploads/")).send().await.unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let r = c
        .patch(s.url(&loc))
        .header("content-type", "application/octet-stream")
        .body(vec![1u8; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Half of a 4 MiB chunk, enough to be written out before the kill.
    let mut half = std::net::TcpStream::connect(&s.addr).unwrap();
    write!(
        half,
        "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 4194304\r\n\r\n"
    )
    .unwrap();
    half.write_all(&vec![2u8; 3 << 20]).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.kill9();
    drop(half);
    let s = Server::start_on(&root, &[]);
    let r = c.get(s.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["range"],
        "0-99",
        "range ends inside the torn chunk"
    );
    // And the session goes on from there.
    let r = c
        .patch(s.url(&loc))
        .header("content-type", "application/octet-stream")
        .header("content-range", "100-104")
        .header("content-length", "5")
        .body(vec![3u8; 5])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-104");
}

/// Temporaries a crash left under blobs/ and repositories/ go with `berth gc`, once old
/// enough that no live write can own them; fresh ones stay.
#[test]
fn gc_removes_stale_temporaries_and_keeps_fresh_ones() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    drop(Server::start_on(&root, &[]));
    let old = [
        root.join("blobs/sha256/ab/.abcd.tmp-0000000000000001"),
        root.join("repositories/a/_tags/.latest.tmp-0000000000000002"),
    ];
    let fresh = root.join("repositories/a/_tags/.next.tmp-0000000000000003");
    for p in old.iter().chain([&fresh]) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"torn").unwrap();
    }
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    for p in &old {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["gc", "--grace", "0s", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in &old {
        assert!(!p.exists(), "{} survived gc", p.display());
    }
    assert!(fresh.exists(), "a fresh temporary was removed");
}
