//! Server-side apply that writes only when something would change. Each desired object is
//! compared with what the API server holds (every field we set must already have our value);
//! only a difference leads to an apply, so a steady-state reconcile makes no write.

use std::fmt::Debug;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Error, FIELD_MANAGER};

/// What [`ensure`] did.
pub struct Ensured<K> {
    /// The object as the API server now holds it.
    pub object: K,
    /// True when an apply was sent.
    pub changed: bool,
}

/// True when every field set in `want` has the same value in `have`. Lists must have the
/// same length and match element by element; fields the server defaulted are ignored.
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| contains(hv, wv)) || wv.is_null()),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| contains(hv, wv))
        }
        (h, w) => h == w,
    }
}

/// Makes the object named like `desired` match it: GET, compare, apply when different.
pub async fn ensure<K>(api: &Api<K>, desired: &K) -> Result<Ensured<K>, Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    let name = desired.name_any();
    let want = serde_json::to_value(desired)?;
    if let Some(existing) = api.get_opt(&name).await?
        && contains(&serde_json::to_value(&existing)?, &want)
    {
        return Ok(Ensured {
            object: existing,
            changed: false,
        });
    }
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let object = api.patch(&name, &pp, &Patch::Apply(desired)).await?;
    Ok(Ensured {
        object,
        changed: true,
    })
}

/// Deletes `name` if it exists and `owner_uid` controls it (a stale optional child).
/// Returns true when a delete was sent.
pub async fn remove_owned<K>(api: &Api<K>, name: &str, owner_uid: &str) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let Some(existing) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let owned = existing
        .owner_references()
        .iter()
        .any(|o| o.uid == owner_uid && o.controller == Some(true));
    if !owned {
        return Ok(false);
    }
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_defaults_do_not_count_as_drift() {
        let want = json!({"spec": {"ports": [{"port": 5000}], "type": "ClusterIP"}});
        let have = json!({"spec": {"ports": [{"port": 5000, "protocol": "TCP"}], "type": "ClusterIP", "clusterIP": "10.0.0.1"}});
        assert!(contains(&have, &want));
        let changed = json!({"spec": {"ports": [{"port": 5001}], "type": "ClusterIP"}});
        assert!(!contains(&have, &changed));
        let longer = json!({"spec": {"ports": [{"port": 5000}, {"port": 1}], "type": "ClusterIP"}});
        assert!(!contains(&have, &longer));
        assert!(!contains(&json!({}), &json!({"a": 1})));
    }
}
