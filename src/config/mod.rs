//! Configuration: the TOML file, validated into typed values.
//!
//! Two layers: `raw` mirrors the file for serde, and `validate` turns it
//! into the types below, reporting *every* problem at once with the file,
//! line, column and key, so `wsgate check` is one round trip for an operator.
//! Everything that can fail (addresses, certificate files, names that refer to
//! each other) fails here, at load time, never at the first request.

mod error;
pub mod placeholder;
mod raw;
pub mod units;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use error::{ConfigError, ConfigErrors};
pub use raw::{Balance, HealthCheckKind, LogFormat, MissingOrigin, OnUnavailable};

use crate::admission::origin::OriginPattern;
use crate::admission::rate_limit::{LimitSpec, Rate};

/// The default place of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/wsgate/wsgate.toml";

/// A complete, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration came from; relative certificate paths
    /// were resolved against its directory.
    pub path: PathBuf,
    pub global: Global,
    pub listeners: Vec<Listener>,
    pub routes: Vec<Route>,
    pub upstreams: Vec<Upstream>,
    /// The admin listener (metrics, health, readiness); `None`: none.
    pub admin: Option<Admin>,
    /// Limits shared with other instances through Redis; `None`: this
    /// instance's own.
    pub cluster: Option<ClusterSettings>,
}

/// `[cluster]`: where the shared limits live and what to do without them
/// (see [`crate::cluster`]).
#[derive(Clone, PartialEq)]
pub struct ClusterSettings {
    /// `redis://` or `rediss://` URL, with the password of `password_file`
    /// put in.
    pub redis: String,
    /// This instance's name among those sharing the store; `None`: host
    /// name and process ID, decided at start.
    pub instance: Option<String>,
    /// Longest wait for one round trip at a handshake (default 25ms).
    pub timeout: Duration,
    /// A silent instance's tunnels stop counting after this (default 5s).
    pub lease: Duration,
    pub on_unavailable: OnUnavailable,
}

/// The URL may hold a password: it never reaches a log line.
impl fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("redis", &"<redacted>")
            .field("instance", &self.instance)
            .field("timeout", &self.timeout)
            .field("lease", &self.lease)
            .field("on_unavailable", &self.on_unavailable)
            .finish()
    }
}

/// `[admin]`: where the operator's endpoints are served (see
/// [`crate::server::admin`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub listen: SocketAddr,
}

/// Settings that apply to every connection.
#[derive(Debug, Clone)]
pub struct Global {
    /// Time a client has for the TLS handshake and then again for sending
    /// complete request headers (default 10s): a slow client must not hold a
    /// connection slot forever.
    pub handshake_timeout: Duration,
    /// Time open connections get to finish after a shutdown signal (default 30s).
    pub shutdown_timeout: Duration,
    /// Largest request head (request line and headers) accepted; larger gets
    /// 431 (default 16KiB, at least 8KiB).
    pub max_request_header_size: usize,
    /// Open client connections across all listeners (default 100000); at the
    /// cap, listeners stop accepting until a connection ends.
    pub max_connections: usize,
    /// IPv6 clients are counted per prefix of this length (default 64): one
    /// host usually owns a whole /64 and could otherwise rotate addresses.
    pub ipv6_client_prefix: u8,
    /// How log lines are written (default text).
    pub log_format: LogFormat,
    /// Which log lines are written: a `tracing` filter such as
    /// `"info,wsgate::tunnel=debug"` (default `"info"`); `WSGATE_LOG`
    /// overrides it.
    pub log_filter: String,
    /// One `request` line per plain HTTP request (default true): a busy
    /// HTTP route can log more than an operator wants to keep.
    pub http_log: bool,
    /// Threads of wsgate's own that splice busy plain tunnels from an
    /// `epoll` loop, without tokio's per-message wake-ups (default: one per
    /// CPU; 0 keeps every tunnel on tokio's workers).
    pub splice_threads: usize,
    /// Where upstream host names and SRV records are looked up (default:
    /// the name servers of `/etc/resolv.conf`).
    pub resolver: Nameservers,
}

