#!/usr/bin/env bash
# Kernel splice against the user-space splice: CPU per million echoed
# messages (128 B and 16 KiB) and memory per idle tunnel, for two wsgate
# processes alike but for `kernel_splice = true` on the route. Prints a
# Markdown report (the "Kernel splice (BPF sockmap)" section of
# docs/performance.md comes from it).
#
#   benches/kernel_splice.sh                      # as root (CAP_BPF, CAP_NET_ADMIN)
#   ROUNDS=1 DURATION=3 IDLE_N=2000 benches/kernel_splice.sh
#
# Settings (environment):
#   ROUNDS=3          rounds; each runs every size against both, alternating
#   DURATION=5        measured seconds per echo run
#   CONNECTIONS=50    sockets per echo run, one message in flight each
#   SIZES="128 16384" payload bytes per message
#   IDLE_N=5000       idle tunnels per process (0: no idle workload)
#   CARGO_TARGET_DIR  honoured (default target/)
#
# wsgate's own CPU is not the whole story: a kernel-spliced byte is moved in
# the sender's system call (softirq) and in the kernel's workqueue threads,
# which wsgate's /proc/PID/stat does not see. So each run also adds up the
# CPU of everything that moves the bytes: the load generator, the backend,
# wsgate and the kernel's threads ("all" in the table; other processes on
# the machine are left out). The load generator and the backend do the same
# work for both, so the difference between the two rows is the splice's.
# Likewise memory: wsgate's resident memory, and the kernel's unreclaimable
# slab (SUnreclaim in /proc/meminfo, whole machine), where the sockmap's
# entries live.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-50}
SIZES=${SIZES:-"128 16384"}
IDLE_N=${IDLE_N:-5000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}

BENCH_NAME=kernel_splice.sh
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_whole ROUNDS DURATION CONNECTIONS IDLE_N
bench_require cargo python3 ss
bench_workdir wsgate-kernel-splice
bench_build
ulimit -n "$((4 * IDLE_N + 1000))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"

read -r BACKEND_PORT USER_PORT KERNEL_PORT < <(bench_ports 3)
bench_wsgate_config "$work/user.toml" bench "$USER_PORT" "$BACKEND_PORT" 0
bench_wsgate_config "$work/kernel.toml" bench "$KERNEL_PORT" "$BACKEND_PORT" 0
sed -i 's/^upstream = "echo"$/upstream = "echo"\nkernel_splice = true/' "$work/kernel.toml"

"$LOADGEN" backend --listen "127.0.0.1:$BACKEND_PORT" 2>"$work/backend.log" &
BACKEND_PID=$!
pids+=("$BACKEND_PID")
wait_port "$BACKEND_PORT" "$BACKEND_PID" backend

# start_wsgate NAME PORT: a fresh process; sets WSGATE_PID.
start_wsgate() {
  WSGATE_LOG=info "$WSGATE" --config "$work/$1.toml" 2>"$work/$1.log" &
  WSGATE_PID=$!
  pids+=("$WSGATE_PID")
  wait_port "$2" "$WSGATE_PID" "$1"
}

slab_kib() { awk '/^SUnreclaim:/{print $2}' /proc/meminfo; }

# measure.py BACKEND_PID WSGATE_PID -- COMMAND...: runs the load generator and
# adds to its JSON line the CPU (user, system seconds) each part used over the
# run: the load generator (rusage), the backend, wsgate, the kernel's threads
# (children of kthreadd: workqueues, ksoftirqd). Softirq work is charged to
# the task it interrupted (this kernel has no CONFIG_IRQ_TIME_ACCOUNTING).
cat >"$work/measure.py" <<'EOF'
import json, os, resource, subprocess, sys
hz = os.sysconf("SC_CLK_TCK")
def task(pid):
    try:
        rest = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0, None
    return int(rest[11]) / hz, int(rest[12]) / hz, int(rest[1])
def kernel_threads():
    user = system = 0.0
    for name in os.listdir("/proc"):
        if name.isdigit():
            u, s, ppid = task(name)
            if ppid == 2:
                user, system = user + u, system + s
    return user, system
def sample(backend, wsgate):
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"backend": task(backend)[:2], "wsgate": task(wsgate)[:2], "kernel_threads": kernel_threads(),
            "loadgen": (children.ru_utime, children.ru_stime)}
backend, wsgate = sys.argv[1], sys.argv[2]
command = sys.argv[sys.argv.index("--") + 1:]
before = sample(backend, wsgate)
line = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
after = sample(backend, wsgate)
run = json.loads(line)
run["cpu"] = {part: [a - b for a, b in zip(after[part], before[part])] for part in after}
print(json.dumps(run))
EOF

