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
