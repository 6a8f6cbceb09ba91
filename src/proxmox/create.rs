//! The parameters of `POST /nodes/{node}/lxc` and the PVE property strings
//! they are made of (`net0`, `rootfs`, `features`), with parsers for reading
//! them back from a container's config. Pure data: no I/O.

use std::fmt;

use super::Tags;

/// A container to create. `vmid` and `ostemplate` are required by PVE;
/// everything else falls back to PVE's defaults when `None`.
#[derive(Clone, Default)]
pub struct CreateLxc {
    /// The container id (from [`super::ProxmoxClient::next_id`] or chosen).
    pub vmid: u32,
    /// The template volume, e.g. `local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst`.
    pub ostemplate: String,
    /// The host name inside the container (also its DNS name here).
    pub hostname: Option<String>,
    /// CPU cores visible to the container.
    pub cores: Option<u32>,
    /// Memory limit in MiB.
    pub memory_mib: Option<u64>,
    /// Swap limit in MiB.
    pub swap_mib: Option<u64>,
    /// The root disk to allocate.
    pub rootfs: Option<RootFs>,
    /// The first network interface (`net0`).
    pub net0: Option<Net>,
    /// Tags, normalised by PVE on write.
    pub tags: Tags,
    /// Run the container unprivileged (user-namespace mapped).
    pub unprivileged: Option<bool>,
    /// Feature switches (`nesting`, `keyctl`, `fuse`).
    pub features: Option<Features>,
    /// Start the container once created.
    pub start: Option<bool>,
    /// Start the container when the node boots.
    pub onboot: Option<bool>,
    /// The root password inside the container; never shown by `Debug`.
    pub password: Option<String>,
    /// `authorized_keys` content for root.
    pub ssh_public_keys: Option<String>,
    /// Free text shown in the PVE web UI.
    pub description: Option<String>,
    /// DNS servers for the container (space-separated addresses).
    pub nameserver: Option<String>,
    /// DNS search domains for the container.
    pub searchdomain: Option<String>,
    /// The resource pool to put the container in.
    pub pool: Option<String>,
    /// Further raw parameters, sent as given (for options this struct does
    /// not name yet).
    pub extra: Vec<(String, String)>,
}

impl CreateLxc {
    /// The form parameters, booleans as `0`/`1`, in a stable order.
    pub fn to_params(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> =
            vec![("vmid".into(), self.vmid.to_string()), ("ostemplate".into(), self.ostemplate.clone())];
        let mut opt = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                p.push((k.to_string(), v));
            }
        };
        opt("hostname", self.hostname.clone());
        opt("cores", self.cores.map(|v| v.to_string()));
        opt("memory", self.memory_mib.map(|v| v.to_string()));
        opt("swap", self.swap_mib.map(|v| v.to_string()));
        opt("rootfs", self.rootfs.as_ref().map(RootFs::encode));
        opt("net0", self.net0.as_ref().map(Net::encode));
        opt("tags", (!self.tags.is_empty()).then(|| self.tags.encode()));
        opt("unprivileged", self.unprivileged.map(bool01));
        opt("features", self.features.as_ref().map(Features::encode).filter(|f| !f.is_empty()));
        opt("start", self.start.map(bool01));
        opt("onboot", self.onboot.map(bool01));
        opt("password", self.password.clone());
        opt("ssh-public-keys", self.ssh_public_keys.clone());
        opt("description", self.description.clone());
        opt("nameserver", self.nameserver.clone());
        opt("searchdomain", self.searchdomain.clone());
        opt("pool", self.pool.clone());
        p.extend(self.extra.iter().cloned());
        p
    }
}

impl fmt::Debug for CreateLxc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateLxc")
            .field("vmid", &self.vmid)
            .field("ostemplate", &self.ostemplate)
            .field("hostname", &self.hostname)
            .field("cores", &self.cores)
            .field("memory_mib", &self.memory_mib)
            .field("swap_mib", &self.swap_mib)
            .field("rootfs", &self.rootfs)
            .field("net0", &self.net0)
            .field("tags", &self.tags)
            .field("unprivileged", &self.unprivileged)
            .field("features", &self.features)
            .field("start", &self.start)
            .field("onboot", &self.onboot)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ssh_public_keys", &self.ssh_public_keys)
            .field("description", &self.description)
            .field("nameserver", &self.nameserver)
            .field("searchdomain", &self.searchdomain)
            .field("pool", &self.pool)
            .field("extra", &self.extra.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish()
    }
}

/// PVE's boolean encoding in forms.
pub(crate) fn bool01(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

/// A root disk to allocate on create: `STORAGE:SIZE_GiB`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootFs {
    /// The storage id, e.g. `local-lvm`.
    pub storage: String,
    /// The size in GiB.
    pub size_gib: u32,
}

