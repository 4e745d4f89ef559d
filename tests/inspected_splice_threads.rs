//! Splice threads for inspected tunnels (`[route.inspect]`) against a real
//! proxy: a busy inspected tunnel whose sides are plain TCP leaves tokio's
//! workers for a splice thread (the `wsgate_splice_thread_tunnels` gauge)
//! and carries data frames there byte for byte (frames of every length
//! class, fragmented messages, a 1 MiB frame over many reads), counted as
//! on the runtime; a client's close, a ping either way (one between the
//! fragments of a message), a frame that breaks the protocol from either
//! side, a message over `max_message_size`, a backend reset, the
//! keepalive ping, the idle timeout and a shutdown each bring it back to
//! the runtime, whose pumps answer as they do for a tunnel that never
//! moved (the close codes of `tests/inspect.rs` and
//! `tests/inspect_timers.rs`), and it moves again after more traffic;
//! rebalancing sheds tunnels from their threads with 1012. A
//! route with `max_messages_per_second` or a paced client, a TLS client,
//! and `[global] splice_threads = 0` keep their tunnels on the runtime.
//!
//! The gauge counts tunnels in the whole process and the thread count is
//! a process-wide setting (the last proxy started sets it): every test here
//! holds [`LOCK`] for its whole run, as the tests of one binary run in
//! parallel and their proxies run in this process.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::stream_pattern::{down, up, Pattern};
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Held by each test for its whole run (see the module's comment).
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const GAUGE: &str = "wsgate_splice_thread_tunnels";
const BYTES: &str = "wsgate_tunnel_bytes_total";
const FRAMES: &str = "wsgate_tunnel_frames_total";
const CLOSES: &str = "wsgate_close_codes_total";
const ENDED: &str = "wsgate_tunnel_duration_seconds_count";
const CLIENT_TO_BACKEND: &[(&str, &str)] = &[("route", "all"), ("direction", "client_to_backend")];
const BACKEND_TO_CLIENT: &[(&str, &str)] = &[("route", "all"), ("direction", "backend_to_client")];

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// The bound on moving a few MiB (the tests are built without optimisation).
const TRAFFIC_LIMIT: Duration = Duration::from_secs(60);

/// Reads in pieces of at most this size.
const CHUNK: usize = 64 * 1024;

/// The proxy's config: `global` keys, listener `plain`, inspected route
/// `all` (with `route`: `[route.inspect]` keys, then any other table of
/// the route) to `backend`, the admin listener.
fn proxy_toml(backend: SocketAddr, global: &str, route: &str) -> String {
    inspect_config(&[backend], None, route).replacen("[global]\n", &format!("[global]\n{global}"), 1) + "\n" + ADMIN
}

/// Binds the proxy for `toml`, runs it; returns it with its admin address.
async fn start_with_admin(toml: &str) -> (ProxyHandle, SocketAddr) {
    let (server, names) = bind_proxy(toml).await;
    let admin = server.admin_addr().expect("the config has [admin]");
    (run_proxy(server, names), admin)
}

/// A raw backend, and a proxy for `global` and `route` (see [`proxy_toml`])
/// in front of it, with no tunnel on a splice thread yet.
async fn setup(global: &str, route: &str) -> (RawBackend, ProxyHandle, SocketAddr) {
    let backend = RawBackend::start(false, None).await;
    let (proxy, admin) = start_with_admin(&proxy_toml(backend.addr, global, route)).await;
    gauge_becomes(admin, 0.0, "no tunnel on a splice thread before the test's").await;
    (backend, proxy, admin)
}

/// A tunnel through the proxy: the client past its 101, and the backend's
/// end of it past its handshake.
async fn open_tunnel(proxy: &ProxyHandle, backend: &mut RawBackend) -> (TcpStream, TcpStream) {
    let client = raw_client(proxy.addr("plain")).await;
    let tunnel = backend.next_conn().await;
    (client, tunnel)
}

// ---------------------------------------------------------------- frames

/// The frames one peer sends, as the bytes on the wire: masked from a
/// client (RFC 6455 §5.3), not from a backend. Payloads follow the peer's
/// pattern (letters in text messages), on from one frame to the next.
struct Frames {
    masked: bool,
    pattern: Pattern,
    next: u64,
    bytes: Vec<u8>,
    count: u64,
}

impl Frames {
    fn client() -> Frames {
        Frames::new(true, up)
    }

    fn backend() -> Frames {
        Frames::new(false, down)
    }

    fn new(masked: bool, pattern: Pattern) -> Frames {
        Frames {
            masked,
            pattern,
            next: 0,
            bytes: Vec::new(),
            count: 0,
        }
    }

    /// The same peer's frames from here on: their payloads go on from
    /// where these ended (no two phases of a test send the same bytes).
    fn then(&self) -> Frames {
        Frames {
            next: self.next,
            ..Frames::new(self.masked, self.pattern)
        }
    }

    /// A frame with first byte `b0` and `payload`.
    fn frame(mut self, b0: u8, payload: &[u8]) -> Frames {
        self.bytes.extend_from_slice(&encode(b0, self.masked, payload));
        self.count += 1;
        self
    }

    /// The next `len` bytes of the pattern; letters for a text message.
    fn payload(&mut self, len: usize, text: bool) -> Vec<u8> {
        let pattern = self.pattern;
        let payload = (self.next..self.next + len as u64)
            .map(|i| if text { b'a' + pattern(i) % 26 } else { pattern(i) })
            .collect();
        self.next += len as u64;
        payload
    }

    fn binary(mut self, len: usize) -> Frames {
        let payload = self.payload(len, false);
        self.frame(0x82, &payload)
    }

    fn text(mut self, len: usize) -> Frames {
        let payload = self.payload(len, true);
        self.frame(0x81, &payload)
    }

    /// One message in fragments of `lens`: a text or binary frame, then
    /// continuations, the last with FIN.
    fn fragmented(mut self, text: bool, lens: &[usize]) -> Frames {
        for (i, &len) in lens.iter().enumerate() {
            let opcode = match (i, text) {
                (0, true) => 0x1,
                (0, false) => 0x2,
                _ => 0x0,
            };
            let fin = if i + 1 == lens.len() { 0x80 } else { 0 };
            let payload = self.payload(len, text);
            self = self.frame(fin | opcode, &payload);
        }
        self
    }

    /// Past the 16 KiB a tunnel carries before it moves: 64 KiB in 4 KiB
    /// binary frames.
    fn warm_up(mut self) -> Frames {
        for _ in 0..16 {
            self = self.binary(4 * KIB);
        }
        self
    }

    /// Frames of each length encoding and its edges (7-bit, 16-bit, 64-bit
    /// lengths), text and binary, two fragmented messages, one with pieces
    /// larger than a read, and a 1 MiB frame that arrives over many reads.
    fn assorted(mut self) -> Frames {
        for (i, len) in [0, 1, 2, 3, 124, 125, 126, 127, 1000, 4096, 65535, 65536, 65537, 200_000]
            .into_iter()
            .enumerate()
        {
            self = if i % 2 == 0 { self.text(len) } else { self.binary(len) };
        }
        self.fragmented(true, &[4, 7, 7])
            .binary(10)
            .fragmented(false, &[100 * KIB, 1, 0, 150 * KIB])
            .binary(MIB)
            .text(5)
    }
}

/// A close frame from a client (masked) or a backend.
fn close_frame(masked: bool, code: u16, reason: &str) -> Vec<u8> {
    encode(0x88, masked, &close_payload(code, reason))
}

/// Reads exactly `want.len()` bytes and checks that they are `want`.
async fn read_expecting<R: AsyncRead + Unpin>(from: &mut R, want: &[u8], who: &str) {
    let mut buffer = vec![0u8; CHUNK];
    let mut done = 0;
    while done < want.len() {
        let limit = (want.len() - done).min(CHUNK);
        let n = from
            .read(&mut buffer[..limit])
            .await
            .unwrap_or_else(|e| panic!("{who}: read failed after {done} of {} bytes: {e}", want.len()));
        assert!(n > 0, "{who}: the stream ended after {done} of {} bytes", want.len());
        let (got, expected) = (&buffer[..n], &want[done..done + n]);
        if let Some(at) = got.iter().zip(expected).position(|(a, b)| a != b) {
            panic!(
                "{who}: byte {} of {} differs: got {:02x?}, want {:02x?}",
                done + at,
                want.len(),
                &got[at..n.min(at + 16)],
                &expected[at..n.min(at + 16)]
            );
        }
        done += n;
    }
}

/// The client writes `up` as the backend reads it, the backend writes
/// `down` as the client reads it, all at once; each side must read exactly
/// what the other wrote.
async fn exchange<C, B>(client: &mut C, backend: &mut B, up: &[u8], down: &[u8])
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut backend_read, mut backend_write) = tokio::io::split(backend);
    within_for(TRAFFIC_LIMIT, "frames both ways through the tunnel", async {
        tokio::join!(
            async {
                client_write.write_all(up).await.expect("the client's write");
                client_write.flush().await.expect("the client's flush");
            },
            read_expecting(&mut backend_read, up, "the backend"),
            async {
                backend_write.write_all(down).await.expect("the backend's write");
                backend_write.flush().await.expect("the backend's flush");
            },
            read_expecting(&mut client_read, down, "the client"),
        )
    })
    .await;
}

