//! Load generator for wsgate, plus a fast echo backend to put behind it.
//!
//! One binary with four subcommands (see `benches/README.md`):
//!
//! - `backend --listen ADDR`: a multi-threaded WebSocket echo server, cheap per
//!   message, so the proxy rather than the backend is what a run measures;
//! - `echo`: C sockets, each sending one S-byte binary message and waiting for
//!   its echo, over and over; messages/s, MB/s and round-trip latency;
//! - `handshake`: C workers looping open, one echo, close; handshakes/s;
//! - `idle`: N open sockets doing nothing; resident memory per socket of the
//!   processes named with `--pid`.
//!
//! Each opens its sockets as HTTP/1.1 upgrades, or with `--h2-streams N` as
//! WebSockets over HTTP/2 (RFC 8441), N to each HTTP/2 connection.
//!
//! `echo` and `handshake` take `--proxy-pid` to report the proxy's CPU time
//! per million messages (or per thousand handshakes) over the measured window.
//! Every workload prints exactly one line of JSON on standard output; progress
//! and problems go to standard error.
//!
//! Built by `cargo build --release --benches` (a `harness = false` bench);
//! `benches/run.sh` drives it.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, timeout_at, Instant};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// TCP connect, TLS and the opening handshake together must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One echo round trip must finish within this.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a socket gets for the close handshake before it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Read buffer per socket, both here and in the backend; tungstenite's default
/// (128 KiB) would make the idle workload measure mostly buffers.
const READ_BUFFER: usize = 16 * 1024;
/// Largest message accepted, both here and in the backend.
const MAX_MESSAGE: usize = 256 << 20;
/// Latencies are recorded in microseconds up to an hour, with 3 significant digits.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

#[derive(Parser)]
#[command(about = "Load generator and echo backend for benchmarking wsgate")]
struct Cli {
    /// Worker threads of the tokio runtime (default: one per CPU).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a WebSocket echo server (binary and text messages come back unchanged).
    Backend {
        /// Address to listen on, e.g. 127.0.0.1:9101.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Request-response throughput and latency: each socket keeps one message in flight.
    Echo(EchoArgs),
    /// Connection churn: each worker loops open, one echo, close.
    Handshake(HandshakeArgs),
    /// Memory per idle socket of the processes given with --pid.
    Idle(IdleArgs),
    /// Sockets chatting through a binary upgrade (SIGUSR1 to --proxy-pid):
    /// errors, and the round trips the upgrade held up.
    Upgrade(UpgradeArgs),
}

#[derive(Args)]
struct UpgradeArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Sockets held open through the upgrade.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Time between two messages of one socket (each waits for its echo).
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pace: Duration,
    /// The wsgate process to send SIGUSR1 to.
    #[arg(long)]
    proxy_pid: i32,
    /// Traffic before the signal: the round trips it holds are the baseline.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    before: Duration,
    /// Traffic after the signal.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    after: Duration,
}

#[derive(Args)]
struct TargetArgs {
    /// ws:// or wss:// URL to connect to.
    #[arg(long)]
    url: String,
    /// CA certificate (PEM) to trust for wss://, e.g. certs/dev-ca.pem.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// WebSockets over HTTP/2 (RFC 8441 extended CONNECT), this many per
    /// HTTP/2 connection (ALPN h2 for wss://, prior knowledge for ws://);
    /// 0: HTTP/1.1 upgrades, one connection each.
    #[arg(long, default_value_t = 0)]
    h2_streams: usize,
    /// wss://: never resume a TLS session, so that every handshake is a full
    /// one (a certificate signature and a key exchange each).
    #[arg(long)]
    no_resume: bool,
}

#[derive(Args)]
struct EchoArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Sockets, each with one message in flight.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Length of the measured window ("5s", "500ms" or plain seconds).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Traffic before the measured window, not counted.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Processes whose CPU time over the measured window is reported, summed
    /// (the proxy; comma-separated for one with several, e.g. nginx's master and workers).
    #[arg(long, value_delimiter = ',')]
    proxy_pid: Vec<u32>,
}

