//! Clients: TCP, TLS, WebSocket (tungstenite) and HTTP (hyper).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Request};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{within, ws_config, TestCerts, TIMEOUT};

pub async fn tcp_connect(addr: SocketAddr) -> TcpStream {
    within("TCP connect", TcpStream::connect(addr))
        .await
        .expect("TCP connect")
}

/// A TCP connection (`TCP_NODELAY`) to `addr` from local address `source`,
/// any port (all of 127.0.0.0/8 is loopback on Linux), within [`TIMEOUT`].
pub async fn connect_from(source: impl Into<IpAddr>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let source: IpAddr = source.into();
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = tokio::time::timeout(TIMEOUT, socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A TLS connection to `addr` with SNI `sni`, verified against `config`'s roots.
pub async fn tls_connect(addr: SocketAddr, sni: &str, config: Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    tls_over(tcp_connect(addr).await, sni, config).await
}

/// TLS over a TCP connection the caller made (and tuned), as [`tls_connect`].
pub async fn tls_over(tcp: TcpStream, sni: &str, config: Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    let name = ServerName::try_from(sni.to_string()).unwrap();
    within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("TLS handshake")
}

pub type WsResponse = tokio_tungstenite::tungstenite::handshake::client::Response;

/// A WebSocket handshake over `stream` for `url`, with extra request headers.
pub async fn ws_handshake<S>(stream: S, url: &str, headers: &[(&str, &str)]) -> (WebSocketStream<S>, WsResponse)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request
            .headers_mut()
            .append(name, HeaderValue::from_str(value).unwrap());
    }
    within(
        "WebSocket client handshake",
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config())),
    )
    .await
    .unwrap_or_else(|e| panic!("WebSocket handshake with {url} failed: {e}"))
}

/// ws://localhost:PORT{path} to the proxy at `addr`.
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (WebSocketStream<TcpStream>, WsResponse) {
    let url = format!("ws://localhost:{}{path}", addr.port());
    ws_handshake(tcp_connect(addr).await, &url, headers).await
}

/// wss://{sni}:PORT{path} to the proxy at `addr`, trusting the test CA.
pub async fn wss_connect(
    addr: SocketAddr,
    sni: &str,
    path: &str,
    certs: &TestCerts,
) -> (WebSocketStream<TlsStream<TcpStream>>, WsResponse) {
    let tls = tls_connect(addr, sni, certs.client_config()).await;
    let url = format!("wss://{sni}:{}{path}", addr.port());
    ws_handshake(tls, &url, &[]).await
}

/// The next message, skipping wsgate's own keepalive pings (tungstenite
/// answers them as it reads): a slow machine can leave a client that only
/// receives silent for a ping interval, and the ping is not what a test
/// waits for. The keepalive tests read the stream directly.
pub async fn next_message<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for _ in 0..100 {
        let message = within("next WebSocket message", ws.next())
            .await
            .expect("WebSocket stream ended")
            .expect("WebSocket read error");
        match message {
            Message::Ping(payload) if payload.starts_with(b"wsg\0") => continue,
            message => return message,
        }
    }
    panic!("100 keepalive pings in a row and no message")
}

/// Sends one HTTP request with hyper's client over `io`; returns head and whole body.
pub async fn http_request<S, B>(io: S, request: Request<B>) -> (http::response::Parts, Bytes)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, conn) = within(
        "HTTP client handshake",
        hyper::client::conn::http1::handshake(TokioIo::new(io)),
    )
    .await
    .expect("HTTP client handshake");
    let conn = tokio::spawn(conn);
    let response = within("HTTP response head", sender.send_request(request))
        .await
        .expect("HTTP request");
    let (parts, body) = response.into_parts();
    let body = within("HTTP response body", body.collect())
        .await
        .expect("HTTP response body")
        .to_bytes();
    drop(sender);
    conn.abort();
    (parts, body)
}
