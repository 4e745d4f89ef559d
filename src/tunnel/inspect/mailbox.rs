//! What one pump of an inspected tunnel asks the other to send, and the
//! mailbox the order goes through.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// What a pump is asked to send to its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    /// Send a close frame at the next frame boundary, then end.
    CloseAndEnd { code: u16, reason: &'static str },
    /// Send a close frame at the next frame boundary and wait for the answer.
    Close { code: u16, reason: &'static str },
    /// The other side was closed for breaking the protocol: forward what
    /// the source still sends until it answers that close (its close frame,
    /// dropped, or its end of stream) or the close timeout passes, then
    /// send this close frame and end. What the source answered to messages
    /// before the offending frame reaches the destination first, as it
    /// would through a plain tunnel.
    CloseAfterAnswer { code: u16, reason: &'static str },
    /// Stop between two reads, with the other pump, for the tunnel to go
    /// to a splice thread (`pump`'s `park`).
    ToThread,
}

/// Orders a mailbox holds at most; more are dropped (a tunnel sends a
/// pump one or two).
const CAPACITY: usize = 4;

/// The orders for one pump, from the other: a close order or two per
/// tunnel. Not a tokio channel, which costs an idle tunnel ~1.3 KB (its
/// state, 128-byte aligned, and a first block of 32 slots allocated up
/// front); this is 64 bytes in the tunnel's shared state, and allocates
/// only when an order comes.
#[derive(Default)]
pub(super) struct Mailbox {
    inner: Mutex<Inner>,
    /// Some order waits: a pump looks on every read, without the lock.
    queued: AtomicBool,
}

#[derive(Default)]
struct Inner {
    orders: VecDeque<Order>,
    /// The receiving pump's task, when it found the mailbox empty.
    waiting: Option<Waker>,
}

impl Mailbox {
    /// Leaves `order` and wakes the receiving pump; dropped when
    /// [`CAPACITY`] orders are waiting already.
    pub(super) fn send(&self, order: Order) {
        let waiting = {
            let mut inner = self.lock();
            if inner.orders.len() >= CAPACITY {
                return;
            }
            inner.orders.push_back(order);
            self.queued.store(true, Ordering::Release);
            inner.waiting.take()
        };
        if let Some(waker) = waiting {
            waker.wake();
        }
    }

    /// The oldest order, or, with none, the task registered to be woken by
    /// the next (under the same lock as the look: no wake-up is lost).
    pub(super) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Order> {
        let mut inner = self.lock();
        if let Some(order) = self.pop(&mut inner) {
            return Poll::Ready(order);
        }
        if !inner.waiting.as_ref().is_some_and(|waker| waker.will_wake(cx.waker())) {
            inner.waiting = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    pub(super) fn try_recv(&self) -> Option<Order> {
        if !self.queued.load(Ordering::Acquire) {
            return None;
        }
        self.pop(&mut self.lock())
    }

    pub(super) fn is_empty(&self) -> bool {
        !self.queued.load(Ordering::Acquire)
    }

    /// The oldest order, under the lock; `queued` turns false with the last.
    fn pop(&self, inner: &mut Inner) -> Option<Order> {
        let order = inner.orders.pop_front();
        if inner.orders.is_empty() {
            self.queued.store(false, Ordering::Release);
        }
        order
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A queue and a waker: a panic elsewhere cannot leave them half-written.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::Arc;
    use std::time::Duration;

    fn close(code: u16) -> Order {
        Order::Close { code, reason: "" }
    }

    #[test]
    fn orders_come_out_in_order_and_a_fifth_is_dropped() {
        let mailbox = Mailbox::default();
        assert!(mailbox.is_empty());
        for code in 1..=5 {
            mailbox.send(close(code));
        }
        assert!(!mailbox.is_empty());
        let received: Vec<_> = std::iter::from_fn(|| mailbox.try_recv()).collect();
        assert_eq!(received, (1..=4).map(close).collect::<Vec<_>>());
        assert!(mailbox.is_empty());
        mailbox.send(close(6));
        assert_eq!(mailbox.try_recv(), Some(close(6)), "taken orders make room");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_receiver_is_woken_by_a_send_from_another_task() {
        let mailbox = Arc::new(Mailbox::default());
        let receiver = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { poll_fn(|cx| mailbox.poll_recv(cx)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!receiver.is_finished(), "nothing sent yet");
        tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.send(close(1)) }
        });
        let received = tokio::time::timeout(Duration::from_secs(5), receiver).await;
        assert_eq!(received.expect("woken").expect("joined"), close(1));
    }

    /// Each round, a send from another thread races the receiver's look at
    /// an empty mailbox: whichever comes first, the receiver is woken. One
    /// timeout over all rounds, not one per round: a timeout polls what it
    /// waits for once more as it fires, which would hide a lost wake-up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_wake_up_is_lost() {
        let mailbox = Arc::new(Mailbox::default());
        let rounds = async {
            for code in 0..2_000 {
                let sender = tokio::spawn({
                    let mailbox = mailbox.clone();
                    async move { mailbox.send(close(code)) }
                });
                assert_eq!(poll_fn(|cx| mailbox.poll_recv(cx)).await, close(code));
                sender.await.expect("sent");
            }
        };
        tokio::time::timeout(Duration::from_secs(10), rounds)
            .await
            .expect("every round woken");
    }
}
