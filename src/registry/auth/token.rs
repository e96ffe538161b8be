//! Docker registry tokens: JWTs whose `access` claim lists what the bearer may do. Berth signs
//! its own with an EC P-256 key (ES256) and accepts those of configured external issuers.
//! Verified tokens are remembered by a hash of their bytes until they expire (or for a minute
//! at most), so a client reusing a token pays the signature check once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::rules::Actions;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read key {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("cannot write key {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("invalid key {0}: {1}")]
    Key(PathBuf, String),
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// One entry of the `access` claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub actions: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    #[serde(default)]
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    #[serde(default)]
    pub nbf: Option<u64>,
    #[serde(default)]
    pub iat: Option<u64>,
    #[serde(default)]
    pub jti: Option<String>,
    #[serde(default)]
    pub access: Vec<Access>,
    /// For a robot's token: the id of the robot record it was issued for.
    #[serde(
        default,
        rename = "berth_robot",
        skip_serializing_if = "Option::is_none"
    )]
    pub robot: Option<String>,
}

impl Claims {
    /// What the token grants on a repository.
    pub fn repository_actions(&self, repo: &str) -> Actions {
        self.access
            .iter()
            .filter(|a| a.kind == "repository" && a.name == repo)
            .flat_map(|a| a.actions.iter())
            .fold(Actions::NONE, |acc, a| {
                acc.union(Actions::parse_list(a).unwrap_or(Actions::NONE))
            })
    }

    pub fn grants_catalog(&self) -> bool {
        self.access
            .iter()
            .any(|a| a.kind == "registry" && a.name == "catalog")
    }

    /// Whether the token was issued for administration (`registry:admin:*`).
    pub fn grants_admin(&self) -> bool {
        self.access.iter().any(|a| {
            a.kind == "registry" && a.name == "admin" && a.actions.iter().any(|x| x == "*")
        })
    }
}

/// A verified token: its claims, and whether Berth signed it (its `sub` is then one of ours).
#[derive(Clone, Debug)]
pub struct Verified {
    pub claims: Arc<Claims>,
    pub ours: bool,
}

