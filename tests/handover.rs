//! A binary upgrade (SIGUSR1) with the real binary: the binary now at the
//! path wsgate started from takes over its listeners and its open tunnels;
//! a broken or refusing binary leaves the running process serving.
//!
//! Each test copies the binary into a scratch directory and starts it from
//! there, stamped with a build label (so the version says which binary
//! serves), then puts another binary at that path and sends SIGUSR1.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::hostile_peers::*;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const PLAIN_SOCKETS: usize = 1000;
const INSPECTED_SOCKETS: usize = 200;
/// How long a chatting client waits between two messages.
const PACE: Duration = Duration::from_millis(100);

fn toml(backend: SocketAddr) -> String {
    toml_with(backend, "")
}

/// With `listeners`, more listeners after `plain`.
fn toml_with(backend: SocketAddr, listeners: &str) -> String {
    format!(
        "[global]\nshutdown_timeout = \"4s\"\nlog_format = \"json\"\nmax_connections = 5000\n\
         [[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n{listeners}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"inspected\"\npath_prefix = \"/inspected\"\nupstream = \"backends\"\n\
         allowed_origins = [\"https://example.com\"]\n[route.inspect]\n\n\
         [[route]]\nname = \"plain\"\nupstream = \"backends\"\nallowed_origins = [\"https://example.com\"]\n\n\
         [[upstream]]\nname = \"backends\"\nservers = [{{ address = \"{backend}\" }}]\n"
    )
}

/// What the old process logs once the new one serves the listeners.
const SERVES: &str = "the new process serves the listeners; handing the tunnels over";

/// The running binary, started from a path the test can replace.
struct Upgradable {
    wsgate: WsgateChild,
    binary: PathBuf,
}

impl Upgradable {
    async fn start(toml: &str, label: &str) -> Upgradable {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("wsgate");
        stamped_binary(&binary, label);
        let mut wsgate = WsgateLaunch::in_dir(dir, toml, "info,wsgate::tunnel=debug", None, &binary).spawn();
        wsgate.wait_listening(&["plain"], true).await;
        Upgradable { wsgate, binary }
    }

    /// The `message` lines of the log, from any of the processes.
    fn lines(&self, message: &str) -> Vec<Value> {
        self.wsgate
            .log_lines()
            .into_iter()
            .filter(|line| line["message"] == message)
            .collect()
    }

    /// Waits for the new process of an upgrade already asked for: its pid.
    async fn upgrade_finished(&self) -> i32 {
        poll_until(TIMEOUT, "the upgrade", || !self.lines(SERVES).is_empty()).await;
        self.lines(SERVES)[0]["pid"].as_i64().expect("the new process's pid") as i32
    }

    /// Sends SIGUSR1 to the process serving now (`pid`), and waits for the
    /// new process to serve: its pid.
    async fn upgrade(&self, pid: i32) -> i32 {
        let outcome = |line: &Value| line["message"] == SERVES || is_failed_upgrade(line);
        let before = self.wsgate.log_lines().iter().filter(|line| outcome(line)).count();
        // SAFETY: kill(2) on a process this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
        let answered = tokio::time::timeout(
            Duration::from_secs(30),
            poll_until(Duration::from_secs(31), "the upgrade's outcome", || {
                self.wsgate.log_lines().iter().filter(|line| outcome(line)).count() > before
            }),
        )
        .await;
        assert!(
            answered.is_ok(),
            "no outcome of the upgrade within 30 s:\n{}",
            self.wsgate.log_tail(40)
        );
        let lines = self.wsgate.log_lines();
        let line = lines.iter().filter(|line| outcome(line)).nth(before).unwrap();
        assert!(
            line["message"].as_str().unwrap().starts_with("the new process"),
            "upgrade failed: {line}\n{}",
            self.wsgate.log_tail(40)
        );
        line["pid"].as_i64().expect("the new process's pid") as i32
    }
}

