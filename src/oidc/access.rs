//! Opaque access tokens. The claims are sealed with AES-256-GCM-SIV under a
//! key derived from `secret.key`, so a token means nothing to its holder and
//! cannot be forged, yet the server reads it back without a database lookup.
//!
//! Why opaque and not JWT (RFC 9068): only Portcullis itself consumes these
//! tokens (userinfo, introspection), so a signature that third parties can
//! check buys nothing, while an RSA signature per token cost more CPU than the
//! rest of a token request. Revocation works through the token's family id,
//! checked on every use. GCM-SIV stays safe even if random nonces repeat.

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// Every access token starts with this, so a leaked one is easy to grep for.
pub const PREFIX: &str = "pcat_";

/// Authenticated data that binds the ciphertext to this purpose and format.
const AAD: &[u8] = b"portcullis access token v1";

/// Longest token accepted for opening; real ones are far shorter.
const MAX_TOKEN_LEN: usize = 4096;

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessToken {
    /// The user's id, or the client's name for client_credentials tokens.
    pub sub: String,
    pub client_id: String,
    pub scope: String,
    /// Token family: revoking it revokes this token.
    pub fam: String,
    pub iat: i64,
    pub exp: i64,
}

/// Seals and opens access tokens.
pub struct AccessTokenCodec {
    key: LessSafeKey,
}

impl std::fmt::Debug for AccessTokenCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessTokenCodec(..)")
    }
}

impl AccessTokenCodec {
    /// A codec keyed with 256 bits (see [`crate::secrets::Sealer::derive_key`]).
    ///
    /// # Errors
    /// Never for a 32-byte key.
    pub fn new(key: &[u8; 32]) -> anyhow::Result<Self> {
        let key = UnboundKey::new(&AES_256_GCM_SIV, key).map_err(|_| anyhow::anyhow!("bad access-token key"))?;
        Ok(Self { key: LessSafeKey::new(key) })
    }

    /// Seals `token` into its bearer form.
    ///
    /// # Errors
    /// No randomness, or encryption failed.
    pub fn seal(&self, token: &AccessToken) -> anyhow::Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| anyhow::anyhow!("no randomness"))?;
        let mut buf = serde_json::to_vec(token)?;
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(AAD), &mut buf)
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&buf);
        Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw)))
    }

    /// Opens a token we sealed that has not expired at `now`; `None` for
    /// anything else (foreign, altered, truncated, expired).
    pub fn open(&self, token: &str, now: i64) -> Option<AccessToken> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token.strip_prefix(PREFIX)?).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::from(AAD), &mut body).ok()?;
        let claims: AccessToken = serde_json::from_slice(plain).ok()?;
        (claims.exp > now).then_some(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AccessToken {
        AccessToken {
            sub: "user-1".into(),
            client_id: "wiki".into(),
            scope: "openid profile".into(),
            fam: "fam-1".into(),
            iat: 1000,
            exp: 1600,
        }
    }

    #[test]
    fn round_trip_expiry_and_tampering() {
        let codec = AccessTokenCodec::new(&[7u8; 32]).unwrap();
        let token = codec.seal(&sample()).unwrap();
        assert!(token.starts_with(PREFIX));
        assert!(!token.contains("user-1"), "claims must not be readable: {token}");
        assert_eq!(codec.open(&token, 1599), Some(sample()));
        assert_eq!(codec.open(&token, 1600), None, "expired");
        assert_ne!(codec.seal(&sample()).unwrap(), token, "fresh nonce per token");

        // Any altered character fails authentication.
        let mut bytes = token.clone().into_bytes();
        let i = PREFIX.len() + 20;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        assert_eq!(codec.open(&String::from_utf8(bytes).unwrap(), 1000), None);
        // Another key, a missing prefix, junk, an oversize token.
        assert_eq!(AccessTokenCodec::new(&[8u8; 32]).unwrap().open(&token, 1000), None);
        assert_eq!(codec.open(&token[PREFIX.len()..], 1000), None);
        assert_eq!(codec.open("pcat_!!", 1000), None);
        assert_eq!(codec.open("pcat_", 1000), None);
        assert_eq!(codec.open(&"pcat_A".repeat(2000), 1000), None);
    }
}
