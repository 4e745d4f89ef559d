//! Counters an operator reads: open connections and tunnels, and refusals
//! by reason. Plain atomics, so the request path never waits on them. The
//! Prometheus [`Metrics`] live here too, so every configuration generation
//! (and the admin listener) shares one set.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::admission::caps::RouteCaps;
use crate::refusal::RefusalReason;
use crate::telemetry::metrics::OpenGauge;
use crate::telemetry::Metrics;
use crate::upstream::balance::Pool;

/// A cheap, cloneable handle on the proxy's counters.
#[derive(Clone, Default)]
pub struct Stats {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    open_connections: AtomicUsize,
    /// Connections opened and closed since start, together.
    connection_events: AtomicU64,
    refusals: [AtomicU64; RefusalReason::ALL.len()],
    routes: std::sync::RwLock<HashMap<String, Arc<RouteCaps>>>,
    upstreams: std::sync::RwLock<HashMap<String, Arc<Pool>>>,
    metrics: Metrics,
}

/// One backend server as statistics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStatus {
    /// As configured (`backend.internal:8080`).
    pub name: String,
    pub addr: std::net::SocketAddr,
    /// Up by the active checks.
    pub healthy: bool,
    /// Takes new tunnels: healthy, not set aside after a failed connect, not draining.
    pub available: bool,
    pub open_tunnels: usize,
}

impl Stats {
    pub fn refusals(&self, reason: RefusalReason) -> u64 {
        self.inner.refusals[reason.index()].load(Ordering::Relaxed)
    }

    /// A connection refused before any request was read (global cap,
    /// handshake timeout, a bad PROXY header): no route to name.
    pub(crate) fn count_refusal(&self, reason: RefusalReason) {
        self.inner.refusals[reason.index()].fetch_add(1, Ordering::Relaxed);
        self.inner.metrics.handshake("", reason.as_str());
    }

    /// A request refused on `route`; an upgrade's refusal is also one of the
    /// route's handshake outcomes.
    pub(crate) fn count_request_refusal(&self, reason: RefusalReason, route: &str, websocket: bool) {
        self.inner.refusals[reason.index()].fetch_add(1, Ordering::Relaxed);
        if websocket {
            self.inner.metrics.handshake(route, reason.as_str());
        }
    }

    /// The Prometheus metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Client connections open now (a tunnel keeps its connection open).
    pub fn open_connections(&self) -> usize {
        self.inner.open_connections.load(Ordering::Relaxed)
    }

    /// Client connections opened and closed since start, together: changes
    /// whenever any connection comes or goes.
    pub fn connection_activity(&self) -> u64 {
        self.inner.connection_events.load(Ordering::Relaxed)
    }

    /// Open tunnels on the route named `route` (0 for an unknown route).
    pub fn open_websockets(&self, route: &str) -> usize {
        self.route(route).map_or(0, |caps| caps.open())
    }

    /// Entries in the route's per-client tunnel table; 0 once every tunnel
    /// has ended, however it ended.
    pub fn client_websocket_entries(&self, route: &str) -> usize {
        self.route(route).map_or(0, |caps| caps.client_entries())
    }

    /// Tunnels open now, on every route.
    pub fn open_tunnels(&self) -> usize {
        let routes = self
            .inner
            .routes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        routes.values().map(|caps| caps.open()).sum()
    }

    fn route(&self, name: &str) -> Option<Arc<RouteCaps>> {
        let routes = self
            .inner
            .routes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        routes.get(name).cloned()
    }

    /// The servers of the upstream named `upstream`, in configuration order.
    pub fn servers(&self, upstream: &str) -> Vec<ServerStatus> {
        let pool = {
            let upstreams = self
                .inner
                .upstreams
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            upstreams.get(upstream).cloned()
        };
        let Some(pool) = pool else { return Vec::new() };
        pool.backends()
            .iter()
            .map(|backend| ServerStatus {
                name: backend.name.to_string(),
                addr: backend.addr,
                healthy: backend.is_healthy(),
                available: backend.is_available(),
                open_tunnels: backend.open_tunnels(),
            })
            .collect()
    }

    pub(crate) fn register_upstream(&self, name: &str, pool: Arc<Pool>) {
        let mut upstreams = self
            .inner
            .upstreams
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        upstreams.insert(name.to_owned(), pool);
    }

    pub(crate) fn register_route(&self, name: &str, caps: Arc<RouteCaps>) {
        let mut routes = self
            .inner
            .routes
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        routes.insert(name.to_owned(), caps);
    }

    /// Counts a connection on `listener` as open until the returned guard
    /// is dropped.
    pub(crate) fn connection_opened(&self, listener: &str) -> OpenConnection {
        self.inner.open_connections.fetch_add(1, Ordering::Relaxed);
        self.inner.connection_events.fetch_add(1, Ordering::Relaxed);
        OpenConnection {
            stats: self.clone(),
            _gauge: self.inner.metrics.connection_opened(listener),
        }
    }
}

/// An open client connection, counted until dropped.
pub struct OpenConnection {
    stats: Stats,
    _gauge: OpenGauge,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.stats.inner.open_connections.fetch_sub(1, Ordering::Relaxed);
        self.stats.inner.connection_events.fetch_add(1, Ordering::Relaxed);
    }
}
