//! The Proxmox client (`portcullis::proxmox`) against the real `pve-sim`
//! binary over HTTPS: auth errors, certificate pinning, the container
//! lifecycle with a DHCP-leased address, locks, id races, injected faults,
//! strict parameters, tags, missing containers and the lagging cluster view.
//! The simulator's control API (`/_sim/…`) injects faults and reads its log.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis::proxmox::{
    CreateLxc, Endpoint, ErrorKind, ID_TAG_PREFIX, Net, NetIp, OWNER_TAG_PREFIX, ProxmoxClient, ProxmoxError, RootFs,
    Tags, TlsTrust, Upid,
};
use serde_json::{Value, json};

pub(crate) const TOKEN_ID: &str = "root@pam!portcullis";
pub(crate) const SECRET: &str = "5f0b6c2e-8d7a-4c1e-9b3f-2a6d4e8c1f00";
const NODE: &str = "pve1";
pub(crate) const TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";
const WAIT: Duration = Duration::from_secs(4);
const POLL: Duration = Duration::from_millis(20);

/// A running `pve-sim`, killed on drop (and it exits by itself when this
/// process dies, through `--exit-with-stdin`). `start` adds node `pve1`
/// (16 cores, 64 GiB, 100 GiB) and 100 ms tasks unless `extra` gives
/// `--node` or `--task-ms`.
pub(crate) struct Sim {
    child: Child,
    _stdin: ChildStdin,
    pub(crate) url: String,
    pub(crate) fingerprint: String,
    dir: tempfile::TempDir,
    control: reqwest::Client,
}

