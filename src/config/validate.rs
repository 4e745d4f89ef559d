//! From the raw file to a [`Config`]: every check, every problem reported.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::{
    Balance, RawConfig, RawGlobal, RawHealthCheck, RawInspect, RawListener, RawRoute, RawUpstream, RawUpstreamTls,
};
use super::units::{ByteSize, HumanDuration};
use super::{
    Admission, Config, ConfigError, ConfigErrors, Global, HashKey, HealthCheck, Inspect, Listener, MissingOrigin,
    Route, ServerAddress, Upstream, UpstreamServer,
};
use crate::admission::origin::OriginPattern;
use crate::tls::{self, CertificateError};

const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_REQUEST_HEADER_SIZE: u64 = 16 * 1024;
const DEFAULT_MAX_CONNECTIONS: u64 = 100_000;
const DEFAULT_IPV6_CLIENT_PREFIX: u8 = 64;
/// Below this, ordinary browser requests with a few cookies would be refused.
const MIN_REQUEST_HEADER_SIZE: u64 = 8 * 1024;
const MAX_REQUEST_HEADER_SIZE: u64 = 1024 * 1024;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let raw = deserialize(text, path)?;
    let mut check = Checker {
        file: path,
        text,
        errors: Vec::new(),
    };
    let config = check.config(raw);
    if check.errors.is_empty() {
        Ok(config)
    } else {
        check.errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(check.errors))
    }
}

/// Syntax and shape: a TOML error, an unknown key or a value of the wrong
/// type, reported with the key's full path (`upstream[0].connect_timeout`).
fn deserialize(text: &str, path: &Path) -> Result<RawConfig, ConfigErrors> {
    let syntax_error = |e: toml::de::Error, key: String| {
        let at = e.span().map_or(0, |s| s.start);
        ConfigErrors::single(ConfigError::at(path, text, at, key, e.message().trim_end()))
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|e| syntax_error(e, String::new()))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = clean_key_path(&e.path().to_string());
        syntax_error(e.into_inner(), key)
    })
}

/// serde_path_to_error sees `Spanned`'s private field names; the user never wrote them.
fn clean_key_path(path: &str) -> String {
    let cleaned: Vec<&str> = path
        .split('.')
        .filter(|part| !part.starts_with("$__serde_spanned") && *part != "?")
        .collect();
    cleaned.join(".")
}

struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn error<T>(&mut self, value: &Spanned<T>, key: impl Into<String>, message: impl Into<String>) {
        self.errors
            .push(ConfigError::at(self.file, self.text, value.span().start, key, message));
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let global = self.global(raw.global);
        if raw.listeners.is_empty() {
            self.errors.push(ConfigError::file(
                self.file,
                "no [[listener]]: wsgate needs at least one address to accept connections on",
            ));
        }
        if raw.routes.is_empty() {
            self.errors.push(ConfigError::file(
                self.file,
                "no [[route]]: every request would be answered 404",
            ));
        }
        self.unique_names("listener", raw.listeners.iter().map(|l| &l.name));
        self.unique_names("route", raw.routes.iter().map(|r| &r.name));
        self.unique_names("upstream", raw.upstreams.iter().map(|u| &u.name));

        let listeners = raw
            .listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| self.listener(i, l, global.handshake_timeout))
            .collect::<Vec<_>>();
        self.unique_addresses(&raw.listeners);
        let upstreams = raw
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| self.upstream(i, u))
            .collect::<Vec<_>>();
        let routes = raw
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.route(i, r, &raw.upstreams))
            .collect::<Vec<_>>();
        self.reachable_routes(&raw.routes, &routes);

        Config {
            path: self.file.to_path_buf(),
            global,
            listeners,
            routes,
            upstreams,
        }
    }

    fn global(&mut self, raw: RawGlobal) -> Global {
        let max_request_header_size = match raw.max_request_header_size {
            Some(size) if !(MIN_REQUEST_HEADER_SIZE..=MAX_REQUEST_HEADER_SIZE).contains(&size.get_ref().0) => {
                self.error(
                    &size,
                    "global.max_request_header_size",
                    format!("must be between 8KiB and 1MiB, not {} bytes", size.get_ref().0),
                );
                DEFAULT_MAX_REQUEST_HEADER_SIZE
            }
            Some(size) => size.get_ref().0,
            None => DEFAULT_MAX_REQUEST_HEADER_SIZE,
        };
        let max_connections = match raw.max_connections {
            Some(n) if n.get_ref() == &0 => {
                self.error(&n, "global.max_connections", "must be at least 1");
                DEFAULT_MAX_CONNECTIONS
            }
            Some(n) => *n.get_ref(),
            None => DEFAULT_MAX_CONNECTIONS,
        };
        let ipv6_client_prefix = match raw.ipv6_client_prefix {
            Some(p) if !(1..=128).contains(p.get_ref()) => {
                self.error(
                    &p,
                    "global.ipv6_client_prefix",
                    "must be between 1 and 128 (64 is one host's usual share)",
                );
                DEFAULT_IPV6_CLIENT_PREFIX
            }
            Some(p) => *p.get_ref(),
            None => DEFAULT_IPV6_CLIENT_PREFIX,
        };
        Global {
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
            ipv6_client_prefix,
            handshake_timeout: self.timeout(
                raw.handshake_timeout,
                "global.handshake_timeout",
                DEFAULT_HANDSHAKE_TIMEOUT,
            ),
            shutdown_timeout: raw
                .shutdown_timeout
                .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |d| d.into_inner().0),
            // Bounded to 1MiB above, so this fits any usize.
            max_request_header_size: max_request_header_size as usize,
        }
    }

    /// A timeout of zero would refuse everything; say so rather than obey.
    fn timeout(&mut self, value: Option<Spanned<HumanDuration>>, key: &str, default: Duration) -> Duration {
        match value {
            Some(d) if d.get_ref().0.is_zero() => {
                self.error(&d, key, "must be longer than zero");
                default
            }
            Some(d) => d.get_ref().0,
            None => default,
        }
    }

    fn unique_names<'r>(&mut self, kind: &str, names: impl Iterator<Item = &'r Spanned<String>>) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, name) in names.enumerate() {
            let key = format!("{kind}[{i}].name");
            if name.get_ref().trim().is_empty() {
                self.error(name, key, "must not be empty");
            } else if let Some(first) = seen.get(name.get_ref().as_str()) {
                let message = format!(
                    "duplicate {kind} name {:?}, already used by {kind}[{first}]",
                    name.get_ref()
                );
                self.error(name, key, message);
            } else {
                seen.insert(name.get_ref(), i);
            }
        }
    }

    fn listener(&mut self, i: usize, raw: &RawListener, global_timeout: Duration) -> Option<Listener> {
        let handshake_timeout = self.timeout(
            raw.handshake_timeout.clone(),
            &format!("listener[{i}].handshake_timeout"),
            global_timeout,
        );
        let mut ranges = Vec::new();
        for (j, range) in raw.trusted_proxies.iter().flatten().enumerate() {
            match crate::real_ip::parse_range(range.get_ref()) {
                Ok(net) => ranges.push(net),
                Err(why) => self.error(range, format!("listener[{i}].trusted_proxies[{j}]"), why),
            }
        }
        let trusted_proxies = crate::real_ip::TrustedProxies::new(ranges);
        let proxy_protocol = raw.proxy_protocol.as_ref().is_some_and(|p| *p.get_ref());
        if let Some(flag) = raw.proxy_protocol.as_ref().filter(|p| *p.get_ref()) {
            if raw.trusted_proxies.as_ref().is_none_or(|t| t.is_empty()) {
                self.error(
                    flag,
                    format!("listener[{i}].proxy_protocol"),
                    "needs trusted_proxies: the addresses of the load balancers whose PROXY headers are believed",
                );
            }
        }
        let listen = match raw.listen.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                let message = format!(
                    "{:?} is not an address to listen on; write IP:PORT such as \"0.0.0.0:8443\" or \"[::]:8443\"",
                    raw.listen.get_ref()
                );
                self.error(&raw.listen, format!("listener[{i}].listen"), message);
                None
            }
        };
        let tls = match &raw.tls {
            None => None,
            Some(tls) if tls.get_ref().certificates.is_empty() => {
                self.error(
                    tls,
                    format!("listener[{i}].tls"),
                    "needs at least one [[listener.tls.certificates]] entry",
                );
                None
            }
            Some(tls) => {
                let mut keys = Vec::new();
                for (j, pair) in tls.get_ref().certificates.iter().enumerate() {
                    let key_prefix = format!("listener[{i}].tls.certificates[{j}]");
                    let cert_path = self.relative_to_config(pair.cert.get_ref());
                    let key_path = self.relative_to_config(pair.key.get_ref());
                    match tls::load_certified_key(&cert_path, &key_path) {
                        Ok(key) => keys.push(key),
                        Err(e @ CertificateError::Certificate { .. }) => {
                            self.error(&pair.cert, format!("{key_prefix}.cert"), e.to_string())
                        }
                        Err(e) => self.error(&pair.key, format!("{key_prefix}.key"), e.to_string()),
                    }
                }
                (keys.len() == tls.get_ref().certificates.len()).then(|| tls::server_config(keys))
            }
        };
        Some(Listener {
            name: raw.name.get_ref().clone(),
            listen: listen?,
            handshake_timeout,
            trusted_proxies,
            proxy_protocol,
            tls,
        })
    }

    fn unique_addresses(&mut self, listeners: &[RawListener]) {
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        for (i, raw) in listeners.iter().enumerate() {
            let Ok(addr) = raw.listen.get_ref().parse::<SocketAddr>() else {
                continue;
            };
            if addr.port() == 0 {
                continue; // port 0: each gets its own ephemeral port
            }
            if let Some(first) = seen.insert(addr, i) {
                let message = format!("{addr} is already the address of listener[{first}]");
                self.error(&raw.listen, format!("listener[{i}].listen"), message);
            }
        }
    }

    fn relative_to_config(&self, path: &str) -> PathBuf {
        let dir = self.file.parent().unwrap_or(Path::new("."));
        dir.join(path)
    }

    fn route(&mut self, i: usize, raw: &RawRoute, upstreams: &[RawUpstream]) -> Option<Route> {
        let mut hosts = Vec::new();
        for (j, host) in raw.hosts.iter().flatten().enumerate() {
            match normalize_host_pattern(host.get_ref()) {
                Ok(h) => hosts.push(h),
                Err(why) => self.error(host, format!("route[{i}].hosts[{j}]"), why),
            }
        }
        let path_prefix = match &raw.path_prefix {
            Some(p) if !p.get_ref().starts_with('/') => {
                self.error(
                    p,
                    format!("route[{i}].path_prefix"),
                    format!("{:?} must start with \"/\"", p.get_ref()),
                );
                None
            }
            Some(p) => Some(p.get_ref().clone()),
            None => Some("/".to_string()),
        };
        let wanted = raw.upstream.get_ref();
        let upstream = upstreams.iter().position(|u| u.name.get_ref() == wanted);
        if upstream.is_none() {
            let defined: Vec<&str> = upstreams.iter().map(|u| u.name.get_ref().as_str()).collect();
            let message = if defined.is_empty() {
                format!("no upstream named {wanted:?}: the file defines no [[upstream]]")
            } else {
                format!("no upstream named {wanted:?} (defined: {})", defined.join(", "))
            };
            self.error(&raw.upstream, format!("route[{i}].upstream"), message);
        }
        let admission = self.admission(i, raw);
        let inspect = raw.inspect.as_ref().and_then(|inspect| self.inspect(i, inspect));
        Some(Route {
            name: raw.name.get_ref().clone(),
            hosts,
            path_prefix: path_prefix?,
            upstream: upstream?,
            admission,
            inspect,
        })
    }

    fn inspect(&mut self, i: usize, raw: &RawInspect) -> Option<Inspect> {
        if raw.enabled == Some(false) {
            return None;
        }
        let key = |name: &str| format!("route[{i}].inspect.{name}");
        let idle_timeout = raw
            .idle_timeout
            .clone()
            .map(|t| self.timeout(Some(t), &key("idle_timeout"), Duration::from_secs(600)));
        let size = |checker: &mut Self, value: &Option<Spanned<ByteSize>>, name: &str, default: u64| match value {
            Some(v) if v.get_ref().0 < 125 => {
                checker.error(v, key(name), "must be at least 125 bytes (the largest control frame)");
                default
            }
            Some(v) => v.get_ref().0,
            None => default,
        };
        let max_frame_size = size(self, &raw.max_frame_size, "max_frame_size", 16 << 20);
        let max_message_size = size(self, &raw.max_message_size, "max_message_size", 64 << 20);
        Some(Inspect {
            ping_interval: self.timeout(
                raw.ping_interval.clone(),
                &key("ping_interval"),
                Duration::from_secs(30),
            ),
            pong_timeout: self.timeout(raw.pong_timeout.clone(), &key("pong_timeout"), Duration::from_secs(10)),
            ping_backend: raw.ping_backend.unwrap_or(false),
            idle_timeout,
            close_timeout: self.timeout(raw.close_timeout.clone(), &key("close_timeout"), Duration::from_secs(5)),
            max_frame_size,
            max_message_size: max_message_size.max(max_frame_size),
            enforce_masking: raw.enforce_masking.unwrap_or(true),
        })
    }

    fn admission(&mut self, i: usize, raw: &RawRoute) -> Admission {
        let mut admission = Admission::default();
        if let Some(origins) = &raw.allowed_origins {
            let mut patterns = Vec::new();
            for (j, origin) in origins.iter().enumerate() {
                match origin.get_ref().parse::<OriginPattern>() {
                    Ok(pattern) => patterns.push(pattern),
                    Err(why) => self.error(origin, format!("route[{i}].allowed_origins[{j}]"), why),
                }
            }
            admission.allowed_origins = Some(patterns);
        }
        admission.missing_origin = raw.missing_origin.unwrap_or(MissingOrigin::Allow);
        if let Some(protocols) = &raw.subprotocols {
            for (j, protocol) in protocols.iter().enumerate() {
                if !is_token(protocol.get_ref()) {
                    let message = format!(
                        "{:?} is not a subprotocol name: RFC 6455 §4.1 allows letters, digits and !#$%&'*+-.^_`|~ only",
                        protocol.get_ref()
                    );
                    self.error(protocol, format!("route[{i}].subprotocols[{j}]"), message);
                }
            }
            admission.subprotocols = Some(protocols.iter().map(|p| p.get_ref().clone()).collect());
        }
        admission.require_subprotocol = raw.require_subprotocol.unwrap_or(true);
        if let Some(rate_limit) = &raw.rate_limit {
            admission.per_client_rate = rate_limit.per_client;
            admission.total_rate = rate_limit.total;
            admission.limit_http = rate_limit.limit_http.unwrap_or(false);
        }
        if let Some(limits) = &raw.limits {
            admission.max_websockets =
                self.positive(&limits.max_websockets, &format!("route[{i}].limits.max_websockets"));
            admission.max_websockets_per_client = self.positive(
                &limits.max_websockets_per_client,
                &format!("route[{i}].limits.max_websockets_per_client"),
            );
        }
        admission
    }

    /// A count that must be at least 1: a cap of 0 would refuse everything.
    fn positive(&mut self, value: &Option<Spanned<u64>>, key: &str) -> Option<usize> {
        let value = value.as_ref()?;
        if *value.get_ref() == 0 {
            self.error(value, key, "must be at least 1 (omit the key for no limit)");
            return None;
        }
        Some(usize::try_from(*value.get_ref()).unwrap_or(usize::MAX))
    }

    /// Two routes with the same host and prefix: the second never matches,
    /// which is always a mistake worth stopping for.
    fn reachable_routes(&mut self, raw: &[RawRoute], routes: &[Route]) {
        for (i, route) in routes.iter().enumerate() {
            for earlier in &routes[..i] {
                let same_hosts = route.hosts.is_empty() && earlier.hosts.is_empty()
                    || route.hosts.iter().any(|h| earlier.hosts.contains(h));
                if same_hosts && route.path_prefix == earlier.path_prefix {
                    if let Some(raw_route) = raw.iter().find(|r| r.name.get_ref() == &route.name) {
                        let message = format!(
                            "route {:?} can never match: route {:?} has the same hosts and path_prefix {:?}",
                            route.name, earlier.name, route.path_prefix
                        );
                        let key = format!(
                            "route[{}].path_prefix",
                            raw.iter().position(|r| std::ptr::eq(r, raw_route)).unwrap_or(i)
                        );
                        self.error(&raw_route.name, key, message);
                    }
                }
            }
        }
    }

    fn upstream(&mut self, i: usize, raw: &RawUpstream) -> Upstream {
        if raw.servers.get_ref().is_empty() {
            self.error(
                &raw.servers,
                format!("upstream[{i}].servers"),
                "needs at least one server",
            );
        }
        let mut servers = Vec::new();
        for (j, server) in raw.servers.get_ref().iter().enumerate() {
            let weight = match &server.weight {
                Some(w) if *w.get_ref() == 0 => {
                    let message = "must be at least 1 (use drain = true to stop new tunnels to a server)";
                    self.error(w, format!("upstream[{i}].servers[{j}].weight"), message);
                    1
                }
                Some(w) => *w.get_ref(),
                None => 1,
            };
            match parse_server_address(server.address.get_ref()) {
                Ok(address) => servers.push(UpstreamServer {
                    address,
                    weight,
                    backup: server.backup.unwrap_or(false),
                    drain: server.drain.unwrap_or(false),
                }),
                Err(why) => self.error(&server.address, format!("upstream[{i}].servers[{j}].address"), why),
            }
        }
        if !servers.is_empty() && servers.iter().all(|s| s.backup) {
            self.error(
                &raw.servers,
                format!("upstream[{i}].servers"),
                "every server is a backup: mark at least one as primary",
            );
        }
        let balance = raw.balance.unwrap_or(Balance::LeastConnections);
        let hash_key = match &raw.hash_key {
            Some(key) => match parse_hash_key(key.get_ref()) {
                Ok(parsed) => parsed,
                Err(why) => {
                    self.error(key, format!("upstream[{i}].hash_key"), why);
                    HashKey::ClientIp
                }
            },
            None => HashKey::ClientIp,
        };
        if let Some(key) = raw.hash_key.as_ref().filter(|_| balance != Balance::Hash) {
            self.error(
                key,
                format!("upstream[{i}].hash_key"),
                "only used with balance = \"hash\"",
            );
        }
        let hash_load_factor = match &raw.hash_load_factor {
            Some(f) if !(f.get_ref().is_finite() && *f.get_ref() >= 1.0) => {
                self.error(
                    f,
                    format!("upstream[{i}].hash_load_factor"),
                    "must be at least 1.0 (1.25 lets a server take 25% above the average)",
                );
                1.25
            }
            Some(f) => *f.get_ref(),
            None => 1.25,
        };
        let health_check = raw.health_check.as_ref().map(|check| self.health_check(i, check));
        let tls = raw.tls.as_ref().and_then(|tls| self.upstream_tls(i, tls));
        let passive_backoff = self.timeout(
            raw.passive_backoff.clone(),
            &format!("upstream[{i}].passive_backoff"),
            Duration::from_secs(1),
        );
        let passive_backoff_max = self.timeout(
            raw.passive_backoff_max.clone(),
            &format!("upstream[{i}].passive_backoff_max"),
            Duration::from_secs(30),
        );
        Upstream {
            name: raw.name.get_ref().clone(),
            servers,
            balance,
            hash_key,
            hash_load_factor,
            retries: raw.retries.as_ref().map_or(2, |r| *r.get_ref()),
            resolve_interval: self.timeout(
                raw.resolve_interval.clone(),
                &format!("upstream[{i}].resolve_interval"),
                Duration::from_secs(30),
            ),
            passive_backoff,
            passive_backoff_max: passive_backoff_max.max(passive_backoff),
            health_check,
            tls,
            connect_timeout: self.timeout(
                raw.connect_timeout.clone(),
                &format!("upstream[{i}].connect_timeout"),
                DEFAULT_CONNECT_TIMEOUT,
            ),
            response_timeout: self.timeout(
                raw.response_timeout.clone(),
                &format!("upstream[{i}].response_timeout"),
                DEFAULT_RESPONSE_TIMEOUT,
            ),
        }
    }

    /// Loads the CA (or the system's roots) now: a bad file is a config
    /// error, not a failed handshake at the first request.
    fn upstream_tls(&mut self, i: usize, raw: &RawUpstreamTls) -> Option<crate::tls::UpstreamTls> {
        if raw.enabled == Some(false) {
            return None;
        }
        let ca = raw.ca.as_ref().map(|ca| self.relative_to_config(ca.get_ref()));
        let name = raw.server_name.as_ref().map(|n| n.get_ref().as_str());
        match crate::tls::UpstreamTls::new(ca.as_deref(), name) {
            Ok(tls) => Some(tls),
            Err(why) => {
                match (&raw.server_name, &raw.ca) {
                    (Some(n), _) if why.contains("server name") => {
                        self.error(n, format!("upstream[{i}].tls.server_name"), why)
                    }
                    (_, Some(ca)) => self.error(ca, format!("upstream[{i}].tls.ca"), why),
                    _ => self
                        .errors
                        .push(ConfigError::file(self.file, format!("upstream[{i}].tls: {why}"))),
                }
                None
            }
        }
    }

    fn health_check(&mut self, i: usize, raw: &RawHealthCheck) -> HealthCheck {
        let key = |name: &str| format!("upstream[{i}].health_check.{name}");
        let path = match &raw.path {
            Some(p) if !p.get_ref().starts_with('/') => {
                self.error(p, key("path"), format!("{:?} must start with \"/\"", p.get_ref()));
                "/".to_string()
            }
            Some(p) => p.get_ref().clone(),
            None => "/".to_string(),
        };
        let count = |checker: &mut Self, value: &Option<Spanned<u32>>, name: &str, default: u32| match value {
            Some(v) if *v.get_ref() == 0 => {
                checker.error(v, key(name), "must be at least 1");
                default
            }
            Some(v) => *v.get_ref(),
            None => default,
        };
        HealthCheck {
            kind: raw.kind,
            path,
            interval: self.timeout(raw.interval.clone(), &key("interval"), Duration::from_secs(5)),
            timeout: self.timeout(raw.timeout.clone(), &key("timeout"), Duration::from_secs(2)),
            rise: count(self, &raw.rise, "rise", 2),
            fall: count(self, &raw.fall, "fall", 3),
        }
    }
}

