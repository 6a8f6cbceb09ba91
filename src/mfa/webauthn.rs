//! WebAuthn second factors for web sign-in (security keys and passkeys),
//! over webauthn-rs: registration and authentication ceremonies, the
//! relying party (RP id = the issuer's host, origin = the issuer URL) and
//! the credential bookkeeping (signature counter and flags rewritten after
//! each sign-in).
//!
//! Each credential is registered as webauthn-rs's `SecurityKey`: a factor
//! *after* the password, with user verification preferred but not
//! required, so any authenticator works (a USB/NFC key without a PIN, a
//! phone or laptop passkey). The browser's hints are dropped from the
//! options so it offers every kind of authenticator, not only USB keys, and
//! so is the credProtect extension, which Chromium refuses unless user
//! verification is required.
//!
//! Ceremony state (the challenge) lives here, in memory, keyed by a hash of
//! a bearer value only the browser that started it holds (its pending
//! sign-in token, or its session's hash on the account page), never in a
//! cookie: each state is taken out by the first answer, right or wrong, so
//! an answer cannot be replayed against the same challenge. The web layer
//! passes JSON text in and out and never names a webauthn-rs type; this
//! module never logs challenges or credentials.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use sha2::Digest;
use webauthn_rs::prelude::{
    CredentialID, PublicKeyCredential, RegisterPublicKeyCredential, SecurityKey, SecurityKeyAuthentication,
    SecurityKeyRegistration, Url, Uuid, Webauthn, WebauthnBuilder,
};

use super::Mfa;
use crate::store::{StoreError, StoreResult, WebauthnCredential};

/// Seconds a ceremony (one browser prompt) may take, and the timeout the
/// browser is told.
pub const CEREMONY_SECS: i64 = 180;
/// Credentials one user may register.
pub const MAX_CREDENTIALS: i64 = 20;
/// Longest credential name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Ceremonies kept at once per kind; past it the ones closest to expiry go.
const MAX_CEREMONIES: usize = 10_000;

/// Why a WebAuthn step did not go through (the text is for logs and pages;
/// it never carries a challenge or credential).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebauthnRefusal {
    /// The issuer's host is not a domain name (e.g. an IP address), where
    /// browsers refuse WebAuthn.
    Unavailable,
    /// The user has no registered credential.
    NoCredentials,
    /// The user has [`MAX_CREDENTIALS`] already.
    TooMany,
    /// No ceremony is open for this browser: never started, expired, or
    /// already answered once.
    NoCeremony,
    /// This authenticator is already registered (to this or another user).
    Duplicate,
    /// The browser's answer did not parse or did not verify.
    Rejected(String),
}

impl std::fmt::Display for WebauthnRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WebauthnRefusal::Unavailable => f.write_str("WebAuthn needs an issuer whose host is a domain name"),
            WebauthnRefusal::NoCredentials => f.write_str("no security key registered"),
            WebauthnRefusal::TooMany => write!(f, "at most {MAX_CREDENTIALS} security keys per user"),
            WebauthnRefusal::NoCeremony => f.write_str("no security key request is open (expired or already used)"),
            WebauthnRefusal::Duplicate => f.write_str("this security key is already registered"),
            WebauthnRefusal::Rejected(why) => write!(f, "security key answer rejected: {why}"),
        }
    }
}

/// One open ceremony.
struct Ceremony<S> {
    user_id: String,
    state: S,
    expires_at: i64,
}

/// Open ceremonies of one kind, by hashed key.
struct Ceremonies<S> {
    inner: Mutex<HashMap<String, Ceremony<S>>>,
}

impl<S> Default for Ceremonies<S> {
    fn default() -> Self {
        Self { inner: Mutex::new(HashMap::new()) }
    }
}

