# The rouse image: rouse-proxy, rouse-controller and rouse-echo on `scratch`
# (the programs and the C libraries they load, nothing else), as user rouse.
#
# Offline, from binaries built on the host (what the tests do):
#   scripts/image               # = cargo build + scripts/image-rootfs + docker build --target prebuilt
# Online, built inside the Rust image:
#   docker build -t rouse:dev .

# --- offline: the root filesystem scripts/image assembled -------------------
FROM scratch AS prebuilt
COPY target/image/rootfs/ /
ENV PATH=/usr/local/bin
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
    CMD ["rouse-echo", "healthcheck"]
CMD ["rouse-proxy", "--config", "/etc/rouse/rouse.yaml"]
