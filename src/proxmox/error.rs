//! The one error type of the Proxmox client and its classifier, which the
//! reconciler uses to decide between retrying, waiting and giving up. It
//! holds no request data, so it can never leak the token secret.

use std::collections::BTreeMap;
use std::fmt;

use super::Upid;

/// A failed Proxmox call: an HTTP error answer, a failed task, or no answer
/// at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxmoxError {
    /// The HTTP status; 0 when there was no HTTP answer (connection, TLS,
    /// timeout) or the error is a failed task's exit status.
    pub status: u16,
    /// PVE's error text: the HTTP reason phrase verbatim (PVE's primary
    /// channel), else the body's `message`, else a description of the local
    /// failure; for a failed task, its exit status verbatim.
    pub message: String,
    /// Per-parameter messages of a 400 "Parameter verification failed.".
    pub errors: BTreeMap<String, String>,
    origin: Origin,
}

/// Where an error came from; decides [`ProxmoxError::kind`] together with
/// the status and text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// An HTTP answer with an error status.
    Http,
    /// No HTTP answer: refused or reset connection, DNS, time-out.
    Transport,
    /// The server's certificate was refused (wrong pin or untrusted CA).
    Tls,
    /// The answer was not what the API documents.
    Decode,
    /// A task ended with an exit status other than `OK`.
    Task(Box<Upid>),
    /// [`super::ProxmoxClient::wait_task`] gave up before the task ended.
    TaskTimeout(Box<Upid>),
    /// The caller's own input was unusable (bad endpoint, bad fingerprint).
    Local,
}

/// What the reconciler should make of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 401/403: the token is missing, wrong or lacks a privilege. Retrying
    /// does not help; an operator must fix the token.
    Auth,
    /// The container (or other object) does not exist ("… does not exist").
    Missing,
    /// The container is locked by another operation ("can't lock file …",
    /// "CT is locked (…)"): retry later.
    Locked,
    /// The vmid is taken ("… already exists"): pick another id and retry.
    AlreadyExists,
    /// 400 "Parameter verification failed.": our request is wrong; see
    /// [`ProxmoxError::errors`].
    InvalidParameters,
    /// Any other 5xx (including a stale `digest`: re-read, then retry), no
    /// answer, or a time-out: retry with back-off.
    Transient,
    /// A definite refusal that repeating the same call will not change: a
    /// state conflict ("CT 101 already running"), a failed task, an
    /// untrusted certificate, an unexpected answer, a 501.
    Other,
}

impl ProxmoxError {
    /// An error answer from the server (also useful to fake answers in
    /// tests of callers).
    pub fn http(status: u16, message: impl Into<String>, errors: BTreeMap<String, String>) -> Self {
        Self { status, message: message.into(), errors, origin: Origin::Http }
    }

    /// No HTTP answer arrived.
    pub(crate) fn transport(message: String) -> Self {
        Self { status: 0, message, errors: BTreeMap::new(), origin: Origin::Transport }
    }

    /// The server's certificate was refused.
    pub(crate) fn tls(message: String) -> Self {
        Self { status: 0, message, errors: BTreeMap::new(), origin: Origin::Tls }
    }

    /// The answer did not have the documented shape.
    pub(crate) fn decode(status: u16, message: String) -> Self {
        Self { status, message, errors: BTreeMap::new(), origin: Origin::Decode }
    }

    /// The caller's own input is unusable.
    pub(crate) fn local(message: String) -> Self {
        Self { status: 0, message, errors: BTreeMap::new(), origin: Origin::Local }
    }

    /// Task `upid` ended with `exitstatus` (kept verbatim as the message).
    pub fn task_failed(upid: Upid, exitstatus: impl Into<String>) -> Self {
        Self { status: 0, message: exitstatus.into(), errors: BTreeMap::new(), origin: Origin::Task(Box::new(upid)) }
    }

    /// Waiting for task `upid` ran out of time; the task may still finish.
    pub(crate) fn task_timeout(upid: Upid) -> Self {
        let message = format!("timed out waiting for task {upid}");
        Self { status: 0, message, errors: BTreeMap::new(), origin: Origin::TaskTimeout(Box::new(upid)) }
    }

    /// The task whose failure (or unfinished wait) this error reports.
    pub fn task(&self) -> Option<&Upid> {
        match &self.origin {
            Origin::Task(u) | Origin::TaskTimeout(u) => Some(u),
            _ => None,
        }
    }

