//! The WebSocket tunnel: after both 101s, bytes flow unchanged both ways.
//!
//! [`halves`] takes the two upgraded connections out of hyper's box (and
//! apart, for the inspected pumps); [`copy`] moves one direction's bytes through a buffer
//! [`pool`] lends only while they move; [`pace`] holds a client's reads to
//! its route's byte rate; [`linger`] reads a peer out after wsgate's last
//! word to it, so that word is not lost to a reset.

/// `AsyncWrite` for a wrapper that changes only how its stream is read
/// (a field `io`): writes, flushes and shutdowns go straight through. Also
/// used by the HTTP/2 stream a WebSocket rides on (`proxy::websocket`).
macro_rules! write_through {
    // The three methods, for either form below.
    (@methods) => {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            data: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, data)
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
        }
    };
    // A wrapper generic over its stream (`Prefixed<T>`).
    ($wrapper:ident) => {
        impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<T> {
            $crate::tunnel::write_through!(@methods);
        }
    };
    // A wrapper around one stream type.
    (concrete $wrapper:ty) => {
        impl tokio::io::AsyncWrite for $wrapper {
            $crate::tunnel::write_through!(@methods);
        }
    };
}
pub(crate) use write_through;

pub mod clock;
pub mod copy;
pub mod drain;
pub mod halves;
pub mod identity;
pub mod inspect;
pub mod linger;
pub mod pace;
pub mod pool;
pub mod relocate;
pub mod splice_thread;
pub mod wakes;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use copy::Copy;
use halves::{Movable, Side};
use identity::tunnel_event;
pub use identity::Identity;
use relocate::moved::{MovedSocket, MovedState};
use relocate::{MovedTunnel, Ticket};
use wakes::Wakes;

use crate::telemetry::metrics::{BACKEND_TO_CLIENT, CLIENT_TO_BACKEND};
use crate::telemetry::TunnelMetrics;

/// A plain tunnel: the two directions, each a [`struct@Copy`] from one side's
/// reading half to the other side's writing half, spliced until both have
/// ended.
///
/// A future written by hand rather than an `async fn`, so that the task of
/// an idle tunnel holds this and nothing else (memory per idle tunnel).
pub struct Splice {
    client: Side,
    backend: Side,
    /// Client to backend.
    upstream: Copy,
    /// Backend to client.
    downstream: Copy,
    metrics: TunnelMetrics,
    /// Boxed: a task rounded up to tokio's 128-byte cells would otherwise
    /// grow by a whole cell (memory per idle tunnel).
    identity: Box<Identity>,
    started: Instant,
    /// Set when both sides are plain TCP: the tunnel can move to the next
    /// process at a binary upgrade.
    ticket: Option<Ticket>,
    /// Which of the two directions and the move woke the task, when both
    /// sides are plain TCP ([`wakes`]): each of a socket's two readiness
    /// wakers then serves one direction alone (the client's read and the
    /// backend's write the upstream, the others the downstream). A TLS
    /// side may write while it reads, and its write waker would be one
    /// direction's, then the other's: such a tunnel polls both each time.
    /// Only a splice with wakers of its own may go to a splice thread; one
    /// that could not go gives them up, and is not offered again.
    wakes: Option<Arc<Wakes>>,
}

/// What a plain splice waits on.
#[derive(Clone, Copy)]
enum Waits {
    Upstream = 0,
    Downstream = 1,
    Move = 2,
}

impl wakes::Source for Waits {
    fn index(self) -> u8 {
        self as u8
    }
}

/// Polls with `source`'s own waker when the splice has them, else with
/// the task's.
fn poll_for<T>(
    wakes: &Option<Arc<Wakes>>,
    source: Waits,
    cx: &mut Context<'_>,
    poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
) -> Poll<T> {
    match wakes {
        Some(wakes) => poll(&mut Context::from_waker(&wakes.lend_waker(source))),
        None => poll(cx),
    }
}

