#!/usr/bin/env bash
# Side-by-side comparison: the loadgen echo backend direct, behind wsgate
# (plain, inspected, TLS), behind nginx (ws, wss) and behind HAProxy (ws, wss),
# on the idle, echo and handshake workloads; writes docs/comparison.md.
#
#   benches/compare.sh                                  # defaults: about 12 minutes plus the build
#   ROUNDS=1 DURATION=2 IDLE_N=2000 benches/compare.sh  # a quick check, about 2½ minutes
#   TUNED=both benches/compare.sh                       # stock and tuned nginx/HAProxy side by side
#   LOGS=off benches/compare.sh                         # access logs off everywhere only
#
# Settings (environment):
#   ROUNDS=3                rounds of echo and handshake runs, targets alternating within each
#   DURATION=5              measured seconds per echo and handshake run (whole seconds)
#   WARMUP=1                unmeasured seconds before each window (whole seconds)
#   CONNECTIONS=50          echo sockets, one message in flight each
#   ECHO_500=0              1: also run every echo size with 500 sockets
#   SIZES="128 16384"       echo payload bytes
#   HANDSHAKE_CONNECTIONS=50  handshake cycles in flight
#   IDLE_N=9000             idle sockets per proxy target (0: no idle workload)
#   IDLE_HOLD=3             seconds the idle sockets are held before memory is read again
#   TUNED=0                 0: stock nginx/HAProxy buffers; 1: tuned (nginx proxy_buffer_size 64k,
#                           HAProxy tune.bufsize 65536, TLS with AES-128-GCM first); both: both,
#                           as separate targets
#   LOGS=both               off: no access log anywhere (nginx access_log off, HAProxy no log,
#                           wsgate WSGATE_LOG=warn); on: every proxy writes its access log to a
#                           file (nginx access_log, HAProxy option httplog to stderr, wsgate's
#                           default level to stderr); both: the off targets, plus plain wsgate,
#                           nginx and HAProxy with logs on (ids *-log; echo and handshake only)
#   WORKLOADS="idle echo handshake"  the workloads to run (idle runs first, on fresh processes)
#   LOADGEN_THREADS=        tokio worker threads of the load generator (default: one per CPU)
#   INSTALL=1               install nginx and haproxy with apt-get when missing (needs root)
#   OUT=docs/comparison.md
#   CARGO_TARGET_DIR        honoured (default target/)
#
# Needs cargo, python3, Linux /proc, nginx and haproxy (Debian's packages).
# Everything listens on 127.0.0.1 and shares the machine's CPUs; the proxies'
# CPU time per message or handshake (summed over all of a proxy's processes)
# is the figure that depends least on the rest of the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CONNECTIONS=${CONNECTIONS:-50}
ECHO_500=${ECHO_500:-0}
SIZES=${SIZES:-"128 16384"}
HANDSHAKE_CONNECTIONS=${HANDSHAKE_CONNECTIONS:-50}
IDLE_N=${IDLE_N:-9000}
IDLE_HOLD=${IDLE_HOLD:-3}
TUNED=${TUNED:-0}
LOGS=${LOGS:-both}
WORKLOADS=${WORKLOADS:-"idle echo handshake"}
LOADGEN_THREADS=${LOADGEN_THREADS:-}
INSTALL=${INSTALL:-1}
OUT=${OUT:-docs/comparison.md}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}

BENCH_NAME=compare.sh
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_whole ROUNDS DURATION WARMUP CONNECTIONS ECHO_500 HANDSHAKE_CONNECTIONS IDLE_N IDLE_HOLD
case $TUNED in
  0) VARIANTS=(stock) ;;
  1) VARIANTS=(tuned) ;;
  both) VARIANTS=(stock tuned) ;;
  *) echo "compare.sh: TUNED must be 0, 1 or both, not '$TUNED'" >&2; exit 2 ;;
esac
case $LOGS in
  off | on | both) ;;
  *) echo "compare.sh: LOGS must be off, on or both, not '$LOGS'" >&2; exit 2 ;;
esac
for workload in $WORKLOADS; do
  case $workload in
    idle | echo | handshake) ;;
    *) echo "compare.sh: WORKLOADS: unknown workload '$workload' (idle, echo, handshake)" >&2; exit 2 ;;
  esac
done
wants() { [[ " $WORKLOADS " == *" $1 "* ]]; }
for size in $SIZES; do
  [[ $size =~ ^[0-9]+$ ]] || { echo "compare.sh: SIZES must be whole numbers, not '$size'" >&2; exit 2; }
