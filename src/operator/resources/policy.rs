//! The registry's policy in a Registry: `spec.policy` rendered into Berth's `policy` section.
//! Webhook HMAC Secrets are mounted one directory per notification, as replication mounts
//! its passwords; signature public keys are public data, so they travel in the config
//! ConfigMap beside `config.yaml` (whose volume already holds every key it has). The checks
//! `berth serve` makes at start-up run here first, with the same words, so bad policy is a
//! condition on the Registry naming the field, not a crash-looping Deployment.

use serde_json::{Value, json};

use super::{BuildError, CONFIG_DIR};
use crate::config::{
    Action, ImmutableTagRule, NotificationFormat, NotificationRule, PolicyConfig, QuotaRule,
    SignatureRule,
};
use crate::operator::crd::{NotificationAction, NotificationFormatSpec, PolicySpec, Registry};
use crate::policy::PolicyError;

/// Where notification `i`'s HMAC Secret is mounted (`<dir>/<i>/secret`).
pub const NOTIFICATIONS_DIR: &str = "/etc/berth-policy/notifications";
/// The key of a notification's Secret that holds its HMAC key.
pub const HMAC_KEY: &str = "secret";

/// The config ConfigMap's key (and so the file name under [`CONFIG_DIR`]) holding signature
/// rule `i`'s public key.
pub fn signature_key_name(i: usize) -> String {
    format!("signature-{i}.pem")
}

fn policy(reg: &Registry) -> Option<&PolicySpec> {
    reg.spec.policy.as_ref()
}

/// `spec.policy` as Berth's `policy` section, the files it names where the pods mount them.
/// Every field is spelled out, so a new one in the config does not go unrendered unnoticed.
pub fn render_policy(reg: &Registry) -> Result<PolicyConfig, BuildError> {
    let Some(p) = policy(reg) else {
        return Ok(PolicyConfig::default());
    };
    let cfg = PolicyConfig {
        immutable_tags: p
            .immutable_tags
            .iter()
            .map(|r| ImmutableTagRule {
                repository: r.repository.clone(),
                tags: r.tags.clone(),
            })
            .collect(),
        quotas: p
            .quotas
            .iter()
            .map(|q| QuotaRule {
                repository: q.repository.clone(),
                max_bytes: q.max_bytes.clone(),
                warn_at: q.warn_at,
            })
            .collect(),
        notifications: p
            .notifications
            .iter()
            .enumerate()
            .map(|(i, n)| NotificationRule {
                name: n.name.clone(),
                url: n.url.clone(),
                secret_file: n
                    .secret_ref
                    .as_ref()
                    .map(|_| format!("{NOTIFICATIONS_DIR}/{i}/{HMAC_KEY}").into()),
                actions: n
                    .actions
                    .iter()
                    .map(|a| match a {
                        NotificationAction::Push => Action::Push,
                        NotificationAction::Delete => Action::Delete,
                        NotificationAction::Pull => Action::Pull,
                    })
                    .collect(),
                repositories: n.repositories.clone(),
                format: n.format.map(|f| match f {
                    NotificationFormatSpec::Distribution => NotificationFormat::Distribution,
                    NotificationFormatSpec::Cloudevents => NotificationFormat::Cloudevents,
                }),
                pull_sample: n.pull_sample,
                timeout: n.timeout.clone(),
            })
            .collect(),
        signatures: p
            .signatures
            .iter()
            .enumerate()
            .map(|(i, s)| SignatureRule {
                repository: s.repository.clone(),
                public_key: format!("{CONFIG_DIR}/{}", signature_key_name(i)).into(),
                by_digest: s.by_digest,
            })
            .collect(),
        audit_anonymous: p.audit_anonymous,
    };
    check_rendered(reg, &cfg).map_err(invalid)?;
    Ok(cfg)
}

/// What `berth serve` would refuse in `spec.policy`, refused here (see [`render_policy`]).
pub fn check_policy(reg: &Registry) -> Result<(), BuildError> {
    render_policy(reg).map(|_| ())
}

/// serve's own check first (its words, and whatever it learns to check later), then what it
/// cannot see from here: the key text the ConfigMap will hold (serve reads it from a file).
fn check_rendered(reg: &Registry, cfg: &PolicyConfig) -> Result<(), PolicyError> {
    crate::policy::validate(cfg)?;
    let keys = policy(reg).map_or(&[][..], |p| &p.signatures[..]);
    for (i, k) in keys.iter().enumerate() {
        check_public_key(&k.public_key)
            .map_err(|why| PolicyError::new("signatures", i, "publicKey", why))?;
    }
    Ok(())
}