/// The line the running process logs when an upgrade fails.
fn is_failed_upgrade(line: &Value) -> bool {
    line["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("upgrade failed"))
}

/// The reason of the upgrade the running process logs as failed.
async fn failed_upgrade(wsgate: &WsgateChild) -> String {
    let failed = wsgate.wait_for_log("the failed upgrade", is_failed_upgrade).await;
    failed["message"].as_str().unwrap_or_default().to_owned()
}

/// Ends a process this test started indirectly (a binary upgrade's new
/// process is the old one's child): SIGTERM now, SIGKILL if the test fails.
struct Serving(i32);

impl Drop for Serving {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a process this test started.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

fn alive(pid: i32) -> bool {
    // A zombie (exited, not yet reaped) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.split(") ").nth(1).unwrap_or("").starts_with('Z'))
        .unwrap_or(false)
}

async fn gone(pid: i32) {
    poll_until(Duration::from_secs(20), "the old process to exit", || !alive(pid)).await;
}

/// A client sending numbered messages through an echo backend, each after
/// the echo of the last: every echo must come back once, in order.
struct Chatter {
    echoes: Arc<AtomicU64>,
    task: JoinHandle<Result<u64, String>>,
}

impl Chatter {
    fn start(mut ws: WebSocketStream<TcpStream>, stop: Arc<AtomicBool>) -> Chatter {
        let echoes = Arc::new(AtomicU64::new(0));
        let counted = echoes.clone();
        let task = tokio::spawn(async move {
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let sent = format!("message {n}");
                ws.send(Message::text(sent.clone()))
                    .await
                    .map_err(|e| format!("send {n}: {e}"))?;
                let echo = tokio::time::timeout(TIMEOUT, ws.next())
                    .await
                    .map_err(|_| format!("no echo of {n} within {TIMEOUT:?}"))?;
                match echo {
                    Some(Ok(Message::Text(text))) if *text == *sent => {}
                    other => return Err(format!("echo of {n}: {other:?}")),
                }
                n += 1;
                counted.store(n, Ordering::Relaxed);
                tokio::time::sleep(PACE).await;
            }
            ws.close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "done".into(),
            }))
            .await
            .map_err(|e| format!("close: {e}"))?;
            Ok(n)
        });
        Chatter { echoes, task }
    }

    fn echoes(&self) -> u64 {
        self.echoes.load(Ordering::Relaxed)
    }
}

async fn open(addr: SocketAddr, path: &str, count: usize) -> Vec<WebSocketStream<TcpStream>> {
    let mut sockets = Vec::with_capacity(count);
    for batch in 0..count.div_ceil(50) {
        let opened = futures_util::future::join_all(
            (batch * 50..count.min(batch * 50 + 50)).map(|_| async { ws_connect(addr, path, &[]).await.0 }),
        )
        .await;
        sockets.extend(opened);
    }
    sockets
}

/// Waits until every chatter has had `more` echoes since `from`.
async fn each_echoes(chatters: &[Chatter], from: &[u64], more: u64, what: &str) {
    poll_until(Duration::from_secs(30), what, || {
        chatters
            .iter()
            .zip(from)
            .all(|(chatter, from)| chatter.echoes() >= from + more)
    })
    .await;
}

fn counts(chatters: &[Chatter]) -> Vec<u64> {
    chatters.iter().map(Chatter::echoes).collect()
}

/// 1,000 plain and 200 inspected sockets keep chatting through an upgrade:
/// none is closed, every echo arrives once and in order, and the new
/// binary's version serves afterwards; the old process exits on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_inspected_tunnels_move_to_the_new_binary_without_a_lost_message() {
    raise_nofile_limit();
    let backend = Backend::echo().await;
    let proxy = Upgradable::start(&toml(backend.addr), "first").await;
    let (addr, old_pid) = (proxy.wsgate.addr("plain"), proxy.wsgate.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let mut chatters: Vec<Chatter> = open(addr, "/plain", PLAIN_SOCKETS)
        .await
        .into_iter()
        .map(|ws| Chatter::start(ws, stop.clone()))
        .collect();
    chatters.extend(
        open(addr, "/inspected", INSPECTED_SOCKETS)
            .await
            .into_iter()
            .map(|ws| Chatter::start(ws, stop.clone())),
    );
    each_echoes(&chatters, &vec![0; chatters.len()], 2, "every socket chatting").await;

    stamped_binary(&proxy.binary, "second");
    let new_pid = proxy.upgrade(old_pid).await;
    let _serving = Serving(new_pid);
    gone(old_pid).await;
    let moved = proxy.lines("upgraded: the new process serves");
    assert_eq!(moved.len(), 1, "{}", proxy.wsgate.log_tail(30));
    let stayed: Vec<String> = proxy
        .wsgate
        .log_lines()
        .iter()
        .filter(|l| l["level"] != "INFO" || l["message"] == "tunnel closed")
        .map(|l| l.to_string())
        .collect();
    assert_eq!(
        moved[0]["moved"].as_u64(),
        Some((PLAIN_SOCKETS + INSPECTED_SOCKETS) as u64),
        "every tunnel moved: {}\n{}",
        moved[0],
        stayed.join("\n")
    );
    // Chatting on, through the new process alone.
    let after = counts(&chatters);
    let chatting = tokio::time::timeout(
        Duration::from_secs(30),
        each_echoes(&chatters, &after, 3, "every socket chatting after the upgrade"),
    )
    .await;
    if chatting.is_err() {
        let stalled: Vec<usize> = (0..chatters.len())
            .filter(|&i| chatters[i].echoes() < after[i] + 3)
            .collect();
        let notable: Vec<String> = proxy
            .wsgate
            .log_lines()
            .iter()
            .filter(|l| {
                l["level"] != "INFO"
                    || !l["message"].as_str().unwrap_or("").starts_with("tunnel") && l["message"] != "request"
            })
            .map(|l| l.to_string())
            .collect();
        panic!(
            "stalled after the upgrade: {} of them, e.g. {:?}\n{}",
            stalled.len(),
            &stalled[..stalled.len().min(20)],
            notable.join("\n")
        );
    }
    stop.store(true, Ordering::Relaxed);
    for chatter in chatters {
        let result = within("a chatter to finish", chatter.task).await.unwrap();
        assert!(result.is_ok(), "{result:?}\n{}", proxy.wsgate.log_tail(30));
    }
    let started: Vec<Value> = proxy.lines("wsgate starting");
    let versions: Vec<&str> = started.iter().filter_map(|line| line["version"].as_str()).collect();
    assert_eq!(versions, ["0.1.0+first", "0.1.0+second"]);
    let metrics = scrape_text(proxy.wsgate.admin_addr()).await;
    assert!(
        metrics.contains("wsgate_build_info{version=\"0.1.0+second\"} 1"),
        "the admin listener is the new process's:\n{metrics}"
    );
    // SAFETY: kill(2) on the process the upgrade started.
    unsafe { libc::kill(new_pid, libc::SIGTERM) };
    gone(new_pid).await;
}

