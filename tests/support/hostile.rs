//! Hostile HTTP: exact bytes written in one go, everything the proxy sends
//! back read until it closes the connection, and a backend that reads every
//! request to the end of its body before it answers and keeps every byte it
//! received, so a test can tell "nothing arrived", "an aborted request
//! arrived" and "a complete request arrived" apart.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{header_value, parse_response, read_until_closed, tcp_connect, within, SeenRequest};

/// How long the proxy may take to close a connection it refused.
pub const CLOSE_BOUND: Duration = Duration::from_secs(5);

/// Everything the proxy sent on one connection, the first response parsed.
#[derive(Debug)]
pub struct Reply {
    /// The first response's status; `None` when nothing parseable came back.
    pub status: Option<u16>,
    /// The first response's header lines, names as sent.
    pub headers: Vec<(String, String)>,
    /// The first response's body, by its framing.
    pub body: Vec<u8>,
    /// Bytes after the first response: a second response would be here.
    pub rest: Vec<u8>,
    /// Whether the proxy ended the connection (EOF or reset) within [`CLOSE_BOUND`].
    pub closed: bool,
    /// Every byte received.
    pub raw: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

/// Connects to `addr`, writes `bytes` in one write, and reads until the proxy
/// closes the connection or [`CLOSE_BOUND`] passes (then `closed` is false).
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Reply {
    let mut stream = tcp_connect(addr).await;
    stream.set_nodelay(true).unwrap();
    within("writing the request", stream.write_all(bytes))
        .await
        .expect("writing the request");
    let (raw, closed) = read_until_closed(&mut stream, CLOSE_BOUND).await;
    parse_reply(raw, closed.is_some())
}

/// [`send_raw`], written `piece` bytes per write, each flushed on its own
/// (`set_nodelay`), so the proxy reads the request across many reads.
pub async fn send_in_pieces(addr: SocketAddr, bytes: &[u8], piece: usize) -> Reply {
    let mut stream = tcp_connect(addr).await;
    stream.set_nodelay(true).unwrap();
    within("writing the request in pieces", async {
        for part in bytes.chunks(piece) {
            if stream.write_all(part).await.is_err() {
                break; // refused before the end: the answer tells
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let (raw, closed) = read_until_closed(&mut stream, CLOSE_BOUND).await;
    parse_reply(raw, closed.is_some())
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The first response in `raw` (and what follows it); no status when `raw`
/// does not start with a whole response.
pub fn parse_reply(raw: Vec<u8>, closed: bool) -> Reply {
    let (status, headers, body, rest) = match parse_response(&raw) {
        Ok((response, rest)) => (Some(response.status), response.headers, response.body, rest),
        Err(_) => (None, Vec::new(), Vec::new(), raw.clone()),
    };
    Reply {
        status,
        headers,
        body,
        rest,
        closed,
        raw,
    }
}

// ---------------------------------------------------------------- backend

/// One request as the [`BodyBackend`] received it.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub head: SeenRequest,
    pub body: Vec<u8>,
    pub trailers: Option<HeaderMap>,
    /// Whether the body arrived whole; false while it is being read and
    /// when the connection ended or broke inside it.
    pub complete: bool,
}

#[derive(Default)]
struct Log {
    exchanges: Mutex<Vec<Exchange>>,
    raw: Mutex<Vec<u8>>,
}

/// A real HTTP/1.1 backend (hyper) that reads each request's body to its
/// end before answering `200 got N bytes`; a request whose body breaks gets
/// no answer (its connection is dropped). It records every request, its
/// body and trailers, and every byte received on any connection.
pub struct BodyBackend {
    pub addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    log: Arc<Log>,
    task: JoinHandle<()>,
}

impl BodyBackend {
    pub async fn start() -> BodyBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Log::default());
        let (counter, state) = (accepts.clone(), log.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, state.clone()));
            }
        });
        BodyBackend {
            addr,
            accepts,
            log,
            task,
        }
    }

    /// TCP connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// Requests whose head arrived, in order.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.log.exchanges.lock().unwrap().clone()
    }

    /// Every byte received so far, all connections in arrival order.
    pub fn raw(&self) -> Vec<u8> {
        self.log.raw.lock().unwrap().clone()
    }

    pub fn raw_text(&self) -> String {
        String::from_utf8_lossy(&self.raw()).into_owned()
    }
}

impl Drop for BodyBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: TcpStream, log: Arc<Log>) {
    let tap = Tap {
        inner: stream,
        log: log.clone(),
    };
    let service = hyper::service::service_fn(move |request| answer(request, log.clone()));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tap), service)
        .await;
}

async fn answer(request: Request<Incoming>, log: Arc<Log>) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let index = {
        let mut exchanges = log.exchanges.lock().unwrap();
        exchanges.push(Exchange {
            head: SeenRequest {
                method: request.method().clone(),
                uri: request.uri().clone(),
                version: request.version(),
                headers: request.headers().clone(),
            },
            body: Vec::new(),
            trailers: None,
            complete: false,
        });
        exchanges.len() - 1
    };
    let collected = tokio::time::timeout(super::TIMEOUT, request.into_body().collect()).await;
    let Ok(Ok(collected)) = collected else {
        return Err(std::io::Error::other("the request body did not arrive whole"));
    };
    let trailers = collected.trailers().cloned();
    let body = collected.to_bytes().to_vec();
    let length = body.len();
    {
        let mut exchanges = log.exchanges.lock().unwrap();
        let exchange = &mut exchanges[index];
        exchange.body = body;
        exchange.trailers = trailers;
        exchange.complete = true;
    }
    Ok(Response::new(Full::new(Bytes::from(format!("got {length} bytes")))))
}

/// A stream that keeps a copy of every byte read from it.
struct Tap {
    inner: TcpStream,
    log: Arc<Log>,
}

impl AsyncRead for Tap {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            this.log.raw.lock().unwrap().extend_from_slice(&buf.filled()[before..]);
        }
        result
    }
}

impl AsyncWrite for Tap {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
