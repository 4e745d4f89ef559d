//! `[route.inspect] max_messages_per_second`: a client that sends more
//! messages than its route allows is closed with 1008, and its backend is
//! told 1001.
//!
//! What counts: every frame from the client that starts something the
//! backend must handle: a data message at its first frame, and every
//! control frame but the close (a ping or pong flood costs a backend as
//! much as a message flood; a close comes once). Continuation frames do not
//! count: a message is one message however it is fragmented, and the bytes
//! of a flood of fragments are bounded by `client_bytes_per_second`.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::super::shared::{Ending, Side};
use super::{Flow, Order, Pump};
use crate::config::Inspect;
use crate::tunnel::pace::TokenBucket;
use crate::ws::close;
use crate::ws::frame::OpCode;

/// The bucket of the pump reading from the client, when the route has a
/// message rate; none for the backend's.
pub(super) fn bucket(from: Side, inspect: &Inspect) -> Option<TokenBucket> {
    let rate = inspect.client_messages?;
    (from == Side::Client).then(|| TokenBucket::new(rate, Instant::now()))
}

/// The client's bucket as it was when its tunnel moved.
pub(super) fn bucket_at(inspect: &Inspect, tokens: f64) -> TokenBucket {
    let rate = inspect.client_messages.unwrap_or(crate::config::SocketRate {
        per_second: 1,
        burst: 1,
    });
    TokenBucket::at_level(rate, tokens, Instant::now())
}

impl<R, W> Pump<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Whether a frame starting with `opcode` takes the client past its rate.
    pub(super) fn over_message_rate(&mut self, opcode: OpCode) -> bool {
        let Some(bucket) = &mut self.message_rate else {
            return false;
        };
        if matches!(opcode, OpCode::Continuation | OpCode::Close) {
            return false;
        }
        !bucket.try_take_one(Instant::now())
    }

    /// The client went past its rate: it gets 1008 (the tunnel's end says
    /// why, once), the backend 1001, and the tunnel ends. Nothing of the
    /// frame that went past was forwarded: the backend is between frames.
    /// As for a protocol violation, the client's close waits for the
    /// backend's answer, so what the backend answered first reaches it first.
    pub(super) async fn message_rate_exceeded(&mut self) -> Flow {
        self.shared.ended(Ending::MessageRate);
        self.shared.metrics.message_rate_exceeded();
        self.to_source().send(Order::CloseAfterAnswer {
            code: close::POLICY_VIOLATION,
            reason: "message rate limit exceeded",
        });
        let _ = self
            .send_close(close::GOING_AWAY, "client exceeded its message rate")
            .await;
        Flow::Stop
    }
}