/// Two upgrades in a row: the process an upgrade started upgrades again,
/// and the tunnels move twice.
#[tokio::test]
async fn tunnels_move_again_at_the_next_upgrade() {
    let backend = Backend::echo().await;
    let proxy = Upgradable::start(&toml(backend.addr), "first").await;
    let (addr, first) = (proxy.wsgate.addr("plain"), proxy.wsgate.pid());
    let (mut plain, _) = ws_connect(addr, "/plain", &[]).await;
    let (mut inspected, _) = ws_connect(addr, "/inspected", &[]).await;
    // Whichever process serves now; ended if the test fails.
    let mut serving = Serving(first);
    for (round, label) in ["second", "third"].into_iter().enumerate() {
        stamped_binary(&proxy.binary, label);
        let next = proxy.upgrade(serving.0).await;
        let old = std::mem::replace(&mut serving.0, next);
        gone(old).await;
        for ws in [&mut plain, &mut inspected] {
            let text = format!("after upgrade {round}");
            ws.send(Message::text(text.clone())).await.unwrap();
            assert_eq!(next_message(ws).await, Message::text(text));
        }
    }
    let versions: Vec<String> = proxy
        .lines("wsgate starting")
        .iter()
        .filter_map(|line| Some(line["version"].as_str()?.to_owned()))
        .collect();
    assert_eq!(versions, ["0.1.0+first", "0.1.0+second", "0.1.0+third"]);
}

/// TLS tunnels cannot move (their session lives in the process): inspected
/// ones are told 1012 "service restart", plain ones are closed, and both
/// reconnect to the new process; plain TCP tunnels beside them move.
#[tokio::test]
async fn tls_tunnels_are_told_1012_and_reconnect() {
    let backend = Backend::echo().await;
    let certs = TestCerts::generate();
    let tls = format!(
        "[[listener]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\n{}",
        tls_entry(&certs.server_cert(), &certs.server_key())
    );
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("wsgate");
    stamped_binary(&binary, "first");
    let mut wsgate = WsgateLaunch::in_dir(dir, &toml_with(backend.addr, &tls), "info", None, &binary).spawn();
    wsgate.wait_listening(&["plain", "tls"], true).await;
    let proxy = Upgradable { wsgate, binary };
    let (addr, tls_addr, old_pid) = (proxy.wsgate.addr("plain"), proxy.wsgate.addr("tls"), proxy.wsgate.pid());
    let (mut secure_inspected, _) = wss_connect(tls_addr, "localhost", "/inspected", &certs).await;
    let (mut secure_plain, _) = wss_connect(tls_addr, "localhost", "/plain", &certs).await;
    let (mut plain, _) = ws_connect(addr, "/plain", &[]).await;

    stamped_binary(&proxy.binary, "second");
    let new_pid = proxy.upgrade(old_pid).await;
    let _serving = Serving(new_pid);
    match next_message(&mut secure_inspected).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1012);
            assert_eq!(frame.reason, "service restart");
        }
        other => panic!("expected 1012, got {other:?}"),
    }
    // The plain TLS tunnel cannot be told: it is closed by the deadline.
    let ended = within_for(
        Duration::from_secs(15),
        "the plain TLS tunnel to end",
        secure_plain.next(),
    )
    .await;
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
    gone(old_pid).await;
    let (mut again, _) = wss_connect(tls_addr, "localhost", "/inspected", &certs).await;
    assert_echo(&mut again, Message::text("back")).await;
    assert_echo(&mut plain, Message::text("moved")).await;
    let line = &proxy.lines("upgraded: the new process serves")[0];
    assert_eq!(
        (line["moved"].as_u64(), line["stayed"].as_u64()),
        (Some(1), Some(2)),
        "{line}"
    );
}

