//! Garbage collection: mark everything reachable, sweep the rest, while the registry serves.
//!
//! **Mark.** In every repository the roots are its manifests (or, with `delete_untagged`, only
//! the manifests its tags point at, after retention rules have removed tags). From each root we
//! follow index children and referrers (manifests whose `subject` is a kept manifest), and mark
//! the manifest bytes, configs and layers they reference. Blobs are global: one kept reference
//! anywhere keeps a blob.
//!
//! **Sweep, online.** A client may HEAD an old unreferenced blob, skip its upload, then PUT a
//! manifest that uses it; a mount or an upload may land between mark and sweep. No read-only
//! window is needed, because deletion and use follow one protocol on each item's "last touched"
//! time (the file's mtime on the filesystem backend):
//!
//! * Every use *touches* what it relies on, with a precise clock: an upload commit and a mount
//!   touch the blob; a manifest PUT touches every blob and child manifest it references, records
//!   the manifest, then touches them all again, and only then moves tags and answers 201. If the
//!   second touch finds something gone, the PUT removes what it recorded and fails with
//!   MANIFEST_BLOB_UNKNOWN. A touch of an item that a sweep has *staged* (renamed to `.gc-<name>`)
//!   renames it back first.
//! * The sweep uses `cutoff = start - grace - 50ms` (the margin absorbs coarse timestamps) and
//!   deletes an unmarked item only if it is older than the cutoff: it looks at its time, stages
//!   it, looks again at the staged copy, and puts it back if it was touched meanwhile, else
//!   unlinks it.
//!
//! Why a 201 can never point at a deleted blob: the PUT's second touch happens after its
//! manifest was recorded. If the collection marked that repository after the record, the blob is
//! marked. Otherwise the second touch happened after the collection started, so it is newer than
//! the cutoff: if it came before the sweep staged the blob, the sweep sees it (first or second
//! look) and keeps the blob; if it came after the staging, the touch finds the staged copy and
//! restores it, or finds nothing because the sweep already unlinked it, and then the PUT fails.
//! The `gc_race` test drives this for a thousand rounds with `grace = 0`.
//!
//! The grace period is for clients, not for safety: with `grace = 0` nothing is lost, but a
//! client that HEADs a garbage blob and then PUTs its manifest may be told to upload it again.
//! Clocks of several replicas sharing a store must agree to within the grace period.
//!
//! **Crashes.** Every step is atomic (rename, unlink) and the next run finishes the job: staged
//! blobs left by a killed run are restored if marked, deleted if not.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use regex::Regex;
use serde::Serialize;

pub use crate::config::RetentionRule;
use crate::oci::pattern::Pattern;
use crate::oci::{Digest, Manifest, RepoName, Tag};
use crate::repo::{RepoError, Repository};
use crate::store::{Store, StoreError};

mod cached;
pub use cached::CachedRetention;

/// No cached manifest is over a size budget (none is set).
static NOTHING_OVER: std::sync::LazyLock<HashSet<(RepoName, Digest)>> =
    std::sync::LazyLock::new(HashSet::new);

/// Subtracted from every cutoff, beyond the grace period: covers the kernel's coarse file
/// timestamps and small clock adjustments. (Touches themselves set precise times.)
pub const CLOCK_MARGIN: Duration = Duration::from_millis(50);

/// Blob deletions in flight at once during a sweep.
const SWEEP_CONCURRENCY: usize = 16;

