//! Header syntax: obs-fold, bare CR and LF, whitespace before the colon,
//! control bytes, and heads over the size limit.

use super::*;

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
    gate.canary_then_stop().await;
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
    gate.canary_then_stop().await;
}
