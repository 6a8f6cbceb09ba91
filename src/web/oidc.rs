//! OpenID provider endpoints: discovery, JWKS, token (authorization_code
//! with PKCE, refresh_token, client_credentials), userinfo, revocation,
//! introspection.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;

use super::AppState;
use crate::oidc::{TokenError, client_secret_matches};

/// The provider's routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/oauth-authorization-server", get(discovery))
        .route("/oidc/jwks", get(jwks))
        .route("/oidc/token", post(token))
        .route("/oidc/userinfo", get(userinfo).post(userinfo))
        .route("/oidc/revoke", post(revoke))
        .route("/oidc/introspect", post(introspect))
}

async fn discovery(State(state): State<AppState>) -> Response {
    cacheable(Json(state.provider.discovery()).into_response())
}

async fn jwks(State(state): State<AppState>) -> Response {
    let mut r = Json(state.provider.keys.load().jwks.clone()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/jwk-set+json"));
    cacheable(r)
}

fn cacheable(mut r: Response) -> Response {
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    r
}

/// Token request fields (RFC 6749 §4.4, §2.3.1).
#[derive(Debug, Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    scope: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
}

/// Authenticates the calling client: confidential clients with their secret
/// (Basic or form), public clients by naming themselves (they prove
/// possession through PKCE instead).
async fn authenticate_client(
    state: &AppState,
    headers: &HeaderMap,
    form_id: Option<String>,
    form_secret: Option<String>,
) -> Result<std::sync::Arc<crate::model::OidcClient>, OAuthError> {
    let (client_id, secret) = match (basic_credentials(headers), form_id, form_secret) {
        (Some(creds), None, None) => (creds.0, Some(creds.1)),
        (Some((id, secret)), Some(form_id), None) if form_id == id => (id, Some(secret)),
        (None, Some(id), secret) => (id, secret),
        (Some(_), _, _) => return Err(OAuthError(TokenError::InvalidRequest, "use one client authentication method")),
        (None, None, _) => return Err(OAuthError(TokenError::InvalidClient, "client authentication required")),
    };
    let authenticated = state.provider.client(&client_id).filter(|c| match (&c.secret_hash, &secret) {
        (Some(_), Some(s)) => client_secret_matches(c, s),
        (None, None) => true,
        _ => false,
    });
    authenticated.ok_or_else(|| {
        tracing::info!(client = %client_id, "request with bad client credentials");
        OAuthError(TokenError::InvalidClient, "unknown client or wrong secret")
    })
}

/// An OAuth error response (RFC 6749 §5.2).
struct OAuthError(TokenError, &'static str);

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = match self.0 {
            TokenError::InvalidClient => StatusCode::UNAUTHORIZED,
            TokenError::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        let body = serde_json::json!({ "error": self.0.code(), "error_description": self.1 });
        let mut r = (status, Json(body)).into_response();
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.0 == TokenError::InvalidClient {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"portcullis\""));
        }
        r
    }
}

/// `client_secret_basic` credentials: each part is form-urlencoded inside the base64.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| form_urlencoded::parse(format!("v={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    Some((unescape(id)?, unescape(secret)?))
}

