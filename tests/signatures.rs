//! Signatures and SBOMs as cosign and oras push them, against a running `berth serve`. Neither
//! cosign nor the oras CLI is packaged where these tests run, so the test makes their artifacts
//! byte for byte as they do: a cosign simple-signing payload signed with a real ECDSA P-256 key
//! (cosign's OCI 1.1 referrers mode, and its `sha256-<hex>.sig` tag scheme), and an SPDX SBOM
//! as `oras attach --artifact-type application/spdx+json` makes it. Each is then found again as a
//! verifier finds it and checked.

mod common;

use base64::Engine as _;
use common::*;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde_json::{Value, json};

const COSIGN_SIG_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const COSIGN_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const SPDX: &str = "application/spdx+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";

async fn put_manifest(
    c: &reqwest::Client,
    s: &Server,
    repo: &str,
    reference: &str,
    m: &Value,
) -> String {
    let bytes = serde_json::to_vec(m).unwrap();
    let r = c
        .put(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("content-type", OCI_MANIFEST)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let digest = sha256(&bytes);
    if m.get("subject").is_some() {
        // The spec's answer to a push with a subject: the registry has indexed it.
        assert_eq!(
            r.headers()["oci-subject"].to_str().unwrap(),
            m["subject"]["digest"]
        );
    }
    digest
}

async fn get_artifact(c: &reqwest::Client, url: String) -> Value {
    let r = c
        .get(url)
        .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn get_blob(c: &reqwest::Client, s: &Server, repo: &str, digest: &str) -> Vec<u8> {
    let r = c
        .get(s.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

fn descriptor(media: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media, "digest": sha256(bytes), "size": bytes.len()})
}

/// cosign's signature of `digest` for `reference`: the simple-signing payload and its signature.
fn cosign_sign(key: &EcdsaKeyPair, reference: &str, digest: &str) -> (Vec<u8>, String) {
    let payload = serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature"
        },
        "optional": null
    }))
    .unwrap();
    let sig = key.sign(&SystemRandom::new(), &payload).unwrap();
    (
        payload,
        base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
    )
}

/// What `cosign verify` checks of a signature layer: the signature over the payload under the
/// public key, and that the payload names the image's digest.
fn cosign_verify(public: &[u8], payload: &[u8], signature_b64: &str, digest: &str) -> bool {
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(signature_b64) else {
        return false;
    };
    let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public);
    let claims: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
    key.verify(payload, &sig).is_ok()
        && claims["critical"]["image"]["docker-manifest-digest"] == digest
}

#[tokio::test]
async fn cosign_signatures_and_an_sbom_are_pushed_as_referrers_and_found_again() {
    let s = Server::start();
    let c = client();
    let repo = "prod/app";
    let (image, digest) = push_image(&c, &s, repo, "v1", "signed").await;
    let subject = json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": image.len()});

    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = key.public_key().as_ref().to_vec();
    let (payload, signature) = cosign_sign(&key, &format!("{}/{repo}", s.host()), &digest);

    // cosign --registry-referrers-mode=oci-1-1: an artifact manifest with the subject.
    push_blob(&c, &s, repo, b"{}").await;
    push_blob(&c, &s, repo, &payload).await;
    let mut layer = descriptor(SIMPLE_SIGNING, &payload);
    layer["annotations"] = json!({ COSIGN_ANNOTATION: signature });
    let sig_manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": COSIGN_SIG_ARTIFACT,
        "config": descriptor(EMPTY, b"{}"),
        "layers": [layer],
        "subject": subject,
        "annotations": {"org.opencontainers.image.created": "2026-12-03T00:00:00Z"}
    });
    let sig_digest = put_manifest(
        &c,
        &s,
        repo,
        &sig_manifest_digest_ref(&sig_manifest),
        &sig_manifest,
    )
    .await;

    // cosign's classic scheme: the same layer under the tag sha256-<hex>.sig, no subject.
    let sig_tag = digest.replace(':', "-") + ".sig";
    let cosign_config = br#"{"architecture":"","config":{},"created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":[]}}"#;
    push_blob(&c, &s, repo, cosign_config).await;
    let classic = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", cosign_config),
        "layers": [layer],
    });
    put_manifest(&c, &s, repo, &sig_tag, &classic).await;

    // oras attach --artifact-type application/spdx+json: the SBOM as the one layer.
    let sbom = serde_json::to_vec(&json!({
        "spdxVersion": "SPDX-2.3",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": "prod/app:v1",
        "dataLicense": "CC0-1.0",
        "packages": [{"name": "busybox", "versionInfo": "1.36.1", "SPDXID": "SPDXRef-busybox"}]
    }))
    .unwrap();
    push_blob(&c, &s, repo, &sbom).await;
    let mut sbom_layer = descriptor(SPDX, &sbom);
    sbom_layer["annotations"] = json!({"org.opencontainers.image.title": "sbom.spdx.json"});
    let sbom_manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SPDX,
        "config": descriptor(EMPTY, b"{}"),
        "layers": [sbom_layer],
        "subject": subject,
    });
    let sbom_digest = put_manifest(
        &c,
        &s,
        repo,
        &sha256(&serde_json::to_vec(&sbom_manifest).unwrap()),
        &sbom_manifest,
    )
    .await;

    // A verifier lists the referrers, filtered by kind, as cosign and oras discover do.
    let all = get_artifact(&c, s.url(&format!("/v2/{repo}/referrers/{digest}"))).await;
    assert_eq!(all["mediaType"], OCI_INDEX);
    let mut kinds: Vec<(String, String)> = all["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["artifactType"].as_str().unwrap().to_owned(),
                m["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    kinds.sort();
    let mut want = vec![
        (COSIGN_SIG_ARTIFACT.to_owned(), sig_digest.clone()),
        (SPDX.to_owned(), sbom_digest.clone()),
    ];
    want.sort();
    assert_eq!(kinds, want, "both referrers, each with its artifactType");
    let sigs = get_artifact(
        &c,
        s.url(&format!(
            "/v2/{repo}/referrers/{digest}?artifactType={}",
            COSIGN_SIG_ARTIFACT.replace('+', "%2B")
        )),
    )
    .await;
    let found = sigs["manifests"].as_array().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["digest"], sig_digest.as_str());

    // Both signatures verify against the public key; a tampered payload does not.
    for reference in [sig_digest.as_str(), sig_tag.as_str()] {
        let m = get_artifact(&c, s.url(&format!("/v2/{repo}/manifests/{reference}"))).await;
        let l = &m["layers"][0];
        assert_eq!(l["mediaType"], SIMPLE_SIGNING);
        let body = get_blob(&c, &s, repo, l["digest"].as_str().unwrap()).await;
        let sig = l["annotations"][COSIGN_ANNOTATION].as_str().unwrap();
        assert!(
            cosign_verify(&public, &body, sig, &digest),
            "{reference} verifies"
        );
        let mut forged = body.clone();
        forged[10] ^= 1;
        assert!(!cosign_verify(&public, &forged, sig, &digest));
    }

    // The SBOM comes back whole.
    let m = get_artifact(&c, s.url(&format!("/v2/{repo}/manifests/{sbom_digest}"))).await;
    let got = get_blob(&c, &s, repo, m["layers"][0]["digest"].as_str().unwrap()).await;
    assert_eq!(got, sbom);
    let doc: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(doc["packages"][0]["name"], "busybox");
}

