//! Splice threads: busy plain tunnels copied straight from an `epoll` loop.
//!
//! On tokio's workers each message of a plain tunnel pays for the runtime's
//! dispatch of a readiness event, a task's wake-up and scheduling, and the
//! readiness checks around each read and write: about 3,400 of the 3,900
//! user-space instructions of a 128 B round trip. Once a plain TCP tunnel
//! has carried [`BUSY_AFTER`] bytes, its two sockets leave tokio's driver
//! and join the `epoll` set of one of a few threads of wsgate's own
//! (`[global] splice_threads`), which read a socket into the thread's
//! buffer and write its peer at once, as nginx's workers do. A short-lived
//! tunnel (a reconnect storm's) ends before it would move, so handshakes
//! pay nothing for the threads, and an idle one stays where it is.
//!
//! The tunnel's task stays, asleep, with what the tunnel holds (its permit,
//! its connection slot, its server's count), until the thread says the
//! tunnel ended, or until a binary upgrade asks for it: the thread then
//! gives the sockets back, and the task moves the tunnel as any splice.
//!
//! A thread's tunnels are under one lock, taken for each batch of events:
//! a task that adds a tunnel or takes one back waits for the batch, so a
//! tunnel never ends, or is read, halfway through either.
//!
//! An inspected tunnel comes too, its frames [followed](follow) on the
//! thread: data frames go across, and anything else its pumps must see
//! sends it back to its task.

pub mod follow;
pub mod wanted;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::task::AtomicWaker;

use super::copy::Copy;
use super::halves::Side;
use super::relocate::moved::CopyState;
use super::relocate::Ticket;
use super::{report, Splice};
use crate::sync::lock;
use crate::telemetry::metrics::ON_SPLICE_THREADS;
use crate::telemetry::TunnelMetrics;
use follow::Step;
pub use follow::{Counts, Following, HELD_MAX};
pub use wanted::{set_threads, BUSY_AFTER};

/// A thread reads into one buffer of this size for all its tunnels.
const BUFFER_SIZE: usize = 64 * 1024;

/// Events taken from the kernel at once.
const EVENTS: usize = 256;

/// Reads of one direction in a turn: a peer that sends as fast as the
/// thread copies would otherwise keep the thread from its other tunnels.
/// One with more to read is taken up again after the turn's other events.
const READS_PER_TURN: u32 = 16;

/// The sides of a tunnel, as indexes; the upstream direction reads the
/// client, the downstream the backend: direction `d` reads socket `d` and
/// writes socket `1 - d`.
const SIDE_NAMES: [&str; 2] = ["client", "backend"];

/// The threads started so far; never fewer than were ever wanted (a reload
/// that lowers the count only stops new tunnels going to the others).
static THREADS: Mutex<Vec<Arc<SpliceThread>>> = Mutex::new(Vec::new());

/// Which thread the next tunnel goes to.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// One thread and the tunnels in its `epoll` set.
struct SpliceThread {
    epoll: OwnedFd,
    tunnels: Mutex<Tunnels>,
}

/// A thread's tunnels, by index; an index's generation tells an event for
/// a tunnel that has gone from one for the tunnel now at its place.
#[derive(Default)]
struct Tunnels {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    entry: Option<Entry>,
}

/// Where a tunnel is on its thread: what an `epoll` event carries (with
/// the side in the low bit) and what its task asks for it back by.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    index: u32,
    generation: u32,
}

impl Key {
    const GENERATIONS: u32 = 0x7fff_ffff;

    fn event_data(self, side: usize) -> u64 {
        (u64::from(self.index) << 32) | (u64::from(self.generation & Self::GENERATIONS) << 1) | side as u64
    }

    fn of_event(data: u64) -> (Key, usize) {
        let key = Key {
            index: (data >> 32) as u32,
            generation: ((data >> 1) as u32) & Self::GENERATIONS,
        };
        (key, (data & 1) as usize)
    }
}

