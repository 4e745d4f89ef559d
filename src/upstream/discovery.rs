//! Finding an upstream's servers in DNS: the A/AAAA records of a host name,
//! or the SRV records of a service, with how long each answer holds.
//!
//! One resolver ([hickory](hickory_resolver)) per pool, asking the name
//! servers of `[global] resolver` or of `/etc/resolv.conf`. It keeps each
//! answer for its TTL, so asking again before the TTL runs out costs no
//! query; the pool asks again once it has ([`super::balance::Pool`]).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use crate::config::Nameservers;

/// Time one name server has to answer one query, tried twice: a stuck
/// name server delays the next answer, never a tunnel, but it does delay
/// a start or a reload that must resolve a new name.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// One server of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `host:port` of the server: the configured address, or an SRV
    /// target with its port. Logs and metrics name it; with TLS it is the
    /// name the certificate is checked against.
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub weight: u32,
    /// 0 for primaries, then backups in order.
    pub tier: u32,
}

/// The servers one entry of `servers` stands for now.
#[derive(Debug)]
pub struct Answer {
    pub found: Vec<Found>,
    /// When DNS said to ask again (the smallest TTL of the records used);
    /// `None` for an IP address, which never changes.
    pub valid_until: Option<Instant>,
}

/// A DNS resolver for upstream names.
pub struct Resolver {
    dns: TokioResolver,
}

impl Resolver {
    /// A resolver asking `nameservers`; for [`Nameservers::System`], reads
    /// `/etc/resolv.conf` now (a reload reads it again).
    pub fn new(nameservers: &Nameservers) -> Result<Resolver, String> {
        let (config, mut options) = match nameservers {
            Nameservers::System => hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("cannot use /etc/resolv.conf: {e}; set [global] resolver"))?,
            Nameservers::Listed(addrs) => {
                let mut group = NameServerConfigGroup::with_capacity(addrs.len() * 2);
                for addr in addrs {
                    group.push(NameServerConfig::new(*addr, Protocol::Udp));
                    // Answers too long for a datagram come again over TCP.
                    group.push(NameServerConfig::new(*addr, Protocol::Tcp));
                }
                (ResolverConfig::from_parts(None, Vec::new(), group), Default::default())
            }
        };
        options.timeout = QUERY_TIMEOUT;
        options.attempts = 2;
        // Every address of a name, as the system's getaddrinfo gives them.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.cache_size = options.cache_size.max(256);
        let dns = TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(options)
            .build();
        Ok(Resolver { dns })
    }

    /// Every address of `host`, each with `port`.
    pub async fn addresses(&self, host: &str, port: u16, weight: u32, tier: u32) -> Result<Answer, String> {
        let name: Arc<str> = display_address(host, port).into();
        let (ips, valid_until) = self.ips(host).await?;
        let found = ips
            .into_iter()
            .map(|ip| Found {
                name: name.clone(),
                addr: SocketAddr::new(ip, port),
                weight,
                tier,
            })
            .collect();
        Ok(Answer {
            found,
            valid_until: Some(valid_until),
        })
    }

    /// Every target of the SRV records of `name`, at each address of the
    /// target. Priorities become tiers: the lowest number is the primary
    /// tier 0, the next lowest tier 1, and so on. A weight of 0 counts as
    /// 1, the smallest share wsgate has (RFC 2782 gives such a target "a
    /// very small chance", not none). A target whose own name does not
    /// resolve is left out; with none left, the answer is an error.
    pub async fn srv(&self, name: &str) -> Result<Answer, String> {
        let records = self.dns.srv_lookup(name).await.map_err(|e| e.to_string())?;
        let mut valid_until = records.as_lookup().valid_until();
        let priorities: BTreeSet<u16> = records.iter().map(|srv| srv.priority()).collect();
        let mut found = Vec::new();
        let mut last_error = None;
        for srv in records.iter() {
            let target = srv.target().to_ascii();
            let host = target.trim_end_matches('.');
            let tier = priorities.range(..srv.priority()).count() as u32;
            match self.ips(host).await {
                Ok((ips, until)) => {
                    valid_until = valid_until.min(until);
                    let name: Arc<str> = display_address(host, srv.port()).into();
                    for ip in ips {
                        found.push(Found {
                            name: name.clone(),
                            addr: SocketAddr::new(ip, srv.port()),
                            weight: u32::from(srv.weight()).max(1),
                            tier,
                        });
                    }
                }
                Err(error) => last_error = Some(format!("target {host}: {error}")),
            }
        }
        if found.is_empty() {
            return Err(last_error.unwrap_or_else(|| "no SRV records".to_owned()));
        }
        Ok(Answer {
            found,
            valid_until: Some(valid_until),
        })
    }

    /// The addresses of `host` (each once) and until when they hold.
    async fn ips(&self, host: &str) -> Result<(Vec<IpAddr>, Instant), String> {
        let lookup = self.dns.lookup_ip(host).await.map_err(|e| e.to_string())?;
        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in lookup.iter() {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        if ips.is_empty() {
            return Err("no addresses".to_owned());
        }
        Ok((ips, lookup.valid_until()))
    }
}

/// `host:port`, with brackets around an IPv6 address.
fn display_address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
