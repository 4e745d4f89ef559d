//! Hostile TLS clients against the real binary: garbage where a
//! ClientHello belongs, a ClientHello for TLS 1.0 or 1.1 only (made by
//! hand: rustls cannot send one), a name the listener holds no certificate
//! for, and a client that stops halfway through the handshake. Each must
//! end (or be served the default certificate) without touching any other
//! connection, and leave a line in the debug log naming the client, which
//! is why the proxy runs as the binary with `WSGATE_LOG=debug` and JSON
//! logs, read back line by line.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use support::hostile_peers::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The handshake timeout of the tests that expect a refusal: a connection
/// that ends well before it was refused, not timed out.
const LONG_HANDSHAKE_TIMEOUT: &str = "5s";
/// How soon a refused handshake must end.
const REFUSED_WITHIN: Duration = Duration::from_secs(2);

/// TLS alert levels and descriptions (RFC 8446 §6).
const ALERT: u8 = 21;
const FATAL: u8 = 2;
const PROTOCOL_VERSION: u8 = 70;
/// What rustls answers when the certificate resolver finds none.
const ACCESS_DENIED: u8 = 49;

/// The `[listener.tls]` table of the tests of `unknown_sni = "refuse"`.
const REFUSE_UNKNOWN_SNI: &str = "[listener.tls]\nunknown_sni = \"refuse\"\n\n";

/// The binary with a TLS listener holding two certificates, `localhost`
/// (listed first: the default) and `other.test`, in front of an echo
/// backend; and a wss tunnel opened before any attack, which must live
/// through all of them.
struct Fixture {
    certs: TestCerts,
    _backend: Backend,
    wsgate: WsgateChild,
    addr: SocketAddr,
    established: WebSocketStream<TlsStream<TcpStream>>,
}

impl Fixture {
    async fn start(handshake_timeout: &str) -> Fixture {
        Fixture::start_with(handshake_timeout, "").await
    }

    /// As [`Fixture::start`], with `listener_tls` (a `[listener.tls]` table)
    /// before the certificates.
    async fn start_with(handshake_timeout: &str, listener_tls: &str) -> Fixture {
        let certs = TestCerts::generate();
        let backend = Backend::echo().await;
        let toml = format!(
            "[global]\nshutdown_timeout = \"2s\"\nlog_format = \"json\"\nhandshake_timeout = \"{handshake_timeout}\"\n\n\
             [[listener]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\n{listener_tls}{}{}\n{}",
            tls_entry(&certs.server_cert(), &certs.server_key()),
            tls_entry(&certs.other_cert(), &certs.other_key()),
            route_and_upstream(backend.addr, "")
        );
        let wsgate = WsgateChild::start(&toml, &["tls"], "debug", None).await;
        let addr = wsgate.addr("tls");
        let (mut established, _) = wss_connect(addr, "localhost", "/established", &certs).await;
        assert_echo(&mut established, Message::text("before the attack")).await;
        Fixture {
            certs,
            _backend: backend,
            wsgate,
            addr,
            established,
        }
    }

    /// The tunnel opened before still echoes, and a new client is served.
    async fn others_are_served(&mut self, when: &str) {
        assert_echo(&mut self.established, Message::text(format!("established, {when}"))).await;
        let (mut ws, _) = wss_connect(self.addr, "localhost", "/new", &self.certs).await;
        assert_echo(&mut ws, Message::text(format!("new client, {when}"))).await;
        close(ws).await;
    }

    /// Waits for the debug line `message` in the span of `client`'s connection.
    async fn debug_line(&self, client: SocketAddr, message: &str) -> serde_json::Value {
        self.wsgate
            .wait_for_log(&format!("{message:?} at debug for {client}"), |line| {
                line["message"] == message && logged_for(line, "DEBUG", client)
            })
            .await
    }

    async fn stop(self) {
        close(self.established).await;
        self.wsgate.stop().await;
    }
}

