//! A WebSocket request becomes a tunnel: validated, admitted, its
//! handshake forwarded and the backend's 101 checked, and only then the
//! client's 101 sent and the tunnel's task started. Until then, every
//! failure is still an HTTP answer (and a retry on another server is safe).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use tracing::{debug, Instrument};

use super::connection::ConnectionSlot;
use super::headers;
use super::websocket::{set_upgrade_headers, Opening};
use super::{record_server, Proxy, RequestContext};
use crate::admission::caps::TunnelPermit;
use crate::admission::rate_limit::ClientKey;
use crate::admission::{RouteGate, SubprotocolOffer};
use crate::body::{self, ProxyBody, RequestBody};
use crate::config::Route;
use crate::error::ProxyError;
use crate::tunnel::copy::Copy;
use crate::tunnel::halves::{Prefixed, Side};
use crate::tunnel::identity::Client;
use crate::tunnel::inspect::tunnel::Start;
use crate::tunnel::inspect::{self, Settings};
use crate::tunnel::relocate::moved::{MovedSocket, MovedState};
use crate::tunnel::relocate::MovedTunnel;
use crate::tunnel::splice_thread::ToThread;
use crate::tunnel::{self, halves};
use crate::upstream::balance::BackendGuard;
use crate::upstream::handshake::Answered;
use crate::upstream::Handshake;
use crate::ws::handshake;

impl Proxy {
    /// The WebSocket path: validate, forward the handshake, check the 101,
    /// and only then answer the client and start the tunnel. Until the
    /// client's 101 is sent, every failure is still an HTTP answer.
    pub(super) async fn open_tunnel<B: RequestBody>(
        &self,
        mut request: Request<B>,
        ctx: &RequestContext<'_>,
        route: &Route,
        gate: &RouteGate,
        inline: Option<&mut Option<Accepted>>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let opening = Opening::of(&mut request)?;
        let admitted = gate.admit_websocket(request.headers(), ctx.key).await?;
        // An upgrade of the binary waits for this tunnel to start, to move it.
        let undecided = self.relocation.opening();
        let upstream = &self.upstreams[route.upstream];
        let hash_key = upstream
            .pool
            .key_of(ctx.client, request.headers(), request.uri())
            .map(|key| key.into_owned());
        let mut backend_request = handshake_request(&mut request, ctx, &opening.key);
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
        // What the backend's answer is checked against: the offers, not
        // a copy of every field.
        let mut offered = http::HeaderMap::new();
        for name in [header::SEC_WEBSOCKET_PROTOCOL, header::SEC_WEBSOCKET_EXTENSIONS] {
            for value in backend_request.headers().get_all(&name) {
                offered.append(name.clone(), value.clone());
            }
        }
        let Handshake {
            answered,
            stream: backend_stream,
            backend,
            attempts,
        } = upstream.send_handshake(hash_key.as_deref(), backend_request).await?;
        let server = backend.backend().name.clone();
        record_server(ctx, &upstream.config.name, &backend, attempts);
        let (backend_headers, backend_rest) = match answered {
            Answered::Switched { headers, rest } => (headers, rest),
            Answered::Refused(mut refusal) => {
                debug!(status = refusal.status().as_u16(), "backend refused the upgrade");
                headers::strip_hop_by_hop(refusal.headers_mut());
                // Read whole: the length is the body's own now.
                refusal.headers_mut().remove(header::CONTENT_LENGTH);
                return Ok(refusal.map(body::full));
            }
        };
        handshake::check_upstream_answer(&opening.key, &offered, &backend_headers).map_err(|reason| {
            ProxyError::UpstreamHandshake {
                server: server.to_string(),
                reason,
            }
        })?;

        let answer = opening.answer(backend_headers);

        let protocol = opening.protocol();
        // The connection's facts, for the tunnel's open and closed lines
        // (and, at debug, a span around what it logs in between).
        let identity = tunnel::Identity {
            client: ctx.logged_client(),
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
            protocol,
            path: Some(request.uri().path().into()),
            handshake_ms: Some(u32::try_from(ctx.started.elapsed().as_millis()).unwrap_or(u32::MAX)),
            attempts: Some(attempts),
        };
        let span = identity.debug_span();
        let metrics = self.stats.metrics().clone();
        // RFC 7692: RSV1 marks compressed messages once the backend agreed.
        let deflate = handshake::agreed_extension(answer.headers(), "permessage-deflate");
        let inspect = route.inspect.clone().map(|inspect| Settings { inspect, deflate });
        let client_bytes = route.client_bytes;
        let drain = self.drain.signal();
        let relocation = self.relocation.clone();
        let server_of_tunnel = backend.backend().clone();
        let permit = admitted.permit;
        let slot = ctx.info.slot.clone();
        // What the tunnel becomes once the client's side is there.
        let start = move |client: Side| -> TunnelState {
            tunnel::identity::tunnel_event!(tracing::Level::DEBUG, &identity, "tunnel open");
            let metrics = metrics.tunnel(&identity);
            let client = client.paced(client_bytes);
            let backend = halves::backend(backend_stream, backend_rest);
            match inspect {
                // Boxed too: a plain tunnel's task need not be as large as
                // an inspected one's.
                Some(settings) => {
                    // An inspected tunnel can be closed between frames:
                    // rebalancing may pick it ([`crate::upstream::rebalance`]).
                    let (ticket, asked) = server_of_tunnel.sheddable();
                    let drain = drain.or_when(asked);
                    let run = inspect::tunnel::run(
                        client.split(),
                        backend.split(),
                        Start::Fresh(settings),
                        drain,
                        metrics,
                        identity,
                        Some(relocation),
                    );
                    TunnelState::Inspected(Box::pin(async move {
                        // On the list until the tunnel has ended.
                        let _ticket = ticket;
                        run.await
                    }))
                }
                None => TunnelState::Plain(
                    tunnel::Splice::new(client, backend, metrics, Box::new(identity))
                        .movable_with(|| relocation.ticket()),
                ),
            }
        };
        // All three are released when the tunnel ends, however it ends.
        let held = (Some(permit), slot, Some(backend));
        match inline {
            Some(accepted) => {
                *accepted = Some(Accepted {
                    held,
                    start: Box::new(start),
                    span,
                    _undecided: undecided,
                });
            }
            None => {
                let client_upgrade = hyper::upgrade::on(&mut request);
                let client_end = opening.client_end();
                // The wait for the client's upgrade (its 101 written), boxed and
                // freed once it is over: an idle tunnel's task then holds only what
                // its splice needs (memory per idle tunnel).
                let opening = Box::pin(async move {
                    let client = client_upgrade.await;
                    let _started = undecided;
                    Ok(start(client_end(client?)))
                });
                let task = TunnelTask {
                    _held: held,
                    state: TunnelState::Opening(opening),
                };
                self.tunnels.spawn(task.instrument(span));
            }
        }
        Ok(answer)
    }

