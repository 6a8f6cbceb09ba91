//! Webhooks to external notification services, in two modes.
//!
//! **Generic** ([`WebhookSender`]): POST `{"challenge_id", "recipient",
//! "kind": "challenge", "server", "expires_at"}` to the configured URL,
//! signed with HMAC-SHA256 over the body in `X-Portcullis-Signature:
//! sha256=<hex>`. The service answers with a callback signed the same way
//! to `POST {server}/api/mfa/webhook/decision` (see `web/device.rs`).
//!
//! **Compat** ([`CompatClient`]): the existing push-approval service's
//! `POST {base}/send-notification` contract (../shared/PUSH-COMPAT.md), so
//! phones enrolled there keep working. That call is synchronous: the
//! service holds the request until the user answers (up to 25 s) and its
//! answer is the decision. It is never retried (a retry would be a second
//! notification), and its deadline, rate limits and suspended-user checks
//! are the caller's. The API key travels in the body; it is never logged.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use serde_json::json;

use super::{PushError, PushMessage, PushSender, PushTarget};
use crate::config::{Secret, WebhookConfig, WebhookMode};
use crate::outbound::HttpClient;

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-portcullis-signature";

/// Shortest accepted HMAC secret.
const MIN_SECRET_LEN: usize = 16;

/// `sha256=<hex HMAC-SHA256(secret, body)>`: the signature header's value.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    signature_value(&hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), body))
}

fn signature_value(tag: &hmac::Tag) -> String {
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Whether `header` is a valid signature of `body` under `secret`
/// (compared in constant time), for signed decision callbacks.
pub fn verify_signature(secret: &[u8], body: &[u8], header: &str) -> bool {
    verify_with(&hmac::Key::new(hmac::HMAC_SHA256, secret), body, header)
}

fn verify_with(key: &hmac::Key, body: &[u8], header: &str) -> bool {
    let Some(hex) = header.trim().strip_prefix("sha256=") else { return false };
    if hex.len() != 64 || !hex.is_ascii() {
        return false;
    }
    let tag: Option<Vec<u8>> = (0..64).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect();
    tag.is_some_and(|tag| hmac::verify(key, body, &tag).is_ok())
}

/// Builds the webhook `[push.webhook]` configures: a generic sender or a
/// compat client, by `mode`; neither without a URL.
///
/// # Errors
/// The secret file cannot be read, or the secret is too short.
pub(super) fn from_config(
    config: &WebhookConfig,
    server_url: &str,
    http: &HttpClient,
) -> anyhow::Result<(Option<WebhookSender>, Option<CompatClient>)> {
    let Some(url) = &config.url else { return Ok((None, None)) };
    let timeout = Duration::from_secs(config.timeout_secs.max(1));
    match config.mode {
        WebhookMode::Compat => {
            let client = CompatClient::new(http.clone(), url, config.apikey.clone(), config.client_id.clone(), timeout);
            Ok((None, Some(client)))
        }
        WebhookMode::Generic => {
            let secret = match (&config.secret, &config.secret_file) {
                (Some(secret), _) => secret.clone(),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map(|s| Secret::new(s.trim()))
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
                (None, None) => anyhow::bail!("push.webhook in generic mode needs a secret or secret_file"),
            };
            let sender = WebhookSender::new(http.clone(), url, &secret, server_url, timeout)?;
            Ok((Some(sender), None))
        }
    }
}

/// Generic mode: POSTs each challenge, signed, to one URL. Cheap to clone.
#[derive(Clone)]
pub struct WebhookSender {
    inner: Arc<Inner>,
}

struct Inner {
    http: HttpClient,
    url: String,
    key: hmac::Key,
    server: String,
    timeout: Duration,
}

impl std::fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSender").field("server", &self.inner.server).finish_non_exhaustive()
    }
}

