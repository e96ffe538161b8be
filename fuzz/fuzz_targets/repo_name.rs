//! Repository names: a name that parses re-serializes to the same string, agrees with the
//! distribution spec's regular expression, and every component is a safe path segment.
#![no_main]

use std::sync::OnceLock;

use berth::oci::RepoName;
use libfuzzer_sys::fuzz_target;

fn spec() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(
            r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$",
        )
        .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = s.parse::<RepoName>();
    let expected = !s.is_empty() && s.len() <= berth::oci::name::MAX_NAME_LEN && spec().is_match(s);
    assert_eq!(
        parsed.is_ok(),
        expected,
        "{s:?}: parser {parsed:?}, spec says {expected}"
    );
    if let Ok(name) = parsed {
        assert_eq!(name.as_str(), s);
        assert_eq!(name.to_string(), s);
        assert_eq!(name.to_string().parse::<RepoName>().unwrap(), name);
        for c in name.components() {
            assert!(
                !c.is_empty() && c != "." && c != "..",
                "{s:?}: component {c:?}"
            );
            assert!(!c.starts_with(['_', '.', '-']), "{s:?}: component {c:?}");
        }
    }
});
