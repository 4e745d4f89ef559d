//! One direction of an inspected tunnel: frames from one side to the other.
//! Its clocks (pings, timeouts) are in [`keepalive`]; a client's message
//! rate is kept in [`message_rate`].

mod keepalive;
mod message_rate;
mod park;

pub(super) use keepalive::{clocks_due, tick_period};

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::debug;

use super::mailbox::{Mailbox, Order};
use super::saved::{reader_config, SavedPump, HELD_MAX};
use super::shared::{Closer, Ending, Purpose, Shared, Side};
use crate::tunnel::drain::{DrainClose, DrainRequest, DrainSignal};
use crate::tunnel::linger;
use crate::tunnel::pace::TokenBucket;
use crate::tunnel::pool::{Lent, Sizing};
use crate::tunnel::relocate::{Ticket, Undecided};
use crate::tunnel::wakes::{self, Wakes};
use crate::ws::close;
use crate::ws::frame::{self, Event, FrameReader, OpCode, Violation};

/// The sources a pump polls beside its read ([`wakes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    End = 0,
    Drain = 1,
    Orders = 2,
    Clock = 3,
    Move = 4,
}

impl wakes::Source for Source {
    fn index(self) -> u8 {
        self as u8
    }
}

/// What woke a pump.
enum Woke {
    /// A read, in a buffer lent for it ([`crate::tunnel::pool`]).
    Read(std::io::Result<usize>, Lent),
    End,
    Order(Order),
    Drain(DrainRequest),
    DrainTurn(DrainClose),
    Tick,
    /// A binary upgrade asks the tunnel to move.
    Relocate,
}

/// How a pump's run ended.
pub(super) enum PumpEnd<R, W> {
    Ended,
    /// Stopped between two reads, with the other direction, to move to
    /// another process: its halves and where it stood.
    Parked(Box<Parked<R, W>>),
}

pub(super) struct Parked<R, W> {
    pub(super) src: R,
    pub(super) dst: W,
    pub(super) saved: SavedPump,
    /// Keeps the upgrade waiting until the tunnel has gone (or stayed).
    pub(super) moving: Option<Undecided>,
    pub(super) purpose: Purpose,
}

/// One read, as a poll, into a buffer lent for it behind the `held` bytes;
/// the buffer goes back at once when nothing can be read, so an idle pump
/// holds none.
fn poll_lent_read<R: AsyncRead + Unpin>(src: &mut R, sizing: Sizing, cx: &mut Context<'_>, held: &[u8]) -> Poll<Woke> {
    let mut buffer = sizing.lend();
    buffer[..held.len()].copy_from_slice(held);
    let mut read = ReadBuf::new(&mut buffer[held.len()..]);
    match Pin::new(src).poll_read(cx, &mut read) {
        Poll::Ready(Ok(())) => {
            let n = read.filled().len();
            Poll::Ready(Woke::Read(Ok(n), buffer))
        }
        Poll::Ready(Err(error)) => Poll::Ready(Woke::Read(Err(error), buffer)),
        Poll::Pending => Poll::Pending,
    }
}

/// wsgate's pings carry this prefix and a counter, so their pongs are known.
pub(super) const PING_PREFIX: &[u8; 4] = b"wsg\0";

/// Whether a pump goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Go,
    Stop,
}