/// Sends `bytes` on a fresh connection; returns what came back before the
/// proxy closed it, which must be soon (a refusal, not a timeout), and the
/// client's address.
async fn refused(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, SocketAddr) {
    let mut stream = tcp_connect(addr).await;
    let client = stream.local_addr().unwrap();
    stream.write_all(bytes).await.unwrap();
    let sent = Instant::now();
    let (answer, closed_at) = read_until_closed(&mut stream, REFUSED_WITHIN).await;
    let closed_at = closed_at.unwrap_or_else(|| panic!("{client}: not closed within {REFUSED_WITHIN:?}"));
    eprintln!(
        "{client}: {} bytes back, closed {:?} after the send",
        answer.len(),
        closed_at.duration_since(sent)
    );
    (answer, client)
}

/// Garbage where a ClientHello belongs: a plain HTTP request on the TLS
/// port (a misconfigured client, or a scanner), a handshake record with
/// no ClientHello inside, and bytes that are not TLS records at all. A
/// parser that waited for more, or panicked, would hold or kill
/// connections; each must be closed at once, with nothing but a TLS alert
/// said, a debug line saying why, and the other connections untouched.
#[tokio::test]
async fn garbage_instead_of_a_client_hello_is_closed_at_once_with_a_debug_line() {
    let mut fixture = Fixture::start(LONG_HANDSHAKE_TIMEOUT).await;
    let garbage: [(&str, Vec<u8>); 3] = [
        ("plain HTTP", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec()),
        (
            "a handshake record without a ClientHello",
            vec![0x16, 0x03, 0x01, 0x00, 0x08, 0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3],
        ),
        (
            "not TLS at all",
            (0..64u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 0x80)
                .collect(),
        ),
    ];
    for (what, bytes) in garbage {
        let (answer, client) = refused(fixture.addr, &bytes).await;
        let records = records(&answer).unwrap_or_else(|| panic!("{what}: not TLS records: {answer:?}"));
        assert!(
            records.iter().all(|r| r.kind == ALERT),
            "{what}: answered with more than an alert: {records:?}"
        );
        let line = fixture.debug_line(client, "TLS handshake failed").await;
        eprintln!("{what}: {}", line["error"]);
        fixture.others_are_served(&format!("after {what}")).await;
    }
    fixture.stop().await;
}

/// A ClientHello offering only TLS 1.0 or only TLS 1.1 (an old client, or
/// a downgrade probe). wsgate speaks TLS 1.2 and 1.3 only: the answer must
/// be the fatal `protocol_version` alert, which tells the client why, and
/// the end of the connection, never a ServerHello, with a debug line, and
/// other connections untouched. As such clients send it (without
/// `signature_algorithms`, a TLS 1.2 extension) as much as with it: rustls
/// alone answers the former with `handshake_failure`.
#[tokio::test]
async fn a_client_hello_for_tls_1_0_or_1_1_only_gets_the_protocol_version_alert_and_a_debug_line() {
    // An alert record (21), TLS 1.0 record version, 2 bytes: fatal (2), protocol_version (70).
    const ALERT_RECORD: [u8; 7] = [ALERT, 0x03, 0x01, 0x00, 0x02, FATAL, PROTOCOL_VERSION];
    let mut fixture = Fixture::start(LONG_HANDSHAKE_TIMEOUT).await;
    for (version, name) in [(0x0301, "TLS 1.0"), (0x0302, "TLS 1.1")] {
        for signature_algorithms in [false, true] {
            let what = format!("{name}, signature_algorithms {signature_algorithms}");
            let hello = legacy_client_hello(version, "localhost", signature_algorithms);
            let (answer, client) = refused(fixture.addr, &hello).await;
            assert_eq!(answer, ALERT_RECORD, "{what}: not the protocol_version alert alone");
            let line = fixture.debug_line(client, "TLS handshake failed").await;
            let error = line["error"].as_str().unwrap_or_default();
            assert!(
                error.contains(name) && error.contains("protocol_version"),
                "{what}: {line}"
            );
            fixture.others_are_served(&format!("after a {what} ClientHello")).await;
        }
    }
    fixture.stop().await;
}

