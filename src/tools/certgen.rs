//! Development certificates for trying wsgate over TLS.
//!
//! The quick start needs `wss://` to work on a fresh machine without a real
//! certificate authority. This module makes a throwaway CA and a server
//! certificate signed by it; clients trust the CA file alone, so nothing has to
//! be added to the system trust store. The CA's private key is never kept,
//! which limits the damage if the CA file is trusted somewhere by mistake: it
//! cannot sign anything else.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// File name of the CA certificate written next to the server certificate.
pub const CA_FILE: &str = "dev-ca.pem";

/// Words put in every subject so nobody mistakes these for real certificates.
const NOT_FOR_PRODUCTION: &str = "wsgate development certificate - NOT FOR PRODUCTION";

/// A development CA certificate and a server certificate with its key, all PEM.
#[derive(Debug, Clone)]
pub struct DevCertificate {
    /// The CA certificate clients should trust (its key is already gone).
    pub ca_pem: String,
    /// The server certificate, signed by the CA.
    pub cert_pem: String,
    /// The server's private key, PKCS#8.
    pub key_pem: String,
}

/// Why development certificates could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CertGenError {
    #[error("at least one name (DNS name or IP address) is needed for the certificate")]
    NoNames,
    #[error("invalid file base name {0:?}: it must be a plain file name without '/' or '..'")]
    InvalidBase(String),
    #[error("{} already exists; pass --force to overwrite it", .0.display())]
    Exists(PathBuf),
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A throwaway CA and a server certificate for `names` (DNS names or IP addresses) signed by it.
/// The CA's private key is discarded, so the CA can never sign anything else.
///
/// With no names the certificate has no subject alternative names, so no client accepts it;
/// [`write()`] refuses that case.
pub fn generate(names: &[String]) -> Result<DevCertificate, rcgen::Error> {
    let ca = {
        let mut params = CertificateParams::default();
        params.distinguished_name = dev_name("wsgate development CA - NOT FOR PRODUCTION");
        set_validity(&mut params);
        // Constrained(0): even if the CA key leaked, it could not create intermediates.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        CertifiedIssuer::self_signed(params, KeyPair::generate()?)?
    };

    // `new` turns names that parse as IP addresses into IP SANs, the rest into DNS SANs.
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = dev_name(NOT_FOR_PRODUCTION);
    set_validity(&mut params);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    Ok(DevCertificate {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
    // `ca` (with its key) is dropped here.
}

/// Writes `<dir>/dev-ca.pem`, `<dir>/<base>.pem`, `<dir>/<base>-key.pem` (key file mode 0600),
/// refusing to overwrite existing files unless `force`. Returns the paths written.
pub fn write(dir: &Path, base: &str, names: &[String], force: bool) -> Result<Vec<PathBuf>, CertGenError> {
    if names.is_empty() {
        return Err(CertGenError::NoNames);
    }
    if base.is_empty() || base.contains(['/', '\\']) || base == "." || base == ".." {
        return Err(CertGenError::InvalidBase(base.to_owned()));
    }
    let ca_path = dir.join(CA_FILE);
    let cert_path = dir.join(format!("{base}.pem"));
    let key_path = dir.join(format!("{base}-key.pem"));
    if cert_path == ca_path {
        return Err(CertGenError::InvalidBase(base.to_owned()));
    }

    // Check everything first so a refusal leaves no half-written set behind.
    if !force {
        for path in [&ca_path, &cert_path, &key_path] {
            if path.exists() {
                return Err(CertGenError::Exists(path.clone()));
            }
        }
    }
    let generated = generate(names)?;
    fs::create_dir_all(dir).map_err(|source| CertGenError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_file(&ca_path, &generated.ca_pem, force, false)?;
    write_file(&cert_path, &generated.cert_pem, force, false)?;
    write_file(&key_path, &generated.key_pem, force, true)?;
    Ok(vec![ca_path, cert_path, key_path])
}

fn dev_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, NOT_FOR_PRODUCTION);
    name.push(DnType::CommonName, common_name);
    name
}

/// Long validity because the quick-start certificate is committed and must keep working.
fn set_validity(params: &mut CertificateParams) {
    params.not_before = date_time_ymd(2025, 1, 1);
    params.not_after = date_time_ymd(2099, 12, 31);
}

/// Writes one file; `private` files get mode 0600 before any byte is written.
fn write_file(path: &Path, contents: &str, force: bool, private: bool) -> Result<(), CertGenError> {
    let io_err = |source| CertGenError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        // create_new closes the race between the existence check and the write.
        options.create_new(true);
    }
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            CertGenError::Exists(path.to_path_buf())
        } else {
            io_err(source)
        }
    })?;
    // `mode` only applies to new files; an overwritten key file may have been readable.
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    file.write_all(contents.as_bytes()).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::RootCertStore;
    use std::sync::Arc;

    fn names() -> Vec<String> {
        ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn verifier(ca_pem: &str) -> Arc<WebPkiServerVerifier> {
        let mut roots = RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM");
        roots.add(ca).expect("CA accepted as root");
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(rustls::crypto::ring::default_provider()))
            .build()
            .expect("verifier")
    }

    #[test]
    fn certificate_verifies_against_ca_for_every_name() {
        let dev = generate(&names()).expect("generate");
        let verifier = verifier(&dev.ca_pem);
        let cert = CertificateDer::from_pem_slice(dev.cert_pem.as_bytes()).expect("cert PEM");
        for name in ["localhost", "127.0.0.1", "::1"] {
            let server_name = ServerName::try_from(name).expect("server name");
            verifier
                .verify_server_cert(&cert, &[], &server_name, &[], UnixTime::now())
                .unwrap_or_else(|e| panic!("{name} should verify: {e}"));
        }
        let other = ServerName::try_from("example.com").expect("server name");
        assert!(verifier
            .verify_server_cert(&cert, &[], &other, &[], UnixTime::now())
            .is_err());
    }

    #[test]
    fn certificate_does_not_verify_against_another_ca() {
        let one = generate(&names()).expect("generate");
        let two = generate(&names()).expect("generate");
        let cert = CertificateDer::from_pem_slice(one.cert_pem.as_bytes()).expect("cert PEM");
        let server_name = ServerName::try_from("localhost").expect("server name");
        assert!(verifier(&two.ca_pem)
            .verify_server_cert(&cert, &[], &server_name, &[], UnixTime::now())
            .is_err());
    }

    #[test]
    fn key_matches_certificate() {
        let dev = generate(&names()).expect("generate");
        let cert = CertificateDer::from_pem_slice(dev.cert_pem.as_bytes()).expect("cert PEM");
        let key = PrivateKeyDer::from_pem_slice(dev.key_pem.as_bytes()).expect("key PEM");
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).expect("key type");
        rustls::sign::CertifiedKey::new(vec![cert], signing_key)
            .keys_match()
            .expect("key matches certificate");
    }

    #[test]
    fn write_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = write(dir.path(), "localhost", &names(), false).expect("first write");
        assert_eq!(written.len(), 3);
        let before = fs::read_to_string(&written[1]).expect("read cert");
        match write(dir.path(), "localhost", &names(), false) {
            Err(CertGenError::Exists(_)) => {}
            other => panic!("expected Exists, got {other:?}"),
        }
        assert_eq!(fs::read_to_string(&written[1]).expect("read"), before);
        write(dir.path(), "localhost", &names(), true).expect("forced write");
        assert_ne!(fs::read_to_string(&written[1]).expect("read"), before);
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_private_even_when_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let key_path = dir.path().join("localhost-key.pem");
        fs::write(&key_path, "old").expect("write");
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).expect("chmod");
        write(dir.path(), "localhost", &names(), true).expect("write");
        let mode = fs::metadata(&key_path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn write_rejects_bad_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            write(dir.path(), "localhost", &[], false),
            Err(CertGenError::NoNames)
        ));
        for base in ["", "../x", "a/b", "..", "dev-ca"] {
            assert!(
                matches!(
                    write(dir.path(), base, &names(), false),
                    Err(CertGenError::InvalidBase(_))
                ),
                "{base:?}"
            );
        }
    }
}
