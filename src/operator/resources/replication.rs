//! Push replication in a Registry: `spec.replication` rendered into Berth's `replication`
//! section, each rule's password Secret mounted in a directory of its own, and the checks
//! `berth serve` makes at start-up made here first, so a bad rule is a condition on the
//! Registry, not a crash loop.

use serde_json::{Value, json};

use super::BuildError;
use crate::config::{Action, ReplicationRule};
use crate::operator::crd::{Registry, ReplicationAction};

/// Where rule `i`'s password Secret is mounted.
pub const REPLICATION_DIR: &str = "/etc/berth-replication";
/// The key of a rule's Secret that holds its password.
pub const PASSWORD_KEY: &str = "password";

pub fn render_replication(reg: &Registry) -> Result<Vec<ReplicationRule>, BuildError> {
    check_replication(reg)?;
    Ok(reg
        .spec
        .replication
        .iter()
        .enumerate()
        .map(|(i, r)| ReplicationRule {
            name: r.name.clone(),
            repositories: r.repositories.clone(),
            url: r.url.clone(),
            prefix: r.prefix.clone(),
            username: r.username.clone(),
            password_file: r
                .password_secret
                .as_ref()
                .map(|_| format!("{REPLICATION_DIR}/{i}/{PASSWORD_KEY}").into()),
            actions: r
                .actions
                .iter()
                .map(|a| match a {
                    ReplicationAction::Push => Action::Push,
                    ReplicationAction::Delete => Action::Delete,
                })
                .collect(),
            reconcile_every: r.reconcile_every.clone(),
        })
        .collect())
}

/// What `berth serve` refuses in a `replication` rule, refused here with the Registry's field.
pub fn check_replication(reg: &Registry) -> Result<(), BuildError> {
    let bad = |field: &'static str, reason: String| Err(BuildError::Invalid { field, reason });
    let rules = &reg.spec.replication;
    for (i, r) in rules.iter().enumerate() {
        let at = format!("rule {i} ({:?})", r.name);
        if r.name.parse::<crate::store::QueueName>().is_err() {
            return bad(
                "spec.replication.name",
                format!("{at}: use lowercase letters, digits and '-'"),
            );
        }
        if rules[..i].iter().any(|o| o.name == r.name) {
            return bad(
                "spec.replication.name",
                format!("{at}: another rule has this name"),
            );
        }
        if let Err(e) = crate::oci::pattern::Pattern::parse(&r.repositories) {
            return bad("spec.replication.repositories", format!("{at}: {e}"));
        }
        let host = r
            .url
            .strip_prefix("https://")
            .or_else(|| r.url.strip_prefix("http://"))
            .map(|rest| rest.trim_end_matches('/'));
        if host.is_none_or(|h| h.is_empty() || h.contains('/'))
            || r.url.contains(char::is_whitespace)
        {
            return bad(
                "spec.replication.url",
                format!(
                    "{at}: {:?} is not a registry's base URL such as https://dr.example.com",
                    r.url
                ),
            );
        }
        if let Some(p) = r.prefix.as_deref().filter(|p| !p.is_empty())
            && format!("{p}x").parse::<crate::oci::RepoName>().is_err()
        {
            return bad(
                "spec.replication.prefix",
                format!("{at}: {p:?} cannot start a repository name (e.g. dr/)"),
            );
        }
        if r.username.is_some() != r.password_secret.is_some() {
            return bad(
                "spec.replication.passwordSecret",
                format!("{at}: set username and passwordSecret together"),
            );
        }
        if let Some(v) = &r.reconcile_every
            && humantime::parse_duration(v).is_err()
        {
            return bad(
                "spec.replication.reconcileEvery",
                format!("{at}: {v:?} is not a duration such as 1h"),
            );
        }
    }
    Ok(())
}

/// The (volume, mount) pairs for the rules' password Secrets; whole-Secret volumes, so a
/// rotated password reaches running pods on their next start.
pub fn replication_volumes(reg: &Registry) -> Vec<(Value, Value)> {
    reg.spec
        .replication
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let secret = r.password_secret.as_ref()?;
            let name = format!("replication-{i}");
            Some((
                json!({"name": name, "secret": {"secretName": secret,
                    "items": [{"key": PASSWORD_KEY, "path": PASSWORD_KEY}]}}),
                json!({"name": name, "mountPath": format!("{REPLICATION_DIR}/{i}"), "readOnly": true}),
            ))
        })
        .collect()
}

/// Secrets the rules name, with the key each must hold.
pub fn replication_secrets(reg: &Registry) -> Vec<(String, Vec<&'static str>)> {
    reg.spec
        .replication
        .iter()
        .filter_map(|r| r.password_secret.clone())
        .map(|s| (s, vec![PASSWORD_KEY]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(rules: Value) -> Registry {
        serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Registry",
            "metadata": {"name": "hub", "namespace": "team", "uid": "u1"},
            "spec": {"storage": {"pvc": {"size": "10Gi"}}, "replication": rules},
        }))
        .unwrap()
    }

    #[test]
    fn rules_render_into_a_config_serve_accepts() {
        let reg = registry(json!([
            {"name": "dr", "repositories": "prod/**", "url": "https://dr.example.com",
             "prefix": "site-a/", "username": "robot", "passwordSecret": "dr-push",
             "actions": ["push"], "reconcileEvery": "30m"},
            {"name": "all", "repositories": "**", "url": "http://backup:5000"}]));
        let rules = render_replication(&reg).unwrap();
        assert_eq!(
            rules[0].password_file.as_deref(),
            Some(std::path::Path::new("/etc/berth-replication/0/password"))
        );
        assert_eq!(rules[0].actions, [Action::Push]);
        assert_eq!(rules[1].password_file, None);
        // serve's own check accepts them (with the password where the pod mounts it).
        let dir = tempfile::tempdir().unwrap();
        let mut local = rules.clone();
        let pw = dir.path().join("password");
        std::fs::write(&pw, "secret\n").unwrap();
        local[0].password_file = Some(pw);
        assert!(
            crate::mirror::replicate::Replication::from_config(&local)
                .unwrap()
                .is_some()
        );
        let (volume, mount) = &replication_volumes(&reg)[0];
        assert_eq!(volume["secret"]["secretName"], "dr-push");
        assert_eq!(mount["mountPath"], "/etc/berth-replication/0");
        assert_eq!(
            replication_secrets(&reg),
            [("dr-push".to_owned(), vec!["password"])]
        );
    }

    #[test]
    fn what_serve_would_refuse_is_refused_naming_the_field() {
        let field = |rules: Value| match check_replication(&registry(rules)) {
            Err(BuildError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let rule = |extra: Value| {
            let mut r = json!({"name": "dr", "repositories": "**", "url": "https://x"});
            r.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            r
        };
        for (extra, want) in [
            (json!({"name": "DR"}), "spec.replication.name"),
            (
                json!({"repositories": "a//b"}),
                "spec.replication.repositories",
            ),
            (json!({"url": "ftp://x"}), "spec.replication.url"),
            (json!({"url": "https://x/path"}), "spec.replication.url"),
            (json!({"prefix": "UP/"}), "spec.replication.prefix"),
            (json!({"username": "u"}), "spec.replication.passwordSecret"),
            (
                json!({"reconcileEvery": "soon"}),
                "spec.replication.reconcileEvery",
            ),
        ] {
            assert_eq!(field(json!([rule(extra.clone())])), want, "{extra}");
        }
        assert_eq!(
            field(json!([rule(json!({})), rule(json!({}))])),
            "spec.replication.name"
        );
    }
}
