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

use crate::telemetry::stats::Stats;

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

/// glibc's tunable for the per-thread cache of freed chunks.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const THREAD_CACHE_TUNABLE: &str = "glibc.malloc.tcache_count";

/// Restarts the process image with glibc's per-thread caches of freed
/// chunks turned off, unless the environment already sets their size.
///
/// Each thread's cache keeps up to seven freed chunks of every small size,
/// and it keeps the last ones a burst freed, scattered over the heap: no
/// `malloc_trim` can hand their pages back, nor the pages around them that
/// the chunks stop from coalescing. After 1,000 inspected sockets, the
/// process kept 1.1 MiB more than before them with the caches, 0.25 MiB
/// without, at no measurable cost per message or per handshake (the hot
/// paths allocate little; docs/performance.md). The setting is read only
/// when a program starts, hence the `exec` of the same binary with the same
/// arguments and process ID (so systemd's socket activation and
/// notifications still name this process). If the `exec` fails, or the
/// binary runs privileged (glibc then ignores tunables), the process goes
/// on as it is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn without_thread_caches() {
    use std::os::unix::process::CommandExt;

    // SAFETY: getauxval reads the auxiliary vector the kernel gave the process.
    let secure = unsafe { libc::getauxval(libc::AT_SECURE) } != 0;
    let current = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
    let current = current.to_string_lossy();
    // A privileged binary (file capabilities, to bind port 443) may have
    // its tunables erased: never exec again and again.
    let Some(tunables) = tunables_without_thread_caches(&current).filter(|_| !secure) else {
        return;
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    // By its own path, not /proc/self/exe: the kernel names the process
    // after the file it runs (`ps`, `pgrep wsgate`, the journal's `_COMM`).
    let binary = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let _failed = std::process::Command::new(binary)
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .exec();
}

/// `GLIBC_TUNABLES` with the thread caches off, or `None` when `current`
/// already sizes them.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tunables_without_thread_caches(current: &str) -> Option<String> {
    if current
        .split(':')
        .any(|tunable| tunable.starts_with(THREAD_CACHE_TUNABLE))
    {
        return None;
    }
    Some(match current.is_empty() {
        true => format!("{THREAD_CACHE_TUNABLE}=0"),
        false => format!("{current}:{THREAD_CACHE_TUNABLE}=0"),
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn without_thread_caches() {}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    crate::tunnel::pool::release_spares();
    // SAFETY: malloc_trim only releases free memory; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {
    crate::tunnel::pool::release_spares();
}

#[cfg(test)]
mod tests {
    use super::{Quiet, TRIMS_AFTER_A_BURST};

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn thread_caches_are_turned_off_beside_other_tunables_unless_sized_already() {
        use super::tunables_without_thread_caches as off;
        assert_eq!(off("").as_deref(), Some("glibc.malloc.tcache_count=0"));
        assert_eq!(
            off("glibc.malloc.arena_max=2").as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0")
        );
        assert_eq!(off("glibc.malloc.tcache_count=3"), None);
        assert_eq!(off("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=7"), None);
    }

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
