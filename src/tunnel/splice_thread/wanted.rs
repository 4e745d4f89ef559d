//! How many splice threads there are to be, and when a tunnel is busy
//! enough for one: what a tunnel asks before it offers to go, below the
//! threads themselves (an inspected tunnel's state asks it).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes a tunnel carries (both ways) before it moves to a splice thread:
/// past a handshake's few hundred, so that a tunnel opened and closed
/// again never pays for the move (two `epoll_ctl` more).
pub const BUSY_AFTER: u64 = 16 * 1024;

/// How many splice threads new busy tunnels share (`[global]
/// splice_threads`, set at start and by each reload): 0 keeps every
/// tunnel on tokio's workers.
static WANTED: AtomicUsize = AtomicUsize::new(0);

/// Sets how many splice threads busy tunnels share from now on.
pub fn set_threads(count: usize) {
    WANTED.store(count, Ordering::Relaxed);
}

/// How many splice threads busy tunnels share now.
pub fn threads() -> usize {
    WANTED.load(Ordering::Relaxed)
}

/// Whether tunnels go to splice threads at all.
pub fn threads_wanted() -> bool {
    threads() != 0
}