/// The DNS servers that upstream names are asked of.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Nameservers {
    /// Those of `/etc/resolv.conf` (its search domains and options too),
    /// read again by each reload.
    #[default]
    System,
    /// `[global] resolver`: these, over UDP and TCP, in order (Consul's
    /// DNS, CoreDNS, a local unbound).
    Listed(Vec<SocketAddr>),
}

/// An address wsgate accepts connections on.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    /// This listener's `handshake_timeout` (its own, or the global one).
    pub handshake_timeout: Duration,
    /// Peers whose word on the client address is believed (default none).
    pub trusted_proxies: crate::proxy::real_ip::TrustedProxies,
    /// Every connection starts with a PROXY protocol header (v1 or v2).
    pub proxy_protocol: bool,
    /// TLS termination, when the listener has certificates.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// Finding clients that vanished (default [`TcpLiveness::default`]).
    pub tcp: TcpLiveness,
    /// HTTP/2 (ALPN `h2` with TLS, prior knowledge without); `None`: off
    /// (`http2 = false`), HTTP/1.1 only.
    pub http2: Option<Http2>,
}

/// A listener's HTTP/2 limits. Each bounds what one client connection can
/// make the proxy hold: streams multiply tunnels behind one connection (and
/// one place under `max_connections`), header blocks are memory before any
/// route is known, and a connection with nothing open is a descriptor and
/// a session kept for nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2 {
    /// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS,
    /// default 100 as HAProxy's `tune.h2.max-concurrent-streams`; nginx has 128).
    /// A stream past it is refused with `REFUSED_STREAM`.
    pub max_concurrent_streams: u32,
    /// A request's header list, decoded (SETTINGS_MAX_HEADER_LIST_SIZE);
    /// `None`: `global.max_request_header_size`, the HTTP/1.1 bound.
    pub max_header_list_size: Option<u32>,
    /// A connection with no stream open for this long is closed with GOAWAY
    /// (default 3 minutes, as nginx's former `http2_idle_timeout`).
    pub idle_timeout: Duration,
    /// PING a connection silent for this long, and close it when the answer
    /// does not come within `keepalive_timeout` (default 60s and 20s);
    /// `None`: no PINGs.
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
}

impl Default for Http2 {
    fn default() -> Self {
        Http2 {
            max_concurrent_streams: 100,
            max_header_list_size: None,
            idle_timeout: Duration::from_secs(180),
            keepalive_interval: Some(Duration::from_secs(60)),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// How the kernel finds a peer that vanished without a FIN or a reset (a
/// host that lost power, a path that drops every packet): without it, an
/// idle connection to such a peer stays open for ever and one with data in
/// flight for about 15 minutes (`tcp_retries2`). Either ends with the
/// socket's next read or write failing with `ETIMEDOUT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLiveness {
    /// Probes of an idle connection (`SO_KEEPALIVE`); `None`: off.
    pub keepalive: Option<KeepaliveProbes>,
    /// Data sent and not acknowledged for this long ends the connection
    /// (`TCP_USER_TIMEOUT`); with keepalive on, it also ends an idle one
    /// this long after the peer was last heard from. `None`: off.
    pub user_timeout: Option<Duration>,
}

/// `SO_KEEPALIVE` with its three timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveProbes {
    /// Silence before the first probe (`TCP_KEEPIDLE`, default 30s).
    pub idle: Duration,
    /// Between unanswered probes (`TCP_KEEPINTVL`, default 10s).
    pub interval: Duration,
    /// Unanswered probes that end the connection (`TCP_KEEPCNT`, default 3).
    pub count: u32,
}

impl Default for TcpLiveness {
    /// A dead peer is found within about a minute either way: an idle
    /// connection after 30 s of silence and three probes 10 s apart, one
    /// with data in flight after 60 s without an acknowledgment. Short
    /// enough that clients reconnect before users give up, long enough
    /// that a congested link or a peer's brief pause is not taken for death.
    fn default() -> TcpLiveness {
        TcpLiveness {
            keepalive: Some(KeepaliveProbes {
                idle: Duration::from_secs(30),
                interval: Duration::from_secs(10),
                count: 3,
            }),
            user_timeout: Some(Duration::from_secs(60)),
        }
    }
}

impl TcpLiveness {
    /// Neither probes nor a user timeout: for connections bounded by a
    /// timeout of their own (health checks).
    pub const OFF: TcpLiveness = TcpLiveness {
        keepalive: None,
        user_timeout: None,
    };

