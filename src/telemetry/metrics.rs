//! The Prometheus metrics behind the admin listener's `/metrics`.
//!
//! Every label value comes from the configuration (listener, route, upstream
//! and server names) or from a short fixed list (outcomes, directions, close
//! code classes): nothing a client sends becomes a label, so the number of
//! series stays bounded however many clients come and go.
//!
//! The data path never waits here: a tunnel resolves its handles once when
//! it opens ([`Metrics::tunnel`]) and records into them (atomics) when it
//! ends; only the few events of a tunnel's life and of the server's (a
//! handshake, a keepalive pong, a scrape) look a label set up.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::sync::lock;
use crate::tunnel::Identity;
use crate::upstream::balance::Pool;

/// The `Content-Type` of `Metrics::encode`'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Tunnels last from seconds to days.
const DURATION_BUCKETS: [f64; 12] = [
    0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 10800.0, 21600.0, 43200.0, 86400.0,
];

/// Round trips of keepalive pings, from a LAN to a poor mobile link.
const RTT_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Index of the client-to-backend direction in per-direction arrays; the
/// other direction is 1.
pub const CLIENT_TO_BACKEND: usize = 0;
pub const BACKEND_TO_CLIENT: usize = 1;
const DIRECTIONS: [&str; 2] = ["client_to_backend", "backend_to_client"];

