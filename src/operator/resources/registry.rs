//! Registry spec -> ConfigMap (the rendered Berth config), admin Secret, PVC, Deployment,
//! Service, and the optional Ingress, PodDisruptionBudget and HorizontalPodAutoscaler.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::{Resource, ResourceExt};
use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{
    AUTH_DIR, BuildError, CONFIG_DIR, CONFIG_FILE, CONFIG_HASH_ANNOTATION, DATA_DIR, Defaults,
    PUBLIC_KEY, REGISTRY_PORT, TLS_DIR, TOKEN_DIR, TOKEN_KEY, TRUSTED_ISSUERS_DIR,
    container_security_context, from_json, image, labels, name_ns, names, owner_ref,
    pod_security_context, selector,
};
use crate::config::{
    self, AccessRule, Action, AuthConfig, Config, FilesystemConfig, LimitsConfig, LogConfig,
    StorageConfig, TlsConfig, TokenConfig, TrustedIssuer,
};
use crate::operator::certmanager::{self, Certificate};
use crate::operator::crd::{AccessAction, LogFormat, Registry, TrustedIssuerSpec};

/// The generated admin's user name (default `admin`), when the spec asks for one.
pub fn admin_username(reg: &Registry) -> Option<String> {
    let admin = reg.spec.auth.as_ref()?.admin.as_ref()?;
    Some(admin.username.clone().unwrap_or_else(|| "admin".to_owned()))
}

/// The Secret whose `htpasswd` key the pods read: the user's `htpasswdSecret`, or the generated
/// `<name>-admin` when an admin user is requested.
pub fn auth_secret(reg: &Registry) -> Option<String> {
    let auth = reg.spec.auth.as_ref()?;
    if let Some(s) = &auth.htpasswd_secret {
        return Some(s.clone());
    }
    auth.admin
        .as_ref()
        .and_then(|_| reg.meta().name.as_deref().map(names::admin_secret))
}

/// The `kubernetes.io/tls` Secret the registry pods serve HTTPS with when there is no Ingress
/// (with an Ingress, TLS ends there and the pods speak HTTP): `spec.tls.secretName`, or
/// `<name>-tls` that cert-manager issues for [`certificate`].
pub fn pod_tls_secret(reg: &Registry) -> Option<String> {
    if reg.spec.ingress.is_some() {
        return None;
    }
    let tls = reg.spec.tls.as_ref()?;
    if let Some(s) = &tls.secret_name {
        return Some(s.clone());
    }
    tls.issuer_ref.as_ref()?;
    reg.meta().name.as_deref().map(names::tls_secret)
}

/// The DNS names in-cluster clients reach the Service by, which the pods' certificate covers,
/// followed by the spec's extra names (a LoadBalancer's DNS name, say).
pub fn service_dns_names(reg: &Registry) -> Result<Vec<String>, BuildError> {
    let (name, ns) = name_ns(reg)?;
    let mut out = vec![
        name.clone(),
        format!("{name}.{ns}"),
        format!("{name}.{ns}.svc"),
        format!("{name}.{ns}.svc.cluster.local"),
    ];
    for extra in reg.spec.tls.iter().flat_map(|t| t.dns_names.iter()) {
        if !out.contains(extra) {
            out.push(extra.clone());
        }
    }
    Ok(out)
}

/// A cert-manager Certificate for the pods when `tls.issuerRef` is set without an Ingress
/// (with an Ingress, cert-manager's ingress-shim makes it from the Ingress annotations).
/// The key is rotated with every renewal; Berth re-reads the mounted files when they change.
pub fn certificate(reg: &Registry) -> Result<Option<Certificate>, BuildError> {
    let Some(issuer) = reg.spec.tls.as_ref().and_then(|t| t.issuer_ref.as_ref()) else {
        return Ok(None);
    };
    if reg.spec.ingress.is_some()
        || reg
            .spec
            .tls
            .as_ref()
            .is_some_and(|t| t.secret_name.is_some())
    {
        return Ok(None);
    }
    let (name, ns) = name_ns(reg)?;
    let secret = names::tls_secret(&name);
    from_json(json!({
        "apiVersion": certmanager::API_VERSION,
        "kind": "Certificate",
        "metadata": {
            "name": secret,
            "namespace": ns,
            "labels": labels(&name, "registry"),
            "ownerReferences": [owner_ref(reg)?],
        },
        "spec": {
            "secretName": secret,
            "dnsNames": service_dns_names(reg)?,
            "issuerRef": {
                "name": issuer.name,
                "kind": issuer.kind.clone().unwrap_or_else(|| "Issuer".to_owned()),
                "group": issuer.group.clone().unwrap_or_else(|| "cert-manager.io".to_owned()),
            },
            "usages": ["server auth", "digital signature", "key encipherment"],
            "privateKey": { "algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always" },
            "secretTemplate": { "labels": labels(&name, "registry") },
        },
    }))
    .map(Some)
}

/// `spec.auth` as Berth's `auth` section, the htpasswd file mounted from [`auth_secret`].
fn render_auth(reg: &Registry) -> Result<AuthConfig, BuildError> {
    let Some(auth) = &reg.spec.auth else {
        return Ok(AuthConfig::default());
    };
    let htpasswd = auth_secret(reg);
    let trusted = auth.token.as_ref().map_or(0, |t| t.trusted_issuers.len());
    if htpasswd.is_none() && trusted == 0 {
        return Err(BuildError::Invalid {
            field: "spec.auth",
            reason: "set htpasswdSecret, admin or token.trustedIssuers".into(),
        });
    }
    let mut access = vec![];
    let mut admins = vec![];
    if let Some(user) = admin_username(reg) {
        // The generated admin can do everything; the spec's rules decide for everyone else.
        // Without rules Berth lets every signed-in user do everything, the admin included.
        admins.push(user.clone());
        if !auth.access.is_empty() {
            access.push(AccessRule {
                repository: "**".into(),
                users: vec![user],
                groups: vec![],
                actions: vec![Action::Pull, Action::Push, Action::Delete],
            });
        }
    }
    for rule in &auth.access {
        // Berth refuses a bad pattern at start-up; say so here instead of crash-looping.
        crate::oci::pattern::Pattern::parse(&rule.repository).map_err(|e| BuildError::Invalid {
            field: "spec.auth.access",
            reason: e.to_string(),
        })?;
        access.push(AccessRule {
            repository: rule.repository.clone(),
            users: rule.users.clone(),
            groups: rule.groups.clone(),
            actions: rule
                .actions
                .iter()
                .map(|a| match a {
                    AccessAction::Pull => Action::Pull,
                    AccessAction::Push => Action::Push,
                    AccessAction::Delete => Action::Delete,
                })
                .collect(),
        });
    }
    let token = auth.token.as_ref().map(|t| TokenConfig {
        realm: t.realm.clone(),
        service: t.service.clone(),
        issuer: t.issuer.clone(),
        key: Some(format!("{TOKEN_DIR}/{TOKEN_KEY}").into()),
        expires_seconds: t.expires_seconds,
        trusted_issuers: t
            .trusted_issuers
            .iter()
            .enumerate()
            .map(|(i, ti)| TrustedIssuer {
                issuer: ti.issuer.clone(),
                public_key: format!("{TRUSTED_ISSUERS_DIR}/{i}/{PUBLIC_KEY}").into(),
            })
            .collect(),
    });
    Ok(AuthConfig {
        htpasswd: htpasswd.map(|_| format!("{AUTH_DIR}/htpasswd").into()),
        admins,
        groups: auth.groups.clone(),
        access,
        trusted_proxies: auth.trusted_proxies.clone(),
        token,
        ..AuthConfig::default()
    })
}

