//! `pve-sim`: a simulator of the Proxmox VE REST API subset Portcullis
//! uses, for integration tests in place of a real Proxmox host. It follows
//! the measured facts in DESIGN.md ("Facts about Proxmox VE's API"); it is a
//! test tool, not part of the server.
//!
//! # Command line
//!
//! ```text
//! pve-sim --listen 127.0.0.1:0 [--token 'root@pam!portcullis=SECRET' …]
//!         [--node pve1:cores=16,memory=64G,disk=500G …] [--task-ms 300]
//!         [--resources-lag-ms 0] [--lock-wait-ms 10000] [--auth-fail-delay-ms 0]
//!         [--dhcp-hostsdir DIR] [--dhcp-prefix-len 24] [--max-containers 1000]
//!         [--max-logged-requests 10000] [--plain-http] [--ca-out FILE]
//!         [--exit-with-stdin]
//! ```
//!
//! On start it prints one line and flushes it:
//! `pve-sim listening on https://127.0.0.1:PORT sha256=AA:BB:…` (the
//! SHA-256 of the server certificate's DER, as PVE shows fingerprints), or
//! `pve-sim listening on http://127.0.0.1:PORT` with `--plain-http`. Without
//! `--token` it generates one and prints it on a second line,
//! `token: root@pam!pve-sim=UUID` (`USER@REALM!TOKENID=SECRET`, ready for
//! `portcullis node add --token-id … --token-secret-stdin`). Like a
//! PVE node, the server certificate is signed by a generated CA
//! ("Proxmox Virtual Environment"), written as PEM to `--ca-out`.
//!
//! # The API (`/api2/json/…`)
//!
//! `GET /version`, `GET /nodes`, `GET /nodes/{node}/status`,
//! `GET /cluster/nextid[?vmid=N]`, `GET /cluster/resources[?type=vm|node|storage]`,
//! `GET|POST /nodes/{node}/lxc`, `GET|DELETE /nodes/{node}/lxc/{vmid}`,
//! `GET …/status/current`, `POST …/status/{start|stop|shutdown|reboot}`,
//! `GET|PUT …/config`, `PUT …/resize`, `GET …/interfaces`,
//! `GET /nodes/{node}/tasks/{upid}/{status|log}`.
//!
//! Behaviour, as in PVE: answers are `{"data": …}`; errors carry their text
//! in the HTTP reason phrase and in `message`; a missing token is 401
//! "No ticket", a wrong one 401 "Authentication failed!" (after
//! `--auth-fail-delay-ms`); parameters (query, form or JSON body) are checked
//! strictly, 400 "Parameter verification failed." with `errors` per
//! parameter (unknown parameters, booleans other than `0`/`1` or JSON
//! `true`/`false`, numbers out of range, malformed property strings); unknown
//! paths or methods are 501; a container not on the node is 500
//! "Configuration file 'nodes/N/lxc/V.conf' does not exist"; an unknown node
//! is 500 "hostname lookup … failed". Long operations return a UPID
//! (`UPID:node:PID:PSTART:STARTTIME:type:id:tokenid:`, upper-case hex) and
//! finish after `--task-ms`.
//!
//! * Create holds the `create` lock (in the config) and the config file lock
//!   for its whole run: `PUT …/config` waits up to `--lock-wait-ms` and then
//!   fails "can't lock file '/run/lock/lxc/pve-config-V.lock' - got timeout";
//!   resize/start/stop/delete fail at once with "CT is locked (create)". A
//!   taken vmid fails at once: "CT V already exists on node 'N'". Other
//!   tasks hold the file lock too.
//! * State errors are immediate 500s: "CT V already running", "CT V not
//!   running", "unable to destroy CT V - container is running".
//! * Capacity: container disks come from the node's `disk` (storage
//!   `local-lvm`; `local` only holds templates). A create or resize that does
//!   not fit fails in its task (the failed create is removed, as PVE
//!   cleans up). CPU and memory may be overcommitted, as PVE allows for
//!   containers; they only show in the node's usage figures.
//! * `net[n]` without `hwaddr` gets a generated `BC:24:11:…` MAC, also on
//!   `PUT …/config` (as PVE does); values are stored in PVE's key order with
//!   `type=veth`. Tags are normalised (sorted, lower-cased, de-duplicated,
//!   joined with `;`). `rootfs` `STORAGE:SIZE` becomes
//!   `STORAGE:vm-V-disk-0,size=SIZEG`; `password` and `ssh-public-keys`
//!   are not stored. `GET …/config` includes a `digest` that `PUT` accepts.
//! * `GET /cluster/nextid` answers the lowest free id ≥ 100 as a quoted
//!   number, without reserving it; `?vmid=N` for a taken id is a 400.
//! * `GET /cluster/resources` shows the state as of `--resources-lag-ms` ago.
//! * `GET /nodes/{node}/lxc` answers vmids as strings (older PVE does), the
//!   other calls as numbers; clients must accept both.
//! * `GET …/interfaces` is `null` while stopped; when running, `lo` and one
//!   entry per `net[n]` with the lower-case `hwaddr`, a link-local `inet6`,
//!   and `inet` from the static `ip=`, or for `ip=dhcp` the address of the
//!   first `dhcp-host=MAC,IP,NAME` line (prefix optional, as in dnsmasq's
//!   `--dhcp-hostsdir` files) for that MAC in `--dhcp-hostsdir`, read at
//!   call time, with `/--dhcp-prefix-len`; no `inet` if there is none.
//! * Not simulated: permissions (every valid token may do everything),
//!   existing volumes as `rootfs`, mount points `mp[n]`, templates
//!   existing on storage, HA, pools, snapshots, QEMU guests.
//!
//! # Test control API (`/_sim/…`, no auth, JSON)
//!
//! * `POST /_sim/faults` with a JSON object; its parts may be combined, and
//!   nothing changes unless all of them are valid (400 otherwise).
//!   Counted faults, used up one request (or task) at a time:
//!   * `{"path_prefix":"/nodes/pve1/lxc","method":"POST","status":500,"reason":"…","count":2,"delay_ms":0}`:
//!     the next `count` API requests whose path after `/api2/json` starts
//!     with the prefix, and with that method if given, wait `delay_ms` and
//!     then fail with that status and reason; without `status` they are
//!     only delayed.
//!   * `{"nextid_collision":1}`: the next nextid answer is taken at once by
//!     a stopped container `race-V` (someone else's, untagged), so the create
//!     that follows fails "already exists".
//!   * `{"task_fail":{"type":"vzcreate","message":"…","count":1}}`: the next
//!     tasks of that type end with that exit status (a failed create is
//!     removed).
//!
//!   Lasting faults, in force until `DELETE /_sim/faults`:
//!   * `{"error_rate":0.1,"status":500,"reason":"…","path_prefix":"/nodes","method":"POST","after":false}`:
//!     each matching API request (prefix default `""`, i.e. all; any method)
//!     fails with that probability, status (default 500) and reason
//!     (default "injected fault"). With `"after":true` the request is
//!     carried out first and only its answer is replaced (a response lost
//!     on the way: the create happened, the client saw a 500). Several
//!     rules may be active; each matching one rolls in turn.
//!   * `{"latency_ms":200}`, optionally with `path_prefix` and `method`:
//!     every matching API request waits that long first (matching rules
//!     add up).
//!   * `{"lock_contention":{"rate":0.1}}`: with that probability a
//!     `PUT …/config`, `PUT …/resize` or `POST …/status/{start|stop|shutdown}`
//!     finds the config file lock taken by someone else and fails at once
//!     with 500 "can't lock file '/run/lock/lxc/pve-config-V.lock' - got
//!     timeout" (PVE takes that lock in the API call, before forking the
//!     task; it would wait 10 s first). A `DELETE …/lxc/{vmid}` takes the
//!     lock inside its task, as PVE does: its task fails with that text and
//!     the container stays. Creates are not affected (nobody else holds the
//!     lock of an unused id). `{"rate":0}` turns it off.
//!   * `{"nextid_collision_rate":0.1}`: each nextid answer is taken at once
//!     by a `race-V` container with that probability (as `nextid_collision`).
//!   * `{"node_offline":"pve2"}` / `{"node_online":"pve2"}`: a cluster node
//!     goes down / comes back. Requests under `/nodes/pve2/…` (status,
//!     containers, tasks) then fail with 595 "No route to host", which is
//!     what pveproxy answers when it cannot reach the node it must proxy to
//!     (a powered-off node; a node whose pveproxy is down gives 595 "Errors
//!     during connection establishment, proxy handshake: Connection
//!     refused" instead). `GET /nodes` lists it as `"status":"offline"`
//!     without figures; `/cluster/resources` shows the node offline and its
//!     guests `"status":"unknown"`. Its containers and running tasks stay
//!     as they were. The simulated endpoint itself never goes down.
//!   * `{"seed":42}`: restarts the random generator behind every rate, so
//!     the same seed and the same order of requests give the same faults
//!     (the seed in use is shown in `/_sim/state`).
//!
//!   Order per API request: token check, parameters, latency, offline
//!   node, counted fault, rate faults, the operation. `DELETE /_sim/faults`
//!   clears every fault, rate and offline node.
//! * Out-of-band changes: `POST /_sim/lxc/{vmid}/stop`,
//!   `POST /_sim/lxc/{vmid}/start`, `DELETE /_sim/lxc/{vmid}`,
//!   `POST /_sim/lxc/{vmid}/config` with `{"key": value-or-null}`.
//! * `GET /_sim/state`: nodes with usage, every container with its config,
//!   lock and file-lock holder, tasks, pending faults, and under `chaos`
//!   the lasting rules, offline nodes and the seed.
//! * `GET /_sim/requests`: the last `--max-logged-requests` API requests
//!   (`seq`, `method`, `path`, `params` with `password` redacted, `status`,
//!   `token` id, never the secret); `DELETE /_sim/requests` clears it.
//! * `GET /_sim/stats`: counters of every API request since start or the
//!   last `DELETE /_sim/stats`: `total`, `seconds`, `by_method`,
//!   `by_status` and `by_endpoint` (`"GET /nodes/pve1/lxc/{vmid}/status/current"`:
//!   vmids and UPIDs replaced, at most 1,000 distinct keys, then `other`).
//!   Requests the token check refuses count too.
//!
//! Limits: request bodies over 512 KiB get 413; at most `--max-containers`
//! containers, 10,000 remembered tasks, `--max-logged-requests` logged
//! requests, 1,000 pending faults and rules. No input makes it panic:
//! state sits behind one mutex that is never held across an `.await`, and
//! a poisoned lock is recovered.

