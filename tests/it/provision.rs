//! Provisioning end to end: a running Portcullis (its reconciler) against the
//! real `pve-sim` binary, driven only through the admin CLI. Group
//! membership makes a container appear (created, started, its reserved
//! address confirmed, dnsmasq files written); drift is repaired; leaving
//! the group deletes it after the grace period; a `kill -9` in the middle of
//! a create is adopted, never duplicated; Proxmox errors (a vmid race,
//! injected 500s) are retried and shown verbatim; quotas refuse clearly and
//! file requests an admin approves.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::TestServer;
use crate::proxmox::{SECRET, Sim, TEMPLATE, TOKEN_ID};

/// dnsmasq's two directories (the simulator reads leases from `dhcp`).
struct DnsDirs {
    _dir: tempfile::TempDir,
    hosts: PathBuf,
    dhcp: PathBuf,
}

fn dns_dirs() -> DnsDirs {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hosts, dhcp) = (dir.path().join("hosts"), dir.path().join("dhcp"));
    std::fs::create_dir_all(&hosts).expect("hosts dir");
    std::fs::create_dir_all(&dhcp).expect("dhcp dir");
    DnsDirs { _dir: dir, hosts, dhcp }
}

/// A server like [`server`] but without the node: for tests that register
/// it themselves.
fn server_without_node(dns: &DnsDirs) -> TestServer {
    let (hosts, dhcp) = (dns.hosts.to_string_lossy().into_owned(), dns.dhcp.to_string_lossy().into_owned());
    let server = TestServer::start_with(&[
        ("PORTCULLIS_PROVISION__INTERVAL_SECS", "1"),
        ("PORTCULLIS_PROVISION__RETRY_BASE_SECS", "1"),
        ("PORTCULLIS_PROVISION__DNSMASQ__SITE", "lab"),
        ("PORTCULLIS_PROVISION__DNSMASQ__HOSTS_DIR", &hosts),
        ("PORTCULLIS_PROVISION__DNSMASQ__DHCP_HOSTS_DIR", &dhcp),
    ]);
    let site = ["site", "add", "lab", "--subnet", "10.20.0.0/24", "--gateway", "10.20.0.1"];
    server.cli(&[&site[..], &["--domain", "cluster.internal", "--range", "10.20.0.10-10.20.0.50"]].concat(), None);
    server
}

/// A server whose reconciler passes every second, with a 3-second grace
/// period, writing dnsmasq files for site `lab`; site, node `pve1` (the
/// simulator, pinned by fingerprint), plan `small` and group `students`
/// entitled to it are set up through the CLI.
fn server(sim: &Sim, dns: &DnsDirs) -> TestServer {
    let (hosts, dhcp) = (dns.hosts.to_string_lossy().into_owned(), dns.dhcp.to_string_lossy().into_owned());
    let server = TestServer::start_with(&[
        ("PORTCULLIS_PROVISION__INTERVAL_SECS", "1"),
        ("PORTCULLIS_PROVISION__GRACE_SECS", "3"),
        ("PORTCULLIS_PROVISION__RETRY_BASE_SECS", "1"),
        ("PORTCULLIS_PROVISION__RETRY_MAX_SECS", "2"),
        ("PORTCULLIS_PROVISION__DNSMASQ__SITE", "lab"),
        ("PORTCULLIS_PROVISION__DNSMASQ__HOSTS_DIR", &hosts),
        ("PORTCULLIS_PROVISION__DNSMASQ__DHCP_HOSTS_DIR", &dhcp),
    ]);
    let site = ["site", "add", "lab", "--subnet", "10.20.0.0/24", "--gateway", "10.20.0.1"];
    server.cli(&[&site[..], &["--domain", "cluster.internal", "--range", "10.20.0.10-10.20.0.50"]].concat(), None);
    assert!(register_node(&server, sim).contains("stored encrypted"));
    server.cli(&["plan", "add", "small", "--cores", "1", "--memory-mb", "512", "--disk-gb", "8"], None);
    server.cli(&["group", "add", "students"], None);
    server.cli(&["entitlement", "add", "students", "small"], None);
    server
}

/// Registers the simulator as node `pve1` of site `lab` (certificate
/// pinned); returns the CLI's output (which lists adopted containers).
pub(crate) fn register_node(server: &TestServer, sim: &Sim) -> String {
    register_node_with(server, sim, ["16", "65536", "100"])
}

