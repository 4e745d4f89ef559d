//! HTTP/2 at the front door: plain requests over h2 (TLS, ALPN) and h2c
//! (prior knowledge), and WebSockets over HTTP/2 (RFC 8441 extended
//! CONNECT) bridged to the HTTP/1.1 echo backend.

mod support;

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::SinkExt;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::http2::*;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// The proxy with both listeners (`plain`, `tls`), routing to `backend`.
async fn proxy_for(backend: &Backend, certs: &TestCerts) -> ProxyHandle {
    start_proxy(&config(backend.addr, Some(certs))).await
}

#[tokio::test]
async fn get_over_h2c_is_forwarded_as_http11_with_forwarding_headers() {
    let backend = Backend::echo().await;
    let certs = TestCerts::generate();
    let proxy = proxy_for(&backend, &certs).await;
    let addr = proxy.addr("plain");
    let mut client = h2c_connect(addr).await;
    let authority = format!("localhost:{}", addr.port());
    let request = Request::get(format!("http://{authority}/hello?x=1"))
        .header("cookie", "session=abc123")
        .body(no_body())
        .unwrap();
    let (head, body) = client.request(request).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.version, http::Version::HTTP_2);
    assert_eq!(&body[..], b"backend GET /hello");
    let seen = backend.only_request();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.uri.path_and_query().map(|p| p.as_str()), Some("/hello?x=1"));
    assert_eq!(seen.header("host").as_deref(), Some(authority.as_str()));
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(seen.header("cookie").as_deref(), Some("session=abc123"));
    proxy.stop().await;
}

