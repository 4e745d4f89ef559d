//! Listeners, the accept loop and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;

use crate::config::Config;

/// A proxy whose listeners are bound and ready to accept.
pub struct Server {
    config: Config,
}

impl Server {
    /// Binds every listener of `config`.
    pub async fn bind(config: Config) -> std::io::Result<Server> {
        Ok(Server { config })
    }

    /// The bound address of the listener named `name`.
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.config.listener(name).map(|l| l.listen)
    }

    /// Serves until `shutdown` completes, then drains open connections.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        shutdown.await;
    }
}
