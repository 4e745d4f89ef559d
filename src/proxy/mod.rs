//! Serving one client connection with hyper, and dispatching each request:
//! a WebSocket upgrade goes to a tunnel, anything else is forwarded as HTTP.

pub mod framing;
pub mod headers;
pub mod real_ip;
pub mod route;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tracing::{debug, info, Instrument, Span};

use crate::admission::caps::TunnelPermit;
use crate::admission::rate_limit::{ClientKey, KeyedLimiter};
use crate::admission::refusal_log::RefusalLog;
use crate::admission::{RouteGate, SubprotocolOffer};
use crate::body::{self, ProxyBody};
use crate::config::Balance;
use crate::config::{Config, Global, Route};
use crate::error::{outcome, ProxyError};
use crate::proxy::framing::FramingGuard;
use crate::proxy::route::RouteTable;
use crate::refusal::RefusalReason;
use crate::telemetry::access::{LoggedBody, RequestLine};
use crate::telemetry::stats::{OpenConnection, Stats};
use crate::tunnel;
use crate::tunnel::drain::Drain;
use crate::tunnel::inspect::{self, Settings};
use crate::upstream::balance::{hash_key, BackendGuard};
use crate::upstream::handshake::Answered;
use crate::upstream::{Handshake, UpstreamPool};
use crate::ws::handshake;
use headers::Forwarded;
use real_ip::TrustedProxies;

/// Where a connection came from.
#[derive(Clone)]
pub struct ConnectionInfo {
    /// The listener that accepted it, by name.
    pub listener: Arc<str>,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client: the peer, or the address in a trusted PROXY protocol header.
    pub client: SocketAddr,
    /// When the peer is a trusted proxy that reports clients in forwarding
    /// headers: the ranges to walk those headers with, per request.
    pub forwarded_by: Option<Arc<TrustedProxies>>,
    pub tls: bool,
    /// The connection's place under `max_connections`; a tunnel holds a
    /// clone, so the place is free only when the connection and its tunnel
    /// have both ended.
    pub slot: Arc<ConnectionSlot>,
}

/// One request's client, as admission and the forwarding headers see it.
struct RequestContext<'a> {
    info: &'a ConnectionInfo,
    client: std::net::IpAddr,
    key: ClientKey,
    via_trusted: Option<std::net::IpAddr>,
}

/// Held for as long as a client connection (or the tunnel it became) is open.
pub struct ConnectionSlot {
    pub(crate) _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    pub(crate) _open: OpenConnection,
}

