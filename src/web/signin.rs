//! The authorization endpoint and the web sign-in it needs: a server-rendered
//! form (no JavaScript), CSRF double-submit cookie, `__Host-` session cookie
//! rotated at sign-in, and the same lockout as LDAP binds.
//!
//! The sign-in is a small state machine: no session → password form →
//! second factor (`factor.rs`, for users the MFA policy names) → consent →
//! code. `continue_authorization` is the single exit. A session records how
//! it was authenticated (`amr`); one without a second factor does not count
//! for a user who now needs one.

pub(super) mod factor;

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Form, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use base64::Engine;
use sha2::Digest;

use super::AppState;
use crate::directory::{AccountKind, dn};
use crate::mfa::pending::AfterSignin;
use crate::model::OidcClient;
use crate::oidc::{UserInfo, hash_client_secret, random_token};
use crate::store::CodeGrant;

pub(super) const SESSION_COOKIE: &str = "__Host-portcullis_session";
pub(super) const CSRF_COOKIE: &str = "__Host-portcullis_csrf";
/// Sign-in sessions last this long.
const SESSION_SECS: i64 = 8 * 3600;

/// The sign-in routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/oidc/authorize", get(authorize))
        .route("/oidc/signin", post(signin))
        .route("/oidc/consent", post(consent))
        .route("/oidc/logout", get(logout).post(logout_confirmed))
        .merge(factor::routes())
}

/// A validated authorization request.
struct AuthRequest {
    client: OidcClient,
    redirect_uri: String,
    state: Option<String>,
    scope: String,
    nonce: Option<String>,
    code_challenge: Option<String>,
    prompt: Vec<String>,
    max_age: Option<i64>,
    /// Pre-fills the user name field.
    login_hint: Option<String>,
    /// Deliver the response as an auto-submitted POST form (OAuth 2.0 Form Post Response Mode).
    form_post: bool,
    /// The original query string, carried through the sign-in form.
    raw: String,
}