/// A TLS connection with SNI `sni`, trusting any certificate; returns it
/// with the certificate it was shown.
async fn connect_with_sni(
    addr: SocketAddr,
    sni: &str,
) -> (TlsStream<TcpStream>, rustls::pki_types::CertificateDer<'static>) {
    let verifier = RecordingVerifier::new();
    let tcp = tcp_connect(addr).await;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let tls = within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(verifier.client_config()).connect(name, tcp),
    )
    .await
    .unwrap_or_else(|e| panic!("TLS handshake with SNI {sni}: {e}"));
    let shown = verifier.seen().expect("a certificate was shown");
    (tls, shown)
}

/// SNI naming a host the listener holds no certificate for (a scanner
/// walking names, a stale DNS entry). Without `unknown_sni = "refuse"`,
/// as documented, the first certificate listed is the default:
/// the client is shown it (while a known name still gets its own) and is
/// served, and no other connection notices.
#[tokio::test]
async fn an_unknown_sni_name_is_shown_the_default_certificate_and_known_names_their_own() {
    let mut fixture = Fixture::start(LONG_HANDSHAKE_TIMEOUT).await;
    let (tls, shown) = connect_with_sni(fixture.addr, "nobody.test").await;
    assert_eq!(&shown, fixture.certs.server_der(), "the default is the first listed");
    let url = format!("wss://nobody.test:{}/unknown", fixture.addr.port());
    let (mut ws, _) = ws_handshake(tls, &url, &[]).await;
    assert_echo(&mut ws, Message::text("served under an unknown name")).await;
    close(ws).await;

    let (tls, shown) = connect_with_sni(fixture.addr, "other.test").await;
    assert_eq!(
        &shown,
        fixture.certs.other_der(),
        "a known name gets its own certificate"
    );
    drop(tls);
    fixture.others_are_served("after an unknown SNI name").await;
    fixture.stop().await;
}

/// The same unknown name must be visible to an operator: a certificate
/// mismatch is what a client reports as "wrong certificate", and only the
/// proxy knows which name was asked for. A debug line in the connection's
/// span naming the SNI and saying the default certificate was used.
#[tokio::test]
async fn an_unknown_sni_name_is_logged_at_debug() {
    let fixture = Fixture::start(LONG_HANDSHAKE_TIMEOUT).await;
    let (tls, _) = connect_with_sni(fixture.addr, "nobody.test").await;
    let client = tls.get_ref().0.local_addr().unwrap();
    fixture
        .wsgate
        .wait_for_log_within(Duration::from_secs(3), "naming the unknown SNI", |line| {
            logged_for(line, "DEBUG", client)
                && line["target"].as_str().is_some_and(|t| t.starts_with("wsgate"))
                && line.to_string().contains("nobody.test")
        })
        .await;
    drop(tls);
    fixture.stop().await;
}

/// A client that sends its ClientHello, reads the server's answer, and
/// then stops: no Finished ever comes. rustls would wait forever; the
/// handshake counts against `handshake_timeout` (1 s), so the connection
/// is closed then, with a debug line, and connections opened before and
/// during the stall are served as usual.
#[tokio::test]
async fn a_client_that_stops_mid_handshake_is_closed_at_the_handshake_timeout_with_a_debug_line() {
    let timeout = Duration::from_secs(1);
    let mut fixture = Fixture::start("1s").await;
    let mut stalled = tcp_connect(fixture.addr).await;
    let connected = Instant::now();
    let client = stalled.local_addr().unwrap();
    let hello = rustls_client_hello(fixture.certs.client_config(), "localhost");
    stalled.write_all(&hello).await.unwrap();
    // The server's first flight (ServerHello onwards) arrives; the client
    // goes no further.
    let mut first = [0u8; 5];
    within("the server's first flight", stalled.read_exact(&mut first))
        .await
        .expect("the server answered the ClientHello");
    assert_eq!(first[0], 0x16, "a handshake record: {first:?}");

    fixture.others_are_served("during a stalled handshake").await;
    assert!(
        connected.elapsed() < timeout,
        "served only after the stall's deadline: not during it"
    );
    let limit = timeout + Duration::from_secs(3);
    let (_, closed_at) = read_until_closed(&mut stalled, limit).await;
    let closed_at = closed_at.unwrap_or_else(|| panic!("the stalled handshake not closed within {limit:?}"));
    let lifetime = closed_at.duration_since(connected);
    assert!(
        lifetime >= timeout - Duration::from_millis(100) && lifetime <= timeout + Duration::from_secs(2),
        "the stalled handshake was closed after {lifetime:?}, the timeout is {timeout:?}"
    );
    fixture.debug_line(client, "TLS handshake timed out").await;
    fixture.others_are_served("after a stalled handshake").await;
    fixture.stop().await;
}