/// A tunnel on a thread.
struct Entry {
    /// Client, backend.
    sockets: [TcpStream; 2],
    /// Upstream, downstream.
    directions: [Direction; 2],
    /// The kernel said a socket's stream ended (or failed): it is read
    /// until a read says which, not only until a read comes back short.
    hung_up: [bool; 2],
    /// An inspected tunnel's frame readers.
    following: Option<Box<Following>>,
    end: Arc<End>,
}

/// One direction of a tunnel on a thread, as [`Copy`] on tokio's.
#[derive(Default)]
struct Direction {
    /// What a write that would block left: the direction reads no more
    /// until its peer's socket takes it. Empty (no allocation) otherwise.
    unwritten: Vec<u8>,
    /// The source may have bytes (an edge seen and not yet read dry).
    readable: bool,
    source_ended: bool,
    done: bool,
    bytes: u64,
    ended_at: Option<Instant>,
}

impl Direction {
    fn from_state(state: CopyState, now: Instant) -> Direction {
        Direction {
            unwritten: state.unwritten,
            readable: false,
            source_ended: state.source_ended,
            done: state.done,
            bytes: state.bytes,
            ended_at: state.ended_ago.map(|ago| now.checked_sub(ago).unwrap_or(now)),
        }
    }

    fn into_state(self) -> CopyState {
        CopyState {
            unwritten: self.unwritten,
            source_ended: self.source_ended,
            done: self.done,
            bytes: self.bytes,
            ended_ago: self.ended_at.map(|at| at.elapsed()),
        }
    }
}

/// A tunnel's end, as its thread tells its task.
#[derive(Default)]
struct End {
    task: AtomicWaker,
    outcome: Mutex<Option<Outcome>>,
}

enum Outcome {
    /// A plain tunnel ended: what [`report`] needs.
    Ended {
        bytes: [u64; 2],
        ended_at: [Option<Instant>; 2],
        error: Option<(io::Error, &'static str)>,
    },
    /// An inspected tunnel goes back to its task.
    Back(Box<Back>),
}

/// Why a direction stopped its tunnel.
enum Halt {
    /// A plain tunnel's socket failed (its side named).
    Failed(io::Error, &'static str),
    /// An inspected tunnel must go back to its task.
    Back(Box<Going>),
}

/// What an inspected tunnel takes back beside its sockets and readers.
struct Going {
    /// The direction that read `unread`.
    from: usize,
    unread: Vec<u8>,
    /// A socket failed: its side, and the error, for the tunnel to record
    /// as its pump would have.
    error: Option<(usize, io::Error)>,
}

/// An inspected tunnel back from its thread.
pub struct Back {
    /// Client, backend.
    pub sockets: [TcpStream; 2],
    /// Per side: bytes read from it and not yet followed, to go in front
    /// of its next read.
    pub unread: [Vec<u8>; 2],
    /// Per side: bytes read from it, followed, and not yet written to the
    /// other side: they go first.
    pub unwritten: [Vec<u8>; 2],
    pub following: Box<Following>,
    /// A socket failed (its side, 0 the client).
    pub error: Option<(usize, io::Error)>,
}

impl Back {
    fn new(parts: Parts, following: Box<Following>, going: Option<Going>) -> Back {
        let Parts {
            sockets,
            states: [upstream, downstream],
        } = parts;
        let mut unread = [Vec::new(), Vec::new()];
        let mut error = None;
        if let Some(going) = going {
            unread[going.from] = going.unread;
            error = going.error;
        }
        Back {
            sockets,
            unread,
            unwritten: [upstream.unwritten, downstream.unwritten],
            following,
            error,
        }
    }
}

/// A tunnel a thread could not take, and why.
type NotAdded = Box<(io::Error, Parts, Option<Box<Following>>)>;

/// What a tunnel's sockets and directions are, between tokio and a thread.
struct Parts {
    sockets: [TcpStream; 2],
    states: [CopyState; 2],
}

impl SpliceThread {
    fn start(number: usize) -> io::Result<Arc<SpliceThread>> {
        // SAFETY: a plain system call; its result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let thread = Arc::new(SpliceThread {
            // SAFETY: `fd` was just created and is owned by nothing else.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            tunnels: Mutex::default(),
        });
        let running = thread.clone();
        std::thread::Builder::new()
            .name(format!("wsgate-splice-{number}"))
            .spawn(move || running.run())?;
        Ok(thread)
    }

