//! What the two pumps of an inspected tunnel share: which side is which,
//! why the tunnel ended, and the counters and clocks both read and write
//! (on the data path only relaxed atomics, once per read; a mutex only for
//! what happens a few times per tunnel: pings, close frames, how it ended,
//! and for the orders one pump gives the other, looked for as a pump waits).
//! Below both the pumps and the tunnel that runs them, so neither imports
//! the other for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::mailbox::Mailbox;
use crate::config::Inspect;
use crate::telemetry::metrics::{BACKEND_TO_CLIENT, CLIENT_TO_BACKEND};
use crate::telemetry::{FirstClose, TunnelMetrics};
use crate::tunnel::clock::coarse_monotonic_now;
use crate::tunnel::drain::DrainClose;
use crate::tunnel::identity::{tunnel_event, Identity};
use crate::tunnel::splice_thread::follow::Counts;
use crate::tunnel::splice_thread::wanted::{threads_wanted, BUSY_AFTER};
use crate::ws::frame::Violation;

/// A side of the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl Side {
    pub(super) fn index(self) -> usize {
        self as usize
    }

    /// The side at `index` (0 the client), as a splice thread counts them.
    pub(super) fn of_index(index: usize) -> Side {
        match index {
            0 => Side::Client,
            _ => Side::Backend,
        }
    }

    pub(super) fn other(self) -> Side {
        match self {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
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

/// Why wsgate ended a tunnel itself, for the log line at its end.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ending {
    Violation(Side, Violation),
    /// The client sent past `max_messages_per_second`.
    MessageRate,
    Lost(Side),
    /// The side's connection timed out: TCP keepalive or the user timeout.
    Unreachable(Side),
    Unresponsive(Side),
    IdleTimeout,
    CloseTimeout,
    Drained(DrainClose),
}

impl Ending {
    fn as_str(self) -> &'static str {
        match self {
            Ending::Violation(Side::Client, _) => "client_violation",
            Ending::Violation(Side::Backend, _) => "backend_violation",
            Ending::MessageRate => "client_message_rate",
            Ending::Lost(Side::Client) => "client_lost",
            Ending::Lost(Side::Backend) => "backend_lost",
            Ending::Unreachable(Side::Client) => "client_unreachable",
            Ending::Unreachable(Side::Backend) => "backend_unreachable",
            Ending::Unresponsive(Side::Client) => "client_unresponsive",
            Ending::Unresponsive(Side::Backend) => "backend_unresponsive",
            Ending::IdleTimeout => "idle_timeout",
            Ending::CloseTimeout => "close_timeout",
            Ending::Drained(DrainClose::REBALANCE) => "rebalanced",
            Ending::Drained(_) => "drained",
        }
    }
}

/// What both pumps read and write.
pub(super) struct Shared {
    pub(super) settings: Settings,
    pub(super) started: Instant,
    /// When it opened on the coarse clock, in milliseconds ([`Shared::now_ms`]).
    pub(super) opened_ms: u64,
    /// Per side: when its last bytes arrived, in milliseconds since it
    /// opened (anything a peer sends proves it is alive).
    pub(super) heard: [AtomicU64; 2],
    /// When a data frame last passed either way, for `idle_timeout`.
    pub(super) data: AtomicU64,
    pub(super) bytes: [AtomicU64; 2],
    pub(super) frames: [AtomicU64; 2],
    pub(super) state: Mutex<State>,
    /// Recorded into at the tunnel's end (and per answered ping).
    pub(super) metrics: TunnelMetrics,
    /// For the `tunnel closed` line.
    identity: Identity,
    /// This tunnel's place in a spread drain, from 0 to 1.
    pub(super) drain_place: f32,
    /// Cancelled when the tunnel must end at once.
    pub(super) end: CancellationToken,
    /// The two directions meeting to move, by [`Purpose`] ([`super::pump`]'s `park`).
    /// One channel for both: each costs an inspected tunnel half a kilobyte.
    pub(super) rendezvous: watch::Sender<[Rendezvous; 2]>,
    /// The bytes (both ways) past which the tunnel goes to a splice
    /// thread; `u64::MAX` when it does not (not a plain TCP tunnel, going
    /// already, or it could not).
    thread_after: AtomicU64,
    /// Per side: the orders for the pump that writes to it, from the other.
    orders: [Mailbox; 2],
}

