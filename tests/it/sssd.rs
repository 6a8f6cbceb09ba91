//! Real SSSD, PAM and OpenSSH against Portcullis.
//!
//! Each test starts a Portcullis server, fills it through the admin CLI, and
//! runs the real `sssd` (and a real `sshd`) in a private mount namespace made
//! by `tests/sssd/sandbox.sh`: private /etc/nsswitch.conf, /etc/sssd,
//! /etc/pam.d, /var/lib/sss, /var/log/sssd, /home and an overlay over /run,
//! so the host's files stay untouched (checked before and after). The
//! sandbox's sssd.conf is built from `sssd-examples/` and its PAM and sshd
//! configuration from `pam-config/`, so those shipped files are what is
//! tested. Commands then run inside the namespace through `nsenter`:
//! `getent`, `id`, `pamtester`, and `sshpass ssh` against the sandbox's sshd.
//!
//! Two runs: rfc2307bis over StartTLS (`sssd-examples/sssd.conf`, with the
//! `ldap_access_filter` snippet) and rfc2307 over LDAPS
//! (`sssd-examples/sssd-rfc2307.conf`). Both verify the server certificate
//! against the generated CA (`ldap_tls_reqcert = demand`).
//!
//! A third test logs in over SSH as users who need push approval, with the
//! reference device (`portcullis device …`) approving, denying or staying
//! silent, and once through an SSSD whose `ldap_opt_timeout` is below
//! Portcullis's deadline, so SSSD abandons and re-sends the waiting bind.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, BASE, TestServer, free_port, require_tool, user_dn, wait_until};

/// The repository root (examples, PAM files, the sandbox script).
const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Upper bound for any single command run against the sandbox.
const COMMAND_TIMEOUT_SECS: &str = "60";
/// The service account SSSD binds as, and its password.
pub const SSSD_ACCOUNT: &str = "sssd";
pub const SSSD_PASSWORD: &str = "sssd-bind-Secret-7";
/// Failed binds that lock an account (Portcullis's default auth.max_failures).
const MAX_FAILURES: usize = 5;

// Users and groups: names that no Debian system account or group uses.
const ALICE: &str = "pcalice";
const ALICE_PW: &str = "alice-Right-pw-1";
const BOB: &str = "pcbob";
const BOB_PW: &str = "bob-Right-pw-2";
const DISABLED: &str = "pcdis";
const DISABLED_PW: &str = "dis-Right-pw-3";
const LOCKED: &str = "pclock";
const LOCKED_PW: &str = "lock-Right-pw-4";
const DEVS: &str = "pcdevs";
const OPS: &str = "pcops";
const WRONG_PW: &str = "definitely-Wrong-9";

// ---------------------------------------------------------------------------
// The two runs
// ---------------------------------------------------------------------------

/// rfc2307bis, StartTLS with the generated CA, logins limited by
/// `ldap_access_filter = (memberOf=cn=pcops,…)` (pcalice is in pcops, pcbob
/// is not).
#[test]
fn sssd_rfc2307bis_starttls_pam_and_ssh() {
    run_scenario(&Scenario {
        example: "sssd.conf",
        schema: "rfc2307bis",
        starttls: true,
        access_filter_group: Some(OPS),
    });
}

/// rfc2307, LDAPS with the generated CA, everybody may log in.
#[test]
fn sssd_rfc2307_ldaps_pam_and_ssh() {
    run_scenario(&Scenario {
        example: "sssd-rfc2307.conf",
        schema: "rfc2307",
        starttls: false,
        access_filter_group: None,
    });
}

struct Scenario {
    /// File under sssd-examples/ the sandbox's sssd.conf is built from.
    example: &'static str,
    /// The ldap_schema that file must set.
    schema: &'static str,
    /// StartTLS on the plain port (true) or LDAPS (false).
    starttls: bool,
    /// Install sssd-examples/conf.d/50-portcullis-access.conf, allowing only
    /// this group.
    access_filter_group: Option<&'static str>,
}

fn run_scenario(sc: &Scenario) {
    for tool in [
        "sssd",
        "sssctl",
        "unshare",
        "nsenter",
        "mount",
        "getent",
        "id",
        "pamtester",
        "sshd",
        "ssh",
        "sshpass",
        "ssh-keygen",
        "ldapwhoami",
        "timeout",
    ] {
        require_tool(tool);
    }
    assert!(Path::new("/usr/sbin/sshd").is_file(), "/usr/sbin/sshd is missing; install openssh-server");
    let host_before = host_fingerprint();

    // nsswitch asks `files` first: ids far from any local account's.
    let server = TestServer::start_with(&[
        ("PORTCULLIS_DIRECTORY__ID_RANGE_START", "1870000"),
        ("PORTCULLIS_DIRECTORY__ID_RANGE_END", "1879999"),
    ]);
    let ids = populate(&server);

    let uri = if sc.starttls {
        format!("ldap://127.0.0.1:{}", server.ldap_port)
    } else {
        format!("ldaps://127.0.0.1:{}", server.ldaps_port)
    };
    let sssd_conf = sandbox_sssd_conf(sc, &server, &uri);
    let mut snippets = Vec::new();
    if let Some(group) = sc.access_filter_group {
        snippets.push(("50-portcullis-access.conf".to_string(), access_snippet(group)));
    }

    let sandbox = Sandbox::start(&sssd_conf, &snippets, ALICE);
    let ctx = Ctx { server: &server, sandbox: &sandbox };

    check_examples_validate(&ctx, sc);
    check_sshd_config(&ctx);
    check_identities(&ctx, &ids, sc);
    check_pam_and_ssh(&ctx, sc);
    check_tls_and_binds(&ctx, sc);

    let mut sandbox = sandbox;
    sandbox.stop();
    let host_after = host_fingerprint();
    assert_host_unchanged(&host_before, &host_after);
}

// ---------------------------------------------------------------------------
// Directory contents
// ---------------------------------------------------------------------------

/// uidNumber/gidNumber the CLI allocated.
struct Ids {
    users: BTreeMap<&'static str, (u32, u32)>,
    groups: BTreeMap<&'static str, u32>,
}

