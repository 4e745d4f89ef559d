//! Fuzzes `wsgate::admission::origin`: `allowed_origins` patterns as an
//! operator writes them, and `Origin` header values as a browser (or an
//! attacker) sends them.
//!
//! The input is split into lines: every line but the last is a pattern (at
//! most 4; lines that are not UTF-8 are skipped, as TOML strings are UTF-8),
//! the last one is an `Origin` value. Each pattern line is tried as a header
//! value too, and so are the canonical forms of the patterns that parse and
//! variations of them (other case, explicit default port, a subdomain of a
//! wildcard, the wildcard's parent itself).
//!
//! Checked, besides "no panic":
//! - a pattern that parses displays canonically: ASCII, and its display
//!   parses back to the same pattern (round trip) and displays the same;
//! - parsing ignores ASCII case, and an explicit default port is the same
//!   as none;
//! - `allows` agrees with an oracle that compares origins as RFC 6454 says:
//!   `null` only when the list has `null`; otherwise the value must be an
//!   ASCII serialized origin, which the pattern parser accepts as an exact
//!   origin, equal to an exact pattern of the list, or a strict subdomain
//!   (same scheme and port) of a `*.` pattern;
//! - matching ignores the ASCII case of the value (but for `null`, which is
//!   only ever lower case);
//! - a list allows exactly what one of its patterns alone allows;
//! - an exact pattern allows its own canonical form, a wildcard allows a
//!   subdomain of its parent and never the parent itself.

#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use wsgate::admission::origin::{OriginAllowlist, OriginPattern};

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let (value, pattern_lines) = lines.split_last().expect("split yields a line");
    let texts: Vec<&str> = pattern_lines
        .iter()
        .take(4)
        .filter_map(|line| std::str::from_utf8(line).ok())
        .collect();
    let patterns: Vec<OriginPattern> = texts.iter().filter_map(|text| check_pattern(text)).collect();

    let list = OriginAllowlist::new(patterns.clone());
    let singles: Vec<OriginAllowlist> = patterns.iter().map(|p| OriginAllowlist::new(vec![p.clone()])).collect();

    let mut candidates: Vec<Vec<u8>> = vec![value.to_vec()];
    candidates.extend(pattern_lines.iter().take(4).map(|line| line.to_vec()));
    for pattern in &patterns {
        let shown = pattern.to_string();
        candidates.push(shown.to_ascii_uppercase().into_bytes());
        if let Some(with_port) = with_default_port(&shown) {
            candidates.push(with_port.into_bytes());
        }
        if let Some((scheme, rest)) = shown.split_once("://*.") {
            let subdomain = format!("{scheme}://a.{rest}");
            let parent = format!("{scheme}://{rest}");
            let single = OriginAllowlist::new(vec![pattern.clone()]);
            assert!(
                allows(&single, subdomain.as_bytes()) == Some(true),
                "{pattern} refuses {subdomain}"
            );
            assert!(
                allows(&single, parent.as_bytes()) == Some(false),
                "{pattern} allows {parent}"
            );
            candidates.push(subdomain.into_bytes());
            candidates.push(parent.into_bytes());
        } else {
            let single = OriginAllowlist::new(vec![pattern.clone()]);
            assert!(
                allows(&single, shown.as_bytes()) == Some(true),
                "{pattern} refuses itself"
            );
        }
        candidates.push(shown.into_bytes());
    }

    for candidate in &candidates {
        let Some(allowed) = allows(&list, candidate) else {
            continue; // not a valid header value at all
        };
        let text = String::from_utf8_lossy(candidate);
        assert_eq!(
            allowed,
            oracle(&patterns, candidate),
            "allows({text:?}) with {:?}",
            patterns.iter().map(ToString::to_string).collect::<Vec<_>>()
        );
        let any_single = singles.iter().any(|single| allows(single, candidate) == Some(true));
        assert_eq!(allowed, any_single, "the list vs its patterns one by one, for {text:?}");
        if candidate.is_ascii() && !candidate.eq_ignore_ascii_case(b"null") {
            assert_eq!(
                Some(allowed),
                allows(&list, &candidate.to_ascii_uppercase()),
                "upper case {text:?}"
            );
            assert_eq!(
                Some(allowed),
                allows(&list, &candidate.to_ascii_lowercase()),
                "lower case {text:?}"
            );
        }
        if allowed && candidate.as_slice() != b"null" {
            // What is allowed is an origin the pattern parser accepts.
            let text = std::str::from_utf8(candidate).unwrap();
            let pattern: OriginPattern = text.parse().unwrap_or_else(|e| panic!("{text:?} allowed, but: {e}"));
            let single = OriginAllowlist::new(vec![pattern]);
            assert_eq!(allows(&single, candidate), Some(true), "{text:?} does not allow itself");
        }
    }
    // An empty list allows nothing, not even `null`.
    assert_ne!(allows(&OriginAllowlist::new(Vec::new()), value), Some(true));
});

