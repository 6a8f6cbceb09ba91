//! The directory: an immutable in-memory snapshot of every entry with the
//! indexes LDAP needs, swapped atomically after each committed change.
//!
//! **Architecture Invariant:** LDAP searches and binds read only a snapshot;
//! they never wait on the database. A snapshot is built from
//! [`crate::store::DirectoryData`] in one pass and never mutated afterwards.

mod containers;
pub mod dn;
mod entry;
pub mod schema;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::clock::generalized_time;
use crate::store::DirectoryData;
pub use entry::{AttrRef, Entry, EntryBuilder, EntryKind};

/// Attributes with an equality index (canonical names).
pub const INDEXED: &[&str] =
    &["uid", "uidNumber", "gidNumber", "memberUid", "member", "mail", "cn", "objectClass", "entryUUID"];

/// Who may bind, and with what.
#[derive(Debug, Clone)]
pub struct Account {
    /// The stable id (users' `entryUUID`, the OIDC `sub`).
    pub id: String,
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

/// Entry positions under one index key; most keys name one entry.
#[derive(Debug)]
enum Postings {
    One([u32; 1]),
    Many(Vec<u32>),
}

impl Postings {
    fn push(&mut self, pos: u32) {
        match self {
            Postings::One([first]) if *first != pos => *self = Postings::Many(vec![*first, pos]),
            Postings::One(_) => {}
            Postings::Many(v) => {
                if v.last() != Some(&pos) {
                    v.push(pos);
                }
            }
        }
    }

    fn as_slice(&self) -> &[u32] {
        match self {
            Postings::One(one) => one,
            Postings::Many(v) => v,
        }
    }
}

/// Hash of an index key. Collisions only add candidates: every candidate is
/// checked against the full filter, so keys need not be stored.
fn key_hash(attr: &str, norm: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    attr.hash(&mut h);
    norm.hash(&mut h);
    h.finish()
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
    by_ndn: HashMap<u64, Postings>,
    children: HashMap<Arc<str>, Vec<u32>>,
    index: HashMap<u64, Postings>,
    accounts: HashMap<String, Account>,
}

impl Snapshot {
    /// Builds the tree under `base_dn` from the store's data, without
    /// instance admins.
    pub fn build(data: &DirectoryData, base_dn: &str) -> Self {
        Self::build_with_admins(data, base_dn, "")
    }

