//! Who may log in to a container, and who is root there, through real
//! SSSD, PAM, sshd and sudo.
//!
//! The setup goes through the admin CLI only: a site, a plan, group
//! `pcstudents` entitled to one container per member (pcowner, pcother),
//! group `pcteam` entitled to one shared container (pcmate), and an
//! instance-admin group (pcadmin). No Proxmox node is needed: the containers
//! exist (pending) as soon as the memberships do, which is all access needs.
//!
//! For each of two containers, `portcullis container sssd-config NAME`
//! writes the sssd.conf; the harness of `sssd.rs` runs it in a sandbox whose
//! hostname is the container's name (a private UTS namespace) and whose
//! /etc/hosts gives its name in the site's domain. Only sandbox paths are
//! adapted (CA file, the service password, short cache timeouts), as for
//! `sssd-examples/`. Then: the owner (or a member of the owning group) logs
//! in with pamtester and ssh, an instance admin passes the account check,
//! everybody else is refused at the account step although their password is
//! right; `sudo -l -U` lists the full rule for the owner (or the group's
//! members) and nothing for the admin or anyone else. A machine whose
//! hostname differs but whose canonical name is the container's FQDN is
//! matched through that name. On the shared container a user added to the
//! group gets in and gets sudo, and loses both when removed, without
//! touching the container's configuration.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::common::{self, BASE, TestServer, require_tool, service_dn, wait_until};
use crate::sssd::{
    Ctx, SSSD_ACCOUNT, SSSD_PASSWORD, Sandbox, append_to_section, assert_host_unchanged, host_fingerprint,
    ini_settings, ldap_bind_ok, replace_required, ssh_as,
};

/// Names no Debian system account or group uses.
const OWNER: (&str, &str) = ("pcowner", "owner-Right-pw-1");
const MATE: (&str, &str) = ("pcmate", "mate-Right-pw-2");
const OTHER: (&str, &str) = ("pcother", "other-Right-pw-3");
const ADMIN: (&str, &str) = ("pcadmin", "admin-Right-pw-4");
const STUDENTS: &str = "pcstudents";
const TEAM: &str = "pcteam";
const ADMINS: &str = "pcadmins";
const DOMAIN: &str = "lab.test";
/// Containers the entitlements create: `LOGIN-PLAN` and `GROUP-PLAN`.
const OWNED: &str = "pcowner-small";
const OTHERS: &str = "pcother-small";
const SHARED: &str = "pcteam-small";

