//! A tunnel that reads the frames as they pass (`[route.inspect]`).
//!
//! Two `Pump`s, one per direction. Each reads its source, follows the
//! frame boundaries with a [`FrameReader`](crate::ws::frame::FrameReader), and
//! writes the same bytes to its destination, batched per read: nothing is
//! re-framed or buffered beyond one read. A pump is the only writer to its
//! destination, so the frames wsgate sends itself (pings, close frames) go
//! out there only between frames; a frame for the other side is handed to
//! the other pump as an order.
//!
//! What both pumps read and write lives in `shared`.

use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::pump::{clocks_due, tick_period, Pump, PumpEnd};
use super::saved::{Saved, SavedPump};
use super::shared::{log_end, Purpose, Settings, Shared, Side};
use crate::telemetry::TunnelMetrics;
use crate::tunnel::drain::DrainSignal;
use crate::tunnel::halves::{self, LetGo, Movable, ReadHalf, Side as TcpSide, WriteHalf};
use crate::tunnel::identity::Identity;
use crate::tunnel::relocate::moved::{MovedSocket, MovedState};
use crate::tunnel::relocate::{MovedTunnel, Relocation, Ticket, Undecided};
use crate::tunnel::splice_thread::{self, Back, Counts, Following, OnThread};
use crate::ws::frame::FrameReader;

/// After one direction ended, how long the other gets to deliver its close
/// when no close handshake is under way.
const END_GRACE: Duration = Duration::from_secs(1);

/// Where an inspected tunnel starts: new, or where a description of it
/// left it (moved from another process, or back from a move that did not
/// happen).
pub enum Start {
    Fresh(Settings),
    Moved { saved: Box<Saved>, age: Duration },
}

/// A side's two halves ([`crate::tunnel::halves`]).
type Halves = (ReadHalf, WriteHalf);

/// Runs an inspected tunnel until both sides are done, then logs how it
/// ended and records it in `metrics`. Each side comes as its reading and
/// writing halves ([`crate::tunnel::halves`]). With `relocation`, a tunnel
/// whose two sides are plain TCP moves to the next process when a binary
/// upgrade asks, and this returns once it went. A busy one whose sides are
/// plain TCP goes to a splice thread, and comes back for whatever its
/// pumps must do ([`on_thread`]).
pub async fn run(
    client: Halves,
    backend: Halves,
    start: Start,
    drain: DrainSignal,
    metrics: TunnelMetrics,
    identity: Identity,
    mut relocation: Option<Arc<Relocation>>,
) {
    if client.0.movable().is_none() || backend.0.movable().is_none() {
        relocation = None;
    }
    let begin = Begin::Made(start, metrics, identity);
    let mut pumps = Pumps::new(client, backend, begin, relocation.as_ref());
    loop {
        let stopped = match drive(pumps, drain.clone(), relocation.clone()).await {
            Driven::Ended => return,
            Driven::ToThread(going) => {
                // Boxed: only a tunnel that goes to a thread pays for the
                // room its stay there takes (memory per idle tunnel).
                let stay = Box::pin(on_thread(*going, &drain, relocation.as_ref()));
                let Some((c, b, back)) = stay.await else {
                    return;
                };
                pumps = Pumps::new(c, b, back, relocation.as_ref());
                continue;
            }
            Driven::Stopped(stopped) => *stopped,
        };
        let Stopped {
            client: c,
            backend: b,
            saved,
            age,
            metrics: m,
            identity: i,
            relocation: r,
            moving: _moving,
        } = stopped;
        let tunnel = match describe(&c.0, &b.0, &i, saved, age) {
            Ok(tunnel) => tunnel,
            Err((error, saved)) => {
                tracing::warn!(%error, "tunnel cannot move: it stays");
                let begin = Begin::Made(Start::Moved { saved, age }, m, i);
                pumps = Pumps::new(c, b, begin, relocation.as_ref());
                continue;
            }
        };
        match r.hand_over(tunnel) {
            Ok(()) => {
                tracing::debug!("tunnel handed over");
                c.1.let_go();
                b.1.let_go();
                return;
            }
            Err(tunnel) => {
                // The upgrade is over: go on here, where the tunnel stopped.
                let MovedState::Inspected(saved) = tunnel.state else {
                    return;
                };
                let begin = Begin::Made(Start::Moved { saved, age }, m, i);
                pumps = Pumps::new(c, b, begin, relocation.as_ref());
            }
        }
    }
}

