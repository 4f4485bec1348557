# qoeflow: one binary for every role (serve, ingest, pipeline, query-server, query, loadgen).
#
#   docker build -t qoeflow .
#   docker run -p 8080:8080 -v qoeflow-data:/var/lib/qoeflow qoeflow          # the embedded default
#   docker run qoeflow pipeline --kinesis-stream beacons --dataset s3://bucket/qoeflow ...
#
# The build stage needs Node.js too: the collector embeds the web player SDK and the dashboard, built
# from their npm lockfiles by the crates' build scripts.
FROM node:20-bookworm-slim AS node

FROM rust:1.95-bookworm AS build
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules /usr/local/lib/node_modules
RUN ln -s /usr/local/lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s /usr/local/lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p qoeflow && cp target/release/qoeflow /usr/local/bin/qoeflow

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/qoeflow --create-home qoeflow
COPY --from=build /usr/local/bin/qoeflow /usr/local/bin/qoeflow
USER 10001
WORKDIR /var/lib/qoeflow
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/qoeflow"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/var/lib/qoeflow"]