/// What a collection does.
#[derive(Clone, Debug)]
pub struct GcOptions {
    pub dry_run: bool,
    pub delete_untagged: bool,
    pub grace: Duration,
    pub upload_ttl: Duration,
    pub retention: Vec<RetentionRule>,
    /// The pull-through cache's rules (see `cached`). Local repositories are never touched
    /// by them.
    pub cached: Option<CachedRetention>,
    /// `policy.immutableTags`: retention never removes a tag these make immutable.
    pub immutable: std::sync::Arc<crate::policy::immutable::ImmutableTags>,
    /// `policy.quotas`: counted again from what is left once a collection is done.
    pub quotas: std::sync::Arc<crate::policy::quota::Quotas>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            delete_untagged: false,
            grace: Duration::from_secs(3600),
            upload_ttl: Duration::from_secs(24 * 3600),
            retention: Vec::new(),
            cached: None,
            immutable: Default::default(),
            quotas: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A repository document is not in the format the repository layer writes.
    #[error(transparent)]
    Repo(RepoError),
    #[error("invalid retention rule for {pattern:?}: {reason}")]
    Rule { pattern: String, reason: String },
    #[error("invalid gc option {what}: {reason}")]
    Option { what: String, reason: String },
}

impl From<RepoError> for GcError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::Store(e) => GcError::Store(e),
            other => GcError::Repo(other),
        }
    }
}

/// One deletion (reported with `--dry-run --json`).
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Deletion {
    pub kind: &'static str,
    pub repository: Option<String>,
    pub name: String,
    pub size: Option<u64>,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    pub dry_run: bool,
    pub repositories: usize,
    pub tags_examined: usize,
    pub tags_deleted: usize,
    pub manifests_examined: usize,
    pub manifests_deleted: usize,
    pub blobs_examined: usize,
    pub blobs_deleted: usize,
    pub bytes_freed: u64,
    pub uploads_purged: usize,
    /// Temporary files left by interrupted writes.
    pub temporaries_removed: usize,
    /// Manifests of pull-through cached repositories removed for not being pulled within
    /// `proxy.retention.unpulledFor` (counted in `manifestsDeleted` too).
    pub cached_manifests_expired: usize,
    /// Repository links to blobs no manifest of that repository uses any more (the blob may
    /// stay for others); what makes a quota's usage exact after a delete.
    #[serde(default)]
    pub links_removed: usize,
    pub duration_ms: u64,
    /// Every deletion, with its reason; filled on dry runs only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deletions: Vec<Deletion>,
}

impl GcReport {
    pub fn summary(&self) -> String {
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        format!(
            "gc {verb}: {} of {} tags, {} of {} manifests, {} of {} blobs ({} bytes), {} abandoned uploads; {} repositories in {} ms",
            self.tags_deleted,
            self.tags_examined,
            self.manifests_deleted,
            self.manifests_examined,
            self.blobs_deleted,
            self.blobs_examined,
            self.bytes_freed,
            self.uploads_purged,
            self.repositories,
            self.duration_ms
        )
    }
}

/// A rule with its regular expression compiled and its age parsed.
struct CompiledRule {
    repositories: Pattern,
    keep_last: Option<usize>,
    keep_tags: Option<Regex>,
    older_than: Option<Duration>,
}

fn compile(rules: &[RetentionRule]) -> Result<Vec<CompiledRule>, GcError> {
    rules
        .iter()
        .map(|r| {
            let bad = |reason: String| GcError::Rule {
                pattern: r.repositories.clone(),
                reason,
            };
            Ok(CompiledRule {
                repositories: Pattern::parse(&r.repositories).map_err(|e| bad(e.1.to_owned()))?,
                keep_last: r.keep_last,
                keep_tags: r
                    .keep_tags
                    .as_deref()
                    .map(Regex::new)
                    .transpose()
                    .map_err(|e| bad(e.to_string()))?,
                older_than: r
                    .older_than
                    .as_deref()
                    .map(humantime::parse_duration)
                    .transpose()
                    .map_err(|e| bad(e.to_string()))?,
            })
        })
        .collect()
}

fn parse_duration(what: &str, v: &str) -> Result<Duration, GcError> {
    humantime::parse_duration(v).map_err(|e| GcError::Option {
        what: what.to_owned(),
        reason: format!("{v:?}: {e}"),
    })
}

