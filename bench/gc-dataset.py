#!/usr/bin/env python3
"""Builds the garbage-collection benchmark data set in any OCI registries, identically.

For each registry URL: IMAGES images, each with LAYERS small layers and a config in one of
REPOS repositories, plus as many unreferenced blobs as referenced ones (1,000 images with 4
layers: 10,000 blobs, half of them garbage). Everything goes through
the public /v2/ API (POST + PUT uploads, manifest PUT), so each registry stores the same content.

    gc-dataset.py --images 1000 --layers 4 http://127.0.0.1:5000 http://127.0.0.1:5001
"""
import argparse, hashlib, http.client, json, os, threading, urllib.parse
from concurrent.futures import ThreadPoolExecutor

local = threading.local()

def conn(base):
    u = urllib.parse.urlparse(base)
    key = (u.hostname, u.port)
    c = getattr(local, "c", {}).get(key)
    if c is None:
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        local.__dict__.setdefault("c", {})[key] = c
    return c

def req(base, method, path, body=None, headers=None):
    c = conn(base)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    return r.status, dict(r.getheaders()), data

def push_blob(base, repo, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    st, h, _ = req(base, "POST", f"/v2/{repo}/blobs/uploads/", b"", {"Content-Length": "0"})
    assert st == 202, (st, h)
    loc = h.get("Location") or h.get("location")
    loc = urllib.parse.urlparse(loc)
    path = loc.path + ("?" + loc.query + "&" if loc.query else "?") + "digest=" + d
    st, _, body = req(base, "PUT", path, data, {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
    assert st == 201, (st, body)
    return d

def image(base, i, layers, repos):
    repo = f"gcbench/r{i % repos}"
    config = json.dumps({"architecture": "amd64", "os": "linux", "image": i}).encode()
    cd = push_blob(base, repo, config)
    ls = []
    for j in range(layers):
        data = f"image {i} layer {j} ".encode() + bytes(1024)
        ls.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": push_blob(base, repo, data), "size": len(data)})
        garbage = f"garbage {i} {j} ".encode() + bytes(1024)
        push_blob(base, repo, garbage)
    # One more unreferenced blob, so exactly half the blobs (config + layers vs garbage) are garbage.
    push_blob(base, repo, f"garbage {i} config ".encode() + bytes(512))
    m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(config)},
                    "layers": ls}).encode()
    st, _, body = req(base, "PUT", f"/v2/{repo}/manifests/v{i}", m, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert st == 201, (st, body)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("urls", nargs="+")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repos", type=int, default=20)
    ap.add_argument("--conc", type=int, default=8)
    a = ap.parse_args()
    for base in a.urls:
        with ThreadPoolExecutor(a.conc) as ex:
            list(ex.map(lambda i: image(base, i, a.layers, a.repos), range(a.images)))
        blobs = a.images * 2 * (1 + a.layers)
        print(f"{base}: {a.images} images, {blobs} blobs ({blobs // 2} unreferenced)")

if __name__ == "__main__":
    main()
