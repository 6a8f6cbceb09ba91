//! OpenID provider endpoints: discovery, JWKS, token (authorization_code
//! with PKCE, client_credentials), userinfo.

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
    // Confidential clients authenticate with their secret; public clients
    // name themselves and prove possession through PKCE.
    let (client_id, secret) = match (basic_credentials(&headers), form.client_id.clone(), form.client_secret.clone()) {
        (Some(creds), None, None) => (creds.0, Some(creds.1)),
        (Some((id, secret)), Some(form_id), None) if form_id == id => (id, Some(secret)),
        (None, Some(id), secret) => (id, secret),
        (Some(_), _, _) => return Err(OAuthError(TokenError::InvalidRequest, "use one client authentication method")),
        (None, None, _) => return Err(OAuthError(TokenError::InvalidClient, "client authentication required")),
    };
    let client = state.identity.store.oidc_client(&client_id).await.map_err(|e| {
        tracing::error!(error = %e, "client lookup failed");
        OAuthError(TokenError::ServerError, "internal error")
    })?;
    let authenticated = client.filter(|c| match (&c.secret_hash, &secret) {
        (Some(_), Some(s)) => client_secret_matches(c, s),
        (None, None) => true,
        _ => false,
    });
    let Some(client) = authenticated else {
        tracing::info!(client = %client_id, "token request with bad client credentials");
        return Err(OAuthError(TokenError::InvalidClient, "unknown client or wrong secret"));
    };
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
        Some(_) => {
            return Err(OAuthError(
                TokenError::UnsupportedGrantType,
                "supported: authorization_code, client_credentials",
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
    let redeemed = state
        .identity
        .store
        .redeem_code(&crate::oidc::hash_client_secret(code))
        .await
        .map_err(|_| OAuthError(TokenError::ServerError, "internal error"))?;
    let invalid = |why| OAuthError(TokenError::InvalidGrant, why);
    let Some((grant, first_use)) = redeemed else { return Err(invalid("unknown code")) };
    if !first_use {
        tracing::warn!(client = %client.name, "authorization code reused");
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
    let snap = state.identity.directory.load();
    let user =
        crate::oidc::UserInfo::from_snapshot(&snap, &grant.user_id).ok_or(invalid("the user no longer exists"))?;
    let provider = &state.provider;
    let fail = |e| OAuthError(e, "cannot sign the token");
    let id_token =
        provider.id_token(client, &user, &grant.scope, grant.nonce.as_deref(), grant.auth_time, now).map_err(fail)?;
    let access_token = provider.user_access_token(client, &grant.user_id, &grant.scope, now).map_err(fail)?;
    Ok(serde_json::json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": provider.access_token_ttl,
        "id_token": id_token,
        "scope": grant.scope,
    }))
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
    let Some(access) = state.provider.verify_access_token(token.trim()) else { return unauthorized("invalid_token") };
    let snap = state.identity.directory.load();
    let Some(user) = crate::oidc::UserInfo::from_snapshot(&snap, &access.sub) else {
        return unauthorized("invalid_token");
    };
    let Ok(Some(client)) = state.identity.store.oidc_client(&access.client_id).await else {
        return unauthorized("invalid_token");
    };
    let mut r = Json(user.claims(&access.scope, &client)).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
