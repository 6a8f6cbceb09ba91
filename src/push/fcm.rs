//! Firebase Cloud Messaging, HTTP v1 API: a thin client.
//!
//! A service account's key signs an RS256 JWT assertion (RFC 7523), which
//! its OAuth token endpoint exchanges for an access token; the token is
//! cached until a minute before it expires, and one exchange serves every
//! concurrent send. Messages go to `POST /v1/projects/{id}/messages:send`.
//! The `fcm` crate is not used: it speaks the legacy `/fcm/send` API, which
//! Google shut down in 2024.

use std::sync::Arc;

use aws_lc_rs::signature::RsaKeyPair;
use serde::Deserialize;
use serde_json::json;

use super::{BODY, PushError, PushMessage, PushSender, PushTarget};
use crate::clock::SharedClock;
use crate::config::FcmConfig;
use crate::outbound::HttpClient;

/// The OAuth scope for sending messages.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// Lifetime asked for the assertion (Google's maximum).
const ASSERTION_LIFETIME_SECS: i64 = 3600;

/// A cached access token is replaced this long before it expires.
const TOKEN_MARGIN_SECS: i64 = 60;

/// Longest registration token accepted.
const MAX_TOKEN_LEN: usize = 4096;

/// Whether `token` looks like an FCM registration token (URL-safe base64
/// and `:`).
pub(super) fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'))
}

/// A Google service account, from its JSON key file.
pub struct ServiceAccount {
    /// The Firebase project that sends.
    pub project_id: String,
    /// The account's e-mail: the assertion's `iss`.
    pub client_email: String,
    /// The OAuth token endpoint: where the assertion goes, and its `aud`.
    pub token_uri: String,
    key: RsaKeyPair,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Parses a service account's JSON key.
    ///
    /// # Errors
    /// Not JSON, a missing field, or a `private_key` that is not a PKCS#8 RSA key.
    pub fn from_json(json: &[u8]) -> anyhow::Result<Self> {
        #[derive(Deserialize)]
        struct File {
            project_id: String,
            client_email: String,
            private_key: String,
            token_uri: String,
        }
        let file: File = serde_json::from_slice(json)
            .map_err(|e| anyhow::anyhow!("not a service account key file: {}", json_error(&e)))?;
        if !file.token_uri.starts_with("https://") {
            anyhow::bail!("the service account's token_uri must be an https:// URL");
        }
        if !valid_path_segment(&file.project_id) {
            anyhow::bail!("the service account's project_id is not a valid project id");
        }
        let key = super::jws::rsa_key_from_pem(file.private_key.as_bytes(), "the service account's private_key")?;
        Ok(Self { project_id: file.project_id, client_email: file.client_email, token_uri: file.token_uri, key })
    }
}

/// What is wrong with a JSON key file, without echoing its content (it
/// holds a private key).
fn json_error(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Data => format!("missing or mistyped field (line {})", e.line()),
        _ => format!("invalid JSON (line {})", e.line()),
    }
}

fn valid_path_segment(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Sends pushes to apps through FCM. Cheap to clone.
#[derive(Clone)]
pub struct FcmSender {
    inner: Arc<Inner>,
}

struct Inner {
    http: HttpClient,
    send_url: String,
    account: ServiceAccount,
    clock: SharedClock,
    /// The access token and when it expires. An async mutex, held across
    /// the token exchange on purpose: concurrent sends wait for one
    /// exchange instead of each starting their own.
    token: tokio::sync::Mutex<Option<(String, i64)>>,
}

impl std::fmt::Debug for FcmSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmSender").field("send_url", &self.inner.send_url).finish_non_exhaustive()
    }
}

/// The token endpoint's success answer.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<i64>,
}

impl FcmSender {
    /// A sender for `account`'s project at `base_url`
    /// (`https://fcm.googleapis.com`, or a test mock).
    pub fn new(http: HttpClient, base_url: &str, account: ServiceAccount, clock: SharedClock) -> Self {
        let send_url = format!("{}/v1/projects/{}/messages:send", base_url.trim_end_matches('/'), account.project_id);
        Self { inner: Arc::new(Inner { http, send_url, account, clock, token: tokio::sync::Mutex::new(None) }) }
    }

