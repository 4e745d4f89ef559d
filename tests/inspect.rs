//! Inspected tunnels (`[route.inspect]`): frames followed as they pass, limits,
//! protocol violations, permessage-deflate, keepalive, lost peers, shutdown.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Limits large enough for the 16 MiB message.
const BIG: &str = "max_frame_size = \"32MiB\"\nmax_message_size = \"64MiB\"\n";

/// One connection to an echo backend: text and binary, 16 MiB, fragments, a
/// ping, then the client's close 4000.
async fn core_scenarios<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>, backend: &Backend) {
    assert_echo(&mut ws, Message::text("hello through wsgate")).await;
    assert_echo(&mut ws, Message::binary(vec![0u8, 1, 2, 127, 128, 254, 255])).await;

    let big: Vec<u8> = (0..16usize << 20).map(|i| (i % 251) as u8).collect();
    let limit = Duration::from_secs(60);
    within_for(limit, "sending 16 MiB", ws.send(Message::binary(big.clone())))
        .await
        .unwrap();
    match within_for(limit, "echo of 16 MiB", ws.next()).await {
        Some(Ok(Message::Binary(data))) => assert!(data[..] == big[..], "echo differs ({} bytes)", data.len()),
        other => panic!("expected the 16 MiB echo, got {other:?}"),
    }

    // The backend echoes whole messages only: the echo proves all fragments arrived.
    let parts = [
        ("frag", Data::Text, false),
        ("mented ", Data::Continue, false),
        ("message", Data::Continue, true),
    ];
    for (text, data, fin) in parts {
        send(
            &mut ws,
            Message::Frame(Frame::message(text.as_bytes().to_vec(), OpCode::Data(data), fin)),
        )
        .await;
    }
    assert_eq!(next_message(&mut ws).await, Message::text("fragmented message"));

    // The backend's tungstenite answers; that pong is not wsgate's, so it passes.
    send(&mut ws, Message::Ping(b"are you there".to_vec().into())).await;
    assert_eq!(
        next_message(&mut ws).await,
        Message::Pong(b"are you there".to_vec().into())
    );

    let Message::Close(frame) = close_message(4000, "client done") else {
        unreachable!()
    };
    within("client close", ws.close(frame)).await.expect("close");
    assert_eq!(backend.wait_close().await, (4000, "client done".to_string()));
    assert_eq!(next_message(&mut ws).await, close_message(4000, "client done"));
    assert_eq!(backend.accepts(), 1);
}

/// A backend that closes with 1001 right after the handshake: the client gets it.
async fn going_away<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>) {
    assert_eq!(next_message(&mut ws).await, close_message(1001, "going away"));
    drain(ws).await;
}

/// An echo backend and one that closes at once, each behind an inspecting proxy.
async fn core_setup(certs: Option<&TestCerts>) -> (Backend, Backend, ProxyHandle, ProxyHandle) {
    let echo = Backend::echo().await;
    let away = Backend::start(Behavior::CloseAfterHandshake(1001, "going away")).await;
    let echo_proxy = start_proxy(&inspect_config(&[echo.addr], certs, BIG)).await;
    let away_proxy = start_proxy(&inspect_config(&[away.addr], certs, "")).await;
    (echo, away, echo_proxy, away_proxy)
}

#[tokio::test]
async fn core_scenarios_over_ws() {
    let (echo, _away, echo_proxy, away_proxy) = core_setup(None).await;
    core_scenarios(ws_connect(echo_proxy.addr("plain"), "/chat", &[]).await.0, &echo).await;
    going_away(ws_connect(away_proxy.addr("plain"), "/", &[]).await.0).await;
    echo_proxy.stop().await;
    away_proxy.stop().await;
}

#[tokio::test]
async fn core_scenarios_over_wss() {
    let certs = TestCerts::generate();
    let (echo, _away, echo_proxy, away_proxy) = core_setup(Some(&certs)).await;
    let (ws, _) = wss_connect(echo_proxy.addr("tls"), "localhost", "/chat", &certs).await;
    core_scenarios(ws, &echo).await;
    going_away(wss_connect(away_proxy.addr("tls"), "localhost", "/", &certs).await.0).await;
    echo_proxy.stop().await;
    away_proxy.stop().await;
}