#[tokio::test]
async fn a_streamed_post_over_h2_with_tls_is_streamed_both_ways() {
    let backend = Backend::echo().await;
    let certs = TestCerts::generate();
    let proxy = proxy_for(&backend, &certs).await;
    let addr = proxy.addr("tls");
    let mut client = h2_tls_connect(addr, &certs).await;
    let (chunks, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let body = BodyExt::boxed(StreamBody::new(tokio_stream_of(receiver)));
    let request = Request::post(format!("https://localhost:{}/submit", addr.port()))
        .body(body)
        .unwrap();
    let mut response = client.send_only(request).await;
    assert_eq!(response.status(), 200);
    // Each chunk comes back before the next is sent: streamed, not buffered.
    for i in 0..5 {
        let chunk = Bytes::from(format!("chunk {i};"));
        chunks.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
        let mut echoed = Vec::new();
        while echoed.len() < chunk.len() {
            let frame = within("an echoed chunk", response.body_mut().frame())
                .await
                .expect("the body goes on")
                .expect("a body frame");
            echoed.extend_from_slice(&frame.into_data().expect("data"));
        }
        assert_eq!(echoed, chunk);
    }
    drop(chunks);
    let rest = within("end of the body", response.into_body().collect()).await.unwrap();
    assert!(rest.to_bytes().is_empty());
    assert_eq!(
        backend.only_request().header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    proxy.stop().await;
}

/// A body stream out of a channel's receiver.
fn tokio_stream_of<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

#[tokio::test]
async fn errors_answer_their_own_stream_and_the_others_go_on() {
    let certs = TestCerts::generate();
    let refused = refused_addr().await;
    let mut toml = listeners(Some(&certs));
    toml += &format!(
        "[[route]]\nname = \"dead\"\npath_prefix = \"/dead\"\nupstream = \"dead\"\n\n\
         [[upstream]]\nname = \"dead\"\nservers = [{{ address = \"{refused}\" }}]\n\n"
    );
    let backend = Backend::echo().await;
    toml += &format!(
        "[[route]]\nname = \"live\"\npath_prefix = \"/live\"\nupstream = \"live\"\n\n\
         [[upstream]]\nname = \"live\"\nservers = [{{ address = \"{}\" }}]\n",
        backend.addr
    );
    let proxy = start_proxy(&toml).await;
    let addr = proxy.addr("plain");
    let mut client = h2c_connect(addr).await;
    let get = |path: &str| {
        Request::get(format!("http://localhost:{}{path}", addr.port()))
            .body(no_body())
            .unwrap()
    };
    assert_eq!(client.request(get("/nowhere")).await.0.status, 404);
    assert_eq!(client.request(get("/dead")).await.0.status, 502);
    let (head, body) = client.request(get("/live")).await;
    assert_eq!(head.status, 200);
    assert_eq!(&body[..], b"backend GET /live");
    assert!(!client.task.is_finished(), "the connection outlives the errors");
    proxy.stop().await;
}

#[tokio::test]
async fn a_websocket_over_h2_carries_text_binary_16_mib_and_pings_and_closes_from_the_client() {
    let backend = Backend::echo().await;
    let certs = TestCerts::generate();
    let proxy = proxy_for(&backend, &certs).await;
    let addr = proxy.addr("tls");
    let mut client = h2_tls_connect(addr, &certs).await;
    let authority = format!("localhost:{}", addr.port());
    let (response, ws) = client
        .websocket(&authority, "/chat", &[("sec-websocket-protocol", "chat.v2, chat.v1")])
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("chat.v1"),
        "the backend's choice reaches the client"
    );
    assert!(!response.headers().contains_key("sec-websocket-accept"), "RFC 8441 §5");
    let mut ws = ws.expect("a WebSocket");
    let seen = backend.only_request();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.header("upgrade").as_deref(), Some("websocket"));
    assert_eq!(seen.header("sec-websocket-version").as_deref(), Some("13"));
    assert!(
        seen.header("sec-websocket-key").is_some(),
        "a fresh key for the backend"
    );
    assert_eq!(seen.header("host").as_deref(), Some(authority.as_str()));
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));

    assert_echo(&mut ws, Message::text("hello over h2")).await;
    assert_echo(&mut ws, Message::binary(vec![0u8, 1, 2, 255])).await;
    let big: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
    within("send 16 MiB", ws.send(Message::binary(big.clone())))
        .await
        .unwrap();
    match next_message(&mut ws).await {
        Message::Binary(echoed) => assert!(echoed[..] == big[..], "16 MiB echoed intact"),
        other => panic!("expected the 16 MiB message, got {other:?}"),
    }
    ws.send(Message::Ping("are you there".into())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::Pong("are you there".into()));
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Library(4000),
        reason: "done".into(),
    })))
    .await
    .unwrap();
    match next_message(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 4000),
        other => panic!("expected the echoed close, got {other:?}"),
    }
    assert_eq!(backend.wait_close().await.0, 4000);
    proxy.stop().await;
}

#[tokio::test]
async fn the_backends_close_code_reaches_the_h2_client() {
    let backend = Backend::start(Behavior::CloseAfterHandshake(4001, "bye")).await;
    let certs = TestCerts::generate();
    let proxy = proxy_for(&backend, &certs).await;
    let addr = proxy.addr("plain");
    let mut client = h2c_connect(addr).await;
    let (response, ws) = client.websocket(&format!("localhost:{}", addr.port()), "/", &[]).await;
    assert_eq!(response.status(), 200);
    let mut ws = ws.unwrap();
    match next_message(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4001);
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("expected the backend's close, got {other:?}"),
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_hundred_websockets_share_one_h2_connection() {
    let backend = Backend::echo().await;
    let certs = TestCerts::generate();
    let proxy = proxy_for(&backend, &certs).await;
    let addr = proxy.addr("tls");
    let mut client = h2_tls_connect(addr, &certs).await;
    let authority = format!("localhost:{}", addr.port());
    let mut sockets = Vec::new();
    for _ in 0..100 {
        let (response, ws) = client.websocket(&authority, "/", &[]).await;
        assert_eq!(response.status(), 200);
        sockets.push(ws.unwrap());
    }
    // All open at once: each echoes its own number.
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.send(Message::text(format!("socket {i}"))).await.unwrap();
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        assert_eq!(next_message(ws).await, Message::text(format!("socket {i}")));
    }
    assert_eq!(backend.accepts(), 100);
    proxy.stop().await;
}

