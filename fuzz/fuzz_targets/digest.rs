//! Digests: what parses is a registered algorithm with lowercase hex of exactly its length,
//! prints back to the input, and rebuilds from its parts; serde agrees with FromStr.
#![no_main]

use berth::oci::{Algorithm, Digest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = s.parse::<Digest>();
    let via_serde = serde_json::from_value::<Digest>(serde_json::Value::String(s.to_owned()));
    assert_eq!(parsed.is_ok(), via_serde.is_ok(), "{s:?}");
    let Ok(d) = parsed else {
        return;
    };
    assert_eq!(Some(&d), via_serde.as_ref().ok());
    assert_eq!(d.to_string(), s);
    let want_len = match d.algorithm() {
        Algorithm::Sha256 => 64,
        Algorithm::Sha512 => 128,
    };
    assert_eq!(d.hex().len(), want_len, "{s:?}");
    assert!(
        d.hex()
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{s:?}"
    );
    assert_eq!(Algorithm::parse(d.algorithm().as_str()), Ok(d.algorithm()));
    assert_eq!(Digest::from_parts(d.algorithm(), d.hex()), Ok(d.clone()));
    assert_eq!(s.split_once(':'), Some((d.algorithm().as_str(), d.hex())));
    assert_eq!(
        serde_json::to_value(&d).unwrap(),
        serde_json::Value::String(s.to_owned())
    );
});