/// Why both directions stop together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// To move to another process ([`crate::tunnel::relocate`]).
    Move = 0,
    /// To go to a splice thread ([`crate::tunnel::splice_thread`]).
    Thread = 1,
}

/// Where the two directions stand in a move.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Rendezvous {
    /// Directions stopped and waiting for the other.
    pub(super) parked: u8,
    /// The tunnel stays: one direction could not stop, or did not come.
    pub(super) cancelled: bool,
}

/// What changes a few times per tunnel.
#[derive(Default)]
pub(super) struct State {
    /// The ping wsgate sent to each side and not yet seen answered.
    pub(super) ping: [Option<(u32, Instant)>; 2],
    pub(super) next_ping: u32,
    /// When each side sent its close frame (a peer's, not wsgate's).
    pub(super) closed: [Option<Instant>; 2],
    /// When the first close frame went, a peer's or wsgate's: the close
    /// timeout runs from here.
    pub(super) close_started: Option<Instant>,
    /// Per side: its first close frame's code and reason length.
    pub(super) close_sent: [Option<(Option<u16>, usize)>; 2],
    /// The first close frame wsgate sent of its own: code and reason length.
    pub(super) wsgate_close: Option<(u16, usize)>,
    /// Who sent the tunnel's first close frame, a peer or wsgate.
    pub(super) first_close: Option<Closer>,
    /// When wsgate shut down its writes to each side: that side's lingering
    /// close runs from here ([`crate::tunnel::linger`]).
    pub(super) write_shut: [Option<Instant>; 2],
    /// The side whose connection ended first (read end of stream or failed).
    pub(super) ended_first: Option<Side>,
    pub(super) ending: Option<Ending>,
    pub(super) last_rtt: Option<Duration>,
    pub(super) pongs: u32,
}

/// Who sent a close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closer {
    Peer(Side),
    Wsgate,
}

impl Closer {
    fn as_str(self) -> &'static str {
        match self {
            Closer::Peer(side) => side.as_str(),
            Closer::Wsgate => "wsgate",
        }
    }
}

impl Shared {
    /// How long the tunnel has been open.
    pub(super) fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// The tunnel's own parts, once both pumps are done with it.
    pub(super) fn into_parts(self) -> (TunnelMetrics, Identity) {
        (self.metrics, self.identity)
    }

    pub(super) fn new(settings: Settings, metrics: TunnelMetrics, identity: Identity) -> Shared {
        Shared {
            settings,
            started: Instant::now(),
            opened_ms: coarse_ms(),
            heard: Default::default(),
            data: AtomicU64::new(0),
            bytes: Default::default(),
            frames: Default::default(),
            state: Mutex::new(State::default()),
            metrics,
            identity,
            drain_place: rand::random(),
            end: CancellationToken::new(),
            rendezvous: Default::default(),
            thread_after: AtomicU64::new(u64::MAX),
            orders: Default::default(),
        }
    }

    /// A direction asked to move joins the other if it can (`mine`), the
    /// tunnel is not closing and the move was not called off; otherwise it
    /// calls the move off. How many have joined, with this one.
    pub(super) fn join_move(&self, purpose: Purpose, mine: bool) -> Option<u8> {
        let state = self.state();
        let tunnel = state.close_started.is_none() && state.ending.is_none();
        let mut joined = None;
        self.rendezvous.send_modify(|r| {
            let r = &mut r[purpose as usize];
            if r.cancelled || !mine || !tunnel {
                r.cancelled = true;
            } else {
                r.parked += 1;
                joined = Some(r.parked);
            }
        });
        joined
    }

    /// After waiting: true when both directions are parked (the tunnel
    /// moves); otherwise this one goes on (and may come back to try again,
    /// unless the move was called off).
    pub(super) fn leave_move(&self, purpose: Purpose) -> bool {
        let mut moving = false;
        self.rendezvous.send_modify(|r| {
            let r = &mut r[purpose as usize];
            if r.parked == 2 && !r.cancelled {
                moving = true;
            } else {
                r.parked = r.parked.saturating_sub(1);
            }
        });
        moving
    }

