#!/usr/bin/env bash
# Echo benchmark: the loadgen echo backend direct, behind wsgate (byte splice)
# and behind wsgate with [route.inspect]; writes docs/benchmarks.md.
#
#   benches/run.sh                         # defaults: 3 rounds, 5s windows, 100 sockets
#   ROUNDS=1 DURATION=3 benches/run.sh     # a quick check
#
# Settings (environment):
#   ROUNDS=3          rounds; each runs every size against every target, targets alternating
#   DURATION=5        measured seconds per run (whole seconds)
#   WARMUP=1          unmeasured seconds before each window (whole seconds)
#   CONNECTIONS=100   sockets per run, one message in flight each
#   SIZES="128 16384" payload bytes per message
#   LOADGEN_THREADS=  tokio worker threads of the load generator (default: one per CPU)
#   OUT=docs/benchmarks.md
#   CARGO_TARGET_DIR  honoured (default target/)
#
# Needs cargo, python3 (to read the JSON lines) and Linux /proc. The load
# generator, the backend and wsgate share the machine, so absolute numbers
# mostly say how fast this machine is; the CPU seconds wsgate spends per
# million messages, and the inspected/plain ratio, travel better.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CONNECTIONS=${CONNECTIONS:-100}
SIZES=${SIZES:-"128 16384"}
LOADGEN_THREADS=${LOADGEN_THREADS:-}
OUT=${OUT:-docs/benchmarks.md}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}

BENCH_NAME=run.sh
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_whole ROUNDS DURATION WARMUP CONNECTIONS
bench_require cargo python3
bench_workdir wsgate-bench

# --- Build, and find the two executables cargo reports (no guessing at hashes).
bench_build

# --- Ports, configurations, processes.
read -r BACKEND_PORT PLAIN_PORT INSPECT_PORT < <(bench_ports 3)

bench_wsgate_config "$work/plain.toml" bench "$PLAIN_PORT" "$BACKEND_PORT" 0
bench_wsgate_config "$work/inspect.toml" bench "$INSPECT_PORT" "$BACKEND_PORT" 1
"$WSGATE" check --config "$work/plain.toml" >/dev/null 2>&1 || { "$WSGATE" check --config "$work/plain.toml"; exit 1; }
"$WSGATE" check --config "$work/inspect.toml" >/dev/null 2>&1 || { "$WSGATE" check --config "$work/inspect.toml"; exit 1; }

threads=()
[[ -n $LOADGEN_THREADS ]] && threads=(--threads "$LOADGEN_THREADS")

"$LOADGEN" backend --listen "127.0.0.1:$BACKEND_PORT" 2>"$work/backend.log" &
BACKEND_PID=$!
pids+=("$BACKEND_PID")
WSGATE_LOG=warn "$WSGATE" --config "$work/plain.toml" 2>"$work/plain.log" &
PLAIN_PID=$!
pids+=("$PLAIN_PID")
WSGATE_LOG=warn "$WSGATE" --config "$work/inspect.toml" 2>"$work/inspect.log" &
INSPECT_PID=$!
pids+=("$INSPECT_PID")

wait_port "$BACKEND_PORT" "$BACKEND_PID" backend
wait_port "$PLAIN_PORT" "$PLAIN_PID" plain
wait_port "$INSPECT_PORT" "$INSPECT_PID" inspect

# --- The runs: every round runs each size against direct, plain, inspected in turn.
results="$work/results.jsonl"
: >"$results"
run_timeout=$((DURATION + WARMUP + 60))
for ((round = 1; round <= ROUNDS; round++)); do
  for size in $SIZES; do
    for target in direct plain inspected; do
      case $target in
        direct) port=$BACKEND_PORT; proxy=() ;;
        plain) port=$PLAIN_PORT; proxy=(--proxy-pid "$PLAIN_PID") ;;
        inspected) port=$INSPECT_PORT; proxy=(--proxy-pid "$INSPECT_PID") ;;
      esac
      log "round $round/$ROUNDS size $size $target"
      if line=$(timeout "$run_timeout" "$LOADGEN" "${threads[@]}" echo --url "ws://127.0.0.1:$port/echo" \
        --connections "$CONNECTIONS" --size "$size" --duration "$DURATION" --warmup "$WARMUP" "${proxy[@]}" \
        2> >(tee -a "$work/loadgen.log" >&2)); then
        :
      else
        log "run failed (exit $?); recorded as failed"
        line='{"failed":true}'
      fi
      printf '{"round":%d,"target":"%s","run":%s}\n' "$round" "$target" "$line" >>"$results"
    done
  done
done
for pid in "$BACKEND_PID" "$PLAIN_PID" "$INSPECT_PID"; do
  kill -0 "$pid" 2>/dev/null || { log "a server (pid $pid) died during the runs"; exit 1; }
done

# --- The report.
mkdir -p "$(dirname "$OUT")"
# shellcheck disable=SC2119 # no paths: every tracked file
commit=$(bench_commit)
command_line="ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS SIZES=\"$SIZES\""
[[ -n $LOADGEN_THREADS ]] && command_line+=" LOADGEN_THREADS=$LOADGEN_THREADS"
command_line+=" benches/run.sh"

