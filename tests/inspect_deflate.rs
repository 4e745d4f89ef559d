//! permessage-deflate (RFC 7692) through an inspecting route, between real
//! deflate-capable endpoints: a soketto client and a soketto echo backend.
//!
//! Proves that when both ends agree on permessage-deflate through wsgate, with
//! `[route.inspect]` on, the agreement reaches both ends, compressed (RSV1)
//! messages pass both ways unchanged and in order, and far fewer bytes than
//! the payloads cross the wire on either side of the proxy (so the frames
//! really were compressed, and wsgate neither rejected nor inflated them); over
//! plain TCP and over TLS. And that with a backend that does not support
//! deflate, the same client ends up without it and its messages still echo,
//! uncompressed.

mod support;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use soketto::connection::{Builder, Error as WsError};
// soketto 0.8.1 inflates each message with flate2's `write::DeflateDecoder::finish`
// on data that ends without a final block (RFC 7692 §7.2.2); flate2 1.1.10 and
// later reject that ("incomplete deflate stream"), so Cargo.lock keeps flate2 1.1.9.
use soketto::extension::deflate::Deflate;
use soketto::handshake::{server, Client, Server, ServerResponse};
use soketto::{Data, Incoming, Mode, Receiver, Sender};
use support::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

const DEFLATE: &str = "permessage-deflate";

/// One listener (`plain`, plus `tls` with `certs`), one route with inspection
/// on, one upstream at `backend`.
fn inspect_config(backend: SocketAddr, certs: Option<&TestCerts>) -> String {
    listeners(certs)
        + &format!(
            "[[route]]\nname = \"all\"\nupstream = \"backends\"\n\n[route.inspect]\nenabled = true\n\n\
             [[upstream]]\nname = \"backends\"\nservers = [{{ address = \"{backend}\" }}]\n"
        )
}

// ---------------------------------------------------------------- byte counting

/// Bytes read from and written to a stream, shared with the test.
#[derive(Clone, Default, Debug)]
struct Counts {
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl Counts {
    fn read(&self) -> u64 {
        self.read.load(Ordering::SeqCst)
    }
    fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }
}

/// A stream that counts the bytes passing through it into [`Counts`].
///
/// Once shut down, flushing is a no-op (as on a `TcpStream`): soketto, on
/// reading the answer to its close, writes and flushes one more close frame
/// after it shut its write side down, and a TLS stream fails that flush.
struct Counting<S> {
    inner: S,
    counts: Counts,
    shut: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let n = (buf.filled().len() - before) as u64;
            self.counts.read.fetch_add(n, Ordering::SeqCst);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.counts.written.fetch_add(n as u64, Ordering::SeqCst);
        }
        poll
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.shut {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        if let Poll::Ready(Ok(())) = poll {
            self.shut = true;
        }
        poll
    }
}

/// `stream` wrapped for soketto (futures-io), counting into the returned [`Counts`].
fn counted<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> (Ws<S>, Counts) {
    let counts = Counts::default();
    let stream = Counting {
        inner: stream,
        counts: counts.clone(),
        shut: false,
    };
    (stream.compat(), counts)
}

/// Whether permessage-deflate is among `extensions` and was agreed in the handshake.
fn deflate_agreed(extensions: &[Box<dyn soketto::extension::Extension + Send>]) -> bool {
    extensions.iter().any(|e| e.name() == DEFLATE && e.is_enabled())
}

// ---------------------------------------------------------------- messages

#[derive(Debug, Clone, PartialEq)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
}

impl Msg {
    fn len(&self) -> usize {
        match self {
            Msg::Text(t) => t.len(),
            Msg::Binary(b) => b.len(),
        }
    }
}

/// Two highly compressible 64 KiB messages (text and binary) among small ones.
fn messages() -> Vec<Msg> {
    let mut big_text = "permessage-deflate through an inspecting wsgate route. ".repeat(1200);
    big_text.truncate(64 << 10);
    let big_binary: Vec<u8> = (0..64usize << 10).map(|i| (i % 16) as u8).collect();
    vec![
        Msg::Text("hello".into()),
        Msg::Text(big_text),
        Msg::Text("small one".into()),
        Msg::Binary(vec![0, 1, 2, 3, 255]),
        Msg::Binary(big_binary),
        Msg::Text("ünïcödé ✓".into()),
        Msg::Binary(Vec::new()),
        Msg::Text("last".into()),
    ]
}

fn payload_bytes(messages: &[Msg]) -> u64 {
    messages.iter().map(|m| m.len() as u64).sum()
}

/// What soketto runs over: a counted tokio stream, seen as futures-io.
type Ws<S> = Compat<Counting<S>>;

async fn send_msg<S: AsyncRead + AsyncWrite + Unpin>(sender: &mut Sender<Ws<S>>, msg: &Msg) {
    match msg {
        Msg::Text(t) => sender.send_text(t).await,
        Msg::Binary(b) => sender.send_binary(b).await,
    }
    .expect("send");
    sender.flush().await.expect("flush");
}

