//! Where log lines go: standard error, written by a thread of its own from
//! a bounded buffer, so that no worker ever waits on a slow terminal, pipe
//! or journal, and a busy proxy makes one `write` per batch instead of one
//! per line (an access log line per tunnel was a blocking `write` on the
//! worker each time).
//!
//! A line that finds the buffer full is dropped and counted
//! (`wsgate_log_lines_dropped_total`, and a line saying how many once the
//! writer catches up): losing log lines beats stalling every tunnel behind
//! a stuck reader of standard error. Lines reach standard error within
//! [`GATHER`] of being logged, and all of them before the process exits
//! ([`finish`], [`flush`]).

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::sync::lock;
use tracing_subscriber::fmt::MakeWriter;

/// How much waits for the writer at most: about 4,000 access log lines.
const CAPACITY: usize = 1 << 20;

/// The most a buffer keeps between batches: a quiet moment's lines.
const KEEP: usize = 16 << 10;

/// How long the writer lets lines gather after the first of a batch: one
/// `write` for all the lines of a busy moment, and a line is late by no
/// more than this.
const GATHER: Duration = Duration::from_millis(10);

/// The one writer of the process, once logging is set up.
static WRITER: OnceLock<LogWriter> = OnceLock::new();

/// What [`tracing_subscriber`] writes each formatted line to.
#[derive(Clone, Copy)]
pub struct LogWriter {
    shared: &'static Shared,
}

struct Shared {
    pending: Mutex<Pending>,
    /// The writer thread waits here for a first line, or for the end.
    wake: Condvar,
    /// Lines dropped so far, the buffer full.
    dropped: AtomicU64,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// The writer was woken for these lines (or is writing): the next
    /// lines need not wake it again.
    woken: bool,
    /// The writer thread is writing a batch out.
    writing: bool,
    /// Asked to write what is here now and say so (`flush`).
    flush_asked: bool,
    /// Flush requests answered so far (`flush` waits for the next).
    flushed: u64,
    finishing: bool,
    /// No writer thread (it could not start, or has finished): lines are
    /// written by whoever logs them.
    direct: bool,
}

/// Starts the writer thread (once; later calls return the same writer).
pub fn start() -> LogWriter {
    *WRITER.get_or_init(|| {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
        }));
        let spawned = std::thread::Builder::new()
            .name("wsgate-log".into())
            .spawn(move || write_out(shared, &mut io::stderr()));
        match spawned {
            Ok(_detached) => {}
            Err(error) => {
                lock(&shared.pending).direct = true;
                eprintln!("wsgate: cannot start the log writer ({error}); logging directly");
            }
        }
        LogWriter { shared }
    })
}

/// Lines dropped so far because the buffer was full.
pub fn dropped() -> u64 {
    WRITER
        .get()
        .map_or(0, |writer| writer.shared.dropped.load(Ordering::Relaxed))
}

/// Writes every line logged so far, and waits until they are written (at
/// most a second): before anything else goes to standard error directly,
/// and before the process exits without returning from `main`.
pub fn flush() {
    let Some(writer) = WRITER.get() else { return };
    let shared = writer.shared;
    let mut pending = lock(&shared.pending);
    if pending.direct || (pending.lines.is_empty() && !pending.woken && !pending.writing) {
        return;
    }
    let asked_at = pending.flushed;
    pending.flush_asked = true;
    shared.wake.notify_all();
    let deadline = Instant::now() + Duration::from_secs(1);
    while pending.flushed == asked_at && !pending.direct {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        pending = wait_timeout(&shared.wake, pending, left);
    }
}

/// Writes every line logged so far and stops the writer: the end of `main`.
/// Lines logged after it are written directly. Waits two seconds at most:
/// a standard error nobody reads must not keep the process from exiting.
pub fn finish() {
    let Some(writer) = WRITER.get() else { return };
    let shared = writer.shared;
    let mut pending = lock(&shared.pending);
    pending.finishing = true;
    shared.wake.notify_all();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !pending.direct {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        pending = wait_timeout(&shared.wake, pending, left);
    }
}

