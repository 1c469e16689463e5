#!/usr/bin/env bash
# Compares the uringws echo server with three peers, one server thread each:
#   uringws         target/release/uringws echo --threads 1
#   fastwebsockets  bench/peers: fastwebsockets 0.10 over hyper 1, tokio current_thread
#   tungstenite     bench/peers: tokio-tungstenite 0.30, tokio current_thread
#   raw             bench/peers: raw-echo, the "framing floor" on tokio-uring (header rewrite
#                   and a u64 unmask loop, no other WebSocket work; see its source)
#   floor           FLOOR_DIR's uring-floor: a minimal WebSocket echo written directly on
#                   io_uring (multishot accept and receive, provided buffers, one enter per
#                   loop turn), what the kernel allows; built there, not part of this project
#   epoll-floor     FLOOR_DIR's epoll-floor: the same on plain epoll
#   uringws-old     UWS_OLD (a uringws binary of another commit), for an A/B in the same run
#   node-ws         Node's ws 8 (tests/interop/peer.mjs) with permessage-deflate, for DEFLATE runs
#   fastwebsockets-tls  bench/peers: fastwebsockets-echo --tls-cert --tls-key (tokio-rustls), for TLS runs
#
# SERVERS picks and orders them (default: uringws fastwebsockets tungstenite raw, then floor
# and epoll-floor when FLOOR_DIR has them built, then uringws-old when UWS_OLD is set).
#
# Usage: scripts/compare.sh            (ROUNDS=3 DURATION=5 by default)
#   ROUNDS       rounds of every case and server (default 3, at least 3)
#   DURATION     measured seconds per run (default 5); the load tool warms up WARMUP (1) s first
#   SERVER_CPU   CPU the server is pinned to (default 0); LOAD_CPU for `uringws load` (default 1)
#   MEM_CONNS    idle connections for the memory check (default 10000; 0 skips it)
#   SKIP_BUILD=1 uses the binaries already built
#   CASE_FILTER  runs only the cases whose name matches this extended regular expression
#   FLOOR_DIR    where the floors are (default ../shared/floor beside the project; built with
#                `cargo build --release` there, into FLOOR_TARGET, default FLOOR_DIR/target)
#   DEFLATE      shared, dedicated or dedicated:BITS: the compression run instead. Servers
#                uringws (`echo --compression DEFLATE`) and node-ws (perMessageDeflate with no
#                context takeover for shared, ws's defaults for dedicated; threshold 0), both at
#                zlib level LEVEL (default 1); one case, 100 connections x 1 KiB of JSON-like text offered
#                permessage-deflate (`load --text --json-payload --compression`); the table
#                adds wire bytes per echo. Memory: idle connections that negotiated it, after
#                the handshake and again after one 1 KiB compressed message each way.
#   TLS=1        the TLS (wss://) run instead. Servers uringws (`echo --tls-cert --tls-key`) and
#                fastwebsockets-tls (the same fastwebsockets server over tokio-rustls: the same
#                rustls release as uringws, pinned in bench/peers/Cargo.toml, ring provider only,
#                the same server config: rustls' default protocol versions, cipher suites and
#                key exchange groups, ALPN http/1.1), both with scripts/tls-certs.sh's RSA 2048
#                server-chain.pem and server-key.pem, made in target/tls/certs. Cases 100 x 1 KiB
#                and 10 x 64 KiB, `load --url wss://... --ca ca.pem` (rustls, ring: both servers
#                negotiate TLS 1.3 TLS13_AES_256_GCM_SHA384 with X25519 with it). The CPU
#                columns compare with fastwebsockets-tls. Memory: idle wss:// connections
#                (`idle-conns --ca`: a full TLS handshake each, no resumption, then the WebSocket
#                handshake); the memory table names what the first of them negotiated, and
#                fastwebsockets-tls's log what its first connection negotiated.
#
# Method
# - Each run starts a fresh server on its own port, pinned with `taskset -c $SERVER_CPU`, and
#   `uringws load --threads 1 --json` pinned with `taskset -c $LOAD_CPU`.
# - Order: for each round, for each case, each server in turn (A B C D A B C D ...), so that
#   drift in the machine's load is spread over all servers.
# - Server CPU per message: utime+stime of the server process, and each of the two (user
#   space and kernel) separately, (/proc/PID/stat, in clock ticks
#   of `getconf CLK_TCK`), sampled by this script at launch+WARMUP and launch+WARMUP+DURATION,
#   i.e. at the load tool's own warm-up end and window end (it starts its clock as it starts,
#   so the two windows agree to a few milliseconds). The delta is divided by `messages`, the
#   echoes the load tool received inside its measured window. The warm-up, connection set-up
#   and closing handshakes are therefore not counted. The tick is 10 ms at CLK_TCK=100: about
#   0.2% of a 5 s window of a busy server.
# - Reported per case and server: the medians over the rounds of msgs/s, p99 latency and
#   server us/msg, and each server's median msgs/s over uringws's. Runs with errors are kept
#   in results.json with their error count (the table shows the sum). Noise is recorded too:
#   per run, the share of the server's core that other processes took in the window, its
#   irq/softirq share, and the 1-minute load average.
# - Memory: for each server, a fresh server (one thread, pinned) gets MEM_CONNS idle WebSocket
#   connections from bench/peers' `idle-conns` (a separate process on LOAD_CPU, so client and
#   server each have their own fd limit). Reported: (VmRSS after all handshakes, settled 1 s)
#   minus (VmRSS before any connection), divided by the connections open.
# - Outputs: target/compare/results.json (every run, raw), target/compare/table.md, and
#   target/compare/msgs_per_sec.png (gnuplot; installed from Debian when missing and root).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
MEM_CONNS=${MEM_CONNS:-10000}
BASE_PORT=${BASE_PORT:-19100}
OUT=$ROOT/target/compare
PEERS=$ROOT/bench/peers
UWS=$ROOT/target/release/uringws
PEER_BIN=$PEERS/target/release
CLK_TCK=$(getconf CLK_TCK)
FLOOR_DIR=${FLOOR_DIR:-$ROOT/../shared/floor}
FLOOR_BIN=${FLOOR_TARGET:-$FLOOR_DIR/target}/release
if [ -n "${SERVERS:-}" ]; then
  read -r -a SERVERS <<<"$SERVERS"
  SERVERS_SET=1
