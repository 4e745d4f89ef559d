//! Plain HTTP (no upgrade) through the proxy, over TCP and TLS.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::{Empty, Full, StreamBody};
use hyper::body::Frame;
use support::*;
use tokio::io::{AsyncRead, AsyncWrite};

fn get(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", format!("localhost:{}", addr.port()))
        .header("x-forwarded-for", "198.51.100.7")
        .header("cookie", "session=abc123")
        .body(Empty::new())
        .unwrap()
}

/// What every forwarded request must carry.
fn assert_forwarding_headers(seen: &SeenRequest, host: &str, proto: &str) {
    assert_eq!(
        seen.header("x-forwarded-for").as_deref(),
        Some("127.0.0.1"),
        "{seen:#?}"
    );
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some(proto), "{seen:#?}");
    assert_eq!(seen.header("x-forwarded-host").as_deref(), Some(host), "{seen:#?}");
    assert_eq!(seen.header("cookie").as_deref(), Some("session=abc123"), "{seen:#?}");
    let forwarded = seen.header("forwarded").expect("Forwarded header").to_ascii_lowercase();
    assert!(
        forwarded.contains("for=") && forwarded.contains("127.0.0.1"),
        "Forwarded: {forwarded}"
    );
    assert!(forwarded.contains(&format!("proto={proto}")), "Forwarded: {forwarded}");
    assert!(forwarded.contains("host="), "Forwarded: {forwarded}");
}

async fn get_through<S>(io: S, addr: SocketAddr, backend: &Backend, proto: &str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (head, body) = http_request(io, get(addr, "/hello?x=1")).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers.get("x-backend").map(|v| v.to_str().unwrap()), Some("echo"));
    assert_eq!(&body[..], b"backend GET /hello");
    let seen = backend.only_request();
    assert_eq!(seen.method, http::Method::GET);
    assert_eq!(seen.uri.path_and_query().map(|p| p.as_str()), Some("/hello?x=1"));
    assert_forwarding_headers(&seen, &format!("localhost:{}", addr.port()), proto);
}

#[tokio::test]
async fn get_is_forwarded_with_forwarding_headers() {
    let backend = Backend::echo().await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    get_through(tcp_connect(addr).await, addr, &backend, "http").await;
    proxy.stop().await;
}

#[tokio::test]
async fn post_body_is_forwarded_and_answered() {
    let backend = Backend::echo().await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let request = Request::post("/submit")
        .header("host", format!("localhost:{}", addr.port()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(b"name=wsgate&kind=proxy")))
        .unwrap();
    let (head, body) = http_request(tcp_connect(addr).await, request).await;
    assert_eq!(head.status, 200);
    assert_eq!(&body[..], b"name=wsgate&kind=proxy");
    let seen = backend.only_request();
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(
        seen.header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn chunked_streamed_request_body_arrives_intact() {
    let backend = Backend::echo().await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    const CHUNKS: usize = 80;
    const CHUNK: usize = 4 * 1024 + 7; // ~320 KiB in all, odd sizes on purpose
    let expected: Vec<u8> = (0..CHUNKS * CHUNK).map(|i| (i * 31 % 256) as u8).collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let chunks = expected.chunks(CHUNK).map(Bytes::copy_from_slice).collect::<Vec<_>>();
    let producer = tokio::spawn(async move {
        for chunk in chunks {
            if tx.send(chunk).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    // No content-length: hyper sends the body chunked as the producer yields it.
    let request = Request::post("/upload")
        .header("host", format!("localhost:{}", addr.port()))
        .body(StreamBody::new(stream))
        .unwrap();
    let (head, body) = http_request(tcp_connect(addr).await, request).await;
    within("body producer", producer).await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(body.len(), expected.len(), "echoed body length");
    assert!(body[..] == expected[..], "echoed body differs");
    let seen = backend.only_request();
    assert_eq!(
        seen.header("content-length"),
        None,
        "a streamed body must not be buffered to get a length"
    );
    proxy.stop().await;
}

async fn get_over_tls(version: &'static rustls::SupportedProtocolVersion) {
    let certs = TestCerts::generate();
    let backend = Backend::echo().await;
    let proxy = start_proxy(&config(backend.addr, Some(&certs))).await;
    let addr = proxy.addr("tls");
    let tls = tls_connect(addr, "localhost", certs.client_config_with(&[version])).await;
    let connection = tls.get_ref().1;
    assert_eq!(connection.protocol_version(), Some(version.version));
    assert_eq!(connection.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN");
    get_through(tls, addr, &backend, "https").await;
    proxy.stop().await;
}

#[tokio::test]
async fn get_over_tls_1_3() {
    get_over_tls(&rustls::version::TLS13).await;
}

#[tokio::test]
async fn get_over_tls_1_2() {
    get_over_tls(&rustls::version::TLS12).await;
}

#[tokio::test]
async fn backend_down_is_502_for_http() {
    let proxy = start_proxy(&config(refused_addr().await, None)).await;
    let addr = proxy.addr("plain");
    let (head, _) = http_request(tcp_connect(addr).await, get(addr, "/")).await;
    assert_eq!(head.status, 502);
    proxy.stop().await;
}

#[tokio::test]
async fn backend_status_and_body_pass_through_for_http() {
    let backend = Backend::start(Behavior::Status(404, "nothing here")).await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let (head, body) = http_request(tcp_connect(addr).await, get(addr, "/missing")).await;
    assert_eq!(head.status, 404);
    assert_eq!(&body[..], b"nothing here");
    proxy.stop().await;
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    let backend = Backend::echo().await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let addr = proxy.addr("plain");
    let mut conn = RawConn::new(tcp_connect(addr).await);
    let request = format!("GET /one HTTP/1.1\r\nHost: localhost:{}\r\n\r\n", addr.port());
    conn.send(request.as_bytes()).await;
    let first = conn.read_response().await;
    assert_eq!(first.status, 200);
    assert_ne!(first.header("connection"), Some("close"), "kept alive before shutdown");
    // shutdown_timeout is 2s: the idle connection must end well before.
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(proxy.stop());
    let rest = within("the idle connection ending", conn.read_to_end()).await;
    assert!(rest.is_empty(), "nothing more was sent: {rest:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    within("proxy stop", stopping).await.unwrap();
}