    /// Starts the tunnel of an upgrade answered on the fast path, now that
    /// the client has its 101.
    pub(super) fn start_tunnel(&self, accepted: Accepted, client: Side) {
        let Accepted {
            held,
            start,
            span,
            _undecided: undecided,
        } = accepted;
        // Started in the task's first poll, as on hyper's path: a binary
        // upgrade counts the tunnel as undecided until it runs (and can be
        // asked to move), not only until its task exists.
        let opening = Box::pin(async move {
            let _started = undecided;
            Ok(start(client))
        });
        let task = TunnelTask {
            _held: held,
            state: TunnelState::Opening(opening),
        };
        self.tunnels.spawn(task.instrument(span));
    }
}

/// A WebSocket the backend has accepted, waiting for the client's side:
/// left by [`Proxy::open_tunnel`] for a caller that writes the client's 101
/// itself, and started by [`Proxy::start_tunnel`] (or, dropped, never).
pub(super) struct Accepted {
    held: (Option<TunnelPermit>, Arc<ConnectionSlot>, Option<BackendGuard>),
    start: Box<dyn FnOnce(Side) -> TunnelState + Send>,
    span: tracing::Span,
    /// A binary upgrade waits for this tunnel to start, to move it.
    _undecided: crate::tunnel::relocate::Undecided,
}

