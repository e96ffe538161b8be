//! The HTTP server: one table of every /v2/ route, and the middleware that gives each request
//! its span and metrics.
//!
//! Repository names contain `/`, so /v2/ paths are not routed by axum's matcher: [`Route::parse`]
//! reads the path from its end (`.../manifests/<ref>`, `.../blobs/uploads/<id>`, ...) and
//! [`dispatch`] maps (method, route) to a handler in one `match`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get};
use tracing::Instrument;

use super::auth::{Identity, endpoints};
use super::errors::{RegistryError, Result};
use super::metrics::{self, RequestLabels, RouteLabels};
use super::request::{Query, Req, Route, client_ip, peer_ip};
use super::{Registry, blobs, catalog, linger, manifests, referrers, tags, uploads};
use crate::oci::RepoName;

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
        .layer(middleware::from_fn(linger::drain_unread))
        .with_state(registry)
}

/// A proxied repository under its canonical local name (see `crate::proxy`), before access
/// rules see it: `library/alpine` through `registry-mirrors` is `docker.io/library/alpine`.
async fn canonical(reg: &Registry, route: Route, method: &Method, query: &Query) -> Result<Route> {
    // Only reads go to an upstream by `ns` or as the default: a push names a local
    // repository (a new one need not exist yet).
    if !matches!(*method, Method::GET | Method::HEAD) {
        let (Some(proxy), Some(repo)) = (&reg.proxy, route.repo()) else {
            return Ok(route);
        };
        return match proxy.target(repo) {
            Some(t) => Ok(route.with_repo(t.local)),
            None => {
                // A write may make it a local repository: the next read looks again.
                proxy.forget_local(repo);
                Ok(route)
            }
        };
    }
    let Some(repo) = route.repo() else {
        return Ok(route);
    };
    // containerd asks a mirror for another registry's image with `ns`: with no upstream for
    // that registry, serving a local repository of the same name would be the wrong image.
    if let (Some(proxy), Some(ns)) = (&reg.proxy, query.get("ns").filter(|n| !n.is_empty()))
        && proxy.by_ns(ns).is_none()
        && proxy.target(repo).is_none()
    {
        return Err(RegistryError::UpstreamUnknown {
            code: "NAME_UNKNOWN",
            message: format!(
                "no upstream is configured for ns={ns}: {repo} there is not cached here"
            ),
        });
    }
    match reg.read_name(repo, query.get("ns")).await? {
        Some(name) => Ok(route.with_repo(name)),
        None => Ok(route),
    }
}

/// Writes into a pull-through cache are refused: its content is the upstream's.
fn refuse_proxied_writes(reg: &Registry, method: &Method, route: &Route) -> Result<()> {
    let write = !matches!(*method, Method::GET | Method::HEAD);
    if let (true, Some(repo)) = (write, route.repo())
        && let Some(t) = reg.proxied(repo)
    {
        return Err(RegistryError::Denied(format!(
            "{repo} is a pull-through cache of {}; push to a name outside the proxy prefixes",
            t.upstream.url
        )));
    }
    Ok(())
}