#[tokio::test]
async fn a_frame_in_the_same_write_as_the_handshake_is_not_lost() {
    let backend = Backend::echo().await;
    let proxy = inspect_proxy(&[backend.addr], "").await;
    let (mut client, _) = raw_client_with(proxy.addr("plain"), &[], &encode(0x81, true, b"early bird")).await;
    let echo = next_wire(&mut client, "client").await;
    assert_eq!((echo.b0, &echo.payload[..]), (0x81, &b"early bird"[..]));
    proxy.stop().await;
}

// ---------------------------------------------------------------- 2, 3. frames split and interleaved

#[tokio::test]
async fn a_frame_written_one_byte_at_a_time_is_followed() {
    let backend = Backend::echo().await;
    let proxy = inspect_proxy(&[backend.addr], "").await;
    let mut client = raw_client(proxy.addr("plain")).await;
    let payload: Vec<u8> = (0..200u8).map(|i| b'a' + i % 26).collect();
    for byte in encode(0x81, true, &payload) {
        within("one-byte write", async {
            client.write_all(&[byte]).await.unwrap();
            client.flush().await.unwrap();
        })
        .await;
        // Pacing, not readiness: gives the proxy the chance to read each byte on its own.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let echo = next_wire(&mut client, "client").await;
    assert_eq!((echo.b0, echo.masked, echo.payload), (0x81, false, payload));
    // A control frame is held until it is whole, then passes unchanged.
    for byte in encode(0x89, true, b"split ping") {
        client.write_all(&[byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let pong = next_wire(&mut client, "client").await;
    assert_eq!((pong.b0, pong.payload), (0x8a, b"split ping".to_vec()));
    for byte in encode(0x88, true, &close_payload(1000, "bye")) {
        client.write_all(&[byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(expect_close(&mut client, "client").await, (1000, "bye".to_string()));
    proxy.stop().await;
}

#[tokio::test]
async fn control_frames_between_fragments_pass() {
    let backend = Backend::echo().await;
    let proxy = inspect_proxy(&[backend.addr], "").await;
    let mut client = raw_client(proxy.addr("plain")).await;
    for (b0, payload) in [
        (0x01, &b"Hello, "[..]),
        (0x89, b"p1"),
        (0x00, b"fragmented "),
        (0x8a, b"unsolicited"),
        (0x80, b"world"),
    ] {
        client.write_all(&encode(b0, true, payload)).await.unwrap();
    }
    let mut got = vec![
        next_wire(&mut client, "client").await,
        next_wire(&mut client, "client").await,
    ];
    got.sort_by_key(|f| f.b0);
    let got: Vec<(u8, Vec<u8>)> = got.into_iter().map(|f| (f.b0, f.payload)).collect();
    assert_eq!(
        got,
        [(0x81, b"Hello, fragmented world".to_vec()), (0x8a, b"p1".to_vec())]
    );
    proxy.stop().await;
}

// ---------------------------------------------------------------- 4. message size

#[tokio::test]
async fn a_4_mib_message_in_64_kib_fragments_passes() {
    let backend = Backend::echo().await;
    let proxy = inspect_proxy(&[backend.addr], "max_message_size = \"8MiB\"\n").await;
    let (mut ws, _) = ws_connect(proxy.addr("plain"), "/", &[]).await;
    let big: Vec<u8> = (0..4usize << 20).map(|i| (i % 253) as u8).collect();
    for (i, chunk) in big.chunks(64 << 10).enumerate() {
        let opcode = OpCode::Data(if i == 0 { Data::Binary } else { Data::Continue });
        let fin = (i + 1) * (64 << 10) == big.len();
        send(&mut ws, Message::Frame(Frame::message(chunk.to_vec(), opcode, fin))).await;
    }
    match next_message(&mut ws).await {
        Message::Binary(data) => assert!(data[..] == big[..], "echo differs ({} bytes)", data.len()),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    close(ws).await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_message_over_max_message_size_ends_with_1009_both_ways() {
    let backend = Backend::echo().await;
    // Frames below the frame limit, the message above its own.
    let limits = "max_frame_size = \"512KiB\"\nmax_message_size = \"1MiB\"\n";
    let proxy = inspect_proxy(&[backend.addr], limits).await;
    let client = raw_client(proxy.addr("plain")).await;
    let (mut read, mut write) = client.into_split();
    // Writes on its own: the proxy may stop reading once the limit is crossed.
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 256 << 10];
        for i in 0..8 {
            let b0 = match i {
                0 => 0x02,
                7 => 0x80,
                _ => 0x00,
            };
            if write.write_all(&encode(b0, true, &chunk)).await.is_err() {
                return;
            }
        }
    });
    assert_eq!(expect_close(&mut read, "client").await.0, 1009);
    expect_end(&mut read, "client").await;
    assert_eq!(backend.wait_close().await.0, 1009);
    writer.abort();
    proxy.stop().await;
}

// ---------------------------------------------------------------- 5. permessage-deflate

/// "Hello" compressed (RFC 7692 §7.2.3.1).
const HELLO_DEFLATED: &[u8] = &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
const OFFER: (&str, &str) = ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits");

#[tokio::test]
async fn rsv1_passes_when_permessage_deflate_was_agreed() {
    let backend = RawBackend::start(true, Some("permessage-deflate")).await;
    let proxy = inspect_proxy(&[backend.addr], "").await;
    let (mut client, head) = raw_client_with(proxy.addr("plain"), &[OFFER], &[]).await;
    assert_eq!(header(&head, "sec-websocket-extensions"), Some("permessage-deflate"));
    client.write_all(&encode(0xc1, true, HELLO_DEFLATED)).await.unwrap();
    let echo = next_wire(&mut client, "client").await;
    assert_eq!((echo.b0, echo.masked, &echo.payload[..]), (0xc1, false, HELLO_DEFLATED));
    let seen = backend.seen();
    assert_eq!(
        (seen[0].b0, seen[0].masked, &seen[0].payload[..]),
        (0xc1, true, HELLO_DEFLATED)
    );
    proxy.stop().await;
}

#[tokio::test]
async fn rsv1_without_permessage_deflate_agreed_is_a_protocol_error() {
    // The client offers deflate, the backend does not take it: RSV1 stays illegal.
    let backend = RawBackend::start(true, None).await;
    let proxy = inspect_proxy(&[backend.addr], "").await;
    let (mut client, head) = raw_client_with(proxy.addr("plain"), &[OFFER], &[]).await;
    assert_eq!(header(&head, "sec-websocket-extensions"), None);
    client.write_all(&encode(0xc1, true, HELLO_DEFLATED)).await.unwrap();
    assert_eq!(expect_close(&mut client, "client").await.0, 1002);
    expect_end(&mut client, "client").await;
    let backend_close = || backend.seen().iter().find_map(Wire::close).map(|c| c.0);
    wait_until("the backend's close code", Some(1002), backend_close).await;
    assert!(
        !backend.seen().iter().any(|f| f.opcode() == 1),
        "the RSV1 frame reached the backend"
    );
    proxy.stop().await;
}

// ---------------------------------------------------------------- 6, 10. violations

/// A peer breaks the protocol with `frame`: the offender gets close `codes.0`,
/// the other side `codes.1`, and both connections end soon after. The other
/// side answers its close: a client's close waits for the backend's answer.
async fn violation(by_client: bool, frame: &[u8], codes: (u16, u16)) {
    let mut backend = RawBackend::start(false, None).await;
    let proxy = inspect_proxy(&[backend.addr], "").await;
    let mut client = raw_client(proxy.addr("plain")).await;
    let mut server = backend.next_conn().await;
    let start = Instant::now();
    let (offender, other) = match by_client {
        true => (&mut client, &mut server),
        false => (&mut server, &mut client),
    };
    offender.write_all(frame).await.unwrap();
    assert_eq!(expect_close(other, "other side").await.0, codes.1, "other side's close");
    // Masked from the client, not from the backend.
    let answer = encode(0x88, !by_client, &close_payload(codes.1, ""));
    other.write_all(&answer).await.unwrap();
    assert_eq!(expect_close(offender, "offender").await.0, codes.0, "offender's close");
    expect_end(offender, "offender").await;
    expect_end(other, "other side").await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "both connections took {took:?} to end");
    proxy.stop().await;
}

macro_rules! violations {
    ($($name:ident: $by_client:expr, $frame:expr => $codes:expr;)*) => {
        $(#[tokio::test]
        async fn $name() {
            violation($by_client, &$frame, $codes).await;
        })*
    };
}

const CLIENT: bool = true;
const BACKEND: bool = false;

violations! {
    an_unmasked_client_frame_gets_1002_both_ways: CLIENT, encode(0x81, false, b"unmasked") => (1002, 1002);
    an_unknown_opcode_from_the_client: CLIENT, encode(0x83, true, b"") => (1002, 1002);
    a_client_ping_over_125_bytes: CLIENT, encode(0x89, true, &[0; 126]) => (1002, 1002);
    a_fragmented_client_ping: CLIENT, encode(0x09, true, b"p") => (1002, 1002);
    a_continuation_with_no_message_open: CLIENT, encode(0x80, true, b"x") => (1002, 1002);
    a_64_bit_length_with_the_top_bit: CLIENT, [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4] => (1002, 1002);
    a_1_byte_close_body_from_the_client: CLIENT, encode(0x88, true, &[3]) => (1002, 1002);
    a_non_utf8_close_reason_gets_1007: CLIENT, encode(0x88, true, &[0x03, 0xe8, 0xff, 0xfe]) => (1007, 1002);
    an_invalid_close_code_from_the_backend_gets_1002_and_the_client_1011:
        BACKEND, [encode(0x81, false, b"hello"), encode(0x88, false, &close_payload(1005, ""))].concat() => (1002, 1011);
    a_masked_backend_frame_after_a_good_one: BACKEND, [encode(0x81, false, b"ok"), encode(0x81, true, b"masked")].concat() => (1002, 1011);
    rsv1_from_the_backend_without_deflate: BACKEND, [encode(0x81, false, b"ok"), encode(0xc1, false, b"x")].concat() => (1002, 1011);
    a_backend_whose_first_frame_is_bad_is_a_bad_gateway: BACKEND, encode(0x81, true, b"masked") => (1002, 1014);
    a_backend_that_sends_no_websocket_at_all: BACKEND, *b"HTTP/1.1 200 OK\r\n\r\nhello" => (1002, 1014);
}

/// A client sends a good message and a bad frame in one write. Through a
/// plain route the backend answers the message before it refuses the frame;
/// an inspected route refuses the frame itself, and still the answer comes
/// first and the close after it: a conforming client sees the same thing.
#[tokio::test]
async fn a_client_that_breaks_the_protocol_gets_the_answers_before_its_close() {
    let backend = Backend::echo().await;
    let unmasked = [encode(0x81, true, b"a"), encode(0x81, false, b"unmasked")].concat();
    let reserved_opcode = [encode(0x81, true, b"a"), encode(0x83, true, b"")].concat();

    let plain = start_proxy(&config(backend.addr, None)).await;
    let mut client = raw_client(plain.addr("plain")).await;
    client.write_all(&unmasked).await.unwrap();
    let echo = next_wire(&mut client, "client through a plain route").await;
    assert_eq!((echo.b0, &echo.payload[..]), (0x81, &b"a"[..]));
    plain.stop().await;

    let inspected = inspect_proxy(&[backend.addr], "").await;
    for _ in 0..10 {
        for burst in [&unmasked, &reserved_opcode] {
            let mut client = raw_client(inspected.addr("plain")).await;
            client.write_all(burst).await.unwrap();
            let echo = next_wire(&mut client, "client").await;
            assert_eq!((echo.b0, &echo.payload[..]), (0x81, &b"a"[..]), "the echo first");
            let close = next_wire(&mut client, "client").await.close();
            assert_eq!(close, Some((1002, "protocol violation".to_string())));
            expect_end(&mut client, "client").await;
        }
    }
    inspected.stop().await;
}

// ---------------------------------------------------------------- 7. keepalive

const KEEPALIVE: &str = "ping_interval = \"300ms\"\npong_timeout = \"300ms\"\n";

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected() {
    let backend = RawBackend::start(true, None).await;
    let proxy = inspect_proxy(&[backend.addr], KEEPALIVE).await;
    let (mut ws, _) = ws_connect(proxy.addr("plain"), "/", &[]).await;
    // Keep reading for 2 s: tungstenite answers each ping as it reads it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut pings = 0;
    while let Ok(message) = tokio::time::timeout_at(deadline, ws.next()).await {
        match message {
            Some(Ok(Message::Ping(p))) if p.len() == 8 && p.starts_with(b"wsg\0") => pings += 1,
            other => panic!("while idle: {other:?}"),
        }
    }
    assert!(pings >= 2, "{pings} pings from wsgate in 2 s with ping_interval 300ms");
    send(&mut ws, Message::text("still here")).await;
    assert_eq!(next_message(&mut ws).await, Message::text("still here"));
    let seen: Vec<(u8, Vec<u8>)> = backend.seen().into_iter().map(|f| (f.b0, f.payload)).collect();
    assert_eq!(
        seen,
        [(0x81, b"still here".to_vec())],
        "the backend saw wsgate's pongs or pings"
    );
    close(ws).await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_and_the_backend_gets_1001() {
    let backend = Backend::echo().await;
    let proxy = inspect_proxy(&[backend.addr], KEEPALIVE).await;
    let mut client = raw_client(proxy.addr("plain")).await;
    let start = Instant::now();
    // The client reads nothing meanwhile; the backend's close is the event.
    let (code, reason) = backend.wait_close().await;
    let took = start.elapsed();
    assert_eq!(code, 1001, "reason {reason:?}");
    assert!(
        took >= Duration::from_millis(450) && took <= Duration::from_secs(3),
        "the silent client was dropped after {took:?}"
    );
    let frames = expect_end(&mut client, "client").await;
    assert!(
        frames.iter().any(Wire::is_wsgate_ping),
        "no ping reached the client: {frames:?}"
    );
    proxy.stop().await;
}

// ---------------------------------------------------------------- 8, 9. lost backend, shutdown

#[tokio::test]
async fn a_lost_backend_gets_the_client_1011_and_the_next_handshake_goes_elsewhere() {
    let mut backends = vec![RawBackend::start(true, None).await, RawBackend::start(true, None).await];
    let proxy = inspect_proxy(&[backends[0].addr, backends[1].addr], "").await;
    let (mut ws, _) = ws_connect(proxy.addr("plain"), "/", &[]).await;
    send(&mut ws, Message::text("before")).await;
    assert_eq!(next_message(&mut ws).await, Message::text("before"));
    let i = backends
        .iter()
        .position(|b| b.accepts() == 1)
        .expect("a backend has the tunnel");
    let live = backends.remove(1 - i);
    assert_eq!(live.accepts(), 0);
    drop(backends); // ends its connection without a close frame
    assert_eq!(
        next_message(&mut ws).await,
        close_message(1011, "backend connection lost")
    );
    drain(ws).await;

    let (mut ws, _) = ws_connect(proxy.addr("plain"), "/", &[]).await;
    send(&mut ws, Message::text("after")).await;
    assert_eq!(next_message(&mut ws).await, Message::text("after"));
    assert_eq!(live.accepts(), 1);
    close(ws).await;
    proxy.stop().await;
}

#[tokio::test]
async fn shutdown_sends_1001_going_away_both_ways() {
    let backend = Backend::echo().await;
    let proxy = inspect_proxy(&[backend.addr], "").await;
    let (mut ws, _) = ws_connect(proxy.addr("plain"), "/", &[]).await;
    assert_echo(&mut ws, Message::text("before shutdown")).await;
    let stopping = tokio::spawn(proxy.stop());
    assert_eq!(next_message(&mut ws).await, close_message(1001, "going away"));
    assert_eq!(backend.wait_close().await, (1001, "going away".to_string()));
    within("proxy stop", stopping).await.expect("proxy stop");
}