/// A binary that exits at once: the running process keeps serving with
/// every tunnel open, and says why; a good binary then upgrades it.
#[tokio::test]
async fn a_broken_binary_leaves_the_running_process_serving() {
    let backend = Backend::echo().await;
    let proxy = Upgradable::start(&toml(backend.addr), "first").await;
    let (addr, old_pid) = (proxy.wsgate.addr("plain"), proxy.wsgate.pid());
    let (mut plain, _) = ws_connect(addr, "/plain", &[]).await;
    let (mut inspected, _) = ws_connect(addr, "/inspected", &[]).await;

    broken_binary(&proxy.binary);
    proxy.wsgate.signal(libc::SIGUSR1);
    let why = failed_upgrade(&proxy.wsgate).await;
    assert!(
        why.contains("exited before it took over") && why.contains("exit status: 3"),
        "{why}"
    );
    for ws in [&mut plain, &mut inspected] {
        assert_echo(ws, Message::text("still here")).await;
    }
    let (mut fresh, _) = ws_connect(addr, "/plain", &[]).await;
    assert_echo(&mut fresh, Message::text("new")).await;

    stamped_binary(&proxy.binary, "second");
    let new_pid = proxy.upgrade(old_pid).await;
    let _serving = Serving(new_pid);
    gone(old_pid).await;
    for ws in [&mut plain, &mut inspected, &mut fresh] {
        assert_echo(ws, Message::text("moved")).await;
    }
}

/// A new binary that does not speak the running one's hand-over protocol
/// refuses it; the running process serves on.
#[tokio::test]
async fn a_binary_that_does_not_understand_the_hand_over_refuses_it() {
    let backend = Backend::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("wsgate");
    stamped_binary(&binary, "first");
    let mut launch = WsgateLaunch::in_dir(dir, &toml(backend.addr), "info", None, &binary);
    // The running process announces a layout no binary knows.
    launch.command().env("WSGATE_HANDOVER_PROTOCOL", "999");
    let mut wsgate = launch.spawn();
    wsgate.wait_listening(&["plain"], true).await;
    let (mut ws, _) = ws_connect(wsgate.addr("plain"), "/inspected", &[]).await;
    stamped_binary(&binary, "second");
    wsgate.signal(libc::SIGUSR1);
    let why = failed_upgrade(&wsgate).await;
    assert!(why.contains("refused") && why.contains("protocol 999"), "{why}");
    assert_echo(&mut ws, Message::text("still here")).await;
    wsgate.stop().await;
}

/// systemd's notification socket, played by the test: each datagram with
/// the process that sent it (`SO_PASSCRED`). A thread reads it all the
/// time, as systemd does: a queue left full (ten datagrams by default)
/// would block the sender, and the watchdog's pings fill it within a
/// second while the test waits for something else.
struct NotifySocket {
    received: std::sync::Mutex<std::sync::mpsc::Receiver<(i32, Vec<String>)>>,
}

impl NotifySocket {
    fn bind(path: &std::path::Path) -> NotifySocket {
        use std::os::fd::AsRawFd;
        let socket = std::os::unix::net::UnixDatagram::bind(path).expect("bind the notify socket");
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and an int option value.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "SO_PASSCRED");
        // Short reads, so that the reader notices the test is over.
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();

