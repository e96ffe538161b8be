#!/usr/bin/env python3
"""Pull-through cache benchmark: Berth's cache beside CNCF Distribution's proxy mode, on the
same upstream, in one run.

Starts (from the binaries given) an upstream Berth holding one image of LAYERS layers of SIZE
bytes, a Berth cache (proxy.upstreams, prefix `up`) and Distribution with proxy.remoteurl,
each on fresh storage, then measures, as medians over ROUNDS:

  direct     pull of the image straight from the upstream (the baseline a cache must not slow)
  cold       first pull through each cache (fresh storage each round)
  warm       pull again through each cache (already cached)
  local      the same image pushed to the Berth cache as a local repository, pulled from it
             (Berth's own pull of local content) alternately with the cached copy (warm again)
  storm      CLIENTS clients cold-pulling at once: bytes the upstream sent / image size
  tag-1000   upstream manifest requests for 1,000 pulls of one tag within the TTL

  tag-rate   warm manifest GETs by tag per second through each cache (wrk, 64 connections)
  blob-rate  warm GETs of one layer through each cache (wrk, CONC connections): MB/s with a C
             client, where the Python client above shares the 2 cores with the servers

Pulls GET the manifest by tag and every blob (CONC at a time per client), reading in 1 MiB
pieces; the digests are checked after each timed pull, untimed, by a second pull. With
--upstream-netns the upstream runs in that network namespace on --upstream-ip, so direct and
cold pulls cross a (shaped) link as they would cross a network; see --help. Server CPU per GB
moved (from /proc) is printed beside each throughput: the least noisy figure on a shared
machine.

    proxy-bench.py --berth target/release/berth --size 32M --layers 4 --rounds 4

A 1 Gbit link to the upstream (this kernel has htb but no netem, so no added delay):

    ip netns add benchup && ip link add vb0 type veth peer name vb1
    ip link set vb1 netns benchup && ip addr add 10.77.0.1/24 dev vb0 && ip link set vb0 up
    ip netns exec benchup sh -c 'ip addr add 10.77.0.2/24 dev vb1; ip link set vb1 up; ip link set lo up'
    for ns in "" "ip netns exec benchup"; do d=$([ -z "$ns" ] && echo vb0 || echo vb1)
      $ns tc qdisc add dev $d root handle 1: htb default 10
      $ns tc class add dev $d parent 1: classid 1:10 htb rate 1gbit ceil 1gbit; done
    proxy-bench.py --berth target/release/berth --upstream-netns benchup --upstream-ip 10.77.0.2
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


def req(port, method, path, body=None, headers=None, host="127.0.0.1"):
    c = http.client.HTTPConnection(host, port, timeout=300)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, dict(r.getheaders()), data


def wait_port(port, host="127.0.0.1"):
    for _ in range(200):
        try:
            req(port, "GET", "/v2/", host=host)
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing answers on {port}")


def start(cmd, port, log, host="127.0.0.1"):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    wait_port(port, host)
    return p


def cpu_s(pid):
    """User+system CPU seconds of a process (and its exited children)."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")



