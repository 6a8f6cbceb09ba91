//! Directory entries: users, groups and the tree's containers rendered once
//! per snapshot as LDAP-shaped attribute lists, ready to filter and send.

use super::schema;

/// One attribute with its values, under its canonical name.
#[derive(Debug, Clone)]
pub struct Attr {
    pub name: &'static str,
    pub values: Vec<String>,
}

/// What an entry represents; access control and bind lookups use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// The naming context itself.
    Base,
    /// `ou=people` / `ou=groups`.
    Container,
    /// A user; carries the login name.
    User(String),
    /// A group.
    Group,
}

/// An entry of the directory tree.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The DN as it is shown to clients.
    pub dn: String,
    /// The normalised DN, for comparisons.
    pub ndn: String,
    /// The normalised DN of the parent entry.
    pub parent_ndn: String,
    pub kind: EntryKind,
    /// User attributes, returned for `*`.
    pub attrs: Vec<Attr>,
    /// Operational attributes, returned for `+` or by name.
    pub operational: Vec<Attr>,
}

impl Entry {
    /// The attribute with this canonical name, user or operational.
    pub fn get(&self, canonical: &str) -> Option<&Attr> {
        self.attrs.iter().chain(self.operational.iter()).find(|a| a.name == canonical)
    }

    /// The values of an attribute by any spelling; empty when absent.
    pub fn values(&self, name: &str) -> &[String] {
        schema::canonical(name).and_then(|c| self.get(c)).map_or(&[], |a| a.values.as_slice())
    }
}

/// Builds an attribute list, skipping empty values.
#[derive(Debug, Default)]
pub(super) struct AttrsBuilder(pub(super) Vec<Attr>);

impl AttrsBuilder {
    pub(super) fn one(mut self, name: &'static str, value: impl Into<String>) -> Self {
        let value = value.into();
        if !value.is_empty() {
            self.0.push(Attr { name, values: vec![value] });
        }
        self
    }

    pub(super) fn many(mut self, name: &'static str, values: Vec<String>) -> Self {
        if !values.is_empty() {
            self.0.push(Attr { name, values });
        }
        self
    }
}
