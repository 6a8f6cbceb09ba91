//! The HTTP side of the Proxmox client: one request helper that speaks the
//! PVE wire format, and one typed method per API call. It never retries and
//! never logs; the token secret lives only in a header marked sensitive.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::de::DeserializeOwned;

use super::types::{parse_upid, parse_vmid, short_json};
use super::{
    ClusterResource, CreateLxc, Endpoint, Interface, LxcConfig, LxcStatus, NodeInfo, NodeStatus, ProxmoxError,
    TaskStatus, Upid, Version,
};

/// The time budget of one request unless [`ProxmoxClient::with_timeout`]
/// says otherwise. PVE may hold a request for its 10 s lock wait.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest response body the client reads; a larger one is an error.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// A client for one PVE cluster, authenticated with an API token. Cheap to
/// clone (connections are pooled and shared).
#[derive(Clone)]
pub struct ProxmoxClient {
    http: reqwest::Client,
    /// `https://host:8006/api2/json`, without a trailing slash.
    api: String,
    /// `PVEAPIToken=…`, marked sensitive.
    auth: HeaderValue,
    token_id: String,
}

impl fmt::Debug for ProxmoxClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxmoxClient").field("api", &self.api).field("token_id", &self.token_id).finish()
    }
}

impl ProxmoxClient {
    /// A client for `endpoint` with [`DEFAULT_TIMEOUT`] per request.
    ///
    /// # Errors
    /// The URL, token or TLS trust is unusable (kind `Other`).
    pub fn new(endpoint: &Endpoint) -> Result<Self, ProxmoxError> {
        Self::with_timeout(endpoint, DEFAULT_TIMEOUT)
    }

