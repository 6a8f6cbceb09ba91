//! The directory: an immutable in-memory snapshot of every entry with the
//! indexes LDAP needs, swapped atomically after each committed change.
//!
//! **Architecture Invariant:** LDAP searches and binds read only a snapshot;
//! they never wait on the database. A snapshot is built from
//! [`crate::store::DirectoryData`] in one pass and never mutated afterwards.

pub mod dn;
mod entry;
pub mod schema;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::clock::generalized_time;
use crate::store::DirectoryData;
use entry::AttrsBuilder;
pub use entry::{Attr, Entry, EntryKind};

/// Attributes with an equality index (canonical names).
pub const INDEXED: &[&str] =
    &["uid", "uidNumber", "gidNumber", "memberUid", "member", "mail", "cn", "objectClass", "entryUUID"];

/// Who may bind, and with what.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub dn: String,
    pub kind: AccountKind,
    pub password_hash: Option<String>,
    pub disabled: bool,
}

/// Users log in; service accounts only bind and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    User,
    Service,
}

/// One immutable view of the whole directory.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Store generation this snapshot was built from.
    pub generation: i64,
    /// Normalised base DN.
    pub base_ndn: String,
    /// Every entry; indexes refer to positions in this list.
    pub entries: Vec<Entry>,
    by_ndn: HashMap<String, u32>,
    children: HashMap<String, Vec<u32>>,
    index: HashMap<&'static str, HashMap<String, Vec<u32>>>,
    accounts: HashMap<String, Account>,
}

impl Snapshot {
    /// Builds the tree under `base_dn` from the store's data.
    pub fn build(data: &DirectoryData, base_dn: &str) -> Self {
        let base = dn::Dn::parse(base_dn).unwrap_or_default();
        let base_ndn = base.normalized();
        let people_dn = format!("ou=people,{base}");
        let groups_dn = format!("ou=groups,{base}");
        let services_dn = format!("ou=services,{base}");
        let user_dn = |name: &str| format!("uid={},{people_dn}", dn::escape_value(name));
        let group_dn = |name: &str| format!("cn={},{groups_dn}", dn::escape_value(name));

        let mut entries = Vec::with_capacity(data.users.len() + data.groups.len() + 3);
        let (rdn_attr, rdn_value) =
            base.rdns.first().and_then(|r| r.first()).map(|a| (a.attr.clone(), a.value.clone())).unwrap_or_default();
        let mut base_classes = vec!["top".to_string()];
        let mut base_attrs = AttrsBuilder::default();
        match rdn_attr.as_str() {
            "dc" => {
                base_classes.extend(["dcObject".into(), "organization".into()]);
                base_attrs = base_attrs.one("dc", rdn_value.clone()).one("o", rdn_value);
            }
            "o" => {
                base_classes.push("organization".into());
                base_attrs = base_attrs.one("o", rdn_value);
            }
            _ => {
                base_classes.push("organizationalUnit".into());
                base_attrs = base_attrs.one("ou", rdn_value);
            }
        }
        entries.push(make_entry(base.to_string(), EntryKind::Base, base_attrs.many("objectClass", base_classes), 0, 0));
        for ou in ["people", "groups"] {
            let attrs = AttrsBuilder::default()
                .many("objectClass", vec!["top".into(), "organizationalUnit".into()])
                .one("ou", ou);
            entries.push(make_entry(format!("ou={ou},{base}"), EntryKind::Container, attrs, 0, 0));
        }

        // Memberships both ways, by id.
        let user_by_id: HashMap<&str, &crate::model::User> = data.users.iter().map(|u| (u.id.as_str(), u)).collect();
        let mut member_of: HashMap<&str, Vec<String>> = HashMap::new();
        for g in &data.groups {
            for m in &g.member_ids {
                member_of.entry(m.as_str()).or_default().push(group_dn(&g.name));
            }
        }

        let mut accounts = HashMap::new();
        for u in &data.users {
            let dn = user_dn(&u.name);
            let mut classes = vec!["top", "person", "organizationalPerson", "inetOrgPerson", "posixAccount"];
            if !u.ssh_keys.is_empty() {
                classes.push("ldapPublicKey");
            }
            let surname = u.display_name.rsplit(' ').next().unwrap_or(&u.name).to_string();
            let attrs = AttrsBuilder::default()
                .many("objectClass", classes.into_iter().map(String::from).collect())
                .one("uid", u.name.clone())
                .one("cn", u.display_name.clone())
                .one("sn", surname)
                .one("displayName", u.display_name.clone())
                .one("gecos", u.display_name.clone())
                .one("uidNumber", u.uid_number.to_string())
                .one("gidNumber", u.gid_number.to_string())
                .one("homeDirectory", u.home_directory.clone())
                .one("loginShell", u.login_shell.clone())
                .one("mail", u.email.clone().unwrap_or_default())
                .many("sshPublicKey", u.ssh_keys.clone());
            let mut entry = make_entry(dn.clone(), EntryKind::User(u.name.clone()), attrs, u.created_at, u.updated_at);
            push_operational(&mut entry, &u.id, "inetOrgPerson");
            if let Some(groups) = member_of.remove(u.id.as_str()) {
                entry.operational.push(Attr { name: "memberOf", values: groups });
            }
            accounts.insert(
                entry.ndn.clone(),
                Account {
                    name: u.name.clone(),
                    dn,
                    kind: AccountKind::User,
                    password_hash: u.password_hash.clone(),
                    disabled: u.disabled,
                },
            );
            entries.push(entry);
        }
        for g in &data.groups {
            let members: Vec<&crate::model::User> =
                g.member_ids.iter().filter_map(|id| user_by_id.get(id.as_str()).copied()).collect();
            let attrs = AttrsBuilder::default()
                .many("objectClass", vec!["top".into(), "posixGroup".into(), "groupOfNames".into()])
                .one("cn", g.name.clone())
                .one("gidNumber", g.gid_number.to_string())
                .one("description", g.description.clone())
                .many("memberUid", members.iter().map(|u| u.name.clone()).collect())
                .many("member", members.iter().map(|u| user_dn(&u.name)).collect());
            let mut entry = make_entry(group_dn(&g.name), EntryKind::Group, attrs, g.created_at, g.updated_at);
            push_operational(&mut entry, &g.id, "posixGroup");
            entries.push(entry);
        }
        for s in &data.service_accounts {
            let dn = format!("cn={},{services_dn}", dn::escape_value(&s.name));
            if let Some(ndn) = dn::normalize(&dn) {
                accounts.insert(
                    ndn,
                    Account {
                        name: s.name.clone(),
                        dn,
                        kind: AccountKind::Service,
                        password_hash: Some(s.password_hash.clone()),
                        disabled: s.disabled,
                    },
                );
            }
        }

        let mut snapshot = Snapshot { generation: data.generation, base_ndn, entries, accounts, ..Default::default() };
        snapshot.build_indexes();
        snapshot
    }