async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Result<Response, OAuthError> {
    let Ok(Form(form)) = form else {
        return Err(OAuthError(TokenError::InvalidRequest, "the body must be application/x-www-form-urlencoded"));
    };
    let client = authenticate_client(&state, &headers, form.client_id.clone(), form.client_secret.clone()).await?;
    let now = state.identity.clock.now();
    let provider = &state.provider;
    let body = match form.grant_type.as_deref() {
        Some("client_credentials") if client.secret_hash.is_some() => {
            let scope = form.scope.unwrap_or_default();
            if scope.len() > 1024 {
                return Err(OAuthError(TokenError::InvalidRequest, "scope too long"));
            }
            let access_token = provider
                .client_credentials_token(&client, &scope, now)
                .map_err(|e| OAuthError(e, "cannot sign the token"))?;
            let mut body = serde_json::json!({
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": provider.access_token_ttl,
            });
            if !scope.is_empty() {
                body["scope"] = serde_json::Value::String(scope);
            }
            body
        }
        Some("client_credentials") => {
            return Err(OAuthError(TokenError::UnauthorizedClient, "public clients cannot use client_credentials"));
        }
        Some("authorization_code") => authorization_code(&state, &client, &form, now).await?,
        Some("refresh_token") => refresh_token(&state, &client, &form, now).await?,
        Some(_) => {
            return Err(OAuthError(
                TokenError::UnsupportedGrantType,
                "supported: authorization_code, refresh_token, client_credentials",
            ));
        }
        None => return Err(OAuthError(TokenError::InvalidRequest, "grant_type is required")),
    };
    let mut r = Json(body).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// Redeems an authorization code (RFC 6749 §4.1.3, RFC 7636).
async fn authorization_code(
    state: &AppState,
    client: &crate::model::OidcClient,
    form: &TokenForm,
    now: i64,
) -> Result<serde_json::Value, OAuthError> {
    let code = form.code.as_deref().ok_or(OAuthError(TokenError::InvalidRequest, "code is required"))?;
    let code_hash = crate::oidc::hash_client_secret(code);
    let store = &state.identity.store;
    let family = uuid::Uuid::new_v4().to_string();
    let redeemed = store.redeem_code(&code_hash, &family).await.map_err(internal)?;
    let invalid = |why| OAuthError(TokenError::InvalidGrant, why);
    let Some((grant, family, first_use)) = redeemed else { return Err(invalid("unknown code")) };
    if !first_use {
        // RFC 6749 §4.1.2: revoke what the first redemption produced.
        tracing::warn!(client = %client.name, "authorization code reused; revoking its tokens");
        if !family.is_empty() {
            store.revoke_family(&family, now).await.map_err(internal)?;
        }
        return Err(invalid("code already used"));
    }
    if grant.client_name != client.name {
        return Err(invalid("code was issued to another client"));
    }
    if grant.expires_at <= now {
        return Err(invalid("code expired"));
    }
    if form.redirect_uri.as_deref() != Some(grant.redirect_uri.as_str()) {
        return Err(invalid("redirect_uri does not match the authorization request"));
    }
    match (&grant.code_challenge, form.code_verifier.as_deref()) {
        (Some(challenge), Some(verifier)) if crate::oidc::pkce_matches(challenge, verifier) => {}
        (Some(_), _) => return Err(invalid("PKCE verification failed")),
        (None, Some(_)) => return Err(invalid("no code_challenge was sent for this code")),
        (None, None) if client.secret_hash.is_none() => return Err(invalid("public clients must use PKCE")),
        (None, None) => {}
    }
    let issue = Issue {
        user_id: &grant.user_id,
        scope: &grant.scope,
        nonce: grant.nonce.as_deref(),
        auth_time: grant.auth_time,
        family: &family,
        sid: grant.sid.as_deref(),
        amr: grant.amr.as_deref(),
    };
    issue_tokens(state, client, &issue, now).await
}

/// What a token response is about.
struct Issue<'a> {
    user_id: &'a str,
    scope: &'a str,
    nonce: Option<&'a str>,
    auth_time: i64,
    family: &'a str,
    /// The sign-in session, for the ID token's `sid` (back-channel logout).
    sid: Option<&'a str>,
    /// How the user authenticated, for the ID token's `amr` (code grants
    /// only: a refreshed ID token does not repeat it).
    amr: Option<&'a str>,
}

