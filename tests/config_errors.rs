//! Configuration errors point at the file, line and key, and say why; the
//! `wsgate check` command reports them and exits non-zero.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::TestCerts;
use wsgate::config::{Config, ConfigError};

const FILE: &str = "/etc/wsgate/test.toml";

const BASE: &str = r#"[global]
handshake_timeout = "10s"
# Within any open-file limit, so `wsgate check` has no warning about it.
max_connections = 100

[[listener]]
name = "public"
listen = "127.0.0.1:0"

[[route]]
name = "chat"
hosts = ["localhost"]
upstream = "chat-backends"

[[upstream]]
name = "chat-backends"
servers = [{ address = "127.0.0.1:9001" }]
connect_timeout = "3s"
"#;

fn errors(text: &str) -> Vec<ConfigError> {
    match Config::from_toml(text, Path::new(FILE)) {
        Ok(_) => panic!("config accepted, expected errors:\n{text}"),
        Err(e) => e.errors().to_vec(),
    }
}

/// The only error, which must have `key`.
fn single_error(text: &str, key: &str) -> ConfigError {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    let error = errors.into_iter().next().unwrap();
    assert_eq!(error.key, key, "{error:#?}");
    assert_eq!(error.file, PathBuf::from(FILE));
    error
}

/// The 1-based line of the `nth` (0-based) line containing `needle`.
fn line_of(text: &str, needle: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.contains(needle))
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} #{nth} not in config"))
        .0
        + 1
}

fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in config");
    text.replacen(from, to, 1)
}

/// BASE with a TLS certificate entry on the listener.
fn with_tls(cert: &Path, key: &Path) -> String {
    replace(
        BASE,
        "listen = \"127.0.0.1:0\"\n",
        &format!("listen = \"127.0.0.1:0\"\n{}", support::tls_entry(cert, key)),
    )
}

#[test]
fn the_base_config_and_a_tls_config_load() {
    let config = Config::from_toml(BASE, Path::new(FILE)).expect("BASE is valid");
    assert_eq!(config.routes[0].path_prefix, "/");
    assert_eq!(config.routes[0].hosts, vec!["localhost".to_string()]);
    let certs = TestCerts::generate();
    let text = with_tls(&certs.server_cert(), &certs.server_key());
    let config = Config::from_toml(&text, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.listeners[0].tls.is_some());
}

#[test]
fn relative_certificate_paths_resolve_against_the_config_file() {
    let certs = TestCerts::generate();
    let text = with_tls(Path::new("server.pem"), Path::new("server-key.pem"));
    let config = Config::from_toml(&text, &certs.dir().join("wsgate.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.listeners[0].tls.is_some());
}

#[test]
fn unknown_key_names_its_table_and_the_field() {
    let text = replace(BASE, "connect_timeout", "connect_timout");
    let error = single_error(&text, "upstream[0].connect_timout");
    assert_eq!(error.line, line_of(&text, "connect_timout", 0), "{error:#?}");
    assert!(error.message.contains("connect_timout"), "{error:#?}");
    assert!(error.message.contains("unknown field"), "{error:#?}");
}

#[test]
fn every_unknown_key_bad_value_and_type_error_is_reported_in_one_run() {
    let text = replace(BASE, "connect_timeout", "connect_timout");
    let text = replace(&text, "handshake_timeout = \"10s\"", "handshake_timeout = true");
    let text = replace(&text, "name = \"public\"", "name = \"public\"\nlisen = \"x\"");
    let text = replace(
        &text,
        "hosts = [\"localhost\"]",
        "hosts = [\"localhost\"]\nstrip_prefx = true",
    );
    let text = replace(&text, "max_connections = 100", "max_connections = \"many\"");
    let errors = errors(&text);
    let found: Vec<(&str, usize)> = errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        found,
        [
            ("global.handshake_timeout", line_of(&text, "handshake_timeout", 0)),
            ("global.max_connections", line_of(&text, "max_connections", 0)),
            ("listener[0].lisen", line_of(&text, "lisen", 0)),
            ("route[0].strip_prefx", line_of(&text, "strip_prefx", 0)),
            ("upstream[0].connect_timout", line_of(&text, "connect_timout", 0)),
        ],
        "{errors:#?}"
    );
    assert!(errors.iter().all(|e| e.column > 0), "{errors:#?}");
    // Through `wsgate check`: one line each, file:line:column: key: why.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typos.toml");
    std::fs::write(&file, &text).unwrap();
    let (ok, output) = wsgate_check(&file);
    assert!(!ok, "{output}");
    for error in &errors {
        let start = format!("{}:{}:{}: {}: ", file.display(), error.line, error.column, error.key);
        assert!(
            output.lines().any(|l| l.starts_with(&start)),
            "no {start:?} in:\n{output}"
        );
    }
    assert!(output.contains("5 problem(s)"), "{output}");
}

#[test]
fn a_required_key_of_the_wrong_type_is_reported_once_with_the_rest() {
    let text = replace(BASE, "name = \"public\"", "name = 7");
    let text = replace(&text, "connect_timeout", "connect_timout");
    let errors = errors(&text);
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["listener[0].name", "upstream[0].connect_timout"], "{errors:#?}");
}

