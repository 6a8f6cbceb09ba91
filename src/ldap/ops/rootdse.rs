//! The root DSE (RFC 4512 §5.1): what the server supports, readable
//! anonymously. SSSD pages only when `supportedControl` lists paged results.

use crate::directory::{Attr, Entry, EntryKind};

/// Builds the root DSE for a server whose naming context is `base_dn`.
pub fn entry(base_dn: &str) -> Entry {
    let op =
        |name: &'static str, values: &[&str]| Attr { name, values: values.iter().map(|v| v.to_string()).collect() };
    Entry {
        dn: String::new(),
        ndn: String::new(),
        parent_ndn: String::new(),
        kind: EntryKind::Base,
        attrs: vec![op("objectClass", &["top", "extensibleObject"])],
        operational: vec![
            op("namingContexts", &[base_dn]),
            op("supportedControl", &[super::OID_PAGED_RESULTS, "2.16.840.1.113730.3.4.2"]),
            op("supportedExtension", &[super::OID_START_TLS, super::OID_PASSWORD_MODIFY, super::OID_WHOAMI]),
            op("supportedFeatures", &["1.3.6.1.4.1.4203.1.5.1"]),
            op("supportedLDAPVersion", &["3"]),
            op("subschemaSubentry", &["cn=Subschema"]),
            op("vendorName", &["Portcullis"]),
            op("vendorVersion", &[concat!("Portcullis ", env!("CARGO_PKG_VERSION"))]),
        ],
    }
}
