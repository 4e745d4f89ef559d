//! Request smuggling and malformed HTTP/1.1: each hostile request gets the
//! right 4xx, the connection is closed behind it, and nothing reaches a
//! backend that the backend could read differently from wsgate. Requests are
//! written byte for byte on raw TCP; the backends are real hyper servers that
//! record what they received (heads, whole bodies, raw bytes).

mod support;

use std::net::SocketAddr;

use support::hostile::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A proxy (listener `plain`, one route for any host) in front of a
/// [`BodyBackend`].
struct Gate {
    backend: BodyBackend,
    proxy: ProxyHandle,
}

impl Gate {
    async fn start() -> Gate {
        Gate::with_global("").await
    }

    /// With extra `[global]` keys.
    async fn with_global(global: &str) -> Gate {
        let backend = BodyBackend::start().await;
        let toml = config(backend.addr, None).replace("[global]\n", &format!("[global]\n{global}\n"));
        let proxy = start_proxy(&toml).await;
        Gate { backend, proxy }
    }

    fn addr(&self) -> SocketAddr {
        self.proxy.addr("plain")
    }

    fn host(&self) -> String {
        format!("localhost:{}", self.addr().port())
    }

    /// `bytes` must be answered with `status` alone, the connection closed
    /// behind it, and nothing new reaching the backend.
    async fn refused(&self, what: &str, bytes: &[u8], status: u16) -> Reply {
        let before = (self.backend.exchanges().len(), self.backend.raw().len());
        let reply = send_raw(self.addr(), bytes).await;
        let sent = String::from_utf8_lossy(bytes);
        assert_eq!(
            reply.status,
            Some(status),
            "{what}: wrong answer to\n{sent:?}\ngot: {:?}",
            reply.text()
        );
        assert!(
            reply.closed,
            "{what}: the connection stayed open after the {status} (sent {sent:?}, got {:?})",
            reply.text()
        );
        assert!(
            reply.rest.is_empty(),
            "{what}: more than one answer (sent {sent:?}, got {:?})",
            reply.text()
        );
        let after = (self.backend.exchanges().len(), self.backend.raw().len());
        assert_eq!(
            after,
            before,
            "{what}: the backend received something for a refused request:\n{}",
            self.backend.raw_text()
        );
        reply
    }

    /// A well-formed request after the refused ones: it is answered, and it
    /// is the only thing the backend ever received.
    /// Each request refused with `status` and the connection closed, then
    /// the canary as all the backend saw; the proxy is stopped.
    async fn refuses_each<R: AsRef<[u8]>>(self, cases: impl IntoIterator<Item = (&str, R)>, status: u16) {
        for (what, request) in cases {
            self.refused(what, request.as_ref(), status).await;
        }
        self.canary_is_all_the_backend_saw().await;
        self.proxy.stop().await;
    }

    async fn canary_is_all_the_backend_saw(&self) {
        let request = format!(
            "GET /canary HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.host()
        );
        let reply = send_raw(self.addr(), request.as_bytes()).await;
        assert_eq!(reply.status, Some(200), "canary: {:?}", reply.text());
        let exchanges = self.backend.exchanges();
        let paths: Vec<String> = exchanges.iter().map(|e| e.head.uri.to_string()).collect();
        assert_eq!(
            paths,
            ["/canary"],
            "the backend saw more than the canary:\n{}",
            self.backend.raw_text()
        );
    }
}

/// A POST to `/upload` with the given header lines (each ending in CRLF),
/// then `body` as it is.
fn post(host: &str, headers: &str, body: &str) -> String {
    format!("POST /upload HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n{body}")
}

/// A request the backend must never see: its path is the marker.
fn smuggled(host: &str) -> String {
    format!("GET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

// ---------------------------------------------------------------- message framing

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
    gate.canary_is_all_the_backend_saw().await;
    gate.proxy.stop().await;
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
    let paths: Vec<String> = gate
        .backend
        .exchanges()
        .iter()
        .map(|e| e.head.uri.to_string())
        .collect();
    assert_eq!(paths, ["/upload", "/upload", "/third"], "{}", gate.backend.raw_text());
    let bodies: Vec<Vec<u8>> = gate.backend.exchanges().iter().map(|e| e.body.clone()).collect();
    assert_eq!(bodies[0], trap.as_bytes());
    assert_eq!(bodies[1], trap.as_bytes());
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
    gate.canary_is_all_the_backend_saw().await;
    gate.proxy.stop().await;
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
    gate.canary_is_all_the_backend_saw().await;
    gate.proxy.stop().await;
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
    gate.canary_is_all_the_backend_saw().await;
    gate.proxy.stop().await;
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
    gate.canary_is_all_the_backend_saw().await;
    gate.proxy.stop().await;
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
    let h = gate.host();
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
        let body = format!("{chunks}{}", smuggled(&h));
        let request = post(&h, "Transfer-Encoding: chunked\r\n", &body);
        let reply = send_raw(gate.addr(), request.as_bytes()).await;
        assert_eq!(reply.status, Some(400), "{what}: {:?}", reply.text());
        assert!(reply.closed, "{what}: connection kept open: {:?}", reply.text());
        assert!(reply.rest.is_empty(), "{what}: a second answer: {:?}", reply.text());
    }
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
    gate.proxy.stop().await;
}