/// A serve-side [`PolicyError`] as the Registry's field: `policy.` becomes `spec.policy.` and
/// the config's file fields their Registry names. `field` is static, so the whole path leads
/// the reason.
fn invalid(e: PolicyError) -> BuildError {
    let path = e.field.replace(".secretFile", ".secretRef");
    BuildError::Invalid {
        field: "spec.policy",
        reason: format!("spec.policy.{path}: {}", e.reason),
    }
}

/// Whether `text` is one or more PEM `PUBLIC KEY` blocks of ECDSA P-256 keys, by the parser
/// the registry uses at start-up; it refuses what people paste by mistake (a private key,
/// which must never sit in a ConfigMap, a certificate, an RSA key).
pub fn check_public_key(text: &str) -> Result<(), String> {
    crate::policy::signature::parse_public_keys(text).map(|_| ())
}

/// The signature keys the config ConfigMap carries: (key, PEM text), in rule order.
pub fn signature_keys(reg: &Registry) -> Vec<(String, String)> {
    policy(reg)
        .iter()
        .flat_map(|p| p.signatures.iter())
        .enumerate()
        .map(|(i, s)| (signature_key_name(i), s.public_key.clone()))
        .collect()
}

/// The (volume, mount) pairs for the notifications' HMAC Secrets; whole-Secret volumes, so a
/// rotated key reaches running pods on their next start.
pub fn notification_volumes(reg: &Registry) -> Vec<(Value, Value)> {
    policy(reg)
        .iter()
        .flat_map(|p| p.notifications.iter())
        .enumerate()
        .filter_map(|(i, n)| {
            let secret = n.secret_ref.as_ref()?;
            let name = format!("notification-{i}");
            Some((
                json!({"name": name, "secret": {"secretName": secret,
                    "items": [{"key": HMAC_KEY, "path": HMAC_KEY}]}}),
                json!({"name": name, "mountPath": format!("{NOTIFICATIONS_DIR}/{i}"), "readOnly": true}),
            ))
        })
        .collect()
}