/// Creates the users, groups, memberships and the SSSD service account.
fn populate(server: &TestServer) -> Ids {
    let mut users = BTreeMap::new();
    for (name, pw) in [(ALICE, ALICE_PW), (BOB, BOB_PW), (DISABLED, DISABLED_PW), (LOCKED, LOCKED_PW)] {
        let out = server.cli(&["user", "add", name, "--password-stdin"], Some(&format!("{pw}\n")));
        let nums = numbers(&out);
        assert_eq!(nums.len(), 2, "cannot read uidNumber/gidNumber from `user add {name}` output: {out}");
        users.insert(name, (nums[0], nums[1]));
    }
    let mut groups = BTreeMap::new();
    for name in [DEVS, OPS] {
        let out = server.cli(&["group", "add", name], None);
        let nums = numbers(&out);
        assert_eq!(nums.len(), 1, "cannot read gidNumber from `group add {name}` output: {out}");
        groups.insert(name, nums[0]);
    }
    for (group, user) in [(DEVS, ALICE), (DEVS, BOB), (OPS, ALICE)] {
        server.cli(&["group", "add-member", group, user], None);
    }
    server.add_service(SSSD_ACCOUNT, SSSD_PASSWORD);
    // The server picks up CLI changes within its refresh interval.
    assert!(
        wait_until(Duration::from_secs(10), || ldap_bind_ok(server, &user_dn(LOCKED), LOCKED_PW)),
        "the server does not accept the new user's password; log:\n{}",
        server.log()
    );
    Ids { users, groups }
}