#![forbid(unsafe_code)]

mod api;
mod control;
mod format;
mod params;
mod state;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::state::{Node, Settings, Sim};

/// Simulates the Proxmox VE API subset Portcullis uses (a test tool).
#[derive(Debug, Parser)]
#[command(name = "pve-sim", version, about)]
struct Cli {
    /// Address to listen on (port 0 picks a free one; the start-up line shows it).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// An accepted API token, `USER@REALM!NAME=SECRET` (repeatable). Without
    /// one, a token `root@pam!pve-sim=UUID` is generated and printed.
    #[arg(long = "token")]
    tokens: Vec<String>,
    /// A node, `NAME[:cores=N,memory=SIZE,disk=SIZE]` (repeatable; default
    /// `pve1:cores=16,memory=64G,disk=500G`).
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// How long every task (create, start, stop, …) runs, in milliseconds.
    #[arg(long, default_value_t = 300)]
    task_ms: u64,
    /// How far `/cluster/resources` lags behind, in milliseconds (PVE: ~10 s).
    #[arg(long, default_value_t = 0)]
    resources_lag_ms: u64,
    /// How long a config change waits for a held lock, in milliseconds (PVE: 10 s).
    #[arg(long, default_value_t = 10_000)]
    lock_wait_ms: u64,
    /// Delay before answering a wrong token, in milliseconds (PVE: ~3 s).
    #[arg(long, default_value_t = 0)]
    auth_fail_delay_ms: u64,
    /// dnsmasq's `--dhcp-hostsdir`, to answer the IPs of `ip=dhcp` interfaces.
    #[arg(long)]
    dhcp_hostsdir: Option<PathBuf>,
    /// Prefix length reported with a DHCP address.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(0..=32))]
    dhcp_prefix_len: u8,
    /// Most containers the simulator holds.
    #[arg(long, default_value_t = 1000)]
    max_containers: usize,
    /// Most requests kept in the log of `/_sim/requests` (older ones are
    /// dropped; `/_sim/stats` counts every request regardless).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    max_logged_requests: u64,
    /// Serve plain HTTP instead of HTTPS.
    #[arg(long)]
    plain_http: bool,
    /// Write the CA certificate (PEM) that signed the server certificate here.
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// Exit when standard input reaches end of file (so a test's simulator
    /// dies with the test process).
    #[arg(long)]
    exit_with_stdin: bool,
}

