//! Reading WebSocket frame headers as the bytes pass (RFC 6455 §5).
//!
//! The tunnel splices bytes unchanged; with inspection on it also hands each
//! chunk it read to one [`FrameReader`] per direction. The reader is a small
//! state machine over the wire format:
//!
//! ```text
//!  ┌──────── header (2..=14 bytes) ────────┐┌──── payload (payload_len bytes) ────┐
//!  FIN RSV opcode │ MASK len7 │ ext len │ key  data: skipped by count, never copied
//!                                              control (≤125): unmasked into a copy
//!  ▲ at_frame_boundary()                   ▲ FrameStart                          ▲ [Control] FrameEnd
//! ```
//!
//! It keeps at most the 14 header bytes and a control frame's 125 payload bytes,
//! in fixed arrays: nothing is allocated after [`FrameReader::new`], and a data
//! payload of any size costs one subtraction per chunk. Every rule that can be
//! judged from the header (opcode, reserved bits, masking, fragmentation, size
//! limits) is judged as soon as the byte that decides it arrives, before any of
//! the payload; only a close frame's code and reason wait for its payload.
//!
//! [`Event::FrameEnd`] comes with the exact offset of a frame boundary, the only
//! place where wsgate may send a frame of its own ([`encode_control`]).

use super::close;

mod saved;
mod wire;
pub use wire::{close_payload, encode_control, encode_frame, ControlPayload, FrameHeader, OpCode};

/// Largest control frame payload: "All control frames MUST have a payload length
/// of 125 bytes or less and MUST NOT be fragmented" (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Longest header: 2 bytes, 8 of extended length, 4 of masking key (§5.2).
const MAX_HEADER_LEN: usize = 14;

/// Which way the frames flow; decides the masking rule (RFC 6455 §5.1: client frames are masked, server frames are not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

/// How a [`FrameReader`] judges the frames of one direction.
#[derive(Debug, Clone, Copy)]
pub struct ReaderConfig {
    pub direction: Direction,
    /// Enforce the masking rule of `direction` (config `enforce_masking`, default true).
    pub enforce_masking: bool,
    /// RSV1 is legal when permessage-deflate was negotiated (RFC 7692).
    pub allow_rsv1: bool,
    /// Largest frame payload (None: unlimited).
    pub max_frame_size: Option<u64>,
    /// Largest message: the sum of a fragmented message's frame payloads (None: unlimited).
    pub max_message_size: Option<u64>,
}

/// What the reader saw, in wire order: FrameStart, then Control for a control
/// frame, then FrameEnd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A frame header was read completely (`consumed` bytes later the payload begins).
    FrameStart(FrameHeader),
    /// A control frame was read completely; its payload is unmasked.
    Control { opcode: OpCode, payload: ControlPayload },
    /// The last byte of a frame (payload included) was consumed: a frame boundary, where another frame may be inserted.
    /// `message_end` when it was the final frame of a data message.
    FrameEnd {
        opcode: OpCode,
        fin: bool,
        message_end: bool,
    },
}

/// What a well-behaved peer never does; each maps to the close code the offender gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// "RSV1, RSV2, RSV3: 1 bit each. MUST be 0 unless an extension is
    /// negotiated that defines meanings for non-zero values" (§5.2); with
    /// permessage-deflate, RSV1 only on the first frame of a data message
    /// (RFC 7692 §6.1).
    #[error("reserved bits set")]
    ReservedBits,
    /// "If an unknown opcode is received, the receiving endpoint MUST _Fail the
    /// WebSocket Connection_" (§5.2).
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// "All control frames MUST have a payload length of 125 bytes or less" (§5.5).
    #[error("control frame of {0} bytes (at most 125)")]
    ControlTooLong(u64),
    /// Control frames "MUST NOT be fragmented" (§5.5).
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A continuation frame with no message open (§5.4).
    #[error("continuation frame outside a message")]
    UnexpectedContinuation,
    /// A Text or Binary frame while a fragmented message is open: "the fragments
    /// of one message MUST NOT be interleaved between the fragments of another
    /// message" (§5.4).
    #[error("new data frame inside an unfinished message")]
    ExpectedContinuation,
    /// A 64-bit length "the most significant bit MUST be 0" (§5.2).
    #[error("64-bit length with the most significant bit set")]
    LengthTopBit,
    /// "The minimal number of bytes MUST be used to encode the length" (§5.2).
    #[error("payload length not minimally encoded")]
    NonMinimalLength,
    /// "The server MUST close the connection upon receiving a frame that is not
    /// masked" (§5.1).
    #[error("unmasked frame from the client")]
    MaskingRequired,
    /// "A client MUST close a connection if it detects a masked frame" (§5.1).
    #[error("masked frame from the server")]
    MaskingForbidden,
    /// A close code no endpoint may send (§7.4).
    #[error("close code {0} may not be sent")]
    InvalidCloseCode(u16),
    /// A close body holds a 2-byte code or nothing (§5.5.1).
    #[error("close frame body of one byte")]
    CloseBodyOneByte,
    /// The close reason "is not guaranteed to be human readable" but is UTF-8
    /// (§5.5.1), else 1007 (§7.4.1).
    #[error("close reason is not UTF-8")]
    InvalidCloseReason,
    /// A frame payload over `max_frame_size`.
    #[error("frame of {0} bytes over the limit")]
    FrameTooLarge(u64),
    /// A message (all its fragments) over `max_message_size`.
    #[error("message of {0} bytes over the limit")]
    MessageTooLarge(u64),
}

