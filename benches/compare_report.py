"""Writes docs/comparison.md from the results benches/compare.sh collected.

Usage: compare_report.py RESULTS.jsonl TARGETS.txt LOADAVG.txt OUT.md, with the
settings and versions in the environment (see the end of compare.sh).
"""

import json
import os
import statistics
import sys

results_path, targets_path, loadavg_path, out_path = sys.argv[1:5]
env = os.environ
records = [json.loads(line) for line in open(results_path)]

targets, meta = [], {}
for line in open(targets_path):
    tid, label, kind, tls, variant, logs, log_lines, log_bytes, url, pids = line.rstrip("\n").split("|")
    targets.append(tid)
    meta[tid] = {"label": label, "kind": kind, "tls": tls == "1", "variant": variant, "logs": logs == "1",
                 "log_lines": int(log_lines), "log_bytes": int(log_bytes), "url": url, "pids": pids}
loads = [line.rstrip("\n").split("|", 1) for line in open(loadavg_path)]
sizes = [int(s) for s in env["SIZES"].split()]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=0):
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def ratio(a, b):
    return a / b if a is not None and b else None


def runs(workload, target, **match):
    out = []
    for r in records:
        if r["workload"] != workload or r["target"] != target or r["run"].get("failed"):
            continue
        if all(r.get(k) == v for k, v in match.items()):
            out.append(r["run"])
    return out


def by_round(workload, target, key, **match):
    """{round: value} of one target's runs."""
    return {r["round"]: r["run"].get(key) for r in records
            if r["workload"] == workload and r["target"] == target and not r["run"].get("failed")
            and all(r.get(k) == v for k, v in match.items())}


def rounds_text(workload, w, t, key, **match):
    """w's value over t's, round by round: a round runs every target once, within minutes, so a ratio taken
    inside it spares the machine's drift between rounds that the medians of each target mix in."""
    if t is None:
        return ""
    a, b = by_round(workload, w, key, **match), by_round(workload, t, key, **match)
    ratios = [ratio(a[n], b[n]) for n in sorted(a) if n in b]
    ratios = [r for r in ratios if r is not None]
    if len(ratios) < 2:
        return ""
    return f"; round by round {', '.join(fmt(r, 2) for r in ratios)}, median {fmt(median(ratios), 2)}×"


def failed(workload):
    return sum(1 for r in records if r["workload"] == workload and r["run"].get("failed"))


echo_settings = sorted({(r["connections"], r["size"]) for r in records if r["workload"] == "echo"})
echo = {}
for conns, size in echo_settings:
    for t in targets:
        rs = runs("echo", t, connections=conns, size=size)
        cpu = median([r.get("proxy_cpu_s_per_1m_msgs") for r in rs])
        echo[conns, size, t] = {
            "user": median([r.get("proxy_user_s_per_1m_msgs") for r in rs]),
            "sys": median([r.get("proxy_sys_s_per_1m_msgs") for r in rs]),
            "n": len(rs),
            "msgs": median([r["msgs_per_s"] for r in rs]),
            "all": [r["msgs_per_s"] for r in rs],
            "mb": median([r["mb_per_s"] for r in rs]),
            "p50": median([r["p50_us"] for r in rs]),
            "p99": median([r["p99_us"] for r in rs]),
            "p999": median([r["p999_us"] for r in rs]),
            "cpu": cpu,
            "errors": sum(r["errors"] for r in rs),
        }
    direct_p99 = echo[conns, size, "direct"]["p99"]
    for t in targets:
        s = echo[conns, size, t]
        s["added"] = s["p99"] - direct_p99 if s["p99"] is not None and direct_p99 is not None and t != "direct" else None

