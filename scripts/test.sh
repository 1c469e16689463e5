#!/usr/bin/env bash
# The whole test suite, as README.md gives it and .ci/run calls it:
#   1. unit, property, integration and doc tests (cargo test);
#   2. Autobahn|Testsuite against the server (fuzzingclient) and the client (fuzzingserver);
#   3. the hello-world client against the hello-world server, its output checked;
#   4. the real-browser test in headless Chromium;
#   5. the container image built from the Dockerfile and checked under podman.
# Each step installs what it needs on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "cargo test"
cargo test --locked --all-targets
cargo test --locked --doc

step "release build"
cargo build --release --locked --bin uringws --examples

step "Autobahn|Testsuite: server role"
UWS_NO_BUILD=1 scripts/autobahn.sh

step "Autobahn|Testsuite: client role"
UWS_NO_BUILD=1 scripts/autobahn.sh --client

step "hello client against hello server"
scripts/hello.sh

step "headless Chromium"
UWS_NO_BUILD=1 scripts/browser.sh

step "container image (podman, with and without the io_uring seccomp profile)"
scripts/container.sh