#[test]
fn a_bare_number_for_a_duration_gets_the_hint_a_unitless_string_gets() {
    for (written, shown) in [("10", "10"), ("\"10\"", "\"10\""), ("2.5", "2.5")] {
        let text = replace(
            BASE,
            "handshake_timeout = \"10s\"",
            &format!("handshake_timeout = {written}"),
        );
        let error = single_error(&text, "global.handshake_timeout");
        assert!(
            error.message.contains(&format!("invalid duration {shown}"))
                && error.message.contains("write a number and a unit, such as \"500ms\""),
            "{written}: {error:#?}"
        );
    }
    let text = replace(BASE, "[[listener]]\n", "[[listener]]\ntcp_keepalive = 60\n");
    let error = single_error(&text, "listener[0].tcp_keepalive");
    assert!(error.message.contains("such as \"500ms\""), "{error:#?}");
}

#[test]
fn long_unit_names_are_accepted() {
    let text = replace(
        BASE,
        "handshake_timeout = \"10s\"",
        "handshake_timeout = \"10 seconds\"",
    );
    let text = replace(
        &text,
        "connect_timeout = \"3s\"",
        "connect_timeout = \"1 minute 30 seconds\"",
    );
    let config = Config::from_toml(&text, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.global.handshake_timeout, std::time::Duration::from_secs(10));
}

#[test]
fn route_naming_a_missing_upstream() {
    let text = replace(BASE, "upstream = \"chat-backends\"", "upstream = \"chat-backend\"");
    let error = single_error(&text, "route[0].upstream");
    assert_eq!(error.line, line_of(&text, "upstream = \"chat-backend\"", 0));
    assert!(error.column > 0);
    assert!(error.message.contains("chat-backend"), "{error:#?}");
}

#[test]
fn duplicate_names_are_all_reported() {
    let text = format!(
        "{BASE}\n[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"chat\"\npath_prefix = \"/other\"\nupstream = \"chat-backends\"\n\n\
         [[upstream]]\nname = \"chat-backends\"\nservers = [{{ address = \"127.0.0.1:9002\" }}]\n"
    );
    let errors = errors(&text);
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["listener[1].name", "route[1].name", "upstream[1].name"],
        "{errors:#?}"
    );
    for (error, name) in errors.iter().zip(["public", "chat", "chat-backends"]) {
        assert_eq!(
            error.line,
            line_of(&text, &format!("name = \"{name}\""), 1),
            "{error:#?}"
        );
        assert!(
            error.message.contains("duplicate") && error.message.contains(name),
            "{error:#?}"
        );
    }
}

#[test]
fn unreadable_certificate_file() {
    let certs = TestCerts::generate();
    let missing = certs.dir().join("missing.pem");
    let text = with_tls(&missing, &certs.server_key());
    let error = single_error(&text, "listener[0].tls.certificates[0].cert");
    assert_eq!(error.line, line_of(&text, "missing.pem", 0));
    assert!(error.message.contains(&missing.display().to_string()), "{error:#?}");
}

