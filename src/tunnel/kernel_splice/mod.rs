//! The kernel splice (`kernel_splice = true` on a route): both sockets of
//! a plain tunnel go into a BPF sockmap whose stream verdict program sends
//! each socket's bytes out of its peer (`bpf`), so the bytes never enter
//! wsgate and no thread of wsgate wakes for them.
//!
//! A tunnel starts in user space ([`super::Splice`]): the bytes hyper read
//! past either handshake, and anything else already read, are written to
//! the peer first. Only when nothing is left to move does it enter the
//! kernel: the sockets leave tokio's reactor (whose wake-ups for every
//! arriving segment would cost what the splice saves) and are watched by an
//! epoll instance of their own for the end of their input and for errors
//! only, which the kernel's data-ready wake-ups do not trigger.
//!
//! The end of a direction is wsgate's to pass on, as in user space: when a
//! socket's input ends (its FIN), the bytes the program sent on from it may
//! still wait in the kernel's queue for the peer; once the peer's send
//! queue has all of them (the program counts what it sent on, the peer's
//! TCP counters say what was written to it), the peer's write side is shut
//! down. An error on either socket ends the tunnel.
//!
//! A kernel-spliced tunnel does not move at a binary upgrade: it stays in
//! the old process until it ends or that process's `shutdown_timeout`
//! passes, as a TLS tunnel does.

mod bpf;

use std::future::Future;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::Sleep;

use bpf::Maps;

/// Which side each index of a pair is, as [`super::Splice`] names it.
const SIDES: [&str; 2] = ["client", "backend"];

/// The first wait for the kernel to hand a direction's last bytes over,
/// doubled up to [`LONGEST_WAIT`]: usually the first look finds them gone;
/// a peer that reads slowly is looked at less often.
const FIRST_WAIT: Duration = Duration::from_millis(1);
const LONGEST_WAIT: Duration = Duration::from_millis(50);

/// Loaded once per process, at the first tunnel of a route that asks.
static MAPS: OnceLock<Option<Maps>> = OnceLock::new();

/// The maps and the program, or `None` when the kernel refused them (no
/// CAP_BPF and CAP_NET_ADMIN, a kernel without sockmap): then one warning,
/// once per process, says why, and kernel-splice routes splice in user
/// space.
pub fn available() -> bool {
    maps().is_some()
}

fn maps() -> Option<&'static Maps> {
    MAPS.get_or_init(|| match Maps::load() {
        Ok(maps) => {
            tracing::info!("kernel_splice: plain tunnels of routes that ask are spliced in the kernel");
            Some(maps)
        }
        Err(reason) => {
            tracing::warn!(%reason, "kernel_splice unavailable: those routes' tunnels are spliced in user space");
            None
        }
    })
    .as_ref()
}

/// A tunnel the kernel splices, from the moment both sockets are in the
/// maps until both directions have ended or one failed.
pub struct KernelSplice {
    /// Drops before the sockets: the epoll instance watching them.
    watch: AsyncFd<OwnedFd>,
    /// The client's socket and the backend's.
    ends: [End; 2],
    /// While a direction waits for its last bytes to reach the peer.
    wait: Option<(Pin<Box<Sleep>>, Duration)>,
    /// The backend's socket could not start once the client's bytes were
    /// already flowing: the tunnel ends with this.
    failed: Option<io::Error>,
}

/// What [`KernelSplice::enter`] set up: each socket's cookie and bytes
/// written so far, the watch, and a failure after bytes began to flow.
struct Entered {
    cookies: [u64; 2],
    written: [u64; 2],
    watch: AsyncFd<OwnedFd>,
    failed: Option<io::Error>,
}

