//! Upgrades: refused ones (HTTP/1.0, with a body) and what is pipelined
//! behind them, bytes behind an accepted one, and upgrades to other
//! protocols.

use super::*;

/// HTTP/1.0 has no Upgrade (RFC 6455 §4.2.1 needs HTTP/1.1), and an
/// HTTP/1.0 keep-alive connection behind a refused upgrade would carry the
/// bytes meant for the tunnel into a next request: 400, closed, nothing at
/// the backend.
#[tokio::test]
async fn an_http_1_0_upgrade_is_400_and_the_connection_closes() {
    let gate = Gate::start().await;
    let h = gate.host();
    let headers = [("Sec-WebSocket-Key", TEST_KEY), ("Sec-WebSocket-Version", "13")];
    let upgrade = upgrade_request("GET /ws HTTP/1.0", &h, &headers);
    let keep_alive = upgrade.replace("Connection: Upgrade", "Connection: keep-alive, Upgrade");
    for (what, request) in [("HTTP/1.0", upgrade), ("HTTP/1.0 keep-alive", keep_alive)] {
        let request = request + &format!("GET /smuggled HTTP/1.0\r\nHost: {h}\r\n\r\n");
        gate.refused(what, request.as_bytes(), 400).await;
    }
    gate.canary_then_stop().await;
}

/// An upgrade request with a body: the proxy frames the body away, a
/// backend that expects none reads it as WebSocket frames or as its next
/// request. RFC 6455 handshakes carry no body: 400, and the body is never
/// read as a request.
#[tokio::test]
async fn an_upgrade_request_with_a_body_is_400_and_the_body_is_never_read_as_a_request() {
    let gate = Gate::start().await;
    let h = gate.host();
    let inner = smuggled(&h);
    let length = inner.len().to_string();
    let chunked_body = format!("{:x}\r\n{inner}\r\n0\r\n\r\n", inner.len());
    for (what, extra, body) in [
        (
            "Content-Length",
            vec![("Content-Length", length.as_str())],
            inner.clone(),
        ),
        ("chunked", vec![("Transfer-Encoding", "chunked")], chunked_body.clone()),
        (
            "empty chunked",
            vec![("Transfer-Encoding", "chunked")],
            "0\r\n\r\n".to_string(),
        ),
    ] {
        let mut headers = vec![("Sec-WebSocket-Key", TEST_KEY), ("Sec-WebSocket-Version", "13")];
        headers.extend(extra);
        let request = upgrade_request("GET /ws HTTP/1.1", &h, &headers) + &body;
        gate.refused(what, request.as_bytes(), 400).await;
    }
    gate.canary_then_stop().await;
}

/// Bytes pipelined behind an upgrade that wsgate refuses were meant for a
/// tunnel: they are never parsed as a next request on the same connection.
#[tokio::test]
async fn requests_pipelined_behind_a_refused_upgrade_are_never_served() {
    let gate = Gate::start().await;
    let h = gate.host();
    let no_version = upgrade_request("GET /ws HTTP/1.1", &h, &[("Sec-WebSocket-Key", TEST_KEY)]);
    let bad_key = valid_upgrade(&h, "/ws", &[]).replace(TEST_KEY, "c2hvcnQ=");
    let post = valid_upgrade(&h, "/ws", &[]).replace("GET /ws", "POST /ws");
    for (what, request, status) in [
        ("no version", no_version, 426),
        ("bad key", bad_key, 400),
        ("POST", post, 400),
    ] {
        let request = request + &smuggled(&h);
        let reply = gate.refused(what, request.as_bytes(), status).await;
        let connection = reply.header("connection").unwrap_or("").to_ascii_lowercase();
        assert!(connection.contains("close"), "{what}: {:?}", reply.text());
    }
    gate.canary_then_stop().await;
}

