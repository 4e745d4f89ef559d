//! The configuration template the Debian package installs as
//! `/etc/wsgate/wsgate.toml` (`packaging/wsgate.toml`): refused while its
//! placeholders are there, each one named with its line and key, and
//! loading once they are filled in, as the install steps of the README do.

use std::path::{Path, PathBuf};
use std::process::Command;

use wsgate::config::placeholder::PLACEHOLDER;
use wsgate::config::Config;
use wsgate::tools::certgen;

const TEMPLATE: &str = include_str!("../packaging/wsgate.toml");

/// The template written to `dir`, its certificate paths moved from
/// `/etc/wsgate/certs/` to `dir` (where a development certificate is made
/// under the names the template uses, as the README's install steps do),
/// with `fill` applied to the text.
fn installed(dir: &Path, fill: impl Fn(String) -> String) -> PathBuf {
    let names = ["app.example.com".to_owned()];
    certgen::write(dir, "wsgate", &names, false).expect("make the certificate");
    let text = TEMPLATE.replace("/etc/wsgate/certs/", &format!("{}/", dir.display()));
    assert_ne!(
        text, TEMPLATE,
        "the template names no certificate under /etc/wsgate/certs/"
    );
    let path = dir.join("wsgate.toml");
    std::fs::write(&path, fill(text)).expect("write the config");
    path
}

fn filled(text: String) -> String {
    text.replace("https://CHANGE-ME.example.com", "https://app.example.com")
        .replace("CHANGE-ME.internal:8080", "127.0.0.1:8080")
}

#[test]
fn the_unfilled_template_is_refused_naming_each_placeholder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = installed(dir.path(), |text| text);
    let errors = Config::load(&path).expect_err("the template must not load as it is");
    let keys: Vec<&str> = errors.errors().iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["route[0].allowed_origins[0]", "upstream[0].servers[0].address"],
        "{errors}"
    );
    for error in errors.errors() {
        assert!(error.line > 0 && error.message.contains(PLACEHOLDER), "{error}");
    }

    // What an operator sees.
    let output = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run wsgate check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("route[0].allowed_origins[0]: CHANGE-ME is a placeholder of the packaged template"),
        "{stderr}"
    );
}

#[test]
fn the_filled_in_template_loads_with_its_production_listeners() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = installed(dir.path(), filled);
    let config = Config::load(&path).unwrap_or_else(|errors| panic!("{errors}"));
    let listeners: Vec<(String, String, bool)> = config
        .listeners
        .iter()
        .map(|l| (l.name.clone(), l.listen.to_string(), l.tls.is_some()))
        .collect();
    assert_eq!(
        listeners,
        [
            ("plain".to_owned(), "0.0.0.0:80".to_owned(), false),
            ("tls".to_owned(), "0.0.0.0:443".to_owned(), true)
        ]
    );
    assert_eq!(config.routes.len(), 1);
    assert!(config.routes[0].admission.allowed_origins.is_some());
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());

    let output = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run wsgate check");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// Every key of the template, commented out or not, is one the
/// configuration accepts: uncommented all at once (one table of each kind),
/// the file still loads.
#[test]
fn every_key_the_template_lists_is_a_real_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = dir.path().to_owned();
    std::fs::write(files.join("redis-password"), "secret\n").expect("write the password file");
    let path = installed(dir.path(), |text| {
        // The files the commented-out keys name, made in `dir`.
        let text = filled(text)
            .replace(
                "/etc/wsgate/backend-ca.pem",
                &files.join(certgen::CA_FILE).display().to_string(),
            )
            .replace(
                "/etc/wsgate/redis-password",
                &files.join("redis-password").display().to_string(),
            );
        text.lines()
            .map(|line| match line.strip_prefix("# ") {
                // A commented-out key or table header, not prose.
                Some(rest) if is_key_or_table(rest) => rest.to_owned(),
                _ => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n")
            // hash_key and hash_load_factor are refused without it.
            .replace("balance = \"least_connections\"", "balance = \"hash\"")
    });
    let text = std::fs::read_to_string(&path).expect("read");
    let config = Config::from_toml(&text, &path).unwrap_or_else(|errors| panic!("{errors}\n---\n{text}"));
    assert!(config.cluster.is_some() && config.routes[0].inspect.is_some(), "{text}");
}

/// `key = value` or `[table]`, as opposed to a sentence.
fn is_key_or_table(line: &str) -> bool {
    let line = line.trim_start();
    if line.starts_with('[') {
        return !line.starts_with("[[") && line.split_whitespace().next().is_some_and(|w| w.ends_with(']'));
    }
    let Some((key, _)) = line.split_once(" = ") else {
        return false;
    };
    !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
}
