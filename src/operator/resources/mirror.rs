//! Mirror spec -> the ConfigMap holding its mirror set file, and the Job (one-shot) or CronJob
//! (scheduled) that runs `berth mirror sync` with it against the Registry's Service, pushing
//! as a client does: with the Registry's admin (or the spec's push Secret) when auth is on,
//! trusting the pods' CA when they serve HTTPS. The container writes its compact JSON report
//! as the termination message, where the operator reads what was copied.

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{Value, json};

use super::{
    BuildError, REGISTRY_PORT, container_security_context, from_json, image, name_ns, names,
    owner_ref, pod_security_context,
};
use super::{Defaults, admin_username, pod_tls_secret};
use crate::mirror::set::{MirrorSetFile, MirrorSpec};
use crate::operator::crd::{Mirror, Registry};

/// Label on every Job (and pod) of one Mirror.
pub const MIRROR_LABEL: &str = "berth.dev/mirror";
/// Where the set file is mounted.
pub const SET_DIR: &str = "/etc/berth-mirror";
pub const SET_FILE: &str = "/etc/berth-mirror/set.yaml";
/// Where entry `i`'s source password Secret is mounted.
pub const SOURCES_DIR: &str = "/etc/berth-mirror-sources";
/// Where the push credentials are mounted.
pub const PUSH_DIR: &str = "/etc/berth-mirror-push";
/// Where the Registry's TLS Secret is mounted, for its CA.
pub const CA_DIR: &str = "/etc/berth-mirror-ca";

pub fn set_config_map_name(mirror: &str) -> String {
    format!("{mirror}-mirror-set")
}

/// The set file the Job reads, each entry checked as `berth mirror sync` would.
pub fn mirror_set(m: &Mirror) -> Result<MirrorSetFile, BuildError> {
    let mirrors: Vec<MirrorSpec> = m
        .spec
        .mirrors
        .iter()
        .enumerate()
        .map(|(i, e)| MirrorSpec {
            source: e.source.clone(),
            tags: e.tags.clone(),
            semver: e.semver.clone(),
            newest: e.newest.map(|n| n as usize),
            newest_by: e.newest_by.map(|b| match b {
                crate::operator::crd::NewestBy::Version => crate::mirror::set::NewestBy::Version,
                crate::operator::crd::NewestBy::Created => crate::mirror::set::NewestBy::Created,
            }),
            platforms: e.platforms.clone(),
            referrers: e.referrers,
            destination: e.destination.clone(),
            username: e.username.clone(),
            password_file: e
                .password_secret
                .as_ref()
                .map(|_| format!("{SOURCES_DIR}/{i}/password").into()),
        })
        .collect();
    for (i, e) in mirrors.iter().enumerate() {
        crate::mirror::set::validate(e).map_err(|(field, reason)| BuildError::Invalid {
            field: match field {
                "source" => "spec.mirrors.source",
                "tags" => "spec.mirrors.tags",
                "platforms" => "spec.mirrors.platforms",
                "destination" => "spec.mirrors.destination",
                "newestBy" => "spec.mirrors.newestBy",
                _ => "spec.mirrors.passwordSecret",
            },
            reason: format!("entry {i}: {reason}"),
        })?;
    }
    Ok(MirrorSetFile { mirrors })
}

pub fn set_config_map(m: &Mirror) -> Result<ConfigMap, BuildError> {
    let (name, ns) = name_ns(m)?;
    let text =
        serde_yaml::to_string(&mirror_set(m)?).map_err(|e| BuildError::Serialize(e.to_string()))?;
    from_json(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": set_config_map_name(&name),
            "namespace": ns,
            "labels": {"app.kubernetes.io/name": "berth", "app.kubernetes.io/managed-by": "berth-operator", MIRROR_LABEL: name},
            "ownerReferences": [owner_ref(m)?],
        },
        "data": { "set.yaml": text },
    }))
}

/// The Secret with `username` and `password` the Job pushes with: the spec's, else the
/// Registry's generated admin; `None` for a Registry without auth.
fn push_secret(m: &Mirror, reg: &Registry) -> Result<Option<(String, Option<String>)>, BuildError> {
    if let Some(s) = &m.spec.push_secret {
        return Ok(Some((s.clone(), None)));
    }
    let (reg_name, _) = name_ns(reg)?;
    if let Some(user) = admin_username(reg) {
        return Ok(Some((names::admin_secret(&reg_name), Some(user))));
    }
    if reg.spec.auth.is_some() {
        return Err(BuildError::Invalid {
            field: "spec.pushSecret",
            reason: format!(
                "Registry {reg_name} has auth without a generated admin: name a Secret with username and password keys that may push"
            ),
        });
    }
    Ok(None)
}

/// The Registry's in-cluster URL, as a mirror Job (or the operator reading /metrics) reaches it.
pub fn registry_url(reg: &Registry) -> Result<String, BuildError> {
    let (name, ns) = name_ns(reg)?;
    let scheme = if pod_tls_secret(reg).is_some() {
        "https"
    } else {
        "http"
    };
    let port = reg
        .spec
        .service
        .as_ref()
        .and_then(|s| s.port)
        .unwrap_or(REGISTRY_PORT);
    Ok(format!("{scheme}://{name}.{ns}.svc:{port}"))
}

