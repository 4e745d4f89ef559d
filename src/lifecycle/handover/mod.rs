//! A binary upgrade that drops no socket: on SIGUSR1 the binary now at the
//! path wsgate was started from is started beside the running one, takes
//! over its listening sockets and then its open tunnels, one by one, and
//! the old process exits once what could not move (TLS tunnels) has
//! drained.
//!
//! The two processes speak over a [`Channel`] the old one creates and the
//! new one inherits (its descriptor in `WSGATE_HANDOVER_FD`):
//!
//! ```text
//! old                                   new
//! Hello {protocol, version, pid}  ──▶   refuses a protocol it does not speak,
//!                                 ◀──   or a configuration that does not load:
//!                                       Refuse {reason} and exits; else Accept
//! Listeners {names} + sockets     ──▶   binds nothing: serves these
//!                                 ◀──   Taken (accepting), or Refuse
//! stops accepting, MAINPID=new to systemd
//! Main                            ──▶   READY=1, the watchdog from here on
//! Tunnel {description} + 2 sockets ──▶  runs it from where it stopped
//! …                                     (one message per tunnel)
//! Summary {moved, stayed}         ──▶
//! ```
//!
//! Until `Taken` the old process has changed nothing, so any failure (a
//! binary that does not start, refuses, or dies) leaves it serving as
//! before. Why a child and not an `exec` in place: the old process goes on
//! serving until the new one has proved it can, and drains its TLS
//! tunnels while the new one serves (the README's "Upgrade and rollback").

pub mod channel;

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;

pub use channel::Channel;

use crate::snapshot::{Reader, SnapshotError, Writer};

/// The layout of the messages and of a tunnel's description; a process
/// refuses a hand-over in any other.
pub const PROTOCOL: u32 = 1;

/// Where the new process finds its end of the channel.
pub const CHANNEL_ENV: &str = "WSGATE_HANDOVER_FD";

/// Makes a binary announce another protocol number: how the tests show a
/// new binary refusing a hand-over it does not understand.
const PROTOCOL_ENV: &str = "WSGATE_HANDOVER_PROTOCOL";

/// The protocol this process speaks.
pub fn protocol() -> u32 {
    std::env::var(PROTOCOL_ENV)
        .ok()
        .and_then(|protocol| protocol.parse().ok())
        .unwrap_or(PROTOCOL)
}

/// One message between the two processes.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Hello {
        protocol: u32,
        version: String,
        pid: u32,
    },
    Accept {
        version: String,
        pid: u32,
    },
    Refuse {
        reason: String,
    },
    /// The listeners' names, in the order of the sockets sent beside, then
    /// the admin listener's socket when `admin`.
    Listeners {
        names: Vec<String>,
        admin: bool,
    },
    Taken,
    /// systemd was told the new process is the main one: it may speak to
    /// systemd now (readiness, the watchdog).
    Main,
    /// A tunnel's description ([`crate::tunnel::relocate::MovedTunnel`]).
    Tunnel(Vec<u8>),
    Summary {
        moved: u64,
        stayed: u64,
    },
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Writer::default();
        match self {
            Message::Hello { protocol, version, pid } => out.u8(1).u32(*protocol).str(version).u32(*pid),
            Message::Accept { version, pid } => out.u8(2).str(version).u32(*pid),
            Message::Refuse { reason } => out.u8(3).str(reason),
            Message::Listeners { names, admin } => {
                out.u8(4).u32(names.len() as u32);
                for name in names {
                    out.str(name);
                }
                out.bool(*admin)
            }
            Message::Taken => out.u8(5),
            Message::Main => out.u8(8),
            Message::Tunnel(description) => out.u8(6).bytes(description),
            Message::Summary { moved, stayed } => out.u8(7).u64(*moved).u64(*stayed),
        };
        out.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, SnapshotError> {
        let mut input = Reader::new(bytes);
        let message = match input.u8()? {
            1 => {
                // The protocol comes first, so any later layout can still
                // be refused by number.
                let protocol = input.u32()?;
                if protocol != PROTOCOL {
                    return Ok(Message::Hello {
                        protocol,
                        version: String::new(),
                        pid: 0,
                    });
                }
                Message::Hello {
                    protocol,
                    version: input.str()?.to_owned(),
                    pid: input.u32()?,
                }
            }
            2 => Message::Accept {
                version: input.str()?.to_owned(),
                pid: input.u32()?,
            },
            3 => Message::Refuse {
                reason: input.str()?.to_owned(),
            },
            4 => {
                let count = input.u32()?;
                let names = (0..count.min(1024))
                    .map(|_| input.str().map(str::to_owned))
                    .collect::<Result<_, _>>()?;
                Message::Listeners {
                    names,
                    admin: input.bool()?,
                }
            }
            5 => Message::Taken,
            8 => Message::Main,
            6 => Message::Tunnel(input.bytes()?.to_vec()),
            7 => Message::Summary {
                moved: input.u64()?,
                stayed: input.u64()?,
            },
            _ => return Err(SnapshotError("unknown message")),
        };
        input.finish()?;
        Ok(message)
    }
}

