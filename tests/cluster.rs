//! `[cluster]`: two real wsgate processes sharing one real `redis-server`
//! (started here on a free loopback port, no persistence). The limits count
//! across both; an instance killed with SIGKILL stops counting within its
//! lease; a store that hangs, dies, restarts or is flushed gets the answers
//! `on_unavailable` promises, and the counts come back with it.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::hostile_peers::{WsgateChild, WsgateLaunch};
use support::redis_server::RedisServer;
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;

/// The SIGKILL test's lease, short so it is quick (heartbeats every 200 ms);
/// the others keep the default 5 s, which no pause of the test outlasts.
const SHORT_LEASE: Duration = Duration::from_secs(1);

/// One instance's config: route `shared` to `backends`, with `route_extra`
/// keys on the route and `cluster_extra` keys in `[cluster]`.
fn instance_toml(
    redis: &RedisServer,
    backends: &[SocketAddr],
    name: &str,
    route_extra: &str,
    cluster_extra: &str,
) -> String {
    let servers: Vec<String> = backends.iter().map(|b| format!("{{ address = \"{b}\" }}")).collect();
    format!(
        "[global]\nlog_format = \"json\"\nshutdown_timeout = \"2s\"\n\n\
         [cluster]\nredis = \"{url}\"\ninstance = \"{name}\"\n{cluster_extra}\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"shared\"\nupstream = \"backends\"\n{route_extra}\n\n\
         [[upstream]]\nname = \"backends\"\nservers = [{servers}]\n",
        url = redis.url(),
        servers = servers.join(", "),
    )
}

/// Starts an instance and waits until it shares limits (its first heartbeat answered).
async fn instance(toml: &str) -> WsgateChild {
    let wsgate = WsgateChild::start(toml, &["plain"], "info", None).await;
    wsgate
        .wait_for_log("sharing through redis", |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("shared limits available"))
        })
        .await;
    wsgate
}

async fn open(wsgate: &WsgateChild, path: &str) -> WebSocketStream<TcpStream> {
    let (ws, response) = ws_connect(wsgate.addr("plain"), path, &[]).await;
    assert_eq!(response.status(), 101);
    ws
}

/// The answer to one Upgrade request through `wsgate`; a 101 is closed at once.
async fn upgrade(wsgate: &WsgateChild) -> RawResponse {
    upgrade_held(wsgate).await.0
}

/// The answer to one Upgrade request, and the connection, which keeps a
/// tunnel open while it is held.
async fn upgrade_held(wsgate: &WsgateChild) -> (RawResponse, RawConn<TcpStream>) {
    let addr = wsgate.addr("plain");
    let mut conn = RawConn::new(tcp_connect(addr).await);
    conn.send(valid_upgrade(&format!("localhost:{}", addr.port()), "/", &[]).as_bytes())
        .await;
    (conn.read_head().await, conn)
}