struct End {
    socket: TcpStream,
    cookie: u64,
    /// What had been written to this socket when the kernel took over:
    /// the bytes sent on to it are counted from there.
    written_before: u64,
    input: Input,
    ended_at: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Input {
    Flowing,
    /// Ended: waiting for the kernel to hand its last bytes to the peer.
    Ending,
    /// Ended and passed on (the peer's write side shut down).
    Ended,
}

impl KernelSplice {
    /// Puts the two sockets into the maps. Both must be out of tokio's
    /// reactor, with everything read from either already written to the
    /// other. On an error before any byte went through the kernel, nothing
    /// is left in the maps and the sockets come back for the user-space
    /// splice; after, the splice ends at its first poll with the error.
    pub fn start(client: TcpStream, backend: TcpStream) -> Result<KernelSplice, (io::Error, TcpStream, TcpStream)> {
        let Some(maps) = maps() else {
            return Err((io::ErrorKind::Unsupported.into(), client, backend));
        };
        match Self::enter(maps, &client, &backend) {
            Ok(Entered {
                cookies,
                written,
                watch,
                failed,
            }) => {
                let end = |socket, cookie, written_before| End {
                    socket,
                    cookie,
                    written_before,
                    input: Input::Flowing,
                    ended_at: None,
                };
                Ok(KernelSplice {
                    watch,
                    ends: [
                        end(client, cookies[0], written[0]),
                        end(backend, cookies[1], written[1]),
                    ],
                    wait: None,
                    failed,
                })
            }
            Err(error) => Err((error, client, backend)),
        }
    }

    fn enter(maps: &Maps, client: &TcpStream, backend: &TcpStream) -> io::Result<Entered> {
        let cookies = [cookie(client.as_fd())?, cookie(backend.as_fd())?];
        // Nothing else writes to either socket now: stable counts.
        let written = [
            written(client.as_fd())?.ok_or(io::ErrorKind::WouldBlock)?,
            written(backend.as_fd())?.ok_or(io::ErrorKind::WouldBlock)?,
        ];
        let watch = watch([client.as_raw_fd(), backend.as_raw_fd()])?;
        let forget = || cookies.iter().for_each(|&c| maps.forget(c));
        let paired = maps
            .pair(cookies[0], backend.as_raw_fd())
            .and_then(|()| maps.pair(cookies[1], client.as_raw_fd()))
            .and_then(|()| maps.start(cookies[0], client.as_raw_fd()));
        if let Err(error) = paired {
            forget();
            return Err(error);
        }
        // The client's bytes may already be flowing: from here on, a
        // failure ends the tunnel rather than going back (the maps are
        // emptied when the splice is dropped).
        if let Err(error) = maps.start(cookies[1], backend.as_raw_fd()) {
            let failed = io::Error::new(error.kind(), format!("kernel splice: {error}"));
            return Ok(Entered {
                cookies,
                written,
                watch,
                failed: Some(failed),
            });
        }
        // Bytes that arrived before the program started wait in the receive
        // queues: setting SO_RCVLOWAT tells the socket its data is ready,
        // which runs the program on them.
        let kicked = set_rcvlowat(client.as_fd()).and_then(|()| set_rcvlowat(backend.as_fd()));
        Ok(Entered {
            cookies,
            written,
            watch,
            failed: kicked.err(),
        })
    }

    /// The bytes the kernel sent on from the client (`0`) or the backend
    /// (`1`).
    pub fn forwarded(&self, side: usize) -> u64 {
        maps().map_or(0, |maps| maps.forwarded(self.ends[side].cookie))
    }

    /// When the client's (`0`) or the backend's (`1`) input ended.
    pub fn ended_at(&self, side: usize) -> Option<Instant> {
        self.ends[side].ended_at
    }

