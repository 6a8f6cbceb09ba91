//! Provisioning under stress, end to end: a running Portcullis (its
//! reconciler) against the real `pve-sim` binary, driven only through the
//! admin CLI, at a scale where races show.
//!
//! * Quota race: 50 `container request` processes at once against a quota
//!   of 5 — exactly 5 get a container, every other one is refused naming
//!   the containers limit.
//! * Faults: 100 containers converge to `ready` while 10% of all API
//!   requests fail with a 5xx, 10% of config changes, power actions and
//!   deletes hit a taken lock, and 10% of nextid answers are raced.
//! * Crash safety: `kill -9` at random points while 50 containers are
//!   created and 25 of them deleted again; afterwards nothing is duplicated
//!   or leaked.
//!
//! Every check is against both sides: the store (through the CLI) and what
//! the simulator holds (`/_sim/state`). Each test prints its timings.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};

use crate::common::{BIN, TestServer};
use crate::proxmox::Sim;

/// A simulator, a server wired to it, and dnsmasq's two directories (the
/// simulator reads leases from `dhcp`).
struct Lab {
    sim: Sim,
    server: TestServer,
    _dns: tempfile::TempDir,
    dhcp: PathBuf,
}

/// A simulator with 50 ms tasks and a server whose reconciler passes every
/// second, works on 8 containers at once and retries after 1–2 s, with
/// site `lab` (a /22), node `pve1` (room for a thousand containers), plan
/// `tiny` (1 core, 256 MiB, 1 GiB).
fn lab(grace_secs: &str) -> Lab {
    let dns = tempfile::tempdir().expect("tempdir");
    let (hosts, dhcp) = (dns.path().join("hosts"), dns.path().join("dhcp"));
    std::fs::create_dir_all(&hosts).expect("hosts dir");
    std::fs::create_dir_all(&dhcp).expect("dhcp dir");
    let (hosts_s, dhcp_s) = (hosts.to_string_lossy().into_owned(), dhcp.to_string_lossy().into_owned());
    let sim =
        Sim::start(&["--dhcp-hostsdir", &dhcp_s, "--task-ms", "50", "--node", "pve1:cores=64,memory=256G,disk=2T"]);
    let server = TestServer::start_with(&[
        ("PORTCULLIS_PROVISION__INTERVAL_SECS", "1"),
        ("PORTCULLIS_PROVISION__GRACE_SECS", grace_secs),
        ("PORTCULLIS_PROVISION__RETRY_BASE_SECS", "1"),
        ("PORTCULLIS_PROVISION__RETRY_MAX_SECS", "2"),
        ("PORTCULLIS_PROVISION__MAX_CONCURRENT", "8"),
        ("PORTCULLIS_PROVISION__DNSMASQ__SITE", "lab"),
        ("PORTCULLIS_PROVISION__DNSMASQ__HOSTS_DIR", &hosts_s),
        ("PORTCULLIS_PROVISION__DNSMASQ__DHCP_HOSTS_DIR", &dhcp_s),
    ]);
    let site = ["site", "add", "lab", "--subnet", "10.30.0.0/22", "--gateway", "10.30.0.1"];
    server.cli(&[&site[..], &["--domain", "cluster.internal", "--range", "10.30.0.10-10.30.3.250"]].concat(), None);
    crate::provision::register_node_with(&server, &sim, ["4096", "1048576", "10000"]);
    server.cli(&["plan", "add", "tiny", "--cores", "1", "--memory-mb", "256", "--disk-gb", "1"], None);
    Lab { sim, server, _dns: dns, dhcp }
}