impl RootFs {
    /// `local-lvm:8`.
    pub fn encode(&self) -> String {
        format!("{}:{}", self.storage, self.size_gib)
    }
}

/// A mount point as a container's config shows it:
/// `local-lvm:vm-101-disk-0,size=8G`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountConfig {
    /// The volume id (`STORAGE:NAME`).
    pub volume: String,
    /// The size in bytes, when the config states one.
    pub size_bytes: Option<u64>,
}

impl MountConfig {
    /// Parses a `rootfs`/`mpN` value; `None` when it has no volume.
    pub fn parse(value: &str) -> Option<Self> {
        let mut volume = None;
        let mut size_bytes = None;
        for (i, item) in value.split(',').enumerate() {
            match item.split_once('=') {
                Some(("volume", v)) => volume = Some(v.to_string()),
                Some(("size", v)) => size_bytes = parse_size(v),
                Some(_) => {}
                None if i == 0 => volume = Some(item.to_string()),
                None => {}
            }
        }
        Some(Self { volume: volume.filter(|v| !v.is_empty())?, size_bytes })
    }

    /// The storage part of the volume id.
    pub fn storage(&self) -> &str {
        self.volume.split_once(':').map_or(self.volume.as_str(), |(s, _)| s)
    }
}

/// Parses PVE's disk sizes (`8G`, `512M`, `1.5T`, `1024` bytes); `None` on
/// garbage or overflow.
pub fn parse_size(text: &str) -> Option<u64> {
    let (num, unit) = match text.char_indices().find(|(_, c)| !(c.is_ascii_digit() || *c == '.')) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let mult: u64 = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1 {
        return None;
    }
    if let Some((whole, frac)) = num.split_once('.') {
        let whole: u64 = whole.parse().ok()?;
        let scale = 10u64.checked_pow(u32::try_from(frac.len()).ok()?)?;
        let frac: u64 = frac.parse().ok()?;
        let w = whole.checked_mul(mult)?;
        let f = frac.checked_mul(mult)? / scale;
        w.checked_add(f)
    } else {
        num.parse::<u64>().ok()?.checked_mul(mult)
    }
}

/// How an interface gets its IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetIp {
    /// From DHCP (here: dnsmasq with a fixed lease per MAC).
    Dhcp,
    /// A static address in CIDR form, e.g. `10.0.0.5/24`.
    Static(String),
    /// Configured inside the container, not by PVE.
    Manual,
}

/// A network interface property string (`net0`):
/// `name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip=dhcp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Net {
    /// The interface name inside the container.
    pub name: String,
    /// The host bridge.
    pub bridge: Option<String>,
    /// The MAC address; we pre-assign it so the DHCP lease is known.
    pub hwaddr: Option<String>,
    /// IPv4 configuration.
    pub ip: Option<NetIp>,
    /// IPv4 gateway (static addressing only).
    pub gw: Option<String>,
    /// Whether PVE's firewall filters this interface.
    pub firewall: Option<bool>,
    /// VLAN tag.
    pub vlan: Option<u16>,
    /// Other keys, kept so a parsed value re-encodes without loss.
    pub other: Vec<(String, String)>,
}

impl Net {
    /// An interface `name` on `bridge` with no further options.
    pub fn new(name: &str, bridge: &str) -> Self {
        Self {
            name: name.into(),
            bridge: Some(bridge.into()),
            hwaddr: None,
            ip: None,
            gw: None,
            firewall: None,
            vlan: None,
            other: Vec::new(),
        }
    }

    /// The property string, keys in PVE's order.
    pub fn encode(&self) -> String {
        let mut parts = vec![format!("name={}", self.name)];
        if let Some(b) = &self.bridge {
            parts.push(format!("bridge={b}"));
        }
        if let Some(f) = self.firewall {
            parts.push(format!("firewall={}", bool01(f)));
        }
        if let Some(gw) = &self.gw {
            parts.push(format!("gw={gw}"));
        }
        if let Some(h) = &self.hwaddr {
            parts.push(format!("hwaddr={h}"));
        }
        match &self.ip {
            Some(NetIp::Dhcp) => parts.push("ip=dhcp".into()),
            Some(NetIp::Manual) => parts.push("ip=manual".into()),
            Some(NetIp::Static(cidr)) => parts.push(format!("ip={cidr}")),
            None => {}
        }
        if let Some(v) = self.vlan {
            parts.push(format!("tag={v}"));
        }
        parts.extend(self.other.iter().map(|(k, v)| format!("{k}={v}")));
        parts.join(",")
    }

