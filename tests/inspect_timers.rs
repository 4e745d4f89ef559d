//! Inspected tunnels over time: the idle timeout, keepalive toward the
//! backend (`ping_backend`), drain with a restart code, and a violation whose
//! header arrives split across reads.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use wsgate::tunnel::drain::DrainClose;

const KEEPALIVE: &str = "ping_interval = \"300ms\"\npong_timeout = \"300ms\"\n";

#[tokio::test]
async fn the_idle_timeout_counts_data_frames_only_and_sends_1001_both_ways() {
    let backend = Backend::echo().await;
    let proxy = inspect_proxy(&[backend.addr], "idle_timeout = \"500ms\"\n").await;
    let (mut ws, _) = ws_connect(proxy.addr("plain"), "/", &[]).await;

    // Data every 100 ms for twice the idle timeout keeps the tunnel open.
    let busy_until = Instant::now() + Duration::from_secs(1);
    let mut sent = 0;
    while Instant::now() < busy_until && sent < 20 {
        assert_echo(&mut ws, Message::text(format!("busy {sent}"))).await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sent >= 5, "only {sent} echoes while busy");

    // Pings are not data: the idle timeout runs on and both sides hear 1001.
    let quiet_since = Instant::now();
    let mut closed = None;
    for _ in 0..40 {
        send(&mut ws, Message::Ping(b"still there?".to_vec().into())).await;
        match next_message(&mut ws).await {
            Message::Pong(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Message::Close(frame) => {
                closed = frame;
                break;
            }
            other => panic!("while only pinging: {other:?}"),
        }
    }
    let took = quiet_since.elapsed();
    let frame = closed.expect("the idle timeout closed the tunnel");
    assert_eq!((u16::from(frame.code), frame.reason.as_str()), (1001, "idle timeout"));
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "closed {took:?} after the last data frame"
    );
    assert_eq!(backend.wait_close().await, (1001, "idle timeout".to_string()));
    drain(ws).await;
    proxy.stop().await;
}

#[tokio::test]
async fn ping_backend_pings_a_quiet_backend_consumes_its_pongs_and_drops_it_when_it_hangs() {
    let mut backend = RawBackend::start(false, None).await;
    let proxy = inspect_proxy(&[backend.addr], &format!("{KEEPALIVE}ping_backend = true\n")).await;
    let (mut ws, _) = ws_connect(proxy.addr("plain"), "/", &[]).await;
    let mut conn = backend.next_conn().await;
    // The client reads all along, so tungstenite answers wsgate's pings to it.
    let client = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..100 {
            match within("the client reading", ws.next()).await {
                Some(Ok(message)) => {
                    let end = matches!(message, Message::Close(_));
                    seen.push(message);
                    if end {
                        break;
                    }
                }
                _ => break,
            }
        }
        seen
    });

    for _ in 0..3 {
        let ping = next_wire(&mut conn, "backend").await;
        assert!(
            ping.is_wsgate_ping() && ping.masked,
            "not wsgate's masked ping: {ping:?}"
        );
        conn.write_all(&encode(0x8a, false, &ping.payload)).await.unwrap();
    }
    // Now the backend hangs: it reads nothing and answers nothing.
    let hung_at = Instant::now();
    let seen = within("the client's tunnel ending", client).await.unwrap();
    let took = hung_at.elapsed();
    match seen.last() {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(
                (u16::from(frame.code), frame.reason.as_str()),
                (1011, "backend not responding")
            )
        }
        other => panic!("the client's last message: {other:?} of {seen:?}"),
    }
    assert!(
        seen[..seen.len() - 1]
            .iter()
            .all(|m| matches!(m, Message::Ping(p) if p.starts_with(b"wsg\0"))),
        "the client saw more than wsgate's pings (a backend pong leaked?): {seen:?}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "the hung backend was given up after {took:?}"
    );
    expect_end(&mut conn, "backend").await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_restart_drain_sends_1012_both_ways() {
    let backend = Backend::echo().await;
    let proxy = inspect_proxy(&[backend.addr], "").await;
    let (mut ws, _) = ws_connect(proxy.addr("plain"), "/", &[]).await;
    assert_echo(&mut ws, Message::text("before restart")).await;
    let stopping = tokio::spawn(proxy.stop_with(DrainClose::RESTART));
    assert_eq!(next_message(&mut ws).await, close_message(1012, "service restart"));
    assert_eq!(backend.wait_close().await, (1012, "service restart".to_string()));
    within("proxy stop", stopping).await.expect("proxy stop");
}

#[tokio::test]
async fn a_violating_header_split_across_reads_still_gets_a_clean_close_to_the_backend() {
    let backend = Backend::echo().await;
    let proxy = inspect_proxy(
        &[backend.addr],
        "max_frame_size = \"1KiB\"\nmax_message_size = \"1KiB\"\n",
    )
    .await;
    let client = raw_client(proxy.addr("plain")).await;
    let (mut read, mut write) = client.into_split();
    // A masked binary frame announcing 64 KiB, header written a byte at a
    // time so that it reaches wsgate in several reads.
    let header = [0x82, 0x80 | 127, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
    // wsgate judges the length as soon as its bytes are in, before the
    // masking key: the connection may be closed before the last bytes go.
    for byte in header {
        if write.write_all(&[byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        expect_close(&mut read, "client").await,
        (1009, "message too big".to_string())
    );
    assert_eq!(
        backend.wait_close().await,
        (1009, "peer sent a message too big".to_string())
    );
    expect_end(&mut read, "client").await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_drain_spreads_the_close_frames_over_the_window() {
    let backend = Backend::echo().await;
    // A window of 4s / 2 = 2s, less the 200ms close timeout: 1.8s to spread over.
    let toml = inspect_config(&[backend.addr], None, "close_timeout = \"200ms\"\n")
        .replace("shutdown_timeout = \"2s\"", "shutdown_timeout = \"4s\"");
    let proxy = start_proxy(&toml).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let (mut ws, _) = ws_connect(proxy.addr("plain"), "/", &[]).await;
        assert_echo(&mut ws, Message::text(format!("client {i}"))).await;
        clients.push(ws);
    }
    let started = Instant::now();
    let stopping = tokio::spawn(proxy.stop());
    let mut told = Vec::new();
    for mut ws in clients {
        told.push(tokio::spawn(async move {
            let message = within("the drain's close frame", ws.next()).await;
            let at = Instant::now();
            assert_eq!(message.unwrap().unwrap(), close_message(1001, "going away"));
            at
        }));
    }
    let mut times = Vec::new();
    for client in told {
        times.push(client.await.unwrap().duration_since(started));
    }
    within("proxy stop", stopping).await.expect("proxy stop");
    let (first, last) = (times.iter().min().unwrap(), times.iter().max().unwrap());
    assert!(*last < Duration::from_secs(2), "the last close came after {last:?}");
    assert!(
        *last - *first >= Duration::from_millis(300),
        "20 closes within {:?} of each other: not spread",
        *last - *first
    );
}
