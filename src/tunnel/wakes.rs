//! Which of a task's sources woke it.
//!
//! A task that waits on several things at once is woken with one waker, and
//! without knowing which of them fired it polls them all again. Each poll
//! of one that has not fired still costs: a socket's read takes the lock on
//! its waiters and lends a buffer, tokio's `Notify` takes its lock, a timer
//! reads the clock. Each source is polled instead with a waker of its own
//! that marks it due before waking the task, and polled again only once it
//! is due:
//!
//! - an inspected pump's quieter sources beside its read (the tunnel's end,
//!   a drain, the other pump's orders, its clock, a move): about 1,300
//!   instructions per message before, a sixth of an inspected message's
//!   user time;
//! - a plain splice's two directions and its move: each message woke the
//!   task once and both directions were read, the one without data only to
//!   find it would block.
//!
//! The wakers are one reference-counted block per task, told apart by the
//! low bits of the pointer they carry: no allocation per source, and a
//! source keeps the waker it was given for as long as it likes (a move
//! ticket registers once), whichever task then polls it.

use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{RawWaker, RawWakerVTable, Waker};

use futures_util::task::AtomicWaker;

/// One of the things a task waits on: an index from 0 to 7, the bit that
/// marks it due and the tag its waker carries.
pub trait Source: Copy {
    fn index(self) -> u8;
}

fn bit(source: impl Source) -> u8 {
    debug_assert!(source.index() as usize <= TAG);
    1 << source.index()
}

/// The sources due, and the task to wake when one becomes due.
// The alignment leaves the pointer's three low bits free for the source.
#[repr(align(8))]
pub struct Wakes {
    due: AtomicU8,
    task: AtomicWaker,
}

/// The sources taken as due by one look, [`Wakes::take_due`].
#[derive(Debug, Clone, Copy)]
pub struct Due(u8);

impl Due {
    pub fn has(self, source: impl Source) -> bool {
        self.0 & bit(source) != 0
    }
}

impl Wakes {
    /// Every source due: each is polled (and registers) on the first turn.
    pub fn new() -> Arc<Wakes> {
        Arc::new(Wakes {
            due: AtomicU8::new(u8::MAX),
            task: AtomicWaker::new(),
        })
    }

    /// Remembers the task to wake, then takes the sources due. In this
    /// order, a source that becomes due meanwhile wakes the task again.
    pub fn take_due(&self, task: &Waker) -> Due {
        self.task.register(task);
        Due(self.due.swap(0, Ordering::AcqRel))
    }

    /// `source` stays due: it was not polled this turn.
    pub fn keep_due(&self, source: impl Source) {
        self.due.fetch_or(bit(source), Ordering::AcqRel);
    }

    /// Every source of `due` stays due.
    pub fn keep(&self, due: Due) {
        self.due.fetch_or(due.0, Ordering::AcqRel);
    }

    /// The waker that marks `source` due, lent for as long as `self` is
    /// borrowed: no count taken or given back (two atomic operations fewer
    /// each time a task polls a source); whoever keeps it clones it.
    pub fn lend_waker(self: &Arc<Self>, source: impl Source) -> LentWaker<'_> {
        let tagged = Arc::as_ptr(self) as usize | source.index() as usize;
        // SAFETY: the borrow of `self` keeps `Wakes` alive for as long as the
        // lent waker can be used, and `ManuallyDrop` never gives back the
        // count it did not take; a clone takes a count of its own.
        let waker = unsafe { Waker::from_raw(RawWaker::new(tagged as *const (), &VTABLE)) };
        LentWaker {
            waker: ManuallyDrop::new(waker),
            _wakes: PhantomData,
        }
    }

    fn wake(&self, source: usize) {
        self.due.fetch_or(1 << source, Ordering::AcqRel);
        self.task.wake();
    }
}

