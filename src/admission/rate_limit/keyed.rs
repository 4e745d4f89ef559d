//! [`KeyedLimiter`]: one bucket per client key, in governor's dashmap store with a hard cap on
//! the number of keys stored (see "Bounded memory" in the [parent module](super)).
//!
//! The cap is wired into governor through a state store of our own ([`CappedStore`]), which
//! needs a key type of our own ([`Probe`]) to report a refusal back; these pieces only make
//! sense together, so they live here, away from the configuration types and the total limiter.

use std::cell::Cell;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::RateLimiter;

use super::{wait_from, ClientKey, LimitSpec, LimiterClock};

/// The keyed table and its exact size, shared by the limiter's state store and
/// [`KeyedLimiter`] (which needs it to evict and to report sizes).
struct Table {
    map: DashMapStateStore<ClientKey>,
    /// The number of keys in `map`, kept exactly (see [`CappedStore`]); never above `max_keys`.
    stored: AtomicUsize,
    max_keys: usize,
}

impl Table {
    /// Claims room for one new key; false when the table is full.
    ///
    /// Relaxed ordering is enough: every change to `stored` is a read-modify-write of the one
    /// atomic, and those are totally ordered, so no two callers can both take the last slot.
    fn reserve(&self) -> bool {
        self.stored
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_keys).then_some(n + 1)
            })
            .is_ok()
    }
}

/// What a probe learned from the store; see [`Probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeOutcome {
    Stored,
    TableFull,
}

/// The key governor hands to the store: the client key, plus a slot where the store reports
/// that it refused to add the key because the table is full. Governor's checks are generic
/// over their error type, so the store cannot return its own refusal through them; the probe
/// carries it back to [`KeyedLimiter::check`] instead, which ignores governor's answer then.
#[derive(Clone)]
struct Probe {
    key: ClientKey,
    outcome: Cell<ProbeOutcome>,
}

impl Probe {
    fn new(key: ClientKey) -> Probe {
        Probe {
            key,
            outcome: Cell::new(ProbeOutcome::Stored),
        }
    }
}

impl PartialEq for Probe {
    fn eq(&self, other: &Probe) -> bool {
        self.key == other.key
    }
}

impl Eq for Probe {}

impl Hash for Probe {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

/// governor's dashmap state store with a hard cap on its size.
///
/// The cap check costs nothing for known keys (the hot path: a shard read lock and a
/// compare-and-swap, as in governor's own store). Only a key not in the table pays, with one
/// atomic read-modify-write on `Table::stored`, made under the shard's write lock right before
/// the insert; evictions decrement it under the shard's write lock as they remove. So `stored`
/// is the exact size (never an estimate that could drift), the check is O(1) rather than
/// dashmap's `len()` walk over every shard, and the table can never hold more than `max_keys`
/// keys, even with many threads inserting at once.
struct CappedStore(Arc<Table>);

/// The last time a bucket was drawn from: its "theoretical arrival time" in nanoseconds.
fn arrival_time(state: &InMemoryState) -> Option<Nanos> {
    // A decision that always refuses reads the state without changing it.
    match state.measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>) {
        Ok(()) => None,
        Err(tat) => tat,
    }
}

impl StateStore for CappedStore {
    type Key = Probe;

    fn measure_and_replace<T, F, E>(&self, probe: &Probe, decide: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let table = &self.0;
        if let Some(state) = table.map.get(&probe.key) {
            return state.measure_and_replace(&NotKeyed::NonKey, decide);
        }
        let table_full = || {
            probe.outcome.set(ProbeOutcome::TableFull);
            // An answer is owed to governor; the caller sees the probe and discards it.
            decide(None).map(|(answer, _)| answer)
        };
        // A full table refuses new keys without taking the shard's write lock, so a flood of
        // new keys does not stall the known keys that share the shard. The key was unknown at
        // the lookup above, so this refusal is one the locked path could have made too.
        if table.stored.load(Ordering::Relaxed) >= table.max_keys {
            return table_full();
        }
        let entry = table.map.entry(probe.key).or_try_insert_with(|| {
            if table.reserve() {
                Ok(InMemoryState::default())
            } else {
                Err(())
            }
        });
        match entry {
            Ok(state) => state.measure_and_replace(&NotKeyed::NonKey, decide),
            Err(()) => table_full(),
        }
    }
}

