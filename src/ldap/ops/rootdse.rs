//! The root DSE (RFC 4512 §5.1): what the server supports, readable
//! anonymously. SSSD pages only when `supportedControl` lists paged results.

use std::sync::Arc;

use crate::directory::{Entry, EntryBuilder, EntryKind};

/// Builds the root DSE for a server whose naming context is `base_dn`.
pub fn entry(base_dn: &str) -> Entry {
    EntryBuilder::default()
        .many("objectClass", ["top", "extensibleObject"])
        .operational("namingContexts", [base_dn])
        .operational("supportedControl", [super::OID_PAGED_RESULTS, "2.16.840.1.113730.3.4.2"])
        .operational("supportedExtension", [super::OID_START_TLS, super::OID_PASSWORD_MODIFY, super::OID_WHOAMI])
        .operational("supportedFeatures", ["1.3.6.1.4.1.4203.1.5.1"])
        .operational("supportedLDAPVersion", ["3"])
        .operational("subschemaSubentry", ["cn=Subschema"])
        .operational("vendorName", ["Portcullis"])
        .operational("vendorVersion", [concat!("Portcullis ", env!("CARGO_PKG_VERSION"))])
        .build("".into(), "".into(), Arc::from(""), EntryKind::Base)
}