done
bench_require cargo python3 timeout ps

# --- nginx and HAProxy, from Debian's packages when missing.
PATH=$PATH:/usr/sbin:/sbin
if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
  [[ $INSTALL == 1 ]] || { echo "compare.sh: nginx or haproxy is missing (INSTALL=0)" >&2; exit 1; }
  [[ $(id -u) == 0 ]] || { echo "compare.sh: nginx or haproxy is missing; install them (apt-get install nginx-light haproxy) or run as root" >&2; exit 1; }
  command -v apt-get >/dev/null || { echo "compare.sh: nginx or haproxy is missing and there is no apt-get" >&2; exit 1; }
  log "installing nginx and haproxy (apt-get)"
  # The packages' services must not start (they would listen on :80 and share the CPUs).
  made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  install_ok=0
  for attempt in 1 2; do
    if apt-get install -y -q nginx-light haproxy >&2 || apt-get install -y -q nginx haproxy >&2; then
      install_ok=1
      break
    fi
    [[ $attempt == 1 ]] && apt-get update -q >&2
  done
  [[ $made_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
  [[ $install_ok == 1 ]] || { echo "compare.sh: could not install nginx and haproxy" >&2; exit 1; }
fi
NGINX=$(command -v nginx)
HAPROXY=$(command -v haproxy)

# --- Open files: every proxy and the load generator get the hard limit.
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
if [[ $NOFILE == unlimited ]]; then NOFILE=1048576; fi
# Each idle tunnel holds two descriptors in the proxy (client and backend side).
if wants idle && ((IDLE_N > 0 && 2 * IDLE_N + 100 > NOFILE)); then
  echo "compare.sh: IDLE_N=$IDLE_N needs $((2 * IDLE_N + 100)) open files per proxy; the limit is $NOFILE" >&2
  exit 1
fi
# nginx: connections per worker (client and upstream sides both count).
NGINX_CONNECTIONS=$((NOFILE < 20000 ? NOFILE : 20000))
# HAProxy refuses to start when maxconn needs more descriptors than it may
# open (about 2 per connection), so 50,000 is capped to what the limit allows.
HAPROXY_MAXCONN=$(((NOFILE - 100) / 2 < 50000 ? (NOFILE - 100) / 2 : 50000))

bench_workdir wsgate-compare
bench_build
# What was built (the tree may change while the runs go on).
BUILD_COMMIT=$(bench_commit src Cargo.toml Cargo.lock)
BUILD_ALLOCATOR=$(grep -m1 -oE '^(mimalloc|tikv-jemallocator|jemallocator|snmalloc-rs)\b' Cargo.toml || echo "the system allocator (glibc malloc)")

machine_busy() { # percent of all CPUs busy over 2 s, from /proc/stat
  local a b
  a=$(head -1 /proc/stat)
  sleep 2
  b=$(head -1 /proc/stat)
  python3 - "$a" "$b" <<'EOF'
import sys
a = [int(x) for x in sys.argv[1].split()[1:]]
b = [int(x) for x in sys.argv[2].split()[1:]]
d = [y - x for x, y in zip(a, b)]
total = sum(d[:8]) or 1
idle = d[3] + d[4]
print(f"{100 * (total - idle) / total:.0f}")
EOF
}
loadavg_log="$work/loadavg.txt"
note_load() { echo "$1|$(cut -d' ' -f1-3 /proc/loadavg)" >>"$loadavg_log"; }
note_load "before the runs"
BUSY_BEFORE=$(machine_busy)
log "machine busy before starting: ${BUSY_BEFORE}% of all CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"

# --- One certificate for every TLS listener.
mkdir -p "$work/cert"
"$WSGATE" cert --out-dir "$work/cert" >/dev/null
CA=$work/cert/dev-ca.pem
CERT=$work/cert/localhost.pem
KEY=$work/cert/localhost-key.pem
cat "$CERT" "$KEY" >"$work/cert/haproxy.pem"

# --- Targets: id, label, kind, TLS, variant, logs, URL, measured pids. An id
# is KIND[-inspected][-tuned][-log][-tls].
log_tag=""
[[ $LOGS == on ]] && log_tag="-log"
TARGETS=(direct "wsgate$log_tag" "wsgate-inspected$log_tag" "wsgate$log_tag-tls")
for variant in "${VARIANTS[@]}"; do
  suffix=""
  [[ $variant == tuned ]] && suffix="-tuned"
  TARGETS+=("nginx$suffix$log_tag" "nginx$suffix$log_tag-tls" "haproxy$suffix$log_tag" "haproxy$suffix$log_tag-tls")
done
if [[ $LOGS == both ]]; then
  # Plain only, with the first buffer variant: the access log costs per
  # connection, which the plain handshakes show best.
  suffix=""
  [[ ${VARIANTS[0]} == tuned ]] && suffix="-tuned"
  TARGETS+=(wsgate-log "nginx$suffix-log" "haproxy$suffix-log")
fi
read -r -a PORTS < <(bench_ports "${#TARGETS[@]}")
declare -A PORT LABEL KIND TLS VARIANT LOGGED URL PIDS MAIN
for i in "${!TARGETS[@]}"; do
  id=${TARGETS[$i]}
  PORT[$id]=${PORTS[$i]}
  case $id in
    *-tls) TLS[$id]=1 ;;
    *) TLS[$id]=0 ;;
  esac
  case $id in
    *-tuned*) VARIANT[$id]=tuned ;;
    *) VARIANT[$id]=stock ;;
  esac
  case $id in
    *-log*) LOGGED[$id]=1 ;;
    *) LOGGED[$id]=0 ;;
  esac
  KIND[$id]=${id%%-*}
  if [[ ${TLS[$id]} == 1 ]]; then
    URL[$id]="wss://127.0.0.1:${PORT[$id]}/echo"
  else
    URL[$id]="ws://127.0.0.1:${PORT[$id]}/echo"
  fi