impl Sim {
    pub(crate) fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        let mut child = Command::new(env!("CARGO_BIN_EXE_pve-sim"))
            .args(["--listen", "127.0.0.1:0", "--token", &format!("{TOKEN_ID}={SECRET}")])
            .arg("--exit-with-stdin")
            .args(if extra.contains(&"--node") {
                &[][..]
            } else {
                &["--node", "pve1:cores=16,memory=64G,disk=100G"][..]
            })
            .args(if extra.contains(&"--task-ms") { &[][..] } else { &["--task-ms", "100"][..] })
            .arg("--ca-out")
            .arg(&ca)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start pve-sim");
        let stdin = child.stdin.take().expect("stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read the start-up line");
        let rest =
            line.trim().strip_prefix("pve-sim listening on ").unwrap_or_else(|| panic!("start-up line: {line:?}"));
        let (url, fp) = rest.split_once(" sha256=").expect("URL and fingerprint");
        assert_eq!(fp.len(), 95, "upper-case hex pairs with colons: {fp}");
        assert!(fp.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b) || b == b':'));
        let control = reqwest::Client::builder().tls_danger_accept_invalid_certs(true).build().expect("client");
        Sim { child, _stdin: stdin, url: url.to_string(), fingerprint: fp.to_string(), dir, control }
    }

    fn endpoint(&self, tls: TlsTrust) -> Endpoint {
        Endpoint { base_url: self.url.clone(), token_id: TOKEN_ID.into(), token_secret: SECRET.into(), tls }
    }

    /// A client that pins the simulator's certificate.
    pub(crate) fn client(&self) -> ProxmoxClient {
        ProxmoxClient::new(&self.endpoint(TlsTrust::Fingerprint(self.fingerprint.clone()))).expect("client")
    }

    pub(crate) async fn ctl(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.control.request(method, format!("{}/_sim/{path}", self.url));
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.expect("control request");
        assert!(resp.status().is_success(), "control {path}: {}", resp.status());
        let body: Value = serde_json::from_slice(&resp.bytes().await.expect("control body")).expect("control JSON");
        body["data"].clone()
    }

    pub(crate) async fn fault(&self, body: Value) {
        self.ctl(reqwest::Method::POST, "faults", Some(body)).await;
    }

    pub(crate) async fn requests(&self) -> Vec<Value> {
        self.ctl(reqwest::Method::GET, "requests", None).await.as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spec(vmid: u32) -> CreateLxc {
    CreateLxc {
        vmid,
        ostemplate: TEMPLATE.into(),
        hostname: Some(format!("ct{vmid}")),
        cores: Some(2),
        memory_mib: Some(1024),
        swap_mib: Some(0),
        rootfs: Some(RootFs { storage: "local-lvm".into(), size_gib: 8 }),
        unprivileged: Some(true),
        ..CreateLxc::default()
    }
}

/// Creates container `vmid` and waits for the task.
pub(crate) async fn create(c: &ProxmoxClient, vmid: u32) {
    let upid = c.create_lxc(NODE, &spec(vmid)).await.expect("create");
    c.wait_task(&upid, WAIT, POLL).await.expect("create task");
}

fn assert_kind(e: &ProxmoxError, kind: ErrorKind, message: &str) {
    assert_eq!(e.message, message, "{e}");
    assert_eq!(e.kind(), kind, "{e}");
}

#[tokio::test]
async fn auth_failures_carry_pve_messages_verbatim() {
    let sim = Sim::start(&[]);
    let good = sim.client();
    assert_eq!(good.version().await.unwrap().version, "8.2.4");

    let wrong = Endpoint {
        token_secret: "not-the-secret".into(),
        ..sim.endpoint(TlsTrust::Fingerprint(sim.fingerprint.clone()))
    };
    let e = ProxmoxClient::new(&wrong).unwrap().version().await.unwrap_err();
    assert_eq!(e.status, 401);
    assert_kind(&e, ErrorKind::Auth, "Authentication failed!");
    let unknown = Endpoint { token_id: "root@pam!other".into(), ..wrong };
    let e = ProxmoxClient::new(&unknown).unwrap().nodes().await.unwrap_err();
    assert_kind(&e, ErrorKind::Auth, "Authentication failed!");

    // No token at all: the reason phrase is PVE's "No ticket".
    let resp = sim.control.get(format!("{}/api2/json/version", sim.url)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let reason = resp.extensions().get::<hyper::ext::ReasonPhrase>().map(|r| r.as_bytes().to_vec());
    assert_eq!(reason.as_deref(), Some(&b"No ticket"[..]));

    // The log names the token but never holds the secret.
    let log = serde_json::to_string(&sim.requests().await).unwrap();
    assert!(log.contains(TOKEN_ID) && !log.contains(SECRET), "{log}");
    assert!(!format!("{good:?}{wrong:?}", wrong = sim.endpoint(TlsTrust::System)).contains(SECRET));
}

#[tokio::test]
async fn certificate_pinning_accepts_exactly_the_pinned_certificate() {
    let sim = Sim::start(&[]);
    // As PVE shows it, and as bare lower-case hex.
    for fp in [sim.fingerprint.clone(), sim.fingerprint.replace(':', "").to_lowercase()] {
        let c = ProxmoxClient::new(&sim.endpoint(TlsTrust::Fingerprint(fp))).unwrap();
        let nodes = c.nodes().await.unwrap();
        assert_eq!(nodes[0].ssl_fingerprint.as_deref(), Some(sim.fingerprint.as_str()));
    }
    let mut wrong_fp = sim.fingerprint.clone();
    wrong_fp.replace_range(0..2, if wrong_fp.starts_with("00") { "11" } else { "00" });
    let e = ProxmoxClient::new(&sim.endpoint(TlsTrust::Fingerprint(wrong_fp))).unwrap().version().await.unwrap_err();
    assert_eq!(e.status, 0);
    assert_eq!(e.kind(), ErrorKind::Other, "{e}");
    assert!(e.message.contains("fingerprint mismatch") && e.message.contains(&sim.fingerprint), "{e}");
    // The system roots do not know the cluster's private CA; its PEM does.
    let e = ProxmoxClient::new(&sim.endpoint(TlsTrust::System)).unwrap().version().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Other, "{e}");
    let ca = std::fs::read_to_string(sim.dir.path().join("ca.pem")).unwrap();
    let c = ProxmoxClient::new(&sim.endpoint(TlsTrust::CaPem(ca))).unwrap();
    assert_eq!(c.version().await.unwrap().release, "8.2");
}

#[tokio::test]
async fn container_lifecycle_with_a_dhcp_lease() {
    let leases = tempfile::tempdir().unwrap();
    std::fs::write(leases.path().join("portcullis.hosts"), "dhcp-host=BC:24:11:AA:BB:01,10.20.30.40,web1\n").unwrap();
    let sim = Sim::start(&["--dhcp-hostsdir", leases.path().to_str().unwrap()]);
    let c = sim.client();

    let vmid = c.next_id().await.unwrap();
    assert_eq!(vmid, 100);
    let mut net = Net::new("eth0", "vmbr0");
    net.hwaddr = Some("BC:24:11:AA:BB:01".into());
    net.ip = Some(NetIp::Dhcp);
    let mut tags = Tags::new();
    tags.set_value(ID_TAG_PREFIX, "0190f3c2-7e1d-7000-8000-00000000abcd").unwrap();
    let create = CreateLxc { net0: Some(net), tags, password: Some("root-pass-1".into()), ..spec(vmid) };
    let upid = c.create_lxc(NODE, &create).await.unwrap();
    assert_eq!((upid.node(), upid.task_type(), upid.id(), upid.user()), (NODE, "vzcreate", "100", TOKEN_ID));
    assert!(upid.as_str().starts_with("UPID:pve1:"), "{upid}");
    c.wait_task(&upid, WAIT, POLL).await.unwrap();

    let status = c.lxc_status(NODE, vmid).await.unwrap();
    assert!(!status.is_running() && status.lock.is_none());
    assert_eq!(status.maxmem, 1024 << 20);
    assert_eq!(c.interfaces(NODE, vmid).await.unwrap(), None, "no interfaces while stopped");
    let config = c.lxc_config(NODE, vmid).await.unwrap();
    assert_eq!(config.net(0).unwrap().hwaddr.as_deref(), Some("BC:24:11:AA:BB:01"));
    assert_eq!(config.rootfs().unwrap().size_bytes, Some(8 << 30));
    assert!(config.unprivileged());
    assert_eq!(config.get("password"), None, "PVE does not store the password");
    assert_eq!(config.tags().value(ID_TAG_PREFIX).as_deref(), Some("0190f3c2-7e1d-7000-8000-00000000abcd"));

    let start = c.start(NODE, vmid).await.unwrap();
    assert_eq!(start.task_type(), "vzstart");
    c.wait_task(&start, WAIT, POLL).await.unwrap();
    assert!(c.lxc_status(NODE, vmid).await.unwrap().is_running());
    let ifaces = c.interfaces(NODE, vmid).await.unwrap().expect("interfaces while running");
    let eth0 = ifaces.iter().find(|i| i.name == "eth0").expect("eth0");
    assert_eq!(eth0.hwaddr.as_deref(), Some("bc:24:11:aa:bb:01"));
    assert_eq!(eth0.inet.as_deref(), Some("10.20.30.40/24"));
    assert_eq!(eth0.ipv4(), Some("10.20.30.40".parse().unwrap()));
    assert!(ifaces.iter().any(|i| i.name == "lo"));
    let node = c.node_status(NODE).await.unwrap();
    assert_eq!(node.memory.total, 64 << 30);
    assert_eq!(node.memory.used, 1024 << 20, "a running container's memory counts as used");
    assert_eq!(node.rootfs.used, 8 << 30);

    let stop = c.stop(NODE, vmid).await.unwrap();
    c.wait_task(&stop, WAIT, POLL).await.unwrap();
    assert!(!c.lxc_status(NODE, vmid).await.unwrap().is_running());
    let delete = c.delete_lxc(NODE, vmid).await.unwrap();
    assert_eq!(delete.task_type(), "vzdestroy");
    c.wait_task(&delete, WAIT, POLL).await.unwrap();
    assert_eq!(c.lxc_status(NODE, vmid).await.unwrap_err().kind(), ErrorKind::Missing);
    assert!(c.lxc_list(NODE).await.unwrap().is_empty());

    let log = sim.requests().await;
    let creates: Vec<&Value> = log.iter().filter(|r| r["method"] == "POST" && r["path"] == "/nodes/pve1/lxc").collect();
    assert_eq!(creates.len(), 1, "exactly one create");
    assert_eq!(creates[0]["params"]["password"], "<redacted>");
    assert_eq!(creates[0]["params"]["unprivileged"], "1");
    let deletes: Vec<&Value> = log.iter().filter(|r| r["method"] == "DELETE").collect();
    assert_eq!(deletes[0]["params"], json!({"purge": "1", "destroy-unreferenced-disks": "1"}));
}

#[tokio::test]
async fn the_create_task_holds_the_lock() {
    let sim = Sim::start(&["--task-ms", "700", "--lock-wait-ms", "200"]);
    let c = sim.client();
    let upid = c.create_lxc(NODE, &spec(101)).await.unwrap();

    let t0 = Instant::now();
    let e = c.update_lxc_config(NODE, 101, &[("cores", "4")]).await.unwrap_err();
    assert!(t0.elapsed() >= Duration::from_millis(200), "PUT config waits for the lock first");
    assert_kind(&e, ErrorKind::Locked, "can't lock file '/run/lock/lxc/pve-config-101.lock' - got timeout");
    let e = c.resize(NODE, 101, "rootfs", "+2G").await.unwrap_err();
    assert_kind(&e, ErrorKind::Locked, "CT is locked (create)");
    let e = c.start(NODE, 101).await.unwrap_err();
    assert_kind(&e, ErrorKind::Locked, "CT is locked (create)");
    assert_eq!(c.lxc_config(NODE, 101).await.unwrap().lock().as_deref(), Some("create"));
    assert_eq!(c.lxc_status(NODE, 101).await.unwrap().lock.as_deref(), Some("create"));
    let running = c.task_status(&upid).await.unwrap();
    assert!(!running.is_finished());

    c.wait_task(&upid, WAIT, POLL).await.unwrap();
    c.update_lxc_config(NODE, 101, &[("cores", "4")]).await.unwrap();
    let resize = c.resize(NODE, 101, "rootfs", "+2G").await.unwrap().expect("resize runs as a task");
    c.wait_task(&resize, WAIT, POLL).await.unwrap();
    let config = c.lxc_config(NODE, 101).await.unwrap();
    assert_eq!(config.cores(), Some(4));
    assert_eq!(config.lock(), None);
    assert_eq!(config.rootfs().unwrap().size_bytes, Some(10 << 30));
    let e = c.resize(NODE, 101, "rootfs", "5G").await.unwrap_err();
    assert_kind(&e, ErrorKind::Other, "unable to shrink disk size");
}

#[tokio::test]
async fn taken_vmids_are_already_exists() {
    let sim = Sim::start(&["--task-ms", "20"]);
    let c = sim.client();
    create(&c, 100).await;
    let e = c.create_lxc(NODE, &spec(100)).await.unwrap_err();
    assert_eq!(e.status, 500);
    assert_kind(&e, ErrorKind::AlreadyExists, "CT 100 already exists on node 'pve1'");

    // Someone else takes the id between nextid and create.
    sim.fault(json!({"nextid_collision": 1})).await;
    let raced = c.next_id().await.unwrap();
    assert_eq!(raced, 101);
    let e = c.create_lxc(NODE, &spec(raced)).await.unwrap_err();
    assert_kind(&e, ErrorKind::AlreadyExists, "CT 101 already exists on node 'pve1'");
    let next = c.next_id().await.unwrap();
    assert_eq!(next, 102);
    create(&c, next).await;
}

#[tokio::test]
async fn injected_failures_are_classified() {
    let sim = Sim::start(&["--task-ms", "20"]);
    let c = sim.client();
    sim.fault(json!({"path_prefix": "/nodes/pve1/lxc", "method": "POST", "status": 500, "reason": "proxy handler failed", "count": 1}))
        .await;
    let e = c.create_lxc(NODE, &spec(100)).await.unwrap_err();
    assert_kind(&e, ErrorKind::Transient, "proxy handler failed");
    sim.fault(json!({"path_prefix": "/version", "status": 596, "reason": "Connection timed out"})).await;
    assert_kind(&c.version().await.unwrap_err(), ErrorKind::Transient, "Connection timed out");

    // A failing task: the exit status verbatim, and PVE removes the half-made container.
    sim.fault(json!({"task_fail": {"type": "vzcreate", "message": "unable to create CT 100 - out of inodes"}})).await;
    let upid = c.create_lxc(NODE, &spec(100)).await.unwrap();
    let e = c.wait_task(&upid, WAIT, POLL).await.unwrap_err();
    assert_kind(&e, ErrorKind::Other, "unable to create CT 100 - out of inodes");
    assert_eq!(e.task(), Some(&upid));
    assert_eq!(c.lxc_config(NODE, 100).await.unwrap_err().kind(), ErrorKind::Missing);
    create(&c, 100).await;

    // A task that outlives the wait: Transient, and it still finishes.
    let sim2 = Sim::start(&["--task-ms", "800"]);
    let c2 = sim2.client();
    let upid = c2.create_lxc(NODE, &spec(100)).await.unwrap();
    let e = c2.wait_task(&upid, Duration::from_millis(100), POLL).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient);
    c2.wait_task(&upid, WAIT, POLL).await.unwrap();

    // No answer at all.
    let closed = Endpoint { base_url: format!("https://127.0.0.1:{}", free_port()), ..sim.endpoint(TlsTrust::System) };
    assert_eq!(ProxmoxClient::new(&closed).unwrap().version().await.unwrap_err().kind(), ErrorKind::Transient);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn parameters_are_checked_strictly() {
    let sim = Sim::start(&["--task-ms", "20"]);
    let c = sim.client();
    create(&c, 100).await;
    let e = c.update_lxc_config(NODE, 100, &[("onboot", "True"), ("bogus", "1"), ("memory", "8")]).await.unwrap_err();
    assert_eq!(e.status, 400);
    assert_kind(&e, ErrorKind::InvalidParameters, "Parameter verification failed.");
    assert_eq!(e.errors["onboot"], "type check ('boolean') failed - got 'True'");
    assert_eq!(
        e.errors["bogus"],
        "property is not defined in schema and the schema does not allow additional properties"
    );
    assert_eq!(e.errors["memory"], "value must have a minimum value of 16");
    let bad_create = CreateLxc { extra: vec![("start".into(), "true".into())], ..spec(101) };
    let e = c.create_lxc(NODE, &bad_create).await.unwrap_err();
    assert_eq!(e.errors.keys().collect::<Vec<_>>(), ["start"]);
    c.update_lxc_config(NODE, 100, &[("onboot", "1")]).await.unwrap();

    // JSON bodies: true/false are booleans, "True" is not.
    let url = format!("{}/api2/json/nodes/pve1/lxc/100/config", sim.url);
    let auth = format!("PVEAPIToken={TOKEN_ID}={SECRET}");
    let put = |body: Value| {
        let request = sim.control.put(&url).header("Authorization", &auth).header("Content-Type", "application/json");
        request.body(body.to_string()).send()
    };
    assert_eq!(put(json!({"protection": false, "cores": 3})).await.unwrap().status(), 200);
    assert_eq!(put(json!({"protection": "True"})).await.unwrap().status(), 400);
    assert_eq!(c.lxc_config(NODE, 100).await.unwrap().cores(), Some(3));

    // A stale digest is refused.
    let digest = c.lxc_config(NODE, 100).await.unwrap().digest().unwrap();
    c.update_lxc_config(NODE, 100, &[("cores", "2"), ("digest", &digest)]).await.unwrap();
    let e = c.update_lxc_config(NODE, 100, &[("cores", "1"), ("digest", &digest)]).await.unwrap_err();
    assert!(e.message.starts_with("detected modified configuration"), "{e}");
}

#[tokio::test]
async fn tags_are_normalised_and_keyed_values_survive() {
    let sim = Sim::start(&["--task-ms", "20"]);
    let c = sim.client();
    let mut tags = Tags::parse("Web").unwrap();
    tags.set_value(OWNER_TAG_PREFIX, "Alice.Smith@Example.org").unwrap();
    let create = CreateLxc { tags, ..spec(100) };
    let upid = c.create_lxc(NODE, &create).await.unwrap();
    c.wait_task(&upid, WAIT, POLL).await.unwrap();
    // PVE's own normalisation of whatever a human typed.
    c.update_lxc_config(NODE, 100, &[("tags", "Zeta;alpha,ALPHA beta;owner-_41lice")]).await.unwrap();
    let config = c.lxc_config(NODE, 100).await.unwrap();
    assert_eq!(config.get("tags").as_deref(), Some("alpha;beta;owner-_41lice;zeta"));
    assert_eq!(config.tags().value(OWNER_TAG_PREFIX).as_deref(), Some("Alice"));

    let upid = c.create_lxc(NODE, &create_with_owner(101, "Alice.Smith@Example.org")).await.unwrap();
    c.wait_task(&upid, WAIT, POLL).await.unwrap();
    let listed = c.lxc_list(NODE).await.unwrap();
    let ct = listed.iter().find(|s| s.vmid == 101).expect("listed with a string vmid");
    assert_eq!(ct.tags().value(OWNER_TAG_PREFIX).as_deref(), Some("Alice.Smith@Example.org"));
    assert_eq!(ct.tags.as_deref(), Some("owner-_41lice._53mith_40_45xample.org;web"));
    let e = c.update_lxc_config(NODE, 100, &[("tags", "ok;-bad")]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidParameters);
}

fn create_with_owner(vmid: u32, owner: &str) -> CreateLxc {
    let mut tags = Tags::parse("web").unwrap();
    tags.set_value(OWNER_TAG_PREFIX, owner).unwrap();
    CreateLxc { tags, ..spec(vmid) }
}

#[tokio::test]
async fn missing_containers_and_state_errors() {
    let sim = Sim::start(&["--task-ms", "20"]);
    let c = sim.client();
    let missing = "Configuration file 'nodes/pve1/lxc/999.conf' does not exist";
    assert_kind(&c.lxc_status(NODE, 999).await.unwrap_err(), ErrorKind::Missing, missing);
    assert_kind(&c.lxc_config(NODE, 999).await.unwrap_err(), ErrorKind::Missing, missing);
    assert_kind(&c.start(NODE, 999).await.unwrap_err(), ErrorKind::Missing, missing);
    assert_kind(&c.delete_lxc(NODE, 999).await.unwrap_err(), ErrorKind::Missing, missing);
    assert_kind(&c.interfaces(NODE, 999).await.unwrap_err(), ErrorKind::Missing, missing);
    let e = c.node_status("nosuch").await.unwrap_err();
    assert!(e.status == 500 && e.message.starts_with("hostname lookup 'nosuch' failed"), "{e}");
    let bogus = Upid::parse("UPID:pve1:00000001:00000001:00000001:vzstart:999:root@pam!portcullis:").unwrap();
    assert!(c.task_status(&bogus).await.is_err());

    create(&c, 100).await;
    let start = c.start(NODE, 100).await.unwrap();
    c.wait_task(&start, WAIT, POLL).await.unwrap();
    assert_kind(&c.start(NODE, 100).await.unwrap_err(), ErrorKind::Other, "CT 100 already running");
    assert_kind(
        &c.delete_lxc(NODE, 100).await.unwrap_err(),
        ErrorKind::Other,
        "unable to destroy CT 100 - container is running",
    );
    // Stopped behind our back (an OOM kill, an admin in the web UI).
    sim.ctl(reqwest::Method::POST, "lxc/100/stop", None).await;
    assert!(!c.lxc_status(NODE, 100).await.unwrap().is_running());
    assert_kind(&c.shutdown(NODE, 100).await.unwrap_err(), ErrorKind::Other, "CT 100 not running");
    sim.ctl(reqwest::Method::DELETE, "lxc/100", None).await;
    assert_eq!(c.lxc_status(NODE, 100).await.unwrap_err().kind(), ErrorKind::Missing);
}

#[tokio::test]
async fn cluster_resources_lag_behind_the_node() {
    let sim = Sim::start(&["--task-ms", "20", "--resources-lag-ms", "700"]);
    let c = sim.client();
    create(&c, 100).await;
    assert!(c.lxc_list(NODE).await.unwrap().iter().any(|s| s.vmid == 100), "the node knows at once");
    assert!(c.cluster_resources_vm().await.unwrap().is_empty(), "the cluster view does not yet");
    let deadline = Instant::now() + Duration::from_secs(3);
    let seen = loop {
        let list = c.cluster_resources_vm().await.unwrap();
        if let Some(r) = list.into_iter().find(|r| r.vmid == 100) {
            break r;
        }
        assert!(Instant::now() < deadline, "the cluster view never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((seen.id.as_str(), seen.kind.as_str(), seen.node.as_str()), ("lxc/100", "lxc", NODE));
    assert_eq!(seen.maxmem, 1024 << 20);
}

#[tokio::test]
async fn lasting_faults_are_seedable_and_pve_shaped() {
    let sim = Sim::start(&["--task-ms", "20", "--node", "pve1", "--node", "pve2:cores=8,memory=32G,disk=100G"]);
    let c = sim.client();

    // A seeded error rate fails the same requests again after the same seed.
    let rule = json!({"seed": 7, "error_rate": 0.5, "path_prefix": "/version", "status": 503, "reason": "busy"});
    sim.fault(rule).await;
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut pattern = Vec::new();
        for _ in 0..24 {
            match c.version().await {
                Ok(_) => pattern.push(true),
                Err(e) => {
                    assert_eq!((e.status, e.kind()), (503, ErrorKind::Transient), "{e}");
                    assert_eq!(e.message, "busy");
                    pattern.push(false);
                }
            }
        }
        runs.push(pattern);
        sim.fault(json!({"seed": 7})).await;
    }
    assert_eq!(runs[0], runs[1], "same seed, same faults");
    assert!(runs[0].contains(&true) && runs[0].contains(&false), "{:?}", runs[0]);
    assert!(c.nodes().await.is_ok(), "other paths are not affected");
    sim.ctl(reqwest::Method::DELETE, "faults", None).await;

    // "after": the create happens, its answer is lost.
    sim.fault(json!({"error_rate": 1, "path_prefix": "/nodes/pve1/lxc", "method": "POST", "after": true})).await;
    let e = c.create_lxc(NODE, &spec(100)).await.unwrap_err();
    assert_eq!((e.status, e.message.as_str()), (500, "injected fault"));
    assert!(c.lxc_list(NODE).await.unwrap().iter().any(|s| s.vmid == 100), "the create went through");
    sim.ctl(reqwest::Method::DELETE, "faults", None).await;

    // Latency on matching paths only.
    sim.fault(json!({"latency_ms": 300, "path_prefix": "/version"})).await;
    let t0 = Instant::now();
    c.version().await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(300));
    let t0 = Instant::now();
    c.nodes().await.unwrap();
    assert!(t0.elapsed() < Duration::from_millis(300));
    sim.ctl(reqwest::Method::DELETE, "faults", None).await;

    // Lock contention: immediate for config changes and power actions, inside the task for delete.
    tokio::time::sleep(Duration::from_millis(100)).await; // the create task above
    sim.fault(json!({"lock_contention": {"rate": 1}})).await;
    let lock = "can't lock file '/run/lock/lxc/pve-config-100.lock' - got timeout";
    assert_kind(&c.start(NODE, 100).await.unwrap_err(), ErrorKind::Locked, lock);
    assert_kind(&c.update_lxc_config(NODE, 100, &[("cores", "4")]).await.unwrap_err(), ErrorKind::Locked, lock);
    let delete = c.delete_lxc(NODE, 100).await.unwrap();
    let e = c.wait_task(&delete, WAIT, POLL).await.unwrap_err();
    assert_eq!(e.message, lock, "{e}");
    assert!(c.lxc_status(NODE, 100).await.is_ok(), "the container stays");
    sim.fault(json!({"lock_contention": {"rate": 0}})).await;
    c.wait_task(&c.start(NODE, 100).await.unwrap(), WAIT, POLL).await.unwrap();

    // nextid collisions at a rate.
    sim.fault(json!({"nextid_collision_rate": 1})).await;
    let raced = c.next_id().await.unwrap();
    assert_kind(
        &c.create_lxc(NODE, &spec(raced)).await.unwrap_err(),
        ErrorKind::AlreadyExists,
        &format!("CT {raced} already exists on node 'pve1'"),
    );
    sim.fault(json!({"nextid_collision_rate": 0})).await;

    // A node that is down: 595 for everything under it, offline in the lists.
    sim.fault(json!({"node_offline": "pve2"})).await;
    let e = c.lxc_list("pve2").await.unwrap_err();
    assert_eq!((e.status, e.message.as_str(), e.kind()), (595, "No route to host", ErrorKind::Transient));
    assert_eq!(c.node_status("pve2").await.unwrap_err().status, 595);
    assert!(c.lxc_list(NODE).await.is_ok());
    let nodes = c.nodes().await.unwrap();
    assert_eq!(nodes.iter().find(|n| n.node == "pve2").map(|n| n.status.as_str()), Some("offline"));
    sim.fault(json!({"node_online": "pve2"})).await;
    assert!(c.lxc_list("pve2").await.unwrap().is_empty());

    // Counters cover every request; they reset on their own.
    let stats = sim.ctl(reqwest::Method::GET, "stats", None).await;
    assert_eq!(stats["by_endpoint"]["POST /nodes/pve1/lxc"], 2, "{stats}");
    assert_eq!(stats["by_status"]["595"], 2, "{stats}");
    assert!(stats["by_endpoint"]["GET /nodes/pve1/tasks/{upid}/status"].as_u64() >= Some(1), "{stats}");
    sim.ctl(reqwest::Method::DELETE, "stats", None).await;
    c.version().await.unwrap();
    assert_eq!(sim.ctl(reqwest::Method::GET, "stats", None).await["total"], 1);
}

#[tokio::test]
async fn without_a_token_one_is_generated_and_printed() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pve-sim"))
        .args(["--listen", "127.0.0.1:0", "--plain-http", "--exit-with-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start pve-sim");
    let _stdin = child.stdin.take();
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let (mut first, mut second) = (String::new(), String::new());
    out.read_line(&mut first).unwrap();
    out.read_line(&mut second).unwrap();
    let url = first.trim().strip_prefix("pve-sim listening on ").unwrap().to_string();
    let token = second.trim().strip_prefix("token: ").unwrap_or_else(|| panic!("token line: {second:?}"));
    let (id, secret) = token.split_once('=').unwrap();
    assert_eq!(id, "root@pam!pve-sim");
    assert!(uuid::Uuid::parse_str(secret).is_ok(), "{secret}");
    let http = reqwest::Client::new();
    let get = |auth: String| http.get(format!("{url}/api2/json/version")).header("Authorization", auth).send();
    assert_eq!(get(format!("PVEAPIToken={token}")).await.unwrap().status(), 200);
    assert_eq!(get(format!("PVEAPIToken={id}=wrong")).await.unwrap().status(), 401);
    let _ = child.kill();
    let _ = child.wait();
}
