//! An inspected tunnel written down between two reads of each direction,
//! for a move to another process ([`crate::tunnel::relocate`]): its
//! settings, its counters and clocks, and per direction the frame reader
//! and the bytes held back for it.

use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::shared::{Settings, Shared, Side};
use crate::config::{Inspect, SocketRate};
use crate::snapshot::{Reader, SnapshotError, Writer};
use crate::telemetry::TunnelMetrics;
use crate::tunnel::identity::Identity;
use crate::ws::frame::{Direction, FrameReader, ReaderConfig};

/// The most a pump holds back between reads: a whole control frame, its
/// header (2 + 4 bytes) and payload (125), or a data frame's header (14).
pub(super) const HELD_MAX: usize = 2 + 4 + 125;

/// Everything an inspected tunnel needs to go on elsewhere.
pub struct Saved {
    pub(super) settings: Settings,
    /// Per side, when its last bytes arrived, in milliseconds since the
    /// tunnel opened.
    pub(super) heard: [u64; 2],
    /// When a data frame last passed, in milliseconds since it opened.
    pub(super) data: u64,
    pub(super) bytes: [u64; 2],
    pub(super) frames: [u64; 2],
    /// The ping wsgate sent to each side and not yet seen answered: its
    /// number, and how long ago.
    pub(super) ping: [Option<(u32, Duration)>; 2],
    pub(super) next_ping: u32,
    pub(super) last_rtt: Option<Duration>,
    pub(super) pongs: u32,
    pub(super) drain_place: f32,
    /// Per direction, by the side it reads from.
    pub(super) pumps: [SavedPump; 2],
}

/// One direction, between two reads.
pub struct SavedPump {
    pub(super) reader: FrameReader,
    /// The start of a frame not yet complete enough to judge, already fed
    /// to the reader: it goes in front of the next read.
    pub(super) held: Vec<u8>,
    /// What the client's message-rate bucket held.
    pub(super) message_tokens: Option<f64>,
}

/// The frame reader of the pump reading from `from`, as the pump makes it.
pub(super) fn reader_config(from: Side, settings: &Settings) -> ReaderConfig {
    let inspect = &settings.inspect;
    ReaderConfig {
        direction: match from {
            Side::Client => Direction::ClientToServer,
            Side::Backend => Direction::ServerToClient,
        },
        enforce_masking: inspect.enforce_masking,
        allow_rsv1: settings.deflate,
        max_frame_size: Some(inspect.max_frame_size),
        max_message_size: Some(inspect.max_message_size),
    }
}

impl Saved {
    pub fn save(&self, out: &mut Writer) {
        write_settings(out, &self.settings);
        for side in 0..2 {
            out.u64(self.heard[side]).u64(self.bytes[side]).u64(self.frames[side]);
            out.option(self.ping[side], |out, (id, ago)| {
                out.u32(id).duration(ago);
            });
        }
        out.u64(self.data)
            .u32(self.next_ping)
            .option(self.last_rtt, |out, rtt| {
                out.duration(rtt);
            })
            .u32(self.pongs)
            .f64(f64::from(self.drain_place));
        for pump in &self.pumps {
            pump.reader.save(out);
            out.bytes(&pump.held).option(pump.message_tokens, |out, tokens| {
                out.f64(tokens);
            });
        }
    }

