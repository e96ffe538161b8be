//! The two custom resources the operator serves, group `berth.dev`, version `v1alpha1`:
//! `Registry` (a Berth registry: Deployment, Service, storage, credentials) and
//! `GarbageCollection` (a one-shot or scheduled `berth gc` run against a Registry's store).
//! The CRDs are generated from these types (`berth crd`), so the schema, printer columns and
//! CEL rules live next to the fields they describe.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, ValidationRule,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars1 as schemars;
use schemars1::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of both kinds.
pub const GROUP: &str = "berth.dev";

/// A Berth OCI registry running in this namespace.
// clippy reads the repeated `type_ = ...` of separate printcolumns as one duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Registry",
    plural = "registries",
    shortname = "reg",
    category = "berth",
    namespaced,
    status = "RegistryStatus",
    derive = "PartialEq",
    derive = "Default",
    crates(schemars = "::schemars1"),
    doc = "A Berth OCI registry: the operator runs it as a Deployment with a Service, storage and credentials.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RegistrySpec {
    /// Container image running the registry (default: the operator's own image and tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Number of registry pods (default 1). Ignored while `autoscaling` is set, except 0:
    /// `replicas: 0` always stops the registry, and with `autoscaling` it suspends the
    /// autoscaler too (no HPA while at 0; remove `replicas` to hand the count back to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Where blobs and manifests live: exactly one of `pvc` or `s3`.
    pub storage: StorageSpec,
    /// Who may push and pull. Absent: the registry is open to anyone who can reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// TLS for the endpoint: an existing Secret, or a cert-manager issuer that makes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// The Service in front of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,
    /// An Ingress for clients outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// CPU and memory for each registry container (and the gc and purge Jobs' containers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// A PodDisruptionBudget for the registry pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_disruption_budget: Option<PodDisruptionBudgetSpec>,
    /// A HorizontalPodAutoscaler on CPU; replaces `replicas` (but `replicas: 0` suspends it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Registry log format (default plain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// What one client may hold (Berth's `limits`): connections, upload sessions, blob sizes,
    /// and how long a connection may sit without sending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
    /// Pull-through cache (Berth's `proxy`): repositories under each upstream's prefix are
    /// read from that upstream on a miss and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,
    /// Push replication (Berth's `replication`): each push and delete in a rule's
    /// repositories is sent on to another registry, from a durable queue in the registry's
    /// storage, with a periodic full reconcile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub replication: Vec<ReplicationRuleSpec>,
    /// Rules the registry holds on its own (Berth's `policy`): immutable tags, storage
    /// quotas, webhooks and signatures required to pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySpec>,
    /// Accept indexes whose child manifests are not all pushed (Berth's
    /// `allowSparseIndexes`): what a platform-filtered mirror stores. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_sparse_indexes: bool,
    /// What happens to stored data when the Registry is deleted (default Retain).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.pvc) != has(self.s3)", "message": "set exactly one storage kind: pvc or s3"}
]))]
pub struct StorageSpec {
    /// A PersistentVolumeClaim the operator creates and mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcStorage>,
    /// An S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcStorage {
    /// Requested size, a Kubernetes quantity such as `10Gi`.
    // A pattern, not CEL's isQuantity: the quantity library needs Kubernetes 1.29.
    #[schemars(regex(
        pattern = r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
    ))]
    pub size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Default `[ReadWriteOnce]`; use ReadWriteMany to run several replicas on several nodes.
    // Bounded, so the API server's cost estimate of the rules that read it stays small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4))]
    pub access_modes: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    pub bucket: String,
    /// Endpoint URL for S3-compatible stores (MinIO, Garage); empty for AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Key prefix inside the bucket, so several registries can share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Path-style requests; default true when `endpoint` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// Answer blob GETs with a redirect to a presigned URL (clients must reach the endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<bool>,
    /// Secret with keys `accessKeyId` and `secretAccessKey` (and optionally `sessionToken`).
    pub credentials_secret: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.htpasswdSecret) && has(self.admin))", "message": "set htpasswdSecret or admin, not both"}
]))]
pub struct AuthSpec {
    /// An existing Secret with an `htpasswd` key (bcrypt entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htpasswd_secret: Option<String>,
    /// An admin user whose password the operator generates into `<name>-admin`. The admin
    /// may manage robot accounts and may pull, push and delete in every repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminSpec>,
    /// Named groups of users, referred to by `access` rules (Berth's `auth.groups`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Access rules (Berth's `auth.access`): whatever no rule grants is denied. With no rules
    /// at all every signed-in user may do everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<AccessRuleSpec>,
    /// Addresses or CIDRs of the proxies in front of the pods (the Ingress controller's pods,
    /// e.g. `10.0.0.0/8`) whose `X-Forwarded-For`, `-Proto` and `-Host` are believed (Berth's
    /// `auth.trustedProxies`): failed logins are then counted per real client, and challenges
    /// name the host the client used. From any other peer these headers are ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^[0-9A-Fa-f.:]+(/[0-9]{1,3})?$"))
    )]
    pub trusted_proxies: Vec<String>,
    /// Docker token auth: clients sign in at the token endpoint and present short-lived bearer
    /// tokens. The operator generates the signing key once into the Secret `<name>-token-key`
    /// (never overwritten; delete it to rotate), shared by every replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenSpec {
    /// The token endpoint clients are sent to, an absolute `http(s)://` URL such as
    /// `https://registry.example.com/token` (default: `/token` on the host a trusted proxy
    /// names, else on the pod's listen address; set it, or `trustedProxies`, behind an Ingress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s/]+(/\S*)?$"))]
    pub realm: Option<String>,
    /// The `service` of challenges and the audience of tokens (default `berth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The issuer of tokens signed here (default `berth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Lifetime of issued tokens in seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30, max = 86400))]
    pub expires_seconds: Option<u64>,
    /// Token services whose tokens are accepted as they are (an SSO's token issuer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_issuers: Vec<TrustedIssuerSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustedIssuerSpec {
    /// The `iss` claim of its tokens.
    pub issuer: String,
    /// A Secret whose `public-key.pem` key holds the PEM public key (EC or RSA) or certificate
    /// the issuer signs with.
    pub public_key_secret: String,
}

