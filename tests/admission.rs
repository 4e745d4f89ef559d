//! Admission control on WebSocket upgrades: Origin and subprotocol
//! allowlists, rate limits, tunnel caps, the global connection cap, the
//! handshake timeout and the request head size. Every refusal is answered
//! before the backend is contacted.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wsgate::refusal::RefusalReason;
use wsgate::telemetry::stats::Stats;

use support::*;

type Ws = WebSocketStream<TcpStream>;

/// `[global]` and `[[listener]]` extras and the routes, upstream `backends` at `backend`.
fn toml(global: &str, listener: &str, routes: &str, backend: SocketAddr) -> String {
    format!(
        "[global]\nshutdown_timeout = \"2s\"\n{global}\n\n[[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\
         {listener}\n\n[[upstream]]\nname = \"backends\"\nservers = [{{ address = \"{backend}\" }}]\n\n{routes}\n"
    )
}

/// A route `name` for `hosts` (any host when empty) with extra keys and sub-tables.
fn route(name: &str, hosts: &[&str], extra: &str) -> String {
    let hosts = match hosts {
        [] => String::new(),
        hosts => format!("hosts = {hosts:?}\n"),
    };
    format!("[[route]]\nname = \"{name}\"\n{hosts}upstream = \"backends\"\n{extra}\n")
}

/// A running proxy in front of one backend, with its stats.
struct Setup {
    backend: Backend,
    proxy: ProxyHandle,
    stats: Stats,
}

async fn setup_with(global: &str, listener: &str, routes: &str, behavior: Behavior) -> Setup {
    let backend = Backend::start(behavior).await;
    let (server, names) = bind_proxy(&toml(global, listener, routes, backend.addr)).await;
    let stats = server.stats();
    let proxy = run_proxy(server, names);
    Setup { backend, proxy, stats }
}

/// One route `chat` for any host with `extra`, in front of an echo backend.
async fn setup(extra: &str) -> Setup {
    setup_with("", "", &route("chat", &[], extra), Behavior::Echo).await
}

impl Setup {
    fn addr(&self) -> SocketAddr {
        self.proxy.addr("plain")
    }

    /// Sends `request` from client address `from` and reads the response.
    async fn send(&self, from: &str, request: &str) -> RawResponse {
        let mut conn = RawConn::new(connect_from_ip(from, self.addr()).await);
        conn.send(request.as_bytes()).await;
        conn.read_response().await
    }

    /// An upgrade from `from` for `host` that must be admitted (101, one more backend connection).
    async fn admitted(&self, from: &str, host: &str, headers: &[(&str, &str)]) -> RawResponse {
        let before = self.backend.accepts();
        let response = self.send(from, &valid_upgrade(host, "/", headers)).await;
        assert_eq!(response.status, 101, "{host} {headers:?} from {from}: {response:?}");
        assert_eq!(self.backend.accepts(), before + 1, "backend connections");
        response
    }

    /// An upgrade from `from` for `host` that must be refused with `status`, before the backend.
    async fn refused(&self, from: &str, host: &str, headers: &[(&str, &str)], status: u16) -> RawResponse {
        let before = self.backend.accepts();
        let response = self.send(from, &valid_upgrade(host, "/", headers)).await;
        assert_refusal(&response, status, &format!("{host} {headers:?} from {from}"));
        let connection = response.header("connection").unwrap_or("").to_ascii_lowercase();
        assert!(connection.contains("close"), "{response:?}");
        assert_eq!(self.backend.accepts(), before, "a refusal reached the backend");
        response
    }

    /// A plain GET from `from`.
    async fn get(&self, from: &str) -> RawResponse {
        self.send(from, "GET /plain HTTP/1.1\r\nHost: localhost\r\n\r\n").await
    }

    fn refusals(&self, reason: RefusalReason) -> u64 {
        self.stats.refusals(reason)
    }
}

