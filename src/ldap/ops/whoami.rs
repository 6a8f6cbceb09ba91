//! "Who am I?" (RFC 4532): `dn:<bound DN>`, or empty for anonymous.

use ldap3_proto::proto::{LdapExtendedResponse, LdapMsg, LdapOp};

use crate::ldap::error::success;
use crate::ldap::session::Session;

/// Answers a WhoAmI request.
pub fn apply(session: &Session, msgid: i32) -> LdapMsg {
    let authzid = session.bound.as_ref().map(|a| format!("dn:{}", a.dn)).unwrap_or_default();
    LdapMsg::new(
        msgid,
        LdapOp::ExtendedResponse(LdapExtendedResponse {
            res: success(),
            name: None,
            value: Some(authzid.into_bytes()),
        }),
    )
}