/// The same when the backend refuses the upgrade (403): the client gets the
/// backend's answer and the connection ends; the pipelined request never
/// reaches the backend, on the handshake's connection or a pooled one.
#[tokio::test]
async fn requests_pipelined_behind_an_upgrade_the_backend_refuses_are_never_served() {
    let backend = Backend::start(Behavior::Status(403, "no websockets here")).await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let h = format!("localhost:{}", addr.port());
    let request = valid_upgrade(&h, "/ws", &[]) + &smuggled(&h);
    let reply = send_raw(addr, request.as_bytes()).await;
    assert_eq!(reply.status, Some(403), "{:?}", reply.text());
    assert_eq!(reply.body, b"no websockets here");
    assert!(reply.closed, "connection kept open: {:?}", reply.text());
    assert!(reply.rest.is_empty(), "a second answer: {:?}", reply.text());
    let connection = reply.header("connection").unwrap_or("").to_ascii_lowercase();
    assert!(connection.contains("close"), "{:?}", reply.text());
    // A canary on a new connection: after it, the backend has seen the
    // handshake and the canary, and nothing else.
    let canary = format!("GET /canary HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n");
    assert_eq!(send_raw(addr, canary.as_bytes()).await.status, Some(403));
    let paths: Vec<String> = backend.requests().iter().map(|r| r.uri.to_string()).collect();
    assert_eq!(paths, ["/ws", "/canary"]);
    proxy.stop().await;
}

/// After a 101 the connection is a tunnel: bytes the client sent right
/// behind its handshake, even if they look like an HTTP request, are
/// delivered to the backend raw, through the tunnel, in order, and wsgate
/// answers none of them itself nor opens another backend connection.
#[tokio::test]
async fn bytes_behind_an_accepted_handshake_go_through_the_tunnel_verbatim() {
    let mut backend = RawBackend::start(false, None).await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let h = format!("localhost:{}", addr.port());
    let early = format!("{}{}", smuggled(&h), "POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    let mut client = tcp_connect(addr).await;
    client.set_nodelay(true).unwrap();
    let request = valid_upgrade(&h, "/ws", &[]) + &early;
    within("client write", client.write_all(request.as_bytes()))
        .await
        .unwrap();
    let head = within("101", read_head_bytes(&mut client)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    let mut tunnel = backend.next_conn().await;
    let mut received = vec![0u8; early.len()];
    within("early bytes at the backend", tunnel.read_exact(&mut received))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&received), early);
    within("backend write", tunnel.write_all(b"from the backend"))
        .await
        .unwrap();
    let mut back = vec![0u8; b"from the backend".len()];
    within("tunnel bytes at the client", client.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"from the backend", "wsgate answered the pipelined bytes itself");
    assert_eq!(backend.accepts(), 1, "a second backend connection was opened");
    drop(client);
    let (rest, closed) = read_until_closed(&mut tunnel, CLOSE_BOUND).await;
    assert!(closed.is_some() && rest.is_empty(), "{closed:?} {rest:?}");
    drop(tunnel);
    proxy.stop().await;
}

/// `Upgrade: h2c` (and any upgrade but websocket) is hop-by-hop: passing it
/// on lets a client turn the backend connection into HTTP/2 behind the
/// proxy's back and reach anything (h2c smuggling). It is forwarded as a
/// plain request with neither Upgrade nor the fields Connection names.
#[tokio::test]
async fn other_upgrades_reach_the_backend_as_plain_requests() {
    let (backend, proxy, addr, h) = echo_behind(|backend| config(backend, None)).await;
    let request = format!(
        "GET /h2c HTTP/1.1\r\nHost: {h}\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\
         Connection: Upgrade, HTTP2-Settings, close\r\n\r\n"
    );
    let reply = send_raw(addr, request.as_bytes()).await;
    assert_eq!(reply.status, Some(200), "{:?}", reply.text());
    let seen = backend.only_request();
    for name in ["upgrade", "http2-settings"] {
        assert_eq!(seen.header(name), None, "{name} forwarded: {seen:#?}");
    }
    let connection = seen.header("connection").unwrap_or_default().to_ascii_lowercase();
    assert!(!connection.contains("upgrade"), "{seen:#?}");
    proxy.stop().await;
}