impl ShrinkableKeyedStateStore<Probe> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let table = &self.0;
        table.map.retain(|_, state| {
            let keep = arrival_time(state).is_some_and(|tat| tat > drop_below);
            if !keep {
                table.stored.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });
    }

    fn shrink_to_fit(&self) {
        self.0.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.map.len()
    }

    fn is_empty(&self) -> bool {
        self.0.map.is_empty()
    }
}

/// When the table is full, idle keys are evicted on demand at most this often. Without this,
/// a flood of new keys against a table full of busy keys would make every refused request walk
/// the whole table (a million entries): an amplification the flood could use against the CPU.
const MIN_FORCED_EVICTION_GAP: Nanos = Nanos::new(1_000_000_000);

/// `last_eviction` before any eviction ran.
const NEVER: u64 = u64::MAX;

/// A limiter per client key, with bounded memory (see "Bounded memory" in the [module documentation](super)).
pub struct KeyedLimiter {
    limiter: RateLimiter<Probe, CappedStore, LimiterClock, NoOpMiddleware<Nanos>>,
    table: Arc<Table>,
    eviction_interval: Duration,
    /// When an eviction last ran, in the limiter clock's nanoseconds, or `NEVER`.
    last_eviction: AtomicU64,
}

impl KeyedLimiter {
    /// `max_keys`: the hard cap on stored keys (wsgate will use 1_000_000 by default); 0 is
    /// taken as 1.
    pub fn new(spec: &LimitSpec, max_keys: usize) -> KeyedLimiter {
        KeyedLimiter::with_clock(spec, max_keys, LimiterClock::real())
    }

    fn with_clock(spec: &LimitSpec, max_keys: usize, clock: LimiterClock) -> KeyedLimiter {
        let quota = spec.quota();
        let table = Arc::new(Table {
            map: DashMapStateStore::default(),
            stored: AtomicUsize::new(0),
            max_keys: max_keys.max(1),
        });
        let fill = quota
            .replenish_interval()
            .checked_mul(quota.burst_size().get())
            .unwrap_or(Duration::MAX);
        KeyedLimiter {
            limiter: RateLimiter::new(quota, CappedStore(Arc::clone(&table)), clock),
            table,
            eviction_interval: fill.clamp(Duration::from_secs(1), Duration::from_secs(60)),
            last_eviction: AtomicU64::new(NEVER),
        }
    }

    /// Ok, or Err(time until the next request from `key` would be allowed).
    ///
    /// A key not in the table while the table is full is refused with the eviction interval
    /// as the wait (after an on-demand eviction of idle keys, at most once a second); keys in
    /// the table always get their bucket's answer.
    pub fn check(&self, key: ClientKey) -> Result<(), Duration> {
        match self.check_once(key) {
            Some(answer) => answer,
            None if self.evict_when_full() => self.check_once(key).unwrap_or(Err(self.eviction_interval)),
            None => Err(self.eviction_interval),
        }
    }

    /// The bucket's answer, or None when `key` is new and the table full.
    fn check_once(&self, key: ClientKey) -> Option<Result<(), Duration>> {
        let probe = Probe::new(key);
        let answer = self.limiter.check_key(&probe);
        match probe.outcome.get() {
            ProbeOutcome::TableFull => None,
            ProbeOutcome::Stored => Some(answer.map_err(|not_until| wait_from(&not_until, self.limiter.clock()))),
        }
    }

