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
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::pump::Pump;
use super::shared::{log_end, Settings, Shared, Side};
use crate::telemetry::TunnelMetrics;
use crate::tunnel::drain::DrainSignal;
use crate::tunnel::identity::Identity;

/// After one direction ended, how long the other gets to deliver its close
/// when no close handshake is under way.
const END_GRACE: Duration = Duration::from_secs(1);

/// Runs an inspected tunnel until both sides are done, then logs how it
/// ended and records it in `metrics`.
/// Each side comes as its reading and writing halves
/// ([`crate::tunnel::halves`]).
pub async fn run<CR, CW, BR, BW>(
    (client_read, client_write): (CR, CW),
    (backend_read, backend_write): (BR, BW),
    settings: Settings,
    drain: DrainSignal,
    metrics: TunnelMetrics,
    identity: Identity,
) where
    CR: AsyncRead + Unpin + Send + 'static,
    CW: AsyncWrite + Unpin + Send + 'static,
    BR: AsyncRead + Unpin + Send + 'static,
    BW: AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::new(Shared::new(settings, metrics, identity));
    let (to_backend, backend_inbox) = mpsc::channel(4);
    let (to_client, client_inbox) = mpsc::channel(4);
    let upstream = Pump::new(
        Side::Client,
        client_read,
        backend_write,
        backend_inbox,
        to_client,
        &shared,
    );
    let downstream = Pump::new(
        Side::Backend,
        backend_read,
        client_write,
        client_inbox,
        to_backend,
        &shared,
    );

    // A task per direction: a read on one side wakes only its own pump,
    // not the other one's clocks and signals too. Dropping the handles
    // (the tunnel's task cancelled) ends both.
    let span = tracing::Span::current();
    let mut upstream = AbortOnDropHandle::new(tokio::spawn(upstream.run(drain.clone()).instrument(span.clone())));
    let mut downstream = AbortOnDropHandle::new(tokio::spawn(downstream.run(drain).instrument(span)));
    tokio::select! {
        _ = &mut upstream => {
            let _ = tokio::time::timeout(end_grace(&shared), &mut downstream).await;
        }
        _ = &mut downstream => {
            let _ = tokio::time::timeout(end_grace(&shared), &mut upstream).await;
        }
    }
    drop((upstream, downstream));
    log_end(&shared);
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
