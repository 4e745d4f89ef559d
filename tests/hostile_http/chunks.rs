//! Chunked bodies: malformed chunk-size lines, chunk extensions and
//! trailers.

use super::*;

/// A chunked POST of `chunks` with a smuggled request behind them: the
/// connection is closed with one answer at most, which is returned.
async fn broken_chunks(gate: &Gate, what: &str, chunks: &str) -> Reply {
    let h = gate.host();
    let body = format!("{chunks}{}", smuggled(&h));
    let request = post(&h, "Transfer-Encoding: chunked\r\n", &body);
    let reply = send_raw(gate.addr(), request.as_bytes()).await;
    assert!(reply.closed, "{what}: connection kept open: {:?}", reply.text());
    assert!(reply.rest.is_empty(), "{what}: a second answer: {:?}", reply.text());
    reply
}

/// No request reached the backend whole, and no byte of the smuggled one.
fn no_request_completed_and_nothing_smuggled(gate: &Gate) {
    let exchanges = gate.backend.exchanges();
    assert!(
        exchanges.iter().all(|e| !e.complete),
        "a broken chunked body reached the backend whole: {exchanges:#?}"
    );
    assert!(
        !contains(&gate.backend.raw(), b"smuggled"),
        "{}",
        gate.backend.raw_text()
    );
}

/// Chunk-size lines are where chunked parsers disagree most (bad hex, a
/// `0x` prefix, sizes that overflow 64 bits, a bare LF, extensions with a
/// bare LF, data longer than its size): the client gets 400, the
/// connection closes, and no backend ever holds a complete request made
/// of these bytes. A streaming proxy may have sent the head before the bad
/// chunk arrives; then that request must stay unfinished at the backend.
#[tokio::test]
async fn malformed_chunks_are_400_and_no_complete_request_reaches_the_backend() {
    let gate = Gate::start().await;
    let long_extension = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(20 * 1024));
    let cases: Vec<(&str, String)> = vec![
        ("bad hex", "5g\r\nhello\r\n0\r\n\r\n".into()),
        ("0x prefix", "0x5\r\nhello\r\n0\r\n\r\n".into()),
        ("negative", "-5\r\nhello\r\n0\r\n\r\n".into()),
        ("leading space", " 5\r\nhello\r\n0\r\n\r\n".into()),
        ("overflow", "10000000000000005\r\nhello\r\n0\r\n\r\n".into()),
        ("bare LF after the size", "5\nhello\r\n0\r\n\r\n".into()),
        ("bare LF in an extension", "5;a=b\nhello\r\n0\r\n\r\n".into()),
        ("data longer than its size", "3\r\nhello\r\n0\r\n\r\n".into()),
        ("bad second chunk", "5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n".into()),
        ("extension over the limit", long_extension),
    ];
    for (what, chunks) in &cases {
        let reply = broken_chunks(&gate, what, chunks).await;
        assert_eq!(reply.status, Some(400), "{what}: {:?}", reply.text());
    }
    no_request_completed_and_nothing_smuggled(&gate);
    gate.proxy.stop().await;
}

/// The same property without the status: whatever wsgate answers a broken
/// chunked body, it closes the connection, serves nothing behind it, and
/// no backend receives the request whole.
#[tokio::test]
async fn malformed_chunks_never_complete_a_request_at_the_backend() {
    let gate = Gate::start().await;
    for (what, chunks) in [
        ("bad hex", "5g\r\nhello\r\n0\r\n\r\n"),
        ("overflow", "10000000000000005\r\nhello\r\n0\r\n\r\n"),
        ("bare LF after the size", "5\nhello\r\n0\r\n\r\n"),
        ("bare LF in an extension", "5;a=b\nhello\r\n0\r\n\r\n"),
        ("data longer than its size", "3\r\nhello\r\n0\r\n\r\n"),
        ("bad second chunk", "5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n"),
    ] {
        let reply = broken_chunks(&gate, what, chunks).await;
        assert_ne!(reply.status, Some(200), "{what}: {:?}", reply.text());
    }
    no_request_completed_and_nothing_smuggled(&gate);
    gate.proxy.stop().await;
}

/// Chunk extensions are legal (RFC 9112 §7.1.1) and must be ignored: the
/// body arrives whole, and the extensions, which backends parse in
/// different ways, are not passed on.
#[tokio::test]
async fn chunk_extensions_are_accepted_and_not_forwarded() {
    let gate = Gate::start().await;
    let h = gate.host();
    let chunks = "5;name=value\r\nhello\r\n6 ; quoted=\"a;b\\\"c\"\r\n world\r\n0;last\r\n\r\n";
    let request = post(&h, "Transfer-Encoding: chunked\r\nConnection: close\r\n", chunks);
    let reply = send_raw(gate.addr(), request.as_bytes()).await;
    assert_eq!(reply.status, Some(200), "{:?}", reply.text());
    assert_eq!(reply.body, b"got 11 bytes");
    let exchanges = gate.backend.exchanges();
    assert_eq!(exchanges.len(), 1, "{exchanges:#?}");
    assert!(
        exchanges[0].complete && exchanges[0].body == b"hello world",
        "{exchanges:#?}"
    );
    let raw = gate.backend.raw();
    for extension in [&b"name=value"[..], b"quoted", b"last"] {
        assert!(!contains(&raw, extension), "{}", gate.backend.raw_text());
    }
    gate.proxy.stop().await;
}

/// Trailer fields arrive after the proxy has written the head: a forwarding
/// header in a trailer would slip past the replacement of the head's, and
/// some backends merge trailers into headers. They must not reach the
/// backend.
#[tokio::test]
async fn forwarding_headers_in_a_chunked_trailer_do_not_reach_the_backend() {
    let gate = Gate::start().await;
    let h = gate.host();
    let chunks = "5\r\nhello\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\r\n";
    let headers =
        "Transfer-Encoding: chunked\r\nTrailer: X-Forwarded-For, X-Real-IP\r\nTE: trailers\r\nConnection: close\r\n";
    let reply = send_raw(gate.addr(), post(&h, headers, chunks).as_bytes()).await;
    assert_eq!(reply.status, Some(200), "{:?}", reply.text());
    let exchanges = gate.backend.exchanges();
    assert_eq!(exchanges.len(), 1, "{exchanges:#?}");
    let seen = &exchanges[0];
    assert!(seen.complete && seen.body == b"hello", "{seen:#?}");
    assert_eq!(seen.head.all("x-forwarded-for"), ["127.0.0.1"], "{seen:#?}");
    assert!(
        seen.trailers.as_ref().is_none_or(|t| t.is_empty()),
        "trailers forwarded: {seen:#?}"
    );
    assert!(
        !contains(&gate.backend.raw(), b"6.6.6.6"),
        "{}",
        gate.backend.raw_text()
    );
    gate.proxy.stop().await;
}
