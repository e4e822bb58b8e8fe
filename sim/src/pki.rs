//! A throw-away PKI for tests: CAs, a localhost server certificate and BOSH-style NATS client certificates.
//!
//! Client certificates carry the subject DN BOSH gives its NATS clients, written in the order
//! `C`, `O`, `CN`, so `openssl x509 -subject` prints `C = USA, O = Cloud Foundry, CN = …` and
//! nats-server's `verify_and_map` matches the auth-file user `C=USA, O=Cloud Foundry, CN=…`.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The CN of the director's NATS client certificate in a BOSH deployment.
pub const DIRECTOR_CN: &str = "default.director.bosh-internal";
/// The CN of the health monitor's NATS client certificate in a BOSH deployment.
pub const HM_CN: &str = "default.hm.bosh-internal";

/// Errors while generating or writing test certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or failed to sign.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the generated material.
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    /// Writing a PEM file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file that could not be written.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
}

impl PkiError {
    /// A short, stable label for metrics and test assertions.
    pub fn reason(&self) -> &'static str {
        match self {
            PkiError::Generate(_) => "generate",
            PkiError::Tls(_) => "tls",
            PkiError::Write { .. } => "write",
        }
    }
}

/// The BOSH NATS subject DN for a common name, exactly as the auth file lists it.
pub fn bosh_subject(cn: &str) -> String {
    format!("C=USA, O=Cloud Foundry, CN={cn}")
}

/// The CN of an agent's long-lived NATS certificate.
pub fn agent_cn(agent_id: &str) -> String {
    format!("{agent_id}.agent.bosh-internal")
}

/// The CN of an agent's bootstrap NATS certificate.
pub fn bootstrap_agent_cn(agent_id: &str) -> String {
    format!("{agent_id}.bootstrap.agent.bosh-internal")
}

fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate authority that can issue server and client certificates.
///
/// Invariant: `issuer` holds the key that signed `cert_der`, so everything it issues chains to
/// `cert_der`.
pub struct TestCa {
    name: String,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA whose subject is `O=Cloud Foundry, CN=<common_name>`.
    pub fn new(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Cloud Foundry");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(TestCa {
            name: common_name.to_owned(),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM encoded (what `director_ca_cert` points at).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A rustls root store holding only this CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        // A certificate we generated ourselves a moment ago always parses.
        roots
            .add(self.cert_der.clone())
            .expect("a freshly generated CA certificate is a valid trust anchor");
        roots
    }

    /// A server certificate valid for `127.0.0.1`, `::1` and `localhost`.
    pub fn server_cert(&self) -> Result<CertifiedKeyPem, PkiError> {
        let params = local_params("127.0.0.1", vec![ExtendedKeyUsagePurpose::ServerAuth])?;
        self.issue(params, "127.0.0.1".to_owned())
    }

    /// A NATS route certificate: valid for `127.0.0.1`, `::1` and `localhost`, for both
    /// server and client authentication (a route is dialled by one server and accepted by the
    /// other, each presenting the same certificate).
    pub fn route_cert(&self) -> Result<CertifiedKeyPem, PkiError> {
        let params = local_params(
            "nats-route",
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        self.issue(params, "O=Cloud Foundry, CN=nats-route".to_owned())
    }

    /// A client certificate whose subject DN is `C=USA, O=Cloud Foundry, CN=<cn>`.
    pub fn client_cert(&self, cn: &str) -> Result<CertifiedKeyPem, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // CountryName is a PrintableString in X.509; "USA" is three letters, which OpenSSL's
        // `req` refuses but Go's x509 (nats-server) and rustls accept.
        dn.push(
            DnType::CountryName,
            DnValue::PrintableString("USA".try_into()?),
        );
        dn.push(DnType::OrganizationName, "Cloud Foundry");
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, bosh_subject(cn))
    }

    fn issue(
        &self,
        params: CertificateParams,
        subject: String,
    ) -> Result<CertifiedKeyPem, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKeyPem {
            subject,
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
            ca_der: self.cert_der.clone(),
        })
    }

    /// A rustls client config that trusts this CA and presents no client certificate.
    pub fn client_config(&self) -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_root_certificates(self.root_store())
            .with_no_client_auth()
    }
}

/// A certificate with its private key, in PEM and DER.
///
/// Invariant: `key_*` is the key of `cert_*`, and `ca_der` is the CA that signed it.
/// The private key never appears in `Debug` output.
#[derive(Clone)]
pub struct CertifiedKeyPem {
    subject: String,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    key_der: Vec<u8>,
    ca_der: CertificateDer<'static>,
}

impl std::fmt::Debug for CertifiedKeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKeyPem")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// Paths of a certificate and key written by [`CertifiedKeyPem::write_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM PKCS#8 private key (mode 0600).
    pub key: PathBuf,
}