fn mirror_labels(mirror: &str, registry: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "berth",
        "app.kubernetes.io/instance": registry,
        "app.kubernetes.io/component": "mirror",
        "app.kubernetes.io/managed-by": "berth-operator",
        MIRROR_LABEL: mirror,
    })
}

fn pod_template(m: &Mirror, reg: &Registry, d: &Defaults) -> Result<Value, BuildError> {
    mirror_set(m)?;
    if !reg.spec.allow_sparse_indexes
        && let Some(i) = m.spec.mirrors.iter().position(|e| !e.platforms.is_empty())
    {
        return Err(BuildError::Invalid {
            field: "spec.mirrors.platforms",
            reason: format!(
                "entry {i} copies some platforms of an index (a sparse index), which Registry {} refuses: set its spec.allowSparseIndexes: true, or take every platform",
                reg.metadata.name.clone().unwrap_or_default()
            ),
        });
    }
    let (name, _) = name_ns(m)?;
    let (reg_name, _) = name_ns(reg)?;
    let mut args: Vec<String> = [
        "mirror",
        "sync",
        "--config",
        SET_FILE,
        "--json",
        "--report-file",
        "/dev/termination-log",
        "--to",
    ]
    .map(String::from)
    .to_vec();
    args.push(registry_url(reg)?);
    let mut volumes = vec![
        json!({"name": "set", "configMap": {"name": set_config_map_name(&name)}}),
        json!({"name": "tmp", "emptyDir": {}}),
    ];
    let mut mounts = vec![
        json!({"name": "set", "mountPath": SET_DIR, "readOnly": true}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    let mut env = vec![];
    if let Some((secret, user)) = push_secret(m, reg)? {
        volumes.push(json!({"name": "push", "secret": {"secretName": secret,
            "items": [{"key": "password", "path": "password"}]}}));
        mounts.push(json!({"name": "push", "mountPath": PUSH_DIR, "readOnly": true}));
        // The user name from the Secret itself when it is the spec's, so one Secret says both.
        match user {
            Some(u) => env.push(json!({"name": "BERTH_MIRROR_USER", "value": u})),
            None => env.push(json!({"name": "BERTH_MIRROR_USER",
                "valueFrom": {"secretKeyRef": {"name": secret, "key": "username"}}})),
        }
        args.extend([
            "--to-username".into(),
            "$(BERTH_MIRROR_USER)".into(),
            "--to-password-file".into(),
            format!("{PUSH_DIR}/password"),
        ]);
    }
    if let Some(tls) = pod_tls_secret(reg) {
        // cert-manager puts the issuing CA in ca.crt; a Secret without it (a public CA) is
        // verified against the system's roots, and the flag names an empty directory's file.
        volumes.push(
            json!({"name": "ca", "secret": {"secretName": tls, "optional": true,
            "items": [{"key": "ca.crt", "path": "ca.crt"}]}}),
        );
        mounts.push(json!({"name": "ca", "mountPath": CA_DIR, "readOnly": true}));
        args.extend(["--to-ca-file".into(), format!("{CA_DIR}/ca.crt")]);
    }
    for (i, e) in m.spec.mirrors.iter().enumerate() {
        if let Some(secret) = &e.password_secret {
            let vol = format!("source-{i}");
            volumes.push(json!({"name": vol, "secret": {"secretName": secret,
                "items": [{"key": "password", "path": "password"}]}}));
            mounts.push(
                json!({"name": vol, "mountPath": format!("{SOURCES_DIR}/{i}"), "readOnly": true}),
            );
        }
    }
    let mut container = json!({
        "name": "mirror",
        "image": image(reg, d),
        "args": args,
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
    });
    if !env.is_empty() {
        container["env"] = json!(env);
    }
    if let Some(r) = &reg.spec.resources {
        container["resources"] = json!(r);
    }
    Ok(json!({
        "metadata": { "labels": mirror_labels(&name, &reg_name) },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": pod_security_context(),
            "containers": [container],
            "volumes": volumes,
        },
    }))
}

/// Secrets a Mirror's Job needs, with the keys each must hold.
pub fn mirror_secrets(m: &Mirror) -> Vec<(String, Vec<&'static str>)> {
    let mut out: Vec<(String, Vec<&'static str>)> = m
        .spec
        .mirrors
        .iter()
        .filter_map(|e| e.password_secret.clone())
        .map(|s| (s, vec!["password"]))
        .collect();
    if let Some(s) = &m.spec.push_secret {
        out.push((s.clone(), vec!["username", "password"]));
    }
    out
}

/// One Job per generation of a one-shot Mirror: editing the spec runs it again.
pub fn mirror_job_name(m: &Mirror) -> Result<String, BuildError> {
    let (name, _) = name_ns(m)?;
    Ok(format!(
        "{name}-sync-{}",
        m.metadata.generation.unwrap_or(1)
    ))
}

pub fn mirror_job(m: &Mirror, reg: &Registry, d: &Defaults) -> Result<Job, BuildError> {
    let (name, ns) = name_ns(m)?;
    let (reg_name, _) = name_ns(reg)?;
    from_json(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": mirror_job_name(m)?,
            "namespace": ns,
            "labels": mirror_labels(&name, &reg_name),
            "ownerReferences": [owner_ref(m)?],
        },
        "spec": {
            // A sync resumes where the last stopped: one retry covers a pod lost with its
            // node; more would hide a source that keeps failing.
            "backoffLimit": 1,
            "template": pod_template(m, reg, d)?,
        },
    }))
}

