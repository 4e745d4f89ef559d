//! Hostile HTTP/2 clients, each frame written by hand ([`RawH2`]), each
//! beside a well-behaved client that must be served all the while. What
//! each proves is in docs/security.md, "HTTP/2".

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::Request;
use support::http2::*;
use support::*;

/// The proxy's plain listener (h2c) in front of the echo backend, with
/// `listener_keys` on the listener.
async fn proxy_with(backend: &Backend, listener_keys: &str) -> ProxyHandle {
    let toml = config(backend.addr, None).replace(
        "listen = \"127.0.0.1:0\"\n",
        &format!("listen = \"127.0.0.1:0\"\n{listener_keys}"),
    );
    start_proxy(&toml).await
}

/// A well-behaved client on a connection of its own gets its answer.
async fn served(addr: SocketAddr) {
    let mut client = h2c_connect(addr).await;
    let request = Request::get(format!("http://localhost:{}/ok", addr.port()))
        .body(no_body())
        .unwrap();
    let (head, body) = client.request(request).await;
    assert_eq!(head.status, 200);
    assert_eq!(&body[..], b"backend GET /ok");
}

/// Sends `bytes` in pieces while the proxy reads them; stops at the first
/// piece it does not take within a second (it stopped reading) or that
/// fails (it closed). Returns how many bytes it took.
async fn send_while_read(raw: &mut RawH2, bytes: &[u8]) -> usize {
    let mut sent = 0;
    for piece in bytes.chunks(64 * 1024) {
        match tokio::time::timeout(Duration::from_secs(1), raw.send(piece)).await {
            Ok(Ok(())) => sent += piece.len(),
            _ => break,
        }
    }
    sent
}

/// The server's SETTINGS acknowledged, so its limits are in force (RFC 9113 §6.5.3).
async fn acknowledge_settings(raw: &mut RawH2) {
    raw.frame_where(|f| f.kind == frame::SETTINGS && f.flags & frame::ACK == 0)
        .await
        .expect("the server's SETTINGS");
    raw.send(&raw_frame(frame::SETTINGS, frame::ACK, 0, &[])).await.unwrap();
}

