# uringws container image.
#
#   docker build -t uringws .                       # the server (the last stage, the default)
#   docker run --rm -p 9001:9001 --security-opt seccomp=docker/seccomp-io_uring.json uringws
#   docker build --target test -t uringws-test .    # the tests and benchmarks, compiled
#   docker run --rm --security-opt seccomp=docker/seccomp-io_uring.json uringws-test
#
# uringws does its I/O through io_uring, which the default seccomp profiles of Docker (since
# Engine 25) and podman block: run it with docker/seccomp-io_uring.json (made by
# docker/gen-seccomp.py), the default profile plus io_uring_setup, io_uring_enter and
# io_uring_register. Without it the server prints why and exits 1.

# ---- builder: dependencies first (cached while Cargo.toml/Cargo.lock stay the same), then the
# real sources.
FROM docker.io/library/rust:1.95-slim-bookworm AS builder
WORKDIR /build
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
COPY Cargo.toml Cargo.lock ./
# The builder works on the manifest without its [[bench]]/[[test]]/[[example]] tables, so that it
# needs only src/ and the chat example (the test stage puts the real manifest back). Dependencies first, with stub
# sources: fetch every one (dev ones too, so the test stage needs no network), build the release
# ones, then forget the stub crate so the real one is rebuilt whatever its files' mtimes.
RUN set -eux; \
    awk '/^\[\[(bench|test|example)\]\]/ { skip = 1; next } /^\[/ { skip = 0 } !skip' \
        Cargo.toml > Cargo.toml.bin; \
    mv Cargo.toml.bin Cargo.toml; \
    mkdir -p src; \
    echo 'fn main() {}' > src/main.rs; \
    : > src/lib.rs; \
    cargo fetch --locked; \
    cargo build --release --locked --bin uringws; \
    rm -rf src target/release/uringws target/release/uringws.d \
        target/release/.fingerprint/uringws-* target/release/deps/uringws-* \
        target/release/deps/liburingws-*
COPY src ./src
# The binary's `chat` subcommand is the chat example's file (and its page), included by path.
COPY examples/chat.rs examples/chat.html ./examples/
RUN cargo build --release --locked --bin uringws \
    && install -m 0755 target/release/uringws /usr/local/bin/uringws

# ---- test: `docker build --target test`. Compiles the unit, integration and property tests,
# the examples and the benchmarks. They are not run here: RUN steps always run under the
# builder's default seccomp profile, which blocks io_uring. Run them with the profile:
#   docker run --rm --security-opt seccomp=docker/seccomp-io_uring.json uringws-test
FROM builder AS test
COPY Cargo.toml README.md ./
COPY benches ./benches
COPY examples ./examples
COPY tests ./tests
RUN cargo test --locked --no-run \
    && cargo bench --locked --no-run
# CI set: a test that cannot get io_uring fails instead of skipping (see tests/common).
ENV CI=true
CMD ["cargo", "test", "--locked"]

# ---- runtime (default target): the binary on Debian slim, as an unprivileged user.
FROM docker.io/library/debian:bookworm-slim AS runtime
COPY --from=builder /usr/local/bin/uringws /usr/local/bin/uringws
# Plain log lines (no ANSI colours) in `docker logs`.
ENV NO_COLOR=1
# nobody:nogroup
USER 65534:65534
EXPOSE 9001
# SIGTERM (and SIGINT) close every WebSocket with 1001 (going away) and exit 0 within
# --shutdown-grace seconds (default 10, as long as `docker stop` waits by default: give it
# `-t` / `--stop-timeout` a few seconds more, or the server a shorter grace).
STOPSIGNAL SIGTERM
# The slim image has no curl: plain HTTP over bash's /dev/tcp. Port 9001 unless the container
# is given UWS_HEALTH_PORT (for a server started with another --addr).
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${UWS_HEALTH_PORT:-9001} && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q '^HTTP/1\\.[01] 200 '"]
ENTRYPOINT ["/usr/local/bin/uringws"]
CMD ["echo", "--addr", "0.0.0.0:9001"]
