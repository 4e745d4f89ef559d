//! Handshakes that fail: refused by the proxy, refused or botched by the
//! backend, or the backend unreachable.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;

fn host(addr: SocketAddr) -> String {
    format!("localhost:{}", addr.port())
}

/// A proxy in front of a backend with `behavior`, with extra upstream settings.
async fn proxy_for(behavior: Behavior, upstream_extra: &str) -> (Backend, ProxyHandle) {
    let backend = Backend::start(behavior).await;
    let toml = format!(
        "[global]\nshutdown_timeout = \"2s\"\n\n[[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n{}",
        route_and_upstream(backend.addr, upstream_extra)
    );
    let proxy = start_proxy(&toml).await;
    (backend, proxy)
}

/// Sends `request` to the proxy, expects `status`, returns the response.
async fn expect_status(proxy: &ProxyHandle, request: &str, status: u16) -> RawResponse {
    let response = raw_exchange(proxy.addr("plain"), request).await;
    assert_eq!(response.status, status, "request:\n{request}\nresponse: {response:?}");
    response
}

/// A valid handshake after the refused ones proves the proxy still works and
/// that the refused ones never reached the backend (its accept queue is FIFO).
async fn assert_backend_untouched_then_valid(backend: &Backend, proxy: &ProxyHandle) {
    assert_eq!(backend.accepts(), 0, "an invalid handshake reached the backend");
    let addr = proxy.addr("plain");
    let mut conn = RawConn::new(tcp_connect(addr).await);
    conn.send(valid_upgrade(&host(addr), "/", &[]).as_bytes()).await;
    assert_eq!(conn.read_head().await.status, 101);
    assert_eq!(
        backend.accepts(),
        1,
        "only the valid handshake may open a backend connection"
    );
}

#[tokio::test]
async fn wrong_or_missing_version_is_426_with_the_supported_version() {
    let (backend, proxy) = proxy_for(Behavior::Echo, "").await;
    let h = host(proxy.addr("plain"));
    let key = ("Sec-WebSocket-Key", TEST_KEY);
    for version in [Some("12"), Some("8"), None] {
        let mut headers = vec![key];
        headers.extend(version.map(|v| ("Sec-WebSocket-Version", v)));
        let response = expect_status(&proxy, &upgrade_request("GET / HTTP/1.1", &h, &headers), 426).await;
        assert_eq!(response.header("sec-websocket-version"), Some("13"), "{response:?}");
    }
    assert_backend_untouched_then_valid(&backend, &proxy).await;
    proxy.stop().await;
}

#[tokio::test]
async fn missing_or_malformed_key_is_400() {
    let (backend, proxy) = proxy_for(Behavior::Echo, "").await;
    let h = host(proxy.addr("plain"));
    let version = ("Sec-WebSocket-Version", "13");
    let short_key = "AAAAAAAAAAA="; // base64 of 8 bytes, not 16
    let long_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="; // 32 bytes
    let not_base64 = "this is not base64!!!!==";
    let mut variants = vec![vec![version]];
    for key in [short_key, long_key, not_base64] {
        variants.push(vec![("Sec-WebSocket-Key", key), version]);
    }
    for headers in variants {
        expect_status(&proxy, &upgrade_request("GET / HTTP/1.1", &h, &headers), 400).await;
    }
    assert_backend_untouched_then_valid(&backend, &proxy).await;
    proxy.stop().await;
}

#[tokio::test]
async fn post_upgrade_is_400() {
    let (backend, proxy) = proxy_for(Behavior::Echo, "").await;
    let h = host(proxy.addr("plain"));
    let headers = [
        ("Sec-WebSocket-Key", TEST_KEY),
        ("Sec-WebSocket-Version", "13"),
        ("Content-Length", "0"),
    ];
    expect_status(&proxy, &upgrade_request("POST / HTTP/1.1", &h, &headers), 400).await;
    assert_backend_untouched_then_valid(&backend, &proxy).await;
    proxy.stop().await;
}

