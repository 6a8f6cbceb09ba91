//! "My account": profile, password change, the list of sign-in sessions
//! with revoke, and second factors (approval devices with rename and remove,
//! device enrollment links with a QR code, TOTP enrollment, recovery codes,
//! security keys and passkeys with add, rename and remove).
//! Server-rendered forms, CSRF on every form; only adding a security key
//! needs JavaScript (`/static/webauthn.js`, see `signin/factor.rs`). Every
//! change to a second factor is audited. Secrets shown here (enrollment
//! links, TOTP secrets, recovery codes) are shown once and never logged.

use axum::Router;
use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use std::net::SocketAddr;

use super::AppState;
use super::signin::{
    SESSION_COOKIE, cookie, csrf_ok, current_session, end_session, esc, expired_form, factor, internal_error, new_csrf,
    page, password_sign_in, second_factor_required, start_session,
};
use crate::clock::generalized_time;
use crate::mfa::pending::AfterSignin;
use crate::model::Actor;
use crate::oidc::{UserInfo, hash_client_secret};

/// The account routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/account", get(account))
        .route("/account/signin", post(signin))
        .route("/account/password", post(password))
        .route("/account/sessions/revoke", post(revoke_session))
        .route("/account/signout", post(signout))
        .route("/account/mfa/devices/add", post(add_device))
        .route("/account/mfa/devices/rename", post(rename_device))
        .route("/account/mfa/devices/remove", post(remove_device))
        .route("/account/mfa/totp/start", post(totp_start))
        .route("/account/mfa/totp/confirm", post(totp_confirm))
        .route("/account/mfa/totp/remove", post(totp_remove))
        .route("/account/mfa/recovery", post(recovery_codes))
        .route("/account/mfa/webauthn/options", post(webauthn_options))
        .route("/account/mfa/webauthn/add", post(webauthn_add))
        .route("/account/mfa/webauthn/rename", post(webauthn_rename))
        .route("/account/mfa/webauthn/remove", post(webauthn_remove))
}

