//! Push replication: every push and delete in a rule's repositories is sent on to another
//! registry. The handler records an event in the rule's durable queue (`repo::queue`) before
//! it answers, so an acknowledged push is never lost; one replica at a time (holding the
//! queue's lease, as a pull-through fill does) delivers the queue in order with the mirror's
//! copy, retrying with backoff while the destination is down, and a periodic reconcile copies
//! whatever the events missed (pushes written past the server, a queue cleared by hand).
//!
//! An event names what was pushed (a digest and its tags), so a destination that was down
//! for a while receives the same sequence of tag moves in the same order once it is back. A
//! push whose manifest has since been deleted here is skipped: a later event says so.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::Notify;

use super::dest::Destination;
use super::set::Mirror;
use super::source::Source;
use super::sync::{self, CopyError};
use crate::config::{Action, ReplicationRule, UpstreamConfig};
use crate::oci::pattern::Pattern;
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::proxy::Upstream;
use crate::repo::deliver::{Deliver, Failure, QueueMetrics, Worker};
use crate::repo::queue::{self, Entry, Event, Queue};
use crate::repo::{RepoError, Repository};
use crate::store::{MetaKey, QueueName, Store};

#[derive(Debug, thiserror::Error)]
#[error("replication[{index}].{field}: {reason}")]
pub struct RuleError {
    pub index: usize,
    pub field: &'static str,
    pub reason: String,
}

/// One rule, validated, with its destination client.
pub struct Rule {
    pub name: QueueName,
    repositories: Pattern,
    prefix: String,
    push: bool,
    delete: bool,
    reconcile_every: Option<Duration>,
    dest: Destination,
    wake: Notify,
}

impl Rule {
    fn from_config(index: usize, cfg: &ReplicationRule) -> Result<Rule, RuleError> {
        let bad = |field, reason: String| RuleError {
            index,
            field,
            reason,
        };
        let name = cfg
            .name
            .parse()
            .map_err(|e: crate::store::layout::QueueNameError| bad("name", e.to_string()))?;
        let repositories =
            Pattern::parse(&cfg.repositories).map_err(|e| bad("repositories", e.to_string()))?;
        let prefix = cfg.prefix.clone().unwrap_or_default();
        if !prefix.is_empty() && format!("{prefix}x").parse::<RepoName>().is_err() {
            return Err(bad(
                "prefix",
                format!("{prefix:?} cannot start a repository name (e.g. `dr/`)"),
            ));
        }
        let (mut push, mut delete) = (cfg.actions.is_empty(), cfg.actions.is_empty());
        for a in &cfg.actions {
            match a {
                Action::Push => push = true,
                Action::Delete => delete = true,
                Action::Pull => {
                    return Err(bad("actions", "only push and delete are replicated".into()));
                }
            }
        }
        let every = cfg.reconcile_every.as_deref().unwrap_or("1h");
        let reconcile_every = humantime::parse_duration(every)
            .map_err(|e| bad("reconcileEvery", format!("{every:?}: {e}")))?;
        let upstream = Upstream::from_config(
            index,
            &UpstreamConfig {
                prefix: cfg.name.clone(),
                url: cfg.url.clone(),
                username: cfg.username.clone(),
                password_file: cfg.password_file.clone(),
                ..UpstreamConfig::default()
            },
            crate::proxy::metrics::ProxyMetrics::default(),
        )
        .map_err(|e| bad(e.field, e.reason))?;
        Ok(Rule {
            name,
            repositories,
            prefix,
            push,
            delete,
            reconcile_every: Some(reconcile_every).filter(|d| !d.is_zero()),
            dest: Destination::Registry(Box::new(upstream)),
            wake: Notify::new(),
        })
    }

    fn covers(&self, repo: &RepoName) -> bool {
        self.repositories.matches(repo.as_str())
    }

