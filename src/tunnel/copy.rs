//! One direction of a plain tunnel: bytes from a source to a destination,
//! through a buffer lent only while they move ([`super::pool`]).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::pool::{self, Lent, Sizing};
use super::relocate::moved::CopyState;

/// The state of one direction. The streams are lent by the caller at each
/// poll: a side is read by one direction and written by the other, and the
/// splice owns it whole.
#[derive(Default)]
pub struct Copy {
    /// What was read and not yet all written: the only time a buffer is held.
    /// The range as `u32`s: a buffer is at most a large one, and the
    /// struct is in every tunnel's task twice (memory per idle tunnel).
    held: Option<(Lent, u32, u32)>,
    /// Bytes written since the last flush.
    unflushed: bool,
    /// The source ended; the destination's write side is being shut down.
    source_ended: bool,
    done: bool,
    /// It ended on an error reading the source (else, on an error writing
    /// the destination): which side of the tunnel failed.
    pub read_failed: bool,
    /// The size of buffer the next read borrows.
    sizing: Sizing,
    /// Bytes read from the source.
    pub bytes: u64,
    /// When the source ended (end of stream or an error).
    pub ended_at: Option<Instant>,
}

impl Copy {
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Nothing read and not yet written, and the source still open: the
    /// direction can be picked up elsewhere (a splice thread) from its
    /// next read.
    pub fn is_between_reads(&self) -> bool {
        self.held.is_none() && !self.source_ended && !self.done
    }

    /// Where this direction stands, for a move to another process: what
    /// was read and not yet written goes with it.
    pub fn save(&self) -> CopyState {
        CopyState {
            unwritten: match &self.held {
                Some((buffer, start, end)) => buffer[*start as usize..*end as usize].to_vec(),
                None => Vec::new(),
            },
            source_ended: self.source_ended,
            done: self.done,
            bytes: self.bytes,
            ended_ago: self.ended_at.map(|at| at.elapsed()),
        }
    }

    /// The direction [`Copy::save`] described, its unwritten bytes first.
    pub fn restore(saved: CopyState) -> Copy {
        let held = (!saved.unwritten.is_empty()).then(|| {
            let n = saved.unwritten.len();
            let mut buffer = if n > pool::BUFFER_SIZE {
                pool::lend_large()
            } else {
                pool::lend()
            };
            // A read never brought more than a large buffer holds.
            let n = n.min(buffer.len());
            buffer[..n].copy_from_slice(&saved.unwritten[..n]);
            (buffer, 0, n as u32)
        });
        let now = Instant::now();
        Copy {
            held,
            unflushed: false,
            source_ended: saved.source_ended,
            done: saved.done,
            read_failed: false,
            sizing: Sizing::default(),
            bytes: saved.bytes,
            ended_at: saved.ended_ago.map(|ago| now.checked_sub(ago).unwrap_or(now)),
        }
    }

    /// Copies until the source ends and the destination is shut down (a
    /// half-close passed on), or an error. `closes_next`: the destination
    /// is closed as soon as this direction is done (the other one is), and
    /// its close sends the FIN a shutdown would: one system call fewer per
    /// tunnel. (Only for plain TCP: TLS says its `close_notify` on shutdown.)
    pub fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
        closes_next: bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        let result = self.poll_inner(cx, src, dst, closes_next);
        if let Poll::Ready(outcome) = &result {
            self.done = true;
            self.held = None;
            if outcome.is_err() {
                self.ended_at.get_or_insert_with(Instant::now);
            }
        }
        result
    }

    fn poll_inner<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
        closes_next: bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if let Some((buffer, start, end)) = &mut self.held {
                while start < end {
                    let n = ready!(Pin::new(&mut *dst).poll_write(cx, &buffer[*start as usize..*end as usize]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    *start += n as u32;
                    self.unflushed = true;
                }
                // All written: the buffer goes back before the next read.
                self.held = None;
            }
            if self.source_ended {
                if closes_next {
                    ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                    return Poll::Ready(Ok(()));
                }
                return Pin::new(&mut *dst).poll_shutdown(cx);
            }
            let mut buffer = self.sizing.lend();
            let room = buffer.len();
            let mut read = ReadBuf::new(&mut buffer);
            match Pin::new(&mut *src).poll_read(cx, &mut read) {
                Poll::Pending => {
                    drop(buffer);
                    // Nothing more to read for now: push out what was written.
                    if self.unflushed {
                        ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(error)) => {
                    self.read_failed = true;
                    return Poll::Ready(Err(error));
                }
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        self.source_ended = true;
                        self.ended_at.get_or_insert_with(Instant::now);
                        continue;
                    }
                    self.bytes += n as u64;
                    self.sizing.saw(n, room);
                    self.held = Some((buffer, 0, n as u32));
                }
            }
        }
    }
}