fn assert_refusal(response: &RawResponse, status: u16, what: &str) {
    assert_eq!(response.status, status, "{what}: {response:?}");
    assert!(!response.body.is_empty(), "{what}: empty body");
}

/// `Retry-After` must be whole seconds in 1..=`max`.
fn assert_retry_after(response: &RawResponse, max: u64) {
    let value = response
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {response:?}"));
    let secs: u64 = value
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {value:?} is not whole seconds"));
    assert!((1..=max).contains(&secs), "Retry-After {secs} not in 1..={max}");
}

/// A TCP connection to `addr` from local address `ip`.
async fn connect_from_ip(ip: &str, addr: SocketAddr) -> TcpStream {
    let ip: std::net::IpAddr = ip.parse().unwrap();
    connect_from(ip, addr).await.expect("TCP connect")
}

/// A WebSocket tunnel from `from` through the proxy at `addr`.
async fn tunnel_from(from: &str, addr: SocketAddr) -> Ws {
    let url = format!("ws://localhost:{}/", addr.port());
    ws_handshake(connect_from_ip(from, addr).await, &url, &[]).await.0
}

/// Close handshake, then reads the TCP stream to its end.
async fn close_tunnel(mut ws: Ws) {
    within("close handshake", async {
        ws.close(None).await.expect("send close");
        while let Some(Ok(_)) = ws.next().await {}
        let _ = tokio::io::copy(&mut ws.into_inner(), &mut tokio::io::sink()).await;
    })
    .await
}

const LOCAL: &str = "127.0.0.1";

#[tokio::test]
async fn origins_are_checked_against_the_allowlist() {
    let allowed =
        "allowed_origins = [\"https://chat.example.com\", \"https://*.example.com\", \"http://localhost:3000\"]";
    let strict = "allowed_origins = [\"https://chat.example.com\"]\nmissing_origin = \"reject\"";
    let routes = [
        route("chat", &["chat.test"], allowed),
        route("strict", &["strict.test"], strict),
    ]
    .concat();
    let routes = routes + &route("open", &[], "");
    let s = setup_with("", "", &routes, Behavior::Echo).await;
    let admitted = [
        "https://chat.example.com",
        "https://CHAT.Example.com:443",
        "https://a.example.com",
        "https://a.b.example.com",
        "http://localhost:3000",
    ];
    for origin in admitted {
        s.admitted(LOCAL, "chat.test", &[("Origin", origin)]).await;
    }
    s.admitted(LOCAL, "chat.test", &[]).await; // no Origin: allowed by default
    let refused = [
        "https://example.com",
        "https://evilexample.com",
        "https://evil.test",
        "http://chat.example.com",
        "https://chat.example.com:8443",
        "http://localhost:3001",
        "null",
    ];
    for origin in refused {
        s.refused(LOCAL, "chat.test", &[("Origin", origin)], 403).await;
    }
    s.refused(LOCAL, "strict.test", &[], 403).await;
    s.admitted(LOCAL, "strict.test", &[("Origin", "https://chat.example.com")])
        .await;
    for origin in ["https://evil.test", "null"] {
        s.admitted(LOCAL, "open.test", &[("Origin", origin)]).await;
    }
    s.admitted(LOCAL, "open.test", &[]).await;
    assert_eq!(s.refusals(RefusalReason::Origin), refused.len() as u64 + 1);
    assert_eq!(s.backend.accepts(), admitted.len() + 5);
    s.proxy.stop().await;
}

