//! The WebSocket opening handshake: the client's request (RFC 6455 §4.2.1)
//! and the backend's answer (§4.1).
//!
//! Everything here is checked before a backend is contacted, so a malformed
//! handshake costs the backend nothing.

use base64::Engine;
use http::header::SEC_WEBSOCKET_PROTOCOL;
use http::{HeaderMap, HeaderValue, Method, Request, Version};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The only protocol version RFC 6455 defines.
pub const WEBSOCKET_VERSION: &str = "13";

/// What is wrong with a client's opening handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// §4.2.1 (1): "An HTTP/1.1 or higher GET request".
    #[error("a WebSocket handshake must be a GET request")]
    NotGet,
    #[error("a WebSocket handshake needs HTTP/1.1")]
    OldHttpVersion,
    /// §4.2.1 (4): "A |Connection| header field that includes the token 'Upgrade'".
    #[error("the Connection header lacks the \"upgrade\" token")]
    NoConnectionUpgrade,
    /// §4.2.1 (6): "A |Sec-WebSocket-Version| header field, with a value of 13".
    /// §4.4 asks the server to answer 426 with the versions it speaks.
    #[error("unsupported Sec-WebSocket-Version (this server speaks 13)")]
    UnsupportedVersion,
    /// §4.2.1 (5): "a base64-encoded value that, when decoded, is 16 bytes in length".
    #[error("Sec-WebSocket-Key is missing or is not base64 of 16 bytes")]
    BadKey,
    /// A GET handshake carries no body; one that does is an attempt to hide
    /// bytes from the proxy that the backend may read as frames.
    #[error("a WebSocket handshake must not have a body")]
    HasBody,
    /// RFC 8441 §4: an extended CONNECT carries `:scheme` and `:path` (h2
    /// itself resets a stream without them) and names its host in
    /// `:authority` (RFC 9113 §8.5).
    #[error("an extended CONNECT needs :authority (RFC 8441 §4)")]
    NoAuthority,
    /// RFC 8441 §5: over HTTP/2 "the Sec-WebSocket-Key and
    /// Sec-WebSocket-Accept header fields are not used"; a client that sends
    /// one is not speaking RFC 8441, and the key the backend sees is the
    /// proxy's own.
    #[error("Sec-WebSocket-Key has no place in a WebSocket over HTTP/2 (RFC 8441 §5)")]
    KeyOverHttp2,
}

/// Whether the client asks for a WebSocket: `Upgrade` names `websocket`.
/// Such a request is then held to the whole of §4.2.1.
pub fn wants_websocket(headers: &HeaderMap) -> bool {
    has_token(headers, http::header::UPGRADE, "websocket")
}

/// Checks a request that [`wants_websocket`] against §4.2.1 and returns its
/// `Sec-WebSocket-Key`, needed later to check the backend's answer.
pub fn validate<B>(request: &Request<B>) -> Result<HeaderValue, HandshakeError> {
    if request.method() != Method::GET {
        return Err(HandshakeError::NotGet);
    }
    if request.version() < Version::HTTP_11 {
        return Err(HandshakeError::OldHttpVersion);
    }
    let headers = request.headers();
    if !has_token(headers, http::header::CONNECTION, "upgrade") {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    let mut versions = headers.get_all(http::header::SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.as_bytes().trim_ascii() == WEBSOCKET_VERSION.as_bytes() => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }
    let mut keys = headers.get_all(http::header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) if is_valid_key(key.as_bytes()) => key.clone(),
        _ => return Err(HandshakeError::BadKey),
    };
    let has_length = headers
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes().trim_ascii() != b"0");
    if has_length || headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Err(HandshakeError::HasBody);
    }
    Ok(key)
}

/// Checks an HTTP/2 extended CONNECT whose `:protocol` is `websocket`
/// against RFC 8441 §4–5: `:authority`, `Sec-WebSocket-Version: 13`, no
/// `Sec-WebSocket-Key`. The rest of RFC 6455 §4.2.1 (`Upgrade`,
/// `Connection`, the GET) is HTTP/1.1's way of saying what
/// `:protocol` says here.
pub fn validate_extended_connect<B>(request: &Request<B>) -> Result<(), HandshakeError> {
    if request.uri().authority().is_none() {
        return Err(HandshakeError::NoAuthority);
    }
    let headers = request.headers();
    let mut versions = headers.get_all(http::header::SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.as_bytes().trim_ascii() == WEBSOCKET_VERSION.as_bytes() => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }
    if headers.contains_key(http::header::SEC_WEBSOCKET_KEY) {
        return Err(HandshakeError::KeyOverHttp2);
    }
    Ok(())
}

