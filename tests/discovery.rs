//! Servers found in DNS: a real DNS server on loopback (hickory-server)
//! answers for `wsgate.test.`, and the test changes its SRV and A records
//! while a real wsgate process sends tunnels to real echo backends. SRV
//! targets join, leave, change weight and priority; short TTLs are
//! followed although `resolve_interval` is long; a resolver that stops
//! answering leaves the last answer in use, said once in the log.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::dns::{DnsServer, SrvTarget};
use support::hostile_peers::WsgateChild;
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const SERVICE: &str = "_ws._tcp.chat.wsgate.test.";
const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A TTL of 1 s is followed within this; `resolve_interval` is 60 s.
const TTL_AND_A_BIT: Duration = Duration::from_secs(5);

/// wsgate with one upstream, `servers`, asking `dns` for names.
async fn wsgate(dns: &DnsServer, servers: &str, upstream_extra: &str) -> WsgateChild {
    let toml = format!(
        "[global]\nlog_format = \"json\"\nshutdown_timeout = \"2s\"\nresolver = \"{resolver}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"chat\"\nupstream = \"chat\"\n\n\
         [[upstream]]\nname = \"chat\"\nservers = [{servers}]\n{upstream_extra}\n",
        resolver = dns.addr(),
    );
    WsgateChild::start(&toml, &["plain"], "info,wsgate::upstream=debug", None).await
}

/// An SRV target `name` (an A record to 127.0.0.1) at `backend`'s port.
fn target<'n>(name: &'n str, backend: &Backend, priority: u16, weight: u16) -> SrvTarget<'n> {
    SrvTarget {
        priority,
        weight,
        port: backend.addr.port(),
        target: name,
    }
}

async fn open(wsgate: &WsgateChild) -> WebSocketStream<TcpStream> {
    let (ws, response) = ws_connect(wsgate.addr("plain"), "/", &[]).await;
    assert_eq!(response.status(), 101);
    ws
}

async fn echoes(ws: &mut WebSocketStream<TcpStream>, text: &str) {
    within("send", ws.send(Message::text(text))).await.unwrap();
    match within("echo", ws.next()).await {
        Some(Ok(Message::Text(echoed))) => assert_eq!(echoed.as_str(), text),
        other => panic!("expected the echo of {text:?}, got {other:?}"),
    }
}

/// The servers `/metrics` shows for upstream `chat`: (server, address,
/// source, tier), sorted.
fn servers_of(metrics: &Exposition) -> Vec<(String, String, String, String)> {
    let mut servers: Vec<_> = metrics
        .matching("wsgate_upstream_servers", &[("upstream", "chat")])
        .filter(|s| s.value == 1.0)
        .map(|s| {
            let label = |name: &str| s.labels.get(name).cloned().unwrap_or_default();
            (label("server"), label("address"), label("source"), label("tier"))
        })
        .collect();
    servers.sort();
    servers
}

/// Scrapes until the servers of `chat` are `want` (within a TTL and a bit).
async fn wait_servers(wsgate: &WsgateChild, want: &[(&str, SocketAddr, u32)], what: &str) {
    let mut want: Vec<(String, String, String, String)> = want
        .iter()
        .map(|(name, addr, tier)| {
            (
                format!("{name}:{}", addr.port()),
                addr.to_string(),
                "srv".to_owned(),
                tier.to_string(),
            )
        })
        .collect();
    want.sort();
    scrape_until(
        wsgate.admin_addr(),
        TTL_AND_A_BIT,
        what,
        |metrics| servers_of(metrics) == want,
        || wsgate.log_tail(20),
    )
    .await;
}