/// Warm-up frames each way, from the peers' `client` and `backend` frames
/// so far: returns those that follow.
async fn warm_up<C, B>(client: &mut C, backend: &mut B, up: &Frames, down: &Frames) -> (Frames, Frames)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (up, down) = (up.then().warm_up(), down.then().warm_up());
    exchange(client, backend, &up.bytes, &down.bytes).await;
    (up, down)
}

/// The client closes with 1000: the backend gets that close frame and
/// answers it, the client gets the answer, and both connections end
/// (`core_scenarios` in tests/inspect.rs, with raw peers). Returns the
/// bytes of the client's close frame and of the backend's.
async fn client_closes(client: &mut TcpStream, backend: &mut TcpStream) -> (usize, usize) {
    let close = close_frame(true, 1000, "client done");
    within("the client's close", client.write_all(&close)).await.unwrap();
    let got = next_wire(backend, "backend").await;
    assert!(got.masked, "the client's close reached the backend unmasked");
    assert_eq!(got.close(), Some((1000, "client done".to_string())));
    let answer = close_frame(false, 1000, "client done");
    within("the backend's close answer", backend.write_all(&answer))
        .await
        .unwrap();
    let got = next_wire(client, "client").await;
    assert!(!got.masked, "the backend's close reached the client masked");
    assert_eq!(got.close(), Some((1000, "client done".to_string())));
    let after = expect_end(client, "client").await;
    assert!(after.is_empty(), "the client got frames after the close: {after:?}");
    let after = expect_end(backend, "backend").await;
    assert!(after.is_empty(), "the backend got frames after the close: {after:?}");
    (close.len(), answer.len())
}

