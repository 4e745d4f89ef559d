//! `[cluster]`: admission limits shared by every instance that uses the
//! same Redis.
//!
//! Redis is asked once per Upgrade request (one script: the rate limits,
//! then the caps) and at each heartbeat, never per message. Tunnel caps are
//! leases: each instance keeps a hash of its own open tunnels per route,
//! and an instance counts toward the fleet only while its lease (renewed by
//! a heartbeat, five times per `lease`) is current; an instance that dies
//! stops counting when its lease ends, with no write per tunnel.
//!
//! While Redis does not answer within `timeout`, `on_unavailable` decides at
//! once and no handshake asks again: the heartbeat alone probes, and when it
//! is answered this instance writes its counts whole (releases may have been
//! lost meanwhile, or the store flushed) before sharing resumes.

mod scripts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{ClusterSettings, OnUnavailable};
use crate::telemetry::Metrics;

/// A rate limit as the shared bucket keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedRate {
    /// Time for one request's cell to come back.
    pub period: Duration,
    /// Requests the bucket holds when full.
    pub burst: u32,
}

/// What one Upgrade request asks of the fleet.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub route: &'a str,
    /// The client's key ([`crate::admission::rate_limit::ClientKey`] as text).
    pub client: &'a str,
    pub per_client_rate: Option<SharedRate>,
    pub total_rate: Option<SharedRate>,
    /// `limits.max_websockets`, when the request would open a tunnel.
    pub max_websockets: Option<usize>,
    pub max_websockets_per_client: Option<usize>,
    /// Whether a tunnel place is asked for (an Upgrade) or only the rates
    /// (a plain request under `limit_http`).
    pub takes_place: bool,
}

/// The fleet's answer.
#[derive(Debug)]
pub enum Answer {
    /// Admitted; the lease holds the tunnel's place until dropped.
    Admitted(Option<Lease>),
    RateLimited(Duration),
    RouteCap,
    ClientCap,
}

/// Redis did not answer in time: `on_unavailable` decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// A route's open tunnels as this instance counts them: what is written to
/// Redis when its copy must be rebuilt.
pub trait LocalCounts: Send + Sync {
    /// Open tunnels, and per client (key text, count) when a per-client cap is kept.
    fn counts(&self) -> (u64, Vec<(String, u64)>);
}

/// The connection to the shared store and this instance's standing in it.
pub struct Cluster {
    instance: String,
    settings: ClusterSettings,
    connection: ConnectionManager,
    scripts: Scripts,
    /// Handshakes ask Redis only while this holds.
    reachable: AtomicBool,
    /// A round trip failed since the counts were last written whole: the
    /// copy in Redis may miss releases.
    dirty: AtomicBool,
    /// Routes with caps, by name, for rewriting the counts.
    routes: Mutex<HashMap<String, Weak<dyn LocalCounts>>>,
    /// Places of ended tunnels on their way back ([`give_back`]).
    releases: mpsc::UnboundedSender<(String, String)>,
    metrics: Metrics,
    /// A binary upgrade gave this process's tunnels to another one.
    handed_over: AtomicBool,
}

struct Scripts {
    admit: Script,
    release: Script,
    heartbeat: Script,
    rewrite: Script,
    leave: Script,
}

