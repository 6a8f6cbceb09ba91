//! Web Push to a browser's push service: the message is encrypted for the
//! subscription (RFC 8291, `aes128gcm` content coding of RFC 8188) and the
//! request carries a VAPID token (RFC 8292) so the push service knows which
//! application server sends it.
//!
//! The encryption is written here with aws-lc-rs (ECDH P-256, HKDF-SHA256,
//! AES-128-GCM) rather than with the `ece` crate: `ece`'s only crypto
//! backend is OpenSSL, which this binary does not link. The RFC 8291
//! Appendix A vector is a unit test.
//!
//! The VAPID key pair (P-256) is generated on first use and kept sealed in
//! `DATA_DIR/vapid.sealed`; its public half is what a browser passes as
//! `applicationServerKey` when subscribing. A subscription's endpoint must
//! be https and, unless the allowlist is empty, on an allowed host: devices
//! register endpoints, and the server must not POST wherever one says.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, ECDH_P256, PrivateKey, UnparsedPublicKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{PushError, PushMessage, PushSender, PushTarget};
use crate::clock::SharedClock;
use crate::config::WebPushConfig;
use crate::outbound::HttpClient;
use crate::secrets::Sealer;

/// The record size put in the header: one record holds any push we send.
const RECORD_SIZE: u32 = 4096;

/// AES-GCM tag plus the one-byte padding delimiter of RFC 8188.
const RECORD_OVERHEAD: usize = 17;

/// VAPID tokens live this long (RFC 8292 allows at most 24 hours).
const VAPID_LIFETIME_SECS: i64 = 12 * 3600;

/// The file holding the sealed VAPID private key.
const VAPID_FILE: &str = "vapid.sealed";

/// A browser's push subscription, checked and decoded.
pub(super) struct Subscription {
    endpoint: String,
    /// `https://host[:port]`: the VAPID token's audience.
    origin: String,
    /// The host name, lower-case, without port or brackets.
    host: String,
    ua_public: Vec<u8>,
    auth: Vec<u8>,
}

/// Decodes base64url with or without padding (browsers send it unpadded).
fn base64url(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok().or_else(|| URL_SAFE.decode(s).ok())
}

impl Subscription {
    /// Checks an endpoint (https, a host, no user info, no fragment) and the
    /// keys (a 65-byte uncompressed P-256 point, a 16-byte auth secret).
    pub(super) fn parse(endpoint: &str, p256dh: &str, auth: &str) -> Result<Self, PushError> {
        let bad = |what: &str| PushError::Rejected(format!("invalid Web Push subscription: {what}"));
        if endpoint.len() > 2048 || endpoint.bytes().any(|b| !b.is_ascii_graphic()) || endpoint.contains('#') {
            return Err(bad("endpoint"));
        }
        let rest = endpoint.strip_prefix("https://").ok_or_else(|| bad("endpoint is not https"))?;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("endpoint"));
        }
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority.split(':').next().unwrap_or_default(),
        };
        if host.is_empty() {
            return Err(bad("endpoint"));
        }
        let ua_public = base64url(p256dh).filter(|k| k.len() == 65 && k[0] == 4).ok_or_else(|| bad("p256dh"))?;
        let auth = base64url(auth).filter(|a| a.len() == 16).ok_or_else(|| bad("auth"))?;
        Ok(Self {
            endpoint: endpoint.to_string(),
            origin: format!("https://{authority}"),
            host: host.to_ascii_lowercase(),
            ua_public,
            auth,
        })
    }

    /// Whether the endpoint's host is in `allowed` (exact, or a subdomain of
    /// an entry starting with a dot); an empty list allows any host.
    fn host_allowed(&self, allowed: &[String]) -> bool {
        allowed.is_empty()
            || allowed.iter().any(|entry| {
                let entry = entry.to_ascii_lowercase();
                match entry.strip_prefix('.') {
                    Some(domain) => self.host == domain || self.host.ends_with(&entry),
                    None => self.host == entry,
                }
            })
    }
}