/// Frames from `from` to the other side.
pub(super) struct Pump<R, W> {
    pub(super) from: Side,
    src: R,
    dst: W,
    reader: FrameReader,
    pub(super) shared: Arc<Shared>,
    /// Scratch space for the frames wsgate writes.
    out: Vec<u8>,
    /// A frame of wsgate's own waiting for the next frame boundary.
    pending: Option<Order>,
    /// A close frame of wsgate's own waiting for the source's close answer
    /// ([`Order::CloseAfterAnswer`]).
    after_answer: Option<(u16, &'static str)>,
    /// The source's stream ended (or failed).
    source_done: bool,
    /// The size of buffer the next read borrows.
    sizing: Sizing,
    /// The client's `max_messages_per_second`, on the client's pump only.
    message_rate: Option<TokenBucket>,
    /// The other pump asked to go to a splice thread.
    to_thread: bool,
    /// Bytes a splice thread read and did not write: written first. Here
    /// rather than an argument of [`Pump::run`], whose task would keep it
    /// for the tunnel's life (a task is a whole number of 128-byte cells).
    unwritten: Vec<u8>,
}

impl<R, W> Pump<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) fn new(from: Side, src: R, dst: W, shared: &Arc<Shared>) -> Self {
        let inspect = &shared.settings.inspect;
        let reader = FrameReader::new(reader_config(from, &shared.settings));
        Pump {
            from,
            src,
            dst,
            reader,
            shared: shared.clone(),
            out: Vec::with_capacity(14 + 125),
            pending: None,
            after_answer: None,
            source_done: false,
            sizing: Sizing::default(),
            message_rate: message_rate::bucket(from, inspect),
            to_thread: false,
            unwritten: Vec::new(),
        }
    }

    /// The pump [`Pump::run`] parked, where it stood.
    pub(super) fn resume(from: Side, (src, dst): (R, W), shared: &Arc<Shared>, saved: SavedPump) -> Self {
        let mut pump = Pump::new(from, src, dst, shared);
        pump.reader = saved.reader;
        if let (Some(bucket), Some(tokens)) = (&mut pump.message_rate, saved.message_tokens) {
            *bucket = message_rate::bucket_at(&shared.settings.inspect, tokens);
        }
        pump
    }

    /// The side this pump writes to.
    pub(super) fn to(&self) -> Side {
        self.from.other()
    }

    /// This pump's orders, from the other one.
    fn inbox(&self) -> &Mailbox {
        self.shared.orders_to(self.to())
    }

    /// The other pump's orders: it writes to `from`.
    fn to_source(&self) -> &Mailbox {
        self.shared.orders_to(self.from)
    }

    /// Bytes to write to the destination before anything else: what a
    /// splice thread read and did not write.
    pub(super) fn write_first(&mut self, unwritten: Vec<u8>) {
        self.unwritten = unwritten;
    }

    /// Runs until the tunnel ends, or, when `relocating` asks or the tunnel
    /// goes to a splice thread, until both directions stop together
    /// (`held`: bytes a moved pump held back, to go in front of its first
    /// read). Boxed: a future keeps an argument taken by value beside the
    /// local it moves into, so a pump by value would sit in its task twice
    /// (memory per idle tunnel).
    pub(super) async fn run(
        mut self: Box<Self>,
        mut drain: DrainSignal,
        mut relocating: Option<Ticket>,
        held: &[u8],
    ) -> PumpEnd<R, W> {
        // A destination that failed ends the pump as any write's failure.
        let unwritten = std::mem::take(&mut self.unwritten);
        let mut failed = self.write(&unwritten).await.is_err();
        drop(unwritten);
        // Bytes kept back from the last read: the start of a frame not yet
        // complete enough to judge. They go in front of the next read.
        let mut kept = held.len().min(HELD_MAX);
        let held_before = held;
        let mut held = [0u8; HELD_MAX];
        held[..kept].copy_from_slice(&held_before[..kept]);
        let mut ticks = tokio::time::interval(keepalive::tick_period(&self.shared.settings.inspect));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut draining = false;
        // This tunnel's turn in a spread drain, and why it drains.
        let mut drain_turn: Option<(Pin<Box<tokio::time::Sleep>>, DrainClose)> = None;
        let end = self.shared.end.clone();
        let ended = end.cancelled();
        let requested = drain.requested();
        tokio::pin!(ended, requested);
        let wakes = Wakes::new();
        let mut turn: u32 = 0;
        loop {
            if std::mem::take(&mut failed) {
                break;
            }
            turn = turn.wrapping_add(1);
            // On a busy tunnel the loop turns once per read: the read is
            // polled first, and the rest only when it would block, or every
            // 16th turn so that a source that never pauses cannot hold them
            // off. Of the rest, only those whose wakers fired are polled
            // ([`wakes`]); the drain's turn, rare, always is.
            let woke = poll_fn(|cx| {
                let busy_turn = turn % 16 != 0;
                if busy_turn {
                    if let Poll::Ready(woke) = poll_lent_read(&mut self.src, self.sizing, cx, &held[..kept]) {
                        return Poll::Ready(woke);
                    }
                }
                let due = wakes.take_due(cx.waker());
                // Polls `source` when due, with its own waker.
                macro_rules! poll_due {
                    ($source:expr, $poll:expr) => {{
                        if due.has($source) {
                            let waker = wakes.lend_waker($source);
                            let mut source_cx = Context::from_waker(&waker);
                            $poll(&mut source_cx)
                        } else {
                            Poll::Pending
                        }
                    }};
                }
                // Skipped this turn: still due on the next.
                let skip = |source: Source| {
                    if due.has(source) {
                        wakes.keep_due(source);
                    }
                };
                let ready = 'sources: {
                    if poll_due!(Source::End, |cx: &mut Context<'_>| ended.as_mut().poll(cx)).is_ready() {
                        break 'sources Some(Woke::End);
                    }
                    if draining {
                        skip(Source::Drain);
                    } else if let Poll::Ready(request) =
                        poll_due!(Source::Drain, |cx: &mut Context<'_>| requested.as_mut().poll(cx))
                    {
                        break 'sources Some(Woke::Drain(request));
                    }
                    if let Some((sleep, why)) = &mut drain_turn {
                        if sleep.as_mut().poll(cx).is_ready() {
                            break 'sources Some(Woke::DrainTurn(*why));
                        }
                    }
                    if self.pending.is_some() {
                        skip(Source::Orders);
                    } else if let Poll::Ready(order) =
                        poll_due!(Source::Orders, |cx: &mut Context<'_>| self.inbox().poll_recv(cx))
                    {
                        break 'sources Some(Woke::Order(order));
                    }
                    if poll_due!(Source::Clock, |cx: &mut Context<'_>| ticks.poll_tick(cx)).is_ready() {
                        break 'sources Some(Woke::Tick);
                    }
                    if let Some(ticket) = &mut relocating {
                        if draining {
                            skip(Source::Move);
                        } else if poll_due!(Source::Move, |cx: &mut Context<'_>| ticket.poll_asked(cx)).is_ready() {
                            break 'sources Some(Woke::Relocate);
                        }
                    }
                    None
                };
                if let Some(woke) = ready {
                    // The one ready, to wait anew, and those after it, not
                    // polled: due again next turn.
                    wakes.keep(due);
                    return Poll::Ready(woke);
                }
                if !busy_turn {
                    if let Poll::Ready(woke) = poll_lent_read(&mut self.src, self.sizing, cx, &held[..kept]) {
                        return Poll::Ready(woke);
                    }
                }
                Poll::Pending
            })
            .await;
            let flow = match woke {
                Woke::Read(Ok(0), _) => self.source_ended().await,
                Woke::Read(Err(error), _) => {
                    self.shared.failed(self.from, &error);
                    self.source_ended().await
                }
                Woke::Read(Ok(n), buffer) => {
                    self.sizing.saw(n, buffer.len() - kept);
                    let read = kept + n;
                    let (flow, left) = self.forward(&buffer[..read], kept).await;
                    // At most HELD_MAX by `forward`'s rule; the clamp only
                    // keeps a broken invariant from panicking in release.
                    debug_assert!(left <= HELD_MAX, "held {left} bytes");
                    let left = left.min(HELD_MAX);
                    held[..left].copy_from_slice(&buffer[read - left..read]);
                    kept = left;
                    flow
                }
                Woke::End => Flow::Stop,
                Woke::Order(order) => {
                    self.take_order(order);
                    self.obey_pending().await
                }
                Woke::Drain(request) => {
                    draining = true;
                    let at = tokio::time::Instant::now() + self.shared.drain_delay(request.spread);
                    drain_turn = Some((Box::pin(tokio::time::sleep_until(at)), request.why));
                    Flow::Go
                }
                Woke::DrainTurn(why) => {
                    drain_turn = None;
                    self.shared.ended(Ending::Drained(why));
                    // Tell this side why, then wait for its close answer (or
                    // the close timeout) as usual.
                    self.close_at_boundary(why.code, why.reason).await
                }
                Woke::Tick => self.timers().await,
                Woke::Relocate => {
                    match self.park(Purpose::Move, draining, kept > 0).await {
                        park::Parking::Moved => {
                            let moving = relocating.take().map(Ticket::moving);
                            return (*self).parked(&held[..kept], moving, Purpose::Move);
                        }
                        // Whether it moves or stays is settled: not asked again.
                        park::Parking::Stay => relocating = None,
                        park::Parking::Again => {}
                    }
                    Flow::Go
                }
            };
            if flow == Flow::Stop {
                break;
            }
            if self.shared.thread_due() {
                self.to_source().send(Order::ToThread);
            }
            if std::mem::take(&mut self.to_thread)
                && self.park(Purpose::Thread, draining, kept > 0).await == park::Parking::Moved
            {
                return (*self).parked(&held[..kept], None, Purpose::Thread);
            }
        }
        // Ending here: the other direction cannot move without this one.
        self.shared.cancel_move();
        if let Some((code, reason)) = self.after_answer.take() {
            if self.can_inject() {
                let _ = self.send_close(code, reason).await;
            }
        }
        let _ = self.dst.shutdown().await;
        self.shared.state().write_shut[self.to().index()].get_or_insert_with(Instant::now);
        self.linger().await;
        PumpEnd::Ended
    }

    /// An order from the other pump: a close to wait for the source's answer
    /// is kept aside, any other is sent at the next frame boundary.
    fn take_order(&mut self, order: Order) {
        match order {
            Order::CloseAfterAnswer { code, reason } => self.after_answer = Some((code, reason)),
            Order::ToThread => self.to_thread = true,
            order => self.pending = Some(order),
        }
    }

    /// Reads the source out before its connection closes (a lingering
    /// close, [`linger`]): unless it has ended, sent its close frame, or
    /// stopped answering altogether, it may still be sending, and a reset
    /// for unread bytes could overtake the close frame it was sent. Ends
    /// at its close frame (when its frames can still be followed), its end
    /// of stream, or `close_timeout` after wsgate's writes to it were shut
    /// down.
    async fn linger(&mut self) {
        let from = self.from;
        let done = self.source_done || {
            let state = self.shared.state();
            state.closed[from.index()].is_some()
                || matches!(state.ending, Some(Ending::Unresponsive(side)) if side == from)
        };
        if done {
            return;
        }
        let shared = self.shared.clone();
        let reader = &mut self.reader;
        let (how, dropped) = linger::discard(
            &mut self.src,
            || shared.linger_deadline(from),
            |bytes| sends_close(reader, bytes),
        )
        .await;
        debug!(side = from.as_str(), ?how, dropped, "lingering close ended");
    }

    /// Forwards one read and returns how many bytes at its end were held
    /// back: a frame header that has not fully arrived, or a control frame
    /// (at most 139 bytes) that has not. Those bytes were fed to the reader
    /// already, so every rule a header decides is judged as its bytes
    /// arrive, but none of them leaves before the frame is known to be good:
    /// a violation always leaves the destination between frames, and a pong
    /// that answers wsgate's ping is dropped whole. The held bytes start
    /// `chunk` on the next call, with `judged` saying how many there are.
    /// wsgate's pending frame goes out at the first frame boundary.
    async fn forward(&mut self, chunk: &[u8], judged: usize) -> (Flow, usize) {
        if self.pending.is_none() {
            if let Some(order) = self.inbox().try_recv() {
                self.take_order(order);
            }
        }
        // Bytes before `pos` have been fed to the reader.
        let mut pos = judged;
        // Everything before `flushed` has been written (or dropped, for a
        // pong that answers wsgate's ping).
        let mut flushed = 0;
        // Held bytes always start a frame.
        let mut frame_start = 0;
        let mut frames = 0;
        // Frames that ended in this read: they passed every check.
        let mut whole_frames = 0;
        // A read that starts inside a frame it does not hold continues a
        // data frame's payload.
        let mut data = !self.reader.at_frame_boundary() && !self.reader.judging_frame();
        let held = loop {
            if self.reader.at_frame_boundary() {
                if self.pending.is_some() {
                    if self.write(&chunk[flushed..pos]).await.is_err() {
                        return (Flow::Stop, 0);
                    }
                    flushed = pos;
                    if self.obey_pending().await == Flow::Stop {
                        return (Flow::Stop, 0);
                    }
                }
                if pos == chunk.len() {
                    break 0;
                }
                frame_start = pos;
            }
            // Data frames nothing needs to see one by one (no order waits
            // for a boundary, no message is counted against a rate): without
            // an event each.
            if self.pending.is_none() && self.message_rate.is_none() {
                let passed = self.reader.pass_data(&chunk[pos..]);
                if passed.consumed > 0 {
                    pos += passed.consumed;
                    frames += passed.frames;
                    whole_frames += passed.ended;
                    data = true;
                    continue;
                }
            }
            let (consumed, event) = match self.reader.advance(&chunk[pos..]) {
                Ok(step) => step,
                Err(violation) => {
                    // The frames before the offending one still go; none of it does.
                    let _ = self.write(&chunk[flushed..frame_start]).await;
                    // A backend that never got one frame right is not a
                    // WebSocket server at all: the client hears 1014.
                    let spoke = whole_frames > 0 || self.shared.frames_from(self.from) > 0;
                    return (self.violation(violation, spoke).await, 0);
                }
            };
            pos += consumed;
            match event {
                Some(Event::FrameStart(header)) => {
                    if self.over_message_rate(header.opcode) {
                        // Like a violation: the frames before it go, it does not.
                        let _ = self.write(&chunk[flushed..frame_start]).await;
                        return (self.message_rate_exceeded().await, 0);
                    }
                    frames += 1;
                    data |= !header.opcode.is_control();
                }
                Some(Event::Control { opcode, payload }) => match opcode {
                    OpCode::Close => self.saw_close(payload.close_code(), payload.close_reason().len()),
                    OpCode::Pong if self.is_our_pong(payload.as_bytes()) => {
                        // Consumed here: what came before it goes, it does not.
                        if self.write(&chunk[flushed..frame_start]).await.is_err() {
                            return (Flow::Stop, 0);
                        }
                        flushed = pos;
                    }
                    _ => {}
                },
                Some(Event::FrameEnd { opcode, .. }) => {
                    whole_frames += 1;
                    if opcode == OpCode::Close && self.after_answer.is_some() {
                        // The answer: what came before it goes, the close
                        // frame of wsgate's own goes in its place.
                        self.shared.read_from(self.from, pos, frames, data);
                        let _ = self.write(&chunk[flushed..frame_start.max(flushed)]).await;
                        return (Flow::Stop, 0);
                    }
                    if opcode == OpCode::Close && self.both_closed() {
                        // The close that ends the tunnel counts like any read.
                        self.shared.read_from(self.from, pos, frames, data);
                        let _ = self.write(&chunk[flushed..pos]).await;
                        self.shared.end.cancel();
                        return (Flow::Stop, 0);
                    }
                }
                // All of `chunk` is fed: hold the frame it ends in if that
                // frame is still being judged.
                None if self.reader.judging_frame() => break chunk.len() - frame_start.max(flushed),
                None => break 0,
            }
        };
        let upto = chunk.len() - held;
        self.shared.read_from(self.from, upto, frames, data);
        if self.write(&chunk[flushed..upto]).await.is_err() {
            return (Flow::Stop, 0);
        }
        (Flow::Go, held)
    }

    /// Writes `bytes` to the destination (a failure that says the
    /// destination is unreachable is recorded). A destination that does not read
    /// holds the write up for as long as it likes, and the clocks in
    /// `timers` only run between reads: while the write waits, the
    /// destination's silence is watched here, so a peer that neither reads
    /// nor sends is given up on at `ping_interval` + `pong_timeout` all the
    /// same.
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let result = self.write_watched(bytes).await;
        if let Err(error) = &result {
            self.shared.failed(self.to(), error);
        }
        result
    }

    async fn write_watched(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let to = self.to();
        let inspect = &self.shared.settings.inspect;
        if to == Side::Backend && !inspect.ping_backend {
            return self.dst.write_all(bytes).await;
        }
        let limit = inspect.ping_interval + inspect.pong_timeout;
        let write = self.dst.write_all(bytes);
        tokio::pin!(write);
        // Most writes complete at once: the watch is set up only for one
        // that waits (no timer on the per-frame path).
        if let Poll::Ready(result) = poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
            return result;
        }
        let period = keepalive::tick_period(inspect);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                result = &mut write => return result,
                _ = ticks.tick() => {
                    if self.shared.silent_for(to) >= limit {
                        keepalive::give_up(&self.shared, to);
                        return Err(std::io::ErrorKind::TimedOut.into());
                    }
                }
            }
        }
    }

    fn saw_close(&self, code: Option<u16>, reason_len: usize) {
        let mut state = self.shared.state();
        let now = Instant::now();
        state.closed[self.from.index()].get_or_insert(now);
        state.close_started.get_or_insert(now);
        state.close_sent[self.from.index()].get_or_insert((code, reason_len));
        state.first_close.get_or_insert(Closer::Peer(self.from));
    }

    fn both_closed(&self) -> bool {
        self.shared.state().closed.iter().all(Option::is_some)
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
            let rtt = sent.elapsed();
            state.last_rtt = Some(rtt);
            self.shared.metrics.ping_answered(rtt);
            state.pongs += 1;
        }
        ours
    }

    /// The source broke the protocol: each side gets a close frame of
    /// wsgate's own (RFC 6455 §7.4.1), then the tunnel ends. Nothing of the
    /// offending frame was forwarded, so the destination is between frames.
    async fn violation(&mut self, violation: Violation, spoke: bool) -> Flow {
        debug!(side = self.from.as_str(), %violation, "protocol violation");
        self.shared.ended(Ending::Violation(self.from, violation));
        let offender = violation.close_code();
        let reason = match offender {
            close::MESSAGE_TOO_BIG => "message too big",
            close::INVALID_PAYLOAD => "invalid close reason",
            _ => "protocol violation",
        };
        // A client's close waits for the backend's answer to the backend's
        // close, so that what the backend answered first reaches it first.
        let order = match self.from {
            Side::Client => Order::CloseAfterAnswer { code: offender, reason },
            Side::Backend => Order::CloseAndEnd { code: offender, reason },
        };
        self.to_source().send(order);
        // The innocent side: 1002 if the client broke the protocol (the
        // backend learns why), 1011 if the backend did (the client is not at
        // fault), 1014 "bad gateway" if the backend never sent one valid
        // frame; 1009 either way for a size limit.
        let (code, reason) = match (self.from, offender) {
            (_, close::MESSAGE_TOO_BIG) => (close::MESSAGE_TOO_BIG, "peer sent a message too big"),
            (Side::Client, _) => (close::PROTOCOL_ERROR, "client protocol violation"),
            (Side::Backend, _) if !spoke => (close::BAD_GATEWAY, "backend is not speaking WebSocket"),
            (Side::Backend, _) => (close::INTERNAL_ERROR, "backend protocol violation"),
        };
        let _ = self.send_close(code, reason).await;
        Flow::Stop
    }

    /// The source closed its connection (or it failed). Without a close
    /// frame first, the other side is told why instead of seeing a bare TCP
    /// close: 1011 to a client whose backend vanished, 1001 to a backend
    /// whose client did; "unreachable" when the connection timed out (no
    /// FIN, no reset: the host or the path is gone).
    async fn source_ended(&mut self) -> Flow {
        self.source_done = true;
        let closed = {
            let mut state = self.shared.state();
            state.ended_first.get_or_insert(self.from);
            state.closed[self.from.index()].is_some()
        };
        // A close waiting for this answer goes instead, as the loop ends.
        if !closed && self.after_answer.is_none() && self.can_inject() {
            let unreachable = self.shared.unreachable(self.from);
            let (code, reason) = match (self.from, unreachable) {
                (Side::Backend, false) => (close::INTERNAL_ERROR, "backend connection lost"),
                (Side::Backend, true) => (close::INTERNAL_ERROR, "backend unreachable"),
                (Side::Client, false) => (close::GOING_AWAY, "client went away"),
                (Side::Client, true) => (close::GOING_AWAY, "client unreachable"),
            };
            self.shared.ended(Ending::Lost(self.from));
            let _ = self.send_close(code, reason).await;
        }
        Flow::Stop
    }

    /// Between frames on the way to the destination.
    pub(super) fn can_inject(&self) -> bool {
        self.reader.at_frame_boundary()
    }

    /// Carries out the pending order if the stream is between frames.
    async fn obey_pending(&mut self) -> Flow {
        if !self.can_inject() {
            return Flow::Go;
        }
        match self.pending.take() {
            Some(Order::CloseAndEnd { code, reason }) => {
                let _ = self.send_close(code, reason).await;
                Flow::Stop
            }
            Some(Order::Close { code, reason }) => match self.send_close(code, reason).await {
                Ok(()) => Flow::Go,
                Err(_) => Flow::Stop,
            },
            Some(order @ (Order::CloseAfterAnswer { .. } | Order::ToThread)) => {
                self.take_order(order);
                Flow::Go
            }
            None => Flow::Go,
        }
    }

    /// Sends a close frame at the next frame boundary and goes on reading:
    /// the peer's close answer ends the tunnel (or the close timeout does).
    pub(super) async fn close_at_boundary(&mut self, code: u16, reason: &'static str) -> Flow {
        if self.pending.is_none() {
            self.pending = Some(Order::Close { code, reason });
        }
        self.obey_pending().await
    }

    /// A close frame from wsgate to this pump's destination.
    async fn send_close(&mut self, code: u16, reason: &str) -> std::io::Result<()> {
        let (payload, len) = frame::close_payload(code, reason);
        {
            let mut state = self.shared.state();
            state.close_started.get_or_insert_with(Instant::now);
            state.wsgate_close.get_or_insert((code, len.saturating_sub(2)));
            state.first_close.get_or_insert(Closer::Wsgate);
        }
        self.send_control(OpCode::Close, &payload[..len]).await
    }

    /// A control frame of wsgate's own, masked toward the backend (a client
    /// must mask, RFC 6455 §5.3).
    pub(super) async fn send_control(&mut self, opcode: OpCode, payload: &[u8]) -> std::io::Result<()> {
        let mask = (self.to() == Side::Backend).then(rand::random::<[u8; 4]>);
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        frame::encode_control(opcode, payload, mask, &mut out);
        let result = self.write(&out).await;
        self.out = out;
        result
    }
}

/// Feeds what a lingering source sent to its frame reader: true once its
/// close frame has ended. A stream whose frames can no longer be followed
/// (it broke the protocol) is read to its end instead.
fn sends_close(reader: &mut FrameReader, mut bytes: &[u8]) -> bool {
    loop {
        match reader.advance(bytes) {
            Ok((
                _,
                Some(Event::FrameEnd {
                    opcode: OpCode::Close, ..
                }),
            )) => return true,
            Ok((consumed, Some(_))) => bytes = &bytes[consumed..],
            Ok((_, None)) | Err(_) => return false,
        }
    }
}
