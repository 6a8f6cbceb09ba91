//! Apple Push Notification service, token-based authentication: a thin
//! client for `POST /3/device/{token}` over HTTP/2 (Apple accepts nothing
//! else; the shared client negotiates h2 by ALPN).
//!
//! The provider token is an ES256 JWT (`kid` = key id, `iss` = team id,
//! `iat`) signed with the team's `.p8` key. Apple refuses tokens older than
//! an hour and answers `TooManyProviderTokenUpdates` to a new token more
//! often than every 20 minutes, so one token is cached and replaced after
//! 50 minutes. The `a2` crate is not used: it cannot target any host but
//! Apple's two (tests need a local mock) and defaults to OpenSSL.

use std::sync::{Arc, Mutex};

use aws_lc_rs::signature::EcdsaKeyPair;
use serde_json::json;

use super::{BODY, PushError, PushMessage, PushSender, PushTarget};
use crate::clock::SharedClock;
use crate::config::ApnsConfig;
use crate::outbound::HttpClient;

/// Age after which the provider token is replaced (Apple: between 20 and 60 minutes).
pub const TOKEN_REFRESH_SECS: i64 = 50 * 60;

/// Longest device token accepted (Apple's are 64 hex digits today; the
/// format may grow).
const MAX_TOKEN_LEN: usize = 200;

/// Whether `token` looks like an APNs device token (hex digits).
pub(super) fn valid_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= MAX_TOKEN_LEN && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What an [`ApnsSender`] needs besides the HTTP client and the clock.
pub struct ApnsSettings {
    /// `https://api.push.apple.com` (or the sandbox, or a test mock).
    pub base_url: String,
    /// The developer team id: the provider token's `iss`.
    pub team_id: String,
    /// The signing key's id: the provider token's `kid`.
    pub key_id: String,
    /// The app's bundle id, sent as `apns-topic`.
    pub topic: String,
    /// The `.p8` file's contents (PKCS#8 PEM, P-256).
    pub key_pem: Vec<u8>,
}

/// Sends pushes to iOS apps through APNs. Cheap to clone.
#[derive(Clone)]
pub struct ApnsSender {
    inner: Arc<Inner>,
}

struct Inner {
    http: HttpClient,
    base_url: String,
    team_id: String,
    key_id: String,
    topic: String,
    key: EcdsaKeyPair,
    clock: SharedClock,
    /// The current provider token and its `iat`. A std mutex: it is never
    /// held across an await.
    token: Mutex<Option<(String, i64)>>,
}

impl std::fmt::Debug for ApnsSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsSender").field("base_url", &self.inner.base_url).field("topic", &self.inner.topic).finish()
    }
}

