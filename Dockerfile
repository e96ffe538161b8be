# The one Berth image: `berth serve`, `berth operator`, `berth gc` and `berth crd`.
# Built FROM scratch from a root filesystem assembled locally (no base image is pulled):
#
#   cargo build --release
#   deploy/image/rootfs.sh target/release/berth target/image   # stripped binary + the libs ldd lists
#   docker build -t berth:dev target/image                      # this file is copied there
#   docker run -d -p 5000:5000 --read-only berth:dev            # a registry; data in a volume
#
# It runs as 65532, never root, and writes only to /var/lib/berth (a volume) and /tmp.
FROM scratch
COPY rootfs/ /
COPY --chown=65532:65532 data/ /var/lib/berth/
USER 65532:65532
VOLUME ["/var/lib/berth", "/tmp"]
EXPOSE 5000 8080
ENTRYPOINT ["/usr/local/bin/berth"]
CMD ["serve", "--addr", "0.0.0.0:5000", "--root", "/var/lib/berth"]
