//! Origin allowlist for WebSocket Upgrade requests.
//!
//! # Why
//!
//! A WebSocket handshake is not subject to the browser's same-origin policy:
//! any page on any site can run `new WebSocket("wss://chat.example.com/ws")`,
//! and the browser attaches the visitor's cookies for `chat.example.com` to
//! the Upgrade request. Without a check, a malicious page gets a fully
//! authenticated socket in the visitor's name and can read everything the
//! backend sends on it (*cross-site WebSocket hijacking*, CSWSH).
//!
//! What the browser does add, and what script cannot forge, is the `Origin`
//! header naming the page that opened the socket. RFC 6455 §10.2 ("Origin
//! Considerations") leaves it to the server to refuse origins it does not
//! expect; this module implements that check against a per-route list:
//!
//! ```toml
//! allowed_origins = ["https://chat.example.com", "https://*.example.com", "http://localhost:3000"]
//! ```
//!
//! Non-browser clients can send any `Origin` (or none); the check protects
//! browser users' ambient credentials, it does not authenticate clients.
//! Whether a request without an `Origin` header is admitted is the caller's
//! decision, not this module's.
//!
//! # Rules
//!
//! * Origins are compared as origins (RFC 6454 §3.2, §4): the tuple scheme,
//!   host, port — never as strings. Scheme and host are case-insensitive, and
//!   a scheme's default port (`http`/`ws` 80, `https`/`wss` 443) is the same
//!   as no port, so `https://chat.example.com:443` equals
//!   `https://chat.example.com`. Scheme and port must otherwise match exactly.
//! * Hosts go through the WHATWG host parser of the `url` crate, so an IDN
//!   pattern written in Unicode (`https://bücher.example`) matches the
//!   punycode that browsers send (`https://xn--bcher-kva.example`); a header
//!   must itself be ASCII, as RFC 6454 serializes it. IPv4/IPv6 literals are
//!   compared as addresses.
//! * `https://*.example.com` matches subdomains at any depth
//!   (`a.example.com`, `a.b.example.com`) but not `example.com` itself and
//!   not `badexample.com`. `*.` is only allowed as the whole leftmost label.
//! * The header value must be a serialized origin (RFC 6454 §6.2:
//!   `scheme "://" host [ ":" port ]`, nothing else): a path (even a lone
//!   trailing `/`), query, fragment, userinfo, percent-encoding, whitespace,
//!   several comma-separated values, an empty value, invalid UTF-8 or a scheme
//!   other than `http`, `https`, `ws`, `wss` never match anything.
//! * The opaque origin `null` (RFC 6454 §6.2 step 1; sent by sandboxed
//!   iframes, `file:` pages, some redirects) is refused unless the list
//!   contains the pattern `"null"`: it is shared by every such page, so
//!   allowing it allows all of them.
//! * Patterns are validated when the configuration is loaded
//!   ([`OriginPattern::from_str`](std::str::FromStr)); a bad one is an error
//!   that says what is wrong and shows a correct example.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use url::Host;

/// URL schemes an origin may have. Browsers only send `http` and `https`;
/// `ws`/`wss` are accepted for completeness and are distinct schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scheme {
    Http,
    Https,
    Ws,
    Wss,
}

impl Scheme {
    /// Case-insensitive (RFC 3986 §3.1).
    fn parse(s: &str) -> Option<Scheme> {
        [Scheme::Http, Scheme::Https, Scheme::Ws, Scheme::Wss]
            .into_iter()
            .find(|scheme| s.eq_ignore_ascii_case(scheme.as_str()))
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }

    /// The port an origin without an explicit port has (RFC 6454 §4 step 5).
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http | Scheme::Ws => 80,
            Scheme::Https | Scheme::Wss => 443,
        }
    }
}

