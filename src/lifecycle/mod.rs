//! The proxy's life beside the data flow: asking open tunnels to end, and
//! working with the service manager.
//!
//! [`drain`] carries a request to end gracefully, with the close code both
//! sides of an inspected tunnel are sent. [`notify`] tells systemd when the
//! proxy is ready, reloading or stopping, and keeps its watchdog fed;
//! [`listen_fds`] takes the listening sockets systemd passes to a
//! socket-activated service. [`reload`] switches a running server to a new
//! configuration without dropping a socket; [`memory`] gives the memory of
//! a burst of handshakes back once it is over.

pub mod listen_fds;
pub mod memory;
pub mod notify;