/// cosign pushes its OCI 1.1 signature manifest by digest, not by tag.
fn sig_manifest_digest_ref(m: &Value) -> String {
    sha256(&serde_json::to_vec(m).unwrap())
}

// ---------------------------------------------------------------------------------------------
// The signature policy: pulls of unsigned or badly signed images refused
// ---------------------------------------------------------------------------------------------

fn new_key() -> EcdsaKeyPair {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap()
}

/// `cosign.pub` as `cosign generate-key-pair` writes it: the SubjectPublicKeyInfo in PEM.
fn cosign_pub(k: &EcdsaKeyPair) -> String {
    let mut der = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    der.extend_from_slice(k.public_key().as_ref());
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

/// Pushes a cosign signature of `digest`: a simple-signing layer of `payload` signed by
/// `key` (or carrying `signature` as given), under the `.sig` tag or as a referrer.
async fn push_signature(
    c: &reqwest::Client,
    s: &Server,
    repo: &str,
    subject: (&str, usize),
    payload: &[u8],
    signature: &str,
    as_referrer: bool,
) {
    push_blob(c, s, repo, b"{}").await;
    push_blob(c, s, repo, payload).await;
    let mut layer = descriptor(SIMPLE_SIGNING, payload);
    layer["annotations"] = json!({ COSIGN_ANNOTATION: signature });
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(EMPTY, b"{}"),
        "layers": [layer],
    });
    if as_referrer {
        m["artifactType"] = json!(COSIGN_SIG_ARTIFACT);
        m["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": subject.0, "size": subject.1});
        put_manifest(c, s, repo, &sig_manifest_digest_ref(&m), &m).await;
    } else {
        put_manifest(c, s, repo, &(subject.0.replace(':', "-") + ".sig"), &m).await;
    }
}

async fn pull(
    c: &reqwest::Client,
    s: &Server,
    repo: &str,
    reference: &str,
    head: bool,
) -> (u16, String) {
    let url = s.url(&format!("/v2/{repo}/manifests/{reference}"));
    let rb = if head { c.head(url) } else { c.get(url) };
    let r = rb
        .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .unwrap();
    status_and_message(r).await
}