hs = {}
for t in targets:
    rs = runs("handshake", t)
    done = sum(r["handshakes"] for r in rs)
    cpu = median([r.get("proxy_cpu_s_per_1k_handshakes") for r in rs])
    user = median([r.get("proxy_user_s_per_1k_handshakes") for r in rs])
    system = median([r.get("proxy_sys_s_per_1k_handshakes") for r in rs])
    hs[t] = {
        "user_ms": user * 1000 if user is not None else None,
        "sys_ms": system * 1000 if system is not None else None,
        "n": len(rs),
        "rate": median([r["handshakes_per_s"] for r in rs]),
        "all": [r["handshakes_per_s"] for r in rs],
        "p50": median([r["p50_us"] for r in rs]),
        "p99": median([r["p99_us"] for r in rs]),
        "cp50": median([r["cycle_p50_us"] for r in rs]),
        "cp99": median([r["cycle_p99_us"] for r in rs]),
        "cpu_ms": cpu * 1000 if cpu is not None else None,
        "resumed": sum(r.get("tls_resumed", 0) for r in rs) / done if done and meta[t]["tls"] else None,
        # What the load generator's TLS handshakes agreed with this target (the same every round).
        "tls": sorted({r["tls"] for r in rs if r.get("tls")}),
        "errors": sum(r["errors"] for r in rs),
    }

idle = {}
for t in targets:
    rs = runs("idle", t)
    if not rs:
        continue
    r = rs[0]
    before = sum(p["rss_before_kib"] for p in r["pids"])
    after = sum(p["rss_after_kib"] for p in r["pids"])
    idle[t] = {
        "opened": r["opened"],
        "errors": r["errors"],
        "before": before,
        "after": after,
        "kib": r["kib_per_socket"] if r["opened"] else None,
        "procs": len(r["pids"]),
    }


def project(kib, tunnels):
    """Resident memory for this many tunnels, as text."""
    if kib is None:
        return "–"
    mib = kib * tunnels / 1024
    return f"{mib / 1024:,.2f} GiB" if mib >= 1024 else f"{mib:,.0f} MiB"


# The logging every comparison uses unless it says otherwise: logs off when
# those targets ran (LOGS=off or both), else on.
base_logs = all(meta[t]["logs"] for t in targets if meta[t]["kind"] != "direct")


def peers(kind, tls, logs=None):
    logs = base_logs if logs is None else logs
    return [t for t in targets if meta[t]["kind"] == kind and meta[t]["tls"] == tls and meta[t]["logs"] == logs]


def both_peers(tls, logs=None):
    return peers("nginx", tls, logs) + peers("haproxy", tls, logs)


def best(candidates, value, higher):
    """(value, target) of the best candidate for this metric, or (None, None)."""
    scored = [(value(t), t) for t in candidates if value(t) is not None]
    if not scored:
        return None, None
    return (max if higher else min)(scored, key=lambda vt: vt[0])


def wsgate_id(tls, logs=None, inspected=False):
    """The id compare.sh gives this wsgate target (KIND[-inspected][-log][-tls])."""
    logs = base_logs if logs is None else logs
    return "wsgate" + ("-inspected" if inspected else "") + ("-log" if logs else "") + ("-tls" if tls else "")


def logged_ids():
    return [t for t in targets if meta[t]["logs"]]


def tag(t):
    """Which variant of a peer won, when both ran."""
    if t is None or env["TUNED"] != "both":
        return ""
    return f" ({meta[t]['variant']})"


lines = []
add = lines.append
add("# wsgate next to nginx and HAProxy")
add("")
add("Generated by [`benches/compare.sh`](../benches/compare.sh); what it runs is described in")
add("[`benches/README.md`](../benches/README.md#comparison-with-nginx-and-haproxy). Re-run the command below to refresh this file.")
add("WebSockets over HTTP/2 (wsgate and HAProxy with ALPN h2): [`comparison-http2.md`](comparison-http2.md).")
add("")
add("## Setup")
add("")
add(f"- date: {env['DATE']}")
add(f"- machine: {env['NPROC']} CPUs ({env['CPU_MODEL']}), {env['MEMORY']}, {env['KERNEL']}")
load_text = "; ".join(f"{phase}: {value}" for phase, value in loads)
add(f"- load average (1, 5, 15 min) — {load_text}; before anything started the CPUs were "
    f"{env['BUSY_BEFORE']}% busy with other work (over 2 s)")
add(f"- wsgate: `{env['WSGATE_VERSION']}`, commit `{env['COMMIT']}` at build time (a change mark counts src/ and "
    f"the Cargo files only), release build; {env['RUSTC']}; "
    f"rustls {env['RUSTLS_VERSION']} (ring)")
