//! The device API: what an approval device (a phone app, the browser
//! approval page, the reference device `portcullis device`) calls.
//!
//! - `POST /api/mfa/enroll`: a one-time enrollment token buys the
//!   registration of the device's own P-256 public key (and, optionally, a
//!   push address, sealed at rest).
//! - Every other call is a signed request ([`SignedRequest`]): the device
//!   names itself, the time, and signs the method, path, time and body with
//!   its key. Unknown devices, bad signatures and clocks off by more than
//!   [`MAX_CLOCK_SKEW_SECS`] get 401.
//! - `GET /api/mfa/challenges[?wait=SECS]` (long poll, at most
//!   [`MAX_WAIT_SECS`]), `GET /api/mfa/challenges/{id}`,
//!   `POST /api/mfa/challenges/{id}/answer` with a decision signed
//!   separately over [`device::decision_message`].
//!
//! This module parses, checks signatures and shapes JSON; whether an answer
//! counts (one per challenge, the right user, before expiry) is decided by
//! [`crate::mfa`]. It never logs tokens, keys, signatures or push addresses.
//!
//! Stored push addresses (plain form, before sealing): the token for `apns`
//! and `fcm`; for `webpush` the subscription as compact JSON
//! `{"endpoint":…,"keys":{"p256dh":…,"auth":…}}`; for `webhook` the string
//! the device gave (possibly empty).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequest, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::SocketAddr;

use super::AppState;
use crate::mfa::challenge::{AnswerError, Challenge, Outcome};
use crate::mfa::device::{self, DEVICE_HEADER, MAX_CLOCK_SKEW_SECS, SIGNATURE_HEADER, TIMESTAMP_HEADER, Verdict};
use crate::push::PushTarget;
use crate::store::MfaDevice;

/// Largest request body the device API reads (a Web Push subscription is
/// well under 1 KiB).
const MAX_BODY_BYTES: usize = 8 * 1024;
/// Longest long poll; below the server's 30 s request deadline.
const MAX_WAIT_SECS: u64 = 25;
/// Longest device name, in characters.
const MAX_NAME_CHARS: usize = 64;
/// Longest enrollment token, device id or challenge id accepted.
const MAX_ID_LEN: usize = 128;
/// Longest signature accepted (a P-256 `r || s` signature is 86 characters).
const MAX_SIGNATURE_LEN: usize = 128;
/// Longest push address (its plain form).
const MAX_PUSH_ADDRESS_LEN: usize = 2048;

/// The device API's routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/mfa/enroll", post(enroll))
        .route("/api/mfa/challenges", get(list))
        .route("/api/mfa/challenges/{id}", get(one))
        .route("/api/mfa/challenges/{id}/answer", post(answer))
        .route("/api/mfa/webhook/decision", post(webhook_decision))
}

/// An API error: a status and `{"error": message}`.
#[derive(Debug)]
pub(super) struct ApiError(StatusCode, &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        no_store((self.0, Json(json!({ "error": self.1 }))).into_response())
    }
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn unauthorized(why: &'static str) -> ApiError {
    ApiError(StatusCode::UNAUTHORIZED, why)
}

fn bad_request(why: &'static str) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, why)
}

fn internal(e: &impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "device API: store error");
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// Whether `ts` is within [`MAX_CLOCK_SKEW_SECS`] of `now`.
fn fresh(ts: i64, now: i64) -> bool {
    ts.abs_diff(now) <= MAX_CLOCK_SKEW_SECS.unsigned_abs()
}

/// The name of `user_id` if that user exists and may sign in.
fn active_user(state: &AppState, user_id: &str) -> Option<String> {
    let snap = state.identity.directory.load();
    let entry = snap.user_by_id(user_id)?;
    let account = snap.account(&entry.ndn)?;
    (!account.disabled).then(|| account.name.clone())
}

/// A request whose signature checked out: the device that signed it, its
/// user's name, and the body (at most [`MAX_BODY_BYTES`]). As an extractor
/// it consumes the body, so it comes last among a handler's arguments.
pub(super) struct SignedRequest {
    pub(super) device: MfaDevice,
    pub(super) username: String,
    pub(super) body: Bytes,
}

impl FromRequest<AppState> for SignedRequest {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|_| ApiError(StatusCode::PAYLOAD_TOO_LARGE, "request body too large or unreadable"))?;
        let path = parts.uri.path_and_query().map_or_else(|| parts.uri.path(), |p| p.as_str());
        let (device, username) = verify_request(state, parts.method.as_str(), path, &parts.headers, &body).await?;
        Ok(Self { device, username, body })
    }
}