/// The token services whose tokens the spec trusts, in order (their mount directories are
/// numbered by it).
pub fn trusted_issuers(reg: &Registry) -> impl Iterator<Item = &TrustedIssuerSpec> {
    reg.spec
        .auth
        .iter()
        .flat_map(|a| a.token.iter())
        .flat_map(|t| t.trusted_issuers.iter())
}

/// The generated token signing key Secret, when the spec asks for token auth.
pub fn wants_token_key(reg: &Registry) -> bool {
    reg.spec.auth.as_ref().is_some_and(|a| a.token.is_some())
}

/// The token service's signing key (`token-key.pem`, PKCS#8 PEM), shared by every replica.
/// Made once: reconcile creates it only when absent and never overwrites it.
pub fn token_key_secret(reg: &Registry, pem: &str) -> Result<Secret, BuildError> {
    let (name, ns) = name_ns(reg)?;
    let mut secret: Secret = from_json(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": names::token_key_secret(&name),
            "namespace": ns,
            "labels": labels(&name, "credentials"),
            "ownerReferences": [owner_ref(reg)?],
        },
        "type": "Opaque",
    }))?;
    secret.data = Some(BTreeMap::from([(
        TOKEN_KEY.to_owned(),
        ByteString(pem.as_bytes().to_vec()),
    )]));
    Ok(secret)
}

/// The Berth config this Registry's pods read: the same `Config` type `berth serve --config`
/// parses. Spec fields the schema cannot express yet are refused rather than silently dropped,
/// so a Registry never runs with weaker settings than it asked for.
pub fn render_config(reg: &Registry) -> Result<Config, BuildError> {
    let spec = &reg.spec;
    if spec.tls.is_some() && spec.ingress.is_none() && pod_tls_secret(reg).is_none() {
        return Err(BuildError::Invalid {
            field: "spec.tls",
            reason: "set secretName or issuerRef".into(),
        });
    }
    // Berth re-reads the files when they change, so a renewed Secret needs no restart.
    let tls = pod_tls_secret(reg).map(|_| TlsConfig {
        cert: format!("{TLS_DIR}/tls.crt").into(),
        key: format!("{TLS_DIR}/tls.key").into(),
    });
    Ok(Config {
        addr: Some(format!("0.0.0.0:{REGISTRY_PORT}")),
        storage: match &spec.storage.s3 {
            // Credentials stay in their Secret: the pods get them as AWS_* variables.
            Some(s3) => StorageConfig {
                filesystem: None,
                s3: Some(config::S3Config {
                    bucket: s3.bucket.clone(),
                    prefix: s3.prefix.clone(),
                    region: s3.region.clone(),
                    endpoint: s3.endpoint.clone(),
                    path_style: s3.path_style,
                    redirect: s3.redirect,
                    ..config::S3Config::default()
                }),
            },
            None => StorageConfig {
                filesystem: Some(FilesystemConfig {
                    root: DATA_DIR.into(),
                }),
                s3: None,
            },
        },
        log: LogConfig {
            format: Some(match spec.log_format.unwrap_or_default() {
                LogFormat::Plain => config::LogFormat::Plain,
                LogFormat::Json => config::LogFormat::Json,
            }),
            level: None,
        },
        auth: render_auth(reg)?,
        tls,
        limits: spec
            .limits
            .as_ref()
            .map(|l| LimitsConfig {
                max_blob_bytes: l.max_blob_bytes,
                max_upload_sessions: l.max_upload_sessions.map(|n| n as usize),
                max_connections: l.max_connections.map(|n| n as usize),
                header_read_timeout: l.header_read_timeout.clone(),
                idle_timeout: l.idle_timeout.clone(),
            })
            .unwrap_or_default(),
        proxy: super::proxy::render_proxy(reg)?,
        replication: super::replication::render_replication(reg)?,
        policy: super::policy::render_policy(reg)?,
        allow_sparse_indexes: spec.allow_sparse_indexes,
        ..Config::default()
    })
}

/// Hex sha256 of the rendered config text: the pod template annotation that rolls the pods.
pub fn config_hash(config_yaml: &str) -> String {
    hex::encode(Sha256::digest(config_yaml.as_bytes()))
}

/// The pod template annotation's value: the config text and every signature key beside it
/// in the ConfigMap, since the pods read them all at start-up (a key replaced in place must
/// roll the pods too). Without keys it is [`config_hash`] of the text, as it always was.
pub fn pod_config_hash(reg: &Registry, config_yaml: &str) -> String {
    let mut hashed = config_yaml.to_owned();
    for (key, pem) in super::policy::signature_keys(reg) {
        hashed.push_str(&format!("\n--- {key}\n{pem}"));
    }
    config_hash(&hashed)
}

/// The rendered config as `config.yaml`, and the signature rules' public keys beside it
/// (public data; the whole ConfigMap is the pods' config directory).
pub fn config_map(reg: &Registry, config: &Config) -> Result<ConfigMap, BuildError> {
    let (name, ns) = name_ns(reg)?;
    let text = serde_yaml::to_string(config).map_err(|e| BuildError::Serialize(e.to_string()))?;
    let mut data = BTreeMap::from([("config.yaml".to_owned(), text)]);
    data.extend(super::policy::signature_keys(reg));
    from_json(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names::config_map(&name),
            "namespace": ns,
            "labels": labels(&name, "registry"),
            "ownerReferences": [owner_ref(reg)?],
        },
        "data": data,
    }))
}

