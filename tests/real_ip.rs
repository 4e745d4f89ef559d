//! The real client address: by default the TCP peer, replacing whatever
//! forwarding headers the client sent; from `X-Forwarded-For` / `Forwarded`
//! when the peer is a trusted proxy; from a PROXY protocol v1/v2 header when
//! the listener requires one. Admission (per-client rate limits) keys on it.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use wsgate::config::{Config, ConfigError};
use wsgate::refusal::RefusalReason;
use wsgate::telemetry::stats::Stats;

use support::*;

/// Forwarding headers a client might send to choose its own address.
const SPOOF: [(&str, &str); 3] = [
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Real-IP", "6.6.6.6"),
    ("Forwarded", "for=6.6.6.6;proto=https"),
];

/// One listener `edge` with `listener` keys (TLS when `certs` is given), one
/// route for any host with `route` keys, upstream `backends` at `backend`.
fn toml(listener: &str, route: &str, backend: SocketAddr, certs: Option<&TestCerts>) -> String {
    let tls = certs.map_or(String::new(), |c| tls_entry(&c.server_cert(), &c.server_key()));
    format!(
        "[global]\nshutdown_timeout = \"2s\"\n\n[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n{listener}\n\
         {tls}\n[[route]]\nname = \"all\"\nupstream = \"backends\"\n{route}\n\n[[upstream]]\nname = \"backends\"\n\
         servers = [{{ address = \"{backend}\" }}]\n"
    )
}

struct Setup {
    backend: Backend,
    proxy: ProxyHandle,
    stats: Stats,
}

async fn setup_with(listener: &str, route: &str, certs: Option<&TestCerts>) -> Setup {
    let backend = Backend::echo().await;
    let (server, names) = bind_proxy(&toml(listener, route, backend.addr, certs)).await;
    let stats = server.stats();
    let proxy = run_proxy(server, names);
    Setup { backend, proxy, stats }
}

async fn setup(listener: &str) -> Setup {
    setup_with(listener, "", None).await
}

/// A WebSocket upgrade (`ws`) or a plain GET with `headers`.
fn request(ws: bool, headers: &[(&str, &str)]) -> String {
    if ws {
        return valid_upgrade("localhost", "/", headers);
    }
    let mut request = String::from("GET /plain HTTP/1.1\r\nHost: localhost\r\n");
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    request + "\r\n"
}

impl Setup {
    fn addr(&self) -> SocketAddr {
        self.proxy.addr("edge")
    }

    /// Writes `bytes` on `stream` in one write; the answer must be 101 (`ws`)
    /// or 200. Returns the request head the backend received for it.
    async fn forward_on<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S, bytes: &[u8], ws: bool) -> SeenRequest {
        let before = self.backend.requests().len();
        let mut conn = RawConn::new(stream);
        conn.send(bytes).await;
        let response = conn.read_response().await;
        let what = String::from_utf8_lossy(bytes);
        assert_eq!(response.status, if ws { 101 } else { 200 }, "{what:?}: {response:?}");
        let requests = self.backend.requests();
        assert_eq!(requests.len(), before + 1, "backend requests after {what:?}");
        requests.last().unwrap().clone()
    }

    /// `prefix` (a PROXY header or nothing) and the request in one TCP write.
    async fn forward(&self, prefix: &[u8], ws: bool, headers: &[(&str, &str)]) -> SeenRequest {
        let bytes = [prefix, request(ws, headers).as_bytes()].concat();
        self.forward_on(tcp_connect(self.addr()).await, &bytes, ws).await
    }

    /// An upgrade and a GET with `headers` (after `prefix`): the backend must
    /// see `X-Real-IP: real_ip` and, when given, the `X-Forwarded-For` chain `xff`.
    async fn expect_client(&self, prefix: &[u8], headers: &[(&str, &str)], real_ip: &str, xff: Option<&str>) {
        for ws in [true, false] {
            let seen = self.forward(prefix, ws, headers).await;
            let what = format!("ws={ws} {:?} {headers:?}", String::from_utf8_lossy(prefix));
            assert_eq!(seen.header("x-real-ip").as_deref(), Some(real_ip), "{what}: {seen:#?}");
            if let Some(xff) = xff {
                assert_eq!(seen.all("x-forwarded-for").join(", "), xff, "{what}: {seen:#?}");
            }
        }
    }

    /// `headers` must be replaced by the TCP peer 127.0.0.1, on upgrades and GETs.
    async fn expect_replaced(&self, prefix: &[u8], headers: &[(&str, &str)]) {
        for ws in [true, false] {
            let seen = self.forward(prefix, ws, headers).await;
            let what = format!("ws={ws} {headers:?}: {seen:#?}");
            assert_eq!(seen.header("x-real-ip").as_deref(), Some("127.0.0.1"), "{what}");
            assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"), "{what}");
            let forwarded = seen.header("forwarded").unwrap_or_default();
            assert!(!forwarded.contains("6.6.6.6"), "{what}");
            assert!(forwarded.contains("for=127.0.0.1"), "{what}");
        }
    }

    /// `bytes` must get no HTTP answer: the proxy ends the connection (EOF or reset).
    async fn closed_unanswered(&self, bytes: &[u8]) {
        let mut stream = tcp_connect(self.addr()).await;
        let _ = within("write", stream.write_all(bytes)).await;
        let (got, closed) = read_until_closed(&mut stream, TIMEOUT).await;
        assert!(
            closed.is_some(),
            "the proxy did not close the connection within {TIMEOUT:?}"
        );
        assert!(got.is_empty(), "answered: {:?}", String::from_utf8_lossy(&got));
    }
}

