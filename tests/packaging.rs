//! Packaging checks: the kustomize base renders, Helm lints the chart, and the chart rendered by
//! Helm itself (Helm v4's Go code through PyPI's helm-python-sdk, tests/helm/helm.py) with its
//! default values produces the same objects as the kustomize base.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_yaml::Value;

mod common;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Helm's answer to `args`; the test fails with Helm's message on an error.
fn helm(args: &[&str]) -> serde_json::Value {
    common::helm::helm(args).unwrap_or_else(|e| panic!("helm {args:?}: {e}"))
}

type Objects = BTreeMap<(String, String), Value>;

fn objects(yaml: &str) -> Objects {
    let mut out = Objects::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = Value::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().unwrap().to_owned();
        let name = v["metadata"]["name"].as_str().unwrap().to_owned();
        assert!(out.insert((kind, name), v).is_none(), "duplicate object");
    }
    out
}
use serde::Deserialize;

fn chart_objects(values_override: &str) -> Objects {
    let over: serde_json::Value = serde_yaml::from_str(values_override).unwrap();
    let rendered = helm(&[
        "render",
        "charts/berth",
        "berth",
        "berth-system",
        &over.to_string(),
    ]);
    let mut files: Vec<(&String, &serde_json::Value)> =
        rendered.as_object().unwrap().iter().collect();
    files.sort_by_key(|(path, _)| path.as_str());
    let mut all = String::new();
    // NOTES.txt is what helm prints after an install, not a manifest.
    for (_, text) in files.iter().filter(|(path, _)| path.ends_with(".yaml")) {
        all.push_str("\n---\n");
        all.push_str(text.as_str().unwrap());
    }
    objects(&all)
}

#[test]
fn helm_lints_the_chart_without_a_warning() {
    let report = helm(&["lint", "charts/berth"]);
    assert_eq!(report["total_charts_linted"], 1);
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    // Severity 2 is a warning, 3 an error; 1 (info, such as "icon is recommended") is fine.
    let serious: Vec<_> = report["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["severity"].as_i64().unwrap_or(3) >= 2)
        .collect();
    assert!(serious.is_empty(), "helm lint: {serious:?}");
}

fn kustomize() -> String {
    common::needs::need("kubectl");
    let out = Command::new("kubectl")
        .args(["kustomize", "deploy/kustomize/base"])
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn kustomize_base_renders_the_operator() {
    let objs = objects(&kustomize());
    let kinds: Vec<&str> = objs.keys().map(|(k, _)| k.as_str()).collect();
    for want in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Namespace",
    ] {
        assert!(kinds.contains(&want), "{want} missing from {kinds:?}");
    }
    let dep = &objs[&("Deployment".to_owned(), "berth-operator".to_owned())];
    assert_eq!(dep["metadata"]["namespace"], "berth-system");
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["args"][0], "operator");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
}

#[test]
fn chart_with_default_values_matches_the_kustomize_base() {
    let mut kust = objects(&kustomize());
    // Helm installs CRDs from charts/berth/crds as they are, and creates no Namespace.
    kust.retain(|(k, _), _| k != "Namespace" && k != "CustomResourceDefinition");
    let chart = chart_objects("{}");
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        kust.keys().collect::<Vec<_>>()
    );
    for (key, want) in &kust {
        assert_eq!(
            &chart[key], want,
            "{key:?} differs between chart and kustomize"
        );
    }
    let crds = |p: &str| std::fs::read_to_string(Path::new(ROOT).join(p)).unwrap();
    assert_eq!(
        crds("charts/berth/crds/berth.dev.yaml"),
        crds("crds/berth.dev.yaml")
    );
    assert_eq!(
        crds("deploy/kustomize/base/crds.yaml"),
        crds("crds/berth.dev.yaml")
    );
}

#[test]
fn chart_watching_one_namespace_uses_a_role_there() {
    let chart = chart_objects("watchNamespace: team\nleaderElection: {enabled: false}\n");
    let kinds: Vec<(&str, &str)> = chart
        .keys()
        .map(|(k, n)| (k.as_str(), n.as_str()))
        .collect();
    assert!(!kinds.iter().any(|(k, _)| *k == "ClusterRole"), "{kinds:?}");
    assert!(!kinds.contains(&("Role", "berth-operator-leader")));
    let role = &chart[&("Role".to_owned(), "berth-operator".to_owned())];
    assert_eq!(role["metadata"]["namespace"], "team");
    let env = &chart[&("Deployment".to_owned(), "berth-operator".to_owned())]["spec"]["template"]["spec"]
        ["containers"][0]["env"];
    let env: Vec<(String, String)> = env
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect();
    assert!(
        env.contains(&("BERTH_WATCH_NAMESPACE".into(), "team".into())),
        "{env:?}"
    );
    assert!(
        env.contains(&("BERTH_LEADER_ELECT".into(), "false".into())),
        "{env:?}"
    );
}

