//! Token-signing keys: one active key per algorithm (RS256 with RSA-2048,
//! ES256 with P-256, EdDSA with Ed25519), generated with aws-lc-rs on first
//! start, stored sealed, rotated on command. The newest key of each algorithm
//! signs; retired keys stay in the JWKS until every token they signed has
//! expired. Nothing here knows about clients or HTTP.

use std::collections::HashMap;

use anyhow::Context;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaPrivateKey, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest, Sha256};

pub use crate::model::SigningAlg;
use crate::model::{Actor, SigningKeyRecord};
use crate::secrets::Sealer;
use crate::store::Store;

/// The `jsonwebtoken` name of `alg`, for verification.
pub fn jwt_algorithm(alg: SigningAlg) -> Algorithm {
    match alg {
        SigningAlg::Rs256 => Algorithm::RS256,
        SigningAlg::Es256 => Algorithm::ES256,
        SigningAlg::EdDsa => Algorithm::EdDSA,
    }
}

/// A private key parsed once: re-parsing a key per signature (as
/// `jsonwebtoken` does) cost more CPU than the RSA signature itself.
enum Pair {
    Rsa(RsaKeyPair),
    /// Signs in the fixed-length `r || s` form that JWS requires (RFC 7518 §3.4).
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// An active key: it signs new tokens of its algorithm.
pub struct SigningKey {
    /// Its RFC 7638 thumbprint, put in each token's `kid` header.
    pub kid: String,
    pub alg: SigningAlg,
    pair: Pair,
}

impl SigningKey {
    /// The JWS signature of `message` (the `header.payload` signing input).
    ///
    /// # Errors
    /// The cryptographic library refused (no randomness, internal error).
    pub fn sign(&self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        let failed = |_| anyhow::anyhow!("{} signing failed", self.alg);
        match &self.pair {
            Pair::Rsa(pair) => {
                let mut signature = vec![0u8; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut signature).map_err(failed)?;
                Ok(signature)
            }
            Pair::Ec(pair) => Ok(pair.sign(&SystemRandom::new(), message).map_err(failed)?.as_ref().to_vec()),
            Pair::Ed(pair) => Ok(pair.try_sign(message).map_err(failed)?.as_ref().to_vec()),
        }
    }

    /// Opens a stored key with `sealer` and parses it for signing.
    ///
    /// # Errors
    /// A key sealed under another `secret.key`, or not a key of its algorithm.
    pub fn open(record: &SigningKeyRecord, sealer: &Sealer) -> anyhow::Result<Self> {
        let alg: SigningAlg = record.alg.parse().map_err(anyhow::Error::msg)?;
        let der =
            sealer.open(&record.private_key).with_context(|| format!("cannot open signing key {}", record.kid))?;
        let rejected = |_| anyhow::anyhow!("stored signing key {} is not a valid {alg} key", record.kid);
        let pair = match alg {
            SigningAlg::Rs256 => Pair::Rsa(RsaKeyPair::from_pkcs8(&der).map_err(rejected)?),
            SigningAlg::Es256 => {
                Pair::Ec(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).map_err(rejected)?)
            }
            SigningAlg::EdDsa => Pair::Ed(Ed25519KeyPair::from_pkcs8(&der).map_err(rejected)?),
        };
        Ok(Self { kid: record.kid.clone(), alg, pair })
    }
}

/// A published key, for checking tokens we issued.
pub struct VerifyingKey {
    /// The only algorithm this key is accepted with.
    pub alg: SigningAlg,
    pub key: DecodingKey,
}

/// The active key of every algorithm plus everything published in the JWKS.
pub struct KeySet {
    rs256: SigningKey,
    es256: SigningKey,
    eddsa: SigningKey,
    /// `{"keys": [...]}` as served at the JWKS endpoint.
    pub jwks: serde_json::Value,
    /// Verification keys by `kid` (active and still-published retired keys).
    pub verifying: HashMap<String, VerifyingKey>,
}

impl KeySet {
    /// The key that signs new tokens of `alg`.
    pub fn signer(&self, alg: SigningAlg) -> &SigningKey {
        match alg {
            SigningAlg::Rs256 => &self.rs256,
            SigningAlg::Es256 => &self.es256,
            SigningAlg::EdDsa => &self.eddsa,
        }
    }

