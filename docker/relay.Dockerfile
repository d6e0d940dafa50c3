# syntax=docker/dockerfile:1
# outpost-relay container. Build from the repository root:
#
#   docker build -f docker/relay.Dockerfile -t outpost-relay .
#   docker run --rm -p 127.0.0.1:8080:8080 \
#     -e OUTPOST_DATABASE_URL=postgres://postgres:secret@db.example:5432/app \
#     -e OUTPOST_JWT_SECRET=... outpost-relay
#
# Configured by environment only (every `serve` flag has an OUTPOST_* variable;
# see README "Configuration reference"). Not built by CI: see README "Install".

# ---- builder: the same build as CI and `make package` ---------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p outpost-relay \
 && install -D -m 755 target/release/outpost-relay /out/outpost-relay \
 && strip /out/outpost-relay

# ---- runtime ---------------------------------------------------------------
FROM debian:bookworm-slim
# The relay links only glibc (TLS is rustls, compiled in). ca-certificates
# provides the system roots it trusts for Postgres (`sslmode=verify-full`
# without `sslrootcert`) and JWKS URLs. The health check is bash (/dev/tcp),
# already in the image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 outpost \
 && useradd --system --uid 10001 --gid outpost --no-create-home --shell /usr/sbin/nologin outpost
COPY --from=builder /out/outpost-relay /usr/local/bin/outpost-relay
COPY docker/relay-healthcheck.sh /usr/local/bin/outpost-relay-healthcheck
ENV OUTPOST_LISTEN=0.0.0.0:8080 \
    RUST_LOG=info
USER 10001:10001
EXPOSE 8080
# /health answers 200 when the relay reaches Postgres, 503 otherwise.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/outpost-relay-healthcheck"]
# SIGTERM (docker stop) drains open streams for up to 10 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/outpost-relay"]
CMD ["serve"]