/// Why a request cannot proceed.
enum Reject {
    /// Client or redirect URI cannot be trusted: show a page, never redirect.
    Page(StatusCode, &'static str),
    /// Tell the client, at its registered redirect URI.
    Redirect { uri: String, state: Option<String>, error: &'static str, description: &'static str, form_post: bool },
}

fn params(raw: &str) -> HashMap<String, String> {
    form_urlencoded::parse(raw.as_bytes()).into_owned().collect()
}

async fn validate(state: &AppState, raw: &str) -> Result<AuthRequest, Reject> {
    if raw.len() > 8192 {
        return Err(Reject::Page(StatusCode::URI_TOO_LONG, "The sign-in request is too long."));
    }
    let p = params(raw);
    let client_id = p.get("client_id").ok_or(Reject::Page(StatusCode::BAD_REQUEST, "The request names no client."))?;
    let client = state
        .identity
        .store
        .oidc_client(client_id)
        .await
        .map_err(|_| Reject::Page(StatusCode::INTERNAL_SERVER_ERROR, "Internal error."))?
        .ok_or(Reject::Page(StatusCode::BAD_REQUEST, "The application is not registered with Portcullis."))?;
    let redirect_uri = p.get("redirect_uri").cloned().unwrap_or_default();
    if !client.redirect_uris.contains(&redirect_uri) {
        return Err(Reject::Page(
            StatusCode::BAD_REQUEST,
            "The application sent a redirect address it has not registered.",
        ));
    }
    let st = p.get("state").cloned();
    let form_post = p.get("response_mode").map(String::as_str) == Some("form_post");
    let fail = |error, description| Reject::Redirect {
        uri: redirect_uri.clone(),
        state: st.clone(),
        error,
        description,
        form_post,
    };
    if p.get("response_type").map(String::as_str) != Some("code") {
        return Err(fail("unsupported_response_type", "only response_type=code is supported"));
    }
    if p.get("response_mode").is_some_and(|m| m != "query" && m != "form_post") {
        return Err(fail("invalid_request", "response_mode must be query or form_post"));
    }
    if p.contains_key("request") || p.contains_key("request_uri") {
        return Err(fail("request_not_supported", "request objects are not supported"));
    }
    let requested = p.get("scope").cloned().unwrap_or_default();
    if !requested.split(' ').any(|s| s == "openid") {
        return Err(fail("invalid_scope", "the openid scope is required"));
    }
    let scope: Vec<&str> = requested.split(' ').filter(|s| crate::oidc::SCOPES.contains(s)).collect();
    let code_challenge = p.get("code_challenge").cloned();
    match (code_challenge.as_deref(), p.get("code_challenge_method").map(String::as_str)) {
        (Some(c), Some("S256")) if (43..=128).contains(&c.len()) => {}
        (Some(_), _) => return Err(fail("invalid_request", "code_challenge_method must be S256")),
        (None, _) if client.secret_hash.is_none() => {
            return Err(fail("invalid_request", "public clients must use PKCE (S256)"));
        }
        (None, _) => {}
    }
    let max_age = match p.get("max_age") {
        Some(v) => Some(v.parse::<i64>().map_err(|_| fail("invalid_request", "max_age must be a number"))?),
        None => None,
    };
    Ok(AuthRequest {
        redirect_uri: redirect_uri.clone(),
        state: st.clone(),
        scope: scope.join(" "),
        nonce: p.get("nonce").filter(|n| n.len() <= 512).cloned(),
        code_challenge,
        prompt: p.get("prompt").map(|v| v.split(' ').map(str::to_string).collect()).unwrap_or_default(),
        max_age,
        login_hint: p.get("login_hint").filter(|h| h.len() <= 64).cloned(),
        form_post,
        raw: raw.to_string(),
        client,
    })
}

pub(super) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(name)?.strip_prefix('=').map(str::to_string))
}

async fn authorize(State(state): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let req = match validate(&state, raw.as_deref().unwrap_or("")).await {
        Ok(r) => r,
        Err(r) => return reject(r),
    };
    let now = state.identity.clock.now();
    let session = current_session(&state, &headers).await;
    let fresh_enough = |auth_time: i64| req.max_age.is_none_or(|m| now - auth_time <= m);
    match session {
        Some(s) if fresh_enough(s.auth_time) && !req.prompt.iter().any(|p| p == "login") => {
            continue_authorization(&state, &req, &s, false).await
        }
        _ if req.prompt.iter().any(|p| p == "none") => reject(Reject::Redirect {
            uri: req.redirect_uri,
            state: req.state,
            error: "login_required",
            description: "the user is not signed in",
            form_post: req.form_post,
        }),
        _ => signin_page(&req, None, StatusCode::OK),
    }
}

/// Sign-in form fields.
#[derive(Debug, serde::Deserialize)]
struct SigninForm {
    username: String,
    password: String,
    csrf: String,
    request: String,
}

async fn signin(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<SigninForm>,
) -> Response {
    if !csrf_ok(&headers, &form.csrf) {
        return expired_form();
    }
    let req = match validate(&state, &form.request).await {
        Ok(r) => r,
        Err(r) => return reject(r),
    };
    let Some(account) = password_sign_in(&state, &form.username, &form.password, peer, &headers).await else {
        return signin_page(
            &req,
            Some("Wrong user name or password, or the account is locked."),
            StatusCode::UNAUTHORIZED,
        );
    };
    let after = AfterSignin::Authorization { request: form.request.clone() };
    if let Some(second_step) =
        factor::after_password(&state, &headers, peer, &account, after, &req.client.name, req.client.mfa_required).await
    {
        return second_step;
    }
    let now = state.identity.clock.now();
    let Some((session_cookie, session)) = start_session(&state, &headers, &account.id, now, "pwd").await else {
        return internal_error();
    };
    tracing::info!(user = %account.name, client = %req.client.name, "web sign-in succeeded");
    let mut response = continue_authorization(&state, &req, &session, false).await;
    response.headers_mut().append(header::SET_COOKIE, session_cookie);
    response
}

