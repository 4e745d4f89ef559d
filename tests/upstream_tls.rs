//! TLS toward the backend (`wss` upstream): verified against a CA made at
//! test time, refused with 502 when the CA does not match.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use futures_util::SinkExt;
use support::*;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;

/// A TLS backend on 127.0.0.1 with the test CA's `localhost` certificate,
/// serving the demo echo backend (WebSocket echo, `/health`).
async fn tls_backend(certs: &TestCerts) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let key = wsgate::tls::load_certified_key(&certs.server_cert(), &certs.server_key()).unwrap();
    let acceptor = TlsAcceptor::from(wsgate::tls::server_config(vec![key]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    wsgate::tools::demo::serve_connection(tls).await;
                }
            });
        }
    });
    (addr, task)
}

fn proxy_config(backend: SocketAddr, ca: &Path, health_check: bool) -> String {
    let check = if health_check {
        "[upstream.health_check]\nkind = \"websocket\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n"
    } else {
        ""
    };
    format!(
        "[global]\nshutdown_timeout = \"2s\"\n\n[[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"all\"\nupstream = \"backends\"\n\n\
         [[upstream]]\nname = \"backends\"\nservers = [{{ address = \"{backend}\" }}]\n\
         tls = {{ ca = '{}', server_name = \"localhost\" }}\n{check}",
        ca.display()
    )
}

#[tokio::test]
async fn websockets_and_http_reach_a_tls_backend_verified_against_its_ca() {
    let certs = TestCerts::generate();
    let (backend, _task) = tls_backend(&certs).await;
    let proxy = start_proxy(&proxy_config(backend, &certs.ca_pem(), false)).await;

    let (mut ws, _) = ws_connect(proxy.addr("plain"), "/echo", &[]).await;
    within("send", ws.send(Message::text("over wss to the backend")))
        .await
        .unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("over wss to the backend"));
    drop(ws);

    let response = raw_exchange(proxy.addr("plain"), "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body_text(), "ok");
    proxy.stop().await;
}

#[tokio::test]
async fn a_backend_certificate_from_another_ca_is_a_502() {
    let certs = TestCerts::generate();
    let stranger = TestCerts::generate();
    let (backend, _task) = tls_backend(&certs).await;
    let proxy = start_proxy(&proxy_config(backend, &stranger.ca_pem(), false)).await;

    let upgrade = raw_exchange(proxy.addr("plain"), &valid_upgrade("localhost", "/echo", &[])).await;
    assert_eq!(upgrade.status, 502);
    let get = raw_exchange(proxy.addr("plain"), "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(get.status, 502);
    proxy.stop().await;
}

#[tokio::test]
async fn health_checks_speak_tls_to_a_tls_upstream() {
    let certs = TestCerts::generate();
    let stranger = TestCerts::generate();
    let (backend, _task) = tls_backend(&certs).await;

    let (server, names) = bind_proxy(&proxy_config(backend, &certs.ca_pem(), true)).await;
    let stats = server.stats();
    let proxy = run_proxy(server, names);
    // A websocket check over TLS passes: the server stays up through several rounds.
    let (mut ws, _) = ws_connect(proxy.addr("plain"), "/echo", &[]).await;
    within("send", ws.send(Message::text("checked"))).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("checked"));
    assert!(stats.servers("backends")[0].healthy);
    drop(ws);
    proxy.stop().await;

    // Against the wrong CA the check fails and the server goes down.
    let (server, names) = bind_proxy(&proxy_config(backend, &stranger.ca_pem(), true)).await;
    let stats = server.stats();
    let proxy = run_proxy(server, names);
    wait_until("server marked down", false, || stats.servers("backends")[0].healthy).await;
    let upgrade = raw_exchange(proxy.addr("plain"), &valid_upgrade("localhost", "/echo", &[])).await;
    assert_eq!(upgrade.status, 503, "down by its health check: 503 at once");
    proxy.stop().await;
}

#[tokio::test]
async fn an_inspected_tunnel_to_a_tls_backend_passes_frames_both_ways() {
    let certs = TestCerts::generate();
    let (backend, _task) = tls_backend(&certs).await;
    let toml = proxy_config(backend, &certs.ca_pem(), false).replace(
        "upstream = \"backends\"\n\n",
        "upstream = \"backends\"\ninspect = { enabled = true }\n\n",
    );
    assert!(toml.contains("inspect"), "{toml}");
    let proxy = start_proxy(&toml).await;
    // Sizes across the 7-bit, 16-bit and 64-bit length forms.
    let (mut ws, _) = ws_connect(proxy.addr("plain"), "/echo", &[]).await;
    for size in [5usize, 125, 126, 70_000, 1 << 20] {
        let message = Message::binary(vec![size as u8; size]);
        within("send", ws.send(message.clone())).await.unwrap();
        assert_eq!(next_message(&mut ws).await, message, "{size} bytes");
    }
    within("close", ws.close(None)).await.unwrap();
    proxy.stop().await;
}
