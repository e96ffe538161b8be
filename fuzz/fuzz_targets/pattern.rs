//! Repository patterns: parsing never panics, a parsed pattern prints back to its text, and
//! matching agrees with a reference matcher (the pattern translated into a linear-time
//! regular expression). Input: pattern, a 0 byte, repository name.
//! Matching must also finish quickly: run with `-timeout=` to catch backtracking.
#![no_main]

use berth::oci::pattern::Pattern;
use libfuzzer_sys::fuzz_target;

/// `*` is `[^/]*` inside a segment and `**` any number of whole segments. Matched against
/// `"/" + repo`, each segment contributes its own leading `/`.
fn reference(pattern: &str) -> regex::bytes::Regex {
    let mut re = String::from("(?s-u)^");
    for seg in pattern.split('/') {
        if seg == "**" {
            re.push_str("(?:/[^/]*)*");
        } else {
            re.push('/');
            for (i, lit) in seg.split('*').enumerate() {
                if i > 0 {
                    re.push_str("[^/]*");
                }
                re.push_str(&regex::escape(lit));
            }
        }
    }
    re.push('$');
    regex::bytes::Regex::new(&re).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let mut split = data.splitn(2, |&b| b == 0);
    let (Some(p), Some(repo)) = (split.next(), split.next()) else {
        return;
    };
    let (Ok(p), Ok(repo)) = (std::str::from_utf8(p), std::str::from_utf8(repo)) else {
        return;
    };
    let Ok(pattern) = Pattern::parse(p) else {
        return;
    };
    assert_eq!(pattern.as_str(), p);
    assert_eq!(Pattern::parse(pattern.as_str()).as_ref(), Ok(&pattern));
    let got = pattern.matches(repo);
    let want = reference(p).is_match(format!("/{repo}").as_bytes());
    assert_eq!(got, want, "pattern {p:?} on {repo:?}");
});
