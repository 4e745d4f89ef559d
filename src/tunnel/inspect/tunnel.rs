//! A tunnel that reads the frames as they pass (`[route.inspect]`).
//!
//! Two `Pump`s, one per direction. Each reads its source, follows the
//! frame boundaries with a [`FrameReader`](crate::ws::frame::FrameReader), and
//! writes the same bytes to its destination, batched per read: nothing is
//! re-framed or buffered beyond one read. A pump is the only writer to its
//! destination, so the frames wsgate sends itself (pings, close frames) go
//! out there only between frames; a frame for the other side is handed to
//! the other pump as an order.
//!
//! What both pumps read and write lives in `shared`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::pump::{Pump, PumpEnd};
use super::saved::Saved;
use super::shared::{log_end, Settings, Shared, Side};
use crate::telemetry::TunnelMetrics;
use crate::tunnel::drain::DrainSignal;
use crate::tunnel::halves::{LetGo, Movable};
use crate::tunnel::identity::Identity;
use crate::tunnel::relocate::moved::{MovedSocket, MovedState};
use crate::tunnel::relocate::{MovedTunnel, Relocation, Undecided};

/// After one direction ended, how long the other gets to deliver its close
/// when no close handshake is under way.
const END_GRACE: Duration = Duration::from_secs(1);

/// Where an inspected tunnel starts: new, or where a description of it
/// left it (moved from another process, or back from a move that did not
/// happen).
pub enum Start {
    Fresh(Settings),
    Moved { saved: Box<Saved>, age: Duration },
}

/// Runs an inspected tunnel until both sides are done, then logs how it
/// ended and records it in `metrics`. Each side comes as its reading and
/// writing halves ([`crate::tunnel::halves`]). With `relocation`, a tunnel
/// whose two sides are plain TCP moves to the next process when a binary
/// upgrade asks, and this returns once it went.
#[allow(clippy::too_many_arguments, reason = "the tunnel's parts, each needed once")]
pub async fn run<CR, CW, BR, BW>(
    mut client: (CR, CW),
    mut backend: (BR, BW),
    mut start: Start,
    drain: DrainSignal,
    mut metrics: TunnelMetrics,
    mut identity: Identity,
    mut relocation: Option<Arc<Relocation>>,
) where
    CR: AsyncRead + Movable + Unpin + Send + 'static,
    CW: AsyncWrite + LetGo + Unpin + Send + 'static,
    BR: AsyncRead + Movable + Unpin + Send + 'static,
    BW: AsyncWrite + LetGo + Unpin + Send + 'static,
{
    if client.0.movable().is_none() || backend.0.movable().is_none() {
        relocation = None;
    }
    loop {
        let Some(stopped) = drive(
            client,
            backend,
            start,
            drain.clone(),
            metrics,
            identity,
            relocation.take(),
        )
        .await
        else {
            return;
        };
        let Stopped {
            client: c,
            backend: b,
            saved,
            age,
            metrics: m,
            identity: i,
            relocation: r,
            moving: _moving,
        } = stopped;
        let tunnel = match describe(&c.0, &b.0, &i, saved, age) {
            Ok(tunnel) => tunnel,
            Err((error, saved)) => {
                tracing::warn!(%error, "tunnel cannot move: it stays");
                (client, backend, metrics, identity) = (c, b, m, i);
                start = Start::Moved { saved, age };
                continue;
            }
        };
        match r.hand_over(tunnel) {
            Ok(()) => {
                tracing::debug!("tunnel handed over");
                c.1.let_go();
                b.1.let_go();
                return;
            }
            Err(tunnel) => {
                // The upgrade is over: go on here, where the tunnel stopped.
                let MovedState::Inspected(saved) = tunnel.state else {
                    return;
                };
                (client, backend, metrics, identity) = (c, b, m, i);
                start = Start::Moved { saved, age };
            }
        }
    }
}

/// Both directions stopped to move.
struct Stopped<CR, CW, BR, BW> {
    client: (CR, CW),
    backend: (BR, BW),
    saved: Box<Saved>,
    age: Duration,
    metrics: TunnelMetrics,
    identity: Identity,
    relocation: Arc<Relocation>,
    /// The two directions' places as undecided, until the tunnel went.
    moving: [Option<Undecided>; 2],
}

