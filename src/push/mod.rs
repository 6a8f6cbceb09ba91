//! Push senders: tell a user's device that a sign-in waits for its approval,
//! through Apple's APNs (`apns.rs`), Firebase Cloud Messaging HTTP v1
//! (`fcm.rs`), Web Push to a browser (`webpush.rs`) or an external
//! notification service (`webhook.rs`, which also speaks the old push
//! service's synchronous `send-notification` contract).
//!
//! A push carries only the challenge id and a fixed, generic title: no user
//! name, host, address or secret. The device fetches the details itself over
//! HTTPS with a signed request. So a retry ([`send_with_retry`]) re-sends the
//! very same message (same challenge id, which is also the collapse key) and
//! can never create a second challenge.
//!
//! This module owns the push services' wire protocols and credentials
//! (provider tokens, OAuth tokens, the VAPID key). It knows nothing about
//! challenges beyond their id nor about devices beyond their push address,
//! never touches the store, and logs no token, key or push address.

pub mod apns;
pub mod fcm;
mod jws;
pub mod webhook;
pub mod webpush;

#[cfg(test)]
pub(crate) mod mock;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::clock::SharedClock;
use crate::config::PushConfig;
use crate::outbound::{HttpClient, Response};
use crate::secrets::Sealer;

/// The title every push shows. Deliberately generic: a lock screen reveals
/// nothing about who signs in where.
pub const TITLE: &str = "Sign-in request";

/// The body every push shows.
pub const BODY: &str = "Open Portcullis to approve or deny it.";

/// Each HTTP exchange with a push service must finish within this; the
/// caller's overall deadline may cut it shorter.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest accepted challenge id: APNs caps `apns-collapse-id` at 64 bytes.
const MAX_CHALLENGE_ID_LEN: usize = 64;

/// What a push says: which challenge to fetch, until when it matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMessage {
    challenge_id: String,
    expires_at: i64,
}

impl PushMessage {
    /// The push for challenge `challenge_id`, which expires at `expires_at`
    /// (unix seconds; push services drop the message after that).
    ///
    /// # Errors
    /// `Rejected` if the id is empty, longer than 64 bytes, or not made of
    /// ASCII letters, digits, `-` and `_` (it travels in headers and URLs).
    pub fn challenge(challenge_id: impl Into<String>, expires_at: i64) -> Result<Self, PushError> {
        let challenge_id = challenge_id.into();
        let valid = !challenge_id.is_empty()
            && challenge_id.len() <= MAX_CHALLENGE_ID_LEN
            && challenge_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(PushError::Rejected("invalid challenge id".into()));
        }
        Ok(Self { challenge_id, expires_at })
    }

    /// The challenge id: the only payload, also the collapse key.
    pub fn challenge_id(&self) -> &str {
        &self.challenge_id
    }

    /// The generic title shown by the device.
    pub fn title(&self) -> &'static str {
        TITLE
    }

    /// When the challenge expires (unix seconds).
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// Seconds the push service should keep trying to deliver, from `now`.
    fn ttl(&self, now: i64) -> i64 {
        (self.expires_at - now).max(0)
    }
}

/// A device's push address, as the device registered it.
#[derive(Clone, PartialEq, Eq)]
pub enum PushTarget {
    /// An iOS app's APNs device token (hex).
    Apns {
        /// The device token.
        token: String,
    },
    /// An Android (or iOS) app's FCM registration token.
    Fcm {
        /// The registration token.
        token: String,
    },
    /// A browser's `PushSubscription` (as `toJSON()` gives it).
    WebPush {
        /// The push service URL to POST to.
        endpoint: String,
        /// The subscription's P-256 public key, base64url (65-byte point).
        p256dh: String,
        /// The subscription's 16-byte authentication secret, base64url.
        auth: String,
    },
    /// The configured webhook (generic mode); `recipient` is whatever the
    /// external service registered for the device (its own user or device
    /// handle), passed back to it in every POST.
    Webhook {
        /// Opaque to Portcullis; may be empty.
        recipient: String,
    },
}

/// Push addresses are credentials of a sort (anyone holding one and the
/// provider key can wake the device): `Debug` shows only the kind.
impl std::fmt::Debug for PushTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PushTarget::{}(..)", self.kind())
    }
}

