//! A real browser through wsgate: Debian's Chromium, headless, loads a page
//! over HTTPS and opens a WebSocket back through the same origin; the page
//! reports the echo with a request of its own. The test asserts the echo
//! arrived and says, from wsgate's log, which protocol the browser used for
//! the page and for the socket. (Chromium opens a WebSocket over HTTP/2,
//! RFC 8441, only on an HTTP/2 connection it already has, and only where
//! its build enables it; when it chooses HTTP/1.1 the test says so rather
//! than failing: tests/http2.rs forces h2 with a client that does.)

mod support;

use std::process::Stdio;

use support::hostile_peers::WsgateChild;
use support::*;

/// Opens a WebSocket to its own origin, sends a greeting, and reports the
/// echo (or the failure) by fetching `/done?...`.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>wsgate browser test</title></head>
<body><script>
const ws = new WebSocket('wss://' + location.host + '/socket');
ws.onopen = () => ws.send('hello from chromium');
ws.onmessage = (event) => fetch('/done?echo=' + encodeURIComponent(event.data));
ws.onerror = () => fetch('/done?error');
</script></body></html>
"#;

/// The browser: Debian's `chromium` (tests/run.sh installs it).
const CHROMIUM: &str = "chromium";

#[tokio::test]
async fn chromium_loads_a_page_over_https_and_echoes_over_a_websocket_through_wsgate() {
    let backend = Backend::start(Behavior::Page(PAGE)).await;
    let certs = TestCerts::generate();
    let toml = format!(
        "[global]\nshutdown_timeout = \"2s\"\nlog_format = \"json\"\n\n\
         [[listener]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\n{}\n{}",
        tls_entry(&certs.server_cert(), &certs.server_key()),
        route_and_upstream(backend.addr, "")
    );
    let wsgate = WsgateChild::start(&toml, &["tls"], "info", None).await;
    let profile = tempfile::tempdir().expect("a browser profile directory");
    let url = format!("https://localhost:{}/", wsgate.addr("tls").port());
    let mut browser = tokio::process::Command::new(CHROMIUM)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            // The test CA is no root the browser knows.
            "--ignore-certificate-errors",
            // localhost is 127.0.0.1, where wsgate listens (not ::1).
            "--host-resolver-rules=MAP localhost 127.0.0.1",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CHROMIUM} (Debian package chromium; tests/run.sh installs it): {e}"));

    let request_to = |path: &'static str| {
        move |line: &serde_json::Value| {
            line["message"] == "request" && line["path"].as_str().is_some_and(|p| p.starts_with(path))
        }
    };
    let done = wsgate.wait_for_log("the page's report", request_to("/done")).await;
    let page = wsgate.wait_for_log("the page's request", request_to("/")).await;
    // The tunnel's line is written when it closes: the browser's end closes it.
    let _ = browser.kill().await;
    let tunnel = wsgate
        .wait_for_log("the socket's tunnel", |line| line["message"] == "tunnel closed")
        .await;
    let reported = backend
        .requests()
        .into_iter()
        .find(|r| r.uri.path() == "/done")
        .expect("the backend saw the report");
    assert_eq!(
        reported.uri.query(),
        Some("echo=hello%20from%20chromium"),
        "the echo came back through wsgate"
    );
    let (page_protocol, socket_protocol) = (page["protocol"].as_str(), tunnel["protocol"].as_str());
    assert_eq!(
        done["protocol"].as_str(),
        page_protocol,
        "one connection for the page and its report"
    );
    println!("chromium: page over {page_protocol:?}, WebSocket over {socket_protocol:?}");
    if socket_protocol != Some("h2") {
        println!(
            "chromium chose HTTP/1.1 for the WebSocket (RFC 8441 is not used by this build); \
             tests/http2.rs covers WebSockets over HTTP/2"
        );
    }
    assert_eq!(
        page_protocol,
        Some("h2"),
        "Chromium loads an HTTPS page over h2 when offered"
    );
    wsgate.stop().await;
}
