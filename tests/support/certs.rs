//! A test CA and server certificates signed by it, as PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

/// A test CA and two server certificates it signed, as PEM files in a temp dir:
/// `server` for localhost, 127.0.0.1 and ::1; `other` for other.test.
pub struct TestCerts {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    server: CertificateDer<'static>,
    other: CertificateDer<'static>,
}

impl TestCerts {
    pub fn generate() -> TestCerts {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "wsgate test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();

        let issue = |stem: &str, names: &[&str]| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            params.distinguished_name.push(DnType::CommonName, names[0]);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let cert = params.signed_by(&key, &*ca).unwrap();
            std::fs::write(dir.path().join(format!("{stem}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{stem}-key.pem")), key.serialize_pem()).unwrap();
            cert.der().clone()
        };
        let server = issue("server", &["localhost", "127.0.0.1", "::1"]);
        let other = issue("other", &["other.test"]);
        TestCerts {
            ca: ca.der().clone(),
            server,
            other,
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn ca_pem(&self) -> PathBuf {
        self.dir().join("ca.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir().join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir().join("server-key.pem")
    }
    pub fn other_cert(&self) -> PathBuf {
        self.dir().join("other.pem")
    }
    pub fn other_key(&self) -> PathBuf {
        self.dir().join("other-key.pem")
    }
    pub fn server_der(&self) -> &CertificateDer<'static> {
        &self.server
    }
    pub fn other_der(&self) -> &CertificateDer<'static> {
        &self.other
    }

    /// A client configuration trusting only the test CA, offering ALPN http/1.1.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client_config_with(rustls::DEFAULT_VERSIONS)
    }

    pub fn client_config_with(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        self.client_config_offering(versions, rustls::crypto::ring::DEFAULT_CIPHER_SUITES)
    }

    /// As [`TestCerts::client_config_with`], offering `suites` in this order.
    pub fn client_config_offering(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        suites: &[rustls::SupportedCipherSuite],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: suites.to_vec(),
            ..rustls::crypto::ring::default_provider()
        };
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}