/// Serves HTTP/1.1 on `io` until the client leaves or `shutdown` fires,
/// after which the request in flight is finished and the connection closed.
/// Each request is served by the configuration current when it arrives, so
/// a keep-alive connection follows a reload.
pub async fn serve_connection<IO>(
    current: Arc<ArcSwap<Proxy>>,
    io: IO,
    info: ConnectionInfo,
    header_timeout: std::time::Duration,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let first = current.load_full();
    let service = service_fn(move |request| {
        let proxy = current.load_full();
        let info = info.clone();
        let span = tracing::info_span!(
            "request",
            route = tracing::field::Empty,
            upstream = tracing::field::Empty,
            server = tracing::field::Empty,
            attempts = tracing::field::Empty
        );
        async move { Ok::<_, Infallible>(proxy.handle(request, &info).instrument(span).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(first.global.max_request_header_size)
        // A client's end of stream while its request is answered does not
        // cut the answer short: a client may half-close after its request,
        // and the framing guard ends the stream behind the last request it
        // lets through, to answer a refused one after the others (as nginx
        // answers pipelined requests one by one).
        .half_close(true)
        .serve_connection(
            TokioIo::new(FramingGuard::new(io, first.global.max_request_header_size)),
            service,
        )
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    match result {
        Err(error) if error.is_timeout() => {
            first.stats.count_refusal(RefusalReason::HandshakeTimeout);
            debug!("request headers not complete within the handshake timeout");
        }
        Err(error) => debug!(%error, "client connection ended with an error"),
        Ok(()) => {}
    }
}

/// What every request needs: routes, upstream pools, settings, and the
/// tracker that lets shutdown wait for tunnels.
///
/// One `Proxy` per configuration generation: a reload builds the next one
/// with [`Proxy::new`] from the last, and the server swaps it in whole, so a
/// request sees one configuration from start to end. What outlives
/// generations (open tunnels, shutdown, counters) is shared between them.
pub struct Proxy {
    global: Global,
    routes: RouteTable,
    /// Admission state per route, by the route's index.
    gates: Vec<RouteGate>,
    upstreams: Vec<UpstreamPool>,
    tunnels: TaskTracker,
    /// Cancelled when shutdown begins: keep-alive connections then close
    /// after their request in flight.
    pub(crate) shutdown: CancellationToken,
    /// Asks open tunnels to end gracefully (inspected ones with a close code).
    pub(crate) drain: Arc<Drain>,
    pub(crate) stats: Stats,
    pub(crate) refusal_log: Arc<RefusalLog>,
}

impl Proxy {
    /// The proxy for `config`. On a reload, `previous` is the generation it
    /// replaces: routes and upstreams of the same name keep their tunnel
    /// counts and servers' state, and the shared parts carry over.
    pub async fn new(config: &Config, tunnels: TaskTracker, stats: Stats, previous: Option<&Proxy>) -> Proxy {
        let previous_gate = |name: &str| {
            let previous = previous?;
            let index = previous.routes.iter().position(|r| &*r.name == name)?;
            previous.gates.get(index)
        };
        let gates: Vec<RouteGate> = config
            .routes
            .iter()
            .map(|r| RouteGate::new(&r.admission, previous_gate(&r.name)))
            .collect();
        for (route, gate) in config.routes.iter().zip(&gates) {
            stats.register_route(&route.name, gate.caps.clone());
        }
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for upstream in &config.upstreams {
            let last = previous.and_then(|p| p.upstreams.iter().find(|u| u.config.name == upstream.name));
            let upstream = UpstreamPool::new(upstream.clone(), last).await;
            stats.register_upstream(&upstream.config.name, upstream.pool.clone());
            upstreams.push(upstream);
        }
        Proxy {
            global: config.global.clone(),
            routes: RouteTable::new(config.routes.clone()),
            gates,
            upstreams,
            tunnels,
            shutdown: previous.map_or_else(CancellationToken::new, |p| p.shutdown.clone()),
            drain: previous.map_or_else(Default::default, |p| p.drain.clone()),
            stats,
            refusal_log: previous.map_or_else(Default::default, |p| p.refusal_log.clone()),
        }
    }

    /// `shutdown_timeout` of this generation.
    pub(crate) fn shutdown_timeout(&self) -> std::time::Duration {
        self.global.shutdown_timeout
    }

    /// The upstream pools, for health checks and name resolution.
    pub(crate) fn upstreams(&self) -> &[UpstreamPool] {
        &self.upstreams
    }

    /// Every per-client limiter, for the server's eviction schedule.
    pub(crate) fn keyed_limiters(&self) -> impl Iterator<Item = &Arc<KeyedLimiter>> {
        self.gates
            .iter()
            .filter_map(RouteGate::keyed_limiter)
            .chain(std::iter::once(self.refusal_log.limiter()))
    }

    /// Who sent this request, decided once per request: a trusted proxy's
    /// keep-alive connection carries requests of many clients.
    fn context<'a>(&self, info: &'a ConnectionInfo, headers: &http::HeaderMap) -> RequestContext<'a> {
        let (client, via_trusted) = match &info.forwarded_by {
            Some(trusted) => (
                real_ip::client_from_headers(info.peer.ip(), headers, trusted),
                Some(info.peer.ip()),
            ),
            None => (info.client.ip(), None),
        };
        RequestContext {
            info,
            client,
            key: ClientKey::new(client, self.global.ipv6_client_prefix),
            via_trusted,
        }
    }

    /// Answers one request; every error becomes its response here.
    pub async fn handle(&self, request: Request<Incoming>, info: &ConnectionInfo) -> Response<ProxyBody> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let upgrade = handshake::wants_websocket(request.headers());
        let mut matched = None;
        let ctx = self.context(info, request.headers());
        let result = self.dispatch(request, &ctx, upgrade, &mut matched).await;
        let route = matched
            .and_then(|index| self.routes.get(index))
            .map_or("", |r| &*r.name);
        // Every upgrade that reached a route is one handshake outcome.
        let handshake_on = (upgrade && matched.is_some()).then_some(route);
        let mut close = upgrade;
        let mut response = match result {
            Ok(response) => {
                if let Some(route) = handshake_on {
                    let outcome = outcome::of_answer(response.status());
                    self.stats.metrics().handshake(route, outcome);
                }
                response
            }
            Err(error) => {
                close |= error.closes_connection();
                match error.refusal_reason() {
                    Some(reason) => {
                        self.stats.count_request_refusal(reason, route, upgrade);
                        self.refusal_log.refused(ctx.key, reason, route, &error);
                    }
                    None => {
                        if let Some(route) = handshake_on {
                            self.stats.metrics().handshake(route, error.outcome());
                        }
                        error.log(&method, &path);
                    }
                }
                error.into_response()
            }
        };
        if close && response.status() != StatusCode::SWITCHING_PROTOCOLS {
            // A refused upgrade ends the connection: whatever the client sent
            // behind it was meant for a tunnel and must not be read as the
            // next request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if upgrade {
            info!(
                %method,
                %path,
                status = response.status().as_u16(),
                websocket = upgrade,
                duration_ms = started.elapsed().as_millis() as u64,
                "request"
            );
            response
        } else if self.global.http_log {
            // Logged once the body has gone: bytes and the whole duration.
            let line = RequestLine {
                method,
                path,
                status: response.status().as_u16(),
                started,
            };
            response.map(|body| LoggedBody::new(body, line).boxed())
        } else {
            response
        }
    }

    async fn dispatch(
        &self,
        request: Request<Incoming>,
        ctx: &RequestContext<'_>,
        upgrade: bool,
        matched: &mut Option<usize>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        check_transfer_coding(request.headers())?;
        let host = request_host(&request)?;
        let (index, route) = self
            .routes
            .find(host.as_deref().unwrap_or(""), request.uri().path())
            .ok_or(ProxyError::NoRoute)?;
        Span::current().record("route", &*route.name);
        *matched = Some(index);
        let gate = &self.gates[index];
        if upgrade {
            self.open_tunnel(request, ctx, route, gate).await
        } else {
            gate.admit_http(ctx.key)?;
            self.forward_http(request, ctx, route).await
        }
    }

    /// The WebSocket path: validate, forward the handshake, check the 101,
    /// and only then answer the client and start the tunnel. Until the
    /// client's 101 is sent, every failure is still an HTTP answer.
    async fn open_tunnel(
        &self,
        mut request: Request<Incoming>,
        ctx: &RequestContext<'_>,
        route: &Route,
        gate: &RouteGate,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let key = handshake::validate(&request)?;
        let admitted = gate.admit_websocket(request.headers(), ctx.key)?;
        let upstream = &self.upstreams[route.upstream];
        let hash_key = self.hash_key(upstream, ctx, request.headers(), request.uri());
        let mut backend_request = handshake_request(&request, ctx);
        match admitted.subprotocols {
            SubprotocolOffer::Unchanged => {}
            SubprotocolOffer::Replace(offer) => {
                backend_request
                    .headers_mut()
                    .insert(header::SEC_WEBSOCKET_PROTOCOL, offer);
            }
            SubprotocolOffer::Remove => {
                backend_request.headers_mut().remove(header::SEC_WEBSOCKET_PROTOCOL);
            }
        }
        let offered = backend_request.headers().clone();
        let Handshake {
            answered,
            stream: backend_stream,
            backend,
            attempts,
        } = upstream.send_handshake(hash_key.as_deref(), backend_request).await?;
        let server = backend.backend().name.clone();
        record_server(&upstream.config.name, &backend, attempts);
        let (mut backend_headers, backend_rest) = match answered {
            Answered::Switched { headers, rest } => (headers, rest),
            Answered::Refused(mut refusal) => {
                debug!(status = refusal.status().as_u16(), "backend refused the upgrade");
                headers::strip_hop_by_hop(refusal.headers_mut());
                // Read whole: the length is the body's own now.
                refusal.headers_mut().remove(header::CONTENT_LENGTH);
                return Ok(refusal.map(body::full));
            }
        };
        handshake::check_upstream_answer(&key, &offered, &backend_headers).map_err(|reason| {
            ProxyError::UpstreamHandshake {
                server: server.to_string(),
                reason,
            }
        })?;

        let mut answer = Response::new(body::empty());
        *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *answer.headers_mut() = std::mem::take(&mut backend_headers);
        headers::strip_hop_by_hop(answer.headers_mut());
        set_upgrade_headers(answer.headers_mut());

        let client_upgrade = hyper::upgrade::on(&mut request);
        // The connection's facts, for the tunnel's open and closed lines
        // (and, at debug, a span around what it logs in between).
        let identity = tunnel::Identity {
            client: match ctx.via_trusted {
                Some(_) => tunnel::identity::Client::Forwarded(ctx.client),
                None => tunnel::identity::Client::Direct(ctx.info.client),
            },
            listener: ctx.info.listener.clone(),
            route: route.name.clone(),
            upstream: upstream.config.name.clone(),
            server,
            subprotocol: answer
                .headers()
                .get(header::SEC_WEBSOCKET_PROTOCOL)
                .and_then(|value| value.to_str().ok())
                .map(Into::into),
            inspected: route.inspect.is_some(),
        };
        let span = identity.debug_span();
        let metrics = self.stats.metrics().clone();
        // RFC 7692: RSV1 marks compressed messages once the backend agreed.
        let deflate = handshake::agreed_extension(answer.headers(), "permessage-deflate");
        let inspect = route.inspect.clone().map(|inspect| Settings { inspect, deflate });
        let drain = self.drain.signal();
        let permit = admitted.permit;
        let slot = ctx.info.slot.clone();
        // The wait for the client's upgrade (its 101 written), boxed and
        // freed once it is over: an idle tunnel's task then holds only what
        // its splice needs (memory per idle tunnel).
        let opening = Box::pin(async move {
            let client = client_upgrade.await?;
            tunnel::identity::tunnel_info!(&identity, "tunnel open");
            let metrics = metrics.tunnel(&identity);
            let client = tunnel::halves::client(client);
            let backend = tunnel::halves::backend(backend_stream, backend_rest);
            Ok(match inspect {
                // Boxed too: a plain tunnel's task need not be as large as
                // an inspected one's.
                Some(settings) => TunnelState::Inspected(Box::pin(inspect::tunnel::run(
                    client.split(),
                    backend.split(),
                    settings,
                    drain,
                    metrics,
                    identity,
                ))),
                None => TunnelState::Plain(tunnel::Splice::new(client, backend, metrics, Box::new(identity))),
            })
        });
        let task = TunnelTask {
            // All three are released when the tunnel ends, however it ends.
            _held: (permit, slot, backend),
            state: TunnelState::Opening(opening),
        };
        self.tunnels.spawn(task.instrument(span));
        Ok(answer)
    }

    /// The plain HTTP path: the same request, hop-by-hop headers replaced by
    /// forwarding headers, bodies streamed both ways.
    async fn forward_http(
        &self,
        request: Request<Incoming>,
        ctx: &RequestContext<'_>,
        route: &Route,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let upstream = &self.upstreams[route.upstream];
        let hash_key = self
            .hash_key(upstream, ctx, request.headers(), request.uri())
            .map(|key| key.into_owned());
        let (mut parts, body) = request.into_parts();
        prepare_headers(&mut parts.headers, &parts.uri, ctx);
        parts.version = Version::HTTP_11;
        let answer = upstream
            .send_http(hash_key.as_deref(), Request::from_parts(parts, body))
            .await?;
        record_server(&upstream.config.name, &answer.backend, answer.attempts);
        let mut response = answer.response;
        headers::strip_hop_by_hop(response.headers_mut());
        Ok(response.map(BodyExt::boxed))
    }

    /// The key of `balance = "hash"`, when the upstream uses one.
    fn hash_key<'r>(
        &self,
        upstream: &UpstreamPool,
        ctx: &RequestContext<'_>,
        headers: &'r http::HeaderMap,
        uri: &'r Uri,
    ) -> Option<std::borrow::Cow<'r, [u8]>> {
        if upstream.config.balance != Balance::Hash {
            return None;
        }
        hash_key::extract(&upstream.config.hash_key, ctx.client, headers, uri)
    }
}

