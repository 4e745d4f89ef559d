//! The two sides of a tunnel, and each side's two halves.
//!
//! hyper hands an upgraded connection back as one boxed stream. A plain TCP
//! connection is taken back out of the box (`Upgraded::downcast`, beside
//! the code that put it in: `crate::proxy::connection`); the bytes hyper had
//! already read past the handshake are read first. A [`Side`] is
//! then used whole: a plain splice drives both directions from one task, so
//! it needs neither a split nor a lock, whatever the stream. The inspected
//! pumps run in tasks of their own and take a side apart ([`Side::split`]):
//! TCP into owned halves that need no lock, any other stream (TLS, whose two
//! directions share one session) behind tokio's locked split.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::pace::Paced;
use crate::config::SocketRate;
use crate::upstream::BackendStream;

/// Any upgraded stream that is not plain TCP.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A stream that is not plain TCP, boxed.
pub type Shared = Box<dyn Stream>;

/// One side of a tunnel, whole.
pub enum Side {
    Tcp(Prefixed<TcpStream>),
    /// A client's TCP connection read no faster than its route allows
    /// ([`super::pace`]); still plain TCP, so it splits without a lock and
    /// can move at a binary upgrade.
    PacedTcp(Box<Paced<Prefixed<TcpStream>>>),
    Other(Shared),
}

/// The backend's side: plain TCP, or TLS toward a `wss` upstream; `rest`
/// is what the backend sent right behind its 101.
pub fn backend(stream: BackendStream, rest: Bytes) -> Side {
    match stream {
        Either::Left(stream) => Side::Tcp(Prefixed::new(rest, stream)),
        Either::Right(tls) => Side::Other(Box::new(Prefixed::new(rest, tls))),
    }
}

impl Side {
    /// This side read no faster than `rate`; unchanged without one. Only
    /// paced tunnels pay for the pacing: a plain tunnel's splice is no
    /// larger for it.
    pub fn paced(self, rate: Option<SocketRate>) -> Side {
        match (self, rate) {
            (side, None) => side,
            (Side::Tcp(io), Some(rate)) => Side::PacedTcp(Box::new(Paced::new(io, rate))),
            (side, Some(rate)) => Side::Other(Box::new(Paced::new(side, rate))),
        }
    }

    /// A plain TCP socket back from a splice thread, on tokio's driver
    /// again, `unread` to be read first.
    pub fn from_thread(socket: std::net::TcpStream, unread: Vec<u8>) -> Side {
        // Registering with tokio's driver again fails only without a
        // runtime, and a tunnel's task runs on one.
        let socket = TcpStream::from_std(socket).expect("a tunnel's task runs on tokio");
        Side::Tcp(Prefixed::holding(Bytes::from(unread), socket))
    }

    /// Plain TCP (paced or not): nothing to say before a close but its FIN.
    pub fn is_tcp(&self) -> bool {
        matches!(self, Side::Tcp(_) | Side::PacedTcp(_))
    }

    /// The reading and the writing half, for pumps in separate tasks.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Side::Tcp(Prefixed { prefix, io }) => {
                let (read, write) = io.into_split();
                (ReadHalf::Tcp(Prefixed { prefix, io: read }), WriteHalf::Tcp(write))
            }
            Side::PacedTcp(paced) => {
                let mut write = None;
                let read = paced.map_io(|Prefixed { prefix, io }| {
                    let (read, half) = io.into_split();
                    write = Some(half);
                    Prefixed { prefix, io: read }
                });
                // `map_io` called the closure: the write half is there.
                let write = write.expect("split");
                (ReadHalf::PacedTcp(Box::new(read)), WriteHalf::Tcp(write))
            }
            Side::Other(stream) => {
                let (read, write) = tokio::io::split(stream);
                (ReadHalf::Shared(read), WriteHalf::Shared(write))
            }
        }
    }
}

/// A plain TCP side's two halves as one socket again, out of tokio's
/// driver, for a splice thread ([`super::splice_thread`]); the halves back
/// when they are not plain unpaced TCP with every byte of a first read
/// handed out. An error: the socket could not leave tokio's driver, and
/// is lost with it.
#[allow(clippy::result_large_err, reason = "the halves come back whole, once per tunnel")]
pub fn rejoin(read: ReadHalf, write: WriteHalf) -> Result<io::Result<std::net::TcpStream>, (ReadHalf, WriteHalf)> {
    match (read, write) {
        (ReadHalf::Tcp(read), WriteHalf::Tcp(write)) if read.prefix().is_empty() => {
            let (_, read) = read.into_parts();
            match read.reunite(write) {
                Ok(stream) => Ok(stream.into_std()),
                Err(halves) => Err((
                    ReadHalf::Tcp(Prefixed::holding(Bytes::new(), halves.0)),
                    WriteHalf::Tcp(halves.1),
                )),
            }
        }
        halves => Err(halves),
    }
}

