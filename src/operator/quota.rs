//! Storage-quota usage in a Registry's status. The registry counts its budgets in its store
//! (shared by every replica) and exports them on its plain `/metrics`; the operator reads
//! them through the Service, folds them into `status.quotas` and announces a budget crossing
//! its warning threshold (either way) with an Event.
//!
//! The read is best effort by design: a registry that is down, slow or answers something
//! else must never fail or stall a reconcile, so every failure here ends in "no fresh
//! figures", the status keeps what it last knew, and the failure is logged once per streak.
//! The parsing, merging and transition logic are pure functions; only [`QuotaReader`] does
//! I/O, and tests point it at their own HTTP server with [`QuotaReader::with_base_url`].

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::events::EventType;

use super::crd::QuotaStatus;

/// The gauges read, by their exported names.
const USED: &str = "berth_quota_used_bytes";
const LIMIT: &str = "berth_quota_limit_bytes";
const WARNING: &str = "berth_quota_warning";

/// The one label the quota gauges carry: the rule's repository pattern.
const QUOTA_LABEL: &str = "quota";

/// How long one read of /metrics may take, connect to last byte.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// A /metrics body larger than this is not what a registry sends.
const MAX_BODY: usize = 4 << 20;

/// Event reasons.
pub const NEARLY_FULL: &str = "QuotaNearlyFull";
pub const BELOW_WARNING: &str = "QuotaBelowWarning";

/// A quota line that is not what the registry writes: the whole answer is then not trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// Why a read brought no figures; logged, never returned from a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the registry's TLS Secret's ca.crt holds no PEM certificate")]
    BadCa,
    #[error("cannot build an HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("GET {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url} answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("GET {url}: the answer exceeds {MAX_BODY} bytes")]
    TooLarge { url: String },
    #[error("GET {url}: not the registry's metrics: {source}")]
    Parse {
        url: String,
        #[source]
        source: ParseError,
    },
    #[error("GET {url}: no quota gauges in the answer")]
    NoFigures { url: String },
}

#[derive(Clone, Copy)]
enum Gauge {
    Used,
    Limit,
    Warning,
}

#[derive(Default)]
struct Partial {
    used: Option<u64>,
    limit: Option<u64>,
    warning: Option<bool>,
}

/// The quota gauges in an OpenMetrics (or Prometheus text) body, one entry per budget that
/// has all three, by repository pattern. Lines of other metrics and comments are skipped;
/// a line of one of the three that does not read exactly as the registry writes it, or a
/// budget with two series of one gauge, makes the whole body an error.
pub fn parse_metrics(text: &str) -> Result<Vec<QuotaStatus>, ParseError> {
    let mut budgets: BTreeMap<String, Partial> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let err = |reason: String| ParseError {
            line: i + 1,
            reason,
        };
        let Some((gauge, name, rest)) = quota_line(line) else {
            continue;
        };
        let (repository, value) = sample(rest).map_err(|r| err(format!("{name}: {r}")))?;
        let b = budgets.entry(repository.clone()).or_default();
        let twice = match gauge {
            Gauge::Used => b.used.replace(bytes(value).map_err(&err)?).is_some(),
            Gauge::Limit => b.limit.replace(bytes(value).map_err(&err)?).is_some(),
            Gauge::Warning => b.warning.replace(flag(value).map_err(&err)?).is_some(),
        };
        if twice {
            return Err(err(format!("{name}: a second series for {repository:?}")));
        }
    }
    Ok(budgets
        .into_iter()
        .filter_map(|(repository, b)| {
            Some(QuotaStatus {
                repository,
                used_bytes: b.used?,
                limit_bytes: b.limit?,
                warning: b.warning?,
            })
        })
        .collect())
}

/// The gauge a line is a sample of, its name and what follows the name; `None` for any
/// other line (`berth_quota_used_bytes_total` is another metric).
fn quota_line(line: &str) -> Option<(Gauge, &'static str, &str)> {
    [
        (Gauge::Used, USED),
        (Gauge::Limit, LIMIT),
        (Gauge::Warning, WARNING),
    ]
    .into_iter()
    .find_map(|(gauge, name)| {
        let rest = line.strip_prefix(name)?;
        matches!(rest.chars().next(), Some('{' | ' ' | '\t') | None).then_some((gauge, name, rest))
    })
}

