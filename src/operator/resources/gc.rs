//! GarbageCollection spec -> the Job (one-shot) or CronJob (scheduled) that runs `berth gc`
//! with the Registry's own config and volume. The container writes its JSON report as the
//! termination message, which is where the operator reads blobs deleted and bytes freed.

use k8s_openapi::api::batch::v1::{CronJob, Job};
use serde_json::{Value, json};

use super::{
    BuildError, CONFIG_DIR, CONFIG_FILE, DATA_DIR, Defaults, container_security_context, from_json,
    image, name_ns, names, owner_ref, pod_security_context, selector,
};
use crate::operator::crd::{GarbageCollection, Registry, RetentionConditions};

/// Label on every Job (and pod) of one GarbageCollection.
pub const GC_LABEL: &str = "berth.dev/garbage-collection";

/// The `berth gc` command line for a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcArgs(pub Vec<String>);

impl GcArgs {
    pub fn for_spec(gc: &GarbageCollection) -> GcArgs {
        let s = &gc.spec;
        // The report also goes to the termination message, where the operator reads it.
        let mut args: Vec<String> = [
            "gc",
            "--config",
            CONFIG_FILE,
            "--json",
            "--report-file",
            "/dev/termination-log",
        ]
        .map(String::from)
        .to_vec();
        if s.dry_run {
            args.push("--dry-run".into());
        }
        if s.delete_untagged {
            args.push("--delete-untagged".into());
        }
        if let Some(g) = &s.grace {
            args.extend(["--grace".into(), g.clone()]);
        }
        if let Some(t) = &s.upload_ttl {
            args.extend(["--upload-ttl".into(), t.clone()]);
        }
        if let Some(r) = &s.retention {
            // One `berth gc --rule PATTERN:key=value,...` per rule, in order (the first match
            // applies), then the top-level conditions for every other repository.
            for rule in &r.rules {
                let conditions = rule_conditions(&rule.conditions);
                args.extend(["--rule".into(), rule_arg(&rule.repositories, &conditions)]);
            }
            let conditions = rule_conditions(&r.conditions);
            if !conditions.is_empty() {
                args.extend(["--rule".into(), rule_arg("**", &conditions)]);
            }
        }
        GcArgs(args)
    }
}

/// `berth gc` refuses a rule whose regular expression does not compile; say so before a Job
/// fails on it.
fn check_retention(gc: &GarbageCollection) -> Result<(), BuildError> {
    let Some(r) = &gc.spec.retention else {
        return Ok(());
    };
    let patterns = r
        .rules
        .iter()
        .filter_map(|rule| rule.conditions.keep_tags.as_ref())
        .chain(r.conditions.keep_tags.as_ref());
    for re in patterns {
        if let Err(e) = regex::Regex::new(re) {
            return Err(BuildError::Invalid {
                field: "spec.retention.keepTags",
                reason: format!("{re:?} is not a regular expression: {e}"),
            });
        }
        if re.contains(',') {
            return Err(BuildError::Invalid {
                field: "spec.retention.keepTags",
                reason: format!("{re:?} contains a comma, which `berth gc --rule` cannot carry"),
            });
        }
    }
    Ok(())
}

fn rule_conditions(c: &RetentionConditions) -> Vec<String> {
    let mut conditions = Vec::new();
    if let Some(n) = c.keep_last {
        conditions.push(format!("keep-last={n}"));
    }
    if let Some(re) = &c.keep_tags {
        conditions.push(format!("keep-tags={re}"));
    }
    if let Some(d) = &c.older_than {
        conditions.push(format!("older-than={d}"));
    }
    conditions
}

fn rule_arg(pattern: &str, conditions: &[String]) -> String {
    if conditions.is_empty() {
        // A rule without conditions keeps every tag of its repositories.
        pattern.to_owned()
    } else {
        format!("{pattern}:{}", conditions.join(","))
    }
}

/// One Job per generation of a one-shot GarbageCollection: editing the spec runs it again.
pub fn gc_job_name(gc: &GarbageCollection) -> Result<String, BuildError> {
    let (name, _) = name_ns(gc)?;
    Ok(format!("{name}-{}", gc.metadata.generation.unwrap_or(1)))
}

