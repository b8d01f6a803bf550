# replayguard in a container. Used by docker-compose.yml.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin replayguard

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/replayguard replayguard \
    && mkdir -p /var/lib/replayguard && chown replayguard /var/lib/replayguard
COPY --from=build /src/target/release/replayguard /usr/local/bin/replayguard
USER replayguard
VOLUME /var/lib/replayguard
EXPOSE 9898
ENTRYPOINT ["replayguard"]
CMD ["run", "--state-dir", "/var/lib/replayguard", "--http", "0.0.0.0:9898"]