add(f"- nginx: `{env['NGINX_VERSION']}`; HAProxy: `{env['HAPROXY_VERSION']}`; both with `{env['OPENSSL_VERSION']}` (Debian packages)")
add(f"- command: `{env['COMMAND']}`")
add("")
add("| target | what | URL | processes measured |")
add("|---|---|---|---|")
for t in targets:
    m = meta[t]
    if m["kind"] == "direct":
        desc = "the loadgen echo backend itself (no proxy)"
    elif m["kind"] == "wsgate":
        desc = ("the same route with `[route.inspect] enabled = true`" if "-inspected" in t
                else ("TLS listener, byte splice" if m["tls"] else "one route, byte splice"))
    elif m["kind"] == "nginx":
        desc = ("`proxy_buffer_size 64k`" if m["variant"] == "tuned" else "stock buffers (`proxy_buffer_size` 4k)") + (
            (", TLS, AES-128-GCM first (`ssl_prefer_server_ciphers on`, `ssl_conf_command Ciphersuites`)"
             if m["variant"] == "tuned" else ", TLS") if m["tls"] else "")
    else:
        desc = ("`tune.bufsize 65536`" if m["variant"] == "tuned" else "stock buffers (`tune.bufsize` 16384)") + (
            (", TLS, AES-128-GCM first (`ssl-default-bind-ciphersuites`)"
             if m["variant"] == "tuned" else ", TLS") if m["tls"] else "")
    if m["logs"]:
        desc += ", access log to a file"
    n = len(m["pids"].split(",")) if m["kind"] != "direct" else 0
    procs = {0: "–", 1: "1"}.get(n, f"{n} (master + workers)")
    add(f"| {m['label']} | {desc} | `{m['url']}` | {procs} |")
add("")
add("- everything on 127.0.0.1, one loadgen echo backend behind every proxy, each target its own server process(es), "
    "started once; the load generator, the backend and the proxy share the CPUs, so msgs/s and latency are bounded by "
    "all three and by whatever else runs on the machine. **Proxy CPU** (utime + stime over the measured window, "
    "summed over all of a proxy's processes, from `/proc/PID/stat`) depends least on the rest")
add(f"- wsgate: it has no thread setting, its tokio runtime runs one worker per CPU "
    f"({env['NPROC']} here; the process had {env['WSGATE_THREADS']} threads in all)")
add(f"- nginx: `worker_processes 2`, `worker_connections {env['NGINX_CONNECTIONS']}`, `worker_rlimit_nofile "
    f"{env['NGINX_CONNECTIONS']}`, `proxy_http_version 1.1`, `Upgrade`/`Connection \"upgrade\"`, `proxy_read_timeout 1h`, "
    "`error_log … warn`, `daemon off`; TLS with `ssl_protocols TLSv1.2 TLSv1.3` (1.22's default lacks "
    "1.3), session tickets on (the default)")
add(f"- HAProxy: `mode http`, `nbthread 2` ({env['HAPROXY_THREADS']} threads in the process), `maxconn "
    f"{env['HAPROXY_MAXCONN']}` (50,000 needs more than the {env['NOFILE']} open files a process may have here, and "
    "HAProxy then refuses to start), `timeout connect 5s`, `client/server 60s`, `tunnel 1h`, `-db`; TLS "
    "`alpn http/1.1`")
log_scope = {
    "off": "off everywhere",
    "on": "on everywhere",
    "both": "off for every target without *logs on* in its name; on for the *logs on* targets (plain, echo and "
            "handshake only)",
}[env["LOGS"]]
add(f"- access logs (`LOGS={env['LOGS']}`): {log_scope}. Off: wsgate `WSGATE_LOG=warn`, nginx `access_log off`, "
    "HAProxy without a `log` line. On: each proxy writes its access log to a file in the work dir, the way it "
    "does by default (nginx without `buffer=`: one `write` per line): wsgate at its default level (no `WSGATE_LOG`; the access log is its standard error), nginx "
    "`access_log FILE` (the `combined` format), HAProxy `log stderr format raw local0 info`, `log global`, "
    "`option httplog` (its standard error is the file; no syslog). nginx and HAProxy write their line when the "
    "tunnel ends")