/// An HKDF output length for aws-lc-rs.
struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 (RFC 5869) of `ikm` with `salt` and `info`, `N` bytes.
fn hkdf<const N: usize>(salt: &[u8], ikm: &[u8], info: &[u8]) -> Result<[u8; N], PushError> {
    let failed = |_| PushError::Rejected("HKDF failed".into());
    let mut out = [0u8; N];
    Salt::new(HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&[info], Len(N))
        .map_err(failed)?
        .fill(&mut out)
        .map_err(failed)?;
    Ok(out)
}

/// Encrypts `plaintext` for a subscription (RFC 8291) with a fresh sender
/// key and salt: the `aes128gcm` body (RFC 8188 header with the sender's
/// public key as key id, then one record).
///
/// # Errors
/// `Rejected` if the subscription's key is not a valid P-256 point, the
/// plaintext does not fit one record, or the system has no randomness.
pub fn encrypt(ua_public: &[u8], auth_secret: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, PushError> {
    let no_randomness = |_| PushError::Rejected("no randomness".into());
    let as_private = PrivateKey::generate(&ECDH_P256).map_err(no_randomness)?;
    let mut salt = [0u8; 16];
    SystemRandom::new().fill(&mut salt).map_err(no_randomness)?;
    encrypt_with(&as_private, &salt, ua_public, auth_secret, plaintext)
}

/// [`encrypt`] with a given sender key and salt (the RFC's test vector).
fn encrypt_with(
    as_private: &PrivateKey,
    salt: &[u8; 16],
    ua_public: &[u8],
    auth_secret: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, PushError> {
    let rejected = |what: &str| PushError::Rejected(format!("Web Push encryption: {what}"));
    if plaintext.len() + RECORD_OVERHEAD > RECORD_SIZE as usize {
        return Err(rejected("message too long"));
    }
    let as_public = as_private.compute_public_key().map_err(|_| rejected("bad sender key"))?;
    let as_public = as_public.as_ref();
    let ecdh_secret: [u8; 32] = agreement::agree(
        as_private,
        UnparsedPublicKey::new(&ECDH_P256, ua_public),
        rejected("the subscription's key is not a P-256 point"),
        |shared| shared.try_into().map_err(|_| rejected("unexpected ECDH output")),
    )?;
    // RFC 8291 §3.4: IKM = HKDF(auth_secret, ecdh_secret, "WebPush: info" 0x00 ua_public as_public, 32).
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(as_public);
    let ikm: [u8; 32] = hkdf(auth_secret, &ecdh_secret, &key_info)?;
    // RFC 8188 §2.2 and §2.3: the content-encryption key and nonce.
    let cek: [u8; 16] = hkdf(salt, &ikm, b"Content-Encoding: aes128gcm\0")?;
    let nonce: [u8; 12] = hkdf(salt, &ikm, b"Content-Encoding: nonce\0")?;

    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).map_err(|_| rejected("AES key"))?);
    // One record, the last: the plaintext, then the 0x02 delimiter, no padding.
    let mut record = plaintext.to_vec();
    record.push(2);
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut record)
        .map_err(|_| rejected("AES-GCM"))?;

    let key_id_len = u8::try_from(as_public.len()).map_err(|_| rejected("key id"))?;
    let mut body = Vec::with_capacity(16 + 4 + 1 + as_public.len() + record.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(key_id_len);
    body.extend_from_slice(as_public);
    body.extend_from_slice(&record);
    Ok(body)
}

/// The application server's VAPID key pair (P-256).
pub struct VapidKey {
    pair: EcdsaKeyPair,
    /// The public key, uncompressed point, base64url without padding.
    public: String,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidKey").field("public", &self.public).finish_non_exhaustive()
    }
}

