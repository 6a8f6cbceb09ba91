//! Simple bind (RFC 4511 §4.2, RFC 4513 §5). Anonymous binds are allowed but
//! read only the rootDSE; unauthenticated binds (DN without password) are
//! refused; every credential failure is `invalidCredentials`.

use ldap3_proto::proto::{LdapBindCred, LdapBindRequest, LdapBindResponse, LdapResultCode};

use crate::ldap::error::{result, success};
use crate::ldap::session::Session;

/// Applies a bind request to the session.
pub async fn apply(session: &mut Session, req: &LdapBindRequest) -> LdapBindResponse {
    // A bind always resets the connection to anonymous first (RFC 4511 §4.2.1).
    session.bound = None;
    let res = if req.version != 3 {
        result(LdapResultCode::ProtocolError, "only LDAPv3 is supported")
    } else {
        match &req.cred {
            LdapBindCred::Simple(password) => simple(session, &req.dn, password).await,
            _ => result(LdapResultCode::AuthMethodNotSupported, "only simple binds are supported"),
        }
    };
    LdapBindResponse { res, saslcreds: None }
}

async fn simple(session: &mut Session, dn: &str, password: &str) -> ldap3_proto::proto::LdapResult {
    if dn.is_empty() && password.is_empty() {
        return success();
    }
    if password.is_empty() {
        return result(LdapResultCode::UnwillingToPerform, "unauthenticated bind (DN without password) is not allowed");
    }
    if !session.tls && session.identity.config.ldap.bind_requires_tls && !session.peer.ip().is_loopback() {
        return result(LdapResultCode::ConfidentialityRequired, "use StartTLS or LDAPS before binding with a password");
    }
    match session.identity.bind(dn, password, Some(session.peer.ip())).await {
        Ok(account) => {
            tracing::info!(dn = %account.dn, peer = %session.peer, "bind succeeded");
            session.bound = Some(account);
            success()
        }
        Err(why) => {
            tracing::info!(dn = %dn, peer = %session.peer, reason = ?why, "bind failed");
            result(LdapResultCode::InvalidCredentials, "invalid credentials")
        }
    }
}