impl Violation {
    /// 1002 protocol error, 1009 too big (size limits), 1007 invalid UTF-8 in a close reason (§7.4.1).
    pub fn close_code(self) -> u16 {
        match self {
            Violation::FrameTooLarge(_) | Violation::MessageTooLarge(_) => close::MESSAGE_TOO_BIG,
            Violation::InvalidCloseReason => close::INVALID_PAYLOAD,
            _ => close::PROTOCOL_ERROR,
        }
    }
}

/// Where the reader is in the byte stream.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading a header: `FrameReader::filled` bytes of it are in `FrameReader::header`.
    Header,
    /// Skipping (data) or unmasking (control) the payload of `frame`.
    Payload { frame: FrameHeader, remaining: u64 },
    /// A control frame's `Control` event was returned; its `FrameEnd` is next.
    ControlDone { frame: FrameHeader },
    /// A violation was returned; every later call returns it again.
    Failed(Violation),
}

/// Reads the frames of one direction of a tunnel without buffering them.
pub struct FrameReader {
    config: ReaderConfig,
    state: State,
    /// The header bytes read so far, which may arrive split across calls.
    header: [u8; MAX_HEADER_LEN],
    filled: usize,
    /// The opcode of the header being read, once its first byte passed the checks.
    opcode: OpCode,
    /// The payload of the control frame being read.
    control: ControlPayload,
    /// A Text or Binary frame without FIN was read and its final fragment has not ended yet.
    message_open: bool,
    /// Payload bytes of the current message, its frames so far.
    message_size: u64,
}

/// What [`FrameReader::pass_data`] consumed: `consumed` bytes of data
/// frames, `frames` of them started and `ended` ended (their last byte
/// in `consumed`, whether or not they started there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Passed {
    pub consumed: usize,
    pub frames: u64,
    pub ended: u64,
}

/// Where a reader stood between two frames ([`FrameReader::rewind`]).
#[derive(Debug, Clone, Copy)]
pub struct Boundary {
    message_open: bool,
    message_size: u64,
}

impl FrameReader {
    pub fn new(config: ReaderConfig) -> FrameReader {
        FrameReader {
            config,
            state: State::Header,
            header: [0; MAX_HEADER_LEN],
            filled: 0,
            opcode: OpCode::Continuation,
            control: ControlPayload::EMPTY,
            message_open: false,
            message_size: 0,
        }
    }

    /// Consumes a prefix of `input` up to and including the next event, returning how many bytes were consumed and
    /// the event (None: all of `input` consumed, no event in it).
    ///
    /// The caller loops: `while !rest.is_empty() { let (n, event) = reader.advance(rest)?; rest = &rest[n..]; ... }`.
    /// Never reads past `input`; never panics on any input; works with input split at any byte (header bytes split
    /// across calls are kept in a small fixed buffer of 14 bytes).
    ///
    /// One call returns one event, so an event that falls due with no byte
    /// left (the `FrameEnd` after a `Control`, or after the `FrameStart` of an
    /// empty frame) comes with `0` consumed: from the next call, or at once
    /// from `advance(&[])`. Looping until the event is `None` drains them.
    pub fn advance(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), Violation> {
        let result = match self.state {
            State::Header => self.read_header(input),
            State::Payload { frame, remaining } => self.read_payload(frame, remaining, input),
            State::ControlDone { frame } => Ok((0, Some(self.end_frame(frame)))),
            State::Failed(violation) => Err(violation),
        };
        if let Err(violation) = result {
            self.state = State::Failed(violation);
        }
        result
    }

    /// Between two frames: a frame of our own may be sent now.
    ///
    /// True from the `FrameEnd` event until the first byte of the next header.
    pub fn at_frame_boundary(&self) -> bool {
        matches!(self.state, State::Header) && self.filled == 0
    }

