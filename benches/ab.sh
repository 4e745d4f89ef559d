#!/usr/bin/env bash
# A/B of two wsgate binaries on the same workloads, rounds alternating A and
# B so that drifts on a shared machine hit both alike: plain echo at each
# size (CPU s per 1M messages) and the handshake cycle (CPU s per 1k
# handshakes), both measured by the load generator from the proxy's
# utime+stime. For a change that should cost nothing (a refactor) or an
# optimisation, before and after.
#
#   benches/ab.sh BEFORE_WSGATE AFTER_WSGATE
#   ROUNDS=5 DURATION=5 benches/ab.sh old/wsgate target/release/wsgate
#   TLS=1 SIZES= benches/ab.sh ring/wsgate aws-lc/wsgate   # TLS handshakes only
#
# Settings (environment): ROUNDS=3, DURATION=5, WARMUP=1, CONNECTIONS=100,
# SIZES="128 16384" (empty: handshakes only), HANDSHAKE_CONNECTIONS=50,
# TLS=0 (1: TLS listeners with a `wsgate cert` certificate, wss:// clients),
# CLIENT_ARGS (more loadgen arguments for every run, e.g. --no-resume),
# LOG=warn (WSGATE_LOG of both; `info` is the access log: each process's
# standard error goes to a file in the work directory),
# LOADGEN (default: built here, release), A_TOML / B_TOML (TOML appended to
# A's or B's configuration: the same binary with two settings, as
# benches/cluster.sh does), A_GLOBAL / B_GLOBAL (lines for A's or B's
# `[global]`, e.g. B_GLOBAL="splice_threads = 0"). Prints one JSON line per
# run and a median table at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# == 2 ]] || { sed -n '2,23p' "$0" >&2; exit 2; }
A=$(realpath "$1")
B=$(realpath "$2")
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CONNECTIONS=${CONNECTIONS:-100}
SIZES=${SIZES-"128 16384"}
HANDSHAKE_CONNECTIONS=${HANDSHAKE_CONNECTIONS:-50}
TLS=${TLS:-0}
LOG=${LOG:-warn}
read -r -a client_args <<<"${CLIENT_ARGS:-}"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}

BENCH_NAME=ab.sh
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_whole ROUNDS DURATION WARMUP CONNECTIONS HANDSHAKE_CONNECTIONS TLS
bench_require python3
bench_workdir wsgate-ab
if [[ -z ${LOADGEN:-} ]]; then
  bench_build
fi

read -r BACKEND_PORT A_PORT B_PORT < <(bench_ports 3)
scheme=ws cert=() client_tls=()
if [[ $TLS == 1 ]]; then
  "$A" cert --out-dir "$work/cert" >/dev/null
  scheme=wss cert=("$work/cert/localhost.pem" "$work/cert/localhost-key.pem") client_tls=(--ca "$work/cert/dev-ca.pem")
fi
WSGATE_GLOBAL=${A_GLOBAL:-} bench_wsgate_config "$work/a.toml" bench "$A_PORT" "$BACKEND_PORT" 0 "${cert[@]}"
WSGATE_GLOBAL=${B_GLOBAL:-} bench_wsgate_config "$work/b.toml" bench "$B_PORT" "$BACKEND_PORT" 0 "${cert[@]}"
printf '%s\n' "${A_TOML:-}" >>"$work/a.toml"
printf '%s\n' "${B_TOML:-}" >>"$work/b.toml"
"$LOADGEN" backend --listen "127.0.0.1:$BACKEND_PORT" 2>"$work/backend.log" &
pids+=($!)
WSGATE_LOG=$LOG "$A" --config "$work/a.toml" 2>"$work/a.log" &
A_PID=$!
pids+=("$A_PID")
WSGATE_LOG=$LOG "$B" --config "$work/b.toml" 2>"$work/b.log" &
B_PID=$!
pids+=("$B_PID")
wait_port "$BACKEND_PORT" "${pids[0]}" backend
wait_port "$A_PORT" "$A_PID" a
wait_port "$B_PORT" "$B_PID" b

results="$work/results.jsonl"
run_timeout=$((DURATION + WARMUP + 60))
for ((round = 1; round <= ROUNDS; round++)); do
  for side in a b; do
    if [[ $side == a ]]; then port=$A_PORT pid=$A_PID; else port=$B_PORT pid=$B_PID; fi
    for size in $SIZES; do
      log "round $round/$ROUNDS $side echo $size"
      line=$(timeout "$run_timeout" "$LOADGEN" echo --url "$scheme://127.0.0.1:$port/echo" "${client_tls[@]}" "${client_args[@]}" --connections "$CONNECTIONS" \
        --size "$size" --duration "$DURATION" --warmup "$WARMUP" --proxy-pid "$pid") || line='{"failed":true}'
      printf '{"side":"%s","workload":"echo %s","run":%s}\n' "$side" "$size" "$line" | tee -a "$results"
    done
    log "round $round/$ROUNDS $side handshake"
    line=$(timeout "$run_timeout" "$LOADGEN" handshake --url "$scheme://127.0.0.1:$port/echo" "${client_tls[@]}" "${client_args[@]}" \
      --connections "$HANDSHAKE_CONNECTIONS" --duration "$DURATION" --warmup "$WARMUP" --proxy-pid "$pid") || line='{"failed":true}'
    printf '{"side":"%s","workload":"handshake","run":%s}\n' "$side" "$line" | tee -a "$results"
  done
done

python3 - "$results" "$A" "$B" <<'EOF'
import json, statistics, sys
records = [json.loads(line) for line in open(sys.argv[1])]
print(f"\nA = {sys.argv[2]}\nB = {sys.argv[3]}\n")
print("CPU s per 1M messages or 1k handshakes: user + system (user, system)\n")
print("| workload | A rate/s | B rate/s | A CPU s | B CPU s | B/A CPU | A p50 µs | B p50 µs | A p99 µs | B p99 µs |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for workload in dict.fromkeys(r["workload"] for r in records):
    def med(side, key):
        values = [r["run"].get(key) for r in records
                  if r["side"] == side and r["workload"] == workload and not r["run"].get("failed")]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None
    rate = "handshakes_per_s" if workload == "handshake" else "msgs_per_s"
    unit = "1k_handshakes" if workload == "handshake" else "1m_msgs"
    cpu = f"proxy_cpu_s_per_{unit}"
    a_rate, b_rate, a_cpu, b_cpu = med("a", rate), med("b", rate), med("a", cpu), med("b", cpu)
    ratio = f"{b_cpu / a_cpu:.2f}" if a_cpu and b_cpu else "–"
    fmt = lambda v, d=0: "–" if v is None else f"{v:,.{d}f}"
    def cpu_cell(side):
        user, system = med(side, f"proxy_user_s_per_{unit}"), med(side, f"proxy_sys_s_per_{unit}")
        return f"{fmt(med(side, cpu), 3)} ({fmt(user, 3)}, {fmt(system, 3)})"
    latency = " | ".join(fmt(med(side, q)) for q in ("p50_us", "p99_us") for side in ("a", "b"))
    print(f"| {workload} | {fmt(a_rate)} | {fmt(b_rate)} | {cpu_cell('a')} | {cpu_cell('b')} | {ratio} | {latency} |")
EOF