/// `count` posixAccounts `PREFIXNN` and a posixGroup `group` holding all of
/// them, as an OpenLDAP export would have them.
fn users_ldif(prefix: &str, count: usize, group: &str) -> String {
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}{i:03}")).collect();
    let mut out =
        format!("dn: cn={group},ou=Group,dc=example,dc=org\nobjectClass: posixGroup\ncn: {group}\ngidNumber: 9000\n");
    for n in &names {
        out.push_str(&format!("memberUid: {n}\n"));
    }
    for (i, n) in names.iter().enumerate() {
        out.push_str(&format!(
            "\ndn: uid={n},ou=People,dc=example,dc=org\nobjectClass: posixAccount\nobjectClass: account\n\
             uid: {n}\ncn: {n}\nuidNumber: {}\ngidNumber: 9000\nhomeDirectory: /home/{n}\n",
            20_000 + i
        ));
    }
    out
}

/// Imports the users and their group, then entitles the group to `tiny`.
fn import_members(server: &TestServer, prefix: &str, count: usize, group: &str) -> Vec<String> {
    let file = server.dir.path().join(format!("{group}.ldif"));
    std::fs::write(&file, users_ldif(prefix, count, group)).expect("write LDIF");
    let report = server.cli(&["import", "ldif", file.to_str().expect("utf-8 path")], None);
    let created = report.lines().find_map(|l| l.trim_start().strip_prefix("users created:")).map(str::trim);
    assert_eq!(created, Some(count.to_string().as_str()), "{report}");
    server.cli(&["entitlement", "add", group, "tiny"], None);
    (0..count).map(|i| format!("{prefix}{i:03}")).collect()
}

/// Runs the CLI with a server's environment (usable from another thread).
fn cli_with(env: &[(String, String)], args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("run portcullis CLI")
}

/// One line of `container list [--all]`.
#[derive(Debug, Clone)]
struct Row {
    name: String,
    status: String,
    ip: Option<Ipv4Addr>,
    vmid: Option<u32>,
}

/// `container list` (`--all`: with deleted ones). Columns: name, plan,
/// status, address (empty when none), node, vmid, flags.
fn rows(server: &TestServer, all: bool) -> Vec<Row> {
    let args: &[&str] = if all { &["container", "list", "--all"] } else { &["container", "list"] };
    server
        .cli(args, None)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let ip = f.get(3).and_then(|s| s.parse::<Ipv4Addr>().ok());
            let rest = if ip.is_some() { 4 } else { 3 };
            Row {
                name: f[0].to_string(),
                status: f[2].to_string(),
                ip,
                vmid: f.get(rest + 1).and_then(|s| s.parse().ok()),
            }
        })
        .collect()
}

/// A container's id (`container show`).
fn container_id(server: &TestServer, name: &str) -> String {
    let shown = server.cli(&["container", "show", name], None);
    shown.lines().find_map(|l| l.strip_prefix("id:")).map(|s| s.trim().to_string()).expect("id line")
}

/// The simulator's containers.
async fn cts(sim: &Sim) -> Vec<Value> {
    sim.ctl(reqwest::Method::GET, "state", None).await["containers"].as_array().cloned().unwrap_or_default()
}

/// The Portcullis id a CT carries in its tags.
fn id_tag(ct: &Value) -> Option<String> {
    let tags = ct["config"]["tags"].as_str()?;
    tags.split(';').find_map(|t| t.strip_prefix("portcullis-id-")).map(str::to_string)
}

/// A stopped CT the simulator made itself for a nextid race (someone else's).
fn foreign(ct: &Value) -> bool {
    ct["config"]["hostname"].as_str().is_some_and(|h| h.starts_with("race-")) && id_tag(ct).is_none()
}

/// Whether the store and the simulator agree that exactly `live`
/// containers exist and all are ready (the convergence test; the full
/// checks follow in [`check_converged`]).
async fn converged(lab: &Lab, live: usize) -> bool {
    let rows = rows(&lab.server, false);
    if rows.len() != live || rows.iter().any(|r| r.status != "ready") {
        return false;
    }
    let tagged = cts(&lab.sim).await.iter().filter(|c| id_tag(c).is_some()).count();
    tagged == live
}

