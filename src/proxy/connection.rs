//! One client connection: its stream wrapped for hyper and served, and
//! unwrapped again when a request on it becomes a tunnel.
//!
//! Wrap and unwrap sit together on purpose: the tunnel takes a plain TCP
//! connection back out of hyper's box by its exact type, so a layer added
//! here without its unwrap below would silently send every tunnel down the
//! slower boxed path. [`ClientStream`] names the streams a listener may hand
//! over, and [`unwrap`] knows each of them.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream as ServerTlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use super::framing::FramingGuard;
use super::http2;
use super::real_ip::TrustedProxies;
use super::Proxy;
use crate::http1;
use crate::refusal::RefusalReason;
use crate::telemetry::stats::OpenConnection;
use crate::tunnel::halves::{Prefixed, Side};
use crate::tunnel::linger;
use crate::ws::handshake;

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
/// over it. Each has its way of telling that the client speaks HTTP/2, and
/// its way into a tunnel's client side.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether the client speaks HTTP/2, given the first bytes it sent;
    /// `None` while those bytes could still begin either protocol.
    fn speaks_http2(&self, first: &[u8]) -> Option<bool>;

    /// The client's side of a tunnel, `rest` (read past the handshake) first.
    fn into_side(self, rest: Bytes) -> Side;
}

impl ClientStream for TcpStream {
    /// Prior knowledge (RFC 9113 §3.3): the connection opens with the
    /// HTTP/2 preface, which no HTTP/1.1 request line can (`PRI` is a
    /// method reserved for it, RFC 9113 §11.6).
    fn speaks_http2(&self, first: &[u8]) -> Option<bool> {
        let preface = http2::PREFACE;
        match first.len() >= preface.len() {
            true => Some(first.starts_with(preface)),
            false if preface.starts_with(first) => None,
            false => Some(false),
        }
    }

    /// Spliced as itself, without a lock or a box.
    fn into_side(self, rest: Bytes) -> Side {
        Side::Tcp(Prefixed::new(rest, self))
    }
}

impl ClientStream for ServerTlsStream<TcpStream> {
    /// ALPN chose `h2` (RFC 9113 §3.2); offered only when the listener has HTTP/2 on.
    fn speaks_http2(&self, _first: &[u8]) -> Option<bool> {
        Some(self.get_ref().1.alpn_protocol() == Some(http2::ALPN))
    }

    fn into_side(self, rest: Bytes) -> Side {
        Side::Other(Box::new(Prefixed::new(rest, self)))
    }
}

/// How much the first read of a connection takes: a WebSocket upgrade's
/// head fits many times over, and a head it cuts short goes to hyper.
const FIRST_READ: usize = 4096;

/// What hyper reads and writes: the client's stream (after the bytes of
/// its first read) behind the framing guard, read out before it closes.
type Wrapped<IO> = TokioIo<FramingGuard<Lingering<Prefixed<IO>>>>;

