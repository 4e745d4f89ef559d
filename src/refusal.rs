//! Why a client was turned away: the one list that admission, the server's
//! caps and timeouts, the error answers and the counters all speak. It lives
//! below every one of them, so none has to import another for it.

/// Why a client was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// `Origin` not on the route's allowlist (or absent where required).
    Origin,
    /// None of the offered subprotocols is allowed.
    Subprotocol,
    /// Over a rate limit (per client or for the route).
    RateLimited,
    /// The client holds its share of the route's tunnels.
    ClientCap,
    /// The route holds `max_websockets` tunnels.
    RouteCap,
    /// `[cluster]` with `on_unavailable = "deny"`, and the shared store does not answer.
    ClusterUnavailable,
    /// `max_connections` reached: the listeners paused accepting.
    GlobalCap,
    /// TLS handshake or request headers not complete in time.
    HandshakeTimeout,
    /// The WebSocket handshake broke RFC 6455.
    BadHandshake,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 9] = [
        RefusalReason::Origin,
        RefusalReason::Subprotocol,
        RefusalReason::RateLimited,
        RefusalReason::ClientCap,
        RefusalReason::RouteCap,
        RefusalReason::ClusterUnavailable,
        RefusalReason::GlobalCap,
        RefusalReason::HandshakeTimeout,
        RefusalReason::BadHandshake,
    ];

    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Origin => "origin",
            RefusalReason::Subprotocol => "subprotocol",
            RefusalReason::RateLimited => "rate_limited",
            RefusalReason::ClientCap => "client_cap",
            RefusalReason::RouteCap => "route_cap",
            RefusalReason::ClusterUnavailable => "cluster_unavailable",
            RefusalReason::GlobalCap => "global_cap",
            RefusalReason::HandshakeTimeout => "handshake_timeout",
            RefusalReason::BadHandshake => "bad_handshake",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}
