//! A bounded in-memory cache of manifest bytes by digest. Content-addressed bytes never change,
//! so entries need no validation; whether a repository may serve a digest is still checked
//! against the store on every request. Dropping the cache only costs a read.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

use crate::oci::Digest;

pub struct ManifestCache {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    bytes: usize,
    map: HashMap<Digest, Bytes>,
    order: VecDeque<Digest>,
}

impl ManifestCache {
    pub fn new(budget: usize) -> Self {
        ManifestCache {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn get(&self, d: &Digest) -> Option<Bytes> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.map.get(d).cloned()
    }

    pub fn insert(&self, d: Digest, bytes: Bytes) {
        if bytes.len() > self.budget / 4 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.map.contains_key(&d) {
            return;
        }
        inner.bytes += bytes.len();
        inner.order.push_back(d.clone());
        inner.map.insert(d, bytes);
        while inner.bytes > self.budget {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(b) = inner.map.remove(&old) {
                inner.bytes -= b.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    #[test]
    fn stays_within_budget() {
        let c = ManifestCache::new(1000);
        for i in 0..100u32 {
            let b = Bytes::from(vec![0u8; 100]);
            c.insert(Algorithm::Sha256.digest_of(&i.to_le_bytes()), b);
        }
        let inner = c.inner.lock().unwrap();
        assert!(inner.bytes <= 1000);
        assert_eq!(inner.map.len(), inner.order.len());
    }
}