/// `allows` on raw bytes; None when they are not a header value.
fn allows(list: &OriginAllowlist, value: &[u8]) -> Option<bool> {
    HeaderValue::from_bytes(value).ok().map(|value| list.allows(&value))
}

/// Parses one pattern and checks its canonical form; the pattern if it parsed.
fn check_pattern(text: &str) -> Option<OriginPattern> {
    let parsed = text.parse::<OriginPattern>();
    for recased in [text.to_ascii_uppercase(), text.to_ascii_lowercase()] {
        match (&parsed, recased.parse::<OriginPattern>()) {
            (Ok(a), Ok(b)) => assert_eq!(a, &b, "{text:?} vs {recased:?}"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("{text:?} gives {a:?} but {recased:?} gives {b:?}"),
        }
    }
    let pattern = match parsed {
        Ok(pattern) => pattern,
        Err(message) => {
            assert!(!message.is_empty());
            return None;
        }
    };
    let shown = pattern.to_string();
    assert!(shown.is_ascii(), "{text:?} displays as {shown:?}");
    let again: OriginPattern = shown
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} displays as {shown:?}, which does not parse: {e}"));
    assert_eq!(again, pattern, "round trip of {text:?} through {shown:?}");
    assert_eq!(again.to_string(), shown, "display of {shown:?}");
    if let Some(with_port) = with_default_port(&shown) {
        let explicit: OriginPattern = with_port
            .parse()
            .unwrap_or_else(|e| panic!("{with_port:?} does not parse: {e}"));
        assert_eq!(explicit, pattern, "{with_port:?} vs {shown:?}");
    }
    Some(pattern)
}

/// `scheme://host` with its scheme's default port written out; None for
/// `null` and for a canonical form that already has a port.
fn with_default_port(shown: &str) -> Option<String> {
    let (scheme, authority) = shown.split_once("://")?;
    let has_port = match authority.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => authority.contains(':'),
    };
    let port = match scheme {
        "http" | "ws" => 80,
        "https" | "wss" => 443,
        other => panic!("canonical scheme {other:?}"),
    };
    (!has_port).then(|| format!("{shown}:{port}"))
}

/// RFC 6454 comparison, through the patterns' canonical forms.
fn oracle(patterns: &[OriginPattern], value: &[u8]) -> bool {
    let null: OriginPattern = "null".parse().unwrap();
    if value == b"null" {
        return patterns.contains(&null);
    }
    // Browsers send ASCII (punycode), never a wildcard; anything else is no origin.
    if !value.is_ascii() || value.contains(&b'*') {
        return false;
    }
    let text = std::str::from_utf8(value).unwrap();
    let Ok(origin) = text.parse::<OriginPattern>() else {
        return false;
    };
    if origin == null {
        return false; // "NULL", "Null": not the opaque origin's serialization
    }
    let shown = origin.to_string();
    let (scheme, rest) = shown.split_once("://").unwrap();
    let host = match rest.rsplit_once(':') {
        Some((host, _)) if !rest.ends_with(']') => host,
        _ => rest,
    };
    // An IP address is not a subdomain of anything.
    let is_domain = !host.starts_with('[') && host.parse::<std::net::Ipv4Addr>().is_err();
    patterns.iter().any(|pattern| {
        if *pattern == origin {
            return true;
        }
        let pattern = pattern.to_string();
        match pattern.split_once("://*") {
            // `suffix` is ".parent[:port]", `rest` is "host[:port]".
            Some((pattern_scheme, suffix)) => {
                is_domain && pattern_scheme == scheme && rest.len() > suffix.len() && rest.ends_with(suffix)
            }
            None => false,
        }
    })
}