    /// A client for `endpoint` whose requests each get at most `timeout`.
    ///
    /// # Errors
    /// The URL, token or TLS trust is unusable (kind `Other`).
    pub fn with_timeout(endpoint: &Endpoint, timeout: Duration) -> Result<Self, ProxmoxError> {
        let base = endpoint.base_url.trim().trim_end_matches('/');
        if !(base.starts_with("https://") || base.starts_with("http://")) || base.contains(['?', '#']) {
            return Err(ProxmoxError::local(format!("the Proxmox URL must look like https://host:8006, not {base:?}")));
        }
        let api = if base.ends_with("/api2/json") { base.to_string() } else { format!("{base}/api2/json") };
        reqwest::Url::parse(&api).map_err(|e| ProxmoxError::local(format!("invalid Proxmox URL {base:?}: {e}")))?;
        let id = &endpoint.token_id;
        let id_ok = id.contains('@')
            && id.contains('!')
            && !id.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'=');
        if !id_ok {
            return Err(ProxmoxError::local(format!("the API token id must look like user@realm!name, not {id:?}")));
        }
        let secret = &endpoint.token_secret;
        if secret.is_empty() || secret.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(ProxmoxError::local("the API token secret is empty or contains white space".into()));
        }
        let mut auth = HeaderValue::from_str(&format!("PVEAPIToken={id}={secret}"))
            .map_err(|_| ProxmoxError::local("the API token contains characters not allowed in a header".into()))?;
        auth.set_sensitive(true);
        let http = super::tls::build_client(&endpoint.tls, timeout)?;
        Ok(Self { http, api, auth, token_id: id.clone() })
    }

    /// The token id this client authenticates as.
    pub fn token_id(&self) -> &str {
        &self.token_id
    }

    /// Calls the API and returns the unwrapped `data`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        params: &[(String, String)],
    ) -> Result<serde_json::Value, ProxmoxError> {
        let form =
            (!params.is_empty()).then(|| form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish());
        let in_query = method == Method::GET || method == Method::DELETE;
        let url = match &form {
            Some(query) if in_query => format!("{}{path}?{query}", self.api),
            _ => format!("{}{path}", self.api),
        };
        let mut request = self.http.request(method, &url).header(AUTHORIZATION, self.auth.clone());
        if let Some(form) = form.filter(|_| !in_query) {
            request = request.header(CONTENT_TYPE, "application/x-www-form-urlencoded").body(form);
        }
        let mut response = request.send().await.map_err(|e| transport_error(&e))?;
        let status = response.status();
        let reason = response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(&e))? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(ProxmoxError::decode(status.as_u16(), "the Proxmox answer is too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        if status.is_success() {
            return match json {
                Some(serde_json::Value::Object(mut envelope)) => {
                    Ok(envelope.remove("data").unwrap_or(serde_json::Value::Null))
                }
                _ => Err(ProxmoxError::decode(
                    status.as_u16(),
                    format!("unexpected answer from Proxmox to {path}: not a JSON object"),
                )),
            };
        }
        let body_message = json
            .as_ref()
            .and_then(|j| j.get("message"))
            .and_then(serde_json::Value::as_str)
            .map(|m| m.trim_end().to_string())
            .filter(|m| !m.is_empty());
        let message =
            reason.or(body_message).unwrap_or_else(|| status.canonical_reason().unwrap_or("unknown error").to_string());
        let mut errors = BTreeMap::new();
        if let Some(serde_json::Value::Object(map)) = json.as_ref().and_then(|j| j.get("errors")) {
            for (k, v) in map {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                errors.insert(k.clone(), text.trim_end().to_string());
            }
        }
        Err(ProxmoxError::http(status.as_u16(), message, errors))
    }

    /// Calls the API and deserialises `data` into `T`.
    async fn get_as<T: DeserializeOwned>(&self, path: &str, params: &[(String, String)]) -> Result<T, ProxmoxError> {
        let data = self.call(Method::GET, path, params).await?;
        let shown = short_json(&data);
        serde_json::from_value(data)
            .map_err(|e| ProxmoxError::decode(200, format!("unexpected answer from Proxmox to {path}: {e} in {shown}")))
    }

    /// Calls the API for a task id.
    async fn call_upid(&self, method: Method, path: &str, params: &[(String, String)]) -> Result<Upid, ProxmoxError> {
        let data = self.call(method, path, params).await?;
        parse_upid(data)
            .map_err(|e| ProxmoxError::decode(200, format!("unexpected answer from Proxmox to {path}: {e}")))
    }

    /// `GET /version`.
    ///
    /// # Errors
    /// See [`ProxmoxError::kind`].
    pub async fn version(&self) -> Result<Version, ProxmoxError> {
        self.get_as("/version", &[]).await
    }

    /// `GET /nodes`: the cluster's nodes.
    ///
    /// # Errors
    /// See [`ProxmoxError::kind`].
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ProxmoxError> {
        self.get_as("/nodes", &[]).await
    }

    /// `GET /nodes/{node}/status`: capacity and usage of one node.
    ///
    /// # Errors
    /// See [`ProxmoxError::kind`].
    pub async fn node_status(&self, node: &str) -> Result<NodeStatus, ProxmoxError> {
        self.get_as(&format!("/nodes/{}/status", seg(node)), &[]).await
    }

    /// `GET /cluster/nextid`: the lowest free vmid. Not reserved: another
    /// caller may get the same id, and then one create fails with kind
    /// `AlreadyExists` and must be retried with a new id.
    ///
    /// # Errors
    /// See [`ProxmoxError::kind`].
    pub async fn next_id(&self) -> Result<u32, ProxmoxError> {
        let data = self.call(Method::GET, "/cluster/nextid", &[]).await?;
        parse_vmid(&data).ok_or_else(|| {
            ProxmoxError::decode(
                200,
                format!("unexpected answer from Proxmox to /cluster/nextid: {}", short_json(&data)),
            )
        })
    }

    /// `POST /nodes/{node}/lxc`: starts creating a container; the returned
    /// task holds the container's lock until it ends. A taken vmid fails at
    /// once with kind `AlreadyExists`.
    ///
    /// # Errors
    /// See [`ProxmoxError::kind`].
    pub async fn create_lxc(&self, node: &str, spec: &CreateLxc) -> Result<Upid, ProxmoxError> {
        self.call_upid(Method::POST, &format!("/nodes/{}/lxc", seg(node)), &spec.to_params()).await
    }

    /// `GET /nodes/{node}/lxc`: the node's containers.
    ///
    /// # Errors
    /// See [`ProxmoxError::kind`].
    pub async fn lxc_list(&self, node: &str) -> Result<Vec<LxcStatus>, ProxmoxError> {
        self.get_as(&format!("/nodes/{}/lxc", seg(node)), &[]).await
    }

    /// `GET …/lxc/{vmid}/status/current`.
    ///
    /// # Errors
    /// See [`ProxmoxError::kind`]; a missing container is `Missing`.
    pub async fn lxc_status(&self, node: &str, vmid: u32) -> Result<LxcStatus, ProxmoxError> {
        self.get_as(&format!("{}/status/current", ct(node, vmid)), &[]).await
    }

    /// `GET …/lxc/{vmid}/config`.
    ///
    /// # Errors
    /// See [`ProxmoxError::kind`]; a missing container is `Missing`.
    pub async fn lxc_config(&self, node: &str, vmid: u32) -> Result<LxcConfig, ProxmoxError> {
        self.get_as(&format!("{}/config", ct(node, vmid)), &[]).await
    }

    /// `PUT …/lxc/{vmid}/config` with `params` as given (booleans must be
    /// `0`/`1`; `delete` lists keys to remove; `digest` guards against a
    /// concurrent change). PVE waits up to 10 s for the container's lock.
    ///
    /// # Errors
    /// See [`ProxmoxError::kind`]; a held lock is `Locked`.
    pub async fn update_lxc_config(&self, node: &str, vmid: u32, params: &[(&str, &str)]) -> Result<(), ProxmoxError> {
        let params: Vec<(String, String)> = params.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
        self.call(Method::PUT, &format!("{}/config", ct(node, vmid)), &params).await?;
        Ok(())
    }

    /// `PUT …/lxc/{vmid}/resize`: grows mount point `disk` (`rootfs`,
    /// `mp0`, …) to `size` (`10G`) or by it (`+2G`); PVE cannot shrink.
    /// Current PVE answers with a task id; versions that resize inline
    /// answer `null`, hence the `Option`.
    ///
    /// # Errors
    /// See [`ProxmoxError::kind`]; during create it is `Locked`.
    pub async fn resize(&self, node: &str, vmid: u32, disk: &str, size: &str) -> Result<Option<Upid>, ProxmoxError> {
        let params = [("disk".to_string(), disk.to_string()), ("size".to_string(), size.to_string())];
        let path = format!("{}/resize", ct(node, vmid));
        match self.call(Method::PUT, &path, &params).await? {
            serde_json::Value::Null => Ok(None),
            data => parse_upid(data)
                .map(Some)
                .map_err(|e| ProxmoxError::decode(200, format!("unexpected answer from Proxmox to {path}: {e}"))),
        }
    }

    async fn power(&self, node: &str, vmid: u32, action: &str) -> Result<Upid, ProxmoxError> {
        self.call_upid(Method::POST, &format!("{}/status/{action}", ct(node, vmid)), &[]).await
    }

    /// `POST …/status/start`.
    ///
    /// # Errors
    /// See [`ProxmoxError::kind`]; already running is `Other`.
    pub async fn start(&self, node: &str, vmid: u32) -> Result<Upid, ProxmoxError> {
        self.power(node, vmid, "start").await
    }

    /// `POST …/status/stop`: immediate stop.
    ///
    /// # Errors
    /// See [`ProxmoxError::kind`]; not running is `Other`.
    pub async fn stop(&self, node: &str, vmid: u32) -> Result<Upid, ProxmoxError> {
        self.power(node, vmid, "stop").await
    }

    /// `POST …/status/shutdown`: clean shutdown (PVE's default time-out).
    ///
    /// # Errors
    /// See [`ProxmoxError::kind`]; not running is `Other`.
    pub async fn shutdown(&self, node: &str, vmid: u32) -> Result<Upid, ProxmoxError> {
        self.power(node, vmid, "shutdown").await
    }

    /// `POST …/status/reboot`.
    ///
    /// # Errors
    /// See [`ProxmoxError::kind`]; not running is `Other`.
    pub async fn reboot(&self, node: &str, vmid: u32) -> Result<Upid, ProxmoxError> {
        self.power(node, vmid, "reboot").await
    }

    /// `DELETE …/lxc/{vmid}?purge=1&destroy-unreferenced-disks=1`: destroys
    /// a stopped container with its disks and its traces in jobs and pools.
    ///
    /// # Errors
    /// See [`ProxmoxError::kind`]; a running container is refused (`Other`).
    pub async fn delete_lxc(&self, node: &str, vmid: u32) -> Result<Upid, ProxmoxError> {
        let params =
            [("purge".to_string(), "1".to_string()), ("destroy-unreferenced-disks".to_string(), "1".to_string())];
        self.call_upid(Method::DELETE, &ct(node, vmid), &params).await
    }

    /// `GET …/lxc/{vmid}/interfaces` (PVE ≥ 8.1): the running container's
    /// interfaces, `None` while it is stopped.
    ///
    /// # Errors
    /// See [`ProxmoxError::kind`].
    pub async fn interfaces(&self, node: &str, vmid: u32) -> Result<Option<Vec<Interface>>, ProxmoxError> {
        self.get_as(&format!("{}/interfaces", ct(node, vmid)), &[]).await
    }

    /// `GET /cluster/resources?type=vm`: every guest of the cluster in one
    /// call. It lags behind the nodes (~10 s); read a node's list for the
    /// current truth.
    ///
    /// # Errors
    /// See [`ProxmoxError::kind`].
    pub async fn cluster_resources_vm(&self) -> Result<Vec<ClusterResource>, ProxmoxError> {
        self.get_as("/cluster/resources", &[("type".to_string(), "vm".to_string())]).await
    }

    /// `GET /nodes/{node}/tasks/{upid}/status`.
    ///
    /// # Errors
    /// See [`ProxmoxError::kind`].
    pub async fn task_status(&self, upid: &Upid) -> Result<TaskStatus, ProxmoxError> {
        self.get_as(&format!("/nodes/{}/tasks/{}/status", seg(upid.node()), seg(upid.as_str())), &[]).await
    }

    /// Polls task `upid` every `poll_interval` until it ends or `timeout`
    /// passes. Failed polls of kind `Transient` are retried within the time.
    ///
    /// # Errors
    /// The task ended with an exit status other than `OK`/`WARNINGS: n`
    /// (the message is that status verbatim, [`ProxmoxError::task`] is
    /// set); `timeout` passed (kind `Transient`: the task may still end);
    /// or a poll failed otherwise.
    pub async fn wait_task(&self, upid: &Upid, timeout: Duration, poll_interval: Duration) -> Result<(), ProxmoxError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let poll_interval = poll_interval.max(Duration::from_millis(10));
        loop {
            match self.task_status(upid).await {
                Ok(status) if status.succeeded() => return Ok(()),
                Ok(status) if status.is_finished() => {
                    let exit = status.exitstatus.unwrap_or_else(|| "unknown task status".to_string());
                    return Err(ProxmoxError::task_failed(upid.clone(), exit));
                }
                Ok(_) => {}
                Err(e) if e.kind() == super::ErrorKind::Transient => {}
                Err(e) => return Err(e),
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ProxmoxError::task_timeout(upid.clone()));
            }
            tokio::time::sleep(poll_interval.min(deadline - now)).await;
        }
    }
}

