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
use crate::store::layout::referrer_entry_digest;
use crate::store::{MetaDir, MetaKey};

pub async fn list(reg: &Registry, repo: &RepoName, subject: &str, req: &Req) -> Result<Response> {
    let subject: Digest = subject.parse()?;
    let filter = req.query.get("artifactType").filter(|f| !f.is_empty());
    let mut manifests: Vec<Descriptor> = Vec::new();
    for name in reg
        .store
        .meta_list(&MetaDir::referrers(repo, &subject))
        .await?
    {
        let Some(referrer) = referrer_entry_digest(&name) else {
            continue;
        };
        // An entry whose manifest was deleted since is skipped (and left for gc).
        if !reg
            .store
            .meta_exists(&MetaKey::manifest_link(repo, &referrer))
            .await?
        {
            continue;
        }
        let Some(raw) = reg
            .store
            .meta_get(&MetaKey::referrer(repo, &subject, &referrer))
            .await?
        else {
            continue;
        };
        let Ok(desc) = serde_json::from_slice::<Descriptor>(&raw) else {
            tracing::warn!(%repo, %subject, %referrer, "unreadable referrer entry skipped");
            continue;
        };
        if filter.is_none_or(|f| desc.artifact_type.as_deref() == Some(f)) {
            manifests.push(desc);
        }
    }
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
