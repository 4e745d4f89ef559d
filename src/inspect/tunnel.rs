//! A tunnel that reads the frames as they pass (`[route.inspect]`).
//!
//! Two pumps, one per direction. Each reads its source, follows the frame
//! boundaries with a [`FrameReader`], and writes the same bytes to its
//! destination, batched per read: nothing is re-framed or buffered beyond
//! one read. A pump is the only writer to its destination, so the frames
//! wsgate sends itself (pings, close frames) go out there only between
//! frames; a frame for the other side is handed to the other pump as an
//! [`Order`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::frame::{self, Direction, Event, FrameReader, OpCode, ReaderConfig, Violation};
use crate::config::Inspect;

/// One read's worth of bytes per direction, allocated once per tunnel.
const BUFFER_SIZE: usize = 16 * 1024;
/// After one direction ended, how long the other gets to deliver its close.
const END_GRACE: Duration = Duration::from_secs(1);
/// wsgate's pings carry this prefix and a counter, so their pongs are known.
const PING_PREFIX: &[u8; 4] = b"wsg\0";

/// A side of the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl Side {
    fn index(self) -> usize {
        self as usize
    }

    fn other(self) -> Side {
        match self {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
        }
    }
}

/// How an inspected tunnel is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub inspect: Inspect,
    /// `permessage-deflate` was agreed in the handshake: RSV1 is legal.
    pub deflate: bool,
}