/// Checks a device request's signature headers against
/// [`device::request_message`]: the device must exist and belong to an
/// active user, the timestamp must be within [`MAX_CLOCK_SKEW_SECS`], the
/// signature must verify with the device's key. Records the device as seen.
///
/// # Errors
/// 401 for anything that does not check out (500 on store errors).
pub(super) async fn verify_request(
    state: &AppState,
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(MfaDevice, String), ApiError> {
    const REFUSED: &str = "unknown device or bad request signature";
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(device_id), Some(ts), Some(signature)) =
        (header(DEVICE_HEADER), header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER))
    else {
        return Err(unauthorized("missing device signature headers"));
    };
    if device_id.len() > MAX_ID_LEN || signature.len() > MAX_SIGNATURE_LEN {
        return Err(unauthorized(REFUSED));
    }
    let Ok(ts) = ts.trim().parse::<i64>() else { return Err(unauthorized("malformed timestamp header")) };
    let now = state.identity.clock.now();
    if !fresh(ts, now) {
        return Err(unauthorized("request timestamp too far from the server's clock"));
    }
    let store = &state.identity.store;
    let Some(device) = store.device(device_id).await.map_err(|e| internal(&e))? else {
        tracing::info!(device = %device_id, "device API: unknown device");
        return Err(unauthorized(REFUSED));
    };
    if !device::verify(&device.public_key, &device::request_message(method, path_and_query, ts, body), signature) {
        tracing::info!(device = %device.id, "device API: bad request signature");
        return Err(unauthorized(REFUSED));
    }
    let Some(username) = active_user(state, &device.user_id) else {
        tracing::info!(device = %device.id, "device API: the device's user is disabled or gone");
        return Err(unauthorized(REFUSED));
    };
    if let Err(e) = store.touch_device(&device.id, now).await {
        tracing::warn!(error = %e, device = %device.id, "cannot record device last-seen time");
    }
    Ok((device, username))
}

/// `POST /api/mfa/enroll` body.
#[derive(Debug, Deserialize)]
struct EnrollBody {
    token: String,
    public_key: String,
    name: String,
    #[serde(default)]
    push: Option<PushBody>,
}

/// The optional push address of an enrolling device.
#[derive(Debug, Deserialize)]
struct PushBody {
    kind: String,
    #[serde(default)]
    address: Value,
}

/// Checks a device name: 1 to [`MAX_NAME_CHARS`] characters, no control
/// characters; surrounding white space is dropped.
fn valid_name(name: &str) -> Option<String> {
    let name = name.trim();
    let len = name.chars().count();
    (len > 0 && len <= MAX_NAME_CHARS && !name.chars().any(char::is_control)).then(|| name.to_string())
}

/// The push kind and plain address to seal, after checking its shape.
fn push_address(push: Option<PushBody>) -> Result<Option<(String, String)>, ApiError> {
    let Some(push) = push else { return Ok(None) };
    let target = match (push.kind.as_str(), &push.address) {
        ("none", Value::Null) => return Ok(None),
        ("apns", Value::String(token)) => PushTarget::Apns { token: token.clone() },
        ("fcm", Value::String(token)) => PushTarget::Fcm { token: token.clone() },
        ("webpush", Value::Object(sub)) => {
            let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
            let keys = sub.get("keys");
            let (Some(endpoint), Some(p256dh), Some(auth)) = (
                text(sub.get("endpoint")),
                text(keys.and_then(|k| k.get("p256dh"))),
                text(keys.and_then(|k| k.get("auth"))),
            ) else {
                return Err(bad_request("a webpush address is a subscription {endpoint, keys: {p256dh, auth}}"));
            };
            PushTarget::WebPush { endpoint, p256dh, auth }
        }
        ("webhook", Value::Null) => PushTarget::Webhook { recipient: String::new() },
        ("webhook", Value::String(recipient)) => PushTarget::Webhook { recipient: recipient.clone() },
        ("apns" | "fcm" | "webpush", _) => return Err(bad_request("malformed push address")),
        _ => return Err(bad_request("push kind must be apns, fcm, webpush, webhook or none")),
    };
    if target.validate().is_err() {
        return Err(bad_request("malformed push address"));
    }
    let plain = target.to_stored();
    if plain.len() > MAX_PUSH_ADDRESS_LEN {
        return Err(bad_request("push address too long"));
    }
    Ok(Some((target.kind().to_string(), plain)))
}