/// The map key for a caller's bearer-derived key: only its hash is kept.
fn map_key(key: &str) -> String {
    sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl<S> Ceremonies<S> {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Ceremony<S>>> {
        // Plain data: a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a ceremony under `key`, replacing one the same browser had.
    fn put(&self, key: &str, user_id: &str, state: S, now: i64) {
        let mut map = self.lock();
        map.retain(|_, c| c.expires_at > now);
        while map.len() >= MAX_CEREMONIES {
            let Some(first) = map.iter().min_by_key(|(_, c)| c.expires_at).map(|(k, _)| k.clone()) else { break };
            map.remove(&first);
        }
        map.insert(map_key(key), Ceremony { user_id: user_id.to_string(), state, expires_at: now + CEREMONY_SECS });
    }

    /// Takes the ceremony under `key` out (whoever asks, once); its state if
    /// it is `user_id`'s and still open.
    fn take(&self, key: &str, user_id: &str, now: i64) -> Option<S> {
        self.lock().remove(&map_key(key)).filter(|c| c.user_id == user_id && c.expires_at > now).map(|c| c.state)
    }
}

/// The WebAuthn relying party: webauthn-rs configured for the issuer, and
/// the open ceremonies.
pub struct RelyingParty {
    webauthn: Webauthn,
    registrations: Ceremonies<SecurityKeyRegistration>,
    authentications: Ceremonies<SecurityKeyAuthentication>,
}

impl RelyingParty {
    /// The relying party for `issuer` (`https://host[:port]`): RP id = host,
    /// the only accepted origin = the issuer's origin, exact port.
    ///
    /// # Errors
    /// The issuer is not a URL or its host is not a domain name.
    pub fn new(issuer: &str) -> Result<Self, String> {
        let origin = Url::parse(issuer).map_err(|e| format!("issuer {issuer:?} is not a URL: {e}"))?;
        let Some(rp_id) = origin.domain() else {
            return Err(format!("issuer {issuer:?} has no domain name (WebAuthn does not work on IP addresses)"));
        };
        let rp_id = rp_id.to_string();
        let webauthn = WebauthnBuilder::new(&rp_id, &origin)
            .map_err(|e| format!("WebAuthn relying party for {issuer:?}: {e}"))?
            .rp_name("Portcullis")
            .timeout(Duration::from_secs(CEREMONY_SECS.unsigned_abs()))
            .build()
            .map_err(|e| format!("WebAuthn relying party for {issuer:?}: {e}"))?;
        Ok(Self { webauthn, registrations: Ceremonies::default(), authentications: Ceremonies::default() })
    }
}

/// A credential id as stored: base64url without padding.
fn credential_id_text(id: &CredentialID) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_ref() as &[u8])
}

/// The WebAuthn user handle for a user id: the id itself when it is a UUID
/// (it is, for users Portcullis created), else derived from its hash.
fn user_handle(user_id: &str) -> Uuid {
    Uuid::parse_str(user_id).unwrap_or_else(|_| {
        let digest = sha2::Sha256::digest(user_id.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Uuid::from_bytes(bytes)
    })
}

/// A credential name as typed, trimmed; `None` if it is empty, too long
/// or has control characters.
pub fn clean_name(name: &str) -> Option<String> {
    let name = name.trim();
    let ok = !name.is_empty() && name.chars().count() <= MAX_NAME_CHARS && !name.chars().any(char::is_control);
    ok.then(|| name.to_string())
}

fn parse_key(record: &WebauthnCredential) -> Option<SecurityKey> {
    match serde_json::from_str::<SecurityKey>(&record.credential) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::error!(error = %e, credential = %record.id, "a stored WebAuthn credential does not parse; skipped");
            None
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Invalid(format!("cannot serialise WebAuthn data: {e}")))
}

impl Mfa {
    /// Configures the WebAuthn relying party for `issuer` (first call wins).
    ///
    /// # Errors
    /// The issuer's host is not a domain name: WebAuthn stays unavailable
    /// (nothing offers it) and the other factors work as before.
    pub fn set_webauthn_issuer(&self, issuer: &str) -> Result<(), String> {
        let rp = RelyingParty::new(issuer)?;
        let _ = self.webauthn.set(rp);
        Ok(())
    }

    /// Whether security keys can be registered and used on this server.
    pub fn webauthn_available(&self) -> bool {
        self.webauthn.get().is_some()
    }

    fn relying_party(&self) -> Result<&RelyingParty, WebauthnRefusal> {
        self.webauthn.get().ok_or(WebauthnRefusal::Unavailable)
    }

