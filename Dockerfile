# Ward's container image: a release build on the Rust image, run as a
# non-root user on distroless (glibc and libgcc, no shell, no package manager).
#   docker build -t ward:dev .
# Both stages use Debian 12, so the binary finds the glibc it was linked with.

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
    && install -D -m 0755 target/release/ward /out/ward

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/ward /usr/local/bin/ward
# The image serves on every interface; the built-in default is loopback only.
ENV WARD_LISTEN=0.0.0.0:8080
EXPOSE 8080
# 65532 is distroless's "nonroot" user.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ward"]
