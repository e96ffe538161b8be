//! `GET /v2/_catalog`: every repository, paginated like tag lists.

use axum::response::Response;
use serde::Serialize;

use super::Registry;
use super::errors::Result;
use super::request::Req;
use super::tags::{json_page, paginate};

#[derive(Serialize)]
struct Catalog<'a> {
    repositories: &'a [String],
}

pub async fn list(reg: &Registry, req: &Req) -> Result<Response> {
    let all: Vec<String> = reg
        .store
        .repositories()
        .await?
        .into_iter()
        .map(|r| r.as_str().to_owned())
        .filter(|r| req.repo_filter.as_ref().is_none_or(|visible| visible(r)))
        .collect();
    let (page, link) = paginate(&all, req, "/v2/_catalog")?;
    Ok(json_page(&Catalog { repositories: page }, link))
}