/// The path of container `vmid` on `node`.
fn ct(node: &str, vmid: u32) -> String {
    format!("/nodes/{}/lxc/{vmid}", seg(node))
}

/// Percent-encodes one path segment (keeps RFC 3986 `pchar`s, which covers
/// node names and UPIDs unchanged).
fn seg(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b);
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error without an HTTP answer, with its causes on one line. A refused
/// certificate is told apart (retrying will not fix it) and said plainly.
fn transport_error(e: &reqwest::Error) -> ProxmoxError {
    let mut text = e.to_string();
    let mut refused = None;
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(rustls::Error::InvalidCertificate(cert)) = find_rustls(c, 4) {
            refused = Some(super::tls::describe_refusal(cert));
        }
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    match refused {
        Some(why) => ProxmoxError::tls(format!("the Proxmox server's TLS certificate was refused: {why}")),
        None => ProxmoxError::transport(text),
    }
}

/// The rustls error in `e`, looking through the wrappers that hide it from
/// `source()`: `io::Error` (whose `source` skips what it wraps) and boxed
/// errors.
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static), depth: u8) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    let inner: &'a (dyn std::error::Error + 'static) = if let Some(io) = e.downcast_ref::<std::io::Error>() {
        io.get_ref()? as &(dyn std::error::Error + 'static)
    } else {
        return None;
    };
    find_rustls(inner, depth.checked_sub(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxmox::TlsTrust;

    fn endpoint(url: &str, id: &str, secret: &str) -> Endpoint {
        Endpoint { base_url: url.into(), token_id: id.into(), token_secret: secret.into(), tls: TlsTrust::System }
    }

    #[test]
    fn endpoint_checks_and_no_secret_in_debug() {
        let c = ProxmoxClient::new(&endpoint("https://pve:8006/", "root@pam!p", "s3cr3t-uuid")).unwrap();
        assert_eq!(c.api, "https://pve:8006/api2/json");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let e = endpoint("https://pve:8006", "root@pam!p", "s3cr3t-uuid");
        assert!(!format!("{e:?}").contains("s3cr3t"));
        let c = ProxmoxClient::new(&endpoint("https://pve:8006/api2/json", "root@pam!p", "x")).unwrap();
        assert_eq!(c.api, "https://pve:8006/api2/json");
        assert!(ProxmoxClient::new(&endpoint("pve:8006", "root@pam!p", "x")).is_err());
        assert!(ProxmoxClient::new(&endpoint("https://pve", "root@pam", "x")).is_err());
        assert!(ProxmoxClient::new(&endpoint("https://pve", "root@pam!p", "")).is_err());
        assert!(ProxmoxClient::new(&endpoint("https://pve", "root@pam!p", "a\nb")).is_err());
        let pinned = Endpoint { tls: TlsTrust::Fingerprint("AB:CD".into()), ..e };
        assert!(ProxmoxClient::new(&pinned).is_err());
    }

    #[test]
    fn segments_keep_upids_readable() {
        assert_eq!(
            seg("UPID:pve1:0001:0002:0003:vzcreate:101:root@pam!p:"),
            "UPID:pve1:0001:0002:0003:vzcreate:101:root@pam!p:"
        );
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }
}
