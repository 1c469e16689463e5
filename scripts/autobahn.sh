#!/usr/bin/env bash
# Run the Autobahn|Testsuite `fuzzingclient` against the uringws echo server.
#
# Usage: scripts/autobahn.sh [--install-only] [--client] [--tls] [--cases 'PATTERN,...']
#                           [--compression MODE] [--server-cmd 'CMD with {port}']
#
#   --client             test the client role instead: wstest runs as `fuzzingserver` and
#                        examples/autobahn_client is the testee (summary:
#                        scripts/autobahn-client-summary.txt)
#   --tls                over TLS (Twisted with pyOpenSSL), with scripts/tls-certs.sh's test
#                        certificates. Server role: wstest connects to wss://, the server gets
#                        --tls-cert/--tls-key; work dir target/autobahn-tls, a full run's summary
#                        goes to scripts/autobahn-tls-summary.txt. With --client: the
#                        fuzzingserver serves wss:// with the server certificate and the testee
#                        trusts the test CA (--ca); work dir target/autobahn-client-tls, summary
#                        scripts/autobahn-client-tls-summary.txt
#   --install-only       install (or verify the cached install of) wstest and exit
#   --cases LIST         comma-separated Autobahn case patterns (default: '*', i.e. all cases)
#   --compression MODE   permessage-deflate mode of the testee: shared (default), dedicated,
#                        dedicated:BITS or off (then cases 12.* and 13.* are UNIMPLEMENTED, which
#                        the summary counts as failures). A run with a mode other than the
#                        default writes its summary under target/autobahn only.
#   --server-cmd CMD     command that starts the server; '{port}' is replaced with the port.
#                        Default: target/release/uringws echo --addr 127.0.0.1:{port} --threads 2
#                        --compression MODE
#                        (built first with cargo unless --server-cmd is given or UWS_NO_BUILD=1)
#
# Environment:
#   UWS_AUTOBAHN_CACHE   install cache (default: ${XDG_CACHE_HOME:-$HOME/.cache}/uringws-autobahn)
#   UWS_AUTOBAHN_TIMEOUT seconds allowed for the wstest run (default: 1500)
#   UWS_NO_BUILD=1       do not run cargo build
#
# Autobahn|Testsuite needs Python 2.7, which Debian bookworm lacks: python2.7 is fetched from
# Debian bullseye with a private apt configuration (the system's apt state is not touched) and
# extracted into $CACHE/root; wstest and its pinned dependencies go into $CACHE/site, with
# wsaccel (wstest's C masking and UTF-8 validation) built there by gcc.
# Reports go to target/autobahn/reports (target/autobahn-client/reports for --client); a full
# run (no --cases, default compression) writes the summary to scripts/autobahn-summary.txt, any
# other run only to target/autobahn*/summary.txt.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

CACHE="${UWS_AUTOBAHN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/uringws-autobahn}"
ROOT="$CACHE/root"
SITE="$CACHE/site"
SITE_PACKAGES="$SITE/lib/python2.7/site-packages"
MARKER="$CACHE/install-complete"
WSTEST="$CACHE/bin/wstest"

# libpython2.7-dev only for its headers, to build wsaccel.
DEBS=(python2.7 python2.7-minimal libpython2.7-stdlib libpython2.7-minimal libpython2.7-dev
    libssl1.1 libffi7)
PIP_BOOTSTRAP=(pip==20.3.4 setuptools==44.1.1 wheel==0.37.1)
PINS=(
    txaio==2.1.0 incremental==16.10.1 pyOpenSSL==19.1.0 cryptography==3.3.2 Twisted==19.10.0
    zope.interface==4.6.0 jinja2==2.11.3 markupsafe==1.1.1 Werkzeug==1.0.1 klein==17.10.0
    service_identity==18.1.0 unittest2==1.1.0 six==1.16.0 'autobahn[twisted]==0.10.9'
    autobahntestsuite==0.8.2
)
# wstest masks, unmasks and validates UTF-8 byte by byte in Python unless wsaccel (two C
# extensions) is importable; without it wstest, not the testee, is the bottleneck of cases 12.*
# and 13.* (1000 messages of up to 128 KiB each), and the full suite takes most of an hour.
WSACCEL=wsaccel==0.6.2
# The marker records what was installed; a change to the lists above forces a reinstall.
MARKER_CONTENT="uringws-autobahn v3: ${DEBS[*]} | ${PIP_BOOTSTRAP[*]} | ${PINS[*]} | $WSACCEL"