#[test]
fn a_missing_certificate_at_a_relative_path_says_where_relative_paths_are_looked_for() {
    let text = with_tls(Path::new("certs/localhost.pem"), Path::new("/etc/wsgate/key.pem"));
    let error = single_error(&text, "listener[0].tls.certificates[0].cert");
    assert!(
        error
            .message
            .contains("relative to the configuration file's directory, /etc/wsgate"),
        "{error:#?}"
    );
}

#[test]
fn key_that_does_not_match_its_certificate() {
    let certs = TestCerts::generate();
    let text = with_tls(&certs.server_cert(), &certs.other_key());
    let error = single_error(&text, "listener[0].tls.certificates[0].key");
    assert_eq!(error.line, line_of(&text, "other-key.pem", 0));
    assert!(
        error.message.contains(&certs.other_key().display().to_string()),
        "{error:#?}"
    );
    assert!(
        error.message.contains("does not belong") || error.message.contains("match"),
        "{error:#?}"
    );
}

#[test]
fn bad_duration() {
    let text = replace(
        BASE,
        "handshake_timeout = \"10s\"",
        "handshake_timeout = \"10 parsecs\"",
    );
    let error = single_error(&text, "global.handshake_timeout");
    assert_eq!(error.line, line_of(&text, "10 parsecs", 0));
    assert!(error.message.contains("10 parsecs"), "{error:#?}");
}

#[test]
fn bad_listen_address() {
    let text = replace(BASE, "listen = \"127.0.0.1:0\"", "listen = \"localhost:https\"");
    let error = single_error(&text, "listener[0].listen");
    assert_eq!(error.line, line_of(&text, "localhost:https", 0));
    assert!(error.message.contains("localhost:https"), "{error:#?}");
}

#[test]
fn several_problems_are_all_reported_in_file_order() {
    let text = replace(BASE, "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1\"");
    let text = replace(&text, "upstream = \"chat-backends\"", "upstream = \"nowhere\"");
    let text = replace(&text, "127.0.0.1:9001", "backend:0");
    let errors = errors(&text);
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "listener[0].listen",
            "route[0].upstream",
            "upstream[0].servers[0].address"
        ],
        "{errors:#?}"
    );
    let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
    let expected = [
        line_of(&text, "listen =", 0),
        line_of(&text, "\"nowhere\"", 0),
        line_of(&text, "backend:0", 0),
    ];
    assert_eq!(lines, expected);
    let shown = wsgate::config::ConfigErrors(errors.clone()).to_string();
    assert_eq!(shown.lines().count(), 3, "{shown}");
    for (line, error) in shown.lines().zip(&errors) {
        assert!(
            line.starts_with(&format!("{FILE}:{}:{}: {}: ", error.line, error.column, error.key)),
            "{line}"
        );
    }
}

fn wsgate_check(config: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run wsgate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn wsgate_check_reports_a_bad_config_and_accepts_a_good_one() {
    let certs = TestCerts::generate();
    let good = certs.dir().join("good.toml");
    std::fs::write(&good, with_tls(Path::new("server.pem"), Path::new("server-key.pem"))).unwrap();
    let (ok, output) = wsgate_check(&good);
    assert!(ok, "wsgate check failed on a good config:\n{output}");
    assert!(output.contains("ok (1 listener, 1 route, 1 upstream)"), "{output}");

    let bad = certs.dir().join("bad.toml");
    std::fs::write(
        &bad,
        replace(BASE, "upstream = \"chat-backends\"", "upstream = \"nowhere\""),
    )
    .unwrap();
    let (ok, output) = wsgate_check(&bad);
    assert!(!ok, "wsgate check accepted a bad config:\n{output}");
    assert!(
        output.contains(&bad.display().to_string()),
        "output does not name the file:\n{output}"
    );
    assert!(
        output.contains("route[0].upstream"),
        "output does not name the key:\n{output}"
    );
}

#[test]
fn wsgate_check_warns_about_routes_open_to_every_origin() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open.toml");
    std::fs::write(&open, BASE).unwrap();
    let (ok, output) = wsgate_check(&open);
    assert!(ok, "a route without allowed_origins is valid:\n{output}");
    assert!(
        output.contains("warning") && output.contains("\"chat\"") && output.contains("allowed_origins"),
        "no warning about the open route:\n{output}"
    );

    let closed = dir.path().join("closed.toml");
    let text = replace(
        BASE,
        "upstream = \"chat-backends\"",
        "upstream = \"chat-backends\"\nallowed_origins = [\"https://chat.example.com\"]",
    );
    std::fs::write(&closed, text).unwrap();
    let (ok, output) = wsgate_check(&closed);
    assert!(ok, "{output}");
    assert!(!output.contains("warning"), "unexpected warning:\n{output}");
}

