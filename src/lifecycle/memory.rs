//! The allocator, and giving memory back after a burst of connections.
//!
//! wsgate allocates with mimalloc (`main.rs` makes it the global
//! allocator), told to hand freed pages back to the system at once rather
//! than a second later, and to commit its arenas only as they are used:
//! mimalloc returns a thread's freed pages only when that thread allocates
//! again, so an idle worker would otherwise keep what a burst of handshakes
//! freed for as long as the quiet lasts. That way an idle plain tunnel
//! costs 1.8 KiB resident against glibc's 2.0, and a handshake a sixth
//! fewer instructions (`docs/performance.md`).
//!
//! What the allocator cannot see is wsgate's own buffer pool: each worker
//! thread keeps a few spare buffers. Once connections stop coming and
//! going, those are handed back too ([`release_after_bursts`]). Under
//! steady churn nothing is released: the buffers are reused anyway.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
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
            // Each worker collects its own heap as it next parks; these
            // wake the idle ones so that they do.
            for _ in 0..WAKE_TASKS {
                tokio::spawn(async {});
            }
        }
    }
}

/// Asked of every thread by [`trim`]: collect once more.
static COLLECTIONS: AtomicU64 = AtomicU64::new(0);

/// Empty tasks spawned after a trim, so that idle workers wake, run one
/// and park again (collecting as they do).
const WAKE_TASKS: usize = 16;

thread_local! {
    /// The last of [`COLLECTIONS`] this thread did.
    static COLLECTED: Cell<u64> = const { Cell::new(0) };
}

/// For the runtime's `on_thread_park`: when a trim asked since this thread
/// last collected, hands its heap's free pages back. mimalloc frees a
/// block freed by another thread only when the page's own thread allocates
/// or collects, and a worker idle after a burst does neither (the soak
/// test found 31 MiB kept after its load). Otherwise one atomic load.
pub fn collect_if_asked() {
    let asked = COLLECTIONS.load(Ordering::Relaxed);
    if COLLECTED.get() != asked {
        COLLECTED.set(asked);
        // SAFETY: collects the calling thread's own heap.
        unsafe { libmimalloc_sys::mi_collect(true) };
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

/// mimalloc's options, by their index in its `mi_option_e` (v3): the
/// crate declares v2's. A test checks that each names the option meant.
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets mimalloc's options before its first allocation (it reads each once,
/// when it first needs it): freed pages purged at once, arenas committed
/// as used. An option the environment sets (`MIMALLOC_PURGE_DELAY`,
/// `MIMALLOC_ARENA_EAGER_COMMIT`) is left to it.
pub extern "C" fn tune_allocator() {
    for (option, name) in [
        (PURGE_DELAY, c"MIMALLOC_PURGE_DELAY"),
        (ARENA_EAGER_COMMIT, c"MIMALLOC_ARENA_EAGER_COMMIT"),
    ] {
        // `getenv`, which allocates nothing: `std::env` would allocate,
        // and mimalloc would read its options before they are set.
        // SAFETY: no other thread exists yet to change the environment,
        // nor to race mimalloc's option setter (which is not thread-safe).
        unsafe {
            if libc::getenv(name.as_ptr()).is_null() {
                libmimalloc_sys::mi_option_set(option, 0);
            }
        }
    }
}

/// The spare buffers of every thread's pool handed back, and every thread
/// asked to collect its heap (it does as it parks: [`collect_if_asked`]).
fn trim() {
    crate::tunnel::pool::release_spares();
    COLLECTIONS.fetch_add(1, Ordering::Relaxed);
    collect_if_asked();
    heap_report();
}

#[cfg(test)]
mod tests {
    use super::{Quiet, TRIMS_AFTER_A_BURST};


    /// The indexes name the options meant: in a process that did not
    /// tune them (this test's), each reads mimalloc's own default.
    #[test]
    fn the_option_indexes_name_the_purge_delay_and_eager_commit() {
        for name in ["MIMALLOC_PURGE_DELAY", "MIMALLOC_ARENA_EAGER_COMMIT"] {
            if std::env::var_os(name).is_some() {
                return;
            }
        }
        // SAFETY: reading an option by a valid index.
        let read = |option| unsafe { libmimalloc_sys::mi_option_get(option) };
        assert_eq!(read(super::PURGE_DELAY), 1000, "purge delay, in milliseconds");
        assert_eq!(read(super::ARENA_EAGER_COMMIT), 2, "eager commit where the OS overcommits");
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

/// Diagnostic only (not for commit): the live heap, page by page, to a file.
pub fn heap_report() {
    use std::sync::atomic::AtomicUsize;
    static N: AtomicUsize = AtomicUsize::new(0);
    if std::env::var_os("WSGATE_HEAP_REPORT").is_none() {
        return;
    }
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = format!("/tmp/heapreport.{}.{n}\0", std::process::id());
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644) };
    if fd < 0 {
        return;
    }
    struct Buf {
        data: [u8; 512],
        len: usize,
    }
    impl std::fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let b = s.as_bytes();
            let room = self.data.len() - self.len;
            let k = b.len().min(room);
            self.data[self.len..self.len + k].copy_from_slice(&b[..k]);
            self.len += k;
            Ok(())
        }
    }
    unsafe extern "C" fn visit(
        _heap: *const libmimalloc_sys::mi_heap_t,
        area: *const libmimalloc_sys::mi_heap_area_t,
        block: *mut std::ffi::c_void,
        size: usize,
        arg: *mut std::ffi::c_void,
    ) -> bool {
        use std::fmt::Write;
        let fd = arg as usize as i32;
        let mut buf = Buf { data: [0; 512], len: 0 };
        let a = unsafe { &*area };
        if block.is_null() {
            let _ = writeln!(
                buf,
                "P {:x} bs {} used {} committed {} reserved {}",
                a.blocks as usize, a.block_size, a.used, a.committed, a.reserved
            );
        } else {
            let _ = write!(buf, "B {:x} {}", block as usize, size);
            let words = (size / 8).min(6);
            for i in 0..words {
                let w = unsafe { *(block as *const u64).add(i) };
                let _ = write!(buf, " {w:x}");
            }
            let _ = writeln!(buf);
        }
        unsafe { libc::write(fd, buf.data.as_ptr().cast(), buf.len) };
        true
    }
    unsafe extern "C" {
        fn mi_heap_main() -> *mut libmimalloc_sys::mi_heap_t;
    }
    unsafe {
        libmimalloc_sys::mi_heap_visit_blocks(mi_heap_main(), true, Some(visit), fd as usize as *mut std::ffi::c_void);
        libc::close(fd);
    }
}
