//! Log lines go through a bounded buffer written out by a thread of its
//! own: a standard error nobody reads (a stuck journal, a full pipe) costs
//! log lines, counted, never the traffic.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::hostile_peers::WsgateLaunch;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn tunnels_go_on_when_standard_error_is_not_read_and_the_dropped_lines_are_counted() {
    let echo = Backend::echo().await;
    let toml = format!(
        "[global]\nlog_format = \"json\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n{}",
        route_and_upstream(echo.addr, "")
    );
    // Every crate at debug: many lines per tunnel.
    let mut launch = WsgateLaunch::new(&toml, "debug", None);
    launch.command().stderr(Stdio::piped());
    let mut wsgate = launch.spawn();
    let mut stderr = BufReader::new(wsgate.take_stderr());

    // Read only until both listeners are known; from then on, nobody reads.
    let (mut plain, mut admin) = (None::<SocketAddr>, None::<SocketAddr>);
    let mut line = String::new();
    within("the listening lines", async {
        while plain.is_none() || admin.is_none() {
            line.clear();
            assert!(stderr.read_line(&mut line).await.unwrap() > 0, "wsgate ended its log");
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let address = value["address"].as_str().and_then(|a| a.parse().ok());
            match value["message"].as_str() {
                Some("listening") if value["listener"] == "plain" => plain = address,
                Some(message) if message.starts_with("admin listener") => admin = address,
                _ => {}
            }
        }
    })
    .await;
    let (plain, admin) = (plain.unwrap(), admin.unwrap());

    // Far more lines than the pipe (64 KiB) and the writer's buffer (1 MiB)
    // hold: every tunnel must still open and echo at once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tunnels = 0;
    let dropped = loop {
        for _ in 0..50 {
            let (mut ws, _) = within("a tunnel with standard error full", ws_connect(plain, "/", &[])).await;
            within("its echo", assert_echo(&mut ws, Message::text("still flowing"))).await;
            within("its close", async {
                send(&mut ws, close_message(1000, "done")).await;
                drain(ws).await;
            })
            .await;
            tunnels += 1;
        }
        let dropped = scrape(admin).await.value_or_zero("wsgate_log_lines_dropped_total", &[]);
        if dropped > 0.0 {
            break dropped;
        }
        assert!(
            Instant::now() < deadline,
            "no log line dropped after {tunnels} tunnels with standard error unread"
        );
    };
    assert!(tunnels >= 50, "{tunnels}");

    // Read again: the writer catches up, and says what it dropped.
    let notice = within_for(Duration::from_secs(30), "the dropped-lines notice", async {
        let mut text = String::new();
        let mut chunk = vec![0; 1 << 16];
        loop {
            let n = stderr.read(&mut chunk).await.unwrap();
            assert!(n > 0, "wsgate ended its log without saying what it dropped");
            text.push_str(&String::from_utf8_lossy(&chunk[..n]));
            if let Some(at) = text.find("log line(s) dropped") {
                let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                return text[start..end].to_owned();
            }
            // Keep only a tail that may hold the start of the notice.
            if text.len() > 1 << 20 {
                text = text.split_off(text.len() - 4096);
            }
        }
    })
    .await;
    let count: u64 = notice
        .trim_start_matches("wsgate: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the notice names a count: {notice}"));
    assert!(count > 0, "{notice} ({dropped} counted)");
    // Read to the end, so that the last lines can go out at exit.
    let rest = tokio::spawn(async move { tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await });
    wsgate.stop().await;
    within("the end of standard error", rest).await.unwrap().unwrap();
}