    /// Classifies the error (see [`ErrorKind`]). The text patterns are PVE's
    /// own messages, which are stable across releases and the only signal:
    /// PVE answers 500 for nearly every failure.
    pub fn kind(&self) -> ErrorKind {
        let m = self.message.as_str();
        match &self.origin {
            Origin::Local | Origin::Decode | Origin::Tls => return ErrorKind::Other,
            Origin::Transport | Origin::TaskTimeout(_) => return ErrorKind::Transient,
            Origin::Http if self.status == 401 || self.status == 403 => return ErrorKind::Auth,
            Origin::Http if self.status == 400 => return ErrorKind::InvalidParameters,
            Origin::Http | Origin::Task(_) => {}
        }
        if m.contains("does not exist") {
            ErrorKind::Missing
        } else if m.contains("can't lock file") || m.contains("CT is locked") || m.contains("VM is locked") {
            ErrorKind::Locked
        } else if m.contains("already exists") {
            ErrorKind::AlreadyExists
        } else if matches!(self.origin, Origin::Task(_)) {
            ErrorKind::Other
        } else if (500..600).contains(&self.status) && self.status != 501 && !is_state_conflict(m) {
            ErrorKind::Transient
        } else {
            ErrorKind::Other
        }
    }
}

/// PVE's 500s that are definite refusals (the container's power state, a
/// protected or read-only setting, a shrinking disk): repeating them
/// unchanged is pointless.
fn is_state_conflict(message: &str) -> bool {
    const REFUSALS: [&str; 8] = [
        "already running",
        "not running",
        "container is running",
        "unable to shrink",
        "protection mode enabled",
        "read-only option",
        "unable to delete required option",
        "not implemented",
    ];
    REFUSALS.iter().any(|r| message.contains(r))
}

impl fmt::Display for ProxmoxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Http => write!(f, "Proxmox answered {}: {}", self.status, self.message)?,
            Origin::Task(upid) => write!(f, "Proxmox task {upid} failed: {}", self.message)?,
            _ => write!(f, "{}", self.message)?,
        }
        for (param, msg) in &self.errors {
            write!(f, "; {param}: {msg}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProxmoxError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, m: &str) -> ProxmoxError {
        ProxmoxError::http(status, m, BTreeMap::new())
    }

    #[test]
    fn classifies_pve_messages() {
        assert_eq!(http(401, "No ticket").kind(), ErrorKind::Auth);
        assert_eq!(http(401, "Authentication failed!").kind(), ErrorKind::Auth);
        assert_eq!(http(400, "Parameter verification failed.").kind(), ErrorKind::InvalidParameters);
        assert_eq!(http(500, "Configuration file 'nodes/pve1/lxc/101.conf' does not exist").kind(), ErrorKind::Missing);
        assert_eq!(
            http(500, "can't lock file '/run/lock/lxc/pve-config-101.lock' - got timeout").kind(),
            ErrorKind::Locked
        );
        assert_eq!(http(500, "CT is locked (create)").kind(), ErrorKind::Locked);
        assert_eq!(http(500, "CT 101 already exists on node 'pve1'").kind(), ErrorKind::AlreadyExists);
        assert_eq!(http(500, "CT 101 already running").kind(), ErrorKind::Other);
        assert_eq!(http(500, "unable to destroy CT 101 - container is running").kind(), ErrorKind::Other);
        assert_eq!(http(500, "unable to shrink disk size").kind(), ErrorKind::Other);
        assert_eq!(http(500, "proxy loop detected").kind(), ErrorKind::Transient);
        assert_eq!(http(596, "Connection timed out").kind(), ErrorKind::Transient);
        assert_eq!(http(501, "Method 'GET /x' not implemented").kind(), ErrorKind::Other);
        assert_eq!(ProxmoxError::transport("connection refused".into()).kind(), ErrorKind::Transient);
        assert_eq!(ProxmoxError::tls("fingerprint mismatch".into()).kind(), ErrorKind::Other);
        let upid = Upid::parse("UPID:pve1:0001A2B3:0045C6D7:66A1B2C3:vzcreate:101:root@pam!p:").unwrap();
        let failed = ProxmoxError::task_failed(upid.clone(), "unable to create CT 101 - no space");
        assert_eq!(failed.kind(), ErrorKind::Other);
        assert_eq!(failed.task(), Some(&upid));
        assert_eq!(failed.message, "unable to create CT 101 - no space");
        assert_eq!(ProxmoxError::task_timeout(upid).kind(), ErrorKind::Transient);
    }
}
