#!/usr/bin/env bash
# TLS (wss://) interoperability and robustness of `uringws echo --tls-cert --tls-key`
# (issue 14). Certificates come from scripts/tls-certs.sh (a test CA; RSA, EC and expired
# leaves for localhost and 127.0.0.1) in target/tls/certs. Every check is bounded by a timeout.
#
#   a. Python websockets 15.0.1 as a wss:// client trusting only the test CA: a JSON text,
#      1 MiB of binary, empty messages, 50 small ones, all echoed exactly, clean close; with
#      TLS 1.2 forced, TLS 1.3 forced, ALPN http/1.1 offered, and by name (wss://localhost,
#      so with SNI); and the other key forms (EC P-256 PKCS#8 and SEC1, RSA PKCS#1); a client
#      refuses the expired certificate. Hand-driven TLS: GET /healthz, a ClientHello one byte
#      per write, close_notify after the WebSocket close handshake.
#   b. Node ws 8.18.3 as a wss:// client (the `ca` option): the same messages; TLS 1.2, 1.3,
#      ALPN.
#   c. Headless Chromium (Debian's, through playwright-core): GET https://.../healthz, then a
#      JSON text and 1 MiB of binary over wss:// from a page (tests/browser/tls_test.mjs).
#   d. Hostile peers, each followed by a normal wss client that must still be served: half a
#      ClientHello then silence (closed within the handshake timeout), plain HTTP to the TLS
#      port and random bytes (closed at once, < 1 s), a TLS handshake with no HTTP request
#      (closed within the handshake timeout), a reset (SO_LINGER 0) in the middle of a record.
#   e. Certificate errors at start-up: a key that does not match the certificate, files that
#      are not PEM, missing files, a key file with no key: exit status non-zero, exactly one
#      line on stderr naming the file or the cause, no panic.
#   f. uringws's client (examples/interop_client, trusting only the test CA) against Python
#      websockets and Node ws (https.createServer) TLS servers: 1 MiB JSON, 1 MiB binary, small
#      messages, with and without permessage-deflate; without the CA it refuses the server.
# Prints one `ok - ...` / `not ok - ...` (or `skip - ...`) line per check and a final
# `tls-interop: N passed, N failed[, N skipped]`; exits non-zero on any failure.
#
# Usage: scripts/tls-interop.sh
#
# Installs what it needs, as scripts/interop.sh and scripts/browser.sh do: the Python venv
# target/interop/venv (websockets 15.0.1), tests/interop/node_modules and
# tests/browser/node_modules (npm ci), Debian's openssl, chromium and libnss3-tools (certutil,
# to make Chromium trust the test CA) when missing and running as root.
#
# Environment:
#   UWS_TLS_SERVER_CMD  the server command, word-split; the script appends
#                       `--addr 127.0.0.1:PORT --tls-cert CHAIN --tls-key KEY
#                       --handshake-timeout N` to it and waits for "listening on" on its
#                       stderr (default: target/release/uringws echo)
#   STANDIN=1           develop the checks without uringws TLS: the server is the Python stand-in
#                       (tests/interop/tls_client.py serve) unless UWS_TLS_SERVER_CMD says
#                       otherwise, and parts d and e print `skip - ... (needs uringws TLS)`
#   UWS_NO_BUILD=1      do not run cargo build (implied by STANDIN=1 and UWS_TLS_SERVER_CMD)
#   UWS_TLS_HANDSHAKE_TIMEOUT  the --handshake-timeout given to the server (default 2); the
#                       slow-peer checks allow it plus 1.5 s
#   UWS_TLS_CERTS       where the certificates go (default target/tls/certs)
#   UWS_CHROMIUM_TRUST  nss, spki or ignore: how Chromium accepts the test certificate (see
#                       tests/browser/tls_test.mjs; default nss when certutil is there)
#   UWS_TLS_SKIP_BROWSER=1  leave out part c (printed as skipped)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