        let (sender, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || loop {
            // Nothing for a while: a sign of life instead, so that the
            // reader ends once the test is over.
            let datagram = Self::next(&socket).unwrap_or((0, Vec::new()));
            if sender.send(datagram).is_err() {
                return;
            }
        });
        NotifySocket {
            received: std::sync::Mutex::new(received),
        }
    }

    /// The next datagram's sender and lines; none within the socket's read
    /// timeout.
    fn next(socket: &std::os::unix::net::UnixDatagram) -> Option<(i32, Vec<String>)> {
        use std::os::fd::AsRawFd;
        let mut data = vec![0u8; 4096];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        let mut control = [0u8; 64];
        // SAFETY: msghdr is plain data; the fields used are set below.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = control.len() as _;
        // SAFETY: the buffers outlive the call.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut header, 0) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            assert_eq!(
                error.kind(),
                std::io::ErrorKind::WouldBlock,
                "reading the notify socket: {error}"
            );
            return None;
        }
        let mut pid = 0;
        // SAFETY: the kernel filled the control buffer; SCM_CREDENTIALS
        // carries a ucred.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&header);
            if !cmsg.is_null() && (*cmsg).cmsg_type == libc::SCM_CREDENTIALS {
                pid = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::ucred>()).pid;
            }
        }
        let lines = String::from_utf8_lossy(&data[..n as usize])
            .lines()
            .map(str::to_owned)
            .collect();
        Some((pid, lines))
    }

    /// Reads until a datagram from `pid` holds `line`; every datagram read
    /// before it (sender, lines).
    async fn expect(self: &Arc<Self>, pid: i32, line: &str) -> Vec<(i32, Vec<String>)> {
        let (socket, line) = (self.clone(), line.to_owned());
        tokio::task::spawn_blocking(move || {
            let received = socket.received.lock().unwrap();
            let deadline = std::time::Instant::now() + TIMEOUT;
            let mut before = Vec::new();
            for _ in 0..1000 {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let Ok((from, lines)) = received.recv_timeout(left) else {
                    panic!("no {line} from {pid} within {TIMEOUT:?}: {before:?}");
                };
                // The reader's sign of life, not a datagram.
                if from == 0 && lines.is_empty() {
                    continue;
                }
                if from == pid && lines.contains(&line) {
                    return before;
                }
                before.push((from, lines));
            }
            panic!("no {line} from {pid} in 1,000 notifications: {before:?}");
        })
        .await
        .unwrap()
    }
}

/// Under systemd: the old process names the new one the main process
/// (`MAINPID=`) and says nothing after that; the new one then sends
/// `READY=1` and feeds the watchdog, and `STOPPING=1` when it stops.
#[tokio::test]
async fn systemd_follows_the_main_process_and_its_watchdog_across_the_upgrade() {
    let backend = Backend::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("wsgate");
    stamped_binary(&binary, "first");
    let notify = Arc::new(NotifySocket::bind(&dir.path().join("notify.sock")));
    let notify_path = dir.path().join("notify.sock");
    let mut launch = WsgateLaunch::in_dir(dir, &toml(backend.addr), "info", Some("WATCHDOG_PID=$$"), &binary);
    launch
        .command()
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000");
    let mut wsgate = launch.spawn();
    wsgate.wait_listening(&["plain"], true).await;
    let old = wsgate.pid();
    notify.expect(old, "READY=1").await;
    notify.expect(old, "WATCHDOG=1").await;
    let proxy = Upgradable { wsgate, binary };

    stamped_binary(&proxy.binary, "second");
    let new = proxy.upgrade(old).await;
    let _serving = Serving(new);
    notify.expect(old, &format!("MAINPID={new}")).await;
    let before_ready = notify.expect(new, "READY=1").await;
    let mut after = notify.expect(new, "WATCHDOG=1").await;
    after.extend(notify.expect(new, "WATCHDOG=1").await);
    let from_old: Vec<_> = before_ready
        .iter()
        .chain(&after)
        .filter(|(pid, _)| *pid == old)
        .collect();
    assert!(from_old.is_empty(), "the old process spoke after MAINPID: {from_old:?}");
    gone(old).await;
    // SAFETY: kill(2) on the process the upgrade started.
    unsafe { libc::kill(new, libc::SIGTERM) };
    notify.expect(new, "STOPPING=1").await;
    gone(new).await;
}

/// A 4 MiB message in flight across the upgrade, on an inspected tunnel:
/// its first fragment and part of its second are read by the old process
/// (most of them on a splice thread, which gives the tunnel back to its
/// pumps to move it), the rest by the new one, and the echo comes back
/// whole.
#[tokio::test]
async fn a_message_in_flight_across_the_upgrade_arrives_whole() {
    message_in_flight_across_the_upgrade("/inspected").await;
}