pub fn mirror_cronjob(m: &Mirror, reg: &Registry, d: &Defaults) -> Result<CronJob, BuildError> {
    let (name, _) = name_ns(m)?;
    let (reg_name, _) = name_ns(reg)?;
    let schedule = m.spec.schedule.clone().unwrap_or_default();
    super::scheduled_job(
        m,
        format!("{name}-sync"),
        mirror_labels(&name, &reg_name),
        &schedule,
        json!({ "backoffLimit": 1, "template": pod_template(m, reg, d)? }),
    )
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::operator::resources::registry::tests::{defaults, minimal};
    use crate::operator::resources::tests::golden;

    pub fn alpine() -> Mirror {
        let mut m: Mirror = serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Mirror",
            "metadata": {"name": "alpine", "namespace": "team", "uid": "m1", "generation": 2},
            "spec": {"registryRef": {"name": "hub"}, "mirrors": [
                {"source": "https://registry-1.docker.io/library/alpine", "semver": ">=3.19 <4",
                 "platforms": ["linux/amd64"], "referrers": true, "destination": "mirror/alpine",
                 "username": "me", "passwordSecret": "hub-token"},
                {"source": "https://ghcr.io/org/app", "tags": ["^v1\\."]}]},
        }))
        .unwrap();
        m.metadata.generation = Some(2);
        m
    }

    #[test]
    fn a_mirror_renders_a_set_file_sync_accepts_and_a_job_that_pushes_through_the_service() {
        let m = alpine();
        let mut reg = minimal();
        reg.spec.allow_sparse_indexes = true;
        let cm = set_config_map(&m).unwrap();
        let text = &cm.data.as_ref().unwrap()["set.yaml"];
        let file: MirrorSetFile = serde_yaml::from_str(text).unwrap();
        assert_eq!(
            file.mirrors[0].password_file.as_deref(),
            Some(std::path::Path::new("/etc/berth-mirror-sources/0/password"))
        );
        golden(
            "mirror_job.json",
            &mirror_job(&m, &reg, &defaults()).unwrap(),
        );
        let job = serde_json::to_value(mirror_job(&m, &reg, &defaults()).unwrap()).unwrap();
        let args = &job["spec"]["template"]["spec"]["containers"][0]["args"];
        assert_eq!(job["metadata"]["name"], "alpine-sync-2");
        assert!(
            args.as_array()
                .unwrap()
                .contains(&json!("http://hub.team.svc:5000"))
        );
        assert_eq!(
            mirror_secrets(&m),
            [("hub-token".to_owned(), vec!["password"])]
        );
        let mut scheduled = m.clone();
        scheduled.spec.schedule = Some("0 * * * *".into());
        let cron = mirror_cronjob(&scheduled, &reg, &defaults()).unwrap();
        assert_eq!(cron.metadata.name.as_deref(), Some("alpine-sync"));
    }

    #[test]
    fn bad_entries_and_missing_credentials_name_the_field() {
        let field = |m: &Mirror, reg: &Registry| match mirror_job(m, reg, &defaults()) {
            Err(BuildError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let mut reg = minimal();
        reg.spec.allow_sparse_indexes = true;
        // Platforms make a sparse index, which the Registry must accept.
        assert_eq!(field(&alpine(), &minimal()), "spec.mirrors.platforms");
        let mut m = alpine();
        m.spec.mirrors[1].tags.clear();
        assert_eq!(field(&m, &reg), "spec.mirrors.tags");
        let mut m = alpine();
        m.spec.mirrors[0].platforms = vec!["linux".into()];
        assert_eq!(field(&m, &reg), "spec.mirrors.platforms");
        let mut m = alpine();
        m.spec.schedule = Some("hourly".into());
        assert!(matches!(
            mirror_cronjob(&m, &reg, &defaults()),
            Err(BuildError::Invalid {
                field: "spec.schedule",
                ..
            })
        ));
        // A Registry with users of its own but no generated admin needs a push Secret.
        let mut locked = reg.clone();
        locked.spec.auth =
            Some(serde_json::from_value(json!({"htpasswdSecret": "users"})).unwrap());
        assert_eq!(field(&alpine(), &locked), "spec.pushSecret");
        let mut with_secret = alpine();
        with_secret.spec.push_secret = Some("ci-push".into());
        let job =
            serde_json::to_value(mirror_job(&with_secret, &locked, &defaults()).unwrap()).unwrap();
        let c = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["env"][0]["valueFrom"]["secretKeyRef"]["name"], "ci-push");
    }
}
