#!/usr/bin/env python3
"""Writes the policy config the policy-overhead benchmark uses: 100 rules and 20 quotas, laid
out so the benchmark's repositories (`bench/...`) meet one immutable-tag rule and one quota,
and every other rule is asked and does not match (the common case on a shared registry).

    bench/policy-config.py /tmp/pb            # writes /tmp/pb/policy.yaml and /tmp/pb/pub.pem
    berth serve --root /tmp/pb/d2 --addr 127.0.0.1:5402 --config /tmp/pb/policy.yaml &
    registry-bench.py --target plain=http://127.0.0.1:5401 --target policy=http://127.0.0.1:5402 ...

The signature rules need a real ECDSA P-256 public key: openssl makes one.
"""
import os, subprocess, sys

out = sys.argv[1] if len(sys.argv) > 1 else "."
os.makedirs(out, exist_ok=True)
key, pub = os.path.join(out, "k.pem"), os.path.join(out, "pub.pem")
subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key], check=True)
subprocess.run(["openssl", "ec", "-in", key, "-pubout", "-out", pub], check=True, stderr=subprocess.DEVNULL)
lines = ["policy:", "  immutableTags:"]
for i in range(79):
    lines += [f'    - repository: "team-{i}/**"', '      tags: "^v[0-9]+\\\\.[0-9]+"']
lines += ['    - repository: "bench/**"', '      tags: "^v[0-9]"']
lines += ["  signatures:"]
for i in range(20):
    lines += [f'    - repository: "signed-{i}/**"', f"      publicKey: {pub}"]
lines += ["  quotas:"]
for i in range(19):
    lines += [f'    - repository: "quota-{i}/**"', "      maxBytes: 10Gi"]
lines += ['    - repository: "bench/**"', "      maxBytes: 1Ti"]
with open(os.path.join(out, "policy.yaml"), "w") as f:
    f.write("\n".join(lines) + "\n")
print(os.path.join(out, "policy.yaml"))