#[tokio::test]
async fn rapid_reset_ends_the_connection_with_enhance_your_calm() {
    let backend = Backend::echo().await;
    let proxy = proxy_with(&backend, "").await;
    let addr = proxy.addr("plain");
    let authority = format!("localhost:{}", addr.port());
    let mut raw = RawH2::connect(addr, &[]).await;
    let block = request_block("GET", &authority, "/", &[]);
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        let stream = 1 + 2 * i;
        burst.extend(raw_frame(
            frame::HEADERS,
            frame::END_HEADERS | frame::END_STREAM,
            stream,
            &block,
        ));
        burst.extend(raw_frame(frame::RST_STREAM, 0, stream, &reason::CANCEL.to_be_bytes()));
    }
    send_while_read(&mut raw, &burst).await;
    let goaway = raw
        .frame_where(|f| f.kind == frame::GOAWAY)
        .await
        .expect("a GOAWAY before the connection ends");
    assert_eq!(goaway.error_code(), reason::ENHANCE_YOUR_CALM);
    assert!(raw.next_frame().await.is_none(), "the connection ends");
    served(addr).await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_stream_past_the_concurrent_limit_is_refused_and_the_others_go_on() {
    let backend = Backend::echo().await;
    let proxy = proxy_with(&backend, "http2_max_concurrent_streams = 2\n").await;
    let addr = proxy.addr("plain");
    let authority = format!("localhost:{}", addr.port());
    let mut raw = RawH2::connect(addr, &[]).await;
    acknowledge_settings(&mut raw).await;
    // Three POSTs whose bodies never end: all three stay open.
    let block = request_block("POST", &authority, "/", &[]);
    for stream in [1, 3, 5] {
        raw.send(&raw_frame(frame::HEADERS, frame::END_HEADERS, stream, &block))
            .await
            .unwrap();
    }
    let refused = raw
        .frame_where(|f| f.kind == frame::RST_STREAM)
        .await
        .expect("a stream reset");
    assert_eq!((refused.stream, refused.error_code()), (5, reason::REFUSED_STREAM));
    // The first two are served: their bodies end, their echoes come.
    for stream in [1, 3] {
        raw.send(&raw_frame(frame::DATA, frame::END_STREAM, stream, b"hi"))
            .await
            .unwrap();
    }
    let data = raw
        .frame_where(|f| f.kind == frame::DATA && !f.payload.is_empty())
        .await
        .expect("an echo");
    assert_eq!(data.payload, b"hi");
    served(addr).await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_continuation_flood_ends_the_connection() {
    let backend = Backend::echo().await;
    let proxy = proxy_with(&backend, "").await;
    let addr = proxy.addr("plain");
    let authority = format!("localhost:{}", addr.port());
    let mut raw = RawH2::connect(addr, &[]).await;
    let mut flood = raw_frame(frame::HEADERS, 0, 1, &request_block("GET", &authority, "/", &[]));
    let mut piece = Vec::new();
    while piece.len() < 16 * 1024 - 200 {
        hpack_literal(&mut piece, "x-flood", &[b'a'; 100]);
    }
    // 16 MiB of header block that never ends, at most.
    for _ in 0..1024 {
        flood.extend(raw_frame(frame::CONTINUATION, 0, 1, &piece));
    }
    // What follows the GOAWAY is read out and dropped (a lingering close),
    // so the sending goes on; the GOAWAY came long before.
    send_while_read(&mut raw, &flood).await;
    let goaway = raw
        .frame_where(|f| f.kind == frame::GOAWAY)
        .await
        .expect("a GOAWAY before the connection ends");
    assert_eq!(goaway.error_code(), reason::ENHANCE_YOUR_CALM);
    assert!(raw.next_frame().await.is_none(), "the connection ends");
    assert!(backend.requests().is_empty());
    served(addr).await;
    proxy.stop().await;
}

#[tokio::test]
async fn an_hpack_bomb_ends_the_connection() {
    let backend = Backend::echo().await;
    let proxy = proxy_with(&backend, "").await;
    let addr = proxy.addr("plain");
    let authority = format!("localhost:{}", addr.port());
    let mut raw = RawH2::connect(addr, &[]).await;
    // One 4 KiB header into the dynamic table (RFC 7541 §6.2.1), then
    // referenced a thousand times by its index, one byte each: a 4 MiB
    // header list from a 5 KiB block.
    let mut block = request_block("GET", &authority, "/", &[]);
    block.push(0x40);
    hpack_string(&mut block, b"x-bomb");
    hpack_string(&mut block, &[b'b'; 4000]);
    for _ in 0..1000 {
        hpack_integer(&mut block, 0x80, 7, 62);
    }
    raw.send(&raw_frame(
        frame::HEADERS,
        frame::END_HEADERS | frame::END_STREAM,
        1,
        &block,
    ))
    .await
    .unwrap();
    // h2 stops keeping headers past the list's limit as it decodes, and
    // ends the connection: a client that sends this is not a browser.
    let goaway = raw
        .frame_where(|f| f.kind == frame::GOAWAY)
        .await
        .expect("a GOAWAY before the connection ends");
    assert_eq!(goaway.error_code(), reason::ENHANCE_YOUR_CALM);
    assert!(backend.requests().is_empty(), "no request reaches the backend");
    served(addr).await;
    proxy.stop().await;
}

#[tokio::test]
async fn settings_and_ping_floods_leave_other_clients_served() {
    let backend = Backend::echo().await;
    let proxy = proxy_with(&backend, "").await;
    let addr = proxy.addr("plain");
    let mut raw = RawH2::connect(addr, &[]).await;
    let mut flood = Vec::new();
    for i in 0..20_000u64 {
        flood.extend(raw_frame(frame::SETTINGS, 0, 0, &[]));
        flood.extend(raw_frame(frame::PING, 0, 0, &i.to_be_bytes()));
    }
    // Never read: the answers pile up on the proxy's side only as far as
    // the socket's buffer, then it stops reading.
    send_while_read(&mut raw, &flood).await;
    served(addr).await;
    drop(raw);
    served(addr).await;
    proxy.stop().await;
}

#[tokio::test]
async fn an_empty_data_flood_leaves_other_clients_served() {
    let backend = Backend::echo().await;
    let proxy = proxy_with(&backend, "").await;
    let addr = proxy.addr("plain");
    let authority = format!("localhost:{}", addr.port());
    let mut raw = RawH2::connect(addr, &[]).await;
    let mut flood = raw_frame(
        frame::HEADERS,
        frame::END_HEADERS,
        1,
        &request_block("POST", &authority, "/", &[]),
    );
    for _ in 0..100_000 {
        flood.extend(raw_frame(frame::DATA, 0, 1, &[]));
    }
    send_while_read(&mut raw, &flood).await;
    served(addr).await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_that_never_opens_its_window_gets_no_data_and_holds_back_no_one() {
    let backend = Backend::echo().await;
    let proxy = proxy_with(&backend, "").await;
    let addr = proxy.addr("plain");
    let authority = format!("localhost:{}", addr.port());
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: the proxy may send no DATA at all.
    let mut raw = RawH2::connect(addr, &[(0x4, 0)]).await;
    raw.send(&raw_frame(
        frame::HEADERS,
        frame::END_HEADERS,
        1,
        &request_block("POST", &authority, "/", &[]),
    ))
    .await
    .unwrap();
    let body = vec![b'x'; 100 * 1024];
    raw.send(&raw_frame(frame::DATA, frame::END_STREAM, 1, &body[..16 * 1024]))
        .await
        .unwrap();
    let head = raw
        .frame_where(|f| f.stream == 1 && f.kind == frame::HEADERS)
        .await
        .expect("the answer's head (HEADERS are not flow-controlled)");
    assert_eq!(head.flags & frame::END_STREAM, 0, "the echo's body is held back");
    // The echo waits in the proxy, bounded by the stream's send buffer;
    // another client is served meanwhile.
    served(addr).await;
    // Opening the window lets it through.
    let mut update = Vec::new();
    update.extend(raw_frame(frame::WINDOW_UPDATE, 0, 1, &(1u32 << 20).to_be_bytes()));
    raw.send(&update).await.unwrap();
    let data = raw
        .frame_where(|f| f.stream == 1 && f.kind == frame::DATA && !f.payload.is_empty())
        .await
        .expect("the echo once the window opens");
    assert!(data.payload.iter().all(|b| *b == b'x'));
    proxy.stop().await;
}
