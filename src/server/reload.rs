//! Switching a running server to a new configuration without dropping a
//! socket.
//!
//! Everything that can fail is done first: listeners that are new (or moved
//! to a new address) are bound before anything changes, so a reload that
//! cannot bind leaves the server exactly as it was. Then the next
//! [`Proxy`] generation is built from the last (routes and upstreams of the
//! same name keep their tunnel counts and servers' state) and swapped in
//! whole: new connections and new requests on open keep-alive connections
//! use it at once, while open tunnels hold what they were opened with and
//! are untouched. Listeners that are gone stop accepting; kept listeners
//! serve new connections with their new settings (certificates included).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn, Instrument};

use crate::config::{Config, ConfigErrors, LogFormat};
use crate::proxy::Proxy;
use crate::server::{bind_socket, housekeeping, Acceptor, BoundListener, ListenerSettings};

/// Why a reload was not applied; the server runs on as it was.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load or validate: every problem, with its line and key.
    #[error("{0}")]
    Config(ConfigErrors),
    /// A new listener's address cannot be bound (the message names it).
    #[error("{0}")]
    Bind(io::Error),
    #[error("the server is not running")]
    NotRunning,
}

/// What a successful reload switched to.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// Counts configurations from 1, the one the server started with.
    pub generation: u64,
    /// Every listener now accepting, by name, with its bound address.
    pub listeners: Vec<(String, SocketAddr)>,
}

/// Asks a running server to switch to a new configuration.
#[derive(Clone)]
pub struct Reloader {
    sender: mpsc::Sender<Reload>,
}

/// A reload request, answered by the server's run loop.
pub(crate) struct Reload {
    source: Source,
    done: oneshot::Sender<Result<Reloaded, ReloadError>>,
}

enum Source {
    File(PathBuf),
    Loaded(Box<Config>),
}

impl Reloader {
    pub(crate) fn new(sender: mpsc::Sender<Reload>) -> Reloader {
        Reloader { sender }
    }

    /// Re-reads the configuration file and every certificate it names,
    /// validates all of it and applies it. New connections and requests use
    /// it at once; open tunnels and connections are untouched. On any error
    /// nothing changed, and every problem is logged.
    pub async fn reload_file(&self, path: &Path) -> Result<Reloaded, ReloadError> {
        self.ask(Source::File(path.to_owned())).await
    }

    /// Applies an already loaded `config`, as [`Reloader::reload_file`] does.
    pub async fn reload(&self, config: Config) -> Result<Reloaded, ReloadError> {
        self.ask(Source::Loaded(Box::new(config))).await
    }

    async fn ask(&self, source: Source) -> Result<Reloaded, ReloadError> {
        let (done, answer) = oneshot::channel();
        self.sender
            .send(Reload { source, done })
            .await
            .map_err(|_| ReloadError::NotRunning)?;
        answer.await.map_err(|_| ReloadError::NotRunning)?
    }
}

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
    pub(crate) fixed: Fixed,
}

/// Settings read once at start: the log subscriber and the admin listener
/// are set up before serving and are not rebuilt by a reload. A reload
/// that changes them says so instead of ignoring it silently.
pub(crate) struct Fixed {
    admin: Option<SocketAddr>,
    log_format: LogFormat,
    log_filter: String,
}

impl Fixed {
    pub(crate) fn new(config: &Config) -> Fixed {
        Fixed {
            admin: config.admin.as_ref().map(|admin| admin.listen),
            log_format: config.global.log_format,
            log_filter: config.global.log_filter.clone(),
        }
    }

    /// The keys of `config` that differ from these and wait for a restart.
    fn not_applied(&self, config: &Config) -> Vec<&'static str> {
        let next = Fixed::new(config);
        let mut keys = Vec::new();
        if next.admin != self.admin {
            keys.push("admin.listen");
        }
        if next.log_format != self.log_format {
            keys.push("global.log_format");
        }
        if next.log_filter != self.log_filter {
            keys.push("global.log_filter");
        }
        keys
    }
}

pub(crate) struct RunningListener {
    name: String,
    listen: SocketAddr,
    local_addr: SocketAddr,
    settings: Arc<ArcSwap<ListenerSettings>>,
    /// Stops this listener alone (it was removed from the configuration).
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// What a reload does with each listener of the new configuration.
enum Plan {
    /// The listener at this index keeps its socket, under this name.
    Keep(usize, String, ListenerSettings),
    Bind(BoundListener),
}

impl Running {
    pub(crate) fn start_listener(&mut self, listener: BoundListener) {
        let local_addr = listener.socket.local_addr().unwrap_or(listener.listen);
        info!(listener = %listener.name, address = %local_addr, "listening");
        let settings = Arc::new(ArcSwap::from_pointee(listener.settings));
        let stop = self.stop.child_token();
        let acceptor = Acceptor {
            current: self.current.clone(),
            settings: settings.clone(),
            permits: self.permits.clone(),
            stop: stop.clone(),
            tasks: self.tasks.clone(),
        };
        let span = tracing::info_span!("listener", name = %listener.name);
        let task = tokio::spawn(acceptor.run(listener.socket).instrument(span));
        self.listeners.push(RunningListener {
            name: listener.name,
            listen: listener.listen,
            local_addr,
            settings,
            stop,
            task,
        });
    }