/// `{quota="..."} value [timestamp]` -> the pattern and the value's text.
fn sample(rest: &str) -> Result<(String, &str), String> {
    let Some(labels) = rest.strip_prefix('{') else {
        return Err("no quota label".into());
    };
    let (pairs, after) = label_set(labels)?;
    let repository = match pairs.as_slice() {
        [(name, value)] if name == QUOTA_LABEL => value.clone(),
        _ => {
            let names: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
            return Err(format!("labels {names:?}, expected only {QUOTA_LABEL:?}"));
        }
    };
    let Some(after) = after.strip_prefix(' ') else {
        return Err("no space before the value".into());
    };
    let mut tokens = after.split(' ');
    let value = tokens.next().unwrap_or_default();
    match (tokens.next(), tokens.next()) {
        (None, _) => {}
        (Some(ts), None) if ts.parse::<f64>().is_ok_and(f64::is_finite) => {}
        _ => return Err(format!("unexpected text after the value: {after:?}")),
    }
    Ok((repository, value))
}

/// Label names and values, in the order written.
type Labels = Vec<(String, String)>;

/// The label pairs up to the closing brace, and the text after it. Values use the
/// exposition format's escapes (`\\`, `\"`, `\n`).
fn label_set(mut s: &str) -> Result<(Labels, &str), String> {
    let mut pairs = vec![];
    loop {
        if let Some(after) = s.strip_prefix('}') {
            return Ok((pairs, after));
        }
        let eq = s.find('=').ok_or("a label without a value")?;
        let name = &s[..eq];
        let valid = name
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if name.is_empty() || !valid {
            return Err(format!("bad label name {name:?}"));
        }
        let Some(quoted) = s[eq + 1..].strip_prefix('"') else {
            return Err(format!("label {name:?} has an unquoted value"));
        };
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("label {name:?} has an unterminated value")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    _ => return Err(format!("label {name:?} has a bad escape")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        pairs.push((name.to_owned(), value));
        s = &quoted[end + 1..];
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("labels not separated by a comma".into());
        }
    }
}

/// A byte count: an integer, or a float with no fraction (as a float gauge prints it).
fn bytes(v: &str) -> Result<u64, String> {
    if let Ok(n) = v.parse::<u64>() {
        return Ok(n);
    }
    match v.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => {
            Ok(f as u64)
        }
        _ => Err(format!("{v:?} is not a byte count")),
    }
}

/// A 0/1 gauge.
fn flag(v: &str) -> Result<bool, String> {
    match v.parse::<f64>() {
        Ok(0.0) => Ok(false),
        Ok(1.0) => Ok(true),
        _ => Err(format!("{v:?} is neither 0 nor 1")),
    }
}

/// The status to write: one entry per budget the spec names, in the spec's order, with the
/// fresh figure when the registry gave one and the last known one otherwise (a failed read,
/// or a replica that has not counted a new budget yet). Budgets the spec dropped go.
pub fn merge(old: &[QuotaStatus], fresh: &[QuotaStatus], budgets: &[&str]) -> Vec<QuotaStatus> {
    budgets
        .iter()
        .filter_map(|b| {
            fresh
                .iter()
                .find(|q| q.repository == *b)
                .or_else(|| old.iter().find(|q| q.repository == *b))
                .cloned()
        })
        .collect()
}

/// An Event to publish about a budget.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaEvent {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

/// Events for budgets whose warning changed between two statuses: Warning when one is
/// nearly full (including one first seen that way), Normal when it falls back below.
pub fn transitions(old: &[QuotaStatus], new: &[QuotaStatus]) -> Vec<QuotaEvent> {
    new.iter()
        .filter_map(|q| {
            let was = old
                .iter()
                .find(|o| o.repository == q.repository)
                .is_some_and(|o| o.warning);
            let usage = format!(
                "quota {} uses {} of {} bytes{}",
                q.repository,
                q.used_bytes,
                q.limit_bytes,
                percent(q)
            );
            match (was, q.warning) {
                (false, true) => Some(QuotaEvent {
                    type_: EventType::Warning,
                    reason: NEARLY_FULL,
                    note: format!(
                        "{usage}, at or past its warning threshold; pushes are refused once it is full: delete images (and run a GarbageCollection) or raise maxBytes"
                    ),
                }),
                (true, false) => Some(QuotaEvent {
                    type_: EventType::Normal,
                    reason: BELOW_WARNING,
                    note: format!("{usage}, below its warning threshold again"),
                }),
                _ => None,
            }
        })
        .collect()
}

fn percent(q: &QuotaStatus) -> String {
    if q.limit_bytes == 0 {
        return String::new();
    }
    let pct = u128::from(q.used_bytes) * 100 / u128::from(q.limit_bytes);
    format!(" ({pct}%)")
}

