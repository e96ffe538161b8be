//! Tag listing with `n`/`last` pagination, and the pagination rules `_catalog` shares.
//!
//! Tag lists are cached per repository and validated on every request against a stamp of the
//! tags directory from the store (its mtime on the filesystem), so a tag pushed through any
//! replica is listed at once; a backend with no cheap stamp is simply listed every time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Registry;
use super::errors::{RegistryError, Result};
use super::request::Req;
use crate::oci::RepoName;
use crate::repo::Repository;

/// The most entries one page returns when the client asks for more (or does not say).
pub const MAX_PAGE: usize = 10_000;
/// Repositories whose tag lists are kept in memory.
const CACHED_REPOS: usize = 1024;

/// Applies `n` and `last` to a lexically sorted list. Returns the page and, when more
/// entries follow, the `Link` header value pointing at the next page.
pub fn paginate<'a>(
    all: &'a [String],
    req: &Req,
    path: &str,
) -> Result<(&'a [String], Option<String>)> {
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
    let page = &rest[..limit.min(rest.len())];
    let more = rest.len() > page.len() && !page.is_empty();
    let link = match page.last() {
        Some(l) if more => Some(format!("<{path}?n={limit}&last={l}>; rel=\"next\"")),
        _ => None,
    };
    Ok((page, link))
}

pub fn json_page(body: &impl Serialize, link: Option<String>) -> Response {
    let json = match serde_json::to_vec(body) {
        Ok(j) => j,
        Err(e) => return RegistryError::Storage(e.to_string()).into_response(),
    };
    let mut resp = (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response();
    if let Some(l) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LINK, l);
    }
    resp
}

/// A repository's tag list and the directory stamp it was read under.
type StampedList = (u128, Arc<Vec<String>>);

/// Tag lists by repository.
#[derive(Default)]
pub struct TagListCache {
    inner: Mutex<HashMap<RepoName, StampedList>>,
}

impl TagListCache {
    fn get(&self, repo: &RepoName, stamp: u128) -> Option<Arc<Vec<String>>> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(repo)
            .filter(|(s, _)| *s == stamp)
            .map(|(_, l)| l.clone())
    }

    fn put(&self, repo: RepoName, stamp: u128, list: Arc<Vec<String>>) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CACHED_REPOS && !map.contains_key(&repo) {
            map.clear();
        }
        map.insert(repo, (stamp, list));
    }
}

#[derive(Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: &'a [String],
}

pub async fn list(reg: &Registry, repo: &RepoName, req: &Req) -> Result<Response> {
    let tags = Repository::new(&*reg.store, repo);
    let stamp = tags.tags_stamp().await?;
    let cached = stamp.and_then(|s| reg.tag_lists.get(repo, s));
    let all = match cached {
        Some(list) => list,
        None => {
            if stamp.is_none() && !reg.store.repository_exists(repo).await? {
                return Err(RegistryError::NameUnknown);
            }
            let list = Arc::new(tags.tag_names().await?);
            if let Some(s) = stamp {
                reg.tag_lists.put(repo.clone(), s, list.clone());
            }
            list
        }
    };
    let (page, link) = paginate(&all, req, &format!("/v2/{repo}/tags/list"))?;
    Ok(json_page(
        &TagList {
            name: repo.as_str(),
            tags: page,
        },
        link,
    ))
}
