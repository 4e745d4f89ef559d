//! Property tests of the frame reader (`wsgate::ws::frame`).
//!
//! 1. Valid frame streams, cut into chunks anywhere: the reader sees the same
//!    events at the same offsets as when it is fed the stream whole; each
//!    `FrameEnd` sits exactly on a frame boundary; control payloads come out
//!    unmasked and equal to what was sent.
//! 2. Arbitrary bytes, and valid streams with bytes changed, cut anywhere:
//!    no panic, and never more consumed than given. (The fuzz target in
//!    `fuzz/` explores the same ground with coverage guidance.)

use proptest::prelude::*;
use wsgate::ws::frame::{close_payload, Direction, Event, FrameHeader, FrameReader, OpCode, ReaderConfig};

/// One frame of a generated stream.
#[derive(Debug, Clone)]
enum Frame {
    /// A data frame: its payload is a pattern of `len` bytes (the reader never looks at it).
    Data {
        opcode: OpCode,
        fin: bool,
        len: usize,
    },
    Control {
        opcode: OpCode,
        payload: Vec<u8>,
    },
}

/// A generated stream and what the reader must see in it.
#[derive(Debug)]
struct Stream {
    direction: Direction,
    bytes: Vec<u8>,
    expected: Vec<(usize, Seen)>,
}

/// Everything the reader reports, with the offset after each event; control
/// payloads as owned bytes so tests can compare them with what was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
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

fn config(direction: Direction) -> ReaderConfig {
    ReaderConfig {
        direction,
        enforce_masking: true,
        allow_rsv1: false,
        max_frame_size: None,
        max_message_size: None,
    }
}

/// Payload sizes around each length form's edges (§5.2: 7-bit up to 125, 16-bit
/// up to 65535, 64-bit beyond), big ones rare so a case stays small.
fn payload_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..=20,
        3 => 100usize..=300,
        3 => prop::sample::select(vec![125usize, 126, 127]),
        1 => Just(65535usize),
        1 => Just(65536usize),
    ]
}

fn control_frame() -> impl Strategy<Value = Frame> {
    (
        prop::sample::select(vec![OpCode::Ping, OpCode::Pong]),
        prop::collection::vec(any::<u8>(), 0..=125),
    )
        .prop_map(|(opcode, payload)| Frame::Control { opcode, payload })
}

/// A text or binary message in 1..=5 fragments, with 0..=2 pings or pongs before each fragment.
fn message() -> impl Strategy<Value = Vec<Frame>> {
    let fragment = (prop::collection::vec(control_frame(), 0..=2), payload_len());
    (
        prop::sample::select(vec![OpCode::Text, OpCode::Binary]),
        prop::collection::vec(fragment, 1..=5),
    )
        .prop_map(|(opcode, fragments)| {
            let last = fragments.len() - 1;
            let mut frames = Vec::new();
            for (i, (controls, len)) in fragments.into_iter().enumerate() {
                frames.extend(controls);
                let opcode = if i == 0 { opcode } else { OpCode::Continuation };
                frames.push(Frame::Data {
                    opcode,
                    fin: i == last,
                    len,
                });
            }
            frames
        })
}

/// A close frame's body: empty, or a code an endpoint may send and a reason
/// (cut to fit by `close_payload`).
fn close_frame() -> impl Strategy<Value = Frame> {
    let code = prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999];
    prop_oneof![
        Just(Vec::new()),
        (code, "\\PC{0,70}").prop_map(|(code, reason)| {
            let (payload, len) = close_payload(code, &reason);
            payload[..len].to_vec()
        }),
    ]
    .prop_map(|payload| Frame::Control {
        opcode: OpCode::Close,
        payload,
    })
}

fn stream() -> impl Strategy<Value = Stream> {
    (
        prop::sample::select(vec![Direction::ClientToServer, Direction::ServerToClient]),
        prop::collection::vec(message(), 0..=5),
        prop::collection::vec(control_frame(), 0..=2),
        prop::option::of(close_frame()),
        any::<u64>(),
    )
        .prop_map(|(direction, messages, trailing, close, seed)| {
            let frames = messages.into_iter().flatten().chain(trailing).chain(close);
            build(direction, frames, seed)
        })
}