    /// Builds the tree under `base_dn` from the store's data. Members of
    /// `admin_group` (`directory.admin_group`; empty = none) may log in to
    /// every container: their entries list every container in `host`.
    pub fn build_with_admins(data: &DirectoryData, base_dn: &str, admin_group: &str) -> Self {
        let base = dn::Dn::parse(base_dn).unwrap_or_default();
        let base_ndn: Arc<str> = Arc::from(base.normalized());
        let people_ndn: Arc<str> = Arc::from(format!("ou=people,{base_ndn}"));
        let groups_ndn: Arc<str> = Arc::from(format!("ou=groups,{base_ndn}"));
        let sudoers_ndn: Arc<str> = Arc::from(format!("ou=sudoers,{base_ndn}"));
        let people_dn = format!("ou=people,{base}");
        let groups_dn = format!("ou=groups,{base}");
        let sudoers_dn = format!("ou=sudoers,{base}");
        let services_dn = format!("ou=services,{base}");
        let user_dn = |name: &str| format!("uid={},{people_dn}", dn::escape_value(name));
        let group_dn = |name: &str| format!("cn={},{groups_dn}", dn::escape_value(name));
        let leaf_ndn = |attr: &str, name: &str, parent: &str| {
            dn::normalize(&format!("{attr}={},{parent}", dn::escape_value(name))).unwrap_or_default()
        };

        let mut entries = Vec::with_capacity(data.users.len() + data.groups.len() + data.containers.len() + 4);
        let (rdn_attr, rdn_value) =
            base.rdns.first().and_then(|r| r.first()).map(|a| (a.attr.clone(), a.value.clone())).unwrap_or_default();
        let base_entry = match rdn_attr.as_str() {
            "dc" => EntryBuilder::default()
                .many("objectClass", ["top", "dcObject", "organization"])
                .one("dc", &rdn_value)
                .one("o", &rdn_value),
            "o" => EntryBuilder::default().many("objectClass", ["top", "organization"]).one("o", &rdn_value),
            _ => EntryBuilder::default().many("objectClass", ["top", "organizationalUnit"]).one("ou", &rdn_value),
        };
        let base_parent: Arc<str> = Arc::from(base.parent().normalized());
        entries.push(finish(base_entry, base.to_string(), base_ndn.to_string(), base_parent, EntryKind::Base, None));
        // ou=sudoers exists even without rules, so SSSD's sudo searches
        // under it (ldap_sudo_search_base) always find their base.
        for (ou, ndn) in [("people", &people_ndn), ("groups", &groups_ndn), ("sudoers", &sudoers_ndn)] {
            let b = EntryBuilder::default().many("objectClass", ["top", "organizationalUnit"]).one("ou", ou);
            entries.push(finish(
                b,
                format!("ou={ou},{base}"),
                ndn.to_string(),
                Arc::clone(&base_ndn),
                EntryKind::Container,
                None,
            ));
        }

        // Memberships both ways, by id.
        let user_by_id: HashMap<&str, &crate::model::User> = data.users.iter().map(|u| (u.id.as_str(), u)).collect();
        let mut member_of: HashMap<&str, Vec<String>> = HashMap::new();
        for g in &data.groups {
            for m in &g.member_ids {
                member_of.entry(m.as_str()).or_default().push(group_dn(&g.name));
            }
        }

        let login_hosts = containers::LoginHosts::compute(data, admin_group);

        let mut accounts = HashMap::with_capacity(data.users.len() + data.service_accounts.len());
        for u in &data.users {
            let dn = user_dn(&u.name);
            let ndn = leaf_ndn("uid", &u.name, &people_ndn);
            let hosts = login_hosts.hosts_of(&u.id);
            let mut classes = vec!["top", "person", "organizationalPerson", "inetOrgPerson", "posixAccount"];
            if !u.ssh_keys.is_empty() {
                classes.push("ldapPublicKey");
            }
            if !hosts.is_empty() {
                classes.push("hostObject");
            }
            let surname = u.display_name.rsplit(' ').next().unwrap_or(&u.name);
            let b = EntryBuilder::default()
                .many("objectClass", classes)
                .one("uid", &u.name)
                .one("cn", &u.display_name)
                .one("sn", surname)
                .one("displayName", &u.display_name)
                .one("gecos", &u.display_name)
                .one("uidNumber", &u.uid_number.to_string())
                .one("gidNumber", &u.gid_number.to_string())
                .one("homeDirectory", &u.home_directory)
                .one("loginShell", &u.login_shell)
                .one("mail", u.email.as_deref().unwrap_or_default())
                .many("sshPublicKey", &u.ssh_keys)
                .many("host", hosts)
                .operational("entryUUID", [&u.id])
                .operational("structuralObjectClass", ["inetOrgPerson"])
                .operational("memberOf", member_of.remove(u.id.as_str()).unwrap_or_default());
            let kind = EntryKind::User(u.name.as_str().into());
            accounts.insert(
                ndn.clone(),
                Account {
                    id: u.id.clone(),
                    name: u.name.clone(),
                    dn: dn.clone(),
                    kind: AccountKind::User,
                    password_hash: u.password_hash.clone(),
                    disabled: u.disabled,
                },
            );
            entries.push(finish(b, dn, ndn, Arc::clone(&people_ndn), kind, Some((u.created_at, u.updated_at))));
        }
        for g in &data.groups {
            let members: Vec<&crate::model::User> =
                g.member_ids.iter().filter_map(|id| user_by_id.get(id.as_str()).copied()).collect();
            let b = EntryBuilder::default()
                .many("objectClass", ["top", "posixGroup", "groupOfNames"])
                .one("cn", &g.name)
                .one("gidNumber", &g.gid_number.to_string())
                .one("description", &g.description)
                .many("memberUid", members.iter().map(|u| u.name.as_str()))
                .many("member", members.iter().map(|u| user_dn(&u.name)))
                .operational("entryUUID", [&g.id])
                .operational("structuralObjectClass", ["posixGroup"]);
            let ndn = leaf_ndn("cn", &g.name, &groups_ndn);
            let times = Some((g.created_at, g.updated_at));
            entries.push(finish(b, group_dn(&g.name), ndn, Arc::clone(&groups_ndn), EntryKind::Group, times));
        }
        for rule in containers::sudo_rules(data) {
            let dn = format!("cn={},{sudoers_dn}", dn::escape_value(&rule.cn));
            let ndn = leaf_ndn("cn", &rule.cn, &sudoers_ndn);
            let parent = Arc::clone(&sudoers_ndn);
            entries.push(finish(rule.entry, dn, ndn, parent, EntryKind::SudoRule, Some(rule.times)));
        }
        for s in &data.service_accounts {
            let dn = format!("cn={},{services_dn}", dn::escape_value(&s.name));
            if let Some(ndn) = dn::normalize(&dn) {
                let account = Account {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    dn,
                    kind: AccountKind::Service,
                    password_hash: Some(s.password_hash.clone()),
                    disabled: s.disabled,
                };
                accounts.insert(ndn, account);
            }
        }

        let mut snapshot = Snapshot {
            generation: data.generation,
            base_ndn: base_ndn.to_string(),
            entries,
            accounts,
            ..Default::default()
        };
        snapshot.build_indexes();
        snapshot
    }