/// Serves HTTP/1.1, or HTTP/2 when `http2` is on and the client speaks it
/// (`ClientStream::speaks_http2`), on `io` until the client leaves or
/// `shutdown` fires, after which the requests in flight are finished and
/// the connection closed.
/// `shutdown` is the stop of the listener that accepted the connection: it
/// fires at server shutdown, and when a reload removes that listener.
/// Each request is served by the configuration current when it arrives, so
/// a keep-alive connection follows a reload.
///
/// The first read decides: the HTTP/2 preface, a whole WebSocket upgrade
/// (answered here without hyper: [`serve_upgrade`]), or anything else
/// (hyper's, with the bytes read so far handed to it first). The protocol
/// is decided here rather than by hyper-util's auto builder, which reads
/// the first bytes into a wrapper of its own: the framing guard belongs
/// under HTTP/1.1 alone, and an HTTP/1.1 tunnel's stream must come back out
/// of hyper by its exact type (`unwrap`).
pub async fn serve_connection<IO>(
    current: Arc<ArcSwap<Proxy>>,
    mut io: IO,
    info: ConnectionInfo,
    header_timeout: std::time::Duration,
    http2: Option<crate::config::Http2>,
    shutdown: CancellationToken,
) where
    IO: ClientStream,
{
    let started = tokio::time::Instant::now();
    let mut first = BytesMut::with_capacity(FIRST_READ);
    match tokio::time::timeout(header_timeout, read_first(&mut io, &mut first, http2.is_some())).await {
        Ok(Ok(())) if first.is_empty() => return,
        Ok(Ok(())) => {}
        Ok(Err(error)) => return debug!(%error, "client connection ended with an error"),
        Err(_) => {
            current.load().stats.count_refusal(RefusalReason::HandshakeTimeout);
            return debug!("nothing sent within the handshake timeout");
        }
    }
    if let Some(settings) = http2.filter(|_| io.speaks_http2(&first) == Some(true)) {
        let left = header_timeout.saturating_sub(started.elapsed());
        let io = Lingering::new(Prefixed::holding(first.freeze(), io), info.slot.clone());
        let stats = current.load().stats.clone();
        let max_header_list_size = settings
            .max_header_list_size
            .unwrap_or_else(|| u32::try_from(current.load().global.max_request_header_size).unwrap_or(u32::MAX));
        let handle = move |request| {
            let proxy = current.load_full();
            let info = info.clone();
            async move { proxy.handle(request, &info, None).instrument(request_span()).await }
        };
        let unserved = Box::pin(http2::serve(io, handle, left, settings, max_header_list_size, shutdown)).await;
        if unserved {
            stats.count_refusal(RefusalReason::HandshakeTimeout);
            debug!("no HTTP/2 request within the handshake timeout");
        }
        return;
    }
    let first = first.freeze();
    if let Some((request, head)) = http1::parse_bodiless_get(&first) {
        if handshake::wants_websocket(request.headers()) {
            let rest = first.slice(head..);
            return serve_upgrade(current.load_full(), io, request, rest, info).await;
        }
    }
    let io = Lingering::new(Prefixed::holding(first, io), info.slot.clone());
    // Boxed, as the HTTP/2 path is: a connection task is moved whole when
    // it is spawned, and its state is as large as its largest path.
    let first_head_by = started + header_timeout;
    Box::pin(serve_http1(current, io, info, header_timeout, first_head_by, shutdown)).await;
}

/// hyper's HTTP/1.1 on `io`, the connection's first bytes in it. The first
/// request's head must be whole by `first_head_by`, the deadline its first
/// read ran under; each later one within `header_timeout` (hyper's timer,
/// which would give the first head a whole `header_timeout` more from
/// here: a client that sent its first byte late, then trickled, would have
/// held the connection up to twice the timeout).
async fn serve_http1<IO: ClientStream>(
    current: Arc<ArcSwap<Proxy>>,
    io: Lingering<Prefixed<IO>>,
    info: ConnectionInfo,
    header_timeout: std::time::Duration,
    first_head_by: tokio::time::Instant,
    shutdown: CancellationToken,
) {
    let first_proxy = current.load_full();
    // An upgrade under way: hyper answers every request after a graceful
    // shutdown with `Connection: close`, which would turn its 101 into a
    // broken handshake, so shutdown waits for it (`upgrading` is cleared
    // when the answer is not a 101; after a 101 the connection is a tunnel).
    let (upgrading, mut upgrade_done) = tokio::sync::watch::channel(false);
    let upgrading = Arc::new(upgrading);
    let heads_seen = Arc::new(AtomicBool::new(false));
    let head_seen = heads_seen.clone();
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        head_seen.store(true, Ordering::Relaxed);
        let proxy = current.load_full();
        let info = info.clone();
        let upgrading = upgrading.clone();
        if request.headers().contains_key(http::header::UPGRADE) {
            upgrading.send_replace(true);
        }
        async move {
            let answer = proxy.handle(request, &info, None).instrument(request_span()).await;
            if answer.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                upgrading.send_replace(false);
            }
            Ok::<_, Infallible>(answer)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(first_proxy.global.max_request_header_size)
        // A client's end of stream while its request is answered does not
        // cut the answer short: a client may half-close after its request,
        // and the framing guard ends the stream behind the last request it
        // lets through, to answer a refused one after the others (as nginx
        // answers pipelined requests one by one).
        .half_close(true)
        .serve_connection(
            Wrapped::new(FramingGuard::new(io, first_proxy.global.max_request_header_size)),
            service,
        )
        .with_upgrades();
    tokio::pin!(connection);
    let first_head_due = tokio::time::sleep_until(first_head_by);
    tokio::pin!(first_head_due);
    let mut first_head_pending = true;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            () = first_head_due.as_mut(), if first_head_pending => {
                if !heads_seen.load(Ordering::Relaxed) {
                    return head_too_late(&first_proxy);
                }
                first_head_pending = false;
            }
            () = shutdown.cancelled() => {
                let upgraded = tokio::select! {
                    result = connection.as_mut() => Some(result),
                    _ = upgrade_done.wait_for(|upgrading| !*upgrading) => None,
                };
                break match upgraded {
                    Some(result) => result,
                    None => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
            }
        }
    };
    match result {
        Err(error) if error.is_timeout() => head_too_late(&first_proxy),
        Err(error) => debug!(%error, "client connection ended with an error"),
        Ok(()) => {}
    }
}

