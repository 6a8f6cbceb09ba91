//! Real dnsmasq against the files `portcullis::dnsmasq` writes.
//!
//! DNS: a dnsmasq on 127.0.0.1 and a free port, queried with `dig`, follows
//! every `apply` through inotify alone: a new name appears, a changed address
//! replaces the old one, a removed name becomes NXDOMAIN, all without a
//! restart, and dnsmasq never reads our dot-named temporary files. The
//! rendered configuration snippet passes `dnsmasq --test`.
//!
//! DHCP: in a private network namespace the test makes (`unshare --net`,
//! the host's network is never touched), a veth pair with dnsmasq running
//! the rendered snippet on one end and busybox `udhcpc` on the other. A
//! reserved MAC gets exactly its reserved address, router, domain and name;
//! an unknown MAC gets no lease (static mode); a reservation added later is
//! served without a reload; a changed or removed one takes effect after the
//! SIGHUP that `ApplyReport::dhcp_reload_needed` asks for.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use portcullis::dnsmasq::{ApplyReport, DnsmasqFiles, MacAddr, Reservation, SiteNet};

use crate::common::{require_tool, wait_until};

const DOMAIN: &str = "cluster.internal";
/// How long dnsmasq may take to reflect a file change (inotify is immediate;
/// this only bounds a slow machine).
const SETTLE: Duration = Duration::from_secs(5);
/// Upper bound for any one command run inside the namespace.
const COMMAND_TIMEOUT_SECS: &str = "20";

// Container ids (our UUIDs) and names used by both tests.
const WEB: &str = "0b5e2f4c-8d1a-4c7e-9f00-1a2b3c4d5e6f";
const DB: &str = "7f3d9a10-2b4c-4e5f-8a6b-7c8d9e0f1a2b";

/// Addresses come from 198.18.0.0/15 (reserved for network tests): they
/// exist only as data (DNS test) or inside the test's own namespace (DHCP
/// test), never on a real network.
fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 7, last)
}

fn reservation(id: &str, last: u8, hostname: &str) -> Reservation {
    Reservation {
        container_id: id.to_string(),
        mac: MacAddr::local_from(id.as_bytes()),
        ip: ip(last),
        hostname: hostname.to_string(),
    }
}

fn fqdn(hostname: &str) -> String {
    format!("{hostname}.{DOMAIN}")
}

fn dnsmasq_files(dir: &Path) -> DnsmasqFiles {
    DnsmasqFiles::new(dir.join("hosts"), dir.join("dhcp-hosts"), DOMAIN).expect("DnsmasqFiles::new")
}

/// A running dnsmasq; killed when dropped, whatever the test did.
pub(crate) struct Dnsmasq {
    child: Option<Child>,
    log: PathBuf,
    pid_file: PathBuf,
}

impl Dnsmasq {
    /// Starts `cmd` (a dnsmasq in the foreground logging to `log`) and waits
    /// until it logs that it started.
    fn start(mut cmd: Command, log: PathBuf, pid_file: PathBuf) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dnsmasq: {e}"));
        let mut d = Dnsmasq { child: Some(child), log, pid_file };
        let started = wait_until(SETTLE, || {
            if let Some(Ok(Some(status))) = d.child.as_mut().map(Child::try_wait) {
                panic!("dnsmasq exited at start with {status}; log:\n{}", d.log());
            }
            d.log().contains("started, version") && d.pid().is_some()
        });
        assert!(started, "dnsmasq did not start within {SETTLE:?}; log:\n{}", d.log());
        d
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// dnsmasq's own process id (from its pid file).
    pub(crate) fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pid_file).ok()?.trim().parse().ok()
    }

    fn assert_running(&self) {
        let pid = self.pid().expect("dnsmasq pid file");
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "dnsmasq (pid {pid}) died; log:\n{}", self.log());
    }

    /// Sends SIGHUP and waits until dnsmasq has re-read `dir` (it logs a
    /// `read DIR/…` line per file, and the tests always leave one there).
    fn reload(&self, dir: &Path) {
        let needle = format!("read {}/", dir.display());
        let before = self.log().matches(&needle).count();
        let pid = self.pid().and_then(rustix::process::Pid::from_raw).expect("dnsmasq pid");
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP dnsmasq");
        let reread = wait_until(SETTLE, || self.log().matches(&needle).count() > before);
        assert!(reread, "dnsmasq did not re-read {} after SIGHUP; log:\n{}", dir.display(), self.log());
    }
}

