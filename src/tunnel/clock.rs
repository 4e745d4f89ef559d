//! The system's monotonic clock, read as `Instant` cannot be: carried to
//! another process, or at the kernel's tick for less.

use std::time::Duration;

/// The system's monotonic clock (`CLOCK_MONOTONIC`, which `Instant` reads
/// too, but cannot be carried to another process as).
pub fn monotonic_now() -> Duration {
    read_clock(libc::CLOCK_MONOTONIC)
}

/// The same clock at the kernel's tick (1 to 4 ms) for a fraction of the
/// cost: for the times an inspected tunnel notes on every read.
pub fn coarse_monotonic_now() -> Duration {
    read_clock(libc::CLOCK_MONOTONIC_COARSE)
}

fn read_clock(clock: libc::clockid_t) -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(clock, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}
