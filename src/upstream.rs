//! Backends: connecting, forwarding a WebSocket handshake, forwarding HTTP.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tracing::debug;

use crate::balance::RoundRobin;
use crate::config::{ServerAddress, Upstream};
use crate::error::ProxyError;

/// An upstream as the proxy uses it: its servers, the balancer that picks
/// among them, and a keep-alive connection pool for plain HTTP.
pub struct UpstreamPool {
    pub config: Upstream,
    balancer: RoundRobin,
    http: Client<HttpConnector, Incoming>,
}

impl UpstreamPool {
    pub fn new(config: Upstream) -> UpstreamPool {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        UpstreamPool {
            config,
            balancer: RoundRobin::default(),
            http,
        }
    }

    /// The server for the next connection.
    pub fn pick(&self) -> Result<&ServerAddress, ProxyError> {
        self.balancer
            .pick(&self.config.servers)
            .map(|server| &server.address)
            .ok_or(ProxyError::NoServer)
    }

    /// Sends a WebSocket handshake to `server` on a new connection of its
    /// own (a tunnel never shares its backend connection) and returns the
    /// backend's answer; its upgrade is reached through `hyper::upgrade::on`.
    pub async fn send_handshake(
        &self,
        server: &ServerAddress,
        request: Request<Empty<Bytes>>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let stream = connect(server, self.config.connect_timeout).await?;
        let upstream_error = |e: hyper::Error| ProxyError::Upstream {
            server: server.to_string(),
            reason: e.to_string(),
        };
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(upstream_error)?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                debug!(%error, "backend connection ended with an error");
            }
        });
        let timeout = self.config.response_timeout;
        match tokio::time::timeout(timeout, sender.send_request(request)).await {
            Ok(result) => result.map_err(upstream_error),
            Err(_) => Err(ProxyError::ResponseTimeout {
                server: server.to_string(),
                timeout,
            }),
        }
    }

    /// Forwards a plain HTTP request on a pooled keep-alive connection,
    /// streaming the body both ways. The request's URI must already name
    /// `server`.
    pub async fn send_http(
        &self,
        server: &ServerAddress,
        request: Request<Incoming>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let timeout = self.config.response_timeout;
        match tokio::time::timeout(timeout, self.http.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) if error.is_connect() => Err(connect_error(server, &error, self.config.connect_timeout)),
            Ok(Err(error)) => Err(ProxyError::Upstream {
                server: server.to_string(),
                reason: error_chain(&error),
            }),
            Err(_) => Err(ProxyError::ResponseTimeout {
                server: server.to_string(),
                timeout,
            }),
        }
    }
}

/// Opens a TCP connection to `server` within `timeout`.
pub async fn connect(server: &ServerAddress, timeout: Duration) -> Result<TcpStream, ProxyError> {
    let attempt = TcpStream::connect((server.host.as_str(), server.port));
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(stream)) => {
            // Frames are small and latency matters more than packet count.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(source)) => Err(ProxyError::Connect {
            server: server.to_string(),
            source,
        }),
        Err(_) => Err(ProxyError::ConnectTimeout {
            server: server.to_string(),
            timeout,
        }),
    }
}

/// A pooled client's connect failure: a timeout (504) or a refusal (502).
fn connect_error(server: &ServerAddress, error: &(dyn std::error::Error + 'static), timeout: Duration) -> ProxyError {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return ProxyError::ConnectTimeout {
                    server: server.to_string(),
                    timeout,
                };
            }
            return ProxyError::Connect {
                server: server.to_string(),
                source: std::io::Error::new(io.kind(), io.to_string()),
            };
        }
        source = cause.source();
    }
    ProxyError::Connect {
        server: server.to_string(),
        source: std::io::Error::other(error_chain(error)),
    }
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
