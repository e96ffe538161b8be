//! One upstream registry, read side only: manifests and blobs over the Distribution API, with
//! the Docker token flow (Bearer challenges, tokens cached per scope until they expire), Basic
//! auth or none; a cap on concurrent requests; and after a 429 no request at all until its
//! `Retry-After` has passed, so a fleet pulling through the cache never hammers an upstream
//! that asked us to slow down.

mod write;

pub use write::Body;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};
use tokio::sync::Semaphore;

use crate::config::UpstreamConfig;
use crate::oci::Digest;
use crate::oci::manifest::MAX_MANIFEST_BYTES;
use crate::store::ByteStream;

/// A page of `GET /v2/<name>/tags/list`.
#[derive(serde::Deserialize)]
struct TagList {
    tags: Option<Vec<String>>,
}

/// Every manifest type a client may pull, for upstream content negotiation.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// How long we stay away after a 429 that gave no (or an unreadable) `Retry-After`.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(30);
/// The longest back-off we accept from an upstream.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How much of an error body is read for its message.
const ERROR_BODY_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {0} is offline (proxy.upstreams[].offline)")]
    Offline(String),
    #[error(
        "upstream {upstream} asked us to slow down (429); not asking it again for {retry_after} s"
    )]
    RateLimited { upstream: String, retry_after: u64 },
    #[error("upstream {upstream} answered {status}: {message}")]
    Status {
        upstream: String,
        status: u16,
        message: String,
    },
    #[error("upstream {upstream} cannot be reached: {reason}")]
    Unreachable { upstream: String, reason: String },
    #[error("upstream {upstream} sent a manifest over the {MAX_MANIFEST_BYTES} byte limit")]
    TooLarge { upstream: String },
}

#[derive(Debug, thiserror::Error)]
#[error("proxy.upstreams[{index}].{field}: {reason}")]
pub struct UpstreamConfigError {
    pub index: usize,
    pub field: &'static str,
    pub reason: String,
}

/// A manifest as the upstream has it.
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: Option<String>,
}

/// A blob body streaming from the upstream (holding one of its connection permits).
pub struct FetchedBlob {
    pub size: Option<u64>,
    pub body: ByteStream,
}

pub struct Upstream {
    /// The local name prefix, `docker.io`.
    pub prefix: String,
    pub url: String,
    pub default: bool,
    pub offline: bool,
    pub tag_ttl: Duration,
    /// Docker Hub's one-segment names are `library/<name>` upstream.
    docker_hub: bool,
    http: reqwest::Client,
    credentials: Option<(String, String)>,
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    permits: Arc<Semaphore>,
    blocked_until: Mutex<Option<Instant>>,
    metrics: super::metrics::ProxyMetrics,
}