/// Where [`drive`] starts the pumps.
#[allow(
    clippy::large_enum_variant,
    reason = "made once per start, and moved into the pumps at once"
)]
enum Begin {
    /// A new tunnel, or one moved from another process.
    Made(Start, TunnelMetrics, Identity),
    /// Back from a splice thread.
    Back(Box<Returned>),
}

/// A tunnel back from a splice thread: its readers and the bytes each held
/// (the client's first), the bytes each direction has yet to write, and
/// the move ticket kept while it was away.
struct Returned {
    shared: Arc<Shared>,
    readers: [(FrameReader, Vec<u8>); 2],
    unwritten: [Vec<u8>; 2],
    ticket: Option<Ticket>,
}

/// How [`drive`] ended.
enum Driven {
    /// Logged and recorded.
    Ended,
    /// Both directions stopped to move.
    Stopped(Box<Stopped>),
    /// Both directions stopped to go to a splice thread.
    ToThread(Box<Going>),
}

/// Both directions stopped to move.
struct Stopped {
    client: Halves,
    backend: Halves,
    saved: Box<Saved>,
    age: Duration,
    metrics: TunnelMetrics,
    identity: Identity,
    relocation: Arc<Relocation>,
    /// The two directions' places as undecided, until the tunnel went.
    moving: [Option<Undecided>; 2],
}

/// Both directions stopped to go to a splice thread, each with its reader.
struct Going {
    client: Halves,
    backend: Halves,
    shared: Arc<Shared>,
    readers: [FrameReader; 2],
}

/// The tunnel's two pumps, made, and what each starts with.
struct Pumps {
    shared: Arc<Shared>,
    upstream: Box<Pump<ReadHalf, WriteHalf>>,
    downstream: Box<Pump<ReadHalf, WriteHalf>>,
    /// Per direction, the upstream's first: bytes held for its reader, to
    /// go in front of its first read.
    held: [Vec<u8>; 2],
    tickets: [Option<Ticket>; 2],
}

impl Pumps {
    /// The pumps where `begin` says. Not in [`drive`]: an async fn keeps
    /// its arguments for as long as it runs, and `begin` is 300 bytes
    /// (memory per idle tunnel).
    fn new(
        (client_read, client_write): Halves,
        (backend_read, backend_write): Halves,
        begin: Begin,
        relocation: Option<&Arc<Relocation>>,
    ) -> Pumps {
        let threadable = matches!((&client_read, &backend_read), (ReadHalf::Tcp(_), ReadHalf::Tcp(_)));
        let (shared, upstream, downstream, held, unwritten, up_ticket) = match begin {
            Begin::Made(Start::Fresh(settings), metrics, identity) => {
                let shared = Arc::new(Shared::new(settings, metrics, identity));
                let upstream = Pump::new(Side::Client, client_read, backend_write, &shared);
                let downstream = Pump::new(Side::Backend, backend_read, client_write, &shared);
                (
                    shared,
                    upstream,
                    downstream,
                    Default::default(),
                    Default::default(),
                    None,
                )
            }
            Begin::Made(Start::Moved { saved, age }, metrics, identity) => {
                let shared = Arc::new(Shared::restore(&saved, age, metrics, identity));
                let [from_client, from_backend] = saved.pumps;
                let held = [from_client.held.clone(), from_backend.held.clone()];
                let upstream = Pump::resume(Side::Client, (client_read, backend_write), &shared, from_client);
                let downstream = Pump::resume(Side::Backend, (backend_read, client_write), &shared, from_backend);
                (shared, upstream, downstream, held, Default::default(), None)
            }
            Begin::Back(returned) => {
                let Returned {
                    shared,
                    readers: [(from_client, client_held), (from_backend, backend_held)],
                    unwritten,
                    ticket,
                } = *returned;
                let saved = |reader| SavedPump {
                    reader,
                    held: Vec::new(),
                    message_tokens: None,
                };
                let upstream = Pump::resume(Side::Client, (client_read, backend_write), &shared, saved(from_client));
                let downstream = Pump::resume(
                    Side::Backend,
                    (backend_read, client_write),
                    &shared,
                    saved(from_backend),
                );
                (
                    shared,
                    upstream,
                    downstream,
                    [client_held, backend_held],
                    unwritten,
                    ticket,
                )
            }
        };
        if threadable && shared.settings.inspect.client_messages.is_none() {
            shared.may_go_to_thread();
        }
        let [up_unwritten, down_unwritten] = unwritten;
        let (mut upstream, mut downstream) = (Box::new(upstream), Box::new(downstream));
        upstream.write_first(up_unwritten);
        downstream.write_first(down_unwritten);
        let ticket = || relocation.map(|relocation| relocation.ticket());
        Pumps {
            shared,
            upstream,
            downstream,
            held,
            tickets: [up_ticket.or_else(ticket), ticket()],
        }
    }
}

