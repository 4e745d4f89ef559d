//! Choosing the backend server for each new connection.
//!
//! A [`Pool`] holds an upstream's servers as [`Backend`]s: one per address
//! its entries stand for now (an IP address, the addresses of a host name,
//! the targets of an SRV record), each with its open-tunnel count and
//! health. A pick considers the available servers of the lowest tier
//! (primaries, then backups in order) and lets the upstream's
//! [`strategy::Picker`] choose among them.
//!
//! Names are asked again when their answer's TTL runs out, and at least
//! every `resolve_interval` ([`Pool::resolve_due`]): a server that is no
//! longer in the answer gets no new tunnels and keeps the ones it has; a
//! failed resolution keeps the last answer.

mod backend;
pub mod hash_key;
pub mod strategy;

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::{debug, info, warn};

pub use backend::{Backend, BackendGuard, HealthChange, ShedTicket, Source};

use super::discovery::{Answer, Found, Resolver};
use crate::config::{Balance, HashKey, ServerTarget, Upstream, UpstreamServer};
use strategy::Picker;

/// The shortest time an answer is used before it is asked again, however
/// short its TTL (Consul's is 0): a busy loop of queries helps no one.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// After a failed resolution, the next try comes this soon (or at
/// `resolve_interval`, when shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// An upstream's servers and the way it picks among them.
pub struct Pool {
    pub name: Arc<str>,
    entries: Vec<Entry>,
    /// Swapped whole when names are resolved again; picks never wait.
    backends: ArcSwap<Vec<Arc<Backend>>>,
    picker: Picker,
    /// What `balance = "hash"` hashes; `None` for the other strategies,
    /// which need no key.
    hash_key: Option<HashKey>,
    /// `None` when no entry needs DNS; `Err` when the resolver could not
    /// be built (said at each resolution, like a failed query).
    resolver: Option<Result<Resolver, String>>,
    resolve_interval: Duration,
    /// One resolution at a time: each replaces the servers of the entries
    /// it asked about.
    resolving: tokio::sync::Mutex<()>,
}

/// One entry of `servers` and how its last resolution went.
struct Entry {
    server: UpstreamServer,
    /// As written: every backend it stands for carries it ([`Backend::entry`]).
    key: Arc<str>,
    state: Mutex<EntryState>,
}

#[derive(Debug, Clone, Copy)]
struct EntryState {
    /// When to ask again; `None` for an IP address.
    due: Option<Instant>,
    /// The last resolution failed (said once, until one succeeds).
    failing: bool,
    /// At least one answer came (a change after it is worth a log line).
    answered: bool,
}