/// A dnsmasq serving DNS on a free 127.0.0.1 port for `domain` from
/// `hosts_dir` (and leases from `dhcp_hosts_dir`), as an admin would run it
/// next to Portcullis; returns it and the port.
pub(crate) fn loopback_dnsmasq(work: &Path, hosts_dir: &Path, dhcp_hosts_dir: &Path, domain: &str) -> (Dnsmasq, u16) {
    require_tool("dnsmasq");
    require_tool("dig");
    let port = free_dns_port();
    let (log, pid_file) = (work.join("dnsmasq.log"), work.join("dnsmasq.pid"));
    let mut cmd = Command::new("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--user=root",
        "--log-queries",
        &format!("--port={port}"),
        &format!("--local=/{domain}/"),
        &format!("--hostsdir={}", hosts_dir.display()),
        &format!("--dhcp-hostsdir={}", dhcp_hosts_dir.display()),
        &format!("--pid-file={}", pid_file.display()),
        &format!("--log-facility={}", log.display()),
    ]);
    (Dnsmasq::start(cmd, log, pid_file), port)
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// DNS: dig against a dnsmasq on 127.0.0.1
// ---------------------------------------------------------------------------

/// A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both).
pub(crate) fn free_dns_port() -> u16 {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
        let port = tcp.local_addr().expect("local addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

/// One `dig` answer: the response status and the A (or PTR) records.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: String,
    pub(crate) records: Vec<String>,
}

/// Asks `server:port` for `args` (a name, or `-x ADDRESS`) with one try.
pub(crate) fn dig(server: &str, port: u16, args: &[&str]) -> Answer {
    let out = Command::new("dig")
        .arg(format!("@{server}"))
        .args(["-p", &port.to_string(), "+time=1", "+tries=1", "+noall", "+comments", "+answer"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run dig: {e}"));
    parse_dig(&String::from_utf8_lossy(&out.stdout))
}

fn parse_dig(text: &str) -> Answer {
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or_default().to_string())
        .unwrap_or_else(|| "NO-RESPONSE".to_string());
    let mut records: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5 && (f[3] == "A" || f[3] == "PTR")).then(|| f[4].to_string())
        })
        .collect();
    records.sort();
    Answer { status, records }
}

pub(crate) fn noerror(records: &[&str]) -> Answer {
    Answer { status: "NOERROR".to_string(), records: records.iter().map(|r| r.to_string()).collect() }
}

/// Polls until `query` answers `expected` (at most [`SETTLE`]).
pub(crate) fn expect_answer(dnsmasq: &Dnsmasq, port: u16, query: &[&str], expected: &Answer) {
    let mut last = None;
    let ok = wait_until(SETTLE, || {
        let got = dig("127.0.0.1", port, query);
        let done = &got == expected;
        last = Some(got);
        done
    });
    assert!(ok, "dig {query:?}: wanted {expected:?}, last answer {last:?}; dnsmasq log:\n{}", dnsmasq.log());
}

