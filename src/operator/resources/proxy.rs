//! The pull-through cache in a Registry: `spec.proxy` rendered into Berth's `proxy` section,
//! upstream password Secrets mounted one directory per upstream, and the checks `berth serve`
//! would make at start-up made here first, so a bad spec is a condition, not a crash loop.

use serde_json::{Value, json};

use super::BuildError;
use crate::config::{ProxyConfig, ProxyRetentionConfig, UpstreamConfig};
use crate::operator::crd::Registry;

/// Where upstream `i`'s password Secret is mounted.
pub const UPSTREAMS_DIR: &str = "/etc/berth-upstreams";
/// The key of an upstream's Secret that holds its password.
pub const PASSWORD_KEY: &str = "password";

pub fn render_proxy(reg: &Registry) -> Result<Option<ProxyConfig>, BuildError> {
    let Some(p) = &reg.spec.proxy else {
        return Ok(None);
    };
    check_proxy(reg)?;
    Ok(Some(ProxyConfig {
        upstreams: p
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| UpstreamConfig {
                prefix: u.prefix.clone(),
                url: u.url.clone(),
                default: u.default,
                username: u.username.clone(),
                password_file: u
                    .password_secret
                    .as_ref()
                    .map(|_| format!("{UPSTREAMS_DIR}/{i}/{PASSWORD_KEY}").into()),
                tag_ttl: u.tag_ttl.clone(),
                max_connections: u.max_connections.map(|n| n as usize),
                offline: u.offline,
                ca_file: None,
            })
            .collect(),
        retention: p.retention.as_ref().map(|r| ProxyRetentionConfig {
            unpulled_for: r.unpulled_for.clone(),
            max_bytes: r.max_bytes.clone(),
        }),
    }))
}

/// What `berth serve` refuses in a `proxy` section, refused here with the Registry's field.
pub fn check_proxy(reg: &Registry) -> Result<(), BuildError> {
    let Some(p) = &reg.spec.proxy else {
        return Ok(());
    };
    let bad = |field: &'static str, reason: String| Err(BuildError::Invalid { field, reason });
    let mut defaults = 0;
    for (i, u) in p.upstreams.iter().enumerate() {
        let at = format!("upstream {i} ({:?})", u.prefix);
        if u.prefix.parse::<crate::oci::RepoName>().is_err() {
            return bad(
                "spec.proxy.upstreams.prefix",
                format!("{at}: not a repository name prefix such as docker.io"),
            );
        }
        if let Some(o) = p.upstreams[..i].iter().find(|o| {
            o.prefix == u.prefix
                || u.prefix.starts_with(&format!("{}/", o.prefix))
                || o.prefix.starts_with(&format!("{}/", u.prefix))
        }) {
            return bad(
                "spec.proxy.upstreams.prefix",
                format!("{at} overlaps the prefix {:?}", o.prefix),
            );
        }
        let host = u
            .url
            .strip_prefix("https://")
            .or_else(|| u.url.strip_prefix("http://"))
            .map(|rest| rest.split('/').next().unwrap_or_default());
        if host.is_none_or(str::is_empty) || u.url.chars().any(char::is_whitespace) {
            return bad(
                "spec.proxy.upstreams.url",
                format!("{at}: {:?} is not an http(s) URL", u.url),
            );
        }
        if u.username.is_some() != u.password_secret.is_some() {
            return bad(
                "spec.proxy.upstreams.passwordSecret",
                format!("{at}: set username and passwordSecret together"),
            );
        }
        if let Some(v) = &u.tag_ttl
            && let Err(e) = humantime::parse_duration(v)
        {
            return bad(
                "spec.proxy.upstreams.tagTtl",
                format!("{at}: {v:?} is not a duration such as 5m: {e}"),
            );
        }
        if u.max_connections == Some(0) {
            return bad(
                "spec.proxy.upstreams.maxConnections",
                format!("{at}: must be at least 1"),
            );
        }
        defaults += usize::from(u.default);
    }
    if defaults > 1 {
        return bad(
            "spec.proxy.upstreams.default",
            "only one upstream can be the default".into(),
        );
    }
    if let Some(v) = p.retention.as_ref().and_then(|r| r.unpulled_for.as_ref())
        && humantime::parse_duration(v).is_err()
    {
        return bad(
            "spec.proxy.retention.unpulledFor",
            format!("{v:?} is not a duration such as 30d"),
        );
    }
    if let Some(v) = p.retention.as_ref().and_then(|r| r.max_bytes.as_ref())
        && let Err(reason) = crate::config::parse_bytes(v)
    {
        return bad("spec.proxy.retention.maxBytes", reason);
    }
    Ok(())
}