/// What a pump is asked to send to its destination.
#[derive(Debug, Clone, Copy)]
enum Order {
    /// Send a close frame at the next frame boundary, then end.
    CloseAndEnd { code: u16, reason: &'static str },
    /// Send a close frame at the next frame boundary and wait for the answer.
    Close { code: u16, reason: &'static str },
}

/// What both pumps read and write.
struct Shared {
    settings: Settings,
    started: Instant,
    state: Mutex<State>,
    /// Cancelled when the tunnel must end at once.
    end: CancellationToken,
}

struct State {
    /// When each side last sent a frame (any frame proves it is alive).
    last_frame: [Instant; 2],
    /// When a data frame last went either way (for `idle_timeout`).
    last_data: Instant,
    /// The ping wsgate sent to each side and not yet seen answered.
    ping: [Option<(u32, Instant)>; 2],
    next_ping: u32,
    /// When each side sent its close frame (a peer's, not wsgate's).
    closed: [Option<Instant>; 2],
    /// When the first close frame went, a peer's or wsgate's: the close
    /// timeout runs from here.
    close_started: Option<Instant>,
    /// The first close frame: who sent it, its code, its reason's length.
    first_close: Option<(Side, Option<u16>, usize)>,
    bytes: [u64; 2],
    /// Why wsgate ended the tunnel itself, if it did.
    ended_by: Option<String>,
    last_rtt: Option<Duration>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Plain bookkeeping: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ended_by(&self, why: String) {
        let mut state = self.state();
        if state.ended_by.is_none() {
            state.ended_by = Some(why);
        }
    }
}

/// Runs an inspected tunnel until both sides are done, then logs how it ended.
pub async fn run<C, B>(client: C, backend: B, settings: Settings, drain: CancellationToken)
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    B: AsyncRead + AsyncWrite + Unpin + Send,
{
    let now = Instant::now();
    let shared = Arc::new(Shared {
        settings,
        started: now,
        state: Mutex::new(State {
            last_frame: [now; 2],
            last_data: now,
            ping: [None; 2],
            next_ping: 0,
            closed: [None; 2],
            close_started: None,
            first_close: None,
            bytes: [0; 2],
            ended_by: None,
            last_rtt: None,
        }),
        end: CancellationToken::new(),
    });
    let (client_read, client_write) = tokio::io::split(client);
    let (backend_read, backend_write) = tokio::io::split(backend);
    let (to_backend, backend_inbox) = mpsc::channel(4);
    let (to_client, client_inbox) = mpsc::channel(4);
    let upstream = Pump::new(
        Side::Client,
        client_read,
        backend_write,
        backend_inbox,
        to_client.clone(),
        &shared,
    );
    let downstream = Pump::new(
        Side::Backend,
        backend_read,
        client_write,
        client_inbox,
        to_backend.clone(),
        &shared,
    );

    let upstream = upstream.run(drain.clone());
    let downstream = downstream.run(drain);
    tokio::pin!(upstream, downstream);
    tokio::select! {
        () = &mut upstream => {
            let _ = tokio::time::timeout(END_GRACE, &mut downstream).await;
        }
        () = &mut downstream => {
            let _ = tokio::time::timeout(END_GRACE, &mut upstream).await;
        }
    }
    log_end(&shared);
}

fn log_end(shared: &Shared) {
    let state = shared.state();
    let (closed_first, code, reason_len) = match state.first_close {
        Some((side, code, reason_len)) => (side.as_str(), code, reason_len),
        None => ("none", None, 0),
    };
    info!(
        from_client = state.bytes[Side::Client.index()],
        from_backend = state.bytes[Side::Backend.index()],
        duration_ms = shared.started.elapsed().as_millis() as u64,
        closed_first,
        close_code = code,
        close_reason_len = reason_len,
        ended_by = state.ended_by.as_deref().unwrap_or("peers"),
        last_ping_rtt_ms = state.last_rtt.map(|rtt| rtt.as_secs_f64() * 1000.0),
        "tunnel closed"
    );
}

/// One direction: frames from `from` to the other side.
struct Pump<'s, R, W> {
    from: Side,
    src: R,
    dst: W,
    reader: FrameReader,
    inbox: mpsc::Receiver<Order>,
    /// The other pump's inbox: it writes to `from`.
    to_source: mpsc::Sender<Order>,
    shared: &'s Arc<Shared>,
    /// A pong that may answer wsgate's ping, held until its payload is known.
    held: Vec<u8>,
    holding: bool,
    /// Scratch space for the frames wsgate writes.
    out: Vec<u8>,
    /// A frame of wsgate's own waiting for the next frame boundary.
    pending: Option<Order>,
}

/// Why a pump stopped.
enum Stop {
    /// Carry on.
    No,
    Yes,
}

impl<'s, R, W> Pump<'s, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    fn new(
        from: Side,
        src: R,
        dst: W,
        inbox: mpsc::Receiver<Order>,
        to_source: mpsc::Sender<Order>,
        shared: &'s Arc<Shared>,
    ) -> Self {
        let inspect = &shared.settings.inspect;
        let reader = FrameReader::new(ReaderConfig {
            direction: match from {
                Side::Client => Direction::ClientToServer,
                Side::Backend => Direction::ServerToClient,
            },
            enforce_masking: inspect.enforce_masking,
            allow_rsv1: shared.settings.deflate,
            max_frame_size: Some(inspect.max_frame_size),
            max_message_size: Some(inspect.max_message_size),
        });
        Pump {
            from,
            src,
            dst,
            reader,
            inbox,
            to_source,
            shared,
            held: Vec::with_capacity(2 + 4 + 125),
            holding: false,
            out: Vec::with_capacity(14 + 125),
            pending: None,
        }
    }

    /// The side this pump writes to.
    fn to(&self) -> Side {
        self.from.other()
    }

