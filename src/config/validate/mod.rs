//! From the raw file to a [`Config`]: every check, every problem reported.
//!
//! This module holds the entry point, the [`Checker`] that collects the
//! problems and the helpers every stage shares; the checks themselves live in
//! [`listener`], [`route`], [`upstream`] and [`cluster`].

mod cluster;
mod listener;
mod route;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::raw::{DurationOrOff, RawAdmin, RawConfig, RawGlobal, RawListener};
use super::units::HumanDuration;
use super::{Admin, Config, ConfigError, ConfigErrors, Global, KeepaliveProbes, Nameservers, TcpLiveness};

const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_REQUEST_HEADER_SIZE: u64 = 16 * 1024;
const DEFAULT_MAX_CONNECTIONS: u64 = 100_000;
const DEFAULT_IPV6_CLIENT_PREFIX: u8 = 64;
/// More splice threads than this would only share the same cores.
const MAX_SPLICE_THREADS: u64 = 256;
const DEFAULT_LOG_FILTER: &str = "info";
/// Below this, ordinary browser requests with a few cookies would be refused.
const MIN_REQUEST_HEADER_SIZE: u64 = 8 * 1024;
const MAX_REQUEST_HEADER_SIZE: u64 = 1024 * 1024;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// The kernel's bounds on the keepalive timers (`TCP_KEEPIDLE`,
/// `TCP_KEEPINTVL`: whole seconds up to 32767) and probe count (`TCP_KEEPCNT`).
const MAX_KEEPALIVE_SECONDS: u64 = 32_767;
const MAX_KEEPALIVE_COUNT: u32 = 127;

/// The four `tcp_*` keys of a listener or an upstream, as written.
pub(super) struct RawTcpKeys<'r> {
    pub(super) keepalive: &'r Option<Spanned<DurationOrOff>>,
    pub(super) interval: &'r Option<Spanned<HumanDuration>>,
    pub(super) count: &'r Option<Spanned<u32>>,
    pub(super) user_timeout: &'r Option<Spanned<DurationOrOff>>,
}

pub(super) fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let raw = deserialize(text, path)?;
    let mut check = Checker {
        file: path,
        text,
        errors: Vec::new(),
        system_resolver: None,
    };
    let config = check.config(raw);
    if check.errors.is_empty() {
        Ok(config)
    } else {
        check.errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(check.errors))
    }
}

/// Syntax and shape: TOML errors, unknown keys and values of the wrong type,
/// each reported with the key's full path (`upstream[0].connect_timeout`).
///
/// serde stops at the first problem, so each one found is taken out of the
/// parsed document (the key removed, as if it had not been written) and the
/// document deserialized again, until it goes through: one run reports
/// them all.
fn deserialize(text: &str, path: &Path) -> Result<RawConfig, ConfigErrors> {
    let error_at = |e: &toml::de::Error, key: String| {
        let at = e.span().map_or(0, |s| s.start);
        ConfigError::at(path, text, at, key, e.message().trim_end())
    };
    let (mut document, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        return Err(ConfigErrors(
            syntax.iter().map(|e| error_at(e, String::new())).collect(),
        ));
    }
    let mut errors = Vec::new();
    // Keys taken out, with where their values were.
    let mut removed: Vec<(String, std::ops::Range<usize>)> = Vec::new();
    // Each pass removes one key, so the count of keys bounds the passes;
    // the cap keeps a pathological file from taking long.
    'passes: for _ in 0..MAX_SHAPE_ERRORS {
        let (segments, key, error) = match shape_error(&document) {
            None if errors.is_empty() => {
                let deserializer = toml::Deserializer::from(document);
                return serde_path_to_error::deserialize(deserializer)
                    .map_err(|e| ConfigErrors::single(error_at(e.inner(), key_path(&key_segments(e.path())))));
            }
            None => break,
            Some(found) => found,
        };
        // A required key taken out in an earlier pass is now "missing": it
        // was reported as what it was. A stand-in of the right type lets
        // the rest of the file be checked.
        if let Some((missing, span)) = missing_removed_key(&error, &key, &removed) {
            for stand_in in ["\"\"", "0", "false", "[]", "{}"] {
                let Ok(value) = DeValue::parse(stand_in) else {
                    continue;
                };
                let mut tried = document.clone();
                let Some(table) = table_at(tried.get_mut(), &segments) else {
                    break;
                };
                table.insert(
                    Spanned::new(span.clone(), std::borrow::Cow::Owned(missing.clone())),
                    Spanned::new(span.clone(), value.into_inner()),
                );
                let full = if key.is_empty() {
                    missing.clone()
                } else {
                    format!("{key}.{missing}")
                };
                let still_wrong = shape_error(&tried).is_some_and(|(_, next, _)| next == full);
                if !still_wrong {
                    document = tried;
                    continue 'passes;
                }
            }
            break;
        }
        errors.push(error_at(&error, key.clone()));
        let span = error.span().unwrap_or_default();
        if !remove_key(document.get_mut(), &segments) {
            break;
        }
        removed.push((key, span));
    }
    errors.sort_by_key(|e| (e.line, e.column));
    errors.dedup();
    Err(ConfigErrors(errors))
}

