//! Upstream checks: server addresses and weights, balancing and its hash key,
//! timeouts, health checks and TLS to the backends.

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::route::normalize_host_pattern;
use super::{Checker, RawTcpKeys, DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT};
use crate::config::raw::{Balance, RawHealthCheck, RawRebalance, RawServer, RawUpstream, RawUpstreamTls};
use crate::config::{
    HashKey, HealthCheck, Nameservers, Rebalance, ServerAddress, ServerTarget, Upstream, UpstreamServer,
};

impl Checker<'_> {
    pub(super) fn upstream(&mut self, i: usize, raw: &RawUpstream, resolver: &Nameservers) -> Upstream {
        if raw.servers.get_ref().is_empty() {
            self.error(
                &raw.servers,
                format!("upstream[{i}].servers"),
                "needs at least one server",
            );
        }
        let mut servers = Vec::new();
        for (j, server) in raw.servers.get_ref().iter().enumerate() {
            if let Some(target) = self.server_target(i, j, server, resolver) {
                let server = server.get_ref();
                // Reported above for `srv`, whose records carry them.
                let srv = matches!(target, ServerTarget::Srv(_));
                servers.push(UpstreamServer {
                    target,
                    weight: server
                        .weight
                        .as_ref()
                        .filter(|_| !srv)
                        .map_or(1, |w| (*w.get_ref()).max(1)),
                    backup: !srv && server.backup.as_ref().is_some_and(|b| *b.get_ref()),
                    drain: server.drain.unwrap_or(false),
                });
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
        let rebalance = raw.rebalance.as_ref().map(|table| self.rebalance(i, table));
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
        let tcp = self.tcp_liveness(
            &format!("upstream[{i}]"),
            RawTcpKeys {
                keepalive: &raw.tcp_keepalive,
                interval: &raw.tcp_keepalive_interval,
                count: &raw.tcp_keepalive_count,
                user_timeout: &raw.tcp_user_timeout,
            },
        );
        Upstream {
            name: raw.name.get_ref().as_str().into(),
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
            resolver: resolver.clone(),
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
            tcp,
            rebalance,
        }
    }

    /// `[upstream.rebalance]`: a skew of 1.0 or less would shed from a
    /// server holding exactly its share, back and forth for ever.
    fn rebalance(&mut self, i: usize, raw: &RawRebalance) -> Rebalance {
        let key = |name: &str| format!("upstream[{i}].rebalance.{name}");
        let max_skew = match &raw.max_skew {
            Some(skew) if !(skew.get_ref().is_finite() && *skew.get_ref() > 1.0) => {
                self.error(
                    skew,
                    key("max_skew"),
                    "must be above 1.0 (1.25 lets a server hold 25% above its weighted share)",
                );
                Rebalance::DEFAULT_MAX_SKEW
            }
            Some(skew) => *skew.get_ref(),
            None => Rebalance::DEFAULT_MAX_SKEW,
        };
        Rebalance {
            max_skew,
            after: self.timeout(raw.after.clone(), &key("after"), Rebalance::DEFAULT_AFTER),
            rate: raw
                .rate
                .as_ref()
                .map_or_else(Rebalance::default_rate, |rate| *rate.get_ref()),
        }
    }

    /// One entry of `servers`: `address` or `srv` (one of them), with the
    /// keys that apply to it. `None` after an error.
    fn server_target(
        &mut self,
        i: usize,
        j: usize,
        entry: &Spanned<RawServer>,
        resolver: &Nameservers,
    ) -> Option<ServerTarget> {
        let key = |name: &str| format!("upstream[{i}].servers[{j}].{name}");
        let server = entry.get_ref();
        if let Some(w) = server.weight.as_ref().filter(|w| *w.get_ref() == 0) {
            let message = "must be at least 1 (use drain = true to stop new tunnels to a server)";
            self.error(w, key("weight"), message);
        }
        let target = match (&server.address, &server.srv) {
            (None, None) => {
                let message = "needs `address` (HOST:PORT) or `srv` (a DNS name with SRV records)";
                self.error(entry, format!("upstream[{i}].servers[{j}]"), message);
                return None;
            }
            (Some(_), Some(srv)) => {
                self.error(srv, key("srv"), "give either `address` or `srv`, not both");
                return None;
            }
            (Some(address), None) => match parse_server_address(address.get_ref()) {
                Ok(address) => ServerTarget::Address(address),
                Err(why) => {
                    self.error(address, key("address"), why);
                    return None;
                }
            },
            (None, Some(srv)) => {
                // SRV records carry each target's weight and priority.
                let carried = "not used with `srv`: each target's comes from its SRV record";
                if let Some(weight) = &server.weight {
                    self.error(weight, key("weight"), format!("{carried} (its weight)"));
                }
                if let Some(backup) = &server.backup {
                    self.error(backup, key("backup"), format!("{carried} (its priority)"));
                }
                match parse_srv_name(srv.get_ref()) {
                    Ok(name) => ServerTarget::Srv(name),
                    Err(why) => {
                        self.error(srv, key("srv"), why);
                        return None;
                    }
                }
            }
        };
        if target.is_dns() && *resolver == Nameservers::System {
            if let Err(why) = self.system_resolver() {
                let at = server.address.as_ref().or(server.srv.as_ref());
                let name = if server.srv.is_some() { "srv" } else { "address" };
                if let Some(at) = at {
                    let message = format!(
                        "needs DNS, and /etc/resolv.conf cannot be used ({why}); \
                         set [global] resolver = \"IP:PORT\""
                    );
                    self.error(at, key(name), message);
                }
            }
        }
        Some(target)
    }

    /// Loads the CA (or the system's roots) now: a bad file is a config
    /// error, not a failed handshake at the first request.
    fn upstream_tls(&mut self, i: usize, table: &Spanned<RawUpstreamTls>) -> Option<crate::tls::UpstreamTls> {
        let raw = table.get_ref();
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
                    _ => self.error(table, format!("upstream[{i}].tls"), why),
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

/// An SRV record's name, such as `_ws._tcp.chat.service.internal`: a DNS
/// name without a port (each target has its own). Lower-cased, without a
/// final dot.
fn parse_srv_name(text: &str) -> Result<String, String> {
    let explain = |why: &str| {
        format!("{text:?} is not an SRV name ({why}); write a DNS name such as \"_ws._tcp.chat.service.internal\"")
    };
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() || name.contains(':') || name.contains('/') || name.parse::<std::net::IpAddr>().is_ok() {
        return Err(explain("a name, no port or scheme"));
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !labels_ok || name.len() > 253 {
        return Err(explain("labels of letters, digits, '-' and '_', separated by dots"));
    }
    Ok(name.to_ascii_lowercase())
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

    #[test]
    fn srv_names() {
        assert_eq!(
            parse_srv_name("_WS._tcp.Chat.service.internal.").unwrap(),
            "_ws._tcp.chat.service.internal"
        );
        assert!(parse_srv_name("_ws._tcp.chat:8080").is_err());
        assert!(parse_srv_name("10.0.0.1").is_err());
        assert!(parse_srv_name("a..b").is_err());
        assert!(parse_srv_name("").is_err());
    }
}
