//! One backend server of a pool, as the balancer and the health checks see it.
//!
//! Everything a pick reads is an atomic, so picks never wait on a lock; the
//! health streaks, changed only by checks and failed connects, sit behind a
//! small mutex.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// One server address of an upstream.
#[derive(Debug)]
pub struct Backend {
    /// As configured (`backend.internal:8080`), or an SRV target with its
    /// port: for logs, and the TLS server name when the upstream speaks TLS.
    pub name: Arc<str>,
    /// The resolved address connections go to.
    pub addr: SocketAddr,
    /// The entry of `servers` it came from, as written (an address, or an
    /// SRV name).
    pub entry: Arc<str>,
    pub source: Source,
    /// Relative share of new tunnels (default 1); an SRV answer may change it.
    weight: AtomicU32,
    /// 0: a primary; backups serve, lowest tier first, only when no server
    /// of a lower tier is available. An SRV answer may change it.
    tier: AtomicU32,
    draining: AtomicBool,
    open: AtomicUsize,
    healthy: AtomicBool,
    /// Passive health: no new connections before this instant (nanoseconds
    /// since [`epoch`]); 0 when not backed off.
    down_until: AtomicU64,
    /// Health checks and connects that failed in a row, for the metrics: the
    /// streak below restarts whenever the state flips, this one only on a
    /// success.
    failures: AtomicU32,
    health: Mutex<HealthStreak>,
    /// The inspected tunnels open here, which rebalancing may ask to close
    /// ([`crate::upstream::rebalance`]), by when they opened: the keys grow
    /// with each registration, so the last entry is the newest tunnel.
    sheddable: Mutex<BTreeMap<u64, Sheddable>>,
}

/// One inspected tunnel rebalancing may ask to close.
#[derive(Debug)]
struct Sheddable {
    /// Turned true to ask the tunnel to close; it listens through its
    /// drain signal ([`crate::tunnel::drain::DrainSignal::or_when`]).
    ask: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct HealthStreak {
    /// Consecutive results of the kind that would flip the state.
    streak: u32,
    /// Consecutive failed connects, for the passive back-off's growth.
    connect_failures: u32,
}

/// Where a server's address came from, as `/metrics` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An IP address in `address`.
    Static,
    /// The A/AAAA records of a host name in `address`.
    Dns,
    /// The SRV records of `srv`.
    Srv,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Dns => "dns",
            Source::Srv => "srv",
        }
    }
}

/// A health change worth logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthChange {
    Up,
    Down,
}

impl Backend {
    /// A configured address (`backup` is tier 1).
    pub fn new(name: Arc<str>, addr: SocketAddr, weight: u32, backup: bool, drain: bool) -> Arc<Backend> {
        Backend::from_entry(
            name.clone(),
            Source::Static,
            name,
            addr,
            weight,
            u32::from(backup),
            drain,
        )
    }

    pub(super) fn from_entry(
        entry: Arc<str>,
        source: Source,
        name: Arc<str>,
        addr: SocketAddr,
        weight: u32,
        tier: u32,
        drain: bool,
    ) -> Arc<Backend> {
        Arc::new(Backend {
            name,
            addr,
            entry,
            source,
            weight: AtomicU32::new(weight.max(1)),
            tier: AtomicU32::new(tier),
            draining: AtomicBool::new(drain),
            open: AtomicUsize::new(0),
            // Servers start up: refusing all traffic until a first check
            // passes would turn every start and reload into an outage.
            healthy: AtomicBool::new(true),
            down_until: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            health: Mutex::new(HealthStreak::default()),
            sheddable: Mutex::new(BTreeMap::new()),
        })
    }

    /// Relative share of new tunnels, at least 1.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// 0 for a primary; backups are 1 and up, tried lowest first.
    pub fn tier(&self) -> u32 {
        self.tier.load(Ordering::Relaxed)
    }

    pub fn is_backup(&self) -> bool {
        self.tier() > 0
    }

    /// A new answer (a reload, an SRV record) for a server already known:
    /// it keeps its open tunnels and health, and takes these.
    pub(super) fn update(&self, weight: u32, tier: u32, drain: bool) {
        self.weight.store(weight.max(1), Ordering::Relaxed);
        self.tier.store(tier, Ordering::Relaxed);
        self.set_draining(drain);
    }

    /// Tunnels open to this server now.
    pub fn open_tunnels(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts a tunnel on this server until the guard is dropped.
    pub fn acquire(self: &Arc<Self>) -> BackendGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        BackendGuard { backend: self.clone() }
    }

