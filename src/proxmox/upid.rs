//! The unique process id (UPID) Proxmox VE hands out for every long-running
//! operation. This file owns parsing and validating it; it never talks to
//! the network.

use std::fmt;

/// A validated task id, e.g.
/// `UPID:pve1:0001A2B3:0045C6D7:66A1B2C3:vzcreate:101:root@pam!portcullis:`.
///
/// The fields follow PVE's `upid_decode`: node, pid and pstart (hex), start
/// time (hex unix seconds), task type, object id (may be empty) and the user
/// (for API tokens the full token id). The original text is kept verbatim,
/// because task URLs must carry exactly what the server issued.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Upid {
    raw: String,
    node: String,
    pid: u32,
    pstart: u64,
    starttime: u32,
    task_type: String,
    id: String,
    user: String,
}

/// Why a string is not a UPID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Proxmox task id (UPID): {0}")]
pub struct InvalidUpid(String);

impl Upid {
    /// Parses and validates `text` the way PVE does (`^UPID:node:pid(8 hex):
    /// pstart(8-9 hex):starttime(8 hex):type:id:user:$`).
    ///
    /// # Errors
    /// The text does not have that shape.
    pub fn parse(text: &str) -> Result<Self, InvalidUpid> {
        let bad = |why: &str| InvalidUpid(format!("{why} in {:?}", truncate(text)));
        let rest = text.strip_prefix("UPID:").ok_or_else(|| bad("missing the UPID: prefix"))?;
        let rest = rest.strip_suffix(':').ok_or_else(|| bad("missing the trailing colon"))?;
        let parts: Vec<&str> = rest.split(':').collect();
        let [node, pid, pstart, starttime, task_type, id, user] = parts.as_slice() else {
            return Err(bad("wrong number of fields"));
        };
        if !valid_node_name(node) {
            return Err(bad("invalid node name"));
        }
        let hex = |s: &str, lens: &[usize]| lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(pid, &[8]) || !hex(pstart, &[8, 9]) || !hex(starttime, &[8]) {
            return Err(bad("invalid hex field"));
        }
        let plain = |s: &str| !s.bytes().any(|b| b.is_ascii_whitespace() || b == b':' || b.is_ascii_control());
        if task_type.is_empty() || !plain(task_type) || !plain(id) || user.is_empty() || !plain(user) {
            return Err(bad("invalid type, id or user field"));
        }
        Ok(Self {
            raw: text.to_string(),
            node: (*node).to_string(),
            pid: u32::from_str_radix(pid, 16).map_err(|_| bad("invalid pid"))?,
            pstart: u64::from_str_radix(pstart, 16).map_err(|_| bad("invalid pstart"))?,
            starttime: u32::from_str_radix(starttime, 16).map_err(|_| bad("invalid start time"))?,
            task_type: (*task_type).to_string(),
            id: (*id).to_string(),
            user: (*user).to_string(),
        })
    }

    /// The task id exactly as the server issued it.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The node that runs the task (its status lives under that node).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The task's process id on the node.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process start time in clock ticks since boot.
    pub fn pstart(&self) -> u64 {
        self.pstart
    }

    /// When the task started, in unix seconds.
    pub fn starttime(&self) -> u32 {
        self.starttime
    }

    /// The task type, e.g. `vzcreate`, `vzstart`, `vzdestroy`.
    pub fn task_type(&self) -> &str {
        &self.task_type
    }

    /// The object the task works on (for container tasks the vmid).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Who started the task (for API tokens `user@realm!token`).
    pub fn user(&self) -> &str {
        &self.user
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Upid({})", self.raw)
    }
}

impl std::str::FromStr for Upid {
    type Err = InvalidUpid;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// PVE's node name rule: letters, digits and inner hyphens.
pub(crate) fn valid_node_name(node: &str) -> bool {
    let b = node.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

fn truncate(s: &str) -> String {
    s.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_token_upid() {
        let u = Upid::parse("UPID:pve1:0001A2B3:0045C6D7:66A1B2C3:vzcreate:101:root@pam!portcullis:").unwrap();
        assert_eq!(u.node(), "pve1");
        assert_eq!(u.pid(), 0x0001_A2B3);
        assert_eq!(u.pstart(), 0x0045_C6D7);
        assert_eq!(u.starttime(), 0x66A1_B2C3);
        assert_eq!(u.task_type(), "vzcreate");
        assert_eq!(u.id(), "101");
        assert_eq!(u.user(), "root@pam!portcullis");
        // Nine-digit pstart and an empty id are valid too.
        assert!(Upid::parse("UPID:n-2:0001A2B3:145C6D7AA:66A1B2C3:aptupdate::root@pam:").is_ok());
    }

    #[test]
    fn rejects_malformed_upids() {
        for bad in [
            "",
            "UPID:pve1:0001A2B3:0045C6D7:66A1B2C3:vzcreate:101:root@pam",
            "UPID:pve1:1A2B3:0045C6D7:66A1B2C3:vzcreate:101:root@pam:",
            "UPID:-pve:0001A2B3:0045C6D7:66A1B2C3:vzcreate:101:root@pam:",
            "UPID:pve1:0001A2B3:0045C6D7:66A1B2C3:vzcreate:101::",
            "UPID:pve1:0001A2B3:0045C6D7:66A1B2C3:vz create:101:root@pam:",
            "UPID:pve1:0001A2B3:0045C6D7:66A1B2C3:vzcreate:101:root@pam:x:",
            "UPID:pve1:0001A2BG:0045C6D7:66A1B2C3:vzcreate:101:root@pam:",
        ] {
            assert!(Upid::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }
}