#[test]
fn dnsmasq_dns_follows_the_files_without_restart() {
    for tool in ["dnsmasq", "dig"] {
        require_tool(tool);
    }
    let dir = tempfile::Builder::new().prefix("portcullis-dnsmasq-").tempdir().expect("tempdir");
    let files = dnsmasq_files(dir.path());

    // Written before dnsmasq starts: read at start-up.
    let report = files.apply(&[reservation(WEB, 10, "web1")]).expect("apply");
    assert_eq!(report.written, [WEB]);

    let (dnsmasq, port) = loopback_dnsmasq(dir.path(), files.hosts_dir(), files.dhcp_hosts_dir(), DOMAIN);
    let first_pid = dnsmasq.pid();

    expect_answer(&dnsmasq, port, &[&fqdn("web1"), "A"], &noerror(&["198.18.7.10"]));
    expect_answer(&dnsmasq, port, &["-x", "198.18.7.10"], &noerror(&["web1.cluster.internal."]));

    // A new container: a new file, picked up through inotify.
    let report = files.apply(&[reservation(WEB, 10, "web1"), reservation(DB, 20, "db")]).expect("apply");
    assert_eq!((report.written.as_slice(), report.unchanged), ([DB.to_string()].as_slice(), 1));
    expect_answer(&dnsmasq, port, &[&fqdn("db"), "A"], &noerror(&["198.18.7.20"]));

    // A changed address replaces the old one (not added beside it).
    let report = files.apply(&[reservation(WEB, 11, "web1"), reservation(DB, 20, "db")]).expect("apply");
    assert_eq!(report.written, [WEB]);
    expect_answer(&dnsmasq, port, &[&fqdn("web1"), "A"], &noerror(&["198.18.7.11"]));

    // A renamed container: the old name goes, the new one comes.
    files.apply(&[reservation(WEB, 11, "www"), reservation(DB, 20, "db")]).expect("apply");
    expect_answer(&dnsmasq, port, &[&fqdn("www"), "A"], &noerror(&["198.18.7.11"]));
    expect_answer(&dnsmasq, port, &[&fqdn("web1"), "A"], &Answer { status: "NXDOMAIN".into(), records: vec![] });

    // A removed container's name is gone; the others stay.
    let report = files.apply(&[reservation(DB, 20, "db")]).expect("apply");
    assert_eq!(report.removed, [WEB]);
    expect_answer(&dnsmasq, port, &[&fqdn("www"), "A"], &Answer { status: "NXDOMAIN".into(), records: vec![] });
    expect_answer(&dnsmasq, port, &[&fqdn("db"), "A"], &noerror(&["198.18.7.20"]));

    // Nothing changed: nothing rewritten, so dnsmasq sees no event.
    let events = dnsmasq.log().matches("inotify").count();
    assert_eq!(
        files.apply(&[reservation(DB, 20, "db")]).expect("apply"),
        ApplyReport { unchanged: 1, ..ApplyReport::default() }
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(dnsmasq.log().matches("inotify").count(), events, "an unchanged apply caused inotify events");

    // The same process all along, and it never read a temporary file.
    dnsmasq.assert_running();
    assert_eq!(dnsmasq.pid(), first_pid, "dnsmasq was restarted");
    let log = dnsmasq.log();
    assert!(!log.contains("/.portcullis-"), "dnsmasq read a temporary file:\n{log}");
    assert!(log.contains("inotify"), "dnsmasq saw no inotify events:\n{log}");
    drop(dnsmasq);

    // The snippet an admin installs passes dnsmasq's own syntax check.
    // The snippet an admin installs passes dnsmasq's own syntax check, with
    // and without a named bridge.
    let with_bridge = files.clone().with_interface("vmbr1").expect("interface");
    for (name, f) in [("without-interface", &files), ("with-interface", &with_bridge)] {
        let snippet = dir.path().join(format!("portcullis-{name}.conf"));
        let text = f.config_snippet(&site()).expect("config_snippet");
        std::fs::write(&snippet, &text).expect("write snippet");
        let out = Command::new("dnsmasq")
            .arg("--test")
            .arg(format!("--conf-file={}", snippet.display()))
            .stdin(Stdio::null())
            .output()
            .expect("run dnsmasq --test");
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success() && said.contains("syntax check OK"),
            "dnsmasq --test rejected the {name} snippet: {said}\n{text}"
        );
    }
}

/// The test site: 198.18.7.0/24, gateway .1, containers .10-.250.
fn site() -> SiteNet {
    SiteNet {
        subnet: "198.18.7.0/24".parse().expect("subnet"),
        gateway: ip(1),
        range_start: ip(10),
        range_end: ip(250),
        domain: DOMAIN.to_string(),
    }
}

// ---------------------------------------------------------------------------
// DHCP: dnsmasq and udhcpc on a veth pair in a private network namespace
// ---------------------------------------------------------------------------

/// A network namespace of our own, held open by a `sleep` (bounded, in case
/// the test process dies without running destructors). Dropping it ends the
/// sleep; the kernel then deletes the namespace with its veth pair.
struct NetNs {
    anchor: Option<Child>,
    pid: u32,
}

