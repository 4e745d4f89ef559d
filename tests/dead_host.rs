//! A backend host that vanishes without a FIN or a reset (power lost, a
//! path that drops every packet), made for real: the backend runs in a
//! network namespace of the test's own and an nftables rule drops every
//! packet to and from it ([`support::netns`]). wsgate, the real binary,
//! must find out through TCP keepalive and `TCP_USER_TIMEOUT` and tell
//! the clients (1011 on an inspected tunnel, a closed connection on a plain
//! one) within the configured time, say why in the log and on `/metrics`,
//! leave tunnels to other backends alone, and not pile health checks up on
//! the dead server.
//!
//! Needs root, `ip` and `nft`: without them it fails saying so.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::hostile_peers::WsgateChild;
use support::netns::DeadHostNet;
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The timers of the upstream in the namespace: probes after 1 s of
/// silence, 1 s apart, two of them; data unacknowledged for 3 s ends the
/// connection (which, with probes on, also bounds an idle connection).
const TCP_KEYS: &str = "tcp_keepalive = \"1s\"\ntcp_keepalive_interval = \"1s\"\n\
                        tcp_keepalive_count = 2\ntcp_user_timeout = \"3s\"\n";
const USER_TIMEOUT: Duration = Duration::from_secs(3);
/// Time above the user timeout for the kernel's timers and wsgate to act
/// on a loaded machine.
const SLACK: Duration = Duration::from_secs(3);
/// The dead upstream's health checks: a check every 100 ms, each given
/// 500 ms (less than the first SYN retransmission, at 1 s: one SYN per check).
const CHECK_INTERVAL: Duration = Duration::from_millis(100);
const CHECK_TIMEOUT: Duration = Duration::from_millis(500);

type Client = WebSocketStream<TcpStream>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_vanishes_ends_its_tunnels_within_the_user_timeout() {
    let net = DeadHostNet::create();
    let far = net.echo_backend();
    let near = Backend::echo().await;
    let toml = format!(
        "[global]\nlog_format = \"json\"\nshutdown_timeout = \"1s\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"plain\"\npath_prefix = \"/plain\"\nupstream = \"far\"\n\n\
         [[route]]\nname = \"inspected\"\npath_prefix = \"/inspected\"\nupstream = \"far\"\n\
         [route.inspect]\n\n\
         [[route]]\nname = \"near\"\npath_prefix = \"/near\"\nupstream = \"near\"\n\n\
         [[upstream]]\nname = \"far\"\nservers = [{{ address = \"{far}\" }}]\n{TCP_KEYS}\
         [upstream.health_check]\nkind = \"tcp\"\ninterval = \"{interval}ms\"\ntimeout = \"{timeout}ms\"\nfall = 2\n\n\
         [[upstream]]\nname = \"near\"\nservers = [{{ address = \"{near}\" }}]\n",
        far = far.addr,
        near = near.addr,
        interval = CHECK_INTERVAL.as_millis(),
        timeout = CHECK_TIMEOUT.as_millis(),
    );
    let wsgate = WsgateChild::start(&toml, &["plain"], "info", None).await;
    let addr = wsgate.addr("plain");
    // One plain tunnel with a message in flight when the host vanishes
    // (the user timeout finds it), one idle (keepalive finds it), one
    // inspected, one to the backend that stays, and a plain one busy
    // enough to be on a splice thread, with a message in flight too.
    let mut busy = echoing_client(addr, "/plain").await;
    let mut idle = echoing_client(addr, "/plain").await;
    let mut inspected = echoing_client(addr, "/inspected").await;
    let mut other = echoing_client(addr, "/near").await;
    let mut spliced = echoing_client(addr, "/plain").await;
    let large = Message::binary(vec![7u8; 32 << 10]);
    within("a large message out", spliced.send(large.clone()))
        .await
        .unwrap();
    assert_eq!(next_message(&mut spliced).await, large);
    scrape_until(
        wsgate.admin_addr(),
        Duration::from_secs(5),
        "the busy plain tunnel on a splice thread",
        |m| m.value("wsgate_splice_thread_tunnels", &[]) == Some(1.0),
        || wsgate.log_tail(20),
    )
    .await;

    net.blackhole();
    let vanished = Instant::now();
    let syns_before = net.syns_sent();
    for ws in [&mut busy, &mut inspected, &mut spliced] {
        within("send to the vanished backend", ws.send(Message::text("into the void")))
            .await
            .unwrap();
    }

    let limit = USER_TIMEOUT + SLACK;
    let (busy_at, idle_at, (inspected_at, close), spliced_at) = tokio::join!(
        closed_within(&mut busy, limit, "plain tunnel with data in flight"),
        closed_within(&mut idle, limit, "idle plain tunnel"),
        close_frame_within(&mut inspected, limit),
        closed_within(&mut spliced, limit, "plain tunnel on a splice thread"),
    );
    eprintln!(
        "clients learnt after: plain busy {:?}, plain idle {:?}, inspected {:?}, on a splice thread {:?}",
        busy_at - vanished,
        idle_at - vanished,
        inspected_at - vanished,
        spliced_at - vanished
    );
    let (code, reason) = close.unwrap_or_else(|| panic!("the inspected client got no close frame"));
    assert_eq!(code, 1011, "inspected client: close {code} {reason:?}");
    assert_eq!(reason, "backend unreachable");

    // The tunnel to the other backend is untouched.
    within("send to the near backend", other.send(Message::text("still here")))
        .await
        .unwrap();
    assert_eq!(next_message(&mut other).await, Message::text("still here"));

    // Each ended tunnel says why, and is counted.
    let unreachable = |route: &'static str| {
        move |line: &Value| {
            line["message"] == "tunnel closed" && line["route"] == route && line["ended_by"] == "backend_unreachable"
        }
    };
    wsgate
        .wait_for_log(
            "tunnel closed on the inspected route, backend_unreachable",
            unreachable("inspected"),
        )
        .await;
    wsgate
        .wait_for_log_within(
            Duration::from_secs(2),
            "three plain tunnels closed, backend_unreachable",
            |_| wsgate.log_lines().into_iter().filter(unreachable("plain")).count() == 3,
        )
        .await;
    assert!(
        !wsgate.log_lines().iter().any(unreachable("near")),
        "the near tunnel ended:\n{}",
        wsgate.log_tail(20)
    );
    let counted = |metrics: &Exposition, route: &str| {
        metrics.value_or_zero(
            "wsgate_tunnel_unreachable_total",
            &[("route", route), ("side", "backend")],
        )
    };
    let metrics = scrape_until(
        wsgate.admin_addr(),
        Duration::from_secs(2),
        "unreachable tunnels counted, the far server down",
        |m| {
            counted(m, "plain") == 3.0
                && counted(m, "inspected") == 1.0
                && m.value("wsgate_splice_thread_tunnels", &[]) == Some(0.0)
                && m.value(
                    "wsgate_server_healthy",
                    &[("upstream", "far"), ("server", &far.addr.to_string())],
                ) == Some(0.0)
        },
        || wsgate.log_tail(20),
    )
    .await;
    assert_eq!(counted(&metrics, "near"), 0.0);

    // One health check in flight at a time: a connect to the blackholed
    // server hangs for the check's timeout, and the next round waits for it.
    // Piled up, there would be one per interval.
    let elapsed = vanished.elapsed();
    let syns = net.syns_sent() - syns_before;
    let at_most = (elapsed.as_millis() / CHECK_TIMEOUT.as_millis()) as u64 + 5;
    eprintln!("{syns} connection attempts to the blackholed server in {elapsed:?} (at most {at_most})");
    assert!(
        syns <= at_most,
        "{syns} connection attempts to the blackholed server in {elapsed:?}: more than one check in flight \
         (at most {at_most} expected; {} if they piled up)",
        elapsed.as_millis() / CHECK_INTERVAL.as_millis()
    );
    wsgate.stop().await;
}

