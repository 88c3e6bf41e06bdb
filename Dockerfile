# syntax=docker/dockerfile:1
# baton-controller: a static (musl) binary in a distroless, non-root image.
#   docker build -t baton-controller:0.1.0 .
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-alpine AS build
# ring (rustls) compiles a little C; musl-dev gives the static libc.
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin baton-controller \
 && install -D -m 0755 target/release/baton-controller /out/baton-controller

# No shell, no package manager; CA certificates and a non-root user (65532).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/baton-controller /baton-controller
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/baton-controller"]
