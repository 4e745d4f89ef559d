//! The TOML file as written: serde structs that mirror it key for key.
//!
//! Every struct denies unknown fields, so a typo (`alowed_origins`) is an
//! error at load time instead of a silently ignored setting. Values that later
//! checks must point at keep their place in the file through [`Spanned`].

use serde::Deserialize;
use toml::Spanned;

use super::units::{duration_text, parse_duration, ByteSize, HumanDuration};
use crate::admission::rate_limit::{LimitSpec, Rate};
use crate::tls::UnknownSni;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub global: RawGlobal,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<RawListener>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<RawUpstream>,
    pub admin: Option<RawAdmin>,
    pub cluster: Option<Spanned<RawCluster>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub redis: Spanned<String>,
    pub password_file: Option<Spanned<String>>,
    pub instance: Option<Spanned<String>>,
    pub timeout: Option<Spanned<HumanDuration>>,
    pub lease: Option<Spanned<HumanDuration>>,
    pub on_unavailable: Option<OnUnavailable>,
}

/// What admission does while the shared store cannot be asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// This instance's own limits, as without `[cluster]`.
    #[default]
    Local,
    /// No rate limits or caps at all until the store is back.
    Allow,
    /// Refuse every WebSocket (503) until the store is back.
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlobal {
    pub handshake_timeout: Option<Spanned<HumanDuration>>,
    pub shutdown_timeout: Option<Spanned<HumanDuration>>,
    pub max_request_header_size: Option<Spanned<ByteSize>>,
    pub max_connections: Option<Spanned<u64>>,
    pub ipv6_client_prefix: Option<Spanned<u8>>,
    pub log_format: Option<LogFormat>,
    pub log_filter: Option<Spanned<String>>,
    pub http_log: Option<bool>,
    pub splice_threads: Option<Spanned<u64>>,
    /// `"IP:PORT"` or a list of them; checked in `validate`, which names
    /// the key of a value of the wrong shape.
    pub resolver: Option<Spanned<toml::Value>>,
}

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (colours on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Spanned<String>,
    pub listen: Spanned<String>,
    pub handshake_timeout: Option<Spanned<HumanDuration>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub proxy_protocol: Option<Spanned<bool>>,
    pub tls: Option<Spanned<RawListenerTls>>,
    pub tcp_keepalive: Option<Spanned<DurationOrOff>>,
    pub tcp_keepalive_interval: Option<Spanned<HumanDuration>>,
    pub tcp_keepalive_count: Option<Spanned<u32>>,
    pub tcp_user_timeout: Option<Spanned<DurationOrOff>>,
    pub http2: Option<Spanned<bool>>,
    pub http2_max_concurrent_streams: Option<Spanned<u32>>,
    pub http2_max_header_list_size: Option<Spanned<ByteSize>>,
    pub http2_idle_timeout: Option<Spanned<HumanDuration>>,
    pub http2_keepalive_interval: Option<Spanned<DurationOrOff>>,
    pub http2_keepalive_timeout: Option<Spanned<HumanDuration>>,
}

/// A duration, or `"off"` for a setting that can be turned off
/// (`tcp_keepalive`, `tcp_user_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationOrOff {
    Off,
    On(std::time::Duration),
}

