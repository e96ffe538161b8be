//! cert-manager's `Certificate` (cert-manager.io/v1), the one foreign kind the operator writes:
//! a Registry with `tls.issuerRef` and no Ingress asks cert-manager for a certificate for its
//! Service's DNS names, and the pods serve HTTPS from the Secret cert-manager issues. Only the
//! fields the operator sets or reads are modelled; cert-manager owns the schema.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// The API group and version cert-manager serves Certificates under.
pub const API_VERSION: &str = "cert-manager.io/v1";

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "cert-manager.io",
    version = "v1",
    kind = "Certificate",
    namespaced,
    status = "CertificateStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    /// The Secret cert-manager writes `tls.crt`, `tls.key` and `ca.crt` into.
    pub secret_name: String,
    pub dns_names: Vec<String>,
    pub issuer_ref: CertificateIssuerRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usages: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<CertificatePrivateKey>,
    /// Labels for the issued Secret, so it is recognisably the Registry's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<CertificateSecretTemplate>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateIssuerRef {
    pub name: String,
    pub kind: String,
    pub group: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificatePrivateKey {
    pub algorithm: String,
    pub size: i32,
    pub rotation_policy: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSecretTemplate {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

impl Certificate {
    /// cert-manager's own account of the Certificate when it is not Ready (why issuing waits
    /// or failed), for the Registry's condition message.
    pub fn not_ready_message(&self) -> Option<String> {
        let c = self
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")?;
        (c.status != "True").then(|| format!("{}: {}", c.reason, c.message))
    }
}

impl Certificate {
    /// cert-manager's words when issuing failed (its `Issuing` condition turned False with
    /// reason `Failed`); `None` while it is still trying or has succeeded.
    pub fn issuing_failure(&self) -> Option<String> {
        let c = self
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Issuing")?;
        (c.status == "False" && c.reason == "Failed").then(|| c.message.clone())
    }
}

/// True when the API server serves cert-manager's Certificates (its CRDs are installed).
/// Discovery is readable by every authenticated client, so this needs no extra RBAC.
pub async fn served(client: &kube::Client) -> Result<bool, kube::Error> {
    match client.list_api_group_resources(API_VERSION).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == "certificates")),
        // By status code, not reason: for a group nobody serves, a real API server answers a
        // plain-text "404 page not found", which kube turns into an error without the
        // NotFound reason.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}
