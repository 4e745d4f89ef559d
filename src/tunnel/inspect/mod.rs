//! Frame-aware tunnels: reading RFC 6455 frames as they pass.
//!
//! [`frame`] follows frame boundaries in one direction without buffering
//! messages; [`tunnel`] runs two pumps, one per direction, that act on what
//! they see (violations, close handshakes, limits); `keepalive` holds their
//! clocks (pings, pong, idle and close timeouts).

mod keepalive;
mod pump;
pub mod tunnel;