#[test]
fn container_logins_and_sudo_follow_ownership() {
    for tool in [
        "sssd",
        "sssctl",
        "unshare",
        "nsenter",
        "mount",
        "hostname",
        "getent",
        "pamtester",
        "sshd",
        "ssh",
        "sshpass",
        "ssh-keygen",
        "sudo",
        "ldapsearch",
        "timeout",
    ] {
        require_tool(tool);
    }
    assert!(Path::new("/usr/sbin/sshd").is_file(), "/usr/sbin/sshd is missing; install openssh-server");
    assert!(sudo_plugin_installed(), "SSSD's sudo library (libsss_sudo.so) is missing; install libsss-sudo");
    let host_before = host_fingerprint();

    let server = TestServer::start_with(&[
        ("PORTCULLIS_DIRECTORY__ID_RANGE_START", "1900000"),
        ("PORTCULLIS_DIRECTORY__ID_RANGE_END", "1909999"),
        ("PORTCULLIS_DIRECTORY__ADMIN_GROUP", ADMINS),
        // Containers stay pending: access needs no Proxmox node.
        ("PORTCULLIS_PROVISION__ENABLED", "false"),
    ]);
    populate(&server);
    check_directory(&server);

    // The owner's container.
    let generated = server.cli(&["container", "sssd-config", OWNED], None);
    let fqdn = format!("{OWNED}.{DOMAIN}");
    let sandbox = Sandbox::start_as(&sandbox_conf(&server, &generated), &[], OWNER.0, Some((OWNED, &fqdn)));
    let ctx = Ctx { server: &server, sandbox: &sandbox };
    check_generated_config_validates(&ctx, &generated);
    check_hostname(&ctx, OWNED);
    check_logins(&ctx, OWNED, &[OWNER], &[MATE, OTHER]);
    assert_sudo(&ctx, OWNED, OWNER.0, true);
    for user in [ADMIN.0, OTHER.0, MATE.0] {
        assert_sudo(&ctx, OWNED, user, false);
    }
    let mut sandbox = sandbox;
    sandbox.stop();

    // A machine whose hostname is not the container's name but whose
    // canonical name is NAME.DOMAIN: SSSD's host check falls back to the
    // canonical name (getaddrinfo), and SSSD's sudo filter and sudo itself
    // use it too.
    let sandbox = Sandbox::start_as(&sandbox_conf(&server, &generated), &[], OWNER.0, Some(("pcalias", &fqdn)));
    let ctx = Ctx { server: &server, sandbox: &sandbox };
    let out = ctx.pam(OWNER.0, "acct_mgmt", "");
    assert!(out.status.success(), "{} refused on {fqdn}:\n{}", OWNER.0, ctx.explain(&out));
    assert_refused(&ctx, MATE.0, &ctx.pam(MATE.0, "acct_mgmt", ""));
    assert!(domain_log(&ctx).contains(&format!("Access granted for [{fqdn}]")), "{}", ctx.sandbox.diagnostics());
    assert_sudo(&ctx, OWNED, OWNER.0, true);
    let mut sandbox = sandbox;
    sandbox.stop();

    // The group's shared container.
    let generated = server.cli(&["container", "sssd-config", SHARED], None);
    assert!(generated.contains(&format!("members of its owning group {TEAM}")), "{generated}");
    let fqdn = format!("{SHARED}.{DOMAIN}");
    let sandbox = Sandbox::start_as(&sandbox_conf(&server, &generated), &[], MATE.0, Some((SHARED, &fqdn)));
    let ctx = Ctx { server: &server, sandbox: &sandbox };
    check_hostname(&ctx, SHARED);
    check_logins(&ctx, SHARED, &[MATE], &[OWNER, OTHER]);
    assert_sudo(&ctx, SHARED, MATE.0, true);
    for user in [ADMIN.0, OWNER.0] {
        assert_sudo(&ctx, SHARED, user, false);
    }

    // Membership changes reach the running container: no new configuration.
    // SSSD reuses what it fetched for a user's previous PAM request for
    // pam_id_timeout (1 s here, 5 s as generated), hence the short waits.
    server.cli(&["group", "add-member", TEAM, OTHER.0], None);
    wait_for_hosts(&server, OTHER.0, &[OTHERS, SHARED]);
    let out = eventually(|| ctx.pam(OTHER.0, "acct_mgmt", ""), |o| o.status.success());
    assert!(out.status.success(), "{} joined {TEAM} but is still refused:\n{}", OTHER.0, ctx.explain(&out));
    assert_sudo(&ctx, SHARED, OTHER.0, true);
    server.cli(&["group", "remove-member", TEAM, OTHER.0], None);
    wait_for_hosts(&server, OTHER.0, &[OTHERS]);
    let out = eventually(|| ctx.pam(OTHER.0, "acct_mgmt", ""), |o| !o.status.success());
    assert_refused(&ctx, OTHER.0, &out);
    let out = eventually(|| sudo_list(&ctx, OTHER.0), |o| !String::from_utf8_lossy(&o.stdout).contains(RULE));
    assert_sudo_output(&ctx, SHARED, OTHER.0, false, &out);

    let mut sandbox = sandbox;
    sandbox.stop();
    assert_host_unchanged(&host_before, &host_fingerprint());
}

/// Users, groups, entitlements and the SSSD service account, through the CLI.
fn populate(server: &TestServer) {
    for (user, pw) in [OWNER, MATE, OTHER, ADMIN] {
        server.cli(&["user", "add", user, "--password-stdin"], Some(&format!("{pw}\n")));
    }
    for group in [STUDENTS, TEAM, ADMINS] {
        server.cli(&["group", "add", group], None);
    }
    let site = ["site", "add", "lab", "--subnet", "10.77.0.0/24", "--gateway", "10.77.0.1", "--domain", DOMAIN];
    server.cli(&[&site[..], &["--range", "10.77.0.10-10.77.0.50"]].concat(), None);
    server.cli(&["plan", "add", "small", "--cores", "1", "--memory-mb", "512", "--disk-gb", "8"], None);
    server.cli(&["entitlement", "add", STUDENTS, "small"], None);
    server.cli(&["entitlement", "add", TEAM, "small", "--shared"], None);
    for (group, user) in [(STUDENTS, OWNER.0), (STUDENTS, OTHER.0), (TEAM, MATE.0), (ADMINS, ADMIN.0)] {
        server.cli(&["group", "add-member", group, user], None);
    }
    server.add_service(SSSD_ACCOUNT, SSSD_PASSWORD);
    let list = server.cli(&["container", "list"], None);
    for name in [OWNED, OTHERS, SHARED] {
        assert!(list.lines().any(|l| l.split_whitespace().next() == Some(name)), "no container {name}:\n{list}");
    }
    assert!(
        wait_until(Duration::from_secs(10), || ldap_bind_ok(server, &service_dn(SSSD_ACCOUNT), SSSD_PASSWORD)),
        "the server does not accept the SSSD service account; log:\n{}",
        server.log()
    );
}

