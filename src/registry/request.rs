//! The request vocabulary every handler shares: the parsed [`Route`] (with its repository
//! name validated), the decoded [`Query`], the [`Req`] a handler reads everything but the body
//! from, and the client's address. It lives apart from the router so that handlers (and auth)
//! never import the module that imports them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderValue, Method, header};

use super::errors::{RegistryError, Result};
use super::proxies::TrustedProxies;
use crate::oci::RepoName;

/// A /v2/ route with its repository name already validated.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Base,
    Catalog,
    Tags(RepoName),
    Manifest(RepoName, String),
    Blob(RepoName, String),
    UploadStart(RepoName),
    Upload(RepoName, String),
    Referrers(RepoName, String),
}

impl Route {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags(_) => "tags",
            Route::Manifest(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) | Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
        }
    }

    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags(r)
            | Route::Manifest(r, _)
            | Route::Blob(r, _)
            | Route::UploadStart(r)
            | Route::Upload(r, _)
            | Route::Referrers(r, _) => Some(r),
        }
    }

    /// The same route for another repository name (a proxied name made canonical).
    pub fn with_repo(self, name: RepoName) -> Route {
        match self {
            Route::Base | Route::Catalog => self,
            Route::Tags(_) => Route::Tags(name),
            Route::Manifest(_, r) => Route::Manifest(name, r),
            Route::Blob(_, d) => Route::Blob(name, d),
            Route::UploadStart(_) => Route::UploadStart(name),
            Route::Upload(_, id) => Route::Upload(name, id),
            Route::Referrers(_, d) => Route::Referrers(name, d),
        }
    }

    /// Parses a request path. The route's keywords and the repository name are read as they
    /// were sent: a name containing any percent-encoded byte is NAME_INVALID, so `a%2fb` can
    /// never become `a/b` (which would let a path-prefix ACL in front of Berth be bypassed)
    /// and `manifest%73` is not `manifests`. Only the last segment (a tag, digest or upload
    /// id, where clients do encode `:`) is percent-decoded, and its grammar is checked later.
    pub fn parse(path: &str) -> Result<Route> {
        let rest = match path.strip_prefix("/v2") {
            Some("") | Some("/") => return Ok(Route::Base),
            Some(r) if r.starts_with('/') => &r[1..],
            _ => return Err(RegistryError::NotFound("no such route".into())),
        };
        if rest == "_catalog" {
            return Ok(Route::Catalog);
        }
        let segs: Vec<&str> = rest.split('/').collect();
        let n = segs.len();
        let name = |upto: usize| -> Result<RepoName> {
            if upto == 0 {
                return Err(RegistryError::NotFound("no such route".into()));
            }
            let raw = segs[..upto].join("/");
            if raw.contains('%') {
                return Err(RegistryError::NameInvalid(format!(
                    "invalid repository name {raw:?}: percent-encoded bytes are not allowed in names"
                )));
            }
            Ok(raw.parse::<RepoName>()?)
        };
        let seg = |i: usize| segs[i];
        let last = || percent_decode(segs[n - 1]);
        if n >= 3 && seg(n - 2) == "tags" && seg(n - 1) == "list" {
            return Ok(Route::Tags(name(n - 2)?));
        }
        if n >= 3 && seg(n - 2) == "blobs" && seg(n - 1) == "uploads" {
            return Ok(Route::UploadStart(name(n - 2)?));
        }
        if n >= 4 && seg(n - 3) == "blobs" && seg(n - 2) == "uploads" {
            if seg(n - 1).is_empty() {
                return Ok(Route::UploadStart(name(n - 3)?));
            }
            return Ok(Route::Upload(name(n - 3)?, last()));
        }
        if n >= 3 {
            match seg(n - 2) {
                "manifests" => return Ok(Route::Manifest(name(n - 2)?, last())),
                "blobs" => return Ok(Route::Blob(name(n - 2)?, last())),
                "referrers" => return Ok(Route::Referrers(name(n - 2)?, last())),
                _ => {}
            }
        }
        Err(RegistryError::NotFound("no such route".into()))
    }
}

