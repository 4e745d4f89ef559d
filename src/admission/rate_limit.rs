//! Rate limits on WebSocket Upgrade requests, per route.
//!
//! ```toml
//! [route.rate_limit]
//! per_client = { rate = "20/min", burst = 10 }   # keyed by client IP
//! total = { rate = "500/s", burst = 1000 }       # the whole route
//! ```
//!
//! Two limiters, for two attacks:
//!
//! - [`KeyedLimiter`] (`per_client`) stops one client from taking every tunnel of a route or
//!   hammering the backend with handshakes: each client key gets its own bucket.
//! - [`TotalLimiter`] (`total`) protects the backend from the sum of many clients, which a
//!   per-client limit cannot see (a botnet where every host stays under its own limit).
//!
//! Check `per_client` before `total`, so requests refused for one abusive client do not
//! use up the route's total budget that everyone else shares.
//!
//! A refused request gets 429 with `Retry-After` from [`retry_after_secs`].
//!
//! Both limiters are GCRA limiters from `governor`: a bucket of `burst` cells, refilled with
//! one cell every `per / count`. The state of one bucket is a single 64-bit "theoretical
//! arrival time", updated with a compare-and-swap, so a check takes no lock beyond a
//! shard read lock of the keyed table.
//!
//! # Bounded memory
//!
//! The keyed limiter stores one entry per client key, and clients choose their keys: a botnet
//! has as many addresses as hosts, and a single IPv6 host owns 2^64 addresses. Two rules keep
//! the table bounded whatever the clients do:
//!
//! 1. **Eviction of idle keys** ([`KeyedLimiter::evict_idle`], run by the server every
//!    [`KeyedLimiter::eviction_interval`]): a key whose bucket is full again behaves exactly
//!    like a key never seen, so forgetting it changes no decision. One-shot keys (the shape of
//!    a flood of fresh addresses) therefore leave the table one refill time after their request.
//! 2. **A hard cap** (`max_keys`): eviction alone cannot bound a flood that brings new keys
//!    faster than they go idle. When the table is full, idle keys are evicted first; if it is
//!    still full, a *new* key is refused (with a `Retry-After` of the eviction interval) while
//!    every key already stored keeps its normal answer. This is what nginx's `limit_req` does
//!    when its zone is full. The alternative, dropping stored keys to make room, would hand an
//!    abusive client a fresh bucket whenever the flood pushed it out: the flood would then
//!    disable the very limit it is meant to meet. Refusing new keys fails closed instead.

use std::cell::Cell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, QuantaClock, QuantaInstant, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{NotUntil, Quota, RateLimiter};

/// The units a [`Rate`] may be written with, for error messages.
const UNITS_HELP: &str = "units: s, min, h, d (or second, minute, hour, day)";

/// A rate written as humans do: "20/min", "500/s", "10/h", "1000/d"; also "20/minute",
/// "5/second", "2/hour", "1/day", "20 / min" (spaces ok).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per `per`.
    pub count: NonZeroU32,
    /// The unit of time: one second, minute, hour or day.
    pub per: Duration,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Rate, String> {
        let fail = |why: &str| {
            format!("invalid rate {text:?}: {why}; write <count>/<unit>, such as \"20/min\" ({UNITS_HELP})")
        };
        let (count, unit) = text.split_once('/').ok_or_else(|| fail("missing '/'"))?;
        let (count, unit) = (count.trim(), unit.trim());
        if count.is_empty() {
            return Err(fail("missing count before '/'"));
        }
        // Digits only: u32's parser would also take "+20".
        if !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail("the count must be a whole number"));
        }
        let count: u32 = count.parse().map_err(|_| fail("the count is too large"))?;
        let count = NonZeroU32::new(count).ok_or_else(|| fail("the count must be at least 1"))?;
        let secs = match unit.to_ascii_lowercase().as_str() {
            "s" | "sec" | "second" => 1,
            "min" | "minute" => 60,
            "h" | "hour" => 60 * 60,
            "d" | "day" => 24 * 60 * 60,
            "" => return Err(fail("missing unit after '/'")),
            _ => return Err(fail(&format!("unknown unit {unit:?}"))),
        };
        Ok(Rate {
            count,
            per: Duration::from_secs(secs),
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            86400 => "d",
            _ => return write!(f, "{}/{:?}", self.count, self.per),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl<'de> serde::Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Rate, D::Error> {
        struct RateVisitor;

        impl serde::de::Visitor<'_> for RateVisitor {
            type Value = Rate;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate string such as \"20/min\"")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Rate, E> {
                text.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(RateVisitor)
    }
}

