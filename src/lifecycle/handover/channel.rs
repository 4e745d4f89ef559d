//! The socket between the two processes of a binary upgrade: a Unix
//! `SOCK_SEQPACKET` pair, so each message arrives whole, with the sockets
//! it carries (`SCM_RIGHTS`) beside it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// The largest message: a tunnel's description with what it had read and
/// not yet written (two copy buffers at most) and hyper's leftovers.
const MAX_MESSAGE: usize = 1 << 20;
/// The most sockets one message carries (the listeners).
const MAX_FDS: usize = 64;

/// One end of the hand-over socket. Blocking: each side drives it from a
/// thread of its own.
pub struct Channel {
    socket: OwnedFd,
}

impl Channel {
    /// A connected pair, both ends close-on-exec.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into the array on success.
        let done = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if done != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned here.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        for socket in [&a, &b] {
            // Room for big messages where the system allows it.
            let size: libc::c_int = (MAX_MESSAGE * 2) as libc::c_int;
            // SAFETY: a valid socket and an int option value.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (&size as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        Ok((Channel { socket: a }, Channel { socket: b }))
    }

    /// The end a process inherited, by its descriptor number.
    ///
    /// # Safety
    /// `fd` must be an open descriptor that nothing else owns.
    pub unsafe fn from_raw(fd: RawFd) -> Channel {
        // SAFETY: the caller's promise.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        Channel { socket }
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Receives time out after `timeout` (`None`: never).
    pub fn set_receive_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = timeout.unwrap_or_default();
        let value = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: a valid socket and a timeval option value.
        let done = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&value as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        match done {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Sends one message with `fds` beside it.
    pub fn send(&self, message: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if fds.len() > MAX_FDS || message.len() > MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "hand-over message too large",
            ));
        }
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut iov = libc::iovec {
            iov_base: message.as_ptr() as *mut libc::c_void,
            iov_len: message.len(),
        };
        let fd_bytes = size_of_val(raw.as_slice()) as u32;
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
        let mut control = vec![0u8; space.max(1)];
        // SAFETY: msghdr is plain data; every field used is set below.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        if !raw.is_empty() {
            header.msg_control = control.as_mut_ptr().cast();
            header.msg_controllen = space as _;
            // SAFETY: the control buffer is CMSG_SPACE(fd_bytes) long, so the
            // first header and its data fit in it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&header);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
                std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), raw.len());
            }
        }
        loop {
            // SAFETY: header points at live buffers for the call's length.
            let sent = unsafe { libc::sendmsg(self.socket.as_raw_fd(), &header, libc::MSG_NOSIGNAL) };
            if sent >= 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    /// Reads and drops what has arrived and not been read, without waiting:
    /// a process that exits with unread messages resets the channel, and
    /// the other end would then lose what was sent to it last.
    pub fn discard_pending(&self) {
        let mut scratch = [0u8; 64];
        loop {
            // SAFETY: a valid socket and a buffer of the given length; a
            // message longer than the buffer is dropped whole (SEQPACKET),
            // and descriptors beside it are closed by the kernel.
            let read = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    scratch.as_mut_ptr().cast(),
                    scratch.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if read <= 0 {
                return;
            }
        }
    }

    /// The next message and the descriptors beside it; `None` once the
    /// other process closed its end (or exited).
    pub fn receive(&self) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        let mut message = vec![0u8; MAX_MESSAGE];
        let mut iov = libc::iovec {
            iov_base: message.as_mut_ptr().cast(),
            iov_len: message.len(),
        };
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<RawFd>()) as u32) } as usize;
        let mut control = vec![0u8; space];
        // SAFETY: msghdr is plain data; every field used is set below.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = space as _;
        let received = loop {
            // SAFETY: header points at live buffers for the call's length.
            let received = unsafe { libc::recvmsg(self.socket.as_raw_fd(), &mut header, libc::MSG_CMSG_CLOEXEC) };
            if received >= 0 {
                break received as usize;
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        };
        let mut fds = Vec::new();
        // SAFETY: the kernel filled the control buffer; the CMSG macros walk
        // it within msg_controllen, and each SCM_RIGHTS descriptor is new
        // in this process and owned by nobody else.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&header);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                    for i in 0..count {
                        fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&header, cmsg);
            }
        }
        if header.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "hand-over message truncated",
            ));
        }
        if received == 0 && fds.is_empty() {
            return Ok(None);
        }
        message.truncate(received);
        Ok(Some((message, fds)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn messages_arrive_whole_with_their_sockets() {
        let (a, b) = Channel::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        a.send(b"first", &[server.as_fd()]).unwrap();
        a.send(&[7u8; 100_000], &[]).unwrap();
        drop(server);
        let (message, mut fds) = b.receive().unwrap().expect("a message");
        assert_eq!(message, b"first");
        assert_eq!(fds.len(), 1);
        let mut moved = std::net::TcpStream::from(fds.remove(0));
        client.write_all(b"hello").unwrap();
        let mut read = [0u8; 5];
        moved.read_exact(&mut read).unwrap();
        assert_eq!(&read, b"hello", "the socket works in its new owner");
        let (message, fds) = b.receive().unwrap().expect("a message");
        assert_eq!(message.len(), 100_000);
        assert!(fds.is_empty());
        drop(a);
        assert!(b.receive().unwrap().is_none(), "end of the other side");
    }
}
