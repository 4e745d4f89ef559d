//! Frame-aware tunnels (in progress).

pub mod frame;