/// Plain tunnels on splice threads now ([`crate::tunnel::splice_thread`]
/// counts them; process-wide, as the threads are).
pub static ON_SPLICE_THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: String,
    protocol: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TunnelLabels {
    route: String,
    upstream: String,
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    route: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    route: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    route: String,
    side: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabels {
    route: String,
    side: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    upstream: String,
    server: String,
}

/// One address of an upstream now, and where it came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AddressLabels {
    upstream: String,
    server: String,
    address: String,
    /// `static`, `dns` or `srv`.
    source: &'static str,
    /// 0 for primaries, then backups in order.
    tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterOpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn rtt_histogram() -> Histogram {
    Histogram::new(RTT_BUCKETS)
}

/// Round trips to the shared store: a loopback Redis answers in tens of
/// microseconds, `cluster.timeout` is tens of milliseconds.
const CLUSTER_BUCKETS: [f64; 11] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

fn cluster_histogram() -> Histogram {
    Histogram::new(CLUSTER_BUCKETS)
}

/// A cheap, cloneable handle on the proxy's metrics; one per server, kept
/// across reloads (it lives in [`Stats`](crate::telemetry::stats::Stats)).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    open_connections: Family<ListenerLabels, Gauge>,
    requests: Family<RequestLabels, Counter>,
    open_tunnels: Tracked<TunnelLabels, Gauge>,
    handshakes: Tracked<HandshakeLabels, Counter>,
    tunnel_duration: Tracked<RouteLabels, Histogram, fn() -> Histogram>,
    tunnel_bytes: Tracked<DirectionLabels, Counter>,
    tunnel_frames: Tracked<DirectionLabels, Counter>,
    close_codes: Tracked<CloseLabels, Counter>,
    ping_rtt: Tracked<RouteLabels, Histogram, fn() -> Histogram>,
    unreachable: Tracked<SideLabels, Counter>,
    message_rate_exceeded: Tracked<RouteLabels, Counter>,
    rebalanced: Tracked<ServerLabels, Counter>,
    /// The series a plain tunnel counts in, found once per route, upstream
    /// and server rather than once per tunnel (hashing and copying their
    /// names was a twentieth of a handshake's instructions).
    tunnel_series: Mutex<SeriesCache>,
    /// The same for the series every request counts in.
    request_series: Mutex<RequestSeries>,
    /// The routes and upstreams configured now, once a reload said so:
    /// series of others go once none of their tunnels is open.
    configured: Mutex<Option<Configured>>,
    server_healthy: Family<ServerLabels, Gauge>,
    server_failures: Family<ServerLabels, Gauge>,
    upstream_servers: Family<AddressLabels, Gauge>,
    reloads: Family<ResultLabels, Counter>,
    generation: Gauge,
    max_connections: Gauge,
    cluster_round_trips: Family<ClusterLabels, Counter>,
    cluster_latency: HistogramFamily<ClusterOpLabels>,
    cluster_unreachable: Gauge,
    upgrade_tunnels: Family<OutcomeLabels, Counter>,
    /// Read from the log writer at each scrape.
    log_lines_dropped: Counter,
    splice_thread_tunnels: Gauge,
    /// One scrape at a time: the server gauges are rebuilt from the pools
    /// right before encoding, and a second scrape must not see them half-built.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wsgate");
        registry.register(
            "build",
            "The running binary's version (a stamped build label after the +): which binary serves after an upgrade",
            prometheus_client::metrics::info::Info::new(vec![("version", crate::lifecycle::version::version())]),
        );
        let open_connections = Family::default();
        registry.register(
            "open_connections",
            "Client connections open now, by listener (a tunnel keeps its connection open)",
            open_connections.clone(),
        );
        let requests = Family::default();
        registry.register(
            "requests",
            "Requests answered, by listener, protocol (http/1.1, h2) and kind (websocket: an upgrade or an extended CONNECT; http)",
            requests.clone(),
        );
        let open_tunnels = Tracked::new(Family::default());
        registry.register(
            "open_tunnels",
            "WebSocket tunnels open now, by route, upstream and backend server",
            open_tunnels.family.clone(),
        );
        let handshakes = Tracked::new(Family::default());
        registry.register(
            "handshakes",
            "WebSocket opening handshakes by route and outcome: ok, a refusal reason, or what the backend did",
            handshakes.family.clone(),
        );
        let tunnel_duration = Tracked::new(HistogramFamily::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        ));
        registry.register_with_unit(
            "tunnel_duration",
            "How long tunnels stayed open, by route",
            Unit::Seconds,
            tunnel_duration.family.clone(),
        );
        let tunnel_bytes = Tracked::new(Family::default());
        registry.register(
            "tunnel_bytes",
            "Bytes carried by ended tunnels, by route and direction",
            tunnel_bytes.family.clone(),
        );
        let tunnel_frames = Tracked::new(Family::default());
        registry.register(
            "tunnel_frames",
            "WebSocket frames carried by ended tunnels of inspected routes, by route and direction",
            tunnel_frames.family.clone(),
        );
        let close_codes = Tracked::new(Family::default());
        registry.register(
            "close_codes",
            "Ended tunnels of inspected routes by their first close frame: who sent it and its code \
             (1000-1015 exactly, 3xxx and 4xxx as classes, none without a close frame)",
            close_codes.family.clone(),
        );
        let ping_rtt = Tracked::new(HistogramFamily::new_with_constructor(
            rtt_histogram as fn() -> Histogram,
        ));
        registry.register_with_unit(
            "ping_rtt",
            "Round trips of answered keepalive pings, by route",
            Unit::Seconds,
            ping_rtt.family.clone(),
        );
        let unreachable = Tracked::new(Family::default());
        registry.register(
            "tunnel_unreachable",
            "Tunnels ended because one side stopped acknowledging (TCP keepalive probes or the user timeout \
             ran out: a host gone without a FIN or a reset), by route and that side",
            unreachable.family.clone(),
        );
        let message_rate_exceeded = Tracked::new(Family::default());
        registry.register(
            "client_message_rate_exceeded",
            "Tunnels of inspected routes ended with 1008 because the client sent past max_messages_per_second, by route",
            message_rate_exceeded.family.clone(),
        );
        let rebalanced = Tracked::new(Family::default());
        registry.register(
            "rebalanced_tunnels",
            "Inspected tunnels [upstream.rebalance] asked to close with 1012 because their server held more than \
             its share, by upstream and server",
            rebalanced.family.clone(),
        );
        let server_healthy = Family::default();
        registry.register(
            "server_healthy",
            "1 while a backend server is up by its health checks (every address of a name), else 0",
            server_healthy.clone(),
        );
        let server_failures = Family::default();
        registry.register(
            "server_consecutive_failures",
            "Health checks and connects of a backend server that failed in a row",
            server_failures.clone(),
        );
        let upstream_servers = Family::default();
        registry.register(
            "upstream_servers",
            "1 for each address an upstream has now, by server, address, where it came from (static, dns, srv) \
             and tier (0 primary, then backups in order)",
            upstream_servers.clone(),
        );
        let reloads: Family<ResultLabels, Counter> = Family::default();
        registry.register("reloads", "Configuration reloads by result", reloads.clone());
        let generation = Gauge::default();
        registry.register(
            "config_generation",
            "The configuration in use, counted from 1 at start and up by one per applied reload",
            generation.clone(),
        );
        // Both results exist from the start, so rate() and alerts on
        // failures work before the first reload.
        for result in ["ok", "failed"] {
            let _ = reloads.get_or_create(&ResultLabels { result });
        }
        generation.set(1);
        let max_connections = Gauge::default();
        registry.register(
            "max_connections",
            "global.max_connections in force: the cap on open client connections, across listeners",
            max_connections.clone(),
        );
        let cluster_round_trips = Family::default();
        registry.register(
            "cluster_round_trips",
            "Round trips to the shared store ([cluster]) by operation (admit, release, heartbeat, rewrite, \
             leave) and outcome (ok, error, timeout)",
            cluster_round_trips.clone(),
        );
        let cluster_latency: HistogramFamily<ClusterOpLabels> = Family::new_with_constructor(cluster_histogram);
        registry.register_with_unit(
            "cluster_round_trip",
            "Time of round trips to the shared store ([cluster]), answered or not, by operation",
            Unit::Seconds,
            cluster_latency.clone(),
        );
        let cluster_unreachable = Gauge::default();
        registry.register(
            "cluster_unreachable",
            "1 while [cluster] is set and the shared store does not answer (on_unavailable applies), else 0",
            cluster_unreachable.clone(),
        );
        let upgrade_tunnels = Family::default();
        registry.register(
            "upgrade_tunnels",
            "Tunnels at the binary upgrade that started this process: moved here, or stayed in the old process to drain",
            upgrade_tunnels.clone(),
        );
        let splice_thread_tunnels = Gauge::default();
        registry.register(
            "splice_thread_tunnels",
            "Plain tunnels now spliced by splice threads ([global] splice_threads) rather than tokio's workers",
            splice_thread_tunnels.clone(),
        );
        let log_lines_dropped = Counter::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because standard error was not read fast enough (the log writer's buffer was full)",
            log_lines_dropped.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                open_connections,
                requests,
                open_tunnels,
                handshakes,
                tunnel_duration,
                tunnel_bytes,
                tunnel_frames,
                close_codes,
                ping_rtt,
                unreachable,
                message_rate_exceeded,
                rebalanced,
                tunnel_series: Mutex::default(),
                request_series: Mutex::default(),
                configured: Mutex::new(None),
                server_healthy,
                server_failures,
                upstream_servers,
                reloads,
                generation,
                max_connections,
                cluster_round_trips,
                cluster_latency,
                cluster_unreachable,
                upgrade_tunnels,
                log_lines_dropped,
                splice_thread_tunnels,
                scrape: Mutex::new(()),
            }),
        }
    }

    /// What the binary upgrade that started this process did: tunnels
    /// moved here, and those that stayed in the old process to drain.
    pub fn upgraded(&self, moved: u64, stayed: u64) {
        for (outcome, n) in [("moved", moved), ("stayed", stayed)] {
            self.inner
                .upgrade_tunnels
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(n);
        }
    }

    /// Counts a client connection on `listener` as open until the returned
    /// handle is dropped.
    pub(crate) fn connection_opened(&self, listener: &str) -> OpenGauge {
        let inner = &self.inner;
        let mut cache = lock(&inner.request_series);
        let series = cache.listener(listener);
        let gauge = series.open.get_or_insert_with(|| {
            inner.open_connections.get_or_create_owned(&ListenerLabels {
                listener: listener.to_owned(),
            })
        });
        gauge.inc();
        OpenGauge(gauge.clone())
    }

    /// One request on `listener`, in `protocol` (`http/1.1`, `h2`), asking
    /// for a WebSocket or not.
    pub fn request(&self, listener: &str, protocol: &'static str, websocket: bool) {
        let inner = &self.inner;
        let kind = if websocket { "websocket" } else { "http" };
        let mut cache = lock(&inner.request_series);
        count_in(&mut cache.listener(listener).requests, (protocol, kind), || {
            inner.requests.get_or_create_owned(&RequestLabels {
                listener: listener.to_owned(),
                protocol,
                kind,
            })
        });
    }

    /// One opening handshake on `route` (empty when refused before a route
    /// was chosen) and how it went; see [`outcome`](crate::error::outcome).
    pub fn handshake(&self, route: &str, outcome: &'static str) {
        let inner = &self.inner;
        let mut cache = lock(&inner.request_series);
        count_in(cache.route(route), outcome, || {
            inner.handshakes.get_or_create_owned(&HandshakeLabels {
                route: route.to_owned(),
                outcome,
            })
        });
    }

    /// The handles of one tunnel, resolved once as it opens; it counts as
    /// open until they are dropped. `inspected`: frames and close codes are
    /// known (an inspected route).
    pub fn tunnel(&self, identity: &Identity) -> TunnelMetrics {
        let route = &*identity.route;
        let inner = &self.inner;
        let series = self.tunnel_series(identity);
        series.open.inc();
        TunnelMetrics {
            registry: self.clone(),
            series,
            inspected: identity.inspected.then(|| {
                Box::new(InspectedMetrics {
                    route: route.to_owned(),
                    frames: per_direction(&inner.tunnel_frames, route),
                    ping_rtt: inner.ping_rtt.get_or_create_owned(&RouteLabels {
                        route: route.to_owned(),
                    }),
                    close_codes: inner.close_codes.clone(),
                    message_rate_exceeded: inner.message_rate_exceeded.clone(),
                })
            }),
        }
    }

    /// The series of a tunnel of `identity`'s route, upstream and server:
    /// from the cache, or looked up and kept there.
    fn tunnel_series(&self, identity: &Identity) -> Arc<TunnelSeries> {
        let names = [&identity.route, &identity.upstream, &identity.server];
        let key = names.map(|name| Arc::as_ptr(name).cast::<u8>() as usize);
        if let Some(cached) = lock(&self.inner.tunnel_series).get(&key) {
            return cached.series.clone();
        }
        let inner = &self.inner;
        let (route, upstream, server) = (&*identity.route, &*identity.upstream, &*identity.server);
        let series = Arc::new(TunnelSeries {
            open: inner.open_tunnels.get_or_create_owned(&TunnelLabels {
                route: route.to_owned(),
                upstream: upstream.to_owned(),
                server: server.to_owned(),
            }),
            duration: inner.tunnel_duration.get_or_create_owned(&RouteLabels {
                route: route.to_owned(),
            }),
            bytes: per_direction(&inner.tunnel_bytes, route),
        });
        let mut cache = lock(&inner.tunnel_series);
        if cache.len() >= SERIES_CACHED {
            cache.clear();
        }
        cache.insert(
            key,
            CachedSeries {
                _names: names.map(Arc::clone),
                series: series.clone(),
            },
        );
        series
    }

    /// `count` tunnels of `server` were asked to close to rebalance `upstream`.
    pub fn rebalanced(&self, upstream: &str, server: &str, count: usize) {
        self.inner
            .rebalanced
            .get_or_create_owned(&ServerLabels {
                upstream: upstream.to_owned(),
                server: server.to_owned(),
            })
            .inc_by(count as u64);
    }

    /// A reload was applied.
    pub fn reload_ok(&self) {
        self.inner.reloads.get_or_create(&ResultLabels { result: "ok" }).inc();
    }

    /// A reload was refused; the server runs on as it was.
    pub fn reload_failed(&self) {
        self.inner
            .reloads
            .get_or_create(&ResultLabels { result: "failed" })
            .inc();
    }

    /// One round trip to the shared store, and how it went.
    pub fn cluster_round_trip(&self, op: &'static str, outcome: &'static str, took: Duration) {
        let inner = &self.inner;
        inner
            .cluster_round_trips
            .get_or_create(&ClusterLabels { op, outcome })
            .inc();
        inner
            .cluster_latency
            .get_or_create(&ClusterOpLabels { op })
            .observe(took.as_secs_f64());
    }

    /// Whether the shared store answers.
    pub fn cluster_unreachable(&self, unreachable: bool) {
        self.inner.cluster_unreachable.set(i64::from(unreachable));
    }

    /// The configuration generation now in use.
    pub fn set_generation(&self, generation: u64) {
        self.inner.generation.set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// The cap on open client connections now in force, so dashboards and
    /// alerts can compare `open_connections` with it.
    pub fn set_max_connections(&self, max_connections: usize) {
        self.inner
            .max_connections
            .set(i64::try_from(max_connections).unwrap_or(i64::MAX));
    }

    /// Every metric in the Prometheus text format, the servers' health read
    /// from `pools` at this moment.
    pub(crate) fn encode(&self, pools: &[Arc<Pool>]) -> String {
        let _one_at_a_time = self
            .inner
            .scrape
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.refresh_servers(pools);
        self.remove_unconfigured();
        let dropped = &self.inner.log_lines_dropped;
        dropped.inc_by(super::log_writer::dropped().saturating_sub(dropped.get()));
        let on_threads = ON_SPLICE_THREADS.load(std::sync::atomic::Ordering::Relaxed);
        self.inner
            .splice_thread_tunnels
            .set(i64::try_from(on_threads).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing to a String cannot fail, and every metric here encodes.
        let _ = prometheus_text::encode(&mut text, &self.inner.registry);
        text
    }

    /// After a reload: `routes` and `upstreams` are the ones configured
    /// now. The series of the others (by `route` or `upstream` label) are
    /// removed at the next scrape once none of their tunnels is open: a
    /// removed route's tunnels still open keep counting until they end.
    pub fn configured(&self, routes: impl IntoIterator<Item = String>, upstreams: impl IntoIterator<Item = String>) {
        let configured = Configured {
            routes: routes.into_iter().collect(),
            upstreams: upstreams.into_iter().collect(),
        };
        *lock(&self.inner.configured) = Some(configured);
    }

    /// Removes the series of routes and upstreams no longer configured
    /// that no open tunnel holds. Refusals made before a route was chosen
    /// (`route=""`) always stay.
    fn remove_unconfigured(&self) {
        let configured = lock(&self.inner.configured);
        let Some(configured) = configured.as_ref() else {
            return;
        };
        let inner = &self.inner;
        let mut busy_routes = HashSet::new();
        let mut busy_upstreams = HashSet::new();
        for labels in lock(&inner.open_tunnels.known).iter() {
            if inner.open_tunnels.family.get(labels).is_some_and(|open| open.get() > 0) {
                busy_routes.insert(labels.route.clone());
                busy_upstreams.insert(labels.upstream.clone());
            }
        }
        // Their handles could be of series removed below.
        lock(&inner.tunnel_series).clear();
        lock(&inner.request_series).routes.clear();
        let route_gone =
            |route: &String| !route.is_empty() && !configured.routes.contains(route) && !busy_routes.contains(route);
        let upstream_gone =
            |upstream: &String| !configured.upstreams.contains(upstream) && !busy_upstreams.contains(upstream);
        inner
            .open_tunnels
            .remove_where(|l| route_gone(&l.route) || upstream_gone(&l.upstream));
        inner.handshakes.remove_where(|l| route_gone(&l.route));
        inner.tunnel_duration.remove_where(|l| route_gone(&l.route));
        inner.tunnel_bytes.remove_where(|l| route_gone(&l.route));
        inner.tunnel_frames.remove_where(|l| route_gone(&l.route));
        inner.close_codes.remove_where(|l| route_gone(&l.route));
        inner.ping_rtt.remove_where(|l| route_gone(&l.route));
        inner.unreachable.remove_where(|l| route_gone(&l.route));
        inner.message_rate_exceeded.remove_where(|l| route_gone(&l.route));
        inner.rebalanced.remove_where(|l| upstream_gone(&l.upstream));
    }

    /// Rebuilds the server gauges: servers gone from the pools (a reload, a
    /// name that resolves elsewhere now) disappear. Several addresses of one
    /// name are one series: healthy only when all are, failures the most of
    /// any. `upstream_servers` has one series per address.
    fn refresh_servers(&self, pools: &[Arc<Pool>]) {
        let (healthy, failures) = (&self.inner.server_healthy, &self.inner.server_failures);
        let addresses = &self.inner.upstream_servers;
        healthy.clear();
        failures.clear();
        addresses.clear();
        for pool in pools {
            let mut seen: Vec<(&str, bool, u32)> = Vec::new();
            let backends = pool.backends();
            for backend in backends.iter() {
                let labels = AddressLabels {
                    upstream: pool.name.to_string(),
                    server: backend.name.to_string(),
                    address: backend.addr.to_string(),
                    source: backend.source.as_str(),
                    tier: backend.tier().to_string(),
                };
                addresses.get_or_create(&labels).set(1);
                let (up, failed) = (backend.is_healthy(), backend.consecutive_failures());
                match seen.iter_mut().find(|(name, ..)| *name == &*backend.name) {
                    Some(entry) => {
                        entry.1 &= up;
                        entry.2 = entry.2.max(failed);
                    }
                    None => seen.push((&backend.name, up, failed)),
                }
            }
            for (server, up, failed) in seen {
                let labels = ServerLabels {
                    upstream: pool.name.to_string(),
                    server: server.to_owned(),
                };
                healthy.get_or_create(&labels).set(i64::from(up));
                failures.get_or_create(&labels).set(i64::from(failed));
            }
        }
    }
}

/// The route and upstream names of the configuration in use.
struct Configured {
    routes: HashSet<String>,
    upstreams: HashSet<String>,
}

/// Tunnels' series by the addresses of their route, upstream and server
/// names; each entry holds the names, so that no address is reused while
/// it is a key.
type SeriesCache = HashMap<[usize; 3], CachedSeries, foldhash::fast::RandomState>;

/// Entries at most in the [`SeriesCache`] (servers found by DNS come and
/// go, each with a name of its own): past it, it starts over.
const SERIES_CACHED: usize = 4096;

/// The series of requests by listener and of handshakes by route, found
/// by name: a lookup in a family hashes the whole label set, and its key
/// is a copy of the names (the three lookups of a handshake were 3% of
/// its instructions). Bounded as the [`SeriesCache`] is.
#[derive(Default)]
struct RequestSeries {
    listeners: ByName<ListenerSeries>,
    /// A route's handshakes by outcome: a handful each.
    routes: ByName<Vec<(&'static str, Counter)>>,
}

/// Hashed with foldhash: the std hasher (SipHash) took as long as the
/// family's own lookup. Names come from the configuration, not from
/// clients, so no flooding to resist.
type ByName<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct ListenerSeries {
    open: Option<Gauge>,
    /// By protocol and kind.
    requests: Vec<((&'static str, &'static str), Counter)>,
}

impl RequestSeries {
    fn listener(&mut self, name: &str) -> &mut ListenerSeries {
        cached(&mut self.listeners, name)
    }

    fn route(&mut self, name: &str) -> &mut Vec<(&'static str, Counter)> {
        cached(&mut self.routes, name)
    }
}

/// `name`'s entry of `cache`, new when it had none; past [`SERIES_CACHED`]
/// names the cache starts over.
fn cached<'a, V: Default>(cache: &'a mut ByName<V>, name: &str) -> &'a mut V {
    if !cache.contains_key(name) {
        if cache.len() >= SERIES_CACHED {
            cache.clear();
        }
        cache.insert(name.into(), V::default());
    }
    cache.get_mut(name).expect("inserted above")
}

