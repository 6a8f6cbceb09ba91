//! "My account": profile, password change, and the list of sign-in sessions
//! with revoke. Server-rendered forms, no JavaScript, CSRF on every form.

use axum::Router;
use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use std::net::SocketAddr;

use super::AppState;
use super::signin::{
    SESSION_COOKIE, cookie, csrf_ok, current_session, end_session, esc, expired_form, new_csrf, page, password_sign_in,
    start_session,
};
use crate::clock::generalized_time;
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
        _ => "",
    };
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
         <h2>Sessions</h2><ul>{rows}</ul>\
         <form method=\"post\" action=\"/account/signout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <p><button type=\"submit\">Sign out</button></p></form>",
        name = esc(&user.preferred_username),
        display = esc(&user.name),
        email = esc(user.email.as_deref().unwrap_or("")),
        groups = esc(&user.groups.join(", ")),
    );
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
    let now = state.identity.clock.now();
    let Some((session, _)) = start_session(&state, &headers, &account.id, now).await else {
        return page(StatusCode::INTERNAL_SERVER_ERROR, "Error", "<p>Internal error.</p>");
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
        return page(StatusCode::INTERNAL_SERVER_ERROR, "Error", "<p>Internal error.</p>");
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
