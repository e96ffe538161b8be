//! Filling the cache with one blob, once however many clients ask. The first request (the
//! leader) streams the upstream's bytes to its client while they are written to an upload
//! session and hashed; the blob becomes visible (linked) only when its digest verifies.
//!
//! Requests that arrive meanwhile join the fill: a joiner streams what is written so far,
//! then the rest as it lands, and ends with the leader's outcome: a fill that fails ends every
//! stream with an error, so no client takes a wrong or short blob for a whole one. Joiners
//! read the upload session where the store can read it while it grows (the filesystem), else
//! a spool the fill writes beside the store (`spool`, for S3); without either they wait for
//! the outcome and read the stored copy. Memory stays bounded by a few chunks per client
//! whatever the blob's size.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::spool::Spool;
use super::{Proxy, ProxyError, Target};
use crate::oci::Digest;
use crate::repo::Repository;
use crate::repo::lease::{self, Claim, Lease};
use crate::store::{ByteStream, Store, UploadId, UploadReader};

/// Chunks in flight between the upstream, the store and the first client.
const CHANNEL_CHUNKS: usize = 16;
/// A joiner reads the session once at least this much more has been handed to the store (or
/// the fill ended), so that it reads in large pieces rather than once per network chunk.
const JOIN_READ: u64 = 1 << 20;

/// What a fill has done so far, shared with the requests that joined it.
#[derive(Clone, Default)]
pub struct FillState {
    /// Set once the upstream has answered.
    source: Option<Source>,
    /// Bytes handed to the store so far (the session holds at most this many).
    sent: u64,
    /// Set when the fill has ended: the blob is stored and linked, or why not.
    outcome: Option<Result<(), String>>,
}

/// Where joiners read a fill under way.
#[derive(Clone)]
struct Source {
    /// The bytes written so far; `None`: joiners wait for the outcome.
    reader: Option<Arc<dyn UploadReader>>,
    /// The size the upstream announced.
    size: Option<u64>,
}

/// What a blob request gets from [`blob`].
pub enum BlobFill {
    /// The bytes as they arrive from the upstream, or from a fill under way.
    Streaming { size: Option<u64>, body: ByteStream },
    /// The blob is now stored and linked: serve it as local content.
    Stored,
}

/// Fetches blob `digest` of a proxied repository into the cache, or joins the fetch already
/// under way (see the module's doc). With `stream` false (a ranged GET) it returns only once
/// the blob is stored.
pub async fn blob(
    proxy: &Arc<Proxy>,
    store: Arc<dyn Store>,
    target: &Target,
    digest: &Digest,
    stream: bool,
) -> Result<BlobFill, ProxyError> {
    let leader = {
        let mut flights = proxy.blob_flights.lock().unwrap_or_else(|p| p.into_inner());
        match flights.get(digest) {
            Some(rx) => Err(rx.clone()),
            None => {
                let (tx, rx) = watch::channel(FillState::default());
                flights.insert(digest.clone(), rx);
                Ok(tx)
            }
        }
    };
    // A miss is a fetch from the upstream; a request that joins one is served by the cache.
    let count = |event| proxy.metrics.count(&target.upstream.prefix, event);
    match leader {
        Ok(tx) => lead(proxy, store, target, digest, tx, stream).await,
        Err(rx) if stream => {
            count("hit");
            join(store, digest, rx).await
        }
        Err(rx) => {
            count("hit");
            outcome(rx).await.map(|()| BlobFill::Stored)
        }
    }
}

