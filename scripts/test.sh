#!/usr/bin/env bash
# The whole test suite, as README.md gives it and .ci/run calls it:
#   1. unit, property, integration and doc tests (cargo test; the broker tests start Debian's
#      redis-server, installed here when missing);
#   2. the library alone: it builds without default features, and then needs none of clap,
#      tracing-subscriber and redis (only the binary and the broker need them);
#   3. the release build of the binary and the examples;
#   4. Autobahn|Testsuite against the server (fuzzingclient) and the client (fuzzingserver);
#   5. the hello-world client against the hello-world server, its output checked;
#   6. the real-browser tests in headless Chromium (echo; the chat on two processes and Redis);
#   7. TLS (scripts/tls-interop.sh): Python websockets, Node ws and Chromium over wss://,
#      hostile TLS peers, certificate errors at start-up; Autobahn in both roles over wss://;
#   8. the container image built from the Dockerfile and checked under podman.
# Each step installs what it needs on a fresh Debian machine. The first failure stops the run.
# The last line is a summary of every step: ok, FAILED or not run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Short names of the steps, in the order they run, for the summary line.
STEPS=("cargo test" "library alone" "release build" "autobahn server" "autobahn client"
    "interop" "hello" "browser" "tls" "container")
DONE=()    # the steps that passed
CURRENT="" # the step running now

step() { # NAME TITLE: starts a step
    CURRENT=$1
    printf '\n== %s\n' "$2"
}
passed() { # marks the current step as passed
    DONE+=("$CURRENT")
    CURRENT=""
}
summary() {
    local rc=$? s d result line=""
    for s in "${STEPS[@]}"; do
        result="not run"
        for d in "${DONE[@]}"; do
            if [[ $d == "$s" ]]; then result=ok; fi
        done
        if [[ $s == "$CURRENT" ]]; then result=FAILED; fi
        line+="${line:+, }$s $result"
    done
    printf '\nsummary: %s\n' "$line"
    exit "$rc"
}
trap summary EXIT
trap 'exit 130' INT TERM

step "cargo test" "cargo test"
# The broker tests start Debian's redis-server (Redis 7) themselves.
if ! command -v redis-server >/dev/null; then
    [[ "$(id -u)" -eq 0 ]] || { echo "redis-server is missing: apt-get install redis-server" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends redis-server \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends redis-server; }
fi
cargo test --locked --all-targets
cargo test --locked --doc
passed

step "library alone" "library alone: builds without default features, needs neither clap, tracing-subscriber nor redis"
cargo build --locked --no-default-features --lib
tree=$(cargo tree --locked --no-default-features --edges normal -p uringws --prefix none)
cli_deps=$(awk '$1 == "clap" || $1 == "tracing-subscriber" || $1 == "redis" { print $1 " " $2 }' <<<"$tree" | sort -u)
if [[ -n $cli_deps ]]; then
    printf 'library alone: without default features uringws still depends on:\n%s\n' "$cli_deps" >&2
    exit 1
fi
printf 'no clap, tracing-subscriber or redis among the library'\''s dependencies\n'
passed

step "release build" "release build"
cargo build --release --locked --bin uringws --examples
passed

# Runs every Autobahn case in both roles at once (each wstest is one Python process, mostly on
# one core; with permessage-deflate on, cases 12.* and 13.* take most of the time). The client
# role's output goes to the file LOG; ARGS go to both. Sets server_status and client_status.
both_roles() { # LOG ARGS...
    local log=$1 client_pid
    shift
    UWS_NO_BUILD=1 scripts/autobahn.sh --client "$@" > "$log" 2>&1 &
    client_pid=$!
    server_status=0
    UWS_NO_BUILD=1 scripts/autobahn.sh "$@" || server_status=$?
    client_status=0
    wait "$client_pid" || client_status=$?
}

step "autobahn server" "Autobahn|Testsuite: both roles at once, compression on (shared)"
scripts/autobahn.sh --install-only
both_roles target/autobahn-client.log
[[ $server_status -eq 0 ]] || exit "$server_status"
passed

step "autobahn client" "Autobahn|Testsuite: client role (ran beside the server role)"
tail -n 30 target/autobahn-client.log
[[ $client_status -eq 0 ]] || exit "$client_status"
passed

step "interop" "Python websockets and Node ws against uringws, both roles, compression on"
UWS_NO_BUILD=1 scripts/interop.sh
passed

step "hello" "hello client against hello server"
scripts/hello.sh
passed

step "browser" "headless Chromium"
UWS_NO_BUILD=1 scripts/browser.sh
passed

step "tls" "TLS: Python websockets, Node ws and Chromium over wss://, hostile TLS peers, certificate errors"
UWS_NO_BUILD=1 scripts/tls-interop.sh
# Autobahn|Testsuite over wss://, every case, compression on, both roles at once (the client
# role against a fuzzingserver with the test certificate): 8 min here.
both_roles target/autobahn-client-tls.log --tls
tail -n 30 target/autobahn-client-tls.log
[[ $server_status -eq 0 ]] || exit "$server_status"
[[ $client_status -eq 0 ]] || exit "$client_status"
passed

step "container" "container image (podman, with and without the io_uring seccomp profile)"
scripts/container.sh
passed