// ---------------------------------------------------------------- metrics

/// Scrapes until the gauge is `want`.
async fn gauge_becomes(admin: SocketAddr, want: f64, what: &str) -> Exposition {
    scrape_until(
        admin,
        TIMEOUT,
        what,
        |metrics| metrics.value(GAUGE, &[]) == Some(want),
        String::new,
    )
    .await
}

/// The gauge, read once.
async fn gauge(admin: SocketAddr) -> Option<f64> {
    scrape(admin).await.value(GAUGE, &[])
}

/// Reads the gauge ten times over about 300 ms: a tunnel about to move
/// (16 KiB and more carried, both directions between reads) would by then.
async fn gauge_stays_0(admin: SocketAddr, what: &str) {
    for _ in 0..10 {
        assert_eq!(gauge(admin).await, Some(0.0), "{what}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Scrapes until the tunnel's end is recorded and no tunnel is on a splice
/// thread.
async fn ended(admin: SocketAddr) -> Exposition {
    scrape_until(
        admin,
        TIMEOUT,
        "the tunnel's end recorded",
        |metrics| metrics.value(GAUGE, &[]) == Some(0.0) && metrics.sum(ENDED, &[("route", "all")]) == 1.0,
        String::new,
    )
    .await
}

// ---------------------------------------------------------------- 1. data on the thread

#[tokio::test]
async fn data_frames_pass_byte_for_byte_on_a_splice_thread_and_the_client_close_is_answered() {
    let _one_at_a_time = LOCK.lock().await;
    let (mut backend, proxy, admin) = setup("", "").await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;

    let (up, down) = warm_up(&mut client, &mut tunnel, &Frames::client(), &Frames::backend()).await;
    gauge_becomes(admin, 1.0, "the busy inspected tunnel on a splice thread").await;

    let (more_up, more_down) = (up.then().assorted(), down.then().assorted());
    exchange(&mut client, &mut tunnel, &more_up.bytes, &more_down.bytes).await;
    // Data frames alone never bring it back.
    assert_eq!(
        gauge(admin).await,
        Some(1.0),
        "the tunnel left its thread on data frames"
    );

    let (client_close, backend_close) = client_closes(&mut client, &mut tunnel).await;
    let metrics = ended(admin).await;
    // Counted as on the runtime: every byte and frame of both peers, the
    // close frames too, and the client's close as the first.
    let sent_up = (up.bytes.len() + more_up.bytes.len() + client_close) as f64;
    let sent_down = (down.bytes.len() + more_down.bytes.len() + backend_close) as f64;
    assert_eq!(
        metrics.get(BYTES, CLIENT_TO_BACKEND),
        sent_up,
        "{}",
        metrics.names(BYTES)
    );
    assert_eq!(
        metrics.get(BYTES, BACKEND_TO_CLIENT),
        sent_down,
        "{}",
        metrics.names(BYTES)
    );
    let frames_up = (up.count + more_up.count + 1) as f64;
    let frames_down = (down.count + more_down.count + 1) as f64;
    assert_eq!(
        metrics.get(FRAMES, CLIENT_TO_BACKEND),
        frames_up,
        "{}",
        metrics.names(FRAMES)
    );
    assert_eq!(
        metrics.get(FRAMES, BACKEND_TO_CLIENT),
        frames_down,
        "{}",
        metrics.names(FRAMES)
    );
    let first_close = [("route", "all"), ("side", "client"), ("code", "1000")];
    assert_eq!(metrics.get(CLOSES, &first_close), 1.0, "{}", metrics.names(CLOSES));
    assert_eq!(metrics.count(CLOSES), 1, "{}", metrics.names(CLOSES));
    proxy.stop().await;
}

// ---------------------------------------------------------------- 2. control frames bring it back

/// A ping either way passes unchanged as on the runtime (`core_scenarios`
/// in tests/inspect.rs: the client's ping reaches the backend, the
/// backend's pong the client), and the tunnel is back on the runtime for
/// it; it moves again after another warm-up.
#[tokio::test]
async fn a_ping_brings_the_tunnel_back_unchanged_and_more_traffic_moves_it_again() {
    let _one_at_a_time = LOCK.lock().await;
    let (mut backend, proxy, admin) = setup("", "").await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;
    let (up, down) = warm_up(&mut client, &mut tunnel, &Frames::client(), &Frames::backend()).await;
    gauge_becomes(admin, 1.0, "the busy inspected tunnel on a splice thread").await;

    // Data and a ping in one write: the data goes on the thread, the ping
    // (masked, as sent) from the runtime.
    let up = up.then().binary(3000).text(20).frame(0x89, b"are you there");
    exchange(&mut client, &mut tunnel, &up.bytes, &[]).await;
    gauge_becomes(admin, 0.0, "the tunnel back on the runtime for the client's ping").await;
    let down = down.then().frame(0x8a, b"are you there");
    exchange(&mut client, &mut tunnel, &[], &down.bytes).await;
    // Back for good until it has carried another 16 KiB.
    assert_eq!(gauge(admin).await, Some(0.0), "moved again after a ping and a pong");

    let (up, down) = warm_up(&mut client, &mut tunnel, &up, &down).await;
    gauge_becomes(admin, 1.0, "the tunnel on a splice thread again").await;

    // The same from the backend's side.
    let down = down.then().binary(70_000).frame(0x89, b"backend ping");
    exchange(&mut client, &mut tunnel, &[], &down.bytes).await;
    gauge_becomes(admin, 0.0, "the tunnel back on the runtime for the backend's ping").await;
    let up = up.then().frame(0x8a, b"backend ping");
    exchange(&mut client, &mut tunnel, &up.bytes, &[]).await;

    let (up, down) = warm_up(&mut client, &mut tunnel, &up, &down).await;
    gauge_becomes(admin, 1.0, "the tunnel on a splice thread a third time").await;
    let (up, down) = (up.then().assorted(), down.then().assorted());
    exchange(&mut client, &mut tunnel, &up.bytes, &down.bytes).await;
    client_closes(&mut client, &mut tunnel).await;
    ended(admin).await;
    proxy.stop().await;
}

/// `control_frames_between_fragments_pass` (tests/inspect.rs) with the
/// message begun on a splice thread: the ping between its fragments brings
/// the tunnel back with the message still open, and the runtime passes the
/// ping and takes the last fragment as that message's continuation.
#[tokio::test]
async fn a_ping_between_the_fragments_of_a_message_begun_on_a_splice_thread_passes() {
    let _one_at_a_time = LOCK.lock().await;
    let (mut backend, proxy, admin) = setup("", "").await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;
    let (up, down) = warm_up(&mut client, &mut tunnel, &Frames::client(), &Frames::backend()).await;
    gauge_becomes(admin, 1.0, "the busy inspected tunnel on a splice thread").await;

    // The last fragment is short of 16 KiB: carried from the runtime, it
    // does not move the tunnel again.
    let mut up = up.then();
    let (head, tail) = (up.payload(30 * KIB, true), up.payload(3 * KIB, true));
    let up = up.frame(0x01, &head).frame(0x89, b"mid-message").frame(0x80, &tail);
    exchange(&mut client, &mut tunnel, &up.bytes, &[]).await;
    gauge_becomes(admin, 0.0, "the tunnel back on the runtime for the ping").await;
    let down = down.then().frame(0x8a, b"mid-message");
    exchange(&mut client, &mut tunnel, &[], &down.bytes).await;
    assert_eq!(
        gauge(admin).await,
        Some(0.0),
        "moved again after a ping, 3 KiB and a pong"
    );

    let (up, down) = warm_up(&mut client, &mut tunnel, &up, &down).await;
    gauge_becomes(admin, 1.0, "the tunnel on a splice thread again").await;
    let (up, down) = (up.then().assorted(), down.then().assorted());
    exchange(&mut client, &mut tunnel, &up.bytes, &down.bytes).await;
    client_closes(&mut client, &mut tunnel).await;
    ended(admin).await;
    proxy.stop().await;
}

// ---------------------------------------------------------------- 3. a broken rule

/// `an_unmasked_client_frame_gets_1002_both_ways` (tests/inspect.rs, its
/// `violation` and the close reason of
/// `a_client_that_breaks_the_protocol_gets_the_answers_before_its_close`)
/// on a moved tunnel: the backend gets 1002 and nothing of the bad frame,
/// the client gets 1002 once the backend answered, both connections end
/// within 2 s; the frames before the bad one, in the same write, arrive
/// whole.
#[tokio::test]
async fn an_unmasked_client_frame_on_a_splice_thread_gets_1002_both_ways_after_the_frames_before_it() {
    let _one_at_a_time = LOCK.lock().await;
    let (mut backend, proxy, admin) = setup("", "").await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;
    warm_up(&mut client, &mut tunnel, &Frames::client(), &Frames::backend()).await;
    gauge_becomes(admin, 1.0, "the busy inspected tunnel on a splice thread").await;

    let good = Frames::client()
        .binary(100 * KIB)
        .text(300)
        .fragmented(false, &[5, 70_000]);
    let burst = [good.bytes.clone(), encode(0x81, false, b"unmasked")].concat();
    let start = Instant::now();
    within("the burst and the frames before the bad one", async {
        tokio::join!(
            async { client.write_all(&burst).await.expect("the client's write") },
            read_expecting(&mut tunnel, &good.bytes, "the backend"),
        )
    })
    .await;
    let close = next_wire(&mut tunnel, "backend").await;
    assert_eq!(
        close.close(),
        Some((1002, "client protocol violation".to_string())),
        "the backend's next frame: {close:?}"
    );
    assert!(close.masked, "wsgate's close to the backend is not masked");
    tunnel.write_all(&close_frame(false, 1002, "")).await.unwrap();
    let close = next_wire(&mut client, "client").await;
    assert_eq!(
        close.close(),
        Some((1002, "protocol violation".to_string())),
        "{close:?}"
    );
    expect_end(&mut client, "client").await;
    expect_end(&mut tunnel, "backend").await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "both connections took {took:?} to end");
    ended(admin).await;
    proxy.stop().await;
}

/// `a_message_over_max_message_size_ends_with_1009_both_ways`
/// (tests/inspect.rs) on a moved tunnel: the fragments within the limit
/// reach the backend whole, the one that crosses it does not; the backend
/// gets 1009, then the client.
#[tokio::test]
async fn a_message_over_max_message_size_on_a_splice_thread_ends_with_1009_both_ways() {
    let _one_at_a_time = LOCK.lock().await;
    let limits = "max_frame_size = \"512KiB\"\nmax_message_size = \"1MiB\"\n";
    let (mut backend, proxy, admin) = setup("", limits).await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;
    warm_up(&mut client, &mut tunnel, &Frames::client(), &Frames::backend()).await;
    gauge_becomes(admin, 1.0, "the busy inspected tunnel on a splice thread").await;

    // Eight fragments of 256 KiB: the fifth takes the message past 1 MiB.
    let fragments: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 256 * KIB]).collect();
    let (mut read, mut write) = client.into_split();
    // Writes on its own: the proxy may stop reading once the limit is crossed.
    let writer = tokio::spawn(async move {
        for (i, fragment) in fragments.iter().enumerate() {
            let b0 = match i {
                0 => 0x02,
                7 => 0x80,
                _ => 0x00,
            };
            if write.write_all(&encode(b0, true, fragment)).await.is_err() {
                return;
            }
        }
    });
    for i in 0..4u8 {
        let fragment = next_wire(&mut tunnel, "backend").await;
        let b0 = if i == 0 { 0x02 } else { 0x00 };
        assert_eq!(
            (fragment.b0, fragment.masked, fragment.payload.len()),
            (b0, true, 256 * KIB),
            "fragment {i} at the backend"
        );
        assert!(fragment.payload.iter().all(|&byte| byte == i), "fragment {i} changed");
    }
    let close = next_wire(&mut tunnel, "backend").await;
    assert_eq!(
        close.close(),
        Some((1009, "peer sent a message too big".to_string())),
        "the backend's frame after the fourth fragment: {close:?}"
    );
    tunnel.write_all(&close_frame(false, 1009, "")).await.unwrap();
    assert_eq!(expect_close(&mut read, "client").await.0, 1009);
    expect_end(&mut read, "client").await;
    expect_end(&mut tunnel, "backend").await;
    writer.abort();
    ended(admin).await;
    proxy.stop().await;
}