/// One access rule: a repository glob and what it grants to whom.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessRuleSpec {
    /// A repository glob: `*` matches within one path segment, a `**` segment any depth.
    pub repository: String,
    /// User names; `anonymous` means everyone, signed in or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Group names from `groups`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    pub actions: Vec<AccessAction>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccessAction {
    Pull,
    Push,
    Delete,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminSpec {
    /// Default `admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.secretName) != has(self.issuerRef)", "message": "set exactly one of secretName or issuerRef"}
]))]
pub struct TlsSpec {
    /// An existing `kubernetes.io/tls` Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// A cert-manager issuer. With an Ingress, the Ingress asks cert-manager for its
    /// certificate; without one, the operator makes a Certificate (Secret `<name>-tls`) for the
    /// Service's DNS names and the pods serve HTTPS with it. Needs cert-manager installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// Extra DNS names for the operator-made Certificate (e.g. a LoadBalancer's name); the
    /// Service's in-cluster names are always included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    pub name: String,
    /// `Issuer` (default) or `ClusterIssuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// ClusterIP (default), NodePort or LoadBalancer.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["ClusterIP", "NodePort", "LoadBalancer"]))]
    pub type_: Option<String>,
    /// Default 5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.minAvailable) && has(self.maxUnavailable))", "message": "set minAvailable or maxUnavailable, not both"}
]))]
pub struct PodDisruptionBudgetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"},
    {"rule": "!has(self.targetCPUUtilizationPercentage)", "message": "spelled targetCpuUtilizationPercentage"}
]))]
pub struct AutoscalingSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_replicas: Option<i32>,
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Default 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: Option<i32>,
    /// The HPA's own spelling, in the schema only so that admission refuses it loudly
    /// instead of pruning it in silence; the operator refuses it too.
    #[serde(
        default,
        rename = "targetCPUUtilizationPercentage",
        skip_serializing_if = "Option::is_none"
    )]
    pub target_cpu_utilization_percentage_misspelled: Option<i32>,
}

/// Caps and timeouts per registry pod (Berth's `limits`); unset fields keep Berth's defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Largest blob accepted, in bytes (default 34359738368, 32 GiB); a bigger push is refused
    /// with 413 SIZE_INVALID as soon as it passes the size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_blob_bytes: Option<u64>,
    /// Open upload sessions per repository and per user on one pod (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_upload_sessions: Option<u32>,
    /// Open client connections per pod (default 4096, lowered to fit the open-file limit).
    /// At the cap an idle keep-alive connection is closed to make room; when every one is
    /// busy, new connections wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
    /// Time a client has to send a request's headers, and to start the next request on a
    /// kept-alive connection (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]*[1-9][0-9]*(ms|[smhd])$"))]
    pub header_read_timeout: Option<String>,
    /// A connection on which nothing moves either way for this long is closed, mid-request
    /// too, so a stalled upload gives up its session (default `2m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]*[1-9][0-9]*(ms|[smhd])$"))]
    pub idle_timeout: Option<String>,
}

