//! Docker registry token auth against a real `berth serve`: Bearer challenges, the `/token`
//! endpoint (scopes cut down to the rules), tokens from an external issuer, and every kind of
//! bad token (expired, forged, tampered, alg none, wrong audience, revoked robot).

mod common;

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

fn write_config(dir: &Path, token_extra: &str) -> std::path::PathBuf {
    let htpasswd = dir.join("htpasswd");
    write_htpasswd(
        &htpasswd,
        &[
            ("alice", "alice-pw"),
            ("bob", "bob-pw"),
            ("admin", "admin-pw"),
        ],
    );
    let cfg = dir.join("berth.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
auth:
  htpasswd: {}
  admins: [admin]
  maxFailedLogins: 1000
  access:
    - repository: "team-a/**"
      users: [alice]
      actions: [pull, push]
    - repository: "public/*"
      users: [anonymous]
      actions: [pull]
    - repository: "bob/**"
      users: [bob]
      actions: [pull, push]
  token:
    service: berth-test
{token_extra}
"#,
            htpasswd.display()
        ),
    )
    .unwrap();
    cfg
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Parses `Bearer realm="...",service="...",scope="..."`.
fn challenge_params(h: &str) -> std::collections::HashMap<String, String> {
    let rest = h.strip_prefix("Bearer ").expect("a Bearer challenge");
    rest.split("\",")
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.trim_matches('"').to_owned()))
        })
        .collect()
}

