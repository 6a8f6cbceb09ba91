//! The second-factor step of web sign-in, between the password and the
//! session: push approval with number matching, a security key or passkey
//! (WebAuthn), a TOTP code, or a recovery code. Server-rendered; only
//! WebAuthn needs JavaScript (`/static/webauthn.js`, the one script, served
//! from here and allowed by `script-src 'self'` on the pages that load it),
//! every other factor works without (a waiting page refreshes itself with
//! `<meta http-equiv="refresh">` and has a "Check now" button). CSRF on
//! every form and on the WebAuthn options request.
//!
//! After the password, a user the MFA policy names gets a *pending* sign-in
//! (`mfa::pending`), bound to the browser by the `__Host-portcullis_mfa`
//! cookie (a random token; only its hash is kept, in memory). It is not a
//! session: it only lets its holder try a second factor, at most
//! `MAX_FAILURES` wrong codes, for `PENDING_SECS`. Wrong codes also count in
//! the lockout (under a key of their own, so a correct password does not
//! reset them). Only success starts a session, with a fresh cookie.
//!
//! This module must not issue codes or sessions by itself: success goes
//! through `start_session` and `continue_authorization` like a password
//! sign-in.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::{
    AppState, continue_authorization, cookie, csrf_ok, esc, expired_form, internal_error, page, page_with_head, reject,
    signin_page, start_session, validate,
};
use crate::directory::Account;
use crate::mfa::challenge::{ChallengeRequest, Outcome, Purpose, Ticket};
use crate::mfa::pending::{AfterSignin, MAX_FAILURES, PENDING_SECS, PendingSignin};
use crate::mfa::{Factors, PushRefusal};

/// Carries the pending sign-in's token.
const PENDING_COOKIE: &str = "__Host-portcullis_mfa";
/// Seconds between the waiting page's automatic checks.
const REFRESH_SECS: u32 = 2;
/// Longest code accepted in a form (recovery codes are 19 characters).
const MAX_CODE_LEN: usize = 64;

/// The second-factor routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/signin/factor", get(show))
        .route("/signin/factor/push", post(push))
        .route("/signin/factor/status", get(status).post(status_checked))
        .route("/signin/factor/totp", post(totp))
        .route("/signin/factor/recovery", post(recovery))
        .route("/signin/factor/cancel", post(cancel))
        .route("/signin/factor/webauthn/options", post(webauthn_options))
        .route("/signin/factor/webauthn", post(webauthn))
        .route("/static/webauthn.js", get(webauthn_js))
}

/// The browser side of WebAuthn ceremonies, for the sign-in and account pages.
const WEBAUTHN_JS: &str = include_str!("../../../static/webauthn.js");
/// Loads [`WEBAUTHN_JS`]; pages that carry it get [`with_webauthn_script`].
pub(in crate::web) const WEBAUTHN_SCRIPT_TAG: &str = "<script src=\"/static/webauthn.js\"></script>";

/// The pages' usual CSP plus scripts and fetches from this origin (for
/// `webauthn.js`); still no inline script.
pub(in crate::web) fn with_webauthn_script(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; connect-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    r
}

async fn webauthn_js() -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (headers, WEBAUTHN_JS).into_response()
}