    /// Until both directions have ended (`None`) or one failed: the error
    /// and the side whose connection it came from.
    pub fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<Option<(io::Error, &'static str)>> {
        if let Some(error) = self.failed.take() {
            return Poll::Ready(Some(self.failed(error, 1)));
        }
        loop {
            let mut waiting = false;
            for side in 0..2 {
                if self.ends[side].input != Input::Ending {
                    continue;
                }
                let peer = &self.ends[1 - side];
                let sent_on = maps().map_or(0, |maps| maps.forwarded(self.ends[side].cookie));
                let arrived = match written(peer.socket.as_fd()) {
                    Ok(Some(written)) => written.wrapping_sub(peer.written_before),
                    Ok(None) => {
                        waiting = true;
                        continue;
                    }
                    Err(error) => return Poll::Ready(Some(self.failed(error, 1 - side))),
                };
                if arrived < sent_on {
                    waiting = true;
                    continue;
                }
                // All of it is in the peer's send queue: pass the end on.
                if let Err(error) = peer.socket.shutdown(Shutdown::Write) {
                    return Poll::Ready(Some(self.failed(error, 1 - side)));
                }
                self.ends[side].input = Input::Ended;
            }
            if self.ends.iter().all(|end| end.input == Input::Ended) {
                return Poll::Ready(None);
            }
            if !waiting {
                self.wait = None;
            } else {
                let (sleep, period) = self
                    .wait
                    .get_or_insert_with(|| (Box::pin(tokio::time::sleep(FIRST_WAIT)), FIRST_WAIT));
                if sleep.as_mut().poll(cx).is_ready() {
                    *period = (*period * 2).min(LONGEST_WAIT);
                    let next = tokio::time::Instant::now() + *period;
                    sleep.as_mut().reset(next);
                    continue;
                }
            }
            let mut ready = match ready!(self.watch.poll_read_ready(cx)) {
                Ok(ready) => ready,
                Err(error) => return Poll::Ready(Some(self.failed(error, 1))),
            };
            let (events, n) = match wait_events(self.watch.get_ref().as_raw_fd()) {
                Ok(events) => events,
                Err(error) => return Poll::Ready(Some(self.failed(error, 1))),
            };
            if n == 0 {
                ready.clear_ready();
                continue;
            }
            for &(side, flags) in &events[..n] {
                if flags & libc::EPOLLERR as u32 != 0 {
                    if let Ok(Some(error)) = self.ends[side].socket.take_error() {
                        return Poll::Ready(Some(self.failed(error, side)));
                    }
                }
                if flags & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
                    && self.ends[side].input == Input::Flowing
                {
                    // Taking the socket's lock waits for the program's
                    // last run on it to finish: its count is final then.
                    let _ = written(self.ends[side].socket.as_fd());
                    self.ends[side].input = Input::Ending;
                    self.ends[side].ended_at = Some(Instant::now());
                }
            }
        }
    }

