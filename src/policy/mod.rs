//! Registry policy, kept in the config file (and the Registry resource) so it lives in Git:
//! immutable tags, storage quotas, webhooks and signatures required to pull. Each rule kind
//! is a small type built once from [`PolicyConfig`] at start-up; the handlers ask it before
//! they write or serve, and every refusal names the rule that refused.
//!
//! [`validate`] checks the whole section without touching files, so the operator refuses a
//! bad Registry with the same words `berth serve` would use, before anything is deployed.

pub mod immutable;
pub mod notify;
pub mod quota;
pub mod signature;

use crate::config::PolicyConfig;
use crate::repo::RepoError;

/// Why policy refused a request: `Denied` is the client's answer (the spec's DENIED, naming
/// the rule), `Repo` a failure to read what the decision needed.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Denied(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// A policy entry that cannot be used, named by its place in the config (`policy.` is
/// prefixed on display): `immutableTags[0].tags`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("policy.{field}: {reason}")]
pub struct PolicyError {
    pub field: String,
    pub reason: String,
}

impl PolicyError {
    pub fn new(list: &str, index: usize, field: &str, reason: impl Into<String>) -> Self {
        PolicyError {
            field: format!("{list}[{index}].{field}"),
            reason: reason.into(),
        }
    }
}

/// Checks every rule of `cfg` that can be checked without reading the files it names.
pub fn validate(cfg: &PolicyConfig) -> Result<(), PolicyError> {
    immutable::ImmutableTags::from_config(&cfg.immutable_tags)?;
    notify::Notifications::from_config(&cfg.notifications, false)?;
    signature::Signatures::from_config(&cfg.signatures, false)?;
    quota::Quotas::from_config(&cfg.quotas)?;
    Ok(())
}

/// The policy a registry enforces, built from its config.
#[derive(Debug, Default)]
pub struct Policy {
    pub immutable: immutable::ImmutableTags,
    /// Webhooks; `None` when there are none.
    pub notifications: Option<std::sync::Arc<notify::Notifications>>,
    /// Storage budgets.
    pub quotas: quota::Quotas,
    /// Signatures required to pull.
    pub signatures: signature::Signatures,
    /// Write audit lines for anonymous requests too.
    pub audit_anonymous: bool,
}

impl Policy {
    /// Validates `cfg` and reads the files it names (keys, secrets).
    pub fn from_config(cfg: &PolicyConfig) -> Result<Policy, PolicyError> {
        Ok(Policy {
            immutable: immutable::ImmutableTags::from_config(&cfg.immutable_tags)?,
            notifications: notify::Notifications::from_config(&cfg.notifications, true)?
                .map(std::sync::Arc::new),
            signatures: signature::Signatures::from_config(&cfg.signatures, true)?,
            quotas: quota::Quotas::from_config(&cfg.quotas)?,
            audit_anonymous: cfg.audit_anonymous,
        })
    }
}
