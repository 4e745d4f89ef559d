//! Splice threads (`src/tunnel/splice_thread.rs`) against a real proxy: a
//! busy plain tunnel leaves tokio's workers for a splice thread (the
//! `wsgate_splice_thread_tunnels` gauge) and carries every byte both ways
//! there, passes a half-close on, stalls a backend whose client stops
//! reading and then delivers all it held, ends when its backend resets
//! (while the thread's other tunnels keep flowing); with `[global]
//! splice_threads = 0` every tunnel stays on the runtime's workers.
//!
//! The gauge counts tunnels in the whole process and the thread count is
//! a process-wide setting (the last proxy started sets it): every test here
//! holds [`LOCK`] for its whole run, as the tests of one binary run in
//! parallel and their proxies run in this process.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::stream_pattern::{down, up, Pattern};
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Held by each test for its whole run (see the module's comment).
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const GAUGE: &str = "wsgate_splice_thread_tunnels";
const BYTES: &str = "wsgate_tunnel_bytes_total";
const CLIENT_TO_BACKEND: &[(&str, &str)] = &[("route", "all"), ("direction", "client_to_backend")];
const BACKEND_TO_CLIENT: &[(&str, &str)] = &[("route", "all"), ("direction", "backend_to_client")];

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n\n";

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Traffic that moves a tunnel to a splice thread (past the 16 KiB of
/// `BUSY_AFTER`, each way).
const WARM_UP: u64 = 64 * KIB;

/// The bound on moving a few MiB (the tests are built without optimisation).
const TRAFFIC_LIMIT: Duration = Duration::from_secs(60);

/// Writes and reads in pieces of this size.
const CHUNK: usize = 64 * 1024;

/// The proxy's config: `global` keys, the admin listener, listener `plain`,
/// route `all` (plain: no `[route.inspect]`) to `backend`.
fn proxy_toml(backend: SocketAddr, global: &str) -> String {
    listeners(None).replacen("[global]\n", &format!("[global]\n{global}"), 1) + ADMIN + &route_and_upstream(backend, "")
}

/// Binds the proxy for `toml`, runs it; returns it with its admin address.
async fn start_with_admin(toml: &str) -> (ProxyHandle, SocketAddr) {
    let (server, names) = bind_proxy(toml).await;
    let admin = server.admin_addr().expect("the config has [admin]");
    (run_proxy(server, names), admin)
}

/// A tunnel through the proxy: the client past its 101, and the backend's
/// end of it past its handshake.
async fn open_tunnel(proxy: &ProxyHandle, backend: &mut RawBackend) -> (TcpStream, TcpStream) {
    let client = raw_client(proxy.addr("plain")).await;
    let tunnel = backend.next_conn().await;
    (client, tunnel)
}

/// Writes bytes `from..from + len` of `pattern`, storing in `progress` how
/// many of them were written so far.
async fn write_pattern<W: AsyncWrite + Unpin>(to: &mut W, pattern: Pattern, from: u64, len: u64, progress: &AtomicU64) {
    let mut chunk = vec![0u8; CHUNK];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        for (i, byte) in chunk[..n].iter_mut().enumerate() {
            *byte = pattern(from + done + i as u64);
        }
        to.write_all(&chunk[..n])
            .await
            .unwrap_or_else(|e| panic!("write failed after {done} of {len} bytes: {e}"));
        done += n as u64;
        progress.store(done, Ordering::SeqCst);
    }
}

/// Reads exactly bytes `from..from + len` of `pattern`, checking each.
async fn read_pattern<R: AsyncRead + Unpin>(from_stream: &mut R, pattern: Pattern, from: u64, len: u64, who: &str) {
    let mut buffer = vec![0u8; CHUNK];
    let mut done = 0;
    while done < len {
        let want = (len - done).min(CHUNK as u64) as usize;
        let n = from_stream
            .read(&mut buffer[..want])
            .await
            .unwrap_or_else(|e| panic!("{who}: read failed after {done} of {len} bytes: {e}"));
        assert!(n > 0, "{who}: the stream ended after {done} of {len} bytes");
        for (i, &byte) in buffer[..n].iter().enumerate() {
            let at = from + done + i as u64;
            assert_eq!(byte, pattern(at), "{who}: byte {at} of the stream is wrong");
        }
        done += n as u64;
    }
}

/// Carries `len` bytes each way at once, from offset `from` of each
/// pattern: the client writes [`up`] as the backend reads it, the backend
/// writes [`down`] as the client reads it.
async fn exchange(client: &mut TcpStream, backend: &mut TcpStream, from: u64, len: u64) {
    let (mut client_read, mut client_write) = client.split();
    let (mut backend_read, mut backend_write) = backend.split();
    let (client_sent, backend_sent) = (AtomicU64::new(0), AtomicU64::new(0));
    within_for(TRAFFIC_LIMIT, "bytes both ways through the tunnel", async {
        tokio::join!(
            write_pattern(&mut client_write, up, from, len, &client_sent),
            read_pattern(&mut backend_read, up, from, len, "the backend"),
            write_pattern(&mut backend_write, down, from, len, &backend_sent),
            read_pattern(&mut client_read, down, from, len, "the client"),
        )
    })
    .await;
}

/// The client half-closes; the backend reads to the end of the stream
/// (nothing more), answers `received N bytes` and closes; the client reads
/// that answer to its end. Returns the answer's length.
async fn half_close_and_answer(client: &mut TcpStream, backend: &mut TcpStream, received: u64) -> u64 {
    within("the client's half-close", client.shutdown()).await.unwrap();
    let mut rest = Vec::new();
    within(
        "the backend reading the tunnel to its end",
        backend.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    assert_eq!(rest.len(), 0, "the backend got bytes after all it was sent");
    let answer = format!("received {received} bytes");
    within("the backend answering", backend.write_all(answer.as_bytes()))
        .await
        .unwrap();
    within("the backend closing", backend.shutdown()).await.unwrap();
    // The backend answers only once it saw the client's end of stream: the
    // answer proves the FIN was passed on and the other direction stayed
    // open after it.
    let mut reply = Vec::new();
    within(
        "the client reading the answer to its end",
        client.read_to_end(&mut reply),
    )
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&reply), answer);
    answer.len() as u64
}

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

