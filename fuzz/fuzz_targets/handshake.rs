//! Fuzzes `wsgate::ws::handshake`: the client's opening handshake (RFC 6455
//! §4.2.1) and the backend's answer (§4.1).
//!
//! The input is a client's request head, parsed by hyper's HTTP/1.1 server
//! exactly as wsgate's listener parses it (so `validate` sees only what hyper
//! lets through), optionally followed, after the head's blank line, by a
//! backend's response head (parsed with httparse, as hyper's client does).
//!
//! Checked, besides "no panic":
//! - `validate` agrees with an oracle written here from the RFC's words
//!   (which error, in which order; the key is returned unchanged);
//! - `wants_websocket` and `has_token` ignore ASCII case, of the token and of
//!   the header values;
//! - `check_upstream_answer` agrees with an oracle on the fuzzed answer;
//! - for an accepted request, answers built from it behave: the right
//!   `Sec-WebSocket-Accept` (computed here with SHA-1, not with the crate's
//!   helper) passes, also with an offered subprotocol and the offered
//!   extensions named in another case; a damaged accept value, a missing
//!   `Upgrade`, a subprotocol or an extension that was not offered fail with
//!   their own error;
//! - `extension_names` yields trimmed, non-empty names without `,` or `;`,
//!   and `agreed_extension` finds each of them.

#![no_main]

use std::convert::Infallible;

use base64::Engine;
use http::header::{
    CONNECTION, CONTENT_LENGTH, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Version};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsgate::ws::handshake::{
    agreed_extension, check_upstream_answer, extension_names, has_token, validate, wants_websocket, HandshakeError,
    UpstreamHandshakeError,
};

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
}

fuzz_target!(|data: &[u8]| {
    let (head, answer) = match data.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => data.split_at(end + 4),
        None => (data, &[][..]),
    };
    let answer = parse_answer(answer);
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            // Room for the whole head, so the write never waits for hyper.
            let (mut client, server) = tokio::io::duplex(head.len() + 1);
            client.write_all(head).await.unwrap();
            client.shutdown().await.unwrap();
            let service = service_fn(|request: Request<hyper::body::Incoming>| {
                check_request(&request, answer.as_ref());
                async { Ok::<_, Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new())) }
            });
            // As src/http.rs serves a client connection (no timer: nothing waits here).
            let connection = hyper::server::conn::http1::Builder::new()
                .max_header_size(16 * 1024)
                .serve_connection(TokioIo::new(server), service)
                .with_upgrades();
            // Read the answers while hyper writes them: a head may hold several
            // requests (httparse also ends a head at a bare "\n\n").
            let mut answers = Vec::new();
            let _ = tokio::join!(connection, client.read_to_end(&mut answers));
        })
    });
});

/// The backend's answer as a header map; None when it is not a response head.
fn parse_answer(bytes: &[u8]) -> Option<HeaderMap> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    response.parse(bytes).ok()?;
    let mut map = HeaderMap::new();
    for header in response.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(header.value).ok()?;
        map.append(name, value);
    }
    Some(map)
}

fn check_request<B>(request: &Request<B>, answer: Option<&HeaderMap>) {
    let headers = request.headers();
    let result = validate(request);
    assert_eq!(result, expected_validate(request), "validate vs the oracle");
    check_case_insensitivity(headers);
    check_extension_names(headers);

    if let Ok(key) = &result {
        assert_eq!(Some(key), headers.get(SEC_WEBSOCKET_KEY));
        check_built_answers(key, headers);
    }
    if let Some(answer) = answer {
        check_extension_names(answer);
        let key = match &result {
            Ok(key) => key.clone(),
            Err(_) => headers
                .get(SEC_WEBSOCKET_KEY)
                .cloned()
                .unwrap_or(HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==")),
        };
        assert_eq!(
            check_upstream_answer(&key, headers, answer),
            expected_answer(&key, headers, answer),
            "check_upstream_answer vs the oracle"
        );
    }
}

// ------------------------------------------------------------------ oracles

/// Comma-separated tokens of every occurrence of a header, trimmed of
/// spaces and tabs (RFC 9110 §5.6.1: OWS around list elements).
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Vec<&'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|t| t.trim_ascii())
        .collect()
}

