//! Bearer tokens: whatever a client sends, verification never panics and never accepts a
//! token whose signed part (header and payload) differs from one Berth issued.
//! Input: a mode byte, then either a whole token, a payload spliced between a genuine header
//! and signature, or byte edits applied to a genuine token.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use berth::registry::auth::token::{Access, Tokens};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    tokens: Tokens,
    genuine: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("berth-fuzz-token-{}", std::process::id()));
        let tokens = Tokens::new(
            "berth".into(),
            "berth".into(),
            3600,
            None,
            &dir.join("token.pem"),
            &[],
        )
        .unwrap();
        let access = vec![Access {
            kind: "repository".into(),
            name: "a/b".into(),
            actions: vec!["pull".into()],
        }];
        let (genuine, _) = tokens.issue("alice", access).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        Fixture { tokens, genuine }
    })
}

fn signed_part(t: &str) -> Option<&str> {
    t.rsplit_once('.').map(|(m, _)| m)
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let candidate = match mode % 3 {
        0 => match std::str::from_utf8(rest) {
            Ok(s) => s.to_owned(),
            Err(_) => return,
        },
        1 => {
            let parts: Vec<&str> = f.genuine.split('.').collect();
            format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(rest), parts[2])
        }
        _ => {
            let mut bytes = f.genuine.clone().into_bytes();
            for pair in rest.chunks(3) {
                if let [hi, lo, b] = pair {
                    let at = usize::from(u16::from_le_bytes([*lo, *hi])) % bytes.len();
                    bytes[at] = *b;
                }
            }
            match String::from_utf8(bytes) {
                Ok(s) => s,
                Err(_) => return,
            }
        }
    };
    if let Ok(v) = f.tokens.verify_uncached(&candidate) {
        assert_eq!(
            signed_part(&candidate),
            signed_part(&f.genuine),
            "accepted a token Berth did not sign: {candidate:?}"
        );
        assert!(v.ours);
        assert_eq!(v.claims.sub, "alice");
    }
});
