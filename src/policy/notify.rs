//! Webhooks: every push, delete and (sampled) pull in an endpoint's repositories is told to
//! it, in CNCF Distribution's notification envelope (so receivers written for Distribution
//! work) or as CloudEvents. Events ride the same durable queue as push replication
//! (`repo::queue`, one queue per endpoint): a push is answered only once its event is on disk,
//! and one replica at a time delivers each queue in order (`repo::deliver`), up to
//! [`BATCH`] events per request, retrying with backoff. A receiver that hangs, fails or
//! redirects forever delays its own queue and nothing else: no request waits for a webhook.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::PolicyError;
use crate::config::{Action, NotificationFormat, NotificationRule};
use crate::oci::RepoName;
use crate::oci::pattern::Pattern;
use crate::repo::RepoError;
use crate::repo::deliver::{Deliver, Failure, QueueMetrics, Worker};
use crate::repo::queue::{self, Entry, Event, Queue};
use crate::store::{QueueName, Store};

/// Events sent in one request at most: 1,000 pushes a minute to a receiver 100 ms away is
/// 17 a second, well inside what one request at a time carries in batches.
pub const BATCH: usize = 100;
/// The header carrying `sha256=<hex of HMAC-SHA256(key, body)>`.
pub const SIGNATURE_HEADER: &str = "x-berth-signature-256";
const DISTRIBUTION_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";
const CLOUDEVENTS_BATCH_TYPE: &str = "application/cloudevents-batch+json";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

/// One receiver.
pub struct Endpoint {
    pub name: QueueName,
    url: reqwest::Url,
    key: Option<ring::hmac::Key>,
    push: bool,
    delete: bool,
    pull: bool,
    pull_sample: f64,
    repositories: Pattern,
    format: NotificationFormat,
    client: reqwest::Client,
    wake: Notify,
}

impl Endpoint {
    /// Validates entry `i`; with `read_files` also reads its secret (start-up, not the
    /// operator's check).
    fn from_config(
        i: usize,
        cfg: &NotificationRule,
        read_files: bool,
    ) -> Result<Self, PolicyError> {
        let bad = |field, why: String| PolicyError::new("notifications", i, field, why);
        let url = reqwest::Url::parse(&cfg.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| bad("url", format!("{:?} is not an http(s) URL", cfg.url)))?;
        let name_text = match &cfg.name {
            Some(n) => n.clone(),
            None => default_name(&cfg.url),
        };
        let name: QueueName = name_text.parse().map_err(|_| {
            bad(
                "name",
                format!("{name_text:?}: use lowercase letters, digits and '-'"),
            )
        })?;
        let (mut push, mut delete, mut pull) =
            (cfg.actions.is_empty(), cfg.actions.is_empty(), false);
        for a in &cfg.actions {
            match a {
                Action::Push => push = true,
                Action::Delete => delete = true,
                Action::Pull => pull = true,
            }
        }
        let pull_sample = cfg.pull_sample.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&pull_sample) {
            return Err(bad(
                "pullSample",
                format!("{pull_sample} is not between 0 and 1"),
            ));
        }
        let timeout = match cfg.timeout.as_deref() {
            None => Duration::from_secs(5),
            Some(t) => humantime::parse_duration(t)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| bad("timeout", format!("{t:?} is not a duration above 0s (5s)")))?,
        };
        let repositories = Pattern::parse(cfg.repositories.as_deref().unwrap_or("**"))
            .map_err(|e| bad("repositories", e.to_string()))?;
        let key = match (&cfg.secret_file, read_files) {
            (Some(path), true) => {
                let raw = std::fs::read(path)
                    .map_err(|e| bad("secretFile", format!("{}: {e}", path.display())))?;
                let secret = raw.strip_suffix(b"\n").unwrap_or(&raw);
                if secret.is_empty() {
                    return Err(bad("secretFile", format!("{} is empty", path.display())));
                }
                Some(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
            }
            _ => None,
        };
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| bad("url", e.to_string()))?;
        Ok(Endpoint {
            name,
            url,
            key,
            push,
            delete,
            pull,
            pull_sample,
            repositories,
            format: cfg.format.unwrap_or_default(),
            client,
            wake: Notify::new(),
        })
    }

    fn takes(&self, e: &Event, repo: &RepoName) -> bool {
        let wanted = match e.action {
            queue::Action::Push => self.push,
            queue::Action::Delete => self.delete,
            queue::Action::Pull => self.pull,
        };
        wanted && self.repositories.matches(repo.as_str())
    }
}