    /// The move was called off: one direction cannot stop now.
    pub(super) fn move_called_off(&self, purpose: Purpose) -> bool {
        self.rendezvous.borrow()[purpose as usize].cancelled
    }

    /// Calls a move off: the direction that comes later stays.
    pub(super) fn call_off(&self, purpose: Purpose) {
        self.rendezvous.send_if_modified(|r| {
            let r = &mut r[purpose as usize];
            let changed = !r.cancelled && r.parked < 2;
            if changed {
                r.cancelled = true;
            }
            changed
        });
    }

    /// A direction is ending: the tunnel cannot move any more.
    pub(super) fn cancel_move(&self) {
        self.call_off(Purpose::Move);
        self.call_off(Purpose::Thread);
    }

    /// Both sides are plain TCP, the client unpaced and without a message
    /// rate: the tunnel may go to a splice thread once it has carried
    /// [`BUSY_AFTER`] more bytes. Also after it came back from one (no
    /// pump runs then, so the meeting to go starts over).
    pub(super) fn may_go_to_thread(&self) {
        self.rendezvous
            .send_modify(|r| r[Purpose::Thread as usize] = Rendezvous::default());
        let bytes: u64 = self.bytes.iter().map(|b| b.load(Ordering::Relaxed)).sum();
        self.thread_after.store(bytes + BUSY_AFTER, Ordering::Relaxed);
    }

