# The rouse image: rouse-proxy, rouse-controller and rouse-echo on `scratch`
# (the programs and the C libraries they load, nothing else), as user rouse.
#
# Offline, from binaries built on the host (what the tests do):
#   scripts/image               # = cargo build + scripts/image-rootfs + docker build --target prebuilt
# Online, built inside the Rust image (the default target, `image`):
#   docker build -t rouse:dev .
#
# The stages that `--target prebuilt` needs come first and start `FROM
# scratch`, so the offline build never pulls anything, not even with the
# legacy builder (which builds every stage up to the target).
#
# The HEALTHCHECK runs `rouse-echo healthcheck`: it GETs
# $ROUSE_HEALTHCHECK_URL, by default rouse-echo's own
# http://127.0.0.1:$PORT/healthz (PORT defaulting to 8080). For the proxy or
# the controller, point it at their admin /healthz, e.g.
# ROUSE_HEALTHCHECK_URL=http://127.0.0.1:9090/healthz (deploy/compose does).

ARG RUST_IMAGE=docker.io/library/rust:1-bookworm

# --- what every variant of the image has, besides its files ----------------
FROM scratch AS runtime
# scripts/image passes the workspace's version; SOURCE is the repository's
# URL, for whoever publishes the image (--build-arg SOURCE=https://...).
ARG VERSION=0.1.0
ARG SOURCE=
LABEL org.opencontainers.image.title="rouse" \
      org.opencontainers.image.description="Scale-to-zero HTTP proxy: rouse-proxy, rouse-controller and the demo backend rouse-echo" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
ENV PATH=/usr/local/bin
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
    CMD ["rouse-echo", "healthcheck"]
CMD ["rouse-proxy", "--config", "/etc/rouse/rouse.yaml"]

# --- offline: the root filesystem scripts/image assembled -------------------
FROM runtime AS prebuilt
COPY target/image/rootfs/ /

# --- online: build the binaries inside the Rust image ----------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rouse-proxy -p rouse-controller -p rouse-echo \
 && scripts/image-rootfs /rootfs \
        target/release/rouse-proxy target/release/rouse-controller target/release/rouse-echo

# --- the default target: the online image ----------------------------------
FROM runtime AS image
COPY --from=build /rootfs/ /
