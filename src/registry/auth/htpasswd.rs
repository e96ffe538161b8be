//! Users and bcrypt password hashes from an htpasswd file, and a short-lived cache of
//! successful checks: bcrypt costs milliseconds by design, and clients send the same
//! credentials with every request. The file is re-read when it changes (checked whenever a
//! password has to be verified for real), so users are added without a restart; a cached
//! success lasts at most the TTL after a password is changed or a user removed.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("cannot read htpasswd file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("htpasswd file {0}, line {1}: {2}")]
    Line(String, usize, &'static str),
}

fn read_users(path: &Path) -> Result<Users, HtpasswdError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| HtpasswdError::Read(name.clone(), e))?;
    parse_users(&name, &text)
}

fn parse_users(name: &str, text: &str) -> Result<Users, HtpasswdError> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |why| HtpasswdError::Line(name.to_owned(), i + 1, why);
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| err("expected user:hash"))?;
        if user.is_empty() {
            return Err(err("empty user name"));
        }
        if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
            return Err(err("only bcrypt hashes ($2y$, $2b$, $2a$) are supported"));
        }
        users.insert(user.to_owned(), hash.to_owned());
    }
    let cost = users
        .values()
        .next()
        .and_then(|h| h.get(4..6))
        .and_then(|c| c.parse::<u32>().ok())
        .unwrap_or(bcrypt::DEFAULT_COST);
    Ok(Users {
        hashes: users,
        dummy: bcrypt::hash("not a password", cost).ok(),
    })
}

/// Entries kept in the verification cache before it is emptied.
const CACHE_ENTRIES: usize = 10_000;

struct Users {
    hashes: HashMap<String, String>,
    /// A hash of the same cost, checked for unknown users so they take as long as known ones.
    dummy: Option<String>,
}

/// What identifies one version of the file: modification time, size, inode.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

pub struct Htpasswd {
    source: Option<(PathBuf, Mutex<Stamp>)>,
    users: RwLock<Arc<Users>>,
    ttl: Duration,
    /// sha256(user, password) -> when the successful check stops counting
    verified: Mutex<HashMap<[u8; 32], Instant>>,
    /// Checks running now, so that the many connections of one client whose cached success
    /// just expired wait for one bcrypt instead of each running their own.
    in_flight: Mutex<HashMap<[u8; 32], Arc<tokio::sync::OnceCell<bool>>>>,
    /// Full bcrypt checks run so far.
    slow_checks: AtomicU64,
}

impl Htpasswd {
    pub fn load(path: &Path, ttl: Duration) -> Result<Htpasswd, HtpasswdError> {
        let st = stamp(path);
        let users = read_users(path)?;
        Ok(Htpasswd {
            source: Some((path.to_owned(), Mutex::new(st))),
            users: RwLock::new(Arc::new(users)),
            ttl,
            verified: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            slow_checks: AtomicU64::new(0),
        })
    }

    pub fn parse(name: &str, text: &str, ttl: Duration) -> Result<Htpasswd, HtpasswdError> {
        Ok(Htpasswd {
            source: None,
            users: RwLock::new(Arc::new(parse_users(name, text)?)),
            ttl,
            verified: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            slow_checks: AtomicU64::new(0),
        })
    }

