//! Compact JWS signing for the push services' own tokens (APNs provider
//! token, FCM OAuth assertion, VAPID), with keys parsed once by aws-lc-rs.
//! Only signing lives here; the tests verify with `jsonwebtoken`, an
//! independent implementation.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::PushError;

/// `header.claims.signature`, ES256 (P-256, fixed-length `r || s`).
pub(super) fn es256(
    key: &EcdsaKeyPair,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> Result<String, PushError> {
    let input = signing_input(header, claims);
    let signature = key
        .sign(&SystemRandom::new(), input.as_bytes())
        .map_err(|_| PushError::Rejected("ES256 signing failed".into()))?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
}

/// `header.claims.signature`, RS256 (RSASSA-PKCS1-v1_5 with SHA-256).
pub(super) fn rs256(
    key: &RsaKeyPair,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> Result<String, PushError> {
    let input = signing_input(header, claims);
    let mut signature = vec![0u8; key.public_modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut signature)
        .map_err(|_| PushError::Rejected("RS256 signing failed".into()))?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
}

/// The DER of the one PKCS#8 private key in `pem` (`-----BEGIN PRIVATE KEY-----`).
fn pkcs8_der(pem: &[u8], what: &str) -> anyhow::Result<Vec<u8>> {
    match rustls_pemfile::private_key(&mut &pem[..]) {
        Ok(Some(rustls::pki_types::PrivateKeyDer::Pkcs8(der))) => Ok(der.secret_pkcs8_der().to_vec()),
        Ok(Some(_)) => anyhow::bail!("{what} is not a PKCS#8 key (-----BEGIN PRIVATE KEY-----)"),
        Ok(None) | Err(_) => anyhow::bail!("{what} holds no PEM private key"),
    }
}

/// A P-256 signing key from PKCS#8 PEM (an APNs `.p8` file).
pub(super) fn ec_key_from_pem(pem: &[u8], what: &str) -> anyhow::Result<EcdsaKeyPair> {
    let der = pkcs8_der(pem, what)?;
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
        .map_err(|e| anyhow::anyhow!("{what} is not a P-256 private key: {e}"))
}

/// An RSA signing key from PKCS#8 PEM (a Google service account's key).
pub(super) fn rsa_key_from_pem(pem: &[u8], what: &str) -> anyhow::Result<RsaKeyPair> {
    let der = pkcs8_der(pem, what)?;
    RsaKeyPair::from_pkcs8(&der).map_err(|e| anyhow::anyhow!("{what} is not an RSA private key: {e}"))
}