/// A TLS handshake as `name` (no SNI at all for an IP address, as rustls
/// and browsers do, or with `sni` off), trusting any certificate: the
/// stream, or the error, with the certificate shown if any.
async fn try_connect_as(
    addr: SocketAddr,
    name: &str,
    sni: bool,
) -> (
    std::io::Result<TlsStream<TcpStream>>,
    Option<rustls::pki_types::CertificateDer<'static>>,
) {
    let verifier = RecordingVerifier::new();
    let mut config = (*verifier.client_config()).clone();
    config.enable_sni = sni;
    let tcp = tcp_connect(addr).await;
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let result = within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(server_name, tcp),
    )
    .await;
    (result, verifier.seen())
}

/// Asserts that the handshake as `name` was refused with a fatal
/// access_denied alert, before any certificate was shown.
async fn assert_refused_with_access_denied(addr: SocketAddr, name: &str, sni: bool) {
    let what = format!("{name} (SNI {})", if sni { "on" } else { "off" });
    let (result, shown) = try_connect_as(addr, name, sni).await;
    let error = match result {
        Ok(_) => panic!("{what}: the handshake succeeded, it must be refused"),
        Err(error) => error,
    };
    let received = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    assert_eq!(
        received,
        Some(&rustls::Error::AlertReceived(rustls::AlertDescription::AccessDenied)),
        "{what}: {error:?}"
    );
    assert_eq!(shown, None, "{what}: a certificate was shown before the refusal");
}

/// The bytes of the refusal itself, for a real ClientHello as `name`:
/// one plaintext fatal access_denied alert and the end of the connection,
/// never a ServerHello; returns the client's address.
async fn refused_with_one_alert(
    fixture: &Fixture,
    config: std::sync::Arc<rustls::ClientConfig>,
    name: &str,
) -> SocketAddr {
    let hello = rustls_client_hello(config, name);
    let (answer, client) = refused(fixture.addr, &hello).await;
    let records = records(&answer).unwrap_or_else(|| panic!("{name}: not TLS records: {answer:?}"));
    assert_eq!(
        records,
        [Record {
            kind: ALERT,
            payload: vec![FATAL, ACCESS_DENIED]
        }],
        "{name}: not one fatal access_denied alert"
    );
    client
}