else
  SERVERS=(uringws fastwebsockets tungstenite raw)
  [ -x "$FLOOR_BIN/uring-floor" ] && SERVERS+=(floor)
  [ -x "$FLOOR_BIN/epoll-floor" ] && SERVERS+=(epoll-floor)
  [ -n "${UWS_OLD:-}" ] && SERVERS+=(uringws-old)
fi
# Extra arguments of the uringws server, of `uringws load`, and of idle-conns (DEFLATE runs).
UWS_EXTRA=()
LOAD_EXTRA=()
MEM_PASSES=("after the handshake|")
if [ -n "${DEFLATE:-}" ]; then
  [ -n "${SERVERS_SET:-}" ] || SERVERS=(uringws node-ws)
  case $DEFLATE in
    shared) NODE_MODE=no-context; LOAD_MODE=shared ;;
    dedicated|dedicated:*) NODE_MODE=takeover; LOAD_MODE=dedicated ;;
    *) echo "compare.sh: DEFLATE must be shared, dedicated or dedicated:BITS" >&2; exit 1 ;;
  esac
  LEVEL=${LEVEL:-1}
  export UWS_ZLIB_LEVEL=$LEVEL
  UWS_EXTRA=(--compression "$DEFLATE" --compression-level "$LEVEL")
  LOAD_EXTRA=(--text --json-payload --compression "$LOAD_MODE")
  OFFER="permessage-deflate; client_max_window_bits"
  MEM_PASSES=("after the handshake|--extensions|$OFFER"
              "after one 1 KiB message each way|--extensions|$OFFER|--message|1024")
fi
# TLS runs: wss:// with the test CA's certificates (TLS_ARGS: the servers' extra arguments).
SCHEME=ws
TLS_ON=
TLS_ARGS=()
if [ -n "${TLS:-}" ] && [ "$TLS" != 0 ]; then
  if [ -n "${DEFLATE:-}" ]; then
    echo "compare.sh: TLS and DEFLATE are separate runs; set one of them" >&2; exit 1
  fi
  TLS_ON=1
  [ -n "${SERVERS_SET:-}" ] || SERVERS=(uringws fastwebsockets-tls)
  CERTS=$ROOT/target/tls/certs
  SCHEME=wss
  TLS_ARGS=(--tls-cert "$CERTS/server-chain.pem" --tls-key "$CERTS/server-key.pem")
  UWS_EXTRA=("${TLS_ARGS[@]}")
  LOAD_EXTRA=(--ca "$CERTS/ca.pem")
  MEM_PASSES=("after the TLS and WebSocket handshakes|--ca|$CERTS/ca.pem")