/// What SSSD will read: `host` on the user entries, and sudoRole entries
/// that SSSD's own full-refresh filter finds for one container only.
fn check_directory(server: &TestServer) {
    let names = |c: &str| [c.to_string(), format!("{c}.{DOMAIN}")];
    wait_for_hosts(server, OWNER.0, &[OWNED]);
    let expect = [
        (OWNER.0, vec![OWNED]),
        (OTHER.0, vec![OTHERS]),
        (MATE.0, vec![SHARED]),
        (ADMIN.0, vec![OWNED, OTHERS, SHARED]),
    ];
    for (user, containers) in expect {
        let want: BTreeSet<String> = containers.iter().flat_map(|c| names(c)).collect();
        assert_eq!(hosts_of(server, user), want, "host values of {user}");
    }

    // SSSD-FACTS' full refresh filter, with this host's names.
    let filter = format!(
        "(&(objectClass=sudoRole)(|(&(!(sudoHost=*))(cn=defaults))(sudoHost=ALL)(sudoHost={OWNED})\
         (sudoHost={OWNED}.{DOMAIN})(sudoHost=192.0.2.2)(sudoHost=192.0.2.0/24)(sudoHost=+*)))"
    );
    let attrs = "objectClass cn sudoCommand sudoHost sudoUser sudoOption sudoRunAs sudoRunAsUser sudoRunAsGroup \
                 sudoNotBefore sudoNotAfter sudoOrder modifyTimestamp";
    let text = search(server, &format!("ou=sudoers,{BASE}"), &filter, &attrs.split(' ').collect::<Vec<_>>());
    let dns: Vec<&str> = text.lines().filter(|l| l.starts_with("dn: ")).collect();
    assert_eq!(dns, [format!("dn: cn={OWNED},ou=sudoers,{BASE}")], "{text}");
    for line in [
        format!("sudoUser: {}", OWNER.0),
        format!("sudoHost: {OWNED}"),
        format!("sudoHost: {OWNED}.{DOMAIN}"),
        "sudoCommand: ALL".to_string(),
        "sudoRunAsUser: ALL".to_string(),
        "objectClass: sudoRole".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?}:\n{text}");
    }
    assert!(text.lines().any(|l| l.starts_with("modifyTimestamp: ")), "no modifyTimestamp:\n{text}");
    let shared = search(server, BASE, &format!("(&(objectClass=sudoRole)(sudoHost={SHARED}))"), &["sudoUser"]);
    assert!(shared.lines().any(|l| l == format!("sudoUser: %{TEAM}")), "{shared}");

    // A collaborator may log in (host values) but gets no sudo rule; unsharing takes it back.
    assert!(server.cli(&["container", "share", OWNED, OTHER.0], None).contains("may now log in"));
    wait_for_hosts(server, OTHER.0, &[OWNED, OTHERS]);
    let rule = search(server, BASE, &format!("(&(objectClass=sudoRole)(sudoHost={OWNED}))"), &["sudoUser"]);
    assert!(!rule.contains(OTHER.0), "a collaborator gets no sudo: {rule}");
    server.cli(&["container", "unshare", OWNED, OTHER.0], None);
    wait_for_hosts(server, OTHER.0, &[OTHERS]);
}

