#!/usr/bin/env bash
# Real-browser tests: Debian's Chromium, driven by playwright-core, talks to the hello_server
# example (an echo server) with the browser's own WebSocket (tests/browser/browser_test.mjs);
# then two chat pages on two `uringws chat` processes that share one Redis (Debian's
# redis-server, installed when missing), with Redis stopped for 5 s in the middle
# (tests/browser/chat_test.mjs, which saves a screenshot to target/browser/chat.png).
#
# Usage: scripts/browser.sh
#
# Needs Node >= 20 and npm; installs Debian's `chromium` package with apt-get if
# /usr/bin/chromium is missing (as root). Playwright never downloads a browser here.
#
# Environment:
#   UWS_NO_BUILD=1     do not run cargo build (target/release/examples/hello_server and
#                      target/release/uringws must exist)
#   CARGO_TARGET_DIR   honoured as by cargo (relative to the repository root)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
TEST_DIR="$REPO_ROOT/tests/browser"
CHROMIUM=/usr/bin/chromium
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$REPO_ROOT/$TARGET_DIR"
SERVER_BIN="$TARGET_DIR/release/examples/hello_server"
UWS_BIN="$TARGET_DIR/release/uringws"

log() { printf '[browser] %s\n' "$*" >&2; }
die() { printf '[browser] error: %s\n' "$*" >&2; exit 1; }

# Never let Playwright fetch a browser, whatever else happens.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

# --- 1. Chromium -----------------------------------------------------------------------------
if [[ ! -x "$CHROMIUM" ]]; then
    [[ "$(id -u)" -eq 0 ]] || die "$CHROMIUM is missing and installing it needs root (apt-get install chromium)"
    log "installing Debian's chromium"
    export DEBIAN_FRONTEND=noninteractive
    # Update the package lists only if needed: when apt knows no candidate for chromium yet, or
    # when the install fails (stale lists name a version the mirror no longer has).
    updated=0
    if ! apt-cache policy chromium 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        apt-get update -q
        updated=1
    fi
    if ! apt-get install -y -q --no-install-recommends chromium; then
        [[ $updated -eq 0 ]] || die "apt-get install chromium failed"
        log "apt-get install failed; updating the package lists and retrying"
        apt-get update -q
        apt-get install -y -q --no-install-recommends chromium
    fi
    [[ -x "$CHROMIUM" ]] || die "apt-get installed chromium but $CHROMIUM is still missing"
fi
log "$("$CHROMIUM" --version 2>/dev/null || echo 'chromium (version unknown)')"

# --- 2. playwright-core ----------------------------------------------------------------------
command -v node >/dev/null || die "node is not installed"
command -v npm >/dev/null || die "npm is not installed"
# npm writes node_modules/.package-lock.json on install; if it matches the committed lock file,
# node_modules is current and `npm ci` (which deletes and reinstalls) can be skipped.
if [[ -f "$TEST_DIR/node_modules/.package-lock.json" ]] \
    && [[ -d "$TEST_DIR/node_modules/playwright-core" ]] \
    && node -e '
        const fs = require("fs");
        const a = JSON.parse(fs.readFileSync(process.argv[1], "utf8")).packages;
        const b = JSON.parse(fs.readFileSync(process.argv[2], "utf8")).packages;
        const strip = (p) => Object.fromEntries(Object.entries(p).filter(([k]) => k !== ""));
        process.exit(JSON.stringify(strip(a)) === JSON.stringify(strip(b)) ? 0 : 1);
    ' "$TEST_DIR/package-lock.json" "$TEST_DIR/node_modules/.package-lock.json" 2>/dev/null; then
    log "node_modules is current"
else
    log "npm ci"
    (cd "$TEST_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi

# --- 3. Server -------------------------------------------------------------------------------
if [[ "${UWS_NO_BUILD:-0}" != 1 ]]; then
    log "cargo build --release --locked --example hello_server --bin uringws"
    (cd "$REPO_ROOT" && cargo build --release --locked --example hello_server --bin uringws)
fi
[[ -x "$SERVER_BIN" ]] || die "$SERVER_BIN is missing (build it, or unset UWS_NO_BUILD)"
[[ -x "$UWS_BIN" ]] || die "$UWS_BIN is missing (build it, or unset UWS_NO_BUILD)"
if ! command -v redis-server >/dev/null; then
    [[ "$(id -u)" -eq 0 ]] || die "redis-server is missing and installing it needs root (apt-get install redis-server)"
    log "installing Debian's redis-server"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server \
        || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server; }
fi

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
ADDR="127.0.0.1:$PORT"
SERVER_LOG="$(mktemp -t uringws-browser-server.XXXXXX)"
SERVER_PID=''

# shellcheck disable=SC2317  # invoked through the EXIT trap
cleanup() {
    local rc=$?
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    # Show the server's output on failure, or whenever it said more than its 'listening' line.
    if [[ -s "$SERVER_LOG" ]] && { [[ $rc -ne 0 ]] || grep -qv '^hello_server listening on ' "$SERVER_LOG"; }; then
        log "server output:"
        sed 's/^/    /' "$SERVER_LOG" >&2
    fi
    rm -f "$SERVER_LOG"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting $SERVER_BIN $ADDR"
"$SERVER_BIN" "$ADDR" >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!

# Wait (at most 30 s) until the port accepts connections.
deadline=$((SECONDS + 30))
until python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()' "$PORT" 2>/dev/null; do
    kill -0 "$SERVER_PID" 2>/dev/null || die "hello_server exited before accepting connections"
    (( SECONDS < deadline )) || die "hello_server did not accept connections on $ADDR within 30 s"
    sleep 0.1
done
grep -q "hello_server listening on ws://" "$SERVER_LOG" \
    || log "warning: hello_server did not print its 'listening on' line (got: $(head -c 200 "$SERVER_LOG"))"

# --- 4. Browser test -------------------------------------------------------------------------
status=0
timeout 120 node "$TEST_DIR/browser_test.mjs" "ws://$ADDR" || status=$?
if [[ $status -eq 124 ]]; then
    log "browser test timed out after 120 s"
fi
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "hello_server is no longer running after the browser test"
    [[ $status -ne 0 ]] || status=1
fi
[[ $status -eq 0 ]] || exit "$status"

# --- 5. Chat across two processes and one Redis ----------------------------------------------
mkdir -p "$TARGET_DIR/browser"
timeout 180 node "$TEST_DIR/chat_test.mjs" "$UWS_BIN" "$TARGET_DIR/browser/chat.png" || status=$?
[[ $status -ne 124 ]] || log "chat test timed out after 180 s"
exit "$status"
