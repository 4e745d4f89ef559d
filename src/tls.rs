//! TLS termination: certificates loaded at config time, chosen by SNI.
//!
//! rustls with the ring provider (aws-lc-rs with the `aws-lc` feature:
//! [`provider`]), TLS 1.2 and 1.3 only (1.0/1.1 are broken and no browser
//! that speaks WebSocket needs them), ALPN `http/1.1` because the WebSocket
//! upgrade is an HTTP/1.1 mechanism (RFC 6455 §4.1).

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Why a certificate and key pair could not be used; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot read certificate {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("cannot read private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the private key {key} does not belong to the certificate {cert}")]
    Mismatch { cert: String, key: String },
}

/// Loads a PEM certificate chain and its private key (PKCS#8, RSA or EC) and
/// checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CertificateError> {
    let cert_error = |reason: String| CertificateError::Certificate {
        path: cert.display().to_string(),
        reason,
    };
    let key_error = |reason: String| CertificateError::Key {
        path: key.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(pem_reason(e)))?;
    if chain.is_empty() {
        return Err(cert_error("no PEM certificate (BEGIN CERTIFICATE) in the file".into()));
    }
    webpki::EndEntityCert::try_from(&chain[0])
        .map_err(|e| cert_error(format!("not a valid X.509 certificate: {e}")))?;
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| key_error(pem_reason(e)))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(private_key)
        .map_err(|e| key_error(format!("unsupported key type: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(Arc::new(certified)),
        Err(_) => Err(CertificateError::Mismatch {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
        }),
    }
}

/// The cryptography behind every TLS connection wsgate accepts or makes:
/// ring, or aws-lc-rs in a build with the `aws-lc` feature. ring stays the
/// default: aws-lc-rs did not make handshakes clearly cheaper (docs/performance.md,
/// "TLS provider: ring or aws-lc-rs").
pub fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc")]
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(not(feature = "aws-lc"))]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

/// Names [`provider`] as the process's default, for the libraries that build
/// their own rustls configuration from it (redis, for `rediss://`): rustls
/// cannot choose one itself in a build that has two (ring and aws-lc-rs).
pub fn install_default_provider() {
    // An error only says a default is already installed: ours, by an earlier call.
    let _ = CryptoProvider::install_default(Arc::unwrap_or_clone(provider()));
}

fn pem_reason(error: rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match error {
        Error::Io(e) => e.to_string(),
        Error::NoItemsFound => "no PEM section of the expected kind in the file".into(),
        other => format!("not valid PEM: {other:?}"),
    }
}

/// What a TLS listener does with a client whose SNI names a host none of its
/// certificates is valid for, or that sends no SNI at all (`tls.unknown_sni`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSni {
    /// Show it the first certificate listed: the handshake goes on, and the
    /// client decides whether it trusts a certificate for another name.
    #[default]
    Default,
    /// Refuse the handshake: rustls answers the ClientHello with a fatal
    /// `access_denied` alert (49) and no certificate is shown, so a scanner
    /// that does not already know a name served here (or that connects by
    /// address: no SNI is refused too) is shown none of the names.
    Refuse,
}

/// The rustls server configuration for a listener with these certificates;
/// the first is the default for clients that send no SNI or an unknown name.
/// It chooses AES-GCM as [`ServerTls`] does for a client with AES hardware.
pub fn server_config(certificates: Vec<Arc<CertifiedKey>>) -> Arc<ServerConfig> {
    ServerTls::new(certificates, UnknownSni::Default, false).aes_first
}