/// One entry of `allowed_origins`.
///
/// Written as `scheme://host[:port]`, `scheme://*.domain[:port]` or `null`.
/// Parsed with [`FromStr`]; [`Display`](fmt::Display) gives the canonical
/// form (lowercase, punycode, default port omitted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    kind: PatternKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternKind {
    /// The opaque origin `null`.
    Null,
    /// One origin. `host` is canonical: lowercase ASCII (punycode) domain,
    /// dotted IPv4, or bracketed compressed IPv6.
    Exact { scheme: Scheme, host: String, port: u16 },
    /// Every strict subdomain of `parent` (canonical ASCII domain, no `*.`).
    Subdomains { scheme: Scheme, parent: String, port: u16 },
}

impl FromStr for OriginPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_pattern(s).map(|kind| OriginPattern { kind })
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, wildcard, host, port) = match &self.kind {
            PatternKind::Null => return f.write_str("null"),
            PatternKind::Exact { scheme, host, port } => (scheme, "", host, port),
            PatternKind::Subdomains { scheme, parent, port } => (scheme, "*.", parent, port),
        };
        write!(f, "{}://{wildcard}{host}", scheme.as_str())?;
        if *port != scheme.default_port() {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// A route's allowlist.
///
/// An empty allowlist allows nothing.
#[derive(Debug, Clone)]
pub struct OriginAllowlist {
    allow_null: bool,
    /// Canonical host → the (scheme, port) pairs allowed for it.
    exact: HashMap<String, Vec<(Scheme, u16)>>,
    /// (scheme, port, `"." + parent`) for each `*.parent` pattern.
    subdomains: Vec<(Scheme, u16, String)>,
}

impl OriginAllowlist {
    /// Builds the list; duplicates are harmless. Exact origins are indexed
    /// by canonical host, `*.` patterns kept as suffixes.
    pub fn new(patterns: Vec<OriginPattern>) -> OriginAllowlist {
        let mut list = OriginAllowlist {
            allow_null: false,
            exact: HashMap::new(),
            subdomains: Vec::new(),
        };
        for pattern in patterns {
            match pattern.kind {
                PatternKind::Null => list.allow_null = true,
                PatternKind::Exact { scheme, host, port } => {
                    let pairs = list.exact.entry(host).or_default();
                    if !pairs.contains(&(scheme, port)) {
                        pairs.push((scheme, port));
                    }
                }
                PatternKind::Subdomains { scheme, parent, port } => {
                    let entry = (scheme, port, format!(".{parent}"));
                    if !list.subdomains.contains(&entry) {
                        list.subdomains.push(entry);
                    }
                }
            }
        }
        list
    }

    /// Whether the value of an `Origin` header is allowed. Runs for every
    /// Upgrade request, so it allocates only when it must.
    ///
    /// A value that is not a serialized origin (RFC 6454 §6.2) is never
    /// allowed; `null` only if the list contains `"null"`. Canonical
    /// (lowercase ASCII) domain hosts — what browsers send — are matched
    /// without allocating.
    pub fn allows(&self, origin: &http::HeaderValue) -> bool {
        let bytes = origin.as_bytes();
        if bytes == b"null" {
            return self.allow_null;
        }
        if self.exact.is_empty() && self.subdomains.is_empty() {
            return false;
        }
        // RFC 6454 §6.2 serializes hosts in ASCII (punycode), and browsers
        // send nothing else. Raw Unicode is refused rather than IDNA-mapped:
        // mapping would let look-alikes such as a fullwidth dot (U+FF0E)
        // normalise into an allowed name.
        if !bytes.is_ascii() {
            return false;
        }
        let Ok(value) = std::str::from_utf8(bytes) else {
            return false;
        };
        let Some(origin) = parse_serialized_origin(value) else {
            return false;
        };
        if let Some(pairs) = self.exact.get(&*origin.host) {
            if pairs.contains(&(origin.scheme, origin.port)) {
                return true;
            }
        }
        // Hosts have no empty labels (checked while parsing), so a strictly
        // longer host ending in ".parent" has at least one whole label in
        // front of it: `a.example.com` yes, `badexample.com` / `example.com` no.
        origin.is_domain
            && self.subdomains.iter().any(|(scheme, port, dot_parent)| {
                *scheme == origin.scheme
                    && *port == origin.port
                    && origin.host.len() > dot_parent.len()
                    && origin.host.ends_with(dot_parent.as_str())
            })
    }
}

/// An `Origin` header value, normalised.
struct ParsedOrigin<'a> {
    scheme: Scheme,
    host: Cow<'a, str>,
    is_domain: bool,
    port: u16,
}