/// A password of 32 letters and digits from the OS-seeded thread RNG.
pub fn generate_password() -> String {
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// The generated admin credentials: `username`, `password` and an `htpasswd` line (bcrypt).
/// The salt is a parameter so the output is reproducible in tests; reconcile passes random bytes.
/// Made once: reconcile creates it only when absent and never overwrites it.
pub fn admin_secret(
    reg: &Registry,
    username: &str,
    password: &str,
    salt: [u8; 16],
) -> Result<Secret, BuildError> {
    let (name, ns) = name_ns(reg)?;
    let hash = bcrypt::hash_with_salt(password, bcrypt::DEFAULT_COST, salt)
        .map_err(|e| BuildError::Serialize(e.to_string()))?
        .format_for_version(bcrypt::Version::TwoY);
    let data = BTreeMap::from([
        (
            "username".to_owned(),
            ByteString(username.as_bytes().to_vec()),
        ),
        (
            "password".to_owned(),
            ByteString(password.as_bytes().to_vec()),
        ),
        (
            "htpasswd".to_owned(),
            ByteString(format!("{username}:{hash}\n").into_bytes()),
        ),
    ]);
    let mut secret: Secret = from_json(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": names::admin_secret(&name),
            "namespace": ns,
            "labels": labels(&name, "credentials"),
            "ownerReferences": [owner_ref(reg)?],
        },
        "type": "Opaque",
    }))?;
    secret.data = Some(data);
    Ok(secret)
}

pub fn persistent_volume_claim(
    reg: &Registry,
) -> Result<Option<PersistentVolumeClaim>, BuildError> {
    let Some(pvc) = &reg.spec.storage.pvc else {
        return Ok(None);
    };
    if !super::is_quantity(&pvc.size) {
        return Err(BuildError::Invalid {
            field: "spec.storage.pvc.size",
            reason: format!("{:?} is not a quantity such as 10Gi", pvc.size),
        });
    }
    let (name, ns) = name_ns(reg)?;
    // With Delete the PVC is owned and goes with the Registry; with Retain it outlives it.
    let owners = match reg.spec.deletion_policy {
        crate::operator::crd::DeletionPolicy::Delete => vec![owner_ref(reg)?],
        crate::operator::crd::DeletionPolicy::Retain => vec![],
    };
    let mut spec = json!({
        "accessModes": pvc.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".to_owned()]),
        "resources": { "requests": { "storage": pvc.size } },
    });
    if let Some(class) = &pvc.storage_class_name {
        spec["storageClassName"] = json!(class);
    }
    let mut metadata = json!({
        "name": names::data_pvc(&name),
        "namespace": ns,
        "labels": labels(&name, "storage"),
    });
    if !owners.is_empty() {
        metadata["ownerReferences"] = json!(owners);
    }
    from_json(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata,
        "spec": spec,
    }))
    .map(Some)
}

/// What admission refuses by CEL, checked again here: a CRD applied without its rules (or an
/// older copy) must not lead to children the API server refuses one by one.
pub fn check_spec(reg: &Registry) -> Result<(), BuildError> {
    if let Some(reason) = crate::operator::crd::registry_name_problem(&reg.name_any()) {
        return Err(BuildError::Invalid {
            field: "metadata.name",
            reason,
        });
    }
    let spec = &reg.spec;
    if spec
        .autoscaling
        .as_ref()
        .is_some_and(|a| a.target_cpu_utilization_percentage_misspelled.is_some())
    {
        return Err(BuildError::Invalid {
            field: "spec.autoscaling.targetCPUUtilizationPercentage",
            reason: "spelled targetCpuUtilizationPercentage".into(),
        });
    }
    let most = match &spec.autoscaling {
        Some(a) => a.max_replicas,
        None => spec.replicas.unwrap_or(1),
    };
    if most > 1 && single_node_volume(reg) {
        return Err(BuildError::Invalid {
            field: "spec.replicas",
            reason: crate::operator::crd::SINGLE_NODE_MESSAGE.into(),
        });
    }
    check_limits(reg)?;
    super::proxy::check_proxy(reg)?;
    super::replication::check_replication(reg)?;
    super::policy::check_policy(reg)?;
    check_auth_addresses(reg)
}

/// `berth serve` refuses a zero cap and a duration it cannot read or that is zero: say so here
/// rather than let the pods crash-loop.
fn check_limits(reg: &Registry) -> Result<(), BuildError> {
    let Some(l) = &reg.spec.limits else {
        return Ok(());
    };
    let caps = [
        ("spec.limits.maxBlobBytes", l.max_blob_bytes),
        (
            "spec.limits.maxUploadSessions",
            l.max_upload_sessions.map(u64::from),
        ),
        (
            "spec.limits.maxConnections",
            l.max_connections.map(u64::from),
        ),
    ];
    for (field, v) in caps {
        if v == Some(0) {
            return Err(BuildError::Invalid {
                field,
                reason: "must be at least 1".into(),
            });
        }
    }
    let durations = [
        ("spec.limits.headerReadTimeout", &l.header_read_timeout),
        ("spec.limits.idleTimeout", &l.idle_timeout),
    ];
    for (field, v) in durations {
        let Some(v) = v else { continue };
        match humantime::parse_duration(v) {
            Ok(d) if !d.is_zero() => {}
            Ok(_) => {
                return Err(BuildError::Invalid {
                    field,
                    reason: "must be more than 0s".into(),
                });
            }
            Err(e) => {
                return Err(BuildError::Invalid {
                    field,
                    reason: format!("{v:?} is not a duration such as 30s or 2m: {e}"),
                });
            }
        }
    }
    Ok(())
}

/// Trusted proxies must be addresses or CIDRs, and the token realm an absolute `http(s)` URL
/// (clients follow it as it is).
fn check_auth_addresses(reg: &Registry) -> Result<(), BuildError> {
    let Some(auth) = &reg.spec.auth else {
        return Ok(());
    };
    if let Some(bad) = auth
        .trusted_proxies
        .iter()
        .find(|p| config::parse_trusted_proxy(p).is_none())
    {
        return Err(BuildError::Invalid {
            field: "spec.auth.trustedProxies",
            reason: format!("{bad:?} is not an IP address or a CIDR such as 10.0.0.0/8"),
        });
    }
    if let Some(realm) = auth.token.as_ref().and_then(|t| t.realm.as_ref()) {
        let host = realm
            .strip_prefix("https://")
            .or_else(|| realm.strip_prefix("http://"))
            .map(|rest| rest.split('/').next().unwrap_or_default());
        if host.is_none_or(str::is_empty) || realm.chars().any(char::is_whitespace) {
            return Err(BuildError::Invalid {
                field: "spec.auth.token.realm",
                reason: format!(
                    "{realm:?} is not an absolute http(s) URL such as https://registry.example.com/token"
                ),
            });
        }
    }
    Ok(())
}

fn single_node_volume(reg: &Registry) -> bool {
    reg.spec.storage.pvc.as_ref().is_some_and(|p| {
        p.access_modes
            .as_ref()
            .is_none_or(|m| !m.iter().any(|m| m == "ReadWriteMany"))
    })
}

fn one_pod_volume(reg: &Registry) -> bool {
    reg.spec.storage.pvc.as_ref().is_some_and(|p| {
        p.access_modes
            .as_ref()
            .is_some_and(|m| m.iter().any(|m| m == "ReadWriteOncePod"))
    })
}