/// ID token, access token, and (with offline_access) a new refresh token.
async fn issue_tokens(
    state: &AppState,
    client: &crate::model::OidcClient,
    issue: &Issue<'_>,
    now: i64,
) -> Result<serde_json::Value, OAuthError> {
    let snap = state.identity.directory.load();
    let user = crate::oidc::UserInfo::from_snapshot(&snap, issue.user_id)
        .ok_or(OAuthError(TokenError::InvalidGrant, "the user no longer exists"))?;
    let provider = &state.provider;
    let fail = |e| OAuthError(e, "cannot sign the token");
    let id_token = provider
        .id_token(client, &user, issue.scope, issue.nonce, issue.auth_time, issue.sid, issue.amr, now)
        .map_err(fail)?;
    let access_token =
        provider.user_access_token(client, issue.user_id, issue.scope, issue.family, now).map_err(fail)?;
    let mut body = serde_json::json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": provider.access_token_ttl,
        "id_token": id_token,
        "scope": issue.scope,
    });
    if issue.scope.split(' ').any(|s| s == "offline_access") {
        let refresh = crate::oidc::random_token();
        let grant = crate::store::RefreshGrant {
            family_id: issue.family.to_string(),
            client_name: client.name.clone(),
            user_id: issue.user_id.to_string(),
            scope: issue.scope.to_string(),
            auth_time: issue.auth_time,
            expires_at: now + crate::oidc::REFRESH_TOKEN_SECS,
            sid: issue.sid.map(str::to_string),
        };
        let hash = crate::oidc::hash_client_secret(&refresh);
        let stored = state.identity.store.insert_refresh(&hash, &grant).await;
        stored.map_err(internal)?;
        body["refresh_token"] = refresh.into();
    }
    Ok(body)
}

/// Rotates a refresh token (RFC 6749 §6); a reused one revokes its family.
async fn refresh_token(
    state: &AppState,
    client: &crate::model::OidcClient,
    form: &TokenForm,
    now: i64,
) -> Result<serde_json::Value, OAuthError> {
    use crate::store::RefreshOutcome;
    let token =
        form.refresh_token.as_deref().ok_or(OAuthError(TokenError::InvalidRequest, "refresh_token is required"))?;
    let invalid = |why| OAuthError(TokenError::InvalidGrant, why);
    let outcome =
        state.identity.store.redeem_refresh(&crate::oidc::hash_client_secret(token), now).await.map_err(internal)?;
    let grant = match outcome {
        RefreshOutcome::Unknown => return Err(invalid("unknown refresh token")),
        RefreshOutcome::Reused(g) => {
            tracing::warn!(client = %g.client_name, "refresh token reused; its family is revoked");
            return Err(invalid("refresh token already used or revoked"));
        }
        RefreshOutcome::Fresh(g) => g,
    };
    if grant.client_name != client.name {
        return Err(invalid("refresh token was issued to another client"));
    }
    if grant.expires_at <= now {
        return Err(invalid("refresh token expired"));
    }
    // A client may ask again for the granted scope or a narrower one (Authlib re-sends it).
    let scope = match form.scope.as_deref() {
        Some(asked) => {
            let granted: Vec<&str> = grant.scope.split(' ').collect();
            if !asked.split(' ').filter(|s| !s.is_empty()).all(|s| granted.contains(&s)) {
                return Err(OAuthError(TokenError::InvalidScope, "scope exceeds the original grant"));
            }
            asked.to_string()
        }
        None => grant.scope.clone(),
    };
    let issue = Issue {
        user_id: &grant.user_id,
        scope: &scope,
        nonce: None,
        auth_time: grant.auth_time,
        family: &grant.family_id,
        sid: grant.sid.as_deref(),
        amr: None,
    };
    issue_tokens(state, client, &issue, now).await
}

