//! One file per LDAP operation. [`Op::parse`] turns a decoded message into a
//! typed request (rejecting unknown critical controls); the session applies it.

pub mod bind;
pub mod compare;
pub mod passwd;
pub mod rootdse;
pub mod search;
pub mod whoami;

use ldap3_proto::control::LdapControl;
use ldap3_proto::proto::{
    LdapBindRequest, LdapCompareRequest, LdapExtendedRequest, LdapMsg, LdapOp, LdapResult, LdapResultCode,
    LdapSearchRequest,
};

use super::error::LdapError;

/// StartTLS extended operation.
pub const OID_START_TLS: &str = "1.3.6.1.4.1.1466.20037";
/// Password Modify extended operation (RFC 3062).
pub const OID_PASSWORD_MODIFY: &str = "1.3.6.1.4.1.4203.1.11.1";
/// "Who am I?" extended operation (RFC 4532).
pub const OID_WHOAMI: &str = "1.3.6.1.4.1.4203.1.11.3";
/// Simple paged results control (RFC 2696).
pub const OID_PAGED_RESULTS: &str = "1.2.840.113556.1.4.319";
/// Notice of Disconnection (RFC 4511 §4.4.1).
pub const OID_NOTICE_OF_DISCONNECTION: &str = "1.3.6.1.4.1.1466.20036";

/// A request the server understands, with what its controls asked for.
#[derive(Debug)]
pub enum Op {
    Bind(LdapBindRequest),
    Unbind,
    Search {
        req: LdapSearchRequest,
        paged: Option<(i64, Vec<u8>)>,
    },
    Compare(LdapCompareRequest),
    Abandon,
    StartTls,
    WhoAmI,
    PasswordModify(LdapExtendedRequest),
    /// Anything else: answered with `code`, the connection stays open.
    Unsupported {
        code: LdapResultCode,
        message: String,
    },
}

impl Op {
    /// Classifies `msg`.
    ///
    /// # Errors
    /// An unknown critical control ([`LdapResultCode::UnavailableCriticalExtension`]).
    pub fn parse(msg: &LdapMsg) -> Result<Op, LdapError> {
        for ctrl in &msg.ctrl {
            if is_unsupported_critical(ctrl) {
                return Err(LdapError::new(
                    LdapResultCode::UnavailableCriticalExtension,
                    "a critical control is not supported",
                ));
            }
        }
        Ok(match &msg.op {
            LdapOp::BindRequest(r) => Op::Bind(r.clone()),
            LdapOp::UnbindRequest => Op::Unbind,
            LdapOp::SearchRequest(r) => {
                let paged = msg.ctrl.iter().find_map(|c| match c {
                    LdapControl::SimplePagedResults { size, cookie } => Some((*size, cookie.clone())),
                    _ => None,
                });
                Op::Search { req: r.clone(), paged }
            }
            LdapOp::CompareRequest(r) => Op::Compare(r.clone()),
            LdapOp::AbandonRequest(_) => Op::Abandon,
            LdapOp::ExtendedRequest(r) => match r.name.as_str() {
                OID_START_TLS => Op::StartTls,
                OID_WHOAMI => Op::WhoAmI,
                OID_PASSWORD_MODIFY => Op::PasswordModify(r.clone()),
                _ => Op::Unsupported {
                    code: LdapResultCode::ProtocolError,
                    message: format!("extended operation {} is not supported", r.name),
                },
            },
            LdapOp::AddRequest(_) | LdapOp::ModifyRequest(_) | LdapOp::DelRequest(_) | LdapOp::ModifyDNRequest(_) => {
                Op::Unsupported {
                    code: LdapResultCode::UnwillingToPerform,
                    message: "the directory is read-only over LDAP; use the portcullis CLI or API".into(),
                }
            }
            _ => Op::Unsupported { code: LdapResultCode::ProtocolError, message: "not a request".into() },
        })
    }
}

fn is_unsupported_critical(ctrl: &LdapControl) -> bool {
    match ctrl {
        LdapControl::Unknown { criticality, .. }
        | LdapControl::SyncRequest { criticality, .. }
        | LdapControl::PasswordPolicyRequest { criticality }
        | LdapControl::SearchOptions { criticality, .. }
        | LdapControl::ShowDeleted { criticality }
        | LdapControl::SdFlags { criticality, .. }
        | LdapControl::ExtendedDn { criticality, .. } => *criticality,
        // ManageDsaIT is trivially honoured: there are no referrals.
        _ => false,
    }
}

/// The response message that carries `result` for the request `op`, or
/// `None` for requests that get no response (unbind, abandon).
pub fn response_for(op: &LdapOp, msgid: i32, result: LdapResult) -> Option<LdapMsg> {
    use ldap3_proto::proto::{LdapBindResponse, LdapExtendedResponse};
    let op = match op {
        LdapOp::BindRequest(_) => LdapOp::BindResponse(LdapBindResponse { res: result, saslcreds: None }),
        LdapOp::SearchRequest(_) => LdapOp::SearchResultDone(result),
        LdapOp::CompareRequest(_) => LdapOp::CompareResult(result),
        LdapOp::AddRequest(_) => LdapOp::AddResponse(result),
        LdapOp::ModifyRequest(_) => LdapOp::ModifyResponse(result),
        LdapOp::DelRequest(_) => LdapOp::DelResponse(result),
        LdapOp::ModifyDNRequest(_) => LdapOp::ModifyDNResponse(result),
        LdapOp::UnbindRequest | LdapOp::AbandonRequest(_) => return None,
        _ => LdapOp::ExtendedResponse(LdapExtendedResponse { res: result, name: None, value: None }),
    };
    Some(LdapMsg { msgid, op, ctrl: Vec::new() })
}
