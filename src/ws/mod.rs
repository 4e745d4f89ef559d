//! RFC 6455 itself, apart from any proxying: the opening handshake's rules
//! ([`handshake`]), the frame reader ([`frame`]) and the close
//! codes ([`close`]).

pub mod close;
pub mod frame;
pub mod handshake;
