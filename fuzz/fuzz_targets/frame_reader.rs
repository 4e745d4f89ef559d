//! Fuzzes `wsgate::ws::frame` with bytes from a hostile peer.
//!
//! Every input is used twice:
//!
//! 1. **As raw wire bytes.** The first byte picks the reader configuration,
//!    the second seeds where the rest is cut into chunks (the tunnel feeds
//!    the reader whatever each socket read returned). The rest is fed whole,
//!    one byte at a time and in the seeded chunks. Checked: no panic; never
//!    more consumed than given; progress on every call (bytes or an event);
//!    the three feedings report the same events at the same offsets, the
//!    same violation and the same final state; every event agrees with the
//!    bytes it came from (a `FrameStart`'s fields are those of the header
//!    bytes right before it, a control payload is the frame's payload
//!    unmasked, a `FrameEnd` sits exactly `payload_len` bytes after its
//!    `FrameStart`); no accepted header breaks a rule of the configuration.
//!    Fed a fourth time in the same chunks, with the data frames passed at
//!    a glance before each `advance` (as a splice thread's follower and an
//!    inspected pump read them): the same frames started and ended, the
//!    same violation, the same final state.
//! 2. **As a recipe for a valid stream.** The bytes choose frames (data
//!    messages in fragments, pings, pongs, close frames with a code and a
//!    reason), which `encode_frame`, `encode_control` and `close_payload`
//!    write; the stream, cut at chosen points, must read back exactly as
//!    written: same headers, same control payloads, same close code and
//!    reason, no violation.

#![no_main]

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use wsgate::ws::frame::{
    close_payload, encode_control, encode_frame, Direction, Event, FrameHeader, FrameReader, OpCode, ReaderConfig,
    Violation,
};

fuzz_target!(|data: &[u8]| {
    raw_bytes(data);
    let _ = round_trip(&mut Unstructured::new(data));
});

// ---------------------------------------------------------------- raw bytes

fn reader_config(selector: u8) -> ReaderConfig {
    ReaderConfig {
        direction: if selector & 1 == 0 {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        },
        enforce_masking: selector & 2 == 0,
        allow_rsv1: selector & 4 != 0,
        max_frame_size: match (selector >> 3) & 3 {
            0 => None,
            1 => Some(0),
            2 => Some(125),
            _ => Some(300),
        },
        max_message_size: match (selector >> 5) & 3 {
            0 => None,
            1 => Some(1),
            2 => Some(300),
            _ => Some(1000),
        },
    }
}

/// What one feeding of the bytes saw.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    /// Each event with the absolute offset after it, and the reader's state then.
    events: Vec<(usize, Event, State)>,
    violation: Option<Violation>,
    /// The state once everything was fed (and pending events drained).
    end: Option<State>,
}

/// The reader's public predicates.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct State {
    at_boundary: bool,
    judging: bool,
    in_message: bool,
}

fn state(reader: &FrameReader) -> State {
    State {
        at_boundary: reader.at_frame_boundary(),
        judging: reader.judging_frame(),
        in_message: reader.in_message(),
    }
}

fn raw_bytes(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Some((&seed, input)) = rest.split_first() else {
        return;
    };
    let config = reader_config(selector);
    let whole = feed(config, input, &[input.len()]);
    let bytewise = feed(config, input, &vec![1; input.len()]);
    let chunks = seeded_chunks(seed, input.len());
    let chunked = feed(config, input, &chunks);
    assert_eq!(whole, bytewise, "fed whole vs one byte at a time");
    assert_eq!(whole, chunked, "fed whole vs in chunks {chunks:?}");
    let count = |kind: fn(&Event) -> bool| whole.events.iter().filter(|(_, event, _)| kind(event)).count() as u64;
    let expected = Passing {
        started: count(|event| matches!(event, Event::FrameStart(_))),
        ended: count(|event| matches!(event, Event::FrameEnd { .. })),
        violation: whole.violation,
        end: whole.end,
    };
    assert_eq!(
        feed_passing(config, input, &chunks),
        expected,
        "data frames passed, in chunks {chunks:?}"
    );
    check_events(config, input, &whole);
    mark_violation(whole.violation);
}