/// Polls `/metrics` until the instance shares limits and has written its
/// counts whole more than `rewrites_before` times (it noticed an outage,
/// a restart or a flush, and recovered).
async fn until_rewritten(wsgate: &WsgateChild, rewrites_before: f64, what: &str) {
    let limit = Duration::from_secs(10);
    let started = Instant::now();
    loop {
        let metrics = scrape(wsgate.admin_addr()).await;
        let rewrites = rewrites(&metrics);
        if rewrites > rewrites_before && metrics.get("wsgate_cluster_unreachable", &[]) == 0.0 {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not recovered within {limit:?}\n--- log:\n{}",
            wsgate.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rewrites(metrics: &Exposition) -> f64 {
    metrics.value_or_zero(
        "wsgate_cluster_round_trips_total",
        &[("op", "rewrite"), ("outcome", "ok")],
    )
}

/// Asks until an Upgrade through `wsgate` gets `status`, for at most `limit`;
/// returns how long it took.
async fn until_status(wsgate: &WsgateChild, status: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut last = 0;
    for _ in 0..1000 {
        last = upgrade(wsgate).await.status;
        if last == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "no {status} within {limit:?} (last {last})\n--- log:\n{}",
            wsgate.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no {status} in 1000 tries (last {last})");
}

async fn readyz(wsgate: &WsgateChild) -> RawResponse {
    raw_exchange(
        wsgate.admin_addr(),
        "GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await
}

#[tokio::test]
async fn a_per_client_cap_counts_across_instances_and_a_close_frees_a_place_on_the_other() {
    let redis = RedisServer::start();
    let backend = Backend::echo().await;
    let route = "limits = { max_websockets_per_client = 3 }";
    let a = instance(&instance_toml(&redis, &[backend.addr], "a", route, "")).await;
    let b = instance(&instance_toml(&redis, &[backend.addr], "b", route, "")).await;

    let mut on_a = vec![open(&a, "/").await, open(&a, "/").await];
    let _on_b = open(&b, "/").await;
    for (name, wsgate) in [("a", &a), ("b", &b)] {
        let fourth = upgrade(wsgate).await;
        assert_eq!(fourth.status, 429, "the fourth through {name}: {}", fourth.body_text());
    }

    close(on_a.pop().unwrap()).await;
    let took = until_status(&b, 101, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(5));
    let metrics = scrape(b.admin_addr()).await;
    assert!(
        metrics.get(
            "wsgate_cluster_round_trips_total",
            &[("op", "admit"), ("outcome", "ok")]
        ) >= 2.0
    );
    assert_eq!(metrics.get("wsgate_cluster_unreachable", &[]), 0.0);
}

/// `rediss://` with the password in `password_file`: the limits are shared
/// over TLS (the CA through `SSL_CERT_FILE`, as for the system's roots).
#[tokio::test]
async fn limits_are_shared_over_tls_with_a_password_file() {
    let certs = TestCerts::generate();
    let redis = RedisServer::start_tls(&certs, "s3cret");
    let backend = Backend::echo().await;
    let password_file = certs.dir().join("redis-password");
    std::fs::write(&password_file, "s3cret\n").unwrap();
    let cluster = format!("password_file = \"{}\"", password_file.display());
    let toml = instance_toml(
        &redis,
        &[backend.addr],
        "a",
        "limits = { max_websockets_per_client = 1 }",
        &cluster,
    );
    assert!(toml.contains("rediss://localhost:"), "{toml}");
    let mut launch = WsgateLaunch::new(&toml, "info", None);
    launch.command().env("SSL_CERT_FILE", certs.ca_pem());
    let mut a = launch.spawn();
    a.wait_listening(&["plain"], true).await;
    a.wait_for_log("sharing over TLS", |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("shared limits available"))
    })
    .await;

    let _held = open(&a, "/").await;
    assert_eq!(upgrade(&a).await.status, 429, "the client's one place is taken");
    let mut connection = redis.connection();
    let held: Option<u64> = redis::cmd("HGET")
        .arg("wsgate:caps:shared:a")
        .arg("c:127.0.0.1")
        .query(&mut connection)
        .unwrap();
    assert_eq!(held, Some(1), "counted in the store");
}

#[tokio::test]
async fn a_route_rate_limit_is_shared_with_retry_after() {
    let redis = RedisServer::start();
    let backend = Backend::echo().await;
    let route = "rate_limit = { total = { rate = \"3/min\" } }";
    let a = instance(&instance_toml(&redis, &[backend.addr], "a", route, "")).await;
    let b = instance(&instance_toml(&redis, &[backend.addr], "b", route, "")).await;

    for wsgate in [&a, &b, &a] {
        assert_eq!(upgrade(wsgate).await.status, 101);
    }
    for (name, wsgate) in [("a", &a), ("b", &b)] {
        let refused = upgrade(wsgate).await;
        assert_eq!(refused.status, 429, "through {name}: {}", refused.body_text());
        let retry: u64 = refused.header("retry-after").expect("Retry-After").parse().unwrap();
        // One request's cell comes back every 20 s.
        assert!((1..=20).contains(&retry), "Retry-After {retry}");
    }
}

#[tokio::test]
async fn a_killed_instance_stops_counting_within_its_lease() {
    let redis = RedisServer::start();
    let backend = Backend::echo().await;
    let route = "limits = { max_websockets = 2 }";
    let lease = "lease = \"1s\"";
    let a = instance(&instance_toml(&redis, &[backend.addr], "a", route, lease)).await;
    let b = instance(&instance_toml(&redis, &[backend.addr], "b", route, lease)).await;
    let _held = [open(&a, "/").await, open(&a, "/").await];
    assert_eq!(upgrade(&b).await.status, 503, "the route's two places are taken on a");

    a.signal(libc::SIGKILL);
    let took = until_status(&b, 101, Duration::from_secs(10)).await;
    // The lease, and one heartbeat of b's for the scheduling in between.
    assert!(took <= SHORT_LEASE + Duration::from_millis(700), "took {took:?}");
}

#[tokio::test]
async fn an_instance_that_exits_cleanly_gives_its_places_back_before_its_lease_ends() {
    let redis = RedisServer::start();
    let backend = Backend::echo().await;
    let route = "limits = { max_websockets = 2 }";
    let a = instance(&instance_toml(&redis, &[backend.addr], "a", route, "")).await;
    let b = instance(&instance_toml(&redis, &[backend.addr], "b", route, "")).await;
    let held = [open(&a, "/").await, open(&a, "/").await];
    assert_eq!(upgrade(&b).await.status, 503, "the route's two places are taken on a");

    let started = Instant::now();
    a.stop().await;
    let after_exit = until_status(&b, 101, Duration::from_secs(10)).await;
    // The default lease is 5 s: a place back sooner came from a's leaving.
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(4500),
        "took {took:?} ({after_exit:?} after the exit)"
    );
    drop(held);
}

/// A store that hangs (SIGSTOP): with each `on_unavailable`, the answer
/// comes at once, `/readyz` says what the mode promises, and when the store
/// answers again the counts are shared again.
#[tokio::test]
async fn a_hanging_store_gets_each_on_unavailable_answer_within_timeout() {
    for mode in ["local", "allow", "deny"] {
        let redis = RedisServer::start();
        let backend = Backend::echo().await;
        let route = "limits = { max_websockets = 1 }";
        let cluster = format!("timeout = \"50ms\"\non_unavailable = \"{mode}\"");
        let a = instance(&instance_toml(&redis, &[backend.addr], "a", route, &cluster)).await;
        let b = instance(&instance_toml(&redis, &[backend.addr], "b", route, &cluster)).await;
        // b holds the route's one place; a holds none.
        let held_on_b = open(&b, "/").await;
        assert_eq!(upgrade(&a).await.status, 503, "{mode}: shared before the outage");

        let rewrites_before = rewrites(&scrape(a.admin_addr()).await);
        redis.pause();
        let started = Instant::now();
        let (first, _first_held) = upgrade_held(&a).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "{mode}: the first answer took {took:?}");
        let mut held_on_a = Vec::new();
        match mode {
            // a's own count: one place, free on a.
            "local" => {
                assert_eq!(first.status, 101, "{mode}: {}", first.body_text());
                assert_eq!(upgrade(&a).await.status, 503, "local: a's own cap");
            }
            "allow" => {
                assert_eq!(first.status, 101, "{mode}: {}", first.body_text());
                held_on_a.push(open(&a, "/").await);
            }
            _ => {
                assert_eq!(first.status, 503, "{mode}: {}", first.body_text());
                assert_eq!(first.header("retry-after"), Some("1"));
            }
        }
        a.wait_for_log("the outage warning", |l| {
            l["level"] == "WARN"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("shared limits unavailable"))
        })
        .await;
        let metrics = scrape(a.admin_addr()).await;
        assert_eq!(metrics.get("wsgate_cluster_unreachable", &[]), 1.0, "{mode}");
        assert!(metrics.sum("wsgate_cluster_round_trips_total", &[("outcome", "timeout")]) >= 1.0);
        let ready = readyz(&a).await;
        let expected = if mode == "deny" { 503 } else { 200 };
        assert_eq!(ready.status, expected, "{mode}: /readyz {}", ready.body_text());

        // Shared again: b's tunnel (and a's own, written whole) fill the route.
        redis.resume();
        until_rewritten(&a, rewrites_before, mode).await;
        assert_eq!(upgrade(&a).await.status, 503, "{mode}: shared again");
        assert_eq!(readyz(&a).await.status, 200, "{mode}");
        drop(held_on_b);
    }
}

