//! Shared helpers for the integration tests: test certificates, a real
//! HTTP/WebSocket backend, a running proxy and clients (tungstenite, hyper and
//! raw bytes over TCP or TLS). Every wait is bounded; all traffic stays on
//! 127.0.0.1.
#![allow(dead_code)]

mod backend;
mod certs;
mod client;
mod metrics;
mod raw;
mod wire;

pub mod hostile;

pub mod hostile_peers;

pub mod http2;

pub mod dns;
pub mod netns;
pub mod redis_server;
pub mod stream_pattern;

// Each test file uses a different part of these.
#[allow(unused_imports)]
pub use {backend::*, certs::*, client::*, metrics::*, raw::*, wire::*};

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wsgate::config::Config;
use wsgate::server::Server;
use wsgate::tunnel::drain::DrainClose;

/// The bound on every single wait in these tests.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test with `what` if it takes longer than [`TIMEOUT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    within_for(TIMEOUT, what, fut).await
}

pub async fn within_for<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// TOML for one `[[listener.tls.certificates]]` entry.
pub fn tls_entry(cert: &Path, key: &Path) -> String {
    format!(
        "[[listener.tls.certificates]]\ncert = '{}'\nkey = '{}'\n",
        cert.display(),
        key.display()
    )
}

/// `[global]` and the listeners: `plain`, and `tls` when `certs` is given
/// (with the localhost certificate).
pub fn listeners(certs: Option<&TestCerts>) -> String {
    let mut toml = String::from(
        "[global]\nshutdown_timeout = \"2s\"\n\n[[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n",
    );
    if let Some(certs) = certs {
        toml += "[[listener]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\n";
        toml += &tls_entry(&certs.server_cert(), &certs.server_key());
        toml += "\n";
    }
    toml
}

/// A proxy config: listener `plain` (and `tls` when `certs` is given, with the
/// localhost certificate), one route for any host, one upstream at `backend`.
pub fn config(backend: SocketAddr, certs: Option<&TestCerts>) -> String {
    let mut toml = listeners(certs);
    toml += &route_and_upstream(backend, "");
    toml
}

/// A route for any host to upstream `backends` at `backend`, with extra upstream keys.
pub fn route_and_upstream(backend: SocketAddr, upstream_extra: &str) -> String {
    format!(
        "[[route]]\nname = \"all\"\nupstream = \"backends\"\n\n[[upstream]]\nname = \"backends\"\nservers = [{{ address = \"{backend}\" }}]\n{upstream_extra}\n"
    )
}

/// An address on 127.0.0.1 that refuses connections (bound, then released).
pub async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

// ---------------------------------------------------------------- proxy

/// A running proxy; `stop()` shuts it down and surfaces a panic of its task.
pub struct ProxyHandle {
    addrs: Vec<(String, SocketAddr)>,
    shutdown: Option<oneshot::Sender<DrainClose>>,
    task: Option<JoinHandle<()>>,
}

/// Validates `toml` (nothing written to disk), binds and runs the proxy.
pub async fn start_proxy(toml: &str) -> ProxyHandle {
    let (server, names) = bind_proxy(toml).await;
    run_proxy(server, names)
}

/// Validates `toml` and binds the proxy without running it, so a test can
/// read handles off the `Server` first; returns it with its listener names.
/// [`run_proxy`] runs it.
pub async fn bind_proxy(toml: &str) -> (Server, Vec<String>) {
    let path = std::env::temp_dir().join("wsgate-tests").join("wsgate.toml");
    let config =
        Config::from_toml(toml, &path).unwrap_or_else(|e| panic!("test config rejected:\n{e}\n--- config:\n{toml}"));
    let names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
    let server = within("Server::bind", Server::bind(config))
        .await
        .expect("Server::bind");
    (server, names)
}

/// Runs a server from [`bind_proxy`] with listeners `names`.
pub fn run_proxy(server: Server, names: Vec<String>) -> ProxyHandle {
    let addrs = names
        .into_iter()
        .map(|name| {
            let addr = server
                .local_addr(&name)
                .unwrap_or_else(|| panic!("no local_addr for listener {name}"));
            assert_ne!(
                addr.port(),
                0,
                "local_addr({name}) must be the bound address, not port 0"
            );
            (name, addr)
        })
        .collect();
    let (tx, rx) = oneshot::channel::<DrainClose>();
    let task = tokio::spawn(server.run(async move { rx.await.unwrap_or(DrainClose::SHUTDOWN) }));
    ProxyHandle {
        addrs,
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl ProxyHandle {
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(name, _)| name == listener)
            .unwrap_or_else(|| panic!("no listener named {listener}"))
            .1
    }

    /// Signals shutdown and waits for `run` to return; a panic inside it fails the test.
    pub async fn stop(self) {
        self.stop_with(DrainClose::SHUTDOWN).await;
    }

    /// Shuts down telling tunnels `why` (1001 going away, 1012 restart).
    pub async fn stop_with(mut self, why: DrainClose) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(why);
        }
        if let Some(task) = self.task.take() {
            match within_for(Duration::from_secs(15), "proxy run() returning after shutdown", task).await {
                Ok(()) => {}
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("proxy task failed: {e}"),
            }
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(DrainClose::SHUTDOWN);
        }
        if let Some(task) = self.task.take() {
            if task.is_finished() && !std::thread::panicking() {
                if let Some(Err(e)) = task.now_or_never() {
                    if e.is_panic() {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
            }
        }
    }
}

/// Polls `get` until it returns `want`, for at most [`TIMEOUT`]: for
/// counters that settle after a connection ends, where there is no event
/// to wait on.
pub async fn wait_until<T: PartialEq + std::fmt::Debug>(what: &str, want: T, mut get: impl FnMut() -> T) {
    poll(TIMEOUT, || {
        let now = get();
        if now == want {
            Ok(())
        } else {
            Err(format!("{what}: {now:?} != {want:?}"))
        }
    })
    .await
}

/// Polls `done` until it holds, for at most `limit`: for state with no
/// event to wait on (open counts, health).
pub async fn poll_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    poll(limit, || {
        if done() {
            Ok(())
        } else {
            Err(format!("not within {limit:?}: {what}"))
        }
    })
    .await
}

/// Calls `check` until it is `Ok`, 1 ms apart at first and at most 16 ms
/// later on; fails the test with its last `Err` once `limit` has passed.
async fn poll(limit: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = std::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        match check() {
            Ok(()) => return,
            Err(why) => assert!(std::time::Instant::now() < deadline, "{why}"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(16));
    }
}
