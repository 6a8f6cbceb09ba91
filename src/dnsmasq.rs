//! dnsmasq reservation files: one DHCP reservation and one DNS name per
//! container, written as files that a running dnsmasq picks up by itself.
//!
//! Portcullis never talks to dnsmasq directly. It owns two directories that
//! dnsmasq watches with inotify (`--dhcp-hostsdir` and `--hostsdir`) and
//! keeps exactly one file per container in each, named
//! `portcullis-{container_id}`. [`DnsmasqFiles::apply`] converges those
//! directories on the wanted set; [`DnsmasqFiles::observed`] reads them back
//! for drift detection; [`DnsmasqFiles::config_snippet`] renders the lines an
//! admin installs in dnsmasq's own configuration.
//!
//! Facts about dnsmasq 2.90 (Debian 12) this module relies on, checked
//! against its source (`src/inotify.c`), its man page and its behaviour:
//! - Both directories are watched with inotify and a file is (re-)read when
//!   it is closed after writing (`IN_CLOSE_WRITE`) or moved in
//!   (`IN_MOVED_TO`); names that start with `.`, end with `~` or are `#…#`
//!   are ignored, at start-up and on events. So a file is written as
//!   `.portcullis-….tmp` and renamed into place: dnsmasq never reads half a
//!   file, and never reads the temporary one.
//! - `--hostsdir`: a changed or deleted file's old names are dropped at once
//!   (since 2.88; 2.90 logs "inotify: … removed"). DNS follows every change
//!   without a restart.
//! - `--dhcp-hostsdir`: records are only ever *added*. A changed or deleted
//!   file's old `dhcp-host` stays in force until dnsmasq gets SIGHUP (which
//!   re-reads both directories but not the main configuration); with two
//!   reservations for one MAC in a subnet "the result is undefined". So
//!   [`ApplyReport::dhcp_reload_needed`] tells the caller when to send it.
//! - A `--dhcp-hostsdir` line is what follows `dhcp-host=` in the main
//!   configuration, *without* that prefix (with it, dnsmasq logs "bad hex
//!   constant" and ignores the line). `#` starts a comment in both formats.
//!
//! This module does no networking and sends no signals; it must never touch
//! a file whose name does not start with `portcullis-` (or, for its own
//! temporary files, `.portcullis-`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

/// Prefix of every file this module owns; nothing else in the directories is
/// ever touched.
pub const FILE_PREFIX: &str = "portcullis-";
/// Prefix of temporary files: the leading dot makes dnsmasq ignore them.
const TEMP_PREFIX: &str = ".portcullis-";
/// Suffix of temporary files.
const TEMP_SUFFIX: &str = ".tmp";
/// Longest accepted container id (our ids are 36-character UUIDs).
pub const MAX_CONTAINER_ID_LEN: usize = 64;
/// Largest reservation file read back; ours are under 200 bytes, so anything
/// bigger was not written by us and is reported as malformed.
const MAX_FILE_BYTES: u64 = 4096;
/// Longest DNS name in presentation form (RFC 1035, without the final dot).
const MAX_DNS_NAME_LEN: usize = 253;
/// DHCP lease time in the rendered `dhcp-range`: short enough that a changed
/// reservation reaches a running container within the hour (clients renew at
/// half the lease), long enough that a dnsmasq restart goes unnoticed.
pub const LEASE_TIME: &str = "1h";
/// The DHCP tag the rendered configuration gives the container subnet, so
/// its options never leak into other ranges an admin serves.
const DHCP_TAG: &str = "portcullis";
/// Domain separation for [`MacAddr::local_from`], so the derived MAC is not
/// simply a prefix of some other SHA-256 of the same id.
const MAC_DERIVATION_CONTEXT: &[u8] = b"portcullis mac v1\0";