/// A WebSocket through wsgate at `path`, checked to echo.
async fn echoing_client(addr: std::net::SocketAddr, path: &str) -> Client {
    let (mut ws, _) = ws_connect(addr, path, &[]).await;
    within("send", ws.send(Message::text("hello"))).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("hello"), "echo on {path}");
    ws
}

/// Reads until the connection ends (end of stream or an error); fails the
/// test if it is still open after `limit`. Returns when it ended.
async fn closed_within(ws: &mut Client, limit: Duration, what: &str) -> Instant {
    within_for(
        limit,
        &format!("{what}: the client still sees its connection open"),
        async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) => return Instant::now(),
                    Some(Ok(message)) => assert!(
                        !matches!(message, Message::Text(_) | Message::Binary(_)),
                        "{what}: unexpected {message:?}"
                    ),
                }
            }
        },
    )
    .await
}

/// Reads until a close frame (its code and reason) or the end of the
/// connection (`None`), within `limit`.
async fn close_frame_within(ws: &mut Client, limit: Duration) -> (Instant, Option<(u16, String)>) {
    within_for(limit, "inspected tunnel: no close frame", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => {
                    let frame = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    return (Instant::now(), frame);
                }
                None | Some(Err(_)) => return (Instant::now(), None),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
}

/// The other way round: the client is in the namespace and vanishes. The
/// listener's keepalive finds it, and its backend, on loopback, is told
/// with 1001 "client unreachable" instead of holding the tunnel for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_is_found_by_the_listener_keepalive() {
    let net = DeadHostNet::create();
    let backend = Backend::echo().await;
    let toml = format!(
        "[global]\nlog_format = \"json\"\nshutdown_timeout = \"1s\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"veth\"\nlisten = \"{host}:0\"\n{TCP_KEYS}\n\
         [[route]]\nname = \"inspected\"\nupstream = \"near\"\n[route.inspect]\n\n\
         [[upstream]]\nname = \"near\"\nservers = [{{ address = \"{near}\" }}]\n",
        host = net.host_ip,
        near = backend.addr,
    );
    let wsgate = WsgateChild::start(&toml, &["veth"], "info", None).await;
    let addr = wsgate.addr("veth");
    let stream = net.connect_from_far(addr);
    let (mut client, _) = ws_handshake(stream, &format!("ws://{addr}/chat"), &[]).await;
    within("send", client.send(Message::text("hello"))).await.unwrap();
    assert_eq!(next_message(&mut client).await, Message::text("hello"));

    net.blackhole();
    let vanished = Instant::now();
    let (code, reason) = within_for(
        USER_TIMEOUT + SLACK,
        "the backend told of its vanished client",
        backend.wait_close(),
    )
    .await;
    eprintln!("the backend learnt after {:?}", vanished.elapsed());
    assert_eq!((code, reason.as_str()), (1001, "client unreachable"));
    wsgate
        .wait_for_log("tunnel closed, client_unreachable", |line| {
            line["message"] == "tunnel closed" && line["ended_by"] == "client_unreachable"
        })
        .await;
    scrape_until(
        wsgate.admin_addr(),
        Duration::from_secs(2),
        "the unreachable client counted",
        |m| {
            m.value_or_zero(
                "wsgate_tunnel_unreachable_total",
                &[("route", "inspected"), ("side", "client")],
            ) == 1.0
        },
        || wsgate.log_tail(20),
    )
    .await;
    drop(client);
    wsgate.stop().await;
}
