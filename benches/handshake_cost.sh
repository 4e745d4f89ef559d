#!/usr/bin/env bash
# What one plain handshake cycle (connect, upgrade, one echoed message, close)
# costs wsgate, counted rather than timed, for each binary given, with the
# access log off (WSGATE_LOG=warn) and on (info, to a file):
#
# - user-space instructions per handshake, from valgrind's callgrind (the
#   same count on a busy machine as on an idle one; `rep movsb` copies count
#   one instruction per byte, so large memcpys weigh more than their time);
# - system calls per handshake, by name, from `perf stat -e 'syscalls:sys_enter_*'`
#   (when perf and its tracepoints are there; as root).
#
#   benches/handshake_cost.sh BEFORE_WSGATE AFTER_WSGATE
#   COUNT_SECONDS=10 benches/handshake_cost.sh target/release/wsgate
#
# Settings (environment): COUNT_SECONDS=10 (handshakes counted under
# callgrind, 4 in flight), PERF_SECONDS=3 (handshakes counted by perf, 50
# in flight), LOGS="warn info", LOADGEN (default: built here, release).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 ]] || { sed -n '2,18p' "$0" >&2; exit 2; }
COUNT_SECONDS=${COUNT_SECONDS:-10}
PERF_SECONDS=${PERF_SECONDS:-3}
LOGS=${LOGS:-"warn info"}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}

BENCH_NAME=handshake_cost.sh
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_whole COUNT_SECONDS PERF_SECONDS
bench_require python3 valgrind callgrind_control callgrind_annotate
bench_workdir wsgate-handshake-cost
if [[ -z ${LOADGEN:-} ]]; then
  bench_build
fi
read -r PORT BACKEND_PORT < <(bench_ports 2)
"$LOADGEN" backend --listen "127.0.0.1:$BACKEND_PORT" 2>"$work/backend.log" &
pids+=($!)
wait_port "$BACKEND_PORT" "$!" backend
bench_wsgate_config "$work/wsgate.toml" plain "$PORT" "$BACKEND_PORT" 0
URL="ws://127.0.0.1:$PORT/echo"

handshakes() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["handshakes"])' "$1"; }

# start BINARY LEVEL [WRAPPER...]: wsgate on the configuration, in $server.
start() {
  local binary=$1 level=$2
  shift 2
  # glibc's tunable set here for binaries before the switch to mimalloc
  # (docs/performance.md), which re-executed themselves with it and would
  # leave the wrapper; they ran with it, so it is their real setting.
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
    "$LOADGEN" handshake --url "$URL" --connections 4 --duration 2 --warmup 0 >/dev/null
    callgrind_control -z "$server" >/dev/null 2>&1
    "$LOADGEN" handshake --url "$URL" --connections 4 --duration "$COUNT_SECONDS" --warmup 0 >"$work/counted.json"
    callgrind_control -d "$server" >/dev/null 2>&1
    stop
    total=0
    for dump in "$work"/callgrind.out.*; do
      n=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
      total=$((total + ${n:-0}))
    done
    count=$(handshakes "$work/counted.json")
    echo "$binary WSGATE_LOG=$level: $count handshakes, $((total / count)) user-space instructions per handshake"

    # System calls, when perf can count them.
    if command -v perf >/dev/null && perf stat -e 'syscalls:sys_enter_close' true >/dev/null 2>&1; then
      start "$binary" "$level"
      perf stat -e 'syscalls:sys_enter_*' -p "$server" -o "$work/perf.txt" -- sleep $((PERF_SECONDS + 1)) &
      counting=$!
      "$LOADGEN" handshake --url "$URL" --connections 50 --duration "$PERF_SECONDS" --warmup 0 >"$work/counted.json"
      wait "$counting"
      stop
      count=$(handshakes "$work/counted.json")
      awk -v n="$count" '$1 ~ /^[0-9,]+$/ { gsub(",", "", $1); if ($1 > 0) { sub("syscalls:sys_enter_", "", $2); calls[$2] = $1 / n; total += $1 / n } }
        END { printf "  system calls per handshake: %.1f:", total; for (c in calls) if (calls[c] >= 0.05) printf " %s %.2f", c, calls[c]; print "" }' "$work/perf.txt"
    fi
  done
done