/// `hook-` and the start of the URL's SHA-256: stable when the list is reordered.
fn default_name(url: &str) -> String {
    let d = crate::oci::Algorithm::Sha256.digest_of(url.as_bytes());
    format!("hook-{}", &d.hex()[..12])
}

/// The endpoints of one registry.
pub struct Notifications {
    endpoints: Vec<Endpoint>,
    pub metrics: QueueMetrics<EndpointLabels>,
    /// This process, in the envelope's `source`.
    instance: String,
}

impl std::fmt::Debug for Notifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.endpoints.iter().map(|e| e.name.as_str()))
            .finish()
    }
}

impl Notifications {
    /// `None` when there are no endpoints.
    pub fn from_config(
        rules: &[NotificationRule],
        read_files: bool,
    ) -> Result<Option<Notifications>, PolicyError> {
        if rules.is_empty() {
            return Ok(None);
        }
        let endpoints: Vec<Endpoint> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| Endpoint::from_config(i, r, read_files))
            .collect::<Result<_, _>>()?;
        for (i, e) in endpoints.iter().enumerate() {
            if endpoints[..i].iter().any(|o| o.name == e.name) {
                return Err(PolicyError::new(
                    "notifications",
                    i,
                    "name",
                    format!("{} names another endpoint too (give each a name)", e.name),
                ));
            }
        }
        Ok(Some(Notifications {
            endpoints,
            metrics: QueueMetrics::default(),
            instance: format!("{:016x}", rand::random::<u64>()),
        }))
    }

    pub fn endpoints(&self) -> impl Iterator<Item = (&QueueName, &str)> {
        self.endpoints.iter().map(|e| (&e.name, e.url.as_str()))
    }

    /// Queues `event` for every endpoint that takes it: on disk before this returns, except
    /// pulls, which are sampled and written without waiting for the disk.
    pub async fn record(&self, store: &dyn Store, event: &Event) -> Result<(), RepoError> {
        let Ok(repo) = event.repository.parse::<RepoName>() else {
            return Ok(());
        };
        for ep in self.endpoints.iter().filter(|ep| ep.takes(event, &repo)) {
            let q = Queue::new(store, &ep.name);
            if event.action == queue::Action::Pull {
                if ep.pull_sample < 1.0 && rand::random::<f64>() >= ep.pull_sample {
                    continue;
                }
                q.push_volatile(event).await?;
            } else {
                q.push(event).await?;
            }
            ep.wake.notify_one();
        }
        Ok(())
    }

    /// Runs every endpoint's delivery in the background for the life of the process.
    pub fn spawn(self: &Arc<Self>, store: Arc<dyn Store>) {
        let me = format!("{:016x}", rand::random::<u64>());
        for i in 0..self.endpoints.len() {
            let (this, store, me) = (self.clone(), store.clone(), me.clone());
            tokio::spawn(async move {
                let ep = &this.endpoints[i];
                let to = EndpointDelivery { n: &this, ep };
                Worker {
                    store,
                    name: &ep.name,
                    me: &me,
                    wake: &ep.wake,
                    metrics: &this.metrics,
                    label: EndpointLabels {
                        endpoint: ep.name.to_string(),
                    },
                    to: &to,
                }
                .run()
                .await
            });
        }
    }
}

struct EndpointDelivery<'a> {
    n: &'a Notifications,
    ep: &'a Endpoint,
}

