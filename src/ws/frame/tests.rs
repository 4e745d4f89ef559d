use super::*;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn config(direction: Direction) -> ReaderConfig {
    ReaderConfig {
        direction,
        enforce_masking: true,
        allow_rsv1: false,
        max_frame_size: None,
        max_message_size: None,
    }
}

fn server() -> ReaderConfig {
    config(Direction::ServerToClient)
}

/// Feeds `input` whole and drains pending events: each event with the offset after it.
fn feed(reader: &mut FrameReader, input: &[u8]) -> Result<Vec<(usize, Event)>, Violation> {
    let mut events = Vec::new();
    let mut offset = 0;
    loop {
        let (n, event) = reader.advance(&input[offset..])?;
        offset += n;
        match event {
            Some(event) => events.push((offset, event)),
            None => break,
        }
    }
    assert_eq!(offset, input.len());
    Ok(events)
}

fn violation(config: ReaderConfig, input: &[u8]) -> Violation {
    feed(&mut FrameReader::new(config), input).expect_err("a violation")
}

/// A frame with a minimal length, unmasked unless `mask` is given.
fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(first, payload, mask, &mut out);
    out
}

fn ends(events: &[(usize, Event)]) -> Vec<(usize, OpCode, bool)> {
    events
        .iter()
        .filter_map(|&(offset, event)| match event {
            Event::FrameEnd {
                opcode, message_end, ..
            } => Some((offset, opcode, message_end)),
            _ => None,
        })
        .collect()
}

#[test]
fn reserved_bits() {
    assert_eq!(violation(server(), &[0xC1, 0]), Violation::ReservedBits);
    assert_eq!(violation(server(), &[0xA1, 0]), Violation::ReservedBits);
    assert_eq!(violation(server(), &[0x91, 0]), Violation::ReservedBits);
    let deflate = ReaderConfig {
        allow_rsv1: true,
        ..server()
    };
    assert!(feed(&mut FrameReader::new(deflate), &frame(0xC1, b"x", None)).is_ok());
    assert_eq!(violation(deflate, &[0xA1, 0]), Violation::ReservedBits);
    // RFC 7692 §6.1: not on control frames, not on continuations.
    assert_eq!(violation(deflate, &[0xC9, 0]), Violation::ReservedBits);
    let mut reader = FrameReader::new(deflate);
    feed(&mut reader, &frame(0x41, b"x", None)).unwrap();
    assert_eq!(feed(&mut reader, &[0xC0]), Err(Violation::ReservedBits));
}

#[test]
fn unknown_opcodes() {
    for op in (0x3..=0x7).chain(0xB..=0xF) {
        // Judged from the first byte alone.
        assert_eq!(violation(server(), &[0x80 | op]), Violation::UnknownOpcode(op));
    }
}

#[test]
fn control_frames_are_short_and_whole() {
    assert_eq!(
        violation(server(), &frame(0x89, &[0; 126], None)),
        Violation::ControlTooLong(126)
    );
    assert_eq!(
        violation(server(), &[0x8A, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        Violation::ControlTooLong(65536)
    );
    assert_eq!(violation(server(), &[0x09]), Violation::FragmentedControl);
    assert!(feed(&mut FrameReader::new(server()), &frame(0x89, &[7; 125], None)).is_ok());
}

#[test]
fn fragmentation_order() {
    assert_eq!(violation(server(), &[0x80]), Violation::UnexpectedContinuation);
    let mut reader = FrameReader::new(server());
    feed(&mut reader, &frame(0x01, b"part", None)).unwrap();
    assert_eq!(feed(&mut reader, &[0x82]), Err(Violation::ExpectedContinuation));
}

#[test]
fn length_encoding() {
    let top_bit = [0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(violation(server(), &top_bit), Violation::LengthTopBit);
    assert_eq!(violation(server(), &[0x82, 126, 0, 125]), Violation::NonMinimalLength);
    assert_eq!(
        violation(server(), &[0x82, 127, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]),
        Violation::NonMinimalLength
    );
    // The smallest lengths of each form are fine.
    let mut reader = FrameReader::new(server());
    assert!(reader.advance(&[0x82, 126, 0, 126]).is_ok());
    let mut reader = FrameReader::new(server());
    assert!(reader.advance(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]).is_ok());
}

#[test]
fn masking() {
    let client = config(Direction::ClientToServer);
    assert_eq!(violation(client, &[0x82, 0x00]), Violation::MaskingRequired);
    assert_eq!(violation(server(), &[0x82, 0x80]), Violation::MaskingForbidden);
    let lax = |direction| ReaderConfig {
        enforce_masking: false,
        ..config(direction)
    };
    assert!(feed(
        &mut FrameReader::new(lax(Direction::ClientToServer)),
        &frame(0x82, b"ab", None)
    )
    .is_ok());
    assert!(feed(
        &mut FrameReader::new(lax(Direction::ServerToClient)),
        &frame(0x82, b"ab", Some(KEY))
    )
    .is_ok());
}

#[test]
fn close_codes() {
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999,
    ] {
        let body = close_payload(code, "bye");
        let events = feed(&mut FrameReader::new(server()), &frame(0x88, &body.0[..body.1], None));
        let events = events.unwrap_or_else(|v| panic!("{code}: {v}"));
        match events[1].1 {
            Event::Control {
                opcode: OpCode::Close,
                payload,
            } => {
                assert_eq!(payload.close_code(), Some(code));
                assert_eq!(payload.close_reason(), b"bye");
            }
            other => panic!("{other:?}"),
        }
    }
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
        let body = code.to_be_bytes();
        assert_eq!(
            violation(server(), &frame(0x88, &body, None)),
            Violation::InvalidCloseCode(code)
        );
    }
}

