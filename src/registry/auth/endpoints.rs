//! The HTTP endpoints of auth itself: `GET /token` (the Docker registry token protocol) and
//! `/admin/robots` (robot accounts, for admins). Both take Basic credentials (the admin
//! endpoints also a token Berth issued to an admin for `registry:admin:*`, never a token
//! asked for anything else) and answer 404 when the registry has no auth configured.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::rules::{Actions, RequestedScope};
use super::token::{Access, rfc3339};
use super::{Auth, Identity, Subject, robots};
use crate::registry::Registry;
use crate::registry::errors::{RegistryError, Result};
use crate::registry::request::{Query, client_ip};

fn auth_of(reg: &Registry) -> Result<&Arc<Auth>> {
    reg.auth
        .as_ref()
        .ok_or_else(|| RegistryError::NotFound("authentication is not configured".into()))
}

/// Authenticates a request to the token or admin endpoint: Basic credentials or anonymous.
async fn caller(auth: &Auth, request: &Parts) -> Result<Identity> {
    let client = client_ip(&request.extensions, &request.headers, Some(&auth.proxies));
    match auth.authenticate(&request.headers, client).await {
        Err(RegistryError::Unauthorized { message, .. }) => Err(auth.unauthorized(&message)),
        other => other,
    }
}

/// Adds `actions` on repository `name` to a token's access list.
fn grant(access: &mut Vec<Access>, name: &str, actions: Actions) {
    match access
        .iter_mut()
        .find(|a| a.kind == "repository" && a.name == name)
    {
        Some(a) => {
            let merged = Actions::parse_list(&a.actions.join(","))
                .unwrap_or(Actions::NONE)
                .union(actions);
            a.actions = merged.names().iter().map(|s| s.to_string()).collect();
        }
        None => access.push(Access {
            kind: "repository".into(),
            name: name.to_owned(),
            actions: actions.names().iter().map(|s| s.to_string()).collect(),
        }),
    }
}

/// `GET /token?service=...&scope=...&account=...`
pub async fn token(State(reg): State<Arc<Registry>>, request: Request) -> Response {
    token_inner(&reg, request)
        .await
        .unwrap_or_else(|e| e.into_response())
}

async fn token_inner(reg: &Registry, request: Request) -> Result<Response> {
    let (request, _) = request.into_parts();
    let auth = auth_of(reg)?;
    let tokens = auth
        .tokens
        .as_ref()
        .ok_or_else(|| RegistryError::NotFound("token auth is not configured".into()))?;
    let id = caller(auth, &request).await?;
    if id.token.is_some() {
        return Err(auth.unauthorized("the token endpoint takes Basic credentials"));
    }
    let query = Query::parse(request.uri.query());
    if let Some(service) = query.get("service")
        && service != tokens.service
    {
        return Err(auth.unauthorized(&format!("unknown service {service:?}")));
    }
    if let Some(account) = query.get("account")
        && id.subject != Subject::Anonymous
        && account != id.subject.name()
    {
        return Err(auth.unauthorized("account does not match the credentials"));
    }
    let mut access: Vec<Access> = Vec::new();
    for scope in query.get_all("scope").flat_map(str::split_whitespace) {
        let requested =
            RequestedScope::parse(scope).map_err(|e| auth.unauthorized(&e.to_string()))?;
        match requested {
            RequestedScope::Repository(repo, asked) => {
                // Never more than asked, never more than allowed.
                grant(
                    &mut access,
                    repo.as_str(),
                    asked.intersect(auth.base_allowed(&id, repo.as_str())),
                );
                // A read of a proxied name is checked on its canonical name (a Docker daemon
                // using Berth as `registry-mirrors` asks for `library/alpine`): grant that
                // name too, under its own rules.
                if let Some(read) = reg.read_name(&repo, query.get("ns")).await?
                    && read != repo
                {
                    let allowed = auth.base_allowed(&id, read.as_str());
                    grant(
                        &mut access,
                        read.as_str(),
                        asked.intersect(allowed).intersect(Actions::PULL),
                    );
                }
            }
            RequestedScope::Admin => {
                // Only to an admin who sent the password; anyone else gets a token without it.
                if auth.is_admin(&id) && !access.iter().any(|a| a.name == "admin") {
                    access.push(Access {
                        kind: "registry".into(),
                        name: "admin".into(),
                        actions: vec!["*".into()],
                    });
                }
            }
            RequestedScope::Catalog => {
                if !access
                    .iter()
                    .any(|a| a.kind == "registry" && a.name == "catalog")
                {
                    access.push(Access {
                        kind: "registry".into(),
                        name: "catalog".into(),
                        actions: vec!["*".into()],
                    });
                }
            }
        }
    }
    let sub = match &id.subject {
        Subject::Anonymous => String::new(),
        s => s.name(),
    };
    let (token, issued) = tokens
        .issue(&sub, access, Auth::robot_id(&id))
        .map_err(|e| RegistryError::Storage(e.to_string()))?;
    Ok(Json(json!({
        "token": token,
        "access_token": token,
        "expires_in": tokens.expires_in,
        "issued_at": rfc3339(issued),
    }))
    .into_response())
}

