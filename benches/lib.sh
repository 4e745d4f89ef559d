# shellcheck shell=bash
# Shell functions shared by benches/run.sh and benches/compare.sh; sourced, not run.
#
# The sourcing script sets BENCH_NAME (its name, for messages) and calls, in
# this order: bench_require TOOL..., bench_workdir PREFIX (sets $work, the temp
# dir, and the EXIT trap that stops every pid in $pids, and $BENCH_CURRENT
# when set, and removes $work),
# bench_build (sets $WSGATE and $LOADGEN). Processes it starts go in $pids.

log() { echo "${BENCH_NAME:-bench}: $*" >&2; }

# bench_whole VAR...: each named variable must hold a whole number.
bench_whole() {
  local var
  for var in "$@"; do
    [[ ${!var} =~ ^[0-9]+$ ]] || { echo "$BENCH_NAME: $var must be a whole number, not '${!var}'" >&2; exit 2; }
  done
}

# bench_require TOOL...: each tool must be on PATH.
bench_require() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$BENCH_NAME: $tool is missing" >&2; exit 1; }
  done
}

# bench_workdir PREFIX: a fresh temp dir in $work, removed on exit after every
# process in $pids has been stopped (TERM, then waited for).
bench_workdir() {
  work=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  pids=()
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_cleanup() {
  local pid
  # A foreground run the script waits on in the background ($BENCH_CURRENT), if any.
  if [[ -n ${BENCH_CURRENT:-} ]]; then
    kill "$BENCH_CURRENT" 2>/dev/null || true
    wait "$BENCH_CURRENT" 2>/dev/null || true
  fi
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}

# bench_build: release build of wsgate and the loadgen bench into
# $CARGO_TARGET_DIR; sets WSGATE and LOADGEN to the executables cargo reports
# (no guessing at hashes).
bench_build() {
  log "building (release) into $CARGO_TARGET_DIR"
  cargo build --release --bin wsgate --bench loadgen --message-format=json-render-diagnostics >"$work/build.json"
  read -r WSGATE LOADGEN < <(python3 - "$work/build.json" <<'EOF'
import json, sys
found = {}
for line in open(sys.argv[1]):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
        found[msg["target"]["name"]] = msg["executable"]
print(found["wsgate"], found["loadgen"])
EOF
  )
  log "wsgate:  $WSGATE"
  log "loadgen: $LOADGEN"
}

# bench_ports N: N distinct free TCP ports on 127.0.0.1, on one line; below
# the ephemeral range when there is room, so that outgoing connections (ours
# or other programs') cannot take one before the server binds it.
bench_ports() {
  python3 - "$1" <<'EOF'
import random, socket, sys
count = int(sys.argv[1])
try:
    ephemeral = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    ephemeral = 32768
socks, ports = [], []
if ephemeral - 10000 >= 100 * count:
    for _ in range(1000 * count):
        if len(ports) == count:
            break
        port = random.randrange(10000, ephemeral)
        if port in ports:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        socks.append(s)
        ports.append(port)
while len(ports) < count:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
    ports.append(s.getsockname()[1])
print(*ports)
EOF
}

# wait_port PORT PID NAME: wait (10 s at most) until PORT accepts; fails, with
# $work/NAME.log, if PID exits first.
wait_port() {
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$2" 2>/dev/null || { log "$3 exited early:"; cat "$work/$3.log" >&2; exit 1; }
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  log "$3 is not accepting on port $1 after 10s"
  exit 1
}

# bench_commit [PATH...]: the short commit, marked when tracked files (under
# the given paths, by default all) have changes.
bench_commit() {
  local commit
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [[ -n $(git status --porcelain --untracked-files=no -- "$@" 2>/dev/null) ]]; then
    commit="$commit (with uncommitted changes)"
  fi
  echo "$commit"
}

# bench_machine_env: exports NPROC CPU_MODEL KERNEL MEMORY RUSTC for a report.
bench_machine_env() {
  NPROC=$(nproc)
  CPU_MODEL=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
  KERNEL=$(uname -srm)
  MEMORY=$(grep -m1 '^MemTotal' /proc/meminfo | awk '{printf "%.1f GiB", $2 / 1048576}')
  RUSTC=$(rustc --version 2>/dev/null || echo unknown)
  export NPROC CPU_MODEL KERNEL MEMORY RUSTC
}

# A wsgate configuration for the benchmarks: one listener NAME on
# 127.0.0.1:PORT (TLS when CERT and KEY are given), one route to the echo
# backend at 127.0.0.1:BACKEND_PORT, inspected when INSPECT is 1.
bench_wsgate_config() { # file name port backend_port inspect(0|1) [cert key]
  local file=$1 name=$2 port=$3 backend_port=$4 inspect=$5 cert=${6:-} key=${7:-}
  {
    echo '# wsgate benchmark configuration (written by benches/lib.sh)'
    echo '[global]'
    echo 'max_connections = 100000'
    echo 'shutdown_timeout = "2s"'
    if [[ -n ${WSGATE_GLOBAL:-} ]]; then printf '%s\n' "$WSGATE_GLOBAL"; fi
    echo
    echo '[[listener]]'
    echo "name = \"$name\""
    echo "listen = \"127.0.0.1:$port\""
    if [[ -n $cert ]]; then
      echo '[[listener.tls.certificates]]'
      echo "cert = \"$cert\""
      echo "key = \"$key\""
    fi
    echo
    echo '[[route]]'
    echo 'name = "echo"'
    echo 'path_prefix = "/"'
    echo 'upstream = "echo"'
    if [[ $inspect == 1 ]]; then
      echo
      echo '[route.inspect]'
      echo 'enabled = true'
    fi
    echo
    echo '[[upstream]]'
    echo 'name = "echo"'
    echo "servers = [{ address = \"127.0.0.1:$backend_port\" }]"
  } >"$file"
}
