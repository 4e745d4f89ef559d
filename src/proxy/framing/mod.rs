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

/// How much `held` grows by per read while a head is incomplete.
const READ_SIZE: usize = 4096;

/// What a scan of newly read bytes found.
#[derive(Debug)]
enum Scanned {
    /// Everything read may go to hyper.
    Complete,
    /// From this offset on the bytes are a head not yet complete (0: the
    /// head began in an earlier read).
    HeadFrom(usize),
    /// The head that begins at this offset (0: or earlier) is refused.
    Refuse(usize, ProxyError),
}

/// Where in the requests of a connection the stream is.
struct Scanner {
    phase: Phase,
    max_head: usize,
}

enum Phase {
    /// Between requests (`head.bytes == 0`) or inside a head.
    Head(Head),
    /// This many bytes of a `Content-Length` body are still to come.
    Body(u64),
    Chunked(Chunk),
    /// Past an upgrade's head, or anything not followed here: hyper alone.
    Aside,
}

/// What a head has shown so far.
#[derive(Default)]
struct Head {
    /// Bytes of the head so far; its start is where an incomplete head
    /// is held back from.
    bytes: usize,
    /// Bytes of the current line, CRs not counted.
    line: usize,
    in_request_line: bool,
    /// The current field's name, lowercased, if short enough to matter.
    name: [u8; NAME_MAX],
    name_len: usize,
    /// Past the current field's colon: which field it is.
    field: Option<Field>,
    /// The current `Content-Length` value, `None` once it is not digits.
    value: Option<u64>,
    value_digits: bool,
    content_length: Option<Length>,
    transfer_encoding: bool,
    upgrade: bool,
}

const NAME_MAX: usize = 17; // "transfer-encoding"

#[derive(Clone, Copy, PartialEq)]
enum Field {
    ContentLength,
    TransferEncoding,
    Upgrade,
    Other,
}

#[derive(Clone, Copy, PartialEq)]
enum Length {
    Is(u64),
    /// Not a number, or two that differ: hyper refuses it itself.
    Unusable,
}

/// Where in a chunked body.
enum Chunk {
    /// The size line: its value so far, whether a digit was seen, whether
    /// the extensions have started.
    Size {
        value: u64,
        digits: bool,
        extension: bool,
    },
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer fields after the last chunk: bytes of the current line.
    Trailer(usize),
}

impl Scanner {
    fn new(max_head: usize) -> Self {
        Scanner {
            phase: Phase::Head(Head::fresh()),
            max_head,
        }
    }

    fn step_aside(&mut self) {
        self.phase = Phase::Aside;
    }

    /// Follows `bytes`, the next ones read from the client.
    fn scan(&mut self, bytes: &[u8]) -> Scanned {
        let mut at = 0;
        // Where the head in progress began in `bytes` (0 if before them).
        let mut head_from = match &self.phase {
            Phase::Head(head) if head.bytes > 0 => Some(0),
            _ => None,
        };
        while at < bytes.len() {
            match &mut self.phase {
                Phase::Aside => return Scanned::Complete,
                Phase::Body(left) => {
                    let n = (*left).min((bytes.len() - at) as u64);
                    *left -= n;
                    at += n as usize;
                    if *left == 0 {
                        self.phase = Phase::Head(Head::fresh());
                    }
                }
                Phase::Chunked(chunk) => {
                    let (used, next) = chunk.step(&bytes[at..]);
                    at += used;
                    match next {
                        ChunkNext::More => {}
                        ChunkNext::Done => self.phase = Phase::Head(Head::fresh()),
                        ChunkNext::Lost => self.phase = Phase::Aside,
                    }
                }
                Phase::Head(head) => {
                    if head.bytes == 0 {
                        head_from = Some(at);
                    }
                    let (used, next) = head.step(&bytes[at..], self.max_head);
                    at += used;
                    match next {
                        HeadNext::More => {}
                        HeadNext::Refuse(error) => return Scanned::Refuse(head_from.unwrap_or(0), error),
                        HeadNext::Ended(phase) => {
                            head_from = None;
                            self.phase = phase;
                        }
                    }
                }
            }
        }
        match head_from {
            Some(from) => Scanned::HeadFrom(from),
            None => Scanned::Complete,
        }
    }
}

