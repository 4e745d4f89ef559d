//! Active health checks: each upstream with a `health_check` probes its
//! servers on a timer and marks them up or down.
//!
//! Passive health (a failed connect backs a server off, see
//! [`Backend::record_connect_failure`]) only notices a dead server when a
//! client is sent to it; active checks find it first, and find it back once
//! it recovers. Results go through [`Backend::record_check`], whose rise/fall
//! thresholds are a hysteresis: one lost probe does not take a server out and
//! one lucky probe does not bring a flapping server back.
//!
//! Three kinds of probe, from cheapest to most faithful:
//! - `tcp`: the port accepts a connection;
//! - `http`: `GET path` answers 2xx;
//! - `websocket`: a real opening handshake on `path` completes (101 with the
//!   right `Sec-WebSocket-Accept`), then a close 1000. This catches backends
//!   whose HTTP side still answers but whose WebSocket layer is broken, which
//!   is exactly the traffic wsgate sends them.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{HealthCheck, HealthCheckKind, TcpLiveness};
use crate::tls::UpstreamTls;
use crate::upstream::balance::{Backend, HealthChange};
use crate::upstream::connect::{connect_to, BackendStream, ConnectError};

/// The `User-Agent` of `http` and `websocket` checks, so backends can tell
/// probes from clients in their logs.
const USER_AGENT_VALUE: &str = "wsgate-health-check";

/// Body bytes of an `http` check's answer read before the connection is
/// dropped: the status decides, and a health endpoint that streams (or is
/// simply large) must not hold the check until its timeout.
const MAX_DRAINED_BODY: usize = 64 * 1024;

/// Time an `http` check's answer body gets to arrive once the status is
/// known; past it the connection is dropped all the same.
const MAX_DRAIN_WAIT: Duration = Duration::from_millis(250);

/// Jitter added to each interval, as a fraction of it.
const JITTER_FRACTION: f64 = 0.1;

/// Why one check failed, for the log line of a server going down.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailure {
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    #[error("no answer within the check timeout")]
    Timeout,
    /// `http`: not 2xx; `websocket`: not 101.
    #[error("answered with status {0}")]
    Status(u16),
    /// The HTTP exchange broke (connection closed or reset, malformed answer).
    #[error("HTTP exchange failed: {0}")]
    Http(#[source] hyper::Error),
    /// The WebSocket handshake failed other than by status: a wrong
    /// `Sec-WebSocket-Accept`, a missing `Upgrade`, a broken connection.
    #[error("WebSocket handshake failed: {0}")]
    Handshake(String),
    /// The TLS handshake failed (certificate not trusted, wrong name, …).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The check's request cannot be built from the server name and path.
    #[error("invalid check request: {0}")]
    InvalidRequest(String),
    /// This process was out of descriptors or socket memory: no verdict on
    /// the server.
    #[error("out of file descriptors or socket memory: {0}")]
    OutOfResources(#[source] io::Error),
}

impl From<ConnectError> for CheckFailure {
    fn from(error: ConnectError) -> Self {
        match error {
            ConnectError::Refused(error) => CheckFailure::Connect(error),
            ConnectError::Timeout(_) => CheckFailure::Timeout,
            ConnectError::Tls(reason) => CheckFailure::Tls(reason),
            ConnectError::OutOfResources(error) => CheckFailure::OutOfResources(error),
        }
    }
}

/// Runs an upstream's active health checks until `stop` is cancelled: every
/// `interval` (plus up to 10% random jitter, so many proxies do not check in
/// step), each backend returned by `backends()` at that moment is checked
/// concurrently, each check bounded by `timeout`; results go to
/// [`Backend::record_check`]`(ok, rise, fall)`; a change is logged (`warn` for
/// down with the reason of the last failure, `info` for up) with fields
/// upstream and server (name and addr).
///
/// `backends` is called again for every round, so servers added or removed by
/// re-resolution or a reload are picked up without restarting the checks.
/// The first round runs at once: a server that is down at start is taken out
/// after `fall` rounds rather than `fall + 1`.
///
/// A round ends only when all its checks have (each within `timeout`), so a
/// server never has more than one check in flight: one whose packets are
/// dropped costs one hanging connect per round, not one per `interval`
/// piling up.
pub async fn run(
    upstream: Arc<str>,
    check: HealthCheck,
    tls: Option<UpstreamTls>,
    backends: impl Fn() -> Arc<Vec<Arc<Backend>>> + Send + Sync + 'static,
    stop: CancellationToken,
) {
    // Validation rejects a zero interval; this only keeps a hand-built one
    // from spinning.
    let interval = check.interval.max(Duration::from_millis(1));
    debug!(%upstream, kind = ?check.kind, ?interval, timeout = ?check.timeout, "health checks started");
    loop {
        let round_start = Instant::now();
        let servers = backends();
        let round = futures_util::future::join_all(
            servers
                .iter()
                .map(|backend| check_and_record(&upstream, &check, tls.as_ref(), backend)),
        );
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = round => {}
        }
        // Start to start: a slow round (up to `timeout`) eats into the pause
        // rather than stretching the period.
        let next = round_start + interval + jitter(interval);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
    }
    debug!(%upstream, "health checks stopped");
}