impl PushTarget {
    /// The sender kind: `apns`, `fcm`, `webpush` or `webhook`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Apns { .. } => "apns",
            Self::Fcm { .. } => "fcm",
            Self::WebPush { .. } => "webpush",
            Self::Webhook { .. } => "webhook",
        }
    }

    /// Checks the address's shape, for device registration: a hex APNs
    /// token, a plausible FCM token, an https Web Push endpoint with a
    /// 65-byte P-256 key and a 16-byte auth secret. (Whether a Web Push
    /// endpoint's host is allowed is checked by the sender.)
    ///
    /// # Errors
    /// `Rejected` with what is wrong.
    pub fn validate(&self) -> Result<(), PushError> {
        let ok = match self {
            Self::Apns { token } => apns::valid_token(token),
            Self::Fcm { token } => fcm::valid_token(token),
            Self::WebPush { endpoint, p256dh, auth } => webpush::Subscription::parse(endpoint, p256dh, auth).is_ok(),
            Self::Webhook { recipient } => {
                recipient.len() <= webhook::MAX_RECIPIENT_LEN && !recipient.chars().any(char::is_control)
            }
        };
        if ok { Ok(()) } else { Err(PushError::Rejected(format!("malformed {} push address", self.kind()))) }
    }

    /// The plain form stored (sealed) with a device: the token for APNs and
    /// FCM, the subscription as compact JSON for Web Push, empty for the
    /// webhook.
    pub fn to_stored(&self) -> String {
        match self {
            Self::Apns { token } | Self::Fcm { token } => token.clone(),
            Self::WebPush { endpoint, p256dh, auth } => {
                serde_json::json!({ "endpoint": endpoint, "keys": { "p256dh": p256dh, "auth": auth } }).to_string()
            }
            Self::Webhook { recipient } => recipient.clone(),
        }
    }

    /// Reads back what [`PushTarget::to_stored`] wrote for `kind`; `None`
    /// for poll-mode devices (`none`) and anything malformed.
    pub fn from_stored(kind: &str, plain: &str) -> Option<Self> {
        let target = match kind {
            "apns" => Self::Apns { token: plain.to_string() },
            "fcm" => Self::Fcm { token: plain.to_string() },
            "webhook" => Self::Webhook { recipient: plain.to_string() },
            "webpush" => {
                let v: serde_json::Value = serde_json::from_str(plain).ok()?;
                let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
                Self::WebPush {
                    endpoint: text(&v["endpoint"])?,
                    p256dh: text(&v["keys"]["p256dh"])?,
                    auth: text(&v["keys"]["auth"])?,
                }
            }
            _ => return None,
        };
        target.validate().is_ok().then_some(target)
    }
}

/// Why a push was not delivered; decides whether to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The push address is no longer valid (app uninstalled, token expired,
    /// subscription gone): the caller drops it. Never retried.
    #[error("the push address is no longer valid")]
    Unregistered,
    /// The push service asks to slow down; retried after `retry_after` (or
    /// the backoff when it gave none).
    #[error("rate limited by the push service")]
    RateLimited {
        /// The service's Retry-After, if it sent one.
        retry_after: Option<Duration>,
    },
    /// A 5xx answer, a network failure or a timeout; retried with backoff.
    #[error("temporary push failure: {0}")]
    Transient(String),
    /// Any other refusal (bad request, bad credentials, sender not
    /// configured): retrying would not help.
    #[error("push refused: {0}")]
    Rejected(String),
}

impl PushError {
    /// Whether [`send_with_retry`] tries again after this error.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Transient(_))
    }
}

/// Something that delivers a push to one device. The concrete senders and
/// [`Senders`] (which routes by target kind) implement it; tests of callers
/// can implement it with a fake.
pub trait PushSender: Send + Sync {
    /// Makes one delivery attempt.
    ///
    /// # Errors
    /// See [`PushError`]: each variant says whether to retry.
    fn send(&self, target: &PushTarget, message: &PushMessage) -> impl Future<Output = Result<(), PushError>> + Send;
}

/// How often and how patiently [`send_with_retry`] tries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Pause before the first retry; doubles with each retry.
    pub initial_backoff: Duration,
    /// Longest pause between two attempts (a Retry-After may be longer, as
    /// long as it ends before the deadline).
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::from_config(&PushConfig::default())
    }
}

