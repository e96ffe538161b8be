//! The programs tests need from outside Cargo. A test that lacks one fails with one line that
//! names the command installing it; `tests/run-all.sh` (what `.ci/run` calls) installs them all.

use std::process::{Command, Stdio};

/// A program some tests run, how to ask it whether it works, and how to install it.
struct Program {
    name: &'static str,
    check: &'static [&'static str],
    install: &'static str,
}

const PROGRAMS: &[Program] = &[
    Program {
        name: "docker",
        // The CLI alone is not enough: the engine must answer too.
        check: &["info", "--format", "{{.ServerVersion}}"],
        install: "apt-get install -y docker.io && dockerd &",
    },
    Program {
        name: "skopeo",
        check: &["--version"],
        install: "apt-get install -y skopeo",
    },
    Program {
        name: "docker-registry",
        check: &["--version"],
        install: "apt-get install -y docker-registry",
    },
    Program {
        name: "kubectl",
        check: &["version", "--client"],
        install: "apt-get install -y kubernetes-client",
    },
    Program {
        name: "lua5.1",
        check: &["-v"],
        install: "apt-get install -y lua5.1",
    },
    Program {
        name: "podman",
        check: &["--version"],
        install: "apt-get install -y podman",
    },
    Program {
        name: "buildah",
        check: &["--version"],
        install: "apt-get install -y buildah",
    },
    Program {
        name: "python3",
        check: &["-c", "import helm_python"],
        install: "pip install helm-python-sdk",
    },
];

/// Fails the test, in one line naming the install command, unless `name` runs.
pub fn need(name: &str) {
    let p = PROGRAMS
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("needs.rs knows no program {name:?}"));
    let ok = Command::new(p.name)
        .args(p.check)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let what = match name {
            "python3" => "the Python package helm-python-sdk (Helm v4 as a library)",
            other => other,
        };
        panic!(
            "this test needs {what}: `{}` (tests/run-all.sh installs everything the tests need)",
            p.install
        );
    }
}