log() { printf '[autobahn] %s\n' "$*" >&2; }
die() { printf '[autobahn] error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

INSTALL_ONLY=0
CLIENT=0
TLS=0
CASES='*'
SERVER_CMD=''
COMPRESSION=shared
while [[ $# -gt 0 ]]; do
    case "$1" in
        --install-only) INSTALL_ONLY=1; shift ;;
        --client) CLIENT=1; shift ;;
        --tls) TLS=1; shift ;;
        --cases) [[ $# -ge 2 ]] || die "--cases needs an argument"; CASES="$2"; shift 2 ;;
        --cases=*) CASES="${1#--cases=}"; shift ;;
        --server-cmd) [[ $# -ge 2 ]] || die "--server-cmd needs an argument"; SERVER_CMD="$2"; shift 2 ;;
        --server-cmd=*) SERVER_CMD="${1#--server-cmd=}"; shift ;;
        --compression) [[ $# -ge 2 ]] || die "--compression needs an argument"; COMPRESSION="$2"; shift 2 ;;
        --compression=*) COMPRESSION="${1#--compression=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# ---------------------------------------------------------------------------------------------
# Install
# ---------------------------------------------------------------------------------------------

# Print "URIS<TAB>SIGNED_BY" of the first stanza of a deb822 sources file. Signed-By may be a
# path or an inline key block (continuation lines); the latter is re-emitted in deb822 form.
parse_debian_sources() {
    python3 - "$1" <<'PY'
import sys
fields, cur = {}, None
with open(sys.argv[1]) as f:
    for raw in f:
        line = raw.rstrip("\n")
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                break           # end of the first stanza
            continue
        if line[0] in " \t" and cur is not None:
            fields[cur] += "\n" + line
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        cur = key.strip().lower()
        fields[cur] = value.strip()
uris, signed = fields.get("uris", ""), fields.get("signed-by", "")
if not uris:
    sys.exit("no URIs: field in the first stanza of " + sys.argv[1])
sys.stdout.write(uris + "\t" + signed.replace("\n", "\\n"))
PY
}

# The multiarch directory of the extracted libraries (libssl1.1, libffi7), e.g.
# ROOT/usr/lib/x86_64-linux-gnu. (Debian's python2.7 binary links libpython statically.)
root_libdir() {
    local lib
    lib="$(compgen -G "$ROOT/usr/lib/*-linux-gnu*/libssl.so.1.1" | head -n1)" || true
    [[ -n "$lib" ]] || die "libssl.so.1.1 not found under $ROOT/usr/lib"
    dirname "$lib"
}

py2() {
    local libdir
    libdir="$(root_libdir)"
    PYTHONNOUSERSITE=1 LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        PYTHONHOME="$ROOT/usr" "$ROOT/usr/bin/python2.7" "$@"
}

install_python2() {
    local sources="/etc/apt/sources.list.d/debian.sources" parsed uris signed
    local apt="$CACHE/apt" debdir="$CACHE/debs"
    command -v apt-get >/dev/null || die "apt-get is required to fetch python2.7"
    command -v dpkg >/dev/null || die "dpkg is required to unpack python2.7"
    [[ -r "$sources" ]] || die "cannot read $sources (need a Debian mirror to fetch bullseye's python2.7)"
    parsed="$(parse_debian_sources "$sources")"
    uris="${parsed%%$'\t'*}"
    signed="${parsed#*$'\t'}"
    signed="${signed//\\n/$'\n'}"
    log "fetching python2.7 from Debian bullseye via $uris"

    rm -rf "$apt" "$debdir" "$ROOT"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$debdir" "$ROOT"
    {
        echo "Types: deb"
        echo "URIs: $uris"
        echo "Suites: bullseye"
        echo "Components: main"
        [[ -n "$signed" ]] && echo "Signed-By: $signed"
    } > "$apt/bullseye.sources"

    local apt_opts=(
        "-oDir::State::Lists=$apt/lists"
        "-oDir::Etc::SourceList=$apt/bullseye.sources"
        "-oDir::Etc::SourceParts=/nonexistent"
        "-oDir::Cache=$apt/cache"
        # apt's unprivileged download user usually cannot write under $HOME; this is a private
        # cache, so download as the invoking user (silences the "unsandboxed" warnings).
        "-oAPT::Sandbox::User=$(id -un)"
    )
    apt-get "${apt_opts[@]}" -q update
    (cd "$debdir" && apt-get "${apt_opts[@]}" -q download "${DEBS[@]}")
    local deb
    for deb in "$debdir"/*.deb; do
        dpkg -x "$deb" "$ROOT"
    done
    py2 -c 'import ssl, ctypes, zlib, sys; print("python " + sys.version.split()[0] + ", " + ssl.OPENSSL_VERSION)' \
        || die "extracted python2.7 does not run"
}

install_wstest() {
    local wheels="$CACHE/wheels"
    rm -rf "$wheels" "$SITE"
    mkdir -p "$wheels" "$SITE"
    log "downloading pip/setuptools/wheel for Python 2.7"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 2.7 \
        -d "$wheels" "${PIP_BOOTSTRAP[@]}"
    local pip_whl
    pip_whl="$(compgen -G "$wheels/pip-20.3.4-*.whl" | head -n1)" || true
    [[ -n "$pip_whl" ]] || die "pip 20.3.4 wheel was not downloaded"
    py2 "$pip_whl/pip" install -q --disable-pip-version-check --no-warn-script-location \
        --prefix "$SITE" "$wheels"/*.whl

    log "installing autobahntestsuite and pinned dependencies into $SITE"
    PYTHONPATH="$SITE_PACKAGES" py2 -m pip install -q --disable-pip-version-check \
        --no-warn-script-location --prefix "$SITE" "${PINS[@]}"
    [[ -d "$SITE_PACKAGES/autobahntestsuite" ]] || die "autobahntestsuite is not in $SITE_PACKAGES"

    # wsaccel from its sdist (its C sources are generated already: no Cython needed). Debian's
    # distutils looks for the headers under /usr (its build-time prefix), and Debian's pyconfig.h
    # includes <x86_64-linux-gnu/python2.7/pyconfig.h>: both include folders are given.
    command -v gcc >/dev/null || die "gcc is required to build wsaccel"
    log "building $WSACCEL"
    python3 -m pip download -q --no-deps --no-binary=:all: -d "$wheels" "$WSACCEL"
    CC=gcc LDSHARED="gcc -shared" CFLAGS="-I$ROOT/usr/include/python2.7 -I$ROOT/usr/include" \
        PYTHONPATH="$SITE_PACKAGES" py2 -m pip install -q --disable-pip-version-check \
        --no-warn-script-location --no-build-isolation --prefix "$SITE" "$wheels"/wsaccel-*.tar.gz
    PYTHONPATH="$SITE_PACKAGES" py2 -c 'import wsaccel.xormask, wsaccel.utf8validator' \
        || die "wsaccel does not import"

    # zope is a namespace package set up by a .pth file, which PYTHONPATH does not process:
    # the launcher adds the site dir with site.addsitedir().
    mkdir -p "$CACHE/bin"
    cat > "$CACHE/bin/wstest.py" <<PY
import site, sys, warnings
site.addsitedir("$SITE_PACKAGES")
warnings.filterwarnings("ignore", message="Python 2 is no longer supported")
from autobahntestsuite.wstest import run; sys.exit(run())
PY
    local libdir
    libdir="$(root_libdir)"
    cat > "$WSTEST" <<SH
#!/bin/sh
# Generated by uringws scripts/autobahn.sh: runs Autobahn|Testsuite wstest on the cached Python 2.7.
PYTHONNOUSERSITE=1 LD_LIBRARY_PATH="$libdir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" PYTHONHOME="$ROOT/usr" \\
    exec "$ROOT/usr/bin/python2.7" "$CACHE/bin/wstest.py" "\$@"
SH
    chmod +x "$WSTEST"
}

ensure_installed() {
    if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$MARKER_CONTENT" && -x "$WSTEST" ]]; then
        log "using cached install in $CACHE"
        return
    fi
    local start=$SECONDS
    log "installing Autobahn|Testsuite into $CACHE"
    mkdir -p "$CACHE"
    rm -f "$MARKER"
    install_python2
    install_wstest
    "$WSTEST" --help >/dev/null || die "wstest does not start"
    # Drop the downloads; ROOT, SITE and the launcher are all that is needed from now on.
    rm -rf "$CACHE/apt" "$CACHE/debs" "$CACHE/wheels"
    printf '%s\n' "$MARKER_CONTENT" > "$MARKER"
    log "install complete in $((SECONDS - start)) s"
}

ensure_installed
if [[ $INSTALL_ONLY -eq 1 ]]; then
    log "wstest: $WSTEST"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------
cd "$REPO_ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
# One folder per role, so that both roles can run at once.
WORK="$REPO_ROOT/target/autobahn"
if [[ $CLIENT -eq 1 ]]; then WORK="$REPO_ROOT/target/autobahn-client"; fi
if [[ $TLS -eq 1 ]]; then
    WORK="$REPO_ROOT/target/autobahn-tls"
    [[ $CLIENT -eq 0 ]] || WORK="$REPO_ROOT/target/autobahn-client-tls"
    CERTS="$REPO_ROOT/target/tls/certs"
fi
OUTDIR="$WORK/reports"
SPEC="$WORK/spec.json"
SERVER_LOG="$WORK/server.log"
TIMEOUT_SECS="${UWS_AUTOBAHN_TIMEOUT:-1500}"

# Summarises $OUTDIR/index.json: a full run (all cases) into scripts/$1, a partial run into
# $WORK/$2 (so that it cannot overwrite the committed summary); $3 names the mode. A run whose
# wstest or testee failed (a timeout, say) counts as partial (RUN_OK=0).
RUN_OK=1
summarize() {
    local summary
    if [[ "$CASES" == '*' && "$COMPRESSION" == shared && $RUN_OK -eq 1 ]]; then
        summary="$SCRIPT_DIR/$1"
        [[ $TLS -eq 0 ]] || summary="$SCRIPT_DIR/${1%-summary.txt}-tls-summary.txt"
    else
        summary="$WORK/$2"
    fi
    if [[ ! -f "$OUTDIR/index.json" ]]; then
        log "no $OUTDIR/index.json was written"
        return 1
    fi
    local status=0
    local mode="$3, compression $COMPRESSION"
    [[ $TLS -eq 0 ]] || mode="$mode, over TLS"
    UWS_AUTOBAHN_MODE="$mode" python3 "$SCRIPT_DIR/autobahn_summary.py" "$OUTDIR/index.json" "$summary" \
        || status=$?
    log "summary written to $summary; HTML report: $OUTDIR/index.html"
    return "$status"
}

if [[ $CLIENT -eq 1 ]]; then
    # The client role: wstest is the server, examples/autobahn_client the testee.
    if [[ "${UWS_NO_BUILD:-0}" != 1 ]]; then
        log "cargo build --release --locked --example autobahn_client"
        cargo build --release --locked --example autobahn_client
    fi
    TESTEE="$TARGET_DIR/release/examples/autobahn_client"
    [[ -x "$TESTEE" ]] || die "$TESTEE not found"
    PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
    rm -rf "$OUTDIR"
    mkdir -p "$OUTDIR"
    SCHEME=ws
    TESTEE_TLS=()
    if [[ $TLS -eq 1 ]]; then
        "$SCRIPT_DIR/tls-certs.sh" "$CERTS" >&2
        SCHEME=wss
        TESTEE_TLS=(--ca "$CERTS/ca.pem")
    fi
    python3 - "$SPEC" "$OUTDIR" "$PORT" "$CASES" "$SCHEME" "${CERTS:-}" <<'PY'
import json, sys
spec_path, outdir, port, cases, scheme, certs = sys.argv[1:]
patterns = [c.strip() for c in cases.split(",") if c.strip()] or ["*"]
spec = {"url": "%s://127.0.0.1:%s" % (scheme, port), "outdir": outdir, "cases": patterns,
        "exclude-cases": [], "exclude-agent-cases": {}}
if scheme == "wss":
    spec["key"] = certs + "/server-key.pem"
    spec["cert"] = certs + "/server-chain.pem"
with open(spec_path, "w") as f:
    json.dump(spec, f, indent=2)
    f.write("\n")
PY
    log "starting wstest -m fuzzingserver on port $PORT"
    (cd "$WORK" && exec timeout --kill-after=10 "$TIMEOUT_SECS" "$WSTEST" -m fuzzingserver -s "$SPEC") \
        > "$WORK/wstest.log" 2>&1 &
    WSTEST_PID=$!
    trap 'kill -TERM "$WSTEST_PID" 2>/dev/null || true; wait "$WSTEST_PID" 2>/dev/null || true' EXIT
    deadline=$((SECONDS + 60))
    until (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
        kill -0 "$WSTEST_PID" 2>/dev/null || { cat "$WORK/wstest.log" >&2; die "wstest exited early"; }
        [[ $SECONDS -lt $deadline ]] || die "wstest did not listen on port $PORT within 60 s"
        sleep 0.2
    done
    log "running $TESTEE"
    testee_status=0
    timeout --kill-after=10 "$TIMEOUT_SECS" "$TESTEE" "$SCHEME://127.0.0.1:$PORT" uringws "$COMPRESSION" \
        "${TESTEE_TLS[@]}" \
        > "$WORK/testee.log" 2>&1 || testee_status=$?
    summary_status=0
    [[ $testee_status -eq 0 ]] || RUN_OK=0
    summarize "autobahn-client-summary.txt" "client-summary.txt" "fuzzingserver (client role)" \
        || summary_status=$?
    if [[ $testee_status -ne 0 ]]; then
        log "the client testee failed (exit status $testee_status); last lines of $WORK/testee.log:"
        tail -n 20 "$WORK/testee.log" >&2 || true
        exit 1
    fi
    [[ $summary_status -eq 0 ]] || { log "Autobahn client cases failed (see above)"; exit 1; }
    log "all Autobahn client cases passed"
    exit 0
fi

if [[ -z "$SERVER_CMD" ]]; then
    SERVER_CMD="$TARGET_DIR/release/uringws echo --addr 127.0.0.1:{port} --threads 2 --compression $COMPRESSION"
    if [[ "${UWS_NO_BUILD:-0}" != 1 ]]; then
        log "cargo build --release --locked --bin uringws"
        cargo build --release --locked --bin uringws
    fi
    [[ -x "$TARGET_DIR/release/uringws" ]] || die "$TARGET_DIR/release/uringws not found (build it or drop UWS_NO_BUILD)"
    if [[ $TLS -eq 1 ]]; then
        "$SCRIPT_DIR/tls-certs.sh" "$CERTS" >&2
        SERVER_CMD="$SERVER_CMD --tls-cert $CERTS/server-chain.pem --tls-key $CERTS/server-key.pem"
    fi
fi
SCHEME=ws
[[ $TLS -eq 0 ]] || SCHEME=wss

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
CMD="${SERVER_CMD//\{port\}/$PORT}"

rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"
python3 - "$SPEC" "$OUTDIR" "$PORT" "$CASES" "$SCHEME" <<'PY'
import json, sys
spec_path, outdir, port, cases, scheme = sys.argv[1:]
patterns = [c.strip() for c in cases.split(",") if c.strip()] or ["*"]
spec = {
    "outdir": outdir,
    "servers": [{"agent": "uringws", "url": "%s://127.0.0.1:%s" % (scheme, port)}],
    "cases": patterns,
    "exclude-cases": [],
    "exclude-agent-cases": {},
}
with open(spec_path, "w") as f:
    json.dump(spec, f, indent=2)
    f.write("\n")
PY

SERVER_PID=''
SERVER_STATUS=''
WSTEST_PID=''
server_alive() {
    [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null \
        && [[ "$(awk '{print $3}' "/proc/$SERVER_PID/stat" 2>/dev/null)" != Z ]]
}
stop_server() {
    [[ -n "$SERVER_PID" ]] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM -- "-$SERVER_PID" 2>/dev/null || kill -TERM "$SERVER_PID" 2>/dev/null || true
        local _
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            [[ "$(awk '{print $3}' "/proc/$SERVER_PID/stat" 2>/dev/null)" == Z ]] && break
            sleep 0.1
        done
        kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_STATUS=0
    wait "$SERVER_PID" 2>/dev/null || SERVER_STATUS=$?
    SERVER_PID=''
}
# shellcheck disable=SC2317  # invoked through the EXIT trap
cleanup() {
    if [[ -n "$WSTEST_PID" ]]; then
        kill -TERM "$WSTEST_PID" 2>/dev/null || true
        wait "$WSTEST_PID" 2>/dev/null || true
    fi
    stop_server
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting server on port $PORT: $CMD (log: $SERVER_LOG)"
# setsid gives the server its own process group so that everything it spawns is stopped too.
setsid bash -c "exec $CMD" > "$SERVER_LOG" 2>&1 < /dev/null &
SERVER_PID=$!

deadline=$((SECONDS + 30))
until (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
    server_alive || { cat "$SERVER_LOG" >&2; die "server exited before accepting connections"; }
    [[ $SECONDS -lt $deadline ]] || die "server did not accept connections on port $PORT within 30 s"
    sleep 0.1
done

log "running wstest -m fuzzingclient (cases: $CASES, timeout ${TIMEOUT_SECS}s)"
wstest_status=0
# In the background so that INT/TERM traps run at once (cleanup stops wstest and the server).
(cd "$WORK" && exec timeout --kill-after=10 "$TIMEOUT_SECS" "$WSTEST" -m fuzzingclient -s "$SPEC") &
WSTEST_PID=$!
wait "$WSTEST_PID" || wstest_status=$?
WSTEST_PID=''

server_ok=1
server_alive || server_ok=0
stop_server

summary_status=0
[[ $wstest_status -eq 0 && $server_ok -eq 1 ]] || RUN_OK=0
summarize "autobahn-summary.txt" "summary.txt" "fuzzingclient (server role)" || summary_status=$?

status=0
if [[ $wstest_status -ne 0 ]]; then
    [[ $wstest_status -eq 124 ]] && log "wstest timed out after ${TIMEOUT_SECS}s"
    log "wstest failed (exit status $wstest_status)"
    status=1
fi
if [[ $server_ok -ne 1 ]]; then
    log "the server died during the run (exit status $SERVER_STATUS); last lines of $SERVER_LOG:"
    tail -n 20 "$SERVER_LOG" >&2 || true
    status=1
fi
if [[ $summary_status -ne 0 ]]; then
    log "Autobahn cases failed (see above)"
    status=1
fi
[[ $status -eq 0 ]] && log "all Autobahn cases passed"
exit "$status"