impl RetryPolicy {
    /// The policy in the `[push]` configuration.
    pub fn from_config(config: &PushConfig) -> Self {
        Self {
            max_attempts: config.max_attempts.max(1),
            initial_backoff: Duration::from_millis(config.initial_backoff_ms),
            max_backoff: Duration::from_millis(config.max_backoff_ms),
        }
    }

    /// The pause after failed attempt number `attempt` (1-based): the
    /// exponential backoff plus up to 20 % random jitter, so that many
    /// pushes failing together do not retry in lockstep.
    fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(16);
        let base = self.initial_backoff.saturating_mul(1 << exponent).min(self.max_backoff);
        let jitter = rand::thread_rng().gen_range(0.0..0.2);
        base + base.mul_f64(jitter)
    }
}

/// Sends `message` to `target`, retrying `Transient` and `RateLimited`
/// failures with exponential backoff (honouring Retry-After), at most
/// `policy.max_attempts` times in all and never past `deadline`. Every
/// attempt sends the same message, so the device sees one challenge however
/// many attempts it took (the push services collapse on the challenge id).
///
/// # Errors
/// `Unregistered` or `Rejected` at once; otherwise the last failure once the
/// attempts or the time are used up (`Transient` when the deadline cut an
/// attempt short).
pub async fn send_with_retry<S: PushSender + ?Sized>(
    sender: &S,
    target: &PushTarget,
    message: &PushMessage,
    policy: &RetryPolicy,
    deadline: tokio::time::Instant,
) -> Result<(), PushError> {
    let kind = target.kind();
    let challenge = message.challenge_id();
    let mut attempt = 0;
    loop {
        if tokio::time::Instant::now() >= deadline {
            // Not even started: an attempt cut off mid-request helps no one.
            return Err(PushError::Transient("the deadline passed before the attempt".into()));
        }
        attempt += 1;
        let result = match tokio::time::timeout_at(deadline, sender.send(target, message)).await {
            Ok(result) => result,
            Err(_) => Err(PushError::Transient("the deadline passed during the attempt".into())),
        };
        let error = match result {
            Ok(()) => {
                tracing::debug!(kind, challenge, attempt, "push delivered");
                return Ok(());
            }
            Err(e) => e,
        };
        if !error.is_retryable() {
            tracing::warn!(kind, challenge, attempt, error = %error, "push not delivered");
            return Err(error);
        }
        if attempt >= policy.max_attempts.max(1) {
            tracing::warn!(kind, challenge, attempt, error = %error, "push not delivered; no attempts left");
            return Err(error);
        }
        let pause = match &error {
            PushError::RateLimited { retry_after: Some(after) } => *after,
            _ => policy.backoff(attempt),
        };
        if tokio::time::Instant::now() + pause >= deadline {
            tracing::warn!(kind, challenge, attempt, error = %error, "push not delivered before the deadline");
            return Err(error);
        }
        tracing::info!(kind, challenge, attempt, error = %error, pause_ms = pause.as_millis(), "push failed; will retry");
        tokio::time::sleep(pause).await;
    }
}

/// The configured senders, routing each push by its target's kind. Cheap to
/// clone; built once at start-up.
#[derive(Debug, Clone, Default)]
pub struct Senders {
    inner: Arc<SendersInner>,
}

#[derive(Debug, Default)]
struct SendersInner {
    apns: Option<apns::ApnsSender>,
    fcm: Option<fcm::FcmSender>,
    webpush: Option<webpush::WebPushSender>,
    webhook: Option<webhook::WebhookSender>,
    compat: Option<webhook::CompatClient>,
    retry: RetryPolicy,
}