/// The same on a plain tunnel, which its first 3 MiB made busy enough to
/// be spliced by a splice thread: the thread gives it back to move it.
#[tokio::test]
async fn a_plain_tunnel_on_a_splice_thread_moves_with_its_message_in_flight() {
    message_in_flight_across_the_upgrade("/plain").await;
}

async fn message_in_flight_across_the_upgrade(path: &str) {
    const HALF: usize = 2 << 20;
    let backend = Backend::echo().await;
    let proxy = Upgradable::start(&toml(backend.addr), "first").await;
    let (addr, old) = (proxy.wsgate.addr("plain"), proxy.wsgate.pid());
    let mut client = tcp_connect(addr).await;
    let host = format!("localhost:{}", addr.port());
    client
        .write_all(valid_upgrade(&host, path, &[]).as_bytes())
        .await
        .unwrap();
    let head = within("101", read_head_bytes(&mut client)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let message: Vec<u8> = (0..2 * HALF).map(|i| (i % 251) as u8).collect();
    let mut wire = masked_frame(0x2, false, &message[..HALF]);
    wire.extend(masked_frame(0x0, true, &message[HALF..]));
    // Three MiB now, in many writes; the rest once the tunnel has moved.
    let cut = 3 << 20;
    for chunk in wire[..cut].chunks(32 << 10) {
        client.write_all(chunk).await.unwrap();
        tokio::task::yield_now().await;
    }
    // Both kinds of tunnel are busy enough to be on a splice thread.
    let on_threads = 1.0;
    // Polled (a move is between two reads of the tunnel), at most 5 s.
    let mut spliced = None;
    for _ in 0..50 {
        let metrics = scrape(proxy.wsgate.admin_addr()).await;
        spliced = metrics.value("wsgate_splice_thread_tunnels", &[]);
        if spliced == Some(on_threads) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        spliced,
        Some(on_threads),
        "tunnels on splice threads before the upgrade"
    );
    stamped_binary(&proxy.binary, "second");
    let new = proxy.upgrade(old).await;
    let _serving = Serving(new);
    let upgraded = proxy
        .wsgate
        .wait_for_log("the tunnel moved", |line| {
            line["message"] == "upgraded: the new process serves"
        })
        .await;
    assert_eq!(upgraded["moved"].as_u64(), Some(1), "{upgraded}");
    for chunk in wire[cut..].chunks(32 << 10) {
        client.write_all(chunk).await.unwrap();
    }
    let echo = within_for(Duration::from_secs(20), "the 4 MiB echo", read_wire(&mut client))
        .await
        .unwrap();
    assert_eq!(echo.b0 & 0x0f, 0x2, "a binary message");
    assert!(echo.payload == message, "the echo is the message, byte for byte");
}

/// An upgrade asked for right behind a reload, whichever the running
/// process answers first: the new process serves the file as it is now,
/// and the tunnels moved.
#[tokio::test]
async fn an_upgrade_right_behind_a_reload() {
    let backend = Backend::echo().await;
    let proxy = Upgradable::start(&toml(backend.addr), "first").await;
    let (addr, old) = (proxy.wsgate.addr("plain"), proxy.wsgate.pid());
    let (mut plain, _) = ws_connect(addr, "/plain", &[]).await;
    let (mut inspected, _) = ws_connect(addr, "/inspected", &[]).await;
    // The reload adds a route that refuses every origin but one.
    let config = proxy.wsgate.config_path();
    let added = "[[route]]\nname = \"strict\"\npath_prefix = \"/strict\"\nupstream = \"backends\"\n\
                 allowed_origins = [\"https://strict.example\"]\nmissing_origin = \"reject\"\n\n";
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replacen("[[route]]", &format!("{added}[[route]]"), 1)).unwrap();
    stamped_binary(&proxy.binary, "second");
    proxy.wsgate.signal(libc::SIGHUP);
    let new = proxy.upgrade(old).await;
    let _serving = Serving(new);
    gone(old).await;
    for ws in [&mut plain, &mut inspected] {
        assert_echo(ws, Message::text("moved")).await;
    }
    let (mut fresh, _) = ws_connect(addr, "/plain", &[]).await;
    fresh.send(Message::text("new")).await.unwrap();
    assert_eq!(
        next_message(&mut fresh).await,
        Message::text("new"),
        "the other routes as before"
    );
    let mut refused = tcp_connect(addr).await;
    refused
        .write_all(valid_upgrade(&format!("localhost:{}", addr.port()), "/strict", &[]).as_bytes())
        .await
        .unwrap();
    let head = within("the strict route's answer", read_head_bytes(&mut refused)).await;
    assert!(
        head.starts_with("HTTP/1.1 403"),
        "the new process serves the new file: {head}"
    );
    // Whichever came first, the upgrade went through and nothing failed.
    let failed: Vec<Value> = proxy
        .wsgate
        .log_lines()
        .into_iter()
        .filter(|line| line["level"] == "ERROR")
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
}