fn with_csrf(mut r: Response, cookie: Option<axum::http::HeaderValue>) -> Response {
    if let Some(c) = cookie {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}

fn signin_form(error: Option<&str>, status: StatusCode) -> Response {
    let (csrf, c) = new_csrf();
    let error = error.map(|e| format!("<p role=\"alert\" class=\"error\">{}</p>", esc(e))).unwrap_or_default();
    let body = format!(
        "<p>Sign in to manage your account.</p>{error}<form method=\"post\" action=\"/account/signin\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <p><label for=\"username\">User name</label><br><input id=\"username\" name=\"username\" autocomplete=\"username\" required></p>\
         <p><label for=\"password\">Password</label><br><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required></p>\
         <p><button type=\"submit\">Sign in</button></p></form>"
    );
    with_csrf(page(status, "My account", &body), c)
}

/// The user behind a posted account form: the CSRF token must match and a
/// session must be live; otherwise the response to send instead.
async fn signed_in_form(state: &AppState, headers: &HeaderMap, csrf: &str) -> Result<String, Response> {
    if !csrf_ok(headers, csrf) {
        return Err(expired_form());
    }
    match current_session(state, headers).await {
        Some(s) => Ok(s.user_id),
        None => Err(signin_form(None, StatusCode::UNAUTHORIZED)),
    }
}

/// Query flags shown as notices.
#[derive(Debug, serde::Deserialize)]
struct Notice {
    done: Option<String>,
}

async fn account(State(state): State<AppState>, headers: HeaderMap, Query(notice): Query<Notice>) -> Response {
    let Some(session) = current_session(&state, &headers).await else {
        return signin_form(None, StatusCode::OK);
    };
    let user_id = session.user_id;
    let snap = state.identity.directory.load();
    let Some(user) = UserInfo::from_snapshot(&snap, &user_id) else { return signin_form(None, StatusCode::OK) };
    let now = state.identity.clock.now();
    let sessions = state.identity.store.sessions_of(&user_id, now).await.unwrap_or_default();
    let current = session.id_hash;
    let (csrf, c) = new_csrf();
    let notice = match notice.done.as_deref() {
        Some("password") => "<p role=\"status\">Your password was changed.</p>",
        Some("revoked") => "<p role=\"status\">The session was signed out.</p>",
        Some("device-renamed") => "<p role=\"status\">The device was renamed.</p>",
        Some("device-removed") => "<p role=\"status\">The device was removed.</p>",
        Some("totp") => "<p role=\"status\">Your authenticator app is set up.</p>",
        Some("totp-removed") => "<p role=\"status\">Your authenticator app was removed.</p>",
        Some("webauthn-added") => "<p role=\"status\">The security key was added.</p>",
        Some("webauthn-renamed") => "<p role=\"status\">The security key was renamed.</p>",
        Some("webauthn-removed") => "<p role=\"status\">The security key was removed.</p>",
        _ => "",
    };
    let factors = match state.identity.mfa.factors(&user_id).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "cannot read second factors");
            return internal_error();
        }
    };
    let keys = match state.identity.store.webauthn_credentials_of(&user_id).await {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, "cannot read security keys");
            return internal_error();
        }
    };
    let webauthn = state.identity.mfa.webauthn_available();
    let factors_html = factors_section(&factors, second_factor_required(&state, &user_id, false), &csrf);
    let keys_html = webauthn_section(&keys, webauthn, &csrf);
    let rows: String = sessions
        .iter()
        .map(|s| {
            let this = if s.id_hash == current { " (this browser)" } else { "" };
            format!(
                "<li>Signed in {}{this}, expires {} <form method=\"post\" action=\"/account/sessions/revoke\" style=\"display:inline\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"id\" value=\"{}\">\
                 <button type=\"submit\">Sign out</button></form></li>",
                generalized_time(s.auth_time),
                generalized_time(s.expires_at),
                esc(&s.id_hash)
            )
        })
        .collect();
    let body = format!(
        "{notice}<h2>Profile</h2><dl><dt>User name</dt><dd>{name}</dd><dt>Name</dt><dd>{display}</dd>\
         <dt>E-mail</dt><dd>{email}</dd><dt>Groups</dt><dd>{groups}</dd></dl>\
         <h2>Change password</h2><form method=\"post\" action=\"/account/password\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <p><label for=\"current\">Current password</label><br><input id=\"current\" name=\"current\" type=\"password\" autocomplete=\"current-password\" required></p>\
         <p><label for=\"new\">New password</label><br><input id=\"new\" name=\"new\" type=\"password\" autocomplete=\"new-password\" minlength=\"8\" required></p>\
         <p><label for=\"confirm\">Repeat the new password</label><br><input id=\"confirm\" name=\"confirm\" type=\"password\" autocomplete=\"new-password\" required></p>\
         <p><button type=\"submit\">Change password</button></p></form>\
         {factors_html}{keys_html}<h2>Sessions</h2><ul>{rows}</ul>\
         <form method=\"post\" action=\"/account/signout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <p><button type=\"submit\">Sign out</button></p></form>",
        name = esc(&user.preferred_username),
        display = esc(&user.name),
        email = esc(user.email.as_deref().unwrap_or("")),
        groups = esc(&user.groups.join(", ")),
    );
    if webauthn {
        let body = format!("{body}{}", factor::WEBAUTHN_SCRIPT_TAG);
        return with_csrf(factor::with_webauthn_script(page(StatusCode::OK, "My account", &body)), c);
    }
    with_csrf(page(StatusCode::OK, "My account", &body), c)
}

/// Sign-in form fields.
#[derive(Debug, serde::Deserialize)]
struct SigninForm {
    csrf: String,
    username: String,
    password: String,
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
    let Some(account) = password_sign_in(&state, &form.username, &form.password, peer, &headers).await else {
        return signin_form(Some("Wrong user name or password, or the account is locked."), StatusCode::UNAUTHORIZED);
    };
    let label = "your Portcullis account";
    if let Some(second_step) =
        factor::after_password(&state, &headers, peer, &account, AfterSignin::Account, label, false).await
    {
        return second_step;
    }
    let now = state.identity.clock.now();
    let Some((session, _)) = start_session(&state, &headers, &account.id, now, "pwd").await else {
        return internal_error();
    };
    let mut r = Redirect::to("/account").into_response();
    r.headers_mut().append(header::SET_COOKIE, session);
    r
}

/// Password form fields.
#[derive(Debug, serde::Deserialize)]
struct PasswordForm {
    csrf: String,
    current: String,
    new: String,
    confirm: String,
}

