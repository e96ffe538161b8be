"""Helm v4 (the helm-python-sdk library: Helm's own Go code, no binary) for tests/helm.rs.

Each command prints one JSON document on stdout; a Helm error exits 1 with its message on
stderr.

  helm.py lint CHART_DIR
  helm.py render CHART_DIR RELEASE NAMESPACE [VALUES_JSON]
  helm.py push CHART_DIR oci://HOST/PATH [USER PASSWORD]
  helm.py pull oci://HOST/PATH/NAME VERSION DEST_DIR [USER PASSWORD]
  helm.py tags oci://HOST/PATH/NAME [USER PASSWORD]
"""

import json
import sys
import tempfile

import helm_python as helm


def client(args, host):
    c = helm.RegistryClient(plain_http=True, credentials_file=tempfile.mktemp())
    if len(args) >= 2:
        c.login(host, args[0], args[1], plain_http=True)
    return c


def host_of(ref):
    return ref.removeprefix("oci://").split("/", 1)[0]


def main(argv):
    cmd, rest = argv[0], argv[1:]
    if cmd == "lint":
        out = helm.lint(rest[0], strict=True)
    elif cmd == "render":
        values = json.loads(rest[3]) if len(rest) > 3 else None
        chart = helm.Chart.load(rest[0])
        out = chart.render(values, name=rest[1], namespace=rest[2], is_install=True)
    elif cmd == "push":
        with tempfile.TemporaryDirectory() as d:
            archive = helm.package(rest[0], destination=d)
            out = client(rest[2:], host_of(rest[1])).push(archive, rest[1], plain_http=True)
            out["archiveDigest"] = helm.digest(archive)
    elif cmd == "pull":
        out = client(rest[3:], host_of(rest[0])).pull(
            rest[0], version=rest[1], destination=rest[2], plain_http=True
        )
    elif cmd == "tags":
        out = client(rest[1:], host_of(rest[0])).tags(rest[0])
    else:
        raise SystemExit(f"unknown command {cmd}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except helm.HelmError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