/// Starts the upstream fetch and the task that fills the session.
async fn lead(
    proxy: &Arc<Proxy>,
    store: Arc<dyn Store>,
    target: &Target,
    digest: &Digest,
    tx: watch::Sender<FillState>,
    stream: bool,
) -> Result<BlobFill, ProxyError> {
    let mut fill = Fill {
        proxy: proxy.clone(),
        store,
        target: target.clone(),
        digest: digest.clone(),
        tx,
        lease: None,
    };
    // The caller found the blob missing before it got here; a fill that ended in between
    // has linked it (a fill links before it leaves the flights), so look once more.
    match Repository::new(&*fill.store, &target.local)
        .blob_linked(digest)
        .await
    {
        Ok(true) => {
            proxy.metrics.count(&target.upstream.prefix, "hit");
            fill.finish(Ok(()));
            return Ok(BlobFill::Stored);
        }
        Ok(false) => proxy.metrics.count(&target.upstream.prefix, "miss"),
        Err(e) => {
            fill.finish(Err(e.to_string()));
            return Err(e.into());
        }
    }
    match claim_across_replicas(&fill).await {
        Ok(Some(lease)) => fill.lease = lease,
        Ok(None) => {
            fill.finish(Ok(()));
            return Ok(BlobFill::Stored);
        }
        Err(e) => {
            fill.finish(Err(e.to_string()));
            return Err(e);
        }
    }
    let fetched = match target.upstream.blob(&target.remote, digest).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            let e = format!(
                "upstream {} has no blob {digest} in {}",
                target.upstream.url, target.remote
            );
            fill.fail(e.clone()).await;
            return Err(ProxyError::NotFound(e));
        }
        Err(e) => {
            fill.fail(e.to_string()).await;
            return Err(e.into());
        }
    };
    let id = match fill.store.upload_create(&target.local).await {
        Ok(id) => id,
        Err(e) => {
            fill.fail(e.to_string()).await;
            return Err(e.into());
        }
    };
    let (reader, spool) = joiners_read(&*fill.store, &target.local, &id, fetched.size).await;
    fill.tx.send_modify(|s| {
        s.source = Some(Source {
            reader,
            size: fetched.size,
        })
    });
    let (client_tx, client_rx) = mpsc::channel(CHANNEL_CHUNKS);
    let done = fill.tx.subscribe();
    tokio::spawn(fill.run(id, fetched.body, client_tx, spool));
    if !stream {
        drop(client_rx); // the fill goes on without a client
        return outcome(done).await.map(|()| BlobFill::Stored);
    }
    Ok(BlobFill::Streaming {
        size: fetched.size,
        body: receiver_stream(client_rx),
    })
}