/// Which server took the request, and after how many tries: in the request's log line.
fn record_server(upstream: &str, backend: &BackendGuard, attempts: u32) {
    let span = Span::current();
    span.record("upstream", upstream);
    span.record("server", tracing::field::display(&backend.backend().name));
    span.record("attempts", attempts);
}

/// The handshake as the backend gets it: origin-form target, end-to-end
/// headers (the `Sec-WebSocket-*` family, `Origin`, cookies) kept,
/// hop-by-hop headers replaced by the two an upgrade needs.
fn handshake_request(request: &Request<Incoming>, ctx: &RequestContext<'_>) -> Request<()> {
    let target = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut forwarded = Request::new(());
    *forwarded.uri_mut() = Uri::from(target);
    *forwarded.headers_mut() = request.headers().clone();
    prepare_headers(forwarded.headers_mut(), request.uri(), ctx);
    set_upgrade_headers(forwarded.headers_mut());
    forwarded
}

fn set_upgrade_headers(headers: &mut http::HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// Hop-by-hop headers out, forwarding headers in, and a Host header for
/// absolute-form requests that carried the host only in their target.
fn prepare_headers(headers: &mut http::HeaderMap, uri: &Uri, ctx: &RequestContext<'_>) {
    let client_host = headers.get(header::HOST).cloned();
    headers::strip_hop_by_hop(headers);
    if let Some(host) = client_host {
        headers.insert(header::HOST, host);
    }
    if let Some(value) = uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
        headers.insert(header::HOST, value);
    }
    let host = headers.get(header::HOST).cloned();
    headers::set_forwarding(
        headers,
        &Forwarded {
            client: ctx.client,
            via_trusted: ctx.via_trusted,
            tls: ctx.info.tls,
            host: host.as_ref(),
        },
    );
}