    /// Inside a frame that is still being judged: its header has not fully
    /// arrived, or it is a control frame whose payload (and, for a close,
    /// its code) has not. Between frames and inside a data payload: false.
    pub fn judging_frame(&self) -> bool {
        match self.state {
            State::Header => self.filled > 0,
            State::Payload { frame, .. } | State::ControlDone { frame } => frame.opcode.is_control(),
            State::Failed(_) => false,
        }
    }

    /// Where the reader stands, taken at a frame boundary.
    pub fn boundary(&self) -> Boundary {
        Boundary {
            message_open: self.message_open,
            message_size: self.message_size,
        }
    }

    /// Back to `boundary`, as if the bytes fed since had not been: a frame
    /// handed on unread, to be read again by another reader (a splice
    /// thread's, handing a tunnel back to its pumps).
    pub fn rewind(&mut self, boundary: Boundary) {
        self.state = State::Header;
        self.filled = 0;
        self.message_open = boundary.message_open;
        self.message_size = boundary.message_size;
    }

    /// A fragmented data message is open (we may still insert control frames between its frames, RFC 6455 §5.4).
    pub fn in_message(&self) -> bool {
        self.message_open
    }

    /// Consumes the data frames at the start of `input`, whole, and the
    /// payload of the last when `input` ends inside it, without an event
    /// each: where nothing needs to see data frames one by one (a splice
    /// thread's follower; a pump with no order waiting for a boundary and
    /// no message rate), two events a frame cost a small message more
    /// than judging it. Stops, with nothing of it fed, before a frame that
    /// needs an event (a control frame, a header that breaks a rule or
    /// that `input` cuts short), for [`FrameReader::advance`] to read.
    pub fn pass_data(&mut self, input: &[u8]) -> Passed {
        let mut passed = Passed::default();
        loop {
            let rest = &input[passed.consumed..];
            if self.at_frame_boundary() {
                if rest.is_empty() {
                    return passed;
                }
                if let Some(whole) = self.whole_plain_frame(rest) {
                    passed.consumed += whole;
                    passed.frames += 1;
                    passed.ended += 1;
                    continue;
                }
            }
            if !self.pass_data_judged(rest, &mut passed) {
                return passed;
            }
        }
    }

    /// [`FrameReader::pass_data`]'s turn for what a glance does not pass:
    /// a data payload's rest, or a header judged in full. False when it
    /// stops. Kept out of line: its results are large, and the common
    /// turn should not pay for them.
    #[inline(never)]
    fn pass_data_judged(&mut self, rest: &[u8], passed: &mut Passed) -> bool {
        match self.state {
            State::Payload { frame, remaining } if !frame.opcode.is_control() => {
                // A data payload: never a violation, at most its end.
                let (taken, end) = self.read_payload(frame, remaining, rest).unwrap_or_default();
                passed.consumed += taken;
                passed.ended += u64::from(end.is_some());
                end.is_some()
            }
            State::Header if self.filled == 0 => {
                let before = self.boundary();
                match self.read_whole_header(rest) {
                    Some(Ok((len, Some(Event::FrameStart(header))))) if !header.opcode.is_control() => {
                        passed.consumed += len;
                        passed.frames += 1;
                        true
                    }
                    // Judged again, the same way, by `advance`.
                    Some(_) => {
                        self.rewind(before);
                        false
                    }
                    None => false,
                }
            }
            _ => false,
        }
    }

    /// The commonest frame judged at a glance, and passed: a whole,
    /// unfragmented Text or Binary frame, no reserved bit set, masked as
    /// its direction must be, its length in 7 or 16 bits and within the
    /// limits. Returns its length, header and payload; `None` for any
    /// other frame, left to the full judge
    /// ([`FrameReader::read_whole_header`]), which accepts all this does.
    fn whole_plain_frame(&mut self, input: &[u8]) -> Option<usize> {
        let [first, second, ..] = *input else { return None };
        if self.message_open || !matches!(first, 0x81 | 0x82) {
            return None;
        }
        let masked = second & 0x80 != 0;
        if self.config.enforce_masking && masked != (self.config.direction == Direction::ClientToServer) {
            return None;
        }
        let (extended, len) = match second & 0x7F {
            // 126 announces 126..=65535 (§5.2).
            126 => match u16::from_be_bytes([*input.get(2)?, *input.get(3)?]) {
                len @ 126.. => (2, u64::from(len)),
                _ => return None,
            },
            127 => return None,
            len => (0, u64::from(len)),
        };
        let within = |limit: Option<u64>| limit.is_none_or(|max| len <= max);
        if !within(self.config.max_frame_size) || !within(self.config.max_message_size) {
            return None;
        }
        let whole = 2 + extended + if masked { 4 } else { 0 } + usize::try_from(len).ok()?;
        if input.len() < whole {
            return None;
        }
        self.message_size = len;
        Some(whole)
    }

