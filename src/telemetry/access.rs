//! The access log of plain HTTP requests: one `request` line each, written
//! when the response body has been sent (or abandoned), so it carries the
//! bytes and the whole duration, not only the time to the response head.
//! Tunnels log their own `tunnel closed` line (see [`crate::tunnel`] and
//! [`crate::tunnel::inspect::tunnel`]).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Method;
use hyper::body::{Body, Frame, SizeHint};
use tracing::{info, Span};

use crate::body::ProxyBody;

/// What a request's line says. It carries the connection's and the
/// route's facts itself, as a tunnel's line does: a span per connection and
/// per request would cost every handshake its allocations, and the
/// registry keeps a slot and a field map for as many spans as were ever
/// open at once (2 MiB after a surge of 9,000 sockets). At `debug` the
/// spans are there too.
pub(crate) struct RequestLine {
    /// `http/1.1` or `h2` (the ALPN names).
    pub protocol: &'static str,
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub started: Instant,
    pub client: Client,
    pub listener: Arc<str>,
    /// `None` when no route matched.
    pub route: Option<Arc<str>>,
    /// `None` when no server was reached.
    pub served: Option<Served>,
    /// A refused WebSocket upgrade (no body is counted).
    pub websocket: bool,
}

/// The client as the logs name it.
#[derive(Debug, Clone, Copy)]
pub enum Client {
    /// The TCP peer (or the address a trusted PROXY protocol header gave).
    Direct(SocketAddr),
    /// Named by a trusted proxy's forwarding header: no port.
    Forwarded(IpAddr),
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::Direct(address) => address.fmt(f),
            Client::Forwarded(ip) => ip.fmt(f),
        }
    }
}

/// Which server took a request, and after how many tries.
#[derive(Clone)]
pub(crate) struct Served {
    pub upstream: Arc<str>,
    pub server: Arc<str>,
    pub attempts: u32,
}

impl RequestLine {
    /// Logs the line; `body` is the bytes sent and whether that was all.
    pub(crate) fn log(&self, body: Option<(u64, bool)>) {
        let served = self.served.as_ref();
        info!(
            client = %self.client,
            listener = &*self.listener,
            route = self.route.as_deref(),
            upstream = served.map(|s| &*s.upstream),
            server = served.map(|s| &*s.server),
            attempts = served.map(|s| s.attempts),
            method = %self.method,
            path = %self.path,
            protocol = self.protocol,
            status = self.status,
            websocket = self.websocket.then_some(true),
            duration_ms = self.started.elapsed().as_millis() as u64,
            bytes = body.map(|(bytes, _)| bytes),
            complete = body.map(|(_, complete)| complete),
            "request"
        )
    }
}

/// A response body that counts what it sends and logs the request's line
/// once hyper is done with it.
pub(crate) struct LoggedBody {
    inner: ProxyBody,
    bytes: u64,
    finished: bool,
    line: RequestLine,
    span: Span,
}

impl LoggedBody {
    /// Wraps `inner`; the line is logged in the current span (the request's).
    pub(crate) fn new(inner: ProxyBody, line: RequestLine) -> LoggedBody {
        LoggedBody {
            inner,
            bytes: 0,
            finished: false,
            line,
            span: Span::current(),
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.finished = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // An empty body may never be polled; it was still sent whole.
        let complete = self.finished || self.inner.is_end_stream();
        self.span.in_scope(|| self.line.log(Some((self.bytes, complete))));
    }
}