fi
# name|connections|size|pipeline
CASES=(
  "100 x 20 B|100|20|1"
  "100 x 1 KiB|100|1024|1"
  "10 x 64 KiB|10|65536|1"
  "1000 x 20 B|1000|20|1"
  "100 x 20 B, pipeline 16|100|20|16"
  "10 x 1 MiB|10|1048576|1"
)

if [ -n "${DEFLATE:-}" ]; then
  CASES=("100 x 1 KiB JSON, deflate $DEFLATE, level $LEVEL|100|1024|1")
fi
if [ -n "$TLS_ON" ]; then
  CASES=("100 x 1 KiB, TLS|100|1024|1" "10 x 64 KiB, TLS|10|65536|1")
fi

# CASE_FILTER: an extended regular expression; only the cases whose name matches run.
if [ -n "${CASE_FILTER:-}" ]; then
  kept=()
  for c in "${CASES[@]}"; do
    if [[ ${c%%|*} =~ $CASE_FILTER ]]; then kept+=("$c"); fi
  done
  CASES=("${kept[@]}")
fi

die() { echo "compare.sh: $*" >&2; exit 1; }
[ "$ROUNDS" -ge 3 ] 2>/dev/null || die "ROUNDS must be a number >= 3 (got '$ROUNDS')"
command -v taskset >/dev/null || die "taskset (util-linux) is required"
command -v python3 >/dev/null || die "python3 is required (for the tables)"
[ "$(nproc --all)" -gt "$((SERVER_CPU > LOAD_CPU ? SERVER_CPU : LOAD_CPU))" ] \
  || die "CPUs $SERVER_CPU and $LOAD_CPU must both exist"

T_START=$EPOCHREALTIME
runs=$(( ROUNDS * ${#CASES[@]} * ${#SERVERS[@]} ))
est=$(python3 -c "print(round(($runs * ($WARMUP + $DURATION + 1.5) + 4 * 15) / 60, 1))")
echo "compare.sh: $runs runs of ${WARMUP}+${DURATION} s, about $est min plus the build" >&2
if python3 -c "import sys; sys.exit(0 if $est > 15 else 1)"; then
  echo "compare.sh: warning: that is over 15 minutes; lower ROUNDS or DURATION" >&2
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "compare.sh: building uringws and bench/peers (release)" >&2
  (cd "$ROOT" && nice cargo build --release --locked --bin uringws)
  (cd "$PEERS" && nice cargo build --release --locked)
fi
for b in "$UWS" "$PEER_BIN/fastwebsockets-echo" "$PEER_BIN/tungstenite-echo" \
         "$PEER_BIN/raw-echo" "$PEER_BIN/idle-conns"; do
  [ -x "$b" ] || die "$b is missing (build it, or unset SKIP_BUILD)"
done
for s in "${SERVERS[@]}"; do
  case $s in
    floor) [ -x "$FLOOR_BIN/uring-floor" ] || die "$FLOOR_BIN/uring-floor is missing" ;;
    epoll-floor) [ -x "$FLOOR_BIN/epoll-floor" ] || die "$FLOOR_BIN/epoll-floor is missing" ;;
    uringws-old) [ -x "${UWS_OLD:-}" ] || die "UWS_OLD must name a uringws binary" ;;
    fastwebsockets-tls) [ -n "$TLS_ON" ] || die "fastwebsockets-tls serves wss:// only: set TLS=1" ;;
  esac
  case $s in
    uringws|uringws-old|fastwebsockets-tls) ;;
    *) [ -z "$TLS_ON" ] || die "$s does not serve TLS (TLS=1 runs uringws, uringws-old, fastwebsockets-tls)" ;;
  esac
done
if [ -n "$TLS_ON" ]; then
  "$ROOT/scripts/tls-certs.sh" "$CERTS" >&2 || die "cannot make the test certificates in $CERTS"
fi

mkdir -p "$OUT/logs"
RUNS_JSONL=$OUT/runs.jsonl
MEM_JSONL=$OUT/memory.jsonl
: >"$RUNS_JSONL"
: >"$MEM_JSONL"

port=$BASE_PORT
SPID=

