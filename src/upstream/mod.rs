//! Backends: connecting with failover, forwarding a WebSocket handshake,
//! forwarding HTTP.
//!
//! A connect that fails is retried on another server (up to the upstream's
//! `retries`) only before any byte of the request reached a backend: after
//! that, a retry could deliver a request twice.

pub mod balance;
pub mod handshake;
pub mod health;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;
use tracing::{debug, warn};

use crate::body::{self, ProxyBody};
use crate::config::Upstream;
use crate::error::ProxyError;
use crate::upstream::balance::{BackendGuard, Pool};
use handshake::Answered;

/// An upstream as the proxy uses it: its pool of servers and a keep-alive
/// connection pool for plain HTTP.
pub struct UpstreamPool {
    pub config: Upstream,
    pub pool: Arc<Pool>,
    http: Client<HttpsConnector<HttpConnector>, ProxyBody>,
}

/// A connection to a server: plain TCP, or TLS over it.
pub type BackendStream = Either<TcpStream, TlsStream<TcpStream>>;

/// A backend's answer to a forwarded WebSocket handshake, with the server
/// that gave it and the connection it came on.
pub struct Handshake {
    pub answered: Answered,
    pub stream: BackendStream,
    /// Counts the tunnel on its server.
    pub backend: BackendGuard,
    /// Servers tried, this one included.
    pub attempts: u32,
}

/// A backend's answer to a forwarded request, with the server that gave it.
pub struct Answer {
    pub response: Response<Incoming>,
    /// Counts the request (and the tunnel it may become) on its server.
    pub backend: BackendGuard,
    /// Servers tried, this one included.
    pub attempts: u32,
}

impl UpstreamPool {
    /// The pool for `config`; after a reload, `previous` is the same
    /// upstream of the last configuration, whose servers' state carries over.
    pub async fn new(config: Upstream, previous: Option<&UpstreamPool>) -> UpstreamPool {
        let pool = Arc::new(Pool::new(&config, previous.map(|p| &*p.pool)).await);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let https = match &config.tls {
            Some(tls) => {
                // Requests are aimed at an address; the certificate is
                // checked against the name of the server behind it.
                let (tls_for_names, pool_for_names) = (tls.clone(), pool.clone());
                let name_of = move |uri: &Uri| -> Result<ServerName<'static>, String> {
                    let backends = pool_for_names.backends();
                    let backend = backends
                        .iter()
                        .find(|b| uri.authority().is_some_and(|a| a.as_str() == b.addr.to_string()))
                        .ok_or_else(|| format!("no server at {uri}"))?;
                    tls_for_names.name_for(&backend.name)
                };
                // hyper-rustls sets ALPN itself (http/1.1, from `enable_http1`)
                // and refuses a configuration that already has it.
                let mut config = (*tls.config).clone();
                config.alpn_protocols.clear();
                HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_or_http()
                    .with_server_name_resolver(name_of)
                    .enable_http1()
                    .wrap_connector(connector)
            }
            // Never used for TLS: every URI of a plain upstream is http://.
            None => HttpsConnectorBuilder::new()
                .with_tls_config(plain_only_tls_config())
                .https_or_http()
                .enable_http1()
                .wrap_connector(connector),
        };
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        UpstreamPool { pool, config, http }
    }

    /// Picks a server and connects, trying others when a connect fails.
    async fn connect(&self, key: Option<&[u8]>) -> Result<(BackendStream, BackendGuard, u32), ProxyError> {
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut last_error = None;
        loop {
            // Nothing left to try: the last failure is the client's answer
            // (502/504); with nothing tried at all, every server is down (503).
            let Some(guard) = self.pool.pick(key, &tried) else {
                return Err(last_error.unwrap_or(ProxyError::NoServer));
            };
            let backend = guard.backend().clone();
            match self.connect_to(&backend).await {
                Ok(stream) => {
                    backend.record_connect_success();
                    return Ok((stream, guard, tried.len() as u32 + 1));
                }
                Err(error) => {
                    self.connect_failed(&backend.name, backend.addr, &error, &backend);
                    tried.push(backend.addr);
                    let error = error.on(&backend.name);
                    if tried.len() > self.config.retries as usize {
                        return Err(error);
                    }
                    last_error = Some(error);
                }
            }
        }
    }

    /// TCP, then TLS when the upstream asks for it; a TLS failure counts as a
    /// failed connect: nothing was sent, and the server is no use as it is.
    async fn connect_to(&self, backend: &crate::upstream::balance::Backend) -> Result<BackendStream, ConnectError> {
        let stream = connect(backend.addr, self.config.connect_timeout).await?;
        let Some(tls) = &self.config.tls else {
            return Ok(Either::Left(stream));
        };
        match tokio::time::timeout(self.config.connect_timeout, tls.connect(stream, &backend.name)).await {
            Ok(Ok(stream)) => Ok(Either::Right(stream)),
            Ok(Err(error)) => Err(ConnectError::Tls(error.to_string())),
            Err(_) => Err(ConnectError::Timeout(self.config.connect_timeout)),
        }
    }

    fn connect_failed(
        &self,
        name: &str,
        addr: SocketAddr,
        error: &ConnectError,
        backend: &crate::upstream::balance::Backend,
    ) {
        match backend.record_connect_failure(self.config.passive_backoff, self.config.passive_backoff_max) {
            Some(backoff) => warn!(upstream = %self.config.name, server = %name, %addr, %error,
                backoff_ms = backoff.as_millis() as u64, "connect failed; server set aside"),
            // One of the connects in flight when it failed: already said.
            None => debug!(upstream = %self.config.name, server = %name, %addr, %error,
                "connect failed; server already set aside"),
        }
    }

    /// Sends a WebSocket handshake on a new connection of its own (a tunnel
    /// never shares its backend connection) and reads the backend's answer
    /// ([`handshake`]); on a 101 the connection is the tunnel's.
    pub async fn send_handshake(&self, key: Option<&[u8]>, request: Request<()>) -> Result<Handshake, ProxyError> {
        let (mut stream, backend, attempts) = self.connect(key).await?;
        let timeout = self.config.response_timeout;
        let exchange = handshake::exchange(&mut stream, &request);
        let answered = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answered)) => answered,
            Ok(Err(error)) => {
                return Err(ProxyError::Upstream {
                    server: backend.backend().name.to_string(),
                    reason: error.to_string(),
                })
            }
            Err(_) => {
                return Err(ProxyError::ResponseTimeout {
                    server: backend.backend().name.to_string(),
                    timeout,
                })
            }
        };
        Ok(Handshake {
            answered,
            stream,
            backend,
            attempts,
        })
    }

    /// Forwards a plain HTTP request on a pooled keep-alive connection,
    /// streaming the body both ways. A request without a body is tried on
    /// another server when the connect fails; one with a body is not, since
    /// its body cannot be read twice.
    pub async fn send_http(&self, key: Option<&[u8]>, request: Request<Incoming>) -> Result<Answer, ProxyError> {
        let (parts, body) = request.into_parts();
        let replayable = body.is_end_stream();
        let mut body = Some(body.boxed());
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut last_error = None;
        loop {
            let Some(guard) = self.pool.pick(key, &tried) else {
                return Err(last_error.unwrap_or(ProxyError::NoServer));
            };
            let backend = guard.backend().clone();
            let mut attempt = Request::from_parts(parts.clone(), ());
            *attempt.uri_mut() = backend_uri(backend.addr, &parts.uri, self.config.tls.is_some())?;
            let attempt_body = match body.take() {
                Some(body) => body,
                None => body::empty(),
            };
            let timeout = self.config.response_timeout;
            let sent = tokio::time::timeout(timeout, self.http.request(attempt.map(|()| attempt_body))).await;
            match sent {
                Ok(Ok(response)) => {
                    backend.record_connect_success();
                    return Ok(Answer {
                        response,
                        backend: guard,
                        attempts: tried.len() as u32 + 1,
                    });
                }
                Ok(Err(error)) if error.is_connect() => {
                    let error = connect_error(&error);
                    self.connect_failed(&backend.name, backend.addr, &error, &backend);
                    tried.push(backend.addr);
                    let error = error.on(&backend.name);
                    if !replayable || tried.len() > self.config.retries as usize {
                        return Err(error);
                    }
                    last_error = Some(error);
                }
                Ok(Err(error)) if client_body_failed(&error) => {
                    return Err(ProxyError::BadRequest("malformed request body"));
                }
                Ok(Err(error)) => {
                    return Err(ProxyError::Upstream {
                        server: backend.name.to_string(),
                        reason: error_chain(&error),
                    })
                }
                Err(_) => {
                    return Err(ProxyError::ResponseTimeout {
                        server: backend.name.to_string(),
                        timeout,
                    })
                }
            }
        }
    }
}

