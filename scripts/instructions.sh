#!/usr/bin/env bash
# Server user-space instructions per echoed message, counted by valgrind's callgrind: an A/B
# figure for changes to the per-message path that this machine's noise hides from CPU time
# (a 10% cut in user time is about 1% of a small message's CPU, and single runs of
# scripts/compare.sh move by 10%).
#
# Usage: scripts/instructions.sh [BINARY...]   (default: target/release/uringws)
#   CONNECTIONS (100), PIPELINE (1), SIZE (20), DURATION (5) seconds, RUNS (2) per binary.
#
# Each run starts BINARY's echo server (one thread) under callgrind on CPU 0 and
# target/release/uringws load (native) on CPU 1 for 1 s of warm-up and DURATION seconds,
# then stops the server with SIGINT. It prints the whole process's instructions (Ir: start-up,
# handshakes and shutdown included, under 1% here) divided by the messages it echoed, counted
# as the calls of `proto::mask::apply_mask` (one per message read in place; messages of
# DIRECT_READ_MIN (16 KiB) or more are unmasked elsewhere, so keep SIZE below that).
#
# The count still moves by a few percent between runs, with how many messages each loop turn
# carries (under valgrind the server echoes 20-40k messages a second, a third of its native
# rate here): compare medians of RUNS.
# Kernel time is not counted at all.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONNECTIONS=${CONNECTIONS:-100}
PIPELINE=${PIPELINE:-1}
SIZE=${SIZE:-20}
DURATION=${DURATION:-5}
RUNS=${RUNS:-2}
LOAD=$ROOT/target/release/uringws
OUT=$ROOT/target/instructions
mkdir -p "$OUT"

if ! command -v valgrind >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "instructions.sh: valgrind is required" >&2; exit 1; }
  apt-get install -y valgrind >/dev/null
fi
[ -x "$LOAD" ] || (cd "$ROOT" && cargo build --release --locked --bin uringws)
[ "$SIZE" -lt 16384 ] || { echo "instructions.sh: SIZE must be below 16384" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

one() {
  local bin=$1 tag=$2 port out
  port=$(free_port)
  out=$OUT/$tag.callgrind
  taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$bin" echo --threads 1 --addr "127.0.0.1:$port" >"$OUT/$tag.log" 2>&1 &
  local vp=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  taskset -c 1 "$LOAD" load --url "ws://127.0.0.1:$port/" --connections "$CONNECTIONS" \
    --pipeline "$PIPELINE" --size "$SIZE" --duration "$DURATION" --warmup 1 \
    >"$OUT/$tag.load" 2>&1
  kill -INT "$vp"
  wait "$vp" || true
  local total msgs
  total=$(callgrind_annotate --auto=no "$out" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  msgs=$(callgrind_annotate --tree=calling --auto=no "$out" 2>/dev/null \
    | grep -E '> .*proto::mask::apply_mask \(' | sed -E 's/.*\(([0-9,]+)x\).*/\1/' | tr -d , \
    | awk '{s += $1} END {print s + 0}')
  if [ "$msgs" -eq 0 ]; then
    echo "$tag: no messages counted (see $OUT/$tag.log and $OUT/$tag.load)" >&2
    return 1
  fi
  echo "$tag: $((total / msgs)) instructions per message ($total over $msgs messages)"
}

bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=("$LOAD")
# Interleaved (A B A B), so that drift in the machine spreads over all binaries.
for r in $(seq "$RUNS"); do
  for i in "${!bins[@]}"; do
    one "${bins[$i]}" "bin$i-run$r"
  done
done
