//! OpenID provider endpoints: discovery, JWKS, token (client_credentials).

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
    let (client_id, secret) = match (basic_credentials(&headers), form.client_id, form.client_secret) {
        (Some(creds), None, None) => creds,
        (Some((id, secret)), Some(form_id), None) if form_id == id => (id, secret),
        (None, Some(id), Some(secret)) => (id, secret),
        (Some(_), _, _) => return Err(OAuthError(TokenError::InvalidRequest, "use one client authentication method")),
        _ => return Err(OAuthError(TokenError::InvalidClient, "client authentication required")),
    };
    let client = state.identity.store.oidc_client(&client_id).await.map_err(|e| {
        tracing::error!(error = %e, "client lookup failed");
        OAuthError(TokenError::ServerError, "internal error")
    })?;
    let Some(client) = client.filter(|c| client_secret_matches(c, &secret)) else {
        tracing::info!(client = %client_id, "token request with bad client credentials");
        return Err(OAuthError(TokenError::InvalidClient, "unknown client or wrong secret"));
    };
    match form.grant_type.as_deref() {
        Some("client_credentials") => {}
        Some(_) => return Err(OAuthError(TokenError::UnsupportedGrantType, "supported: client_credentials")),
        None => return Err(OAuthError(TokenError::InvalidRequest, "grant_type is required")),
    }
    let scope = form.scope.unwrap_or_default();
    if scope.len() > 1024 {
        return Err(OAuthError(TokenError::InvalidRequest, "scope too long"));
    }
    let now = state.identity.clock.now();
    let provider = &state.provider;
    let access_token =
        provider.client_credentials_token(&client, &scope, now).map_err(|e| OAuthError(e, "cannot sign the token"))?;
    let mut body = serde_json::json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": provider.access_token_ttl,
    });
    if !scope.is_empty() {
        body["scope"] = serde_json::Value::String(scope);
    }
    let mut r = Json(body).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}
