# Build: libpq (libpq-dev) is needed to build diesel's PostgreSQL backend,
# and libpq5 at run time.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libpq-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY tenants ./tenants
COPY templates ./templates
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libpq5 ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/switchboard /usr/local/bin/switchboard
ENV SWITCHBOARD_BIND=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["switchboard"]
CMD ["serve"]