/// Parses `scheme "://" host [ ":" port ]` (RFC 6454 §6.2), tolerating only
/// what normalisation makes equal: scheme/host case and an explicit default
/// port. Anything else is `None`.
fn parse_serialized_origin(value: &str) -> Option<ParsedOrigin<'_>> {
    let (scheme, authority) = value.split_once("://")?;
    let scheme = Scheme::parse(scheme)?;
    // Host name characters, IP literal brackets and the port colon; non-ASCII
    // for Unicode hosts. Rejects '/', '?', '#', '@', '%', '\\', ',',
    // whitespace and everything else that has no place in an origin.
    let allowed =
        |b: u8| b >= 0x80 || b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']');
    if !authority.bytes().all(allowed) {
        return None;
    }
    let (host, port) = split_host_port(authority).ok()?;
    let port = match port {
        None => scheme.default_port(),
        Some(port) => parse_port(port).ok()?,
    };
    let (host, is_domain) = canonical_host(host).ok()?;
    Some(ParsedOrigin {
        scheme,
        host,
        is_domain,
        port,
    })
}

/// Splits `host[:port]` / `[ipv6][:port]`. The port is returned unparsed.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), &'static str> {
    let (host, port) = if authority.starts_with('[') {
        let close = authority.find(']').ok_or("an IPv6 address without its closing \"]\"")?;
        let (host, rest) = authority.split_at(close + 1);
        match rest.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if rest.is_empty() => (host, None),
            None => return Err("text after the IPv6 address that is not a port"),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host");
    }
    Ok((host, port))
}

#[derive(Debug, PartialEq, Eq)]
enum PortError {
    Empty,
    NotNumber,
    LeadingZero,
    OutOfRange,
}

/// A port as it appears in a serialized origin: decimal, no sign, no leading
/// zero, 1–65535.
fn parse_port(s: &str) -> Result<u16, PortError> {
    if s.is_empty() {
        return Err(PortError::Empty);
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortError::NotNumber);
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(PortError::LeadingZero);
    }
    match s.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(PortError::OutOfRange),
    }
}

/// Normalises a host with the WHATWG host parser (`url::Host::parse`:
/// lowercase, IDNA to punycode, IP literals). Returns the canonical text and
/// whether it is a domain (as opposed to an IP address).
///
/// Hosts that are already canonical — lowercase ASCII letters, digits, `-`,
/// `_` and `.`, no `xn--` label, not ending in a number (so not IPv4) — are
/// returned borrowed: `url` would return them unchanged (see
/// `tests::fast_path_agrees_with_url`).
fn canonical_host(host: &str) -> Result<(Cow<'_, str>, bool), String> {
    if is_canonical_ascii_domain(host) {
        return Ok((Cow::Borrowed(host), true));
    }
    match Host::parse(host).map_err(|e| e.to_string())? {
        Host::Domain(domain) => {
            check_domain(&domain)?;
            Ok((Cow::Owned(domain), true))
        }
        ip => Ok((Cow::Owned(ip.to_string()), false)),
    }
}

fn is_canonical_ascii_domain(host: &str) -> bool {
    let name_byte = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.');
    if !host.bytes().all(name_byte) {
        return false;
    }
    let mut last = "";
    for label in host.strip_suffix('.').unwrap_or(host).split('.') {
        if label.is_empty() || label.starts_with("xn--") {
            return false;
        }
        last = label;
    }
    // A last label starting with a letter is neither decimal nor `0x` hex, so
    // the WHATWG parser does not treat the host as IPv4.
    last.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
}

/// What `url` accepts as a domain is wider than DNS names; keep to names a
/// browser origin can have: `[a-z0-9-_]` labels, none empty (a single
/// trailing dot, the fully-qualified form, is kept and is a distinct origin).
fn check_domain(domain: &str) -> Result<(), String> {
    if let Some(c) = domain
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!("{c:?} is not allowed in a domain name"));
    }
    let labels = domain.strip_suffix('.').unwrap_or(domain);
    if labels.split('.').any(str::is_empty) {
        return Err("it has an empty label (\"..\" or a leading or lone \".\")".to_owned());
    }
    Ok(())
}

