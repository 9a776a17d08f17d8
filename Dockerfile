# syntax=docker/dockerfile:1
# Multi-stage build: compile with the Rust toolchain, run on debian-slim as a non-root user.
#   docker build -t inference-gateway .
#   docker run --rm -p 8080:8080 -e OPENAI_API_KEY=sk-... inference-gateway

FROM rust:1-bookworm AS build
# pingora-core builds zlib-ng with cmake.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The gateway and its command line, igw (for `docker exec ... igw status`).
RUN cargo build --release --locked -p inference-gateway -p igw \
 && for b in inference-gateway igw; do \
      objcopy --only-keep-debug target/release/$b target/release/$b.debug \
      && objcopy --strip-all --add-gnu-debuglink=target/release/$b.debug target/release/$b; \
    done

FROM debian:bookworm-slim
# ca-certificates: TLS to providers; curl: the HEALTHCHECK.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /src/target/release/inference-gateway /usr/local/bin/inference-gateway
COPY --from=build /src/target/release/igw /usr/local/bin/igw
COPY conf/gateway.toml /etc/inference-gateway/gateway.toml
# The control plane's store (SQLite): keys issued at run time and the spend ledger. Mount a
# volume here to keep them, or set DATABASE_URL=postgres://... for several replicas.
RUN mkdir -p /var/lib/inference-gateway && chown 10001:10001 /var/lib/inference-gateway
VOLUME ["/var/lib/inference-gateway"]
USER 10001:10001
ENV SERVER_HOST=0.0.0.0 \
    SERVER_PORT=8080 \
    DATABASE_URL=sqlite:///var/lib/inference-gateway/igw.db \
    SERVER_PID_FILE=/tmp/inference-gateway.pid \
    SERVER_UPGRADE_SOCK=/tmp/inference-gateway-upgrade.sock
EXPOSE 8080 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/health || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/inference-gateway"]
CMD ["-c", "/etc/inference-gateway/gateway.toml"]
