//! Copy buffers lent to a tunnel only while bytes move through it.
//!
//! A socket server fronts tens of thousands of mostly idle sockets: a
//! buffer per direction for each tunnel's whole life would be most of the
//! proxy's memory. A tunnel instead borrows a buffer when its source is
//! readable, and gives it back as soon as what it read has been written;
//! only a tunnel held up by a slow receiver keeps one meanwhile. Each worker
//! thread keeps a few spare buffers, so a busy tunnel does not allocate per
//! read.
//!
//! Buffers come in two sizes, and each reader's [`Sizing`] picks: a small
//! one for small messages, a large one once a read has filled a small one
//! (large messages, bulk transfers), so that a 16 KiB message with its
//! frame header, or a 64 KiB one, goes through in one read and one write
//! instead of several.

use std::ops::{Deref, DerefMut};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// The small size: a 16 KiB TLS record in one read.
pub const BUFFER_SIZE: usize = 16 * 1024;
/// The large size, for a reader whose last read filled a small buffer.
pub const LARGE_BUFFER_SIZE: usize = 64 * 1024;
/// Spare buffers a thread keeps of each size (128 KiB of each); more are
/// freed when given back. A buffer is lent only while a read is written on,
/// so a thread rarely has more than a few out at once. What the spares hold
/// would stay resident after the traffic is gone: [`release_spares`] frees
/// them once the proxy is quiet.
const SPARES_PER_THREAD: usize = 8;
const LARGE_SPARES_PER_THREAD: usize = 2;

/// One thread's spares, which only its own thread lends and takes back,
/// but for [`release_spares`] from another thread once in a while.
#[derive(Default)]
struct Spares {
    /// The small buffer given back last, or null: taken and put back with
    /// one atomic swap each. Every read of a busy tunnel lends a buffer,
    /// and a lock each way (with its poison check) was 15% of the
    /// instructions of a 128 B echo.
    hot: AtomicPtr<u8>,
    /// The others.
    stock: Mutex<Stock>,
}

#[derive(Default)]
struct Stock {
    small: Vec<Box<[u8]>>,
    large: Vec<Box<[u8]>>,
}

impl Spares {
    fn take_hot(&self) -> Option<Box<[u8]>> {
        owned(self.hot.swap(ptr::null_mut(), Ordering::AcqRel))
    }

    /// Keeps a small buffer in the hot slot; gives back the one it displaced.
    fn put_hot(&self, buffer: Box<[u8]>) -> Option<Box<[u8]>> {
        debug_assert_eq!(buffer.len(), BUFFER_SIZE);
        owned(self.hot.swap(Box::into_raw(buffer).cast::<u8>(), Ordering::AcqRel))
    }

    fn release(&self) {
        drop(self.take_hot());
        *locked(&self.stock) = Stock::default();
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        drop(self.take_hot());
    }
}

/// The small buffer a swap of the hot slot handed over, if any.
fn owned(raw: *mut u8) -> Option<Box<[u8]>> {
    // SAFETY: the hot slot holds null or a small buffer's pointer from
    // `Box::into_raw` (in `put_hot`), and the swap that returned it gave it
    // to this caller alone.
    (!raw.is_null()).then(|| unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(raw, BUFFER_SIZE)) })
}

/// Every thread's spares, for [`release_spares`].
static ALL_SPARES: Mutex<Vec<Weak<Spares>>> = Mutex::new(Vec::new());

thread_local! {
    static SPARES: Arc<Spares> = {
        let spares = Arc::new(Spares::default());
        locked(&ALL_SPARES).push(Arc::downgrade(&spares));
        spares
    };
}

/// Bookkeeping only: a panic elsewhere cannot leave it half-written.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Frees every thread's spare buffers (after a burst, before the memory is
/// handed back to the system); threads that have ended are forgotten.
pub fn release_spares() {
    locked(&ALL_SPARES).retain(|spares| match spares.upgrade() {
        Some(spares) => {
            spares.release();
            true
        }
        None => false,
    });
}

/// Reads that bring less than a small buffer holds before a reader that
/// went large comes back to small buffers: a large message often arrives as
/// a large read and a short one (its tail), and the short one must not
/// undo the choice.
const LARGE_FOR: u8 = 8;

/// One reader's choice of buffer size, from what its reads have brought.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sizing {
    /// Reads left on large buffers; small buffers at 0.
    large_for: u8,
}

impl Sizing {
    /// A buffer of the size this reader needs now.
    pub fn lend(&self) -> Lent {
        if self.large_for > 0 {
            lend_large()
        } else {
            lend()
        }
    }

    /// After a read of `n` bytes into `room`: large buffers once a read
    /// filled its room, and for as long as reads bring at least what a small
    /// buffer holds; small ones again after `LARGE_FOR` reads that did not.
    pub fn saw(&mut self, n: usize, room: usize) {
        if n >= room.min(BUFFER_SIZE) {
            self.large_for = LARGE_FOR;
        } else {
            self.large_for = self.large_for.saturating_sub(1);
        }
    }
}

/// A lent buffer; dropping it gives it back.
pub struct Lent {
    buffer: Option<Box<[u8]>>,
}

/// Lends a buffer of [`BUFFER_SIZE`] bytes, a spare if this thread has one.
pub fn lend() -> Lent {
    let spare = SPARES.with(|spares| spares.take_hot().or_else(|| locked(&spares.stock).small.pop()));
    Lent {
        buffer: Some(spare.unwrap_or_else(|| vec![0; BUFFER_SIZE].into_boxed_slice())),
    }
}

