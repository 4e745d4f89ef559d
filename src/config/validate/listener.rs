//! Listener checks: the address to listen on (and that no two listeners share
//! one), the TLS certificates, and the trusted proxies behind `proxy_protocol`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{Checker, RawTcpKeys};
use toml::Spanned;

use crate::config::raw::{DurationOrOff, RawListener};
use crate::config::{Http2, Listener};
use crate::tls::{self, CertificateError};

/// `http2_max_concurrent_streams` at most: each stream can be a tunnel
/// behind one connection's place under `max_connections`.
const MAX_CONCURRENT_STREAMS: u32 = 10_000;
/// `http2_max_header_list_size` bounds, as `global.max_request_header_size`'s
/// upper one: a header block is held whole before any route is known.
const MIN_HEADER_LIST_SIZE: u64 = 1024;
const MAX_HEADER_LIST_SIZE: u64 = 1024 * 1024;

impl Checker<'_> {
    pub(super) fn listener(&mut self, i: usize, raw: &RawListener, global_timeout: Duration) -> Option<Listener> {
        let handshake_timeout = self.timeout(
            raw.handshake_timeout.clone(),
            &format!("listener[{i}].handshake_timeout"),
            global_timeout,
        );
        let mut ranges = Vec::new();
        for (j, range) in raw.trusted_proxies.iter().flatten().enumerate() {
            match crate::proxy::real_ip::parse_range(range.get_ref()) {
                Ok(net) => ranges.push(net),
                Err(why) => self.error(range, format!("listener[{i}].trusted_proxies[{j}]"), why),
            }
        }
        let trusted_proxies = crate::proxy::real_ip::TrustedProxies::new(ranges);
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
        let http2 = self.http2(i, raw);
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
                            let hint = self.relative_path_hint(pair.cert.get_ref());
                            self.error(&pair.cert, format!("{key_prefix}.cert"), format!("{e}{hint}"))
                        }
                        Err(e @ CertificateError::Key { .. }) => {
                            let hint = self.relative_path_hint(pair.key.get_ref());
                            self.error(&pair.key, format!("{key_prefix}.key"), format!("{e}{hint}"))
                        }
                        Err(e) => self.error(&pair.key, format!("{key_prefix}.key"), e.to_string()),
                    }
                }
                let unknown_sni = tls.get_ref().unknown_sni.unwrap_or_default();
                (keys.len() == tls.get_ref().certificates.len())
                    .then(|| Arc::new(tls::ServerTls::new(keys, unknown_sni, http2.is_some())))
            }
        };
        let tcp = self.tcp_liveness(
            &format!("listener[{i}]"),
            RawTcpKeys {
                keepalive: &raw.tcp_keepalive,
                interval: &raw.tcp_keepalive_interval,
                count: &raw.tcp_keepalive_count,
                user_timeout: &raw.tcp_user_timeout,
            },
        );
        Some(Listener {
            name: raw.name.get_ref().clone(),
            listen: listen?,
            handshake_timeout,
            trusted_proxies,
            proxy_protocol,
            tls,
            tcp,
            http2,
        })
    }

    /// `http2` and the `http2_*` limits; `None` when `http2 = false`, and
    /// then a limit set beside it is an error (it would do nothing).
    fn http2(&mut self, i: usize, raw: &RawListener) -> Option<Http2> {
        let key = |name: &str| format!("listener[{i}].{name}");
        let defaults = Http2::default();
        let max_concurrent_streams = match &raw.http2_max_concurrent_streams {
            Some(n) if !(1..=MAX_CONCURRENT_STREAMS).contains(n.get_ref()) => {
                let message = format!("must be from 1 to {MAX_CONCURRENT_STREAMS}");
                self.error(n, key("http2_max_concurrent_streams"), message);
                defaults.max_concurrent_streams
            }
            Some(n) => *n.get_ref(),
            None => defaults.max_concurrent_streams,
        };
        let max_header_list_size = match &raw.http2_max_header_list_size {
            Some(size) if !(MIN_HEADER_LIST_SIZE..=MAX_HEADER_LIST_SIZE).contains(&size.get_ref().0) => {
                let message = format!("must be between 1KiB and 1MiB, not {} bytes", size.get_ref().0);
                self.error(size, key("http2_max_header_list_size"), message);
                None
            }
            // Bounded to 1MiB just above.
            Some(size) => Some(size.get_ref().0 as u32),
            None => None,
        };
        let idle_timeout = self.timeout(
            raw.http2_idle_timeout.clone(),
            &key("http2_idle_timeout"),
            defaults.idle_timeout,
        );
        let keepalive_interval = match &raw.http2_keepalive_interval {
            Some(v) => match *v.get_ref() {
                DurationOrOff::Off => None,
                DurationOrOff::On(d) if d.is_zero() => {
                    let message = "must be longer than zero (\"off\" sends no PINGs)";
                    self.error(v, key("http2_keepalive_interval"), message);
                    defaults.keepalive_interval
                }
                DurationOrOff::On(d) => Some(d),
            },
            None => defaults.keepalive_interval,
        };
        let keepalive_timeout = self.timeout(
            raw.http2_keepalive_timeout.clone(),
            &key("http2_keepalive_timeout"),
            defaults.keepalive_timeout,
        );
        if raw.http2.as_ref().is_some_and(|on| !*on.get_ref()) {
            let set = [
                (
                    "http2_max_concurrent_streams",
                    raw.http2_max_concurrent_streams.as_ref().map(Spanned::span),
                ),
                (
                    "http2_max_header_list_size",
                    raw.http2_max_header_list_size.as_ref().map(Spanned::span),
                ),
                ("http2_idle_timeout", raw.http2_idle_timeout.as_ref().map(Spanned::span)),
                (
                    "http2_keepalive_interval",
                    raw.http2_keepalive_interval.as_ref().map(Spanned::span),
                ),
                (
                    "http2_keepalive_timeout",
                    raw.http2_keepalive_timeout.as_ref().map(Spanned::span),
                ),
            ];
            for (name, span) in set {
                if let Some(span) = span {
                    self.error(&Spanned::new(span, ()), key(name), "only used when http2 is not false");
                }
            }
            return None;
        }
        Some(Http2 {
            max_concurrent_streams,
            max_header_list_size,
            idle_timeout,
            keepalive_interval,
            keepalive_timeout,
        })
    }

    pub(super) fn unique_addresses(&mut self, listeners: &[RawListener]) {
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
}
