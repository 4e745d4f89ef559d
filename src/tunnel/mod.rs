//! The WebSocket tunnel: after both 101s, bytes flow unchanged both ways.
//!
//! [`halves`] takes the two upgraded connections apart, one half per
//! direction; [`copy`] moves one direction's bytes through a buffer
//! [`pool`] lends only while they move.

pub mod copy;
pub mod halves;
pub mod pool;

use std::future::poll_fn;
use std::task::Poll;
use std::time::Instant;

use hyper::upgrade::Upgraded;
use tracing::info;

use copy::Copy;

use crate::telemetry::metrics::{BACKEND_TO_CLIENT, CLIENT_TO_BACKEND};
use crate::telemetry::TunnelMetrics;

/// Splices the client's and the backend's upgraded connections until both
/// directions have ended. An end of stream on one side is passed on as a
/// write shutdown (half-close) to the other, so a peer that closes its
/// sending side still receives what the other side has left to say; an error
/// on either side ends the tunnel. Bytes either side sent right behind its
/// handshake were read by hyper and go first. No buffer is held while the
/// tunnel is idle ([`pool`]).
///
/// Ends with one `tunnel closed` line (its span carries client, listener,
/// route, upstream, server and subprotocol) and the tunnel's metrics. A
/// splice does not read frames: which side ended first is the side whose
/// stream ended first, and close codes are not known.
pub async fn splice(client: Upgraded, backend: Upgraded, metrics: TunnelMetrics) {
    let started = Instant::now();
    let (client_read, client_write) = halves::client(client);
    let (backend_read, backend_write) = halves::backend(backend);
    let mut upstream = Copy::new(client_read, backend_write);
    let mut downstream = Copy::new(backend_read, client_write);
    let result = poll_fn(|cx| {
        if let Poll::Ready(Err(error)) = upstream.poll_copy(cx) {
            return Poll::Ready(Err(error));
        }
        if let Poll::Ready(Err(error)) = downstream.poll_copy(cx) {
            return Poll::Ready(Err(error));
        }
        if upstream.is_done() && downstream.is_done() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await;
    let duration = started.elapsed();
    let closed_first = match (upstream.ended_at, downstream.ended_at) {
        (Some(c), Some(b)) if b < c => "backend",
        (Some(_), _) => "client",
        (None, Some(_)) => "backend",
        (None, None) => "none",
    };
    let mut bytes = [0; 2];
    bytes[CLIENT_TO_BACKEND] = upstream.bytes;
    bytes[BACKEND_TO_CLIENT] = downstream.bytes;
    let error = result.err();
    info!(
        from_client = bytes[CLIENT_TO_BACKEND],
        from_backend = bytes[BACKEND_TO_CLIENT],
        duration_ms = duration.as_millis() as u64,
        closed_first,
        ended_by = if error.is_some() { "error" } else { "peers" },
        error = error.as_ref().map(tracing::field::display),
        "tunnel closed"
    );
    metrics.finish(duration, bytes, [0; 2], None);
}