impl GcOptions {
    /// Options from the config file's `gc` section (defaults where it is silent).
    pub fn from_config(c: &crate::config::GcConfig) -> Result<GcOptions, GcError> {
        let d = GcOptions::default();
        let opts = GcOptions {
            dry_run: false,
            delete_untagged: c.delete_untagged.unwrap_or(false),
            grace: c
                .grace
                .as_deref()
                .map(|v| parse_duration("grace", v))
                .transpose()?
                .unwrap_or(d.grace),
            upload_ttl: c
                .upload_ttl
                .as_deref()
                .map(|v| parse_duration("uploadTtl", v))
                .transpose()?
                .unwrap_or(d.upload_ttl),
            retention: c.retention.clone(),
            cached: None,
            immutable: Default::default(),
            quotas: Default::default(),
        };
        validate_rules(&opts.retention)?;
        Ok(opts)
    }

    /// Adds the pull-through cache's retention (`proxy.retention`).
    pub fn with_proxy(
        mut self,
        p: Option<&crate::config::ProxyConfig>,
    ) -> Result<GcOptions, GcError> {
        let Some(p) = p else { return Ok(self) };
        let Some(r) = &p.retention else {
            return Ok(self);
        };
        let unpulled_for = match r.unpulled_for.as_deref() {
            Some(v) => Some(parse_duration("proxy.retention.unpulledFor", v)?),
            None => None,
        };
        let max_bytes = match r.max_bytes.as_deref() {
            Some(v) => Some(
                crate::config::parse_bytes(v).map_err(|reason| GcError::Option {
                    what: "proxy.retention.maxBytes".into(),
                    reason,
                })?,
            ),
            None => None,
        };
        if unpulled_for.is_some() || max_bytes.is_some() {
            self.cached = Some(CachedRetention {
                prefixes: p.upstreams.iter().map(|u| u.prefix.clone()).collect(),
                unpulled_for,
                max_bytes,
            });
        }
        Ok(self)
    }

    /// Adds the policy retention must respect (immutable tags).
    pub fn with_policy(mut self, p: &crate::config::PolicyConfig) -> Result<GcOptions, GcError> {
        let rules = crate::policy::immutable::ImmutableTags::from_config(&p.immutable_tags)
            .map_err(|e| GcError::Option {
                what: format!("policy.{}", e.field),
                reason: e.reason,
            })?;
        self.immutable = std::sync::Arc::new(rules);
        let quotas =
            crate::policy::quota::Quotas::from_config(&p.quotas).map_err(|e| GcError::Option {
                what: format!("policy.{}", e.field),
                reason: e.reason,
            })?;
        self.quotas = std::sync::Arc::new(quotas);
        Ok(self)
    }

    pub fn set_grace(&mut self, v: &str) -> Result<(), GcError> {
        self.grace = parse_duration("grace", v)?;
        Ok(())
    }

    pub fn set_upload_ttl(&mut self, v: &str) -> Result<(), GcError> {
        self.upload_ttl = parse_duration("upload-ttl", v)?;
        Ok(())
    }
}

/// Parses a rule given on the command line: `PATTERN[:key=value,...]` with the keys
/// `keep-last`, `keep-tags` and `older-than`.
pub fn parse_rule(s: &str) -> Result<RetentionRule, GcError> {
    let (pattern, rest) = s.split_once(':').unwrap_or((s, ""));
    let bad = |reason: String| GcError::Rule {
        pattern: pattern.to_owned(),
        reason,
    };
    let mut rule = RetentionRule {
        repositories: pattern.to_owned(),
        ..RetentionRule::default()
    };
    for kv in rest.split(',').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| bad(format!("expected key=value, got {kv:?}")))?;
        match k {
            "keep-last" => {
                rule.keep_last = Some(
                    v.parse()
                        .map_err(|_| bad(format!("keep-last {v:?} is not a number")))?,
                )
            }
            "keep-tags" => rule.keep_tags = Some(v.to_owned()),
            "older-than" => rule.older_than = Some(v.to_owned()),
            other => {
                return Err(bad(format!(
                    "unknown key {other:?} (keep-last, keep-tags, older-than)"
                )));
            }
        }
    }
    validate_rules(std::slice::from_ref(&rule))?;
    Ok(rule)
}