WEBSOCKETS_VERSION=15.0.1
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
VENV="$ROOT/target/interop/venv"
PY="$VENV/bin/python"
PEERS="$ROOT/tests/interop"
BROWSER_DIR="$ROOT/tests/browser"
CERTS="${UWS_TLS_CERTS:-$ROOT/target/tls/certs}"
LOGS="$ROOT/target/tls/logs"
HT="${UWS_TLS_HANDSHAKE_TIMEOUT:-2}"
SLOW_LIMIT="$(python3 -c "print($HT + 1.5)")"
STANDIN="${STANDIN:-0}"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

log() { printf '[tls-interop] %s\n' "$*" >&2; }
die() { printf '[tls-interop] error: %s\n' "$*" >&2; exit 1; }
as_root_install() { # PACKAGE: apt-get install when root; returns non-zero otherwise
    [[ "$(id -u)" -eq 0 ]] || return 1
    log "installing Debian's $1"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$1" >&2 \
        || { DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$1" >&2; }
}

# --- install ---------------------------------------------------------------------------------
if ! "$PY" -c "import websockets, sys; sys.exit(websockets.__version__ != '$WEBSOCKETS_VERSION')" 2>/dev/null; then
    log "creating $VENV with websockets $WEBSOCKETS_VERSION"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        as_root_install python3-venv || die "python3 -m venv failed (install python3-venv)"
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q "websockets==$WEBSOCKETS_VERSION"
fi
command -v node >/dev/null || die "node is not installed"
if [[ ! -d "$PEERS/node_modules/ws" ]]; then
    log "npm ci in $PEERS"
    (cd "$PEERS" && npm ci --no-audit --no-fund --silent)