impl Senders {
    /// Builds every sender the `[push]` section enables: reads the APNs key,
    /// the FCM service account and the webhook secret, and loads or creates
    /// the VAPID key (`data_dir/vapid.sealed`, sealed with `sealer`).
    /// `server_url` (the issuer) is what generic webhooks are told to call back.
    ///
    /// # Errors
    /// An unreadable or invalid key file, service account or secret.
    pub fn from_config(
        config: &PushConfig,
        data_dir: &Path,
        server_url: &str,
        http: &HttpClient,
        sealer: &Sealer,
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        let apns = apns::ApnsSender::from_config(&config.apns, http, clock.clone())?;
        let fcm = fcm::FcmSender::from_config(&config.fcm, http, clock.clone())?;
        let webpush = webpush::WebPushSender::from_config(&config.webpush, data_dir, sealer, http, clock)?;
        let (webhook, compat) = webhook::from_config(&config.webhook, server_url, http)?;
        let inner = SendersInner { apns, fcm, webpush, webhook, compat, retry: RetryPolicy::from_config(config) };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Whether pushes to targets of `kind` (see [`PushTarget::kind`]) can be sent.
    pub fn supports(&self, kind: &str) -> bool {
        match kind {
            "apns" => self.inner.apns.is_some(),
            "fcm" => self.inner.fcm.is_some(),
            "webpush" => self.inner.webpush.is_some(),
            "webhook" => self.inner.webhook.is_some(),
            _ => false,
        }
    }

    /// Checks a push address a device wants to register: its shape (see
    /// [`PushTarget::validate`]), that its kind is configured, and for Web
    /// Push that the endpoint's host is allowed.
    ///
    /// # Errors
    /// `Rejected` with the reason.
    pub fn check_target(&self, target: &PushTarget) -> Result<(), PushError> {
        target.validate()?;
        if !self.supports(target.kind()) {
            return Err(PushError::Rejected(format!("{} push is not configured", target.kind())));
        }
        if let (PushTarget::WebPush { endpoint, p256dh, auth }, Some(sender)) = (target, &self.inner.webpush) {
            sender.check_endpoint(&webpush::Subscription::parse(endpoint, p256dh, auth)?)?;
        }
        Ok(())
    }

    /// The VAPID public key (base64url, uncompressed P-256 point) a browser
    /// passes as `applicationServerKey` when subscribing; `None` when Web
    /// Push is off.
    pub fn vapid_public_key(&self) -> Option<&str> {
        self.inner.webpush.as_ref().map(webpush::WebPushSender::public_key)
    }

    /// The generic webhook sender, when configured (it also checks the
    /// signatures of decision callbacks).
    pub fn webhook(&self) -> Option<&webhook::WebhookSender> {
        self.inner.webhook.as_ref()
    }

    /// The old push service's client, when the webhook runs in compat mode.
    pub fn compat(&self) -> Option<&webhook::CompatClient> {
        self.inner.compat.as_ref()
    }

    /// The configured retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// [`send_with_retry`] with the configured policy.
    ///
    /// # Errors
    /// As [`send_with_retry`].
    pub async fn deliver(
        &self,
        target: &PushTarget,
        message: &PushMessage,
        deadline: tokio::time::Instant,
    ) -> Result<(), PushError> {
        send_with_retry(self, target, message, &self.inner.retry, deadline).await
    }
}

impl PushSender for Senders {
    async fn send(&self, target: &PushTarget, message: &PushMessage) -> Result<(), PushError> {
        let off = || PushError::Rejected(format!("{} push is not configured", target.kind()));
        match target {
            PushTarget::Apns { .. } => self.inner.apns.as_ref().ok_or_else(off)?.send(target, message).await,
            PushTarget::Fcm { .. } => self.inner.fcm.as_ref().ok_or_else(off)?.send(target, message).await,
            PushTarget::WebPush { .. } => self.inner.webpush.as_ref().ok_or_else(off)?.send(target, message).await,
            PushTarget::Webhook { .. } => self.inner.webhook.as_ref().ok_or_else(off)?.send(target, message).await,
        }
    }
}

/// Maps a transport failure (no HTTP answer) to a retryable error.
fn transport_error(service: &str, e: &crate::outbound::OutboundError) -> PushError {
    PushError::Transient(format!("{service}: {e}"))
}

/// A `Retry-After` given in seconds (the HTTP-date form is treated as
/// absent), capped at an hour.
fn retry_after(response: &Response) -> Option<Duration> {
    let secs: u64 = response.header("retry-after")?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

/// The classification every push service shares: 429 → `RateLimited`,
/// 5xx → `Transient`, anything else → `Rejected` with the status and a
/// short, printable excerpt of `detail`.
fn classify_common(service: &str, response: &Response, detail: &str) -> PushError {
    match response.status {
        429 => PushError::RateLimited { retry_after: retry_after(response) },
        500.. => PushError::Transient(format!("{service} answered {}", response.status)),
        status => PushError::Rejected(format!("{service} answered {status} {}", excerpt(detail))),
    }
}

/// At most 200 characters of `s`, control characters removed, for messages.
fn excerpt(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn webhook_target() -> PushTarget {
        PushTarget::Webhook { recipient: "ext-user-7".into() }
    }

    /// A sender that fails with scripted errors, then succeeds.
    struct Scripted {
        errors: Mutex<Vec<PushError>>,
        seen: Mutex<Vec<PushMessage>>,
    }

    impl Scripted {
        fn new(mut errors: Vec<PushError>) -> Self {
            errors.reverse();
            Self { errors: Mutex::new(errors), seen: Mutex::new(Vec::new()) }
        }
        fn attempts(&self) -> usize {
            self.seen.lock().unwrap().len()
        }
    }

    impl PushSender for Scripted {
        async fn send(&self, _: &PushTarget, message: &PushMessage) -> Result<(), PushError> {
            self.seen.lock().unwrap().push(message.clone());
            match self.errors.lock().unwrap().pop() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
        }
    }

    fn message() -> PushMessage {
        PushMessage::challenge("0190a3b4-7c1d-7e2f-8a9b-0c1d2e3f4a5b", 2_000_000_000).unwrap()
    }

    #[test]
    fn messages_carry_only_a_safe_challenge_id() {
        for bad in ["", "a b", "x\r\nInjected: 1", "ä", &"a".repeat(65)] {
            assert!(PushMessage::challenge(bad, 0).is_err(), "accepted {bad:?}");
        }
        let m = message();
        assert_eq!(m.challenge_id(), "0190a3b4-7c1d-7e2f-8a9b-0c1d2e3f4a5b");
        assert_eq!(m.title(), "Sign-in request");
        assert_eq!(m.ttl(2_000_000_000 - 60), 60);
        assert_eq!(m.ttl(2_000_000_100), 0);
    }

    #[test]
    fn targets_validate_and_hide_addresses() {
        let apns = PushTarget::Apns { token: "ab12".repeat(16) };
        assert!(apns.validate().is_ok());
        assert!(PushTarget::Apns { token: "not hex".into() }.validate().is_err());
        assert!(PushTarget::Fcm { token: "bad token\n".into() }.validate().is_err());
        assert!(PushTarget::Fcm { token: "dGVzdA:APA91b-_x".into() }.validate().is_ok());
        assert!(
            PushTarget::WebPush { endpoint: "http://push.example/x".into(), p256dh: "AA".into(), auth: "AA".into() }
                .validate()
                .is_err()
        );
        assert_eq!(format!("{apns:?}"), "PushTarget::apns(..)");
    }

    #[tokio::test]
    async fn retries_transient_and_rate_limited_with_the_same_message() {
        let sender = Scripted::new(vec![
            PushError::Transient("503".into()),
            PushError::RateLimited { retry_after: Some(Duration::from_millis(300)) },
            PushError::Transient("reset".into()),
        ]);
        let start = tokio::time::Instant::now();
        let target = webhook_target();
        send_with_retry(&sender, &target, &message(), &policy(), start + Duration::from_secs(30)).await.unwrap();
        assert_eq!(sender.attempts(), 4);
        assert!(sender.seen.lock().unwrap().iter().all(|m| *m == message()), "a retry changed the message");
        // 100 ms (+jitter) backoff, the 300 ms Retry-After, then 400 ms (+jitter): exponential, capped.
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(800) && waited < Duration::from_millis(1300), "{waited:?}");
    }

    #[tokio::test]
    async fn never_retries_unregistered_or_rejected() {
        for error in [PushError::Unregistered, PushError::Rejected("400".into())] {
            let sender = Scripted::new(vec![error.clone()]);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let got = send_with_retry(&sender, &webhook_target(), &message(), &policy(), deadline).await;
            assert_eq!(got, Err(error));
            assert_eq!(sender.attempts(), 1);
        }
    }

    #[tokio::test]
    async fn stops_at_max_attempts_and_at_the_deadline() {
        let always = || (0..10).map(|_| PushError::Transient("503".into())).collect::<Vec<_>>();
        let sender = Scripted::new(always());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let quick = RetryPolicy { initial_backoff: Duration::from_millis(5), ..policy() };
        let got = send_with_retry(&sender, &webhook_target(), &message(), &quick, deadline).await;
        assert_eq!(got, Err(PushError::Transient("503".into())));
        assert_eq!(sender.attempts(), 4);

        // A deadline of 250 ms leaves room for two retries at most (100 ms, then 200 ms is too long).
        let sender = Scripted::new(always());
        let start = tokio::time::Instant::now();
        let got =
            send_with_retry(&sender, &webhook_target(), &message(), &policy(), start + Duration::from_millis(250))
                .await;
        assert!(got.is_err());
        assert_eq!(sender.attempts(), 2);
        assert!(start.elapsed() < Duration::from_millis(250));

        // A Retry-After beyond the deadline ends at once, without waiting.
        let sender = Scripted::new(vec![PushError::RateLimited { retry_after: Some(Duration::from_secs(60)) }]);
        let start = tokio::time::Instant::now();
        let got =
            send_with_retry(&sender, &webhook_target(), &message(), &policy(), start + Duration::from_secs(10)).await;
        assert_eq!(got, Err(PushError::RateLimited { retry_after: Some(Duration::from_secs(60)) }));
        assert_eq!(sender.attempts(), 1);
        assert!(start.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn unconfigured_kinds_are_refused() {
        let senders = Senders::default();
        assert!(!senders.supports("apns"));
        assert!(senders.vapid_public_key().is_none() && senders.compat().is_none());
        let got = senders.send(&PushTarget::Apns { token: "ab".repeat(32) }, &message()).await;
        assert_eq!(got, Err(PushError::Rejected("apns push is not configured".into())));
    }

    #[test]
    fn senders_from_config_enable_only_what_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::load_or_create(dir.path()).unwrap();
        let http = HttpClient::new().unwrap();
        let clock: SharedClock = Arc::new(crate::clock::ManualClock::new(1_700_000_000));
        let none = Senders::from_config(
            &PushConfig::default(),
            dir.path(),
            "https://id.example",
            &http,
            &sealer,
            clock.clone(),
        )
        .unwrap();
        assert!(["apns", "fcm", "webpush", "webhook"].iter().all(|k| !none.supports(k)));
        assert!(!dir.path().join("vapid.sealed").exists(), "a VAPID key was made without Web Push");

        let mut config = PushConfig::default();
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.path().join("AuthKey.p8"), key.serialize_pem()).unwrap();
        config.apns.key_file = Some(dir.path().join("AuthKey.p8"));
        config.apns.team_id = Some("TEAM123456".into());
        config.apns.key_id = Some("KEY1234567".into());
        config.apns.topic = Some("org.example.app".into());
        let account = fcm::tests::service_account_json("https://oauth2.example/token").0;
        std::fs::write(dir.path().join("sa.json"), account).unwrap();
        config.fcm.service_account_file = Some(dir.path().join("sa.json"));
        config.webpush.subject = Some("mailto:admin@example.org".into());
        std::fs::write(dir.path().join("hook.secret"), "  0123456789abcdef0123\n").unwrap();
        config.webhook.url = Some("https://hooks.example/push".into());
        config.webhook.secret_file = Some(dir.path().join("hook.secret"));
        let all = Senders::from_config(&config, dir.path(), "https://id.example", &http, &sealer, clock).unwrap();
        assert!(["apns", "fcm", "webpush", "webhook"].iter().all(|k| all.supports(k)));
        assert_eq!(all.vapid_public_key().map(str::len), Some(87), "65 bytes in base64url");
        assert!(all.compat().is_none());
        assert_eq!(all.retry_policy().max_attempts, 4);

        // Registration checks: shape, kind configured, Web Push host allowed.
        let apns = PushTarget::Apns { token: "ab".repeat(32) };
        assert!(all.check_target(&apns).is_ok());
        assert_eq!(none.check_target(&apns), Err(PushError::Rejected("apns push is not configured".into())));
        let key = URL_SAFE_NO_PAD.encode(rcgen::KeyPair::generate().unwrap().public_key_raw());
        let subscription = |endpoint: &str| PushTarget::WebPush {
            endpoint: endpoint.into(),
            p256dh: key.clone(),
            auth: URL_SAFE_NO_PAD.encode([7u8; 16]),
        };
        assert!(all.check_target(&subscription("https://fcm.googleapis.com/fcm/send/abc")).is_ok());
        assert!(all.check_target(&subscription("https://wns2-par02p.notify.windows.com/w/?token=x")).is_ok());
        assert!(all.check_target(&subscription("https://169.254.169.254/latest")).is_err());
        assert!(all.check_target(&PushTarget::Fcm { token: "a b".into() }).is_err());
    }
}