export ROUNDS DURATION WARMUP CONNECTIONS SIZES
bench_machine_env
WSGATE_VERSION=$("$WSGATE" --version) \
  COMMIT=$commit \
  COMMAND=$command_line \
  DATE=$(date -u '+%Y-%m-%d %H:%M UTC') \
  python3 - "$results" "$OUT" <<'EOF'
import json, os, statistics, sys

results_path, out_path = sys.argv[1], sys.argv[2]
env = os.environ
records = [json.loads(line) for line in open(results_path)]
targets = ["direct", "plain", "inspected"]
sizes = [int(s) for s in env["SIZES"].split()]

def runs(size, target):
    return [r["run"] for r in records
            if r["target"] == target and not r["run"].get("failed") and r["run"].get("size") == size]

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def fmt(value, digits=0):
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"

def ratio(a, b):
    return a / b if a is not None and b else None

summary = {}
for size in sizes:
    for target in targets:
        rs = runs(size, target)
        summary[size, target] = {
            "n": len(rs),
            "msgs": median([r["msgs_per_s"] for r in rs]),
            "all_msgs": [r["msgs_per_s"] for r in rs],
            "mb": median([r["mb_per_s"] for r in rs]),
            "p50": median([r["p50_us"] for r in rs]),
            "p99": median([r["p99_us"] for r in rs]),
            "p999": median([r["p999_us"] for r in rs]),
            "cpu": median([r.get("proxy_cpu_s_per_1m_msgs") for r in rs]),
            "errors": sum(r["errors"] for r in rs),
        }
failed = sum(1 for r in records if r["run"].get("failed"))

lines = []
add = lines.append
add("# wsgate benchmarks")
add("")
add("Generated by [`benches/run.sh`](../benches/run.sh); what each workload measures is in")
add("[`benches/README.md`](../benches/README.md). Re-run the command below to refresh this file.")
add("")
add("## Setup")
add("")
add(f"- date: {env['DATE']}")
add(f"- machine: {env['NPROC']} CPUs ({env['CPU_MODEL']}), {env['MEMORY']}, {env['KERNEL']}")
add(f"- wsgate: `{env['WSGATE_VERSION']}`, commit `{env['COMMIT']}`, release build; {env['RUSTC']}")
add(f"- command: `{env['COMMAND']}`")
add(f"- each run: `loadgen echo --url ws://127.0.0.1:PORT/echo --connections {env['CONNECTIONS']} "
    f"--size SIZE --duration {env['DURATION']} --warmup {env['WARMUP']} [--proxy-pid PID]`")
add(f"- {env['ROUNDS']} round(s); each round runs every size against direct, plain, inspected in turn, "
    "so slow drifts on the machine hit every target alike; the table shows medians over the rounds")
add("- targets: **direct** = the loadgen echo backend itself; **plain** = wsgate, one route, byte splice; "
    "**inspected** = the same with `[route.inspect] enabled = true`; two wsgate processes, `WSGATE_LOG=warn`, "
    "all on 127.0.0.1 (no TLS)")
add("- the load generator, the backend and wsgate share the machine's CPUs, so messages/s is bounded by all "
    "three; proxy CPU per 1M messages (utime+stime of the wsgate process over the measured window) is the "
    "figure that depends on wsgate alone")
add("")
add("## Echo: request-response, one message in flight per socket")
add("")
add("| size (B) | target | msgs/s | MB/s (one way) | p50 µs | p99 µs | p99.9 µs | wsgate CPU s / 1M msgs | errors | msgs/s per round |")
add("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
for size in sizes:
    for target in targets:
        s = summary[size, target]
        per_round = ", ".join(fmt(v) for v in s["all_msgs"]) or "–"
        add(f"| {size} | {target} | {fmt(s['msgs'])} | {fmt(s['mb'], 1)} | {fmt(s['p50'])} | {fmt(s['p99'])} | "
            f"{fmt(s['p999'])} | {fmt(s['cpu'], 2)} | {s['errors']} | {per_round} |")
add("")
add("## Inspected vs plain")
add("")
add("| size (B) | msgs/s inspected/plain | CPU per message inspected/plain | plain msgs/s vs direct |")
add("|---:|---:|---:|---:|")
for size in sizes:
    p, i, d = summary[size, "plain"], summary[size, "inspected"], summary[size, "direct"]
    add(f"| {size} | {fmt(ratio(i['msgs'], p['msgs']), 2)} | {fmt(ratio(i['cpu'], p['cpu']), 2)} | "
        f"{fmt(ratio(p['msgs'], d['msgs']), 2)} |")
add("")
if failed:
    add(f"**{failed} run(s) failed** and are left out of the medians; see the raw results.")
    add("")
add("<details><summary>Raw results (one JSON line per run)</summary>")
add("")
add("```")
for r in records:
    add(json.dumps(r, separators=(",", ":")))
add("```")
add("")
add("</details>")
open(out_path, "w").write("\n".join(lines) + "\n")
EOF
log "wrote $OUT"
sed -n '/^## Echo/,/^<details>/p' "$OUT" | sed '$d' >&2