fn pod_template(gc: &GarbageCollection, reg: &Registry, d: &Defaults) -> Result<Value, BuildError> {
    // The Job mounts the Registry's rendered config: a Registry that cannot have one (its spec
    // asks for what the schema lacks) cannot be collected either.
    super::render_config(reg)?;
    check_retention(gc)?;
    let (gc_name, _) = name_ns(gc)?;
    let (reg_name, _) = name_ns(reg)?;
    let mut volumes = vec![
        json!({ "name": "config", "configMap": { "name": names::config_map(&reg_name) } }),
        json!({ "name": "tmp", "emptyDir": {} }),
    ];
    let mut mounts = vec![
        json!({ "name": "config", "mountPath": CONFIG_DIR, "readOnly": true }),
        json!({ "name": "tmp", "mountPath": "/tmp" }),
    ];
    let mut spec = json!({});
    if let Some(pvc) = &reg.spec.storage.pvc {
        volumes.push(json!({
            "name": "data",
            "persistentVolumeClaim": { "claimName": names::data_pvc(&reg_name) },
        }));
        mounts.push(json!({ "name": "data", "mountPath": DATA_DIR }));
        // A ReadWriteOnce volume is only mountable on the node that already has it.
        let rwx = pvc
            .access_modes
            .as_ref()
            .is_some_and(|m| m.iter().any(|m| m == "ReadWriteMany"));
        if !rwx {
            spec["affinity"] = json!({ "podAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": [{
                "labelSelector": { "matchLabels": selector(&reg_name) },
                "topologyKey": "kubernetes.io/hostname",
            }]}});
        }
    }
    spec["restartPolicy"] = json!("Never");
    spec["automountServiceAccountToken"] = json!(false);
    spec["securityContext"] = pod_security_context();
    spec["containers"] = json!([{
        "name": "gc",
        "image": image(reg, d),
        "args": GcArgs::for_spec(gc).0,
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
    }]);
    if let Some(env) = super::registry::s3_credentials_env(reg) {
        spec["containers"][0]["env"] = env;
    }
    // The Registry's own requests and limits: a namespace quota that admits the registry
    // admits its jobs.
    if let Some(r) = &reg.spec.resources {
        spec["containers"][0]["resources"] = json!(r);
    }
    spec["volumes"] = json!(volumes);
    Ok(json!({
        "metadata": { "labels": gc_labels(&gc_name, &reg_name) },
        "spec": spec,
    }))
}

fn gc_labels(gc: &str, registry: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "berth",
        "app.kubernetes.io/instance": registry,
        "app.kubernetes.io/component": "gc",
        "app.kubernetes.io/managed-by": "berth-operator",
        GC_LABEL: gc,
    })
}

pub fn gc_job(gc: &GarbageCollection, reg: &Registry, d: &Defaults) -> Result<Job, BuildError> {
    let (gc_name, ns) = name_ns(gc)?;
    let (reg_name, _) = name_ns(reg)?;
    from_json(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": gc_job_name(gc)?,
            "namespace": ns,
            "labels": gc_labels(&gc_name, &reg_name),
            "ownerReferences": [owner_ref(gc)?],
        },
        "spec": {
            // A failed sweep is reported, not retried blindly: the next run starts fresh.
            "backoffLimit": 0,
            "template": pod_template(gc, reg, d)?,
        },
    }))
}

