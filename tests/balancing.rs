//! Load balancing over an upstream's servers, through a running proxy to real
//! backends on 127.0.0.1: least connections (with weights), round robin,
//! consistent hashing, retries and active health checks taking a server out
//! and back, backups and draining, 503 when every server is down, and tunnels
//! left alone when their server goes down.
//!
//! Which server a tunnel went to is read off the backends' accept counts or
//! off `Stats::servers` (open tunnels per server, in configuration order).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wsgate::telemetry::stats::{ServerStatus, Stats};

use support::*;

type Ws = WebSocketStream<TcpStream>;

/// The `User-Agent` of wsgate's health checks, which reach the backends too.
const PROBE: &str = "wsgate-health-check";

/// A WebSocket health check fast enough for tests.
const WS_CHECK: &str = "[upstream.health_check]\nkind = \"websocket\"\npath = \"/\"\ninterval = \"200ms\"\n\
                        timeout = \"500ms\"\nrise = 2\nfall = 2\n";

/// One entry of `servers`, with extra keys such as `weight = 2`.
fn server(addr: SocketAddr, extra: &str) -> String {
    match extra {
        "" => format!("{{ address = \"{addr}\" }}"),
        extra => format!("{{ address = \"{addr}\", {extra} }}"),
    }
}

/// Plain entries, one per backend.
fn plain(backends: &[&Backend]) -> Vec<String> {
    backends.iter().map(|b| server(b.addr, "")).collect()
}

/// Listener `plain`, one route for any host, upstream `backends` over
/// `servers` followed by `extra` (keys, then sub-tables).
fn toml(servers: &[String], extra: &str) -> String {
    format!(
        "[global]\nshutdown_timeout = \"2s\"\n\n[[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"all\"\nupstream = \"backends\"\n\n\
         [[upstream]]\nname = \"backends\"\nservers = [{}]\n{extra}\n",
        servers.join(", ")
    )
}

/// A running proxy with its statistics.
struct Proxy {
    handle: ProxyHandle,
    stats: Stats,
}

async fn proxy(toml: &str) -> Proxy {
    let (server, names) = bind_proxy(toml).await;
    let stats = server.stats();
    Proxy {
        handle: run_proxy(server, names),
        stats,
    }
}

impl Proxy {
    fn addr(&self) -> SocketAddr {
        self.handle.addr("plain")
    }

    fn servers(&self) -> Vec<ServerStatus> {
        self.stats.servers("backends")
    }

    /// Open tunnels per server, in configuration order.
    fn open(&self) -> Vec<usize> {
        self.servers().iter().map(|s| s.open_tunnels).collect()
    }

    /// A WebSocket through the proxy; anything but 101 fails the test.
    async fn connect(&self, headers: &[(&str, &str)]) -> Ws {
        ws_connect(self.addr(), "/", headers).await.0
    }

    /// `n` WebSockets, at most 20 handshakes at a time, all held open. The
    /// test runtime has one thread and a pick counts its tunnel without
    /// yielding, so concurrent picks see each other's counts exactly.
    async fn hold(&self, n: usize) -> Vec<Ws> {
        futures_util::stream::iter(0..n)
            .map(|_| self.connect(&[]))
            .buffer_unordered(20)
            .collect()
            .await
    }

    /// The index of the server a WebSocket with `headers` lands on. The
    /// socket is closed and every tunnel has ended when this returns, so the
    /// next pick sees no load.
    async fn landing(&self, headers: &[(&str, &str)]) -> usize {
        let ws = self.connect(headers).await;
        let open = self.open();
        assert_eq!(open.iter().sum::<usize>(), 1, "open tunnels {open:?}");
        drop(ws);
        self.settle().await;
        open.iter().position(|&n| n == 1).unwrap()
    }

    /// Where a WebSocket with each of `ids` in `X-User-Id` lands, one after another.
    async fn landings(&self, ids: &[String]) -> Vec<usize> {
        let mut landed = Vec::new();
        for id in ids {
            landed.push(self.landing(&[("X-User-Id", id.as_str())]).await);
        }
        landed
    }

    /// Waits until no server has an open tunnel.
    async fn settle(&self) {
        poll_until(TIMEOUT, "every tunnel ended", || self.open().iter().all(|&n| n == 0)).await;
    }

    /// Waits until server `i` is `healthy` by the active checks.
    async fn wait_health(&self, limit: Duration, i: usize, healthy: bool) {
        let what = format!("server {i} healthy == {healthy}");
        poll_until(limit, &what, || self.servers()[i].healthy == healthy).await;
    }
}

/// WebSocket upgrades a backend got from clients, health checks left out.
fn upgrades(backend: &Backend) -> usize {
    let requests = backend.requests();
    let from_clients = |r: &&SeenRequest| r.header("user-agent").as_deref() != Some(PROBE);
    requests
        .iter()
        .filter(|r| r.headers.contains_key("upgrade"))
        .filter(from_clients)
        .count()
}

