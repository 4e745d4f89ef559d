//! Route checks: host patterns, path prefix and upstream name, admission
//! (origins, subprotocols, rate limits, caps), frame inspection, and that
//! every route can be reached.

use std::time::Duration;

use toml::Spanned;

use super::Checker;
use crate::admission::origin::OriginPattern;
use crate::config::raw::{RawInspect, RawRoute, RawUpstream};
use crate::config::units::ByteSize;
use crate::config::{Admission, Inspect, MissingOrigin, Route, SocketRate};
use crate::tunnel::pool::{BUFFER_SIZE, LARGE_BUFFER_SIZE};

/// `client_bytes_burst` by default: one second's worth, and at least one
/// large read buffer, so that a client keeping to its rate is read in
/// whole buffers.
const DEFAULT_MIN_BYTES_BURST: u64 = LARGE_BUFFER_SIZE as u64;
/// The smallest `client_bytes_burst`: one small read buffer (a TLS
/// record's worth). A read never takes more than the bucket holds, so a
/// smaller burst would not stall a tunnel, but it would cut every read
/// short: many more reads and wake-ups for the same bytes.
const MIN_BYTES_BURST: u64 = BUFFER_SIZE as u64;

impl Checker<'_> {
    pub(super) fn route(&mut self, i: usize, raw: &RawRoute, upstreams: &[RawUpstream]) -> Option<Route> {
        let mut hosts = Vec::new();
        for (j, host) in raw.hosts.iter().flatten().enumerate() {
            match normalize_host_pattern(host.get_ref()) {
                Ok(h) => hosts.push(h),
                Err(why) => self.error(host, format!("route[{i}].hosts[{j}]"), why),
            }
        }
        let path_prefix = match &raw.path_prefix {
            Some(p) if !p.get_ref().starts_with('/') => {
                self.error(
                    p,
                    format!("route[{i}].path_prefix"),
                    format!("{:?} must start with \"/\"", p.get_ref()),
                );
                None
            }
            Some(p) => Some(p.get_ref().clone()),
            None => Some("/".to_string()),
        };
        let wanted = raw.upstream.get_ref();
        let upstream = upstreams.iter().position(|u| u.name.get_ref() == wanted);
        if upstream.is_none() {
            let defined: Vec<&str> = upstreams.iter().map(|u| u.name.get_ref().as_str()).collect();
            let message = if defined.is_empty() {
                format!("no upstream named {wanted:?}: the file defines no [[upstream]]")
            } else {
                format!("no upstream named {wanted:?} (defined: {})", defined.join(", "))
            };
            self.error(&raw.upstream, format!("route[{i}].upstream"), message);
        }
        let admission = self.admission(i, raw);
        let inspect = raw.inspect.as_ref().and_then(|inspect| self.inspect(i, inspect));
        let client_bytes = raw.limits.as_ref().and_then(|limits| {
            let bytes = |size: &Option<Spanned<ByteSize>>| {
                size.as_ref().map(|size| Spanned::new(size.span(), size.get_ref().0))
            };
            self.socket_rate(
                [
                    (
                        format!("route[{i}].limits.client_bytes_per_second"),
                        bytes(&limits.client_bytes_per_second),
                    ),
                    (
                        format!("route[{i}].limits.client_bytes_burst"),
                        bytes(&limits.client_bytes_burst),
                    ),
                ],
                (
                    MIN_BYTES_BURST,
                    "16KiB (one read buffer): a smaller burst cuts every read short",
                ),
                |per_second| per_second.max(DEFAULT_MIN_BYTES_BURST),
            )
        });
        let kernel_splice = raw.kernel_splice.as_ref().is_some_and(|wanted| *wanted.get_ref());
        if let Some(wanted) = raw.kernel_splice.as_ref().filter(|wanted| *wanted.get_ref()) {
            // The kernel moves the bytes without wsgate seeing them: nothing
            // can read frames or hold a client to a rate.
            let key = format!("route[{i}].kernel_splice");
            if inspect.is_some() {
                self.error(
                    wanted,
                    key.clone(),
                    "cannot be used with [route.inspect]: wsgate reads every frame of an inspected tunnel",
                );
            }
            if client_bytes.is_some() {
                self.error(
                    wanted,
                    key,
                    "cannot be used with limits.client_bytes_per_second: the kernel does not pace a client's bytes",
                );
            }
        }
        Some(Route {
            name: raw.name.get_ref().as_str().into(),
            hosts,
            path_prefix: path_prefix?,
            upstream: upstream?,
            admission,
            inspect,
            client_bytes,
            kernel_splice,
        })
    }

    /// A rate and its burst for one socket (`[rate_key, burst_key]` with
    /// their values): both at least 1, since 0 would stop every client
    /// (omit the key for no limit); the burst only beside a rate, at least
    /// `min_burst` (with why), and `default_burst(rate)` when not given.
    fn socket_rate(
        &mut self,
        [(rate_key, rate), (burst_key, burst)]: [(String, Option<Spanned<u64>>); 2],
        (min_burst, why): (u64, &str),
        default_burst: impl Fn(u64) -> u64,
    ) -> Option<SocketRate> {
        let per_second = self.positive(&rate, &rate_key).map(|n| n as u64);
        let Some(burst) = burst else {
            return per_second.map(|per_second| SocketRate {
                per_second,
                burst: default_burst(per_second),
            });
        };
        if rate.is_none() {
            let rate_name = rate_key.rsplit('.').next().unwrap_or(&rate_key);
            self.error(&burst, burst_key, format!("has no effect without {rate_name}"));
            return None;
        }
        let checked = self.positive(&Some(burst.clone()), &burst_key)? as u64;
        if checked < min_burst {
            self.error(&burst, burst_key, format!("must be at least {why}"));
            return None;
        }
        Some(SocketRate {
            per_second: per_second?,
            burst: checked,
        })
    }

    fn inspect(&mut self, i: usize, raw: &RawInspect) -> Option<Inspect> {
        if raw.enabled == Some(false) {
            return None;
        }
        let key = |name: &str| format!("route[{i}].inspect.{name}");
        let idle_timeout = raw
            .idle_timeout
            .clone()
            .map(|t| self.timeout(Some(t), &key("idle_timeout"), Duration::from_secs(600)));
        let size = |checker: &mut Self, value: &Option<Spanned<ByteSize>>, name: &str, default: u64| match value {
            Some(v) if v.get_ref().0 < 125 => {
                checker.error(v, key(name), "must be at least 125 bytes (the largest control frame)");
                default
            }
            Some(v) => v.get_ref().0,
            None => default,
        };
        let max_message_size = size(self, &raw.max_message_size, "max_message_size", 64 << 20);
        // A frame is never larger than its message: a lower message limit
        // lowers the default frame limit with it, and a frame limit written
        // above the message limit is a mistake worth naming.
        let max_frame_size = size(
            self,
            &raw.max_frame_size,
            "max_frame_size",
            (16 << 20).min(max_message_size),
        );
        if let (Some(frame), Some(_)) = (&raw.max_frame_size, &raw.max_message_size) {
            if frame.get_ref().0 > max_message_size {
                self.error(
                    frame,
                    key("max_frame_size"),
                    format!("must not be larger than max_message_size ({max_message_size} bytes): a frame is part of a message"),
                );
            }
        }
        // Every message counts, and every control frame: a ping flood costs
        // the backend as much as a message flood.
        let client_messages = self.socket_rate(
            [
                (key("max_messages_per_second"), raw.max_messages_per_second.clone()),
                (key("message_burst"), raw.message_burst.clone()),
            ],
            (1, "1"),
            |per_second| per_second,
        );
        Some(Inspect {
            ping_interval: self.timeout(
                raw.ping_interval.clone(),
                &key("ping_interval"),
                Duration::from_secs(30),
            ),
            pong_timeout: self.timeout(raw.pong_timeout.clone(), &key("pong_timeout"), Duration::from_secs(10)),
            ping_backend: raw.ping_backend.unwrap_or(false),
            idle_timeout,
            close_timeout: self.timeout(raw.close_timeout.clone(), &key("close_timeout"), Duration::from_secs(5)),
            max_frame_size,
            max_message_size: max_message_size.max(max_frame_size),
            enforce_masking: raw.enforce_masking.unwrap_or(true),
            client_messages,
        })
    }

    fn admission(&mut self, i: usize, raw: &RawRoute) -> Admission {
        let mut admission = Admission::default();
        if let Some(origins) = &raw.allowed_origins {
            let mut patterns = Vec::new();
            for (j, origin) in origins.iter().enumerate() {
                match origin.get_ref().parse::<OriginPattern>() {
                    Ok(pattern) => patterns.push(pattern),
                    Err(why) => self.error(origin, format!("route[{i}].allowed_origins[{j}]"), why),
                }
            }
            admission.allowed_origins = Some(patterns);
        }
        admission.missing_origin = raw.missing_origin.unwrap_or(MissingOrigin::Allow);
        if let Some(protocols) = &raw.subprotocols {
            for (j, protocol) in protocols.iter().enumerate() {
                if !is_token(protocol.get_ref()) {
                    let message = format!(
                        "{:?} is not a subprotocol name: RFC 6455 §4.1 allows letters, digits and !#$%&'*+-.^_`|~ only",
                        protocol.get_ref()
                    );
                    self.error(protocol, format!("route[{i}].subprotocols[{j}]"), message);
                }
            }
            admission.subprotocols = Some(protocols.iter().map(|p| p.get_ref().clone()).collect());
        }
        admission.require_subprotocol = raw.require_subprotocol.unwrap_or(true);
        if let Some(rate_limit) = &raw.rate_limit {
            admission.per_client_rate = rate_limit.per_client;
            admission.total_rate = rate_limit.total;
            admission.limit_http = rate_limit.limit_http.unwrap_or(false);
        }
        if let Some(limits) = &raw.limits {
            admission.max_websockets =
                self.positive(&limits.max_websockets, &format!("route[{i}].limits.max_websockets"));
            admission.max_websockets_per_client = self.positive(
                &limits.max_websockets_per_client,
                &format!("route[{i}].limits.max_websockets_per_client"),
            );
        }
        admission
    }

    /// Two routes with the same host and prefix: the second never matches,
    /// which is always a mistake worth stopping for.
    pub(super) fn reachable_routes(&mut self, raw: &[RawRoute], routes: &[Route]) {
        for (i, route) in routes.iter().enumerate() {
            for earlier in &routes[..i] {
                let same_hosts = route.hosts.is_empty() && earlier.hosts.is_empty()
                    || route.hosts.iter().any(|h| earlier.hosts.contains(h));
                if same_hosts && route.path_prefix == earlier.path_prefix {
                    if let Some(raw_route) = raw.iter().find(|r| **r.name.get_ref() == *route.name) {
                        let message = format!(
                            "route {:?} can never match: route {:?} has the same hosts and path_prefix {:?}",
                            route.name, earlier.name, route.path_prefix
                        );
                        let key = format!(
                            "route[{}].path_prefix",
                            raw.iter().position(|r| std::ptr::eq(r, raw_route)).unwrap_or(i)
                        );
                        self.error(&raw_route.name, key, message);
                    }
                }
            }
        }
    }
}

/// An HTTP token (RFC 9110 §5.6.2), the grammar of subprotocol names.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Lower-cases a host pattern and checks it is a bare name (no scheme,
/// port or path), optionally with a leading `*.` wildcard.
pub(super) fn normalize_host_pattern(pattern: &str) -> Result<String, String> {
    let host = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
    let name = host.strip_prefix("*.").unwrap_or(&host);
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    let is_ip = name.parse::<std::net::IpAddr>().is_ok();
    if valid || is_ip {
        Ok(host)
    } else {
        Err(format!(
            "{pattern:?} is not a host name; write a bare name such as \"chat.example.com\" or \"*.example.com\" (no scheme, port or path)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert_eq!(
            normalize_host_pattern("Chat.Example.COM."),
            Ok("chat.example.com".into())
        );
        assert_eq!(normalize_host_pattern("*.example.com"), Ok("*.example.com".into()));
        assert!(normalize_host_pattern("https://example.com").is_err());
        assert!(normalize_host_pattern("example.com:443").is_err());
        assert!(normalize_host_pattern("").is_err());
    }
}