async fn enroll(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|_| ApiError(StatusCode::PAYLOAD_TOO_LARGE, "request body too large or unreadable"))?;
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"));
    }
    let req: EnrollBody =
        serde_json::from_slice(&body).map_err(|_| bad_request("expected JSON {token, public_key, name, push}"))?;
    // Everything is checked before the token is spent, so a malformed
    // request does not burn it.
    if req.token.is_empty() || req.token.len() > MAX_ID_LEN {
        return Err(bad_request("invalid, used or expired enrollment token"));
    }
    if !device::valid_public_key(&req.public_key) {
        return Err(bad_request("public_key must be a P-256 point (SEC1 uncompressed, base64url)"));
    }
    let Some(name) = valid_name(&req.name) else {
        return Err(bad_request("name must be 1 to 64 printable characters"));
    };
    let push = push_address(req.push)?;
    let mfa = &state.identity.mfa;
    let (push_kind, sealed) = match push {
        Some((kind, plain)) => (kind, Some(mfa.seal_push_address(&plain).map_err(|e| internal(&e))?)),
        None => ("none".to_string(), None),
    };
    let store = &state.identity.store;
    let now = state.identity.clock.now();
    let hash = crate::oidc::hash_client_secret(&req.token);
    let Some(user_id) = store.claim_enrollment(&hash, now).await.map_err(|e| internal(&e))? else {
        return Err(bad_request("invalid, used or expired enrollment token"));
    };
    let Some(username) = active_user(&state, &user_id) else {
        return Err(bad_request("this account cannot enroll devices"));
    };
    let device = MfaDevice {
        id: uuid::Uuid::new_v4().to_string(),
        user_id,
        name,
        public_key: req.public_key,
        push_kind,
        push_address: sealed,
        created_at: now,
        last_seen_at: Some(now),
    };
    store.add_device(&device).await.map_err(|e| internal(&e))?;
    let source = super::client_ip(&state.identity.config.http.trusted_proxies, peer.ip(), &headers);
    let detail = format!("device {} {:?} (push: {})", device.id, device.name, device.push_kind);
    if let Err(e) =
        store.audit_event(&username, "mfa.device_enrolled", &username, &source.to_string(), &detail, now).await
    {
        tracing::error!(error = %e, "cannot write an audit row");
    }
    tracing::info!(user = %username, device = %device.id, push = %device.push_kind, "approval device enrolled");
    let issuer = state.identity.config.http.issuer();
    Ok(no_store((StatusCode::CREATED, Json(json!({ "device_id": device.id, "issuer": issuer }))).into_response()))
}

/// A challenge as devices see it.
fn challenge_json(c: &Challenge) -> Value {
    let state = match c.outcome() {
        Outcome::Pending => "pending",
        Outcome::Approved { .. } => "approved",
        Outcome::Denied { .. } => "denied",
        Outcome::Expired => "expired",
    };
    json!({
        "id": c.id,
        "what": c.purpose.describe(),
        "source": c.source.map(|ip| ip.to_string()),
        "created_at": c.created_at,
        "expires_at": c.expires_at,
        "choices": c.choices,
        "state": state,
    })
}

/// `?wait=SECS`: how long to hold the request open, at most [`MAX_WAIT_SECS`].
fn parse_wait(query: Option<&str>) -> Result<Duration, ApiError> {
    let mut wait = 0;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key == "wait" {
            wait = value.parse::<u64>().map_err(|_| bad_request("wait must be a number of seconds"))?;
        }
    }
    Ok(Duration::from_secs(wait.min(MAX_WAIT_SECS)))
}

async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    signed: SignedRequest,
) -> Result<Response, ApiError> {
    if query.as_ref().is_some_and(|q| q.len() > 256) {
        return Err(bad_request("query too long"));
    }
    let wait = parse_wait(query.as_deref())?;
    let challenges = &state.identity.mfa.challenges;
    let mut news = challenges.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    let open = loop {
        // Mark the news seen before looking, so a challenge made in between
        // wakes the wait below.
        news.borrow_and_update();
        let open = challenges.open_for(&signed.device.user_id);
        if !open.is_empty() || tokio::time::Instant::now() >= deadline {
            break open;
        }
        match tokio::time::timeout_at(deadline, news.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => break challenges.open_for(&signed.device.user_id),
        }
    };
    let list: Vec<Value> = open.iter().map(|c| challenge_json(c)).collect();
    Ok(no_store(Json(json!({ "challenges": list })).into_response()))
}

async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
    signed: SignedRequest,
) -> Result<Response, ApiError> {
    let not_found = ApiError(StatusCode::NOT_FOUND, "no such challenge");
    if id.len() > MAX_ID_LEN {
        return Err(not_found);
    }
    let Some(c) = state.identity.mfa.challenges.get(&id, &signed.device.user_id) else { return Err(not_found) };
    Ok(no_store(Json(challenge_json(&c)).into_response()))
}

/// `POST /api/mfa/challenges/{id}/answer` body.
#[derive(Debug, Deserialize)]
struct AnswerBody {
    verdict: String,
    #[serde(default)]
    number: Option<u8>,
    timestamp: i64,
    signature: String,
}

