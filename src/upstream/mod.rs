//! Backends: connecting with failover, forwarding a WebSocket handshake,
//! forwarding HTTP.
//!
//! A connect that fails is retried on another server (up to the upstream's
//! `retries`) only before any byte of the request reached a backend: after
//! that, a retry could deliver a request twice.

pub mod balance;
pub mod connect;
pub mod discovery;
pub mod handshake;
pub mod health;
pub mod rebalance;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::{Body, Incoming};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::ServerName;
use tracing::{debug, warn};

use crate::body::{self, ProxyBody};
use crate::config::Upstream;
use crate::error::ProxyError;
use balance::{Backend, BackendGuard, Pool};
pub use connect::BackendStream;
use connect::{connect_to, ConnectError};
use handshake::Answered;

/// An upstream as the proxy uses it: its pool of servers and a keep-alive
/// connection pool for plain HTTP.
pub struct UpstreamPool {
    pub config: Upstream,
    pub pool: Arc<Pool>,
    http: Client<HttpsConnector<HttpConnector>, ProxyBody>,
}

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
        // Pooled HTTP connections find a vanished server as tunnels do.
        if let Some(probes) = config.tcp.keepalive {
            connector.set_keepalive(Some(probes.idle));
            connector.set_keepalive_interval(Some(probes.interval));
            connector.set_keepalive_retries(Some(probes.count));
        }
        connector.set_tcp_user_timeout(config.tcp.user_timeout);
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

    /// A failed connect to `backend` sets it aside for a while (passive
    /// health), said once per outage.
    fn connect_failed(&self, backend: &Backend, error: &ConnectError) {
        let (name, addr) = (&backend.name, backend.addr);
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
        let mut failover = Failover::new(self, key);
        let (mut stream, backend) = loop {
            let guard = failover.next()?;
            let backend = guard.backend().clone();
            let tls = self.config.tls.as_ref();
            match connect_to(&backend, tls, self.config.connect_timeout, &self.config.tcp).await {
                Ok(stream) => {
                    backend.record_connect_success();
                    break (stream, guard);
                }
                Err(error) => failover.failed(&backend, error, true)?,
            }
        };
        let attempts = failover.attempts();
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
    pub async fn send_http(&self, key: Option<&[u8]>, request: Request<ProxyBody>) -> Result<Answer, ProxyError> {
        let (parts, body) = request.into_parts();
        let replayable = body.is_end_stream();
        let mut body = Some(body);
        let mut failover = Failover::new(self, key);
        loop {
            let guard = failover.next()?;
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
                        attempts: failover.attempts(),
                    });
                }
                Ok(Err(error)) if error.is_connect() => {
                    failover.failed(&backend, connect_error(&error), replayable)?;
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

/// The failover of one request: the servers tried so far, and what the
/// client gets once none is left. The one retry loop of both the WebSocket
/// handshake and plain HTTP.
struct Failover<'a> {
    upstream: &'a UpstreamPool,
    key: Option<&'a [u8]>,
    tried: Vec<SocketAddr>,
    last_error: Option<ProxyError>,
}

impl<'a> Failover<'a> {
    fn new(upstream: &'a UpstreamPool, key: Option<&'a [u8]>) -> Self {
        Failover {
            upstream,
            key,
            tried: Vec::new(),
            last_error: None,
        }
    }

    /// The next server to try. With none left, the last failure is the
    /// client's answer (502/504); with nothing tried at all, every server
    /// is down (503).
    fn next(&mut self) -> Result<BackendGuard, ProxyError> {
        self.upstream
            .pool
            .pick(self.key, &self.tried)
            .ok_or_else(|| self.last_error.take().unwrap_or(ProxyError::NoServer))
    }

    /// A connect to `backend` failed, before any byte of the request was
    /// sent: recorded against the server, then `Ok` to try another one, or
    /// the client's answer when `retry` is false or the upstream's
    /// `retries` are spent.
    ///
    /// Out of descriptors, the server is not blamed (no back-off) and no
    /// other server is tried: each connect would fail alike, and the
    /// client's answer is 503 at once.
    fn failed(&mut self, backend: &Backend, error: ConnectError, retry: bool) -> Result<(), ProxyError> {
        if !error.blames_server() {
            return Err(error.on(&backend.name));
        }
        self.upstream.connect_failed(backend, &error);
        self.tried.push(backend.addr);
        let error = error.on(&backend.name);
        if !retry || self.tried.len() > self.upstream.config.retries as usize {
            return Err(error);
        }
        self.last_error = Some(error);
        Ok(())
    }

    /// Servers tried, the one that answered included.
    fn attempts(&self) -> u32 {
        self.tried.len() as u32 + 1
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

/// A TLS configuration for a connector that never makes TLS connections.
fn plain_only_tls_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("the provider supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// A pooled client's connect failure: a timeout, a refusal, or this
/// process out of descriptors.
fn connect_error(error: &(dyn std::error::Error + 'static)) -> ConnectError {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return ConnectError::Timeout(Duration::ZERO);
            }
            let copied = match io.raw_os_error() {
                Some(errno) => std::io::Error::from_raw_os_error(errno),
                None => std::io::Error::new(io.kind(), io.to_string()),
            };
            return ConnectError::from_io(copied);
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