    pub fn load(input: &mut Reader<'_>) -> Result<Saved, SnapshotError> {
        let settings = read_settings(input)?;
        let mut heard = [0; 2];
        let mut bytes = [0; 2];
        let mut frames = [0; 2];
        let mut ping = [None; 2];
        for side in 0..2 {
            heard[side] = input.u64()?;
            bytes[side] = input.u64()?;
            frames[side] = input.u64()?;
            ping[side] = input.option(|input| Ok((input.u32()?, input.duration()?)))?;
        }
        let data = input.u64()?;
        let next_ping = input.u32()?;
        let last_rtt = input.option(Reader::duration)?;
        let pongs = input.u32()?;
        let drain_place = input.f64()? as f32;
        let mut pump = |from: Side| -> Result<SavedPump, SnapshotError> {
            let reader = FrameReader::load(reader_config(from, &settings), input)?;
            let held = input.bytes()?.to_vec();
            if held.len() > HELD_MAX {
                return Err(SnapshotError("held bytes over the limit"));
            }
            let message_tokens = input.option(Reader::f64)?;
            Ok(SavedPump {
                reader,
                held,
                message_tokens,
            })
        };
        let pumps = [pump(Side::Client)?, pump(Side::Backend)?];
        Ok(Saved {
            settings,
            heard,
            data,
            bytes,
            frames,
            ping,
            next_ping,
            last_rtt,
            pongs,
            drain_place,
            pumps,
        })
    }
}

fn write_settings(out: &mut Writer, settings: &Settings) {
    let inspect = &settings.inspect;
    out.bool(settings.deflate)
        .duration(inspect.ping_interval)
        .duration(inspect.pong_timeout)
        .bool(inspect.ping_backend)
        .option(inspect.idle_timeout, |out, idle| {
            out.duration(idle);
        })
        .duration(inspect.close_timeout)
        .u64(inspect.max_frame_size)
        .u64(inspect.max_message_size)
        .bool(inspect.enforce_masking)
        .option(inspect.client_messages, |out, rate| {
            out.u64(rate.per_second).u64(rate.burst);
        });
}

fn read_settings(input: &mut Reader<'_>) -> Result<Settings, SnapshotError> {
    let deflate = input.bool()?;
    let inspect = Inspect {
        ping_interval: input.duration()?,
        pong_timeout: input.duration()?,
        ping_backend: input.bool()?,
        idle_timeout: input.option(Reader::duration)?,
        close_timeout: input.duration()?,
        max_frame_size: input.u64()?,
        max_message_size: input.u64()?,
        enforce_masking: input.bool()?,
        client_messages: input.option(|input| {
            Ok(SocketRate {
                per_second: input.u64()?,
                burst: input.u64()?,
            })
        })?,
    };
    Ok(Settings { inspect, deflate })
}

impl Shared {
    /// The shared part of a tunnel moved from another process, `age` old.
    pub(super) fn restore(saved: &Saved, age: Duration, metrics: TunnelMetrics, identity: Identity) -> Shared {
        let now = Instant::now();
        let mut shared = Shared::new(saved.settings.clone(), metrics, identity);
        shared.started = now.checked_sub(age).unwrap_or(now);
        shared.opened_ms = super::shared::coarse_ms().saturating_sub(age.as_millis() as u64);
        shared.heard = saved.heard.map(AtomicU64::new);
        shared.data = AtomicU64::new(saved.data);
        shared.bytes = saved.bytes.map(AtomicU64::new);
        shared.frames = saved.frames.map(AtomicU64::new);
        shared.drain_place = saved.drain_place;
        {
            let state = shared.state.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
            state.ping = saved
                .ping
                .map(|ping| ping.map(|(id, ago)| (id, now.checked_sub(ago).unwrap_or(now))));
            state.next_ping = saved.next_ping;
            state.last_rtt = saved.last_rtt;
            state.pongs = saved.pongs;
        }
        shared
    }

    /// What [`Shared::restore`] takes back, with the two directions' parts.
    pub(super) fn save(&self, pumps: [SavedPump; 2]) -> Saved {
        let load = |counters: &[AtomicU64; 2]| counters.each_ref().map(|c| c.load(Ordering::Relaxed));
        let state = self.state();
        Saved {
            settings: self.settings.clone(),
            heard: load(&self.heard),
            data: self.data.load(Ordering::Relaxed),
            bytes: load(&self.bytes),
            frames: load(&self.frames),
            ping: state.ping.map(|ping| ping.map(|(id, at)| (id, at.elapsed()))),
            next_ping: state.next_ping,
            last_rtt: state.last_rtt,
            pongs: state.pongs,
            drain_place: self.drain_place,
            pumps,
        }
    }
}