/// One function per violation, so that reaching a new one is new coverage:
/// the reader's error returns are folded into selects by the optimizer and
/// give libFuzzer no edge of their own, so inputs that reach them would not
/// be kept in the corpus.
macro_rules! markers {
    ($($name:ident),* $(,)?) => {
        $(
            #[inline(never)]
            fn $name() {
                std::hint::black_box(stringify!($name));
            }
        )*
    };
}

markers!(
    v_none,
    v_reserved,
    v_opcode,
    v_control_long,
    v_fragmented,
    v_continuation,
    v_expected_continuation,
    v_top_bit,
    v_non_minimal,
    v_mask_required,
    v_mask_forbidden,
    v_close_code,
    v_close_one_byte,
    v_close_reason,
    v_frame_large,
    v_message_large,
);

fn mark_violation(violation: Option<Violation>) {
    match violation {
        None => v_none(),
        Some(Violation::ReservedBits) => v_reserved(),
        Some(Violation::UnknownOpcode(_)) => v_opcode(),
        Some(Violation::ControlTooLong(_)) => v_control_long(),
        Some(Violation::FragmentedControl) => v_fragmented(),
        Some(Violation::UnexpectedContinuation) => v_continuation(),
        Some(Violation::ExpectedContinuation) => v_expected_continuation(),
        Some(Violation::LengthTopBit) => v_top_bit(),
        Some(Violation::NonMinimalLength) => v_non_minimal(),
        Some(Violation::MaskingRequired) => v_mask_required(),
        Some(Violation::MaskingForbidden) => v_mask_forbidden(),
        Some(Violation::InvalidCloseCode(_)) => v_close_code(),
        Some(Violation::CloseBodyOneByte) => v_close_one_byte(),
        Some(Violation::InvalidCloseReason) => v_close_reason(),
        Some(Violation::FrameTooLarge(_)) => v_frame_large(),
        Some(Violation::MessageTooLarge(_)) => v_message_large(),
    }
    // Each violation maps to its close code (RFC 6455 §7.4.1).
    if let Some(violation) = violation {
        let expected = match violation {
            Violation::FrameTooLarge(_) | Violation::MessageTooLarge(_) => 1009,
            Violation::InvalidCloseReason => 1007,
            _ => 1002,
        };
        assert_eq!(violation.close_code(), expected, "{violation:?}");
        assert!(!violation.to_string().is_empty());
    }
}

/// Chunk lengths (summing to `len`) from a small xorshift generator.
fn seeded_chunks(seed: u8, len: usize) -> Vec<usize> {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    let mut chunks = Vec::new();
    let mut left = len;
    while left > 0 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        // Mostly short reads, sometimes long ones.
        let n = if state & 0x100 == 0 { state % 16 } else { state % 512 } as usize + 1;
        let n = n.min(left);
        chunks.push(n);
        left -= n;
    }
    chunks
}

fn feed(config: ReaderConfig, input: &[u8], chunks: &[usize]) -> Run {
    let mut reader = FrameReader::new(config);
    let mut run = Run {
        events: Vec::new(),
        violation: None,
        end: None,
    };
    let mut offset = 0;
    for &len in chunks {
        let mut rest = &input[offset..offset + len];
        // Events that come without a byte: at most a Control then a FrameEnd,
        // or a FrameStart of an empty frame then its FrameEnd.
        let mut idle = 0;
        while !rest.is_empty() {
            let (consumed, event) = match reader.advance(rest) {
                Ok(step) => step,
                Err(violation) => {
                    // A failed reader stays failed.
                    assert_eq!(reader.advance(rest), Err(violation));
                    assert_eq!(reader.advance(&[]), Err(violation));
                    run.violation = Some(violation);
                    run.end = Some(state(&reader));
                    return run;
                }
            };
            assert!(consumed <= rest.len(), "consumed {consumed} of {}", rest.len());
            idle = if consumed == 0 { idle + 1 } else { 0 };
            assert!(consumed > 0 || (event.is_some() && idle <= 2), "no progress");
            offset += consumed;
            rest = &rest[consumed..];
            if let Some(event) = event {
                run.events.push((offset, event, state(&reader)));
            }
        }
    }
    (run.violation, run.end) = drain(&mut reader, |event, state| run.events.push((offset, event, state)));
    run
}