/// A JSON answer for `webauthn.js` (options, or `{"error": …}`), never cached.
pub(in crate::web) fn json_answer(status: StatusCode, json: String) -> Response {
    let headers = [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")];
    (status, headers, json).into_response()
}

/// A JSON error `webauthn.js` shows to the user.
pub(in crate::web) fn json_error(status: StatusCode, message: &str) -> Response {
    json_answer(status, serde_json::json!({ "error": message }).to_string())
}

/// The lockout key for second-factor failures: apart from the password's,
/// whose counter a correct password resets.
pub(in crate::web) fn lockout_key(user_id: &str) -> String {
    format!("mfa:{user_id}")
}

/// Runs after the password step. `None`: no second factor is needed (the
/// caller starts a password-only session). Otherwise the response to send:
/// the second-factor page with a pending sign-in, or a refusal (locked out,
/// or no factor enrolled); never a session.
pub(in crate::web) async fn after_password(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    account: &Account,
    after: AfterSignin,
    label: &str,
    client_requires_mfa: bool,
) -> Option<Response> {
    if !super::second_factor_required(state, &account.id, client_requires_mfa) {
        return None;
    }
    let identity = &state.identity;
    let now = identity.clock.now();
    let source = super::super::client_ip(&identity.config.http.trusted_proxies, peer.ip(), headers);
    if identity.lockout.is_locked(&lockout_key(&account.id), Some(source), now) {
        tracing::info!(user = %account.name, client = %source, "second factor locked out after wrong codes");
        let message = "Too many wrong codes. Try again later.";
        return Some(start_over(state, &after, Some(message), StatusCode::TOO_MANY_REQUESTS).await);
    }
    let factors = match identity.mfa.factors(&account.id).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "cannot read second factors");
            return Some(internal_error());
        }
    };
    if !factors.any() {
        tracing::warn!(user = %account.name, "web sign-in refused: a second factor is required but none is enrolled");
        return Some(page(
            StatusCode::FORBIDDEN,
            "Second factor needed",
            "<p role=\"alert\" class=\"error\">Your account must confirm each sign-in with a second factor (an \
             approval device, an authenticator app, a security key or a recovery code), and none is set up yet.</p>\
             <p>Ask an administrator for a device enrollment link or to set up an authenticator app for you, \
             then sign in again.</p>",
        ));
    }
    let pending = PendingSignin {
        user_id: account.id.clone(),
        username: account.name.clone(),
        label: label.to_string(),
        after,
        expires_at: now + PENDING_SECS,
        failures: 0,
        challenge_id: None,
    };
    let replaces = cookie(headers, PENDING_COOKIE);
    let token = identity.mfa.pending.start(pending.clone(), replaces.as_deref(), now);
    tracing::info!(user = %account.name, client = %label, "password accepted; second factor pending");
    let mut r = factor_page(&pending, &factors, None, StatusCode::OK);
    let value = format!("{PENDING_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={PENDING_SECS}");
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    Some(r)
}