fi
if [[ "${UWS_TLS_SKIP_BROWSER:-0}" != 1 ]]; then
    [[ -x /usr/bin/chromium ]] || as_root_install chromium || die "/usr/bin/chromium is missing (apt-get install chromium, or UWS_TLS_SKIP_BROWSER=1)"
    command -v certutil >/dev/null || as_root_install libnss3-tools \
        || log "certutil is missing: Chromium will accept the test CA by its key hash (spki) instead"
    if [[ ! -d "$BROWSER_DIR/node_modules/playwright-core" ]]; then
        log "npm ci in $BROWSER_DIR"
        (cd "$BROWSER_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    fi
fi
scripts/tls-certs.sh "$CERTS"
mkdir -p "$LOGS"

if [[ -n "${UWS_TLS_SERVER_CMD:-}" ]]; then
    read -r -a SERVER_CMD <<<"$UWS_TLS_SERVER_CMD"
elif [[ $STANDIN == 1 ]]; then
    SERVER_CMD=("$PY" "$PEERS/tls_client.py" serve)
else
    if [[ "${UWS_NO_BUILD:-0}" != 1 ]]; then
        cargo build --release --locked --bin uringws
    fi
    SERVER_CMD=("$TARGET_DIR/release/uringws" echo)
fi
log "server command: ${SERVER_CMD[*]} --addr 127.0.0.1:PORT --tls-cert CHAIN --tls-key KEY --handshake-timeout $HT"

# --- checks ----------------------------------------------------------------------------------
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

passed=0
failed=0
skipped=0
ok() { printf 'ok - %s\n' "$*"; passed=$((passed + 1)); }
not_ok() { printf 'not ok - %s\n' "$*"; failed=$((failed + 1)); }
skip() { printf 'skip - %s: skipped (needs uringws TLS)\n' "$*"; skipped=$((skipped + 1)); }

run() { # NAME CMD...: one check; its last output line is the detail
    local name=$1 out status=0
    shift
    out="$(timeout 60 "$@" 2>&1)" || status=$?
    if [[ $status -eq 0 ]]; then
        ok "$name: $(tail -n 1 <<<"$out")"
    else
        [[ $status -ne 124 ]] || out+=$'\n(timed out after 60 s)'
        not_ok "$name (exit $status): $(tail -n 3 <<<"$out" | tr '\n' ' ')"
    fi
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

# start_server NAME CHAIN KEY: starts the server, sets PORT and SERVER_PID; returns non-zero
# (after a `not ok` line) when it does not say "listening on 127.0.0.1:PORT" within 15 s.
start_server() {
    local name=$1 chain=$2 key=$3 logf="$LOGS/server-$1.log"
    PORT="$(free_port)"
    : >"$logf" # truncated here, not by the redirection below, which may run after the first grep
    "${SERVER_CMD[@]}" --addr "127.0.0.1:$PORT" --tls-cert "$chain" --tls-key "$key" \
        --handshake-timeout "$HT" >"$logf" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    for _ in $(seq 150); do
        if grep -q "listening on 127.0.0.1:$PORT" "$logf"; then return 0; fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            not_ok "server ($name) starts with --tls-cert ${chain#"$ROOT/"} --tls-key ${key#"$ROOT/"}: exited: $(tail -n 2 "$logf" | tr '\n' ' ')"
            return 1
        fi
        sleep 0.1
    done
    not_ok "server ($name) starts: no 'listening on' line within 15 s: $(tail -n 2 "$logf" | tr '\n' ' ')"
    return 1
}
stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

TLS_PY=("$PY" "$PEERS/tls_client.py")
CA="$CERTS/ca.pem"

# A server binary without TLS yet: say so once, clearly, rather than failing every check.
if [[ $STANDIN != 1 && -z "${UWS_TLS_SERVER_CMD:-}" ]] \
    && ! "${SERVER_CMD[@]}" --help 2>/dev/null | grep -q -- '--tls-cert'; then
    not_ok "${SERVER_CMD[*]} --help lists --tls-cert (this uringws has no TLS; STANDIN=1 runs the checks against a stand-in)"
    echo "tls-interop: $passed passed, $failed failed"
    exit 1
fi

still_served() { run "$1 ... then a wss client is still served" "${TLS_PY[@]}" echo "$URL" --ca "$CA" --quick; }

# --- the main server: RSA leaf + CA, PKCS#8 key ------------------------------------------------
if start_server main "$CERTS/server-chain.pem" "$CERTS/server-key.pem"; then
    MAIN_PID=$SERVER_PID
    URL="wss://127.0.0.1:$PORT/"
    ok "server (main) listens on 127.0.0.1:$PORT: $(grep -m1 'listening on' "$LOGS/server-main.log")"

    # a. Python websockets
    run "a1 python websockets wss client (TLS default)" "${TLS_PY[@]}" echo "$URL" --ca "$CA"
    run "a2 python websockets wss client (TLS 1.2 forced)" "${TLS_PY[@]}" echo "$URL" --ca "$CA" --tls 1.2
    run "a3 python websockets wss client (TLS 1.3 forced)" "${TLS_PY[@]}" echo "$URL" --ca "$CA" --tls 1.3
    run "a4 python websockets wss client offering ALPN http/1.1" "${TLS_PY[@]}" echo "$URL" --ca "$CA" --alpn
    run "a5 python websockets wss://localhost (SNI localhost, DNS SAN)" "${TLS_PY[@]}" echo "wss://localhost:$PORT/" --ca "$CA" --quick
    run "a6 GET /healthz over TLS" "${TLS_PY[@]}" raw healthz 127.0.0.1 "$PORT" --ca "$CA"
    run "a7 ClientHello sent one byte per write still completes" "${TLS_PY[@]}" raw dribble-hello 127.0.0.1 "$PORT" --ca "$CA"
    run "a8 WebSocket close over TLS ends with close_notify" "${TLS_PY[@]}" raw close-notify 127.0.0.1 "$PORT" --ca "$CA" --within 2

    # b. Node ws
    run "b1 node ws wss client (TLS default)" node "$PEERS/tls_client.mjs" "$URL" "$CA"
    run "b2 node ws wss client (TLS 1.2 forced)" node "$PEERS/tls_client.mjs" "$URL" "$CA" 1.2
    run "b3 node ws wss client (TLS 1.3 forced)" node "$PEERS/tls_client.mjs" "$URL" "$CA" 1.3
    run "b4 node ws wss client offering ALPN http/1.1" env UWS_ALPN=1 node "$PEERS/tls_client.mjs" "$URL" "$CA"

    # c. Chromium
    if [[ "${UWS_TLS_SKIP_BROWSER:-0}" == 1 ]]; then
        printf 'skip - c chromium: UWS_TLS_SKIP_BROWSER=1\n'
        skipped=$((skipped + 1))
    else
        bstatus=0
        timeout 120 node "$BROWSER_DIR/tls_test.mjs" "$URL" "$CA" >"$LOGS/browser.out" 2>"$LOGS/browser.err" || bstatus=$?
        bseen=0
        while IFS= read -r line; do
            case $line in
                "ok - "*) ok "c chromium: ${line#ok - }"; bseen=1 ;;
                "not ok - "*) not_ok "c chromium: ${line#not ok - }"; bseen=1 ;;
            esac
        done <"$LOGS/browser.out"
        if [[ $bstatus -ne 0 && $bseen -eq 0 ]] || [[ $bstatus -eq 124 ]]; then
            not_ok "c chromium test (exit $bstatus): $(tail -n 3 "$LOGS/browser.err" | tr '\n' ' ')"
        fi
        [[ ! -s "$LOGS/browser.err" ]] || log "chromium console/stderr: $LOGS/browser.err"
    fi

    # d. hostile peers
    if [[ $STANDIN == 1 ]]; then
        for n in "d1 half a ClientHello, then silence" "d2 plain HTTP to the TLS port" \
            "d3 random bytes instead of a ClientHello" "d4 TLS handshake, no HTTP request" \
            "d5 RST in the middle of a record after the WebSocket handshake"; do
            skip "$n"
        done
    else
        run "d1 half a ClientHello, then silence: closed within ${SLOW_LIMIT} s" \
            "${TLS_PY[@]}" raw half-hello 127.0.0.1 "$PORT" --ca "$CA" --within "$SLOW_LIMIT"
        still_served d1
        run "d2 plain HTTP to the TLS port: closed within 1 s" \
            "${TLS_PY[@]}" raw plain-http 127.0.0.1 "$PORT" --ca "$CA" --within 1
        still_served d2
        run "d3 random bytes instead of a ClientHello: closed within 1 s" \
            "${TLS_PY[@]}" raw garbage 127.0.0.1 "$PORT" --ca "$CA" --within 1
        still_served d3
        run "d4 TLS handshake, no HTTP request: closed within ${SLOW_LIMIT} s" \
            "${TLS_PY[@]}" raw idle-after-tls 127.0.0.1 "$PORT" --ca "$CA" --within "$SLOW_LIMIT"
        still_served d4
        run "d5 RST in the middle of a record after the WebSocket handshake" \
            "${TLS_PY[@]}" raw reset-mid-record 127.0.0.1 "$PORT" --ca "$CA"
        sleep 0.3
        still_served d5
    fi
    if kill -0 "$MAIN_PID" 2>/dev/null; then
        ok "server (main) still running after all of the above"
    else
        not_ok "server (main) exited during the checks: $(tail -n 3 "$LOGS/server-main.log" | tr '\n' ' ')"
    fi
    if grep -q 'panicked' "$LOGS/server-main.log"; then
        not_ok "server (main) log has no panic: $(grep -m1 'panicked' "$LOGS/server-main.log")"
    else
        ok "server (main) log has no panic ($(grep -c . "$LOGS/server-main.log") lines in ${LOGS#"$ROOT/"}/server-main.log)"
    fi
    stop_server