/// Drains what falls due with no byte left (the FrameEnd after a Control,
/// …), each event with the state after it: the violation, if one came, and
/// the final state.
fn drain(reader: &mut FrameReader, mut on_event: impl FnMut(Event, State)) -> (Option<Violation>, Option<State>) {
    for _ in 0..3 {
        match reader.advance(&[]) {
            Ok((0, Some(event))) => on_event(event, state(reader)),
            Ok((0, None)) => return (None, Some(state(reader))),
            Ok((n, _)) => panic!("advance(&[]) consumed {n}"),
            Err(violation) => return (Some(violation), Some(state(reader))),
        }
    }
    panic!("advance(&[]) kept returning events");
}

/// What a feeding that passes data frames without their events saw.
#[derive(Debug, PartialEq, Eq)]
struct Passing {
    started: u64,
    ended: u64,
    violation: Option<Violation>,
    end: Option<State>,
}

/// The chunks read as a splice thread's follower and an inspected pump
/// read them: data frames passed at a glance (`FrameReader::pass_data`)
/// before each `advance`. Frames are counted rather than listed: the
/// passed ones have no events.
fn feed_passing(config: ReaderConfig, input: &[u8], chunks: &[usize]) -> Passing {
    let mut reader = FrameReader::new(config);
    let mut run = Passing {
        started: 0,
        ended: 0,
        violation: None,
        end: None,
    };
    let mut offset = 0;
    let violation = 'feeding: {
        for &len in chunks {
            let end = offset + len;
            let mut idle = 0;
            while offset < end {
                let passed = reader.pass_data(&input[offset..end]);
                assert!(
                    passed.consumed <= end - offset,
                    "passed {} of {}",
                    passed.consumed,
                    end - offset
                );
                offset += passed.consumed;
                run.started += passed.frames;
                run.ended += passed.ended;
                if offset == end {
                    break;
                }
                match reader.advance(&input[offset..end]) {
                    Ok((consumed, event)) => {
                        idle = if consumed == 0 && passed.consumed == 0 {
                            idle + 1
                        } else {
                            0
                        };
                        assert!(consumed > 0 || (event.is_some() && idle <= 2), "no progress");
                        offset += consumed;
                        run.count(event);
                    }
                    Err(violation) => break 'feeding Some(violation),
                }
            }
        }
        None
    };
    (run.violation, run.end) = match violation {
        Some(violation) => (Some(violation), Some(state(&reader))),
        None => drain(&mut reader, |event, _| run.count(Some(event))),
    };
    run
}

impl Passing {
    fn count(&mut self, event: Option<Event>) {
        match event {
            Some(Event::FrameStart(_)) => self.started += 1,
            Some(Event::FrameEnd { .. }) => self.ended += 1,
            _ => {}
        }
    }
}

