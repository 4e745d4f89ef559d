//! The scanner under [`super::FramingGuard`]: follows the requests of one
//! connection byte by byte (heads, `Content-Length` and chunked bodies) and
//! says where each head ends and whether it is allowed. It reads, never
//! buffers a body, and never changes a byte.

use crate::error::ProxyError;

/// How much `held` grows by per read while a head is incomplete.
pub(super) const READ_SIZE: usize = 4096;

/// What a scan of newly read bytes found.
#[derive(Debug)]
pub(super) enum Scanned {
    /// Everything read may go to hyper.
    Complete,
    /// From this offset on the bytes are a head not yet complete (0: the
    /// head began in an earlier read).
    HeadFrom(usize),
    /// The head that begins at this offset (0: or earlier) is refused.
    Refuse(usize, ProxyError),
}

/// Where in the requests of a connection the stream is.
pub(super) struct Scanner {
    phase: Phase,
    pub(super) max_head: usize,
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
    pub(super) fn new(max_head: usize) -> Self {
        Scanner {
            phase: Phase::Head(Head::fresh()),
            max_head,
        }
    }

    pub(super) fn step_aside(&mut self) {
        self.phase = Phase::Aside;
    }

    /// Follows `bytes`, the next ones read from the client.
    pub(super) fn scan(&mut self, bytes: &[u8]) -> Scanned {
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
