//! The repository layer, as Distribution's registry/storage has it: what one repository holds
//! (tags, manifest revisions, blob links, referrers) over the one [`Store`], in small typed
//! pieces. It is the only code that knows the formats of those documents: a tag holds its
//! digest as text, a manifest link the media type recorded at push, a referrer entry the
//! referrer's descriptor as JSON. The HTTP handlers and gc both go through it, and
//! [`publish`](Repository::publish) holds the touch protocol that lets gc sweep while clients
//! push (see `crate::gc` for why it is safe).
//!
//! A proxied or mirrored repository is then another source behind the same reads.

mod blobs;
pub mod deliver;
pub mod lease;
mod manifests;
mod publish;
pub mod queue;
mod referrers;
mod tags;

use crate::oci::{Digest, RepoName};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored document is not in the format this layer writes.
    #[error("{0}")]
    Corrupt(String),
    /// A manifest references a blob or child manifest the repository does not hold.
    #[error("{0} is not in the repository")]
    Missing(Digest),
    /// A manifest's descriptor gives a size the stored blob does not have.
    #[error("descriptor for {digest} says {declared} bytes, the blob has {actual}")]
    SizeMismatch {
        digest: Digest,
        declared: u64,
        actual: u64,
    },
}

pub type Result<T, E = RepoError> = std::result::Result<T, E>;

/// One repository of the registry, borrowed for the length of a request or a gc pass.
#[derive(Clone, Copy)]
pub struct Repository<'a> {
    store: &'a dyn Store,
    name: &'a RepoName,
}

impl<'a> Repository<'a> {
    pub fn new(store: &'a dyn Store, name: &'a RepoName) -> Self {
        Repository { store, name }
    }

    pub fn name(&self) -> &RepoName {
        self.name
    }

    /// The registry-wide store under this repository, for blob bytes.
    pub fn store(&self) -> &'a dyn Store {
        self.store
    }
}
