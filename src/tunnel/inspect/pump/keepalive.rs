//! The clocks of an inspected tunnel: keepalive pings toward a pump's
//! destination, the pong timeout, the idle timeout and the close timeout.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::super::shared::{Ending, Shared, Side};
use super::{Flow, Order, Pump, PING_PREFIX};
use crate::config::Inspect;
use crate::ws::close;
use crate::ws::frame::OpCode;

impl<R, W> Pump<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Runs on every tick: each pump watches the side it writes to, since
    /// only it may put a ping between that side's frames.
    pub(super) async fn timers(&mut self) -> Flow {
        let inspect = &self.shared.settings.inspect;
        let (ping_interval, pong_timeout, idle_timeout, close_timeout) = (
            inspect.ping_interval,
            inspect.pong_timeout,
            inspect.idle_timeout,
            inspect.close_timeout,
        );
        let keepalive = kept_alive(inspect, self.to());
        let to = self.to();
        let (pinged, close_started) = {
            let state = self.shared.state();
            (state.ping[to.index()], state.close_started)
        };
        if let Some(closed_at) = close_started {
            if closed_at.elapsed() >= close_timeout {
                self.shared.ended(Ending::CloseTimeout);
                self.shared.end.cancel();
                return Flow::Stop;
            }
            return Flow::Go;
        }
        if idle_timeout.is_some_and(|idle| self.shared.idle_for() >= idle) {
            self.shared.ended(Ending::IdleTimeout);
            self.to_source().send(Order::Close {
                code: close::GOING_AWAY,
                reason: "idle timeout",
            });
            return self.close_at_boundary(close::GOING_AWAY, "idle timeout").await;
        }
        if !keepalive {
            return Flow::Go;
        }
        let silent_for = self.shared.silent_for(to);
        if silent_for >= ping_interval + pong_timeout {
            give_up(&self.shared, to);
            return Flow::Stop;
        }
        if silent_for >= ping_interval && pinged.is_none() && self.can_inject() {
            let id = {
                let mut state = self.shared.state();
                state.next_ping = state.next_ping.wrapping_add(1);
                state.ping[to.index()] = Some((state.next_ping, Instant::now()));
                state.next_ping
            };
            let mut payload = [0u8; 8];
            payload[..4].copy_from_slice(PING_PREFIX);
            payload[4..].copy_from_slice(&id.to_be_bytes());
            if self.send_control(OpCode::Ping, &payload).await.is_err() {
                return Flow::Stop;
            }
        }
        Flow::Go
    }
}

/// `to` has sent nothing at all since well before the ping: the peer is
/// gone (a dead NAT mapping, a pulled cable). Its side is closed outright;
/// the other side is told: 1001 to a backend whose client went away, 1011
/// to a client whose backend hangs. The caller's pump then stops.
pub(in crate::tunnel::inspect) fn give_up(shared: &Shared, to: Side) {
    debug!(
        side = to.as_str(),
        silent_ms = shared.silent_for(to).as_millis() as u64,
        "peer stopped answering"
    );
    shared.ended(Ending::Unresponsive(to));
    let (code, reason) = match to {
        Side::Client => (close::GOING_AWAY, "client not responding"),
        Side::Backend => (close::INTERNAL_ERROR, "backend not responding"),
    };
    shared.orders_to(to.other()).send(Order::CloseAndEnd { code, reason });
}

/// Whether a pump's clocks have something to do now, for a tunnel whose
/// pumps are not running (on a splice thread, where no close handshake is
/// under way): an idle timeout, or a side silent long enough to be pinged
/// (or given up on).
pub(in crate::tunnel::inspect) fn clocks_due(shared: &Shared) -> bool {
    let inspect = &shared.settings.inspect;
    inspect.idle_timeout.is_some_and(|idle| shared.idle_for() >= idle)
        || [Side::Client, Side::Backend]
            .into_iter()
            .any(|side| kept_alive(inspect, side) && shared.silent_for(side) >= inspect.ping_interval)
}

/// Whether wsgate pings `side` when it falls silent: a client always, a
/// backend with `ping_backend`.
fn kept_alive(inspect: &Inspect, side: Side) -> bool {
    side == Side::Client || inspect.ping_backend
}

/// Timers are checked a few times per their shortest period.
pub(in crate::tunnel::inspect) fn tick_period(inspect: &Inspect) -> Duration {
    let shortest = [
        Some(inspect.ping_interval),
        Some(inspect.pong_timeout),
        Some(inspect.close_timeout),
        inspect.idle_timeout,
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(Duration::from_secs(1));
    (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}