    /// Whether new tunnels may go here: healthy, not backed off, not draining.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_draining() && !self.is_backed_off()
    }

    /// Healthy and not draining, whatever the passive back-off says.
    pub fn is_up(&self) -> bool {
        self.is_healthy() && !self.is_draining()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// A draining server gets no new tunnels and keeps the ones it has.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// Health checks and connects that failed in a row since the last one
    /// that succeeded.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    fn note_result(&self, ok: bool) {
        if ok {
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn is_backed_off(&self) -> bool {
        let until = self.down_until.load(Ordering::Relaxed);
        until != 0 && now_nanos() < until
    }

    /// An active check's result, with the thresholds: `rise` successes in a
    /// row bring a down server up, `fall` failures in a row take it down.
    pub fn record_check(&self, ok: bool, rise: u32, fall: u32) -> Option<HealthChange> {
        self.note_result(ok);
        let mut health = self.lock();
        let up = self.is_healthy();
        if ok == up {
            health.streak = 0;
            return None;
        }
        health.streak += 1;
        let needed = if up { fall } else { rise };
        if health.streak < needed.max(1) {
            return None;
        }
        health.streak = 0;
        self.healthy.store(ok, Ordering::Relaxed);
        if ok {
            health.connect_failures = 0;
            self.down_until.store(0, Ordering::Relaxed);
        }
        Some(if ok { HealthChange::Up } else { HealthChange::Down })
    }

    /// Passive health: a failed connect (refused, timed out) keeps new
    /// tunnels away for `base`, doubling with each failure in a row up to
    /// `max`, without waiting for the next active check. Returns the new
    /// back-off, or `None` when the server was already set aside.
    pub fn record_connect_failure(&self, base: Duration, max: Duration) -> Option<Duration> {
        self.connect_failed_at(now_nanos(), base, max)
    }

    /// "In a row" counts connects tried after the last back-off ran out: the
    /// many connects in flight when a server dies all fail together, and
    /// they are one failure, not a doubling each (which would set the server
    /// aside for `max` after a single outage).
    fn connect_failed_at(&self, now: u64, base: Duration, max: Duration) -> Option<Duration> {
        self.note_result(false);
        let mut health = self.lock();
        if self.down_until.load(Ordering::Relaxed) > now {
            return None;
        }
        let doublings = health.connect_failures.min(16);
        health.connect_failures = health.connect_failures.saturating_add(1);
        let backoff = base.saturating_mul(1 << doublings).min(max);
        let until = now.saturating_add(u64::try_from(backoff.as_nanos()).unwrap_or(u64::MAX));
        self.down_until.store(until.max(1), Ordering::Relaxed);
        Some(backoff)
    }

    /// A successful connect ends any passive back-off.
    pub fn record_connect_success(&self) {
        self.note_result(true);
        if self.down_until.load(Ordering::Relaxed) != 0 {
            let mut health = self.lock();
            health.connect_failures = 0;
            self.down_until.store(0, Ordering::Relaxed);
        }
    }

    /// The streaks stay consistent whatever panicked while holding the lock.
    fn lock(&self) -> std::sync::MutexGuard<'_, HealthStreak> {
        self.health.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a tunnel that can be closed cleanly (an inspected one:
    /// wsgate can send its close frames between frames) as one rebalancing
    /// may shed. The receiver turns true when it is asked to close; the
    /// ticket, dropped as the tunnel ends, takes it off the list.
    pub fn sheddable(self: &Arc<Self>) -> (ShedTicket, watch::Receiver<bool>) {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let (ask, asked) = watch::channel(false);
        self.tunnels().insert(id, Sheddable { ask });
        let ticket = ShedTicket {
            backend: self.clone(),
            id,
        };
        (ticket, asked)
    }

    /// Asks up to `n` of the newest tunnels not asked yet to close;
    /// returns how many were asked.
    pub fn shed_newest(&self, n: usize) -> usize {
        let tunnels = self.tunnels();
        let mut asked = 0;
        for tunnel in tunnels.values().rev() {
            if asked == n {
                break;
            }
            if !*tunnel.ask.borrow() {
                tunnel.ask.send_replace(true);
                asked += 1;
            }
        }
        asked
    }

    /// Tunnels asked to close that have not ended yet: they still count as
    /// open, and must not be asked for twice.
    pub fn shedding(&self) -> usize {
        self.tunnels().values().filter(|tunnel| *tunnel.ask.borrow()).count()
    }

    fn tunnels(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Sheddable>> {
        // A map of handles: a panic elsewhere cannot leave it half-written.
        self.sheddable.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An inspected tunnel on the list rebalancing picks from, until dropped.
#[derive(Debug)]
pub struct ShedTicket {
    backend: Arc<Backend>,
    id: u64,
}

impl Drop for ShedTicket {
    fn drop(&mut self) {
        self.backend.tunnels().remove(&self.id);
    }
}

/// One open tunnel on a backend, counted until dropped.
#[derive(Debug)]
pub struct BackendGuard {
    backend: Arc<Backend>,
}

impl BackendGuard {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for BackendGuard {
    fn drop(&mut self) {
        self.backend.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The process's monotonic epoch, so deadlines fit in an atomic u64.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_nanos() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Arc<Backend> {
        Backend::new("b:1".into(), "127.0.0.1:1".parse().unwrap(), 1, false, false)
    }

    #[test]
    fn rise_and_fall_need_streaks() {
        let b = backend();
        assert_eq!(b.record_check(false, 2, 3), None);
        assert_eq!(b.record_check(false, 2, 3), None);
        assert_eq!(b.record_check(true, 2, 3), None, "a success breaks the failure streak");
        assert_eq!(b.record_check(false, 2, 3), None);
        assert_eq!(b.record_check(false, 2, 3), None);
        assert_eq!(b.record_check(false, 2, 3), Some(HealthChange::Down));
        assert!(!b.is_available());
        assert_eq!(b.record_check(true, 2, 3), None);
        assert_eq!(b.record_check(true, 2, 3), Some(HealthChange::Up));
        assert!(b.is_available());
    }

    #[test]
    fn failed_connects_back_off_exponentially_up_to_the_cap() {
        let b = backend();
        let ms = |n: u64| n * 1_000_000;
        let base = Duration::from_millis(100);
        let max = Duration::from_millis(350);
        assert_eq!(b.connect_failed_at(ms(1_000), base, max), Some(base));
        assert!(b.down_until.load(Ordering::Relaxed) > ms(1_000));
        // Each next failure is of a connect tried once the back-off ran out.
        assert_eq!(b.connect_failed_at(ms(1_100), base, max), Some(base * 2));
        assert_eq!(b.connect_failed_at(ms(1_300), base, max), Some(max));
        assert_eq!(b.connect_failed_at(ms(1_650), base, max), Some(max));
        b.record_connect_success();
        assert!(b.is_available());
        assert_eq!(b.record_connect_failure(base, max), Some(base));
        assert!(!b.is_available());
    }

    #[test]
    fn failures_while_set_aside_do_not_lengthen_the_back_off() {
        let b = backend();
        let ms = |n: u64| n * 1_000_000;
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(30);
        assert_eq!(b.connect_failed_at(ms(1_000), base, max), Some(base));
        // Fifty connects that were in flight when the server died.
        let until = b.down_until.load(Ordering::Relaxed);
        for i in 0..50 {
            assert_eq!(b.connect_failed_at(ms(1_000 + i), base, max), None, "failure {i}");
        }
        assert_eq!(b.down_until.load(Ordering::Relaxed), until, "not moved");
        // The next connect, once the 100 ms are over, is the second in a row.
        assert_eq!(b.connect_failed_at(ms(1_100), base, max), Some(base * 2));
    }

    #[test]
    fn failures_in_a_row_count_checks_and_connects_until_a_success() {
        let b = backend();
        b.record_check(false, 2, 3);
        b.record_connect_failure(Duration::from_millis(1), Duration::from_millis(1));
        b.record_check(false, 2, 3);
        assert_eq!(b.consecutive_failures(), 3);
        b.record_check(false, 2, 3);
        assert!(!b.is_healthy());
        assert_eq!(
            b.consecutive_failures(),
            4,
            "the count goes on while the server is down"
        );
        b.record_check(true, 2, 3);
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn shedding_asks_the_newest_tunnels_once_each() {
        let b = backend();
        let tunnels: Vec<_> = (0..4).map(|_| b.sheddable()).collect();
        assert_eq!(b.shed_newest(2), 2);
        let asked: Vec<bool> = tunnels.iter().map(|(_, asked)| *asked.borrow()).collect();
        assert_eq!(asked, [false, false, true, true], "the two newest");
        assert_eq!(b.shedding(), 2);
        assert_eq!(b.shed_newest(1), 1, "an asked tunnel is not asked again");
        assert!(*tunnels[1].1.borrow() && !*tunnels[0].1.borrow());
        drop(tunnels);
        assert_eq!(b.shedding(), 0, "ended tunnels leave the list");
        assert_eq!(b.shed_newest(5), 0);
    }

    #[test]
    fn guards_count_open_tunnels() {
        let b = backend();
        let (g1, g2) = (b.acquire(), b.acquire());
        assert_eq!(b.open_tunnels(), 2);
        drop((g1, g2));
        assert_eq!(b.open_tunnels(), 0);
        b.set_draining(true);
        assert!(!b.is_available() && b.is_healthy());
    }
}