if logged_ids():
    written = "; ".join(
        f"{meta[t]['label']} {meta[t]['log_lines']:,} lines, {meta[t]['log_bytes'] / 1e6:,.1f} MB" for t in logged_ids())
    add(f"- access logs written over the whole run (every workload and warmup included): {written}")
agreed = "; ".join(f"{meta[t]['label']}: {', '.join(hs[t]['tls'])}"
                   for t in targets if meta[t]["tls"] and hs.get(t) and hs[t]["tls"])
add("- TLS: one ECDSA P-256 certificate from `wsgate cert`, ALPN http/1.1 on all three; the load generator is a "
    "rustls client, which lists TLS_AES_256_GCM_SHA384 first (as OpenSSL's clients do) and keeps sessions, so a "
    "handshake may resume (the share that did is in the handshake table). Agreed with each (version, suite, key "
    f"exchange, as the load generator saw them): {agreed or 'not recorded'}. wsgate chooses AES-128-GCM for a "
    "client that lists AES-GCM before ChaCha20 ([README](../README.md#tls)); stock nginx follows the client's "
    "order, stock HAProxy its own (OpenSSL's, AES-256 first), and the tuned ones are told to put AES-128-GCM "
    "first")
add(f"- open files: {env['NOFILE']} for every process (the script raises the soft limit to the hard one)")
add("")

# ---- Targets
add("## Targets")
add("")
same_logging = ("every target logs" if base_logs else
                "the *logs on* rows against the *logs on* peers, every other row with logs off")
add("Peers are compared at their best: the better of stock and tuned where both ran, and for CPU the better of nginx "
    f"and HAProxy, with the same logging as wsgate ({same_logging}). CPU is user + system unless a row says otherwise; the kernel's "
    "share is much the same for every proxy, so the user share is where they differ. With 2 CPUs shared by "
    "everything and medians of few rounds, differences under about 10% are noise. Where a row also gives its "
    "ratio round by round, each is taken inside one round (every target runs once a round, within minutes of the "
    "others), which spares it the machine's drift between rounds that each target's median mixes in; the verdict "
    "is the medians'.")
add("")
add("| target | measured | verdict |")
add("|---|---|:---:|")


def check(name, ok, text):
    mark = "–" if ok is None else ("✓" if ok else "✗")
    add(f"| {name} | {text} | {mark} |")


conns0 = int(env["CONNECTIONS"])


def echo_at(size, t, key):
    cell = echo.get((conns0, size, t))
    return cell[key] if cell else None


def label_of(t):
    return meta[t]["label"] if t else "–"


peer_scope = "stock or tuned" if env["TUNED"] == "both" else (
    "tuned only: run with TUNED=both" if env["TUNED"] == "1" else "stock only: run with TUNED=both")

# Issue 21: handshakes, plain, with the access logs off and on alike.
for logs in (False, True):
    w_id = wsgate_id(False, logs)
    if w_id not in hs or hs[w_id]["cpu_ms"] is None:
        continue
    when = "logs on" if logs else "logs off"
    w = hs[w_id]
    v, t = best(both_peers(False, logs), lambda t: hs[t]["cpu_ms"], False)
    r = ratio(w["cpu_ms"], v)
    check(f"CPU per 1,000 plain handshakes, {when} ≤ 0.9× the better peer",
          r <= 0.9 if r is not None else None,
          f"{fmt(w['cpu_ms'])} ms (user {fmt(w['user_ms'])}, system {fmt(w['sys_ms'])}) vs {fmt(v)} ms (user "
          f"{fmt(hs[t]['user_ms']) if t else '–'}, system {fmt(hs[t]['sys_ms']) if t else '–'}; {label_of(t)}): "
          f"{fmt(r, 2)}×{rounds_text('handshake', w_id, t, 'proxy_cpu_s_per_1k_handshakes')}")
    v, t = best(both_peers(False, logs), lambda t: hs[t]["rate"], True)
    r = ratio(w["rate"], v)
    check(f"plain handshakes/s, {when} ≥ 1.1× the better peer",
          r >= 1.1 if r is not None else None, f"{fmt(w['rate'])} vs {fmt(v)} ({label_of(t)}): {fmt(r, 2)}×"
          f"{rounds_text('handshake', w_id, t, 'handshakes_per_s')}")