impl Upstream {
    pub fn from_config(
        index: usize,
        cfg: &UpstreamConfig,
        metrics: super::metrics::ProxyMetrics,
    ) -> Result<Upstream, UpstreamConfigError> {
        let bad = |field, reason: String| UpstreamConfigError {
            index,
            field,
            reason,
        };
        let url = cfg.url.trim_end_matches('/').to_owned();
        let parsed =
            reqwest::Url::parse(&url).map_err(|e| bad("url", format!("{:?}: {e}", cfg.url)))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(bad("url", format!("{:?} is not an http(s) URL", cfg.url)));
        }
        let tag_ttl = match &cfg.tag_ttl {
            None => Duration::from_secs(300),
            Some(v) => {
                humantime::parse_duration(v).map_err(|e| bad("tagTtl", format!("{v:?}: {e}")))?
            }
        };
        let credentials = match (&cfg.username, &cfg.password_file) {
            (None, None) => None,
            (Some(u), Some(f)) => {
                let p = std::fs::read_to_string(f)
                    .map_err(|e| bad("passwordFile", format!("{}: {e}", f.display())))?;
                Some((u.clone(), p.trim_end_matches(['\r', '\n']).to_owned()))
            }
            (Some(_), None) => {
                return Err(bad(
                    "passwordFile",
                    "username is set but passwordFile is not".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "username",
                    "passwordFile is set but username is not".into(),
                ));
            }
        };
        let max = cfg.max_connections.unwrap_or(16);
        if max == 0 {
            return Err(bad("maxConnections", "must be at least 1".into()));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::limited(5));
        if let Some(f) = &cfg.ca_file {
            let pem =
                std::fs::read(f).map_err(|e| bad("caFile", format!("{}: {e}", f.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    bad(
                        "caFile",
                        format!("{} holds no PEM certificate", f.display()),
                    )
                })?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| bad("url", format!("cannot build an HTTP client: {e}")))?;
        let host = parsed.host_str().unwrap_or_default();
        Ok(Upstream {
            prefix: cfg.prefix.clone(),
            docker_hub: cfg.prefix == "docker.io" || host.ends_with("docker.io"),
            url,
            default: cfg.default,
            offline: cfg.offline,
            tag_ttl,
            http,
            credentials,
            tokens: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(max)),
            blocked_until: Mutex::new(None),
            metrics,
        })
    }

    /// The upstream's name for the part of a local name after the prefix.
    pub fn remote_name(&self, rest: &str) -> String {
        if self.docker_hub && !rest.contains('/') {
            format!("library/{rest}")
        } else {
            rest.to_owned()
        }
    }

    /// Whether the upstream asked us to wait, and for how many more seconds.
    fn blocked_for(&self) -> Option<u64> {
        let mut b = self.blocked_until.lock().unwrap_or_else(|p| p.into_inner());
        match *b {
            Some(until) if until > Instant::now() => {
                Some((until - Instant::now()).as_secs().max(1))
            }
            Some(_) => {
                *b = None;
                None
            }
            None => None,
        }
    }

    fn back_off(&self, resp: &reqwest::Response) -> u64 {
        let wait = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_BACKOFF)
            .min(MAX_BACKOFF);
        let mut b = self.blocked_until.lock().unwrap_or_else(|p| p.into_inner());
        *b = Some(Instant::now() + wait);
        wait.as_secs().max(1)
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Unreachable {
            upstream: self.url.clone(),
            reason: e.to_string(),
        }
    }

    /// Our credentials as an `Authorization: Basic` value.
    fn basic_auth(&self) -> Option<String> {
        use base64::Engine;
        self.credentials.as_ref().map(|(u, p)| {
            let raw = format!("{u}:{p}");
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        })
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(scope)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(t, _)| t.clone())
    }

    /// Follows a Bearer challenge: asks the realm for a token for `scope` (with our
    /// credentials, if any) and caches it until shortly before it expires.
    async fn fetch_token(
        &self,
        challenge: &Challenge,
        scope: &str,
    ) -> Result<String, UpstreamError> {
        let mut req = self.http.get(&challenge.realm);
        let mut query = vec![("scope", scope.to_owned())];
        if let Some(s) = &challenge.service {
            query.push(("service", s.clone()));
        }
        req = req.query(&query);
        if let Some((u, p)) = &self.credentials {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return Err(UpstreamError::Status {
                upstream: self.url.clone(),
                status: resp.status().as_u16(),
                message: format!(
                    "token service {} refused: {}",
                    challenge.realm,
                    resp.status()
                ),
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let t: TokenResponse = resp.json().await.map_err(|e| self.unreachable(e))?;
        let token = t
            .token
            .or(t.access_token)
            .ok_or_else(|| UpstreamError::Status {
                upstream: self.url.clone(),
                status: 200,
                message: "token service answered without a token".into(),
            })?;
        let life = Duration::from_secs(t.expires_in.unwrap_or(60).max(10) - 5);
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.len() > 4096 {
            tokens.clear();
        }
        tokens.insert(scope.to_owned(), (token.clone(), Instant::now() + life));
        Ok(token)
    }

    /// Sends a request for `name`, authenticating as the upstream's challenge asks. Holds a
    /// connection permit, returned with the response (blob bodies keep it while they stream).
    async fn send(
        &self,
        method: Method,
        name: &str,
        path: &str,
        accept: Option<&str>,
    ) -> Result<(reqwest::Response, tokio::sync::OwnedSemaphorePermit), UpstreamError> {
        let result = self.send_once(method, name, path, accept).await;
        match &result {
            Err(UpstreamError::RateLimited { .. }) => {
                self.metrics.count(&self.prefix, "rate_limited")
            }
            Err(UpstreamError::Offline(_)) => {}
            Err(_) => self.metrics.count(&self.prefix, "error"),
            Ok((r, _)) if r.status().is_server_error() => self.metrics.count(&self.prefix, "error"),
            Ok(_) => {}
        }
        result
    }

    async fn send_once(
        &self,
        method: Method,
        name: &str,
        path: &str,
        accept: Option<&str>,
    ) -> Result<(reqwest::Response, tokio::sync::OwnedSemaphorePermit), UpstreamError> {
        if self.offline {
            return Err(UpstreamError::Offline(self.url.clone()));
        }
        if let Some(retry_after) = self.blocked_for() {
            return Err(UpstreamError::RateLimited {
                upstream: self.url.clone(),
                retry_after,
            });
        }
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| self.unreachable(e))?;
        let url = format!("{}/v2/{name}/{path}", self.url);
        let scope = format!("repository:{name}:pull");
        let build = |auth: Option<String>| {
            let mut r = self.http.request(method.clone(), &url);
            if let Some(a) = accept {
                r = r.header(ACCEPT, a);
            }
            if let Some(a) = auth {
                r = r.header(AUTHORIZATION, a);
            }
            r
        };
        let first_auth = self.cached_token(&scope).map(|t| format!("Bearer {t}"));
        let mut resp = build(first_auth)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if resp.status() == StatusCode::UNAUTHORIZED
            && let Some(challenge) = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(Challenge::parse)
        {
            let auth = if challenge.bearer {
                Some(format!(
                    "Bearer {}",
                    self.fetch_token(&challenge, &scope).await?
                ))
            } else {
                self.basic_auth()
            };
            if auth.is_some() {
                resp = build(auth).send().await.map_err(|e| self.unreachable(e))?;
            }
        }
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = self.back_off(&resp);
            return Err(UpstreamError::RateLimited {
                upstream: self.url.clone(),
                retry_after,
            });
        }
        Ok((resp, permit))
    }

    /// A success, `None` for the upstream's 404, and its refusal for anything else.
    async fn found(
        &self,
        resp: reqwest::Response,
    ) -> Result<Option<reqwest::Response>, UpstreamError> {
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(resp)),
            _ => Err(self.refused(resp).await),
        }
    }

    /// The upstream's refusal, with the message of its OCI error body when it sent one.
    async fn refused(&self, mut resp: reqwest::Response) -> UpstreamError {
        let status = resp.status();
        let reason = status.canonical_reason().unwrap_or("unexpected status");
        let mut body = Vec::new();
        while body.len() < ERROR_BODY_BYTES {
            match resp.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                _ => break,
            }
        }
        let detail = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                let e = v.get("errors")?.get(0)?;
                Some(format!(
                    "{} {}",
                    e.get("code")?.as_str()?,
                    e.get("message")
                        .and_then(|m| m.as_str())
                        .unwrap_or_default()
                ))
            });
        UpstreamError::Status {
            upstream: self.url.clone(),
            status: status.as_u16(),
            message: match detail {
                Some(d) => format!("{reason}: {}", d.trim()),
                None => reason.to_owned(),
            },
        }
    }

    /// The digest a tag points at upstream (one HEAD), `None` when the upstream has no such
    /// manifest, or when it does not say (the caller then GETs).
    pub async fn manifest_digest(
        &self,
        name: &str,
        reference: &str,
    ) -> Result<Option<Digest>, UpstreamError> {
        let (resp, _permit) = self
            .send(
                Method::HEAD,
                name,
                &format!("manifests/{reference}"),
                Some(MANIFEST_ACCEPT),
            )
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            StatusCode::NOT_FOUND => Err(UpstreamError::Status {
                upstream: self.url.clone(),
                status: 404,
                message: format!("no manifest {name}:{reference}"),
            }),
            _ => Err(self.refused(resp).await),
        }
    }

    /// A manifest, `None` when the upstream has none by that reference.
    pub async fn manifest(
        &self,
        name: &str,
        reference: &str,
    ) -> Result<Option<FetchedManifest>, UpstreamError> {
        let (resp, _permit) = self
            .send(
                Method::GET,
                name,
                &format!("manifests/{reference}"),
                Some(MANIFEST_ACCEPT),
            )
            .await?;
        let Some(resp) = self.found(resp).await? else {
            return Ok(None);
        };
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let mut body = resp.bytes_stream();
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(e))?;
            if buf.len() + chunk.len() > MAX_MANIFEST_BYTES {
                return Err(UpstreamError::TooLarge {
                    upstream: self.url.clone(),
                });
            }
            buf.extend_from_slice(&chunk);
        }
        self.metrics.fetched(&self.prefix, buf.len() as u64);
        Ok(Some(FetchedManifest {
            bytes: buf.freeze(),
            media_type,
        }))
    }

    /// Every tag of `name`, following the upstream's pages (`n`/`last`); `None` when the
    /// upstream has no such repository.
    pub async fn tags(&self, name: &str) -> Result<Option<Vec<String>>, UpstreamError> {
        const PAGE: usize = 1000;
        let mut all: Vec<String> = Vec::new();
        loop {
            let path = match all.last() {
                None => format!("tags/list?n={PAGE}"),
                Some(last) => format!("tags/list?n={PAGE}&last={last}"),
            };
            let (resp, _permit) = self.send(Method::GET, name, &path, None).await?;
            let Some(resp) = self.found(resp).await? else {
                return Ok(if all.is_empty() { None } else { Some(all) });
            };
            let more = resp.headers().contains_key(reqwest::header::LINK);
            let page: TagList = resp.json().await.map_err(|e| self.unreachable(e))?;
            let got = page.tags.unwrap_or_default();
            let done = !more || got.is_empty();
            all.extend(got);
            if done {
                return Ok(Some(all));
            }
        }
    }

    /// The referrers of manifest `digest` (the descriptors of the referrers API's index);
    /// empty when the upstream has none or does not implement the API.
    pub async fn referrers(
        &self,
        name: &str,
        digest: &Digest,
    ) -> Result<Vec<crate::oci::Descriptor>, UpstreamError> {
        let (resp, _permit) = self
            .send(Method::GET, name, &format!("referrers/{digest}"), None)
            .await?;
        let Some(resp) = self.found(resp).await? else {
            return Ok(Vec::new());
        };
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        Ok(crate::oci::Manifest::parse(&bytes, None)
            .map(|index| index.manifests)
            .unwrap_or_default())
    }

    /// A blob's size (one HEAD), `None` when the upstream has no such blob.
    pub async fn blob_size(
        &self,
        name: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, UpstreamError> {
        let (resp, _permit) = self
            .send(Method::HEAD, name, &format!("blobs/{digest}"), None)
            .await?;
        Ok(self.found(resp).await?.and_then(|r| {
            r.headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        }))
    }

    /// A blob's bytes as they arrive, `None` when the upstream has no such blob.
    pub async fn blob(
        &self,
        name: &str,
        digest: &Digest,
    ) -> Result<Option<FetchedBlob>, UpstreamError> {
        let (resp, permit) = self
            .send(Method::GET, name, &format!("blobs/{digest}"), None)
            .await?;
        let Some(resp) = self.found(resp).await? else {
            return Ok(None);
        };
        let size = resp.content_length();
        let (metrics, prefix) = (self.metrics.clone(), self.prefix.clone());
        let body = resp
            .bytes_stream()
            .map(move |chunk| {
                let _held = &permit;
                if let Ok(c) = &chunk {
                    metrics.fetched(&prefix, c.len() as u64);
                }
                chunk.map_err(std::io::Error::other)
            })
            .boxed();
        Ok(Some(FetchedBlob { size, body }))
    }
}