    /// Starts registering a new credential for a signed-in user; `key` is a
    /// value only that browser holds (its session's hash). Returns the
    /// options for `navigator.credentials.create`, as JSON.
    ///
    /// # Errors
    /// Database errors (outer); unavailable or too many credentials (inner).
    pub async fn webauthn_register_start(
        &self,
        key: &str,
        user_id: &str,
        username: &str,
        display_name: &str,
    ) -> StoreResult<Result<String, WebauthnRefusal>> {
        let rp = match self.relying_party() {
            Ok(rp) => rp,
            Err(r) => return Ok(Err(r)),
        };
        let existing = self.store.webauthn_credentials_of(user_id).await?;
        if i64::try_from(existing.len()).unwrap_or(i64::MAX) >= MAX_CREDENTIALS {
            return Ok(Err(WebauthnRefusal::TooMany));
        }
        let exclude: Vec<CredentialID> = existing.iter().filter_map(parse_key).map(|k| k.cred_id().clone()).collect();
        let display = if display_name.trim().is_empty() { username } else { display_name };
        let (mut options, state) = match rp.webauthn.start_securitykey_registration(
            user_handle(user_id),
            username,
            display,
            Some(exclude),
            None,
            None,
        ) {
            Ok(started) => started,
            Err(e) => return Ok(Err(WebauthnRefusal::Rejected(e.to_string()))),
        };
        // Offer every kind of authenticator, not only USB security keys.
        options.public_key.hints = None;
        // webauthn-rs asks for credProtect "userVerificationRequired" (not
        // enforced) with user verification only preferred; Chromium refuses
        // that combination outright ("Requested protection policy is
        // inconsistent"), and a second factor after the password needs no
        // UV. The registration state does not depend on it (an absent
        // credProtect output is recorded as ignored).
        if let Some(extensions) = options.public_key.extensions.as_mut() {
            extensions.cred_protect = None;
        }
        let json = to_json(&options)?;
        rp.registrations.put(key, user_id, state, self.clock.now());
        Ok(Ok(json))
    }

    /// Finishes a registration started by [`Mfa::webauthn_register_start`]
    /// with the browser's answer (JSON) and stores the credential under
    /// `name`. The ceremony is spent either way.
    ///
    /// # Errors
    /// Database errors (outer); no open ceremony, an answer that does not
    /// verify, or an authenticator already registered (inner).
    pub async fn webauthn_register_finish(
        &self,
        key: &str,
        user_id: &str,
        name: &str,
        response: &str,
    ) -> StoreResult<Result<WebauthnCredential, WebauthnRefusal>> {
        let rp = match self.relying_party() {
            Ok(rp) => rp,
            Err(r) => return Ok(Err(r)),
        };
        let now = self.clock.now();
        let Some(state) = rp.registrations.take(key, user_id, now) else {
            return Ok(Err(WebauthnRefusal::NoCeremony));
        };
        let answer: RegisterPublicKeyCredential = match serde_json::from_str(response) {
            Ok(a) => a,
            Err(_) => return Ok(Err(WebauthnRefusal::Rejected("not a WebAuthn registration".into()))),
        };
        let security_key = match rp.webauthn.finish_securitykey_registration(&answer, &state) {
            Ok(k) => k,
            Err(e) => return Ok(Err(WebauthnRefusal::Rejected(e.to_string()))),
        };
        if self.store.webauthn_count(user_id).await? >= MAX_CREDENTIALS {
            return Ok(Err(WebauthnRefusal::TooMany));
        }
        let record = WebauthnCredential {
            id: Uuid::now_v7().to_string(),
            user_id: user_id.to_string(),
            credential_id: credential_id_text(security_key.cred_id()),
            credential: to_json(&security_key)?,
            name: name.to_string(),
            created_at: now,
            last_used_at: None,
        };
        match self.store.add_webauthn_credential(&record).await {
            Ok(()) => Ok(Ok(record)),
            Err(StoreError::Invalid(_)) => Ok(Err(WebauthnRefusal::Duplicate)),
            Err(e) => Err(e),
        }
    }

