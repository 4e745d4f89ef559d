//! HTTP/2 clients: hyper's (plain requests, and WebSockets over RFC 8441
//! extended CONNECT), over h2c with prior knowledge or TLS with ALPN `h2`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::ext::Protocol;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::{tcp_connect, tls_connect, within, TestCerts};

/// The request body of these clients.
pub type H2Body = BoxBody<Bytes, Infallible>;

/// One HTTP/2 connection to the proxy; requests go out on `send`.
pub struct H2Connection {
    pub send: SendRequest<H2Body>,
    /// The connection's task: ends with the connection, `Err` on a GOAWAY with an error.
    pub task: JoinHandle<Result<(), hyper::Error>>,
}

/// A client TLS configuration offering ALPN `h2` then `http/1.1`.
pub fn h2_client_config(certs: &TestCerts) -> Arc<rustls::ClientConfig> {
    let mut config = (*certs.client_config()).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// HTTP/2 with prior knowledge over plain TCP (h2c).
pub async fn h2c_connect(addr: SocketAddr) -> H2Connection {
    h2_over(tcp_connect(addr).await).await
}

/// HTTP/2 over TLS, chosen by ALPN; fails if the server chose otherwise.
pub async fn h2_tls_connect(addr: SocketAddr, certs: &TestCerts) -> H2Connection {
    let tls = tls_connect(addr, "localhost", h2_client_config(certs)).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN did not choose h2"
    );
    h2_over(tls).await
}

/// The HTTP/2 client handshake over `io`.
pub async fn h2_over<S>(io: S) -> H2Connection
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = within(
        "HTTP/2 client handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)),
    )
    .await
    .expect("HTTP/2 client handshake");
    H2Connection {
        send,
        task: tokio::spawn(connection),
    }
}

/// An empty request body.
pub fn no_body() -> H2Body {
    Empty::new().boxed()
}

impl H2Connection {
    /// Sends `request`; the answer's head and whole body.
    pub async fn request(&mut self, request: Request<H2Body>) -> (http::response::Parts, Bytes) {
        let response = self.send_only(request).await;
        let (parts, body) = response.into_parts();
        let body = within("HTTP/2 response body", body.collect())
            .await
            .expect("HTTP/2 response body")
            .to_bytes();
        (parts, body)
    }

    /// Sends `request`; the answer with its body still to read.
    pub async fn send_only(&mut self, request: Request<H2Body>) -> Response<Incoming> {
        within("HTTP/2 ready", self.send.ready())
            .await
            .expect("HTTP/2 connection ready");
        within("HTTP/2 response head", self.send.send_request(request))
            .await
            .expect("HTTP/2 request")
    }

    /// An RFC 8441 extended CONNECT to `path` with `Sec-WebSocket-Version:
    /// 13` and `headers`: the answer, and on 200 the WebSocket over the stream.
    pub async fn websocket(
        &mut self,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (Response<Incoming>, Option<WebSocketStream<TokioIo<Upgraded>>>) {
        let mut request = extended_connect(authority, path, "websocket");
        for (name, value) in headers {
            request.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let mut response = self.send_only(request).await;
        if response.status() != 200 {
            return (response, None);
        }
        let upgraded = within("the CONNECT stream", hyper::upgrade::on(&mut response))
            .await
            .expect("the CONNECT stream");
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, Some(super::ws_config())).await;
        (response, Some(ws))
    }
}

/// An extended CONNECT (`:protocol` = `protocol`) for `https://{authority}{path}`.
pub fn extended_connect(authority: &str, path: &str, protocol: &'static str) -> Request<H2Body> {
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("https://{authority}{path}"))
        .header("sec-websocket-version", "13")
        .body(no_body())
        .unwrap();
    request.extensions_mut().insert(Protocol::from_static(protocol));
    request
}

/// A hand-written HTTP/2 client over h2c, for what a well-behaved client
/// never sends: frames are built byte by byte (RFC 9113 §4.1) and header
/// blocks are HPACK literals (RFC 7541 §6.2), so a test can send any of
/// them in any order.
pub struct RawH2 {
    pub tcp: tokio::net::TcpStream,
    read: Vec<u8>,
}

