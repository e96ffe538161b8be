//! Helm v4 for the tests: tests/helm/helm.py drives PyPI's helm-python-sdk (Helm's own Go
//! code as a library; no helm binary is packaged where the tests run).

use std::path::Path;
use std::process::Command;

/// Runs `helm.py args` from the repository root: its one JSON document, or Helm's error.
pub fn helm(args: &[&str]) -> Result<serde_json::Value, String> {
    super::needs::need("python3");
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(Path::new(root).join("tests/helm/helm.py"))
        .args(args)
        .current_dir(root)
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("helm.py printed no JSON: {e}"))
}