/// A store that restarts empty, or is flushed: each instance writes its
/// counts again, and the limits hold as before.
#[tokio::test]
async fn counts_come_back_after_a_restart_and_after_a_flush() {
    let mut redis = RedisServer::start();
    let backend = Backend::echo().await;
    let route = "limits = { max_websockets = 1, max_websockets_per_client = 1 }";
    let a = instance(&instance_toml(&redis, &[backend.addr], "a", route, "")).await;
    let b = instance(&instance_toml(&redis, &[backend.addr], "b", route, "")).await;
    let _held_on_a = open(&a, "/").await;
    assert_eq!(upgrade(&b).await.status, 503);

    let (a_before, b_before) = (
        rewrites(&scrape(a.admin_addr()).await),
        rewrites(&scrape(b.admin_addr()).await),
    );
    redis.restart();
    until_rewritten(&a, a_before, "a after the restart").await;
    until_rewritten(&b, b_before, "b after the restart").await;
    wait_for_key(&redis, "wsgate:caps:shared:a", "after the restart").await;
    let after_restart = upgrade(&b).await;
    assert_eq!(after_restart.status, 503, "{}", after_restart.body_text());

    let (a_before, b_before) = (
        rewrites(&scrape(a.admin_addr()).await),
        rewrites(&scrape(b.admin_addr()).await),
    );
    redis.flush();
    until_rewritten(&a, a_before, "a after the flush").await;
    until_rewritten(&b, b_before, "b after the flush").await;
    let after_flush = upgrade(&b).await;
    assert_eq!(after_flush.status, 503, "{}", after_flush.body_text());
    let mut connection = redis.connection();
    let held: (Option<u64>, Option<u64>) = redis::cmd("HMGET")
        .arg("wsgate:caps:shared:a")
        .arg("*")
        .arg("c:127.0.0.1")
        .query(&mut connection)
        .unwrap();
    assert_eq!(held, (Some(1), Some(1)), "a's route total and its client's count");
}

