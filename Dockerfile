# The one Berth image: `berth serve`, `berth operator`, `berth gc` and `berth crd`.
# Built FROM scratch from a root filesystem assembled locally (no base image is pulled):
#
#   cargo build --release
#   deploy/image/rootfs.sh target/release/berth target/image   # binary + the glibc libs ldd lists
#   docker build -t berth:dev target/image                      # this file is copied there
FROM scratch
COPY rootfs/ /
COPY --chown=65532:65532 data/ /var/lib/berth/
USER 65532:65532
EXPOSE 5000 8080
ENTRYPOINT ["/usr/local/bin/berth"]
CMD ["serve", "--addr", "0.0.0.0:5000", "--root", "/var/lib/berth"]