/// Checks retention rules without running anything (for start-up validation).
pub fn validate_rules(rules: &[RetentionRule]) -> Result<(), GcError> {
    compile(rules).map(|_| ())
}

/// Which of `tags` (name, last pushed) a rule removes.
fn tags_to_remove(rule: &CompiledRule, tags: &[(Tag, SystemTime)], now: SystemTime) -> Vec<Tag> {
    if rule.keep_last.is_none() && rule.keep_tags.is_none() && rule.older_than.is_none() {
        return Vec::new();
    }
    let mut by_age: Vec<&(Tag, SystemTime)> = tags.iter().collect();
    by_age.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.as_str().cmp(b.0.as_str())));
    by_age
        .into_iter()
        .enumerate()
        .filter(|(i, (tag, pushed))| {
            let newest = rule.keep_last.is_some_and(|n| *i < n);
            let matches = rule
                .keep_tags
                .as_ref()
                .is_some_and(|re| re.is_match(tag.as_str()));
            let young = rule
                .older_than
                .is_some_and(|age| now.duration_since(*pushed).unwrap_or_default() < age);
            !(newest || matches || young)
        })
        .map(|(_, (tag, _))| tag.clone())
        .collect()
}

/// Runs one collection. `progress` receives a line now and then for long runs.
pub async fn collect(
    store: &dyn Store,
    opts: &GcOptions,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<GcReport, GcError> {
    let began = Instant::now();
    let start = SystemTime::now();
    let cutoff = start
        .checked_sub(opts.grace + CLOCK_MARGIN)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let rules = compile(&opts.retention)?;
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    let mut marked: HashSet<Digest> = HashSet::new();

    let repos = store.repositories().await?;
    report.repositories = repos.len();
    let over_budget = match &opts.cached {
        Some(c) if c.max_bytes.is_some() => Some(cached::over_budget(store, c, &repos).await?),
        _ => None,
    };
    let mark = Mark {
        store,
        opts,
        rules: &rules,
        start,
        cutoff,
        over_budget: over_budget.as_ref().unwrap_or(&NOTHING_OVER),
    };
    let mut last_progress = Instant::now();
    for (i, repo) in repos.iter().enumerate() {
        if last_progress.elapsed() > Duration::from_secs(2) {
            progress(&format!(
                "marking: repository {} of {}: {repo}",
                i + 1,
                repos.len()
            ));
            last_progress = Instant::now();
        }
        mark_repository(&mark, repo, &mut marked, &mut report).await?;
    }

    progress(&format!("sweeping blobs ({} marked)", marked.len()));
    let mut deleted: HashSet<Digest> = HashSet::new();
    let mut candidates = Vec::new();
    for blob in store.blob_list().await? {
        report.blobs_examined += 1;
        if marked.contains(&blob.digest) {
            if blob.staged && !opts.dry_run {
                // Left staged by an interrupted run, but in use: put it back.
                store.blob_touch(&blob.digest).await?;
            }
            continue;
        }
        if blob.modified >= cutoff {
            continue; // within the grace period
        }
        if opts.dry_run {
            report.blobs_deleted += 1;
            report.bytes_freed += blob.size;
            report.deletions.push(Deletion {
                kind: "blob",
                repository: None,
                name: blob.digest.to_string(),
                size: Some(blob.size),
                reason: "not referenced by any kept manifest".into(),
            });
            continue;
        }
        candidates.push(blob.digest);
    }
    // Deletions are independent, and each is a few metadata operations: run several at once.
    let mut sweeps = futures::stream::iter(candidates)
        .map(|d| async move {
            let freed = store.blob_delete_if_stale(&d, cutoff).await?;
            Ok::<_, StoreError>((d, freed))
        })
        .buffer_unordered(SWEEP_CONCURRENCY);
    while let Some(result) = sweeps.next().await {
        if let (d, Some(freed)) = result? {
            report.blobs_deleted += 1;
            report.bytes_freed += freed;
            deleted.insert(d);
        }
    }

    if !deleted.is_empty() {
        progress("removing repository links to deleted blobs");
        for name in &repos {
            let repo = Repository::new(store, name);
            for d in repo.blob_links().await? {
                if deleted.contains(&d) {
                    repo.unlink_blob_if_stale(&d, cutoff).await?;
                }
            }
        }
    }

    let deletions = opts.dry_run.then_some(&mut report.deletions);
    report.uploads_purged = purge_uploads(store, opts.upload_ttl, opts.dry_run, deletions).await?;
    report.temporaries_removed = store
        .sweep_temporaries(
            SystemTime::now()
                .checked_sub(STALE_TEMPORARY)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            opts.dry_run,
        )
        .await?
        + crate::repo::lease::sweep_stale(store, opts.dry_run).await?;
    if !opts.dry_run && !opts.quotas.is_empty() {
        progress("counting quotas");
        opts.quotas
            .recount(store, false)
            .await
            .map_err(GcError::Repo)?;
    }
    report.duration_ms = began.elapsed().as_millis() as u64;
    Ok(report)
}

/// Temporary files (a write's `.tmp-*` before its rename) older than this were left by a
/// process that died mid-write: a live write takes milliseconds.
pub const STALE_TEMPORARY: Duration = Duration::from_secs(15 * 60);

/// Removes (or, on a dry run, lists into `deletions`) the upload sessions with no activity
/// for longer than `ttl`; returns how many.
pub async fn purge_uploads(
    store: &dyn Store,
    ttl: Duration,
    dry_run: bool,
    mut deletions: Option<&mut Vec<Deletion>>,
) -> Result<usize, StoreError> {
    let cutoff = SystemTime::now()
        .checked_sub(ttl)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut purged = 0;
    for upload in store.upload_list().await? {
        if upload.modified >= cutoff {
            continue;
        }
        purged += 1;
        if let Some(d) = deletions.as_deref_mut() {
            d.push(Deletion {
                kind: "upload",
                repository: None,
                name: upload.id.to_string(),
                size: None,
                reason: format!("no activity for over {}", humantime::format_duration(ttl)),
            });
        }
        if !dry_run {
            store.upload_delete(&upload.id).await?;
        }
    }
    Ok(purged)
}

/// What marking every repository shares.
struct Mark<'a> {
    store: &'a dyn Store,
    opts: &'a GcOptions,
    rules: &'a [CompiledRule],
    start: SystemTime,
    cutoff: SystemTime,
    /// Cached manifests past `proxy.retention.maxBytes`, least recently pulled.
    over_budget: &'a HashSet<(RepoName, Digest)>,
}

