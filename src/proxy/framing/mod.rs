//! Two requests hyper's parser lets through and a proxy should refuse,
//! caught below it on the client's byte stream:
//!
//! - `Content-Length` and `Transfer-Encoding` together (the CL.TE and TE.CL
//!   smuggling shapes): 400, as nginx and Envoy answer. hyper frames such a
//!   request by `Transfer-Encoding` and drops a `Content-Length` that comes
//!   second, so above it the two can no longer be told apart.
//! - a request line longer than the whole head may be: 414, as nginx
//!   answers (hyper sees only a head over its limit, 431).
//!
//! [`FramingGuard`] follows the requests on a connection (heads, then
//! `Content-Length` or chunked bodies) and hands hyper each head only once
//! it is complete and allowed; a refused one never reaches hyper, which
//! sees the end of the stream, finishes any answer it is writing, and shuts
//! the connection down, at which point the guard writes its own answer.
//! Past the head of an upgrade, or past anything it does not follow, it
//! steps aside and hyper alone decides. It never changes a byte.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::ProxyError;
use scan::{Scanned, Scanner, READ_SIZE};

mod scan;
#[cfg(test)]
mod tests;

/// The client's stream as hyper reads it: see the [module](self).
pub struct FramingGuard<IO> {
    io: IO,
    scanner: Scanner,
    /// Bytes read but not yet given to hyper: a head still incomplete (and
    /// what followed it in the same read), or the part of a read hyper's
    /// buffer had no room for. Empty, and unallocated, nearly always.
    held: Vec<u8>,
    /// Of `held`: how much hyper has taken, and how much it may take.
    taken: usize,
    released: usize,
    /// A refused head behind requests hyper has yet to take.
    pending: Option<ProxyError>,
    /// The answer to a refused head, and how much of it is written.
    refusal: Option<(Vec<u8>, usize)>,
}

impl<IO> FramingGuard<IO> {
    /// `max_head` is hyper's limit on a request head
    /// (`max_request_header_size`): a request line longer than that is 414.
    pub fn new(io: IO, max_head: usize) -> Self {
        FramingGuard {
            io,
            scanner: Scanner::new(max_head),
            held: Vec::new(),
            taken: 0,
            released: 0,
            pending: None,
            refusal: None,
        }
    }

    /// The stream, and the bytes read from it that hyper has not taken (they
    /// follow whatever hyper itself read past an upgrade's head).
    pub fn into_parts(self) -> (IO, Bytes) {
        let rest = match self.held.get(self.taken..) {
            Some(rest) if !rest.is_empty() => Bytes::copy_from_slice(rest),
            _ => Bytes::new(),
        };
        (self.io, rest)
    }

    /// Hands hyper what it may take of `held`.
    fn give(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.released - self.taken);
        buf.put_slice(&self.held[self.taken..self.taken + n]);
        self.taken += n;
        if self.taken == self.held.len() {
            self.held = Vec::new();
            self.taken = 0;
            self.released = 0;
        }
    }

    fn refuse(&mut self, error: ProxyError) {
        tracing::debug!(%error, "request refused before parsing");
        self.refusal = Some((error.into_wire(), 0));
        self.held = Vec::new();
        self.taken = 0;
        self.released = 0;
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingGuard<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.refusal.is_some() {
                // The end of the stream, as hyper sees it.
                return Poll::Ready(Ok(()));
            }
            if this.taken < this.released {
                this.give(buf);
                return Poll::Ready(Ok(()));
            }
            if let Some(error) = this.pending.take() {
                this.refuse(error);
                continue;
            }
            if this.held.is_empty() {
                // Straight into hyper's buffer; only the start of a head
                // that this read leaves incomplete is taken back out.
                let start = buf.filled().len();
                ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
                let read = &buf.filled()[start..];
                if read.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                match this.scanner.scan(read) {
                    Scanned::Complete => return Poll::Ready(Ok(())),
                    Scanned::HeadFrom(at) if read.len() - at > this.scanner.max_head => {
                        // Over the limit without ending: hyper answers 431.
                        this.scanner.step_aside();
                        return Poll::Ready(Ok(()));
                    }
                    Scanned::HeadFrom(at) => {
                        this.held = read[at..].to_vec();
                        buf.set_filled(start + at);
                        if at > 0 {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Scanned::Refuse(at, error) => {
                        buf.set_filled(start + at);
                        this.refuse(error);
                        if at > 0 {
                            return Poll::Ready(Ok(()));
                        }
                    }
                }
                continue;
            }
            // A head is incomplete: read on into `held`.
            let end = this.held.len();
            this.held.resize(end + READ_SIZE, 0);
            let mut more = ReadBuf::new(&mut this.held[end..]);
            let polled = Pin::new(&mut this.io).poll_read(cx, &mut more);
            let n = more.filled().len();
            this.held.truncate(end + n);
            ready!(polled)?;
            if n == 0 {
                // The client left mid-head: hyper sees what it sent, and the end.
                this.released = this.held.len();
                this.scanner.step_aside();
                continue;
            }
            match this.scanner.scan(&this.held[end..]) {
                Scanned::Complete => this.released = this.held.len(),
                Scanned::HeadFrom(at) if at > 0 => this.released = end + at,
                Scanned::HeadFrom(_) if this.held.len() - this.released > this.scanner.max_head => {
                    // Over the limit without ending: hyper answers 431.
                    this.released = this.held.len();
                    this.scanner.step_aside();
                }
                Scanned::HeadFrom(_) => {}
                Scanned::Refuse(0, error) => this.refuse(error),
                Scanned::Refuse(at, error) => {
                    // The requests before it go to hyper first.
                    this.held.truncate(end + at);
                    this.released = end + at;
                    this.pending = Some(error);
                    this.scanner.step_aside();
                }
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingGuard<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    /// hyper is done with the connection: a refused head's answer goes
    /// out first.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some((answer, written)) = &mut this.refusal {
            while *written < answer.len() {
                let n = ready!(Pin::new(&mut this.io).poll_write(cx, &answer[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
            ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
