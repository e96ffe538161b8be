//! Tag listing with `n`/`last` pagination, and the pagination rules `_catalog` shares.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Registry;
use super::errors::{RegistryError, Result};
use super::server::Req;
use crate::oci::RepoName;
use crate::store::MetaDir;

/// The most entries one page returns when the client asks for more (or does not say).
pub const MAX_PAGE: usize = 10_000;

/// Applies `n` and `last` to a lexically sorted list. Returns the page and, when more
/// entries follow, the `Link` header value pointing at the next page.
pub fn paginate(all: Vec<String>, req: &Req, path: &str) -> Result<(Vec<String>, Option<String>)> {
    let n = match req.query.get("n") {
        None | Some("") => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            RegistryError::PaginationInvalid(format!("n must be a non-negative integer, not {v:?}"))
        })?),
    };
    let last = req.query.get("last").filter(|l| !l.is_empty());
    let start = match last {
        Some(l) => all.partition_point(|x| x.as_str() <= l),
        None => 0,
    };
    let limit = n.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    let rest = &all[start.min(all.len())..];
    let page: Vec<String> = rest.iter().take(limit).cloned().collect();
    let more = rest.len() > page.len() && !page.is_empty();
    let link = match page.last() {
        Some(l) if more => Some(format!("<{path}?n={limit}&last={l}>; rel=\"next\"")),
        _ => None,
    };
    Ok((page, link))
}

pub fn json_page(body: serde_json::Value, link: Option<String>) -> Response {
    let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
    if let Some(l) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LINK, l);
    }
    resp
}

pub async fn list(reg: &Registry, repo: &RepoName, req: &Req) -> Result<Response> {
    if !reg.store.repository_exists(repo).await? {
        return Err(RegistryError::NameUnknown);
    }
    let all = reg.store.meta_list(&MetaDir::tags(repo)).await?;
    let (page, link) = paginate(all, req, &format!("/v2/{repo}/tags/list"))?;
    Ok(json_page(
        json!({"name": repo.as_str(), "tags": page}),
        link,
    ))
}