/// A TLS listener's configuration, in two orders of cipher suites that
/// differ only in who chooses, one picked for each ClientHello
/// ([`ServerTls::for_hello`]):
///
/// - **AES-GCM first, AES-128 before AES-256**, whatever order the client
///   lists them in, for a client that lists an AES-GCM suite before
///   ChaCha20-Poly1305 (it has AES hardware). AES-128-GCM is the suite
///   browsers ask for first; many other clients (OpenSSL's and rustls'
///   defaults) ask for AES-256-GCM with SHA-384 first, whose key schedule
///   costs the server most: ring's SHA-512 has vector code for Intel CPUs
///   only (on the benchmark machine, an AMD EPYC, SHA-384 was 6% of a TLS
///   handshake's CPU, SHA-256 on its SHA extensions under 1%), and AES-256
///   takes 14 rounds to AES-128's 10.
///   Both are sound choices (Go's crypto/tls and Caddy prefer AES-128-GCM
///   too; docs/performance.md, "TLS: AES-128-GCM preferred").
/// - **The client's order**, for a client that lists ChaCha20-Poly1305
///   first: it says it lacks AES hardware, where AES in software is slower
///   and may not run in constant time (Go's rule as well).
///
/// Both keep their sessions in one cache (256 sessions, rustls' default),
/// as a single configuration did.
#[derive(Debug)]
pub struct ServerTls {
    aes_first: Arc<ServerConfig>,
    clients_order: Arc<ServerConfig>,
}

impl ServerTls {
    /// With the listener's `unknown_sni` policy: with
    /// [`UnknownSni::Refuse`], a client whose SNI matches no certificate, or
    /// that sends none, is refused during the handshake instead of being shown
    /// the first certificate. With `http2`, ALPN offers `h2` first (RFC 9113
    /// §3.2: a TLS client speaks HTTP/2 only when ALPN chose it), then
    /// `http/1.1`; a client that offers neither is served HTTP/1.1.
    pub fn new(certificates: Vec<Arc<CertifiedKey>>, unknown_sni: UnknownSni, http2: bool) -> ServerTls {
        let resolver: Arc<dyn ResolvesServerCert> = Arc::new(SniResolver {
            certificates,
            unknown_sni,
        });
        let build = |provider: CryptoProvider| {
            // Both providers ship both protocol versions we ask for, so the only
            // error this builder can return cannot happen here.
            let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .expect("the provider supports TLS 1.2 and 1.3")
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
            config.alpn_protocols = match http2 {
                true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                false => vec![b"http/1.1".to_vec()],
            };
            config
        };
        let clients_order = build(Arc::unwrap_or_clone(provider()));
        let mut aes_first = Arc::unwrap_or_clone(provider());
        // Stable: each protocol version's suites keep their order within a rank.
        aes_first
            .cipher_suites
            .sort_by_key(|suite| match Aead::of(suite.suite()) {
                Some(Aead::Aes128Gcm) => 0,
                Some(Aead::Aes256Gcm) => 1,
                Some(Aead::ChaCha20Poly1305) | None => 2,
            });
        let mut aes_first = build(aes_first);
        aes_first.ignore_client_order = true;
        aes_first.session_storage = clients_order.session_storage.clone();
        aes_first.ticketer = clients_order.ticketer.clone();
        ServerTls {
            aes_first: Arc::new(aes_first),
            clients_order: Arc::new(clients_order),
        }
    }

    /// The configuration for this ClientHello: AES-GCM first, unless the
    /// first of the AEADs the client lists is ChaCha20-Poly1305.
    pub fn for_hello(&self, hello: &ClientHello<'_>) -> Arc<ServerConfig> {
        let first = hello.cipher_suites().iter().find_map(|&suite| Aead::of(suite));
        match first {
            Some(Aead::ChaCha20Poly1305) => self.clients_order.clone(),
            _ => self.aes_first.clone(),
        }
    }
}

/// The record protection of a cipher suite, TLS 1.3's or TLS 1.2's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aead {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl Aead {
    fn of(suite: rustls::CipherSuite) -> Option<Aead> {
        use rustls::CipherSuite as S;
        match suite {
            S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Some(Aead::Aes128Gcm),
            S::TLS13_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(Aead::Aes256Gcm),
            S::TLS13_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(Aead::ChaCha20Poly1305),
            _ => None,
        }
    }
}