/// Checks a user name and password exactly as an LDAP bind would (same
/// lockout); only people, not service accounts, may sign in to the web.
pub(super) async fn password_sign_in(
    state: &AppState,
    username: &str,
    password: &str,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Option<crate::directory::Account> {
    let base = &state.identity.config.ldap.base_dn;
    let user_dn = format!("uid={},ou=people,{base}", dn::escape_value(username.trim()));
    let client = super::client_ip(&state.identity.config.http.trusted_proxies, peer.ip(), headers);
    match state.identity.bind(&user_dn, password, Some(client)).await {
        Ok(a) if a.kind == AccountKind::User => Some(a),
        outcome => {
            tracing::info!(user = %username.trim(), client = %client, reason = ?outcome.err(), "web sign-in failed");
            None
        }
    }
}

/// The answer to a form whose CSRF token does not match.
pub(super) fn expired_form() -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Form expired",
        "<p>The form expired or was not sent by this site. Go back and try again.</p>",
    )
}

/// The browser's live sign-in session.
pub(super) struct Session {
    /// SHA-256 of the cookie value: the stored key, never the cookie itself.
    pub(super) id_hash: String,
    pub(super) user_id: String,
    pub(super) auth_time: i64,
    /// The public session id that ID tokens and logout tokens carry.
    pub(super) sid: String,
    /// How it was authenticated (RFC 8176 values, space-separated).
    pub(super) amr: String,
}

/// Starts a session for `user_id`, authenticated by `amr` (`pwd`, or e.g.
/// `pwd otp mfa`): a new cookie at every sign-in (no fixation). The browser's
/// previous session goes on under the new cookie (same `sid`, same clients)
/// if it was the same user's; otherwise it ends, and its clients are told.
/// Returns the `Set-Cookie` value and the session.
pub(super) async fn start_session(
    state: &AppState,
    headers: &HeaderMap,
    user_id: &str,
    now: i64,
    amr: &str,
) -> Option<(HeaderValue, Session)> {
    let store = &state.identity.store;
    let session_id = random_token();
    let id_hash = hash_client_secret(&session_id);
    let expires_at = now + SESSION_SECS;
    let mut carried = None;
    if let Some(old) = cookie(headers, SESSION_COOKIE) {
        let old_hash = hash_client_secret(&old);
        match store.rotate_session(&old_hash, &id_hash, user_id, now, expires_at, amr).await {
            Ok(Some(sid)) => carried = Some(sid),
            Ok(None) => {
                end_session(state, &old_hash, None).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot rotate session");
                return None;
            }
        }
    }
    let sid = match carried {
        Some(sid) => sid,
        None => {
            let sid = uuid::Uuid::new_v4().to_string();
            if let Err(e) = store.insert_session(&id_hash, user_id, &sid, now, expires_at, amr).await {
                tracing::error!(error = %e, "cannot store session");
                return None;
            }
            sid
        }
    };
    let value =
        format!("{SESSION_COOKIE}={session_id}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={SESSION_SECS}");
    let session = Session { id_hash, user_id: user_id.to_string(), auth_time: now, sid, amr: amr.to_string() };
    HeaderValue::from_str(&value).ok().map(|v| (v, session))
}

/// The browser's live session, if it has one. A session signed in without
/// a second factor does not count for a user who needs one now (the policy
/// may have changed since): they sign in again.
pub(super) async fn current_session(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let id_hash = hash_client_secret(&cookie(headers, SESSION_COOKIE)?);
    let live = state.identity.store.session(&id_hash, state.identity.clock.now()).await.ok().flatten()?;
    if !live.amr.split(' ').any(|m| m == "mfa") && second_factor_required(state, &live.user_id, false) {
        return None;
    }
    Some(Session { id_hash, user_id: live.user_id, auth_time: live.auth_time, sid: live.sid, amr: live.amr })
}