done
BACKEND_PORT=${PORT[direct]}
for id in "${TARGETS[@]}"; do
  case ${KIND[$id]} in
    haproxy) label=HAProxy ;;
    *) label=${KIND[$id]} ;;
  esac
  [[ $id == *-inspected* ]] && label+=" inspected"
  [[ ${VARIANT[$id]} == tuned ]] && label+=" tuned"
  [[ ${LOGGED[$id]} == 1 ]] && label+=" logs on"
  [[ ${TLS[$id]} == 1 ]] && label+=" TLS"
  LABEL[$id]=$label
done

# access_log ID: the file ID's access log goes to (for the wsgate and
# HAProxy targets it is their standard error).
access_log() {
  case ${KIND[$1]} in
    nginx) echo "$work/$1/access.log" ;;
    *) echo "$work/$1.log" ;;
  esac
}

write_wsgate() { # id inspect(0|1)
  local id=$1 cert="" key=""
  if [[ ${TLS[$id]} == 1 ]]; then cert=$CERT key=$KEY; fi
  bench_wsgate_config "$work/$id.toml" "$id" "${PORT[$id]}" "$BACKEND_PORT" "$2" "$cert" "$key"
  "$WSGATE" check --config "$work/$id.toml" >/dev/null 2>&1 || { "$WSGATE" check --config "$work/$id.toml"; exit 1; }
}

# TLS 1.3 suites for the tuned peers: AES-128-GCM first, as wsgate chooses.
AES_128_FIRST=TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256