/// RFC 9112 §6.1: wsgate decodes `chunked`, once, and nothing else; any
/// other coding would reach the backend undeclared once Transfer-Encoding
/// is stripped as hop-by-hop.
fn check_transfer_coding(headers: &http::HeaderMap) -> Result<(), ProxyError> {
    let codings: Vec<&[u8]> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    let chunked = codings.iter().filter(|c| c.eq_ignore_ascii_case(b"chunked")).count();
    match (codings.len(), chunked) {
        (0, _) | (1, 1) => Ok(()),
        (_, 2..) => Err(ProxyError::BadRequest("chunked applied more than once")),
        _ => Err(ProxyError::NotImplemented("a transfer coding other than chunked")),
    }
}

/// The host a request is for, lower case and without port, from its Host
/// header or absolute-form target. Ambiguity is refused (RFC 9112 §3.2): two
/// Host headers, or a target and a Host that disagree, are how requests get
/// routed one way by a proxy and read another way by a backend.
fn request_host<B>(request: &Request<B>) -> Result<Option<String>, ProxyError> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    let from_header = host_header
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|text| text.parse::<Authority>().ok())
                .filter(|authority| !authority.as_str().contains('@'))
                .ok_or(ProxyError::BadRequest("invalid Host header"))
        })
        .transpose()?;
    let from_target = request.uri().authority();
    if from_target.is_some_and(|a| a.as_str().contains('@')) {
        return Err(ProxyError::BadRequest("user information in the request target"));
    }
    if from_header.is_none() && request.version() >= Version::HTTP_11 {
        return Err(ProxyError::BadRequest("missing Host header"));
    }
    let authority = match (from_target, &from_header) {
        (Some(target), Some(header)) if !target.host().eq_ignore_ascii_case(header.host()) => {
            return Err(ProxyError::BadRequest(
                "the Host header disagrees with the request target",
            ))
        }
        (Some(target), _) => Some(target),
        (None, Some(header)) => Some(header),
        (None, None) if request.version() >= Version::HTTP_11 => {
            return Err(ProxyError::BadRequest("missing Host header"))
        }
        (None, None) => None,
    };
    Ok(authority.map(|a| {
        a.host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase()
    }))
}

