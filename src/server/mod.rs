//! Listeners, the accept loop, the global connection cap, and the server's
//! run: reloads while it serves, graceful shutdown at its end.

pub mod admin;
pub mod reload;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::admission::refusal_log;
use crate::config::{self, Config};
use crate::lifecycle::memory;
use crate::proxy::real_ip::{self, ProxyHeaderError, TrustedProxies};
use crate::proxy::{serve_connection, ConnectionInfo, ConnectionSlot, Proxy};
use crate::server::admin::AdminListener;
use crate::server::reload::{Fixed, Reload, Reloader, Running};
use crate::telemetry::stats::{RefusalReason, Stats};
use crate::tunnel::drain::GoingAway;

/// A proxy whose listeners are bound and ready to accept.
pub struct Server {
    /// The configuration generation new connections and requests use;
    /// a reload swaps it whole.
    current: Arc<ArcSwap<Proxy>>,
    listeners: Vec<BoundListener>,
    /// One permit per open client connection, shared by every listener.
    connection_permits: Arc<Semaphore>,
    max_connections: usize,
    tasks: TaskTracker,
    reloads: mpsc::Receiver<Reload>,
    reload_sender: mpsc::Sender<Reload>,
    /// Metrics, health and readiness (`[admin]`), when configured.
    admin: Option<AdminListener>,
    /// What a reload cannot change.
    fixed: Fixed,
}

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
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    trusted_proxies: Arc<TrustedProxies>,
    proxy_protocol: bool,
}

impl ListenerSettings {
    pub(crate) fn new(listener: &config::Listener) -> ListenerSettings {
        ListenerSettings {
            name: listener.name.as_str().into(),
            tls: listener.tls.clone().map(TlsAcceptor::from),
            handshake_timeout: listener.handshake_timeout,
            trusted_proxies: Arc::new(listener.trusted_proxies.clone()),
            proxy_protocol: listener.proxy_protocol,
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

impl Server {
    /// Binds every listener of `config`; an address that cannot be bound is
    /// an error naming the listener.
    pub async fn bind(config: Config) -> io::Result<Server> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        // Sockets systemd passed (socket activation) serve their listeners
        // instead of binding; the rest are bound here.
        let mut passed = crate::lifecycle::listen_fds::Activated::from_env()
            .for_listeners(config.listeners.iter().map(|l| l.name.as_str()));
        for listener in &config.listeners {
            let socket = match passed.take(&listener.name, listener.listen) {
                Some(socket) => TcpListener::from_std(socket).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("listener {:?}: cannot use the passed socket: {e}", listener.name),
                    )
                })?,
                None => bind_socket(listener).await?,
            };
            listeners.push(BoundListener {
                name: listener.name.clone(),
                listen: listener.listen,
                socket,
                settings: ListenerSettings::new(listener),
            });
        }
        let admin = match &config.admin {
            Some(admin) => Some(AdminListener::bind(admin.listen).await?),
            None => None,
        };
        let tasks = TaskTracker::new();
        let proxy = Proxy::new(&config, tasks.clone(), Stats::default(), None).await;
        let max_connections = config.global.max_connections.min(Semaphore::MAX_PERMITS);
        let (reload_sender, reloads) = mpsc::channel(1);
        Ok(Server {
            current: Arc::new(ArcSwap::from_pointee(proxy)),
            listeners,
            connection_permits: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            tasks,
            reloads,
            reload_sender,
            admin,
            fixed: Fixed::new(&config),
        })
    }

    /// The bound address of the admin listener, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(AdminListener::local_addr)
    }

    /// The bound address of the listener named `name` (the real port when
    /// the configuration asked for port 0).
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| l.socket.local_addr().ok())
    }

    /// The proxy's counters; the handle stays valid after `run` returns.
    pub fn stats(&self) -> Stats {
        self.current.load().stats.clone()
    }

    /// A handle that asks the running server to switch configurations.
    pub fn reloader(&self) -> Reloader {
        Reloader::new(self.reload_sender.clone())
    }

    /// Serves until `shutdown` completes, switching configurations when a
    /// [`Reloader`] asks; then stops accepting, lets requests in flight
    /// finish, asks every tunnel to end with the close code `shutdown` gave,
    /// and waits up to `shutdown_timeout` for connections and tunnels to end
    /// before returning.
    pub async fn run(self, shutdown: impl Future<Output = GoingAway> + Send + 'static) {
        let Server {
            current,
            listeners,
            connection_permits,
            max_connections,
            tasks,
            mut reloads,
            reload_sender,
            admin,
            fixed,
        } = self;
        // Only the handles given out keep the channel open.
        drop(reload_sender);
        let stop = CancellationToken::new();
        let mut running = Running {
            current,
            listeners: Vec::new(),
            permits: connection_permits,
            max_connections,
            tasks: tasks.clone(),
            stop: stop.clone(),
            housekeeping: None,
            generation: 1,
            fixed,
        };
        for listener in listeners {
            running.start_listener(listener);
        }
        running.start_housekeeping();
        tokio::spawn(memory::release_after_bursts(
            running.current.load().stats.clone(),
            stop.clone(),
        ));
        // Started after the listeners, so it is never ready before they accept.
        let admin_done = CancellationToken::new();
        let admin =
            admin.map(|admin| tokio::spawn(admin.serve(running.current.clone(), stop.clone(), admin_done.clone())));
        tokio::pin!(shutdown);
        let why = loop {
            tokio::select! {
                why = &mut shutdown => break why,
                Some(reload) = reloads.recv() => running.answer(reload).await,
            }
        };
        info!(close_code = why.code, "shutting down: no new connections");
        stop.cancel();
        let proxy = running.current.load_full();
        proxy.shutdown.cancel();
        // Spread over the first half of the window: the close handshakes
        // and the plain tunnels' own ends get the rest.
        proxy.drain.start(why, proxy.shutdown_timeout() / 2);
        running.join().await;
        tasks.close();
        if tokio::time::timeout(proxy.shutdown_timeout(), tasks.wait())
            .await
            .is_err()
        {
            warn!(
                open = tasks.len(),
                "shutdown timeout reached with connections still open"
            );
        }
        admin_done.cancel();
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        info!("stopped");
    }
}