    /// The sender `[push.fcm]` configures, or `None` without a service account file.
    ///
    /// # Errors
    /// The service account file cannot be read or is invalid.
    pub fn from_config(config: &FcmConfig, http: &HttpClient, clock: SharedClock) -> anyhow::Result<Option<Self>> {
        let Some(path) = &config.service_account_file else { return Ok(None) };
        let json = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let account = ServiceAccount::from_json(&json).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Some(Self::new(http.clone(), &config.base_url, account, clock)))
    }

    /// A valid access token: the cached one, or a new one from the token endpoint.
    async fn access_token(&self) -> Result<String, PushError> {
        let mut cached = self.inner.token.lock().await;
        let now = self.inner.clock.now();
        if let Some((token, expires_at)) = cached.as_ref() {
            if now < expires_at - TOKEN_MARGIN_SECS {
                return Ok(token.clone());
            }
        }
        let account = &self.inner.account;
        let header = json!({ "alg": "RS256", "typ": "JWT" });
        let claims = json!({
            "iss": account.client_email,
            "scope": SCOPE,
            "aud": account.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let assertion = super::jws::rs256(&account.key, &header, &claims)?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
            .append_pair("assertion", &assertion)
            .finish();
        let headers = [("content-type", "application/x-www-form-urlencoded"), ("accept", "application/json")];
        let response = self
            .inner
            .http
            .post(&account.token_uri, &headers, form.into_bytes(), super::REQUEST_TIMEOUT)
            .await
            .map_err(|e| super::transport_error("FCM token endpoint", &e))?;
        if response.status != 200 {
            // {"error": "invalid_grant", "error_description": "…"}: a configuration problem.
            let error = serde_json::from_slice::<serde_json::Value>(&response.body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_default();
            return Err(super::classify_common("FCM token endpoint", &response, &error));
        }
        let answer: TokenResponse = serde_json::from_slice(&response.body)
            .map_err(|_| PushError::Transient("FCM token endpoint: malformed answer".into()))?;
        let expires_at = now + answer.expires_in.unwrap_or(ASSERTION_LIFETIME_SECS);
        *cached = Some((answer.access_token.clone(), expires_at));
        Ok(answer.access_token)
    }

    /// Forgets the access token (the send endpoint refused it).
    async fn drop_access_token(&self) {
        *self.inner.token.lock().await = None;
    }
}

/// The v1 message for `token`: the challenge id as data (Android apps show
/// their own notification), high priority, collapsing on the challenge id,
/// and an APNs block for iOS apps registered through FCM.
fn message_json(token: &str, message: &PushMessage, now: i64) -> serde_json::Value {
    let id = message.challenge_id();
    json!({
        "message": {
            "token": token,
            "data": { "challenge": id },
            "android": { "priority": "high", "collapse_key": id, "ttl": format!("{}s", message.ttl(now)) },
            "apns": {
                "headers": {
                    "apns-priority": "10",
                    "apns-push-type": "alert",
                    "apns-collapse-id": id,
                    "apns-expiration": message.expires_at().to_string(),
                },
                "payload": { "aps": { "alert": { "title": message.title(), "body": BODY }, "sound": "default" } },
            },
        }
    })
}

/// Whether an FCM error body names an error code in `codes`:
/// `{"error": {"details": [{"errorCode": "UNREGISTERED", …}]}}`.
fn has_error_code(body: &serde_json::Value, codes: &[&str]) -> bool {
    body["error"]["details"]
        .as_array()
        .is_some_and(|details| details.iter().any(|d| d["errorCode"].as_str().is_some_and(|c| codes.contains(&c))))
}

impl PushSender for FcmSender {
    async fn send(&self, target: &PushTarget, message: &PushMessage) -> Result<(), PushError> {
        let PushTarget::Fcm { token } = target else {
            return Err(PushError::Rejected("not an FCM address".into()));
        };
        if !valid_token(token) {
            return Err(PushError::Unregistered);
        }
        let access = self.access_token().await?;
        let body = message_json(token, message, self.inner.clock.now());
        let authorization = format!("Bearer {access}");
        let headers = [("authorization", authorization.as_str()), ("content-type", "application/json")];
        let response = self
            .inner
            .http
            .post(&self.inner.send_url, &headers, body.to_string().into_bytes(), super::REQUEST_TIMEOUT)
            .await
            .map_err(|e| super::transport_error("FCM", &e))?;
        if (200..300).contains(&response.status) {
            return Ok(());
        }
        let error: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
        if response.status == 404 || has_error_code(&error, &["UNREGISTERED", "SENDER_ID_MISMATCH"]) {
            return Err(PushError::Unregistered);
        }
        if response.status == 401 {
            self.drop_access_token().await;
            return Err(PushError::Transient("FCM refused the access token".into()));
        }
        let status = error["error"]["status"].as_str().unwrap_or_default();
        Err(super::classify_common("FCM", &response, status))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::KeyPair as _;
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    use super::*;
    use crate::clock::ManualClock;
    use crate::push::mock::{Mock, Recorded, Reply};
    use crate::push::{RetryPolicy, send_with_retry};

    const DEVICE: &str = "fGx3:APA91bH-Zx_9example";
    const CHALLENGE: &str = "0190a3b4-7c1d-7e2f-8a9b-0c1d2e3f4a5b";

    /// A service account key file for `token_uri`, and the public key's
    /// (n, e) in base64url for verifying its assertions.
    pub(crate) fn service_account_json(token_uri: &str) -> (String, (String, String)) {
        let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let der: aws_lc_rs::encoding::Pkcs8V1Der<'_> = pair.as_der().unwrap();
        let body = STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"));
        let public = pair.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        let json = json!({
            "type": "service_account",
            "project_id": "portcullis-test",
            "private_key_id": "0123abcd",
            "private_key": pem,
            "client_email": "push@portcullis-test.iam.gserviceaccount.com",
            "client_id": "1234567890",
            "token_uri": token_uri,
        });
        (json.to_string(), (n, e))
    }

    struct Setup {
        mock: Mock,
        sender: FcmSender,
        clock: ManualClock,
        public: (String, String),
    }

    /// A mock serving both the token endpoint (`/token`, issuing
    /// `access-1`, `access-2`, … valid for an hour) and the send endpoint
    /// (answered by `send`, given how many sends came before).
    async fn setup(send: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Setup {
        let sends = std::sync::atomic::AtomicUsize::new(0);
        let tokens = std::sync::atomic::AtomicUsize::new(0);
        let (mock, http) = Mock::start(move |r: &Recorded, _| {
            if r.path == "/token" {
                let n = tokens.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                Reply::json(200, &format!(r#"{{"access_token":"access-{n}","expires_in":3599,"token_type":"Bearer"}}"#))
            } else {
                send(sends.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
            }
        })
        .await;
        let (json, public) = service_account_json(&format!("{}/token", mock.url));
        let account = ServiceAccount::from_json(json.as_bytes()).unwrap();
        let clock = ManualClock::new(1_750_000_000);
        let sender = FcmSender::new(http, &mock.url, account, Arc::new(clock.clone()));
        Setup { mock, sender, clock, public }
    }

    fn message() -> PushMessage {
        PushMessage::challenge(CHALLENGE, 1_750_000_060).unwrap()
    }

    fn target() -> PushTarget {
        PushTarget::Fcm { token: DEVICE.into() }
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

    /// Checks a token request: form fields, and the assertion's RS256
    /// signature and claims against the service account's public key.
    fn check_token_request(r: &Recorded, public: &(String, String), mock_url: &str, iat: i64) {
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("content-type"), Some("application/x-www-form-urlencoded"));
        let form: std::collections::HashMap<String, String> = form_urlencoded::parse(&r.body).into_owned().collect();
        assert_eq!(form.len(), 2, "{form:?}");
        assert_eq!(form["grant_type"], "urn:ietf:params:oauth:grant-type:jwt-bearer");
        let assertion = &form["assertion"];
        assert_eq!(jsonwebtoken::decode_header(assertion).unwrap().alg, Algorithm::RS256);
        let key = DecodingKey::from_rsa_components(&public.0, &public.1).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        let token_uri = format!("{mock_url}/token");
        validation.set_audience(&[token_uri.as_str()]);
        validation.set_issuer(&["push@portcullis-test.iam.gserviceaccount.com"]);
        validation.validate_exp = false; // The manual clock is not the wall clock; checked below.
        let claims = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation).unwrap().claims;
        assert_eq!(claims["scope"], SCOPE);
        assert_eq!(claims["iat"], iat);
        assert_eq!(claims["exp"], iat + 3600);
    }

    #[tokio::test]
    async fn exchanges_a_signed_assertion_and_sends_the_v1_message() {
        let s = setup(|_| Reply::json(200, r#"{"name":"projects/portcullis-test/messages/0:1"}"#)).await;
        s.sender.send(&target(), &message()).await.unwrap();
        s.clock.advance(3599 - TOKEN_MARGIN_SECS - 1);
        s.sender.send(&target(), &message()).await.unwrap();
        s.clock.advance(1);
        s.sender.send(&target(), &message()).await.unwrap();

        let requests = s.mock.requests();
        let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
        let send_path = "/v1/projects/portcullis-test/messages:send";
        // The token is cached until a minute before expiry, then replaced.
        assert_eq!(paths, ["/token", send_path, send_path, "/token", send_path]);
        assert!(requests.iter().all(|r| r.version == hyper::Version::HTTP_2));
        check_token_request(&requests[0], &s.public, &s.mock.url, 1_750_000_000);
        check_token_request(&requests[3], &s.public, &s.mock.url, 1_750_000_000 + 3599 - TOKEN_MARGIN_SECS);
        let bearers: Vec<_> = [1, 2, 4].iter().map(|&i| requests[i].header("authorization").unwrap()).collect();
        assert_eq!(bearers, ["Bearer access-1", "Bearer access-1", "Bearer access-2"]);

        let sent = &requests[1];
        assert_eq!(sent.header("content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
        assert_eq!(
            body,
            json!({ "message": {
                "token": DEVICE,
                "data": { "challenge": CHALLENGE },
                "android": { "priority": "high", "collapse_key": CHALLENGE, "ttl": "60s" },
                "apns": {
                    "headers": {
                        "apns-priority": "10", "apns-push-type": "alert",
                        "apns-collapse-id": CHALLENGE, "apns-expiration": "1750000060",
                    },
                    "payload": { "aps": { "alert": { "title": "Sign-in request", "body": BODY }, "sound": "default" } },
                },
            }})
        );
    }

    #[tokio::test]
    async fn unregistered_tokens_are_reported_and_not_retried() {
        let unregistered = r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND",
            "details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        let invalid = r#"{"error":{"code":400,"message":"The registration token is not a valid FCM registration token",
            "status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode":"UNREGISTERED"}]}}"#;
        for (status, body) in [(404, unregistered), (400, invalid), (404, "")] {
            let s = setup(move |_| Reply::json(status, body)).await;
            let got = send_with_retry(&s.sender, &target(), &message(), &policy(), deadline()).await;
            assert_eq!(got, Err(PushError::Unregistered), "{status} {body}");
            let sends = s.mock.requests().iter().filter(|r| r.path != "/token").count();
            assert_eq!(sends, 1);
        }
        // Another 400 is a refusal: not retried, the token kept.
        let bad = r#"{"error":{"code":400,"status":"INVALID_ARGUMENT","details":[{"errorCode":"INVALID_ARGUMENT"}]}}"#;
        let s = setup(move |_| Reply::json(400, bad)).await;
        let got = send_with_retry(&s.sender, &target(), &message(), &policy(), deadline()).await;
        assert_eq!(got, Err(PushError::Rejected("FCM answered 400 INVALID_ARGUMENT".into())));
        assert_eq!(s.mock.requests().len(), 2);
    }

    #[tokio::test]
    async fn quota_and_server_errors_are_retried_with_one_token_and_one_challenge() {
        let quota =
            r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"errorCode":"QUOTA_EXCEEDED"}]}}"#;
        let s = setup(move |n| match n {
            0 => Reply::json(429, quota).header("retry-after", "1"),
            1 => Reply::json(503, r#"{"error":{"code":503,"status":"UNAVAILABLE"}}"#),
            _ => Reply::json(200, r#"{"name":"projects/portcullis-test/messages/0:2"}"#),
        })
        .await;
        let start = std::time::Instant::now();
        send_with_retry(&s.sender, &target(), &message(), &policy(), deadline()).await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(1), "Retry-After was not honoured");
        let requests = s.mock.requests();
        assert_eq!(requests.iter().filter(|r| r.path == "/token").count(), 1, "the access token was not reused");
        let sends: Vec<_> = requests.iter().filter(|r| r.path != "/token").collect();
        assert_eq!(sends.len(), 3, "one request per attempt, none after success");
        assert!(sends.iter().all(|r| r.body == sends[0].body), "a retry changed the message");

        // A 401 drops the cached token, and the retry fetches a new one.
        let s = setup(|n| if n == 0 { Reply::status(401) } else { Reply::json(200, "{}") }).await;
        send_with_retry(&s.sender, &target(), &message(), &policy(), deadline()).await.unwrap();
        let bearers: Vec<_> =
            s.mock.requests().iter().filter_map(|r| r.header("authorization").map(String::from)).collect();
        assert_eq!(bearers, ["Bearer access-1", "Bearer access-2"]);
    }

    #[test]
    fn service_account_files_are_checked_without_echoing_the_key() {
        let (json, _) = service_account_json("https://oauth2.googleapis.com/token");
        let account = ServiceAccount::from_json(json.as_bytes()).unwrap();
        assert_eq!(account.project_id, "portcullis-test");
        assert!(!format!("{account:?}").contains("PRIVATE"));
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        value["private_key"] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
        assert!(ServiceAccount::from_json(value.to_string().as_bytes()).is_err());
        value.as_object_mut().unwrap().remove("private_key");
        let err = ServiceAccount::from_json(value.to_string().as_bytes()).unwrap_err().to_string();
        assert!(err.contains("missing or mistyped field"), "{err}");
        let err = ServiceAccount::from_json(b"{\"private_key\": \"secret").unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
    }
}
