//! A line-oriented command-line WebSocket client (`wsgate client`).
//!
//! Trying a proxy needs a client that speaks `wss://` and can be scripted:
//! `echo hello | wsgate client wss://...` sends one message per input line and
//! prints one line per message received. A backend often answers after the
//! input has ended, so the client keeps reading until the server closes or
//! nothing has arrived for a grace period (`--wait`), and only then closes
//! with 1000; a connection that ends any other way is an error, so a script
//! sees a non-zero exit. TLS trusts only the CA file given with
//! `--ca`, so the development certificate works without touching the system
//! trust store, and a misconfigured server is never silently trusted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{StatusCode, Uri};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// Bounds TCP connect, TLS and the opening handshake together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the server's close reply once the client has closed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What `wsgate client` was asked to do.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `ws://` or `wss://` URL.
    pub url: String,
    /// PEM file of CA certificates to trust for `wss://`; nothing else is trusted.
    pub ca: Option<PathBuf>,
    /// After input ends, close once nothing has arrived for this long
    /// (`--wait`, 2 s: long enough for a backend that thinks a moment,
    /// short enough that a script does not hang).
    pub wait: Duration,
}

/// Why the client failed; each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "{url} uses TLS but no CA was given: pass --ca <file> with the CA certificate(s) \
         to trust (for the development certificate: --ca certs/dev-ca.pem)"
    )]
    CaRequired { url: String },
    #[error("cannot read CA file {}: {source}", path.display())]
    ReadCa {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("CA file {} contains no usable certificate", path.display())]
    EmptyCa { path: PathBuf },
    #[error("cannot build the TLS configuration: {0}")]
    TlsConfig(#[source] rustls::Error),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {}s connecting to {addr}", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { addr: String },
    #[error("{url} refused the WebSocket handshake with HTTP {status}")]
    Refused { url: String, status: StatusCode },
    #[error("WebSocket handshake with {url} failed: {source}")]
    Handshake {
        url: String,
        #[source]
        source: Box<tungstenite::Error>,
    },
    #[error("WebSocket connection failed: {0}")]
    WebSocket(#[source] Box<tungstenite::Error>),
    #[error("the server ended the connection without a close frame (1006)")]
    Dropped,
    #[error("the server closed the connection with {code}{}", if reason.is_empty() { String::new() } else { format!(" ({reason})") })]
    Closed { code: u16, reason: String },
    #[error("no close reply from the server within {}s", CLOSE_TIMEOUT.as_secs())]
    NoCloseReply,
    #[error("cannot read input: {0}")]
    Input(#[source] std::io::Error),
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
}

/// Connects to `url` (ws:// or wss://), sends each line of `input` as a text message and writes
/// every message received to `output`, one per line. After input ends it keeps printing until
/// the server closes or nothing has arrived for `options.wait`, then closes with 1000 and waits
/// (bounded, 5 s) for the reply. Ends in an error unless the close was clean (1000 or no code).
pub async fn run<R, W>(options: ClientOptions, input: R, output: W) -> Result<(), ClientError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let target = Target::parse(&options.url)?;
    // Checked before connecting so a missing --ca or a bad host fails fast and clearly.
    let tls = if target.tls {
        let ca = options.ca.as_ref().ok_or_else(|| ClientError::CaRequired {
            url: options.url.clone(),
        })?;
        let name = ServerName::try_from(target.host.clone()).map_err(|e| ClientError::InvalidUrl {
            url: options.url.clone(),
            reason: format!("host is not a valid TLS server name: {e}"),
        })?;
        Some((tls_connector(ca)?, name))
    } else {
        if options.ca.is_some() {
            tracing::warn!("--ca is ignored for ws:// URLs");
        }
        None
    };
    let addr = target.addr();
    let connected = timeout(CONNECT_TIMEOUT, async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        // Messages are small and interactive; don't let Nagle delay them.
        let _ = tcp.set_nodelay(true);
        match tls {
            None => Ok(Connected::Plain(Box::new(handshake(&options.url, tcp).await?))),
            Some((connector, name)) => {
                let stream = connector.connect(name, tcp).await.map_err(|source| ClientError::Tls {
                    addr: addr.clone(),
                    source,
                })?;
                Ok(Connected::Tls(Box::new(handshake(&options.url, stream).await?)))
            }
        }
    })
    .await
    .map_err(|_| ClientError::ConnectTimeout { addr: addr.clone() })??;
    tracing::info!(url = %options.url, "connected");
    match connected {
        Connected::Plain(ws) => session(*ws, input, output, options.wait).await,
        Connected::Tls(ws) => session(*ws, input, output, options.wait).await,
    }
}

/// The two transports a session can run over.
enum Connected {
    Plain(Box<WebSocketStream<TcpStream>>),
    Tls(Box<WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>>),
}