/// Picks the first certificate valid for the client's SNI name (wildcards
/// included, as a browser would judge them); when none is, or the client
/// sent no SNI, the first one, or none (rustls then refuses the handshake
/// with an `access_denied` alert) when the policy is [`UnknownSni::Refuse`].
#[derive(Debug)]
struct SniResolver {
    certificates: Vec<Arc<CertifiedKey>>,
    unknown_sni: UnknownSni,
}

impl SniResolver {
    /// The certificate for a client whose SNI names none (or that sent none).
    fn fallback(&self) -> Option<Arc<CertifiedKey>> {
        match self.unknown_sni {
            UnknownSni::Default => self.certificates.first().cloned(),
            UnknownSni::Refuse => None,
        }
    }

    /// What the debug line says happens next.
    fn outcome(&self) -> &'static str {
        match self.unknown_sni {
            UnknownSni::Default => "the default certificate",
            UnknownSni::Refuse => "handshake refused",
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else {
            if self.unknown_sni == UnknownSni::Refuse {
                tracing::debug!("no SNI: handshake refused");
            }
            return self.fallback();
        };
        let Ok(name) = ServerName::try_from(sni) else {
            tracing::debug!(sni, "SNI is not a valid name: {}", self.outcome());
            return self.fallback();
        };
        let found = self.certificates.iter().find(|certified| {
            certified.end_entity_cert().ok().is_some_and(|der| {
                webpki::EndEntityCert::try_from(der)
                    .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
            })
        });
        match found {
            Some(certified) => Some(certified.clone()),
            None => {
                tracing::debug!(sni, "no certificate for the SNI name: {}", self.outcome());
                self.fallback()
            }
        }
    }
}

/// A fatal `protocol_version` alert (RFC 8446 §6.2, description 70) in a
/// record a TLS 1.0 client can read: what a ClientHello offering only
/// versions below 1.2 gets.
pub const PROTOCOL_VERSION_ALERT: [u8; 7] = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 70];

