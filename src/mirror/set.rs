//! The mirror set file: what a site needs from which registries, in one YAML document.
//!
//! ```yaml
//! mirrors:
//!   - source: https://registry-1.docker.io/library/alpine   # registry URL + repository
//!     tags: ["^3\\.2[0-9]$"]          # regexes; or semver: ">=3.19 <4", newest: 3
//!     platforms: [linux/amd64, linux/arm64]
//!     referrers: true
//!     destination: mirror/alpine        # default: the source repository
//! ```
//!
//! Loading validates every entry, so a mistake is one line naming the entry and field before
//! anything is fetched.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::select::{Platform, TagSelect};
use crate::config::UpstreamConfig;
use crate::oci::RepoName;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorSetFile {
    pub mirrors: Vec<MirrorSpec>,
}

/// One source repository and what to take of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorSpec {
    /// The registry's URL and the repository: `https://ghcr.io/org/app`.
    pub source: String,
    /// Regular expressions; a tag is taken when one matches it whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// A version range such as `>=3.19 <4` (alternatives with `||`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    /// Only the newest N of the tags chosen, by version (or as `newestBy` says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<usize>,
    /// What "newest" means: `version` (default) or `created`, when each image was built (its
    /// config's `created`; the Distribution API tells no push time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_by: Option<NewestBy>,
    /// From an index, only these platforms (`os/arch[/variant]`); the index is kept whole
    /// (a sparse index). Empty: every platform.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// Take the images' referrers along (signatures, SBOMs, attestations).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub referrers: bool,
    /// The repository in the destination (default: the source repository).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// User at the source (Basic, or to obtain Bearer tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the password or token for `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NewestBy {
    Version,
    Created,
}

/// A mirror entry, validated.
#[derive(Debug)]
pub struct Mirror {
    /// The source registry's base URL (`https://ghcr.io`).
    pub registry: String,
    /// The repository at the source, as the source names it.
    pub repository: String,
    pub tags: TagSelect,
    /// Empty: every platform.
    pub platforms: Vec<Platform>,
    pub referrers: bool,
    pub destination: RepoName,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

impl Mirror {
    /// What an import copies of a bundle: each image it names in `repo`, whole as the
    /// bundle holds it, into the repository of the same name.
    pub fn of_bundle(repo: &str, tags: &[String]) -> Result<Mirror, String> {
        let exact: Vec<String> = tags.iter().map(|t| regex::escape(t)).collect();
        Ok(Mirror {
            registry: "bundle".into(),
            repository: repo.to_owned(),
            tags: TagSelect::new(&exact, None, None).map_err(|e| e.to_string())?,
            platforms: Vec::new(),
            referrers: true,
            destination: repo
                .parse()
                .map_err(|_| format!("{repo:?} is not a repository name"))?,
            username: None,
            password_file: None,
        })
    }

    /// What replication copies of a repository of this registry: every tag, with referrers,
    /// into `destination`.
    pub fn local(repo: &RepoName, destination: RepoName) -> Mirror {
        Mirror {
            registry: "local".into(),
            repository: repo.to_string(),
            tags: TagSelect::all(),
            platforms: Vec::new(),
            referrers: true,
            destination,
            username: None,
            password_file: None,
        }
    }