impl VapidKey {
    /// Loads `data_dir/vapid.sealed`, or generates a key pair and stores it
    /// there sealed (mode 0600). Two processes starting together agree on
    /// one key: the file is published with a hard link, which never replaces
    /// an existing file.
    ///
    /// # Errors
    /// The file cannot be read or written, is sealed under another
    /// `secret.key`, or holds no P-256 key.
    pub fn load_or_create(data_dir: &Path, sealer: &Sealer) -> anyhow::Result<Self> {
        let path = data_dir.join(VAPID_FILE);
        if !path.exists() {
            let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("VAPID key generation failed"))?;
            let sealed = sealer.seal(der.as_ref())?;
            let mut suffix = [0u8; 8];
            SystemRandom::new().fill(&mut suffix).map_err(|_| anyhow::anyhow!("no randomness"))?;
            let temp = data_dir.join(format!(".{VAPID_FILE}.{}", URL_SAFE_NO_PAD.encode(suffix)));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)
                .with_context(|| format!("cannot create {}", temp.display()))?;
            file.write_all(sealed.as_bytes())?;
            file.sync_all()?;
            let linked = std::fs::hard_link(&temp, &path);
            let _ = std::fs::remove_file(&temp);
            match linked {
                Ok(()) => tracing::info!(path = %path.display(), "generated the VAPID key for Web Push"),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
            }
        }
        let sealed = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let der = sealer.open(sealed.trim()).with_context(|| format!("cannot open {}", path.display()))?;
        Self::from_pkcs8(&der).with_context(|| format!("{} holds no P-256 key", path.display()))
    }

    fn from_pkcs8(der: &[u8]) -> anyhow::Result<Self> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|e| anyhow::anyhow!("invalid key: {e}"))?;
        let public = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        Ok(Self { pair, public })
    }

    /// The public key (base64url, uncompressed point): the browser's
    /// `applicationServerKey` and the `k` of every VAPID header.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The `Authorization` header value for a push service at `origin`:
    /// `vapid t=<ES256 JWT>, k=<public key>` (RFC 8292 §3).
    fn authorization(&self, origin: &str, subject: &str, now: i64) -> Result<String, PushError> {
        let header = json!({ "typ": "JWT", "alg": "ES256" });
        let claims = json!({ "aud": origin, "exp": now + VAPID_LIFETIME_SECS, "sub": subject });
        let jwt = super::jws::es256(&self.pair, &header, &claims)?;
        Ok(format!("vapid t={jwt}, k={}", self.public))
    }
}

/// Sends pushes to browsers. Cheap to clone.
#[derive(Clone)]
pub struct WebPushSender {
    inner: Arc<Inner>,
}

struct Inner {
    http: HttpClient,
    vapid: VapidKey,
    subject: String,
    allowed_hosts: Vec<String>,
    clock: SharedClock,
}

impl std::fmt::Debug for WebPushSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPushSender").field("vapid", &self.inner.vapid).finish_non_exhaustive()
    }
}

impl WebPushSender {
    /// A sender signing with `vapid`, naming `subject` (`mailto:` or
    /// `https:`) as contact, to endpoints on `allowed_hosts` (see
    /// [`WebPushConfig::allowed_endpoint_hosts`]).
    pub fn new(
        http: HttpClient,
        vapid: VapidKey,
        subject: String,
        allowed_hosts: Vec<String>,
        clock: SharedClock,
    ) -> Self {
        Self { inner: Arc::new(Inner { http, vapid, subject, allowed_hosts, clock }) }
    }

    /// The sender `[push.webpush]` configures, or `None` without a subject.
    ///
    /// # Errors
    /// The VAPID key cannot be loaded or created.
    pub fn from_config(
        config: &WebPushConfig,
        data_dir: &Path,
        sealer: &Sealer,
        http: &HttpClient,
        clock: SharedClock,
    ) -> anyhow::Result<Option<Self>> {
        let Some(subject) = &config.subject else { return Ok(None) };
        let vapid = VapidKey::load_or_create(data_dir, sealer)?;
        Ok(Some(Self::new(http.clone(), vapid, subject.clone(), config.allowed_endpoint_hosts.clone(), clock)))
    }

    /// The VAPID public key (base64url), the browser's `applicationServerKey`.
    pub fn public_key(&self) -> &str {
        self.inner.vapid.public_key()
    }

