//! Development tools shipped in the binary, not part of the proxy's flow:
//! [`certgen`] makes test certificates, [`client`] is a command-line
//! WebSocket client, [`demo`] a small echo backend for the quick start and
//! [`manual`] writes shell completions and man pages.

pub mod certgen;
pub mod client;
pub mod demo;
pub mod manual;