#[tokio::test]
async fn a_refusing_backend_passes_its_status_and_body_through() {
    let backend = Backend::start(Behavior::Status(403, "not you")).await;
    let certs = TestCerts::generate();
    let proxy = proxy_for(&backend, &certs).await;
    let addr = proxy.addr("plain");
    let mut client = h2c_connect(addr).await;
    let (response, ws) = client.websocket(&format!("localhost:{}", addr.port()), "/", &[]).await;
    assert!(ws.is_none());
    assert_eq!(response.status(), 403);
    let body = within("the refusal's body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"not you");
    proxy.stop().await;
}

#[tokio::test]
async fn malformed_extended_connects_get_the_rfcs_answers() {
    let backend = Backend::echo().await;
    let certs = TestCerts::generate();
    let proxy = proxy_for(&backend, &certs).await;
    let addr = proxy.addr("plain");
    let authority = format!("localhost:{}", addr.port());
    let mut client = h2c_connect(addr).await;

    // RFC 8441 §5: no Sec-WebSocket-Key over HTTP/2.
    let (response, _) = client
        .websocket(&authority, "/", &[("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")])
        .await;
    assert_eq!(response.status(), 400);
    // RFC 6455 §4.4: an unknown version gets 426 and the version spoken.
    let mut request = extended_connect(&authority, "/", "websocket");
    request
        .headers_mut()
        .insert("sec-websocket-version", "8".parse().unwrap());
    let (head, _) = client.request(request).await;
    assert_eq!(head.status, 426);
    assert_eq!(head.headers.get("sec-websocket-version").unwrap(), "13");
    // A :protocol other than websocket is not served.
    let (head, _) = client.request(extended_connect(&authority, "/", "connect-udp")).await;
    assert_eq!(head.status, 501);
    // A plain CONNECT asks for a forward proxy.
    let connect = Request::connect(authority.as_str()).body(no_body()).unwrap();
    let (head, _) = client.request(connect).await;
    assert_eq!(head.status, 501);
    assert!(backend.requests().is_empty(), "no refusal reaches the backend");
    // The connection serves on.
    let (response, ws) = client.websocket(&authority, "/", &[]).await;
    assert_eq!(response.status(), 200);
    let mut ws = ws.unwrap();
    assert_echo(&mut ws, Message::text("still here")).await;
    proxy.stop().await;
}

#[tokio::test]
async fn http2_false_offers_only_http11() {
    let backend = Backend::echo().await;
    let certs = TestCerts::generate();
    let toml = config(backend.addr, Some(&certs)).replace(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\nhttp2 = false\n",
    );
    let proxy = start_proxy(&toml).await;
    let tls = tls_connect(proxy.addr("tls"), "localhost", h2_client_config(&certs)).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // Without HTTP/2 the preface is an HTTP/1.1 request hyper refuses.
    let mut tcp = tcp_connect(proxy.addr("plain")).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    within("the answer to a preface", tcp.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(!answer.starts_with(&[0, 0]), "not an HTTP/2 SETTINGS frame: {answer:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn an_inspected_websocket_over_h2_gets_1001_both_ways_at_shutdown() {
    let backend = Backend::echo().await;
    let proxy = inspect_proxy(&[backend.addr], "").await;
    let addr = proxy.addr("plain");
    let mut client = h2c_connect(addr).await;
    let (response, ws) = client.websocket(&format!("localhost:{}", addr.port()), "/", &[]).await;
    assert_eq!(response.status(), 200);
    let mut ws = ws.unwrap();
    assert_echo(&mut ws, Message::text("inspected")).await;
    let stopping = tokio::spawn(proxy.stop());
    match next_message(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected 1001, got {other:?}"),
    }
    assert_eq!(backend.wait_close().await.0, 1001);
    within("proxy stop", stopping).await.expect("proxy stop");
}

#[tokio::test]
async fn admission_refuses_over_h2_as_over_http11_and_metrics_name_the_protocol() {
    let backend = Backend::echo().await;
    let toml = listeners(None)
        + "[admin]\nlisten = \"127.0.0.1:0\"\n\n"
        + &route_and_upstream(backend.addr, "").replace(
            "upstream = \"backends\"\n\n",
            "upstream = \"backends\"\nallowed_origins = [\"https://ok.example\"]\n\n",
        );
    let (server, names) = bind_proxy(&toml).await;
    let admin = server.admin_addr().expect("[admin]");
    let proxy = run_proxy(server, names);
    let addr = proxy.addr("plain");
    let authority = format!("localhost:{}", addr.port());
    let mut client = h2c_connect(addr).await;
    let (refused, _) = client
        .websocket(&authority, "/", &[("origin", "https://evil.example")])
        .await;
    assert_eq!(refused.status(), 403);
    let (admitted, ws) = client
        .websocket(&authority, "/", &[("origin", "https://ok.example")])
        .await;
    assert_eq!(admitted.status(), 200);
    drop(ws);
    assert_eq!(backend.requests().len(), 1, "the refusal never reached the backend");
    let metrics = scrape(admin).await;
    let h2_websockets = [("listener", "plain"), ("protocol", "h2"), ("kind", "websocket")];
    assert_eq!(metrics.get("wsgate_requests_total", &h2_websockets), 2.0);
    proxy.stop().await;
}

#[tokio::test]
async fn a_stream_reset_by_the_client_ends_its_tunnel_only() {
    let backend = Backend::echo().await;
    let proxy = inspect_proxy(&[backend.addr], "").await;
    let addr = proxy.addr("plain");
    let authority = format!("localhost:{}", addr.port());
    let mut client = h2c_connect(addr).await;
    let (_, gone) = client.websocket(&authority, "/", &[]).await;
    let (_, stays) = client.websocket(&authority, "/", &[]).await;
    let (mut gone, mut stays) = (gone.unwrap(), stays.unwrap());
    assert_echo(&mut gone, Message::text("first")).await;
    // Dropped without a close frame: its stream is reset (RST_STREAM).
    drop(gone);
    let (code, _) = backend.wait_close().await;
    assert_eq!(code, 1001, "the backend is told the client went away");
    assert_echo(&mut stays, Message::text("still open")).await;
    proxy.stop().await;
}

#[tokio::test]
async fn an_idle_h2_connection_is_closed_but_not_while_a_websocket_is_open() {
    let backend = Backend::echo().await;
    let toml = config(backend.addr, None).replace(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\nhttp2_idle_timeout = \"1s\"\n",
    );
    let proxy = start_proxy(&toml).await;
    let addr = proxy.addr("plain");
    let mut client = h2c_connect(addr).await;
    let (response, ws) = client.websocket(&format!("localhost:{}", addr.port()), "/", &[]).await;
    assert_eq!(response.status(), 200);
    let mut ws = ws.unwrap();
    // Twice the idle timeout with the WebSocket open and silent: still served.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(!client.task.is_finished(), "an open WebSocket keeps its connection");
    assert_echo(&mut ws, Message::text("still here")).await;
    ws.send(Message::Close(None)).await.unwrap();
    assert!(matches!(next_message(&mut ws).await, Message::Close(_)));
    drop(ws);
    // No stream open: GOAWAY after the idle timeout, and the connection ends.
    let ended = within("the idle connection's end", client.task)
        .await
        .expect("the connection task");
    assert!(ended.is_ok(), "a graceful GOAWAY: {ended:?}");
    proxy.stop().await;
}

/// A drain (shutdown or restart) tells an HTTP/2 client with GOAWAY
/// (NO_ERROR) that no new stream will be served on its connection, after
/// the requests it had made were answered.
#[tokio::test]
async fn a_drain_sends_goaway_to_an_h2_connection() {
    let backend = Backend::echo().await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let authority = format!("localhost:{}", addr.port());
    let mut raw = RawH2::connect(addr, &[]).await;
    let block = request_block("GET", &authority, "/", &[]);
    raw.send(&raw_frame(
        frame::HEADERS,
        frame::END_HEADERS | frame::END_STREAM,
        1,
        &block,
    ))
    .await
    .unwrap();
    let answer = raw
        .frame_where(|f| f.kind == frame::HEADERS && f.stream == 1)
        .await
        .expect("the request answered");
    assert_eq!(answer.stream, 1);
    let stopping = tokio::spawn(proxy.stop_with(wsgate::tunnel::drain::DrainClose::RESTART));
    let goaway = raw
        .frame_where(|f| f.kind == frame::GOAWAY)
        .await
        .expect("a GOAWAY before the connection ends");
    assert_eq!(goaway.error_code(), 0, "NO_ERROR: a graceful end");
    within("proxy stop", stopping).await.expect("proxy stop");
}

/// One WebSocket whose client stops reading holds back only its own
/// stream: its sender stalls once the windows and buffers along its way are
/// full (nothing piles up in wsgate), another WebSocket on the same HTTP/2
/// connection goes on echoing, and once the first reads again every echo
/// arrives, in order.
#[tokio::test]
async fn a_client_that_stops_reading_one_stream_holds_back_only_that_stream() {
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const MESSAGES: usize = 512;
    const SIZE: usize = 64 << 10;
    let backend = Backend::echo().await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let authority = format!("localhost:{}", addr.port());
    let mut client = h2c_connect(addr).await;
    let (_, stuck) = client.websocket(&authority, "/", &[]).await;
    let (_, other) = client.websocket(&authority, "/", &[]).await;
    let (mut stuck_tx, mut stuck_rx) = stuck.unwrap().split();
    let mut other = other.unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    let sender = tokio::spawn(async move {
        for n in 0..MESSAGES {
            let mut payload = vec![(n % 251) as u8; SIZE];
            payload[..8].copy_from_slice(&(n as u64).to_be_bytes());
            stuck_tx.send(Message::binary(payload)).await.unwrap();
            counted.store(n + 1, Ordering::Relaxed);
        }
        stuck_tx
    });
    // Stalled: no progress for a second (at most 30 s of waiting in all).
    let mut last = usize::MAX;
    for _ in 0..30 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = sent.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let held = sent.load(Ordering::Relaxed);
    assert!(held < MESSAGES, "the sender is held back ({held} of {MESSAGES} sent)");
    for i in 0..20 {
        assert_echo(&mut other, Message::text(format!("other {i}"))).await;
    }
    // Reading again: every echo, in order, and the sender finishes.
    for n in 0..MESSAGES {
        let echo = within("an echo of the held-back stream", stuck_rx.next())
            .await
            .expect("the stream goes on")
            .expect("no error");
        let data = echo.into_data();
        assert_eq!(data.len(), SIZE);
        assert_eq!(u64::from_be_bytes(data[..8].try_into().unwrap()), n as u64);
    }
    drop(within("the sender", sender).await.unwrap());
    proxy.stop().await;
}

/// A backend that goes away without a close frame: an inspected WebSocket
/// over HTTP/2 gets 1011 as one over HTTP/1.1 does, and the connection's
/// other streams go on.
#[tokio::test]
async fn a_lost_backend_gets_an_inspected_h2_websocket_1011() {
    let lost = RawBackend::start(true, None).await;
    let echo = Backend::echo().await;
    let toml = format!(
        "{}[[route]]\nname = \"lost\"\npath_prefix = \"/lost\"\nupstream = \"lost\"\n[route.inspect]\n\n\
         [[upstream]]\nname = \"lost\"\nservers = [{{ address = \"{}\" }}]\n\n{}",
        listeners(None),
        lost.addr,
        route_and_upstream(echo.addr, "")
    );
    let proxy = start_proxy(&toml).await;
    let addr = proxy.addr("plain");
    let authority = format!("localhost:{}", addr.port());
    let mut client = h2c_connect(addr).await;
    let (_, ws) = client.websocket(&authority, "/lost", &[]).await;
    let mut ws = ws.expect("a WebSocket to the backend that goes");
    let (_, other) = client.websocket(&authority, "/", &[]).await;
    let mut other = other.expect("a WebSocket to the echo backend");
    assert_echo(&mut ws, Message::text("before")).await;
    drop(lost); // ends its connection without a close frame
    assert_eq!(
        next_message(&mut ws).await,
        close_message(1011, "backend connection lost")
    );
    assert_echo(&mut other, Message::text("still here")).await;
    proxy.stop().await;
}

/// Ending over HTTP/2: the client's END_STREAM reaches the backend as the
/// end of its connection's input, and the backend's FIN reaches the client
/// as END_STREAM, on a plain tunnel (no close frames involved).
#[tokio::test]
async fn end_stream_and_fin_cross_the_bridge_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::echo().await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let authority = format!("localhost:{}", addr.port());
    let mut client = h2c_connect(addr).await;
    let mut response = client.send_only(extended_connect(&authority, "/", "websocket")).await;
    assert_eq!(response.status(), 200);
    let upgraded = within("the CONNECT stream", hyper::upgrade::on(&mut response))
        .await
        .expect("the CONNECT stream");
    let mut stream = hyper_util::rt::TokioIo::new(upgraded);
    stream.write_all(&masked_frame(0x1, true, b"over h2")).await.unwrap();
    let echo = within("the echo", read_wire(&mut stream)).await.unwrap();
    assert_eq!(echo.payload, b"over h2");
    // END_STREAM: the backend's input ends, it ends its connection, and
    // that FIN comes back as the end of this stream.
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("the end of the stream", stream.read_to_end(&mut rest))
        .await
        .expect("a clean end, not a reset");
    assert!(rest.is_empty(), "nothing after the echo: {rest:?}");
    proxy.stop().await;
}

/// A backend that resets its connection: a plain (not inspected) WebSocket
/// over HTTP/2 ends at once, and the connection's other streams go on.
/// The stream ends as the client's HTTP/1.1 connection would, where wsgate
/// closes with a FIN (as nginx does): with END_STREAM. RFC 8441 §4 would
/// have a reset passed on as RST_STREAM (CANCEL), but hyper ends an
/// upgraded stream only with END_STREAM, and its own client reads a
/// CANCEL as a clean end anyway.
#[tokio::test]
async fn a_backend_reset_ends_its_plain_h2_stream_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut resetting = RawBackend::start(false, None).await;
    let echo = Backend::echo().await;
    let toml = format!(
        "{}[[route]]\nname = \"resets\"\npath_prefix = \"/resets\"\nupstream = \"resets\"\n\n\
         [[upstream]]\nname = \"resets\"\nservers = [{{ address = \"{}\" }}]\n\n{}",
        listeners(None),
        resetting.addr,
        route_and_upstream(echo.addr, "")
    );
    let proxy = start_proxy(&toml).await;
    let addr = proxy.addr("plain");
    let authority = format!("localhost:{}", addr.port());
    let mut client = h2c_connect(addr).await;
    let mut response = client
        .send_only(extended_connect(&authority, "/resets", "websocket"))
        .await;
    assert_eq!(response.status(), 200);
    let upgraded = within("the CONNECT stream", hyper::upgrade::on(&mut response))
        .await
        .expect("the CONNECT stream");
    let mut stream = hyper_util::rt::TokioIo::new(upgraded);
    let (_, other) = client.websocket(&authority, "/", &[]).await;
    let mut other = other.expect("a WebSocket to the echo backend");

    let mut backend_side = resetting.next_conn().await;
    stream.write_all(&masked_frame(0x1, true, b"before")).await.unwrap();
    let arrived = within("the frame at the backend", read_wire(&mut backend_side))
        .await
        .unwrap();
    assert_eq!(arrived.payload, b"before");
    socket2::SockRef::from(&backend_side)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(backend_side); // a reset, not a FIN
    let mut rest = Vec::new();
    let ended = within("the end of the stream", stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(ended, Ok(0)),
        "the stream ends with nothing after the frame: {ended:?}, {rest:?}"
    );
    assert_echo(&mut other, Message::text("still here")).await;
    proxy.stop().await;
}
