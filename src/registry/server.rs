//! The HTTP server: one table of every /v2/ route, and the middleware that gives each request
//! its span and metrics.
//!
//! Repository names contain `/`, so /v2/ paths are not routed by axum's matcher: [`Route::parse`]
//! reads the path from its end (`.../manifests/<ref>`, `.../blobs/uploads/<id>`, ...) and
//! [`dispatch`] maps (method, route) to a handler in one `match`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get};
use tracing::Instrument;

use super::auth::{Auth, Identity, endpoints};
use super::errors::{RegistryError, Result};
use super::metrics::{self, RequestLabels, RouteLabels};
use super::{Registry, blobs, catalog, manifests, referrers, tags, uploads};
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

/// Route information attached to a response for the metrics middleware.
#[derive(Clone)]
struct RouteInfo {
    label: &'static str,
    repo: Option<RepoName>,
}

type App = Arc<Registry>;

pub fn router(registry: App) -> Router {
    Router::new()
        .route("/v2", any(v2))
        .route("/v2/", any(v2))
        .route("/v2/{*rest}", any(v2))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/token", get(endpoints::token))
        .route(
            "/admin/robots",
            get(endpoints::list_robots).post(endpoints::create_robot),
        )
        .route("/admin/robots/{name}", delete(endpoints::revoke_robot))
        .layer(middleware::from_fn_with_state(registry.clone(), observe))
        .with_state(registry)
}

/// The table of every registry route.
async fn dispatch(reg: &Registry, route: Route, req: Req, body: Body) -> Result<Response> {
    use Route::*;
    let m = req.method.clone();
    match (m, route) {
        (Method::GET | Method::HEAD, Base) => Ok(base()),
        (Method::GET, Catalog) => catalog::list(reg, &req).await,
        (Method::GET, Tags(repo)) => tags::list(reg, &repo, &req).await,
        (Method::GET | Method::HEAD, Manifest(repo, r)) => {
            manifests::get(reg, &repo, &r, &req).await
        }
        (Method::PUT, Manifest(repo, r)) => manifests::put(reg, &repo, &r, req, body).await,
        (Method::DELETE, Manifest(repo, r)) => manifests::delete(reg, &repo, &r).await,
        (Method::GET | Method::HEAD, Blob(repo, d)) => blobs::get(reg, &repo, &d, &req).await,
        (Method::DELETE, Blob(repo, d)) => blobs::delete(reg, &repo, &d).await,
        (Method::POST, UploadStart(repo)) => uploads::start(reg, &repo, req, body).await,
        (Method::GET, Upload(repo, id)) => uploads::status(reg, &repo, &id).await,
        (Method::PATCH, Upload(repo, id)) => uploads::patch(reg, &repo, &id, req, body).await,
        (Method::PUT, Upload(repo, id)) => uploads::finish(reg, &repo, &id, req, body).await,
        (Method::DELETE, Upload(repo, id)) => uploads::cancel(reg, &repo, &id).await,
        (Method::GET, Referrers(repo, d)) => referrers::list(reg, &repo, &d, &req).await,
        _ => Err(RegistryError::MethodNotAllowed),
    }
}

fn base() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response()
}

