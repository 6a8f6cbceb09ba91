//! The OpenID provider's core: signing keys, client authentication, token
//! issuance. HTTP handlers live in `web/`; this module names no axum type.
//!
//! ID tokens are JWTs signed with the keys in [`keys`]; access tokens are
//! opaque (see [`access`] for why); refresh tokens and codes are random
//! values stored hashed.

pub mod access;
pub mod backchannel;
pub mod keys;

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

use crate::directory::Snapshot;
use crate::model::{OidcClient, SigningAlg};

/// Scopes the provider knows; others are dropped from grants.
pub const SCOPES: &[&str] = &["openid", "profile", "email", "groups", "offline_access"];

/// Refresh tokens expire after this long (each use issues a new one).
pub const REFRESH_TOKEN_SECS: i64 = 30 * 24 * 3600;

/// Logout tokens are delivered at once; a short life limits replay.
pub const LOGOUT_TOKEN_SECS: i64 = 120;

/// The `events` member that makes a JWT a back-channel logout token.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// A fresh 256-bit bearer value (codes, session ids, CSRF tokens).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether a PKCE verifier matches an S256 challenge (RFC 7636).
pub fn pkce_matches(challenge: &str, verifier: &str) -> bool {
    let ok_len = (43..=128).contains(&verifier.len());
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    ok_len && bool::from(computed.as_bytes().ct_eq(challenge.as_bytes()))
}

/// What the provider says about a user.
#[derive(Debug, Clone)]
pub struct UserInfo {
    pub sub: String,
    pub preferred_username: String,
    pub name: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
}

impl UserInfo {
    /// Reads a user from the directory snapshot by stable id.
    pub fn from_snapshot(snap: &Snapshot, user_id: &str) -> Option<Self> {
        let e = snap.user_by_id(user_id)?;
        let username = e.values("uid").first()?.to_string();
        Some(Self {
            sub: user_id.to_string(),
            name: e.values("displayName").first().map_or_else(|| username.clone(), |s| s.to_string()),
            email: e.values("mail").first().map(|s| s.to_string()),
            groups: snap.groups_of(&username),
            preferred_username: username,
        })
    }

    /// Whether this user may sign in to `client` (its group allowlist).
    pub fn allowed(&self, client: &OidcClient) -> bool {
        client.allowed_groups.is_empty() || client.allowed_groups.iter().any(|g| self.groups.contains(g))
    }

    /// The claims that `scope` releases to `client`.
    pub fn claims(&self, scope: &str, client: &OidcClient) -> serde_json::Map<String, serde_json::Value> {
        let has = |s: &str| scope.split(' ').any(|x| x == s);
        let mut m = serde_json::Map::new();
        m.insert("sub".into(), self.sub.clone().into());
        if has("profile") {
            m.insert("preferred_username".into(), self.preferred_username.clone().into());
            m.insert("name".into(), self.name.clone().into());
        }
        if has("email") {
            if let Some(e) = &self.email {
                m.insert("email".into(), e.clone().into());
                // Addresses are set by admins, not proven by a mail round trip.
                m.insert("email_verified".into(), false.into());
            }
        }
        if has("groups") {
            let groups: Vec<&String> = self
                .groups
                .iter()
                .filter(|g| client.allowed_groups.is_empty() || client.allowed_groups.contains(g))
                .collect();
            m.insert("groups".into(), serde_json::json!(groups));
        }
        m
    }
}

/// Errors of the token endpoint, as OAuth error codes (RFC 6749 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    InvalidScope,
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
            TokenError::InvalidGrant => "invalid_grant",
            TokenError::InvalidScope => "invalid_scope",
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
    /// Seals and opens access tokens.
    pub access: access::AccessTokenCodec,
    /// Registered clients by name, reloaded with the directory snapshot.
    pub clients: ArcSwap<ClientMap>,
}

/// Registered clients by `client_id`.
pub type ClientMap = std::collections::HashMap<String, Arc<OidcClient>>;

/// Indexes clients by name.
pub fn client_map(clients: Vec<OidcClient>) -> ClientMap {
    clients.into_iter().map(|c| (c.name.clone(), Arc::new(c))).collect()
}

