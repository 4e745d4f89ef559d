//! Socket activation (sd_listen_fds(3)): listening sockets the service
//! manager opened and passed to us, used instead of binding our own.
//!
//! With `wsgate.socket`, systemd holds the listening sockets. They stay open
//! while the proxy restarts, so clients connecting meanwhile wait in the
//! kernel's backlog instead of being refused, and the proxy needs no
//! privilege to bind ports below 1024.
//!
//! systemd passes the sockets as descriptors 3, 4, … with `LISTEN_FDS` (how
//! many), `LISTEN_PID` (for which process: a variable inherited by another
//! process is not for it) and `LISTEN_FDNAMES` (each socket's
//! `FileDescriptorName=`, colon-separated). A passed socket serves the
//! listener whose name is its `FileDescriptorName=`, or else the listener
//! whose `listen` address it is bound to.

use std::collections::HashSet;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Socket, Type};
use tracing::{info, warn};

/// Whether the passed descriptors were taken: they are owned (and closed)
/// by whoever took them, so a second [`Activated::from_env`] in the same
/// process must not take them again.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The listening sockets passed to this process and not yet claimed by a
/// listener. Dropping it closes (and warns about) those left over: a socket
/// unit with a socket wsgate does not serve is a configuration mistake, and
/// keeping it open would have clients queue on it forever.
#[derive(Debug, Default)]
pub struct Activated {
    sockets: Vec<Passed>,
    /// Names of every configured listener: a socket named after one of them
    /// is kept for it, even if another listener's address would match.
    listener_names: HashSet<String>,
}

#[derive(Debug)]
struct Passed {
    fd: RawFd,
    /// `FileDescriptorName=`; `None` when systemd sent no names.
    name: Option<String>,
    address: SocketAddr,
    listener: TcpListener,
}

impl Activated {
    /// The sockets passed to this process (none when `LISTEN_PID` is not our
    /// pid or `LISTEN_FDS` is not set). Their descriptors get `FD_CLOEXEC`,
    /// so processes we start do not inherit them, and are put in
    /// non-blocking mode for tokio. A descriptor that is not a listening TCP
    /// socket is reported and not used.
    ///
    /// Only the first call in a process takes the descriptors; later calls
    /// find none. The environment is left as it is.
    pub fn from_env() -> Activated {
        if TAKEN.load(Ordering::Acquire) {
            return Activated::default();
        }
        let named = std::env::var_os("LISTEN_FDNAMES").is_some();
        let fds: Vec<(RawFd, Option<String>)> = match sd_notify::listen_fds_with_names() {
            Ok(fds) => fds.map(|(fd, name)| (fd, named.then_some(name))).collect(),
            Err(error) => {
                // A name list of the wrong length: the sockets are still ours.
                warn!(%error, "socket activation: LISTEN_FDNAMES ignored");
                match sd_notify::listen_fds() {
                    Ok(fds) => fds.map(|fd| (fd, None)).collect(),
                    Err(error) => {
                        warn!(%error, "socket activation: passed sockets ignored");
                        return Activated::default();
                    }
                }
            }
        };
        if fds.is_empty() || TAKEN.swap(true, Ordering::AcqRel) {
            return Activated::default();
        }
        let sockets = fds
            .into_iter()
            .filter_map(|(fd, name)| {
                // SAFETY: LISTEN_PID names this process, so systemd passed
                // these descriptors to it, and TAKEN makes this the only
                // place that takes ownership of them.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                Passed::new(fd, name, Socket::from(owned))
            })
            .collect();
        Activated {
            sockets,
            listener_names: HashSet::new(),
        }
    }

    /// Listening sockets handed over by the process this one takes over
    /// from at a binary upgrade ([`super::handover`]), by listener name.
    pub fn from_sockets(sockets: Vec<(String, TcpListener)>) -> Activated {
        let sockets = sockets
            .into_iter()
            .filter_map(|(name, listener)| {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
                Passed::new(fd, Some(name), Socket::from(listener))
            })
            .collect();
        Activated {
            sockets,
            listener_names: HashSet::new(),
        }
    }

    /// Keeps each socket named after one of `names` (the configured
    /// listeners) for that listener: matching by address never hands it to
    /// another one.
    pub fn for_listeners<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Activated {
        self.listener_names.extend(names.into_iter().map(str::to_owned));
        self
    }

    /// No passed socket is left.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The passed socket for listener `name` configured with `address`: the
    /// one whose `FileDescriptorName=` is `name`, or else one bound to
    /// `address` (and not named after another listener). It is non-blocking,
    /// ready for `tokio::net::TcpListener::from_std`.
    pub fn take(&mut self, name: &str, address: SocketAddr) -> Option<TcpListener> {
        let by_name = self.sockets.iter().position(|s| s.name.as_deref() == Some(name));
        let index = by_name.or_else(|| {
            self.sockets
                .iter()
                .position(|s| s.address == address && !s.name.as_ref().is_some_and(|n| self.listener_names.contains(n)))
        })?;
        let socket = self.sockets.remove(index);
        if socket.address == address {
            info!(listener = name, address = %socket.address, fd = socket.fd, "using the socket passed by the service manager");
        } else {
            info!(
                listener = name,
                address = %socket.address,
                configured = %address,
                fd = socket.fd,
                "using the socket passed by the service manager (named after the listener) instead of the configured address"
            );
        }
        Some(socket.listener)
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        for socket in self.sockets.drain(..) {
            warn!(
                fd = socket.fd,
                name = socket.name.as_deref().unwrap_or("-"),
                address = %socket.address,
                "socket passed by the service manager matches no listener (by FileDescriptorName= or address); closed"
            );
        }
    }
}

