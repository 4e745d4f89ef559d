//! Asking open tunnels to end gracefully, with the close code that tells
//! clients why.
//!
//! One [`Drain`] per proxy; every tunnel holds a [`DrainSignal`]. An
//! inspected tunnel answers [`Drain::start`] by sending a close frame with
//! the [`DrainClose`] code to both sides between frames and waiting for their
//! answers (up to its close timeout); a plain tunnel cannot speak WebSocket
//! and is simply closed when the shutdown deadline passes.
//!
//! The close frames are spread over a window: each tunnel waits a random
//! part of it first, so a hundred thousand clients told to reconnect do not
//! all come back in the same second.

use std::time::Duration;

use tokio::sync::watch;

use crate::ws::close;

/// Why tunnels are asked to end, as the close frame both sides of an
/// inspected tunnel get: a shutdown (1001) or a restart (1012).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainClose {
    pub code: u16,
    pub reason: &'static str,
}

impl DrainClose {
    /// 1001 "going away" (RFC 6455 §7.4.1): the server is shutting down.
    pub const SHUTDOWN: DrainClose = DrainClose {
        code: close::GOING_AWAY,
        reason: "going away",
    };
    /// 1012 "service restart" (IANA close code registry): back soon, reconnect.
    pub const RESTART: DrainClose = DrainClose {
        code: close::SERVICE_RESTART,
        reason: "service restart",
    };
    /// 1012 too for a tunnel rebalancing closes: reconnect now, and the
    /// balancer places the new tunnel on a server with room.
    pub const REBALANCE: DrainClose = DrainClose {
        code: close::SERVICE_RESTART,
        reason: "rebalancing",
    };
}

/// A request to end: why, and the window the tunnels spread their ends over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainRequest {
    pub why: DrainClose,
    pub spread: Duration,
}

/// The sending half: one per proxy.
#[derive(Debug)]
pub struct Drain {
    sender: watch::Sender<Option<DrainRequest>>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            sender: watch::Sender::new(None),
        }
    }
}

impl Drain {
    /// Asks every tunnel, open now or opened later, to end with `why`. The
    /// first request wins: a restart announced to clients is not turned
    /// into a shutdown halfway through.
    pub fn start(&self, why: DrainClose, spread: Duration) {
        self.sender.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(DrainRequest { why, spread });
            true
        });
    }

    /// What drain was asked for, if any.
    pub fn requested(&self) -> Option<DrainRequest> {
        *self.sender.borrow()
    }

    /// A handle for one tunnel.
    pub fn signal(&self) -> DrainSignal {
        DrainSignal {
            receiver: self.sender.subscribe(),
            alone: None,
        }
    }
}

/// The receiving half, held by each tunnel.
#[derive(Debug, Clone)]
pub struct DrainSignal {
    receiver: watch::Receiver<Option<DrainRequest>>,
    /// This tunnel alone asked to end, by rebalancing
    /// ([`crate::upstream::rebalance`]): turns true once.
    alone: Option<watch::Receiver<bool>>,
}

impl DrainSignal {
    /// Also completes when `alone` turns true: this tunnel alone is asked
    /// to end, at once, with [`DrainClose::REBALANCE`].
    pub fn or_when(self, alone: watch::Receiver<bool>) -> DrainSignal {
        DrainSignal {
            alone: Some(alone),
            ..self
        }
    }

    /// Completes once drain is asked for (at once if it already was). If
    /// the proxy is gone without asking, never completes.
    pub async fn requested(&mut self) -> DrainRequest {
        let DrainSignal { receiver, alone } = self;
        let everyone = async {
            // The guard `wait_for` returns must not live across an await.
            match receiver.wait_for(Option::is_some).await.ok().and_then(|why| *why) {
                Some(why) => why,
                None => std::future::pending().await,
            }
        };
        let Some(alone) = alone else {
            return everyone.await;
        };
        let this_one = async {
            // The guard `wait_for` returns must not live across an await.
            let asked = alone.wait_for(|asked| *asked).await.is_ok();
            if !asked {
                // The ticket is gone: nobody can ask any more.
                std::future::pending::<()>().await;
            }
            DrainRequest {
                why: DrainClose::REBALANCE,
                spread: Duration::ZERO,
            }
        };
        tokio::select! {
            why = everyone => why,
            why = this_one => why,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_request_wins_and_reaches_late_subscribers() {
        let drain = Drain::default();
        let mut early = drain.signal();
        assert_eq!(drain.requested(), None);
        let restart = DrainRequest {
            why: DrainClose::RESTART,
            spread: Duration::from_secs(3),
        };
        drain.start(restart.why, restart.spread);
        drain.start(DrainClose::SHUTDOWN, Duration::ZERO);
        assert_eq!(early.requested().await, restart);
        let mut late = drain.signal();
        assert_eq!(late.requested().await, restart);
        assert_eq!(drain.requested(), Some(restart));
    }

    #[tokio::test]
    async fn one_tunnel_alone_can_be_asked_to_end() {
        let drain = Drain::default();
        let (ask, asked) = watch::channel(false);
        let mut alone = drain.signal().or_when(asked);
        let mut other = drain.signal();
        ask.send_replace(true);
        let request = alone.requested().await;
        assert_eq!(request.why, DrainClose::REBALANCE);
        assert_eq!(request.why.code, close::SERVICE_RESTART);
        assert_eq!(request.spread, Duration::ZERO);
        let waited = tokio::time::timeout(Duration::from_millis(20), other.requested()).await;
        assert!(waited.is_err(), "the others go on");
    }

    #[tokio::test]
    async fn without_a_request_nothing_completes() {
        let drain = Drain::default();
        let mut signal = drain.signal();
        let waited = tokio::time::timeout(Duration::from_millis(20), signal.requested()).await;
        assert!(waited.is_err());
    }
}