impl Entry {
    fn source(&self) -> Source {
        match &self.server.target {
            ServerTarget::Srv(_) => Source::Srv,
            target if target.is_dns() => Source::Dns,
            ServerTarget::Address(_) => Source::Static,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, EntryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Pool {
    /// Resolves every server's address; a name that does not resolve now is
    /// logged and tried again later.
    ///
    /// After a reload, `previous` is the same upstream's pool of the last
    /// configuration: servers still configured keep their state (open
    /// tunnels, health, back-off) and take the new weight, `backup` and
    /// `drain`; names it had resolved keep its answer until the next one
    /// (asked for at once by [`Pool::resolve_due`]), so a reload never
    /// waits on DNS for them.
    pub async fn new(config: &Upstream, previous: Option<&Pool>) -> Pool {
        let known = previous.map(Pool::backends).unwrap_or_default();
        let entries: Vec<Entry> = config
            .servers
            .iter()
            .map(|server| Entry {
                server: server.clone(),
                key: server.target.to_string().into(),
                state: Mutex::new(EntryState {
                    due: None,
                    failing: false,
                    answered: false,
                }),
            })
            .collect();
        let needs_dns = entries.iter().any(|e| e.server.target.is_dns());
        let mut carried = Vec::new();
        let mut fresh = vec![false; entries.len()];
        let now = Instant::now();
        for (i, entry) in entries.iter().enumerate() {
            let kept: Vec<Arc<Backend>> = known.iter().filter(|b| *b.entry == *entry.key).cloned().collect();
            if entry.server.target.is_dns() && !kept.is_empty() {
                let server = &entry.server;
                for backend in &kept {
                    match entry.source() {
                        Source::Srv => backend.set_draining(server.drain),
                        _ => backend.update(server.weight, u32::from(server.backup), server.drain),
                    }
                }
                carried.extend(kept);
                *entry.state() = EntryState {
                    due: Some(now),
                    failing: false,
                    answered: true,
                };
            } else {
                fresh[i] = true;
            }
        }
        let pool = Pool {
            name: config.name.clone(),
            entries,
            backends: ArcSwap::new(Arc::new(carried)),
            picker: Picker::new(config.balance, config.hash_load_factor),
            hash_key: (config.balance == Balance::Hash).then(|| config.hash_key.clone()),
            resolver: needs_dns.then(|| Resolver::new(&config.resolver)),
            resolve_interval: config.resolve_interval,
            resolving: tokio::sync::Mutex::new(()),
        };
        pool.resolve_where(&known, |i, _| fresh[i]).await;
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

    /// Whether any server is named by host name or SRV record (and so
    /// worth resolving again).
    pub fn has_host_names(&self) -> bool {
        self.entries.iter().any(|e| e.server.target.is_dns())
    }

    /// Resolves every name again now.
    pub async fn resolve(&self) {
        let known = self.backends();
        self.resolve_where(&known, |_, _| true).await;
    }

    /// Resolves the names whose answer ran out (its TTL, or
    /// `resolve_interval`, whichever is shorter); returns when the next one
    /// runs out, `None` when no entry is a name.
    pub async fn resolve_due(&self) -> Option<Instant> {
        let now = Instant::now();
        let known = self.backends();
        self.resolve_where(&known, |_, state| state.due.is_some_and(|due| due <= now))
            .await;
        self.entries.iter().filter_map(|e| e.state().due).min()
    }

    /// Asks for the entries `which` selects (by index and state), all at
    /// once, and replaces their servers with the answers. Servers already
    /// known (in `known`) keep their state; addresses that disappeared get
    /// no new tunnels, and tunnels already on them are untouched (they
    /// hold their backend until they end). A failure keeps the entry's
    /// servers as they were.
    async fn resolve_where(&self, known: &[Arc<Backend>], which: impl Fn(usize, &EntryState) -> bool) {
        let _one_at_a_time = self.resolving.lock().await;
        let asked: Vec<bool> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| which(i, &e.state()))
            .collect();
        let answers = futures_util::future::join_all(
            self.entries
                .iter()
                .zip(&asked)
                .map(|(entry, asked)| async move { (*asked).then_some(self.ask(&entry.server).await) }),
        )
        .await;
        // Servers of entries not asked stay as they are now (an earlier
        // answer, or what a reload carried over).
        let current = self.backends();
        let mut next: Vec<Arc<Backend>> = Vec::new();
        for (entry, answer) in self.entries.iter().zip(answers) {
            let before: Vec<Arc<Backend>> = current.iter().filter(|b| *b.entry == *entry.key).cloned().collect();
            let Some(answer) = answer else {
                next.extend(before);
                continue;
            };
            match answer {
                Ok(answer) => {
                    let start = next.len();
                    for found in &answer.found {
                        let duplicate = next[start..]
                            .iter()
                            .any(|b| b.name == found.name && b.addr == found.addr);
                        if !duplicate {
                            next.push(self.backend_for(entry, found, known));
                        }
                    }
                    self.answered(entry, &before, &next[start..], &answer);
                }
                Err(error) => {
                    self.failed(entry, &error);
                    next.extend(before);
                }
            }
        }
        self.backends.store(Arc::new(next));
    }

    /// The backend for one server of an answer: the known one (its state
    /// kept, its weight and tier updated), or a new one.
    fn backend_for(&self, entry: &Entry, found: &Found, known: &[Arc<Backend>]) -> Arc<Backend> {
        let drain = entry.server.drain;
        let same = |b: &&Arc<Backend>| *b.entry == *entry.key && b.name == found.name && b.addr == found.addr;
        match known.iter().find(same) {
            Some(backend) => {
                backend.update(found.weight, found.tier, drain);
                backend.clone()
            }
            None => Backend::from_entry(
                entry.key.clone(),
                entry.source(),
                found.name.clone(),
                found.addr,
                found.weight,
                found.tier,
                drain,
            ),
        }
    }

    /// What one entry stands for now.
    async fn ask(&self, server: &UpstreamServer) -> Result<Answer, String> {
        let tier = u32::from(server.backup);
        let dns = || match &self.resolver {
            Some(Ok(resolver)) => Ok(resolver),
            Some(Err(why)) => Err(why.clone()),
            None => Err("no resolver".to_owned()),
        };
        match &server.target {
            ServerTarget::Address(address) => match address.host.parse::<IpAddr>() {
                Ok(ip) => Ok(Answer {
                    found: vec![Found {
                        name: address.to_string().into(),
                        addr: SocketAddr::new(ip, address.port),
                        weight: server.weight,
                        tier,
                    }],
                    valid_until: None,
                }),
                Err(_) => dns()?.addresses(&address.host, address.port, server.weight, tier).await,
            },
            ServerTarget::Srv(name) => dns()?.srv(name).await,
        }
    }

    /// An answer came: when to ask again, and a log line when the servers
    /// changed or the name resolves again after failing.
    fn answered(&self, entry: &Entry, before: &[Arc<Backend>], now: &[Arc<Backend>], answer: &Answer) {
        let asked_at = Instant::now();
        let mut state = entry.state();
        state.due = answer.valid_until.map(|until| {
            let ttl = until.saturating_duration_since(asked_at);
            asked_at + ttl.max(MIN_REFRESH).min(self.resolve_interval)
        });
        let show = |backends: &[Arc<Backend>]| -> Vec<String> {
            backends.iter().map(|b| format!("{}={}", b.name, b.addr)).collect()
        };
        let changed = before.len() != now.len() || before.iter().zip(now).any(|(a, b)| !Arc::ptr_eq(a, b));
        if state.failing {
            info!(upstream = %self.name, server = %entry.key, servers = ?show(now), "resolves again");
        } else if state.answered && changed {
            let added: Vec<String> = show(now).into_iter().filter(|s| !show(before).contains(s)).collect();
            let removed: Vec<String> = show(before).into_iter().filter(|s| !show(now).contains(s)).collect();
            info!(upstream = %self.name, server = %entry.key, ?added, ?removed, servers = now.len(),
                "servers changed");
        }
        state.failing = false;
        state.answered = true;
    }

    /// A resolution failed: said once, until one succeeds; asked again soon.
    fn failed(&self, entry: &Entry, error: &str) {
        let mut state = entry.state();
        state.due = Some(Instant::now() + RETRY_AFTER_FAILURE.min(self.resolve_interval));
        if state.failing {
            debug!(upstream = %self.name, server = %entry.key, %error, "still cannot resolve");
        } else {
            warn!(upstream = %self.name, server = %entry.key, %error,
                "cannot resolve; keeping the servers known so far");
        }
        state.failing = true;
    }

    /// A server for a new tunnel, counted as open on it until the guard is
    /// dropped; `tried` are left out (a retry goes elsewhere). `None` when
    /// no server is available.
    pub fn pick(&self, key: Option<&[u8]>, tried: &[SocketAddr]) -> Option<BackendGuard> {
        let backends = self.backends.load();
        // Available primaries, else the available backups of the lowest
        // tier that has any. Failing all, servers only set aside after a
        // failed connect are tried anyway, in the same order: one blip on
        // a lone server must not turn the upstream into 503s (nginx's rule
        // for a single server). Down by active checks or draining stays out.
        let passes: [Availability; 2] = [Backend::is_available, Backend::is_up];
        for available in passes {
            let mut tier = backends.iter().map(|b| b.tier()).min();
            while let Some(this) = tier {
                let usable = |b: &&Arc<Backend>| b.tier() == this && available(b) && !tried.contains(&b.addr);
                // Most often every server is: then no list is made.
                if backends.iter().all(|b| usable(&b)) {
                    let index = self.picker.pick(&backends, key)?;
                    return backends.get(index).map(Backend::acquire);
                }
                let candidates: Vec<Arc<Backend>> = backends.iter().filter(usable).cloned().collect();
                if !candidates.is_empty() {
                    let index = self.picker.pick(&candidates, key)?;
                    return candidates.get(index).map(Backend::acquire);
                }
                tier = backends.iter().map(|b| b.tier()).filter(|&t| t > this).min();
            }
        }
        None
    }
}

/// Which servers a tier of [`Pool::pick`] takes.
type Availability = fn(&Backend) -> bool;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Balance, HashKey, ServerAddress};

    fn upstream(servers: &[(&str, bool)]) -> Upstream {
        Upstream {
            name: "u".into(),
            servers: servers
                .iter()
                .map(|(addr, backup)| UpstreamServer {
                    target: ServerTarget::Address(ServerAddress {
                        host: addr.rsplit_once(':').unwrap().0.into(),
                        port: addr.rsplit_once(':').unwrap().1.parse().unwrap(),
                    }),
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
            resolver: crate::config::Nameservers::System,
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
    async fn backup_tiers_serve_in_order() {
        let pool = Pool::new(&upstream(&[("127.0.0.1:1", false)]), None).await;
        let tiered = |port: u16, tier: u32| {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            Backend::from_entry(
                "srv".into(),
                Source::Srv,
                format!("t{tier}:{port}").into(),
                addr,
                1,
                tier,
                false,
            )
        };
        // Stored out of order: the tier decides, not the position.
        let servers = vec![tiered(3, 2), tiered(2, 1), tiered(1, 0)];
        pool.backends.store(Arc::new(servers.clone()));
        let port = |pool: &Pool| pool.pick(None, &[]).map(|g| g.backend().addr.port());
        assert_eq!(port(&pool), Some(1));
        servers[2].set_draining(true);
        assert_eq!(port(&pool), Some(2), "the first backup tier");
        servers[1].set_draining(true);
        assert_eq!(port(&pool), Some(3), "then the next");
        servers[2].set_draining(false);
        assert_eq!(port(&pool), Some(1), "the primary again once it is back");
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
