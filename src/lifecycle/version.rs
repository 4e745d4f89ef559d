//! What this binary calls itself: the package version, and a build label
//! stamped into the binary after it was built, if any.
//!
//! The label lets two builds of the same version be told apart (a hot fix,
//! a binary upgrade rehearsed with a copy): `wsgate --version`, the start
//! line, the hand-over ([`super::handover`]) and `wsgate_build_info` on
//! `/metrics` all show it. The slot is a fixed array found by its marker;
//! `tests/support` stamps copies of the binary with it.

use std::sync::OnceLock;

/// The marker, then room for a label of up to 32 bytes (NUL-padded).
const SLOT_LEN: usize = 24 + 32;

#[used]
static BUILD_LABEL_SLOT: [u8; SLOT_LEN] =
    *b"wsgate-build-label-slot:\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

/// The marker the slot starts with: a stamp writes the label right after it.
pub const BUILD_LABEL_MARKER: &[u8; 24] = b"wsgate-build-label-slot:";

/// `0.1.0`, or `0.1.0+label` for a stamped binary.
pub fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        // Read through a volatile load: the compiler would otherwise fold
        // the slot's build-time contents into this function.
        // SAFETY: a static array, read whole.
        let slot = unsafe { std::ptr::read_volatile(&BUILD_LABEL_SLOT) };
        let label = &slot[BUILD_LABEL_MARKER.len()..];
        let label = &label[..label.iter().position(|&b| b == 0).unwrap_or(label.len())];
        match std::str::from_utf8(label) {
            Ok(label) if !label.is_empty() => format!("{}+{label}", env!("CARGO_PKG_VERSION")),
            _ => env!("CARGO_PKG_VERSION").to_owned(),
        }
    })
}