/// Parses `NAME[:cores=N,memory=SIZE,disk=SIZE]`.
fn parse_node(spec: &str) -> anyhow::Result<Node> {
    let (name, opts) = spec.split_once(':').unwrap_or((spec, ""));
    format::check_node_name(name).map_err(|e| anyhow::anyhow!("--node {spec:?}: {e}"))?;
    let mut node = Node { name: name.to_string(), cores: 16, memory: 64 << 30, disk: 500 << 30 };
    for item in opts.split(',').filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('=').with_context(|| format!("--node {spec:?}: expected key=value"))?;
        let size = || format::parse_size(v, 1 << 20).with_context(|| format!("--node {spec:?}: bad size {v:?}"));
        match k {
            "cores" => node.cores = v.parse().with_context(|| format!("--node {spec:?}: bad cores"))?,
            "memory" => node.memory = size()?,
            "disk" => node.disk = size()?,
            _ => bail!("--node {spec:?}: unknown key {k:?} (cores, memory, disk)"),
        }
    }
    Ok(node)
}

/// Parses `USER@REALM!NAME=SECRET` into (token id, secret).
fn parse_token(spec: &str) -> anyhow::Result<(String, String)> {
    let (id, secret) = spec.split_once('=').context("--token must be USER@REALM!NAME=SECRET")?;
    let ok = id.contains('@') && id.contains('!') && !secret.is_empty();
    if !ok {
        bail!("--token must be USER@REALM!NAME=SECRET");
    }
    Ok((id.to_string(), secret.to_string()))
}