write_nginx() { # id
  local id=$1 dir=$work/$1
  mkdir -p "$dir/tmp"
  {
    echo "# nginx benchmark configuration (written by benches/compare.sh)"
    echo 'daemon off;'
    echo 'master_process on;'
    echo 'worker_processes 2;'
    echo "worker_rlimit_nofile $NGINX_CONNECTIONS;"
    echo 'pid nginx.pid;'
    echo "error_log $dir/error.log warn;"
    echo "events { worker_connections $NGINX_CONNECTIONS; }"
    echo 'http {'
    if [[ ${LOGGED[$id]} == 1 ]]; then
      echo "    access_log $(access_log "$id");"
    else
      echo '    access_log off;'
    fi
    echo "    client_body_temp_path $dir/tmp/body;"
    echo "    proxy_temp_path $dir/tmp/proxy;"
    echo "    fastcgi_temp_path $dir/tmp/fastcgi;"
    echo "    uwsgi_temp_path $dir/tmp/uwsgi;"
    echo "    scgi_temp_path $dir/tmp/scgi;"
    if [[ ${VARIANT[$id]} == tuned ]]; then
      echo '    proxy_buffer_size 64k;'
      # Only so that nginx accepts the 64k above (its busy-buffers rule); an
      # upgraded connection uses proxy_buffer_size buffers, not these.
      echo '    proxy_buffers 4 64k;'
    fi
    echo '    server {'
    if [[ ${TLS[$id]} == 1 ]]; then
      echo "        listen 127.0.0.1:${PORT[$id]} ssl;"
      echo "        ssl_certificate $CERT;"
      echo "        ssl_certificate_key $KEY;"
      # nginx 1.22's default list lacks TLSv1.3, which wsgate and HAProxy negotiate.
      echo '        ssl_protocols TLSv1.2 TLSv1.3;'
      if [[ ${VARIANT[$id]} == tuned ]]; then
        # AES-128-GCM first whatever the client's order, as wsgate chooses
        # for a client that lists AES-GCM first (README, TLS).
        echo '        ssl_prefer_server_ciphers on;'
        echo "        ssl_conf_command Ciphersuites $AES_128_FIRST;"
      fi
    else
      echo "        listen 127.0.0.1:${PORT[$id]};"
    fi
    echo '        location / {'
    echo "            proxy_pass http://127.0.0.1:$BACKEND_PORT;"
    echo '            proxy_http_version 1.1;'
    # shellcheck disable=SC2016 # nginx's variable, not the shell's
    echo '            proxy_set_header Upgrade $http_upgrade;'
    echo '            proxy_set_header Connection "upgrade";'
    echo '            proxy_read_timeout 1h;'
    echo '            proxy_send_timeout 1h;'
    echo '        }'
    echo '    }'
    echo '}'
  } >"$dir/nginx.conf"
  "$NGINX" -t -q -p "$dir/" -c nginx.conf -e "$dir/error.log" 2>"$work/$id.log" || { cat "$work/$id.log" >&2; exit 1; }
}

write_haproxy() { # id
  local id=$1
  {
    echo "# HAProxy benchmark configuration (written by benches/compare.sh)"
    echo 'global'
    echo '    nbthread 2'
    echo "    maxconn $HAPROXY_MAXCONN"
    if [[ ${VARIANT[$id]} == tuned ]]; then
      echo '    tune.bufsize 65536'
      # HAProxy follows its own order already; this puts AES-128-GCM first.
      echo "    ssl-default-bind-ciphersuites $AES_128_FIRST"
    fi
    # No syslog needed: HAProxy writes each line to its standard error, a file.
    [[ ${LOGGED[$id]} == 1 ]] && echo '    log stderr format raw local0 info'
    echo 'defaults'
    echo '    mode http'
    if [[ ${LOGGED[$id]} == 1 ]]; then
      echo '    log global'
      echo '    option httplog'
    fi
    echo "    maxconn $HAPROXY_MAXCONN"
    echo '    timeout connect 5s'
    echo '    timeout client 60s'
    echo '    timeout server 60s'
    echo '    timeout tunnel 1h'
    echo 'frontend fe'
    if [[ ${TLS[$id]} == 1 ]]; then
      echo "    bind 127.0.0.1:${PORT[$id]} ssl crt $work/cert/haproxy.pem alpn http/1.1"
    else
      echo "    bind 127.0.0.1:${PORT[$id]}"
    fi
    echo '    default_backend be'
    echo 'backend be'
    echo "    server echo 127.0.0.1:$BACKEND_PORT"
  } >"$work/$id.cfg"
  "$HAPROXY" -c -q -f "$work/$id.cfg" >"$work/$id.log" 2>&1 || { cat "$work/$id.log" >&2; exit 1; }
}

