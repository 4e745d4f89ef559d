//! The admin listener (`[admin] listen`): a small HTTP/1.1 server for the
//! operator's tools, apart from the proxy's listeners so it is never exposed
//! with them.
//!
//! - `GET /metrics`: every metric, Prometheus text format.
//! - `GET /healthz`: 200 while the process serves (liveness).
//! - `GET /readyz`: 200 when wsgate can take traffic: its listeners accept
//!   and every upstream has a healthy server (and, with `[cluster]` and
//!   `on_unavailable = "deny"`, the shared store answers); else 503 and what is missing,
//!   so a load balancer sends clients elsewhere instead of into 503s.
//!
//! Anything else is 404.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::OnUnavailable;
use crate::proxy::Proxy;
use crate::telemetry::metrics;
use crate::upstream::balance::Pool;

/// Time a scraper has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The admin listener's socket, bound with the proxy's listeners so a busy
/// address fails the start the same way.
pub struct AdminListener {
    /// Shared: a binary upgrade sends it to the new process.
    socket: Arc<TcpListener>,
}

impl AdminListener {
    /// Binds `addr`; the error names the admin listener.
    pub async fn bind(addr: SocketAddr) -> io::Result<AdminListener> {
        let socket = TcpListener::bind(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("admin listener: cannot bind {addr}: {e}")))?;
        Ok(AdminListener {
            socket: Arc::new(socket),
        })
    }

    /// The admin listener on a socket the process this one took over from
    /// was serving it on.
    pub fn from_socket(socket: TcpListener) -> AdminListener {
        AdminListener {
            socket: Arc::new(socket),
        }
    }

    pub(crate) fn socket(&self) -> Arc<TcpListener> {
        self.socket.clone()
    }

    /// The bound address (the real port when the configuration asked for port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    /// Serves until `done`, reading the configuration generation in use
    /// from `current` at each request. Once `stopping` is cancelled
    /// (shutdown began: the listeners no longer accept), `/readyz` answers
    /// 503 while `/metrics` goes on showing the tunnels drain.
    pub(crate) async fn serve(
        self,
        current: Arc<ArcSwap<Proxy>>,
        stopping: CancellationToken,
        done: CancellationToken,
    ) {
        if let Some(address) = self.local_addr() {
            info!(%address, "admin listener: /metrics, /healthz, /readyz");
        }
        // Owned here: when serving ends, open admin connections end with it.
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = self.socket.accept() => accepted,
                () = done.cancelled() => return,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(%error, "admin listener: accept failed; retrying in 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (current, stopping) = (current.clone(), stopping.clone());
            connections.spawn(async move {
                let service = service_fn(move |request| {
                    let answer = answer(&request, &current.load(), &stopping);
                    async move { Ok::<_, Infallible>(answer) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(error) = served {
                    debug!(%error, "admin connection ended with an error");
                }
            });
        }
    }
}

fn answer(request: &Request<Incoming>, proxy: &Proxy, stopping: &CancellationToken) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::NOT_FOUND, "not found\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(proxy.stats.metrics().encode(&pools(proxy)))));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE));
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match not_ready(proxy, stopping) {
            None => text(StatusCode::OK, "ready\n".into()),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// What keeps wsgate from taking traffic, one line each; `None` when ready.
fn not_ready(proxy: &Proxy, stopping: &CancellationToken) -> Option<String> {
    let mut why = String::new();
    if stopping.is_cancelled() {
        why.push_str("not ready: shutting down, the listeners no longer accept\n");
    }
    if let Some(cluster) = proxy.cluster() {
        if cluster.on_unavailable() == OnUnavailable::Deny && !cluster.is_reachable() {
            why.push_str(
                "not ready: the shared limits' store ([cluster]) does not answer and on_unavailable is \"deny\"\n",
            );
        }
    }
    for pool in pools(proxy) {
        let backends = pool.backends();
        if !backends.iter().any(|backend| backend.is_up()) {
            why.push_str(&format!(
                "not ready: upstream {:?} has no healthy server (0 of {} addresses up)\n",
                &*pool.name,
                backends.len()
            ));
        }
    }
    (!why.is_empty()).then_some(why)
}

/// The upstreams of the configuration in use.
fn pools(proxy: &Proxy) -> Vec<Arc<Pool>> {
    proxy.upstreams().iter().map(|upstream| upstream.pool.clone()).collect()
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
