//! What a tunnel's `tunnel closed` line (its one line in the access log)
//! says about it: the connection's and the handshake's facts, kept with the
//! tunnel rather than in a span.
//!
//! A span that lives as long as its tunnel holds a slot in the log
//! registry the whole time; with thousands of tunnels those slots are
//! scattered over the heap and keep its pages resident after the tunnels
//! are gone (docs/performance.md, memory after a burst). At `debug` the
//! tunnel's events also get a `tunnel` span with the same fields, for the
//! lines logged in between.

use std::sync::Arc;

pub use crate::telemetry::access::Client;

/// Who a tunnel connects, for its log lines and its metrics' labels.
#[derive(Clone)]
pub struct Identity {
    pub client: Client,
    pub listener: Arc<str>,
    pub route: Arc<str>,
    pub upstream: Arc<str>,
    pub server: Arc<str>,
    /// The subprotocol the backend chose, if any; copied out of the
    /// handshake so that no read buffer of hyper's is held by the tunnel.
    pub subprotocol: Option<Box<str>>,
    pub inspected: bool,
    /// What the client spoke: `http/1.1` (an upgrade) or `h2` (an extended CONNECT).
    pub protocol: &'static str,
    /// The request's path (without the query, which may carry secrets).
    /// `None` for a tunnel moved by a binary upgrade: the handshake's facts
    /// stay with the process that answered it.
    pub path: Option<Box<str>>,
    /// From the request's arrival to the backend's 101, in milliseconds.
    pub handshake_ms: Option<u32>,
    /// Servers tried for the handshake (1 when the first answered).
    pub attempts: Option<u32>,
}

impl Identity {
    /// The span the tunnel's own events are logged in at `debug`; disabled
    /// (and free) at the default `info`.
    pub fn debug_span(&self) -> tracing::Span {
        tracing::debug_span!(
            parent: None,
            "tunnel",
            client = %self.client,
            listener = &*self.listener,
            route = &*self.route,
            upstream = &*self.upstream,
            server = &*self.server,
            subprotocol = self.subprotocol.as_deref().unwrap_or(""),
            inspected = self.inspected,
            protocol = self.protocol,
            path = self.path.as_deref()
        )
    }
}

/// A line about a tunnel at `level` (`info` for its access log line): its
/// [`Identity`]'s fields, then the line's own fields and message, as
/// `tracing::event!` takes them.
macro_rules! tunnel_event {
    ($level:expr, $identity:expr, $($fields_and_message:tt)+) => {{
        let identity: &$crate::tunnel::Identity = $identity;
        ::tracing::event!(
            $level,
            client = %identity.client,
            listener = &*identity.listener,
            route = &*identity.route,
            upstream = &*identity.upstream,
            server = &*identity.server,
            subprotocol = identity.subprotocol.as_deref().unwrap_or(""),
            inspected = identity.inspected,
            protocol = identity.protocol,
            path = identity.path.as_deref(),
            handshake_ms = identity.handshake_ms,
            attempts = identity.attempts,
            $($fields_and_message)+
        )
    }};
}
pub(crate) use tunnel_event;