    fn failed(&mut self, error: io::Error, side: usize) -> (io::Error, &'static str) {
        self.ends[side].ended_at.get_or_insert_with(Instant::now);
        (error, SIDES[side])
    }
}

/// Out of the maps before the sockets close, however the tunnel ends.
impl Drop for KernelSplice {
    fn drop(&mut self) {
        if let Some(maps) = maps() {
            for end in &self.ends {
                maps.forget(end.cookie);
            }
        }
    }
}

/// The socket's cookie: the kernel's name for it, the maps' key.
fn cookie(socket: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` is a writable u64 and `len` says so.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// `tcpi_bytes_acked` in `struct tcp_info` (Linux 4.1 and later).
const TCPI_BYTES_ACKED: usize = 120;

/// The bytes written to the socket so far: acknowledged plus still queued
/// (`SIOCOUTQ`). `None` when acknowledgements kept arriving between the two
/// readings: ask again later.
fn written(socket: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    let acked = || -> io::Result<u64> {
        let mut info = [0u8; 256];
        let mut len = info.len() as libc::socklen_t;
        // SAFETY: `info` is writable for `len` bytes.
        let result = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                info.as_mut_ptr() as *mut libc::c_void,
                &mut len,
            )
        };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        if (len as usize) < TCPI_BYTES_ACKED + 8 {
            return Err(io::ErrorKind::Unsupported.into());
        }
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&info[TCPI_BYTES_ACKED..TCPI_BYTES_ACKED + 8]);
        Ok(u64::from_ne_bytes(bytes))
    };
    for _ in 0..4 {
        let before = acked()?;
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int.
        if unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut queued) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if acked()? == before {
            return Ok(Some(before + queued as u64));
        }
    }
    Ok(None)
}

fn set_rcvlowat(socket: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: SO_RCVLOWAT takes one int.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An epoll instance watching the two sockets for the end of their input
/// and errors (always reported), edge-triggered: the kernel's data-ready
/// wake-ups carry `EPOLLIN`, which it does not ask for, so they pass it by.
fn watch(sockets: [RawFd; 2]) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: plain system call; the descriptor is owned below.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
    for (side, socket) in sockets.into_iter().enumerate() {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: side as u64,
        };
        // SAFETY: both descriptors are open; `event` is valid.
        if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, socket, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: the AsyncFd owns the descriptor: it stays open, and the same,
    // as long as the registration.
    unsafe { AsyncFd::register_with_interest(epoll, Interest::READABLE) }.map_err(io::Error::from)
}

/// The events waiting on the watch, without blocking: (side, flags), and
/// how many there are.
fn wait_events(epoll: RawFd) -> io::Result<([(usize, u32); 2], usize)> {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
    // SAFETY: `events` has room for the 2 asked for.
    let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), 2, 0) };
    if n < 0 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::Interrupted {
            return Ok(([(0, 0); 2], 0));
        }
        return Err(error);
    }
    let at = |i: usize| ((events[i].u64 as usize).min(1), events[i].events);
    Ok(([at(0), at(1)], n as usize))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// A connected loopback pair: (the far end, the end wsgate holds).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let far = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (near, _) = listener.accept().unwrap();
        near.set_nonblocking(true).unwrap();
        far.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (far, near)
    }

    fn read_exactly(socket: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        socket.read_exact(&mut got).unwrap();
        got
    }

    /// Needs CAP_BPF and CAP_NET_ADMIN: the tests run as root (as CI does).
    #[tokio::test]
    async fn bytes_cross_both_ways_and_each_end_is_passed_on() {
        let (mut client, client_near) = pair();
        let (mut backend, backend_near) = pair();
        // Sent before the splice starts: still in the receive queue.
        client.write_all(b"early").unwrap();
        let mut splice = match KernelSplice::start(client_near, backend_near) {
            Ok(splice) => splice,
            Err((error, ..)) => panic!("kernel splice unavailable (run as root): {error}"),
        };
        assert_eq!(read_exactly(&mut backend, 5), b"early");
        let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let writer = {
            let mut client = client.try_clone().unwrap();
            let big = big.clone();
            std::thread::spawn(move || {
                client.write_all(&big).unwrap();
                client.shutdown(Shutdown::Write).unwrap();
            })
        };
        let reader = std::thread::spawn(move || {
            let got = read_exactly(&mut backend, 1 << 20);
            let mut rest = Vec::new();
            // The client's FIN arrives as the end of the backend's input.
            backend.read_to_end(&mut rest).unwrap();
            backend.write_all(b"reply after the half-close").unwrap();
            backend.shutdown(Shutdown::Write).unwrap();
            (got, rest)
        });
        let ended = tokio::time::timeout(Duration::from_secs(10), std::future::poll_fn(|cx| splice.poll_end(cx)))
            .await
            .expect("both directions end");
        assert!(ended.is_none(), "{ended:?}");
        writer.join().unwrap();
        let (got, rest) = reader.join().unwrap();
        assert!(got == big && rest.is_empty());
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).unwrap();
        assert_eq!(reply, b"reply after the half-close");
        assert_eq!(splice.forwarded(0), 5 + (1 << 20));
        assert_eq!(splice.forwarded(1), 26);
    }
}