/// A random pause in `[0, interval / 10]`.
fn jitter(interval: Duration) -> Duration {
    interval.mul_f64(rand::rng().random_range(0.0..=JITTER_FRACTION))
}

/// Checks one backend, records the result and logs a change of state.
async fn check_and_record(upstream: &str, check: &HealthCheck, tls: Option<&UpstreamTls>, backend: &Backend) {
    let result = check_once(check, tls, backend).await;
    if let Err(failure) = &result {
        debug!(upstream, server = %backend.name, addr = %backend.addr, reason = %failure, "health check failed");
        if let CheckFailure::OutOfResources(_) = failure {
            // Our descriptors ran out, not the server: no verdict.
            return;
        }
    }
    match (backend.record_check(result.is_ok(), check.rise, check.fall), &result) {
        (Some(HealthChange::Down), Err(failure)) => warn!(
            upstream,
            server = %backend.name,
            addr = %backend.addr,
            reason = %failure,
            fall = check.fall,
            "server is down: health checks failed"
        ),
        (Some(HealthChange::Up), _) => info!(
            upstream,
            server = %backend.name,
            addr = %backend.addr,
            rise = check.rise,
            "server is up: health checks pass again"
        ),
        // `record_check` only turns a server down on a failure.
        (Some(HealthChange::Down), Ok(())) | (None, _) => {}
    }
}

/// One check of one backend: Ok or the reason it failed (for logs and tests).
///
/// The whole check, connect included, is bounded by `check.timeout`. Once the
/// verdict is known, the remaining time is only used for politeness (reading
/// a little of an HTTP body, sending a WebSocket close) and running out of it
/// there does not turn a success into a failure.
/// With `tls`, `http` and `websocket` checks speak TLS as the upstream does
/// (the handshake, certificate included, is part of the check); `tcp`
/// checks only the TCP connection.
pub async fn check_once(check: &HealthCheck, tls: Option<&UpstreamTls>, backend: &Backend) -> Result<(), CheckFailure> {
    let deadline = Instant::now() + check.timeout;
    match check.kind {
        HealthCheckKind::Tcp => connect_maybe_tls(backend, None, deadline).await.map(drop),
        HealthCheckKind::Http => {
            check_http(
                check,
                backend,
                connect_maybe_tls(backend, tls, deadline).await?,
                deadline,
            )
            .await
        }
        HealthCheckKind::Websocket => {
            check_websocket(
                check,
                backend,
                connect_maybe_tls(backend, tls, deadline).await?,
                deadline,
            )
            .await
        }
    }
}

