//! The server's moving parts while it runs: the acceptor task of each
//! listener, the connection cap they share, the periodic work of the current
//! configuration, and the join at shutdown. A reload ([`super::reload`])
//! changes these; nothing here knows how a reload decides.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, Instrument};

use super::housekeeping::housekeeping;
use super::listener::{Acceptor, BoundListener, ListenerSettings};
use super::workers::Workers;
use crate::proxy::Proxy;

/// A server's moving parts while it runs.
pub(crate) struct Running {
    pub(crate) current: Arc<ArcSwap<Proxy>>,
    pub(crate) listeners: Vec<RunningListener>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) max_connections: usize,
    pub(crate) tasks: TaskTracker,
    /// Cancelled at shutdown: every acceptor and periodic task ends.
    pub(crate) stop: CancellationToken,
    /// The periodic work of the current generation.
    pub(crate) housekeeping: Option<(CancellationToken, Vec<JoinHandle<()>>)>,
    pub(crate) generation: u64,
    pub(crate) workers: Arc<Workers>,
}

pub(crate) struct RunningListener {
    pub(crate) name: String,
    pub(super) listen: SocketAddr,
    pub(super) local_addr: SocketAddr,
    pub(super) settings: Arc<ArcSwap<ListenerSettings>>,
    /// The workers accept on duplicates of it; a binary upgrade sends it to
    /// the new process.
    pub(crate) socket: Arc<std::net::TcpListener>,
    /// Stops this listener alone (it was removed from the configuration).
    pub(super) stop: CancellationToken,
    /// Its acceptor on each worker.
    pub(super) tasks: Vec<JoinHandle<()>>,
}

impl Running {
    pub(crate) fn start_listener(&mut self, listener: BoundListener) {
        let local_addr = listener.socket.local_addr().unwrap_or(listener.listen);
        info!(listener = %listener.name, address = %local_addr, "listening");
        listener.settings.apply_to(&listener.socket);
        let settings = Arc::new(ArcSwap::from_pointee(listener.settings));
        let stop = self.stop.child_token();
        let acceptor = Acceptor {
            current: self.current.clone(),
            settings: settings.clone(),
            permits: self.permits.clone(),
            stop: stop.clone(),
            tasks: self.tasks.clone(),
        };
        let mut tasks = Vec::with_capacity(self.workers.count());
        for worker in self.workers.each() {
            let span = tracing::info_span!("listener", name = %listener.name);
            // Registered with the worker's own reactor, from its thread.
            let socket = listener.socket.try_clone();
            let acceptor = acceptor.clone();
            let accept = async move {
                match socket.and_then(tokio::net::TcpListener::from_std) {
                    Ok(socket) => acceptor.run(socket).await,
                    Err(error) => error!(%error, "this worker cannot accept on the listener"),
                }
            };
            tasks.push(worker.spawn(accept.instrument(span)));
        }
        let socket = Arc::new(listener.socket);
        self.listeners.push(RunningListener {
            name: listener.name,
            listen: listener.listen,
            local_addr,
            settings,
            socket,
            stop,
            tasks,
        });
    }

    pub(crate) fn start_housekeeping(&mut self) {
        let stop = self.stop.child_token();
        let tasks = housekeeping(&self.current.load_full(), &stop);
        if let Some((previous, _)) = self.housekeeping.replace((stop, tasks)) {
            previous.cancel();
        }
    }

    /// A new `max_connections`: more places at once; fewer as soon as
    /// connections end (open ones are never cut for it).
    pub(super) fn resize_connection_cap(&mut self, max_connections: usize) {
        let wanted = max_connections.min(Semaphore::MAX_PERMITS);
        if wanted > self.max_connections {
            self.permits.add_permits(wanted - self.max_connections);
        } else if wanted < self.max_connections {
            let fewer = self.max_connections - wanted;
            let rest = fewer - self.permits.forget_permits(fewer);
            if rest > 0 {
                let (permits, stop) = (self.permits.clone(), self.stop.clone());
                let rest = u32::try_from(rest).unwrap_or(u32::MAX);
                tokio::spawn(async move {
                    tokio::select! {
                        taken = permits.acquire_many_owned(rest) => {
                            if let Ok(taken) = taken {
                                taken.forget();
                            }
                        }
                        () = stop.cancelled() => {}
                    }
                });
            }
        }
        self.max_connections = wanted;
    }

    /// Waits for every acceptor and periodic task to end (after `stop`).
    pub(crate) async fn join(self) {
        for task in self.listeners.into_iter().flat_map(|listener| listener.tasks) {
            let _ = task.await;
        }
        if let Some((_, tasks)) = self.housekeeping {
            for task in tasks {
                let _ = task.await;
            }
        }
    }
}
