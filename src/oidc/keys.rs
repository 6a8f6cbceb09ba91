//! Token-signing keys: RS256 keys generated with aws-lc-rs on first start,
//! stored sealed, rotated on command. The newest key signs; retired keys stay
//! in the JWKS until every token they signed has expired.

use std::collections::HashMap;

use anyhow::Context;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest, Sha256};

use crate::model::{Actor, SigningKeyRecord};
use crate::secrets::Sealer;
use crate::store::Store;

/// The key that signs new tokens, parsed once (re-parsing an RSA key per
/// signature, as `jsonwebtoken` does, cost more CPU than the signature).
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    pub pair: aws_lc_rs::signature::RsaKeyPair,
}

/// The signing key plus everything published in the JWKS.
pub struct KeySet {
    pub active: SigningKey,
    /// `{"keys": [...]}` as served at the JWKS endpoint.
    pub jwks: serde_json::Value,
    /// Verification keys by `kid` (active and still-published retired keys).
    pub verifying: HashMap<String, DecodingKey>,
}

/// Makes a new RS256 key, sealed for storage.
///
/// # Errors
/// Key generation or sealing failed.
pub fn generate_rsa(sealer: &Sealer, now: i64) -> anyhow::Result<SigningKeyRecord> {
    let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
    let der = pair.as_der().map_err(|_| anyhow::anyhow!("cannot encode the RSA key"))?;
    let public = pair.public_key();
    let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
    let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
    // RFC 7638 thumbprint: members in lexicographic order, no whitespace.
    let thumbprint = Sha256::digest(format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#).as_bytes());
    let kid = URL_SAFE_NO_PAD.encode(thumbprint);
    let jwk = serde_json::json!({ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e });
    Ok(SigningKeyRecord {
        kid,
        alg: "RS256".into(),
        private_key: sealer.seal(der.as_ref())?,
        public_jwk: jwk.to_string(),
        created_at: now,
        retired_at: None,
    })
}

/// Creates the first key if there is none.
///
/// # Errors
/// Store or key-generation failures.
pub async fn ensure(store: &Store, sealer: &Sealer) -> anyhow::Result<()> {
    if store.signing_keys().await?.is_empty() {
        rotate(store, sealer, &Actor::system()).await?;
    }
    Ok(())
}

/// Adds a new signing key; the previous one is retired but stays published.
///
/// # Errors
/// Store or key-generation failures.
pub async fn rotate(store: &Store, sealer: &Sealer, actor: &Actor) -> anyhow::Result<String> {
    let mut tx = store.begin().await?;
    let record = generate_rsa(sealer, tx.now())?;
    tx.add_signing_key(&record, actor).await?;
    tx.commit().await?;
    Ok(record.kid)
}

/// Loads the key set: the newest unretired key signs; keys retired less than
/// `publish_after_retire` seconds ago stay in the JWKS.
///
/// # Errors
/// No usable key, or a key that cannot be opened with this `secret.key`.
pub async fn load(store: &Store, sealer: &Sealer, now: i64, publish_after_retire: i64) -> anyhow::Result<KeySet> {
    let records = store.signing_keys().await?;
    let active = records.iter().find(|r| r.retired_at.is_none()).context("no active signing key")?;
    let der = sealer.open(&active.private_key)?;
    let pair = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&der)
        .map_err(|_| anyhow::anyhow!("stored signing key is not a valid RSA key"))?;
    let mut keys = Vec::new();
    let mut verifying = HashMap::new();
    for r in &records {
        if r.retired_at.is_some_and(|t| t + publish_after_retire < now) {
            continue;
        }
        let jwk: serde_json::Value = serde_json::from_str(&r.public_jwk).context("stored JWK is not JSON")?;
        let (Some(n), Some(e)) = (jwk["n"].as_str(), jwk["e"].as_str()) else {
            anyhow::bail!("stored JWK {} lacks n or e", r.kid)
        };
        verifying.insert(r.kid.clone(), DecodingKey::from_rsa_components(n, e)?);
        keys.push(jwk);
    }
    Ok(KeySet {
        active: SigningKey { kid: active.kid.clone(), alg: Algorithm::RS256, pair },
        jwks: serde_json::json!({ "keys": keys }),
        verifying,
    })
}