/// A fresh connection to the backend, with TLS when the upstream uses it
/// (the proxy's one connect, [`connect_to`]), within the check's deadline.
/// No keepalive: a check lives no longer than its timeout, which finds a
/// server that vanished (a connect to a blackholed address hangs until it).
async fn connect_maybe_tls(
    backend: &Backend,
    tls: Option<&UpstreamTls>,
    deadline: Instant,
) -> Result<BackendStream, CheckFailure> {
    let left = deadline.saturating_duration_since(Instant::now());
    before(deadline, async {
        connect_to(backend, tls, left, &TcpLiveness::OFF)
            .await
            .map_err(CheckFailure::from)
    })
    .await
}

/// `fut` bounded by `deadline`, running out of time being [`CheckFailure::Timeout`].
async fn before<T>(deadline: Instant, fut: impl Future<Output = Result<T, CheckFailure>>) -> Result<T, CheckFailure> {
    timeout_at(deadline, fut).await.unwrap_or(Err(CheckFailure::Timeout))
}

/// `GET path` with `Connection: close` on a connection of its own; 2xx passes.
async fn check_http(
    check: &HealthCheck,
    backend: &Backend,
    stream: BackendStream,
    deadline: Instant,
) -> Result<(), CheckFailure> {
    let request = Request::get(check.path.as_str())
        .header(HOST, &*backend.name)
        .header(USER_AGENT, USER_AGENT_VALUE)
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| CheckFailure::InvalidRequest(e.to_string()))?;
    let (mut sender, connection) = before(deadline, async {
        hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(CheckFailure::Http)
    })
    .await?;

    let exchange = async {
        let response = before(deadline, async {
            sender.send_request(request).await.map_err(CheckFailure::Http)
        })
        .await?;
        let status = response.status();
        // A little of the body, so a small answer is read to its end and the
        // connection closes cleanly; the verdict is already known.
        let drain_until = deadline.min(Instant::now() + MAX_DRAIN_WAIT);
        let _ = timeout_at(drain_until, drain(response.into_body())).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(CheckFailure::Status(status.as_u16()))
        }
    };
    // The connection does the I/O and must be polled alongside the exchange,
    // not spawned: a spawned one would outlive a timed-out check. When it
    // ends first, the exchange fails (or ends) right after.
    let mut exchange = pin!(exchange);
    let mut connection = pin!(connection);
    let mut connection_done = false;
    loop {
        tokio::select! {
            result = &mut exchange => return result,
            _ = &mut connection, if !connection_done => connection_done = true,
        }
    }
}

/// Reads and discards up to [`MAX_DRAINED_BODY`] bytes of a body.
async fn drain(mut body: hyper::body::Incoming) {
    let mut read = 0;
    while read < MAX_DRAINED_BODY {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(_)) | None => break,
        }
    }
}

/// A real opening handshake on `ws://{name}{path}`, validated by tungstenite
/// (101, `Upgrade`, `Connection`, `Sec-WebSocket-Accept`), then a close 1000.
async fn check_websocket(
    check: &HealthCheck,
    backend: &Backend,
    stream: BackendStream,
    deadline: Instant,
) -> Result<(), CheckFailure> {
    let url = format!("ws://{}{}", backend.name, check.path);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| CheckFailure::InvalidRequest(format!("{url}: {e}")))?;
    request
        .headers_mut()
        .insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    let (mut socket, _response) = before(deadline, async {
        tokio_tungstenite::client_async(request, stream)
            .await
            .map_err(websocket_failure)
    })
    .await?;
    // Say goodbye properly so the backend does not log an abnormal closure
    // for every probe; whether it answers does not matter.
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "health check".into(),
    };
    let _ = timeout_at(deadline, socket.close(Some(close))).await;
    Ok(())
}

fn websocket_failure(error: WsError) -> CheckFailure {
    match error {
        WsError::Http(response) => CheckFailure::Status(response.status().as_u16()),
        other => CheckFailure::Handshake(other.to_string()),
    }
}
