#!/usr/bin/env bash
# Sets up the S3 side of the benchmarks on loopback (see /work/shared/bench/README.md):
#   - a single-node Garage in DIR/garage (S3 API 127.0.0.1:3900, RPC 3901, admin 3903),
#     with buckets `dist` and `berth` and one key allowed read/write/owner on both;
#   - CNCF Distribution (`docker-registry`, apt package) on 127.0.0.1:5001, on bucket `dist`;
#   - a Berth config for bucket `berth` (addr 127.0.0.1:5000) written to BERTH_CONFIG.
# Prints the PIDs. Rerunning reuses DIR (same rpc secret, node, key and buckets): processes
# from an earlier run that are still alive are stopped and started again. --fresh wipes DIR.
#
# usage: bench/s3-bench-setup.sh [--fresh] DIR [BERTH_CONFIG]   (default DIR/berth-s3.yml)
# Needs: garage (`cargo install garage --locked`, or GARAGE_BIN), docker-registry, curl, openssl.
set -euo pipefail

fresh=0
if [[ ${1:-} == --fresh ]]; then
  fresh=1
  shift
fi
dir=${1:?usage: $0 [--fresh] DIR [BERTH_CONFIG]}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
berth_config=${2:-$dir/berth-s3.yml}

garage=${GARAGE_BIN:-$(command -v garage || echo "${CARGO_HOME:-$HOME/.cargo}/bin/garage")}
[[ -x $garage ]] || { echo "s3-bench-setup: garage not found; run: cargo install garage --locked" >&2; exit 1; }
command -v docker-registry >/dev/null || { echo "s3-bench-setup: docker-registry not found; run: apt-get install -y docker-registry" >&2; exit 1; }
command -v curl >/dev/null && command -v openssl >/dev/null || { echo "s3-bench-setup: needs curl and openssl" >&2; exit 1; }

# Stops the process recorded in a pid file by an earlier run, if it is still that process.
stop_pidfile() {
  local pidfile=$1 name=$2 pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && grep -qa "$name" "/proc/$pid/cmdline" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}
stop_pidfile "$dir/dist.pid" docker-registry
stop_pidfile "$dir/garage.pid" garage
if ((fresh)); then
  rm -rf "${dir:?}/garage" "$dir/dist.yml" "$dir/key.env" "$dir"/*.log
fi

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in 3900 3901 3903 5001; do
  port_free "$port" || { echo "s3-bench-setup: 127.0.0.1:$port is taken by another process" >&2; exit 1; }
done

# ---- Garage ----
mkdir -p "$dir/garage"
conf=$dir/garage/garage.toml
if [[ ! -f $conf ]]; then
  cat >"$conf" <<EOF
metadata_dir = "$dir/garage/meta"
data_dir = "$dir/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "$(openssl rand -hex 32)"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:3900"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:3903"
admin_token = "$(openssl rand -hex 32)"
EOF
fi
g() { "$garage" -c "$conf" "$@"; }

env -u RUST_LOG NO_COLOR=1 nohup "$garage" -c "$conf" server >>"$dir/garage.log" 2>&1 &
echo $! >"$dir/garage.pid"
ready=0
for _ in $(seq 1 300); do
  if curl -s -o /dev/null http://127.0.0.1:3903/health; then ready=1; break; fi
  kill -0 "$(cat "$dir/garage.pid")" 2>/dev/null || break
  sleep 0.1
done
((ready)) || { tail -n 20 "$dir/garage.log" >&2; echo "s3-bench-setup: garage did not start (log: $dir/garage.log)" >&2; exit 1; }

# (Capture before matching: garage panics on a closed stdout, so `| grep -q` would fail.)
layout=$(g layout show)
if [[ $layout == *"Current cluster layout version: 0"* ]]; then
  g layout assign -z dc1 -c 1G "$(g node id -q | cut -d@ -f1)" >/dev/null
  g layout apply --version 1 >/dev/null
fi
ready=0
for _ in $(seq 1 300); do
  if [[ $(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:3903/health) == 200 ]]; then ready=1; break; fi
  sleep 0.1
done
((ready)) || { tail -n 20 "$dir/garage.log" >&2; echo "s3-bench-setup: garage is not healthy (log: $dir/garage.log)" >&2; exit 1; }

# The key is generated here and imported, so that reruns know it without parsing CLI output.
if [[ ! -f $dir/key.env ]]; then
  printf 'KEY_ID=GK%s\nSECRET=%s\n' "$(openssl rand -hex 12)" "$(openssl rand -hex 32)" >"$dir/key.env"
fi
# shellcheck source=/dev/null
source "$dir/key.env"
g key info "$KEY_ID" >/dev/null 2>&1 || g key import --yes -n bench "$KEY_ID" "$SECRET" >/dev/null
for bucket in dist berth; do
  g bucket info "$bucket" >/dev/null 2>&1 || g bucket create "$bucket" >/dev/null
  g bucket allow --read --write --owner "$bucket" --key "$KEY_ID" >/dev/null
done

# ---- CNCF Distribution on bucket `dist` ----
# redirect.disable: serve blobs itself rather than redirecting clients to presigned S3 URLs,
# so that it does the same work as a registry that proxies its storage.
cat >"$dir/dist.yml" <<EOF
version: 0.1
log: {level: error}
storage:
  s3:
    accesskey: $KEY_ID
    secretkey: $SECRET
    region: garage
    regionendpoint: http://127.0.0.1:3900
    bucket: dist
    forcepathstyle: true
    secure: false
    v4auth: true
  delete: {enabled: true}
  redirect: {disable: true}
http: {addr: 127.0.0.1:5001}
EOF
# Its s3 driver panics ("unable to load custom CA bundle") when AWS_CA_BUNDLE is set.
env -u AWS_CA_BUNDLE nohup docker-registry serve "$dir/dist.yml" >>"$dir/dist.log" 2>&1 &
echo $! >"$dir/dist.pid"
ready=0
for _ in $(seq 1 100); do
  if [[ $(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5001/v2/) == 200 ]]; then ready=1; break; fi
  kill -0 "$(cat "$dir/dist.pid")" 2>/dev/null || break
  sleep 0.1
done
((ready)) || { tail -n 20 "$dir/dist.log" >&2; echo "s3-bench-setup: docker-registry did not start (log: $dir/dist.log)" >&2; exit 1; }

# ---- Berth's config, for bucket `berth` ----
mkdir -p "$(dirname "$berth_config")"
cat >"$berth_config" <<EOF
addr: 127.0.0.1:5000
storage:
  s3:
    bucket: berth
    region: garage
    endpoint: http://127.0.0.1:3900
    pathStyle: true
    accessKeyId: $KEY_ID
    secretAccessKey: $SECRET
log: {level: error}
EOF

echo "garage pid $(cat "$dir/garage.pid") (S3 http://127.0.0.1:3900, log $dir/garage.log)"
echo "docker-registry pid $(cat "$dir/dist.pid") (http://127.0.0.1:5001, log $dir/dist.log)"
echo "berth config $berth_config (key $KEY_ID)"