async fn get_token(c: &reqwest::Client, url: &str, auth: Option<&str>) -> (u16, Value) {
    let mut rb = c.get(url);
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn with_bearer(c: &reqwest::Client, url: String, token: &str) -> (u16, String, String) {
    let r = c
        .get(url)
        .header("authorization", format!("Bearer {token}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        v["errors"][0]["code"].as_str().unwrap_or("").to_owned(),
        challenge,
    )
}

#[tokio::test]
async fn token_flow_scopes_and_bad_tokens() {
    let dir = tempfile::tempdir().unwrap();
    // An external issuer, trusted by its certificate.
    let ext_key = rcgen::KeyPair::generate().unwrap();
    let ext_cert = rcgen::CertificateParams::new(vec!["issuer.example".into()])
        .unwrap()
        .self_signed(&ext_key)
        .unwrap();
    let ext_cert_path = dir.path().join("issuer.pem");
    std::fs::write(&ext_cert_path, ext_cert.pem()).unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "    trustedIssuers:\n      - issuer: acme-auth\n        publicKey: {}\n",
            ext_cert_path.display()
        ),
    );
    let root = dir.path().join("data");
    let s = Server::start_on(&root, &["--config", cfg.to_str().unwrap()]);
    let c = client();

    // The challenge names the realm, the service and the scope needed.
    let r = c.get(s.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let ch = challenge_params(r.headers()["www-authenticate"].to_str().unwrap());
    assert_eq!(ch["realm"], s.url("/token"));
    assert_eq!(ch["service"], "berth-test");
    let r = c
        .post(s.url("/v2/team-a/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let ch = challenge_params(r.headers()["www-authenticate"].to_str().unwrap());
    assert_eq!(ch["scope"], "repository:team-a/app:pull,push");

    // alice asks for more than she has: the token holds only what the rules grant.
    let realm = s.url("/token");
    let alice = basic("alice", "alice-pw");
    let (st, v) = get_token(
        &c,
        &format!(
            "{realm}?service=berth-test&account=alice&scope=repository:team-a/app:pull,push,delete&scope=repository:team-b/app:pull"
        ),
        Some(&alice),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    assert_eq!(v["access_token"], v["token"]);
    assert_eq!(v["expires_in"], 300);
    assert!(v["issued_at"].as_str().unwrap().ends_with('Z'));
    let claims = claims_of(&token);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], "berth-test");
    assert_eq!(
        claims["access"],
        json!([
            {"type": "repository", "name": "team-a/app", "actions": ["pull", "push"]},
            {"type": "repository", "name": "team-b/app", "actions": []}
        ])
    );
    // The token works for what it grants ...
    push_image_bearer(&c, &s, &token, "team-a/app").await;
    let got = with_bearer(&c, s.url("/v2/team-a/app/manifests/v1"), &token).await;
    assert_eq!(got.0, 200, "{got:?}");
    assert_eq!(with_bearer(&c, s.url("/v2/"), &token).await.0, 200);
    // ... not for a repository alice may never pull (403), and a scope she could have but the
    // token lacks gets a challenge for it.
    let got = with_bearer(&c, s.url("/v2/team-b/app/manifests/v1"), &token).await;
    assert_eq!((got.0, got.1.as_str()), (403, "DENIED"), "{got:?}");
    let (_, v) = get_token(
        &c,
        &format!("{realm}?service=berth-test&scope=repository:team-a/app:pull"),
        Some(&alice),
    )
    .await;
    let pull_only = v["token"].as_str().unwrap().to_owned();
    let r = c
        .post(s.url("/v2/team-a/app/blobs/uploads/"))
        .header("authorization", format!("Bearer {pull_only}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let ch = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(ch.contains("error=\"insufficient_scope\""), "{ch}");
    assert!(
        ch.contains("scope=\"repository:team-a/app:pull,push\""),
        "{ch}"
    );
    // Catalog needs its own scope.
    let got = with_bearer(&c, s.url("/v2/_catalog"), &token).await;
    assert_eq!(got.0, 401);
    assert!(got.2.contains("registry:catalog:*"), "{got:?}");
    let (_, v) = get_token(
        &c,
        &format!("{realm}?service=berth-test&scope=registry:catalog:*"),
        Some(&alice),
    )
    .await;
    let r = c
        .get(s.url("/v2/_catalog"))
        .header(
            "authorization",
            format!("Bearer {}", v["token"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["repositories"],
        json!(["team-a/app"])
    );

    // Anonymous tokens carry only anonymous rights.
    let (st, v) = get_token(
        &c,
        &format!("{realm}?service=berth-test&scope=repository:public/lib:pull,push&scope=repository:team-a/app:pull"),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let anon = claims_of(v["token"].as_str().unwrap());
    assert_eq!(anon["sub"], "");
    assert_eq!(anon["access"][0]["actions"], json!(["pull"]));
    assert_eq!(anon["access"][1]["actions"], json!([]));
    let got = with_bearer(
        &c,
        s.url("/v2/team-a/app/manifests/v1"),
        v["token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(got.0, 401, "anonymous is told to authenticate: {got:?}");

    // Bad token requests: 401 UNAUTHORIZED, never a 5xx.
    for (url, auth) in [
        (
            format!("{realm}?service=other&scope=repository:team-a/app:pull"),
            Some(alice.clone()),
        ),
        (
            format!("{realm}?service=berth-test&account=bob"),
            Some(alice.clone()),
        ),
        (
            format!("{realm}?service=berth-test&scope=repository:team-a/app"),
            Some(alice.clone()),
        ),
        (
            format!("{realm}?service=berth-test&scope=repository:../etc:pull"),
            Some(alice.clone()),
        ),
        (
            format!("{realm}?service=berth-test&scope=repository:Team:pull"),
            Some(alice.clone()),
        ),
        (
            format!("{realm}?service=berth-test&scope=nonsense"),
            Some(alice.clone()),
        ),
        (
            format!("{realm}?service=berth-test"),
            Some(basic("alice", "wrong")),
        ),
        (
            format!("{realm}?service=berth-test"),
            Some(basic("mallory", "x")),
        ),
        (
            format!("{realm}?service=berth-test"),
            Some(format!("Bearer {token}")),
        ),
        (
            format!("{realm}?service=berth-test"),
            Some("Basic ###".into()),
        ),
    ] {
        let (st, v) = get_token(&c, &url, auth.as_deref()).await;
        assert_eq!(st, 401, "{url} {auth:?}: {v}");
        assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED", "{url}");
    }

    // Bad tokens on /v2/.
    let key_pem = std::fs::read(root.join("auth/token-key.pem")).unwrap();
    let our_key = EncodingKey::from_ec_pem(&key_pem).unwrap();
    let sign = |key: &EncodingKey, claims: &Value| {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, key).unwrap()
    };
    let grant = json!([{"type": "repository", "name": "team-a/app", "actions": ["pull", "push", "delete"]}]);
    let good_claims = |iss: &str, aud: &str, exp: u64| json!({"iss": iss, "sub": "alice", "aud": aud, "exp": exp, "iat": now(), "access": grant});
    // Sanity: a token we sign like the registry does is accepted (so the rejections below are
    // about the one thing changed in each).
    let ok = sign(&our_key, &good_claims("berth", "berth-test", now() + 60));
    assert_eq!(
        with_bearer(&c, s.url("/v2/team-a/app/manifests/v1"), &ok)
            .await
            .0,
        200
    );
    let parts: Vec<&str> = token.split('.').collect();
    let mut tampered_claims = claims_of(&token);
    tampered_claims["access"][1]["actions"] = json!(["pull"]);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(tampered_claims.to_string()),
        parts[2]
    );
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(good_claims("berth", "berth-test", now() + 60).to_string())
    );
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good_claims("berth", "berth-test", now() + 60),
        &EncodingKey::from_secret(&key_pem),
    )
    .unwrap();
    let forger = rcgen::KeyPair::generate().unwrap();
    let forged = sign(
        &EncodingKey::from_ec_pem(forger.serialize_pem().as_bytes()).unwrap(),
        &good_claims("berth", "berth-test", now() + 60),
    );
    let ext = EncodingKey::from_ec_pem(ext_key.serialize_pem().as_bytes()).unwrap();
    for (what, bad) in [
        (
            "expired",
            sign(&our_key, &good_claims("berth", "berth-test", now() - 120)),
        ),
        (
            "wrong audience",
            sign(
                &our_key,
                &good_claims("berth", "registry.other", now() + 60),
            ),
        ),
        (
            "no audience",
            sign(
                &our_key,
                &json!({"iss": "berth", "sub": "alice", "exp": now() + 60, "access": grant}),
            ),
        ),
        (
            "unknown issuer",
            sign(&our_key, &good_claims("evil", "berth-test", now() + 60)),
        ),
        (
            "external issuer, our name",
            sign(&ext, &good_claims("berth", "berth-test", now() + 60)),
        ),
        (
            "external, expired",
            sign(&ext, &good_claims("acme-auth", "berth-test", now() - 120)),
        ),
        (
            "external, wrong audience",
            sign(&ext, &good_claims("acme-auth", "other", now() + 60)),
        ),
        ("forged", forged),
        ("tampered", tampered),
        ("alg none", alg_none),
        ("HS256 with the public key material", hs256),
        ("garbage", "not-a-jwt".into()),
        ("three garbage parts", "a.b.c".into()),
    ] {
        let got = with_bearer(&c, s.url("/v2/team-a/app/manifests/v1"), &bad).await;
        assert_eq!(
            (got.0, got.1.as_str()),
            (401, "UNAUTHORIZED"),
            "{what}: {got:?}"
        );
        assert!(got.2.starts_with("Bearer realm="), "{what}: {got:?}");
    }
    // The external issuer's tokens are accepted for what they grant.
    let ext_token = sign(&ext, &good_claims("acme-auth", "berth-test", now() + 60));
    let got = with_bearer(&c, s.url("/v2/team-a/app/manifests/v1"), &ext_token).await;
    assert_eq!(got.0, 200, "{got:?}");
    let got = with_bearer(&c, s.url("/v2/team-b/app/manifests/v1"), &ext_token).await;
    assert_eq!(got.0, 401, "{got:?}");

    // Robot tokens die with the robot.
    let secret = berth_token(
        &root,
        &[
            "create",
            "--name",
            "ci",
            "--scope",
            "repository:team-a/**:pull",
        ],
    );
    let robot = basic("robot$ci", secret.trim());
    let (st, v) = get_token(
        &c,
        &format!(
            "{realm}?service=berth-test&account=robot$ci&scope=repository:team-a/app:pull,push"
        ),
        Some(&robot),
    )
    .await;
    assert_eq!(st, 200);
    let rt = v["token"].as_str().unwrap().to_owned();
    assert_eq!(claims_of(&rt)["access"][0]["actions"], json!(["pull"]));
    assert_eq!(
        with_bearer(&c, s.url("/v2/team-a/app/manifests/v1"), &rt)
            .await
            .0,
        200
    );
    berth_token(&root, &["revoke", "--name", "ci"]);
    let got = with_bearer(&c, s.url("/v2/team-a/app/manifests/v1"), &rt).await;
    assert_eq!((got.0, got.1.as_str()), (401, "UNAUTHORIZED"), "{got:?}");
    let (st, _) = get_token(&c, &format!("{realm}?service=berth-test"), Some(&robot)).await;
    assert_eq!(st, 401);
}

async fn push_image_bearer(c: &reqwest::Client, s: &Server, token: &str, repo: &str) {
    let auth = format!("Bearer {token}");
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = b"a layer pushed with a token";
    for b in [&config[..], &layer[..]] {
        let r = c
            .post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(b))))
            .header("authorization", &auth)
            .body(b.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let m = image_manifest(
        (&sha256(config), config.len()),
        &[(&sha256(layer), layer.len())],
        "",
    );
    let r = c
        .put(s.url(&format!("/v2/{repo}/manifests/v1")))
        .header("authorization", &auth)
        .header("content-type", OCI_MANIFEST)
        .body(m)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// A cross-repository mount whose token lacks pull on `from`: a holder the rules let pull it
/// is asked (401 insufficient_scope, both scopes) for the wider token, and then the mount
/// happens; a user who really may not pull `from` gets a plain upload session.
#[tokio::test]
async fn mount_asks_for_pull_on_from_when_the_rules_grant_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let s = Server::start_on(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let c = client();
    let realm = s.url("/token");
    let token_for = |who: &'static str, pw: &'static str, scopes: &'static [&'static str]| {
        let c = c.clone();
        let realm = realm.clone();
        async move {
            let q: String = scopes.iter().map(|s| format!("&scope={s}")).collect();
            let (st, v) = get_token(
                &c,
                &format!("{realm}?service=berth-test{q}"),
                Some(&basic(who, pw)),
            )
            .await;
            assert_eq!(st, 200, "{v}");
            v["token"].as_str().unwrap().to_owned()
        }
    };
    let src = token_for("alice", "alice-pw", &["repository:team-a/src:pull,push"]).await;
    push_image_bearer(&c, &s, &src, "team-a/src").await;
    let layer = sha256(b"a layer pushed with a token");
    let mount = |repo: &'static str, token: String| {
        let c = c.clone();
        let url = s.url(&format!(
            "/v2/{repo}/blobs/uploads/?mount={layer}&from=team-a/src"
        ));
        async move {
            c.post(url)
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap()
        }
    };

    let narrow = token_for("alice", "alice-pw", &["repository:team-a/dst:pull,push"]).await;
    let r = mount("team-a/dst", narrow).await;
    assert_eq!(r.status(), 401);
    let ch = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(ch.contains("error=\"insufficient_scope\""), "{ch}");
    assert!(
        ch.contains("scope=\"repository:team-a/dst:pull,push repository:team-a/src:pull\""),
        "{ch}"
    );
    // The client asks for what the challenge named and the mount happens.
    let wide = token_for(
        "alice",
        "alice-pw",
        &[
            "repository:team-a/dst:pull,push",
            "repository:team-a/src:pull",
        ],
    )
    .await;
    let r = mount("team-a/dst", wide.clone()).await;
    assert_eq!(r.status(), 201, "{:?}", r.headers());
    let got = c
        .head(s.url(&format!("/v2/team-a/dst/blobs/{layer}")))
        .header("authorization", format!("Bearer {wide}"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);

    // bob may not pull team-a/src at all: no challenge he could answer, a plain session.
    let bobs = token_for("bob", "bob-pw", &["repository:bob/dst:pull,push"]).await;
    let r = mount("bob/dst", bobs).await;
    assert_eq!(r.status(), 202, "{:?}", r.headers());
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .contains("/blobs/uploads/")
    );
}
