# syntax=docker/dockerfile:1
# shardgate's container image, referenced by k8s/ (image `shardgate`):
#   docker build -t registry.example.com/shardgate:0.1.0 .
# The build stage caches the registry and target folders between builds (BuildKit).
# Debug info is stripped (symbols stay, for backtraces): the binary is 22 MB instead of 148.

FROM rust:1.95-bookworm AS build
# cmake and a C++ compiler: pingora's and aws-lc's native parts.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo cargo build --release --locked --bin shardgate \
    && install -D -m 0755 target/release/shardgate /out/shardgate

# glibc, libgcc_s and CA certificates, nothing else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/shardgate /usr/local/bin/shardgate
# The embedded default config listens on 127.0.0.1; a container is given its config, as k8s/ does.
USER 65532:65532
EXPOSE 8080 8443 9090 7946
ENTRYPOINT ["/usr/local/bin/shardgate"]
CMD ["run", "--config", "/etc/shardgate/config/shardgate.toml"]
