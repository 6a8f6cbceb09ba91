//! Search (RFC 4511 §4.5) with base/one/sub/children scopes, RFC 4515
//! filters, attribute selection (`*`, `+`, `1.1`, names), typesOnly, size
//! limits and the simple paged-results control (RFC 2696).
//!
//! Searches never fail for unknown object classes or attributes: SSSD goes
//! offline on any error result, so those match nothing and succeed.

use std::sync::Arc;

use ldap3_proto::control::LdapControl;
use ldap3_proto::proto::{
    LdapMsg, LdapOp, LdapPartialAttribute, LdapResult, LdapResultCode, LdapSearchRequest, LdapSearchResultEntry,
    LdapSearchScope,
};

use crate::directory::{AttrRef, Entry, Snapshot, dn, schema};
use crate::ldap::error::{result, success};
use crate::ldap::filter::{self, Tri};
use crate::ldap::session::{Cursor, Session};

/// Which attributes a search asked for.
#[derive(Debug, Default)]
struct Selection {
    all_user: bool,
    all_operational: bool,
    named: Vec<String>,
}

impl Selection {
    fn parse(attrs: &[String]) -> Self {
        let mut s = Selection { all_user: attrs.is_empty(), ..Default::default() };
        for a in attrs {
            match a.as_str() {
                "*" => s.all_user = true,
                "+" => s.all_operational = true,
                "1.1" => {}
                name => {
                    let name = schema::canonical(name).map_or_else(|| name.to_string(), str::to_string);
                    if !s.named.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
                        s.named.push(name);
                    }
                }
            }
        }
        s
    }

    fn wants(&self, attr: &AttrRef<'_>) -> bool {
        (if attr.operational { self.all_operational } else { self.all_user })
            || self.named.iter().any(|n| n.eq_ignore_ascii_case(attr.name))
    }
}

/// Converts an entry into a result message with the selected attributes.
fn render(entry: &Entry, sel: &Selection, types_only: bool, msgid: i32) -> LdapMsg {
    let attributes = entry
        .attributes()
        .filter(|a| sel.wants(a))
        .map(|a| LdapPartialAttribute {
            atype: a.name.to_string(),
            vals: if types_only { Vec::new() } else { a.values().map(|v| v.as_bytes().to_vec()).collect() },
        })
        .collect();
    LdapMsg::new(msgid, LdapOp::SearchResultEntry(LdapSearchResultEntry { dn: entry.dn.to_string(), attributes }))
}

fn done(msgid: i32, res: LdapResult, paged_cookie: Option<Vec<u8>>) -> LdapMsg {
    let ctrl = paged_cookie.map(|cookie| LdapControl::SimplePagedResults { size: 0, cookie }).into_iter().collect();
    LdapMsg::new_with_ctrls(msgid, LdapOp::SearchResultDone(res), ctrl)
}

/// Runs a search and returns every message to send, the done message last.
pub fn apply(session: &mut Session, msgid: i32, req: LdapSearchRequest, paged: Option<(i64, Vec<u8>)>) -> Vec<LdapMsg> {
    if filter::node_count(&req.filter) > filter::MAX_FILTER_NODES {
        return vec![done(msgid, result(LdapResultCode::AdminLimitExceeded, "filter too large"), None)];
    }
    if let Some((size, cookie)) = &paged {
        if !cookie.is_empty() {
            return continue_paged(session, msgid, *size, cookie);
        }
    }
    let sel = Selection::parse(&req.attrs);
    let Some(base) = dn::normalize(&req.base) else {
        return vec![done(msgid, result(LdapResultCode::InvalidDNSyntax, "invalid base DN"), None)];
    };
    if base.is_empty() && req.scope == LdapSearchScope::Base {
        let root = super::rootdse::entry(&session.identity.config.ldap.base_dn);
        let mut out = Vec::new();
        if filter::eval(&req.filter, &root) == Tri::True {
            out.push(render(&root, &sel, req.typesonly, msgid));
        }
        out.push(done(msgid, success(), paged.map(|_| Vec::new())));
        return out;
    }
    let snap = session.identity.directory.load();
    let matched = match matching(session, &snap, &req, &base) {
        Ok(m) => m,
        Err(res) => return vec![done(msgid, res, None)],
    };
    match paged {
        Some((size, _)) => first_page(session, msgid, snap, matched, req, size),
        None => {
            let server_cap = session.identity.config.ldap.max_unpaged_results;
            let client_cap = usize::try_from(req.sizelimit).ok().filter(|&n| n > 0).unwrap_or(usize::MAX);
            let cap = server_cap.min(client_cap);
            let mut out: Vec<LdapMsg> = matched
                .iter()
                .take(cap)
                .map(|&p| render(&snap.entries[p as usize], &sel, req.typesonly, msgid))
                .collect();
            let res = if matched.len() > cap {
                result(LdapResultCode::SizeLimitExceeded, "size limit exceeded; use the paged results control")
            } else {
                success()
            };
            out.push(done(msgid, res, None));
            out
        }
    }
}

