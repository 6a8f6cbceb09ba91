//! One connection's state (who is bound, TLS, open paged-search cursors) and
//! the dispatch of each message to its operation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use ldap3_proto::proto::{LdapMsg, LdapOp};

use super::error::success;
use super::ops::{self, Op};
use crate::directory::{Account, AccountKind, Entry, EntryKind, Snapshot};
use crate::identity::Identity;

/// What the transport should do after a message.
#[derive(Debug)]
pub enum Reply {
    /// Send these messages (in one flush) and read the next request.
    Send(Vec<LdapMsg>),
    /// Send this success response in the clear, then start TLS.
    StartTls(LdapMsg),
    /// Close the connection (unbind).
    Close,
}

/// A paged search in progress: the matched entries of one snapshot.
#[derive(Debug)]
pub struct Cursor {
    pub snapshot: Arc<Snapshot>,
    pub positions: Vec<u32>,
    pub next: usize,
    pub req: ldap3_proto::proto::LdapSearchRequest,
}

/// State of one LDAP connection.
pub struct Session {
    pub identity: Arc<Identity>,
    pub peer: SocketAddr,
    pub tls: bool,
    /// `None` while anonymous.
    pub bound: Option<Account>,
    pub cursors: HashMap<u64, Cursor>,
    pub next_cursor: u64,
}

impl Session {
    /// A fresh anonymous session.
    pub fn new(identity: Arc<Identity>, peer: SocketAddr, tls: bool) -> Self {
        Self { identity, peer, tls, bound: None, cursors: HashMap::new(), next_cursor: 1 }
    }

    /// Handles one request and says what to send back.
    pub async fn handle(&mut self, msg: LdapMsg) -> Reply {
        let msgid = msg.msgid;
        let op = match Op::parse(&msg) {
            Ok(op) => op,
            Err(e) => return Reply::Send(ops::response_for(&msg.op, msgid, e.to_result()).into_iter().collect()),
        };
        match op {
            Op::Bind(req) => {
                let res = ops::bind::apply(self, &req).await;
                Reply::Send(vec![LdapMsg::new(msgid, LdapOp::BindResponse(res))])
            }
            Op::Unbind => Reply::Close,
            Op::Abandon => Reply::Send(Vec::new()),
            Op::Search { req, paged } => Reply::Send(ops::search::apply(self, msgid, req, paged)),
            Op::Compare(req) => {
                let res = ops::compare::apply(self, &req);
                Reply::Send(vec![LdapMsg::new(msgid, LdapOp::CompareResult(res))])
            }
            Op::WhoAmI => Reply::Send(vec![ops::whoami::apply(self, msgid)]),
            Op::PasswordModify(req) => Reply::Send(vec![ops::passwd::apply(self, msgid, &req).await]),
            Op::StartTls => {
                if self.tls {
                    let res = super::error::result(
                        ldap3_proto::proto::LdapResultCode::OperationsError,
                        "TLS is already active",
                    );
                    return Reply::Send(ops::response_for(&msg.op, msgid, res).into_iter().collect());
                }
                let mut ok = ops::response_for(&msg.op, msgid, success());
                if let Some(LdapMsg { op: LdapOp::ExtendedResponse(r), .. }) = ok.as_mut() {
                    r.name = Some(ops::OID_START_TLS.to_string());
                }
                match ok {
                    Some(m) => Reply::StartTls(m),
                    None => Reply::Close,
                }
            }
            Op::Unsupported { code, message } => {
                let res = super::error::result(code, &message);
                Reply::Send(ops::response_for(&msg.op, msgid, res).into_iter().collect())
            }
        }
    }

    /// Whether the bound identity may read `entry`: service accounts read
    /// the whole tree, users only their own entry, anonymous nothing.
    pub fn can_read(&self, entry: &Entry) -> bool {
        match &self.bound {
            None => false,
            Some(a) if a.kind == AccountKind::Service => true,
            Some(a) => matches!(&entry.kind, EntryKind::User(name) if **name == *a.name),
        }
    }
}
