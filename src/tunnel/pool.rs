//! Copy buffers lent to a tunnel only while bytes move through it.
//!
//! A socket server fronts tens of thousands of mostly idle sockets: a
//! buffer per direction for each tunnel's whole life would be most of the
//! proxy's memory. A tunnel instead borrows a buffer when its source is
//! readable, and gives it back as soon as what it read has been written;
//! only a tunnel held up by a slow receiver keeps one meanwhile. Each worker
//! thread keeps a few spare buffers, so a busy tunnel does not allocate per
//! read.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Large enough for a 16 KiB message (or TLS record) in one read.
pub const BUFFER_SIZE: usize = 16 * 1024;
/// Spare buffers a thread keeps; more are freed when given back.
const SPARES_PER_THREAD: usize = 64;

thread_local! {
    static SPARES: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A lent buffer; dropping it gives it back.
pub struct Lent {
    buffer: Option<Box<[u8]>>,
}

/// Lends a buffer of [`BUFFER_SIZE`] bytes, a spare if this thread has one.
pub fn lend() -> Lent {
    let spare = SPARES.with(|spares| spares.borrow_mut().pop());
    Lent {
        buffer: Some(spare.unwrap_or_else(|| vec![0; BUFFER_SIZE].into_boxed_slice())),
    }
}

/// How many spare buffers this thread holds (for tests).
pub fn spares() -> usize {
    SPARES.with(|spares| spares.borrow().len())
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            // During thread teardown the pool may be gone: the buffer is
            // simply freed then.
            let _ = SPARES.try_with(|spares| {
                let mut spares = spares.borrow_mut();
                if spares.len() < SPARES_PER_THREAD {
                    spares.push(buffer);
                }
            });
        }
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

    #[test]
    fn buffers_come_back_and_the_spares_are_bounded() {
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
}
