//! Signatures required to pull: in a matching repository, a manifest is served by tag (and
//! with `byDigest`, by digest too) only when a cosign signature of its digest verifies under
//! one of the rule's ECDSA P-256 keys. Signatures are found where cosign puts them: the tag
//! `sha256-<hex>.sig` (its classic scheme) and referrers with cosign's signature artifact type
//! (`--registry-referrers-mode=oci-1-1`). Each simple-signing layer's payload must be JSON
//! naming this digest, and its `dev.cosignproject.cosign/signature` annotation must verify
//! over the payload's bytes. Sigstore bundles (cosign 3's new format) and keyless
//! certificates are not verified: such images are refused as unsigned.
//!
//! A verified digest is remembered for [`VERIFIED_TTL`], so the check costs a map lookup on
//! the pull path; an unverified one is looked at again on every request (its signature may
//! be pushed a moment later).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use serde_json::Value;

use super::{PolicyError, Refusal};
use crate::config::SignatureRule;
use crate::oci::pattern::Pattern;
use crate::oci::{Digest, Manifest, RepoName, Tag};
use crate::repo::Repository;

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const COSIGN_SIG_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// How long a verified digest is taken as signed without looking again.
pub const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// Verified digests remembered at most (the oldest go first).
const VERIFIED_MAX: usize = 16_384;
/// Signatures examined per pull at most, and the largest payload read: a repository stuffed
/// with junk signatures costs a bounded amount per pull.
const MAX_CANDIDATES: usize = 32;
const MAX_PAYLOAD: u64 = 64 * 1024;

/// The DER prefix of a SubjectPublicKeyInfo for an uncompressed P-256 point: SEQUENCE {
/// SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (65 bytes) }.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

#[derive(Debug)]
struct Rule {
    index: usize,
    repository: Pattern,
    /// Uncompressed P-256 points.
    keys: Vec<Vec<u8>>,
    by_digest: bool,
}

impl Rule {
    fn describe(&self) -> String {
        format!(
            "policy.signatures[{}] ({})",
            self.index,
            self.repository.as_str()
        )
    }
}

#[derive(Debug, Default)]
pub struct Signatures {
    rules: Vec<Rule>,
    verified: Mutex<HashMap<Digest, Instant>>,
}

/// The P-256 points of every `PUBLIC KEY` block in `pem`.
pub fn parse_public_keys(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::pem::{self, PemObject, SectionKind};
    let mut keys = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
        let (kind, der) = section.map_err(|e| match e {
            pem::Error::Base64Decode(why) => format!("a PEM block is not base64: {why}"),
            other => format!("not PEM text: {other}"),
        })?;
        match kind {
            SectionKind::PublicKey => {}
            SectionKind::PrivateKey | SectionKind::EcPrivateKey | SectionKind::RsaPrivateKey => {
                return Err(
                    "this is a private key: put only the public key (cosign.pub) here, and keep the private one secret"
                        .into(),
                );
            }
            other => {
                return Err(format!(
                    "a {other:?} block: only ECDSA P-256 public keys (PUBLIC KEY, as cosign.pub) are accepted"
                ));
            }
        }
        match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) if point.len() == 65 && point[0] == 4 => keys.push(point.to_vec()),
            _ => return Err("a PUBLIC KEY that is not an ECDSA P-256 key".into()),
        }
    }
    if keys.is_empty() {
        return Err("no PUBLIC KEY block: give the PEM text of the key (cosign.pub)".into());
    }
    Ok(keys)
}

