//! A scripted Kubernetes API server for reconcile tests: `tower_test::mock::pair` as kube-rs's
//! controller-rs uses it, answered by a small in-memory object store that understands GET,
//! LIST (label selectors), POST, PUT, DELETE and the three PATCH flavours (server-side apply,
//! merge, JSON patch). Tests seed objects, inject faults, play the kubelet by editing status,
//! and assert on the log of calls, so "no write" is checkable.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

impl Call {
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
    pub fn is_event(&self) -> bool {
        self.path.contains("/events")
    }
}

struct Fault {
    method: &'static str,
    path_contains: String,
    code: u16,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    log: Vec<Call>,
    faults: Vec<Fault>,
    rv: u64,
}

#[derive(Clone)]
pub struct Fake {
    state: Arc<Mutex<State>>,
}

/// The body a real API server gives for a path no API group serves (`text/plain`).
pub const PAGE_NOT_FOUND: &str = "404 page not found\n";

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

/// RFC 7386 merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn pointer_parent<'a>(root: &'a mut Value, path: &str) -> Option<(&'a mut Value, String)> {
    let (parent, last) = path.rsplit_once('/')?;
    Some((root.pointer_mut(parent)?, last.to_owned()))
}

/// The subset of RFC 6902 the finalizer helper sends: test, add, remove.
fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    for op in ops.as_array().cloned().unwrap_or_default() {
        let path = op["path"].as_str().unwrap_or_default();
        match op["op"].as_str() {
            Some("test") => {
                let have = target.pointer(path).cloned().unwrap_or(Value::Null);
                if have != op["value"] {
                    return Err(format!("test failed at {path}"));
                }
            }
            Some("add") => {
                let (parent, last) = pointer_parent(target, path).ok_or("bad path")?;
                match parent {
                    Value::Array(a) if last == "-" => a.push(op["value"].clone()),
                    Value::Object(o) => {
                        o.insert(last, op["value"].clone());
                    }
                    _ => return Err("cannot add".into()),
                }
            }
            Some("remove") => {
                let (parent, last) = pointer_parent(target, path).ok_or("bad path")?;
                match parent {
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| "bad index")?;
                        a.remove(i);
                    }
                    Value::Object(o) => {
                        o.remove(&last);
                    }
                    _ => return Err("cannot remove".into()),
                }
            }
            _ => return Err("unsupported op".into()),
        }
    }
    Ok(())
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            v.replace("%3D", "=")
                .replace("%2C", ",")
                .replace("%2F", "/")
        })
    })
}

/// What admission says of a new object's name, in the API server's words: Services need a
/// DNS-1035 label, everything else here a DNS-1123 subdomain; label values at most 63.
fn admit(collection: &str, obj: &Value) -> Option<(u16, Value)> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or("Object");
    let group = obj["apiVersion"]
        .as_str()
        .and_then(|v| v.split_once('/'))
        .map(|(g, _)| g)
        .unwrap_or_default();
    let label = |s: &str, first_alpha: bool| {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && (b[0].is_ascii_lowercase() || (!first_alpha && b[0].is_ascii_digit()))
            && b[b.len() - 1] != b'-'
    };
    let mut causes = vec![];
    if collection.ends_with("/services") {
        if name.len() > 63 {
            causes.push((
                "metadata.name",
                name.to_owned(),
                "must be no more than 63 characters".to_owned(),
            ));
        } else if !label(name, true) {
            causes.push(("metadata.name", name.to_owned(), "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".to_owned()));
        }
    } else if name.len() > 253 {
        causes.push((
            "metadata.name",
            name.to_owned(),
            "must be no more than 253 characters".to_owned(),
        ));
    } else if !name.split('.').all(|l| label(l, false)) {
        causes.push(("metadata.name", name.to_owned(), "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_owned()));
    }
    if let Some(labels) = obj["metadata"]["labels"].as_object() {
        for v in labels.values().filter_map(Value::as_str) {
            if v.len() > 63 {
                causes.push((
                    "metadata.labels",
                    v.to_owned(),
                    "must be no more than 63 characters".to_owned(),
                ));
            }
        }
    }
    if causes.is_empty() {
        return None;
    }
    let what = if group.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}.{group}")
    };
    let details: Vec<String> = causes
        .iter()
        .map(|(field, value, why)| format!("{field}: Invalid value: {value:?}: {why}"))
        .collect();
    let message = format!("{what} {name:?} is invalid: {}", details.join(", "));
    let (code, mut body) = status(422, "Invalid", &message);
    body["details"] = json!({"name": name, "group": group, "kind": kind.to_lowercase(),
        "causes": causes.iter().map(|(field, value, why)| json!({"reason": "FieldValueInvalid",
            "message": format!("Invalid value: {value:?}: {why}"), "field": field})).collect::<Vec<_>>()});
    Some((code, body))
}

