//! What approval devices sign, and checking it. A device holds a P-256 key
//! it made itself; the server keeps only the public half. Signatures are
//! ECDSA P-256 SHA-256 in the fixed `r || s` form (what WebCrypto produces),
//! base64url without padding. Every signed message starts with a label so a
//! signature for one purpose can never be replayed as another.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Header naming the device that signs a request.
pub const DEVICE_HEADER: &str = "x-portcullis-device";
/// Header with the request's unix time (must be within [`MAX_CLOCK_SKEW_SECS`]).
pub const TIMESTAMP_HEADER: &str = "x-portcullis-timestamp";
/// Header with the request signature.
pub const SIGNATURE_HEADER: &str = "x-portcullis-signature";
/// How far a device's clock may be from ours.
pub const MAX_CLOCK_SKEW_SECS: i64 = 120;

/// A device's answer to a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Approve; with number matching, the number the user picked.
    Approve { number: Option<u8> },
    /// Deny.
    Deny,
    /// Deny and report: "this wasn't me".
    Fraud,
}

impl Verdict {
    /// The word used on the wire and in the signed message.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Approve { .. } => "approve",
            Verdict::Deny => "deny",
            Verdict::Fraud => "fraud",
        }
    }

    /// Parses the wire form.
    pub fn parse(word: &str, number: Option<u8>) -> Option<Self> {
        match word {
            "approve" => Some(Verdict::Approve { number }),
            "deny" => Some(Verdict::Deny),
            "fraud" => Some(Verdict::Fraud),
            _ => None,
        }
    }

    fn number(self) -> Option<u8> {
        match self {
            Verdict::Approve { number } => number,
            _ => None,
        }
    }
}

/// The canonical text a device signs to answer a challenge.
pub fn decision_message(challenge_id: &str, verdict: Verdict, timestamp: i64) -> String {
    let number = verdict.number().map_or_else(|| "-".to_string(), |n| n.to_string());
    format!("portcullis-decision-v1\n{challenge_id}\n{}\n{number}\n{timestamp}", verdict.word())
}

/// The canonical text a device signs for an API request.
pub fn request_message(method: &str, path_and_query: &str, timestamp: i64, body: &[u8]) -> String {
    let digest: String = Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect();
    format!("portcullis-device-request-v1\n{method}\n{path_and_query}\n{timestamp}\n{digest}")
}

/// Whether `public_key` (SEC1 uncompressed, base64url) is a P-256 point.
pub fn valid_public_key(public_key: &str) -> bool {
    // A signature check against a garbage key fails anyway; this rejects it
    // at enrollment with a clear error instead.
    URL_SAFE_NO_PAD.decode(public_key).is_ok_and(|k| k.len() == 65 && k[0] == 4)
}

/// Checks a device signature over `message`.
pub fn verify(public_key: &str, message: &str, signature: &str) -> bool {
    let (Ok(key), Ok(sig)) = (URL_SAFE_NO_PAD.decode(public_key), URL_SAFE_NO_PAD.decode(signature)) else {
        return false;
    };
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key).verify(message.as_bytes(), &sig).is_ok()
}

/// A device key pair (for the reference device and tests).
pub struct DeviceKey {
    pair: aws_lc_rs::signature::EcdsaKeyPair,
}

impl DeviceKey {
    /// A fresh key; also returns its PKCS#8 encoding for storage.
    ///
    /// # Errors
    /// Key generation failed.
    pub fn generate() -> anyhow::Result<(Self, Vec<u8>)> {
        let pair = aws_lc_rs::signature::EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| anyhow::anyhow!("cannot generate a P-256 key"))?;
        let der = pair.to_pkcs8v1().map_err(|_| anyhow::anyhow!("cannot encode the key"))?;
        let bytes = der.as_ref().to_vec();
        Ok((Self { pair }, bytes))
    }

    /// Loads a key from PKCS#8.
    ///
    /// # Errors
    /// Not a P-256 PKCS#8 key.
    pub fn from_pkcs8(der: &[u8]) -> anyhow::Result<Self> {
        let pair =
            aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                .map_err(|_| anyhow::anyhow!("not a P-256 PKCS#8 key"))?;
        Ok(Self { pair })
    }

    /// The public key, SEC1 uncompressed, base64url.
    pub fn public_key(&self) -> String {
        use aws_lc_rs::signature::KeyPair;
        URL_SAFE_NO_PAD.encode(self.pair.public_key().as_ref())
    }

    /// Signs `message`, base64url.
    ///
    /// # Errors
    /// Signing failed.
    pub fn sign(&self, message: &str) -> anyhow::Result<String> {
        let sig = self
            .pair
            .sign(&aws_lc_rs::rand::SystemRandom::new(), message.as_bytes())
            .map_err(|_| anyhow::anyhow!("signing failed"))?;
        Ok(URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_key_purpose_and_content() {
        let (key, der) = DeviceKey::generate().unwrap();
        let again = DeviceKey::from_pkcs8(&der).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        assert!(valid_public_key(&key.public_key()));
        assert!(!valid_public_key("AAAA"));

        let approve = decision_message("ch1", Verdict::Approve { number: Some(42) }, 1000);
        assert_eq!(approve, "portcullis-decision-v1\nch1\napprove\n42\n1000");
        let sig = key.sign(&approve).unwrap();
        assert!(verify(&key.public_key(), &approve, &sig));
        // Another challenge, verdict, number or time: the signature fails.
        for other in [
            decision_message("ch2", Verdict::Approve { number: Some(42) }, 1000),
            decision_message("ch1", Verdict::Approve { number: Some(43) }, 1000),
            decision_message("ch1", Verdict::Deny, 1000),
            decision_message("ch1", Verdict::Approve { number: Some(42) }, 1001),
        ] {
            assert!(!verify(&key.public_key(), &other, &sig), "{other}");
        }
        // Another device's key.
        let (stranger, _) = DeviceKey::generate().unwrap();
        assert!(!verify(&stranger.public_key(), &approve, &sig));
        // A request signature is not a decision signature.
        let req = request_message("GET", "/api/mfa/challenges", 1000, b"");
        assert!(!verify(&key.public_key(), &approve, &key.sign(&req).unwrap()));
        assert!(!verify("garbage", &approve, &sig));
        assert!(!verify(&key.public_key(), &approve, "garbage"));
    }
}