/// Counts one in the counter `known` holds for `key`, found with `find`
/// the first time.
fn count_in<K: PartialEq>(known: &mut Vec<(K, Counter)>, key: K, find: impl FnOnce() -> Counter) {
    match known.iter().find(|(k, _)| *k == key) {
        Some((_, counter)) => {
            counter.inc();
        }
        None => {
            let counter = find();
            counter.inc();
            known.push((key, counter));
        }
    }
}

struct CachedSeries {
    _names: [Arc<str>; 3],
    series: Arc<TunnelSeries>,
}

struct TunnelSeries {
    open: Gauge,
    duration: Histogram,
    bytes: [Counter; 2],
}

/// The `route`'s series of `family` in each direction.
fn per_direction(family: &Tracked<DirectionLabels, Counter>, route: &str) -> [Counter; 2] {
    DIRECTIONS.map(|direction| {
        family.get_or_create_owned(&DirectionLabels {
            route: route.to_owned(),
            direction,
        })
    })
}

/// A family whose label sets are remembered (prometheus-client cannot list
/// them), so that those of a route or upstream a reload removed can go.
struct Tracked<L, M, C = fn() -> M> {
    family: Family<L, M, C>,
    known: Arc<Mutex<HashSet<L>>>,
}

impl<L, M, C> Tracked<L, M, C>
where
    L: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: MetricConstructor<M>,
{
    fn new(family: Family<L, M, C>) -> Self {
        Tracked {
            family,
            known: Arc::default(),
        }
    }

    /// The series of `labels`, made (and remembered) when it is new.
    fn get_or_create_owned(&self, labels: &L) -> M {
        if self.family.get(labels).is_none() {
            lock(&self.known).insert(labels.clone());
        }
        self.family.get_or_create_owned(labels)
    }

    /// Removes every series whose labels are `gone`.
    fn remove_where(&self, gone: impl Fn(&L) -> bool) {
        lock(&self.known).retain(|labels| {
            if gone(labels) {
                self.family.remove(labels);
                return false;
            }
            true
        });
    }
}

