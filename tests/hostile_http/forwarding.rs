//! Forwarding headers a client sends: replaced by wsgate's own, whatever
//! their spelling or a Connection header naming them.

use super::*;

/// Every forwarding header a client might send to choose the address,
/// scheme or host a backend believes, some on several lines.
const SPOOFED: [(&str, &str); 9] = [
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-For", "7.7.7.7, 8.8.8.8"),
    ("Forwarded", "for=6.6.6.6;proto=https;host=evil.example"),
    ("Forwarded", "for=7.7.7.7"),
    ("X-Real-IP", "6.6.6.6"),
    ("X-Real-IP", "7.7.7.7"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Host", "evil2.example"),
];

/// A plain GET (`ws` false) or a WebSocket upgrade to `/fwd` with `headers`.
fn with_headers(ws: bool, h: &str, headers: &[(&str, &str)]) -> String {
    if ws {
        return valid_upgrade(h, "/fwd", headers);
    }
    let mut request = format!("GET /fwd HTTP/1.1\r\nHost: {h}\r\n");
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    request + "\r\n"
}

/// Sends `request` and returns the head the backend received for it.
async fn forwarded_head(backend: &Backend, addr: SocketAddr, request: &str, ws: bool) -> SeenRequest {
    let before = backend.requests().len();
    let mut conn = RawConn::new(tcp_connect(addr).await);
    conn.send(request.as_bytes()).await;
    let response = conn.read_head().await;
    assert_eq!(response.status, if ws { 101 } else { 200 }, "{request:?}: {response:?}");
    let requests = backend.requests();
    assert_eq!(requests.len(), before + 1, "{request:?}");
    requests.last().unwrap().clone()
}

/// Exactly one line of each X-Forwarded-* header and X-Real-IP, wsgate's
/// own for a client at 127.0.0.1 on listener `plain` reached as `host`.
fn assert_wsgates_own(seen: &SeenRequest, host: &str, what: &str) {
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"], "{what}");
    assert_eq!(seen.all("x-real-ip"), ["127.0.0.1"], "{what}");
    assert_eq!(seen.all("x-forwarded-proto"), ["http"], "{what}");
    assert_eq!(seen.all("x-forwarded-host"), [host], "{what}");
}

/// A client that is not a trusted proxy cannot choose what a backend logs,
/// rate-limits or trusts: every forwarding header it sent is replaced by
/// exactly one line of wsgate's own, never appended to, on plain requests
/// and upgrades alike.
#[tokio::test]
async fn forwarding_headers_from_an_untrusted_client_are_replaced_not_appended() {
    let (backend, proxy, addr, h) = echo_behind(|backend| {
        config(backend, None).replace(
            "listen = \"127.0.0.1:0\"\n",
            "listen = \"127.0.0.1:0\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
        )
    })
    .await;
    for ws in [false, true] {
        let seen = forwarded_head(&backend, addr, &with_headers(ws, &h, &SPOOFED), ws).await;
        let what = format!("ws={ws}: {seen:#?}");
        assert_wsgates_own(&seen, &h, &what);
        assert_eq!(
            seen.all("forwarded"),
            [format!("for=127.0.0.1;proto=http;host=\"{h}\"")],
            "{what}"
        );
    }
    proxy.stop().await;
}

/// Naming forwarding headers in Connection would have the proxy strip its
/// own replacements as hop-by-hop; they must still arrive, with wsgate's
/// values.
#[tokio::test]
async fn forwarding_headers_named_in_connection_still_arrive_with_wsgates_values() {
    let (backend, proxy, addr, h) = echo_behind(|backend| config(backend, None)).await;
    let names = "X-Forwarded-For, X-Real-IP, Forwarded, X-Forwarded-Proto, X-Forwarded-Host";
    for ws in [false, true] {
        let mut request = with_headers(ws, &h, &SPOOFED);
        request = if ws {
            request.replace("Connection: Upgrade", &format!("Connection: Upgrade, {names}"))
        } else {
            request.replace("\r\n\r\n", &format!("\r\nConnection: keep-alive, {names}\r\n\r\n"))
        };
        let seen = forwarded_head(&backend, addr, &request, ws).await;
        let what = format!("ws={ws}: {seen:#?}");
        assert_wsgates_own(&seen, &h, &what);
        assert_eq!(seen.all("forwarded").len(), 1, "{what}");
    }
    proxy.stop().await;
}

/// CGI-style backends (WSGI, PHP, many frameworks) map `X_Forwarded_For`
/// and `X-Forwarded-For` to the same variable, `HTTP_X_FORWARDED_FOR`, and
/// one of the two wins: a spelling with underscores replaces nothing and
/// goes around the replacement. nginx drops fields with underscores by
/// default (`underscores_in_headers off`); the forwarding fields at least
/// must not reach the backend in any spelling but wsgate's own.
#[tokio::test]
async fn underscore_spellings_of_forwarding_headers_do_not_reach_the_backend() {
    let (backend, proxy, addr, h) = echo_behind(|backend| config(backend, None)).await;
    let spoof = [
        ("X_Forwarded_For", "6.6.6.6"),
        ("X-Forwarded_For", "6.6.6.6"),
        ("X_Real_IP", "6.6.6.6"),
        ("X_Forwarded_Proto", "https"),
        ("X_Forwarded_Host", "evil.example"),
    ];
    for ws in [false, true] {
        let seen = forwarded_head(&backend, addr, &with_headers(ws, &h, &spoof), ws).await;
        let leaked: Vec<String> = seen
            .headers
            .keys()
            .map(|name| name.as_str().to_string())
            .filter(|name| name.contains('_'))
            .collect();
        assert!(leaked.is_empty(), "ws={ws}: {leaked:?} forwarded: {seen:#?}");
        assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"], "ws={ws}: {seen:#?}");
    }
    proxy.stop().await;
}
