//! The referrers API: `GET /v2/<name>/referrers/<digest>` lists the manifests whose `subject`
//! is that digest, as an OCI image index, optionally filtered by `artifactType`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Registry;
use super::errors::Result;
use super::request::Req;
use crate::oci::manifest::OCI_INDEX;
use crate::oci::{Descriptor, Digest, RepoName};
use crate::repo::Repository;

pub async fn list(reg: &Registry, repo: &RepoName, subject: &str, req: &Req) -> Result<Response> {
    let subject: Digest = subject.parse()?;
    let filter = req.query.get("artifactType").filter(|f| !f.is_empty());
    let manifests: Vec<Descriptor> = Repository::new(&*reg.store, repo)
        .referrers(&subject)
        .await?
        .into_iter()
        .filter(|d| filter.is_none_or(|f| d.artifact_type.as_deref() == Some(f)))
        .collect();
    let body = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX))],
        serde_json::to_string(&body).unwrap_or_default(),
    )
        .into_response();
    if filter.is_some() {
        resp.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
