//! Listeners, the accept loop and graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::config::Config;
use crate::http::{ConnectionInfo, Proxy};

/// A proxy whose listeners are bound and ready to accept.
pub struct Server {
    proxy: Arc<Proxy>,
    listeners: Vec<BoundListener>,
    shutdown_timeout: Duration,
    handshake_timeout: Duration,
    tasks: TaskTracker,
}

struct BoundListener {
    name: String,
    socket: TcpListener,
    tls: Option<TlsAcceptor>,
}

impl Server {
    /// Binds every listener of `config`; an address that cannot be bound is
    /// an error naming the listener.
    pub async fn bind(config: Config) -> io::Result<Server> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let socket = TcpListener::bind(listener.listen).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("listener {:?}: cannot bind {}: {e}", listener.name, listener.listen),
                )
            })?;
            listeners.push(BoundListener {
                name: listener.name.clone(),
                socket,
                tls: listener.tls.clone().map(TlsAcceptor::from),
            });
        }
        let tasks = TaskTracker::new();
        Ok(Server {
            proxy: Arc::new(Proxy::new(&config, tasks.clone())),
            listeners,
            shutdown_timeout: config.global.shutdown_timeout,
            handshake_timeout: config.global.handshake_timeout,
            tasks,
        })
    }

    /// The bound address of the listener named `name` (the real port when
    /// the configuration asked for port 0).
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| l.socket.local_addr().ok())
    }

    /// Serves until `shutdown` completes; then stops accepting, lets
    /// requests in flight finish and waits up to `shutdown_timeout` for
    /// connections and tunnels to end before returning.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let stop = CancellationToken::new();
        let mut accept_loops = Vec::new();
        for listener in self.listeners {
            info!(listener = %listener.name, address = ?listener.socket.local_addr().ok(), tls = listener.tls.is_some(), "listening");
            let acceptor = Acceptor {
                proxy: self.proxy.clone(),
                tls: listener.tls,
                handshake_timeout: self.handshake_timeout,
                stop: stop.clone(),
                tasks: self.tasks.clone(),
            };
            let span = tracing::info_span!("listener", name = %listener.name);
            accept_loops.push(tokio::spawn(acceptor.run(listener.socket).instrument(span)));
        }
        shutdown.await;
        info!("shutting down: no new connections");
        stop.cancel();
        for accept_loop in accept_loops {
            let _ = accept_loop.await;
        }
        self.tasks.close();
        if tokio::time::timeout(self.shutdown_timeout, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                open = self.tasks.len(),
                "shutdown timeout reached with connections still open"
            );
        }
        info!("stopped");
    }
}

struct Acceptor {
    proxy: Arc<Proxy>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Acceptor {
    async fn run(self, socket: TcpListener) {
        loop {
            let accepted = tokio::select! {
                accepted = socket.accept() => accepted,
                () = self.stop.cancelled() => return,
            };
            match accepted {
                Ok((stream, client)) => {
                    let span = tracing::info_span!("conn", %client);
                    self.tasks.spawn(self.serve(stream, client).instrument(span));
                }
                Err(error) => {
                    // Out of descriptors or memory: wait instead of spinning;
                    // connections ending meanwhile free what we need.
                    error!(%error, "accept failed; retrying in 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn serve(&self, stream: TcpStream, client: SocketAddr) -> impl Future<Output = ()> + Send + 'static {
        let proxy = self.proxy.clone();
        let tls = self.tls.clone();
        let handshake_timeout = self.handshake_timeout;
        let stop = self.stop.clone();
        async move {
            let _ = stream.set_nodelay(true);
            match tls {
                None => {
                    let info = ConnectionInfo { client, tls: false };
                    proxy.serve_connection(stream, info, stop).await;
                }
                Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let info = ConnectionInfo { client, tls: true };
                        proxy.serve_connection(stream, info, stop).await;
                    }
                    Ok(Err(error)) => debug!(%error, "TLS handshake failed"),
                    Err(_) => debug!("TLS handshake timed out"),
                },
            }
        }
    }
}