/// The next text or binary message, or the close code (or error) that ended the stream.
async fn receive_msg<S: AsyncRead + AsyncWrite + Unpin>(
    receiver: &mut Receiver<Ws<S>>,
) -> Result<Msg, Result<u16, WsError>> {
    let mut data = Vec::new();
    loop {
        match receiver.receive(&mut data).await {
            Ok(Incoming::Data(Data::Text(_))) => {
                return Ok(Msg::Text(String::from_utf8(data).expect("UTF-8 text message")));
            }
            Ok(Incoming::Data(Data::Binary(_))) => return Ok(Msg::Binary(data)),
            Ok(Incoming::Pong(_)) => data.clear(),
            Ok(Incoming::Closed(reason)) => return Err(Ok(reason.code)),
            Err(e) => return Err(Err(e)),
        }
    }
}

// ---------------------------------------------------------------- backend

/// What one backend connection saw, reported when it ended.
#[derive(Debug)]
struct Session {
    /// permessage-deflate was offered through wsgate and agreed by the backend.
    deflate: bool,
    /// Every message received (and echoed), in order.
    received: Vec<Msg>,
    /// The client's close code, when the connection ended with a close frame.
    close: Option<u16>,
    /// Why the connection ended otherwise.
    error: Option<String>,
    /// Bytes on the backend's TCP connection (the handshake included).
    wire_read: u64,
    wire_written: u64,
}

/// A soketto echo server, with the Deflate extension (server mode) or
/// without. Each connection is reported on `sessions` when it ends; dropping
/// the backend ends all its connections.
struct SokettoBackend {
    addr: SocketAddr,
    sessions: mpsc::UnboundedReceiver<Session>,
    task: JoinHandle<()>,
}

impl SokettoBackend {
    async fn start(deflate: bool) -> SokettoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, sessions) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it drops every connection.
            let mut conns = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let tx = tx.clone();
                conns.spawn(async move {
                    let _ = tx.send(echo_session(tcp, deflate).await);
                });
            }
        });
        SokettoBackend { addr, sessions, task }
    }

    async fn next_session(&mut self) -> Session {
        within("the backend's connection ending", self.sessions.recv())
            .await
            .expect("backend stopped")
    }
}

impl Drop for SokettoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers the handshake on `tcp` and echoes every message until the connection ends.
async fn echo_session(tcp: tokio::net::TcpStream, deflate: bool) -> Session {
    let (socket, counts) = counted(tcp);
    let mut session = Session {
        deflate: false,
        received: Vec::new(),
        close: None,
        error: None,
        wire_read: 0,
        wire_written: 0,
    };
    let mut handshake = Server::new(socket);
    if deflate {
        handshake.add_extension(Box::new(Deflate::new(Mode::Server)));
    }
    let key = match handshake.receive_request().await {
        Ok(request) => request.key(),
        Err(e) => {
            session.error = Some(format!("handshake request: {e}"));
            return session;
        }
    };
    let accept = server::Response::Accept { key, protocol: None };
    if let Err(e) = handshake.send_response(&accept).await {
        session.error = Some(format!("handshake response: {e}"));
        return session;
    }
    let extensions: Vec<_> = handshake.drain_extensions().collect();
    session.deflate = deflate_agreed(&extensions);
    let mut builder: Builder<_> = handshake.into_builder();
    builder.add_extensions(extensions);
    let (mut sender, mut receiver) = builder.finish();
    loop {
        match receive_msg(&mut receiver).await {
            Ok(msg) => {
                let sent = match &msg {
                    Msg::Text(t) => sender.send_text(t).await,
                    Msg::Binary(b) => sender.send_binary(b).await,
                };
                if let Err(e) = sent.and(sender.flush().await) {
                    session.error = Some(format!("echo: {e}"));
                    break;
                }
                session.received.push(msg);
            }
            Err(Ok(code)) => {
                session.close = Some(code);
                break;
            }
            Err(Err(e)) => {
                session.error = Some(format!("receive: {e}"));
                break;
            }
        }
    }
    session.wire_read = counts.read();
    session.wire_written = counts.written();
    session
}

// ---------------------------------------------------------------- client

/// What the client saw of one conversation.
#[derive(Debug)]
struct Conversation {
    /// permessage-deflate was agreed by the client after the handshake answer.
    deflate: bool,
    /// Bytes the client read from and wrote to the proxy (the handshake included).
    wire_read: u64,
    wire_written: u64,
}