/// Encodes the frames (masked with keys drawn from `seed` when the direction
/// wants it) and lists the events a reader must report, with their offsets.
fn build(direction: Direction, frames: impl Iterator<Item = Frame>, mut seed: u64) -> Stream {
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for frame in frames {
        // xorshift: a different key per frame.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mask = (direction == Direction::ClientToServer).then(|| (seed as u32).to_be_bytes());
        let (opcode, fin, payload) = match frame {
            Frame::Data { opcode, fin, len } => (opcode, fin, (0..len).map(|i| i as u8).collect()),
            Frame::Control { opcode, payload } => (opcode, true, payload),
        };
        let start = bytes.len();
        encode(&mut bytes, fin, opcode, &payload, mask);
        let header_len = bytes.len() - start - payload.len();
        let header = FrameHeader {
            fin,
            rsv1: false,
            opcode,
            mask,
            payload_len: payload.len() as u64,
            header_len,
        };
        expected.push((start + header_len, Seen::Start(header)));
        let message_end = !opcode.is_control() && fin;
        let end = bytes.len();
        if opcode.is_control() {
            expected.push((end, Seen::Control(opcode, payload.clone())));
        }
        expected.push((
            end,
            Seen::End {
                opcode,
                fin,
                message_end,
            },
        ));
    }
    Stream {
        direction,
        bytes,
        expected,
    }
}

/// The wire format of RFC 6455 §5.2, written independently of the crate's encoder.
fn encode(out: &mut Vec<u8>, fin: bool, opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) {
    wsgate::ws::frame::encode_frame(if fin { 0x80 } else { 0 } | opcode.as_u8(), payload, mask, out);
}

/// Feeds `input` in chunks of the given sizes (cycled) the way the tunnel does
/// (`while !rest.is_empty()`), then drains the events still due with
/// `advance(&[])`. Returns each event with the offset after it, and the bytes
/// consumed in all.
fn run(
    config: ReaderConfig,
    input: &[u8],
    chunk_sizes: &[usize],
) -> Result<(Vec<(usize, Event)>, usize), wsgate::ws::frame::Violation> {
    let mut reader = FrameReader::new(config);
    let mut events = Vec::new();
    let mut consumed = 0;
    for chunk in chunks(input, chunk_sizes) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let (n, event) = reader.advance(rest)?;
            assert!(n <= rest.len());
            assert!(n > 0 || event.is_some(), "no progress");
            rest = &rest[n..];
            consumed += n;
            events.extend(event.map(|event| (consumed, event)));
        }
    }
    // At most a Control and a FrameEnd (the end of a zero-length control frame) are still due.
    for _ in 0..3 {
        match reader.advance(&[])? {
            (0, Some(event)) => events.push((consumed, event)),
            (0, None) => break,
            other => panic!("advance(&[]) gave {other:?}"),
        }
    }
    assert_eq!(reader.advance(&[]), Ok((0, None)));
    // Only whole streams are run here: they end between frames, outside a message.
    assert!(reader.at_frame_boundary() && !reader.in_message());
    Ok((events, consumed))
}

fn chunks<'a>(input: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = input;
    sizes.iter().cycle().map_while(move |&size| {
        if rest.is_empty() {
            return None;
        }
        let (chunk, tail) = rest.split_at(size.clamp(1, rest.len()));
        rest = tail;
        Some(chunk)
    })
}

/// A valid stream with one to four of its bytes overwritten.
fn damaged_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        stream(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..=4),
    )
        .prop_map(|(stream, damage)| {
            let mut bytes = stream.bytes;
            if !bytes.is_empty() {
                for (at, byte) in damage {
                    let at = at.index(bytes.len());
                    bytes[at] = byte;
                }
            }
            bytes
        })
}

/// Ways to cut a stream: byte by byte, small pieces, pieces of any size.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(vec![1]),
        prop::collection::vec(1usize..=16, 1..=32),
        prop::collection::vec(1usize..=140_000, 1..=8),
    ]
}