/// Reads a registry's quota gauges over HTTP(S), logging a failing registry once per streak.
#[derive(Debug)]
pub struct QuotaReader {
    /// Replaces every registry's Service URL (tests point this at their own server).
    base_url: Option<String>,
    timeout: Duration,
    /// Registries (`namespace/name`) whose last read failed, so a down registry warns once.
    failing: Mutex<HashSet<String>>,
}

impl Default for QuotaReader {
    fn default() -> Self {
        QuotaReader {
            base_url: None,
            timeout: READ_TIMEOUT,
            failing: Mutex::new(HashSet::new()),
        }
    }
}

impl QuotaReader {
    /// A reader that asks `base` (`http://127.0.0.1:8080`) instead of each registry's Service.
    pub fn with_base_url(base: impl Into<String>) -> QuotaReader {
        QuotaReader {
            base_url: Some(base.into()),
            ..QuotaReader::default()
        }
    }

    /// Where to ask: the override, or the registry's in-cluster URL.
    pub fn base_url(&self, service_url: String) -> String {
        self.base_url.clone().unwrap_or(service_url)
    }

    /// The registry's figures, or nothing when it cannot be read (the failure is logged:
    /// at warn the first time in a row, at debug after that).
    pub async fn read(
        &self,
        registry: &str,
        base: &str,
        ca_pem: Option<&[u8]>,
    ) -> Vec<QuotaStatus> {
        let result = self.fetch(base, ca_pem).await;
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(figures) => {
                if failing.remove(registry) {
                    tracing::info!(registry, "quota usage readable again");
                }
                figures
            }
            Err(e) => {
                if failing.insert(registry.to_owned()) {
                    tracing::warn!(registry, error = %e, "cannot read quota usage; the status keeps the last figures");
                } else {
                    tracing::debug!(registry, error = %e, "cannot read quota usage");
                }
                vec![]
            }
        }
    }

    async fn fetch(
        &self,
        base: &str,
        ca_pem: Option<&[u8]>,
    ) -> Result<Vec<QuotaStatus>, ReadError> {
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or(ReadError::BadCa)?;
            // Only the registry's own CA vouches for its Service name.
            builder = builder.tls_built_in_root_certs(false);
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder.build().map_err(ReadError::Client)?;
        let url = format!("{}/metrics", base.trim_end_matches('/'));
        let http_err = |source| ReadError::Http {
            url: url.clone(),
            source,
        };
        let mut resp = http.get(&url).send().await.map_err(http_err)?;
        if !resp.status().is_success() {
            return Err(ReadError::Status {
                url,
                status: resp.status(),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(http_err)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(ReadError::TooLarge { url });
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&body);
        let figures = parse_metrics(&text).map_err(|source| ReadError::Parse {
            url: url.clone(),
            source,
        })?;
        if figures.is_empty() {
            return Err(ReadError::NoFigures { url });
        }
        Ok(figures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(repository: &str, used: u64, limit: u64, warning: bool) -> QuotaStatus {
        QuotaStatus {
            repository: repository.into(),
            used_bytes: used,
            limit_bytes: limit,
            warning,
        }
    }

    /// What `berth serve` writes (prometheus-client's OpenMetrics text), trimmed.
    const REGISTRY_METRICS: &str = r#"# HELP berth_requests Requests served.
# TYPE berth_requests counter
berth_requests_total{route="manifest_get",status="200"} 12
# HELP berth_quota_used_bytes Bytes a storage budget counts (each blob once), as the store records it.
# TYPE berth_quota_used_bytes gauge
berth_quota_used_bytes{quota="team-a/**"} 46000000000
berth_quota_used_bytes{quota="base/*"} 10
# HELP berth_quota_limit_bytes A storage budget's limit.
# TYPE berth_quota_limit_bytes gauge
berth_quota_limit_bytes{quota="team-a/**"} 50000000000
berth_quota_limit_bytes{quota="base/*"} 1000
berth_quota_limit_bytes{quota="new/**"} 5
# HELP berth_quota_warning 1 while a budget's usage is at or past its warnAt threshold.
# TYPE berth_quota_warning gauge
berth_quota_warning{quota="team-a/**"} 1
berth_quota_warning{quota="base/*"} 0
# HELP berth_quota_refused Uploads, mounts and manifest pushes refused for a budget.
# TYPE berth_quota_refused counter
berth_quota_refused_total{quota="team-a/**"} 3
# EOF
"#;

    #[test]
    fn reads_each_counted_budget_and_skips_other_lines() {
        assert_eq!(
            parse_metrics(REGISTRY_METRICS).unwrap(),
            // new/** has a limit but no count yet: absent, not zero.
            [
                q("base/*", 10, 1000, false),
                q("team-a/**", 46_000_000_000, 50_000_000_000, true)
            ]
        );
        assert_eq!(parse_metrics("").unwrap(), []);
        assert_eq!(parse_metrics("<html>nope</html>\n").unwrap(), []);
    }

    #[test]
    fn accepts_escapes_float_values_timestamps_and_a_trailing_comma() {
        let text = "berth_quota_used_bytes{quota=\"a\\\"b\\\\c\",} 1.0e3 1700000000\n\
                    berth_quota_limit_bytes{quota=\"a\\\"b\\\\c\"} 2000.0\n\
                    berth_quota_warning{quota=\"a\\\"b\\\\c\"} 0.0\n";
        assert_eq!(
            parse_metrics(text).unwrap(),
            [q("a\"b\\c", 1000, 2000, false)]
        );
    }

    #[test]
    fn a_malformed_quota_line_rejects_the_whole_answer() {
        for (line, why) in [
            ("berth_quota_used_bytes 5", "no quota label"),
            (
                "berth_quota_used_bytes{quota=\"a\"}",
                "no space before the value",
            ),
            ("berth_quota_used_bytes{quota=\"a\"} -5", "not a byte count"),
            (
                "berth_quota_used_bytes{quota=\"a\"} 1.5",
                "not a byte count",
            ),
            (
                "berth_quota_used_bytes{quota=\"a\"} NaN",
                "not a byte count",
            ),
            ("berth_quota_used_bytes{quota=\"a\"} 5 x", "unexpected text"),
            ("berth_quota_used_bytes{quota=\"a} 5", "unterminated"),
            ("berth_quota_used_bytes{quota=a} 5", "unquoted"),
            (
                "berth_quota_used_bytes{quota=\"a\",replica=\"b\"} 5",
                "expected only",
            ),
            ("berth_quota_used_bytes{} 5", "expected only"),
            ("berth_quota_warning{quota=\"a\"} 2", "neither 0 nor 1"),
            ("berth_quota_limit_bytes{quota=\"a\"\"} 5", "comma"),
            ("berth_quota_limit_bytes{quota=\"a\\x\"} 5", "bad escape"),
        ] {
            let text = format!("# TYPE x gauge\n{line}\n");
            let e = parse_metrics(&text).unwrap_err();
            assert_eq!(e.line, 2, "{line}");
            assert!(e.reason.contains(why), "{line}: {e}");
        }
        let twice =
            "berth_quota_used_bytes{quota=\"a\"} 1\nberth_quota_used_bytes{quota=\"a\"} 2\n";
        assert!(
            parse_metrics(twice)
                .unwrap_err()
                .reason
                .contains("second series")
        );
    }

    #[test]
    fn merge_follows_the_spec_and_keeps_what_it_last_knew() {
        let old = [
            q("a", 1, 10, false),
            q("b", 2, 10, false),
            q("gone", 3, 10, true),
        ];
        let fresh = [q("b", 9, 10, true), q("unknown", 1, 1, false)];
        assert_eq!(
            merge(&old, &fresh, &["b", "a", "c"]),
            [q("b", 9, 10, true), q("a", 1, 10, false)]
        );
        assert_eq!(merge(&old, &[], &[]), []);
    }

    #[test]
    fn events_only_when_a_warning_flips() {
        let calm = [q("team-a/**", 10, 100, false)];
        let full = [q("team-a/**", 95, 100, true)];
        let e = transitions(&calm, &full);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].type_, e[0].reason), (EventType::Warning, NEARLY_FULL));
        assert!(
            e[0].note
                .contains("quota team-a/** uses 95 of 100 bytes (95%)"),
            "{}",
            e[0].note
        );
        // Seen nearly full the first time is news too.
        assert_eq!(transitions(&[], &full)[0].reason, NEARLY_FULL);
        assert_eq!(transitions(&full, &full), []);
        assert_eq!(transitions(&full, &[q("team-a/**", 96, 100, true)]), []);
        let back = transitions(&full, &calm);
        assert_eq!(
            (back[0].type_, back[0].reason),
            (EventType::Normal, BELOW_WARNING)
        );
        assert_eq!(transitions(&[], &calm), []);
        assert_eq!(transitions(&full, &[]), [], "a dropped budget is no news");
    }
}
