//! Which headers cross the proxy, and the forwarding headers it writes.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::RequestContext;

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and
/// must not be forwarded. `Upgrade` and `Connection` are set again by the
/// WebSocket path for the next hop.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header the `Connection`
/// header names (a client could otherwise strip a header like
/// `X-Forwarded-For` from what the backend sees by naming it there).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .filter_map(|token| HeaderName::from_bytes(token.trim_ascii()).ok())
        // `Connection: Upgrade` and `keep-alive` name no header of their own.
        .filter(|name| !HOP_BY_HOP.contains(name))
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// The client as the backend should see it.
pub struct Forwarded<'a> {
    /// The client: the TCP peer, or the address a trusted proxy reported.
    pub client: IpAddr,
    /// When the request came through a trusted proxy: that proxy's address,
    /// appended to the forwarding chain it sent instead of replacing it.
    pub via_trusted: Option<IpAddr>,
    pub tls: bool,
    /// The Host the client asked for, as it sent it.
    pub host: Option<&'a HeaderValue>,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Writes `X-Forwarded-For`, `-Proto`, `-Host`, `X-Real-IP` and `Forwarded`
/// (RFC 7239). From an untrusted client they *replace* whatever it sent:
/// appending would let any client choose the address a backend logs,
/// rate-limits or trusts. From a trusted proxy the chains it sent are kept
/// and its own address is appended, as each proxy in a chain does.
pub fn set_forwarding(headers: &mut HeaderMap, forwarded: &Forwarded<'_>) {
    let spoofs: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().contains('_'))
        .filter(|name| {
            let dashed = name.as_str().replace('_', "-");
            [
                &X_FORWARDED_FOR,
                &X_FORWARDED_PROTO,
                &X_FORWARDED_HOST,
                &X_REAL_IP,
                &header::FORWARDED,
            ]
            .iter()
            .any(|known| known.as_str() == dashed)
        })
        .cloned()
        .collect();
    for name in spoofs {
        headers.remove(name);
    }
    let proto = if forwarded.tls { "https" } else { "http" };
    let client = forwarded.client.to_canonical();
    let client_text = ip_text(client);
    headers.insert(X_REAL_IP, text_value(client_text.clone()));
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    headers.remove(X_FORWARDED_HOST);
    if let Some(host) = forwarded.host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    let last_hop = forwarded.via_trusted.map_or(client, |peer| peer.to_canonical());
    let last_hop_text = match forwarded.via_trusted {
        Some(_) => ip_text(last_hop),
        None => client_text,
    };
    let host = forwarded.host.and_then(|h| h.to_str().ok());
    let mut element = String::with_capacity(last_hop_text.len() + host.map_or(0, str::len) + 32);
    match last_hop {
        IpAddr::V6(_) => {
            element.push_str("for=\"[");
            element.push_str(&last_hop_text);
            element.push_str("]\"");
        }
        IpAddr::V4(_) => {
            element.push_str("for=");
            element.push_str(&last_hop_text);
        }
    }
    element.push_str(";proto=");
    element.push_str(proto);
    if let Some(host) = host {
        element.push_str(";host=\"");
        element.push_str(host);
        element.push('"');
    }
    let (x_forwarded_for, rfc7239) = match forwarded.via_trusted {
        Some(_) => (
            extend_chain(headers, &X_FORWARDED_FOR, &last_hop_text),
            extend_chain(headers, &header::FORWARDED, &element),
        ),
        None => (last_hop_text, element),
    };
    for (name, value) in [(X_FORWARDED_FOR, x_forwarded_for), (header::FORWARDED, rfc7239)] {
        match HeaderValue::from_maybe_shared(Bytes::from(value)) {
            Ok(value) => headers.insert(name, value),
            Err(_) => headers.remove(name),
        };
    }
}

/// The received occurrences of a list header, joined, with `hop` appended.
fn extend_chain(headers: &HeaderMap, name: &HeaderName, hop: &str) -> String {
    let mut chain: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    chain.push(hop);
    chain.join(", ")
}

/// An address as text; IPv4, nearly every client, without the formatter
/// (it was a tenth of a handshake's instructions, written three times).
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(ip) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (index, octet) in ip.octets().into_iter().enumerate() {
        if index > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// Text known to be a valid header value (an address), taken without a copy.
fn text_value(text: String) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from(text)).expect("an IP address is a valid header value")
}

/// Hop-by-hop headers out, forwarding headers in, and a Host header for
/// absolute-form requests that carried the host only in their target.
pub(super) fn prepare_headers(headers: &mut HeaderMap, uri: &http::Uri, ctx: &RequestContext<'_>) {
    // Kept out of reach of a `Connection: host`.
    let client_host = headers.remove(header::HOST);
    strip_hop_by_hop(headers);
    if let Some(host) = client_host {
        headers.insert(header::HOST, host);
    }
    if let Some(value) = uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
        headers.insert(header::HOST, value);
    }
    let host = headers.get(header::HOST).cloned();
    set_forwarding(
        headers,
        &Forwarded {
            client: ctx.client,
            via_trusted: ctx.via_trusted,
            tls: ctx.info.tls,
            host: host.as_ref(),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("keep-alive, X-Secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("cookie", HeaderValue::from_static("sid=1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("cookie"));
    }

    #[test]
    fn addresses_read_as_the_standard_library_writes_them() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "255.255.255.255",
            "10.0.7.250",
            "::1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn forwarding_headers_replace_what_the_client_sent() {
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        headers.append("x-forwarded-for", HeaderValue::from_static("7.7.7.7"));
        let host = HeaderValue::from_static("chat.example.com");
        let forwarded = Forwarded {
            client: "::1".parse().unwrap(),
            via_trusted: None,
            tls: true,
            host: Some(&host),
        };
        set_forwarding(&mut headers, &forwarded);
        assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(headers["x-forwarded-for"], "::1");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(
            headers["forwarded"],
            "for=\"[::1]\";proto=https;host=\"chat.example.com\""
        );
    }
}
