#!/usr/bin/env bash
# The pause a binary upgrade (SIGUSR1) puts on open tunnels: N sockets, each
# sending a message every PACE and waiting for its echo, through a release
# wsgate that is upgraded after BEFORE seconds; the same binary is put back
# at its path first, so the new process is a new process of the same build.
#
# For each count in COUNTS and each route (plain, inspected) it reports
# what the new process measured (how long each tunnel was stopped, from its
# stop in the old process to its start in the new one: p50, p99, max) and
# what the clients saw (the longest round trip of each socket before and
# after the signal, p50/p99/max over the sockets; errors: closed sockets or
# lost messages).
#
#   benches/upgrade.sh                      # COUNTS="1000 9000", about 1 minute plus the build
#   COUNTS=1000 PACE=20ms benches/upgrade.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=upgrade.sh
# shellcheck source=benches/lib.sh
source benches/lib.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
COUNTS=${COUNTS:-1000 9000}
PACE=${PACE:-100ms}
BEFORE=${BEFORE:-3s}
AFTER=${AFTER:-5s}
bench_require python3 cargo
bench_workdir wsgate-upgrade
bench_build
ulimit -n "$(ulimit -Hn)"

read -r backend_port proxy_port < <(bench_ports 2)
"$LOADGEN" backend --listen "127.0.0.1:$backend_port" >"$work/backend.log" 2>&1 &
pids+=($!)
wait_port "$backend_port" "$!" backend

cat >"$work/wsgate.toml" <<TOML
[global]
log_format = "json"
max_connections = 20000
shutdown_timeout = "10s"

[[listener]]
name = "plain"
listen = "127.0.0.1:$proxy_port"

[[route]]
name = "inspected"
path_prefix = "/inspected"
upstream = "backend"
allowed_origins = ["https://example.com"]
[route.inspect]

[[route]]
name = "plain"
upstream = "backend"
allowed_origins = ["https://example.com"]

[[upstream]]
name = "backend"
servers = [{ address = "127.0.0.1:$backend_port" }]
TOML
binary="$work/wsgate"
cp "$WSGATE" "$binary"

echo "| tunnels | route | moved | stopped p50 / p99 / max (ms, wsgate) | longest round trip per socket before: p50 / p99 / max (ms) | after the signal: p50 / p99 / max (ms) | errors |"
echo "|---|---|---|---|---|---|---|"
for count in $COUNTS; do
  for route in plain inspected; do
    log "$count tunnels, $route route"
    : >"$work/wsgate.log"
    WSGATE_LOG=info "$binary" --config "$work/wsgate.toml" 2>>"$work/wsgate.log" &
    wsgate_pid=$!
    pids+=("$wsgate_pid")
    wait_port "$proxy_port" "$wsgate_pid" wsgate
    # A new file at the path, as a package upgrade leaves it.
    cp "$WSGATE" "$binary.new" && mv -f "$binary.new" "$binary"
    "$LOADGEN" upgrade --url "ws://127.0.0.1:$proxy_port/$route" --connections "$count" \
      --pace "$PACE" --before "$BEFORE" --after "$AFTER" --proxy-pid "$wsgate_pid" >"$work/client.json"
    # The old process exits once what stayed has drained; the new one is stopped here.
    wait "$wsgate_pid" || true
    python3 - "$work/wsgate.log" "$work/client.json" "$count" "$route" <<'PY'
import json, sys
log, client, count, route = sys.argv[1:]
lines = [json.loads(l) for l in open(log) if l.startswith("{")]
done = next((l for l in lines if l.get("message", "").startswith("hand-over done")), {})
c = json.load(open(client))
ms = lambda us: f"{us / 1000:.1f}"
print(f"| {count} | {route} | {done.get('received', '?')} | "
      f"{done.get('pause_p50_ms', '?')} / {done.get('pause_p99_ms', '?')} / {done.get('pause_max_ms', '?')} | "
      f"{ms(c['before_p50_us'])} / {ms(c['before_p99_us'])} / {ms(c['before_max_us'])} | "
      f"{ms(c['after_p50_us'])} / {ms(c['after_p99_us'])} / {ms(c['after_max_us'])} | {c['errors']} |")
PY
    new_pid=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    if l.startswith("{"):
        m = json.loads(l)
        if m.get("message", "").startswith("the new process serves"):
            print(m["pid"])' "$work/wsgate.log" | tail -n 1)
    if [[ -n $new_pid ]]; then
      kill "$new_pid" 2>/dev/null || true
      while kill -0 "$new_pid" 2>/dev/null; do sleep 0.1; done
    fi
  done
done