/// A PROXY v2 header: `command` 0x21 (PROXY) or 0x20 (LOCAL), `family` 0x11
/// (TCP/IPv4) or 0x21 (TCP/IPv6), then `addresses` (src, dst, ports) and `tlvs`.
fn proxy_v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[command, family]);
    header.extend_from_slice(&((addresses.len() + tlvs.len()) as u16).to_be_bytes());
    header.extend_from_slice(addresses);
    header.extend_from_slice(tlvs);
    header
}

/// Address block: `src` and `dst` (both IPv4 or both IPv6), ports 56324 → 80.
fn v2_addresses(src: &str, dst: &str) -> Vec<u8> {
    let octets = |ip: &str| match ip.parse::<std::net::IpAddr>().unwrap() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    [
        octets(src),
        octets(dst),
        56324u16.to_be_bytes().to_vec(),
        80u16.to_be_bytes().to_vec(),
    ]
    .concat()
}

const V1: &[u8] = b"PROXY TCP4 203.0.113.9 127.0.0.1 56324 80\r\n";

#[tokio::test]
async fn by_default_the_client_is_the_tcp_peer_and_forwarding_headers_are_replaced() {
    let s = setup("").await;
    s.expect_replaced(b"", &SPOOF).await;
    let chain = [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "10.1.2.3")];
    s.expect_replaced(b"", &chain).await;
    s.expect_replaced(b"", &[]).await;
    s.proxy.stop().await;
}