struct Verifier {
    issuer: String,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
    ours: bool,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The longest a verified token is remembered.
const CACHE_TTL: Duration = Duration::from_secs(60);
const CACHE_ENTRIES: usize = 10_000;
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 5;

pub struct Tokens {
    pub service: String,
    pub issuer: String,
    pub expires_in: u64,
    encoding: EncodingKey,
    kid: String,
    verifiers: Vec<Verifier>,
    cache: Mutex<HashMap<[u8; 32], (Instant, Verified)>>,
}

impl Tokens {
    /// Loads (or generates, when `key` is `None`, into `generated`) the signing key, and the
    /// external issuers' public keys.
    pub fn new(
        service: String,
        issuer: String,
        expires_in: u64,
        key: Option<&Path>,
        generated: &Path,
        trusted: &[(String, PathBuf)],
    ) -> Result<Tokens, TokenError> {
        let (path, pem) = match key {
            Some(p) => (
                p.to_owned(),
                std::fs::read(p).map_err(|e| TokenError::Read(p.to_owned(), e))?,
            ),
            None => (generated.to_owned(), load_or_generate(generated)?),
        };
        let der = pem_body(&pem, "PRIVATE KEY").ok_or_else(|| {
            TokenError::Key(path.clone(), "expected a PKCS#8 PEM PRIVATE KEY".into())
        })?;
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| TokenError::Key(path.clone(), format!("not an EC P-256 key: {e}")))?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = hex::encode(&Sha256::digest(&public)[..12]);
        let mut verifiers = vec![Verifier {
            issuer: issuer.clone(),
            key: DecodingKey::from_ec_der(&public),
            algorithms: vec![Algorithm::ES256],
            ours: true,
        }];
        for (iss, p) in trusted {
            let pem = std::fs::read(p).map_err(|e| TokenError::Read(p.clone(), e))?;
            let (key, algorithms) = if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                (k, vec![Algorithm::ES256, Algorithm::ES384])
            } else if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                (
                    k,
                    vec![
                        Algorithm::RS256,
                        Algorithm::RS384,
                        Algorithm::RS512,
                        Algorithm::PS256,
                        Algorithm::PS384,
                        Algorithm::PS512,
                    ],
                )
            } else {
                return Err(TokenError::Key(
                    p.clone(),
                    "expected a PEM EC or RSA public key or certificate".into(),
                ));
            };
            verifiers.push(Verifier {
                issuer: iss.clone(),
                key,
                algorithms,
                ours: false,
            });
        }
        Ok(Tokens {
            service,
            issuer,
            expires_in,
            encoding: EncodingKey::from_ec_der(&der),
            kid,
            verifiers,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Signs a token for `sub` (empty for anonymous) granting `access`; `robot` is the id of
    /// the robot record when `sub` is a robot.
    pub fn issue(
        &self,
        sub: &str,
        access: Vec<Access>,
        robot: Option<&str>,
    ) -> Result<(String, u64), TokenError> {
        let now = now_secs();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: sub.to_owned(),
            aud: self.service.clone(),
            exp: now + self.expires_in,
            nbf: Some(now.saturating_sub(1)),
            iat: Some(now),
            jti: Some(format!("{:032x}", rand::random::<u128>())),
            access,
            robot: robot.map(str::to_owned),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let t = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        Ok((t, now))
    }

    /// Checks signature, algorithm, issuer, audience and lifetime.
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((until, v)) = cache.get(&key)
                && *until > now
                && v.claims.exp + LEEWAY_SECS > now_secs()
            {
                return Ok(v.clone());
            }
        }
        let v = self.verify_uncached(token)?;
        let remaining = v.claims.exp.saturating_sub(now_secs());
        let until = now + CACHE_TTL.min(Duration::from_secs(remaining));
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (u, _)| *u > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (until, v.clone()));
        Ok(v)
    }

    pub fn verify_uncached(&self, token: &str) -> Result<Verified, TokenError> {
        let invalid = |m: &str| TokenError::Invalid(m.to_owned());
        // The issuer picks the key; read it before checking anything (nothing is trusted yet).
        let payload = token
            .split('.')
            .nth(1)
            .ok_or_else(|| invalid("not a JWT"))?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| invalid("payload is not base64url"))?;
        #[derive(Deserialize)]
        struct Iss {
            iss: Option<String>,
        }
        let iss: Iss =
            serde_json::from_slice(&payload).map_err(|_| invalid("payload is not JSON"))?;
        let iss = iss.iss.ok_or_else(|| invalid("no issuer"))?;
        let verifier = self
            .verifiers
            .iter()
            .find(|v| v.issuer == iss)
            .ok_or_else(|| invalid("unknown issuer"))?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(format!("bad header: {e}")))?;
        if !verifier.algorithms.contains(&header.alg) {
            return Err(invalid("algorithm not accepted for this issuer"));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = verifier.algorithms.clone();
        validation.set_audience(&[&self.service]);
        validation.set_issuer(&[&verifier.issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, &verifier.key, &validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        Ok(Verified {
            claims: Arc::new(data.claims),
            ours: verifier.ours,
        })
    }
}

/// The base64 body of the first PEM block with `label`.
fn pem_body(pem: &[u8], label: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: String = text[start..stop].split_whitespace().collect();
    STANDARD.decode(b64).ok()
}

/// Reads the generated signing key, creating it (mode 0600) on first use.
fn load_or_generate(path: &Path) -> Result<Vec<u8>, TokenError> {
    match std::fs::read(path) {
        Ok(b) => return Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(TokenError::Read(path.to_owned(), e)),
    }
    let pem =
        crate::keys::generate_token_key_pem().map_err(|e| TokenError::Key(path.to_owned(), e))?;
    let write = |p: &Path| -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = p.with_extension(format!("tmp-{:08x}", rand::random::<u32>()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(pem.as_bytes())?;
        f.sync_all()?;
        // Another replica may have won the race: keep whichever key landed first.
        std::fs::hard_link(&tmp, p).or_else(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        std::fs::remove_file(&tmp)
    };
    write(path).map_err(|e| TokenError::Write(path.to_owned(), e))?;
    std::fs::read(path).map_err(|e| TokenError::Read(path.to_owned(), e))
}

/// RFC 3339 UTC time of a Unix timestamp (the token response's `issued_at`).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(dir: &Path) -> Tokens {
        Tokens::new(
            "berth".into(),
            "berth".into(),
            300,
            None,
            &dir.join("k.pem"),
            &[],
        )
        .unwrap()
    }

    #[test]
    fn issue_verify_and_reject_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        let access = vec![Access {
            kind: "repository".into(),
            name: "a/b".into(),
            actions: vec!["pull".into()],
        }];
        let (tok, _) = t.issue("alice", access, None).unwrap();
        let v = t.verify(&tok).unwrap();
        assert!(v.ours);
        assert_eq!(v.claims.sub, "alice");
        assert_eq!(v.claims.repository_actions("a/b"), Actions::PULL);
        assert_eq!(v.claims.repository_actions("a/c"), Actions::NONE);
        // Cached path gives the same answer.
        assert_eq!(t.verify(&tok).unwrap().claims.sub, "alice");
        // Tampered payload.
        let parts: Vec<&str> = tok.split('.').collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["access"][0]["actions"] = serde_json::json!(["pull", "push", "delete"]);
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            parts[2]
        );
        assert!(t.verify(&forged).is_err());
        // alg none.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert!(t.verify(&none).is_err());
        // Another key with the same issuer name.
        let other = tempfile::tempdir().unwrap();
        let (foreign, _) = tokens(other.path()).issue("alice", vec![], None).unwrap();
        assert!(t.verify(&foreign).is_err());
        // The generated key is reused on the next start.
        let again = tokens(dir.path());
        assert!(again.verify(&tok).is_ok());
        assert!(t.verify("garbage").is_err());
        assert!(t.verify("a.b.c").is_err());
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