/// Example shown in error messages.
const EXAMPLE: &str = "e.g. \"https://chat.example.com\", \"https://*.example.com\" or \"http://localhost:3000\"";

fn parse_pattern(s: &str) -> Result<PatternKind, String> {
    if s.is_empty() {
        return Err(format!("origin pattern is empty; write an origin, {EXAMPLE}"));
    }
    if s.eq_ignore_ascii_case("null") {
        return Ok(PatternKind::Null);
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "origin pattern {s:?} contains whitespace or control characters; write just the origin, {EXAMPLE}"
        ));
    }
    if s.contains(',') {
        return Err(format!(
            "origin pattern {s:?} contains \",\"; write one origin per list entry, \
             e.g. [\"https://a.example.com\", \"https://b.example.com\"]"
        ));
    }
    if s == "*" || s.starts_with("*://") {
        return Err(format!(
            "origin pattern {s:?} would let every web site open sockets with your visitors' cookies; \
             list the allowed origins instead, {EXAMPLE}"
        ));
    }

    let Some((scheme_text, rest)) = s.split_once("://") else {
        if let Some((scheme_text, rest)) = s.split_once(':') {
            if let Some(scheme) = Scheme::parse(scheme_text) {
                return Err(format!(
                    "origin pattern {s:?}: the scheme must be followed by \"://\"; write \"{}://{}\"",
                    scheme.as_str(),
                    rest.trim_start_matches('/')
                ));
            }
        }
        let rest = s.trim_start_matches('/');
        return Err(format!(
            "origin pattern {s:?} has no scheme; write \"https://{rest}\" \
             (or \"http://{rest}\" for a page served over plain HTTP)"
        ));
    };
    let scheme = match Scheme::parse(scheme_text) {
        Some(scheme) => scheme,
        None if scheme_text.is_empty() => {
            return Err(format!("origin pattern {s:?} has no scheme; write \"https://{rest}\""));
        }
        None => {
            return Err(format!(
                "origin pattern {s:?} has scheme {scheme_text:?}; web page origins use \"https\" or \"http\", {EXAMPLE}"
            ));
        }
    };
    let scheme_name = scheme.as_str();

    let end = rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if let Some(at) = authority.rfind('@') {
        return Err(format!(
            "origin pattern {s:?} contains a user name (\"{}\"); \
             an origin is only scheme, host and port: write \"{scheme_name}://{}\"",
            &authority[..=at],
            &authority[at + 1..]
        ));
    }
    if !tail.is_empty() {
        let what = match tail.as_bytes()[0] {
            _ if tail == "/" => "a trailing \"/\" (browsers never send one)".to_owned(),
            b'?' => format!("a query ({tail:?})"),
            b'#' => format!("a fragment ({tail:?})"),
            _ => format!("a path ({tail:?})"),
        };
        return Err(format!(
            "origin pattern {s:?} has {what}; \
             an origin is only scheme, host and port: write \"{scheme_name}://{authority}\""
        ));
    }
    if authority.contains('%') {
        return Err(format!(
            "origin pattern {s:?} contains percent-encoding; write the host as is (Unicode is fine), {EXAMPLE}"
        ));
    }

    let (host, port_text) = split_host_port(authority).map_err(|what| {
        format!("origin pattern {s:?} has {what}; {EXAMPLE}; IPv6 in brackets: \"http://[::1]:8080\"")
    })?;
    let port = match port_text {
        None => scheme.default_port(),
        Some(text) => parse_port(text).map_err(|e| {
            let what = match e {
                _ if text == "*" => "a wildcard port; ports must be listed one by one".to_owned(),
                PortError::Empty => "an empty port after \":\"".to_owned(),
                PortError::NotNumber => format!("port {text:?}, which is not a number"),
                PortError::LeadingZero => format!("port {text:?} with a leading zero"),
                PortError::OutOfRange => format!("port {text:?}, which is not in 1-65535"),
            };
            format!("origin pattern {s:?} has {what}; e.g. \"http://localhost:3000\" or \"https://chat.example.com\"")
        })?,
    };

    if !host.contains('*') {
        let (host, _) = canonical_host(host)
            .map_err(|why| format!("origin pattern {s:?} has an invalid host: {why}; {EXAMPLE}"))?;
        return Ok(PatternKind::Exact {
            scheme,
            host: host.into_owned(),
            port,
        });
    }

    let misplaced = || {
        format!(
            "origin pattern {s:?}: \"*\" is only allowed as the whole leftmost label, followed by a domain, \
             as in \"https://*.example.com\" (which matches a.example.com and a.b.example.com, not example.com)"
        )
    };
    let parent = host.strip_prefix("*.").ok_or_else(misplaced)?;
    if parent.starts_with("*.") {
        return Err(format!(
            "origin pattern {s:?}: a single \"*.\" already matches subdomains at any depth; write \"{}://*.{}\"",
            scheme.as_str(),
            parent.trim_start_matches("*.")
        ));
    }
    if parent.is_empty() || parent.contains('*') {
        return Err(misplaced());
    }
    let (parent, is_domain) = canonical_host(parent)
        .map_err(|why| format!("origin pattern {s:?} has an invalid domain after \"*.\": {why}; {EXAMPLE}"))?;
    if !is_domain {
        return Err(format!(
            "origin pattern {s:?}: \"*.\" must be followed by a domain name, not an IP address; \
             list IP origins one by one, e.g. \"http://127.0.0.1:8080\""
        ));
    }
    Ok(PatternKind::Subdomains {
        scheme,
        parent: parent.into_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn allowlist(patterns: &[&str]) -> OriginAllowlist {
        OriginAllowlist::new(
            patterns
                .iter()
                .map(|p| p.parse().unwrap_or_else(|e| panic!("{p}: {e}")))
                .collect(),
        )
    }

    #[test]
    fn allows_table() {
        #[rustfmt::skip]
        let rows: &[(&str, &[u8], bool)] = &[
            // exact match
            ("https://chat.example.com", b"https://chat.example.com", true),
            ("https://chat.example.com", b"https://chat.example.org", false),
            ("https://chat.example.com", b"https://example.com", false),
            ("https://chat.example.com", b"https://xchat.example.com", false),
            ("http://localhost:3000", b"http://localhost:3000", true),
            // case: scheme and host are case-insensitive, either side
            ("https://chat.example.com", b"HTTPS://Chat.EXAMPLE.com", true),
            ("HTTPS://Chat.EXAMPLE.com", b"https://chat.example.com", true),
            // default port present/absent, both ways
            ("https://chat.example.com", b"https://chat.example.com:443", true),
            ("https://chat.example.com:443", b"https://chat.example.com", true),
            ("http://chat.example.com", b"http://chat.example.com:80", true),
            ("http://chat.example.com:80", b"http://chat.example.com", true),
            ("wss://chat.example.com", b"wss://chat.example.com:443", true),
            ("ws://chat.example.com:80", b"ws://chat.example.com", true),
            ("https://chat.example.com", b"https://chat.example.com:80", false),
            // non-default port must match exactly
            ("https://chat.example.com", b"https://chat.example.com:8443", false),
            ("https://chat.example.com:8443", b"https://chat.example.com", false),
            ("https://chat.example.com:8443", b"https://chat.example.com:8443", true),
            ("http://localhost:3000", b"http://localhost:3001", false),
            ("http://localhost:3000", b"http://localhost", false),
            // scheme must match exactly
            ("https://chat.example.com", b"http://chat.example.com", false),
            ("http://chat.example.com", b"https://chat.example.com", false),
            ("https://chat.example.com", b"wss://chat.example.com", false),
            ("http://chat.example.com:443", b"https://chat.example.com", false),
            // wildcard
            ("https://*.example.com", b"https://a.example.com", true),
            ("https://*.example.com", b"https://a.b.example.com", true),
            ("https://*.example.com", b"https://A.Example.COM", true),
            ("https://*.example.com", b"https://a.example.com:443", true),
            ("https://*.example.com", b"https://example.com", false),
            ("https://*.example.com", b"https://badexample.com", false),
            ("https://*.example.com", b"https://a.badexample.com", false),
            ("https://*.example.com", b"https://example.com.evil.com", false),
            ("https://*.example.com", b"https://a.example.com.evil.com", false),
            ("https://*.example.com", b"https://.example.com", false),
            ("https://*.example.com", b"https://..example.com", false),
            ("https://*.example.com", b"https://a..example.com", false),
            ("https://*.example.com", b"http://a.example.com", false),
            ("https://*.example.com", b"https://a.example.com:8443", false),
            ("https://*.example.com:8443", b"https://a.example.com:8443", true),
            ("https://*.example.com:8443", b"https://a.example.com", false),
            // null
            ("https://chat.example.com", b"null", false),
            ("null", b"null", true),
            ("null", b"NULL", false),
            ("null", b"null ", false),
            ("null", b"https://chat.example.com", false),
            // IDN, both ways
            ("https://bücher.example", b"https://xn--bcher-kva.example", true),
            ("https://xn--bcher-kva.example", b"https://xn--bcher-kva.example", true),
            ("https://xn--bcher-kva.example", "https://bücher.example".as_bytes(), false),
            ("https://bücher.example", "https://BÜCHER.example".as_bytes(), false),
            ("https://*.bücher.example", b"https://shop.xn--bcher-kva.example", true),
            ("https://bücher.example", b"https://bucher.example", false),
            ("https://bücher.example", b"https://xn--bcher-xxx.example", false),
            // IP literals
            ("http://127.0.0.1:8080", b"http://127.0.0.1:8080", true),
            ("http://[::1]:8080", b"http://[::1]:8080", true),
            ("http://[::1]:8080", b"http://[0:0::1]:8080", true),
            ("http://[::1]", b"http://[::1", false),
            ("http://[::1]", b"http://[::1]x", false),
            // not a serialized origin: trailing slash, path, query, fragment, userinfo
            ("https://chat.example.com", b"https://chat.example.com/", false),
            ("https://chat.example.com", b"https://chat.example.com/app", false),
            ("https://chat.example.com", b"https://chat.example.com\\", false),
            ("https://chat.example.com", b"https://chat.example.com?x=1", false),
            ("https://chat.example.com", b"https://chat.example.com#x", false),
            ("https://chat.example.com", b"https://user@chat.example.com", false),
            ("https://chat.example.com", b"https://user:pw@chat.example.com", false),
            ("https://chat.example.com", b"https://chat.ex%61mple.com", false),
            // missing or unknown scheme
            ("https://chat.example.com", b"chat.example.com", false),
            ("https://chat.example.com", b"//chat.example.com", false),
            ("https://chat.example.com", b"://chat.example.com", false),
            ("https://chat.example.com", b"https:chat.example.com", false),
            ("https://chat.example.com", b"https:/chat.example.com", false),
            ("https://chat.example.com", b"ftp://chat.example.com", false),
            ("https://chat.example.com", b"https://", false),
            ("https://chat.example.com", b"https://:443", false),
            // bad ports
            ("https://chat.example.com", b"https://chat.example.com:", false),
            ("https://chat.example.com", b"https://chat.example.com:0443", false),
            ("https://chat.example.com", b"https://chat.example.com:65979", false),
            ("https://chat.example.com", b"https://chat.example.com:abc", false),
            ("https://chat.example.com", b"https://chat.example.com:443:443", false),
            // garbage bytes, non-UTF-8, whitespace
            ("https://chat.example.com", b"https://chat.example.com\xff", false),
            ("https://chat.example.com", b"\xff\xfe", false),
            ("https://chat.example.com", b"https://chat.exa\xe4mple.com", false),
            ("https://chat.example.com", b"https://chat example.com", false),
            ("https://chat.example.com", b"https://chat.example.com\t", false),
            ("https://chat.example.com", b" https://chat.example.com", false),
            ("https://chat.example.com", b"https://chat.example.com ", false),
            ("https://chat.example.com", b"https://chat.e!xample.com", false),
            // (IDNA maps a fullwidth full stop to ".", as the browser would have)
            ("https://chat.example.com", "https://chat\u{FF0E}example.com".as_bytes(), false),
            // several origins in one header
            ("https://chat.example.com", b"https://chat.example.com https://evil.com", false),
            ("https://chat.example.com", b"https://chat.example.com, https://evil.com", false),
            ("https://chat.example.com", b"https://chat.example.com,https://evil.com", false),
            ("https://chat.example.com", b"https://evil.com,chat.example.com", false),
            // empty
            ("https://chat.example.com", b"", false),
            ("https://chat.example.com", b" ", false),
        ];
        let mut failures = Vec::new();
        for &(pattern, header, expected) in rows {
            let list = allowlist(&[pattern]);
            let value = HeaderValue::from_bytes(header).expect("test header must be a valid HeaderValue");
            if list.allows(&value) != expected {
                failures.push(format!(
                    "{pattern:?} vs {:?}: expected {expected}",
                    String::from_utf8_lossy(header)
                ));
            }
        }
        assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
    }

    #[test]
    fn mixed_list() {
        let list = allowlist(&[
            "https://chat.example.com",
            "https://*.example.org",
            "http://localhost:3000",
        ]);
        let allows = |v: &str| list.allows(&HeaderValue::from_str(v).unwrap());
        assert!(allows("https://chat.example.com"));
        assert!(allows("https://a.example.org"));
        assert!(allows("http://localhost:3000"));
        assert!(!allows("https://example.org"));
        assert!(!allows("https://evil.example.com"));
        assert!(!allows("null"));
        assert!(!OriginAllowlist::new(Vec::new()).allows(&HeaderValue::from_static("https://chat.example.com")));
        assert!(!OriginAllowlist::new(Vec::new()).allows(&HeaderValue::from_static("null")));
    }

    #[test]
    fn bad_patterns_are_rejected_with_a_useful_message() {
        // (pattern, text the message must contain)
        #[rustfmt::skip]
        let rows: &[(&str, &str)] = &[
            ("", "empty"),
            ("   ", "whitespace"),
            (" https://chat.example.com", "whitespace"),
            ("chat.example.com", "no scheme; write \"https://chat.example.com\""),
            ("*.example.com", "no scheme; write \"https://*.example.com\""),
            ("localhost:3000", "no scheme"),
            ("//chat.example.com", "no scheme; write \"https://chat.example.com\""),
            ("://chat.example.com", "no scheme; write \"https://chat.example.com\""),
            ("https:/chat.example.com", "write \"https://chat.example.com\""),
            ("https:chat.example.com", "must be followed by \"://\""),
            ("ftp://chat.example.com", "scheme \"ftp\""),
            ("file:///tmp/x", "scheme \"file\""),
            ("https://chat.example.com/", "trailing \"/\""),
            ("https://chat.example.com/app", "a path (\"/app\"); an origin is only scheme, host and port"),
            ("https://chat.example.com\\app", "a path"),
            ("https://chat.example.com?x=1", "a query"),
            ("https://chat.example.com#x", "a fragment"),
            ("https://user@chat.example.com", "user name (\"user@\"); an origin is only scheme, host and port"),
            ("https://user:pw@chat.example.com:8443", "write \"https://chat.example.com:8443\""),
            ("https://a.*.com", "only allowed as the whole leftmost label"),
            ("https://a*.example.com", "only allowed as the whole leftmost label"),
            ("https://*example.com", "only allowed as the whole leftmost label"),
            ("https://example.*", "only allowed as the whole leftmost label"),
            ("https://*", "only allowed as the whole leftmost label"),
            ("https://*.", "only allowed as the whole leftmost label"),
            ("https://*.*.example.com", "write \"https://*.example.com\""),
            ("*", "every web site"),
            ("*://chat.example.com", "every web site"),
            ("https://*.127.0.0.1", "not an IP address"),
            ("https://chat.example.com:70000", "not in 1-65535"),
            ("https://chat.example.com:0", "not in 1-65535"),
            ("https://chat.example.com:-1", "not a number"),
            ("https://chat.example.com:abc", "not a number"),
            ("https://chat.example.com:443:443", "not a number"),
            ("https://chat.example.com:0443", "leading zero"),
            ("https://chat.example.com:", "empty port"),
            ("https://chat.example.com:*", "wildcard port"),
            ("https://", "no host"),
            ("https://:443", "no host"),
            ("http://[::1", "closing \"]\""),
            ("http://[::1]8080", "not a port"),
            ("http://[::g]", "invalid host"),
            ("https://a..example.com", "empty label"),
            ("https://.example.com", "empty label"),
            ("https://*..example.com", "empty label"),
            ("https://a!b.com", "invalid host"),
            ("https://ex%61mple.com", "percent-encoding"),
            ("https://chat.example.com,https://b.example.com", "one origin per list entry"),
        ];
        let mut failures = Vec::new();
        for &(pattern, needle) in rows {
            match pattern.parse::<OriginPattern>() {
                Ok(p) => failures.push(format!("{pattern:?} was accepted as {p}")),
                Err(msg) => {
                    // Every message names the problem and shows a correct example.
                    if !msg.contains(needle) || !(msg.contains("\"https://") || msg.contains("\"http://")) {
                        failures.push(format!("{pattern:?}: message {msg:?} lacks {needle:?} or an example"));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "bad-pattern failures:\n{}", failures.join("\n"));
    }

    #[test]
    fn good_patterns_display_canonically() {
        #[rustfmt::skip]
        let rows: &[(&str, &str)] = &[
            ("https://chat.example.com", "https://chat.example.com"),
            ("HTTPS://Chat.Example.COM", "https://chat.example.com"),
            ("https://chat.example.com:443", "https://chat.example.com"),
            ("https://chat.example.com:8443", "https://chat.example.com:8443"),
            ("http://localhost:3000", "http://localhost:3000"),
            ("http://localhost:80", "http://localhost"),
            ("http://localhost:443", "http://localhost:443"),
            ("wss://chat.example.com:443", "wss://chat.example.com"),
            ("ws://chat.example.com:80", "ws://chat.example.com"),
            ("https://*.example.com", "https://*.example.com"),
            ("https://*.Example.COM:8443", "https://*.example.com:8443"),
            ("https://*.localhost", "https://*.localhost"),
            ("https://bücher.example", "https://xn--bcher-kva.example"),
            ("https://*.bücher.example", "https://*.xn--bcher-kva.example"),
            ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://[::1]:8080", "http://[::1]:8080"),
            ("http://[0:0::1]", "http://[::1]"),
            ("https://example.com.", "https://example.com."),
            ("null", "null"),
            ("NULL", "null"),
        ];
        for &(input, canonical) in rows {
            let pattern: OriginPattern = input.parse().unwrap_or_else(|e| panic!("{input:?} rejected: {e}"));
            assert_eq!(pattern.to_string(), canonical, "display of {input:?}");
            let reparsed: OriginPattern = canonical.parse().unwrap();
            assert_eq!(reparsed, pattern, "round trip of {input:?}");
        }
    }

    /// The borrowed fast path in `canonical_host` must agree with `url`.
    #[test]
    fn fast_path_agrees_with_url() {
        let hosts = [
            "chat.example.com",
            "a-b.c_d.example",
            "localhost",
            "example.com.",
            "ab--cd.example",
            "-lead.example",
            "1.2.3.example",
            "a.b0",
        ];
        for host in hosts {
            assert!(is_canonical_ascii_domain(host), "{host} should take the fast path");
            assert_eq!(Host::parse(host).unwrap(), Host::Domain(host.to_owned()), "{host}");
        }
        for host in [
            "1.2.3.4",
            "a.1",
            "a.0x1f",
            "xn--bcher-kva.example",
            "Chat.example",
            "a..b",
            ".a",
            "a.b..",
        ] {
            assert!(!is_canonical_ascii_domain(host), "{host} should take the slow path");
        }
    }
}
