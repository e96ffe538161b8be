//! Immutable tags: once a tag matching a rule exists it always names the same manifest. A
//! push of that same manifest again succeeds (CI re-runs are idempotent), a push of another
//! one, a delete of the tag, a delete of the manifest it names and gc's retention are all
//! refused, each with the rule's words.

use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use super::{PolicyError, Refusal};
use crate::config::ImmutableTagRule;
use crate::oci::pattern::Pattern;
use crate::oci::{Digest, RepoName, Tag};
use crate::repo::lease::{self, Claim, Lease};
use crate::repo::{RepoError, Repository};
use crate::store::{MetaKey, Store};

/// The longest tag regex accepted: rules are written by people, not generated.
const MAX_REGEX: usize = 1024;

/// The regex crate's error drawn on several lines (pattern, caret, reason), on one.
fn one_line(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(s) => s
            .lines()
            .last()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_owned(),
        other => other.to_string(),
    }
}

#[derive(Debug)]
pub struct Rule {
    index: usize,
    repository: Pattern,
    tags: Regex,
}

impl Rule {
    /// How a refusal names the rule: `policy.immutableTags[0] (prod/** tags ^v[0-9])`.
    pub fn describe(&self) -> String {
        format!(
            "policy.immutableTags[{}] ({} tags {})",
            self.index,
            self.repository.as_str(),
            self.tags.as_str()
        )
    }
}

/// How long a first push of an immutable tag waits for another replica's (a dead holder's
/// lease expires well before).
const CLAIM_PATIENCE: Duration = Duration::from_secs(30);
/// The read-back wait of a tag lease: first pushes of release tags are rare, and a moment
/// more makes two holders rarer still.
const LEASE_SETTLE: Duration = Duration::from_millis(20);

/// Held from the check to the write of a push naming immutable tags.
pub struct Turn<'a> {
    _guard: tokio::sync::MutexGuard<'a, ()>,
    leases: Vec<Lease>,
}

impl Turn<'_> {
    /// Ends the turn once the tags are written (or the push failed).
    pub async fn release(self) {
        for l in self.leases {
            l.release().await;
        }
    }
}

#[derive(Debug)]
pub struct ImmutableTags {
    rules: Vec<Rule>,
    /// Held from the check to the write of a push that names an immutable tag, so two
    /// first pushes of one tag on this replica cannot both pass (pushes of immutable tags
    /// are rare enough to take turns registry-wide).
    turn: tokio::sync::Mutex<()>,
    /// This replica in tag leases.
    me: String,
}

impl Default for ImmutableTags {
    fn default() -> Self {
        ImmutableTags {
            rules: Vec::new(),
            turn: tokio::sync::Mutex::new(()),
            me: format!("{:016x}", rand::random::<u64>()),
        }
    }
}