    /// Sets these options on a new connection's `socket`.
    pub fn apply<S: std::os::fd::AsFd>(&self, socket: &S) -> std::io::Result<()> {
        let socket = socket2::SockRef::from(socket);
        if let Some(probes) = self.keepalive {
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(probes.idle)
                .with_interval(probes.interval)
                .with_retries(probes.count);
            socket.set_tcp_keepalive(&keepalive)?;
        }
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
        if let Some(timeout) = self.user_timeout {
            socket.set_tcp_user_timeout(Some(timeout))?;
        }
        Ok(())
    }

    /// Sets these options on a listening socket, whose connections then
    /// inherit them from the kernel (Linux copies a listener's socket
    /// options to the connections it accepts) without a system call each;
    /// what is off here is turned off, so that a reload that turns an
    /// option off takes effect.
    pub fn apply_to_listener<S: std::os::fd::AsFd>(&self, listener: &S) -> std::io::Result<()> {
        self.apply(listener)?;
        let socket = socket2::SockRef::from(listener);
        if self.keepalive.is_none() {
            socket.set_keepalive(false)?;
        }
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
        if self.user_timeout.is_none() {
            socket.set_tcp_user_timeout(None)?;
        }
        // Small writes (a handshake's answer, a message) go out at once.
        socket.set_tcp_nodelay(true)
    }
}

/// A rule that sends requests for some hosts and path prefix to an upstream.
#[derive(Debug, Clone)]
pub struct Route {
    /// Shared: every tunnel's log lines name it.
    pub name: Arc<str>,
    /// Host names, lower case, without port; `*.example.com` matches every
    /// subdomain. Empty means any host.
    pub hosts: Vec<String>,
    /// The path prefix, matched on segment boundaries (see [`crate::proxy::route`]).
    pub path_prefix: String,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Who may open a WebSocket on this route, and how many.
    pub admission: Admission,
    /// Frame-aware tunnels; `None`: a pure byte splice, the fastest path.
    pub inspect: Option<Inspect>,
    /// `[route.limits] client_bytes_per_second` and `client_bytes_burst`:
    /// how fast wsgate reads from each client's socket (default: as fast as
    /// it comes). One client must not be able to push its whole link's worth
    /// into a backend that everyone else shares.
    pub client_bytes: Option<SocketRate>,
}

/// A limit on one socket: `per_second` units (bytes, messages) a second on
/// average, and up to `burst` at once after a quiet spell (a token bucket,
/// [`crate::tunnel::pace::TokenBucket`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketRate {
    pub per_second: u64,
    pub burst: u64,
}

/// `[route.inspect]`: wsgate reads the frames as they pass (see [`crate::tunnel::inspect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspect {
    /// wsgate pings a client it heard nothing from for this long (default 30s).
    pub ping_interval: Duration,
    /// No frame at all within this time after the ping: the client is gone (default 10s).
    pub pong_timeout: Duration,
    /// Keep the backend side alive the same way (default false).
    pub ping_backend: bool,
    /// No data frame either way for this long: both sides get 1001 (default: none).
    pub idle_timeout: Option<Duration>,
    /// Once one side sent a close frame, time for the close handshake to
    /// finish before both connections are shut down (default 5s).
    pub close_timeout: Duration,
    /// Largest frame payload (default 16MiB); larger ends the tunnel with 1009.
    pub max_frame_size: u64,
    /// Largest message, all fragments together (default 64MiB).
    pub max_message_size: u64,
    /// Client frames must be masked and backend frames must not (default true).
    pub enforce_masking: bool,
    /// `max_messages_per_second` and `message_burst`: messages and control
    /// frames a client may send (default: no limit); past it, 1008. A flood
    /// of small messages costs a backend per message, which a byte rate
    /// alone does not bound.
    pub client_messages: Option<SocketRate>,
}

