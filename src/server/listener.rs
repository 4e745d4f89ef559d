//! A listener: binding its socket, and the accept loop that takes
//! connections under the global connection cap, reads a PROXY header,
//! terminates TLS and hands the client's stream to the HTTP stage.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::config;
use crate::lifecycle::descriptors::is_per_connection;
use crate::proxy::real_ip::{self, ProxyHeaderError, TrustedProxies};
use crate::proxy::{serve_connection, ConnectionInfo, ConnectionSlot, Proxy};
use crate::refusal::RefusalReason;

/// A listener's socket and what its connections are served with.
pub(crate) struct BoundListener {
    pub(crate) name: String,
    /// The address as configured (port 0 in tests): a reload compares it.
    pub(crate) listen: SocketAddr,
    pub(crate) socket: TcpListener,
    pub(crate) settings: ListenerSettings,
}

/// A listener's settings; a reload replaces them for new connections.
#[derive(Clone)]
pub(crate) struct ListenerSettings {
    /// The listener's name, for its connections' counters.
    name: Arc<str>,
    tls: Option<Arc<crate::tls::ServerTls>>,
    handshake_timeout: Duration,
    trusted_proxies: Arc<TrustedProxies>,
    proxy_protocol: bool,
    /// Keepalive and user timeout, so a client that vanished is noticed.
    tcp: config::TcpLiveness,
    /// HTTP/2's limits; `None`: HTTP/1.1 only.
    http2: Option<config::Http2>,
}

impl ListenerSettings {
    /// Sets the connections' TCP options (keepalive, user timeout, no
    /// delay) on the listening socket: every connection it accepts inherits
    /// them, with no system call of its own. A socket that refuses them is
    /// served all the same: they only shorten how long a vanished client
    /// goes unnoticed.
    pub(crate) fn apply_to(&self, socket: &TcpListener) {
        if let Err(error) = self.tcp.apply_to_listener(socket) {
            warn!(listener = %self.name, %error, "TCP keepalive, user timeout or no-delay not set on the listening socket");
        }
    }

    pub(crate) fn new(listener: &config::Listener) -> ListenerSettings {
        ListenerSettings {
            name: listener.name.as_str().into(),
            tls: listener.tls.clone(),
            handshake_timeout: listener.handshake_timeout,
            trusted_proxies: Arc::new(listener.trusted_proxies.clone()),
            proxy_protocol: listener.proxy_protocol,
            tcp: listener.tcp,
            http2: listener.http2,
        }
    }
}

/// Binds `listener`'s address; the error names the listener.
/// Connections the kernel queues for a listener before wsgate accepts them
/// (capped by `net.core.somaxconn`). A burst of clients (a reconnect storm
/// after a deploy) beyond the queue has its SYNs dropped and waits a second
/// or more to retry; tokio's default of 128 is too small for that, nginx
/// uses 511, HAProxy its `maxconn`.
const LISTEN_BACKLOG: u32 = 4096;

pub(crate) async fn bind_socket(listener: &config::Listener) -> io::Result<TcpListener> {
    let bind = || {
        let socket = if listener.listen.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As std and tokio do: a restarted proxy can bind at once while
        // the old one's connections linger in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(listener.listen)?;
        socket.listen(LISTEN_BACKLOG)
    };
    bind().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("listener {:?}: cannot bind {}: {e}", listener.name, listener.listen),
        )
    })
}

/// The first wait after a failed accept; it doubles with each failure in a
/// row, up to [`ACCEPT_BACKOFF_MAX`], and starts over after an accept.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Failed accepts are logged at most once per interval, with their count.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(5);

pub(crate) struct Acceptor {
    pub(crate) current: Arc<ArcSwap<Proxy>>,
    pub(crate) settings: Arc<ArcSwap<ListenerSettings>>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) stop: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