/// Appends a fresh CSRF cookie; returns the token for the page's forms.
fn csrf_for(r: &mut Response, csrf: &str) {
    let value = format!("{}={csrf}; Path=/; Secure; HttpOnly; SameSite=Lax", super::CSRF_COOKIE);
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Removes the pending cookie from the browser.
fn clear_pending(mut r: Response) -> Response {
    let value = format!("{PENDING_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn alert(message: Option<&str>) -> String {
    message.map(|m| format!("<p role=\"alert\" class=\"error\">{}</p>", esc(m))).unwrap_or_default()
}

/// The choice of second factors the user has.
fn factor_page(pending: &PendingSignin, factors: &Factors, error: Option<&str>, status: StatusCode) -> Response {
    let csrf = crate::oidc::random_token();
    let mut body = format!(
        "<p>Signed in as <strong>{user}</strong> to continue to <strong>{label}</strong>. Confirm that it is you.</p>{alert}",
        user = esc(&pending.username),
        label = esc(&pending.label),
        alert = alert(error),
    );
    let hidden = format!("<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">");
    if !factors.devices.is_empty() {
        body.push_str(&format!(
            "<h2>Approve on your device</h2><form method=\"post\" action=\"/signin/factor/push\">{hidden}\
             <p><button type=\"submit\">Send a sign-in request to my device</button></p></form>"
        ));
    }
    if factors.webauthn > 0 {
        body.push_str(&format!(
            "<h2>Security key or passkey</h2><form method=\"post\" action=\"/signin/factor/webauthn\" \
             data-webauthn=\"get\" data-options=\"/signin/factor/webauthn/options\">{hidden}\
             <input type=\"hidden\" name=\"credential\" value=\"\">\
             <p><button type=\"submit\">Use a security key or passkey</button></p>\
             <p class=\"webauthn-status\" role=\"status\"></p></form>"
        ));
    }
    if factors.totp {
        body.push_str(&format!(
            "<h2>Authenticator app</h2><form method=\"post\" action=\"/signin/factor/totp\">{hidden}\
             <p><label for=\"totp\">6-digit code from your app</label><br>\
             <input id=\"totp\" name=\"code\" inputmode=\"numeric\" pattern=\"[0-9]{{6}}\" maxlength=\"6\" \
             autocomplete=\"one-time-code\" required></p><p><button type=\"submit\">Verify code</button></p></form>"
        ));
    }
    if factors.recovery_codes_left > 0 {
        body.push_str(&format!(
            "<h2>Recovery code</h2><form method=\"post\" action=\"/signin/factor/recovery\">{hidden}\
             <p><label for=\"recovery\">One of your recovery codes (each works once)</label><br>\
             <input id=\"recovery\" name=\"code\" autocomplete=\"off\" spellcheck=\"false\" maxlength=\"{MAX_CODE_LEN}\" \
             required></p><p><button type=\"submit\">Use recovery code</button></p></form>"
        ));
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/signin/factor/cancel\">{hidden}\
         <p><button type=\"submit\">Cancel and sign in again</button></p></form>"
    ));
    if factors.webauthn > 0 {
        body.push_str(WEBAUTHN_SCRIPT_TAG);
    }
    let mut r = page(status, "Confirm your sign-in", &body);
    if factors.webauthn > 0 {
        r = with_webauthn_script(r);
    }
    csrf_for(&mut r, &csrf);
    r
}

/// The page that waits for the device: shows the number to pick, refreshes
/// itself, and offers a "Check now" button.
fn waiting_page(pending: &PendingSignin, number: Option<u8>, expires_in: i64) -> Response {
    let csrf = crate::oidc::random_token();
    let number = number.map(|n| n.to_string()).unwrap_or_default();
    let body = format!(
        "<p>A sign-in request for <strong>{label}</strong> was sent to your device.</p>\
         <p>Approve it there and pick this number:</p>\
         <p style=\"font-size:3rem;font-weight:bold;margin:1rem 0\"><span class=\"number\" id=\"number\">{number}</span></p>\
         <p role=\"status\">Waiting for your approval. This page checks again every {REFRESH_SECS} seconds; the \
         request expires in {expires_in} seconds.</p>\
         <form method=\"post\" action=\"/signin/factor/status\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <p><button type=\"submit\">Check now</button></p></form>\
         <p><a href=\"/signin/factor\">Confirm another way</a></p>",
        label = esc(&pending.label),
    );
    let head = format!("<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS};url=/signin/factor/status\">");
    let mut r = page_with_head(StatusCode::OK, "Approve on your device", &head, &body);
    csrf_for(&mut r, &csrf);
    r
}

/// Back to the password form (the pending sign-in is over), with a message.
async fn start_over(state: &AppState, after: &AfterSignin, message: Option<&str>, status: StatusCode) -> Response {
    let r = match after {
        AfterSignin::Authorization { request } => match validate(state, request).await {
            Ok(req) => signin_page(&req, message, status),
            Err(r) => reject(r),
        },
        AfterSignin::Account => {
            page(status, "My account", &format!("{}<p><a href=\"/account\">Sign in again</a></p>", alert(message)))
        }
    };
    clear_pending(r)
}

/// The browser's pending sign-in and its token.
fn pending_of(state: &AppState, headers: &HeaderMap) -> Option<(String, PendingSignin)> {
    let now = state.identity.clock.now();
    let token = cookie(headers, PENDING_COOKIE)?;
    state.identity.mfa.pending.get(&token, now).map(|p| (token, p))
}

/// The answer when the browser has no live pending sign-in.
fn sign_in_expired() -> Response {
    clear_pending(page(
        StatusCode::UNAUTHORIZED,
        "Sign-in expired",
        "<p role=\"alert\" class=\"error\">This sign-in expired or is already finished.</p>\
         <p>Go back to the application and sign in again.</p>",
    ))
}

async fn factors_of(state: &AppState, user_id: &str) -> Result<Factors, Response> {
    state.identity.mfa.factors(user_id).await.map_err(|e| {
        tracing::error!(error = %e, "cannot read second factors");
        internal_error()
    })
}

/// Re-shows the choice of factors.
async fn show(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some((_, pending)) = pending_of(&state, &headers) else {
        return sign_in_expired();
    };
    match factors_of(&state, &pending.user_id).await {
        Ok(factors) => factor_page(&pending, &factors, None, StatusCode::OK),
        Err(r) => r,
    }
}

/// A form with only the CSRF field.
#[derive(Debug, serde::Deserialize)]
struct CsrfForm {
    csrf: String,
}

/// A form with a code.
#[derive(Debug, serde::Deserialize)]
struct CodeForm {
    csrf: String,
    code: String,
}

/// Sends a push with number matching (or shows the one this sign-in sent).
async fn push(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !csrf_ok(&headers, &form.csrf) {
        return expired_form();
    }
    let Some((token, pending)) = pending_of(&state, &headers) else {
        return sign_in_expired();
    };
    let mfa = &state.identity.mfa;
    let now = state.identity.clock.now();
    if let Some(c) = pending.challenge_id.as_deref().and_then(|id| mfa.challenges.get(id, &pending.user_id)) {
        if c.is_open(now) {
            return waiting_page(&pending, c.number, c.expires_at - now);
        }
    }
    let source = super::super::client_ip(&state.identity.config.http.trusted_proxies, peer.ip(), &headers);
    let request = ChallengeRequest {
        user_id: pending.user_id.clone(),
        username: pending.username.clone(),
        purpose: Purpose::Web { client: pending.label.clone() },
        source: Some(source),
        number_matching: true,
    };
    let refusal = match mfa.request_approval(request).await {
        Err(e) => {
            tracing::error!(error = %e, "cannot request approval");
            return internal_error();
        }
        Ok(Ok(Ticket::Pending { challenge, fresh: true })) => {
            mfa.pending.set_challenge(&token, &challenge.id);
            tracing::info!(user = %pending.username, client = %pending.label, "push sent for web sign-in");
            return waiting_page(&pending, challenge.number, challenge.expires_at - now);
        }
        // Another browser's challenge for the same user and client: never
        // share it (its approval is for the screen that shows its number).
        Ok(Ok(Ticket::Pending { fresh: false, .. } | Ticket::AlreadyApproved)) => {
            "Another sign-in to this application is already waiting for approval on your device. Answer it or let \
             it expire, then try again."
        }
        Ok(Err(PushRefusal::NoDevice)) => "No approval device is enrolled.",
        Ok(Err(PushRefusal::Locked)) => {
            "Sign-in requests to your devices are paused after a request was reported as not yours. Ask an \
             administrator, or confirm another way."
        }
        Ok(Err(PushRefusal::Limit(why))) => {
            tracing::info!(user = %pending.username, reason = %why, "push refused for web sign-in");
            "Too many sign-in requests were sent to your device recently. Wait a few minutes or confirm another way."
        }
    };
    match factors_of(&state, &pending.user_id).await {
        Ok(factors) => factor_page(&pending, &factors, Some(refusal), StatusCode::TOO_MANY_REQUESTS),
        Err(r) => r,
    }
}

/// The waiting page's automatic check (a GET from the meta refresh).
async fn status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    check_push(&state, &headers).await
}

/// The waiting page's "Check now" button.
async fn status_checked(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    if !csrf_ok(&headers, &form.csrf) {
        return expired_form();
    }
    check_push(&state, &headers).await
}

/// Looks at this sign-in's push: approved → signed in; denied or expired →
/// start over; still open → keep waiting.
async fn check_push(state: &AppState, headers: &HeaderMap) -> Response {
    let Some((token, pending)) = pending_of(state, headers) else {
        return sign_in_expired();
    };
    let Some(id) = pending.challenge_id.as_deref() else {
        return Redirect::to("/signin/factor").into_response();
    };
    let now = state.identity.clock.now();
    let challenge = state.identity.mfa.challenges.get(id, &pending.user_id);
    let outcome = challenge.as_ref().map_or(Outcome::Expired, |c| c.outcome());
    let message = match outcome {
        Outcome::Approved { .. } => return finish(state, headers, &token, "pwd mfa", "push").await,
        Outcome::Pending => match challenge.filter(|c| c.is_open(now)) {
            Some(c) => return waiting_page(&pending, c.number, c.expires_at - now),
            None => "The sign-in request expired before it was approved. Sign in again.",
        },
        Outcome::Denied { fraud: true, .. } => {
            "The sign-in was reported as not yours on your device; requests to your devices are paused."
        }
        Outcome::Denied { .. } => {
            "The sign-in was denied on your device (or a different number was picked). Sign in again."
        }
        Outcome::Expired => "The sign-in request expired before it was approved. Sign in again.",
    };
    tracing::info!(user = %pending.username, client = %pending.label, "push for web sign-in not approved");
    state.identity.mfa.pending.take(&token, now);
    start_over(state, &pending.after, Some(message), StatusCode::UNAUTHORIZED).await
}

/// Which code a form carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodeKind {
    Totp,
    Recovery,
}

