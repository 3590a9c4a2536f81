# syntax=docker/dockerfile:1
# middleway: multi-stage build. Stage 1 caches dependencies, stage 2 builds the
# binary, stage 3 is a slim non-root runtime holding only the binary and CA certificates.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-bookworm AS deps
# make: the jemalloc allocator is built from C source by its -sys crate.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# Build the dependency graph alone first, so source edits reuse this layer.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && cargo build --release --locked --bin middleway \
    && rm -rf src

FROM deps AS build
COPY migrations ./migrations
COPY src ./src
# Touch so cargo rebuilds our crate rather than the placeholder.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin middleway \
    && cp target/release/middleway /usr/local/bin/middleway

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin middleway
COPY --from=build /usr/local/bin/middleway /usr/local/bin/middleway
USER 10001:10001
EXPOSE 8080 9090
# Kubernetes probes /healthz and /readyz; no HEALTHCHECK here.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/middleway"]
CMD ["serve"]