/// The decimal numbers in a CLI message, in order.
fn numbers(text: &str) -> Vec<u32> {
    text.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

/// One simple bind over plain LDAP from loopback with `ldapwhoami`.
pub fn ldap_bind_ok(server: &TestServer, dn: &str, password: &str) -> bool {
    let url = server.ldap_url();
    let out = common::run("ldapwhoami", &["-x", "-H", &url, "-D", dn, "-w", password], &[]);
    out.status.success()
}

// ---------------------------------------------------------------------------
// Configuration built from the shipped examples
// ---------------------------------------------------------------------------

fn read_repo_file(rel: &str) -> String {
    let path = Path::new(REPO).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Replaces `from` (which must occur) with `to`.
pub fn replace_required(text: &str, from: &str, to: &str, file: &str) -> String {
    assert!(text.contains(from), "{file} no longer contains {from:?}; update the test's substitutions");
    text.replace(from, to)
}

/// Adds `key = value` lines at the end of `[section]` (appending a new
/// section if there is none). A later duplicate key wins in SSSD's confdb.
pub fn append_to_section(text: &str, section: &str, lines: &[&str]) -> String {
    let header = format!("[{section}]");
    let all: Vec<&str> = text.lines().collect();
    let Some(start) = all.iter().position(|l| l.trim() == header) else {
        return format!("{text}\n{header}\n{}\n", lines.join("\n"));
    };
    let end =
        all[start + 1..].iter().position(|l| l.trim_start().starts_with('[')).map_or(all.len(), |i| start + 1 + i);
    let mut out: Vec<&str> = all[..end].to_vec();
    out.push("# --- test-only overrides (appended by tests/it/sssd.rs) ---");
    out.extend_from_slice(lines);
    out.push("");
    out.extend_from_slice(&all[end..]);
    out.join("\n") + "\n"
}

/// The sandbox's sssd.conf: the example with the test server's address, CA
/// and service password filled in, plus short cache timeouts so every lookup
/// reaches the server.
fn sandbox_sssd_conf(sc: &Scenario, server: &TestServer, uri: &str) -> String {
    let file = format!("sssd-examples/{}", sc.example);
    let example = read_repo_file(&file);

    // What the example must say for this run to test what it claims.
    let settings = ini_settings(&example, "domain/portcullis");
    let expect = |key: &str, value: &str| {
        assert_eq!(settings.get(key).map(String::as_str), Some(value), "{file}: [domain/portcullis] {key}");
    };
    expect("ldap_schema", sc.schema);
    expect("ldap_tls_reqcert", "demand");
    expect("ldap_id_use_start_tls", if sc.starttls { "true" } else { "false" });
    expect("cache_credentials", "False");
    let opt_timeout: u64 = settings
        .get("ldap_opt_timeout")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{file} must set ldap_opt_timeout"));
    assert!((60..=120).contains(&opt_timeout), "{file}: ldap_opt_timeout should leave room for a push approval");
    assert!(
        !settings.contains_key("ldap_auth_disable_tls_never_use_in_production"),
        "{file} must not allow password binds without TLS"
    );
    assert!(example.contains("WARNING") && example.contains("cache_credentials = True"), "{file}: offline warning");

    let ca = server.ca_path();
    assert!(ca.is_file(), "the server did not write its CA to {}", ca.display());
    let placeholder_uri = if sc.starttls { "ldap://idp.example.org:3890" } else { "ldaps://idp.example.org:6360" };
    let mut conf =
        replace_required(&example, &format!("ldap_uri = {placeholder_uri}\n"), &format!("ldap_uri = {uri}\n"), &file);
    conf = replace_required(
        &conf,
        "ldap_tls_cacert = /etc/sssd/portcullis-ca.pem\n",
        &format!("ldap_tls_cacert = {}\n", ca.display()),
        &file,
    );
    conf = replace_required(
        &conf,
        "ldap_default_authtok = CHANGE-ME\n",
        &format!("ldap_default_authtok = {SSSD_PASSWORD}\n"),
        &file,
    );
    assert!(
        conf.contains(&format!("ldap_default_bind_dn = cn={SSSD_ACCOUNT},ou=services,{BASE}\n")),
        "{file}: bind DN"
    );
    assert!(conf.contains(&format!("ldap_search_base = {BASE}\n")), "{file}: search base");

    conf = append_to_section(&conf, "nss", &["entry_negative_timeout = 1", "memcache_timeout = 0"]);
    conf = append_to_section(&conf, "pam", &["pam_id_timeout = 1"]);
    append_to_section(
        &conf,
        "domain/portcullis",
        &[
            "debug_level = 3",
            "entry_cache_timeout = 1",
            "refresh_expired_interval = 0",
            "offline_timeout = 2",
            "offline_timeout_max = 4",
            "offline_timeout_random_offset = 0",
        ],
    )
}

/// `key = value` pairs of one section (later duplicates win, as in SSSD).
pub fn ini_settings(text: &str, section: &str) -> BTreeMap<String, String> {
    let mut current = String::new();
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
        } else if current == section {
            if let Some((k, v)) = line.split_once('=') {
                out.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
    out
}

/// The access-filter snippet, allowing `group` instead of ssh-users.
fn access_snippet(group: &str) -> String {
    let file = "sssd-examples/conf.d/50-portcullis-access.conf";
    let text = read_repo_file(file);
    let settings = ini_settings(&text, "domain/portcullis");
    assert_eq!(settings.get("access_provider").map(String::as_str), Some("ldap"), "{file}: access_provider");
    replace_required(
        &text,
        &format!("ldap_access_filter = (memberOf=cn=ssh-users,ou=groups,{BASE})"),
        &format!("ldap_access_filter = (memberOf=cn={group},ou=groups,{BASE})"),
        file,
    )
}

// ---------------------------------------------------------------------------
// The sandbox
// ---------------------------------------------------------------------------

/// sssd and sshd in a private mount namespace (tests/sssd/sandbox.sh).
pub struct Sandbox {
    dir: tempfile::TempDir,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    /// A process inside the namespace (the script itself), for nsenter.
    pid: u32,
    ssh_port: u16,
}

impl Sandbox {
    pub fn start(sssd_conf: &str, snippets: &[(String, String)], probe_user: &str) -> Self {
        Self::start_as(sssd_conf, snippets, probe_user, None)
    }

    /// Like `start`, on a machine named `host` (a private UTS namespace)
    /// whose /etc/hosts resolves it to `fqdn` (a private copy), as a
    /// container's hostname and its name in the site's domain.
    pub fn start_as(
        sssd_conf: &str,
        snippets: &[(String, String)],
        probe_user: &str,
        host: Option<(&str, &str)>,
    ) -> Self {
        let dir = tempfile::Builder::new().prefix("portcullis-sssd-").tempdir().expect("sandbox tempdir");
        let w = dir.path();
        if let Some((name, fqdn)) = host {
            std::fs::write(w.join("hostname"), name).expect("write hostname");
            std::fs::write(
                w.join("hosts"),
                format!("127.0.0.1 localhost\n127.0.1.1 {fqdn} {name}\n::1 localhost ip6-localhost ip6-loopback\n"),
            )
            .expect("write hosts");
        }
        std::fs::write(w.join("sssd.conf"), sssd_conf).expect("write sssd.conf");
        std::fs::create_dir_all(w.join("sssd.conf.d")).expect("mkdir sssd.conf.d");
        for (name, text) in snippets {
            std::fs::write(w.join("sssd.conf.d").join(name), text).expect("write sssd snippet");
        }
        std::fs::write(
            w.join("nsswitch.conf"),
            "passwd: files sss\ngroup: files sss\nshadow: files sss\ngshadow: files\n\
             hosts: files dns\nnetworks: files\nprotocols: db files\nservices: db files\n\
             ethers: db files\nrpc: db files\nnetgroup: files\nsudoers: files sss\n",
        )
        .expect("write nsswitch.conf");

        // /etc/pam.d: the host's files plus the ones under test.
        copy_tree(Path::new("/etc/pam.d"), &w.join("pam.d"));
        for name in ["common-auth-sss", "common-account-sss", "common-session-sss", "sshd"] {
            let text = read_repo_file(&format!("pam-config/{name}"));
            std::fs::write(w.join("pam.d").join(name), text).expect("write PAM file");
        }

        // sshd: the shipped drop-in first (sshd keeps the first value of
        // each keyword), then what only a test needs.
        let ssh_port = free_port();
        let key = w.join("ssh_host_ed25519_key");
        let keygen = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "portcullis-test", "-f"])
            .arg(&key)
            .stdin(Stdio::null())
            .output()
            .expect("run ssh-keygen");
        assert!(keygen.status.success(), "ssh-keygen failed: {}", String::from_utf8_lossy(&keygen.stderr));
        let dropin = Path::new(REPO).join("pam-config/sshd_config.d/portcullis.conf");
        std::fs::write(
            w.join("sshd_config"),
            format!(
                "Include {}\n\
                 Port {ssh_port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {}\n\
                 PidFile {}\n\
                 PubkeyAuthentication no\n\
                 AuthorizedKeysFile none\n\
                 PermitRootLogin no\n\
                 UseDNS no\n\
                 PrintMotd no\n\
                 PrintLastLog no\n\
                 LogLevel VERBOSE\n",
                dropin.display(),
                key.display(),
                w.join("sshd.pid").display()
            ),
        )
        .expect("write sshd_config");

        let script = Path::new(REPO).join("tests/sssd/sandbox.sh");
        let stderr = std::fs::File::create(w.join("sandbox.err")).expect("sandbox.err");
        let uts: &[&str] = if host.is_some() { &["--uts"] } else { &[] };
        let mut child = Command::new("unshare")
            .args(uts)
            .args(["--mount", "--propagation", "private", "bash"])
            .arg(&script)
            .arg(w)
            .arg(probe_user)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start unshare");
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("sandbox stdout");
        let sandbox = Sandbox { dir, child: Some(child), stdin, pid, ssh_port };

        // The script bounds its own wait (30 s) and then prints FAILED.
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        assert_eq!(line.trim(), "READY", "the SSSD sandbox did not start: {line}\n{}", sandbox.diagnostics());

        let up = wait_until(Duration::from_secs(15), || TcpStream::connect(("127.0.0.1", ssh_port)).is_ok());
        assert!(up, "sshd did not listen on port {ssh_port}\n{}", sandbox.diagnostics());
        sandbox
    }

    pub fn workdir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs a command inside the sandbox's mount (and UTS) namespace.
    pub fn exec(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-m", "-u", "--", "timeout", COMMAND_TIMEOUT_SECS])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nsenter {args:?}: {e}"));
        if let Some(input) = stdin {
            child.stdin.as_mut().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("nsenter output")
    }

    /// The tail of every log the sandbox wrote, for failure messages.
    pub fn diagnostics(&self) -> String {
        let w = self.workdir();
        let mut files: Vec<PathBuf> = ["sandbox.err", "overlay.err", "sssd.stdout", "sshd-check.err", "sshd.log"]
            .iter()
            .map(|f| w.join(f))
            .collect();
        if let Ok(rd) = std::fs::read_dir(w.join("var-log-sssd")) {
            let mut logs: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
            logs.sort();
            files.extend(logs);
        }
        let mut out = String::from("---- sandbox diagnostics ----\n");
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else { continue };
            if text.trim().is_empty() {
                continue;
            }
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            out.push_str(&format!("== {} (last {} lines)\n{}\n", f.display(), tail.len(), tail.join("\n")));
        }
        out
    }

    /// Closes the script's stdin: it stops sshd and sssd and exits, and the
    /// namespace with its mounts goes away.
    pub fn stop(&mut self) {
        drop(self.stdin.take());
        let Some(mut child) = self.child.take() else { return };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                _ => {
                    // The script hangs: end it and the daemons it started.
                    let _ = child.kill();
                    let _ = child.wait();
                    for f in ["sshd.main.pid", "sssd.monitor.pid"] {
                        let pid = std::fs::read_to_string(self.workdir().join(f)).unwrap_or_default();
                        if let Ok(pid) = pid.trim().parse::<u32>() {
                            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
                        }
                    }
                    break;
                }
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies a directory tree (following symlinks to files).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    let entries = std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.expect("dir entry");
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else if src.is_file() {
            std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        }
    }
}

