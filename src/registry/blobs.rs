//! Blob GET/HEAD (with single `Range` requests) and DELETE. A repository serves a blob only
//! when it holds a link to it (a layer it pushed or mounted, or one of its manifests).

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Registry;
use super::errors::{RegistryError, Result};
use super::request::{Req, header_value};
use crate::oci::{Digest, RepoName};
use crate::repo::Repository;

/// What a `Range` header asks of a blob of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// No usable range: answer 200 with the whole blob.
    Whole,
    /// Bytes `start..=end`: answer 206.
    Part(u64, u64),
    /// Nothing can be served: answer 416.
    Unsatisfiable,
}

/// Parses a single-range `bytes=` header as RFC 9110 describes. Headers it cannot use
/// (another unit, several ranges, bad syntax) are ignored, which the RFC allows.
pub fn parse_range(h: &str, size: u64) -> RangeAsk {
    let h = h.trim();
    let Some(spec) = h
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case("bytes="))
        .map(|_| &h[6..])
    else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim(), b.trim()) {
        ("", suffix) => match num(suffix) {
            None => RangeAsk::Whole,
            Some(0) => RangeAsk::Unsatisfiable,
            Some(_) if size == 0 => RangeAsk::Unsatisfiable,
            Some(n) => RangeAsk::Part(size.saturating_sub(n), size - 1),
        },
        (start, "") => match num(start) {
            None => RangeAsk::Whole,
            Some(s) if s >= size => RangeAsk::Unsatisfiable,
            Some(s) => RangeAsk::Part(s, size - 1),
        },
        (start, end) => match (num(start), num(end)) {
            (Some(s), Some(e)) if s <= e => {
                if s >= size {
                    RangeAsk::Unsatisfiable
                } else {
                    RangeAsk::Part(s, e.min(size - 1))
                }
            }
            // An inverted range can never be satisfied (the conformance suite wants 416).
            (Some(_), Some(_)) => RangeAsk::Unsatisfiable,
            _ => RangeAsk::Whole,
        },
    }
}