    /// Parses a `netN` value from a config; `None` without a `name`.
    pub fn parse(value: &str) -> Option<Self> {
        let mut net = Self::new("", "");
        net.bridge = None;
        for item in value.split(',') {
            let (k, v) = item.split_once('=')?;
            match k {
                "name" => net.name = v.to_string(),
                "bridge" => net.bridge = Some(v.to_string()),
                "hwaddr" => net.hwaddr = Some(v.to_string()),
                "gw" => net.gw = Some(v.to_string()),
                "firewall" => net.firewall = Some(v == "1"),
                "tag" => net.vlan = v.parse().ok(),
                "ip" => {
                    net.ip = Some(match v {
                        "dhcp" => NetIp::Dhcp,
                        "manual" => NetIp::Manual,
                        cidr => NetIp::Static(cidr.to_string()),
                    });
                }
                _ => net.other.push((k.to_string(), v.to_string())),
            }
        }
        (!net.name.is_empty()).then_some(net)
    }
}

/// Container feature switches (`features`); `false` ones are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    /// Allow nested containers (needed by modern systemd).
    pub nesting: bool,
    /// Allow the keyctl() system call (needed by Docker in unprivileged CTs).
    pub keyctl: bool,
    /// Allow FUSE mounts.
    pub fuse: bool,
}

impl Features {
    /// `nesting=1,keyctl=1`; empty when nothing is enabled.
    pub fn encode(&self) -> String {
        let mut parts = Vec::new();
        for (on, name) in [(self.fuse, "fuse"), (self.keyctl, "keyctl"), (self.nesting, "nesting")] {
            if on {
                parts.push(format!("{name}=1"));
            }
        }
        parts.join(",")
    }

    /// Parses a `features` value; unknown switches are ignored.
    pub fn parse(value: &str) -> Self {
        let mut f = Self::default();
        for item in value.split(',') {
            match item.split_once('=') {
                Some(("nesting", v)) => f.nesting = v == "1",
                Some(("keyctl", v)) => f.keyctl = v == "1",
                Some(("fuse", v)) => f.fuse = v == "1",
                _ => {}
            }
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_round_trips() {
        let mut n = Net::new("eth0", "vmbr0");
        n.hwaddr = Some("BC:24:11:00:00:01".into());
        n.ip = Some(NetIp::Dhcp);
        assert_eq!(n.encode(), "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip=dhcp");
        let read =
            Net::parse("name=eth0,bridge=vmbr0,firewall=1,hwaddr=BC:24:11:00:00:01,ip=10.0.0.5/24,type=veth").unwrap();
        assert_eq!(read.ip, Some(NetIp::Static("10.0.0.5/24".into())));
        assert_eq!(read.firewall, Some(true));
        assert_eq!(read.other, vec![("type".to_string(), "veth".to_string())]);
        assert_eq!(
            read.encode(),
            "name=eth0,bridge=vmbr0,firewall=1,hwaddr=BC:24:11:00:00:01,ip=10.0.0.5/24,type=veth"
        );
        assert!(Net::parse("bridge=vmbr0").is_none());
        assert!(Net::parse("garbage").is_none());
    }

    #[test]
    fn sizes_and_mounts() {
        assert_eq!(parse_size("8G"), Some(8 << 30));
        assert_eq!(parse_size("1.5T"), Some(3 << 39));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("100"), Some(100));
        for bad in ["", "G", "1.G", ".5G", "1..2G", "8X", "99999999999999999999T", "-1G"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        let m = MountConfig::parse("local-lvm:vm-101-disk-0,size=8G").unwrap();
        assert_eq!(m.volume, "local-lvm:vm-101-disk-0");
        assert_eq!(m.storage(), "local-lvm");
        assert_eq!(m.size_bytes, Some(8 << 30));
        assert_eq!(MountConfig::parse("volume=local:5,ro=1").unwrap().volume, "local:5");
    }

    #[test]
    fn create_params_hide_nothing_but_debug_hides_the_password() {
        let c = CreateLxc {
            vmid: 101,
            ostemplate: "local:vztmpl/debian.tar.zst".into(),
            password: Some("hunter22".into()),
            unprivileged: Some(true),
            features: Some(Features { nesting: true, ..Features::default() }),
            ..CreateLxc::default()
        };
        let p = c.to_params();
        assert!(p.contains(&("unprivileged".into(), "1".into())));
        assert!(p.contains(&("features".into(), "nesting=1".into())));
        assert!(p.contains(&("password".into(), "hunter22".into())));
        assert!(!format!("{c:?}").contains("hunter22"));
    }
}
