//! The WebSocket tunnel: after both 101s, bytes flow unchanged both ways.

use std::time::Instant;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tracing::{debug, info};

/// Splices the client's and the backend's upgraded connections until both
/// directions have ended. An end of stream on one side is passed on as a
/// write shutdown (half-close) to the other, so a peer that closes its
/// sending side still receives what the other side has left to say; an error
/// on either side ends the tunnel. Bytes either side sent right behind its
/// handshake are inside `Upgraded` and go first.
pub async fn splice(client: Upgraded, backend: Upgraded) {
    let started = Instant::now();
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        Ok((from_client, from_backend)) => info!(
            from_client,
            from_backend,
            duration_ms = started.elapsed().as_millis() as u64,
            "tunnel closed"
        ),
        Err(error) => debug!(%error, duration_ms = started.elapsed().as_millis() as u64, "tunnel ended by an error"),
    }
}
