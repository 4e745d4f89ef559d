//! `kernel_splice = true`: plain tunnels spliced by the kernel through a BPF
//! sockmap. Needs CAP_BPF and CAP_NET_ADMIN (the tests run as root); the
//! fallback test takes them away from its child.

mod support;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use futures_util::SinkExt;
use support::hostile_peers::{WsgateChild, WsgateLaunch};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The route of [`support::config`], kernel-spliced.
fn kernel_config(backend: SocketAddr) -> String {
    config(backend, None).replace("name = \"all\"\n", "name = \"all\"\nkernel_splice = true\n")
}

/// The same for a child process, logging JSON.
fn child_toml(backend: SocketAddr) -> String {
    format!(
        "[global]\nshutdown_timeout = \"2s\"\nlog_format = \"json\"\n\n\
         [[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"all\"\nupstream = \"backends\"\nkernel_splice = true\n\n\
         [[upstream]]\nname = \"backends\"\nservers = [{{ address = \"{backend}\" }}]\n"
    )
}

/// A tunnel through the proxy at `addr` to `backend`, both ends raw TCP
/// past their handshakes; `early` goes in the same write as the upgrade.
async fn raw_tunnel(addr: SocketAddr, backend: &mut RawBackend, early: &[u8]) -> (RawConn<TcpStream>, TcpStream) {
    let mut conn = RawConn::new(tcp_connect(addr).await);
    let mut request = valid_upgrade("localhost", "/", &[]).into_bytes();
    request.extend_from_slice(early);
    conn.send(&request).await;
    assert_eq!(conn.read_head().await.status, 101);
    (conn, backend.next_conn().await)
}

/// Writes `total` bytes of a pattern into `from` while `to` reads them, and
/// checks them.
async fn pump(from: &mut TcpStream, to: &mut TcpStream, total: usize) {
    let pattern: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let write = async {
        from.write_all(&pattern).await.unwrap();
    };
    let read = async {
        let mut got = vec![0; total];
        to.read_exact(&mut got).await.unwrap();
        got
    };
    let ((), got) = within_for(Duration::from_secs(60), "the bytes through the tunnel", async {
        tokio::join!(write, read)
    })
    .await;
    assert!(got == pattern, "the bytes arrived changed");
}

#[tokio::test]
async fn messages_small_and_large_echo_both_ways() {
    let backend = Backend::echo().await;
    let proxy = start_proxy(&kernel_config(backend.addr)).await;
    let (mut ws, _) = ws_connect(proxy.addr("plain"), "/", &[]).await;
    for size in [1, 125, 16 * 1024, 1 << 20] {
        let message: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        within("send", ws.send(Message::binary(message.clone()))).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::binary(message));
    }
    within("close", ws.close(None)).await.unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn two_hundred_tunnels_at_once_each_get_only_their_own_bytes() {
    let backend = Backend::echo().await;
    let proxy = start_proxy(&kernel_config(backend.addr)).await;
    let addr = proxy.addr("plain");
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(ws_connect(addr, "/", &[]).await.0);
    }
    // Every tunnel sends at once, each its own text, three times.
    let rounds = clients.into_iter().enumerate().map(|(i, mut ws)| async move {
        for round in 0..3 {
            let text = format!("tunnel {i} round {round} {}", "x".repeat(i * 37));
            ws.send(Message::text(text.clone())).await.unwrap();
            assert_eq!(next_message(&mut ws).await, Message::text(text));
        }
        ws.close(None).await.unwrap();
    });
    within("200 tunnels echoing", futures_util::future::join_all(rounds)).await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_half_close_reaches_the_backend_and_its_reply_still_reaches_the_client() {
    let mut backend = RawBackend::start(false, None).await;
    let proxy = start_proxy(&kernel_config(backend.addr)).await;
    let (mut conn, mut tunnel) = raw_tunnel(proxy.addr("plain"), &mut backend, b"").await;
    conn.send(b"tunnel bytes").await;
    within("client half-close", conn.stream.shutdown()).await.unwrap();
    let mut received = Vec::new();
    within("the backend reading to the end", tunnel.read_to_end(&mut received))
        .await
        .unwrap();
    assert_eq!(received, b"tunnel bytes");
    // Sent only after the FIN arrived: the reply proves the other direction
    // stayed open.
    let big = vec![7u8; 1 << 20];
    within("the backend answering", tunnel.write_all(&big)).await.unwrap();
    within("the backend closing", tunnel.shutdown()).await.unwrap();
    assert_eq!(conn.read_to_end().await, big);
    proxy.stop().await;
}

#[tokio::test]
async fn bytes_sent_right_behind_the_handshake_reach_the_backend_first() {
    let mut backend = RawBackend::start(false, None).await;
    let proxy = start_proxy(&kernel_config(backend.addr)).await;
    let (mut conn, mut tunnel) = raw_tunnel(proxy.addr("plain"), &mut backend, b"in the same packet;").await;
    conn.send(b" then more").await;
    let mut got = vec![0; 29];
    within("the early bytes at the backend", tunnel.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"in the same packet; then more");
    proxy.stop().await;
}

#[tokio::test]
async fn a_backend_that_vanishes_ends_the_client_connection() {
    let mut backend = RawBackend::start(false, None).await;
    let proxy = start_proxy(&kernel_config(backend.addr)).await;
    let (mut conn, mut tunnel) = raw_tunnel(proxy.addr("plain"), &mut backend, b"").await;
    conn.send(b"ping").await;
    let mut got = [0; 4];
    within("bytes at the backend", tunnel.read_exact(&mut got))
        .await
        .unwrap();
    // A reset: closed with linger 0.
    socket2::SockRef::from(&tunnel)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(tunnel);
    let (rest, closed) = conn.read_until_closed(Duration::from_secs(10)).await;
    assert!(
        rest.is_empty() && closed.is_some(),
        "the client's connection stays open"
    );
    proxy.stop().await;
}

