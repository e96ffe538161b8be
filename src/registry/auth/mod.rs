//! Access control: who is calling (htpasswd Basic credentials, robot secrets, Docker registry
//! tokens) and what they may do (access rules, robot scopes, token claims). The route table
//! calls [`Auth::authenticate`] and [`Auth::authorize`] before dispatching, so handlers never
//! see credentials; the only trace of auth they carry is the catalog's visibility filter.

pub mod endpoints;
pub mod htpasswd;
pub mod limiter;
pub mod robots;
pub mod rules;
pub mod token;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, Method, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::errors::RegistryError;
use super::proxies::{self, TrustedProxies};
use super::request::{Req, Route};
use crate::config::AuthConfig;
use crate::store::Store;
use htpasswd::{Htpasswd, HtpasswdError};
use limiter::Limiter;
use robots::ROBOT_PREFIX;
use rules::{Actions, RuleError, Rules, ScopeGrant};
use token::{Claims, TokenError, Tokens};

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error(transparent)]
    Htpasswd(#[from] HtpasswdError),
    #[error(transparent)]
    Rules(#[from] RuleError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Proxy(#[from] proxies::ProxyError),
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    Anonymous,
    /// A user of the htpasswd file (or the subject of a token Berth signed for one).
    User(String),
    /// A robot account, by name (without the `robot$` prefix).
    Robot(String),
    /// The subject of a token from a trusted external issuer.
    External(String),
}

impl Subject {
    /// The name the audit log and `account` checks use.
    pub fn name(&self) -> String {
        match self {
            Subject::Anonymous => rules::ANONYMOUS.to_owned(),
            Subject::User(u) | Subject::External(u) => u.clone(),
            Subject::Robot(r) => format!("{ROBOT_PREFIX}{r}"),
        }
    }
}

/// What the subject may do by itself, before any token narrows it.
#[derive(Clone, Debug)]
enum Base {
    /// The access rules, for this user (`None`: anonymous).
    Rules(Option<String>),
    /// A robot's scopes (plus whatever the rules grant to anonymous), and the id of its
    /// record (which the robot's tokens carry).
    Robot(Arc<Vec<ScopeGrant>>, Option<String>),
    /// An external subject: only its token speaks for it.
    External,
}

#[derive(Clone, Debug)]
pub struct Identity {
    pub subject: Subject,
    base: Base,
    /// When the request carried a token, its claims bound what the request may do.
    token: Option<(Arc<Claims>, bool)>,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity {
            subject: Subject::Anonymous,
            base: Base::Rules(None),
            token: None,
        }
    }
}

pub struct Auth {
    htpasswd: Option<Arc<Htpasswd>>,
    rules: Rules,
    admins: Vec<String>,
    pub tokens: Option<Tokens>,
    realm: Option<String>,
    store: Arc<dyn Store>,
    limiter: Limiter,
    https: bool,
    pub proxies: TrustedProxies,
    /// `host:port` the server listens on: the realm's host when nothing better is known.
    listen: std::sync::OnceLock<String>,
}

impl Auth {
    /// Builds the policy from the config; `None` when no authentication is configured (the
    /// registry is then open).
    pub fn from_config(
        cfg: &AuthConfig,
        generated_key: &Path,
        store: Arc<dyn Store>,
        https: bool,
    ) -> Result<Option<Auth>, AuthSetupError> {
        let trusted = cfg
            .token
            .as_ref()
            .map(|t| !t.trusted_issuers.is_empty())
            .unwrap_or(false);
        if cfg.htpasswd.is_none() && !trusted {
            // Rules are still validated, so a typo fails now rather than when auth is enabled.
            Rules::compile(&cfg.access, &cfg.groups)?;
            return Ok(None);
        }
        let ttl = Duration::from_secs(cfg.cache_seconds.unwrap_or(30));
        let htpasswd = cfg
            .htpasswd
            .as_deref()
            .map(|p| Htpasswd::load(p, ttl).map(Arc::new))
            .transpose()?;
        let rules = Rules::compile(&cfg.access, &cfg.groups)?;
        let proxies = TrustedProxies::parse(&cfg.trusted_proxies)?;
        let tokens = match &cfg.token {
            Some(t) => {
                let service = t.service.clone().unwrap_or_else(|| "berth".to_owned());
                let trusted: Vec<_> = t
                    .trusted_issuers
                    .iter()
                    .map(|i| (i.issuer.clone(), i.public_key.clone()))
                    .collect();
                Some(Tokens::new(
                    service,
                    t.issuer.clone().unwrap_or_else(|| "berth".to_owned()),
                    t.expires_seconds.unwrap_or(300).max(1),
                    t.key.as_deref(),
                    generated_key,
                    &trusted,
                )?)
            }
            None => None,
        };
        Ok(Some(Auth {
            htpasswd,
            rules,
            admins: cfg.admins.clone(),
            realm: cfg.token.as_ref().and_then(|t| t.realm.clone()),
            tokens,
            store,
            limiter: Limiter::new(
                cfg.max_failed_logins.unwrap_or(10),
                Duration::from_secs(cfg.failed_login_window_seconds.unwrap_or(60)),
            ),
            https,
            proxies,
            listen: std::sync::OnceLock::new(),
        }))
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(h) = &self.htpasswd {
            parts.push(format!("htpasswd ({} users)", h.len()));
        }
        if let Some(t) = &self.tokens {
            parts.push(format!("tokens (service {})", t.service));
        }
        parts.join(", ")
    }

