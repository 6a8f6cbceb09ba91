//! The one integration-test binary (one link, shared helpers). Each module
//! starts real processes: the `portcullis` binary, and the real clients that
//! its users run (ldap-utils, SSSD, pamtester, sshd).

#![allow(unreachable_pub, reason = "items are shared between test modules of one binary")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly when its setup fails")]
mod cli;
mod common;
mod container_access;
mod dnsmasq;
mod import;
mod ldap_utils;
mod mfa_approve;
mod mfa_device;
mod mfa_ldap;
mod mfa_web;
mod mfa_webauthn;
mod oidc;
mod provision;
mod provision_chaos;
mod proxmox;
mod robustness;
mod sssd;
