//! The process's open-file limit, and what running out of descriptors (or
//! kernel memory for sockets) means.
//!
//! Every tunnel holds two descriptors, the client's socket and the
//! backend's. The soft `RLIMIT_NOFILE` a shell or a container hands a
//! process is often 1,024, enough for some 480 tunnels; the hard limit is
//! usually far higher. As Go's runtime and HAProxy do, wsgate raises the
//! soft limit to the hard one at start ([`raise_nofile_limit`]).
//!
//! Out of descriptors, `socket(2)` and `accept(2)` fail with `EMFILE`
//! (this process's table is full) or `ENFILE` (the system's), and out of
//! socket memory with `ENOBUFS`/`ENOMEM`. Those are this process's
//! condition, not a backend's fault: [`is_resource_exhaustion`] tells them
//! apart, for the accept loop, the backend connect and the demo backend
//! alike. Nothing here imports another part of wsgate.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Descriptors kept out of the tunnels' share: standard streams, the log,
/// listeners, the admin listener, the runtime's own (epoll, wakers), name
/// resolution, health checks, and idle keep-alive connections of plain
/// HTTP forwarding.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// How many tunnels an open-file limit of `limit` descriptors leaves room
/// for: each holds two (the client's socket and the backend's), after the
/// [`RESERVED_DESCRIPTORS`].
pub fn tunnels_allowed(limit: u64) -> u64 {
    limit.saturating_sub(RESERVED_DESCRIPTORS) / 2
}

/// Whether `error` says this process (or the machine) is out of descriptors
/// or socket memory, rather than anything about the peer: `EMFILE`,
/// `ENFILE`, `ENOBUFS`, `ENOMEM`.
pub fn is_resource_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    ) || error.kind() == io::ErrorKind::OutOfMemory
}

/// Whether a failed `accept(2)` concerns only the connection it would have
/// returned (the client gave up before it was accepted): accept the next.
pub fn is_per_connection(error: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

/// The open-file limit: soft (in force) and hard (the most the soft one
/// may be raised to without privileges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft: u64,
    pub hard: u64,
}

impl NofileLimit {
    /// The limit this process runs under now.
    pub fn current() -> io::Result<NofileLimit> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit(2) writes only into `limit`.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // rlim_t is u64 on Linux, not on every target.
        #[allow(clippy::useless_conversion)]
        Ok(NofileLimit {
            soft: u64::from(limit.rlim_cur),
            hard: u64::from(limit.rlim_max),
        })
    }
}

/// What [`raise_nofile_limit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    /// The soft limit the process was started with.
    pub before: u64,
    /// The limit now in force (the hard one, unless raising failed).
    pub limit: NofileLimit,
}

/// Raises the soft open-file limit to the hard limit. Called once, before
/// the runtime starts its threads; a failure leaves the limit as it was.
pub fn raise_nofile_limit() -> io::Result<Raised> {
    let start = NofileLimit::current()?;
    if start.soft < start.hard {
        let wanted = libc::rlimit {
            rlim_cur: start.hard as libc::rlim_t,
            rlim_max: start.hard as libc::rlim_t,
        };
        // SAFETY: setrlimit(2) only reads `wanted`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(Raised {
        before: start.soft,
        limit: NofileLimit::current()?,
    })
}

/// The warning `wsgate check` and the start print when `max_connections`
/// lets more tunnels open than `limit` descriptors hold; `None` when it fits.
pub fn max_connections_warning(max_connections: usize, limit: u64) -> Option<String> {
    let allowed = tunnels_allowed(limit);
    (max_connections as u64 > allowed).then(|| {
        format!(
            "global.max_connections = {max_connections} is above the {allowed} tunnels an open-file limit of \
             {limit} leaves room for (two descriptors each, {RESERVED_DESCRIPTORS} kept for the rest): past it, \
             new tunnels get 503; raise the limit (LimitNOFILE=, ulimit -Hn) or lower max_connections"
        )
    })
}

/// How often the log speaks of connects refused for want of descriptors.
pub const EXHAUSTION_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Connects to backends refused for want of descriptors: counted, and
/// logged at most once per [`EXHAUSTION_LOG_INTERVAL`] with the count since
/// the last line, however many there are. (The exact count is on
/// `/metrics`.)
pub fn connect_refused(error: &io::Error) {
    static LOG: OnceLock<ExhaustionLog> = OnceLock::new();
    LOG.get_or_init(ExhaustionLog::default).refused(error, Instant::now());
}

/// Refusals since the last line, and when that line was written.
#[derive(Default)]
struct ExhaustionLog {
    refused: AtomicU64,
    logged_at: Mutex<Option<Instant>>,
}

impl ExhaustionLog {
    /// Counts one refusal; returns the count it logged, if it wrote a line.
    fn refused(&self, error: &io::Error, now: Instant) -> Option<u64> {
        self.refused.fetch_add(1, Ordering::Relaxed);
        // Another refusal is writing the line: this one is in its count or the next.
        let mut logged_at = self.logged_at.try_lock().ok()?;
        let since = logged_at.map(|at| now.saturating_duration_since(at));
        if since.is_some_and(|since| since < EXHAUSTION_LOG_INTERVAL) {
            return None;
        }
        let refused = self.refused.swap(0, Ordering::Relaxed);
        let interval = since.unwrap_or(EXHAUSTION_LOG_INTERVAL).min(Duration::from_secs(3600));
        tracing::warn!(
            %error,
            refused,
            "out of file descriptors: {refused} connects refused in the last {}s",
            interval.as_secs().max(1)
        );
        *logged_at = Some(now);
        Some(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_costs_two_descriptors_after_the_reserve() {
        assert_eq!(tunnels_allowed(1024), 480);
        assert_eq!(tunnels_allowed(RESERVED_DESCRIPTORS), 0);
        assert_eq!(tunnels_allowed(10), 0);
        assert!(max_connections_warning(480, 1024).is_none());
        let warning = max_connections_warning(481, 1024).expect("a warning");
        assert!(warning.contains("480 tunnels"), "{warning}");
    }

    #[test]
    fn descriptor_and_memory_errors_are_exhaustion_and_peer_errors_are_not() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
        for errno in [libc::ECONNREFUSED, libc::ETIMEDOUT, libc::EHOSTUNREACH] {
            assert!(!is_resource_exhaustion(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
    }

    #[test]
    fn refusals_are_logged_once_per_interval_with_their_count() {
        let log = ExhaustionLog::default();
        let error = io::Error::from_raw_os_error(libc::EMFILE);
        let start = Instant::now();
        assert_eq!(log.refused(&error, start), Some(1), "the first is said at once");
        for i in 1..100 {
            assert_eq!(log.refused(&error, start + Duration::from_millis(i)), None);
        }
        assert_eq!(log.refused(&error, start + EXHAUSTION_LOG_INTERVAL), Some(100));
    }
}