/// `a_masked_backend_frame_after_a_good_one` (tests/inspect.rs, its
/// `violation`) on a moved tunnel: the client gets 1011 and nothing of the
/// bad frame, the backend 1002, both connections end within 2 s; the
/// frames before the bad one, in the same write, arrive whole.
#[tokio::test]
async fn a_masked_backend_frame_on_a_splice_thread_gets_it_1002_and_the_client_1011() {
    let _one_at_a_time = LOCK.lock().await;
    let (mut backend, proxy, admin) = setup("", "").await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;
    warm_up(&mut client, &mut tunnel, &Frames::client(), &Frames::backend()).await;
    gauge_becomes(admin, 1.0, "the busy inspected tunnel on a splice thread").await;

    let good = Frames::backend().binary(100 * KIB).text(10);
    let burst = [good.bytes.clone(), encode(0x81, true, b"masked")].concat();
    let start = Instant::now();
    within("the burst and the frames before the bad one", async {
        tokio::join!(
            async { tunnel.write_all(&burst).await.expect("the backend's write") },
            read_expecting(&mut client, &good.bytes, "the client"),
        )
    })
    .await;
    let close = next_wire(&mut client, "client").await;
    assert_eq!(
        close.close(),
        Some((1011, "backend protocol violation".to_string())),
        "the client's next frame: {close:?}"
    );
    assert!(!close.masked, "wsgate's close to the client is masked");
    client.write_all(&close_frame(true, 1011, "")).await.unwrap();
    let close = next_wire(&mut tunnel, "backend").await;
    assert_eq!(
        close.close(),
        Some((1002, "protocol violation".to_string())),
        "{close:?}"
    );
    expect_end(&mut client, "client").await;
    expect_end(&mut tunnel, "backend").await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "both connections took {took:?} to end");
    ended(admin).await;
    proxy.stop().await;
}

