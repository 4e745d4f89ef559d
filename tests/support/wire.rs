//! Raw WebSocket frames and peers for the inspection tests: frames written
//! and read byte for byte (so a test can break the protocol on purpose), a
//! backend that answers the handshake by hand, and tungstenite shortcuts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::*;

/// How long a connection may take to end once wsgate decided to end it (spec: ~1 s).
pub const END_BOUND: Duration = Duration::from_secs(3);

/// Like `support::config`, with `[route.inspect]` enabled plus `inspect` keys, to `servers`.
pub fn inspect_config(servers: &[SocketAddr], certs: Option<&TestCerts>, inspect: &str) -> String {
    let toml = listeners(certs);
    let servers: Vec<String> = servers.iter().map(|a| format!("{{ address = \"{a}\" }}")).collect();
    toml + &format!(
        "[[route]]\nname = \"all\"\nupstream = \"backends\"\n\n[route.inspect]\nenabled = true\n{inspect}\n\
         [[upstream]]\nname = \"backends\"\nservers = [{}]\n",
        servers.join(", ")
    )
}

pub async fn inspect_proxy(servers: &[SocketAddr], inspect: &str) -> ProxyHandle {
    start_proxy(&inspect_config(servers, None, inspect)).await
}

// ---------------------------------------------------------------- raw frames

/// A frame off the wire: `b0` is FIN, RSV and opcode; the payload is unmasked.
#[derive(Debug, Clone, PartialEq)]
pub struct Wire {
    pub b0: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl Wire {
    pub fn opcode(&self) -> u8 {
        self.b0 & 0x0f
    }
    /// Code and reason of a close frame (1005 when it has no body).
    pub fn close(&self) -> Option<(u16, String)> {
        let (code, reason) = self.payload.split_at(self.payload.len().min(2));
        let code = if code.len() == 2 {
            u16::from_be_bytes([code[0], code[1]])
        } else {
            1005
        };
        (self.opcode() == 8).then(|| (code, String::from_utf8_lossy(reason).into_owned()))
    }
    pub fn is_wsgate_ping(&self) -> bool {
        self.opcode() == 9 && self.payload.len() == 8 && self.payload.starts_with(b"wsg\0")
    }
}

/// A frame with first byte `b0`, masked (as a client sends) or not.
pub fn encode(b0: u8, mask: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    let key = mask.then_some([0x5au8, 0x13, 0xc7, 0x88]);
    wsgate::ws::frame::encode_frame(b0, payload, key, &mut frame);
    frame
}

pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

pub async fn read_wire<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Wire> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await?;
    let len = match head[1] & 0x7f {
        126 => s.read_u16().await? as u64,
        127 => s.read_u64().await?,
        n => n as u64,
    };
    assert!(len <= 64 << 20, "frame of {len} bytes");
    let masked = head[1] & 0x80 != 0;
    let mut key = [0u8; 4];
    if masked {
        s.read_exact(&mut key).await?;
    }
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).await?;
    payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= key[i % 4]);
    Ok(Wire {
        b0: head[0],
        masked,
        payload,
    })
}

pub async fn next_wire<S: AsyncRead + Unpin>(s: &mut S, who: &str) -> Wire {
    within(&format!("{who} reading a frame"), read_wire(s))
        .await
        .unwrap_or_else(|e| panic!("{who}: no frame: {e}"))
}

/// Reads up to the first close frame (other frames are skipped) and returns its code and reason.
pub async fn expect_close<S: AsyncRead + Unpin>(s: &mut S, who: &str) -> (u16, String) {
    loop {
        let frame = next_wire(s, who).await;
        if let Some(close) = frame.close() {
            return close;
        }
        eprintln!(
            "{who}: before the close: {:#04x}, {} bytes",
            frame.b0,
            frame.payload.len()
        );
    }
}

/// Reads until the connection ends (EOF or error) within [`END_BOUND`]; returns the frames read.
pub async fn expect_end<S: AsyncRead + Unpin>(s: &mut S, who: &str) -> Vec<Wire> {
    within_for(END_BOUND, &format!("{who}'s connection ending"), async {
        let mut frames = Vec::new();
        while let Ok(frame) = read_wire(s).await {
            frames.push(frame);
        }
        frames
    })
    .await
}