/// Handshakes arriving at 100 per second while the binary is upgraded:
/// none is refused, every one is answered with 101 and echoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_arriving_during_the_upgrade_are_all_answered() {
    const HANDSHAKES: usize = 300;
    let backend = Backend::echo().await;
    let proxy = Upgradable::start(&toml(backend.addr), "first").await;
    let (addr, old) = (proxy.wsgate.addr("plain"), proxy.wsgate.pid());
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    let mut clients = Vec::with_capacity(HANDSHAKES);
    let mut upgraded = None;
    for n in 0..HANDSHAKES {
        ticks.tick().await;
        let path = if n % 2 == 0 { "/plain" } else { "/inspected" };
        clients.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("{n}: connect: {e}"))?;
            let url = format!("ws://localhost:{}{path}", addr.port());
            let (mut ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(url, stream))
                .await
                .map_err(|_| format!("{n}: no answer"))?
                .map_err(|e| format!("{n}: handshake: {e}"))?;
            let text = format!("handshake {n}");
            ws.send(Message::text(text.clone()))
                .await
                .map_err(|e| format!("{n}: {e}"))?;
            match tokio::time::timeout(TIMEOUT, ws.next()).await {
                Ok(Some(Ok(Message::Text(echo)))) if *echo == *text => {}
                other => return Err(format!("{n}: echo: {other:?}")),
            }
            ws.close(None).await.map_err(|e| format!("{n}: close: {e}"))
        }));
        if n == HANDSHAKES / 3 {
            stamped_binary(&proxy.binary, "second");
            // SAFETY: kill(2) on the process this test started.
            assert_eq!(unsafe { libc::kill(old, libc::SIGUSR1) }, 0);
        }
        if upgraded.is_none() {
            upgraded = proxy.lines(SERVES).first().and_then(|line| line["pid"].as_i64());
        }
    }
    let new = match upgraded {
        Some(pid) => pid as i32,
        None => proxy.upgrade_finished().await,
    };
    let _serving = Serving(new);
    let mut failures = Vec::new();
    for client in clients {
        if let Err(why) = within("a client", client).await.unwrap() {
            failures.push(why);
        }
    }
    assert!(failures.is_empty(), "{failures:?}\n{}", proxy.wsgate.log_tail(30));
    assert!(
        proxy.lines(SERVES).len() == 1,
        "the upgrade went through during the handshakes"
    );
}

