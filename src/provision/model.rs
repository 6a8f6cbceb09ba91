//! The provisioning model as stored: sites, Proxmox nodes, plans,
//! entitlements, quotas, containers and their events. Plain data; the SQL
//! lives in `store/provision.rs`, the decisions in `desired.rs` and
//! `reconcile.rs`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A network where containers live: their subnet, gateway, DNS domain and
/// the range their addresses come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Site {
    pub name: String,
    pub subnet: ipnet::Ipv4Net,
    pub gateway: std::net::Ipv4Addr,
    pub domain: String,
    pub range_start: std::net::Ipv4Addr,
    pub range_end: std::net::Ipv4Addr,
}

/// A Proxmox VE node that containers are placed on.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub name: String,
    pub site: String,
    pub api_url: String,
    pub token_id: String,
    /// Sealed (see `secrets.rs`); never shown.
    #[serde(skip)]
    pub token_secret_sealed: String,
    pub tls_fingerprint: Option<String>,
    pub tls_ca: Option<String>,
    pub storage: String,
    pub bridge: String,
    pub template: String,
    /// Container features this node allows (`nesting`, `keyctl`, …).
    pub features: Vec<String>,
    pub capacity: Resources,
    pub enabled: bool,
    pub last_seen_at: Option<i64>,
    pub last_error: Option<String>,
}

/// A size class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub name: String,
    pub cores: i64,
    pub memory_mb: i64,
    pub swap_mb: i64,
    pub disk_gb: i64,
    /// Features its containers need (`nesting`, `keyctl`, …); placement
    /// only picks nodes that allow them all.
    pub features: Vec<String>,
    /// An ostemplate; `None` = the node's default.
    pub template: Option<String>,
    pub description: String,
}

impl Plan {
    /// What one container of this plan takes from a quota.
    pub fn resources(&self) -> Resources {
        Resources { containers: 1, cores: self.cores, memory_mb: self.memory_mb, disk_gb: self.disk_gb }
    }
}

/// Members of `group` get a container of `plan`: one each, or one shared
/// by the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entitlement {
    pub group: String,
    pub plan: String,
    pub shared: bool,
}

/// Counted resources: what a quota allows, what containers use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    pub containers: i64,
    pub cores: i64,
    pub memory_mb: i64,
    pub disk_gb: i64,
}

impl Resources {
    /// The sum of two.
    #[must_use]
    pub fn plus(self, other: Resources) -> Resources {
        Resources {
            containers: self.containers + other.containers,
            cores: self.cores + other.cores,
            memory_mb: self.memory_mb + other.memory_mb,
            disk_gb: self.disk_gb + other.disk_gb,
        }
    }

    /// The first limit `self` exceeds in `limit`, as (name, used, allowed,
    /// unit), in the order containers, cores, memory, disk.
    pub fn first_excess(&self, limit: &Resources) -> Option<(&'static str, i64, i64, &'static str)> {
        [
            ("containers", self.containers, limit.containers, ""),
            ("cores", self.cores, limit.cores, ""),
            ("memory", self.memory_mb, limit.memory_mb, " MiB"),
            ("disk", self.disk_gb, limit.disk_gb, " GiB"),
        ]
        .into_iter()
        .find(|(_, used, allowed, _)| used > allowed)
    }
}

/// Who owns a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum Owner {
    User(String),
    Group(String),
    /// Adopted from a node and not yet assigned by an admin.
    None,
}

impl Owner {
    /// The stored kind and id.
    pub fn parts(&self) -> (&'static str, Option<&str>) {
        match self {
            Owner::User(id) => ("user", Some(id)),
            Owner::Group(id) => ("group", Some(id)),
            Owner::None => ("none", None),
        }
    }

    /// From the stored kind and id.
    pub fn from_parts(kind: &str, id: Option<String>) -> Owner {
        match (kind, id) {
            ("user", Some(id)) => Owner::User(id),
            ("group", Some(id)) => Owner::Group(id),
            _ => Owner::None,
        }
    }
}

/// What the reconciler should make true.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Stopped,
    Deleted,
}

impl Desired {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
            Desired::Deleted => "deleted",
        }
    }

    /// From the stored word (unknown words read as `Stopped`, the safe side).
    pub fn parse(s: &str) -> Desired {
        match s {
            "running" => Desired::Running,
            "deleted" => Desired::Deleted,
            _ => Desired::Stopped,
        }
    }
}

impl fmt::Display for Desired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A container as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub owner: Owner,
    /// `entitlement`, `request` or `adopted`.
    pub origin: String,
    /// The granting group, for entitlement containers.
    pub entitlement: Option<String>,
    pub plan: String,
    pub size: Resources,
    pub swap_mb: i64,
    pub features: Vec<String>,
    pub template: Option<String>,
    pub site: String,
    pub node: Option<String>,
    pub vmid: Option<i64>,
    pub mac: Option<String>,
    pub ip: Option<std::net::Ipv4Addr>,
    pub desired: Desired,
    /// pending, creating, starting, ready, stopped, error, deleting,
    /// deleted, drifted.
    pub status: String,
    /// What Proxmox last said: absent, stopped, running, locked, unknown.
    pub observed: String,
    pub over_quota: bool,
    pub delete_after: Option<i64>,
    pub last_error: Option<String>,
    pub attempts: i64,
    pub next_attempt: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One line of a container's history.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerEvent {
    pub at: i64,
    pub kind: String,
    pub message: String,
}

/// A request beyond a quota, waiting for an admin.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerRequest {
    pub id: String,
    /// `create` (a new container) or `resize` (container `name` to `plan`).
    pub kind: String,
    pub user: String,
    pub name: String,
    pub plan: String,
    pub reason: String,
    pub status: String,
    pub created_at: i64,
}

/// Splits a stored comma list.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|f| !f.is_empty()).map(str::to_string).collect()
}

/// Checks a container name: a DNS label of at most 63 characters
/// (lower-case letters, digits, inner hyphens), starting with a letter.
///
/// # Errors
/// A message fit to show the person who chose the name.
pub fn validate_container_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid container name {name:?}: use 1-63 lower-case letters, digits and inner hyphens, a letter first (it becomes a DNS name)"
        ))
    }
}

/// A DNS-label form of a login or group name (`_` and `.` become `-`).
pub fn label_of(name: &str) -> String {
    let mut label: String =
        name.chars().map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' }).collect();
    while label.ends_with('-') {
        label.pop();
    }
    label
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for ok in ["web", "alice-small", "a1", &"a".repeat(63)] {
            assert!(validate_container_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1web", "web-", "Web", "we_b", "we.b", &"a".repeat(64)] {
            assert!(validate_container_name(bad).is_err(), "{bad}");
        }
        assert_eq!(label_of("j.doe_x"), "j-doe-x");
    }

    #[test]
    fn excess_names_the_first_limit() {
        let limit = Resources { containers: 2, cores: 4, memory_mb: 4096, disk_gb: 40 };
        let used = Resources { containers: 2, cores: 5, memory_mb: 8192, disk_gb: 10 };
        assert_eq!(used.first_excess(&limit), Some(("cores", 5, 4, "")));
        assert_eq!(limit.first_excess(&limit), None);
    }
}
