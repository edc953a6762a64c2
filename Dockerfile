# Builds the control plane; protos compile in-process (no protoc needed).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin control-plane

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 control-plane
COPY --from=build /src/target/release/control-plane /usr/local/bin/control-plane
USER control-plane
# The container listens on all its interfaces, so `serve` needs TLS
# (mount the files and set TLS_CERT_FILE and TLS_KEY_FILE) or, behind a
# TLS-terminating proxy or mesh, ALLOW_PLAINTEXT=true: secure by default, the
# image sets neither (docker-compose.yml sets ALLOW_PLAINTEXT, publishing on
# the host's loopback only).
ENV LISTEN_ADDR=0.0.0.0:50051
# Health probes and Prometheus scrapes (/health/live, /health/ready, /metrics).
ENV HTTP_ADDR=0.0.0.0:9090
EXPOSE 50051 9090
ENTRYPOINT ["control-plane"]
CMD ["serve"]
