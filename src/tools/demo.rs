//! A small WebSocket echo backend for the quick start and the tests.
//!
//! wsgate needs something to proxy to; this gives a new user one command that
//! starts a backend, plus a browser page to poke at it, without installing
//! anything else. It is deliberately plain: HTTP/1.1 only, no TLS (wsgate
//! terminates TLS in front of it), every WebSocket path echoes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::lifecycle::descriptors::{is_per_connection, is_resource_exhaustion};

/// The browser page: self-contained so it works offline and behind any proxy.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>wsgate demo</title>
<style>
body { font-family: sans-serif; max-width: 40em; margin: 2em auto; }
#log { border: 1px solid #ccc; padding: .5em; height: 20em; overflow-y: auto; font-family: monospace; white-space: pre-wrap; }
.sent { color: #05a; } .received { color: #080; } .info { color: #888; }
</style>
</head>
<body>
<h1>wsgate demo echo</h1>
<form id="form"><input id="text" size="40" autocomplete="off" autofocus> <button type="submit">Send</button></form>
<div id="log"></div>
<script>
const log = document.getElementById('log');
function show(cls, text) {
  const line = document.createElement('div');
  line.className = cls;
  line.textContent = text;
  log.appendChild(line);
  log.scrollTop = log.scrollHeight;
}
const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/echo';
const ws = new WebSocket(url);
show('info', 'connecting to ' + url);
// One greeting on open, so the echo shows at once.
ws.onopen = () => {
  show('info', 'open');
  const greeting = 'hello from the demo page';
  ws.send(greeting);
  show('sent', '> ' + greeting);
};
ws.onmessage = (event) => show('received', '< ' + event.data);
ws.onerror = () => show('info', 'error');
ws.onclose = (event) => show('info', 'closed with code ' + event.code + (event.reason ? ' (' + event.reason + ')' : ''));
document.getElementById('form').onsubmit = (event) => {
  event.preventDefault();
  const input = document.getElementById('text');
  if (ws.readyState !== WebSocket.OPEN) { show('info', 'not connected'); return; }
  ws.send(input.value);
  show('sent', '> ' + input.value);
  input.value = '';
};
</script>
</body>
</html>
"#;

type Body = Full<Bytes>;

/// Serves the demo backend on an already-bound listener until the task is dropped.
///
/// Connections live in a [`JoinSet`], so dropping this future also ends them.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(address = %addr, "demo backend listening");
    }
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) if is_per_connection(&error) => {
                tracing::debug!(%error, "accept failed for one connection");
                continue;
            }
            Err(error) if is_resource_exhaustion(&error) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(%error, "accept failed, retrying shortly");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        connections.spawn(serve_io(stream, Some(peer)));
    }
}

/// Serves the demo backend on one connection (plain TCP, TLS, anything).
///
/// Lets callers put their own transport, such as a TLS acceptor, in front.
pub async fn serve_connection<IO>(io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_io(io, None).await;
}

async fn serve_io<IO>(io: IO, peer: Option<SocketAddr>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The service parks an accepted upgrade here; it runs in this task once
    // hyper hands the connection over, so dropping the task ends it too.
    let upgrade: Arc<Mutex<Option<OnUpgrade>>> = Arc::default();
    let slot = Arc::clone(&upgrade);
    let service = service_fn(move |req| {
        let slot = Arc::clone(&slot);
        async move { Ok::<_, Infallible>(handle(req, peer, &slot)) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(error) = connection.await {
        tracing::debug!(peer = peer.map(tracing::field::display), %error, "demo connection ended with an error");
        return;
    }
    let pending = upgrade.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(pending) = pending {
        match pending.await {
            Ok(upgraded) => echo(TokioIo::new(upgraded), peer).await,
            Err(error) => tracing::debug!(peer = peer.map(tracing::field::display), %error, "upgrade did not complete"),
        }
    }
}

fn handle(mut req: Request<Incoming>, peer: Option<SocketAddr>, slot: &Mutex<Option<OnUpgrade>>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    tracing::info!(peer = peer.map(tracing::field::display), method = %req.method(), %path, "demo request");
    if wants_upgrade(req.headers()) {
        return match accept_key(&req) {
            Ok(accept) => {
                let pending = hyper::upgrade::on(&mut req);
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(pending);
                tracing::info!(peer = peer.map(tracing::field::display), %path, "websocket accepted");
                // No Sec-WebSocket-Protocol: the echo speaks no subprotocol.
                Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header(header::UPGRADE, "websocket")
                    .header(header::CONNECTION, "Upgrade")
                    .header(header::SEC_WEBSOCKET_ACCEPT, accept)
                    .body(Body::default())
                    .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "error\n"))
            }
            Err(reason) => {
                tracing::info!(peer = peer.map(tracing::field::display), %path, reason, "bad websocket handshake");
                let mut response = plain(StatusCode::BAD_REQUEST, reason);
                let headers = response.headers_mut();
                headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
                // The client expected to switch protocols; don't leave it waiting on HTTP.
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
                response
            }
        };
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/") => {
            let mut response = Response::new(Body::from(PAGE));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
        (&Method::GET, "/health") => plain(StatusCode::OK, "ok"),
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// A request that asks for any upgrade or carries a WebSocket key is a WebSocket attempt.
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) || headers.contains_key(header::SEC_WEBSOCKET_KEY)
}

/// Checks the opening handshake (RFC 6455 §4.2.1) and returns the accept key.
fn accept_key(req: &Request<Incoming>) -> Result<String, &'static str> {
    let headers = req.headers();
    if req.method() != Method::GET {
        return Err("websocket handshake must use GET\n");
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err("Upgrade: websocket required\n");
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err("Connection: Upgrade required\n");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err("Sec-WebSocket-Version: 13 required\n");
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or("Sec-WebSocket-Key required\n")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .map_err(|_| "Sec-WebSocket-Key is not base64\n")?;
    if decoded.len() != 16 {
        return Err("Sec-WebSocket-Key must encode 16 bytes\n");
    }
    Ok(derive_accept_key(key.as_bytes()))
}

/// Whether a comma-separated header contains `token`, ignoring case.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Echoes text and binary messages until the peer closes.
///
/// tungstenite answers a close frame with the same code and answers pings by
/// itself; polling until the stream ends flushes those answers.
async fn echo<IO>(io: IO, peer: Option<SocketAddr>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    while let Some(message) = ws.next().await {
        let reply = match message {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => message,
            Ok(Message::Close(frame)) => {
                let code = frame.as_ref().map(|f| u16::from(f.code));
                tracing::info!(
                    peer = peer.map(tracing::field::display),
                    code,
                    "websocket closed by client"
                );
                continue;
            }
            Ok(_) => continue,
            Err(error) => {
                tracing::debug!(peer = peer.map(tracing::field::display), %error, "websocket ended");
                return;
            }
        };
        if let Err(error) = ws.send(reply).await {
            tracing::debug!(peer = peer.map(tracing::field::display), %error, "websocket send failed");
            return;
        }
    }
}
