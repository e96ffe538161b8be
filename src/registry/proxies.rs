//! Trusted proxies (`auth.trustedProxies`): the addresses or CIDRs whose `X-Forwarded-For`,
//! `-Proto` and `-Host` headers are believed. From anyone else these headers are ignored, so
//! a client can neither pick the address its failed logins are counted under nor the realm a
//! challenge sends other clients to.

use std::net::IpAddr;

use axum::http::HeaderMap;

#[derive(Debug, thiserror::Error)]
#[error("invalid trusted proxy {0:?}: use an IP address or a CIDR (10.0.0.0/8, fd00::/8)")]
pub struct ProxyError(pub String);

#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn prefix_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl TrustedProxies {
    pub fn parse(list: &[String]) -> Result<TrustedProxies, ProxyError> {
        list.iter()
            .map(|item| {
                crate::config::parse_trusted_proxy(item).ok_or_else(|| ProxyError(item.clone()))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|&(net, len)| {
            if net.is_ipv4() != ip.is_ipv4() {
                return false;
            }
            // IPv4 addresses sit in the top 32 bits, so the prefix counts from the top too.
            let len = u32::from(len);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            prefix_bits(net) & mask == prefix_bits(ip) & mask
        })
    }

    /// The client's address: the peer, or when the peer is trusted, the rightmost address of
    /// `X-Forwarded-For` that is not itself a trusted proxy (the leftmost entries are
    /// whatever the client wrote).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let mut current = peer;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                // Garbage from the client's side: the last hop we could read is the client.
                return current;
            };
            current = ip;
            if !self.contains(ip) {
                return ip;
            }
        }
        current
    }

    /// `scheme://host` that a trusted proxy says the client used, from `X-Forwarded-Proto`
    /// and `X-Forwarded-Host`; `None` from an untrusted peer or without a usable host.
    pub fn origin(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<String> {
        if !peer.is_some_and(|p| self.contains(p)) {
            return None;
        }
        let first = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(str::trim)
        };
        let host = first("x-forwarded-host").filter(|h| is_safe_host(h))?;
        let proto = match first("x-forwarded-proto") {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            Some(p) if p.eq_ignore_ascii_case("http") => "http",
            _ => return None,
        };
        Some(format!("{proto}://{host}"))
    }
}

/// Whether a host (from a trusted proxy's header) is safe to put into a challenge.
fn is_safe_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_and_forwarded_for() {
        let t =
            TrustedProxies::parse(&["10.0.0.0/8".into(), "fd00::/8".into(), "192.0.2.7".into()])
                .unwrap();
        assert!(t.contains(ip("10.1.2.3")));
        assert!(t.contains(ip("::ffff:10.1.2.3")));
        assert!(t.contains(ip("fd12::1")));
        assert!(t.contains(ip("192.0.2.7")));
        assert!(!t.contains(ip("192.0.2.8")));
        assert!(!t.contains(ip("11.0.0.1")));
        for bad in ["10.0.0.0/33", "nonsense", "::/129", "10.0.0.0/x"] {
            assert!(TrustedProxies::parse(&[bad.into()]).is_err(), "{bad}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.9, 10.0.0.5".parse().unwrap(),
        );
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        assert_eq!(t.client(ip("198.51.100.1"), &h), ip("198.51.100.1"));
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), &h),
            ip("10.0.0.1")
        );
    }
}