/// The events of one feeding against the bytes they came from.
fn check_events(config: ReaderConfig, input: &[u8], run: &Run) {
    // The frame being read: its header, and where its payload starts.
    let mut open: Option<(FrameHeader, usize)> = None;
    let mut control_seen = false;
    let mut message_open = false;
    let mut message_size = 0u64;
    let mut frame_end = 0;
    for &(offset, event, state) in &run.events {
        match event {
            Event::FrameStart(header) => {
                assert!(open.is_none(), "FrameStart inside a frame");
                assert_eq!(offset - frame_end, header.header_len, "header bytes between frames");
                check_header(config, &input[frame_end..offset], header, message_open);
                if !header.opcode.is_control() {
                    message_size = match header.opcode {
                        OpCode::Continuation => message_size.saturating_add(header.payload_len),
                        _ => header.payload_len,
                    };
                    if let Some(max) = config.max_message_size {
                        assert!(message_size <= max, "message over max_message_size accepted");
                    }
                    message_open = !header.fin;
                }
                open = Some((header, offset));
                control_seen = false;
                assert!(!state.at_boundary);
                assert_eq!(state.judging, header.opcode.is_control());
            }
            Event::Control { opcode, payload } => {
                let (header, start) = open.expect("Control outside a frame");
                assert_eq!(opcode, header.opcode);
                assert!(opcode.is_control() && !control_seen);
                assert_eq!(offset - start, header.payload_len as usize);
                let expected: Vec<u8> = input[start..offset]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ header.mask.map_or(0, |key| key[i % 4]))
                    .collect();
                assert_eq!(payload.as_bytes(), &expected[..], "control payload unmasked");
                assert!(format!("{payload:?}").starts_with("ControlPayload(b\""));
                if opcode == OpCode::Close {
                    check_close_body(payload.as_bytes(), payload.close_code(), payload.close_reason());
                }
                control_seen = true;
            }
            Event::FrameEnd {
                opcode,
                fin,
                message_end,
            } => {
                let (header, start) = open.take().expect("FrameEnd outside a frame");
                assert_eq!((opcode, fin), (header.opcode, header.fin));
                assert_eq!(
                    offset - start,
                    header.payload_len as usize,
                    "FrameEnd off the frame's end"
                );
                assert_eq!(control_seen, opcode.is_control(), "Control event before FrameEnd");
                assert_eq!(message_end, !opcode.is_control() && fin);
                assert!(state.at_boundary && !state.judging, "{state:?} after FrameEnd");
                assert_eq!(state.in_message, message_open);
                frame_end = offset;
            }
        }
    }
    if let (Some(end), None, None) = (run.end, open, run.violation) {
        // All bytes after the last frame are a partial header.
        assert_eq!(end.in_message, message_open);
        assert_eq!(end.at_boundary, frame_end == input.len());
        assert_eq!(end.judging, frame_end < input.len());
    }
}

/// A header the reader accepted: its fields are the bytes', and it keeps
/// every rule of RFC 6455 §5 and of the configuration.
fn check_header(config: ReaderConfig, bytes: &[u8], header: FrameHeader, message_open: bool) {
    let first = bytes[0];
    assert_eq!(header.fin, first & 0x80 != 0);
    assert_eq!(header.rsv1, first & 0x40 != 0);
    assert_eq!(first & 0x30, 0, "RSV2/RSV3 accepted");
    assert_eq!(header.opcode.as_u8(), first & 0x0F);
    assert_eq!(header.mask.is_some(), bytes[1] & 0x80 != 0);
    let (len, ext) = match bytes[1] & 0x7F {
        126 => (u64::from(u16::from_be_bytes([bytes[2], bytes[3]])), 2),
        127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()), 8),
        len => (u64::from(len), 0),
    };
    assert_eq!(header.payload_len, len);
    assert_eq!(header.header_len, 2 + ext + if header.mask.is_some() { 4 } else { 0 });
    if let Some(key) = header.mask {
        assert_eq!(&key[..], &bytes[2 + ext..6 + ext]);
    }
    // Minimal length form (§5.2), top bit clear.
    match ext {
        2 => assert!(len >= 126),
        8 => assert!(len > 0xFFFF && len >> 63 == 0),
        _ => {}
    }
    let control = header.opcode.is_control();
    if control {
        assert!(header.fin && len <= 125, "bad control frame accepted");
        if header.opcode == OpCode::Close {
            assert_ne!(len, 1);
        }
    } else if header.opcode == OpCode::Continuation {
        assert!(message_open, "continuation outside a message accepted");
    } else {
        assert!(!message_open, "new message inside a message accepted");
    }
    if header.rsv1 {
        assert!(config.allow_rsv1 && matches!(header.opcode, OpCode::Text | OpCode::Binary));
    }
    if config.enforce_masking {
        let masked = header.mask.is_some();
        assert_eq!(masked, config.direction == Direction::ClientToServer, "masking rule");
    }
    if let Some(max) = config.max_frame_size {
        assert!(len <= max, "frame over max_frame_size accepted");
    }
}