    fn read_header(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), Violation> {
        if self.filled == 0 {
            if let Some(read) = self.read_whole_header(input) {
                return read;
            }
        }
        for (i, &byte) in input.iter().enumerate() {
            // `filled` < 14 here: a complete header returns below.
            if let Some(slot) = self.header.get_mut(self.filled) {
                *slot = byte;
            }
            self.filled += 1;
            self.check_header_prefix()?;
            if self.filled >= self.header_len() {
                return Ok((i + 1, Some(Event::FrameStart(self.start_frame()))));
            }
        }
        Ok((input.len(), None))
    }

    /// A header that `input` holds whole, judged at once: the same rules in
    /// the same order as byte by byte, without a turn per byte (a sixth of
    /// the instructions of a small inspected message). `None` when `input`
    /// ends before the header does.
    fn read_whole_header(&mut self, input: &[u8]) -> Option<Result<(usize, Option<Event>), Violation>> {
        let second = *input.get(1)?;
        let extended = match second & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let len = 2 + extended + if second & 0x80 != 0 { 4 } else { 0 };
        let header = input.get(..len)?;
        self.header[..len].copy_from_slice(header);
        let judged = (|| {
            self.filled = 1;
            self.check_first_byte()?;
            self.filled = 2;
            self.check_second_byte()?;
            if extended > 0 {
                self.filled = 2 + extended;
                self.check_extended_length()?;
            }
            self.filled = len;
            Ok((len, Some(Event::FrameStart(self.start_frame()))))
        })();
        Some(judged)
    }

    /// The header's length as far as its bytes so far tell: 2 until the second
    /// byte gives the length form and the MASK bit.
    fn header_len(&self) -> usize {
        if self.filled < 2 {
            return 2;
        }
        let mask_len = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + self.extended_len() + mask_len
    }

    /// Bytes of extended payload length (§5.2): 126 means 16 bits follow, 127 means 64 bits.
    fn extended_len(&self) -> usize {
        match self.header[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        }
    }

    fn payload_len(&self) -> u64 {
        let h = &self.header;
        match h[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            len => u64::from(len),
        }
    }

    /// Judges the header byte just read, once the bytes that decide a rule are all there.
    fn check_header_prefix(&mut self) -> Result<(), Violation> {
        match self.filled {
            1 => self.check_first_byte(),
            2 => self.check_second_byte(),
            n if n == 2 + self.extended_len() && n > 2 => self.check_extended_length(),
            _ => Ok(()),
        }
    }

    fn check_first_byte(&mut self) -> Result<(), Violation> {
        let byte = self.header[0];
        let fin = byte & 0x80 != 0;
        // RSV2 and RSV3: no extension wsgate lets through defines them (§5.2).
        if byte & 0x30 != 0 {
            return Err(Violation::ReservedBits);
        }
        let opcode = OpCode::from_u8(byte & 0x0F).ok_or(Violation::UnknownOpcode(byte & 0x0F))?;
        // RSV1 is permessage-deflate's "Per-Message Compressed" bit: "An endpoint
        // MUST NOT set the "Per-Message Compressed" bit of control frames and
        // non-first fragments of a data message" (RFC 7692 §6.1).
        if byte & 0x40 != 0 && !(self.config.allow_rsv1 && matches!(opcode, OpCode::Text | OpCode::Binary)) {
            return Err(Violation::ReservedBits);
        }
        if opcode.is_control() {
            // "Control frames themselves MUST NOT be fragmented" (§5.4); they may
            // come between the fragments of a message.
            if !fin {
                return Err(Violation::FragmentedControl);
            }
        } else if opcode == OpCode::Continuation && !self.message_open {
            return Err(Violation::UnexpectedContinuation);
        } else if opcode != OpCode::Continuation && self.message_open {
            return Err(Violation::ExpectedContinuation);
        }
        self.opcode = opcode;
        Ok(())
    }

    fn check_second_byte(&self) -> Result<(), Violation> {
        let masked = self.header[1] & 0x80 != 0;
        // "a client MUST mask all frames that it sends to the server … A server
        // MUST NOT mask any frames that it sends to the client" (§5.1).
        if self.config.enforce_masking {
            match self.config.direction {
                Direction::ClientToServer if !masked => return Err(Violation::MaskingRequired),
                Direction::ServerToClient if masked => return Err(Violation::MaskingForbidden),
                _ => {}
            }
        }
        match self.header[1] & 0x7F {
            len @ 0..=125 => self.check_length(u64::from(len)),
            _ => Ok(()),
        }
    }

