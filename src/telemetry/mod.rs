//! What operators read beside the logs: Prometheus metrics ([`metrics`]),
//! the admin listener that serves them with health and readiness
//! ([`admin`]), and the access log of plain HTTP requests ([`access`]).

pub mod access;
pub mod metrics;
pub mod stats;

pub use metrics::{FirstClose, Metrics, TunnelMetrics};

/// The `outcome` label of `wsgate_handshakes_total`: `ok`, a refusal reason
/// ([`RefusalReason::as_str`](crate::telemetry::stats::RefusalReason::as_str)), or what
/// went wrong toward the backend.
pub mod outcome {
    use crate::error::ProxyError;

    /// Both 101s sent: the tunnel opens.
    pub const OK: &str = "ok";
    /// No server to connect to, a failed connect, or a broken answer
    /// (including a 101 with a wrong `Sec-WebSocket-Accept`).
    pub const BACKEND_ERROR: &str = "backend_error";
    /// The connect or the backend's answer took too long.
    pub const BACKEND_TIMEOUT: &str = "backend_timeout";

    /// The backend answered `status` instead of 101: `backend_rejected_4xx`
    /// and so on, by status class.
    pub fn backend_rejected(status: u16) -> &'static str {
        match status / 100 {
            1 => "backend_rejected_1xx",
            2 => "backend_rejected_2xx",
            3 => "backend_rejected_3xx",
            4 => "backend_rejected_4xx",
            _ => "backend_rejected_5xx",
        }
    }

    /// The outcome of a handshake that failed with `error`.
    pub fn of_error(error: &ProxyError) -> &'static str {
        if let Some(reason) = error.refusal_reason() {
            return reason.as_str();
        }
        match error {
            ProxyError::ConnectTimeout { .. } | ProxyError::ResponseTimeout { .. } => BACKEND_TIMEOUT,
            ProxyError::NoServer
            | ProxyError::Connect { .. }
            | ProxyError::UpstreamHandshake { .. }
            | ProxyError::Upstream { .. } => BACKEND_ERROR,
            // Malformed requests: refused before the WebSocket handshake is
            // even looked at.
            ProxyError::NoRoute
            | ProxyError::BadRequest(_)
            | ProxyError::NotImplemented(_)
            | ProxyError::UriTooLong
            | ProxyError::Handshake(_)
            | ProxyError::Refused(_) => "bad_handshake",
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn statuses_go_by_class() {
            assert_eq!(backend_rejected(403), "backend_rejected_4xx");
            assert_eq!(backend_rejected(503), "backend_rejected_5xx");
            assert_eq!(backend_rejected(302), "backend_rejected_3xx");
        }
    }
}