/// Applies retention, marks what one repository keeps, and removes (or, on a dry run, lists)
/// the manifests it no longer keeps.
async fn mark_repository(
    mark: &Mark<'_>,
    repo: &RepoName,
    marked: &mut HashSet<Digest>,
    report: &mut GcReport,
) -> Result<(), GcError> {
    let Mark {
        store,
        opts,
        rules,
        start,
        cutoff,
        ..
    } = *mark;
    let name = repo;
    let repo = Repository::new(store, name);
    // Tags, and what retention removes.
    let mut tags: Vec<(Tag, Digest, SystemTime)> = Vec::new();
    for tag in repo.tags().await? {
        match repo.tag_pushed(&tag).await {
            Ok(Some((d, when))) => tags.push((tag, d, when)),
            Ok(None) => {}
            Err(RepoError::Corrupt(e)) => tracing::warn!(error = %e, "left alone"),
            Err(e) => return Err(e.into()),
        }
    }
    report.tags_examined += tags.len();
    let mut removed: HashSet<Tag> = HashSet::new();
    if let Some(rule) = rules.iter().find(|r| r.repositories.matches(name.as_str())) {
        let pushed: Vec<(Tag, SystemTime)> = tags.iter().map(|(t, _, w)| (t.clone(), *w)).collect();
        for tag in tags_to_remove(rule, &pushed, start) {
            if let Some(keeps) = opts.immutable.rule_for(name, &tag) {
                tracing::debug!(repository = %name, %tag, rule = %keeps.describe(), "retention keeps an immutable tag");
                continue;
            }
            let gone = opts.dry_run || repo.delete_tag_if_stale(&tag, cutoff).await?;
            if gone {
                report.tags_deleted += 1;
                if opts.dry_run {
                    report.deletions.push(Deletion {
                        kind: "tag",
                        repository: Some(name.to_string()),
                        name: tag.to_string(),
                        size: None,
                        reason: format!("retention rule for {:?}", rule.repositories.as_str()),
                    });
                }
                removed.insert(tag);
            }
        }
    }

    let all = repo.manifest_revisions().await?;
    report.manifests_examined += all.len();
    if let Some(cached) = opts.cached.as_ref().filter(|c| c.covers(name)) {
        return cached::expire(&repo, cached, mark, &all, &tags, marked, report).await;
    }
    let roots: Vec<Digest> = if opts.delete_untagged {
        tags.iter()
            .filter(|(t, _, _)| !removed.contains(t))
            .map(|(_, d, _)| d.clone())
            .collect()
    } else {
        all.clone()
    };

    let mut used: HashSet<Digest> = HashSet::new();
    let (kept, subjects) = walk(&repo, roots, marked, &mut used).await?;

    // Manifests nothing keeps (only possible with delete_untagged).
    for d in all.iter().filter(|d| !kept.contains(*d)) {
        if opts.dry_run {
            if repo
                .manifest_touched_at(d)
                .await?
                .is_some_and(|t| t < cutoff)
            {
                report.manifests_deleted += 1;
                report.deletions.push(Deletion {
                    kind: "manifest",
                    repository: Some(name.to_string()),
                    name: d.to_string(),
                    size: None,
                    reason: "untagged and not referenced by a kept index or subject".into(),
                });
            } else {
                marked.insert(d.clone());
            }
            continue;
        }
        // Read its subject before it goes, to drop its referrers entry.
        let subject = match subjects.get(d) {
            Some(s) => Some(s.clone()),
            None => match store.blob_read(d).await? {
                Some(b) => Manifest::parse(&b, None)
                    .ok()
                    .and_then(|m| m.subject.map(|s| s.digest)),
                None => None,
            },
        };
        if repo
            .retire_manifest_if_stale(d, subject.as_ref(), cutoff)
            .await?
        {
            report.manifests_deleted += 1;
        } else {
            // Recent: keep it and what it references, this time.
            marked.insert(d.clone());
            if let Some(b) = store.blob_read(d).await?
                && let Ok(m) = Manifest::parse(&b, None)
            {
                let needs = m.required_blobs().map(|b| b.digest.clone());
                let needs: Vec<Digest> = needs.collect();
                used.extend(needs.iter().cloned());
                marked.extend(needs);
            }
        }
    }
    prune_links(&repo, &used, mark, report).await
}

