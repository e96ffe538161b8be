#!/usr/bin/env bash
# Assembles the Docker build context for the FROM-scratch image: the berth binary, stripped
# (its symbols and line tables go to OUTDIR/berth.debug, outside the image, for a debugger or
# a symbolizer), the shared libraries `ldd` says it needs (glibc, libgcc_s, the loader), CA
# certificates, a passwd entry for the non-root user 65532, an empty /tmp and data directory,
# and the Dockerfile.
# Usage: deploy/image/rootfs.sh BINARY OUTDIR
set -euo pipefail
bin=${1:?binary}; out=${2:?output directory}
here=$(cd "$(dirname "$0")/../.." && pwd)
rm -rf "$out"; mkdir -p "$out/rootfs/usr/local/bin" "$out/rootfs/etc" "$out/rootfs/tmp" "$out/data"
objcopy --only-keep-debug "$bin" "$out/berth.debug"
strip --strip-all -o "$out/rootfs/usr/local/bin/berth" "$bin"
objcopy --add-gnu-debuglink="$out/berth.debug" "$out/rootfs/usr/local/bin/berth"
chmod 0755 "$out/rootfs/usr/local/bin/berth"
chmod 1777 "$out/rootfs/tmp"
# Every absolute path ldd prints (libraries and the dynamic loader), at the same path.
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  mkdir -p "$out/rootfs$(dirname "$lib")"
  cp -L "$lib" "$out/rootfs$lib"
done
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  mkdir -p "$out/rootfs/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$out/rootfs/etc/ssl/certs/"
fi
echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' > "$out/rootfs/etc/passwd"
echo 'nonroot:x:65532:' > "$out/rootfs/etc/group"
cp "$here/Dockerfile" "$out/Dockerfile"
