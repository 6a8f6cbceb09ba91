//! Distinguished names per RFC 4514: parsing (escapes, hex pairs, quoted
//! values, multi-valued RDNs) and the normalised form used for every DN
//! comparison (distinguishedNameMatch): attribute types lower-cased, values
//! of case-insensitive attributes lower-cased with insignificant spaces
//! removed, RDN components sorted.

use std::fmt;

/// Longest DN accepted anywhere.
pub const MAX_DN_LEN: usize = 4096;

/// One `type=value` pair of an RDN, already unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ava {
    pub attr: String,
    pub value: String,
}

/// A parsed DN: RDNs from the leaf (first) to the root (last).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dn {
    pub rdns: Vec<Vec<Ava>>,
}

/// Why a DN could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid DN: {0}")]
pub struct DnError(pub &'static str);

impl Dn {
    /// Parses an RFC 4514 string. The empty string is the root DN.
    ///
    /// # Errors
    /// Malformed syntax or a DN longer than [`MAX_DN_LEN`].
    pub fn parse(input: &str) -> Result<Self, DnError> {
        if input.len() > MAX_DN_LEN {
            return Err(DnError("too long"));
        }
        if input.trim().is_empty() {
            return Ok(Dn::default());
        }
        let mut rdns = Vec::new();
        let mut rdn = Vec::new();
        let bytes = input.as_bytes();
        let mut i = 0;
        loop {
            // attribute type
            while i < bytes.len() && bytes[i] == b' ' {
                i += 1;
            }
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'-' || bytes[i] == b'.') {
                i += 1;
            }
            let attr = input[start..i].to_ascii_lowercase();
            if attr.is_empty() {
                return Err(DnError("missing attribute type"));
            }
            while i < bytes.len() && bytes[i] == b' ' {
                i += 1;
            }
            if i >= bytes.len() || bytes[i] != b'=' {
                return Err(DnError("missing '='"));
            }
            i += 1;
            while i < bytes.len() && bytes[i] == b' ' {
                i += 1;
            }
            // attribute value
            let mut value: Vec<u8> = Vec::new();
            let mut trailing_unescaped_spaces = 0usize;
            if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' && i + 1 < bytes.len() {
                        i += 1;
                    }
                    value.push(bytes[i]);
                    i += 1;
                }
                if i >= bytes.len() {
                    return Err(DnError("unterminated quoted value"));
                }
                i += 1;
                while i < bytes.len() && bytes[i] == b' ' {
                    i += 1;
                }
            } else if i < bytes.len() && bytes[i] == b'#' {
                // BER-encoded value: keep its textual form.
                while i < bytes.len() && !matches!(bytes[i], b',' | b'+' | b';') {
                    value.push(bytes[i]);
                    i += 1;
                }
            } else {
                while i < bytes.len() && !matches!(bytes[i], b',' | b'+' | b';') {
                    match bytes[i] {
                        b'\\' => {
                            let next = *bytes.get(i + 1).ok_or(DnError("dangling escape"))?;
                            if next.is_ascii_hexdigit() {
                                let hex = input.get(i + 1..i + 3).ok_or(DnError("bad hex escape"))?;
                                let byte = u8::from_str_radix(hex, 16).map_err(|_| DnError("bad hex escape"))?;
                                value.push(byte);
                                i += 3;
                            } else if b"\"+,;<>\\ #=".contains(&next) {
                                value.push(next);
                                i += 2;
                            } else {
                                return Err(DnError("bad escape"));
                            }
                            trailing_unescaped_spaces = 0;
                        }
                        b'"' => return Err(DnError("unescaped quote")),
                        c => {
                            value.push(c);
                            trailing_unescaped_spaces = if c == b' ' { trailing_unescaped_spaces + 1 } else { 0 };
                            i += 1;
                        }
                    }
                }
                value.truncate(value.len() - trailing_unescaped_spaces);
            }
            let value = String::from_utf8(value).map_err(|_| DnError("value is not UTF-8"))?;
            rdn.push(Ava { attr, value });
            if i >= bytes.len() {
                rdns.push(std::mem::take(&mut rdn));
                break;
            }
            match bytes[i] {
                b'+' => {}
                _ => rdns.push(std::mem::take(&mut rdn)),
            }
            i += 1;
            if i >= bytes.len() {
                return Err(DnError("trailing separator"));
            }
        }
        Ok(Dn { rdns })
    }

    /// The normalised string form; equal DNs have equal normal forms.
    pub fn normalized(&self) -> String {
        let mut out = String::new();
        for (n, rdn) in self.rdns.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            let mut avas: Vec<String> = rdn
                .iter()
                .map(|a| format!("{}={}", canonical_attr(&a.attr), escape_value(&normalize_value(&a.attr, &a.value))))
                .collect();
            avas.sort();
            out.push_str(&avas.join("+"));
        }
        out
    }

    /// Whether `self` equals `base` or lies below it.
    pub fn is_under(&self, base: &Dn) -> bool {
        self.rdns.len() >= base.rdns.len() && self.suffix_norm(base.rdns.len()) == base.normalized()
    }

    fn suffix_norm(&self, n: usize) -> String {
        Dn { rdns: self.rdns[self.rdns.len() - n..].to_vec() }.normalized()
    }

    /// The DN one level up; the root's parent is the root.
    pub fn parent(&self) -> Dn {
        Dn { rdns: self.rdns.iter().skip(1).cloned().collect() }
    }

    /// The leaf RDN's single value for `attr`, if the leaf has one.
    pub fn leaf_value(&self, attr: &str) -> Option<&str> {
        let rdn = self.rdns.first()?;
        match rdn.as_slice() {
            [ava] if canonical_attr(&ava.attr) == canonical_attr(attr) => Some(ava.value.as_str()),
            _ => None,
        }
    }
}