impl Passed {
    /// `socket` if it is a listening TCP socket, made non-blocking.
    fn new(fd: RawFd, name: Option<String>, socket: Socket) -> Option<Passed> {
        let shown = name.as_deref().unwrap_or("-").to_owned();
        match Passed::check(&socket) {
            Ok(Ok(address)) => Some(Passed {
                fd,
                name,
                address,
                listener: socket.into(),
            }),
            Ok(Err(what)) => {
                warn!(fd, name = %shown, "socket passed by the service manager is {what}, not a listening TCP socket (ListenStream=, Accept=no); closed");
                None
            }
            Err(error) => {
                // Not a socket we can inspect (or not open at all): leave the
                // descriptor alone rather than close what may not be ours.
                warn!(fd, name = %shown, %error, "descriptor passed by the service manager is unusable; ignored");
                let _ = socket.into_raw_fd();
                None
            }
        }
    }

    /// The bound address of a listening TCP socket, or what it is instead.
    fn check(socket: &Socket) -> io::Result<Result<SocketAddr, &'static str>> {
        if socket.r#type()? != Type::STREAM {
            return Ok(Err("not a stream socket"));
        }
        let Some(address) = socket.local_addr()?.as_socket() else {
            return Ok(Err("not an IP socket"));
        };
        if !is_listening(socket)? {
            return Ok(Err("not listening (a connection, as Accept=yes passes)"));
        }
        socket.set_nonblocking(true)?;
        Ok(Ok(address))
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn is_listening(socket: &Socket) -> io::Result<bool> {
    socket.is_listener()
}

/// Elsewhere there is no `SO_ACCEPTCONN` to ask; systemd is Linux-only anyway.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn is_listening(_socket: &Socket) -> io::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn passed(name: Option<&str>) -> Passed {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd();
        Passed::new(fd, name.map(str::to_owned), Socket::from(listener)).expect("a listening TCP socket")
    }

    fn activated(sockets: Vec<Passed>, names: &[&str]) -> Activated {
        Activated {
            sockets,
            listener_names: HashSet::new(),
        }
        .for_listeners(names.iter().copied())
    }

    #[test]
    fn the_name_wins_over_the_address() {
        let (a, b) = (passed(Some("plain")), passed(Some("tls")));
        let (a_addr, b_addr) = (a.address, b.address);
        let mut sockets = activated(vec![a, b], &["plain", "tls"]);
        // "tls" is configured at plain's socket's address: still its own socket.
        let tls = sockets.take("tls", a_addr).expect("socket named tls");
        assert_eq!(tls.local_addr().unwrap(), b_addr);
        let plain = sockets
            .take("plain", "127.0.0.1:1".parse().unwrap())
            .expect("socket named plain");
        assert_eq!(plain.local_addr().unwrap(), a_addr);
        assert!(sockets.is_empty());
    }

    #[test]
    fn an_unnamed_socket_matches_by_address_and_is_non_blocking() {
        let socket = passed(None);
        let address = socket.address;
        let mut sockets = activated(vec![socket], &["plain"]);
        assert!(sockets.take("plain", "127.0.0.1:1".parse().unwrap()).is_none());
        let listener = sockets.take("plain", address).expect("matched by address");
        assert_eq!(
            listener.accept().map_err(|e| e.kind()).unwrap_err(),
            io::ErrorKind::WouldBlock
        );
        assert!(sockets.take("plain", address).is_none(), "taken once");
    }

    #[test]
    fn a_socket_named_for_another_listener_is_not_taken_by_address() {
        let socket = passed(Some("tls"));
        let address = socket.address;
        let mut sockets = activated(vec![socket], &["plain", "tls"]);
        assert!(sockets.take("plain", address).is_none());
        assert!(sockets.take("tls", "127.0.0.1:1".parse().unwrap()).is_some());
    }

    #[test]
    fn a_socket_named_for_no_listener_still_matches_by_address() {
        let socket = passed(Some("wsgate.socket"));
        let address = socket.address;
        let mut sockets = activated(vec![socket], &["plain"]);
        assert!(sockets.take("plain", address).is_some());
    }

    #[test]
    fn only_listening_tcp_sockets_are_used() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = udp.as_raw_fd();
        assert!(Passed::new(fd, None, Socket::from(OwnedFd::from(udp))).is_none());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let fd = stream.as_raw_fd();
        assert!(Passed::new(fd, None, Socket::from(stream)).is_none());
    }

    #[test]
    fn without_listen_pid_nothing_is_passed() {
        // The test process is never started with LISTEN_PID set to its pid.
        assert!(Activated::from_env().is_empty());
    }
}
