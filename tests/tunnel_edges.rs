//! Edges of the tunnel and of the HTTP layer: half-close, oversized request
//! heads, and the certificate a client without SNI gets.

mod support;

use std::net::SocketAddr;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// A raw backend for one tunnel: it answers the handshake with a correct 101,
/// reads the tunnel until the client's side ends (EOF), then sends
/// `received N bytes` and closes. Returns its address and the task.
async fn half_close_backend() -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "handshake cut short");
            head.push(byte[0]);
            assert!(head.len() < 16 * 1024, "handshake too long");
        }
        let text = String::from_utf8(head).unwrap();
        let key = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("sec-websocket-key: ")
                    .or_else(|| l.strip_prefix("Sec-WebSocket-Key: "))
            })
            .expect("the handshake carries the key");
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.trim().as_bytes())
        );
        stream.write_all(answer.as_bytes()).await.unwrap();
        let mut tunnel = Vec::new();
        stream.read_to_end(&mut tunnel).await.unwrap();
        stream
            .write_all(format!("received {} bytes", tunnel.len()).as_bytes())
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        tunnel
    });
    (addr, task)
}

#[tokio::test]
async fn a_half_close_passes_through_and_the_other_direction_keeps_flowing() {
    let (backend, backend_task) = half_close_backend().await;
    let proxy = start_proxy(&config(backend, None)).await;
    let mut conn = RawConn::new(tcp_connect(proxy.addr("plain")).await);
    conn.send(valid_upgrade("localhost", "/", &[]).as_bytes()).await;
    assert_eq!(conn.read_head().await.status, 101);

    conn.send(b"tunnel bytes").await;
    within("client half-close", conn.stream.shutdown()).await.unwrap();
    // The backend answers only after it saw the client's end of stream, so
    // this reply proves both: the FIN was passed on, and the backend-to-client
    // direction stayed open after it.
    assert_eq!(conn.read_to_end().await, b"received 12 bytes");
    assert_eq!(within("backend task", backend_task).await.unwrap(), b"tunnel bytes");
    proxy.stop().await;
}

#[tokio::test]
async fn an_oversized_request_head_gets_431_and_never_reaches_the_backend() {
    let backend = Backend::echo().await;
    let toml = config(backend.addr, None).replace("[global]\n", "[global]\nmax_request_header_size = \"64KiB\"\n");
    let proxy = start_proxy(&toml).await;
    let huge = "a".repeat(100 * 1024);
    let request = valid_upgrade("localhost", "/", &[("X-Huge", &huge)]);
    let response = raw_exchange(proxy.addr("plain"), &request).await;
    assert_eq!(response.status, 431);
    assert_eq!(backend.accepts(), 0);
    // Just under the limit is fine.
    let fits = valid_upgrade("localhost", "/", &[("X-Big", &"a".repeat(60 * 1024))]);
    let mut conn = RawConn::new(tcp_connect(proxy.addr("plain")).await);
    conn.send(fits.as_bytes()).await;
    assert_eq!(conn.read_head().await.status, 101);
    drop(conn);
    proxy.stop().await;
}

/// Two certificates; a client that sends no SNI (it connects by IP address,
/// for which TLS sends none) gets the first one listed.
async fn certificate_without_sni(certs: &TestCerts, server_first: bool) -> Result<(), std::io::Error> {
    let backend = Backend::echo().await;
    let server = tls_entry(&certs.server_cert(), &certs.server_key());
    let other = tls_entry(&certs.other_cert(), &certs.other_key());
    let (first, second) = if server_first { (server, other) } else { (other, server) };
    let toml = format!(
        "[[listener]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\n{first}{second}\n{}",
        route_and_upstream(backend.addr, "")
    );
    let proxy = start_proxy(&toml).await;
    let tcp = tcp_connect(proxy.addr("tls")).await;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let result = within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(certs.client_config()).connect(name, tcp),
    )
    .await;
    if let Ok(stream) = &result {
        assert_eq!(stream.get_ref().1.peer_certificates().unwrap()[0], *certs.server_der());
    }
    proxy.stop().await;
    result.map(|_| ())
}

#[tokio::test]
async fn a_client_without_sni_gets_the_first_certificate() {
    let certs = TestCerts::generate();
    // First listed is valid for 127.0.0.1: the handshake succeeds with it.
    certificate_without_sni(&certs, true)
        .await
        .expect("default certificate");
    // First listed is for other.test only: the client rejects it, which shows
    // it was offered although a certificate valid for 127.0.0.1 was second.
    let error = certificate_without_sni(&certs, false).await.unwrap_err();
    assert!(error.to_string().contains("certificate"), "{error}");
}