impl WebhookSender {
    /// A sender POSTing to `url`, signing with `secret`, naming `server_url`
    /// (the issuer) as the server to answer, each POST bounded by `timeout`.
    ///
    /// # Errors
    /// The secret is shorter than 16 bytes.
    pub fn new(
        http: HttpClient,
        url: &str,
        secret: &Secret,
        server_url: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        if secret.expose().len() < MIN_SECRET_LEN {
            anyhow::bail!("the webhook secret must be at least {MIN_SECRET_LEN} bytes");
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
        let inner = Inner { http, url: url.to_string(), key, server: server_url.to_string(), timeout };
        Ok(Self { inner: Arc::new(inner) })
    }
}

impl WebhookSender {
    /// Whether `header` (`sha256=<hex>`) signs `body` with this webhook's
    /// secret, in constant time: how a decision callback proves it comes
    /// from the external service.
    pub fn verify_callback(&self, body: &[u8], header: &str) -> bool {
        verify_with(&self.inner.key, body, header)
    }
}

impl PushSender for WebhookSender {
    async fn send(&self, target: &PushTarget, message: &PushMessage) -> Result<(), PushError> {
        let PushTarget::Webhook { recipient } = target else {
            return Err(PushError::Rejected("not a webhook address".into()));
        };
        let body = json!({
            "challenge_id": message.challenge_id(),
            "recipient": recipient,
            "kind": "challenge",
            "server": self.inner.server,
            "expires_at": message.expires_at(),
        })
        .to_string();
        let signature = signature_value(&hmac::sign(&self.inner.key, body.as_bytes()));
        let headers = [("content-type", "application/json"), (SIGNATURE_HEADER, signature.as_str())];
        let response = self
            .inner
            .http
            .post(&self.inner.url, &headers, body.into_bytes(), self.inner.timeout.min(super::REQUEST_TIMEOUT))
            .await
            .map_err(|e| super::transport_error("webhook", &e))?;
        if (200..300).contains(&response.status) {
            return Ok(());
        }
        Err(super::classify_common("webhook", &response, ""))
    }
}

/// Longest recipient handle a device may register for the webhook.
pub const MAX_RECIPIENT_LEN: usize = 256;

/// The `callback` of the approve action; the service echoes the chosen
/// action's callback as `action`.
pub const APPROVE: &str = "approve";

/// The `callback` of the reject action.
pub const REJECT: &str = "reject";

/// What the old push service answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompatDecision {
    /// The user approved on an enrolled phone.
    Approve,
    /// The user rejected.
    Reject,
    /// No answer within the service's own wait (25 s): a normal 200.
    Timeout,
}

/// Why the old push service gave no decision. Every case means "deny".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompatError {
    /// 400: the service could not parse the request.
    #[error("the push service refused the request: {0}")]
    BadRequest(String),
    /// 403: API key missing or invalid, or the device is not approved.
    #[error("the push service denied access: {0}")]
    Forbidden(String),
    /// 404: no such user, or no enrolled device.
    #[error("the push service knows no device for the user: {0}")]
    NotFound(String),
    /// No answer within the caller's timeout, or a 408.
    #[error("the push service did not answer in time")]
    Timeout,
    /// 5xx: the service or its FCM delivery failed (502).
    #[error("the push service failed with status {status}: {message}")]
    Unavailable {
        /// The HTTP status.
        status: u16,
        /// The service's `errorCode` and `message`.
        message: String,
    },
    /// No HTTP answer (connection or TLS failure).
    #[error("cannot reach the push service: {0}")]
    Transport(String),
    /// An answer outside the contract.
    #[error("unexpected answer from the push service: {0}")]
    InvalidResponse(String),
}

/// A client of the old push service's `send-notification`. Cheap to clone.
#[derive(Clone)]
pub struct CompatClient {
    inner: Arc<CompatInner>,
}

struct CompatInner {
    http: HttpClient,
    url: String,
    apikey: Option<Secret>,
    client_id: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for CompatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompatClient")
            .field("url", &self.inner.url)
            .field("apikey", &self.inner.apikey)
            .field("client_id", &self.inner.client_id)
            .finish()
    }
}

impl CompatClient {
    /// A client of the service at `base_url`, sending `apikey` and
    /// `client_id` when given; `timeout` is the configured longest wait.
    pub fn new(
        http: HttpClient,
        base_url: &str,
        apikey: Option<Secret>,
        client_id: Option<String>,
        timeout: Duration,
    ) -> Self {
        let url = format!("{}/send-notification", base_url.trim_end_matches('/'));
        Self { inner: Arc::new(CompatInner { http, url, apikey, client_id, timeout }) }
    }