impl ApnsSender {
    /// A sender with the given key and identifiers.
    ///
    /// # Errors
    /// `key_pem` is not a PKCS#8 P-256 private key.
    pub fn new(http: HttpClient, settings: ApnsSettings, clock: SharedClock) -> anyhow::Result<Self> {
        let key = super::jws::ec_key_from_pem(&settings.key_pem, "the APNs key")?;
        let inner = Inner {
            http,
            base_url: settings.base_url.trim_end_matches('/').to_string(),
            team_id: settings.team_id,
            key_id: settings.key_id,
            topic: settings.topic,
            key,
            clock,
            token: Mutex::new(None),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The sender `[push.apns]` configures, or `None` when `key_file` is unset.
    ///
    /// # Errors
    /// The key file cannot be read or holds no P-256 key, or an identifier is missing.
    pub fn from_config(config: &ApnsConfig, http: &HttpClient, clock: SharedClock) -> anyhow::Result<Option<Self>> {
        let Some(key_file) = &config.key_file else { return Ok(None) };
        let missing = |key: &str| anyhow::anyhow!("push.apns.{key} is required with push.apns.key_file");
        let key_pem =
            std::fs::read(key_file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", key_file.display()))?;
        let settings = ApnsSettings {
            base_url: config.base_url.clone(),
            team_id: config.team_id.clone().ok_or_else(|| missing("team_id"))?,
            key_id: config.key_id.clone().ok_or_else(|| missing("key_id"))?,
            topic: config.topic.clone().ok_or_else(|| missing("topic"))?,
            key_pem,
        };
        Self::new(http.clone(), settings, clock).map(Some)
    }

    /// The cached provider token, or a new one when it is 50 minutes old
    /// (or from the future: the clock was set back).
    fn provider_token(&self) -> Result<String, PushError> {
        let now = self.inner.clock.now();
        let mut cached = self.inner.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((jwt, iat)) = cached.as_ref() {
            if (0..TOKEN_REFRESH_SECS).contains(&(now - iat)) {
                return Ok(jwt.clone());
            }
        }
        let header = json!({ "alg": "ES256", "kid": self.inner.key_id });
        let claims = json!({ "iss": self.inner.team_id, "iat": now });
        let jwt = super::jws::es256(&self.inner.key, &header, &claims)?;
        *cached = Some((jwt.clone(), now));
        Ok(jwt)
    }

    /// Forgets the provider token, so the next attempt signs a new one.
    fn drop_provider_token(&self) {
        *self.inner.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

impl PushSender for ApnsSender {
    async fn send(&self, target: &PushTarget, message: &PushMessage) -> Result<(), PushError> {
        let PushTarget::Apns { token } = target else {
            return Err(PushError::Rejected("not an APNs address".into()));
        };
        if !valid_token(token) {
            // Apple would answer BadDeviceToken: the address can never work.
            return Err(PushError::Unregistered);
        }
        let jwt = self.provider_token()?;
        let url = format!("{}/3/device/{token}", self.inner.base_url);
        let payload = json!({
            "aps": { "alert": { "title": message.title(), "body": BODY }, "sound": "default" },
            "challenge": message.challenge_id(),
        });
        let authorization = format!("bearer {jwt}");
        let expiration = message.expires_at().to_string();
        let headers = [
            ("authorization", authorization.as_str()),
            ("apns-topic", self.inner.topic.as_str()),
            ("apns-push-type", "alert"),
            ("apns-priority", "10"),
            ("apns-expiration", expiration.as_str()),
            ("apns-collapse-id", message.challenge_id()),
            ("content-type", "application/json"),
        ];
        let response = self
            .inner
            .http
            .post(&url, &headers, payload.to_string().into_bytes(), super::REQUEST_TIMEOUT)
            .await
            .map_err(|e| super::transport_error("APNs", &e))?;
        if (200..300).contains(&response.status) {
            return Ok(());
        }
        // Apple's error body: {"reason": "BadDeviceToken"} (and a timestamp with 410).
        let reason = serde_json::from_slice::<serde_json::Value>(&response.body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_string))
            .unwrap_or_default();
        match (response.status, reason.as_str()) {
            (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => Err(PushError::Unregistered),
            (403, "ExpiredProviderToken") => {
                self.drop_provider_token();
                Err(PushError::Transient("APNs: the provider token expired".into()))
            }
            _ => Err(super::classify_common("APNs", &response, &reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    use super::*;
    use crate::clock::ManualClock;
    use crate::push::mock::{Mock, Reply};
    use crate::push::{RetryPolicy, send_with_retry};

    const TOKEN: &str = "5e2a9f0c3b1d4e6f8a7b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f";

    struct Setup {
        mock: Mock,
        sender: ApnsSender,
        clock: ManualClock,
        key: rcgen::KeyPair,
    }

    async fn setup(reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Setup {
        let (mock, http) = Mock::start(move |_, n| reply(n)).await;
        let key = rcgen::KeyPair::generate().unwrap();
        let clock = ManualClock::new(1_750_000_000);
        let settings = ApnsSettings {
            base_url: mock.url.clone(),
            team_id: "TEAM123456".into(),
            key_id: "KEY9876543".into(),
            topic: "org.example.portcullis".into(),
            key_pem: key.serialize_pem().into_bytes(),
        };
        let sender = ApnsSender::new(http, settings, Arc::new(clock.clone())).unwrap();
        Setup { mock, sender, clock, key }
    }

    fn message() -> PushMessage {
        PushMessage::challenge("0190a3b4-7c1d-7e2f-8a9b-0c1d2e3f4a5b", 1_750_000_060).unwrap()
    }

    fn target() -> PushTarget {
        PushTarget::Apns { token: TOKEN.into() }
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

    /// Verifies the provider token's ES256 signature with the key's public
    /// half and returns its `iat`.
    fn verify_provider_token(authorization: &str, key: &rcgen::KeyPair) -> i64 {
        let jwt = authorization.strip_prefix("bearer ").expect("bearer scheme");
        let header = jsonwebtoken::decode_header(jwt).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some("KEY9876543"));
        let point = key.public_key_raw();
        assert_eq!((point.len(), point[0]), (65, 4));
        let decoding = DecodingKey::from_ec_components(
            &URL_SAFE_NO_PAD.encode(&point[1..33]),
            &URL_SAFE_NO_PAD.encode(&point[33..]),
        )
        .unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_required_spec_claims(&["iss"]);
        validation.set_issuer(&["TEAM123456"]);
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<serde_json::Value>(jwt, &decoding, &validation).unwrap().claims;
        let object = claims.as_object().unwrap();
        assert_eq!(object.len(), 2, "only iss and iat: {claims}");
        claims["iat"].as_i64().unwrap()
    }

    #[tokio::test]
    async fn sends_the_exact_request_and_caches_the_provider_token() {
        let s = setup(|_| Reply::status(200)).await;
        s.sender.send(&target(), &message()).await.unwrap();
        s.clock.advance(TOKEN_REFRESH_SECS - 1);
        s.sender.send(&target(), &message()).await.unwrap();
        s.clock.advance(1);
        s.sender.send(&target(), &message()).await.unwrap();

        let requests = s.mock.requests();
        assert_eq!(requests.len(), 3);
        for r in &requests {
            assert_eq!(r.version, hyper::Version::HTTP_2);
            assert_eq!(r.method, "POST");
            assert_eq!(r.path, format!("/3/device/{TOKEN}"));
            assert_eq!(r.header("apns-topic"), Some("org.example.portcullis"));
            assert_eq!(r.header("apns-push-type"), Some("alert"));
            assert_eq!(r.header("apns-priority"), Some("10"));
            assert_eq!(r.header("apns-expiration"), Some("1750000060"));
            assert_eq!(r.header("apns-collapse-id"), Some("0190a3b4-7c1d-7e2f-8a9b-0c1d2e3f4a5b"));
            assert_eq!(r.header("content-type"), Some("application/json"));
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(
                body,
                serde_json::json!({
                    "aps": { "alert": { "title": "Sign-in request", "body": BODY }, "sound": "default" },
                    "challenge": "0190a3b4-7c1d-7e2f-8a9b-0c1d2e3f4a5b",
                })
            );
        }
        let auth: Vec<&str> = requests.iter().map(|r| r.header("authorization").unwrap()).collect();
        assert_eq!(auth[0], auth[1], "the provider token was not reused within 50 minutes");
        assert_ne!(auth[1], auth[2], "the provider token was not refreshed after 50 minutes");
        assert_eq!(verify_provider_token(auth[0], &s.key), 1_750_000_000);
        assert_eq!(verify_provider_token(auth[2], &s.key), 1_750_000_000 + TOKEN_REFRESH_SECS);
        // A token signed by another key does not verify.
        let other = rcgen::KeyPair::generate().unwrap().public_key_raw().to_vec();
        let decoding = DecodingKey::from_ec_components(
            &URL_SAFE_NO_PAD.encode(&other[1..33]),
            &URL_SAFE_NO_PAD.encode(&other[33..]),
        )
        .unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_required_spec_claims::<&str>(&[]);
        validation.validate_exp = false;
        let jwt = auth[0].strip_prefix("bearer ").unwrap();
        assert!(jsonwebtoken::decode::<serde_json::Value>(jwt, &decoding, &validation).is_err());
    }

    #[tokio::test]
    async fn unregistered_tokens_are_reported_once_and_not_retried() {
        for (status, body) in
            [(410, r#"{"reason":"Unregistered","timestamp":1750000000000}"#), (400, r#"{"reason":"BadDeviceToken"}"#)]
        {
            let s = setup(move |_| Reply::json(status, body)).await;
            let got = send_with_retry(&s.sender, &target(), &message(), &policy(), deadline()).await;
            assert_eq!(got, Err(PushError::Unregistered), "status {status}");
            assert_eq!(s.mock.requests().len(), 1);
        }
        // Other 4xx answers are refusals, not retried either.
        let s = setup(|_| Reply::json(400, r#"{"reason":"BadTopic"}"#)).await;
        let got = send_with_retry(&s.sender, &target(), &message(), &policy(), deadline()).await;
        assert_eq!(got, Err(PushError::Rejected("APNs answered 400 BadTopic".into())));
        assert_eq!(s.mock.requests().len(), 1);
        // A malformed token never leaves the server.
        let got = s.sender.send(&PushTarget::Apns { token: "../../x".into() }, &message()).await;
        assert_eq!(got, Err(PushError::Unregistered));
        assert_eq!(s.mock.requests().len(), 1);
    }

    #[tokio::test]
    async fn rate_limits_and_server_errors_are_retried_with_the_same_challenge() {
        // 429, 500, 503, then success: four requests, one challenge.
        let s = setup(|n| match n {
            0 => Reply::json(429, r#"{"reason":"TooManyRequests"}"#),
            1 => Reply::json(500, r#"{"reason":"InternalServerError"}"#),
            2 => Reply::json(503, r#"{"reason":"ServiceUnavailable"}"#),
            _ => Reply::status(200),
        })
        .await;
        send_with_retry(&s.sender, &target(), &message(), &policy(), deadline()).await.unwrap();
        let requests = s.mock.requests();
        assert_eq!(requests.len(), 4, "one request per attempt, none after success");
        for r in &requests {
            assert_eq!(r.header("apns-collapse-id"), Some("0190a3b4-7c1d-7e2f-8a9b-0c1d2e3f4a5b"));
            assert_eq!(r.body, requests[0].body, "a retry changed the payload");
        }

        // A server that keeps failing gets exactly max_attempts requests.
        let s = setup(|_| Reply::status(503)).await;
        let got = send_with_retry(&s.sender, &target(), &message(), &policy(), deadline()).await;
        assert_eq!(got, Err(PushError::Transient("APNs answered 503".into())));
        assert_eq!(s.mock.requests().len(), 4);
    }

    #[tokio::test]
    async fn an_expired_provider_token_is_replaced_on_retry() {
        let s =
            setup(
                |n| if n == 0 { Reply::json(403, r#"{"reason":"ExpiredProviderToken"}"#) } else { Reply::status(200) },
            )
            .await;
        send_with_retry(&s.sender, &target(), &message(), &policy(), deadline()).await.unwrap();
        let requests = s.mock.requests();
        assert_eq!(requests.len(), 2);
        // Same second on the manual clock, so only the signature's randomness differs.
        assert_ne!(requests[0].header("authorization"), requests[1].header("authorization"));
        verify_provider_token(requests[1].header("authorization").unwrap(), &s.key);
    }
}
