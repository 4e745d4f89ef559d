//! The peers of the soak test (`tests/soak.rs`): the real `wsgate` binary
//! as a child process (its memory and descriptors read from `/proc`, its
//! `/metrics` read over HTTP), echo backends that can be killed and started
//! again on the same port, WebSocket clients sending numbered messages and
//! checking every echo, and one-shot handshakes that are meant to be
//! refused. Every wait is bounded; everything stays on loopback.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::support::hostile_peers::WsgateChild;
pub use crate::support::hostile_peers::{proc_fd_count, proc_status_kib, raise_nofile_limit};
use crate::support::{bind_again, connect_from, valid_upgrade, within, within_for, RawConn, TIMEOUT};

/// The response header naming the backend that answered a handshake
/// (wsgate passes the backend's 101 headers through).
pub const BACKEND_HEADER: &str = "x-soak-backend";

// ---------------------------------------------------------------- descriptors

/// A loopback address of its own for each client: rate limits and logs
/// count clients by address, and 127.0.0.0/8 is all loopback.
pub fn loopback(block: u8, n: usize) -> Ipv4Addr {
    assert!(n < 250 * 256, "too many addresses in block {block}: {n}");
    Ipv4Addr::new(127, block, (n / 250) as u8, (n % 250) as u8 + 1)
}

// ---------------------------------------------------------------- the binary

/// The real `wsgate` binary ([`WsgateChild`]) with what the soak reads of
/// it: its memory, descriptors and metrics. Killed when dropped.
pub struct WsgateProcess {
    child: WsgateChild,
    pub listener: SocketAddr,
    pub admin: SocketAddr,
}

impl WsgateProcess {
    /// Writes `toml` (which must log JSON and have an `[admin]` listener)
    /// and starts `wsgate --config` on it; returns once listener `plain`
    /// and the admin listener have logged their addresses.
    pub async fn start(toml: &str) -> WsgateProcess {
        // The default access log, unless the soak is run with WSGATE_LOG set.
        let filter = std::env::var("WSGATE_LOG").unwrap_or_else(|_| "info".to_owned());
        let child = WsgateChild::start(toml, &["plain"], &filter, None).await;
        let (listener, admin) = (child.addr("plain"), child.admin_addr());
        WsgateProcess { child, listener, admin }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.pid()
    }

    pub fn config_path(&self) -> PathBuf {
        self.child.config_path()
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        self.child.log_tail(n)
    }

    pub fn signal(&self, signal: libc::c_int) {
        self.child.signal(signal);
    }

    /// The child's resident memory (VmRSS), in bytes.
    pub fn rss(&self) -> u64 {
        self.child.rss()
    }

    /// A `kB` field of /proc/PID/status (`VmRSS`, `RssAnon`, `RssFile`), in KiB.
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        proc_status_kib(self.pid(), field)
    }

    /// How many descriptors the child holds open.
    pub fn fd_count(&self) -> usize {
        self.child.open_fd_count()
    }

    /// The kind of each open descriptor (`socket`, `anon_inode:[eventpoll]`,
    /// a path), counted: what differs when a count does not come back.
    pub fn fd_kinds(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for entry in std::fs::read_dir(format!("/proc/{}/fd", self.pid())).expect("/proc/PID/fd") {
            let Ok(entry) = entry else { continue };
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            let kind = match target.split_once(":[") {
                Some((kind, _)) if kind != "anon_inode" => kind.to_owned(),
                _ => target.into_owned(),
            };
            *kinds.entry(kind).or_default() += 1;
        }
        kinds
    }

    /// Resident memory per mapping (/proc/PID/smaps): start address, size,
    /// name (`[heap]`, `[stack]`, a file, or empty for anonymous memory)
    /// and RSS, both in KiB. What grew when the memory does not come back.
    pub fn mappings(&self) -> BTreeMap<u64, (u64, String, u64)> {
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", self.pid())).unwrap_or_default();
        let mut mappings = BTreeMap::new();
        let mut current: Option<(u64, u64, String)> = None;
        for line in smaps.lines() {
            let mut fields = line.split_whitespace();
            let first = fields.next().unwrap_or("");
            if let Some((start, end)) = first.split_once('-') {
                if let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) {
                    let name = fields.nth(4).unwrap_or("").to_owned();
                    current = Some((start, (end - start) / 1024, name));
                    continue;
                }
            }
            if first == "Rss:" {
                if let (Some((start, size, name)), Some(kib)) = (&current, fields.next().and_then(|v| v.parse().ok())) {
                    mappings.insert(*start, (*size, name.clone(), kib));
                }
            }
        }
        mappings
    }

    /// The child's soft open-file limit, from /proc/PID/limits.
    pub fn nofile_limit(&self) -> u64 {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).expect("/proc/PID/limits");
        limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .expect("Max open files")
    }

    /// SIGTERM, then the exit, which must be a success.
    pub async fn stop(self) {
        self.child.stop().await;
    }
}

