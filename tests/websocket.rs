//! WebSocket traffic through the proxy, over ws and wss.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

async fn echo_proxy(certs: Option<&TestCerts>) -> (Backend, ProxyHandle) {
    let backend = Backend::echo().await;
    let proxy = start_proxy(&config(backend.addr, certs)).await;
    (backend, proxy)
}

/// A text and a binary message, each echoed.
async fn text_and_binary_echoes<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) {
    assert_echo(ws, Message::text("hello through wsgate")).await;
    assert_echo(ws, Message::binary(vec![0u8, 1, 2, 127, 128, 254, 255])).await;
}

/// Runs a scenario over ws and over wss (a real TLS handshake with a test
/// CA), each against its own backend and proxy: `mod <scenario> { ws, wss }`.
macro_rules! over_ws_and_wss {
    ($scenario:ident, $backend:expr) => {
        mod $scenario {
            use super::*;

            #[tokio::test]
            async fn ws() {
                let backend = $backend.await;
                let proxy = start_proxy(&config(backend.addr, None)).await;
                let (ws, _) = ws_connect(proxy.addr("plain"), "/chat", &[]).await;
                super::$scenario(ws, &backend).await;
                proxy.stop().await;
            }

            #[tokio::test]
            async fn wss() {
                let certs = TestCerts::generate();
                let backend = $backend.await;
                let proxy = start_proxy(&config(backend.addr, Some(&certs))).await;
                let (ws, _) = wss_connect(proxy.addr("tls"), "localhost", "/chat", &certs).await;
                super::$scenario(ws, &backend).await;
                proxy.stop().await;
            }
        }
    };
}

over_ws_and_wss!(text_and_binary_echo, Backend::echo());
async fn text_and_binary_echo<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>, backend: &Backend) {
    text_and_binary_echoes(&mut ws).await;
    close(ws).await;
    assert_eq!(backend.accepts(), 1);
    assert_eq!(backend.only_request().uri.path(), "/chat");
}

over_ws_and_wss!(a_16_mib_message_passes_whole, Backend::echo());
async fn a_16_mib_message_passes_whole<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>, _: &Backend) {
    let big: Vec<u8> = (0..16usize << 20).map(|i| (i % 251) as u8).collect();
    let limit = Duration::from_secs(60);
    within_for(limit, "sending 16 MiB", ws.send(Message::binary(big.clone())))
        .await
        .unwrap();
    let echoed = within_for(limit, "echo of 16 MiB", ws.next())
        .await
        .expect("stream ended")
        .expect("read");
    match echoed {
        Message::Binary(data) => assert!(data[..] == big[..], "16 MiB echo differs (got {} bytes)", data.len()),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    close(ws).await;
}

over_ws_and_wss!(a_fragmented_message_arrives_whole, Backend::echo());
async fn a_fragmented_message_arrives_whole<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    _: &Backend,
) {
    let parts: [(&str, OpCode, bool); 3] = [
        ("frag", OpCode::Data(Data::Text), false),
        ("mented ", OpCode::Data(Data::Continue), false),
        ("message", OpCode::Data(Data::Continue), true),
    ];
    for (text, opcode, fin) in parts {
        send(
            &mut ws,
            Message::Frame(Frame::message(text.as_bytes().to_vec(), opcode, fin)),
        )
        .await;
    }
    // The backend only echoes complete messages: the echo proves it got all three fragments.
    assert_eq!(next_message(&mut ws).await, Message::text("fragmented message"));
    close(ws).await;
}

over_ws_and_wss!(ping_is_answered_with_pong_through_the_proxy, Backend::echo());
async fn ping_is_answered_with_pong_through_the_proxy<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    _: &Backend,
) {
    send(&mut ws, Message::Ping(b"are you there".to_vec().into())).await;
    assert_eq!(
        next_message(&mut ws).await,
        Message::Pong(b"are you there".to_vec().into())
    );
    close(ws).await;
}