fi

# --- other key forms and certificates --------------------------------------------------------
variant() { # NUMBER NAME CHAIN KEY DESCRIPTION
    local n=$1
    shift
    if start_server "$1" "$2" "$3"; then
        run "$n $4" "${TLS_PY[@]}" echo "wss://127.0.0.1:$PORT/" --ca "$CA" --quick
        stop_server
    fi
}
variant a9 ec "$CERTS/ec-chain.pem" "$CERTS/ec-key.pem" "EC P-256 certificate, PKCS#8 key (ec-key.pem)"
variant a10 ec-sec1 "$CERTS/ec-chain.pem" "$CERTS/ec-sec1-key.pem" "EC P-256 certificate, SEC1 key (BEGIN EC PRIVATE KEY)"
variant a11 rsa-pkcs1 "$CERTS/server-chain.pem" "$CERTS/rsa-key.pem" "RSA certificate, PKCS#1 key (BEGIN RSA PRIVATE KEY)"
variant a12 leaf-only "$CERTS/server-cert.pem" "$CERTS/server-key.pem" "leaf certificate alone (no CA in the chain file)"
if start_server expired "$CERTS/expired-chain.pem" "$CERTS/expired-key.pem"; then
    run "a13 an expired certificate is served as given, and a client refuses it" \
        "${TLS_PY[@]}" reject "wss://127.0.0.1:$PORT/" --ca "$CA" --expect "expired"
    stop_server