fn only<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (Some(value), None) => Some(value),
        _ => None,
    }
}

/// §4.2.1 (5): "a base64-encoded value that, when decoded, is 16 bytes":
/// 22 characters of the alphabet then "==", the last character carrying only
/// 2 bits (so its low 4 bits are zero: A, Q, g or w).
fn is_key(value: &[u8]) -> bool {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    value.len() == 24
        && value[..22].iter().all(|b| ALPHABET.contains(b))
        && matches!(value[21], b'A' | b'Q' | b'g' | b'w')
        && &value[22..] == b"=="
}

fn expected_validate<B>(request: &Request<B>) -> Result<HeaderValue, HandshakeError> {
    let headers = request.headers();
    if request.method() != Method::GET {
        return Err(HandshakeError::NotGet);
    }
    if !matches!(request.version(), Version::HTTP_11 | Version::HTTP_2 | Version::HTTP_3) {
        return Err(HandshakeError::OldHttpVersion);
    }
    if !tokens(headers, &CONNECTION)
        .iter()
        .any(|t| t.eq_ignore_ascii_case(b"upgrade"))
    {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    if only(headers, &SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes().trim_ascii() != b"13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = match only(headers, &SEC_WEBSOCKET_KEY) {
        Some(key) if is_key(key.as_bytes()) => key.clone(),
        _ => return Err(HandshakeError::BadKey),
    };
    // hyper refuses differing Content-Length values and folds equal ones, so
    // every value left is the body's length.
    let body = headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .any(|v| v.as_bytes().trim_ascii() != b"0")
        || headers.contains_key(TRANSFER_ENCODING);
    if body {
        return Err(HandshakeError::HasBody);
    }
    Ok(key)
}

/// base64(SHA-1(key ++ GUID)), RFC 6455 §4.2.2 (5.4).
fn accept_for(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

fn extension_names_oracle(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|element| element.split(';').next().unwrap_or("").trim().to_owned())
        .filter(|name| !name.is_empty())
        .collect()
}

fn expected_answer(key: &HeaderValue, request: &HeaderMap, answer: &HeaderMap) -> Result<(), UpstreamHandshakeError> {
    if !tokens(answer, &UPGRADE)
        .iter()
        .any(|t| t.eq_ignore_ascii_case(b"websocket"))
    {
        return Err(UpstreamHandshakeError::NoUpgrade);
    }
    let mut chosen = answer.get_all(SEC_WEBSOCKET_PROTOCOL).iter();
    match (chosen.next(), chosen.next()) {
        (None, _) => {}
        (Some(protocol), None) => {
            let offered: Vec<&str> = request
                .get_all(SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect();
            if !protocol.to_str().is_ok_and(|p| offered.contains(&p.trim())) {
                return Err(UpstreamHandshakeError::UnofferedSubprotocol);
            }
        }
        _ => return Err(UpstreamHandshakeError::UnofferedSubprotocol),
    }
    let offered = extension_names_oracle(request);
    if extension_names_oracle(answer)
        .iter()
        .any(|agreed| !offered.iter().any(|o| o.eq_ignore_ascii_case(agreed)))
    {
        return Err(UpstreamHandshakeError::UnofferedExtension);
    }
    match only(answer, &SEC_WEBSOCKET_ACCEPT) {
        Some(accept) if accept.as_bytes().trim_ascii() == accept_for(key.as_bytes()).as_bytes() => Ok(()),
        _ => Err(UpstreamHandshakeError::BadAccept),
    }
}

// --------------------------------------------------------------- properties

/// The headers with every value's ASCII letters in upper (or lower) case.
fn recased(headers: &HeaderMap, upper: bool) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let bytes: Vec<u8> = if upper {
            value.as_bytes().to_ascii_uppercase()
        } else {
            value.as_bytes().to_ascii_lowercase()
        };
        out.append(name, HeaderValue::from_bytes(&bytes).expect("recased value"));
    }
    out
}

