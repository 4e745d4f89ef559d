//! RFC 6455 itself, apart from any proxying: the opening handshake's rules
//! ([`handshake`]) and the frame reader ([`frame`]).

pub mod frame;
pub mod handshake;