/// The (volume, mount) pairs for the upstreams' password Secrets; whole-Secret volumes, so a
/// rotated password reaches running pods (Berth reads the file at start-up).
pub fn upstream_volumes(reg: &Registry) -> Vec<(Value, Value)> {
    let Some(p) = &reg.spec.proxy else {
        return vec![];
    };
    p.upstreams
        .iter()
        .enumerate()
        .filter_map(|(i, u)| {
            let secret = u.password_secret.as_ref()?;
            let name = format!("upstream-{i}");
            Some((
                json!({"name": name, "secret": {"secretName": secret,
                    "items": [{"key": PASSWORD_KEY, "path": PASSWORD_KEY}]}}),
                json!({"name": name, "mountPath": format!("{UPSTREAMS_DIR}/{i}"), "readOnly": true}),
            ))
        })
        .collect()
}

/// Secrets the spec names, with the keys each must hold (checked before the Deployment).
pub fn upstream_secrets(reg: &Registry) -> Vec<(String, Vec<&'static str>)> {
    reg.spec
        .proxy
        .iter()
        .flat_map(|p| p.upstreams.iter())
        .filter_map(|u| u.password_secret.clone())
        .map(|s| (s, vec![PASSWORD_KEY]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(proxy: serde_json::Value) -> Registry {
        serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Registry",
            "metadata": {"name": "hub", "namespace": "team", "uid": "u1"},
            "spec": {"storage": {"pvc": {"size": "10Gi"}}, "proxy": proxy},
        }))
        .unwrap()
    }

    #[test]
    fn the_proxy_renders_into_a_config_serve_accepts() {
        let reg = registry(json!({"upstreams": [
            {"prefix": "docker.io", "url": "https://registry-1.docker.io", "default": true,
             "username": "me", "passwordSecret": "hub-token", "tagTtl": "10m", "maxConnections": 8},
            {"prefix": "ghcr.io", "url": "https://ghcr.io", "offline": true}],
            "retention": {"unpulledFor": "30d", "maxBytes": "500Gi"}}));
        let cfg = render_proxy(&reg).unwrap().unwrap();
        let text = serde_yaml::to_string(&cfg).unwrap();
        let back: ProxyConfig = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(
            cfg.upstreams[0].password_file.as_deref(),
            Some(std::path::Path::new("/etc/berth-upstreams/0/password"))
        );
        assert_eq!(cfg.upstreams[1].password_file, None);
        // serve's own check accepts it (with the password file where the pod mounts it).
        let dir = tempfile::tempdir().unwrap();
        let mut local = cfg.clone();
        let pw = dir.path().join("password");
        std::fs::write(&pw, "secret\n").unwrap();
        local.upstreams[0].password_file = Some(pw);
        crate::proxy::Proxy::from_config(&local).unwrap();
        let gc = crate::gc::GcOptions::default()
            .with_proxy(Some(&cfg))
            .unwrap();
        let cached = gc.cached.unwrap();
        assert_eq!(cached.unpulled_for.map(|d| d.as_secs()), Some(30 * 86400));
        assert_eq!(cached.max_bytes, Some(500 << 30));
        let (volume, mount) = &upstream_volumes(&reg)[0];
        assert_eq!(volume["secret"]["secretName"], "hub-token");
        assert_eq!(mount["mountPath"], "/etc/berth-upstreams/0");
        assert_eq!(
            upstream_secrets(&reg),
            [("hub-token".to_owned(), vec!["password"])]
        );
    }

    #[test]
    fn what_serve_would_refuse_is_refused_naming_the_field() {
        let field = |proxy: serde_json::Value| match check_proxy(&registry(proxy)) {
            Err(BuildError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let up = |prefix: &str, url: &str| json!({"prefix": prefix, "url": url});
        assert_eq!(
            field(json!({"upstreams": [up("Docker.io", "https://x")]})),
            "spec.proxy.upstreams.prefix"
        );
        assert_eq!(
            field(json!({"upstreams": [up("a", "https://x"), up("a/b", "https://y")]})),
            "spec.proxy.upstreams.prefix"
        );
        assert_eq!(
            field(json!({"upstreams": [up("a", "ftp://x")]})),
            "spec.proxy.upstreams.url"
        );
        assert_eq!(
            field(json!({"upstreams": [{"prefix": "a", "url": "https://x", "username": "u"}]})),
            "spec.proxy.upstreams.passwordSecret"
        );
        assert_eq!(
            field(json!({"upstreams": [{"prefix": "a", "url": "https://x", "tagTtl": "soon"}]})),
            "spec.proxy.upstreams.tagTtl"
        );
        assert_eq!(
            field(
                json!({"upstreams": [{"prefix": "a", "url": "https://x", "default": true}, {"prefix": "b", "url": "https://y", "default": true}]})
            ),
            "spec.proxy.upstreams.default"
        );
        assert_eq!(
            field(json!({"upstreams": [], "retention": {"unpulledFor": "later"}})),
            "spec.proxy.retention.unpulledFor"
        );
        assert_eq!(
            field(json!({"upstreams": [], "retention": {"maxBytes": "5GB"}})),
            "spec.proxy.retention.maxBytes"
        );
    }
}
