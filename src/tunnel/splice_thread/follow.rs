//! An inspected tunnel's frames, followed on a splice thread.
//!
//! On the thread an inspected tunnel passes data frames only: the frame
//! reader of each direction follows their headers, as the tunnel's pumps
//! do on tokio, and the bytes go across in the same batches. Whatever
//! else a pump does, it does rarely: a control frame (a ping, a pong, a
//! close) or a frame that breaks a rule sends the tunnel back to its task
//! at that frame's start, unread, and the pumps there take it up as if it
//! had never left. A header cut across two reads is held back, fed, as a
//! pump holds it, so that nothing of a frame leaves before it is judged.

use std::sync::Arc;

use crate::ws::frame::{Boundary, Event, FrameReader};

/// What a followed direction's bytes tell the tunnel's owner: the
/// counters and clocks its pumps keep (`side` 0 is the client, 1 the
/// backend).
pub trait Counts: Send + Sync {
    /// One read from `side`: `bytes` of it went across, with `frames`
    /// frame starts in them, some of them data when `data`.
    fn read_from(&self, side: usize, bytes: usize, frames: u64, data: bool);
}

/// The most a direction holds back between reads: a frame header (2 to
/// 14 bytes) not yet whole.
pub const HELD_MAX: usize = 16;

/// Both directions' frame readers, on a thread.
pub struct Following {
    directions: [Followed; 2],
    counts: Arc<dyn Counts>,
}

/// One direction: its reader, where it stood before the frame now being
/// read, and the bytes of that frame's header fed and held.
struct Followed {
    reader: FrameReader,
    at_start: Boundary,
    held: Vec<u8>,
}

/// What to do with a direction's bytes (those it held, then a read).
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The first `n` go across; the rest (a header not yet whole) are held.
    Across(usize),
    /// The first `n` go across; at `n` starts a frame a pump must see: the
    /// tunnel goes back to its task with the rest unread, the reader as it
    /// stood before that frame.
    Back(usize),
}

impl Following {
    /// `readers` by the side they read (client, backend), each between two
    /// reads with nothing held.
    pub fn new(readers: [FrameReader; 2], counts: Arc<dyn Counts>) -> Following {
        let followed = |reader: FrameReader| Followed {
            at_start: reader.boundary(),
            reader,
            held: Vec::new(),
        };
        let [client, backend] = readers;
        Following {
            directions: [followed(client), followed(backend)],
            counts,
        }
    }

    /// The bytes direction `d` held from its last read: they go in front
    /// of its next.
    pub fn held(&self, d: usize) -> &[u8] {
        &self.directions[d].held
    }

    /// Follows `bytes` read from side `d`: [`Following::held`] first (fed
    /// already), then the read.
    pub fn follow(&mut self, d: usize, bytes: &[u8]) -> Step {
        let direction = &mut self.directions[d];
        let reader = &mut direction.reader;
        let mut pos = direction.held.len();
        direction.held.clear();
        // Held bytes always start a frame.
        let mut frame_start = 0;
        let mut frames = 0;
        // A read that starts inside a data frame continues its payload.
        let mut data = !reader.at_frame_boundary() && !reader.judging_frame();
        let step = loop {
            // Data frames first, without an event each.
            let passed = reader.pass_data(&bytes[pos..]);
            if passed.consumed > 0 {
                pos += passed.consumed;
                frames += passed.frames;
                data = true;
            }
            if pos == bytes.len() && !reader.judging_frame() {
                break Step::Across(pos);
            }
            if reader.at_frame_boundary() {
                frame_start = pos;
                direction.at_start = reader.boundary();
            }
            match reader.advance(&bytes[pos..]) {
                Ok((consumed, event)) => {
                    pos += consumed;
                    match event {
                        Some(Event::FrameStart(header)) if !header.opcode.is_control() => {
                            frames += 1;
                            data = true;
                        }
                        Some(Event::FrameEnd { .. }) => {}
                        // A control frame (its start comes first).
                        Some(_) => break Step::Back(frame_start),
                        None if reader.judging_frame() => {
                            direction.held.extend_from_slice(&bytes[frame_start..]);
                            break Step::Across(frame_start);
                        }
                        None => break Step::Across(bytes.len()),
                    }
                }
                // Judged again, the same way, by the pump it goes back to.
                Err(_) => break Step::Back(frame_start),
            }
        };
        let across = match step {
            Step::Back(at) => {
                direction.reader.rewind(direction.at_start);
                at
            }
            Step::Across(n) => n,
        };
        self.counts.read_from(d, across, frames, data);
        step
    }