/// Secrets the notifications name, with the key each must hold.
pub fn notification_secrets(reg: &Registry) -> Vec<(String, Vec<&'static str>)> {
    policy(reg)
        .iter()
        .flat_map(|p| p.notifications.iter())
        .filter_map(|n| n.secret_ref.clone())
        .map(|s| (s, vec![HMAC_KEY]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::operator::resources::registry::tests::{defaults, minimal};
    use crate::operator::resources::tests::golden;
    use crate::operator::resources::{config_hash, config_map, deployment, pod_config_hash};

    /// A P-256 public key as `cosign generate-key-pair` writes it (openssl made this one).
    const P256_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEAGNwvnZFote2Yee5JhrgjTiJtKnV
hboHrEGCn4VYmKo/7HtmOjRtU76hWqP+ysZI0IRBov3T16Cm9cIIUI4SjA==
-----END PUBLIC KEY-----
";
    const RSA_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC3bBwHgoqQb0Rb/sVaXay8V+s5
hx29m7c7KiUQiHhrVN2BsQcSiYI/kzfWyKPyW9NZZvJoogto6cGQ3gEn1LSVA05x
VEo5fr1bRKHBH04o0h4NiLR0I0H5pmCy5PZ7G3uenQJnNclfWLUGCr9CDnmFqKS5
CMX1/nv01cit0Jmq4QIDAQAB
-----END PUBLIC KEY-----
";

    /// `minimal()` with `policy` (YAML) as its spec.policy.
    fn with_policy(policy: &str) -> Registry {
        let mut r = minimal();
        r.spec.policy = Some(serde_yaml::from_str(policy).unwrap());
        r
    }

    /// Every policy field set.
    fn full_policy() -> Registry {
        let key = P256_PEM.replace('\n', "\n      ");
        with_policy(&format!(
            r#"
immutableTags:
  - {{ repository: "prod/**", tags: "^v[0-9]" }}
  - {{ repository: "base/*", tags: "^(stable|lts)$" }}
quotas:
  - {{ repository: "team-a/**", maxBytes: 50Gi, warnAt: 0.8 }}
  - {{ repository: "scratch/**", maxBytes: 1000000000 }}
notifications:
  - name: release-hooks
    url: https://hooks.example.com/registry
    secretRef: registry-hooks
    actions: [push, delete, pull]
    repositories: "prod/**"
    format: cloudevents
    pullSample: 0.1
    timeout: 10s
  - url: http://audit.tools.svc:8080/events
    format: distribution
signatures:
  - repository: "prod/**"
    byDigest: true
    publicKey: |
      {key}
  - repository: "base/**"
    publicKey: |
      {key}
auditAnonymous: true
"#
        ))
    }

    #[test]
    fn every_policy_field_renders_into_a_config_serve_accepts() {
        let r = full_policy();
        let c = crate::operator::resources::render_config(&r).unwrap();
        let p = &c.policy;
        assert_eq!(p.immutable_tags[1].tags, "^(stable|lts)$");
        assert_eq!(p.quotas[0].max_bytes.bytes(), Ok(50 << 30));
        assert_eq!(p.quotas[1].max_bytes.bytes(), Ok(1_000_000_000));
        assert_eq!(
            p.notifications[0].secret_file.as_deref(),
            Some(std::path::Path::new(
                "/etc/berth-policy/notifications/0/secret"
            ))
        );
        assert_eq!(p.notifications[1].secret_file, None);
        assert_eq!(
            p.notifications[0].actions,
            [Action::Push, Action::Delete, Action::Pull]
        );
        assert_eq!(
            p.signatures[1].public_key,
            std::path::PathBuf::from("/etc/berth/signature-1.pem")
        );
        assert!(p.signatures[0].by_digest && !p.signatures[1].by_digest);
        assert!(p.audit_anonymous);

        let cm = config_map(&r, &c).unwrap();
        golden("registry-policy-configmap.yaml", &cm);
        let data = cm.data.as_ref().unwrap();
        assert_eq!(data["signature-0.pem"], P256_PEM);
        // The text is what `berth serve --config` reads, and serve's policy takes it, with
        // the HMAC key where the pod mounts it.
        let text = &data["config.yaml"];
        let mut parsed: Config = serde_yaml::from_str(text).unwrap();
        assert_eq!(parsed, c);
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "hmac-key\n").unwrap();
        parsed.policy.notifications[0].secret_file = Some(secret);
        for (i, s) in parsed.policy.signatures.iter_mut().enumerate() {
            let file = dir.path().join(signature_key_name(i));
            std::fs::write(&file, &data[&signature_key_name(i)]).unwrap();
            s.public_key = file;
        }
        crate::policy::Policy::from_config(&parsed.policy).unwrap();

        let dep = deployment(&r, &defaults(), &pod_config_hash(&r, text)).unwrap();
        golden("registry-policy-deployment.yaml", &dep);
        let (volume, mount) = &notification_volumes(&r)[0];
        assert_eq!(volume["secret"]["secretName"], "registry-hooks");
        assert_eq!(volume["secret"]["items"][0]["key"], "secret");
        assert_eq!(mount["mountPath"], "/etc/berth-policy/notifications/0");
        assert_eq!(
            notification_volumes(&r).len(),
            1,
            "only hooks with a Secret"
        );
        assert_eq!(
            notification_secrets(&r),
            [("registry-hooks".to_owned(), vec!["secret"])]
        );
    }

    #[test]
    fn a_signature_key_changed_in_place_rolls_the_pods() {
        let r = full_policy();
        let text = "addr: x\n";
        let mut other = r.clone();
        let key = &mut other.spec.policy.as_mut().unwrap().signatures[1].public_key;
        *key = format!("{P256_PEM}{P256_PEM}");
        assert_ne!(pod_config_hash(&r, text), pod_config_hash(&other, text));
        // Without keys the hash is the text's, as before: upgrading rolls no pods.
        assert_eq!(pod_config_hash(&minimal(), text), config_hash(text));
        assert_eq!(
            config_map(&minimal(), &Config::default())
                .unwrap()
                .data
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn bad_policy_names_the_field_in_the_registry() {
        let reason = |policy: &str| match check_policy(&with_policy(policy)) {
            Err(BuildError::Invalid { field, reason }) => {
                assert_eq!(field, "spec.policy");
                reason
            }
            other => panic!("{policy}: {other:?}"),
        };
        let key = |pem: &str| {
            format!(
                "signatures: [{{ repository: \"**\", publicKey: {:?} }}]",
                pem
            )
        };
        let cases = [
            (
                "immutableTags: [{ repository: a, tags: x }, { repository: b, tags: \"(\" }]"
                    .to_owned(),
                "spec.policy.immutableTags[1].tags: ",
            ),
            (
                "immutableTags: [{ repository: \"a//b\", tags: x }]".into(),
                "spec.policy.immutableTags[0].repository: ",
            ),
            (
                "quotas: [{ repository: a, maxBytes: 1Gi, warnAt: 2 }]".into(),
                "spec.policy.quotas[0].warnAt: 2 is not between 0 and 1",
            ),
            (
                "quotas: [{ repository: a, maxBytes: 50GB }]".into(),
                "spec.policy.quotas[0].maxBytes: ",
            ),
            (
                "quotas: [{ repository: a, maxBytes: 0 }]".into(),
                "spec.policy.quotas[0].maxBytes: a budget must be above 0 bytes",
            ),
            (
                "notifications: [{ url: \"ftp://x\" }]".into(),
                "spec.policy.notifications[0].url: ",
            ),
            (
                "notifications: [{ url: \"https://a\", timeout: 0s }]".into(),
                "spec.policy.notifications[0].timeout: ",
            ),
            (
                "notifications: [{ url: \"https://a\" }, { url: \"https://a\" }]".into(),
                "spec.policy.notifications[1].name: ",
            ),
            (
                "notifications: [{ url: \"https://a\", pullSample: 1.5 }]".into(),
                "spec.policy.notifications[0].pullSample: ",
            ),
            (key(RSA_PEM), "spec.policy.signatures[0].publicKey: "),
            (
                key("ssh-ed25519 AAAA"),
                "spec.policy.signatures[0].publicKey: no PUBLIC KEY block",
            ),
            (
                format!(
                    "{}\nimmutableTags: []",
                    key(&P256_PEM.replace("PUBLIC KEY", "PRIVATE KEY"))
                ),
                "spec.policy.signatures[0].publicKey: this is a private key",
            ),
        ];
        for (policy, want) in cases {
            let got = reason(&policy);
            assert!(got.starts_with(want), "{policy}: {got}");
        }
        // What the CRD's own rules and serve accept passes here too.
        check_policy(&full_policy()).unwrap();
        check_policy(&minimal()).unwrap();
    }

    #[test]
    fn public_keys_must_be_p256_pem() {
        check_public_key(P256_PEM).unwrap();
        check_public_key(&format!("\n{P256_PEM}\n{P256_PEM}")).unwrap();
        for bad in [
            "",
            RSA_PEM,
            "-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----\n",
            "-----BEGIN PUBLIC KEY-----\nMFkw\n",
            "-----BEGIN CERTIFICATE-----\nMFkw\n-----END CERTIFICATE-----\n",
        ] {
            assert!(check_public_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_crd_schema_checks_policy_too() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(Registry::crd()).unwrap();
        let p = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["policy"]["properties"];
        // int-or-string: the flag and no `type`, as a structural schema needs.
        let max = &p["quotas"]["items"]["properties"]["maxBytes"];
        assert_eq!(max["x-kubernetes-int-or-string"], true);
        assert!(max.get("type").is_none(), "{max}");
        let size = regex::Regex::new(max["pattern"].as_str().unwrap()).unwrap();
        for ok in ["50Gi", "2T", "1000"] {
            assert!(size.is_match(ok), "{ok}");
            crate::config::parse_bytes(ok).unwrap();
        }
        for bad in ["50GB", "1.5Gi", "", "Gi"] {
            assert!(!size.is_match(bad), "{bad}");
        }
        let warn = &p["quotas"]["items"]["properties"]["warnAt"];
        assert_eq!(
            (warn["minimum"].as_f64(), warn["maximum"].as_f64()),
            (Some(0.0), Some(1.0))
        );
        let n = &p["notifications"];
        assert!(
            n["x-kubernetes-validations"][0]["rule"]
                .as_str()
                .unwrap()
                .contains("exists_one")
        );
        let hook = &n["items"]["properties"];
        assert_eq!(
            hook["format"]["enum"],
            json!(["distribution", "cloudevents", null])
        );
        assert_eq!(hook["actions"]["x-kubernetes-list-type"], "set");
        assert_eq!(hook["name"]["maxLength"], 63);
        let pem = regex::Regex::new(
            p["signatures"]["items"]["properties"]["publicKey"]["pattern"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert!(pem.is_match(P256_PEM) && pem.is_match(&format!("{P256_PEM}{P256_PEM}")));
        assert!(!pem.is_match("ssh-ed25519 AAAA") && !pem.is_match(""));
    }
}
