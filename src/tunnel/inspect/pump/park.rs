//! Both directions of an inspected tunnel stopping together, between two
//! reads each, so that the tunnel can move to another process
//! ([`crate::tunnel::relocate`]).
//!
//! A pump asked to move parks at the top of its loop: it has written all
//! it read but the bytes held back for the frame reader. It waits there for
//! the other pump. If the other finds the tunnel cannot move (a close
//! handshake under way, an order in flight) or does not come within
//! [`PARK_LIMIT`] (a write held up by a peer that does not read), the
//! parked pump goes on as if nothing had happened, and the tunnel stays.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::super::saved::SavedPump;
use super::{Parked, Pump, PumpEnd};

/// How long a parked direction waits for the other.
const PARK_LIMIT: Duration = Duration::from_millis(500);

impl<R, W> Pump<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// True once both directions are parked: the tunnel moves.
    pub(super) async fn park(&mut self, draining: bool) -> bool {
        let mine = !draining
            && self.pending.is_none()
            && self.after_answer.is_none()
            && !self.source_done
            && self.inbox.is_empty()
            && self.reader.can_save();
        if !self.shared.join_move(mine) {
            return false;
        }
        let mut both = self.shared.rendezvous.subscribe();
        let end = self.shared.end.clone();
        tokio::select! {
            _ = both.wait_for(|r| r.parked == 2 || r.cancelled) => {}
            () = tokio::time::sleep(PARK_LIMIT) => {}
            () = end.cancelled() => {}
        }
        self.shared.leave_move()
    }

    /// Hands the halves and the state of a parked pump to the tunnel.
    pub(super) fn parked(self, held: &[u8]) -> PumpEnd<R, W> {
        let Pump {
            src,
            dst,
            reader,
            mut message_rate,
            ..
        } = self;
        let message_tokens = message_rate
            .as_mut()
            .map(|bucket| bucket.level(tokio::time::Instant::now()));
        PumpEnd::Parked(Box::new(Parked {
            src,
            dst,
            saved: SavedPump {
                reader,
                held: held.to_vec(),
                message_tokens,
            },
        }))
    }
}
