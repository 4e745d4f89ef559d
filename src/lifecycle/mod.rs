//! The proxy's life beside the data flow: asking open tunnels to end.
//!
//! [`drain`] carries a request to end gracefully, with the close code both
//! sides of an inspected tunnel are sent.

pub mod drain;
