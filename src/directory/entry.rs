//! Directory entries: users, groups and the tree's containers rendered once
//! per snapshot as LDAP-shaped attribute lists, ready to filter and send.
//!
//! Memory matters (10,000 users must fit in a few MB): an entry keeps all its
//! attribute values in one string buffer, with small spans pointing into it,
//! instead of one heap allocation per value.

use std::sync::Arc;

use super::schema;

/// What an entry represents; access control and bind lookups use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// The naming context itself (or the root DSE).
    Base,
    /// `ou=people` / `ou=groups` / `ou=sudoers`.
    Container,
    /// A user; carries the login name.
    User(Box<str>),
    /// A group.
    Group,
    /// A container's sudoRole (under `ou=sudoers`).
    SudoRule,
}

/// Where one attribute's values sit in the entry's buffer.
#[derive(Debug, Clone, Copy)]
struct AttrSpan {
    /// Index into [`NAMES`].
    name: u8,
    operational: bool,
    /// First value's index in `Entry::spans`.
    first: u32,
    count: u32,
}

/// Every attribute name an entry can carry: the schema's, then the root DSE's.
const ROOT_DSE_NAMES: &[&str] = &[
    "namingContexts",
    "supportedControl",
    "supportedExtension",
    "supportedFeatures",
    "supportedLDAPVersion",
    "vendorName",
    "vendorVersion",
];

fn name_index(name: &str) -> u8 {
    let pos = schema::NAMES.iter().chain(ROOT_DSE_NAMES).position(|n| *n == name);
    u8::try_from(pos.unwrap_or(0)).unwrap_or(0)
}

fn name_at(index: u8) -> &'static str {
    schema::NAMES.iter().chain(ROOT_DSE_NAMES).nth(usize::from(index)).copied().unwrap_or("")
}

/// An entry of the directory tree.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The DN as it is shown to clients.
    pub dn: Box<str>,
    /// The normalised DN, for comparisons.
    pub ndn: Box<str>,
    /// The normalised DN of the parent entry (shared between siblings).
    pub parent_ndn: Arc<str>,
    pub kind: EntryKind,
    text: Box<str>,
    attrs: Box<[AttrSpan]>,
    spans: Box<[(u32, u32)]>,
}

/// One attribute of an entry, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct AttrRef<'a> {
    /// Canonical name.
    pub name: &'static str,
    /// Operational attributes are returned only for `+` or by name.
    pub operational: bool,
    entry: &'a Entry,
    span: AttrSpan,
}

impl<'a> AttrRef<'a> {
    /// The attribute's values in order.
    pub fn values(&self) -> impl Iterator<Item = &'a str> + Clone + use<'a> {
        let entry = self.entry;
        let from = self.span.first as usize;
        let to = from + self.span.count as usize;
        entry.spans[from..to].iter().map(move |&(a, b)| entry.text.get(a as usize..b as usize).unwrap_or(""))
    }
}

impl Entry {
    /// The attribute with this canonical name, user or operational.
    pub fn get(&self, canonical: &str) -> Option<AttrRef<'_>> {
        self.attributes().find(|a| a.name == canonical)
    }

    /// Every attribute, user attributes first.
    pub fn attributes(&self) -> impl Iterator<Item = AttrRef<'_>> {
        self.attrs.iter().map(move |span| AttrRef {
            name: name_at(span.name),
            operational: span.operational,
            entry: self,
            span: *span,
        })
    }

    /// The values of an attribute by any spelling; empty when absent.
    pub fn values(&self, name: &str) -> Vec<&str> {
        schema::canonical(name).and_then(|c| self.get(c)).map(|a| a.values().collect()).unwrap_or_default()
    }
}

/// Collects an entry's attributes; empty values are skipped.
#[derive(Debug, Default)]
pub struct EntryBuilder {
    text: String,
    attrs: Vec<AttrSpan>,
    spans: Vec<(u32, u32)>,
}

impl EntryBuilder {
    /// Adds a user attribute with one value.
    pub fn one(self, name: &'static str, value: &str) -> Self {
        self.many(name, [value])
    }

    /// Adds a user attribute with several values.
    pub fn many<S: AsRef<str>>(self, name: &'static str, values: impl IntoIterator<Item = S>) -> Self {
        self.push(name, false, values)
    }

    /// Adds an operational attribute.
    pub fn operational<S: AsRef<str>>(self, name: &'static str, values: impl IntoIterator<Item = S>) -> Self {
        self.push(name, true, values)
    }

    fn push<S: AsRef<str>>(
        mut self,
        name: &'static str,
        operational: bool,
        values: impl IntoIterator<Item = S>,
    ) -> Self {
        let first = self.spans.len();
        for v in values {
            let v = v.as_ref();
            if v.is_empty() {
                continue;
            }
            let start = self.text.len();
            self.text.push_str(v);
            self.spans.push((offset(start), offset(self.text.len())));
        }
        let count = self.spans.len() - first;
        if count > 0 {
            self.attrs.push(AttrSpan {
                name: name_index(name),
                operational,
                first: offset(first),
                count: offset(count),
            });
        }
        self
    }

    /// Finishes the entry.
    pub fn build(self, dn: Box<str>, ndn: Box<str>, parent_ndn: Arc<str>, kind: EntryKind) -> Entry {
        Entry {
            dn,
            ndn,
            parent_ndn,
            kind,
            text: self.text.into_boxed_str(),
            attrs: self.attrs.into_boxed_slice(),
            spans: self.spans.into_boxed_slice(),
        }
    }
}

fn offset(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_round_trips_values() {
        let e = EntryBuilder::default()
            .many("objectClass", ["top", "posixGroup"])
            .one("cn", "devs")
            .one("description", "")
            .many("memberUid", Vec::<String>::new())
            .operational("namingContexts", ["dc=x"])
            .build("cn=devs".into(), "cn=devs".into(), Arc::from(""), EntryKind::Group);
        assert_eq!(e.values("objectclass"), ["top", "posixGroup"]);
        assert_eq!(e.values("CN"), ["devs"]);
        assert!(e.get("description").is_none(), "empty values are skipped");
        assert!(e.get("memberUid").is_none());
        let names: Vec<(&str, bool)> = e.attributes().map(|a| (a.name, a.operational)).collect();
        assert_eq!(names, [("objectClass", false), ("cn", false), ("namingContexts", true)]);
    }
}