w_id = wsgate_id(True)
if w_id in hs and hs[w_id]["cpu_ms"] is not None:
    w = hs[w_id]
    v, t = best(both_peers(True), lambda t: hs[t]["cpu_ms"], False)
    r = ratio(w["cpu_ms"], v)
    check("CPU per 1,000 TLS handshakes ≤ 0.75× the better peer",
          r <= 0.75 if r is not None else None,
          f"{fmt(w['cpu_ms'])} ms (user {fmt(w['user_ms'])}, system {fmt(w['sys_ms'])}) vs {fmt(v)} ms "
          f"({label_of(t)}): {fmt(r, 2)}×{rounds_text('handshake', w_id, t, 'proxy_cpu_s_per_1k_handshakes')}")
    v, t = best(peers("nginx", True), lambda t: hs[t]["rate"], True)
    r = ratio(w["rate"], v)
    check("TLS handshakes/s ≥ nginx", r >= 1 if r is not None else None,
          f"{fmt(w['rate'])} vs {fmt(v)}{tag(t)}: {fmt(r, 2)}×{rounds_text('handshake', w_id, t, 'handshakes_per_s')}")

# Issue 21: CPU per message, the peers at their best.
w = echo_at(128, wsgate_id(False), "user")
if w is not None:
    v, t = best(both_peers(False), lambda t: echo_at(128, t, "user"), False)
    r = ratio(w, v)
    check("user CPU per 1M msgs at 128 B ≤ the better peer's", r <= 1 if r is not None else None,
          f"{fmt(w, 2)} s (system {fmt(echo_at(128, wsgate_id(False), 'sys'), 2)} s) vs {fmt(v, 2)} s (system "
          f"{fmt(echo_at(128, t, 'sys'), 2) if t else '–'} s; {label_of(t)}): {fmt(r, 2)}×"
          f"{rounds_text('echo', wsgate_id(False), t, 'proxy_user_s_per_1m_msgs', connections=conns0, size=128)}")
w = echo_at(16384, wsgate_id(False), "cpu")
if w is not None:
    v, t = best(both_peers(False), lambda t: echo_at(16384, t, "cpu"), False)
    r = ratio(w, v)
    check(f"CPU per 1M msgs at 16 KiB ≤ 0.9× the better peer at its best ({peer_scope})",
          r <= 0.9 if r is not None else None,
          f"{fmt(w, 2)} s (user {fmt(echo_at(16384, wsgate_id(False), 'user'), 2)}, system "
          f"{fmt(echo_at(16384, wsgate_id(False), 'sys'), 2)}) vs {fmt(v, 2)} s ({label_of(t)}): {fmt(r, 2)}×"
          f"{rounds_text('echo', wsgate_id(False), t, 'proxy_cpu_s_per_1m_msgs', connections=conns0, size=16384)}")

# Nothing else regresses: throughput, p99, memory, inspected.
for size in sizes:
    w = echo_at(size, wsgate_id(False), "msgs")
    if w is None:
        continue
    for kind, name in (("nginx", "nginx"), ("haproxy", "HAProxy")):
        v, t = best(peers(kind, False), lambda t: echo_at(size, t, "msgs"), True)
        r = ratio(w, v)
        check(f"echo {size} B plain msgs/s ≥ 1.2× {name}",
              r >= 1.2 if r is not None else None,
              f"{fmt(w)} vs {fmt(v)}{tag(t)}: {fmt(r, 2)}×"
              f"{rounds_text('echo', wsgate_id(False), t, 'msgs_per_s', connections=conns0, size=size)}")