    /// Identifies the caller from the `Authorization` header. No header is anonymous; a
    /// header that does not check out is 401 (and counts against the client's failed logins).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
    ) -> Result<Identity, RegistryError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(Identity::anonymous());
        };
        let who = basic_user(value.as_bytes()).unwrap_or_default();
        // The slot is taken before the (slow) check, so parallel guesses cannot overrun it.
        let attempt = match client {
            Some(ip) => Some(
                self.limiter
                    .reserve(ip, &who)
                    .map_err(|retry_after| RegistryError::TooManyRequests { retry_after })?,
            ),
            None => None,
        };
        match self.credentials(value.as_bytes()).await {
            Ok(id) => Ok(id),
            Err(reason) => {
                if let Some(a) = attempt {
                    a.failed();
                }
                tracing::warn!(
                    target: "audit",
                    event = "login",
                    result = "failure",
                    who = %who,
                    client = %client.map(|c| c.to_string()).unwrap_or_default(),
                    reason = %reason,
                    "failed login"
                );
                Err(RegistryError::Unauthorized {
                    message: reason,
                    challenge: None,
                })
            }
        }
    }

    async fn credentials(&self, value: &[u8]) -> Result<Identity, String> {
        let text = std::str::from_utf8(value).map_err(|_| "malformed Authorization header")?;
        let (scheme, rest) = text
            .split_once(' ')
            .ok_or("malformed Authorization header")?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = STANDARD
                .decode(rest)
                .map_err(|_| "malformed Basic credentials")?;
            let decoded = String::from_utf8(decoded).map_err(|_| "malformed Basic credentials")?;
            let (user, password) = decoded
                .split_once(':')
                .ok_or("malformed Basic credentials")?;
            self.basic(user, password).await
        } else if scheme.eq_ignore_ascii_case("bearer") {
            self.bearer(rest).await
        } else {
            Err("unsupported authorization scheme".into())
        }
    }

    /// Checks a user name and password (or robot secret).
    pub async fn basic(&self, user: &str, password: &str) -> Result<Identity, String> {
        const BAD: &str = "invalid user name or password";
        if let Some(name) = user.strip_prefix(ROBOT_PREFIX) {
            let robot = robots::current(self.store.as_ref(), name, Some(password))
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot read robot record");
                    BAD.to_owned()
                })?
                .ok_or(BAD)?;
            return Ok(Identity {
                subject: Subject::Robot(robot.name),
                base: Base::Robot(Arc::new(robot.grants), robot.id),
                token: None,
            });
        }
        let Some(h) = &self.htpasswd else {
            return Err(BAD.into());
        };
        if !h.verify(user, password).await {
            return Err(BAD.into());
        }
        Ok(Identity {
            subject: Subject::User(user.to_owned()),
            base: Base::Rules(Some(user.to_owned())),
            token: None,
        })
    }

    async fn bearer(&self, token: &str) -> Result<Identity, String> {
        let tokens = self
            .tokens
            .as_ref()
            .ok_or("bearer tokens are not accepted here")?;
        let v = tokens.verify(token).map_err(|e| e.to_string())?;
        let (subject, base) = if !v.ours {
            (Subject::External(v.claims.sub.clone()), Base::External)
        } else if v.claims.sub.is_empty() {
            (Subject::Anonymous, Base::Rules(None))
        } else if let Some(name) = v.claims.sub.strip_prefix(ROBOT_PREFIX) {
            // A robot's tokens die with the robot: check its record on every request.
            let robot = robots::current(self.store.as_ref(), name, None)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the robot account of this token is revoked or expired")?;
            // The same name may have been revoked and created again: the token speaks only
            // for the record it was issued for.
            if v.claims.robot != robot.id {
                return Err("the robot account of this token was revoked and re-created".into());
            }
            (
                Subject::Robot(robot.name),
                Base::Robot(Arc::new(robot.grants), robot.id),
            )
        } else {
            (
                Subject::User(v.claims.sub.clone()),
                Base::Rules(Some(v.claims.sub.clone())),
            )
        };
        Ok(Identity {
            subject,
            base,
            token: Some((v.claims, v.ours)),
        })
    }

    /// What the subject may do on `repo` by itself (rules, robot scopes).
    pub fn base_allowed(&self, id: &Identity, repo: &str) -> Actions {
        match &id.base {
            Base::Rules(user) => self.rules.allowed(user.as_deref(), repo),
            Base::Robot(grants, _) => grants
                .iter()
                .filter(|g| g.pattern.matches(repo))
                .fold(self.rules.allowed(None, repo), |a, g| a.union(g.actions)),
            Base::External => Actions::NONE,
        }
    }

    /// What this request may do on `repo`: the token's grants when it carried one.
    pub fn allowed(&self, id: &Identity, repo: &str) -> Actions {
        match &id.token {
            Some((claims, _)) => claims.repository_actions(repo),
            None => self.base_allowed(id, repo),
        }
    }

    /// Whether `repo` is listed in this caller's catalog.
    pub fn catalog_visible(&self, id: &Identity, repo: &str) -> bool {
        match (&id.token, &id.base) {
            (Some((claims, _)), Base::External) => {
                claims.repository_actions(repo).contains(Actions::PULL)
            }
            _ => self.base_allowed(id, repo).contains(Actions::PULL),
        }
    }

    /// Whether the subject is one of the configured admins (robots and external subjects
    /// never are), whatever the request carried.
    pub fn is_admin(&self, id: &Identity) -> bool {
        matches!(&id.subject, Subject::User(u) if self.admins.contains(u))
    }

    /// Whether this request may use the admin endpoints: an admin who sent the password
    /// (Basic), or a token Berth issued to an admin for `registry:admin:*`. A token asked
    /// for pulling one repository does not carry its holder's admin rights.
    pub fn may_administer(&self, id: &Identity) -> bool {
        self.is_admin(id)
            && match &id.token {
                None => true,
                Some((claims, ours)) => *ours && claims.grants_admin(),
            }
    }

    /// The id of the robot record behind this identity (for the tokens issued to it).
    pub fn robot_id(id: &Identity) -> Option<&str> {
        match &id.base {
            Base::Robot(_, rid) => rid.as_deref(),
            _ => None,
        }
    }

    /// Checks a /v2/ request against the caller's rights. A cross-repository mount from a
    /// repository the caller may not pull is turned into a plain upload, as the spec allows.
    pub fn authorize(
        &self,
        id: &Identity,
        route: &Route,
        req: &mut Req,
        host: Option<&str>,
    ) -> Result<(), RegistryError> {
        let (repo, need) = match route {
            Route::Base => {
                if id.subject == Subject::Anonymous && id.token.is_none() {
                    return Err(self.deny(id, None, host));
                }
                return Ok(());
            }
            Route::Catalog => {
                if let Some((claims, _)) = &id.token
                    && !claims.grants_catalog()
                {
                    return Err(self.deny(id, Some("registry:catalog:*".into()), host));
                }
                return Ok(());
            }
            Route::Tags(r) | Route::Referrers(r, _) => (r, Actions::PULL),
            Route::Manifest(r, _) | Route::Blob(r, _) => (r, required(&req.method)),
            Route::UploadStart(r) | Route::Upload(r, _) => (r, Actions::PUSH),
        };
        if !self.allowed(id, repo.as_str()).contains(need) {
            let actions = if need == Actions::PUSH {
                "pull,push".to_owned()
            } else {
                need.to_string()
            };
            return Err(self.deny(id, Some(format!("repository:{repo}:{actions}")), host));
        }
        if let Route::UploadStart(_) = route
            && let Some(from) = req.query.get("from")
            && req.query.get("mount").is_some()
            && !self.allowed(id, from).contains(Actions::PULL)
        {
            // A token of ours that was asked without pull on `from`, held by someone the
            // rules let pull it: ask for the wider token (both scopes, as Distribution
            // does), so the client fetches it and the mount happens. Anyone else really
            // lacks pull there and gets a plain upload session, as the spec allows.
            let wider = format!("repository:{from}:pull");
            if matches!(&id.token, Some((_, true))) && self.scope_would_be_granted(id, &wider) {
                let scope = format!("repository:{repo}:pull,push {wider}");
                return Err(RegistryError::Unauthorized {
                    message: format!(
                        "the token does not grant pull on {from}, which the mount reads"
                    ),
                    challenge: Some(self.challenge(Some(&scope), host, true)),
                });
            }
            req.query.remove("mount");
            req.query.remove("from");
        }
        Ok(())
    }

    /// 401 with a challenge when better credentials (or a wider token) could help, 403 when
    /// the caller is known and simply not allowed.
    fn deny(&self, id: &Identity, scope: Option<String>, host: Option<&str>) -> RegistryError {
        let could_help = match (&id.subject, &id.token) {
            (Subject::Anonymous, _) => true,
            (_, Some((_, false))) => true,
            (_, Some((_, true))) => match &scope {
                Some(s) => self.scope_would_be_granted(id, s),
                None => false,
            },
            (_, None) => false,
        };
        if !could_help {
            return RegistryError::Denied(match scope {
                Some(s) => format!("{} may not {s}", id.subject.name()),
                None => "access denied".into(),
            });
        }
        let insufficient = id.token.is_some();
        RegistryError::Unauthorized {
            message: "authentication required".into(),
            challenge: Some(self.challenge(scope.as_deref(), host, insufficient)),
        }
    }

    fn scope_would_be_granted(&self, id: &Identity, scope: &str) -> bool {
        match rules::RequestedScope::parse(scope) {
            Ok(rules::RequestedScope::Repository(repo, acts)) => {
                let acts = if acts.contains(Actions::PUSH) {
                    Actions::PUSH
                } else {
                    acts
                };
                self.base_allowed(id, repo.as_str()).contains(acts)
            }
            Ok(rules::RequestedScope::Catalog) => true,
            Ok(rules::RequestedScope::Admin) => self.is_admin(id),
            Err(_) => false,
        }
    }

    /// Records the address the server listens on (the default realm's host).
    pub fn set_listen_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.listen.set(addr.to_string());
    }

    /// The token realm: `auth.token.realm`; else `/token` on the origin a trusted proxy
    /// named (`origin`); else on the listen address. Never the request's own `Host`, which
    /// any client writes as it likes.
    pub fn realm(&self, origin: Option<&str>) -> String {
        if let Some(r) = &self.realm {
            return r.clone();
        }
        if let Some(o) = origin {
            return format!("{o}/token");
        }
        let scheme = if self.https { "https" } else { "http" };
        let host = self.listen.get().map(String::as_str).unwrap_or("localhost");
        format!("{scheme}://{host}/token")
    }

    /// The `WWW-Authenticate` value for a 401; `origin` as for [`Auth::realm`].
    pub fn challenge(
        &self,
        scope: Option<&str>,
        origin: Option<&str>,
        insufficient: bool,
    ) -> String {
        let Some(t) = &self.tokens else {
            return "Basic realm=\"berth\"".to_owned();
        };
        let realm = self.realm(origin);
        let mut c = format!("Bearer realm=\"{realm}\",service=\"{}\"", t.service);
        if let Some(s) = scope {
            c.push_str(&format!(",scope=\"{s}\""));
        }
        if insufficient {
            c.push_str(",error=\"insufficient_scope\"");
        }
        c
    }

    /// A 401 for the endpoints outside /v2/ (token, admin): they take Basic credentials.
    pub fn unauthorized(&self, message: &str) -> RegistryError {
        RegistryError::Unauthorized {
            message: message.to_owned(),
            challenge: Some("Basic realm=\"berth\"".to_owned()),
        }
    }
}

fn required(method: &Method) -> Actions {
    match *method {
        Method::GET | Method::HEAD => Actions::PULL,
        Method::DELETE => Actions::DELETE,
        _ => Actions::PUSH,
    }
}

/// The user name of Basic credentials, for the audit log of a failed login.
fn basic_user(value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(rest.trim()).ok()?).ok()?;
    let user = decoded.split_once(':')?.0;
    Some(user.chars().filter(|c| !c.is_control()).take(128).collect())
}
