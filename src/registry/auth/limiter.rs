//! Failed logins, counted so that guessing is bounded and cannot be turned against others.
//!
//! Every credential check first reserves a slot ([`Limiter::reserve`]), atomically with the
//! decision to allow it, and the slot becomes a failure or is released when the check ends: N
//! parallel guesses against a limit of `max` get at most `max` checks. Failures are counted per
//! (client address, user name) and per user name; an IPv6 client is counted by its /64. A pair
//! that used up its failures is refused until the window passes; a user whose failures (from
//! all addresses) reached `max` is refused only from addresses that have failed themselves, so
//! one client guessing from an address it shares with others (an Ingress without
//! `trustedProxies`, a NAT) never locks the others out, and a correct password from a clean
//! address still gets through.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Entries tracked per table before stale ones are swept.
const TRACKED: usize = 100_000;

#[derive(Clone, Copy, Debug, Default)]
struct Count {
    start: Option<Instant>,
    failures: u32,
    /// Checks reserved and not yet finished.
    pending: u32,
}

impl Count {
    fn refresh(&mut self, now: Instant, window: Duration) {
        if self.start.is_some_and(|s| now.duration_since(s) >= window) {
            self.start = None;
            self.failures = 0;
        }
    }

    fn used(&self) -> u32 {
        self.failures + self.pending
    }

    fn retry_after(&self, now: Instant, window: Duration) -> u64 {
        let left = match self.start {
            Some(s) => window.saturating_sub(now.duration_since(s)),
            // Only pending checks: they end within a bcrypt.
            None => Duration::from_secs(1),
        };
        (left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1)
    }
}

#[derive(Default)]
struct Tables {
    pairs: HashMap<(IpAddr, String), Count>,
    users: HashMap<String, Count>,
    /// Addresses with a failure in the window (for any user).
    addresses: HashMap<IpAddr, Count>,
}

pub struct Limiter {
    max: u32,
    window: Duration,
    tables: Arc<Mutex<Tables>>,
}

/// A reserved check. Call [`Attempt::failed`] when the credentials were wrong; dropped
/// otherwise, the slot is released.
pub struct Attempt {
    tables: Arc<Mutex<Tables>>,
    ip: IpAddr,
    user: String,
    done: bool,
}

/// The key an address is counted under: IPv6 by its /64 (one host usually holds a whole
/// /64), IPv4 (and IPv4-mapped IPv6) as it is.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Limiter {
    pub fn new(max: u32, window: Duration) -> Limiter {
        Limiter {
            max: max.max(1),
            window,
            tables: Arc::new(Mutex::new(Tables::default())),
        }
    }

    /// Reserves one credential check by `user` from `ip`, or `Err(seconds to wait)`.
    pub fn reserve(&self, ip: IpAddr, user: &str) -> Result<Attempt, u64> {
        let ip = client_key(ip);
        let now = Instant::now();
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let window = self.window;
        if t.pairs.len() >= TRACKED || t.users.len() >= TRACKED || t.addresses.len() >= TRACKED {
            let fresh = |c: &Count| {
                c.pending > 0 || c.start.is_some_and(|s| now.duration_since(s) < window)
            };
            t.pairs.retain(|_, c| fresh(c));
            t.users.retain(|_, c| fresh(c));
            t.addresses.retain(|_, c| fresh(c));
        }
        let address_failed = t.addresses.get_mut(&ip).is_some_and(|c| {
            c.refresh(now, window);
            c.failures > 0
        });
        let user_count = t.users.entry(user.to_owned()).or_default();
        user_count.refresh(now, window);
        if address_failed && user_count.used() >= self.max {
            return Err(user_count.retry_after(now, window));
        }
        user_count.pending += 1;
        let pair = t.pairs.entry((ip, user.to_owned())).or_default();
        pair.refresh(now, window);
        if pair.used() >= self.max {
            let wait = pair.retry_after(now, window);
            if let Some(u) = t.users.get_mut(user) {
                u.pending = u.pending.saturating_sub(1);
            }
            return Err(wait);
        }
        pair.pending += 1;
        Ok(Attempt {
            tables: self.tables.clone(),
            ip,
            user: user.to_owned(),
            done: false,
        })
    }
}

impl Attempt {
    /// The credentials were wrong: the reserved slot becomes a failure.
    pub fn failed(mut self) {
        self.finish(true);
    }

    fn finish(&mut self, failed: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let now = Instant::now();
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let settle = |c: &mut Count| {
            c.pending = c.pending.saturating_sub(1);
            if failed {
                c.start.get_or_insert(now);
                c.failures += 1;
            }
        };
        if let Some(c) = t.pairs.get_mut(&(self.ip, self.user.clone())) {
            settle(c);
        }
        if let Some(c) = t.users.get_mut(&self.user) {
            settle(c);
        }
        if failed {
            let c = t.addresses.entry(self.ip).or_default();
            c.start.get_or_insert(now);
            c.failures += 1;
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.finish(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_a_pair_after_max_failures_until_the_window_passes() {
        let l = Limiter::new(3, Duration::from_millis(300));
        let a = ip("127.0.0.2");
        for _ in 0..3 {
            l.reserve(a, "alice").unwrap().failed();
        }
        assert!(l.reserve(a, "alice").is_err());
        assert!(
            l.reserve(ip("127.0.0.3"), "alice").is_ok(),
            "a clean address passes"
        );
        assert!(
            l.reserve(a, "bob").is_ok(),
            "other users of the address pass"
        );
        std::thread::sleep(Duration::from_millis(350));
        l.reserve(a, "alice").unwrap().failed();
        assert!(
            l.reserve(a, "alice").is_ok(),
            "a new window starts from zero"
        );
    }

    #[test]
    fn reservations_count_before_the_check_ends() {
        let l = Limiter::new(3, Duration::from_secs(60));
        let a = ip("10.0.0.1");
        let held: Vec<_> = (0..3).map(|_| l.reserve(a, "alice").unwrap()).collect();
        assert!(
            l.reserve(a, "alice").is_err(),
            "no fourth check while three run"
        );
        drop(held);
        assert!(
            l.reserve(a, "alice").is_ok(),
            "released slots are free again"
        );
    }

    #[test]
    fn a_user_under_attack_is_refused_only_from_failing_addresses() {
        let l = Limiter::new(2, Duration::from_secs(60));
        l.reserve(ip("10.0.0.1"), "alice").unwrap().failed();
        l.reserve(ip("10.0.0.2"), "alice").unwrap().failed();
        assert!(l.reserve(ip("10.0.0.3"), "alice").is_ok());
        l.reserve(ip("10.0.0.4"), "bob").unwrap().failed();
        assert!(
            l.reserve(ip("10.0.0.4"), "alice").is_err(),
            "an address that failed may not guess a locked user"
        );
    }

    #[test]
    fn ipv6_counts_by_64() {
        let l = Limiter::new(1, Duration::from_secs(60));
        l.reserve(ip("2001:db8:1:2::1"), "alice").unwrap().failed();
        assert!(l.reserve(ip("2001:db8:1:2:ffff::9"), "alice").is_err());
        assert!(l.reserve(ip("2001:db8:1:3::1"), "alice").is_ok());
        assert_eq!(client_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
    }
}
