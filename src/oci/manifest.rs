//! Manifests and indexes: just enough structure to validate a pushed manifest, find the blobs
//! and child manifests it references (for existence checks and gc's mark phase), and describe it
//! as a referrer of its `subject`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Manifests larger than this are refused (413), as the spec allows and clients expect.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest: a config and layers (OCI or Docker schema 2).
    Image,
    /// An index of manifests (OCI image index or Docker manifest list).
    Index,
}

pub fn kind_of_media_type(media_type: &str) -> Option<ManifestKind> {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Some(ManifestKind::Image),
        OCI_INDEX | DOCKER_MANIFEST_LIST => Some(ManifestKind::Index),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    NotJson(String),
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("Content-Type {header:?} does not match the manifest's mediaType {field:?}")]
    MediaTypeMismatch { header: String, field: String },
    #[error("schemaVersion must be 2")]
    SchemaVersion,
    #[error("manifest is missing the required field {0:?}")]
    MissingField(&'static str),
    #[error("invalid descriptor in {field}: {reason}")]
    BadDescriptor { field: &'static str, reason: String },
}

/// A content descriptor as it appears in manifests, indexes and the referrers response.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

impl Descriptor {
    /// A layer with `urls` is non-distributable: its bytes may live elsewhere.
    pub fn is_foreign(&self) -> bool {
        self.urls.as_ref().is_some_and(|u| !u.is_empty())
    }
}

/// The loosely typed form a manifest is first read into, so that each problem gets its own
/// clear message instead of a serde error about the first field it tripped on.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<serde_json::Value>,
    media_type: Option<serde_json::Value>,
    artifact_type: Option<serde_json::Value>,
    config: Option<serde_json::Value>,
    layers: Option<serde_json::Value>,
    manifests: Option<serde_json::Value>,
    subject: Option<serde_json::Value>,
    annotations: Option<serde_json::Value>,
}

/// A parsed, validated manifest or index.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub kind: ManifestKind,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub annotations: Option<BTreeMap<String, String>>,
}

fn descriptor(field: &'static str, v: serde_json::Value) -> Result<Descriptor, ManifestError> {
    let d: Descriptor = serde_json::from_value(v).map_err(|e| ManifestError::BadDescriptor {
        field,
        reason: e.to_string(),
    })?;
    if d.media_type.is_empty() {
        return Err(ManifestError::BadDescriptor {
            field,
            reason: "mediaType is empty".into(),
        });
    }
    Ok(d)
}

fn descriptors(
    field: &'static str,
    v: Option<serde_json::Value>,
) -> Result<Option<Vec<Descriptor>>, ManifestError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Array(items)) => items
            .into_iter()
            .map(|i| descriptor(field, i))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(ManifestError::BadDescriptor {
            field,
            reason: "expected an array".into(),
        }),
    }
}

fn opt_string(
    field: &'static str,
    v: Option<serde_json::Value>,
) -> Result<Option<String>, ManifestError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ManifestError::BadDescriptor {
            field,
            reason: "expected a string".into(),
        }),
    }
}