/// Polls until [`converged`], for at most `limit`; panics with the state
/// of things when it does not happen.
async fn wait_converged(lab: &Lab, live: usize, limit: Duration) -> Duration {
    let t0 = Instant::now();
    while !converged(lab, live).await {
        if t0.elapsed() > limit {
            let rows = rows(&lab.server, true);
            let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
            for r in &rows {
                *by_status.entry(r.status.clone()).or_default() += 1;
            }
            let stuck: Vec<&Row> = rows.iter().filter(|r| r.status != "ready" && r.status != "deleted").collect();
            let sample = stuck.first().map(|r| lab.server.cli(&["container", "events", &r.name], None));
            panic!(
                "not converged to {live} ready containers after {limit:?}: {by_status:?}\nstuck: {stuck:?}\n\
                 events of the first: {sample:?}\nserver log tail:\n{}",
                tail(&lab.server.log(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    t0.elapsed()
}

/// The server log's "provisioning step failed" errors by kind (numbers
/// and UPIDs blanked), for the report.
fn step_errors(log: &str) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("provisioning step failed")) {
        let mut plain = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                chars.by_ref().find(|c| c.is_ascii_alphabetic());
            } else {
                plain.push(c);
            }
        }
        let Some((_, error)) = plain.split_once("error=") else { continue };
        let words: Vec<String> =
            error.split(' ').map(|w| if w.starts_with("UPID:") { "UPID".to_string() } else { w.to_string() }).collect();
        let mut kind = String::new();
        let mut digits = false;
        for c in words.join(" ").chars() {
            if c.is_ascii_digit() {
                if !digits {
                    kind.push('N');
                }
                digits = true;
            } else {
                kind.push(c);
                digits = false;
            }
        }
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The full consistency check once converged: every live container ready
/// with its own address and vmid; exactly one CT per live container, the
/// one the store names, running; no CT of ours for anything else and no
/// CT without our tag (except the simulator's own nextid racers); deleted
/// containers hold no address, vmid or lease file.
async fn check_converged(lab: &Lab) -> usize {
    let live = rows(&lab.server, false);
    let ips: BTreeSet<Ipv4Addr> = live.iter().filter_map(|r| r.ip).collect();
    assert_eq!(ips.len(), live.len(), "every live container holds its own address: {live:?}");
    let vmids: BTreeSet<u32> = live.iter().filter_map(|r| r.vmid).collect();
    assert_eq!(vmids.len(), live.len(), "every live container has its own vmid: {live:?}");
    assert!(live.iter().all(|r| r.status == "ready"), "{live:?}");

    let all_cts = cts(&lab.sim).await;
    let mut by_id: HashMap<String, Vec<&Value>> = HashMap::new();
    let mut racers = 0;
    for ct in &all_cts {
        match id_tag(ct) {
            Some(id) => by_id.entry(id).or_default().push(ct),
            None if foreign(ct) => racers += 1,
            None => panic!("a CT without our tag: {ct}"),
        }
    }
    for (id, list) in &by_id {
        assert_eq!(list.len(), 1, "exactly one CT carries id {id}: {list:?}");
    }
    assert_eq!(by_id.len(), live.len(), "one CT per live container, no orphans");
    for r in &live {
        let id = container_id(&lab.server, &r.name);
        let ct = by_id.get(&id).and_then(|l| l.first()).unwrap_or_else(|| panic!("no CT carries {}'s id {id}", r.name));
        assert_eq!(ct["vmid"].as_u64(), r.vmid.map(u64::from), "{} is the CT the store names: {ct}", r.name);
        assert_eq!(ct["config"]["hostname"], r.name.as_str());
        assert_eq!(ct["status"], "running", "{ct}");
        assert!(lab.dhcp.join(format!("portcullis-{id}")).exists(), "{} has its lease file", r.name);
    }
    let leases = std::fs::read_dir(&lab.dhcp).expect("dhcp dir").filter_map(Result::ok);
    let leases = leases.filter(|e| e.file_name().to_string_lossy().starts_with("portcullis-")).count();
    assert_eq!(leases, live.len(), "a lease file per live container and no other");
    for r in rows(&lab.server, true).iter().filter(|r| r.status == "deleted") {
        assert!(r.ip.is_none() && r.vmid.is_none(), "a deleted container holds nothing: {r:?}");
    }
    racers
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_parallel_requests_never_overrun_a_quota_of_five() {
    let lab = lab("3");
    lab.server.cli(&["user", "add", "racer", "--email", "racer@example.org"], None);
    let quota = ["quota", "set", "user", "racer", "--containers", "5", "--cores", "100"];
    lab.server.cli(&[&quota[..], &["--memory-mb", "100000", "--disk-gb", "1000"]].concat(), None);

    let t0 = Instant::now();
    let children: Vec<_> = (0..50)
        .map(|i| {
            Command::new(BIN)
                .args(["container", "request", &format!("race{i:02}"), "--plan", "tiny", "--owner", "racer"])
                .envs(lab.server.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run portcullis CLI")
        })
        .collect();
    let outputs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().expect("CLI output")).collect();
    let requests = t0.elapsed();
    let (ok, refused): (Vec<&Output>, Vec<&Output>) = outputs.iter().partition(|o| o.status.success());
    let limit = "quota exceeded for user racer: containers would be 6 (5 in use + 1 requested) but 5 are allowed";
    for o in &refused {
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains(limit), "refused for another reason: {stderr}");
    }
    assert_eq!(ok.len(), 5, "exactly five requests succeed");
    assert!(lab.server.cli(&["quota", "show", "user", "racer"], None).contains("containers: 5 of 5"));
    assert_eq!(rows(&lab.server, true).len(), 5, "no refused request left a row behind");

    let took = wait_converged(&lab, 5, Duration::from_secs(40)).await;
    check_converged(&lab).await;
    eprintln!("quota race: 50 requests in {requests:?}, 5 containers ready {took:?} later");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_containers_converge_despite_faults() {
    let lab = lab("3");
    lab.sim
        .fault(json!({"seed": 20_260_101, "error_rate": 0.1, "status": 500, "reason": "proxy handler failed"}))
        .await;
    lab.sim.fault(json!({"lock_contention": {"rate": 0.1}, "nextid_collision_rate": 0.1})).await;
    // Some answers to writes are lost after the write happened (a proxy timeout).
    let lost =
        json!({"error_rate": 0.05, "method": "POST", "after": true, "status": 596, "reason": "Connection timed out"});
    lab.sim.fault(lost).await;

    let t0 = Instant::now();
    import_members(&lab.server, "f", 100, "fleet");
    let setup = t0.elapsed();
    let took = wait_converged(&lab, 100, Duration::from_secs(80)).await;
    let racers = check_converged(&lab).await;

    let stats = lab.sim.ctl(reqwest::Method::GET, "stats", None).await;
    let injected = stats["by_status"]["500"].as_u64().unwrap_or(0);
    assert!(injected > 0 && racers > 0, "the faults happened: {stats}, {racers} raced ids");
    eprintln!(
        "faults: 100 containers ready {took:?} after setup ({setup:?}); {} API calls ({injected} answered 500), \
         {racers} nextid races; by endpoint: {}\nstep errors by kind: {:#?}",
        stats["total"],
        stats["by_endpoint"],
        step_errors(&lab.server.log())
    );

    // Faults off: the next passes change nothing.
    lab.sim.ctl(reqwest::Method::DELETE, "faults", None).await;
    let before = lab.sim.ctl(reqwest::Method::GET, "stats", None).await["by_endpoint"].clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    check_converged(&lab).await;
    let after = lab.sim.ctl(reqwest::Method::GET, "stats", None).await["by_endpoint"].clone();
    let writes = |v: &Value| -> u64 {
        v.as_object()
            .map(|m| m.iter().filter(|(k, _)| !k.starts_with("GET ")).filter_map(|(_, n)| n.as_u64()).sum())
            .unwrap_or(0)
    };
    assert_eq!(writes(&before), writes(&after), "healthy containers get no writes: {before} → {after}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_creates_and_deletes_leaves_no_duplicates_or_leaks() {
    let mut lab = lab("1");
    let t0 = Instant::now();
    let users = import_members(&lab.server, "k", 50, "crew");

    // Every other member leaves the group once the first leaver's container
    // is ready: some deletes hit a CT that is up, some a create in flight,
    // some a container not yet created.
    let env = lab.server.env.clone();
    let leaving: Vec<String> = users.iter().step_by(2).cloned().collect();
    let remover = std::thread::spawn(move || {
        let names: BTreeSet<String> = leaving.iter().map(|u| format!("{u}-tiny")).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let listed = cli_with(&env, &["container", "list"]);
            let text = String::from_utf8_lossy(&listed.stdout);
            let ready = text
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .any(|f| f.len() > 2 && names.contains(f[0]) && f[2] == "ready");
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "no leaver's container became ready:\n{text}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let at = Instant::now();
        for user in &leaving {
            let out = cli_with(&env, &["group", "remove-member", "crew", user]);
            assert!(out.status.success(), "remove {user}: {}", String::from_utf8_lossy(&out.stderr));
        }
        at
    });

    // Five SIGKILLs at random points, each followed by a restart.
    let mut rng = rand::thread_rng();
    let mut kills = Vec::new();
    for _ in 0..5 {
        let delay = Duration::from_millis(rng.gen_range(200..=2000));
        tokio::time::sleep(delay).await;
        let ready = rows(&lab.server, false).iter().filter(|r| r.status == "ready").count();
        kills.push((delay, ready));
        lab.server.restart();
    }
    let removed_at = remover.join().expect("remover thread").duration_since(t0);
    let chaos = t0.elapsed();

    let took = wait_converged(&lab, 25, Duration::from_secs(60)).await;
    let racers = check_converged(&lab).await;
    assert_eq!(racers, 0, "no nextid races were injected");
    let all = rows(&lab.server, true);
    assert_eq!(all.len(), 50, "one row per container ever requested, never a second one: {all:?}");
    let deleted: BTreeSet<&str> = all.iter().filter(|r| r.status == "deleted").map(|r| r.name.as_str()).collect();
    let expected: BTreeSet<String> = users.iter().step_by(2).map(|u| format!("{u}-tiny")).collect();
    assert_eq!(deleted, expected.iter().map(String::as_str).collect(), "exactly the leavers' containers are gone");
    for (i, user) in users.iter().enumerate() {
        let want = if i % 2 == 1 { "containers: 1 of 1" } else { "containers: 0 of 1" };
        let quota = lab.server.cli(&["quota", "show", "user", user], None);
        assert!(quota.contains(want), "{user}: {quota}");
    }
    let calls = lab.sim.ctl(reqwest::Method::GET, "stats", None).await["by_endpoint"].clone();
    let (creates, deletes) = (&calls["POST /nodes/pve1/lxc"], &calls["DELETE /nodes/pve1/lxc/{vmid}"]);
    assert!(deletes.as_u64() >= Some(1), "some leavers' CTs existed and were deleted: {calls}");
    eprintln!(
        "crash: kills (delay, ready at kill) {kills:?} over {chaos:?}, leavers removed from {removed_at:?}; \
         converged {took:?} later; {creates} create and {deletes} delete calls for 50 containers"
    );
    // The name each container got is the one its group membership implies.
    let names: BTreeSet<String> = all.iter().map(|r| r.name.clone()).collect();
    let implied: BTreeSet<String> = users.iter().map(|u| format!("{u}-tiny")).collect();
    assert_eq!(names, implied);
}