impl Cluster {
    /// Connects (lazily: a Redis that is down at start is the same as one
    /// that goes down later) and starts the heartbeat.
    pub fn start(settings: &ClusterSettings, metrics: Metrics) -> Result<Arc<Cluster>, redis::RedisError> {
        crate::tls::install_default_provider();
        let client = redis::Client::open(settings.redis.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.lease / 5))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        let instance = settings.instance.clone().unwrap_or_else(default_instance);
        let (releases, released) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            instance,
            settings: settings.clone(),
            connection,
            scripts: Scripts {
                admit: scripts::admit(),
                release: scripts::release(),
                heartbeat: scripts::heartbeat(),
                rewrite: scripts::rewrite(),
                leave: scripts::leave(),
            },
            reachable: AtomicBool::new(false),
            // A restarted instance of the same name may find its old counts.
            dirty: AtomicBool::new(true),
            routes: Mutex::new(HashMap::new()),
            releases,
            metrics,
            handed_over: AtomicBool::new(false),
        });
        cluster.metrics.cluster_unreachable(true);
        tokio::spawn(heartbeat(Arc::downgrade(&cluster)));
        tokio::spawn(give_back(Arc::downgrade(&cluster), released));
        info!(instance = %cluster.instance, lease = ?settings.lease, "sharing limits through redis");
        Ok(cluster)
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn on_unavailable(&self) -> OnUnavailable {
        self.settings.on_unavailable
    }

    /// Whether handshakes are being answered by the shared store now.
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Registers the local counts of a route with caps (again after a
    /// reload: the newest registration wins).
    pub fn track(&self, route: &str, counts: Weak<dyn LocalCounts>) {
        self.routes_table().insert(route.to_owned(), counts);
    }

    /// One round trip: the rates, then a place in the caps.
    pub async fn admit(self: &Arc<Self>, ask: Ask<'_>) -> Result<Answer, Unavailable> {
        if !self.is_reachable() {
            return Err(Unavailable);
        }
        let caps = ask.takes_place && (ask.max_websockets.is_some() || ask.max_websockets_per_client.is_some());
        let field = format!("c:{}", ask.client);
        let caps_key = self.caps_key(ask.route);
        let rate = |rate: Option<SharedRate>| rate.map_or((0, 1), |r| (micros(r.period).max(1), r.burst.max(1)));
        let (client_period, client_burst) = rate(ask.per_client_rate);
        let (total_period, total_burst) = rate(ask.total_rate);
        let limit = |max: Option<usize>| match (caps, max) {
            (true, Some(max)) => i64::try_from(max).unwrap_or(i64::MAX),
            _ => -1,
        };
        let mut call = self.scripts.admit.prepare_invoke();
        call.key(format!("{}instances", scripts::PREFIX))
            .key(format!("{}rate:{}:c:{}", scripts::PREFIX, ask.route, ask.client))
            .key(format!("{}rate:{}:total", scripts::PREFIX, ask.route))
            .key(&caps_key)
            .arg(&self.instance)
            .arg(format!("{}caps:{}:", scripts::PREFIX, ask.route))
            .arg(&field)
            .arg(client_period)
            .arg(client_burst)
            .arg(total_period)
            .arg(total_burst)
            .arg(limit(ask.max_websockets))
            .arg(limit(ask.max_websockets_per_client));
        let mut connection = self.connection.clone();
        let (code, wait): (i64, i64) = self
            .round_trip("admit", self.settings.timeout, call.invoke_async(&mut connection))
            .await?;
        match code {
            0 if caps => Ok(Answer::Admitted(Some(Lease {
                cluster: self.clone(),
                key: caps_key,
                field: if ask.max_websockets_per_client.is_some() {
                    field
                } else {
                    String::new()
                },
            }))),
            0 => Ok(Answer::Admitted(None)),
            1 => Ok(Answer::RateLimited(Duration::from_micros(wait.max(0) as u64))),
            2 => Ok(Answer::RouteCap),
            3 => Ok(Answer::ClientCap),
            // No lease: the store lost this instance (flushed or restarted).
            // Its counts are written whole at the next heartbeat; until then
            // this instance's own limits answer.
            _ => {
                self.lost("this instance's lease is gone (the store was flushed or restarted)");
                Err(Unavailable)
            }
        }
    }

    /// A clean exit: this instance's tunnels stop counting at once.
    pub async fn leave(&self) {
        let keys = self.tracked_keys();
        let mut call = self.scripts.leave.prepare_invoke();
        call.key(format!("{}instances", scripts::PREFIX));
        for key in &keys {
            call.key(key);
        }
        call.arg(&self.instance);
        let mut connection = self.connection.clone();
        let _ = self
            .round_trip::<i64>("leave", self.heartbeat_timeout(), call.invoke_async(&mut connection))
            .await;
    }

    /// A lease for a tunnel that moved here at a binary upgrade: given back
    /// like any other when the tunnel ends, and counted by the next
    /// heartbeat, which writes this instance's counts whole.
    pub fn adopted(self: &Arc<Self>, route: &str, client: &str, per_client: bool) -> Lease {
        self.dirty.store(true, Ordering::Relaxed);
        Lease {
            cluster: self.clone(),
            key: self.caps_key(route),
            field: match per_client {
                true => format!("c:{client}"),
                false => String::new(),
            },
        }
    }

    /// This process gave its tunnels to another at a binary upgrade. Under
    /// a configured `instance` both share one name, and so one set of
    /// counts, which the new process writes whole: this one gives nothing
    /// back from now on, and does not leave. Under the default name (host
    /// and process ID) each has its own, and this one leaves as usual.
    pub fn hand_over(&self) {
        self.handed_over.store(true, Ordering::Relaxed);
    }

    /// Whether this process's exit takes its counts out of the store.
    pub fn leaves_at_exit(&self) -> bool {
        !(self.handed_over.load(Ordering::Relaxed) && self.settings.instance.is_some())
    }

    fn caps_key(&self, route: &str) -> String {
        format!("{}caps:{}:{}", scripts::PREFIX, route, self.instance)
    }

    fn routes_table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<dyn LocalCounts>>> {
        self.routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The caps hashes of the routes still alive.
    fn tracked_keys(&self) -> Vec<String> {
        let mut routes = self.routes_table();
        routes.retain(|_, counts| counts.strong_count() > 0);
        routes.keys().map(|route| self.caps_key(route)).collect()
    }

    /// The heartbeat's round trips may take longer than a handshake's: no
    /// client waits on them.
    fn heartbeat_timeout(&self) -> Duration {
        (self.settings.lease / 5).max(self.settings.timeout)
    }

    /// One round trip with its deadline, counted; a failure makes the store
    /// unreachable until the heartbeat is answered again.
    async fn round_trip<T>(
        &self,
        op: &'static str,
        limit: Duration,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        let started = Instant::now();
        let (outcome, result) = match tokio::time::timeout(limit, call).await {
            Ok(Ok(value)) => ("ok", Ok(value)),
            Ok(Err(error)) => ("error", Err(error.to_string())),
            Err(_) => ("timeout", Err(format!("no answer within {limit:?}"))),
        };
        self.metrics.cluster_round_trip(op, outcome, started.elapsed());
        result.map_err(|why| {
            self.lost(&why);
            Unavailable
        })
    }

    /// Handshakes stop asking; said once per outage.
    fn lost(&self, why: &str) {
        self.dirty.store(true, Ordering::Relaxed);
        if self.reachable.swap(false, Ordering::Relaxed) {
            self.metrics.cluster_unreachable(true);
            warn!(
                error = why,
                on_unavailable = ?self.settings.on_unavailable,
                "shared limits unavailable: redis did not answer; on_unavailable applies until it does"
            );
        }
    }

    /// Renews the lease; after a failure (or when the store lost the
    /// lease), writes this instance's counts whole, then lets handshakes
    /// ask again.
    async fn beat(&self) {
        let keys = self.tracked_keys();
        let mut call = self.scripts.heartbeat.prepare_invoke();
        call.key(format!("{}instances", scripts::PREFIX));
        for key in &keys {
            call.key(key);
        }
        call.arg(&self.instance).arg(micros(self.settings.lease));
        let mut connection = self.connection.clone();
        let Ok(fresh) = self
            .round_trip::<i64>(
                "heartbeat",
                self.heartbeat_timeout(),
                call.invoke_async(&mut connection),
            )
            .await
        else {
            return;
        };
        if fresh == 1 || self.dirty.load(Ordering::Relaxed) {
            // Cleared before the snapshot: a failure during the rewrite sets it again.
            self.dirty.store(false, Ordering::Relaxed);
            if !self.rewrite().await {
                return;
            }
        }
        if !self.reachable.swap(true, Ordering::Relaxed) {
            self.metrics.cluster_unreachable(false);
            info!(instance = %self.instance, "shared limits available: redis answers");
        }
    }

    /// Every tracked route's counts, written whole.
    async fn rewrite(&self) -> bool {
        let routes: Vec<(String, Arc<dyn LocalCounts>)> = {
            let mut table = self.routes_table();
            table.retain(|_, counts| counts.strong_count() > 0);
            table
                .iter()
                .filter_map(|(route, counts)| Some((route.clone(), counts.upgrade()?)))
                .collect()
        };
        for (route, counts) in routes {
            let (total, clients) = counts.counts();
            let mut call = self.scripts.rewrite.prepare_invoke();
            call.key(format!("{}instances", scripts::PREFIX))
                .key(self.caps_key(&route))
                .arg(&self.instance)
                .arg(micros(self.settings.lease))
                .arg(total);
            for (client, count) in clients {
                call.arg(format!("c:{client}")).arg(count);
            }
            let mut connection = self.connection.clone();
            let written = self
                .round_trip::<i64>("rewrite", self.heartbeat_timeout(), call.invoke_async(&mut connection))
                .await;
            if written.is_err() {
                return false;
            }
        }
        true
    }

    /// A tunnel's place given back, in the next batch; without waiting.
    /// Lost while the store is unreachable: the rewrite after the outage
    /// accounts for it.
    fn release(&self, key: String, field: String) {
        if !self.leaves_at_exit() {
            return;
        }
        if !self.is_reachable() || self.releases.send((key, field)).is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }
}

/// A tunnel's place in the fleet's caps, given back on drop.
#[derive(Debug)]
pub struct Lease {
    cluster: Arc<Cluster>,
    /// The instance's caps hash of the route.
    key: String,
    /// The client's field, or empty when only the route total is kept.
    field: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.cluster
            .release(std::mem::take(&mut self.key), std::mem::take(&mut self.field));
    }
}

