//! A connection's first request, when it is a whole WebSocket upgrade, is
//! answered without hyper (the fast path); any other first request, or an
//! upgrade whose head arrives in pieces, goes to hyper. Both must look the
//! same to a client, and every way between them must work.

mod support;

use std::net::SocketAddr;

use support::hostile::{send_in_pieces, send_raw};
use support::*;

/// A raw connection to `addr` that has sent `head` in pieces of `piece`
/// bytes (0: whole), and read the answer's head.
async fn upgrade(addr: SocketAddr, head: &[u8], piece: usize) -> (RawConn<tokio::net::TcpStream>, RawResponse) {
    let mut conn = RawConn::new(tcp_connect(addr).await);
    conn.stream.set_nodelay(true).unwrap();
    match piece {
        0 => conn.send(head).await,
        piece => {
            for part in head.chunks(piece) {
                conn.send(part).await;
                tokio::task::yield_now().await;
            }
        }
    }
    let answer = conn.read_head().await;
    (conn, answer)
}

/// An echo through `conn`'s tunnel, and its close.
async fn echo_then_close(conn: &mut RawConn<tokio::net::TcpStream>, text: &[u8]) {
    conn.send(&masked_frame(0x1, true, text)).await;
    let frame = conn.read_frame().await;
    assert_eq!((frame.opcode, frame.payload.as_slice()), (0x1, text));
    conn.send(&masked_frame(0x8, true, &1000u16.to_be_bytes())).await;
    assert_eq!(conn.read_frame().await.opcode, 0x8);
}

#[tokio::test]
async fn a_101_reads_the_same_whether_the_head_came_whole_or_in_pieces() {
    let backend = Backend::echo().await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let head = valid_upgrade(&format!("localhost:{}", addr.port()), "/same", &[]);

    let (mut whole, whole_answer) = upgrade(addr, head.as_bytes(), 0).await;
    let (mut pieces, pieces_answer) = upgrade(addr, head.as_bytes(), 7).await;
    for answer in [&whole_answer, &pieces_answer] {
        assert_eq!(answer.status, 101, "{answer:?}");
        assert_eq!(
            answer.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert!(answer.header("date").is_some_and(|d| d.ends_with(" GMT")), "{answer:?}");
        assert_eq!(answer.header("content-length"), None, "{answer:?}");
    }
    let names = |answer: &RawResponse| answer.headers.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&whole_answer),
        names(&pieces_answer),
        "the same fields, in the same order"
    );
    echo_then_close(&mut whole, b"whole").await;
    echo_then_close(&mut pieces, b"in pieces").await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_refused_first_upgrade_gets_a_whole_answer_and_nothing_behind_it_is_read() {
    let backend = Backend::echo().await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let host = format!("localhost:{}", addr.port());
    // No Sec-WebSocket-Key: 400. A frame and a second request behind it
    // were meant for a tunnel and must not be answered or forwarded.
    let mut bytes = format!(
        "GET /refused HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    bytes.extend(masked_frame(0x1, true, b"not for anyone"));
    bytes.extend(format!("GET /second HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes());
    for reply in [send_raw(addr, &bytes).await, send_in_pieces(addr, &bytes, 9).await] {
        assert_eq!(reply.status, Some(400), "{reply:?}");
        let field = |name: &str| {
            reply
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(field("connection").as_deref(), Some("close"), "{reply:?}");
        assert_eq!(field("content-length"), Some(reply.body.len().to_string()), "{reply:?}");
        assert!(field("date").is_some(), "{reply:?}");
        assert!(
            String::from_utf8_lossy(&reply.body).contains("Sec-WebSocket-Key"),
            "{reply:?}"
        );
        assert!(reply.rest.is_empty(), "one answer only: {reply:?}");
        assert!(reply.closed, "the connection ends: {reply:?}");
    }
    assert!(backend.requests().is_empty(), "nothing reached the backend");
    proxy.stop().await;
}

#[tokio::test]
async fn an_upgrade_after_a_plain_request_on_the_same_connection_opens_a_tunnel() {
    let backend = Backend::echo().await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let host = format!("localhost:{}", addr.port());
    let mut conn = RawConn::new(tcp_connect(addr).await);
    conn.send(format!("GET /plain HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await;
    let answer = conn.read_response().await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body_text(), "backend GET /plain");
    // Then an upgrade, with a frame in the same write, on that connection.
    let mut bytes = valid_upgrade(&host, "/later", &[]).into_bytes();
    bytes.extend(masked_frame(0x1, true, b"early"));
    conn.send(&bytes).await;
    let answer = conn.read_head().await;
    assert_eq!(answer.status, 101, "{answer:?}");
    let frame = conn.read_frame().await;
    assert_eq!((frame.opcode, frame.payload.as_slice()), (0x1, &b"early"[..]));
    echo_then_close(&mut conn, b"after a plain request").await;
    proxy.stop().await;
}