# Starts server $1 on a fresh port, pinned, with one thread; sets SPID and PORT.
start_server() {
  local name=$1 log=$2
  port=$((port + 1))
  # A killed io_uring server releases its listener asynchronously: never reuse a port.
  while ss -Htan "( sport = :$port or dport = :$port )" | grep -q .; do port=$((port + 1)); done
  PORT=$port
  local addr=127.0.0.1:$PORT
  local -a cmd
  case $name in
    uringws)        cmd=("$UWS" echo "${UWS_EXTRA[@]}") ;;
    fastwebsockets) cmd=("$PEER_BIN/fastwebsockets-echo") ;;
    fastwebsockets-tls) cmd=("$PEER_BIN/fastwebsockets-echo" "${TLS_ARGS[@]}") ;;
    tungstenite)    cmd=("$PEER_BIN/tungstenite-echo") ;;
    raw)            cmd=("$PEER_BIN/raw-echo") ;;
    uringws-old)    cmd=("$UWS_OLD" echo "${TLS_ARGS[@]}") ;;
  esac
  # taskset execs the server, so $! is the server's own pid.
  case $name in
    floor|epoll-floor)
      local bin=uring-floor
      [ "$name" = epoll-floor ] && bin=epoll-floor
      taskset -c "$SERVER_CPU" "$FLOOR_BIN/$bin" --addr 127.0.0.1 --port "$PORT" \
        >"$log" 2>&1 & ;;
    node-ws)
      taskset -c "$SERVER_CPU" node "$ROOT/tests/interop/peer.mjs" server "$NODE_MODE" "$PORT" \
        >"$log" 2>&1 & ;;
    *) taskset -c "$SERVER_CPU" "${cmd[@]}" --threads 1 --addr "$addr" >"$log" 2>&1 & ;;
  esac
  SPID=$!
  local i
  for i in $(seq 100); do
    if ss -Hltn "sport = :$PORT" | grep -q .; then return 0; fi
    kill -0 "$SPID" 2>/dev/null || die "$name exited at start; see $log"
    sleep 0.05
  done
  die "$name is not listening on $addr after 5 s; see $log"
}

# Stops the server started last (SIGTERM, then SIGKILL after 5 s).
stop_server() {
  [ -n "$SPID" ] || return 0
  kill -TERM "$SPID" 2>/dev/null || true
  local i
  for i in $(seq 50); do
    kill -0 "$SPID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$SPID" 2>/dev/null || true
  wait "$SPID" 2>/dev/null || true
  SPID=
}
trap 'stop_server' EXIT

