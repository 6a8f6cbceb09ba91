//! How the client trusts a Proxmox host: the system's roots, a given CA
//! (PVE's own `pve-root-ca.pem`), or a pinned certificate fingerprint (what
//! PVE shows under Certificates). Builds the `reqwest` client; sends nothing.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use super::{ProxmoxError, TlsTrust};

/// Parses a SHA-256 fingerprint: 64 hex digits, optionally separated by
/// colons, either case.
pub(crate) fn parse_fingerprint(text: &str) -> Result<[u8; 32], ProxmoxError> {
    let hex: String = text.trim().chars().filter(|c| *c != ':').collect();
    let bad = || ProxmoxError::local("the TLS fingerprint must be 64 hex digits (SHA-256), colons allowed".into());
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = hex.get(i * 2..i * 2 + 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Formats a fingerprint as PVE shows it: upper-case hex pairs joined by `:`.
pub fn format_fingerprint(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Builds the HTTP client for `trust`.
pub(crate) fn build_client(trust: &TlsTrust, timeout: Duration) -> Result<reqwest::Client, ProxmoxError> {
    let builder = reqwest::Client::builder()
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        // pveproxy speaks HTTP/1.1 only, and its error text is the HTTP/1
        // reason phrase.
        .http1_only();
    let builder = match trust {
        TlsTrust::System => builder,
        TlsTrust::CaPem(pem) => {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| ProxmoxError::local(format!("invalid CA certificate: {e}")))?;
            if certs.is_empty() {
                return Err(ProxmoxError::local("no CA certificate in the given PEM".into()));
            }
            builder.tls_certs_only(certs)
        }
        TlsTrust::Fingerprint(fp) => {
            let expected = parse_fingerprint(fp)?;
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let verifier = PinnedCert { expected, algorithms: provider.signature_verification_algorithms };
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| ProxmoxError::local(format!("TLS configuration: {e}")))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            builder.tls_backend_preconfigured(config)
        }
    };
    builder.build().map_err(|e| ProxmoxError::local(format!("cannot build the Proxmox HTTP client: {e}")))
}

/// Accepts exactly the server certificate whose SHA-256 is `expected`,
/// whatever its issuer, names or dates (PVE's self-signed certificates are
/// pinned this way). The handshake signature is still verified with the
/// provider's algorithms, so only the holder of that certificate's key can
/// pass.
#[derive(Debug)]
struct PinnedCert {
    expected: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

/// The presented certificate does not match the pin.
#[derive(Debug)]
struct FingerprintMismatch {
    presented: String,
}

impl std::fmt::Display for FingerprintMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "certificate fingerprint mismatch: the server presented sha256={}", self.presented)
    }
}

impl std::error::Error for FingerprintMismatch {}

/// Says why a certificate was refused, in words (rustls would show our
/// own mismatch error only in `Debug` form).
pub(crate) fn describe_refusal(error: &rustls::CertificateError) -> String {
    if let rustls::CertificateError::Other(other) = error {
        if let Some(mismatch) = other.0.downcast_ref::<FingerprintMismatch>() {
            return mismatch.to_string();
        }
    }
    error.to_string()
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = Sha256::digest(end_entity.as_ref());
        if digest.as_slice() == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            let mismatch = FingerprintMismatch { presented: format_fingerprint(&digest) };
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                mismatch,
            )))))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let colons = format_fingerprint(&[0xAB; 32]);
        assert_eq!(&colons[..6], "AB:AB:");
        assert_eq!(parse_fingerprint(&colons).unwrap(), [0xAB; 32]);
        assert_eq!(parse_fingerprint(&"ab".repeat(32)).unwrap(), [0xAB; 32]);
        assert!(parse_fingerprint("AB:CD").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
        assert!(parse_fingerprint(&"é".repeat(32)).is_err());
    }
}
