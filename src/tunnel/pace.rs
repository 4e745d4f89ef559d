//! Per-socket rates: a [`TokenBucket`], and [`Paced`], a client's socket
//! read no faster than `[route.limits] client_bytes_per_second`.
//!
//! A paced reader waits, before each read, until the client's bucket holds
//! enough, and reads no more than the bucket holds. What the client sends
//! beyond that stays in the kernel's socket buffers; once they are full,
//! TCP's flow control holds the sender back. wsgate itself buffers nothing
//! for it: a waiting reader holds no copy buffer ([`super::pool`] lends one
//! per read, and a read that waits gives it back), only its timer.
//!
//! The admission limiters ([`crate::admission::rate_limit`]) are governor's
//! GCRA, shared between tasks through atomics, and answer yes or no for a
//! count known beforehand. A read is different: it must be cut to what the
//! bucket holds and charged for what it brought, which may be less; and the
//! bucket belongs to one task. Hence this small bucket, used for bytes here
//! and for messages by the inspected pump.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::pool::LARGE_BUFFER_SIZE;
use crate::config::SocketRate;

/// Tokens (bytes, messages) that refill at `per_second` up to `burst`; a
/// new bucket is full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    /// What the bucket held at `updated`. Fractions are kept, so that many
    /// small refills add up to the rate exactly.
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub fn new(rate: SocketRate, now: Instant) -> TokenBucket {
        TokenBucket {
            // At least 1 by the configuration's checks; kept so here too,
            // so that a wait is never a division by zero.
            per_second: rate.per_second.max(1) as f64,
            burst: rate.burst.max(1) as f64,
            tokens: rate.burst.max(1) as f64,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        if now > self.updated {
            let elapsed = (now - self.updated).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
            self.updated = now;
        }
    }

    /// What the bucket holds at `now`, fractions included: a bucket moved
    /// to another process ([`super::relocate`]) goes on from there.
    pub fn level(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// A bucket for `rate` holding `tokens` (at most its burst) at `now`.
    pub fn at_level(rate: SocketRate, tokens: f64, now: Instant) -> TokenBucket {
        let mut bucket = TokenBucket::new(rate, now);
        bucket.tokens = tokens.min(bucket.burst);
        bucket
    }

    /// The whole tokens the bucket holds at `now`.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        // `as` saturates: a bucket in debt holds 0.
        self.tokens as u64
    }

    /// Spends `n` tokens. More than [`available`](Self::available) said
    /// leaves the bucket in debt, repaid before it holds any again.
    pub fn take(&mut self, n: u64) {
        self.tokens -= n as f64;
    }

    /// Takes one token at `now`; false when there is none.
    pub fn try_take_one(&mut self, now: Instant) -> bool {
        if self.available(now) == 0 {
            return false;
        }
        self.take(1);
        true
    }

    /// When the bucket will hold `n` tokens (at most its burst), as of its
    /// last refill.
    pub fn ready_at(&self, n: u64) -> Instant {
        let missing = (n as f64).min(self.burst) - self.tokens;
        if missing <= 0.0 {
            return self.updated;
        }
        // At most burst / per_second; a day stands in for anything that
        // does not fit in a Duration.
        let wait = Duration::try_from_secs_f64(missing / self.per_second).unwrap_or(Duration::from_secs(86_400));
        self.updated.checked_add(wait).unwrap_or(self.updated)
    }
}

/// A paced reader wakes at most this often: it waits for a twentieth of a
/// second's worth of bytes (at least 1, at most one large read buffer, and
/// never more than the burst) rather than reading a byte at a time.
const WAKE_UPS_PER_SECOND: u64 = 20;

/// A stream whose reads are held to a rate; its writes pass through.
pub struct Paced<T> {
    io: T,
    bucket: TokenBucket,
    /// Tokens a read waits for when the bucket is short.
    quantum: u64,
    /// The wait for `quantum` tokens: made at the first wait, then reset.
    wait: Option<Pin<Box<Sleep>>>,
}

impl<T> Paced<T> {
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The same pacing, the bucket as it is, over what `f` makes of the
    /// stream (its reading half, when a tunnel splits it).
    pub fn map_io<U>(self, f: impl FnOnce(T) -> U) -> Paced<U> {
        Paced {
            io: f(self.io),
            bucket: self.bucket,
            quantum: self.quantum,
            wait: self.wait,
        }
    }

