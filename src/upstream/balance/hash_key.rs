//! The key `balance = "hash"` sends to the same server every time.
//!
//! The bytes are used as they arrive (no percent-decoding, no unquoting): a
//! client sends its own key the same way every time, and a key only has to be
//! equal to itself. Borrowed from the request where it can be, so a pick
//! copies nothing but a client address.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue, Uri};

use crate::config::HashKey;

/// The bytes of a request's hash key, or None when the request lacks it (then the upstream falls back to least connections).
///
/// - `ClientIp`: the address's bytes, 4 for IPv4 and 16 for IPv6; an
///   IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, from a dual-stack socket)
///   counts as its IPv4 address, so a client keeps its server whichever way
///   it came in.
/// - `Header(name)`: the first value of that header; absent or empty is None.
/// - `Cookie(name)`: the value of the first cookie of exactly that name in the
///   `Cookie` header(s); absent or empty is None.
/// - `Query(name)`: the value of the first parameter of exactly that name in
///   the query string; absent or empty (`?room=`, `?room`) is None.
pub fn extract<'a>(key: &HashKey, client: IpAddr, headers: &'a HeaderMap, uri: &'a Uri) -> Option<Cow<'a, [u8]>> {
    let bytes = match key {
        HashKey::ClientIp => {
            return Some(Cow::Owned(match client.to_canonical() {
                IpAddr::V4(ip) => ip.octets().to_vec(),
                IpAddr::V6(ip) => ip.octets().to_vec(),
            }))
        }
        HashKey::Header(name) => headers.get(name).map(HeaderValue::as_bytes),
        HashKey::Cookie(name) => cookie(headers, name),
        HashKey::Query(name) => query(uri, name),
    };
    bytes.filter(|bytes| !bytes.is_empty()).map(Cow::Borrowed)
}

/// The value of the first `name=value` pair named exactly `name` across the
/// `Cookie` headers (HTTP/1.1 sends one, HTTP/2 may split it), pairs split on
/// `;` and trimmed.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let (cookie, value) = split_once(pair.trim_ascii(), b'=')?;
            (cookie.trim_ascii() == name.as_bytes()).then(|| value.trim_ascii())
        })
}

/// The value of the first query parameter named exactly `name`.
fn query<'a>(uri: &'a Uri, name: &str) -> Option<&'a [u8]> {
    uri.query()?.split('&').find_map(|param| {
        let (param, value) = param.split_once('=').unwrap_or((param, ""));
        (param == name).then_some(value.as_bytes())
    })
}

fn split_once(bytes: &[u8], at: u8) -> Option<(&[u8], &[u8])> {
    let i = bytes.iter().position(|&b| b == at)?;
    Some((&bytes[..i], &bytes[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    const V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    fn uri(text: &str) -> Uri {
        text.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        map
    }

    fn get<'a>(key: &HashKey, headers: &'a HeaderMap, uri: &'a Uri) -> Option<Vec<u8>> {
        extract(key, V4, headers, uri).map(Cow::into_owned)
    }

    #[test]
    fn client_ip_is_the_canonical_address_bytes() {
        let (h, u) = (HeaderMap::new(), uri("/"));
        let key = HashKey::ClientIp;
        assert_eq!(extract(&key, V4, &h, &u).unwrap().as_ref(), [192, 0, 2, 7]);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let bytes = extract(&key, v6, &h, &u).unwrap();
        assert_eq!(bytes.len(), 16);
        assert_eq!(bytes[..4], [0x20, 0x01, 0x0d, 0xb8]);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(extract(&key, mapped, &h, &u).unwrap().as_ref(), [192, 0, 2, 7]);
    }

    #[test]
    fn header_is_its_first_value() {
        let key = HashKey::Header(HeaderName::from_static("x-user-id"));
        let u = uri("/");
        let h = headers(&[("x-user-id", "ann"), ("X-User-Id", "bob"), ("x-other", "zed")]);
        assert_eq!(get(&key, &h, &u).unwrap(), b"ann");
        assert_eq!(get(&key, &headers(&[("x-other", "zed")]), &u), None);
        assert_eq!(get(&key, &headers(&[("x-user-id", "")]), &u), None);
        assert!(matches!(extract(&key, V4, &h, &u), Some(Cow::Borrowed(_))));
    }

    #[test]
    fn cookie_is_the_value_of_the_exact_name() {
        let key = HashKey::Cookie("sid".into());
        let u = uri("/");
        let h = headers(&[("cookie", "theme=dark;  xsid=nope ;sid=abc123 ; lang=en; sid=later")]);
        assert_eq!(get(&key, &h, &u).unwrap(), b"abc123");
        // Several Cookie headers (HTTP/2 splits them): the first match wins.
        let h = headers(&[
            ("cookie", "theme=dark; flag"),
            ("cookie", "sid=xyz"),
            ("cookie", "sid=two"),
        ]);
        assert_eq!(get(&key, &h, &u).unwrap(), b"xyz");
        // The value may hold '='.
        assert_eq!(get(&key, &headers(&[("cookie", "sid=a=b")]), &u).unwrap(), b"a=b");
        // Names are case-sensitive; absent and empty are None.
        assert_eq!(get(&key, &headers(&[("cookie", "SID=abc; sidx=1")]), &u), None);
        assert_eq!(get(&key, &headers(&[("cookie", "theme=dark; sid=")]), &u), None);
        assert_eq!(get(&key, &headers(&[("x-cookie", "sid=abc")]), &u), None);
        assert_eq!(get(&key, &HeaderMap::new(), &u), None);
    }

    #[test]
    fn query_is_the_first_parameter_of_the_exact_name() {
        let h = HeaderMap::new();
        let room = HashKey::Query("room".into());
        let u = uri("/chat?user=ann&roomx=1&room=42&room=7");
        assert_eq!(get(&room, &h, &u).unwrap(), b"42");
        assert_eq!(get(&HashKey::Query("user".into()), &h, &u).unwrap(), b"ann");
        assert_eq!(get(&HashKey::Query("lang".into()), &h, &u), None);
        assert_eq!(get(&room, &h, &uri("/chat")), None);
        assert_eq!(get(&room, &h, &uri("/chat?room=&x=1")), None);
        assert_eq!(get(&room, &h, &uri("/chat?room")), None);
        assert_eq!(
            get(&room, &h, &uri("https://example.com/chat?a=1&room=b%20c")).unwrap(),
            b"b%20c"
        );
    }
}
