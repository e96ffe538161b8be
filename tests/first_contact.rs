//! A newcomer's mistakes, each run through the real binary as a person at a terminal would: the
//! answer is one line on stderr that names what is wrong (and where, for a config file), a
//! failing exit status, never a backtrace, and nothing created or changed on the way out.

use std::path::Path;
use std::process::{Command, Output};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn berth(args: &[&str], cwd: &Path) -> Output {
    Command::new(BERTH)
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

/// The run failed with exactly one line on stderr containing every one of `words`.
fn one_line(out: &Output, words: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "it succeeded: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line, not: {err}");
    for w in words {
        assert!(err.contains(w), "{w:?} missing from: {err}");
    }
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    err
}

#[test]
fn a_root_that_cannot_be_written_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a-file"), "x").unwrap();
    let out = berth(
        &["serve", "--addr", "127.0.0.1:0", "--root", "a-file/data"],
        dir.path(),
    );
    one_line(
        &out,
        &["cannot open storage at a-file/data", "Not a directory"],
    );

    // A read-only filesystem, in a mount namespace of its own (the tests run as root, whom
    // file modes do not stop).
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let script = format!(
        "mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && exec {BERTH} serve --addr 127.0.0.1:0 --root {ro}/data",
        ro = ro.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()
        .unwrap();
    one_line(&out, &["cannot open storage at", "Read-only file system"]);
    assert!(!ro.join("data").exists());
}

#[test]
fn a_port_in_use_is_one_line_that_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let out = berth(&["serve", "--addr", &addr, "--root", "data"], dir.path());
    one_line(
        &out,
        &[
            &format!("cannot listen on {addr}"),
            "choose another with --addr",
        ],
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created before the port is checked"
    );
    let out = berth(
        &["serve", "--addr", "nonsense", "--root", "data"],
        dir.path(),
    );
    one_line(&out, &["cannot listen on nonsense", "expected host:port"]);
}

#[test]
fn yaml_errors_give_the_line_and_column_and_unknown_keys_the_nearest_valid_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.yaml"),
        "storage:\n  filesystem:\n    root: [unclosed\n",
    )
    .unwrap();
    let out = berth(&["serve", "--config", "broken.yaml"], dir.path());
    one_line(&out, &["invalid config file broken.yaml", "line 3 column"]);

    std::fs::write(
        dir.path().join("typo.yaml"),
        "storage:\n  filesystem:\n    root: data\nauht:\n  htpasswd: /x\n",
    )
    .unwrap();
    let out = berth(&["serve", "--config", "typo.yaml"], dir.path());
    one_line(
        &out,
        &[
            "unknown field `auht`",
            "line 4 column 1",
            "did you mean `auth`?",
        ],
    );
    // gc reads the same file the same way.
    let out = berth(&["gc", "--config", "typo.yaml"], dir.path());
    one_line(&out, &["did you mean `auth`?"]);
    assert!(!dir.path().join("data").exists());
}

#[test]
fn a_missing_tls_file_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = berth(
        &[
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--root",
            "data",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ],
        dir.path(),
    );
    one_line(&out, &["TLS", "/nonexistent/cert.pem", "No such file"]);
    assert!(!dir.path().join("data").exists());
}

#[test]
fn gc_on_a_missing_root_refuses_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["gc", "--root", "no-such-root"][..],
        &["gc", "--root", "no-such-root", "--dry-run"],
        &["token", "list", "--root", "no-such-root"],
        &["purge", "--root", "no-such-root", "--dry-run"],
    ] {
        let out = berth(args, dir.path());
        one_line(&out, &["no-such-root", "does not exist"]);
        assert!(!dir.path().join("no-such-root").exists(), "{args:?}");
    }
}

#[test]
fn every_command_says_what_it_does_and_shows_an_example() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        &[][..],
        &["serve"],
        &["gc"],
        &["purge"],
        &["token"],
        &["token", "create"],
        &["operator"],
        &["mirror", "sync"],
        &["mirror", "export"],
        &["mirror", "import"],
        &["crd"],
    ] {
        let out = berth(&[cmd, &["--help"]].concat(), dir.path());
        assert!(out.status.success(), "{cmd:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        let about = help.lines().next().unwrap_or_default();
        assert!(
            about.len() > 10 && !about.starts_with("Usage"),
            "{cmd:?}: the first line says what it does: {help}"
        );
        assert!(
            help.contains("Example") && help.contains("berth "),
            "{cmd:?} --help shows an example: {help}"
        );
    }
}