/// Polls the store until `key` exists again (an instance wrote its counts).
async fn wait_for_key(redis: &RedisServer, key: &str, what: &str) {
    let started = Instant::now();
    let limit = Duration::from_secs(5);
    loop {
        let mut connection = redis.connection();
        let exists: bool = redis::cmd("EXISTS").arg(key).query(&mut connection).unwrap();
        if exists {
            return;
        }
        assert!(started.elapsed() < limit, "{key} not written within {limit:?} {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_same_hash_key_reaches_the_same_server_through_either_instance() {
    let redis = RedisServer::start();
    let backends = [Backend::echo().await, Backend::echo().await, Backend::echo().await];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let mut a_toml = instance_toml(&redis, &addrs, "a", "", "");
    a_toml.push_str("balance = \"hash\"\nhash_key = \"query:room\"\n");
    let b_toml = a_toml.replace("instance = \"a\"", "instance = \"b\"");
    let a = instance(&a_toml).await;
    let b = instance(&b_toml).await;

    let server_of = |before: &[usize]| -> usize {
        let after: Vec<usize> = backends.iter().map(Backend::accepts).collect();
        let moved: Vec<usize> = (0..after.len()).filter(|&i| after[i] != before[i]).collect();
        assert_eq!(moved.len(), 1, "one server took the tunnel: {before:?} -> {after:?}");
        moved[0]
    };
    let mut servers_used = std::collections::HashSet::new();
    for room in 0..12 {
        let path = format!("/?room={room}");
        let mut chosen = Vec::new();
        for wsgate in [&a, &b] {
            let before: Vec<usize> = backends.iter().map(Backend::accepts).collect();
            close(open(wsgate, &path).await).await;
            chosen.push(server_of(&before));
        }
        assert_eq!(chosen[0], chosen[1], "room {room}");
        servers_used.insert(chosen[0]);
    }
    assert!(
        servers_used.len() > 1,
        "12 rooms all on one server: the key is not used"
    );
}
