//! HTTP/1.1 heads read and written without hyper. A WebSocket handshake is
//! one request and one answer on each hop: to the backend
//! ([`crate::upstream::handshake`]) and, for a connection whose first
//! request is an upgrade, from the client (`proxy::connection`). hyper's
//! connection machinery (its dispatcher, buffers, service call and upgrade
//! channel) cost more than such a handshake does itself.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};

/// Header fields read at most in one head (hyper's own limit is 100 too).
pub const MAX_FIELDS: usize = 100;

/// The fields of `headers` as `name: value` lines.
pub fn write_fields(head: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
}

/// The bytes [`write_fields`] writes for `headers`.
pub fn fields_len(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// A request head at the start of `bytes`, complete, with its length; for
/// a GET in origin form without a body only (an upgrade's shape). `None`
/// for anything else, which hyper then reads and answers as it always
/// does: an incomplete head, another method or form, a body, a field
/// hyper would refuse, more than [`MAX_FIELDS`] fields. The field values
/// are slices of `bytes`, not copies.
pub fn parse_bodiless_get(bytes: &Bytes) -> Option<(Request<()>, usize)> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut fields);
    let httparse::Status::Complete(len) = parsed.parse(bytes).ok()? else {
        return None;
    };
    if parsed.method? != "GET" || parsed.version? != 1 {
        return None;
    }
    let target = parsed.path?;
    if !target.starts_with('/') {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
            return None;
        }
        headers.append(name, HeaderValue::from_maybe_shared(bytes.slice_ref(field.value)).ok()?);
    }
    let mut request = Request::new(());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = Uri::try_from(target).ok()?;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some((request, len))
}

/// A response head as hyper writes it: the status line, the fields, a
/// `content-length` when there is a body, `date` unless the fields have
/// one (a backend's), the empty line.
pub fn response_head(status: StatusCode, headers: &HeaderMap, content_length: Option<usize>) -> Vec<u8> {
    let reason = status.canonical_reason().unwrap_or("");
    let mut head = Vec::with_capacity(fields_len(headers) + reason.len() + 96);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(reason.as_bytes());
    head.extend_from_slice(b"\r\n");
    write_fields(&mut head, headers);
    if let Some(length) = content_length {
        head.extend_from_slice(b"content-length: ");
        head.extend_from_slice(length.to_string().as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !headers.contains_key(http::header::DATE) {
        head.extend_from_slice(b"date: ");
        with_date(|date| head.extend_from_slice(date));
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

thread_local! {
    /// The `date` value of the current second: formatted once a second per
    /// thread, not once per answer.
    static DATE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
}

fn with_date(write: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    DATE.with_borrow_mut(|(at, date)| {
        if *at != second {
            *at = second;
            *date = httpdate::fmt_http_date(now).into_bytes();
        }
        write(date);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_head_is_read_whole_with_what_follows_it_left() {
        let bytes = b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x80";
        let (request, len) = parse_bodiless_get(&Bytes::copy_from_slice(bytes)).expect("a GET without a body");
        assert_eq!(&bytes[len..], b"\x81\x80");
        assert_eq!(request.uri().path(), "/chat");
        assert_eq!(request.uri().query(), Some("room=1"));
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.headers()["upgrade"], "websocket");
        assert_eq!(request.headers()["host"], "example.com");
    }

    #[test]
    fn anything_else_is_left_to_hyper() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            let bytes = Bytes::copy_from_slice(head);
            assert!(
                parse_bodiless_get(&bytes).is_none(),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        let many: String = (0..=MAX_FIELDS).map(|i| format!("X-{i}: v\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(parse_bodiless_get(&Bytes::copy_from_slice(head.as_bytes())).is_none());
    }

    #[test]
    fn a_response_head_is_written_as_hyper_writes_it() {
        let mut headers = HeaderMap::new();
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        let head = String::from_utf8(response_head(StatusCode::SWITCHING_PROTOCOLS, &headers, None)).unwrap();
        assert!(
            head.starts_with("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\ndate: "),
            "{head}"
        );
        assert!(head.ends_with(" GMT\r\n\r\n"), "{head}");
        let head = String::from_utf8(response_head(StatusCode::FORBIDDEN, &HeaderMap::new(), Some(12))).unwrap();
        assert!(
            head.starts_with("HTTP/1.1 403 Forbidden\r\ncontent-length: 12\r\ndate: "),
            "{head}"
        );
    }
}