    /// True once, when the tunnel should go to a splice thread now.
    pub(super) fn thread_due(&self) -> bool {
        let after = self.thread_after.load(Ordering::Relaxed);
        after != u64::MAX
            && self.bytes[0].load(Ordering::Relaxed) + self.bytes[1].load(Ordering::Relaxed) >= after
            && threads_wanted()
            && self
                .thread_after
                .compare_exchange(after, u64::MAX, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The orders for the pump that writes to `side`.
    pub(super) fn orders_to(&self, side: Side) -> &Mailbox {
        &self.orders[side.index()]
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        // Plain bookkeeping: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records why wsgate ended the tunnel; the first reason stands.
    pub(super) fn ended(&self, why: Ending) {
        self.state().ending.get_or_insert(why);
    }

    /// A read from or a write to `side` failed with `error`: a timed-out
    /// connection is recorded as that side unreachable (the kernel reports
    /// the error once, to whichever pump asks first; the other then sees
    /// only an end of stream).
    pub(super) fn failed(&self, side: Side, error: &std::io::Error) {
        if crate::tunnel::is_unreachable(error) {
            self.ended(Ending::Unreachable(side));
        }
    }

    /// `side` was found unreachable (and that is why the tunnel ends).
    pub(super) fn unreachable(&self, side: Side) -> bool {
        matches!(self.state().ending, Some(Ending::Unreachable(s)) if s == side)
    }

    /// How long this tunnel waits before its close frames when drain asks
    /// for ends spread over `spread`: its place in the window, leaving room
    /// for the close handshake to finish inside it.
    pub(super) fn drain_delay(&self, spread: Duration) -> Duration {
        let room = spread.saturating_sub(self.settings.inspect.close_timeout);
        room.mul_f32(self.drain_place)
    }

    /// Until when wsgate reads `side` out after its writes to it are shut
    /// down: `close_timeout` from then, or, while they are not yet, a
    /// `close_timeout` from now to be asked again.
    pub(super) fn linger_deadline(&self, side: Side) -> tokio::time::Instant {
        let close_timeout = self.settings.inspect.close_timeout;
        let shut = self.state().write_shut[side.index()];
        tokio::time::Instant::from_std(shut.unwrap_or_else(Instant::now) + close_timeout)
    }

    /// Milliseconds since the tunnel opened, on the coarse clock: taken on
    /// every read, for clocks that count in seconds.
    fn now_ms(&self) -> u64 {
        coarse_ms().saturating_sub(self.opened_ms)
    }

    /// Frame starts read from `side` so far (before the read in hand).
    pub(super) fn frames_from(&self, side: Side) -> u64 {
        self.frames[side.index()].load(Ordering::Relaxed)
    }

    /// One read from `from`: `bytes` long, with `frames` frame starts in it,
    /// some of them data when `data`.
    pub(super) fn read_from(&self, from: Side, bytes: usize, frames: u64, data: bool) {
        let now = self.now_ms();
        let side = from.index();
        self.heard[side].store(now, Ordering::Relaxed);
        if data {
            self.data.store(now, Ordering::Relaxed);
        }
        self.bytes[side].fetch_add(bytes as u64, Ordering::Relaxed);
        self.frames[side].fetch_add(frames, Ordering::Relaxed);
    }

    /// How long `side` has been silent.
    pub(super) fn silent_for(&self, side: Side) -> Duration {
        let heard = self.heard[side.index()].load(Ordering::Relaxed);
        Duration::from_millis(self.now_ms().saturating_sub(heard))
    }

    /// How long no data frame has passed either way.
    pub(super) fn idle_for(&self) -> Duration {
        let data = self.data.load(Ordering::Relaxed);
        Duration::from_millis(self.now_ms().saturating_sub(data))
    }
}

/// The tunnel's `tunnel closed` line (with its [`Identity`]) and its metrics.
pub(super) fn log_end(shared: &Shared) {
    let state = shared.state();
    let first_code = |closer: Closer| match closer {
        Closer::Peer(side) => state.close_sent[side.index()].unwrap_or_default(),
        Closer::Wsgate => state.wsgate_close.map_or((None, 0), |(code, len)| (Some(code), len)),
    };
    let (code, reason_len) = state.first_close.map_or((None, 0), first_code);
    let violation = match state.ending {
        Some(Ending::Violation(_, violation)) => Some(violation),
        _ => None,
    };
    let load = |counters: &[AtomicU64; 2], side: Side| counters[side.index()].load(Ordering::Relaxed);
    let bytes = [load(&shared.bytes, Side::Client), load(&shared.bytes, Side::Backend)];
    let frames = [load(&shared.frames, Side::Client), load(&shared.frames, Side::Backend)];
    let sent = |side: Side| state.close_sent[side.index()];
    let duration = shared.started.elapsed();
    tunnel_event!(
        tracing::Level::INFO,
        &shared.identity,
        from_client = bytes[CLIENT_TO_BACKEND],
        from_backend = bytes[BACKEND_TO_CLIENT],
        frames_from_client = frames[CLIENT_TO_BACKEND],
        frames_from_backend = frames[BACKEND_TO_CLIENT],
        duration_ms = duration.as_millis() as u64,
        closed_first = state.first_close.map_or("none", Closer::as_str),
        close_code = code,
        close_reason_len = reason_len,
        client_close_code = sent(Side::Client).and_then(|(code, _)| code),
        client_close_reason_len = sent(Side::Client).map(|(_, len)| len),
        backend_close_code = sent(Side::Backend).and_then(|(code, _)| code),
        backend_close_reason_len = sent(Side::Backend).map(|(_, len)| len),
        wsgate_close_code = state.wsgate_close.map(|(code, _)| code),
        ended_by = state.ending.map_or("peers", Ending::as_str),
        violation = violation.map(tracing::field::display),
        drain_code = match state.ending {
            Some(Ending::Drained(why)) => Some(why.code),
            _ => None,
        },
        pongs = state.pongs,
        last_ping_rtt_ms = state.last_rtt.map(|rtt| rtt.as_secs_f64() * 1000.0),
        "tunnel closed"
    );
    let close = match state.first_close {
        Some(closer) => FirstClose::Frame {
            side: closer.as_str(),
            code: first_code(closer).0,
        },
        None => FirstClose::Missing {
            side: state.ended_first.map_or("wsgate", Side::as_str),
        },
    };
    if let Some(Ending::Unreachable(side)) = state.ending {
        shared.metrics.unreachable(&shared.identity.route, side.as_str());
    }
    shared.metrics.finish(duration, bytes, frames, Some(close));
}

/// The coarse monotonic clock in milliseconds: `Instant::now` and the
/// division of its `Duration` cost about 200 instructions a read.
pub(super) fn coarse_ms() -> u64 {
    let now = coarse_monotonic_now();
    now.as_secs() * 1000 + u64::from(now.subsec_millis())
}

impl Counts for Shared {
    fn read_from(&self, side: usize, bytes: usize, frames: u64, data: bool) {
        Shared::read_from(self, Side::of_index(side), bytes, frames, data);
    }
}