for size in sizes:
    w = echo_at(size, wsgate_id(False), "added")
    if w is None:
        continue
    v, t = best(peers("nginx", False), lambda t: echo_at(size, t, "added"), False)
    ok = w <= v if w is not None and v is not None else None
    check(f"added p99 over direct at {size} B ≤ nginx's",
          ok, f"{fmt(w)} µs vs {fmt(v)} µs{tag(t)}")
for tls, limit in ((False, 2), (True, 10)):
    i = idle.get(wsgate_id(tls))
    k = i["kib"] if i else None
    if k is None:
        continue
    check(f"memory per idle {'TLS' if tls else 'plain'} tunnel ≤ {limit} KiB (at 9,000)",
          k <= limit if k is not None else None,
          f"{fmt(k, 2)} KiB at {i['opened']:,}: {project(k, 100_000)} per 100,000 tunnels, "
          f"{project(k, 1_000_000)} per 1,000,000")
for size in sizes:
    p, i = wsgate_id(False), wsgate_id(False, inspected=True)
    c = ratio(echo_at(size, i, "cpu"), echo_at(size, p, "cpu"))
    if c is None:
        continue
    r = ratio(echo_at(size, i, "msgs"), echo_at(size, p, "msgs"))
    check(f"inspected within 10% of plain at {size} B (CPU per message)",
          c <= 1.1, f"{fmt(echo_at(size, i, 'cpu'), 2)} s vs {fmt(echo_at(size, p, 'cpu'), 2)} s per 1M msgs: "
          f"{fmt(c, 2)}× (msgs/s {fmt(r, 2)}×){rounds_text('echo', i, p, 'proxy_cpu_s_per_1m_msgs', connections=conns0, size=size)}")
add("")
add("For a target marked ✗, the row says how far it is; what was tried and measured for it is in "
    "[`performance.md`](performance.md#targets-not-met).")
add("")

# ---- Ratios
add("## Ratios")
add("")
add("wsgate against the best nginx and the best HAProxy target of the same kind (plain against plain, TLS against "
    "TLS, logs on against logs on) and against the backend alone. Above 1 is better for msgs/s and handshakes/s, "
    "below 1 is better for the rest.")
add("")
add("| metric | wsgate | nginx | HAProxy | direct | wsgate/nginx | wsgate/HAProxy | wsgate/direct |")
add("|---|---:|---:|---:|---:|---:|---:|---:|")


def ratio_row(name, value, higher, tls, digits=0, direct=True, positive=False, logs=None):
    """One row; with positive, a ratio only where both values are above 0
    (an added latency below 0 makes a ratio meaningless)."""
    w_id = wsgate_id(tls, logs)
    if w_id not in meta:
        return
    w = value(w_id)
    n, nt = best(peers("nginx", tls, logs), value, higher)
    h, ht = best(peers("haproxy", tls, logs), value, higher)
    d = value("direct") if direct and not tls else None

    def r(a, b):
        if positive and (a is None or b is None or a <= 0 or b <= 0):
            return None
        return ratio(a, b)

    add(f"| {name} | {fmt(w, digits)} | {fmt(n, digits)}{tag(nt)} | {fmt(h, digits)}{tag(ht)} | {fmt(d, digits)} | "
        f"{fmt(r(w, n), 2)} | {fmt(r(w, h), 2)} | {fmt(r(w, d), 2)} |")


for conns, size in echo_settings:
    for tls in (False, True):
        kind = "TLS" if tls else "plain"
        ratio_row(f"echo {size} B C={conns} {kind}: msgs/s", lambda t: echo[conns, size, t]["msgs"], True, tls)
for conns, size in echo_settings:
    for tls in (False, True):
        kind = "TLS" if tls else "plain"
        ratio_row(f"echo {size} B C={conns} {kind}: CPU s / 1M msgs", lambda t: echo[conns, size, t]["cpu"], False,
                  tls, 2, direct=False)
        ratio_row(f"echo {size} B C={conns} {kind}: user CPU s / 1M msgs", lambda t: echo[conns, size, t]["user"],
                  False, tls, 2, direct=False)
        ratio_row(f"echo {size} B C={conns} {kind}: system CPU s / 1M msgs", lambda t: echo[conns, size, t]["sys"],
                  False, tls, 2, direct=False)