    /// The readers, by side, and the bytes each held (fed to it already).
    pub fn into_readers(self) -> [(FrameReader, Vec<u8>); 2] {
        self.directions.map(|direction| (direction.reader, direction.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::{Direction, ReaderConfig};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Counted(Mutex<Vec<(usize, usize, u64, bool)>>);

    impl Counts for Counted {
        fn read_from(&self, side: usize, bytes: usize, frames: u64, data: bool) {
            self.0.lock().unwrap().push((side, bytes, frames, data));
        }
    }

    fn reader(direction: Direction) -> FrameReader {
        FrameReader::new(ReaderConfig {
            direction,
            enforce_masking: true,
            allow_rsv1: false,
            max_frame_size: Some(1 << 20),
            max_message_size: Some(1 << 20),
        })
    }

    fn following() -> (Following, Arc<Counted>) {
        let counted = Arc::new(Counted::default());
        let readers = [reader(Direction::ClientToServer), reader(Direction::ServerToClient)];
        (Following::new(readers, counted.clone()), counted)
    }

    /// A frame from the backend (unmasked).
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n @ 0..=125 => out.push(n as u8),
            n => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn data_frames_go_across_whole_and_a_header_cut_short_is_held() {
        let (mut following, counted) = following();
        let mut bytes = frame(0x2, &[7; 300]);
        let second = frame(0x1, b"hello");
        bytes.extend_from_slice(&second[..1]);
        assert_eq!(following.follow(1, &bytes), Step::Across(bytes.len() - 1));
        assert_eq!(following.held(1), &second[..1]);
        let mut next = following.held(1).to_vec();
        next.extend_from_slice(&second[1..]);
        assert_eq!(following.follow(1, &next), Step::Across(next.len()));
        assert!(following.held(1).is_empty());
        let counts = counted.0.lock().unwrap().clone();
        assert_eq!(counts, vec![(1, 304, 1, true), (1, 7, 1, true)]);
    }

    #[test]
    fn a_control_frame_goes_back_unread_with_the_reader_before_it() {
        let (mut following, _) = following();
        let data = frame(0x2, &[1; 10]);
        let ping = frame(0x9, b"are you there");
        let bytes = [data.clone(), ping.clone(), frame(0x2, &[2; 4])].concat();
        assert_eq!(following.follow(1, &bytes), Step::Back(data.len()));
        // The reader a pump takes up reads the ping as the next frame.
        let [_, (mut reader, held)] = following.into_readers();
        assert!(held.is_empty());
        assert!(reader.at_frame_boundary());
        let (_, event) = reader.advance(&ping).unwrap();
        assert!(matches!(event, Some(Event::FrameStart(header)) if header.opcode.is_control()));
    }

    #[test]
    fn a_broken_frame_goes_back_unread_even_when_its_header_was_held() {
        let (mut following, counted) = following();
        // A 64-bit length over the limit: judged once its last byte is in,
        // held until then.
        let header = [0x82u8, 127, 0, 0, 0, 0, 1, 0, 0, 0];
        assert_eq!(following.follow(1, &header[..5]), Step::Across(0));
        assert_eq!(following.held(1), &header[..5]);
        let mut next = following.held(1).to_vec();
        next.extend_from_slice(&header[5..]);
        assert_eq!(following.follow(1, &next), Step::Back(0));
        let [_, (mut reader, held)] = following.into_readers();
        assert!(held.is_empty());
        assert!(reader.advance(&header).is_err(), "the pump judges it the same way");
        assert!(counted.0.lock().unwrap().iter().all(|&(_, bytes, ..)| bytes == 0));
    }

    #[test]
    fn an_unmasked_client_frame_goes_back() {
        let (mut following, _) = following();
        let unmasked = frame(0x2, b"no mask");
        assert_eq!(following.follow(0, &unmasked), Step::Back(0));
    }
}
