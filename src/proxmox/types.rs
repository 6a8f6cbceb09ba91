//! Typed answers of the PVE API. Deserialisation is lenient where PVE is
//! inconsistent across versions (numbers sometimes arrive as strings, vmids
//! as `"101"` or `101`) and ignores fields we do not use.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::create::{Features, MountConfig, Net};
use super::{Tags, Upid};

/// `GET /version`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Version {
    /// The pve-manager version, e.g. `8.2.4`.
    pub version: String,
    /// The release, e.g. `8.2`.
    pub release: String,
    /// The git id of the build.
    #[serde(default)]
    pub repoid: String,
}

/// One entry of `GET /nodes`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct NodeInfo {
    /// The node name.
    pub node: String,
    /// `online`, `offline` or `unknown`.
    #[serde(default)]
    pub status: String,
    /// CPU usage, 0.0–1.0.
    #[serde(default, deserialize_with = "de_f64")]
    pub cpu: f64,
    /// Number of CPUs.
    #[serde(default, deserialize_with = "de_u64")]
    pub maxcpu: u64,
    /// Memory in use, bytes.
    #[serde(default, deserialize_with = "de_u64")]
    pub mem: u64,
    /// Memory size, bytes.
    #[serde(default, deserialize_with = "de_u64")]
    pub maxmem: u64,
    /// Disk in use, bytes.
    #[serde(default, deserialize_with = "de_u64")]
    pub disk: u64,
    /// Disk size, bytes.
    #[serde(default, deserialize_with = "de_u64")]
    pub maxdisk: u64,
    /// Seconds since boot.
    #[serde(default, deserialize_with = "de_u64")]
    pub uptime: u64,
    /// SHA-256 fingerprint of the node's certificate (colon-separated hex).
    #[serde(default)]
    pub ssl_fingerprint: Option<String>,
}

/// `GET /nodes/{node}/status` (the fields we use).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct NodeStatus {
    /// CPU usage, 0.0–1.0.
    #[serde(default, deserialize_with = "de_f64")]
    pub cpu: f64,
    /// Memory, bytes.
    pub memory: Usage,
    /// The root file system, bytes.
    pub rootfs: Usage,
    /// CPU description.
    #[serde(default)]
    pub cpuinfo: CpuInfo,
    /// Seconds since boot.
    #[serde(default, deserialize_with = "de_u64")]
    pub uptime: u64,
}

/// Total/used/free of a resource, bytes.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Capacity.
    #[serde(default, deserialize_with = "de_u64")]
    pub total: u64,
    /// In use.
    #[serde(default, deserialize_with = "de_u64")]
    pub used: u64,
    /// Free.
    #[serde(default, deserialize_with = "de_u64")]
    pub free: u64,
}

/// The CPU part of a node's status.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct CpuInfo {
    /// Logical CPUs.
    #[serde(default, deserialize_with = "de_u64")]
    pub cpus: u64,
    /// The CPU model.
    #[serde(default)]
    pub model: String,
}

/// A container's power state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtState {
    /// Running.
    Running,
    /// Stopped.
    Stopped,
    /// Anything else PVE may report.
    Other(String),
}

impl<'de> Deserialize<'de> for CtState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "running" => Self::Running,
            "stopped" => Self::Stopped,
            _ => Self::Other(s),
        })
    }
}

/// One entry of `GET /nodes/{node}/lxc`, and `GET …/status/current`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct LxcStatus {
    /// The container id.
    #[serde(deserialize_with = "de_vmid")]
    pub vmid: u32,
    /// The host name.
    #[serde(default)]
    pub name: Option<String>,
    /// Running or stopped.
    pub status: CtState,
    /// The config lock, e.g. `create`, while an operation holds it.
    #[serde(default)]
    pub lock: Option<String>,
    /// Tags (`a;b`).
    #[serde(default)]
    pub tags: Option<String>,
    /// Seconds since start.
    #[serde(default, deserialize_with = "de_u64")]
    pub uptime: u64,
    /// CPU limit (cores).
    #[serde(default, deserialize_with = "de_f64")]
    pub cpus: f64,
    /// Memory in use, bytes.
    #[serde(default, deserialize_with = "de_u64")]
    pub mem: u64,
    /// Memory limit, bytes.
    #[serde(default, deserialize_with = "de_u64")]
    pub maxmem: u64,
    /// Root disk in use, bytes.
    #[serde(default, deserialize_with = "de_u64")]
    pub disk: u64,
    /// Root disk size, bytes.
    #[serde(default, deserialize_with = "de_u64")]
    pub maxdisk: u64,
}