impl Signatures {
    /// Validates the rules; with `read_files` also reads and parses their keys.
    pub fn from_config(rules: &[SignatureRule], read_files: bool) -> Result<Self, PolicyError> {
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let bad = |field, why: String| PolicyError::new("signatures", i, field, why);
                let repository =
                    Pattern::parse(&r.repository).map_err(|e| bad("repository", e.to_string()))?;
                let keys = if read_files {
                    read_keys(&r.public_key).map_err(|e| bad("publicKey", e))?
                } else {
                    Vec::new()
                };
                Ok(Rule {
                    index: i,
                    repository,
                    keys,
                    by_digest: r.by_digest,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Signatures {
            rules,
            verified: Mutex::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Before manifest `digest` of `repo` is served, reached by `tag` (`None`: by digest).
    pub async fn check_pull(
        &self,
        repo: &Repository<'_>,
        digest: &Digest,
        tag: Option<&Tag>,
    ) -> Result<(), Refusal> {
        let Some(rule) = self.rule_for(repo.name()) else {
            return Ok(());
        };
        if tag.is_none() && !rule.by_digest {
            return Ok(());
        }
        // cosign's own tags (signatures, attestations, SBOMs) are not images to sign.
        if tag.is_some_and(|t| is_cosign_tag(t.as_str())) || self.recently_verified(digest) {
            return Ok(());
        }
        match verify(repo, rule, digest, tag.is_none()).await? {
            Verdict::Signed => {
                self.remember(digest);
                Ok(())
            }
            Verdict::Exempt => Ok(()),
            Verdict::Unsigned(why) => Err(Refusal::Denied(format!(
                "{digest} in {} is not pulled: {} requires a signature by its key, and {why}",
                repo.name(),
                rule.describe()
            ))),
        }
    }

    fn rule_for(&self, repo: &RepoName) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.repository.matches(repo.as_str()))
    }

    fn recently_verified(&self, digest: &Digest) -> bool {
        let map = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        map.get(digest)
            .is_some_and(|at| at.elapsed() < VERIFIED_TTL)
    }

    fn remember(&self, digest: &Digest) {
        let mut map = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= VERIFIED_MAX {
            map.retain(|_, at| at.elapsed() < VERIFIED_TTL);
            if map.len() >= VERIFIED_MAX {
                map.clear();
            }
        }
        map.insert(digest.clone(), Instant::now());
    }
}

fn read_keys(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_public_keys(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `sha256-<64 hex>.sig`, `.att`, `.sbom`: where cosign keeps what it attaches.
fn is_cosign_tag(t: &str) -> bool {
    let Some(rest) = t.strip_prefix("sha256-") else {
        return false;
    };
    let Some((hex, suffix)) = rest.split_once('.') else {
        return false;
    };
    hex.len() == 64
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && matches!(suffix, "sig" | "att" | "sbom")
}

enum Verdict {
    Signed,
    /// Not an image: a signature or other artifact fetched by digest.
    Exempt,
    Unsigned(String),
}

async fn verify(
    repo: &Repository<'_>,
    rule: &Rule,
    digest: &Digest,
    by_digest: bool,
) -> Result<Verdict, Refusal> {
    let store = repo.store();
    if by_digest
        && let Some(bytes) = store
            .blob_read(digest)
            .await
            .map_err(crate::repo::RepoError::from)?
        && let Ok(m) = Manifest::parse(&bytes, None)
        && (m.subject.is_some() || m.artifact_type.is_some() || is_signature(&m))
    {
        return Ok(Verdict::Exempt);
    }
    let mut candidates: Vec<Digest> = Vec::new();
    let sig_tag: Option<Tag> = format!("{}-{}.sig", digest.algorithm(), digest.hex())
        .parse()
        .ok();
    if let Some(t) = sig_tag
        && let Some(d) = repo.tag(&t).await?
    {
        candidates.push(d);
    }
    for r in repo.referrers(digest).await? {
        if r.artifact_type.as_deref() == Some(COSIGN_SIG_ARTIFACT) {
            candidates.push(r.digest);
        }
    }
    if candidates.is_empty() {
        return Ok(Verdict::Unsigned("no signature is stored for it".into()));
    }
    let mut last = String::new();
    for c in candidates.iter().take(MAX_CANDIDATES) {
        match check_signature_manifest(repo, rule, c, digest).await? {
            Ok(()) => return Ok(Verdict::Signed),
            Err(why) => last = why,
        }
    }
    Ok(Verdict::Unsigned(format!("no signature verifies ({last})")))
}

fn is_signature(m: &Manifest) -> bool {
    !m.layers.is_empty() && m.layers.iter().all(|l| l.media_type == SIMPLE_SIGNING)
}

/// One signature manifest: `Ok(Ok(()))` when one of its layers verifies for `digest`.
async fn check_signature_manifest(
    repo: &Repository<'_>,
    rule: &Rule,
    sig: &Digest,
    digest: &Digest,
) -> Result<Result<(), String>, Refusal> {
    let store = repo.store();
    let Some(bytes) = store
        .blob_read(sig)
        .await
        .map_err(crate::repo::RepoError::from)?
    else {
        return Ok(Err(format!("signature manifest {sig} is missing")));
    };
    let Ok(m) = Manifest::parse(&bytes, None) else {
        return Ok(Err(format!("signature manifest {sig} is not a manifest")));
    };
    let mut why = format!("signature manifest {sig} has no simple-signing layer");
    for layer in m.layers.iter().filter(|l| l.media_type == SIMPLE_SIGNING) {
        let Some(sig_b64) = layer
            .annotations
            .as_ref()
            .and_then(|a| a.get(SIGNATURE_ANNOTATION))
        else {
            why = format!("a layer of {sig} carries no {SIGNATURE_ANNOTATION} annotation");
            continue;
        };
        if layer.size > MAX_PAYLOAD || !repo.blob_linked(&layer.digest).await? {
            why = format!(
                "the payload {} of {sig} is too large or missing",
                layer.digest
            );
            continue;
        }
        let Some(payload) = store
            .blob_read(&layer.digest)
            .await
            .map_err(crate::repo::RepoError::from)?
        else {
            why = format!("the payload {} of {sig} is missing", layer.digest);
            continue;
        };
        match check_payload(&rule.keys, &payload, sig_b64, digest) {
            Ok(()) => return Ok(Ok(())),
            Err(w) => why = w,
        }
    }
    Ok(Err(why))
}

/// A simple-signing payload: JSON naming `digest` as the signed image, its signature valid
/// under one of `keys`.
fn check_payload(
    keys: &[Vec<u8>],
    payload: &[u8],
    sig_b64: &str,
    digest: &Digest,
) -> Result<(), String> {
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig_b64.trim())
        .map_err(|_| "the signature annotation is not base64".to_owned())?;
    if !keys.iter().any(|k| {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, k)
            .verify(payload, &sig)
            .is_ok()
    }) {
        return Err("the signature does not verify with the rule's key".into());
    }
    let claims: Value =
        serde_json::from_slice(payload).map_err(|_| "the signed payload is not JSON".to_owned())?;
    let named = claims["critical"]["image"]["docker-manifest-digest"].as_str();
    if named != Some(digest.to_string().as_str()) {
        return Err(format!(
            "the signed payload names {}, not this image",
            named.unwrap_or("no digest")
        ));
    }
    if claims["critical"]["type"] != "cosign container image signature" {
        return Err("the signed payload is not a cosign container image signature".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    fn key() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap()
    }

    pub fn pem_of(k: &EcdsaKeyPair) -> String {
        let mut der = P256_SPKI_PREFIX.to_vec();
        der.extend_from_slice(k.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    fn sign(k: &EcdsaKeyPair, payload: &[u8]) -> String {
        let sig = k.sign(&SystemRandom::new(), payload).unwrap();
        base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
    }

    #[test]
    fn payloads_verify_only_for_their_digest_and_key() {
        let (k, other) = (key(), key());
        let keys = parse_public_keys(&pem_of(&k)).unwrap();
        let d = crate::oci::Algorithm::Sha256.digest_of(b"image");
        let payload = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"x"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":null}}"#
        );
        let p = payload.as_bytes();
        assert_eq!(check_payload(&keys, p, &sign(&k, p), &d), Ok(()));
        let e = check_payload(&keys, p, &sign(&other, p), &d).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        let elsewhere = crate::oci::Algorithm::Sha256.digest_of(b"other");
        let e = check_payload(&keys, p, &sign(&k, p), &elsewhere).unwrap_err();
        assert!(e.contains("names sha256:"), "{e}");
        let junk = b"not json at all";
        let e = check_payload(&keys, junk, &sign(&k, junk), &d).unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
        assert!(
            check_payload(&keys, p, "%%%", &d)
                .unwrap_err()
                .contains("base64")
        );
    }

    #[test]
    fn keys_are_p256_public_keys_only() {
        let (a, b) = (key(), key());
        let two = format!("{}{}", pem_of(&a), pem_of(&b));
        assert_eq!(parse_public_keys(&two).unwrap().len(), 2);
        assert!(parse_public_keys("").unwrap_err().contains("no PUBLIC KEY"));
        let private = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(
            parse_public_keys(private)
                .unwrap_err()
                .contains("this is a private key")
        );
        let short = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n";
        assert!(
            parse_public_keys(short)
                .unwrap_err()
                .contains("not an ECDSA P-256")
        );
        assert!(is_cosign_tag(&format!("sha256-{}.sig", "a".repeat(64))));
        assert!(!is_cosign_tag("sha256-abc.sig"));
        assert!(!is_cosign_tag("v1"));
    }
}
