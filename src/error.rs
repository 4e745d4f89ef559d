//! Every failure a request can meet, and the one answer the client gets.
//!
//! Errors are grouped by side: the client's (4xx, logged at debug since the
//! internet sends junk all day), the backend's (5xx, logged at warn since an
//! operator must act) and ours. [`ProxyError::into_response`] is the only place
//! that turns one into HTTP.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::admission::Refusal;
use crate::proxy::ProxyBody;
use crate::telemetry::stats::RefusalReason;
use crate::ws::handshake::{HandshakeError, UpstreamHandshakeError, WEBSOCKET_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    // The client's side.
    #[error("no route for this host and path")]
    NoRoute,
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("{0}")]
    NotImplemented(&'static str),
    #[error("the request line is longer than a request head may be")]
    UriTooLong,
    #[error("invalid WebSocket handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("{0}")]
    Refused(#[from] Refusal),

    // The backend's side.
    #[error("the upstream has no server")]
    NoServer,
    #[error("cannot connect to {server}: {source}")]
    Connect { server: String, source: io::Error },
    #[error("no connection to {server} within {timeout:?}")]
    ConnectTimeout { server: String, timeout: Duration },
    #[error("{server} did not answer within {timeout:?}")]
    ResponseTimeout { server: String, timeout: Duration },
    #[error("{server} answered the WebSocket handshake wrongly: {reason}")]
    UpstreamHandshake {
        server: String,
        reason: UpstreamHandshakeError,
    },
    #[error("{server} failed: {reason}")]
    Upstream { server: String, reason: String },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::Handshake(HandshakeError::UnsupportedVersion) => StatusCode::UPGRADE_REQUIRED,
            ProxyError::Handshake(_) => StatusCode::BAD_REQUEST,
            ProxyError::Refused(refusal) => match refusal {
                Refusal::Origin(_) | Refusal::MissingOrigin => StatusCode::FORBIDDEN,
                Refusal::Subprotocol => StatusCode::BAD_REQUEST,
                Refusal::RateLimited { .. } | Refusal::ClientCap => StatusCode::TOO_MANY_REQUESTS,
                Refusal::RouteCap => StatusCode::SERVICE_UNAVAILABLE,
            },
            ProxyError::NoServer => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::UpstreamHandshake { .. } | ProxyError::Upstream { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::ConnectTimeout { .. } | ProxyError::ResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The refusal counter this error counts under, if it is a refusal.
    pub fn refusal_reason(&self) -> Option<RefusalReason> {
        match self {
            ProxyError::Handshake(_) => Some(RefusalReason::BadHandshake),
            ProxyError::Refused(refusal) => Some(refusal.reason()),
            _ => None,
        }
    }

    /// Whether the client is at fault (logged quietly) or the backend (loudly).
    pub fn is_client_error(&self) -> bool {
        self.status().is_client_error()
    }

    /// The client's answer: the status and a one-line plain-text body. The
    /// backend's details stay in the log; they are no business of the client.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let body = if self.is_client_error() {
            format!("{}: {self}\n", status.canonical_reason().unwrap_or("Error"))
        } else {
            format!("{}\n", status.canonical_reason().unwrap_or("Error"))
        };
        let mut response = text_response(status, body);
        match self {
            ProxyError::Handshake(HandshakeError::UnsupportedVersion) => {
                // RFC 6455 §4.4: tell the client which version we speak.
                response.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static(WEBSOCKET_VERSION),
                );
            }
            ProxyError::Refused(Refusal::RateLimited { retry_after }) => {
                // RFC 6585 §4: when the client may try again, in whole seconds.
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            _ => {}
        }
        response
    }
}

impl ProxyError {
    /// A client error's answer as bytes on the wire, for the refusals made
    /// below hyper ([`crate::proxy::framing`]): the same status and body as
    /// [`ProxyError::into_response`], and the connection closes after it.
    pub fn into_wire(self) -> Vec<u8> {
        let status = self.status();
        let reason = status.canonical_reason().unwrap_or("Error");
        let body = format!("{reason}: {self}\n");
        format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            status.as_u16(),
            body.len()
        )
        .into_bytes()
    }
}

/// A short plain-text response.
pub fn text_response(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
