//! Every failure a request can meet, and the one answer the client gets.
//!
//! Errors are grouped by side: the client's (4xx, logged at debug since the
//! internet sends junk all day), the backend's (5xx, logged at warn since an
//! operator must act) and ours (503, out of descriptors: said once per
//! interval, however many clients it turns away). This file is the one place that says what a
//! failure means: its status and body ([`ProxyError::into_response`]), its
//! log level ([`ProxyError::log`]), its handshake metric label
//! ([`ProxyError::outcome`]) and whether the client's connection ends after
//! it ([`ProxyError::closes_connection`]).

use std::io;
use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use crate::admission::Refusal;
use crate::body::{text_response, ProxyBody};
use crate::refusal::RefusalReason;
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

    // Ours.
    /// A backend connect failed for want of descriptors or socket memory
    /// (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`): this process's condition,
    /// not the server's, so the server is not set aside and no other server
    /// is tried (they would fail alike).
    #[error("out of file descriptors or socket memory: {0}")]
    OutOfResources(io::Error),
}

/// `Retry-After` of a 503 for a passing condition of this instance, in
/// seconds: want of descriptors (tunnels ending free them all the time) or
/// a shared store that does not answer (probed every fifth of a lease, a
/// second by default). A client may try again soon, and one second spreads
/// a reconnect storm a little.
pub const RETRY_SOON_AFTER: u32 = 1;

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
                Refusal::RouteCap | Refusal::ClusterUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            },
            ProxyError::NoServer | ProxyError::OutOfResources(_) => StatusCode::SERVICE_UNAVAILABLE,
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

    /// Whether the client's connection ends after this answer, even when it
    /// asked to keep it: after a malformed request (400) or a transfer coding
    /// wsgate cannot decode (501) the bytes that follow cannot be trusted to
    /// be the next request. (A refused upgrade closes too, for its own reason:
    /// see the HTTP stage.)
    pub fn closes_connection(&self) -> bool {
        matches!(self.status(), StatusCode::BAD_REQUEST | StatusCode::NOT_IMPLEMENTED)
    }

    /// Logs a failure that is not a refusal (refusals are counted and logged,
    /// sampled, by the refusal log): quietly when the client is at fault,
    /// loudly when the backend is. `client`, `listener` and `route` say
    /// whose request it was: no span carries them at `info`.
    pub fn log(&self, method: &http::Method, path: &str, client: &dyn std::fmt::Display, listener: &str, route: &str) {
        if let ProxyError::OutOfResources(error) = self {
            tracing::debug!(%error, %method, %path, "refused: out of file descriptors");
            crate::lifecycle::descriptors::connect_refused(error);
        } else if self.is_client_error() {
            tracing::debug!(error = %self, %method, %path, "refused");
        } else {
            tracing::warn!(error = %self, %client, listener, route, %method, %path, "upstream failed");
        }
    }

    /// The `outcome` label of `wsgate_handshakes_total` for a handshake that
    /// failed with this error.
    pub fn outcome(&self) -> &'static str {
        if let Some(reason) = self.refusal_reason() {
            return reason.as_str();
        }
        match self {
            ProxyError::ConnectTimeout { .. } | ProxyError::ResponseTimeout { .. } => outcome::BACKEND_TIMEOUT,
            ProxyError::OutOfResources(_) => outcome::OUT_OF_RESOURCES,
            ProxyError::NoServer
            | ProxyError::Connect { .. }
            | ProxyError::UpstreamHandshake { .. }
            | ProxyError::Upstream { .. } => outcome::BACKEND_ERROR,
            // Malformed requests: refused before the WebSocket handshake is
            // even looked at.
            ProxyError::NoRoute
            | ProxyError::BadRequest(_)
            | ProxyError::NotImplemented(_)
            | ProxyError::UriTooLong
            | ProxyError::Handshake(_)
            | ProxyError::Refused(_) => RefusalReason::BadHandshake.as_str(),
        }
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
            ProxyError::OutOfResources(_) | ProxyError::Refused(Refusal::ClusterUnavailable) => {
                // RFC 9110 §15.6.4: a 503 may say when to come back.
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_SOON_AFTER));
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

/// The `outcome` label of `wsgate_handshakes_total`: `ok`, a refusal reason
/// ([`RefusalReason::as_str`]), or what went wrong toward the backend
/// ([`ProxyError::outcome`]).
pub mod outcome {
    use http::StatusCode;

    /// Both 101s sent: the tunnel opens.
    pub const OK: &str = "ok";
    /// No server to connect to, a failed connect, or a broken answer
    /// (including a 101 with a wrong `Sec-WebSocket-Accept`).
    pub const BACKEND_ERROR: &str = "backend_error";
    /// The connect or the backend's answer took too long.
    pub const BACKEND_TIMEOUT: &str = "backend_timeout";
    /// wsgate was out of descriptors or socket memory to connect to the
    /// backend: the client got 503, the server was not blamed.
    pub const OUT_OF_RESOURCES: &str = "local_resources_exhausted";

    /// A handshake the backend answered: [`OK`] for a 101, else
    /// `backend_rejected_4xx` and so on, by status class.
    pub fn of_answer(status: StatusCode) -> &'static str {
        match status.as_u16() / 100 {
            1 if status == StatusCode::SWITCHING_PROTOCOLS => OK,
            1 => "backend_rejected_1xx",
            2 => "backend_rejected_2xx",
            3 => "backend_rejected_3xx",
            4 => "backend_rejected_4xx",
            _ => "backend_rejected_5xx",
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn statuses_go_by_class() {
            assert_eq!(of_answer(StatusCode::FORBIDDEN), "backend_rejected_4xx");
            assert_eq!(of_answer(StatusCode::SERVICE_UNAVAILABLE), "backend_rejected_5xx");
            assert_eq!(of_answer(StatusCode::FOUND), "backend_rejected_3xx");
            assert_eq!(of_answer(StatusCode::SWITCHING_PROTOCOLS), OK);
        }
    }
}