/// The peer's address, when the server recorded it.
pub fn peer_ip(ext: &axum::http::Extensions) -> Option<IpAddr> {
    ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// The client's address: the peer's, or what a trusted proxy says in `X-Forwarded-For`.
pub fn client_ip(
    ext: &axum::http::Extensions,
    headers: &HeaderMap,
    auth: Option<&Auth>,
) -> Option<IpAddr> {
    let peer = peer_ip(ext)?;
    Some(match auth {
        Some(a) => a.proxies.client(peer, headers),
        None => peer,
    })
}

/// Authenticates and authorizes a /v2/ request (a no-op on an open registry).
async fn check_access(
    reg: &Registry,
    route: &Route,
    req: &mut Req,
    client: Option<IpAddr>,
    peer: Option<IpAddr>,
) -> Result<Option<Identity>> {
    let Some(auth) = &reg.auth else {
        return Ok(None);
    };
    let host = auth.proxies.origin(peer, &req.headers);
    let id = match auth.authenticate(&req.headers, client).await {
        Ok(id) => id,
        Err(RegistryError::Unauthorized {
            message,
            challenge: None,
        }) => {
            return Err(RegistryError::Unauthorized {
                message,
                challenge: Some(auth.challenge(None, host.as_deref(), false)),
            });
        }
        Err(e) => return Err(e),
    };
    auth.authorize(&id, route, req, host.as_deref())?;
    if let Route::Catalog = route {
        let (auth, who) = (auth.clone(), id.clone());
        req.repo_filter = Some(Arc::new(move |r: &str| auth.catalog_visible(&who, r)));
    }
    Ok(Some(id))
}

/// What the audit log records about a request, taken before it is dispatched.
struct AuditEvent {
    event: &'static str,
    repo: String,
    reference: String,
}

fn audit_event(method: &Method, route: &Route) -> Option<AuditEvent> {
    let (event, repo, reference) = match (method, route) {
        (&Method::GET, Route::Manifest(r, x)) => ("pull", r, x),
        (&Method::PUT, Route::Manifest(r, x)) => ("push", r, x),
        (&Method::DELETE, Route::Manifest(r, x) | Route::Blob(r, x)) => ("delete", r, x),
        _ => return None,
    };
    Some(AuditEvent {
        event,
        repo: repo.as_str().to_owned(),
        reference: reference.clone(),
    })
}

async fn v2(State(reg): State<App>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let peer = peer_ip(&parts.extensions);
    let client = client_ip(&parts.extensions, &parts.headers, reg.auth.as_deref());
    let route = Route::parse(parts.uri.path());
    let info = match &route {
        Ok(r) => RouteInfo {
            label: r.label(),
            repo: r.repo().cloned(),
        },
        Err(_) => RouteInfo {
            label: "invalid",
            repo: None,
        },
    };
    let mut req = Req {
        method: parts.method,
        headers: parts.headers,
        query: Query::parse(parts.uri.query()),
        repo_filter: None,
        user: None,
    };
    let mut audit = None;
    let mut who = None;
    let result = match route {
        Ok(route) => {
            // Audit lines say who did what: they exist where there is a "who" (auth on).
            if reg.auth.is_some() {
                audit = audit_event(&req.method, &route);
            }
            match check_access(&reg, &route, &mut req, client, peer).await {
                Ok(id) => {
                    who = id.map(|i| i.subject.name());
                    req.user = who.clone();
                    dispatch(&reg, route, req, body).await
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    let mut resp = result.unwrap_or_else(|e| e.into_response());
    if let Some(a) = audit {
        let status = resp.status();
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(if a.reference.contains(':') {
                a.reference.as_str()
            } else {
                ""
            });
        tracing::info!(
            target: "audit",
            event = a.event,
            who = who.as_deref().unwrap_or("anonymous"),
            client = %client.map(|c| c.to_string()).unwrap_or_default(),
            repository = %a.repo,
            reference = %a.reference,
            digest = %digest,
            status = status.as_u16(),
            result = if status.is_success() { "success" } else { "failure" },
            "audit"
        );
    }
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp.extensions_mut().insert(info);
    resp
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(reg): State<App>) -> Response {
    match reg.store.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store not ready: {e}\n"),
        )
            .into_response(),
    }
}

async fn metrics_text(State(reg): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        reg.metrics.encode(),
    )
        .into_response()
}

/// One span and one set of metrics per request.
async fn observe(State(reg): State<App>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().clone();
    let span = tracing::debug_span!(
        "request",
        method = %method,
        path = %request.uri().path(),
        route = tracing::field::Empty,
        repository = tracing::field::Empty,
        status = tracing::field::Empty,
        duration_us = tracing::field::Empty,
    );
    let resp = next.run(request).instrument(span.clone()).await;
    let elapsed = start.elapsed();
    let status = resp.status().as_u16();
    let route = resp
        .extensions()
        .get::<RouteInfo>()
        .map(|i| {
            if let Some(r) = &i.repo {
                span.record("repository", r.as_str());
            }
            i.label
        })
        .unwrap_or("ops");
    span.record("route", route);
    span.record("status", status);
    span.record("duration_us", elapsed.as_micros() as u64);
    span.in_scope(|| tracing::debug!("request finished"));
    let m = metrics::Method::of(&method);
    reg.metrics
        .requests
        .get_or_create(&RequestLabels {
            method: m,
            route,
            status,
        })
        .inc();
    reg.metrics
        .durations
        .get_or_create(&RouteLabels { method: m, route })
        .observe(elapsed.as_secs_f64());
    if method != Method::HEAD
        && let Some(len) = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    {
        reg.metrics.bytes_sent.inc_by(len);
    }
    resp
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