fn check_case_insensitivity(headers: &HeaderMap) {
    let wants = wants_websocket(headers);
    assert_eq!(wants, has_token(headers, UPGRADE, "websocket"));
    assert_eq!(wants, has_token(headers, UPGRADE, "WebSocket"));
    let upgrade = has_token(headers, CONNECTION, "upgrade");
    assert_eq!(upgrade, has_token(headers, CONNECTION, "UPGRADE"));
    for upper in [true, false] {
        let recased = recased(headers, upper);
        assert_eq!(wants, wants_websocket(&recased), "Upgrade token case");
        assert_eq!(
            upgrade,
            has_token(&recased, CONNECTION, "upgrade"),
            "Connection token case"
        );
    }
}

fn check_extension_names(headers: &HeaderMap) {
    let names: Vec<&str> = extension_names(headers).collect();
    assert_eq!(names, extension_names_oracle(headers));
    for name in &names {
        assert!(!name.is_empty() && *name == name.trim() && !name.contains([',', ';']));
        assert!(agreed_extension(headers, name));
        assert!(agreed_extension(headers, &name.to_ascii_uppercase()));
    }
}

fn check_built_answers(key: &HeaderValue, request: &HeaderMap) {
    let accept = accept_for(key.as_bytes());
    let mut answer = HeaderMap::new();
    answer.insert(UPGRADE, HeaderValue::from_static("websocket"));
    answer.insert(SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).unwrap());
    assert_eq!(
        check_upstream_answer(key, request, &answer),
        Ok(()),
        "the right accept value"
    );

    // The offered extensions, agreed in upper case, and the first offered subprotocol.
    let offered = extension_names_oracle(request);
    let mut agreeing = answer.clone();
    if !offered.is_empty() {
        let list = offered.join(", ").to_ascii_uppercase();
        if let Ok(value) = HeaderValue::from_str(&list) {
            agreeing.insert(SEC_WEBSOCKET_EXTENSIONS, value);
        }
    }
    let protocol = wsgate::ws::handshake::offered_subprotocols(request).next();
    if let Some(value) = protocol.and_then(|p| HeaderValue::from_str(p).ok()) {
        agreeing.insert(SEC_WEBSOCKET_PROTOCOL, value);
    }
    assert_eq!(
        check_upstream_answer(key, request, &agreeing),
        Ok(()),
        "offered extensions and subprotocol"
    );

    let mut damaged = answer.clone();
    let mut bytes = accept.into_bytes();
    bytes[0] = if bytes[0] == b'A' { b'B' } else { b'A' };
    damaged.insert(SEC_WEBSOCKET_ACCEPT, HeaderValue::from_bytes(&bytes).unwrap());
    assert_eq!(
        check_upstream_answer(key, request, &damaged),
        Err(UpstreamHandshakeError::BadAccept)
    );

    let mut no_upgrade = answer.clone();
    no_upgrade.remove(UPGRADE);
    assert_eq!(
        check_upstream_answer(key, request, &no_upgrade),
        Err(UpstreamHandshakeError::NoUpgrade)
    );

    let unoffered = "x-wsgate-fuzz-unoffered";
    if !offered.iter().any(|o| o.eq_ignore_ascii_case(unoffered)) {
        let mut extension = answer.clone();
        extension.insert(SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static(unoffered));
        assert_eq!(
            check_upstream_answer(key, request, &extension),
            Err(UpstreamHandshakeError::UnofferedExtension)
        );
    }
    if !wsgate::ws::handshake::offered_subprotocols(request).any(|p| p == unoffered) {
        let mut subprotocol = answer;
        subprotocol.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(unoffered));
        assert_eq!(
            check_upstream_answer(key, request, &subprotocol),
            Err(UpstreamHandshakeError::UnofferedSubprotocol)
        );
    }
}