#[tokio::test]
async fn srv_targets_join_leave_and_change_weight_and_priority_within_their_ttl() {
    let (a, b) = (Backend::echo().await, Backend::echo().await);
    let mut dns = DnsServer::start().await;
    dns.set_a("a.wsgate.test.", 1, &[LOCALHOST]).await;
    dns.set_a("b.wsgate.test.", 1, &[LOCALHOST]).await;
    dns.set_srv(SERVICE, 1, &[target("a.wsgate.test.", &a, 10, 1)]).await;
    let wsgate = wsgate(
        &dns,
        "{ srv = \"_ws._tcp.chat.wsgate.test\" }",
        "resolve_interval = \"60s\"",
    )
    .await;
    let metrics = scrape(wsgate.admin_addr()).await;
    assert_eq!(
        servers_of(&metrics),
        [(
            format!("a.wsgate.test:{}", a.addr.port()),
            a.addr.to_string(),
            "srv".to_owned(),
            "0".to_owned()
        )]
    );
    let mut first = open(&wsgate).await;
    echoes(&mut first, "on a").await;
    assert_eq!((a.accepts(), b.accepts()), (1, 0));

    // b joins: least connections sends the next tunnel to it.
    dns.set_srv(
        SERVICE,
        1,
        &[target("a.wsgate.test.", &a, 10, 1), target("b.wsgate.test.", &b, 10, 1)],
    )
    .await;
    wait_servers(
        &wsgate,
        &[("a.wsgate.test", a.addr, 0), ("b.wsgate.test", b.addr, 0)],
        "b joins",
    )
    .await;
    let mut on_b = open(&wsgate).await;
    echoes(&mut on_b, "on b").await;
    assert_eq!((a.accepts(), b.accepts()), (1, 1));

    // b's priority drops it to the first backup tier: new tunnels go to a
    // however many it holds.
    dns.set_srv(
        SERVICE,
        1,
        &[target("a.wsgate.test.", &a, 10, 1), target("b.wsgate.test.", &b, 20, 1)],
    )
    .await;
    wait_servers(
        &wsgate,
        &[("a.wsgate.test", a.addr, 0), ("b.wsgate.test", b.addr, 1)],
        "b a backup",
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(open(&wsgate).await);
    }
    assert_eq!((a.accepts(), b.accepts()), (3, 1), "a primary takes them all");

    // Back to one tier, b with weight 3: open tunnels per weight are a 3/1,
    // b 1/3, so the next 8 all go to b (9/3 only ties a's 3/1).
    dns.set_srv(
        SERVICE,
        1,
        &[target("a.wsgate.test.", &a, 10, 1), target("b.wsgate.test.", &b, 10, 3)],
    )
    .await;
    wait_servers(
        &wsgate,
        &[("a.wsgate.test", a.addr, 0), ("b.wsgate.test", b.addr, 0)],
        "one tier again",
    )
    .await;
    for _ in 0..8 {
        held.push(open(&wsgate).await);
    }
    assert_eq!((a.accepts(), b.accepts()), (3, 9), "b's weight of 3 is followed");

    // a leaves: its tunnels stay, new ones go to b.
    dns.set_srv(SERVICE, 1, &[target("b.wsgate.test.", &b, 10, 3)]).await;
    wait_servers(&wsgate, &[("b.wsgate.test", b.addr, 0)], "a leaves").await;
    held.push(open(&wsgate).await);
    assert_eq!((a.accepts(), b.accepts()), (3, 10));
    echoes(&mut first, "still on a").await;
    echoes(&mut on_b, "still on b").await;
    dns.stop().await;
}