/// One limit: `{ rate = "20/min", burst = 10 }`.
///
/// `burst` is how many requests may arrive back to back after a quiet spell; it defaults to the
/// rate's count (a client may spend a whole period's allowance at once). `burst = 0` is an
/// error: it would refuse everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    pub rate: Rate,
    pub burst: Option<NonZeroU32>,
}

/// The longest time a bucket may take to refill (100 years). Rates and bursts beyond it
/// (such as "1/d" with a burst of four billion) would overflow governor's 64-bit nanosecond
/// arithmetic and panic; such a burst is cut to what fits, which no real client can tell apart.
const MAX_FILL_NANOS: u64 = 100 * 365 * 24 * 3600 * 1_000_000_000;

impl LimitSpec {
    /// The governor quota: one cell replenished every `per / count` (at least 1ns), at most
    /// `burst` cells.
    pub fn quota(&self) -> Quota {
        let period = self.cell_period();
        let burst = self.burst.unwrap_or(self.rate.count);
        let max_burst = (MAX_FILL_NANOS / period.as_nanos() as u64).clamp(1, u32::MAX as u64) as u32;
        let burst = burst.min(NonZeroU32::new(max_burst).unwrap_or(NonZeroU32::MIN));
        Quota::with_period(period)
            .expect("cell period is at least 1ns")
            .allow_burst(burst)
    }

    /// Time to replenish one cell: `per / count`, at least 1ns.
    fn cell_period(&self) -> Duration {
        (self.rate.per / self.rate.count.get()).max(Duration::from_nanos(1))
    }
}

/// The key a client is counted under: its IPv4 address, or its IPv6 address cut to a prefix.
///
/// Why a prefix for IPv6: the smallest allocation a site gets is a /64, and a host can pick
/// any address inside it (privacy addresses, or just a loop over the interface identifier).
/// Keyed by full address, one host would have 2^64 buckets and no limit at all. A /64 is the
/// unit of one customer, the way an IPv4 address is. (A /56 or /48 is coarser and may put
/// separate customers of one ISP under one key; the prefix is configurable for that trade.)
///
/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.7`, what a dual-stack socket reports for an
/// IPv4 client) are keyed as the IPv4 address, so a client gets the same bucket on either
/// kind of listener; otherwise all of IPv4 would share the one /64 `::ffff:0:0/96` lives in.
///
/// Stored as two `u64` halves and a tag rather than a `u128`, so the key is 8-byte aligned
/// (24 bytes, not 32): it is stored once per client in the keyed table.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    hi: u64,
    lo: u64,
    /// `V4_TAG` for IPv4, else the IPv6 prefix length (0..=128).
    tag: u8,
}

const V4_TAG: u8 = u8::MAX;

impl ClientKey {
    /// The key for `ip`; `ipv6_prefix` (clamped to 0..=128) is the number of leading bits of
    /// an IPv6 address that are kept. IPv4 addresses are kept whole.
    pub fn new(ip: IpAddr, ipv6_prefix: u8) -> ClientKey {
        let v6 = match ip {
            IpAddr::V4(v4) => return ClientKey::v4(v4),
            IpAddr::V6(v6) => v6,
        };
        if let Some(v4) = v6.to_ipv4_mapped() {
            return ClientKey::v4(v4);
        }
        let prefix = ipv6_prefix.min(128);
        let mask = match prefix {
            0 => 0,
            p => u128::MAX << (128 - u32::from(p)),
        };
        let bits = u128::from(v6) & mask;
        ClientKey {
            hi: (bits >> 64) as u64,
            lo: bits as u64,
            tag: prefix,
        }
    }

    fn v4(v4: Ipv4Addr) -> ClientKey {
        ClientKey {
            hi: 0,
            lo: u64::from(u32::from(v4)),
            tag: V4_TAG,
        }
    }
}

impl fmt::Display for ClientKey {
    /// `192.0.2.7` or `2001:db8:1:2::/64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tag == V4_TAG {
            write!(f, "{}", Ipv4Addr::from(self.lo as u32))
        } else {
            let bits = (u128::from(self.hi) << 64) | u128::from(self.lo);
            write!(f, "{}/{}", Ipv6Addr::from(bits), self.tag)
        }
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKey({self})")
    }
}

