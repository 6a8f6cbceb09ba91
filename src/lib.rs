//! Portcullis: one program that owns the directory and answers LDAP for
//! SSSD/PAM logins. See ARCHITECTURE.md for the codemap and invariants.

#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod device_client;
pub mod directory;
pub mod dnsmasq;
pub mod identity;
pub mod import;
pub mod ldap;
pub mod mfa;
pub mod model;
pub mod oidc;
pub mod outbound;
pub mod provision;
pub mod proxmox;
pub mod push;
pub mod secrets;
pub mod server;
pub mod store;
pub mod tls;
pub mod web;