async fn password(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<PasswordForm>,
) -> Response {
    let user_id = match signed_in_form(&state, &headers, &form.csrf).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    let snap = state.identity.directory.load();
    let Some(account) = snap.user_by_id(&user_id).and_then(|e| snap.account(&e.ndn)).cloned() else {
        return signin_form(None, StatusCode::UNAUTHORIZED);
    };
    let problem = |m: &str| {
        page(
            StatusCode::BAD_REQUEST,
            "Password not changed",
            &format!("<p role=\"alert\">{}</p><p><a href=\"/account\">Back</a></p>", esc(m)),
        )
    };
    if form.new != form.confirm {
        return problem("The two new passwords differ.");
    }
    if let Err(m) = crate::identity::check_new_password(&form.new) {
        return problem(&m);
    }
    if state.identity.bind(&account.dn, &form.current, Some(peer.ip())).await.is_err() {
        return problem("The current password is wrong.");
    }
    let actor = Actor { name: account.dn.clone(), source: format!("web:{}", peer.ip()) };
    if let Err(e) = state.identity.set_password(&account, &form.new, &actor).await {
        tracing::error!(error = %e, "password change failed");
        return internal_error();
    }
    Redirect::to("/account?done=password").into_response()
}

/// Session-revoke form fields.
#[derive(Debug, serde::Deserialize)]
struct RevokeForm {
    csrf: String,
    id: String,
}

async fn revoke_session(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<RevokeForm>) -> Response {
    let user_id = match signed_in_form(&state, &headers, &form.csrf).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    end_session(&state, &form.id, Some(&user_id)).await;
    Redirect::to("/account?done=revoked").into_response()
}

/// Sign-out form fields.
#[derive(Debug, serde::Deserialize)]
struct SignoutForm {
    csrf: String,
}

async fn signout(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<SignoutForm>) -> Response {
    if !csrf_ok(&headers, &form.csrf) {
        return expired_form();
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        end_session(&state, &hash_client_secret(&id), None).await;
    }
    let mut r = page(StatusCode::OK, "Signed out", "<p>You are signed out. <a href=\"/account\">Sign in again</a></p>");
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0"
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// The "Second factors" section of the account page.
fn factors_section(factors: &crate::mfa::Factors, required: bool, csrf: &str) -> String {
    let hidden = format!("<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">");
    let policy = if required {
        "Your sign-ins must be confirmed with one of these."
    } else {
        "Your sign-ins do not need a second factor yet; you can set them up anyway."
    };
    let devices: String = factors
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let how = match d.push_kind.as_str() {
                "none" => "checks for requests itself".to_string(),
                kind => format!("notified by {}", esc(kind)),
            };
            let seen = d.last_seen_at.map_or_else(|| "never".to_string(), generalized_time);
            format!(
                "<li><strong>{name}</strong> ({how}), added {added}, last seen {seen}\
                 <form method=\"post\" action=\"/account/mfa/devices/rename\">{hidden}\
                 <input type=\"hidden\" name=\"id\" value=\"{id}\">\
                 <label for=\"rename-{i}\">New name for {name}</label> \
                 <input id=\"rename-{i}\" name=\"name\" maxlength=\"64\" required> \
                 <button type=\"submit\">Rename</button></form>\
                 <form method=\"post\" action=\"/account/mfa/devices/remove\">{hidden}\
                 <input type=\"hidden\" name=\"id\" value=\"{id}\">\
                 <button type=\"submit\">Remove {name}</button></form></li>",
                name = esc(&d.name),
                id = esc(&d.id),
                added = generalized_time(d.created_at),
            )
        })
        .collect();
    let devices =
        if devices.is_empty() { "<p>No approval devices.</p>".to_string() } else { format!("<ul>{devices}</ul>") };
    let totp = if factors.totp {
        format!(
            "<p>Set up.</p><form method=\"post\" action=\"/account/mfa/totp/start\">{hidden}\
             <p><button type=\"submit\">Replace with a new secret</button></p></form>\
             <form method=\"post\" action=\"/account/mfa/totp/remove\">{hidden}\
             <p><button type=\"submit\">Remove authenticator app</button></p></form>"
        )
    } else {
        format!(
            "<p>Not set up.</p><form method=\"post\" action=\"/account/mfa/totp/start\">{hidden}\
             <p><button type=\"submit\">Set up an authenticator app</button></p></form>"
        )
    };
    format!(
        "<h2>Second factors</h2><p>{policy}</p>\
         <h3>Approval devices</h3>{devices}\
         <form method=\"post\" action=\"/account/mfa/devices/add\">{hidden}\
         <p><button type=\"submit\">Add a device</button></p></form>\
         <h3>Authenticator app (TOTP)</h3>{totp}\
         <h3>Recovery codes</h3><p>{left} unused recovery codes.</p>\
         <form method=\"post\" action=\"/account/mfa/recovery\">{hidden}\
         <p><button type=\"submit\">Generate new recovery codes</button> (the old ones stop working)</p></form>",
        left = factors.recovery_codes_left,
    )
}

