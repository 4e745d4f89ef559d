//! Frame-aware tunnels: reading RFC 6455 frames as they pass.
//!
//! [`frame`] follows frame boundaries in one direction without buffering
//! messages; [`tunnel`] runs two of them, one per direction, and acts on what
//! they see (violations, close handshakes, keepalive, limits).

pub mod frame;
pub mod tunnel;