#[test]
fn upstream_tls_and_balancing_keys_are_checked() {
    let with = |extra: &str| replace(BASE, "connect_timeout", &format!("{extra}\nconnect_timeout"));
    let missing_ca = with("tls = { ca = \"/nonexistent/backend-ca.pem\" }");
    let error = single_error(&missing_ca, "upstream[0].tls.ca");
    assert!(error.message.contains("backend-ca.pem"), "{error:#?}");

    let error = single_error(&with("balance = \"fastest\""), "upstream[0].balance");
    assert!(error.message.contains("fastest"), "{error:#?}");

    let error = single_error(
        &with("balance = \"hash\"\nhash_key = \"body:x\""),
        "upstream[0].hash_key",
    );
    assert!(error.message.contains("header:"), "{error:#?}");

    let error = single_error(&with("hash_key = \"client_ip\""), "upstream[0].hash_key");
    assert!(error.message.contains("balance = \"hash\""), "{error:#?}");

    let weightless = replace(
        BASE,
        "address = \"127.0.0.1:9001\"",
        "address = \"127.0.0.1:9001\", weight = 0",
    );
    single_error(&weightless, "upstream[0].servers[0].weight");

    let all_backup = replace(
        BASE,
        "address = \"127.0.0.1:9001\"",
        "address = \"127.0.0.1:9001\", backup = true",
    );
    single_error(&all_backup, "upstream[0].servers");

    let check = with("[upstream.health_check]\nkind = \"ping\"");
    // The table header ends the inline keys; connect_timeout now belongs to the check table.
    assert!(errors(&check)
        .iter()
        .any(|e| e.key.starts_with("upstream[0].health_check")));
}

#[test]
fn listener_unknown_sni_is_default_or_refuse() {
    let certs = TestCerts::generate();
    let tls = with_tls(&certs.server_cert(), &certs.server_key());
    let with = |value: &str| {
        replace(
            &tls,
            "[[listener.tls.certificates]]",
            &format!("[listener.tls]\nunknown_sni = {value}\n\n[[listener.tls.certificates]]"),
        )
    };
    for value in ["\"default\"", "\"refuse\""] {
        let text = with(value);
        let config = Config::from_toml(&text, Path::new(FILE)).unwrap_or_else(|e| panic!("{value}: {e}"));
        assert!(config.listeners[0].tls.is_some());
    }

    let text = with("\"drop\"");
    let error = single_error(&text, "listener[0].tls.unknown_sni");
    assert_eq!(error.line, line_of(&text, "unknown_sni = \"drop\"", 0), "{error:#?}");
    assert!(error.column > 0, "{error:#?}");
    for word in ["drop", "default", "refuse"] {
        assert!(error.message.contains(word), "{word:?} not in {error:#?}");
    }
    let shown = error.to_string();
    assert!(
        shown.starts_with(&format!(
            "{FILE}:{}:{}: listener[0].tls.unknown_sni: ",
            error.line, error.column
        )),
        "{shown}"
    );
}