results="$work/results.jsonl"
: >"$results"

# --- Idle tunnels first, on fresh processes.
if ((IDLE_N > 0)); then
  for target in user kernel; do
    port=$USER_PORT
    [[ $target == kernel ]] && port=$KERNEL_PORT
    start_wsgate "$target" "$port"
    log "idle: $IDLE_N tunnels through $target"
    slab_before=$(slab_kib)
    "$LOADGEN" idle --url "ws://127.0.0.1:$port/echo" --count "$IDLE_N" --hold 4s --pid "$WSGATE_PID" \
      >"$work/idle.json" 2>>"$work/loadgen.log" &
    idle_pid=$!
    # The slab is read while the load generator holds its tunnels: once
    # wsgate has them all (client sockets established on its port), within
    # 60 s.
    for ((i = 0; i < 600; i++)); do
      (($(ss -Htn state established "( sport = :$port )" | wc -l) >= IDLE_N)) && break
      sleep 0.1
    done
    sleep 1
    slab_held=$(slab_kib)
    wait "$idle_pid"
    printf '{"workload":"idle","target":"%s","slab_delta_kib":%d,"run":%s}\n' \
      "$target" "$((slab_held - slab_before))" "$(cat "$work/idle.json")" >>"$results"
    kill "$WSGATE_PID"
    wait "$WSGATE_PID" 2>/dev/null || true
  done
fi

# --- Echo runs: both processes up, alternating within each round.
start_wsgate user "$USER_PORT"
USER_PID=$WSGATE_PID
start_wsgate kernel "$KERNEL_PORT"
KERNEL_PID=$WSGATE_PID
for ((round = 1; round <= ROUNDS; round++)); do
  for size in $SIZES; do
    for target in user kernel; do
      case $target in
        user) port=$USER_PORT; pid=$USER_PID ;;
        kernel) port=$KERNEL_PORT; pid=$KERNEL_PID ;;
      esac
      log "round $round/$ROUNDS size $size $target"
      line=$(python3 "$work/measure.py" "$BACKEND_PID" "$pid" -- "$LOADGEN" echo --url "ws://127.0.0.1:$port/echo" \
        --connections "$CONNECTIONS" --size "$size" --duration "${DURATION}s" --warmup 0s --proxy-pid "$pid" \
        2>>"$work/loadgen.log")
      printf '{"workload":"echo","target":"%s","size":%d,"run":%s}\n' "$target" "$size" "$line" >>"$results"
    done
  done
done
grep -q "spliced in the kernel" "$work/kernel.log" || {
  log "the kernel_splice process did not load the program:"
  cat "$work/kernel.log" >&2
  exit 1
}

python3 - "$results" <<'EOF'
import json, statistics, sys
records = [json.loads(line) for line in open(sys.argv[1])]
med = lambda xs: statistics.median(xs) if xs else float("nan")
everyone = ("loadgen", "backend", "wsgate", "kernel_threads")
# Every message of a run counts (--warmup 0s): the CPU was read around all of it.
per = lambda r, parts, i: sum(r["cpu"][p][i] for p in parts) / r["messages"] * 1e6
print("| size (B) | splice | msgs/s | wsgate user s / 1M | wsgate sys s / 1M | kernel threads s / 1M "
      "| all user s / 1M | all sys s / 1M | all CPU s / 1M |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
for size in sorted({r["size"] for r in records if r["workload"] == "echo"}):
    for target in ("user", "kernel"):
        rs = [r["run"] for r in records if r["workload"] == "echo" and r["size"] == size and r["target"] == target]
        cell = lambda parts, i: med([per(r, parts, i) for r in rs])
        both = med([per(r, everyone, 0) + per(r, everyone, 1) for r in rs])
        print(f"| {size} | {target} | {med([r['msgs_per_s'] for r in rs]):,.0f} | "
              f"{cell(['wsgate'], 0):.2f} | {cell(['wsgate'], 1):.2f} | "
              f"{cell(['kernel_threads'], 0) + cell(['kernel_threads'], 1):.2f} | "
              f"{cell(everyone, 0):.2f} | {cell(everyone, 1):.2f} | {both:.2f} |")
idle = [r for r in records if r["workload"] == "idle"]
if idle:
    print()
    print("| idle tunnels | splice | wsgate RSS KiB / tunnel | kernel slab KiB / tunnel (whole machine) |")
    print("|---:|---|---:|---:|")
    for r in idle:
        opened = r["run"]["opened"] or 1
        print(f"| {opened} | {r['target']} | {r['run']['kib_per_socket']:.2f} | {r['slab_delta_kib'] / opened:.2f} |")
EOF
