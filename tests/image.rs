//! The container image: assemble the FROM-scratch build context with deploy/image/rootfs.sh
//! (from the test build of the binary, so no release build is needed), build it with the local
//! Docker engine, check it holds a stripped binary and little else, run it as it runs in
//! Kubernetes (non-root, read-only root filesystem, a volume for data) and as the README's one
//! `docker run` does, and push and pull a blob through it.

mod common;

use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker must be installed");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Removes the container and the image however the test ends.
struct Cleanup {
    image: String,
    container: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(c) = &self.container {
            let _ = Command::new("docker").args(["rm", "-f", "-v", c]).output();
        }
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

#[tokio::test]
async fn image_builds_from_scratch_and_serves_a_push() {
    common::needs::need("docker");
    let ctx = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(format!("{ROOT}/deploy/image/rootfs.sh"))
        .arg(env!("CARGO_BIN_EXE_berth"))
        .arg(ctx.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rootfs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let image = format!("berth-image-test:{}", std::process::id());
    let mut cleanup = Cleanup {
        image: image.clone(),
        container: None,
    };
    docker(&["build", "-q", "-t", &image, ctx.path().to_str().unwrap()]);
    let user = docker(&["image", "inspect", "-f", "{{.Config.User}}", &image]);
    assert_eq!(user, "65532:65532");

    // The binary in the image is stripped; its symbols wait beside the build context.
    let in_image = ctx.path().join("rootfs/usr/local/bin/berth");
    let sections = |p: &std::path::Path| {
        let out = Command::new("readelf").arg("-SW").arg(p).output().unwrap();
        assert!(out.status.success(), "readelf (binutils) must be installed");
        String::from_utf8(out.stdout).unwrap()
    };
    let stripped = sections(&in_image);
    assert!(
        !stripped.contains(".symtab")
            && !stripped.contains(".debug_info")
            && !stripped.contains(".debug_line"),
        "the image's binary is stripped"
    );
    assert!(stripped.contains(".gnu_debuglink"));
    assert!(sections(&ctx.path().join("berth.debug")).contains(".debug_line"));
    // The image is that binary, a few libraries and certificates: little beside the binary
    // (a release build's stripped binary is what makes it under 30 MB).
    let size: u64 = docker(&["image", "inspect", "-f", "{{.Size}}", &image])
        .parse()
        .unwrap();
    let binary = std::fs::metadata(&in_image).unwrap().len();
    assert!(
        size < binary + (4 << 20),
        "image {size} bytes for a {binary}-byte binary"
    );
    assert!(docker(&["run", "--rm", &image, "crd"]).contains("name: registries.berth.dev"));

    // The README's command, with only the port bound to loopback: the declared volumes take
    // the data and /tmp, so a read-only root needs nothing more.
    let id = docker(&[
        "run",
        "-d",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-p",
        "127.0.0.1::5000",
        &image,
    ]);
    cleanup.container = Some(id.clone());
    let port = docker(&["port", &id, "5000/tcp"]);
    let base = format!("http://{}", port.lines().next().unwrap());
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{base}/v2/")).send().await {
            assert_eq!(r.status(), 200);
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = || docker(&["logs", &id]);
    assert!(up, "the container never answered /v2/: {}", logs());

    let blob = b"a layer pushed into the container".to_vec();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
    let r = http
        .post(format!("{base}/v2/team/app/blobs/uploads/?digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "push failed: {}", logs());
    let r = http
        .get(format!("{base}/v2/team/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), blob);
}