/// A QR code of `data` as inline SVG markup (allowed by the pages' CSP: no
/// script, no data: URL).
fn qr_svg(data: &str) -> Option<String> {
    let code = qrcode::QrCode::new(data.as_bytes()).ok()?;
    let svg = code.render::<qrcode::render::svg::Color<'_>>().min_dimensions(240, 240).quiet_zone(true).build();
    // Inline in HTML: drop the XML declaration, name the image.
    let start = svg.find("<svg")?;
    Some(svg[start..].replacen("<svg ", "<svg role=\"img\" aria-label=\"QR code\" ", 1))
}

/// The signed-in user of an account form, with the address for the audit
/// log; otherwise the response to send instead.
async fn me(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    csrf: &str,
) -> Result<(crate::directory::Account, String), Response> {
    let user_id = signed_in_form(state, headers, csrf).await?;
    let snap = state.identity.directory.load();
    let account = snap.user_by_id(&user_id).and_then(|e| snap.account(&e.ndn)).cloned();
    let account = account.ok_or_else(|| signin_form(None, StatusCode::UNAUTHORIZED))?;
    let client = super::client_ip(&state.identity.config.http.trusted_proxies, peer.ip(), headers);
    Ok((account, format!("web:{client}")))
}

/// Writes an audit row for a change the user made to their second factors.
async fn audit(state: &AppState, account: &crate::directory::Account, source: &str, action: &str, detail: &str) {
    let now = state.identity.clock.now();
    if let Err(e) = state.identity.store.audit_event(&account.dn, action, &account.name, source, detail, now).await {
        tracing::error!(error = %e, action, "cannot write an audit row");
    }
}

const BACK: &str = "<p><a href=\"/account\">Back to my account</a></p>";

/// Forms with only the CSRF field.
#[derive(Debug, serde::Deserialize)]
struct CsrfForm {
    csrf: String,
}

/// Makes a one-time enrollment link and shows it with its QR code.
async fn add_device(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (account, source) = match me(&state, &headers, peer, &form.csrf).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let token = match state.identity.mfa.enrollment_token(&account.id).await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot create an enrollment token");
            return internal_error();
        }
    };
    audit(&state, &account, &source, "mfa.enrollment_link", "from the account page").await;
    let url = format!("{}/mfa/enroll#{token}", state.provider.issuer);
    let qr = qr_svg(&url).unwrap_or_default();
    let minutes = state.identity.config.mfa.enrollment_ttl_secs.div_ceil(60);
    let body = format!(
        "<p>Scan this code with your phone to enroll it, or open the link on the device: a phone's browser \
         opens the approval app, which can be installed to the home screen. The link works once, within \
         {minutes} minutes.</p><figure>{qr}<figcaption>Enrollment link for {user}</figcaption></figure>\
         <p><label for=\"link\">Enrollment link</label><br><input id=\"link\" readonly value=\"{link}\"></p>\
         <p>On a computer, the reference device enrolls with <code>portcullis device enroll 'LINK' --key-file FILE</code>.</p>{BACK}",
        user = esc(&account.name),
        link = esc(&url),
    );
    page(StatusCode::OK, "Add a device", &body)
}

/// Device form fields.
#[derive(Debug, serde::Deserialize)]
struct DeviceForm {
    csrf: String,
    id: String,
    name: Option<String>,
}

async fn rename_device(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<DeviceForm>,
) -> Response {
    let (account, source) = match me(&state, &headers, peer, &form.csrf).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let name = form.name.as_deref().unwrap_or("").trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        let body = format!("<p role=\"alert\" class=\"error\">A device name has 1 to 64 characters.</p>{BACK}");
        return page(StatusCode::BAD_REQUEST, "Device not renamed", &body);
    }
    let old = state.identity.store.device(&form.id).await.ok().flatten().filter(|d| d.user_id == account.id);
    match state.identity.store.rename_device(&account.id, &form.id, name).await {
        Ok(true) => {
            let old = old.map(|d| d.name).unwrap_or_default();
            audit(&state, &account, &source, "mfa.device_renamed", &format!("{old} -> {name} ({})", form.id)).await;
            Redirect::to("/account?done=device-renamed").into_response()
        }
        Ok(false) => page(StatusCode::NOT_FOUND, "No such device", &format!("<p>No such device.</p>{BACK}")),
        Err(e) => {
            tracing::error!(error = %e, "cannot rename a device");
            internal_error()
        }
    }
}

