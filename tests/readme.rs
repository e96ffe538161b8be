//! The README's quick start, run as written: every `docker` and `podman` line of its "Push and
//! pull" section, against a running `berth serve` (its port in place of 5000), so the README
//! cannot drift from what works offline.

mod common;

use std::process::Command;

use common::*;

const README: &str = include_str!("../README.md");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The indented command lines of `section` that start with `program`.
fn commands(section: &str, program: &str) -> Vec<String> {
    let start = README
        .find(&format!("\n## {section}\n"))
        .unwrap_or_else(|| panic!("README has no section {section:?}"));
    let body = &README[start + 1..];
    let end = body[3..].find("\n## ").map_or(body.len(), |i| i + 3);
    body[..end]
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .filter(|l| l.starts_with(&format!("{program} ")))
        .map(str::to_owned)
        .collect()
}

async fn run_section(program: &str) {
    common::needs::need(program);
    let s = Server::start();
    let port = s.addr.rsplit(':').next().unwrap();
    let lines = commands("Push and pull", program);
    assert!(
        lines.len() >= 4,
        "the README shows {program} build, push, rmi, pull: {lines:?}"
    );
    for line in &lines {
        let line = line.replace("localhost:5000", &format!("localhost:{port}"));
        let out = Command::new("sh")
            .args(["-c", &line])
            .current_dir(ROOT)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README line `{line}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // What was pushed is the example's file, and the pull brought the image back.
    let image = format!("localhost:{port}/hello:1");
    let tags = get_json(&s.url("/v2/hello/tags/list")).await;
    assert_eq!(tags["tags"], serde_json::json!(["1"]));
    let present = Command::new(program)
        .args(["image", "inspect", &image])
        .output()
        .unwrap();
    assert!(
        present.status.success(),
        "{image} is in {program}'s store after the pull"
    );
    let _ = Command::new(program).args(["rmi", &image]).output();
}

#[tokio::test]
async fn the_readme_quick_start_works_with_docker() {
    run_section("docker").await;
}

#[tokio::test]
async fn the_readme_quick_start_works_with_podman() {
    run_section("podman").await;
}
