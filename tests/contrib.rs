//! `contrib/`: every metric the Grafana dashboard and the Prometheus alert
//! rules query is one a running wsgate exposes. The proxy runs with every
//! part those files cover (an inspected route with keepalive pings, health
//! checks, `[cluster]` on a real `redis-server`) and real traffic goes
//! through it; then `/metrics` is read and each name the PromQL
//! expressions use must be there.

mod support;

use std::collections::BTreeSet;

use futures_util::SinkExt;
use support::redis_server::RedisServer;
use support::*;
use tokio_tungstenite::tungstenite::Message;

const DASHBOARD: &str = include_str!("../contrib/grafana-dashboard.json");
const RULES: &str = include_str!("../contrib/prometheus-rules.yml");

/// The metric names in one PromQL expression: every identifier starting
/// with `wsgate_` outside quoted strings (label values such as
/// `outcome=~"backend_.*"` are not names).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut quoted = false;
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("wsgate_") {
            names.push(std::mem::take(&mut word));
        }
        word.clear();
    }
    names
}

/// Every `expr` of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                        _ => walk(value, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    walk(&dashboard, &mut exprs);
    exprs
}

/// Every `expr:` of the rules file, one line or a `|` block of the lines
/// indented below it.
fn rule_exprs() -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = RULES.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value != "|" {
            exprs.push(value.to_owned());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = String::new();
        while let Some(next) = lines.next_if(|next| next.len() - next.trim_start().len() > indent || next.is_empty()) {
            block.push_str(next.trim());
            block.push('\n');
        }
        exprs.push(block);
    }
    exprs
}

#[test]
fn the_expressions_are_read_whole() {
    assert_eq!(
        metric_names(
            r#"sum by (le) (rate(wsgate_ping_rtt_seconds_bucket{outcome=~"wsgate_x"}[5m])) > wsgate_max_connections"#
        ),
        ["wsgate_ping_rtt_seconds_bucket", "wsgate_max_connections"]
    );
    let rules = rule_exprs();
    assert!(rules.len() >= 5, "{rules:?}");
    assert!(
        rules.iter().any(|e| e.contains("offset 1h")),
        "a multi-line expr was cut: {rules:?}"
    );
    assert!(dashboard_exprs().len() >= 20);
}

#[tokio::test]
async fn every_metric_the_dashboard_and_rules_use_is_exposed() {
    let backend = Backend::echo().await;
    let redis = RedisServer::start();
    let toml = format!(
        "[global]\nshutdown_timeout = \"2s\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [cluster]\nredis = \"{redis}\"\ninstance = \"contrib\"\n\n\
         [[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"chat\"\nupstream = \"backends\"\nallowed_origins = [\"https://app.example\"]\n\
         [route.inspect]\nping_interval = \"100ms\"\n\n\
         [[upstream]]\nname = \"backends\"\nservers = [{{ address = \"{backend}\" }}]\n\
         [upstream.health_check]\nkind = \"tcp\"\ninterval = \"100ms\"\n",
        redis = redis.url(),
        backend = backend.addr,
    );
    let (server, names) = bind_proxy(&toml).await;
    let admin = server.admin_addr().expect("the config has [admin]");
    let proxy = run_proxy(server, names);
    let addr = proxy.addr("plain");

    // A refusal, then a tunnel that echoes, answers keepalive pings (read
    // directly: tungstenite answers them as it reads) and closes with 1000.
    let status = upgrade_status(addr, "https://elsewhere.example").await;
    assert_eq!(status, 403);
    let (mut ws, _) = ws_connect(addr, "/", &[("origin", "https://app.example")]).await;
    ws.send(Message::text("hello")).await.expect("send");
    assert_eq!(next_message(&mut ws).await, Message::text("hello"));
    let mut pinged = false;
    for _ in 0..50 {
        let message = within("a keepalive ping", futures_util::StreamExt::next(&mut ws))
            .await
            .expect("stream open")
            .expect("read");
        if matches!(message, Message::Ping(_)) {
            pinged = true;
            break;
        }
    }
    assert!(pinged, "no keepalive ping in 50 messages");
    // The pong goes out with the next write or flush; close() reads on
    // until the backend's close comes back.
    ws.flush().await.expect("flush the pong");
    close(ws).await;
    let metrics = scrape_until(
        admin,
        TIMEOUT,
        "the ping's round trip, the close code and a cluster round trip counted",
        |m| {
            m.sum("wsgate_ping_rtt_seconds_count", &[]) > 0.0
                && m.sum("wsgate_close_codes_total", &[]) > 0.0
                && m.count("wsgate_cluster_round_trip_seconds_bucket") > 0
        },
        String::new,
    )
    .await;
    let exposed: BTreeSet<&str> = metrics.samples.iter().map(|s| s.name.as_str()).collect();

    for (file, exprs) in [
        ("grafana-dashboard.json", dashboard_exprs()),
        ("prometheus-rules.yml", rule_exprs()),
    ] {
        for expr in &exprs {
            for name in metric_names(expr) {
                assert!(
                    exposed.contains(name.as_str()),
                    "contrib/{file} uses {name}, which /metrics does not have (in: {expr})\nexposed: {exposed:?}"
                );
            }
        }
    }
    proxy.stop().await;
}
