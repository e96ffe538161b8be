//! Pure builders: a Registry (or GarbageCollection) spec in, the Kubernetes objects the operator
//! wants to exist out. No I/O here, so every child object has a golden-output test and
//! `reconcile` only decides what to apply.

mod gc;
mod mirror;
mod policy;
mod proxy;
mod purge;
mod registry;
mod replication;

pub use gc::{GC_LABEL, GcArgs, gc_cronjob, gc_job, gc_job_name};
pub use mirror::{
    MIRROR_LABEL, mirror_cronjob, mirror_job, mirror_job_name, mirror_secrets, registry_url,
    set_config_map,
};
pub use policy::{
    HMAC_KEY, NOTIFICATIONS_DIR, check_public_key, notification_secrets, notification_volumes,
    signature_keys,
};
pub use proxy::{upstream_secrets, upstream_volumes};
pub use purge::{PURGE_CONTAINER, purge_job, purge_job_name};
pub use registry::{
    admin_secret, admin_username, auth_secret, certificate, check_spec, config_hash, config_map,
    deployment, generate_password, horizontal_pod_autoscaler, ingress, persistent_volume_claim,
    pod_config_hash, pod_disruption_budget, pod_tls_secret, render_config, service,
    service_dns_names, token_key_secret, trusted_issuers, wants_token_key,
};
pub use replication::{replication_secrets, replication_volumes};

use std::collections::BTreeMap;

use kube::Resource;
use serde::de::DeserializeOwned;

use super::crd::Registry;

/// Port the registry container listens on.
pub const REGISTRY_PORT: i32 = 5000;
/// Where the rendered config is mounted; `berth serve --config` and `berth gc --config` read it.
pub const CONFIG_DIR: &str = "/etc/berth";
pub const CONFIG_FILE: &str = "/etc/berth/config.yaml";
/// Where the htpasswd Secret (the user's, or the generated admin one) is mounted, read-only.
pub const AUTH_DIR: &str = "/etc/berth-auth";
/// Where the pod's own TLS Secret is mounted, read-only.
pub const TLS_DIR: &str = "/etc/berth-tls";
/// Where the token signing key Secret is mounted, read-only.
pub const TOKEN_DIR: &str = "/etc/berth-token";
/// Where trusted token issuers' public keys are mounted, one directory per issuer.
pub const TRUSTED_ISSUERS_DIR: &str = "/etc/berth-trusted";
/// The key of a trusted issuer's Secret that holds its public key.
pub const PUBLIC_KEY: &str = "public-key.pem";
/// The key of the generated token Secret that holds the signing key.
pub const TOKEN_KEY: &str = "token-key.pem";
/// Where the PVC is mounted, the filesystem store's root.
pub const DATA_DIR: &str = "/var/lib/berth";
/// Pod template annotation whose change rolls the pods when the config changes.
pub const CONFIG_HASH_ANNOTATION: &str = "berth.dev/config-hash";
/// The non-root user the image runs as.
pub const RUN_AS_USER: i64 = 65532;

/// Things that are not in the spec but shape the objects.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// The operator's own image, used when `spec.image` is empty.
    pub image: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{kind} has no {field} yet (the API server sets it)")]
    MissingMeta {
        kind: &'static str,
        field: &'static str,
    },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("cannot serialize {0}")]
    Serialize(String),
}

/// Names of the children, in one place.
pub mod names {
    pub fn config_map(registry: &str) -> String {
        format!("{registry}-config")
    }
    pub fn data_pvc(registry: &str) -> String {
        format!("{registry}-data")
    }
    pub fn admin_secret(registry: &str) -> String {
        format!("{registry}-admin")
    }
    pub fn tls_secret(registry: &str) -> String {
        format!("{registry}-tls")
    }
    pub fn token_key_secret(registry: &str) -> String {
        format!("{registry}-token-key")
    }
}

/// Labels every child of a Registry carries; the first two are the pod selector.
pub fn labels(registry: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "berth".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), registry.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "berth-operator".to_owned(),
        ),
    ])
}

pub fn selector(registry: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "berth".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), registry.to_owned()),
    ])
}

pub(crate) fn name_ns<K: Resource>(obj: &K) -> Result<(String, String), BuildError> {
    let kind = "object";
    let name = obj.meta().name.clone().ok_or(BuildError::MissingMeta {
        kind,
        field: "metadata.name",
    })?;
    let ns = obj
        .meta()
        .namespace
        .clone()
        .ok_or(BuildError::MissingMeta {
            kind,
            field: "metadata.namespace",
        })?;
    Ok((name, ns))
}

pub(crate) fn owner_ref<K: Resource<DynamicType = ()>>(
    obj: &K,
) -> Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference, BuildError> {
    obj.controller_owner_ref(&())
        .ok_or(BuildError::MissingMeta {
            kind: "owner",
            field: "metadata.uid",
        })
}

