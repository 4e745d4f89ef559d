//! TLS termination: certificates loaded at config time, chosen by SNI.
//!
//! rustls with the ring provider, TLS 1.2 and 1.3 only (1.0/1.1 are broken and
//! no browser that speaks WebSocket needs them), ALPN `http/1.1` because the
//! WebSocket upgrade is an HTTP/1.1 mechanism (RFC 6455 §4.1).

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring;
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
    let signing_key =
        ring::sign::any_supported_type(&private_key).map_err(|e| key_error(format!("unsupported key type: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(Arc::new(certified)),
        Err(_) => Err(CertificateError::Mismatch {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
        }),
    }
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
pub fn server_config(certificates: Vec<Arc<CertifiedKey>>) -> Arc<ServerConfig> {
    server_config_with(certificates, UnknownSni::Default)
}

/// [`server_config`] with the listener's `unknown_sni` policy: with
/// [`UnknownSni::Refuse`], a client whose SNI matches no certificate, or
/// that sends none, is refused during the handshake instead of being shown
/// the first certificate.
pub fn server_config_with(certificates: Vec<Arc<CertifiedKey>>, unknown_sni: UnknownSni) -> Arc<ServerConfig> {
    let resolver = SniResolver {
        certificates,
        unknown_sni,
    };
    // The ring provider ships both protocol versions we ask for, so the only
    // error this builder can return cannot happen here.
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
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
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
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
