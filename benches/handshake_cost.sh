#!/usr/bin/env bash
# What one plain handshake cycle (connect, upgrade, one echoed message, close)
# costs wsgate, counted rather than timed, for each binary given, with the
# access log off (WSGATE_LOG=warn) and on (info, to a file); or, with
# WORKLOAD=echo, what one echoed message (a round trip through the tunnel,
# one frame each way) costs, on a plain tunnel or (INSPECT=1) an inspected
# one:
#
# - user-space instructions per handshake (or message), from valgrind's
#   callgrind (the same count on a busy machine as on an idle one; `rep
#   movsb` copies count one instruction per byte, so large memcpys weigh
#   more than their time);
# - system calls per handshake (or message), by name, from
#   `perf stat -e 'syscalls:sys_enter_*'` (when perf and its tracepoints
#   are there; as root).
#
#   benches/handshake_cost.sh BEFORE_WSGATE AFTER_WSGATE
#   COUNT_SECONDS=10 benches/handshake_cost.sh target/release/wsgate
#   WORKLOAD=echo INSPECT=1 LOGS=warn benches/handshake_cost.sh target/release/wsgate
#
# Settings (environment): COUNT_SECONDS=10 (handshakes counted under
# callgrind, 4 in flight; messages, 20 sockets), PERF_SECONDS=3 (counted
# by perf, 50 in flight), LOGS="warn info", WORKLOAD=handshake (or echo),
# SIZE=128 (echo's payload bytes), INSPECT=0 (1: the route inspects
# frames), LOADGEN (default: built here, release).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 ]] || { sed -n '2,26p' "$0" >&2; exit 2; }
COUNT_SECONDS=${COUNT_SECONDS:-10}
PERF_SECONDS=${PERF_SECONDS:-3}
LOGS=${LOGS:-"warn info"}
WORKLOAD=${WORKLOAD:-handshake}
SIZE=${SIZE:-128}
INSPECT=${INSPECT:-0}
case $WORKLOAD in
  handshake) UNIT=handshake COUNTED=handshakes ;;
  echo) UNIT=message COUNTED=messages ;;
  *) echo "$0: WORKLOAD must be handshake or echo, not '$WORKLOAD'" >&2; exit 2 ;;
esac
# Under callgrind: a few handshakes in flight; echo sockets enough to keep it busy.
CALLGRIND_CONNECTIONS=$([[ $WORKLOAD == echo ]] && echo 20 || echo 4)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}

BENCH_NAME=handshake_cost.sh
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_whole COUNT_SECONDS PERF_SECONDS SIZE INSPECT
bench_require python3 valgrind callgrind_control callgrind_annotate
bench_workdir wsgate-handshake-cost
if [[ -z ${LOADGEN:-} ]]; then
  bench_build
fi
read -r PORT BACKEND_PORT < <(bench_ports 2)
"$LOADGEN" backend --listen "127.0.0.1:$BACKEND_PORT" 2>"$work/backend.log" &
pids+=($!)
wait_port "$BACKEND_PORT" "$!" backend
bench_wsgate_config "$work/wsgate.toml" plain "$PORT" "$BACKEND_PORT" "$INSPECT"
URL="ws://127.0.0.1:$PORT/echo"

# counted FILE: handshakes or messages in a load generator's report.
counted() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$COUNTED"; }

# load CONNECTIONS SECONDS: the workload, its report on standard output.
load() {
  case $WORKLOAD in
    handshake) "$LOADGEN" handshake --url "$URL" --connections "$1" --duration "$2" --warmup 0 ;;
    echo) "$LOADGEN" echo --url "$URL" --connections "$1" --size "$SIZE" --duration "$2" --warmup 0 ;;
  esac
}

# start BINARY LEVEL [WRAPPER...]: wsgate on the configuration, in $server.
start() {
  local binary=$1 level=$2
  shift 2
  # glibc's tunable set here, so that wsgate does not re-execute itself
  # (lifecycle::memory) out from under the wrapper.
  GLIBC_TUNABLES=glibc.malloc.tcache_count=0 WSGATE_LOG=$level "$@" "$binary" --config "$work/wsgate.toml" \
    2>"$work/wsgate.log" &
  server=$!
  pids+=("$server")
  # Under valgrind, starting takes seconds.
  for ((i = 0; i < 600; i++)); do
    kill -0 "$server" 2>/dev/null || { log "wsgate exited early:"; cat "$work/wsgate.log" >&2; exit 1; }
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  log "wsgate is not accepting on port $PORT after 60s"
  exit 1
}

stop() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  # The next start binds the same port.
  for ((i = 0; i < 100; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || return 0
    sleep 0.1
  done
}

for binary in "$@"; do
  binary=$(realpath "$binary")
  for level in $LOGS; do
    # Instructions: counters zeroed after a warm-up, dumped after the counted run.
    rm -f "$work"/callgrind.out*
    start "$binary" "$level" valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out"
    load "$CALLGRIND_CONNECTIONS" 2 >/dev/null
    callgrind_control -z "$server" >/dev/null 2>&1
    load "$CALLGRIND_CONNECTIONS" "$COUNT_SECONDS" >"$work/counted.json"
    callgrind_control -d "$server" >/dev/null 2>&1
    stop
    total=0
    for dump in "$work"/callgrind.out.*; do
      n=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
      total=$((total + ${n:-0}))
    done
    count=$(counted "$work/counted.json")
    echo "$binary WSGATE_LOG=$level $WORKLOAD$([[ $WORKLOAD == echo ]] && echo " $SIZE B, inspect=$INSPECT"): $count ${UNIT}s, $((total / count)) user-space instructions per $UNIT"

    # System calls, when perf can count them.
    if command -v perf >/dev/null && perf stat -e 'syscalls:sys_enter_close' true >/dev/null 2>&1; then
      start "$binary" "$level"
      perf stat -e 'syscalls:sys_enter_*' -p "$server" -o "$work/perf.txt" -- sleep $((PERF_SECONDS + 1)) &
      counting=$!
      load 50 "$PERF_SECONDS" >"$work/counted.json"
      wait "$counting"
      stop
      count=$(counted "$work/counted.json")
      awk -v n="$count" -v unit="$UNIT" '$1 ~ /^[0-9,]+$/ { gsub(",", "", $1); if ($1 > 0) { sub("syscalls:sys_enter_", "", $2); calls[$2] = $1 / n; total += $1 / n } }
        END { printf "  system calls per %s: %.1f:", unit, total; for (c in calls) if (calls[c] >= 0.05) printf " %s %.2f", c, calls[c]; print "" }' "$work/perf.txt"
    fi
  done
done
