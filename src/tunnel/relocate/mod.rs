//! Open tunnels stopping where they can be described, to be handed to the
//! next process at a binary upgrade ([`crate::lifecycle::handover`]).
//!
//! One [`Relocation`] per process. A tunnel that can move (both sides plain
//! TCP) holds a [`Ticket`]; when the upgrade asks, each such tunnel stops at
//! a point where nothing it read is half-handled (a plain splice between
//! two polls; an inspected tunnel between two reads of each direction, at
//! the same time), writes itself down as a [`MovedTunnel`] and gives it to
//! [`Relocation::hand_over`]. If the upgrade is over by then, the tunnel
//! gets its description back and goes on as it was.
//!
//! A ticket costs an idle tunnel its 24 bytes and one registration of its
//! task's waker; the data path reads one atomic per poll.

pub mod moved;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::sync::mpsc;

use crate::lifecycle::sparse_table::shrink_when_sparse;
use crate::sync::lock;

pub use moved::MovedTunnel;

/// Asks the tunnels that can move to stop and describe themselves.
#[derive(Default)]
pub struct Relocation {
    asked: AtomicBool,
    next_ticket: AtomicU64,
    /// The tasks of the tickets not yet used, to wake when asked.
    waiting: Mutex<HashMap<u64, Option<Waker>>>,
    /// Where stopped tunnels go while an upgrade takes them.
    taker: Mutex<Option<mpsc::UnboundedSender<MovedTunnel>>>,
    /// Tunnels admitted and not yet started: whether they can move is not
    /// known yet, and an upgrade waits for them.
    opening: AtomicUsize,
}

impl Relocation {
    /// A ticket for a tunnel that can move.
    pub fn ticket(self: &Arc<Self>) -> Ticket {
        let id = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        lock(&self.waiting).insert(id, None);
        Ticket {
            relocation: self.clone(),
            id,
        }
    }

    /// Asks every tunnel holding a ticket, now or later, to stop and go to
    /// `taker`.
    pub fn start(&self, taker: mpsc::UnboundedSender<MovedTunnel>) {
        *lock(&self.taker) = Some(taker);
        self.asked.store(true, Ordering::Release);
        for waker in lock(&self.waiting).values().flatten() {
            waker.wake_by_ref();
        }
    }

    /// The upgrade is over: tunnels stay where they are from now on.
    pub fn stop(&self) {
        self.asked.store(false, Ordering::Release);
        lock(&self.taker).take();
    }

    /// Tickets not yet used: tunnels that could still move.
    pub fn waiting(&self) -> usize {
        lock(&self.waiting).len()
    }

    /// Counts a tunnel as opening until the guard is dropped (it started,
    /// with a ticket or without, or it failed).
    pub fn opening(self: &Arc<Self>) -> Undecided {
        self.opening.fetch_add(1, Ordering::Relaxed);
        Undecided {
            relocation: self.clone(),
        }
    }

    /// Tunnels admitted and not yet started.
    pub fn undecided(&self) -> usize {
        self.opening.load(Ordering::Relaxed)
    }

    /// Gives a stopped tunnel to the upgrade; back if it is over.
    pub fn hand_over(&self, tunnel: MovedTunnel) -> Result<(), Box<MovedTunnel>> {
        match &*lock(&self.taker) {
            Some(taker) => taker.send(tunnel).map_err(|refused| Box::new(refused.0)),
            None => Err(Box::new(tunnel)),
        }
    }
}

/// A tunnel on its way from admission to its start ([`Relocation::opening`]).
pub struct Undecided {
    relocation: Arc<Relocation>,
}

impl Drop for Undecided {
    fn drop(&mut self) {
        self.relocation.opening.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A tunnel's place on the list of those that can move.
pub struct Ticket {
    relocation: Arc<Relocation>,
    /// The place on the list, and in its top bit whether the task's waker
    /// is registered there (one word: memory per idle tunnel).
    id: u64,
}

/// The bit of [`Ticket::id`] that says the waker is registered.
const REGISTERED: u64 = 1 << 63;

impl Ticket {
    /// Ready once the tunnel is asked to move. The first poll registers
    /// the task; after that a poll reads one atomic.
    pub fn poll_asked(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.relocation.asked.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if self.id & REGISTERED != 0 {
            return Poll::Pending;
        }
        // Once per ticket: a task's waker wakes it for as long as it lives.
        if let Some(slot) = lock(&self.relocation.waiting).get_mut(&self.id) {
            *slot = Some(cx.waker().clone());
        }
        self.id |= REGISTERED;
        // Asked between the first look and the registration: seen now.
        match self.relocation.asked.load(Ordering::Acquire) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }

    pub fn relocation(&self) -> &Arc<Relocation> {
        &self.relocation
    }

    /// The tunnel stopped to move: it leaves the list, and is counted as
    /// undecided until the returned guard goes (once it was handed over,
    /// or went on here), so an upgrade does not end while it is on its way.
    pub fn moving(self) -> Undecided {
        self.relocation.opening()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut waiting = lock(&self.relocation.waiting);
        waiting.remove(&(self.id & !REGISTERED));
        shrink_when_sparse(&mut waiting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[test]
    fn the_list_gives_back_its_memory_after_a_surge() {
        let relocation = Arc::new(Relocation::default());
        let mut surge: Vec<Ticket> = (0..4_000).map(|_| relocation.ticket()).collect();
        let at_peak = lock(&relocation.waiting).capacity();
        assert!(at_peak >= 4_000, "{at_peak}");
        surge.truncate(10);
        let after = lock(&relocation.waiting).capacity();
        assert!(after <= 256, "{after} of {at_peak} kept for 10 tickets");
        assert_eq!(relocation.waiting(), 10);
    }

    #[tokio::test]
    async fn a_ticket_wakes_when_asked_and_leaves_the_list_when_dropped() {
        let relocation = Arc::new(Relocation::default());
        let mut ticket = relocation.ticket();
        assert_eq!(relocation.waiting(), 1);
        let waiter = tokio::spawn(async move {
            poll_fn(|cx| ticket.poll_asked(cx)).await;
            ticket
        });
        tokio::task::yield_now().await;
        let (taker, _taken) = mpsc::unbounded_channel();
        relocation.start(taker);
        let ticket = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        drop(ticket);
        assert_eq!(relocation.waiting(), 0);
        relocation.stop();
        let mut fresh = relocation.ticket();
        assert!(
            poll_fn(|cx| Poll::Ready(fresh.poll_asked(cx).is_pending())).await,
            "not asked once the upgrade is over"
        );
    }
}