/// The first shape error in `document`: its key as segments and as text.
fn shape_error(document: &toml::Spanned<DeTable<'_>>) -> Option<(Vec<KeySegment>, String, toml::de::Error)> {
    let deserializer = toml::Deserializer::from(document.clone());
    let e = serde_path_to_error::deserialize::<_, RawConfig>(deserializer).err()?;
    let segments = key_segments(e.path());
    let key = key_path(&segments);
    Some((segments, key, e.into_inner()))
}

/// When `error` says a key of the table at `table` is missing and an
/// earlier pass took that key out: its name and where it was.
fn missing_removed_key(
    error: &toml::de::Error,
    table: &str,
    removed: &[(String, std::ops::Range<usize>)],
) -> Option<(String, std::ops::Range<usize>)> {
    let name = error.message().strip_prefix("missing field `")?.split('`').next()?;
    let full = if table.is_empty() {
        name.to_owned()
    } else {
        format!("{table}.{name}")
    };
    let (_, span) = removed.iter().find(|(key, _)| *key == full)?;
    Some((name.to_owned(), span.clone()))
}

/// More shape errors than this in one file stop the search for more.
const MAX_SHAPE_ERRORS: usize = 100;

/// One step of a key's path, as the user wrote it.
enum KeySegment {
    Key(String),
    Index(usize),
}

/// The path serde_path_to_error saw, without `Spanned`'s private field
/// names (the user never wrote them).
fn key_segments(path: &serde_path_to_error::Path) -> Vec<KeySegment> {
    path.iter()
        .filter_map(|segment| match segment {
            serde_path_to_error::Segment::Map { key } if !key.starts_with("$__serde_spanned") => {
                Some(KeySegment::Key(key.clone()))
            }
            serde_path_to_error::Segment::Seq { index } => Some(KeySegment::Index(*index)),
            _ => None,
        })
        .collect()
}

