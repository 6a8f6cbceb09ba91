//! Containers in the directory: who may log in where, and who is root.
//!
//! Owns the two ways a container shows up in the tree, both derived from
//! [`crate::store::DirectoryData`] while a snapshot is built:
//! - `host` values on user entries: the names of the containers the user may
//!   log in to (the owner, the members of an owning group, collaborators,
//!   instance admins).
//!   SSSD with `ldap_access_order = host` compares them with the machine's
//!   hostname, so logins follow ownership and membership on the next snapshot.
//! - one `sudoRole` entry per owned container under `ou=sudoers`, giving its
//!   owner (a user, or `%group` for a group-owned one) every command there.
//!
//! It decides nothing about placement or lifecycle (that is `provision/`) and
//! never reads the store: the snapshot is built from data already loaded.

use std::collections::{HashMap, HashSet};

use super::EntryBuilder;
use crate::provision::access::host_names;
use crate::provision::model::Owner;
use crate::store::DirectoryData;

/// What the snapshot needs to render containers, computed once per build
/// in time linear in containers plus the members of owning groups.
#[derive(Debug, Default)]
pub(super) struct LoginHosts<'a> {
    /// Each live container's host names: `NAME` and `NAME.DOMAIN`.
    names: Vec<Vec<String>>,
    /// Positions (in `names`) of the containers each user (by id) may log
    /// in to as owner or member of the owning group.
    by_user: HashMap<&'a str, Vec<u32>>,
    /// Enabled members of the admin group: every container is theirs to log in to.
    admins: HashSet<&'a str>,
}

impl<'a> LoginHosts<'a> {
    /// Who may log in where. Disabled users get nothing: SSSD's host check
    /// then refuses them even for logins that never bind (SSH keys).
    pub(super) fn compute(data: &'a DirectoryData, admin_group: &str) -> Self {
        let enabled: HashSet<&str> = data.users.iter().filter(|u| !u.disabled).map(|u| u.id.as_str()).collect();
        let groups: HashMap<&str, &crate::model::Group> = data.groups.iter().map(|g| (g.id.as_str(), g)).collect();
        let mut by_user: HashMap<&'a str, Vec<u32>> = HashMap::new();
        let mut names = Vec::with_capacity(data.containers.len());
        for (pos, c) in data.containers.iter().enumerate() {
            names.push(host_names(&c.name, &c.domain));
            let pos = u32::try_from(pos).unwrap_or(u32::MAX);
            let users: &'a [String] = match &c.owner {
                Owner::User(id) => std::slice::from_ref(id),
                Owner::Group(id) => groups.get(id.as_str()).map_or(&[], |g| g.member_ids.as_slice()),
                Owner::None => &[],
            };
            let collaborators = c.collaborators.iter();
            for user in users.iter().chain(collaborators).map(String::as_str).filter(|u| enabled.contains(u)) {
                by_user.entry(user).or_default().push(pos);
            }
        }
        // Positions arrive in order; a member listed twice counts once.
        for list in by_user.values_mut() {
            list.dedup();
        }
        let admins = data
            .groups
            .iter()
            .filter(|g| !admin_group.is_empty() && g.name == admin_group)
            .flat_map(|g| g.member_ids.iter().map(String::as_str))
            .filter(|u| enabled.contains(u))
            .collect();
        Self { names, by_user, admins }
    }

    /// The `host` values of one user: every container for an admin, else
    /// the ones they own or share through a group.
    pub(super) fn hosts_of(&self, user_id: &str) -> Vec<&str> {
        if self.admins.contains(user_id) {
            return self.names.iter().flatten().map(String::as_str).collect();
        }
        self.by_user
            .get(user_id)
            .map(|list| list.iter().filter_map(|&p| self.names.get(p as usize)).flatten().map(String::as_str).collect())
            .unwrap_or_default()
    }
}

/// One container's sudoRole: its RDN value, the entry, and its times.
pub(super) struct SudoRule {
    pub(super) cn: String,
    pub(super) entry: EntryBuilder,
    /// (created, modified) for createTimestamp and modifyTimestamp.
    pub(super) times: (i64, i64),
}

/// The sudoRole of every container with an enabled owner (user) or an
/// existing owning group: `sudoUser` the owner's login name or `%GROUP`
/// (SSSD and sudo resolve the group's members themselves, so a membership
/// change needs no rule change), `sudoHost` its two names, any command as
/// anyone. Instance admins get no rule: they may log in, not become root.
pub(super) fn sudo_rules(data: &DirectoryData) -> Vec<SudoRule> {
    let users: HashMap<&str, &crate::model::User> = data.users.iter().map(|u| (u.id.as_str(), u)).collect();
    let groups: HashMap<&str, &crate::model::Group> = data.groups.iter().map(|g| (g.id.as_str(), g)).collect();
    let mut out = Vec::new();
    for c in &data.containers {
        let (sudo_user, owner_changed) = match &c.owner {
            Owner::User(id) => match users.get(id.as_str()) {
                Some(u) if !u.disabled => (u.name.clone(), u.updated_at),
                _ => continue,
            },
            Owner::Group(id) => match groups.get(id.as_str()) {
                Some(g) => (format!("%{}", g.name), g.updated_at),
                None => continue,
            },
            Owner::None => continue,
        };
        let entry = EntryBuilder::default()
            .many("objectClass", ["top", "sudoRole"])
            .one("cn", &c.name)
            .one("description", &format!("Root on container {} for its owner (Portcullis)", c.name))
            .one("sudoUser", &sudo_user)
            .many("sudoHost", host_names(&c.name, &c.domain))
            .one("sudoCommand", "ALL")
            .one("sudoRunAsUser", "ALL")
            .one("sudoRunAsGroup", "ALL")
            .operational("entryUUID", [&c.id])
            .operational("structuralObjectClass", ["sudoRole"]);
        out.push(SudoRule { cn: c.name.clone(), entry, times: (c.created_at, c.updated_at.max(owner_changed)) });
    }
    out
}