    fn users(&self) -> Arc<Users> {
        self.users.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the file if it changed since it was last read.
    fn refresh(&self) {
        let Some((path, last)) = &self.source else {
            return;
        };
        let now = stamp(path);
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if *last == now {
            return;
        }
        *last = now;
        match read_users(path) {
            Ok(users) => {
                tracing::info!(file = %path.display(), users = users.hashes.len(), "reloaded the htpasswd file");
                *self.users.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(users);
                self.verified
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reload the htpasswd file; keeping the old one")
            }
        }
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users().hashes.contains_key(user)
    }

    pub fn len(&self) -> usize {
        self.users().hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users().hashes.is_empty()
    }

    fn key(user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((user.len() as u64).to_le_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Checks credentials: from the cache, or by one bcrypt on a blocking thread that
    /// concurrent requests with the same credentials share.
    pub async fn verify(self: &Arc<Self>, user: &str, password: &str) -> bool {
        if let Some(left) = self.cached_for(user, password) {
            // Re-check in the background before the entry runs out, so that a busy client
            // never stalls on bcrypt; a changed password simply is not cached again.
            if left < self.ttl / 3 {
                let (h, u, p) = (self.clone(), user.to_owned(), password.to_owned());
                if let Some(cell) = self.start_check(&Self::key(user, password)) {
                    tokio::spawn(async move {
                        h.run_check(cell, &u, &p).await;
                    });
                }
            }
            return true;
        }
        let key = Self::key(user, password);
        let cell = match self.start_check(&key) {
            Some(c) => c,
            None => self.join_check(&key),
        };
        self.run_check(cell, user, password).await
    }

    /// Registers a check of `key`; `None` when one is already running.
    fn start_check(&self, key: &[u8; 32]) -> Option<Arc<tokio::sync::OnceCell<bool>>> {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(key) {
            return None;
        }
        let cell = Arc::new(tokio::sync::OnceCell::new());
        map.insert(*key, cell.clone());
        Some(cell)
    }

    /// The running check of `key` (or a new one, if it has just finished).
    fn join_check(&self, key: &[u8; 32]) -> Arc<tokio::sync::OnceCell<bool>> {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(*key).or_default().clone()
    }

    /// Runs (or waits for) the bcrypt check behind `cell`, then unregisters it.
    async fn run_check(
        self: &Arc<Self>,
        cell: Arc<tokio::sync::OnceCell<bool>>,
        user: &str,
        password: &str,
    ) -> bool {
        let ok = *cell
            .get_or_init(|| {
                let (h, u, p) = (self.clone(), user.to_owned(), password.to_owned());
                async move {
                    tokio::task::spawn_blocking(move || h.verify_slow(&u, &p))
                        .await
                        .unwrap_or(false)
                }
            })
            .await;
        let key = Self::key(user, password);
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(&key);
        }
        ok
    }

    /// How much longer a cached success covers these credentials, if one does.
    fn cached_for(&self, user: &str, password: &str) -> Option<Duration> {
        if self.ttl.is_zero() {
            return None;
        }
        let key = Self::key(user, password);
        let map = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&key)
            .and_then(|t| t.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// Whether a cached successful check covers these credentials.
    pub fn cached(&self, user: &str, password: &str) -> bool {
        self.cached_for(user, password).is_some()
    }

    /// The full bcrypt check (slow: call off the async threads); remembers a success.
    pub fn verify_slow(&self, user: &str, password: &str) -> bool {
        self.slow_checks.fetch_add(1, Ordering::Relaxed);
        self.refresh();
        let users = self.users();
        let Some(hash) = users.hashes.get(user) else {
            // Spend the same time as a real check, so unknown users cannot be told apart.
            if let Some(d) = &users.dummy {
                let _ = bcrypt::verify(password, d);
            }
            return false;
        };
        let ok = bcrypt::verify(password, hash).unwrap_or(false);
        if ok && !self.ttl.is_zero() {
            let mut map = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if map.len() >= CACHE_ENTRIES {
                map.retain(|_, t| *t > now);
                if map.len() >= CACHE_ENTRIES {
                    map.clear();
                }
            }
            map.insert(Self::key(user, password), now + self.ttl);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_verifies_with_cache() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let text = format!("# users\nalice:{hash}\n\n");
        let h = Htpasswd::parse("t", &text, Duration::from_secs(30)).unwrap();
        assert!(h.contains("alice"));
        assert!(!h.cached("alice", "s3cret"));
        assert!(!h.verify_slow("alice", "wrong"));
        assert!(!h.cached("alice", "wrong"));
        assert!(!h.verify_slow("bob", "s3cret"));
        assert!(h.verify_slow("alice", "s3cret"));
        assert!(h.cached("alice", "s3cret"));
        assert!(!h.cached("alice", "s3cret2"));
        assert!(Htpasswd::parse("t", "alice:{SHA}abc\n", Duration::ZERO).is_err());
        assert!(Htpasswd::parse("t", "nocolon\n", Duration::ZERO).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_checks_share_one_bcrypt() {
        let hash = bcrypt::hash("pw", 8).unwrap();
        let h = Arc::new(
            Htpasswd::parse("t", &format!("u:{hash}\n"), Duration::from_secs(30)).unwrap(),
        );
        let all = futures::future::join_all((0..32).map(|_| {
            let h = h.clone();
            async move { h.verify("u", "pw").await }
        }))
        .await;
        assert!(all.iter().all(|ok| *ok));
        assert_eq!(
            h.slow_checks.load(Ordering::Relaxed),
            1,
            "one bcrypt for 32 requests"
        );
        assert!(h.in_flight.lock().unwrap().is_empty());
        // Near the end of its life, a cached success is renewed in the background while the
        // request itself is answered from the cache.
        let short = Arc::new(
            Htpasswd::parse(
                "t",
                &format!("u:{}\n", bcrypt::hash("pw", 4).unwrap()),
                Duration::from_millis(300),
            )
            .unwrap(),
        );
        assert!(short.verify("u", "pw").await);
        tokio::time::sleep(Duration::from_millis(220)).await;
        assert!(short.verify("u", "pw").await);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            short.slow_checks.load(Ordering::Relaxed),
            2,
            "renewed in the background"
        );
        assert!(
            short.cached("u", "pw"),
            "still cached past the first expiry"
        );
        assert!(!h.verify("u", "wrong").await);
    }

    #[test]
    fn reloads_the_file_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let line = |u: &str, p: &str| format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap());
        std::fs::write(&path, line("alice", "a")).unwrap();
        let h = Htpasswd::load(&path, Duration::from_secs(30)).unwrap();
        assert!(h.verify_slow("alice", "a"));
        assert!(!h.verify_slow("bob", "b"));
        std::fs::write(&path, line("bob", "b")).unwrap();
        assert!(h.verify_slow("bob", "b"), "added without a restart");
        assert!(!h.cached("alice", "a"), "the cache is dropped on reload");
        assert!(!h.verify_slow("alice", "a"), "removed");
        std::fs::write(&path, "broken line\n").unwrap();
        assert!(
            h.verify_slow("bob", "b"),
            "a broken file keeps the old users"
        );
        // The dummy hash is a real bcrypt hash of the users' cost.
        let users = h.users();
        let d = users.dummy.as_deref().unwrap();
        assert!(d.starts_with("$2b$04$"));
        assert!(bcrypt::verify("not a password", d).unwrap());
    }
}