/// A route's admission rules for Upgrade requests (see [`crate::admission`]).
#[derive(Debug, Clone)]
pub struct Admission {
    /// `None`: any origin (`wsgate check` warns about it).
    pub allowed_origins: Option<Vec<OriginPattern>>,
    pub missing_origin: MissingOrigin,
    /// `None`: the client's offer goes to the backend unchanged.
    pub subprotocols: Option<Vec<String>>,
    /// With an allowlist: refuse (400) when none of the offered protocols is allowed.
    pub require_subprotocol: bool,
    pub per_client_rate: Option<LimitSpec>,
    pub total_rate: Option<LimitSpec>,
    /// Also count plain HTTP requests against the rate limits.
    pub limit_http: bool,
    pub max_websockets: Option<usize>,
    pub max_websockets_per_client: Option<usize>,
}

impl Default for Admission {
    fn default() -> Admission {
        Admission {
            allowed_origins: None,
            missing_origin: MissingOrigin::Allow,
            subprotocols: None,
            require_subprotocol: true,
            per_client_rate: None,
            total_rate: None,
            limit_http: false,
            max_websockets: None,
            max_websockets_per_client: None,
        }
    }
}

/// A pool of backend servers.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Shared: every tunnel's log lines name it.
    pub name: Arc<str>,
    pub servers: Vec<UpstreamServer>,
    /// How new tunnels are spread (default least connections).
    pub balance: Balance,
    /// With `Balance::Hash`: where the key comes from.
    pub hash_key: HashKey,
    /// With `Balance::Hash`: no server takes more than this factor times the
    /// average load (default 1.25), so one hot key cannot swamp its server.
    pub hash_load_factor: f64,
    /// Other servers tried when a connect fails before the handshake was
    /// sent (default 2).
    pub retries: u32,
    /// The longest a DNS answer (host names in `address`, `srv` records)
    /// is used before it is asked again (default 30s); a shorter TTL asks
    /// sooner.
    pub resolve_interval: Duration,
    /// `[global] resolver`, the same for every upstream: each pool asks it
    /// for its own names.
    pub resolver: Nameservers,
    /// A failed connect keeps a server out for this long, doubling per
    /// failure in a row (default 1s) …
    pub passive_backoff: Duration,
    /// … up to this (default 30s).
    pub passive_backoff_max: Duration,
    pub health_check: Option<HealthCheck>,
    /// TLS to the servers (`wss`), when enabled.
    pub tls: Option<crate::tls::UpstreamTls>,
    /// Time to establish the TCP connection to a server (default 3s);
    /// past it the client gets 504.
    pub connect_timeout: Duration,
    /// Time a server has to answer a WebSocket handshake or send the head of
    /// an HTTP response (default 60s); past it the client gets 504.
    pub response_timeout: Duration,
    /// Finding servers that vanished (default [`TcpLiveness::default`]).
    pub tcp: TcpLiveness,
    /// `[upstream.rebalance]`: over-full servers shed inspected tunnels
    /// (see [`crate::upstream::rebalance`]); `None`: off (the default).
    pub rebalance: Option<Rebalance>,
}

/// `[upstream.rebalance]`: a WebSocket lives for hours, so a server that
/// joins or comes back gets only new tunnels while the others stay loaded;
/// this moves the excess over, a few at a time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rebalance {
    /// A server holding more than this times its weighted share of the
    /// upstream's tunnels sheds the excess (default 1.25, above 1.0).
    pub max_skew: f64,
    /// Only once the imbalance has lasted this long (default 30s): a
    /// passing blip (a restart, a health check flapping) moves nobody.
    pub after: Duration,
    /// At most this many tunnels closed for the whole upstream (default
    /// 20/s), so the reconnects do not arrive as a herd.
    pub rate: Rate,
}