    /// Starts a sign-in with one of the user's credentials; `key` is a value
    /// only that browser holds (its pending sign-in token). Returns the
    /// options for `navigator.credentials.get`, as JSON.
    ///
    /// # Errors
    /// Database errors (outer); unavailable or no credential (inner).
    pub async fn webauthn_sign_in_start(
        &self,
        key: &str,
        user_id: &str,
    ) -> StoreResult<Result<String, WebauthnRefusal>> {
        let rp = match self.relying_party() {
            Ok(rp) => rp,
            Err(r) => return Ok(Err(r)),
        };
        let keys: Vec<SecurityKey> =
            self.store.webauthn_credentials_of(user_id).await?.iter().filter_map(parse_key).collect();
        if keys.is_empty() {
            return Ok(Err(WebauthnRefusal::NoCredentials));
        }
        let (mut options, state) = match rp.webauthn.start_securitykey_authentication(&keys) {
            Ok(started) => started,
            Err(e) => return Ok(Err(WebauthnRefusal::Rejected(e.to_string()))),
        };
        options.public_key.hints = None;
        let json = to_json(&options)?;
        rp.authentications.put(key, user_id, state, self.clock.now());
        Ok(Ok(json))
    }

    /// Checks the browser's answer (JSON) to [`Mfa::webauthn_sign_in_start`]:
    /// a signature over this ceremony's challenge, by one of this user's
    /// credentials, for this origin, with a signature counter that moved
    /// forward (a cloned key is refused). The ceremony is spent either way;
    /// on success the credential's counter and last use are stored and the
    /// use is audited. Returns the credential's name.
    ///
    /// # Errors
    /// Database errors (outer); no open ceremony or an answer that does not
    /// verify (inner).
    pub async fn webauthn_sign_in_finish(
        &self,
        key: &str,
        user_id: &str,
        response: &str,
    ) -> StoreResult<Result<String, WebauthnRefusal>> {
        let rp = match self.relying_party() {
            Ok(rp) => rp,
            Err(r) => return Ok(Err(r)),
        };
        let now = self.clock.now();
        let Some(state) = rp.authentications.take(key, user_id, now) else {
            return Ok(Err(WebauthnRefusal::NoCeremony));
        };
        let answer: PublicKeyCredential = match serde_json::from_str(response) {
            Ok(a) => a,
            Err(_) => return Ok(Err(WebauthnRefusal::Rejected("not a WebAuthn assertion".into()))),
        };
        let result = match rp.webauthn.finish_securitykey_authentication(&answer, &state) {
            Ok(r) => r,
            Err(e) => return Ok(Err(WebauthnRefusal::Rejected(e.to_string()))),
        };
        // The ceremony allowed only this user's credentials; look it up again
        // (it may have been removed meanwhile).
        let used = credential_id_text(result.cred_id());
        let records = self.store.webauthn_credentials_of(user_id).await?;
        let Some(record) = records.into_iter().find(|r| r.credential_id == used) else {
            return Ok(Err(WebauthnRefusal::Rejected("the credential is no longer registered".into())));
        };
        let mut updated = None;
        if let Some(mut k) = parse_key(&record) {
            if k.update_credential(&result) == Some(true) {
                updated = Some(to_json(&k)?);
            }
        }
        self.store.webauthn_used(&record.id, updated.as_deref(), now).await?;
        self.audit(user_id, "mfa.webauthn_used", &format!("{} ({})", record.name, record.id), now).await;
        Ok(Ok(record.name))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use webauthn_authenticator_rs::WebauthnAuthenticator;
    use webauthn_authenticator_rs::softpasskey::SoftPasskey;
    use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse};

    use super::*;
    use crate::clock::ManualClock;
    use crate::mfa::MfaConfig;
    use crate::store::Store;

    const ISSUER: &str = "https://id.example.org:8443";

