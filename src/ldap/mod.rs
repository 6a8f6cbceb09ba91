//! The LDAP front end, layered like mini-redis:
//! - [`server`]: sockets, TLS/StartTLS, the `ldap3_proto` codec, limits, shutdown;
//! - [`session`]: one connection's state and the dispatch of each message;
//! - [`ops`]: one file per operation (parse the request, apply it to a snapshot);
//! - [`filter`]: RFC 4515 filter evaluation with three-valued logic.
//!
//! **Architecture Invariant:** nothing here touches `store/`; reads go to a
//! directory snapshot and writes (password changes, re-hashing) go through
//! [`crate::identity::Identity`].

pub mod error;
pub mod filter;
pub mod ops;
pub mod server;
pub mod session;

pub use server::{LdapServer, Listeners};
