//! Out of file descriptors: the real binary under a low `RLIMIT_NOFILE`.
//!
//! Each tunnel holds two descriptors. When the table is full, a backend
//! connect fails with `EMFILE`: that is wsgate's condition, not the
//! backend's. The client gets 503 with `Retry-After`, the backend is not
//! set aside, the refusals are counted and logged once per second with
//! their count. At start wsgate raises its soft limit to the hard one, and
//! `wsgate check` warns when `max_connections` is beyond what the limit holds.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::hostile_peers::*;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use wsgate::lifecycle::descriptors::tunnels_allowed;

/// The child's open-file limit, soft and hard.
const NOFILE: u64 = 128;
/// Refusals to collect: enough that one log line each would show.
const REFUSALS: usize = 30;

fn child_toml(backend: SocketAddr, global: &str) -> String {
    format!(
        "[global]\nshutdown_timeout = \"2s\"\nlog_format = \"json\"\n{global}\n\
         [[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"all\"\nupstream = \"backends\"\nallowed_origins = [\"https://example.com\"]\n\n\
         [[upstream]]\nname = \"backends\"\nservers = [{{ address = \"{backend}\" }}]\n"
    )
}

/// A client's upgrade and what became of it.
enum Upgrade {
    Tunnel(TcpStream),
    Answered(String),
    /// No answer in time: the client waits in the listener's backlog.
    Queued(TcpStream),
}

async fn upgrade(addr: SocketAddr, wait: Duration) -> Upgrade {
    let mut stream = tcp_connect(addr).await;
    let host = format!("localhost:{}", addr.port());
    stream
        .write_all(valid_upgrade(&host, "/", &[]).as_bytes())
        .await
        .unwrap();
    read_answer(stream, wait).await
}

async fn read_answer(mut stream: TcpStream, wait: Duration) -> Upgrade {
    match tokio::time::timeout(wait, read_head_bytes(&mut stream)).await {
        Ok(head) if head.starts_with("HTTP/1.1 101") => Upgrade::Tunnel(stream),
        Ok(head) => Upgrade::Answered(head),
        Err(_) => Upgrade::Queued(stream),
    }
}

/// Clients past the descriptor limit: each upgrade either opens a tunnel
/// (held) or gets 503 with `Retry-After: 1` (never 502, never a set-aside
/// server), and the backend serves the next client as soon as descriptors
/// are free again. The log says it once per second with a count.
#[tokio::test]
async fn out_of_descriptors_a_backend_connect_gets_503_with_retry_after_and_the_backend_is_not_blamed() {
    raise_nofile_limit();
    let backend = Backend::echo().await;
    let toml = child_toml(backend.addr, "");
    let wsgate = WsgateChild::start(&toml, &["plain"], "warn,wsgate::server=info", Some(NOFILE)).await;
    let (addr, admin) = (wsgate.addr("plain"), wsgate.admin_addr());
    let idle_fds = wsgate.open_fd_count();

    // One idle connection: when the tunnels alone fill the table, closing
    // it frees the single descriptor a client is accepted with and whose
    // backend connect then fails.
    let mut parity = Some(tcp_connect(addr).await);
    let mut tunnels = Vec::new();
    let mut refusals = Vec::new();
    let started = Instant::now();
    for _ in 0..NOFILE as usize + REFUSALS + 8 {
        if refusals.len() >= REFUSALS {
            break;
        }
        let answer = match upgrade(addr, Duration::from_secs(2)).await {
            Upgrade::Queued(stream) => {
                let Some(idle) = parity.take() else {
                    panic!("a client got no answer\n--- log:\n{}", wsgate.log_tail(50));
                };
                drop(idle);
                read_answer(stream, TIMEOUT).await
            }
            answer => answer,
        };
        match answer {
            Upgrade::Tunnel(stream) => tunnels.push(stream),
            Upgrade::Answered(head) => refusals.push(head),
            Upgrade::Queued(_) => panic!("a client got no answer\n--- log:\n{}", wsgate.log_tail(50)),
        }
    }
    let elapsed = started.elapsed();
    eprintln!("{} tunnels, {} refusals in {elapsed:?}", tunnels.len(), refusals.len());
    assert_eq!(refusals.len(), REFUSALS, "the proxy never ran out of descriptors");
    assert!(
        tunnels.len() as u64 >= (NOFILE - idle_fds as u64) / 2 - 2,
        "{} tunnels before the first refusal, with {idle_fds} descriptors in use at rest",
        tunnels.len()
    );
    for head in &refusals {
        assert!(head.starts_with("HTTP/1.1 503"), "not 503: {head}");
        assert_eq!(header(head, "retry-after"), Some("1"), "{head}");
    }

    // The backend was never blamed: once descriptors are free, it serves at once.
    drop(tunnels);
    drop(parity);
    scrape_until(
        admin,
        TIMEOUT,
        "every tunnel ended",
        |m| m.sum("wsgate_open_tunnels", &[]) == 0.0,
        || wsgate.log_tail(20),
    )
    .await;
    let (mut ws, _) = ws_connect(addr, "/", &[]).await;
    assert_echo(&mut ws, Message::text("served again at once")).await;
    close(ws).await;

    let m = scrape(admin).await;
    let server = backend.addr.to_string();
    let labels = [("upstream", "backends"), ("server", server.as_str())];
    assert_eq!(m.get("wsgate_server_consecutive_failures", &labels), 0.0);
    assert_eq!(m.get("wsgate_server_healthy", &labels), 1.0);
    assert_eq!(
        m.value_or_zero(
            "wsgate_handshakes_total",
            &[("route", "all"), ("outcome", "local_resources_exhausted")]
        ),
        REFUSALS as f64,
        "{}",
        m.names("wsgate_handshakes_total")
    );
    assert_eq!(
        m.value_or_zero(
            "wsgate_handshakes_total",
            &[("route", "all"), ("outcome", "backend_error")]
        ),
        0.0
    );

    // Said once per second with a count, not once per refusal.
    wsgate
        .wait_for_log("the refusals' line", |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("out of file descriptors"))
        })
        .await;
    let lines = wsgate.log_lines();
    let loud: Vec<_> = lines
        .iter()
        .filter(|l| l["level"] == "WARN" || l["level"] == "ERROR")
        .filter(|l| !l["message"].as_str().is_some_and(|m| m.contains("max_connections")))
        .collect();
    let said: Vec<_> = loud
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("out of file descriptors"))
        })
        .collect();
    assert!(!said.is_empty(), "the refusals were not logged:\n{}", wsgate.log());
    let counted: u64 = said.iter().map(|l| l["refused"].as_u64().unwrap_or(0)).sum();
    assert!(
        (1..=REFUSALS as u64).contains(&counted),
        "{counted} refusals counted in the log"
    );
    let bound = 3 + 2 * elapsed.as_secs() as usize;
    assert!(
        loud.len() <= bound,
        "{} warn or error lines for {REFUSALS} refusals in {elapsed:?}:\n{}",
        loud.len(),
        wsgate.log()
    );
    assert!(
        !wsgate.log().contains("set aside"),
        "the backend was set aside:\n{}",
        wsgate.log()
    );
    wsgate.stop().await;
}