/// The parts of the URL needed before tungstenite sees it.
struct Target {
    tls: bool,
    host: String,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(invalid("the scheme must be ws:// or wss://")),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| invalid("no host"))?;
        // IPv6 literals come bracketed; sockets and SNI want the bare address.
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self { tls, host, port })
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn tls_connector(ca: &std::path::Path) -> Result<TlsConnector, ClientError> {
    let read_error = |source| ClientError::ReadCa {
        path: ca.to_path_buf(),
        source,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(read_error)? {
        let cert = cert.map_err(read_error)?;
        // A certificate webpki cannot use as a root is skipped, like the trust stores do.
        if let Err(error) = roots.add(cert) {
            tracing::warn!(path = %ca.display(), %error, "skipping unusable CA certificate");
        }
    }
    if roots.is_empty() {
        return Err(ClientError::EmptyCa { path: ca.to_path_buf() });
    }
    let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(ClientError::TlsConfig)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // WebSocket upgrades are HTTP/1.1; say so in case the server also offers h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn handshake<S>(url: &str, stream: S) -> Result<WebSocketStream<S>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio_tungstenite::client_async_with_config(url, stream, None).await {
        Ok((ws, _response)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => Err(ClientError::Refused {
            url: url.to_owned(),
            status: response.status(),
        }),
        Err(source) => Err(ClientError::Handshake {
            url: url.to_owned(),
            source: Box::new(source),
        }),
    }
}

/// Pumps input lines out and received messages to `output` until both sides are done.
async fn session<S, R, W>(
    mut ws: WebSocketStream<S>,
    input: R,
    mut output: W,
    wait: Duration,
) -> Result<(), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut lines = input.lines();
    // Both branches are cancel-safe: Lines::next_line and StreamExt::next keep no
    // partial state in the dropped future.
    loop {
        tokio::select! {
            line = lines.next_line() => match line.map_err(ClientError::Input)? {
                Some(line) => ws.send(Message::text(line)).await.map_err(ws_error)?,
                None => break,
            },
            message = ws.next() => match message {
                Some(Ok(Message::Close(frame))) => return server_closed(&mut ws, &mut output, frame).await,
                Some(Ok(message)) => print(&message, &mut output).await?,
                Some(Err(error)) => return Err(ended(error)),
                None => return Err(ClientError::Dropped),
            },
        }
    }

    // Input ended: replies may still be on their way (or not yet written by
    // a backend that is thinking), so print them until the server has been
    // quiet for `wait`.
    loop {
        match timeout(wait, ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Close(frame)))) => return server_closed(&mut ws, &mut output, frame).await,
            Ok(Some(Ok(message))) => print(&message, &mut output).await?,
            Ok(Some(Err(error))) => return Err(ended(error)),
            Ok(None) => return Err(ClientError::Dropped),
        }
    }
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    ws.send(Message::Close(Some(close))).await.map_err(ws_error)?;
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    loop {
        match timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(ClientError::NoCloseReply),
            Ok(None) | Ok(Some(Err(tungstenite::Error::ConnectionClosed))) => break,
            Ok(Some(Ok(Message::Close(frame)))) => {
                log_close("close acknowledged", frame.as_ref());
                drain(&mut ws, deadline).await;
                break;
            }
            Ok(Some(Ok(message))) => print(&message, &mut output).await?,
            Ok(Some(Err(error))) => return Err(ended(error)),
        }
    }
    output.flush().await.map_err(ClientError::Output)
}

/// The server sent a close: let tungstenite send its reply, then say
/// whether the close was a clean one (1000, or no code at all).
async fn server_closed<S, W>(
    ws: &mut WebSocketStream<S>,
    output: &mut W,
    frame: Option<CloseFrame>,
) -> Result<(), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    W: AsyncWrite + Unpin,
{
    log_close("server closed the connection", frame.as_ref());
    drain(ws, Instant::now() + CLOSE_TIMEOUT).await;
    output.flush().await.map_err(ClientError::Output)?;
    match frame {
        Some(frame) if frame.code != CloseCode::Normal => Err(ClientError::Closed {
            code: frame.code.into(),
            reason: frame.reason.to_string(),
        }),
        _ => Ok(()),
    }
}

/// A read error: a connection cut without a close frame says so; anything
/// else (a protocol violation, an I/O error) as it is.
fn ended(error: tungstenite::Error) -> ClientError {
    match error {
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
            ClientError::Dropped
        }
        tungstenite::Error::Io(ref io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            ClientError::Dropped
        }
        error => ws_error(error),
    }
}

/// Polls until the connection ends so queued close frames get written.
async fn drain<S>(ws: &mut WebSocketStream<S>, deadline: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Ok(Some(Ok(_))) = timeout_at(deadline, ws.next()).await {}
}

async fn print<W: AsyncWrite + Unpin>(message: &Message, output: &mut W) -> Result<(), ClientError> {
    let line = match message {
        Message::Text(text) => format!("{}\n", text.as_str()),
        Message::Binary(data) => format!("<binary {} bytes>\n", data.len()),
        // Pings are answered by tungstenite; nothing to show.
        _ => return Ok(()),
    };
    output.write_all(line.as_bytes()).await.map_err(ClientError::Output)?;
    // Flush per message so interactive use shows replies immediately.
    output.flush().await.map_err(ClientError::Output)
}

fn log_close(what: &str, frame: Option<&CloseFrame>) {
    match frame {
        Some(frame) if frame.code == CloseCode::Normal => {
            tracing::info!(code = u16::from(frame.code), reason = %frame.reason, "{what}")
        }
        Some(frame) => {
            tracing::warn!(code = u16::from(frame.code), reason = %frame.reason, "{what}")
        }
        None => tracing::info!("{what} (no close code)"),
    }
}

fn ws_error(error: tungstenite::Error) -> ClientError {
    ClientError::WebSocket(Box::new(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("wss://localhost:8443/echo").expect("parse");
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port), ("localhost", 8443));
        let t = Target::parse("ws://[::1]/x").expect("parse");
        assert!(!t.tls);
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        assert_eq!(t.addr(), "[::1]:80");
        assert_eq!(Target::parse("wss://example.com").expect("parse").port, 443);
        for bad in ["http://x/", "localhost:80", "ws://", "not a url"] {
            assert!(
                matches!(Target::parse(bad), Err(ClientError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }
}