async fn remove_device(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<DeviceForm>,
) -> Response {
    let (account, source) = match me(&state, &headers, peer, &form.csrf).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let old = state.identity.store.device(&form.id).await.ok().flatten().filter(|d| d.user_id == account.id);
    match state.identity.store.remove_device(&account.id, &form.id).await {
        Ok(true) => {
            let name = old.map(|d| d.name).unwrap_or_default();
            audit(&state, &account, &source, "mfa.device_removed", &format!("{name} ({})", form.id)).await;
            Redirect::to("/account?done=device-removed").into_response()
        }
        Ok(false) => page(StatusCode::NOT_FOUND, "No such device", &format!("<p>No such device.</p>{BACK}")),
        Err(e) => {
            tracing::error!(error = %e, "cannot remove a device");
            internal_error()
        }
    }
}

/// The form that confirms a TOTP enrollment with a first code.
fn totp_confirm_form(csrf: &str) -> String {
    format!(
        "<form method=\"post\" action=\"/account/mfa/totp/confirm\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <p><label for=\"code\">6-digit code from your app</label><br>\
         <input id=\"code\" name=\"code\" inputmode=\"numeric\" pattern=\"[0-9]{{6}}\" maxlength=\"6\" \
         autocomplete=\"one-time-code\" required></p><p><button type=\"submit\">Confirm</button></p></form>"
    )
}

/// Starts TOTP enrollment: a new secret, shown once as a QR code and in
/// base32, confirmed by the first code.
async fn totp_start(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (account, source) = match me(&state, &headers, peer, &form.csrf).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let (url, secret) = match state.identity.mfa.start_totp(&account.id, &account.name, "Portcullis").await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start TOTP enrollment");
            return internal_error();
        }
    };
    audit(&state, &account, &source, "mfa.totp_started", "from the account page").await;
    let (csrf, c) = new_csrf();
    let qr = qr_svg(&url).unwrap_or_default();
    let body = format!(
        "<p>Scan this code with your authenticator app, or type the secret into it. Then enter the code the app \
         shows to confirm.</p><figure>{qr}<figcaption>Authenticator app setup for {user}</figcaption></figure>\
         <p><label for=\"secret\">Secret (base32)</label><br><input id=\"secret\" readonly value=\"{secret}\"></p>\
         {form}{BACK}",
        user = esc(&account.name),
        secret = esc(&secret),
        form = totp_confirm_form(&csrf),
    );
    with_csrf(page(StatusCode::OK, "Set up an authenticator app", &body), c)
}

/// TOTP confirmation form fields.
#[derive(Debug, serde::Deserialize)]
struct CodeForm {
    csrf: String,
    code: String,
}

async fn totp_confirm(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<CodeForm>,
) -> Response {
    let (account, source) = match me(&state, &headers, peer, &form.csrf).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let identity = &state.identity;
    let now = identity.clock.now();
    let client = super::client_ip(&identity.config.http.trusted_proxies, peer.ip(), &headers);
    // Wrong codes count like wrong second factors at sign-in.
    let key = factor::lockout_key(&account.id);
    if identity.lockout.is_locked(&key, Some(client), now) {
        let body = format!("<p role=\"alert\" class=\"error\">Too many wrong codes. Try again later.</p>{BACK}");
        return page(StatusCode::TOO_MANY_REQUESTS, "Code not accepted", &body);
    }
    match identity.mfa.verify_totp(&account.id, &form.code).await {
        Ok(true) => {
            identity.lockout.record_success(&key);
            audit(&state, &account, &source, "mfa.totp_confirmed", "from the account page").await;
            Redirect::to("/account?done=totp").into_response()
        }
        Ok(false) => {
            identity.lockout.record_failure(&key, Some(client), now);
            let (csrf, c) = new_csrf();
            let body = format!(
                "<p role=\"alert\" class=\"error\">That code is wrong, expired or was already used. Wait for the next \
                 code and try again.</p>{form}{BACK}",
                form = totp_confirm_form(&csrf),
            );
            with_csrf(page(StatusCode::BAD_REQUEST, "Code not accepted", &body), c)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot check a TOTP code");
            internal_error()
        }
    }
}

