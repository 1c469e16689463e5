#!/usr/bin/env bash
# Builds the container image from the unchanged Dockerfile with podman and checks it:
#   (a) with docker/seccomp-io_uring.json the server answers a WebSocket echo and its health check;
#   (b) with the runtime's default seccomp profile it exits non-zero, naming seccomp-io_uring.json;
#   (c) on SIGTERM (podman stop) a connected client gets close 1001 and the container exits 0
#       within the server's shutdown grace;
#   (d) the server runs as a non-root user.
# Meant for a fresh Debian bookworm machine, as root (CI): it installs podman and debootstrap when
# missing, and, since no image registry is reachable, makes the two base images the Dockerfile
# names locally with debootstrap (kept in podman's store: later runs skip that). See
# shared/CONTAINER.md for why each step is needed.
#
# Environment:
#   UWS_IMAGE=NAME            image tag to build (default localhost/uringws:check)
#   UWS_CONTAINER_TESTS=1     also build `--target test` and run `cargo test` in it (slow)
#   UWS_REBUILD_BASE=1        remake the base images even if they exist
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${UWS_IMAGE:-localhost/uringws:check}
PROFILE=docker/seccomp-io_uring.json
GRACE=5       # the server's --shutdown-grace in check (c)
STOP_TIMEOUT=10
WS=(python3 scripts/container_ws.py)
T_START=$SECONDS

say() { printf '%s\n' "$*"; }
step() { printf '\n== %s\n' "$*"; }
die() { printf 'container: %s\n' "$*" >&2; exit 1; }
indent() { sed -u 's/^/    /'; }

