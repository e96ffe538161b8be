//! `berth operator`: connect to the API server, serve /metrics, /healthz and /readyz, wait for
//! the leader Lease, then run the Registry, GarbageCollection and Mirror controllers until a signal
//! (or until the Lease is lost, when the process exits so a fresh replica can take over).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use kube::Client;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::watcher;

use super::crd::{GarbageCollection, Mirror, Registry};
use super::leader::{self, Leadership, LeaseConfig};
use super::metrics::Metrics;
use super::resources::Defaults;
use super::{Context, error_policy, gc, mirror, registry};

#[derive(Clone, Debug)]
pub struct Options {
    /// Watch only this namespace; `None` watches all.
    pub namespace: Option<String>,
    pub http_addr: SocketAddr,
    /// `None` turns leader election off (a single replica).
    pub lease: Option<LeaseConfig>,
    pub image: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot connect to the Kubernetes API: {0}")]
    Connect(#[source] kube::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("lost the leader Lease; exiting so another replica can lead")]
    LostLease,
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

pub async fn run(opts: Options) -> Result<(), RunError> {
    let client = Client::try_default().await.map_err(RunError::Connect)?;
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(opts.http_addr)
        .await
        .map_err(|source| RunError::Bind {
            addr: opts.http_addr,
            source,
        })?;
    tokio::spawn(serve_http(listener, metrics.clone()));
    let version = client
        .apiserver_version()
        .await
        .map_err(RunError::Connect)?;
    tracing::info!(kubernetes = %version.git_version, namespace = opts.namespace.as_deref().unwrap_or("(all)"), "connected");
    metrics.set_ready();

    let lease_api = opts.lease.as_ref().map(|l| {
        (
            Api::<Lease>::namespaced(client.clone(), &l.namespace),
            l.clone(),
        )
    });
    let leadership = Arc::new(match &lease_api {
        Some(_) => Leadership::elected(),
        None => Leadership::unconditional(),
    });
    if let Some((api, cfg)) = &lease_api {
        leader::acquire(api, cfg, &leadership).await;
    }
    metrics.set_leader(true);

    let ctx = Arc::new(
        Context::new(
            client.clone(),
            Defaults {
                image: opts.image.clone(),
            },
            metrics.clone(),
        )
        .with_leadership(leadership.clone()),
    );
    let ns = opts.namespace.as_deref();
    let wc = watcher::Config::default().any_semantic();
    // Children carry this label, so the owned-object watches skip everything else.
    let owned = wc
        .clone()
        .labels("app.kubernetes.io/managed-by=berth-operator");

    let registries = Controller::new(api::<Registry>(&client, ns), wc.clone());
    let store = registries.store();
    let registries = registries
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned.clone())
        .owns(api::<ConfigMap>(&client, ns), owned.clone())
        .owns(api::<PersistentVolumeClaim>(&client, ns), owned.clone())
        // A Secret a Registry names may appear (or change) after the Registry: look again then.
        .watches(
            api::<Secret>(&client, ns),
            wc.clone(),
            move |secret: Secret| registry::registries_for_secret(&store.state(), &secret),
        )
        .shutdown_on_signal()
        .run(registry::reconcile, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "registry controller");
            }
        });
    let collections = Controller::new(api::<GarbageCollection>(&client, ns), wc.clone());
    let gc_store = collections.store();
    let collections = collections
        .owns(api::<Job>(&client, ns), owned.clone())
        .owns(api::<CronJob>(&client, ns), owned.clone())
        // A Registry that goes (or comes back) changes what its GarbageCollections can run.
        .watches(
            api::<Registry>(&client, ns),
            wc.clone(),
            move |reg: Registry| gc::collections_for_registry(&gc_store.state(), &reg),
        )
        .shutdown_on_signal()
        .run(gc::reconcile, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "gc controller");
            }
        });
    let mirrors = Controller::new(api::<Mirror>(&client, ns), wc.clone());
    let mirror_store = mirrors.store();
    let mirrors = mirrors
        .owns(api::<Job>(&client, ns), owned.clone())
        .owns(api::<CronJob>(&client, ns), owned.clone())
        .owns(api::<ConfigMap>(&client, ns), owned.clone())
        // A Registry that goes (or comes back) changes where its Mirrors can push.
        .watches(
            api::<Registry>(&client, ns),
            wc.clone(),
            move |reg: Registry| mirror::mirrors_for_registry(&mirror_store.state(), &reg),
        )
        .shutdown_on_signal()
        .run(mirror::reconcile, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "mirror controller");
            }
        });
    let controllers = futures::future::join3(registries, collections, mirrors);
    match lease_api {
        Some((api, cfg)) => {
            tokio::select! {
                // A signal stopped the controllers: hand the Lease to the next replica now.
                _ = controllers => {
                    metrics.set_leader(false);
                    leader::release(&api, &cfg, &leadership).await;
                    Ok(())
                }
                _ = leader::keep(&api, &cfg, &leadership) => {
                    metrics.set_leader(false);
                    Err(RunError::LostLease)
                }
            }
        }
        None => {
            controllers.await;
            Ok(())
        }
    }
}

/// The operator's own HTTP side.
pub fn http_router(metrics: Arc<Metrics>) -> Router {
    let m = metrics.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let m = m.clone();
                async move {
                    if m.is_ready() {
                        (StatusCode::OK, "ready")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "connecting to the API server",
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.encode() }
            }),
        )
}

async fn serve_http(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    if let Err(e) = axum::serve(listener, http_router(metrics)).await {
        tracing::error!(error = %e, "operator HTTP server stopped");
    }
}

/// Default Lease timings: a dead leader is replaced within about 15 seconds.
pub fn lease_config(namespace: String, identity: String) -> LeaseConfig {
    LeaseConfig {
        name: "berth-operator-leader".into(),
        namespace,
        identity,
        duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_readiness_and_metrics_endpoints() {
        let metrics = Arc::new(Metrics::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(serve_http(listener, metrics.clone()));
        let http = reqwest::Client::new();
        let get = |path: &str| http.get(format!("{base}{path}")).send();
        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        assert_eq!(
            get("/readyz").await.unwrap().status(),
            503,
            "not ready before the API answered"
        );
        metrics.set_ready();
        metrics.reconciled("Registry");
        assert_eq!(get("/readyz").await.unwrap().status(), 200);
        let text = get("/metrics").await.unwrap().text().await.unwrap();
        assert!(
            text.contains("berth_operator_reconciles_total{kind=\"Registry\"} 1"),
            "{text}"
        );
    }
}