impl Proxy {
    /// Runs a tunnel moved from the process this one took over from
    /// ([`crate::tunnel::relocate`]), from where it stopped: counted as if
    /// it had opened here (its route's caps, its server's tunnels, the
    /// listener's connections, `connection` under `max_connections`), and
    /// able to move again.
    pub(crate) fn adopt(&self, moved: MovedTunnel, connection: Option<tokio::sync::OwnedSemaphorePermit>) {
        let MovedTunnel {
            identity,
            age,
            client,
            backend,
            state,
            ..
        } = moved;
        let side = |moved: MovedSocket| -> std::io::Result<Side> {
            moved.socket.set_nonblocking(true)?;
            let socket = tokio::net::TcpStream::from_std(moved.socket)?;
            Ok(Side::Tcp(Prefixed::new(moved.unread, socket)))
        };
        let (client, backend) = match side(client).and_then(|client| Ok((client, side(backend)?))) {
            Ok(sides) => sides,
            Err(error) => {
                tracing::warn!(%error, route = &*identity.route, "moved tunnel lost: its sockets cannot be used");
                return;
            }
        };
        let route = self.routes.iter().position(|route| route.name == identity.route);
        // Its route's byte rate, as this configuration says.
        let client_bytes = route.and_then(|index| self.routes.iter().nth(index)?.client_bytes);
        let client = client.paced(client_bytes);
        let client_ip = match identity.client {
            Client::Direct(address) => address.ip(),
            Client::Forwarded(ip) => ip,
        };
        let permit =
            route.map(|index| self.gates[index].adopt(ClientKey::new(client_ip, self.global.ipv6_client_prefix)));
        let server = self
            .upstreams
            .iter()
            .find(|upstream| *upstream.config.name == *identity.upstream)
            .and_then(|upstream| {
                upstream
                    .pool
                    .backends()
                    .iter()
                    .find(|server| server.name == identity.server)
                    .cloned()
            });
        let slot = Arc::new(ConnectionSlot {
            _permit: connection,
            _open: self.stats.connection_opened(&identity.listener),
        });
        let span = identity.debug_span();
        let metrics = self.stats.metrics().tunnel(&identity);
        let state = match state {
            MovedState::Plain { upstream, downstream } => TunnelState::Plain(
                tunnel::Splice::resume(
                    client,
                    backend,
                    (Copy::restore(upstream), Copy::restore(downstream)),
                    metrics,
                    Box::new(identity),
                    age,
                )
                .movable_with(|| self.relocation.ticket()),
            ),
            MovedState::Inspected(saved) => {
                let mut drain = self.drain.signal();
                let ticket = server.as_ref().map(|server| {
                    let (ticket, asked) = server.sheddable();
                    drain = drain.clone().or_when(asked);
                    ticket
                });
                let run = inspect::tunnel::run(
                    client.split(),
                    backend.split(),
                    Start::Moved { saved, age },
                    drain,
                    metrics,
                    identity,
                    Some(self.relocation.clone()),
                );
                TunnelState::Inspected(Box::pin(async move {
                    let _ticket = ticket;
                    run.await
                }))
            }
        };
        let task = TunnelTask {
            _held: (permit, slot, server.map(|server| server.acquire())),
            state,
        };
        self.tunnels.spawn(task.instrument(span));
    }
}

/// The handshake as the backend gets it: origin-form target, end-to-end
/// headers (the `Sec-WebSocket-*` family, `Origin`, cookies) kept,
/// hop-by-hop headers replaced by the two an upgrade needs.
/// `key` is the client's own over HTTP/1.1, wsgate's over HTTP/2.
/// The client's fields are taken out of `request` (routing and admission
/// have read them), not copied.
fn handshake_request<B>(request: &mut Request<B>, ctx: &RequestContext<'_>, key: &HeaderValue) -> Request<()> {
    let target = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut forwarded = Request::new(());
    *forwarded.uri_mut() = Uri::from(target);
    *forwarded.headers_mut() = std::mem::take(request.headers_mut());
    headers::prepare_headers(forwarded.headers_mut(), request.uri(), ctx);
    set_upgrade_headers(forwarded.headers_mut());
    forwarded.headers_mut().insert(header::SEC_WEBSOCKET_KEY, key.clone());
    forwarded
}

/// The task of one tunnel, written by hand so that it is no larger than the
/// splice it runs: the wait for the two upgrades is boxed and freed when it
/// is over, and an inspected tunnel (whose pumps run in tasks of their own)
/// is boxed as well. What an idle plain tunnel costs is mostly this.
struct TunnelTask {
    /// A moved tunnel whose route or server is gone from this
    /// configuration is counted under neither.
    _held: (Option<TunnelPermit>, Arc<ConnectionSlot>, Option<BackendGuard>),
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
    /// A busy plain tunnel, spliced by a splice thread meanwhile.
    Threaded(Box<tunnel::splice_thread::Threaded>),
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
                    if Pin::new(&mut *splice).poll(cx).is_ready() {
                        *state = TunnelState::Done;
                        continue;
                    }
                    if !splice.wants_thread() {
                        return Poll::Pending;
                    }
                    let TunnelState::Plain(splice) = std::mem::replace(state, TunnelState::Done) else {
                        unreachable!("matched above");
                    };
                    *state = match splice.into_thread() {
                        ToThread::Went(threaded) => TunnelState::Threaded(threaded),
                        // Polled again: its sockets are new to tokio's driver.
                        ToThread::Stayed(splice) => TunnelState::Plain(*splice),
                        ToThread::Ended => TunnelState::Done,
                    };
                }
                TunnelState::Threaded(threaded) => {
                    *state = match ready!(threaded.poll_end(cx)) {
                        // Taken back to move at a binary upgrade.
                        Some(splice) => TunnelState::Plain(splice),
                        None => TunnelState::Done,
                    };
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
    use super::TunnelTask;

    /// tokio allocates a task in 128-byte steps: its header and trailer
    /// (80 bytes), the scheduler's handle and the task's id (16), the
    /// stage's tag (8) and the future, here with its span (40) and its
    /// tracker's token (8). A plain tunnel spends its life in this task,
    /// so a few bytes more than the budget cost 128 per idle tunnel.
    #[test]
    fn a_plain_tunnel_task_fits_four_cache_lines() {
        let future = std::mem::size_of::<tracing::instrument::Instrumented<TunnelTask>>() + 8;
        assert!(80 + 16 + 8 + future <= 512, "a tunnel's task future is {future} bytes");
    }
}