/// [`register_node`] with a capacity of [cores, memory MiB, disk GiB].
pub(crate) fn register_node_with(server: &TestServer, sim: &Sim, capacity: [&str; 3]) -> String {
    let [cores, memory_mb, disk_gb] = capacity;
    let node = [
        "node",
        "add",
        "pve1",
        "--site",
        "lab",
        "--url",
        &sim.url,
        "--token-id",
        TOKEN_ID,
        "--token-secret-stdin",
        "--fingerprint",
        &sim.fingerprint,
        "--template",
        TEMPLATE,
        "--cores",
        cores,
        "--memory-mb",
        memory_mb,
        "--disk-gb",
        disk_gb,
    ];
    server.cli(&node, Some(SECRET))
}

/// Polls `check` every 200 ms for up to `limit`.
async fn eventually(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The simulator's containers that carry `id` in their Portcullis tag.
async fn ours(sim: &Sim, id: &str) -> Vec<Value> {
    let state = sim.ctl(reqwest::Method::GET, "state", None).await;
    let tag = format!("portcullis-id-{id}");
    state["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["config"]["tags"].as_str().is_some_and(|t| t.split(';').any(|x| x == tag)))
        .collect()
}

async fn creates(sim: &Sim) -> usize {
    sim.requests().await.iter().filter(|r| r["method"] == "POST" && r["path"] == "/nodes/pve1/lxc").count()
}

/// `container show NAME` as field → value.
fn show(server: &TestServer, name: &str) -> std::collections::HashMap<String, String> {
    server
        .cli(&["container", "show", name], None)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn wait_ready(server: &TestServer, name: &str) -> String {
    let out = server.cli_output(&["container", "wait", name, "--timeout", "60"], None);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{name} not ready: {text}\nserver log:\n{}", server.log());
    text
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_follow_group_membership() {
    let dns = dns_dirs();
    let sim = Sim::start(&["--dhcp-hostsdir", &dns.dhcp.to_string_lossy()]);
    let server = server(&sim, &dns);
    let (dnsmasq, port) = crate::dnsmasq::loopback_dnsmasq(dns._dir.path(), &dns.hosts, &dns.dhcp, "cluster.internal");
    server.add_user("alice", "alice-pw-123");
    server.cli(&["group", "add-member", "students", "alice"], None);
    // The name resolves as soon as the container is desired (a real
    // dnsmasq reading the files Portcullis writes).
    let name = ["alice-small.cluster.internal", "A"];
    crate::dnsmasq::expect_answer(&dnsmasq, port, &name, &crate::dnsmasq::noerror(&["10.20.0.10"]));

    // Joining the group: the container is created, started, and ready once
    // eth0 has the address reserved for its MAC.
    let progress = wait_ready(&server, "alice-small");
    for step in ["placed", "creating", "created", "started", "alice-small: ready"] {
        assert!(progress.contains(step), "progress shows {step:?}: {progress}");
    }
    let c = show(&server, "alice-small");
    assert_eq!(c["status"], "ready");
    assert_eq!(c["owner"], "user alice");
    assert!(c["address"].starts_with("10.20.0.10 ("), "{c:?}");
    let (id, mac) = (c["id"].clone(), c["address"].trim_end_matches(')').rsplit('(').next().unwrap().to_string());
    let found = ours(&sim, &id).await;
    assert_eq!(found.len(), 1, "exactly one CT carries the id: {found:?}");
    let ct = &found[0];
    assert_eq!(ct["config"]["hostname"], "alice-small");
    assert_eq!(ct["config"]["cores"], 1);
    assert_eq!(ct["config"]["memory"], 512);
    let net0 = ct["config"]["net0"].as_str().unwrap().to_ascii_lowercase();
    assert!(net0.contains(&format!("hwaddr={mac}")) && net0.contains("ip=dhcp"), "{net0}");
    assert_eq!(creates(&sim).await, 1);
    let lease = read(&dns.dhcp.join(format!("portcullis-{id}")));
    assert!(lease.contains(&mac) && lease.contains("10.20.0.10") && lease.contains("alice-small"), "{lease}");
    let record = read(&dns.hosts.join(format!("portcullis-{id}")));
    assert!(record.contains("10.20.0.10 alice-small.cluster.internal"), "{record}");
    let vmid = ct["vmid"].as_u64().unwrap();

    // Drift: stopped behind our back → started again; deleted → created again.
    sim.ctl(reqwest::Method::POST, &format!("lxc/{vmid}/stop"), None).await;
    eventually(Duration::from_secs(20), "restarted after an out-of-band stop", async || {
        ours(&sim, &id).await.first().is_some_and(|c| c["status"] == "running")
    })
    .await;
    sim.ctl(reqwest::Method::DELETE, &format!("lxc/{vmid}"), None).await;
    eventually(Duration::from_secs(30), "re-created after an out-of-band delete", async || {
        ours(&sim, &id).await.first().is_some_and(|c| c["status"] == "running")
    })
    .await;
    wait_ready(&server, "alice-small");
    let events = server.cli(&["container", "events", "alice-small"], None);
    assert!(events.contains("stopped outside Portcullis"), "{events}");
    assert!(events.contains("deleted outside Portcullis"), "{events}");
    assert_eq!(ours(&sim, &id).await.len(), 1);

    // Leaving the group: kept for the grace period, then deleted everywhere.
    server.cli(&["group", "remove-member", "students", "alice"], None);
    assert!(server.cli(&["container", "list"], None).contains("leaving"));
    eventually(Duration::from_secs(30), "deleted after the grace period", async || ours(&sim, &id).await.is_empty())
        .await;
    eventually(Duration::from_secs(10), "the container row marked deleted", async || {
        !server.cli(&["container", "list"], None).contains("alice-small")
    })
    .await;
    assert!(server.cli(&["container", "list", "--all"], None).contains("alice-small"), "history is kept");
    eventually(Duration::from_secs(10), "dnsmasq files removed", async || {
        !dns.dhcp.join(format!("portcullis-{id}")).exists() && !dns.hosts.join(format!("portcullis-{id}")).exists()
    })
    .await;
    let gone = crate::dnsmasq::dig("127.0.0.1", port, &name);
    assert_eq!(gone.status, "NXDOMAIN", "{gone:?}");
    let audit = server.cli(&["audit", "--limit", "100"], None);
    assert!(audit.contains("container.add") && audit.contains("entitlement.add"), "{audit}");
    for action in ["container.create", "container.start", "container.destroy"] {
        let line = audit.lines().find(|l| l.contains(action)).unwrap_or_else(|| panic!("{action} audited: {audit}"));
        assert!(line.contains("alice-small") && line.contains("UPID:pve1:") && line.contains(": OK"), "{line}");
    }
    assert!(!server.log().contains(SECRET), "the token secret never reaches the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_mid_create_is_adopted_not_duplicated() {
    let dns = dns_dirs();
    let sim = Sim::start(&["--dhcp-hostsdir", &dns.dhcp.to_string_lossy(), "--task-ms", "4000"]);
    let mut server = server(&sim, &dns);
    server.add_user("bob", "bob-pw-1234");
    server.cli(&["group", "add-member", "students", "bob"], None);
    eventually(Duration::from_secs(20), "the create call", async || creates(&sim).await == 1).await;
    server.stop(); // SIGKILL while the create task runs
    server.restart();
    wait_ready(&server, "bob-small");
    let id = show(&server, "bob-small")["id"].clone();
    assert_eq!(ours(&sim, &id).await.len(), 1, "one CT");
    assert_eq!(creates(&sim).await, 1, "never created twice");
    let events = server.cli(&["container", "events", "bob-small"], None);
    assert!(events.contains("creating"), "{events}");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxmox_errors_are_retried_and_shown_verbatim() {
    let dns = dns_dirs();
    let sim = Sim::start(&["--dhcp-hostsdir", &dns.dhcp.to_string_lossy()]);
    let server = server(&sim, &dns);
    server.add_user("carol", "carol-pw-123");
    // The next nextid answer is taken at once (the documented race), and
    // the two creates after that fail with a 500 whose text we must show.
    sim.fault(json!({"nextid_collision": 1})).await;
    let reason = "unable to create CT - storage 'local-lvm' is busy";
    sim.fault(json!({"path_prefix": "/nodes/pve1/lxc", "method": "POST", "status": 500, "reason": reason, "count": 1}))
        .await;
    server.cli(&["group", "add-member", "students", "carol"], None);
    wait_ready(&server, "carol-small");
    let id = show(&server, "carol-small")["id"].clone();
    assert_eq!(ours(&sim, &id).await.len(), 1, "one CT of ours, despite the races");
    let events = server.cli(&["container", "events", "carol-small"], None);
    let raced = events.contains("already exists") || events.contains("belongs to another container");
    assert!(raced, "the vmid race is recorded: {events}");
    assert!(events.contains(reason), "Proxmox's text verbatim: {events}");

    // Quotas: carol's default quota (one container) is used up.
    server.cli(&["plan", "add", "large", "--cores", "4", "--memory-mb", "8192", "--disk-gb", "40"], None);
    let refused = server.cli_output(&["container", "request", "carol-db", "--plan", "large", "--owner", "carol"], None);
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(
        text.contains(
            "quota exceeded for user carol: containers would be 2 (1 in use + 1 requested) but 1 are allowed"
        ),
        "{text}"
    );
    let args = ["container", "request", "carol-db", "--plan", "large", "--owner", "carol", "--file-request"];
    let filed = server.cli(&args, None);
    let request_id =
        filed.lines().find_map(|l| l.strip_prefix("filed as request ")).unwrap().split(' ').next().unwrap();
    assert!(server.cli(&["request", "list"], None).contains("carol-db"));
    server.cli(&["request", "approve", request_id], None);
    wait_ready(&server, "carol-db");
    let quota = server.cli(&["quota", "show", "user", "carol"], None);
    assert!(quota.contains("containers: 2 of 2") && quota.contains("memory:     8704 of 8704 MiB"), "{quota}");

    // Resizing above the quota works the same way: refused, filed, approved,
    // then applied to the running CT (config and a grown disk).
    let args = ["container", "resize", "carol-small", "--plan", "large"];
    let refused = server.cli_output(&args, None);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("quota exceeded for user carol: cores"), "{refused:?}");
    let filed = server.cli(&[&args[..], &["--file-request"]].concat(), None);
    let request_id =
        filed.lines().find_map(|l| l.strip_prefix("filed as request ")).unwrap().split(' ').next().unwrap();
    assert!(server.cli(&["request", "list"], None).contains("resize"));
    server.cli(&["request", "approve", request_id], None);
    wait_ready(&server, "carol-small");
    let ct = ours(&sim, &id).await.remove(0);
    assert_eq!((ct["config"]["cores"].as_u64(), ct["config"]["memory"].as_u64()), (Some(4), Some(8192)), "{ct}");
    assert!(ct["config"]["rootfs"].as_str().unwrap().ends_with("size=40G"), "{ct}");
    assert!(show(&server, "carol-small")["plan"].starts_with("large (4 cores"));
}

#[tokio::test(flavor = "multi_thread")]
async fn registering_a_node_adopts_its_containers() {
    let dns = dns_dirs();
    let sim = Sim::start(&["--dhcp-hostsdir", &dns.dhcp.to_string_lossy()]);
    // Two containers made before Portcullis knew the node; one running.
    let pve = sim.client();
    crate::proxmox::create(&pve, 120).await;
    crate::proxmox::create(&pve, 121).await;
    let upid = pve.start("pve1", 121).await.expect("start");
    pve.wait_task(&upid, Duration::from_secs(5), Duration::from_millis(20)).await.expect("started");

    let server = server_without_node(&dns);
    let out = register_node(&server, &sim);
    assert!(
        out.contains("adopted CT 120 as container ct120") && out.contains("adopted CT 121 as container ct121"),
        "{out}"
    );
    let c = show(&server, "ct121");
    assert_eq!((c["owner"].as_str(), c["origin"].as_str()), ("(unassigned)", "adopted"));
    assert_eq!(c["plan"], "adopted (2 cores, 1024 MiB, 8 GiB)");
    let id = c["id"].clone();
    assert_eq!(ours(&sim, &id).await.len(), 1, "the CT now carries its container id");
    // The reconciler manages them without creating twins: the running one
    // is ready, the stopped one stays stopped.
    wait_ready(&server, "ct121");
    assert_eq!(show(&server, "ct120")["status"], "stopped");
    assert_eq!(creates(&sim).await, 2, "only the two creates made before registration");

    // An admin gives it an owner (whose quota must hold it).
    server.add_user("dora", "dora-pw-1234");
    let out = server.cli(&["container", "assign", "ct121", "--user", "dora"], None);
    assert!(out.contains("now belongs to user dora"), "{out}");
    assert_eq!(show(&server, "ct121")["owner"], "user dora");
    let refused = server.cli_output(&["container", "assign", "ct120", "--user", "dora"], None);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("quota exceeded for user dora: containers"));
}