/// A side whose connection can be handed to another process
/// ([`super::relocate`]): a plain TCP socket, with the bytes read from it
/// before the tunnel started that are still to be handed out.
pub trait Movable {
    fn movable(&self) -> Option<(BorrowedFd<'_>, &[u8])>;
}

impl Movable for Side {
    fn movable(&self) -> Option<(BorrowedFd<'_>, &[u8])> {
        match self {
            Side::Tcp(tcp) => Some((tcp.io.as_fd(), tcp.prefix())),
            Side::PacedTcp(paced) => Some((paced.get_ref().io.as_fd(), paced.get_ref().prefix())),
            Side::Other(_) => None,
        }
    }
}

impl Movable for ReadHalf {
    fn movable(&self) -> Option<(BorrowedFd<'_>, &[u8])> {
        match self {
            ReadHalf::Tcp(tcp) => Some((tcp.io.as_ref().as_fd(), tcp.prefix())),
            ReadHalf::PacedTcp(paced) => Some((paced.get_ref().io.as_ref().as_fd(), paced.get_ref().prefix())),
            ReadHalf::Shared(_) => None,
        }
    }
}

/// A writing half let go of once its socket moved to another process.
pub trait LetGo {
    /// Closes this process's copy without shutting the connection down:
    /// tokio's TCP write half sends a FIN when dropped, which would end
    /// the connection the other process now serves.
    fn let_go(self);
}

impl LetGo for WriteHalf {
    fn let_go(self) {
        match self {
            WriteHalf::Tcp(write) => write.forget(),
            WriteHalf::Shared(write) => drop(write),
        }
    }
}

impl AsyncRead for Side {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Side::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Side::PacedTcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Side::Other(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Side {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Side::Tcp(stream) => Pin::new(stream).poll_write(cx, data),
            Side::PacedTcp(stream) => Pin::new(stream).poll_write(cx, data),
            Side::Other(stream) => Pin::new(stream).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Side::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Side::PacedTcp(stream) => Pin::new(stream).poll_flush(cx),
            Side::Other(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Side::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Side::PacedTcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Side::Other(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// The reading half of one side.
pub enum ReadHalf {
    Tcp(Prefixed<OwnedReadHalf>),
    PacedTcp(Box<Paced<Prefixed<OwnedReadHalf>>>),
    Shared(tokio::io::ReadHalf<Shared>),
}

/// The writing half of one side.
pub enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Shared(tokio::io::WriteHalf<Shared>),
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(read) => Pin::new(read).poll_read(cx, buf),
            ReadHalf::PacedTcp(read) => Pin::new(read).poll_read(cx, buf),
            ReadHalf::Shared(read) => Pin::new(read).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(write) => Pin::new(write).poll_write(cx, data),
            WriteHalf::Shared(write) => Pin::new(write).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(write) => Pin::new(write).poll_flush(cx),
            WriteHalf::Shared(write) => Pin::new(write).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(write) => Pin::new(write).poll_shutdown(cx),
            WriteHalf::Shared(write) => Pin::new(write).poll_shutdown(cx),
        }
    }
}

/// A stream whose first bytes were already read (by hyper) and are handed
/// out before the stream's own.
pub struct Prefixed<T> {
    /// Boxed, and only while there are bytes left: a tunnel rarely starts
    /// with any, and each of its sides holds one (memory per idle tunnel).
    prefix: Option<Box<Bytes>>,
    io: T,
}

impl<T> Prefixed<T> {
    /// The prefix is copied out of hyper's read buffer, so that the buffer
    /// (kilobytes, allocated for the request head) is freed now rather than
    /// held for the tunnel's life by a few bytes that point into it.
    pub fn new(prefix: Bytes, io: T) -> Prefixed<T> {
        Prefixed::holding(Bytes::copy_from_slice(&prefix), io)
    }

    /// Keeps `prefix` as it is: bytes read a moment ago that the next read
    /// hands out (and frees), such as the first read of a connection.
    pub fn holding(prefix: Bytes, io: T) -> Prefixed<T> {
        Prefixed {
            prefix: (!prefix.is_empty()).then(|| Box::new(prefix)),
            io,
        }
    }

    /// The bytes not yet handed out.
    pub fn prefix(&self) -> &[u8] {
        self.prefix.as_deref().map_or(&[], |prefix| prefix)
    }

    /// The bytes not yet handed out, and the stream.
    pub fn into_parts(self) -> (Bytes, T) {
        (self.prefix.map(|prefix| *prefix).unwrap_or_default(), self.io)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(prefix) = &mut this.prefix {
            let n = prefix.len().min(buf.remaining());
            buf.put_slice(&prefix.split_to(n));
            if prefix.is_empty() {
                this.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

super::write_through!(Prefixed);
