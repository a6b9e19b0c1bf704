# syntax=docker/dockerfile:1
# Images for both binaries, from one build:
#   docker build --target proxy    -t switchboard-proxy .
#   docker build --target operator -t switchboard-operator .
# The runtime is distroless (glibc, CA certificates for the platform's TLS roots, no
# shell, no package manager) and runs as the unprivileged user 65532. See docs/install.md.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The caches make rebuilds incremental; the binaries are copied out of them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p switchboard-proxy -p switchboard-operator \
    && mkdir -p /out \
    && cp target/release/switchboard-proxy target/release/switchboard-operator /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS proxy
COPY --from=build /out/switchboard-proxy /usr/local/bin/switchboard-proxy
USER 65532:65532
# Clients, then metrics.
EXPOSE 8080 9091
ENTRYPOINT ["/usr/local/bin/switchboard-proxy"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/switchboard-operator /usr/local/bin/switchboard-operator
USER 65532:65532
# Config service (HTTPS), then admin (metrics, probes, debug).
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/switchboard-operator"]
CMD ["run"]