/// Tells the old process this one cannot take over, and why: it goes on
/// serving, and logs the reason.
pub fn refuse(channel: &Channel, reason: &str) {
    channel.discard_pending();
    let refusal = Message::Refuse {
        reason: reason.to_owned(),
    };
    let _ = channel.send(&refusal.encode(), &[]);
}

static EXECUTABLE: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Notes the path this binary was started from, before anything can
/// replace the file there: an upgrade starts whatever is at that path then.
pub fn remember_executable() {
    EXECUTABLE.get_or_init(|| std::env::current_exe().ok());
}

/// The path [`remember_executable`] noted.
pub fn executable() -> Option<&'static Path> {
    EXECUTABLE.get_or_init(|| std::env::current_exe().ok()).as_deref()
}

/// Starts the binary at `path` with this process's arguments, handing it
/// the other end of a new channel. The variables that tell a process about
/// sockets or a watchdog meant for this one (socket activation's
/// `LISTEN_*`, `WATCHDOG_PID`) are not passed on.
pub fn spawn_successor(path: &Path) -> io::Result<(Child, Channel)> {
    let (ours, theirs) = Channel::pair()?;
    let fd: RawFd = theirs.as_raw_fd();
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| path.as_os_str().to_owned());
    let mut command = Command::new(path);
    command
        .arg0(arg0)
        .args(args)
        .env(CHANNEL_ENV, fd.to_string())
        .env_remove(PROTOCOL_ENV)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("WATCHDOG_PID");
    // SAFETY: between fork and exec only fcntl runs, which is
    // async-signal-safe; it lets the child inherit its end.
    unsafe {
        command.pre_exec(move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(theirs);
    Ok((child, ours))
}

/// The channel from the process this one takes over from, if it started
/// this one for that. Read once, at start, before any thread.
pub fn inherited() -> Option<Channel> {
    let fd: RawFd = std::env::var(CHANNEL_ENV).ok()?.parse().ok()?;
    // SAFETY: only one thread runs this early, and no other code reads it.
    unsafe { std::env::remove_var(CHANNEL_ENV) };
    // The descriptor must be a socket this process inherited open.
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: inherited for this purpose, owned by nothing else here; it
    // is made close-on-exec again so that no process we start inherits it.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        Some(Channel::from_raw(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_a_foreign_protocol_is_still_told() {
        let messages = [
            Message::Hello {
                protocol: PROTOCOL,
                version: "0.1.0+next".into(),
                pid: 42,
            },
            Message::Accept {
                version: "0.1.0".into(),
                pid: 43,
            },
            Message::Refuse { reason: "no".into() },
            Message::Listeners {
                names: vec!["plain".into(), "tls".into()],
                admin: true,
            },
            Message::Taken,
            Message::Main,
            Message::Tunnel(vec![1, 2, 3]),
            Message::Summary { moved: 10, stayed: 2 },
        ];
        for message in messages {
            assert_eq!(Message::decode(&message.encode()).unwrap(), message);
        }
        let mut future = Writer::default();
        future
            .u8(1)
            .u32(PROTOCOL + 1)
            .bytes(b"a layout this binary does not know");
        match Message::decode(&future.into_bytes()).unwrap() {
            Message::Hello { protocol, .. } => assert_eq!(protocol, PROTOCOL + 1),
            other => panic!("{other:?}"),
        }
    }
}
