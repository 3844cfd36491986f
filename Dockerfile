# syntax=docker/dockerfile:1
# Switchyard's image: one binary with subcommands (`switchyard ingress`,
# `worker`, `accounting`, `dispatcher`, `migrate`, `all`, `admin`, …) and the
# mock provider for demos and tests. Built in two stages: the Rust toolchain
# never reaches the runtime image, which runs as an unprivileged user.
#
#   docker build -t switchyard:local .
#   docker run --rm -v "$PWD/deploy/compose/switchyard.toml:/etc/switchyard/switchyard.toml:ro" \
#     -p 8080:8080 switchyard:local ingress
#
# (docs/deploy.md says what was and was not run on the project's machines.)

FROM rust:1.94-slim-bookworm AS build
WORKDIR /src
# What the build reads (the sources, the migrations and schemas they embed);
# the registry and target directories are build caches, so a rebuild compiles
# only what changed.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY migrations ./migrations
COPY schemas ./schemas
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin switchyard --bin mock-provider \
    && mkdir -p /out \
    && cp target/release/switchyard target/release/mock-provider /out/

FROM debian:bookworm-slim AS runtime
# CA certificates for the providers' HTTPS; nothing else is installed.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin switchyard
COPY --from=build /out/switchyard /out/mock-provider /usr/local/bin/
USER 10001:10001
# 8080: the ingress (API, admin API, /metrics, /healthz, /readyz);
# 9464: a worker's, accounting's or dispatcher's /metrics, /healthz, /readyz.
EXPOSE 8080 9464
ENV SWITCHYARD_CONFIG=/etc/switchyard/switchyard.toml \
    SWITCHYARD_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["all"]
