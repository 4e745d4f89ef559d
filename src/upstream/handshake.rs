//! The WebSocket handshake toward a backend, on the wire: the request head
//! written in one go, the answer's head read with `httparse`.
//!
//! An HTTP client connection (hyper's) would cost a task of its own, two
//! 8 KiB buffers and a channel for a single request whose answer, when it
//! is a 101, hands the connection straight back: most of a handshake's
//! allocations (docs/performance.md). A backend that refuses the upgrade
//! answers with an ordinary response, read whole (it is an error page) and
//! relayed.

use std::io;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::http1;

/// The most of a backend's answer head wsgate reads.
const MAX_HEAD: usize = 64 * 1024;
/// The most of a refusal's body wsgate relays.
const MAX_BODY: usize = 1024 * 1024;

/// What the backend answered.
pub enum Answered {
    /// 101: its header fields, and the bytes it sent right behind the head
    /// (the first frames of the tunnel).
    Switched { headers: HeaderMap, rest: Bytes },
    /// Any other answer, whole.
    Refused(Response<Bytes>),
}

/// Why the exchange failed: the backend's fault, for a 502.
#[derive(Debug, thiserror::Error)]
pub enum BackendHandshakeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed before the answer was complete")]
    Closed,
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("answer head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("answer body over {MAX_BODY} bytes")]
    BodyTooLarge,
}

/// Writes `request` (a GET with an origin-form target and no body) and
/// reads the answer.
pub async fn exchange<S>(stream: &mut S, request: &Request<()>) -> Result<Answered, BackendHandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&request_head(request)).await?;
    stream.flush().await?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let (status, headers, head_len) = read_head(stream, &mut buf).await?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            let rest = Bytes::copy_from_slice(&buf[head_len..]);
            return Ok(Answered::Switched { headers, rest });
        }
        buf.drain(..head_len);
        if status.is_informational() {
            continue; // 100 Continue and the like: the answer follows.
        }
        let body = read_body(stream, &mut buf, status, &headers).await?;
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        return Ok(Answered::Refused(response));
    }
}

/// `GET <target> HTTP/1.1`, the fields, the empty line.
fn request_head(request: &Request<()>) -> Vec<u8> {
    let target = request.uri().path_and_query().map_or("/", |target| target.as_str());
    let mut head = Vec::with_capacity(target.len() + http1::fields_len(request.headers()) + 32);
    head.extend_from_slice(request.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    http1::write_fields(&mut head, request.headers());
    head.extend_from_slice(b"\r\n");
    head
}

/// Reads until `buf` holds a whole answer head; returns it parsed, and its
/// length in `buf`.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<(StatusCode, HeaderMap, usize), BackendHandshakeError> {
    loop {
        if !buf.is_empty() {
            let mut fields = [httparse::EMPTY_HEADER; http1::MAX_FIELDS];
            let mut answer = httparse::Response::new(&mut fields);
            match answer.parse(buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = answer
                        .code
                        .and_then(|code| StatusCode::from_u16(code).ok())
                        .ok_or_else(|| BackendHandshakeError::Malformed("bad status code".into()))?;
                    // One copy of the head, of which the values are slices,
                    // rather than an allocation per value.
                    let head = Bytes::copy_from_slice(&buf[..len]);
                    let at = |value: &[u8]| value.as_ptr() as usize - buf.as_ptr() as usize;
                    let mut headers = HeaderMap::with_capacity(answer.headers.len());
                    for field in answer.headers.iter() {
                        let name = HeaderName::from_bytes(field.name.as_bytes())
                            .map_err(|_| BackendHandshakeError::Malformed(format!("field name {:?}", field.name)))?;
                        let start = at(field.value);
                        let value = HeaderValue::from_maybe_shared(head.slice(start..start + field.value.len()))
                            .map_err(|_| BackendHandshakeError::Malformed(format!("value of {name}")))?;
                        headers.append(name, value);
                    }
                    return Ok((status, headers, len));
                }
                Ok(httparse::Status::Partial) => {}
                Err(error) => return Err(BackendHandshakeError::Malformed(error.to_string())),
            }
        }
        if buf.len() >= MAX_HEAD {
            return Err(BackendHandshakeError::HeadTooLarge);
        }
        read_more(stream, buf).await?;
    }
}

/// Reads at least one more byte into `buf`; the end of the stream is an error.
async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Result<(), BackendHandshakeError> {
    buf.reserve(4096);
    if stream.read_buf(buf).await? == 0 {
        return Err(BackendHandshakeError::Closed);
    }
    Ok(())
}

/// A refusal's body, by its framing (RFC 9112 §6.3): none, chunked,
/// `Content-Length`, or up to the end of the connection.
async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<Bytes, BackendHandshakeError> {
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Bytes::new());
    }
    let chunked = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .any(|value| value.as_bytes().eq_ignore_ascii_case(b"chunked"));
    if chunked {
        loop {
            if let Some(body) = dechunk(buf)? {
                return Ok(body.into());
            }
            if buf.len() > MAX_BODY {
                return Err(BackendHandshakeError::BodyTooLarge);
            }
            read_more(stream, buf).await?;
        }
    }
    let length = match headers.get(http::header::CONTENT_LENGTH) {
        Some(value) => Some(
            std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|text| text.trim().parse::<usize>().ok())
                .ok_or_else(|| BackendHandshakeError::Malformed("Content-Length".into()))?,
        ),
        None => None,
    };
    match length {
        Some(length) if length > MAX_BODY => Err(BackendHandshakeError::BodyTooLarge),
        Some(length) => {
            while buf.len() < length {
                read_more(stream, buf).await?;
            }
            buf.truncate(length);
            Ok(std::mem::take(buf).into())
        }
        None => loop {
            match read_more(stream, buf).await {
                Ok(()) if buf.len() > MAX_BODY => return Err(BackendHandshakeError::BodyTooLarge),
                Ok(()) => {}
                Err(BackendHandshakeError::Closed) => return Ok(std::mem::take(buf).into()),
                Err(error) => return Err(error),
            }
        },
    }
}