    /// The published key `kid`, only if a token's header `alg` is that key's
    /// own algorithm (so no token can pick how its signature is checked).
    pub fn verifier(&self, kid: &str, alg: Algorithm) -> Option<&VerifyingKey> {
        self.verifying.get(kid).filter(|k| jwt_algorithm(k.alg) == alg)
    }
}

/// The RFC 7638 thumbprint of a JWK's required members, given as the
/// canonical JSON (members in lexicographic order, no whitespace).
fn thumbprint(canonical: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// Makes a new key for `alg`, sealed for storage, with its public JWK.
///
/// # Errors
/// Key generation, encoding or sealing failed.
pub fn generate(alg: SigningAlg, sealer: &Sealer, now: i64) -> anyhow::Result<SigningKeyRecord> {
    let failed = |what: &str| anyhow::anyhow!("{alg} key {what} failed");
    let (der, kid, jwk) = match alg {
        SigningAlg::Rs256 => {
            let pair = RsaPrivateKey::generate(KeySize::Rsa2048).map_err(|_| failed("generation"))?;
            let der = pair.as_der().map_err(|_| failed("encoding"))?.as_ref().to_vec();
            let public = pair.public_key();
            let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
            let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
            let kid = thumbprint(&format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#));
            let jwk =
                serde_json::json!({ "kty": "RSA", "use": "sig", "alg": alg.as_str(), "kid": kid, "n": n, "e": e });
            (der, kid, jwk)
        }
        SigningAlg::Es256 => {
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|_| failed("generation"))?;
            let der = pair.to_pkcs8v1().map_err(|_| failed("encoding"))?.as_ref().to_vec();
            // The uncompressed SEC 1 point: 0x04, then x and y, 32 bytes each.
            let point = pair.public_key().as_ref();
            let (Some(0x04), 65) = (point.first(), point.len()) else {
                anyhow::bail!("unexpected P-256 public key encoding")
            };
            let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
            let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
            let kid = thumbprint(&format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#));
            let jwk = serde_json::json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": alg.as_str(), "kid": kid, "x": x, "y": y
            });
            (der, kid, jwk)
        }
        SigningAlg::EdDsa => {
            let pair = Ed25519KeyPair::generate().map_err(|_| failed("generation"))?;
            let der = pair.to_pkcs8().map_err(|_| failed("encoding"))?.as_ref().to_vec();
            let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
            let kid = thumbprint(&format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#));
            let jwk = serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": alg.as_str(), "kid": kid, "x": x });
            (der, kid, jwk)
        }
    };
    Ok(SigningKeyRecord {
        kid,
        alg: alg.as_str().into(),
        private_key: sealer.seal(&der)?,
        public_jwk: jwk.to_string(),
        created_at: now,
        retired_at: None,
    })
}

/// The verification key a stored public JWK describes, for its algorithm.
fn decoding_key(alg: SigningAlg, jwk: &serde_json::Value) -> anyhow::Result<DecodingKey> {
    let member = |name: &str| jwk[name].as_str().with_context(|| format!("{alg} JWK lacks {name}"));
    Ok(match alg {
        SigningAlg::Rs256 => DecodingKey::from_rsa_components(member("n")?, member("e")?)?,
        SigningAlg::Es256 => DecodingKey::from_ec_components(member("x")?, member("y")?)?,
        SigningAlg::EdDsa => DecodingKey::from_ed_components(member("x")?)?,
    })
}

/// Creates a key for every algorithm that has no active one: all three on
/// first start, ES256 and EdDSA on data directories made before they existed.
///
/// # Errors
/// Store or key-generation failures.
pub async fn ensure(store: &Store, sealer: &Sealer) -> anyhow::Result<()> {
    let records = store.signing_keys().await?;
    let missing: Vec<SigningAlg> = SigningAlg::ALL
        .into_iter()
        .filter(|alg| !records.iter().any(|r| r.retired_at.is_none() && r.alg == alg.as_str()))
        .collect();
    if !missing.is_empty() {
        rotate(store, sealer, &Actor::system(), &missing).await?;
    }
    Ok(())
}

/// Adds a new key for each of `algs` in one transaction; each retires the
/// previous key of its own algorithm, which stays published. Returns the new
/// keys' `kid`s.
///
/// # Errors
/// Store or key-generation failures.
pub async fn rotate(
    store: &Store,
    sealer: &Sealer,
    actor: &Actor,
    algs: &[SigningAlg],
) -> anyhow::Result<Vec<(SigningAlg, String)>> {
    let mut tx = store.begin().await?;
    let mut kids = Vec::with_capacity(algs.len());
    for &alg in algs {
        let record = generate(alg, sealer, tx.now())?;
        tx.add_signing_key(&record, actor).await?;
        kids.push((alg, record.kid));
    }
    tx.commit().await?;
    Ok(kids)
}

/// Loads the key set: the newest unretired key of each algorithm signs; keys
/// retired less than `publish_after_retire` seconds ago stay in the JWKS.
///
/// # Errors
/// An algorithm without an active key, or a key that cannot be opened with
/// this `secret.key`.
pub async fn load(store: &Store, sealer: &Sealer, now: i64, publish_after_retire: i64) -> anyhow::Result<KeySet> {
    let records = store.signing_keys().await?;
    let active = |alg: SigningAlg| -> anyhow::Result<SigningKey> {
        let record = records
            .iter()
            .find(|r| r.retired_at.is_none() && r.alg == alg.as_str())
            .with_context(|| format!("no active {alg} signing key"))?;
        SigningKey::open(record, sealer)
    };
    let (rs256, es256, eddsa) = (active(SigningAlg::Rs256)?, active(SigningAlg::Es256)?, active(SigningAlg::EdDsa)?);
    let mut keys = Vec::new();
    let mut verifying = HashMap::new();
    for r in &records {
        if r.retired_at.is_some_and(|t| t + publish_after_retire < now) {
            continue;
        }
        let alg: SigningAlg = r.alg.parse().map_err(anyhow::Error::msg)?;
        let jwk: serde_json::Value = serde_json::from_str(&r.public_jwk).context("stored JWK is not JSON")?;
        let key = decoding_key(alg, &jwk).with_context(|| format!("stored JWK {}", r.kid))?;
        verifying.insert(r.kid.clone(), VerifyingKey { alg, key });
        keys.push(jwk);
    }
    Ok(KeySet { rs256, es256, eddsa, jwks: serde_json::json!({ "keys": keys }), verifying })
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::jwk::{Jwk, ThumbprintHash};

    use super::*;

    /// A compact JWS signed by `key`, built the way the provider builds one.
    fn jws(key: &SigningKey, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({ "typ": "JWT", "alg": key.alg.as_str(), "kid": key.kid });
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = key.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    #[test]
    fn each_alg_signs_tokens_that_verify_against_its_published_jwk() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::load_or_create(dir.path()).unwrap();
        let claims = serde_json::json!({ "sub": "alice", "aud": "wiki", "exp": 4_000_000_000_i64 });
        for alg in SigningAlg::ALL {
            let record = generate(alg, &sealer, 1000).unwrap();
            assert_eq!(record.alg, alg.as_str());
            let key = SigningKey::open(&record, &sealer).unwrap();
            let token = jws(&key, &claims);

            // Verify with jsonwebtoken's own JWK parsing, independent of ours.
            let jwk: Jwk = serde_json::from_str(&record.public_jwk).unwrap();
            let published: serde_json::Value = serde_json::from_str(&record.public_jwk).unwrap();
            assert_eq!(published["use"], "sig");
            assert_eq!(published["alg"], alg.as_str());
            assert_eq!(published["kid"], record.kid.as_str());
            let mut validation = jsonwebtoken::Validation::new(jwt_algorithm(alg));
            validation.set_audience(&["wiki"]);
            let decoded =
                jsonwebtoken::decode::<serde_json::Value>(&token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation)
                    .unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(decoded.claims["sub"], "alice");
            assert_eq!(decoded.header.kid.as_deref(), Some(record.kid.as_str()));

            // kid = RFC 7638 thumbprint, recomputed from the published JWK's
            // required members (jsonwebtoken's own is right for RSA and EC
            // only: its OKP input is not valid JSON).
            let required: &[&str] = match alg {
                SigningAlg::Rs256 => &["e", "kty", "n"],
                SigningAlg::Es256 => &["crv", "kty", "x", "y"],
                SigningAlg::EdDsa => &["crv", "kty", "x"],
            };
            let canonical = required.iter().map(|m| format!("\"{m}\":{}", published[m])).collect::<Vec<_>>().join(",");
            let digest = Sha256::digest(format!("{{{canonical}}}").as_bytes());
            assert_eq!(URL_SAFE_NO_PAD.encode(digest), record.kid, "{alg}");
            if alg != SigningAlg::EdDsa {
                assert_eq!(jwk.thumbprint(ThumbprintHash::SHA256), record.kid, "{alg}");
            }
            // The published members are exactly the ones each kty needs.
            let members: Vec<&str> = published.as_object().unwrap().keys().map(String::as_str).collect();
            let expected: &[&str] = match alg {
                SigningAlg::Rs256 => &["alg", "e", "kid", "kty", "n", "use"],
                SigningAlg::Es256 => &["alg", "crv", "kid", "kty", "use", "x", "y"],
                SigningAlg::EdDsa => &["alg", "crv", "kid", "kty", "use", "x"],
            };
            let mut sorted = members.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, expected, "{alg}");

            // A flipped signature byte fails.
            let mut bad = token.clone().into_bytes();
            let at = bad.len() - 10;
            bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(bad).unwrap();
            assert!(
                jsonwebtoken::decode::<serde_json::Value>(&bad, &DecodingKey::from_jwk(&jwk).unwrap(), &validation)
                    .is_err()
            );
        }
    }

    #[test]
    fn thumbprints_match_rfc_7638_and_8037_examples() {
        // RFC 7638 §3.1 example RSA key.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let rsa = format!(r#"{{"e":"AQAB","kty":"RSA","n":"{n}"}}"#);
        assert_eq!(thumbprint(&rsa), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
        // RFC 8037 Appendix A.3 Ed25519 key.
        let okp = r#"{"crv":"Ed25519","kty":"OKP","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        assert_eq!(thumbprint(okp), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[tokio::test]
    async fn ensure_adds_missing_algs_and_rotation_retires_only_the_same_alg() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::load_or_create(dir.path()).unwrap();
        let store = Store::open_in_memory().await.unwrap();

        // A data directory from before ES256/EdDSA: only an RS256 key.
        let mut tx = store.begin().await.unwrap();
        let old_rsa = generate(SigningAlg::Rs256, &sealer, tx.now()).unwrap();
        tx.add_signing_key(&old_rsa, &Actor::system()).await.unwrap();
        tx.commit().await.unwrap();
        ensure(&store, &sealer).await.unwrap();
        let records = store.signing_keys().await.unwrap();
        assert_eq!(records.len(), 3, "ES256 and EdDSA keys added, RS256 kept");
        assert!(records.iter().all(|r| r.retired_at.is_none()));
        let set = load(&store, &sealer, 0, 3600).await.unwrap();
        assert_eq!(set.signer(SigningAlg::Rs256).kid, old_rsa.kid, "the existing RS256 key still signs");
        assert_eq!(SigningAlg::default(), SigningAlg::Rs256, "RS256 stays the default");
        ensure(&store, &sealer).await.unwrap();
        assert_eq!(store.signing_keys().await.unwrap().len(), 3, "ensure is idempotent");

        // Rotating ES256 alone retires only the old ES256 key.
        let old_ec = set.signer(SigningAlg::Es256).kid.clone();
        let new = rotate(&store, &sealer, &Actor::system(), &[SigningAlg::Es256]).await.unwrap();
        let records = store.signing_keys().await.unwrap();
        let active: Vec<&str> = records.iter().filter(|r| r.retired_at.is_none()).map(|r| r.alg.as_str()).collect();
        assert_eq!(active.len(), 3, "one active key per alg: {active:?}");
        assert!(records.iter().any(|r| r.kid == old_ec && r.retired_at.is_some()));
        let set = load(&store, &sealer, 0, 3600).await.unwrap();
        assert_eq!(set.signer(SigningAlg::Es256).kid, new[0].1);
        assert_eq!(set.signer(SigningAlg::Rs256).kid, old_rsa.kid);
        assert_eq!(set.jwks["keys"].as_array().unwrap().len(), 4, "the retired key stays published");

        // A token of the retired key still verifies, with its own alg only.
        assert!(set.verifier(&old_ec, Algorithm::ES256).is_some());
        assert!(set.verifier(&old_ec, Algorithm::RS256).is_none(), "no algorithm confusion");
        assert!(set.verifier(&old_rsa.kid, Algorithm::EdDSA).is_none());

        // After the publish window, it is gone.
        let later = records.iter().find(|r| r.kid == old_ec).unwrap().retired_at.unwrap() + 3601;
        let set = load(&store, &sealer, later, 3600).await.unwrap();
        assert!(set.verifier(&old_ec, Algorithm::ES256).is_none());
        assert_eq!(set.jwks["keys"].as_array().unwrap().len(), 3);
    }
}
