//! The real `wsgate` binary under the service manager's protocols, played by
//! the test: readiness and stopping on `NOTIFY_SOCKET`, the watchdog, and
//! socket activation (`LISTEN_FDS`) with a socket matched by name or by
//! address. Every wait is bounded; a child still running when a test fails
//! is killed.

mod support;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use support::{assert_echo, close, route_and_upstream, upgrade_status, within, ws_connect, Backend, TIMEOUT};
use tokio::net::UnixDatagram;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

use support::hostile_peers::{WsgateChild, WsgateLaunch};

/// A config with listener `plain` at `listen` and an upstream at `backend`.
fn config(listen: SocketAddr, backend: SocketAddr) -> String {
    format!(
        "[global]\nshutdown_timeout = \"2s\"\n\n[[listener]]\nname = \"plain\"\nlisten = \"{listen}\"\n\n{}",
        route_and_upstream(backend, "")
    )
}

/// `wsgate` on `toml` (see [`WsgateLaunch::new`] for `shell_prefix`), not
/// yet started, with a datagram socket standing in for systemd's
/// notification socket in `NOTIFY_SOCKET`.
fn launch(toml: &str, shell_prefix: Option<&str>) -> (WsgateLaunch, Notifications) {
    let mut launch = WsgateLaunch::new(toml, "info", shell_prefix);
    let path = launch.path("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    launch.command().env("NOTIFY_SOCKET", &path);
    (launch, Notifications { socket })
}

/// What wsgate sent on `NOTIFY_SOCKET`, one datagram at a time.
struct Notifications {
    socket: UnixDatagram,
}

impl Notifications {
    /// The lines of the next datagram.
    async fn next(&self, what: &str) -> Vec<String> {
        let mut buf = vec![0u8; 4096];
        let n = within(what, self.socket.recv(&mut buf)).await.expect("recv");
        String::from_utf8_lossy(&buf[..n]).lines().map(str::to_owned).collect()
    }

    /// Reads datagrams until one holds `line`; returns everything read before it.
    async fn expect(&self, line: &str, log: impl Fn() -> String) -> Vec<String> {
        let mut before = Vec::new();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let mut buf = vec![0u8; 4096];
            let received = tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await;
            let Ok(Ok(n)) = received else {
                panic!(
                    "no {line} within {TIMEOUT:?} (received {before:?}; {received:?})\n--- wsgate log:\n{}",
                    log()
                );
            };
            let lines: Vec<String> = String::from_utf8_lossy(&buf[..n]).lines().map(str::to_owned).collect();
            if lines.iter().any(|l| l == line) {
                return before;
            }
            before.extend(lines);
        }
    }
}

async fn within_or_log<F: std::future::Future>(limit: Duration, what: &str, wsgate: &WsgateChild, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}: {what}\n--- wsgate log:\n{}", wsgate.log()),
    }
}