fn any_config() -> impl Strategy<Value = ReaderConfig> {
    (
        prop::sample::select(vec![Direction::ClientToServer, Direction::ServerToClient]),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(0u64..=300),
        prop::option::of(0u64..=1000),
    )
        .prop_map(
            |(direction, enforce_masking, allow_rsv1, max_frame_size, max_message_size)| ReaderConfig {
                direction,
                enforce_masking,
                allow_rsv1,
                max_frame_size,
                max_message_size,
            },
        )
}

/// Feeds input that may be invalid until the reader fails: the events seen
/// (with the offset after each) and the violation it failed on, if any.
fn judged(
    config: ReaderConfig,
    input: &[u8],
    chunk_sizes: &[usize],
) -> (Vec<(usize, Seen)>, Option<wsgate::ws::frame::Violation>) {
    let mut reader = FrameReader::new(config);
    let mut events = Vec::new();
    let mut consumed = 0;
    for chunk in chunks(input, chunk_sizes) {
        let mut rest = chunk;
        // Bounded: each turn consumes a byte or gives one of at most three
        // events due without one.
        for _ in 0..4 * chunk.len() + 4 {
            if rest.is_empty() {
                break;
            }
            match reader.advance(rest) {
                Ok((n, event)) => {
                    rest = &rest[n..];
                    consumed += n;
                    events.extend(event.map(|event| (consumed, seen(event))));
                }
                Err(violation) => return (events, Some(violation)),
            }
        }
    }
    (events, None)
}

/// Feeds input that may be invalid, going on after an error: the reader's
/// behaviour is then unspecified, but it must not panic nor overrun.
fn feed_anything(config: ReaderConfig, input: &[u8], chunk_sizes: &[usize]) {
    let mut reader = FrameReader::new(config);
    let mut consumed = 0;
    for chunk in chunks(input, chunk_sizes) {
        let mut rest = chunk;
        let mut idle = 0;
        while !rest.is_empty() {
            match reader.advance(rest) {
                Ok((n, event)) => {
                    assert!(n <= rest.len(), "consumed {n} of {}", rest.len());
                    rest = &rest[n..];
                    consumed += n;
                    // An event may come without a byte: at most Control and FrameEnd in a row.
                    idle = if n == 0 { idle + 1 } else { 0 };
                    assert!(idle <= 2 && event.is_some() || n > 0, "no progress");
                }
                Err(_) => break,
            }
        }
    }
    assert!(consumed <= input.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn valid_streams_read_the_same_however_cut(stream in stream(), sizes in chunk_sizes()) {
        let config = config(stream.direction);
        let (whole, consumed) = run(config, &stream.bytes, &[usize::MAX]).expect("a valid stream");
        prop_assert_eq!(consumed, stream.bytes.len());
        let (cut, consumed) = run(config, &stream.bytes, &sizes).expect("a valid stream");
        prop_assert_eq!(consumed, stream.bytes.len());
        let seen_cut: Vec<_> = cut.iter().map(|&(offset, event)| (offset, seen(event))).collect();
        let seen_whole: Vec<_> = whole.iter().map(|&(offset, event)| (offset, seen(event))).collect();
        prop_assert_eq!(&seen_cut, &seen_whole);
        // Offsets, headers, unmasked control payloads and FrameEnd on each boundary.
        prop_assert_eq!(&seen_cut, &stream.expected);
    }

    /// A header that a read holds whole is judged at once, one cut in
    /// pieces byte by byte: the same events, and the same violation.
    #[test]
    fn damaged_streams_fail_alike_however_cut(
        bytes in damaged_stream(),
        sizes in chunk_sizes(),
        config in any_config(),
    ) {
        let whole = judged(config, &bytes, &[usize::MAX]);
        prop_assert_eq!(&judged(config, &bytes, &[1]), &whole);
        prop_assert_eq!(&judged(config, &bytes, &sizes), &whole);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        input in prop::collection::vec(any::<u8>(), 0..=512),
        sizes in chunk_sizes(),
        config in any_config(),
    ) {
        feed_anything(config, &input, &sizes);
    }

    #[test]
    fn damaged_streams_never_panic(
        bytes in damaged_stream(),
        sizes in chunk_sizes(),
        config in any_config(),
    ) {
        feed_anything(config, &bytes, &sizes);
    }
}
