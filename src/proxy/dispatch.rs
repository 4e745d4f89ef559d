//! Answering one request: find its route, then open a tunnel for a
//! WebSocket upgrade ([`super::upgrade`]) or forward it as HTTP; every
//! error becomes its answer here, as [`crate::error`] says it should.

use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use tracing::{debug, Span};

use super::connection::ConnectionInfo;
use super::headers;
use super::upgrade::Accepted;
use super::websocket;
use super::{record_server, Proxy, RequestContext};
use crate::body::{ProxyBody, RequestBody};
use crate::config::Route;
use crate::error::{outcome, ProxyError};
use crate::telemetry::access::{LoggedBody, RequestLine};

impl Proxy {
    /// Answers one request; every error becomes its response here.
    /// `inline`: where an accepted WebSocket's tunnel is left for the
    /// caller to start once it has written the 101 itself (the fast path,
    /// [`super::connection`]); without it, the tunnel waits for hyper's upgrade.
    pub(super) async fn handle<B: RequestBody>(
        &self,
        request: Request<B>,
        info: &ConnectionInfo,
        inline: Option<&mut Option<Accepted>>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let upgrade = websocket::asked(&request);
        let protocol = protocol_name(request.version());
        self.stats.metrics().request(&info.listener, protocol, upgrade);
        let mut matched = None;
        let ctx = self.context(info, request.headers(), started);
        let result = self.dispatch(request, &ctx, upgrade, &mut matched, inline).await;
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
                        error.log(&method, &path, &ctx.logged_client(), &info.listener, route);
                    }
                }
                error.into_response()
            }
        };
        if close && response.status() != StatusCode::SWITCHING_PROTOCOLS && protocol != H2 {
            // A refused upgrade ends the connection: whatever the client sent
            // behind it was meant for a tunnel and must not be read as the
            // next request. (An HTTP/2 stream ends alone: its answer
            // ends it, and the other streams go on.)
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The tunnel's one line, when it closes, says it all (`tunnel closed`).
            debug!(
                %method,
                %path,
                protocol,
                duration_ms = started.elapsed().as_millis() as u64,
                "upgraded"
            );
            response
        } else if upgrade || self.global.http_log {
            let line = RequestLine {
                protocol,
                method,
                path,
                status: response.status().as_u16(),
                started,
                client: ctx.logged_client(),
                listener: info.listener.clone(),
                route: matched.and_then(|index| self.routes.get(index)).map(|r| r.name.clone()),
                served: ctx.served.get().cloned(),
                websocket: upgrade,
            };
            if upgrade {
                line.log(None);
                response
            } else {
                // Logged once the body has gone: bytes and the whole duration.
                response.map(|body| LoggedBody::new(body, line).boxed())
            }
        } else {
            response
        }
    }

    async fn dispatch<B: RequestBody>(
        &self,
        request: Request<B>,
        ctx: &RequestContext<'_>,
        upgrade: bool,
        matched: &mut Option<usize>,
        inline: Option<&mut Option<Accepted>>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        check_transfer_coding(request.headers())?;
        websocket::refuse_other_connect(&request)?;
        let host = request_host(&request)?;
        let (index, route) = self
            .routes
            .find(host.as_deref().unwrap_or(""), request.uri().path())
            .ok_or(ProxyError::NoRoute)?;
        Span::current().record("route", &*route.name);
        *matched = Some(index);
        let gate = &self.gates[index];
        if upgrade {
            self.open_tunnel(request, ctx, route, gate, inline).await
        } else {
            gate.admit_http(ctx.key).await?;
            self.forward_http(request, ctx, route).await
        }
    }

    /// The plain HTTP path: the same request, hop-by-hop headers replaced by
    /// forwarding headers, bodies streamed both ways.
    async fn forward_http<B: RequestBody>(
        &self,
        request: Request<B>,
        ctx: &RequestContext<'_>,
        route: &Route,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let upstream = &self.upstreams[route.upstream];
        let hash_key = upstream
            .pool
            .key_of(ctx.client, request.headers(), request.uri())
            .map(|key| key.into_owned());
        let (mut parts, body) = request.into_parts();
        headers::prepare_headers(&mut parts.headers, &parts.uri, ctx);
        parts.version = Version::HTTP_11;
        let answer = upstream
            .send_http(hash_key.as_deref(), Request::from_parts(parts, body.into_proxy_body()))
            .await?;
        record_server(ctx, &upstream.config.name, &answer.backend, answer.attempts);
        let mut response = answer.response;
        headers::strip_hop_by_hop(response.headers_mut());
        Ok(response.map(BodyExt::boxed))
    }
}

const H2: &str = "h2";

/// The protocol a request came in, as logs and metrics name it (the ALPN
/// names, RFC 7301).
fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => H2,
        Version::HTTP_10 => "http/1.0",
        Version::HTTP_09 => "http/0.9",
        _ => "http/1.1",
    }
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
    // HTTP/2 names the host in :authority, the target's (RFC 9113 §8.3.1).
    if from_header.is_none() && request.version() == Version::HTTP_11 {
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
