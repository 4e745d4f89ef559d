//! A lingering close: reading on, and discarding, what a peer still sends
//! after wsgate's last word to it (its own close frame, an error answer)
//! and its write shutdown, until the peer is done or a deadline passes.
//!
//! A socket closed with unread bytes in its receive queue, or that receives
//! more after its close, is answered by the kernel with a reset, and a
//! reset can reach the peer before what wsgate wrote just before it: a
//! client still sending a message too big reads a reset where its 1009
//! was, and most WebSocket stacks (browsers among them) give up at the
//! first reset. So wsgate shuts down its writes first (a TCP FIN, or TLS
//! `close_notify` and then the FIN) and keeps reading until the peer has
//! answered (its close frame), ended its stream, or had its time: nginx's
//! `lingering_close` does the same for HTTP. The bytes go through one
//! buffer borrowed for the while ([`super::pool`]); nothing accumulates.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use super::pool;

/// How a lingering close ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lingered {
    /// The peer answered (`answered` said so for what it sent).
    Answered,
    /// The peer ended its stream, or it failed.
    Ended,
    /// The deadline passed first.
    TimedOut,
}

/// Reads `src` and drops what it reads, until `answered` says a read
/// completed the peer's answer, the stream ends, or `deadline` passes.
/// `deadline` is asked again after every read and every time it passes, so
/// a caller that learns its deadline only later (when the other direction
/// has shut down its writes) can move it. Returns how it ended and the
/// bytes dropped.
pub async fn discard<R: AsyncRead + Unpin>(
    src: &mut R,
    mut deadline: impl FnMut() -> Instant,
    mut answered: impl FnMut(&[u8]) -> bool,
) -> (Lingered, u64) {
    let mut buffer = pool::lend();
    let mut dropped = 0;
    loop {
        let until = deadline();
        if until <= Instant::now() {
            return (Lingered::TimedOut, dropped);
        }
        let read: io::Result<usize> = match tokio::time::timeout_at(until, src.read(&mut buffer)).await {
            Ok(read) => read,
            // Asked again at the top: the deadline may have moved.
            Err(_) => continue,
        };
        match read {
            Ok(0) | Err(_) => return (Lingered::Ended, dropped),
            Ok(n) => {
                dropped += n as u64;
                if answered(&buffer[..n]) {
                    return (Lingered::Answered, dropped);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn reads_until_the_answer() {
        let (mut near, mut far) = tokio::io::duplex(64);
        far.write_all(b"more data, then BYE").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        let (how, dropped) = discard(
            &mut near,
            || deadline,
            |bytes| {
                seen.extend_from_slice(bytes);
                seen.ends_with(b"BYE")
            },
        )
        .await;
        assert_eq!((how, dropped), (Lingered::Answered, 19));
    }

    #[tokio::test]
    async fn reads_until_the_end_of_stream() {
        let (mut near, mut far) = tokio::io::duplex(64);
        far.write_all(&[1; 40]).await.unwrap();
        drop(far);
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(discard(&mut near, || deadline, |_| false).await, (Lingered::Ended, 40));
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline_and_follows_it_when_it_moves() {
        let (mut near, _far) = tokio::io::duplex(64);
        let start = Instant::now();
        let mut asked = 0;
        // Unknown at first (a guess soon), then known: later.
        let deadline = || {
            asked += 1;
            match asked {
                1 => start + Duration::from_millis(50),
                _ => start + Duration::from_millis(200),
            }
        };
        assert_eq!(discard(&mut near, deadline, |_| false).await, (Lingered::TimedOut, 0));
        assert!(start.elapsed() >= Duration::from_millis(200), "{:?}", start.elapsed());
    }
}
