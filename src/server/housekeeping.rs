//! Periodic work of one configuration generation; a reload stops the last
//! generation's and starts the next one's.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::admission::refusal_log;
use crate::proxy::Proxy;

/// Periodic work: forgetting idle rate-limiter keys (the memory bound),
/// active health checks, rebalancing, resolving upstream names again as
/// their answers run out, and summarising refusals that were not logged
/// one by one.
pub(crate) fn housekeeping(proxy: &Arc<Proxy>, stop: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for limiter in proxy.keyed_limiters() {
        let limiter = limiter.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(limiter.eviction_interval());
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => { limiter.evict_idle(); }
                    () = stop.cancelled() => return,
                }
            }
        }));
    }
    for upstream in proxy.upstreams() {
        let pool = upstream.pool.clone();
        if let Some(check) = upstream.config.health_check.clone() {
            let backends = {
                let pool = pool.clone();
                move || pool.backends()
            };
            tasks.push(tokio::spawn(crate::upstream::health::run(
                pool.name.clone(),
                check,
                upstream.config.tls.clone(),
                backends,
                stop.clone(),
            )));
        }
        if let Some(settings) = upstream.config.rebalance {
            tasks.push(tokio::spawn(crate::upstream::rebalance::run(
                pool.clone(),
                settings,
                proxy.stats.metrics().clone(),
                stop.clone(),
            )));
        }
        if pool.has_host_names() {
            // Each name is asked again when its answer runs out (its TTL,
            // at most `resolve_interval`); a reload asks at once for the
            // names it carried over.
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let next = tokio::select! {
                        next = pool.resolve_due() => next,
                        () = stop.cancelled() => return,
                    };
                    let Some(next) = next else { return };
                    tokio::select! {
                        () = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }));
        }
    }
    let proxy = proxy.clone();
    let stop = stop.clone();
    tasks.push(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(refusal_log::SUMMARY_INTERVAL);
        loop {
            tokio::select! {
                _ = ticks.tick() => proxy.refusal_log.summarise(),
                () = stop.cancelled() => return,
            }
        }
    }));
    tasks
}