/// A `WWW-Authenticate` challenge: `Bearer realm="...",service="..."` or `Basic realm="..."`.
struct Challenge {
    bearer: bool,
    realm: String,
    service: Option<String>,
}

impl Challenge {
    fn parse(v: &str) -> Option<Challenge> {
        let (scheme, params) = v.trim().split_once(' ').unwrap_or((v.trim(), ""));
        let bearer = scheme.eq_ignore_ascii_case("bearer");
        if !bearer && !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let mut realm = String::new();
        let mut service = None;
        for part in split_params(params) {
            let Some((k, v)) = part.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"').to_owned();
            match k.trim().to_ascii_lowercase().as_str() {
                "realm" => realm = v,
                "service" => service = Some(v),
                _ => {}
            }
        }
        if bearer && realm.is_empty() {
            return None;
        }
        Some(Challenge {
            bearer,
            realm,
            service,
        })
    }
}

/// Splits `a="x,y",b=z` at the commas outside quotes.
fn split_params(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_and_basic_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        )
        .unwrap();
        assert!(c.bearer);
        assert_eq!(c.realm, "https://auth.docker.io/token");
        assert_eq!(c.service.as_deref(), Some("registry.docker.io"));
        let b = Challenge::parse(r#"Basic realm="Registry""#).unwrap();
        assert!(!b.bearer);
        assert!(Challenge::parse("Negotiate").is_none());
        assert!(Challenge::parse("Bearer service=x").is_none(), "no realm");
    }

    #[test]
    fn docker_hub_names_get_library() {
        let cfg = UpstreamConfig {
            prefix: "docker.io".into(),
            url: "https://registry-1.docker.io".into(),
            ..UpstreamConfig::default()
        };
        let u = Upstream::from_config(0, &cfg, Default::default()).unwrap();
        assert_eq!(u.remote_name("alpine"), "library/alpine");
        assert_eq!(u.remote_name("bitnami/redis"), "bitnami/redis");
        let cfg = UpstreamConfig {
            prefix: "ghcr.io".into(),
            url: "https://ghcr.io/".into(),
            ..UpstreamConfig::default()
        };
        let g = Upstream::from_config(0, &cfg, Default::default()).unwrap();
        assert_eq!(g.remote_name("alpine"), "alpine");
        assert_eq!(g.url, "https://ghcr.io");
        let bad = UpstreamConfig {
            url: "ftp://x".into(),
            ..cfg
        };
        let e = Upstream::from_config(3, &bad, Default::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("proxy.upstreams[3].url:"), "{e}");
    }
}
