//! Fuzzes the configuration loader, `wsgate::config::Config::from_toml`.
//!
//! The input is the text of a configuration file (inputs that are not UTF-8
//! are skipped: `Config::load` refuses them before parsing). It is loaded as
//! if it were `config.example.toml` at the root of the repository, so the
//! relative certificate paths of the example resolve to `certs/`. Inputs
//! whose `cert`, `key` or `ca` is an absolute path or has `..` are skipped,
//! so the loader never opens files outside the repository (`/dev/zero`,
//! `/dev/stdin`).
//! The system's CA roots (an upstream with `tls` but no `ca`) are read from
//! `certs/dev-ca.pem` through `SSL_CERT_FILE`: one small file instead of the
//! whole system store on every run.
//!
//! Checked, besides "no panic":
//! - loading is deterministic (same errors twice);
//! - every error names the file; a `line` of 0 (no place in the file) only
//!   for the problems that have none (no `[[listener]]`, no `[[route]]`), so
//!   every other error names a line and a column that exist in the text, and
//!   its `Display` is `file:line:column: key: message`;
//! - the errors come in file order, and each has a message;
//! - a configuration that loads has listeners, routes, and routes that
//!   point at existing upstreams; its warnings name the file; it still
//!   loads, the same, with a comment appended.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wsgate::admission::rate_limit::ClientKey;
use wsgate::admission::RouteGate;
use wsgate::upstream::balance::strategy::Picker;
use wsgate::upstream::balance::Backend;
use wsgate::config::{Config, ConfigError};
use wsgate::proxy::route::RouteTable;

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config.example.toml");

fuzz_target!(
    init: {
        // WSGATE_FUZZ_CA=/nonexistent: a machine without CA roots.
        let ca = std::env::var("WSGATE_FUZZ_CA")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../certs/dev-ca.pem").to_owned());
        std::env::set_var("SSL_CERT_FILE", ca);
        std::env::remove_var("SSL_CERT_DIR");
    },
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if names_outside_files(text) {
            return;
        }
        check(text);
    }
);

/// Whether a file the loader would open (`cert`, `key`, `ca`: the only
/// keys that name files) is an absolute path or climbs out with `..`. A
/// document that does not parse reads no file at all.
fn names_outside_files(text: &str) -> bool {
    fn outside(path: &str) -> bool {
        path.starts_with('/') || path.contains("..")
    }
    fn walk(value: &toml::Value) -> bool {
        match value {
            toml::Value::Array(values) => values.iter().any(walk),
            toml::Value::Table(table) => table.iter().any(|(key, value)| match (key.as_str(), value) {
                ("cert" | "key" | "ca", toml::Value::String(path)) => outside(path),
                _ => walk(value),
            }),
            _ => false,
        }
    }
    match toml::from_str::<toml::Table>(text) {
        Ok(table) => walk(&toml::Value::Table(table)),
        Err(_) => false,
    }
}

fn check(text: &str) {
    let path = Path::new(FILE);
    match Config::from_toml(text, path) {
        Ok(config) => {
            assert_eq!(config.path, path);
            assert!(!config.listeners.is_empty(), "loaded without a listener");
            assert!(!config.routes.is_empty(), "loaded without a route");
            for route in &config.routes {
                assert!(
                    route.upstream < config.upstreams.len(),
                    "route {:?} upstream",
                    route.name
                );
            }
            for warning in config.warnings() {
                assert!(warning.starts_with(FILE), "warning {warning:?}");
            }
            check_usable(&config);
            let commented = format!("{text}\n# appended by the fuzzer\n");
            let again = Config::from_toml(&commented, path)
                .unwrap_or_else(|e| panic!("loads, but not with a comment appended:\n{e}"));
            assert_eq!(again.listeners.len(), config.listeners.len());
            assert_eq!(again.routes.len(), config.routes.len());
            assert_eq!(again.upstreams.len(), config.upstreams.len());
        }
        Err(errors) => {
            let errors = errors.errors();
            assert!(!errors.is_empty(), "Err without an error");
            let again = Config::from_toml(text, path).expect_err("loaded the second time");
            assert_eq!(errors, again.errors(), "not deterministic");
            for error in errors {
                check_error(text, error);
            }
            let order: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(order, sorted, "errors out of file order");
        }
    }
}