    /// How the upstream client of the pull-through cache is configured for this source.
    pub fn upstream_config(&self) -> UpstreamConfig {
        UpstreamConfig {
            prefix: "mirror".into(),
            url: self.registry.clone(),
            username: self.username.clone(),
            password_file: self.password_file.clone(),
            ..UpstreamConfig::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("cannot read mirror set {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid mirror set {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid mirror set {path}: mirrors[{index}].{field}: {reason}")]
    Invalid {
        path: PathBuf,
        index: usize,
        field: &'static str,
        reason: String,
    },
}

/// Reads and validates a mirror set file.
pub fn load(path: &Path) -> Result<Vec<Mirror>, SetError> {
    let text = std::fs::read_to_string(path).map_err(|source| SetError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file: MirrorSetFile = serde_yaml::from_str(&text).map_err(|e| SetError::Parse {
        path: path.to_owned(),
        message: format!("{e}{}", crate::config::did_you_mean(&e.to_string())),
    })?;
    file.mirrors
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            validate(spec).map_err(|(field, reason)| SetError::Invalid {
                path: path.to_owned(),
                index,
                field,
                reason,
            })
        })
        .collect()
}

/// Checks one entry (what `load` does for each); the operator checks a Mirror's entries with it.
pub fn validate(spec: &MirrorSpec) -> Result<Mirror, (&'static str, String)> {
    let url = reqwest::Url::parse(&spec.source)
        .map_err(|e| ("source", format!("{:?}: {e}", spec.source)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(("source", format!("{:?} is not an http(s) URL", spec.source)));
    }
    let repository = url.path().trim_matches('/').to_owned();
    let source_repo: RepoName = repository.parse().map_err(|_| {
        (
            "source",
            format!(
                "{:?} names no repository after the registry (https://host/org/app)",
                spec.source
            ),
        )
    })?;
    let registry = spec
        .source
        .strip_suffix(url.path())
        .unwrap_or(&spec.source)
        .trim_end_matches('/')
        .to_owned();
    let mut tags = TagSelect::new(&spec.tags, spec.semver.as_deref(), spec.newest)
        .map_err(|e| ("tags", e.to_string()))?;
    match (spec.newest_by, spec.newest) {
        (Some(NewestBy::Created), Some(_)) => tags = tags.by_created(),
        (Some(_), None) => {
            return Err(("newestBy", "newestBy goes with newest: N".to_owned()));
        }
        _ => {}
    }
    let platforms = spec
        .platforms
        .iter()
        .map(|p| p.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| ("platforms", e))?;
    let destination = match &spec.destination {
        None => source_repo,
        Some(d) => d
            .parse()
            .map_err(|_| ("destination", format!("{d:?} is not a repository name")))?,
    };
    if spec.username.is_some() != spec.password_file.is_some() {
        return Err((
            "username",
            "username and passwordFile go together".to_owned(),
        ));
    }
    Ok(Mirror {
        registry,
        repository,
        tags,
        platforms,
        referrers: spec.referrers,
        destination,
        username: spec.username.clone(),
        password_file: spec.password_file.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Vec<Mirror>, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("set.yaml");
        std::fs::write(&p, text).unwrap();
        load(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_set_loads() {
        let m = load_text(
            "mirrors:\n  - source: https://registry-1.docker.io/library/alpine\n    tags: [\"^3\\\\.2[0-9]$\"]\n    platforms: [linux/amd64, linux/arm64]\n    referrers: true\n    destination: mirror/alpine\n  - source: http://127.0.0.1:5000/team/app\n    newest: 3\n",
        )
        .unwrap();
        assert_eq!(m[0].registry, "https://registry-1.docker.io");
        assert_eq!(m[0].repository, "library/alpine");
        assert_eq!(m[0].destination.as_str(), "mirror/alpine");
        assert_eq!(m[0].platforms.len(), 2);
        assert!(m[0].referrers);
        assert_eq!(m[1].registry, "http://127.0.0.1:5000");
        assert_eq!(m[1].destination.as_str(), "team/app");
    }

    #[test]
    fn mistakes_name_the_entry_field_and_line() {
        for (text, want) in [
            (
                "mirrors:\n  - source: https://ghcr.io/a\n",
                "mirrors[0].tags: say which tags",
            ),
            (
                "mirrors:\n  - source: https://ghcr.io\n    newest: 1\n",
                "mirrors[0].source: \"https://ghcr.io\" names no repository",
            ),
            (
                "mirrors:\n  - source: ftp://x/a\n    newest: 1\n",
                "mirrors[0].source: \"ftp://x/a\" is not an http(s) URL",
            ),
            (
                "mirrors:\n  - source: https://x/a\n    newest: 1\n  - source: https://x/b\n    platforms: [linux]\n    newest: 1\n",
                "mirrors[1].platforms",
            ),
            (
                "mirrors:\n  - source: https://x/a\n    newest: 1\n    destination: Bad/Name\n",
                "mirrors[0].destination",
            ),
            (
                "mirrors:\n  - source: https://x/a\n    semver: \">=x\"\n",
                "mirrors[0].tags: invalid semver range",
            ),
            (
                "mirrors:\n  - source: https://x/a\n    newest: 1\n    platfroms: [linux/amd64]\n",
                "line 4 column 5 (did you mean `platforms`?)",
            ),
        ] {
            let e = load_text(text).unwrap_err();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