#[tokio::test]
async fn a_trusted_peer_passes_the_client_from_forwarding_headers() {
    let s = setup("trusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]").await;
    let xff = |v| [("X-Forwarded-For", v)];
    let chain = "203.0.113.7, 10.1.2.3, 127.0.0.1";
    s.expect_client(b"", &xff("203.0.113.7, 10.1.2.3"), "203.0.113.7", Some(chain))
        .await;
    // Spoofed X-Real-IP is replaced; several X-Forwarded-For lines form one chain.
    let lines = [
        ("X-Real-IP", "6.6.6.6"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-For", "10.1.2.3"),
    ];
    s.expect_client(b"", &lines, "203.0.113.7", Some(chain)).await;
    // Right-most untrusted entry, not the left-most one.
    let hops = "198.51.100.1, 203.0.113.7, 10.1.2.3";
    s.expect_client(b"", &xff(hops), "203.0.113.7", None).await;
    // Every entry trusted: the left-most.
    let all = "10.0.0.1, 10.0.0.2, 127.0.0.1";
    s.expect_client(b"", &xff("10.0.0.1, 10.0.0.2"), "10.0.0.1", Some(all))
        .await;
    // An unparseable entry stops the walk at the trusted address to its right.
    s.expect_client(b"", &xff("203.0.113.7, garbage, 10.0.0.2"), "10.0.0.2", None)
        .await;
    // No X-Forwarded-For: RFC 7239 `for=`.
    let fwd = [("Forwarded", "for=\"[2001:db8::1]:4711\";proto=https")];
    s.expect_client(b"", &fwd, "2001:db8::1", None).await;
    let fwd = [("Forwarded", "for=192.0.2.60;proto=http, for=10.0.0.5")];
    s.expect_client(b"", &fwd, "192.0.2.60", None).await;
    // Neither: the peer.
    s.expect_client(b"", &[], "127.0.0.1", Some("127.0.0.1")).await;
    s.proxy.stop().await;
}

#[tokio::test]
async fn an_untrusted_peer_cannot_choose_its_address() {
    let s = setup("trusted_proxies = [\"10.0.0.0/8\"]").await;
    s.expect_replaced(b"", &SPOOF).await;
    s.expect_replaced(b"", &[("X-Forwarded-For", "203.0.113.7, 10.1.2.3")])
        .await;
    s.proxy.stop().await;
}

#[tokio::test]
async fn per_client_rate_limits_key_on_the_derived_client() {
    let route = "[route.rate_limit]\nper_client = { rate = \"1/min\", burst = 1 }";
    let s = setup_with("trusted_proxies = [\"127.0.0.0/8\"]", route, None).await;
    let upgrade = |client| valid_upgrade("localhost", "/", &[("X-Forwarded-For", client)]);
    for client in ["198.51.100.1", "198.51.100.2"] {
        let response = raw_exchange(s.addr(), &upgrade(client)).await;
        assert_eq!(response.status, 101, "first upgrade from {client}: {response:?}");
    }
    let response = raw_exchange(s.addr(), &upgrade("198.51.100.1")).await;
    assert_eq!(response.status, 429, "second upgrade from 198.51.100.1: {response:?}");
    let retry: u64 = response.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(s.backend.accepts(), 2);
    assert_eq!(s.stats.refusals(RefusalReason::RateLimited), 1);
    s.proxy.stop().await;
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_set_the_client_on_a_plain_listener() {
    let s = setup("trusted_proxies = [\"127.0.0.0/8\"]\nproxy_protocol = true").await;
    let v = Some("203.0.113.9");
    s.expect_client(V1, &SPOOF, "203.0.113.9", v).await;
    s.expect_client(V1, &[], "203.0.113.9", v).await;
    let tcp6 = b"PROXY TCP6 2001:db8::9 ::1 56324 80\r\n";
    s.expect_client(tcp6, &[], "2001:db8::9", Some("2001:db8::9")).await;
    s.expect_client(b"PROXY UNKNOWN\r\n", &SPOOF, "127.0.0.1", Some("127.0.0.1"))
        .await;

    let v4 = proxy_v2(0x21, 0x11, &v2_addresses("203.0.113.10", "127.0.0.1"), &[]);
    s.expect_client(&v4, &SPOOF, "203.0.113.10", Some("203.0.113.10")).await;
    let noop_tlv = [0x04, 0x00, 0x03, 0, 0, 0];
    let v6 = proxy_v2(0x21, 0x21, &v2_addresses("2001:db8::10", "::1"), &noop_tlv);
    s.expect_client(&v6, &SPOOF, "2001:db8::10", Some("2001:db8::10")).await;
    // LOCAL (a health check by the proxy itself): the addresses are ignored.
    let local = proxy_v2(0x20, 0x11, &v2_addresses("203.0.113.10", "127.0.0.1"), &[]);
    s.expect_client(&local, &SPOOF, "127.0.0.1", Some("127.0.0.1")).await;
    let local = proxy_v2(0x20, 0x00, &[], &[]);
    s.expect_client(&local, &[], "127.0.0.1", Some("127.0.0.1")).await;
    assert_eq!(s.stats.refusals(RefusalReason::BadHandshake), 0);
    s.proxy.stop().await;
}

#[tokio::test]
async fn proxy_protocol_v1_comes_before_the_tls_handshake() {
    let certs = TestCerts::generate();
    let listener = "trusted_proxies = [\"127.0.0.0/8\"]\nproxy_protocol = true";
    let s = setup_with(listener, "", Some(&certs)).await;
    for ws in [true, false] {
        let mut tcp = tcp_connect(s.addr()).await;
        let header = b"PROXY TCP4 203.0.113.9 127.0.0.1 56324 443\r\n";
        within("PROXY header write", tcp.write_all(header)).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let connector = tokio_rustls::TlsConnector::from(certs.client_config());
        let tls = within("TLS handshake after the PROXY header", connector.connect(name, tcp))
            .await
            .expect("TLS handshake after the PROXY header");
        let seen = s.forward_on(tls, request(ws, &SPOOF).as_bytes(), ws).await;
        assert_eq!(
            seen.header("x-real-ip").as_deref(),
            Some("203.0.113.9"),
            "ws={ws}: {seen:#?}"
        );
        assert_eq!(
            seen.header("x-forwarded-for").as_deref(),
            Some("203.0.113.9"),
            "ws={ws}: {seen:#?}"
        );
        assert_eq!(
            seen.header("x-forwarded-proto").as_deref(),
            Some("https"),
            "ws={ws}: {seen:#?}"
        );
    }
    s.proxy.stop().await;
}

#[tokio::test]
async fn connections_without_a_valid_proxy_header_are_closed_unanswered() {
    let s = setup("trusted_proxies = [\"127.0.0.0/8\"]\nproxy_protocol = true").await;
    s.closed_unanswered(request(true, &[]).as_bytes()).await;
    s.closed_unanswered(request(false, &[]).as_bytes()).await;
    let bad_v1 = [b"PROXY TCP4 nonsense\r\n".as_slice(), request(true, &[]).as_bytes()].concat();
    s.closed_unanswered(&bad_v1).await;
    wait_until("bad handshakes counted", 3, || {
        s.stats.refusals(RefusalReason::BadHandshake)
    })
    .await;
    assert_eq!(s.backend.accepts(), 0);
    assert!(s.backend.requests().is_empty());
    // A valid header still works on the same listener.
    s.expect_client(V1, &[], "203.0.113.9", None).await;
    s.proxy.stop().await;
}

#[tokio::test]
async fn an_untrusted_peer_cannot_choose_its_address_with_a_proxy_header() {
    let s = setup("trusted_proxies = [\"10.0.0.0/8\"]\nproxy_protocol = true").await;
    s.expect_replaced(V1, &SPOOF).await;
    let v4 = proxy_v2(0x21, 0x11, &v2_addresses("203.0.113.10", "127.0.0.1"), &[]);
    s.expect_replaced(&v4, &SPOOF).await;
    s.proxy.stop().await;
}

fn config_errors(listener: &str) -> Vec<ConfigError> {
    let text = format!(
        "[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n{listener}\n\n[[route]]\nname = \"all\"\n\
         upstream = \"backends\"\n\n[[upstream]]\nname = \"backends\"\nservers = [{{ address = \"127.0.0.1:9001\" }}]\n"
    );
    match Config::from_toml(&text, Path::new("/etc/wsgate/test.toml")) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors().to_vec(),
    }
}

#[test]
fn trusted_proxies_and_proxy_protocol_are_validated() {
    let ok = "trusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1/32\", \"::1\", \"2001:db8::/32\"]";
    assert!(config_errors(ok).is_empty(), "{:#?}", config_errors(ok));
    let ok = format!("{ok}\nproxy_protocol = true");
    assert!(config_errors(&ok).is_empty(), "{:#?}", config_errors(&ok));

    let errors = config_errors("trusted_proxies = [\"10.0.0.0/33\"]");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].key, "listener[0].trusted_proxies[0]", "{errors:#?}");

    let errors = config_errors("trusted_proxies = [\"10.0.0.0/8\", \"not-an-ip\"]");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].key, "listener[0].trusted_proxies[1]", "{errors:#?}");

    let errors = config_errors("proxy_protocol = true");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].key, "listener[0].proxy_protocol", "{errors:#?}");
    assert!(errors[0].message.contains("trusted_proxies"), "{errors:#?}");
}