/// Makes this replica the one that fetches the blob, or waits for the replica that does.
/// `Ok(Some(lease))`: fetch it (`None` inside when no lease could be written: fetch anyway,
/// at worst twice across replicas); `Ok(None)`: another replica has stored and linked it.
async fn claim_across_replicas(fill: &Fill) -> Result<Option<Option<Lease>>, ProxyError> {
    let repo = Repository::new(&*fill.store, &fill.target.local);
    loop {
        match lease::claim(&fill.store, &fill.digest, &fill.proxy.replica).await {
            Ok(Claim::Mine(l)) => return Ok(Some(Some(l))),
            Ok(Claim::Theirs) => {}
            Err(e) => {
                tracing::warn!(digest = %fill.digest, error = %e, "cannot claim the fill across replicas; fetching it here");
                return Ok(Some(None));
            }
        }
        tracing::debug!(digest = %fill.digest, "another replica is fetching this blob; waiting for it");
        // Until the blob is linked (served from the store), or the other replica's lease ends
        // without it (it failed or died: claim again).
        loop {
            tokio::time::sleep(lease::POLL).await;
            if repo.blob_linked(&fill.digest).await? {
                return Ok(None);
            }
            match lease::held_elsewhere(&*fill.store, &fill.digest, &fill.proxy.replica).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Where joiners will read the fill: the session itself when the store can read it, else a
/// spool (and the sender that feeds it) when the size is known and fits, else nowhere.
async fn joiners_read(
    store: &dyn Store,
    repo: &crate::oci::RepoName,
    id: &UploadId,
    size: Option<u64>,
) -> (Option<Arc<dyn UploadReader>>, Option<mpsc::Sender<Bytes>>) {
    if let Ok(Some(r)) = store.upload_open(repo, id).await {
        return (Some(r), None);
    }
    let Some(size) = size else {
        return (None, None);
    };
    let dir = std::env::temp_dir();
    match Spool::start(&dir, size) {
        Ok(Some((spool, tx))) => (Some(spool), Some(tx)),
        Ok(None) => (None, None),
        Err(e) => {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot make a spool for a fill: its joiners wait for it");
            (None, None)
        }
    }
}

/// Waits for the end of a fill.
async fn outcome(mut rx: watch::Receiver<FillState>) -> Result<(), ProxyError> {
    match rx.wait_for(|s| s.outcome.is_some()).await {
        Ok(s) => match &s.outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(ProxyError::Invalid(e.clone())),
            None => Err(abandoned()),
        },
        Err(_) => Err(abandoned()),
    }
}

fn abandoned() -> ProxyError {
    ProxyError::Invalid("the upstream fetch was abandoned".into())
}

/// Streams a fill under way from its session, or waits for it where the store cannot read
/// sessions. A fill that failed before it started is that fill's error.
async fn join(
    store: Arc<dyn Store>,
    digest: &Digest,
    mut rx: watch::Receiver<FillState>,
) -> Result<BlobFill, ProxyError> {
    let started = rx
        .wait_for(|s| s.source.is_some() || s.outcome.is_some())
        .await
        .map(|s| s.clone())
        .map_err(|_| abandoned())?;
    let Some(Source {
        reader: Some(reader),
        size,
    }) = started.source
    else {
        return outcome(rx).await.map(|()| BlobFill::Stored);
    };
    if size.is_some_and(|n| started.sent >= n) {
        // Every byte has arrived: wait the moment it takes to verify, then serve the copy.
        return outcome(rx).await.map(|()| BlobFill::Stored);
    }
    let tail = Joiner {
        reader,
        rx,
        store,
        digest: digest.clone(),
        pos: 0,
        rest: None,
    };
    Ok(BlobFill::Streaming {
        size,
        body: futures::stream::unfold(tail, Joiner::next).boxed(),
    })
}

/// A joiner's stream: the session's bytes while the fill runs, then the stored blob's.
struct Joiner {
    reader: Arc<dyn UploadReader>,
    rx: watch::Receiver<FillState>,
    store: Arc<dyn Store>,
    digest: Digest,
    /// Bytes given to the client so far.
    pos: u64,
    /// The stored blob from `pos` on, once the fill has ended and the session had no more.
    rest: Option<ByteStream>,
}

impl Joiner {
    async fn next(mut self) -> Option<(std::io::Result<Bytes>, Joiner)> {
        if let Some(rest) = self.rest.as_mut() {
            return rest.next().await.map(|c| (c, self));
        }
        loop {
            let pos = self.pos;
            let waited = self
                .rx
                .wait_for(|s| s.outcome.is_some() || s.sent >= pos + JOIN_READ)
                .await
                .map(|s| s.clone());
            let Ok(state) = waited else {
                return Some((Err(std::io::Error::other(abandoned())), self));
            };
            match self.reader.read_at(pos, JOIN_READ as usize).await {
                Ok(b) if !b.is_empty() => {
                    self.pos += b.len() as u64;
                    return Some((Ok(b), self));
                }
                Ok(_) => {}
                // Cannot read along: the rest comes from the stored copy, if the fill succeeds.
                Err(_) => {
                    return match outcome(self.rx.clone()).await {
                        Ok(()) => self.stored_rest().await,
                        Err(e) => Some((Err(std::io::Error::other(e)), self)),
                    };
                }
            }
            match state.outcome {
                // The session had all it will get: whatever is left comes from the blob.
                Some(Ok(())) => return self.stored_rest().await,
                Some(Err(why)) => return Some((Err(std::io::Error::other(why)), self)),
                // Handed to the store but not written yet: wait for the next piece.
                None => self.rx.mark_unchanged(),
            }
            if self.rx.changed().await.is_err() {
                return Some((Err(std::io::Error::other(abandoned())), self));
            }
        }
    }

    /// After a successful fill: the stored blob from `pos` to its end (usually nothing, as the
    /// open session already held every byte).
    async fn stored_rest(mut self) -> Option<(std::io::Result<Bytes>, Joiner)> {
        let blob = match self.store.blob_open(&self.digest).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                let e = std::io::Error::other(format!("blob {} vanished", self.digest));
                return Some((Err(e), self));
            }
            Err(e) => return Some((Err(std::io::Error::other(e)), self)),
        };
        let size = blob.size;
        if self.pos >= size {
            return None;
        }
        let mut rest = blob.stream(self.pos, size - 1);
        let first = rest.next().await;
        self.rest = Some(rest);
        first.map(|c| (c, self))
    }
}