/// Errors from rendering, validating and writing dnsmasq files, phrased for
/// the admin (or reconciler log) that has to act on them.
#[derive(Debug, thiserror::Error)]
pub enum DnsmasqError {
    /// A container id cannot be used in a file name.
    #[error("invalid container id {id:?}: {reason}")]
    InvalidContainerId { id: String, reason: &'static str },
    /// A reservation's hostname, MAC or address cannot be served.
    #[error("container {container_id}: {reason}")]
    InvalidReservation { container_id: String, reason: String },
    /// Two reservations claim the same address, MAC, hostname or id.
    #[error("duplicate {what} {value}: wanted by both container {first} and container {second}")]
    Duplicate { what: &'static str, value: String, first: String, second: String },
    /// Text that is not a MAC address.
    #[error("invalid MAC address {0:?}: expected six hex octets separated by ':' (like 02:5e:10:00:00:01)")]
    InvalidMac(String),
    /// The DNS domain is not a valid name.
    #[error("invalid DNS domain {domain:?}: {reason}")]
    InvalidDomain { domain: String, reason: &'static str },
    /// A directory setting cannot be used.
    #[error("invalid dnsmasq directory {path:?}: {reason}")]
    InvalidDir { path: PathBuf, reason: &'static str },
    /// Not a usable network interface name.
    #[error("invalid interface name {0:?}: expected 1-15 characters from A-Z, a-z, 0-9, '-', '_', '.'")]
    InvalidInterface(String),
    /// The site network settings are inconsistent.
    #[error("invalid site network: {0}")]
    InvalidSite(String),
    /// A file system operation failed.
    #[error("cannot {op} {path:?}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DnsmasqError + 'a {
    move |source| DnsmasqError::Io { op, path: path.to_path_buf(), source }
}

// ---------------------------------------------------------------------------
// MAC addresses
// ---------------------------------------------------------------------------

/// An Ethernet (EUI-48) address. Parsed from and shown as six colon-separated
/// hex octets; shown in lower case, the form dnsmasq logs and Proxmox accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// The address with these octets.
    pub const fn new(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }

    /// The six octets.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// A stable, locally administered unicast MAC derived from `seed` (a
    /// container id): the first six bytes of a SHA-256 over the seed, with
    /// bit 0x02 of the first octet set (locally administered, so it cannot
    /// collide with a vendor's address) and bit 0x01 cleared (unicast). The
    /// same seed always gives the same MAC, so a container re-created after a
    /// crash keeps its reservation; 46 random bits make a collision between
    /// two containers of one site negligible, and [`DnsmasqFiles::apply`]
    /// rejects one anyway.
    pub fn local_from(seed: &[u8]) -> Self {
        let digest = Sha256::new().chain_update(MAC_DERIVATION_CONTEXT).chain_update(seed).finalize();
        let mut octets = [0u8; 6];
        octets.copy_from_slice(&digest[..6]);
        octets[0] = (octets[0] | 0x02) & !0x01;
        MacAddr(octets)
    }

    /// Whether this is a unicast address (bit 0x01 of the first octet clear).
    pub const fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0
    }

    /// Whether this is a locally administered address (bit 0x02 set).
    pub const fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

impl FromStr for MacAddr {
    type Err = DnsmasqError;

    /// Parses `aa:bb:cc:dd:ee:ff`, either case (Proxmox shows upper case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DnsmasqError::InvalidMac(s.chars().take(40).collect());
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(octets))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

// ---------------------------------------------------------------------------
// Reservations and names
// ---------------------------------------------------------------------------

/// One container's fixed lease and DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reservation {
    /// Our id of the container (a UUID): names its files, so only
    /// `[a-z0-9-]`, at most [`MAX_CONTAINER_ID_LEN`] characters.
    pub container_id: String,
    /// The MAC the container's `net0` is created with (`hwaddr`).
    pub mac: MacAddr,
    /// The address dnsmasq leases to that MAC.
    pub ip: Ipv4Addr,
    /// A single DNS label; the container answers as `hostname.DOMAIN`.
    pub hostname: String,
}

/// Checks a container id for use in a file name: 1 to
/// [`MAX_CONTAINER_ID_LEN`] characters from `[a-z0-9-]`.
///
/// # Errors
/// [`DnsmasqError::InvalidContainerId`] naming the rule it breaks.
pub fn validate_container_id(id: &str) -> Result<(), DnsmasqError> {
    let reason = if id.is_empty() {
        Some("it is empty")
    } else if id.len() > MAX_CONTAINER_ID_LEN {
        Some("it is longer than 64 characters")
    } else if !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        Some("only a-z, 0-9 and '-' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DnsmasqError::InvalidContainerId { id: id.chars().take(80).collect(), reason }),
        None => Ok(()),
    }
}

/// Whether `label` is a lower-case DNS label
/// (`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`).
pub fn is_dns_label(label: &str) -> bool {
    let b = label.as_bytes();
    let inner_ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    let end_ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(inner_ok)
        && b.first().is_some_and(end_ok)
        && b.last().is_some_and(end_ok)
}

/// Checks a DNS domain: dot-separated [DNS labels](is_dns_label), at most 253
/// characters, no trailing dot.
///
/// # Errors
/// [`DnsmasqError::InvalidDomain`] naming the rule it breaks.
pub fn validate_domain(domain: &str) -> Result<(), DnsmasqError> {
    let reason = if domain.is_empty() {
        Some("it is empty")
    } else if domain.len() > MAX_DNS_NAME_LEN {
        Some("it is longer than 253 characters")
    } else if !domain.split('.').all(is_dns_label) {
        Some("every dot-separated part must be a DNS label (a-z, 0-9, '-', no '-' at either end)")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DnsmasqError::InvalidDomain { domain: domain.chars().take(80).collect(), reason }),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// The site network (for the configuration snippet)
// ---------------------------------------------------------------------------

/// The container network of one site: the addresses on its bridge and the
/// domain its containers are named in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteNet {
    /// The subnet on the bridge; the host's own address on the bridge must
    /// lie in it, or dnsmasq serves no DHCP there.
    pub subnet: Ipv4Net,
    /// The router handed to containers (usually the host's bridge address).
    pub gateway: Ipv4Addr,
    /// First address Portcullis may reserve for a container.
    pub range_start: Ipv4Addr,
    /// Last address Portcullis may reserve for a container (inclusive).
    pub range_end: Ipv4Addr,
    /// The DNS domain containers are named in (`NAME.DOMAIN`); must equal
    /// the [`DnsmasqFiles`] domain the site's dnsmasq is rendered with.
    pub domain: String,
}

impl SiteNet {
    /// Checks that the settings make a working network: a valid domain, a
    /// subnet with room for hosts, gateway and range inside it (not its
    /// network or broadcast address), the gateway outside the range.
    ///
    /// # Errors
    /// [`DnsmasqError::InvalidDomain`], or [`DnsmasqError::InvalidSite`]
    /// naming the first problem.
    pub fn validate(&self) -> Result<(), DnsmasqError> {
        let bad = |msg: String| Err(DnsmasqError::InvalidSite(msg));
        validate_domain(&self.domain)?;
        let net = self.subnet.trunc();
        if net != self.subnet {
            return bad(format!("subnet {} has host bits set; did you mean {net}?", self.subnet));
        }
        if net.prefix_len() > 30 {
            return bad(format!("subnet {net} is too small: it needs room for a gateway and containers"));
        }
        let usable = |ip: Ipv4Addr| net.contains(&ip) && ip != net.network() && ip != net.broadcast();
        for (what, ip) in [("gateway", self.gateway), ("range start", self.range_start), ("range end", self.range_end)]
        {
            if !usable(ip) {
                return bad(format!("{what} {ip} is not a host address of subnet {net}"));
            }
        }
        if self.range_start > self.range_end {
            return bad(format!("range start {} is after range end {}", self.range_start, self.range_end));
        }
        if self.in_range(self.gateway) {
            return bad(format!(
                "gateway {} lies inside the container range {}-{}",
                self.gateway, self.range_start, self.range_end
            ));
        }
        Ok(())
    }

    /// Whether `ip` lies in the reservable range.
    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        (self.range_start..=self.range_end).contains(&ip)
    }

    /// Checks that a reservation's address lies in the reservable range. In
    /// static mode dnsmasq silently ignores a `dhcp-host` outside its
    /// subnet, so such a container would boot without an address.
    ///
    /// # Errors
    /// [`DnsmasqError::InvalidReservation`] when it does not.
    pub fn check(&self, r: &Reservation) -> Result<(), DnsmasqError> {
        if self.in_range(r.ip) {
            Ok(())
        } else {
            Err(DnsmasqError::InvalidReservation {
                container_id: r.container_id.clone(),
                reason: format!(
                    "address {} is outside the site's container range {}-{}",
                    r.ip, self.range_start, self.range_end
                ),
            })
        }
    }
}

// ---------------------------------------------------------------------------
// The two directories
// ---------------------------------------------------------------------------

/// What [`DnsmasqFiles::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Containers whose files were created or replaced (sorted).
    pub written: Vec<String>,
    /// Containers whose stale files were deleted (sorted).
    pub removed: Vec<String>,
    /// Wanted containers whose files were already right (not rewritten, so
    /// dnsmasq sees no inotify event for them).
    pub unchanged: usize,
    /// A `--dhcp-hostsdir` file was replaced or deleted: dnsmasq keeps the
    /// old `dhcp-host` until it gets SIGHUP, so the caller must send one.
    /// (New files and every `--hostsdir` change take effect without it.)
    pub dhcp_reload_needed: bool,
}

impl ApplyReport {
    /// Whether anything on disk changed.
    pub fn changed(&self) -> bool {
        !self.written.is_empty() || !self.removed.is_empty()
    }
}

/// A container's files that could not be read back as a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The part of the file name after `portcullis-`.
    pub container_id: String,
    /// What is wrong, for a log line.
    pub reason: String,
}

/// What [`DnsmasqFiles::observed`] found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Containers whose two files exist, parse, and agree (sorted by id).
    pub reservations: Vec<Reservation>,
    /// Containers with a missing, unreadable, foreign or contradictory file;
    /// the next [`DnsmasqFiles::apply`] rewrites or removes them.
    pub malformed: Vec<Malformed>,
}

