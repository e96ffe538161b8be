//! Status conditions (Ready, Progressing, Degraded): build them, and merge a new set into the old
//! one so that `lastTransitionTime` only moves when a condition's status really changes. That
//! is what lets a steady-state reconcile compare statuses and write nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// A condition as a reconcile wants it; the transition time is filled in by [`merge`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

pub fn wanted(
    type_: &'static str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
) -> Wanted {
    Wanted {
        type_,
        status,
        reason: reason.to_owned(),
        message: message.into(),
    }
}

fn status_str(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// The conditions to write: each wanted one, keeping the old transition time when the status
/// did not change.
pub fn merge(
    old: &[Condition],
    wanted: &[Wanted],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    wanted
        .iter()
        .map(|w| {
            let status = status_str(w.status).to_owned();
            let last_transition_time = old
                .iter()
                .find(|c| c.type_ == w.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: w.type_.to_owned(),
                status,
                reason: w.reason.clone(),
                message: w.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Conditions whose status differs between `old` and `new` (what deserves an Event).
pub fn transitions<'a>(old: &[Condition], new: &'a [Condition]) -> Vec<&'a Condition> {
    new.iter()
        .filter(|n| {
            !old.iter()
                .any(|o| o.type_ == n.type_ && o.status == n.status && o.reason == n.reason)
        })
        .collect()
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// Conditions for something the operator cannot act on until the problem in `message` is
/// fixed (a bad spec, a missing Registry or Secret).
pub fn blocked(reason: &str, message: &str) -> Vec<Wanted> {
    vec![
        wanted(READY, false, reason, message),
        wanted(
            PROGRESSING,
            false,
            reason,
            "waiting for the problem above to be fixed",
        ),
        wanted(DEGRADED, true, reason, message),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let first = merge(
            &[],
            &[wanted(READY, false, "Starting", "0/1")],
            Some(1),
            &t(10),
        );
        assert_eq!(first[0].last_transition_time, t(10));
        let same = merge(
            &first,
            &[wanted(READY, false, "Starting", "0/1 still")],
            Some(1),
            &t(20),
        );
        assert_eq!(same[0].last_transition_time, t(10));
        assert!(transitions(&first, &same).is_empty());
        let flipped = merge(
            &same,
            &[wanted(READY, true, "Available", "1/1")],
            Some(1),
            &t(30),
        );
        assert_eq!(flipped[0].last_transition_time, t(30));
        assert_eq!(transitions(&same, &flipped).len(), 1);
        assert!(is_true(&flipped, READY));
    }
}
