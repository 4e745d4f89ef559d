//! The worker threads that serve client connections, one runtime each, as
//! nginx and HAProxy run one process per core. Every worker accepts on each
//! listener's socket; a connection is served on the worker that accepted it
//! to its end, its tunnel included. No task moves between threads and no
//! thread wakes another for its work: with one multi-threaded runtime, work
//! stealing and cross-thread wake-ups cost about a sixth of the CPU of a
//! handshake and of a message (`docs/performance.md`).
//!
//! The rest (signals, reloads, the admin listener, health checks, the
//! cluster's heartbeat) runs on the runtime that started the server.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The worker threads; they stop when this is dropped.
pub(crate) struct Workers {
    handles: Vec<Handle>,
    /// Where the next moved tunnel goes: they are dealt out in turn.
    next: AtomicUsize,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub(crate) fn start(count: usize) -> io::Result<Arc<Workers>> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            // Not joined: a worker may be the thread that drops the last
            // handle to these.
            std::thread::Builder::new()
                .name(format!("wsgate-worker-{index}"))
                .spawn(move || {
                    runtime.block_on(stop.cancelled());
                    // What is left (tunnels past the shutdown timeout) is
                    // dropped; blocking work is not waited for.
                    runtime.shutdown_background();
                })?;
        }
        Ok(Arc::new(Workers {
            handles,
            next: AtomicUsize::new(0),
            stop,
        }))
    }

    pub(crate) fn count(&self) -> usize {
        self.handles.len()
    }

    /// Each worker's runtime: every listener accepts on all of them.
    pub(crate) fn each(&self) -> &[Handle] {
        &self.handles
    }

    /// The next worker in turn, for work that did not arrive through an
    /// accept (tunnels moved from the process this one took over from).
    pub(crate) fn next(&self) -> &Handle {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[index]
    }

    /// Stops the workers: what still runs on them is dropped.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One worker per core this process may run on (its CPU affinity and
/// cgroup quota counted), when the configuration does not say.
pub(crate) fn default_count() -> usize {
    if let Some(n) = std::env::var("WSGATE_WORKERS").ok().and_then(|v| v.parse().ok()) { return n; }
    std::thread::available_parallelism().map_or(1, usize::from)
}