# start ID: starts the target's server, waits for its port, records its pids.
start() {
  local id=$1 pid kids i
  case ${KIND[$id]} in
    direct)
      "$LOADGEN" backend --listen "127.0.0.1:$BACKEND_PORT" 2>"$work/$id.log" &
      ;;
    wsgate)
      local inspect=0
      [[ $id == *-inspected* ]] && inspect=1
      write_wsgate "$id" "$inspect"
      # Logs on: the default level (the access log), whatever the caller's environment says.
      if [[ ${LOGGED[$id]} == 1 ]]; then
        env -u WSGATE_LOG "$WSGATE" --config "$work/$id.toml" 2>"$work/$id.log" &
      else
        WSGATE_LOG=warn "$WSGATE" --config "$work/$id.toml" 2>"$work/$id.log" &
      fi
      ;;
    nginx)
      write_nginx "$id"
      "$NGINX" -p "$work/$id/" -c nginx.conf -e "$work/$id/error.log" 2>"$work/$id.log" &
      ;;
    haproxy)
      write_haproxy "$id"
      "$HAPROXY" -db -f "$work/$id.cfg" 2>"$work/$id.log" &
      ;;
  esac
  pid=$!
  pids+=("$pid")
  MAIN[$id]=$pid
  wait_port "${PORT[$id]}" "$pid" "$id"
  PIDS[$id]=$pid
  if [[ ${KIND[$id]} == nginx ]]; then
    # The master and its two workers: CPU and memory are summed over all three.
    for ((i = 0; i < 100; i++)); do
      kids=$(ps -o pid= --ppid "$pid" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//')
      [[ $(wc -w <<<"$kids") -ge 2 ]] && break
      sleep 0.1
    done
    [[ $(wc -w <<<"$kids") -ge 2 ]] || { log "$id: no nginx workers"; exit 1; }
    PIDS[$id]="$pid,${kids// /,}"
  fi
}

for id in "${TARGETS[@]}"; do
  start "$id"
  log "$id (${LABEL[$id]}): ${URL[$id]}, pids ${PIDS[$id]}"
done
# Threads of each server process, for the report (wsgate has no setting: its
# tokio runtime runs one worker per CPU).
threads_of() { ps -o nlwp= -p "$1" | tr -d ' '; }
WSGATE_THREADS=$(threads_of "${MAIN[${TARGETS[1]}]}")
for id in "${TARGETS[@]}"; do
  [[ ${KIND[$id]} == haproxy ]] && { HAPROXY_THREADS=$(threads_of "${MAIN[$id]}"); break; }
done

threads=()
[[ -n $LOADGEN_THREADS ]] && threads=(--threads "$LOADGEN_THREADS")
results="$work/results.jsonl"
: >"$results"
run_timeout=$((DURATION + WARMUP + 60))

record() { # workload round target extra-json line
  printf '{"workload":"%s","round":%d,"target":"%s"%s,"run":%s}\n' "$1" "$2" "$3" "$4" "$5" >>"$results"
}

# loadgen ARGS...: runs the load generator (in the background, so that the
# EXIT trap can stop it) and sets $line to its JSON line, or {"failed":true}.
loadgen() {
  local status=0
  timeout "$run_timeout" "$LOADGEN" "${threads[@]}" "$@" >"$work/line.json" 2> >(tee -a "$work/loadgen.log" >&2) &
  BENCH_CURRENT=$!
  wait "$BENCH_CURRENT" || status=$?
  BENCH_CURRENT=
  if [[ $status == 0 && -s $work/line.json ]]; then
    line=$(<"$work/line.json")
  else
    log "run failed (exit $status); recorded as failed"
    line='{"failed":true}'
  fi
}

# target_args ID: the URL (and CA) arguments for ID in $target_args;
# proxy_args ID: --proxy-pid with every process of ID's proxy in $proxy_args.
target_args() {
  target_args=(--url "${URL[$1]}")
  if [[ ${TLS[$1]} == 1 ]]; then target_args+=(--ca "$CA"); fi
}
proxy_args() {
  proxy_args=()
  if [[ ${KIND[$1]} != direct ]]; then proxy_args=(--proxy-pid "${PIDS[$1]}"); fi
}

# --- Idle first, while every proxy is fresh (memory freed by earlier runs
# would otherwise be reused by the idle sockets and hide their cost).
if wants idle && ((IDLE_N > 0)); then
  note_load "idle"
  for id in "${TARGETS[@]}"; do
    [[ ${KIND[$id]} == direct ]] && continue
    [[ $LOGS == both && ${LOGGED[$id]} == 1 ]] && continue
    log "idle: $IDLE_N sockets, $id"
    target_args "$id"
    loadgen idle "${target_args[@]}" --count "$IDLE_N" --hold "$IDLE_HOLD" --pid "${PIDS[$id]}"
    record idle 1 "$id" ",\"count\":$IDLE_N" "$line"
    sleep 1
  done
fi