fn receiver_stream(rx: mpsc::Receiver<std::io::Result<Bytes>>) -> ByteStream {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }).boxed()
}

/// One blob on its way from the upstream into the store (and to the first client).
struct Fill {
    proxy: Arc<Proxy>,
    store: Arc<dyn Store>,
    target: Target,
    digest: Digest,
    tx: watch::Sender<FillState>,
    /// This replica's claim on the fetch, held until the blob is linked or the fill failed.
    lease: Option<Lease>,
}

impl Fill {
    /// Ends a fill that failed before it ran: the lease goes first, so that a replica waiting
    /// on it claims the fetch at once.
    async fn fail(&mut self, why: String) {
        if let Some(l) = self.lease.take() {
            l.release().await;
        }
        self.finish(Err(why));
    }

    /// Tells the requests that joined, and lets the next miss start a new fetch.
    fn finish(&self, outcome: Result<(), String>) {
        self.tx.send_modify(|s| s.outcome = Some(outcome));
        self.proxy
            .blob_flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.digest);
    }

    /// Copies the upstream's bytes into the upload session and to the client, commits
    /// (which verifies the digest) and links the blob. The fill goes on if the client leaves.
    async fn run(
        mut self,
        id: UploadId,
        mut upstream: ByteStream,
        client: mpsc::Sender<std::io::Result<Bytes>>,
        mut spool: Option<mpsc::Sender<Bytes>>,
    ) {
        let (to_store, from_pump) = mpsc::channel::<std::io::Result<Bytes>>(CHANNEL_CHUNKS);
        let store = self.store.clone();
        let (local, digest, sid) = (self.target.local.clone(), self.digest.clone(), id.clone());
        let commit = tokio::spawn(async move {
            let body = receiver_stream(from_pump);
            store
                .upload_append_commit(&local, &sid, Some(0), None, body, &digest)
                .await
        });
        let mut client_gone = false;
        let mut failed = None;
        while let Some(chunk) = upstream.next().await {
            match chunk {
                Ok(b) => {
                    let n = b.len() as u64;
                    if to_store.send(Ok(b.clone())).await.is_err() {
                        break; // the store gave up; its error comes from the commit
                    }
                    if let Some(s) = &spool
                        && s.send(b.clone()).await.is_err()
                    {
                        spool = None; // its writer gave up; joiners read the stored copy
                    }
                    self.tx.send_if_modified(|s| {
                        s.sent += n;
                        s.sent % JOIN_READ < n // wake joiners about once per JOIN_READ
                    });
                    if !client_gone && client.send(Ok(b)).await.is_err() {
                        client_gone = true;
                    }
                }
                Err(e) => {
                    let why = format!(
                        "upstream {} broke off blob {}: {e}",
                        self.target.upstream.url, self.digest
                    );
                    let _ = to_store.send(Err(std::io::Error::other(why.clone()))).await;
                    failed = Some(why);
                    break;
                }
            }
        }
        drop(to_store);
        let committed = commit.await;
        let outcome = match (failed, committed) {
            (Some(why), _) => Err(why),
            (None, Ok(Ok(_))) => Repository::new(&*self.store, &self.target.local)
                .link_blob(&self.digest)
                .await
                .map_err(|e| e.to_string()),
            (None, Ok(Err(e))) => Err(format!(
                "blob {} from upstream {} not cached: {e}",
                self.digest, self.target.upstream.url
            )),
            (None, Err(e)) => Err(e.to_string()),
        };
        if let Err(why) = &outcome {
            tracing::warn!(repository = %self.target.local, digest = %self.digest, error = %why, "pull-through fill failed");
            let _ = self.store.upload_cancel(&self.target.local, &id).await;
            let _ = client.send(Err(std::io::Error::other(why.clone()))).await;
        }
        // Joiners first; a replica waiting on the lease sees the link before it sees the lease go.
        let lease = self.lease.take();
        self.finish(outcome);
        if let Some(l) = lease {
            l.release().await;
        }
    }
}