    /// Refuses a subscription whose endpoint host is not allowed.
    pub(super) fn check_endpoint(&self, subscription: &Subscription) -> Result<(), PushError> {
        if subscription.host_allowed(&self.inner.allowed_hosts) {
            Ok(())
        } else {
            Err(PushError::Rejected("the Web Push endpoint's host is not allowed".into()))
        }
    }
}

/// The RFC 8030 `Topic` for a challenge: at most 32 base64url characters, so
/// a retried push replaces an undelivered earlier one at the push service.
fn topic(challenge_id: &str) -> String {
    let mut topic = URL_SAFE_NO_PAD.encode(Sha256::digest(challenge_id.as_bytes()));
    topic.truncate(32);
    topic
}

impl PushSender for WebPushSender {
    async fn send(&self, target: &PushTarget, message: &PushMessage) -> Result<(), PushError> {
        let PushTarget::WebPush { endpoint, p256dh, auth } = target else {
            return Err(PushError::Rejected("not a Web Push address".into()));
        };
        let subscription = Subscription::parse(endpoint, p256dh, auth)?;
        self.check_endpoint(&subscription)?;
        let plaintext = json!({ "challenge": message.challenge_id(), "title": message.title() }).to_string();
        let body = encrypt(&subscription.ua_public, &subscription.auth, plaintext.as_bytes())?;
        let now = self.inner.clock.now();
        let authorization = self.inner.vapid.authorization(&subscription.origin, &self.inner.subject, now)?;
        let ttl = message.ttl(now).to_string();
        let topic = topic(message.challenge_id());
        let headers = [
            ("authorization", authorization.as_str()),
            ("ttl", ttl.as_str()),
            ("urgency", "high"),
            ("topic", topic.as_str()),
            ("content-encoding", "aes128gcm"),
            ("content-type", "application/octet-stream"),
        ];
        let response = self
            .inner
            .http
            .post(&subscription.endpoint, &headers, body, super::REQUEST_TIMEOUT)
            .await
            .map_err(|e| super::transport_error("Web Push", &e))?;
        match response.status {
            200..=299 => Ok(()),
            404 | 410 => Err(PushError::Unregistered),
            _ => Err(super::classify_common("Web Push", &response, "")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_lc_rs::hmac;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    use super::*;
    use crate::clock::ManualClock;
    use crate::push::mock::{Mock, Recorded, Reply};
    use crate::push::{RetryPolicy, send_with_retry};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// HMAC-SHA-256 with `key`, as RFC 8291 §3.4 writes the derivation out.
    fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
        for part in parts {
            context.update(part);
        }
        context.sign().as_ref().try_into().unwrap()
    }

    /// The receiving user agent's side, written independently of
    /// [`encrypt_with`] from RFC 8291 §3.4's pseudocode (explicit HMACs, no
    /// HKDF API): parses the RFC 8188 header, derives the key and nonce,
    /// opens the single record and strips the delimiter.
    fn decrypt(ua_private: &PrivateKey, auth_secret: &[u8], body: &[u8]) -> Vec<u8> {
        let salt = &body[..16];
        let rs = u32::from_be_bytes(body[16..20].try_into().unwrap());
        let idlen = body[20] as usize;
        assert_eq!(idlen, 65, "the key id is the sender's public key");
        let as_public = &body[21..21 + idlen];
        let record = &body[21 + idlen..];
        assert!(record.len() <= rs as usize, "one record only");
        let ua_public = ua_private.compute_public_key().unwrap();
        let ecdh_secret =
            agreement::agree(ua_private, UnparsedPublicKey::new(&ECDH_P256, as_public), (), |s| Ok(s.to_vec()))
                .unwrap();
        let prk_key = hmac(auth_secret, &[&ecdh_secret]);
        let ikm = hmac(&prk_key, &[b"WebPush: info\0", ua_public.as_ref(), as_public, &[1]]);
        let prk = hmac(salt, &[&ikm]);
        let cek = &hmac(&prk, &[b"Content-Encoding: aes128gcm\0", &[1]])[..16];
        let nonce = &hmac(&prk, &[b"Content-Encoding: nonce\0", &[1]])[..12];
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, cek).unwrap());
        let mut buf = record.to_vec();
        let plain = key
            .open_in_place(Nonce::try_assume_unique_for_key(nonce).unwrap(), Aad::empty(), &mut buf)
            .expect("the record does not decrypt");
        let end = plain.iter().rposition(|&b| b != 0).unwrap();
        assert_eq!(plain[end], 2, "the last record's delimiter");
        plain[..end].to_vec()
    }