/// What loads is usable: "everything that can fail fails here, at load
/// time, never at the first request" (src/config/mod.rs). The runtime
/// pieces are built from the loaded values and used once.
fn check_usable(config: &Config) {
    // Durations: the runtime adds them to each other (`ping_interval +
    // pong_timeout`, src/inspect/keepalive.rs) and to the clock (`now +
    // interval + 10% jitter`, src/health.rs; `now + resolve_interval`,
    // src/server.rs): three times each one must still be a time.
    let mut durations = vec![
        ("global.handshake_timeout", config.global.handshake_timeout),
        ("global.shutdown_timeout", config.global.shutdown_timeout),
    ];
    for listener in &config.listeners {
        durations.push(("listener.handshake_timeout", listener.handshake_timeout));
    }
    for route in &config.routes {
        if let Some(inspect) = &route.inspect {
            durations.push(("inspect.ping_interval", inspect.ping_interval));
            durations.push(("inspect.pong_timeout", inspect.pong_timeout));
            durations.push(("inspect.close_timeout", inspect.close_timeout));
            durations.extend(inspect.idle_timeout.map(|d| ("inspect.idle_timeout", d)));
        }
    }
    for upstream in &config.upstreams {
        durations.push(("upstream.resolve_interval", upstream.resolve_interval));
        durations.push(("upstream.passive_backoff", upstream.passive_backoff));
        durations.push(("upstream.passive_backoff_max", upstream.passive_backoff_max));
        durations.push(("upstream.connect_timeout", upstream.connect_timeout));
        durations.push(("upstream.response_timeout", upstream.response_timeout));
        if let Some(check) = &upstream.health_check {
            durations.push(("upstream.health_check.interval", check.interval));
            durations.push(("upstream.health_check.timeout", check.timeout));
        }
    }
    let now = std::time::Instant::now();
    for (key, duration) in durations {
        let usable = duration.checked_mul(3).and_then(|d| now.checked_add(d)).is_some();
        assert!(
            usable,
            "{key} = {duration:?} loads, but the runtime's clock arithmetic overflows on it"
        );
    }

    // Admission: each route's gate is built and answers (without [cluster]
    // its answers never wait, but they are async).
    let client = ClientKey::new("2001:db8::1".parse().unwrap(), config.global.ipv6_client_prefix);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    for route in &config.routes {
        let gate = RouteGate::new(&route.name, &route.admission, None, None);
        let _ = runtime.block_on(gate.admit_http(client));
        let mut headers = http::HeaderMap::new();
        let origin = route.admission.allowed_origins.as_ref().and_then(|o| o.first());
        if let Some(value) = origin.and_then(|o| http::HeaderValue::from_str(&o.to_string().replace("*.", "a.")).ok()) {
            headers.insert(http::header::ORIGIN, value);
        }
        let protocol = route.admission.subprotocols.as_ref().and_then(|p| p.first());
        if let Some(value) = protocol.and_then(|p| http::HeaderValue::from_str(p).ok()) {
            headers.insert(http::header::SEC_WEBSOCKET_PROTOCOL, value);
        }
        let _ = runtime.block_on(gate.admit_websocket(&headers, client));
    }

    // Routing: a route naming a host exactly is the one found for that host
    // and its own prefix (exact beats wildcard beats any host, then the
    // longest prefix; two routes with the same host and prefix do not load).
    let table = RouteTable::new(config.routes.clone());
    for (i, route) in config.routes.iter().enumerate() {
        for host in &route.hosts {
            match host.strip_prefix("*.") {
                Some(domain) => {
                    let host = format!("wsgate-fuzz.{domain}");
                    let found = table.find(&host, &route.path_prefix);
                    assert!(found.is_some(), "route[{i}] is not found for {host:?}");
                }
                None => {
                    let found = table.find(host, &route.path_prefix).map(|(j, _)| j);
                    assert_eq!(found, Some(i), "host {host:?} and path {:?}", route.path_prefix);
                }
            }
        }
        if route.hosts.is_empty() {
            assert!(table.find("wsgate-fuzz.invalid", &route.path_prefix).is_some());
        }
    }

    // Balancing: each upstream's picker picks one of its servers.
    for upstream in &config.upstreams {
        let backends: Vec<_> = upstream
            .servers
            .iter()
            .enumerate()
            .map(|(j, server)| {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], u16::try_from(j + 1).unwrap_or(1)));
                Backend::new(
                    server.target.to_string().into(),
                    addr,
                    server.weight,
                    server.backup,
                    server.drain,
                )
            })
            .collect();
        let picker = Picker::new(upstream.balance, upstream.hash_load_factor);
        for key in [None, Some(&b"room-1"[..])] {
            let picked = picker.pick(&backends, key);
            assert_eq!(picked.is_some(), !backends.is_empty());
            assert!(picked.is_none_or(|j| j < backends.len()));
        }
    }
}

