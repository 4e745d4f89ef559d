//! Raw bytes: hand-written HTTP requests, response parsing, WebSocket frames.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{tcp_connect, within};

/// The `Sec-WebSocket-Key` used by raw handshakes (the RFC 6455 example).
pub const TEST_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A request with `Upgrade: websocket` and `Connection: Upgrade` plus `headers`;
/// `request_line` like `GET /chat HTTP/1.1`. No key or version unless given.
pub fn upgrade_request(request_line: &str, host: &str, headers: &[(&str, &str)]) -> String {
    let mut request = format!("{request_line}\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    request + "\r\n"
}

/// A valid RFC 6455 opening handshake for `path` plus `headers`.
pub fn valid_upgrade(host: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut all = vec![("Sec-WebSocket-Key", TEST_KEY), ("Sec-WebSocket-Version", "13")];
    all.extend_from_slice(headers);
    upgrade_request(&format!("GET {path} HTTP/1.1"), host, &all)
}

/// An HTTP response as read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The value of the first of `headers` named `name` (in any case).
pub fn header_value<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One WebSocket frame as read off the wire (unmasked).
#[derive(Debug)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// A masked client frame.
pub fn masked_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![(if fin { 0x80 } else { 0 }) | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// A byte stream read by hand: HTTP heads and bodies, WebSocket frames.
pub struct RawConn<S> {
    pub stream: S,
    buf: Vec<u8>,
}

impl<S> RawConn<S> {
    pub fn new(stream: S) -> Self {
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }
}

impl<S: AsyncWrite + Unpin> RawConn<S> {
    pub async fn send(&mut self, bytes: &[u8]) {
        within("raw write", async {
            self.stream.write_all(bytes).await.expect("raw write");
            self.stream.flush().await.expect("raw flush");
        })
        .await
    }
}

impl<S: AsyncRead + Unpin> RawConn<S> {
    /// Everything left until the peer ends the stream (at most 1 MiB).
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        while self.fill().await {
            assert!(self.buf.len() <= 1 << 20, "peer sent more than 1 MiB");
        }
        std::mem::take(&mut self.buf)
    }

    /// What is buffered, then [`read_until_closed`] on the stream.
    pub async fn read_until_closed(&mut self, bound: Duration) -> (Vec<u8>, Option<Instant>) {
        let mut bytes = std::mem::take(&mut self.buf);
        let (rest, closed) = read_until_closed(&mut self.stream, bound).await;
        bytes.extend_from_slice(&rest);
        (bytes, closed)
    }

    /// Reads more bytes into the buffer; false at end of stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = within("raw read", self.stream.read(&mut chunk))
            .await
            .expect("raw read");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn take(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            if !self.fill().await {
                return Err(format!("stream ended with {} of {n} bytes", self.buf.len()));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn take_line(&mut self) -> Result<String, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(i + 2).await?;
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            assert!(self.buf.len() < 64 * 1024, "line longer than 64 KiB");
            if !self.fill().await {
                return Err(format!(
                    "stream ended inside a line: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
        }
    }

    /// Reads a response head (status line and headers); the body stays unread.
    pub async fn read_head(&mut self) -> RawResponse {
        must(self.try_read_head().await)
    }

    async fn try_read_head(&mut self) -> Result<RawResponse, String> {
        let status_line = self.take_line().await?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(format!("not an HTTP response: {status_line:?}"));
        }
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let line = self.take_line().await?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("bad header line {line:?}"))?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        Ok(RawResponse {
            status,
            headers,
            body: Vec::new(),
        })
    }

    /// Reads the body of `response` by its framing: none, chunked, length or to EOF.
    pub async fn read_body(&mut self, response: &mut RawResponse) {
        must(self.try_read_body(response).await)
    }

    async fn try_read_body(&mut self, response: &mut RawResponse) -> Result<(), String> {
        if matches!(response.status, 100..=199 | 204 | 304) {
            return Ok(());
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let line = self.take_line().await?;
                let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                    .map_err(|_| format!("bad chunk size line {line:?}"))?;
                if size == 0 {
                    while !self.take_line().await?.is_empty() {}
                    return Ok(());
                }
                let chunk = self.take(size + 2).await?;
                response.body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(length) = response.header("content-length") {
            let length: usize = length.parse().map_err(|_| format!("content-length {length:?}"))?;
            response.body = self.take(length).await?;
        } else {
            while self.fill().await {
                assert!(self.buf.len() < 64 << 20, "body without length longer than 64 MiB");
            }
            response.body = std::mem::take(&mut self.buf);
        }
        Ok(())
    }

    pub async fn read_response(&mut self) -> RawResponse {
        must(self.try_read_response().await)
    }

    async fn try_read_response(&mut self) -> Result<RawResponse, String> {
        let mut response = self.try_read_head().await?;
        self.try_read_body(&mut response).await?;
        Ok(response)
    }

    pub async fn read_frame(&mut self) -> RawFrame {
        let head = must(self.take(2).await);
        let (fin, opcode, masked) = (head[0] & 0x80 != 0, head[0] & 0x0f, head[1] & 0x80 != 0);
        let len = match head[1] & 0x7f {
            126 => u16::from_be_bytes(must(self.take(2).await).try_into().unwrap()) as usize,
            127 => u64::from_be_bytes(must(self.take(8).await).try_into().unwrap()) as usize,
            n => n as usize,
        };
        let mask = if masked { Some(must(self.take(4).await)) } else { None };
        let mut payload = must(self.take(len).await);
        if let Some(mask) = mask {
            payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= mask[i % 4]);
        }
        RawFrame { fin, opcode, payload }
    }
}

/// The first response in `bytes` and the bytes after it; `Err` when
/// `bytes` do not start with one whole response (by its framing).
pub fn parse_response(bytes: &[u8]) -> Result<(RawResponse, Vec<u8>), String> {
    let mut conn = RawConn::new(bytes);
    let parsed = conn
        .try_read_response()
        .now_or_never()
        .expect("bytes in memory are read without waiting")?;
    let rest = [conn.buf.as_slice(), conn.stream].concat();
    Ok((parsed, rest))
}

/// Fails the test with the message of a malformed response or frame.
fn must<T>(result: Result<T, String>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// Reads until the peer ends the stream (EOF) or resets it, or until
/// `bound` passes; returns what was read and when the stream ended
/// (`None`: still open at `bound`). At most 1 MiB.
pub async fn read_until_closed<S: AsyncRead + Unpin>(stream: &mut S, bound: Duration) -> (Vec<u8>, Option<Instant>) {
    let deadline = tokio::time::Instant::now() + bound;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return (bytes, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (bytes, Some(Instant::now())),
            Ok(Ok(n)) => {
                bytes.extend_from_slice(&chunk[..n]);
                assert!(bytes.len() <= 1 << 20, "the peer sent more than 1 MiB");
            }
        }
    }
}

/// Sends `request` on a fresh TCP connection to `addr` and reads one response.
pub async fn raw_exchange(addr: SocketAddr, request: &str) -> RawResponse {
    let mut conn = RawConn::new(tcp_connect(addr).await);
    conn.send(request.as_bytes()).await;
    conn.read_response().await
}

/// The status an upgrade of `/` from `origin` gets from the proxy at `addr`.
pub async fn upgrade_status(addr: SocketAddr, origin: &str) -> u16 {
    let host = format!("localhost:{}", addr.port());
    raw_exchange(addr, &valid_upgrade(&host, "/", &[("Origin", origin)]))
        .await
        .status
}