impl LxcStatus {
    /// Whether it runs.
    pub fn is_running(&self) -> bool {
        self.status == CtState::Running
    }

    /// The tags, normalised; invalid ones are dropped.
    pub fn tags(&self) -> Tags {
        parse_tags_lossy(self.tags.as_deref())
    }
}

/// One `type=vm` entry of `GET /cluster/resources` (it lags behind the
/// nodes by up to ~10 s).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ClusterResource {
    /// `lxc/101`.
    pub id: String,
    /// `lxc` or `qemu`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The guest id.
    #[serde(deserialize_with = "de_vmid")]
    pub vmid: u32,
    /// The node it is on.
    pub node: String,
    /// The guest's name.
    #[serde(default)]
    pub name: Option<String>,
    /// `running`, `stopped`, …
    #[serde(default)]
    pub status: String,
    /// Tags (`a;b`).
    #[serde(default)]
    pub tags: Option<String>,
    /// The config lock, if any.
    #[serde(default)]
    pub lock: Option<String>,
    /// Memory limit, bytes.
    #[serde(default, deserialize_with = "de_u64")]
    pub maxmem: u64,
    /// Disk size, bytes.
    #[serde(default, deserialize_with = "de_u64")]
    pub maxdisk: u64,
    /// CPU limit.
    #[serde(default, deserialize_with = "de_f64")]
    pub maxcpu: f64,
    /// Whether it is a template.
    #[serde(default, deserialize_with = "de_u64")]
    pub template: u64,
}

impl ClusterResource {
    /// The tags, normalised; invalid ones are dropped.
    pub fn tags(&self) -> Tags {
        parse_tags_lossy(self.tags.as_deref())
    }
}

/// One network interface of a running container
/// (`GET …/lxc/{vmid}/interfaces`, PVE ≥ 8.1).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Interface {
    /// `lo`, `eth0`, …
    pub name: String,
    /// The MAC address (PVE reports it lower-case).
    #[serde(default, rename = "hwaddr")]
    pub hwaddr: Option<String>,
    /// IPv4 address with prefix, e.g. `10.0.0.5/24`.
    #[serde(default)]
    pub inet: Option<String>,
    /// IPv6 address with prefix.
    #[serde(default)]
    pub inet6: Option<String>,
}

impl Interface {
    /// The IPv4 address without its prefix length.
    pub fn ipv4(&self) -> Option<std::net::Ipv4Addr> {
        self.inet.as_deref()?.split('/').next()?.parse().ok()
    }
}

/// Whether a task still runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Still running.
    Running,
    /// Finished; see the exit status.
    Stopped,
    /// Anything else.
    Other(String),
}

impl<'de> Deserialize<'de> for TaskState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "running" => Self::Running,
            "stopped" => Self::Stopped,
            _ => Self::Other(s),
        })
    }
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TaskStatus {
    /// Running or stopped.
    pub status: TaskState,
    /// `OK`, `WARNINGS: n`, or the error text, once stopped.
    #[serde(default)]
    pub exitstatus: Option<String>,
    /// The task type.
    #[serde(default, rename = "type")]
    pub task_type: String,
    /// The object id.
    #[serde(default)]
    pub id: String,
}

impl TaskStatus {
    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.status != TaskState::Running
    }

    /// Whether it ended successfully. PVE reports `OK`, or `WARNINGS: n`
    /// when it succeeded with warnings.
    pub fn succeeded(&self) -> bool {
        self.is_finished() && self.exitstatus.as_deref().is_some_and(|e| e == "OK" || e.starts_with("WARNINGS: "))
    }
}

/// A container's configuration (`GET …/lxc/{vmid}/config`): every key as
/// PVE returns it, with typed accessors for the ones we use.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct LxcConfig(pub BTreeMap<String, serde_json::Value>);

