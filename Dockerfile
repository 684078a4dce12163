# syntax=docker/dockerfile:1
# changecast: a multi-stage build. The final image holds the binary, CA certificates and
# a non-root user; it needs a PostgreSQL given by DATABASE_URL (see docker-compose.yml).

FROM rust:1-bookworm AS builder
WORKDIR /build
COPY . .
# Cache mounts keep the registry and build artefacts between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked \
    && cp target/release/changecast /usr/local/bin/changecast

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 changecast \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin changecast
COPY --from=builder /usr/local/bin/changecast /usr/local/bin/changecast
USER 10001:10001
ENV CHANGECAST_LISTEN=0.0.0.0:8080
EXPOSE 8080
# No curl in the slim image: the binary checks itself (GET /healthz on CHANGECAST_LISTEN).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["changecast", "healthcheck"]
ENTRYPOINT ["changecast"]
CMD ["serve"]
