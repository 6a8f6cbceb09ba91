//! The one integration-test binary (one link, shared helpers). Each module
//! starts real processes: the `portcullis` binary, and the real clients that
//! its users run (ldap-utils, SSSD, pamtester, sshd).

mod common;
mod ldap_utils;