    /// The configured longest wait (`push.webhook.timeout_secs`); callers
    /// pass the smaller of it and what is left of their own deadline.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Asks the service to notify `username`'s phones with `title` and
    /// `body` and an Approve and a Reject action, and waits at most
    /// `timeout` for the decision.
    ///
    /// # Errors
    /// Any answer but a 200 decision, a transport failure, or the timeout;
    /// see [`CompatError`].
    pub async fn send_notification(
        &self,
        username: &str,
        title: &str,
        body: &str,
        timeout: Duration,
    ) -> Result<CompatDecision, CompatError> {
        let mut request = json!({
            "username": username,
            "title": title,
            "body": body,
            "actions": [
                { "title": "Approve", "callback": APPROVE },
                { "title": "Reject", "callback": REJECT },
            ],
        });
        if let Some(apikey) = &self.inner.apikey {
            request["apikey"] = apikey.expose().into();
        }
        if let Some(client_id) = &self.inner.client_id {
            request["client_id"] = client_id.as_str().into();
        }
        let headers = [("content-type", "application/json"), ("accept", "application/json")];
        let response =
            self.inner.http.post(&self.inner.url, &headers, request.to_string().into_bytes(), timeout).await.map_err(
                |e| if e.is_timeout() { CompatError::Timeout } else { CompatError::Transport(e.to_string()) },
            )?;
        let answer: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
        let message = || {
            let code = answer["errorCode"].as_str().map(|c| format!("{c}: ")).unwrap_or_default();
            super::excerpt(&format!("{code}{}", answer["message"].as_str().unwrap_or_default()))
        };
        match response.status {
            200 => {
                if answer["success"] != json!(true) {
                    return Err(CompatError::InvalidResponse(format!("200 without success: {}", message())));
                }
                match answer["action"].as_str() {
                    Some(APPROVE) => Ok(CompatDecision::Approve),
                    Some(REJECT) => Ok(CompatDecision::Reject),
                    Some("timeout") => Ok(CompatDecision::Timeout),
                    other => Err(CompatError::InvalidResponse(format!(
                        "unknown action {}",
                        super::excerpt(other.unwrap_or("(none)"))
                    ))),
                }
            }
            400 => Err(CompatError::BadRequest(message())),
            403 => Err(CompatError::Forbidden(message())),
            404 => Err(CompatError::NotFound(message())),
            408 => Err(CompatError::Timeout),
            status @ 500.. => Err(CompatError::Unavailable { status, message: message() }),
            status => Err(CompatError::InvalidResponse(format!("status {status}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::mock::{Mock, Reply};
    use crate::push::{RetryPolicy, send_with_retry};

    const SECRET: &str = "webhook-secret-0123456789";

    fn message() -> PushMessage {
        PushMessage::challenge("0190a3b4-7c1d-7e2f-8a9b-0c1d2e3f4a5b", 1_750_000_060).unwrap()
    }

    async fn generic(reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> (Mock, WebhookSender) {
        let (mock, http) = Mock::start(move |_, n| reply(n)).await;
        let url = format!("{}/hooks/portcullis", mock.url);
        let sender =
            WebhookSender::new(http, &url, &Secret::new(SECRET), "https://id.example.org", Duration::from_secs(5))
                .unwrap();
        (mock, sender)
    }

    #[test]
    fn signatures_match_an_independent_hmac_and_verify() {
        // RFC 4231 test case 2: key "Jefe".
        let known = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(known, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(verify_signature(b"Jefe", b"what do ya want for nothing?", &known));
        assert!(!verify_signature(b"Jefe", b"what do ya want for nothing!", &known));
        assert!(!verify_signature(b"Jeff", b"what do ya want for nothing?", &known));
        assert!(!verify_signature(b"Jefe", b"what do ya want for nothing?", &known[..70]));
        assert!(!verify_signature(b"Jefe", b"x", "sha256=zz"));
    }

    #[tokio::test]
    async fn generic_mode_posts_a_signed_challenge_and_retries_server_errors() {
        let (mock, sender) = generic(|n| if n < 2 { Reply::status(500) } else { Reply::status(204) }).await;
        let policy = RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        send_with_retry(
            &sender,
            &PushTarget::Webhook { recipient: "ext-user-7".into() },
            &message(),
            &policy,
            deadline,
        )
        .await
        .unwrap();
        let requests = mock.requests();
        assert_eq!(requests.len(), 3);
        for r in &requests {
            assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/hooks/portcullis"));
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_eq!(r.body, requests[0].body, "a retry changed the message");
            assert_eq!(r.header(SIGNATURE_HEADER).unwrap(), signature(SECRET.as_bytes(), &r.body));
        }
        let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
        assert_eq!(
            body,
            json!({
                "challenge_id": "0190a3b4-7c1d-7e2f-8a9b-0c1d2e3f4a5b", "recipient": "ext-user-7", "kind": "challenge",
                "server": "https://id.example.org", "expires_at": 1_750_000_060,
            })
        );

        let (mock, sender) = generic(|_| Reply::status(403)).await;
        let got = send_with_retry(
            &sender,
            &PushTarget::Webhook { recipient: "ext-user-7".into() },
            &message(),
            &policy,
            deadline,
        )
        .await;
        assert_eq!(got, Err(PushError::Rejected("webhook answered 403 ".into())));
        assert_eq!(mock.requests().len(), 1);
        assert!(sender.send(&PushTarget::Fcm { token: "x".into() }, &message()).await.is_err());
        assert!(
            WebhookSender::new(
                HttpClient::new().unwrap(),
                "https://x",
                &Secret::new("short"),
                "https://id",
                Duration::from_secs(1),
            )
            .is_err()
        );
    }

    async fn compat(
        apikey: Option<&str>,
        reply: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> (Mock, CompatClient) {
        let (mock, http) = Mock::start(move |_, n| reply(n)).await;
        let client = CompatClient::new(
            http,
            &format!("{}/", mock.url),
            apikey.map(Secret::new),
            apikey.map(|_| "portcullis".to_string()),
            Duration::from_secs(30),
        );
        (mock, client)
    }

    async fn ask(client: &CompatClient) -> Result<CompatDecision, CompatError> {
        client
            .send_notification(
                "alice",
                "Sign-in request",
                "Approve SSH login to web-42 from 203.0.113.7?",
                Duration::from_secs(5),
            )
            .await
    }

    #[tokio::test]
    async fn compat_mode_speaks_the_send_notification_contract() {
        let (mock, client) =
            compat(Some("k-secret-123"), |_| Reply::json(200, r#"{"success":true,"action":"approve"}"#)).await;
        assert_eq!(ask(&client).await, Ok(CompatDecision::Approve));
        let requests = mock.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!((requests[0].method.as_str(), requests[0].path.as_str()), ("POST", "/send-notification"));
        assert_eq!(requests[0].header("content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
        assert_eq!(
            body,
            json!({
                "username": "alice",
                "title": "Sign-in request",
                "body": "Approve SSH login to web-42 from 203.0.113.7?",
                "actions": [{ "title": "Approve", "callback": "approve" }, { "title": "Reject", "callback": "reject" }],
                "apikey": "k-secret-123",
                "client_id": "portcullis",
            })
        );
        assert!(!format!("{client:?}").contains("k-secret-123"), "the API key reached Debug output");

        // Without an API key the optional fields are absent.
        let (mock, client) = compat(None, |_| Reply::json(200, r#"{"success":true,"action":"reject"}"#)).await;
        assert_eq!(ask(&client).await, Ok(CompatDecision::Reject));
        let body: serde_json::Value = serde_json::from_slice(&mock.requests()[0].body).unwrap();
        assert!(body.get("apikey").is_none() && body.get("client_id").is_none(), "{body}");

        let (_mock, client) = compat(None, |_| Reply::json(200, r#"{"success":true,"action":"timeout"}"#)).await;
        assert_eq!(ask(&client).await, Ok(CompatDecision::Timeout));
    }

    #[tokio::test]
    async fn compat_mode_errors_deny() {
        let cases: [(u16, &str, CompatError); 6] = [
            (
                404,
                r#"{"success":false,"message":"No devices found","errorCode":"NO_DEVICES"}"#,
                CompatError::NotFound("NO_DEVICES: No devices found".into()),
            ),
            (
                403,
                r#"{"success":false,"message":"Invalid API key","errorCode":"INVALID_API_KEY"}"#,
                CompatError::Forbidden("INVALID_API_KEY: Invalid API key".into()),
            ),
            (400, r#"{"success":false,"message":"Missing fields"}"#, CompatError::BadRequest("Missing fields".into())),
            (408, r#"{"success":false,"message":"Timeout"}"#, CompatError::Timeout),
            (
                502,
                r#"{"success":false,"message":"FCM failed","errorCode":"FCM_ERROR"}"#,
                CompatError::Unavailable { status: 502, message: "FCM_ERROR: FCM failed".into() },
            ),
            (200, r#"{"success":true,"action":"maybe"}"#, CompatError::InvalidResponse("unknown action maybe".into())),
        ];
        for (status, body, expected) in cases {
            let (mock, client) = compat(None, move |_| Reply::json(status, body)).await;
            assert_eq!(ask(&client).await, Err(expected), "status {status}");
            assert_eq!(mock.requests().len(), 1, "a compat request was retried");
        }
    }

    #[tokio::test]
    async fn compat_mode_gives_up_on_a_hung_service() {
        let (mock, client) =
            compat(None, |_| Reply::json(200, r#"{"success":true,"action":"approve"}"#).after(Duration::from_secs(30)))
                .await;
        let start = std::time::Instant::now();
        let got = client.send_notification("alice", "t", "b", Duration::from_millis(500)).await;
        assert_eq!(got, Err(CompatError::Timeout));
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(500) && waited < Duration::from_secs(3), "{waited:?}");
        assert_eq!(mock.requests().len(), 1);
        assert_eq!(client.timeout(), Duration::from_secs(30));
    }
}