    // RFC 8291 Appendix A.
    const AS_PRIVATE: &str = "c9f58f89813e9f8e872e71f42aa64e1757c9254dcc62b72ddc010bb4043ea11c";
    const UA_PRIVATE: &str = "ab5757a70dd4a53e553a6bbf71ffefea2874ec07a6b379e3c48f895a02dc33de";
    const UA_PUBLIC: &str = "042571b2becdfde360551aaf1ed0f4cd366c11cebe555f89bcb7b186a53339173168ece2ebe018597bd30479b86e3c8f8eced577ca59187e9246990db682008b0e";
    const AUTH_SECRET: &str = "05305932a1c7eabe13b6cec9fda48882";
    const SALT: &str = "0c6bfaadad67958803092d454676f397";
    const PLAINTEXT: &[u8] = b"When I grow up, I want to be a watermelon";
    const BODY: &str = "0c6bfaadad67958803092d454676f397000010004104fe33f4ab0dea71914db55823f73b54948f41306d920732dbb9a59a53286482200e597a7b7bc260ba1c227998580992e93973002f3012a28ae8f06bbb78e5ec0ff297de5b429bba7153d3a4ae0caa091fd425f3b4b5414add8ab37a19c1bbb05cf5cb5b2a2e0562d558635641ec52812c6c8ff42e95ccb86be7cd";

    #[test]
    fn rfc8291_appendix_a_vector() {
        let as_private = PrivateKey::from_private_key(&ECDH_P256, &hex(AS_PRIVATE)).unwrap();
        let salt: [u8; 16] = hex(SALT).try_into().unwrap();
        let body = encrypt_with(&as_private, &salt, &hex(UA_PUBLIC), &hex(AUTH_SECRET), PLAINTEXT).unwrap();
        assert_eq!(body, hex(BODY), "encryption differs from RFC 8291 Appendix A");

        let ua_private = PrivateKey::from_private_key(&ECDH_P256, &hex(UA_PRIVATE)).unwrap();
        assert_eq!(ua_private.compute_public_key().unwrap().as_ref(), &hex(UA_PUBLIC)[..]);
        assert_eq!(decrypt(&ua_private, &hex(AUTH_SECRET), &hex(BODY)), PLAINTEXT, "the test decryptor is wrong");

        // Fresh keys and salt each time, still readable by the subscriber only.
        let fresh = encrypt(&hex(UA_PUBLIC), &hex(AUTH_SECRET), PLAINTEXT).unwrap();
        assert_ne!(fresh, body);
        assert_eq!(decrypt(&ua_private, &hex(AUTH_SECRET), &fresh), PLAINTEXT);
        let mut other_auth = hex(AUTH_SECRET);
        other_auth[0] ^= 1;
        let wrong = std::panic::catch_unwind(|| decrypt(&ua_private, &other_auth, &fresh));
        assert!(wrong.is_err(), "decrypted with the wrong auth secret");
        // Not a point on the curve; too long for one record.
        assert!(encrypt(&[4; 65], &hex(AUTH_SECRET), PLAINTEXT).is_err());
        assert!(encrypt(&hex(UA_PUBLIC), &hex(AUTH_SECRET), &[b'x'; 4080]).is_err());
    }