/// `replicas: 0` with `autoscaling` suspends the registry: no HPA (an HPA cannot scale a
/// Deployment up from 0, it reports ScalingDisabled), the Deployment at 0, status
/// ScaledToZero. Setting replicas back (or removing it) hands the count to the HPA again.
pub fn autoscaling_suspended(reg: &Registry) -> bool {
    reg.spec.autoscaling.is_some() && reg.spec.replicas == Some(0)
}

/// The S3 credentials as `AWS_*` variables read from the Registry's credentials Secret (keys
/// `accessKeyId`, `secretAccessKey`, and optionally `sessionToken`), so they never land in the
/// ConfigMap.
pub fn s3_credentials_env(reg: &Registry) -> Option<Value> {
    let s3 = reg.spec.storage.s3.as_ref()?;
    let from = |var: &str, key: &str, optional: bool| {
        json!({
            "name": var,
            "valueFrom": { "secretKeyRef": {
                "name": s3.credentials_secret, "key": key, "optional": optional,
            }},
        })
    };
    Some(json!([
        from("AWS_ACCESS_KEY_ID", "accessKeyId", false),
        from("AWS_SECRET_ACCESS_KEY", "secretAccessKey", false),
        from("AWS_SESSION_TOKEN", "sessionToken", true),
    ]))
}

pub fn deployment(
    reg: &Registry,
    d: &Defaults,
    config_hash: &str,
) -> Result<Deployment, BuildError> {
    let (name, ns) = name_ns(reg)?;
    let spec = &reg.spec;
    let mut volumes = vec![
        json!({ "name": "config", "configMap": { "name": names::config_map(&name) } }),
        json!({ "name": "tmp", "emptyDir": {} }),
    ];
    if spec.storage.pvc.is_some() {
        volumes.push(json!({
            "name": "data",
            "persistentVolumeClaim": { "claimName": names::data_pvc(&name) },
        }));
    }
    let mut mounts = vec![
        json!({ "name": "config", "mountPath": CONFIG_DIR, "readOnly": true }),
        json!({ "name": "tmp", "mountPath": "/tmp" }),
    ];
    if spec.storage.pvc.is_some() {
        mounts.push(json!({ "name": "data", "mountPath": DATA_DIR }));
    }
    // A whole-Secret volume (no subPath), so edits to the Secret reach the running pods.
    if let Some(secret) = auth_secret(reg) {
        volumes.push(json!({
            "name": "auth",
            "secret": {
                "secretName": secret,
                "items": [{ "key": "htpasswd", "path": "htpasswd" }],
            },
        }));
        mounts.push(json!({ "name": "auth", "mountPath": AUTH_DIR, "readOnly": true }));
    }
    if wants_token_key(reg) {
        volumes.push(json!({
            "name": "token-key",
            "secret": {
                "secretName": names::token_key_secret(&name),
                "items": [{ "key": TOKEN_KEY, "path": TOKEN_KEY }],
            },
        }));
        mounts.push(json!({ "name": "token-key", "mountPath": TOKEN_DIR, "readOnly": true }));
    }
    for (i, ti) in trusted_issuers(reg).enumerate() {
        let volume = format!("trusted-{i}");
        volumes.push(json!({
            "name": volume,
            "secret": {
                "secretName": ti.public_key_secret,
                "items": [{ "key": PUBLIC_KEY, "path": PUBLIC_KEY }],
            },
        }));
        mounts.push(json!({
            "name": volume,
            "mountPath": format!("{TRUSTED_ISSUERS_DIR}/{i}"),
            "readOnly": true,
        }));
    }
    for (volume, mount) in super::proxy::upstream_volumes(reg)
        .into_iter()
        .chain(super::replication::replication_volumes(reg))
        .chain(super::policy::notification_volumes(reg))
    {
        volumes.push(volume);
        mounts.push(mount);
    }
    let tls = pod_tls_secret(reg);
    if let Some(secret) = &tls {
        volumes.push(json!({
            "name": "tls",
            "secret": {
                "secretName": secret,
                "items": [
                    { "key": "tls.crt", "path": "tls.crt" },
                    { "key": "tls.key", "path": "tls.key" },
                ],
            },
        }));
        mounts.push(json!({ "name": "tls", "mountPath": TLS_DIR, "readOnly": true }));
    }
    let scheme = if tls.is_some() { "HTTPS" } else { "HTTP" };
    let probe = |path: &str, period: i32| {
        json!({
            "httpGet": { "path": path, "port": "http", "scheme": scheme },
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        })
    };
    let mut container = json!({
        "name": "registry",
        "image": image(reg, d),
        "args": ["serve", "--config", CONFIG_FILE],
        "ports": [{ "name": "http", "containerPort": REGISTRY_PORT, "protocol": "TCP" }],
        "readinessProbe": probe("/readyz", 5),
        "livenessProbe": probe("/healthz", 10),
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
    });
    if let Some(r) = &spec.resources {
        container["resources"] = json!(r);
    }
    if let Some(env) = s3_credentials_env(reg) {
        container["env"] = env;
    }
    let mut pod_spec = json!({
        "securityContext": pod_security_context(),
        "automountServiceAccountToken": false,
        "containers": [container],
        "volumes": volumes,
    });
    if let Some(v) = &spec.node_selector {
        pod_spec["nodeSelector"] = json!(v);
    }
    if let Some(v) = &spec.tolerations {
        pod_spec["tolerations"] = json!(v);
    }
    if let Some(v) = &spec.affinity {
        pod_spec["affinity"] = json!(v);
    }
    // A ReadWriteOnce volume is attached to one node, but every pod on that node may mount it:
    // the surged pod must land beside the pod holding it (the first pod, matching its own
    // term with no peer yet, may go anywhere). Only ReadWriteOncePod, one pod at a time,
    // needs the old pod gone first.
    if single_node_volume(reg) && !one_pod_volume(reg) {
        let term = json!({
            "labelSelector": { "matchLabels": selector(&name) },
            "topologyKey": "kubernetes.io/hostname",
        });
        let terms = &mut pod_spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
        match terms.as_array_mut() {
            Some(list) => list.push(term),
            None => *terms = json!([term]),
        }
    }
    let strategy = if one_pod_volume(reg) {
        json!({ "type": "Recreate" })
    } else {
        json!({ "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 } })
    };
    let mut dep_spec = json!({
        "selector": { "matchLabels": selector(&name) },
        "strategy": strategy,
        "template": {
            "metadata": {
                "labels": labels(&name, "registry"),
                "annotations": { CONFIG_HASH_ANNOTATION: config_hash },
            },
            "spec": pod_spec,
        },
    });
    // Under an autoscaler the replica count is the HPA's field, not ours (unless the
    // registry is suspended at 0, when there is no HPA).
    if spec.autoscaling.is_none() || autoscaling_suspended(reg) {
        dep_spec["replicas"] = json!(spec.replicas.unwrap_or(1));
    }
    from_json(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels(&name, "registry"),
            "ownerReferences": [owner_ref(reg)?],
        },
        "spec": dep_spec,
    }))
}

