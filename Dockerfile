# syntax=docker/dockerfile:1
# Multi-stage build of every Winback binary: `winback` (all services in one process, and
# the operator CLI) and one binary per service for the stack mode.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# protoc comes from the protoc-bin-vendored crate: nothing else to install.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
      -p winback -p winback-profiles -p winback-segmentation -p winback-campaigns \
      -p winback-offers -p winback-delivery \
 && mkdir -p /out \
 && cp target/release/winback target/release/winback-profiles target/release/winback-segmentation \
       target/release/winback-campaigns target/release/winback-offers target/release/winback-delivery /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /var/lib/winback winback \
 && mkdir -p /var/lib/winback && chown winback /var/lib/winback
COPY --from=build /out/ /usr/local/bin/
USER winback
WORKDIR /var/lib/winback
ENV WINBACK_LISTEN=0.0.0.0:50051 \
    WINBACK_DATA_DIR=/var/lib/winback \
    WINBACK_TELEMETRY__LOG_FORMAT=json
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --retries=5 CMD ["winback", "health", "--addr", "http://127.0.0.1:50051"]
# The embedded default; the compose stack runs one service binary per container instead.
CMD ["winback", "up"]