/// A waker of [`Wakes::lend_waker`].
pub struct LentWaker<'a> {
    waker: ManuallyDrop<Waker>,
    _wakes: PhantomData<&'a Arc<Wakes>>,
}

impl Deref for LentWaker<'_> {
    type Target = Waker;

    fn deref(&self) -> &Waker {
        &self.waker
    }
}

const TAG: usize = 0b111;

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone_waker, wake_waker, wake_waker_by_ref, drop_waker);

fn untag(data: *const ()) -> (*const Wakes, usize) {
    let tagged = data as usize;
    ((tagged & !TAG) as *const Wakes, tagged & TAG)
}

unsafe fn clone_waker(data: *const ()) -> RawWaker {
    // SAFETY: `data` is a lent waker's, whose `Wakes` is borrowed alive, or
    // a clone's, which holds a strong count; this adds the new clone's.
    unsafe { Arc::increment_strong_count(untag(data).0) };
    RawWaker::new(data, &VTABLE)
}

// By value only for a clone: a lent waker is only ever lent by reference.
unsafe fn wake_waker(data: *const ()) {
    let (wakes, source) = untag(data);
    // SAFETY: takes back the count this clone held.
    let wakes = unsafe { Arc::from_raw(wakes) };
    wakes.wake(source);
}

unsafe fn wake_waker_by_ref(data: *const ()) {
    let (wakes, source) = untag(data);
    // SAFETY: the waker is alive, so its borrow or its count keeps `Wakes` alive.
    unsafe { &*wakes }.wake(source);
}

// Only a clone is dropped: a lent waker is never.
unsafe fn drop_waker(data: *const ()) {
    // SAFETY: gives back the count this clone held.
    unsafe { Arc::decrement_strong_count(untag(data).0) };
}

#[cfg(test)]
mod tests {
    use super::{Source, Wakes};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    #[derive(Clone, Copy)]
    enum Test {
        First = 0,
        Orders = 2,
        Clock = 3,
        Last = 7,
    }

    impl Source for Test {
        fn index(self) -> u8 {
            self as u8
        }
    }

    const ALL: [Test; 4] = [Test::First, Test::Orders, Test::Clock, Test::Last];

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
        assert!(ALL.iter().all(|&s| first.has(s)), "all due at first");
        assert!(!ALL.iter().any(|&s| wakes.take_due(&task).has(s)), "then none");

        let orders = (*wakes.lend_waker(Test::Orders)).clone();
        let clock = (*wakes.lend_waker(Test::Clock)).clone();
        orders.wake_by_ref();
        let due = wakes.take_due(&task);
        assert!(due.has(Test::Orders) && !due.has(Test::Clock) && !due.has(Test::First));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);

        clock.wake();
        wakes.keep_due(Test::Last);
        let due = wakes.take_due(&task);
        assert!(due.has(Test::Clock) && due.has(Test::Last) && !due.has(Test::Orders));
        assert_eq!(count.0.load(Ordering::SeqCst), 2);

        // Every count given back: only `wakes` itself holds the block.
        std::mem::drop(orders);
        assert_eq!(Arc::strong_count(&wakes), 1);
    }

    #[test]
    fn a_lent_waker_takes_a_count_only_when_kept() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(count.clone());
        let wakes = Wakes::new();
        wakes.take_due(&task);
        let kept = {
            let lent = wakes.lend_waker(Test::Last);
            assert_eq!(Arc::strong_count(&wakes), 1, "lending takes no count");
            assert!(
                lent.will_wake(&wakes.lend_waker(Test::Last)),
                "the same waker each time"
            );
            assert!(
                !lent.will_wake(&wakes.lend_waker(Test::First)),
                "another source's is another"
            );
            (*lent).clone()
        };
        assert_eq!(Arc::strong_count(&wakes), 2, "a clone holds its own");
        kept.wake();
        assert_eq!(Arc::strong_count(&wakes), 1);
        assert!(wakes.take_due(&task).has(Test::Last));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }
}
