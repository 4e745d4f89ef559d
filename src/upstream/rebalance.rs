//! Rebalancing after scale-out (`[upstream.rebalance]`).
//!
//! A WebSocket lives for hours: a server that joins the pool or comes back
//! from being down gets only new tunnels, while the others keep theirs. One
//! task per upstream watches the open tunnels of each server against its
//! weighted share, and once a server has held more than `max_skew` times its
//! share for `after`, asks its newest inspected tunnels to close with 1012
//! ("rebalancing"), at most `rate` a second for the whole upstream. Their
//! clients reconnect, and the balancer places them where there is room.
//!
//! What it promises:
//! - never more than the excess: a server keeps `ceil(max_skew × share)`
//!   tunnels, counting those already asked to close and not yet gone;
//! - only servers that can take tunnels (up, not draining; the backups only
//!   while no primary is) have a share: nothing is shed toward a server
//!   that is down;
//! - only inspected tunnels, which wsgate closes between frames with a
//!   close frame each side reads; plain splices stay where they are;
//! - each instance balances its own tunnels: a fleet converges because
//!   each of its instances does.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::balance::{Backend, Pool};
use crate::config::Rebalance;
use crate::telemetry::metrics::Metrics;

/// How often the counts are read; the rate is spread over these ticks.
const TICK: Duration = Duration::from_millis(100);