async fn answer(
    State(state): State<AppState>,
    Path(id): Path<String>,
    signed: SignedRequest,
) -> Result<Response, ApiError> {
    if id.len() > MAX_ID_LEN {
        return Err(ApiError(StatusCode::NOT_FOUND, "no such challenge"));
    }
    let body: AnswerBody = serde_json::from_slice(&signed.body)
        .map_err(|_| bad_request("expected JSON {verdict, number, timestamp, signature}"))?;
    let Some(verdict) = Verdict::parse(&body.verdict, body.number) else {
        return Err(bad_request("verdict must be approve, deny or fraud"));
    };
    if !fresh(body.timestamp, state.identity.clock.now()) {
        return Err(unauthorized("decision timestamp too far from the server's clock"));
    }
    let message = device::decision_message(&id, verdict, body.timestamp);
    if body.signature.len() > MAX_SIGNATURE_LEN || !device::verify(&signed.device.public_key, &message, &body.signature)
    {
        tracing::info!(device = %signed.device.id, challenge = %id, "device API: bad decision signature");
        return Err(unauthorized("bad decision signature"));
    }
    let outcome = state.identity.mfa.answer(&id, &signed.device, verdict).await.map_err(|e| internal(&e))?;
    let word = match outcome {
        Ok(Outcome::Approved { .. }) => "approved",
        Ok(_) => "denied",
        Err(AnswerError::Unknown) => return Err(ApiError(StatusCode::NOT_FOUND, "no such challenge")),
        Err(AnswerError::Closed) => {
            return Err(ApiError(StatusCode::CONFLICT, "challenge already answered or expired"));
        }
    };
    tracing::info!(user = %signed.username, device = %signed.device.id, challenge = %id, outcome = word, "challenge answered");
    Ok(no_store(Json(json!({ "outcome": word })).into_response()))
}

/// A decision from the external notification service (generic webhook
/// mode): `{"challenge_id","verdict","number"}` signed with the webhook
/// secret in `X-Portcullis-Signature`. Anything unacceptable gets the same
/// 401, so the endpoint reveals nothing about challenges.
async fn webhook_decision(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError(StatusCode::PAYLOAD_TOO_LARGE, "body too large"));
    }
    let signature = headers.get(crate::push::webhook::SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    let decided = state.identity.mfa.webhook_decision(&body, signature).await.map_err(|e| internal(&e))?;
    let word = match decided {
        None => {
            tracing::info!("webhook decision refused (signature, body, challenge or device)");
            return Err(unauthorized("decision not accepted"));
        }
        Some(Ok(Outcome::Approved { .. })) => "approved",
        Some(Ok(_)) => "denied",
        Some(Err(_)) => return Err(ApiError(StatusCode::CONFLICT, "challenge already answered or expired")),
    };
    tracing::info!(outcome = word, "challenge answered through the webhook");
    Ok(no_store(Json(json!({ "outcome": word })).into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_push_addresses_are_checked() {
        assert_eq!(valid_name("  my phone ").as_deref(), Some("my phone"));
        assert!(valid_name("").is_none());
        assert!(valid_name("a\u{7}b").is_none());
        assert!(valid_name(&"x".repeat(65)).is_none());
        assert!(valid_name(&"é".repeat(64)).is_some());

        let push = |kind: &str, address: Value| push_address(Some(PushBody { kind: kind.into(), address }));
        assert!(push("none", Value::Null).unwrap().is_none());
        let (kind, plain) = push("apns", json!("ab".repeat(32))).unwrap().unwrap();
        assert_eq!((kind.as_str(), plain.len()), ("apns", 64));
        assert!(push("apns", json!("not hex")).is_err());
        assert!(push("apns", json!({})).is_err());
        assert!(push("carrier-pigeon", Value::Null).is_err());
        assert!(push("webpush", json!({ "endpoint": "https://push.example/x" })).is_err());
        assert_eq!(push("webhook", Value::Null).unwrap(), Some(("webhook".into(), String::new())));
        assert!(push("webhook", json!("a\nb")).is_err());
    }

    #[test]
    fn waits_are_capped_and_skew_is_symmetric() {
        assert_eq!(parse_wait(None).unwrap(), Duration::ZERO);
        assert_eq!(parse_wait(Some("wait=5")).unwrap(), Duration::from_secs(5));
        assert_eq!(parse_wait(Some("wait=9999")).unwrap(), Duration::from_secs(MAX_WAIT_SECS));
        assert!(parse_wait(Some("wait=-1")).is_err());
        assert!(parse_wait(Some("wait=soon")).is_err());
        assert!(fresh(1000, 1120) && fresh(1120, 1000));
        assert!(!fresh(1000, 1121) && !fresh(1121, 1000));
        assert!(!fresh(i64::MIN, 1000));
    }
}