    /// Evicts idle keys for a new key that found the table full, unless an eviction ran less
    /// than `MIN_FORCED_EVICTION_GAP` ago or another thread is evicting now. True if it ran.
    fn evict_when_full(&self) -> bool {
        let now = self.limiter.clock().now().as_u64();
        let last = self.last_eviction.load(Ordering::Relaxed);
        if last != NEVER && now.saturating_sub(last) < MIN_FORCED_EVICTION_GAP.as_u64() {
            return false;
        }
        if self
            .last_eviction
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // No shrink: the room freed is about to be used by new keys.
        self.limiter.retain_recent();
        true
    }

    /// Forgets keys that are back to a full burst (they would behave the same as unknown
    /// keys) and gives the freed memory back; returns how many keys remain.
    ///
    /// governor's test for "back to a full burst" is conservative by one cell period, so a key
    /// is forgotten at the first run at least (its burst's refill time + one period) after its
    /// last request.
    pub fn evict_idle(&self) -> usize {
        self.last_eviction
            .store(self.limiter.clock().now().as_u64(), Ordering::Relaxed);
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.len()
    }

    /// Keys stored now.
    pub fn len(&self) -> usize {
        self.table.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.map.is_empty()
    }

    /// How often [`evict_idle`](Self::evict_idle) should run: the time a key needs to refill
    /// its whole burst, clamped to 1s..=60s. Shorter would walk the table more often than
    /// keys can go idle; longer would keep one-shot keys from a flood, and the cap's refusal
    /// of new keys, around for longer than needed.
    pub fn eviction_interval(&self) -> Duration {
        self.eviction_interval
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};

