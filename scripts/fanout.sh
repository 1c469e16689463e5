#!/usr/bin/env bash
# Fan-out benchmark (issue 13, rooms and broadcast): what one server thread spends per message
# delivered to 10,000 subscribers, against what it spends per message echoed, in the same run.
#
#   echo     `uringws echo --threads 1` with `uringws load --connections 100 --size 20
#            --pipeline 1` (compare.sh's "100 x 20 B" case): server CPU per message echoed
#   fan-out  `uringws broadcast --threads 1` with `uringws load --fanout --connections
#            $SUBSCRIBERS --size 100 --pipeline $FANOUT_PIPELINE`: one publisher, SUBSCRIBERS
#            subscribers of one topic, 100 B text messages, at most FANOUT_PIPELINE of them not
#            yet received by every subscriber; server CPU per message delivered (one subscriber
#            receiving one message), and deliveries per second
#
# Target: fan-out CPU per delivery <= TARGET_RATIO (0.4) x echo CPU per message. A delivery
# needs one encode and one write per subscriber per batch and no read, an echo a read, a
# parse and a write.
#
# Usage: scripts/fanout.sh            (ROUNDS=3 DURATION=5 by default)
#   ROUNDS           rounds (default 3); each round runs echo, then fan-out
#   DURATION         measured seconds per run (default 5)
#   WARMUP           echo warm-up seconds (default 1)
#   FANOUT_WARMUP    fan-out warm-up seconds (default 3): the subscribers connect and join in it
#                    (the load tool counts an error when they were not all in by its end)
#   SUBSCRIBERS      fan-out subscribers (default 10000)
#   FANOUT_PIPELINE  fan-out window (default 1): messages published and not yet received by
#                    every subscriber. At 1 each delivery is a write of its own; above 1 the
#                    messages a subscriber gets in one server loop turn leave in one write
#   SERVER_CPU       CPU the server is pinned to (default 0); LOAD_CPU for `uringws load` (1)
#   TARGET_RATIO     the ratio to meet (default 0.4)
#   SKIP_BUILD=1     uses the binary already built
#
# Method (compare.sh's)
# - Each run starts a fresh server on its own port, pinned with `taskset -c $SERVER_CPU`, and
#   `uringws load --threads 1 --json` pinned with `taskset -c $LOAD_CPU`.
# - Order: for each round, echo then fan-out, so that drift in the machine's load is spread
#   over both.
# - Server CPU per message: utime+stime of the server process, and each of the two (user space
#   and kernel) separately (/proc/PID/stat, in clock ticks of `getconf CLK_TCK`), sampled by
#   this script at launch+warm-up and launch+warm-up+DURATION, i.e. at the load tool's own
#   warm-up end and window end (it starts its clock as it starts). The delta is divided by
#   `messages`, which the load tool counts inside its window: echoes received, or with
#   --fanout deliveries (messages received by subscribers). Connection set-up, the
#   subscribers' join and the closing handshakes are therefore not counted. The load tool's
#   own CPU over the window is recorded too (near 100% means it, not the server, set the pace).
# - Reported: per round and as medians, msgs/s (deliveries/s for fan-out), server us/msg with
#   its user/sys split, the ratio fan-out us/delivery / echo us/msg of each round and its
#   median, and whether that median meets TARGET_RATIO.
# - File descriptors: the soft limit is raised to the hard limit (as root, both are raised to
#   what SUBSCRIBERS needs when the hard limit is lower); the servers and the load tool inherit
#   it.
# - Outputs: target/fanout/results.json (every run, raw, and the summary), target/fanout/table.md
#   (also printed), target/fanout/logs/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
FANOUT_WARMUP=${FANOUT_WARMUP:-3}
SUBSCRIBERS=${SUBSCRIBERS:-10000}
FANOUT_PIPELINE=${FANOUT_PIPELINE:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
TARGET_RATIO=${TARGET_RATIO:-0.4}
BASE_PORT=${BASE_PORT:-19400}
OUT=$ROOT/target/fanout
UWS=$ROOT/target/release/uringws
CLK_TCK=$(getconf CLK_TCK)

die() { echo "fanout.sh: $*" >&2; exit 1; }
[ "$ROUNDS" -ge 1 ] 2>/dev/null || die "ROUNDS must be a number >= 1 (got '$ROUNDS')"
[ "$SUBSCRIBERS" -ge 1 ] 2>/dev/null || die "SUBSCRIBERS must be a number >= 1"
command -v taskset >/dev/null || die "taskset (util-linux) is required"
command -v python3 >/dev/null || die "python3 is required (for the tables)"
[ "$(nproc --all)" -gt "$((SERVER_CPU > LOAD_CPU ? SERVER_CPU : LOAD_CPU))" ] \
  || die "CPUs $SERVER_CPU and $LOAD_CPU must both exist"

# Descriptors: SUBSCRIBERS + the publisher + slack, in the server and in the load tool.
need=$((SUBSCRIBERS + 256))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
  if [ "$(id -u)" = 0 ]; then
    ulimit -Hn "$need" || die "cannot raise the hard descriptor limit to $need"
  else
    die "the hard descriptor limit ($hard) is below $need: raise it (ulimit -Hn, limits.conf) or run as root"
  fi
fi
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge "$need" ] \
  || die "the descriptor limit $(ulimit -n) is below $need"
