//! Which cipher suite a TLS listener settles on: AES-128-GCM for a client
//! that lists an AES-GCM suite first, whatever its order among them (the
//! cheapest key schedule on the server: SHA-256, not SHA-384), and the
//! client's own choice for one that lists ChaCha20-Poly1305 first (it lacks
//! AES hardware). Each connection is a real handshake with the running
//! proxy, then a WebSocket echoed through it; resumption works whichever
//! order a client got.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::{ClientSessionMemoryCache, ResolvesClientCert, Resumption, WebPkiServerVerifier};
use rustls::crypto::ring::cipher_suite::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::version::{TLS12, TLS13};
use rustls::{CipherSuite, HandshakeKind, SupportedCipherSuite, SupportedProtocolVersion};
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

struct Fixture {
    certs: TestCerts,
    _backend: Backend,
    proxy: ProxyHandle,
    addr: SocketAddr,
}

impl Fixture {
    async fn start() -> Fixture {
        let certs = TestCerts::generate();
        let backend = Backend::echo().await;
        let proxy = start_proxy(&config(backend.addr, Some(&certs))).await;
        let addr = proxy.addr("tls");
        Fixture {
            certs,
            _backend: backend,
            proxy,
            addr,
        }
    }

    /// A client offering `suites` in this order over `version`.
    fn client(
        &self,
        version: &'static SupportedProtocolVersion,
        suites: &[SupportedCipherSuite],
    ) -> rustls::ClientConfig {
        Arc::unwrap_or_clone(self.certs.client_config_offering(&[version], suites))
    }

    /// Connects with `client`, echoes a message through a WebSocket over
    /// the connection, and says which suite was agreed and how.
    async fn served(&self, client: rustls::ClientConfig) -> (CipherSuite, Option<HandshakeKind>) {
        let tls: TlsStream<TcpStream> = tls_connect(self.addr, "localhost", Arc::new(client)).await;
        let connection = tls.get_ref().1;
        let agreed = connection.negotiated_cipher_suite().expect("a suite").suite();
        let kind = connection.handshake_kind();
        let url = format!("wss://localhost:{}/suites", self.addr.port());
        let (mut ws, _) = ws_handshake(tls, &url, &[]).await;
        assert_echo(&mut ws, Message::text(format!("over {agreed:?}"))).await;
        close(ws).await;
        (agreed, kind)
    }
}

#[tokio::test]
async fn a_client_listing_aes_gcm_first_gets_aes_128_gcm_and_one_listing_chacha20_first_gets_chacha20() {
    let fixture = Fixture::start().await;
    let cases: [(
        &str,
        &'static SupportedProtocolVersion,
        &[SupportedCipherSuite],
        CipherSuite,
    ); 8] = [
        (
            "TLS 1.3, AES-256 first (OpenSSL's and rustls' default order)",
            &TLS13,
            &[
                TLS13_AES_256_GCM_SHA384,
                TLS13_AES_128_GCM_SHA256,
                TLS13_CHACHA20_POLY1305_SHA256,
            ],
            CipherSuite::TLS13_AES_128_GCM_SHA256,
        ),
        (
            "TLS 1.3, AES-128 first (browsers' order)",
            &TLS13,
            &[
                TLS13_AES_128_GCM_SHA256,
                TLS13_AES_256_GCM_SHA384,
                TLS13_CHACHA20_POLY1305_SHA256,
            ],
            CipherSuite::TLS13_AES_128_GCM_SHA256,
        ),
        (
            "TLS 1.3, ChaCha20 first (no AES hardware)",
            &TLS13,
            &[
                TLS13_CHACHA20_POLY1305_SHA256,
                TLS13_AES_256_GCM_SHA384,
                TLS13_AES_128_GCM_SHA256,
            ],
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS 1.3, ChaCha20 first, then AES-128",
            &TLS13,
            &[TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_128_GCM_SHA256],
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS 1.3, AES-256 only",
            &TLS13,
            &[TLS13_AES_256_GCM_SHA384],
            CipherSuite::TLS13_AES_256_GCM_SHA384,
        ),
        (
            "TLS 1.2, AES-256 first",
            &TLS12,
            &[
                TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            ],
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "TLS 1.2, ChaCha20 first",
            &TLS12,
            &[
                TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ],
            CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS 1.2, AES-256 only",
            &TLS12,
            &[TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384],
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
    ];
    for (case, version, suites, expected) in cases {
        let (agreed, _) = fixture.served(fixture.client(version, suites)).await;
        assert_eq!(agreed, expected, "{case}");
    }
    fixture.proxy.stop().await;
}

/// Sessions are resumed whichever order a client got. rustls resumes a
/// session under its own suite only (RFC 8446 §4.6.1 would allow any with
/// the same hash): a client that got ChaCha20 and then lists AES-GCM first
/// makes a full handshake once, then resumes its AES-128 session.
#[tokio::test]
async fn sessions_resume_whichever_suite_order_a_client_got() {
    let fixture = Fixture::start().await;
    // A client resumes only with the verifier and client credentials it
    // made the session with (the same `Arc`s), and the session store.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(fixture.certs.ca_pem()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let no_certificate: Arc<dyn ResolvesClientCert> = Arc::new(NoCertificate);
    let sessions = Arc::new(ClientSessionMemoryCache::new(16));
    let with_sessions = |suites: &[SupportedCipherSuite]| {
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: suites.to_vec(),
            ..(*provider).clone()
        };
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(no_certificate.clone());
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        client.resumption = Resumption::store(sessions.clone());
        client
    };
    let chacha_first = [TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_128_GCM_SHA256];
    let aes_first = [
        TLS13_AES_256_GCM_SHA384,
        TLS13_AES_128_GCM_SHA256,
        TLS13_CHACHA20_POLY1305_SHA256,
    ];
    let steps: [(&str, &[SupportedCipherSuite], CipherSuite, HandshakeKind); 4] = [
        (
            "first, ChaCha20 first",
            &chacha_first,
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            HandshakeKind::Full,
        ),
        (
            "again, ChaCha20 first",
            &chacha_first,
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            HandshakeKind::Resumed,
        ),
        (
            "then AES-GCM first: a full handshake under AES-128",
            &aes_first,
            CipherSuite::TLS13_AES_128_GCM_SHA256,
            HandshakeKind::Full,
        ),
        (
            "again, AES-GCM first",
            &aes_first,
            CipherSuite::TLS13_AES_128_GCM_SHA256,
            HandshakeKind::Resumed,
        ),
    ];
    for (step, suites, suite, kind) in steps {
        let (agreed, how) = fixture.served(with_sessions(suites)).await;
        assert_eq!((agreed, how), (suite, Some(kind)), "{step}");
    }
    fixture.proxy.stop().await;
}

/// A client without a certificate, as one `Arc` its sessions can name.
#[derive(Debug)]
struct NoCertificate;

impl ResolvesClientCert for NoCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}