/// A connection ended for a request head not whole in time.
fn head_too_late(proxy: &Proxy) {
    proxy.stats.count_refusal(RefusalReason::HandshakeTimeout);
    debug!("request headers not complete within the handshake timeout");
}

/// The span of one request, whose fields dispatch fills in as it learns
/// them: at `debug` only, like the connection's (`conn`). At `info` the
/// lines carry these facts themselves ([`crate::telemetry::access`]).
fn request_span() -> tracing::Span {
    tracing::debug_span!(
        "request",
        route = tracing::field::Empty,
        upstream = tracing::field::Empty,
        server = tracing::field::Empty,
        attempts = tracing::field::Empty
    )
}

/// The client's side of a tunnel, out of hyper's box: plain TCP as itself
/// (spliced without a lock or a box), TLS boxed; either way out of the
/// [`FramingGuard`] it was read through, with the bytes read past the
/// handshake handed out first.
pub(super) fn unwrap(upgraded: Upgraded) -> Side {
    let upgraded = match upgraded.downcast::<Wrapped<TcpStream>>() {
        Ok(parts) => return unguarded(parts.read_buf, parts.io.into_inner()),
        Err(upgraded) => upgraded,
    };
    match upgraded.downcast::<Wrapped<ServerTlsStream<TcpStream>>>() {
        Ok(parts) => unguarded(parts.read_buf, parts.io.into_inner()),
        Err(upgraded) => Side::Other(Box::new(TokioIo::new(upgraded))),
    }
}

/// The stream out of its guard as a tunnel's side, what was read past the
/// handshake first: hyper's leftover, then any the guard had not handed
/// it, then any of the first read hyper had not taken.
fn unguarded<IO: ClientStream>(read_buf: Bytes, guard: FramingGuard<Lingering<Prefixed<IO>>>) -> Side {
    let (io, rest) = guard.into_parts();
    let (unread, io) = io.into_inner().into_parts();
    let prefix = match [read_buf, rest, unread]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => Bytes::new(),
        [one] => one.clone(),
        parts => parts.concat().into(),
    };
    io.into_side(prefix)
}

/// Reads the first bytes of a connection into `first` (a read returning
/// nothing leaves it empty): one read, or more while they are a strict
/// start of the HTTP/2 preface and HTTP/2 is on (a client sends the
/// preface in one write, but a segment may cut it).
async fn read_first<IO: ClientStream>(io: &mut IO, first: &mut BytesMut, http2: bool) -> io::Result<()> {
    loop {
        if io.read_buf(first).await? == 0 || !http2 || io.speaks_http2(first).is_some() {
            return Ok(());
        }
    }
}