impl Provider {
    /// An access token for a client acting on its own behalf (its own family,
    /// so it can be revoked).
    ///
    /// # Errors
    /// Sealing failed.
    pub fn client_credentials_token(&self, client: &OidcClient, scope: &str, now: i64) -> Result<String, TokenError> {
        let family = uuid::Uuid::new_v4().to_string();
        self.user_access_token(client, &client.name, scope, &family, now)
    }

    /// Builds a compact JWS (RFC 7515) signed with the active key of `alg`,
    /// whose `kid` goes in the header.
    fn sign(&self, claims: &impl Serialize, typ: &str, alg: SigningAlg) -> Result<String, TokenError> {
        let keys = self.keys.load();
        let key = keys.signer(alg);
        let header = serde_json::json!({ "typ": typ, "alg": key.alg.as_str(), "kid": key.kid });
        let payload = serde_json::to_vec(claims).map_err(|_| TokenError::ServerError)?;
        let mut jws = format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(payload));
        let signature = key.sign(jws.as_bytes()).map_err(|_| TokenError::ServerError)?;
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(jws)
    }

    /// Signs an ID token for `user` signing in to `client`, with the
    /// client's registered algorithm.
    ///
    /// # Errors
    /// Signing failed.
    #[allow(clippy::too_many_arguments, reason = "each is one claim's source; a struct would only rename them")]
    pub fn id_token(
        &self,
        client: &OidcClient,
        user: &UserInfo,
        scope: &str,
        nonce: Option<&str>,
        auth_time: i64,
        sid: Option<&str>,
        amr: Option<&str>,
        now: i64,
    ) -> Result<String, TokenError> {
        let mut claims = user.claims(scope, client);
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), client.name.clone().into());
        claims.insert("azp".into(), client.name.clone().into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + self.access_token_ttl).into());
        claims.insert("auth_time".into(), auth_time.into());
        if let Some(n) = nonce {
            claims.insert("nonce".into(), n.into());
        }
        if let Some(sid) = sid {
            // The sign-in session, so back-channel logout tokens can name it.
            claims.insert("sid".into(), sid.into());
        }
        if let Some(amr) = amr.filter(|a| !a.is_empty()) {
            // RFC 8176 method references: "pwd", plus "otp"/"mfa" after a second factor.
            let methods: Vec<serde_json::Value> = amr.split(' ').map(Into::into).collect();
            claims.insert("amr".into(), methods.into());
        }
        self.sign(&claims, "JWT", client.id_token_signed_response_alg)
    }

    /// An opaque access token for `subject` (a user id, or the client's own
    /// name), usable at userinfo and introspection.
    ///
    /// # Errors
    /// Sealing failed.
    pub fn user_access_token(
        &self,
        client: &OidcClient,
        subject: &str,
        scope: &str,
        family: &str,
        now: i64,
    ) -> Result<String, TokenError> {
        let token = access::AccessToken {
            sub: subject.to_string(),
            client_id: client.name.clone(),
            scope: scope.to_string(),
            fam: family.to_string(),
            iat: now,
            exp: now + self.access_token_ttl,
        };
        self.access.seal(&token).map_err(|_| TokenError::ServerError)
    }

    /// Signs a logout token (OIDC Back-Channel Logout 1.0 §2.4) telling
    /// `client` that the session `sid` of user `sub` ended. It never carries
    /// a nonce, so it cannot pass for an ID token.
    ///
    /// # Errors
    /// Signing failed.
    pub fn logout_token(&self, client: &OidcClient, sub: &str, sid: &str, now: i64) -> Result<String, TokenError> {
        let mut events = serde_json::Map::new();
        events.insert(BACKCHANNEL_LOGOUT_EVENT.into(), serde_json::json!({}));
        let claims = serde_json::json!({
            "iss": self.issuer,
            "aud": client.name,
            "iat": now,
            "exp": now + LOGOUT_TOKEN_SECS,
            "jti": uuid::Uuid::new_v4().to_string(),
            "sub": sub,
            "sid": sid,
            "events": events,
        });
        // The client's ID-token algorithm: the one it is known to verify.
        self.sign(&claims, "logout+jwt", client.id_token_signed_response_alg)
    }

    /// Reads an ID token we issued (signature and issuer; expiry ignored, as
    /// `id_token_hint` allows): returns (client, subject). Any published key
    /// of any algorithm, chosen by `kid`, and only with that key's own `alg`.
    pub fn id_token_hint(&self, token: &str) -> Option<(String, String)> {
        #[derive(serde::Deserialize)]
        struct Hint {
            aud: String,
            sub: String,
        }
        let header = jsonwebtoken::decode_header(token).ok()?;
        let keys = self.keys.load();
        let key = keys.verifier(header.kid.as_deref()?, header.alg)?;
        let mut validation = jsonwebtoken::Validation::new(keys::jwt_algorithm(key.alg));
        validation.set_issuer(&[&self.issuer]);
        validation.validate_aud = false;
        validation.validate_exp = false;
        validation.required_spec_claims.remove("exp");
        jsonwebtoken::decode::<Hint>(token, &key.key, &validation).ok().map(|d| (d.claims.aud, d.claims.sub))
    }

    /// Reads one of our unexpired access tokens (revocation is the caller's check).
    pub fn verify_access_token(&self, token: &str, now: i64) -> Option<access::AccessToken> {
        self.access.open(token, now)
    }

    /// A registered client by `client_id`, from the in-memory copy that is
    /// reloaded whenever the store changes.
    pub fn client(&self, name: &str) -> Option<Arc<OidcClient>> {
        self.clients.load().get(name).cloned()
    }

    /// The discovery document: only what is implemented.
    pub fn discovery(&self) -> serde_json::Value {
        let i = &self.issuer;
        serde_json::json!({
            "issuer": i,
            "jwks_uri": format!("{i}/oidc/jwks"),
            "authorization_endpoint": format!("{i}/oidc/authorize"),
            "token_endpoint": format!("{i}/oidc/token"),
            "userinfo_endpoint": format!("{i}/oidc/userinfo"),
            "end_session_endpoint": format!("{i}/oidc/logout"),
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "revocation_endpoint": format!("{i}/oidc/revoke"),
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "introspection_endpoint": format!("{i}/oidc/introspect"),
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query", "form_post"],
            "authorization_response_iss_parameter_supported": true,
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": SCOPES,
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "azp", "sid", "amr",
                "preferred_username", "name", "email", "email_verified", "groups"],
            "subject_types_supported": ["public"],
            "backchannel_logout_supported": true,
            "backchannel_logout_session_supported": true,
            "id_token_signing_alg_values_supported": SigningAlg::ALL.map(SigningAlg::as_str),
        })
    }
}