impl fmt::Display for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, rdn) in self.rdns.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            for (m, ava) in rdn.iter().enumerate() {
                if m > 0 {
                    f.write_str("+")?;
                }
                write!(f, "{}={}", ava.attr, escape_value(&ava.value))?;
            }
        }
        Ok(())
    }
}

/// Maps attribute names and the common OIDs used in DNs to one lower-case name.
fn canonical_attr(attr: &str) -> String {
    let lower = attr.to_ascii_lowercase();
    match lower.as_str() {
        "2.5.4.3" => "cn".into(),
        "0.9.2342.19200300.100.1.1" | "userid" => "uid".into(),
        "2.5.4.11" => "ou".into(),
        "2.5.4.10" => "o".into(),
        "0.9.2342.19200300.100.1.25" | "domaincomponent" => "dc".into(),
        "2.5.4.6" => "c".into(),
        "commonname" => "cn".into(),
        _ => lower,
    }
}

/// Normalises a value for comparison: every naming attribute we use is
/// case-insensitive, so lower-case and collapse inner runs of spaces.
fn normalize_value(_attr: &str, value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut space = false;
    for c in value.trim_matches(' ').chars() {
        if c == ' ' {
            space = true;
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// Escapes a value for the string form of a DN (RFC 4514 §2.4).
pub fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// Normalises a DN string; `None` when it does not parse.
pub fn normalize(dn: &str) -> Option<String> {
    Dn::parse(dn).ok().map(|d| d.normalized())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_ignores_case_and_spacing() {
        let a = normalize("uid=carol,ou=people,dc=example,dc=org").unwrap();
        let b = normalize("UID=Carol, OU=People,DC=Example,DC=ORG").unwrap();
        let c = normalize("uid = carol ,ou=people , dc=example,dc=org").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a, "uid=carol,ou=people,dc=example,dc=org");
    }

    #[test]
    fn escapes_and_hex() {
        let d = Dn::parse(r"cn=Smith\, John,dc=x").unwrap();
        assert_eq!(d.rdns[0][0].value, "Smith, John");
        let h = Dn::parse(r"cn=\4a\6fhn,dc=x").unwrap();
        assert_eq!(h.rdns[0][0].value, "John");
        let q = Dn::parse(r#"cn="a,b",dc=x"#).unwrap();
        assert_eq!(q.rdns[0][0].value, "a,b");
        assert_eq!(normalize(r"cn=Smith\, John,dc=x").unwrap(), r"cn=smith\, john,dc=x");
        let sp = Dn::parse(r"cn=x\ ,dc=y").unwrap();
        assert_eq!(sp.rdns[0][0].value, "x ");
    }

    #[test]
    fn multivalued_rdns_sort() {
        assert_eq!(normalize("cn=a+uid=b,dc=x"), normalize("UID=B+CN=A,dc=x"));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["uid", "=x", "uid=a,", "uid=a,,dc=x", r"cn=a\", r"cn=\zz", "cn=\"open"] {
            assert!(Dn::parse(bad).is_err(), "{bad}");
        }
        assert!(Dn::parse(&"a".repeat(5000)).is_err());
        assert_eq!(Dn::parse("").unwrap(), Dn::default());
    }

    #[test]
    fn hierarchy() {
        let base = Dn::parse("dc=example,dc=org").unwrap();
        let user = Dn::parse("uid=a,ou=People,DC=example,dc=org").unwrap();
        assert!(user.is_under(&base));
        assert!(base.is_under(&base));
        assert!(!base.is_under(&user));
        assert_eq!(user.parent().normalized(), "ou=people,dc=example,dc=org");
        assert_eq!(user.leaf_value("UID"), Some("a"));
    }
}