    async fn run(mut self, drain: CancellationToken) {
        let mut buffer = vec![0u8; BUFFER_SIZE];
        let mut ticks = tokio::time::interval(tick_period(&self.shared.settings.inspect));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut draining = false;
        loop {
            let stop = tokio::select! {
                () = self.shared.end.cancelled() => Stop::Yes,
                read = self.src.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => self.source_ended().await,
                    Ok(n) => self.forward(&buffer[..n]).await,
                },
                Some(order) = self.inbox.recv(), if self.pending.is_none() => {
                    self.pending = Some(order);
                    self.obey_pending().await
                }
                () = std::future::ready(()), if self.pending.is_some() && self.can_inject() => self.obey_pending().await,
                () = drain.cancelled(), if !draining => {
                    draining = true;
                    // Shutdown: tell this side to reconnect, then wait for its
                    // close answer (or the close timeout) as usual.
                    self.close_at_boundary(1001, "going away").await
                }
                _ = ticks.tick() => self.timers().await,
            };
            if matches!(stop, Stop::Yes) {
                break;
            }
        }
        let _ = self.dst.shutdown().await;
    }

    /// Forwards one read, following frames; wsgate's pending frames go out
    /// at the first frame boundary inside it.
    async fn forward(&mut self, chunk: &[u8]) -> Stop {
        self.shared.state().bytes[self.from.index()] += chunk.len() as u64;
        let mut pos = 0;
        let mut flushed = 0;
        // Where the frame being read began in this chunk, if it did.
        let mut frame_start = Some(0).filter(|_| self.reader.at_frame_boundary());
        // Until the reader has nothing more to say: `None` means the whole
        // chunk was consumed and no event is owed (a frame's end can fall due
        // with zero bytes left, and must be seen before the next read).
        loop {
            if pos < chunk.len() && self.reader.at_frame_boundary() {
                frame_start = Some(pos);
                if chunk[pos] & 0x0f == OpCode::Pong.as_u8() && self.expecting_pong() {
                    if self.write(&chunk[flushed..pos]).await.is_err() {
                        return Stop::Yes;
                    }
                    flushed = pos;
                    self.holding = true;
                    self.held.clear();
                }
            }
            let (consumed, event) = match self.reader.advance(&chunk[pos..]) {
                Ok(step) => step,
                Err(violation) => {
                    // Bytes before the offending frame still go; the frame does not.
                    let clean = frame_start.is_some();
                    let upto = frame_start.unwrap_or(pos).max(flushed);
                    if !self.holding && self.write(&chunk[flushed..upto]).await.is_err() {
                        return Stop::Yes;
                    }
                    return self.violation(violation, clean).await;
                }
            };
            let end = pos + consumed;
            if self.holding {
                self.held.extend_from_slice(&chunk[pos..end]);
                flushed = end;
            }
            pos = end;
            match event {
                Some(Event::FrameStart(header)) => self.saw_frame(header.opcode),
                Some(Event::Control { opcode, payload }) => {
                    if opcode == OpCode::Close {
                        self.saw_close(payload.close_code(), payload.close_reason().len());
                    }
                    if self.holding {
                        self.holding = false;
                        if !self.is_our_pong(payload.as_bytes()) && self.write_held().await.is_err() {
                            return Stop::Yes;
                        }
                    }
                }
                Some(Event::FrameEnd { .. }) => {
                    frame_start = None;
                    if self.both_closed() {
                        let _ = self.write(&chunk[flushed..pos]).await;
                        self.shared.end.cancel();
                        return Stop::Yes;
                    }
                    if self.pending.is_none() {
                        self.pending = self.inbox.try_recv().ok();
                    }
                    if self.pending.is_some() && !self.holding {
                        if self.write(&chunk[flushed..pos]).await.is_err() {
                            return Stop::Yes;
                        }
                        flushed = pos;
                        if matches!(self.obey_pending().await, Stop::Yes) {
                            return Stop::Yes;
                        }
                    }
                }
                None => break,
            }
        }
        if !self.holding && self.write(&chunk[flushed..]).await.is_err() {
            return Stop::Yes;
        }
        Stop::No
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.dst.write_all(bytes).await
    }

    async fn write_held(&mut self) -> std::io::Result<()> {
        let held = std::mem::take(&mut self.held);
        let result = self.dst.write_all(&held).await;
        self.held = held;
        self.held.clear();
        result
    }

    fn saw_frame(&self, opcode: OpCode) {
        let now = Instant::now();
        let mut state = self.shared.state();
        state.last_frame[self.from.index()] = now;
        if matches!(opcode, OpCode::Text | OpCode::Binary | OpCode::Continuation) {
            state.last_data = now;
        }
    }

    fn saw_close(&self, code: Option<u16>, reason_len: usize) {
        let mut state = self.shared.state();
        let now = Instant::now();
        state.closed[self.from.index()].get_or_insert(now);
        state.close_started.get_or_insert(now);
        state.first_close.get_or_insert((self.from, code, reason_len));
    }

    fn both_closed(&self) -> bool {
        let state = self.shared.state();
        state.closed.iter().all(Option::is_some)
    }

    /// Whether wsgate pinged the side this pump reads from and awaits the pong.
    fn expecting_pong(&self) -> bool {
        self.shared.state().ping[self.from.index()].is_some()
    }

    /// A pong answering wsgate's ping is consumed here, not forwarded.
    fn is_our_pong(&self, payload: &[u8]) -> bool {
        let mut state = self.shared.state();
        let Some((id, sent)) = state.ping[self.from.index()] else {
            return false;
        };
        let ours = payload.len() == 8 && payload[..4] == PING_PREFIX[..] && payload[4..] == id.to_be_bytes();
        if ours {
            state.ping[self.from.index()] = None;
            state.last_rtt = Some(sent.elapsed());
        }
        ours
    }

    /// The source broke the protocol: each side gets a close frame of
    /// wsgate's own (RFC 6455 §7.4.1), then the tunnel ends.
    async fn violation(&mut self, violation: Violation, dst_clean: bool) -> Stop {
        debug!(side = self.from.as_str(), %violation, "protocol violation");
        self.shared
            .ended_by(format!("{} violation: {violation}", self.from.as_str()));
        let offender = violation.close_code();
        let _ = self.to_source.try_send(Order::CloseAndEnd {
            code: offender,
            reason: "protocol violation",
        });
        if dst_clean {
            // The innocent side: 1002 if the client broke the protocol (the
            // backend learns why), 1011 if the backend did (the client is
            // not at fault).
            let (code, reason) = match (self.from, offender) {
                (_, 1009) => (1009, "peer sent a message too big"),
                (Side::Client, _) => (1002, "client protocol violation"),
                (Side::Backend, _) => (1011, "backend protocol violation"),
            };
            let _ = self.send_close(code, reason).await;
        }
        Stop::Yes
    }

    /// The source closed its connection (or it failed). Without a close
    /// frame first, the other side is told why instead of seeing a bare TCP
    /// close: 1011 to a client whose backend vanished, 1001 to a backend
    /// whose client did.
    async fn source_ended(&mut self) -> Stop {
        let closed = self.shared.state().closed[self.from.index()].is_some();
        if !closed && self.can_inject() {
            let (code, reason) = match self.from {
                Side::Backend => (1011, "backend connection lost"),
                Side::Client => (1001, "client went away"),
            };
            self.shared.ended_by(format!("{} connection lost", self.from.as_str()));
            let _ = self.send_close(code, reason).await;
        }
        Stop::Yes
    }

    /// Between frames, and not in the middle of a held pong.
    fn can_inject(&self) -> bool {
        self.reader.at_frame_boundary() && !self.holding
    }

    /// Carries out the pending order if the stream is between frames.
    async fn obey_pending(&mut self) -> Stop {
        if !self.can_inject() {
            return Stop::No;
        }
        match self.pending.take() {
            Some(Order::CloseAndEnd { code, reason }) => {
                let _ = self.send_close(code, reason).await;
                Stop::Yes
            }
            Some(Order::Close { code, reason }) => match self.send_close(code, reason).await {
                Ok(()) => Stop::No,
                Err(_) => Stop::Yes,
            },
            None => Stop::No,
        }
    }

    /// Sends a close frame at the next frame boundary and goes on reading:
    /// the peer's close answer ends the tunnel (or the close timeout does).
    async fn close_at_boundary(&mut self, code: u16, reason: &'static str) -> Stop {
        if self.pending.is_none() {
            self.pending = Some(Order::Close { code, reason });
        }
        self.obey_pending().await
    }

    /// A close frame from wsgate to this pump's destination, masked toward
    /// the backend (a client must mask, RFC 6455 §5.3).
    async fn send_close(&mut self, code: u16, reason: &str) -> std::io::Result<()> {
        self.shared.state().close_started.get_or_insert_with(Instant::now);
        let (payload, len) = frame::close_payload(code, reason);
        self.send_control(OpCode::Close, &payload[..len]).await
    }

    async fn send_control(&mut self, opcode: OpCode, payload: &[u8]) -> std::io::Result<()> {
        let mask = (self.to() == Side::Backend).then(rand::random::<[u8; 4]>);
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        frame::encode_control(opcode, payload, mask, &mut out);
        let result = self.dst.write_all(&out).await;
        self.out = out;
        result
    }

    /// Keepalive toward this pump's destination, idle and close timeouts.
    async fn timers(&mut self) -> Stop {
        let inspect = self.shared.settings.inspect.clone();
        let to = self.to();
        let now = Instant::now();
        let (silent_for, pinged, last_data, first_close) = {
            let state = self.shared.state();
            (
                now.duration_since(state.last_frame[to.index()]),
                state.ping[to.index()],
                state.last_data,
                state.close_started,
            )
        };
        if let Some(closed_at) = first_close {
            if now.duration_since(closed_at) >= inspect.close_timeout {
                self.shared.ended_by("close timeout".into());
                self.shared.end.cancel();
                return Stop::Yes;
            }
            return Stop::No;
        }
        if let Some(idle) = inspect.idle_timeout {
            if now.duration_since(last_data) >= idle {
                self.shared.ended_by("idle timeout".into());
                let _ = self.to_source.try_send(Order::CloseAndEnd {
                    code: 1001,
                    reason: "idle timeout",
                });
                return self.close_at_boundary(1001, "idle timeout").await;
            }
        }
        let keepalive = to == Side::Client || inspect.ping_backend;
        if !keepalive {
            return Stop::No;
        }
        if silent_for >= inspect.ping_interval + inspect.pong_timeout {
            // Nothing at all since well before the ping: the peer is gone
            // (a dead NAT mapping, a pulled cable). Its side is closed
            // outright; the other side is told with 1001.
            debug!(
                side = to.as_str(),
                silent_ms = silent_for.as_millis() as u64,
                "peer stopped answering"
            );
            self.shared.ended_by(format!("{} not answering pings", to.as_str()));
            let _ = self.to_source.try_send(Order::CloseAndEnd {
                code: 1001,
                reason: "peer not responding",
            });
            return Stop::Yes;
        }
        if silent_for >= inspect.ping_interval && pinged.is_none() && self.can_inject() {
            let id = {
                let mut state = self.shared.state();
                state.next_ping = state.next_ping.wrapping_add(1);
                state.ping[to.index()] = Some((state.next_ping, now));
                state.next_ping
            };
            let mut payload = [0u8; 8];
            payload[..4].copy_from_slice(PING_PREFIX);
            payload[4..].copy_from_slice(&id.to_be_bytes());
            if self.send_control(OpCode::Ping, &payload).await.is_err() {
                return Stop::Yes;
            }
        }
        Stop::No
    }
}

/// Timers are checked a few times per their shortest period.
fn tick_period(inspect: &Inspect) -> Duration {
    let shortest = [
        Some(inspect.ping_interval),
        Some(inspect.pong_timeout),
        Some(inspect.close_timeout),
        inspect.idle_timeout,
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(Duration::from_secs(1));
    (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}