    use super::super::test_support::{spec, v4};
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn fake_keyed(spec: &LimitSpec, max_keys: usize) -> (KeyedLimiter, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            KeyedLimiter::with_clock(spec, max_keys, LimiterClock::Fake(clock.clone())),
            clock,
        )
    }

    /// One key per /64: 2001:db8:0:<i>::1234/64 and beyond.
    fn v6_net(i: u64) -> ClientKey {
        let addr = (0x2001_0db8_u128 << 96) | (u128::from(i) << 64) | 0x1234;
        ClientKey::new(IpAddr::V6(Ipv6Addr::from(addr)), 64)
    }

    /// The exact counter the cap relies on agrees with the table.
    fn assert_consistent(limiter: &KeyedLimiter) {
        assert_eq!(limiter.table.stored.load(Ordering::Relaxed), limiter.table.map.len());
    }

    #[test]
    fn key_gets_its_burst_then_waits_one_cell() {
        // 10/s: one cell per 100ms, burst 3.
        let (limiter, clock) = fake_keyed(&spec("10/s", Some(3)), 1000);
        let a = v4(1);
        let b = v4(2);
        for i in 0..3 {
            assert_eq!(limiter.check(a), Ok(()), "request {i}");
        }
        assert_eq!(limiter.check(a), Err(Duration::from_millis(100)));
        assert_eq!(limiter.check(b), Ok(()), "another key is unaffected");

        clock.advance(Duration::from_millis(40));
        assert_eq!(limiter.check(a), Err(Duration::from_millis(60)));
        clock.advance(Duration::from_millis(60));
        assert_eq!(limiter.check(a), Ok(()));
        assert_eq!(limiter.check(a), Err(Duration::from_millis(100)));
    }

    #[test]
    fn idle_keys_are_evicted_and_memory_returned() {
        // 1000/s, burst 1: each key is idle 2ms after its one request.
        let (limiter, clock) = fake_keyed(&spec("1000/s", Some(1)), 1_000_000);
        assert_eq!(limiter.eviction_interval(), Duration::from_secs(1));
        for i in 0..50_000 {
            assert_eq!(limiter.check(v6_net(i)), Ok(()));
            assert_eq!(limiter.check(v4(i as u32)), Ok(()));
        }
        assert_eq!(limiter.len(), 100_000);
        assert_consistent(&limiter);
        assert!(limiter.table.map.capacity() >= 100_000);

        // Nothing is idle yet: eviction keeps everything.
        assert_eq!(limiter.evict_idle(), 100_000);

        clock.advance(limiter.eviction_interval());
        assert_eq!(limiter.evict_idle(), 0);
        assert_eq!(limiter.len(), 0);
        assert!(limiter.is_empty());
        assert_consistent(&limiter);
        assert_eq!(limiter.table.map.capacity(), 0, "shrink_to_fit gives the memory back");
    }

    #[test]
    fn eviction_keeps_busy_keys() {
        // 10/s, burst 5: a full burst takes 500ms to refill.
        let (limiter, clock) = fake_keyed(&spec("10/s", Some(5)), 1000);
        let busy = v4(1);
        let quiet = v4(2);
        for _ in 0..5 {
            assert_eq!(limiter.check(busy), Ok(()));
        }
        assert_eq!(limiter.check(quiet), Ok(()));
        clock.advance(Duration::from_millis(300));
        // quiet: one cell used at 0, refilled at 100ms; busy: still 200ms short.
        assert_eq!(limiter.evict_idle(), 1);
        // busy kept its state: 3 cells refilled since, not the 5 a fresh key would get.
        for _ in 0..3 {
            assert_eq!(limiter.check(busy), Ok(()));
        }
        assert_eq!(limiter.check(busy), Err(Duration::from_millis(100)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(limiter.evict_idle(), 0);
    }

    #[test]
    fn full_table_refuses_new_keys_only() {
        // 10/s, burst 2: one cell per 100ms.
        let (limiter, clock) = fake_keyed(&spec("10/s", Some(2)), 1000);
        let interval = limiter.eviction_interval();
        assert_eq!(interval, Duration::from_secs(1));
        for i in 0..1000 {
            assert_eq!(limiter.check(v4(i)), Ok(()), "key {i}");
        }
        assert_eq!(limiter.len(), 1000);

        // The 1001st key is refused, with the eviction interval as the wait.
        assert_eq!(limiter.check(v4(1000)), Err(interval));
        assert_eq!(limiter.check(v6_net(1)), Err(interval));
        assert_eq!(limiter.len(), 1000);
        assert_consistent(&limiter);

        // Known keys get their normal answers: one more cell, then the per-cell wait.
        assert_eq!(limiter.check(v4(0)), Ok(()));
        assert_eq!(limiter.check(v4(0)), Err(Duration::from_millis(100)));
        assert_eq!(limiter.check(v4(999)), Ok(()));

        clock.advance(interval);
        assert_eq!(limiter.evict_idle(), 0);
        assert_eq!(limiter.check(v4(1000)), Ok(()));
        assert_eq!(limiter.len(), 1);
        assert_consistent(&limiter);
    }

    #[test]
    fn full_table_evicts_on_demand_at_most_once_a_second() {
        let (limiter, clock) = fake_keyed(&spec("10/s", Some(2)), 1000);
        for i in 0..1000 {
            assert_eq!(limiter.check(v4(i)), Ok(()));
        }
        // Full of busy keys: the on-demand eviction (run now) frees nothing.
        assert_eq!(limiter.check(v4(5000)), Err(Duration::from_secs(1)));

        // 300ms on, every key is idle, but the last eviction was too recent to walk the table again.
        clock.advance(Duration::from_millis(300));
        assert_eq!(limiter.check(v4(5001)), Err(Duration::from_secs(1)));
        assert_eq!(limiter.len(), 1000);

        // A second after that eviction, a new key triggers one and is let in.
        clock.advance(Duration::from_millis(700));
        assert_eq!(limiter.check(v4(5002)), Ok(()));
        assert_eq!(limiter.len(), 1);
        assert_consistent(&limiter);
    }

    #[test]
    fn cap_holds_under_concurrent_inserts() {
        let (limiter, _clock) = fake_keyed(&spec("1/min", Some(1)), 1000);
        let admitted = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for thread in 0..8u64 {
                let (limiter, admitted) = (&limiter, &admitted);
                scope.spawn(move || {
                    for i in 0..2000 {
                        if limiter.check(v6_net(thread * 1_000_000 + i)).is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 1000);
        assert_eq!(limiter.len(), 1000);
        assert_consistent(&limiter);
    }
}