/// Most places one release round trip gives back.
const RELEASE_BATCH: usize = 256;

/// Sends the places of ended tunnels back, one round trip per batch: while
/// one is under way the next batch gathers, so a burst of closes costs a
/// few round trips, not one each.
async fn give_back(cluster: Weak<Cluster>, mut releases: mpsc::UnboundedReceiver<(String, String)>) {
    let mut batch = Vec::with_capacity(RELEASE_BATCH);
    while releases.recv_many(&mut batch, RELEASE_BATCH).await > 0 {
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        if !cluster.is_reachable() {
            cluster.dirty.store(true, Ordering::Relaxed);
            batch.clear();
            continue;
        }
        let mut call = cluster.scripts.release.prepare_invoke();
        for (key, field) in batch.drain(..) {
            call.key(key).arg(field);
        }
        let mut connection = cluster.connection.clone();
        let _ = cluster
            .round_trip::<i64>(
                "release",
                cluster.heartbeat_timeout(),
                call.invoke_async(&mut connection),
            )
            .await;
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// Five heartbeats per lease: one lost or late beat does not end it.
async fn heartbeat(cluster: Weak<Cluster>) {
    let Some(period) = cluster.upgrade().map(|c| c.settings.lease / 5) else {
        return;
    };
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        cluster.beat().await;
    }
}

/// Host name and process ID: unique among instances without configuration.
fn default_instance() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "wsgate".to_owned()
    };
    format!("{host}-{}", std::process::id())
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}