/// The table of every registry route.
async fn dispatch(reg: &Registry, route: Route, req: Req, body: Body) -> Result<Response> {
    use Route::*;
    let m = req.method.clone();
    refuse_proxied_writes(reg, &m, &route)?;
    match (m, route) {
        (Method::GET | Method::HEAD, Base) => Ok(base()),
        (Method::GET, Catalog) => catalog::list(reg, &req).await,
        (Method::GET, Tags(repo)) => tags::list(reg, &repo, &req).await,
        (Method::GET | Method::HEAD, Manifest(repo, r)) => {
            manifests::get(reg, &repo, &r, &req).await
        }
        (Method::PUT, Manifest(repo, r)) => manifests::put(reg, &repo, &r, req, body).await,
        (Method::DELETE, Manifest(repo, r)) => manifests::delete(reg, &repo, &r, &req).await,
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

fn audit_event(method: &Method, route: &Route, query: &Query) -> Option<AuditEvent> {
    let digest_param = || query.get("digest").unwrap_or_default().to_owned();
    let (event, repo, reference) = match (method, route) {
        (&Method::GET, Route::Manifest(r, x)) => ("pull", r, x.clone()),
        (&Method::PUT, Route::Manifest(r, x)) => ("push", r, x.clone()),
        (&Method::DELETE, Route::Manifest(r, x) | Route::Blob(r, x)) => ("delete", r, x.clone()),
        (&Method::GET, Route::Blob(r, x)) => ("blob-pull", r, x.clone()),
        (&Method::PUT, Route::Upload(r, _)) => ("blob-push", r, digest_param()),
        // A POST that completes a blob: monolithic (`digest`) or a mount; a POST that only
        // opens a session says nothing yet.
        (&Method::POST, Route::UploadStart(r)) => match query.get("mount") {
            Some(m) => ("blob-mount", r, m.to_owned()),
            None if query.get("digest").is_some() => ("blob-push", r, digest_param()),
            None => return None,
        },
        _ => return None,
    };
    Some(AuditEvent {
        event,
        repo: repo.as_str().to_owned(),
        reference,
    })
}

/// What the audit line takes from the response (read before any await: a response is not
/// `Sync`).
struct Answered {
    status: StatusCode,
    digest: Option<String>,
    length: Option<u64>,
}

impl Answered {
    fn of(resp: &Response) -> Answered {
        let h = resp.headers();
        Answered {
            status: resp.status(),
            digest: h
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            length: h
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        }
    }
}

/// Writes the audit line of a finished request.
async fn audit(
    reg: &Registry,
    a: AuditEvent,
    who: Option<&str>,
    client: Option<IpAddr>,
    resp: Answered,
) {
    let status = resp.status;
    // A mount that fell back to an upload session stored nothing yet.
    if a.event == "blob-mount" && status == StatusCode::ACCEPTED {
        return;
    }
    let digest = resp
        .digest
        .as_deref()
        .unwrap_or(if a.reference.contains(':') {
            a.reference.as_str()
        } else {
            ""
        });
    let mut bytes = resp
        .length
        .filter(|_| a.event == "blob-pull" || a.event == "pull");
    if bytes.is_none()
        && status.is_success()
        && a.event.starts_with("blob-")
        && let Ok(d) = digest.parse::<crate::oci::Digest>()
    {
        bytes = reg.store.blob_size(&d).await.ok().flatten();
    }
    tracing::info!(
        target: "audit",
        event = a.event,
        who = who.unwrap_or("anonymous"),
        client = %client.map(|c| c.to_string()).unwrap_or_default(),
        repository = %a.repo,
        reference = %a.reference,
        digest = %digest,
        bytes = bytes.unwrap_or(0),
        status = status.as_u16(),
        result = if status.is_success() { "success" } else { "failure" },
        "audit"
    );
}

async fn v2(State(reg): State<App>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let peer = peer_ip(&parts.extensions);
    let client = client_ip(
        &parts.extensions,
        &parts.headers,
        reg.auth.as_deref().map(|a| &a.proxies),
    );
    let query = Query::parse(parts.uri.query());
    let route = match Route::parse(parts.uri.path()) {
        Ok(r) => canonical(&reg, r, &parts.method, &query).await,
        Err(e) => Err(e),
    };
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
        query,
        repo_filter: None,
        user: None,
        client,
    };
    let mut audit = None;
    let mut who = None;
    let result = match route {
        Ok(route) => {
            // Audit lines say who did what: they exist where there is a "who" (auth on), or
            // for everyone as `anonymous` when policy asks.
            if reg.auth.is_some() || reg.policy.audit_anonymous {
                audit = audit_event(&req.method, &route, &req.query);
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
        let answered = Answered::of(&resp);
        self::audit(&reg, a, who.as_deref(), client, answered).await;
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