/// Scrapes until no tunnel is on a splice thread and the ended tunnels'
/// bytes are counted (in both directions); returns those counts.
async fn ended_and_counted(admin: SocketAddr) -> (f64, f64) {
    let metrics = scrape_until(
        admin,
        TIMEOUT,
        "the tunnel's end reported",
        |metrics| {
            metrics.value(GAUGE, &[]) == Some(0.0)
                && metrics.value_or_zero(BYTES, CLIENT_TO_BACKEND) > 0.0
                && metrics.value_or_zero(BYTES, BACKEND_TO_CLIENT) > 0.0
        },
        String::new,
    )
    .await;
    (
        metrics.get(BYTES, CLIENT_TO_BACKEND),
        metrics.get(BYTES, BACKEND_TO_CLIENT),
    )
}

#[tokio::test]
async fn a_busy_plain_tunnel_moves_to_a_splice_thread_and_carries_every_byte_both_ways() {
    let _one_at_a_time = LOCK.lock().await;
    let mut backend = RawBackend::start(false, None).await;
    let (proxy, admin) = start_with_admin(&proxy_toml(backend.addr, "")).await;
    gauge_becomes(admin, 0.0, "no tunnel on a splice thread before the test's").await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;

    exchange(&mut client, &mut tunnel, 0, 4 * MIB).await;
    gauge_becomes(admin, 1.0, "the busy tunnel on a splice thread").await;

    let answer = half_close_and_answer(&mut client, &mut tunnel, 4 * MIB).await;
    let (client_to_backend, backend_to_client) = ended_and_counted(admin).await;
    assert_eq!(client_to_backend, (4 * MIB) as f64);
    assert_eq!(backend_to_client, (4 * MIB + answer) as f64);
    proxy.stop().await;
}