#[tokio::test]
async fn offered_subprotocols_are_filtered_by_the_allowlist() {
    let list = "subprotocols = [\"chat.v2\", \"chat.v1\"]";
    let loose = format!("{list}\nrequire_subprotocol = false");
    let routes = [
        route("chat", &["chat.test"], list),
        route("loose", &["loose.test"], &loose),
    ]
    .concat();
    let s = setup_with("", "", &routes, Behavior::Echo).await;
    let offer = |p| [("Sec-WebSocket-Protocol", p)];

    let response = s.admitted(LOCAL, "chat.test", &offer("chat.v3, chat.v1")).await;
    assert_eq!(response.header("sec-websocket-protocol"), Some("chat.v1"));
    let seen = s.backend.requests().last().unwrap().clone();
    assert_eq!(seen.header("sec-websocket-protocol").as_deref(), Some("chat.v1"));

    s.refused(LOCAL, "chat.test", &offer("chat.v3"), 400).await;
    s.refused(LOCAL, "chat.test", &[], 400).await;
    assert_eq!(s.refusals(RefusalReason::Subprotocol), 2);

    let response = s.admitted(LOCAL, "loose.test", &offer("chat.v3")).await;
    assert_eq!(response.header("sec-websocket-protocol"), None);
    let seen = s.backend.requests().last().unwrap().clone();
    assert_eq!(seen.header("sec-websocket-protocol"), None);
    assert_eq!(s.backend.accepts(), 2);
    s.proxy.stop().await;
}

/// A backend that answers every upgrade 101 with a correct accept key and
/// the subprotocol named by the request's `X-Pick` header.
async fn picking_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(pick_subprotocol(BufReader::new(stream)));
        }
    });
    addr
}

async fn pick_subprotocol(mut conn: BufReader<TcpStream>) {
    let (mut key, mut pick, mut line) = (String::new(), String::new(), String::new());
    while conn.read_line(&mut line).await.is_ok_and(|n| n > 2) {
        match line
            .split_once(':')
            .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
        {
            Some((name, value)) if name == "sec-websocket-key" => key = value,
            Some((name, value)) if name == "x-pick" => pick = value,
            _ => {}
        }
        line.clear();
    }
    let accept = derive_accept_key(key.as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {pick}\r\n\r\n"
    );
    let _ = conn.get_mut().write_all(answer.as_bytes()).await;
    let _ = tokio::io::copy(&mut conn, &mut tokio::io::sink()).await;
}

#[tokio::test]
async fn a_backend_choosing_an_unoffered_subprotocol_is_502() {
    let backend = picking_backend().await;
    let routes = route("chat", &[], "subprotocols = [\"chat.v2\", \"chat.v1\"]");
    let proxy = start_proxy(&toml("", "", &routes, backend)).await;
    // Never offered; offered by the client but removed by the allowlist.
    for (offer, pick) in [("chat.v1", "evil"), ("chat.v3, chat.v1", "chat.v3")] {
        let request = valid_upgrade("localhost", "/", &[("Sec-WebSocket-Protocol", offer), ("X-Pick", pick)]);
        let response = raw_exchange(proxy.addr("plain"), &request).await;
        assert_refusal(&response, 502, &format!("backend picked {pick} of {offer}"));
    }
    proxy.stop().await;
}

#[tokio::test]
async fn per_client_rate_limit_answers_429_with_retry_after() {
    let s = setup("[route.rate_limit]\nper_client = { rate = \"1/min\", burst = 2 }").await;
    s.admitted(LOCAL, "localhost", &[]).await;
    s.admitted(LOCAL, "localhost", &[]).await;
    let response = s.refused(LOCAL, "localhost", &[], 429).await;
    assert_retry_after(&response, 60);
    assert_eq!(s.backend.accepts(), 2);
    assert_eq!(s.refusals(RefusalReason::RateLimited), 1);
    // Another client has its own budget.
    s.admitted("127.0.0.2", "localhost", &[]).await;
    // Plain HTTP is not counted unless `limit_http` is set.
    for _ in 0..5 {
        assert_eq!(s.get(LOCAL).await.body_text(), "backend GET /plain");
    }
    assert_eq!(s.refusals(RefusalReason::RateLimited), 1);
    s.proxy.stop().await;
}