#[test]
fn tcp_keepalive_and_user_timeout_keys_are_checked() {
    use std::time::Duration;
    use wsgate::config::{KeepaliveProbes, TcpLiveness};

    // Defaults: on, on both sides; "off" turns each off; values as written.
    let config = Config::from_toml(BASE, Path::new(FILE)).expect("BASE is valid");
    assert_eq!(config.listeners[0].tcp, TcpLiveness::default());
    assert_eq!(config.upstreams[0].tcp, TcpLiveness::default());
    let upstream = |extra: &str| replace(BASE, "connect_timeout", &format!("{extra}\nconnect_timeout"));
    let listener = |extra: &str| {
        replace(
            BASE,
            "listen = \"127.0.0.1:0\"\n",
            &format!("listen = \"127.0.0.1:0\"\n{extra}\n"),
        )
    };
    let text = upstream(
        "tcp_keepalive = \"20s\"\ntcp_keepalive_interval = \"5s\"\ntcp_keepalive_count = 4\ntcp_user_timeout = \"45s\"",
    );
    let config = Config::from_toml(&text, Path::new(FILE)).expect("valid keys");
    assert_eq!(
        config.upstreams[0].tcp,
        TcpLiveness {
            keepalive: Some(KeepaliveProbes {
                idle: Duration::from_secs(20),
                interval: Duration::from_secs(5),
                count: 4,
            }),
            user_timeout: Some(Duration::from_secs(45)),
        }
    );
    let text = listener("tcp_keepalive = \"off\"\ntcp_user_timeout = \"off\"");
    let config = Config::from_toml(&text, Path::new(FILE)).expect("off is valid");
    assert_eq!(config.listeners[0].tcp, TcpLiveness::OFF);

    // Each bad value names its file, line and key, and says why.
    for (text, key, needle, why) in [
        (
            upstream("tcp_keepalive = \"1500ms\""),
            "upstream[0].tcp_keepalive",
            "1500ms",
            "whole seconds",
        ),
        (
            upstream("tcp_keepalive = \"0s\""),
            "upstream[0].tcp_keepalive",
            "\"0s\"",
            "\"off\"",
        ),
        (
            upstream("tcp_keepalive = \"sometimes\""),
            "upstream[0].tcp_keepalive",
            "sometimes",
            "\"off\"",
        ),
        (
            upstream("tcp_keepalive_interval = \"10h\""),
            "upstream[0].tcp_keepalive_interval",
            "10h",
            "32767s",
        ),
        (
            upstream("tcp_keepalive_count = 0"),
            "upstream[0].tcp_keepalive_count",
            "count = 0",
            "1 to 127",
        ),
        (
            upstream("tcp_user_timeout = \"0ms\""),
            "upstream[0].tcp_user_timeout",
            "0ms",
            "\"off\"",
        ),
        (
            listener("tcp_keepalive = \"off\"\ntcp_keepalive_count = 5"),
            "listener[0].tcp_keepalive_count",
            "count = 5",
            "only used when tcp_keepalive",
        ),
        (
            listener("tcp_keepalive_count = 200"),
            "listener[0].tcp_keepalive_count",
            "200",
            "1 to 127",
        ),
    ] {
        let error = single_error(&text, key);
        assert_eq!(error.line, line_of(&text, needle, 0), "{error:#?}");
        assert!(error.message.contains(why), "{error:#?}");
    }
}

