//! Provisioning: containers follow from group membership, entitlements and
//! quotas. `model.rs` holds the data; the desired state is written by the
//! store in the same transaction as the change that causes it
//! (`store/provision.rs`); `reconcile.rs` makes Proxmox and dnsmasq match it,
//! level-triggered and idempotent, and survives a crash at any point.

pub mod access;
pub mod cli;
pub mod model;
pub mod reconcile;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use model::Resources;

/// What write transactions need to turn entitlement changes into desired
/// containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// How long a container outlives the right to it (membership or
    /// entitlement removed) before it is deleted.
    pub grace_secs: u64,
    /// A user's quota unless an admin set one.
    pub default_user_quota: Resources,
    /// A group's quota (shared containers) unless an admin set one.
    pub default_group_quota: Resources,
}

impl Default for Policy {
    fn default() -> Self {
        ProvisionConfig::default().policy()
    }
}

/// What to do about a container changed behind Portcullis's back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftPolicy {
    /// Start it again, or create it again if it was deleted.
    Repair,
    /// Record it (status `drifted`, an event) and leave it for an admin.
    Report,
}

/// `[provision]`: the reconciler and the defaults of the model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvisionConfig {
    /// Run the reconciler in `serve`.
    pub enabled: bool,
    /// Seconds between passes when nothing wakes it earlier.
    pub interval_secs: u64,
    /// Containers worked on at once.
    pub max_concurrent: usize,
    /// Seconds a container outlives the right to it.
    pub grace_secs: u64,
    /// Longest wait for one Proxmox task (create, start, stop, delete).
    pub task_timeout_secs: u64,
    /// First retry delay after an error; it doubles per failure.
    pub retry_base_secs: u64,
    /// Longest retry delay.
    pub retry_max_secs: u64,
    /// Containers stopped or deleted outside Portcullis.
    pub drift: DriftPolicy,
    pub default_user_quota: Resources,
    pub default_group_quota: Resources,
    /// The local dnsmasq's reservation files (one site).
    pub dnsmasq: DnsmasqConfig,
}

/// `[provision.dnsmasq]`: where the local dnsmasq reads fixed leases and
/// host records (its `--dhcp-hostsdir` and `--hostsdir`), for one site.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsmasqConfig {
    /// The site whose containers get leases and names here.
    pub site: Option<String>,
    pub hosts_dir: Option<PathBuf>,
    pub dhcp_hosts_dir: Option<PathBuf>,
    /// dnsmasq adds new `--dhcp-hostsdir` files by itself but forgets
    /// changed or removed ones only on SIGHUP: this command runs after such
    /// a change, e.g. `["systemctl", "kill", "-s", "HUP", "dnsmasq"]`.
    pub reload_command: Vec<String>,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: 10,
            max_concurrent: 4,
            grace_secs: 7 * 24 * 3600,
            task_timeout_secs: 600,
            retry_base_secs: 2,
            retry_max_secs: 300,
            drift: DriftPolicy::Repair,
            default_user_quota: Resources { containers: 1, cores: 2, memory_mb: 2048, disk_gb: 20 },
            default_group_quota: Resources { containers: 1, cores: 4, memory_mb: 4096, disk_gb: 50 },
            dnsmasq: DnsmasqConfig::default(),
        }
    }
}

impl ProvisionConfig {
    /// The part write transactions need.
    pub fn policy(&self) -> Policy {
        Policy {
            grace_secs: self.grace_secs,
            default_user_quota: self.default_user_quota,
            default_group_quota: self.default_group_quota,
        }
    }
}
