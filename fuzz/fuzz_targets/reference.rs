//! Manifest references: a tag agrees with the spec's grammar, a reference is a tag exactly
//! when it has no ':', and whatever parses prints back to the same string.
#![no_main]

use std::sync::OnceLock;

use berth::oci::{Reference, Tag};
use libfuzzer_sys::fuzz_target;

fn tag_re() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let tag = s.parse::<Tag>();
    assert_eq!(tag.is_ok(), tag_re().is_match(s), "{s:?}: {tag:?}");
    if let Ok(t) = &tag {
        assert_eq!(t.as_str(), s);
        assert!(!t.as_str().contains(['/', ':']) && t.as_str() != "..");
    }
    match s.parse::<Reference>() {
        Ok(r) => {
            assert_eq!(r.to_string(), s);
            match &r {
                Reference::Tag(t) => assert_eq!(Some(t), tag.as_ref().ok()),
                Reference::Digest(d) => {
                    assert!(s.contains(':'));
                    assert_eq!(Ok(d.clone()), s.parse());
                }
            }
        }
        Err(_) => assert!(tag.is_err() || s.contains(':')),
    }
});
