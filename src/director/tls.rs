//! Which certificates the client trusts (§2.3) and the rustls configuration built on them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::error::SettingsError;

/// Where a set of trust anchors came from. Two clients with equal sources can share one
/// connection pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TrustSource {
    File(PathBuf),
    System,
}

/// The first candidate CA file that exists and is non-blank, with its certificates; the
/// system store when there is none. A candidate that exists and is non-blank but yields no
/// certificate is an error, never a reason to move on: falling back to the system store
/// would silently trust far more than the operator configured.
pub(crate) fn select_roots(
    candidates: &[Option<&Path>],
) -> Result<(TrustSource, RootCertStore), SettingsError> {
    for path in candidates.iter().flatten() {
        let content = match std::fs::read(path) {
            Ok(content) => content,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(SettingsError::CaFileUnreadable {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        if content.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let roots = roots_from_pem(path, &content)?;
        return Ok((TrustSource::File(path.to_path_buf()), roots));
    }
    Ok((TrustSource::System, system_roots()?))
}

fn roots_from_pem(path: &Path, content: &[u8]) -> Result<RootCertStore, SettingsError> {
    let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(content)
        .collect::<Result<_, _>>()
        .map_err(|e| SettingsError::CaFileInvalidPem {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(SettingsError::CaFileNoCertificate {
            path: path.to_path_buf(),
        });
    }
    let mut roots = RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| SettingsError::CaCertificateRejected {
                path: path.to_path_buf(),
                index: index + 1,
                detail: e.to_string(),
            })?;
    }
    Ok(roots)
}

/// System stores routinely hold a few certificates webpki cannot use; those are skipped,
/// as every TLS client does. An empty result is an error, because every request would
/// then fail verification with a message that hides the cause.
fn system_roots() -> Result<RootCertStore, SettingsError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        let detail = if loaded.errors.is_empty() {
            String::new()
        } else {
            let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
            format!(" ({})", errors.join("; "))
        };
        return Err(SettingsError::NoSystemRoots { detail });
    }
    Ok(roots)
}

/// rustls with the ring provider, TLS 1.2 and 1.3 (rustls implements nothing older, so 1.2
/// is the floor by construction), the peer's certificate always verified against `roots`.
pub(crate) fn client_config(roots: RootCertStore) -> Result<rustls::ClientConfig, SettingsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| SettingsError::Tls {
            detail: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().expect("generate key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("self-sign").pem()
    }

    #[test]
    fn missing_and_blank_files_fall_through_to_the_next_candidate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let blank = dir.path().join("blank.pem");
        std::fs::write(&blank, " \n\t\n").expect("write");
        let good = dir.path().join("good.pem");
        std::fs::write(&good, ca_pem() + &ca_pem()).expect("write");

        let (source, roots) =
            select_roots(&[Some(&missing), None, Some(&blank), Some(&good)]).expect("select");
        assert_eq!(source, TrustSource::File(good.clone()));
        assert_eq!(roots.len(), 2);

        let (source, _) = select_roots(&[Some(&good), Some(&missing)]).expect("select");
        assert_eq!(source, TrustSource::File(good));
    }

    #[test]
    fn no_usable_candidate_means_the_system_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let blank = dir.path().join("blank.pem");
        std::fs::write(&blank, "").expect("write");
        // The system store may legitimately be empty in a minimal container; then the
        // selection must say so instead of returning an empty store.
        match select_roots(&[Some(&missing), Some(&blank), None]) {
            Ok((source, roots)) => {
                assert_eq!(source, TrustSource::System);
                assert!(!roots.is_empty());
            }
            Err(e) => assert!(matches!(e, SettingsError::NoSystemRoots { .. }), "{e}"),
        }
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "this is not a certificate\n").expect("write");
        let later = dir.path().join("later.pem");
        std::fs::write(&later, ca_pem()).expect("write");
        let err = select_roots(&[Some(&garbage), Some(&later)]).expect_err("garbage accepted");
        assert!(
            matches!(err, SettingsError::CaFileNoCertificate { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains(&garbage.display().to_string()),
            "{err}"
        );
        assert_eq!(err.reason(), "config");
    }

    #[test]
    fn a_key_alone_is_not_a_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_only = dir.path().join("key.pem");
        let key = rcgen::KeyPair::generate().expect("generate key");
        std::fs::write(&key_only, key.serialize_pem()).expect("write");
        let err = select_roots(&[Some(&key_only)]).expect_err("key accepted");
        assert!(
            matches!(err, SettingsError::CaFileNoCertificate { .. }),
            "{err}"
        );
    }

    #[test]
    fn broken_pem_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let truncated = dir.path().join("truncated.pem");
        let pem = ca_pem();
        std::fs::write(&truncated, &pem[..pem.len() / 2]).expect("write");
        let err = select_roots(&[Some(&truncated)]).expect_err("truncated accepted");
        assert!(
            matches!(err, SettingsError::CaFileInvalidPem { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("truncated.pem"), "{err}");

        let not_der = dir.path().join("not_der.pem");
        std::fs::write(
            &not_der,
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let err = select_roots(&[Some(&not_der)]).expect_err("non-DER accepted");
        assert!(
            matches!(err, SettingsError::CaCertificateRejected { index: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("not_der.pem"), "{err}");
    }

    #[test]
    fn unreadable_is_an_error_not_a_fall_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory exists but cannot be read as a file.
        let err = select_roots(&[Some(dir.path())]).expect_err("directory accepted");
        assert!(
            matches!(err, SettingsError::CaFileUnreadable { .. }),
            "{err}"
        );
    }
}