/// Whether web sign-ins of this user need a second factor (the MFA
/// policy; `client_requires_mfa` when the client being signed in to asks it
/// of everyone).
pub(super) fn second_factor_required(state: &AppState, user_id: &str, client_requires_mfa: bool) -> bool {
    let snap = state.identity.directory.load();
    let service = crate::mfa::Service::Web { client_requires_mfa };
    snap.user_by_id(user_id)
        .and_then(|e| snap.account(&e.ndn))
        .is_some_and(|account| state.identity.mfa.required(&snap, account, service))
}

/// Ends a sign-in session (only `owner`'s, when given) and sends logout
/// tokens, in the background, to the clients it signed in to that asked for
/// them (OIDC Back-Channel Logout). Returns whether a session ended.
pub(super) async fn end_session(state: &AppState, id_hash: &str, owner: Option<&str>) -> bool {
    let ended = match state.identity.store.end_session(id_hash, owner).await {
        Ok(Some(ended)) => ended,
        Ok(None) => return false,
        Err(e) => {
            tracing::error!(error = %e, "cannot end session");
            return false;
        }
    };
    let clients: Vec<_> = ended.clients.iter().filter_map(|name| state.provider.client(name)).collect();
    let now = state.identity.clock.now();
    crate::oidc::backchannel::notify(&state.provider, &state.outbound, &clients, &ended.user_id, &ended.sid, now);
    true
}

/// The generic 500 page (the cause is logged by the caller, never shown).
pub(super) fn internal_error() -> Response {
    page(StatusCode::INTERNAL_SERVER_ERROR, "Error", "<p>Internal error.</p>")
}

/// Whether a form's CSRF field matches the CSRF cookie (double submit).
pub(super) fn csrf_ok(headers: &HeaderMap, field: &str) -> bool {
    cookie(headers, CSRF_COOKIE)
        .is_some_and(|c| bool::from(subtle::ConstantTimeEq::ct_eq(c.as_bytes(), field.as_bytes())))
}

/// A fresh CSRF token and the cookie that carries it.
pub(super) fn new_csrf() -> (String, Option<HeaderValue>) {
    let csrf = random_token();
    let cookie = HeaderValue::from_str(&format!("{CSRF_COOKIE}={csrf}; Path=/; Secure; HttpOnly; SameSite=Lax")).ok();
    (csrf, cookie)
}

