//! Registry on S3 with `deletionPolicy: Delete`, being deleted -> the Job that runs
//! `berth purge` against its bucket. The Job carries the rendered config inline and has no
//! owner: Kubernetes may already be deleting the Registry's ConfigMap and other children
//! (foreground deletion removes dependents first), and the purge must outlive them.

use k8s_openapi::api::batch::v1::Job;
use serde_json::json;

use super::{
    BuildError, Defaults, container_security_context, from_json, image, labels, name_ns,
    pod_security_context, render_config,
};
use crate::operator::crd::Registry;

/// The purge container's name (the operator reads its termination message).
pub const PURGE_CONTAINER: &str = "purge";

pub fn purge_job_name(reg: &Registry) -> Result<String, BuildError> {
    let (name, _) = name_ns(reg)?;
    Ok(format!("{name}-purge"))
}

/// The purge Job for an S3 Registry; `None` for a PVC (deleting the claim deletes the data).
pub fn purge_job(reg: &Registry, d: &Defaults) -> Result<Option<Job>, BuildError> {
    if reg.spec.storage.s3.is_none() {
        return Ok(None);
    }
    let (name, ns) = name_ns(reg)?;
    let config = render_config(reg)?;
    let text = serde_yaml::to_string(&config).map_err(|e| BuildError::Serialize(e.to_string()))?;
    let mut env = vec![json!({ "name": "BERTH_CONFIG_INLINE", "value": text })];
    if let Some(serde_json::Value::Array(creds)) = super::registry::s3_credentials_env(reg) {
        env.extend(creds);
    }
    let mut container = json!({
        "name": PURGE_CONTAINER,
        "image": image(reg, d),
        "args": ["purge", "--yes"],
        "env": env,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
        "volumeMounts": [{ "name": "tmp", "mountPath": "/tmp" }],
    });
    // The Registry's own requests and limits: a namespace quota that admits the registry
    // admits its purge.
    if let Some(r) = &reg.spec.resources {
        container["resources"] = json!(r);
    }
    from_json(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": purge_job_name(reg)?,
            "namespace": ns,
            "labels": labels(&name, "purge"),
        },
        "spec": {
            // A few tries for a flaky bucket, then the operator reports and lets go.
            "backoffLimit": 2,
            "activeDeadlineSeconds": 3600,
            "template": {
                "metadata": { "labels": labels(&name, "purge") },
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": false,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": [{ "name": "tmp", "emptyDir": {} }],
                },
            },
        },
    }))
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{DeletionPolicy, S3Storage, StorageSpec};
    use crate::operator::resources::registry::tests::{defaults, minimal};
    use crate::operator::resources::tests::golden;

    #[test]
    fn purge_job_carries_the_config_and_credentials_and_has_no_owner() {
        let mut r = minimal();
        assert!(
            purge_job(&r, &defaults()).unwrap().is_none(),
            "a PVC needs none"
        );
        r.spec.deletion_policy = DeletionPolicy::Delete;
        r.spec.storage = StorageSpec {
            pvc: None,
            s3: Some(S3Storage {
                bucket: "images".into(),
                endpoint: Some("http://garage:3900".into()),
                region: Some("garage".into()),
                prefix: Some("hub".into()),
                credentials_secret: "hub-s3".into(),
                ..Default::default()
            }),
        };
        let job = purge_job(&r, &defaults()).unwrap().unwrap();
        golden("registry-purge-job.yaml", &job);
        assert!(job.metadata.owner_references.is_none());
        let v = serde_json::to_value(&job).unwrap();
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["args"], json!(["purge", "--yes"]));
        assert_eq!(c["env"][0]["name"], "BERTH_CONFIG_INLINE");
        let config: crate::config::Config =
            serde_yaml::from_str(c["env"][0]["value"].as_str().unwrap()).unwrap();
        let s3 = config.storage.s3.unwrap();
        assert_eq!(
            (s3.bucket.as_str(), s3.prefix.as_deref()),
            ("images", Some("hub"))
        );
        assert!(
            s3.secret_access_key.is_none(),
            "credentials stay in their Secret"
        );
        assert_eq!(
            c["env"][1]["valueFrom"]["secretKeyRef"]["name"], "hub-s3",
            "{c}"
        );
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert!(c["resources"].is_null());
        r.spec.resources = serde_json::from_value(json!({"limits": {"memory": "512Mi"}})).unwrap();
        let v = serde_json::to_value(purge_job(&r, &defaults()).unwrap().unwrap()).unwrap();
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"],
            "512Mi"
        );
    }
}