/// Whole seconds for a Retry-After header: rounded up (a client that retries after the
/// advertised time must not be refused again for a fraction of a second), at least 1
/// (`Retry-After: 0` invites an immediate retry loop).
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// The clock both limiters read: quanta's (cheap, monotonic), as nanoseconds since the limiter
/// was made; in tests, a clock the test moves by hand.
#[derive(Debug, Clone)]
enum LimiterClock {
    Real {
        clock: QuantaClock,
        origin: QuantaInstant,
    },
    #[cfg(test)]
    Fake(governor::clock::FakeRelativeClock),
}

impl LimiterClock {
    fn real() -> LimiterClock {
        let clock = QuantaClock::default();
        let origin = clock.now();
        LimiterClock::Real { clock, origin }
    }
}

impl Clock for LimiterClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        match self {
            LimiterClock::Real { clock, origin } => clock.now().duration_since(*origin),
            #[cfg(test)]
            LimiterClock::Fake(clock) => clock.now(),
        }
    }
}

/// A limiter over the whole route: one bucket every request draws from.
pub struct TotalLimiter {
    limiter: RateLimiter<NotKeyed, InMemoryState, LimiterClock, NoOpMiddleware<Nanos>>,
}

impl TotalLimiter {
    pub fn new(spec: &LimitSpec) -> TotalLimiter {
        TotalLimiter::with_clock(spec, LimiterClock::real())
    }

    fn with_clock(spec: &LimitSpec, clock: LimiterClock) -> TotalLimiter {
        TotalLimiter {
            limiter: RateLimiter::direct_with_clock(spec.quota(), clock),
        }
    }

    /// Ok, or Err(time until the next request would be allowed).
    pub fn check(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| wait_from(&not_until, self.limiter.clock()))
    }
}

fn wait_from(not_until: &NotUntil<Nanos>, clock: &LimiterClock) -> Duration {
    not_until.wait_time_from(clock.now())
}

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

