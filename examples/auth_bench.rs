//! Per-request cost of credential checks, in process: token verification (first sight and
//! cached), and a cached Basic check against a full bcrypt verification.
//!
//!     cargo run --release --example auth_bench

use std::time::{Duration, Instant};

use berth::registry::auth::htpasswd::Htpasswd;
use berth::registry::auth::token::{Access, Tokens};

fn per_op(n: u32, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("berth-auth-bench-{}", std::process::id()));
    let tokens = Tokens::new(
        "berth".into(),
        "berth".into(),
        300,
        None,
        &dir.join("token-key.pem"),
        &[],
    )
    .expect("token key");
    let access = vec![Access {
        kind: "repository".into(),
        name: "bench/repo".into(),
        actions: vec!["pull".into(), "push".into()],
    }];
    let (token, _) = tokens.issue("alice", access.clone(), None).expect("issue");
    let issue = per_op(2_000, || {
        tokens.issue("alice", access.clone(), None).expect("issue");
    });
    let uncached = per_op(2_000, || {
        tokens.verify_uncached(&token).expect("verify");
    });
    let cached = per_op(200_000, || {
        tokens.verify(&token).expect("verify");
    });
    println!("token issue (ES256 sign):          {issue:8.2} us");
    println!("token verify, first sight (ES256): {uncached:8.2} us");
    println!("token verify, cached:              {cached:8.2} us");

    let hash = bcrypt::hash("bench-password", bcrypt::DEFAULT_COST).expect("bcrypt");
    let h = Htpasswd::parse("bench", &format!("alice:{hash}\n"), Duration::from_secs(30))
        .expect("htpasswd");
    let slow = per_op(5, || {
        h.verify_slow("alice", "bench-password");
    });
    let fast = per_op(200_000, || {
        assert!(h.cached("alice", "bench-password"));
    });
    println!(
        "basic, bcrypt cost {}:              {slow:8.0} us",
        bcrypt::DEFAULT_COST
    );
    println!("basic, cached:                     {fast:8.2} us");
    let _ = std::fs::remove_dir_all(&dir);
}
