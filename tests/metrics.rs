//! The admin listener against a real proxy: `/metrics` read after scripted
//! sessions with real backends and clients, its text exposition parsed and
//! checked value by value; `/healthz`, `/readyz` (with a server up, then
//! down by its health checks) and 404s; and JSON logs from the binary.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use support::hostile_peers::WsgateChild;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------- exposition

#[test]
fn the_parser_reads_labels_and_values() {
    let exposition = Exposition::parse(
        "# HELP x_total A counter.\n# TYPE x_total counter\nx_total{a=\"1\",b=\"q\\\"uo\\\\te\"} 3\nup 1\n\
         h_bucket{le=\"+Inf\"} 2\n",
    );
    assert_eq!(exposition.get("x_total", &[("a", "1"), ("b", "q\"uo\\te")]), 3.0);
    assert_eq!(exposition.get("up", &[]), 1.0);
    assert_eq!(exposition.get("h_bucket", &[("le", "+Inf")]), 2.0);
}

// ---------------------------------------------------------------- admin requests

/// `GET path` on the admin listener: status and body.
async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    admin_request(admin, "GET", path).await
}

async fn admin_request(admin: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("127.0.0.1:{}", admin.port()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (parts, body) = http_request(tcp_connect(admin).await, request).await;
    (parts.status.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

/// Binds the proxy for `toml`, runs it; returns it with its admin address.
async fn start_with_admin(toml: &str) -> (ProxyHandle, SocketAddr) {
    let (server, names) = bind_proxy(toml).await;
    let admin = server.admin_addr().expect("the config has [admin]");
    assert_ne!(admin.port(), 0, "admin_addr must be the bound address");
    (run_proxy(server, names), admin)
}

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n\n";

// ---------------------------------------------------------------- scripted session

fn session_config(echo: SocketAddr, closer: SocketAddr) -> String {
    listeners(None)
        + ADMIN
        + &format!(
            r#"[[route]]
name = "chat"
path_prefix = "/chat"
upstream = "echo"
allowed_origins = ["https://ok.example"]

[route.rate_limit]
per_client = {{ rate = "3/h", burst = 3 }}

[route.inspect]
enabled = true

[[route]]
name = "closing"
path_prefix = "/closing"
upstream = "closer"

[route.inspect]
enabled = true

[[route]]
name = "raw"
path_prefix = "/raw"
upstream = "echo"

[[upstream]]
name = "echo"
servers = [{{ address = "{echo}" }}]

[[upstream]]
name = "closer"
servers = [{{ address = "{closer}" }}]
"#
        )
}

#[tokio::test]
async fn a_scripted_session_shows_in_the_metrics() {
    let echo = Backend::echo().await;
    let closer = Backend::start(Behavior::CloseAfterHandshake(4001, "done")).await;
    let (proxy, admin) = start_with_admin(&session_config(echo.addr, closer.addr)).await;
    let addr = proxy.addr("plain");
    let host = format!("localhost:{}", addr.port());

    // Three tunnels on the inspected route, each closed by its client with 1000.
    for i in 0..3 {
        let (mut ws, _) = ws_connect(addr, "/chat", &[("Origin", "https://ok.example")]).await;
        assert_echo(&mut ws, Message::text(format!("hello {i}"))).await;
        send(&mut ws, close_message(1000, "done")).await;
        drain(ws).await;
    }
    // Two foreign origins, then one over the rate limit (the three tunnels
    // took the burst).
    for _ in 0..2 {
        let refused = raw_exchange(
            addr,
            &valid_upgrade(&host, "/chat", &[("Origin", "https://evil.example")]),
        )
        .await;
        assert_eq!(refused.status, 403, "{}", refused.body_text());
    }
    let limited = raw_exchange(
        addr,
        &valid_upgrade(&host, "/chat", &[("Origin", "https://ok.example")]),
    )
    .await;
    assert_eq!(limited.status, 429, "{}", limited.body_text());
    // An inspected tunnel the backend closes with 4001.
    let (mut ws, _) = ws_connect(addr, "/closing", &[]).await;
    match next_message(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 4001),
        other => panic!("expected the backend's close, got {other:?}"),
    }
    drain(ws).await;
    // A plain splice: bytes, no frames, no close codes.
    let (mut ws, _) = ws_connect(addr, "/raw", &[]).await;
    assert_echo(&mut ws, Message::binary(vec![7u8; 1000])).await;
    send(&mut ws, close_message(1000, "done")).await;
    drain(ws).await;

    let m = scrape_until(
        admin,
        TIMEOUT,
        "every tunnel recorded, none open",
        |m| {
            m.sum("wsgate_tunnel_duration_seconds_count", &[]) == 5.0
                && m.sum("wsgate_open_tunnels", &[]) == 0.0
                && m.sum("wsgate_open_connections", &[]) == 0.0
        },
        String::new,
    )
    .await;

    // Handshakes by route and outcome, and nothing else.
    let handshakes = "wsgate_handshakes_total";
    assert_eq!(m.get(handshakes, &[("route", "chat"), ("outcome", "ok")]), 3.0);
    assert_eq!(m.get(handshakes, &[("route", "chat"), ("outcome", "origin")]), 2.0);
    assert_eq!(
        m.get(handshakes, &[("route", "chat"), ("outcome", "rate_limited")]),
        1.0
    );
    assert_eq!(m.get(handshakes, &[("route", "closing"), ("outcome", "ok")]), 1.0);
    assert_eq!(m.get(handshakes, &[("route", "raw"), ("outcome", "ok")]), 1.0);
    assert_eq!(m.count(handshakes), 5, "{}", m.names(handshakes));

    // Close codes by who closed first, inspected routes only.
    let closes = "wsgate_close_codes_total";
    assert_eq!(
        m.get(closes, &[("route", "chat"), ("side", "client"), ("code", "1000")]),
        3.0
    );
    assert_eq!(
        m.get(closes, &[("route", "closing"), ("side", "backend"), ("code", "4xxx")]),
        1.0
    );
    assert_eq!(m.count(closes), 2, "{}", m.names(closes));

    // Open tunnels are back to 0 on every series; the series name the server.
    let open = "wsgate_open_tunnels";
    let echo_server = echo.addr.to_string();
    assert_eq!(
        m.get(
            open,
            &[("route", "chat"), ("upstream", "echo"), ("server", &echo_server)]
        ),
        0.0
    );
    assert_eq!(m.count(open), 3, "{}", m.names(open));
    assert_eq!(m.get("wsgate_open_connections", &[("listener", "plain")]), 0.0);

    // Bytes both ways on every route that had a tunnel; frames on inspected ones.
    for route in ["chat", "closing", "raw"] {
        for direction in ["client_to_backend", "backend_to_client"] {
            let bytes = m.get(
                "wsgate_tunnel_bytes_total",
                &[("route", route), ("direction", direction)],
            );
            assert!(bytes > 0.0, "{route} {direction}: {bytes} bytes");
        }
    }
    assert!(
        m.get(
            "wsgate_tunnel_bytes_total",
            &[("route", "raw"), ("direction", "backend_to_client")]
        ) > 1000.0
    );
    // Per chat tunnel: a text message and a close frame each way.
    for direction in ["client_to_backend", "backend_to_client"] {
        assert_eq!(
            m.get(
                "wsgate_tunnel_frames_total",
                &[("route", "chat"), ("direction", direction)]
            ),
            6.0
        );
    }
    assert_eq!(m.sum("wsgate_tunnel_frames_total", &[("route", "raw")]), 0.0);
    assert_eq!(m.count("wsgate_tunnel_frames_total"), 4);

    // Durations per route; keepalive pings never ran (30s interval).
    assert_eq!(m.get("wsgate_tunnel_duration_seconds_count", &[("route", "chat")]), 3.0);
    assert_eq!(
        m.get(
            "wsgate_tunnel_duration_seconds_bucket",
            &[("route", "chat"), ("le", "+Inf")]
        ),
        3.0
    );
    assert_eq!(m.sum("wsgate_ping_rtt_seconds_count", &[]), 0.0);

    // Servers (no health checks: up), reloads and the generation.
    let server = [("upstream", "echo"), ("server", echo_server.as_str())];
    assert_eq!(m.get("wsgate_server_healthy", &server), 1.0);
    assert_eq!(m.get("wsgate_server_consecutive_failures", &server), 0.0);
    assert_eq!(m.count("wsgate_server_healthy"), 2);
    assert_eq!(m.get("wsgate_reloads_total", &[("result", "ok")]), 0.0);
    assert_eq!(m.get("wsgate_reloads_total", &[("result", "failed")]), 0.0);
    assert_eq!(m.get("wsgate_config_generation", &[]), 1.0);

    // Labels come from the configuration and fixed lists only: no client
    // address or origin anywhere.
    let backends = [echo_server.clone(), closer.addr.to_string()];
    for sample in &m.samples {
        for value in sample.labels.values() {
            assert!(!value.contains("example"), "an origin as a label: {sample:?}");
            assert!(
                !value.starts_with("127.0.0.1:") || backends.contains(value),
                "a client address as a label: {sample:?}"
            );
        }
    }
    proxy.stop().await;
}

#[tokio::test]
async fn backend_failures_are_handshake_outcomes() {
    let rejecting = Backend::start(Behavior::Status(403, "no")).await;
    let broken = Backend::start(Behavior::Status(502, "broken")).await;
    let silent = Backend::start(Behavior::Silent).await;
    let wrong_accept = Backend::start(Behavior::WrongAccept).await;
    let down = refused_addr().await;
    let mut toml = listeners(None) + ADMIN;
    for (name, server, extra) in [
        ("rejecting", rejecting.addr, ""),
        ("broken", broken.addr, ""),
        ("silent", silent.addr, "response_timeout = \"200ms\"\n"),
        ("wrong", wrong_accept.addr, ""),
        ("down", down, ""),
    ] {
        toml += &format!(
            "[[route]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nupstream = \"{name}\"\n\n\
             [[upstream]]\nname = \"{name}\"\nservers = [{{ address = \"{server}\" }}]\n{extra}\n"
        );
    }
    let (proxy, admin) = start_with_admin(&toml).await;
    let addr = proxy.addr("plain");
    let host = format!("localhost:{}", addr.port());
    for (path, status) in [
        ("/rejecting", 403),
        ("/broken", 502),
        ("/silent", 504),
        ("/wrong", 502),
        ("/down", 502),
    ] {
        let answer = raw_exchange(addr, &valid_upgrade(&host, path, &[])).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.body_text());
    }
    // A broken handshake is refused before any backend is asked.
    let bad = raw_exchange(
        addr,
        &upgrade_request("GET /rejecting HTTP/1.1", &host, &[("Sec-WebSocket-Version", "13")]),
    )
    .await;
    assert_eq!(bad.status, 400);
    // Plain HTTP is no handshake.
    let plain = raw_exchange(addr, &format!("GET /rejecting HTTP/1.1\r\nHost: {host}\r\n\r\n")).await;
    assert_eq!(plain.status, 403);

    let m = scrape(admin).await;
    let outcome =
        |route: &str, outcome: &str| m.get("wsgate_handshakes_total", &[("route", route), ("outcome", outcome)]);
    assert_eq!(outcome("rejecting", "backend_rejected_4xx"), 1.0);
    assert_eq!(outcome("rejecting", "bad_handshake"), 1.0);
    assert_eq!(outcome("broken", "backend_rejected_5xx"), 1.0);
    assert_eq!(outcome("silent", "backend_timeout"), 1.0);
    assert_eq!(outcome("wrong", "backend_error"), 1.0);
    assert_eq!(outcome("down", "backend_error"), 1.0);
    assert_eq!(
        m.count("wsgate_handshakes_total"),
        6,
        "{}",
        m.names("wsgate_handshakes_total")
    );
    // The failed connect counts against the server.
    let down = down.to_string();
    assert_eq!(
        m.get(
            "wsgate_server_consecutive_failures",
            &[("upstream", "down"), ("server", &down)]
        ),
        1.0
    );
    proxy.stop().await;
}

#[tokio::test]
async fn wsgate_s_own_close_frames_count_as_its_side() {
    let backend = RawBackend::start(true, None).await;
    let toml = inspect_config(&[backend.addr], None, "") + ADMIN;
    let (proxy, admin) = start_with_admin(&toml).await;
    let mut client = raw_client(proxy.addr("plain")).await;
    // Unmasked: a protocol violation; wsgate closes both sides with its own codes.
    client.write_all(&encode(0x81, false, b"hi")).await.unwrap();
    assert_eq!(expect_close(&mut client, "client").await.0, 1002);
    drop(client);
    let m = scrape_until(
        admin,
        TIMEOUT,
        "the tunnel recorded",
        |m| m.sum("wsgate_tunnel_duration_seconds_count", &[]) == 1.0,
        String::new,
    )
    .await;
    assert_eq!(
        m.get(
            "wsgate_close_codes_total",
            &[("route", "all"), ("side", "wsgate"), ("code", "1002")]
        ),
        1.0,
        "{}",
        m.names("wsgate_close_codes_total")
    );
    assert_eq!(m.count("wsgate_close_codes_total"), 1);
    proxy.stop().await;
}

// ---------------------------------------------------------------- health and readiness

#[tokio::test]
async fn health_readiness_and_unknown_paths() {
    let echo = Backend::echo().await;
    let (proxy, admin) = start_with_admin(&(config(echo.addr, None) + ADMIN)).await;
    assert_eq!(admin_get(admin, "/healthz").await.0, 200);
    assert_eq!(admin_get(admin, "/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(admin_get(admin, "/nope").await.0, 404);
    assert_eq!(admin_get(admin, "/metrics/extra").await.0, 404);
    assert_eq!(admin_request(admin, "POST", "/metrics").await.0, 404);
    // The admin listener is not a proxy listener: requests there are not
    // routed, and the proxy's listener does not serve the admin paths.
    assert_eq!(scrape(admin).await.sum("wsgate_handshakes_total", &[]), 0.0);
    let host = format!("localhost:{}", proxy.addr("plain").port());
    let proxied = raw_exchange(
        proxy.addr("plain"),
        &format!("GET /readyz HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    )
    .await;
    assert_eq!(proxied.body_text(), "backend GET /readyz");
    proxy.stop().await;
}

#[tokio::test]
async fn not_ready_while_the_only_server_is_down() {
    let addr = refused_addr().await;
    let check = "[upstream.health_check]\nkind = \"tcp\"\ninterval = \"50ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n";
    let toml = listeners(None) + ADMIN + &route_and_upstream(addr, check);
    let (proxy, admin) = start_with_admin(&toml).await;
    let server = addr.to_string();
    let labels = [("upstream", "backends"), ("server", server.as_str())];

    let deadline = std::time::Instant::now() + TIMEOUT;
    let (status, body) = loop {
        let (status, body) = admin_get(admin, "/readyz").await;
        if status != 200 || std::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("upstream \"backends\" has no healthy server"), "{body}");
    // Alive all the same.
    assert_eq!(admin_get(admin, "/healthz").await.0, 200);
    let m = scrape(admin).await;
    assert_eq!(m.get("wsgate_server_healthy", &labels), 0.0);
    assert!(m.get("wsgate_server_consecutive_failures", &labels) >= 1.0);

    // The server comes back: ready again, failures reset.
    let _backend = Backend::echo_at(addr).await;
    let m = scrape_until(
        admin,
        TIMEOUT,
        "the server up again",
        |m| m.value("wsgate_server_healthy", &labels) == Some(1.0),
        String::new,
    )
    .await;
    assert_eq!(m.get("wsgate_server_consecutive_failures", &labels), 0.0);
    assert_eq!(admin_get(admin, "/readyz").await.0, 200);
    proxy.stop().await;
}

#[tokio::test]
async fn an_admin_address_in_use_fails_the_bind() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let toml = config(refused_addr().await, None) + &format!("[admin]\nlisten = \"{}\"\n", taken.local_addr().unwrap());
    let path = std::env::temp_dir().join("wsgate-tests").join("wsgate.toml");
    let config = wsgate::config::Config::from_toml(&toml, &path).unwrap();
    let error = match wsgate::server::Server::bind(config).await {
        Ok(_) => panic!("bound an address in use"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("admin listener"), "{error}");
}

// ---------------------------------------------------------------- JSON logs

#[tokio::test]
async fn the_binary_logs_json_lines() {
    let echo = Backend::echo().await;
    let toml = format!(
        "[global]\nlog_format = \"json\"\n\n\
         [[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n{}",
        route_and_upstream(echo.addr, "")
    );
    let wsgate = WsgateChild::start(&toml, &["plain"], "info", None).await;
    let line = |what: &'static str, message: &'static str| wsgate.wait_for_log(what, move |v| v["message"] == message);

    let listening = line("the listening line", "listening").await;
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["listener"], "plain");
    let addr: SocketAddr = listening["address"].as_str().unwrap().parse().unwrap();

    // A plain request: its line carries the status and the bytes sent.
    let host = format!("localhost:{}", addr.port());
    let answer = raw_exchange(addr, &format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n")).await;
    assert_eq!(answer.body_text(), "backend GET /x");
    let request = line("the request line", "request").await;
    assert_eq!(request["status"], 200);
    assert_eq!(request["bytes"], "backend GET /x".len());
    // The connection's and the route's facts are fields of the line, as on
    // a tunnel's: no span is kept per connection or request at info.
    assert!(request.get("span").is_none(), "no request span at info: {request}");
    assert_eq!(request["route"], "all");
    assert_eq!(request["listener"], "plain");
    assert_eq!(request["upstream"], "backends");
    assert_eq!(request["server"], echo.addr.to_string());
    assert_eq!(request["attempts"], 1);
    assert!(
        request["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{request}"
    );

    // A tunnel: one line, when it closes, carrying the connection's and
    // the handshake's fields itself (no span lives as long as the tunnel at info).
    let (mut ws, _) = ws_connect(addr, "/chat?token=secret", &[]).await;
    assert_echo(&mut ws, Message::text("over json")).await;
    send(&mut ws, close_message(1000, "done")).await;
    drain(ws).await;
    let closed = line("the tunnel closed line", "tunnel closed").await;
    assert!(closed.get("span").is_none(), "no tunnel span at info: {closed}");
    assert_eq!(closed["listener"], "plain");
    assert_eq!(closed["route"], "all");
    assert_eq!(closed["upstream"], "backends");
    assert_eq!(closed["server"], echo.addr.to_string());
    assert_eq!(closed["subprotocol"], "");
    assert_eq!(closed["inspected"], false);
    assert!(closed["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{closed}");
    assert!(closed["from_client"].as_u64().unwrap() > 0, "{closed}");
    assert!(closed["from_backend"].as_u64().unwrap() > 0, "{closed}");
    assert_eq!(closed["ended_by"], "peers");
    assert_eq!(closed["path"], "/chat", "the path without its query: {closed}");
    assert_eq!(closed["protocol"], "http/1.1");
    assert_eq!(closed["attempts"], 1);
    assert!(closed["handshake_ms"].as_u64().is_some(), "{closed}");
    let upgrade_lines: Vec<_> = wsgate
        .log_lines()
        .into_iter()
        .filter(|l| l["message"] == "tunnel open" || (l["message"] == "request" && l["path"] == "/chat"))
        .collect();
    assert!(
        upgrade_lines.is_empty(),
        "one line per tunnel at info: {upgrade_lines:?}"
    );

    let log = wsgate.log();
    wsgate.stop().await;
    for line in log.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON line: {line}"
        );
    }
}

#[tokio::test]
async fn reloads_are_counted_by_result_with_the_generation() {
    let echo = Backend::echo().await;
    let toml = config(echo.addr, None) + ADMIN;
    let (server, names) = bind_proxy(&toml).await;
    let admin = server.admin_addr().expect("the config has [admin]");
    let reloader = server.reloader();
    let proxy = run_proxy(server, names);
    let before = scrape(admin).await;
    assert_eq!(before.value("wsgate_config_generation", &[]), Some(1.0));

    let path = std::env::temp_dir().join("wsgate-tests").join("wsgate.toml");
    let config = wsgate::config::Config::from_toml(&toml, &path).expect("config");
    reloader.reload(config).await.expect("reload");
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[global\n").unwrap();
    assert!(reloader.reload_file(&broken).await.is_err());

    let after = scrape(admin).await;
    assert_eq!(after.value("wsgate_reloads_total", &[("result", "ok")]), Some(1.0));
    assert_eq!(after.value("wsgate_reloads_total", &[("result", "failed")]), Some(1.0));
    assert_eq!(after.value("wsgate_config_generation", &[]), Some(2.0));
    proxy.stop().await;
}

// ---------------------------------------------------------------- reload

/// A reload that removes route `gone` and its upstream `removed`: while a
/// tunnel opened on them is still open, it is still counted; once it
/// ends, `/metrics` has no series labelled with either (a dashboard would
/// otherwise show them forever), and route `kept` keeps all of its.
#[tokio::test]
async fn routes_and_upstreams_removed_by_a_reload_leave_metrics_once_their_tunnels_end() {
    let (kept, removed) = (Backend::echo().await, Backend::echo().await);
    let toml = |with_gone: bool| {
        let mut toml = listeners(None) + ADMIN;
        if with_gone {
            toml += &format!(
                "[[route]]\nname = \"gone\"\npath_prefix = \"/gone\"\nupstream = \"removed\"\n\n\
                 [[upstream]]\nname = \"removed\"\nservers = [{{ address = \"{}\" }}]\n\n",
                removed.addr
            );
        }
        toml + &format!(
            "[[route]]\nname = \"kept\"\nupstream = \"kept\"\n\n\
             [[upstream]]\nname = \"kept\"\nservers = [{{ address = \"{}\" }}]\n",
            kept.addr
        )
    };
    let (server, names) = bind_proxy(&toml(true)).await;
    let (admin, reloader) = (server.admin_addr().expect("[admin]"), server.reloader());
    let proxy = run_proxy(server, names);
    let addr = proxy.addr("plain");
    for path in ["/gone", "/"] {
        let (mut ws, _) = ws_connect(addr, path, &[]).await;
        assert_echo(&mut ws, Message::text(format!("on {path}"))).await;
        close(ws).await;
    }
    let (mut held, _) = ws_connect(addr, "/gone/held", &[]).await;
    assert_echo(&mut held, Message::text("held across the reload")).await;
    let about_removed = |m: &Exposition| -> Vec<String> {
        m.samples
            .iter()
            .filter(|s| {
                s.labels.get("route").is_some_and(|r| r == "gone")
                    || s.labels.get("upstream").is_some_and(|u| u == "removed")
            })
            .map(|s| format!("{}{:?} {}", s.name, s.labels, s.value))
            .collect()
    };
    let m = scrape(admin).await;
    assert_eq!(
        m.get("wsgate_handshakes_total", &[("route", "gone"), ("outcome", "ok")]),
        2.0
    );

    within("reload", reloader.reload(parse_config(&toml(false))))
        .await
        .expect("reload");
    let m = scrape(admin).await;
    let open = [
        ("route", "gone"),
        ("upstream", "removed"),
        ("server", &*removed.addr.to_string()),
    ];
    assert_eq!(
        m.value("wsgate_open_tunnels", &open),
        Some(1.0),
        "the tunnel still open on the removed route still counts"
    );

    assert_echo(&mut held, Message::text("still served")).await;
    close(held).await;
    scrape_until(
        admin,
        TIMEOUT,
        "no series of the removed route and upstream",
        |m| about_removed(m).is_empty(),
        String::new,
    )
    .await;
    let m = scrape(admin).await;
    assert_eq!(
        m.get("wsgate_handshakes_total", &[("route", "kept"), ("outcome", "ok")]),
        1.0
    );
    assert_eq!(m.get("wsgate_tunnel_duration_seconds_count", &[("route", "kept")]), 1.0);
    proxy.stop().await;
}

fn parse_config(toml: &str) -> wsgate::config::Config {
    let path = std::env::temp_dir().join("wsgate-tests").join("metrics-reload.toml");
    wsgate::config::Config::from_toml(toml, &path).unwrap_or_else(|e| panic!("test config rejected:\n{e}\n{toml}"))
}