/// The one exit of the sign-in state machine: policy checks, then a code.
async fn continue_authorization(state: &AppState, req: &AuthRequest, session: &Session, consented: bool) -> Response {
    let user_id = session.user_id.as_str();
    let snap = state.identity.directory.load();
    let disabled = snap.user_by_id(user_id).and_then(|e| snap.account(&e.ndn)).is_none_or(|a| a.disabled);
    let Some(user) = UserInfo::from_snapshot(&snap, user_id).filter(|_| !disabled) else {
        return signin_page(req, Some("Your account is not available."), StatusCode::FORBIDDEN);
    };
    if !user.allowed(&req.client) {
        return page(
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!(
                "<p>Your account may not sign in to <strong>{}</strong>. Ask an administrator for access.</p>",
                esc(&req.client.name)
            ),
        );
    }
    if !session.amr.split(' ').any(|m| m == "mfa") && second_factor_required(state, user_id, req.client.mfa_required) {
        // A session signed in with the password alone, and this client (or
        // the policy) wants a second factor: step up through the sign-in.
        if req.prompt.iter().any(|p| p == "none") {
            return reject(Reject::Redirect {
                uri: req.redirect_uri.clone(),
                state: req.state.clone(),
                error: "login_required",
                description: "this application needs a second factor",
                form_post: req.form_post,
            });
        }
        return signin_page(req, Some("This application needs a second factor: sign in again."), StatusCode::OK);
    }
    let asked = req.prompt.iter().any(|p| p == "consent");
    if !consented && (req.client.consent_required || asked) {
        let remembered =
            !asked && state.identity.store.has_consent(user_id, &req.client.name, &req.scope).await.unwrap_or(false);
        if !remembered {
            if req.prompt.iter().any(|p| p == "none") {
                return reject(Reject::Redirect {
                    uri: req.redirect_uri.clone(),
                    state: req.state.clone(),
                    error: "consent_required",
                    description: "the user has not approved this application",
                    form_post: req.form_post,
                });
            }
            return consent_page(req, &user);
        }
    }
    let code = random_token();
    let now = state.identity.clock.now();
    let grant = CodeGrant {
        client_name: req.client.name.clone(),
        user_id: user_id.to_string(),
        redirect_uri: req.redirect_uri.clone(),
        scope: req.scope.clone(),
        nonce: req.nonce.clone(),
        code_challenge: req.code_challenge.clone(),
        auth_time: session.auth_time,
        sid: Some(session.sid.clone()),
        amr: Some(session.amr.clone()),
        expires_at: now + i64::try_from(state.identity.config.http.code_ttl_secs).unwrap_or(60),
    };
    if let Err(e) = state.identity.store.insert_code(&hash_client_secret(&code), &grant).await {
        tracing::error!(error = %e, "cannot store authorization code");
        return internal_error();
    }
    // Remembered for back-channel logout; a failure here costs only that.
    if let Err(e) = state.identity.store.add_session_client(&session.id_hash, &req.client.name).await {
        tracing::error!(error = %e, client = %req.client.name, "cannot record the session's client");
    }
    let mut pairs = vec![("code", code.as_str()), ("iss", state.provider.issuer.as_str())];
    if let Some(s) = &req.state {
        pairs.push(("state", s));
    }
    respond(&req.redirect_uri, &pairs, req.form_post)
}

fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        ser.append_pair(k, v);
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{}", ser.finish())
}

fn reject(r: Reject) -> Response {
    match r {
        Reject::Page(status, message) => page(status, "Cannot sign in", &format!("<p>{}</p>", esc(message))),
        Reject::Redirect { uri, state, error, description, form_post } => {
            let mut pairs = vec![("error", error), ("error_description", description)];
            if let Some(s) = state.as_deref() {
                pairs.push(("state", s));
            }
            respond(&uri, &pairs, form_post)
        }
    }
}

/// The script that submits a form_post response; allowed by its CSP hash.
const AUTO_SUBMIT: &str = "document.forms[0].submit()";

/// Sends an authorization response: a 303 with query parameters, or an HTML
/// form POSTed to the client (with a button for browsers without JavaScript).
fn respond(uri: &str, pairs: &[(&str, &str)], form_post: bool) -> Response {
    if !form_post {
        return Redirect::to(&with_query(uri, pairs)).into_response();
    }
    let inputs: String = pairs
        .iter()
        .map(|(k, v)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", esc(k), esc(v)))
        .collect();
    let body = format!(
        "<form method=\"post\" action=\"{action}\">{inputs}<p><button type=\"submit\">Continue</button></p></form>\
         <script>{AUTO_SUBMIT}</script>",
        action = esc(uri)
    );
    let mut r = page(StatusCode::OK, "Continue", &body);
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(AUTO_SUBMIT.as_bytes()));
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{hash}'; frame-ancestors 'none'; base-uri 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r
}