/// The request's target, aimed at one server.
fn backend_uri(addr: SocketAddr, uri: &Uri, tls: bool) -> Result<Uri, ProxyError> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme(if tls { "https" } else { "http" })
        .authority(addr.to_string())
        .path_and_query(path)
        .build()
        .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))
}

/// Why a connection to a server could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Refused(std::io::Error),
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
}

impl ConnectError {
    fn on(self, server: &str) -> ProxyError {
        match self {
            ConnectError::Refused(source) => ProxyError::Connect {
                server: server.to_string(),
                source,
            },
            ConnectError::Timeout(timeout) => ProxyError::ConnectTimeout {
                server: server.to_string(),
                timeout,
            },
            ConnectError::Tls(reason) => ProxyError::Connect {
                server: server.to_string(),
                source: std::io::Error::other(format!("TLS handshake failed: {reason}")),
            },
        }
    }
}

/// Opens a TCP connection to `addr` within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            // Frames are small and latency matters more than packet count.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(error)) => Err(ConnectError::Refused(error)),
        Err(_) => Err(ConnectError::Timeout(timeout)),
    }
}

/// A TLS configuration for a connector that never makes TLS connections.
fn plain_only_tls_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// A pooled client's connect failure: a timeout or a refusal.
fn connect_error(error: &(dyn std::error::Error + 'static)) -> ConnectError {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return ConnectError::Timeout(Duration::ZERO);
            }
            return ConnectError::Refused(std::io::Error::new(io.kind(), io.to_string()));
        }
        source = cause.source();
    }
    ConnectError::Refused(std::io::Error::other(error_chain(error)))
}

/// Whether a pooled client's failure was the client's request body breaking
/// (bad chunked framing, the client leaving): hyper reports a failing body
/// as a user error.
fn client_body_failed(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = error.source();
    while let Some(cause) = source {
        if cause.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_user) {
            return true;
        }
        source = cause.source();
    }
    false
}

/// An error and its causes on one line: hyper's top-level messages alone
/// ("client error (Connect)") do not tell an operator what happened.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
