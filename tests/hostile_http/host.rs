//! Host: ambiguous Host fields, absolute-form targets that disagree with
//! Host, and Host named in Connection.

use super::*;

/// Two Host fields let the proxy route by one and the backend serve the
/// other (RFC 9112 §3.2: a server MUST answer 400). The same goes for a
/// Host that is a list or is not an authority at all; after such a 400 the
/// connection is closed like after any other framing error.
#[tokio::test]
async fn ambiguous_host_fields_are_400_and_the_connection_closes() {
    let gate = Gate::start().await;
    let h = gate.host();
    for (what, hosts) in [
        ("two different", format!("Host: {h}\r\nHost: other.example\r\n")),
        ("two equal", format!("Host: {h}\r\nHost: {h}\r\n")),
        ("a list", format!("Host: {h}, other.example\r\n")),
        ("with a space", "Host: local host\r\n".to_string()),
        ("empty", "Host: \r\n".to_string()),
        ("with user information", format!("Host: evil.example@{h}\r\n")),
        ("missing", String::new()),
    ] {
        let request = format!("GET / HTTP/1.1\r\n{hosts}\r\n{}", smuggled(&h));
        gate.refused(what, request.as_bytes(), 400).await;
    }
    let disagreeing = format!(
        "GET http://other.example/ HTTP/1.1\r\nHost: {h}\r\n\r\n{}",
        smuggled(&h)
    );
    gate.refused("absolute-form target disagreeing", disagreeing.as_bytes(), 400)
        .await;
    gate.canary_then_stop().await;
}

/// The same ambiguous Host fields on a WebSocket upgrade: 400, closed,
/// and no handshake reaches a backend.
#[tokio::test]
async fn ambiguous_host_fields_on_an_upgrade_are_400_and_the_connection_closes() {
    let gate = Gate::start().await;
    let h = gate.host();
    for (what, host) in [
        ("two different", format!("{h}\r\nHost: other.example")),
        ("two equal", format!("{h}\r\nHost: {h}")),
        ("a list", format!("{h}, other.example")),
    ] {
        let request = valid_upgrade(&host, "/", &[]) + &smuggled(&h);
        gate.refused(what, request.as_bytes(), 400).await;
    }
    gate.canary_then_stop().await;
}

/// Two routes by host, a backend each.
async fn two_hosts() -> (BodyBackend, BodyBackend, ProxyHandle) {
    let (a, b) = (BodyBackend::start().await, BodyBackend::start().await);
    let toml = format!(
        "{}[[route]]\nname = \"a\"\nhosts = [\"a.example\"]\nupstream = \"a\"\n\n\
         [[route]]\nname = \"b\"\nhosts = [\"b.example\"]\nupstream = \"b\"\n\n\
         [[upstream]]\nname = \"a\"\nservers = [{{ address = \"{}\" }}]\n\n\
         [[upstream]]\nname = \"b\"\nservers = [{{ address = \"{}\" }}]\n",
        listeners(None),
        a.addr,
        b.addr
    );
    let proxy = start_proxy(&toml).await;
    (a, b, proxy)
}

/// `GET http://b.example/ HTTP/1.1` with `Host: a.example`: RFC 9112 §3.2.2
/// makes the target win at an origin server, while many backends read Host.
/// wsgate cannot make both agree, so it refuses (400) and neither backend
/// hears of it, for plain requests and upgrades alike. (The plain request
/// asks for `Connection: close` itself: that wsgate closes after its own
/// 400s is the business of `ambiguous_host_fields_are_400_and_the_connection_closes`.)
#[tokio::test]
async fn an_absolute_form_target_that_disagrees_with_host_is_400_and_reaches_no_backend() {
    let (a, b, proxy) = two_hosts().await;
    let addr = proxy.addr("plain");
    let plain = "GET http://b.example/admin HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n".to_string();
    let upgrade = valid_upgrade("a.example", "http://b.example/admin", &[]);
    let port = upgrade.replace("a.example", &format!("a.example:{}", addr.port()));
    for (what, request) in [
        ("plain", plain),
        ("upgrade", upgrade),
        ("upgrade, Host with a port", port),
    ] {
        refused_and_closed(addr, what, request.as_bytes(), 400).await;
    }
    assert_eq!((a.accepts(), b.accepts()), (0, 0), "a backend was contacted");
    proxy.stop().await;
}