enum HeadNext {
    More,
    Refuse(ProxyError),
    /// The head is complete and allowed: what follows it.
    Ended(Phase),
}

impl Head {
    fn fresh() -> Self {
        Head {
            in_request_line: true,
            ..Head::default()
        }
    }

    /// Follows the head through `bytes`: how many it used, and what next.
    fn step(&mut self, bytes: &[u8], max_head: usize) -> (usize, HeadNext) {
        for (i, &byte) in bytes.iter().enumerate() {
            self.bytes += 1;
            match byte {
                b'\n' => {
                    if let Some(next) = self.line_end() {
                        return (i + 1, next);
                    }
                }
                b'\r' => {}
                _ => {
                    self.line += 1;
                    if self.in_request_line {
                        if self.line > max_head {
                            return (i + 1, HeadNext::Refuse(ProxyError::UriTooLong));
                        }
                    } else {
                        self.field_byte(byte);
                    }
                }
            }
        }
        (bytes.len(), HeadNext::More)
    }

    fn field_byte(&mut self, byte: u8) {
        match self.field {
            None if byte == b':' => {
                let name = &self.name[..self.name_len];
                self.field = Some(match name {
                    b"content-length" => Field::ContentLength,
                    b"transfer-encoding" => Field::TransferEncoding,
                    b"upgrade" => Field::Upgrade,
                    _ => Field::Other,
                });
                self.value = Some(0);
                self.value_digits = false;
            }
            None => {
                if self.name_len < NAME_MAX {
                    self.name[self.name_len] = byte.to_ascii_lowercase();
                    self.name_len += 1;
                } else {
                    // Longer than any name that matters here.
                    self.name_len = NAME_MAX;
                    self.name[0] = 0;
                }
            }
            Some(Field::ContentLength) => match byte {
                b'0'..=b'9' => {
                    let digit = u64::from(byte - b'0');
                    self.value = self.value.and_then(|v| v.checked_mul(10)?.checked_add(digit));
                    self.value_digits = true;
                }
                b' ' | b'\t' => {}
                _ => self.value = None,
            },
            Some(_) => {}
        }
    }

    /// The end of a line; `Some` when it ends the head.
    fn line_end(&mut self) -> Option<HeadNext> {
        let empty = self.line == 0;
        self.line = 0;
        if self.in_request_line {
            // Empty lines before a request line are skipped, as hyper does.
            if !empty {
                self.in_request_line = false;
            }
            return None;
        }
        if empty {
            return Some(self.decide());
        }
        match self.field.take() {
            Some(Field::ContentLength) => {
                let value = self.value.filter(|_| self.value_digits);
                self.content_length = Some(match (self.content_length, value) {
                    (None, Some(n)) => Length::Is(n),
                    (Some(Length::Is(a)), Some(b)) if a == b => Length::Is(a),
                    _ => Length::Unusable,
                });
            }
            Some(Field::TransferEncoding) => self.transfer_encoding = true,
            Some(Field::Upgrade) => self.upgrade = true,
            // A line without a colon (or an obs-fold): hyper refuses it.
            Some(Field::Other) | None => {}
        }
        self.name_len = 0;
        None
    }

    fn decide(&self) -> HeadNext {
        if self.content_length.is_some() && self.transfer_encoding {
            return HeadNext::Refuse(ProxyError::BadRequest("Content-Length and Transfer-Encoding together"));
        }
        HeadNext::Ended(if self.upgrade {
            // A tunnel, or a refusal that closes the connection: either way
            // what follows is not a request for hyper to frame.
            Phase::Aside
        } else if self.transfer_encoding {
            Phase::Chunked(Chunk::Size {
                value: 0,
                digits: false,
                extension: false,
            })
        } else {
            match self.content_length {
                None | Some(Length::Is(0)) => Phase::Head(Head::fresh()),
                Some(Length::Is(n)) => Phase::Body(n),
                Some(Length::Unusable) => Phase::Aside,
            }
        })
    }
}

enum ChunkNext {
    More,
    /// The body, trailers included, is over.
    Done,
    /// Not chunked framing as hyper reads it: hyper refuses the request.
    Lost,
}