/// The data of a whole chunked body at the start of `bytes`, or `None`
/// while it is incomplete. Extensions and trailers are dropped.
fn dechunk(bytes: &[u8]) -> Result<Option<Vec<u8>>, BackendHandshakeError> {
    let malformed = || BackendHandshakeError::Malformed("chunked body".into());
    let line = |from: usize| -> Option<(&[u8], usize)> {
        let end = from + bytes.get(from..)?.iter().position(|&b| b == b'\n')?;
        let text = &bytes[from..end];
        Some((text.strip_suffix(b"\r").unwrap_or(text), end + 1))
    };
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some((size_line, next)) = line(at) else {
            return Ok(None);
        };
        let digits = size_line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
        let size = std::str::from_utf8(digits)
            .ok()
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
            .ok_or_else(malformed)?;
        if size == 0 {
            // Trailer fields, up to the empty line.
            let mut at = next;
            loop {
                let Some((field, next)) = line(at) else {
                    return Ok(None);
                };
                if field.is_empty() {
                    return Ok(Some(body));
                }
                at = next;
            }
        }
        if size > MAX_BODY {
            return Err(BackendHandshakeError::BodyTooLarge);
        }
        let Some(data) = bytes.get(next..next + size) else {
            return Ok(None);
        };
        body.extend_from_slice(data);
        let Some((end, next)) = line(next + size) else {
            return Ok(None);
        };
        if !end.is_empty() {
            return Err(malformed());
        }
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_decoded_once_whole() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for end in 0..body.len() {
            assert_eq!(dechunk(&body[..end]).unwrap(), None, "{end} bytes");
        }
        assert_eq!(dechunk(body).unwrap().unwrap(), b"hello world");
        assert!(dechunk(b"zz\r\n").is_err());
        assert!(dechunk(b"2\r\nabc\r\n").is_err());
    }

    #[test]
    fn the_request_head_is_written_as_hyper_would() {
        let mut request = Request::get("/chat?room=1").body(()).unwrap();
        request
            .headers_mut()
            .insert("host", HeaderValue::from_static("example.com"));
        request
            .headers_mut()
            .insert("upgrade", HeaderValue::from_static("websocket"));
        assert_eq!(
            request_head(&request),
            b"GET /chat?room=1 HTTP/1.1\r\nhost: example.com\r\nupgrade: websocket\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_101_comes_back_with_the_bytes_behind_it() {
        let (mut wsgate, mut backend) = tokio::io::duplex(4096);
        let request = Request::get("/").body(()).unwrap();
        let server = tokio::spawn(async move {
            let mut head = vec![0; 64];
            let n = backend.read(&mut head).await.unwrap();
            assert_eq!(&head[..n], b"GET / HTTP/1.1\r\n\r\n");
            // In two pieces, the head split, a frame right behind it.
            backend
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgr")
                .await
                .unwrap();
            backend.write_all(b"ade: websocket\r\n\r\n\x81\x02hi").await.unwrap();
            backend
        });
        let answered = exchange(&mut wsgate, &request).await.unwrap();
        let Answered::Switched { headers, rest } = answered else {
            panic!("not a 101");
        };
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(&rest[..], b"\x81\x02hi");
        drop(server.await.unwrap());
    }

    #[tokio::test]
    async fn refusals_come_back_whole_by_each_framing() {
        let cases: [(&[u8], &[u8]); 4] = [
            (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope", b"nope"),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n",
                b"no",
            ),
            (b"HTTP/1.1 503 Service Unavailable\r\n\r\nuntil the end", b"until the end"),
            (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
        ];
        for (answer, body) in cases {
            let (mut wsgate, mut backend) = tokio::io::duplex(4096);
            let answer = answer.to_vec();
            let server = tokio::spawn(async move {
                let mut head = vec![0; 64];
                let _ = backend.read(&mut head).await.unwrap();
                backend.write_all(&answer).await.unwrap();
                // Closed: the body without a length ends here.
            });
            let request = Request::get("/").body(()).unwrap();
            let answered = exchange(&mut wsgate, &request).await.unwrap();
            server.await.unwrap();
            let Answered::Refused(response) = answered else {
                panic!("a 101");
            };
            assert!(
                response.status().is_client_error() || response.status().is_server_error() || response.status() == 204
            );
            assert_eq!(&response.body()[..], body);
        }
    }

    #[tokio::test]
    async fn a_backend_that_closes_mid_head_or_sends_garbage_is_an_error() {
        for answer in [&b"HTTP/1.1 101 Switch"[..], b"SSH-2.0-OpenSSH\r\n\r\n"] {
            let (mut wsgate, mut backend) = tokio::io::duplex(4096);
            let answer = answer.to_vec();
            tokio::spawn(async move {
                let mut head = vec![0; 64];
                let _ = backend.read(&mut head).await.unwrap();
                backend.write_all(&answer).await.unwrap();
            });
            let request = Request::get("/").body(()).unwrap();
            assert!(exchange(&mut wsgate, &request).await.is_err());
        }
    }
}
