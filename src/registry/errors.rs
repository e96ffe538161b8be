//! The distribution spec's error codes and their HTTP statuses, in one enum. Handlers return
//! `RegistryError`; this file alone decides what a client sees. Client mistakes are 4xx with a
//! code from the spec; only a failing store is a 5xx.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::oci::ManifestError;
use crate::oci::digest::DigestError;
use crate::oci::name::{NameError, ReferenceError, TagError};
use crate::proxy::{ProxyError, UpstreamError};
use crate::repo::RepoError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("blob unknown to registry")]
    BlobUnknown,
    #[error("{0}")]
    BlobUploadInvalid(String),
    #[error("blob upload unknown to registry")]
    BlobUploadUnknown,
    #[error("{0}")]
    DigestInvalid(String),
    #[error("manifest references a blob unknown to the repository: {0}")]
    ManifestBlobUnknown(String),
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("manifest unknown to registry")]
    ManifestUnknown,
    #[error("{0}")]
    ManifestNotAcceptable(String),
    #[error("{0}")]
    NameInvalid(String),
    #[error("repository name not known to registry")]
    NameUnknown,
    #[error("{0}")]
    SizeInvalid(String),
    #[error("{0}")]
    TagInvalid(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{message}")]
    RangeNotSatisfiable {
        message: String,
        current: Option<u64>,
    },
    #[error("{0}")]
    PaginationInvalid(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("the operation is not allowed on this route")]
    MethodNotAllowed,
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Unauthorized {
        message: String,
        /// The `WWW-Authenticate` value telling the client how to authenticate.
        challenge: Option<String>,
    },
    #[error("{0}")]
    Denied(String),
    #[error("too many failed logins from this address; retry after {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("storage error: {0}")]
    Storage(String),
    /// The storage is full (the disk, or the volume's quota): 507 with DENIED, saying so,
    /// rather than a bare 500; the write left nothing half-made behind.
    #[error("{0}")]
    StorageFull(String),
    /// The storage backend is down or refusing: 503 with `Retry-After`, so clients retry.
    #[error("{0}")]
    Unavailable(String),
    /// A pull-through cache's upstream has no such manifest or blob (404, with its reason).
    #[error("{message}")]
    UpstreamUnknown { code: &'static str, message: String },
    /// A pull-through cache's upstream asked us to slow down and nothing is cached.
    #[error("{message}")]
    UpstreamRateLimited { message: String, retry_after: u64 },
}

impl RegistryError {
    pub fn code(&self) -> &'static str {
        use RegistryError::*;
        match self {
            BlobUnknown => "BLOB_UNKNOWN",
            BlobUploadInvalid(_) | RangeNotSatisfiable { .. } => "BLOB_UPLOAD_INVALID",
            BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            DigestInvalid(_) => "DIGEST_INVALID",
            ManifestBlobUnknown(_) => "MANIFEST_BLOB_UNKNOWN",
            ManifestInvalid(_) => "MANIFEST_INVALID",
            ManifestUnknown | ManifestNotAcceptable(_) => "MANIFEST_UNKNOWN",
            NameInvalid(_) => "NAME_INVALID",
            NameUnknown => "NAME_UNKNOWN",
            SizeInvalid(_) | PayloadTooLarge(_) => "SIZE_INVALID",
            TagInvalid(_) => "MANIFEST_INVALID",
            PaginationInvalid(_) => "PAGINATION_NUMBER_INVALID",
            Unsupported(_) | MethodNotAllowed | NotFound(_) => "UNSUPPORTED",
            Unauthorized { .. } => "UNAUTHORIZED",
            Denied(_) => "DENIED",
            TooManyRequests { .. } => "TOOMANYREQUESTS",
            InvalidRequest(_) | Conflict(_) => "UNSUPPORTED",
            Storage(_) => "UNKNOWN",
            StorageFull(_) => "DENIED",
            Unavailable(_) => "UNAVAILABLE",
            UpstreamUnknown { code, .. } => code,
            UpstreamRateLimited { .. } => "TOOMANYREQUESTS",
        }
    }

    pub fn status(&self) -> StatusCode {
        use RegistryError::*;
        match self {
            BlobUnknown
            | BlobUploadUnknown
            | ManifestUnknown
            | NameUnknown
            | NotFound(_)
            | ManifestNotAcceptable(_)
            | UpstreamUnknown { .. } => StatusCode::NOT_FOUND,
            BlobUploadInvalid(_)
            | DigestInvalid(_)
            | ManifestBlobUnknown(_)
            | ManifestInvalid(_)
            | NameInvalid(_)
            | SizeInvalid(_)
            | TagInvalid(_)
            | PaginationInvalid(_)
            | InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Denied(_) => StatusCode::FORBIDDEN,
            TooManyRequests { .. } | UpstreamRateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Conflict(_) => StatusCode::CONFLICT,
            PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body =
            json!({"errors": [{"code": self.code(), "message": self.to_string(), "detail": null}]});
        let mut resp = (status, axum::Json(body)).into_response();
        match &self {
            RegistryError::Unauthorized {
                challenge: Some(c), ..
            } => {
                if let Ok(v) = HeaderValue::from_str(c) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
            }
            RegistryError::TooManyRequests { retry_after }
            | RegistryError::UpstreamRateLimited { retry_after, .. } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            RegistryError::Unavailable(_) => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        if let RegistryError::RangeNotSatisfiable {
            current: Some(size),
            ..
        } = self
        {
            // For uploads, tell the client how much we hold so it can resume.
            let range = if size == 0 {
                "0-0".to_owned()
            } else {
                format!("0-{}", size - 1)
            };
            if let Ok(v) = HeaderValue::from_str(&range) {
                resp.headers_mut().insert(header::RANGE, v);
            }
        }
        resp
    }
}

/// Whether an I/O error says the disk or a quota is full.
fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UploadUnknown => RegistryError::BlobUploadUnknown,
            StoreError::OffsetMismatch { expected, got } => RegistryError::RangeNotSatisfiable {
                message: format!("chunk starts at {got}, but the upload holds {expected} bytes"),
                current: Some(expected),
            },
            StoreError::LengthMismatch { .. } => RegistryError::SizeInvalid(e.to_string()),
            StoreError::DigestMismatch { .. } => RegistryError::DigestInvalid(e.to_string()),
            StoreError::Body(_) => RegistryError::BlobUploadInvalid(e.to_string()),
            StoreError::Io(io) if is_full(&io) => RegistryError::StorageFull(format!(
                "the registry's storage is full ({io}); nothing of this write was kept"
            )),
            StoreError::Io(_) => RegistryError::Storage(e.to_string()),
            StoreError::Unavailable(_) => RegistryError::Unavailable(e.to_string()),
        }
    }
}

