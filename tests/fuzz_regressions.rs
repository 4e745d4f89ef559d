//! Regression tests for what the fuzz targets in `fuzz/` found (see
//! `fuzz/README.md`): each input is inline, reduced to what shows the bug,
//! and the test states the behaviour the target's property asks for.

use std::path::Path;
use std::process::Command;

use wsgate::config::{Config, ConfigError};

const FILE: &str = "/etc/wsgate/fuzz-regression.toml";

/// The smallest configuration that loads; each case appends to it (it ends
/// inside its `[[upstream]]` table).
const BASE: &str = r#"[[listener]]
name = "public"
listen = "127.0.0.1:0"

[[route]]
name = "chat"
upstream = "chat-backends"

[[upstream]]
name = "chat-backends"
servers = [{ address = "127.0.0.1:9001" }]
"#;

/// 1-based line of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the text"))
        + 1
}

fn error_for<'a>(errors: &'a [ConfigError], key: &str) -> &'a ConfigError {
    errors
        .iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("no error for {key}: {errors:#?}"))
}

/// fuzz target `config`, property "what loads is usable": a duration of
/// 300 billion years ("300000000000y", 9.47e18 s, which humantime accepts)
/// loads, then overflows the runtime's clock arithmetic, which panics:
/// `ping_interval + pong_timeout` in src/inspect/keepalive.rs (every tick of
/// every inspected tunnel), `round_start + interval + jitter` and
/// `Instant::now() + check.timeout` in src/health.rs (the health checker
/// task dies, checks stop), `Instant::now() + every` in src/server.rs (DNS
/// re-resolution stops). The loader should refuse such a duration with the
/// key and line, like any other bad value.
#[test]
fn durations_the_runtime_cannot_add_are_refused_at_load_time() {
    let huge = "\"300000000000y\"";
    let cases = [
        (
            format!("{BASE}\n[route.inspect]\nping_interval = {huge}\npong_timeout = {huge}\n"),
            "route[0].inspect.ping_interval",
            "ping_interval",
        ),
        (
            format!("{BASE}\n[upstream.health_check]\nkind = \"tcp\"\ninterval = {huge}\n"),
            "upstream[0].health_check.interval",
            "interval",
        ),
        (
            format!("{BASE}\n[upstream.health_check]\nkind = \"tcp\"\ntimeout = {huge}\n"),
            "upstream[0].health_check.timeout",
            "timeout",
        ),
        (
            format!("{BASE}resolve_interval = {huge}\n"),
            "upstream[0].resolve_interval",
            "resolve_interval",
        ),
    ];
    for (text, key, needle) in cases {
        let errors = match Config::from_toml(&text, Path::new(FILE)) {
            Ok(_) => panic!("{key} = {huge} loads:\n{text}"),
            Err(errors) => errors.0,
        };
        let error = error_for(&errors, key);
        assert_eq!(error.line, line_of(&text, needle), "{error:#?}");
    }
}

/// fuzz target `config`, property "an error names a line when the input
/// has one": on a machine without CA roots (here: `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` pointing nowhere; the target's `WSGATE_FUZZ_CA=/nonexistent`),
/// an `[upstream.tls]` without `ca` is refused as
/// `FILE: upstream[0].tls: no CA certificates found on this system; set tls.ca`,
/// with no line, although the table it is about has one
/// (src/config/validate/upstream.rs, `upstream_tls`, the `ConfigError::file` arm).
#[test]
fn an_upstream_tls_error_without_ca_roots_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wsgate.toml");
    let text = format!("{BASE}\n[upstream.tls]\nserver_name = \"backend.internal\"\n");
    std::fs::write(&path, &text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["check", "--config"])
        .arg(&path)
        .env("SSL_CERT_FILE", dir.path().join("no-such-ca.pem"))
        .env("SSL_CERT_DIR", dir.path().join("no-such-dir"))
        .output()
        .expect("run wsgate check");
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "wsgate check accepted it:\n{shown}");
    assert!(shown.contains("no CA certificates"), "{shown}");
    // The table's header or its first key: either names the place.
    let header = line_of(&text, "[upstream.tls]");
    let named = [header, header + 1]
        .iter()
        .any(|line| shown.contains(&format!("{}:{line}:", path.display())));
    assert!(named, "no line of [upstream.tls] ({header}) in:\n{shown}");
    assert!(shown.contains("upstream[0].tls"), "{shown}");
}

/// Seen while writing the `config` target's routing property (not a crash):
/// between two wildcard routes that both match a host, the one declared
/// last wins, whatever their specificity, so `a.example.com` goes to a
/// `*.com` catch-all declared after `*.example.com` (src/route.rs,
/// `RouteTable::find`: both rank 2, and `max_by_key` keeps the last of
/// equal keys). nginx, which README's routing follows, takes the longest
/// wildcard.
#[test]
fn the_longest_wildcard_wins_whatever_the_order() {
    let routes = |first: &str, second: &str| {
        format!(
            "[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
             [[route]]\nname = \"{first}\"\nhosts = [\"{}\"]\nupstream = \"u\"\n\n\
             [[route]]\nname = \"{second}\"\nhosts = [\"{}\"]\nupstream = \"u\"\n\n\
             [[upstream]]\nname = \"u\"\nservers = [{{ address = \"127.0.0.1:9001\" }}]\n",
            if first == "chat" { "*.example.com" } else { "*.com" },
            if second == "chat" { "*.example.com" } else { "*.com" },
        )
    };
    for text in [routes("chat", "catch-all"), routes("catch-all", "chat")] {
        let config = Config::from_toml(&text, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
        let table = wsgate::proxy::route::RouteTable::new(config.routes);
        let (_, route) = table.find("a.example.com", "/").expect("a route");
        assert_eq!(&*route.name, "chat", "a.example.com, routes in this order:\n{text}");
    }
}