#[test]
fn examples_parse_as_kubernetes_objects() {
    for entry in std::fs::read_dir(Path::new(ROOT).join("examples")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            let objs = objects(&std::fs::read_to_string(&p).unwrap());
            assert!(!objs.is_empty(), "{}", p.display());
            for v in objs.values() {
                assert!(
                    v["apiVersion"].is_string() && v["metadata"]["name"].is_string(),
                    "{}",
                    p.display()
                );
                // Berth's own kinds read as the operator's types.
                let typed = match v["kind"].as_str() {
                    Some("Registry") => {
                        serde_yaml::from_value::<berth::operator::crd::Registry>(v.clone()).err()
                    }
                    Some("GarbageCollection") => {
                        serde_yaml::from_value::<berth::operator::crd::GarbageCollection>(v.clone())
                            .err()
                    }
                    Some("Mirror") => {
                        serde_yaml::from_value::<berth::operator::crd::Mirror>(v.clone()).err()
                    }
                    _ => None,
                };
                assert!(typed.is_none(), "{}: {typed:?}", p.display());
            }
        }
    }
}

/// Every example Registry is one the operator deploys: it passes the operator's own checks
/// (policy regexes, key texts, globs) and renders a config `berth serve` parses. The policy
/// example is among them.
#[test]
fn example_registries_render_into_children() {
    use berth::operator::crd::Registry;
    let mut policy_seen = false;
    for entry in std::fs::read_dir(Path::new(ROOT).join("examples")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        for v in objects(&std::fs::read_to_string(&p).unwrap()).into_values() {
            if v["kind"] != "Registry" {
                continue;
            }
            let mut reg: Registry = serde_yaml::from_value(v).unwrap();
            // What the API server sets on a created object.
            reg.metadata.namespace = Some("team".into());
            reg.metadata.uid = Some("uid-example".into());
            let defaults = berth::operator::resources::Defaults {
                image: "ghcr.io/berth-dev/berth:0.1.0".into(),
            };
            let plan = berth::operator::registry::desired(&reg, &defaults)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let data = plan.config_map.data.unwrap_or_default();
            let config: berth::config::Config = serde_yaml::from_str(&data["config.yaml"]).unwrap();
            if !config.policy.is_empty() {
                policy_seen = true;
                berth::policy::validate(&config.policy).unwrap();
                for (i, s) in config.policy.signatures.iter().enumerate() {
                    let key = format!("signature-{i}.pem");
                    assert!(s.public_key.ends_with(&key), "{}", p.display());
                    berth::operator::resources::check_public_key(&data[&key]).unwrap();
                }
            }
        }
    }
    assert!(policy_seen, "no example Registry has a policy");
}

/// A JSON value as a Lua table constructor, the way Argo CD hands `obj` to a health script.
fn lua(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "nil".into(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => format!("{s:?}"),
        serde_json::Value::Array(a) => {
            format!("{{{}}}", a.iter().map(lua).collect::<Vec<_>>().join(", "))
        }
        serde_json::Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("[{k:?}] = {}", lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs examples/argocd/health.lua with Lua 5.1 (the dialect of Argo CD's gopher-lua).
fn argocd_health(obj: serde_json::Value) -> (String, String) {
    common::needs::need("lua5.1");
    let script = Path::new(ROOT).join("examples/argocd/health.lua");
    let out = Command::new("lua5.1")
        .arg("-e")
        .arg(format!("obj = {}", lua(&obj)))
        .arg("-e")
        .arg(format!(
            "local hs = dofile({:?}) io.write(hs.status, \"\\t\", hs.message)",
            script.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\t').unwrap();
    (status.to_owned(), message.to_owned())
}

#[test]
fn argocd_health_check_says_what_the_conditions_say() {
    let cond = |t: &str, s: &str, r: &str| serde_json::json!({"type": t, "status": s, "reason": r, "message": format!("{r} now")});
    let reg = |generation: i64, observed: i64, conditions: serde_json::Value| {
        serde_json::json!({"metadata": {"generation": generation},
                           "status": {"observedGeneration": observed, "conditions": conditions}})
    };
    let cases = [
        (
            serde_json::json!({"metadata": {"generation": 1}}),
            "Progressing",
        ),
        (
            reg(
                2,
                1,
                serde_json::json!([cond("Ready", "True", "Available")]),
            ),
            "Progressing",
        ),
        (
            reg(
                1,
                1,
                serde_json::json!([cond("Ready", "True", "Available")]),
            ),
            "Healthy",
        ),
        (
            reg(
                1,
                1,
                serde_json::json!([cond("Ready", "False", "ReplicasNotReady")]),
            ),
            "Progressing",
        ),
        (
            reg(
                1,
                1,
                serde_json::json!([cond("Ready", "False", "ScaledToZero")]),
            ),
            "Suspended",
        ),
        (
            reg(
                1,
                1,
                serde_json::json!([
                    cond("Ready", "True", "Available"),
                    cond("Degraded", "True", "InvalidSpec")
                ]),
            ),
            "Degraded",
        ),
    ];
    for (obj, want) in cases {
        let (status, message) = argocd_health(obj.clone());
        assert_eq!(status, want, "{obj} -> {message}");
        assert!(!message.is_empty(), "{obj}");
    }
}

#[test]
fn argocd_cm_embeds_the_same_health_check() {
    let script =
        std::fs::read_to_string(Path::new(ROOT).join("examples/argocd/health.lua")).unwrap();
    let cm = objects(
        &std::fs::read_to_string(Path::new(ROOT).join("examples/argocd/argocd-cm.yaml")).unwrap(),
    );
    let embedded =
        cm.values().next().unwrap()["data"]["resource.customizations.health.berth.dev_Registry"]
            .as_str()
            .unwrap()
            .to_owned();
    assert_eq!(embedded.trim(), script.trim());
}