/// The pull-through cache's upstreams.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    #[schemars(length(max = 64))]
    pub upstreams: Vec<UpstreamSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<ProxyRetentionSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamSpec {
    /// Local name prefix: `docker.io` serves `docker.io/library/alpine` from this upstream.
    #[schemars(length(min = 1, max = 128))]
    pub prefix: String,
    /// The upstream registry's base URL, `https://registry-1.docker.io`.
    #[schemars(regex(pattern = r"^https?://[^\s/]+(/\S*)?$"))]
    pub url: String,
    /// Serves requests that carry no prefix (the Docker daemon's `registry-mirrors`) when the
    /// name is not a local repository. At most one upstream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
    /// User for the upstream (Basic, or to obtain Bearer tokens); with `passwordSecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A Secret whose `password` key holds the password or access token for `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<String>,
    /// How long a tag is served before one HEAD revalidates it (default `5m`; `0s`: every pull).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|[smhd])$"))]
    pub tag_ttl: Option<String>,
    /// Concurrent requests to this upstream per pod (default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
    /// Never contact the upstream: serve only what is cached.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offline: bool,
}

/// One replication target.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationRuleSpec {
    /// Names the rule's queue and metrics: lowercase letters, digits and `-`.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub name: String,
    /// Which repositories (a glob: `prod/**`).
    #[schemars(length(min = 1, max = 256))]
    pub repositories: String,
    /// The destination registry's base URL.
    #[schemars(regex(pattern = r"^https?://[^\s/]+/?$"))]
    pub url: String,
    /// Put before each repository's name at the destination (`dr/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// User at the destination; with `passwordSecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A Secret whose `password` key holds the password or token for `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<String>,
    /// `push`, `delete` (default both).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ReplicationAction>,
    /// How often everything is compared with the destination (default `1h`; `0s` never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|[smhd])$"))]
    pub reconcile_every: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationAction {
    Push,
    Delete,
}

/// The registry's policy, kept in Git with the Registry (rendered into Berth's `policy`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// Tags that, once pushed, never move and are never deleted (by clients or retention).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub immutable_tags: Vec<ImmutableTagRuleSpec>,
    /// Storage budgets by repository glob, each blob counted once per budget.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub quotas: Vec<QuotaRuleSpec>,
    /// Webhooks told of pushes, deletes and (sampled) pulls, from a durable queue.
    // Unnamed endpoints are named after their URL; `berth serve` (and the operator) refuse
    // two that end up with one name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        extend("x-kubernetes-validations" = [
            {"rule": "self.all(n, !has(n.name) || self.exists_one(m, has(m.name) && m.name == n.name))",
             "message": "two notifications have the same name"}
        ])
    )]
    pub notifications: Vec<NotificationRuleSpec>,
    /// Repositories whose images are pulled only with a signature that verifies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub signatures: Vec<SignatureRuleSpec>,
    /// Write an audit line for anonymous requests too (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit_anonymous: bool,
}

/// Tags matching `tags` in repositories matching `repository` are immutable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImmutableTagRuleSpec {
    /// A repository glob (`prod/**`).
    #[schemars(length(min = 1, max = 256))]
    pub repository: String,
    /// A regular expression a tag must match to be immutable (`^v[0-9]`); searched, not
    /// anchored, unless it says `^`/`$`.
    #[schemars(length(min = 1, max = 1024))]
    pub tags: String,
}

/// One storage budget.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaRuleSpec {
    /// A repository glob: one budget for everything it matches (`team-a/**`).
    #[schemars(length(min = 1, max = 256))]
    pub repository: String,
    /// The budget: a number of bytes, or a size such as `50Gi` or `2T`.
    #[schemars(schema_with = "byte_size_schema")]
    pub max_bytes: crate::config::ByteSize,
    /// Fraction of the budget at which a warning is raised (default 0.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub warn_at: Option<f64>,
}

/// What `parse_bytes` reads, for the string form of a byte size.
pub const BYTE_SIZE_PATTERN: &str = r"^[0-9]+(Ki|Mi|Gi|Ti|Pi|k|K|M|G|T|P)?$";

/// A byte count as the API server checks it: an integer of at least 1 or a size string. An
/// int-or-string node has no `type` (a structural schema forbids one there; kube's rewriter
/// would strip the types of an `anyOf`, so none is given, as k8s-openapi's IntOrString does);
/// the pattern applies to strings only, and CEL keeps integers positive (the operator reads
/// them as unsigned).
fn byte_size_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "pattern": BYTE_SIZE_PATTERN,
        "x-kubernetes-validations": [
            {"rule": "type(self) == string || self >= 1", "message": "a byte count of at least 1, or a size such as 50Gi"}
        ],
    })
}