/// The pod security context every Berth pod runs with: non-root, the image's user, the
/// runtime's default seccomp profile.
pub(crate) fn pod_security_context() -> serde_json::Value {
    serde_json::json!({
        "runAsNonRoot": true,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

/// The container security context every Berth container runs with: read-only root, no
/// privilege escalation, no capabilities.
pub(crate) fn container_security_context() -> serde_json::Value {
    serde_json::json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": { "drop": ["ALL"] },
    })
}

/// The CronJob every scheduled Berth job is (gc, mirror): `template` (a pod template) run on
/// `schedule`, one run at a time (a run still going when the next is due finishes first),
/// three of each outcome kept, and `suspend` applied back to false (the operator sets it while
/// what the runs need is gone).
pub(crate) fn scheduled_job<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: String,
    labels: serde_json::Value,
    schedule: &str,
    job_spec: serde_json::Value,
) -> Result<k8s_openapi::api::batch::v1::CronJob, BuildError> {
    if !is_cron(schedule) {
        return Err(BuildError::Invalid {
            field: "spec.schedule",
            reason: format!("{schedule:?} is not a cron expression such as \"0 3 * * *\""),
        });
    }
    let (_, ns) = name_ns(owner)?;
    from_json(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels,
            "ownerReferences": [owner_ref(owner)?],
        },
        "spec": {
            "schedule": schedule,
            "suspend": false,
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": { "labels": labels },
                "spec": job_spec,
            },
        },
    }))
}

/// Typed object from a JSON literal: the builders read like the YAML they produce.
pub(crate) fn from_json<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, BuildError> {
    serde_json::from_value(v).map_err(|e| BuildError::Serialize(e.to_string()))
}

pub(crate) fn image(reg: &Registry, d: &Defaults) -> String {
    reg.spec
        .image
        .clone()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| d.image.clone())
}

/// A Kubernetes quantity as the API server accepts it: a decimal number with an optional SI or
/// binary suffix (`10Gi`, `500M`, `1.5T`, `1e3`).
pub fn is_quantity(s: &str) -> bool {
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let num = num.strip_prefix(['+', '-']).unwrap_or(num);
    let valid_number = !num.is_empty()
        && num.chars().filter(|c| *c == '.').count() <= 1
        && num.chars().all(|c| c.is_ascii_digit() || c == '.')
        && num.chars().any(|c| c.is_ascii_digit());
    let valid_suffix = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || (suffix.len() > 1
        && (suffix.starts_with('e') || suffix.starts_with('E'))
        && suffix[1..]
            .strip_prefix(['+', '-'])
            .unwrap_or(&suffix[1..])
            .chars()
            .all(|c| c.is_ascii_digit()));
    valid_number && valid_suffix
}

/// A five-field cron expression (or `@daily` and friends) as a CronJob accepts it.
pub fn is_cron(s: &str) -> bool {
    const MACROS: [&str; 7] = [
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    let s = s.trim();
    if s.starts_with('@') {
        return MACROS.contains(&s);
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    const LIMITS: [(u32, u32); 5] = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
    const MONTHS: [&str; 12] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ];
    const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
    if fields.len() != 5 {
        return false;
    }
    let value_ok = |v: &str, i: usize| -> bool {
        let (lo, hi) = LIMITS[i];
        if let Ok(n) = v.parse::<u32>() {
            return (lo..=hi).contains(&n);
        }
        let up = v.to_ascii_uppercase();
        (i == 3 && MONTHS.contains(&up.as_str())) || (i == 4 && DAYS.contains(&up.as_str()))
    };
    fields.iter().enumerate().all(|(i, field)| {
        field.split(',').all(|part| {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (part, None),
            };
            let step_ok = step.is_none_or(|s| s.parse::<u32>().is_ok_and(|n| n > 0));
            let range_ok = match range {
                "*" | "?" => true,
                r => match r.split_once('-') {
                    Some((a, b)) => value_ok(a, i) && value_ok(b, i),
                    None => value_ok(r, i),
                },
            };
            step_ok && range_ok && !part.is_empty()
        })
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Compares `obj` as YAML with `tests/golden/<file>`; `BERTH_BLESS=1` rewrites the file.
    pub fn golden<T: serde::Serialize>(file: &str, obj: &T) {
        let text = serde_yaml::to_string(obj).unwrap();
        let path = format!("{}/tests/golden/{file}", env!("CARGO_MANIFEST_DIR"));
        if std::env::var_os("BERTH_BLESS").is_some() {
            std::fs::create_dir_all(format!("{}/tests/golden", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
            std::fs::write(&path, &text).unwrap();
            return;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            want == text,
            "{path} differs from the builder's output (BERTH_BLESS=1 cargo test rewrites it):\n{text}"
        );
    }

    #[test]
    fn quantities() {
        for ok in ["10Gi", "1", "500M", "1.5T", "100m", "1e3", "+2Ki"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "Gi", "10GB", "ten", "1.2.3Gi", "10 Gi", "-"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn cron_expressions() {
        for ok in [
            "0 3 * * *",
            "*/15 * * * *",
            "0 0 1,15 * MON-FRI",
            "@daily",
            "5 4 * JAN-MAR 0",
        ] {
            assert!(is_cron(ok), "{ok}");
        }
        for bad in [
            "",
            "* * * *",
            "61 * * * *",
            "0 3 * * * *",
            "@sometimes",
            "*/0 * * * *",
            "a b c d e",
        ] {
            assert!(!is_cron(bad), "{bad}");
        }
    }
}
