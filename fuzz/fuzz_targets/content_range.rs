//! `Content-Range` of an upload PATCH: what parses is a non-empty inclusive range whose
//! canonical forms parse back to the same pair.
#![no_main]

use berth::registry::uploads::parse_content_range;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((start, end)) = parse_content_range(s) {
        assert!(start <= end, "{s:?}: {start}-{end}");
        for form in [
            format!("{start}-{end}"),
            format!("bytes {start}-{end}/*"),
            format!("bytes {start}-{end}/{}", end.saturating_add(1)),
        ] {
            assert_eq!(
                parse_content_range(&form).ok(),
                Some((start, end)),
                "{form:?}"
            );
        }
    }
});
