//! One client connection: its stream wrapped for hyper and served, and
//! unwrapped again when a request on it becomes a tunnel.
//!
//! Wrap and unwrap sit together on purpose: the tunnel takes a plain TCP
//! connection back out of hyper's box by its exact type, so a layer added
//! here without its unwrap below would silently send every tunnel down the
//! slower boxed path. [`ClientStream`] names the streams a listener may hand
//! over, and [`unwrap`] knows each of them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream as ServerTlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use super::framing::FramingGuard;
use super::real_ip::TrustedProxies;
use super::Proxy;
use crate::refusal::RefusalReason;
use crate::telemetry::stats::OpenConnection;
use crate::tunnel::halves::{Prefixed, Side};

/// Where a connection came from.
#[derive(Clone)]
pub struct ConnectionInfo {
    /// The listener that accepted it, by name.
    pub listener: Arc<str>,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client: the peer, or the address in a trusted PROXY protocol header.
    pub client: SocketAddr,
    /// When the peer is a trusted proxy that reports clients in forwarding
    /// headers: the ranges to walk those headers with, per request.
    pub forwarded_by: Option<Arc<TrustedProxies>>,
    pub tls: bool,
    /// The connection's place under `max_connections`; a tunnel holds a
    /// clone, so the place is free only when the connection and its tunnel
    /// have both ended.
    pub slot: Arc<ConnectionSlot>,
}

/// Held for as long as a client connection (or the tunnel it became) is open.
pub struct ConnectionSlot {
    pub(crate) _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    pub(crate) _open: OpenConnection,
}

/// The streams a listener hands to [`serve_connection`]: plain TCP, or TLS
/// over it. Each has its way back out of hyper's box in [`unwrap`].
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl ClientStream for TcpStream {}
impl ClientStream for ServerTlsStream<TcpStream> {}

/// What hyper reads and writes: the client's stream behind the framing guard.
type Wrapped<IO> = TokioIo<FramingGuard<IO>>;

/// Serves HTTP/1.1 on `io` until the client leaves or `shutdown` fires,
/// after which the request in flight is finished and the connection closed.
/// `shutdown` is the stop of the listener that accepted the connection: it
/// fires at server shutdown, and when a reload removes that listener.
/// Each request is served by the configuration current when it arrives, so
/// a keep-alive connection follows a reload.
pub async fn serve_connection<IO>(
    current: Arc<ArcSwap<Proxy>>,
    io: IO,
    info: ConnectionInfo,
    header_timeout: std::time::Duration,
    shutdown: CancellationToken,
) where
    IO: ClientStream,
{
    let first = current.load_full();
    let service = service_fn(move |request| {
        let proxy = current.load_full();
        let info = info.clone();
        let span = tracing::info_span!(
            "request",
            route = tracing::field::Empty,
            upstream = tracing::field::Empty,
            server = tracing::field::Empty,
            attempts = tracing::field::Empty
        );
        async move { Ok::<_, Infallible>(proxy.handle(request, &info).instrument(span).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(first.global.max_request_header_size)
        // A client's end of stream while its request is answered does not
        // cut the answer short: a client may half-close after its request,
        // and the framing guard ends the stream behind the last request it
        // lets through, to answer a refused one after the others (as nginx
        // answers pipelined requests one by one).
        .half_close(true)
        .serve_connection(
            Wrapped::new(FramingGuard::new(io, first.global.max_request_header_size)),
            service,
        )
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    match result {
        Err(error) if error.is_timeout() => {
            first.stats.count_refusal(RefusalReason::HandshakeTimeout);
            debug!("request headers not complete within the handshake timeout");
        }
        Err(error) => debug!(%error, "client connection ended with an error"),
        Ok(()) => {}
    }
}

/// The client's side of a tunnel, out of hyper's box: plain TCP as itself
/// (spliced without a lock or a box), TLS boxed; either way out of the
/// [`FramingGuard`] it was read through, with the bytes read past the
/// handshake handed out first.
pub(super) fn unwrap(upgraded: Upgraded) -> Side {
    let upgraded = match upgraded.downcast::<Wrapped<TcpStream>>() {
        Ok(parts) => {
            let (io, prefix) = unguarded(parts.read_buf, parts.io.into_inner());
            return Side::Tcp(Prefixed::new(prefix, io));
        }
        Err(upgraded) => upgraded,
    };
    match upgraded.downcast::<Wrapped<ServerTlsStream<TcpStream>>>() {
        Ok(parts) => {
            let (io, prefix) = unguarded(parts.read_buf, parts.io.into_inner());
            Side::Other(Box::new(Prefixed::new(prefix, io)))
        }
        Err(upgraded) => Side::Other(Box::new(TokioIo::new(upgraded))),
    }
}

/// The stream out of its guard, and what was read past the handshake:
/// hyper's leftover first, then any the guard had not handed it.
fn unguarded<IO>(read_buf: Bytes, guard: FramingGuard<IO>) -> (IO, Bytes) {
    let (io, rest) = guard.into_parts();
    let prefix = match (read_buf.is_empty(), rest.is_empty()) {
        (_, true) => read_buf,
        (true, false) => rest,
        (false, false) => [read_buf, rest].concat().into(),
    };
    (io, prefix)
}
