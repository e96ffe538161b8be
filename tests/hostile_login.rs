//! Hostile cases against login throttling (issue 12, finding 4), against a real
//! `berth serve`: parallel guesses cannot overrun the limit, one client's failures do not
//! lock out the others who share its address, and `X-Forwarded-For` is believed only from
//! `auth.trustedProxies`.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const MAX: usize = 10;

/// Alice's entry at bcrypt cost 10, so each check takes long enough for guesses to overlap.
fn config(dir: &Path, extra: &str) -> PathBuf {
    let htpasswd = dir.join("htpasswd");
    let text = format!(
        "alice:{}\nbob:{}\n",
        bcrypt::hash("alice-pw", 10).unwrap(),
        bcrypt::hash("bob-pw", 4).unwrap()
    );
    std::fs::write(&htpasswd, text).unwrap();
    let cfg = dir.join("berth.yaml");
    std::fs::write(
        &cfg,
        format!(
            "auth:\n  htpasswd: {}\n  maxFailedLogins: {MAX}\n  failedLoginWindowSeconds: 600\n{extra}",
            htpasswd.display()
        ),
    )
    .unwrap();
    cfg
}

async fn status(c: &reqwest::Client, s: &Server, auth: &str, xff: Option<&str>) -> u16 {
    let mut rb = c.get(s.url("/v2/")).header("authorization", auth);
    if let Some(x) = xff {
        rb = rb.header("x-forwarded-for", x);
    }
    rb.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_guesses_get_at_most_the_limit_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let s = std::sync::Arc::new(Server::start_with(&["--config", cfg.to_str().unwrap()]));
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (c, s) = (c.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            status(&c, &s, &basic("alice", &format!("guess-{i}")), None).await
        }));
    }
    let mut checked = 0;
    for t in tasks {
        match t.await.unwrap() {
            401 => checked += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    println!("100 parallel guesses, limit {MAX}: {checked} passwords checked");
    assert!(
        checked <= MAX,
        "{checked} guesses were checked against a limit of {MAX}"
    );
}

#[tokio::test]
async fn one_clients_failures_do_not_lock_out_others_on_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let c = client();
    for i in 0..MAX + 5 {
        status(&c, &s, &basic("alice", &format!("bad-{i}")), None).await;
    }
    assert_eq!(
        status(&c, &s, &basic("alice", "bad-again"), None).await,
        429,
        "the guesser is throttled"
    );
    // Bob, behind the same address (an Ingress), still signs in.
    assert_eq!(status(&c, &s, &basic("bob", "bob-pw"), None).await, 200);
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "  trustedProxies: [127.0.0.0/8]\n");
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let c = client();
    for i in 0..MAX {
        status(
            &c,
            &s,
            &basic("alice", &format!("bad-{i}")),
            Some("203.0.113.9"),
        )
        .await;
    }
    assert_eq!(
        status(&c, &s, &basic("alice", "x"), Some("203.0.113.9")).await,
        429
    );
    // The right password from another real client, through the same proxy.
    assert_eq!(
        status(&c, &s, &basic("alice", "alice-pw"), Some("198.51.100.4")).await,
        200
    );
    // A client cannot escape its count by writing its own X-Forwarded-For on the left.
    assert_eq!(
        status(
            &c,
            &s,
            &basic("alice", "x"),
            Some("198.51.100.77, 203.0.113.9")
        )
        .await,
        429
    );
    let audit = audit_lines(&s);
    assert!(
        audit.iter().any(|l| l["fields"]["client"] == "203.0.113.9"),
        "failed logins are logged with the forwarded client address"
    );
}
