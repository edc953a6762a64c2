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
ENV LISTEN_ADDR=0.0.0.0:50051
EXPOSE 50051
ENTRYPOINT ["control-plane"]
CMD ["serve"]