#[tokio::test]
async fn a_resolver_that_stops_answering_leaves_the_last_answer_said_once() {
    let a = Backend::echo().await;
    let mut dns = DnsServer::start().await;
    dns.set_a("a.wsgate.test.", 1, &[LOCALHOST]).await;
    dns.set_srv(SERVICE, 1, &[target("a.wsgate.test.", &a, 10, 1)]).await;
    // A short resolve_interval: failed tries come every second (plus the
    // query timeouts), so a few happen while the test waits.
    let wsgate = wsgate(
        &dns,
        "{ srv = \"_ws._tcp.chat.wsgate.test\" }",
        "resolve_interval = \"1s\"",
    )
    .await;
    let mut ws = open(&wsgate).await;
    echoes(&mut ws, "before").await;

    dns.stop().await;
    let failures = |wsgate: &WsgateChild, message: &str| {
        wsgate
            .log_lines()
            .iter()
            .filter(|l| l["message"] == message && l["server"] == "_ws._tcp.chat.wsgate.test")
            .count()
    };
    wsgate
        .wait_for_log_within(Duration::from_secs(20), "the first failure", |l| {
            l["message"] == "cannot resolve; keeping the servers known so far"
        })
        .await;
    poll_until(Duration::from_secs(30), "two more failed tries", || {
        failures(&wsgate, "still cannot resolve") >= 2
    })
    .await;
    assert_eq!(
        failures(&wsgate, "cannot resolve; keeping the servers known so far"),
        1,
        "said once\n{}",
        wsgate.log_tail(30)
    );

    // The last answer still serves: old and new tunnels reach a.
    echoes(&mut ws, "during").await;
    let mut fresh = open(&wsgate).await;
    echoes(&mut fresh, "new during").await;
    assert_eq!(a.accepts(), 2);
    let metrics = scrape(wsgate.admin_addr()).await;
    assert_eq!(servers_of(&metrics).len(), 1, "a is still the server");

    // A reload keeps the resolved set until the next answer, which does not come.
    wsgate.signal(libc::SIGHUP);
    wsgate
        .wait_for_log("the reload", |l| l["message"] == "configuration reloaded")
        .await;
    let mut after_reload = open(&wsgate).await;
    echoes(&mut after_reload, "after the reload").await;
    assert_eq!(a.accepts(), 3, "the reloaded upstream still knows a");
    let metrics = scrape(wsgate.admin_addr()).await;
    assert_eq!(servers_of(&metrics).len(), 1, "a is still the server after the reload");
}

#[tokio::test]
async fn host_names_go_through_the_configured_resolver_and_follow_their_ttl() {
    let a = Backend::echo().await;
    let mut dns = DnsServer::start().await;
    dns.set_a("chat.wsgate.test.", 1, &[LOCALHOST]).await;
    let wsgate = wsgate(
        &dns,
        &format!("{{ address = \"chat.wsgate.test:{}\" }}", a.addr.port()),
        "resolve_interval = \"60s\"",
    )
    .await;
    let metrics = scrape(wsgate.admin_addr()).await;
    let server = format!("chat.wsgate.test:{}", a.addr.port());
    assert_eq!(
        servers_of(&metrics),
        [(server.clone(), a.addr.to_string(), "dns".to_owned(), "0".to_owned())]
    );
    let mut ws = open(&wsgate).await;
    echoes(&mut ws, "via the name").await;
    assert_eq!(a.accepts(), 1);

    // The name moves to 127.0.0.2, where a second backend listens on the same port.
    let moved = SocketAddr::from(([127, 0, 0, 2], a.addr.port()));
    let listener = tokio::net::TcpListener::bind(moved).await.expect("bind 127.0.0.2");
    let b = Backend::on(listener, Behavior::Echo);
    dns.set_a("chat.wsgate.test.", 1, &[Ipv4Addr::new(127, 0, 0, 2)]).await;
    scrape_until(
        wsgate.admin_addr(),
        TTL_AND_A_BIT,
        "the name's new address",
        |m| servers_of(m) == [(server.clone(), moved.to_string(), "dns".to_owned(), "0".to_owned())],
        || wsgate.log_tail(20),
    )
    .await;
    let mut moved_ws = open(&wsgate).await;
    echoes(&mut moved_ws, "via the new address").await;
    assert_eq!((a.accepts(), b.accepts()), (1, 1));
    echoes(&mut ws, "the old tunnel stays").await;
    dns.stop().await;
}
