//! What a tunnel's `tunnel open` and `tunnel closed` lines say about it:
//! the connection's facts, kept with the tunnel rather than in a span.
//!
//! A span that lives as long as its tunnel holds a slot in the log
//! registry the whole time; with thousands of tunnels those slots are
//! scattered over the heap and keep its pages resident after the tunnels
//! are gone (docs/performance.md, memory after a burst). At `debug` the
//! tunnel's events also get a `tunnel` span with the same fields, for the
//! lines logged in between.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

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
}

/// The client as the logs name it.
#[derive(Debug, Clone, Copy)]
pub enum Client {
    /// The TCP peer (or the address a trusted PROXY protocol header gave).
    Direct(SocketAddr),
    /// Named by a trusted proxy's forwarding header: no port.
    Forwarded(IpAddr),
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::Direct(address) => address.fmt(f),
            Client::Forwarded(ip) => ip.fmt(f),
        }
    }
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
            protocol = self.protocol
        )
    }
}

/// An `info` line about a tunnel: its [`Identity`]'s fields, then the
/// line's own fields and message, as `tracing::info!` takes them.
macro_rules! tunnel_info {
    ($identity:expr, $($fields_and_message:tt)+) => {{
        let identity: &$crate::tunnel::Identity = $identity;
        ::tracing::info!(
            client = %identity.client,
            listener = &*identity.listener,
            route = &*identity.route,
            upstream = &*identity.upstream,
            server = &*identity.server,
            subprotocol = identity.subprotocol.as_deref().unwrap_or(""),
            inspected = identity.inspected,
            protocol = identity.protocol,
            $($fields_and_message)+
        )
    }};
}
pub(crate) use tunnel_info;