/// A uid unique per object (kind and name), as the owner-reference garbage collector needs.
fn uid_for(key: &str) -> String {
    let mut segs = key.rsplit('/');
    let name = segs.next().unwrap_or_default();
    let plural = segs.next().unwrap_or_default();
    format!("uid-{plural}-{name}")
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl State {
    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    /// Stores a write as a real server does. A write to the main resource keeps the stored
    /// status and a `/status` write changes nothing but status (the status subresource); the
    /// server's metadata stays; a changed spec bumps `generation`; an object being deleted
    /// takes no new finalizer, and goes once its last finalizer is removed.
    fn store(
        &mut self,
        key: &str,
        old: Option<&Value>,
        mut obj: Value,
        sub: Option<&str>,
    ) -> (u16, Value) {
        let name = key.rsplit('/').next().unwrap_or_default().to_owned();
        if let Some(old) = old {
            if sub == Some("status") {
                let status = obj["status"].clone();
                obj = old.clone();
                obj["status"] = status;
            } else {
                for f in ["uid", "creationTimestamp", "deletionTimestamp"] {
                    if !old["metadata"][f].is_null() {
                        obj["metadata"][f] = old["metadata"][f].clone();
                    }
                }
                match old.get("status") {
                    Some(s) => obj["status"] = s.clone(),
                    None => {
                        if let Some(o) = obj.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                let bump = i64::from(old["spec"] != obj["spec"]);
                obj["metadata"]["generation"] = json!(generation + bump);
            }
            if !old["metadata"]["deletionTimestamp"].is_null() {
                let had = finalizers(old);
                let added: Vec<String> = finalizers(&obj)
                    .into_iter()
                    .filter(|f| !had.contains(f))
                    .collect();
                if !added.is_empty() {
                    return status(
                        422,
                        "Invalid",
                        &format!(
                            "{} {name:?} is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}",
                            obj["kind"].as_str().unwrap_or("Object")
                        ),
                    );
                }
            }
        } else {
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
            obj["metadata"]["generation"] = json!(1);
        }
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(uid_for(key));
        }
        obj["metadata"]["resourceVersion"] = json!(self.next_rv());
        self.objects.insert(key.to_owned(), obj.clone());
        if !obj["metadata"]["deletionTimestamp"].is_null() && finalizers(&obj).is_empty() {
            self.delete(key);
        }
        (200, obj)
    }

    /// DELETE as a real server does it: an object with finalizers only gets a
    /// deletionTimestamp; one without goes, and the garbage collector then takes (in the
    /// background) every object whose owners are all gone.
    fn delete(&mut self, key: &str) {
        let Some(obj) = self.objects.get(key).cloned() else {
            return;
        };
        if !finalizers(&obj).is_empty() {
            if obj["metadata"]["deletionTimestamp"].is_null() {
                let rv = self.next_rv();
                if let Some(o) = self.objects.get_mut(key) {
                    o["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                    o["metadata"]["resourceVersion"] = json!(rv);
                }
            }
            return;
        }
        self.objects.remove(key);
        self.collect_garbage();
    }

    fn collect_garbage(&mut self) {
        let uids: std::collections::BTreeSet<String> = self
            .objects
            .values()
            .filter_map(|o| o["metadata"]["uid"].as_str().map(str::to_owned))
            .collect();
        let orphans: Vec<String> = self
            .objects
            .iter()
            .filter(|(_, o)| o["metadata"]["deletionTimestamp"].is_null())
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| {
                        !refs.is_empty()
                            && refs
                                .iter()
                                .all(|r| !r["uid"].as_str().is_some_and(|u| uids.contains(u)))
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in orphans {
            self.delete(&key);
        }
    }

    fn handle(&mut self, call: &Call) -> (u16, Value) {
        if let Some(i) = self
            .faults
            .iter()
            .position(|f| f.method == call.method && call.path.contains(&f.path_contains))
        {
            let f = self.faults.remove(i);
            let reason = if f.code == 409 {
                "Conflict"
            } else {
                "InternalError"
            };
            return status(f.code, reason, "injected fault");
        }
        // Cluster-level documents a test seeded (discovery, say) are served as they are.
        if call.method == "GET"
            && let Some(doc) = self.objects.get(&call.path)
            && !call.path.contains("/namespaces/")
        {
            return (200, doc.clone());
        }
        // .../namespaces/{ns}/{plural}[/{name}[/{sub}]]
        let segs: Vec<&str> = call.path.trim_matches('/').split('/').collect();
        let Some(ns_at) = segs.iter().position(|s| *s == "namespaces") else {
            // As a real server answers a group or path it does not serve: no Status, plain text.
            return (404, Value::String(PAGE_NOT_FOUND.to_owned()));
        };
        let rest = &segs[ns_at + 2..];
        let collection = segs[..ns_at + 3.min(segs.len() - ns_at)].join("/");
        let collection = format!("/{collection}");
        let name = rest.get(1).copied();
        let sub = rest.get(2).copied();
        let key = name.map(|n| format!("{collection}/{n}"));
        match (call.method.as_str(), key, sub) {
            ("GET", None, _) => {
                let selector = query_param(&call.query, "labelSelector").unwrap_or_default();
                let prefix = format!("{collection}/");
                let items: Vec<Value> = self
                    .objects
                    .iter()
                    .filter(|(k, v)| {
                        k.starts_with(&prefix)
                            && !k[prefix.len()..].contains('/')
                            && labels_match(v, &selector)
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            ("GET", Some(key), Some("log")) => match self.objects.get(&format!("{key}/log")) {
                Some(Value::String(s)) => (200, Value::String(s.clone())),
                _ => status(404, "NotFound", "no log"),
            },
            ("GET", Some(key), _) => match self.objects.get(&key) {
                Some(v) => (200, v.clone()),
                None => status(404, "NotFound", "not found"),
            },
            ("POST", None, _) => {
                let mut obj = call.body.clone();
                let name = obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if let Some(refused) = admit(&collection, &obj) {
                    return refused;
                }
                let key = format!("{collection}/{name}");
                if self.objects.contains_key(&key) {
                    return status(409, "AlreadyExists", "already exists");
                }
                obj["metadata"]["uid"] = json!(uid_for(&key));
                obj["metadata"]["resourceVersion"] = json!(self.next_rv());
                obj["metadata"]["generation"] = json!(1);
                // The status subresource: a create sets no status.
                if let Some(o) = obj.as_object_mut() {
                    o.remove("status");
                }
                self.objects.insert(key, obj.clone());
                (201, obj)
            }
            ("PUT", Some(key), sub) => {
                let Some(old) = self.objects.get(&key).cloned() else {
                    return status(404, "NotFound", "not found");
                };
                if call.body["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"] {
                    return status(409, "Conflict", "the object has been modified");
                }
                self.store(&key, Some(&old), call.body.clone(), sub)
            }
            ("DELETE", Some(key), _) => match self.objects.get(&key).cloned() {
                Some(v) => {
                    self.delete(&key);
                    (200, self.objects.get(&key).cloned().unwrap_or(v))
                }
                None => status(404, "NotFound", "not found"),
            },
            ("PATCH", Some(key), sub) => {
                let existing = self.objects.get(&key).cloned();
                let mut obj = match (&existing, call.content_type.as_str()) {
                    (None, ct) if !ct.contains("apply-patch") || sub == Some("status") => {
                        return status(404, "NotFound", "not found");
                    }
                    (None, _) => json!({}),
                    (Some(o), _) => o.clone(),
                };
                if call.content_type.contains("apply-patch") {
                    if existing.is_none()
                        && let Some(refused) = admit(&collection, &call.body)
                    {
                        return refused;
                    }
                    if sub == Some("status") {
                        obj["status"] = call.body["status"].clone();
                    } else {
                        // Applied fields replace ours (finalizers other managers set stay).
                        let finalizers = obj["metadata"]["finalizers"].clone();
                        obj = call.body.clone();
                        if !finalizers.is_null() && obj["metadata"]["finalizers"].is_null() {
                            obj["metadata"]["finalizers"] = finalizers;
                        }
                    }
                } else if call.content_type.contains("merge-patch") {
                    merge(&mut obj, &call.body);
                } else if call.content_type.contains("json-patch") {
                    if let Err(e) = json_patch(&mut obj, &call.body) {
                        return status(422, "Invalid", &e);
                    }
                } else {
                    return status(415, "UnsupportedMediaType", &call.content_type);
                }
                self.store(&key, existing.as_ref(), obj, sub)
            }
            _ => status(405, "MethodNotAllowed", "unsupported"),
        }
    }
}

impl Fake {
    /// An operator `Context` whose client talks to a fresh fake API server, with the test
    /// image as the default registry image. Quota usage is read from a loopback port nothing
    /// listens on (no test resolves cluster DNS names); tests that play the registry's
    /// /metrics swap in their own reader.
    pub fn context() -> (Arc<super::Context>, Fake) {
        let (client, fake) = Fake::start();
        let ctx = super::Context::new(
            client,
            super::resources::Defaults {
                image: "ghcr.io/berth-dev/berth:test".into(),
            },
            Arc::new(super::metrics::Metrics::default()),
        )
        .with_quota_reader(super::quota::QuotaReader::with_base_url(
            "http://127.0.0.1:1",
        ));
        (Arc::new(ctx), fake)
    }

    /// A client talking to a fresh fake API server.
    pub fn start() -> (kube::Client, Fake) {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = Fake {
            state: Arc::new(Mutex::new(State::default())),
        };
        let state = fake.state.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let call = Call {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().unwrap_or_default().to_owned(),
                    content_type: parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                };
                let (code, body) = {
                    let mut st = state.lock().unwrap();
                    let out = st.handle(&call);
                    st.log.push(call.clone());
                    out
                };
                // Pod logs and unserved paths are plain text; everything else JSON.
                let (bytes, content_type) = match body {
                    Value::String(s) => (s.into_bytes(), "text/plain; charset=utf-8"),
                    other => (serde_json::to_vec(&other).unwrap(), "application/json"),
                };
                let resp = Response::builder()
                    .status(StatusCode::from_u16(code).unwrap())
                    .header("content-type", content_type)
                    .body(Body::from(bytes))
                    .unwrap();
                send.send_response(resp);
            }
        });
        (kube::Client::new(mock, "default"), fake)
    }

    pub fn put(&self, key: &str, obj: Value) {
        self.state
            .lock()
            .unwrap()
            .objects
            .insert(key.to_owned(), obj);
    }

    pub fn remove(&self, key: &str) {
        self.state.lock().unwrap().objects.remove(key);
    }

    pub fn get(&self, key: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(key).cloned()
    }

    /// Plays a controller or the kubelet: merges `patch` into a stored object.
    pub fn edit(&self, key: &str, patch: Value) {
        let mut st = self.state.lock().unwrap();
        let obj = st.objects.get_mut(key).expect("object to edit");
        merge(obj, &patch);
    }

    /// The next `method` on a path containing `path_contains` answers `code`.
    pub fn fail_once(&self, method: &'static str, path_contains: &str, code: u16) {
        self.state.lock().unwrap().faults.push(Fault {
            method,
            path_contains: path_contains.to_owned(),
            code,
        });
    }

    /// Calls since the last `take_calls`.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.state.lock().unwrap().log)
    }
}

/// Writes other than Events, as "METHOD path" lines.
pub fn writes(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.is_write() && !c.is_event())
        .map(|c| format!("{} {}", c.method, c.path))
        .collect()
}

/// Reasons of the Events published.
pub fn event_reasons(calls: &[Call]) -> Vec<String> {
    event_field(calls, "reason")
}

/// Notes (messages) of the Events published.
pub fn event_notes(calls: &[Call]) -> Vec<String> {
    event_field(calls, "note")
}

fn event_field(calls: &[Call], field: &str) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.is_event() && c.method != "GET")
        .map(|c| c.body[field].as_str().unwrap_or_default().to_owned())
        .collect()
}