/// The tunnel's two pumps, until they end or stop together to move or to
/// go to a splice thread.
async fn drive(pumps: Pumps, drain: DrainSignal, relocation: Option<Arc<Relocation>>) -> Driven {
    let Pumps {
        shared,
        upstream,
        downstream,
        held: [up_held, down_held],
        tickets: [up_ticket, down_ticket],
    } = pumps;

    // A task per direction: a read on one side wakes only its own pump,
    // not the other one's clocks and signals too. Dropping the handles
    // (the tunnel's task cancelled) ends both.
    let span = tracing::Span::current();
    let drain_up = drain.clone();
    let mut upstream = AbortOnDropHandle::new(tokio::spawn(
        async move { upstream.run(drain_up, up_ticket, &up_held).await }.instrument(span.clone()),
    ));
    let mut downstream = AbortOnDropHandle::new(tokio::spawn(
        async move { downstream.run(drain, down_ticket, &down_held).await }.instrument(span),
    ));
    let (up, down) = tokio::select! {
        up = &mut upstream => {
            let down = tokio::time::timeout(end_grace(&shared), &mut downstream).await;
            (up.ok(), down.ok().and_then(Result::ok))
        }
        down = &mut downstream => {
            let up = tokio::time::timeout(end_grace(&shared), &mut upstream).await;
            (up.ok().and_then(Result::ok), down.ok())
        }
    };
    drop((upstream, downstream));
    match (up, down, relocation) {
        (Some(PumpEnd::Parked(up)), Some(PumpEnd::Parked(down)), _) if up.purpose == Purpose::Thread => {
            Driven::ToThread(Box::new(Going {
                client: (up.src, down.dst),
                backend: (down.src, up.dst),
                shared,
                readers: [up.saved.reader, down.saved.reader],
            }))
        }
        (Some(PumpEnd::Parked(up)), Some(PumpEnd::Parked(down)), Some(relocation)) => {
            let age = shared.age();
            let saved = Box::new(shared.save([up.saved, down.saved]));
            // Both pumps are done with it: the tunnel's own parts come back.
            let Ok(shared) = Arc::try_unwrap(shared) else {
                return Driven::Ended;
            };
            let (metrics, identity) = shared.into_parts();
            Driven::Stopped(Box::new(Stopped {
                moving: [up.moving, down.moving],
                client: (up.src, down.dst),
                backend: (down.src, up.dst),
                saved,
                age,
                metrics,
                identity,
                relocation,
            }))
        }
        _ => {
            log_end(&shared);
            Driven::Ended
        }
    }
}

