//! The OpenID provider's core: signing keys, client authentication, token
//! issuance. HTTP handlers live in `web/`; this module names no axum type.
//!
//! Implemented so far: discovery, JWKS, and the token endpoint's
//! `client_credentials` grant (RS256 JWT access tokens, RFC 9068 shape).
//! The authorization-code flow and web sign-in are not built yet.

pub mod keys;

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::OidcClient;

/// Claims of an access token (RFC 9068).
#[derive(Debug, Serialize)]
pub struct AccessClaims<'a> {
    pub iss: &'a str,
    pub sub: &'a str,
    pub aud: &'a str,
    pub client_id: &'a str,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub scope: &'a str,
}

/// Errors of the token endpoint, as OAuth error codes (RFC 6749 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    InvalidRequest,
    InvalidClient,
    UnauthorizedClient,
    UnsupportedGrantType,
    ServerError,
}

impl TokenError {
    /// The `error` value.
    pub fn code(self) -> &'static str {
        match self {
            TokenError::InvalidRequest => "invalid_request",
            TokenError::InvalidClient => "invalid_client",
            TokenError::UnauthorizedClient => "unauthorized_client",
            TokenError::UnsupportedGrantType => "unsupported_grant_type",
            TokenError::ServerError => "server_error",
        }
    }
}

/// SHA-256 (hex) of a client secret. Secrets are 256-bit random values, so a
/// fast hash is enough; a password hash would only slow the token endpoint.
pub fn hash_client_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `secret` matches the client's stored hash, in constant time.
pub fn client_secret_matches(client: &OidcClient, secret: &str) -> bool {
    match &client.secret_hash {
        Some(stored) => bool::from(hash_client_secret(secret).as_bytes().ct_eq(stored.as_bytes())),
        None => false,
    }
}

/// The provider's shared state.
pub struct Provider {
    pub issuer: String,
    pub access_token_ttl: i64,
    pub keys: ArcSwap<keys::KeySet>,
}

impl Provider {
    /// Signs an access token for a client acting on its own behalf.
    ///
    /// # Errors
    /// Signing failed.
    pub fn client_credentials_token(&self, client: &OidcClient, scope: &str, now: i64) -> Result<String, TokenError> {
        let keys = self.keys.load();
        let claims = AccessClaims {
            iss: &self.issuer,
            sub: &client.name,
            aud: &client.name,
            client_id: &client.name,
            iat: now,
            exp: now + self.access_token_ttl,
            jti: uuid::Uuid::new_v4().to_string(),
            scope,
        };
        let mut header = jsonwebtoken::Header::new(keys.active.alg);
        header.kid = Some(keys.active.kid.clone());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, &claims, &keys.active.encoding).map_err(|_| TokenError::ServerError)
    }

    /// The discovery document: only what is implemented.
    pub fn discovery(&self) -> serde_json::Value {
        let i = &self.issuer;
        serde_json::json!({
            "issuer": i,
            "jwks_uri": format!("{i}/oidc/jwks"),
            "token_endpoint": format!("{i}/oidc/token"),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": [],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })
    }
}

/// Shared handle to the provider.
pub type SharedProvider = Arc<Provider>;
