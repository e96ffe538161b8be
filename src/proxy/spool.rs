//! Where late joiners of a blob fill read it when the store cannot read an upload session
//! while it is written (S3: a multipart upload's parts are invisible until it completes).
//! The fill writes its bytes to a temporary file beside the store, unlinked at once, so
//! nothing is left behind whatever happens; joiners read what has been written. Only the
//! process that runs the fill has it: replicas each have their own. Spools in flight hold at
//! most [`SPOOL_BUDGET`] of the temporary directory (an emptyDir in the operator's pods);
//! fills beyond it, or of a size the upstream did not announce, get none.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::store::{StoreError, UploadReader};

/// Chunks waiting to be written.
const QUEUE_CHUNKS: usize = 16;
/// Written in batches of about this size.
const WRITE_BATCH: usize = 1 << 20;
/// Bytes all spools in flight may take in the temporary directory together: small beside an
/// operator pod's ephemeral storage, large enough for the layers most images have.
pub const SPOOL_BUDGET: u64 = 1 << 30;
/// Bytes reserved by spools in flight.
static RESERVED: AtomicU64 = AtomicU64::new(0);

pub struct Spool {
    file: Arc<File>,
    /// Its share of [`SPOOL_BUDGET`], given back when the last reader drops it.
    reserved: u64,
    /// Bytes written (and readable) so far.
    written: AtomicU64,
    /// A write failed: joiners must not trust the spool.
    broken: AtomicBool,
}

impl Spool {
    /// Creates an unlinked file in `dir` for a blob of `size` bytes, and the task that writes
    /// what is sent to it; `None` when that would overrun the budget.
    pub fn start(
        dir: &Path,
        size: u64,
    ) -> std::io::Result<Option<(Arc<Spool>, mpsc::Sender<Bytes>)>> {
        let reserve = RESERVED.fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
            (r + size <= SPOOL_BUDGET).then_some(r + size)
        });
        if reserve.is_err() {
            return Ok(None);
        }
        let made = Self::create(dir, size);
        if made.is_err() {
            RESERVED.fetch_sub(size, Ordering::AcqRel);
        }
        made.map(Some)
    }

    fn create(dir: &Path, size: u64) -> std::io::Result<(Arc<Spool>, mpsc::Sender<Bytes>)> {
        let path = dir.join(format!("berth-fill-{:016x}", rand::random::<u64>()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        let spool = Arc::new(Spool {
            file: Arc::new(file),
            reserved: size,
            written: AtomicU64::new(0),
            broken: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
        tokio::spawn(spool.clone().write_all(rx));
        Ok((spool, tx))
    }

    async fn write_all(self: Arc<Self>, mut rx: mpsc::Receiver<Bytes>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            let mut len = batch[0].len();
            while len < WRITE_BATCH
                && let Ok(more) = rx.try_recv()
            {
                len += more.len();
                batch.push(more);
            }
            let (file, at) = (self.file.clone(), self.written.load(Ordering::Acquire));
            let wrote = tokio::task::spawn_blocking(move || {
                let mut pos = at;
                for b in &batch {
                    file.write_all_at(b, pos)?;
                    pos += b.len() as u64;
                }
                Ok::<u64, std::io::Error>(pos)
            })
            .await;
            match wrote {
                Ok(Ok(end)) => self.written.store(end, Ordering::Release),
                Ok(Err(e)) => return self.give_up(&e.to_string()),
                Err(e) => return self.give_up(&e.to_string()),
            }
        }
    }

    fn give_up(&self, why: &str) {
        tracing::warn!(error = %why, "cannot write a fill's spool: its joiners wait for the fill instead");
        self.broken.store(true, Ordering::Release);
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        RESERVED.fetch_sub(self.reserved, Ordering::AcqRel);
    }
}

#[async_trait]
impl UploadReader for Spool {
    async fn read_at(&self, pos: u64, max: usize) -> crate::store::Result<Bytes> {
        if self.broken.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("the fill's spool failed".into()));
        }
        let n = self
            .written
            .load(Ordering::Acquire)
            .saturating_sub(pos)
            .min(max as u64) as usize;
        if n == 0 {
            return Ok(Bytes::new());
        }
        let file = self.file.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; n];
            file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(read?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_spool_reads_what_was_written_and_keeps_to_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            Spool::start(dir.path(), SPOOL_BUDGET + 1)
                .unwrap()
                .is_none()
        );
        let (spool, tx) = Spool::start(dir.path(), 11).unwrap().unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "unlinked at once"
        );
        assert!(spool.read_at(0, 64).await.unwrap().is_empty());
        tx.send(Bytes::from_static(b"hello ")).await.unwrap();
        tx.send(Bytes::from_static(b"world")).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..200 {
            got.extend_from_slice(&spool.read_at(got.len() as u64, 4).await.unwrap());
            if got.len() == 11 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(got, b"hello world");
        let before = RESERVED.load(Ordering::Acquire);
        drop((spool, tx));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(RESERVED.load(Ordering::Acquire), before - 11, "given back");
    }
}