# ---------------------------------------------------------------- cleanup
CONTAINERS=()
BG_PIDS=()
WORK=$(mktemp -d /tmp/uringws-container.XXXXXX)
cleanup() {
    local c p
    for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for c in "${CONTAINERS[@]}"; do
        timeout 30 podman rm -f -t 0 "$c" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- host preparation
step "host: podman, debootstrap, cgroups, limits"
t0=$SECONDS
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
    [[ $EUID -eq 0 ]] || die "needs root to install: ${missing[*]}"
    say "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq
    timeout 900 apt-get install -y -qq "${missing[@]}" >/dev/null
fi
podman --version

# Hybrid cgroup v1/v2 machine: crun refuses to start a container while the v2 hierarchy still
# offers a controller (here hugetlb). Mount each such controller as v1 (once per boot).
if [[ -r /sys/fs/cgroup/unified/cgroup.controllers ]]; then
    read -r -a controllers </sys/fs/cgroup/unified/cgroup.controllers || true
    for ctl in "${controllers[@]}"; do
        if ! awk -v c="$ctl" '$3 == "cgroup" && ("," $4 ",") ~ ("," c ",") { f = 1 } END { exit !f }' /proc/mounts; then
            say "mounting cgroup v1 controller $ctl"
            mkdir -p "/sys/fs/cgroup/$ctl"
            mount -t cgroup -o "$ctl" cgroup "/sys/fs/cgroup/$ctl"
        fi
    done
fi

# podman's default open-file and process limits can be above this machine's hard limits, and
# values equal to the hard limit were refused too: pass lower ones.
below_hard() { # WANT HARD
    if [[ $2 == unlimited ]] || (($2 > $1)); then echo "$1"; else echo $(($2 / 2)); fi
}
NOFILE=$(below_hard 8192 "$(ulimit -Hn)")
NPROC=$(below_hard 4096 "$(ulimit -Hu)")
ULIMITS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC")
say "ulimits: nofile=$NOFILE nproc=$NPROC"
T_HOST=$((SECONDS - t0))

# ---------------------------------------------------------------- base images
step "base images (made locally with debootstrap; no registry is reachable)"
t0=$SECONDS
from_image() { # PATTERN: the first FROM image in the Dockerfile that matches
    awk -v p="$1" 'toupper($1) == "FROM" && $2 ~ p { print $2; exit }' Dockerfile
}
RUST_BASE=$(from_image '/rust:')
DEBIAN_BASE=$(from_image '/debian:')
[[ -n $RUST_BASE && -n $DEBIAN_BASE ]] || die "could not find the rust and debian FROM lines in Dockerfile"
SUITE=bookworm
[[ $DEBIAN_BASE == *"$SUITE"* && $RUST_BASE == *"$SUITE"* ]] || die "Dockerfile bases are not $SUITE"

MIRROR=
if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
    MIRROR=$(awk '$1 == "URIs:" && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
fi
if [[ -z $MIRROR && -r /etc/apt/sources.list ]]; then
    MIRROR=$(awk '$1 == "deb" && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list)
fi
MIRROR=${MIRROR:-http://deb.debian.org/debian}

bootstrap() { # DIR [debootstrap options]: a minbase Debian rootfs without apt caches
    local dir=$1
    shift
    say "debootstrap --variant=minbase${*:+ $*} $SUITE ($MIRROR)"
    timeout 1200 nice -n 10 debootstrap --variant=minbase "$@" "$SUITE" "$dir" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1 || { tail -n 30 "$WORK/debootstrap.log"; die "debootstrap failed"; }
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
}

if [[ ${UWS_REBUILD_BASE:-} != 1 ]] && podman image exists "$DEBIAN_BASE"; then
    say "$DEBIAN_BASE: exists"
else
    bootstrap "$WORK/debian"
    tar -C "$WORK/debian" -c . | podman import --quiet --change 'CMD ["bash"]' - "$DEBIAN_BASE" >/dev/null
    rm -rf "$WORK/debian"
    say "$DEBIAN_BASE: made"
fi

if [[ ${UWS_REBUILD_BASE:-} != 1 ]] && podman image exists "$RUST_BASE"; then
    say "$RUST_BASE: exists"
else
    # A stand-in for the official image: Debian + gcc + this machine's Rust toolchain, laid
    # out as the official image does (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo).
    if ! command -v rustc >/dev/null || ! command -v rustup >/dev/null; then
        die "needs this machine's rustup toolchain to make $RUST_BASE"
    fi
    want=${RUST_BASE##*rust:}
    want=${want%%-*} # 1.95
    version=$(rustc --version | awk '{ print $2 }')
    [[ $version == "$want" || $version == "$want".* ]] ||
        die "the Dockerfile wants Rust $want ($RUST_BASE) but this machine has rustc $version"
    host=$(rustc -vV | awk '$1 == "host:" { print $2 }')
    sysroot=$(rustc --print sysroot)
    toolchain=$version-$host
    root=$WORK/rust
    bootstrap "$root" --include=gcc,libc6-dev,ca-certificates
    mkdir -p "$root/usr/local/rustup/toolchains/$toolchain" "$root/usr/local/cargo/bin"
    say "copying the toolchain $sysroot (rustc $version) without its HTML docs"
    tar -C "$sysroot" --exclude=./share/doc -c . | tar -C "$root/usr/local/rustup/toolchains/$toolchain" -x
    printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n\n[overrides]\n' \
        "$toolchain" >"$root/usr/local/rustup/settings.toml"
    install -m 0755 "$(readlink -f "$(command -v rustup)")" "$root/usr/local/cargo/bin/rustup"
    for proxy in cargo rustc rustdoc rust-gdb rust-gdbgui rust-lldb cargo-clippy clippy-driver cargo-fmt rustfmt; do
        if [[ -e $sysroot/bin/$proxy ]]; then ln -s rustup "$root/usr/local/cargo/bin/$proxy"; fi
    done
    tar -C "$root" -c . | podman import --quiet \
        --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "ENV RUST_VERSION=$version" \
        --change 'CMD ["bash"]' \
        - "$RUST_BASE" >/dev/null
    rm -rf "$root"
    say "$RUST_BASE: made (rustc $version)"
fi
T_BASE=$((SECONDS - t0))

# ---------------------------------------------------------------- build
step "podman build $IMAGE"
t0=$SECONDS
BUILD=(podman build --pull=never --network=host --format docker "${ULIMITS[@]}")
# Registries are reached through a proxy whose CA only the host trusts: lend the build steps
# the host's bundle without changing the Dockerfile.
if [[ -r /etc/ssl/certs/ca-certificates.crt ]]; then
    BUILD+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
fi
timeout 3600 nice -n 10 "${BUILD[@]}" -t "$IMAGE" -f Dockerfile . 2>&1 | indent
[[ ${PIPESTATUS[0]} -eq 0 ]] || die "podman build failed"
T_BUILD=$((SECONDS - t0))
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "image $IMAGE: $((size / 1000000)) MB ($size bytes), built in ${T_BUILD}s"
if python3 docker/gen-seccomp.py -o - 2>/dev/null | cmp -s - "$PROFILE"; then
    say "$PROFILE: matches docker/gen-seccomp.py from this host's default profile"
else
    say "note: $PROFILE differs from what docker/gen-seccomp.py makes from this host's default profile"
fi

# ---------------------------------------------------------------- checks
step "checks"
t0=$SECONDS
PASSED=0
FAILED=0
N=0
result() { # OK? DESCRIPTION
    N=$((N + 1))
    if [[ $1 == 0 ]]; then
        PASSED=$((PASSED + 1))
        say "ok $N - $2"
    else
        FAILED=$((FAILED + 1))
        say "not ok $N - $2"
    fi
}
detail() { sed 's/^/    # /'; }
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
running() { [[ $(timeout 30 podman inspect --format '{{.State.Running}}' "$1" 2>/dev/null) == true ]]; }
exit_code() { timeout 30 podman inspect --format '{{.State.ExitCode}}' "$1" 2>/dev/null || echo '?'; }
RUN=(timeout 60 podman run --network=host "${ULIMITS[@]}")
start_server() { # NAME PORT [extra server args]: detached, with the io_uring profile
    local name=$1 port=$2
    shift 2
    CONTAINERS+=("$name")
    # (podman's complaints that it cannot set up a systemd timer for the health check, on a
    # machine without systemd, go to a file: `podman healthcheck run` works without it.)
    "${RUN[@]}" -d --name "$name" --security-opt "seccomp=$PROFILE" -e "UWS_HEALTH_PORT=$port" \
        "$IMAGE" echo --addr "127.0.0.1:$port" "$@" >/dev/null 2>"$WORK/run-$name.err" || {
        cat "$WORK/run-$name.err"
        return 1
    }
}
wait_ready() { # NAME PORT: until /healthz answers, at most 30 s
    local i
    for ((i = 0; i < 150; i++)); do
        if UWS_WS_TIMEOUT=2 "${WS[@]}" health "$2" >/dev/null 2>&1; then return 0; fi
        running "$1" || return 1
        sleep 0.2
    done
    return 1
}
# Each check runs as `check FUNCTION DESCRIPTION`: the function's output is shown indented
# under its ok / not ok line, and its return status is the result. (A function called in an
# `||` list runs without errexit: every step below checks its own status.)
check() {
    local rc=0
    "$1" >"$WORK/check.log" 2>&1 || rc=$?
    result "$rc" "$2"
    detail <"$WORK/check.log"
}
ID=uws-check-$$
A=$ID-a
B=$ID-b
C=$ID-c
E=$ID-e
CONTAINERS+=("$A" "$B" "$C")

# (a) echo and health with the io_uring profile.
check_a() {
    local ok=0 out rc port
    port=$(free_port)
    if ! { start_server "$A" "$port" && wait_ready "$A" "$port"; }; then
        say "server did not become ready; logs:"
        timeout 30 podman logs "$A" 2>&1 | tail -n 20
        return 1
    fi
    "${WS[@]}" echo "$port" || ok=1
    "${WS[@]}" health "$port" || ok=1
    if podman healthcheck run --help >/dev/null 2>&1; then
        rc=0
        out=$(timeout 30 podman healthcheck run "$A" 2>&1) || rc=$?
        say "podman healthcheck run: exit $rc ${out:-(no output)}"
        say "State.Health.Status: $(timeout 30 podman inspect --format '{{.State.Health.Status}}' "$A" 2>&1)"
        [[ $rc -eq 0 ]] || ok=1
    else
        say "podman healthcheck run: not supported by this podman, skipped"
    fi
    return $ok
}
check check_a "with $PROFILE the server answers a WebSocket echo and its health check"

# (b) the runtime's default seccomp profile: a clear message and a non-zero exit.
check_b() {
    local ok=0 rc=0 code logs
    "${RUN[@]}" --name "$B" "$IMAGE" echo --addr "127.0.0.1:$(free_port)" >/dev/null 2>&1 || rc=$?
    code=$(exit_code "$B")
    logs=$(timeout 30 podman logs "$B" 2>&1)
    say "podman run exited $rc, State.ExitCode $code; logs:"
    printf '%s\n' "$logs" | fold -s -w 100 | sed 's/^/  /'
    [[ $rc -ne 0 && $rc -ne 124 && $code =~ ^[1-9][0-9]*$ ]] || ok=1
    grep -q '^uringws: uringws needs io_uring, but it is unavailable:' <<<"$logs" || ok=1
    tr -d '\n' <<<"$logs" | grep -q 'seccomp-io_uring\.json' || ok=1
    return $ok
}
check check_b "with the default seccomp profile it exits non-zero and names seccomp-io_uring.json"

# (c) SIGTERM: close 1001 to a connected client, exit 0 within the grace period.
check_c() {
    local ok=0 port hold hrc=0 i t elapsed code
    port=$(free_port)
    if ! { start_server "$C" "$port" --shutdown-grace "$GRACE" && wait_ready "$C" "$port"; }; then
        say "server did not become ready; logs:"
        timeout 30 podman logs "$C" 2>&1 | tail -n 20
        return 1
    fi
    UWS_WS_TIMEOUT=30 timeout 60 "${WS[@]}" hold "$port" "$WORK/ready" >"$WORK/hold.out" 2>&1 &
    hold=$!
    BG_PIDS+=("$hold")
    for ((i = 0; i < 100; i++)); do
        [[ -e $WORK/ready ]] && break
        sleep 0.1
    done
    [[ -e $WORK/ready ]] || { say "client did not get its first echo within 10 s"; ok=1; }
    t=$(date +%s.%N)
    timeout 60 podman stop -t "$STOP_TIMEOUT" "$C" >/dev/null 2>"$WORK/stop.err" || {
        cat "$WORK/stop.err"
        ok=1
    }
    elapsed=$(python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.2f}")' "$t" "$(date +%s.%N)")
    wait "$hold" || hrc=$?
    say "client: $(cat "$WORK/hold.out")"
    code=$(exit_code "$C")
    say "podman stop -t $STOP_TIMEOUT returned after ${elapsed}s (server --shutdown-grace $GRACE); State.ExitCode $code"
    say "last logs: $(timeout 30 podman logs "$C" 2>&1 | tail -n 3 | paste -sd '|')"
    [[ $hrc -eq 0 && $code == 0 ]] || ok=1
    python3 -c 'import sys; sys.exit(float(sys.argv[1]) > float(sys.argv[2]))' "$elapsed" "$GRACE" || {
        say "slower than the grace period"
        ok=1
    }
    return $ok
}

# (d) non-root, on container (a), still running.
check_d() {
    local uid
    if ! running "$A"; then
        say "container $A is not running"
        return 1
    fi
    uid=$(timeout 30 podman exec "$A" id -u 2>&1) || uid="(podman exec failed: $uid)"
    say "podman exec id -u: $uid"
    say "podman top: $(timeout 30 podman top "$A" user huser 2>&1 | tail -n +2 | tr -s ' ' | paste -sd ';')"
    say "image Config.User: $(timeout 30 podman image inspect --format '{{.Config.User}}' "$IMAGE" 2>&1)"
    [[ $uid =~ ^[0-9]+$ && $uid -ne 0 ]]
}
# (e) TLS: the test certificates (scripts/tls-certs.sh) mounted read-only, wss:// on one port,
# the plain /healthz of --health-addr on another, which the image's HEALTHCHECK uses through
# UWS_HEALTH_PORT.
check_e() {
    local ok=0 port hport rc out certs=$WORK/certs
    scripts/tls-certs.sh "$certs" >/dev/null || return 1
    chmod -R a+rX "$certs"
    port=$(free_port)
    hport=$(free_port)
    CONTAINERS+=("$E")
    "${RUN[@]}" -d --name "$E" --security-opt "seccomp=$PROFILE" -e "UWS_HEALTH_PORT=$hport" \
        -v "$certs:/certs:ro" "$IMAGE" echo --addr "127.0.0.1:$port" \
        --tls-cert /certs/server-chain.pem --tls-key /certs/server-key.pem \
        --health-addr "127.0.0.1:$hport" >/dev/null 2>"$WORK/run-$E.err" || {
        cat "$WORK/run-$E.err"
        return 1
    }
    if ! wait_ready "$E" "$hport"; then
        say "server did not become ready; logs:"
        timeout 30 podman logs "$E" 2>&1 | tail -n 20
        return 1
    fi
    UWS_WS_CA="$certs/ca.pem" "${WS[@]}" echo "$port" || ok=1
    "${WS[@]}" health "$hport" || ok=1
    if podman healthcheck run --help >/dev/null 2>&1; then
        rc=0
        out=$(timeout 30 podman healthcheck run "$E" 2>&1) || rc=$?
        say "podman healthcheck run: exit $rc ${out:-(no output)}"
        [[ $rc -eq 0 ]] || ok=1
    fi
    return $ok
}

check check_c "on SIGTERM a client gets close 1001 and the container exits 0 within ${GRACE}s"
check check_d "the server runs as a non-root user"
check check_e "over TLS: a wss:// echo with the test CA, and the HEALTHCHECK on the --health-addr port"
timeout 30 podman rm -f -t 2 "$A" >/dev/null 2>&1 || true

# Optional: the test stage, run with the profile (RUN steps cannot: they use the default one).
if [[ ${UWS_CONTAINER_TESTS:-} == 1 ]]; then
    check_tests() {
        local t1=$SECONDS
        if ! timeout 3600 nice -n 10 "${BUILD[@]}" --target test -t "$IMAGE-test" -f Dockerfile . \
            >"$WORK/test-build.log" 2>&1; then
            tail -n 30 "$WORK/test-build.log"
            return 1
        fi
        say "test image built in $((SECONDS - t1))s"
        CONTAINERS+=("$ID-t")
        timeout 3600 nice -n 10 podman run --name "$ID-t" --network=host "${ULIMITS[@]}" \
            --security-opt "seccomp=$PROFILE" "$IMAGE-test" 2>&1 | grep -E '^test result|^running [0-9]+ tests?$|FAILED|panicked' || true
        [[ $(exit_code "$ID-t") == 0 ]]
    }
    check check_tests "cargo test in the test stage, with $PROFILE"
fi
T_CHECKS=$((SECONDS - t0))

say ""
say "times: host ${T_HOST}s, base images ${T_BASE}s, build ${T_BUILD}s, checks ${T_CHECKS}s, total $((SECONDS - T_START))s"
say "container: $PASSED passed, $FAILED failed"
((FAILED == 0))