impl ImmutableTags {
    pub fn from_config(rules: &[ImmutableTagRule]) -> Result<Self, PolicyError> {
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let bad = |field, why: String| PolicyError::new("immutableTags", i, field, why);
                let repository =
                    Pattern::parse(&r.repository).map_err(|e| bad("repository", e.to_string()))?;
                if r.tags.is_empty() || r.tags.len() > MAX_REGEX {
                    return Err(bad(
                        "tags",
                        format!("a regular expression of 1 to {MAX_REGEX} characters"),
                    ));
                }
                let tags = regex::RegexBuilder::new(&r.tags)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| {
                        bad(
                            "tags",
                            format!("{:?} is not a regular expression: {}", r.tags, one_line(&e)),
                        )
                    })?;
                Ok(Rule {
                    index: i,
                    repository,
                    tags,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(ImmutableTags {
            rules,
            ..ImmutableTags::default()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule that makes `tag` of `repo` immutable.
    pub fn rule_for(&self, repo: &RepoName, tag: &Tag) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.repository.matches(repo.as_str()) && r.tags.is_match(tag.as_str()))
    }

    /// Whether any rule covers `repo` at all (so a delete by digest needs to look at tags).
    pub fn covers(&self, repo: &RepoName) -> bool {
        self.rules
            .iter()
            .any(|r| r.repository.matches(repo.as_str()))
    }

    /// The turn a push of `tags` waits for when one of them is immutable: this replica's
    /// (see `turn`), and for a tag that does not exist yet, the tag's lease in the store, so
    /// two replicas' first pushes of one tag cannot both pass. Drop the turn after the write.
    pub async fn lock_tags(
        &self,
        store: &Arc<dyn Store>,
        repo: &RepoName,
        tags: &[&Tag],
    ) -> Result<Option<Turn<'_>>, Refusal> {
        let immutable: Vec<&Tag> = tags
            .iter()
            .copied()
            .filter(|t| self.rule_for(repo, t).is_some())
            .collect();
        if immutable.is_empty() {
            return Ok(None);
        }
        let guard = self.turn.lock().await;
        let here = Repository::new(&**store, repo);
        let mut leases = Vec::new();
        for tag in immutable {
            if here.tag(tag).await?.is_some() {
                continue; // it exists: the check compares digests, no race to lose
            }
            leases.push(self.claim(store, repo, tag).await?);
        }
        Ok(Some(Turn {
            _guard: guard,
            leases,
        }))
    }

    /// Waits for the lease of `tag` (another replica's first push of it ends, or its lease
    /// expires).
    async fn claim(
        &self,
        store: &Arc<dyn Store>,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Lease, Refusal> {
        let deadline = tokio::time::Instant::now() + CLAIM_PATIENCE;
        loop {
            let key = MetaKey::tag_lease(repo, tag);
            match lease::claim_key(store, key, &self.me, LEASE_SETTLE).await {
                Ok(Claim::Mine(l)) => return Ok(l),
                Ok(Claim::Theirs) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(lease::POLL).await;
                }
                Ok(Claim::Theirs) => {
                    return Err(Refusal::Repo(RepoError::Corrupt(format!(
                        "another replica has been writing immutable tag {tag} of {repo} for over {CLAIM_PATIENCE:?}"
                    ))));
                }
                Err(e) => return Err(Refusal::Repo(e.into())),
            }
        }
    }

    /// Before `tags` of `repo` are pointed at `digest`: refused when one is immutable and
    /// already names another manifest.
    pub async fn check_push(
        &self,
        repo: &Repository<'_>,
        tags: &[&Tag],
        digest: &Digest,
    ) -> Result<(), Refusal> {
        for tag in tags {
            let Some(rule) = self.rule_for(repo.name(), tag) else {
                continue;
            };
            if let Some(current) = repo.tag(tag).await?
                && &current != digest
            {
                return Err(Refusal::Denied(format!(
                    "tag {tag} of {} is immutable under {}: it names {current}; push under a new tag",
                    repo.name(),
                    rule.describe()
                )));
            }
        }
        Ok(())
    }

    /// Before tag `tag` of `repo` is deleted.
    pub fn check_delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<(), Refusal> {
        match self.rule_for(repo, tag) {
            Some(rule) => Err(Refusal::Denied(format!(
                "tag {tag} of {repo} is immutable under {}: it cannot be deleted",
                rule.describe()
            ))),
            None => Ok(()),
        }
    }

    /// Before manifest `digest` of `repo` is deleted: refused while an immutable tag names it.
    pub async fn check_delete_manifest(
        &self,
        repo: &Repository<'_>,
        digest: &Digest,
    ) -> Result<(), Refusal> {
        if !self.covers(repo.name()) {
            return Ok(());
        }
        for tag in repo.tags_pointing_at(digest).await? {
            if let Some(rule) = self.rule_for(repo.name(), &tag) {
                return Err(Refusal::Denied(format!(
                    "{digest} in {} is tagged {tag}, immutable under {}: it cannot be deleted",
                    repo.name(),
                    rule.describe()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[(&str, &str)]) -> Result<ImmutableTags, PolicyError> {
        ImmutableTags::from_config(
            &list
                .iter()
                .map(|(r, t)| ImmutableTagRule {
                    repository: r.to_string(),
                    tags: t.to_string(),
                })
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn rules_match_by_repository_and_tag() {
        let p = rules(&[("prod/**", "^v[0-9]"), ("base", "^stable$")]).unwrap();
        let r = |s: &str| s.parse::<RepoName>().unwrap();
        let t = |s: &str| s.parse::<Tag>().unwrap();
        assert!(p.rule_for(&r("prod/app"), &t("v1.2")).is_some());
        assert!(p.rule_for(&r("prod"), &t("v1")).is_some());
        assert!(p.rule_for(&r("prod/app"), &t("latest")).is_none());
        assert!(p.rule_for(&r("dev/app"), &t("v1")).is_none());
        assert!(p.rule_for(&r("base"), &t("stable")).is_some());
        assert!(p.rule_for(&r("base"), &t("stable2")).is_none());
        let d = p.rule_for(&r("prod/x"), &t("v9")).unwrap().describe();
        assert_eq!(d, "policy.immutableTags[0] (prod/** tags ^v[0-9])");
    }

    #[test]
    fn bad_rules_name_their_field() {
        let e = rules(&[("ok", "^v"), ("prod/**", "v[")]).unwrap_err();
        assert_eq!(e.field, "immutableTags[1].tags");
        assert!(
            e.to_string()
                .starts_with("policy.immutableTags[1].tags: \"v[\" is not")
        );
        let e = rules(&[("../x", "v")]).unwrap_err();
        assert_eq!(e.field, "immutableTags[0].repository");
        let e = rules(&[("x", "")]).unwrap_err();
        assert_eq!(e.field, "immutableTags[0].tags");
    }
}
