//! The operator's rendered config is what `berth serve` runs with: a Registry spec asking for
//! an admin, access rules and token auth is rendered by the operator's builders, its Secrets
//! (generated admin htpasswd, generated token signing key) are written where the pod would
//! mount them, and a real `berth serve` enforces it: Bearer challenges, tokens from `/token`
//! signed with the operator's key, pushes and pulls with them, anonymous pulls of `public/**`.

mod common;

use std::path::Path;

use berth::operator::crd::Registry;
use berth::operator::resources as build;
use common::{Server, basic, client};
use serde_json::{Value, json};

fn registry(spec: Value) -> Registry {
    serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "Registry",
        "metadata": {"name": "hub", "namespace": "team", "uid": "u-1"},
        "spec": spec,
    }))
    .unwrap()
}

/// Writes a Secret's data keys as files in `dir`, as a Secret volume would.
fn mount(secret: &k8s_openapi::api::core::v1::Secret, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (k, v) in secret.data.as_ref().unwrap() {
        std::fs::write(dir.join(k), &v.0).unwrap();
    }
}

#[tokio::test]
async fn rendered_token_auth_is_what_serve_enforces() {
    let reg = registry(json!({
        "storage": {"pvc": {"size": "1Gi"}},
        "auth": {
            "admin": {"username": "root"},
            "access": [{"repository": "public/**", "users": ["anonymous"], "actions": ["pull"]}],
            "token": {"service": "hub.team.svc", "expiresSeconds": 120},
        },
    }));
    let dir = tempfile::tempdir().unwrap();
    let admin = build::admin_secret(&reg, "root", "s3cret-pass", [7; 16]).unwrap();
    let key =
        build::token_key_secret(&reg, &berth::keys::generate_token_key_pem().unwrap()).unwrap();
    mount(&admin, &dir.path().join("auth"));
    mount(&key, &dir.path().join("token"));

    // The operator's config with the pod's mount paths moved under the temp dir.
    let mut config = build::render_config(&reg).unwrap();
    let text = serde_yaml::to_string(&config).unwrap();
    assert!(text.contains("/etc/berth-token/token-key.pem"), "{text}");
    config.auth.htpasswd = Some(dir.path().join("auth/htpasswd"));
    config.auth.token.as_mut().unwrap().key = Some(dir.path().join("token/token-key.pem"));
    config.storage.filesystem.as_mut().unwrap().root = dir.path().join("data");
    config.addr = None;
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    let s = Server::start_config(&path, &[]);
    let c = client();

    // Unauthenticated: a Bearer challenge for the rendered service.
    let r = c
        .get(s.url("/v2/private/app/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains("service=\"hub.team.svc\""),
        "{challenge}"
    );

    // The generated admin gets a token for push and pull, signed with the operator's key.
    let r = c
        .get(s.url("/token?service=hub.team.svc&scope=repository:private/app:pull,push"))
        .header("authorization", basic("root", "s3cret-pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(body["expires_in"], 120);
    let bearer = format!("Bearer {token}");
    let blob = b"layer bytes pushed with an operator-rendered token";
    let r = c
        .post(s.url("/v2/private/app/blobs/uploads/?digest=") + &common::sha256(blob))
        .header("authorization", &bearer)
        .body(blob.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // A wrong password gets no token.
    let r = c
        .get(s.url("/token?service=hub.team.svc&scope=repository:private/app:pull"))
        .header("authorization", basic("root", "wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Anonymous pulls of public/** need only an anonymous token.
    let admin_c = c.clone();
    let digest = {
        let r = admin_c
            .get(s.url("/token?service=hub.team.svc&scope=repository:public/base:pull,push"))
            .header("authorization", basic("root", "s3cret-pass"))
            .send()
            .await
            .unwrap();
        let t: Value = r.json().await.unwrap();
        let t = t["token"].as_str().unwrap().to_owned();
        let bytes = b"public layer";
        let r = c
            .post(s.url("/v2/public/base/blobs/uploads/?digest=") + &common::sha256(bytes))
            .header("authorization", format!("Bearer {t}"))
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        common::sha256(bytes)
    };
    let r = c
        .get(s.url("/token?service=hub.team.svc&scope=repository:public/base:pull"))
        .send()
        .await
        .unwrap();
    let anon: Value = r.json().await.unwrap();
    let anon = anon["token"].as_str().unwrap().to_owned();
    let r = c
        .get(s.url(&format!("/v2/public/base/blobs/{digest}")))
        .header("authorization", format!("Bearer {anon}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], b"public layer");
    // ...and nothing else.
    let r = c
        .get(s.url("/v2/private/app/tags/list"))
        .header("authorization", format!("Bearer {anon}"))
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 401 | 403), "{}", r.status());
}