async fn admin(reg: &Registry, request: &Parts) -> Result<()> {
    let auth = auth_of(reg)?;
    let id = caller(auth, request).await?;
    if id.subject == Subject::Anonymous {
        return Err(auth.unauthorized("authentication required"));
    }
    if !auth.is_admin(&id) {
        return Err(RegistryError::Denied(format!(
            "{} is not an administrator",
            id.subject.name()
        )));
    }
    if !auth.may_administer(&id) {
        return Err(RegistryError::Denied(
            "administration needs the admin's password (Basic) or a token issued for scope registry:admin:*".into(),
        ));
    }
    Ok(())
}

fn robot_error(e: robots::RobotError) -> RegistryError {
    use robots::RobotError::*;
    match e {
        Name(_) | Scope(_) | NoScope | Duration(_) => RegistryError::InvalidRequest(e.to_string()),
        Exists(_) => RegistryError::Conflict(e.to_string()),
        Unknown(_) => RegistryError::NotFound(e.to_string()),
        Corrupt(..) | Store(_) => RegistryError::Storage(e.to_string()),
    }
}

/// `GET /admin/robots`
pub async fn list_robots(State(reg): State<Arc<Registry>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    async {
        admin(&reg, &parts).await?;
        let list = robots::list(reg.store.as_ref())
            .await
            .map_err(robot_error)?;
        Ok::<_, RegistryError>(Json(json!({ "robots": list })).into_response())
    }
    .await
    .unwrap_or_else(|e| e.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRobot {
    name: String,
    scopes: Vec<String>,
    /// `30d`, `12h`, ...; none for no expiry.
    #[serde(default)]
    expires: Option<String>,
}

/// `POST /admin/robots` with `{"name": "ci", "scopes": ["repository:team-a/*:pull,push"],
/// "expires": "30d"}`: answers the secret, once.
pub async fn create_robot(State(reg): State<Arc<Registry>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    async {
        admin(&reg, &parts).await?;
        let body = axum::body::to_bytes(body, 64 * 1024)
            .await
            .map_err(|e| RegistryError::InvalidRequest(e.to_string()))?;
        let req: CreateRobot = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::InvalidRequest(format!("invalid request body: {e}")))?;
        let expires = req
            .expires
            .as_deref()
            .map(robots::parse_duration)
            .transpose()
            .map_err(robot_error)?;
        let (record, secret) = robots::create(reg.store.as_ref(), &req.name, &req.scopes, expires)
            .await
            .map_err(robot_error)?;
        tracing::info!(target: "audit", event = "robot-create", robot = %record.name, "robot created");
        Ok::<_, RegistryError>(
            (
                StatusCode::CREATED,
                Json(json!({
                    "name": record.name,
                    "username": format!("{}{}", robots::ROBOT_PREFIX, record.name),
                    "secret": secret,
                    "scopes": record.scopes,
                    "expires": record.expires,
                })),
            )
                .into_response(),
        )
    }
    .await
    .unwrap_or_else(|e| e.into_response())
}

/// `DELETE /admin/robots/{name}`
pub async fn revoke_robot(
    State(reg): State<Arc<Registry>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    async {
        admin(&reg, &parts).await?;
        robots::revoke(reg.store.as_ref(), &name)
            .await
            .map_err(robot_error)?;
        tracing::info!(target: "audit", event = "robot-revoke", robot = %name, "robot revoked");
        Ok::<_, RegistryError>(StatusCode::NO_CONTENT.into_response())
    }
    .await
    .unwrap_or_else(|e| e.into_response())
}
