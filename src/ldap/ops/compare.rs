//! Compare (RFC 4511 §4.10): compareTrue/compareFalse under the attribute's
//! equality rule; entries the caller may not read are reported as missing.

use ldap3_proto::proto::{LdapCompareRequest, LdapResult, LdapResultCode};

use crate::directory::{dn, schema};
use crate::ldap::error::result;
use crate::ldap::session::Session;

/// Applies a compare request.
pub fn apply(session: &Session, req: &LdapCompareRequest) -> LdapResult {
    let snap = session.identity.directory.load();
    let Some(ndn) = dn::normalize(&req.dn) else {
        return result(LdapResultCode::InvalidDNSyntax, "invalid DN");
    };
    let entry = match snap.by_ndn(&ndn) {
        Some((_, e)) if session.can_read(e) => e,
        _ => return result(LdapResultCode::NoSuchObject, "no such entry"),
    };
    let Some(canon) = schema::canonical(&req.atype) else {
        return result(LdapResultCode::UndefinedAttributeType, "unknown attribute type");
    };
    let Some(attr) = entry.get(canon) else {
        return result(LdapResultCode::NoSuchAttribute, "the entry has no such attribute");
    };
    let rule = schema::rule(canon);
    let Some(want) = std::str::from_utf8(&req.val).ok().and_then(|v| schema::normalize(rule, v)) else {
        return result(LdapResultCode::InvalidAttributeSyntax, "value does not fit the attribute's syntax");
    };
    if attr.values().any(|v| schema::normalize(rule, v).as_deref() == Some(want.as_str())) {
        result(LdapResultCode::CompareTrue, "")
    } else {
        result(LdapResultCode::CompareFalse, "")
    }
}