impl<'de> Deserialize<'de> for DurationOrOff {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = duration_text(deserializer)?;
        if text.trim() == "off" {
            return Ok(DurationOrOff::Off);
        }
        parse_duration(&text)
            .map(DurationOrOff::On)
            .map_err(|why| serde::de::Error::custom(format!("{why}, or \"off\"")))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    /// `"default"` or `"refuse"`; a bad value is a serde error naming the
    /// allowed ones, like `balance`.
    pub unknown_sni: Option<UnknownSni>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Spanned<String>,
    pub hosts: Option<Vec<Spanned<String>>>,
    pub path_prefix: Option<Spanned<String>>,
    pub upstream: Spanned<String>,
    pub allowed_origins: Option<Vec<Spanned<String>>>,
    pub missing_origin: Option<MissingOrigin>,
    pub subprotocols: Option<Vec<Spanned<String>>>,
    pub require_subprotocol: Option<bool>,
    pub rate_limit: Option<RawRateLimit>,
    pub limits: Option<RawRouteLimits>,
    pub inspect: Option<RawInspect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInspect {
    pub enabled: Option<bool>,
    pub ping_interval: Option<Spanned<HumanDuration>>,
    pub pong_timeout: Option<Spanned<HumanDuration>>,
    pub ping_backend: Option<bool>,
    pub idle_timeout: Option<Spanned<HumanDuration>>,
    pub close_timeout: Option<Spanned<HumanDuration>>,
    pub max_frame_size: Option<Spanned<ByteSize>>,
    pub max_message_size: Option<Spanned<ByteSize>>,
    pub enforce_masking: Option<bool>,
    pub max_messages_per_second: Option<Spanned<u64>>,
    pub message_burst: Option<Spanned<u64>>,
}

/// What to do with an Upgrade request that carries no `Origin` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingOrigin {
    /// Non-browser clients (native apps, servers) send no Origin; browsers always do.
    Allow,
    Reject,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub per_client: Option<LimitSpec>,
    pub total: Option<LimitSpec>,
    pub limit_http: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteLimits {
    pub max_websockets: Option<Spanned<u64>>,
    pub max_websockets_per_client: Option<Spanned<u64>>,
    pub client_bytes_per_second: Option<Spanned<ByteSize>>,
    pub client_bytes_burst: Option<Spanned<ByteSize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: Spanned<String>,
    pub servers: Spanned<Vec<Spanned<RawServer>>>,
    pub connect_timeout: Option<Spanned<HumanDuration>>,
    pub response_timeout: Option<Spanned<HumanDuration>>,
    pub balance: Option<Balance>,
    pub hash_key: Option<Spanned<String>>,
    pub hash_load_factor: Option<Spanned<f64>>,
    pub retries: Option<Spanned<u32>>,
    pub resolve_interval: Option<Spanned<HumanDuration>>,
    pub passive_backoff: Option<Spanned<HumanDuration>>,
    pub passive_backoff_max: Option<Spanned<HumanDuration>>,
    pub health_check: Option<RawHealthCheck>,
    pub tls: Option<Spanned<RawUpstreamTls>>,
    pub tcp_keepalive: Option<Spanned<DurationOrOff>>,
    pub tcp_keepalive_interval: Option<Spanned<HumanDuration>>,
    pub tcp_keepalive_count: Option<Spanned<u32>>,
    pub tcp_user_timeout: Option<Spanned<DurationOrOff>>,
    pub rebalance: Option<RawRebalance>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRebalance {
    pub max_skew: Option<Spanned<f64>>,
    pub after: Option<Spanned<HumanDuration>>,
    pub rate: Option<Spanned<Rate>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub enabled: Option<bool>,
    pub ca: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Either `address` or `srv`.
    pub address: Option<Spanned<String>>,
    pub srv: Option<Spanned<String>>,
    pub weight: Option<Spanned<u32>>,
    pub backup: Option<Spanned<bool>>,
    pub drain: Option<bool>,
}

/// How an upstream spreads new tunnels over its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Take turns, in proportion to the weights.
    RoundRobin,
    /// The server with the fewest open tunnels per weight: sockets live for
    /// hours, so counting attempts (round robin) drifts; counting what is
    /// open does not.
    LeastConnections,
    /// Two servers at random, the one with fewer open tunnels: nearly as
    /// even as least connections, without every proxy herding to the same server.
    RandomTwo,
    /// The same key to the same server (rooms, in-memory sessions).
    Hash,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub kind: HealthCheckKind,
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<HumanDuration>>,
    pub timeout: Option<Spanned<HumanDuration>>,
    pub rise: Option<Spanned<u32>>,
    pub fall: Option<Spanned<u32>>,
}

/// What an active health check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// A TCP connection is accepted.
    Tcp,
    /// `GET path` answers 2xx.
    Http,
    /// A real WebSocket opening handshake on `path` is answered 101 with the
    /// right accept key, then closed with 1000.
    Websocket,
}