#[test]
fn per_socket_rates_are_checked() {
    // Route tables go between the route's keys and the next [[upstream]].
    let with = |table: &str| replace(BASE, "\n[[upstream]]", &format!("{table}\n\n[[upstream]]"));
    let loads = |text: &str| Config::from_toml(text, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}\n{text}"));

    let config = loads(&with("[route.limits]\nclient_bytes_per_second = \"1MiB\""));
    let bytes = config.routes[0].client_bytes.expect("a byte rate");
    assert_eq!(
        (bytes.per_second, bytes.burst),
        (1 << 20, 1 << 20),
        "one second's worth"
    );
    let config = loads(&with("[route.limits]\nclient_bytes_per_second = \"1KiB\""));
    let bytes = config.routes[0].client_bytes.expect("a byte rate");
    assert_eq!(bytes.burst, 64 << 10, "at least one large read buffer");
    let config = loads(&with(
        "[route.limits]\nclient_bytes_per_second = \"1MiB\"\nclient_bytes_burst = \"16KiB\"",
    ));
    assert_eq!(config.routes[0].client_bytes.unwrap().burst, 16 << 10);
    let config = loads(&with("[route.inspect]\nmax_messages_per_second = 100"));
    let messages = config.routes[0]
        .inspect
        .as_ref()
        .unwrap()
        .client_messages
        .expect("a message rate");
    assert_eq!((messages.per_second, messages.burst), (100, 100));
    assert!(loads(BASE).routes[0].client_bytes.is_none(), "no limit by default");

    let cases = [
        (
            "[route.limits]\nclient_bytes_per_second = 0",
            "route[0].limits.client_bytes_per_second",
            "client_bytes_per_second",
            "at least 1",
        ),
        (
            "[route.limits]\nclient_bytes_per_second = \"1MiB\"\nclient_bytes_burst = \"4KiB\"",
            "route[0].limits.client_bytes_burst",
            "client_bytes_burst",
            "16KiB",
        ),
        (
            "[route.limits]\nclient_bytes_burst = \"1MiB\"",
            "route[0].limits.client_bytes_burst",
            "client_bytes_burst",
            "without client_bytes_per_second",
        ),
        (
            "[route.limits]\nclient_bytes_per_second = \"fast\"",
            "route[0].limits.client_bytes_per_second",
            "client_bytes_per_second",
            "invalid size",
        ),
        (
            "[route.inspect]\nmax_messages_per_second = 0",
            "route[0].inspect.max_messages_per_second",
            "max_messages_per_second",
            "at least 1",
        ),
        (
            "[route.inspect]\nmax_messages_per_second = 100\nmessage_burst = 0",
            "route[0].inspect.message_burst",
            "message_burst",
            "at least 1",
        ),
        (
            "[route.inspect]\nmessage_burst = 10",
            "route[0].inspect.message_burst",
            "message_burst",
            "without max_messages_per_second",
        ),
    ];
    for (table, key, line_key, why) in cases {
        let text = with(table);
        let error = single_error(&text, key);
        assert_eq!(error.line, line_of(&text, line_key, 0), "{error:#?}");
        assert!(error.message.contains(why), "{why:?}: {error:#?}");
    }
}

#[test]
fn rebalance_keys_are_checked() {
    let with = |table: &str| format!("{BASE}\n[upstream.rebalance]\n{table}\n");
    let config = Config::from_toml(&with(""), Path::new(FILE)).expect("an empty table turns it on");
    let rebalance = config.upstreams[0].rebalance.expect("on");
    assert_eq!(rebalance.max_skew, 1.25);
    assert_eq!(rebalance.after, std::time::Duration::from_secs(30));
    assert_eq!(rebalance.rate.to_string(), "20/s");
    assert!(Config::from_toml(BASE, Path::new(FILE)).unwrap().upstreams[0]
        .rebalance
        .is_none());

    for (table, key, why) in [
        ("max_skew = 1.0", "upstream[0].rebalance.max_skew", "above 1.0"),
        ("max_skew = 0.5", "upstream[0].rebalance.max_skew", "above 1.0"),
        ("after = \"0s\"", "upstream[0].rebalance.after", "longer than zero"),
        ("after = \"soon\"", "upstream[0].rebalance.after", "invalid duration"),
        ("rate = \"20\"", "upstream[0].rebalance.rate", "missing '/'"),
        ("rate = \"0/s\"", "upstream[0].rebalance.rate", "at least 1"),
        ("max_skw = 2.0", "upstream[0].rebalance.max_skw", "unknown field"),
    ] {
        let text = with(table);
        let error = single_error(&text, key);
        assert!(error.message.contains(why), "{table}: {error:#?}");
        let (name, _) = table.split_once(" =").unwrap();
        assert_eq!(error.line, line_of(&text, name, 0), "{table}: {error:#?}");
    }
}