impl Rebalance {
    pub const DEFAULT_MAX_SKEW: f64 = 1.25;
    pub const DEFAULT_AFTER: Duration = Duration::from_secs(30);

    /// The default rate: 20 a second.
    pub fn default_rate() -> Rate {
        Rate {
            count: std::num::NonZeroU32::new(20).expect("20 is not zero"),
            per: Duration::from_secs(1),
        }
    }
}

/// One entry of an upstream's `servers`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamServer {
    pub target: ServerTarget,
    /// Relative share of new tunnels (default 1); an SRV record's targets
    /// carry their own.
    pub weight: u32,
    /// Gets traffic only when no primary server is available; an SRV
    /// record's targets take their tier from their priority.
    pub backup: bool,
    /// Gets no new tunnels; keeps its open ones.
    pub drain: bool,
}

/// Where an entry of `servers` finds its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTarget {
    /// `address`: an IP address, or a host name whose A/AAAA records are
    /// the servers (each with this port).
    Address(ServerAddress),
    /// `srv`: a DNS name whose SRV records are the servers, each with its
    /// own port, priority and weight.
    Srv(String),
}

impl ServerTarget {
    /// Whether the entry needs DNS: a host name or an SRV record.
    pub fn is_dns(&self) -> bool {
        match self {
            ServerTarget::Address(address) => address.host.parse::<std::net::IpAddr>().is_err(),
            ServerTarget::Srv(_) => true,
        }
    }
}

impl fmt::Display for ServerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerTarget::Address(address) => address.fmt(f),
            ServerTarget::Srv(name) => f.write_str(name),
        }
    }
}

/// Where the key of `balance = "hash"` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
    Query(String),
}

/// An upstream's active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    /// Request path for `http` and `websocket` checks (default "/").
    pub path: String,
    /// Time between checks of one server (default 5s), with up to 10% jitter
    /// so the checks of many proxies do not arrive together.
    pub interval: Duration,
    /// Time a check may take (default 2s).
    pub timeout: Duration,
    /// Successes in a row that bring a down server up (default 2).
    pub rise: u32,
    /// Failures in a row that take an up server down (default 3).
    pub fall: u32,
}

/// A backend server's address: an IP address or a host name, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::single(ConfigError::file(path, format!("cannot read: {e}"))))?;
        Config::from_toml(&text, path)
    }

    /// Validates configuration text; `path` names the file in errors and is
    /// the base for relative certificate paths. A value still holding the
    /// packaged template's placeholder is an error too, beside the others.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let mut unfilled = placeholder::unfilled(text, path);
        match validate::parse(text, path) {
            Ok(config) if unfilled.is_empty() => Ok(config),
            Ok(_) => Err(ConfigErrors(unfilled)),
            Err(ConfigErrors(errors)) => {
                unfilled.extend(errors);
                unfilled.sort_by_key(|e| (e.line, e.column));
                Err(ConfigErrors(unfilled))
            }
        }
    }

    /// The listener with this name.
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }

    /// Things that load but that an operator should hear about.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> = self
            .routes
            .iter()
            .filter(|route| route.admission.allowed_origins.is_none())
            .map(|route| {
                format!(
                    "{}: route {:?} accepts WebSockets from every origin: any web page can open one with its \
                     visitors' cookies; set allowed_origins",
                    self.path.display(),
                    route.name
                )
            })
            .collect();
        // Only inspected tunnels can be told to close between frames.
        for (i, upstream) in self.upstreams.iter().enumerate() {
            let mut routes = self.routes.iter().filter(|route| route.upstream == i).peekable();
            let has_routes = routes.peek().is_some();
            if upstream.rebalance.is_some() && has_routes && routes.all(|route| route.inspect.is_none()) {
                warnings.push(format!(
                    "{}: upstream {:?} has [upstream.rebalance] but every route to it is a plain splice: only \
                     tunnels of routes with [route.inspect] can be closed to rebalance, so nothing will move",
                    self.path.display(),
                    upstream.name
                ));
            }
        }
        warnings
    }
}
