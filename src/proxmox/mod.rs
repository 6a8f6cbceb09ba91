//! A typed async client for the subset of the Proxmox VE REST API that
//! provisioning needs (LXC containers, tasks, nodes). Owns the wire format:
//! API-token auth, form-encoded bodies with `0`/`1` booleans, the
//! `{"data": …}` envelope, error text from the HTTP reason phrase, task ids
//! (UPIDs) and tag encoding.
//!
//! It must not decide anything: retries, waiting and what to create are the
//! reconciler's business; [`ProxmoxError::kind`] only says what an error
//! means. It logs nothing and never shows the token secret, in `Debug`,
//! `Display` or errors.
//!
//! `src/bin/pve-sim` simulates the same API for the integration tests
//! (`tests/it/proxmox.rs`).

mod client;
mod create;
mod error;
mod tags;
mod tls;
mod types;
mod upid;

use std::fmt;

pub use client::{DEFAULT_TIMEOUT, MAX_RESPONSE_BYTES, ProxmoxClient};
pub use create::{CreateLxc, Features, MountConfig, Net, NetIp, RootFs, parse_size};
pub use error::{ErrorKind, ProxmoxError};
pub use tags::{ID_TAG_PREFIX, InvalidTag, OWNER_TAG_PREFIX, Tags};
pub use tls::format_fingerprint;
pub use types::{
    ClusterResource, CpuInfo, CtState, Interface, LxcConfig, LxcStatus, NodeInfo, NodeStatus, TaskState, TaskStatus,
    Usage, Version,
};
pub use upid::{InvalidUpid, Upid};

/// Where and as whom to reach a Proxmox VE cluster.
#[derive(Clone)]
pub struct Endpoint {
    /// `https://host:8006` (a trailing `/` or `/api2/json` is accepted).
    /// `http://` is allowed for local tests only.
    pub base_url: String,
    /// The API token id, `user@realm!name`.
    pub token_id: String,
    /// The token's secret (a UUID); never displayed.
    pub token_secret: String,
    /// How to trust the server's certificate.
    pub tls: TlsTrust,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("base_url", &self.base_url)
            .field("token_id", &self.token_id)
            .field("token_secret", &"<redacted>")
            .field("tls", &self.tls)
            .finish()
    }
}

/// How the client trusts the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsTrust {
    /// The system's root certificates (a host with a public certificate).
    System,
    /// Only these PEM CA certificates, e.g. the cluster's
    /// `/etc/pve/pve-root-ca.pem`; host names are still checked.
    CaPem(String),
    /// Exactly the certificate with this SHA-256 fingerprint (hex, colons
    /// optional, as PVE shows it), whatever its issuer, names or dates.
    Fingerprint(String),
}