    async fn mfa() -> (Mfa, Arc<ManualClock>, tempfile::TempDir) {
        let store = Store::open_in_memory().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        let new = crate::store::NewUser { name: "alice".into(), ..Default::default() };
        tx.add_user(new, &crate::config::Config::default().directory, &crate::model::Actor::system()).await.unwrap();
        tx.commit().await.unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_700_000_000));
        let mfa = Mfa::new(MfaConfig::default(), store, clock.clone(), tmp.path().into());
        mfa.set_webauthn_issuer(ISSUER).unwrap();
        (mfa, clock, tmp)
    }

    fn origin() -> Url {
        Url::parse(ISSUER).unwrap()
    }

    async fn register(mfa: &Mfa, user: &str, key: &mut WebauthnAuthenticator<SoftPasskey>) -> WebauthnCredential {
        let options = mfa.webauthn_register_start("session", user, "alice", "Alice").await.unwrap().unwrap();
        let options: CreationChallengeResponse = serde_json::from_str(&options).unwrap();
        let answer = key.do_registration(origin(), options).unwrap();
        let answer = serde_json::to_string(&answer).unwrap();
        mfa.webauthn_register_finish("session", user, "my key", &answer).await.unwrap().unwrap()
    }

    fn sign(key: &mut WebauthnAuthenticator<SoftPasskey>, options: &str) -> String {
        let options: RequestChallengeResponse = serde_json::from_str(options).unwrap();
        serde_json::to_string(&key.do_authentication(origin(), options).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn register_sign_in_and_refusals() {
        let (mfa, _clock, _tmp) = mfa().await;
        let user = mfa.store.user("alice").await.unwrap().unwrap().id;
        let mut key = WebauthnAuthenticator::new(SoftPasskey::new(true));
        assert_eq!(mfa.webauthn_sign_in_start("p", &user).await.unwrap(), Err(WebauthnRefusal::NoCredentials));
        let record = register(&mfa, &user, &mut key).await;
        assert_eq!(mfa.factors(&user).await.unwrap().webauthn, 1);
        let options = mfa.webauthn_register_start("session", &user, "alice", "Alice").await.unwrap().unwrap();
        assert!(options.contains(&record.credential_id), "the registered key is excluded: {options}");
        assert!(!options.contains("\"hints\":["), "no hints: {options}");
        assert!(!options.contains("credentialProtectionPolicy"), "no credProtect (Chromium): {options}");

        // A good assertion signs in once; the same answer again is refused.
        let options = mfa.webauthn_sign_in_start("p1", &user).await.unwrap().unwrap();
        let answer = sign(&mut key, &options);
        assert_eq!(mfa.webauthn_sign_in_finish("p1", &user, &answer).await.unwrap(), Ok("my key".to_string()));
        assert_eq!(mfa.webauthn_sign_in_finish("p1", &user, &answer).await.unwrap(), Err(WebauthnRefusal::NoCeremony));
        // Replayed against a fresh challenge: the signature is over the old one.
        mfa.webauthn_sign_in_start("p2", &user).await.unwrap().unwrap();
        let replay = mfa.webauthn_sign_in_finish("p2", &user, &answer).await.unwrap();
        assert!(matches!(replay, Err(WebauthnRefusal::Rejected(_))), "{replay:?}");
        // Another browser's ceremony, or another user's, does not fit.
        let options = mfa.webauthn_sign_in_start("p3", &user).await.unwrap().unwrap();
        let answer = sign(&mut key, &options);
        assert_eq!(mfa.webauthn_sign_in_finish("p4", &user, &answer).await.unwrap(), Err(WebauthnRefusal::NoCeremony));
        let stored = mfa.store.webauthn_credentials_of(&user).await.unwrap();
        assert!(stored[0].last_used_at.is_some());
        assert!(stored[0].credential.contains("\"counter\":1"), "the counter is stored: {}", stored[0].credential);
    }

    #[tokio::test]
    async fn ceremonies_expire_and_ip_issuers_have_none() {
        let (mfa, clock, _tmp) = mfa().await;
        let user = mfa.store.user("alice").await.unwrap().unwrap().id;
        let mut key = WebauthnAuthenticator::new(SoftPasskey::new(true));
        register(&mfa, &user, &mut key).await;
        let options = mfa.webauthn_sign_in_start("p", &user).await.unwrap().unwrap();
        let answer = sign(&mut key, &options);
        clock.advance(CEREMONY_SECS);
        assert_eq!(mfa.webauthn_sign_in_finish("p", &user, &answer).await.unwrap(), Err(WebauthnRefusal::NoCeremony));
        assert!(RelyingParty::new("https://127.0.0.1:8443").is_err());
        assert!(RelyingParty::new("https://localhost:8443").is_ok());
        assert_eq!(clean_name("  Yubi  ").as_deref(), Some("Yubi"));
        assert_eq!(clean_name(" "), None);
        assert_eq!(clean_name("a\nb"), None);
    }
}