impl<L, M, C: Clone> Clone for Tracked<L, M, C> {
    fn clone(&self) -> Self {
        Tracked {
            family: self.family.clone(),
            known: self.known.clone(),
        }
    }
}

/// A gauge counted up while this handle lives.
pub(crate) struct OpenGauge(Gauge);

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One tunnel's metric handles, resolved when it opens.
pub struct TunnelMetrics {
    /// For what few tunnels meet, looked up only then (a side unreachable).
    registry: Metrics,
    /// Shared with every tunnel of the same route, upstream and server: one
    /// pointer in the tunnel's task rather than four (memory per idle tunnel).
    series: Arc<TunnelSeries>,
    /// Boxed, and only for an inspected tunnel: a plain one is smaller.
    inspected: Option<Box<InspectedMetrics>>,
}

/// What only an inspected tunnel knows: frames, pings and close codes.
struct InspectedMetrics {
    route: String,
    frames: [Counter; 2],
    ping_rtt: Histogram,
    close_codes: Tracked<CloseLabels, Counter>,
    /// Looked up only when it happens, once per tunnel at most.
    message_rate_exceeded: Tracked<RouteLabels, Counter>,
}

/// Who sent a tunnel's first close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstClose {
    /// A close frame from `side` (`client`, `backend`, or `wsgate` for one
    /// of its own), with its status code (`None`: the frame carried none).
    Frame { side: &'static str, code: Option<u16> },
    /// No close frame at all; `side` is the side whose connection ended first.
    Missing { side: &'static str },
}

impl TunnelMetrics {
    /// An answered keepalive ping.
    pub fn ping_answered(&self, rtt: Duration) {
        if let Some(inspected) = &self.inspected {
            inspected.ping_rtt.observe(rtt.as_secs_f64());
        }
    }

    /// The tunnel on `route` ended because `side` (`client` or `backend`)
    /// stopped acknowledging: keepalive probes or the user timeout ran out.
    pub fn unreachable(&self, route: &str, side: &'static str) {
        self.registry
            .inner
            .unreachable
            .get_or_create_owned(&SideLabels {
                route: route.to_owned(),
                side,
            })
            .inc();
    }

    /// The client went past its message rate (the tunnel ends with 1008).
    pub fn message_rate_exceeded(&self) {
        if let Some(inspected) = &self.inspected {
            inspected
                .message_rate_exceeded
                .get_or_create_owned(&RouteLabels {
                    route: inspected.route.clone(),
                })
                .inc();
        }
    }

    /// Records a tunnel that ended: how long it lasted, the bytes (and, when
    /// inspected, frames) each way by [`CLIENT_TO_BACKEND`] and
    /// [`BACKEND_TO_CLIENT`], and its first close frame when it was inspected.
    pub fn finish(&self, duration: Duration, bytes: [u64; 2], frames: [u64; 2], close: Option<FirstClose>) {
        self.series.duration.observe(duration.as_secs_f64());
        for (counter, n) in self.series.bytes.iter().zip(bytes) {
            counter.inc_by(n);
        }
        let Some(inspected) = &self.inspected else {
            return;
        };
        for (counter, n) in inspected.frames.iter().zip(frames) {
            counter.inc_by(n);
        }
        if let Some(close) = close {
            let (side, code) = match close {
                FirstClose::Frame { side, code } => (side, close_code_label(code)),
                FirstClose::Missing { side } => (side, "none"),
            };
            inspected
                .close_codes
                .get_or_create_owned(&CloseLabels {
                    route: inspected.route.clone(),
                    side,
                    code,
                })
                .inc();
        }
    }
}

impl Drop for TunnelMetrics {
    fn drop(&mut self) {
        self.series.open.dec();
    }
}

/// The `code` label of a close frame: the code itself for the ones RFC 6455
/// defines (1000-1015; a frame without a code is 1005), `3xxx` for codes
/// registered by libraries and frameworks, `4xxx` for applications' private
/// codes, `other` for anything else.
pub fn close_code_label(code: Option<u16>) -> &'static str {
    const DEFINED: [&str; 16] = [
        "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010", "1011", "1012", "1013",
        "1014", "1015",
    ];
    match code.unwrap_or(1005) {
        code @ 1000..=1015 => DEFINED[usize::from(code - 1000)],
        3000..=3999 => "3xxx",
        4000..=4999 => "4xxx",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_are_bounded_labels() {
        assert_eq!(close_code_label(Some(1000)), "1000");
        assert_eq!(close_code_label(Some(1015)), "1015");
        assert_eq!(close_code_label(None), "1005");
        assert_eq!(close_code_label(Some(3003)), "3xxx");
        assert_eq!(close_code_label(Some(4001)), "4xxx");
        assert_eq!(close_code_label(Some(2000)), "other");
    }

    fn identity(route: &str) -> Identity {
        Identity {
            client: crate::tunnel::identity::Client::Direct("127.0.0.1:5000".parse().unwrap()),
            listener: "public".into(),
            route: route.into(),
            upstream: "backends".into(),
            server: "10.0.0.1:80".into(),
            subprotocol: None,
            inspected: false,
            protocol: "http/1.1",
            path: None,
            handshake_ms: None,
            attempts: None,
        }
    }

    /// The series found once for a route are those every later tunnel of
    /// it counts in, and once a reload removed them, a tunnel still opened
    /// on that route counts in series that a scrape shows again.
    #[test]
    fn cached_series_are_the_scraped_ones_before_and_after_a_removal() {
        let metrics = Metrics::new();
        let open =
            |n| format!("wsgate_open_tunnels{{route=\"old\",upstream=\"backends\",server=\"10.0.0.1:80\"}} {n}\n");
        let old = identity("old");
        let (first, second) = (metrics.tunnel(&old), metrics.tunnel(&old));
        assert!(metrics.encode(&[]).contains(&open(2)));
        first.finish(Duration::from_secs(1), [3, 4], [0, 0], None);
        second.finish(Duration::from_secs(1), [5, 6], [0, 0], None);
        drop((first, second));
        let text = metrics.encode(&[]);
        assert!(
            text.contains("wsgate_tunnel_bytes_total{route=\"old\",direction=\"client_to_backend\"} 8"),
            "{text}"
        );
        metrics.configured(["new".to_owned()], ["backends".to_owned()]);
        let text = metrics.encode(&[]);
        assert!(!text.contains("route=\"old\""), "{text}");
        let late = metrics.tunnel(&old);
        assert!(metrics.encode(&[]).contains(&open(1)));
        drop(late);
    }

    #[test]
    fn cached_request_series_are_the_scraped_ones_before_and_after_a_removal() {
        let metrics = Metrics::new();
        for websocket in [true, true, false] {
            metrics.request("public", "http/1.1", websocket);
        }
        metrics.request("public", "h2", true);
        metrics.handshake("old", "accepted");
        metrics.handshake("old", "accepted");
        metrics.handshake("old", "origin");
        let open = metrics.connection_opened("public");
        let again = metrics.connection_opened("public");
        let text = metrics.encode(&[]);
        for line in [
            "wsgate_requests_total{listener=\"public\",protocol=\"http/1.1\",kind=\"websocket\"} 2\n",
            "wsgate_requests_total{listener=\"public\",protocol=\"http/1.1\",kind=\"http\"} 1\n",
            "wsgate_requests_total{listener=\"public\",protocol=\"h2\",kind=\"websocket\"} 1\n",
            "wsgate_handshakes_total{route=\"old\",outcome=\"accepted\"} 2\n",
            "wsgate_handshakes_total{route=\"old\",outcome=\"origin\"} 1\n",
            "wsgate_open_connections{listener=\"public\"} 2\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        drop((open, again));
        assert!(metrics
            .encode(&[])
            .contains("wsgate_open_connections{listener=\"public\"} 0\n"));
        // A removed route's series go; configured again, it counts afresh.
        metrics.configured(["new".to_owned()], ["backends".to_owned()]);
        assert!(!metrics.encode(&[]).contains("route=\"old\""));
        metrics.configured(["new".to_owned(), "old".to_owned()], ["backends".to_owned()]);
        metrics.handshake("old", "accepted");
        let text = metrics.encode(&[]);
        assert!(
            text.contains("wsgate_handshakes_total{route=\"old\",outcome=\"accepted\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn a_tunnel_counts_as_open_while_its_handles_live() {
        let metrics = Metrics::new();
        let tunnel = metrics.tunnel(&Identity {
            inspected: true,
            ..identity("chat")
        });
        let text = metrics.encode(&[]);
        assert!(
            text.contains("wsgate_open_tunnels{route=\"chat\",upstream=\"backends\",server=\"10.0.0.1:80\"} 1"),
            "{text}"
        );
        tunnel.finish(
            Duration::from_secs(2),
            [10, 20],
            [1, 2],
            Some(FirstClose::Frame {
                side: "client",
                code: Some(1000),
            }),
        );
        tunnel.unreachable("chat", "backend");
        drop(tunnel);
        let text = metrics.encode(&[]);
        assert!(text.contains("wsgate_tunnel_unreachable_total{route=\"chat\",side=\"backend\"} 1"));
        assert!(text.contains("wsgate_open_tunnels{route=\"chat\",upstream=\"backends\",server=\"10.0.0.1:80\"} 0"));
        assert!(text.contains("wsgate_tunnel_bytes_total{route=\"chat\",direction=\"backend_to_client\"} 20"));
        assert!(text.contains("wsgate_close_codes_total{route=\"chat\",side=\"client\",code=\"1000\"} 1"));
        assert!(text.contains("wsgate_tunnel_duration_seconds_count{route=\"chat\"} 1"));
        assert!(text.contains("wsgate_reloads_total{result=\"failed\"} 0"));
        assert!(text.contains("wsgate_config_generation 1"));
        metrics.set_max_connections(5000);
        assert!(metrics.encode(&[]).contains("wsgate_max_connections 5000"));
    }
}