/// Runs until `stop`: the rebalancing of `pool`'s servers.
pub async fn run(pool: Arc<Pool>, settings: Rebalance, metrics: Metrics, stop: CancellationToken) {
    let mut rebalancer = Rebalancer::new(settings);
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let backends = pool.backends();
                if let Some(round) = rebalancer.tick(Instant::now(), &backends) {
                    round.report(&pool.name, &metrics);
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

/// The state between ticks.
struct Rebalancer {
    settings: Rebalance,
    /// Since when some server has held more than its share.
    imbalanced_since: Option<Instant>,
    /// The round under way: what is left to shed, per server.
    round: Option<Round>,
    /// Tunnels that may be asked to close now (a token bucket).
    budget: f64,
}

/// One rebalancing round: from the moment an imbalance has lasted `after`
/// until its excess (as counted then) has been shed. Reconnecting clients
/// are briefly counted nowhere, so the excess is fixed when the round
/// starts; a new round needs a new imbalance lasting `after`.
struct Round {
    servers: Vec<RoundServer>,
}

struct RoundServer {
    backend: Arc<Backend>,
    /// Open tunnels when the round started.
    open_before: usize,
    /// Still to shed: the excess when the round started, less those asked.
    left: usize,
    closed: usize,
}

impl Rebalancer {
    fn new(settings: Rebalance) -> Rebalancer {
        Rebalancer {
            settings,
            imbalanced_since: None,
            round: None,
            budget: 0.0,
        }
    }

    /// Tunnels the rate allows per second.
    fn per_second(&self) -> f64 {
        f64::from(self.settings.rate.count.get()) / self.settings.rate.per.as_secs_f64()
    }

    /// One tick: returns the round that ended with it, if one did.
    fn tick(&mut self, now: Instant, backends: &[Arc<Backend>]) -> Option<Round> {
        let per_tick = self.per_second() * TICK.as_secs_f64();
        // No burst beyond one tick's share (at least one tunnel, for rates
        // slower than one a tick): at most `rate` a second, evenly.
        self.budget = (self.budget + per_tick).min(per_tick.max(1.0));
        let limits = limits(backends, self.settings.max_skew);
        let excess = |(backend, limit): &(Arc<Backend>, usize)| {
            backend
                .open_tunnels()
                .saturating_sub(backend.shedding())
                .saturating_sub(*limit)
        };
        let Some(round) = &mut self.round else {
            if limits.iter().all(|server| excess(server) == 0) {
                self.imbalanced_since = None;
                return None;
            }
            let since = *self.imbalanced_since.get_or_insert(now);
            if now.duration_since(since) >= self.settings.after {
                self.round = Some(Round {
                    servers: limits
                        .iter()
                        .map(|server| RoundServer {
                            backend: server.0.clone(),
                            open_before: server.0.open_tunnels(),
                            left: excess(server),
                            closed: 0,
                        })
                        .collect(),
                });
            }
            return None;
        };
        let mut asked_any = false;
        for server in &mut round.servers {
            // Clients that left on their own count toward the excess too.
            let now_excess = limits
                .iter()
                .find(|(backend, _)| Arc::ptr_eq(backend, &server.backend))
                .map_or(0, excess);
            server.left = server.left.min(now_excess);
            let allowed = self.budget.floor() as usize;
            if server.left == 0 || allowed == 0 {
                continue;
            }
            let asked = server.backend.shed_newest(server.left.min(allowed));
            self.budget -= asked as f64;
            server.closed += asked;
            // None left to ask (the rest are plain splices): the round is done here.
            server.left = if asked == 0 { 0 } else { server.left - asked };
            asked_any |= asked > 0;
        }
        if asked_any || round.servers.iter().any(|server| server.left > 0) {
            return None;
        }
        self.imbalanced_since = None;
        self.round.take()
    }
}

impl Round {
    /// The round's log line (info when it closed any tunnel) and counters.
    fn report(&self, upstream: &str, metrics: &Metrics) {
        let closed: usize = self.servers.iter().map(|server| server.closed).sum();
        let mut servers = String::new();
        for server in &self.servers {
            let separator = if servers.is_empty() { "" } else { ", " };
            let _ = write!(
                servers,
                "{separator}{} {} open, {} closed",
                server.backend.name, server.open_before, server.closed
            );
            if server.closed > 0 {
                metrics.rebalanced(upstream, &server.backend.name, server.closed);
            }
        }
        if closed > 0 {
            info!(upstream, servers, closed, "rebalanced");
        } else {
            debug!(
                upstream,
                servers, "over-full servers have no inspected tunnels to close"
            );
        }
    }
}

/// Each server with the most tunnels it may hold: `ceil(max_skew × share)`,
/// its share being the upstream's open tunnels times its weight over the
/// weights of the servers that can take tunnels (up and not draining, in the
/// lowest tier that has one: the primaries, or the first backups while no
/// primary is). A server that cannot
/// take tunnels has no share: everything it holds is excess once another
/// can take it, and nothing at all is shed while none can.
fn limits(backends: &[Arc<Backend>], max_skew: f64) -> Vec<(Arc<Backend>, usize)> {
    let total: usize = backends.iter().map(|backend| backend.open_tunnels()).sum();
    let tier_in_use = backends
        .iter()
        .filter(|backend| backend.is_up())
        .map(|b| b.tier())
        .min();
    let takes = |backend: &Backend| backend.is_up() && Some(backend.tier()) == tier_in_use;
    let weights: u64 = backends
        .iter()
        .filter(|backend| takes(backend))
        .map(|backend| u64::from(backend.weight()))
        .sum();
    backends
        .iter()
        .map(|backend| {
            let limit = if weights == 0 {
                usize::MAX
            } else if takes(backend) {
                let share = total as f64 * f64::from(backend.weight()) / weights as f64;
                (max_skew * share).ceil() as usize
            } else {
                0
            };
            (backend.clone(), limit)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::rate_limit::Rate;
    use crate::upstream::balance::{BackendGuard, ShedTicket};

    fn server(port: u16, weight: u32) -> Arc<Backend> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        Backend::new(addr.to_string().into(), addr, weight, false, false)
    }

    /// `n` inspected tunnels open on `backend`.
    fn open(backend: &Arc<Backend>, n: usize) -> Vec<(BackendGuard, ShedTicket, tokio::sync::watch::Receiver<bool>)> {
        (0..n)
            .map(|_| {
                let (ticket, asked) = backend.sheddable();
                (backend.acquire(), ticket, asked)
            })
            .collect()
    }

    fn settings(after: Duration, rate: &str) -> Rebalance {
        Rebalance {
            max_skew: 1.25,
            after,
            rate: rate.parse::<Rate>().unwrap(),
        }
    }

    fn asked(tunnels: &[(BackendGuard, ShedTicket, tokio::sync::watch::Receiver<bool>)]) -> usize {
        tunnels.iter().filter(|(_, _, asked)| *asked.borrow()).count()
    }

    #[test]
    fn shares_follow_weights_and_only_servers_that_can_take_tunnels() {
        let (a, b, c) = (server(1, 1), server(2, 3), server(3, 1));
        let _tunnels = (open(&a, 100), open(&b, 0), open(&c, 0));
        c.set_draining(true);
        let limits = limits(&[a.clone(), b.clone(), c.clone()], 1.25);
        assert_eq!(limits.iter().map(|(_, l)| *l).collect::<Vec<_>>(), [32, 94, 0]);
        b.record_check(false, 1, 1);
        let limits = super::limits(&[a.clone(), b.clone(), c.clone()], 1.25);
        assert_eq!(limits[0].1, 125, "a server that is down has no share");
        a.record_check(false, 1, 1);
        let limits = super::limits(&[a, b, c], 1.25);
        assert!(
            limits.iter().all(|(_, l)| *l == usize::MAX),
            "no server up: nothing to shed toward"
        );
    }

    #[tokio::test]
    async fn sheds_the_excess_after_the_imbalance_lasted_at_the_rate() {
        let (a, b) = (server(1, 1), server(2, 1));
        let tunnels = open(&a, 200);
        let backends = [a.clone(), b.clone()];
        let mut rebalancer = Rebalancer::new(settings(Duration::from_secs(1), "100/s"));
        let start = Instant::now();
        assert!(rebalancer.tick(start, &backends).is_none());
        assert!(rebalancer.tick(start + Duration::from_millis(900), &backends).is_none());
        assert_eq!(asked(&tunnels), 0, "not before `after`");
        assert!(rebalancer.tick(start + Duration::from_secs(1), &backends).is_none());
        let mut round = None;
        for i in 1..=20 {
            let now = start + Duration::from_secs(1) + TICK * i;
            let before = asked(&tunnels);
            round = rebalancer.tick(now, &backends);
            assert!(asked(&tunnels) - before <= 10, "100/s is 10 a tick");
            if round.is_some() {
                break;
            }
        }
        let round = round.expect("the round ends");
        assert_eq!(asked(&tunnels), 75, "200 - ceil(1.25 × 100)");
        assert_eq!(round.servers[0].closed, 75);
        assert!(
            tunnels[125..].iter().all(|(_, _, asked)| *asked.borrow()),
            "the newest ones"
        );
        // Still open while they close: not asked again.
        for i in 0..20 {
            assert!(rebalancer
                .tick(start + Duration::from_secs(5) + TICK * i, &backends)
                .is_none());
        }
        assert_eq!(asked(&tunnels), 75);
    }

    #[tokio::test]
    async fn plain_tunnels_are_not_shed() {
        let (a, b) = (server(1, 1), server(2, 1));
        let plain: Vec<BackendGuard> = (0..100).map(|_| a.acquire()).collect();
        let inspected = open(&a, 10);
        let backends = [a.clone(), b.clone()];
        let mut rebalancer = Rebalancer::new(settings(Duration::from_millis(1), "1000/s"));
        let start = Instant::now();
        let mut ended = None;
        for i in 0..20 {
            ended = rebalancer.tick(start + TICK * i, &backends);
            if ended.is_some() {
                break;
            }
        }
        assert_eq!(ended.expect("the round ends").servers[0].closed, 10);
        assert_eq!(asked(&inspected), 10, "only the inspected ones");
        drop(plain);
    }
}