/// Periodic work: forgetting idle rate-limiter keys (the memory bound),
/// active health checks, resolving upstream host names again, and
/// summarising refusals that were not logged one by one.
pub(crate) fn housekeeping(proxy: &Arc<Proxy>, stop: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for limiter in proxy.keyed_limiters() {
        let limiter = limiter.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(limiter.eviction_interval());
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => { limiter.evict_idle(); }
                    () = stop.cancelled() => return,
                }
            }
        }));
    }
    for upstream in proxy.upstreams() {
        let pool = upstream.pool.clone();
        if let Some(check) = upstream.config.health_check.clone() {
            let backends = {
                let pool = pool.clone();
                move || pool.backends()
            };
            tasks.push(tokio::spawn(crate::upstream::health::run(
                pool.name.clone(),
                check,
                upstream.config.tls.clone(),
                backends,
                stop.clone(),
            )));
        }
        if pool.has_host_names() {
            let every = upstream.config.resolve_interval;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tokio::select! {
                        _ = ticks.tick() => pool.resolve().await,
                        () = stop.cancelled() => return,
                    }
                }
            }));
        }
    }
    let proxy = proxy.clone();
    let stop = stop.clone();
    tasks.push(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(refusal_log::SUMMARY_INTERVAL);
        loop {
            tokio::select! {
                _ = ticks.tick() => proxy.refusal_log.summarise(),
                () = stop.cancelled() => return,
            }
        }
    }));
    tasks
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
    pub(crate) async fn run(self, socket: TcpListener) {
        // Failed accepts (out of descriptors or memory) since the last line
        // about them, when that line was written, and the next wait.
        let mut failures: u64 = 0;
        let mut logged_at: Option<Instant> = None;
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
                    if logged_at.take().is_some() {
                        info!(failures, "accepting again");
                    }
                    failures = 0;
                    backoff = ACCEPT_BACKOFF_MIN;
                    let span = tracing::info_span!("conn", %client);
                    self.tasks.spawn(self.serve(stream, client, permit).instrument(span));
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
        let stop = self.stop.clone();
        let accepted_at = Instant::now();
        async move {
            let slot = Arc::new(ConnectionSlot {
                _permit: Some(permit),
                _open: proxy.stats.connection_opened(&settings.name),
            });
            let _ = stream.set_nodelay(true);
            let peer_trusted = trusted.contains(peer.ip());
            let mut client = peer;
            if proxy_protocol {
                match real_ip::read_proxy_header(&mut stream, handshake_timeout).await {
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
            match tls {
                None => serve_connection(current, stream, info(false), left(), stop).await,
                Some(acceptor) => match tokio::time::timeout(left(), acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(current, stream, info(true), left(), stop).await,
                    Ok(Err(error)) => debug!(%error, "TLS handshake failed"),
                    Err(_) => {
                        proxy.stats.count_refusal(RefusalReason::HandshakeTimeout);
                        debug!("TLS handshake timed out");
                    }
                },
            }
        }
    }
}
