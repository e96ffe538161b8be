//! The small in-memory memos the cache keeps to spare the store and the upstream a request:
//! each entry holds until its deadline, and a memo that reaches its bound starts over empty.
//! Entries are hints: losing one costs one lookup.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Memo<K, V> {
    map: Mutex<HashMap<K, (V, Instant)>>,
    max: usize,
}

impl<K: Eq + Hash, V: Clone> Memo<K, V> {
    pub fn new(max: usize) -> Self {
        Memo {
            map: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// The value of `k`, while it holds.
    pub fn get(&self, k: &K) -> Option<V> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(k)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(v, _)| v.clone())
    }

    /// Sets `k` to `v` for `hold`.
    pub fn set(&self, k: K, v: V, hold: Duration) {
        self.claim_if(k, v, hold, |_| true);
    }

    /// Sets `k` to `v` for `hold` unless an entry for it still holds; whether it did.
    pub fn claim(&self, k: K, v: V, hold: Duration) -> bool {
        self.claim_if(k, v, hold, |live| !live)
    }

    pub fn remove(&self, k: &K) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(k);
    }

    fn claim_if(&self, k: K, v: V, hold: Duration, take: impl FnOnce(bool) -> bool) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let live = map.get(&k).is_some_and(|(_, until)| now < *until);
        if !take(live) {
            return false;
        }
        if map.len() >= self.max && !map.contains_key(&k) {
            map.clear();
        }
        map.insert(k, (v, now + hold));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_hold_until_their_deadline_and_the_bound_empties_the_memo() {
        let m = Memo::new(2);
        m.set("a", 1, Duration::from_secs(60));
        assert_eq!(m.get(&"a"), Some(1));
        assert!(
            !m.claim("a", 2, Duration::from_secs(60)),
            "a live entry is kept"
        );
        m.set("b", 3, Duration::ZERO);
        assert_eq!(m.get(&"b"), None, "expired at once");
        assert!(
            m.claim("b", 4, Duration::from_secs(60)),
            "an expired entry is claimed"
        );
        m.set("c", 5, Duration::from_secs(60));
        assert_eq!(
            (m.get(&"a"), m.get(&"c")),
            (None, Some(5)),
            "full: started over"
        );
        m.remove(&"c");
        assert_eq!(m.get(&"c"), None);
    }
}
