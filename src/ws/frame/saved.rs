//! A frame reader written down and read back, for a tunnel that moves to
//! another process mid-stream ([`crate::lifecycle::handover`]): where it is
//! in the current frame, the header bytes it holds, a control payload read
//! so far, and the message it is in.

use super::{ControlPayload, FrameHeader, FrameReader, OpCode, ReaderConfig, State};
use crate::snapshot::{Reader, SnapshotError, Writer};

impl FrameReader {
    /// Writes where the reader is. A reader that failed, or that owes a
    /// control frame's end, is never saved: a tunnel moves only between
    /// reads, and only while its frames are good.
    pub fn save(&self, out: &mut Writer) {
        out.bytes(&self.header[..self.filled]);
        out.u8(self.opcode as u8);
        out.bytes(self.control.as_bytes());
        out.bool(self.message_open);
        out.u64(self.message_size);
        let frame = match self.state {
            State::Payload { frame, remaining } => Some((frame, remaining)),
            _ => None,
        };
        out.option(frame, |out, (frame, remaining)| {
            out.bool(frame.fin)
                .bool(frame.rsv1)
                .u8(frame.opcode as u8)
                .option(frame.mask, |out, mask| {
                    out.bytes(&mask);
                })
                .u64(frame.payload_len)
                .u8(frame.header_len as u8)
                .u64(remaining);
        });
    }

    /// Whether [`FrameReader::save`] describes this reader whole.
    pub fn can_save(&self) -> bool {
        matches!(self.state, State::Header | State::Payload { .. })
    }

    /// A reader judging by `config`, where the saved one was.
    pub fn load(config: ReaderConfig, saved: &mut Reader<'_>) -> Result<FrameReader, SnapshotError> {
        let mut reader = FrameReader::new(config);
        let header = saved.bytes()?;
        if header.len() > reader.header.len() {
            return Err(SnapshotError("frame header too long"));
        }
        reader.header[..header.len()].copy_from_slice(header);
        reader.filled = header.len();
        reader.opcode = opcode(saved.u8()?)?;
        let control = saved.bytes()?;
        if control.len() > super::MAX_CONTROL_PAYLOAD {
            return Err(SnapshotError("control payload too long"));
        }
        reader.control = ControlPayload::EMPTY;
        reader.control.push_unmasked(control, None);
        reader.message_open = saved.bool()?;
        reader.message_size = saved.u64()?;
        let frame = saved.option(|saved| {
            let fin = saved.bool()?;
            let rsv1 = saved.bool()?;
            let opcode = opcode(saved.u8()?)?;
            let mask = saved.option(|saved| {
                <[u8; 4]>::try_from(saved.bytes()?).map_err(|_| SnapshotError("masking key of the wrong size"))
            })?;
            let frame = FrameHeader {
                fin,
                rsv1,
                opcode,
                mask,
                payload_len: saved.u64()?,
                header_len: usize::from(saved.u8()?),
            };
            Ok((frame, saved.u64()?))
        })?;
        if let Some((frame, remaining)) = frame {
            if remaining > frame.payload_len || reader.filled != 0 {
                return Err(SnapshotError("frame position out of range"));
            }
            reader.state = State::Payload { frame, remaining };
        }
        Ok(reader)
    }
}

fn opcode(bits: u8) -> Result<OpCode, SnapshotError> {
    let bits = match bits {
        0 => 0x0,
        1 => 0x1,
        2 => 0x2,
        3 => 0x8,
        4 => 0x9,
        5 => 0xA,
        _ => return Err(SnapshotError("unknown opcode")),
    };
    OpCode::from_u8(bits).ok_or(SnapshotError("unknown opcode"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::{encode_frame, Direction, Event};

    fn config() -> ReaderConfig {
        ReaderConfig {
            direction: Direction::ClientToServer,
            enforce_masking: true,
            allow_rsv1: false,
            max_frame_size: Some(1 << 20),
            max_message_size: Some(1 << 21),
        }
    }

    /// Every event of `bytes` fed in one piece.
    fn events(reader: &mut FrameReader, mut bytes: &[u8]) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            let (consumed, event) = reader.advance(bytes).expect("good frames");
            bytes = &bytes[consumed..];
            match event {
                Some(event) => seen.push(event),
                None if bytes.is_empty() => return seen,
                None => {}
            }
        }
    }

    #[test]
    fn a_reader_saved_anywhere_goes_on_as_if_it_had_not_moved() {
        // A fragmented text message with a ping between its frames, then a close.
        let mut stream = Vec::new();
        encode_frame(0x01, &[b'a'; 300], Some([1, 2, 3, 4]), &mut stream);
        encode_frame(0x89, b"are you there", Some([5, 6, 7, 8]), &mut stream);
        encode_frame(0x80, &[b'b'; 70_000], Some([9, 9, 9, 9]), &mut stream);
        encode_frame(0x88, &[0x03, 0xE8, b'o', b'k'], Some([1, 1, 1, 1]), &mut stream);
        let whole = events(&mut FrameReader::new(config()), &stream);
        for cut in (0..stream.len()).step_by(7).chain([1, 2, 306, 307, 70_320]) {
            let cut = cut.min(stream.len());
            let mut first = FrameReader::new(config());
            let mut seen = events(&mut first, &stream[..cut]);
            if !first.can_save() {
                // Owes a control frame's end: drained by one more call.
                seen.extend(events(&mut first, &[]));
            }
            let mut saved = Writer::default();
            first.save(&mut saved);
            let saved = saved.into_bytes();
            let mut reading = Reader::new(&saved);
            let mut second = FrameReader::load(config(), &mut reading).expect("loads");
            reading.finish().unwrap();
            seen.extend(events(&mut second, &stream[cut..]));
            assert_eq!(seen, whole, "cut at {cut}");
        }
    }
}
