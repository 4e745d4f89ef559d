//! `[upstream.rebalance]` against real parts: two echo backends, one of
//! them down while 200 inspected WebSockets open (all on the other); when
//! it comes up, the over-full server sheds its excess with 1012
//! "rebalancing", the clients reconnect and land on the server with room,
//! and no message of a socket left alone is lost. Once with the proxy in
//! this process, once with two `wsgate` binaries in front (clients split
//! across them: each instance balances its own tunnels).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use support::hostile_peers::{raise_nofile_limit, WsgateChild};
use support::{
    bind_proxy, next_message, run_proxy, scrape, scrape_until, within, ws_connect, Backend, Behavior, Exposition,
    ReservedAddr,
};

const SOCKETS: usize = 200;
const MAX_SKEW: f64 = 1.25;
/// `after`, and the rate: 100 a second.
const AFTER: Duration = Duration::from_secs(1);
const RATE_PER_SECOND: f64 = 100.0;

/// The route (inspected, so its tunnels can be closed between frames) and
/// the upstream: servers `a` and `b`, a TCP health check every 100 ms that
/// takes a server down or up at the first result, and rebalancing.
fn route_and_upstream(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        "[[route]]\nname = \"all\"\nupstream = \"backends\"\n[route.inspect]\n\n\
         [[upstream]]\nname = \"backends\"\nservers = [{{ address = \"{a}\" }}, {{ address = \"{b}\" }}]\n\
         balance = \"least_connections\"\n\
         [upstream.health_check]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n\
         [upstream.rebalance]\nmax_skew = {MAX_SKEW}\nafter = \"{}ms\"\nrate = \"{RATE_PER_SECOND}/s\"\n",
        AFTER.as_millis()
    )
}

/// What one client saw over the whole test.
#[derive(Debug, Default)]
struct ClientReport {
    /// The close frames wsgate sent it: (code, reason).
    closes: Vec<(u16, String)>,
    connections: usize,
    /// Messages sent and echoed back, in order.
    echoed: u64,
}

/// Clients that each send numbered messages and wait for each echo; a
/// client closed with 1012 reconnects to the same proxy and goes on from
/// the message not yet echoed.
struct Clients {
    stop: watch::Sender<bool>,
    /// Clients with a WebSocket open now.
    connected: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<ClientReport>>,
}

impl Clients {
    fn new() -> Clients {
        Clients {
            stop: watch::Sender::new(false),
            connected: Arc::default(),
            tasks: Vec::new(),
        }
    }