    #[test]
    fn subscriptions_are_parsed_strictly() {
        let key = URL_SAFE_NO_PAD.encode(hex(UA_PUBLIC));
        let auth = URL_SAFE_NO_PAD.encode(hex(AUTH_SECRET));
        let s = Subscription::parse("https://Push.Example:8443/wpush/v2/abc?x=1", &key, &auth).unwrap();
        assert_eq!((s.origin.as_str(), s.host.as_str()), ("https://Push.Example:8443", "push.example"));
        assert!(s.host_allowed(&["push.example".into()]));
        assert!(s.host_allowed(&[".example".into()]));
        assert!(s.host_allowed(&[]));
        assert!(!s.host_allowed(&["other.example".into(), ".push.example.org".into()]));
        let padded = URL_SAFE.encode(hex(AUTH_SECRET));
        assert!(Subscription::parse("https://push.example/x", &key, &padded).is_ok());
        for (endpoint, k, a) in [
            ("http://push.example/x", key.as_str(), auth.as_str()),
            ("https://user@push.example/x", &key, &auth),
            ("https:///x", &key, &auth),
            ("https://push.example/x y", &key, &auth),
            ("https://push.example/x", &key[..40], &auth),
            ("https://push.example/x", &key, &auth[..10]),
        ] {
            assert!(Subscription::parse(endpoint, k, a).is_err(), "accepted {endpoint} {k} {a}");
        }
    }

