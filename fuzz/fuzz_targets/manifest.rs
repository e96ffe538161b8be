//! Manifests and indexes: any bytes (and any Content-Type) either fail with an error or give
//! a manifest whose shape matches its kind and whose descriptors survive a JSON round trip.
//! Input: a Content-Type selector byte, then the body.
#![no_main]

use berth::oci::manifest::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST, kind_of_media_type,
};
use berth::oci::{Descriptor, Manifest, ManifestKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let content_type = match sel % 8 {
        0 => None,
        1 => Some(OCI_MANIFEST),
        2 => Some(OCI_INDEX),
        3 => Some(DOCKER_MANIFEST),
        4 => Some(DOCKER_MANIFEST_LIST),
        5 => Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
        6 => Some("application/json"),
        _ => Some("application/octet-stream"),
    };
    let Ok(m) = Manifest::parse(body, content_type) else {
        return;
    };
    assert_eq!(kind_of_media_type(&m.media_type), Some(m.kind));
    match m.kind {
        ManifestKind::Image => {
            assert!(m.config.is_some());
            assert!(m.manifests.is_empty());
        }
        ManifestKind::Index => {
            assert!(m.config.is_none());
            assert!(m.layers.is_empty());
        }
    }
    let all: Vec<&Descriptor> = m
        .config
        .iter()
        .chain(&m.layers)
        .chain(&m.manifests)
        .chain(&m.subject)
        .collect();
    for d in all {
        assert!(!d.media_type.is_empty());
        let json = serde_json::to_vec(d).unwrap();
        let back: Descriptor = serde_json::from_slice(&json).unwrap();
        assert_eq!(&back, d);
        assert_eq!(d.digest.to_string().parse().ok(), Some(d.digest.clone()));
    }
    assert!(m.required_blobs().all(|d| !d.is_foreign()));
    // The same bytes parse the same way twice (no hidden state).
    let again = Manifest::parse(body, content_type).unwrap();
    assert_eq!(again.media_type, m.media_type);
});