#[tokio::test]
async fn total_rate_limit_covers_all_clients() {
    let s = setup("[route.rate_limit]\ntotal = { rate = \"1/min\", burst = 2 }").await;
    s.admitted("127.0.0.1", "localhost", &[]).await;
    s.admitted("127.0.0.2", "localhost", &[]).await;
    let response = s.refused("127.0.0.3", "localhost", &[], 429).await;
    assert_retry_after(&response, 60);
    assert_eq!(s.backend.accepts(), 2);
    assert_eq!(s.refusals(RefusalReason::RateLimited), 1);
    s.proxy.stop().await;
}

#[tokio::test]
async fn limit_http_counts_plain_requests_too() {
    let s = setup("[route.rate_limit]\nper_client = { rate = \"1/min\", burst = 2 }\nlimit_http = true").await;
    s.admitted(LOCAL, "localhost", &[]).await;
    assert_eq!(s.get(LOCAL).await.status, 200);
    let before = s.backend.accepts();
    let response = s.get(LOCAL).await;
    assert_refusal(&response, 429, "third request with limit_http");
    assert_retry_after(&response, 60);
    assert_eq!(s.backend.accepts(), before, "a rate-limited GET reached the backend");
    s.refused(LOCAL, "localhost", &[], 429).await;
    assert_eq!(s.refusals(RefusalReason::RateLimited), 2);
    s.proxy.stop().await;
}

#[tokio::test]
async fn route_cap_answers_503_until_a_tunnel_closes() {
    let s = setup("[route.limits]\nmax_websockets = 2").await;
    let first = tunnel_from(LOCAL, s.addr()).await;
    let _second = tunnel_from("127.0.0.2", s.addr()).await;
    assert_eq!(s.stats.open_websockets("chat"), 2);
    s.refused("127.0.0.3", "localhost", &[], 503).await;
    assert_eq!(s.refusals(RefusalReason::RouteCap), 1);
    close_tunnel(first).await;
    wait_until("one tunnel left on chat", 1, || s.stats.open_websockets("chat")).await;
    let mut third = tunnel_from("127.0.0.3", s.addr()).await;
    assert_echo(&mut third, Message::text("admitted")).await;
    assert_eq!(s.backend.accepts(), 3);
    s.proxy.stop().await;
}

#[tokio::test]
async fn per_client_cap_answers_429_until_the_clients_tunnel_closes() {
    let s = setup("[route.limits]\nmax_websockets_per_client = 1").await;
    let first = tunnel_from(LOCAL, s.addr()).await;
    s.refused(LOCAL, "localhost", &[], 429).await;
    assert_eq!(s.refusals(RefusalReason::ClientCap), 1);
    let _other = tunnel_from("127.0.0.2", s.addr()).await; // another client is not affected
    close_tunnel(first).await;
    wait_until("tunnels on chat", 1, || s.stats.open_websockets("chat")).await;
    let mut again = tunnel_from(LOCAL, s.addr()).await;
    assert_echo(&mut again, Message::text("admitted")).await;
    assert_eq!(s.backend.accepts(), 3);
    s.proxy.stop().await;
}

/// One tunnel: echo a message, then a close handshake (`clean`) or a dropped TCP stream.
async fn one_tunnel(addr: SocketAddr, clean: bool) {
    let (mut ws, _) = ws_connect(addr, "/", &[]).await;
    assert_echo(&mut ws, Message::text("hello")).await;
    if clean {
        close_tunnel(ws).await;
    }
}