/// A CA and a server certificate signed by it, like a PVE node's
/// `pve-root-ca.pem` and `pve-ssl.pem`.
struct Certs {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    fingerprint: String,
}

fn generate_certs(nodes: &[Node]) -> anyhow::Result<Certs> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "Proxmox Virtual Environment");
    ca.distinguished_name.push(DnType::OrganizationName, "PVE Cluster Manager CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    names.extend(nodes.iter().map(|n| n.name.clone()));
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, nodes.first().map_or("pve1", |n| n.name.as_str()));
    params.distinguished_name.push(DnType::OrganizationName, "PVE Cluster Node");
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
    let digest = Sha256::digest(cert.der().as_ref());
    let fingerprint = digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
    Ok(Certs {
        ca_pem: ca_cert.pem(),
        chain: vec![cert.der().clone(), ca_cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        fingerprint,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut nodes = cli.nodes.iter().map(|s| parse_node(s)).collect::<anyhow::Result<Vec<_>>>()?;
    if nodes.is_empty() {
        nodes.push(parse_node("pve1")?);
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = nodes.iter().find(|n| !seen.insert(n.name.clone())) {
        bail!("--node {} given twice", dup.name);
    }
    let mut tokens: HashMap<String, String> =
        cli.tokens.iter().map(|t| parse_token(t)).collect::<anyhow::Result<_>>()?;
    // Without --token: a fresh one, announced on the second start-up line.
    let generated = if tokens.is_empty() {
        let (id, secret) = ("root@pam!pve-sim".to_string(), uuid::Uuid::new_v4().to_string());
        tokens.insert(id.clone(), secret.clone());
        Some(format!("{id}={secret}"))
    } else {
        None
    };

    let certs = if cli.plain_http { None } else { Some(generate_certs(&nodes)?) };
    if let (Some(path), Some(c)) = (&cli.ca_out, &certs) {
        std::fs::write(path, &c.ca_pem).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let settings = Settings {
        tokens,
        task: Duration::from_millis(cli.task_ms),
        resources_lag: Duration::from_millis(cli.resources_lag_ms),
        lock_wait: Duration::from_millis(cli.lock_wait_ms),
        auth_fail_delay: Duration::from_millis(cli.auth_fail_delay_ms),
        dhcp_hostsdir: cli.dhcp_hostsdir.clone(),
        dhcp_prefix_len: cli.dhcp_prefix_len,
        max_containers: cli.max_containers,
        max_logged_requests: usize::try_from(cli.max_logged_requests).unwrap_or(usize::MAX),
        fingerprint: certs.as_ref().map(|c| c.fingerprint.clone()),
    };
    let sim = Sim::new(settings, nodes);

    if !sim.settings.resources_lag.is_zero() {
        let lag = sim.settings.resources_lag;
        let every = (lag / 10).clamp(Duration::from_millis(10), Duration::from_millis(250));
        let recorder = Arc::clone(&sim);
        recorder.lock().record_resources(lag);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                recorder.lock().record_resources(lag);
            }
        });
    }

    if cli.exit_with_stdin {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            std::process::exit(0);
        });
    }

    let app = axum::Router::new().fallback(api::handle).with_state(Arc::clone(&sim));
    let listener =
        std::net::TcpListener::bind(cli.listen).with_context(|| format!("cannot listen on {}", cli.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;

    let shutdown = async {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
    };

    match certs {
        None => {
            announce(&format!("pve-sim listening on http://{addr}"), generated.as_deref())?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
        }
        Some(certs) => {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut tls = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .context("TLS protocol versions")?
                .with_no_client_auth()
                .with_single_cert(certs.chain, certs.key)
                .context("certificate and key do not match")?;
            // pveproxy speaks HTTP/1.1 only.
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                stopper.graceful_shutdown(Some(Duration::from_secs(2)));
            });
            announce(
                &format!("pve-sim listening on https://{addr} sha256={}", certs.fingerprint),
                generated.as_deref(),
            )?;
            axum_server::from_tcp_rustls(listener, config)?.handle(handle).serve(app.into_make_service()).await?;
        }
    }
    Ok(())
}

/// Prints the start-up line, and the generated token's line if there is
/// one, and flushes them (tests read them from a pipe).
fn announce(line: &str, token: Option<&str>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    if let Some(token) = token {
        writeln!(out, "token: {token}")?;
    }
    out.flush()?;
    Ok(())
}
