//! Request smuggling and malformed HTTP/1.1: each hostile request gets the
//! right 4xx, the connection is closed behind it, and nothing reaches a
//! backend that the backend could read differently from wsgate. Requests are
//! written byte for byte on raw TCP; the backends are real hyper servers that
//! record what they received (heads, whole bodies, raw bytes).
//!
//! One test binary, a module per theme; the helpers they share are here.

#[path = "../support/mod.rs"]
mod support;

mod chunks;
mod forwarding;
mod framing;
mod header_syntax;
mod host;
mod upgrades;

use std::net::SocketAddr;

use support::hostile::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A proxy (listener `plain`, one route for any host) in front of a
/// [`BodyBackend`].
struct Gate {
    backend: BodyBackend,
    proxy: ProxyHandle,
}

impl Gate {
    async fn start() -> Gate {
        Gate::with_global("").await
    }

    /// With extra `[global]` keys.
    async fn with_global(global: &str) -> Gate {
        let backend = BodyBackend::start().await;
        let toml = config(backend.addr, None).replace("[global]\n", &format!("[global]\n{global}\n"));
        let proxy = start_proxy(&toml).await;
        Gate { backend, proxy }
    }

    fn addr(&self) -> SocketAddr {
        self.proxy.addr("plain")
    }

    fn host(&self) -> String {
        format!("localhost:{}", self.addr().port())
    }

    /// `bytes` must be answered with `status` alone, the connection closed
    /// behind it, and nothing new reaching the backend.
    async fn refused(&self, what: &str, bytes: &[u8], status: u16) -> Reply {
        let before = (self.backend.exchanges().len(), self.backend.raw().len());
        let reply = send_raw(self.addr(), bytes).await;
        let sent = String::from_utf8_lossy(bytes);
        assert_eq!(
            reply.status,
            Some(status),
            "{what}: wrong answer to\n{sent:?}\ngot: {:?}",
            reply.text()
        );
        assert!(
            reply.closed,
            "{what}: the connection stayed open after the {status} (sent {sent:?}, got {:?})",
            reply.text()
        );
        assert!(
            reply.rest.is_empty(),
            "{what}: more than one answer (sent {sent:?}, got {:?})",
            reply.text()
        );
        let after = (self.backend.exchanges().len(), self.backend.raw().len());
        assert_eq!(
            after,
            before,
            "{what}: the backend received something for a refused request:\n{}",
            self.backend.raw_text()
        );
        reply
    }

    /// A well-formed request after the refused ones: it is answered, and it
    /// is the only thing the backend ever received.
    /// Each request refused with `status` and the connection closed, then
    /// the canary as all the backend saw; the proxy is stopped.
    async fn refuses_each<R: AsRef<[u8]>>(self, cases: impl IntoIterator<Item = (&str, R)>, status: u16) {
        for (what, request) in cases {
            self.refused(what, request.as_ref(), status).await;
        }
        self.canary_then_stop().await;
    }

    /// [`Gate::canary_is_all_the_backend_saw`], then the proxy is stopped.
    async fn canary_then_stop(self) {
        self.canary_is_all_the_backend_saw().await;
        self.proxy.stop().await;
    }

    /// The paths of the requests the backend received, in order.
    fn paths(&self) -> Vec<String> {
        self.backend
            .exchanges()
            .iter()
            .map(|e| e.head.uri.to_string())
            .collect()
    }

    async fn canary_is_all_the_backend_saw(&self) {
        let request = format!(
            "GET /canary HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.host()
        );
        let reply = send_raw(self.addr(), request.as_bytes()).await;
        assert_eq!(reply.status, Some(200), "canary: {:?}", reply.text());
        assert_eq!(
            self.paths(),
            ["/canary"],
            "the backend saw more than the canary:\n{}",
            self.backend.raw_text()
        );
    }
}

/// A POST to `/upload` with the given header lines (each ending in CRLF),
/// then `body` as it is.
fn post(host: &str, headers: &str, body: &str) -> String {
    format!("POST /upload HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n{body}")
}

/// A request the backend must never see: its path is the marker.
fn smuggled(host: &str) -> String {
    format!("GET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

/// An echo [`Backend`] behind a proxy started on `toml(its address)`; with
/// the proxy's listener `plain` and that listener's `localhost:PORT`.
async fn echo_behind(toml: impl FnOnce(SocketAddr) -> String) -> (Backend, ProxyHandle, SocketAddr, String) {
    let backend = Backend::echo().await;
    let proxy = start_proxy(&toml(backend.addr)).await;
    let addr = proxy.addr("plain");
    let host = format!("localhost:{}", addr.port());
    (backend, proxy, addr, host)
}

/// `request` on a connection of its own to `addr` must get `status`, and
/// the connection must be closed behind it.
async fn refused_and_closed(addr: SocketAddr, what: &str, request: &[u8], status: u16) -> Reply {
    let reply = send_raw(addr, request).await;
    assert_eq!(reply.status, Some(status), "{what}: {:?}", reply.text());
    assert!(reply.closed, "{what}: connection kept open: {:?}", reply.text());
    reply
}