async fn totp_remove(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (account, source) = match me(&state, &headers, peer, &form.csrf).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    match state.identity.store.delete_totp(&account.id).await {
        Ok(removed) => {
            if removed {
                audit(&state, &account, &source, "mfa.totp_removed", "from the account page").await;
            }
            Redirect::to("/account?done=totp-removed").into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot remove TOTP");
            internal_error()
        }
    }
}

/// Replaces the recovery codes and shows the new ones, once.
async fn recovery_codes(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (account, source) = match me(&state, &headers, peer, &form.csrf).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let codes = match state.identity.mfa.new_recovery_codes(&account.id).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot create recovery codes");
            return internal_error();
        }
    };
    audit(&state, &account, &source, "mfa.recovery_codes_generated", "from the account page").await;
    let items: String =
        codes.iter().map(|c| format!("<li><code class=\"recovery-code\">{}</code></li>", esc(c))).collect();
    let body = format!(
        "<p role=\"status\">Keep these codes somewhere safe: this is the only time they are shown. Each one \
         works once, in place of your device or app; your old codes no longer work.</p><ol>{items}</ol>{BACK}"
    );
    page(StatusCode::OK, "Your recovery codes", &body)
}

/// The "Security keys and passkeys" part of the second factors: the user's
/// credentials with rename and remove, and the form `webauthn.js` runs to
/// add one (when WebAuthn is available on this server).
fn webauthn_section(keys: &[crate::store::WebauthnCredential], available: bool, csrf: &str) -> String {
    let hidden = format!("<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">");
    let items: String = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let used = k.last_used_at.map_or_else(|| "never".to_string(), generalized_time);
            format!(
                "<li><strong>{name}</strong>, added {added}, last used {used}\
                 <form method=\"post\" action=\"/account/mfa/webauthn/rename\">{hidden}\
                 <input type=\"hidden\" name=\"id\" value=\"{id}\">\
                 <label for=\"webauthn-rename-{i}\">New name for {name}</label> \
                 <input id=\"webauthn-rename-{i}\" name=\"name\" maxlength=\"{max}\" required> \
                 <button type=\"submit\">Rename</button></form>\
                 <form method=\"post\" action=\"/account/mfa/webauthn/remove\">{hidden}\
                 <input type=\"hidden\" name=\"id\" value=\"{id}\">\
                 <button type=\"submit\">Remove {name}</button></form></li>",
                name = esc(&k.name),
                id = esc(&k.id),
                added = generalized_time(k.created_at),
                max = crate::mfa::webauthn::MAX_NAME_CHARS,
            )
        })
        .collect();
    let list = if items.is_empty() {
        "<p>No security keys or passkeys.</p>".to_string()
    } else {
        format!("<ul class=\"webauthn-keys\">{items}</ul>")
    };
    let add = if available {
        format!(
            "<form method=\"post\" action=\"/account/mfa/webauthn/add\" data-webauthn=\"create\" \
             data-options=\"/account/mfa/webauthn/options\">{hidden}\
             <input type=\"hidden\" name=\"credential\" value=\"\">\
             <p><label for=\"webauthn-name\">Name of the new key</label><br>\
             <input id=\"webauthn-name\" name=\"name\" maxlength=\"{max}\" value=\"Security key\" required></p>\
             <p><button type=\"submit\">Add a security key or passkey</button> (needs JavaScript)</p>\
             <p class=\"webauthn-status\" role=\"status\"></p></form>",
            max = crate::mfa::webauthn::MAX_NAME_CHARS,
        )
    } else {
        "<p>Security keys and passkeys need this server to be reached by a domain name (its issuer URL), not an \
         IP address.</p>"
            .to_string()
    };
    format!("<h3>Security keys and passkeys</h3>{list}{add}")
}