/// `upstream[0].servers[1].address`.
fn key_path(segments: &[KeySegment]) -> String {
    let mut path = String::new();
    for segment in segments {
        match segment {
            KeySegment::Key(key) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            KeySegment::Index(index) => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

/// Removes the deepest key on `segments` from `table`: the unknown key, or
/// the key whose value is wrong (an array with a wrong element goes whole).
/// False when there is nothing to remove.
fn remove_key(table: &mut DeTable<'_>, segments: &[KeySegment]) -> bool {
    let Some(last_key) = segments.iter().rposition(|s| matches!(s, KeySegment::Key(_))) else {
        return false;
    };
    let KeySegment::Key(key) = &segments[last_key] else {
        return false;
    };
    table_at(table, &segments[..last_key]).is_some_and(|table| table.remove(key.as_str()).is_some())
}

/// The table at the end of `segments` (keys and array indices) from `table`.
fn table_at<'t, 'i>(table: &'t mut DeTable<'i>, segments: &[KeySegment]) -> Option<&'t mut DeTable<'i>> {
    let mut current = table;
    let mut i = 0;
    while i < segments.len() {
        let KeySegment::Key(key) = &segments[i] else {
            return None;
        };
        let mut value = current.get_mut(key.as_str())?.get_mut();
        i += 1;
        while let Some(KeySegment::Index(index)) = segments.get(i) {
            let DeValue::Array(array) = value else {
                return None;
            };
            value = array.get_mut(*index)?.get_mut();
            i += 1;
        }
        let DeValue::Table(inner) = value else {
            return None;
        };
        current = inner;
    }
    Some(current)
}

struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
    /// Whether `/etc/resolv.conf` can be used, read once when a server
    /// needs DNS and `[global] resolver` is not set; `Err` after it was
    /// reported, so the problem is said once.
    system_resolver: Option<Result<(), ()>>,
}

impl Checker<'_> {
    fn error<T>(&mut self, value: &Spanned<T>, key: impl Into<String>, message: impl Into<String>) {
        self.errors
            .push(ConfigError::at(self.file, self.text, value.span().start, key, message));
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let global = self.global(raw.global);
        if raw.listeners.is_empty() {
            self.errors.push(ConfigError::file(
                self.file,
                "no [[listener]]: wsgate needs at least one address to accept connections on",
            ));
        }
        if raw.routes.is_empty() {
            self.errors.push(ConfigError::file(
                self.file,
                "no [[route]]: every request would be answered 404",
            ));
        }
        self.unique_names("listener", raw.listeners.iter().map(|l| &l.name));
        self.unique_names("route", raw.routes.iter().map(|r| &r.name));
        self.unique_names("upstream", raw.upstreams.iter().map(|u| &u.name));

        let listeners = raw
            .listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| self.listener(i, l, global.handshake_timeout))
            .collect::<Vec<_>>();
        self.unique_addresses(&raw.listeners);
        let upstreams = raw
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| self.upstream(i, u, &global.resolver))
            .collect::<Vec<_>>();
        let routes = raw
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.route(i, r, &raw.upstreams))
            .collect::<Vec<_>>();
        self.reachable_routes(&raw.routes, &routes);
        let admin = raw.admin.as_ref().and_then(|admin| self.admin(admin, &raw.listeners));
        let cluster = raw.cluster.as_ref().and_then(|cluster| self.cluster(cluster));

        Config {
            path: self.file.to_path_buf(),
            global,
            listeners,
            routes,
            upstreams,
            admin,
            cluster,
        }
    }

    /// `[admin]`: an address of its own, not one a listener has.
    fn admin(&mut self, raw: &RawAdmin, listeners: &[RawListener]) -> Option<Admin> {
        let listen = raw.listen.as_ref()?;
        let Ok(addr) = listen.get_ref().parse::<SocketAddr>() else {
            let message = format!(
                "{:?} is not an address to listen on; write IP:PORT such as \"127.0.0.1:9090\"",
                listen.get_ref()
            );
            self.error(listen, "admin.listen", message);
            return None;
        };
        let taken = listeners
            .iter()
            .position(|l| addr.port() != 0 && l.listen.get_ref().parse::<SocketAddr>().ok() == Some(addr));
        if let Some(i) = taken {
            self.error(
                listen,
                "admin.listen",
                format!("{addr} is already the address of listener[{i}]"),
            );
            return None;
        }
        Some(Admin { listen: addr })
    }

    /// `Err` with the reason the first time `/etc/resolv.conf` cannot be
    /// used; `Ok` when it can, or when that was already reported.
    fn system_resolver(&mut self) -> Result<(), String> {
        if self.system_resolver.is_some() {
            return Ok(());
        }
        match hickory_resolver::system_conf::read_system_conf() {
            Ok(_) => {
                self.system_resolver = Some(Ok(()));
                Ok(())
            }
            Err(why) => {
                self.system_resolver = Some(Err(()));
                Err(why.to_string())
            }
        }
    }

    /// `global.resolver`: one `IP:PORT` or a list of them.
    fn resolver(&mut self, raw: Option<Spanned<toml::Value>>) -> Nameservers {
        let Some(raw) = raw else {
            return Nameservers::System;
        };
        let explain = |text: &str| {
            format!("{text:?} is not a name server address; write IP:PORT such as \"127.0.0.1:8600\" or \"[::1]:53\"")
        };
        let shape = "must be \"IP:PORT\" or a list of them (leave it out to use /etc/resolv.conf)";
        let (values, listed) = match raw.get_ref() {
            toml::Value::String(one) => (vec![one.clone()], false),
            toml::Value::Array(many) if !many.is_empty() => {
                let mut values = Vec::with_capacity(many.len());
                for (k, value) in many.iter().enumerate() {
                    match value.as_str() {
                        Some(text) => values.push(text.to_owned()),
                        None => self.error(&raw, format!("global.resolver[{k}]"), shape),
                    }
                }
                (values, true)
            }
            _ => {
                self.error(&raw, "global.resolver", shape);
                return Nameservers::System;
            }
        };
        let mut addrs = Vec::with_capacity(values.len());
        for (k, text) in values.iter().enumerate() {
            let key = if listed {
                format!("global.resolver[{k}]")
            } else {
                "global.resolver".to_owned()
            };
            match text.parse::<SocketAddr>() {
                Ok(addr) if addr.port() != 0 => addrs.push(addr),
                _ => self.error(&raw, key, explain(text)),
            }
        }
        if addrs.is_empty() {
            return Nameservers::System;
        }
        Nameservers::Listed(addrs)
    }

    fn global(&mut self, raw: RawGlobal) -> Global {
        let max_request_header_size = match raw.max_request_header_size {
            Some(size) if !(MIN_REQUEST_HEADER_SIZE..=MAX_REQUEST_HEADER_SIZE).contains(&size.get_ref().0) => {
                self.error(
                    &size,
                    "global.max_request_header_size",
                    format!("must be between 8KiB and 1MiB, not {} bytes", size.get_ref().0),
                );
                DEFAULT_MAX_REQUEST_HEADER_SIZE
            }
            Some(size) => size.get_ref().0,
            None => DEFAULT_MAX_REQUEST_HEADER_SIZE,
        };
        let max_connections = match raw.max_connections {
            Some(n) if n.get_ref() == &0 => {
                self.error(&n, "global.max_connections", "must be at least 1");
                DEFAULT_MAX_CONNECTIONS
            }
            Some(n) => *n.get_ref(),
            None => DEFAULT_MAX_CONNECTIONS,
        };
        let ipv6_client_prefix = match raw.ipv6_client_prefix {
            Some(p) if !(1..=128).contains(p.get_ref()) => {
                self.error(
                    &p,
                    "global.ipv6_client_prefix",
                    "must be between 1 and 128 (64 is one host's usual share)",
                );
                DEFAULT_IPV6_CLIENT_PREFIX
            }
            Some(p) => *p.get_ref(),
            None => DEFAULT_IPV6_CLIENT_PREFIX,
        };
        let log_filter = match raw.log_filter {
            Some(filter) if filter.get_ref().trim().is_empty() => {
                self.error(
                    &filter,
                    "global.log_filter",
                    "must not be empty; \"info\" is the default and \"off\" turns logging off",
                );
                DEFAULT_LOG_FILTER.to_owned()
            }
            Some(filter) => match tracing_subscriber::EnvFilter::builder().parse(filter.get_ref()) {
                Ok(_) => filter.into_inner(),
                Err(e) => {
                    let message = format!("{e}; write directives such as \"info\" or \"warn,wsgate::tunnel=debug\"");
                    self.error(&filter, "global.log_filter", message);
                    DEFAULT_LOG_FILTER.to_owned()
                }
            },
            None => DEFAULT_LOG_FILTER.to_owned(),
        };
        let splice_threads = match raw.splice_threads {
            Some(n) if *n.get_ref() > MAX_SPLICE_THREADS => {
                self.error(
                    &n,
                    "global.splice_threads",
                    format!(
                        "must be between 0 (every tunnel on the runtime's workers) and {MAX_SPLICE_THREADS}; \
                         one per CPU is the default"
                    ),
                );
                0
            }
            Some(n) => *n.get_ref() as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        Global {
            splice_threads,
            resolver: self.resolver(raw.resolver),
            log_format: raw.log_format.unwrap_or_default(),
            log_filter,
            http_log: raw.http_log.unwrap_or(true),
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
            ipv6_client_prefix,
            handshake_timeout: self.timeout(
                raw.handshake_timeout,
                "global.handshake_timeout",
                DEFAULT_HANDSHAKE_TIMEOUT,
            ),
            shutdown_timeout: raw
                .shutdown_timeout
                .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |d| d.into_inner().0),
            // Bounded to 1MiB above, so this fits any usize.
            max_request_header_size: max_request_header_size as usize,
        }
    }

    /// A timeout of zero would refuse everything; say so rather than obey.
    fn timeout(&mut self, value: Option<Spanned<HumanDuration>>, key: &str, default: Duration) -> Duration {
        match value {
            Some(d) if d.get_ref().0.is_zero() => {
                self.error(&d, key, "must be longer than zero");
                default
            }
            Some(d) => d.get_ref().0,
            None => default,
        }
    }

    /// `tcp_keepalive`, `tcp_keepalive_interval`, `tcp_keepalive_count` and
    /// `tcp_user_timeout` of the table at `prefix` (`listener[0]`), each
    /// defaulting to [`TcpLiveness::default`]'s.
    fn tcp_liveness(&mut self, prefix: &str, raw: RawTcpKeys<'_>) -> TcpLiveness {
        let defaults = TcpLiveness::default();
        let default_probes = defaults.keepalive.expect("keepalive is on by default");
        let key = |name: &str| format!("{prefix}.{name}");
        let seconds = |checker: &mut Self, value: &Spanned<Duration>, name: &str, default: Duration| {
            let d = *value.get_ref();
            if d.is_zero() || d.subsec_nanos() != 0 || d.as_secs() > MAX_KEEPALIVE_SECONDS {
                let off = if name == "tcp_keepalive" {
                    " (\"off\" turns keepalive off)"
                } else {
                    ""
                };
                let message = format!(
                    "must be whole seconds from 1s to {MAX_KEEPALIVE_SECONDS}s{off}, the kernel counts no finer"
                );
                checker.error(value, key(name), message);
                default
            } else {
                d
            }
        };
        let idle = match raw.keepalive {
            Some(v) => match *v.get_ref() {
                DurationOrOff::Off => None,
                DurationOrOff::On(d) => Some(seconds(
                    self,
                    &Spanned::new(v.span(), d),
                    "tcp_keepalive",
                    default_probes.idle,
                )),
            },
            None => Some(default_probes.idle),
        };
        let interval = raw.interval.as_ref().map_or(default_probes.interval, |v| {
            seconds(
                self,
                &Spanned::new(v.span(), v.get_ref().0),
                "tcp_keepalive_interval",
                default_probes.interval,
            )
        });
        let count = match raw.count {
            Some(v) if !(1..=MAX_KEEPALIVE_COUNT).contains(v.get_ref()) => {
                self.error(
                    v,
                    key("tcp_keepalive_count"),
                    format!("must be from 1 to {MAX_KEEPALIVE_COUNT}"),
                );
                default_probes.count
            }
            Some(v) => *v.get_ref(),
            None => default_probes.count,
        };
        if idle.is_none() {
            for (name, span) in [
                ("tcp_keepalive_interval", raw.interval.as_ref().map(Spanned::span)),
                ("tcp_keepalive_count", raw.count.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = span {
                    self.error(
                        &Spanned::new(span, ()),
                        key(name),
                        "only used when tcp_keepalive is not \"off\"",
                    );
                }
            }
        }
        let user_timeout = match raw.user_timeout {
            Some(v) => match *v.get_ref() {
                DurationOrOff::Off => None,
                DurationOrOff::On(d) if d.is_zero() || d.as_millis() > u128::from(u32::MAX) => {
                    self.error(
                        v,
                        key("tcp_user_timeout"),
                        "must be from 1ms to 49 days (\"off\" turns it off)",
                    );
                    defaults.user_timeout
                }
                DurationOrOff::On(d) => Some(d),
            },
            None => defaults.user_timeout,
        };
        TcpLiveness {
            keepalive: idle.map(|idle| KeepaliveProbes { idle, interval, count }),
            user_timeout,
        }
    }

    fn unique_names<'r>(&mut self, kind: &str, names: impl Iterator<Item = &'r Spanned<String>>) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, name) in names.enumerate() {
            let key = format!("{kind}[{i}].name");
            if name.get_ref().trim().is_empty() {
                self.error(name, key, "must not be empty");
            } else if let Some(first) = seen.get(name.get_ref().as_str()) {
                let message = format!(
                    "duplicate {kind} name {:?}, already used by {kind}[{first}]",
                    name.get_ref()
                );
                self.error(name, key, message);
            } else {
                seen.insert(name.get_ref(), i);
            }
        }
    }

    fn relative_to_config(&self, path: &str) -> PathBuf {
        let dir = self.file.parent().unwrap_or(Path::new("."));
        dir.join(path)
    }

    /// For a file that cannot be read at a relative path as written: where
    /// such a path is looked for (a copied example configuration keeps its
    /// relative paths, which then point next to the copy).
    fn relative_path_hint(&self, written: &str) -> String {
        if Path::new(written).is_absolute() {
            return String::new();
        }
        let dir = self
            .file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        format!(
            " (a relative path is relative to the configuration file's directory, {}: \
             write an absolute path, or put the file there)",
            dir.display()
        )
    }

    /// A count that must be at least 1: a cap of 0 would refuse everything.
    fn positive(&mut self, value: &Option<Spanned<u64>>, key: &str) -> Option<usize> {
        let value = value.as_ref()?;
        if *value.get_ref() == 0 {
            self.error(value, key, "must be at least 1 (omit the key for no limit)");
            return None;
        }
        Some(usize::try_from(*value.get_ref()).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    fn errors(text: &str) -> Vec<ConfigError> {
        parse(text, Path::new("/etc/wsgate/test.toml")).unwrap_err().0
    }

    const BASE: &str = r#"
[[listener]]
name = "public"
listen = "127.0.0.1:0"

[[route]]
name = "chat"
upstream = "chat-backends"

[[upstream]]
name = "chat-backends"
servers = [{ address = "127.0.0.1:9001" }]
"#;

    #[test]
    fn a_valid_file_loads() {
        let config = parse(BASE, Path::new("x.toml")).unwrap();
        assert_eq!(config.routes[0].path_prefix, "/");
        assert_eq!(config.upstreams[0].connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    }

    #[test]
    fn http2_keys_have_defaults_and_bad_ones_name_their_key() {
        let config = parse(BASE, Path::new("x.toml")).unwrap();
        assert_eq!(config.listeners[0].http2, Some(crate::config::Http2::default()));
        let text = BASE.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nhttp2_max_concurrent_streams = 16\nhttp2_keepalive_interval = \"off\"",
        );
        let http2 = parse(&text, Path::new("x.toml")).unwrap().listeners[0].http2.unwrap();
        assert_eq!((http2.max_concurrent_streams, http2.keepalive_interval), (16, None));
        let zero = errors(&BASE.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nhttp2_max_concurrent_streams = 0",
        ));
        assert_eq!(zero[0].key, "listener[0].http2_max_concurrent_streams", "{zero:?}");
        let unused = errors(&BASE.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nhttp2 = false\nhttp2_idle_timeout = \"1m\"",
        ));
        assert_eq!(unused[0].key, "listener[0].http2_idle_timeout", "{unused:?}");
        assert!(unused[0].message.contains("http2 is not false"), "{unused:?}");
    }

    #[test]
    fn unknown_keys_name_their_full_path() {
        let text = BASE.replace("servers =", "connect_timout = \"3s\"\nservers =");
        let errors = errors(&text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "upstream[0].connect_timout");
        assert_eq!(errors[0].line, 12);
        assert!(errors[0].message.contains("connect_timout"), "{}", errors[0].message);
    }

    #[test]
    fn logging_and_admin_keys_have_defaults() {
        let config = parse(BASE, Path::new("x.toml")).unwrap();
        assert_eq!(config.global.log_format, crate::config::LogFormat::Text);
        assert_eq!(config.global.log_filter, "info");
        assert!(config.global.http_log);
        assert!(config.admin.is_none());
        let text = format!(
            "[global]\nlog_format = \"json\"\nlog_filter = \"warn,wsgate::tunnel=debug\"\nhttp_log = false\n\
             [admin]\nlisten = \"127.0.0.1:9090\"\n{BASE}"
        );
        let config = parse(&text, Path::new("x.toml")).unwrap();
        assert_eq!(config.global.log_format, crate::config::LogFormat::Json);
        assert_eq!(config.global.log_filter, "warn,wsgate::tunnel=debug");
        assert!(!config.global.http_log);
        assert_eq!(config.admin.unwrap().listen, "127.0.0.1:9090".parse().unwrap());
    }

    #[test]
    fn bad_logging_and_admin_keys_name_file_line_and_key() {
        let format = errors(&format!("[global]\nlog_format = \"xml\"\n{BASE}"));
        assert_eq!(format[0].key, "global.log_format", "{format:?}");
        assert_eq!(format[0].line, 2);
        let filter = errors(&format!("[global]\nlog_filter = \"info,wsgate=loud\"\n{BASE}"));
        assert_eq!(filter[0].key, "global.log_filter", "{filter:?}");
        assert_eq!(filter[0].line, 2);
        let admin = errors(&format!("{BASE}\n[admin]\nlisten = \"localhost\"\n"));
        assert_eq!(admin[0].key, "admin.listen", "{admin:?}");
        assert_eq!(admin[0].line, 15);
        let shared = BASE.replace("127.0.0.1:0", "127.0.0.1:8080") + "\n[admin]\nlisten = \"127.0.0.1:8080\"\n";
        let shared = errors(&shared);
        assert!(shared[0].message.contains("listener[0]"), "{shared:?}");
        let unknown = errors(&format!("{BASE}\n[admin]\nlisten = \"127.0.0.1:0\"\nport = 9\n"));
        assert_eq!(unknown[0].key, "admin.port", "{unknown:?}");
    }

    #[test]
    fn a_lower_message_limit_lowers_the_default_frame_limit_and_a_larger_frame_limit_is_named() {
        let with = |inspect: &str| {
            BASE.replace(
                "upstream = \"chat-backends\"\n",
                &format!("upstream = \"chat-backends\"\ninspect = {{ {inspect} }}\n"),
            )
        };
        let config = parse(&with("max_message_size = \"1MiB\""), Path::new("x.toml")).unwrap();
        let inspect = config.routes[0].inspect.as_ref().unwrap();
        assert_eq!((inspect.max_frame_size, inspect.max_message_size), (1 << 20, 1 << 20));
        let errors = errors(&with("max_message_size = \"1MiB\", max_frame_size = \"2MiB\""));
        assert_eq!(errors[0].key, "route[0].inspect.max_frame_size", "{errors:?}");
        assert!(errors[0].message.contains("max_message_size"), "{errors:?}");
    }

    #[test]
    fn bad_values_inside_spanned_fields_name_the_key() {
        let text = BASE.replace("listen = \"127.0.0.1:0\"", "listen = 8443");
        let listen = errors(&text);
        assert_eq!(listen[0].key, "listener[0].listen", "{listen:?}");
        let text = BASE.replace("servers =", "connect_timeout = \"10 parsecs\"\nservers =");
        let timeout = errors(&text);
        assert_eq!(timeout[0].key, "upstream[0].connect_timeout", "{timeout:?}");
        assert_eq!(timeout[0].line, 12);
    }
}