/// The problems that have no place in the file.
const FILE_LEVEL: &[&str] = &["no [[listener]]", "no [[route]]"];

fn check_error(text: &str, error: &ConfigError) {
    assert_eq!(error.file, Path::new(FILE));
    assert!(!error.message.is_empty(), "{error:?}");
    let shown = error.to_string();
    if error.line == 0 {
        assert!(
            FILE_LEVEL.iter().any(|start| error.message.starts_with(start)),
            "an error without a line: {shown}"
        );
        assert_eq!((error.column, error.key.as_str()), (0, ""), "{error:?}");
        assert_eq!(shown, format!("{FILE}: {}", error.message));
        return;
    }
    // Lines as `line_and_column` counts them: after each '\n' a new one.
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        error.line <= lines.len(),
        "line {} of {}: {shown}",
        error.line,
        lines.len()
    );
    let line = lines[error.line - 1];
    assert!(
        error.column >= 1 && error.column <= line.chars().count() + 1,
        "column {} of a line of {} characters: {shown}",
        error.column,
        line.chars().count()
    );
    if let Some(table) = table_at(text, error.line) {
        let section = error.key.split(['.', '[']).next().unwrap_or("");
        if SECTIONS.contains(&section) {
            let inside = error.key == table
                || error.key.starts_with(&format!("{table}."))
                || error.key.starts_with(&format!("{table}["));
            assert!(inside, "an error about {:?} points into {table}: {shown}", error.key);
        }
    }
    let mut expected = format!("{FILE}:{}:{}", error.line, error.column);
    if !error.key.is_empty() {
        expected.push_str(": ");
        expected.push_str(&error.key);
    }
    expected.push_str(": ");
    expected.push_str(&error.message);
    assert_eq!(shown, expected);
}

/// The top-level sections of the file.
const SECTIONS: &[&str] = &["global", "admin", "listener", "route", "upstream"];

/// The key of the table that line `line` (1-based) belongs to, as the
/// loader names it (`route[2]`, `global`), going by the table headers
/// above it; None where the document is not simple enough to tell that
/// from its lines (multi-line strings, quoted header keys, sections
/// written as root keys, a header of some other table).
fn table_at(text: &str, line: usize) -> Option<String> {
    if text.contains("\"\"\"") || text.contains("'''") {
        return None;
    }
    let mut counts = [0usize; 3];
    let mut current: Option<String> = None;
    let mut before_first_header = true;
    for (n, raw) in text.split('\n').enumerate() {
        let trimmed = raw.trim_matches([' ', '\t', '\r']);
        if n >= line {
            break;
        }
        if !trimmed.starts_with('[') {
            if before_first_header {
                // `route = [...]` or `global.x = 1` at the root: tables that no header shows.
                let name = trimmed.split(['=', '.', ' ', '\t']).next().unwrap_or("");
                if SECTIONS.iter().any(|s| name.trim_matches(['"', '\'']) == *s) {
                    return None;
                }
            }
            continue;
        }
        // A header: `[a.b]` or `[[a.b]]`, bare keys only, maybe a comment after it.
        let (array, inner) = match trimmed.strip_prefix("[[") {
            Some(rest) => (true, rest.split_once("]]")?.0),
            None => (false, trimmed[1..].split_once(']')?.0),
        };
        let parts: Vec<&str> = inner.split('.').map(|p| p.trim_matches([' ', '\t'])).collect();
        let bare = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !parts.iter().all(bare) {
            return None;
        }
        before_first_header = false;
        let section = parts[0];
        current = match SECTIONS.iter().position(|s| *s == section)? {
            0 | 1 => Some(section.to_owned()),
            i => {
                let count = &mut counts[i - 2];
                if array && parts.len() == 1 {
                    *count += 1;
                }
                Some(format!("{section}[{}]", count.checked_sub(1)?))
            }
        };
    }
    current
}