// ---------------------------------------------------------------------------
// Host fingerprint
// ---------------------------------------------------------------------------

/// Contents of the host files the sandbox shadows, and whether the paths it
/// must never create exist.
pub fn host_fingerprint() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(path: &Path, out: &mut BTreeMap<String, String>) {
        let key = path.display().to_string();
        match std::fs::symlink_metadata(path) {
            Err(_) => {
                out.insert(key, "(absent)".into());
            }
            Ok(md) if md.is_dir() => {
                out.insert(key, "(dir)".into());
                if let Ok(rd) = std::fs::read_dir(path) {
                    for e in rd.filter_map(Result::ok) {
                        walk(&e.path(), out);
                    }
                }
            }
            Ok(md) if md.file_type().is_symlink() => {
                out.insert(key, format!("(symlink to {:?})", std::fs::read_link(path).ok()));
            }
            Ok(md) => {
                let text = match std::fs::read(path) {
                    Ok(bytes) if bytes.len() <= 256 * 1024 => String::from_utf8_lossy(&bytes).into_owned(),
                    Ok(bytes) => format!("({} bytes)", bytes.len()),
                    Err(e) => format!("(unreadable: {e})"),
                };
                out.insert(key, format!("{text}\n(size {})", md.len()));
            }
        }
    }
    // The hostname and /etc/hosts too: container sandboxes set their own.
    for p in ["/etc/nsswitch.conf", "/etc/pam.d", "/etc/sssd", "/etc/hosts", "/proc/sys/kernel/hostname"] {
        walk(Path::new(p), &mut out);
    }
    // Only names here: a host sssd, if one runs, rewrites its own files.
    for p in ["/var/lib/sss", "/var/log/sssd"] {
        fn names(path: &Path, out: &mut BTreeMap<String, String>) {
            out.insert(path.display().to_string(), "(present)".into());
            if path.is_dir() && !path.is_symlink() {
                for e in std::fs::read_dir(path).into_iter().flatten().filter_map(Result::ok) {
                    names(&e.path(), out);
                }
            }
        }
        names(Path::new(p), &mut out);
    }
    for p in ["/run/sssd.pid", "/run/mount/utab", "/run/sshd", "/home/pcalice", "/home/pcbob"] {
        out.insert(p.to_string(), if Path::new(p).exists() { "(exists)" } else { "(absent)" }.to_string());
    }
    out
}

pub fn assert_host_unchanged(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) {
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let changed: Vec<String> = keys
        .into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| format!("{k}: before {:?} / after {:?}", before.get(k), after.get(k)))
        .collect();
    assert!(changed.is_empty(), "the SSSD sandbox changed the host:\n{}", changed.join("\n"));
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

pub struct Ctx<'a> {
    pub server: &'a TestServer,
    pub sandbox: &'a Sandbox,
}

impl Ctx<'_> {
    /// Runs `args` in the sandbox and panics with everything known if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.sandbox.exec(args, None);
        assert!(out.status.success(), "{args:?} failed ({}):\n{}", out.status, self.explain(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn explain(&self, out: &Output) -> String {
        let log = self.server.log();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "stdout: {}\nstderr: {}\n{}\n---- portcullis log (last 30 lines) ----\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.sandbox.diagnostics(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    /// How many failed binds as `user` with reason `why` the server logged.
    fn bind_failures(&self, user: &str, why: &str) -> usize {
        let dn = user_dn(user);
        self.server.log().lines().filter(|l| l.contains("bind failed") && l.contains(&dn) && l.contains(why)).count()
    }

    /// `pamtester sshd USER authenticate` (or another PAM operation) with
    /// `password` on stdin.
    pub fn pam(&self, user: &str, op: &str, password: &str) -> Output {
        self.sandbox.exec(&["pamtester", "-v", "sshd", user, op], Some(&format!("{password}\n")))
    }

    /// `sshpass ssh USER@127.0.0.1 COMMAND` against the sandbox's sshd.
    pub fn ssh(&self, user: &str, password: &str, command: &str) -> Output {
        let port = self.sandbox.ssh_port.to_string();
        let target = format!("{user}@127.0.0.1");
        // ssh keeps the FIRST value given for an option: no duplicates here.
        Command::new("timeout")
            .args([COMMAND_TIMEOUT_SECS, "sshpass", "-e", "ssh", "-F", "/dev/null"])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .args(["-o", "PubkeyAuthentication=no", "-o", "GSSAPIAuthentication=no"])
            .args(["-o", "PreferredAuthentications=keyboard-interactive,password"])
            .args(["-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=20"])
            .args(["-p", &port, &target, command])
            .env("SSHPASS", password)
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null())
            .output()
            .expect("run sshpass ssh")
    }
}

/// SSSD talked TLS and bound to Portcullis as its service account and as
/// the users (no local shortcut answered the logins).
fn check_tls_and_binds(ctx: &Ctx, sc: &Scenario) {
    if sc.starttls {
        let log_path = ctx.sandbox.workdir().join("var-log-sssd/sssd_portcullis.log");
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            log.contains("START TLS result: Success"),
            "SSSD's backend log does not show a successful StartTLS ({})\n{}",
            log_path.display(),
            ctx.sandbox.diagnostics()
        );
    }
    let log = ctx.server.log();
    for dn in [format!("cn={SSSD_ACCOUNT},ou=services,{BASE}"), user_dn(ALICE)] {
        assert!(
            log.lines().any(|l| l.contains("bind succeeded") && l.contains(&dn)),
            "the Portcullis log shows no successful bind as {dn}:\n{log}"
        );
    }
}