impl Chunk {
    fn step(&mut self, bytes: &[u8]) -> (usize, ChunkNext) {
        let mut at = 0;
        while at < bytes.len() {
            if let Chunk::Data(left) = self {
                let n = (*left).min((bytes.len() - at) as u64);
                *left -= n;
                at += n as usize;
                if *left == 0 {
                    *self = Chunk::DataEnd;
                }
                continue;
            }
            let byte = bytes[at];
            at += 1;
            match self {
                Chunk::Size {
                    value,
                    digits,
                    extension,
                } => match byte {
                    b'\n' if !*digits => return (at, ChunkNext::Lost),
                    b'\n' if *value == 0 => *self = Chunk::Trailer(0),
                    b'\n' => *self = Chunk::Data(*value),
                    b'\r' => {}
                    _ if *extension => {}
                    b';' | b' ' | b'\t' => *extension = true,
                    _ => match (byte as char).to_digit(16) {
                        Some(digit) if *value >> 60 == 0 => {
                            *value = *value * 16 + u64::from(digit);
                            *digits = true;
                        }
                        _ => return (at, ChunkNext::Lost),
                    },
                },
                Chunk::DataEnd => match byte {
                    b'\r' => {}
                    b'\n' => {
                        *self = Chunk::Size {
                            value: 0,
                            digits: false,
                            extension: false,
                        }
                    }
                    _ => return (at, ChunkNext::Lost),
                },
                Chunk::Trailer(line) => match byte {
                    b'\r' => {}
                    b'\n' if *line == 0 => return (at, ChunkNext::Done),
                    b'\n' => *line = 0,
                    _ => *line += 1,
                },
                Chunk::Data(_) => unreachable!("handled above"),
            }
        }
        (at, ChunkNext::More)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A client whose bytes arrive in the given pieces, one per read, and
    /// which keeps what it is sent.
    struct Client {
        pieces: VecDeque<Vec<u8>>,
        sent: Vec<u8>,
    }

    impl AsyncRead for Client {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if let Some(mut piece) = this.pieces.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    this.pieces.push_front(piece.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Client {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            self.get_mut().sent.extend_from_slice(data);
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    const MAX_HEAD: usize = 256;

    /// What hyper would read through the guard, with reads of `read_size`,
    /// and what the guard answered at shutdown.
    fn through_guard(pieces: Vec<Vec<u8>>, read_size: usize) -> (Vec<u8>, String) {
        let client = Client {
            // An empty read would be the end of the stream.
            pieces: pieces.into_iter().filter(|piece| !piece.is_empty()).collect(),
            sent: Vec::new(),
        };
        let mut guard = FramingGuard::new(client, MAX_HEAD);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let mut read = Vec::new();
            let mut chunk = vec![0; read_size];
            for _ in 0..100_000 {
                let n = guard.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                read.extend_from_slice(&chunk[..n]);
            }
            guard.shutdown().await.unwrap();
            let answer = String::from_utf8(guard.io.sent.clone()).unwrap();
            (read, answer)
        })
    }

    /// Every split of `stream` in two, and in pieces of 1 to 7 bytes, read
    /// with small and large reads.
    fn splits(stream: &[u8]) -> Vec<(String, Vec<Vec<u8>>, usize)> {
        let mut cases = Vec::new();
        for at in 0..=stream.len() {
            for read_size in [3, 8192] {
                let pieces = vec![stream[..at].to_vec(), stream[at..].to_vec()];
                cases.push((format!("split at {at}, reads of {read_size}"), pieces, read_size));
            }
        }
        for size in 1..8 {
            let pieces = stream.chunks(size).map(<[u8]>::to_vec).collect();
            cases.push((format!("pieces of {size}"), pieces, 8192));
        }
        cases
    }

    const TRAP: &str = "GET /trap HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";

    fn keep_alive_stream() -> String {
        let chunked = format!("{:x};ext=1\r\n{TRAP}\r\n0\r\nX-Trailer: 1\r\n\r\n", TRAP.len());
        format!(
            "POST /a HTTP/1.1\r\nHost: x\r\ncontent-length: {}\r\n\r\n{TRAP}\
             \r\nPOST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}\
             GET /c HTTP/1.1\nHost: x\n\n\
             POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            TRAP.len()
        )
    }

    #[test]
    fn well_framed_keep_alive_requests_pass_unchanged_however_they_are_split() {
        let stream = keep_alive_stream();
        for (what, pieces, read_size) in splits(stream.as_bytes()) {
            let (read, answer) = through_guard(pieces, read_size);
            assert_eq!(String::from_utf8_lossy(&read), stream, "{what}");
            assert_eq!(answer, "", "{what}");
        }
    }

    #[test]
    fn cl_with_te_is_refused_with_400_after_the_requests_before_it() {
        let before = keep_alive_stream();
        for head in [
            "POST /e HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /e HTTP/1.1\r\nTransfer-Encoding: chunked\r\nCONTENT-LENGTH:4\r\n\r\n",
        ] {
            let stream = format!("{before}{head}0\r\n\r\n{TRAP}");
            for (what, pieces, read_size) in splits(stream.as_bytes()) {
                let (read, answer) = through_guard(pieces, read_size);
                assert_eq!(String::from_utf8_lossy(&read), before, "{what}: {head:?}");
                assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{what}: {answer:?}");
                assert!(answer.contains("\r\nconnection: close\r\n"), "{what}: {answer:?}");
            }
        }
    }

    #[test]
    fn a_request_line_longer_than_the_head_limit_is_414_and_one_at_the_limit_passes() {
        let at_limit = format!("GET /{} HTTP/1.1", "a".repeat(MAX_HEAD - 14));
        assert_eq!(at_limit.len(), MAX_HEAD);
        let over = format!("GET /{} HTTP/1.1", "a".repeat(MAX_HEAD - 13));
        let fits = format!("{at_limit}\r\n\r\n");
        for (what, pieces, read_size) in splits(fits.as_bytes()) {
            let (read, answer) = through_guard(pieces, read_size);
            assert_eq!(read, fits.as_bytes(), "{what}");
            assert_eq!(answer, "", "{what}");
        }
        let refused = format!("GET / HTTP/1.1\r\n\r\n{over}\r\n\r\n");
        for (what, pieces, read_size) in splits(refused.as_bytes()) {
            let (read, answer) = through_guard(pieces, read_size);
            assert_eq!(read, b"GET / HTTP/1.1\r\n\r\n", "{what}");
            assert!(
                answer.starts_with("HTTP/1.1 414 URI Too Long\r\n"),
                "{what}: {answer:?}"
            );
        }
    }

    #[test]
    fn a_head_over_the_limit_goes_to_hyper_whole_for_its_431() {
        let fields: String = (0..20).map(|i| format!("X-{i}: {}\r\n", "v".repeat(20))).collect();
        let stream = format!("GET / HTTP/1.1\r\n{fields}\r\n");
        assert!(stream.len() > MAX_HEAD);
        for (what, pieces, read_size) in splits(stream.as_bytes()) {
            let (read, answer) = through_guard(pieces, read_size);
            assert_eq!(read, stream.as_bytes(), "{what}");
            assert_eq!(answer, "", "{what}");
        }
    }

    #[test]
    fn past_an_upgrade_head_the_bytes_are_not_read_as_requests() {
        let stream = format!("GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n{TRAP}");
        for (what, pieces, read_size) in splits(stream.as_bytes()) {
            let (read, answer) = through_guard(pieces, read_size);
            assert_eq!(read, stream.as_bytes(), "{what}");
            assert_eq!(answer, "", "{what}");
        }
    }

    #[test]
    fn a_client_that_leaves_mid_head_gives_hyper_what_it_sent() {
        let stream = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Le";
        for (what, pieces, read_size) in splits(stream) {
            let (read, answer) = through_guard(pieces, read_size);
            assert_eq!(read, stream, "{what}");
            assert_eq!(answer, "", "{what}");
        }
    }

    #[test]
    fn bytes_not_yet_taken_come_back_with_the_stream() {
        let client = Client {
            pieces: vec![
                b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n".to_vec(),
                b"\r\nframe".to_vec(),
            ]
            .into(),
            sent: Vec::new(),
        };
        let mut guard = FramingGuard::new(client, MAX_HEAD);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut chunk = [0; 10];
        let n = runtime.block_on(guard.read(&mut chunk)).unwrap();
        assert_eq!(&chunk[..n], b"GET /ws HT");
        let (_, rest) = guard.into_parts();
        assert_eq!(&rest[..], b"TP/1.1\r\nUpgrade: websocket\r\n\r\nframe");
    }
}