impl NetNs {
    fn new() -> Self {
        let child = Command::new("unshare")
            .args(["--net", "--", "sleep", "300"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run unshare --net: {e}"));
        let pid = child.id();
        let ns = NetNs { anchor: Some(child), pid };
        let own = std::fs::read_link("/proc/self/ns/net").expect("read own netns");
        let moved = wait_until(SETTLE, || {
            std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|ns| ns != own)
                && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        });
        assert!(moved, "unshare --net did not create a network namespace (is this root with CAP_SYS_ADMIN?)");
        ns
    }

    /// A command that runs `args` inside the namespace, bounded in time.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid.to_string(), "-n", "--"]).args(args);
        cmd
    }

    /// Runs `args` inside the namespace (under `timeout`) and returns its output.
    fn run(&self, args: &[&str]) -> Output {
        let mut full = vec!["timeout", COMMAND_TIMEOUT_SECS];
        full.extend_from_slice(args);
        self.command(&full).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run nsenter {args:?}: {e}"))
    }

    /// Runs `args` inside the namespace and asserts success.
    fn ok(&self, args: &[&str]) {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed in the test namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Some(mut child) = self.anchor.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the DHCP client was given.
#[derive(Debug, PartialEq, Eq)]
struct Lease {
    ip: String,
    router: String,
    domain: String,
    hostname: String,
}

/// The client end of the veth pair, with busybox udhcpc.
struct Client<'a> {
    ns: &'a NetNs,
    ifname: &'static str,
    script: PathBuf,
    events: PathBuf,
}

impl Client<'_> {
    /// Sets the client's MAC and asks once for a lease (three discovers a
    /// second apart); `None` when no server offered one.
    fn lease_for(&self, mac: MacAddr) -> Option<Lease> {
        let mac = mac.to_string();
        self.ns.ok(&["ip", "link", "set", self.ifname, "down"]);
        self.ns.ok(&["ip", "link", "set", self.ifname, "address", &mac]);
        self.ns.ok(&["ip", "link", "set", self.ifname, "up"]);
        std::fs::write(&self.events, "").expect("reset udhcpc events");
        let script = self.script.display().to_string();
        let out = self.ns.run(&[
            "busybox",
            "udhcpc",
            "-i",
            self.ifname,
            "-f",
            "-q",
            "-n",
            "-t",
            "3",
            "-T",
            "1",
            "-s",
            &script,
        ]);
        let events = std::fs::read_to_string(&self.events).unwrap_or_default();
        let bound = events.lines().find_map(|l| l.strip_prefix("bound\t"));
        match bound {
            Some(line) => {
                assert!(out.status.success(), "udhcpc bound but failed: {}", String::from_utf8_lossy(&out.stderr));
                let field = |key: &str| {
                    line.split('\t').find_map(|kv| kv.strip_prefix(&format!("{key}="))).unwrap_or_default().to_string()
                };
                Some(Lease {
                    ip: field("ip"),
                    router: field("router"),
                    domain: field("domain"),
                    hostname: field("hostname"),
                })
            }
            None => {
                assert!(!out.status.success(), "udhcpc succeeded without binding: {events}");
                None
            }
        }
    }
}