/// With `[cluster]`, tunnels that moved keep their places in the fleet's
/// caps, whether the upgraded instance has a name of its own or the default
/// one: another instance still refuses a client at its cap after the
/// upgrade, and admits it again as soon as one of the moved tunnels ends.
#[tokio::test]
async fn moved_tunnels_keep_their_places_in_the_fleets_caps() {
    use support::redis_server::RedisServer;
    let redis = RedisServer::start();
    let backend = Backend::echo().await;
    let toml = |instance: &str| {
        format!(
            "[global]\nlog_format = \"json\"\nshutdown_timeout = \"2s\"\n\n\
             [cluster]\nredis = \"{}\"\nlease = \"1s\"\n{instance}\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n\
             [[route]]\nname = \"shared\"\nupstream = \"backends\"\nallowed_origins = [\"https://example.com\"]\n\
             limits = {{ max_websockets_per_client = 3 }}\n\n\
             [[upstream]]\nname = \"backends\"\nservers = [{{ address = \"{}\" }}]\n",
            redis.url(),
            backend.addr
        )
    };
    let shares = |line: &Value| {
        line["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("shared limits available"))
    };
    let other = WsgateChild::start(&toml("instance = \"other\""), &["plain"], "info", None).await;
    other.wait_for_log("the other instance sharing", shares).await;
    let status = || upgrade_status(other.addr("plain"), "https://example.com");
    for instance in ["instance = \"upgraded\"", ""] {
        redis.flush();
        let proxy = Upgradable::start(&toml(instance), "first").await;
        proxy.wsgate.wait_for_log("sharing", shares).await;
        let (addr, old) = (proxy.wsgate.addr("plain"), proxy.wsgate.pid());
        let mut tunnels = Vec::new();
        for _ in 0..3 {
            tunnels.push(ws_connect(addr, "/", &[("Origin", "https://example.com")]).await.0);
        }
        // Within a heartbeat: on a loaded machine a lease (1 s here) may
        // lapse before it is renewed, and the next heartbeat writes the
        // counts whole again.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut last = status().await;
        while last != 429 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            last = status().await;
        }
        assert_eq!(last, 429, "{instance}: the cap counts across instances");

        stamped_binary(&proxy.binary, "second");
        let new = proxy.upgrade(old).await;
        let _serving = Serving(new);
        gone(old).await;
        // The new process writes its counts whole: the client's three.
        let name = match instance {
            "" => format!("{}-{new}", hostname()),
            _ => "upgraded".to_owned(),
        };
        let mut connection = redis.connection();
        poll_until(TIMEOUT, "the new process's counts in the store", || {
            redis::cmd("HGET")
                .arg(format!("wsgate:caps:shared:{name}"))
                .arg("c:127.0.0.1")
                .query::<Option<u64>>(&mut connection)
                .ok()
                .flatten()
                == Some(3)
        })
        .await;
        assert_eq!(status().await, 429, "{instance}: the moved tunnels still count");
        for ws in &mut tunnels {
            assert_echo(ws, Message::text("moved")).await;
        }
        close(tunnels.pop().unwrap()).await;
        let mut admitted = false;
        for _ in 0..50 {
            if status().await == 101 {
                admitted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(admitted, "{instance}: a moved tunnel's end gives its place back");
        // SAFETY: kill(2) on the process the upgrade started.
        unsafe { libc::kill(new, libc::SIGTERM) };
        gone(new).await;
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    assert_eq!(unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) }, 0);
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Tunnels of a route with a byte rate per client move too (they are
/// plain TCP underneath their pacing), plain and inspected alike, and are
/// paced by the new process as the route says.
#[tokio::test]
async fn paced_tunnels_move_too() {
    let backend = Backend::echo().await;
    let toml = format!(
        "[global]\nshutdown_timeout = \"4s\"\nlog_format = \"json\"\n\
         [[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"inspected\"\npath_prefix = \"/inspected\"\nupstream = \"backends\"\n\
         allowed_origins = [\"https://example.com\"]\nlimits = {{ client_bytes_per_second = \"64KiB\" }}\n[route.inspect]\n\n\
         [[route]]\nname = \"plain\"\nupstream = \"backends\"\nallowed_origins = [\"https://example.com\"]\n\
         limits = {{ client_bytes_per_second = \"64KiB\" }}\n\n\
         [[upstream]]\nname = \"backends\"\nservers = [{{ address = \"{}\" }}]\n",
        backend.addr
    );
    let proxy = Upgradable::start(&toml, "first").await;
    let (addr, old) = (proxy.wsgate.addr("plain"), proxy.wsgate.pid());
    let (mut plain, _) = ws_connect(addr, "/plain", &[]).await;
    let (mut inspected, _) = ws_connect(addr, "/inspected", &[]).await;
    stamped_binary(&proxy.binary, "second");
    let new = proxy.upgrade(old).await;
    let _serving = Serving(new);
    gone(old).await;
    let upgraded = &proxy.lines("upgraded: the new process serves")[0];
    assert_eq!(upgraded["moved"].as_u64(), Some(2), "{upgraded}");
    for ws in [&mut plain, &mut inspected] {
        assert_echo(ws, Message::text("moved")).await;
    }
}

/// A new binary that does not accept the configuration as it now is on
/// disk refuses the hand-over; the running process serves on, with its
/// tunnels, and says why.
#[tokio::test]
async fn a_configuration_the_new_binary_refuses_leaves_the_running_process_serving() {
    let backend = Backend::echo().await;
    let proxy = Upgradable::start(&toml(backend.addr), "first").await;
    let addr = proxy.wsgate.addr("plain");
    let (mut inspected, _) = ws_connect(addr, "/inspected", &[]).await;
    let config = proxy.wsgate.config_path();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[[upstream]]", "[[upstream]]\nconnect_timout = \"1s\""),
    )
    .unwrap();
    stamped_binary(&proxy.binary, "second");
    proxy.wsgate.signal(libc::SIGUSR1);
    let why = failed_upgrade(&proxy.wsgate).await;
    assert!(why.contains("refused") && why.contains("problem(s) found"), "{why}");
    assert_echo(&mut inspected, Message::text("still here")).await;
    let (mut fresh, _) = ws_connect(addr, "/plain", &[]).await;
    assert_echo(&mut fresh, Message::text("new")).await;
}