/// `webauthn.js` asks for the options of `navigator.credentials.create`:
/// a registration challenge bound to this browser's session.
async fn webauthn_options(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    if !csrf_ok(&headers, &form.csrf) {
        return factor::json_error(StatusCode::FORBIDDEN, "The page expired. Reload it and try again.");
    }
    let Some(session) = current_session(&state, &headers).await else {
        return factor::json_error(StatusCode::UNAUTHORIZED, "You are signed out. Sign in again.");
    };
    let snap = state.identity.directory.load();
    let Some(user) = UserInfo::from_snapshot(&snap, &session.user_id) else {
        return factor::json_error(StatusCode::UNAUTHORIZED, "You are signed out. Sign in again.");
    };
    let mfa = &state.identity.mfa;
    match mfa.webauthn_register_start(&session.id_hash, &session.user_id, &user.preferred_username, &user.name).await {
        Ok(Ok(options)) => factor::json_answer(StatusCode::OK, options),
        Ok(Err(refusal)) => {
            tracing::info!(user = %user.preferred_username, reason = %refusal, "security key registration not started");
            factor::json_error(StatusCode::BAD_REQUEST, &format!("Cannot add a security key: {refusal}."))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start a WebAuthn registration");
            factor::json_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error.")
        }
    }
}

/// The add-a-key form, with the browser's registration answer.
#[derive(Debug, serde::Deserialize)]
struct WebauthnAddForm {
    csrf: String,
    name: String,
    #[serde(default)]
    credential: String,
}

async fn webauthn_add(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<WebauthnAddForm>,
) -> Response {
    let (account, source) = match me(&state, &headers, peer, &form.csrf).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Some(session) = current_session(&state, &headers).await else {
        return signin_form(None, StatusCode::UNAUTHORIZED);
    };
    let refused = |message: &str| {
        let body = format!("<p role=\"alert\" class=\"error\">{}</p>{BACK}", esc(message));
        page(StatusCode::BAD_REQUEST, "Security key not added", &body)
    };
    let Some(name) = crate::mfa::webauthn::clean_name(&form.name) else {
        return refused("A security key's name has 1 to 64 characters.");
    };
    if form.credential.trim().is_empty() {
        return refused("Your browser sent no answer from a security key: adding one needs JavaScript.");
    }
    let mfa = &state.identity.mfa;
    match mfa.webauthn_register_finish(&session.id_hash, &account.id, &name, &form.credential).await {
        Ok(Ok(key)) => {
            audit(&state, &account, &source, "mfa.webauthn_added", &format!("{} ({})", key.name, key.id)).await;
            Redirect::to("/account?done=webauthn-added").into_response()
        }
        Ok(Err(refusal)) => {
            tracing::info!(user = %account.name, reason = %refusal, "security key not added");
            refused(&format!("The security key was not added: {refusal}."))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot finish a WebAuthn registration");
            internal_error()
        }
    }
}

async fn webauthn_rename(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<DeviceForm>,
) -> Response {
    let (account, source) = match me(&state, &headers, peer, &form.csrf).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Some(name) = crate::mfa::webauthn::clean_name(form.name.as_deref().unwrap_or("")) else {
        let body = format!("<p role=\"alert\" class=\"error\">A security key's name has 1 to 64 characters.</p>{BACK}");
        return page(StatusCode::BAD_REQUEST, "Security key not renamed", &body);
    };
    let store = &state.identity.store;
    let old = store.webauthn_credential(&account.id, &form.id).await.ok().flatten();
    match store.rename_webauthn_credential(&account.id, &form.id, &name).await {
        Ok(true) => {
            let old = old.map(|k| k.name).unwrap_or_default();
            audit(&state, &account, &source, "mfa.webauthn_renamed", &format!("{old} -> {name} ({})", form.id)).await;
            Redirect::to("/account?done=webauthn-renamed").into_response()
        }
        Ok(false) => {
            page(StatusCode::NOT_FOUND, "No such security key", &format!("<p>No such security key.</p>{BACK}"))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot rename a security key");
            internal_error()
        }
    }
}

async fn webauthn_remove(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<DeviceForm>,
) -> Response {
    let (account, source) = match me(&state, &headers, peer, &form.csrf).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let store = &state.identity.store;
    let old = store.webauthn_credential(&account.id, &form.id).await.ok().flatten();
    match store.remove_webauthn_credential(&account.id, &form.id).await {
        Ok(true) => {
            let name = old.map(|k| k.name).unwrap_or_default();
            audit(&state, &account, &source, "mfa.webauthn_removed", &format!("{name} ({})", form.id)).await;
            Redirect::to("/account?done=webauthn-removed").into_response()
        }
        Ok(false) => {
            page(StatusCode::NOT_FOUND, "No such security key", &format!("<p>No such security key.</p>{BACK}"))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot remove a security key");
            internal_error()
        }
    }
}