/// The task of one tunnel, written by hand so that it is no larger than the
/// splice it runs: the wait for the two upgrades is boxed and freed when it
/// is over, and an inspected tunnel (whose pumps run in tasks of their own)
/// is boxed as well. What an idle plain tunnel costs is mostly this.
struct TunnelTask {
    _held: (TunnelPermit, Arc<ConnectionSlot>, BackendGuard),
    state: TunnelState,
}

type BoxedFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

#[allow(
    clippy::large_enum_variant,
    reason = "the splice is the state an idle tunnel spends its life in; boxing it would add an allocation per tunnel"
)]
enum TunnelState {
    Opening(BoxedFuture<Result<TunnelState, hyper::Error>>),
    Plain(tunnel::Splice),
    Inspected(BoxedFuture<()>),
    Done,
}

impl Future for TunnelTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let state = &mut self.get_mut().state;
        loop {
            match state {
                TunnelState::Opening(opening) => match ready!(opening.as_mut().poll(cx)) {
                    Ok(next) => *state = next,
                    Err(error) => {
                        debug!(%error, "upgrade did not complete");
                        *state = TunnelState::Done;
                    }
                },
                TunnelState::Plain(splice) => {
                    ready!(Pin::new(splice).poll(cx));
                    *state = TunnelState::Done;
                }
                TunnelState::Inspected(inspected) => {
                    ready!(inspected.as_mut().poll(cx));
                    *state = TunnelState::Done;
                }
                TunnelState::Done => return Poll::Ready(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(request: Request<()>) -> Result<Option<String>, ProxyError> {
        request_host(&request)
    }

    #[test]
    fn hosts_are_normalised() {
        let request = Request::get("/")
            .header("Host", "Chat.Example.com.:8443")
            .body(())
            .unwrap();
        assert_eq!(host_of(request).unwrap().as_deref(), Some("chat.example.com"));
        let request = Request::get("/").header("Host", "[::1]:8080").body(()).unwrap();
        assert_eq!(host_of(request).unwrap().as_deref(), Some("::1"));
    }

    #[test]
    fn ambiguous_hosts_are_refused() {
        let two = Request::get("/")
            .header("Host", "a")
            .header("Host", "b")
            .body(())
            .unwrap();
        assert!(matches!(host_of(two), Err(ProxyError::BadRequest(_))));
        let disagree = Request::get("http://a.example/")
            .header("Host", "b.example")
            .body(())
            .unwrap();
        assert!(matches!(host_of(disagree), Err(ProxyError::BadRequest(_))));
        let missing = Request::get("/").body(()).unwrap();
        assert!(matches!(host_of(missing), Err(ProxyError::BadRequest(_))));
        let userinfo = Request::get("/").header("Host", "user@a.example").body(()).unwrap();
        assert!(matches!(host_of(userinfo), Err(ProxyError::BadRequest(_))));
    }
}