#[derive(Args)]
struct HandshakeArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Length of the measured window.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Churn before the measured window, not counted.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Processes whose CPU time over the measured window is reported, summed
    /// (the proxy; comma-separated for one with several, e.g. nginx's master and workers).
    #[arg(long, value_delimiter = ',')]
    proxy_pid: Vec<u32>,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Sockets to open.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// How long to hold them open before reading memory again.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    hold: Duration,
    /// Processes to measure, comma-separated (e.g. the proxy and the backend).
    #[arg(long, value_delimiter = ',', required = true)]
    pid: Vec<u32>,
    /// Connection attempts in flight at once while opening.
    #[arg(long, default_value_t = 100)]
    parallel: usize,
    /// Bytes of one binary message each socket sends, and waits to have
    /// echoed, before it idles: a tunnel that has carried traffic (8192 or
    /// more makes a plain one busy enough for a splice thread); 0 sends none.
    #[arg(long, default_value_t = 0)]
    prime: usize,
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench` to harness-less benches; it means nothing here.
    let args = std::env::args_os().filter(|a| a != "--bench");
    let cli = Cli::parse_from(args);
    let Some(command) = cli.command else {
        eprintln!("loadgen: no workload given; see `loadgen --help` and benches/README.md (benches/run.sh runs them)");
        return ExitCode::SUCCESS;
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = cli.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => return fail(format!("cannot start the runtime: {error}")),
    };
    let result = match command {
        Command::Backend { listen } => runtime.block_on(backend(listen)),
        Command::Echo(args) => runtime.block_on(echo(args)),
        Command::Handshake(args) => runtime.block_on(handshake(args)),
        Command::Idle(args) => runtime.block_on(idle(args)),
        Command::Upgrade(args) => runtime.block_on(upgrade(args)),
    };
    // Sockets still closing must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(error) => fail(error),
    }
}

fn fail(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("loadgen: {error}");
    ExitCode::FAILURE
}

/// "5s", "250ms", "1m" (humantime), or a plain number of seconds ("2.5").
fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string());
    }
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// The echo backend

async fn backend(listen: SocketAddr) -> Result<String, String> {
    raise_fd_limit();
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot bind {listen}: {e}"))?;
    eprintln!("loadgen backend: echoing on {listen}");
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                tokio::spawn(echo_connection(tcp));
            }
            Err(error) => {
                // Out of descriptors, or one connection reset before accept: don't spin.
                eprintln!("loadgen backend: accept failed: {error}");
                sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Echoes every data message back until the peer closes; tungstenite answers
/// pings and the close frame by itself while the stream is polled.
async fn echo_connection(tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let config = socket_config();
    let Ok(Ok(mut ws)) = timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::accept_async_with_config(tcp, Some(config)),
    )
    .await
    else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        if matches!(message, Message::Binary(_) | Message::Text(_)) && ws.send(message).await.is_err() {
            return;
        }
    }
}

fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
}

// ---------------------------------------------------------------------------
// Connecting

/// Where to connect, parsed once.
struct Target {
    url: String,
    addr: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// `--h2-streams`, and the HTTP/2 connection being filled with sockets
    /// (its handle and how many it has carried).
    h2_streams: usize,
    h2: std::sync::Mutex<Option<(H2Sender, usize)>>,
}

type H2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>;

impl Target {
    fn new(args: &TargetArgs) -> Result<Target, String> {
        let url = url::Url::parse(&args.url).map_err(|e| format!("invalid URL {:?}: {e}", args.url))?;
        let secure = match url.scheme() {
            "ws" => false,
            "wss" => true,
            other => return Err(format!("{:?}: the scheme must be ws or wss, not {other}", args.url)),
        };
        let host = url
            .host_str()
            .ok_or_else(|| format!("{:?}: no host", args.url))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(if secure { 443 } else { 80 });
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let tls = if secure {
            let ca = args
                .ca
                .as_deref()
                .ok_or_else(|| format!("{}: wss:// needs --ca with the CA certificate to trust", args.url))?;
            let name = ServerName::try_from(host).map_err(|e| format!("bad TLS server name: {e}"))?;
            Some((tls_connector(ca, args.h2_streams > 0, !args.no_resume)?, name))
        } else {
            None
        };
        Ok(Target {
            url: args.url.clone(),
            addr,
            tls,
            h2_streams: args.h2_streams,
            h2: std::sync::Mutex::new(None),
        })
    }

    /// TCP (no Nagle), then TLS for wss://.
    async fn stream(&self) -> Result<Stream, String> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        let _ = tcp.set_nodelay(true);
        Ok(match &self.tls {
            None => Stream::Plain(tcp),
            Some((connector, name)) => Stream::Tls(Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS with {}: {e}", self.addr))?,
            )),
        })
    }

    /// An HTTP/2 connection with room for one more socket: the one being
    /// filled, or a new one.
    async fn h2_sender(&self) -> Result<H2Sender, String> {
        {
            let mut slot = self.h2.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((sender, carried)) = slot.as_mut() {
                if *carried < self.h2_streams && !sender.is_closed() {
                    *carried += 1;
                    return Ok(sender.clone());
                }
                *slot = None;
            }
        }
        let stream = self.stream().await?;
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(|e| format!("HTTP/2 with {}: {e}", self.addr))?;
        tokio::spawn(connection);
        if self.h2_streams > 1 {
            *self.h2.lock().unwrap_or_else(|e| e.into_inner()) = Some((sender.clone(), 1));
        }
        Ok(sender)
    }

    /// A WebSocket over HTTP/2: an extended CONNECT on a shared connection.
    async fn connect_h2(&self) -> Result<Ws, String> {
        let mut sender = self.h2_sender().await?;
        let url = self.url.replacen("ws", "http", 1);
        let mut request = http::Request::connect(url)
            .header("sec-websocket-version", "13")
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        request
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        sender.ready().await.map_err(|e| format!("HTTP/2: {e}"))?;
        let mut response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("extended CONNECT: {e}"))?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("handshake refused: {}", response.status()));
        }
        let upgraded = hyper::upgrade::on(&mut response)
            .await
            .map_err(|e| format!("the CONNECT stream: {e}"))?;
        let stream = Stream::H2(hyper_util::rt::TokioIo::new(upgraded));
        Ok(WebSocketStream::from_raw_socket(stream, tungstenite::protocol::Role::Client, Some(socket_config())).await)
    }

    /// TCP (no Nagle), TLS for wss://, then the opening handshake, all within
    /// [`CONNECT_TIMEOUT`].
    async fn connect(&self) -> Result<Ws, String> {
        let connecting = async {
            if self.h2_streams > 0 {
                return self.connect_h2().await;
            }
            let stream = self.stream().await?;
            let config = socket_config();
            match tokio_tungstenite::client_async_with_config(self.url.as_str(), stream, Some(config)).await {
                Ok((ws, _)) => Ok(ws),
                Err(tungstenite::Error::Http(response)) => Err(format!("handshake refused: {}", response.status())),
                Err(error) => Err(format!("handshake: {error}")),
            }
        };
        timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("connect to {} timed out", self.addr))?
    }
}

fn tls_connector(ca: &Path, h2: bool, resume: bool) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: unusable CA certificate: {e}", ca.display()))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(TlsConnector::from(Arc::new(config)))
}

type Ws = WebSocketStream<Stream>;

/// A plain or TLS client connection, or an HTTP/2 stream on one.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    H2(hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::H2(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::H2(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::H2(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::H2(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::H2(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::H2(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Whether a wss:// connection's TLS handshake resumed an earlier session.
fn tls_resumed(ws: &Ws) -> bool {
    match ws.get_ref() {
        Stream::Plain(_) | Stream::H2(_) => false,
        Stream::Tls(tls) => tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
    }
}

/// What a wss:// connection's TLS handshake agreed: version, cipher suite
/// and key exchange group, e.g. `TLSv1_3 TLS13_AES_128_GCM_SHA256 X25519`.
fn tls_agreed(ws: &Ws) -> Option<String> {
    let Stream::Tls(tls) = ws.get_ref() else { return None };
    let connection = tls.get_ref().1;
    Some(format!(
        "{:?} {:?} {:?}",
        connection.protocol_version()?,
        connection.negotiated_cipher_suite()?.suite(),
        connection.negotiated_key_exchange_group()?.name()
    ))
}

/// Sends a close frame and waits (bounded) for the server's close and end of stream.
async fn close(mut ws: Ws) {
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    if timeout_at(deadline, ws.close(None)).await.is_err() {
        return;
    }
    while let Ok(Some(Ok(_))) = timeout_at(deadline, ws.next()).await {}
}

/// Opens `count` connections, `parallel` attempts at a time.
async fn connect_many(target: &Arc<Target>, count: usize, parallel: usize) -> (Vec<Ws>, Vec<String>) {
    let permits = Arc::new(Semaphore::new(parallel.max(1)));
    let mut attempts = JoinSet::new();
    for _ in 0..count {
        let target = Arc::clone(target);
        let permits = Arc::clone(&permits);
        attempts.spawn(async move {
            let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
            target.connect().await
        });
    }
    let (mut open, mut errors) = (Vec::with_capacity(count), Vec::new());
    while let Some(joined) = attempts.join_next().await {
        match joined {
            Ok(Ok(ws)) => open.push(ws),
            Ok(Err(error)) => errors.push(error),
            Err(error) => errors.push(format!("connect task: {error}")),
        }
    }
    (open, errors)
}

/// One round trip: send `payload`, wait for a data message back, return its length.
async fn round_trip(ws: &mut Ws, payload: &Bytes) -> Result<usize, String> {
    let exchange = async {
        ws.send(Message::Binary(payload.clone()))
            .await
            .map_err(|e| format!("send: {e}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(data))) => return Ok(data.len()),
                Some(Ok(Message::Text(text))) => return Ok(text.len()),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(frame))) => return Err(format!("closed by the server: {frame:?}")),
                Some(Err(error)) => return Err(format!("receive: {error}")),
                None => return Err("connection ended".to_owned()),
            }
        }
    };
    timeout(MESSAGE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no echo within {}s", MESSAGE_TIMEOUT.as_secs()))?
}

// ---------------------------------------------------------------------------
// Measuring

/// The measured window, shared by every worker: only exchanges that start at
/// or after `start` and end by `end` count.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn after(warmup: Duration, duration: Duration) -> Window {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + duration,
        }
    }

    fn contains(&self, from: Instant, to: Instant) -> bool {
        from >= self.start && to <= self.end
    }
}

fn histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts (low ≥ 1, high ≥ 2·low, sigfig ≤ 5).
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("valid histogram bounds")
}

fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.clamp(1, HISTOGRAM_MAX_US));
}

/// What each worker hands back.
struct Tally {
    latency: Histogram<u64>,
    done: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency: histogram(),
            done: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }

    fn merge(&mut self, other: Tally) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.done += other.done;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// CPU time a process used, user and system apart: the kernel's share is
/// much the same for every proxy, so the user share is where they differ.
#[derive(Debug, Clone, Copy, Default)]
struct CpuTime {
    user: f64,
    system: f64,
}

impl CpuTime {
    fn total(self) -> f64 {
        self.user + self.system
    }

    fn minus(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }

    /// Adds `proxy_cpu_s` (user + system), `proxy_user_s`, `proxy_sys_s`
    /// and each per `per` `unit`s done (`proxy_cpu_s_per_1m_msgs`, …).
    fn report(cpu: Option<CpuTime>, json: Json, done: u64, per: f64, unit: &str) -> Json {
        let each = |value: f64| (done > 0).then(|| value / done as f64 * per);
        type Share = fn(CpuTime) -> f64;
        let shares: [(&str, Share); 3] = [
            ("cpu", CpuTime::total),
            ("user", |c: CpuTime| c.user),
            ("sys", |c: CpuTime| c.system),
        ];
        shares.into_iter().fold(json, |json, (name, share)| {
            json.opt(&format!("proxy_{name}_s"), cpu.map(share))
                .opt(&format!("proxy_{name}_s_per_{unit}"), cpu.and_then(|c| each(share(c))))
        })
    }
}

/// CPU time a process has used, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Result<CpuTime, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // The command name (field 2) is in parentheses and may hold spaces; count from after it.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0], so utime (14) and stime (15) are fields[11] and [12].
    let ticks = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: no field {}", i + 3))
    };
    let per_second = clock_ticks_per_second();
    Ok(CpuTime {
        user: ticks(11)? as f64 / per_second,
        system: ticks(12)? as f64 / per_second,
    })
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the running system; it touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Resident memory of a process in KiB, from VmRSS in /proc/PID/status.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("/proc/{pid}/status: no VmRSS"))
}

/// Lets this process hold as many sockets as the hard limit allows.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read or write the rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Minimal JSON object writer: numbers and escaped strings, one line.
struct Json(String);

impl Json {
    fn new() -> Json {
        Json(String::from("{"))
    }

    fn key(&mut self, key: &str) -> &mut String {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        let _ = write!(self.0, "\"{key}\":");
        &mut self.0
    }

    fn str(mut self, key: &str, value: &str) -> Json {
        let out = self.key(key);
        out.push('"');
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
        self
    }

    fn int(mut self, key: &str, value: u64) -> Json {
        let _ = write!(self.key(key), "{value}");
        self
    }

    fn num(mut self, key: &str, value: f64) -> Json {
        if value.is_finite() {
            let _ = write!(self.key(key), "{value:.3}");
        } else {
            self.key(key).push_str("null");
        }
        self
    }

    fn opt(self, key: &str, value: Option<f64>) -> Json {
        match value {
            Some(value) => self.num(key, value),
            None => self.raw(key, "null"),
        }
    }

    fn raw(mut self, key: &str, value: &str) -> Json {
        self.key(key).push_str(value);
        self
    }

    fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// Samples the proxy's CPU time (all its processes together) at the window's
/// start and end, when asked to.
async fn cpu_over(pids: &[u32], window: Window) -> Result<Option<CpuTime>, String> {
    sleep_until(window.start).await;
    if pids.is_empty() {
        sleep_until(window.end).await;
        return Ok(None);
    }
    let before = cpu_seconds_sum(pids)?;
    sleep_until(window.end).await;
    Ok(Some(cpu_seconds_sum(pids)?.minus(before)))
}

fn cpu_seconds_sum(pids: &[u32]) -> Result<CpuTime, String> {
    pids.iter().try_fold(CpuTime::default(), |sum, &pid| {
        let cpu = cpu_seconds(pid)?;
        Ok(CpuTime {
            user: sum.user + cpu.user,
            system: sum.system + cpu.system,
        })
    })
}

// ---------------------------------------------------------------------------
// Workloads

async fn echo(args: EchoArgs) -> Result<String, String> {
    raise_fd_limit();
    let target = Arc::new(Target::new(&args.target)?);
    cpu_seconds_sum(&args.proxy_pid)?;
    let (sockets, connect_errors) = connect_many(&target, args.connections, 100).await;
    if sockets.is_empty() {
        return Err(format!(
            "no connection to {} opened: {}",
            args.target.url,
            connect_errors.first().map_or("", String::as_str)
        ));
    }
    let opened = sockets.len() as u64;
    let payload = Bytes::from((0..args.size).map(|i| i as u8).collect::<Vec<u8>>());
    let size = args.size;
    let window = Window::after(args.warmup, args.duration);
    let mut workers = JoinSet::new();
    for ws in sockets {
        let target = Arc::clone(&target);
        let payload = payload.clone();
        workers.spawn(echo_worker(ws, target, payload, size, window));
    }
    let cpu = cpu_over(&args.proxy_pid, window).await?;
    let mut total = Tally::new();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(tally) => total.merge(tally),
            Err(error) => total.error(format!("worker: {error}")),
        }
    }
    for error in &connect_errors {
        total.error(error.clone());
    }
    if let Some(error) = &total.first_error {
        eprintln!("loadgen echo: {} error(s), first: {error}", total.errors);
    }
    let seconds = args.duration.as_secs_f64();
    let rate = total.done as f64 / seconds;
    let latency = &total.latency;
    let json = Json::new()
        .str("workload", "echo")
        .str("url", &args.target.url)
        .int("connections", args.connections as u64)
        .int("opened", opened)
        .int("size", size as u64)
        .num("duration_s", seconds)
        .int("messages", total.done)
        .num("msgs_per_s", rate)
        .num("mb_per_s", rate * size as f64 / 1e6)
        .int("p50_us", latency.value_at_quantile(0.5))
        .int("p99_us", latency.value_at_quantile(0.99))
        .int("p999_us", latency.value_at_quantile(0.999))
        .int("max_us", latency.max())
        .int("errors", total.errors);
    Ok(CpuTime::report(cpu, json, total.done, 1e6, "1m_msgs").finish())
}

async fn echo_worker(ws: Ws, target: Arc<Target>, payload: Bytes, size: usize, window: Window) -> Tally {
    let mut tally = Tally::new();
    let mut ws = Some(ws);
    while Instant::now() < window.end {
        let socket = match ws.as_mut() {
            Some(socket) => socket,
            None => match target.connect().await {
                Ok(socket) => ws.insert(socket),
                Err(error) => {
                    tally.error(error);
                    sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let sent = Instant::now();
        match round_trip(socket, &payload).await {
            Ok(len) if len == size => {
                let done = Instant::now();
                if window.contains(sent, done) {
                    record(&mut tally.latency, done - sent);
                    tally.done += 1;
                }
            }
            Ok(len) => tally.error(format!("echo of {len} bytes, expected {size}")),
            Err(error) => {
                tally.error(error);
                ws = None;
            }
        }
    }
    if let Some(ws) = ws {
        close(ws).await;
    }
    tally
}

async fn handshake(args: HandshakeArgs) -> Result<String, String> {
    raise_fd_limit();
    let target = Arc::new(Target::new(&args.target)?);
    cpu_seconds_sum(&args.proxy_pid)?;
    let window = Window::after(args.warmup, args.duration);
    let payload = Bytes::from_static(b"0123456789abcdef");
    // Connection-to-101 latency and full cycle (open, echo, close) latency.
    let cycles = Arc::new(AtomicU64::new(0));
    // Counted cycles whose TLS handshake resumed an earlier session (wss:// only).
    let resumed = Arc::new(AtomicU64::new(0));
    // What the first TLS handshake agreed (wss:// only).
    let agreed = Arc::new(std::sync::OnceLock::new());
    let mut workers = JoinSet::new();
    for _ in 0..args.connections {
        let target = Arc::clone(&target);
        let payload = payload.clone();
        let cycles = Arc::clone(&cycles);
        let resumed = Arc::clone(&resumed);
        let agreed = Arc::clone(&agreed);
        workers.spawn(async move {
            let mut opened = Tally::new();
            let mut cycle = histogram();
            while Instant::now() < window.end {
                let started = Instant::now();
                let mut ws = match target.connect().await {
                    Ok(ws) => ws,
                    Err(error) => {
                        opened.error(error);
                        sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let connected = Instant::now();
                let was_resumed = tls_resumed(&ws);
                if agreed.get().is_none() {
                    if let Some(tls) = tls_agreed(&ws) {
                        let _ = agreed.set(tls);
                    }
                }
                match round_trip(&mut ws, &payload).await {
                    Ok(len) if len == payload.len() => {}
                    Ok(len) => opened.error(format!("echo of {len} bytes, expected {}", payload.len())),
                    Err(error) => {
                        opened.error(error);
                        continue;
                    }
                }
                close(ws).await;
                let done = Instant::now();
                cycles.fetch_add(1, Ordering::Relaxed);
                if window.contains(started, done) {
                    record(&mut opened.latency, connected - started);
                    record(&mut cycle, done - started);
                    opened.done += 1;
                    if was_resumed {
                        resumed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (opened, cycle)
        });
    }
    let cpu = cpu_over(&args.proxy_pid, window).await?;
    let mut total = Tally::new();
    let mut cycle = histogram();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok((tally, c)) => {
                total.merge(tally);
                let _ = cycle.add(&c);
            }
            Err(error) => total.error(format!("worker: {error}")),
        }
    }
    if let Some(error) = &total.first_error {
        eprintln!("loadgen handshake: {} error(s), first: {error}", total.errors);
    }
    let seconds = args.duration.as_secs_f64();
    let json = Json::new()
        .str("workload", "handshake")
        .str("url", &args.target.url)
        .int("connections", args.connections as u64)
        .num("duration_s", seconds)
        .int("handshakes", total.done)
        .num("handshakes_per_s", total.done as f64 / seconds)
        .int("p50_us", total.latency.value_at_quantile(0.5))
        .int("p99_us", total.latency.value_at_quantile(0.99))
        .int("cycle_p50_us", cycle.value_at_quantile(0.5))
        .int("cycle_p99_us", cycle.value_at_quantile(0.99))
        .int("tls_resumed", resumed.load(Ordering::Relaxed))
        .int("errors", total.errors);
    let json = match agreed.get() {
        Some(tls) => json.str("tls", tls),
        None => json,
    };
    Ok(CpuTime::report(cpu, json, total.done, 1e3, "1k_handshakes").finish())
}

/// `ws` once `message` went through it and came back.
async fn primed<S>(mut ws: WebSocketStream<S>, message: Bytes) -> Result<WebSocketStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let size = message.len();
    ws.send(Message::Binary(message)).await.map_err(|e| e.to_string())?;
    match timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Binary(echo)))) if echo.len() == size => Ok(ws),
        Ok(other) => Err(format!("the priming message came back as {other:?}")),
        Err(_) => Err("the priming message was not echoed within 10 s".to_owned()),
    }
}

async fn idle(args: IdleArgs) -> Result<String, String> {
    raise_fd_limit();
    let target = Arc::new(Target::new(&args.target)?);
    let before = args
        .pid
        .iter()
        .map(|&pid| rss_kib(pid))
        .collect::<Result<Vec<_>, _>>()?;
    // Each socket lives in its own task, polled so that pings (an inspected
    // route's keepalive) are answered while it sits idle.
    let (stop, stopped) = watch::channel(false);
    let (report, mut reports) = mpsc::channel::<Result<(), String>>(args.count.max(1));
    let permits = Arc::new(Semaphore::new(args.parallel.max(1)));
    let mut sockets = JoinSet::new();
    let prime = Bytes::from(vec![0x5a; args.prime]);
    for _ in 0..args.count {
        let target = Arc::clone(&target);
        let permits = Arc::clone(&permits);
        let report = report.clone();
        let mut stopped = stopped.clone();
        let prime = prime.clone();
        sockets.spawn(async move {
            let connected = match permits.acquire().await {
                Ok(_permit) => match target.connect().await {
                    Ok(ws) if prime.is_empty() => Ok(ws),
                    Ok(ws) => primed(ws, prime).await,
                    Err(error) => Err(error),
                },
                Err(error) => Err(error.to_string()),
            };
            let mut ws = match connected {
                Ok(ws) => {
                    let _ = report.send(Ok(())).await;
                    ws
                }
                Err(error) => {
                    let _ = report.send(Err(error)).await;
                    return;
                }
            };
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    message = ws.next() => match message {
                        Some(Ok(_)) => continue,
                        _ => return,
                    },
                }
            }
            close(ws).await;
        });
    }
    drop(report);
    // Every task reports exactly once, after its connect attempt (itself bounded).
    let (mut opened, mut errors, mut first_error) = (0u64, 0u64, None);
    for _ in 0..args.count {
        match reports.recv().await {
            Some(Ok(())) => opened += 1,
            Some(Err(error)) => {
                errors += 1;
                first_error.get_or_insert(error);
            }
            None => break,
        }
    }
    if let Some(error) = &first_error {
        eprintln!("loadgen idle: {errors} connect error(s), first: {error}");
    }
    sleep(args.hold).await;
    let after = args
        .pid
        .iter()
        .map(|&pid| rss_kib(pid))
        .collect::<Result<Vec<_>, _>>()?;
    let _ = stop.send(true);
    let closing = async { while sockets.join_next().await.is_some() {} };
    let _ = timeout(CLOSE_TIMEOUT + Duration::from_secs(3), closing).await;

    let per_socket = |delta: i64| {
        if opened > 0 {
            delta as f64 / opened as f64
        } else {
            f64::NAN
        }
    };
    let mut pids = String::from("[");
    let mut total_delta = 0i64;
    for (i, pid) in args.pid.iter().enumerate() {
        let delta = after[i] as i64 - before[i] as i64;
        total_delta += delta;
        if i > 0 {
            pids.push(',');
        }
        pids.push_str(
            &Json::new()
                .int("pid", u64::from(*pid))
                .int("rss_before_kib", before[i])
                .int("rss_after_kib", after[i])
                .num("rss_delta_kib", delta as f64)
                .num("kib_per_socket", per_socket(delta))
                .finish(),
        );
    }
    pids.push(']');
    Ok(Json::new()
        .str("workload", "idle")
        .str("url", &args.target.url)
        .int("requested", args.count as u64)
        .int("opened", opened)
        .int("errors", errors)
        .num("hold_s", args.hold.as_secs_f64())
        .raw("pids", &pids)
        .num("kib_per_socket", per_socket(total_delta))
        .finish())
}

// ---------------------------------------------------------------------------
// Through a binary upgrade

/// Every socket sends a message each `pace` and waits for its echo; after
/// `before`, the proxy is sent SIGUSR1. Reports, per socket, the longest
/// round trip before the signal (the baseline) and after it (what the
/// upgrade held up), as percentiles over the sockets, and every error: a
/// socket the upgrade closed or a message it lost is one.
async fn upgrade(args: UpgradeArgs) -> Result<String, String> {
    raise_fd_limit();
    let target = Arc::new(Target::new(&args.target)?);
    let (sockets, connect_errors) = connect_many(&target, args.connections, 100).await;
    if let Some(error) = connect_errors.first() {
        return Err(format!("{} connection(s) failed, first: {error}", connect_errors.len()));
    }
    let start = Instant::now();
    let signal_at = start + args.before;
    let end = signal_at + args.after;
    let payload = Bytes::from_static(b"through the upgrade");
    let mut workers = JoinSet::new();
    for (n, mut ws) in sockets.into_iter().enumerate() {
        let (payload, pace) = (payload.clone(), args.pace);
        // Spread over one pace, so the sends do not come in waves.
        let phase = pace.mul_f64((n as f64 * 0.618_034) % 1.0);
        workers.spawn(async move {
            let (mut before, mut after, mut messages) = (Duration::ZERO, Duration::ZERO, 0u64);
            let mut next = start + phase;
            while next < end {
                sleep_until(next).await;
                let sent = Instant::now();
                round_trip(&mut ws, &payload).await?;
                let took = sent.elapsed();
                messages += 1;
                match sent < signal_at {
                    true => before = before.max(took),
                    false => after = after.max(took),
                }
                next += pace;
            }
            close(ws).await;
            Ok::<_, String>((before, after, messages))
        });
    }
    sleep_until(signal_at).await;
    // SAFETY: kill(2) with a pid the caller named.
    if unsafe { libc::kill(args.proxy_pid, libc::SIGUSR1) } != 0 {
        return Err(format!("SIGUSR1 to {}: {}", args.proxy_pid, io::Error::last_os_error()));
    }
    let (mut before, mut after, mut messages, mut errors) = (histogram(), histogram(), 0u64, Vec::new());
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok((b, a, m))) => {
                record(&mut before, b);
                record(&mut after, a);
                messages += m;
            }
            Ok(Err(error)) => errors.push(error),
            Err(error) => errors.push(format!("worker: {error}")),
        }
    }
    if let Some(error) = errors.first() {
        eprintln!("loadgen upgrade: {} error(s), first: {error}", errors.len());
    }
    let json = Json::new()
        .str("workload", "upgrade")
        .str("url", &args.target.url)
        .int("connections", args.connections as u64)
        .num("pace_ms", args.pace.as_secs_f64() * 1000.0)
        .int("messages", messages)
        .int("errors", errors.len() as u64)
        .int("before_p50_us", before.value_at_quantile(0.5))
        .int("before_p99_us", before.value_at_quantile(0.99))
        .int("before_max_us", before.max())
        .int("after_p50_us", after.value_at_quantile(0.5))
        .int("after_p99_us", after.value_at_quantile(0.99))
        .int("after_max_us", after.max());
    Ok(json.finish())
}