#[test]
fn wsgate_check_warns_about_rebalancing_an_upstream_with_only_plain_routes() {
    let dir = tempfile::tempdir().unwrap();
    let origins = "upstream = \"chat-backends\"\nallowed_origins = [\"https://chat.example.com\"]";
    let plain = replace(BASE, "upstream = \"chat-backends\"", origins) + "\n[upstream.rebalance]\n";
    let path = dir.path().join("plain.toml");
    std::fs::write(&path, &plain).unwrap();
    let (ok, output) = wsgate_check(&path);
    assert!(ok, "{output}");
    assert!(
        output.contains("warning") && output.contains("\"chat-backends\"") && output.contains("[route.inspect]"),
        "no warning about rebalancing plain splices:\n{output}"
    );

    let inspected = replace(
        &plain,
        "allowed_origins = [\"https://chat.example.com\"]",
        "allowed_origins = [\"https://chat.example.com\"]\ninspect = {}",
    );
    let path = dir.path().join("inspected.toml");
    std::fs::write(&path, inspected).unwrap();
    let (ok, output) = wsgate_check(&path);
    assert!(ok, "{output}");
    assert!(!output.contains("warning"), "unexpected warning:\n{output}");
}

#[test]
fn srv_servers_and_the_resolver_are_checked() {
    let server = "{ address = \"127.0.0.1:9001\" }";
    let with_server = |entry: &str| replace(BASE, server, entry);
    let srv = with_server("{ srv = \"_ws._tcp.chat.service.internal\" }");
    let srv = replace(
        &srv,
        "[global]",
        "[global]\nresolver = [\"127.0.0.1:8600\", \"[::1]:53\"]",
    );
    let config = Config::from_toml(&srv, Path::new(FILE)).expect("an SRV entry and a resolver list load");
    assert_eq!(
        config.upstreams[0].servers[0].target.to_string(),
        "_ws._tcp.chat.service.internal"
    );

    let text = with_server("{ srv = \"_ws._tcp.chat\", weight = 2 }");
    let error = single_error(&text, "upstream[0].servers[0].weight");
    assert!(error.message.contains("SRV record"), "{error:#?}");
    assert_eq!(error.line, line_of(&text, "srv =", 0));
    let error = single_error(
        &with_server("{ srv = \"_ws._tcp.chat\", backup = true }"),
        "upstream[0].servers[0].backup",
    );
    assert!(error.message.contains("priority"), "{error:#?}");
    single_error(
        &with_server("{ srv = \"_ws._tcp.chat\", address = \"127.0.0.1:1\" }"),
        "upstream[0].servers[0].srv",
    );
    let error = single_error(&with_server("{ drain = true }"), "upstream[0].servers[0]");
    assert!(error.message.contains("`srv`"), "{error:#?}");
    single_error(
        &with_server("{ srv = \"_ws._tcp.chat:8080\" }"),
        "upstream[0].servers[0].srv",
    );

    let resolver = |value: &str| replace(BASE, "[global]", &format!("[global]\nresolver = {value}"));
    let text = resolver("\"consul.internal:8600\"");
    let error = single_error(&text, "global.resolver");
    assert!(error.message.contains("IP:PORT"), "{error:#?}");
    assert_eq!(error.line, line_of(&text, "resolver =", 0));
    single_error(&resolver("[\"127.0.0.1:8600\", \"127.0.0.1\"]"), "global.resolver[1]");
    single_error(&resolver("[]"), "global.resolver");
    single_error(&resolver("8600"), "global.resolver");
}

#[test]
fn splice_threads_past_its_bound_is_an_error_naming_the_key_and_zero_and_the_default_load() {
    let text = replace(
        BASE,
        "max_connections = 100",
        "max_connections = 100\nsplice_threads = 100000",
    );
    let error = single_error(&text, "global.splice_threads");
    assert_eq!(error.line, line_of(&text, "splice_threads", 0));
    assert!(
        error.message.contains("between 0") && error.message.contains("256"),
        "{error:#?}"
    );
    let off = replace(
        BASE,
        "max_connections = 100",
        "max_connections = 100\nsplice_threads = 0",
    );
    let config = Config::from_toml(&off, Path::new(FILE)).expect("splice_threads = 0 loads");
    assert_eq!(config.global.splice_threads, 0);
    let default = Config::from_toml(BASE, Path::new(FILE)).expect("the base config loads");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(default.global.splice_threads, cpus, "one per CPU by default");
}