fn signin_page(req: &AuthRequest, error: Option<&str>, status: StatusCode) -> Response {
    let csrf = random_token();
    let error = error.map(|e| format!("<p role=\"alert\" class=\"error\">{}</p>", esc(e))).unwrap_or_default();
    let body = format!(
        "<p>Sign in to continue to <strong>{client}</strong>.</p>{error}\
         <form method=\"post\" action=\"/oidc/signin\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"request\" value=\"{request}\">\
         <p><label for=\"username\">User name</label><br>\
         <input id=\"username\" name=\"username\" value=\"{hint}\" autocomplete=\"username\" required autofocus></p>\
         <p><label for=\"password\">Password</label><br>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required></p>\
         <p><button type=\"submit\">Sign in</button></p></form>",
        client = esc(&req.client.name),
        request = esc(&req.raw),
        hint = esc(req.login_hint.as_deref().unwrap_or("")),
    );
    let mut r = page(status, "Sign in", &body);
    let value = format!("{CSRF_COOKIE}={csrf}; Path=/; Secure; HttpOnly; SameSite=Lax");
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn consent_page(req: &AuthRequest, user: &UserInfo) -> Response {
    let csrf = random_token();
    let scopes: String = req
        .scope
        .split(' ')
        .filter_map(|s| match s {
            "profile" => Some("your name and user name"),
            "email" => Some("your e-mail address"),
            "groups" => Some("your group memberships"),
            "offline_access" => Some("access while you are signed out"),
            _ => None,
        })
        .map(|d| format!("<li>{d}</li>"))
        .collect();
    let body = format!(
        "<p><strong>{client}</strong> asks to sign you in as <strong>{user}</strong> and to see:</p>\
         <ul><li>a stable identifier for your account</li>{scopes}</ul>\
         <form method=\"post\" action=\"/oidc/consent\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"request\" value=\"{request}\">\
         <p><button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button> \
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></p></form>",
        client = esc(&req.client.name),
        user = esc(&user.preferred_username),
        request = esc(&req.raw),
    );
    let mut r = page(StatusCode::OK, "Allow access?", &body);
    if let Ok(v) = HeaderValue::from_str(&format!("{CSRF_COOKIE}={csrf}; Path=/; Secure; HttpOnly; SameSite=Lax")) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// Consent form fields.
#[derive(Debug, serde::Deserialize)]
struct ConsentForm {
    csrf: String,
    request: String,
    decision: String,
}

async fn consent(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<ConsentForm>) -> Response {
    if !csrf_ok(&headers, &form.csrf) {
        return expired_form();
    }
    let req = match validate(&state, &form.request).await {
        Ok(r) => r,
        Err(r) => return reject(r),
    };
    let now = state.identity.clock.now();
    let Some(session) = current_session(&state, &headers).await else {
        return signin_page(&req, Some("Your sign-in expired; sign in again."), StatusCode::UNAUTHORIZED);
    };
    if form.decision != "allow" {
        return reject(Reject::Redirect {
            uri: req.redirect_uri,
            state: req.state,
            error: "access_denied",
            description: "the user denied access",
            form_post: req.form_post,
        });
    }
    if let Err(e) = state.identity.store.grant_consent(&session.user_id, &req.client.name, &req.scope, now).await {
        tracing::error!(error = %e, "cannot store consent");
        return internal_error();
    }
    continue_authorization(&state, &req, &session, true).await
}

/// RP-initiated logout (OIDC RP-Initiated Logout 1.0). A valid
/// `id_token_hint` for the signed-in user signs out at once; otherwise the
/// user confirms with a CSRF-protected form. `post_logout_redirect_uri` must
/// be registered for the client exactly, or there is no redirect at all.
async fn logout(State(state): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let p = params(raw.as_deref().unwrap_or(""));
    let hint = p.get("id_token_hint").and_then(|t| state.provider.id_token_hint(t));
    let client_id = hint.as_ref().map(|(aud, _)| aud.clone()).or_else(|| p.get("client_id").cloned());
    let target =
        match logout_target(&state, client_id.as_deref(), p.get("post_logout_redirect_uri"), p.get("state")).await {
            Ok(t) => t,
            Err(r) => return r,
        };
    let session_id = cookie(&headers, SESSION_COOKIE);
    let session = current_session(&state, &headers).await;
    let hint_matches = matches!((&hint, &session), (Some((_, sub)), Some(s)) if *sub == s.user_id);
    if hint_matches || session.is_none() {
        return finish_logout(&state, session_id.as_deref(), target).await;
    }
    let csrf = random_token();
    let body = format!(
        "<p>Sign out of Portcullis?</p><form method=\"post\" action=\"/oidc/logout\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"request\" value=\"{request}\">\
         <p><button type=\"submit\">Sign out</button></p></form>",
        request = esc(raw.as_deref().unwrap_or(""))
    );
    let mut r = page(StatusCode::OK, "Sign out", &body);
    if let Ok(v) = HeaderValue::from_str(&format!("{CSRF_COOKIE}={csrf}; Path=/; Secure; HttpOnly; SameSite=Lax")) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// Confirmation form fields.
#[derive(Debug, serde::Deserialize)]
struct LogoutForm {
    csrf: String,
    request: String,
}

async fn logout_confirmed(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<LogoutForm>) -> Response {
    if !csrf_ok(&headers, &form.csrf) {
        return expired_form();
    }
    let p = params(&form.request);
    let hint = p.get("id_token_hint").and_then(|t| state.provider.id_token_hint(t));
    let client_id = hint.map(|(aud, _)| aud).or_else(|| p.get("client_id").cloned());
    match logout_target(&state, client_id.as_deref(), p.get("post_logout_redirect_uri"), p.get("state")).await {
        Ok(target) => finish_logout(&state, cookie(&headers, SESSION_COOKIE).as_deref(), target).await,
        Err(r) => r,
    }
}

/// Where to send the browser after sign-out; an unregistered URI is an error page.
async fn logout_target(
    state: &AppState,
    client_id: Option<&str>,
    uri: Option<&String>,
    st: Option<&String>,
) -> Result<Option<String>, Response> {
    let Some(uri) = uri else { return Ok(None) };
    let refuse = || {
        page(
            StatusCode::BAD_REQUEST,
            "Cannot sign out",
            "<p>The application asked to return to an address it has not registered.</p>",
        )
    };
    let Some(client_id) = client_id else { return Err(refuse()) };
    let client = state.identity.store.oidc_client(client_id).await.ok().flatten();
    if !client.is_some_and(|c| c.post_logout_redirect_uris.contains(uri)) {
        return Err(refuse());
    }
    let pairs: Vec<(&str, &str)> = st.map(|s| vec![("state", s.as_str())]).unwrap_or_default();
    Ok(Some(if pairs.is_empty() { uri.clone() } else { with_query(uri, &pairs) }))
}

async fn finish_logout(state: &AppState, session_id: Option<&str>, target: Option<String>) -> Response {
    if let Some(id) = session_id {
        end_session(state, &hash_client_secret(id), None).await;
    }
    let mut r = match target {
        Some(uri) => Redirect::to(&uri).into_response(),
        None => page(StatusCode::OK, "Signed out", "<p>You are signed out of Portcullis.</p>"),
    };
    let clear = format!("{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&clear) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// A complete HTML page with the security headers every page carries.
pub(super) fn page(status: StatusCode, title: &str, body: &str) -> Response {
    page_with_head(status, title, "", body)
}

/// [`page`] with extra trusted markup in `<head>` (a meta refresh).
pub(super) fn page_with_head(status: StatusCode, title: &str, head: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{head}\
         <title>{title} · Portcullis</title><style>body{{font-family:sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem}}\
         input{{width:100%;padding:.4rem}}.error{{color:#a00}}</style></head>\
         <body><main><h1>{title}</h1>{body}</main></body></html>",
        title = esc(title)
    );
    let mut r = (status, Html(html)).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Escapes text for HTML content and attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