/// A close body the reader let through: empty, or an allowed code and UTF-8.
fn check_close_body(body: &[u8], code: Option<u16>, reason: &[u8]) {
    match code {
        None => assert!(body.is_empty()),
        Some(code) => {
            assert!(close_code_allowed(code), "close code {code} accepted");
            assert_eq!(&body[2..], reason);
            assert!(std::str::from_utf8(reason).is_ok(), "non-UTF-8 close reason accepted");
        }
    }
}

/// RFC 6455 §7.4 and the IANA registry, written out here independently.
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

// --------------------------------------------------------------- round trip

/// What the reader must report for a written frame.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Start(FrameHeader),
    Control(OpCode, Vec<u8>),
    End {
        opcode: OpCode,
        fin: bool,
        message_end: bool,
    },
}

fn seen(event: Event) -> Seen {
    match event {
        Event::FrameStart(header) => Seen::Start(header),
        Event::Control { opcode, payload } => Seen::Control(opcode, payload.as_bytes().to_vec()),
        Event::FrameEnd {
            opcode,
            fin,
            message_end,
        } => Seen::End {
            opcode,
            fin,
            message_end,
        },
    }
}

fn round_trip(u: &mut Unstructured) -> ArbResult<()> {
    let direction = if u.arbitrary()? {
        Direction::ClientToServer
    } else {
        Direction::ServerToClient
    };
    let config = ReaderConfig {
        direction,
        enforce_masking: true,
        allow_rsv1: u.arbitrary()?,
        max_frame_size: None,
        max_message_size: None,
    };
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    let mut message_open = false;
    let mut big_frame = false;
    let frames = u.int_in_range(0..=16)?;
    for _ in 0..frames {
        let mask = match direction {
            Direction::ClientToServer => Some(u.arbitrary::<[u8; 4]>()?),
            Direction::ServerToClient => None,
        };
        let start = bytes.len();
        let header;
        let kind = u.int_in_range(0..=4)?;
        if kind < 2 {
            // A data frame: the next fragment, or the first of a message.
            let opcode = match (message_open, kind) {
                (true, _) => OpCode::Continuation,
                (false, 0) => OpCode::Text,
                (false, _) => OpCode::Binary,
            };
            let fin: bool = u.arbitrary()?;
            let rsv1 = config.allow_rsv1 && opcode != OpCode::Continuation && u.arbitrary()?;
            let len = match u.int_in_range(0..=9)? {
                0..=5 => u.int_in_range(0..=125)?,
                6 | 7 => u.int_in_range(126..=600)?,
                8 => *u.choose(&[125, 126, 127, 65535])?,
                // One large frame per stream at most: the 64-bit form.
                _ if !big_frame => {
                    big_frame = true;
                    u.int_in_range(65536..=70000)?
                }
                _ => 0,
            };
            let mut payload = u.bytes(len.min(u.len()))?.to_vec();
            payload.resize(len, 0xA5);
            let first = u8::from(fin) << 7 | u8::from(rsv1) << 6 | opcode.as_u8();
            encode_frame(first, &payload, mask, &mut bytes);
            header = FrameHeader {
                fin,
                rsv1,
                opcode,
                mask,
                payload_len: len as u64,
                header_len: bytes.len() - start - len,
            };
            message_open = !fin;
            expected.push((start + header.header_len, Seen::Start(header)));
            expected.push((
                bytes.len(),
                Seen::End {
                    opcode,
                    fin,
                    message_end: fin,
                },
            ));
            continue;
        }
        // A control frame, between fragments or between messages.
        let (opcode, payload) = match kind {
            2 | 3 => {
                let len = u.int_in_range(0..=140)?.min(u.len());
                let opcode = if kind == 2 { OpCode::Ping } else { OpCode::Pong };
                (opcode, u.bytes(len)?.to_vec())
            }
            _ => {
                let payload = if u.ratio(1, 4)? {
                    Vec::new()
                } else {
                    let code = match u.int_in_range(0..=2)? {
                        0 => u.int_in_range(1000..=1003)?,
                        1 => u.int_in_range(1007..=1014)?,
                        _ => u.int_in_range(3000..=4999)?,
                    };
                    // Often long, of one character repeated, so that a
                    // multi-byte character straddles the 123-byte cut.
                    let reason: String = if u.arbitrary()? {
                        let c: char = u.arbitrary()?;
                        let n = u.int_in_range(0..=130)?;
                        std::iter::repeat_n(c, n).collect()
                    } else {
                        u.arbitrary()?
                    };
                    let (payload, len) = close_payload(code, &reason);
                    check_close_payload(code, &reason, &payload[..len]);
                    payload[..len].to_vec()
                };
                (OpCode::Close, payload)
            }
        };
        encode_control(opcode, &payload, mask, &mut bytes);
        // encode_control cuts a payload to 125 bytes.
        let payload = payload[..payload.len().min(125)].to_vec();
        header = FrameHeader {
            fin: true,
            rsv1: false,
            opcode,
            mask,
            payload_len: payload.len() as u64,
            header_len: bytes.len() - start - payload.len(),
        };
        expected.push((start + header.header_len, Seen::Start(header)));
        expected.push((bytes.len(), Seen::Control(opcode, payload)));
        expected.push((
            bytes.len(),
            Seen::End {
                opcode,
                fin: true,
                message_end: false,
            },
        ));
    }

    // Cut the stream at points the remaining bytes choose.
    let mut cuts = Vec::new();
    let mut left = bytes.len();
    while left > 0 {
        let n = if u.is_empty() {
            left
        } else {
            u.int_in_range(1..=left.min(300))?
        };
        cuts.push(n);
        left -= n;
    }
    let mut reader = FrameReader::new(config);
    let mut got = Vec::new();
    let mut offset = 0;
    for n in cuts {
        let mut rest = &bytes[offset..offset + n];
        while !rest.is_empty() {
            let (consumed, event) = reader
                .advance(rest)
                .unwrap_or_else(|v| panic!("valid stream refused at {offset}: {v}"));
            offset += consumed;
            rest = &rest[consumed..];
            got.extend(event.map(|e| (offset, seen(e))));
        }
    }
    while let (0, Some(event)) = reader.advance(&[]).expect("valid stream refused at its end") {
        got.push((offset, seen(event)));
    }
    assert_eq!(got, expected, "stream read back differently");
    assert!(reader.at_frame_boundary());
    assert_eq!(reader.in_message(), message_open);
    Ok(())
}

/// `close_payload` keeps the code and the longest prefix of the reason that
/// fits in 125 bytes on a character boundary.
fn check_close_payload(code: u16, reason: &str, payload: &[u8]) {
    assert!(payload.len() <= 125);
    assert_eq!(&payload[..2], &code.to_be_bytes());
    let kept = std::str::from_utf8(&payload[2..]).expect("close_payload cut a character");
    assert!(reason.starts_with(kept));
    if kept.len() < reason.len() {
        let next = reason[kept.len()..].chars().next().unwrap();
        assert!(
            2 + kept.len() + next.len_utf8() > 125,
            "close_payload cut {reason:?} short"
        );
    }
}