MAX_CONNS=$((SUBSCRIBERS + 64 > 20000 ? SUBSCRIBERS + 64 : 20000))

if [ "${SKIP_BUILD:-}" != 1 ]; then
  echo "fanout.sh: building target/release/uringws" >&2
  (cd "$ROOT" && cargo build --release --bin uringws) >&2
fi
[ -x "$UWS" ] || die "$UWS is missing (build it, or unset SKIP_BUILD)"

rm -rf "$OUT"
mkdir -p "$OUT/logs"
RUNS_JSONL=$OUT/runs.jsonl
: >"$RUNS_JSONL"

T_START=$EPOCHREALTIME
est=$(python3 -c "print(round($ROUNDS * ($WARMUP + $FANOUT_WARMUP + 2 * $DURATION + 8) / 60, 1))")
echo "fanout.sh: $ROUNDS round(s) of echo and fan-out, about $est min; server on CPU $SERVER_CPU, load on CPU $LOAD_CPU, CLK_TCK $CLK_TCK, descriptors $(ulimit -n)" >&2

port=$BASE_PORT
SPID=

# Starts server $1 (echo or broadcast) on a fresh port, pinned, with one thread; sets SPID
# and PORT.
start_server() {
  local kind=$1 log=$2
  port=$((port + 1))
  # A killed io_uring server releases its listener asynchronously: never reuse a port.
  while ss -Htan "( sport = :$port or dport = :$port )" | grep -q .; do port=$((port + 1)); done
  PORT=$port
  local addr=127.0.0.1:$PORT
  # taskset execs the server, so $! is the server's own pid.
  taskset -c "$SERVER_CPU" "$UWS" "$kind" --threads 1 --addr "$addr" \
    --max-connections "$MAX_CONNS" >"$log" 2>&1 &
  SPID=$!
  local i
  for i in $(seq 100); do
    if ss -Hltn "sport = :$PORT" | grep -q .; then return 0; fi
    kill -0 "$SPID" 2>/dev/null || die "$kind exited at start; see $log"
    sleep 0.05
  done
  die "$kind is not listening on $addr after 5 s; see $log"
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

# "utime stime" of process $1 in clock ticks ("0 0" once it is gone).
cpu_ticks() {
  local stat
  stat=$(<"/proc/$1/stat") 2>/dev/null || { echo "0 0"; return; }
  local rest=${stat##*) }
  local -a f
  read -r -a f <<<"$rest"
  # Fields 14 and 15 of stat(5); `rest` starts at field 3.
  echo "${f[11]} ${f[12]}"
}

# "process irq total" clock ticks of CPU $1 from /proc/stat: time in processes (user nice
# system steal), in interrupts (irq softirq), and all.
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

# One measured run: case $1 (echo or fanout), round $2.
run_one() {
  local kind=$1 round=$2
  local server warmup name conns size pipeline url
  local -a extra=()
  if [ "$kind" = echo ]; then
    server=echo warmup=$WARMUP name="echo 100 x 20 B" conns=100 size=20 pipeline=1
    url="ws://127.0.0.1:PORT/"
  else
    server=broadcast warmup=$FANOUT_WARMUP conns=$SUBSCRIBERS size=100 pipeline=$FANOUT_PIPELINE
    name="fan-out 1 -> $SUBSCRIBERS x 100 B, window $FANOUT_PIPELINE"
    url="ws://127.0.0.1:PORT/bench"
    extra=(--fanout)
  fi
  local tag="r${round}-${kind}"
  start_server "$server" "$OUT/logs/$tag.server.log"
  url=${url/PORT/$PORT}
  local t0 c0 c1 c2 l1 l2 rc=0
  local warm_us dur_us
  warm_us=$(python3 -c "print(round($warmup * 1e6))")
  dur_us=$(python3 -c "print(round($DURATION * 1e6))")
  c0=$(cpu_ticks "$SPID")
  t0=${EPOCHREALTIME/[.,]/}
  taskset -c "$LOAD_CPU" "$UWS" load "${extra[@]}" --url "$url" --connections "$conns" \
    --size "$size" --pipeline "$pipeline" --duration "$DURATION" --warmup "$warmup" \
    --threads 1 --json >"$OUT/logs/$tag.load.json" 2>"$OUT/logs/$tag.load.err" &
  local lpid=$!
  sleep_until_us $(( t0 + warm_us ))
  c1=$(cpu_ticks "$SPID")
  l1=$(cpu_ticks "$lpid")
  local k1 k2 la
  k1=$(cpu_core_ticks "$SERVER_CPU")
  sleep_until_us $(( t0 + warm_us + dur_us ))
  c2=$(cpu_ticks "$SPID")
  l2=$(cpu_ticks "$lpid")
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
load_ticks = sum(split("$l2")) - sum(split("$l1"))
k1, k2 = "$k1".split(), "$k2".split()
core_proc, core_irq, core_total = (int(b) - int(a) for a, b in zip(k1, k2))
msgs = load.get("messages") or 0
rec = {
    "round": $round, "case": "$kind", "name": "$name",
    "connections": $conns, "size": $size, "pipeline": $pipeline,
    "duration_s": $DURATION, "warmup_s": $warmup, "load_exit": $rc,
    "server_cpu_ticks_window": ticks, "server_cpu_ticks_total": total_ticks,
    "server_user_ticks_window": uticks, "server_sys_ticks_window": sticks,
    "clk_tck": $CLK_TCK,
    "server_cpu_s_window": ticks / $CLK_TCK,
    "server_us_per_msg": (ticks / $CLK_TCK * 1e6 / msgs) if msgs else None,
    "server_user_us_per_msg": (uticks / $CLK_TCK * 1e6 / msgs) if msgs else None,
    "server_sys_us_per_msg": (sticks / $CLK_TCK * 1e6 / msgs) if msgs else None,
    "server_cpu_share": ticks / $CLK_TCK / $DURATION,
    "load_cpu_share": load_ticks / $CLK_TCK / $DURATION,
    "server_core_process_ticks": core_proc, "server_core_irq_ticks": core_irq,
    "server_core_total_ticks": core_total,
    "server_core_foreign_share": (max(0, core_proc - ticks) / core_total) if core_total else None,
    "server_core_irq_share": (core_irq / core_total) if core_total else None,
    "loadavg_1m": $la,
    "load": load,
}
open(out, "a").write(json.dumps(rec) + "\n")
print(f"  {rec['name']:<36} {load.get('msgs_per_sec', 0) or 0:>10.0f} msg/s"
      f"  cpu {rec['server_cpu_s_window']:.2f} s  {rec['server_us_per_msg'] or 0:.3f} us/msg"
      f"  load tool {100 * rec['load_cpu_share']:.0f}%  errors {load.get('errors')}"
      f"  other procs {100 * (rec['server_core_foreign_share'] or 0):.0f}%  loadavg {$la}",
      file=sys.stderr)
EOF
}

for round in $(seq "$ROUNDS"); do
  echo "fanout.sh: round $round of $ROUNDS" >&2
  run_one echo "$round"
  run_one fanout "$round"
done

T_END=$EPOCHREALTIME

python3 - "$OUT" "$T_START" "$T_END" "$(uname -r)" "$(nproc)" "$ROUNDS" "$DURATION" "$WARMUP" \
  "$FANOUT_WARMUP" "$SERVER_CPU" "$LOAD_CPU" "$TARGET_RATIO" "$SUBSCRIBERS" "$FANOUT_PIPELINE" <<'EOF'
import json, statistics, sys
(out, t0, t1, kernel, ncpu, rounds, duration, warmup, fwarmup, scpu, lcpu, target, subs,
 window) = sys.argv[1:]
target = float(target)
runs = [json.loads(l) for l in open(f"{out}/runs.jsonl")]

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def f(v, fmt):
    return "-" if v is None else format(v, fmt)

summary = {}
for case in ("echo", "fanout"):
    rs = [r for r in runs if r["case"] == case]
    summary[case] = {
        "name": rs[0]["name"] if rs else case, "runs": len(rs),
        "msgs_per_sec": med([r["load"].get("msgs_per_sec") for r in rs]),
        "published_per_sec": med([r["load"].get("published_per_sec") for r in rs]),
        "p50_us": med([r["load"].get("p50_us") for r in rs]),
        "p99_us": med([r["load"].get("p99_us") for r in rs]),
        "server_us_per_msg": med([r["server_us_per_msg"] for r in rs]),
        "server_user_us_per_msg": med([r["server_user_us_per_msg"] for r in rs]),
        "server_sys_us_per_msg": med([r["server_sys_us_per_msg"] for r in rs]),
        "server_cpu_share": med([r["server_cpu_share"] for r in rs]),
        "load_cpu_share": med([r["load_cpu_share"] for r in rs]),
        "server_core_foreign_share": med([r["server_core_foreign_share"] for r in rs]),
        "errors": sum((r["load"].get("errors") or 0) for r in rs),
        "failed_runs": sum(1 for r in rs if r["load_exit"] != 0),
    }

ratios = []
for rnd in sorted({r["round"] for r in runs}):
    e = next((r for r in runs if r["round"] == rnd and r["case"] == "echo"), None)
    fo = next((r for r in runs if r["round"] == rnd and r["case"] == "fanout"), None)
    a = e and e["server_us_per_msg"]
    b = fo and fo["server_us_per_msg"]
    ratios.append({"round": rnd, "echo_us_per_msg": a, "fanout_us_per_delivery": b,
                   "ratio": (b / a) if a and b else None,
                   "fanout_deliveries_per_sec": fo and fo["load"].get("msgs_per_sec")})
ratio_median = med([r["ratio"] for r in ratios])
meets = ratio_median is not None and ratio_median <= target

elapsed = float(t1) - float(t0)
doc = {
    "method": {
        "rounds": int(rounds), "duration_s": float(duration), "warmup_s": float(warmup),
        "fanout_warmup_s": float(fwarmup), "subscribers": int(subs), "fanout_window": int(window),
        "server_cpu": int(scpu), "load_cpu": int(lcpu), "server_threads": 1, "load_threads": 1,
        "kernel": kernel, "cpus": int(ncpu),
        "server_us_per_msg": "(utime+stime delta over the load tool's measured window, "
                             "sampled at launch+warmup and launch+warmup+duration) / messages "
                             "in that window (echoes, or deliveries to subscribers)",
        "ratio": "fan-out us per delivery / echo us per message, per round; median over rounds",
        "order": "for each round, echo then fan-out",
    },
    "elapsed_s": round(elapsed, 1),
    "target_ratio": target, "ratio_median": ratio_median, "meets_target": meets,
    "ratios": ratios, "summary": summary, "runs": runs,
}
json.dump(doc, open(f"{out}/results.json", "w"), indent=1)

lines = [
    f"Median of {rounds} round(s), {duration} s measured after {warmup} s (echo) or {fwarmup} s "
    f"(fan-out) of warm-up; each server one thread on CPU {scpu}, `uringws load --threads 1` "
    f"on CPU {lcpu}; kernel {kernel}.",
    "",
    "| case | msgs/s (fan-out: deliveries/s) | published/s | p50 µs | p99 µs | server µs/msg (user / sys) | server CPU | load tool CPU | errors | other processes on server core |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]
for case in ("echo", "fanout"):
    s = summary[case]
    lines.append(
        f"| {s['name']} | {f(s['msgs_per_sec'], ',.0f')} | {f(s['published_per_sec'], ',.0f')} | "
        f"{f(s['p50_us'], ',.0f')} | {f(s['p99_us'], ',.0f')} | "
        f"{f(s['server_us_per_msg'], '.3f')} ({f(s['server_user_us_per_msg'], '.3f')} / "
        f"{f(s['server_sys_us_per_msg'], '.3f')}) | "
        f"{f(None if s['server_cpu_share'] is None else 100 * s['server_cpu_share'], '.0f')}% | "
        f"{f(None if s['load_cpu_share'] is None else 100 * s['load_cpu_share'], '.0f')}% | "
        f"{s['errors']} | "
        f"{f(None if s['server_core_foreign_share'] is None else 100 * s['server_core_foreign_share'], '.0f')}% |")
lines += ["", "| round | echo µs/msg | fan-out µs/delivery | ratio | fan-out deliveries/s |",
          "| ---: | ---: | ---: | ---: | ---: |"]
for r in ratios:
    lines.append(f"| {r['round']} | {f(r['echo_us_per_msg'], '.3f')} | "
                 f"{f(r['fanout_us_per_delivery'], '.3f')} | {f(r['ratio'], '.3f')} | "
                 f"{f(r['fanout_deliveries_per_sec'], ',.0f')} |")
lines.append(f"| median | {f(summary['echo']['server_us_per_msg'], '.3f')} | "
             f"{f(summary['fanout']['server_us_per_msg'], '.3f')} | {f(ratio_median, '.3f')} | "
             f"{f(summary['fanout']['msgs_per_sec'], ',.0f')} |")
verdict = ("is met" if meets else "is missed") if ratio_median is not None else "cannot be judged (no ratio)"
lines += ["", f"Target: fan-out CPU per delivery <= {target} x echo CPU per message. "
          f"Median ratio {f(ratio_median, '.3f')}: the target {verdict}."]
if summary["echo"]["failed_runs"] or summary["fanout"]["failed_runs"]:
    lines.append(f"Warning: load runs that failed (errors; see {out}/logs): echo "
                 f"{summary['echo']['failed_runs']}, fan-out {summary['fanout']['failed_runs']}.")
lines += ["", "Server µs/msg: the server's CPU over the load tool's window divided by the messages "
          "echoed or delivered in it. \"load tool CPU\" near 100% means the load tool set the "
          "pace. \"other processes on server core\": share of the server core's time other "
          "processes took (a noisy machine shows here).", "", f"Total time {elapsed / 60:.1f} min."]
table = "\n".join(lines) + "\n"
open(f"{out}/table.md", "w").write(table)
print(table)
EOF
echo "fanout.sh: wrote $OUT/results.json and $OUT/table.md" >&2
