#!/usr/bin/env bash
# Runs every test on a fresh machine, exactly as CI does (.ci/run calls this script): installs
# what the tests need, starts the Docker engine if it is not running, checks formatting and
# lints, then runs `cargo test`. Needs root (apt-get) on Debian 12 with Rust and Docker.
# From nothing it takes about 25 minutes on 2 cores; once the tools and target/ are there, 10.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
started=$SECONDS
step=0
say() { echo "run-all: $*"; }
begin() { step=$((step + 1)); step_started=$SECONDS; say "[$step/7] $*"; }
done_() { say "      done in $((SECONDS - step_started))s ($((SECONDS - started))s so far)"; }

begin "Debian packages the tests drive (skopeo, docker-registry, kubectl, lua5.1, podman, buildah; about 1 minute if any is missing)"
need=()
command -v skopeo >/dev/null || need+=(skopeo)
command -v curl >/dev/null || need+=(curl)
# tests/proxy.rs caches from CNCF Distribution (Debian's docker-registry) as an upstream.
command -v docker-registry >/dev/null || need+=(docker-registry)
# tests/packaging.rs renders the kustomize base with `kubectl kustomize` (no cluster needed).
command -v kubectl >/dev/null || need+=(kubernetes-client)
# tests/packaging.rs runs the Argo CD health check (examples/argocd/health.lua) in Lua 5.1.
command -v lua5.1 >/dev/null || need+=(lua5.1)
# tests/podman.rs and tests/readme.rs push and pull with podman and buildah.
command -v podman >/dev/null || need+=(podman)
command -v buildah >/dev/null || need+=(buildah)
# tests/image.rs checks the image's binary is stripped (readelf, objcopy, strip).
command -v readelf >/dev/null || need+=(binutils)
if ((${#need[@]})); then
  say "      installing ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
for tool in skopeo docker-registry kubectl lua5.1 podman buildah readelf; do
  command -v "$tool" >/dev/null || { say "$tool could not be installed; the tests need it" >&2; exit 1; }
done
done_

begin "Helm v4 as a library (pip install helm-python-sdk; under a minute)"
if ! python3 -c 'import helm_python' 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check helm-python-sdk
fi
python3 -c 'import helm_python' || { say "helm-python-sdk could not be installed; tests/helm.rs needs it" >&2; exit 1; }
done_

begin "the Docker engine (the real-client tests push through it)"
if ! docker info >/dev/null 2>&1; then
  say "      starting dockerd"
  (dockerd >/tmp/berth-ci-dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker info >/dev/null 2>&1 || { say "the Docker engine is not available (log: /tmp/berth-ci-dockerd.log)" >&2; exit 1; }
done_

# The S3 storage tests run against real Garage clusters (tests/common/garage.rs finds the
# binary through GARAGE_BIN, PATH or ~/.cargo/bin).
garage_bin=$(command -v garage || echo "${CARGO_HOME:-$HOME/.cargo}/bin/garage")
begin "Garage 2.5.0, the S3 server of the S3 tests (cargo install: about 7 minutes on 2 idle cores, once)"
if [[ ! -x $garage_bin ]]; then
  if ! cargo install garage --locked --version 2.5.0 >/tmp/berth-ci-garage-install.log 2>&1; then
    tail -n 30 /tmp/berth-ci-garage-install.log >&2
    say "garage could not be installed (log: /tmp/berth-ci-garage-install.log); the S3 tests need it" >&2
    exit 1
  fi
fi
[[ -x $garage_bin ]] || { say "garage is not at $garage_bin after installing it; the S3 tests need it" >&2; exit 1; }
export GARAGE_BIN=$garage_bin
say "      using $("$GARAGE_BIN" --version 2>/dev/null) ($GARAGE_BIN)"
done_

# Test binaries are large; a full disk shows up as a linker crash (ld: Bus error).
df -h . /tmp | sed 's/^/run-all:       /'

begin "cargo fmt --check"
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
cargo fmt --all -- --check
done_

begin "cargo clippy --all-targets -D warnings (builds everything: about 8 minutes from nothing)"
cargo clippy --all-targets -- -D warnings
done_

begin "cargo test (about 6 minutes: the test build, then every test)"
cargo test
done_
say "all tests passed in $((SECONDS - started))s"
