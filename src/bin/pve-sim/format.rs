//! PVE's value formats as the simulator checks and renders them: DNS names,
//! tag lists, disk sizes, and the `net[n]`, `rootfs` and `features`
//! property strings. Pure functions; errors are PVE-style texts that go
//! after "invalid format - ".

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// PVE's `dns-name` format.
pub(crate) fn check_dns_name(s: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
    };
    if s.len() <= 255 && s.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("value does not look like a valid DNS name".into())
    }
}

/// PVE's node-name format.
pub(crate) fn check_node_name(s: &str) -> Result<(), String> {
    if !s.contains('.') && check_dns_name(s).is_ok() {
        Ok(())
    } else {
        Err("value does not look like a valid node name".into())
    }
}

/// A tag list (`;`, `,` or white space separated), normalised as PVE does:
/// lower-cased, de-duplicated, sorted, joined with `;`.
pub(crate) fn normalise_tags(list: &str) -> Result<String, String> {
    let mut tags = std::collections::BTreeSet::new();
    for t in list.split(|c: char| c == ';' || c == ',' || c.is_whitespace()).filter(|t| !t.is_empty()) {
        let t = t.to_ascii_lowercase();
        let mut b = t.bytes();
        let ok = b.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
            && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'+' | b'.'));
        if !ok {
            return Err(format!("invalid tag '{t}'"));
        }
        tags.insert(t);
    }
    Ok(tags.into_iter().collect::<Vec<_>>().join(";"))
}

/// A size with an optional unit (`K`, `M`, `G`, `T`; none means
/// `default_unit`), e.g. `8`, `1.5G`, `512M`; `None` on garbage or overflow.
pub(crate) fn parse_size(text: &str, default_unit: u64) -> Option<u64> {
    let (num, unit) = match text.char_indices().find(|(_, c)| !(c.is_ascii_digit() || *c == '.')) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let mult: u64 = match unit {
        "" => default_unit,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1 || num.len() > 30 {
        return None;
    }
    match num.split_once('.') {
        Some((whole, frac)) => {
            let scale = 10u64.checked_pow(u32::try_from(frac.len()).ok()?)?;
            let w = whole.parse::<u64>().ok()?.checked_mul(mult)?;
            let f = u128::from(frac.parse::<u64>().ok()?) * u128::from(mult) / u128::from(scale);
            w.checked_add(u64::try_from(f).ok()?)
        }
        None => num.parse::<u64>().ok()?.checked_mul(mult),
    }
}

/// Renders a size the way PVE writes `size=` (largest exact unit).
pub(crate) fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, 'T'), (30, 'G'), (20, 'M'), (10, 'K')] {
        let m = 1u64 << shift;
        if bytes >= m && bytes % m == 0 {
            return format!("{}{unit}", bytes / m);
        }
    }
    bytes.to_string()
}

/// Splits a property string into its items; the first item may be the
/// default key's value without `key=`.
fn property_items<'a>(s: &'a str, default_key: Option<&'a str>) -> Result<Vec<(&'a str, &'a str)>, String> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for (i, item) in s.split(',').enumerate() {
        if item.is_empty() {
            continue;
        }
        let (k, v) = match (item.split_once('='), default_key) {
            (Some(kv), _) => kv,
            (None, Some(d)) if i == 0 => (d, item),
            (None, _) => return Err(format!("format error: missing key in '{item}'")),
        };
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(format!("format error: duplicate key in comma-separated list property: {k}"));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn check_bool(key: &str, v: &str) -> Result<(), String> {
    if v == "0" || v == "1" { Ok(()) } else { Err(format!("{key}: type check ('boolean') failed - got '{v}'")) }
}

fn check_int(key: &str, v: &str, min: i64, max: i64) -> Result<(), String> {
    match v.parse::<i64>() {
        Ok(n) if n < min => Err(format!("{key}: value must have a minimum value of {min}")),
        Ok(n) if n > max => Err(format!("{key}: value must have a maximum value of {max}")),
        Ok(_) => Ok(()),
        Err(_) => Err(format!("{key}: type check ('integer') failed - got '{v}'")),
    }
}

/// Whether `v` is `a.b.c.d/len`.
fn is_cidr4(v: &str) -> bool {
    v.split_once('/').is_some_and(|(a, l)| a.parse::<Ipv4Addr>().is_ok() && l.parse::<u8>().is_ok_and(|l| l <= 32))
}

