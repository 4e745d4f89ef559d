//! Development tools shipped in the binary, not part of the proxy's flow:
//! [`certgen`] makes test certificates, [`client`] is a command-line
//! WebSocket client and [`demo`] a small echo backend for the quick start.

pub mod certgen;
pub mod client;
pub mod demo;