/// A soketto client offering permessage-deflate over `stream` (to the proxy):
/// sends every message in [`messages`] from a task of its own while reading the
/// echoes, checks each echo equals what was sent, in order, then closes
/// with 1000 and waits for the close answer.
async fn converse<S>(stream: S, host: &str) -> Conversation
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (socket, counts) = counted(stream);
    let mut client = Client::new(socket, host, "/");
    client.add_extension(Box::new(Deflate::new(Mode::Client)));
    match within("soketto client handshake", client.handshake()).await {
        Ok(ServerResponse::Accepted { protocol: None }) => {}
        other => panic!("handshake through wsgate: {other:?}"),
    }
    let extensions: Vec<_> = client.drain_extensions().collect();
    let deflate = deflate_agreed(&extensions);
    let mut builder = client.into_builder();
    builder.add_extensions(extensions);
    let (mut sender, mut receiver) = builder.finish();

    let sending = tokio::spawn(async move {
        for msg in messages() {
            send_msg(&mut sender, &msg).await;
        }
        sender
    });
    for (i, want) in messages().into_iter().enumerate() {
        match within("an echo", receive_msg(&mut receiver)).await {
            Ok(got) => assert!(
                got == want,
                "echo {i} differs: {} bytes back for {} sent",
                got.len(),
                want.len()
            ),
            Err(end) => panic!("echo {i}: the connection ended: {end:?}"),
        }
    }
    let mut sender = within("sending every message", sending).await.expect("sender task");
    within("sending the close", sender.close()).await.expect("close");
    match within("the close answer", receive_msg(&mut receiver)).await {
        Err(Ok(code)) => assert_eq!(code, 1000, "close answer"),
        other => panic!("expected the close answer, got {other:?}"),
    }
    Conversation {
        deflate,
        wire_read: counts.read(),
        wire_written: counts.written(),
    }
}

/// Checks the backend's side of a conversation that agreed (or not) on deflate;
/// returns the backend's session.
async fn expect_session(backend: &mut SokettoBackend, deflate: bool) -> Session {
    let session = backend.next_session().await;
    assert_eq!(session.error, None, "backend connection failed: {session:?}");
    assert_eq!(session.close, Some(1000), "backend saw no close 1000");
    assert_eq!(session.deflate, deflate, "backend's deflate agreement");
    assert!(session.received == messages(), "the backend received other messages");
    session
}

/// Both sides agreed on deflate and far fewer bytes than the payloads crossed
/// the wire each way, on both sides of the proxy.
fn assert_compressed(client: &Conversation, session: &Session) {
    let payload = payload_bytes(&messages());
    assert!(client.deflate, "the client did not agree on permessage-deflate");
    assert!(session.deflate, "the backend did not agree on permessage-deflate");
    // Handshakes (well under 1 KiB each) are counted too; the 130 KiB of
    // payload compress to about 1 KiB.
    for (what, bytes) in [
        ("client wrote", client.wire_written),
        ("client read", client.wire_read),
        ("backend read", session.wire_read),
        ("backend wrote", session.wire_written),
    ] {
        assert!(
            bytes * 20 < payload,
            "{what} {bytes} bytes for {payload} bytes of payload: not compressed"
        );
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn deflate_agreed_end_to_end_passes_compressed_messages_through_inspection() {
    let mut backend = SokettoBackend::start(true).await;
    let proxy = start_proxy(&inspect_config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let host = format!("localhost:{}", addr.port());
    let client = converse(tcp_connect(addr).await, &host).await;
    let session = expect_session(&mut backend, true).await;
    assert_compressed(&client, &session);
    proxy.stop().await;
}

#[tokio::test]
async fn deflate_agreed_end_to_end_over_tls_passes_compressed_messages_through_inspection() {
    let certs = TestCerts::generate();
    let mut backend = SokettoBackend::start(true).await;
    let proxy = start_proxy(&inspect_config(backend.addr, Some(&certs))).await;
    let addr = proxy.addr("tls");
    let tls = tls_connect(addr, "localhost", certs.client_config()).await;
    let client = converse(tls, &format!("localhost:{}", addr.port())).await;
    let session = expect_session(&mut backend, true).await;
    assert_compressed(&client, &session);
    proxy.stop().await;
}

#[tokio::test]
async fn without_deflate_at_the_backend_the_offer_is_declined_and_messages_still_echo() {
    let mut backend = SokettoBackend::start(false).await;
    let proxy = start_proxy(&inspect_config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let client = converse(tcp_connect(addr).await, &format!("localhost:{}", addr.port())).await;
    let session = expect_session(&mut backend, false).await;
    assert!(
        !client.deflate,
        "the client agreed on deflate with a backend without it"
    );
    // Uncompressed: at least the payloads crossed the wire, each way.
    let payload = payload_bytes(&messages());
    for (what, bytes) in [
        ("client wrote", client.wire_written),
        ("client read", client.wire_read),
        ("backend read", session.wire_read),
        ("backend wrote", session.wire_written),
    ] {
        assert!(bytes >= payload, "{what} {bytes} bytes for {payload} bytes of payload");
    }
    proxy.stop().await;
}
