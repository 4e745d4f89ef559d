//! The server: binds the listeners, runs them (reloads while it serves,
//! graceful shutdown at its end), and serves the admin listener beside them.
//!
//! `listener` binds a socket and accepts on it; `running` holds what a
//! running server is made of; [`reload`] switches it to a new configuration;
//! `housekeeping` is each configuration's periodic work; [`admin`] serves
//! metrics, health and readiness.

pub mod admin;
pub mod handover;
mod housekeeping;
mod listener;
pub mod reload;
mod running;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::lifecycle::{memory, shutdown};
use crate::proxy::Proxy;
use crate::telemetry::stats::Stats;
use crate::tunnel::drain::DrainClose;
use admin::AdminListener;
use listener::{bind_socket, BoundListener, ListenerSettings};
use reload::{Fixed, Reload, Reloader};
use running::Running;

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
    /// Binary upgrades asked for (SIGUSR1).
    upgrades: mpsc::Receiver<()>,
    upgrade_sender: mpsc::Sender<()>,
    /// Metrics, health and readiness (`[admin]`), when configured.
    admin: Option<AdminListener>,
    /// What a reload cannot change.
    fixed: Fixed,
}

impl Server {
    /// Binds every listener of `config`; an address that cannot be bound is
    /// an error naming the listener.
    pub async fn bind(config: Config) -> io::Result<Server> {
        Server::bind_with(config, crate::lifecycle::listen_fds::Activated::from_env(), None).await
    }

    /// Binds like [`Server::bind`], serving the listeners `passed` names
    /// (and the admin listener on `admin`) on those sockets: systemd's
    /// (socket activation) or the old process's at a binary upgrade.
    pub async fn bind_with(
        config: Config,
        passed: crate::lifecycle::listen_fds::Activated,
        admin: Option<std::net::TcpListener>,
    ) -> io::Result<Server> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        // Sockets passed serve their listeners instead of binding; the
        // rest are bound here.
        let mut passed = passed.for_listeners(config.listeners.iter().map(|l| l.name.as_str()));
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
        let admin = match (&config.admin, admin) {
            (Some(_), Some(socket)) => Some(AdminListener::from_socket(TcpListener::from_std(socket)?)),
            (Some(admin), None) => Some(AdminListener::bind(admin.listen).await?),
            (None, _) => None,
        };
        let tasks = TaskTracker::new();
        let stats = Stats::default();
        let cluster = match &config.cluster {
            Some(settings) => Some(
                crate::cluster::Cluster::start(settings, stats.metrics().clone())
                    .map_err(|e| io::Error::other(format!("[cluster]: {e}")))?,
            ),
            None => None,
        };
        let proxy = Proxy::new(&config, tasks.clone(), stats, None, cluster).await;
        let max_connections = config.global.max_connections.min(Semaphore::MAX_PERMITS);
        proxy.stats.metrics().set_max_connections(max_connections);
        crate::tunnel::splice_thread::set_threads(config.global.splice_threads);
        let (reload_sender, reloads) = mpsc::channel(1);
        let (upgrade_sender, upgrades) = mpsc::channel(1);
        Ok(Server {
            current: Arc::new(ArcSwap::from_pointee(proxy)),
            listeners,
            connection_permits: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            tasks,
            reloads,
            reload_sender,
            upgrades,
            upgrade_sender,
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

    /// A handle that asks the running server for a binary upgrade
    /// ([`handover`]); a request while one is under way is dropped.
    pub fn upgrader(&self) -> mpsc::Sender<()> {
        self.upgrade_sender.clone()
    }

    /// Tells the process this one takes over from that its listeners are
    /// served, then runs the tunnels it hands over ([`handover`]).
    pub fn take_tunnels_from(&self, channel: crate::lifecycle::handover::Channel) -> io::Result<()> {
        handover::serve_handed_over(channel, self.current.clone(), self.connection_permits.clone())
    }

    /// Serves until `shutdown` completes, switching configurations when a
    /// [`Reloader`] asks; then stops accepting, lets requests in flight
    /// finish, asks every tunnel to end with the close code `shutdown` gave,
    /// and waits up to `shutdown_timeout` for connections and tunnels to end
    /// before returning.
    pub async fn run(self, shutdown: impl Future<Output = DrainClose> + Send + 'static) {
        let Server {
            current,
            listeners,
            connection_permits,
            max_connections,
            tasks,
            mut reloads,
            reload_sender,
            mut upgrades,
            upgrade_sender,
            admin,
            fixed,
        } = self;
        // Only the handles given out keep the channels open.
        drop((reload_sender, upgrade_sender));
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
        let admin_socket = admin.as_ref().map(AdminListener::socket);
        let admin =
            admin.map(|admin| tokio::spawn(admin.serve(running.current.clone(), stop.clone(), admin_done.clone())));
        tokio::pin!(shutdown);
        // After a binary upgrade went through, the process that took over
        // serves everything new: this one drains what stayed, and exits.
        let mut handed_over = None;
        let why = loop {
            tokio::select! {
                why = &mut shutdown => break why,
                Some(reload) = reloads.recv() => running.answer(reload, &fixed).await,
                Some(()) = upgrades.recv() => match handover::give(&mut running, admin_socket.clone()).await {
                    Ok(given) => {
                        admin_done.cancel();
                        handed_over = Some(given);
                        break DrainClose::RESTART;
                    }
                    Err(why) => error!("upgrade failed, this process goes on serving: {why}"),
                },
            }
        };
        info!(close_code = why.code, "shutting down: no new connections");
        stop.cancel();
        let proxy = running.current.load_full();
        // Spread over the first half of the window: the close handshakes
        // and the plain tunnels' own ends get the rest.
        proxy.drain.start(why, proxy.shutdown_timeout() / 2);
        running.join().await;
        tasks.close();
        let connections = proxy.stats.open_connections();
        if connections > 0 {
            shutdown::log_waiting(connections, proxy.stats.open_tunnels(), proxy.shutdown_timeout());
        }
        if tokio::time::timeout(proxy.shutdown_timeout(), tasks.wait())
            .await
            .is_err()
        {
            warn!(
                open = tasks.len(),
                "shutdown timeout reached with connections still open"
            );
        }
        // The fleet gets this instance's places back now, not when its lease
        // ends (after an upgrade under a shared instance name, the new
        // process holds them).
        if let Some(cluster) = proxy.cluster().filter(|cluster| cluster.leaves_at_exit()) {
            cluster.leave().await;
        }
        if let Some(given) = handed_over {
            info!(
                moved = given.moved,
                stayed = given.stayed,
                successor = given.successor,
                "upgraded: the new process serves"
            );
        }
        admin_done.cancel();
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        info!("stopped");
    }
}