#[tokio::test]
async fn a_thousand_tunnels_release_every_count() {
    let s = setup("[route.limits]\nmax_websockets = 1000\nmax_websockets_per_client = 1000").await;
    let permits = Arc::new(tokio::sync::Semaphore::new(50));
    let mut tasks = tokio::task::JoinSet::new();
    within_for(Duration::from_secs(60), "1,000 tunnels, 50 at a time", async {
        for i in 0..1000 {
            let permit = permits.clone().acquire_owned().await.unwrap();
            let addr = s.addr();
            tasks.spawn(async move {
                one_tunnel(addr, i % 2 == 0).await;
                drop(permit);
            });
        }
        while let Some(result) = tasks.join_next().await {
            result.expect("tunnel task");
        }
    })
    .await;
    let stats = &s.stats;
    let counts = || {
        (
            stats.open_websockets("chat"),
            stats.client_websocket_entries("chat"),
            stats.open_connections(),
        )
    };
    wait_until("(tunnels, client entries, connections)", (0, 0, 0), counts).await;
    assert_eq!(s.backend.accepts(), 1000);
    s.proxy.stop().await;
}

#[tokio::test]
async fn global_cap_stops_accepting_until_a_connection_ends() {
    let s = setup_with("max_connections = 2", "", &route("chat", &[], ""), Behavior::Echo).await;
    let first = tunnel_from(LOCAL, s.addr()).await;
    let _second = tunnel_from(LOCAL, s.addr()).await;
    // The kernel may complete the TCP handshake from its backlog; wsgate must not answer.
    let mut third = RawConn::new(tcp_connect(s.addr()).await);
    third.send(valid_upgrade("localhost", "/", &[]).as_bytes()).await;
    let early = tokio::time::timeout(Duration::from_millis(300), third.read_head()).await;
    assert!(early.is_err(), "answered beyond max_connections: {early:?}");
    assert_eq!(s.stats.open_connections(), 2);
    assert_eq!(s.backend.accepts(), 2);
    close_tunnel(first).await;
    assert_eq!(third.read_head().await.status, 101);
    assert_eq!(s.backend.accepts(), 3);
    wait_until("open connections", 2, || s.stats.open_connections()).await;
    s.proxy.stop().await;
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off_at_the_listener_handshake_timeout() {
    let (global, listener) = ("handshake_timeout = \"10s\"", "handshake_timeout = \"1s\"");
    let s = setup_with(global, listener, &route("chat", &[], ""), Behavior::Echo).await;
    let trickle = async {
        let mut stream = tcp_connect(s.addr()).await;
        let request = valid_upgrade("localhost", "/", &[]);
        let started = Instant::now();
        let (mut rd, mut wr) = stream.split();
        let writer = async {
            for byte in request.bytes() {
                if wr.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let reader = async {
            let _ = tokio::io::copy(&mut rd, &mut tokio::io::sink()).await;
            started.elapsed()
        };
        tokio::select! {
            elapsed = reader => elapsed,
            () = writer => panic!("the whole request trickled in without the proxy closing"),
        }
    };
    let normal = async {
        let (mut ws, _) = ws_connect(s.addr(), "/", &[]).await;
        assert_echo(&mut ws, Message::text("not slow")).await;
        close_tunnel(ws).await;
    };
    let (elapsed, ()) = within_for(Duration::from_secs(5), "slow client cut off", async {
        tokio::join!(trickle, normal)
    })
    .await;
    let bounds = Duration::from_millis(900)..=Duration::from_secs(3);
    assert!(
        bounds.contains(&elapsed),
        "closed after {elapsed:?}, not about the 1s timeout"
    );
    let timeouts = || s.refusals(RefusalReason::HandshakeTimeout) >= 1;
    wait_until("handshake timeouts counted", true, timeouts).await;
    assert_eq!(s.backend.accepts(), 1);
    s.proxy.stop().await;
}

#[tokio::test]
async fn request_heads_over_16kib_get_431_by_default() {
    let s = setup("").await;
    let big = "a".repeat(20 * 1024);
    let request = valid_upgrade("localhost", "/", &[("X-Big", &big)]);
    let response = s.send(LOCAL, &request).await;
    assert_eq!(response.status, 431, "{response:?}");
    assert_eq!(s.backend.accepts(), 0);
    let fits = "a".repeat(12 * 1024);
    s.admitted(LOCAL, "localhost", &[("X-Big", &fits)]).await;
    s.proxy.stop().await;
}
