//! Choosing the backend server for each new connection.
//!
//! A [`Pool`] holds an upstream's servers as [`Backend`]s: one per resolved
//! address, each with its open-tunnel count and health. A pick considers the
//! available primaries, or the backups when no primary is available, and
//! lets the upstream's [`strategy::Picker`] choose among them.

mod backend;
pub mod hash_key;
pub mod strategy;

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::warn;

pub use backend::{Backend, BackendGuard, HealthChange, ShedTicket};

use crate::config::{Balance, HashKey, Upstream, UpstreamServer};
use strategy::Picker;

/// An upstream's servers and the way it picks among them.
pub struct Pool {
    pub name: Arc<str>,
    servers: Vec<UpstreamServer>,
    /// Swapped whole when names are resolved again; picks never wait.
    backends: ArcSwap<Vec<Arc<Backend>>>,
    picker: Picker,
    /// What `balance = "hash"` hashes; `None` for the other strategies,
    /// which need no key.
    hash_key: Option<HashKey>,
}

impl Pool {
    /// Resolves every server's address; a name that does not resolve now is
    /// logged and tried again at the next [`Pool::resolve`].
    ///
    /// After a reload, `previous` is the same upstream's pool of the last
    /// configuration: servers still configured alike keep their state (open
    /// tunnels, health, back-off), and take the new `drain` flag.
    pub async fn new(config: &Upstream, previous: Option<&Pool>) -> Pool {
        let known = previous.map(Pool::backends).unwrap_or_default();
        let pool = Pool {
            name: config.name.clone(),
            servers: config.servers.clone(),
            backends: ArcSwap::new(known),
            picker: Picker::new(config.balance, config.hash_load_factor),
            hash_key: (config.balance == Balance::Hash).then(|| config.hash_key.clone()),
        };
        pool.resolve().await;
        pool
    }

    /// The key a request is balanced by ([`Pool::pick`]'s `key`), when the
    /// upstream balances by one: see [`hash_key::extract`].
    pub fn key_of<'r>(
        &self,
        client: IpAddr,
        headers: &'r http::HeaderMap,
        uri: &'r http::Uri,
    ) -> Option<Cow<'r, [u8]>> {
        hash_key::extract(self.hash_key.as_ref()?, client, headers, uri)
    }

    /// The servers now, for health checks and statistics.
    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends.load_full()
    }

    /// Whether any server is named by host name (and so worth resolving again).
    pub fn has_host_names(&self) -> bool {
        self.servers.iter().any(|s| s.address.host.parse::<IpAddr>().is_err())
    }

    /// Resolves the servers' names again: every returned address joins the
    /// pool. Servers already known keep their state (open tunnels, health);
    /// addresses that disappeared get no new tunnels, and tunnels already on
    /// them are untouched (they hold their backend until they end).
    pub async fn resolve(&self) {
        let current = self.backends.load_full();
        let mut next = Vec::new();
        for server in &self.servers {
            let name: Arc<str> = server.address.to_string().into();
            let addresses = match resolve(server).await {
                Ok(addresses) => addresses,
                Err(error) => {
                    warn!(upstream = %self.name, server = %name, %error, "cannot resolve; keeping the addresses known so far");
                    current.iter().filter(|b| b.name == name).map(|b| b.addr).collect()
                }
            };
            for addr in addresses {
                let known = current.iter().find(|b| {
                    b.name == name && b.addr == addr && b.weight == server.weight.max(1) && b.backup == server.backup
                });
                next.push(match known {
                    Some(backend) => {
                        backend.set_draining(server.drain);
                        backend.clone()
                    }
                    None => Backend::new(name.clone(), addr, server.weight, server.backup, server.drain),
                });
            }
        }
        self.backends.store(Arc::new(next));
    }

    /// A server for a new tunnel, counted as open on it until the guard is
    /// dropped; `tried` are left out (a retry goes elsewhere). `None` when
    /// no server is available.
    pub fn pick(&self, key: Option<&[u8]>, tried: &[SocketAddr]) -> Option<BackendGuard> {
        let backends = self.backends.load();
        let usable = |backup: bool, available: Availability| -> Vec<Arc<Backend>> {
            backends
                .iter()
                .filter(|b| b.backup == backup && available(b) && !tried.contains(&b.addr))
                .cloned()
                .collect()
        };
        // Available primaries, else available backups. Failing both, servers
        // only set aside after a failed connect are tried anyway: one blip on
        // a lone server must not turn the upstream into 503s (nginx's rule
        // for a single server). Down by active checks or draining stays out.
        let tiers: [(bool, Availability); 4] = [
            (false, Backend::is_available),
            (true, Backend::is_available),
            (false, Backend::is_up),
            (true, Backend::is_up),
        ];
        let candidates = tiers
            .into_iter()
            .map(|(backup, available)| usable(backup, available))
            .find(|candidates| !candidates.is_empty())?;
        let index = self.picker.pick(&candidates, key)?;
        candidates.get(index).map(Backend::acquire)
    }
}