    pub fn new(io: T, rate: SocketRate) -> Paced<T> {
        let quantum = (rate.per_second / WAKE_UPS_PER_SECOND)
            .clamp(1, LARGE_BUFFER_SIZE as u64)
            .min(rate.burst.max(1));
        Paced {
            io,
            bucket: TokenBucket::new(rate, Instant::now()),
            quantum,
            wait: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Paced<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let mut allowed = this.bucket.available(Instant::now());
        if allowed < this.quantum {
            let at = this.bucket.ready_at(this.quantum);
            let wait = match &mut this.wait {
                Some(wait) => {
                    if wait.deadline() != at {
                        wait.as_mut().reset(at);
                    }
                    wait
                }
                None => {
                    debug!(rate = this.bucket.per_second, "client held to its byte rate");
                    this.wait.insert(Box::pin(tokio::time::sleep_until(at)))
                }
            };
            ready!(wait.as_mut().poll(cx));
            // The deadline passed, so the quantum is there (to the
            // rounding of the clock's arithmetic, which `take` absorbs).
            allowed = allowed.max(this.quantum);
        }
        let cap = usize::try_from(allowed).unwrap_or(usize::MAX).min(buf.remaining());
        let mut capped = ReadBuf::new(buf.initialize_unfilled_to(cap));
        ready!(Pin::new(&mut this.io).poll_read(cx, &mut capped))?;
        let n = capped.filled().len();
        buf.advance(n);
        this.bucket.take(n as u64);
        Poll::Ready(Ok(()))
    }
}

super::write_through!(Paced);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn rate(per_second: u64, burst: u64) -> SocketRate {
        SocketRate { per_second, burst }
    }

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(rate(100, 10), start);
        assert_eq!(bucket.available(start), 10, "a new bucket is full");
        bucket.take(10);
        assert_eq!(bucket.available(start), 0);
        assert!(!bucket.try_take_one(start));
        // One token per 10 ms; fractions add up. (Clock sums are f64, so
        // the checks stay a millisecond off the exact boundaries.)
        let later = |ms| start + Duration::from_millis(ms);
        assert_eq!(bucket.available(later(5)), 0);
        assert_eq!(bucket.available(later(11)), 1);
        assert!(bucket.try_take_one(later(11)));
        let at = bucket.ready_at(3);
        assert!(at > later(39) && at < later(41), "{:?}", at - start);
        assert_eq!(bucket.available(later(39)), 2);
        assert_eq!(bucket.available(later(41)), 3);
        assert_eq!(bucket.available(later(10_000)), 10, "never above the burst");
        // A read that brought more than was there is repaid first.
        bucket.take(15);
        assert_eq!(bucket.available(later(10_049)), 0);
        assert_eq!(bucket.available(later(10_061)), 1);
    }

    #[test]
    fn a_wait_is_at_most_a_burst_away_and_never_panics() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(rate(1, u64::MAX), now);
        bucket.take(u64::MAX);
        let at = bucket.ready_at(u64::MAX);
        assert!(at >= now);
        let bucket = TokenBucket::new(rate(1_000, 1_000), now);
        assert_eq!(bucket.ready_at(1), now, "a full bucket is ready now");
    }

    /// Reads are cut to what the bucket holds and wait for the rest; the
    /// bytes come through in order, at the rate.
    #[tokio::test]
    async fn a_paced_reader_reads_no_faster_than_its_rate() {
        let (mut client, proxy_side) = tokio::io::duplex(1 << 20);
        let sent: Vec<u8> = (0..40 * 1024u32).map(|i| i as u8).collect();
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut paced = Paced::new(proxy_side, rate(96 * 1024, 16 * 1024));
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buffer = vec![0; 64 * 1024];
        while got.len() < sent.len() {
            let n = paced.read(&mut buffer).await.unwrap();
            assert!(n > 0);
            assert!(n <= 16 * 1024, "a read takes at most what the bucket holds: {n}");
            got.extend_from_slice(&buffer[..n]);
        }
        assert_eq!(got, sent);
        // 16 KiB at once (the burst), then 24 KiB at 96 KiB/s: 250 ms (a
        // loaded machine may take longer, never shorter).
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(240) && took <= Duration::from_millis(2_000),
            "{took:?}"
        );
        assert_eq!(paced.read(&mut buffer).await.unwrap(), 0, "the end still comes");
    }

    #[tokio::test]
    async fn writes_pass_through_a_paced_stream() {
        let (mut client, proxy_side) = tokio::io::duplex(1024);
        let mut paced = Paced::new(proxy_side, rate(1, 1));
        paced.write_all(b"hello").await.unwrap();
        let mut got = [0; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
