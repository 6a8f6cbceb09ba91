//! Core identity types shared by the store, the directory snapshot and the
//! protocol front ends. Plain data: no protocol or database types here.

use std::fmt;

/// A person who can log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Stable id; never changes, exposed as `entryUUID`.
    pub id: String,
    /// Login name (`uid`).
    pub name: String,
    pub uid_number: i64,
    /// Primary group's gidNumber.
    pub gid_number: i64,
    pub display_name: String,
    pub email: Option<String>,
    pub login_shell: String,
    pub home_directory: String,
    /// OpenSSH public keys, one per line in `authorized_keys` format.
    pub ssh_keys: Vec<String>,
    /// PHC string (argon2id) or an imported `{SCHEME}` hash; `None` = cannot bind.
    pub password_hash: Option<String>,
    pub disabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A POSIX group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub gid_number: i64,
    pub description: String,
    /// Ids of member users.
    pub member_ids: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A bind-only identity for SSSD and applications; never a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub id: String,
    pub name: String,
    pub password_hash: String,
    pub disabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One row of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub source: String,
    pub detail: String,
}

/// Who made a change and from where; recorded in the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub source: String,
}

impl Actor {
    /// The local admin CLI, run by the OS user in `$USER`.
    pub fn cli() -> Self {
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        Self { name: format!("cli:{user}"), source: "local".into() }
    }

    /// The server itself (bootstrap, re-hashing on bind).
    pub fn system() -> Self {
        Self { name: "system".into(), source: "local".into() }
    }
}

/// The kinds of named objects, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Group,
    ServiceAccount,
    OidcClient,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::User => "user",
            Kind::Group => "group",
            Kind::ServiceAccount => "service account",
            Kind::OidcClient => "OIDC client",
        })
    }
}

/// Longest login, group or service-account name.
pub const MAX_NAME_LEN: usize = 32;

/// Checks a user, group or service-account name: a lower-case letter, then up
/// to 31 lower-case letters, digits, `-`, `_` or `.` (not at the end).
///
/// # Errors
/// A message saying what is wrong, fit to show the admin.
pub fn validate_name(kind: Kind, name: &str) -> Result<(), String> {
    let ok_first = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    let ok_rest = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    let ok_last = !name.ends_with(['-', '.']);
    if name.is_empty() || name.len() > MAX_NAME_LEN || !ok_first || !ok_rest || !ok_last {
        return Err(format!(
            "invalid {kind} name {name:?}: use 1-{MAX_NAME_LEN} characters, a lower-case letter first, then lower-case letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// Checks an e-mail address loosely (one `@`, no spaces, bounded length).
///
/// # Errors
/// A message fit to show the admin.
pub fn validate_email(email: &str) -> Result<(), String> {
    let parts: Vec<&str> = email.split('@').collect();
    let ok = email.len() <= 254
        && parts.len() == 2
        && !parts[0].is_empty()
        && parts[1].contains('.')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok { Ok(()) } else { Err(format!("invalid e-mail address {email:?}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["alice", "a", "bob-smith", "j.doe", "x_1", "a234567890123456789012345678901"] {
            assert!(validate_name(Kind::User, good).is_ok(), "{good}");
        }
        for bad in ["", "Alice", "1bob", "-x", "bob-", "a b", "root\n", "é", &"a".repeat(33)] {
            assert!(validate_name(Kind::User, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn emails() {
        assert!(validate_email("a@example.org").is_ok());
        assert!(validate_email("a@b@c.org").is_err());
        assert!(validate_email("a @b.org").is_err());
        assert!(validate_email("nodomain").is_err());
    }
}

/// A relying party registered with the OpenID provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcClient {
    pub id: String,
    /// Also the `client_id`.
    pub name: String,
    /// SHA-256 (hex) of the client secret; `None` for public clients.
    pub secret_hash: Option<String>,
    /// Exact-match redirect URIs.
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    /// Only members of these groups may sign in; empty = everyone.
    pub allowed_groups: Vec<String>,
    /// Third-party clients ask each user's consent; first-party ones skip it.
    pub consent_required: bool,
    /// How this client's ID tokens are signed (its registered
    /// `id_token_signed_response_alg`); RS256 unless the client asked otherwise.
    pub id_token_signed_response_alg: SigningAlg,
    /// Where the provider POSTs a logout token when a session that signed in
    /// to this client ends (OIDC Back-Channel Logout); `None` = not told.
    pub backchannel_logout_uri: Option<String>,
    /// Everyone signing in to this client needs a second factor, whatever
    /// their groups (`mfa.required_groups` still applies to the others).
    pub mfa_required: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A token-signing key as stored: the private half sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub alg: String,
    /// Sealed PKCS#8 DER (see `secrets.rs`).
    pub private_key: String,
    /// The public JWK, as JSON.
    pub public_jwk: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

/// A JWS algorithm the provider signs ID tokens with (RFC 7518 names). Each
/// has its own active key; clients pick one at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SigningAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (RSA-2048): the default, since every
    /// relying party supports it.
    #[default]
    Rs256,
    /// ECDSA on P-256 with SHA-256: short signatures, widely supported.
    Es256,
    /// EdDSA with Ed25519 (RFC 8037): the fastest, least universally supported.
    EdDsa,
}

impl SigningAlg {
    /// Every algorithm, in the order discovery lists them.
    pub const ALL: [SigningAlg; 3] = [SigningAlg::Rs256, SigningAlg::Es256, SigningAlg::EdDsa];

    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::Rs256 => "RS256",
            SigningAlg::Es256 => "ES256",
            SigningAlg::EdDsa => "EdDSA",
        }
    }
}

impl fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SigningAlg {
    type Err = String;

    /// Parses a JOSE `alg` name, exactly as spelled in RFC 7518/8037.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SigningAlg::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unsupported signing algorithm {s:?}: use RS256, ES256 or EdDSA"))
    }
}
