//! The access log of plain HTTP requests: one `request` line each, written
//! when the response body has been sent (or abandoned), so it carries the
//! bytes and the whole duration, not only the time to the response head.
//! Tunnels log their own `tunnel closed` line (see [`crate::tunnel`] and
//! [`crate::tunnel::inspect::tunnel`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Method;
use hyper::body::{Body, Frame, SizeHint};
use tracing::{info, Span};

use crate::body::ProxyBody;

/// What a request's line says besides what its span carries (route,
/// upstream, server, attempts; listener and client from the connection's).
pub(crate) struct RequestLine {
    /// `http/1.1` or `h2` (the ALPN names).
    pub protocol: &'static str,
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub started: Instant,
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
        let line = &self.line;
        self.span.in_scope(|| {
            info!(
                method = %line.method,
                path = %line.path,
                protocol = line.protocol,
                status = line.status,
                duration_ms = line.started.elapsed().as_millis() as u64,
                bytes = self.bytes,
                complete,
                "request"
            )
        });
    }
}