over_ws_and_wss!(client_close_code_and_reason_reach_the_backend, Backend::echo());
async fn client_close_code_and_reason_reach_the_backend<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    backend: &Backend,
) {
    let frame = CloseFrame {
        code: CloseCode::from(4000),
        reason: "client done".into(),
    };
    within("client close", ws.close(Some(frame.clone())))
        .await
        .expect("close");
    assert_eq!(backend.wait_close().await, (4000, "client done".to_string()));
    // The backend echoes the close frame; the client sees its own code come back.
    assert_eq!(next_message(&mut ws).await, Message::Close(Some(frame)));
}

over_ws_and_wss!(
    backend_close_going_away_reaches_the_client,
    Backend::start(Behavior::CloseAfterHandshake(1001, "going away"))
);
async fn backend_close_going_away_reaches_the_client<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    _: &Backend,
) {
    let expected = CloseFrame {
        code: CloseCode::Away,
        reason: "going away".into(),
    };
    assert_eq!(next_message(&mut ws).await, Message::Close(Some(expected)));
    within("end of stream after close", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

#[tokio::test]
async fn a_frame_sent_in_the_same_write_as_the_handshake_is_not_lost() {
    let (_backend, proxy) = echo_proxy(None).await;
    let addr = proxy.addr("plain");
    let mut bytes = valid_upgrade(&format!("localhost:{}", addr.port()), "/early", &[]).into_bytes();
    bytes.extend(masked_frame(0x1, true, b"early bird"));
    let mut conn = RawConn::new(tcp_connect(addr).await);
    conn.send(&bytes).await;
    let head = conn.read_head().await;
    assert_eq!(head.status, 101, "{head:?}");
    let frame = conn.read_frame().await;
    assert_eq!(
        (frame.fin, frame.opcode, frame.payload.as_slice()),
        (true, 0x1, &b"early bird"[..])
    );
    conn.send(&masked_frame(0x8, true, &1000u16.to_be_bytes())).await;
    assert_eq!(conn.read_frame().await.opcode, 0x8);
    drop(conn);
    proxy.stop().await;
}

#[tokio::test]
async fn the_backends_subprotocol_choice_reaches_the_client() {
    let (backend, proxy) = echo_proxy(None).await;
    let offer = [("Sec-WebSocket-Protocol", "chat.v2, chat.v1")];
    let (mut ws, response) = ws_connect(proxy.addr("plain"), "/", &offer).await;
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(chosen.as_deref(), Some("chat.v1"));
    assert_eq!(
        backend.only_request().all("sec-websocket-protocol").join(", "),
        "chat.v2, chat.v1"
    );
    text_and_binary_echoes(&mut ws).await;
    close(ws).await;
    proxy.stop().await;
}

#[tokio::test]
async fn extension_negotiation_headers_pass_through() {
    let (backend, proxy) = echo_proxy(None).await;
    let addr = proxy.addr("plain");
    let offer = [("Sec-WebSocket-Extensions", "x-test-ext; level=2, permessage-foo")];
    let mut conn = RawConn::new(tcp_connect(addr).await);
    conn.send(valid_upgrade(&format!("localhost:{}", addr.port()), "/", &offer).as_bytes())
        .await;
    let head = conn.read_head().await;
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(head.header("sec-websocket-extensions"), Some("x-test-ext"));
    assert_eq!(
        backend.only_request().all("sec-websocket-extensions").join(", "),
        "x-test-ext; level=2, permessage-foo"
    );
    drop(conn);
    proxy.stop().await;
}

/// Sends a valid handshake with spoofed and hop-by-hop headers; checks what the
/// client and the backend see.
async fn check_forwarded_headers<S>(stream: S, backend: &Backend, host: &str, proto: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let extra = [
        ("X-Forwarded-For", "203.0.113.9"),
        ("Origin", "http://app.example"),
        ("Cookie", "session=abc123"),
        ("X-Custom", "kept"),
        ("X-Hop", "drop-me"),
        ("Keep-Alive", "timeout=5"),
        ("Sec-WebSocket-Protocol", "chat.v1"),
    ];
    let request =
        valid_upgrade(host, "/fwd", &extra).replace("Connection: Upgrade\r\n", "Connection: Upgrade, X-Hop\r\n");
    let mut conn = RawConn::new(stream);
    conn.send(request.as_bytes()).await;
    let head = conn.read_head().await;
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(
        head.header("sec-websocket-accept"),
        Some(derive_accept_key(TEST_KEY.as_bytes()).as_str())
    );
    assert_eq!(head.header("sec-websocket-protocol"), Some("chat.v1"));

    let seen = backend.only_request();
    let expect = |name: &str, value: &str| assert_eq!(seen.header(name).as_deref(), Some(value), "{name}: {seen:#?}");
    expect("x-forwarded-for", "127.0.0.1");
    expect("x-forwarded-proto", proto);
    expect("x-forwarded-host", host);
    expect("origin", "http://app.example");
    expect("cookie", "session=abc123");
    expect("x-custom", "kept");
    expect("sec-websocket-key", TEST_KEY);
    expect("sec-websocket-version", "13");
    expect("sec-websocket-protocol", "chat.v1");
    assert!(
        seen.header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket")),
        "{seen:#?}"
    );
    assert_eq!(seen.header("x-hop"), None, "a header named in Connection is hop-by-hop");
    assert_eq!(seen.header("keep-alive"), None, "Keep-Alive is hop-by-hop");
    let forwarded = seen.header("forwarded").expect("Forwarded header").to_ascii_lowercase();
    assert!(
        forwarded.contains("for=") && forwarded.contains("127.0.0.1"),
        "Forwarded: {forwarded}"
    );
    assert!(forwarded.contains(&format!("proto={proto}")), "Forwarded: {forwarded}");
    assert!(
        forwarded.contains("host=") && forwarded.contains("localhost"),
        "Forwarded: {forwarded}"
    );
    assert!(
        !forwarded.contains("203.0.113.9"),
        "spoofed address leaked into Forwarded: {forwarded}"
    );
    conn.send(&masked_frame(0x8, true, &1000u16.to_be_bytes())).await;
    assert_eq!(conn.read_frame().await.opcode, 0x8);
}

#[tokio::test]
async fn forwarding_headers_over_ws() {
    let (backend, proxy) = echo_proxy(None).await;
    let addr = proxy.addr("plain");
    let host = format!("localhost:{}", addr.port());
    check_forwarded_headers(tcp_connect(addr).await, &backend, &host, "http").await;
    proxy.stop().await;
}

#[tokio::test]
async fn forwarding_headers_over_wss() {
    let certs = TestCerts::generate();
    let (backend, proxy) = echo_proxy(Some(&certs)).await;
    let addr = proxy.addr("tls");
    let tls = tls_connect(addr, "localhost", certs.client_config()).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    check_forwarded_headers(tls, &backend, &format!("localhost:{}", addr.port()), "https").await;
    proxy.stop().await;
}

#[tokio::test]
async fn sni_picks_the_certificate() {
    let certs = TestCerts::generate();
    let backend = Backend::echo().await;
    let toml = format!(
        "[global]\nshutdown_timeout = \"2s\"\n\n[[listener]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\n{}{}\n{}",
        tls_entry(&certs.server_cert(), &certs.server_key()),
        tls_entry(&certs.other_cert(), &certs.other_key()),
        route_and_upstream(backend.addr, ""),
    );
    let proxy = start_proxy(&toml).await;
    let addr = proxy.addr("tls");
    for (sni, expected) in [("localhost", certs.server_der()), ("other.test", certs.other_der())] {
        let tls = tls_connect(addr, sni, certs.client_config()).await;
        let presented = tls.get_ref().1.peer_certificates().expect("peer certificates")[0].clone();
        assert!(presented == *expected, "SNI {sni} got the wrong certificate");
    }
    let (mut ws, _) = wss_connect(addr, "other.test", "/", &certs).await;
    text_and_binary_echoes(&mut ws).await;
    close(ws).await;
    proxy.stop().await;
}