#[tokio::test]
async fn http_1_0_upgrade_is_400() {
    let (backend, proxy) = proxy_for(Behavior::Echo, "").await;
    let h = host(proxy.addr("plain"));
    let headers = [("Sec-WebSocket-Key", TEST_KEY), ("Sec-WebSocket-Version", "13")];
    expect_status(&proxy, &upgrade_request("GET / HTTP/1.0", &h, &headers), 400).await;
    assert_backend_untouched_then_valid(&backend, &proxy).await;
    proxy.stop().await;
}

#[tokio::test]
async fn refused_handshakes_close_the_connection() {
    let (_backend, proxy) = proxy_for(Behavior::Echo, "").await;
    let h = host(proxy.addr("plain"));
    let response = expect_status(&proxy, &upgrade_request("GET / HTTP/1.1", &h, &[]), 426).await;
    let connection = response.header("connection").unwrap_or("").to_ascii_lowercase();
    assert!(connection.contains("close"), "{response:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn backend_refusals_reach_the_client_as_they_are() {
    for (status, body) in [(403, "forbidden by the backend"), (404, "no such room")] {
        let (backend, proxy) = proxy_for(Behavior::Status(status, body), "").await;
        let response = expect_status(&proxy, &valid_upgrade(&host(proxy.addr("plain")), "/room", &[]), status).await;
        assert_eq!(response.body_text(), body);
        assert_eq!(backend.accepts(), 1);
        proxy.stop().await;
    }
}

#[tokio::test]
async fn backend_down_is_502() {
    let down = refused_addr().await;
    let toml = format!(
        "[global]\nshutdown_timeout = \"2s\"\n\n[[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n{}",
        route_and_upstream(down, "")
    );
    let proxy = start_proxy(&toml).await;
    expect_status(&proxy, &valid_upgrade(&host(proxy.addr("plain")), "/", &[]), 502).await;
    proxy.stop().await;
}

#[tokio::test]
async fn silent_backend_is_504_after_the_response_timeout() {
    let (backend, proxy) = proxy_for(Behavior::Silent, "response_timeout = \"300ms\"").await;
    let started = Instant::now();
    expect_status(&proxy, &valid_upgrade(&host(proxy.addr("plain")), "/", &[]), 504).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "504 came before the response timeout: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "504 came long after the 300ms response timeout: {waited:?}"
    );
    assert_eq!(backend.accepts(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn wrong_accept_from_backend_is_502() {
    let (backend, proxy) = proxy_for(Behavior::WrongAccept, "").await;
    expect_status(&proxy, &valid_upgrade(&host(proxy.addr("plain")), "/", &[]), 502).await;
    assert_eq!(backend.accepts(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn no_matching_route_is_404() {
    let backend = Backend::echo().await;
    let toml = format!(
        "[global]\nshutdown_timeout = \"2s\"\n\n[[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"only\"\nhosts = [\"only.example\"]\npath_prefix = \"/chat\"\nupstream = \"backends\"\n\n\
         [[upstream]]\nname = \"backends\"\nservers = [{{ address = \"{}\" }}]\n",
        backend.addr
    );
    let proxy = start_proxy(&toml).await;
    let port = proxy.addr("plain").port();
    // Wrong host, right path; right host, a path that only shares a prefix.
    expect_status(
        &proxy,
        &valid_upgrade(&format!("other.example:{port}"), "/chat", &[]),
        404,
    )
    .await;
    expect_status(&proxy, &valid_upgrade("only.example", "/chatroom", &[]), 404).await;
    assert_eq!(backend.accepts(), 0);
    // The route does match its host (any port) on a segment boundary.
    let mut conn = RawConn::new(tcp_connect(proxy.addr("plain")).await);
    conn.send(valid_upgrade(&format!("ONLY.example:{port}"), "/chat/room1", &[]).as_bytes())
        .await;
    assert_eq!(conn.read_head().await.status, 101);
    assert_eq!(backend.accepts(), 1);
    drop(conn);
    proxy.stop().await;
}