fn is_cidr6(v: &str) -> bool {
    v.split_once('/').is_some_and(|(a, l)| a.parse::<Ipv6Addr>().is_ok() && l.parse::<u8>().is_ok_and(|l| l <= 128))
}

/// A unicast MAC address `XX:XX:XX:XX:XX:XX`.
pub(crate) fn parse_mac(v: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = v.split(':');
    for byte in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// A `net[n]` value, checked and rendered in PVE's key order; `hwaddr` is
/// filled with `default_mac` and `type` with `veth` when absent.
pub(crate) fn normalise_net(s: &str, default_mac: &str) -> Result<String, String> {
    const ORDER: [&str; 14] = [
        "name",
        "bridge",
        "firewall",
        "gw",
        "gw6",
        "hwaddr",
        "ip",
        "ip6",
        "link_down",
        "mtu",
        "rate",
        "tag",
        "trunks",
        "type",
    ];
    let items = property_items(s, Some("name"))?;
    let mut map: BTreeMap<&str, String> = BTreeMap::new();
    for (k, v) in items {
        match k {
            "name" => {
                if v.is_empty() || v.len() > 15 || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    return Err(format!("name: invalid interface name '{v}'"));
                }
            }
            "bridge" => {
                if v.is_empty() || v.len() > 15 || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    return Err(format!("bridge: invalid bridge name '{v}'"));
                }
            }
            "firewall" | "link_down" => check_bool(k, v)?,
            "gw" => {
                if v.parse::<Ipv4Addr>().is_err() {
                    return Err(format!("gw: value does not look like a valid IPv4 address '{v}'"));
                }
            }
            "gw6" => {
                if v.parse::<Ipv6Addr>().is_err() {
                    return Err(format!("gw6: value does not look like a valid IPv6 address '{v}'"));
                }
            }
            "hwaddr" => match parse_mac(v) {
                Some(mac) if mac[0] & 1 == 0 => {}
                Some(_) => return Err("hwaddr: MAC address must not be a multicast address".into()),
                None => return Err(format!("hwaddr: value does not look like a valid MAC address '{v}'")),
            },
            "ip" => {
                if !(v == "dhcp" || v == "manual" || is_cidr4(v)) {
                    return Err(format!(
                        "ip: invalid format - value does not look like a valid IPv4 network configuration '{v}'"
                    ));
                }
            }
            "ip6" => {
                if !(v == "dhcp" || v == "auto" || v == "manual" || is_cidr6(v)) {
                    return Err(format!(
                        "ip6: invalid format - value does not look like a valid IPv6 network configuration '{v}'"
                    ));
                }
            }
            "mtu" => check_int(k, v, 64, 65535)?,
            "tag" => check_int(k, v, 1, 4094)?,
            "rate" => {
                if v.parse::<f64>().map_or(true, |r| !(0.0..=1e9).contains(&r)) {
                    return Err(format!("rate: type check ('number') failed - got '{v}'"));
                }
            }
            "trunks" => {
                if !v.split(';').all(|t| t.parse::<u16>().is_ok_and(|t| (1..=4094).contains(&t))) {
                    return Err(format!("trunks: invalid VLAN list '{v}'"));
                }
            }
            "type" => {
                if v != "veth" {
                    return Err(format!("type: value '{v}' does not have a value in the enumeration 'veth'"));
                }
            }
            other => {
                return Err(format!(
                    "{other}: property is not defined in schema and the schema does not allow additional properties"
                ));
            }
        }
        map.insert(k, v.to_string());
    }
    if !map.contains_key("name") {
        return Err("name: property is missing and it is not optional".into());
    }
    if map.contains_key("gw") && !map.get("ip").is_some_and(|ip| is_cidr4(ip)) {
        return Err("gw: a gateway needs a static IPv4 address".into());
    }
    map.entry("hwaddr").or_insert_with(|| default_mac.to_string());
    map.entry("type").or_insert_with(|| "veth".to_string());
    Ok(ORDER.iter().filter_map(|k| map.get(k).map(|v| format!("{k}={v}"))).collect::<Vec<_>>().join(","))
}

