//! Where every piece of registry state lives, in one place. Keys are relative, `/`-separated
//! paths built only from validated newtypes (`RepoName`, `Tag`, `Digest`, `UploadId`), so no
//! request can address anything outside the store. The filesystem backend joins them under its
//! root; an object-store backend uses them as object keys under its prefix.
//!
//! ```text
//! blobs/<alg>/<hex[0..2]>/<hex>                          blob and manifest bytes, once per registry
//! repositories/<name>/_blobs/<alg>/<hex>                 link: the repository may serve this blob
//! repositories/<name>/_manifests/<alg>/<hex>             link: manifest revision; holds its media type
//! repositories/<name>/_tags/<tag>                        holds the digest the tag points at
//! repositories/<name>/_referrers/<alg>/<hex>/<alg>-<hex> a referrer of subject <alg>:<hex>; holds
//!                                                        its descriptor (JSON)
//! uploads/<id>/data, uploads/<id>/repo                   an upload session's bytes and owner
//! auth/robots/<name>.json                                a robot account (hash of its secret)
//! auth/token-key.pem                                     the generated token signing key (object
//!                                                        stores only; a local file otherwise)
//! leases/fills/<alg>/<hex>                               which replica is filling this blob from
//!                                                        an upstream (the pull-through cache)
//! leases/queues/<queue>                                  which replica delivers a queue's events
//! leases/tags/<name>/_tags/<tag>                         which replica writes an immutable tag
//! queues/<queue>/<entry>                                 an event waiting for delivery (push
//!                                                        replication); entries sort in order
//! queues/<queue>.reconciled                              when its rule last reconciled
//! quotas/<budget>/members/<alg>/<hex>                    a blob counted in the budget (its size)
//! quotas/<budget>/base                                   the usage a full count found, and its epoch
//! quotas/<budget>/usage/<replica>                        what one replica added since that count
//! ```
//! Repository names cannot contain a component starting with `_`, so the bookkeeping
//! directories never collide with nested repositories (`a` and `a/b` coexist).

use std::fmt;
use std::str::FromStr;

use crate::oci::{Algorithm, Digest, RepoName, Tag};

pub const BLOBS: &str = "blobs";
pub const REPOSITORIES: &str = "repositories";
pub const UPLOADS: &str = "uploads";
pub const AUTH: &str = "auth";
pub const LEASES: &str = "leases";
pub const QUEUES: &str = "queues";
pub const QUOTAS: &str = "quotas";
/// Every top-level directory above: all that the registry writes under its root or prefix.
/// `berth purge` removes these from a filesystem root or an unprefixed bucket, where anything
/// beside them belongs to someone else.
pub const TOP_LEVEL: [&str; 7] = [BLOBS, REPOSITORIES, UPLOADS, AUTH, LEASES, QUEUES, QUOTAS];

/// Names of the per-repository bookkeeping directories.
pub const REPO_BLOBS: &str = "_blobs";
pub const REPO_MANIFESTS: &str = "_manifests";
pub const REPO_TAGS: &str = "_tags";
pub const REPO_REFERRERS: &str = "_referrers";

/// A random upload session id: 32 lowercase hex characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    pub fn random() -> Self {
        UploadId(format!("{:032x}", rand::random::<u128>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid upload id")]
pub struct UploadIdError;

impl FromStr for UploadId {
    type Err = UploadIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(UploadId(s.to_owned()))
        } else {
            Err(UploadIdError)
        }
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a durable event queue (one per replication rule or webhook), of a quota
/// budget, or of a replica in one: `[a-z0-9][a-z0-9-]*`, at most 63 characters, so it is one
/// path component and a metric label.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueueName(String);

#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not a valid name: use lowercase letters, digits and '-', starting with a letter or digit, at most 63 characters"
)]
pub struct QueueNameError(pub String);

impl FromStr for QueueName {
    type Err = QueueNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(QueueName(s.to_owned()))
        } else {
            Err(QueueNameError(s.to_owned()))
        }
    }
}

