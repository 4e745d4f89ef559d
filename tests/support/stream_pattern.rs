//! The bytes a test's peers send through a tunnel, told apart by offset:
//! a byte lost, repeated, reordered or crossed into the other direction
//! shows as a mismatch at its offset.

/// The byte at offset `i` of a stream.
pub type Pattern = fn(u64) -> u8;

/// What clients send.
pub fn up(i: u64) -> u8 {
    (i % 251) as u8
}

/// What backends send: not [`up`] shifted, so that bytes of one direction
/// found in the other are caught.
pub fn down(i: u64) -> u8 {
    ((i * 7 + 3) % 253) as u8
}
