//! Giving memory back after a burst of connections.
//!
//! Every handshake allocates buffers (hyper's, a few kilobytes) that are
//! freed once the tunnel is open, between the small allocations that stay
//! for the tunnel's life. glibc's allocator keeps the freed pages resident
//! until something asks for them: after a reconnect storm, a proxy holding
//! a hundred thousand idle tunnels would keep the storm's buffers for as
//! long as the quiet lasts. Once connections stop coming and going, the
//! free pages are handed back with `malloc_trim` (as HAProxy does). Under
//! steady churn nothing is trimmed: the pages are reused anyway.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::stats::Stats;

/// How long connections must have neither opened nor closed before the
/// free pages are handed back.
const QUIET: Duration = Duration::from_secs(1);

/// Watches the connection counters until `stop`, trimming on the first
/// quiet ticks after each burst of activity.
pub async fn release_after_bursts(stats: Stats, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(QUIET);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut quiet = Quiet::default();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        if quiet.trim_now(stats.connection_activity()) {
            // Off the runtime's workers: with a large heap it takes a
            // millisecond or so.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// Quiet ticks after a burst on which the free pages are handed back: a
/// tunnel's last tasks (an inspected tunnel's pumps) may end and free their
/// memory a moment after its connection has closed.
const TRIMS_AFTER_A_BURST: u8 = 3;

/// Decides, once per tick, from the connection activity seen so far.
#[derive(Default)]
struct Quiet {
    last_seen: Option<u64>,
    /// Trims done since the activity last changed.
    trims: u8,
}

impl Quiet {
    /// True on the first [`TRIMS_AFTER_A_BURST`] ticks on which nothing
    /// happened since the tick before.
    fn trim_now(&mut self, activity: u64) -> bool {
        let settled = self.last_seen == Some(activity);
        self.last_seen = Some(activity);
        if !settled {
            self.trims = 0;
            return false;
        }
        if self.trims < TRIMS_AFTER_A_BURST {
            self.trims += 1;
            return true;
        }
        false
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free memory; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::{Quiet, TRIMS_AFTER_A_BURST};

    #[test]
    fn trims_a_few_times_after_activity_settles() {
        let mut quiet = Quiet::default();
        assert!(!quiet.trim_now(0), "the first tick only takes a reading");
        for _ in 0..TRIMS_AFTER_A_BURST {
            assert!(quiet.trim_now(0), "settled: trimmed");
        }
        assert!(!quiet.trim_now(0), "not again while idle");
        // A burst over three ticks: no trim while it lasts.
        assert!(!quiet.trim_now(5));
        assert!(!quiet.trim_now(9));
        for _ in 0..TRIMS_AFTER_A_BURST {
            assert!(quiet.trim_now(9), "quiet after the burst");
        }
        assert!(!quiet.trim_now(9));
    }
}