async fn totp(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<CodeForm>,
) -> Response {
    check_code(&state, peer, &headers, &form, CodeKind::Totp).await
}

async fn recovery(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<CodeForm>,
) -> Response {
    check_code(&state, peer, &headers, &form, CodeKind::Recovery).await
}

/// Checks a TOTP or recovery code for the pending sign-in, under the
/// lockout; a wrong, reused or spent code is refused.
async fn check_code(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    form: &CodeForm,
    kind: CodeKind,
) -> Response {
    if !csrf_ok(headers, &form.csrf) {
        return expired_form();
    }
    let Some((token, pending)) = pending_of(state, headers) else {
        return sign_in_expired();
    };
    let identity = &state.identity;
    let now = identity.clock.now();
    let source = super::super::client_ip(&identity.config.http.trusted_proxies, peer.ip(), headers);
    let key = lockout_key(&pending.user_id);
    if identity.lockout.is_locked(&key, Some(source), now) {
        identity.mfa.pending.take(&token, now);
        let message = "Too many wrong codes. Try again later.";
        return start_over(state, &pending.after, Some(message), StatusCode::TOO_MANY_REQUESTS).await;
    }
    let factors = match factors_of(state, &pending.user_id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let code = form.code.trim();
    let verified = match kind {
        // Only a confirmed secret counts: an enrollment that was started but
        // never confirmed is not a factor yet.
        CodeKind::Totp if !factors.totp => Ok(false),
        CodeKind::Totp => identity.mfa.verify_totp(&pending.user_id, code).await,
        CodeKind::Recovery if code.len() > MAX_CODE_LEN => Ok(false),
        CodeKind::Recovery => identity.mfa.use_recovery_code(&pending.user_id, code).await,
    };
    match verified {
        Ok(true) => {
            let (amr, method) = match kind {
                CodeKind::Totp => ("pwd otp mfa", "totp"),
                CodeKind::Recovery => ("pwd mfa", "recovery code"),
            };
            finish(state, headers, &token, amr, method).await
        }
        Ok(false) => {
            identity.lockout.record_failure(&key, Some(source), now);
            tracing::info!(user = %pending.username, client = %source, ?kind, "wrong second-factor code");
            if !identity.mfa.pending.fail(&token) {
                let message = format!("{MAX_FAILURES} wrong codes. Sign in again.");
                return start_over(state, &pending.after, Some(&message), StatusCode::UNAUTHORIZED).await;
            }
            let message = match kind {
                CodeKind::Totp => "That code is wrong, expired or was already used. Wait for the next code.",
                CodeKind::Recovery => "That recovery code is wrong or was already used.",
            };
            factor_page(&pending, &factors, Some(message), StatusCode::UNAUTHORIZED)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot check a second-factor code");
            internal_error()
        }
    }
}

/// The WebAuthn answer form: the browser's assertion as JSON (empty when
/// the browser ran no script).
#[derive(Debug, serde::Deserialize)]
struct WebauthnForm {
    csrf: String,
    #[serde(default)]
    credential: String,
}

/// `webauthn.js` asks for the options of `navigator.credentials.get`: a new
/// challenge for this pending sign-in (replacing any earlier one), listing
/// only this user's credentials.
async fn webauthn_options(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !csrf_ok(&headers, &form.csrf) {
        return json_error(StatusCode::FORBIDDEN, "The page expired. Reload it and try again.");
    }
    let Some((token, pending)) = pending_of(&state, &headers) else {
        return json_error(StatusCode::UNAUTHORIZED, "This sign-in expired. Sign in again.");
    };
    let identity = &state.identity;
    let source = super::super::client_ip(&identity.config.http.trusted_proxies, peer.ip(), &headers);
    if identity.lockout.is_locked(&lockout_key(&pending.user_id), Some(source), identity.clock.now()) {
        return json_error(StatusCode::TOO_MANY_REQUESTS, "Too many failed attempts. Try again later.");
    }
    match identity.mfa.webauthn_sign_in_start(&token, &pending.user_id).await {
        Ok(Ok(options)) => json_answer(StatusCode::OK, options),
        Ok(Err(refusal)) => {
            tracing::info!(user = %pending.username, reason = %refusal, "no WebAuthn sign-in offered");
            json_error(StatusCode::BAD_REQUEST, "No security key can be used for this sign-in.")
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start a WebAuthn sign-in");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error.")
        }
    }
}