    fn build_indexes(&mut self) {
        for (pos, entry) in self.entries.iter().enumerate() {
            let pos = u32::try_from(pos).unwrap_or(u32::MAX);
            add_posting(&mut self.by_ndn, key_hash("", &entry.ndn), pos);
            self.children.entry(Arc::clone(&entry.parent_ndn)).or_default().push(pos);
            for &name in INDEXED {
                let Some(attr) = entry.get(name) else { continue };
                let rule = schema::rule(name);
                for v in attr.values() {
                    if let Some(norm) = schema::normalize(rule, v) {
                        add_posting(&mut self.index, key_hash(name, &norm), pos);
                    }
                }
            }
        }
        self.index.shrink_to_fit();
        self.by_ndn.shrink_to_fit();
    }

    /// The entry with this normalised DN.
    pub fn by_ndn(&self, ndn: &str) -> Option<(u32, &Entry)> {
        let postings = self.by_ndn.get(&key_hash("", ndn))?;
        postings
            .as_slice()
            .iter()
            .find_map(|&p| self.entries.get(p as usize).filter(|e| &*e.ndn == ndn).map(|e| (p, e)))
    }

    /// Positions of the direct children of the entry with this normalised DN.
    pub fn children(&self, ndn: &str) -> &[u32] {
        self.children.get(ndn).map_or(&[], Vec::as_slice)
    }

    /// Positions of entries whose `attr` may have a value equal (after
    /// normalisation) to `norm`: a superset, to be checked by the caller;
    /// `None` when `attr` has no index.
    pub fn lookup(&self, attr: &str, norm: &str) -> Option<&[u32]> {
        if !INDEXED.contains(&attr) {
            return None;
        }
        Some(self.index.get(&key_hash(attr, norm)).map_or(&[], Postings::as_slice))
    }

    /// The account that binds with this normalised DN.
    pub fn account(&self, ndn: &str) -> Option<&Account> {
        self.accounts.get(ndn)
    }

    /// The user entry with this stable id (`entryUUID`).
    pub fn user_by_id(&self, id: &str) -> Option<&Entry> {
        let norm = schema::normalize(schema::rule("entryUUID"), id)?;
        self.lookup("entryUUID", &norm)?
            .iter()
            .filter_map(|&p| self.entries.get(p as usize))
            .find(|e| matches!(e.kind, EntryKind::User(_)) && e.values("entryUUID").first() == Some(&id))
    }

    /// Names of the groups whose `memberUid` lists `user`.
    pub fn groups_of(&self, user: &str) -> Vec<String> {
        let Some(hits) = self.lookup("memberUid", user) else { return Vec::new() };
        hits.iter()
            .filter_map(|&p| self.entries.get(p as usize))
            .filter(|e| e.kind == EntryKind::Group && e.values("memberUid").contains(&user))
            .filter_map(|e| e.values("cn").first().map(|c| c.to_string()))
            .collect()
    }

    /// Number of user accounts.
    pub fn user_count(&self) -> usize {
        self.accounts.values().filter(|a| a.kind == AccountKind::User).count()
    }
}

fn add_posting(map: &mut HashMap<u64, Postings>, key: u64, pos: u32) {
    map.entry(key).and_modify(|p| p.push(pos)).or_insert(Postings::One([pos]));
}

/// Adds the operational attributes every entry has and builds it.
fn finish(
    b: EntryBuilder,
    dn: String,
    ndn: String,
    parent_ndn: Arc<str>,
    kind: EntryKind,
    times: Option<(i64, i64)>,
) -> Entry {
    let mut b = b.operational("entryDN", [&dn]).operational("subschemaSubentry", ["cn=Subschema"]);
    if let Some((created, modified)) = times {
        b = b
            .operational("createTimestamp", [generalized_time(created)])
            .operational("modifyTimestamp", [generalized_time(modified)]);
    }
    b.build(dn.into_boxed_str(), ndn.into_boxed_str(), parent_ndn, kind)
}

/// The current snapshot, replaced atomically; readers never block writers.
#[derive(Debug)]
pub struct Directory {
    current: ArcSwap<Snapshot>,
    /// Serialises replacements so an older snapshot never replaces a newer one.
    replacing: std::sync::Mutex<()>,
}

impl Directory {
    /// A directory holding `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        Self { current: ArcSwap::from_pointee(snapshot), replacing: std::sync::Mutex::new(()) }
    }

    /// The snapshot in force now; hold it for the length of one operation.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Installs a new snapshot unless the one in force is newer (two
    /// reloads can finish out of order).
    pub fn replace(&self, snapshot: Snapshot) {
        let _guard = self.replacing.lock();
        if snapshot.generation >= self.current.load().generation {
            self.current.store(Arc::new(snapshot));
        }
    }
}