else
    log "(a server may refuse an expired certificate at start-up: see the line above)"
fi

# --- f. uringws's client against Python websockets and Node ws TLS servers -----------------------
# examples/interop_client: 1 MiB of JSON, 1 MiB of random bytes, an empty and 50 small messages,
# every echo checked, trusting only the test CA; with and without permessage-deflate.
CLIENT_BIN="$TARGET_DIR/release/examples/interop_client"
if [[ $STANDIN == 1 ]]; then
    skip "f uringws's client against TLS servers"
elif [[ ! -x "$CLIENT_BIN" ]]; then
    not_ok "f $CLIENT_BIN is missing (cargo build --release --examples)"
else
    peer_server() { # NAME CMD...: starts a peer TLS server (CMD names its port), waits for "listening on"
        local name=$1 logf="$LOGS/peer-$1.log"
        shift
        : >"$logf"
        "$@" >"$logf" 2>&1 &
        SERVER_PID=$!
        PIDS+=("$SERVER_PID")
        for _ in $(seq 150); do
            grep -q "listening on" "$logf" && return 0
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        not_ok "f $name TLS server starts: $(tail -n 2 "$logf" | tr '\n' ' ')"
        return 1
    }
    PY_PORT=$(free_port)
    if peer_server python "${TLS_PY[@]}" serve --addr "127.0.0.1:$PY_PORT" --tls-cert "$CERTS/server-chain.pem" --tls-key "$CERTS/server-key.pem"; then
        run "f1 uringws client against Python websockets over TLS (wss://localhost)" \
            "$CLIENT_BIN" "wss://localhost:$PY_PORT/" off --ca "$CA"
        run "f2 uringws client against Python websockets over TLS (wss://127.0.0.1)" \
            "$CLIENT_BIN" "wss://127.0.0.1:$PY_PORT/" off --ca "$CA"
        stop_server
    fi
    NODE_PORT=$(free_port)
    if peer_server node node "$PEERS/tls_server.mjs" "127.0.0.1:$NODE_PORT" "$CERTS/server-chain.pem" "$CERTS/server-key.pem"; then
        run "f3 uringws client against Node ws (https.createServer)" \
            "$CLIENT_BIN" "wss://localhost:$NODE_PORT/" off --ca "$CA"
        run "f4 uringws client against Node ws over TLS, permessage-deflate" \
            "$CLIENT_BIN" "wss://localhost:$NODE_PORT/" dedicated --ca "$CA"
        stop_server
    fi
    # An untrusted server: the client refuses it with one line naming the cause.
    NODE_PORT=$(free_port)
    if peer_server node-untrusted node "$PEERS/tls_server.mjs" "127.0.0.1:$NODE_PORT" "$CERTS/server-chain.pem" "$CERTS/server-key.pem"; then
        out="$(timeout 20 "$CLIENT_BIN" "wss://localhost:$NODE_PORT/" off 2>&1)" && st=0 || st=$?
        if [[ $st -ne 0 ]] && grep -q "not signed by a trusted CA" <<<"$out"; then
            ok "f5 without --ca the client refuses the test CA's server: $out"
        else
            not_ok "f5 without --ca the client refuses the test CA's server (exit $st): $out"
        fi
        stop_server
    fi