/// The tunnel's two pumps, until they end (`None`) or stop together to move.
async fn drive<CR, CW, BR, BW>(
    (client_read, client_write): (CR, CW),
    (backend_read, backend_write): (BR, BW),
    start: Start,
    drain: DrainSignal,
    metrics: TunnelMetrics,
    identity: Identity,
    relocation: Option<Arc<Relocation>>,
) -> Option<Stopped<CR, CW, BR, BW>>
where
    CR: AsyncRead + Unpin + Send + 'static,
    CW: AsyncWrite + Unpin + Send + 'static,
    BR: AsyncRead + Unpin + Send + 'static,
    BW: AsyncWrite + Unpin + Send + 'static,
{
    let (shared, upstream, downstream, held) = match start {
        Start::Fresh(settings) => {
            let shared = Arc::new(Shared::new(settings, metrics, identity));
            let upstream = Pump::new(Side::Client, client_read, backend_write, &shared);
            let downstream = Pump::new(Side::Backend, backend_read, client_write, &shared);
            (shared, upstream, downstream, [Vec::new(), Vec::new()])
        }
        Start::Moved { saved, age } => {
            let shared = Arc::new(Shared::restore(&saved, age, metrics, identity));
            let [from_client, from_backend] = saved.pumps;
            let held = [from_client.held.clone(), from_backend.held.clone()];
            let upstream = Pump::resume(Side::Client, (client_read, backend_write), &shared, from_client);
            let downstream = Pump::resume(Side::Backend, (backend_read, client_write), &shared, from_backend);
            (shared, upstream, downstream, held)
        }
    };
    let tickets = [
        relocation.as_ref().map(|r| r.ticket()),
        relocation.as_ref().map(|r| r.ticket()),
    ];
    let [up_ticket, down_ticket] = tickets;
    let [up_held, down_held] = held;

    // A task per direction: a read on one side wakes only its own pump,
    // not the other one's clocks and signals too. Dropping the handles
    // (the tunnel's task cancelled) ends both.
    let span = tracing::Span::current();
    let drain_up = drain.clone();
    let (upstream, downstream) = (Box::new(upstream), Box::new(downstream));
    let mut upstream = AbortOnDropHandle::new(tokio::spawn(
        async move { upstream.run(drain_up, up_ticket, &up_held).await }.instrument(span.clone()),
    ));
    let mut downstream = AbortOnDropHandle::new(tokio::spawn(
        async move { downstream.run(drain, down_ticket, &down_held).await }.instrument(span),
    ));
    let (up, down) = tokio::select! {
        up = &mut upstream => {
            let down = tokio::time::timeout(end_grace(&shared), &mut downstream).await;
            (up.ok(), down.ok().and_then(Result::ok))
        }
        down = &mut downstream => {
            let up = tokio::time::timeout(end_grace(&shared), &mut upstream).await;
            (up.ok().and_then(Result::ok), down.ok())
        }
    };
    drop((upstream, downstream));
    match (up, down, relocation) {
        (Some(PumpEnd::Parked(up)), Some(PumpEnd::Parked(down)), Some(relocation)) => {
            let age = shared.age();
            let saved = Box::new(shared.save([up.saved, down.saved]));
            // Both pumps are done with it: the tunnel's own parts come back.
            let Ok(shared) = Arc::try_unwrap(shared) else {
                return None;
            };
            let (metrics, identity) = shared.into_parts();
            Some(Stopped {
                moving: [up.moving, down.moving],
                client: (up.src, down.dst),
                backend: (down.src, up.dst),
                saved,
                age,
                metrics,
                identity,
                relocation,
            })
        }
        _ => {
            log_end(&shared);
            None
        }
    }
}
/// The tunnel written down, with copies of its two sockets; the saved
/// state back if a socket cannot be copied (out of descriptors).
fn describe(
    client: &impl Movable,
    backend: &impl Movable,
    identity: &Identity,
    saved: Box<Saved>,
    age: Duration,
) -> Result<MovedTunnel, (std::io::Error, Box<Saved>)> {
    let side = |side: &dyn Movable| -> std::io::Result<MovedSocket> {
        let (fd, unread) = side.movable().ok_or(std::io::ErrorKind::Unsupported)?;
        Ok(MovedSocket {
            socket: fd.try_clone_to_owned()?.into(),
            unread: bytes::Bytes::copy_from_slice(unread),
        })
    };
    let sockets = side(client).and_then(|client| Ok((client, side(backend)?)));
    match sockets {
        Ok((client, backend)) => Ok(MovedTunnel {
            identity: identity.clone(),
            age,
            client,
            backend,
            state: MovedState::Inspected(saved),
            stopped_at: crate::tunnel::clock::monotonic_now(),
        }),
        Err(error) => Err((error, saved)),
    }
}

/// How long the direction still running gets once the other has ended:
/// [`END_GRACE`], or, while a close handshake is under way, time for it
/// (`close_timeout`) and then for the lingering close that reads its
/// source out ([`crate::tunnel::linger`], another `close_timeout`); each
/// pump keeps to those clocks itself, this only bounds one that cannot.
fn end_grace(shared: &Shared) -> Duration {
    let close_timeout = shared.settings.inspect.close_timeout;
    match shared.state().close_started {
        Some(_) => END_GRACE.max(close_timeout * 2),
        None => END_GRACE,
    }
}
