//! A client's request for a WebSocket, whichever HTTP it spoke: an
//! HTTP/1.1 `Upgrade: websocket` (RFC 6455) or an HTTP/2 extended CONNECT
//! with `:protocol = websocket` (RFC 8441). Admission, balancing, the
//! backend's handshake (always HTTP/1.1) and the tunnel see the same thing
//! either way; only the two ends differ, and they are here: how the request
//! is checked, and what the client gets back (101 or 200) and how its
//! stream is taken out of hyper.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

use super::connection;
use super::headers;
use super::http2::StreamOpen;
use crate::body::{self, ProxyBody};
use crate::error::ProxyError;
use crate::tunnel::halves::Side;
use crate::ws::handshake;

/// The only `:protocol` wsgate serves (RFC 8441 §4, the IANA registry of
/// upgrade tokens).
const WEBSOCKET: &str = "websocket";

/// Whether the request asks for a WebSocket: HTTP/1.x with `Upgrade:
/// websocket`, or an HTTP/2 CONNECT with `:protocol` (any CONNECT over
/// HTTP/2 that [`refuse_other_connect`] lets through).
pub(super) fn asked<B>(request: &Request<B>) -> bool {
    match request.version() {
        Version::HTTP_2 => request.method() == Method::CONNECT,
        _ => handshake::wants_websocket(request.headers()),
    }
}

/// An HTTP/2 CONNECT that is not RFC 8441's for a WebSocket is refused
/// before routing with 501 (RFC 9110 §15.6.2: a method, or here a
/// protocol, the server does not implement): a CONNECT without `:protocol`
/// asks for a TCP tunnel to any host (RFC 9113 §8.5), which a reverse
/// proxy does not open, and other protocols are not served.
pub(super) fn refuse_other_connect<B>(request: &Request<B>) -> Result<(), ProxyError> {
    if request.version() != Version::HTTP_2 || request.method() != Method::CONNECT {
        return Ok(());
    }
    match request.extensions().get::<hyper::ext::Protocol>() {
        None => Err(ProxyError::NotImplemented(
            "CONNECT without :protocol (this is not a forward proxy)",
        )),
        Some(protocol) if protocol.as_str() != WEBSOCKET => {
            Err(ProxyError::NotImplemented("a :protocol other than websocket"))
        }
        Some(_) => Ok(()),
    }
}

/// A WebSocket request, checked: the key the backend's answer is checked
/// against, and the client's end of the tunnel.
pub(super) struct Opening {
    /// HTTP/1.1: the client's `Sec-WebSocket-Key`, forwarded as it came;
    /// HTTP/2: a fresh one, as the client sends none (RFC 8441 §5).
    pub(super) key: HeaderValue,
    end: ClientEnd,
}

enum ClientEnd {
    /// The client gets 101 and its connection becomes the tunnel.
    Upgrade,
    /// The client gets 200 and its stream becomes the tunnel; the stream
    /// counts as open on its connection for the tunnel's life.
    ExtendedConnect(Option<StreamOpen>),
}

impl Opening {
    /// Checks the request as its protocol's RFC asks (RFC 6455 §4.2.1,
    /// or RFC 8441 §4–5).
    pub(super) fn of<B>(request: &mut Request<B>) -> Result<Opening, ProxyError> {
        if request.version() == Version::HTTP_2 {
            handshake::validate_extended_connect(request)?;
            let open = request.extensions_mut().remove::<StreamOpen>();
            return Ok(Opening {
                key: handshake::fresh_key(),
                end: ClientEnd::ExtendedConnect(open),
            });
        }
        Ok(Opening {
            key: handshake::validate(request)?,
            end: ClientEnd::Upgrade,
        })
    }

    /// The client's answer once the backend's 101 is checked: the backend's
    /// end-to-end headers (the chosen subprotocol and extensions among
    /// them) under 101 with the upgrade's own headers, or under 200 without
    /// `Sec-WebSocket-Accept` (RFC 8441 §5: not used over HTTP/2).
    pub(super) fn answer(&self, mut backend_headers: HeaderMap) -> Response<ProxyBody> {
        headers::strip_hop_by_hop(&mut backend_headers);
        let mut answer = Response::new(body::empty());
        match self.end {
            ClientEnd::Upgrade => {
                *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                set_upgrade_headers(&mut backend_headers);
            }
            ClientEnd::ExtendedConnect(_) => {
                backend_headers.remove(header::SEC_WEBSOCKET_ACCEPT);
                // RFC 9110 §9.3.6: a 2xx to CONNECT has no content.
                backend_headers.remove(header::CONTENT_LENGTH);
            }
        }
        *answer.headers_mut() = backend_headers;
        answer
    }

    /// What the client spoke, as logs and metrics name it (the ALPN names).
    pub(super) fn protocol(&self) -> &'static str {
        match self.end {
            ClientEnd::Upgrade => "http/1.1",
            ClientEnd::ExtendedConnect(_) => "h2",
        }
    }

    /// How the client's stream comes out of hyper once it has its answer.
    pub(super) fn client_end(self) -> impl FnOnce(Upgraded) -> Side + Send + 'static {
        move |upgraded| match self.end {
            ClientEnd::Upgrade => connection::unwrap(upgraded),
            ClientEnd::ExtendedConnect(open) => Side::Other(Box::new(OnStream {
                io: TokioIo::new(upgraded),
                _open: open,
            })),
        }
    }
}

/// `Connection: Upgrade` and `Upgrade: websocket`, the hop-by-hop headers
/// of an HTTP/1.1 upgrade, set for the next hop.
pub(super) fn set_upgrade_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// A WebSocket's HTTP/2 stream, holding its place among the connection's
/// open streams (the connection's idle timeout does not run while it is open).
struct OnStream {
    io: TokioIo<Upgraded>,
    _open: Option<StreamOpen>,
}

impl tokio::io::AsyncRead for OnStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

crate::tunnel::write_through!(concrete OnStream);