impl From<crate::policy::Refusal> for RegistryError {
    fn from(e: crate::policy::Refusal) -> Self {
        match e {
            crate::policy::Refusal::Denied(m) => RegistryError::Denied(m),
            crate::policy::Refusal::Repo(e) => e.into(),
        }
    }
}

impl From<RepoError> for RegistryError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::Store(e) => e.into(),
            RepoError::Corrupt(m) => RegistryError::Storage(m),
            RepoError::Missing(d) => RegistryError::ManifestBlobUnknown(d.to_string()),
            e @ RepoError::SizeMismatch { .. } => RegistryError::ManifestInvalid(e.to_string()),
        }
    }
}

impl RegistryError {
    /// A pull-through miss that could not be filled. `code` is the spec's "unknown" code for
    /// what was asked (MANIFEST_UNKNOWN, BLOB_UNKNOWN); the message carries the upstream's
    /// reason.
    pub fn from_proxy(e: ProxyError, code: &'static str) -> RegistryError {
        match e {
            ProxyError::NotFound(message) => RegistryError::UpstreamUnknown { code, message },
            ProxyError::Upstream(UpstreamError::Offline(u)) => RegistryError::UpstreamUnknown {
                code,
                message: format!("not cached, and upstream {u} is offline"),
            },
            ProxyError::Upstream(e @ UpstreamError::RateLimited { retry_after, .. }) => {
                RegistryError::UpstreamRateLimited {
                    message: format!("not cached: {e}"),
                    retry_after,
                }
            }
            // The upstream will not give it to us (our credentials, its policy): asking again
            // will not help, and it is no outage.
            ProxyError::Upstream(
                e @ UpstreamError::Status {
                    status: 401 | 403, ..
                },
            ) => RegistryError::Denied(format!("not cached: {e}")),
            ProxyError::Repo(e) => e.into(),
            ProxyError::Store(e) => e.into(),
            e @ (ProxyError::Upstream(_) | ProxyError::Invalid(_)) => {
                RegistryError::Unavailable(format!("not cached: {e}"))
            }
        }
    }
}

impl From<DigestError> for RegistryError {
    fn from(e: DigestError) -> Self {
        RegistryError::DigestInvalid(e.to_string())
    }
}

impl From<NameError> for RegistryError {
    fn from(e: NameError) -> Self {
        RegistryError::NameInvalid(e.to_string())
    }
}

impl From<TagError> for RegistryError {
    fn from(e: TagError) -> Self {
        RegistryError::TagInvalid(e.to_string())
    }
}

impl From<ReferenceError> for RegistryError {
    fn from(e: ReferenceError) -> Self {
        match e {
            ReferenceError::Tag(t) => t.into(),
            ReferenceError::Digest(d) => d.into(),
        }
    }
}

impl From<ManifestError> for RegistryError {
    fn from(e: ManifestError) -> Self {
        RegistryError::ManifestInvalid(e.to_string())
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