    fn control(&self, op: libc::c_int, socket: &TcpStream, data: u64) -> io::Result<()> {
        control(&self.epoll, op, socket, data)
    }

    /// Adds a tunnel, under the batch lock: its first events are taken
    /// after both sockets are in (the kernel reports what is ready at once).
    fn add(&self, parts: Parts, following: Option<Box<Following>>, end: Arc<End>) -> Result<Key, NotAdded> {
        let mut tunnels = lock(&self.tunnels);
        let index = match tunnels.free.pop() {
            Some(index) => index,
            None => {
                tunnels.slots.push(Slot::default());
                (tunnels.slots.len() - 1) as u32
            }
        };
        let key = Key {
            index,
            generation: tunnels.slots[index as usize].generation,
        };
        let added = self.control(libc::EPOLL_CTL_ADD, &parts.sockets[0], key.event_data(0));
        let added = added.and_then(|()| {
            self.control(libc::EPOLL_CTL_ADD, &parts.sockets[1], key.event_data(1))
                .inspect_err(|_| {
                    let _ = self.control(libc::EPOLL_CTL_DEL, &parts.sockets[0], 0);
                })
        });
        if let Err(error) = added {
            tunnels.free.push(index);
            return Err(Box::new((error, parts, following)));
        }
        let now = Instant::now();
        let [upstream, downstream] = parts.states;
        tunnels.slots[index as usize].entry = Some(Entry {
            sockets: parts.sockets,
            directions: [
                Direction::from_state(upstream, now),
                Direction::from_state(downstream, now),
            ],
            hung_up: [false; 2],
            following,
            end,
        });
        ON_SPLICE_THREADS.fetch_add(1, Ordering::Relaxed);
        Ok(key)
    }

    /// The tunnel at `key`, out of the thread's set; none if it has ended
    /// (or gone back).
    fn take_back(&self, key: Key) -> Option<(Parts, Option<Box<Following>>)> {
        let mut tunnels = lock(&self.tunnels);
        Some(tunnels.remove(key)?.leave(&self.epoll))
    }

    fn run(&self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        let mut buffer = vec![0; BUFFER_SIZE].into_boxed_slice();
        // Sockets left with bytes to read at the end of their turn: no new
        // edge will come for those (the kernel's events are edge-triggered).
        let mut again: Vec<u64> = Vec::new();
        loop {
            let wait_ms = if again.is_empty() { -1 } else { 0 };
            // SAFETY: `events` has room for the `EVENTS` the kernel may write.
            let ready =
                unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), EVENTS as i32, wait_ms) };
            let Ok(ready) = usize::try_from(ready) else {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // Nothing else can fail on a valid set and buffer.
                tracing::error!(%error, "splice thread stopped");
                return;
            };
            let mut tunnels = lock(&self.tunnels);
            let retries = std::mem::take(&mut again);
            let taken = retries
                .iter()
                .map(|&data| (data, 0))
                .chain(events[..ready].iter().map(|event| (event.u64, event.events)));
            for (data, flags) in taken {
                let (key, side) = Key::of_event(data);
                if tunnels.on_event(&self.epoll, key, side, flags, &mut buffer) {
                    again.push(data);
                }
            }
        }
    }
}

impl Tunnels {
    fn remove(&mut self, key: Key) -> Option<Entry> {
        let slot = self.slots.get_mut(key.index as usize)?;
        if slot.generation & Key::GENERATIONS != key.generation || slot.entry.is_none() {
            return None;
        }
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(key.index);
        ON_SPLICE_THREADS.fetch_sub(1, Ordering::Relaxed);
        slot.entry.take()
    }

