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
//!
//! # Layout
//!
//! This file holds what both limiters share (the [`Rate`] and [`LimitSpec`] configuration, the
//! clock, [`retry_after_secs`]) and the simple [`TotalLimiter`]. The keyed limiter, with its
//! capped table, is in `keyed.rs`; [`ClientKey`], the only part that knows about IP addresses,
//! is in `client_key.rs`.

mod client_key;
mod keyed;

pub use client_key::ClientKey;
pub use keyed::KeyedLimiter;

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use governor::clock::{Clock, QuantaClock, QuantaInstant, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
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
        let (period, burst) = self.cells();
        Quota::with_period(period)
            .expect("cell period is at least 1ns")
            .allow_burst(burst)
    }

    /// The cell period and the burst, cut to what `MAX_FILL_NANOS` allows:
    /// the local limiter's and the fleet's shared bucket's (`[cluster]`).
    pub fn cells(&self) -> (Duration, NonZeroU32) {
        let period = self.cell_period();
        let burst = self.burst.unwrap_or(self.rate.count);
        let max_burst = (MAX_FILL_NANOS / period.as_nanos() as u64).clamp(1, u32::MAX as u64) as u32;
        (period, burst.min(NonZeroU32::new(max_burst).unwrap_or(NonZeroU32::MIN)))
    }

    /// Time to replenish one cell: `per / count`, at least 1ns.
    fn cell_period(&self) -> Duration {
        (self.rate.per / self.rate.count.get()).max(Duration::from_nanos(1))
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

/// Helpers for the tests of this module and of its submodules.
#[cfg(test)]
mod test_support {
    use std::net::{IpAddr, Ipv4Addr};
    use std::num::NonZeroU32;

    use super::{ClientKey, LimitSpec};

    pub(super) fn spec(rate: &str, burst: Option<u32>) -> LimitSpec {
        LimitSpec {
            rate: rate.parse().unwrap(),
            burst: burst.map(|b| NonZeroU32::new(b).unwrap()),
        }
    }

    pub(super) fn v4(i: u32) -> ClientKey {
        ClientKey::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 64)
    }

    pub(super) fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{ip, spec, v4};
    use super::*;
    use governor::clock::FakeRelativeClock;

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
    fn limiters_are_shareable() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<KeyedLimiter>();
        send_sync::<TotalLimiter>();
    }
}