/// The fast path: a connection whose first request is a whole WebSocket
/// upgrade, answered without hyper (nginx and HAProxy parse a head and
/// answer it without more machinery either). The request goes through
/// the same [`Proxy::handle`] as any other; only its 101 is written here,
/// after which the tunnel starts with `rest`, the bytes the client sent
/// behind its head. Any other answer closes the connection, as a refused
/// upgrade does on hyper's path.
async fn serve_upgrade<IO: ClientStream>(
    proxy: Arc<Proxy>,
    mut io: IO,
    request: http::Request<()>,
    rest: Bytes,
    info: ConnectionInfo,
) {
    let mut accepted = None;
    // Boxed: the request's future is the largest part of this one, and a
    // connection task is moved whole when it is spawned.
    let answer = Box::pin(
        proxy
            .handle(request, &info, Some(&mut accepted))
            .instrument(request_span()),
    )
    .await;
    let (parts, body) = answer.into_parts();
    match accepted {
        Some(accepted) if parts.status == http::StatusCode::SWITCHING_PROTOCOLS => {
            let head = http1::response_head(parts.status, &parts.headers, None);
            match io.write_all(&head).await {
                Ok(()) => proxy.start_tunnel(accepted, io.into_side(rest)),
                Err(error) => debug!(%error, "upgrade did not complete"),
            }
        }
        _ => {
            // A short body of wsgate's own, or a backend's refusal read whole.
            let body = body.collect().await.map(|body| body.to_bytes()).unwrap_or_default();
            let mut answer = http1::response_head(parts.status, &parts.headers, Some(body.len()));
            answer.extend_from_slice(&body);
            // Read out before it closes, as hyper's path does.
            let mut io = Lingering::new(io, info.slot.clone());
            if let Err(error) = io.write_all(&answer).await {
                debug!(%error, "client connection ended with an error");
            }
        }
    }
}

/// How long a connection hyper has ended is read out for, at most
/// ([`Lingering`]), and how many bytes at most: nginx's `lingering_time`
/// is 30 s; a client still sending when its answer arrives needs only the
/// time to finish that send and read the answer.
const HTTP_LINGER: Duration = Duration::from_secs(5);
const HTTP_LINGER_BYTES: u64 = 16 << 20;

/// The client's stream, read out before it closes (a lingering close,
/// [`linger`]). When hyper ends a connection the client has not ended (an
/// error answer while the request's body still arrives, a refused upgrade
/// with frames behind it, a keep-alive connection at shutdown), the socket
/// is handed on dropping to a task that shuts down its writes and reads and
/// drops what the client still sends, for [`HTTP_LINGER`] or
/// [`HTTP_LINGER_BYTES`] at most, so the client reads its answer instead
/// of a reset. The connection's slot under `max_connections` is held until
/// then: the socket is still open. A tunnel takes the stream out first
/// ([`Lingering::into_inner`]) and closes it its own way.
struct Lingering<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// `None` only once taken out or handed on.
    io: Option<IO>,
    /// The client ended its stream (or it failed): nothing left to read.
    ended: bool,
    slot: Arc<ConnectionSlot>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<IO> {
    fn new(io: IO, slot: Arc<ConnectionSlot>) -> Self {
        Lingering {
            io: Some(io),
            ended: false,
            slot,
        }
    }

    fn into_inner(mut self) -> IO {
        // Present from `new` until here or the drop: nothing else takes it.
        self.io.take().expect("the stream is taken out once")
    }

    fn io(&mut self) -> io::Result<Pin<&mut IO>> {
        match self.io.as_mut() {
            Some(io) => Ok(Pin::new(io)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<IO> {
    fn drop(&mut self) {
        let Some(mut io) = self.io.take() else { return };
        if self.ended {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let slot = self.slot.clone();
        runtime.spawn(async move {
            let _slot = slot;
            let deadline = tokio::time::Instant::now() + HTTP_LINGER;
            if tokio::time::timeout_at(deadline, io.shutdown()).await.is_err() {
                return;
            }
            let mut dropped = 0;
            let (how, _) = linger::discard(
                &mut io,
                || deadline,
                |bytes| {
                    dropped += bytes.len() as u64;
                    dropped >= HTTP_LINGER_BYTES
                },
            )
            .await;
            debug!(?how, dropped, "lingering close of an HTTP connection ended");
        });
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = match this.io() {
            Ok(io) => std::task::ready!(io.poll_read(cx, buf)),
            Err(error) => Err(error),
        };
        if result.is_err() || (buf.filled().len() == before && buf.remaining() > 0) {
            this.ended = true;
        }
        Poll::Ready(result)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => io.poll_write(cx, data),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => io.poll_flush(cx),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => io.poll_shutdown(cx),
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}