/// The `--hostsdir` and `--dhcp-hostsdir` directories of one dnsmasq, and the
/// DNS domain its containers live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsmasqFiles {
    hosts_dir: PathBuf,
    dhcp_hosts_dir: PathBuf,
    domain: String,
    /// The bridge this dnsmasq serves, if known (see [`DnsmasqFiles::with_interface`]).
    interface: Option<String>,
}

/// One container's two rendered files.
struct Rendered {
    hosts: String,
    dhcp: String,
}

/// What [`write_if_changed`] did to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileOutcome {
    Unchanged,
    Created,
    Replaced,
}

impl DnsmasqFiles {
    /// Describes the two directories (absolute paths, different from each
    /// other, usable in a dnsmasq configuration line) and the domain.
    /// Nothing is created until [`apply`](Self::apply).
    ///
    /// # Errors
    /// [`DnsmasqError::InvalidDir`] or [`DnsmasqError::InvalidDomain`].
    pub fn new(
        hosts_dir: impl Into<PathBuf>,
        dhcp_hosts_dir: impl Into<PathBuf>,
        domain: &str,
    ) -> Result<Self, DnsmasqError> {
        let hosts_dir = hosts_dir.into();
        let dhcp_hosts_dir = dhcp_hosts_dir.into();
        for dir in [&hosts_dir, &dhcp_hosts_dir] {
            check_dir_setting(dir)?;
        }
        // Both files of a container have the same name: one directory for
        // both would make them overwrite each other.
        let same = hosts_dir.components().eq(dhcp_hosts_dir.components())
            || matches!((fs::canonicalize(&hosts_dir), fs::canonicalize(&dhcp_hosts_dir)), (Ok(a), Ok(b)) if a == b);
        if same {
            return Err(DnsmasqError::InvalidDir {
                path: dhcp_hosts_dir,
                reason: "hostsdir and dhcp-hostsdir must be different directories",
            });
        }
        validate_domain(domain)?;
        Ok(DnsmasqFiles { hosts_dir, dhcp_hosts_dir, domain: domain.to_string(), interface: None })
    }