// ---------------------------------------------------------------- 4. the tunnel's clocks

/// `a_silent_client_is_dropped_and_the_backend_gets_1001`
/// (tests/inspect.rs) on a moved tunnel: the client, silent after the
/// warm-up, gets wsgate's ping a `ping_interval` later (from the runtime:
/// the tunnel's task took it back); unanswered, the backend gets 1001 at
/// `ping_interval` + `pong_timeout`, and the client's connection ends.
#[tokio::test]
async fn a_client_silent_on_a_splice_thread_gets_the_keepalive_ping_and_is_dropped_when_it_does_not_answer() {
    let _one_at_a_time = LOCK.lock().await;
    let keepalive = "ping_interval = \"1s\"\npong_timeout = \"1s\"\n";
    let (mut backend, proxy, admin) = setup("", keepalive).await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;
    warm_up(&mut client, &mut tunnel, &Frames::client(), &Frames::backend()).await;
    let quiet_since = Instant::now();
    gauge_becomes(admin, 1.0, "the busy inspected tunnel on a splice thread").await;

    let ping = next_wire(&mut client, "client").await;
    let took = quiet_since.elapsed();
    assert!(ping.is_wsgate_ping() && !ping.masked, "not wsgate's ping: {ping:?}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "wsgate's ping came {took:?} after the client went quiet (ping_interval 1s)"
    );
    assert_eq!(gauge(admin).await, Some(0.0), "the tunnel pinged from a splice thread");

    let close = next_wire(&mut tunnel, "backend").await;
    let took = quiet_since.elapsed();
    assert_eq!(
        close.close().map(|c| c.0),
        Some(1001),
        "the backend's next frame: {close:?}"
    );
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "the silent client was dropped {took:?} after it went quiet"
    );
    let after = expect_end(&mut client, "client").await;
    assert!(
        after.iter().all(|frame| frame.opcode() >= 8),
        "data reached the client after the ping: {after:?}"
    );
    expect_end(&mut tunnel, "backend").await;
    ended(admin).await;
    proxy.stop().await;
}