# --- Echo and handshake: every round runs each setting against every target in turn.
echo_connections=("$CONNECTIONS")
[[ $ECHO_500 == 1 ]] && echo_connections+=(500)
for ((round = 1; round <= ROUNDS; round++)); do
  if wants echo; then
    note_load "echo, round $round"
    for conns in "${echo_connections[@]}"; do
      for size in $SIZES; do
        for id in "${TARGETS[@]}"; do
          log "round $round/$ROUNDS echo C=$conns size $size $id"
          target_args "$id"
          proxy_args "$id"
          loadgen echo "${target_args[@]}" --connections "$conns" --size "$size" \
            --duration "$DURATION" --warmup "$WARMUP" "${proxy_args[@]}"
          record echo "$round" "$id" ",\"connections\":$conns,\"size\":$size" "$line"
        done
      done
    done
  fi
  if wants handshake; then
    note_load "handshake, round $round"
    for id in "${TARGETS[@]}"; do
      log "round $round/$ROUNDS handshake C=$HANDSHAKE_CONNECTIONS $id"
      target_args "$id"
      proxy_args "$id"
      loadgen handshake "${target_args[@]}" --connections "$HANDSHAKE_CONNECTIONS" \
        --duration "$DURATION" --warmup "$WARMUP" "${proxy_args[@]}"
      record handshake "$round" "$id" ",\"connections\":$HANDSHAKE_CONNECTIONS" "$line"
    done
  fi
done
note_load "after the runs"
for id in "${TARGETS[@]}"; do
  IFS=, read -r -a ids <<<"${PIDS[$id]}"
  for pid in "${ids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { log "$id (pid $pid) died during the runs:"; cat "$work/$id.log" >&2; exit 1; }
  done
done

# --- The report.
targets_file="$work/targets.txt"
for id in "${TARGETS[@]}"; do
  # What each logging target wrote over the whole run (lines, bytes): the
  # proof that its access log was on.
  log_lines=0 log_bytes=0
  if [[ ${LOGGED[$id]} == 1 ]]; then
    file=$(access_log "$id")
    log_lines=$(wc -l <"$file")
    log_bytes=$(wc -c <"$file")
  fi
  printf '%s|%s|%s|%s|%s|%s|%s|%s|%s|%s\n' "$id" "${LABEL[$id]}" "${KIND[$id]}" "${TLS[$id]}" "${VARIANT[$id]}" \
    "${LOGGED[$id]}" "$log_lines" "$log_bytes" "${URL[$id]}" "${PIDS[$id]}"
done >"$targets_file"
command_line="ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS ECHO_500=$ECHO_500"
command_line+=" SIZES=\"$SIZES\" HANDSHAKE_CONNECTIONS=$HANDSHAKE_CONNECTIONS IDLE_N=$IDLE_N IDLE_HOLD=$IDLE_HOLD"
command_line+=" TUNED=$TUNED LOGS=$LOGS WORKLOADS=\"$WORKLOADS\""
[[ -n $LOADGEN_THREADS ]] && command_line+=" LOADGEN_THREADS=$LOADGEN_THREADS"
[[ $OUT != docs/comparison.md ]] && command_line+=" OUT=$OUT"
command_line+=" benches/compare.sh"
mkdir -p "$(dirname "$OUT")"
bench_machine_env
export ROUNDS DURATION WARMUP SIZES CONNECTIONS HANDSHAKE_CONNECTIONS IDLE_N IDLE_HOLD TUNED LOGS
WSGATE_VERSION=$("$WSGATE" --version) \
  COMMIT=$BUILD_COMMIT \
  NGINX_VERSION=$("$NGINX" -v 2>&1 | head -1) \
  HAPROXY_VERSION=$("$HAPROXY" -v | head -1) \
  OPENSSL_VERSION=$(openssl version 2>/dev/null || echo unknown) \
  WSGATE_ALLOCATOR=$BUILD_ALLOCATOR \
  RUSTLS_VERSION=$(awk '/^name = "rustls"$/ { getline; gsub(/[version ="]/, ""); print; exit }' Cargo.lock) \
  WSGATE_THREADS=$WSGATE_THREADS \
  HAPROXY_THREADS=$HAPROXY_THREADS \
  NGINX_CONNECTIONS=$NGINX_CONNECTIONS \
  HAPROXY_MAXCONN=$HAPROXY_MAXCONN \
  NOFILE=$NOFILE \
  BUSY_BEFORE=$BUSY_BEFORE \
  COMMAND=$command_line \
  DATE=$(date -u '+%Y-%m-%d %H:%M UTC') \
  python3 benches/compare_report.py "$results" "$targets_file" "$loadavg_log" "$OUT"
log "wrote $OUT"
sed -n '/^## Targets/,/^## Ratios/p' "$OUT" | sed '$d' >&2
