//! Packaging checks: the kustomize base renders, and the Helm chart's templates, rendered with
//! their default values, produce the same objects as the kustomize base.
//!
//! No helm binary exists where these tests run, so `render` below implements the small subset
//! of Go templates the chart uses (`.Values`/`.Release`/`.Chart` lookups, `if`/`else`/`end`,
//! whitespace trimming with `{{-`/`-}}`, and the `default`, `quote`, `toYaml` and `nindent`
//! functions). Anything else in a template is an error, so the chart cannot silently grow
//! beyond what this test understands.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

struct Scope {
    values: Value,
    release_namespace: String,
    release_name: String,
    app_version: String,
}

fn lookup(scope: &Scope, path: &str) -> Result<Value, String> {
    let mut parts = path.trim_start_matches('.').split('.');
    let root = parts.next().unwrap_or_default();
    let mut v = match root {
        "Values" => scope.values.clone(),
        "Release" => {
            return match parts.next() {
                Some("Namespace") => Ok(Value::String(scope.release_namespace.clone())),
                Some("Name") => Ok(Value::String(scope.release_name.clone())),
                other => Err(format!("unsupported .Release.{other:?}")),
            };
        }
        "Chart" => {
            return match parts.next() {
                Some("AppVersion") => Ok(Value::String(scope.app_version.clone())),
                other => Err(format!("unsupported .Chart.{other:?}")),
            };
        }
        other => return Err(format!("unsupported root {other:?} in {path}")),
    };
    for p in parts {
        v = v.get(p).cloned().unwrap_or(Value::Null);
    }
    Ok(v)
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Tagged(_) => true,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => serde_yaml::to_string(other).unwrap().trim_end().to_owned(),
    }
}

fn operand(scope: &Scope, tok: &str) -> Result<Value, String> {
    if tok.starts_with('.') {
        lookup(scope, tok)
    } else if let Some(s) = tok.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Ok(Value::String(s.to_owned()))
    } else {
        Err(format!("unsupported operand {tok:?}"))
    }
}

fn eval(scope: &Scope, expr: &str) -> Result<Value, String> {
    let mut acc: Option<Value> = None;
    for stage in expr.split('|').map(str::trim) {
        let toks: Vec<&str> = stage.split_whitespace().collect();
        let v = match (toks.as_slice(), acc.take()) {
            ([single], None) => operand(scope, single)?,
            (["toYaml", arg], None) => Value::String(text(&operand(scope, arg)?)),
            (["default", d], Some(prev)) => {
                if truthy(&prev) {
                    prev
                } else {
                    operand(scope, d)?
                }
            }
            (["quote"], Some(prev)) => Value::String(format!("{:?}", text(&prev))),
            (["nindent", n], Some(prev)) => {
                let n: usize = n.parse().map_err(|_| "nindent needs a number")?;
                let pad = " ".repeat(n);
                let body: Vec<String> = text(&prev).lines().map(|l| format!("{pad}{l}")).collect();
                Value::String(format!("\n{}", body.join("\n")))
            }
            (other, _) => return Err(format!("unsupported template stage {other:?} in {expr:?}")),
        };
        acc = Some(v);
    }
    acc.ok_or_else(|| "empty action".to_owned())
}

/// Renders one template file.
fn render(template: &str, scope: &Scope) -> Result<String, String> {
    // Split into text and actions, applying the trim markers.
    let mut pieces: Vec<(bool, String)> = vec![]; // (is_action, content)
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let end = rest[start..].find("}}").ok_or("unclosed action")? + start;
        let mut before = rest[..start].to_owned();
        let mut action = &rest[start + 2..end];
        if let Some(a) = action.strip_prefix('-') {
            before = before.trim_end().to_owned();
            action = a;
        }
        let trim_after = action.ends_with('-');
        if trim_after {
            action = &action[..action.len() - 1];
        }
        pieces.push((false, before));
        pieces.push((true, action.trim().to_owned()));
        rest = &rest[end + 2..];
        if trim_after {
            rest = rest.trim_start();
        }
    }
    pieces.push((false, rest.to_owned()));

    let mut out = String::new();
    let mut stack: Vec<(bool, bool)> = vec![]; // (this branch active, parent active)
    let active = |stack: &Vec<(bool, bool)>| stack.last().is_none_or(|(a, p)| *a && *p);
    for (is_action, content) in pieces {
        if !is_action {
            if active(&stack) {
                out.push_str(&content);
            }
            continue;
        }
        if let Some(cond) = content.strip_prefix("if ") {
            let parent = active(&stack);
            let v = if parent {
                truthy(&eval(scope, cond)?)
            } else {
                false
            };
            stack.push((v, parent));
        } else if content == "else" {
            let (a, p) = stack.pop().ok_or("else without if")?;
            stack.push((!a, p));
        } else if content == "end" {
            stack.pop().ok_or("end without if")?;
        } else if active(&stack) {
            out.push_str(&text(&eval(scope, &content)?));
        }
    }
    if !stack.is_empty() {
        return Err("unclosed if".into());
    }
    Ok(out)
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
    let dir = Path::new(ROOT).join("charts/berth");
    let mut values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("values.yaml")).unwrap()).unwrap();
    let over: Value = serde_yaml::from_str(values_override).unwrap();
    if let (Value::Mapping(m), Value::Mapping(o)) = (&mut values, over) {
        m.extend(o);
    }
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("Chart.yaml")).unwrap()).unwrap();
    let scope = Scope {
        values,
        release_namespace: "berth-system".into(),
        release_name: "berth".into(),
        app_version: chart["appVersion"].as_str().unwrap().to_owned(),
    };
    let mut all = String::new();
    let mut files: Vec<_> = std::fs::read_dir(dir.join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        // NOTES.txt is what helm prints after an install, not a manifest.
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let t = std::fs::read_to_string(&f).unwrap();
        let rendered = render(&t, &scope).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        all.push_str("\n---\n");
        all.push_str(&rendered);
    }
    objects(&all)
}

fn kustomize() -> String {
    let out = Command::new("kubectl")
        .args(["kustomize", "deploy/kustomize/base"])
        .current_dir(ROOT)
        .output()
        .expect("kubectl must be installed to render the kustomize base");
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
fn renderer_rejects_what_it_does_not_understand() {
    let scope = Scope {
        values: Value::Null,
        release_namespace: "ns".into(),
        release_name: "r".into(),
        app_version: "1".into(),
    };
    assert!(render("{{ include \"x\" . }}", &scope).is_err());
    assert!(render("{{- if .Values.a }}x", &scope).is_err());
    assert_eq!(
        render(
            "a\n{{- if .Values.a }}\nb\n{{- else }}\nc\n{{- end }}\n",
            &scope
        )
        .unwrap(),
        "a\nc\n"
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
            }
        }
    }
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
        .expect("lua5.1 (apt-get install lua5.1; .ci/run installs it)");
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
