//! Asking open tunnels to end gracefully, with the close code that tells
//! clients why.
//!
//! One [`Drain`] per proxy; every tunnel holds a [`DrainSignal`]. An
//! inspected tunnel answers [`Drain::start`] by sending a close frame with
//! the [`GoingAway`] code to both sides between frames and waiting for their
//! answers (up to its close timeout); a plain tunnel cannot speak WebSocket
//! and is simply closed when the shutdown deadline passes.

use tokio::sync::watch;

/// Why tunnels are asked to end: the close frame both sides get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoingAway {
    pub code: u16,
    pub reason: &'static str,
}

impl GoingAway {
    /// 1001 "going away" (RFC 6455 §7.4.1): the server is shutting down.
    pub const SHUTDOWN: GoingAway = GoingAway {
        code: 1001,
        reason: "going away",
    };
    /// 1012 "service restart" (IANA close code registry): back soon, reconnect.
    pub const RESTART: GoingAway = GoingAway {
        code: 1012,
        reason: "service restart",
    };
}

/// The sending half: one per proxy.
#[derive(Debug)]
pub struct Drain {
    sender: watch::Sender<Option<GoingAway>>,
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
    pub fn start(&self, why: GoingAway) {
        self.sender.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(why);
            true
        });
    }

    /// What drain was asked for, if any.
    pub fn requested(&self) -> Option<GoingAway> {
        *self.sender.borrow()
    }

    /// A handle for one tunnel.
    pub fn signal(&self) -> DrainSignal {
        DrainSignal {
            receiver: self.sender.subscribe(),
        }
    }
}

/// The receiving half, held by each tunnel.
#[derive(Debug, Clone)]
pub struct DrainSignal {
    receiver: watch::Receiver<Option<GoingAway>>,
}

impl DrainSignal {
    /// Completes once drain is asked for (at once if it already was). If
    /// the proxy is gone without asking, never completes.
    pub async fn requested(&mut self) -> GoingAway {
        // The guard `wait_for` returns must not live across an await.
        let why = self.receiver.wait_for(Option::is_some).await.ok().and_then(|why| *why);
        match why {
            Some(why) => why,
            None => std::future::pending().await,
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
        drain.start(GoingAway::RESTART);
        drain.start(GoingAway::SHUTDOWN);
        assert_eq!(early.requested().await, GoingAway::RESTART);
        let mut late = drain.signal();
        assert_eq!(late.requested().await, GoingAway::RESTART);
        assert_eq!(drain.requested(), Some(GoingAway::RESTART));
    }

    #[tokio::test]
    async fn without_a_request_nothing_completes() {
        let drain = Drain::default();
        let mut signal = drain.signal();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), signal.requested()).await;
        assert!(waited.is_err());
    }
}