    /// Runs the two directions of socket `side`'s tunnel; `flags` are the
    /// kernel's for it (none for a socket taken up again). True when the
    /// socket has more to read after its turn.
    fn on_event(&mut self, epoll: &OwnedFd, key: Key, side: usize, flags: u32, buffer: &mut [u8]) -> bool {
        let Some(slot) = self.slots.get_mut(key.index as usize) else {
            return false;
        };
        // An event taken before its tunnel went (or was taken back).
        if slot.generation & Key::GENERATIONS != key.generation {
            return false;
        }
        let Some(entry) = &mut slot.entry else {
            return false;
        };
        let flags = flags as libc::c_int;
        if flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) != 0 {
            entry.directions[side].readable = true;
        }
        if flags & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) != 0 {
            entry.hung_up[side] = true;
        }
        // The direction that reads this socket, then the one that writes
        // it (and reads the other, which it may have held up).
        let pumped = entry
            .pump(side, buffer)
            .and_then(|more| Ok(entry.pump(1 - side, buffer)? | more));
        let error = match pumped {
            Ok(more) if !entry.directions.iter().all(|direction| direction.done) => return more,
            Ok(_) => None,
            Err(Halt::Failed(error, side)) => Some((error, side)),
            Err(Halt::Back(back)) => {
                if let Some(entry) = self.remove(key) {
                    entry.go_back(epoll, *back);
                }
                return false;
            }
        };
        if let Some(entry) = self.remove(key) {
            entry.finish(error);
        }
        false
    }
}

impl Entry {
    /// Moves direction `d`'s bytes until its source would block, its
    /// destination would, it is done, or its turn is over (true: its source
    /// has more).
    fn pump(&mut self, d: usize, buffer: &mut [u8]) -> Result<bool, Halt> {
        let result = self.pump_inner(d, buffer);
        if matches!(result, Err(Halt::Failed(..))) {
            self.directions[d].ended_at.get_or_insert_with(Instant::now);
        }
        result
    }

