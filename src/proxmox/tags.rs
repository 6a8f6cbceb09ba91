//! Container tags as Proxmox VE stores them, and the scheme Portcullis uses
//! to keep its own identifiers in tags. Pure data: no I/O.

use std::collections::BTreeSet;
use std::fmt;

/// Tag prefix that carries the Portcullis id of the desired container.
pub const ID_TAG_PREFIX: &str = "portcullis-id";
/// Tag prefix that carries the owner (user or group) of a container.
pub const OWNER_TAG_PREFIX: &str = "owner";

/// A set of tags, normalised as PVE does: lower-cased, de-duplicated and
/// sorted; rendered joined with `;`.
///
/// PVE allows only tags matching `[a-z0-9_][a-z0-9_+.-]*` (after
/// lower-casing), so arbitrary values are stored with [`Tags::encode_value`]:
///
/// * the bytes `a`–`z`, `0`–`9`, `-` and `.` of the value's UTF-8 encoding
///   are kept as they are;
/// * every other byte (upper-case letters, `_`, `+`, `@`, non-ASCII, …)
///   becomes `_` followed by its two lower-case hex digits (`A` → `_41`,
///   `_` → `_5f`, `é` → `_c3_a9`).
///
/// The encoding is injective and survives PVE's lower-casing, so a value
/// read back with [`Tags::value`] is exactly the value written. A keyed tag
/// is `{prefix}-{encoded value}`, e.g. `portcullis-id-0190f3c2-7e1d-…` or
/// `owner-_41lice` for the owner `Alice`. An empty value gives `{prefix}-`.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Tags(BTreeSet<String>);

/// A tag that PVE would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Proxmox tag {0:?}: tags match [a-z0-9_][a-z0-9_+.-]*")]
pub struct InvalidTag(pub String);

impl Tags {
    /// No tags.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a tag list as PVE accepts it (separated by `;`, `,` or white
    /// space) and normalises it. Empty items are skipped.
    ///
    /// # Errors
    /// An item is not a valid tag.
    pub fn parse(list: &str) -> Result<Self, InvalidTag> {
        let mut tags = Self::new();
        for item in list.split(|c: char| c == ';' || c == ',' || c.is_whitespace()) {
            if !item.is_empty() {
                tags.insert(item)?;
            }
        }
        Ok(tags)
    }

    /// Adds one tag (lower-cased).
    ///
    /// # Errors
    /// `tag` is not a valid tag.
    pub fn insert(&mut self, tag: &str) -> Result<(), InvalidTag> {
        let tag = tag.to_ascii_lowercase();
        if !valid_tag(&tag) {
            return Err(InvalidTag(tag));
        }
        self.0.insert(tag);
        Ok(())
    }

    /// Removes one tag (compared lower-cased); whether it was present.
    pub fn remove(&mut self, tag: &str) -> bool {
        self.0.remove(&tag.to_ascii_lowercase())
    }

    /// Whether the tag is present (compared lower-cased).
    pub fn contains(&self, tag: &str) -> bool {
        self.0.contains(&tag.to_ascii_lowercase())
    }

    /// The tags in PVE's order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// Number of tags.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no tags.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The list as PVE renders it: sorted, joined with `;`.
    pub fn encode(&self) -> String {
        self.iter().collect::<Vec<_>>().join(";")
    }

    /// Sets the keyed tag `{prefix}-{encoded value}`, replacing any other
    /// tag with that key (see the type's doc for the encoding).
    ///
    /// # Errors
    /// `prefix` itself is not valid in a tag (prefixes are constants such as
    /// [`ID_TAG_PREFIX`]).
    pub fn set_value(&mut self, prefix: &str, value: &str) -> Result<(), InvalidTag> {
        let key = format!("{}-", prefix.to_ascii_lowercase());
        self.0.retain(|t| !t.starts_with(&key));
        self.insert(&format!("{key}{}", Self::encode_value(value)))
    }

    /// The decoded value of the first keyed tag `{prefix}-…` whose encoding
    /// is valid, if any.
    pub fn value(&self, prefix: &str) -> Option<String> {
        self.values(prefix).into_iter().next()
    }

    /// The decoded values of every keyed tag `{prefix}-…` (several owners,
    /// or duplicates someone added by hand), in tag order; tags whose
    /// encoding is invalid are skipped.
    pub fn values(&self, prefix: &str) -> Vec<String> {
        let key = format!("{}-", prefix.to_ascii_lowercase());
        self.iter().filter_map(|t| t.strip_prefix(&key)).filter_map(Self::decode_value).collect()
    }

    /// Encodes any string into tag characters (see the type's doc).
    pub fn encode_value(value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        for b in value.bytes() {
            if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("_{b:02x}"));
            }
        }
        out
    }

    /// Reverses [`Tags::encode_value`]; `None` for text it cannot have made.
    pub fn decode_value(encoded: &str) -> Option<String> {
        let bytes = encoded.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if b == b'_' {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(|h| h.is_ascii_digit() || (b'a'..=b'f').contains(h)) {
                    return None;
                }
                let byte = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                // A byte that would have been kept literally was not made by us.
                if byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-' || byte == b'.' {
                    return None;
                }
                out.push(byte);
                i += 3;
            } else if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' {
                out.push(b);
                i += 1;
            } else {
                return None;
            }
        }
        String::from_utf8(out).ok()
    }
}

/// PVE's tag pattern, applied to an already lower-cased tag.
fn valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    first_ok && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'+' | b'.' | b'-'))
}

impl fmt::Display for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tags({})", self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_pve() {
        let t = Tags::parse("Zeta;alpha, beta  ALPHA;;").unwrap();
        assert_eq!(t.encode(), "alpha;beta;zeta");
        assert!(Tags::parse("ok;-bad").is_err());
        assert!(Tags::parse("a/b").is_err());
        assert_eq!(Tags::parse("").unwrap().encode(), "");
    }

    #[test]
    fn keyed_values_round_trip_through_lower_casing() {
        let mut t = Tags::parse("web").unwrap();
        for value in ["Alice", "a_b+c@d", "0190f3c2-7e1d-7000-8000-000000000001", "été", ""] {
            t.set_value(OWNER_TAG_PREFIX, value).unwrap();
            // What PVE sends back is lower-cased and re-sorted.
            let back = Tags::parse(&t.encode().to_uppercase()).unwrap();
            assert_eq!(back.value(OWNER_TAG_PREFIX).as_deref(), Some(value), "{value:?}");
            assert_eq!(back.len(), 2);
        }
        assert_eq!(Tags::encode_value("Alice"), "_41lice");
        assert_eq!(Tags::decode_value("_41"), Some("A".into()));
        // Not ours: a literal byte escaped, bad hex, truncated escape.
        assert_eq!(Tags::decode_value("_61"), None);
        assert_eq!(Tags::decode_value("_zz"), None);
        assert_eq!(Tags::decode_value("ab_4"), None);
        assert_eq!(Tags::decode_value("a+b"), None);
    }

    #[test]
    fn set_value_replaces_the_key_only() {
        let mut t = Tags::new();
        t.set_value(ID_TAG_PREFIX, "one").unwrap();
        t.set_value(OWNER_TAG_PREFIX, "bob").unwrap();
        t.set_value(ID_TAG_PREFIX, "two").unwrap();
        assert_eq!(t.encode(), "owner-bob;portcullis-id-two");
        assert_eq!(t.values(ID_TAG_PREFIX), vec!["two".to_string()]);
    }
}