/// Stops a backend: its port refuses from now on; tunnels already on it go on.
async fn kill(backend: Backend) -> SocketAddr {
    let addr = backend.addr;
    drop(backend);
    within("the stopped backend's port refusing", async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    addr
}

/// Each count within 1 of what is expected.
fn assert_near(what: &str, got: &[usize], want: &[usize]) {
    let near = got.len() == want.len() && got.iter().zip(want).all(|(g, w)| g.abs_diff(*w) <= 1);
    assert!(near, "{what}: {got:?}, expected {want:?} (± 1)");
}

async fn echoes3() -> [Backend; 3] {
    [Backend::echo().await, Backend::echo().await, Backend::echo().await]
}

#[tokio::test]
async fn least_connections_spreads_held_tunnels_evenly() {
    let backends = echoes3().await;
    let proxy = proxy(&toml(&plain(&backends.each_ref()), "")).await;
    let held = proxy.hold(300).await;
    let accepts: Vec<usize> = backends.iter().map(Backend::accepts).collect();
    assert_near("backend accepts", &accepts, &[100, 100, 100]);
    assert_near("open tunnels in stats", &proxy.open(), &[100, 100, 100]);
    drop(held);
    proxy.settle().await;
    proxy.handle.stop().await;
}

#[tokio::test]
async fn least_connections_follows_weights() {
    let backends = echoes3().await;
    let servers = [
        server(backends[0].addr, "weight = 2"),
        server(backends[1].addr, ""),
        server(backends[2].addr, ""),
    ];
    let proxy = proxy(&toml(&servers, "balance = \"least_connections\"")).await;
    let held = proxy.hold(400).await;
    let accepts: Vec<usize> = backends.iter().map(Backend::accepts).collect();
    assert_near("backend accepts", &accepts, &[200, 100, 100]);
    assert_near("open tunnels in stats", &proxy.open(), &[200, 100, 100]);
    drop(held);
    proxy.settle().await;
    proxy.handle.stop().await;
}

#[tokio::test]
async fn round_robin_takes_the_servers_in_turn() {
    let backends = echoes3().await;
    let proxy = proxy(&toml(&plain(&backends.each_ref()), "balance = \"round_robin\"")).await;
    let mut order = Vec::new();
    for _ in 0..9 {
        let before: Vec<usize> = backends.iter().map(Backend::accepts).collect();
        let ws = proxy.connect(&[]).await;
        let moved: Vec<usize> = (0..3).filter(|&i| backends[i].accepts() != before[i]).collect();
        assert_eq!(moved.len(), 1, "one connection moved the accept counts of {moved:?}");
        order.push(moved[0]);
        drop(ws);
        proxy.settle().await;
    }
    let turn = &order[..3];
    assert!(
        turn[0] != turn[1] && turn[1] != turn[2] && turn[0] != turn[2],
        "not every server in the first turn: {order:?}"
    );
    assert!(
        (3..9).all(|i| order[i] == order[i % 3]),
        "not the same cycle: {order:?}"
    );
    proxy.handle.stop().await;
}

#[tokio::test]
async fn hash_is_sticky_and_a_new_server_takes_only_its_share() {
    let backends = [
        Backend::echo().await,
        Backend::echo().await,
        Backend::echo().await,
        Backend::echo().await,
    ];
    let hash = "balance = \"hash\"\nhash_key = \"header:X-User-Id\"\nhash_load_factor = 1.25";
    let three = proxy(&toml(&plain(&[&backends[0], &backends[1], &backends[2]]), hash)).await;
    let four = proxy(&toml(&plain(&backends.each_ref()), hash)).await;

    let alice = [("X-User-Id", "alice")];
    let first = three.landing(&alice).await;
    for i in 1..100 {
        assert_eq!(three.landing(&alice).await, first, "connection {i} of alice");
    }

    // Each proxy's connections one after another, the two proxies side by side.
    let ids: Vec<String> = (0..1000).map(|n| format!("user-{n}")).collect();
    let (before, after) = tokio::join!(three.landings(&ids), four.landings(&ids));
    let (mut moved, mut spread) = (0, [0; 3]);
    for ((id, &from), &to) in ids.iter().zip(&before).zip(&after) {
        spread[from] += 1;
        if from != to {
            assert_eq!(to, 3, "{id} moved from server {from} to {to}, not to the new server");
            moved += 1;
        }
    }
    let fraction = moved as f64 / 1000.0;
    assert!(
        (0.15..=0.35).contains(&fraction),
        "{moved} of 1000 ids moved when a fourth server joined"
    );
    assert!(spread.iter().all(|&n| n > 200), "ids per server of three: {spread:?}");

    // Without the key: least connections.
    let held = three.hold(30).await;
    assert_eq!(three.open(), [10, 10, 10], "requests without X-User-Id");
    drop(held);
    three.settle().await;
    three.handle.stop().await;
    four.handle.stop().await;
}

#[tokio::test]
async fn a_dead_server_is_retried_around_marked_down_and_taken_back() {
    let [a, b, c] = echoes3().await;
    let extra = format!("retries = 2\npassive_backoff = \"1s\"\n{WS_CHECK}");
    let proxy = proxy(&toml(&plain(&[&a, &b, &c]), &extra)).await;
    let killed = Instant::now();
    let dead = kill(b).await;

    let upgrade = valid_upgrade("localhost", "/", &[]);
    for i in 0..200 {
        let mut conn = RawConn::new(tcp_connect(proxy.addr()).await);
        conn.send(upgrade.as_bytes()).await;
        let head = conn.read_head().await;
        assert_eq!(head.status, 101, "handshake {i} of 200 with a server dead: {head:?}");
    }
    assert_eq!(upgrades(&a) + upgrades(&c), 200);
    let limit = Duration::from_secs(2).saturating_sub(killed.elapsed());
    proxy.wait_health(limit, 1, false).await;
    assert!(!proxy.servers()[1].available);

    let back = Backend::echo_at(dead).await;
    proxy.wait_health(Duration::from_secs(5), 1, true).await;
    poll_until(Duration::from_secs(5), "server 1 available again", || {
        proxy.servers()[1].available
    })
    .await;
    proxy.settle().await;
    let held = proxy.hold(30).await;
    assert_eq!(proxy.open(), [10, 10, 10], "open tunnels after the server came back");
    assert_eq!(upgrades(&back), 10, "tunnels on the server that came back");
    drop(held);
    proxy.settle().await;
    proxy.handle.stop().await;
}

#[tokio::test]
async fn backups_serve_only_when_no_primary_is_up_and_draining_servers_get_nothing() {
    let [primary, backup, draining] = echoes3().await;
    let servers = [
        server(primary.addr, ""),
        server(backup.addr, "backup = true"),
        server(draining.addr, "drain = true"),
    ];
    let proxy = proxy(&toml(&servers, WS_CHECK)).await;
    let status = &proxy.servers()[2];
    assert!(status.healthy && !status.available, "draining server: {status:?}");

    let on_primary = proxy.hold(10).await;
    assert_eq!(proxy.open(), [10, 0, 0]);

    kill(primary).await;
    proxy.wait_health(Duration::from_secs(5), 0, false).await;
    let on_backup = proxy.hold(10).await;
    assert_eq!(proxy.open(), [10, 10, 0], "the primary keeps its tunnels");
    assert_eq!(upgrades(&backup), 10);
    assert_eq!(upgrades(&draining), 0, "a draining server got a tunnel");
    assert!(proxy.servers()[2].healthy, "the draining server passes its checks");
    drop((on_primary, on_backup));
    proxy.settle().await;
    proxy.handle.stop().await;
}

#[tokio::test]
async fn every_server_down_answers_503_at_once() {
    let a = Backend::start(Behavior::Status(503, "down for maintenance")).await;
    let b = Backend::start(Behavior::Status(503, "down for maintenance")).await;
    let extra = "connect_timeout = \"5s\"\n[upstream.health_check]\nkind = \"http\"\npath = \"/health\"\n\
                 interval = \"200ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n";
    let proxy = proxy(&toml(&plain(&[&a, &b]), extra)).await;
    proxy.wait_health(Duration::from_secs(5), 0, false).await;
    proxy.wait_health(Duration::from_secs(5), 1, false).await;

    let started = Instant::now();
    let response = raw_exchange(proxy.addr(), &valid_upgrade("localhost", "/", &[])).await;
    let took = started.elapsed();
    assert_eq!(response.status, 503, "{response:?}");
    assert!(took < Duration::from_secs(1), "503 took {took:?}");
    assert_eq!(
        upgrades(&a) + upgrades(&b),
        0,
        "an upgrade reached a server that is down"
    );
    assert!(
        a.requests().len() + b.requests().len() >= 4,
        "the health checks did run"
    );
    proxy.handle.stop().await;
}

#[tokio::test]
async fn a_tunnel_outlives_its_server_going_down() {
    let mut backends = [Some(Backend::echo().await), Some(Backend::echo().await)];
    let servers: Vec<String> = backends.iter().flatten().map(|b| server(b.addr, "")).collect();
    let proxy = proxy(&toml(&servers, WS_CHECK)).await;
    let mut ws = proxy.connect(&[]).await;
    let on = proxy.open().iter().position(|&n| n == 1).expect("one open tunnel");
    assert_echo(&mut ws, Message::text("before")).await;

    // The listener goes; the backend's open connections stay.
    kill(backends[on].take().unwrap()).await;
    proxy.wait_health(Duration::from_secs(5), on, false).await;
    assert_echo(&mut ws, Message::text("after its server was marked down")).await;
    assert_eq!(proxy.open()[on], 1, "the tunnel is still counted on its server");

    let others = proxy.hold(5).await;
    assert_eq!(proxy.open()[1 - on], 5, "new tunnels go to the server that is up");
    let survivor = backends[1 - on].as_ref().unwrap();
    assert_eq!(upgrades(survivor), 5);

    drop((ws, others));
    proxy.settle().await;
    proxy.handle.stop().await;
}