/// `the_idle_timeout_counts_data_frames_only_and_sends_1001_both_ways`
/// (tests/inspect_timers.rs) on a moved tunnel: with no data frame either
/// way for `idle_timeout`, both sides get 1001 "idle timeout".
#[tokio::test]
async fn the_idle_timeout_of_a_tunnel_on_a_splice_thread_sends_1001_both_ways() {
    let _one_at_a_time = LOCK.lock().await;
    let (mut backend, proxy, admin) = setup("", "idle_timeout = \"2s\"\n").await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;
    warm_up(&mut client, &mut tunnel, &Frames::client(), &Frames::backend()).await;
    let quiet_since = Instant::now();
    gauge_becomes(admin, 1.0, "the busy inspected tunnel on a splice thread").await;

    let close = next_wire(&mut client, "client").await;
    let took = quiet_since.elapsed();
    assert_eq!(close.close(), Some((1001, "idle timeout".to_string())), "{close:?}");
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "closed {took:?} after the last data frame (idle_timeout 2s)"
    );
    let close = next_wire(&mut tunnel, "backend").await;
    assert_eq!(close.close(), Some((1001, "idle timeout".to_string())), "{close:?}");
    assert!(close.masked, "wsgate's close to the backend is not masked");
    client.write_all(&close_frame(true, 1001, "")).await.unwrap();
    tunnel.write_all(&close_frame(false, 1001, "")).await.unwrap();
    expect_end(&mut client, "client").await;
    expect_end(&mut tunnel, "backend").await;
    ended(admin).await;
    proxy.stop().await;
}

// ---------------------------------------------------------------- lost backend, shutdown

/// Closes `stream` with a reset (SO_LINGER 0), not a FIN.
fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(stream);
}

/// `a_lost_backend_gets_the_client_1011_and_the_next_handshake_goes_elsewhere`
/// (tests/inspect.rs) on a moved tunnel whose backend resets: the client
/// gets 1011 "backend connection lost", then its connection ends.
#[tokio::test]
async fn a_backend_reset_on_a_splice_thread_gets_the_client_1011() {
    let _one_at_a_time = LOCK.lock().await;
    let (mut backend, proxy, admin) = setup("", "").await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;
    warm_up(&mut client, &mut tunnel, &Frames::client(), &Frames::backend()).await;
    gauge_becomes(admin, 1.0, "the busy inspected tunnel on a splice thread").await;

    reset(tunnel);
    let close = next_wire(&mut client, "client").await;
    assert_eq!(
        close.close(),
        Some((1011, "backend connection lost".to_string())),
        "{close:?}"
    );
    // As a client answers; wsgate may have shut the connection already.
    let _ = client.write_all(&close_frame(true, 1011, "")).await;
    expect_end(&mut client, "client").await;
    ended(admin).await;
    proxy.stop().await;
}

