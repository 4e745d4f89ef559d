//! The proxy's life beside the data flow: working with the service manager
//! and the memory allocator.
//!
//! [`notify`] tells systemd when the proxy is ready, reloading or stopping,
//! and keeps its watchdog fed; [`listen_fds`] takes the listening sockets
//! systemd passes to a socket-activated service; [`memory`] gives the
//! memory of a burst of handshakes back once it is over. (Drain lives with
//! the tunnels it ends, `crate::tunnel::drain`; reload with the server it
//! reloads, `crate::server::reload`.)

pub mod listen_fds;
pub mod memory;
pub mod notify;