/// A fresh `Sec-WebSocket-Key` (RFC 6455 §4.1: 16 random bytes, base64),
/// for a backend handshake the client did not make itself (RFC 8441).
pub fn fresh_key() -> HeaderValue {
    let bytes: [u8; 16] = rand::random();
    let key = base64::engine::general_purpose::STANDARD.encode(bytes);
    // Base64 is always a valid header value.
    HeaderValue::from_str(&key).expect("base64 is a valid header value")
}

fn is_valid_key(key: &[u8]) -> bool {
    // 16 bytes encode to exactly 24 base64 characters, the last two "==".
    // Decoded on the stack: base64's estimate for 24 characters is 18.
    let mut bytes = [0u8; 18];
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode_slice(key, &mut bytes)
            .is_ok_and(|n| n == 16)
}

/// Why a backend's 101 cannot be passed on (§4.1, the client's checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamHandshakeError {
    #[error("Sec-WebSocket-Accept does not match the key")]
    BadAccept,
    #[error("the 101 answer lacks \"Upgrade: websocket\"")]
    NoUpgrade,
    /// §4.1: the client fails the connection if the server selects a
    /// subprotocol the client did not offer.
    #[error("the backend chose a subprotocol that was not offered")]
    UnofferedSubprotocol,
    /// §4.1: "If the response includes a |Sec-WebSocket-Extensions| header
    /// field and this header field indicates the use of an extension that
    /// was not present in the client's handshake … the client MUST _Fail
    /// the WebSocket Connection_". An inspected tunnel also trusts the
    /// answer to decide whether RSV1 is legal.
    #[error("the backend agreed to an extension that was not offered")]
    UnofferedExtension,
}

/// Checks the backend's 101 as the client would: a wrong accept value means
/// the backend is not answering this handshake, so the client must not get it.
/// `request` is the handshake as the backend received it.
pub fn check_upstream_answer(
    key: &HeaderValue,
    request: &HeaderMap,
    headers: &HeaderMap,
) -> Result<(), UpstreamHandshakeError> {
    if !wants_websocket(headers) {
        return Err(UpstreamHandshakeError::NoUpgrade);
    }
    let mut chosen = headers.get_all(http::header::SEC_WEBSOCKET_PROTOCOL).iter();
    match (chosen.next(), chosen.next()) {
        (None, _) => {}
        (Some(protocol), None)
            if protocol
                .to_str()
                .is_ok_and(|p| offered_subprotocols(request).any(|offered| offered == p.trim())) => {}
        _ => return Err(UpstreamHandshakeError::UnofferedSubprotocol),
    }
    let offered: Vec<&str> = extension_names(request).collect();
    if extension_names(headers).any(|agreed| !offered.iter().any(|o| o.eq_ignore_ascii_case(agreed))) {
        return Err(UpstreamHandshakeError::UnofferedExtension);
    }
    let expected = derive_accept_key(key.as_bytes());
    let mut accepts = headers.get_all(http::header::SEC_WEBSOCKET_ACCEPT).iter();
    match (accepts.next(), accepts.next()) {
        (Some(accept), None) if accept.as_bytes().trim_ascii() == expected.as_bytes() => Ok(()),
        _ => Err(UpstreamHandshakeError::BadAccept),
    }
}

/// The extension names in `Sec-WebSocket-Extensions` (RFC 6455 §9.1: a
/// comma-separated list of `name *(";" param)`), in every occurrence.
pub fn extension_names(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|extension| extension.split(';').next().map(str::trim))
        .filter(|name| !name.is_empty())
}

/// Whether the backend's answer agreed to the extension `name`.
pub fn agreed_extension(answer: &HeaderMap, name: &str) -> bool {
    extension_names(answer).any(|agreed| agreed.eq_ignore_ascii_case(name))
}