impl Acceptor {
    pub(crate) async fn run(self, socket: Arc<TcpListener>) {
        // Failed accepts (out of descriptors or memory) since the last line
        // about them, when that line was written, whether one was written
        // since the last accept, and the next wait. The interval holds
        // across short recoveries: with a table that stays nearly full,
        // accepts fail and succeed in turn, and that is one outage to tell.
        let mut failures: u64 = 0;
        let mut logged_at: Option<Instant> = None;
        let mut said = false;
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            // Take a place under max_connections *before* accepting: at the
            // cap the listener pauses and new clients wait in the kernel's
            // backlog, rather than being accepted only to be dropped.
            let Some(permit) = self.connection_permit().await else {
                return;
            };
            let accepted = tokio::select! {
                accepted = socket.accept() => accepted,
                () = self.stop.cancelled() => return,
            };
            match accepted {
                Ok((stream, client)) => {
                    if std::mem::take(&mut said) {
                        info!(failures, "accepting again");
                    }
                    backoff = ACCEPT_BACKOFF_MIN;
                    let span = tracing::debug_span!("conn", %client);
                    self.tasks.spawn(self.serve(stream, client, permit).instrument(span));
                }
                Err(error) if is_per_connection(&error) => {
                    // That client gave up before it was accepted: the next one.
                    debug!(%error, "accept failed for one connection");
                }
                Err(error) => {
                    // Out of descriptors or memory: the listener stays
                    // readable and every retry fails at once, so wait,
                    // longer each time (connections ending meanwhile free
                    // what we need), and say so once per interval, not
                    // once per failure.
                    drop(permit);
                    failures += 1;
                    if logged_at.is_none_or(|at| at.elapsed() >= ACCEPT_LOG_INTERVAL) {
                        error!(
                            %error,
                            failures,
                            retry_ms = backoff.as_millis() as u64,
                            "accept failed; retrying with back-off"
                        );
                        logged_at = Some(Instant::now());
                        failures = 0;
                        said = true;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }

    /// A place under `max_connections`, waiting (and saying so once) when
    /// all are taken; `None` once shutdown began.
    async fn connection_permit(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some(permit);
        }
        self.current.load().stats.count_refusal(RefusalReason::GlobalCap);
        warn!("max_connections reached: not accepting until a connection ends");
        tokio::select! {
            permit = self.permits.clone().acquire_owned() => permit.ok(),
            () = self.stop.cancelled() => None,
        }
    }

    fn serve(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send + 'static {
        let current = self.current.clone();
        let proxy = current.load_full();
        let settings = self.settings.load_full();
        let tls = settings.tls.clone();
        let trusted = settings.trusted_proxies.clone();
        let proxy_protocol = settings.proxy_protocol;
        let handshake_timeout = settings.handshake_timeout;
        let http2 = settings.http2;
        let stop = self.stop.clone();
        let accepted_at = Instant::now();
        async move {
            let slot = Arc::new(ConnectionSlot {
                _permit: Some(permit),
                _open: proxy.stats.connection_opened(&settings.name),
            });
            let peer_trusted = trusted.contains(peer.ip());
            let mut client = peer;
            if proxy_protocol {
                // Boxed, as the TLS handshake below: the task holds only
                // what every connection needs until it ends.
                match Box::pin(real_ip::read_proxy_header(&mut stream, handshake_timeout)).await {
                    // An untrusted peer's header is read (it frames the stream) but not believed.
                    Ok(Some(address)) if peer_trusted => client = address,
                    Ok(_) => {}
                    Err(error) => {
                        let reason = match error {
                            ProxyHeaderError::Timeout => RefusalReason::HandshakeTimeout,
                            _ => RefusalReason::BadHandshake,
                        };
                        proxy.stats.count_refusal(reason);
                        debug!(%error, "connection closed");
                        return;
                    }
                }
            }
            let info = |tls| ConnectionInfo {
                listener: settings.name.clone(),
                peer,
                client,
                // Without PROXY protocol, a trusted peer names its clients in headers.
                forwarded_by: (peer_trusted && !proxy_protocol).then(|| trusted.clone()),
                tls,
                slot,
            };
            // One deadline from accept to complete headers, PROXY header and TLS included.
            let left = || {
                handshake_timeout
                    .saturating_sub(accepted_at.elapsed())
                    .max(Duration::from_millis(1))
            };
            // Boxed, each, the TLS handshake too (rustls' state is kilobytes):
            // the task is spawned (moved whole) before it knows which one it
            // runs, so it holds only a pointer.
            match tls {
                None => Box::pin(serve_connection(current, stream, info(false), left(), http2, stop)).await,
                Some(tls) => {
                    let handshake = Box::pin(async move {
                        crate::tls::refuse_legacy_versions(&mut stream).await?;
                        let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
                        let config = tls.for_hello(&hello.client_hello());
                        hello.into_stream(config).await
                    });
                    // Out of the match before the connection is served: a
                    // scrutinee would keep its room in the task meanwhile.
                    let stream = match tokio::time::timeout(left(), handshake).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            debug!(%error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            proxy.stats.count_refusal(RefusalReason::HandshakeTimeout);
                            debug!("TLS handshake timed out");
                            return;
                        }
                    };
                    Box::pin(serve_connection(current, stream, info(true), left(), http2, stop)).await
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use socket2::SockRef;
    use tokio::net::{TcpListener, TcpStream};

    use crate::config::TcpLiveness;

    async fn accepted(listener: &TcpListener) -> TcpStream {
        let address = listener.local_addr().unwrap();
        let (_client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        accepted.unwrap().0
    }

    /// The options set once on the listening socket are on every
    /// connection it accepts (Linux copies them), and a reload that turns
    /// them off takes effect for the connections after it.
    #[tokio::test]
    async fn accepted_connections_inherit_the_listening_sockets_options() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        TcpLiveness::default().apply_to_listener(&listener).unwrap();
        let stream = accepted(&listener).await;
        let socket = SockRef::from(&stream);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), Duration::from_secs(10));
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(Duration::from_secs(60)));
        assert!(socket.tcp_nodelay().unwrap());

        TcpLiveness::OFF.apply_to_listener(&listener).unwrap();
        let stream = accepted(&listener).await;
        let socket = SockRef::from(&stream);
        assert!(!socket.keepalive().unwrap());
        assert_eq!(socket.tcp_user_timeout().unwrap(), None);
        assert!(socket.tcp_nodelay().unwrap());
    }
}