/// A webhook endpoint and what it is told.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationRuleSpec {
    /// Names the endpoint's queue and metrics (default derived from the URL): lowercase
    /// letters, digits and `-`.
    // maxLength, not only the pattern, bounds the cost of the list's uniqueness rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63), regex(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub name: Option<String>,
    /// The receiver, `https://hooks.example.com/registry`.
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s/]+(/\S*)?$"))]
    pub url: String,
    /// A Secret whose `secret` key holds the HMAC-SHA256 key; each request then carries
    /// `X-Berth-Signature-256: sha256=<hex of HMAC(body)>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_ref: Option<String>,
    /// `push`, `delete`, `pull` (default push and delete).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3), extend("x-kubernetes-list-type" = "set"))]
    pub actions: Vec<NotificationAction>,
    /// Which repositories (a glob, default `**`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub repositories: Option<String>,
    /// `distribution` (CNCF Distribution's envelope, default) or `cloudevents`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<NotificationFormatSpec>,
    /// Fraction of pulls sent, when `pull` is among the actions (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub pull_sample: Option<f64>,
    /// How long one delivery may take before it counts as failed (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]*[1-9][0-9]*(ms|[smhd])$"))]
    pub timeout: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotificationAction {
    Push,
    Delete,
    Pull,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotificationFormatSpec {
    Distribution,
    Cloudevents,
}

/// Images in matching repositories are pulled only with a signature by one of the keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignatureRuleSpec {
    /// A repository glob (`prod/**`).
    #[schemars(length(min = 1, max = 256))]
    pub repository: String,
    /// The PEM text of an ECDSA P-256 public key (`cosign.pub`), public data that may sit in
    /// Git; several `PUBLIC KEY` blocks mean any of them verifies.
    #[schemars(
        length(max = 16384),
        regex(
            pattern = r"^\s*(-----BEGIN PUBLIC KEY-----[A-Za-z0-9+/=\s]+-----END PUBLIC KEY-----\s*)+$"
        )
    )]
    pub public_key: String,
    /// Also refuse unsigned pulls by digest (default: only pulls by tag are checked).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_digest: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyRetentionSpec {
    /// GarbageCollection runs remove cached images nobody pulled for this long (e.g. `30d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]*[1-9][0-9]*(ms|[smhd])$"))]
    pub unpulled_for: Option<String>,
    /// GarbageCollection runs remove the least recently pulled cached images until the rest
    /// fit in this many bytes (e.g. `500Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi|Ti|Pi|k|K|M|G|T|P)?$"))]
    pub max_bytes: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the PVC (and bucket data) after the Registry is deleted.
    #[default]
    Retain,
    /// Delete the PVC with the Registry; on S3, a Job (`berth purge`) deletes the registry's
    /// objects (everything under `prefix`, or only Berth's own top-level keys without one).
    Delete,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Pods the Deployment wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Pods passing /readyz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Where clients push and pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The Secret holding generated admin credentials, when the operator made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// The cert-manager Certificate the pods' TLS Secret is issued from, when the operator made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Each `spec.policy.quotas` budget as the registry last reported it on /metrics (read
    /// about once a minute; a budget the registry has not counted yet is absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaStatus>,
}

/// One storage budget's usage, as the registry's replicas share it through the store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaStatus {
    /// The budget's repository glob, as `spec.policy.quotas[].repository` names it.
    pub repository: String,
    /// Bytes the budget counts (each blob once).
    pub used_bytes: u64,
    /// The budget's limit in bytes.
    pub limit_bytes: u64,
    /// True while usage is at or past the budget's `warnAt` fraction of the limit.
    pub warning: bool,
}