impl Manifest {
    /// Parses and validates `bytes`, pushed with the Content-Type `content_type` (if any).
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        let raw: Raw =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::NotJson(e.to_string()))?;
        let field_type = opt_string("mediaType", raw.media_type)?.filter(|t| !t.is_empty());
        // Content-Type may carry parameters (`; charset=utf-8`); compare the bare type.
        let header_type = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim().to_owned())
            .filter(|c| kind_of_media_type(c).is_some());
        let media_type = match (&header_type, &field_type) {
            (Some(h), Some(f)) if h != f => {
                return Err(ManifestError::MediaTypeMismatch {
                    header: h.clone(),
                    field: f.clone(),
                });
            }
            (Some(h), _) => h.clone(),
            (None, Some(f)) => f.clone(),
            // Neither says: an OCI manifest may omit mediaType; infer from the shape.
            (None, None) if raw.manifests.is_some() => OCI_INDEX.to_owned(),
            (None, None) if raw.config.is_some() => OCI_MANIFEST.to_owned(),
            (None, None) => return Err(ManifestError::MissingField("mediaType")),
        };
        let kind = kind_of_media_type(&media_type)
            .ok_or_else(|| ManifestError::UnsupportedMediaType(media_type.clone()))?;
        match raw.schema_version {
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(2) => {}
            None => return Err(ManifestError::MissingField("schemaVersion")),
            Some(_) => return Err(ManifestError::SchemaVersion),
        }
        let artifact_type = opt_string("artifactType", raw.artifact_type)?;
        let subject = match raw.subject {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(descriptor("subject", v)?),
        };
        let annotations = match raw.annotations {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                Some(
                    serde_json::from_value(v).map_err(|e| ManifestError::BadDescriptor {
                        field: "annotations",
                        reason: e.to_string(),
                    })?,
                )
            }
        };
        let mut m = Manifest {
            kind,
            media_type,
            artifact_type,
            config: None,
            layers: Vec::new(),
            manifests: Vec::new(),
            subject,
            annotations,
        };
        match kind {
            ManifestKind::Image => {
                let config = raw.config.ok_or(ManifestError::MissingField("config"))?;
                m.config = Some(descriptor("config", config)?);
                m.layers = descriptors("layers", raw.layers)?
                    .ok_or(ManifestError::MissingField("layers"))?;
            }
            ManifestKind::Index => {
                m.manifests = descriptors("manifests", raw.manifests)?
                    .ok_or(ManifestError::MissingField("manifests"))?;
            }
        }
        Ok(m)
    }

    /// Blobs this manifest needs present in the repository (foreign layers excluded).
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(self.layers.iter().filter(|l| !l.is_foreign()))
    }

    /// The `artifactType` a referrers response reports for this manifest.
    pub fn referrer_artifact_type(&self) -> Option<String> {
        self.artifact_type
            .clone()
            .or_else(|| self.config.as_ref().map(|c| c.media_type.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D}","size":0}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{D}","size":0}},
                      {{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar","digest":"{D}","size":5,"urls":["https://example.com/l"]}}]
            {extra}}}"#
        )
    }

    #[test]
    fn parses_image_manifest_and_skips_foreign_layers() {
        let m = Manifest::parse(image("").as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.required_blobs().count(), 2);
        assert_eq!(
            m.referrer_artifact_type().as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn reads_subject_and_artifact_type() {
        let extra = format!(
            r#","artifactType":"application/x-sig","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":1}}"#
        );
        let m = Manifest::parse(image(&extra).as_bytes(), None).unwrap();
        assert_eq!(m.subject.as_ref().unwrap().digest.to_string(), D);
        assert_eq!(
            m.referrer_artifact_type().as_deref(),
            Some("application/x-sig")
        );
    }

    #[test]
    fn rejects_broken_manifests() {
        assert!(matches!(
            Manifest::parse(b"not json", None),
            Err(ManifestError::NotJson(_))
        ));
        assert!(matches!(
            Manifest::parse(image("").as_bytes(), Some(OCI_INDEX)),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert!(
            Manifest::parse(
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
                None
            )
            .is_err()
        );
        assert!(Manifest::parse(br#"{"schemaVersion":1,"manifests":[]}"#, None).is_err());
        let bad_digest = image("").replace(D, "sha256:nothex");
        assert!(matches!(
            Manifest::parse(bad_digest.as_bytes(), None),
            Err(ManifestError::BadDescriptor { .. })
        ));
        let negative = image("").replace("\"size\":0", "\"size\":-1");
        assert!(Manifest::parse(negative.as_bytes(), None).is_err());
    }

    #[test]
    fn infers_index_without_media_type() {
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":3,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        let m = Manifest::parse(idx.as_bytes(), None).unwrap();
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.media_type, OCI_INDEX);
        assert_eq!(m.manifests.len(), 1);
    }
}
