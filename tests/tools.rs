//! Tests for the quick-start tools: the demo backend, the command-line client
//! and development certificates, over real sockets on 127.0.0.1.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wsgate::tools::client::{self, ClientError, ClientOptions};
use wsgate::tools::{certgen, demo};

use support::{read_head_bytes, tcp_connect, within, RawConn};

const LIMIT: Duration = Duration::from_secs(10);

/// Runs the demo on an ephemeral port; it ends with the test's runtime.
async fn start_demo() -> (SocketAddr, JoinHandle<std::io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    (addr, tokio::spawn(demo::serve(listener)))
}

/// Runs the demo behind TLS with a fresh development certificate written to `dir`.
async fn start_tls_demo(dir: &Path) -> (SocketAddr, JoinHandle<()>) {
    let names: Vec<String> = ["localhost", "127.0.0.1"].map(String::from).to_vec();
    certgen::write(dir, "localhost", &names, false).expect("write certs");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("localhost.pem"))
        .expect("open cert")
        .collect::<Result<_, _>>()
        .expect("parse cert");
    let key = PrivateKeyDer::from_pem_file(dir.join("localhost-key.pem")).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    demo::serve_connection(tls).await;
                }
            });
        }
    });
    (addr, task)
}

/// Sends one raw HTTP/1.1 request and returns everything the server wrote until it closed.
async fn raw_request(addr: SocketAddr, request: &str) -> String {
    let mut conn = RawConn::new(tcp_connect(addr).await);
    conn.send(request.as_bytes()).await;
    String::from_utf8_lossy(&conn.read_to_end().await).into_owned()
}

async fn run_client(url: String, ca: Option<&Path>, input: &str) -> Result<String, ClientError> {
    run_client_waiting(url, ca, input, Duration::from_secs(2)).await.1
}

/// Runs the client; returns what it printed even when it ends in an error.
async fn run_client_waiting(
    url: String,
    ca: Option<&Path>,
    input: &str,
    wait: Duration,
) -> (String, Result<String, ClientError>) {
    let options = ClientOptions {
        url,
        ca: ca.map(Path::to_path_buf),
        wait,
    };
    let mut output = Vec::new();
    let result = timeout(LIMIT, client::run(options, input.as_bytes(), &mut output))
        .await
        .expect("client finished in time");
    let printed = String::from_utf8(output).expect("utf-8 output");
    (printed.clone(), result.map(|()| printed))
}

/// A WebSocket server on 127.0.0.1 that hands its first connection to `peer`.
async fn one_ws_peer<F, Fut>(peer: F) -> SocketAddr
where
    F: FnOnce(WebSocketStream<TcpStream>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        peer(tokio_tungstenite::accept_async(tcp).await.expect("handshake")).await;
    });
    addr
}

/// A backend that answers only once the client has been quiet for 100 ms
/// (as one that batches, or thinks), and answers nothing once it has seen
/// a close: a client that closes as soon as its input ends gets no reply.
async fn thinking_backend() -> SocketAddr {
    one_ws_peer(|mut ws| async move {
        let mut pending = Vec::new();
        for _ in 0..100 {
            match timeout(Duration::from_millis(100), ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => pending.push(format!("reply to {}", text.as_str())),
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                    while let Some(Ok(_)) = ws.next().await {}
                    return;
                }
                Ok(Some(Ok(_))) => {}
                Err(_) => {
                    for reply in pending.drain(..) {
                        ws.send(Message::text(reply)).await.expect("send reply");
                    }
                }
            }
        }
    })
    .await
}

#[tokio::test]
async fn client_waits_for_replies_after_input_ends() {
    let addr = thinking_backend().await;
    let output = run_client(format!("ws://{addr}/"), None, "hi\nthere\n")
        .await
        .expect("a clean close");
    assert_eq!(output, "reply to hi\nreply to there\n");
}

#[tokio::test]
async fn client_reports_a_connection_dropped_without_close() {
    let addr = one_ws_peer(|mut ws| async move {
        let _ = ws.next().await;
        ws.send(Message::text("last words")).await.expect("send");
        // Dropped without a close frame.
    })
    .await;
    let (printed, result) = run_client_waiting(format!("ws://{addr}/"), None, "hi\n", Duration::from_secs(5)).await;
    assert_eq!(printed, "last words\n");
    match result {
        Err(error @ ClientError::Dropped) => assert!(error.to_string().contains("1006"), "{error}"),
        other => panic!("expected Dropped, got {other:?}"),
    }
}