    fn check_extended_length(&self) -> Result<(), Violation> {
        let len = self.payload_len();
        if self.extended_len() == 8 && len >> 63 != 0 {
            return Err(Violation::LengthTopBit);
        }
        // 126 announces 126..=65535, 127 announces 65536 and more (§5.2).
        let minimal = if self.extended_len() == 2 {
            len >= 126
        } else {
            len > 0xFFFF
        };
        if !minimal {
            return Err(Violation::NonMinimalLength);
        }
        self.check_length(len)
    }

    /// The rules the payload length decides, before any payload byte arrives.
    fn check_length(&self, len: u64) -> Result<(), Violation> {
        if self.opcode.is_control() {
            if len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(Violation::ControlTooLong(len));
            }
            // A close body is empty or starts with a 2-byte code (§5.5.1).
            if self.opcode == OpCode::Close && len == 1 {
                return Err(Violation::CloseBodyOneByte);
            }
        }
        if self.config.max_frame_size.is_some_and(|max| len > max) {
            return Err(Violation::FrameTooLarge(len));
        }
        if !self.opcode.is_control() {
            let message = match self.opcode {
                OpCode::Continuation => self.message_size.saturating_add(len),
                _ => len,
            };
            if self.config.max_message_size.is_some_and(|max| message > max) {
                return Err(Violation::MessageTooLarge(message));
            }
        }
        Ok(())
    }

    /// The header is complete and judged: start skipping its payload.
    fn start_frame(&mut self) -> FrameHeader {
        let ext = self.extended_len();
        let h = &self.header;
        let mask = (h[1] & 0x80 != 0).then(|| [h[2 + ext], h[3 + ext], h[4 + ext], h[5 + ext]]);
        let frame = FrameHeader {
            fin: h[0] & 0x80 != 0,
            rsv1: h[0] & 0x40 != 0,
            opcode: self.opcode,
            mask,
            payload_len: self.payload_len(),
            header_len: self.filled,
        };
        match frame.opcode {
            OpCode::Continuation => self.message_size = self.message_size.saturating_add(frame.payload_len),
            OpCode::Text | OpCode::Binary => self.message_size = frame.payload_len,
            _ => self.control = ControlPayload::EMPTY,
        }
        if !frame.opcode.is_control() && !frame.fin {
            self.message_open = true;
        }
        self.filled = 0;
        self.state = State::Payload {
            frame,
            remaining: frame.payload_len,
        };
        frame
    }

    fn read_payload(
        &mut self,
        frame: FrameHeader,
        remaining: u64,
        input: &[u8],
    ) -> Result<(usize, Option<Event>), Violation> {
        // At most `input.len()`, so it fits in a usize.
        let take = remaining.min(input.len() as u64) as usize;
        let remaining = remaining - take as u64;
        let control = frame.opcode.is_control();
        if control {
            self.control.push_unmasked(&input[..take], frame.mask);
        }
        if remaining > 0 {
            self.state = State::Payload { frame, remaining };
            return Ok((take, None));
        }
        if !control {
            return Ok((take, Some(self.end_frame(frame))));
        }
        if frame.opcode == OpCode::Close {
            check_close_body(&self.control)?;
        }
        self.state = State::ControlDone { frame };
        Ok((
            take,
            Some(Event::Control {
                opcode: frame.opcode,
                payload: self.control,
            }),
        ))
    }

    fn end_frame(&mut self, frame: FrameHeader) -> Event {
        let message_end = !frame.opcode.is_control() && frame.fin;
        if message_end {
            self.message_open = false;
        }
        self.state = State::Header;
        Event::FrameEnd {
            opcode: frame.opcode,
            fin: frame.fin,
            message_end,
        }
    }
}

/// A close body's code must be one an endpoint may send, and "the body MAY
/// contain UTF-8-encoded data" after it (§5.5.1); an endpoint that receives
/// non-UTF-8 data fails the connection with 1007 (§8.1, §7.4.1).
fn check_close_body(payload: &ControlPayload) -> Result<(), Violation> {
    if let Some(code) = payload.close_code() {
        if !close::is_allowed(code) {
            return Err(Violation::InvalidCloseCode(code));
        }
        if std::str::from_utf8(payload.close_reason()).is_err() {
            return Err(Violation::InvalidCloseReason);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