impl Splice {
    /// `client` and `backend` are the two upgraded connections, taken out of
    /// hyper's box by [`halves`].
    pub fn new(client: Side, backend: Side, metrics: TunnelMetrics, identity: Box<Identity>) -> Self {
        Splice {
            wakes: wakes_for(&client, &backend),
            client,
            backend,
            upstream: Copy::default(),
            downstream: Copy::default(),
            metrics,
            identity,
            started: Instant::now(),
            ticket: None,
        }
    }

    /// The splice of a tunnel moved from another process, where its
    /// description left it.
    pub fn resume(
        client: Side,
        backend: Side,
        (upstream, downstream): (Copy, Copy),
        metrics: TunnelMetrics,
        identity: Box<Identity>,
        age: std::time::Duration,
    ) -> Self {
        let now = Instant::now();
        Splice {
            wakes: wakes_for(&client, &backend),
            client,
            backend,
            upstream,
            downstream,
            metrics,
            identity,
            started: now.checked_sub(age).unwrap_or(now),
            ticket: None,
        }
    }

    /// Lets the tunnel move at a binary upgrade, if both sides can.
    pub fn movable_with(mut self, ticket: impl FnOnce() -> Ticket) -> Self {
        if self.client.movable().is_some() && self.backend.movable().is_some() {
            self.ticket = Some(ticket());
        }
        self
    }

    /// Asked to move: describes the tunnel (with copies of its sockets) and
    /// hands it over. True when it went: this splice must then never touch
    /// its sockets again, but close its copies.
    fn moved(&mut self) -> bool {
        let Some(ticket) = self.ticket.take() else {
            return false;
        };
        let described = (|| {
            let side = |side: &Side| -> std::io::Result<MovedSocket> {
                let (fd, unread) = side.movable().ok_or(std::io::ErrorKind::Unsupported)?;
                Ok(MovedSocket {
                    socket: fd.try_clone_to_owned()?.into(),
                    unread: bytes::Bytes::copy_from_slice(unread),
                })
            };
            Ok::<_, std::io::Error>(MovedTunnel {
                identity: (*self.identity).clone(),
                age: self.started.elapsed(),
                client: side(&self.client)?,
                backend: side(&self.backend)?,
                state: MovedState::Plain {
                    upstream: self.upstream.save(),
                    downstream: self.downstream.save(),
                },
                stopped_at: clock::monotonic_now(),
            })
        })();
        let tunnel = match described {
            Ok(tunnel) => tunnel,
            Err(error) => {
                tracing::warn!(%error, "tunnel cannot move: it stays");
                return false;
            }
        };
        match ticket.relocation().hand_over(tunnel) {
            Ok(()) => {
                tracing::debug!("tunnel handed over");
                true
            }
            // The upgrade is over: the tunnel stays, and is not asked again.
            Err(_) => false,
        }
    }

