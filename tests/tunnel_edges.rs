//! Edges of the tunnel and of the HTTP layer: half-close, oversized request
//! heads, and the certificate a client without SNI gets.

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_half_close_passes_through_and_the_other_direction_keeps_flowing() {
    // A backend past its handshake, read to the client's end of stream,
    // then answering `received N bytes` and closing.
    let mut backend = RawBackend::start(false, None).await;
    let proxy = start_proxy(&config(backend.addr, None)).await;
    let mut conn = RawConn::new(tcp_connect(proxy.addr("plain")).await);
    conn.send(valid_upgrade("localhost", "/", &[]).as_bytes()).await;
    assert_eq!(conn.read_head().await.status, 101);
    let mut tunnel = backend.next_conn().await;

    conn.send(b"tunnel bytes").await;
    within("client half-close", conn.stream.shutdown()).await.unwrap();
    let mut received = Vec::new();
    within(
        "the backend reading the tunnel to its end",
        tunnel.read_to_end(&mut received),
    )
    .await
    .unwrap();
    assert_eq!(received, b"tunnel bytes");
    let answer = format!("received {} bytes", received.len());
    within("the backend answering", tunnel.write_all(answer.as_bytes()))
        .await
        .unwrap();
    within("the backend closing", tunnel.shutdown()).await.unwrap();
    // The backend answers only after it saw the client's end of stream, so
    // this reply proves both: the FIN was passed on, and the backend-to-client
    // direction stayed open after it.
    assert_eq!(conn.read_to_end().await, b"received 12 bytes");
    drop(tunnel);
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
