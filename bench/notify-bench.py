#!/usr/bin/env python3
"""Webhook benchmark: can delivery keep up with a steady push rate when the receiver is slow?

Starts a receiver that takes DELAY seconds to answer every request (a receiver "100 ms away"),
a Berth whose `policy.notifications` point at it, and pushes RATE manifests a minute for
SECONDS (each a new tag of one small image, so the push itself is cheap). Reports:

  pushes         done, and the push latency (p50/p99) the client saw
  delivered      events the receiver got (each push once, in push order?) and requests used
  lag            time from a push's 201 to its event arriving (p50/p99/max)
  backlog        the queue depth the registry reported at the end of the pushing

and the same pushes against a Berth without webhooks, for the push latency beside it.

    notify-bench.py --berth target/release/berth --rate 1000 --seconds 60 --delay 0.1
"""
import argparse, hashlib, http.client, http.server, json, os, socket, subprocess, sys, tempfile, threading, time

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


def start_berth(binary, root, config=None):
    port = free_port()
    args = [binary, "serve", "--root", root, "--addr", f"127.0.0.1:{port}", "--log-level", "warn"]
    if config:
        args += ["--config", config]
    p = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            if req(port, "GET", "/v2/")[0] == 200:
                return p, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("berth did not start")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def pushes(port, rate, seconds):
    """Pushes `rate` tags a minute for `seconds`; returns {tag: time of the 201}, latencies."""
    repo = "bench/hooks"
    cfg = b'{"architecture":"amd64","os":"linux"}'
    layer = os.urandom(4096)
    cd, ld = push_blob(port, repo, cfg), push_blob(port, repo, layer)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MEDIA,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": len(layer)}],
    }).encode()
    done, lat = {}, []
    interval = 60.0 / rate
    start = time.monotonic()
    n = int(rate * seconds / 60)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for i in range(n):
        due = start + i * interval
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        t0 = time.monotonic()
        conn.request("PUT", f"/v2/{repo}/manifests/t{i}", body=manifest, headers={"Content-Type": MEDIA})
        r = conn.getresponse()
        r.read()
        assert r.status == 201, r.status
        t1 = time.monotonic()
        lat.append(t1 - t0)
        done[f"t{i}"] = t1
    conn.close()
    return done, lat


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--berth", default="target/release/berth")
    ap.add_argument("--rate", type=float, default=1000, help="pushes a minute (1000)")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--delay", type=float, default=0.1, help="receiver's answer time (0.1 s)")
    a = ap.parse_args()

    got, requests = {}, [0]
    lock = threading.Lock()

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(a.delay)
            now = time.monotonic()
            with lock:
                requests[0] += 1
                for e in json.loads(body)["events"]:
                    got.setdefault(e["target"].get("tag"), now)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    rx = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=rx.serve_forever, daemon=True).start()
    tmp = tempfile.mkdtemp(prefix="notify-bench-")
    cfg = os.path.join(tmp, "berth.yaml")
    with open(cfg, "w") as f:
        f.write(f"policy:\n  notifications:\n    - name: bench\n      url: http://127.0.0.1:{rx.server_address[1]}/hook\n      actions: [push]\n")

    plain, pport = start_berth(a.berth, os.path.join(tmp, "plain"))
    try:
        _, base_lat = pushes(pport, a.rate, a.seconds)
    finally:
        plain.kill()
    hooked, hport = start_berth(a.berth, os.path.join(tmp, "hooked"), cfg)
    try:
        done, lat = pushes(hport, a.rate, a.seconds)
        _, metrics = req(hport, "GET", "/metrics")
        backlog = [l for l in metrics.decode().splitlines() if l.startswith("berth_notification_queue_depth")]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with lock:
                if len(got) >= len(done):
                    break
            time.sleep(0.1)
    finally:
        hooked.kill()
    lags = [got[t] - done[t] for t in done if t in got]
    print(f"pushes      {len(done)} at {a.rate:.0f}/min; push latency p50 {pct(lat, .5)*1e3:.2f} ms, p99 {pct(lat, .99)*1e3:.2f} ms"
          f" (no webhooks: p50 {pct(base_lat, .5)*1e3:.2f} ms, p99 {pct(base_lat, .99)*1e3:.2f} ms)")
    print(f"delivered   {len(got)} of {len(done)} events in {requests[0]} requests (receiver answers in {a.delay*1e3:.0f} ms)")
    print(f"lag         p50 {pct(lags, .5)*1e3:.0f} ms, p99 {pct(lags, .99)*1e3:.0f} ms, max {max(lags)*1e3:.0f} ms")
    print(f"backlog     at the end of the pushing: {backlog[0].split()[-1] if backlog else '?'} waiting")
    sys.exit(0 if len(got) >= len(done) else 1)


if __name__ == "__main__":
    main()