/// `sssctl config-check` finds nothing wrong with the shipped example (and
/// snippet) as they are.
fn check_examples_validate(ctx: &Ctx, sc: &Scenario) {
    use std::os::unix::fs::PermissionsExt;
    let dir = ctx.sandbox.workdir().join("examples");
    std::fs::create_dir_all(dir.join("conf.d")).expect("mkdir examples/conf.d");
    let mut files = vec![(format!("sssd-examples/{}", sc.example), dir.join("sssd.conf"))];
    if sc.access_filter_group.is_some() {
        let name = "50-portcullis-access.conf";
        files.push((format!("sssd-examples/conf.d/{name}"), dir.join("conf.d").join(name)));
    }
    for (from, to) in &files {
        std::fs::write(to, read_repo_file(from)).expect("copy example");
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600)).expect("chmod example");
    }
    let config = dir.join("sssd.conf").display().to_string();
    let snippets = dir.join("conf.d").display().to_string();
    let report = ctx.ok(&["sssctl", "config-check", "-c", &config, "-s", &snippets]);
    assert!(report.contains("Issues identified by validators: 0"), "sssctl config-check on {}:\n{report}", sc.example);
    assert!(report.contains("Messages generated during configuration merging: 0"), "sssctl config-check:\n{report}");
    let used = format!("Used configuration snippet files: {}", files.len() - 1);
    assert!(report.contains(&used), "sssctl config-check did not use the snippet:\n{report}");
}

/// The shipped sshd drop-in is what the sandbox's sshd runs with.
fn check_sshd_config(ctx: &Ctx) {
    let config = ctx.sandbox.workdir().join("sshd_config");
    let effective = ctx.ok(&["/usr/sbin/sshd", "-T", "-f", &config.display().to_string()]);
    for line in ["usepam yes", "kbdinteractiveauthentication yes", "passwordauthentication no"] {
        assert!(
            effective.lines().any(|l| l.trim() == line),
            "sshd -T does not show `{line}` from pam-config/sshd_config.d/portcullis.conf:\n{effective}"
        );
    }
}

/// getent passwd, getent group and id through SSSD.
fn check_identities(ctx: &Ctx, ids: &Ids, sc: &Scenario) {
    for user in [ALICE, BOB] {
        let (uid, gid) = ids.users[user];
        let line = ctx.ok(&["getent", "passwd", user]);
        let fields: Vec<&str> = line.trim().split(':').collect();
        assert_eq!(fields.len(), 7, "getent passwd {user}: {line}");
        assert_eq!(fields[0], user, "getent passwd {user}: {line}");
        assert_eq!(fields[2], uid.to_string(), "uidNumber of {user}: {line}");
        assert_eq!(fields[3], gid.to_string(), "gidNumber of {user}: {line}");
        assert_eq!(fields[5], format!("/home/{user}"), "homeDirectory of {user}: {line}");
        assert_eq!(fields[6], "/bin/bash", "loginShell of {user}: {line}");
    }

    // Lookup by number too (getpwuid).
    let (alice_uid, _) = ids.users[ALICE];
    let by_uid = ctx.ok(&["getent", "passwd", &alice_uid.to_string()]);
    assert!(by_uid.starts_with(&format!("{ALICE}:")), "getent passwd {alice_uid} ({}): {by_uid}", sc.schema);

    for (group, members) in [(DEVS, vec![ALICE, BOB]), (OPS, vec![ALICE])] {
        let line = ctx.ok(&["getent", "group", group]);
        let fields: Vec<&str> = line.trim().split(':').collect();
        assert_eq!(fields.len(), 4, "getent group {group}: {line}");
        assert_eq!(fields[0], group, "getent group {group}: {line}");
        assert_eq!(fields[2], ids.groups[group].to_string(), "gidNumber of {group}: {line}");
        let listed: BTreeSet<&str> = fields[3].split(',').filter(|m| !m.is_empty()).collect();
        let expected: BTreeSet<&str> = members.into_iter().collect();
        assert_eq!(listed, expected, "members of {group} under {} ({line})", sc.schema);
    }

    for (user, groups, not_groups) in [(ALICE, vec![DEVS, OPS], vec![]), (BOB, vec![DEVS], vec![OPS])] {
        let (uid, gid) = ids.users[user];
        let line = ctx.ok(&["id", user]);
        assert!(line.contains(&format!("uid={uid}({user})")), "id {user}: {line}");
        assert!(line.contains(&format!("gid={gid}(")), "id {user}: {line}");
        for g in groups {
            assert!(
                line.contains(&format!("{}({g})", ids.groups[g])),
                "id {user} under {} does not list secondary group {g}: {line}",
                sc.schema
            );
        }
        for g in not_groups {
            assert!(!line.contains(&format!("({g})")), "id {user} lists {g} although {user} is not a member: {line}");
        }
    }
}