/// The tunnel on a splice thread until it must come back: the thread sends
/// it back (a frame its pumps must see, an end of stream, an error), or
/// its clocks have something to do, a drain asks for its close, or a
/// binary upgrade for its move. Then its pumps start again where the
/// thread left it (none if a socket was lost on the way).
async fn on_thread(
    going: Going,
    drain: &DrainSignal,
    relocation: Option<&Arc<Relocation>>,
) -> Option<(Halves, Halves, Begin)> {
    let Going {
        client,
        backend,
        shared,
        readers,
    } = going;
    let sockets = match (halves::rejoin(client.0, client.1), halves::rejoin(backend.0, backend.1)) {
        (Ok(Ok(client)), Ok(Ok(backend))) => [client, backend],
        (Ok(Err(error)), _) | (_, Ok(Err(error))) => {
            // A socket lost on its way out of tokio's driver: the tunnel ends.
            tracing::warn!(%error, "tunnel lost a socket on its way to a splice thread");
            log_end(&shared);
            return None;
        }
        (client, backend) => {
            // Not plain TCP with every byte of a first read handed out: the
            // pumps go on as they were (a side out of tokio's driver already
            // goes back in).
            let halves = |side: Result<std::io::Result<std::net::TcpStream>, Halves>| match side {
                Err(halves) => halves,
                Ok(Ok(socket)) => TcpSide::from_thread(socket, Vec::new()).split(),
                Ok(Err(_)) => unreachable!("a lost socket ended the tunnel above"),
            };
            let begin = Begin::Back(Box::new(Returned {
                readers: readers.map(|reader| (reader, Vec::new())),
                shared,
                unwritten: Default::default(),
                ticket: None,
            }));
            return Some((halves(client), halves(backend), begin));
        }
    };
    let counts: Arc<dyn Counts> = shared.clone();
    let mut ticket = relocation.map(|relocation| relocation.ticket());
    let back = match splice_thread::follow_on_thread(sockets, Box::new(Following::new(readers, counts))) {
        Ok(mut on) => {
            asleep(&on, &shared, drain.clone(), &mut ticket).await;
            on.take_back()
        }
        Err(back) => back,
    };
    let Back {
        sockets: [client, backend],
        unread: [client_unread, backend_unread],
        unwritten,
        following,
        error,
    } = *back;
    if let Some((side, error)) = error {
        shared.failed(Side::of_index(side), &error);
    }
    let begin = Begin::Back(Box::new(Returned {
        shared,
        readers: following.into_readers(),
        unwritten,
        ticket,
    }));
    Some((
        TcpSide::from_thread(client, client_unread).split(),
        TcpSide::from_thread(backend, backend_unread).split(),
        begin,
    ))
}

/// Until the thread sends the tunnel back, or the task wants it back.
async fn asleep(on: &OnThread, shared: &Shared, mut drain: DrainSignal, ticket: &mut Option<Ticket>) {
    let period = tick_period(&shared.settings.inspect);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let requested = drain.requested();
    tokio::pin!(requested);
    poll_fn(|cx| {
        if on.poll_back(cx).is_ready() || requested.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if ticket.as_mut().is_some_and(|ticket| ticket.poll_asked(cx).is_ready()) {
            return Poll::Ready(());
        }
        while ticks.poll_tick(cx).is_ready() {
            if clocks_due(shared) {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await;
}

/// The tunnel written down, with copies of its two sockets; the saved
/// state back if a socket cannot be copied (out of descriptors).
fn describe(
    client: &impl Movable,
    backend: &impl Movable,
    identity: &Identity,
    saved: Box<Saved>,
    age: Duration,
) -> Result<MovedTunnel, (std::io::Error, Box<Saved>)> {
    let side = |side: &dyn Movable| -> std::io::Result<MovedSocket> {
        let (fd, unread) = side.movable().ok_or(std::io::ErrorKind::Unsupported)?;
        Ok(MovedSocket {
            socket: fd.try_clone_to_owned()?.into(),
            unread: bytes::Bytes::copy_from_slice(unread),
        })
    };
    let sockets = side(client).and_then(|client| Ok((client, side(backend)?)));
    match sockets {
        Ok((client, backend)) => Ok(MovedTunnel {
            identity: identity.clone(),
            age,
            client,
            backend,
            state: MovedState::Inspected(saved),
            stopped_at: crate::tunnel::clock::monotonic_now(),
        }),
        Err(error) => Err((error, saved)),
    }
}

/// How long the direction still running gets once the other has ended:
/// [`END_GRACE`], or, while a close handshake is under way, time for it
/// (`close_timeout`) and then for the lingering close that reads its
/// source out ([`crate::tunnel::linger`], another `close_timeout`); each
/// pump keeps to those clocks itself, this only bounds one that cannot.
fn end_grace(shared: &Shared) -> Duration {
    let close_timeout = shared.settings.inspect.close_timeout;
    match shared.state().close_started {
        Some(_) => END_GRACE.max(close_timeout * 2),
        None => END_GRACE,
    }
}