/// A cleanup run of `berth gc` against a Registry's store: once, or on a cron schedule.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "GarbageCollection",
    plural = "garbagecollections",
    shortname = "gc",
    category = "berth",
    namespaced,
    status = "GarbageCollectionStatus",
    derive = "PartialEq",
    derive = "Default",
    crates(schemars = "::schemars1"),
    doc = "Runs `berth gc` against a Registry's store, once or on a cron schedule.",
    printcolumn(
        name = "Registry",
        type_ = "string",
        json_path = ".spec.registryRef.name"
    ),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Deleted",
        type_ = "integer",
        json_path = ".status.blobsDeleted"
    ),
    printcolumn(name = "Freed", type_ = "integer", json_path = ".status.bytesFreed"),
    printcolumn(
        name = "Last",
        type_ = "string",
        json_path = ".status.lastResult.phase"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GarbageCollectionSpec {
    /// The Registry (same namespace) whose store is cleaned.
    pub registry_ref: RegistryRef,
    /// Report what would be deleted, delete nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Also delete manifests no tag points at (and what only they reference).
    #[serde(default)]
    pub delete_untagged: bool,
    /// Tags to expire before marking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
    /// A cron schedule (`0 3 * * *`): run as a CronJob. Absent: run one Job now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Keep unreferenced blobs and manifests touched within this long (`berth gc --grace`;
    /// default the Registry's config, else 1h). `0s` sweeps at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|[smhd])$"))]
    pub grace: Option<String>,
    /// Remove upload sessions idle for longer than this (`berth gc --upload-ttl`; default 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|[smhd])$"))]
    pub upload_ttl: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryRef {
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// The conditions for every repository (`**`) that no rule below matched.
    #[serde(flatten)]
    pub conditions: RetentionConditions,
    /// Rules for the repositories matching a pattern, as `berth gc --rule` and the config's
    /// `gc.retention` take them. The first rule whose pattern matches a repository applies;
    /// `keepLast`, `keepTags` and `olderThan` above form the last rule, for every repository
    /// (`**`) no rule matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RetentionRuleSpec>,
}

/// Retention for the repositories matching one pattern. A tag is kept if any condition keeps
/// it; a rule with no conditions keeps every tag of its repositories.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionRuleSpec {
    /// A repository glob: `*` matches within one path segment, a `**` segment any depth.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "!self.contains(':') && self != ''", "message": "repositories must be a non-empty glob without ':'"}
    ]))]
    pub repositories: String,
    #[serde(flatten)]
    pub conditions: RetentionConditions,
}