pub async fn get(reg: &Registry, repo: &RepoName, digest: &str, req: &Req) -> Result<Response> {
    let digest: Digest = digest.parse()?;
    if !Repository::new(&*reg.store, repo)
        .serves_blob(&digest)
        .await?
    {
        let (Some(proxy), Some(target)) = (&reg.proxy, reg.proxied(repo)) else {
            return Err(RegistryError::BlobUnknown);
        };
        if let Some(resp) = from_upstream(reg, proxy, &target, &digest, req).await? {
            return Ok(resp);
        }
        // Stored by now: served below as local content.
    } else if let (Some(proxy), Some(target)) = (&reg.proxy, reg.proxied(repo)) {
        proxy.metrics.count(&target.upstream.prefix, "hit");
    }
    if req.method == Method::GET
        && let Some(url) = reg.store.blob_url(&digest).await?
    {
        // The backend serves the bytes itself (a presigned object-store URL).
        let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
        let h = resp.headers_mut();
        h.insert(header::LOCATION, header_value(&url)?);
        h.insert(
            header::HeaderName::from_static("docker-content-digest"),
            header_value(&digest.to_string())?,
        );
        return Ok(resp);
    }
    // A HEAD needs the size only; a GET opens the blob (on an object store, its first request).
    let (size, handle) = if req.method == Method::HEAD {
        let size = match reg.store.blob_size(&digest).await? {
            Some(s) => s,
            // A collection may have staged it an instant ago: a touch brings it back.
            None => reg
                .store
                .blob_touch(&digest)
                .await?
                .ok_or(RegistryError::BlobUnknown)?,
        };
        (size, None)
    } else {
        let handle = match reg.store.blob_open(&digest).await? {
            Some(h) => h,
            None => {
                reg.store
                    .blob_touch(&digest)
                    .await?
                    .ok_or(RegistryError::BlobUnknown)?;
                reg.store
                    .blob_open(&digest)
                    .await?
                    .ok_or(RegistryError::BlobUnknown)?
            }
        };
        (handle.size, Some(handle))
    };
    let digest_hdr = header_value(&digest.to_string())?;
    let etag = header_value(&format!("\"{digest}\""))?;
    let common = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        ),
        (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
        (
            header::HeaderName::from_static("docker-content-digest"),
            digest_hdr,
        ),
        (header::ETAG, etag),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=31536000"),
        ),
    ];
    let ask = match req.header(header::RANGE) {
        Some(r) if req.method == Method::GET => parse_range(r, size),
        _ => RangeAsk::Whole,
    };
    let (status, start, end) = match ask {
        RangeAsk::Whole => (StatusCode::OK, 0, size.saturating_sub(1)),
        RangeAsk::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e),
        RangeAsk::Unsatisfiable => {
            let mut resp = RegistryError::RangeNotSatisfiable {
                message: format!("range not satisfiable for a blob of {size} bytes"),
                current: None,
            }
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    let len = if size == 0 { 0 } else { end - start + 1 };
    let mut resp = match handle {
        Some(handle) if len > 0 => {
            (status, common, Body::from_stream(handle.stream(start, end))).into_response()
        }
        _ => (status, common, Body::empty()).into_response(),
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}"))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

/// A blob a proxied repository does not hold yet. A HEAD asks the upstream for the size; a
/// GET fills the cache, or joins a fill under way, and streams what arrives; a ranged GET (or
/// a joiner on a store that cannot read a fill in progress) waits for the whole fill and gets
/// `None`: serve the stored copy.
async fn from_upstream(
    reg: &Registry,
    proxy: &std::sync::Arc<crate::proxy::Proxy>,
    target: &crate::proxy::Target,
    digest: &Digest,
    req: &Req,
) -> Result<Option<Response>> {
    let unknown = |e| RegistryError::from_proxy(e, "BLOB_UNKNOWN");
    let headers = |size: Option<u64>| -> Result<Vec<(header::HeaderName, HeaderValue)>> {
        let mut h = vec![
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::HeaderName::from_static("docker-content-digest"),
                header_value(&digest.to_string())?,
            ),
        ];
        if let Some(n) = size {
            h.push((header::CONTENT_LENGTH, HeaderValue::from(n)));
        }
        Ok(h)
    };
    if req.method == Method::HEAD {
        let size = target
            .upstream
            .blob_size(&target.remote, digest)
            .await
            .map_err(|e| unknown(e.into()))?
            .ok_or_else(|| {
                unknown(crate::proxy::ProxyError::NotFound(format!(
                    "upstream {} has no blob {digest} in {}",
                    target.upstream.url, target.remote
                )))
            })?;
        proxy.metrics.count(&target.upstream.prefix, "miss");
        let mut resp = StatusCode::OK.into_response();
        resp.headers_mut().extend(headers(Some(size))?);
        return Ok(Some(resp));
    }
    use crate::proxy::fill::{self, BlobFill};
    let stream = req.header(header::RANGE).is_none();
    match fill::blob(proxy, reg.store.clone(), target, digest, stream)
        .await
        .map_err(unknown)?
    {
        BlobFill::Stored => Ok(None),
        BlobFill::Streaming { size, body } => {
            let mut resp = (StatusCode::OK, Body::from_stream(body)).into_response();
            resp.headers_mut().extend(headers(size)?);
            Ok(Some(resp))
        }
    }
}

pub async fn delete(reg: &Registry, repo: &RepoName, digest: &str) -> Result<Response> {
    let digest: Digest = digest.parse()?;
    if !Repository::new(&*reg.store, repo)
        .unlink_blob(&digest)
        .await?
    {
        return Err(RegistryError::BlobUnknown);
    }
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc9110() {
        use RangeAsk::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 9));
        assert_eq!(parse_range("bytes=90-200", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=10-", 100), Part(10, 99));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-500", 100), Part(0, 99));
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=500-0", 2048), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(parse_range("items=0-1", 100), Whole);
        assert_eq!(parse_range("bytes=a-b", 100), Whole);
        assert_eq!(parse_range("bytes=--1", 100), Whole);
        assert_eq!(parse_range("bytes=99999999999999999999-", 100), Whole);
    }
}