    fn pump_inner(&mut self, d: usize, buffer: &mut [u8]) -> Result<bool, Halt> {
        let (source, destination) = (d, 1 - d);
        let other_done = self.directions[1 - d].done;
        let direction = &mut self.directions[d];
        let mut from = &self.sockets[source];
        let mut to = &self.sockets[destination];
        let following = &mut self.following;
        // A plain tunnel's failure names its side; an inspected one goes
        // back to its task, which records it as its pump would.
        let failed = |error: io::Error, side: usize, inspected: bool| match inspected {
            false => Halt::Failed(error, SIDE_NAMES[side]),
            true => Halt::Back(Box::new(Going {
                from: d,
                unread: Vec::new(),
                error: Some((side, error)),
            })),
        };
        let inspected = following.is_some();
        if direction.done {
            return Ok(false);
        }
        let mut reads = 0;
        loop {
            if !direction.unwritten.is_empty() {
                let written =
                    write_now(&mut to, &direction.unwritten).map_err(|e| failed(e, destination, inspected))?;
                if written < direction.unwritten.len() {
                    direction.unwritten.drain(..written);
                    return Ok(false);
                }
                direction.unwritten = Vec::new();
            }
            if direction.source_ended {
                direction.done = true;
                // Both ended: closing the sockets (the tunnel's end) sends
                // the FIN a shutdown would.
                if !other_done {
                    to.shutdown(Shutdown::Write)
                        .map_err(|e| failed(e, destination, inspected))?;
                }
                return Ok(false);
            }
            if !direction.readable {
                return Ok(false);
            }
            if reads == READS_PER_TURN {
                return Ok(true);
            }
            reads += 1;
            // An inspected direction reads behind the header it held
            // (a header's 2 to 14 bytes, less than `HELD_MAX`).
            let (room, held) = match following.as_ref() {
                Some(following) => {
                    let held = following.held(d);
                    buffer[HELD_MAX - held.len()..HELD_MAX].copy_from_slice(held);
                    (HELD_MAX, held.len())
                }
                None => (0, 0),
            };
            match from.read(&mut buffer[room..]) {
                // The end of an inspected side's stream is its pump's to
                // pass on (a read after it reads it again).
                Ok(0) if inspected => {
                    return Err(Halt::Back(Box::new(Going {
                        from: d,
                        unread: Vec::new(),
                        error: None,
                    })))
                }
                Ok(0) => {
                    direction.source_ended = true;
                    direction.ended_at.get_or_insert_with(Instant::now);
                }
                Ok(n) => {
                    direction.bytes += n as u64;
                    // A short read emptied the socket (as tokio takes it):
                    // the next bytes are a new edge.
                    if n < buffer.len() - room && !self.hung_up[source] {
                        direction.readable = false;
                    }
                    let bytes = &buffer[room - held..room + n];
                    let (across, back) = match following.as_mut().map(|following| following.follow(d, bytes)) {
                        None => (bytes.len(), false),
                        Some(Step::Across(across)) => (across, false),
                        Some(Step::Back(across)) => (across, true),
                    };
                    let written =
                        write_now(&mut to, &bytes[..across]).map_err(|e| failed(e, destination, inspected))?;
                    if written < across {
                        direction.unwritten = bytes[written..across].to_vec();
                    }
                    if back {
                        return Err(Halt::Back(Box::new(Going {
                            from: d,
                            unread: bytes[across..].to_vec(),
                            error: None,
                        })));
                    }
                    if written < across {
                        return Ok(false);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    direction.readable = false;
                    return Ok(false);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(failed(error, source, inspected)),
            }
        }
    }

    /// Out of the thread's set, as its task takes it up again.
    fn leave(self, epoll: &OwnedFd) -> (Parts, Option<Box<Following>>) {
        for socket in &self.sockets {
            let _ = control(epoll, libc::EPOLL_CTL_DEL, socket, 0);
        }
        let [upstream, downstream] = self.directions;
        let parts = Parts {
            sockets: self.sockets,
            states: [upstream.into_state(), downstream.into_state()],
        };
        (parts, self.following)
    }

    /// An inspected tunnel goes back to its task.
    fn go_back(self, epoll: &OwnedFd, going: Going) {
        let end = self.end.clone();
        let (parts, following) = self.leave(epoll);
        let Some(following) = following else {
            unreachable!("only an inspected tunnel goes back");
        };
        let back = Back::new(parts, following, Some(going));
        *lock(&end.outcome) = Some(Outcome::Back(Box::new(back)));
        end.task.wake();
    }

    /// The tunnel ended on its thread: its sockets close, and its task
    /// learns how it went.
    fn finish(self, error: Option<(io::Error, &'static str)>) {
        let Entry {
            sockets,
            directions,
            end,
            ..
        } = self;
        drop(sockets);
        let outcome = Outcome::Ended {
            bytes: [directions[0].bytes, directions[1].bytes],
            ended_at: [directions[0].ended_at, directions[1].ended_at],
            error,
        };
        *lock(&end.outcome) = Some(outcome);
        end.task.wake();
    }
}

/// Writes what the socket takes now: 0 when it would block.
fn write_now(to: &mut &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    // Nothing (a followed read that all went back, or was held): a write
    // of none would say 0, as a closed socket does.
    if bytes.is_empty() {
        return Ok(0);
    }
    loop {
        match to.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => return Ok(n),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

/// Where [`Splice::into_thread`] left a splice.
pub enum ToThread {
    Went(Box<Threaded>),
    /// It could not go, and stays on tokio.
    Stayed(Box<Splice>),
    /// A socket was lost on the way: the tunnel ended (and was reported).
    Ended,
}

/// A plain tunnel on a splice thread, seen from its task: what it needs to
/// report the tunnel's end, or to take it back and move it.
pub struct Threaded {
    thread: Arc<SpliceThread>,
    key: Key,
    end: Arc<End>,
    /// Until the tunnel has ended, or gone back to a splice.
    tunnel: Option<Held>,
}

struct Held {
    metrics: TunnelMetrics,
    identity: Box<super::Identity>,
    started: Instant,
    ticket: Option<Ticket>,
}

impl Splice {
    /// Whether the splice should go to a splice thread now: threads are
    /// wanted, it has carried [`BUSY_AFTER`] bytes, both sides are plain
    /// unpaced TCP with nothing left of what was read behind their
    /// handshakes, and both directions are between reads and open.
    pub fn wants_thread(&self) -> bool {
        self.upstream.bytes + self.downstream.bytes >= BUSY_AFTER
            && self.wakes.is_some()
            && wanted::threads_wanted()
            && self.upstream.is_between_reads()
            && self.downstream.is_between_reads()
            && matches!(&self.client, Side::Tcp(tcp) if tcp.prefix().is_empty())
            && matches!(&self.backend, Side::Tcp(tcp) if tcp.prefix().is_empty())
    }

    /// Hands the splice to a splice thread. A splice that cannot go stays
    /// on tokio for good (and is never asked again).
    pub fn into_thread(self) -> ToThread {
        let Splice {
            client,
            backend,
            upstream,
            downstream,
            metrics,
            identity,
            started,
            ticket,
            ..
        } = self;
        let (Side::Tcp(client), Side::Tcp(backend)) = (client, backend) else {
            unreachable!("wants_thread checked both sides are plain TCP");
        };
        let states = [upstream.save(), downstream.save()];
        drop((upstream, downstream));
        // A socket that cannot leave tokio's driver is lost with it (tokio
        // gives it no way back): the tunnel ends there.
        let sockets = match client.into_parts().1.into_std() {
            Err(error) => Err((error, "client")),
            Ok(client) => match backend.into_parts().1.into_std() {
                Err(error) => Err((error, "backend")),
                Ok(backend) => Ok([client, backend]),
            },
        };
        let sockets = match sockets {
            Ok(sockets) => sockets,
            Err(error) => {
                let bytes = [states[0].bytes, states[1].bytes];
                report(&identity, &metrics, started, bytes, [None, None], Some(error));
                return ToThread::Ended;
            }
        };
        let parts = Parts { sockets, states };
        let added = match pick() {
            Ok(thread) => {
                let end = Arc::new(End::default());
                thread.add(parts, None, end.clone()).map(|key| (thread, key, end))
            }
            Err(error) => Err(Box::new((error, parts, None))),
        };
        match added {
            Ok((thread, key, end)) => ToThread::Went(Box::new(Threaded {
                thread,
                key,
                end,
                tunnel: Some(Held {
                    metrics,
                    identity,
                    started,
                    ticket,
                }),
            })),
            Err(failed) => {
                let (error, parts, _) = *failed;
                tracing::warn!(%error, "tunnel cannot move to a splice thread: it stays");
                let mut splice = Splice::from_parts(parts, metrics, identity, started, ticket);
                splice.wakes = None;
                ToThread::Stayed(Box::new(splice))
            }
        }
    }

    fn from_parts(
        parts: Parts,
        metrics: TunnelMetrics,
        identity: Box<super::Identity>,
        started: Instant,
        ticket: Option<Ticket>,
    ) -> Splice {
        let [client, backend] = parts.sockets;
        let [upstream, downstream] = parts.states;
        let side = |socket: TcpStream| Side::from_thread(socket, Vec::new());
        let mut splice = Splice::resume(
            side(client),
            side(backend),
            (Copy::restore(upstream), Copy::restore(downstream)),
            metrics,
            identity,
            started.elapsed(),
        );
        splice.started = started;
        splice.ticket = ticket;
        splice
    }
}

/// The thread the next busy tunnel goes to, started if it is not yet.
fn pick() -> io::Result<Arc<SpliceThread>> {
    let wanted = wanted::threads();
    if wanted == 0 {
        return Err(io::Error::other("no splice threads are configured"));
    }
    let mut threads = lock(&THREADS);
    while threads.len() < wanted {
        let number = threads.len();
        threads.push(SpliceThread::start(number)?);
    }
    Ok(threads[NEXT.fetch_add(1, Ordering::Relaxed) % wanted].clone())
}

impl Threaded {
    /// Ready when the tunnel ended on its thread (reported then), or with
    /// the splice taken back from the thread because a binary upgrade asks
    /// for the tunnel: the splice then moves it.
    pub fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<Option<Splice>> {
        self.end.task.register(cx.waker());
        let Some(held) = &mut self.tunnel else {
            return Poll::Pending;
        };
        if let Some(outcome) = lock(&self.end.outcome).take() {
            if let Outcome::Ended { bytes, ended_at, error } = outcome {
                report(&held.identity, &held.metrics, held.started, bytes, ended_at, error);
            }
            self.tunnel = None;
            return Poll::Ready(None);
        }
        let asked = held
            .ticket
            .as_mut()
            .is_some_and(|ticket| ticket.poll_asked(cx).is_ready());
        if !asked {
            return Poll::Pending;
        }
        match self.thread.take_back(self.key) {
            Some((parts, _)) => {
                let Some(Held {
                    metrics,
                    identity,
                    started,
                    ticket,
                }) = self.tunnel.take()
                else {
                    unreachable!("held above");
                };
                Poll::Ready(Some(Splice::from_parts(parts, metrics, identity, started, ticket)))
            }
            // It ended meanwhile: its outcome is there already (set under
            // the lock that the take-back waited for).
            None => self.poll_end(cx),
        }
    }
}

impl Drop for Threaded {
    /// A task dropped before its tunnel ended (its runtime going away)
    /// closes the tunnel, as dropping a splice would.
    fn drop(&mut self) {
        drop(self.thread.take_back(self.key));
    }
}

/// An inspected tunnel on a splice thread, seen from its task.
pub struct OnThread {
    thread: Arc<SpliceThread>,
    key: Key,
    end: Arc<End>,
}

/// Hands an inspected tunnel to a splice thread: its sockets (client,
/// backend), out of tokio's driver, and its frame readers. Back at once
/// if it cannot go.
pub fn follow_on_thread(sockets: [TcpStream; 2], following: Box<Following>) -> Result<OnThread, Box<Back>> {
    let parts = Parts {
        sockets,
        states: Default::default(),
    };
    let added = match pick() {
        Ok(thread) => {
            let end = Arc::new(End::default());
            thread
                .add(parts, Some(following), end.clone())
                .map(|key| OnThread { thread, key, end })
        }
        Err(error) => Err(Box::new((error, parts, Some(following)))),
    };
    added.map_err(|failed| {
        let (error, parts, following) = *failed;
        tracing::warn!(%error, "tunnel cannot move to a splice thread: it stays");
        let Some(following) = following else {
            unreachable!("given above");
        };
        Box::new(Back::new(parts, following, None))
    })
}

impl OnThread {
    /// Ready once the thread sent the tunnel back.
    pub fn poll_back(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.end.task.register(cx.waker());
        match lock(&self.end.outcome).is_some() {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }

    /// The tunnel, out of its thread: taken out of the thread's set, or as
    /// the thread sent it back.
    pub fn take_back(&mut self) -> Box<Back> {
        if let Some((parts, Some(following))) = self.thread.take_back(self.key) {
            return Box::new(Back::new(parts, following, None));
        }
        // Gone back already: the outcome was set under the lock the
        // take-back waited for.
        match lock(&self.end.outcome).take() {
            Some(Outcome::Back(back)) => back,
            _ => unreachable!("an inspected tunnel leaves its thread only to go back"),
        }
    }
}

impl Drop for OnThread {
    /// A task dropped with its tunnel on a thread closes the tunnel.
    fn drop(&mut self) {
        drop(self.thread.take_back(self.key));
    }
}

fn control(epoll: &OwnedFd, op: libc::c_int, socket: &TcpStream, data: u64) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
        u64: data,
    };
    // SAFETY: both descriptors are open for the call; `event` lives
    // through it (and is ignored by EPOLL_CTL_DEL).
    let done = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, socket.as_raw_fd(), &mut event) };
    match done {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}
