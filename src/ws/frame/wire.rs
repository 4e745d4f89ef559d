//! The frame's wire vocabulary (opcodes, the header, a control payload)
//! and the writing of the frames wsgate sends itself.

use std::fmt;

use super::MAX_CONTROL_PAYLOAD;

/// RFC 6455 §5.2 opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// %x0: continues the data message opened by a Text or Binary frame (§5.4).
    Continuation,
    /// %x1: the first frame of a text (UTF-8) message.
    Text,
    /// %x2: the first frame of a binary message.
    Binary,
    /// %x8: starts or answers the closing handshake (§5.5.1).
    Close,
    /// %x9: asks for a Pong (§5.5.2).
    Ping,
    /// %xA: answers a Ping, or is a unidirectional heartbeat (§5.5.3).
    Pong,
}

impl OpCode {
    /// The opcode of a frame's first byte; `None` for "%x3-7 … reserved for
    /// further non-control frames" and "%xB-F … reserved for further control
    /// frames" (§5.2), which no extension wsgate knows defines.
    pub(super) fn from_u8(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// "Control frames are identified by opcodes where the most significant bit
    /// of the opcode is 1" (§5.5).
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }

    /// The 4-bit value on the wire.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }
}

/// A frame header as read from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub rsv1: bool,
    pub opcode: OpCode,
    /// The masking key, present when the MASK bit is set (§5.3).
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes of header on the wire (2 to 14); the payload starts right after.
    pub header_len: usize,
}

/// A control frame's payload, unmasked, without heap allocation (≤125 bytes, §5.5).
#[derive(Clone, Copy)]
pub struct ControlPayload {
    bytes: [u8; MAX_CONTROL_PAYLOAD],
    /// At most 125: `push_unmasked` never grows it past the array.
    len: u8,
}

impl ControlPayload {
    pub(super) const EMPTY: ControlPayload = ControlPayload {
        bytes: [0; MAX_CONTROL_PAYLOAD],
        len: 0,
    };

    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&self.bytes)
    }

    /// For Close: the code (None for an empty body) and the reason bytes.
    ///
    /// "If there is a body, the first two bytes of the body MUST be a 2-byte
    /// unsigned integer (in network byte order) representing a status code"
    /// (§5.5.1).
    pub fn close_code(&self) -> Option<u16> {
        match self.as_bytes() {
            [hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
            _ => None,
        }
    }

    /// For Close: the reason, the bytes after the code (empty without a code).
    pub fn close_reason(&self) -> &[u8] {
        self.as_bytes().get(2..).unwrap_or(&[])
    }

    /// Appends payload bytes, unmasked with the key (§5.3: byte `i` of the
    /// payload is XORed with `key[i % 4]`); bytes past 125 are dropped, which a
    /// reader never asks for since it refuses longer control frames first.
    pub(super) fn push_unmasked(&mut self, bytes: &[u8], mask: Option<[u8; 4]>) {
        let start = usize::from(self.len);
        let slots = self.bytes.iter_mut().enumerate().skip(start);
        for ((i, slot), byte) in slots.zip(bytes) {
            *slot = byte ^ mask.map_or(0, |key| key[i % 4]);
        }
        self.len = (start + bytes.len()).min(MAX_CONTROL_PAYLOAD) as u8;
    }
}

impl PartialEq for ControlPayload {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for ControlPayload {}

impl fmt::Debug for ControlPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ControlPayload(b\"{}\")", self.as_bytes().escape_ascii())
    }
}

/// Appends one frame to `out`: `first` is its first byte (FIN, RSV, opcode),
/// the length in the shortest form (§5.2), and the payload masked with
/// `mask` when given (a client's frames, §5.3).
pub fn encode_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    out.push(first);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        // The match arms bound each length to its form's range.
        len @ 0..=125 => out.push(mask_bit | len as u8),
        len @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}

/// A frame wsgate sends itself, for its pings and close frames: `mask` Some(..) toward the backend (a client must
/// mask), None toward the client. Appends to `out` (≤ 14 + 125 bytes).
///
/// The frame has FIN set; a payload over 125 bytes, which no control frame may
/// carry (§5.5), is cut to 125.
pub fn encode_control(opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    encode_frame(0x80 | opcode.as_u8(), payload, mask, out);
}

/// A close frame's payload: the code then the reason (reason truncated to fit 125 bytes on a UTF-8 boundary).
pub fn close_payload(code: u16, reason: &str) -> ([u8; 125], usize) {
    let mut payload = [0; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    // Index 0 is a boundary, so this ends.
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    (payload, 2 + end)
}