/// `shutdown_sends_1001_going_away_both_ways` (tests/inspect.rs) with the
/// tunnel on a splice thread.
#[tokio::test]
async fn shutdown_sends_1001_going_away_both_ways_to_a_tunnel_on_a_splice_thread() {
    let _one_at_a_time = LOCK.lock().await;
    let (mut backend, proxy, admin) = setup("", "").await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;
    warm_up(&mut client, &mut tunnel, &Frames::client(), &Frames::backend()).await;
    gauge_becomes(admin, 1.0, "the busy inspected tunnel on a splice thread").await;

    let stopping = tokio::spawn(proxy.stop());
    let close = next_wire(&mut client, "client").await;
    assert_eq!(close.close(), Some((1001, "going away".to_string())), "{close:?}");
    let close = next_wire(&mut tunnel, "backend").await;
    assert_eq!(close.close(), Some((1001, "going away".to_string())), "{close:?}");
    client.write_all(&close_frame(true, 1001, "")).await.unwrap();
    tunnel.write_all(&close_frame(false, 1001, "")).await.unwrap();
    expect_end(&mut client, "client").await;
    expect_end(&mut tunnel, "backend").await;
    within("proxy stop", stopping).await.expect("proxy stop");
}

/// Rebalancing (`[upstream.rebalance]`) sheds tunnels on a splice thread
/// as it sheds any other: once a server that was down is back, the
/// over-full one's excess is taken back from the threads and closed with
/// 1012 "rebalancing" (mirrors `tests/rebalance.rs`), and the tunnels left
/// alone stay on their threads and go on echoing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalancing_sheds_tunnels_on_a_splice_thread_with_1012() {
    use tokio_tungstenite::tungstenite::Message;

    const SOCKETS: usize = 6;
    // ceil(1.25 × 6 / 2) = 4 may stay on the server that was alone.
    const EXCESS: usize = 2;
    let _one_at_a_time = LOCK.lock().await;
    let a = Backend::echo().await;
    // Held, not listening: b is down, and its port stays its own.
    let b_reserved = ReservedAddr::new();
    let b_addr = b_reserved.addr;
    let toml = format!(
        "[global]\nshutdown_timeout = \"2s\"\n\n[[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n{ADMIN}\n\
         [[route]]\nname = \"all\"\nupstream = \"backends\"\n[route.inspect]\n\n\
         [[upstream]]\nname = \"backends\"\nservers = [{{ address = \"{a}\" }}, {{ address = \"{b_addr}\" }}]\n\
         balance = \"least_connections\"\n\
         [upstream.health_check]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n\
         [upstream.rebalance]\nmax_skew = 1.25\nafter = \"500ms\"\nrate = \"100/s\"\n",
        a = a.addr
    );
    let (proxy, admin) = start_with_admin(&toml).await;
    let b_healthy = |m: &Exposition, up: f64| {
        m.value(
            "wsgate_server_healthy",
            &[("upstream", "backends"), ("server", &b_addr.to_string())],
        ) == Some(up)
    };
    scrape_until(admin, TIMEOUT, "b marked down", |m| b_healthy(m, 0.0), String::new).await;

    let mut clients = Vec::new();
    let busy: Vec<u8> = (0..64 * KIB as u64).map(up).collect();
    for _ in 0..SOCKETS {
        let (mut ws, _) = ws_connect(proxy.addr("plain"), "/", &[]).await;
        send(&mut ws, Message::binary(busy.clone())).await;
        assert_eq!(next_message(&mut ws).await, Message::binary(busy.clone()));
        clients.push(ws);
    }
    gauge_becomes(admin, SOCKETS as f64, "every busy inspected tunnel on a splice thread").await;

    let _b = Backend::on(b_reserved.listen(), Behavior::Echo);
    scrape_until(
        admin,
        TIMEOUT,
        "the excess shed",
        |m| m.sum("wsgate_rebalanced_tunnels_total", &[]) == EXCESS as f64,
        String::new,
    )
    .await;
    // A shed client finds the close queued before the echo it asks for.
    let mut shed = 0;
    for (i, ws) in clients.iter_mut().enumerate() {
        let text = Message::text(format!("client {i}"));
        send(ws, text.clone()).await;
        match next_message(ws).await {
            Message::Close(Some(frame)) => {
                assert_eq!((u16::from(frame.code), frame.reason.as_str()), (1012, "rebalancing"));
                shed += 1;
            }
            echo => assert_eq!(echo, text, "client {i}: left alone, its echo"),
        }
    }
    assert_eq!(shed, EXCESS);
    gauge_becomes(
        admin,
        (SOCKETS - EXCESS) as f64,
        "the tunnels left alone still on their threads",
    )
    .await;
    for ws in clients.iter_mut() {
        let _ = within("a client's close", ws.close(None)).await;
    }
    drop(clients);
    proxy.stop().await;
}