#[tokio::test]
async fn with_splice_threads_0_a_busy_tunnel_stays_on_the_runtime_workers() {
    let _one_at_a_time = LOCK.lock().await;
    let mut backend = RawBackend::start(false, None).await;
    let toml = proxy_toml(backend.addr, "splice_threads = 0\n");
    let (proxy, admin) = start_with_admin(&toml).await;
    gauge_becomes(admin, 0.0, "no tunnel on a splice thread before the test's").await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;

    exchange(&mut client, &mut tunnel, 0, MIB).await;
    // The tunnel would have moved by now (it did in the test above after
    // the same first MiB): it stays.
    let metrics = scrape(admin).await;
    assert_eq!(metrics.value(GAUGE, &[]), Some(0.0), "{}", metrics.names(GAUGE));

    let answer = half_close_and_answer(&mut client, &mut tunnel, MIB).await;
    let (client_to_backend, backend_to_client) = ended_and_counted(admin).await;
    assert_eq!(client_to_backend, MIB as f64);
    assert_eq!(backend_to_client, (MIB + answer) as f64);
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_stalls_its_backend_and_then_gets_every_byte() {
    /// More than the socket buffers between the backend and the client hold.
    const STALLED: u64 = 32 * MIB;
    let _one_at_a_time = LOCK.lock().await;
    let mut backend = RawBackend::start(false, None).await;
    let (proxy, admin) = start_with_admin(&proxy_toml(backend.addr, "")).await;
    gauge_becomes(admin, 0.0, "no tunnel on a splice thread before the test's").await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;
    exchange(&mut client, &mut tunnel, 0, WARM_UP).await;
    gauge_becomes(admin, 1.0, "the busy tunnel on a splice thread").await;

    // The backend writes on (the pattern going on from the warm-up's)
    // while the client reads nothing.
    let written = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let written = written.clone();
        async move {
            write_pattern(&mut tunnel, down, WARM_UP, STALLED, &written).await;
            tunnel
        }
    });
    // Stalled: nothing more written across two looks 300 ms apart.
    let mut stalled_at = None;
    let mut last = written.load(Ordering::SeqCst);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = written.load(Ordering::SeqCst);
        if now == last && now > 0 {
            stalled_at = Some(now);
            break;
        }
        last = now;
    }
    let stalled_at = stalled_at.expect("the backend's writes never stalled within 30 s");
    assert!(
        stalled_at < STALLED && !writer.is_finished(),
        "the backend wrote all {STALLED} bytes to a client that reads nothing"
    );
    let metrics = scrape(admin).await;
    assert_eq!(
        metrics.value(GAUGE, &[]),
        Some(1.0),
        "the stalled tunnel is still on its splice thread"
    );

    within_for(
        TRAFFIC_LIMIT,
        "the client reading all the backend wrote",
        read_pattern(&mut client, down, WARM_UP, STALLED, "the client"),
    )
    .await;
    let mut tunnel = within("the backend's write finishing", writer).await.unwrap();
    assert_eq!(written.load(Ordering::SeqCst), STALLED);

    half_close_and_answer(&mut client, &mut tunnel, WARM_UP).await;
    gauge_becomes(admin, 0.0, "the ended tunnel off its splice thread").await;
    proxy.stop().await;
}

/// Closes `stream` with a reset (SO_LINGER 0), not a FIN.
fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(stream);
}