/// Frame types (RFC 9113 §6).
pub mod frame {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const ACK: u8 = 0x1;
}

/// Error codes (RFC 9113 §7).
pub mod reason {
    pub const CANCEL: u32 = 0x8;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// One frame as read: type, flags, stream, payload.
#[derive(Debug)]
pub struct RawFrame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// A GOAWAY's or RST_STREAM's error code.
    pub fn error_code(&self) -> u32 {
        let at = if self.kind == frame::GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// An HPACK literal header field without indexing, no Huffman (RFC 7541 §6.2.2).
pub fn hpack_literal(block: &mut Vec<u8>, name: &str, value: &[u8]) {
    block.push(0x00);
    hpack_string(block, name.as_bytes());
    hpack_string(block, value);
}

/// An HPACK string: 7-bit prefixed length (RFC 7541 §5.1), raw octets.
pub fn hpack_string(block: &mut Vec<u8>, text: &[u8]) {
    hpack_integer(block, 0x00, 7, text.len());
    block.extend_from_slice(text);
}

/// An HPACK integer with an `n`-bit prefix after `first`'s high bits (RFC 7541 §5.1).
pub fn hpack_integer(block: &mut Vec<u8>, first: u8, n: u32, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        block.push(first | value as u8);
        return;
    }
    block.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        block.push((rest % 128 + 128) as u8);
        rest /= 128;
    }
    block.push(rest as u8);
}

/// The header block of a request: the pseudo-headers, then `extra`.
pub fn request_block(method: &str, authority: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    hpack_literal(&mut block, ":method", method.as_bytes());
    hpack_literal(&mut block, ":scheme", b"http");
    hpack_literal(&mut block, ":authority", authority.as_bytes());
    hpack_literal(&mut block, ":path", path.as_bytes());
    for (name, value) in extra {
        hpack_literal(&mut block, name, value.as_bytes());
    }
    block
}

/// A frame's bytes.
pub fn raw_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut bytes = Vec::with_capacity(9 + payload.len());
    bytes.extend_from_slice(&len.to_be_bytes()[1..]);
    bytes.push(kind);
    bytes.push(flags);
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

impl RawH2 {
    /// Connects, sends the preface and `settings` (id, value pairs).
    pub async fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> RawH2 {
        let mut raw = RawH2 {
            tcp: tcp_connect(addr).await,
            read: Vec::new(),
        };
        let mut payload = Vec::new();
        for (id, value) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        start.extend(raw_frame(frame::SETTINGS, 0, 0, &payload));
        raw.send(&start).await.expect("the preface");
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.tcp.write_all(bytes).await
    }

    /// The next frame; `None` at the end of the connection (or a reset).
    pub async fn next_frame(&mut self) -> Option<RawFrame> {
        use tokio::io::AsyncReadExt;
        loop {
            if self.read.len() >= 9 {
                let len = u32::from_be_bytes([0, self.read[0], self.read[1], self.read[2]]) as usize;
                if self.read.len() >= 9 + len {
                    let frame = RawFrame {
                        kind: self.read[3],
                        flags: self.read[4],
                        stream: u32::from_be_bytes(self.read[5..9].try_into().unwrap()) & 0x7fff_ffff,
                        payload: self.read[9..9 + len].to_vec(),
                    };
                    self.read.drain(..9 + len);
                    return Some(frame);
                }
            }
            let mut buf = [0u8; 16384];
            match within("a frame from the proxy", self.tcp.read(&mut buf)).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.read.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Reads frames until one matches `wanted` (returned) or the connection ends (`None`).
    pub async fn frame_where(&mut self, wanted: impl Fn(&RawFrame) -> bool) -> Option<RawFrame> {
        // Bounded: each read is bounded in time, and a connection sends
        // far fewer frames than this to any of these tests.
        for _ in 0..1_000_000 {
            let frame = self.next_frame().await?;
            if wanted(&frame) {
                return Some(frame);
            }
        }
        panic!("a million frames and not the one wanted")
    }
}
