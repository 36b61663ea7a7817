# syntax=docker/dockerfile:1
#
# The authplane operator image: `docker build -t authplane:dev .`
#
# Builder: Debian 12 with the Rust toolchain CI uses. aws-lc-rs (the crypto under rustls and
# jsonwebtoken) compiles AWS-LC from C sources with the platform's gcc; on the glibc target
# that is the build this project already runs and tests everywhere, with no cross compiler.
# A static musl build would need musl-gcc to build AWS-LC, a path we do not test, and
# musl's allocator is slow for a multi-threaded server.
# Runtime: distroless cc-debian12 (glibc and libgcc of the same Debian release as the
# builder, CA certificates, no shell, no package manager), as its nonroot user 65532.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin authplane \
    && cp target/release/authplane /authplane \
    && strip /authplane

FROM ${RUNTIME_IMAGE}
COPY --from=build /authplane /authplane
USER 65532:65532
# 8080: HTTP (JWKS, discovery, /authz, /tokenreview, /metrics, probes); 8443: HTTPS and the
# admission webhook.
EXPOSE 8080 8443
ENTRYPOINT ["/authplane"]
CMD ["--help"]