/// Lends a buffer of [`LARGE_BUFFER_SIZE`] bytes, a spare if this thread has one.
pub fn lend_large() -> Lent {
    let spare = SPARES.with(|spares| locked(&spares.stock).large.pop());
    Lent {
        buffer: Some(spare.unwrap_or_else(|| vec![0; LARGE_BUFFER_SIZE].into_boxed_slice())),
    }
}

/// How many small spare buffers this thread holds (for tests).
pub fn spares() -> usize {
    SPARES.with(|spares| {
        let hot = !spares.hot.load(Ordering::Acquire).is_null();
        usize::from(hot) + locked(&spares.stock).small.len()
    })
}

impl Drop for Lent {
    fn drop(&mut self) {
        let Some(buffer) = self.buffer.take() else {
            return;
        };
        // During thread teardown the pool may be gone: the buffer is simply
        // freed then.
        let _ = SPARES.try_with(|spares| {
            let large = buffer.len() == LARGE_BUFFER_SIZE;
            let buffer = if large {
                buffer
            } else {
                match spares.put_hot(buffer) {
                    Some(displaced) => displaced,
                    None => return,
                }
            };
            let mut stock = locked(&spares.stock);
            let (kept, keep) = if large {
                (&mut stock.large, LARGE_SPARES_PER_THREAD)
            } else {
                // The hot slot holds one.
                (&mut stock.small, SPARES_PER_THREAD - 1)
            };
            if kept.len() < keep {
                kept.push(buffer);
            }
        });
    }
}

impl Deref for Lent {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buffer.as_deref().unwrap_or(&[])
    }
}

impl DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.buffer.as_deref_mut().unwrap_or(&mut [])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests that count spares, one at a time: releasing them is global.
    static COUNTING: Mutex<()> = Mutex::new(());

    #[test]
    fn buffers_come_back_and_the_spares_are_bounded() {
        let _one_at_a_time = locked(&COUNTING);
        let before = spares();
        let lent: Vec<Lent> = (0..SPARES_PER_THREAD + 10).map(|_| lend()).collect();
        assert!(lent.iter().all(|b| b.len() == BUFFER_SIZE));
        assert_eq!(spares(), 0);
        drop(lent);
        assert_eq!(spares(), SPARES_PER_THREAD);
        let again = lend();
        assert_eq!(spares(), SPARES_PER_THREAD - 1);
        drop(again);
        assert!(spares() >= before);
    }

    #[test]
    fn a_read_that_fills_a_small_buffer_gets_a_large_one_next() {
        let mut sizing = Sizing::default();
        assert_eq!(sizing.lend().len(), BUFFER_SIZE);
        sizing.saw(BUFFER_SIZE, BUFFER_SIZE);
        assert_eq!(sizing.lend().len(), LARGE_BUFFER_SIZE);
        // A 16 KiB message and its frame header: still large.
        sizing.saw(BUFFER_SIZE + 8, LARGE_BUFFER_SIZE);
        assert_eq!(sizing.lend().len(), LARGE_BUFFER_SIZE);
        // A message's short tail does not undo the choice...
        sizing.saw(200, LARGE_BUFFER_SIZE);
        assert_eq!(sizing.lend().len(), LARGE_BUFFER_SIZE);
        // ...but a run of small messages does.
        for _ in 1..LARGE_FOR {
            sizing.saw(200, LARGE_BUFFER_SIZE);
        }
        assert_eq!(sizing.lend().len(), BUFFER_SIZE);
        // A small buffer filled behind bytes held from the last read.
        sizing.saw(BUFFER_SIZE - 14, BUFFER_SIZE - 14);
        assert_eq!(sizing.lend().len(), LARGE_BUFFER_SIZE);
        for _ in 0..LARGE_FOR {
            sizing.saw(BUFFER_SIZE - 15, LARGE_BUFFER_SIZE - 1);
        }
        assert_eq!(sizing.lend().len(), BUFFER_SIZE);
    }

    #[test]
    fn large_buffers_go_back_to_their_own_spares() {
        let _one_at_a_time = locked(&COUNTING);
        let small = spares();
        let lent: Vec<Lent> = (0..LARGE_SPARES_PER_THREAD + 2).map(|_| lend_large()).collect();
        drop(lent);
        assert_eq!(spares(), small, "large buffers are not kept as small spares");
        assert_eq!(lend_large().len(), LARGE_BUFFER_SIZE);
    }

    #[test]
    fn every_threads_spares_are_released_from_any_thread() {
        let _one_at_a_time = locked(&COUNTING);
        let (filled, wait) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let (filled_tx, filled_rx) = filled;
        let (release_tx, release_rx) = wait;
        let (counted_tx, counted_rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            drop((0..3).map(|_| lend()).collect::<Vec<_>>());
            filled_tx.send(spares()).unwrap();
            release_rx.recv().unwrap();
            counted_tx.send(spares()).unwrap();
        });
        assert_eq!(filled_rx.recv().unwrap(), 3);
        drop((0..2).map(|_| lend()).collect::<Vec<_>>());
        assert!(spares() >= 2);
        release_spares();
        assert_eq!(spares(), 0, "this thread's");
        release_tx.send(()).unwrap();
        assert_eq!(counted_rx.recv().unwrap(), 0, "the other thread's");
        worker.join().unwrap();
    }
}