/// Positions of the entries in scope that the caller may read and the filter matches.
fn matching(session: &Session, snap: &Snapshot, req: &LdapSearchRequest, base: &str) -> Result<Vec<u32>, LdapResult> {
    let under_us = base.is_empty() || base == snap.base_ndn || base.ends_with(&format!(",{}", snap.base_ndn));
    let base_exists = base.is_empty() || snap.by_ndn(base).is_some();
    if !under_us || (!base_exists && session.bound.is_some()) {
        let mut res = result(LdapResultCode::NoSuchObject, "no such entry");
        if under_us {
            res.matcheddn = snap.entries.first().map(|e| e.dn.to_string()).unwrap_or_default();
        }
        return Err(res);
    }
    if session.bound.is_none() {
        // Anonymous clients see only the root DSE.
        return Ok(Vec::new());
    }
    let suffix = format!(",{base}");
    let in_scope = |e: &Entry| match req.scope {
        LdapSearchScope::Base => &*e.ndn == base,
        LdapSearchScope::OneLevel => &*e.parent_ndn == base,
        LdapSearchScope::Subtree => base.is_empty() || &*e.ndn == base || e.ndn.ends_with(&suffix),
        LdapSearchScope::Children => !e.ndn.is_empty() && (base.is_empty() || e.ndn.ends_with(&suffix)),
    };
    let keep = |&p: &u32| {
        let e = &snap.entries[p as usize];
        in_scope(e) && session.can_read(e) && filter::eval(&req.filter, e) == Tri::True
    };
    let out: Vec<u32> = match req.scope {
        LdapSearchScope::Base => snap.by_ndn(base).map(|(p, _)| p).into_iter().filter(keep).collect(),
        LdapSearchScope::OneLevel => snap.children(base).iter().copied().filter(keep).collect(),
        _ => match filter::candidates(&req.filter, snap) {
            Some(c) => c.iter().copied().filter(keep).collect(),
            None => (0..u32::try_from(snap.entries.len()).unwrap_or(u32::MAX)).filter(keep).collect(),
        },
    };
    Ok(out)
}

fn first_page(
    session: &mut Session,
    msgid: i32,
    snapshot: Arc<Snapshot>,
    positions: Vec<u32>,
    req: LdapSearchRequest,
    size: i64,
) -> Vec<LdapMsg> {
    let max_cursors = session.identity.config.ldap.max_paged_cursors;
    if session.cursors.len() >= max_cursors {
        // Drop the oldest cursor rather than refusing the new search.
        if let Some(&oldest) = session.cursors.keys().min() {
            session.cursors.remove(&oldest);
        }
    }
    let id = session.next_cursor;
    session.next_cursor += 1;
    session.cursors.insert(id, Cursor { snapshot, positions, next: 0, req });
    page(session, msgid, id, size)
}

fn continue_paged(session: &mut Session, msgid: i32, size: i64, cookie: &[u8]) -> Vec<LdapMsg> {
    let id = <[u8; 8]>::try_from(cookie).map(u64::from_be_bytes).ok();
    match id.filter(|id| session.cursors.contains_key(id)) {
        Some(id) if size <= 0 => {
            session.cursors.remove(&id);
            vec![done(msgid, success(), Some(Vec::new()))]
        }
        Some(id) => page(session, msgid, id, size),
        None => vec![done(
            msgid,
            result(LdapResultCode::UnwillingToPerform, "unknown or expired paged results cookie"),
            None,
        )],
    }
}

fn page(session: &mut Session, msgid: i32, id: u64, size: i64) -> Vec<LdapMsg> {
    let Some(cursor) = session.cursors.get_mut(&id) else {
        return vec![done(msgid, result(LdapResultCode::UnwillingToPerform, "unknown paged results cookie"), None)];
    };
    let size = usize::try_from(size).unwrap_or(0).max(1);
    let sel = Selection::parse(&cursor.req.attrs);
    let end = (cursor.next + size).min(cursor.positions.len());
    let mut out: Vec<LdapMsg> = cursor.positions[cursor.next..end]
        .iter()
        .map(|&p| render(&cursor.snapshot.entries[p as usize], &sel, cursor.req.typesonly, msgid))
        .collect();
    cursor.next = end;
    let cookie = if end < cursor.positions.len() {
        id.to_be_bytes().to_vec()
    } else {
        session.cursors.remove(&id);
        Vec::new()
    };
    out.push(done(msgid, success(), Some(cookie)));
    out
}
