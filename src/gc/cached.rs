//! `proxy.retention` for the pull-through cache's repositories, as part of a collection. A
//! pull touches the cached manifest's revision (see `crate::proxy`), so its time is the last
//! pull. A cached manifest is kept when it was pulled within `unpulledFor` and, with
//! `maxBytes`, when it is among the most recently pulled ones that fit in the budget; what
//! the kept ones reference stays, the rest goes with the tags that point at it and comes back
//! from the upstream if pulled again. Local repositories are never touched by these rules.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use super::{Deletion, GcError, GcReport, Mark, walk};
use crate::oci::{Digest, Manifest, RepoName, Tag};
use crate::repo::Repository;
use crate::store::Store;

/// `proxy.retention`, for gc.
#[derive(Clone, Debug)]
pub struct CachedRetention {
    /// The upstreams' prefixes: the repositories under them are cached ones.
    pub prefixes: Vec<String>,
    pub unpulled_for: Option<Duration>,
    pub max_bytes: Option<u64>,
}

impl CachedRetention {
    pub fn covers(&self, repo: &RepoName) -> bool {
        self.prefixes.iter().any(|p| {
            repo.as_str()
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

/// One cached manifest for the budget: when it was last pulled and what it holds.
struct Unit {
    pulled: SystemTime,
    repo: RepoName,
    digest: Digest,
    /// Its own bytes' digest, its blobs' and (for an index) its children's.
    blobs: Vec<Digest>,
}

/// The cached manifests outside `maxBytes`: the most recently pulled are counted in first,
/// each with the stored bytes it needs that earlier ones did not already count; from the first
/// that does not fit, it and every one pulled before it are over.
pub async fn over_budget(
    store: &dyn Store,
    rule: &CachedRetention,
    repos: &[RepoName],
) -> Result<HashSet<(RepoName, Digest)>, GcError> {
    let Some(max) = rule.max_bytes else {
        return Ok(HashSet::new());
    };
    let mut units = Vec::new();
    for name in repos.iter().filter(|r| rule.covers(r)) {
        let repo = Repository::new(store, name);
        for d in repo.manifest_revisions().await? {
            let pulled = repo
                .manifest_touched_at(&d)
                .await?
                .unwrap_or(SystemTime::now());
            let blobs = closure(&repo, &d).await?;
            units.push(Unit {
                pulled,
                repo: name.clone(),
                digest: d,
                blobs,
            });
        }
    }
    units.sort_by_key(|u| std::cmp::Reverse(u.pulled));
    let mut counted: HashSet<Digest> = HashSet::new();
    let mut used = 0u64;
    let mut over = HashSet::new();
    let mut full = false;
    for u in units {
        if !full {
            let mut adds = 0u64;
            for b in u.blobs.iter().filter(|b| !counted.contains(*b)) {
                adds += store.blob_size(b).await?.unwrap_or(0);
            }
            if used + adds <= max {
                used += adds;
                counted.extend(u.blobs);
                continue;
            }
            full = true;
        }
        over.insert((u.repo, u.digest));
    }
    Ok(over)
}

/// The digests manifest `d` keeps in a cached repository: itself, its blobs, its children's
/// (gc's own mark, into a set of its own).
async fn closure(repo: &Repository<'_>, d: &Digest) -> Result<Vec<Digest>, GcError> {
    let mut kept = HashSet::new();
    walk(repo, vec![d.clone()], &mut kept, &mut HashSet::new()).await?;
    Ok(kept.into_iter().collect())
}

/// Marks what a cached repository keeps and retires (or on a dry run lists) the rest.
pub async fn expire(
    repo: &Repository<'_>,
    rule: &CachedRetention,
    mark: &Mark<'_>,
    all: &[Digest],
    tags: &[(Tag, Digest, SystemTime)],
    marked: &mut HashSet<Digest>,
    report: &mut GcReport,
) -> Result<(), GcError> {
    let pulled_since = rule
        .unpulled_for
        .and_then(|w| mark.start.checked_sub(w))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut roots = Vec::new();
    let mut reasons = std::collections::HashMap::new();
    for d in all {
        let touched = repo.manifest_touched_at(d).await?;
        // Within the grace period (a fill under way) it stays whatever the rules say.
        if touched.is_none_or(|t| t >= mark.cutoff) {
            roots.push(d.clone());
            continue;
        }
        if touched.is_some_and(|t| t < pulled_since) {
            let w = rule.unpulled_for.map(humantime::format_duration);
            reasons.insert(
                d.clone(),
                format!(
                    "cached from an upstream and not pulled for {}",
                    w.map(|w| w.to_string()).unwrap_or_default()
                ),
            );
        } else if mark.over_budget.contains(&(repo.name().clone(), d.clone())) {
            reasons.insert(
                d.clone(),
                "cached from an upstream, least recently pulled, past proxy.retention.maxBytes"
                    .to_owned(),
            );
        } else {
            roots.push(d.clone());
        }
    }
    let (kept, _) = walk(repo, roots, marked, &mut HashSet::new()).await?;
    for d in all.iter().filter(|d| !kept.contains(*d)) {
        let pointing: Vec<&Tag> = tags
            .iter()
            .filter(|(_, t, _)| t == d)
            .map(|(t, _, _)| t)
            .collect();
        if mark.opts.dry_run {
            report.manifests_deleted += 1;
            report.cached_manifests_expired += 1;
            report.deletions.push(Deletion {
                kind: "manifest",
                repository: Some(repo.name().to_string()),
                name: d.to_string(),
                size: None,
                reason: reasons
                    .get(d)
                    .cloned()
                    .unwrap_or_else(|| "cached from an upstream and no longer kept".into()),
            });
            report.tags_deleted += pointing.len();
            continue;
        }
        let subject = match repo.store().blob_read(d).await? {
            Some(b) => Manifest::parse(&b, None)
                .ok()
                .and_then(|m| m.subject.map(|s| s.digest)),
            None => None,
        };
        if repo
            .retire_manifest_if_stale(d, subject.as_ref(), mark.cutoff)
            .await?
        {
            report.manifests_deleted += 1;
            report.cached_manifests_expired += 1;
            for t in pointing {
                if repo.delete_tag_if_stale(t, mark.cutoff).await? {
                    report.tags_deleted += 1;
                }
            }
        } else {
            marked.insert(d.clone());
        }
    }
    Ok(())
}