def push_image(port, repo, size, layers, host, blobs=None):
    descs, made = [], []
    for i in range(layers + 1):
        blob = blobs[i] if blobs else os.urandom(1024) if i == 0 else os.urandom(size)
        made.append(blob)
        d = "sha256:" + hashlib.sha256(blob).hexdigest()
        st, _, body = req(port, "POST", f"/v2/{repo}/blobs/uploads/?digest={d}", blob,
                          {"Content-Length": str(len(blob))}, host)
        assert st == 201, (st, body)
        descs.append({"mediaType": "application/vnd.oci.image.config.v1+json" if i == 0
                      else "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(blob)})
    m = json.dumps({"schemaVersion": 2, "mediaType": MEDIA, "config": descs[0], "layers": descs[1:]}).encode()
    st, _, body = req(port, "PUT", f"/v2/{repo}/manifests/v1", m, {"Content-Type": MEDIA}, host)
    assert st == 201, (st, body)
    return m, made


def pull(port, repo, conc, host="127.0.0.1", verify=False):
    """Pulls repo:v1 (manifest then blobs, conc at a time); returns bytes moved."""
    st, _, m = req(port, "GET", f"/v2/{repo}/manifests/v1", None, {"Accept": MEDIA}, host)
    assert st == 200, (port, repo, st, m[:200])
    man = json.loads(m)
    blobs = [man["config"]] + man["layers"]

    def one(d):
        c = http.client.HTTPConnection(host, port, timeout=300)
        c.request("GET", f"/v2/{repo}/blobs/{d['digest']}")
        r = c.getresponse()
        assert r.status == 200, (port, r.status)
        h = hashlib.sha256() if verify else None
        n = 0
        while True:
            piece = r.read(1 << 20)
            if not piece:
                break
            n += len(piece)
            if h:
                h.update(piece)
        c.close()
        assert n == d["size"] and (not h or "sha256:" + h.hexdigest() == d["digest"]), (port, d)
        return n

    with ThreadPoolExecutor(conc) as ex:
        return len(m) + sum(ex.map(one, blobs))


def wrk_rate(port, path, seconds=5, conns=64, what=r"Requests/sec:\s+([\d.]+)([KMG]?B)?"):
    """Requests (or with `what` matching Transfer/sec, MB) per second of GET path with wrk."""
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(f'wrk.headers["Accept"] = "{MEDIA}"\n')
    script.close()
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "-s", script.name,
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True).stdout
    os.unlink(script.name)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    assert not bad, out
    m = re.search(what, out)
    scale = {None: 1, "B": 1e-6, "KB": 1e-3, "MB": 1, "GB": 1e3}[m.group(2) if m.lastindex > 1 else None]
    return float(m.group(1)) * scale


def sent_bytes_and_manifest_gets(port, host):
    """From the upstream Berth's /metrics: response bytes sent, and manifest GET+HEAD count."""
    _, _, text = req(port, "GET", "/metrics", host=host)
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
    ap.add_argument("--upstream-netns", help="run the upstream in this network namespace (ip netns)")
    ap.add_argument("--upstream-ip", default="127.0.0.1", help="the upstream's address (in the netns)")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="proxy-bench-")
    procs = []
    uh = a.upstream_ip
    try:
        up = free_port()
        cmd = [a.berth, "serve", "--addr", f"{uh}:{up}", "--root", f"{work}/up", "--log-level", "error"]
        if a.upstream_netns:
            cmd = ["ip", "netns", "exec", a.upstream_netns] + cmd
        procs.append(start(cmd, up, f"{work}/up.log", uh))
        image, blobs = push_image(up, "team/app", a.size, a.layers, uh)
        total = len(image) + 1024 + a.size * a.layers

        def caches(tag):
            """Fresh Berth and Distribution caches; returns {name: (port, repo, proc)}."""
            out = {}
            bp, dp = free_port(), free_port()
            cfg = f"{work}/berth-{tag}.yaml"
            open(cfg, "w").write(
                f"addr: 127.0.0.1:{bp}\nlog: {{level: error}}\nstorage:\n  filesystem:\n    root: {work}/berth-{tag}\n"
                f"proxy:\n  upstreams:\n    - prefix: up\n      url: http://{uh}:{up}\n      tagTtl: 1h\n")
            out["berth"] = (bp, "up/team/app", start([a.berth, "serve", "--config", cfg], bp, f"{work}/berth-{tag}.log"))
            dcfg = f"{work}/dist-{tag}.yml"
            open(dcfg, "w").write(
                f"version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {work}/dist-{tag}}}\n"
                f"http: {{addr: 127.0.0.1:{dp}}}\nproxy: {{remoteurl: http://{uh}:{up}}}\n")
            out["distribution"] = (dp, "team/app", start([a.distribution, "serve", dcfg], dp, f"{work}/dist-{tag}.log"))
            return out

        def stop(cs):
            for (_, _, p) in cs.values():
                p.terminate()
                p.wait()

        def timed(port, repo, host="127.0.0.1", pid=None):
            """MB/s of one pull, and the server's CPU seconds per GB over it. Dirty pages of the
            phase before (a cache's fill, a push) are written back first, untimed, so that no
            pull pays for another's writeback."""
            os.sync()
            c0 = cpu_s(pid) if pid else 0
            t = time.monotonic()
            n = pull(port, repo, a.conc, host)
            mbs = n / (time.monotonic() - t) / 1e6
            return mbs, ((cpu_s(pid) - c0) / (n / 1e9) if pid else None)

        keys = ["direct", "berth cold", "distribution cold", "berth warm", "distribution warm", "berth warm again", "berth local"]
        fig = {k: [] for k in keys}
        cpu = {k: [] for k in keys}
        for r in range(a.rounds):
            mbs, _ = timed(up, "team/app", uh)
            fig["direct"].append(mbs)
            cs = caches(f"r{r}")
            names = ["berth", "distribution"] if r % 2 == 0 else ["distribution", "berth"]
            for phase in ["cold", "warm"]:
                for n in names:
                    port, repo, p = cs[n]
                    mbs, c = timed(port, repo, pid=p.pid)
                    fig[f"{n} {phase}"].append(mbs)
                    cpu[f"{n} {phase}"].append(c)
            for n in names:  # untimed: what the caches kept is the image
                port, repo, _ = cs[n]
                pull(port, repo, a.conc, verify=True)
            port, _, p = cs["berth"]
            push_image(port, "local/app", a.size, a.layers, "127.0.0.1", blobs)
            for which in (["local", "warm again"] if r % 2 == 0 else ["warm again", "local"]):
                mbs, c = timed(port, "local/app" if which == "local" else "up/team/app", pid=p.pid)
                fig[f"berth {which}"].append(mbs)
                cpu[f"berth {which}"].append(c)
            stop(cs)

        storm, per_tag, rate, blob_rate = {}, {}, {}, {}
        cs = caches("storm")
        for n in ["berth", "distribution"]:
            port, repo, _ = cs[n]
            before, _ = sent_bytes_and_manifest_gets(up, uh)
            with ThreadPoolExecutor(a.clients) as ex:
                list(ex.map(lambda _: pull(port, repo, 1, verify=True), range(a.clients)))
            after, m0 = sent_bytes_and_manifest_gets(up, uh)
            storm[n] = (after - before) / total
            for _ in range(1000):
                st, _, _ = req(port, "GET", f"/v2/{repo}/manifests/v1", headers={"Accept": MEDIA})
                assert st == 200
            _, m1 = sent_bytes_and_manifest_gets(up, uh)
            per_tag[n] = m1 - m0
            rate[n] = wrk_rate(port, f"/v2/{repo}/manifests/v1") if shutil.which("wrk") else None
            layer = json.loads(image)["layers"][0]["digest"]
            blob_rate[n] = wrk_rate(port, f"/v2/{repo}/blobs/{layer}", conns=a.conc,
                                    what=r"Transfer/sec:\s+([\d.]+)([KMG]?B)") if rate[n] else None
        stop(cs)

        link = f"upstream in netns {a.upstream_netns} at {uh}" if a.upstream_netns else "all on loopback"
        print(f"image: {a.layers} layers x {a.size >> 20} MiB, {a.conc} blobs at a time, {a.rounds} rounds, {link} (medians)")
        print("| pull | MB/s | server CPU s/GB |\n|---|---|---|")
        for k in keys:
            c = [x for x in cpu[k] if x is not None]
            print(f"| {k} | {median(fig[k]):.0f} | {median(c):.2f} |" if c else f"| {k} | {median(fig[k]):.0f} | |")
        d = median(fig["direct"])
        bw, dw = median(fig["berth warm"]), median(fig["distribution warm"])
        print(f"\nberth cold / direct: {median(fig['berth cold']) / d:.2f}x; "
              f"berth warm / distribution warm: {bw / dw:.2f}x; "
              f"berth warm again / berth local (same process, alternating): "
              f"{median(fig['berth warm again']) / median(fig['berth local']):.2f}x; "
              f"berth cold / distribution cold: {median(fig['berth cold']) / median(fig['distribution cold']):.2f}x; "
              f"warm CPU per GB, berth / distribution: {median(cpu['berth warm']) / median(cpu['distribution warm']):.2f}")
        print(f"storm of {a.clients} cold clients, upstream bytes sent / image size: "
              f"berth {storm['berth']:.2f}, distribution {storm['distribution']:.2f}")
        print(f"upstream manifest requests for 1,000 pulls of one cached tag: "
              f"berth {per_tag['berth']:.0f}, distribution {per_tag['distribution']:.0f}")
        if rate["berth"]:
            print(f"warm manifest GETs by tag (wrk, 64 connections): berth {rate['berth']:.0f}/s, "
                  f"distribution {rate['distribution']:.0f}/s, {rate['berth'] / rate['distribution']:.1f}x")
            print(f"warm blob GETs of one layer (wrk, {a.conc} connections): berth {blob_rate['berth']:.0f} MB/s, "
                  f"distribution {blob_rate['distribution']:.0f} MB/s, {blob_rate['berth'] / blob_rate['distribution']:.2f}x")
    finally:
        for p in procs:
            p.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