#[async_trait::async_trait]
impl Deliver for EndpointDelivery<'_> {
    fn batch(&self) -> usize {
        BATCH
    }

    async fn deliver(&self, entries: &[Entry]) -> Result<(), Failure> {
        let (content_type, body) = match self.ep.format {
            NotificationFormat::Distribution => (
                DISTRIBUTION_TYPE,
                json!({ "events": entries.iter().flat_map(|e| distribution_events(e, &self.n.instance)).collect::<Vec<_>>() }),
            ),
            NotificationFormat::Cloudevents => (
                CLOUDEVENTS_BATCH_TYPE,
                Value::Array(
                    entries
                        .iter()
                        .map(|e| cloud_event(e, &self.n.instance))
                        .collect(),
                ),
            ),
        };
        let body = serde_json::to_vec(&body).map_err(Failure::permanent)?;
        let mut req = self
            .ep
            .client
            .post(self.ep.url.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type);
        if let Some(key) = &self.ep.key {
            let tag = ring::hmac::sign(key, &body);
            req = req.header(
                SIGNATURE_HEADER,
                format!("sha256={}", hex::encode(tag.as_ref())),
            );
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| Failure::retry(format!("{}: {}", self.ep.url, chain(&e))))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let why = format!("{} answered {status}", self.ep.url);
        // The receiver refusing what it was sent will refuse it again; anything else
        // (its own failure, throttling, a redirect loop) may pass.
        let permanent = status.is_client_error()
            && !matches!(status.as_u16(), 401 | 403 | 404 | 408 | 409 | 429);
        Err(if permanent {
            Failure::permanent(why)
        } else {
            Failure::retry(why)
        })
    }
}

/// An error with its causes (reqwest's own message hides whether it was a timeout, a refused
/// connection or a redirect loop).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

fn timestamp(e: &Entry) -> String {
    let at = UNIX_EPOCH + Duration::from_micros(e.id.stamp_us());
    humantime::format_rfc3339_micros(at.min(SystemTime::now() + Duration::from_secs(86400)))
        .to_string()
}

fn action_name(a: queue::Action) -> &'static str {
    match a {
        queue::Action::Push => "push",
        queue::Action::Delete => "delete",
        queue::Action::Pull => "pull",
    }
}

/// Distribution's events for one entry: one per tag (a push of several tags is several
/// events, as Distribution sends them), or one without a tag.
fn distribution_events(e: &Entry, instance: &str) -> Vec<Value> {
    let method = match e.action {
        queue::Action::Push => "PUT",
        queue::Action::Delete => "DELETE",
        queue::Action::Pull => "GET",
    };
    let tags: Vec<Option<&str>> = if e.tags.is_empty() {
        vec![None]
    } else {
        e.tags.iter().map(|t| Some(t.as_str())).collect()
    };
    tags.into_iter()
        .enumerate()
        .map(|(n, tag)| {
            let mut target = json!({ "repository": e.repository.as_str() });
            if let Some(d) = &e.digest {
                target["digest"] = json!(d.to_string());
            }
            if let Some(t) = tag {
                target["tag"] = json!(t);
            }
            if let Some(m) = &e.detail.media_type {
                target["mediaType"] = json!(m);
            }
            if let Some(s) = e.detail.size {
                target["size"] = json!(s);
                target["length"] = json!(s);
            }
            json!({
                "id": format!("{}-{n}", e.id.as_str()),
                "timestamp": timestamp(e),
                "action": action_name(e.action),
                "target": target,
                "request": {
                    "id": e.id.as_str(),
                    "addr": e.detail.client.as_deref().unwrap_or(""),
                    "method": method,
                },
                "actor": { "name": e.detail.actor.as_deref().unwrap_or("") },
                "source": { "instanceID": instance },
            })
        })
        .collect()
}

/// One CloudEvents 1.0 event (structured mode) for an entry.
fn cloud_event(e: &Entry, instance: &str) -> Value {
    let subject = match (&e.tags[..], &e.digest) {
        ([t, ..], _) => format!("{}:{t}", e.repository),
        ([], Some(d)) => format!("{}@{d}", e.repository),
        ([], None) => e.repository.to_string(),
    };
    json!({
        "specversion": "1.0",
        "id": e.id.as_str(),
        "source": format!("berth/{instance}"),
        "type": format!("dev.berth.registry.{}", action_name(e.action)),
        "time": timestamp(e),
        "subject": subject,
        "datacontenttype": "application/json",
        "data": {
            "repository": e.repository.as_str(),
            "digest": e.digest.as_ref().map(|d| d.to_string()),
            "tags": e.tags.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            "mediaType": e.detail.media_type,
            "size": e.detail.size,
            "actor": e.detail.actor,
            "client": e.detail.client,
        },
    })
}
