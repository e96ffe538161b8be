//! reconcile(Registry): render the config, build every child, apply what differs, then write
//! a status that tells the truth (conditions, ready replicas, endpoint). Specs the operator
//! cannot act on become a Degraded condition and an Event and wait for the next edit; missing
//! Secrets are retried when they appear (the controller watches Secrets). A Registry with
//! storage quotas also has its usage read from the registry and is looked at every minute.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::instrument;

use super::apply::{ensure, remove_owned};
use super::certmanager::{self, Certificate};
use super::conditions::{self, DEGRADED, PROGRESSING, READY, Wanted, blocked, wanted};
use super::crd::{DeletionPolicy, GcPhase, QuotaStatus, Registry, RegistryStatus};
use super::quota;
use super::resources::{self as build, BuildError, Defaults, REGISTRY_PORT, names};
use super::{Context, Error, FIELD_MANAGER};

/// Held while the Registry exists, so deletion can keep or remove the data as asked.
pub const FINALIZER: &str = "berth.dev/storage";

/// Everything a Registry wants to exist, computed without I/O.
#[derive(Clone, Debug)]
pub struct Desired {
    pub config_map: ConfigMap,
    pub pvc: Option<PersistentVolumeClaim>,
    pub deployment: Deployment,
    pub service: Service,
    pub ingress: Option<Ingress>,
    pub pdb: Option<PodDisruptionBudget>,
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// The cert-manager Certificate the pods' TLS Secret comes from, when the operator makes one.
    pub certificate: Option<Certificate>,
    /// Secrets the spec names, with the keys each must hold.
    pub referenced_secrets: Vec<(String, Vec<&'static str>)>,
    pub endpoint: String,
}

pub fn desired(reg: &Registry, d: &Defaults) -> Result<Desired, BuildError> {
    build::check_spec(reg)?;
    let config = build::render_config(reg)?;
    let text = serde_yaml::to_string(&config).map_err(|e| BuildError::Serialize(e.to_string()))?;
    let hash = build::pod_config_hash(reg, &text);
    let mut referenced_secrets = vec![];
    let certificate = build::certificate(reg)?;
    // The user's Secret (for the pods or the Ingress), or the one cert-manager issues for
    // the operator's Certificate (for the pods).
    let user_tls = reg.spec.tls.as_ref().and_then(|t| t.secret_name.clone());
    let issued_tls = certificate.as_ref().map(|c| c.spec.secret_name.clone());
    if let Some(name) = user_tls.or(issued_tls) {
        referenced_secrets.push((name, vec!["tls.crt", "tls.key"]));
    }
    // The generated admin Secret is made by reconcile itself, so only the user's is checked.
    if let Some(name) = reg
        .spec
        .auth
        .as_ref()
        .and_then(|a| a.htpasswd_secret.clone())
    {
        referenced_secrets.push((name, vec!["htpasswd"]));
    }
    for ti in build::trusted_issuers(reg) {
        referenced_secrets.push((ti.public_key_secret.clone(), vec![build::PUBLIC_KEY]));
    }
    referenced_secrets.extend(build::upstream_secrets(reg));
    referenced_secrets.extend(build::replication_secrets(reg));
    referenced_secrets.extend(build::notification_secrets(reg));
    if let Some(s3) = &reg.spec.storage.s3 {
        referenced_secrets.push((
            s3.credentials_secret.clone(),
            vec!["accessKeyId", "secretAccessKey"],
        ));
    }
    let name = reg.name_any();
    let ns = reg.namespace().unwrap_or_default();
    let endpoint = match &reg.spec.ingress {
        Some(i) if reg.spec.tls.is_some() => format!("https://{}", i.host),
        Some(i) => format!("http://{}", i.host),
        None => {
            let port = reg
                .spec
                .service
                .as_ref()
                .and_then(|s| s.port)
                .unwrap_or(REGISTRY_PORT);
            let scheme = if build::pod_tls_secret(reg).is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{name}.{ns}.svc:{port}")
        }
    };
    Ok(Desired {
        config_map: build::config_map(reg, &config)?,
        pvc: build::persistent_volume_claim(reg)?,
        deployment: build::deployment(reg, d, &hash)?,
        service: build::service(reg)?,
        ingress: build::ingress(reg)?,
        pdb: build::pod_disruption_budget(reg)?,
        hpa: build::horizontal_pod_autoscaler(reg)?,
        certificate,
        referenced_secrets,
        endpoint,
    })
}

#[instrument(skip(reg, ctx), fields(registry = %reg.name_any(), namespace = reg.namespace().unwrap_or_default()))]
pub async fn reconcile(reg: Arc<Registry>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.check_leader()?;
    ctx.metrics.reconciled("Registry");
    let ns = reg.namespace().unwrap_or_default();
    let api: Api<Registry> = Api::namespaced(ctx.client.clone(), &ns);
    let holds = reg.finalizers().iter().any(|f| f == FINALIZER);
    let deleting = reg.meta().deletion_timestamp.is_some();
    match (needs_finalizer(&reg), holds, deleting) {
        // Outside work at deletion (an S3 purge), or a finalizer an older operator added:
        // the helper adds it, runs cleanup on deletion and then releases it.
        (true, _, _) | (false, true, true) => finalizer(&api, FINALIZER, reg, |event| async {
            match event {
                Finalizer::Apply(r) => apply(&r, &ctx).await,
                Finalizer::Cleanup(r) => cleanup(&r, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e))),
        // Nothing outside the cluster to undo: owner references take the children.
        (false, false, true) => {
            keep_retained_volume(&reg, &ctx).await?;
            Ok(Action::await_change())
        }
        (false, true, false) => {
            release_finalizer(&api, &reg).await?;
            apply(&reg, &ctx).await
        }
        (false, false, false) => apply(&reg, &ctx).await,
    }
}

/// Whether deleting `reg` needs work only the operator can do. Only emptying an S3 bucket
/// does: a PVC goes with its owner reference (Delete) or stays without one (Retain). Every
/// other Registry carries no finalizer, so an uninstall that removes the operator together
/// with its Registries never leaves one stuck Terminating.
pub fn needs_finalizer(reg: &Registry) -> bool {
    reg.spec.storage.s3.is_some() && reg.spec.deletion_policy == DeletionPolicy::Delete
}

/// Takes off a finalizer the spec no longer needs (storage or policy changed, or an older
/// operator added it), as the finalizer helper does: a JSON patch that tests it is there.
async fn release_finalizer(api: &Api<Registry>, reg: &Registry) -> Result<(), Error> {
    let Some(i) = reg.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{i}");
    let ops = json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]);
    let patch: json_patch::Patch = serde_json::from_value(ops)?;
    api.patch(
        &reg.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await?;
    Ok(())
}

/// Which referenced Secret is missing or incomplete, in words a human can act on.
pub(super) async fn check_secrets(
    client: &kube::Client,
    ns: &str,
    wanted: &[(String, Vec<&'static str>)],
) -> Result<Option<String>, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for (name, keys) in wanted {
        match api.get_opt(name).await? {
            None => {
                return Ok(Some(format!(
                    "Secret {ns}/{name} does not exist; create it with keys {}",
                    keys.join(", ")
                )));
            }
            Some(s) => {
                let data = s.data.unwrap_or_default();
                let missing: Vec<&str> = keys
                    .iter()
                    .copied()
                    .filter(|k| !data.contains_key(*k))
                    .collect();
                if !missing.is_empty() {
                    return Ok(Some(format!(
                        "Secret {ns}/{name} lacks key(s) {}",
                        missing.join(", ")
                    )));
                }
            }
        }
    }
    Ok(None)
}

async fn apply(reg: &Registry, ctx: &Context) -> Result<Action, Error> {
    let ns = reg.namespace().unwrap_or_default();
    let client = &ctx.client;
    let plan = match desired(reg, &ctx.defaults) {
        Ok(p) => p,
        Err(e @ BuildError::Invalid { .. }) => {
            let msg = format!("{e}; fix the Registry spec");
            let creds = reg
                .status
                .as_ref()
                .and_then(|s| s.credentials_secret.clone());
            write_status(
                reg,
                ctx,
                blocked("InvalidSpec", &msg),
                None,
                None,
                creds,
                &[],
            )
            .await?;
            // Nothing changes until the spec does: no requeue, no hot loop.
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e.into()),
    };
    let credentials = if build::admin_username(reg).is_some() {
        Some(ensure_admin_secret(client, reg).await?)
    } else {
        None
    };
    if build::wants_token_key(reg) {
        ensure_token_key_secret(client, reg).await?;
    }
    // Status for a reconcile that stops short of the Deployment.
    let stopped = async |conditions: Vec<Wanted>| {
        let endpoint = Some(plan.endpoint.clone());
        write_status(
            reg,
            ctx,
            conditions,
            None,
            endpoint,
            credentials.clone(),
            &[],
        )
        .await
    };
    let mut applied: Vec<&'static str> = vec![];
    let mut pending_certificate = None;
    if let Some(cert) = &plan.certificate {
        if !certmanager::served(client).await? {
            let msg = format!(
                "spec.tls.issuerRef needs cert-manager, but the API server does not serve {}/certificates; \
                 install cert-manager or use spec.tls.secretName",
                certmanager::API_VERSION
            );
            stopped(blocked("CertManagerMissing", &msg)).await?;
            // Installing cert-manager wakes nothing we watch: look again now and then.
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
        let ensured = ensure(&Api::namespaced(client.clone(), &ns), cert).await?;
        if ensured.changed {
            applied.push("Certificate");
        }
        pending_certificate = Some(ensured.object);
    } else if reg.status.as_ref().is_some_and(|s| s.certificate.is_some()) {
        let api: Api<Certificate> = Api::namespaced(client.clone(), &ns);
        let name = names::tls_secret(&reg.name_any());
        if remove_owned(&api, &name, &reg.uid().unwrap_or_default()).await? {
            applied.push("Certificate");
        }
    }
    if let Some(msg) = check_secrets(client, &ns, &plan.referenced_secrets).await? {
        let issuing = pending_certificate
            .as_ref()
            .filter(|c| msg.contains(&format!("Secret {ns}/{} ", c.spec.secret_name)));
        let (conditions, wait) = match issuing.map(|c| (c, c.issuing_failure())) {
            // cert-manager gave up: the issuer or its configuration needs a human.
            Some((cert, Some(failure))) => (
                blocked(
                    "CertificateFailed",
                    &format!(
                        "cert-manager failed to issue Certificate {ns}/{}: {failure}; check the issuer",
                        cert.name_any(),
                    ),
                ),
                Duration::from_secs(300),
            ),
            // Issuing normally takes seconds: progress, not a fault.
            Some((cert, None)) => (
                waiting(
                    "CertificatePending",
                    &format!(
                        "waiting for cert-manager to issue Certificate {ns}/{} into its Secret{}",
                        cert.name_any(),
                        cert.not_ready_message()
                            .map(|m| format!(" ({m})"))
                            .unwrap_or_default()
                    ),
                ),
                // The Secret watch wakes us; this refreshes cert-manager's words meanwhile.
                Duration::from_secs(60),
            ),
            None => (blocked("SecretMissing", &msg), Duration::from_secs(300)),
        };
        announce_applied(reg, ctx, &applied).await;
        stopped(conditions).await?;
        // The Secret watch brings us back as soon as it appears; this is the safety net.
        return Ok(Action::requeue(wait));
    }

    let dep = match apply_children(reg, client, &plan, &mut applied).await {
        Ok(done) => done,
        // The API server refused an object as invalid (an immutable PVC field changed, a
        // value it rejects): retrying cannot help until the spec changes.
        Err(Error::Kube(kube::Error::Api(s))) if s.code == 422 => {
            let msg = format!(
                "the API server rejected a child object: {}; fix the Registry spec",
                s.message
            );
            stopped(blocked("Rejected", &msg)).await?;
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };
    announce_applied(reg, ctx, &applied).await;

    let (wanted, ready, want) = rollout_conditions(&dep.object);
    let all_ready = conditions_ready(&wanted);
    let budgets = quota_budgets(reg);
    let available = dep
        .object
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        > 0;
    let quotas = if !budgets.is_empty() && available {
        read_quotas(reg, ctx).await
    } else {
        vec![]
    };
    write_status(
        reg,
        ctx,
        wanted,
        Some((ready, want)),
        Some(plan.endpoint),
        credentials,
        &quotas,
    )
    .await?;
    Ok(if !budgets.is_empty() {
        // Usage moves without any object changing: look again so the status follows it.
        Action::requeue(QUOTA_POLL)
    } else if all_ready {
        Action::requeue(Duration::from_secs(600))
    } else {
        // Deployment changes wake us through the owns() watch; this bounds the wait.
        Action::requeue(Duration::from_secs(60))
    })
}

/// How often a Registry with quotas has its usage read again.
pub const QUOTA_POLL: Duration = Duration::from_secs(60);

/// The repository patterns of the spec's budgets, in order.
fn quota_budgets(reg: &Registry) -> Vec<&str> {
    reg.spec
        .policy
        .iter()
        .flat_map(|p| p.quotas.iter().map(|q| q.repository.as_str()))
        .collect()
}

/// The registry's own figures for its budgets, read through its Service; empty when it
/// cannot be asked or does not answer (the status then keeps what it last knew). Never an
/// error: quota usage is news, not a reason to fail or retry a reconcile.
async fn read_quotas(reg: &Registry, ctx: &Context) -> Vec<QuotaStatus> {
    let ns = reg.namespace().unwrap_or_default();
    let registry = format!("{ns}/{}", reg.name_any());
    let service_url = match build::registry_url(reg) {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(registry, error = %e, "no in-cluster URL; quota usage not read");
            return vec![];
        }
    };
    let ca = match build::pod_tls_secret(reg) {
        None => None,
        Some(secret) => match registry_ca(&ctx.client, &ns, &secret).await {
            Some(pem) => Some(pem),
            None => {
                // Verification stays on: without the CA there is nothing to check against.
                tracing::debug!(
                    registry,
                    secret,
                    "the registry serves HTTPS and its TLS Secret has no ca.crt; quota usage not read"
                );
                return vec![];
            }
        },
    };
    let base = ctx.quota_reader.base_url(service_url);
    ctx.quota_reader.read(&registry, &base, ca.as_deref()).await
}

/// The CA that issued the pods' certificate (`ca.crt` of their TLS Secret, as cert-manager
/// writes it), when the Secret has one and can be read.
async fn registry_ca(client: &kube::Client, ns: &str, secret: &str) -> Option<Vec<u8>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    match api.get_opt(secret).await {
        Ok(s) => s?.data?.remove("ca.crt").map(|b| b.0),
        Err(e) => {
            tracing::debug!(secret, error = %e, "cannot read the registry's TLS Secret");
            None
        }
    }
}

/// One Normal Event naming the kinds of child written, when any was.
async fn announce_applied(reg: &Registry, ctx: &Context, applied: &[&str]) {
    if !applied.is_empty() {
        let note = format!("Applied {}", applied.join(", "));
        ctx.event(reg, EventType::Normal, "Applied", note).await;
    }
}

/// Applies every child that differs, recording the kinds written in `applied`; returns the
/// Deployment as stored.
async fn apply_children(
    reg: &Registry,
    client: &kube::Client,
    plan: &Desired,
    applied: &mut Vec<&'static str>,
) -> Result<super::apply::Ensured<Deployment>, Error> {
    let uid = reg.uid().unwrap_or_default();
    let ns = reg.namespace().unwrap_or_default();
    if ensure(&Api::namespaced(client.clone(), &ns), &plan.config_map)
        .await?
        .changed
    {
        applied.push("ConfigMap");
    }
    if let Some(pvc) = &plan.pvc {
        let api = Api::namespaced(client.clone(), &ns);
        let stored = ensure(&api, pvc).await?;
        // Retain must hold while the Registry lives: with no finalizer, an owner reference
        // left from an earlier Delete would let the garbage collector take the data.
        let disowned = reg.spec.deletion_policy == DeletionPolicy::Retain
            && disown_volume(&api, &stored.object, &uid).await?;
        if stored.changed || disowned {
            applied.push("PersistentVolumeClaim");
        }
    }
    if ensure(&Api::namespaced(client.clone(), &ns), &plan.service)
        .await?
        .changed
    {
        applied.push("Service");
    }
    let dep = ensure(&Api::namespaced(client.clone(), &ns), &plan.deployment).await?;
    if dep.changed {
        applied.push("Deployment");
    }
    let name = reg.name_any();
    optional(
        client,
        &ns,
        &name,
        &uid,
        plan.ingress.as_ref(),
        "Ingress",
        applied,
    )
    .await?;
    optional(
        client,
        &ns,
        &name,
        &uid,
        plan.pdb.as_ref(),
        "PodDisruptionBudget",
        applied,
    )
    .await?;
    optional(
        client,
        &ns,
        &name,
        &uid,
        plan.hpa.as_ref(),
        "HorizontalPodAutoscaler",
        applied,
    )
    .await?;
    Ok(dep)
}

fn conditions_ready(w: &[Wanted]) -> bool {
    w.iter().any(|c| c.type_ == READY && c.status)
}

/// Applies an optional child, or removes it when the spec no longer asks for it.
async fn optional<K>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    owner_uid: &str,
    desired: Option<&K>,
    kind: &'static str,
    applied: &mut Vec<&'static str>,
) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match desired {
        Some(obj) => {
            if ensure(&api, obj).await?.changed {
                applied.push(kind);
            }
        }
        None => {
            if remove_owned(&api, name, owner_uid).await? {
                applied.push(kind);
            }
        }
    }
    Ok(())
}