/// Reads an HTTP head byte by byte (nothing after it is consumed).
pub async fn read_head_bytes<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = s.read_u8().await.expect("HTTP head cut short");
        head.push(byte);
        assert!(head.len() < 16 * 1024, "HTTP head too long");
    }
    String::from_utf8(head).expect("UTF-8 head")
}

/// The value of header `name` in a raw HTTP head (its first line, the
/// request or status line, is not a header).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A raw client through the handshake (101 checked), `early` sent in the same
/// write as the request; returns the stream and the response head.
pub async fn raw_client_with(addr: SocketAddr, headers: &[(&str, &str)], early: &[u8]) -> (TcpStream, String) {
    let mut s = tcp_connect(addr).await;
    s.set_nodelay(true).unwrap();
    let mut request = valid_upgrade(&format!("localhost:{}", addr.port()), "/", headers).into_bytes();
    request.extend_from_slice(early);
    s.write_all(&request).await.unwrap();
    let head = within("101 from the proxy", read_head_bytes(&mut s)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (s, head)
}

pub async fn raw_client(addr: SocketAddr) -> TcpStream {
    raw_client_with(addr, &[], &[]).await.0
}

// ---------------------------------------------------------------- raw backend

/// A backend answering the handshake by hand. In echo mode each connection
/// sends every frame back unchanged but unmasked (a ping gets a pong) and
/// records it; otherwise connections are handed to the test by `next_conn`.
/// Dropping it ends all its connections (no close frame).
pub struct RawBackend {
    pub addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Wire>>>,
    conns: mpsc::UnboundedReceiver<TcpStream>,
    task: JoinHandle<()>,
}

impl RawBackend {
    pub async fn start(echo: bool, extensions: Option<&'static str>) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepts, seen) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
        let (tx, conns) = mpsc::unbounded_channel();
        let (counter, record) = (accepts.clone(), seen.clone());
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it drops every connection.
            let mut tasks = JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (record, tx) = (record.clone(), tx.clone());
                tasks.spawn(async move {
                    let head = read_head_bytes(&mut stream).await;
                    let key = header(&head, "sec-websocket-key").expect("the handshake carries the key");
                    let mut answer = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
                        derive_accept_key(key.as_bytes())
                    );
                    if let Some(extensions) = extensions {
                        answer += &format!("Sec-WebSocket-Extensions: {extensions}\r\n");
                    }
                    stream.write_all(format!("{answer}\r\n").as_bytes()).await.unwrap();
                    if !echo {
                        let _ = tx.send(stream);
                        return;
                    }
                    while let Ok(frame) = read_wire(&mut stream).await {
                        let b0 = if frame.opcode() == 9 { 0x8a } else { frame.b0 };
                        let reply = encode(b0, false, &frame.payload);
                        record.lock().unwrap().push(frame);
                        if stream.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RawBackend {
            addr,
            accepts,
            seen,
            conns,
            task,
        }
    }

    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Wire> {
        self.seen.lock().unwrap().clone()
    }

    /// The next connection, past its handshake (not in echo mode).
    pub async fn next_conn(&mut self) -> TcpStream {
        within("a connection at the raw backend", self.conns.recv())
            .await
            .expect("raw backend stopped")
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------- 1. core scenarios, ws and wss

pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, message: Message) {
    within("WebSocket send", ws.send(message))
        .await
        .expect("WebSocket send");
}

pub async fn assert_echo<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, message: Message) {
    send(ws, message.clone()).await;
    assert_eq!(next_message(ws).await, message);
}

/// Reads until the stream ends.
pub async fn drain<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>) {
    within("end of stream", async { while let Some(Ok(_)) = ws.next().await {} }).await
}

/// Closes normally and reads until the stream ends.
pub async fn close<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>) {
    let _ = within("WebSocket close", ws.close(None)).await;
    drain(ws).await
}

pub fn close_message(code: u16, reason: &str) -> Message {
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    Message::Close(Some(frame))
}