/// The writer thread: waits for a first line, lets more gather, writes
/// them all at once; at the end, writes what is left.
fn write_out(shared: &Shared, out: &mut impl Write) {
    let mut batch = Vec::new();
    let mut reported = 0;
    let mut pending = lock(&shared.pending);
    loop {
        while pending.lines.is_empty() && !pending.finishing && !pending.flush_asked {
            pending = shared
                .wake
                .wait(pending)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if !pending.finishing && !pending.flush_asked {
            pending = wait_timeout(&shared.wake, pending, GATHER);
        }
        std::mem::swap(&mut batch, &mut pending.lines);
        pending.woken = false;
        pending.writing = true;
        let answers_flush = std::mem::take(&mut pending.flush_asked);
        drop(pending);
        let dropped = shared.dropped.load(Ordering::Relaxed);
        if dropped > reported {
            let _ = writeln!(
                batch,
                "wsgate: {} log line(s) dropped: standard error was not read fast enough",
                dropped - reported
            );
            reported = dropped;
        }
        // Nothing useful can be done about an error writing the log.
        let _ = out.write_all(&batch);
        let _ = out.flush();
        batch.clear();
        // A burst (a thousand tunnels closing at once) grows the two
        // buffers to hundreds of kilobytes: give that back after it, as
        // each buffer comes round.
        if batch.capacity() > KEEP {
            batch = Vec::new();
        }
        pending = lock(&shared.pending);
        pending.writing = false;
        if answers_flush {
            pending.flushed += 1;
            shared.wake.notify_all();
        }
        if pending.finishing && pending.lines.is_empty() {
            pending.direct = true;
            shared.wake.notify_all();
            return;
        }
    }
}

impl LogWriter {
    /// Adds one formatted line (the fmt layer writes each in one call).
    fn push(&self, line: &[u8]) {
        let shared = self.shared;
        let mut pending = lock(&shared.pending);
        if pending.direct {
            drop(pending);
            let _ = io::stderr().write_all(line);
            return;
        }
        if pending.lines.len() + line.len() > CAPACITY {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.lines.extend_from_slice(line);
        if !pending.woken {
            pending.woken = true;
            shared.wake.notify_all();
        }
    }
}

/// What the fmt layer writes one line to.
pub struct Line {
    writer: LogWriter,
}

impl Write for Line {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.writer.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { writer: *self }
    }
}

fn wait_timeout<'a, T>(wake: &Condvar, guard: MutexGuard<'a, T>, timeout: Duration) -> MutexGuard<'a, T> {
    wake.wait_timeout(guard, timeout)
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Standard error as the test sees it: what was written so far.
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<u8>>>);

    impl Write for Written {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Written {
        /// Waits (5 s at most) until `total` bytes were written.
        fn wait_for(&self, total: usize) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while lock(&self.0).len() < total {
                assert!(
                    Instant::now() < deadline,
                    "{} of {total} bytes written",
                    lock(&self.0).len()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    #[test]
    fn the_buffers_shrink_back_after_a_burst() {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
        }));
        let writer = LogWriter { shared };
        let written = Written::default();
        let thread = std::thread::spawn({
            let mut out = written.clone();
            move || write_out(shared, &mut out)
        });
        let line = [b'x'; 511].into_iter().chain([b'\n']).collect::<Vec<u8>>();
        for _ in 0..800 {
            writer.push(&line);
        }
        let mut total = 800 * line.len();
        written.wait_for(total);
        // Quiet batches after it: the buffers swap places at each.
        for quiet in 0..2 {
            writer.push(b"quiet\n");
            total += 6;
            written.wait_for(total);
            let kept = lock(&shared.pending).lines.capacity();
            assert!(
                kept <= KEEP,
                "{kept} bytes kept after a 400 KiB burst and {quiet} quiet batches"
            );
        }
        lock(&shared.pending).finishing = true;
        shared.wake.notify_all();
        thread.join().expect("the writer ends");
        assert_eq!(lock(&written.0).len(), total, "every line written once");
    }
}