pub fn service(reg: &Registry) -> Result<Service, BuildError> {
    let (name, ns) = name_ns(reg)?;
    let svc = reg.spec.service.clone().unwrap_or_default();
    let mut metadata = json!({
        "name": name,
        "namespace": ns,
        "labels": labels(&name, "registry"),
        "ownerReferences": [owner_ref(reg)?],
    });
    if let Some(a) = &svc.annotations {
        metadata["annotations"] = json!(a);
    }
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": svc.type_.unwrap_or_else(|| "ClusterIP".to_owned()),
            "selector": selector(&name),
            "ports": [{
                "name": "http",
                "port": svc.port.unwrap_or(REGISTRY_PORT),
                "targetPort": "http",
                "protocol": "TCP",
            }],
        },
    }))
}

pub fn ingress(reg: &Registry) -> Result<Option<Ingress>, BuildError> {
    let Some(ing) = &reg.spec.ingress else {
        return Ok(None);
    };
    let (name, ns) = name_ns(reg)?;
    // Registries move large blobs: no body limit unless the user sets one.
    let mut annotations = BTreeMap::from([(
        "nginx.ingress.kubernetes.io/proxy-body-size".to_owned(),
        "0".to_owned(),
    )]);
    let mut tls = None;
    if let Some(t) = &reg.spec.tls {
        let secret = match (&t.secret_name, &t.issuer_ref) {
            (Some(s), _) => s.clone(),
            (None, Some(issuer)) => {
                // cert-manager's ingress-shim makes the Certificate from these annotations.
                let key = match issuer.kind.as_deref() {
                    Some("ClusterIssuer") => "cert-manager.io/cluster-issuer",
                    _ => "cert-manager.io/issuer",
                };
                annotations.insert(key.to_owned(), issuer.name.clone());
                names::tls_secret(&name)
            }
            (None, None) => {
                return Err(BuildError::Invalid {
                    field: "spec.tls",
                    reason: "set secretName or issuerRef".into(),
                });
            }
        };
        tls = Some(json!([{ "hosts": [ing.host], "secretName": secret }]));
    }
    annotations.extend(ing.annotations.clone().unwrap_or_default());
    let port = reg
        .spec
        .service
        .as_ref()
        .and_then(|s| s.port)
        .unwrap_or(REGISTRY_PORT);
    let mut spec = json!({
        "rules": [{
            "host": ing.host,
            "http": { "paths": [{
                "path": "/",
                "pathType": "Prefix",
                "backend": { "service": { "name": name, "port": { "number": port } } },
            }]},
        }],
    });
    if let Some(class) = &ing.class_name {
        spec["ingressClassName"] = json!(class);
    }
    if let Some(tls) = tls {
        spec["tls"] = tls;
    }
    from_json(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels(&name, "registry"),
            "annotations": annotations,
            "ownerReferences": [owner_ref(reg)?],
        },
        "spec": spec,
    }))
    .map(Some)
}

pub fn pod_disruption_budget(reg: &Registry) -> Result<Option<PodDisruptionBudget>, BuildError> {
    let Some(pdb) = &reg.spec.pod_disruption_budget else {
        return Ok(None);
    };
    let (name, ns) = name_ns(reg)?;
    let mut spec = json!({ "selector": { "matchLabels": selector(&name) } });
    match (pdb.min_available, pdb.max_unavailable) {
        (_, Some(max)) => spec["maxUnavailable"] = json!(max),
        (min, None) => spec["minAvailable"] = json!(min.unwrap_or(1)),
    }
    from_json(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels(&name, "registry"),
            "ownerReferences": [owner_ref(reg)?],
        },
        "spec": spec,
    }))
    .map(Some)
}

