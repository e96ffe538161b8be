#!/usr/bin/env python3
"""Connection hardening figures for one running registry (issue #12's Numbers).

  slowloris  HOLD connections each send a partial request header, a byte every few seconds;
             meanwhile GETS manifest GETs on fresh connections: p50/p99/max latency, and the
             server's fds and RSS
  idle       IDLE connections connect and send nothing (or finish one request and stay open);
             meanwhile GETS manifest GETs: latency, fds and RSS sampled through the phase

Pushes a small image first (no auth). Give --pid to read fds and RSS from /proc.

    conn-bench.py --url http://127.0.0.1:5000 --pid $(pgrep -f 'berth serve') --hold 600 --idle 2000
"""
import argparse, hashlib, http.client, json, os, resource, socket, statistics, threading, time, urllib.parse

MEDIA = "application/vnd.oci.image.manifest.v1+json"


def push(host, port):
    def req(method, path, body=b"", headers=None):
        c = http.client.HTTPConnection(host, port, timeout=30)
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        r.read()
        c.close()
        return r.status
    descs = []
    for blob in [b"{}", b"layer" * 100]:
        d = "sha256:" + hashlib.sha256(blob).hexdigest()
        assert req("POST", f"/v2/bench/conn/blobs/uploads/?digest={d}", blob) == 201
        descs.append({"mediaType": "application/octet-stream", "digest": d, "size": len(blob)})
    m = json.dumps({"schemaVersion": 2, "mediaType": MEDIA, "config": descs[0], "layers": descs[1:]})
    assert req("PUT", "/v2/bench/conn/manifests/v1", m.encode(), {"Content-Type": MEDIA}) == 201


def get_ms(host, port):
    t = time.monotonic()
    c = http.client.HTTPConnection(host, port, timeout=60)
    c.request("GET", "/v2/bench/conn/manifests/v1", headers={"Accept": MEDIA})
    r = c.getresponse()
    r.read()
    c.close()
    assert r.status == 200, r.status
    return (time.monotonic() - t) * 1000


def server(pid):
    if not pid:
        return "n/a"
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS"))
    return f"{fds} fds, {rss / 1024:.1f} MiB RSS"


def latencies(host, port, n):
    xs = sorted(get_ms(host, port) for _ in range(n))
    return f"p50 {statistics.median(xs):.2f} ms, p99 {xs[int(len(xs) * 0.99) - 1]:.2f} ms, max {xs[-1]:.1f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--pid", type=int)
    ap.add_argument("--hold", type=int, default=600)
    ap.add_argument("--idle", type=int, default=2000)
    ap.add_argument("--gets", type=int, default=300)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    u = urllib.parse.urlsplit(a.url)
    host, port = u.hostname, u.port
    push(host, port)
    print(f"at rest: {server(a.pid)}; {latencies(host, port, a.gets)}")

    socks, stop = [], threading.Event()
    for _ in range(a.hold):
        s = socket.create_connection((host, port))
        s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)

    def drip():
        while not stop.wait(5):
            for s in socks:
                try:
                    s.sendall(b"X")
                except OSError:
                    pass
    threading.Thread(target=drip, daemon=True).start()
    time.sleep(1)
    print(f"{a.hold} slowloris held: {latencies(host, port, a.gets)}; {server(a.pid)}")
    stop.set()
    for s in socks:
        s.close()
    time.sleep(1)

    idle = []
    worst, samples = 0.0, []
    for i in range(a.idle):
        try:
            idle.append(socket.create_connection((host, port), timeout=10))
        except OSError as e:
            print(f"connect {i} failed: {e}")
            break
        if i % 250 == 249:
            samples.append(server(a.pid))
            worst = max(worst, get_ms(host, port))
    print(f"{len(idle)} idle connections opened; server by 250s: {samples}; worst GET meanwhile {worst:.1f} ms")
    print(f"with them open: {latencies(host, port, a.gets)}; {server(a.pid)}")
    for s in idle:
        s.close()


if __name__ == "__main__":
    main()