for conns, size in echo_settings:
    for tls in (False, True):
        kind = "TLS" if tls else "plain"
        ratio_row(f"echo {size} B C={conns} {kind}: p99 added over direct, µs",
                  lambda t: echo[conns, size, t]["added"], False, tls, direct=False, positive=True)
if any(hs[t]["n"] for t in targets):
    for tls in (False, True):
        kind = "TLS" if tls else "plain"
        ratio_row(f"handshake {kind}: handshakes/s", lambda t: hs[t]["rate"], True, tls)
    for tls in (False, True):
        kind = "TLS" if tls else "plain"
        for key, what in (("cpu_ms", "CPU"), ("user_ms", "user CPU"), ("sys_ms", "system CPU")):
            ratio_row(f"handshake {kind}: {what} ms / 1,000 handshakes", lambda t: hs[t][key], False, tls,
                      direct=False)
    if base_logs is False and wsgate_id(False, True) in meta:
        ratio_row("handshake plain, logs on: handshakes/s", lambda t: hs[t]["rate"], True, False, logs=True,
                  direct=False)
        for key, what in (("cpu_ms", "CPU"), ("user_ms", "user CPU"), ("sys_ms", "system CPU")):
            ratio_row(f"handshake plain, logs on: {what} ms / 1,000 handshakes", lambda t: hs[t][key], False, False,
                      direct=False, logs=True)
if idle:
    for tls in (False, True):
        kind = "TLS" if tls else "plain"
        ratio_row(f"idle {kind}: KiB per tunnel", lambda t: idle[t]["kib"] if t in idle else None, False, tls, 2,
                  direct=False)
add("")