impl LxcConfig {
    /// A key's value as text (numbers rendered).
    pub fn get(&self, key: &str) -> Option<String> {
        match self.0.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_string()),
            _ => None,
        }
    }

    fn number(&self, key: &str) -> Option<u64> {
        self.get(key)?.parse().ok()
    }

    /// The host name.
    pub fn hostname(&self) -> Option<String> {
        self.get("hostname")
    }

    /// CPU cores (unset means all of the node's).
    pub fn cores(&self) -> Option<u64> {
        self.number("cores")
    }

    /// Memory limit, MiB.
    pub fn memory_mib(&self) -> Option<u64> {
        self.number("memory")
    }

    /// Swap limit, MiB.
    pub fn swap_mib(&self) -> Option<u64> {
        self.number("swap")
    }

    /// The lock an operation holds (`create`, `backup`, …).
    pub fn lock(&self) -> Option<String> {
        self.get("lock")
    }

    /// The config digest, for optimistic updates (`digest` parameter).
    pub fn digest(&self) -> Option<String> {
        self.get("digest")
    }

    /// Tags, normalised; invalid ones are dropped.
    pub fn tags(&self) -> Tags {
        parse_tags_lossy(self.get("tags").as_deref())
    }

    /// Interface `netN`.
    pub fn net(&self, n: u8) -> Option<Net> {
        Net::parse(&self.get(&format!("net{n}"))?)
    }

    /// The root disk.
    pub fn rootfs(&self) -> Option<MountConfig> {
        MountConfig::parse(&self.get("rootfs")?)
    }

    /// The feature switches.
    pub fn features(&self) -> Features {
        self.get("features").map(|f| Features::parse(&f)).unwrap_or_default()
    }

    /// Whether it is unprivileged.
    pub fn unprivileged(&self) -> bool {
        self.number("unprivileged") == Some(1)
    }
}

/// A UPID answer (`"data": "UPID:…"`).
pub(crate) fn parse_upid(value: serde_json::Value) -> Result<Upid, String> {
    match value {
        serde_json::Value::String(s) => Upid::parse(&s).map_err(|e| e.to_string()),
        other => Err(format!("expected a task id, got {}", short_json(&other))),
    }
}

/// At most 200 characters of a JSON value, for error messages.
pub(crate) fn short_json(v: &serde_json::Value) -> String {
    v.to_string().chars().take(200).collect()
}

fn parse_tags_lossy(list: Option<&str>) -> Tags {
    let mut tags = Tags::new();
    for t in list.unwrap_or("").split(|c: char| c == ';' || c == ',' || c.is_whitespace()) {
        if !t.is_empty() {
            let _ = tags.insert(t);
        }
    }
    tags
}

/// A number that may arrive as a JSON number or a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Lenient {
    Int(u64),
    Float(f64),
    Text(String),
    Null(()),
}

fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(match Lenient::deserialize(d)? {
        Lenient::Int(n) => n,
        // Truncation is intended: usage figures are whole bytes or seconds.
        Lenient::Float(f) => f.max(0.0) as u64,
        Lenient::Text(s) => s.trim().parse().map_err(serde::de::Error::custom)?,
        Lenient::Null(()) => 0,
    })
}

fn de_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(match Lenient::deserialize(d)? {
        // Usage figures are far below 2^52, so this is exact.
        Lenient::Int(n) => n as f64,
        Lenient::Float(f) => f,
        Lenient::Text(s) => s.trim().parse().map_err(serde::de::Error::custom)?,
        Lenient::Null(()) => 0.0,
    })
}

fn de_vmid<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = de_u64(d)?;
    u32::try_from(n).map_err(serde::de::Error::custom)
}

/// `GET /cluster/nextid` answers `"101"` (a quoted number) or `101`.
pub(crate) fn parse_vmid(value: &serde_json::Value) -> Option<u32> {
    match value {
        serde_json::Value::String(s) => s.trim().parse().ok(),
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_numbers_and_vmids() {
        let s: LxcStatus = serde_json::from_value(serde_json::json!({
            "vmid": "101", "status": "running", "maxmem": "536870912", "cpus": 2, "uptime": 5.7, "name": "web",
            "tags": "B;a"
        }))
        .unwrap();
        assert_eq!(s.vmid, 101);
        assert!(s.is_running());
        assert_eq!(s.maxmem, 512 << 20);
        assert_eq!(s.uptime, 5);
        assert_eq!(s.tags().encode(), "a;b");
        assert_eq!(parse_vmid(&serde_json::json!("105")), Some(105));
        assert_eq!(parse_vmid(&serde_json::json!(105)), Some(105));
        assert_eq!(parse_vmid(&serde_json::json!("x")), None);
    }

    #[test]
    fn task_status_success() {
        let ok: TaskStatus = serde_json::from_value(serde_json::json!({"status":"stopped","exitstatus":"OK"})).unwrap();
        assert!(ok.succeeded());
        let running: TaskStatus = serde_json::from_value(serde_json::json!({"status":"running"})).unwrap();
        assert!(!running.is_finished());
        let failed: TaskStatus =
            serde_json::from_value(serde_json::json!({"status":"stopped","exitstatus":"boom"})).unwrap();
        assert!(failed.is_finished() && !failed.succeeded());
    }
}