/// Conditions while something outside the operator is expected to finish soon.
fn waiting(reason: &str, message: &str) -> Vec<Wanted> {
    vec![
        wanted(READY, false, reason, message),
        wanted(PROGRESSING, true, reason, message),
        wanted(DEGRADED, false, "AsExpected", "no problems found"),
    ]
}

/// Ready, Progressing and Degraded from the Deployment's own status; also the ready count.
pub fn rollout_conditions(dep: &Deployment) -> (Vec<Wanted>, i32, i32) {
    let want = dep.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = dep.status.clone().unwrap_or_default();
    let ready = st.ready_replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    let seen = st.observed_generation.unwrap_or(0) >= dep.metadata.generation.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    // Complete only when every wanted pod runs the current template and serves: a Deployment
    // whose new pods are not ready yet, or whose old pods are still going, is still rolling.
    let rolled_out = seen && updated >= want && total == want && ready >= want && available >= want;
    let stuck = st.conditions.unwrap_or_default().into_iter().find(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    let label = "app.kubernetes.io/instance";
    let name = dep.metadata.name.clone().unwrap_or_default();
    let mut out = vec![];
    if want == 0 {
        out.push(wanted(
            READY,
            false,
            "ScaledToZero",
            "replicas is 0: nothing serves the endpoint",
        ));
    } else if ready >= want && rolled_out {
        out.push(wanted(
            READY,
            true,
            "Available",
            format!("{ready}/{want} replicas ready"),
        ));
    } else if ready >= want {
        out.push(wanted(
            READY,
            true,
            "Available",
            format!("{ready}/{want} replicas ready, rollout in progress"),
        ));
    } else {
        out.push(wanted(
            READY,
            false,
            "ReplicasNotReady",
            format!("{ready}/{want} replicas ready; see `kubectl describe pods -l {label}={name}`"),
        ));
    }
    let observed = st.observed_generation.unwrap_or(0);
    let generation = dep.metadata.generation.unwrap_or(0);
    out.push(if rolled_out {
        wanted(
            PROGRESSING,
            false,
            "RolloutComplete",
            format!("{want}/{want} replicas run the current spec and are available"),
        )
    } else if !seen {
        wanted(
            PROGRESSING,
            true,
            "DeploymentUpdating",
            format!("the Deployment controller has seen generation {observed} of {generation}"),
        )
    } else if updated < want {
        wanted(
            PROGRESSING,
            true,
            "RollingOut",
            format!("{updated}/{want} replicas updated, {ready} ready"),
        )
    } else if total > want {
        wanted(
            PROGRESSING,
            true,
            "OldReplicasTerminating",
            format!(
                "{updated}/{want} replicas updated, {} old replica(s) still running",
                total - want
            ),
        )
    } else {
        wanted(
            PROGRESSING,
            true,
            "WaitingForReadiness",
            format!("{ready}/{want} updated replicas ready, {available} available"),
        )
    });
    out.push(match stuck {
        Some(c) => wanted(
            DEGRADED,
            true,
            "ProgressDeadlineExceeded",
            c.message.unwrap_or_default(),
        ),
        None => wanted(DEGRADED, false, "AsExpected", "no problems found"),
    });
    (out, ready, want)
}

/// Writes the status only when it differs from what is stored, and publishes an Event for
/// every condition that changed and every budget whose warning flipped. `quotas` are fresh
/// figures from the registry (empty when none were read: the last known ones stay).
async fn write_status(
    reg: &Registry,
    ctx: &Context,
    wanted: Vec<Wanted>,
    replicas: Option<(i32, i32)>,
    endpoint: Option<String>,
    credentials_secret: Option<String>,
    quotas: &[QuotaStatus],
) -> Result<(), Error> {
    let old = reg.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let generation = reg.meta().generation;
    let conditions = conditions::merge(&old.conditions, &wanted, generation, &now);
    let new = RegistryStatus {
        observed_generation: generation,
        replicas: replicas.map(|(_, want)| want).or(old.replicas),
        ready_replicas: replicas.map(|(ready, _)| ready).or(old.ready_replicas),
        endpoint: endpoint.or(old.endpoint.clone()),
        credentials_secret,
        // What the spec asks for; kept as it was while the spec cannot be built.
        certificate: match build::certificate(reg) {
            Ok(c) => c.map(|c| c.name_any()),
            Err(_) => old.certificate.clone(),
        },
        conditions,
        quotas: quota::merge(&old.quotas, quotas, &quota_budgets(reg)),
    };
    if new == old {
        return Ok(());
    }
    let api: Api<Registry> =
        Api::namespaced(ctx.client.clone(), &reg.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "Registry",
        "status": new,
    });
    api.patch_status(
        &reg.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    for c in conditions::transitions(&old.conditions, &new.conditions) {
        let warn = (c.type_ == DEGRADED && c.status == "True")
            || (c.type_ == READY
                && c.status == "False"
                && old
                    .conditions
                    .iter()
                    .any(|o| o.type_ == READY && o.status == "True"));
        let (t, reason) = match (c.type_.as_str(), c.status.as_str()) {
            (READY, "True") => (EventType::Normal, "Ready".to_owned()),
            (PROGRESSING, "True") => (EventType::Normal, "RollingOut".to_owned()),
            _ => (
                if warn {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                c.reason.clone(),
            ),
        };
        if c.type_ == DEGRADED && c.status == "False" && old.conditions.is_empty() {
            continue; // "not degraded" on first sight is not news
        }
        ctx.event(
            reg,
            t,
            &reason,
            format!("{} is {}: {}", c.type_, c.status, c.message),
        )
        .await;
    }
    for e in quota::transitions(&old.quotas, &new.quotas) {
        ctx.event(reg, e.type_, e.reason, e.note).await;
    }
    Ok(())
}

/// A Registry we see being deleted with no finalizer of ours is held by someone else's; if
/// its policy became Retain meanwhile, its volume must not go with it.
async fn keep_retained_volume(reg: &Registry, ctx: &Context) -> Result<(), Error> {
    if reg.spec.storage.pvc.is_none() || reg.spec.deletion_policy != DeletionPolicy::Retain {
        return Ok(());
    }
    let ns = reg.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(pvc) = api.get_opt(&names::data_pvc(&reg.name_any())).await? {
        disown_volume(&api, &pvc, &reg.uid().unwrap_or_default()).await?;
    }
    Ok(())
}

/// Takes the Registry's owner reference off its PVC, so the garbage collector keeps it.
/// Returns true when a patch was sent.
async fn disown_volume(
    api: &Api<PersistentVolumeClaim>,
    pvc: &PersistentVolumeClaim,
    owner_uid: &str,
) -> Result<bool, Error> {
    let owners: Vec<_> = pvc
        .owner_references()
        .iter()
        .filter(|o| o.uid != owner_uid)
        .cloned()
        .collect();
    if owners.len() == pvc.owner_references().len() {
        return Ok(false);
    }
    let patch = json!({ "metadata": { "ownerReferences": owners } });
    api.patch(
        &pvc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(true)
}

/// Deletion: the owner references take the children; the PVC stays or goes by policy.
async fn cleanup(reg: &Registry, ctx: &Context) -> Result<Action, Error> {
    if reg.spec.storage.s3.is_some() {
        return cleanup_bucket(reg, ctx).await;
    }
    let ns = reg.namespace().unwrap_or_default();
    let name = names::data_pvc(&reg.name_any());
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(pvc) = api.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    match reg.spec.deletion_policy {
        DeletionPolicy::Retain => {
            disown_volume(&api, &pvc, &reg.uid().unwrap_or_default()).await?;
            ctx.event(
                reg,
                EventType::Normal,
                "DataRetained",
                format!("deletionPolicy is Retain: PersistentVolumeClaim {ns}/{name} is kept; delete it by hand when done"),
            )
            .await;
        }
        DeletionPolicy::Delete => {
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            ctx.event(
                reg,
                EventType::Normal,
                "DataDeleted",
                format!("deletionPolicy is Delete: PersistentVolumeClaim {ns}/{name} deleted"),
            )
            .await;
        }
    }
    Ok(Action::await_change())
}

/// How often a running purge Job is looked at.
const PURGE_POLL: Duration = Duration::from_secs(10);

/// Deletion of an S3 Registry. `Retain` keeps the objects. `Delete` stops the registry pods,
/// runs a purge Job with the Registry's config and credentials and holds the finalizer until
/// it ends. When the purge
/// cannot run (namespace terminating, credentials gone, the Job fails) the objects are kept,
/// a Warning Event says where, and the finalizer is released: deletion never wedges.
async fn cleanup_bucket(reg: &Registry, ctx: &Context) -> Result<Action, Error> {
    let Some(s3) = &reg.spec.storage.s3 else {
        return Ok(Action::await_change());
    };
    let place = format!(
        "s3://{}/{}",
        s3.bucket,
        s3.prefix.as_deref().unwrap_or_default()
    );
    let kept = |why: String| {
        format!(
            "{why}; the registry's objects under {place} are kept: remove them with your S3 tools"
        )
    };
    if reg.spec.deletion_policy == DeletionPolicy::Retain {
        ctx.event(
            reg,
            EventType::Normal,
            "DataRetained",
            format!("deletionPolicy is Retain: the registry's objects under {place} are kept"),
        )
        .await;
        return Ok(Action::await_change());
    }
    let ns = reg.namespace().unwrap_or_default();
    let client = &ctx.client;
    let job = match build::purge_job(reg, &ctx.defaults) {
        Ok(Some(job)) => job,
        Ok(None) => return Ok(Action::await_change()),
        Err(e) => {
            let msg = kept(format!("cannot build the purge Job: {e}"));
            ctx.event(reg, EventType::Warning, "DataNotDeleted", msg)
                .await;
            return Ok(Action::await_change());
        }
    };
    let name = job.name_any();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    // Nothing may write while the bucket is emptied: the registry pods go first.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    remove_owned(
        &deployments,
        &reg.name_any(),
        &reg.uid().unwrap_or_default(),
    )
    .await?;
    let Some(existing) = jobs.get_opt(&name).await? else {
        let creds = vec![(
            s3.credentials_secret.clone(),
            vec!["accessKeyId", "secretAccessKey"],
        )];
        if let Some(missing) = check_secrets(client, &ns, &creds).await? {
            let msg = kept(format!("cannot purge: {missing}"));
            ctx.event(reg, EventType::Warning, "DataNotDeleted", msg)
                .await;
            return Ok(Action::await_change());
        }
        match jobs.create(&PostParams::default(), &job).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            // A terminating namespace takes no new objects.
            Err(kube::Error::Api(s)) if s.code == 403 => {
                let msg = kept(format!("cannot start the purge Job: {}", s.message));
                ctx.event(reg, EventType::Warning, "DataNotDeleted", msg)
                    .await;
                return Ok(Action::await_change());
            }
            Err(e) => return Err(e.into()),
        }
        ctx.event(
            reg,
            EventType::Normal,
            "Purging",
            format!("deletionPolicy is Delete: Job {ns}/{name} deletes the registry's objects under {place}"),
        )
        .await;
        return Err(Error::Pending {
            what: format!("purge Job {ns}/{name}"),
            retry: PURGE_POLL,
        });
    };
    let outcome = super::jobs::job_phase(&existing);
    if !matches!(outcome, GcPhase::Succeeded | GcPhase::Failed) {
        return Err(Error::Pending {
            what: format!("purge Job {ns}/{name}"),
            retry: PURGE_POLL,
        });
    }
    let message = super::jobs::termination_message(client, &ns, &name, build::PURGE_CONTAINER)
        .await?
        .unwrap_or_default();
    if outcome == GcPhase::Succeeded {
        let note = match super::jobs::parse_report::<PurgeReport>(&message) {
            Some(r) => format!(
                "deletionPolicy is Delete: {} objects ({} bytes) under {place} deleted",
                r.objects_deleted, r.bytes_freed
            ),
            None => {
                format!("deletionPolicy is Delete: the registry's objects under {place} deleted")
            }
        };
        ctx.event(reg, EventType::Normal, "DataDeleted", note).await;
    } else {
        let why = message
            .lines()
            .last()
            .unwrap_or("no message")
            .trim()
            .to_owned();
        let msg = kept(format!("purge Job {ns}/{name} failed: {why}"));
        ctx.event(reg, EventType::Warning, "DataNotDeleted", msg)
            .await;
    }
    match jobs.delete(&name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

/// The part of `berth purge`'s report the Event quotes.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PurgeReport {
    objects_deleted: u64,
    bytes_freed: u64,
}

/// True when the Registry's spec names the Secret (so its appearance is worth a reconcile).
pub fn references_secret(reg: &Registry, secret: &str) -> bool {
    let s = &reg.spec;
    build::pod_tls_secret(reg).as_deref() == Some(secret)
        || s.tls.as_ref().and_then(|t| t.secret_name.as_deref()) == Some(secret)
        || s.auth.as_ref().and_then(|a| a.htpasswd_secret.as_deref()) == Some(secret)
        || s.storage.s3.as_ref().map(|s| s.credentials_secret.as_str()) == Some(secret)
        || build::trusted_issuers(reg).any(|t| t.public_key_secret == secret)
        || build::upstream_secrets(reg)
            .iter()
            .chain(&build::replication_secrets(reg))
            .chain(&build::notification_secrets(reg))
            .any(|(s, _)| s == secret)
}

/// The Registries a Secret event should wake: those in its namespace that name it.
pub fn registries_for_secret(
    registries: &[Arc<Registry>],
    secret: &Secret,
) -> Vec<kube::runtime::reflector::ObjectRef<Registry>> {
    let name = secret.name_any();
    let ns = secret.namespace();
    registries
        .iter()
        .filter(|r| r.namespace() == ns && references_secret(r, &name))
        .map(|r| kube::runtime::reflector::ObjectRef::from_obj(&**r))
        .collect()
}

/// Makes the generated admin credentials Secret if it does not exist yet and returns its name.
/// An existing Secret is never touched: rotating it is the user's call (delete it and the next
/// reconcile makes a new one; the pods see it through their Secret volume).
pub async fn ensure_admin_secret(client: &kube::Client, reg: &Registry) -> Result<String, Error> {
    let name = names::admin_secret(&reg.name_any());
    ensure_generated(client, reg, &name, || {
        let username = build::admin_username(reg).unwrap_or_else(|| "admin".to_owned());
        let salt: [u8; 16] = rand::random();
        build::admin_secret(reg, &username, &build::generate_password(), salt)
    })
    .await?;
    Ok(name)
}

/// Makes the token signing key Secret if it does not exist yet; never overwrites it (delete it
/// to rotate: tokens already issued then fail and clients sign in again).
pub async fn ensure_token_key_secret(client: &kube::Client, reg: &Registry) -> Result<(), Error> {
    let name = names::token_key_secret(&reg.name_any());
    ensure_generated(client, reg, &name, || {
        let pem = crate::keys::generate_token_key_pem().map_err(|e| BuildError::Invalid {
            field: "spec.auth.token",
            reason: format!("cannot generate a signing key: {e}"),
        })?;
        build::token_key_secret(reg, &pem)
    })
    .await
}

/// Creates the Secret `make` builds unless one named `name` exists; a racing reconcile's
/// Secret stands.
async fn ensure_generated(
    client: &kube::Client,
    reg: &Registry,
    name: &str,
    make: impl FnOnce() -> Result<Secret, BuildError>,
) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &reg.namespace().unwrap_or_default());
    if api.get_opt(name).await?.is_some() {
        return Ok(());
    }
    match api
        .create(&kube::api::PostParams::default(), &make()?)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