#[test]
fn dnsmasq_dhcp_leases_only_reserved_macs() {
    for tool in ["dnsmasq", "dig", "busybox", "unshare", "nsenter", "ip", "timeout"] {
        require_tool(tool);
    }
    let dir = tempfile::Builder::new().prefix("portcullis-dhcp-").tempdir().expect("tempdir");
    let files = dnsmasq_files(dir.path()).with_interface("pc-dns0").expect("interface");
    let site = site();

    // The namespace: loopback, and a veth pair whose server end carries the
    // gateway address (dnsmasq serves DHCP only on a subnet it is on).
    let ns = NetNs::new();
    ns.ok(&["ip", "link", "set", "lo", "up"]);
    ns.ok(&["ip", "link", "add", "pc-dns0", "type", "veth", "peer", "name", "pc-cli0"]);
    ns.ok(&["ip", "addr", "add", "198.18.7.1/24", "dev", "pc-dns0"]);
    ns.ok(&["ip", "link", "set", "pc-dns0", "up"]);

    let web = reservation(WEB, 10, "web1");
    let db = reservation(DB, 20, "db");
    for r in [&web, &db] {
        site.check(r).expect("reservation inside the site range");
    }
    files.apply(std::slice::from_ref(&web)).expect("apply");

    // dnsmasq with exactly the snippet an admin would install, plus what a
    // test needs: foreground, files in the temp dir, no host resolv/hosts.
    let conf = dir.path().join("portcullis.conf");
    std::fs::write(&conf, files.config_snippet(&site).expect("config_snippet")).expect("write snippet");
    let log = dir.path().join("dnsmasq.log");
    let pid_file = dir.path().join("dnsmasq.pid");
    let mut cmd = ns.command(&["dnsmasq"]);
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--user=root",
        "--log-dhcp",
        &format!("--conf-file={}", conf.display()),
        &format!("--dhcp-leasefile={}", dir.path().join("leases").display()),
        &format!("--pid-file={}", pid_file.display()),
        &format!("--log-facility={}", log.display()),
    ]);
    let dnsmasq = Dnsmasq::start(cmd, log, pid_file);

    let events = dir.path().join("udhcpc.events");
    let script = dir.path().join("udhcpc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# Records what udhcpc was given; configures nothing.\n\
             printf '%s\\tip=%s\\trouter=%s\\tdomain=%s\\thostname=%s\\n' \
             \"$1\" \"$ip\" \"$router\" \"$domain\" \"$hostname\" >> '{}'\n",
            events.display()
        ),
    )
    .expect("write udhcpc script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod script");
    let client = Client { ns: &ns, ifname: "pc-cli0", script, events };

    let lease = |r: &Reservation| Lease {
        ip: r.ip.to_string(),
        router: site.gateway.to_string(),
        domain: DOMAIN.to_string(),
        hostname: r.hostname.clone(),
    };
    let diag = || format!("dnsmasq log:\n{}", dnsmasq.log());

    // The reserved MAC gets its address, router, domain and name.
    assert_eq!(client.lease_for(web.mac), Some(lease(&web)), "{}", diag());
    // dnsmasq also answers DNS on the bridge for it.
    let answer = parse_dig(&String::from_utf8_lossy(
        &ns.run(&["dig", "@198.18.7.1", "+time=1", "+tries=1", "+noall", "+comments", "+answer", &fqdn("web1"), "A"])
            .stdout,
    ));
    assert_eq!(answer, noerror(&["198.18.7.10"]), "{}", diag());

    // A MAC without a reservation gets nothing (static mode).
    let stranger = MacAddr::local_from(b"no reservation");
    assert_eq!(client.lease_for(stranger), None, "{}", diag());
    assert!(dnsmasq.log().contains(&format!("{stranger} no address available")), "{}", diag());

    // A reservation added while dnsmasq runs is served without a reload.
    let report = files.apply(&[web.clone(), db.clone()]).expect("apply");
    assert!(!report.dhcp_reload_needed, "a new file needs no reload: {report:?}");
    let db_lease = lease(&db);
    let mut got = None;
    let served = wait_until(SETTLE, || {
        got = client.lease_for(db.mac);
        got.as_ref() == Some(&db_lease)
    });
    assert!(served, "new reservation not served: {got:?}; {}", diag());

    // A changed address: dnsmasq needs SIGHUP for dhcp-hostsdir changes.
    let moved = reservation(WEB, 11, "web1");
    let report = files.apply(&[moved.clone(), db.clone()]).expect("apply");
    assert!(report.dhcp_reload_needed, "{report:?}");
    dnsmasq.reload(files.dhcp_hosts_dir());
    assert_eq!(client.lease_for(web.mac), Some(lease(&moved)), "{}", diag());

    // A removed reservation: after the reload its MAC gets nothing.
    let report = files.apply(std::slice::from_ref(&db)).expect("apply");
    assert_eq!((report.removed.as_slice(), report.dhcp_reload_needed), ([WEB.to_string()].as_slice(), true));
    dnsmasq.reload(files.dhcp_hosts_dir());
    assert_eq!(client.lease_for(web.mac), None, "{}", diag());
    assert_eq!(client.lease_for(db.mac), Some(lease(&db)), "{}", diag());

    dnsmasq.assert_running();
    let log = dnsmasq.log();
    assert!(!log.contains("/.portcullis-"), "dnsmasq read a temporary file:\n{log}");
    assert!(!log.contains("bad ") && !log.contains("error"), "dnsmasq complained:\n{log}");
}
