#!/usr/bin/env python3
"""Pull-through cache benchmark: Berth's cache beside CNCF Distribution's proxy mode, on the
same upstream, in one run.

Starts (from the binaries given) an upstream Berth holding one image of LAYERS layers of SIZE
bytes, a Berth cache (proxy.upstreams, prefix `up`) and Distribution with proxy.remoteurl,
each on fresh storage, then measures, as medians over ROUNDS:

  direct     pull of the image straight from the upstream (the baseline a cache must not slow)
  cold       first pull through each cache (fresh storage each round)
  warm       pull again through each cache (already cached)
  storm      CLIENTS clients cold-pulling at once: bytes the upstream sent / image size
  tag-1000   upstream manifest requests for 1,000 pulls of one tag within the TTL

Pulls GET the manifest by tag and every blob (CONC at a time per client) and check digests.

    proxy-bench.py --berth target/release/berth --size 32M --layers 4 --rounds 4
"""
import argparse, hashlib, http.client, json, os, re, shutil, subprocess, sys, tempfile, threading, time
from concurrent.futures import ThreadPoolExecutor

MEDIA = "application/vnd.oci.image.manifest.v1+json"


def size_arg(s):
    m = re.fullmatch(r"(\d+)([KMG]?)", s)
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def req(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, dict(r.getheaders()), data


def wait_port(port):
    for _ in range(200):
        try:
            req(port, "GET", "/v2/")
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing answers on {port}")


def start(cmd, port, log):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    wait_port(port)
    return p


def push_image(port, repo, size, layers):
    descs = []
    for i in range(layers + 1):
        blob = os.urandom(1024) if i == 0 else os.urandom(size)
        d = "sha256:" + hashlib.sha256(blob).hexdigest()
        st, _, body = req(port, "POST", f"/v2/{repo}/blobs/uploads/?digest={d}", blob,
                          {"Content-Length": str(len(blob))})
        assert st == 201, (st, body)
        descs.append({"mediaType": "application/vnd.oci.image.config.v1+json" if i == 0
                      else "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(blob)})
    m = json.dumps({"schemaVersion": 2, "mediaType": MEDIA, "config": descs[0], "layers": descs[1:]}).encode()
    st, _, body = req(port, "PUT", f"/v2/{repo}/manifests/v1", m, {"Content-Type": MEDIA})
    assert st == 201, (st, body)
    return m


def pull(port, repo, conc):
    """Pulls repo:v1 (manifest then blobs, conc at a time); returns bytes moved."""
    st, _, m = req(port, "GET", f"/v2/{repo}/manifests/v1", headers={"Accept": MEDIA})
    assert st == 200, (port, repo, st, m[:200])
    man = json.loads(m)
    blobs = [man["config"]] + man["layers"]

    def one(d):
        st, _, b = req(port, "GET", f"/v2/{repo}/blobs/{d['digest']}")
        assert st == 200 and "sha256:" + hashlib.sha256(b).hexdigest() == d["digest"], (port, st)
        return len(b)

    with ThreadPoolExecutor(conc) as ex:
        return len(m) + sum(ex.map(one, blobs))


def sent_bytes_and_manifest_gets(port):
    """From the upstream Berth's /metrics: response bytes sent, and manifest GET+HEAD count."""
    _, _, text = req(port, "GET", "/metrics")
    sent, manifests = 0.0, 0.0
    for line in text.decode().splitlines():
        if line.startswith("berth_http_sent_bytes_total"):
            sent = float(line.split()[-1])
        if line.startswith("berth_http_requests_total") and 'route="manifest"' in line and \
                ('method="GET"' in line or 'method="HEAD"' in line):
            manifests += float(line.split()[-1])
    return sent, manifests


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--berth", required=True)
    ap.add_argument("--distribution", default="docker-registry")
    ap.add_argument("--size", type=size_arg, default=size_arg("32M"))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--conc", type=int, default=4)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="proxy-bench-")
    procs = []
    try:
        up = free_port()
        procs.append(start([a.berth, "serve", "--addr", f"127.0.0.1:{up}", "--root", f"{work}/up",
                            "--log-level", "error"], up, f"{work}/up.log"))
        image = push_image(up, "team/app", a.size, a.layers)
        total = len(image) + 1024 + a.size * a.layers

        def caches(tag):
            """Fresh Berth and Distribution caches; returns {name: (port, repo, proc)}."""
            out = {}
            bp, dp = free_port(), free_port()
            cfg = f"{work}/berth-{tag}.yaml"
            open(cfg, "w").write(
                f"addr: 127.0.0.1:{bp}\nlog: {{level: error}}\nstorage:\n  filesystem:\n    root: {work}/berth-{tag}\n"
                f"proxy:\n  upstreams:\n    - prefix: up\n      url: http://127.0.0.1:{up}\n      tagTtl: 1h\n")
            out["berth"] = (bp, "up/team/app", start([a.berth, "serve", "--config", cfg], bp, f"{work}/berth-{tag}.log"))
            dcfg = f"{work}/dist-{tag}.yml"
            open(dcfg, "w").write(
                f"version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {work}/dist-{tag}}}\n"
                f"http: {{addr: 127.0.0.1:{dp}}}\nproxy: {{remoteurl: http://127.0.0.1:{up}}}\n")
            out["distribution"] = (dp, "team/app", start([a.distribution, "serve", dcfg], dp, f"{work}/dist-{tag}.log"))
            return out

        def stop(cs):
            for (_, _, p) in cs.values():
                p.terminate()
                p.wait()

        fig = {k: [] for k in ["direct", "berth cold", "distribution cold", "berth warm", "distribution warm"]}
        for r in range(a.rounds):
            t = time.monotonic()
            pull(up, "team/app", a.conc)
            fig["direct"].append(total / (time.monotonic() - t) / 1e6)
            cs = caches(f"r{r}")
            names = ["berth", "distribution"] if r % 2 == 0 else ["distribution", "berth"]
            for n in names:
                port, repo, _ = cs[n]
                t = time.monotonic()
                pull(port, repo, a.conc)
                fig[f"{n} cold"].append(total / (time.monotonic() - t) / 1e6)
            for n in names:
                port, repo, _ = cs[n]
                t = time.monotonic()
                pull(port, repo, a.conc)
                fig[f"{n} warm"].append(total / (time.monotonic() - t) / 1e6)
            stop(cs)

        storm, per_tag = {}, {}
        cs = caches("storm")
        for n in ["berth", "distribution"]:
            port, repo, _ = cs[n]
            before, _ = sent_bytes_and_manifest_gets(up)
            with ThreadPoolExecutor(a.clients) as ex:
                list(ex.map(lambda _: pull(port, repo, 1), range(a.clients)))
            after, m0 = sent_bytes_and_manifest_gets(up)
            storm[n] = (after - before) / total
            for _ in range(1000):
                st, _, _ = req(port, "GET", f"/v2/{repo}/manifests/v1", headers={"Accept": MEDIA})
                assert st == 200
            _, m1 = sent_bytes_and_manifest_gets(up)
            per_tag[n] = m1 - m0
        stop(cs)

        print(f"image: {a.layers} layers x {a.size >> 20} MiB, {a.conc} blobs at a time, {a.rounds} rounds (MB/s, medians)")
        print("| pull | MB/s |\n|---|---|")
        for k, v in fig.items():
            print(f"| {k} | {median(v):.0f} |")
        d = median(fig["direct"])
        print(f"\nberth cold / direct: {median(fig['berth cold']) / d:.2f}x; "
              f"berth warm / direct (Berth's own local pull): {median(fig['berth warm']) / d:.2f}x; "
              f"berth warm / distribution warm: {median(fig['berth warm']) / median(fig['distribution warm']):.2f}x; "
              f"berth cold / distribution cold: {median(fig['berth cold']) / median(fig['distribution cold']):.2f}x")
        print(f"storm of {a.clients} cold clients, upstream bytes sent / image size: "
              f"berth {storm['berth']:.2f}, distribution {storm['distribution']:.2f}")
        print(f"upstream manifest requests for 1,000 pulls of one cached tag: "
              f"berth {per_tag['berth']:.0f}, distribution {per_tag['distribution']:.0f}")
    finally:
        for p in procs:
            p.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
