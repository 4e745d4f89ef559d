//! The one way wsgate takes its locks.

use std::sync::{Mutex, MutexGuard};

/// Takes `mutex` even if a thread panicked while holding it: what wsgate
/// keeps behind its locks (lists, counts, wakers, buffers of log lines) is
/// whole between statements, so a panic elsewhere cannot leave it
/// half-written, and refusing the lock would spread that one panic to
/// every later user.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