/// Refuses a ClientHello that offers only TLS 1.1 or older with the
/// `protocol_version` alert, which is what it is owed (RFC 8446 §4.2.1,
/// RFC 5246 appendix E.1). rustls alone answers such a hello with
/// `handshake_failure` when it lacks `signature_algorithms` (a TLS 1.2
/// extension that the clients of that era never send), which tells the
/// client nothing about why. Anything else, garbage included, is left
/// unread for rustls.
///
/// The hello is peeked, not read, and only its first bytes until its
/// version is known: a TLS 1.2 or 1.3 hello (`legacy_version` 0x0303) is
/// handed on after 11 bytes. Bounded by the caller's handshake timeout.
pub async fn refuse_legacy_versions(stream: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};

    let mut peeked = vec![0u8; LEGACY_VERSION_END];
    let mut seen = 0;
    let version = loop {
        let ready = stream.ready(Interest::READABLE).await?;
        let closed = ready.is_read_closed();
        let result = stream.try_io(Interest::READABLE, || {
            let n = peek(stream, &mut peeked)?;
            // Nothing new yet: wait for the next bytes, not in a busy loop.
            if n != 0 && n == seen && !closed {
                return Err(ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let n = match result {
            Ok(n) => n,
            Err(error) if error.kind() == ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        };
        if n == 0 || n == seen {
            // The client stopped sending: rustls says what it says.
            return Ok(());
        }
        seen = n;
        match offered_versions(&peeked[..n]) {
            Offered::NeedMore(wanted) => peeked.resize(wanted.max(peeked.len()), 0),
            Offered::Current => return Ok(()),
            Offered::LegacyOnly(version) => break version,
        }
    };
    // Read what was peeked, so that closing does not reset the connection
    // (unread bytes would) and the alert arrives.
    stream.read_exact(&mut peeked[..seen]).await?;
    stream.write_all(&PROTOCOL_VERSION_ALERT).await?;
    let _ = stream.shutdown().await;
    let name = match version {
        0x0300 => "SSL 3.0".to_owned(),
        0x0301 => "TLS 1.0".to_owned(),
        0x0302 => "TLS 1.1".to_owned(),
        other => format!("version {other:#06x}"),
    };
    Err(Error::other(format!(
        "the client offers only {name}: refused with a protocol_version alert"
    )))
}

/// Where a ClientHello's `legacy_version` ends: record header (5),
/// handshake type and length (4), version (2).
const LEGACY_VERSION_END: usize = 11;
/// The largest TLS record fragment (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;
const TLS12: u16 = 0x0303;
const TLS13: u16 = 0x0304;

/// What the start of a connection offers, as far as its bytes tell.
#[derive(Debug, PartialEq, Eq)]
enum Offered {
    /// This many bytes are needed to tell.
    NeedMore(usize),
    /// TLS 1.2 or 1.3, or not a ClientHello wsgate can read: for rustls.
    Current,
    /// Only versions below TLS 1.2; the hello's `legacy_version`.
    LegacyOnly(u16),
}

/// Reads the versions a ClientHello offers: its `legacy_version` and, when
/// that is below TLS 1.2, its `supported_versions` extension (RFC 8446
/// §4.2.1: a client that offers 1.3 lists it there). A hello split over
/// several records, or malformed, is left to rustls.
fn offered_versions(bytes: &[u8]) -> Offered {
    const HANDSHAKE: u8 = 22;
    const CLIENT_HELLO: u8 = 1;
    const SUPPORTED_VERSIONS: u16 = 43;
    if bytes.first().is_some_and(|&kind| kind != HANDSHAKE) || bytes.get(5).is_some_and(|&kind| kind != CLIENT_HELLO) {
        return Offered::Current;
    }
    if bytes.len() < LEGACY_VERSION_END {
        return Offered::NeedMore(LEGACY_VERSION_END);
    }
    let version = u16::from_be_bytes([bytes[9], bytes[10]]);
    if version >= TLS12 {
        return Offered::Current;
    }
    let record = 5 + usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
    let hello_end = 9 + (usize::from(bytes[6]) << 16 | usize::from(bytes[7]) << 8 | usize::from(bytes[8]));
    if record > 5 + MAX_RECORD || hello_end > record {
        return Offered::Current;
    }
    if bytes.len() < record {
        return Offered::NeedMore(record);
    }
    let mut hello = Reader(&bytes[LEGACY_VERSION_END..hello_end]);
    let extensions = (|| {
        hello.take(32)?; // random
        let session_id = usize::from(hello.u8()?);
        hello.take(session_id)?;
        let suites = usize::from(hello.u16()?);
        hello.take(suites)?;
        let compression = usize::from(hello.u8()?);
        hello.take(compression)?;
        if hello.0.is_empty() {
            return Some(Reader(&[]));
        }
        let length = usize::from(hello.u16()?);
        hello.take(length).map(Reader)
    })();
    let Some(mut extensions) = extensions else {
        return Offered::Current;
    };
    while !extensions.0.is_empty() {
        let (Some(kind), Some(length)) = (extensions.u16(), extensions.u16()) else {
            return Offered::Current;
        };
        let Some(data) = extensions.take(usize::from(length)) else {
            return Offered::Current;
        };
        if kind == SUPPORTED_VERSIONS {
            let listed = data.get(1..).unwrap_or_default();
            let current = listed
                .chunks_exact(2)
                .any(|v| matches!(u16::from_be_bytes([v[0], v[1]]), TLS12 | TLS13));
            return if current {
                Offered::Current
            } else {
                Offered::LegacyOnly(version)
            };
        }
    }
    Offered::LegacyOnly(version)
}

/// Big-endian fields off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(taken)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Copies the bytes waiting on `stream` into `into` without reading them.
fn peek(stream: &tokio::net::TcpStream, into: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `u8` and `MaybeUninit<u8>` have the same layout, and the
    // bytes are initialised already; recv(2) only writes bytes into them.
    let into = unsafe { &mut *(into as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
    socket2::SockRef::from(stream).peek(into)
}

/// TLS toward an upstream's servers (`wss` to the backend): the client
/// configuration, built when the configuration is loaded, and the name
/// certificates are checked against.
#[derive(Clone)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    /// `tls.server_name`; without it, each server's configured host.
    pub server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl UpstreamTls {
    /// Trusts the certificates of the PEM file `ca`, or without it the
    /// system's roots; TLS 1.2 and 1.3, ALPN `http/1.1`.
    pub fn new(ca: Option<&Path>, server_name: Option<&str>) -> Result<UpstreamTls, String> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("cannot read CA file {}: {}", path.display(), pem_reason(e)))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("cannot read CA file {}: {}", path.display(), pem_reason(e)))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!("no usable CA certificate in {}", path.display()));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err("no CA certificates found on this system; set tls.ca".into());
                }
            }
        }
        let server_name = server_name
            .map(|name| {
                ServerName::try_from(name.to_string())
                    .map_err(|_| format!("{name:?} is not a valid TLS server name (a DNS name or an IP address)"))
            })
            .transpose()?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(UpstreamTls {
            config: Arc::new(config),
            server_name,
        })
    }

    /// The name a server's certificate must carry: `tls.server_name`, or the
    /// host of the server as configured (`backend.internal:8443`).
    pub fn name_for(&self, configured: &str) -> Result<ServerName<'static>, String> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = configured
            .rsplit_once(':')
            .map_or(configured, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        ServerName::try_from(host.to_string()).map_err(|_| format!("{host:?} is not a valid TLS server name"))
    }

    /// The TLS handshake on a connected stream, checking the certificate
    /// against the roots and `name_for(configured)`.
    pub async fn connect<S>(&self, stream: S, configured: &str) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let name = self.name_for(configured).map_err(std::io::Error::other)?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello record: `version`, no session id, one suite, `extensions`.
    fn hello(version: u16, extensions: &[u8]) -> Vec<u8> {
        let mut body = version.to_be_bytes().to_vec();
        body.extend_from_slice(&[0; 32]);
        body.extend_from_slice(&[0, 0, 2, 0x00, 0x2f, 1, 0]);
        if !extensions.is_empty() {
            body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
            body.extend_from_slice(extensions);
        }
        let mut handshake = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
        handshake.extend_from_slice(&body);
        let mut record = vec![22, 3, 1];
        record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
        record.extend_from_slice(&handshake);
        record
    }

    #[test]
    fn only_hellos_below_tls_1_2_without_a_current_supported_version_are_legacy() {
        assert_eq!(offered_versions(&hello(0x0301, &[])), Offered::LegacyOnly(0x0301));
        assert_eq!(
            offered_versions(&hello(0x0302, &[0, 13, 0, 2, 0, 0])),
            Offered::LegacyOnly(0x0302)
        );
        assert_eq!(offered_versions(&hello(0x0303, &[])), Offered::Current);
        // supported_versions listing TLS 1.3 (and a GREASE value) wins over legacy_version.
        assert_eq!(
            offered_versions(&hello(0x0301, &[0, 43, 0, 5, 4, 0x0a, 0x0a, 3, 4])),
            Offered::Current
        );
        assert_eq!(
            offered_versions(&hello(0x0301, &[0, 43, 0, 3, 2, 3, 2])),
            Offered::LegacyOnly(0x0301)
        );
    }

    #[test]
    fn partial_hellos_wait_and_garbage_is_left_to_rustls() {
        let full = hello(0x0301, &[]);
        assert_eq!(offered_versions(&full[..3]), Offered::NeedMore(LEGACY_VERSION_END));
        assert_eq!(offered_versions(&full[..20]), Offered::NeedMore(full.len()));
        assert_eq!(offered_versions(b"GET / HTTP/1.1"), Offered::Current);
        assert_eq!(offered_versions(&[22, 3, 1, 0, 8, 0xde, 0xad]), Offered::Current);
        let mut truncated = full.clone();
        truncated[4] -= 10; // the record ends inside the hello
        assert_eq!(offered_versions(&truncated), Offered::Current);
    }
}