#[tokio::test]
async fn client_reports_an_abnormal_close_code() {
    let addr = one_ws_peer(|mut ws| async move {
        let _ = ws.next().await;
        let close = CloseFrame {
            code: CloseCode::Error,
            reason: "backend broke".into(),
        };
        ws.send(Message::Close(Some(close))).await.expect("send close");
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    match run_client(format!("ws://{addr}/"), None, "hi\n").await {
        Err(error @ ClientError::Closed { code: 1011, .. }) => {
            assert!(error.to_string().contains("backend broke"), "{error}")
        }
        other => panic!("expected Closed with 1011, got {other:?}"),
    }
}

/// The binary: a dropped connection is a failed run, and `client --help`
/// lists only what the client uses.
#[tokio::test]
async fn client_command_exits_non_zero_when_dropped_and_has_no_config_flag() {
    let binary = env!("CARGO_BIN_EXE_wsgate");
    let help = std::process::Command::new(binary)
        .args(["client", "--help"])
        .output()
        .expect("run client --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--wait"), "{help}");
    assert!(!help.contains("--config"), "{help}");

    let addr = one_ws_peer(|mut ws| async move {
        let _ = ws.next().await;
    })
    .await;
    let mut child = tokio::process::Command::new(binary)
        .args(["client", &format!("ws://{addr}/")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start wsgate client");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"hi\n").await.expect("write stdin");
    drop(stdin);
    let output = timeout(LIMIT, child.wait_with_output())
        .await
        .expect("client exits in time")
        .expect("client output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("without a close frame"), "{stderr}");
}

#[tokio::test]
async fn client_echoes_lines_through_demo() {
    let (addr, _demo) = start_demo().await;
    let output = run_client(format!("ws://{addr}/echo"), None, "hello\nworld\n")
        .await
        .expect("client run");
    assert_eq!(output, "hello\nworld\n");
}

#[tokio::test]
async fn client_with_empty_input_closes_cleanly() {
    let (addr, _demo) = start_demo().await;
    let output = run_client(format!("ws://{addr}/echo"), None, "")
        .await
        .expect("client run");
    assert_eq!(output, "");
}

#[tokio::test]
async fn demo_page_is_served() {
    let (addr, _demo) = start_demo().await;
    let response = raw_request(addr, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("content-type: text/html"),
        "{response}"
    );
    assert!(response.contains("new WebSocket"), "{response}");
    // The echo shows at once: the page greets the backend when the socket opens.
    let on_open = response.split("ws.onopen").nth(1).expect("an onopen handler");
    let on_open = on_open.split("};").next().unwrap_or_default();
    assert!(on_open.contains("ws.send("), "{on_open}");
}

/// `wsgate demo`: the backend's start line once, peers as plain addresses.
#[tokio::test]
async fn demo_logs_its_backend_once_and_peers_as_addresses() {
    let toml = "[global]\nlog_format = \"json\"\n\n[[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n\
                [[route]]\nname = \"all\"\nupstream = \"demo\"\n\n\
                [[upstream]]\nname = \"demo\"\nservers = [{ address = \"127.0.0.1:9\" }]\n";
    let mut launch = support::hostile_peers::WsgateLaunch::new(toml, "info", None);
    launch.command().args(["demo", "--backend", "127.0.0.1:0"]);
    let mut wsgate = launch.spawn();
    wsgate.wait_listening(&["plain"], false).await;
    let started = wsgate
        .wait_for_log("the demo backend's start line", |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("demo") && m.contains("listening"))
        })
        .await;
    let backend: SocketAddr = started["address"]
        .as_str()
        .expect("address")
        .parse()
        .expect("an address");
    let response = raw_request(
        backend,
        "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let request = wsgate
        .wait_for_log("the demo request line", |l| l["message"] == "demo request")
        .await;
    let peer = request["peer"].as_str().expect("a peer");
    assert!(peer.parse::<SocketAddr>().is_ok(), "{request}");
    let starts = wsgate
        .log_lines()
        .into_iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("demo") && m.contains("listening"))
        })
        .count();
    assert_eq!(starts, 1, "{}", wsgate.log());
    wsgate.stop().await;
}

