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
//! The metrics of routes and upstreams that are gone leave `/metrics` at
//! the first scrape after their last tunnel ended.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::listener::{bind_socket, BoundListener, ListenerSettings};
use super::running::{Running, RunningListener};
use crate::config::{ClusterSettings, Config, ConfigErrors, LogFormat};
use crate::lifecycle::descriptors::{max_connections_warning, NofileLimit};
use crate::proxy::Proxy;

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

/// Settings read once at start: the log subscriber and the admin listener
/// are set up before serving and are not rebuilt by a reload. A reload
/// that changes them says so instead of ignoring it silently.
pub(crate) struct Fixed {
    admin: Option<SocketAddr>,
    log_format: LogFormat,
    log_filter: String,
    cluster: Option<ClusterSettings>,
}

impl Fixed {
    pub(crate) fn new(config: &Config) -> Fixed {
        Fixed {
            admin: config.admin.as_ref().map(|admin| admin.listen),
            log_format: config.global.log_format,
            log_filter: config.global.log_filter.clone(),
            cluster: config.cluster.clone(),
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
        if next.cluster != self.cluster {
            keys.push("cluster");
        }
        keys
    }
}

/// What a reload does with each listener of the new configuration.
enum Plan {
    /// The listener at this index keeps its socket, under this name.
    Keep(usize, String, ListenerSettings),
    Bind(BoundListener),
}

/// Reloading: the steps that decide, on the running parts of
/// [`super::running`].
impl Running {
    /// Carries out one reload request and logs how it went.
    pub(crate) async fn answer(&mut self, request: Reload, fixed: &Fixed) {
        let result = match request.source {
            Source::Loaded(config) => self.reload(*config, fixed).await,
            Source::File(path) => match load(path).await {
                Ok(config) => self.reload(config, fixed).await,
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
    async fn reload(&mut self, config: Config, fixed: &Fixed) -> Result<Reloaded, ReloadError> {
        for warning in config.warnings() {
            warn!("{warning}");
        }
        if let Ok(limit) = NofileLimit::current() {
            if let Some(warning) = max_connections_warning(config.global.max_connections, limit.soft) {
                warn!("{warning}");
            }
        }
        for key in fixed.not_applied(&config) {
            warn!(
                key,
                "reload: this setting cannot change while running; restart wsgate to apply it"
            );
        }
        let plan = self.plan_listeners(&config).await?;
        let previous = self.current.load_full();
        let next = Proxy::new(
            &config,
            self.tasks.clone(),
            previous.stats.clone(),
            Some(&previous),
            previous.cluster().cloned(),
        )
        .await;
        self.current.store(Arc::new(next));
        // Routes and upstreams removed leave /metrics once their tunnels end.
        previous.stats.metrics().configured(
            config.routes.iter().map(|route| route.name.to_string()),
            config.upstreams.iter().map(|upstream| upstream.name.to_string()),
        );

        let mut old: Vec<Option<RunningListener>> = std::mem::take(&mut self.listeners).into_iter().map(Some).collect();
        for step in plan {
            match step {
                Plan::Keep(index, name, settings) => {
                    // Each index is planned once, so it is still there.
                    if let Some(mut listener) = old.get_mut(index).and_then(Option::take) {
                        settings.apply_to(&listener.socket);
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
        previous.stats.metrics().set_max_connections(self.max_connections);
        crate::tunnel::splice_thread::set_threads(config.global.splice_threads);
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