impl CertifiedKeyPem {
    /// For a client certificate: the subject DN as the auth file lists it
    /// (`C=USA, O=Cloud Foundry, CN=…`). For a server certificate: its CN.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The certificate, PEM encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate, DER encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The private key, PKCS#8 PEM encoded.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The private key, DER encoded, for rustls.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Writes `<stem>.crt` and `<stem>.key` into `dir`.
    pub fn write_to(&self, dir: &Path, stem: &str) -> Result<CertFiles, PkiError> {
        let files = CertFiles {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        write_file(&files.cert, self.cert_pem.as_bytes(), 0o644)?;
        write_file(&files.key, self.key_pem.as_bytes(), 0o600)?;
        Ok(files)
    }

    /// A rustls server config presenting this certificate, without client authentication.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let config = rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert_der.clone()], self.key_der())?;
        Ok(Arc::new(config))
    }

    /// A rustls client config presenting this certificate and trusting `ca`.
    pub fn client_config(&self, ca: &TestCa) -> Result<rustls::ClientConfig, PkiError> {
        Ok(rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(ca.root_store())
            .with_client_auth_cert(
                vec![self.cert_der.clone(), self.ca_der.clone()],
                self.key_der(),
            )?)
    }
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)?;
        io::Write::write_all(&mut file, contents)
    })();
    result.map_err(|source| PkiError::Write {
        path: path.to_owned(),
        source,
    })
}

/// The usual test PKI: a CA, a server certificate it signed, and an unrelated second CA.
///
/// Invariant: `server` was issued by `ca`; `other_ca` shares no key with `ca`, so a client
/// trusting one rejects certificates of the other.
#[derive(Debug)]
pub struct Pki {
    /// The CA that signs the director, UAA and nats-server certificates and the NATS clients.
    pub ca: TestCa,
    /// A server certificate for `127.0.0.1`, `::1` and `localhost`, issued by `ca`.
    pub server: CertifiedKeyPem,
    /// An unrelated CA, for "wrong CA" tests.
    pub other_ca: TestCa,
}

/// Paths written by [`Pki::write_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiFiles {
    /// `ca.crt`: the CA certificate.
    pub ca_cert: PathBuf,
    /// `server.crt` / `server.key`.
    pub server: CertFiles,
    /// `other-ca.crt`: the unrelated CA's certificate.
    pub other_ca_cert: PathBuf,
}

impl Pki {
    /// Generates a fresh CA, server certificate and second CA.
    pub fn generate() -> Result<Self, PkiError> {
        let ca = TestCa::new("bosh-nats-sync test CA")?;
        let server = ca.server_cert()?;
        let other_ca = TestCa::new("unrelated test CA")?;
        Ok(Pki {
            ca,
            server,
            other_ca,
        })
    }

    /// Writes `ca.crt`, `server.crt`, `server.key` and `other-ca.crt` into `dir`.
    pub fn write_to(&self, dir: &Path) -> Result<PkiFiles, PkiError> {
        let ca_cert = dir.join("ca.crt");
        write_file(&ca_cert, self.ca.cert_pem().as_bytes(), 0o644)?;
        let other_ca_cert = dir.join("other-ca.crt");
        write_file(&other_ca_cert, self.other_ca.cert_pem().as_bytes(), 0o644)?;
        let server = self.server.write_to(dir, "server")?;
        Ok(PkiFiles {
            ca_cert,
            server,
            other_ca_cert,
        })
    }

    /// A NATS client certificate `C=USA, O=Cloud Foundry, CN=<cn>` issued by `ca`.
    pub fn client(&self, cn: &str) -> Result<CertifiedKeyPem, PkiError> {
        self.ca.client_cert(cn)
    }

    /// The rustls server config for the simulated director and UAA.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        self.server.server_config()
    }

    /// A rustls client config trusting `ca` only.
    pub fn client_config(&self) -> rustls::ClientConfig {
        self.ca.client_config()
    }
}

/// A certificate's parameters for this machine: `O=Cloud Foundry, CN=<cn>`, valid for
/// `127.0.0.1`, `::1` and `localhost`, for the extended key usages `usages`.
fn local_params(
    cn: &str,
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Cloud Foundry");
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        SanType::DnsName("localhost".try_into()?),
    ];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_subject_matches_bosh_spelling() {
        let pki = Pki::generate().unwrap();
        let cert = pki.client("a1.agent.bosh-internal").unwrap();
        assert_eq!(
            cert.subject(),
            "C=USA, O=Cloud Foundry, CN=a1.agent.bosh-internal"
        );
    }

    #[test]
    fn configs_build_and_files_are_written() {
        let pki = Pki::generate().unwrap();
        pki.server_config().unwrap();
        let client = pki.client("x").unwrap();
        client.client_config(&pki.ca).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = pki.write_to(dir.path()).unwrap();
        let ca = fs::read_to_string(&files.ca_cert).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        let key = fs::read_to_string(&files.server.key).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&files.server.key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