/// What keeps or expires a tag, the same for a rule and for the top-level retention.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionConditions {
    /// Keep the newest N tags per repository (by when they were last pushed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_last: Option<u32>,
    /// Keep tags matching this regular expression (`^v[0-9]`), however old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "!self.contains(',')", "message": "keepTags cannot contain a comma (berth gc --rule separates conditions with commas)"}
    ]))]
    pub keep_tags: Option<String>,
    /// Expire tags pushed longer ago than this duration (`30d`, `12h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+[smhd]$"))]
    pub older_than: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GcPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GarbageCollectionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Of the current run (the most recent one when scheduled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<GcPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Of the last finished run (the DELETED column), which may be older than the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blobs_deleted: Option<u64>,
    /// Of the last finished run (the FREED column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_freed: Option<u64>,
    /// The last run that finished, succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<GcRunResult>,
    /// The last run that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_result: Option<GcRunResult>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// What one finished `berth gc` Job reported.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcRunResult {
    pub job_name: String,
    /// Succeeded or Failed.
    pub phase: GcPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blobs_deleted: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_freed: Option<u64>,
    /// Why a failed run failed (its termination message or log tail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A mirror set copied into a Registry by `berth mirror sync`: once, or on a cron schedule.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Mirror",
    plural = "mirrors",
    category = "berth",
    namespaced,
    status = "MirrorStatus",
    derive = "PartialEq",
    derive = "Default",
    crates(schemars = "::schemars1"),
    doc = "Copies images from other registries into a Registry with `berth mirror sync`, once or on a cron schedule.",
    printcolumn(
        name = "Registry",
        type_ = "string",
        json_path = ".spec.registryRef.name"
    ),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Images", type_ = "integer", json_path = ".status.images"),
    printcolumn(name = "Bytes", type_ = "integer", json_path = ".status.bytesCopied"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MirrorSpec {
    /// The Registry (same namespace) the images are copied into, through its Service as any
    /// client pushes (so its access rules, replication and audit apply).
    pub registry_ref: RegistryRef,
    /// A cron schedule (`0 * * * *`): run as a CronJob. Absent: run one Job per generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// What to copy: the entries of a mirror set file.
    #[schemars(length(min = 1, max = 256))]
    pub mirrors: Vec<MirrorEntrySpec>,
    /// A Secret with `username` and `password` keys that may push to the Registry. Default:
    /// the Registry's generated admin (`spec.auth.admin`); needed when its auth has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_secret: Option<String>,
}

/// One source repository and what to take of it, as in a mirror set file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MirrorEntrySpec {
    /// The registry's URL and the repository: `https://ghcr.io/org/app`.
    #[schemars(regex(pattern = r"^https?://[^\s/]+/\S+$"))]
    pub source: String,
    /// Regular expressions; a tag is taken when one matches it whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// A version range such as `>=3.19 <4` (alternatives with `||`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    /// Only the newest N of the tags chosen, by version (or as `newestBy` says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub newest: Option<u32>,
    /// What "newest" means: `version` (default) or `created`, when each image was built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_by: Option<NewestBy>,
    /// From an index, only these platforms (`os/arch[/variant]`): a sparse index, which the
    /// Registry accepts with `allowSparseIndexes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// Take the images' referrers along (signatures, SBOMs, attestations).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub referrers: bool,
    /// The repository in the Registry (default: the source repository).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// User at the source; with `passwordSecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A Secret whose `password` key holds the password or token for `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NewestBy {
    Version,
    Created,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MirrorStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Of the current run (the most recent one when scheduled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<GcPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The Job whose report the figures below are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job_name: Option<String>,
    /// Of the last finished run: tags copied or found up to date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests_copied: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blobs_copied: Option<u64>,
    /// Blobs the Registry already had: nothing moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blobs_skipped: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_copied: Option<u64>,
    /// Images that failed in the last finished run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<u64>,
    /// The first failure of the last finished run that had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When a run last finished without errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<Time>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The longest suffix a child's name adds to the Registry's (`<name>-token-key`).
pub const LONGEST_CHILD_SUFFIX: &str = "-token-key";

/// The longest Registry name whose children's names still fit in 63 characters.
pub const MAX_REGISTRY_NAME: usize = 63 - LONGEST_CHILD_SUFFIX.len();

/// What every child's name needs of the Registry's: a DNS-1035 label (the Service is named
/// after the Registry) short enough for the longest suffix.
pub fn registry_name_problem(name: &str) -> Option<String> {
    let label = name.len() <= MAX_REGISTRY_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    (!label).then(|| REGISTRY_NAME_MESSAGE.to_owned())
}

const REGISTRY_NAME_MESSAGE: &str = "a Registry's name must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter, ending with a letter or digit) of at most 53 characters, so that its Service and `<name>-token-key` are valid names";

/// The Registry CRD with the rules on its root the derive cannot express: `metadata.name`
/// (the one metadata field, with `generateName`, that CEL may read there) must suit every
/// child, and several replicas need a volume that several nodes can mount.
pub fn registry_crd() -> CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = Registry::crd();
    let name_rule = format!(
        "self.metadata.name.size() <= {MAX_REGISTRY_NAME} && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    );
    let rules = [
        ValidationRule {
            rule: name_rule,
            message: Some(REGISTRY_NAME_MESSAGE.to_owned()),
            ..ValidationRule::default()
        },
        ValidationRule {
            rule: SINGLE_NODE_RULE.to_owned(),
            message: Some(SINGLE_NODE_MESSAGE.to_owned()),
            field_path: Some(".spec.replicas".to_owned()),
            ..ValidationRule::default()
        },
    ];
    for v in &mut crd.spec.versions {
        if let Some(root) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            root.x_kubernetes_validations = Some(rules.to_vec());
        }
    }
    crd
}

/// A ReadWriteOnce (or ReadWriteOncePod) claim is mounted by one node: more than one replica
/// would leave pods Pending on other nodes, so only ReadWriteMany takes several.
const SINGLE_NODE_RULE: &str = "!has(self.spec.storage.pvc) || (has(self.spec.storage.pvc.accessModes) && self.spec.storage.pvc.accessModes.exists(m, m == 'ReadWriteMany')) || (has(self.spec.autoscaling) ? self.spec.autoscaling.maxReplicas <= 1 : (!has(self.spec.replicas) || self.spec.replicas <= 1))";

pub const SINGLE_NODE_MESSAGE: &str = "more than one replica needs storage.pvc.accessModes [ReadWriteMany] (a ReadWriteOnce volume is mounted by one node), or S3 storage";

/// Every CRD as one YAML stream, the text `berth crd` prints and `crds/` holds.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let mut out = String::new();
    for crd in [registry_crd(), GarbageCollection::crd(), Mirror::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_in_the_repo_match_the_types() {
        let generated = crds_yaml().unwrap();
        // `crds/` is what `berth crd` prints; the chart and the kustomize base carry copies.
        for rel in [
            "crds/berth.dev.yaml",
            "charts/berth/crds/berth.dev.yaml",
            "deploy/kustomize/base/crds.yaml",
        ] {
            let path = format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"));
            if std::env::var_os("BERTH_BLESS").is_some() {
                std::fs::write(&path, &generated).unwrap();
                continue;
            }
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == generated,
                "{rel} is stale: run `BERTH_BLESS=1 cargo test crds_in_the_repo` (or `berth crd > {rel}`)"
            );
        }
    }

    /// Every function and macro CEL offers CRD validation rules on Kubernetes 1.28, the oldest
    /// version we support: the standard definitions, cel-go's strings extension (version 0),
    /// and Kubernetes' lists, regex and URL libraries (all since 1.27 or before). Not here, as
    /// they came later: the quantity library (`isQuantity`, `quantity`, 1.29 for CRDs), optional
    /// types, sets, IP and CIDR, `format`, semver. The authorizer library exists only for
    /// admission policies.
    const CEL_ON_1_28: &[&str] = &[
        // macros
        "has",
        "all",
        "exists",
        "exists_one",
        "map",
        "filter",
        // standard
        "size",
        "matches",
        "startsWith",
        "endsWith",
        "contains",
        "int",
        "uint",
        "double",
        "string",
        "bytes",
        "bool",
        "type",
        "dyn",
        "duration",
        "timestamp",
        "getDate",
        "getDayOfMonth",
        "getDayOfWeek",
        "getDayOfYear",
        "getFullYear",
        "getHours",
        "getMilliseconds",
        "getMinutes",
        "getMonth",
        "getSeconds",
        // strings extension v0
        "charAt",
        "indexOf",
        "lastIndexOf",
        "lowerAscii",
        "upperAscii",
        "replace",
        "split",
        "substring",
        "trim",
        "join",
        // Kubernetes lists
        "isSorted",
        "sum",
        "min",
        "max",
        // Kubernetes regex
        "find",
        "findAll",
        // Kubernetes URLs
        "url",
        "isURL",
        "getScheme",
        "getHost",
        "getHostname",
        "getPort",
        "getEscapedPath",
        "getQuery",
    ];

    /// Every `x-kubernetes-validations` rule anywhere in a CRD document.
    fn cel_rules(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(o) => {
                if let Some(rules) = o.get("x-kubernetes-validations").and_then(|r| r.as_array()) {
                    out.extend(
                        rules
                            .iter()
                            .filter_map(|r| r["rule"].as_str().map(str::to_owned)),
                    );
                }
                o.values().for_each(|v| cel_rules(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| cel_rules(v, out)),
            _ => {}
        }
    }

    /// The names called in a CEL expression (`f(` or `.f(`), string literals left out.
    fn cel_calls(rule: &str) -> Vec<String> {
        let mut code = String::new();
        let mut quote = None;
        for c in rule.chars() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '\'' || c == '"' => {
                    quote = Some(c);
                    code.push(' ');
                }
                None => code.push(c),
            }
        }
        let mut calls = vec![];
        let mut ident = String::new();
        for c in code.chars() {
            if c.is_ascii_alphanumeric() || c == '_' {
                ident.push(c);
                continue;
            }
            if c == '(' && !ident.is_empty() {
                calls.push(ident.clone());
            }
            if !c.is_whitespace() || ident.is_empty() {
                ident.clear();
            }
        }
        calls
    }

    fn unsupported_on_1_28(yaml: &str) -> Vec<String> {
        let mut rules = vec![];
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            cel_rules(&v, &mut rules);
        }
        assert!(!rules.is_empty(), "no CEL rules found");
        rules
            .iter()
            .flat_map(|r| cel_calls(r).into_iter().map(move |f| (r, f)))
            .filter(|(_, f)| !CEL_ON_1_28.contains(&f.as_str()))
            .map(|(r, f)| format!("{f} in {r:?}"))
            .collect()
    }

    #[test]
    fn cel_calls_are_found_outside_string_literals() {
        assert_eq!(
            cel_calls("has(self.a) && self.b.matches('x(y)') && isQuantity (self.c)"),
            ["has", "matches", "isQuantity"]
        );
        let old = "spec:\n  x-kubernetes-validations:\n  - rule: isQuantity(self)\n";
        assert_eq!(
            unsupported_on_1_28(old),
            ["isQuantity in \"isQuantity(self)\""]
        );
    }

    #[test]
    fn every_cel_rule_runs_on_kubernetes_1_28() {
        let generated = crds_yaml().unwrap();
        assert_eq!(
            unsupported_on_1_28(&generated),
            Vec::<String>::new(),
            "berth crd"
        );
        for rel in [
            "crds/berth.dev.yaml",
            "charts/berth/crds/berth.dev.yaml",
            "deploy/kustomize/base/crds.yaml",
        ] {
            let path = format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(unsupported_on_1_28(&text), Vec::<String>::new(), "{rel}");
        }
    }

    #[test]
    fn registry_names_must_suit_every_child() {
        assert_eq!(registry_name_problem("hub"), None);
        assert_eq!(registry_name_problem(&"a".repeat(MAX_REGISTRY_NAME)), None);
        for bad in [
            "a.b",
            "Hub",
            "1hub",
            "hub-",
            &"a".repeat(MAX_REGISTRY_NAME + 1),
        ] {
            assert!(registry_name_problem(bad).is_some(), "{bad}");
        }
        // The longest child name is still a valid name.
        assert_eq!(
            format!("{}{LONGEST_CHILD_SUFFIX}", "a".repeat(MAX_REGISTRY_NAME)).len(),
            63
        );
    }

    #[test]
    fn examples_deserialize_into_the_types_without_losing_fields() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            for doc in serde_yaml::Deserializer::from_str(&std::fs::read_to_string(&path).unwrap())
            {
                let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
                let spec = v["spec"].clone();
                // A typo would be dropped by serde and missing from the round trip.
                let round = match v["kind"].as_str() {
                    Some("Registry") => serde_json::to_value(
                        serde_json::from_value::<RegistrySpec>(spec.clone()).unwrap(),
                    )
                    .unwrap(),
                    Some("GarbageCollection") => serde_json::to_value(
                        serde_json::from_value::<GarbageCollectionSpec>(spec.clone()).unwrap(),
                    )
                    .unwrap(),
                    _ => continue,
                };
                seen += 1;
                let mut round = round;
                if let Some(o) = round.as_object_mut() {
                    o.retain(|k, v| spec.get(k).is_some() || !(v.is_boolean() || v == "Retain"));
                }
                assert_eq!(round, spec, "{}", path.display());
            }
        }
        assert!(seen >= 5, "only {seen} examples found");
    }

    /// The API server's structural-schema rules that a hand-written node (an int-or-string,
    /// a CEL rule on a list) can break, for the node at `path` and everything under it.
    fn structural_problems(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        let Some(o) = v.as_object() else { return };
        let int_or_string = o.get("x-kubernetes-int-or-string") == Some(&true.into());
        let free = o.get("x-kubernetes-preserve-unknown-fields") == Some(&true.into());
        if int_or_string && o.contains_key("type") {
            out.push(format!("{path}: int-or-string with a type"));
        }
        if !int_or_string && !free && !o.contains_key("type") {
            out.push(format!("{path}: no type"));
        }
        for junctor in ["allOf", "anyOf", "oneOf", "not"] {
            let subs = match o.get(junctor) {
                Some(serde_json::Value::Array(a)) => a.clone(),
                Some(other) => vec![other.clone()],
                None => continue,
            };
            let ios = serde_json::json!([{"type": "integer"}, {"type": "string"}]);
            if int_or_string && junctor == "anyOf" && o[junctor] == ios {
                continue;
            }
            for s in subs.iter().filter_map(|s| s.as_object()) {
                for k in ["type", "description", "default", "nullable"] {
                    if s.contains_key(k) {
                        out.push(format!("{path}.{junctor}: {k} inside a junctor"));
                    }
                }
            }
        }
        if let Some(props) = o.get("properties").and_then(|p| p.as_object()) {
            for (k, sub) in props {
                structural_problems(sub, &format!("{path}.{k}"), out);
            }
        }
        for k in ["items", "additionalProperties"] {
            if let Some(sub) = o.get(k).filter(|s| s.is_object()) {
                structural_problems(sub, &format!("{path}[]"), out);
            }
        }
    }

    #[test]
    fn every_crd_schema_is_structural() {
        use kube::CustomResourceExt;
        let mut caught = vec![];
        let bad = serde_json::json!({"type": "object", "properties": {
            "a": {"x-kubernetes-int-or-string": true, "type": "string"},
            "b": {"anyOf": [{"type": "integer", "minimum": 1}]},
        }});
        structural_problems(&bad, "", &mut caught);
        assert_eq!(
            caught,
            [
                ".a: int-or-string with a type",
                ".b: no type",
                ".b.anyOf: type inside a junctor"
            ]
        );
        for crd in [
            serde_json::to_value(registry_crd()).unwrap(),
            serde_json::to_value(GarbageCollection::crd()).unwrap(),
            serde_json::to_value(Mirror::crd()).unwrap(),
        ] {
            let mut problems = vec![];
            let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            structural_problems(root, "", &mut problems);
            assert_eq!(
                problems,
                Vec::<String>::new(),
                "{}",
                crd["metadata"]["name"]
            );
        }
    }

    #[test]
    fn registry_crd_has_columns_and_the_one_storage_rule() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(Registry::crd()).unwrap();
        let v = &crd["spec"]["versions"][0];
        let cols: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(cols, ["Ready", "Endpoint", "Replicas", "Age"]);
        let storage =
            &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["storage"];
        assert_eq!(
            storage["x-kubernetes-validations"][0]["rule"],
            "has(self.pvc) != has(self.s3)"
        );
        assert_eq!(v["subresources"]["status"], serde_json::json!({}));
    }
}
