//! Importing identities from other directories.

pub mod ldif;