/// Shared handle to the provider.
pub type SharedProvider = Arc<Provider>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256() {
        // Challenge computed independently (Python hashlib + base64url).
        let verifier = "dBjftJeZ4CVP-mJ92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(pkce_matches("ngF5GsXcbwljx6u133FFr3Xht9xooA_DuaX_3QwODtc", verifier));
        assert!(!pkce_matches("ngF5GsXcbwljx6u133FFr3Xht9xooA_DuaX_3QwODtd", verifier));
        assert!(!pkce_matches("ngF5GsXcbwljx6u133FFr3Xht9xooA_DuaX_3QwODtc", "short"));
    }

    fn client(groups: &[&str]) -> OidcClient {
        OidcClient {
            id: "c".into(),
            name: "wiki".into(),
            secret_hash: Some(hash_client_secret("s3cret")),
            redirect_uris: vec![],
            post_logout_redirect_uris: vec![],
            allowed_groups: groups.iter().map(|g| g.to_string()).collect(),
            consent_required: false,
            id_token_signed_response_alg: SigningAlg::default(),
            backchannel_logout_uri: None,
            mfa_required: false,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn claims_follow_scope_and_allowlist() {
        let user = UserInfo {
            sub: "uuid-1".into(),
            preferred_username: "alice".into(),
            name: "Alice".into(),
            email: Some("a@example.org".into()),
            groups: vec!["devs".into(), "ops".into()],
        };
        let c = user.claims("openid", &client(&[]));
        assert_eq!(c.len(), 1, "openid alone releases only sub: {c:?}");
        let c = user.claims("openid profile email groups", &client(&["devs"]));
        assert_eq!(c["preferred_username"], "alice");
        assert_eq!(c["email_verified"], false);
        assert_eq!(c["groups"], serde_json::json!(["devs"]));
        assert!(user.allowed(&client(&["devs"])));
        assert!(!user.allowed(&client(&["admins"])));
        assert!(user.allowed(&client(&[])));
        assert!(client_secret_matches(&client(&[]), "s3cret"));
        assert!(!client_secret_matches(&client(&[]), "s3creT"));
    }
}