/// When target and Host name the same host but not the same authority
/// (another port, another case), wsgate routes by the target, and RFC 9112
/// §3.2.2 then requires a proxy to "generate a new Host field value based
/// on the received request-target rather than forward the received Host":
/// the backend must see the target's authority in Host, X-Forwarded-Host
/// and Forwarded, never the client's other value.
#[tokio::test]
async fn an_absolute_form_target_wins_and_the_backend_sees_its_authority_as_host() {
    let (a, _b, proxy) = two_hosts().await;
    let addr = proxy.addr("plain");
    let request = "GET http://a.example:8080/abs?q=1 HTTP/1.1\r\nHost: A.EXAMPLE:9999\r\nConnection: close\r\n\r\n";
    let reply = send_raw(addr, request.as_bytes()).await;
    assert_eq!(reply.status, Some(200), "{:?}", reply.text());
    let exchanges = a.exchanges();
    assert_eq!(exchanges.len(), 1, "{exchanges:#?}");
    let seen = &exchanges[0].head;
    assert_eq!(seen.uri, "/abs?q=1", "origin-form toward the backend: {seen:#?}");
    assert_eq!(seen.header("host").as_deref(), Some("a.example:8080"), "{seen:#?}");
    assert_eq!(
        seen.header("x-forwarded-host").as_deref(),
        Some("a.example:8080"),
        "{seen:#?}"
    );
    let forwarded = seen.header("forwarded").unwrap_or_default();
    assert!(forwarded.contains("host=\"a.example:8080\""), "{seen:#?}");
    assert!(!contains(&a.raw(), b"9999"), "{}", a.raw_text());
    proxy.stop().await;
}

/// User information in the target's authority (`http://b.example@a.example/`)
/// reads as host b.example to a careless parser and a.example to a careful
/// one; RFC 9110 §4.2.4 says to treat it as an error, as wsgate does for
/// Host. And an HTTP/1.1 request must carry Host even with an absolute
/// target (RFC 9112 §3.2: MUST 400), or the authority (user information
/// and all) becomes the Host the backend sees.
#[tokio::test]
async fn an_absolute_form_target_with_user_information_or_without_host_is_400() {
    let (a, b, proxy) = two_hosts().await;
    let addr = proxy.addr("plain");
    for (what, request) in [
        (
            "user information",
            "GET http://b.example@a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
        ),
        (
            "user information, no Host",
            "GET http://b.example@a.example/ HTTP/1.1\r\n\r\n",
        ),
        ("no Host", "GET http://a.example/ HTTP/1.1\r\n\r\n"),
    ] {
        refused_and_closed(addr, what, request.as_bytes(), 400).await;
    }
    assert_eq!((a.accepts(), b.accepts()), (0, 0), "a backend was contacted");
    proxy.stop().await;
}

/// `Connection: Host` asks the proxy to drop Host as hop-by-hop: wsgate
/// routed by the client's Host, and the backend would then serve its
/// default host instead. End-to-end fields the request is routed by must
/// survive a Connection header naming them.
#[tokio::test]
async fn a_host_named_in_connection_still_reaches_the_backend() {
    let (backend, proxy, addr, h) = echo_behind(|backend| config(backend, None)).await;
    let plain = format!("GET /plain HTTP/1.1\r\nHost: {h}\r\nConnection: close, Host\r\n\r\n");
    let reply = send_raw(addr, plain.as_bytes()).await;
    assert_eq!(reply.status, Some(200), "{:?}", reply.text());
    let upgrade = valid_upgrade(&h, "/ws", &[]).replace("Connection: Upgrade", "Connection: Upgrade, Host");
    let mut conn = RawConn::new(tcp_connect(addr).await);
    conn.send(upgrade.as_bytes()).await;
    assert_eq!(conn.read_head().await.status, 101);
    let requests = backend.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    for seen in &requests {
        assert_eq!(seen.header("host").as_deref(), Some(h.as_str()), "{seen:#?}");
        assert_eq!(
            seen.header("x-forwarded-host").as_deref(),
            Some(h.as_str()),
            "{seen:#?}"
        );
    }
    drop(conn);
    proxy.stop().await;
}