fn percent_decode(seg: &str) -> String {
    if !seg.contains('%') {
        return seg.to_owned();
    }
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    // Invalid UTF-8 stays undecodable and fails validation later.
    String::from_utf8(out).unwrap_or_else(|_| seg.to_owned())
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Query parameters, percent-decoded; the first occurrence of a key wins. A `+` stays a `+`
/// (media types contain it; no value the API accepts can contain a space).
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(q: Option<&str>) -> Self {
        let Some(q) = q else { return Query::default() };
        Query(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Drops every occurrence of a key.
    pub fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    /// Every value of a repeated key, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A response header value from text the registry built (digests, paths); these are always
/// valid header text, so a failure is an internal error, never the client's.
pub fn header_value(v: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(v).map_err(|e| RegistryError::Storage(e.to_string()))
}

/// Everything a handler may read from a request but its body (which is not `Sync`, so it
/// travels separately to the handlers that consume it).
pub struct Req {
    pub method: Method,
    pub headers: HeaderMap,
    pub query: Query,
    /// With auth on, the repositories this caller may see in listings (`None`: all).
    pub repo_filter: Option<RepoFilter>,
    /// The signed-in user (`None`: anonymous, or auth off).
    pub user: Option<String>,
    /// The client's address (a trusted proxy's `X-Forwarded-For` believed).
    pub client: Option<IpAddr>,
}

pub type RepoFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl Req {
    pub fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header(header::CONTENT_LENGTH)
            .and_then(|v| v.parse().ok())
    }
}

/// The peer's address, when the server recorded it.
pub fn peer_ip(ext: &axum::http::Extensions) -> Option<IpAddr> {
    ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// The client's address: the peer's, or what a trusted proxy says in `X-Forwarded-For`.
pub fn client_ip(
    ext: &axum::http::Extensions,
    headers: &HeaderMap,
    proxies: Option<&TrustedProxies>,
) -> Option<IpAddr> {
    let peer = peer_ip(ext)?;
    Some(match proxies {
        Some(p) => p.client(peer, headers),
        None => peer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn parses_every_route_shape() {
        assert_eq!(Route::parse("/v2/").unwrap(), Route::Base);
        assert_eq!(Route::parse("/v2").unwrap(), Route::Base);
        assert_eq!(Route::parse("/v2/_catalog").unwrap(), Route::Catalog);
        assert_eq!(
            Route::parse("/v2/a/b/tags/list").unwrap(),
            Route::Tags(repo("a/b"))
        );
        assert_eq!(
            Route::parse("/v2/a/manifests/latest").unwrap(),
            Route::Manifest(repo("a"), "latest".into())
        );
        assert_eq!(
            Route::parse("/v2/a/manifests/x/manifests/v1").unwrap(),
            Route::Manifest(repo("a/manifests/x"), "v1".into())
        );
        assert_eq!(
            Route::parse("/v2/a/blobs/uploads/").unwrap(),
            Route::UploadStart(repo("a"))
        );
        assert_eq!(
            Route::parse("/v2/a/blobs/uploads").unwrap(),
            Route::UploadStart(repo("a"))
        );
        assert_eq!(
            Route::parse("/v2/a/blobs/uploads/abc").unwrap(),
            Route::Upload(repo("a"), "abc".into())
        );
        assert_eq!(
            Route::parse("/v2/a/blobs/sha256%3Aab").unwrap(),
            Route::Blob(repo("a"), "sha256:ab".into())
        );
        assert_eq!(
            Route::parse("/v2/a/referrers/sha256:ab").unwrap(),
            Route::Referrers(repo("a"), "sha256:ab".into())
        );
    }

    #[test]
    fn rejects_traversal_and_bad_names() {
        for p in [
            "/v2/../manifests/latest",
            "/v2/a/../../manifests/latest",
            "/v2/%2e%2e/manifests/latest",
            "/v2/a%2f..%2f..%2fetc/manifests/x",
            "/v2/UPPER/tags/list",
            "/v2//manifests/x",
            "/v2/team-a%2fapp/manifests/x",
            "/v2/team-a%2Fapp/tags/list",
            "/v2/a%2eb/manifests/x",
            "/v2/%61/manifests/x",
            "/v2/a/b%2fc/blobs/uploads/",
        ] {
            assert!(
                matches!(Route::parse(p), Err(RegistryError::NameInvalid(_))),
                "{p} should be NAME_INVALID, got {:?}",
                Route::parse(p)
            );
        }
        assert!(matches!(
            Route::parse("/v2/a/b"),
            Err(RegistryError::NotFound(_))
        ));
        assert!(matches!(
            Route::parse("/v3/"),
            Err(RegistryError::NotFound(_))
        ));
    }

    #[test]
    fn query_decodes_values() {
        let q = Query::parse(Some(
            "digest=sha256%3Aab&n=10&from=a%2Fb&empty&t=a+json&u=b%2Bjson",
        ));
        assert_eq!(q.get("t"), Some("a+json"));
        assert_eq!(q.get("u"), Some("b+json"));
        assert_eq!(q.get("digest"), Some("sha256:ab"));
        assert_eq!(q.get("from"), Some("a/b"));
        assert_eq!(q.get("empty"), Some(""));
        assert_eq!(q.get("nope"), None);
    }
}
