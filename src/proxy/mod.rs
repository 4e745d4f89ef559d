//! The HTTP stage: one client connection served (with hyper, or for an
//! upgrade without it), and each request on it dispatched. A WebSocket
//! upgrade becomes a tunnel, anything else is forwarded as HTTP.
//!
//! `connection` reads a connection's first bytes and answers a whole
//! WebSocket upgrade among them itself (the fast path), or wraps the
//! client's stream (under the [`framing`] guard) for hyper to serve, and
//! unwraps it again for the tunnel; [`http2`] serves a
//! connection whose client speaks HTTP/2; `dispatch` answers
//! one request (routing by [`route`], the client's address by [`real_ip`],
//! forwarding headers by [`headers`]); `upgrade` opens the tunnel for a
//! WebSocket request, which `websocket` makes the same whether it came as
//! an HTTP/1.1 upgrade or an HTTP/2 extended CONNECT. [`Proxy`] is what they all serve with: one
//! configuration generation.

mod connection;
mod dispatch;
pub mod framing;
pub mod headers;
pub mod http2;
pub mod real_ip;
pub mod route;
mod upgrade;
mod websocket;

use std::sync::Arc;

use tokio_util::task::TaskTracker;
use tracing::Span;

use crate::admission::rate_limit::{ClientKey, KeyedLimiter};
use crate::admission::refusal_log::RefusalLog;
use crate::admission::RouteGate;
use crate::cluster::Cluster;
use crate::config::{Config, Global};
use crate::telemetry::access::Served;
use crate::telemetry::stats::Stats;
use crate::tunnel::drain::Drain;
use crate::tunnel::identity::Client;
use crate::tunnel::relocate::Relocation;
use crate::upstream::balance::BackendGuard;
use crate::upstream::UpstreamPool;
pub use connection::{serve_connection, ConnectionInfo, ConnectionSlot};
use route::RouteTable;

/// One request's client, as admission and the forwarding headers see it.
struct RequestContext<'a> {
    info: &'a ConnectionInfo,
    client: std::net::IpAddr,
    key: ClientKey,
    via_trusted: Option<std::net::IpAddr>,
    /// When the request arrived: a tunnel's line says how long its handshake took.
    started: std::time::Instant,
    /// Which server took the request, once one did: for its log line.
    served: std::sync::OnceLock<Served>,
}

impl RequestContext<'_> {
    /// The client as the log lines name it: the peer, or the address a
    /// trusted proxy's header gave (without a port).
    fn logged_client(&self) -> Client {
        match self.via_trusted {
            Some(_) => Client::Forwarded(self.client),
            None => Client::Direct(self.info.client),
        }
    }
}

/// What every request needs: routes, upstream pools, settings, and the
/// tracker that lets shutdown wait for tunnels.
///
/// One `Proxy` per configuration generation: a reload builds the next one
/// with [`Proxy::new`] from the last, and the server swaps it in whole, so a
/// request sees one configuration from start to end. What outlives
/// generations (open tunnels, shutdown, counters) is shared between them.
pub struct Proxy {
    global: Global,
    routes: RouteTable,
    /// Admission state per route, by the route's index.
    gates: Vec<RouteGate>,
    upstreams: Vec<UpstreamPool>,
    tunnels: TaskTracker,
    /// Asks open tunnels to end gracefully (inspected ones with a close code).
    pub(crate) drain: Arc<Drain>,
    /// Asks open tunnels to move to the next process (a binary upgrade).
    pub(crate) relocation: Arc<Relocation>,
    pub(crate) stats: Stats,
    pub(crate) refusal_log: Arc<RefusalLog>,
    /// `[cluster]`: kept for the server's life (a reload cannot change it).
    cluster: Option<Arc<Cluster>>,
}

impl Proxy {
    /// The proxy for `config`. On a reload, `previous` is the generation it
    /// replaces: routes and upstreams of the same name keep their tunnel
    /// counts and servers' state, and the shared parts carry over, the
    /// connection to the shared store ([`Cluster`]) among them.
    pub async fn new(
        config: &Config,
        tunnels: TaskTracker,
        stats: Stats,
        previous: Option<&Proxy>,
        cluster: Option<Arc<Cluster>>,
    ) -> Proxy {
        let previous_gate = |name: &str| {
            let previous = previous?;
            let index = previous.routes.iter().position(|r| &*r.name == name)?;
            previous.gates.get(index)
        };
        let gates: Vec<RouteGate> = config
            .routes
            .iter()
            .map(|r| RouteGate::new(&r.name, &r.admission, previous_gate(&r.name), cluster.as_ref()))
            .collect();
        for (route, gate) in config.routes.iter().zip(&gates) {
            stats.register_route(&route.name, gate.caps.clone());
        }
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for upstream in &config.upstreams {
            let last = previous.and_then(|p| p.upstreams.iter().find(|u| u.config.name == upstream.name));
            let upstream = UpstreamPool::new(upstream.clone(), last).await;
            stats.register_upstream(&upstream.config.name, upstream.pool.clone());
            upstreams.push(upstream);
        }
        Proxy {
            global: config.global.clone(),
            routes: RouteTable::new(config.routes.clone()),
            gates,
            upstreams,
            tunnels,
            drain: previous.map_or_else(Default::default, |p| p.drain.clone()),
            relocation: previous.map_or_else(Default::default, |p| p.relocation.clone()),
            stats,
            refusal_log: previous.map_or_else(Default::default, |p| p.refusal_log.clone()),
            cluster,
        }
    }

    /// The shared store of `[cluster]`, when configured.
    pub(crate) fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// `shutdown_timeout` of this generation.
    pub(crate) fn shutdown_timeout(&self) -> std::time::Duration {
        self.global.shutdown_timeout
    }

    /// The upstream pools, for health checks and name resolution.
    pub(crate) fn upstreams(&self) -> &[UpstreamPool] {
        &self.upstreams
    }

    /// Every per-client limiter, for the server's eviction schedule.
    pub(crate) fn keyed_limiters(&self) -> impl Iterator<Item = &Arc<KeyedLimiter>> {
        self.gates
            .iter()
            .filter_map(RouteGate::keyed_limiter)
            .chain(std::iter::once(self.refusal_log.limiter()))
    }

    /// Who sent this request, decided once per request: a trusted proxy's
    /// keep-alive connection carries requests of many clients.
    fn context<'a>(
        &self,
        info: &'a ConnectionInfo,
        headers: &http::HeaderMap,
        started: std::time::Instant,
    ) -> RequestContext<'a> {
        let (client, via_trusted) = match &info.forwarded_by {
            Some(trusted) => (
                real_ip::client_from_headers(info.peer.ip(), headers, trusted),
                Some(info.peer.ip()),
            ),
            None => (info.client.ip(), None),
        };
        RequestContext {
            info,
            client,
            key: ClientKey::new(client, self.global.ipv6_client_prefix),
            via_trusted,
            started,
            served: std::sync::OnceLock::new(),
        }
    }
}

/// Which server took the request, and after how many tries: in the
/// request's log line (and, at `debug`, its span).
fn record_server(ctx: &RequestContext<'_>, upstream: &Arc<str>, backend: &BackendGuard, attempts: u32) {
    let server = &backend.backend().name;
    let span = Span::current();
    span.record("upstream", &**upstream);
    span.record("server", &**server);
    span.record("attempts", attempts);
    let _first = ctx.served.set(Served {
        upstream: upstream.clone(),
        server: server.clone(),
        attempts,
    });
}