// ---------------------------------------------------------------- 5. tunnels that stay

/// The message rate is kept per frame by the tunnel's task: a route with
/// `max_messages_per_second` keeps its tunnels there.
#[tokio::test]
async fn with_max_messages_per_second_an_inspected_tunnel_stays_on_the_runtime() {
    let _one_at_a_time = LOCK.lock().await;
    let (mut backend, proxy, admin) = setup("", "max_messages_per_second = 10000\n").await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;
    let (up, down) = warm_up(&mut client, &mut tunnel, &Frames::client(), &Frames::backend()).await;
    gauge_stays_0(admin, "a tunnel with a message rate on a splice thread").await;

    let (up, down) = (up.then().assorted(), down.then().assorted());
    exchange(&mut client, &mut tunnel, &up.bytes, &down.bytes).await;
    gauge_stays_0(admin, "a tunnel with a message rate on a splice thread").await;
    client_closes(&mut client, &mut tunnel).await;
    ended(admin).await;
    proxy.stop().await;
}

/// A paced client (`[route.limits] client_bytes_per_second`) is read at
/// its rate by the tunnel's task: its tunnel stays there.
#[tokio::test]
async fn with_a_paced_client_an_inspected_tunnel_stays_on_the_runtime() {
    let _one_at_a_time = LOCK.lock().await;
    let paced = "\n[route.limits]\nclient_bytes_per_second = \"1MiB\"\n";
    let (mut backend, proxy, admin) = setup("", paced).await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;
    let (up, down) = warm_up(&mut client, &mut tunnel, &Frames::client(), &Frames::backend()).await;
    gauge_stays_0(admin, "a paced tunnel on a splice thread").await;

    warm_up(&mut client, &mut tunnel, &up, &down).await;
    gauge_stays_0(admin, "a paced tunnel on a splice thread").await;
    client_closes(&mut client, &mut tunnel).await;
    ended(admin).await;
    proxy.stop().await;
}

/// A TLS client's side is not a plain socket a splice thread could read.
#[tokio::test]
async fn an_inspected_tunnel_with_a_tls_client_stays_on_the_runtime() {
    let _one_at_a_time = LOCK.lock().await;
    let certs = TestCerts::generate();
    let mut backend = RawBackend::start(false, None).await;
    let toml = inspect_config(&[backend.addr], Some(&certs), "") + "\n" + ADMIN;
    let (proxy, admin) = start_with_admin(&toml).await;
    gauge_becomes(admin, 0.0, "no tunnel on a splice thread before the test's").await;
    let addr = proxy.addr("tls");
    let mut client = tls_connect(addr, "localhost", certs.client_config()).await;
    let request = valid_upgrade(&format!("localhost:{}", addr.port()), "/", &[]);
    client.write_all(request.as_bytes()).await.unwrap();
    client.flush().await.unwrap();
    let head = within("101 from the proxy", read_head_bytes(&mut client)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut tunnel = backend.next_conn().await;

    let (up, down) = warm_up(&mut client, &mut tunnel, &Frames::client(), &Frames::backend()).await;
    gauge_stays_0(admin, "a tunnel with a TLS client on a splice thread").await;
    let (up, down) = (up.then().assorted(), down.then().assorted());
    exchange(&mut client, &mut tunnel, &up.bytes, &down.bytes).await;
    gauge_stays_0(admin, "a tunnel with a TLS client on a splice thread").await;

    client.write_all(&close_frame(true, 1000, "")).await.unwrap();
    client.flush().await.unwrap();
    let close = next_wire(&mut tunnel, "backend").await;
    assert_eq!(close.close(), Some((1000, String::new())), "{close:?}");
    tunnel.write_all(&close_frame(false, 1000, "")).await.unwrap();
    let close = next_wire(&mut client, "client").await;
    assert_eq!(close.close(), Some((1000, String::new())), "{close:?}");
    expect_end(&mut client, "client").await;
    expect_end(&mut tunnel, "backend").await;
    ended(admin).await;
    proxy.stop().await;
}

#[tokio::test]
async fn with_splice_threads_0_a_busy_inspected_tunnel_stays_on_the_runtime() {
    let _one_at_a_time = LOCK.lock().await;
    let (mut backend, proxy, admin) = setup("splice_threads = 0\n", "").await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;
    let (up, down) = warm_up(&mut client, &mut tunnel, &Frames::client(), &Frames::backend()).await;
    gauge_stays_0(admin, "an inspected tunnel on a splice thread with splice_threads = 0").await;

    let (up, down) = (up.then().assorted(), down.then().assorted());
    exchange(&mut client, &mut tunnel, &up.bytes, &down.bytes).await;
    gauge_stays_0(admin, "an inspected tunnel on a splice thread with splice_threads = 0").await;
    client_closes(&mut client, &mut tunnel).await;
    ended(admin).await;
    proxy.stop().await;
}
