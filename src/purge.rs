//! `berth purge`: deletes all of a registry's stored data, for a Registry deleted with
//! `deletionPolicy: Delete` (the operator runs it in a Job with the registry's own image).
//!
//! The deleting is the Store's ([`Store::purge`](crate::store::Store::purge)): only what the
//! registry owns goes, and a bucket or volume shared with others keeps their data. What lives
//! here is what makes running it safe: the storage must be named explicitly (by `--root`, a
//! config file, or the config text inline, since a Job must not depend on a ConfigMap that
//! Kubernetes may already have deleted), and nothing is deleted without a confirmation.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};
use crate::store::{self, Backend, OpenError, PurgeReport, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("give the config either as a file (--config) or inline (--config-inline), not both")]
    TwoConfigs,
    #[error(
        "name the storage to purge: --root DIR, --config FILE or --config-inline YAML \
         (there is no default here)"
    )]
    NoStorage,
    #[error(
        "refusing to delete every blob, manifest, tag and upload of {0} without --yes \
         (--dry-run shows what would go)"
    )]
    NotConfirmed(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid inline config (--config-inline / BERTH_CONFIG_INLINE): {0}")]
    InlineConfig(serde_yaml::Error),
    #[error(transparent)]
    Backend(OpenError),
    #[error("storage root {0} does not exist: nothing to purge there (wrong --root?)")]
    MissingRoot(PathBuf),
    #[error(transparent)]
    Open(OpenError),
    #[error("purging {store} failed: {source}")]
    Store { store: String, source: StoreError },
}

impl PurgeError {
    /// A mistake in how the command was called (nothing was touched): exit status 2, as for
    /// any usage error; the rest are failures (1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            PurgeError::TwoConfigs
                | PurgeError::NoStorage
                | PurgeError::NotConfirmed(_)
                | PurgeError::Config(_)
                | PurgeError::InlineConfig(_)
                | PurgeError::Backend(_)
        )
    }
}

/// What the command line asked for, before anything is checked.
#[derive(Debug, Default)]
pub struct PurgeRequest {
    pub config: Option<PathBuf>,
    pub config_inline: Option<String>,
    pub root: Option<PathBuf>,
    pub yes: bool,
    pub dry_run: bool,
}

/// A checked request: which storage, whether to delete.
#[derive(Debug)]
pub struct PurgePlan {
    pub backend: Backend,
    pub dry_run: bool,
    /// The config it came from (for its log settings).
    pub config: Config,
}

/// Reads the config (file or inline), chooses the backend as `serve` and `gc` do, and refuses
/// without `--yes` unless it is a dry run. No I/O beyond reading the config file.
pub fn plan(req: PurgeRequest) -> Result<PurgePlan, PurgeError> {
    let config = match (&req.config, &req.config_inline) {
        (Some(_), Some(_)) => return Err(PurgeError::TwoConfigs),
        (Some(path), None) => Config::load(path)?,
        (None, Some(text)) => serde_yaml::from_str(text).map_err(PurgeError::InlineConfig)?,
        (None, None) if req.root.is_none() => return Err(PurgeError::NoStorage),
        (None, None) => Config::default(),
    };
    let backend = Backend::choose(req.root, &config).map_err(PurgeError::Backend)?;
    if !req.yes && !req.dry_run {
        return Err(PurgeError::NotConfirmed(backend.describe()));
    }
    Ok(PurgePlan {
        backend,
        dry_run: req.dry_run,
        config,
    })
}

/// Opens the storage and purges it (or, on a dry run, counts what would go).
pub async fn run(plan: &PurgePlan) -> Result<PurgeReport, PurgeError> {
    let describe = plan.backend.describe();
    // Opening a filesystem store creates its directories: do not conjure up a root that a
    // typo named, or a volume that is not mounted.
    if let Backend::Filesystem(root) = &plan.backend
        && !root_exists(root)
    {
        return Err(PurgeError::MissingRoot(root.clone()));
    }
    tracing::info!(store = %describe, dry_run = plan.dry_run, "purging");
    let store = store::open_existing(&plan.backend)
        .await
        .map_err(PurgeError::Open)?;
    let report = store
        .purge(plan.dry_run)
        .await
        .map_err(|source| PurgeError::Store {
            store: describe.clone(),
            source,
        })?;
    tracing::info!(
        store = %describe,
        objects = report.objects_deleted,
        bytes = report.bytes_freed,
        multipart_uploads_aborted = report.multipart_aborted,
        dry_run = plan.dry_run,
        "purge finished"
    );
    Ok(report)
}

fn root_exists(root: &Path) -> bool {
    std::fs::metadata(root).is_ok_and(|m| m.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_unsafe_or_ambiguous() {
        let both = PurgeRequest {
            config: Some("a.yaml".into()),
            config_inline: Some("{}".into()),
            yes: true,
            ..Default::default()
        };
        assert!(matches!(plan(both), Err(PurgeError::TwoConfigs)));
        let nothing = PurgeRequest {
            yes: true,
            ..Default::default()
        };
        assert!(matches!(plan(nothing), Err(PurgeError::NoStorage)));
        let unconfirmed = PurgeRequest {
            root: Some("/data".into()),
            ..Default::default()
        };
        let e = plan(unconfirmed).unwrap_err();
        assert!(e.is_usage());
        assert!(e.to_string().contains("/data"), "{e}");
        let bad = PurgeRequest {
            config_inline: Some("storage: [".into()),
            yes: true,
            ..Default::default()
        };
        assert!(matches!(plan(bad), Err(PurgeError::InlineConfig(_))));
    }

    #[test]
    fn inline_config_selects_s3_and_dry_runs_need_no_confirmation() {
        let req = PurgeRequest {
            config_inline: Some("storage:\n  s3:\n    bucket: b\n    prefix: team\n".into()),
            dry_run: true,
            ..Default::default()
        };
        let p = plan(req).unwrap();
        assert!(matches!(&p.backend, Backend::S3(s) if s.bucket == "b"));
        assert!(p.dry_run);
    }
}