/// Removes the repository's links to blobs none of its kept manifests uses, unless written or
/// touched since the cutoff (an upload whose manifest is still to come; a push touches the
/// links it relies on, see `repo::publish`). The blob itself stays while others use it.
async fn prune_links(
    repo: &Repository<'_>,
    used: &HashSet<Digest>,
    mark: &Mark<'_>,
    report: &mut GcReport,
) -> Result<(), GcError> {
    for d in repo.blob_links().await? {
        if used.contains(&d) {
            continue;
        }
        let gone = if mark.opts.dry_run {
            false
        } else {
            repo.unlink_blob_if_stale(&d, mark.cutoff).await?
        };
        if gone {
            report.links_removed += 1;
        }
    }
    Ok(())
}

/// Follows index children and referrers from `roots`: marks each manifest reached and the
/// blobs it needs; returns the manifests reached, and each one's subject.
async fn walk(
    repo: &Repository<'_>,
    roots: Vec<Digest>,
    marked: &mut HashSet<Digest>,
    used: &mut HashSet<Digest>,
) -> Result<(HashSet<Digest>, HashMap<Digest, Digest>), GcError> {
    let mut kept: HashSet<Digest> = HashSet::new();
    let mut subjects: HashMap<Digest, Digest> = HashMap::new();
    let mut queue = roots;
    while let Some(d) = queue.pop() {
        if !kept.insert(d.clone()) {
            continue;
        }
        marked.insert(d.clone());
        let Some(media) = repo.recorded_media_type(&d).await? else {
            continue; // a tag pointing at a deleted manifest
        };
        let Some(bytes) = repo.store().blob_read(&d).await? else {
            tracing::warn!(repo = %repo.name(), digest = %d, "manifest bytes missing");
            continue;
        };
        match Manifest::parse(&bytes, Some(&media)) {
            Ok(m) => {
                for b in m.required_blobs() {
                    used.insert(b.digest.clone());
                    marked.insert(b.digest.clone());
                }
                queue.extend(m.manifests.iter().map(|c| c.digest.clone()));
                if let Some(s) = m.subject {
                    subjects.insert(d.clone(), s.digest);
                }
            }
            Err(e) => {
                tracing::warn!(repo = %repo.name(), digest = %d, error = %e, "unreadable manifest kept as is")
            }
        }
        queue.extend(repo.referrer_digests(&d).await?);
    }
    Ok((kept, subjects))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_any_matching_condition() {
        let now = SystemTime::now();
        let day = Duration::from_secs(86400);
        let tags: Vec<(Tag, SystemTime)> = (0..6)
            .map(|i| (format!("t{i}").parse().unwrap(), now - day * i))
            .chain([("v1.0".parse().unwrap(), now - day * 100)])
            .collect();
        let rule = |keep_last, keep_tags: Option<&str>, older_than: Option<&str>| {
            compile(&[RetentionRule {
                repositories: "**".into(),
                keep_last,
                keep_tags: keep_tags.map(str::to_owned),
                older_than: older_than.map(str::to_owned),
            }])
            .unwrap()
            .remove(0)
        };
        let names = |v: Vec<Tag>| {
            let mut v: Vec<String> = v.into_iter().map(|t| t.to_string()).collect();
            v.sort();
            v
        };
        assert_eq!(
            names(tags_to_remove(&rule(Some(2), None, None), &tags, now)),
            ["t2", "t3", "t4", "t5", "v1.0"]
        );
        assert_eq!(
            names(tags_to_remove(&rule(Some(2), Some("^v"), None), &tags, now)),
            ["t2", "t3", "t4", "t5"]
        );
        assert_eq!(
            names(tags_to_remove(
                &rule(None, None, Some("3d 12h")),
                &tags,
                now
            )),
            ["t4", "t5", "v1.0"]
        );
        assert_eq!(
            names(tags_to_remove(&rule(Some(5), None, Some("1d")), &tags, now)),
            ["t5", "v1.0"]
        );
        assert!(tags_to_remove(&rule(None, None, None), &tags, now).is_empty());
        assert!(
            compile(&[RetentionRule {
                repositories: "../x".into(),
                ..Default::default()
            }])
            .is_err()
        );
        assert!(
            compile(&[RetentionRule {
                repositories: "x".into(),
                keep_tags: Some("(".into()),
                ..Default::default()
            }])
            .is_err()
        );
    }
}