    /// Opens `count` more clients on `proxy`, and waits until they are connected.
    async fn open(&mut self, proxy: SocketAddr, count: usize) {
        let before = self.connected.load(Ordering::SeqCst);
        for _ in 0..count {
            let id = self.tasks.len();
            let (stop, connected) = (self.stop.subscribe(), self.connected.clone());
            self.tasks.push(tokio::spawn(client(proxy, id, stop, connected)));
        }
        within("the clients connecting", async {
            while self.connected.load(Ordering::SeqCst) < before + count {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    fn connected(&self) -> usize {
        self.connected.load(Ordering::SeqCst)
    }

    /// Stops every client (a normal close) and returns what each saw; a
    /// client's panic fails the test here.
    async fn finish(self) -> Vec<ClientReport> {
        self.stop.send_replace(true);
        let mut reports = Vec::new();
        for task in self.tasks {
            reports.push(within("a client finishing", task).await.expect("client task"));
        }
        reports
    }
}

async fn client(
    proxy: SocketAddr,
    id: usize,
    mut stop: watch::Receiver<bool>,
    connected: Arc<AtomicUsize>,
) -> ClientReport {
    let mut report = ClientReport::default();
    let mut next = 0u64;
    loop {
        let (mut ws, _) = ws_connect(proxy, "/", &[]).await;
        report.connections += 1;
        connected.fetch_add(1, Ordering::SeqCst);
        loop {
            if *stop.borrow() {
                within("a client's normal close", ws.close(None)).await.expect("close");
                while let Some(Ok(_)) = within("the close answer", ws.next()).await {}
                connected.fetch_sub(1, Ordering::SeqCst);
                return report;
            }
            let text = format!("{id}:{next}");
            within("sending a message", ws.send(Message::text(text.clone())))
                .await
                .unwrap_or_else(|e| panic!("client {id}: send {text}: {e}"));
            match next_message(&mut ws).await {
                Message::Text(echo) if echo.as_str() == text => next += 1,
                Message::Close(Some(frame)) => {
                    report.closes.push((u16::from(frame.code), frame.reason.to_string()));
                    connected.fetch_sub(1, Ordering::SeqCst);
                    // Read to the end: the close handshake completes.
                    while let Some(Ok(_)) = within("the end after a close", ws.next()).await {}
                    break;
                }
                other => panic!("client {id}: sent {text}, got {other:?}"),
            }
            report.echoed = next;
            // A message every ~200 ms per client, or at once when told to stop.
            let _ = tokio::time::timeout(Duration::from_millis(200), stop.wait_for(|stop| *stop)).await;
        }
    }
}

/// Open tunnels to `server` on one proxy's `/metrics`.
fn open_on(metrics: &Exposition, server: SocketAddr) -> f64 {
    metrics.sum("wsgate_open_tunnels", &[("server", &server.to_string())])
}

/// The most tunnels a server with weight 1 of 2 may hold: ceil(max_skew × share).
fn limit(total: usize) -> f64 {
    (MAX_SKEW * total as f64 / 2.0).ceil()
}

/// Every close a client got was 1012 "rebalancing", and it reconnected
/// after each; the clients left alone had every message echoed in order
/// (a lost or reordered one fails the client).
fn check_reports(reports: &[ClientReport]) -> usize {
    let mut closed = 0;
    for (id, report) in reports.iter().enumerate() {
        for (code, reason) in &report.closes {
            assert_eq!((*code, reason.as_str()), (1012, "rebalancing"), "client {id}");
        }
        assert_eq!(
            report.connections,
            report.closes.len() + 1,
            "client {id} reconnected after each close"
        );
        assert!(report.echoed > 0, "client {id} exchanged messages");
        closed += report.closes.len();
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_excess_moves_to_a_server_back_from_being_down() {
    raise_nofile_limit();
    let a = Backend::echo().await;
    // Held, not listening: b is down, and its port stays its own.
    let b_reserved = ReservedAddr::new();
    let b_addr = b_reserved.addr;
    let toml = format!(
        "[global]\nshutdown_timeout = \"2s\"\n\n[[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        route_and_upstream(a.addr, b_addr)
    );
    let (server, names) = bind_proxy(&toml).await;
    let admin = server.admin_addr().expect("[admin]");
    let proxy = run_proxy(server, names);
    let addr = proxy.addr("plain");
    let healthy = |m: &Exposition, up: f64| {
        m.value(
            "wsgate_server_healthy",
            &[("upstream", "backends"), ("server", &b_addr.to_string())],
        ) == Some(up)
    };
    scrape_until(
        admin,
        Duration::from_secs(5),
        "b marked down",
        |m| healthy(m, 0.0),
        String::new,
    )
    .await;

    let mut clients = Clients::new();
    clients.open(addr, SOCKETS).await;
    let m = scrape(admin).await;
    assert_eq!(open_on(&m, a.addr), SOCKETS as f64, "all on a while b is down");
    // Long past `after`: nothing is shed toward a server that is down.
    tokio::time::sleep(AFTER * 2).await;
    assert_eq!(scrape(admin).await.sum("wsgate_rebalanced_tunnels_total", &[]), 0.0);

    let b = Backend::on(b_reserved.listen(), Behavior::Echo);
    let back = Instant::now();
    let excess = SOCKETS as f64 - limit(SOCKETS);
    let allowed = AFTER + Duration::from_secs_f64(excess / RATE_PER_SECOND) + Duration::from_secs(3);
    let balanced = scrape_until(
        admin,
        allowed,
        "both servers within max_skew of their share, and the round reported",
        |m| {
            // The round is reported once its last asked tunnel has ended:
            // the counts can be within max_skew a moment before.
            clients.connected() == SOCKETS
                && m.sum("wsgate_rebalanced_tunnels_total", &[]) > 0.0
                && open_on(m, a.addr) <= limit(SOCKETS)
                && open_on(m, b.addr) <= limit(SOCKETS)
                && open_on(m, a.addr) + open_on(m, b.addr) == SOCKETS as f64
        },
        || format!("connected: {}", clients.connected()),
    )
    .await;
    assert!(back.elapsed() >= AFTER, "not before the imbalance lasted `after`");
    let shed = balanced.get(
        "wsgate_rebalanced_tunnels_total",
        &[("upstream", "backends"), ("server", &a.addr.to_string())],
    );
    assert_eq!(shed, excess, "exactly the excess of a, newest first");
    // Settled: another `after` moves nothing more.
    tokio::time::sleep(AFTER + Duration::from_millis(500)).await;
    let m = scrape(admin).await;
    assert_eq!(m.sum("wsgate_rebalanced_tunnels_total", &[]), excess);
    assert_eq!(
        m.sum("wsgate_close_codes_total", &[("side", "wsgate"), ("code", "1012")]),
        excess
    );

    let closed = check_reports(&clients.finish().await);
    assert_eq!(closed as f64, excess, "every shed tunnel's client got its 1012");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_each_balance_their_own_and_the_fleet_converges() {
    raise_nofile_limit();
    let a = Backend::echo().await;
    // Held, not listening: b is down, and its port stays its own.
    let b_reserved = ReservedAddr::new();
    let b_addr = b_reserved.addr;
    let toml = format!(
        "[global]\nshutdown_timeout = \"2s\"\nlog_format = \"json\"\n\n\
         [[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        route_and_upstream(a.addr, b_addr)
    );
    let first = WsgateChild::start(&toml, &["plain"], "info", None).await;
    let second = WsgateChild::start(&toml, &["plain"], "info", None).await;
    let instances = [&first, &second];
    let b_down = |m: &Exposition| {
        m.value(
            "wsgate_server_healthy",
            &[("upstream", "backends"), ("server", &b_addr.to_string())],
        ) == Some(0.0)
    };
    for wsgate in instances {
        scrape_until(
            wsgate.admin_addr(),
            Duration::from_secs(5),
            "b marked down",
            b_down,
            || wsgate.log_tail(20),
        )
        .await;
    }

    let each = SOCKETS / 2;
    let mut clients = Clients::new();
    for wsgate in instances {
        clients.open(wsgate.addr("plain"), each).await;
    }
    let b = Backend::on(b_reserved.listen(), Behavior::Echo);
    let excess_each = each as f64 - limit(each);
    let allowed = AFTER + Duration::from_secs_f64(2.0 * excess_each / RATE_PER_SECOND) + Duration::from_secs(4);
    for wsgate in instances {
        scrape_until(
            wsgate.admin_addr(),
            allowed,
            "each instance within max_skew of its own tunnels",
            |m| {
                clients.connected() == SOCKETS
                    && open_on(m, a.addr) <= limit(each)
                    && open_on(m, b.addr) <= limit(each)
                    && open_on(m, a.addr) + open_on(m, b.addr) == each as f64
            },
            || format!("connected: {}\n{}", clients.connected(), wsgate.log_tail(20)),
        )
        .await;
    }
    // The fleet: each instance rounds its limit up, by one tunnel at most.
    let mut on_a = 0.0;
    for wsgate in instances {
        // The round is reported once its last asked tunnel has ended: the
        // counts can be within max_skew a moment before.
        let round = wsgate
            .wait_for_log("the rebalancing round's line", |line| line["message"] == "rebalanced")
            .await;
        let m = scrape(wsgate.admin_addr()).await;
        on_a += open_on(&m, a.addr);
        assert_eq!(m.sum("wsgate_rebalanced_tunnels_total", &[]), excess_each);
        assert_eq!(round["level"], "INFO", "{round}");
        assert_eq!(round["upstream"], "backends", "{round}");
        assert_eq!(round["closed"].as_f64(), Some(excess_each), "{round}");
        let servers = round["servers"].as_str().unwrap_or_default();
        assert!(servers.contains(&format!("{} {each} open", a.addr)), "{round}");
        assert!(servers.contains(&b.addr.to_string()), "{round}");
    }
    assert!(
        on_a <= limit(SOCKETS) + instances.len() as f64,
        "a holds {on_a} of {SOCKETS}"
    );

    let closed = check_reports(&clients.finish().await);
    assert_eq!(closed as f64, 2.0 * excess_each);
    for wsgate in [first, second] {
        wsgate.stop().await;
    }
}
