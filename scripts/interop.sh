#!/usr/bin/env bash
# Interoperability with independent implementations, with permessage-deflate on: Python's
# `websockets` and Node's `ws`, each as a client of `uringws echo` (in shared, dedicated and
# dedicated:10 mode) and as a server for examples/interop_client (in the same three modes).
# Every exchange is 1 MiB of JSON text, 1 MiB of random bytes, an empty and 50 small
# messages, each echo checked; the negotiated extension must be permessage-deflate.
#
# Usage: scripts/interop.sh
#
# Installs what it needs: a Python venv with websockets in target/interop/venv (pip), and
# tests/interop/node_modules from the committed lock file (npm ci).
#
# Environment:
#   UWS_NO_BUILD=1   do not run cargo build (target/release/uringws and
#                    target/release/examples/interop_client must exist)
set -euo pipefail
cd "$(dirname "$0")/.."

WEBSOCKETS_VERSION=15.0.1
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
VENV="target/interop/venv"
PEERS=tests/interop
log() { printf '[interop] %s\n' "$*" >&2; }
die() { printf '[interop] error: %s\n' "$*" >&2; exit 1; }

# --- install ---------------------------------------------------------------------------------
if ! "$VENV/bin/python" -c "import websockets, sys; sys.exit(websockets.__version__ != '$WEBSOCKETS_VERSION')" 2>/dev/null; then
    log "creating $VENV with websockets $WEBSOCKETS_VERSION"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        log "python3 -m venv failed; installing python3-venv"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q && apt-get install -y -q --no-install-recommends python3-venv
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q "websockets==$WEBSOCKETS_VERSION"
fi
command -v node >/dev/null || die "node is not installed"
if [[ ! -d "$PEERS/node_modules/ws" ]]; then
    log "npm ci in $PEERS"
    (cd "$PEERS" && npm ci --no-audit --no-fund --silent)
fi
if [[ "${UWS_NO_BUILD:-0}" != 1 ]]; then
    cargo build --release --locked --bin uringws --example interop_client
fi
ECHO="$TARGET_DIR/release/uringws"
CLIENT="$TARGET_DIR/release/examples/interop_client"

PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
passed=0
failed=0
run() { # NAME CMD...: runs one check, prints its line
    local name=$1 out status=0
    shift
    out="$(timeout 60 "$@" 2>&1)" || status=$?
    if [[ $status -eq 0 ]]; then
        printf 'ok - %s: %s\n' "$name" "$(tail -n 1 <<<"$out")"
        passed=$((passed + 1))
    else
        printf 'not ok - %s (exit %s): %s\n' "$name" "$status" "$(tail -n 3 <<<"$out")"
        failed=$((failed + 1))
    fi
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on port $1"
}
# Starts a peer server (its stdout says "PORT N") and sets PORT.
start_peer() { # LOG CMD...
    local log=$1
    shift
    "$@" > "$log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        PORT="$(sed -n 's/^PORT //p' "$log")"
        [[ -n $PORT ]] && return 0
        sleep 0.1
    done
    cat "$log" >&2
    die "$* did not start"
}

MODES=(shared dedicated dedicated:10)

# --- uringws as the server -----------------------------------------------------------------------
for mode in "${MODES[@]}"; do
    port="$(free_port)"
    "$ECHO" echo --addr "127.0.0.1:$port" --threads 1 --compression "$mode" > "target/interop/echo-$mode.log" 2>&1 &
    PIDS+=($!)
    wait_port "$port"
    for peer in default no-context; do
        run "python websockets client ($peer) -> uringws echo --compression $mode" \
            "$VENV/bin/python" "$PEERS/peer.py" client "ws://127.0.0.1:$port/" "$peer"
    done
    for peer in takeover no-context; do
        run "node ws client ($peer) -> uringws echo --compression $mode" \
            node "$PEERS/peer.mjs" client "ws://127.0.0.1:$port/" "$peer"
    done
done

# --- uringws as the client -----------------------------------------------------------------------
for peer in default no-context; do
    start_peer "target/interop/python-$peer.log" "$VENV/bin/python" "$PEERS/peer.py" server "$peer"
    for mode in "${MODES[@]}"; do
        run "uringws client ($mode) -> python websockets server ($peer)" \
            "$CLIENT" "ws://127.0.0.1:$PORT/" "$mode"
    done
done
for peer in takeover takeover-only no-context; do
    start_peer "target/interop/node-$peer.log" node "$PEERS/peer.mjs" server "$peer"
    for mode in "${MODES[@]}"; do
        run "uringws client ($mode) -> node ws server ($peer)" \
            "$CLIENT" "ws://127.0.0.1:$PORT/" "$mode"
    done
done

echo "interop: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
