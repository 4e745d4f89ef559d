//! Opening a connection to a backend server: TCP, then TLS when the
//! upstream asks for it. The one connect of the proxy: tunnels and health
//! checks alike go through [`connect_to`].

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use super::balance::Backend;
use crate::config::TcpLiveness;
use crate::error::ProxyError;
use crate::lifecycle::descriptors::is_resource_exhaustion;
use crate::tls::UpstreamTls;

/// A connection to a server: plain TCP, or TLS over it. TLS is boxed
/// (rustls' state is a kilobyte): every future and tunnel that carries a
/// stream would otherwise make room for it, plain or not.
pub type BackendStream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// TCP, then TLS when `tls` is given, each step within `timeout`; a TLS
/// failure counts as a failed connect: nothing was sent, and the server is
/// no use as it is. `liveness` is set on the socket, so that a server that
/// vanishes later (no FIN, no reset) fails the tunnel's next read or write
/// instead of holding it open for ever.
pub async fn connect_to(
    backend: &Backend,
    tls: Option<&UpstreamTls>,
    timeout: Duration,
    liveness: &TcpLiveness,
) -> Result<BackendStream, ConnectError> {
    let stream = connect(backend.addr, timeout).await?;
    // A socket that refuses an option is still a working connection; the
    // options only shorten how long a dead server goes unnoticed.
    if let Err(error) = liveness.apply(&stream) {
        tracing::debug!(server = %backend.name, %error, "TCP keepalive or user timeout not set");
    }
    let Some(tls) = tls else {
        return Ok(Either::Left(stream));
    };
    match tokio::time::timeout(timeout, Box::pin(tls.connect(stream, &backend.name))).await {
        Ok(Ok(stream)) => Ok(Either::Right(Box::new(stream))),
        Ok(Err(error)) => Err(ConnectError::Tls(error.to_string())),
        Err(_) => Err(ConnectError::Timeout(timeout)),
    }
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
    /// This process could not open a socket (out of descriptors or socket
    /// memory): says nothing about the server.
    #[error("{0}")]
    OutOfResources(std::io::Error),
}

impl ConnectError {
    /// A refused connect, or this process's own exhaustion when `error` says so.
    pub(crate) fn from_io(error: std::io::Error) -> ConnectError {
        if is_resource_exhaustion(&error) {
            ConnectError::OutOfResources(error)
        } else {
            ConnectError::Refused(error)
        }
    }

    /// Whether the server is to blame: not when this process ran out of
    /// descriptors or socket memory.
    pub fn blames_server(&self) -> bool {
        !matches!(self, ConnectError::OutOfResources(_))
    }

    pub(super) fn on(self, server: &str) -> ProxyError {
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
            ConnectError::OutOfResources(source) => ProxyError::OutOfResources(source),
        }
    }
}

/// Opens a TCP connection to `addr` within `timeout`.
pub async fn connect(addr: std::net::SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            // Frames are small and latency matters more than packet count.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(error)) => Err(ConnectError::from_io(error)),
        Err(_) => Err(ConnectError::Timeout(timeout)),
    }
}