pub fn horizontal_pod_autoscaler(
    reg: &Registry,
) -> Result<Option<HorizontalPodAutoscaler>, BuildError> {
    let Some(a) = &reg.spec.autoscaling else {
        return Ok(None);
    };
    if autoscaling_suspended(reg) {
        return Ok(None);
    }
    let (name, ns) = name_ns(reg)?;
    from_json(json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels(&name, "registry"),
            "ownerReferences": [owner_ref(reg)?],
        },
        "spec": {
            "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": name },
            "minReplicas": a.min_replicas.unwrap_or(1),
            "maxReplicas": a.max_replicas,
            "metrics": [{
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {
                        "type": "Utilization",
                        "averageUtilization": a.target_cpu_utilization_percentage.unwrap_or(80),
                    },
                },
            }],
        },
    }))
    .map(Some)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::operator::crd::*;
    use crate::operator::resources::tests::golden;

    pub fn defaults() -> Defaults {
        Defaults {
            image: "ghcr.io/berth-dev/berth:0.1.0".into(),
        }
    }

    pub fn minimal() -> Registry {
        let mut r = Registry::new(
            "hub",
            RegistrySpec {
                storage: StorageSpec {
                    pvc: Some(PvcStorage {
                        size: "10Gi".into(),
                        ..Default::default()
                    }),
                    s3: None,
                },
                ..Default::default()
            },
        );
        r.metadata.namespace = Some("team".into());
        r.metadata.uid = Some("0b5c6d1e-0000-4000-8000-000000000001".into());
        r.metadata.generation = Some(1);
        r
    }

    /// Everything optional switched on.
    pub fn full() -> Registry {
        let mut r = minimal();
        r.spec = serde_yaml::from_str(
            r#"
image: registry.example/berth:edge
replicas: 3
storage:
  pvc: { size: 100Gi, storageClassName: fast, accessModes: [ReadWriteMany] }
tls: { issuerRef: { name: letsencrypt, kind: ClusterIssuer } }
auth: { htpasswdSecret: hub-users }
service: { type: LoadBalancer, port: 443, annotations: { lb.example/internal: "true" } }
ingress: { host: hub.example.com, className: nginx, annotations: { a.example/b: c } }
resources: { requests: { cpu: 100m, memory: 128Mi }, limits: { memory: 1Gi } }
nodeSelector: { disk: ssd }
tolerations: [{ key: dedicated, operator: Equal, value: registry, effect: NoSchedule }]
podDisruptionBudget: { minAvailable: 2 }
autoscaling: { minReplicas: 2, maxReplicas: 6, targetCpuUtilizationPercentage: 70 }
logFormat: json
deletionPolicy: Delete
"#,
        )
        .unwrap();
        r
    }

    #[test]
    fn config_is_the_serve_schema_and_round_trips() {
        let c = render_config(&minimal()).unwrap();
        let text = serde_yaml::to_string(&c).unwrap();
        // `berth serve --config` parses exactly this type with deny_unknown_fields.
        let back: Config = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, c);
        golden(
            "registry-minimal-configmap.yaml",
            &config_map(&minimal(), &c).unwrap(),
        );
        let full = render_config(&full()).unwrap();
        assert_eq!(full.log.format, Some(config::LogFormat::Json));
    }

    fn with_auth(yaml: &str) -> Registry {
        let mut r = minimal();
        r.spec.auth = Some(serde_yaml::from_str(yaml).unwrap());
        r
    }

    #[test]
    fn limits_proxies_and_realm_render_into_a_config_serve_reads() {
        let mut r = with_auth(
            "admin: {}\ntrustedProxies: [10.0.0.0/8, \"fd00::/8\", 192.168.1.7]\ntoken:\n  realm: https://registry.example.com/token\n",
        );
        r.spec.limits = Some(
            serde_yaml::from_str(
                "maxBlobBytes: 1073741824\nmaxUploadSessions: 7\nmaxConnections: 300\nheaderReadTimeout: 15s\nidleTimeout: 90s\n",
            )
            .unwrap(),
        );
        r.spec.allow_sparse_indexes = true;
        check_spec(&r).unwrap();
        let c = render_config(&r).unwrap();
        let cm = config_map(&r, &c).unwrap();
        golden("registry-limits-configmap.yaml", &cm);
        // The ConfigMap's text is what `berth serve --config` reads: parse it as serve does.
        let text = &cm.data.as_ref().unwrap()["config.yaml"];
        let parsed: Config = serde_yaml::from_str(text).unwrap();
        assert_eq!(parsed, c);
        let settings =
            crate::serve::Settings::resolve(Some(parsed.clone()), Default::default()).unwrap();
        let l = &settings.limits;
        assert_eq!(l.max_blob_bytes, 1 << 30);
        assert_eq!(l.max_upload_sessions, 7);
        assert_eq!(l.max_connections, 300);
        assert_eq!(l.header_read_timeout, std::time::Duration::from_secs(15));
        assert_eq!(l.idle_timeout, std::time::Duration::from_secs(90));
        assert!(settings.allow_sparse_indexes);
        let proxies =
            crate::registry::proxies::TrustedProxies::parse(&settings.auth.trusted_proxies)
                .unwrap();
        assert!(proxies.contains("10.1.2.3".parse().unwrap()));
        assert!(proxies.contains("fd00::1".parse().unwrap()));
        assert!(proxies.contains("192.168.1.7".parse().unwrap()));
        assert!(!proxies.contains("192.168.1.8".parse().unwrap()));
        assert_eq!(
            parsed.auth.token.unwrap().realm.as_deref(),
            Some("https://registry.example.com/token")
        );
        // Without `limits` the section is left out and serve's defaults apply.
        let c = render_config(&minimal()).unwrap();
        assert!(!serde_yaml::to_string(&c).unwrap().contains("limits"));
    }

    #[test]
    fn limits_proxies_and_realm_serve_would_refuse_are_refused() {
        let limits = |yaml: &str| {
            let mut r = minimal();
            r.spec.limits = Some(serde_yaml::from_str(yaml).unwrap());
            r
        };
        let cases = [
            (limits("maxBlobBytes: 0"), "spec.limits.maxBlobBytes"),
            (
                limits("maxUploadSessions: 0"),
                "spec.limits.maxUploadSessions",
            ),
            (limits("maxConnections: 0"), "spec.limits.maxConnections"),
            (
                limits("headerReadTimeout: soon"),
                "spec.limits.headerReadTimeout",
            ),
            (limits("idleTimeout: 0s"), "spec.limits.idleTimeout"),
            (
                with_auth("admin: {}\ntrustedProxies: [10.0.0.0/33]\n"),
                "spec.auth.trustedProxies",
            ),
            (
                with_auth("admin: {}\ntrustedProxies: [ingress-nginx]\n"),
                "spec.auth.trustedProxies",
            ),
            (
                with_auth("admin: {}\ntoken: { realm: /token }\n"),
                "spec.auth.token.realm",
            ),
            (
                with_auth("admin: {}\ntoken: { realm: \"https:// x/token\" }\n"),
                "spec.auth.token.realm",
            ),
        ];
        for (r, want) in cases {
            match check_spec(&r) {
                Err(BuildError::Invalid { field, .. }) => assert_eq!(field, want),
                other => panic!("{want}: {other:?}"),
            }
        }
        check_spec(&limits("headerReadTimeout: 500ms\nidleTimeout: 1h")).unwrap();
        check_spec(&with_auth(
            "admin: {}\ntoken: { realm: \"http://10.0.0.1:5000/token\" }\n",
        ))
        .unwrap();
    }

    #[test]
    fn the_crd_schema_checks_limits_proxies_and_realm_too() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(Registry::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        let l = &spec["limits"]["properties"];
        for f in ["maxBlobBytes", "maxUploadSessions", "maxConnections"] {
            assert_eq!(l[f]["minimum"].as_f64(), Some(1.0), "{f}");
        }
        let auth = &spec["auth"]["properties"];
        let patterns = [
            (
                &l["headerReadTimeout"]["pattern"],
                &["30s", "500ms", "2m"][..],
                &["0s", "30", "1h30m", "soon"][..],
            ),
            (&l["idleTimeout"]["pattern"], &["2m", "1d"], &["0m", ""]),
            (
                &auth["trustedProxies"]["items"]["pattern"],
                &["10.0.0.0/8", "fd00::/8", "192.168.1.7", "::ffff:10.0.0.1"],
                &["ingress-nginx", "10.0.0.0/8 ", ""],
            ),
            (
                &auth["token"]["properties"]["realm"]["pattern"],
                &[
                    "https://registry.example.com/token",
                    "http://10.0.0.1:5000/token",
                ],
                &[
                    "/token",
                    "registry.example.com/token",
                    "https:// x/token",
                    "https:///token",
                ],
            ),
        ];
        for (pattern, good, bad) in patterns {
            let re = regex::Regex::new(pattern.as_str().unwrap()).unwrap();
            for g in good {
                assert!(re.is_match(g), "{pattern} refuses {g:?}");
            }
            for b in bad {
                assert!(!re.is_match(b), "{pattern} accepts {b:?}");
            }
        }
    }

    #[test]
    fn token_auth_renders_the_key_and_trusted_issuers_and_mounts_their_secrets() {
        let r = with_auth(
            "admin: {}\ntoken:\n  service: hub.example.com\n  expiresSeconds: 600\n  trustedIssuers:\n  - { issuer: sso, publicKeySecret: sso-key }\n",
        );
        let c = render_config(&r).unwrap();
        let t = c.auth.token.clone().unwrap();
        assert_eq!(t.key, Some("/etc/berth-token/token-key.pem".into()));
        assert_eq!(t.service.as_deref(), Some("hub.example.com"));
        assert_eq!(t.expires_seconds, Some(600));
        assert_eq!(t.trusted_issuers[0].issuer, "sso");
        assert_eq!(
            t.trusted_issuers[0].public_key,
            std::path::PathBuf::from("/etc/berth-trusted/0/public-key.pem")
        );
        let text = serde_yaml::to_string(&c).unwrap();
        assert_eq!(serde_yaml::from_str::<Config>(&text).unwrap(), c);
        golden(
            "registry-token-configmap.yaml",
            &config_map(&r, &c).unwrap(),
        );
        let dep = deployment(&r, &defaults(), &config_hash(&text)).unwrap();
        golden("registry-token-deployment.yaml", &dep);
        let dep = serde_json::to_value(dep).unwrap();
        let pod = &dep["spec"]["template"]["spec"];
        let volumes = pod["volumes"].as_array().unwrap();
        assert!(
            volumes
                .iter()
                .any(|v| v["secret"]["secretName"] == "hub-token-key")
        );
        assert!(
            volumes
                .iter()
                .any(|v| v["secret"]["secretName"] == "sso-key")
        );
        let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
        assert!(
            mounts
                .iter()
                .all(|m| m["readOnly"] == true || m["name"] == "tmp" || m["name"] == "data")
        );

        // The generated key is a PKCS#8 PEM that serve's token service loads.
        let pem = crate::keys::generate_token_key_pem().unwrap();
        let secret = token_key_secret(&r, &pem).unwrap();
        let bytes = &secret.data.as_ref().unwrap()["token-key.pem"].0;
        assert!(bytes.starts_with(b"-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(secret.metadata.name.as_deref(), Some("hub-token-key"));

        // Token auth that trusts an SSO needs no password file.
        let r =
            with_auth("token:\n  trustedIssuers:\n  - { issuer: sso, publicKeySecret: sso-key }\n");
        let c = render_config(&r).unwrap();
        assert!(c.auth.htpasswd.is_none());
        // But nothing at all to sign in with is refused.
        let r = with_auth("token: {}\n");
        assert!(matches!(
            render_config(&r),
            Err(BuildError::Invalid {
                field: "spec.auth",
                ..
            })
        ));
    }

    #[test]
    fn auth_renders_htpasswd_and_access_and_mounts_the_secret_read_only() {
        let r = with_auth(
            r#"
admin: { username: root }
groups: { team-a: [alice, bob] }
access:
  - { repository: "team-a/**", groups: [team-a], actions: [pull, push] }
  - { repository: "public/*", users: [anonymous], actions: [pull] }
"#,
        );
        let c = render_config(&r).unwrap();
        let text = serde_yaml::to_string(&c).unwrap();
        assert_eq!(serde_yaml::from_str::<Config>(&text).unwrap(), c);
        golden("registry-auth-configmap.yaml", &config_map(&r, &c).unwrap());
        assert_eq!(
            c.auth.htpasswd,
            Some(std::path::PathBuf::from("/etc/berth-auth/htpasswd"))
        );
        assert_eq!(c.auth.admins, ["root"]);
        // The generated admin first, with everything; then the spec's rules in order.
        assert_eq!(c.auth.access[0].users, ["root"]);
        assert_eq!(c.auth.access[0].repository, "**");
        assert_eq!(c.auth.access[1].repository, "team-a/**");
        assert_eq!(c.auth.access[2].actions, [config::Action::Pull]);
        assert_eq!(c.auth.groups["team-a"], ["alice", "bob"]);
        let dep = serde_json::to_value(deployment(&r, &defaults(), "h").unwrap()).unwrap();
        let pod = &dep["spec"]["template"]["spec"];
        let vol = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "auth")
            .unwrap();
        assert_eq!(vol["secret"]["secretName"], "hub-admin");
        let mount = pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "auth")
            .unwrap();
        assert_eq!(mount["mountPath"], "/etc/berth-auth");
        assert_eq!(mount["readOnly"], true);

        // A user's htpasswd Secret: no generated admin, no implicit rule.
        let r = with_auth("htpasswdSecret: users\n");
        let c = render_config(&r).unwrap();
        assert!(c.auth.admins.is_empty() && c.auth.access.is_empty());
        assert_eq!(auth_secret(&r).as_deref(), Some("users"));
    }

    #[test]
    fn spec_the_schema_cannot_express_is_refused() {
        // auth that names no source of users would run an open registry: refused.
        assert!(matches!(
            render_config(&with_auth("{}")),
            Err(BuildError::Invalid {
                field: "spec.auth",
                ..
            })
        ));
        let r = with_auth("admin: {}\naccess: [{ repository: \"../x\", actions: [pull] }]\n");
        assert!(matches!(
            render_config(&r),
            Err(BuildError::Invalid {
                field: "spec.auth.access",
                ..
            })
        ));
        // TLS that names neither a Secret nor an issuer cannot be served.
        let mut r = minimal();
        r.spec.tls = Some(TlsSpec::default());
        assert!(matches!(
            render_config(&r),
            Err(BuildError::Invalid {
                field: "spec.tls",
                ..
            })
        ));
    }

    #[test]
    fn issuer_without_ingress_asks_cert_manager_for_the_service_names() {
        let mut r = minimal();
        r.spec.tls = Some(TlsSpec {
            secret_name: None,
            issuer_ref: Some(IssuerRef {
                name: "internal-ca".into(),
                kind: Some("ClusterIssuer".into()),
                group: None,
            }),
            dns_names: vec!["registry.example.com".into(), "hub.team.svc".into()],
        });
        let cert = certificate(&r).unwrap().unwrap();
        golden("registry-certificate.yaml", &cert);
        assert_eq!(cert.spec.secret_name, "hub-tls");
        assert_eq!(
            cert.spec.dns_names,
            [
                "hub",
                "hub.team",
                "hub.team.svc",
                "hub.team.svc.cluster.local",
                "registry.example.com"
            ]
        );
        assert_eq!(cert.spec.issuer_ref.kind, "ClusterIssuer");
        assert_eq!(cert.spec.issuer_ref.group, "cert-manager.io");
        assert_eq!(
            cert.metadata.owner_references.as_ref().unwrap()[0].uid,
            r.metadata.uid.clone().unwrap()
        );
        // The pods serve HTTPS from the Secret cert-manager issues.
        assert_eq!(pod_tls_secret(&r).as_deref(), Some("hub-tls"));
        let c = render_config(&r).unwrap();
        assert_eq!(
            c.tls.unwrap().cert,
            std::path::PathBuf::from("/etc/berth-tls/tls.crt")
        );
        let dep = serde_json::to_value(deployment(&r, &defaults(), "h").unwrap()).unwrap();
        let volumes = &dep["spec"]["template"]["spec"]["volumes"];
        assert!(
            volumes
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["secret"]["secretName"] == "hub-tls"),
            "{volumes}"
        );
        // With an Ingress, the Ingress's annotations ask cert-manager instead: no Certificate.
        r.spec.ingress = Some(IngressSpec {
            host: "hub.example.com".into(),
            ..Default::default()
        });
        assert!(certificate(&r).unwrap().is_none());
        assert!(pod_tls_secret(&r).is_none());
        // A Secret of the user's own: no Certificate either.
        r.spec.ingress = None;
        r.spec.tls = Some(TlsSpec {
            secret_name: Some("mine".into()),
            ..Default::default()
        });
        assert!(certificate(&r).unwrap().is_none());
    }

    #[test]
    fn s3_storage_renders_the_bucket_and_reads_credentials_from_the_secret() {
        let mut r = minimal();
        r.spec.storage = StorageSpec {
            pvc: None,
            s3: Some(S3Storage {
                bucket: "images".into(),
                endpoint: Some("http://garage.storage:3900".into()),
                region: Some("garage".into()),
                prefix: Some("hub".into()),
                credentials_secret: "hub-s3".into(),
                ..Default::default()
            }),
        };
        let cfg = render_config(&r).unwrap();
        assert!(cfg.storage.filesystem.is_none());
        let s3 = cfg.storage.s3.as_ref().unwrap();
        assert_eq!(
            (
                s3.bucket.as_str(),
                s3.prefix.as_deref(),
                s3.region.as_deref()
            ),
            ("images", Some("hub"), Some("garage"))
        );
        assert!(s3.access_key_id.is_none() && s3.secret_access_key.is_none());
        let text = serde_yaml::to_string(&cfg).unwrap();
        assert!(
            !text.contains("hub-s3"),
            "no secret material in the ConfigMap"
        );
        // The config round-trips through the schema `berth serve` reads.
        assert_eq!(serde_yaml::from_str::<Config>(&text).unwrap(), cfg);
        assert!(persistent_volume_claim(&r).unwrap().is_none());
        let dep = serde_json::to_value(deployment(&r, &defaults(), "h").unwrap()).unwrap();
        let c = &dep["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["env"][0]["name"], "AWS_ACCESS_KEY_ID");
        assert_eq!(c["env"][0]["valueFrom"]["secretKeyRef"]["name"], "hub-s3");
        assert_eq!(
            c["env"][1]["valueFrom"]["secretKeyRef"]["key"],
            "secretAccessKey"
        );
        assert!(
            !c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "data")
        );
        // Stateless replicas: a rolling update, not Recreate.
        assert_ne!(dep["spec"]["strategy"]["type"], "Recreate");
    }

    #[test]
    fn pod_tls_mounts_the_secret_renders_tls_and_probes_https() {
        let mut r = minimal();
        r.spec.tls = Some(TlsSpec {
            secret_name: Some("hub-cert".into()),
            ..Default::default()
        });
        let c = render_config(&r).unwrap();
        let tls = c.tls.as_ref().unwrap();
        assert_eq!(tls.cert, std::path::PathBuf::from("/etc/berth-tls/tls.crt"));
        assert_eq!(tls.key, std::path::PathBuf::from("/etc/berth-tls/tls.key"));
        let text = serde_yaml::to_string(&c).unwrap();
        assert_eq!(serde_yaml::from_str::<Config>(&text).unwrap(), c);
        golden("registry-tls-configmap.yaml", &config_map(&r, &c).unwrap());
        let dep = deployment(&r, &defaults(), &config_hash(&text)).unwrap();
        golden("registry-tls-deployment.yaml", &dep);
        let dep = serde_json::to_value(dep).unwrap();
        let container = &dep["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
        assert_eq!(container["livenessProbe"]["httpGet"]["scheme"], "HTTPS");
        // Behind an Ingress the same Secret is the Ingress's: the pods stay plain HTTP.
        r.spec.ingress = Some(IngressSpec {
            host: "hub.example.com".into(),
            ..Default::default()
        });
        assert!(render_config(&r).unwrap().tls.is_none());
        assert!(pod_tls_secret(&r).is_none());
    }

    #[test]
    fn minimal_children() {
        let r = minimal();
        let hash = config_hash("addr: x\n");
        golden(
            "registry-minimal-deployment.yaml",
            &deployment(&r, &defaults(), &hash).unwrap(),
        );
        golden("registry-minimal-service.yaml", &service(&r).unwrap());
        golden(
            "registry-minimal-pvc.yaml",
            &persistent_volume_claim(&r).unwrap().unwrap(),
        );
        assert!(ingress(&r).unwrap().is_none());
        assert!(pod_disruption_budget(&r).unwrap().is_none());
        assert!(horizontal_pod_autoscaler(&r).unwrap().is_none());
    }

    #[test]
    fn full_children() {
        let r = full();
        let hash = config_hash("addr: y\n");
        let dep = deployment(&r, &defaults(), &hash).unwrap();
        assert!(
            dep.spec.as_ref().unwrap().replicas.is_none(),
            "the HPA owns replicas"
        );
        golden("registry-full-deployment.yaml", &dep);
        golden("registry-full-service.yaml", &service(&r).unwrap());
        golden(
            "registry-full-pvc.yaml",
            &persistent_volume_claim(&r).unwrap().unwrap(),
        );
        golden("registry-full-ingress.yaml", &ingress(&r).unwrap().unwrap());
        golden(
            "registry-full-pdb.yaml",
            &pod_disruption_budget(&r).unwrap().unwrap(),
        );
        golden(
            "registry-full-hpa.yaml",
            &horizontal_pod_autoscaler(&r).unwrap().unwrap(),
        );
    }

    #[test]
    fn admin_secret_holds_a_verifiable_htpasswd_line() {
        let s = admin_secret(&minimal(), "admin", "s3cret-pass", [7; 16]).unwrap();
        golden("registry-admin-secret.yaml", &s);
        let data = s.data.unwrap();
        let line = String::from_utf8(data["htpasswd"].0.clone()).unwrap();
        let (user, hash) = line.trim_end().split_once(':').unwrap();
        assert_eq!(user, "admin");
        assert!(bcrypt::verify("s3cret-pass", hash).unwrap());
        assert!(!bcrypt::verify("wrong", hash).unwrap());
        let p = generate_password();
        assert_eq!(p.len(), 32);
        assert_ne!(p, generate_password());
    }

    #[test]
    fn bad_size_is_an_invalid_spec() {
        let mut r = minimal();
        r.spec.storage.pvc.as_mut().unwrap().size = "ten gigs".into();
        assert!(matches!(
            persistent_volume_claim(&r),
            Err(BuildError::Invalid { .. })
        ));
    }

    #[test]
    fn retain_leaves_the_pvc_unowned() {
        let pvc = persistent_volume_claim(&minimal()).unwrap().unwrap();
        assert!(pvc.metadata.owner_references.is_none());
        let pvc = persistent_volume_claim(&full()).unwrap().unwrap();
        assert_eq!(pvc.metadata.owner_references.unwrap()[0].kind, "Registry");
    }

    #[test]
    fn config_change_changes_the_pod_template() {
        let r = minimal();
        let a = deployment(&r, &defaults(), &config_hash("a")).unwrap();
        let b = deployment(&r, &defaults(), &config_hash("b")).unwrap();
        assert_ne!(a.spec.unwrap().template, b.spec.unwrap().template);
    }
}