/// A `rootfs` for create, `[volume=]STORAGE:SIZE_GiB[,opts]`: the storage,
/// the size in bytes and the options rendered back.
pub(crate) fn parse_rootfs_create(s: &str) -> Result<(String, u64, Vec<String>), String> {
    let items = property_items(s, Some("volume"))?;
    let mut storage_size = None;
    let mut opts = Vec::new();
    for (k, v) in items {
        match k {
            "volume" => {
                let Some((storage, size)) = v.split_once(':') else {
                    return Err(format!("volume: invalid volume '{v}'"));
                };
                if storage.is_empty() || !storage.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                    return Err(format!("volume: invalid storage id '{storage}'"));
                }
                // Only allocation ("STORAGE:SIZE") is simulated, not existing volumes.
                let bytes = parse_size(size, 1 << 30)
                    .filter(|b| *b > 0 && size.bytes().all(|c| c.is_ascii_digit() || c == b'.'))
                    .ok_or_else(|| {
                        format!(
                            "volume: unable to parse volume size '{size}' (the simulator only allocates new volumes)"
                        )
                    })?;
                storage_size = Some((storage.to_string(), bytes));
            }
            "acl" | "quota" | "replicate" | "ro" | "shared" | "backup" => {
                check_bool(k, v)?;
                opts.push(format!("{k}={v}"));
            }
            "mountoptions" => {
                let ok = ["noatime", "nodev", "nosuid", "noexec", "discard", "lazytime"];
                if !v.split(';').all(|o| ok.contains(&o)) {
                    return Err(format!("mountoptions: invalid mount options '{v}'"));
                }
                opts.push(format!("{k}={v}"));
            }
            "size" => {
                parse_size(v, 1).ok_or_else(|| format!("size: invalid size '{v}'"))?;
            }
            other => {
                return Err(format!(
                    "{other}: property is not defined in schema and the schema does not allow additional properties"
                ));
            }
        }
    }
    let (storage, size) =
        storage_size.ok_or_else(|| "volume: property is missing and it is not optional".to_string())?;
    Ok((storage, size, opts))
}

/// A `features` value, checked and rendered with sorted keys.
pub(crate) fn normalise_features(s: &str) -> Result<String, String> {
    let mut map = BTreeMap::new();
    for (k, v) in property_items(s, None)? {
        match k {
            "fuse" | "keyctl" | "mknod" | "nesting" | "force_rw_sys" => check_bool(k, v)?,
            "mount" => {
                if !v.split(';').all(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_alphanumeric())) {
                    return Err(format!("mount: invalid file system list '{v}'"));
                }
            }
            other => {
                return Err(format!(
                    "{other}: property is not defined in schema and the schema does not allow additional properties"
                ));
            }
        }
        map.insert(k, v);
    }
    Ok(map.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
}

/// The IPv6 link-local address a kernel derives from `mac` (EUI-64).
pub(crate) fn link_local(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    let a = a ^ 0x02;
    format!(
        "fe80::{:x}:{:x}:{:x}:{:x}/64",
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, 0xff]),
        u16::from_be_bytes([0xfe, d]),
        u16::from_be_bytes([e, f])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(normalise_tags("B;a,b c").unwrap(), "a;b;c");
        assert!(normalise_tags("-x").is_err());
        assert_eq!(parse_size("+2G".trim_start_matches('+'), 1), Some(2 << 30));
        assert_eq!(parse_size("0.5", 1 << 30), Some(1 << 29));
        assert_eq!(parse_size("99999999999999999999999", 1), None);
        assert_eq!(format_size(8 << 30), "8G");
        assert_eq!(format_size((8 << 30) + (512 << 20)), "8704M");
        assert_eq!(
            normalise_net("name=eth0,ip=dhcp,bridge=vmbr0", "BC:24:11:00:00:01").unwrap(),
            "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip=dhcp,type=veth"
        );
        assert!(normalise_net("bridge=vmbr0", "x").is_err());
        assert!(normalise_net("name=eth0,hwaddr=01:00:00:00:00:01", "x").is_err());
        assert!(normalise_net("name=eth0,bogus=1", "x").is_err());
        assert_eq!(parse_rootfs_create("local-lvm:8").unwrap(), ("local-lvm".into(), 8 << 30, vec![]));
        assert!(parse_rootfs_create("local-lvm:vm-100-disk-0").is_err());
        assert_eq!(normalise_features("nesting=1,keyctl=1").unwrap(), "keyctl=1,nesting=1");
        assert!(normalise_features("nesting=true").is_err());
        assert_eq!(link_local([0xbc, 0x24, 0x11, 0, 0, 1]), "fe80::be24:11ff:fe00:1/64");
    }
}
