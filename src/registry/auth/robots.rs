//! Robot accounts for CI: a name, scopes, an optional expiry and the SHA-256 of a random
//! secret, stored in the registry's store (never the secret itself). Every request by a robot
//! reads its record from the store, so revocation and expiry take effect at once on every
//! replica that shares the store. Robots sign in as `robot$<name>` with the secret as password.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::rules::{RuleError, ScopeGrant};
use super::token::now_secs;
use crate::store::{MetaDir, MetaKey, Store, StoreError};

/// The user-name prefix that marks a robot account.
pub const ROBOT_PREFIX: &str = "robot$";

#[derive(Debug, thiserror::Error)]
pub enum RobotError {
    #[error(
        "invalid robot name {0:?}: use 1-64 of a-z, 0-9, '-', '_', starting with a letter or digit"
    )]
    Name(String),
    #[error(transparent)]
    Scope(#[from] RuleError),
    #[error("a robot needs at least one scope")]
    NoScope,
    #[error("invalid duration {0:?}: use a number with s, m, h or d (30d, 12h)")]
    Duration(String),
    #[error("robot {0:?} already exists")]
    Exists(String),
    #[error("no robot named {0:?}")]
    Unknown(String),
    #[error("robot record {0:?} is corrupt: {1}")]
    Corrupt(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RobotRecord {
    pub name: String,
    pub scopes: Vec<String>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; `None` for no expiry.
    #[serde(default)]
    pub expires: Option<u64>,
    /// Hex SHA-256 of the secret. The secret is 256 random bits, so a fast hash suffices.
    pub secret_sha256: String,
    /// Random id of this record, written into the tokens issued to the robot: a robot revoked
    /// and created again under the same name is a new record, and the old tokens die with the
    /// old one. (Records written before ids existed have none; the first re-creation gives one.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// What `list` shows: everything but the hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RobotInfo {
    pub name: String,
    pub scopes: Vec<String>,
    pub created: u64,
    pub expires: Option<u64>,
    pub expired: bool,
}

/// A robot that has signed in: its validated grants.
#[derive(Clone, Debug)]
pub struct Robot {
    pub name: String,
    /// The record's id, for the tokens issued to it.
    pub id: Option<String>,
    pub grants: Vec<ScopeGrant>,
}

pub fn validate_name(name: &str) -> Result<(), RobotError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(RobotError::Name(name.to_owned()))
    }
}

/// `30d`, `12h`, `45m`, `90s` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<u64, RobotError> {
    let bad = || RobotError::Duration(s.to_owned());
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last() {
        Some(b'd') => (&s[..s.len() - 1], 86_400),
        Some(b'h') => (&s[..s.len() - 1], 3_600),
        Some(b'm') => (&s[..s.len() - 1], 60),
        Some(b's') => (&s[..s.len() - 1], 1),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(bad)
}

fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time comparison of two equal-length hex strings.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Creates a robot; returns its record and the secret, which is not stored anywhere.
pub async fn create(
    store: &dyn Store,
    name: &str,
    scopes: &[String],
    expires_in: Option<u64>,
) -> Result<(RobotRecord, String), RobotError> {
    validate_name(name)?;
    if scopes.is_empty() {
        return Err(RobotError::NoScope);
    }
    for s in scopes {
        ScopeGrant::parse(s)?;
    }
    let key = MetaKey::robot(name);
    if store.meta_exists(&key).await? {
        return Err(RobotError::Exists(name.to_owned()));
    }
    let secret = format!(
        "berth_{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let now = now_secs();
    let record = RobotRecord {
        name: name.to_owned(),
        scopes: scopes.to_vec(),
        created: now,
        expires: expires_in.map(|s| now + s),
        secret_sha256: sha256_hex(&secret),
        id: Some(format!("{:032x}", rand::random::<u128>())),
    };
    let json = serde_json::to_vec_pretty(&record)
        .map_err(|e| RobotError::Corrupt(name.to_owned(), e.to_string()))?;
    store.meta_put(&key, &json).await?;
    Ok((record, secret))
}

pub async fn revoke(store: &dyn Store, name: &str) -> Result<(), RobotError> {
    validate_name(name)?;
    if store.meta_delete(&MetaKey::robot(name)).await? {
        Ok(())
    } else {
        Err(RobotError::Unknown(name.to_owned()))
    }
}

pub async fn list(store: &dyn Store) -> Result<Vec<RobotInfo>, RobotError> {
    let now = now_secs();
    let mut out = Vec::new();
    for file in store.meta_list(&MetaDir::robots()).await? {
        let Some(name) = file.strip_suffix(".json") else {
            continue;
        };
        if validate_name(name).is_err() {
            continue;
        }
        if let Some(r) = load(store, name).await? {
            out.push(RobotInfo {
                expired: r.expires.is_some_and(|e| e <= now),
                name: r.name,
                scopes: r.scopes,
                created: r.created,
                expires: r.expires,
            });
        }
    }
    Ok(out)
}

async fn load(store: &dyn Store, name: &str) -> Result<Option<RobotRecord>, RobotError> {
    let Some(bytes) = store.meta_get(&MetaKey::robot(name)).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| RobotError::Corrupt(name.to_owned(), e.to_string()))
}

/// The robot `name` as it stands in the store now: `None` when it does not exist, has
/// expired, or (when `secret` is given) the secret does not match.
pub async fn current(
    store: &dyn Store,
    name: &str,
    secret: Option<&str>,
) -> Result<Option<Robot>, RobotError> {
    if validate_name(name).is_err() {
        return Ok(None);
    }
    let Some(r) = load(store, name).await? else {
        return Ok(None);
    };
    if r.expires.is_some_and(|e| e <= now_secs()) {
        return Ok(None);
    }
    if let Some(s) = secret
        && !same(&sha256_hex(s), &r.secret_sha256)
    {
        return Ok(None);
    }
    let grants = r
        .scopes
        .iter()
        .map(|s| ScopeGrant::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Robot {
        name: r.name,
        id: r.id,
        grants,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_durations() {
        for ok in ["ci", "ci-1", "a_b", "0x"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "CI", "-ci", "../x", "a/b", "a.json", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_duration("12h").unwrap(), 12 * 3_600);
        assert_eq!(parse_duration("90").unwrap(), 90);
        for bad in ["", "d", "-1d", "0s", "1w", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn create_check_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::fs::FsStore::open(dir.path()).unwrap();
        let scopes = vec!["repository:team-a/*:pull,push".to_owned()];
        let (rec, secret) = create(&store, "ci", &scopes, Some(3600)).await.unwrap();
        assert_ne!(rec.secret_sha256, secret);
        let on_disk = std::fs::read_to_string(dir.path().join("auth/robots/ci.json")).unwrap();
        assert!(!on_disk.contains(&secret), "the secret is never stored");
        assert!(matches!(
            create(&store, "ci", &scopes, None).await,
            Err(RobotError::Exists(_))
        ));
        assert!(
            create(&store, "bad", &["repository:../x:pull".into()], None)
                .await
                .is_err()
        );
        let r = current(&store, "ci", Some(&secret)).await.unwrap().unwrap();
        assert_eq!(r.grants.len(), 1);
        assert!(
            current(&store, "ci", Some("berth_wrong"))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            current(&store, "nobody", Some(&secret))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(list(&store).await.unwrap().len(), 1);
        revoke(&store, "ci").await.unwrap();
        assert!(
            current(&store, "ci", Some(&secret))
                .await
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            revoke(&store, "ci").await,
            Err(RobotError::Unknown(_))
        ));
    }
}