fi

# --- e. certificate errors at start-up -----------------------------------------------------------
printf 'this is not a PEM file\n' >"$LOGS/not-pem.txt"
openssl x509 -in "$CERTS/server-cert.pem" -outform der -out "$LOGS/server-cert.der"
# start_error NAME CHAIN KEY FILE CAUSE_ERE: the server must exit non-zero within 10 s with one
# line on stderr that names FILE (the offending path's last component) or matches CAUSE_ERE
# (case-sensitive, so that "PEM" is not found in a ".pem" path), and no panic.
start_error() {
    local name=$1 chain=$2 key=$3 file=$4 cause=$5 errf="$LOGS/error-${1%% *}.err" status=0 lines first
    if [[ $STANDIN == 1 ]]; then
        skip "$name"
        return
    fi
    timeout 10 "${SERVER_CMD[@]}" --addr "127.0.0.1:$(free_port)" --tls-cert "$chain" --tls-key "$key" \
        --handshake-timeout "$HT" >"$LOGS/error-${1%% *}.out" 2>"$errf" </dev/null || status=$?
    lines=$(grep -c . "$errf" || true)
    first=$(grep -m1 . "$errf" || true)
    if [[ $status -eq 124 ]]; then
        not_ok "$name: the server started anyway (still running after 10 s; stderr: $(head -c 300 "$errf" | tr '\n' ' '))"
    elif [[ $status -eq 0 ]]; then
        not_ok "$name: exit status 0 (stderr: $(head -c 300 "$errf" | tr '\n' ' '))"
    elif grep -q 'panicked' "$errf"; then
        not_ok "$name: exit $status with a panic: $(grep -m1 panicked "$errf")"
    elif [[ $lines -ne 1 ]]; then
        not_ok "$name: exit $status with $lines lines on stderr, not one: $(head -c 400 "$errf" | tr '\n' '|')"
    elif ! grep -qF -- "$file" <<<"$first" && ! grep -Eq -- "$cause" <<<"$first"; then
        not_ok "$name: exit $status, but the line names neither $file nor the cause (/$cause/): $first"
    else
        ok "$name: exit $status: $first"
    fi
}
start_error "e1 key that does not match the certificate" "$CERTS/server-chain.pem" "$CERTS/other-key.pem" \
    other-key.pem "match|[Ii]nconsistent"
start_error "e2 certificate file in DER, not PEM" "$LOGS/server-cert.der" "$CERTS/server-key.pem" \
    server-cert.der "PEM|[Nn]o certificates?"
start_error "e3 key file that is not PEM (text)" "$CERTS/server-chain.pem" "$LOGS/not-pem.txt" \
    not-pem.txt "PEM|[Nn]o (private )?key"
start_error "e4 missing certificate file" "$LOGS/no-such-chain.pem" "$CERTS/server-key.pem" \
    no-such-chain.pem "[Nn]o such file|not found|does not exist"
start_error "e5 missing key file" "$CERTS/server-chain.pem" "$LOGS/no-such-key.pem" \
    no-such-key.pem "[Nn]o such file|not found|does not exist"
start_error "e6 key file with no private key in it (the leaf certificate given as the key)" \
    "$CERTS/server-chain.pem" "$CERTS/server-cert.pem" server-cert.pem "[Nn]o (private )?key|not a (private )?key"

summary="tls-interop: $passed passed, $failed failed"
[[ $skipped -eq 0 ]] || summary+=", $skipped skipped"
[[ $failed -eq 0 ]] || log "server logs: ${LOGS#"$ROOT/"}/"
echo "$summary"
[[ $failed -eq 0 ]]