# ---- Per-workload tables
for conns, size in echo_settings:
    add(f"## Echo: {size} B messages, {conns} sockets, one message in flight each")
    add("")
    add(f"`loadgen echo --connections {conns} --size {size} --duration {env['DURATION']} --warmup {env['WARMUP']}`, "
        f"{env['ROUNDS']} round(s), medians.")
    add("")
    add("| target | msgs/s | MB/s (one way) | p50 µs | p99 µs | p99.9 µs | p99 added over direct µs | proxy CPU s / 1M msgs | user s | system s | errors | msgs/s per round |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for t in targets:
        s = echo[conns, size, t]
        per_round = ", ".join(fmt(v) for v in s["all"]) or "–"
        add(f"| {meta[t]['label']} | {fmt(s['msgs'])} | {fmt(s['mb'], 1)} | {fmt(s['p50'])} | {fmt(s['p99'])} | "
            f"{fmt(s['p999'])} | {fmt(s['added'])} | {fmt(s['cpu'], 2)} | {fmt(s['user'], 2)} | {fmt(s['sys'], 2)} | "
            f"{s['errors']} | {per_round} |")
    add("")

if any(hs[t]["n"] for t in targets):
    add(f"## Handshake: {env['HANDSHAKE_CONNECTIONS']} cycles in flight (connect, upgrade, one 16-byte echo, close)")
    add("")
    add(f"`loadgen handshake --connections {env['HANDSHAKE_CONNECTIONS']} --duration {env['DURATION']} "
        f"--warmup {env['WARMUP']}`, {env['ROUNDS']} round(s), medians. p50/p99 run from connect to the 101; "
        "the cycle columns cover the whole cycle.")
    add("")
    add("| target | handshakes/s | p50 µs | p99 µs | cycle p50 µs | cycle p99 µs | proxy CPU ms / 1,000 handshakes | user ms | system ms | TLS resumed | errors | handshakes/s per round |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for t in targets:
        s = hs[t]
        per_round = ", ".join(fmt(v) for v in s["all"]) or "–"
        resumed = f"{s['resumed']:.0%}" if s["resumed"] is not None else "–"
        add(f"| {meta[t]['label']} | {fmt(s['rate'])} | {fmt(s['p50'])} | {fmt(s['p99'])} | {fmt(s['cp50'])} | "
            f"{fmt(s['cp99'])} | {fmt(s['cpu_ms'])} | {fmt(s['user_ms'])} | {fmt(s['sys_ms'])} | {resumed} | "
            f"{s['errors']} | {per_round} |")
    add("")

if idle:
    add(f"## Idle: {env['IDLE_N']} open tunnels held {env['IDLE_HOLD']} s")
    add("")
    add(f"`loadgen idle --count {env['IDLE_N']} --hold {env['IDLE_HOLD']}s --pid PROXY_PIDS`, once per target, first "
        "thing after the proxies started. Resident memory (VmRSS) summed over the proxy's processes, before opening "
        "and after holding; the backend's memory is not counted.")
    add("")
    add("| target | opened | errors | RSS before KiB | RSS after KiB | KiB per tunnel | 100,000 tunnels | 1,000,000 tunnels |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        if t not in idle:
            continue
        s = idle[t]
        add(f"| {meta[t]['label']} | {s['opened']:,} | {s['errors']} | {s['before']:,} | {s['after']:,} | "
            f"{fmt(s['kib'], 2)} | {project(s['kib'], 100_000)} | {project(s['kib'], 1_000_000)} |")
    add("")

add("## Caveats")
add("")
add("- **Shared CPUs.** The load generator, the backend and the proxy run on the same "
    f"{env['NPROC']} CPUs, together with whatever else the machine runs (see the load averages above). A proxy that "
    "uses more CPU leaves less for the load generator, so msgs/s and latency mix the proxy's cost with the "
    "machine's; CPU per message or handshake is the cleaner figure.")
add("- **Closed loop latency.** Each socket has one message in flight, so direct, being fastest, runs the most "
    "messages per second and queues the most for a CPU: its p99 is not a floor, and *p99 added over direct* can be "
    "below zero. The ratio columns leave such rows out.")
add("- **Stock nginx buffers.** nginx's stock `proxy_buffer_size` is one page (4 KiB), so a 16 KiB message takes "
    "several reads and writes per direction; `TUNED=1` (64 KiB) or `TUNED=both` shows nginx and HAProxy with large "
    "buffers.")
add("- **Idle tunnels carry no data.** The idle sockets are opened and held without a message, so buffer pages a "
    "proxy allocates but has not touched yet are not resident; a tunnel that has carried traffic may hold more "
    "(nginx keeps its two `proxy_buffer_size` buffers for the tunnel's life, HAProxy and wsgate's plain tunnels "
    "give theirs back when empty).")
add("- **Threads.** All three proxies use two-way parallelism (wsgate: 2 tokio workers; nginx: 2 worker processes "
    "plus an idle master, counted in CPU and memory; HAProxy: 2 threads). HAProxy's `maxconn` is below the "
    "50,000 asked for because of the open-file limit; it is still above the idle socket count.")
add("- **TLS stacks.** wsgate terminates TLS with rustls (ring), nginx and HAProxy with OpenSSL 3; the client is "
    "rustls. All negotiate TLS 1.3 with the same certificate; session resumption depends on each server's ticket "
    "handling (shown as *TLS resumed*), which changes the CPU per handshake a lot.")
add("- **Work done per request.** wsgate validates each upgrade against RFC 6455 before the backend sees it; nginx "
    "and HAProxy parse the request and the response and forward the upgrade as HTTP. After the 101 all three "
    "splice bytes; only *wsgate inspected* reads frames (no peer does the same work).")
add("- **Idle memory.** Measured once per target on processes that had served nothing yet, with each process's "
    f"allocator (wsgate: {env['WSGATE_ALLOCATOR']}; nginx and HAProxy: glibc malloc under their own pools). "
    "Resident memory grows in pages, so small counts are coarse.")
add("")
bad = {w: failed(w) for w in ("echo", "handshake", "idle") if failed(w)}
if bad:
    add("**Failed runs** (left out of the medians): " + ", ".join(f"{w}: {n}" for w, n in bad.items()) + ".")
    add("")
add("<details><summary>Raw results (one JSON line per run)</summary>")
add("")
add("```")
for r in records:
    add(json.dumps(r, separators=(",", ":"), ensure_ascii=False))
add("```")
add("")
add("</details>")
open(out_path, "w").write("\n".join(lines) + "\n")