/// An HTTP token (RFC 9110 §5.6.2), the grammar of subprotocol names.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Lower-cases a host pattern and checks it is a bare name (no scheme,
/// port or path), optionally with a leading `*.` wildcard.
fn normalize_host_pattern(pattern: &str) -> Result<String, String> {
    let host = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
    let name = host.strip_prefix("*.").unwrap_or(&host);
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    let is_ip = name.parse::<std::net::IpAddr>().is_ok();
    if valid || is_ip {
        Ok(host)
    } else {
        Err(format!(
            "{pattern:?} is not a host name; write a bare name such as \"chat.example.com\" or \"*.example.com\" (no scheme, port or path)"
        ))
    }
}

/// `client_ip`, `header:NAME`, `cookie:NAME` or `query:NAME`.
fn parse_hash_key(text: &str) -> Result<HashKey, String> {
    let explain = || {
        format!(
            "{text:?} is not a hash key; write \"client_ip\", \"header:X-User-Id\", \"cookie:sid\" or \"query:room\""
        )
    };
    if text == "client_ip" {
        return Ok(HashKey::ClientIp);
    }
    let (source, name) = text.split_once(':').ok_or_else(explain)?;
    if name.is_empty() {
        return Err(explain());
    }
    match source {
        "header" => http::HeaderName::from_bytes(name.as_bytes())
            .map(HashKey::Header)
            .map_err(|_| explain()),
        "cookie" => Ok(HashKey::Cookie(name.to_string())),
        "query" => Ok(HashKey::Query(name.to_string())),
        _ => Err(explain()),
    }
}

