//! Frame-aware tunnels: reading RFC 6455 frames as they pass.
//!
//! [`tunnel`] runs two pumps, one per direction, each following frame
//! boundaries with the frame reader ([`crate::ws::frame`]) and acting on
//! what it sees (violations, close handshakes, limits); the pump's
//! `keepalive` holds its clocks (pings, pong, idle and close timeouts);
//! `shared` is what both pumps read and write, among it the orders one
//! gives the other (`mailbox`).

mod mailbox;
mod pump;
mod saved;
mod shared;
pub mod tunnel;

pub use saved::Saved;
pub use shared::Settings;