/// wsgate's own CPU while 384 MiB cross one tunnel (half each way).
async fn cpu_for_bytes(wsgate: &WsgateChild, backend: &mut RawBackend) -> Duration {
    let (conn, mut tunnel) = raw_tunnel(wsgate.addr("plain"), backend, b"").await;
    let mut client = conn.stream;
    let before = wsgate.cpu_time();
    pump(&mut client, &mut tunnel, HALF).await;
    pump(&mut tunnel, &mut client, HALF).await;
    wsgate.cpu_time() - before
}

/// The bytes each way of [`cpu_for_bytes`].
const HALF: usize = 192 << 20;

/// Spliced in user space, these bytes cost wsgate more than this much CPU
/// (about 165 ms on the test machine); in the kernel, less than
/// [`KERNEL_CEILING`]: nothing but what a loaded machine charges to
/// whichever process its interrupts land in (up to 20 ms seen while the
/// whole suite ran). The kernel forwards them in the senders' and its own
/// threads.
const USER_SPACE_FLOOR: Duration = Duration::from_millis(80);
const KERNEL_CEILING: Duration = Duration::from_millis(40);

#[tokio::test]
async fn the_bytes_never_enter_wsgate() {
    let mut backend = RawBackend::start(false, None).await;
    let wsgate = WsgateChild::start(&child_toml(backend.addr), &["plain"], "info", None).await;
    let cpu = cpu_for_bytes(&wsgate, &mut backend).await;
    assert!(
        cpu < KERNEL_CEILING,
        "wsgate spent {cpu:?} of CPU on 384 MiB: they went through user space\n{}",
        wsgate.log_tail(20)
    );
    // The tunnel ended (both sockets closed, each a FIN) with the kernel's
    // bytes counted.
    let closed = wsgate
        .wait_for_log("tunnel closed", |line| line["message"] == "tunnel closed")
        .await;
    assert_eq!(closed["from_client"], HALF, "{closed}");
    assert_eq!(closed["from_backend"], HALF, "{closed}");
    assert_eq!(closed["ended_by"], "peers", "{closed}");
    let metrics = scrape(wsgate.admin_addr()).await;
    assert_eq!(
        metrics.get("wsgate_kernel_spliced_tunnels_total", &[("route", "all")]),
        1.0
    );
    assert_eq!(
        metrics.get(
            "wsgate_tunnel_bytes_total",
            &[("route", "all"), ("direction", "client_to_backend")]
        ),
        HALF as f64
    );
    assert!(
        !wsgate.log_lines().iter().any(|line| line["message"] == "kernel_splice unavailable: those routes' tunnels are spliced in user space"),
        "{}",
        wsgate.log()
    );
}

/// Without CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN the program cannot be
/// loaded: one warning says so, and tunnels work, spliced in user space.
#[tokio::test]
async fn without_the_capabilities_one_line_says_so_and_tunnels_work_in_user_space() {
    let mut backend = RawBackend::start(false, None).await;
    let mut launch = WsgateLaunch::new(&child_toml(backend.addr), "info", None);
    // SAFETY: prctl(2) only, between fork and exec.
    unsafe {
        launch.command().as_std_mut().pre_exec(|| {
            // CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF: gone from the bounding
            // set, so root's exec does not get them.
            for capability in [12, 21, 39] {
                if libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut wsgate = launch.spawn();
    wsgate.wait_listening(&["plain"], true).await;
    let mut cpu = Duration::ZERO;
    for _ in 0..2 {
        cpu = cpu_for_bytes(&wsgate, &mut backend).await;
    }
    // The same bytes as above cost wsgate their user-space price: the
    // measurement above tells the two paths apart.
    assert!(cpu > USER_SPACE_FLOOR, "only {cpu:?} of CPU for 384 MiB in user space");
    let warnings: Vec<_> = wsgate
        .log_lines()
        .into_iter()
        .filter(|line| line["message"] == "kernel_splice unavailable: those routes' tunnels are spliced in user space")
        .collect();
    assert_eq!(warnings.len(), 1, "{}", wsgate.log());
    let metrics = scrape(wsgate.admin_addr()).await;
    assert_eq!(
        metrics.value_or_zero("wsgate_kernel_spliced_tunnels_total", &[("route", "all")]),
        0.0
    );
    let reason = warnings[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("Operation not permitted"), "{reason}");
}

/// A kernel-spliced tunnel stays until the process ends (as a plain one
/// does, it has no close code to send) and ends with it: a SIGTERM with one
/// open ends the client's connection within `shutdown_timeout`.
#[tokio::test]
async fn a_kernel_spliced_tunnel_ends_with_the_process() {
    let mut backend = RawBackend::start(false, None).await;
    let mut wsgate = WsgateChild::start(&child_toml(backend.addr), &["plain"], "info", None).await;
    let (mut conn, mut tunnel) = raw_tunnel(wsgate.addr("plain"), &mut backend, b"").await;
    pump(&mut conn.stream, &mut tunnel, 4096).await;
    wsgate.signal(libc::SIGTERM);
    assert!(wsgate.exits().await.success(), "{}", wsgate.log_tail(20));
    let (rest, closed) = conn.read_until_closed(Duration::from_secs(10)).await;
    assert!(
        rest.is_empty() && closed.is_some(),
        "the client's connection outlived wsgate"
    );
    let mut rest = Vec::new();
    within("the backend's connection ending", tunnel.read_to_end(&mut rest))
        .await
        .unwrap();
}