    /// The repository `repo` is replicated to.
    fn destination(&self, repo: &RepoName) -> Result<RepoName, String> {
        format!("{}{repo}", self.prefix)
            .parse()
            .map_err(|_| format!("{}{repo} is not a repository name", self.prefix))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

/// Per rule: the queue's figures (`repo::deliver`) and what reconciles copied.
#[derive(Clone, Debug, Default)]
pub struct ReplicationMetrics {
    pub queue: QueueMetrics<RuleLabels>,
    pub reconciled: Family<RuleLabels, Counter>,
}

impl ReplicationMetrics {
    fn label(rule: &Rule) -> RuleLabels {
        RuleLabels {
            rule: rule.name.to_string(),
        }
    }
}

/// The rules of one registry.
pub struct Replication {
    rules: Vec<Rule>,
    pub metrics: ReplicationMetrics,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|r| r.name.as_str()))
            .finish()
    }
}

impl Replication {
    /// Validates the rules (and reads the credentials files); `None` when there are none.
    pub fn from_config(rules: &[ReplicationRule]) -> Result<Option<Replication>, RuleError> {
        if rules.is_empty() {
            return Ok(None);
        }
        let rules: Vec<Rule> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| Rule::from_config(i, r))
            .collect::<Result<_, _>>()?;
        for (i, r) in rules.iter().enumerate() {
            if rules[..i].iter().any(|o| o.name == r.name) {
                return Err(RuleError {
                    index: i,
                    field: "name",
                    reason: format!("{} names another rule too", r.name),
                });
            }
        }
        Ok(Some(Replication {
            rules,
            metrics: ReplicationMetrics::default(),
        }))
    }

    pub fn rules(&self) -> impl Iterator<Item = (&QueueName, &str)> {
        self.rules.iter().map(|r| {
            let url = match &r.dest {
                Destination::Registry(u) => u.url.as_str(),
                _ => "",
            };
            (&r.name, url)
        })
    }

    /// Records that `digest` was pushed to `repo` with `tags`, in every rule that takes it;
    /// returns once the events are on disk.
    pub async fn pushed(
        &self,
        store: &dyn Store,
        repo: &RepoName,
        digest: &Digest,
        tags: &[&Tag],
    ) -> Result<(), RepoError> {
        self.record(store, repo, |r| r.push, || Event::push(repo, digest, tags))
            .await
    }

    /// Records that `reference` (a tag, or a manifest by digest) was deleted from `repo`.
    pub async fn deleted(
        &self,
        store: &dyn Store,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(), RepoError> {
        self.record(
            store,
            repo,
            |r| r.delete,
            || match reference {
                Reference::Tag(t) => Event::delete_tag(repo, t),
                Reference::Digest(d) => Event::delete_manifest(repo, d),
            },
        )
        .await
    }

    async fn record(
        &self,
        store: &dyn Store,
        repo: &RepoName,
        takes: impl Fn(&Rule) -> bool,
        event: impl Fn() -> Event,
    ) -> Result<(), RepoError> {
        for rule in self.rules.iter().filter(|r| takes(r) && r.covers(repo)) {
            Queue::new(store, &rule.name).push(&event()).await?;
            rule.wake.notify_one();
        }
        Ok(())
    }

    /// Runs every rule's delivery in the background for the life of the process.
    pub fn spawn(self: &Arc<Self>, store: Arc<dyn Store>) {
        let me = format!("{:016x}", rand::random::<u64>());
        for i in 0..self.rules.len() {
            let (this, store, me) = (self.clone(), store.clone(), me.clone());
            tokio::spawn(async move {
                let rule = &this.rules[i];
                let to = RuleDelivery {
                    repl: &this,
                    rule,
                    store: &store,
                };
                Worker {
                    store: store.clone(),
                    name: &rule.name,
                    me: &me,
                    wake: &rule.wake,
                    metrics: &this.metrics.queue,
                    label: ReplicationMetrics::label(rule),
                    to: &to,
                }
                .run()
                .await
            });
        }
    }

    /// Whether the rule's last reconcile (by any replica, as the store records it) is older
    /// than its period; records now as the start of a new one when it is.
    async fn reconcile_due(&self, rule: &Rule, store: &dyn Store) -> bool {
        let Some(every) = rule.reconcile_every else {
            return false;
        };
        let key = MetaKey::queue_reconciled(&rule.name);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = match store.meta_get(&key).await {
            Ok(v) => v
                .and_then(|b| std::str::from_utf8(&b).ok()?.trim().parse::<u64>().ok())
                .unwrap_or(0),
            Err(_) => return false,
        };
        if now_ms.saturating_sub(last) < every.as_millis() as u64 {
            return false;
        }
        store
            .meta_put_volatile(&key, now_ms.to_string().as_bytes())
            .await
            .is_ok()
    }

    /// Sends one event to the destination.
    async fn deliver(&self, rule: &Rule, store: &Arc<dyn Store>, e: &Entry) -> Result<(), Failure> {
        let to = rule
            .destination(&e.repository)
            .map_err(Failure::permanent)?;
        let copy_failed = |err: CopyError| Failure {
            retry: err.retryable(),
            why: err.to_string(),
        };
        match (e.action, &e.digest) {
            (queue::Action::Push, Some(digest)) => {
                let here = Repository::new(&**store, &e.repository);
                if !here.has_manifest(digest).await.map_err(Failure::retry)? {
                    tracing::debug!(rule = %rule.name, repository = %e.repository, %digest, "skipping a push whose manifest is gone");
                    return Ok(());
                }
                let m = Mirror::local(&e.repository, to);
                let source = Source::Store(store.clone());
                let r = sync::copy_image(&m, &source, &rule.dest, digest, &e.tags)
                    .await
                    .map_err(copy_failed)?;
                tracing::info!(rule = %rule.name, repository = %e.repository, %digest, tags = e.tags.len(), blobs = r.blobs_copied, bytes = r.bytes_copied, "replicated a push");
                Ok(())
            }
            (queue::Action::Push, None) => Err(Failure::permanent("a push event without a digest")),
            (queue::Action::Pull, _) => Ok(()), // never queued for replication
            (queue::Action::Delete, digest) => {
                let refs: Vec<Reference> = match digest {
                    Some(d) => vec![Reference::Digest(d.clone())],
                    None => e.tags.iter().cloned().map(Reference::Tag).collect(),
                };
                for r in &refs {
                    rule.dest.delete(&to, r).await.map_err(|err| Failure {
                        retry: err.retryable(),
                        why: err.to_string(),
                    })?;
                    tracing::info!(rule = %rule.name, repository = %e.repository, reference = %r, "replicated a delete");
                }
                Ok(())
            }
        }
    }

    /// Copies every tag of every matching repository that the destination lacks or has
    /// pointing elsewhere.
    async fn reconcile(&self, rule: &Rule, store: &Arc<dyn Store>) {
        let repos = match store.repositories().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(rule = %rule.name, error = %e, "cannot list repositories to reconcile");
                return;
            }
        };
        let source = Source::Store(store.clone());
        let (mut images, mut copied, mut errors) = (0, 0, 0);
        for repo in repos.iter().filter(|r| rule.covers(r)) {
            let Ok(to) = rule.destination(repo) else {
                continue;
            };
            let quiet = super::progress::Progress::quiet();
            let report =
                sync::sync_one(&Mirror::local(repo, to), &source, &rule.dest, &quiet).await;
            images += report.images;
            copied += report.manifests_copied;
            errors += report.errors.len();
            for e in report.errors.iter().take(3) {
                tracing::warn!(rule = %rule.name, error = %e, "reconcile");
            }
        }
        self.metrics
            .reconciled
            .get_or_create(&ReplicationMetrics::label(rule))
            .inc_by(copied);
        tracing::info!(rule = %rule.name, images, manifests_copied = copied, errors, "replication reconciled");
    }
}

/// One rule's deliveries, for its queue's worker.
struct RuleDelivery<'a> {
    repl: &'a Replication,
    rule: &'a Rule,
    store: &'a Arc<dyn Store>,
}

#[async_trait::async_trait]
impl Deliver for RuleDelivery<'_> {
    async fn deliver(&self, entries: &[Entry]) -> Result<(), Failure> {
        for e in entries {
            self.repl.deliver(self.rule, self.store, e).await?;
        }
        Ok(())
    }

    async fn idle(&self) {
        if self.repl.reconcile_due(self.rule, &**self.store).await {
            self.repl.reconcile(self.rule, self.store).await;
        }
    }
}