/// Whether a comma-separated header holds `token`, case-insensitively, in
/// any of its occurrences (`Connection: keep-alive, Upgrade`).
pub fn has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The protocols a `Sec-WebSocket-Protocol` header (or several) offers.
pub fn offered_subprotocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|protocol| !protocol.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(edit: impl FnOnce(&mut http::request::Builder)) -> Request<()> {
        let mut builder = Request::get("/chat")
            .header("Host", "example.com")
            .header("Upgrade", "websocket")
            .header("Connection", "keep-alive, Upgrade")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
        edit(&mut builder);
        builder.body(()).unwrap()
    }

    fn with(name: &'static str, value: &'static str) -> impl FnOnce(&mut http::request::Builder) {
        move |b| {
            b.headers_mut().unwrap().insert(name, HeaderValue::from_static(value));
        }
    }

    fn extensions(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(http::header::SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn extension_names_are_the_first_token_of_each_element() {
        let headers = extensions(&[
            "permessage-deflate; client_max_window_bits, x-webkit-deflate-frame",
            " foo ;bar=1",
        ]);
        let names: Vec<&str> = extension_names(&headers).collect();
        assert_eq!(names, ["permessage-deflate", "x-webkit-deflate-frame", "foo"]);
        assert!(agreed_extension(&headers, "PerMessage-Deflate"));
        // A name that merely contains another is not it.
        assert!(!agreed_extension(
            &extensions(&["x-permessage-deflate-foo"]),
            "permessage-deflate"
        ));
    }

    #[test]
    fn an_extension_the_client_did_not_offer_fails_the_answer() {
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let mut answer = extensions(&["permessage-deflate"]);
        answer.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        answer.insert(
            http::header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        );
        assert_eq!(
            check_upstream_answer(&key, &HeaderMap::new(), &answer),
            Err(UpstreamHandshakeError::UnofferedExtension)
        );
        let offer = extensions(&["permessage-deflate; client_max_window_bits"]);
        assert_eq!(check_upstream_answer(&key, &offer, &answer), Ok(()));
    }

    #[test]
    fn the_rfc_example_is_valid() {
        assert_eq!(validate(&request(|_| {})).unwrap(), "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn each_rule_is_enforced() {
        assert_eq!(
            validate(&request(with("Sec-WebSocket-Version", "8"))),
            Err(HandshakeError::UnsupportedVersion)
        );
        assert_eq!(
            validate(&request(with("Sec-WebSocket-Key", "c2hvcnQ="))),
            Err(HandshakeError::BadKey)
        );
        assert_eq!(
            validate(&request(with("Sec-WebSocket-Key", "not base64 at all, 24 ch"))),
            Err(HandshakeError::BadKey)
        );
        // 24 characters of 18 bytes, not 16.
        assert_eq!(
            validate(&request(with("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAAAA"))),
            Err(HandshakeError::BadKey)
        );
        assert_eq!(
            validate(&request(with("Connection", "keep-alive"))),
            Err(HandshakeError::NoConnectionUpgrade)
        );
        assert_eq!(
            validate(&request(with("Content-Length", "5"))),
            Err(HandshakeError::HasBody)
        );
        let mut post = request(|_| {});
        *post.method_mut() = Method::POST;
        assert_eq!(validate(&post), Err(HandshakeError::NotGet));
        let mut old = request(|_| {});
        *old.version_mut() = Version::HTTP_10;
        assert_eq!(validate(&old), Err(HandshakeError::OldHttpVersion));
    }

    #[test]
    fn an_extended_connect_is_held_to_rfc_8441() {
        let connect = |edit: fn(&mut http::request::Builder)| {
            let mut builder = Request::connect("https://example.com/chat").header("Sec-WebSocket-Version", "13");
            edit(&mut builder);
            builder.version(Version::HTTP_2).body(()).unwrap()
        };
        assert_eq!(validate_extended_connect(&connect(|_| {})), Ok(()));
        assert!(is_valid_key(fresh_key().as_bytes()));
        assert_ne!(fresh_key(), fresh_key());
        assert_eq!(
            validate_extended_connect(&connect(|b| {
                b.headers_mut()
                    .unwrap()
                    .insert("sec-websocket-version", HeaderValue::from_static("8"));
            })),
            Err(HandshakeError::UnsupportedVersion)
        );
        assert_eq!(
            validate_extended_connect(&connect(|b| {
                b.headers_mut().unwrap().insert(
                    "sec-websocket-key",
                    HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
                );
            })),
            Err(HandshakeError::KeyOverHttp2)
        );
        let no_authority = Request::connect("/chat")
            .header("Sec-WebSocket-Version", "13")
            .body(())
            .unwrap();
        assert_eq!(
            validate_extended_connect(&no_authority),
            Err(HandshakeError::NoAuthority)
        );
    }

    #[test]
    fn the_accept_key_and_the_chosen_subprotocol_are_checked() {
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let mut request = HeaderMap::new();
        let mut headers = HeaderMap::new();
        headers.insert("upgrade", HeaderValue::from_static("WebSocket"));
        headers.insert(
            "sec-websocket-accept",
            HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        );
        assert_eq!(check_upstream_answer(&key, &request, &headers), Ok(()));
        headers.insert("sec-websocket-protocol", HeaderValue::from_static("chat.v1"));
        assert_eq!(
            check_upstream_answer(&key, &request, &headers),
            Err(UpstreamHandshakeError::UnofferedSubprotocol)
        );
        request.insert("sec-websocket-protocol", HeaderValue::from_static("chat.v2, chat.v1"));
        assert_eq!(check_upstream_answer(&key, &request, &headers), Ok(()));
        headers.insert(
            "sec-websocket-accept",
            HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        );
        assert_eq!(
            check_upstream_answer(&key, &request, &headers),
            Err(UpstreamHandshakeError::BadAccept)
        );
    }
}