# "utime stime" of process $1 in clock ticks.
cpu_ticks() {
  local stat
  stat=$(<"/proc/$1/stat")
  local rest=${stat##*) }
  local -a f
  read -r -a f <<<"$rest"
  # Fields 14 and 15 of stat(5); `rest` starts at field 3.
  echo "${f[11]} ${f[12]}"
}

# "process irq total" clock ticks of CPU $1 from /proc/stat: time in processes (user nice
# system steal), in interrupts (irq softirq: loopback packet processing lands here), and all.
cpu_core_ticks() {
  local line
  line=$(grep "^cpu$1 " /proc/stat)
  local -a f
  read -r -a f <<<"$line"
  local proc=$(( f[1] + f[2] + f[3] + f[8] )) irq=$(( f[6] + f[7] ))
  echo "$proc $irq $(( proc + irq + f[4] + f[5] ))"
}

# Sleeps until $1 microseconds since the epoch.
sleep_until_us() {
  local t=${EPOCHREALTIME/[.,]/}
  local d=$(( $1 - t ))
  if [ "$d" -gt 0 ]; then sleep "$(printf '%d.%06d' $((d / 1000000)) $((d % 1000000)))"; fi
}

# One measured run: server $1, case $2 (index), round $3.
run_one() {
  local server=$1 ci=$2 round=$3
  local name conns size pipeline
  IFS='|' read -r name conns size pipeline <<<"${CASES[$ci]}"
  local tag="r${round}-c${ci}-${server}"
  start_server "$server" "$OUT/logs/$tag.server.log"
  local t0 c0 c1 c2 rc=0
  local warm_us dur_us
  warm_us=$(python3 -c "print(round($WARMUP * 1e6))")
  dur_us=$(python3 -c "print(round($DURATION * 1e6))")
  c0=$(cpu_ticks "$SPID")
  t0=${EPOCHREALTIME/[.,]/}
  taskset -c "$LOAD_CPU" "$UWS" load --url "$SCHEME://127.0.0.1:$PORT/" --connections "$conns" \
    --size "$size" --pipeline "$pipeline" --duration "$DURATION" --warmup "$WARMUP" \
    --threads 1 --json "${LOAD_EXTRA[@]}" >"$OUT/logs/$tag.load.json" 2>"$OUT/logs/$tag.load.err" &
  local lpid=$!
  sleep_until_us $(( t0 + warm_us ))
  c1=$(cpu_ticks "$SPID")
  local k1 k2 la
  k1=$(cpu_core_ticks "$SERVER_CPU")
  sleep_until_us $(( t0 + warm_us + dur_us ))
  c2=$(cpu_ticks "$SPID")
  k2=$(cpu_core_ticks "$SERVER_CPU")
  la=$(cut -d' ' -f1 /proc/loadavg)
  wait "$lpid" || rc=$?
  local c3
  c3=$(cpu_ticks "$SPID")
  stop_server
  python3 - "$OUT/logs/$tag.load.json" "$RUNS_JSONL" <<EOF
import json, sys
path, out = sys.argv[1], sys.argv[2]
try:
    load = json.loads(open(path).read().strip().splitlines()[-1])
except Exception as e:
    load = {"errors": None, "parse_error": str(e)}
def split(t):
    u, s = (int(x) for x in t.split())
    return u, s
u1, s1 = split("$c1"); u2, s2 = split("$c2")
ticks = (u2 + s2) - (u1 + s1)
uticks, sticks = u2 - u1, s2 - s1
total_ticks = sum(split("$c3")) - sum(split("$c0"))
k1, k2 = "$k1".split(), "$k2".split()
core_proc, core_irq, core_total = (int(b) - int(a) for a, b in zip(k1, k2))
msgs = load.get("messages") or 0
rec = {
    "round": $round, "case": "$name", "server": "$server",
    "connections": $conns, "size": $size, "pipeline": $pipeline,
    "duration_s": $DURATION, "warmup_s": $WARMUP, "load_exit": $rc,
    "server_cpu_ticks_window": ticks, "server_cpu_ticks_total": total_ticks,
    "server_user_ticks_window": uticks, "server_sys_ticks_window": sticks,
    "clk_tck": $CLK_TCK,
    "server_cpu_s_window": ticks / $CLK_TCK,
    "server_us_per_msg": (ticks / $CLK_TCK * 1e6 / msgs) if msgs else None,
    "server_user_us_per_msg": (uticks / $CLK_TCK * 1e6 / msgs) if msgs else None,
    "server_sys_us_per_msg": (sticks / $CLK_TCK * 1e6 / msgs) if msgs else None,
    # The server's core over the same window: ticks in processes, in irq/softirq, and all;
    # the share of its time that other processes took (other work on the machine).
    "server_core_process_ticks": core_proc, "server_core_irq_ticks": core_irq,
    "server_core_total_ticks": core_total,
    "server_core_foreign_share": (max(0, core_proc - ticks) / core_total) if core_total else None,
    "server_core_irq_share": (core_irq / core_total) if core_total else None,
    "loadavg_1m": $la,
    "load": load,
}
open(out, "a").write(json.dumps(rec) + "\n")
print(f"  {rec['case']:<24} {rec['server']:<15} {load.get('msgs_per_sec', 0) or 0:>10.0f} msg/s"
      f"  p99 {load.get('p99_us')} us  cpu {rec['server_cpu_s_window']:.2f} s"
      f"  {rec['server_us_per_msg'] or 0:.2f} us/msg  errors {load.get('errors')}"
      f"  other procs {100 * (rec['server_core_foreign_share'] or 0):.0f}%"
      f"  irq {100 * (rec['server_core_irq_share'] or 0):.0f}%  loadavg {$la}", file=sys.stderr)
EOF
}

# The memory check for server $1; $2 names the pass, the rest are idle-conns arguments.
mem_one() {
  local server=$1 pass=$2
  shift 2
  start_server "$server" "$OUT/logs/mem-$server.server.log"
  sleep 0.5
  local before after after2 ready
  before=$(awk '/^VmRSS:/ {print $2}' "/proc/$SPID/status")
  coproc IC { taskset -c "$LOAD_CPU" "$PEER_BIN/idle-conns" --addr "127.0.0.1:$PORT" \
                --count "$MEM_CONNS" --hold 120 "$@" 2>"$OUT/logs/mem-$server.client.err"; }
  local icpid=$IC_PID
  ready=0
  if read -r -t 100 line <&"${IC[0]}"; then ready=${line#ready }; fi
  sleep 1
  after=$(awk '/^VmRSS:/ {print $2}' "/proc/$SPID/status")
  sleep 0.5
  after2=$(awk '/^VmRSS:/ {print $2}' "/proc/$SPID/status")
  local fds
  fds=$(ls "/proc/$SPID/fd" | wc -l)
  local wfd=${IC[1]}
  exec {wfd}>&-
  wait "$icpid" 2>/dev/null || true
  stop_server
  local negotiated=
  if [ -n "$TLS_ON" ]; then
    negotiated=$(sed -n 's/^idle-conns: first TLS connection: //p' \
                   "$OUT/logs/mem-$server.client.err" | head -n 1)
    echo "  memory $server: TLS ${negotiated:-(not seen)}" >&2
  fi
  python3 - "$MEM_JSONL" <<EOF
import json, sys
ready = int("$ready" or 0)
after = max($after, $after2)
rec = {"server": "$server", "pass": "$pass", "connections_asked": $MEM_CONNS, "connections_open": ready,
       "server_fds": $fds, "vmrss_before_kib": $before, "vmrss_after_kib": after,
       "kib_per_connection": ((after - $before) / ready) if ready else None}
if "$TLS_ON":
    rec["tls_negotiated"] = "$negotiated" or None
open(sys.argv[1], "a").write(json.dumps(rec) + "\n")
print(f"  memory {rec['server']:<15} {ready} open: {$before} -> {after} KiB,"
      f" {rec['kib_per_connection'] or 0:.2f} KiB/conn", file=sys.stderr)
EOF
}

echo "compare.sh: servers on CPU $SERVER_CPU, load on CPU $LOAD_CPU, CLK_TCK $CLK_TCK" >&2
for round in $(seq "$ROUNDS"); do
  echo "compare.sh: round $round of $ROUNDS" >&2
  for ci in "${!CASES[@]}"; do
    for server in "${SERVERS[@]}"; do
      run_one "$server" "$ci" "$round"
    done
  done
done

if [ "$MEM_CONNS" -gt 0 ]; then
  echo "compare.sh: memory, $MEM_CONNS idle connections per server" >&2
  for p in "${MEM_PASSES[@]}"; do
    IFS='|' read -r -a mem_args <<<"$p"
    for server in "${SERVERS[@]}"; do
      mem_one "$server" "${mem_args[@]}"
    done
  done
fi

T_END=$EPOCHREALTIME

# Results, table and plot.
python3 - "$OUT" "$T_START" "$T_END" "$(uname -r)" "$(nproc)" "$ROUNDS" "$DURATION" "$WARMUP" \
  "$SERVER_CPU" "$LOAD_CPU" "${SERVERS[*]}" "$TLS_ON" <<'EOF'
import json, statistics, sys
out, t0, t1, kernel, ncpu, rounds, duration, warmup, scpu, lcpu, servers, tls = sys.argv[1:]
servers = servers.split()
runs = [json.loads(l) for l in open(f"{out}/runs.jsonl")]
mem = [json.loads(l) for l in open(f"{out}/memory.jsonl")]
cases = list(dict.fromkeys(r["case"] for r in runs))

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

summary = []
for c in cases:
    for s in servers:
        rs = [r for r in runs if r["case"] == c and r["server"] == s]
        summary.append({
            "case": c, "server": s, "runs": len(rs),
            "msgs_per_sec": med([r["load"].get("msgs_per_sec") for r in rs]),
            "p99_us": med([r["load"].get("p99_us") for r in rs]),
            "server_us_per_msg": med([r["server_us_per_msg"] for r in rs]),
            "server_user_us_per_msg": med([r.get("server_user_us_per_msg") for r in rs]),
            "server_sys_us_per_msg": med([r.get("server_sys_us_per_msg") for r in rs]),
            "errors": sum((r["load"].get("errors") or 0) for r in rs),
            "wire_bytes_per_msg": med([r["load"].get("wire_bytes_per_msg") for r in rs]),
            "server_core_foreign_share": med([r["server_core_foreign_share"] for r in rs]),
            "msgs_per_sec_rounds": [r["load"].get("msgs_per_sec") for r in rs],
            "min_cpu_ticks_window": min((r["server_cpu_ticks_window"] for r in rs), default=None),
        })
def ratio(a, b):
    return a / b if a and b else None

def find(case, server):
    return next((x for x in summary if x["case"] == case and x["server"] == server), None)

for row in summary:
    base = find(row["case"], "uringws") or row
    row["ratio_to_uringws"] = ratio(row["msgs_per_sec"], base["msgs_per_sec"])
    # Server CPU per message against fastwebsockets and the io_uring floor (lower is better).
    for peer, key in (("fastwebsockets", "cpu_vs_fastwebsockets"), ("floor", "cpu_vs_floor"),
                      ("node-ws", "cpu_vs_node_ws")):
        other = find(row["case"], peer)
        row[key] = ratio(row["server_us_per_msg"], other and other["server_us_per_msg"])
    if tls:
        other = find(row["case"], "fastwebsockets-tls")
        row["cpu_vs_fastwebsockets_tls"] = ratio(row["server_us_per_msg"],
                                                 other and other["server_us_per_msg"])
        row["msgs_per_sec_vs_fastwebsockets_tls"] = ratio(row["msgs_per_sec"],
                                                          other and other["msgs_per_sec"])
if tls:
    base_mem = {m.get("pass"): m for m in mem if m["server"] == "fastwebsockets-tls"}
    for m in mem:
        other = base_mem.get(m.get("pass"))
        m["kib_per_connection_vs_fastwebsockets_tls"] = ratio(
            m["kib_per_connection"], other and other["kib_per_connection"])

elapsed = float(t1) - float(t0)
doc = {
    "method": {
        "rounds": int(rounds), "duration_s": float(duration), "warmup_s": float(warmup),
        "server_cpu": int(scpu), "load_cpu": int(lcpu), "server_threads": 1, "load_threads": 1,
        "kernel": kernel, "cpus": int(ncpu),
        "server_us_per_msg": "(utime+stime delta over the load tool's measured window, "
                             "sampled at launch+warmup and launch+warmup+duration) / "
                             "messages echoed in that window",
        "order": "for each round, for each case, each server in turn",
    },
    "elapsed_s": round(elapsed, 1),
    "summary": summary, "memory": mem, "runs": runs,
}
if tls:
    doc["method"]["tls"] = ("wss://: servers with scripts/tls-certs.sh's RSA 2048 chain and key, "
                            "clients trusting its CA; rustls with the ring provider everywhere")
json.dump(doc, open(f"{out}/results.json", "w"), indent=1)

def f(v, fmt):
    return "-" if v is None else format(v, fmt)

lines = [
    f"Median of {rounds} rounds, {duration} s measured after {warmup} s warm-up; each server "
    f"one thread on CPU {scpu}, `uringws load --threads 1` on CPU {lcpu}; kernel {kernel}.",
    "",
    "| case | server | msgs/s | p99 µs | server µs/msg (user / sys) | CPU ÷ fastwebsockets | CPU ÷ floor | CPU ÷ node-ws | msgs/s ÷ uringws | wire bytes per echo | errors | other processes on server core |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]
if tls:
    lines[0] = lines[0].replace("; kernel", "; wss:// (rustls, ring provider); kernel")
    lines[2:] = [
        "| case | server | msgs/s | p99 µs | server µs/msg (user / sys) | CPU ÷ fastwebsockets-tls | msgs/s ÷ fastwebsockets-tls | errors | other processes on server core |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
for row in summary:
    if tls:
        lines.append(
            f"| {row['case']} | {row['server']} | {f(row['msgs_per_sec'], ',.0f')} | "
            f"{f(row['p99_us'], '.0f')} | {f(row['server_us_per_msg'], '.2f')} "
            f"({f(row['server_user_us_per_msg'], '.2f')} / {f(row['server_sys_us_per_msg'], '.2f')}) | "
            f"{f(row['cpu_vs_fastwebsockets_tls'], '.2f')} | "
            f"{f(row['msgs_per_sec_vs_fastwebsockets_tls'], '.2f')} | {row['errors']} | "
            f"{f(None if row['server_core_foreign_share'] is None else 100 * row['server_core_foreign_share'], '.0f')}% |")
        continue
    lines.append(
        f"| {row['case']} | {row['server']} | {f(row['msgs_per_sec'], ',.0f')} | "
        f"{f(row['p99_us'], '.0f')} | {f(row['server_us_per_msg'], '.2f')} "
        f"({f(row['server_user_us_per_msg'], '.2f')} / {f(row['server_sys_us_per_msg'], '.2f')}) | "
        f"{f(row['cpu_vs_fastwebsockets'], '.2f')} | {f(row['cpu_vs_floor'], '.2f')} | "
        f"{f(row['cpu_vs_node_ws'], '.2f')} | {f(row['ratio_to_uringws'], '.2f')} | "
        f"{f(row['wire_bytes_per_msg'], '.0f')} | {row['errors']} | "
        f"{f(None if row['server_core_foreign_share'] is None else 100 * row['server_core_foreign_share'], '.0f')}% |")
# A CPU figure resting on few clock ticks is not a measurement (a stalled server may run
# for one tick in the window): say so under the table.
FEW_TICKS = 50
few = [r for r in summary if r["min_cpu_ticks_window"] is not None and r["min_cpu_ticks_window"] < FEW_TICKS]
if few:
    lines += ["", f"**Warning:** these CPU figures rest on fewer than {FEW_TICKS} clock ticks of "
              f"server CPU time in at least one round (a tick is {1000 / runs[0]['clk_tck']:.0f} ms; one tick "
              "more or less moves them by the share shown): "
              + "; ".join(f"{r['case']} / {r['server']}: {r['min_cpu_ticks_window']} ticks "
                          f"({100 / max(1, r['min_cpu_ticks_window']):.0f}%)" for r in few) + "."]
if mem and tls:
    lines += ["", "Idle TLS connections after the TLS and WebSocket handshakes (server VmRSS growth):", "",
              "| server | measured | connections open | RSS before KiB | RSS after KiB | KiB per connection | ÷ fastwebsockets-tls | negotiated (first connection) |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for m in mem:
        lines.append(f"| {m['server']} | {m.get('pass', '')} | {m['connections_open']} | {m['vmrss_before_kib']} | "
                     f"{m['vmrss_after_kib']} | {f(m['kib_per_connection'], '.2f')} | "
                     f"{f(m['kib_per_connection_vs_fastwebsockets_tls'], '.2f')} | {m.get('tls_negotiated') or '-'} |")
elif mem:
    lines += ["", f"Idle connections after the handshake (server VmRSS growth):", "",
              "| server | measured | connections open | RSS before KiB | RSS after KiB | KiB per connection |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for m in mem:
        lines.append(f"| {m['server']} | {m.get('pass', '')} | {m['connections_open']} | {m['vmrss_before_kib']} | "
                     f"{m['vmrss_after_kib']} | {f(m['kib_per_connection'], '.2f')} |")
lines += ["", "Medians per case and server. \"other processes on server core\": the median share "
          "of the server core's time over the measured window taken by processes other than the "
          "server (irq/softirq time, where loopback packets are processed, is not counted in it): "
          "a noisy machine shows here.", "", f"Total time {elapsed / 60:.1f} min."]
table = "\n".join(lines) + "\n"
open(f"{out}/table.md", "w").write(table)
print(table)

# Data for the plot: one row per case, one column per server.
with open(f"{out}/msgs_per_sec.dat", "w") as fh:
    fh.write("case " + " ".join(servers) + "\n")
    for c in cases:
        vals = [next(x for x in summary if x["case"] == c and x["server"] == s)["msgs_per_sec"] or 0
                for s in servers]
        fh.write('"' + c.replace(", ", "\\n") + '" ' + " ".join(f"{v:.0f}" for v in vals) + "\n")
EOF

if ! command -v gnuplot >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "compare.sh: installing gnuplot-nox for the plot" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnuplot-nox) \
    >"$OUT/logs/apt-gnuplot.log" 2>&1 || true
fi
if command -v gnuplot >/dev/null; then
  gnuplot <<EOF
set terminal pngcairo size 1100,600 noenhanced font ",10"
set output "$OUT/msgs_per_sec.png"
set title "Echo throughput${TLS_ON:+ over TLS}, one server thread (median of $ROUNDS x ${DURATION} s; log scale)"
set ylabel "messages per second"
set logscale y
set yrange [1000:*]
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key outside top center horizontal
set bmargin 4
set grid ytics
set format y "%.0s%c"
plot for [i=2:$(( ${#SERVERS[@]} + 1 ))] "$OUT/msgs_per_sec.dat" using i:xtic(1) title columnheader(i)
EOF
  echo "compare.sh: plot $OUT/msgs_per_sec.png" >&2
else
  echo "compare.sh: gnuplot is not available: no plot" >&2
fi
echo "compare.sh: wrote $OUT/results.json and $OUT/table.md" >&2
