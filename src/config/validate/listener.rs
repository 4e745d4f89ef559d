//! Listener checks: the address to listen on (and that no two listeners share
//! one), the TLS certificates, and the trusted proxies behind `proxy_protocol`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::{Checker, RawTcpKeys};
use crate::config::raw::RawListener;
use crate::config::Listener;
use crate::tls::{self, CertificateError};

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
                (keys.len() == tls.get_ref().certificates.len()).then(|| tls::server_config_with(keys, unknown_sni))
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