/// Started with a soft limit below the hard one (a shell's 1,024 under a
/// higher hard limit), wsgate raises the soft one to the hard one and
/// says so, with the tunnels it leaves room for.
#[tokio::test]
async fn the_soft_open_file_limit_is_raised_to_the_hard_one_and_logged() {
    raise_nofile_limit();
    let backend = Backend::echo().await;
    let (soft, hard) = (256, 4096);
    let toml = child_toml(backend.addr, "max_connections = 1000");
    let wsgate = WsgateChild::start_with_nofile(&toml, &["plain"], "info", Some((soft, hard))).await;
    assert_eq!(proc_nofile_limit(wsgate.pid()), (hard, hard));
    let line = wsgate
        .wait_for_log("about the open-file limit", |l| {
            l["message"].as_str().is_some_and(|m| m.contains("open-file limit"))
        })
        .await;
    assert_eq!(line["from"], soft, "{line}");
    assert_eq!(line["limit"], hard, "{line}");
    assert_eq!(line["tunnels"], tunnels_allowed(hard), "{line}");
    assert!(
        !wsgate.log().contains("max_connections"),
        "1000 connections fit in {hard} descriptors:\n{}",
        wsgate.log()
    );
    wsgate.stop().await;
}

/// `wsgate check` under an open-file limit: `max_connections` beyond the
/// tunnels the hard limit holds is a warning, not an error.
#[test]
fn wsgate_check_warns_when_max_connections_is_above_what_the_limit_allows() {
    let dir = tempfile::tempdir().unwrap();
    let check = |max_connections: u64| {
        let path = dir.path().join(format!("{max_connections}.toml"));
        let toml = child_toml(
            "127.0.0.1:9".parse().unwrap(),
            &format!("max_connections = {max_connections}"),
        );
        std::fs::write(&path, toml).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"));
        command.arg("check").arg("--config").arg(&path);
        limit_nofile(&mut command, 256, 1024);
        let output = command.output().expect("run wsgate check");
        let text = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
        (output.status.success(), text)
    };
    let allowed = tunnels_allowed(1024);
    let (ok, output) = check(allowed + 1);
    assert!(ok, "a warning, not an error:\n{output}");
    assert!(
        output.contains("warning")
            && output.contains("max_connections")
            && output.contains(&format!("{allowed} tunnels")),
        "no warning about max_connections:\n{output}"
    );
    let (ok, output) = check(allowed);
    assert!(ok, "{output}");
    assert!(!output.contains("warning"), "unexpected warning:\n{output}");
}