#[test]
fn close_bodies() {
    // Judged from the header, before the byte arrives.
    assert_eq!(violation(server(), &[0x88, 1]), Violation::CloseBodyOneByte);
    let invalid = frame(0x88, &[0x03, 0xE8, b'o', 0xFF], None);
    assert_eq!(violation(server(), &invalid), Violation::InvalidCloseReason);
    let events = feed(&mut FrameReader::new(server()), &[0x88, 0]).unwrap();
    match events.as_slice() {
        [(2, Event::FrameStart(_)), (2, Event::Control { payload, .. }), (2, Event::FrameEnd { .. })] => {
            assert_eq!(payload.close_code(), None);
            assert_eq!(payload.close_reason(), b"");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn size_limits() {
    let limited = ReaderConfig {
        max_frame_size: Some(100),
        max_message_size: Some(250),
        ..server()
    };
    // Header only: the payload never has to arrive.
    assert_eq!(violation(limited, &[0x82, 101]), Violation::FrameTooLarge(101));
    assert_eq!(
        violation(limited, &[0x82, 126, 0xFF, 0xFF]),
        Violation::FrameTooLarge(65535)
    );
    let mut reader = FrameReader::new(limited);
    feed(&mut reader, &frame(0x02, &[0; 100], None)).unwrap();
    feed(&mut reader, &frame(0x89, b"ping", None)).unwrap();
    feed(&mut reader, &frame(0x00, &[0; 100], None)).unwrap();
    assert_eq!(feed(&mut reader, &[0x80, 51]), Err(Violation::MessageTooLarge(251)));
    // The next message counts from zero.
    let mut reader = FrameReader::new(limited);
    feed(&mut reader, &frame(0x02, &[0; 100], None)).unwrap();
    feed(&mut reader, &frame(0x80, &[0; 100], None)).unwrap();
    feed(&mut reader, &frame(0x82, &[0; 100], None)).unwrap();
    let message_only = ReaderConfig {
        max_message_size: Some(10),
        ..server()
    };
    assert_eq!(violation(message_only, &[0x82, 11]), Violation::MessageTooLarge(11));
}

#[test]
fn violation_close_codes() {
    assert_eq!(Violation::FrameTooLarge(1).close_code(), 1009);
    assert_eq!(Violation::MessageTooLarge(1).close_code(), 1009);
    assert_eq!(Violation::InvalidCloseReason.close_code(), 1007);
    for v in [
        Violation::ReservedBits,
        Violation::MaskingRequired,
        Violation::InvalidCloseCode(1005),
    ] {
        assert_eq!(v.close_code(), 1002);
    }
}

#[test]
fn errors_stick() {
    let mut reader = FrameReader::new(server());
    assert_eq!(reader.advance(&[0x83]), Err(Violation::UnknownOpcode(3)));
    assert_eq!(reader.advance(&[0x82, 0]), Err(Violation::UnknownOpcode(3)));
    assert!(!reader.at_frame_boundary());
}

#[test]
fn encode_control_round_trips() {
    for (direction, mask) in [
        (Direction::ClientToServer, Some(KEY)),
        (Direction::ServerToClient, None),
    ] {
        let (close, len) = close_payload(1001, "going away");
        for (opcode, payload) in [
            (OpCode::Ping, &b"are you there"[..]),
            (OpCode::Pong, b""),
            (OpCode::Close, &close[..len]),
        ] {
            let mut out = Vec::new();
            encode_control(opcode, payload, mask, &mut out);
            let events = feed(&mut FrameReader::new(config(direction)), &out).unwrap();
            match events.as_slice() {
                [(_, Event::FrameStart(header)), (
                    end,
                    Event::Control {
                        opcode: op,
                        payload: got,
                    },
                ), (_, Event::FrameEnd { message_end: false, .. })] => {
                    assert_eq!((header.opcode, header.mask, header.fin), (opcode, mask, true));
                    assert_eq!((*op, got.as_bytes(), *end), (opcode, payload, out.len()));
                }
                other => panic!("{other:?}"),
            }
        }
    }
    let mut out = Vec::new();
    encode_control(OpCode::Ping, &[1; 200], None, &mut out);
    assert_eq!(out.len(), 2 + 125);
}

#[test]
fn close_payload_cuts_on_a_char_boundary() {
    let (payload, len) = close_payload(1000, &"é".repeat(100));
    assert_eq!(len, 2 + 122);
    assert_eq!(&payload[..2], &[0x03, 0xE8]);
    assert!(std::str::from_utf8(&payload[2..len]).is_ok());
    let (_, len) = close_payload(4000, "");
    assert_eq!(len, 2);
}

#[test]
fn extended_lengths() {
    for (len, header_len) in [(126, 4), (65535, 4), (65536, 10)] {
        for (direction, mask) in [
            (Direction::ServerToClient, None),
            (Direction::ClientToServer, Some(KEY)),
        ] {
            let header_len = header_len + if mask.is_some() { 4 } else { 0 };
            let bytes = frame(0x82, &vec![0xAB; len], mask);
            let mut reader = FrameReader::new(config(direction));
            let events = feed(&mut reader, &bytes).unwrap();
            match events.as_slice() {
                [(start, Event::FrameStart(header)), (end, Event::FrameEnd { message_end: true, .. })] => {
                    assert_eq!(
                        (*start, header.header_len, header.payload_len),
                        (header_len, header_len, len as u64)
                    );
                    assert_eq!(header.mask, mask);
                    assert_eq!(*end, bytes.len());
                }
                other => panic!("{other:?}"),
            }
            assert!(reader.at_frame_boundary());
        }
    }
}

#[test]
fn control_frames_between_fragments() {
    let parts = [
        frame(0x01, b"hel", None),
        frame(0x89, b"ping", None),
        frame(0x00, b"lo ", None),
        frame(0x8A, b"", None),
        frame(0x80, b"world", None),
        frame(0x81, b"!", None),
    ];
    let mut reader = FrameReader::new(server());
    let mut open = Vec::new();
    let mut all = Vec::new();
    for part in &parts {
        assert!(reader.at_frame_boundary());
        all.extend(feed(&mut reader, part).unwrap().into_iter().map(|(_, e)| e));
        open.push(reader.in_message());
    }
    assert_eq!(open, [true, true, true, true, false, false]);
    let ends: Vec<_> = all
        .iter()
        .filter_map(|e| match *e {
            Event::FrameEnd {
                opcode,
                fin,
                message_end,
            } => Some((opcode, fin, message_end)),
            _ => None,
        })
        .collect();
    assert_eq!(
        ends,
        [
            (OpCode::Text, false, false),
            (OpCode::Ping, true, false),
            (OpCode::Continuation, false, false),
            (OpCode::Pong, true, false),
            (OpCode::Continuation, true, true),
            (OpCode::Text, true, true),
        ]
    );
    assert!(all.contains(&Event::Control {
        opcode: OpCode::Ping,
        payload: control(b"ping")
    }));
}

fn control(bytes: &[u8]) -> ControlPayload {
    let mut payload = ControlPayload::EMPTY;
    payload.push_unmasked(bytes, None);
    payload
}

#[test]
fn split_headers_and_offsets() {
    let mut stream = frame(0x82, &[1; 300], Some(KEY));
    stream.extend(frame(0x89, b"hi", Some(KEY)));
    stream.extend(frame(0x81, b"", Some(KEY)));
    let whole = feed(&mut FrameReader::new(config(Direction::ClientToServer)), &stream).unwrap();
    assert_eq!(
        ends(&whole),
        [
            (8 + 300, OpCode::Binary, true),
            (8 + 300 + 8, OpCode::Ping, false),
            (stream.len(), OpCode::Text, true)
        ]
    );
    // One byte at a time: the same events at the same offsets.
    let mut reader = FrameReader::new(config(Direction::ClientToServer));
    let mut bytewise = Vec::new();
    for (i, byte) in stream.iter().enumerate() {
        let mut rest = std::slice::from_ref(byte);
        loop {
            let (n, event) = reader.advance(rest).unwrap();
            rest = &rest[n..];
            match event {
                Some(event) => bytewise.push((i + 1 - rest.len(), event)),
                None => break,
            }
        }
        if i == 0 {
            assert!(!reader.at_frame_boundary());
        }
    }
    assert_eq!(bytewise, whole);
    assert!(reader.at_frame_boundary());
}

#[test]
fn control_payload_debug() {
    assert_eq!(format!("{:?}", control(b"a\x00")), "ControlPayload(b\"a\\x00\")");
}

#[test]
fn judging_frame_covers_headers_and_control_frames_only() {
    let mut reader = FrameReader::new(config(Direction::ServerToClient));
    assert!(!reader.judging_frame());
    // Half a header.
    assert_eq!(reader.advance(&[0x82]).unwrap(), (1, None));
    assert!(reader.judging_frame());
    // The rest of it: a binary frame of 3 bytes, whose payload is not judged.
    assert!(matches!(
        reader.advance(&[0x03]).unwrap(),
        (1, Some(Event::FrameStart(_)))
    ));
    assert!(!reader.judging_frame());
    assert!(matches!(
        reader.advance(b"abc").unwrap(),
        (3, Some(Event::FrameEnd { .. }))
    ));
    // A ping of 2 bytes, one of them here: judged until its end.
    assert!(matches!(
        reader.advance(&[0x89, 0x02]).unwrap(),
        (2, Some(Event::FrameStart(_)))
    ));
    assert!(reader.judging_frame());
    assert_eq!(reader.advance(b"p").unwrap(), (1, None));
    assert!(reader.judging_frame());
    assert!(matches!(
        reader.advance(b"q").unwrap(),
        (1, Some(Event::Control { .. }))
    ));
    assert!(reader.judging_frame());
    assert!(matches!(
        reader.advance(&[]).unwrap(),
        (0, Some(Event::FrameEnd { .. }))
    ));
    assert!(!reader.judging_frame());
}

/// Where a reader stands, as far as its callers can see.
fn standing(reader: &FrameReader) -> (bool, bool, bool, u64) {
    let boundary = reader.boundary();
    (
        reader.at_frame_boundary(),
        reader.judging_frame(),
        boundary.message_open,
        boundary.message_size,
    )
}

#[test]
fn pass_data_passes_whole_data_frames_and_a_payload_cut_short() {
    let mut reader = FrameReader::new(config(Direction::ClientToServer));
    let first = frame(0x01, b"hel", Some(KEY));
    let second = frame(0x80, b"lo", Some(KEY));
    let third = frame(0x82, &[9; 300], Some(KEY));
    let bytes = [first.clone(), second.clone(), third.clone()].concat();
    let cut = first.len() + second.len() + 10;
    let passed = reader.pass_data(&bytes[..cut]);
    assert_eq!(
        passed,
        Passed {
            consumed: cut,
            frames: 3,
            ended: 2
        }
    );
    assert!(!reader.at_frame_boundary() && !reader.judging_frame());
    // The rest of the payload, then the boundary.
    let passed = reader.pass_data(&bytes[cut..]);
    assert_eq!(
        passed,
        Passed {
            consumed: bytes.len() - cut,
            frames: 0,
            ended: 1
        }
    );
    assert_eq!(standing(&reader), (true, false, false, 300));
    assert_eq!(reader.pass_data(&[]), Passed::default());
}

#[test]
fn pass_data_stops_before_what_needs_an_event_with_nothing_of_it_fed() {
    let data = frame(0x01, b"fragment", None);
    let cases: [(&str, Vec<u8>); 4] = [
        ("a ping between fragments", frame(0x89, b"ping", None)),
        ("a header cut short", vec![0x80, 126, 0x01]),
        ("a masked server frame", frame(0x80, b"x", Some(KEY))),
        ("a new message inside one", frame(0x82, b"x", None)),
    ];
    for (case, next) in cases {
        let mut reader = FrameReader::new(server());
        let bytes = [data.clone(), next.clone()].concat();
        let passed = reader.pass_data(&bytes);
        assert_eq!(
            passed,
            Passed {
                consumed: data.len(),
                frames: 1,
                ended: 1
            },
            "{case}"
        );
        assert_eq!(standing(&reader), (true, false, true, 8), "{case}");
        // `advance` reads the rest as it would have without `pass_data`.
        let mut plain = FrameReader::new(server());
        let expected = feed(&mut plain, &bytes).map(|events| events.len());
        let events = feed(&mut reader, &next).map(|events| events.len());
        let first = feed(&mut FrameReader::new(server()), &data).map(|events| events.len());
        assert_eq!(events.map(|n| n + first.unwrap()), expected, "{case}");
    }
}

/// Reads `bytes` in two parts cut at every offset in `cuts`, with
/// `pass_data` before each `advance` and with `advance` alone, and
/// asserts that both readers see the same frames and stand the same.
fn reads_like_advance_alone(config: ReaderConfig, bytes: &[u8], cuts: impl Iterator<Item = usize>) {
    for cut in cuts {
        let mut alone = FrameReader::new(config);
        let mut passing = FrameReader::new(config);
        for part in [&bytes[..cut], &bytes[cut..]] {
            let expected = feed(&mut alone, part);
            let mut offset = 0;
            let mut started = 0;
            let mut ended = 0;
            let result = loop {
                let passed = passing.pass_data(&part[offset..]);
                offset += passed.consumed;
                started += passed.frames;
                ended += passed.ended;
                if offset == part.len() && !passing.judging_frame() {
                    break Ok(());
                }
                match passing.advance(&part[offset..]) {
                    Ok((n, event)) => {
                        offset += n;
                        match event {
                            Some(Event::FrameStart(_)) => started += 1,
                            Some(Event::FrameEnd { .. }) => ended += 1,
                            _ => {}
                        }
                        if event.is_none() && offset == part.len() {
                            break Ok(());
                        }
                    }
                    Err(violation) => break Err(violation),
                }
            };
            assert_eq!(standing(&passing), standing(&alone), "cut at {cut}");
            match expected {
                Ok(events) => {
                    let count =
                        |kind: fn(&Event) -> bool| events.iter().filter(|(_, event)| kind(event)).count() as u64;
                    assert_eq!(result, Ok(()), "cut at {cut}");
                    assert_eq!(
                        started,
                        count(|event| matches!(event, Event::FrameStart(_))),
                        "cut at {cut}"
                    );
                    assert_eq!(
                        ended,
                        count(|event| matches!(event, Event::FrameEnd { .. })),
                        "cut at {cut}"
                    );
                }
                Err(violation) => {
                    assert_eq!(result, Err(violation), "cut at {cut}");
                    break;
                }
            }
        }
    }
}

#[test]
fn pass_data_then_advance_reads_like_advance_alone_at_every_cut() {
    let client = config(Direction::ClientToServer);
    let masked = |first: u8, payload: &[u8]| frame(first, payload, Some(KEY));
    // Fragments, control frames between and after them, lengths in 7, 16
    // and 64 bits, and a stray continuation to end on.
    let mixed = [
        masked(0x02, &[1; 130]),
        masked(0x89, b"ping"),
        masked(0x80, &[]),
        masked(0x81, b"whole"),
        masked(0x82, &[3; 300]),
        masked(0x88, &[0x03, 0xe8]),
        masked(0x82, &[2; 70_000]),
        masked(0x80, b"stray"),
    ]
    .concat();
    let limited = ReaderConfig {
        max_message_size: Some(100_000),
        ..client
    };
    let ends_near = |len: usize| (0..200).chain((len - 120..=len).step_by(3));
    reads_like_advance_alone(limited, &mixed, ends_near(mixed.len()));
    // What the glance passes, then what it must leave to the full judge.
    let non_minimal = [0x82, 0xFE, 0, 5, 1, 2, 3, 4, 9, 9, 9, 9, 9];
    let unmasked = frame(0x82, b"bare", None);
    let over_frame = masked(0x82, &[4; 150]);
    let deflated = masked(0xC2, b"squeezed");
    let cases: [(ReaderConfig, Vec<u8>); 4] = [
        (client, [masked(0x82, &[5; 200]), non_minimal.to_vec()].concat()),
        (client, [masked(0x81, b"fine"), unmasked].concat()),
        (
            ReaderConfig {
                max_frame_size: Some(140),
                ..client
            },
            [masked(0x82, &[6; 140]), over_frame].concat(),
        ),
        (
            ReaderConfig {
                allow_rsv1: true,
                ..client
            },
            [deflated.clone(), masked(0x82, b"plain"), deflated].concat(),
        ),
    ];
    for (config, bytes) in cases {
        reads_like_advance_alone(config, &bytes, 0..=bytes.len());
    }
}
