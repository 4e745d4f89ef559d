//! Both directions of an inspected tunnel stopping together, between two
//! reads each, so that the tunnel can move to another process
//! ([`crate::tunnel::relocate`]) or go to a splice thread
//! ([`crate::tunnel::splice_thread`]).
//!
//! To go to a thread, the direction that finds the tunnel busy enough asks
//! the other (an order), which parks first and asks back: the direction
//! that asked, busy, parks second, and does not wait. A meeting that fails
//! is not tried again until the tunnel comes back from a thread.
//!
//! A pump asked to move parks at the top of its loop: it has written all
//! it read but the bytes held back for the frame reader. It waits there for
//! the other pump. If the other finds the tunnel cannot move (a close
//! handshake under way, an order in flight), the parked pump goes on as if
//! nothing had happened, and the tunnel stays. If the other does not come
//! within [`PARK_LIMIT`] (busy, or a write held up by a peer that does not
//! read), the parked pump goes on too, and parks again at its next turn,
//! for as long as the upgrade asks.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::super::mailbox::Order;
use super::super::saved::SavedPump;
use super::super::shared::Purpose;
use super::{Parked, Pump, PumpEnd};
use crate::tunnel::relocate::Undecided;

/// What became of a direction that parked.
#[derive(PartialEq, Eq)]
pub(super) enum Parking {
    /// Both directions stopped: the tunnel moves.
    Moved,
    /// The tunnel cannot move: it stays, and is not asked again.
    Stay,
    /// The other direction did not come in time: go on, park again later.
    Again,
}

/// How long a parked direction waits for the other.
const PARK_LIMIT: Duration = Duration::from_millis(500);

impl<R, W> Pump<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Whether both directions parked (the tunnel moves), or this one goes
    /// on and may try again, or never. `holding`: bytes held back for the
    /// frame reader (a thread takes a direction with none).
    pub(super) async fn park(&mut self, purpose: Purpose, draining: bool, holding: bool) -> Parking {
        let mine = !draining
            && self.pending.is_none()
            && self.after_answer.is_none()
            && !self.source_done
            && self.inbox().is_empty()
            && self.reader.can_save()
            && !(purpose == Purpose::Thread && holding);
        let Some(joined) = self.shared.join_move(purpose, mine) else {
            debug!(
                side = self.from.as_str(),
                mine,
                ?purpose,
                "tunnel stays: it cannot move now"
            );
            return Parking::Stay;
        };
        if purpose == Purpose::Thread && joined == 1 {
            self.to_source().send(Order::ToThread);
        }
        let mut both = self.shared.rendezvous.subscribe();
        let end = self.shared.end.clone();
        tokio::select! {
            _ = both.wait_for(|r| r[purpose as usize].parked == 2 || r[purpose as usize].cancelled) => {}
            () = tokio::time::sleep(PARK_LIMIT) => {}
            () = end.cancelled() => {}
        }
        match (self.shared.leave_move(purpose), self.shared.move_called_off(purpose)) {
            (true, _) => Parking::Moved,
            (false, true) => Parking::Stay,
            (false, false) if purpose == Purpose::Thread => {
                // Not worth a busy direction's wait: called off.
                self.shared.call_off(purpose);
                Parking::Stay
            }
            (false, false) => Parking::Again,
        }
    }

    /// Hands the halves and the state of a parked pump to the tunnel.
    pub(super) fn parked(self, held: &[u8], moving: Option<Undecided>, purpose: Purpose) -> PumpEnd<R, W> {
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
            moving,
            purpose,
            saved: SavedPump {
                reader,
                held: held.to_vec(),
                message_tokens,
            },
        }))
    }
}