/// With `unknown_sni = "refuse"` (nginx's `ssl_reject_handshake`, HAProxy's
/// `strict-sni`), SNI naming a host the listener holds no certificate for
/// is refused in the handshake: rustls sends a fatal access_denied alert
/// (49) in answer to the ClientHello, no certificate is shown, and a debug
/// line in the connection's span names the SNI. Names the listener does
/// hold still get their own certificate and are served, and no other
/// connection notices.
#[tokio::test]
async fn with_unknown_sni_refuse_an_unknown_name_gets_an_access_denied_alert_and_known_names_their_own() {
    let mut fixture = Fixture::start_with(LONG_HANDSHAKE_TIMEOUT, REFUSE_UNKNOWN_SNI).await;
    assert_refused_with_access_denied(fixture.addr, "nobody.test", true).await;
    // A subdomain of a known name is no match either: other.test holds no wildcard.
    assert_refused_with_access_denied(fixture.addr, "sub.other.test", true).await;

    let client = refused_with_one_alert(&fixture, fixture.certs.client_config(), "nobody.test").await;
    let line = fixture
        .debug_line(client, "no certificate for the SNI name: handshake refused")
        .await;
    assert_eq!(line["sni"], "nobody.test", "{line}");
    assert!(
        line["target"].as_str().is_some_and(|t| t.starts_with("wsgate")),
        "{line}"
    );
    fixture.debug_line(client, "TLS handshake failed").await;
    fixture.others_are_served("after a refused unknown SNI name").await;

    for (name, der) in [
        ("other.test", fixture.certs.other_der()),
        ("localhost", fixture.certs.server_der()),
    ] {
        let (tls, shown) = connect_with_sni(fixture.addr, name).await;
        assert_eq!(&shown, der, "{name} gets its own certificate");
        let url = format!("wss://{name}:{}/known", fixture.addr.port());
        let (mut ws, _) = ws_handshake(tls, &url, &[]).await;
        assert_echo(&mut ws, Message::text(format!("served as {name}"))).await;
        close(ws).await;
    }
    fixture.others_are_served("after the known names").await;
    fixture.stop().await;
}

/// With `unknown_sni = "refuse"`, a client that sends no SNI at all is
/// refused too, as nginx and HAProxy do: it is what a scanner connecting
/// by IP address sends, and rustls (like browsers) sends no SNI for an IP
/// address. Refused even though the default certificate holds the
/// address 127.0.0.1, and even with a name the listener holds when SNI is
/// turned off: without SNI there is no name to match. Same alert, a
/// debug line, and others are served.
#[tokio::test]
async fn with_unknown_sni_refuse_a_client_without_sni_is_refused_too() {
    let mut fixture = Fixture::start_with(LONG_HANDSHAKE_TIMEOUT, REFUSE_UNKNOWN_SNI).await;
    assert_refused_with_access_denied(fixture.addr, "127.0.0.1", true).await;
    assert_refused_with_access_denied(fixture.addr, "localhost", false).await;

    let client = refused_with_one_alert(&fixture, fixture.certs.client_config(), "127.0.0.1").await;
    fixture.debug_line(client, "no SNI: handshake refused").await;
    fixture.debug_line(client, "TLS handshake failed").await;
    fixture.others_are_served("after a client without SNI").await;
    fixture.stop().await;
}

/// A browser closing a wss tab sends no TLS close_notify: its TCP
/// connection just ends. That is the client ending the tunnel, not an
/// error, whether a WebSocket close handshake came first or not.
#[tokio::test]
async fn a_tls_client_gone_without_close_notify_ends_the_tunnel_as_the_client() {
    let certs = TestCerts::generate();
    let echo = Backend::echo().await;
    let toml = config(echo.addr, Some(&certs)).replace("[global]\n", "[global]\nlog_format = \"json\"\n");
    let wsgate = WsgateChild::start(&toml, &["tls"], "info", None).await;
    let addr = wsgate.addr("tls");

    // One closes the WebSocket first (as a closing tab does), one does not.
    let mut clients = Vec::new();
    for with_close_frame in [true, false] {
        let (mut ws, _) = wss_connect(addr, "localhost", "/", &certs).await;
        assert_echo(&mut ws, Message::text("hello")).await;
        let port = ws.get_ref().get_ref().0.local_addr().expect("local addr").port();
        if with_close_frame {
            send(&mut ws, close_message(1001, "")).await;
            assert!(matches!(next_message(&mut ws).await, Message::Close(_)));
        }
        // Dropped: the TCP connection ends with no close_notify before it.
        drop(ws);
        clients.push(format!("127.0.0.1:{port}"));
    }
    for client in clients {
        let closed = wsgate
            .wait_for_log("the tunnel closed line", |line| {
                line["message"] == "tunnel closed" && line["client"] == client.as_str()
            })
            .await;
        assert_eq!(closed["ended_by"], "client", "{closed}");
        assert!(closed.get("error").is_none(), "{closed}");
    }
    wsgate.stop().await;
}
