//! Fuzzes `wsgate::inspect::frame::FrameReader` with bytes from a hostile peer.
//!
//! The first byte picks where the rest is cut in two (the tunnel feeds the
//! reader whatever each socket read returned); both parts are fed, in both
//! directions, with and without limits. The reader must never panic, never
//! consume more than it was given, and always make progress.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::inspect::frame::{Direction, FrameReader, ReaderConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    // 0 → all in the second part, 255 → all in the first.
    let split = usize::from(cut) * input.len() / 255;
    let (first, second) = input.split_at(split);
    for direction in [Direction::ClientToServer, Direction::ServerToClient] {
        for limited in [false, true] {
            let config = ReaderConfig {
                direction,
                enforce_masking: !limited,
                allow_rsv1: limited,
                max_frame_size: limited.then_some(300),
                max_message_size: limited.then_some(1000),
            };
            feed(FrameReader::new(config), [first, second]);
        }
    }
});

fn feed(mut reader: FrameReader, parts: [&[u8]; 2]) {
    for part in parts {
        let mut rest = part;
        // Events that come without a byte: at most a Control then a FrameEnd.
        let mut idle = 0;
        while !rest.is_empty() {
            let Ok((consumed, event)) = reader.advance(rest) else {
                return;
            };
            assert!(consumed <= rest.len(), "consumed {consumed} of {}", rest.len());
            idle = if consumed == 0 { idle + 1 } else { 0 };
            assert!(consumed > 0 || (event.is_some() && idle <= 2), "no progress");
            rest = &rest[consumed..];
        }
    }
}