    #[test]
    fn the_vapid_key_is_made_once_and_kept_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::load_or_create(dir.path()).unwrap();
        let first = VapidKey::load_or_create(dir.path(), &sealer).unwrap();
        let again = VapidKey::load_or_create(dir.path(), &sealer).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        assert_eq!(URL_SAFE_NO_PAD.decode(first.public_key()).unwrap().len(), 65);
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join(VAPID_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let stored = std::fs::read_to_string(&path).unwrap();
        let der = sealer.open(stored.trim()).unwrap();
        assert_eq!(VapidKey::from_pkcs8(&der).unwrap().public_key(), first.public_key());
        let clear = base64::engine::general_purpose::STANDARD.encode(&der);
        assert!(!stored.contains(&clear[..40]), "the PKCS#8 key is stored in the clear");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "a temporary file was left behind");
        let other = tempfile::tempdir().unwrap();
        let other_sealer = Sealer::load_or_create(other.path()).unwrap();
        assert!(VapidKey::load_or_create(dir.path(), &other_sealer).is_err());
    }

    struct Setup {
        mock: Mock,
        sender: WebPushSender,
        ua_private: PrivateKey,
        auth: Vec<u8>,
        target: PushTarget,
    }

    async fn setup(reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Setup {
        let (mock, http) = Mock::start(move |_, n| reply(n)).await;
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::load_or_create(dir.path()).unwrap();
        let vapid = VapidKey::load_or_create(dir.path(), &sealer).unwrap();
        let clock = Arc::new(ManualClock::new(1_750_000_000));
        let sender =
            WebPushSender::new(http, vapid, "mailto:admin@example.org".into(), vec!["127.0.0.1".into()], clock);
        let ua_private = PrivateKey::generate(&ECDH_P256).unwrap();
        let mut auth = vec![0u8; 16];
        SystemRandom::new().fill(&mut auth).unwrap();
        let target = PushTarget::WebPush {
            endpoint: format!("{}/wpush/v2/gAAAAABk-subscription", mock.url),
            p256dh: URL_SAFE_NO_PAD.encode(ua_private.compute_public_key().unwrap().as_ref()),
            auth: URL_SAFE_NO_PAD.encode(&auth),
        };
        Setup { mock, sender, ua_private, auth, target }
    }

    fn message() -> PushMessage {
        PushMessage::challenge("0190a3b4-7c1d-7e2f-8a9b-0c1d2e3f4a5b", 1_750_000_060).unwrap()
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
        }
    }

    fn deadline() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(20)
    }

    /// Checks the VAPID header: `k` is the server's key and verifies the
    /// token, whose audience is the endpoint's origin.
    fn check_vapid(r: &Recorded, s: &Setup) {
        let header = r.header("authorization").unwrap();
        let rest = header.strip_prefix("vapid t=").expect("vapid scheme");
        let (jwt, k) = rest.split_once(", k=").unwrap();
        assert_eq!(k, s.sender.public_key());
        let point = URL_SAFE_NO_PAD.decode(k).unwrap();
        let key = DecodingKey::from_ec_components(
            &URL_SAFE_NO_PAD.encode(&point[1..33]),
            &URL_SAFE_NO_PAD.encode(&point[33..]),
        )
        .unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[s.mock.url.as_str()]);
        validation.validate_exp = false; // The manual clock is not the wall clock; checked below.
        let claims = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &validation).unwrap().claims;
        assert_eq!(claims["sub"], "mailto:admin@example.org");
        let exp = claims["exp"].as_i64().unwrap();
        assert!(exp > 1_750_000_000 && exp <= 1_750_000_000 + 24 * 3600, "exp {exp}");
    }

    #[tokio::test]
    async fn sends_an_encrypted_message_with_vapid() {
        let s = setup(|_| Reply::status(201)).await;
        s.sender.send(&s.target, &message()).await.unwrap();
        let requests = s.mock.requests();
        assert_eq!(requests.len(), 1);
        let r = &requests[0];
        assert_eq!(r.version, hyper::Version::HTTP_2);
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/wpush/v2/gAAAAABk-subscription"));
        assert_eq!(r.header("ttl"), Some("60"));
        assert_eq!(r.header("urgency"), Some("high"));
        assert_eq!(r.header("content-encoding"), Some("aes128gcm"));
        assert_eq!(r.header("topic").map(str::len), Some(32));
        check_vapid(r, &s);
        let plain = decrypt(&s.ua_private, &s.auth, &r.body);
        let payload: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(payload, json!({ "challenge": "0190a3b4-7c1d-7e2f-8a9b-0c1d2e3f4a5b", "title": "Sign-in request" }));
    }

    #[tokio::test]
    async fn gone_subscriptions_are_reported_and_not_retried() {
        for status in [404, 410] {
            let s = setup(move |_| Reply::status(status)).await;
            let got = send_with_retry(&s.sender, &s.target, &message(), &policy(), deadline()).await;
            assert_eq!(got, Err(PushError::Unregistered));
            assert_eq!(s.mock.requests().len(), 1);
        }
        let s = setup(|_| Reply::status(413)).await;
        let got = send_with_retry(&s.sender, &s.target, &message(), &policy(), deadline()).await;
        assert_eq!(got, Err(PushError::Rejected("Web Push answered 413 ".into())));
        assert_eq!(s.mock.requests().len(), 1);
    }

    #[tokio::test]
    async fn rate_limits_and_server_errors_are_retried_with_the_same_challenge() {
        let s = setup(|n| match n {
            0 => Reply::status(429).header("retry-after", "1"),
            1 => Reply::status(502),
            _ => Reply::status(201),
        })
        .await;
        let start = std::time::Instant::now();
        send_with_retry(&s.sender, &s.target, &message(), &policy(), deadline()).await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(1), "Retry-After was not honoured");
        let requests = s.mock.requests();
        assert_eq!(requests.len(), 3);
        let topics: Vec<_> = requests.iter().map(|r| r.header("topic").unwrap()).collect();
        assert!(topics.iter().all(|t| *t == topics[0]));
        for r in &requests {
            let payload: serde_json::Value = serde_json::from_slice(&decrypt(&s.ua_private, &s.auth, &r.body)).unwrap();
            assert_eq!(payload["challenge"], "0190a3b4-7c1d-7e2f-8a9b-0c1d2e3f4a5b");
        }
    }

    #[tokio::test]
    async fn endpoints_off_the_allowlist_are_never_contacted() {
        let s = setup(|_| Reply::status(201)).await;
        let PushTarget::WebPush { p256dh, auth, .. } = &s.target else { unreachable!() };
        let elsewhere = PushTarget::WebPush {
            endpoint: s.mock.url.replace("127.0.0.1", "localhost") + "/x",
            p256dh: p256dh.clone(),
            auth: auth.clone(),
        };
        let got = s.sender.send(&elsewhere, &message()).await;
        assert_eq!(got, Err(PushError::Rejected("the Web Push endpoint's host is not allowed".into())));
        assert!(s.mock.requests().is_empty());
    }
}