#[tokio::test]
async fn the_signature_policy_serves_signed_images_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (trusted, stranger) = (new_key(), new_key());
    let key_file = dir.path().join("cosign.pub");
    std::fs::write(&key_file, cosign_pub(&trusted)).unwrap();
    let cfg = dir.path().join("berth.yaml");
    std::fs::write(
        &cfg,
        format!(
            "policy:\n  signatures:\n    - repository: \"prod/**\"\n      publicKey: {k}\n    - repository: \"strict/**\"\n      publicKey: {k}\n      byDigest: true\n",
            k = key_file.display()
        ),
    )
    .unwrap();
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let c = client();
    let host = s.host().to_owned();
    let repo = "prod/app";

    let mut images = Vec::new();
    for i in 1..=6 {
        images.push(push_image(&c, &s, repo, &format!("v{i}"), &format!("p{i}")).await);
    }
    let subject = |i: usize| (images[i - 1].1.as_str(), images[i - 1].0.len());
    let signed =
        |k: &EcdsaKeyPair, i: usize| cosign_sign(k, &format!("{host}/{repo}"), subject(i).0);
    // v1: cosign's tag scheme; v2: a referrer; v3: unsigned; v4: another key; v5: a valid
    // signature of another image; v6: a signed payload that is not JSON.
    let (p, sig) = signed(&trusted, 1);
    push_signature(&c, &s, repo, subject(1), &p, &sig, false).await;
    let (p, sig) = signed(&trusted, 2);
    push_signature(&c, &s, repo, subject(2), &p, &sig, true).await;
    let (p, sig) = signed(&stranger, 4);
    push_signature(&c, &s, repo, subject(4), &p, &sig, false).await;
    let (p, sig) = signed(&trusted, 1);
    push_signature(&c, &s, repo, subject(5), &p, &sig, true).await;
    let junk = b"{not json".to_vec();
    let sig = base64::engine::general_purpose::STANDARD
        .encode(trusted.sign(&SystemRandom::new(), &junk).unwrap().as_ref());
    push_signature(&c, &s, repo, subject(6), &junk, &sig, false).await;

    for head in [false, true] {
        assert_eq!(
            pull(&c, &s, repo, "v1", head).await.0,
            200,
            "v1, head={head}"
        );
        assert_eq!(
            pull(&c, &s, repo, "v2", head).await.0,
            200,
            "v2, head={head}"
        );
    }
    for (tag, why) in [
        ("v3", "no signature is stored"),
        ("v4", "does not verify with the rule's key"),
        ("v5", "names sha256:"),
        ("v6", "not JSON"),
    ] {
        let (st, msg) = pull(&c, &s, repo, tag, false).await;
        assert_eq!(st, 403, "{tag}: {msg}");
        assert!(
            msg.contains("policy.signatures[0] (prod/**)"),
            "{tag}: {msg}"
        );
        assert!(msg.contains(why), "{tag}: {msg}");
        assert_eq!(pull(&c, &s, repo, tag, true).await.0, 403, "HEAD {tag}");
    }
    // By digest only where the rule says so; cosign's own tags are never held back.
    assert_eq!(pull(&c, &s, repo, subject(3).0, false).await.0, 200);
    let sig_tag = subject(1).0.replace(':', "-") + ".sig";
    assert_eq!(pull(&c, &s, repo, &sig_tag, false).await.0, 200);
    // Outside the rule's repositories nothing is required.
    push_image(&c, &s, "dev/app", "v1", "d").await;
    assert_eq!(pull(&c, &s, "dev/app", "v1", false).await.0, 200);

    // strict/** refuses unsigned pulls by digest too, but not the signature artifacts.
    let (m, d) = push_image(&c, &s, "strict/app", "v1", "s1").await;
    assert_eq!(pull(&c, &s, "strict/app", &d, false).await.0, 403);
    let (p, sig) = cosign_sign(&trusted, &format!("{host}/strict/app"), &d);
    push_signature(&c, &s, "strict/app", (&d, m.len()), &p, &sig, true).await;
    assert_eq!(pull(&c, &s, "strict/app", &d, false).await.0, 200);
    assert_eq!(pull(&c, &s, "strict/app", "v1", false).await.0, 200);
    let refs = get_artifact(&c, s.url(&format!("/v2/strict/app/referrers/{d}"))).await;
    let sig_digest = refs["manifests"][0]["digest"].as_str().unwrap().to_owned();
    assert_eq!(pull(&c, &s, "strict/app", &sig_digest, false).await.0, 200);

    // A real client sees the same: skopeo reads v1 and is refused v3.
    common::needs::need("skopeo");
    let inspect = |tag: &str| {
        std::process::Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--raw"])
            .arg(format!("docker://{host}/{repo}:{tag}"))
            .output()
            .unwrap()
    };
    let ok = inspect("v1");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = inspect("v3");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("denied"), "{err}");
}

#[test]
fn a_bad_public_key_refuses_to_start_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cosign.pub");
    for (contents, why) in [
        ("", "no PUBLIC KEY block"),
        (
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
            "this is a private key",
        ),
        (
            "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n",
            "not base64",
        ),
    ] {
        std::fs::write(&key, contents).unwrap();
        let cfg = dir.path().join("berth.yaml");
        std::fs::write(
            &cfg,
            format!(
                "policy:\n  signatures:\n    - repository: \"prod/**\"\n      publicKey: {}\n",
                key.display()
            ),
        )
        .unwrap();
        let err = serve_refuses(dir.path(), &cfg);
        assert!(err.contains("policy.signatures[0].publicKey"), "{err}");
        assert!(err.contains(why), "{why}: {err}");
    }
}