/// pamtester and ssh logins: right and wrong passwords, a disabled and a
/// locked-out account, and (with the access filter) a user outside the
/// allowed group.
fn check_pam_and_ssh(ctx: &Ctx, sc: &Scenario) {
    // Controls: the right passwords work before the accounts are disabled or locked.
    for (user, pw) in [(ALICE, ALICE_PW), (DISABLED, DISABLED_PW), (LOCKED, LOCKED_PW)] {
        let out = ctx.pam(user, "authenticate", pw);
        assert!(out.status.success(), "pamtester authenticate {user} (right password) failed:\n{}", ctx.explain(&out));
    }
    let out = ctx.pam(ALICE, "acct_mgmt", "");
    assert!(out.status.success(), "pamtester acct_mgmt {ALICE} failed:\n{}", ctx.explain(&out));

    // Disable one account through the CLI; wait until the server refuses it.
    ctx.server.cli(&["user", "disable", DISABLED], None);
    assert!(
        wait_until(Duration::from_secs(10), || !ldap_bind_ok(ctx.server, &user_dn(DISABLED), DISABLED_PW)),
        "the server still accepts the disabled user's password"
    );

    // Lock another one with MAX_FAILURES wrong binds.
    for i in 1..=MAX_FAILURES {
        assert!(!ldap_bind_ok(ctx.server, &user_dn(LOCKED), WRONG_PW), "wrong password #{i} for {LOCKED} was accepted");
    }
    assert!(
        !ldap_bind_ok(ctx.server, &user_dn(LOCKED), LOCKED_PW),
        "{LOCKED} is not locked after {MAX_FAILURES} failed binds (right password still accepted)"
    );

    // The refusals below must come from Portcullis (SSSD's bind as the user
    // failing for the right reason), not from a broken client side.
    let refusals = [(BOB, "WrongPassword"), (DISABLED, "Disabled"), (LOCKED, "Locked")];
    let before: Vec<usize> = refusals.iter().map(|(u, why)| ctx.bind_failures(u, why)).collect();

    // The slow checks (each failure costs PAM's fail delay) run side by side.
    let remote = "id -un; id -Gn; echo \"HOME=$HOME\"; test -d \"$HOME\" && echo home-exists";
    std::thread::scope(|s| {
        let wrong = s.spawn(|| ctx.pam(BOB, "authenticate", WRONG_PW));
        let disabled = s.spawn(|| ctx.pam(DISABLED, "authenticate", DISABLED_PW));
        let locked = s.spawn(|| ctx.pam(LOCKED, "authenticate", LOCKED_PW));
        let ssh_ok = s.spawn(|| ctx.ssh(ALICE, ALICE_PW, remote));
        let ssh_wrong = s.spawn(|| ctx.ssh(ALICE, WRONG_PW, "id -un"));
        let unknown = s.spawn(|| ctx.pam("pcnobody", "authenticate", WRONG_PW));
        let bob_acct = s.spawn(|| ctx.pam(BOB, "acct_mgmt", ""));
        let ssh_bob = s.spawn(|| ctx.ssh(BOB, BOB_PW, "id -un"));

        let out = wrong.join().expect("thread");
        assert!(!out.status.success(), "pamtester accepted a wrong password for {BOB}:\n{}", ctx.explain(&out));
        let out = disabled.join().expect("thread");
        assert!(!out.status.success(), "pamtester accepted disabled user {DISABLED}:\n{}", ctx.explain(&out));
        let out = locked.join().expect("thread");
        assert!(!out.status.success(), "pamtester accepted locked-out user {LOCKED}:\n{}", ctx.explain(&out));

        let out = unknown.join().expect("thread");
        assert!(!out.status.success(), "pamtester accepted an unknown user:\n{}", ctx.explain(&out));

        let out = ssh_ok.join().expect("thread");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = stdout.lines().collect();
        assert!(
            out.status.success() && lines.first() == Some(&ALICE),
            "ssh login as {ALICE} ({}) did not print the user name:\n{}",
            out.status,
            ctx.explain(&out)
        );
        let groups: BTreeSet<&str> = lines.get(1).map(|l| l.split_whitespace().collect()).unwrap_or_default();
        assert!(groups.contains(DEVS) && groups.contains(OPS), "ssh session groups of {ALICE}: {stdout}");
        assert!(lines.contains(&format!("HOME=/home/{ALICE}").as_str()), "ssh session HOME: {stdout}");
        assert!(lines.contains(&"home-exists"), "pam_mkhomedir did not create the home directory: {stdout}");

        let out = ssh_wrong.join().expect("thread");
        assert!(
            !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains(ALICE),
            "ssh accepted a wrong password for {ALICE}:\n{}",
            ctx.explain(&out)
        );

        for ((user, why), n) in refusals.iter().zip(before) {
            assert!(
                ctx.bind_failures(user, why) > n,
                "no new `bind failed … {why}` for {user} in the Portcullis log: SSSD did not ask the server\n{}",
                ctx.server.log()
            );
        }

        let bob_acct = bob_acct.join().expect("thread");
        let ssh_bob = ssh_bob.join().expect("thread");
        match sc.access_filter_group {
            Some(group) => {
                assert!(
                    !bob_acct.status.success(),
                    "acct_mgmt let {BOB} in although the access filter requires {group}:\n{}",
                    ctx.explain(&bob_acct)
                );
                assert!(
                    !ssh_bob.status.success() && !String::from_utf8_lossy(&ssh_bob.stdout).contains(BOB),
                    "ssh let {BOB} in although the access filter requires {group}:\n{}",
                    ctx.explain(&ssh_bob)
                );
            }
            None => {
                assert!(bob_acct.status.success(), "acct_mgmt refused {BOB}:\n{}", ctx.explain(&bob_acct));
                assert!(
                    ssh_bob.status.success() && String::from_utf8_lossy(&ssh_bob.stdout).trim() == BOB,
                    "ssh login as {BOB} failed:\n{}",
                    ctx.explain(&ssh_bob)
                );
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Push 2FA over SSH
// ---------------------------------------------------------------------------

/// The group whose members need a second factor in the push test.
const MFA_GROUP: &str = "mfausers";
/// Approves (and then logs in again inside the approval window).
const APPROVER: (&str, &str) = ("pcmfaok", "mfaok-Right-pw-1");
/// Denies on the device.
const DENIER: (&str, &str) = ("pcmfano", "mfano-Right-pw-2");
/// Never answers.
const SILENT: (&str, &str) = ("pcmfaidle", "mfaidle-Right-pw-3");
/// Logs in through an SSSD whose ldap_opt_timeout is below the deadline.
const RESENDER: (&str, &str) = ("pcmfaslow", "mfaslow-Right-pw-4");
/// Not in the MFA group.
const PLAIN: (&str, &str) = ("pcplain", "plain-Right-pw-5");
/// Portcullis's mfa.ldap_deadline_secs in this test (50 by default).
const DEADLINE_SECS: u64 = 6;

/// SSH logins through real SSSD and sshd, with the shipped configuration,
/// for users who need push approval (`mfa.required_groups`): approve → in,
/// with exactly one challenge on the device; a second login from the same
/// host inside the approval window needs no push (two at once, as editors
/// open them); deny → out; no answer → out at the deadline, while another
/// user's login goes through undelayed; and an SSSD that gives up before
/// the deadline (ldap_opt_timeout below it, so it abandons the bind and
/// re-sends it) still makes only one push and takes its approval.
#[test]
fn ssh_login_with_push_approval() {
    use crate::mfa_ldap::{Device, pushes};
    for tool in ["sssd", "unshare", "nsenter", "mount", "getent", "sshd", "ssh", "sshpass", "ssh-keygen", "timeout"] {
        require_tool(tool);
    }
    assert!(Path::new("/usr/sbin/sshd").is_file(), "/usr/sbin/sshd is missing; install openssh-server");
    let host_before = host_fingerprint();

    let deadline = DEADLINE_SECS.to_string();
    let server = TestServer::start_with(&[
        ("PORTCULLIS_DIRECTORY__ID_RANGE_START", "1880000"),
        ("PORTCULLIS_DIRECTORY__ID_RANGE_END", "1889999"),
        ("PORTCULLIS_MFA__REQUIRED_GROUPS", "[\"mfausers\"]"),
        ("PORTCULLIS_MFA__LDAP_DEADLINE_SECS", &deadline),
    ]);
    server.cli(&["group", "add", MFA_GROUP], None);
    for (user, pw) in [APPROVER, DENIER, SILENT, RESENDER, PLAIN] {
        server.cli(&["user", "add", user, "--password-stdin"], Some(&format!("{pw}\n")));
        if user != PLAIN.0 {
            server.cli(&["group", "add-member", MFA_GROUP, user], None);
        }
    }
    server.add_service(SSSD_ACCOUNT, SSSD_PASSWORD);
    // Devices enroll against the server's snapshot, which follows the CLI within a second.
    server.settle();
    let device = |user: &str| Device::enroll(&server, user);
    let (approver, denier, silent, resender) =
        (device(APPROVER.0), device(DENIER.0), device(SILENT.0), device(RESENDER.0));
    assert!(
        wait_until(Duration::from_secs(10), || ldap_bind_ok(&server, &user_dn(PLAIN.0), PLAIN.1)),
        "the server does not accept the new users; log:\n{}",
        server.log()
    );

    let sc = Scenario { example: "sssd-rfc2307.conf", schema: "rfc2307", starttls: false, access_filter_group: None };
    let uri = format!("ldaps://127.0.0.1:{}", server.ldaps_port);
    let sssd_conf = sandbox_sssd_conf(&sc, &server, &uri);
    let opt_timeout: u64 = ini_settings(&sssd_conf, "domain/portcullis")["ldap_opt_timeout"].parse().expect("number");
    assert!(opt_timeout > DEADLINE_SECS + 10, "the shipped ldap_opt_timeout must exceed the deadline");
    let sandbox = Sandbox::start(&sssd_conf, &[], PLAIN.0);
    let ctx = Ctx { server: &server, sandbox: &sandbox };
    check_sshd_config(&ctx);
    let effective =
        ctx.ok(&["/usr/sbin/sshd", "-T", "-f", &ctx.sandbox.workdir().join("sshd_config").display().to_string()]);
    assert!(effective.lines().any(|l| l.trim() == "logingracetime 120"), "LoginGraceTime:\n{effective}");

    // A login without MFA, for comparison.
    let started = Instant::now();
    let out = ctx.ssh(PLAIN.0, PLAIN.1, "id -un");
    assert!(ssh_as(&out, PLAIN.0), "ssh as {} failed:\n{}", PLAIN.0, ctx.explain(&out));
    let plain_baseline = started.elapsed();

    // 1. Approve: exactly one challenge reaches the device, then the login completes.
    std::thread::scope(|s| {
        let login = s.spawn(|| ctx.ssh(APPROVER.0, APPROVER.1, "id -un"));
        let open = approver.wait_for_challenges(&server, Duration::from_secs(20));
        assert_eq!(open.len(), 1, "one login, one challenge: {open:?}");
        let what = open[0]["what"].as_str().unwrap_or_default();
        assert_eq!(what, "SSH login to 127.0.0.1", "{open:?}");
        // SSSD sends one bind per login: nothing else arrives while it waits.
        std::thread::sleep(Duration::from_secs(1));
        let still = approver.pending(&server, 0);
        assert!(still.len() == 1 && still[0]["id"] == open[0]["id"], "{still:?}");
        assert!(!login.is_finished(), "the login must wait for the approval");
        approver.answer(&server, &open[0], "approve");
        let out = login.join().expect("thread");
        assert!(ssh_as(&out, APPROVER.0), "approved ssh login failed:\n{}", ctx.explain(&out));
    });
    assert_eq!(pushes(&server, APPROVER.0), 1);

    // 2. Inside the approval window, two more logins from the same host at
    //    once: no push, no wait.
    std::thread::scope(|s| {
        let logins: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let started = Instant::now();
                    (ctx.ssh(APPROVER.0, APPROVER.1, "id -un"), started.elapsed())
                })
            })
            .collect();
        for login in logins {
            let (out, took) = login.join().expect("thread");
            assert!(ssh_as(&out, APPROVER.0), "login inside the approval window failed:\n{}", ctx.explain(&out));
            assert!(took < Duration::from_secs(DEADLINE_SECS), "it waited {took:?}");
        }
    });
    assert_eq!(pushes(&server, APPROVER.0), 1, "no new push inside the approval window");
    assert!(approver.pending(&server, 0).is_empty());

    // 3. Deny: the login fails.
    std::thread::scope(|s| {
        let login = s.spawn(|| ctx.ssh(DENIER.0, DENIER.1, "id -un"));
        let open = denier.wait_for_challenges(&server, Duration::from_secs(20));
        assert_eq!(open.len(), 1, "{open:?}");
        denier.answer(&server, &open[0], "deny");
        let out = login.join().expect("thread");
        assert!(!out.status.success() && !ssh_as(&out, DENIER.0), "denied login got in:\n{}", ctx.explain(&out));
    });
    assert_eq!(pushes(&server, DENIER.0), 1);
    assert!(ctx.bind_failures(DENIER.0, "push denied") >= 1, "log:\n{}", server.log());

    // 4. No answer: the login fails at the deadline; meanwhile a login
    //    without MFA goes through as fast as before.
    std::thread::scope(|s| {
        let started = Instant::now();
        let login = s.spawn(|| ctx.ssh(SILENT.0, SILENT.1, "id -un"));
        let open = silent.wait_for_challenges(&server, Duration::from_secs(20));
        assert_eq!(open.len(), 1, "{open:?}");
        let plain_started = Instant::now();
        let out = ctx.ssh(PLAIN.0, PLAIN.1, "id -un");
        let plain_took = plain_started.elapsed();
        assert!(ssh_as(&out, PLAIN.0), "ssh as {} failed:\n{}", PLAIN.0, ctx.explain(&out));
        assert!(!login.is_finished(), "the pending login ended before the other user's login did");
        assert!(
            plain_took < plain_baseline + Duration::from_secs(3),
            "a login without MFA took {plain_took:?} while a push was pending ({plain_baseline:?} before)"
        );
        let out = login.join().expect("thread");
        let took = started.elapsed();
        assert!(!out.status.success() && !ssh_as(&out, SILENT.0), "unanswered login got in:\n{}", ctx.explain(&out));
        assert!(
            took >= Duration::from_secs(DEADLINE_SECS) && took < Duration::from_secs(DEADLINE_SECS + 10),
            "an unanswered login should fail at the {DEADLINE_SECS} s deadline, took {took:?}"
        );
    });
    assert_eq!(pushes(&server, SILENT.0), 1);
    assert!(ctx.bind_failures(SILENT.0, "no push answer before the LDAP deadline") >= 1, "log:\n{}", server.log());

    let mut sandbox = sandbox;
    sandbox.stop();

    // 5. SSSD with ldap_opt_timeout (2 s) below the deadline: it abandons
    //    the waiting bind and re-sends it on a new connection. The re-sent
    //    binds join the same challenge: one push, and the approval lets the
    //    login in.
    let impatient = append_to_section(&sssd_conf, "domain/portcullis", &["ldap_opt_timeout = 2"]);
    let sandbox = Sandbox::start(&impatient, &[], PLAIN.0);
    let ctx = Ctx { server: &server, sandbox: &sandbox };
    std::thread::scope(|s| {
        let started = Instant::now();
        let login = s.spawn(|| ctx.ssh(RESENDER.0, RESENDER.1, "id -un"));
        let open = resender.wait_for_challenges(&server, Duration::from_secs(20));
        assert_eq!(open.len(), 1, "{open:?}");
        // Let SSSD give up on the first bind at least once.
        std::thread::sleep(Duration::from_millis(4500).saturating_sub(started.elapsed()));
        let still = resender.pending(&server, 0);
        assert!(still.len() == 1 && still[0]["id"] == open[0]["id"], "re-sent binds made new challenges: {still:?}");
        resender.answer(&server, &open[0], "approve");
        let out = login.join().expect("thread");
        assert!(ssh_as(&out, RESENDER.0), "login with re-sent binds failed:\n{}", ctx.explain(&out));
    });
    assert_eq!(pushes(&server, RESENDER.0), 1, "SSSD's re-sent binds made no new push");
    let approved_binds = server
        .log()
        .lines()
        .filter(|l| l.contains("bind succeeded") && l.contains(&user_dn(RESENDER.0)) && l.contains("push approved"))
        .count();
    assert!(approved_binds >= 2, "SSSD did not re-send the bind (ldap_opt_timeout = 2):\n{}", server.log());
    assert!(!server.log().contains(RESENDER.1), "a password reached the log");

    let mut sandbox = sandbox;
    sandbox.stop();
    let host_after = host_fingerprint();
    assert_host_unchanged(&host_before, &host_after);
}

/// Sites that keep the phones enrolled in their existing push-approval
/// service: SSH logins through real SSSD + sshd are decided by that service
/// (a stand-in speaking its contract): approve lets the login in; reject,
/// its 200 "timeout" and its errors keep it out; a suspended user's login
/// sends no push at all.
#[test]
fn ssh_login_through_the_compatibility_push_service() {
    use crate::mfa_ldap::OldPushService;
    for tool in ["sssd", "unshare", "nsenter", "mount", "getent", "sshd", "ssh", "sshpass", "ssh-keygen", "timeout"] {
        require_tool(tool);
    }
    let host_before = host_fingerprint();
    let old = OldPushService::start();
    let url = format!("http://127.0.0.1:{}", old.port);
    let server = TestServer::start_with(&[
        ("PORTCULLIS_DIRECTORY__ID_RANGE_START", "1890000"),
        ("PORTCULLIS_DIRECTORY__ID_RANGE_END", "1899999"),
        ("PORTCULLIS_MFA__REQUIRED_GROUPS", "[\"cpusers\"]"),
        ("PORTCULLIS_MFA__LDAP_DEADLINE_SECS", "6"),
        ("PORTCULLIS_PUSH__WEBHOOK__URL", url.as_str()),
        ("PORTCULLIS_PUSH__WEBHOOK__MODE", "compat"),
        ("PORTCULLIS_PUSH__WEBHOOK__TIMEOUT_SECS", "4"),
    ]);
    const PW: &str = "compat-Right-pw-1";
    server.cli(&["group", "add", "cpusers"], None);
    for user in ["cpapprove", "cpreject", "cptimeout", "cpforbidden", "cpsuspended"] {
        server.cli(&["user", "add", user, "--password-stdin"], Some(&format!("{PW}\n")));
        server.cli(&["group", "add-member", "cpusers", user], None);
    }
    server.cli(&["user", "add", PLAIN.0, "--password-stdin"], Some(&format!("{}\n", PLAIN.1)));
    server.add_service(SSSD_ACCOUNT, SSSD_PASSWORD);
    assert!(
        wait_until(Duration::from_secs(10), || ldap_bind_ok(&server, &user_dn(PLAIN.0), PLAIN.1)),
        "the server does not accept the new users; log:\n{}",
        server.log()
    );
    let sc = Scenario { example: "sssd-rfc2307.conf", schema: "rfc2307", starttls: false, access_filter_group: None };
    let uri = format!("ldaps://127.0.0.1:{}", server.ldaps_port);
    let sandbox = Sandbox::start(&sandbox_sssd_conf(&sc, &server, &uri), &[], PLAIN.0);
    let ctx = Ctx { server: &server, sandbox: &sandbox };

    let out = ctx.ssh("cpapprove", PW, "id -un");
    assert!(ssh_as(&out, "cpapprove"), "approved login failed:\n{}", ctx.explain(&out));
    let sent = old.requests_for("cpapprove");
    assert_eq!(sent.len(), 1, "one notification per login: {sent:?}");
    assert!(sent[0]["body"]["body"].as_str().unwrap_or_default().contains("SSH login to"), "{sent:?}");
    for user in ["cpreject", "cptimeout", "cpforbidden"] {
        let out = ctx.ssh(user, PW, "id -un");
        assert!(!out.status.success() && !ssh_as(&out, user), "{user} got in:\n{}", ctx.explain(&out));
        assert!(!old.requests_for(user).is_empty(), "{user}: no notification sent");
    }
    // Suspend between logins: no push at all, and no way in.
    server.cli(&["user", "disable", "cpsuspended"], None);
    server.settle();
    let out = ctx.ssh("cpsuspended", PW, "id -un");
    assert!(!out.status.success() && !ssh_as(&out, "cpsuspended"), "suspended user got in:\n{}", ctx.explain(&out));
    assert!(old.requests_for("cpsuspended").is_empty(), "a suspended user's login sent a push");

    let mut sandbox = sandbox;
    sandbox.stop();
    assert_host_unchanged(&host_before, &host_fingerprint());
}

/// Whether an ssh run succeeded and printed `user` (from `id -un`).
pub fn ssh_as(out: &Output, user: &str) -> bool {
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == user
}
