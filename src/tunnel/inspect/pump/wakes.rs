//! Which of a pump's quieter sources woke it.
//!
//! A pump waits on its read and, beside it, on the tunnel's end, a drain,
//! the other pump's orders, its clock and a move. In a request and answer
//! exchange the read would block after every message, and polling each of
//! the others again then cost about 1,300 instructions per message, a sixth
//! of an inspected message's user time: tokio's `Notify` takes its lock on
//! every poll, a timer reads the clock. Each of them is polled instead with
//! a waker of its own that marks it due before waking the task, and polled
//! again only once it is due.
//!
//! The wakers are one reference-counted block per pump, told apart by the
//! low bits of the pointer they carry: no allocation per source, and a
//! source keeps the waker it was given for as long as it likes (a move
//! ticket registers once), whichever task the pump then runs in.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{RawWaker, RawWakerVTable, Waker};

use futures_util::task::AtomicWaker;

/// A source a pump polls beside its read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    End = 0,
    Drain = 1,
    Orders = 2,
    Clock = 3,
    Move = 4,
}

impl Source {
    pub(super) const ALL: [Source; 5] = [Source::End, Source::Drain, Source::Orders, Source::Clock, Source::Move];

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The sources due, and the task to wake when one becomes due.
// The alignment leaves the pointer's three low bits free for the source.
#[repr(align(8))]
pub(super) struct Wakes {
    due: AtomicU8,
    task: AtomicWaker,
}

/// The sources taken as due by one look, [`Wakes::take_due`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Due(u8);

impl Due {
    pub(super) fn has(self, source: Source) -> bool {
        self.0 & source.bit() != 0
    }
}

impl Wakes {
    /// Every source due: each is polled (and registers) on the first turn.
    pub(super) fn new() -> Arc<Wakes> {
        Arc::new(Wakes {
            due: AtomicU8::new(u8::MAX),
            task: AtomicWaker::new(),
        })
    }

    /// Remembers the task to wake, then takes the sources due. In this
    /// order, a source that becomes due meanwhile wakes the task again.
    pub(super) fn take_due(&self, task: &Waker) -> Due {
        self.task.register(task);
        Due(self.due.swap(0, Ordering::AcqRel))
    }

    /// `source` stays due: it was not polled this turn.
    pub(super) fn keep_due(&self, source: Source) {
        self.due.fetch_or(source.bit(), Ordering::AcqRel);
    }

    /// Every source of `due` stays due.
    pub(super) fn keep(&self, due: Due) {
        self.due.fetch_or(due.0, Ordering::AcqRel);
    }

    /// The waker that marks `source` due.
    pub(super) fn waker(self: &Arc<Self>, source: Source) -> Waker {
        let tagged = Arc::into_raw(self.clone()) as usize | source as usize;
        // SAFETY: the pointer carries one strong count of `Wakes`, which the
        // vtable's functions keep balanced (a clone adds one, a drop or a
        // wake by value gives one back).
        unsafe { Waker::from_raw(RawWaker::new(tagged as *const (), &VTABLE)) }
    }

    fn wake(&self, source: usize) {
        self.due.fetch_or(1 << source, Ordering::AcqRel);
        self.task.wake();
    }
}

const TAG: usize = 0b111;

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone_waker, wake_waker, wake_waker_by_ref, drop_waker);

fn untag(data: *const ()) -> (*const Wakes, usize) {
    let tagged = data as usize;
    ((tagged & !TAG) as *const Wakes, tagged & TAG)
}

unsafe fn clone_waker(data: *const ()) -> RawWaker {
    // SAFETY: `data` came from `Wakes::waker` or a clone, so it holds a
    // strong count; this adds the clone's.
    unsafe { Arc::increment_strong_count(untag(data).0) };
    RawWaker::new(data, &VTABLE)
}

unsafe fn wake_waker(data: *const ()) {
    let (wakes, source) = untag(data);
    // SAFETY: takes back the count this waker held.
    let wakes = unsafe { Arc::from_raw(wakes) };
    wakes.wake(source);
}

unsafe fn wake_waker_by_ref(data: *const ()) {
    let (wakes, source) = untag(data);
    // SAFETY: the waker is alive, so its count keeps `Wakes` alive.
    unsafe { &*wakes }.wake(source);
}

unsafe fn drop_waker(data: *const ()) {
    // SAFETY: gives back the count this waker held.
    unsafe { Arc::decrement_strong_count(untag(data).0) };
}

#[cfg(test)]
mod tests {
    use super::{Source, Wakes};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_source_waker_marks_its_source_and_wakes_the_task() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(count.clone());
        let wakes = Wakes::new();
        let first = wakes.take_due(&task);
        assert!(Source::ALL.iter().all(|&s| first.has(s)), "all due at first");
        assert!(!Source::ALL.iter().any(|&s| wakes.take_due(&task).has(s)), "then none");

        let orders = wakes.waker(Source::Orders);
        let clock = wakes.waker(Source::Clock).clone();
        orders.wake_by_ref();
        let due = wakes.take_due(&task);
        assert!(due.has(Source::Orders) && !due.has(Source::Clock) && !due.has(Source::End));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);

        clock.wake();
        wakes.keep_due(Source::Move);
        let due = wakes.take_due(&task);
        assert!(due.has(Source::Clock) && due.has(Source::Move) && !due.has(Source::Orders));
        assert_eq!(count.0.load(Ordering::SeqCst), 2);

        // Every count given back: only `wakes` itself holds the block.
        std::mem::drop(orders);
        assert_eq!(Arc::strong_count(&wakes), 1);
    }
}
