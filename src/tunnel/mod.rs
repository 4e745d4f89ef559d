//! The WebSocket tunnel: after both 101s, bytes flow unchanged both ways.
//! [`halves`] takes the two upgraded connections apart for a pump per direction.

pub mod halves;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::info;

use crate::telemetry::metrics::{BACKEND_TO_CLIENT, CLIENT_TO_BACKEND};
use crate::telemetry::TunnelMetrics;

/// Splices the client's and the backend's upgraded connections until both
/// directions have ended. An end of stream on one side is passed on as a
/// write shutdown (half-close) to the other, so a peer that closes its
/// sending side still receives what the other side has left to say; an error
/// on either side ends the tunnel. Bytes either side sent right behind its
/// handshake are inside `Upgraded` and go first.
///
/// Ends with one `tunnel closed` line (its span carries client, listener,
/// route, upstream, server and subprotocol) and the tunnel's metrics. A
/// splice does not read frames: which side ended first is the side whose
/// stream ended first, and close codes are not known.
pub async fn splice(client: Upgraded, backend: Upgraded, metrics: TunnelMetrics) {
    let started = Instant::now();
    let mut client = Counted::new(TokioIo::new(client));
    let mut backend = Counted::new(TokioIo::new(backend));
    let result = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
    let duration = started.elapsed();
    let closed_first = match (client.ended, backend.ended) {
        (Some(c), Some(b)) if b < c => "backend",
        (Some(_), _) => "client",
        (None, Some(_)) => "backend",
        (None, None) => "none",
    };
    let mut bytes = [0; 2];
    bytes[CLIENT_TO_BACKEND] = client.read;
    bytes[BACKEND_TO_CLIENT] = backend.read;
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

/// One side of a splice, counting what was read from it and noting when its
/// stream ended (end of stream, or an error either way).
struct Counted<T> {
    io: T,
    read: u64,
    ended: Option<Instant>,
}

impl<T> Counted<T> {
    fn new(io: T) -> Counted<T> {
        Counted {
            io,
            read: 0,
            ended: None,
        }
    }

    fn end(&mut self) {
        self.ended.get_or_insert_with(Instant::now);
    }

    fn note<R>(&mut self, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if let Poll::Ready(Err(_)) = polled {
            self.end();
        }
        polled
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = buf.filled().len() - before;
            if n == 0 && buf.remaining() > 0 {
                this.end();
            }
            this.read += n as u64;
        }
        this.note(polled)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, data);
        this.note(polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.note(polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.note(polled)
    }
}