/// `host:port` or `[v6]:port`, where host is an IP address or a DNS name.
fn parse_server_address(text: &str) -> Result<ServerAddress, String> {
    let explain = || {
        format!("{text:?} is not a server address; write HOST:PORT such as \"10.0.0.11:8080\", \"[::1]:8080\" or \"backend.internal:8080\"")
    };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(ServerAddress {
            host: addr.ip().to_string(),
            port: addr.port(),
        });
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(explain)?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(explain)?;
    if host.contains(':') || normalize_host_pattern(host).is_err() || host.starts_with("*.") {
        return Err(explain());
    }
    Ok(ServerAddress {
        host: host.to_ascii_lowercase(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert_eq!(
            normalize_host_pattern("Chat.Example.COM."),
            Ok("chat.example.com".into())
        );
        assert_eq!(normalize_host_pattern("*.example.com"), Ok("*.example.com".into()));
        assert!(normalize_host_pattern("https://example.com").is_err());
        assert!(normalize_host_pattern("example.com:443").is_err());
        assert!(normalize_host_pattern("").is_err());
    }

    #[test]
    fn server_addresses() {
        assert_eq!(
            parse_server_address("127.0.0.1:9001").unwrap().to_string(),
            "127.0.0.1:9001"
        );
        assert_eq!(parse_server_address("[::1]:9001").unwrap().to_string(), "[::1]:9001");
        assert_eq!(
            parse_server_address("Backend.internal:8080").unwrap().host,
            "backend.internal"
        );
        assert!(parse_server_address("backend.internal").is_err());
        assert!(parse_server_address("backend:0").is_err());
        assert!(parse_server_address("http://backend:80").is_err());
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    fn errors(text: &str) -> Vec<ConfigError> {
        parse(text, Path::new("/etc/wsgate/test.toml")).unwrap_err().0
    }

    const BASE: &str = r#"
[[listener]]
name = "public"
listen = "127.0.0.1:0"

[[route]]
name = "chat"
upstream = "chat-backends"

[[upstream]]
name = "chat-backends"
servers = [{ address = "127.0.0.1:9001" }]
"#;

    #[test]
    fn a_valid_file_loads() {
        let config = parse(BASE, Path::new("x.toml")).unwrap();
        assert_eq!(config.routes[0].path_prefix, "/");
        assert_eq!(config.upstreams[0].connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    }

    #[test]
    fn unknown_keys_name_their_full_path() {
        let text = BASE.replace("servers =", "connect_timout = \"3s\"\nservers =");
        let errors = errors(&text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "upstream[0].connect_timout");
        assert_eq!(errors[0].line, 12);
        assert!(errors[0].message.contains("connect_timout"), "{}", errors[0].message);
    }

    #[test]
    fn bad_values_inside_spanned_fields_name_the_key() {
        let text = BASE.replace("listen = \"127.0.0.1:0\"", "listen = 8443");
        let listen = errors(&text);
        assert_eq!(listen[0].key, "listener[0].listen", "{listen:?}");
        let text = BASE.replace("servers =", "connect_timeout = \"10 parsecs\"\nservers =");
        let timeout = errors(&text);
        assert_eq!(timeout[0].key, "upstream[0].connect_timeout", "{timeout:?}");
        assert_eq!(timeout[0].line, 12);
    }
}