    /// Names the host's container bridge (e.g. `vmbr1`), so that
    /// [`config_snippet`](Self::config_snippet) makes dnsmasq serve that
    /// bridge (and loopback) only, never the host's public interfaces.
    ///
    /// # Errors
    /// [`DnsmasqError::InvalidInterface`] for a name that is not a Linux
    /// interface name (1-15 characters from `A-Za-z0-9-_.`).
    pub fn with_interface(mut self, interface: &str) -> Result<Self, DnsmasqError> {
        let ok = !interface.is_empty()
            && interface.len() <= 15
            && interface.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(DnsmasqError::InvalidInterface(interface.chars().take(40).collect()));
        }
        self.interface = Some(interface.to_string());
        Ok(self)
    }

    /// The bridge set with [`with_interface`](Self::with_interface).
    pub fn interface(&self) -> Option<&str> {
        self.interface.as_deref()
    }

    /// The `--hostsdir` directory (DNS names).
    pub fn hosts_dir(&self) -> &Path {
        &self.hosts_dir
    }

    /// The `--dhcp-hostsdir` directory (DHCP reservations).
    pub fn dhcp_hosts_dir(&self) -> &Path {
        &self.dhcp_hosts_dir
    }

    /// The DNS domain containers are named in.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Converges both directories on `wanted`: writes each container's two
    /// files where their content differs (atomically: a dot-named temporary
    /// file dnsmasq ignores, then a rename), leaves identical files alone,
    /// and deletes `portcullis-*` files of containers not wanted. Other
    /// files are never touched. Creates missing directories.
    ///
    /// Everything is validated before anything is written: an invalid or
    /// duplicate reservation fails the whole call with nothing changed.
    /// Running it twice with the same input changes nothing the second time.
    ///
    /// # Errors
    /// A validation error (see [`DnsmasqError`]), or [`DnsmasqError::Io`]
    /// when a directory or file cannot be read or written; files handled
    /// before the failure stay in their new state (the next call finishes).
    pub fn apply(&self, wanted: &[Reservation]) -> Result<ApplyReport, DnsmasqError> {
        let rendered = self.render_all(wanted)?;
        let mut report = ApplyReport::default();

        for dir in [&self.hosts_dir, &self.dhcp_hosts_dir] {
            create_dir(dir)?;
            remove_own_temp_files(dir)?;
        }

        // Stale first: a name or address that moves from a removed container
        // to a new one is then never served twice, even for a moment.
        let on_disk_hosts = list_own_files(&self.hosts_dir)?;
        let on_disk_dhcp = list_own_files(&self.dhcp_hosts_dir)?;
        let mut removed = BTreeSet::new();
        for (id, path) in &on_disk_dhcp {
            if !rendered.contains_key(id) {
                remove_file(path)?;
                report.dhcp_reload_needed = true;
                removed.insert(id.clone());
            }
        }
        for (id, path) in &on_disk_hosts {
            if !rendered.contains_key(id) {
                remove_file(path)?;
                removed.insert(id.clone());
            }
        }

        // DHCP before DNS: the name never points at an address dnsmasq would
        // not yet lease to that container.
        for (id, files) in &rendered {
            let name = format!("{FILE_PREFIX}{id}");
            let dhcp = write_if_changed(&self.dhcp_hosts_dir, &name, &files.dhcp)?;
            let hosts = write_if_changed(&self.hosts_dir, &name, &files.hosts)?;
            if dhcp == FileOutcome::Replaced {
                report.dhcp_reload_needed = true;
            }
            if dhcp == FileOutcome::Unchanged && hosts == FileOutcome::Unchanged {
                report.unchanged += 1;
            } else {
                report.written.push(id.clone());
            }
        }
        report.removed = removed.into_iter().collect();

        if report.changed() {
            // Make the renames and deletions durable before reporting them.
            for dir in [&self.hosts_dir, &self.dhcp_hosts_dir] {
                sync_dir(dir)?;
            }
        }
        Ok(report)
    }

    /// Reads the `portcullis-*` files of both directories back into
    /// reservations, for drift detection. A container whose files are
    /// missing, unreadable, too big, unparsable, or disagree with each other
    /// is listed in [`Observed::malformed`] instead; that never fails the
    /// call. Missing directories read as empty.
    ///
    /// # Errors
    /// [`DnsmasqError::Io`] when a directory exists but cannot be listed.
    pub fn observed(&self) -> Result<Observed, DnsmasqError> {
        let hosts = list_own_files(&self.hosts_dir)?;
        let dhcp = list_own_files(&self.dhcp_hosts_dir)?;
        let ids: BTreeSet<&String> = hosts.keys().chain(dhcp.keys()).collect();
        let mut observed = Observed::default();
        for id in ids {
            match self.observe_one(id, hosts.get(id), dhcp.get(id)) {
                Ok(r) => observed.reservations.push(r),
                Err(reason) => observed.malformed.push(Malformed { container_id: id.clone(), reason }),
            }
        }
        Ok(observed)
    }

    fn observe_one(&self, id: &str, hosts: Option<&PathBuf>, dhcp: Option<&PathBuf>) -> Result<Reservation, String> {
        validate_container_id(id).map_err(|e| e.to_string())?;
        let dhcp = dhcp.ok_or("no --dhcp-hostsdir file")?;
        let hosts = hosts.ok_or("no --hostsdir file")?;
        let dhcp_text = read_small_file(dhcp).map_err(|e| format!("{}: {e}", dhcp.display()))?;
        let hosts_text = read_small_file(hosts).map_err(|e| format!("{}: {e}", hosts.display()))?;
        let (mac, ip, hostname) = parse_dhcp_file(&dhcp_text).map_err(|e| format!("{}: {e}", dhcp.display()))?;
        let (hosts_ip, hosts_name) =
            parse_hosts_file(&hosts_text, &self.domain).map_err(|e| format!("{}: {e}", hosts.display()))?;
        if hosts_ip != ip || hosts_name != hostname {
            return Err(format!(
                "the DHCP file reserves {ip} as {hostname} but the hosts file names {hosts_ip} {hosts_name}"
            ));
        }
        Ok(Reservation { container_id: id.to_string(), mac, ip, hostname })
    }

    /// Renders the lines an admin adds to dnsmasq's configuration (e.g. as
    /// `/etc/dnsmasq.d/portcullis.conf`) so that it serves this site's
    /// containers from the two directories.
    ///
    /// `dhcp-range` uses dnsmasq's `static` mode: dnsmasq hands out no pool
    /// at all, so only a MAC with a reservation file gets a lease. A stray
    /// or foreign container on the bridge gets no address (and so no route
    /// and no name), and an address can never be leased dynamically to one
    /// machine while Portcullis reserves it for another. `dhcp-authoritative`
    /// is set because dnsmasq is the only DHCP server on the container
    /// bridge: a container asking to renew after a dnsmasq restart (or lost
    /// lease file) is answered at once instead of waiting out a timeout.
    ///
    /// The names are written fully qualified, so `expand-hosts` is not
    /// needed; `local=/DOMAIN/` keeps queries for unknown names in the
    /// domain from being forwarded upstream. `domain=` carries the subnet so
    /// it applies to the containers' range only.
    ///
    /// With an [interface](Self::with_interface), dnsmasq serves that bridge
    /// and loopback only (`bind-dynamic` copes with a bridge that comes up
    /// after dnsmasq and with other resolvers on the host). Without one the
    /// snippet falls back to `local-service` (DNS only for directly
    /// connected subnets) and says to add `interface=`; DHCP is served only
    /// where the host has an address in the site's subnet either way.
    ///
    /// # Errors
    /// [`DnsmasqError::InvalidSite`] (or `InvalidDomain`) when `site` does
    /// not [validate](SiteNet::validate) or its domain is not this one.
    pub fn config_snippet(&self, site: &SiteNet) -> Result<String, DnsmasqError> {
        site.validate()?;
        if site.domain != self.domain {
            return Err(DnsmasqError::InvalidSite(format!(
                "the site's domain {} differs from the domain {} the reservation files are written for",
                site.domain, self.domain
            )));
        }
        let net = site.subnet;
        let domain = &self.domain;
        let listen = match &self.interface {
            Some(ifname) => format!(
                "# Serve the container bridge (and loopback) only. bind-dynamic copes with\n\
                 # a bridge that comes up after dnsmasq and with other resolvers on the host.\n\
                 interface={ifname}\n\
                 bind-dynamic\n"
            ),
            None => "# Add interface=BRIDGE (the containers' bridge) to serve it alone; until then\n\
                     # answer DNS only for directly connected subnets.\n\
                     local-service\n\
                     bind-dynamic\n"
                .to_string(),
        };
        Ok(format!(
            "# dnsmasq settings for the containers that Portcullis provisions (generated).\n\
             # Restart dnsmasq after changing this file: SIGHUP does not re-read it.\n\
             # Portcullis keeps one file per container in the two directories below;\n\
             # dnsmasq picks new ones up through inotify, and Portcullis sends SIGHUP\n\
             # when a reservation changes or goes away.\n\
             \n\
             {listen}\
             \n\
             # DNS: containers are NAME.{domain}; names in it are never forwarded.\n\
             domain={domain},{net}\n\
             local=/{domain}/\n\
             \n\
             # DHCP: static mode, so only reserved MACs get a lease.\n\
             dhcp-range=set:{tag},{network},static,{netmask},{lease}\n\
             dhcp-option=tag:{tag},option:router,{gateway}\n\
             dhcp-authoritative\n\
             \n\
             hostsdir={hosts_dir}\n\
             dhcp-hostsdir={dhcp_dir}\n",
            tag = DHCP_TAG,
            network = net.network(),
            netmask = net.netmask(),
            lease = LEASE_TIME,
            gateway = site.gateway,
            // check_dir_setting made both paths UTF-8 without separators.
            hosts_dir = self.hosts_dir.display(),
            dhcp_dir = self.dhcp_hosts_dir.display(),
        ))
    }

    /// Validates `wanted` and renders every container's files, keyed by id.
    fn render_all(&self, wanted: &[Reservation]) -> Result<BTreeMap<String, Rendered>, DnsmasqError> {
        let mut ids: HashSet<&str> = HashSet::new();
        let mut ips: HashMap<Ipv4Addr, &str> = HashMap::new();
        let mut macs: HashMap<MacAddr, &str> = HashMap::new();
        let mut names: HashMap<&str, &str> = HashMap::new();
        let duplicate = |what: &'static str, value: String, first: &str, second: &str| DnsmasqError::Duplicate {
            what,
            value,
            first: first.to_string(),
            second: second.to_string(),
        };
        let mut out = BTreeMap::new();
        for r in wanted {
            self.validate_reservation(r)?;
            let id = r.container_id.as_str();
            if !ids.insert(id) {
                return Err(duplicate("container id", id.to_string(), id, id));
            }
            if let Some(first) = ips.insert(r.ip, id) {
                return Err(duplicate("IP address", r.ip.to_string(), first, id));
            }
            if let Some(first) = macs.insert(r.mac, id) {
                return Err(duplicate("MAC address", r.mac.to_string(), first, id));
            }
            if let Some(first) = names.insert(r.hostname.as_str(), id) {
                return Err(duplicate("hostname", r.hostname.clone(), first, id));
            }
            out.insert(r.container_id.clone(), self.render(r));
        }
        Ok(out)
    }

    fn validate_reservation(&self, r: &Reservation) -> Result<(), DnsmasqError> {
        validate_container_id(&r.container_id)?;
        let invalid =
            |reason: String| Err(DnsmasqError::InvalidReservation { container_id: r.container_id.clone(), reason });
        if !is_dns_label(&r.hostname) {
            return invalid(format!(
                "hostname {:?} is not a DNS label (1-63 characters from a-z, 0-9 and '-', no '-' at either end)",
                r.hostname.chars().take(80).collect::<String>()
            ));
        }
        if r.hostname.len() + 1 + self.domain.len() > MAX_DNS_NAME_LEN {
            return invalid(format!("{}.{} is longer than 253 characters", r.hostname, self.domain));
        }
        if !r.mac.is_unicast() || r.mac.octets() == [0; 6] {
            return invalid(format!("MAC address {} is not a unicast address", r.mac));
        }
        let ip = r.ip;
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
            return invalid(format!("address {ip} cannot be leased to a host"));
        }
        Ok(())
    }

    fn render(&self, r: &Reservation) -> Rendered {
        let header = format!("# Managed by Portcullis (container {}): changes here are overwritten.\n", r.container_id);
        Rendered {
            // `id:*`: match on the MAC alone, ignoring any DHCP client-id, so
            // a re-created container (new DUID, same MAC) keeps its address.
            dhcp: format!("{header}{},id:*,{},{}\n", r.mac, r.ip, r.hostname),
            hosts: format!("{header}{} {}.{} {}\n", r.ip, r.hostname, self.domain, r.hostname),
        }
    }
}