/// Which servers a tier of [`Pool::pick`] takes.
type Availability = fn(&Backend) -> bool;

async fn resolve(server: &UpstreamServer) -> std::io::Result<Vec<SocketAddr>> {
    let address = &server.address;
    if let Ok(ip) = address.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, address.port)]);
    }
    let mut seen = HashSet::new();
    let found: Vec<SocketAddr> = tokio::net::lookup_host((address.host.as_str(), address.port))
        .await?
        .filter(|addr| seen.insert(*addr))
        .collect();
    if found.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Balance, HashKey, ServerAddress};
    use std::time::Duration;

    fn upstream(servers: &[(&str, bool)]) -> Upstream {
        Upstream {
            name: "u".into(),
            servers: servers
                .iter()
                .map(|(addr, backup)| UpstreamServer {
                    address: ServerAddress {
                        host: addr.rsplit_once(':').unwrap().0.into(),
                        port: addr.rsplit_once(':').unwrap().1.parse().unwrap(),
                    },
                    weight: 1,
                    backup: *backup,
                    drain: false,
                })
                .collect(),
            balance: Balance::LeastConnections,
            hash_key: HashKey::ClientIp,
            hash_load_factor: 1.25,
            retries: 2,
            resolve_interval: Duration::from_secs(30),
            passive_backoff: Duration::from_secs(1),
            passive_backoff_max: Duration::from_secs(30),
            health_check: None,
            tls: None,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            tcp: crate::config::TcpLiveness::default(),
            rebalance: None,
        }
    }

    #[tokio::test]
    async fn backups_serve_only_when_no_primary_is_available() {
        let pool = Pool::new(&upstream(&[("127.0.0.1:1", false), ("127.0.0.1:2", true)]), None).await;
        let first = pool.pick(None, &[]).unwrap();
        assert_eq!(first.backend().addr.port(), 1);
        assert_eq!(
            pool.pick(None, &[first.backend().addr]).unwrap().backend().addr.port(),
            2
        );
        first.backend().set_draining(true);
        assert_eq!(pool.pick(None, &[]).unwrap().backend().addr.port(), 2);
        pool.backends()[1].set_draining(true);
        assert!(pool.pick(None, &[]).is_none());
    }

    #[tokio::test]
    async fn a_lone_server_set_aside_after_a_failed_connect_is_still_tried() {
        let pool = Pool::new(&upstream(&[("127.0.0.1:1", false)]), None).await;
        let backend = pool.backends()[0].clone();
        backend.record_connect_failure(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!backend.is_available());
        assert_eq!(pool.pick(None, &[]).unwrap().backend().addr, backend.addr);
        assert!(
            pool.pick(None, &[backend.addr]).is_none(),
            "but not twice for one request"
        );
        for _ in 0..3 {
            backend.record_check(false, 1, 1);
        }
        assert!(pool.pick(None, &[]).is_none(), "down by active checks: 503 at once");
    }

    #[tokio::test]
    async fn names_resolve_to_every_address_and_keep_their_state() {
        let pool = Pool::new(&upstream(&[("localhost:9", false)]), None).await;
        let before = pool.backends();
        assert!(!before.is_empty());
        assert!(before.iter().all(|b| &*b.name == "localhost:9" && b.addr.port() == 9));
        let guard = before[0].acquire();
        pool.resolve().await;
        assert!(
            Arc::ptr_eq(&pool.backends()[0], &before[0]),
            "a known address keeps its Backend"
        );
        assert_eq!(pool.backends()[0].open_tunnels(), 1);
        drop(guard);
    }
}