impl QueueName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One entry of a queue: a sortable stamp (20 decimal digits of microseconds since the epoch,
/// made strictly increasing within a process) and 8 hex digits naming the writer, so entries
/// list in the order they were written and two replicas never collide.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId(String);

impl EntryId {
    pub fn new(stamp_us: u64, writer: u32) -> Self {
        EntryId(format!("{stamp_us:020}-{writer:08x}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The stamp: microseconds since the epoch when it was written.
    pub fn stamp_us(&self) -> u64 {
        self.0[..20].parse().unwrap_or(0)
    }
}

impl FromStr for EntryId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let b = s.as_bytes();
        let ok = b.len() == 29
            && b[..20].iter().all(u8::is_ascii_digit)
            && b[20] == b'-'
            && b[21..]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
        if ok {
            Ok(EntryId(s.to_owned()))
        } else {
            Err(())
        }
    }
}

/// A small metadata document (link, tag, referrer): its key is a path built here.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MetaKey(String);

/// A directory of metadata documents, listed by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MetaDir(String);

impl MetaKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn blob_link(repo: &RepoName, d: &Digest) -> Self {
        MetaKey(format!(
            "{}/{}",
            MetaDir::repo_blobs(repo, d.algorithm()).0,
            d.hex()
        ))
    }

    pub fn manifest_link(repo: &RepoName, d: &Digest) -> Self {
        MetaKey(format!(
            "{}/{}",
            MetaDir::repo_manifests(repo, d.algorithm()).0,
            d.hex()
        ))
    }

    pub fn tag(repo: &RepoName, tag: &Tag) -> Self {
        MetaKey(format!("{}/{}", MetaDir::tags(repo).0, tag.as_str()))
    }

    /// A robot account's record; `name` must already be validated (`[a-z0-9][a-z0-9_-]*`).
    pub fn robot(name: &str) -> Self {
        MetaKey(format!("{}/{name}.json", MetaDir::robots().0))
    }

    /// The token service's generated signing key (PKCS#8 PEM), shared by replicas.
    pub fn token_key() -> Self {
        MetaKey(format!("{AUTH}/token-key.pem"))
    }

    /// Which replica is filling blob `d` from an upstream.
    pub fn fill_lease(d: &Digest) -> Self {
        MetaKey(format!(
            "{}/{}",
            MetaDir::fill_leases(d.algorithm()).0,
            d.hex()
        ))
    }

    /// Which replica delivers the events of `queue`.
    pub fn queue_lease(queue: &QueueName) -> Self {
        MetaKey(format!("{LEASES}/queues/{queue}"))
    }

    /// Which replica is writing immutable tag `tag` of `repo` for the first time.
    pub fn tag_lease(repo: &RepoName, tag: &Tag) -> Self {
        MetaKey(format!("{LEASES}/tags/{}/{REPO_TAGS}/{tag}", repo.as_str()))
    }

    /// When `queue`'s rule last compared everything with its destination (milliseconds since
    /// the epoch, as text).
    pub fn queue_reconciled(queue: &QueueName) -> Self {
        MetaKey(format!("{QUEUES}/{queue}.reconciled"))
    }

    /// An event waiting in `queue`.
    pub fn queue_entry(queue: &QueueName, entry: &EntryId) -> Self {
        MetaKey(format!("{}/{}", MetaDir::queue(queue).0, entry.as_str()))
    }

    /// `d` is counted in `budget` (holds its size as text).
    pub fn quota_member(budget: &QueueName, d: &Digest) -> Self {
        MetaKey(format!(
            "{}/{}",
            MetaDir::quota_members(budget, d.algorithm()).0,
            d.hex()
        ))
    }

    /// The last full count of `budget`.
    pub fn quota_base(budget: &QueueName) -> Self {
        MetaKey(format!("{QUOTAS}/{budget}/base"))
    }

    /// What `replica` added to `budget` since the last full count.
    pub fn quota_usage(budget: &QueueName, replica: &QueueName) -> Self {
        MetaKey(format!("{}/{replica}", MetaDir::quota_usages(budget).0))
    }

    pub fn referrer(repo: &RepoName, subject: &Digest, referrer: &Digest) -> Self {
        MetaKey(format!(
            "{}/{}-{}",
            MetaDir::referrers(repo, subject).0,
            referrer.algorithm(),
            referrer.hex()
        ))
    }
}

impl MetaDir {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn robots() -> Self {
        MetaDir(format!("{AUTH}/robots"))
    }

    pub fn fill_leases(alg: Algorithm) -> Self {
        MetaDir(format!("{LEASES}/fills/{alg}"))
    }

    pub fn queue(queue: &QueueName) -> Self {
        MetaDir(format!("{QUEUES}/{queue}"))
    }

    pub fn quota_members(budget: &QueueName, alg: Algorithm) -> Self {
        MetaDir(format!("{QUOTAS}/{budget}/members/{alg}"))
    }

    pub fn quota_usages(budget: &QueueName) -> Self {
        MetaDir(format!("{QUOTAS}/{budget}/usage"))
    }

    pub fn repo(repo: &RepoName) -> Self {
        MetaDir(format!("{REPOSITORIES}/{}", repo.as_str()))
    }

    pub fn repo_blobs(repo: &RepoName, alg: Algorithm) -> Self {
        MetaDir(format!(
            "{REPOSITORIES}/{}/{REPO_BLOBS}/{alg}",
            repo.as_str()
        ))
    }

    pub fn repo_manifests(repo: &RepoName, alg: Algorithm) -> Self {
        MetaDir(format!(
            "{REPOSITORIES}/{}/{REPO_MANIFESTS}/{alg}",
            repo.as_str()
        ))
    }

    pub fn tags(repo: &RepoName) -> Self {
        MetaDir(format!("{REPOSITORIES}/{}/{REPO_TAGS}", repo.as_str()))
    }

    pub fn referrers(repo: &RepoName, subject: &Digest) -> Self {
        MetaDir(format!(
            "{REPOSITORIES}/{}/{REPO_REFERRERS}/{}/{}",
            repo.as_str(),
            subject.algorithm(),
            subject.hex()
        ))
    }
}

/// Parses the file name of a referrer entry (`<alg>-<hex>`) back into a digest.
pub fn referrer_entry_digest(name: &str) -> Option<Digest> {
    let (alg, hex) = name.split_once('-')?;
    Digest::from_parts(Algorithm::parse(alg).ok()?, hex).ok()
}

/// Where a blob's bytes live.
pub fn blob_key(d: &Digest) -> String {
    format!("{BLOBS}/{}/{}/{}", d.algorithm(), &d.hex()[..2], d.hex())
}

pub fn upload_dir(id: &UploadId) -> String {
    format!("{UPLOADS}/{}", id.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_built_from_validated_parts() {
        let repo: RepoName = "team/app".parse().unwrap();
        let d = Algorithm::Sha256.digest_of(b"x");
        let tag: Tag = "v1".parse().unwrap();
        assert_eq!(
            MetaKey::tag(&repo, &tag).as_str(),
            "repositories/team/app/_tags/v1"
        );
        assert!(blob_key(&d).starts_with(&format!("blobs/sha256/{}/", &d.hex()[..2])));
        let r = MetaKey::referrer(&repo, &d, &d);
        let name = r.as_str().rsplit('/').next().unwrap();
        assert_eq!(referrer_entry_digest(name), Some(d));
        assert!(
            "../../etc/passwd00000000000000000"
                .parse::<UploadId>()
                .is_err()
        );
        assert!(UploadId::random().as_str().parse::<UploadId>().is_ok());
        for bad in ["", "-a", "A", "a/b", "..", "a.b", &"a".repeat(64)] {
            assert!(bad.parse::<QueueName>().is_err(), "{bad:?}");
        }
        let e = EntryId::new(1_700_000_000_000_000, 0xabc);
        assert_eq!(e.as_str().parse::<EntryId>(), Ok(e.clone()));
        assert_eq!(e.stamp_us(), 1_700_000_000_000_000);
        assert!(
            EntryId::new(9, 0) < EntryId::new(10, 0),
            "entries sort by stamp"
        );
        assert!("../../../etc/passwd-00000000".parse::<EntryId>().is_err());
    }
}
