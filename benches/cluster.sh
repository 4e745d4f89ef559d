#!/usr/bin/env bash
# What [cluster] costs a handshake: one wsgate binary with the same route
# limits (a per-client and a route rate limit, both caps) kept by itself (A)
# and shared through a redis-server on loopback (B), rounds alternating
# (benches/ab.sh): first 50 handshake loops at once (rate, CPU per 1k
# handshakes), then 2 (latency without queueing: what Redis adds to one
# handshake). Needs redis-server (Debian package redis-server).
#
#   benches/cluster.sh [WSGATE]          # default target/release/wsgate, built here
#   ROUNDS=5 DURATION=5 benches/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
command -v redis-server >/dev/null || { echo "cluster.sh: redis-server is missing (apt-get install redis-server)" >&2; exit 1; }
if [[ $# == 0 ]]; then
  cargo build --release --locked --bin wsgate >&2
fi
WSGATE=${1:-$CARGO_TARGET_DIR/release/wsgate}

redis_dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$redis_dir" >"$redis_dir/log" 2>&1 &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null; rm -rf "$redis_dir"' EXIT
for _ in $(seq 100); do
  redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
  sleep 0.05
done

# Limits every handshake checks and none refuses.
limits='[route.rate_limit]
per_client = { rate = "1000000/s" }
total = { rate = "1000000/s" }

[route.limits]
max_websockets = 1000000
max_websockets_per_client = 1000000'
export A_TOML="$limits"
export B_TOML="$limits

[cluster]
redis = \"redis://127.0.0.1:$port/0\"
timeout = \"25ms\""
for connections in ${CLUSTER_CONNECTIONS:-50 2}; do
  echo "== $connections handshake loops"
  SIZES="" HANDSHAKE_CONNECTIONS=$connections benches/ab.sh "$WSGATE" "$WSGATE"
done
