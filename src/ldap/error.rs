//! LDAP errors carry their RFC 4511 result code and a diagnostic message.

use ldap3_proto::proto::{LdapResult, LdapResultCode};

/// An operation's failure as the client will see it.
#[derive(Debug, Clone)]
pub struct LdapError {
    pub code: LdapResultCode,
    pub message: String,
}

impl LdapError {
    /// An error with `code` and a message for the client.
    pub fn new(code: LdapResultCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// The `LDAPResult` to send.
    pub fn to_result(&self) -> LdapResult {
        LdapResult {
            code: self.code.clone(),
            matcheddn: String::new(),
            message: self.message.clone(),
            referral: Vec::new(),
        }
    }
}

/// A result with `code` and `message`.
pub fn result(code: LdapResultCode, message: &str) -> LdapResult {
    LdapResult { code, matcheddn: String::new(), message: message.to_string(), referral: Vec::new() }
}

/// A plain success result.
pub fn success() -> LdapResult {
    result(LdapResultCode::Success, "")
}
