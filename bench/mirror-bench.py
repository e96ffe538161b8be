#!/usr/bin/env python3
"""Mirror benchmark: `berth mirror sync --to` beside `skopeo sync`, same source, same kind of
destination, in one run.

Starts a source Berth holding IMAGES tags of one repository (each: a shared base layer, a
layer shared by groups of 5, a layer of its own, a config), and for each round two fresh
destination Berths, then times (medians over ROUNDS):

  berth     berth mirror sync --to DEST1 (tags: [".*"])
  skopeo    skopeo sync --src docker --dest docker SOURCE/repo DEST2/skopeo
  again     berth mirror sync again with nothing changed (blob bytes moved must be 0)

and the CPU seconds (client plus destination server) per GB of unique image data.

    mirror-bench.py --berth target/release/berth --images 50 --rounds 3
"""
import argparse, hashlib, http.client, json, os, resource, shutil, socket, subprocess, sys, tempfile, time

MEDIA = "application/vnd.oci.image.manifest.v1+json"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def req(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def push_blob(port, repo, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    st, _ = req(port, "POST", f"/v2/{repo}/blobs/uploads/?digest={d}", data)
    assert st == 201, st
    return d


def start(binary, root, port, log):
    p = subprocess.Popen([binary, "serve", "--addr", f"127.0.0.1:{port}", "--root", root],
                         stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    for _ in range(200):
        try:
            if req(port, "GET", "/v2/")[0] == 200:
                return p
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{binary} did not start")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def seed(port, images):
    base = os.urandom(4 << 20)
    mids = [os.urandom(2 << 20) for _ in range((images + 4) // 5)]
    total = len(base) + sum(map(len, mids))
    for i in range(images):
        own = os.urandom(1 << 20)
        total += len(own)
        cfg = json.dumps({"architecture": "amd64", "os": "linux", "n": i}).encode()
        layers = [base, mids[i // 5], own]
        ds = [push_blob(port, "bench/app", l) for l in layers]
        cd = push_blob(port, "bench/app", cfg)
        m = json.dumps({"schemaVersion": 2, "mediaType": MEDIA,
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(cfg)},
                        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(l)}
                                   for d, l in zip(ds, layers)]}).encode()
        st, _ = req(port, "PUT", f"/v2/bench/app/manifests/v{i}", m, {"Content-Type": MEDIA})
        assert st == 201, st
    return total


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--berth", required=True)
    ap.add_argument("--skopeo", default="skopeo")
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="mirror-bench-")
    procs = []
    try:
        sp = free_port()
        procs.append(start(a.berth, f"{work}/src", sp, f"{work}/src.log"))
        total = seed(sp, a.images)
        set_file = f"{work}/set.yaml"
        open(set_file, "w").write(f'mirrors:\n  - source: http://127.0.0.1:{sp}/bench/app\n    tags: [".*"]\n    destination: mirror/app\n')
        fig = {"berth": [], "skopeo": [], "again": []}
        cpu = {"berth": [], "skopeo": []}
        for r in range(a.rounds):
            order = ["berth", "skopeo"] if r % 2 == 0 else ["skopeo", "berth"]
            for which in order:
                port = free_port()
                root = f"{work}/dest-{which}-{r}"
                p = start(a.berth, root, port, f"{root}.log")
                os.sync()
                c0, s0, t = children_cpu(), cpu_s(p.pid), time.monotonic()
                if which == "berth":
                    out = subprocess.run([a.berth, "mirror", "sync", "--json", "--config", set_file,
                                          "--to", f"http://127.0.0.1:{port}"], capture_output=True, text=True)
                    rep = json.loads(out.stdout)
                    assert rep["images"] == a.images and not rep["errors"], rep
                else:
                    out = subprocess.run([a.skopeo, "sync", "--src", "docker", "--dest", "docker",
                                          "--src-tls-verify=false", "--dest-tls-verify=false",
                                          f"127.0.0.1:{sp}/bench/app", f"127.0.0.1:{port}/skopeo"],
                                         capture_output=True, text=True)
                    assert out.returncode == 0, out.stderr[-2000:]
                dt = time.monotonic() - t
                fig[which].append(dt)
                cpu[which].append((children_cpu() - c0 + cpu_s(p.pid) - s0) / (total / 1e9))
                if which == "berth":
                    t = time.monotonic()
                    out = subprocess.run([a.berth, "mirror", "sync", "--json", "--config", set_file,
                                          "--to", f"http://127.0.0.1:{port}"], capture_output=True, text=True)
                    rep = json.loads(out.stdout)
                    assert rep["bytesCopied"] == 0 and rep["blobsCopied"] == 0, rep
                    fig["again"].append(time.monotonic() - t)
                p.terminate()
                p.wait()
                shutil.rmtree(root, ignore_errors=True)
        mb = total / 1e6
        print(f"{a.images} images, {mb:.0f} MB of unique blobs, {a.rounds} rounds (medians)")
        print("| sync | seconds | MB/s | CPU s/GB (client + destination) |\n|---|---|---|---|")
        for k in ["berth", "skopeo"]:
            print(f"| {k} | {median(fig[k]):.2f} | {mb / median(fig[k]):.0f} | {median(cpu[k]):.2f} |")
        print(f"| berth again (nothing changed) | {median(fig['again']):.2f} | 0 bytes moved | |")
        print(f"berth / skopeo speed: {median(fig['skopeo']) / median(fig['berth']):.2f}x; "
              f"CPU per GB: {median(cpu['berth']) / median(cpu['skopeo']):.2f}")
    finally:
        for p in procs:
            p.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
