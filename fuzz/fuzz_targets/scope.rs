//! Token scopes a client asks for (`repository:<name>:<actions>`): parsing never panics, a
//! repository scope names a valid repository, and the scope printed back in canonical form
//! parses to the same thing.
#![no_main]

use berth::oci::RepoName;
use berth::registry::auth::rules::{Actions, RequestedScope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match RequestedScope::parse(s) {
        Ok(RequestedScope::Repository(name, actions)) => {
            assert_eq!(name.as_str().parse::<RepoName>().as_ref(), Ok(&name));
            assert!(Actions::ALL.contains(actions));
            let canonical = format!("repository:{name}:{actions}");
            assert_eq!(
                RequestedScope::parse(&canonical),
                Ok(RequestedScope::Repository(name, actions)),
                "{s:?} -> {canonical:?}"
            );
        }
        Ok(RequestedScope::Catalog) => assert!(s.starts_with("registry:catalog:")),
        Err(_) => {}
    }
});