#[tokio::test]
async fn a_backend_reset_on_a_splice_thread_ends_the_tunnel_and_the_client_sees_its_end() {
    let _one_at_a_time = LOCK.lock().await;
    let mut backend = RawBackend::start(false, None).await;
    let (proxy, admin) = start_with_admin(&proxy_toml(backend.addr, "")).await;
    gauge_becomes(admin, 0.0, "no tunnel on a splice thread before the test's").await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;
    exchange(&mut client, &mut tunnel, 0, WARM_UP).await;
    gauge_becomes(admin, 1.0, "the busy tunnel on a splice thread").await;

    reset(tunnel);
    let (bytes, closed) = read_until_closed(&mut client, Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "the client's stream is still open 5 s after its backend reset"
    );
    assert!(bytes.is_empty(), "the client got {} bytes after the reset", bytes.len());
    gauge_becomes(admin, 0.0, "the reset tunnel off its splice thread").await;

    // The proxy (and its splice thread) carries new tunnels as before.
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;
    exchange(&mut client, &mut tunnel, 0, WARM_UP).await;
    gauge_becomes(admin, 1.0, "the next busy tunnel on a splice thread").await;
    half_close_and_answer(&mut client, &mut tunnel, WARM_UP).await;
    gauge_becomes(admin, 0.0, "the next tunnel's end").await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_splice_thread_keeps_other_tunnels_flowing_when_one_ends_with_an_error() {
    let _one_at_a_time = LOCK.lock().await;
    let mut backend = RawBackend::start(false, None).await;
    // One thread: both tunnels are on it.
    let (proxy, admin) = start_with_admin(&proxy_toml(backend.addr, "splice_threads = 1\n")).await;
    gauge_becomes(admin, 0.0, "no tunnel on a splice thread before the test's").await;
    let (mut failing_client, mut failing_backend) = open_tunnel(&proxy, &mut backend).await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;
    exchange(&mut failing_client, &mut failing_backend, 0, WARM_UP).await;
    exchange(&mut client, &mut tunnel, 0, WARM_UP).await;
    gauge_becomes(admin, 2.0, "both busy tunnels on the splice thread").await;

    // One tunnel's backend resets while the other carries 4 MiB each way.
    let (_, (bytes, closed)) = tokio::join!(exchange(&mut client, &mut tunnel, WARM_UP, 4 * MIB), async {
        reset(failing_backend);
        read_until_closed(&mut failing_client, Duration::from_secs(5)).await
    });
    assert!(
        closed.is_some(),
        "the client's stream is still open 5 s after its backend reset"
    );
    assert!(bytes.is_empty(), "the client got {} bytes after the reset", bytes.len());
    gauge_becomes(admin, 1.0, "only the reset tunnel off the splice thread").await;

    // And on after it ended.
    exchange(&mut client, &mut tunnel, WARM_UP + 4 * MIB, MIB).await;
    half_close_and_answer(&mut client, &mut tunnel, WARM_UP + 5 * MIB).await;
    gauge_becomes(admin, 0.0, "the other tunnel's end").await;
    proxy.stop().await;
}

/// `splice_threads` follows a reload: a busy tunnel kept on the runtime
/// (0 threads) moves at its next reads once a reload asks for threads.
#[tokio::test]
async fn a_reload_that_asks_for_splice_threads_moves_a_busy_tunnel_kept_on_the_runtime() {
    let _one_at_a_time = LOCK.lock().await;
    let mut backend = RawBackend::start(false, None).await;
    let off = proxy_toml(backend.addr, "splice_threads = 0\n");
    let (server, names) = bind_proxy(&off).await;
    let admin = server.admin_addr().expect("the config has [admin]");
    let reloader = server.reloader();
    let proxy = run_proxy(server, names);
    gauge_becomes(admin, 0.0, "no tunnel on a splice thread before the test's").await;
    let (mut client, mut tunnel) = open_tunnel(&proxy, &mut backend).await;
    exchange(&mut client, &mut tunnel, 0, WARM_UP).await;
    let metrics = scrape(admin).await;
    assert_eq!(
        metrics.value(GAUGE, &[]),
        Some(0.0),
        "kept on the runtime with 0 threads"
    );

    let on = proxy_toml(backend.addr, "splice_threads = 1\n");
    let path = std::env::temp_dir().join("wsgate-tests").join("splice-threads.toml");
    let config = wsgate::config::Config::from_toml(&on, &path).expect("the config loads");
    within("reload", reloader.reload(config)).await.expect("reload");
    exchange(&mut client, &mut tunnel, WARM_UP, WARM_UP).await;
    gauge_becomes(admin, 1.0, "the busy tunnel on a splice thread after the reload").await;
    half_close_and_answer(&mut client, &mut tunnel, 2 * WARM_UP).await;
    gauge_becomes(admin, 0.0, "the tunnel's end").await;
    proxy.stop().await;
}
