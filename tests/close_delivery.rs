//! A close frame or an error answer of wsgate's own reaches a peer that is
//! still sending: wsgate shuts down its writes and reads on (discarding)
//! before it closes, so the peer reads the answer rather than a reset.

mod support;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The route of the report: a 2 MiB message crosses it (the frame limit
/// follows the message limit down).
const ONE_MIB: &str = "max_message_size = \"1MiB\"\n";
const RUNS: usize = 100;
/// Runs at a time.
const BATCH: usize = 20;
/// The client's kernel send buffer: what a real path holds in flight. On
/// loopback the buffers would otherwise take the whole message before
/// wsgate has read its header, and the client would never be caught
/// sending.
const IN_FLIGHT: usize = 64 << 10;

/// A TCP connection to the proxy that can have only [`IN_FLIGHT`] bytes
/// unread by it.
async fn connect(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let tcp = tcp_connect(addr).await;
    hostile_peers::set_send_buffer(&tcp, IN_FLIGHT);
    tcp
}

/// One client as a WebSocket library drives it: a 2 MiB message sent
/// whole, then the answer read. Like most libraries (and browsers), it
/// gives up at the first reset, so a close frame that arrives behind one
/// is lost to it. Returns the close it got, or what it got instead.
async fn send_too_big<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>) -> Result<(u16, String), String> {
    let message = Message::binary(vec![7u8; 2 << 20]);
    within("sending 2 MiB", ws.send(message))
        .await
        .map_err(|error| format!("send failed: {error}"))?;
    match within("the client's close", ws.next()).await {
        Some(Ok(Message::Close(Some(frame)))) => Ok((u16::from(frame.code), frame.reason.to_string())),
        other => Err(format!("no close frame: {other:?}")),
    }
}

/// One client's run, started by a test's `connect`.
type Run = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(u16, String), String>> + Send>>;

/// [`RUNS`] clients, [`BATCH`] at a time: each must get 1009 with its reason.
async fn every_run_gets_1009(connect: impl Fn() -> Run) {
    let mut failures = Vec::new();
    for _ in 0..RUNS / BATCH {
        let mut batch = JoinSet::new();
        for _ in 0..BATCH {
            batch.spawn(connect());
        }
        while let Some(run) = batch.join_next().await {
            match run.expect("run panicked") {
                Ok((1009, reason)) if reason == "message too big" => {}
                other => failures.push(other),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {RUNS} runs got no 1009 \"message too big\": {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_big_gets_1009_with_its_reason_every_time_over_ws() {
    let backend = Backend::echo().await;
    let proxy = start_proxy(&inspect_config(&[backend.addr], None, ONE_MIB)).await;
    let addr = proxy.addr("plain");
    let url = format!("ws://localhost:{}/", addr.port());
    every_run_gets_1009(|| {
        let url = url.clone();
        Box::pin(async move { send_too_big(ws_handshake(connect(addr).await, &url, &[]).await.0).await })
    })
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_big_gets_1009_with_its_reason_every_time_over_wss() {
    let certs = TestCerts::generate();
    let backend = Backend::echo().await;
    let proxy = start_proxy(&inspect_config(&[backend.addr], Some(&certs), ONE_MIB)).await;
    let addr = proxy.addr("tls");
    let url = format!("wss://localhost:{}/", addr.port());
    every_run_gets_1009(|| {
        let (url, config) = (url.clone(), certs.client_config());
        Box::pin(async move {
            let tls = tls_over(connect(addr).await, "localhost", config).await;
            send_too_big(ws_handshake(tls, &url, &[]).await.0).await
        })
    })
    .await;
    proxy.stop().await;
}

/// A request whose body wsgate answers without reading: no route for it.
const NO_ROUTE: &str = "POST /elsewhere HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2097152\r\n\r\n";

/// One client as many HTTP libraries drive it: the whole request, its 2 MiB
/// body included, written before the answer is read; a write that fails
/// (a reset) ends it. Returns the answer's head line.
async fn post_unrouted<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> Result<String, String> {
    let request = [NO_ROUTE.as_bytes(), &vec![b'x'; 2 << 20]].concat();
    within("sending the request", stream.write_all(&request))
        .await
        .map_err(|error| format!("send failed: {error}"))?;
    let (answer, _) = read_until_closed(&mut stream, TIMEOUT).await;
    let answer = String::from_utf8_lossy(&answer);
    Ok(answer.lines().next().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_reaches_a_client_still_sending_its_body_over_http_and_https() {
    let certs = TestCerts::generate();
    let backend = Backend::echo().await;
    let toml = listeners(Some(&certs))
        + &route_and_upstream(backend.addr, "").replace(
            "upstream = \"backends\"\n",
            "upstream = \"backends\"\npath_prefix = \"/chat\"\n",
        );
    let proxy = start_proxy(&toml).await;
    let (plain, tls) = (proxy.addr("plain"), proxy.addr("tls"));
    let mut runs = JoinSet::new();
    for _ in 0..10 {
        runs.spawn(async move { post_unrouted(connect(plain).await).await });
        let config = certs.client_config();
        runs.spawn(async move { post_unrouted(tls_over(connect(tls).await, "localhost", config).await).await });
    }
    while let Some(run) = runs.join_next().await {
        assert_eq!(run.unwrap(), Ok("HTTP/1.1 404 Not Found".to_string()));
    }
    proxy.stop().await;
}
