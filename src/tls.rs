//! Process-wide TLS setup: rustls with the ring provider (no OpenSSL, no aws-lc build).

/// Installs ring as rustls' process default provider. Idempotent: the first call wins and
/// later ones (or another part of the program having done it) are fine.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