/// Parses the one reservation line of a `--dhcp-hostsdir` file written by
/// [`DnsmasqFiles::apply`]: `MAC[,id:*],IP,HOSTNAME`.
fn parse_dhcp_file(text: &str) -> Result<(MacAddr, Ipv4Addr, String), String> {
    let line = single_entry_line(text)?;
    let mut fields: Vec<&str> = line.split(',').map(str::trim).collect();
    if fields.get(1) == Some(&"id:*") {
        fields.remove(1);
    }
    let [mac, ip, hostname] = fields.as_slice() else {
        return Err(format!("expected MAC,id:*,IP,HOSTNAME, found {line:?}"));
    };
    let mac: MacAddr = mac.parse().map_err(|e: DnsmasqError| e.to_string())?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| format!("invalid IPv4 address {ip:?}"))?;
    if !is_dns_label(hostname) {
        return Err(format!("hostname {hostname:?} is not a DNS label"));
    }
    Ok((mac, ip, hostname.to_string()))
}

/// Parses the one line of a `--hostsdir` file written by
/// [`DnsmasqFiles::apply`]: `IP HOSTNAME.DOMAIN HOSTNAME`.
fn parse_hosts_file(text: &str, domain: &str) -> Result<(Ipv4Addr, String), String> {
    let line = single_entry_line(text)?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [ip, fqdn, hostname] = fields.as_slice() else {
        return Err(format!("expected IP NAME.{domain} NAME, found {line:?}"));
    };
    let ip: Ipv4Addr = ip.parse().map_err(|_| format!("invalid IPv4 address {ip:?}"))?;
    if !is_dns_label(hostname) {
        return Err(format!("hostname {hostname:?} is not a DNS label"));
    }
    if fqdn.strip_suffix(domain).and_then(|n| n.strip_suffix('.')) != Some(hostname) {
        return Err(format!("{fqdn:?} is not {hostname}.{domain}"));
    }
    Ok((ip, hostname.to_string()))
}

/// The only line of `text` that is neither blank nor a `#` comment.
fn single_entry_line(text: &str) -> Result<&str, String> {
    let mut entries = text.lines().map(|l| l.split('#').next().unwrap_or_default().trim()).filter(|l| !l.is_empty());
    match (entries.next(), entries.next()) {
        (Some(line), None) => Ok(line),
        (None, _) => Err("no entry".to_string()),
        (Some(_), Some(_)) => Err("more than one entry".to_string()),
    }
}

// ---------------------------------------------------------------------------
// File system helpers
// ---------------------------------------------------------------------------

/// A directory setting must be absolute (dnsmasq runs from `/`, and our
/// writes must not depend on the working directory) and printable in a
/// dnsmasq configuration line.
fn check_dir_setting(dir: &Path) -> Result<(), DnsmasqError> {
    let bad = |reason| Err(DnsmasqError::InvalidDir { path: dir.to_path_buf(), reason });
    let Some(text) = dir.to_str() else { return bad("it is not valid UTF-8") };
    if !dir.is_absolute() {
        return bad("it must be an absolute path");
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '#' | ',' | '"' | '\'' | '\\')) {
        return bad("it must not contain whitespace, control characters, '#', ',', quotes or '\\'");
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), DnsmasqError> {
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))
}

/// Our `portcullis-*` entries of `dir` (regular files and symlinks, never
/// directories), keyed by the name after the prefix. A missing directory
/// lists as empty.
fn list_own_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>, DnsmasqError> {
    let mut out = BTreeMap::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("list directory", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("list directory", dir))?;
        let file_name = entry.file_name();
        let Some(id) = file_name.to_str().and_then(|n| n.strip_prefix(FILE_PREFIX)) else { continue };
        let file_type = entry.file_type().map_err(io_err("inspect", &entry.path()))?;
        if file_type.is_file() || file_type.is_symlink() {
            out.insert(id.to_string(), entry.path());
        }
    }
    Ok(out)
}