    pub(crate) fn start_housekeeping(&mut self) {
        let stop = self.stop.child_token();
        let tasks = housekeeping(&self.current.load_full(), &stop);
        if let Some((previous, _)) = self.housekeeping.replace((stop, tasks)) {
            previous.cancel();
        }
    }

    /// Carries out one reload request and logs how it went.
    pub(crate) async fn answer(&mut self, request: Reload) {
        let result = match request.source {
            Source::Loaded(config) => self.reload(*config).await,
            Source::File(path) => match load(path).await {
                Ok(config) => self.reload(config).await,
                Err(errors) => Err(ReloadError::Config(errors)),
            },
        };
        let proxy = self.current.load_full();
        let metrics = proxy.stats.metrics();
        match &result {
            Ok(reloaded) => {
                metrics.reload_ok();
                metrics.set_generation(reloaded.generation);
                info!(generation = reloaded.generation, "configuration reloaded");
            }
            Err(ReloadError::Config(errors)) => {
                metrics.reload_failed();
                for problem in errors.errors() {
                    error!("reload: {problem}");
                }
                error!(
                    problems = errors.errors().len(),
                    "reload failed: still serving the previous configuration"
                );
            }
            Err(error) => {
                metrics.reload_failed();
                error!(%error, "reload failed: still serving the previous configuration");
            }
        }
        let _ = request.done.send(result);
    }

    /// Applies `config`; on an error nothing has changed.
    async fn reload(&mut self, config: Config) -> Result<Reloaded, ReloadError> {
        for warning in config.warnings() {
            warn!("{warning}");
        }
        for key in self.fixed.not_applied(&config) {
            warn!(
                key,
                "reload: this setting cannot change while running; restart wsgate to apply it"
            );
        }
        let plan = self.plan_listeners(&config).await?;
        let previous = self.current.load_full();
        let next = Proxy::new(&config, self.tasks.clone(), previous.stats.clone(), Some(&previous)).await;
        self.current.store(Arc::new(next));

        let mut old: Vec<Option<RunningListener>> = std::mem::take(&mut self.listeners).into_iter().map(Some).collect();
        for step in plan {
            match step {
                Plan::Keep(index, name, settings) => {
                    // Each index is planned once, so it is still there.
                    if let Some(mut listener) = old.get_mut(index).and_then(Option::take) {
                        listener.settings.store(Arc::new(settings));
                        listener.name = name;
                        self.listeners.push(listener);
                    }
                }
                Plan::Bind(bound) => self.start_listener(bound),
            }
        }
        for removed in old.into_iter().flatten() {
            info!(listener = %removed.name, address = %removed.local_addr, "listener removed: no longer accepting");
            removed.stop.cancel();
        }
        self.resize_connection_cap(config.global.max_connections);
        self.start_housekeeping();
        self.generation += 1;
        Ok(Reloaded {
            generation: self.generation,
            listeners: self.listeners.iter().map(|l| (l.name.clone(), l.local_addr)).collect(),
        })
    }

    /// Which listeners keep their socket and which are bound anew. A
    /// listener keeps its socket when its name and address are unchanged,
    /// or when another listener that is gone had its (fixed) address: a
    /// rename never has to bind an address that is still held.
    async fn plan_listeners(&self, config: &Config) -> Result<Vec<Plan>, ReloadError> {
        let mut claimed = vec![false; self.listeners.len()];
        let mut plan = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let free = |i: usize| !claimed[i];
            // The address as configured before, or as bound (port 0 resolved).
            let holds = |i: usize| {
                let running = &self.listeners[i];
                running.listen == listener.listen || running.local_addr == listener.listen
            };
            let same_name =
                (0..self.listeners.len()).find(|&i| free(i) && self.listeners[i].name == listener.name && holds(i));
            let same_address =
                || (0..self.listeners.len()).find(|&i| free(i) && listener.listen.port() != 0 && holds(i));
            match same_name.or_else(same_address) {
                Some(index) => {
                    claimed[index] = true;
                    plan.push(Plan::Keep(
                        index,
                        listener.name.clone(),
                        ListenerSettings::new(listener),
                    ));
                }
                // On an error the sockets bound so far are dropped with `plan`.
                None => plan.push(Plan::Bind(BoundListener {
                    name: listener.name.clone(),
                    listen: listener.listen,
                    socket: bind_socket(listener).await.map_err(ReloadError::Bind)?,
                    settings: ListenerSettings::new(listener),
                })),
            }
        }
        Ok(plan)
    }

    /// A new `max_connections`: more places at once; fewer as soon as
    /// connections end (open ones are never cut for it).
    fn resize_connection_cap(&mut self, max_connections: usize) {
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
        for listener in self.listeners {
            let _ = listener.task.await;
        }
        if let Some((_, tasks)) = self.housekeeping {
            for task in tasks {
                let _ = task.await;
            }
        }
    }
}

/// Reads and validates the file off the runtime's threads: certificates and
/// keys are read from disk too.
async fn load(path: PathBuf) -> Result<Config, ConfigErrors> {
    let shown = path.clone();
    tokio::task::spawn_blocking(move || Config::load(&path))
        .await
        .unwrap_or_else(|_| {
            Err(ConfigErrors::single(crate::config::ConfigError::file(
                &shown,
                "reading the configuration failed".to_string(),
            )))
        })
}
