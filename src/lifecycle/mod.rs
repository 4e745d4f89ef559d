//! The proxy's life beside the data flow: working with the service manager,
//! the memory allocator and the open-file limit.
//!
//! [`notify`] tells systemd when the proxy is ready, reloading or stopping,
//! and keeps its watchdog fed; [`listen_fds`] takes the listening sockets
//! systemd passes to a socket-activated service; [`memory`] gives the
//! memory of a burst of handshakes back once it is over; [`descriptors`]
//! raises the open-file limit at start and says what running out of
//! descriptors means; [`shutdown`] says what a shutdown waits for and
//! stops at once on a second signal; [`handover`] gives the listeners and
//! the open tunnels to a new binary at an upgrade; [`version`] is what the
//! binary calls itself. (Drain lives with
//! the tunnels it ends, `crate::tunnel::drain`; reload with the server it
//! reloads, `crate::server::reload`.) [`sparse_table`] shrinks the tables
//! kept per open tunnel once a surge is over.

pub mod descriptors;
pub mod handover;
pub mod listen_fds;
pub mod memory;
pub mod notify;
pub mod shutdown;
pub mod sparse_table;
pub mod version;