/// Revocation and introspection request fields (RFC 7009, RFC 7662).
#[derive(Debug, Deserialize)]
struct TokenRefForm {
    token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

fn form_error() -> OAuthError {
    OAuthError(TokenError::InvalidRequest, "the body must be application/x-www-form-urlencoded")
}

/// Revocation (RFC 7009): revokes the token's whole family; always 200 for
/// tokens that are unknown or not the caller's.
async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<TokenRefForm>, FormRejection>,
) -> Result<Response, OAuthError> {
    let Ok(Form(form)) = form else { return Err(form_error()) };
    let client = authenticate_client(&state, &headers, form.client_id, form.client_secret).await?;
    let token = form.token.ok_or(OAuthError(TokenError::InvalidRequest, "token is required"))?;
    let now = state.identity.clock.now();
    let store = &state.identity.store;
    let family = match state.provider.verify_access_token(&token, now) {
        Some(a) if a.client_id == client.name => Some(a.fam),
        Some(_) => None,
        None => store
            .live_refresh(&crate::oidc::hash_client_secret(&token), now)
            .await
            .ok()
            .flatten()
            .filter(|g| g.client_name == client.name)
            .map(|g| g.family_id),
    };
    if let Some(family) = family {
        store.revoke_family(&family, now).await.map_err(internal)?;
        tracing::info!(client = %client.name, "token family revoked");
    }
    Ok(StatusCode::OK.into_response())
}

/// Introspection (RFC 7662), for confidential clients.
async fn introspect(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<TokenRefForm>, FormRejection>,
) -> Result<Response, OAuthError> {
    let Ok(Form(form)) = form else { return Err(form_error()) };
    let client = authenticate_client(&state, &headers, form.client_id, form.client_secret).await?;
    if client.secret_hash.is_none() {
        return Err(OAuthError(TokenError::UnauthorizedClient, "public clients cannot introspect"));
    }
    let token = form.token.ok_or(OAuthError(TokenError::InvalidRequest, "token is required"))?;
    let now = state.identity.clock.now();
    let store = &state.identity.store;
    let inactive = serde_json::json!({ "active": false });
    let body = if let Some(a) = state.provider.verify_access_token(&token, now) {
        if store.family_revoked(&a.fam).await.unwrap_or(true) {
            inactive
        } else {
            serde_json::json!({
                "active": true, "token_type": "Bearer", "client_id": a.client_id, "sub": a.sub,
                "scope": a.scope, "exp": a.exp, "iat": a.iat, "iss": state.provider.issuer,
            })
        }
    } else if let Ok(Some(g)) = store.live_refresh(&crate::oidc::hash_client_secret(&token), now).await {
        serde_json::json!({
            "active": true, "token_type": "refresh_token", "client_id": g.client_name, "sub": g.user_id,
            "scope": g.scope, "exp": g.expires_at, "iss": state.provider.issuer,
        })
    } else {
        inactive
    };
    let mut r = Json(body).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// Userinfo (OIDC Core §5.3): the claims the token's scope releases.
async fn userinfo(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let unauthorized = |error: &str| {
        let mut r = (StatusCode::UNAUTHORIZED, Json(serde_json::json!({ "error": error }))).into_response();
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer error=\"{error}\"")) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        r
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let Some(token) = token else { return unauthorized("invalid_request") };
    let now = state.identity.clock.now();
    let Some(access) = state.provider.verify_access_token(token.trim(), now) else {
        return unauthorized("invalid_token");
    };
    if state.identity.store.family_revoked(&access.fam).await.unwrap_or(true) {
        return unauthorized("invalid_token");
    }
    let snap = state.identity.directory.load();
    let Some(user) = crate::oidc::UserInfo::from_snapshot(&snap, &access.sub) else {
        return unauthorized("invalid_token");
    };
    let Some(client) = state.provider.client(&access.client_id) else { return unauthorized("invalid_token") };
    let mut r = Json(user.claims(&access.scope, &client)).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A store failure behind a token request: logged here, generic to the client.
fn internal(e: crate::store::StoreError) -> OAuthError {
    tracing::error!(error = %e, "token endpoint store failure");
    OAuthError(TokenError::ServerError, "internal error")
}