/// A loopback address nothing listens on (bound, then released) for wsgate to bind.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// Hands `listener` to the child as descriptor 3, as systemd passes the
/// first socket (without `FD_CLOEXEC`, so it survives the exec).
fn pass_as_fd3(command: &mut Command, listener: &std::net::TcpListener) {
    let fd = listener.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (dup2, fcntl), on descriptors of the child.
    unsafe {
        command.pre_exec(move || {
            if fd != 3 && libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears FD_CLOEXEC on the copy; when fd is 3 already, clear it here.
            if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The descriptor flags of `fd` in process `pid` (octal in /proc/PID/fdinfo).
fn fd_flags(pid: libc::pid_t, fd: i32) -> u32 {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).expect("fdinfo");
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .expect("flags line")
        .trim();
    u32::from_str_radix(flags, 8).expect("octal flags")
}

async fn echo_through(addr: SocketAddr) {
    let (mut ws, response) = ws_connect(addr, "/echo", &[]).await;
    assert_eq!(response.status(), 101);
    assert_echo(&mut ws, Message::text("through the passed socket")).await;
    close(ws).await;
}

#[tokio::test]
async fn ready_once_bound_and_stopping_on_sigterm() {
    let backend = Backend::echo().await;
    let listen = free_addr();
    let (launch, notifications) = launch(&config(listen, backend.addr), None);
    let wsgate = launch.spawn();

    notifications.expect("READY=1", || wsgate.log()).await;
    // Ready means bound: the listener takes a connection and serves it.
    let response = within_or_log(
        TIMEOUT,
        "a request right after READY=1",
        &wsgate,
        support::raw_exchange(
            listen,
            "GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(response.body_text(), "backend GET /ready");

    wsgate.signal(libc::SIGTERM);
    let before = notifications.expect("STOPPING=1", || wsgate.log()).await;
    assert!(
        !before.iter().any(|l| l.starts_with("WATCHDOG")),
        "no watchdog was asked for: {before:?}"
    );
    wsgate.exits_successfully().await;
}

#[tokio::test]
async fn watchdog_is_fed_every_half_interval() {
    let backend = Backend::echo().await;
    let toml = config("127.0.0.1:0".parse().unwrap(), backend.addr);
    let (mut launch, notifications) = launch(&toml, Some("WATCHDOG_PID=$$"));
    launch.command().env("WATCHDOG_USEC", "200000");
    let wsgate = launch.spawn();

    notifications.expect("READY=1", || wsgate.log()).await;
    let started = std::time::Instant::now();
    let mut pings = 0;
    while pings < 2 {
        let lines = notifications.next("WATCHDOG=1 from wsgate").await;
        pings += lines.iter().filter(|l| *l == "WATCHDOG=1").count();
    }
    // The first ping comes at once, the second half an interval (100 ms) later.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "two pings took {:?}",
        started.elapsed()
    );

    wsgate.signal(libc::SIGTERM);
    notifications.expect("STOPPING=1", || wsgate.log()).await;
    wsgate.exits_successfully().await;
}

#[tokio::test]
async fn watchdog_for_another_process_is_left_alone() {
    let backend = Backend::echo().await;
    let toml = config("127.0.0.1:0".parse().unwrap(), backend.addr);
    let (mut launch, notifications) = launch(&toml, None);
    // pid 1 is never the child.
    launch.command().env("WATCHDOG_USEC", "100000").env("WATCHDOG_PID", "1");
    let wsgate = launch.spawn();

    notifications.expect("READY=1", || wsgate.log()).await;
    // Five would-be intervals pass; then SIGTERM, and nothing but STOPPING=1 arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    wsgate.signal(libc::SIGTERM);
    let before = notifications.expect("STOPPING=1", || wsgate.log()).await;
    assert!(before.is_empty(), "unexpected notifications: {before:?}");
    wsgate.exits_successfully().await;
}

#[tokio::test]
async fn a_passed_socket_named_after_the_listener_is_used_whatever_its_address() {
    let backend = Backend::echo().await;
    let passed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the passed socket");
    let addr = passed.local_addr().unwrap();
    // Bound instead, this address would fail or serve nothing the test reaches.
    let toml = config("127.0.0.1:1".parse().unwrap(), backend.addr);
    let (mut launch, notifications) = launch(&toml, Some("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=plain"));
    pass_as_fd3(launch.command(), &passed);
    let wsgate = launch.spawn();
    // Only wsgate holds the socket now: if it did not use it, connecting fails.
    drop(passed);

    notifications.expect("READY=1", || wsgate.log()).await;
    let flags = fd_flags(wsgate.pid(), 3);
    assert_ne!(
        flags & libc::O_CLOEXEC as u32,
        0,
        "fd 3 must be close-on-exec: {flags:o}"
    );
    within_or_log(TIMEOUT, "echo through the passed socket", &wsgate, echo_through(addr)).await;
    assert!(wsgate.log().contains("using the socket passed by the service manager"));

    wsgate.signal(libc::SIGTERM);
    notifications.expect("STOPPING=1", || wsgate.log()).await;
    wsgate.exits_successfully().await;
}

#[tokio::test]
async fn an_unnamed_passed_socket_is_used_by_the_listener_at_its_address() {
    let backend = Backend::echo().await;
    let passed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the passed socket");
    let addr = passed.local_addr().unwrap();
    // Binding this address again would fail: it is in use by the passed socket.
    let (mut launch, notifications) = launch(&config(addr, backend.addr), Some("LISTEN_PID=$$ LISTEN_FDS=1"));
    pass_as_fd3(launch.command(), &passed);
    let wsgate = launch.spawn();
    drop(passed);

    notifications.expect("READY=1", || wsgate.log()).await;
    within_or_log(TIMEOUT, "echo through the passed socket", &wsgate, echo_through(addr)).await;

    wsgate.signal(libc::SIGTERM);
    notifications.expect("STOPPING=1", || wsgate.log()).await;
    wsgate.exits_successfully().await;
}

/// A config whose one route admits the WebSocket origins `origins`.
fn origin_config(listen: SocketAddr, backend: SocketAddr, origins: &str) -> String {
    format!(
        "[global]\nshutdown_timeout = \"2s\"\n\n[[listener]]\nname = \"plain\"\nlisten = \"{listen}\"\n\n\
         [[route]]\nname = \"all\"\nupstream = \"backends\"\nallowed_origins = [{origins}]\n\n\
         [[upstream]]\nname = \"backends\"\nservers = [{{ address = \"{backend}\" }}]\n"
    )
}

/// Sends SIGHUP and waits for RELOADING=1 (with MONOTONIC_USEC in the same
/// message, as systemd requires) and then READY=1.
async fn hangup(wsgate: &WsgateChild, notifications: &Notifications) {
    wsgate.signal(libc::SIGHUP);
    let mut reloading = Vec::new();
    for _ in 0..10 {
        reloading = notifications.next("RELOADING=1").await;
        if reloading.iter().any(|l| l == "RELOADING=1") {
            break;
        }
    }
    assert!(reloading.iter().any(|l| l == "RELOADING=1"), "{reloading:?}");
    assert!(
        reloading.iter().any(|l| l
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|v| v > 0))),
        "RELOADING=1 without MONOTONIC_USEC: {reloading:?}"
    );
    notifications.expect("READY=1", || wsgate.log()).await;
}

#[tokio::test]
async fn sighup_reloads_between_reloading_and_ready_and_a_broken_file_changes_nothing() {
    let backend = Backend::echo().await;
    let listen = free_addr();
    let (launch, notifications) = launch(&origin_config(listen, backend.addr, "\"https://a.example\""), None);
    let wsgate = launch.spawn();
    let config = wsgate.config_path();
    notifications.expect("READY=1", || wsgate.log()).await;
    assert_eq!(upgrade_status(listen, "https://b.example").await, 403);

    // The new origin, and a log filter, which only a restart can change.
    let v2 = origin_config(listen, backend.addr, "\"https://a.example\", \"https://b.example\"")
        .replace("[global]\n", "[global]\nlog_filter = \"debug\"\n");
    std::fs::write(&config, v2).unwrap();
    hangup(&wsgate, &notifications).await;
    assert_eq!(
        upgrade_status(listen, "https://b.example").await,
        101,
        "the reload took effect"
    );
    let log = wsgate.log();
    assert!(
        log.contains("global.log_filter") && log.contains("restart wsgate to apply it"),
        "a setting a reload cannot apply is named\n--- log:\n{log}"
    );

    std::fs::write(&config, "[global]\nshutdown_timeout = 3\n").unwrap();
    hangup(&wsgate, &notifications).await;
    let log = wsgate.log();
    assert!(log.contains("reload failed"), "--- log:\n{log}");
    assert!(
        log.contains("wsgate.toml:2:") && log.contains("shutdown_timeout"),
        "the problem names file, line and key\n--- log:\n{log}"
    );
    assert_eq!(
        upgrade_status(listen, "https://b.example").await,
        101,
        "still the last good config"
    );

    wsgate.signal(libc::SIGTERM);
    wsgate.exits_successfully().await;
}

#[tokio::test]
async fn sigterm_tells_every_inspected_client_1001_before_its_connection_ends_and_exits_in_time() {
    use futures_util::StreamExt;
    let backend = Backend::echo().await;
    let listen = free_addr();
    let toml = origin_config(listen, backend.addr, "\"https://a.example\"")
        .replace("allowed_origins", "inspect = { enabled = true }\nallowed_origins");
    let (launch, notifications) = launch(&toml, None);
    let wsgate = launch.spawn();
    notifications.expect("READY=1", || wsgate.log()).await;

    let mut clients = Vec::new();
    for i in 0..20 {
        let (mut ws, _) = ws_connect(listen, "/", &[("Origin", "https://a.example")]).await;
        assert_echo(&mut ws, Message::text(format!("client {i}"))).await;
        clients.push(ws);
    }
    let signalled = std::time::Instant::now();
    wsgate.signal(libc::SIGTERM);
    for (i, mut ws) in clients.into_iter().enumerate() {
        // The first thing the client hears must be the close frame.
        let close = match within("the client's stream", ws.next()).await {
            Some(Ok(Message::Close(frame))) => frame,
            Some(Ok(other)) => panic!("client {i}: {other:?}"),
            _ => None,
        };
        let frame = close.unwrap_or_else(|| panic!("client {i}: the connection ended without a close frame"));
        assert_eq!((u16::from(frame.code), frame.reason.as_str()), (1001, "going away"));
    }
    wsgate.exits_successfully().await;
    // shutdown_timeout is 2s; exit comes well before it once every tunnel closed.
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "exit after {:?}",
        signalled.elapsed()
    );
}

/// A plain tunnel ends only when its peers end it: the shutdown says what
/// it waits for, and a second signal stops the process at once.
#[tokio::test]
async fn a_shutdown_says_what_it_waits_for_and_a_second_sigint_stops_at_once() {
    let backend = Backend::echo().await;
    let toml = format!(
        "[global]\nshutdown_timeout = \"60s\"\nlog_format = \"json\"\n\n\
         [[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n{}",
        route_and_upstream(backend.addr, "")
    );
    let mut wsgate = WsgateChild::start(&toml, &["plain"], "info", None).await;
    let (mut ws, _) = ws_connect(wsgate.addr("plain"), "/", &[]).await;
    assert_echo(&mut ws, Message::text("before the signal")).await;

    wsgate.signal(libc::SIGINT);
    let waiting = wsgate
        .wait_for_log("saying what the shutdown waits for", |line| {
            line["message"].as_str().is_some_and(|m| m.contains("waiting up to 1m"))
        })
        .await;
    assert_eq!(
        (waiting["connections"].as_u64(), waiting["tunnels"].as_u64()),
        (Some(1), Some(1)),
        "{waiting}"
    );
    assert_eq!(waiting["timeout_s"].as_f64(), Some(60.0), "{waiting}");

    let signalled = std::time::Instant::now();
    wsgate.signal(libc::SIGINT);
    let status = wsgate.exits().await;
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "exit {:?} after the second SIGINT",
        signalled.elapsed()
    );
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "{}", wsgate.log_tail(20));
    assert!(
        wsgate.log().contains("second SIGINT: stopping now"),
        "{}",
        wsgate.log_tail(20)
    );
    drop(ws);
}