pub fn gc_cronjob(
    gc: &GarbageCollection,
    reg: &Registry,
    d: &Defaults,
) -> Result<CronJob, BuildError> {
    let (gc_name, _) = name_ns(gc)?;
    let (reg_name, _) = name_ns(reg)?;
    let schedule = gc.spec.schedule.clone().unwrap_or_default();
    super::scheduled_job(
        gc,
        gc_name.clone(),
        gc_labels(&gc_name, &reg_name),
        &schedule,
        json!({ "backoffLimit": 0, "template": pod_template(gc, reg, d)? }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::*;
    use crate::operator::resources::registry::tests::{defaults, minimal};
    use crate::operator::resources::tests::golden;

    pub fn one_shot() -> GarbageCollection {
        let mut gc = GarbageCollection::new(
            "nightly",
            GarbageCollectionSpec {
                registry_ref: RegistryRef { name: "hub".into() },
                delete_untagged: true,
                retention: Some(RetentionSpec {
                    conditions: RetentionConditions {
                        keep_last: Some(10),
                        keep_tags: Some("^v[0-9]".into()),
                        older_than: Some("30d".into()),
                    },
                    rules: vec![
                        RetentionRuleSpec {
                            repositories: "team-a/**".into(),
                            conditions: RetentionConditions {
                                keep_last: Some(3),
                                keep_tags: Some("^release-".into()),
                                older_than: Some("7d".into()),
                            },
                        },
                        RetentionRuleSpec {
                            repositories: "base/*".into(),
                            ..Default::default()
                        },
                    ],
                }),
                grace: Some("30m".into()),
                upload_ttl: Some("12h".into()),
                ..Default::default()
            },
        );
        gc.metadata.namespace = Some("team".into());
        gc.metadata.uid = Some("0b5c6d1e-0000-4000-8000-0000000000gc".into());
        gc.metadata.generation = Some(2);
        gc
    }

    #[test]
    fn one_shot_job() {
        let job = gc_job(&one_shot(), &minimal(), &defaults()).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("nightly-2"));
        golden("gc-job.yaml", &job);
        // The Registry's requests and limits apply to its gc runs too.
        let mut reg = minimal();
        reg.spec.resources =
            serde_json::from_value(serde_json::json!({"requests": {"cpu": "100m"}})).unwrap();
        let job = serde_json::to_value(gc_job(&one_shot(), &reg, &defaults()).unwrap()).unwrap();
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "100m"
        );
    }

    #[test]
    fn every_retention_rule_reaches_berth_gc_as_its_parser_reads_it() {
        let args = GcArgs::for_spec(&one_shot()).0;
        let rules: Vec<crate::config::RetentionRule> = args
            .windows(2)
            .filter(|w| w[0] == "--rule")
            .map(|w| crate::gc::parse_rule(&w[1]).unwrap())
            .collect();
        let rule =
            |repositories: &str, keep_last, keep_tags: Option<&str>, older_than: Option<&str>| {
                crate::config::RetentionRule {
                    repositories: repositories.into(),
                    keep_last,
                    keep_tags: keep_tags.map(Into::into),
                    older_than: older_than.map(Into::into),
                }
            };
        assert_eq!(
            rules,
            [
                rule("team-a/**", Some(3), Some("^release-"), Some("7d")),
                rule("base/*", None, None, None),
                rule("**", Some(10), Some("^v[0-9]"), Some("30d")),
            ]
        );
        let at = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .map(|i| args[i + 1].clone())
        };
        assert_eq!(at("--grace").as_deref(), Some("30m"));
        assert_eq!(at("--upload-ttl").as_deref(), Some("12h"));
    }

    #[test]
    fn a_bad_keep_tags_expression_is_an_invalid_spec() {
        let mut gc = one_shot();
        if let Some(r) = gc.spec.retention.as_mut() {
            r.rules[0].conditions.keep_tags = Some("(unclosed".into());
        }
        assert!(matches!(
            gc_job(&gc, &minimal(), &defaults()),
            Err(BuildError::Invalid {
                field: "spec.retention.keepTags",
                ..
            })
        ));
    }

    #[test]
    fn a_registry_on_s3_is_collected_with_its_credentials() {
        let mut reg = minimal();
        reg.spec.storage = StorageSpec {
            pvc: None,
            s3: Some(S3Storage {
                bucket: "b".into(),
                credentials_secret: "creds".into(),
                ..Default::default()
            }),
        };
        let job = serde_json::to_value(gc_job(&one_shot(), &reg, &defaults()).unwrap()).unwrap();
        let pod = &job["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["env"][0]["valueFrom"]["secretKeyRef"]["name"], "creds");
        assert!(pod["affinity"].is_null(), "no volume to follow");
        assert!(
            !pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["name"] == "data")
        );
    }

    #[test]
    fn scheduled_cronjob_and_bad_cron() {
        let mut gc = one_shot();
        gc.spec.schedule = Some("0 3 * * *".into());
        gc.spec.dry_run = true;
        golden(
            "gc-cronjob.yaml",
            &gc_cronjob(&gc, &minimal(), &defaults()).unwrap(),
        );
        gc.spec.schedule = Some("every night".into());
        assert!(matches!(
            gc_cronjob(&gc, &minimal(), &defaults()),
            Err(BuildError::Invalid {
                field: "spec.schedule",
                ..
            })
        ));
    }
}