/// The same property without the status: whatever wsgate answers a broken
/// chunked body, it closes the connection, serves nothing behind it, and
/// no backend receives the request whole.
#[tokio::test]
async fn malformed_chunks_never_complete_a_request_at_the_backend() {
    let gate = Gate::start().await;
    let h = gate.host();
    for (what, chunks) in [
        ("bad hex", "5g\r\nhello\r\n0\r\n\r\n"),
        ("overflow", "10000000000000005\r\nhello\r\n0\r\n\r\n"),
        ("bare LF after the size", "5\nhello\r\n0\r\n\r\n"),
        ("bare LF in an extension", "5;a=b\nhello\r\n0\r\n\r\n"),
        ("data longer than its size", "3\r\nhello\r\n0\r\n\r\n"),
        ("bad second chunk", "5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n"),
    ] {
        let body = format!("{chunks}{}", smuggled(&h));
        let request = post(&h, "Transfer-Encoding: chunked\r\n", &body);
        let reply = send_raw(gate.addr(), request.as_bytes()).await;
        assert!(reply.closed, "{what}: connection kept open: {:?}", reply.text());
        assert!(reply.rest.is_empty(), "{what}: a second answer: {:?}", reply.text());
        assert_ne!(reply.status, Some(200), "{what}: {:?}", reply.text());
    }
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

// ---------------------------------------------------------------- header syntax

/// obs-fold (a line starting with space or tab continues the previous
/// field) is obsolete; parsers that unfold and parsers that read the line
/// as a new field see different headers. RFC 9112 §5.2: a server MUST
/// reject it with 400 (or unfold; a proxy must not pass it on).
#[tokio::test]
async fn obs_fold_continuation_lines_are_400_and_nothing_reaches_the_backend() {
    let gate = Gate::start().await;
    let h = gate.host();
    gate.refuses_each(
        [
            (
                "folded value",
                format!("GET / HTTP/1.1\r\nHost: {h}\r\nX-Folded: a\r\n b\r\n\r\n"),
            ),
            (
                "folded with a tab",
                format!("GET / HTTP/1.1\r\nHost: {h}\r\nX-Folded: a\r\n\tb\r\n\r\n"),
            ),
            (
                "folded Transfer-Encoding",
                format!("POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"),
            ),
            (
                "a folded Content-Length",
                format!("POST / HTTP/1.1\r\nHost: {h}\r\nX-A: b\r\n Content-Length: 5\r\n\r\nhello"),
            ),
            ("first line folded", format!("GET / HTTP/1.1\r\n Host: {h}\r\n\r\n")),
        ],
        400,
    )
    .await;
}

/// A bare CR is no line end (RFC 9112 §2.2: "MUST NOT be generated ...
/// recipient MUST consider it invalid or replace it with SP"): a reader
/// that splits on it sees a header that another reader sees as part of a
/// value.
#[tokio::test]
async fn bare_cr_is_400_and_nothing_reaches_the_backend() {
    let gate = Gate::start().await;
    let h = gate.host();
    gate.refuses_each(
        [
            ("after the request line", format!("GET / HTTP/1.1\rHost: {h}\r\n\r\n")),
            (
                "between headers",
                format!("GET / HTTP/1.1\r\nHost: {h}\rContent-Length: 5\r\n\r\nhello"),
            ),
            (
                "inside a value",
                format!("GET / HTTP/1.1\r\nHost: {h}\r\nX-A: a\rb\r\n\r\n"),
            ),
            (
                "before the blank line",
                format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\r\n"),
            ),
        ],
        400,
    )
    .await;
}

/// A bare LF may be read as a line end (RFC 9112 §2.2, as nginx does), and
/// then it is harmless only if the request is written anew: the backend
/// gets exactly one request, with the same fields, and only CRLF line ends.
#[tokio::test]
async fn bare_lf_line_ends_are_normalised_into_one_well_formed_request() {
    let gate = Gate::start().await;
    let h = gate.host();
    let request = format!("GET /lf HTTP/1.1\nHost: {h}\nX-Probe: one\r\nConnection: close\n\n");
    let reply = send_raw(gate.addr(), request.as_bytes()).await;
    assert_eq!(reply.status, Some(200), "{:?}", reply.text());
    let exchanges = gate.backend.exchanges();
    assert_eq!(exchanges.len(), 1, "{exchanges:#?}");
    let seen = &exchanges[0].head;
    assert_eq!(seen.uri, "/lf");
    assert_eq!(seen.header("x-probe").as_deref(), Some("one"), "{seen:#?}");
    assert_eq!(seen.header("host").as_deref(), Some(h.as_str()), "{seen:#?}");
    let raw = gate.backend.raw();
    let bare_lf = raw
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\n' && (i == 0 || raw[i - 1] != b'\r'));
    assert!(!bare_lf, "a bare LF reached the backend: {:?}", gate.backend.raw_text());
    gate.proxy.stop().await;
}

/// `Transfer-Encoding : chunked` is a field to some parsers and junk to
/// others. RFC 9112 §5.1: "A server MUST reject, with a response status
/// code of 400 (Bad Request), any received request message that contains
/// whitespace between a header field name and colon."
#[tokio::test]
async fn whitespace_before_the_colon_is_400_and_nothing_reaches_the_backend() {
    let gate = Gate::start().await;
    let h = gate.host();
    gate.refuses_each(
        [
            ("Host", format!("GET / HTTP/1.1\r\nHost : {h}\r\n\r\n")),
            (
                "Transfer-Encoding",
                format!(
                    "POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello"
                ),
            ),
            (
                "Content-Length with a tab",
                format!("POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length\t: 5\r\n\r\nhello"),
            ),
            (
                "X-Forwarded-For",
                format!("GET / HTTP/1.1\r\nHost: {h}\r\nX-Forwarded-For : 6.6.6.6\r\n\r\n"),
            ),
        ],
        400,
    )
    .await;
}

/// NUL and other control bytes end strings in C backends and are dropped or
/// kept by others: a field that means one thing here and another there.
/// RFC 9110 §5.5: CR, LF and NUL are invalid in field values, other CTLs
/// are not field-vchar; names are tokens.
#[tokio::test]
async fn nul_and_control_bytes_in_the_head_are_400_and_nothing_reaches_the_backend() {
    let gate = Gate::start().await;
    let h = gate.host();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for byte in [0x00u8, 0x01, 0x08, 0x0b, 0x0c, 0x1b, 0x7f] {
        let value = [
            &b"GET / HTTP/1.1\r\nHost: "[..],
            h.as_bytes(),
            b"\r\nX-A: a",
            &[byte],
            b"b\r\n\r\n",
        ]
        .concat();
        cases.push((format!("{byte:#04x} in a value"), value));
        let name = [
            &b"GET / HTTP/1.1\r\nHost: "[..],
            h.as_bytes(),
            b"\r\nX-",
            &[byte],
            b"A: b\r\n\r\n",
        ]
        .concat();
        cases.push((format!("{byte:#04x} in a name"), name));
    }
    let host_nul = [&b"GET / HTTP/1.1\r\nHost: "[..], h.as_bytes(), b"\0.evil\r\n\r\n"].concat();
    cases.push(("NUL in Host".into(), host_nul));
    let target_nul = [&b"GET /a\0b HTTP/1.1\r\nHost: "[..], h.as_bytes(), b"\r\n\r\n"].concat();
    cases.push(("NUL in the target".into(), target_nul));
    for (what, request) in &cases {
        gate.refused(what, request, 400).await;
    }
    gate.canary_is_all_the_backend_saw().await;
    gate.proxy.stop().await;
}

/// A request line longer than the whole head may be is 414 URI Too Long,
/// as nginx answers (hyper alone sees a head over its limit: 431, as Envoy
/// answers), whether it arrives at once or in small pieces; the request
/// never reaches a backend and the connection closes.
#[tokio::test]
async fn a_request_line_over_the_limit_is_414_and_nothing_reaches_the_backend() {
    let gate = Gate::with_global("max_request_header_size = \"16KiB\"").await;
    let h = gate.host();
    let request = format!("GET /{} HTTP/1.1\r\nHost: {h}\r\n\r\n", "a".repeat(20 * 1024));
    let reply = gate.refused("20 KiB target", request.as_bytes(), 414).await;
    assert!(reply.text().contains("request line"), "{:?}", reply.text());
    let reply = send_in_pieces(gate.addr(), request.as_bytes(), 700).await;
    assert_eq!(reply.status, Some(414), "in pieces: {:?}", reply.text());
    assert!(reply.closed, "{:?}", reply.text());
    // Just under the limit, with a small head: served.
    let fits = format!(
        "GET /{} HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n",
        "a".repeat(15 * 1024)
    );
    let reply = send_raw(gate.addr(), fits.as_bytes()).await;
    assert_eq!(reply.status, Some(200), "{:?}", reply.text());
    assert_eq!(gate.backend.exchanges().len(), 1);
    gate.proxy.stop().await;
}

/// Over-long header fields (the head, not the request line) are 431 and
/// close the connection, whether one field or many small ones.
#[tokio::test]
async fn a_head_over_the_limit_is_431_and_nothing_reaches_the_backend() {
    let gate = Gate::with_global("max_request_header_size = \"16KiB\"").await;
    let h = gate.host();
    let one = format!(
        "GET / HTTP/1.1\r\nHost: {h}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    gate.refused("one big field", one.as_bytes(), 431).await;
    let many: String = (0..90)
        .map(|i| format!("X-Field-{i}: {}\r\n", "b".repeat(200)))
        .collect();
    let many = format!("GET / HTTP/1.1\r\nHost: {h}\r\n{many}\r\n");
    gate.refused("many fields", many.as_bytes(), 431).await;
    gate.canary_is_all_the_backend_saw().await;
    gate.proxy.stop().await;
}

// ---------------------------------------------------------------- Host

/// Two Host fields let the proxy route by one and the backend serve the
/// other (RFC 9112 §3.2: a server MUST answer 400). The same goes for a
/// Host that is a list or is not an authority at all; after such a 400 the
/// connection is closed like after any other framing error.
#[tokio::test]
async fn ambiguous_host_fields_are_400_and_the_connection_closes() {
    let gate = Gate::start().await;
    let h = gate.host();
    for (what, hosts) in [
        ("two different", format!("Host: {h}\r\nHost: other.example\r\n")),
        ("two equal", format!("Host: {h}\r\nHost: {h}\r\n")),
        ("a list", format!("Host: {h}, other.example\r\n")),
        ("with a space", "Host: local host\r\n".to_string()),
        ("empty", "Host: \r\n".to_string()),
        ("with user information", format!("Host: evil.example@{h}\r\n")),
        ("missing", String::new()),
    ] {
        let request = format!("GET / HTTP/1.1\r\n{hosts}\r\n{}", smuggled(&h));
        gate.refused(what, request.as_bytes(), 400).await;
    }
    let disagreeing = format!(
        "GET http://other.example/ HTTP/1.1\r\nHost: {h}\r\n\r\n{}",
        smuggled(&h)
    );
    gate.refused("absolute-form target disagreeing", disagreeing.as_bytes(), 400)
        .await;
    gate.canary_is_all_the_backend_saw().await;
    gate.proxy.stop().await;
}

/// The same ambiguous Host fields on a WebSocket upgrade: 400, closed,
/// and no handshake reaches a backend.
#[tokio::test]
async fn ambiguous_host_fields_on_an_upgrade_are_400_and_the_connection_closes() {
    let gate = Gate::start().await;
    let h = gate.host();
    for (what, host) in [
        ("two different", format!("{h}\r\nHost: other.example")),
        ("two equal", format!("{h}\r\nHost: {h}")),
        ("a list", format!("{h}, other.example")),
    ] {
        let request = valid_upgrade(&host, "/", &[]) + &smuggled(&h);
        gate.refused(what, request.as_bytes(), 400).await;
    }
    gate.canary_is_all_the_backend_saw().await;
    gate.proxy.stop().await;
}

/// Two routes by host, a backend each.
async fn two_hosts() -> (BodyBackend, BodyBackend, ProxyHandle) {
    let (a, b) = (BodyBackend::start().await, BodyBackend::start().await);
    let toml = format!(
        "{}[[route]]\nname = \"a\"\nhosts = [\"a.example\"]\nupstream = \"a\"\n\n\
         [[route]]\nname = \"b\"\nhosts = [\"b.example\"]\nupstream = \"b\"\n\n\
         [[upstream]]\nname = \"a\"\nservers = [{{ address = \"{}\" }}]\n\n\
         [[upstream]]\nname = \"b\"\nservers = [{{ address = \"{}\" }}]\n",
        listeners(None),
        a.addr,
        b.addr
    );
    let proxy = start_proxy(&toml).await;
    (a, b, proxy)
}

/// `GET http://b.example/ HTTP/1.1` with `Host: a.example`: RFC 9112 §3.2.2
/// makes the target win at an origin server, while many backends read Host.
/// wsgate cannot make both agree, so it refuses (400) and neither backend
/// hears of it, for plain requests and upgrades alike. (The plain request
/// asks for `Connection: close` itself: that wsgate closes after its own
/// 400s is the business of `ambiguous_host_fields_are_400_and_the_connection_closes`.)
#[tokio::test]
async fn an_absolute_form_target_that_disagrees_with_host_is_400_and_reaches_no_backend() {
    let (a, b, proxy) = two_hosts().await;
    let addr = proxy.addr("plain");
    let plain = "GET http://b.example/admin HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n".to_string();
    let upgrade = valid_upgrade("a.example", "http://b.example/admin", &[]);
    let port = upgrade.replace("a.example", &format!("a.example:{}", addr.port()));
    for (what, request) in [
        ("plain", plain),
        ("upgrade", upgrade),
        ("upgrade, Host with a port", port),
    ] {
        let reply = send_raw(addr, request.as_bytes()).await;
        assert_eq!(reply.status, Some(400), "{what}: {:?}", reply.text());
        assert!(reply.closed, "{what}: connection kept open: {:?}", reply.text());
    }
    assert_eq!((a.accepts(), b.accepts()), (0, 0), "a backend was contacted");
    proxy.stop().await;
}

/// When target and Host name the same host but not the same authority
/// (another port, another case), wsgate routes by the target, and RFC 9112
/// §3.2.2 then requires a proxy to "generate a new Host field value based
/// on the received request-target rather than forward the received Host":
/// the backend must see the target's authority in Host, X-Forwarded-Host
/// and Forwarded, never the client's other value.
#[tokio::test]
async fn an_absolute_form_target_wins_and_the_backend_sees_its_authority_as_host() {
    let (a, _b, proxy) = two_hosts().await;
    let addr = proxy.addr("plain");
    let request = "GET http://a.example:8080/abs?q=1 HTTP/1.1\r\nHost: A.EXAMPLE:9999\r\nConnection: close\r\n\r\n";
    let reply = send_raw(addr, request.as_bytes()).await;
    assert_eq!(reply.status, Some(200), "{:?}", reply.text());
    let exchanges = a.exchanges();
    assert_eq!(exchanges.len(), 1, "{exchanges:#?}");
    let seen = &exchanges[0].head;
    assert_eq!(seen.uri, "/abs?q=1", "origin-form toward the backend: {seen:#?}");
    assert_eq!(seen.header("host").as_deref(), Some("a.example:8080"), "{seen:#?}");
    assert_eq!(
        seen.header("x-forwarded-host").as_deref(),
        Some("a.example:8080"),
        "{seen:#?}"
    );
    let forwarded = seen.header("forwarded").unwrap_or_default();
    assert!(forwarded.contains("host=\"a.example:8080\""), "{seen:#?}");
    assert!(!contains(&a.raw(), b"9999"), "{}", a.raw_text());
    proxy.stop().await;
}

/// User information in the target's authority (`http://b.example@a.example/`)
/// reads as host b.example to a careless parser and a.example to a careful
/// one; RFC 9110 §4.2.4 says to treat it as an error, as wsgate does for
/// Host. And an HTTP/1.1 request must carry Host even with an absolute
/// target (RFC 9112 §3.2: MUST 400), or the authority (user information
/// and all) becomes the Host the backend sees.
#[tokio::test]
async fn an_absolute_form_target_with_user_information_or_without_host_is_400() {
    let (a, b, proxy) = two_hosts().await;
    let addr = proxy.addr("plain");
    for (what, request) in [
        (
            "user information",
            "GET http://b.example@a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
        ),
        (
            "user information, no Host",
            "GET http://b.example@a.example/ HTTP/1.1\r\n\r\n",
        ),
        ("no Host", "GET http://a.example/ HTTP/1.1\r\n\r\n"),
    ] {
        let reply = send_raw(addr, request.as_bytes()).await;
        assert_eq!(reply.status, Some(400), "{what}: {:?}", reply.text());
        assert!(reply.closed, "{what}: connection kept open: {:?}", reply.text());
    }
    assert_eq!((a.accepts(), b.accepts()), (0, 0), "a backend was contacted");
    proxy.stop().await;
}

/// `Connection: Host` asks the proxy to drop Host as hop-by-hop: wsgate
/// routed by the client's Host, and the backend would then serve its
/// default host instead. End-to-end fields the request is routed by must
/// survive a Connection header naming them.
#[tokio::test]
async fn a_host_named_in_connection_still_reaches_the_backend() {
    let backend = Backend::echo().await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let h = format!("localhost:{}", addr.port());
    let plain = format!("GET /plain HTTP/1.1\r\nHost: {h}\r\nConnection: close, Host\r\n\r\n");
    let reply = send_raw(addr, plain.as_bytes()).await;
    assert_eq!(reply.status, Some(200), "{:?}", reply.text());
    let upgrade = valid_upgrade(&h, "/ws", &[]).replace("Connection: Upgrade", "Connection: Upgrade, Host");
    let mut conn = RawConn::new(tcp_connect(addr).await);
    conn.send(upgrade.as_bytes()).await;
    assert_eq!(conn.read_head().await.status, 101);
    let requests = backend.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    for seen in &requests {
        assert_eq!(seen.header("host").as_deref(), Some(h.as_str()), "{seen:#?}");
        assert_eq!(
            seen.header("x-forwarded-host").as_deref(),
            Some(h.as_str()),
            "{seen:#?}"
        );
    }
    drop(conn);
    proxy.stop().await;
}

// ---------------------------------------------------------------- upgrades

/// HTTP/1.0 has no Upgrade (RFC 6455 §4.2.1 needs HTTP/1.1), and an
/// HTTP/1.0 keep-alive connection behind a refused upgrade would carry the
/// bytes meant for the tunnel into a next request: 400, closed, nothing at
/// the backend.
#[tokio::test]
async fn an_http_1_0_upgrade_is_400_and_the_connection_closes() {
    let gate = Gate::start().await;
    let h = gate.host();
    let headers = [("Sec-WebSocket-Key", TEST_KEY), ("Sec-WebSocket-Version", "13")];
    let upgrade = upgrade_request("GET /ws HTTP/1.0", &h, &headers);
    let keep_alive = upgrade.replace("Connection: Upgrade", "Connection: keep-alive, Upgrade");
    for (what, request) in [("HTTP/1.0", upgrade), ("HTTP/1.0 keep-alive", keep_alive)] {
        let request = request + &format!("GET /smuggled HTTP/1.0\r\nHost: {h}\r\n\r\n");
        gate.refused(what, request.as_bytes(), 400).await;
    }
    gate.canary_is_all_the_backend_saw().await;
    gate.proxy.stop().await;
}

/// An upgrade request with a body: the proxy frames the body away, a
/// backend that expects none reads it as WebSocket frames or as its next
/// request. RFC 6455 handshakes carry no body: 400, and the body is never
/// read as a request.
#[tokio::test]
async fn an_upgrade_request_with_a_body_is_400_and_the_body_is_never_read_as_a_request() {
    let gate = Gate::start().await;
    let h = gate.host();
    let inner = smuggled(&h);
    let length = inner.len().to_string();
    let chunked_body = format!("{:x}\r\n{inner}\r\n0\r\n\r\n", inner.len());
    for (what, extra, body) in [
        (
            "Content-Length",
            vec![("Content-Length", length.as_str())],
            inner.clone(),
        ),
        ("chunked", vec![("Transfer-Encoding", "chunked")], chunked_body.clone()),
        (
            "empty chunked",
            vec![("Transfer-Encoding", "chunked")],
            "0\r\n\r\n".to_string(),
        ),
    ] {
        let mut headers = vec![("Sec-WebSocket-Key", TEST_KEY), ("Sec-WebSocket-Version", "13")];
        headers.extend(extra);
        let request = upgrade_request("GET /ws HTTP/1.1", &h, &headers) + &body;
        gate.refused(what, request.as_bytes(), 400).await;
    }
    gate.canary_is_all_the_backend_saw().await;
    gate.proxy.stop().await;
}

/// Bytes pipelined behind an upgrade that wsgate refuses were meant for a
/// tunnel: they are never parsed as a next request on the same connection.
#[tokio::test]
async fn requests_pipelined_behind_a_refused_upgrade_are_never_served() {
    let gate = Gate::start().await;
    let h = gate.host();
    let no_version = upgrade_request("GET /ws HTTP/1.1", &h, &[("Sec-WebSocket-Key", TEST_KEY)]);
    let bad_key = valid_upgrade(&h, "/ws", &[]).replace(TEST_KEY, "c2hvcnQ=");
    let post = valid_upgrade(&h, "/ws", &[]).replace("GET /ws", "POST /ws");
    for (what, request, status) in [
        ("no version", no_version, 426),
        ("bad key", bad_key, 400),
        ("POST", post, 400),
    ] {
        let request = request + &smuggled(&h);
        let reply = gate.refused(what, request.as_bytes(), status).await;
        let connection = reply.header("connection").unwrap_or("").to_ascii_lowercase();
        assert!(connection.contains("close"), "{what}: {:?}", reply.text());
    }
    gate.canary_is_all_the_backend_saw().await;
    gate.proxy.stop().await;
}

/// The same when the backend refuses the upgrade (403): the client gets the
/// backend's answer and the connection ends; the pipelined request never
/// reaches the backend, on the handshake's connection or a pooled one.
#[tokio::test]
async fn requests_pipelined_behind_an_upgrade_the_backend_refuses_are_never_served() {
    let backend = Backend::start(Behavior::Status(403, "no websockets here")).await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let h = format!("localhost:{}", addr.port());
    let request = valid_upgrade(&h, "/ws", &[]) + &smuggled(&h);
    let reply = send_raw(addr, request.as_bytes()).await;
    assert_eq!(reply.status, Some(403), "{:?}", reply.text());
    assert_eq!(reply.body, b"no websockets here");
    assert!(reply.closed, "connection kept open: {:?}", reply.text());
    assert!(reply.rest.is_empty(), "a second answer: {:?}", reply.text());
    let connection = reply.header("connection").unwrap_or("").to_ascii_lowercase();
    assert!(connection.contains("close"), "{:?}", reply.text());
    // A canary on a new connection: after it, the backend has seen the
    // handshake and the canary, and nothing else.
    let canary = format!("GET /canary HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n");
    assert_eq!(send_raw(addr, canary.as_bytes()).await.status, Some(403));
    let paths: Vec<String> = backend.requests().iter().map(|r| r.uri.to_string()).collect();
    assert_eq!(paths, ["/ws", "/canary"]);
    proxy.stop().await;
}

/// After a 101 the connection is a tunnel: bytes the client sent right
/// behind its handshake, even if they look like an HTTP request, are
/// delivered to the backend raw, through the tunnel, in order, and wsgate
/// answers none of them itself nor opens another backend connection.
#[tokio::test]
async fn bytes_behind_an_accepted_handshake_go_through_the_tunnel_verbatim() {
    let mut backend = RawBackend::start(false, None).await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let h = format!("localhost:{}", addr.port());
    let early = format!("{}{}", smuggled(&h), "POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    let mut client = tcp_connect(addr).await;
    client.set_nodelay(true).unwrap();
    let request = valid_upgrade(&h, "/ws", &[]) + &early;
    within("client write", client.write_all(request.as_bytes()))
        .await
        .unwrap();
    let head = within("101", read_head_bytes(&mut client)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    let mut tunnel = backend.next_conn().await;
    let mut received = vec![0u8; early.len()];
    within("early bytes at the backend", tunnel.read_exact(&mut received))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&received), early);
    within("backend write", tunnel.write_all(b"from the backend"))
        .await
        .unwrap();
    let mut back = vec![0u8; b"from the backend".len()];
    within("tunnel bytes at the client", client.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"from the backend", "wsgate answered the pipelined bytes itself");
    assert_eq!(backend.accepts(), 1, "a second backend connection was opened");
    drop(client);
    let (rest, closed) = read_until_closed(&mut tunnel, CLOSE_BOUND).await;
    assert!(closed.is_some() && rest.is_empty(), "{closed:?} {rest:?}");
    drop(tunnel);
    proxy.stop().await;
}

/// `Upgrade: h2c` (and any upgrade but websocket) is hop-by-hop: passing it
/// on lets a client turn the backend connection into HTTP/2 behind the
/// proxy's back and reach anything (h2c smuggling). It is forwarded as a
/// plain request with neither Upgrade nor the fields Connection names.
#[tokio::test]
async fn other_upgrades_reach_the_backend_as_plain_requests() {
    let backend = Backend::echo().await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let h = format!("localhost:{}", addr.port());
    let request = format!(
        "GET /h2c HTTP/1.1\r\nHost: {h}\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\
         Connection: Upgrade, HTTP2-Settings, close\r\n\r\n"
    );
    let reply = send_raw(addr, request.as_bytes()).await;
    assert_eq!(reply.status, Some(200), "{:?}", reply.text());
    let seen = backend.only_request();
    for name in ["upgrade", "http2-settings"] {
        assert_eq!(seen.header(name), None, "{name} forwarded: {seen:#?}");
    }
    let connection = seen.header("connection").unwrap_or_default().to_ascii_lowercase();
    assert!(!connection.contains("upgrade"), "{seen:#?}");
    proxy.stop().await;
}

// ---------------------------------------------------------------- forwarding headers

/// Every forwarding header a client might send to choose the address,
/// scheme or host a backend believes, some on several lines.
const SPOOFED: [(&str, &str); 9] = [
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-For", "7.7.7.7, 8.8.8.8"),
    ("Forwarded", "for=6.6.6.6;proto=https;host=evil.example"),
    ("Forwarded", "for=7.7.7.7"),
    ("X-Real-IP", "6.6.6.6"),
    ("X-Real-IP", "7.7.7.7"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Host", "evil2.example"),
];

/// A plain GET (`ws` false) or a WebSocket upgrade to `/fwd` with `headers`.
fn with_headers(ws: bool, h: &str, headers: &[(&str, &str)]) -> String {
    if ws {
        return valid_upgrade(h, "/fwd", headers);
    }
    let mut request = format!("GET /fwd HTTP/1.1\r\nHost: {h}\r\n");
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    request + "\r\n"
}

/// Sends `request` and returns the head the backend received for it.
async fn forwarded_head(backend: &Backend, addr: SocketAddr, request: &str, ws: bool) -> SeenRequest {
    let before = backend.requests().len();
    let mut conn = RawConn::new(tcp_connect(addr).await);
    conn.send(request.as_bytes()).await;
    let response = conn.read_head().await;
    assert_eq!(response.status, if ws { 101 } else { 200 }, "{request:?}: {response:?}");
    let requests = backend.requests();
    assert_eq!(requests.len(), before + 1, "{request:?}");
    requests.last().unwrap().clone()
}

/// A client that is not a trusted proxy cannot choose what a backend logs,
/// rate-limits or trusts: every forwarding header it sent is replaced by
/// exactly one line of wsgate's own, never appended to, on plain requests
/// and upgrades alike.
#[tokio::test]
async fn forwarding_headers_from_an_untrusted_client_are_replaced_not_appended() {
    let backend = Backend::echo().await;
    let toml = config(backend.addr, None).replace(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
    );
    let proxy = start_proxy(&toml).await;
    let addr = proxy.addr("plain");
    let h = format!("localhost:{}", addr.port());
    for ws in [false, true] {
        let seen = forwarded_head(&backend, addr, &with_headers(ws, &h, &SPOOFED), ws).await;
        let what = format!("ws={ws}: {seen:#?}");
        assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"], "{what}");
        assert_eq!(seen.all("x-real-ip"), ["127.0.0.1"], "{what}");
        assert_eq!(seen.all("x-forwarded-proto"), ["http"], "{what}");
        assert_eq!(seen.all("x-forwarded-host"), [h.as_str()], "{what}");
        assert_eq!(
            seen.all("forwarded"),
            [format!("for=127.0.0.1;proto=http;host=\"{h}\"")],
            "{what}"
        );
    }
    proxy.stop().await;
}

/// Naming forwarding headers in Connection would have the proxy strip its
/// own replacements as hop-by-hop; they must still arrive, with wsgate's
/// values.
#[tokio::test]
async fn forwarding_headers_named_in_connection_still_arrive_with_wsgates_values() {
    let backend = Backend::echo().await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let h = format!("localhost:{}", addr.port());
    let names = "X-Forwarded-For, X-Real-IP, Forwarded, X-Forwarded-Proto, X-Forwarded-Host";
    for ws in [false, true] {
        let mut request = with_headers(ws, &h, &SPOOFED);
        request = if ws {
            request.replace("Connection: Upgrade", &format!("Connection: Upgrade, {names}"))
        } else {
            request.replace("\r\n\r\n", &format!("\r\nConnection: keep-alive, {names}\r\n\r\n"))
        };
        let seen = forwarded_head(&backend, addr, &request, ws).await;
        let what = format!("ws={ws}: {seen:#?}");
        assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"], "{what}");
        assert_eq!(seen.all("x-real-ip"), ["127.0.0.1"], "{what}");
        assert_eq!(seen.all("x-forwarded-proto"), ["http"], "{what}");
        assert_eq!(seen.all("x-forwarded-host"), [h.as_str()], "{what}");
        assert_eq!(seen.all("forwarded").len(), 1, "{what}");
    }
    proxy.stop().await;
}

/// CGI-style backends (WSGI, PHP, many frameworks) map `X_Forwarded_For`
/// and `X-Forwarded-For` to the same variable, `HTTP_X_FORWARDED_FOR`, and
/// one of the two wins: a spelling with underscores replaces nothing and
/// goes around the replacement. nginx drops fields with underscores by
/// default (`underscores_in_headers off`); the forwarding fields at least
/// must not reach the backend in any spelling but wsgate's own.
#[tokio::test]
async fn underscore_spellings_of_forwarding_headers_do_not_reach_the_backend() {
    let backend = Backend::echo().await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let h = format!("localhost:{}", addr.port());
    let spoof = [
        ("X_Forwarded_For", "6.6.6.6"),
        ("X-Forwarded_For", "6.6.6.6"),
        ("X_Real_IP", "6.6.6.6"),
        ("X_Forwarded_Proto", "https"),
        ("X_Forwarded_Host", "evil.example"),
    ];
    for ws in [false, true] {
        let seen = forwarded_head(&backend, addr, &with_headers(ws, &h, &spoof), ws).await;
        let leaked: Vec<String> = seen
            .headers
            .keys()
            .map(|name| name.as_str().to_string())
            .filter(|name| name.contains('_'))
            .collect();
        assert!(leaked.is_empty(), "ws={ws}: {leaked:?} forwarded: {seen:#?}");
        assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"], "ws={ws}: {seen:#?}");
    }
    proxy.stop().await;
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
    let paths: Vec<String> = gate
        .backend
        .exchanges()
        .iter()
        .map(|e| e.head.uri.to_string())
        .collect();
    assert_eq!(paths, ["/first"], "{}", gate.backend.raw_text());
    gate.proxy.stop().await;
}
