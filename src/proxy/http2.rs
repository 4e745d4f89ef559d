//! A client connection served over HTTP/2 (RFC 9113): each stream is one
//! request, answered by the same dispatch as an HTTP/1.1 one; an extended
//! CONNECT (RFC 8441) opens a WebSocket (`super::websocket`).
//!
//! hyper's HTTP/2 server (the h2 crate) enforces the protocol's own limits:
//! streams past SETTINGS_MAX_CONCURRENT_STREAMS are refused with
//! `REFUSED_STREAM`, a header block past SETTINGS_MAX_HEADER_LIST_SIZE ends
//! the stream or the connection, streams reset before they are served past
//! [`MAX_PENDING_RESET_STREAMS`] end the connection with GOAWAY
//! `ENHANCE_YOUR_CALM` (the rapid reset attack, CVE-2023-44487). What it
//! does not do is here: the deadline for the first request, and the idle
//! timeout of a connection with no stream open.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::body::ProxyBody;
use crate::config::Http2;

/// RFC 9113 §3.4: the first bytes of every HTTP/2 connection, client side.
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// RFC 9113 §3.2: HTTP/2 over TLS is chosen by ALPN with this name.
pub(super) const ALPN: &[u8] = b"h2";

/// Streams a client may reset before they are served, at once, before its
/// connection is closed with GOAWAY `ENHANCE_YOUR_CALM` (h2's default: 20).
/// A stream reset before it is served has cost the proxy its headers'
/// decoding and nothing else; more of them than a browser cancelling page
/// loads ever has in flight is an attack (CVE-2023-44487).
pub const MAX_PENDING_RESET_STREAMS: usize = 20;
/// Streams the proxy itself may reset for a client's protocol errors
/// before the connection is closed (hyper's default).
const MAX_LOCAL_RESET_STREAMS: usize = 1024;
/// Flow-control windows (RFC 9113 §5.2): what a client may send ahead of
/// what its backends read. The stream's window bounds one stalled
/// WebSocket (a backend that stops reading); the connection's, sixteen of
/// them, is the most a connection makes the proxy hold, so one stalled
/// stream holds back only itself.
const STREAM_WINDOW: u32 = 128 * 1024;
const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;

/// Serves HTTP/2 on `io` until the client leaves, `shutdown` fires
/// (GOAWAY, then the streams in flight are finished: tunnels end by their
/// own drain), no stream has been open for `settings.idle_timeout`, or no
/// request arrives within `header_timeout` of the connection's start.
/// `handle` answers each request, as for HTTP/1.1. Returns `true` when the
/// connection ended for want of a first request.
pub(super) async fn serve<IO, H, F>(
    io: IO,
    handle: H,
    header_timeout: Duration,
    settings: Http2,
    max_header_list_size: u32,
    shutdown: CancellationToken,
) -> bool
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let streams = Arc::new(watch::Sender::new(OpenStreams::default()));
    let service = {
        let streams = streams.clone();
        service_fn(move |mut request: Request<Incoming>| {
            let open = StreamOpen::new(&streams);
            request.extensions_mut().insert(open.clone());
            let answer = handle(request);
            async move {
                // Open until the answer's body has gone.
                let held = move |frame| {
                    let _open = &open;
                    frame
                };
                Ok::<_, Infallible>(answer.await.map(|body| body.map_frame(held).boxed()))
            }
        })
    };
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(max_header_list_size)
        .max_pending_accept_reset_streams(MAX_PENDING_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_RESET_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let idle = idle(streams.subscribe(), header_timeout, settings.idle_timeout);
    tokio::pin!(idle);
    let mut never_served = false;
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        unserved = &mut idle => {
            never_served = unserved;
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        debug!(%error, "HTTP/2 client connection ended with an error");
    }
    never_served
}

/// How many of a connection's streams are open, and whether one ever was.
#[derive(Default, Clone, Copy)]
struct OpenStreams {
    open: usize,
    served: bool,
}

/// Resolves when the connection has had no stream open for `idle_timeout`
/// (or for `header_timeout` before its first): `true` when no stream ever opened.
async fn idle(mut streams: watch::Receiver<OpenStreams>, header_timeout: Duration, idle_timeout: Duration) -> bool {
    loop {
        let Ok(state) = streams.wait_for(|s| s.open == 0).await.map(|s| *s) else {
            return false;
        };
        let timeout = if state.served { idle_timeout } else { header_timeout };
        if tokio::time::timeout(timeout, streams.wait_for(|s| s.open > 0))
            .await
            .is_err()
        {
            return !state.served;
        }
    }
}

/// One open stream: held by its request (a tunnel takes it along, and
/// holds it for its life) and by its answer's body; the stream counts as
/// open until the last of them is dropped.
#[derive(Clone)]
pub(super) struct StreamOpen {
    _count: Arc<StreamCount>,
}

struct StreamCount(Arc<watch::Sender<OpenStreams>>);

impl StreamOpen {
    fn new(streams: &Arc<watch::Sender<OpenStreams>>) -> StreamOpen {
        streams.send_modify(|s| {
            s.open += 1;
            s.served = true;
        });
        StreamOpen {
            _count: Arc::new(StreamCount(streams.clone())),
        }
    }
}

impl Drop for StreamCount {
    fn drop(&mut self) {
        self.0.send_modify(|s| s.open -= 1);
    }
}
