//! Message framing: Content-Length and Transfer-Encoding together, in
//! conflict or malformed, on single, kept-alive and pipelined requests.

use super::*;

/// CL.TE / TE.CL: a front end that frames by one header and a back end that
/// frames by the other disagree on where the body ends; the rest becomes a
/// request of the attacker's choosing. RFC 9112 §6.1 allows processing such
/// a request by Transfer-Encoding alone; wsgate refuses it outright with
/// 400, as nginx and Envoy do, whichever header comes first (hyper drops a
/// Content-Length that follows Transfer-Encoding, so this is caught below
/// it, `src/framing.rs`), and closes the connection: neither the request
/// nor what a Content-Length reader would take for a second one reaches a
/// backend.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_400_and_nothing_reaches_the_backend() {
    let gate = Gate::start().await;
    let h = gate.host();
    let body = format!("5\r\nhello\r\n0\r\n\r\n{}", smuggled(&h));
    let cases = [
        (
            "CL then TE",
            post(&h, "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", &body),
        ),
        (
            "TE then CL",
            post(&h, "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", &body),
        ),
        (
            "names in other cases",
            post(&h, "content-LENGTH: 4\r\nTRANSFER-encoding: chunked\r\n", &body),
        ),
        (
            "CL of 0",
            post(&h, "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n", &body),
        ),
        (
            "a TE that is not chunked",
            post(&h, "Content-Length: 4\r\nTransfer-Encoding: gzip\r\n", "abcd"),
        ),
        (
            "on an upgrade",
            format!(
                "GET /ws HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
    ];
    for (what, request) in &cases {
        let reply = gate.refused(what, request.as_bytes(), 400).await;
        assert!(
            reply.text().contains("Content-Length and Transfer-Encoding together"),
            "{what}: {:?}",
            reply.text()
        );
    }
    // Split across reads, a byte at a time: the same answer.
    let request = post(&h, "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", &body);
    let reply = send_in_pieces(gate.addr(), request.as_bytes(), 1).await;
    assert_eq!(reply.status, Some(400), "byte by byte: {:?}", reply.text());
    assert!(reply.closed && reply.rest.is_empty(), "{:?}", reply.text());
    gate.canary_then_stop().await;
}

/// Keep-alive requests framed by Content-Length and by chunked encoding,
/// and one without a body, go through one after another on one connection
/// (wsgate follows their framing to find each head, and never takes body
/// bytes for one, even when they look like a forbidden head); a CL+TE head
/// after them is refused with 400 once their answers are out.
#[tokio::test]
async fn keep_alive_requests_are_followed_by_their_framing_and_a_later_cl_te_is_400() {
    let gate = Gate::start().await;
    let h = gate.host();
    // Bodies that hold what a careless scanner would take for a CL+TE head.
    let trap = "GET /trap HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunked = format!("{:x};ext=1\r\n{trap}\r\n0\r\nX-Trailer: 1\r\n\r\n", trap.len());
    let requests = [
        post(&h, &format!("Content-Length: {}\r\n", trap.len()), trap),
        post(&h, "Transfer-Encoding: chunked\r\n", &chunked),
        format!("\r\nGET /third HTTP/1.1\r\nHost: {h}\r\n\r\n"),
    ];
    let mut conn = RawConn::new(tcp_connect(gate.addr()).await);
    for (i, request) in requests.iter().enumerate() {
        // Each in two pieces, split inside the head, to cross reads.
        let (a, b) = request.as_bytes().split_at(request.len() / 3);
        conn.send(a).await;
        conn.send(b).await;
        let status = conn.read_response().await.status;
        assert_eq!(status, 200, "request {i} on the kept-alive connection");
    }
    let refused = post(&h, "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n");
    conn.send(refused.as_bytes()).await;
    let (raw, closed) = conn.read_until_closed(CLOSE_BOUND).await;
    let reply = parse_reply(raw, closed.is_some());
    assert_eq!(reply.status, Some(400), "{:?}", reply.text());
    assert!(reply.closed, "{:?}", reply.text());
    assert_eq!(
        gate.paths(),
        ["/upload", "/upload", "/third"],
        "{}",
        gate.backend.raw_text()
    );
    let bodies: Vec<Vec<u8>> = gate.backend.exchanges().iter().map(|e| e.body.clone()).collect();
    assert_eq!(bodies[0], trap.as_bytes());
    assert_eq!(bodies[1], trap.as_bytes());
    gate.proxy.stop().await;
}

/// A CL+TE request pipelined right behind a good one, in the same write:
/// the good one is answered first, then the 400, in order (as nginx answers
/// pipelined requests), and only the good one reaches the backend.
#[tokio::test]
async fn a_cl_te_request_pipelined_behind_a_good_one_is_400_after_its_answer() {
    let gate = Gate::start().await;
    let h = gate.host();
    let first = format!("GET /first HTTP/1.1\r\nHost: {h}\r\n\r\n");
    let refused = post(&h, "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n");
    let reply = send_raw(gate.addr(), format!("{first}{refused}{}", smuggled(&h)).as_bytes()).await;
    assert_eq!(reply.status, Some(200), "{:?}", reply.text());
    let second = parse_reply(reply.rest.clone(), reply.closed);
    assert_eq!(second.status, Some(400), "{:?}", reply.text());
    assert!(second.rest.is_empty() && reply.closed, "{:?}", reply.text());
    assert_eq!(gate.paths(), ["/first"], "{}", gate.backend.raw_text());
    gate.proxy.stop().await;
}

/// Two Content-Lengths that differ: each reader may pick another one
/// (RFC 9110 §8.6, RFC 9112 §6.3 (5): unrecoverable, 400 and close).
#[tokio::test]
async fn differing_content_lengths_are_400_and_nothing_reaches_the_backend() {
    let gate = Gate::start().await;
    let h = gate.host();
    let body = format!("hello{}", smuggled(&h));
    for (what, headers) in [
        ("two lines", "Content-Length: 5\r\nContent-Length: 6\r\n"),
        (
            "two lines, the short first",
            "Content-Length: 0\r\nContent-Length: 5\r\n",
        ),
        ("one list", "Content-Length: 5, 6\r\n"),
    ] {
        gate.refused(what, post(&h, headers, &body).as_bytes(), 400).await;
    }
    gate.canary_then_stop().await;
}

/// Content-Length values that parsers read differently: a sign, hex,
/// inner spaces, a list of equal values (RFC 9110 §8.6 lets a recipient
/// reject it, and forbids forwarding it as it is), an overflow. Only
/// `1*DIGIT` is a length.
#[tokio::test]
async fn malformed_content_length_values_are_400_and_nothing_reaches_the_backend() {
    let gate = Gate::start().await;
    let h = gate.host();
    let body = format!("hello{}", smuggled(&h));
    for value in [
        "+5",
        "-5",
        "0x5",
        "5 5",
        "5,",
        "5, 5",
        "5.0",
        "",
        "99999999999999999999999",
    ] {
        let headers = format!("Content-Length: {value}\r\n");
        gate.refused(
            &format!("Content-Length {value:?}"),
            post(&h, &headers, &body).as_bytes(),
            400,
        )
        .await;
    }
    gate.canary_then_stop().await;
}

/// The one repetition RFC 9110 §8.6 tolerates, two identical lines, is
/// forwarded as one line: the backend sees one length, the body whole, and
/// nothing behind it.
#[tokio::test]
async fn identical_content_length_lines_reach_the_backend_as_one() {
    let gate = Gate::start().await;
    let h = gate.host();
    let request = post(
        &h,
        "Content-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n",
        "hello",
    );
    let reply = send_raw(gate.addr(), request.as_bytes()).await;
    assert_eq!(reply.status, Some(200), "{:?}", reply.text());
    assert_eq!(reply.body, b"got 5 bytes");
    let exchanges = gate.backend.exchanges();
    assert_eq!(exchanges.len(), 1, "{exchanges:#?}");
    let seen = &exchanges[0];
    assert_eq!(seen.head.all("content-length"), ["5"], "{seen:#?}");
    assert!(seen.complete && seen.body == b"hello", "{seen:#?}");
    gate.proxy.stop().await;
}

/// RFC 9112 §6.3 (4): a request whose Transfer-Encoding does not end in
/// `chunked` has no length a recipient can determine: 400 and close. The
/// variants are those front and back ends have disagreed on (a second TE
/// line, look-alike tokens) and TE on HTTP/1.0, which knows no chunking
/// (RFC 9112 §6.1: the framing is faulty).
#[tokio::test]
async fn transfer_encoding_not_ending_in_chunked_is_400_and_nothing_reaches_the_backend() {
    let gate = Gate::start().await;
    let h = gate.host();
    let body = format!("5\r\nhello\r\n0\r\n\r\n{}", smuggled(&h));
    for (what, headers) in [
        ("chunked, gzip", "Transfer-Encoding: chunked, gzip\r\n"),
        ("gzip", "Transfer-Encoding: gzip\r\n"),
        ("identity", "Transfer-Encoding: identity\r\n"),
        (
            "a second line",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
        ),
        ("xchunked", "Transfer-Encoding: xchunked\r\n"),
        ("chunked-false", "Transfer-Encoding: chunked-false\r\n"),
        ("quoted", "Transfer-Encoding: \"chunked\"\r\n"),
        ("empty", "Transfer-Encoding: \r\n"),
    ] {
        gate.refused(what, post(&h, headers, &body).as_bytes(), 400).await;
    }
    let http10 = format!("POST /upload HTTP/1.0\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
    gate.refused("HTTP/1.0 with chunked", http10.as_bytes(), 400).await;
    gate.canary_then_stop().await;
}

/// `gzip, chunked` ends in chunked, but wsgate only removes the chunking:
/// forwarding the rest with Transfer-Encoding stripped hands the backend a
/// gzip stream as if it were the body. A coding the proxy does not
/// implement is 501 (RFC 9112 §6.1, as nginx answers), and chunked applied
/// twice is malformed (§6.1: a sender "MUST NOT apply the chunked transfer
/// coding more than once"): 400.
#[tokio::test]
async fn transfer_codings_other_than_one_chunked_are_refused_not_stripped() {
    let gate = Gate::start().await;
    let h = gate.host();
    let body = "5\r\nhello\r\n0\r\n\r\n";
    for (what, headers, status) in [
        ("gzip, chunked", "Transfer-Encoding: gzip, chunked\r\n", 501),
        (
            "deflate on its own line",
            "Transfer-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n",
            501,
        ),
        ("chunked twice", "Transfer-Encoding: chunked, chunked\r\n", 400),
        (
            "chunked on two lines",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            400,
        ),
    ] {
        gate.refused(what, post(&h, headers, body).as_bytes(), status).await;
    }
    gate.canary_then_stop().await;
}