#[tokio::test]
async fn demo_health_and_not_found() {
    let (addr, _demo) = start_demo().await;
    let response = raw_request(
        addr,
        "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("\r\n\r\nok"), "{response}");
    let response = raw_request(
        addr,
        "GET /nope HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
}

#[tokio::test]
async fn demo_rejects_upgrade_without_key() {
    let (addr, _demo) = start_demo().await;
    let response = raw_request(
        addr,
        "GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
}

#[tokio::test]
async fn demo_picks_no_subprotocol() {
    let (addr, _demo) = start_demo().await;
    let request = "GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: chat\r\n\r\n";
    let mut stream = tcp_connect(addr).await;
    within("write", stream.write_all(request.as_bytes()))
        .await
        .expect("write");
    let head = within("the response head", read_head_bytes(&mut stream))
        .await
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // The RFC 6455 example key and its accept value.
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(!head.contains("sec-websocket-protocol"), "{head}");
}

#[tokio::test]
async fn demo_echoes_binary_and_close_code() {
    let (addr, _demo) = start_demo().await;
    timeout(LIMIT, async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/any/path"))
            .await
            .expect("connect");
        ws.send(Message::binary(vec![1u8, 2, 3])).await.expect("send");
        match ws.next().await {
            Some(Ok(Message::Binary(data))) => assert_eq!(&data[..], &[1, 2, 3]),
            other => panic!("expected binary echo, got {other:?}"),
        }
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(4000),
            reason: "bye".into(),
        })))
        .await
        .expect("send close");
        match ws.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4000),
            other => panic!("expected close reply, got {other:?}"),
        }
    })
    .await
    .expect("done in time");
}

#[tokio::test]
async fn client_over_tls_with_dev_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, _server) = start_tls_demo(dir.path()).await;
    let ca = dir.path().join("dev-ca.pem");
    let url = format!("wss://localhost:{}/echo", addr.port());
    let output = run_client(url.clone(), Some(&ca), "hello\nworld\n")
        .await
        .expect("client run over TLS");
    assert_eq!(output, "hello\nworld\n");
    let output = run_client(format!("wss://127.0.0.1:{}/echo", addr.port()), Some(&ca), "ip\n")
        .await
        .expect("client run over TLS by IP");
    assert_eq!(output, "ip\n");
}

#[tokio::test]
async fn client_over_tls_without_ca_says_to_pass_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, _server) = start_tls_demo(dir.path()).await;
    let url = format!("wss://localhost:{}/echo", addr.port());
    match run_client(url, None, "hello\n").await {
        Err(error @ ClientError::CaRequired { .. }) => {
            assert!(error.to_string().contains("--ca"), "{error}")
        }
        other => panic!("expected CaRequired, got {other:?}"),
    }
}

#[tokio::test]
async fn client_over_tls_rejects_other_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, _server) = start_tls_demo(dir.path()).await;
    let other = tempfile::tempdir().expect("tempdir");
    let names = vec!["localhost".to_string()];
    certgen::write(other.path(), "localhost", &names, false).expect("other certs");
    let url = format!("wss://localhost:{}/echo", addr.port());
    match run_client(url, Some(&other.path().join("dev-ca.pem")), "hello\n").await {
        Err(ClientError::Tls { .. }) => {}
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[tokio::test]
async fn client_reports_refused_handshake() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let _server = tokio::spawn(async move {
        if let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    match run_client(format!("ws://{addr}/echo"), None, "hello\n").await {
        Err(ClientError::Refused { status, .. }) => assert_eq!(status.as_u16(), 403),
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn client_reports_connect_failure_with_address() {
    // Bind then drop to get a port that is very likely closed.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    match run_client(format!("ws://{addr}/echo"), None, "").await {
        Err(error @ ClientError::Connect { .. }) => {
            assert!(error.to_string().contains(&addr.to_string()), "{error}")
        }
        other => panic!("expected Connect error, got {other:?}"),
    }
}

#[test]
fn committed_dev_certificate_is_valid_for_localhost() {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("dev-ca.pem")).expect("dev-ca.pem"))
        .expect("CA usable as root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .expect("verifier");
    let cert = CertificateDer::from_pem_file(dir.join("localhost.pem")).expect("localhost.pem");
    for name in ["localhost", "127.0.0.1", "::1"] {
        let name = ServerName::try_from(name).expect("server name");
        verifier
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .expect("committed certificate verifies");
    }
    let key = PrivateKeyDer::from_pem_file(dir.join("localhost-key.pem")).expect("localhost-key.pem");
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).expect("key type");
    rustls::sign::CertifiedKey::new(vec![cert], signing_key)
        .keys_match()
        .expect("committed key matches certificate");
}