// ---------------------------------------------------------------- backends

/// What an echo backend has seen, across its restarts.
#[derive(Default)]
pub struct BackendCounters {
    /// WebSocket handshakes answered.
    pub accepted: AtomicUsize,
    /// WebSocket connections open now.
    pub live: AtomicUsize,
    /// Messages echoed.
    pub echoed: AtomicU64,
}

/// Counts a connection as live while it is held, however its task ends
/// (an aborted task drops it too).
struct Live(Arc<BackendCounters>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A WebSocket echo server on 127.0.0.1 that names itself in its 101
/// answer ([`BACKEND_HEADER`]). `kill` drops its listener and every
/// connection at once, without a close frame, as a crash does (every other
/// connection with `SO_LINGER` 0, so that the kernel resets it instead of
/// ending it with a FIN); `restart` listens on the same port again.
pub struct EchoBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub counters: Arc<BackendCounters>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl EchoBackend {
    /// Binds a port below the ephemeral range, so that no outgoing
    /// connection (wsgate's to the other backends, the clients') can take
    /// the port while the backend is down and keep it from coming back.
    pub async fn start(name: &str) -> EchoBackend {
        let (low, _) = ephemeral_ports();
        let first = low.saturating_sub(12_000).max(1024);
        let span = low.saturating_sub(first).max(1);
        let mut port = first + (rand::random::<u16>() % span);
        let mut listener = None;
        for _ in 0..span.min(2000) {
            match TcpListener::bind(("127.0.0.1", port)).await {
                Ok(bound) => {
                    listener = Some(bound);
                    break;
                }
                Err(_) => port = first + (port + 1 - first) % span,
            }
        }
        let listener = listener.unwrap_or_else(|| panic!("no free port in {first}..{low} for backend {name}"));
        let addr = listener.local_addr().unwrap();
        let backend = EchoBackend {
            name: name.to_owned(),
            addr,
            counters: Arc::new(BackendCounters::default()),
            server: Mutex::new(None),
        };
        backend.serve(listener);
        backend
    }

    fn serve(&self, listener: TcpListener) {
        let task = tokio::spawn(serve(listener, self.name.clone(), self.counters.clone()));
        let old = self.server.lock().unwrap().replace(task);
        assert!(old.is_none(), "backend {} served twice", self.name);
    }

    /// Kills the backend: its listener and all its connections are dropped
    /// (the tasks holding them are aborted); resolves once they are.
    pub async fn kill(&self) {
        let task = self.server.lock().unwrap().take().expect("a running backend");
        task.abort();
        let _ = within("the killed backend's task ending", task).await;
        // Its connection tasks were aborted with its JoinSet: each drops
        // its stream (and its `Live`) when the runtime gets to it.
        within("the killed backend's connections closing", async {
            while self.counters.live.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// Listens on the same address again.
    pub async fn restart(&self) {
        let listener = bind_again(self.addr).await;
        self.serve(listener);
    }

    pub fn live(&self) -> usize {
        self.counters.live.load(Ordering::SeqCst)
    }

    pub fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    pub fn echoed(&self) -> u64 {
        self.counters.echoed.load(Ordering::Relaxed)
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        if let Some(task) = self.server.lock().unwrap().take() {
            task.abort();
        }
    }
}

/// The kernel's ephemeral port range (`ip_local_port_range`).
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut ports = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((ports.next()??, ports.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// Names the backend in its 101 answer.
struct Named(String);

impl Callback for Named {
    fn on_request(self, _: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
        let value = self.0.parse().expect("a header value");
        response.headers_mut().insert(BACKEND_HEADER, value);
        Ok(response)
    }
}

/// Accepts until aborted; the connections live in a `JoinSet` owned here,
/// so aborting this task aborts them all.
async fn serve(listener: TcpListener, name: String, counters: Arc<BackendCounters>) {
    let mut connections = JoinSet::new();
    let mut accepted: u64 = 0;
    loop {
        tokio::select! {
            result = listener.accept() => match result {
                Ok((stream, _)) => {
                    accepted += 1;
                    if accepted % 2 == 0 {
                        // A reset instead of a FIN when it is dropped.
                        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    }
                    connections.spawn(echo_connection(stream, name.clone(), counters.clone()));
                }
                // Out of descriptors or similar: the test's clients will
                // see it; back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn echo_connection(stream: TcpStream, name: String, counters: Arc<BackendCounters>) {
    let _ = stream.set_nodelay(true);
    let accepted = tokio::time::timeout(TIMEOUT, tokio_tungstenite::accept_hdr_async(stream, Named(name))).await;
    let Ok(Ok(mut ws)) = accepted else {
        return;
    };
    counters.accepted.fetch_add(1, Ordering::SeqCst);
    counters.live.fetch_add(1, Ordering::SeqCst);
    let _live = Live(counters.clone());
    while let Some(Ok(message)) = ws.next().await {
        if message.is_text() || message.is_binary() {
            if ws.send(message).await.is_err() {
                break;
            }
            counters.echoed.fetch_add(1, Ordering::Relaxed);
        }
        // A close frame is answered by tungstenite on the next poll; pings too.
    }
}

// ---------------------------------------------------------------- clients

/// Totals across every client, for progress lines.
#[derive(Default)]
pub struct ClientTotals {
    pub sent: AtomicU64,
    pub echoed: AtomicU64,
    pub open: AtomicUsize,
    pub reconnects: AtomicUsize,
    pub errors: AtomicUsize,
}

/// What every client shares.
pub struct ClientSetup {
    pub proxy: SocketAddr,
    pub origin: String,
    /// Between two messages of one socket.
    pub interval: Duration,
    /// Cancelled at the end of the soak: each client finishes cleanly.
    pub stop: CancellationToken,
    /// Bounds the handshakes in flight at once.
    pub connecting: tokio::sync::Semaphore,
    pub totals: ClientTotals,
    /// Sessions allowed per client: the first and its reconnects.
    pub max_sessions: usize,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The soak ended: every message echoed, closed with 1000 and answered.
    Finished,
    /// The server sent a close frame first.
    ClosedByServer { code: u16, reason: String },
    /// Anything else: a broken stream, a stall, a failed handshake.
    Failed(String),
}

/// One WebSocket of a client, from its handshake to its end.
#[derive(Debug, Clone)]
pub struct Session {
    pub generation: usize,
    /// The backend that answered its handshake.
    pub backend: String,
    pub opened: Instant,
    pub ended: Instant,
    pub sent: u64,
    pub echoed: u64,
    /// Echoes that were not the next one expected (at most a few kept).
    pub misordered: Vec<String>,
    pub misordered_count: u64,
    pub end: SessionEnd,
}

/// Everything one client did.
#[derive(Debug, Clone)]
pub struct ClientReport {
    pub id: usize,
    pub sessions: Vec<Session>,
    /// Handshakes that failed (each ends the client).
    pub connect_error: Option<String>,
}

/// The text of message `seq` of session `generation` of client `id`:
/// numbered, with a length that varies (7- and 16-bit frame lengths).
pub fn payload(id: usize, generation: usize, seq: u64) -> String {
    let pad = ((seq as usize).wrapping_mul(37) + id) % 300;
    let mut text = format!("{id}:{generation}:{seq}:");
    text.extend(std::iter::repeat_n('x', pad));
    text
}

/// The sequence number in an echo of [`payload`], if it is one of `id`'s.
fn seq_of(text: &str, id: usize, generation: usize) -> Option<u64> {
    let mut parts = text.splitn(4, ':');
    let their_id: usize = parts.next()?.parse().ok()?;
    let their_generation: usize = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    (their_id == id && their_generation == generation).then_some(seq)
}

/// Opens a WebSocket to the proxy from `source`; returns it and the backend
/// that answered.
pub async fn open_socket(
    proxy: SocketAddr,
    source: Ipv4Addr,
    origin: &str,
) -> Result<(WebSocketStream<TcpStream>, String), String> {
    let stream = connect_from(source, proxy)
        .await
        .map_err(|e| format!("connect from {source}: {e}"))?;
    let mut request = format!("ws://localhost:{}/soak", proxy.port())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("origin", origin.parse().expect("an origin header value"));
    let (ws, response) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(request, stream))
        .await
        .map_err(|_| format!("handshake from {source}: no answer within {TIMEOUT:?}"))?
        .map_err(|e| format!("handshake from {source}: {e}"))?;
    let backend = response
        .headers()
        .get(BACKEND_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("the 101 has no {BACKEND_HEADER} header: {:?}", response.headers()))?
        .to_owned();
    Ok((ws, backend))
}

/// One soak client: a WebSocket from its own loopback address, numbered
/// messages every `interval`, each echo checked; when the server closes the
/// socket it connects again (fresh numbering), up to `max_sessions`; at
/// `stop` it waits for its last echoes and closes with 1000.
pub async fn run_client(id: usize, setup: Arc<ClientSetup>) -> ClientReport {
    let source = loopback(1, id);
    let mut report = ClientReport {
        id,
        sessions: Vec::new(),
        connect_error: None,
    };
    for generation in 0..setup.max_sessions {
        if setup.stop.is_cancelled() {
            break;
        }
        let opened = {
            let _permit = setup.connecting.acquire().await.expect("the semaphore is never closed");
            open_socket(setup.proxy, source, &setup.origin).await
        };
        let (ws, backend) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                setup.totals.errors.fetch_add(1, Ordering::Relaxed);
                report.connect_error = Some(format!("session {generation}: {e}"));
                break;
            }
        };
        if generation > 0 {
            setup.totals.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        setup.totals.open.fetch_add(1, Ordering::Relaxed);
        let session = run_session(id, generation, ws, backend, &setup).await;
        setup.totals.open.fetch_sub(1, Ordering::Relaxed);
        let again = matches!(session.end, SessionEnd::ClosedByServer { .. });
        if matches!(session.end, SessionEnd::Failed(_)) || session.misordered_count > 0 {
            setup.totals.errors.fetch_add(1, Ordering::Relaxed);
        }
        report.sessions.push(session);
        if !again {
            break;
        }
    }
    report
}

/// No echo for this long while some are owed: the tunnel is stuck.
const STALL: Duration = Duration::from_secs(20);

async fn run_session(
    id: usize,
    generation: usize,
    mut ws: WebSocketStream<TcpStream>,
    backend: String,
    setup: &ClientSetup,
) -> Session {
    let mut session = Session {
        generation,
        backend,
        opened: Instant::now(),
        ended: Instant::now(),
        sent: 0,
        echoed: 0,
        misordered: Vec::new(),
        misordered_count: 0,
        end: SessionEnd::Failed("not ended".into()),
    };
    // Sockets start at random points of the interval, so the messages of
    // 2,000 of them are spread evenly rather than sent in bursts.
    let phase = setup.interval.mul_f64(rand::random::<f64>());
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + phase, setup.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_echo = Instant::now();
    let mut send_failed: Option<Instant> = None;
    let end = loop {
        tokio::select! {
            () = setup.stop.cancelled() => break None,
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    session.check_echo(id, text.as_str());
                    setup.totals.echoed.fetch_add(1, Ordering::Relaxed);
                    last_echo = Instant::now();
                }
                Some(Ok(Message::Close(frame))) => break Some(closed_by_server(&mut ws, frame).await),
                Some(Ok(Message::Binary(_))) => session.misorder("a binary message".into()),
                Some(Ok(_)) => {} // pings (answered by tungstenite), pongs
                Some(Err(e)) => break Some(SessionEnd::Failed(format!("read: {e}"))),
                None => break Some(SessionEnd::Failed("the stream ended without a close frame".into())),
            },
            _ = ticks.tick() => {
                if let Some(at) = send_failed {
                    // Sending failed: the close frame that explains it should be here already.
                    if at.elapsed() > Duration::from_secs(5) {
                        break Some(SessionEnd::Failed("a send failed and no close frame followed".into()));
                    }
                    continue;
                }
                if session.sent > session.echoed && last_echo.elapsed() > STALL {
                    break Some(SessionEnd::Failed(format!(
                        "no echo for {STALL:?}: sent {}, echoed {}", session.sent, session.echoed
                    )));
                }
                let text = payload(id, generation, session.sent);
                match tokio::time::timeout(TIMEOUT, ws.send(Message::text(text))).await {
                    Ok(Ok(())) => {
                        session.sent += 1;
                        setup.totals.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    // The message may or may not have gone: the next read tells.
                    Ok(Err(_)) => send_failed = Some(Instant::now()),
                    Err(_) => break Some(SessionEnd::Failed(format!("a send took over {TIMEOUT:?}"))),
                }
            }
        }
    };
    session.end = match end {
        Some(end) => end,
        None => finish(id, &mut session, &mut ws, setup).await,
    };
    session.ended = Instant::now();
    session
}

/// The soak is over: the echoes still owed, then a close handshake with 1000.
async fn finish(
    id: usize,
    session: &mut Session,
    ws: &mut WebSocketStream<TcpStream>,
    setup: &ClientSetup,
) -> SessionEnd {
    let owed = tokio::time::timeout(Duration::from_secs(30), async {
        while session.echoed < session.sent {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    session.check_echo(id, text.as_str());
                    setup.totals.echoed.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(Message::Close(frame))) => return Err(closed_by_server(ws, frame).await),
                Some(Ok(Message::Binary(_))) => session.misorder("a binary message".into()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(SessionEnd::Failed(format!("read at the end: {e}"))),
                None => return Err(SessionEnd::Failed("the stream ended before the last echoes".into())),
            }
        }
        Ok(())
    })
    .await;
    match owed {
        Ok(Ok(())) => {}
        Ok(Err(end)) => return end,
        Err(_) => {
            return SessionEnd::Failed(format!(
                "last echoes not back within 30s: sent {}, echoed {}",
                session.sent, session.echoed
            ))
        }
    }
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "soak over".into(),
    };
    match tokio::time::timeout(TIMEOUT, ws.close(Some(close))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return SessionEnd::Failed(format!("sending the close frame: {e}")),
        Err(_) => return SessionEnd::Failed("sending the close frame timed out".into()),
    }
    let answer = tokio::time::timeout(TIMEOUT, async {
        let mut answer = None;
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(frame)) => answer = Some(frame.map_or(1005, |f| u16::from(f.code))),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        answer
    })
    .await;
    match answer {
        Ok(Some(1000)) => SessionEnd::Finished,
        Ok(other) => SessionEnd::Failed(format!("our close was answered with {other:?}")),
        Err(_) => SessionEnd::Failed("no end of stream after the close handshake".into()),
    }
}

/// A close frame from the server: answered (tungstenite queued the answer;
/// reading on sends it) and read to the end of the stream.
async fn closed_by_server(ws: &mut WebSocketStream<TcpStream>, frame: Option<CloseFrame>) -> SessionEnd {
    let (code, reason) = frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
    let _ = tokio::time::timeout(TIMEOUT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    SessionEnd::ClosedByServer { code, reason }
}

impl Session {
    fn check_echo(&mut self, id: usize, text: &str) {
        let expected = payload(id, self.generation, self.echoed);
        if self.echoed < self.sent && text == expected {
            self.echoed += 1;
            return;
        }
        let what = match seq_of(text, id, self.generation) {
            Some(seq) if seq < self.echoed => format!("seq {seq} again (expected {})", self.echoed),
            Some(seq) if seq >= self.sent => format!("seq {seq}, never sent (sent {})", self.sent),
            Some(seq) if seq > self.echoed => format!("seq {seq} before {}", self.echoed),
            Some(seq) => format!("seq {seq} with a wrong body ({} bytes)", text.len()),
            None => format!("not ours: {:?}", &text[..text.len().min(40)]),
        };
        self.misorder(what);
    }

    fn misorder(&mut self, what: String) {
        self.misordered_count += 1;
        if self.misordered.len() < 3 {
            self.misordered.push(what);
        }
    }
}

// ---------------------------------------------------------------- refusals

/// What one handshake meant to be refused got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub retry_after: bool,
}

/// One WebSocket upgrade from `source` with `origin`, read up to the
/// response head; the connection is dropped after it (a 101 included).
pub async fn handshake_status(proxy: SocketAddr, source: Ipv4Addr, origin: &str) -> Refusal {
    let stream = within("a refused handshake's connect", connect_from(source, proxy))
        .await
        .unwrap_or_else(|e| panic!("connect from {source}: {e}"));
    let mut conn = RawConn::new(stream);
    let host = format!("localhost:{}", proxy.port());
    let request = valid_upgrade(&host, "/soak", &[("Origin", origin)]);
    conn.send(request.as_bytes()).await;
    let head = within_for(TIMEOUT, "a refused handshake's answer", conn.read_head()).await;
    Refusal {
        status: head.status,
        retry_after: head.header("retry-after").is_some(),
    }
}