    /// `error`: the one that ended the tunnel, with the side whose
    /// connection it came from.
    fn finish(&self, error: Option<(io::Error, &'static str)>) {
        report(
            &self.identity,
            &self.metrics,
            self.started,
            [self.upstream.bytes, self.downstream.bytes],
            [self.upstream.ended_at, self.downstream.ended_at],
            error,
        );
    }
}

/// A plain tunnel's end, wherever it was spliced: its `tunnel closed` line
/// and its metrics. `bytes` and `ended_at` are the upstream direction's
/// (from the client), then the downstream's.
fn report(
    identity: &Identity,
    metrics: &TunnelMetrics,
    started: Instant,
    bytes: [u64; 2],
    ended_at: [Option<Instant>; 2],
    error: Option<(io::Error, &'static str)>,
) {
    let duration = started.elapsed();
    let closed_first = match (ended_at[0], ended_at[1]) {
        (Some(c), Some(b)) if b < c => "backend",
        (Some(_), _) => "client",
        (None, Some(_)) => "backend",
        (None, None) => "none",
    };
    let [upstream, downstream] = bytes;
    let mut bytes = [0; 2];
    bytes[CLIENT_TO_BACKEND] = upstream;
    bytes[BACKEND_TO_CLIENT] = downstream;
    // A client that just goes is ending the tunnel, not failing it.
    let client_left = matches!(&error, Some((error, "client")) if is_leaving(error));
    let error = error.filter(|_| !client_left);
    let ended_by = match &error {
        _ if client_left => "client",
        None => "peers",
        Some((error, side)) if is_unreachable(error) => {
            metrics.unreachable(&identity.route, side);
            match *side {
                "client" => "client_unreachable",
                _ => "backend_unreachable",
            }
        }
        Some(_) => "error",
    };
    tunnel_event!(
        tracing::Level::INFO,
        identity,
        from_client = bytes[CLIENT_TO_BACKEND],
        from_backend = bytes[BACKEND_TO_CLIENT],
        duration_ms = duration.as_millis() as u64,
        closed_first,
        ended_by,
        error = error.as_ref().map(|(error, _)| tracing::field::display(error)),
        "tunnel closed"
    );
    metrics.finish(duration, bytes, [0; 2], None);
}

/// A splice's own wakers, when both its sides are plain TCP.
fn wakes_for(client: &Side, backend: &Side) -> Option<Arc<Wakes>> {
    (client.is_tcp() && backend.is_tcp()).then(Wakes::new)
}

/// A connection that timed out: the peer stopped acknowledging, and
/// keepalive probes or `TCP_USER_TIMEOUT` ran out (both end in `ETIMEDOUT`;
/// the kernel does not say which). Only the kernel's own error counts: one
/// that wsgate's timers make up is theirs to name.
pub(crate) fn is_unreachable(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::ETIMEDOUT)
}

/// How a client that goes without a goodbye ends its connection: a TLS
/// connection closed without a `close_notify` alert (browsers never send
/// one; rustls reports an unexpected end of file), or a socket closed with
/// bytes still coming to it, which the kernel answers with a reset (a tab
/// closed right after its WebSocket's close handshake).
fn is_leaving(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

/// Splices until both directions have ended. An end of stream on one side
/// is passed on as a write shutdown (half-close) to the other, so a peer
/// that closes its sending side still receives what the other side has left
/// to say; an error on either side ends the tunnel. Bytes either side sent
/// right behind its handshake were read by hyper and go first. No buffer is
/// held while the tunnel is idle ([`pool`]).
///
/// Ends with one `tunnel closed` line (with the tunnel's [`Identity`]) and
/// the tunnel's metrics. A
/// splice does not read frames: which side ended first is the side whose
/// stream ended first, and close codes are not known.
impl Future for Splice {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let due = this.wakes.as_ref().map(|wakes| wakes.take_due(cx.waker()));
        // Without wakers of its own, anything may have woken the task.
        let is_due = |source: Waits| due.is_none_or(|due| due.has(source));
        if let Some(ticket) = &mut this.ticket {
            if is_due(Waits::Move)
                && poll_for(&this.wakes, Waits::Move, cx, |cx| ticket.poll_asked(cx)).is_ready()
                && this.moved()
            {
                return Poll::Ready(());
            }
        }
        let mut error = None;
        if is_due(Waits::Upstream) {
            let backend_closes_next = this.downstream.is_done() && this.backend.is_tcp();
            if let Poll::Ready(Err(e)) = poll_for(&this.wakes, Waits::Upstream, cx, |cx| {
                this.upstream
                    .poll_copy(cx, &mut this.client, &mut this.backend, backend_closes_next)
            }) {
                error = Some((e, if this.upstream.read_failed { "client" } else { "backend" }));
            }
        }
        if error.is_none() && is_due(Waits::Downstream) {
            let client_closes_next = this.upstream.is_done() && this.client.is_tcp();
            if let Poll::Ready(Err(e)) = poll_for(&this.wakes, Waits::Downstream, cx, |cx| {
                this.downstream
                    .poll_copy(cx, &mut this.backend, &mut this.client, client_closes_next)
            }) {
                error = Some((
                    e,
                    if this.downstream.read_failed {
                        "backend"
                    } else {
                        "client"
                    },
                ));
            }
        }
        if error.is_none() && !(this.upstream.is_done() && this.downstream.is_done()) {
            return Poll::Pending;
        }
        this.finish(error);
        Poll::Ready(())
    }
}