/// The browser's assertion for the challenge of [`webauthn_options`]: a
/// verified one finishes the sign-in (`amr` `pwd hwk mfa`); anything else
/// counts as a failed attempt, like a wrong code.
async fn webauthn(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<WebauthnForm>,
) -> Response {
    if !csrf_ok(&headers, &form.csrf) {
        return expired_form();
    }
    let Some((token, pending)) = pending_of(&state, &headers) else {
        return sign_in_expired();
    };
    let identity = &state.identity;
    let now = identity.clock.now();
    let source = super::super::client_ip(&identity.config.http.trusted_proxies, peer.ip(), &headers);
    let key = lockout_key(&pending.user_id);
    if identity.lockout.is_locked(&key, Some(source), now) {
        identity.mfa.pending.take(&token, now);
        let message = "Too many wrong codes. Try again later.";
        return start_over(&state, &pending.after, Some(message), StatusCode::TOO_MANY_REQUESTS).await;
    }
    let factors = match factors_of(&state, &pending.user_id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if form.credential.trim().is_empty() {
        let message = "Your browser sent no answer from a security key: using one needs JavaScript. Try again, or \
                       confirm another way.";
        return factor_page(&pending, &factors, Some(message), StatusCode::BAD_REQUEST);
    }
    match identity.mfa.webauthn_sign_in_finish(&token, &pending.user_id, &form.credential).await {
        Ok(Ok(_)) => finish(&state, &headers, &token, "pwd hwk mfa", "security key").await,
        Ok(Err(refusal)) => {
            identity.lockout.record_failure(&key, Some(source), now);
            tracing::info!(user = %pending.username, client = %source, reason = %refusal, "security key refused");
            if !identity.mfa.pending.fail(&token) {
                let message = format!("{MAX_FAILURES} failed attempts. Sign in again.");
                return start_over(&state, &pending.after, Some(&message), StatusCode::UNAUTHORIZED).await;
            }
            let message = "The security key was not accepted. Try again, or confirm another way.";
            factor_page(&pending, &factors, Some(message), StatusCode::UNAUTHORIZED)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot check a WebAuthn sign-in");
            internal_error()
        }
    }
}

/// Gives up the pending sign-in.
async fn cancel(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    if !csrf_ok(&headers, &form.csrf) {
        return expired_form();
    }
    let Some((token, pending)) = pending_of(&state, &headers) else {
        return sign_in_expired();
    };
    state.identity.mfa.pending.take(&token, state.identity.clock.now());
    start_over(&state, &pending.after, None, StatusCode::OK).await
}

/// The second factor is done: the pending sign-in is spent (once), a session
/// starts with a fresh cookie, and the sign-in goes on where it came from.
async fn finish(state: &AppState, headers: &HeaderMap, token: &str, amr: &str, method: &str) -> Response {
    let identity = &state.identity;
    let now = identity.clock.now();
    let Some(pending) = identity.mfa.pending.take(token, now) else {
        return sign_in_expired();
    };
    identity.lockout.record_success(&lockout_key(&pending.user_id));
    let Some((session_cookie, session)) = start_session(state, headers, &pending.user_id, now, amr).await else {
        return internal_error();
    };
    tracing::info!(user = %pending.username, client = %pending.label, method, "web sign-in succeeded with a second factor");
    let mut r = match &pending.after {
        AfterSignin::Authorization { request } => match validate(state, request).await {
            Ok(req) => continue_authorization(state, &req, &session, false).await,
            Err(r) => reject(r),
        },
        AfterSignin::Account => Redirect::to("/account").into_response(),
    };
    r.headers_mut().append(header::SET_COOKIE, session_cookie);
    clear_pending(r)
}
