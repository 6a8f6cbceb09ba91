//! Password Modify (RFC 3062). A bound user or service account changes its
//! own password; the old password, when sent, must be right; without a new
//! password one is generated and returned.

use base64::Engine;
use ldap3_proto::proto::{
    LdapExtendedRequest, LdapMsg, LdapOp, LdapPasswordModifyRequest, LdapPasswordModifyResponse, LdapResult,
    LdapResultCode,
};
use rand::Rng;

use crate::directory::dn;
use crate::ldap::error::{result, success};
use crate::ldap::session::Session;
use crate::model::Actor;

/// Applies a Password Modify request and builds the response message.
pub async fn apply(session: &mut Session, msgid: i32, req: &LdapExtendedRequest) -> LdapMsg {
    let (res, gen_password) = match change(session, req).await {
        Ok(generated) => (success(), generated),
        Err(res) => (res, None),
    };
    // Send a response value only when it carries a generated password:
    // ldappasswd cannot parse an empty PasswdModifyResponseValue.
    let ext = match gen_password {
        Some(p) => LdapPasswordModifyResponse { res, gen_password: Some(p) }.into(),
        None => ldap3_proto::proto::LdapExtendedResponse { res, name: None, value: None },
    };
    LdapMsg::new(msgid, LdapOp::ExtendedResponse(ext))
}

async fn change(session: &mut Session, req: &LdapExtendedRequest) -> Result<Option<String>, LdapResult> {
    let parsed = if req.value.is_none() {
        LdapPasswordModifyRequest { user_identity: None, old_password: None, new_password: None }
    } else {
        LdapPasswordModifyRequest::try_from(req)
            .map_err(|_| result(LdapResultCode::ProtocolError, "malformed password modify request"))?
    };
    let Some(account) = session.bound.clone() else {
        return Err(result(LdapResultCode::UnwillingToPerform, "bind before changing a password"));
    };
    if !session.tls && session.identity.config.ldap.bind_requires_tls && !session.peer.ip().is_loopback() {
        return Err(result(LdapResultCode::ConfidentialityRequired, "use StartTLS or LDAPS to change a password"));
    }
    if let Some(target) = &parsed.user_identity {
        let target = target.strip_prefix("dn:").unwrap_or(target);
        let own = match target.strip_prefix("u:") {
            Some(name) => name == account.name,
            None => dn::normalize(target).is_some_and(|t| Some(t) == dn::normalize(&account.dn)),
        };
        if !own {
            return Err(result(LdapResultCode::InsufficentAccessRights, "you may only change your own password"));
        }
    }
    if let Some(old) = &parsed.old_password {
        if session.identity.bind(&account.dn, old, Some(session.peer.ip())).await.is_err() {
            return Err(result(LdapResultCode::InvalidCredentials, "the old password is wrong"));
        }
    }
    let (new, generated) = match parsed.new_password {
        Some(p) => (p, None),
        None => {
            let bytes: [u8; 15] = rand::thread_rng().r#gen();
            let p = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            (p.clone(), Some(p))
        }
    };
    crate::identity::check_new_password(&new).map_err(|m| result(LdapResultCode::ConstraintViolation, &m))?;
    let actor = Actor { name: account.dn.clone(), source: format!("ldap:{}", session.peer.ip()) };
    session.identity.set_password(&account, &new, &actor).await.map_err(|e| {
        tracing::error!(error = %e, "password change failed");
        result(LdapResultCode::Other, "the password could not be changed")
    })?;
    tracing::info!(dn = %account.dn, "password changed over LDAP");
    Ok(generated)
}