/// A limiter per client key, with bounded memory (see the module documentation).
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
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn spec(rate: &str, burst: Option<u32>) -> LimitSpec {
        LimitSpec {
            rate: rate.parse().unwrap(),
            burst: burst.map(|b| NonZeroU32::new(b).unwrap()),
        }
    }

    fn fake_keyed(spec: &LimitSpec, max_keys: usize) -> (KeyedLimiter, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            KeyedLimiter::with_clock(spec, max_keys, LimiterClock::Fake(clock.clone())),
            clock,
        )
    }

    fn v4(i: u32) -> ClientKey {
        ClientKey::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 64)
    }

    /// One key per /64: 2001:db8:0:<i>::1234/64 and beyond.
    fn v6_net(i: u64) -> ClientKey {
        let addr = (0x2001_0db8_u128 << 96) | (u128::from(i) << 64) | 0x1234;
        ClientKey::new(IpAddr::V6(Ipv6Addr::from(addr)), 64)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The exact counter the cap relies on agrees with the table.
    fn assert_consistent(limiter: &KeyedLimiter) {
        assert_eq!(limiter.table.stored.load(Ordering::Relaxed), limiter.table.map.len());
    }

    #[test]
    fn rate_parses() {
        let good = [
            ("20/min", 20, 60),
            ("500/s", 500, 1),
            ("10/h", 10, 3600),
            ("1000/d", 1000, 86400),
            ("20/minute", 20, 60),
            ("5/second", 5, 1),
            ("2/hour", 2, 3600),
            ("1/day", 1, 86400),
            ("20 / min", 20, 60),
            ("  7/sec  ", 7, 1),
            ("3/MIN", 3, 60),
            ("4294967295/s", u32::MAX, 1),
        ];
        for (text, count, secs) in good {
            let rate: Rate = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(rate.count.get(), count, "{text:?}");
            assert_eq!(rate.per, Duration::from_secs(secs), "{text:?}");
        }
        let bad = [
            ("", "missing '/'"),
            ("20", "missing '/'"),
            ("20 min", "missing '/'"),
            ("/min", "missing count"),
            ("20/", "missing unit"),
            ("0/min", "at least 1"),
            ("-1/min", "whole number"),
            ("+5/s", "whole number"),
            ("1.5/s", "whole number"),
            ("twenty/min", "whole number"),
            ("4294967296/s", "too large"),
            ("20/fortnight", "unknown unit"),
            ("20/min/s", "unknown unit"),
            ("20/ms", "unknown unit"),
            ("20/mins", "unknown unit"),
        ];
        for (text, why) in bad {
            let err = text.parse::<Rate>().expect_err(text);
            assert!(err.contains(why), "{text:?}: {err}");
            assert!(err.contains("\"20/min\""), "{text:?}: {err}");
        }
    }

    #[test]
    fn rate_displays() {
        for text in ["20/min", "500/s", "10/h", "1000/d"] {
            assert_eq!(text.parse::<Rate>().unwrap().to_string(), text);
        }
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RouteLimits {
        per_client: Option<LimitSpec>,
        total: Option<LimitSpec>,
    }

    #[test]
    fn limit_spec_deserializes() {
        let limits: RouteLimits = toml::from_str(
            "per_client = { rate = \"20/min\", burst = 10 }\ntotal = { rate = \"500 / s\", burst = 1000 }\n",
        )
        .unwrap();
        assert_eq!(limits.per_client, Some(spec("20/min", Some(10))));
        assert_eq!(limits.total, Some(spec("500/s", Some(1000))));

        let alone: LimitSpec = toml::from_str("rate = \"10/h\"").unwrap();
        assert_eq!(alone, spec("10/h", None));
        assert_eq!(alone.quota().burst_size().get(), 10, "burst defaults to the count");
    }

    #[test]
    fn limit_spec_rejects_mistakes() {
        let cases = [
            ("per_client = { rate = \"20/min\", bursts = 3 }", "unknown field"),
            ("per_client = { rate = \"20/min\", burst = 0 }", "nonzero"),
            ("per_client = { rate = \"20/min\", burst = -1 }", "burst"),
            ("per_client = { rate = \"20/fortnight\" }", "20/min"),
            ("per_client = { rate = 20 }", "20/min"),
            ("per_client = { burst = 5 }", "missing field `rate`"),
        ];
        for (text, why) in cases {
            let err = toml::from_str::<RouteLimits>(text).expect_err(text).to_string();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn quota_matches_spec() {
        let quota = spec("20/min", Some(10)).quota();
        assert_eq!(quota.replenish_interval(), Duration::from_secs(3));
        assert_eq!(quota.burst_size().get(), 10);

        let quota = spec("3/s", None).quota();
        assert_eq!(quota.replenish_interval(), Duration::from_nanos(333_333_333));
        assert_eq!(quota.burst_size().get(), 3);

        // Faster than 1 per nanosecond: clamped to 1ns rather than an invalid zero period.
        assert_eq!(
            spec("4294967295/s", None).quota().replenish_interval(),
            Duration::from_nanos(1)
        );

        // A refill time beyond governor's arithmetic: the burst is cut, no panic.
        let absurd = spec("1/d", Some(u32::MAX));
        let quota = absurd.quota();
        assert!(quota.burst_size().get() < u32::MAX);
        let limiter = KeyedLimiter::new(&absurd, 10);
        assert_eq!(limiter.check(v4(1)), Ok(()));
        assert_eq!(limiter.eviction_interval(), Duration::from_secs(60));
        assert_eq!(TotalLimiter::new(&absurd).check(), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        let cases = [
            (0.1, 1),
            (1.0, 1),
            (1.2, 2),
            (59.5, 60),
            (0.0, 1),
            (2.0, 2),
            (2.000_000_001, 3),
        ];
        for (secs, want) in cases {
            assert_eq!(retry_after_secs(Duration::from_secs_f64(secs)), want, "{secs}");
        }
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
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
    fn real_clock_limiters_refuse_after_burst() {
        // 20/min: one cell per 3s. The test runs in far less than a second.
        let limit = spec("20/min", Some(2));
        let keyed = KeyedLimiter::new(&limit, 1_000_000);
        let key = ClientKey::new(ip("2001:db8::1"), 64);
        assert_eq!(keyed.check(key), Ok(()));
        assert_eq!(keyed.check(key), Ok(()));
        let wait = keyed.check(key).unwrap_err();
        assert!(
            wait > Duration::from_secs(2) && wait <= Duration::from_secs(3),
            "{wait:?}"
        );
        assert_eq!(retry_after_secs(wait), 3);
        assert_eq!(keyed.check(ClientKey::new(ip("2001:db8:0:1::1"), 64)), Ok(()));

        let total = TotalLimiter::new(&limit);
        assert_eq!(total.check(), Ok(()));
        assert_eq!(total.check(), Ok(()));
        let wait = total.check().unwrap_err();
        assert!(
            wait > Duration::from_secs(2) && wait <= Duration::from_secs(3),
            "{wait:?}"
        );
    }

    #[test]
    fn total_limiter_counts_everyone() {
        let clock = FakeRelativeClock::default();
        let total = TotalLimiter::with_clock(&spec("500/s", Some(5)), LimiterClock::Fake(clock.clone()));
        for i in 0..5 {
            assert_eq!(total.check(), Ok(()), "request {i}");
        }
        assert_eq!(total.check(), Err(Duration::from_millis(2)));
        clock.advance(Duration::from_millis(2));
        assert_eq!(total.check(), Ok(()));
        assert_eq!(total.check(), Err(Duration::from_millis(2)));
        clock.advance(Duration::from_millis(10));
        for i in 0..5 {
            assert_eq!(total.check(), Ok(()), "refilled request {i}");
        }
        assert!(total.check().is_err());
    }

    #[test]
    fn client_keys() {
        // One /64, two hosts: one key.
        assert_eq!(
            ClientKey::new(ip("2001:db8:1:2::1"), 64),
            ClientKey::new(ip("2001:db8:1:2:ffff:1:2:3"), 64)
        );
        // Neighbouring /64s: two keys.
        assert_ne!(
            ClientKey::new(ip("2001:db8:1:2::1"), 64),
            ClientKey::new(ip("2001:db8:1:3::1"), 64)
        );
        // /128 tells every address apart.
        assert_ne!(
            ClientKey::new(ip("2001:db8::1"), 128),
            ClientKey::new(ip("2001:db8::2"), 128)
        );
        assert_eq!(
            ClientKey::new(ip("2001:db8::1"), 128),
            ClientKey::new(ip("2001:db8::1"), 128)
        );
        // Prefixes above 128 are clamped; a /0 puts all IPv6 under one key.
        assert_eq!(
            ClientKey::new(ip("2001:db8::1"), 200),
            ClientKey::new(ip("2001:db8::1"), 128)
        );
        assert_eq!(ClientKey::new(ip("2001:db8::1"), 0), ClientKey::new(ip("fe80::1"), 0));
        // An odd prefix cuts inside a group.
        assert_eq!(
            ClientKey::new(ip("2001:db8:ab00::"), 40),
            ClientKey::new(ip("2001:db8:abff::1"), 40)
        );
        assert_ne!(
            ClientKey::new(ip("2001:db8:ab00::"), 40),
            ClientKey::new(ip("2001:db8:ac00::"), 40)
        );
        // The same bits under different prefixes are different keys.
        assert_ne!(
            ClientKey::new(ip("2001:db8::"), 64),
            ClientKey::new(ip("2001:db8::"), 48)
        );

        // IPv4 is keyed whole, and an IPv4-mapped address is the IPv4 address.
        assert_eq!(
            ClientKey::new(ip("::ffff:192.0.2.7"), 64),
            ClientKey::new(ip("192.0.2.7"), 64)
        );
        assert_ne!(ClientKey::new(ip("192.0.2.7"), 64), ClientKey::new(ip("192.0.2.8"), 64));
        // IPv4 is never confused with an IPv6 key holding the same low bits.
        assert_ne!(
            ClientKey::new(ip("::c000:207"), 128),
            ClientKey::new(ip("192.0.2.7"), 128)
        );

        assert_eq!(ClientKey::new(ip("192.0.2.7"), 64).to_string(), "192.0.2.7");
        assert_eq!(ClientKey::new(ip("::ffff:192.0.2.7"), 64).to_string(), "192.0.2.7");
        assert_eq!(
            ClientKey::new(ip("2001:db8:1:2:3:4:5:6"), 64).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(ClientKey::new(ip("2001:db8::1"), 128).to_string(), "2001:db8::1/128");
        assert_eq!(ClientKey::new(ip("2001:db8::1"), 0).to_string(), "::/0");
        assert_eq!(
            format!("{:?}", ClientKey::new(ip("192.0.2.7"), 64)),
            "ClientKey(192.0.2.7)"
        );
        assert_eq!(std::mem::size_of::<ClientKey>(), 24);
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

    #[test]
    fn limiters_are_shareable() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<KeyedLimiter>();
        send_sync::<TotalLimiter>();
    }
}