/// `ldapsearch` as the SSSD service account; returns the LDIF.
fn search(server: &TestServer, base: &str, filter: &str, attrs: &[&str]) -> String {
    let url = server.ldap_url();
    let bind = service_dn(SSSD_ACCOUNT);
    let mut args = vec!["-x", "-LLL", "-o", "ldif-wrap=no", "-H", &url, "-D", &bind, "-w", SSSD_PASSWORD];
    args.extend(["-b", base, filter]);
    args.extend_from_slice(attrs);
    let out = common::run("ldapsearch", &args, &[]);
    assert!(out.status.success(), "ldapsearch {filter} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `host` values of a user's entry.
fn hosts_of(server: &TestServer, user: &str) -> BTreeSet<String> {
    let text = search(server, BASE, &format!("(uid={user})"), &["host"]);
    text.lines().filter_map(|l| l.strip_prefix("host: ")).map(str::to_string).collect()
}

/// Waits until the server's snapshot gives `user` exactly these containers.
fn wait_for_hosts(server: &TestServer, user: &str, containers: &[&str]) {
    let want: BTreeSet<String> = containers.iter().flat_map(|c| [c.to_string(), format!("{c}.{DOMAIN}")]).collect();
    assert!(
        wait_until(Duration::from_secs(10), || hosts_of(server, user) == want),
        "{user}'s host values stay {:?}, want {want:?}",
        hosts_of(server, user)
    );
}

/// The generated file with sandbox paths filled in (the CA file, the
/// service password) and short cache timeouts appended, as `sssd.rs` does
/// with `sssd-examples/`. The URI is the generated default (the issuer's
/// host and the LDAP port), which is the test server's.
fn sandbox_conf(server: &TestServer, generated: &str) -> String {
    let file = "container sssd-config output";
    let settings = ini_settings(generated, "domain/portcullis");
    for (key, value) in [
        ("access_provider", "ldap"),
        ("ldap_access_order", "host"),
        ("ldap_user_authorized_host", "host"),
        ("sudo_provider", "ldap"),
        ("ldap_tls_reqcert", "demand"),
        ("ldap_id_use_start_tls", "true"),
        ("cache_credentials", "False"),
    ] {
        assert_eq!(settings.get(key).map(String::as_str), Some(value), "{file}: {key}\n{generated}");
    }
    let uri = format!("ldap://127.0.0.1:{}", server.ldap_port);
    assert_eq!(settings.get("ldap_uri"), Some(&uri), "{file}: default URI");
    assert_eq!(settings.get("ldap_default_bind_dn"), Some(&service_dn(SSSD_ACCOUNT)), "{file}: bind DN");
    assert_eq!(ini_settings(generated, "sssd").get("services").map(String::as_str), Some("nss, pam, sudo"));
    assert!(
        !settings.contains_key("ldap_auth_disable_tls_never_use_in_production"),
        "{file} must not allow password binds without TLS"
    );

    let ca = server.ca_path();
    let mut conf = replace_required(
        generated,
        "ldap_tls_cacert = /etc/sssd/portcullis-ca.pem\n",
        &format!("ldap_tls_cacert = {}\n", ca.display()),
        file,
    );
    conf = replace_required(
        &conf,
        "ldap_default_authtok = CHANGE-ME\n",
        &format!("ldap_default_authtok = {SSSD_PASSWORD}\n"),
        file,
    );
    conf = append_to_section(&conf, "nss", &["entry_negative_timeout = 1", "memcache_timeout = 0"]);
    conf = append_to_section(&conf, "pam", &["pam_id_timeout = 1"]);
    append_to_section(
        &conf,
        "domain/portcullis",
        &[
            // Level 4 logs SSSD's host decisions ("No matching host rule found").
            "debug_level = 4",
            "entry_cache_timeout = 1",
            "refresh_expired_interval = 0",
            "offline_timeout = 2",
            "offline_timeout_max = 4",
            "offline_timeout_random_offset = 0",
        ],
    )
}

/// `sssctl config-check` accepts the generated file as it is.
fn check_generated_config_validates(ctx: &Ctx, generated: &str) {
    use std::os::unix::fs::PermissionsExt;
    let dir = ctx.sandbox.workdir().join("generated");
    std::fs::create_dir_all(dir.join("conf.d")).expect("mkdir generated/conf.d");
    let file = dir.join("sssd.conf");
    std::fs::write(&file, generated).expect("write generated sssd.conf");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (config, snippets) = (file.display().to_string(), dir.join("conf.d").display().to_string());
    let report = ctx.ok(&["sssctl", "config-check", "-c", &config, "-s", &snippets]);
    assert!(report.contains("Issues identified by validators: 0"), "sssctl config-check:\n{report}\n{generated}");
    assert!(report.contains("Messages generated during configuration merging: 0"), "sssctl config-check:\n{report}");
}

/// The sandbox answers to the container's names, as SSSD and sudo see them.
fn check_hostname(ctx: &Ctx, name: &str) {
    assert_eq!(ctx.ok(&["hostname"]).trim(), name);
    assert_eq!(ctx.ok(&["hostname", "--fqdn"]).trim(), format!("{name}.{DOMAIN}"));
}

/// `allowed` log in (pamtester authenticate and acct_mgmt, ssh); the admin
/// passes the account check (a password login would need a second factor);
/// `refused` are denied at the account step by SSSD's host rule although
/// their passwords are right.
fn check_logins(ctx: &Ctx, container: &str, allowed: &[(&'static str, &'static str)], refused: &[(&str, &str)]) {
    let log_before = domain_log(ctx).len();
    std::thread::scope(|s| {
        let ok: Vec<_> = allowed
            .iter()
            .map(|&(user, pw)| {
                s.spawn(move || {
                    (
                        user,
                        ctx.pam(user, "authenticate", pw),
                        ctx.pam(user, "acct_mgmt", ""),
                        ctx.ssh(user, pw, "id -un"),
                    )
                })
            })
            .collect();
        let admin = s.spawn(|| ctx.pam(ADMIN.0, "acct_mgmt", ""));
        let no: Vec<_> = refused
            .iter()
            .map(|&(user, pw)| s.spawn(move || (user, ctx.pam(user, "acct_mgmt", ""), ctx.ssh(user, pw, "id -un"))))
            .collect();

        for h in ok {
            let (user, auth, acct, ssh) = h.join().expect("thread");
            assert!(auth.status.success(), "pamtester authenticate {user} on {container}:\n{}", ctx.explain(&auth));
            assert!(acct.status.success(), "pamtester acct_mgmt {user} on {container}:\n{}", ctx.explain(&acct));
            assert!(ssh_as(&ssh, user), "ssh as {user} into {container} failed:\n{}", ctx.explain(&ssh));
        }
        let out = admin.join().expect("thread");
        assert!(out.status.success(), "admin {} refused on {container}:\n{}", ADMIN.0, ctx.explain(&out));
        for h in no {
            let (user, acct, ssh) = h.join().expect("thread");
            assert_refused(ctx, user, &acct);
            assert!(
                !ssh.status.success() && !String::from_utf8_lossy(&ssh.stdout).contains(user),
                "ssh let {user} into {container}:\n{}",
                ctx.explain(&ssh)
            );
        }
    });
    // The decisions were SSSD's host rule, both ways.
    let log = domain_log(ctx);
    let log = &log[log_before.min(log.len())..];
    assert!(log.contains(&format!("Access granted for [{container}]")), "{}", ctx.sandbox.diagnostics());
    assert!(log.contains("No matching host rule found"), "{}", ctx.sandbox.diagnostics());
}

/// A refusal at PAM's account step (the password was never the issue).
fn assert_refused(ctx: &Ctx, user: &str, out: &Output) {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        !out.status.success() && text.contains("Permission denied"),
        "acct_mgmt for {user} was not denied:\n{}",
        ctx.explain(out)
    );
}

/// SSSD's backend log in the sandbox.
fn domain_log(ctx: &Ctx) -> String {
    std::fs::read_to_string(ctx.sandbox.workdir().join("var-log-sssd/sssd_portcullis.log")).unwrap_or_default()
}

/// What `sudo -l` shows for the owner's rule: any command as anyone.
const RULE: &str = "(ALL : ALL) ALL";

/// `sudo -l -U USER`, run as root in the sandbox.
fn sudo_list(ctx: &Ctx, user: &str) -> Output {
    ctx.sandbox.exec(&["sudo", "-n", "-l", "-U", user], None)
}

/// Runs `run` until `done` holds for its output (at most 5 s); returns the
/// last output.
fn eventually(run: impl Fn() -> Output, done: impl Fn(&Output) -> bool) -> Output {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let out = run();
        if done(&out) || std::time::Instant::now() >= deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `sudo -l -U USER` lists the owner's rule (`granted`) or nothing. SSSD
/// fetches the rules right after it connects, so a grant may take a moment
/// to show up.
fn assert_sudo(ctx: &Ctx, container: &str, user: &str, granted: bool) {
    let out = if granted {
        eventually(|| sudo_list(ctx, user), |o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(RULE))
    } else {
        sudo_list(ctx, user)
    };
    assert_sudo_output(ctx, container, user, granted, &out);
}

fn assert_sudo_output(ctx: &Ctx, container: &str, user: &str, granted: bool, out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    if granted {
        assert!(
            out.status.success()
                && stdout.contains(RULE)
                && stdout.contains(&format!("User {user} may run the following commands on {container}")),
            "sudo -l -U {user} on {container} does not list {RULE:?}:\n{}",
            ctx.explain(out)
        );
    } else {
        assert!(
            !stdout.contains(RULE)
                && stdout.contains(&format!("User {user} is not allowed to run sudo on {container}")),
            "sudo -l -U {user} on {container} should list nothing:\n{}",
            ctx.explain(out)
        );
    }
}

/// Whether sudo can ask SSSD (libsss_sudo, loaded by sudo's `sss` source).
fn sudo_plugin_installed() -> bool {
    let Ok(dirs) = std::fs::read_dir("/usr/lib") else { return false };
    dirs.filter_map(Result::ok)
        .map(|d| d.path())
        .chain([Path::new("/usr/lib").to_path_buf()])
        .any(|d| d.join("libsss_sudo.so").is_file())
}