/// Deletes temporary files a crashed earlier run left behind (only ours).
fn remove_own_temp_files(dir: &Path) -> Result<(), DnsmasqError> {
    let entries = fs::read_dir(dir).map_err(io_err("list directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("list directory", dir))?;
        let name = entry.file_name();
        let ours = name.to_str().is_some_and(|n| n.starts_with(TEMP_PREFIX) && n.ends_with(TEMP_SUFFIX));
        let file_type = entry.file_type().map_err(io_err("inspect", &entry.path()))?;
        if ours && !file_type.is_dir() {
            remove_file(&entry.path())?;
        }
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<(), DnsmasqError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// Reads a regular file of at most [`MAX_FILE_BYTES`] as UTF-8, without
/// following a symlink.
fn read_small_file(path: &Path) -> Result<String, String> {
    let meta = fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    let file =
        fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text).map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    Ok(text)
}

/// Writes `dir/name` with `content` unless it already holds exactly that.
fn write_if_changed(dir: &Path, name: &str, content: &str) -> Result<FileOutcome, DnsmasqError> {
    let path = dir.join(name);
    let outcome = match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => FileOutcome::Created,
        Err(e) => return Err(io_err("inspect", &path)(e)),
        Ok(_) => match read_small_file(&path) {
            Ok(existing) if existing == content => return Ok(FileOutcome::Unchanged),
            // Different, foreign, a symlink, unreadable: replace it.
            _ => FileOutcome::Replaced,
        },
    };
    write_atomic(dir, name, content)?;
    Ok(outcome)
}

/// Writes `content` to a dot-named temporary file in `dir` (dnsmasq ignores
/// dot files), flushes it to disk, then renames it over `dir/name`, so
/// dnsmasq's `IN_MOVED_TO` sees only complete files. Mode 0644: dnsmasq
/// reads the files after dropping root privileges.
fn write_atomic(dir: &Path, name: &str, content: &str) -> Result<(), DnsmasqError> {
    let path = dir.join(name);
    let temp = dir.join(format!(".{name}{TEMP_SUFFIX}"));
    let result = (|| {
        // create_new refuses an existing file or symlink at the temp path.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&temp)
            .map_err(io_err("create", &temp))?;
        // The umask may have taken bits away; dnsmasq must be able to read.
        file.set_permissions(fs::Permissions::from_mode(0o644)).map_err(io_err("set permissions on", &temp))?;
        file.write_all(content.as_bytes()).map_err(io_err("write", &temp))?;
        file.sync_all().map_err(io_err("flush", &temp))?;
        fs::rename(&temp, &path).map_err(io_err("rename into place", &path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<(), DnsmasqError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("flush directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID_A: &str = "0b5e2f4c-8d1a-4c7e-9f00-1a2b3c4d5e6f";
    const ID_B: &str = "7f3d9a10-2b4c-4e5f-8a6b-7c8d9e0f1a2b";

    fn res(id: &str, last: u8, name: &str) -> Reservation {
        Reservation {
            container_id: id.to_string(),
            mac: MacAddr::local_from(id.as_bytes()),
            ip: Ipv4Addr::new(10, 20, 0, last),
            hostname: name.to_string(),
        }
    }

    fn files() -> (tempfile::TempDir, DnsmasqFiles) {
        let dir = tempfile::tempdir().unwrap();
        let f = DnsmasqFiles::new(dir.path().join("hosts"), dir.path().join("dhcp-hosts"), "cluster.internal").unwrap();
        (dir, f)
    }

    fn site() -> SiteNet {
        SiteNet {
            domain: "cluster.internal".to_string(),
            subnet: "10.20.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 20, 0, 1),
            range_start: Ipv4Addr::new(10, 20, 0, 10),
            range_end: Ipv4Addr::new(10, 20, 0, 250),
        }
    }

    fn read(path: PathBuf) -> String {
        fs::read_to_string(path).unwrap()
    }

    #[test]
    fn mac_parse_and_display_round_trip() {
        let mac: MacAddr = "BC:24:11:0a:FF:01".parse().unwrap();
        assert_eq!(mac.octets(), [0xbc, 0x24, 0x11, 0x0a, 0xff, 0x01]);
        assert_eq!(mac.to_string(), "bc:24:11:0a:ff:01");
        assert_eq!(mac.to_string().parse::<MacAddr>().unwrap(), mac);
        for bad in [
            "",
            "bc:24:11:0a:ff",
            "bc:24:11:0a:ff:01:02",
            "bc-24-11-0a-ff-01",
            "b:24:11:0a:ff:01",
            "+c:24:11:0a:ff:01",
            "gg:24:11:0a:ff:01",
            "bc:24:11:0a:ff:01 ",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn derived_macs_are_stable_local_unicast_and_distinct() {
        let a = MacAddr::local_from(ID_A.as_bytes());
        assert_eq!(a, MacAddr::local_from(ID_A.as_bytes()), "same seed, same MAC");
        assert_ne!(a, MacAddr::local_from(ID_B.as_bytes()));
        let mut seen = BTreeSet::new();
        for i in 0..2000u32 {
            let mac = MacAddr::local_from(format!("container-{i}").as_bytes());
            assert!(mac.is_unicast() && mac.is_locally_administered(), "{mac}");
            assert_eq!(mac.octets()[0] & 0x03, 0x02, "{mac}");
            seen.insert(mac);
        }
        assert_eq!(seen.len(), 2000, "no collisions among 2000 derived MACs");
    }

    #[test]
    fn derived_mac_is_pinned() {
        // The derivation is part of the on-disk state (Proxmox hwaddr and
        // dnsmasq reservations): changing it would move every container.
        let digest = Sha256::new().chain_update(MAC_DERIVATION_CONTEXT).chain_update(ID_A.as_bytes()).finalize();
        let mac = MacAddr::local_from(ID_A.as_bytes()).octets();
        assert_eq!(mac[1..], digest[1..6]);
        assert_eq!(mac[0], (digest[0] | 0x02) & !0x01);
    }

    #[test]
    fn labels_domains_and_container_ids() {
        for ok in ["a", "web1", "a-b", "0", &"x".repeat(63)] {
            assert!(is_dns_label(ok), "{ok:?}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "ä", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
        assert!(validate_domain("cluster.internal").is_ok());
        for bad in ["", "cluster.internal.", ".internal", "a..b", "Cluster.internal", "a b"] {
            assert!(validate_domain(bad).is_err(), "{bad:?}");
        }
        assert!(validate_container_id(ID_A).is_ok());
        for bad in ["", "A", "a/b", "../x", "a.b", "a b", &"a".repeat(65)] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn new_rejects_bad_directories() {
        assert!(DnsmasqFiles::new("relative/hosts", "/abs/dhcp", "d.internal").is_err());
        assert!(DnsmasqFiles::new("/abs/x", "/abs/x", "d.internal").is_err());
        assert!(DnsmasqFiles::new("/abs/x", "/abs/x/", "d.internal").is_err());
        assert!(DnsmasqFiles::new("/abs/with space", "/abs/y", "d.internal").is_err());
        assert!(DnsmasqFiles::new("/abs/x,y", "/abs/y", "d.internal").is_err());
        assert!(DnsmasqFiles::new("/abs/x", "/abs/y", "bad domain").is_err());
        assert!(DnsmasqFiles::new("/abs/x", "/abs/y", "d.internal").is_ok());
    }

    #[test]
    fn renders_dnsmasq_formats() {
        let (_dir, f) = files();
        let r = Reservation {
            container_id: ID_A.to_string(),
            mac: "02:11:22:33:44:55".parse().unwrap(),
            ip: Ipv4Addr::new(10, 20, 0, 5),
            hostname: "web1".to_string(),
        };
        let out = f.render(&r);
        let header = format!("# Managed by Portcullis (container {ID_A}): changes here are overwritten.\n");
        assert_eq!(out.dhcp, format!("{header}02:11:22:33:44:55,id:*,10.20.0.5,web1\n"));
        assert_eq!(out.hosts, format!("{header}10.20.0.5 web1.cluster.internal web1\n"));
        assert_eq!(parse_dhcp_file(&out.dhcp).unwrap(), (r.mac, r.ip, "web1".to_string()));
        assert_eq!(parse_hosts_file(&out.hosts, "cluster.internal").unwrap(), (r.ip, "web1".to_string()));
    }

    #[test]
    fn parsers_reject_what_we_do_not_write() {
        assert!(parse_dhcp_file("").is_err());
        assert!(parse_dhcp_file("# only a comment\n").is_err());
        assert!(parse_dhcp_file("dhcp-host=02:11:22:33:44:55,10.0.0.1,a\n").is_err());
        assert!(parse_dhcp_file("02:11:22:33:44:55,10.0.0.1\n").is_err());
        assert!(parse_dhcp_file("02:11:22:33:44:55,10.0.0.1,a\n02:11:22:33:44:56,10.0.0.2,b\n").is_err());
        assert!(parse_dhcp_file("02:11:22:33:44:55,10.0.0.300,a\n").is_err());
        assert!(parse_dhcp_file("02:11:22:33:44:55,10.0.0.1,A_b\n").is_err());
        // Without id:* (hand-written) it still reads.
        assert!(parse_dhcp_file("02:11:22:33:44:55,10.0.0.1,a # note\n").is_ok());
        assert!(parse_hosts_file("10.0.0.1 a.other.domain a\n", "cluster.internal").is_err());
        assert!(parse_hosts_file("10.0.0.1 a.cluster.internal b\n", "cluster.internal").is_err());
        assert!(parse_hosts_file("10.0.0.1 acluster.internal a\n", "cluster.internal").is_err());
        assert!(parse_hosts_file("10.0.0.1 a.cluster.internal\n", "cluster.internal").is_err());
        assert!(parse_hosts_file("\n  10.0.0.1\ta.cluster.internal a  \n", "cluster.internal").is_ok());
    }

    #[test]
    fn apply_writes_then_leaves_unchanged_files_alone() {
        let (_dir, f) = files();
        let wanted = [res(ID_A, 5, "web1"), res(ID_B, 6, "db")];
        let report = f.apply(&wanted).unwrap();
        let mut ids = vec![ID_A.to_string(), ID_B.to_string()];
        ids.sort();
        assert_eq!(report, ApplyReport { written: ids, removed: vec![], unchanged: 0, dhcp_reload_needed: false });
        let hosts = f.hosts_dir().join(format!("portcullis-{ID_A}"));
        assert!(read(hosts.clone()).ends_with("10.20.0.5 web1.cluster.internal web1\n"));
        let mode = fs::metadata(&hosts).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);

        let mtime = fs::metadata(&hosts).unwrap().modified().unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&hosts).unwrap());
        let again = f.apply(&wanted).unwrap();
        assert_eq!(again, ApplyReport { unchanged: 2, ..ApplyReport::default() });
        assert!(!again.changed());
        let meta = fs::metadata(&hosts).unwrap();
        assert_eq!((meta.modified().unwrap(), std::os::unix::fs::MetadataExt::ino(&meta)), (mtime, inode));

        let obs = f.observed().unwrap();
        assert!(obs.malformed.is_empty(), "{:?}", obs.malformed);
        let mut expected = wanted.to_vec();
        expected.sort_by(|a, b| a.container_id.cmp(&b.container_id));
        assert_eq!(obs.reservations, expected);
    }

    #[test]
    fn apply_changes_and_removes_and_asks_for_dhcp_reload() {
        let (_dir, f) = files();
        f.apply(&[res(ID_A, 5, "web1"), res(ID_B, 6, "db")]).unwrap();

        // Only the name changes: DNS follows by itself, but the dhcp-host
        // line carries the name too, so dnsmasq needs SIGHUP.
        let report = f.apply(&[res(ID_A, 5, "web2"), res(ID_B, 6, "db")]).unwrap();
        assert_eq!(report.written, vec![ID_A.to_string()]);
        assert_eq!(report.unchanged, 1);
        assert!(report.dhcp_reload_needed);

        // A new container alone needs no reload.
        let id_c = "c0ffee00-0000-4000-8000-000000000001";
        let report = f.apply(&[res(ID_A, 5, "web2"), res(ID_B, 6, "db"), res(id_c, 7, "cache")]).unwrap();
        assert_eq!((report.written.clone(), report.dhcp_reload_needed), (vec![id_c.to_string()], false));

        let report = f.apply(&[res(ID_B, 6, "db")]).unwrap();
        let mut gone = vec![ID_A.to_string(), id_c.to_string()];
        gone.sort();
        assert_eq!(report.removed, gone);
        assert!(report.dhcp_reload_needed);
        assert!(!f.hosts_dir().join(format!("portcullis-{ID_A}")).exists());
        assert!(!f.dhcp_hosts_dir().join(format!("portcullis-{ID_A}")).exists());
        assert_eq!(f.observed().unwrap().reservations, vec![res(ID_B, 6, "db")]);

        let report = f.apply(&[]).unwrap();
        assert_eq!(report.removed, vec![ID_B.to_string()]);
        assert_eq!(fs::read_dir(f.hosts_dir()).unwrap().count(), 0);
    }

    #[test]
    fn apply_touches_only_its_own_files() {
        let (_dir, f) = files();
        fs::create_dir_all(f.hosts_dir()).unwrap();
        fs::create_dir_all(f.dhcp_hosts_dir()).unwrap();
        let foreign = f.hosts_dir().join("admin-static");
        fs::write(&foreign, "10.20.0.2 printer\n").unwrap();
        let stale_temp = f.hosts_dir().join(format!(".portcullis-{ID_A}.tmp"));
        fs::write(&stale_temp, "half a file").unwrap();
        let stale = f.dhcp_hosts_dir().join("portcullis-gone");
        fs::write(&stale, "02:00:00:00:00:09,10.20.0.9,gone\n").unwrap();
        let nested = f.dhcp_hosts_dir().join("portcullis-dir");
        fs::create_dir(&nested).unwrap();

        let report = f.apply(&[res(ID_A, 5, "web1")]).unwrap();
        assert_eq!(report.removed, vec!["gone".to_string()]);
        assert!(report.dhcp_reload_needed);
        assert_eq!(read(foreign), "10.20.0.2 printer\n");
        assert!(!stale_temp.exists() && !stale.exists());
        assert!(nested.is_dir(), "directories are never removed");
    }

    #[test]
    fn apply_replaces_a_symlink_instead_of_writing_through_it() {
        let (dir, f) = files();
        f.apply(&[]).unwrap();
        let target = dir.path().join("elsewhere");
        fs::write(&target, "precious\n").unwrap();
        let link = f.hosts_dir().join(format!("portcullis-{ID_A}"));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let report = f.apply(&[res(ID_A, 5, "web1")]).unwrap();
        assert_eq!(report.written, vec![ID_A.to_string()]);
        assert_eq!(read(target), "precious\n");
        assert!(!fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    }

    #[test]
    fn invalid_or_duplicate_reservations_write_nothing() {
        let (_dir, f) = files();
        let dup_ip = [res(ID_A, 5, "web1"), res(ID_B, 5, "db")];
        let err = f.apply(&dup_ip).unwrap_err().to_string();
        assert!(err.contains("duplicate IP address 10.20.0.5") && err.contains(ID_A) && err.contains(ID_B), "{err}");

        let mut dup_mac = [res(ID_A, 5, "web1"), res(ID_B, 6, "db")];
        dup_mac[1].mac = dup_mac[0].mac;
        let err = f.apply(&dup_mac).unwrap_err().to_string();
        assert!(err.contains("duplicate MAC address") && err.contains(ID_A) && err.contains(ID_B), "{err}");

        let dup_name = [res(ID_A, 5, "web1"), res(ID_B, 6, "web1")];
        let err = f.apply(&dup_name).unwrap_err().to_string();
        assert!(err.contains("duplicate hostname web1") && err.contains(ID_A) && err.contains(ID_B), "{err}");

        let dup_id = [res(ID_A, 5, "web1"), res(ID_A, 6, "db")];
        assert!(f.apply(&dup_id).unwrap_err().to_string().contains("duplicate container id"));

        for (bad, needle) in [
            (res("Bad_ID", 5, "web1"), "invalid container id"),
            (res("../etc", 5, "web1"), "invalid container id"),
            (res(ID_A, 5, "Web1"), "not a DNS label"),
            (res(ID_A, 5, "a.b"), "not a DNS label"),
            (res(ID_A, 5, "-a"), "not a DNS label"),
            (Reservation { ip: Ipv4Addr::UNSPECIFIED, ..res(ID_A, 5, "web1") }, "cannot be leased"),
            (Reservation { mac: "03:00:00:00:00:01".parse().unwrap(), ..res(ID_A, 5, "web1") }, "not a unicast"),
            (Reservation { mac: MacAddr::new([0; 6]), ..res(ID_A, 5, "web1") }, "not a unicast"),
        ] {
            let mut wanted = vec![res(ID_B, 6, "db")];
            wanted.push(bad);
            let err = f.apply(&wanted).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
        // Subnet broadcast addresses depend on the site; SiteNet::check keeps
        // reservations inside the site's range.
        assert!(f.apply(&[Reservation { ip: Ipv4Addr::BROADCAST, ..res(ID_A, 5, "web1") }]).is_err());
        assert!(!f.hosts_dir().exists() && !f.dhcp_hosts_dir().exists(), "nothing was written");
    }

    #[test]
    fn observed_reports_malformed_files_without_failing() {
        let (_dir, f) = files();
        assert_eq!(f.observed().unwrap(), Observed::default(), "missing directories read as empty");
        f.apply(&[res(ID_A, 5, "web1"), res(ID_B, 6, "db")]).unwrap();
        let id_c = "c0ffee00-0000-4000-8000-000000000001";
        // Only one of the two files.
        fs::write(f.hosts_dir().join(format!("portcullis-{id_c}")), "10.20.0.7 c.cluster.internal c\n").unwrap();
        // The two files disagree.
        fs::write(f.hosts_dir().join(format!("portcullis-{ID_B}")), "10.20.0.99 db.cluster.internal db\n").unwrap();
        // Garbage and a bad name.
        fs::write(f.dhcp_hosts_dir().join("portcullis-junk"), "what is this").unwrap();
        fs::write(f.dhcp_hosts_dir().join("portcullis-BAD"), "x").unwrap();
        fs::write(f.dhcp_hosts_dir().join("portcullis-big"), "#".repeat(10_000)).unwrap();
        fs::write(f.hosts_dir().join("portcullis-big"), "10.20.0.8 big.cluster.internal big\n").unwrap();
        let obs = f.observed().unwrap();
        assert_eq!(obs.reservations, vec![res(ID_A, 5, "web1")]);
        let bad: Vec<&str> = obs.malformed.iter().map(|m| m.container_id.as_str()).collect();
        let mut expected = vec![ID_B, "BAD", "big", id_c, "junk"];
        expected.sort();
        assert_eq!(bad, expected, "{:?}", obs.malformed);
        let reason = |id: &str| obs.malformed.iter().find(|m| m.container_id == id).unwrap().reason.clone();
        assert!(reason(ID_B).contains("10.20.0.99"), "{}", reason(ID_B));
        assert!(reason(id_c).contains("no --dhcp-hostsdir file"));
        assert!(reason("big").contains("larger than"));
    }

    #[test]
    fn config_snippet_renders_static_dhcp_for_the_site() {
        let f = DnsmasqFiles::new(
            "/var/lib/portcullis/dnsmasq/hosts",
            "/var/lib/portcullis/dnsmasq/dhcp-hosts",
            "cluster.internal",
        )
        .unwrap();
        let settings = |text: &str| -> Vec<String> {
            text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect()
        };
        let common = [
            "domain=cluster.internal,10.20.0.0/24",
            "local=/cluster.internal/",
            "dhcp-range=set:portcullis,10.20.0.0,static,255.255.255.0,1h",
            "dhcp-option=tag:portcullis,option:router,10.20.0.1",
            "dhcp-authoritative",
            "hostsdir=/var/lib/portcullis/dnsmasq/hosts",
            "dhcp-hostsdir=/var/lib/portcullis/dnsmasq/dhcp-hosts",
        ];
        let without = settings(&f.config_snippet(&site()).unwrap());
        assert_eq!(without[..2], ["local-service", "bind-dynamic"]);
        assert_eq!(without[2..], common);

        let f = f.with_interface("vmbr1").unwrap();
        let with = settings(&f.config_snippet(&site()).unwrap());
        assert_eq!(with[..2], ["interface=vmbr1", "bind-dynamic"]);
        assert_eq!(with[2..], common);

        let other_domain = SiteNet { domain: "other.internal".to_string(), ..site() };
        assert!(f.config_snippet(&other_domain).unwrap_err().to_string().contains("differs"));
    }

    #[test]
    fn interface_names() {
        let (_dir, f) = files();
        for ok in ["vmbr1", "br-lan", "eth0.100", "a", "abcdefghijklmno"] {
            assert_eq!(f.clone().with_interface(ok).unwrap().interface(), Some(ok));
        }
        for bad in ["", "abcdefghijklmnop", "vmbr1\ninterface=eth0", "a b", "a,b", "a/b", "a#b"] {
            assert!(f.clone().with_interface(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn site_validation() {
        assert!(site().validate().is_ok());
        let bad = [
            SiteNet { domain: String::new(), ..site() },
            SiteNet { domain: "cluster.internal\ndhcp-range=0.0.0.0".to_string(), ..site() },
            SiteNet { subnet: "10.20.0.1/24".parse().unwrap(), ..site() },
            SiteNet { subnet: "10.20.0.0/31".parse().unwrap(), ..site() },
            SiteNet { gateway: Ipv4Addr::new(10, 21, 0, 1), ..site() },
            SiteNet { gateway: Ipv4Addr::new(10, 20, 0, 0), ..site() },
            SiteNet { gateway: Ipv4Addr::new(10, 20, 0, 20), ..site() },
            SiteNet { range_end: Ipv4Addr::new(10, 20, 0, 255), ..site() },
            SiteNet { range_start: Ipv4Addr::new(10, 20, 0, 200), range_end: Ipv4Addr::new(10, 20, 0, 100), ..site() },
        ];
        for s in bad {
            assert!(s.validate().is_err(), "{s:?} validated");
            let (_dir, f) = files();
            assert!(f.config_snippet(&s).is_err());
        }
        assert!(site().check(&res(ID_A, 10, "a")).is_ok());
        assert!(site().check(&res(ID_A, 250, "a")).is_ok());
        assert!(site().check(&res(ID_A, 9, "a")).unwrap_err().to_string().contains("outside"));
    }
}