    fn build_indexes(&mut self) {
        for (pos, entry) in self.entries.iter().enumerate() {
            let pos = u32::try_from(pos).unwrap_or(u32::MAX);
            self.by_ndn.insert(entry.ndn.clone(), pos);
            self.children.entry(entry.parent_ndn.clone()).or_default().push(pos);
            for &name in INDEXED {
                let Some(attr) = entry.get(name) else { continue };
                let rule = schema::rule(name);
                let map = self.index.entry(name).or_default();
                for v in &attr.values {
                    if let Some(norm) = schema::normalize(rule, v) {
                        map.entry(norm).or_default().push(pos);
                    }
                }
            }
        }
    }

    /// The entry with this normalised DN.
    pub fn by_ndn(&self, ndn: &str) -> Option<(u32, &Entry)> {
        let pos = *self.by_ndn.get(ndn)?;
        self.entries.get(pos as usize).map(|e| (pos, e))
    }

    /// Positions of the direct children of the entry with this normalised DN.
    pub fn children(&self, ndn: &str) -> &[u32] {
        self.children.get(ndn).map_or(&[], Vec::as_slice)
    }

    /// Positions of entries whose `attr` has a value equal (after
    /// normalisation) to `norm`; `None` when `attr` has no index.
    pub fn lookup(&self, attr: &str, norm: &str) -> Option<&[u32]> {
        if !INDEXED.contains(&attr) {
            return None;
        }
        Some(self.index.get(attr).and_then(|m| m.get(norm)).map_or(&[], Vec::as_slice))
    }

    /// The account that binds with this normalised DN.
    pub fn account(&self, ndn: &str) -> Option<&Account> {
        self.accounts.get(ndn)
    }

    /// Number of user accounts.
    pub fn user_count(&self) -> usize {
        self.accounts.values().filter(|a| a.kind == AccountKind::User).count()
    }
}

fn make_entry(dn: String, kind: EntryKind, attrs: AttrsBuilder, created: i64, modified: i64) -> Entry {
    let parsed = dn::Dn::parse(&dn).unwrap_or_default();
    let mut entry = Entry {
        ndn: parsed.normalized(),
        parent_ndn: parsed.parent().normalized(),
        dn,
        kind,
        attrs: attrs.0,
        operational: Vec::new(),
    };
    entry.operational.push(Attr { name: "entryDN", values: vec![entry.dn.clone()] });
    entry.operational.push(Attr { name: "subschemaSubentry", values: vec!["cn=Subschema".into()] });
    if created > 0 {
        entry.operational.push(Attr { name: "createTimestamp", values: vec![generalized_time(created)] });
        entry.operational.push(Attr { name: "modifyTimestamp", values: vec![generalized_time(modified)] });
    }
    entry
}

fn push_operational(entry: &mut Entry, id: &str, structural: &str) {
    entry.operational.push(Attr { name: "entryUUID", values: vec![id.to_string()] });
    entry.operational.push(Attr { name: "structuralObjectClass", values: vec![structural.to_string()] });
}

/// The current snapshot, replaced atomically; readers never block writers.
#[derive(Debug)]
pub struct Directory {
    current: ArcSwap<Snapshot>,
}

impl Directory {
    /// A directory holding `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        Self { current: ArcSwap::from_pointee(snapshot) }
    }

    /// The snapshot in force now; hold it for the length of one operation.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Installs a new snapshot.
    pub fn replace(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}
