//! OpenLDAP's command-line clients (ldapsearch, ldapwhoami, ldappasswd,
//! ldapcompare) against Portcullis over StartTLS (`-ZZ`) and LDAPS, trusting
//! the CA that the server generated on first start.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::common::{BASE, TestServer, service_dn, user_dn, wait_until};

/// Runs an ldap-utils tool trusting the server's CA.
fn ldap(server: &TestServer, tool: &str, args: &[&str]) -> Output {
    crate::common::require_tool(tool);
    let ca = server.ca_path();
    std::process::Command::new(tool)
        .args(args)
        .env("LDAPTLS_CACERT", &ca)
        .env("LDAPTLS_REQCERT", "demand")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed ({}): {}{}", o.status, stdout(o), String::from_utf8_lossy(&o.stderr));
    stdout(o)
}

fn setup() -> TestServer {
    let server = TestServer::start();
    server.add_service("sssd", "service-pw-1");
    server.add_user("pcalice", "alice-pw-1");
    server.add_user("pcbob", "bob-pw-12");
    server.cli(&["group", "add", "pcdevs", "--description", "Developers"], None);
    server.cli(&["group", "add-member", "pcdevs", "pcalice"], None);
    server.cli(&["group", "add-member", "pcdevs", "pcbob"], None);
    server.settle();
    server
}

/// `-ZZ` against the plain port and `ldaps://` against the TLS port.
fn transports(server: &TestServer) -> Vec<Vec<String>> {
    vec![vec!["-ZZ".into(), "-H".into(), server.ldap_url()], vec!["-H".into(), server.ldaps_url()]]
}

fn with<'a>(transport: &'a [String], rest: &[&'a str]) -> Vec<&'a str> {
    transport.iter().map(String::as_str).chain(rest.iter().copied()).collect()
}

#[test]
fn search_whoami_compare_over_starttls_and_ldaps() {
    let server = setup();
    let sssd = service_dn("sssd");
    let alice = user_dn("pcalice");
    for t in transports(&server) {
        let out = ok(
            &ldap(
                &server,
                "ldapsearch",
                &with(
                    &t,
                    &[
                        "-x",
                        "-LLL",
                        "-D",
                        &sssd,
                        "-w",
                        "service-pw-1",
                        "-b",
                        BASE,
                        "(uid=pcalice)",
                        "uid",
                        "uidNumber",
                        "mail",
                        "memberOf",
                        "userPassword",
                    ],
                ),
            ),
            "ldapsearch user",
        );
        assert!(out.contains(&format!("dn: {alice}")), "{out}");
        assert!(out.contains("mail: pcalice@example.org"), "{out}");
        assert!(out.contains("memberOf: cn=pcdevs,ou=groups,dc=example,dc=org"), "{out}");
        assert!(!out.to_lowercase().contains("userpassword"), "password hash leaked: {out}");

        let out = ok(
            &ldap(
                &server,
                "ldapsearch",
                &with(
                    &t,
                    &[
                        "-x",
                        "-LLL",
                        "-D",
                        &sssd,
                        "-w",
                        "service-pw-1",
                        "-b",
                        BASE,
                        "(&(objectClass=posixGroup)(cn=pcdevs))",
                    ],
                ),
            ),
            "ldapsearch group",
        );
        for needle in
            ["memberUid: pcalice", "memberUid: pcbob", &format!("member: {alice}"), "objectClass: groupOfNames"]
        {
            assert!(out.contains(needle), "missing {needle:?} in {out}");
        }

        let out = ok(&ldap(&server, "ldapwhoami", &with(&t, &["-x", "-D", &alice, "-w", "alice-pw-1"])), "ldapwhoami");
        assert_eq!(out.trim(), format!("dn:{alice}"));

        let yes = ldap(
            &server,
            "ldapcompare",
            &with(&t, &["-x", "-D", &sssd, "-w", "service-pw-1", &alice, "mail:PCALICE@example.org"]),
        );
        assert_eq!(yes.status.code(), Some(6), "compareTrue expected: {}", stdout(&yes));
        let no =
            ldap(&server, "ldapcompare", &with(&t, &["-x", "-D", &sssd, "-w", "service-pw-1", &alice, "uidNumber:1"]));
        assert_eq!(no.status.code(), Some(5), "compareFalse expected: {}", stdout(&no));
    }
}

#[test]
fn ldappasswd_changes_own_password() {
    let server = setup();
    let alice = user_dn("pcalice");
    for (i, t) in transports(&server).iter().enumerate() {
        let (old, new) = if i == 0 { ("alice-pw-1", "alice-pw-2") } else { ("alice-pw-2", "alice-pw-3") };
        ok(
            &ldap(&server, "ldappasswd", &with(t, &["-x", "-D", &alice, "-w", old, "-a", old, "-s", new])),
            "ldappasswd",
        );
        let wrong = ldap(&server, "ldapwhoami", &with(t, &["-x", "-D", &alice, "-w", old]));
        assert_eq!(wrong.status.code(), Some(49), "old password must stop working");
        ok(&ldap(&server, "ldapwhoami", &with(t, &["-x", "-D", &alice, "-w", new])), "bind with new password");
    }
    // Changing someone else's password is refused.
    let t = &transports(&server)[0];
    let out = ldap(
        &server,
        "ldappasswd",
        &with(t, &["-x", "-D", &alice, "-w", "alice-pw-3", "-s", "stolen-pw-1", &user_dn("pcbob")]),
    );
    assert!(!out.status.success());
    ok(&ldap(&server, "ldapwhoami", &with(t, &["-x", "-D", &user_dn("pcbob"), "-w", "bob-pw-12"])), "bob unchanged");
    // Too short a password is refused with a clear message.
    let out = ldap(&server, "ldappasswd", &with(t, &["-x", "-D", &alice, "-w", "alice-pw-3", "-s", "short"]));
    assert!(!out.status.success());
    let said = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("Constraint violation") && said.contains("password must be"), "{said}");
}

#[test]
fn access_rules_and_sssd_tolerances() {
    let server = setup();
    let t = &transports(&server)[0];
    let sssd = service_dn("sssd");
    // Anonymous: the root DSE lists paging, but nothing else is visible.
    let root = ok(
        &ldap(
            &server,
            "ldapsearch",
            &with(t, &["-x", "-LLL", "-b", "", "-s", "base", "supportedControl", "namingContexts"]),
        ),
        "root DSE",
    );
    assert!(root.contains("supportedControl: 1.2.840.113556.1.4.319"), "{root}");
    assert!(root.contains(&format!("namingContexts: {BASE}")), "{root}");
    let anon = ok(&ldap(&server, "ldapsearch", &with(t, &["-x", "-LLL", "-b", BASE, "(uid=*)"])), "anonymous search");
    assert!(!anon.contains("dn:"), "anonymous must see nothing: {anon}");
    // A user reads only their own entry.
    let own = ok(
        &ldap(
            &server,
            "ldapsearch",
            &with(
                t,
                &["-x", "-LLL", "-D", &user_dn("pcalice"), "-w", "alice-pw-1", "-b", BASE, "(objectClass=*)", "1.1"],
            ),
        ),
        "user search",
    );
    assert_eq!(own.trim(), format!("dn: {}", user_dn("pcalice")));
    // SSSD's sudo and netgroup searches succeed with no entries.
    let sudo = ldap(
        &server,
        "ldapsearch",
        &with(
            t,
            &[
                "-x",
                "-LLL",
                "-D",
                &sssd,
                "-w",
                "service-pw-1",
                "-b",
                BASE,
                "(&(objectClass=sudoRole)(|(!(sudoHost=*))(sudoHost=ALL)(sudoHost=+*)))",
            ],
        ),
    );
    assert!(sudo.status.success() && !stdout(&sudo).contains("dn:"), "{}", stdout(&sudo));
    // An unknown critical control is refused (12); a non-critical one ignored.
    let crit = ldap(
        &server,
        "ldapsearch",
        &with(t, &["-x", "-D", &sssd, "-w", "service-pw-1", "-b", BASE, "-e", "!1.2.3.4.5", "(uid=pcalice)"]),
    );
    assert_eq!(crit.status.code(), Some(12), "{}", stdout(&crit));
    let noncrit = ldap(
        &server,
        "ldapsearch",
        &with(
            t,
            &["-x", "-LLL", "-D", &sssd, "-w", "service-pw-1", "-b", BASE, "-e", "1.2.3.4.5", "(uid=pcalice)", "1.1"],
        ),
    );
    assert!(ok(&noncrit, "non-critical control").contains("dn: uid=pcalice"));
    // Disabled users cannot bind; enabling restores access, seen within a second.
    server.cli(&["user", "disable", "pcbob"], None);
    let bob = user_dn("pcbob");
    assert!(wait_until(Duration::from_secs(1), || {
        ldap(&server, "ldapwhoami", &with(t, &["-x", "-D", &bob, "-w", "bob-pw-12"])).status.code() == Some(49)
    }));
    server.cli(&["user", "enable", "pcbob"], None);
    assert!(wait_until(Duration::from_secs(1), || {
        ldap(&server, "ldapwhoami", &with(t, &["-x", "-D", &bob, "-w", "bob-pw-12"])).status.success()
    }));
}

#[test]
fn cli_changes_are_visible_within_a_second() {
    let server = setup();
    let t = &transports(&server)[0];
    let sssd = service_dn("sssd");
    let find = |filter: &str| {
        stdout(&ldap(
            &server,
            "ldapsearch",
            &with(t, &["-x", "-LLL", "-D", &sssd, "-w", "service-pw-1", "-b", BASE, filter, "1.1"]),
        ))
    };
    let started = std::time::Instant::now();
    server.add_user("pccarol", "carol-pw-1");
    assert!(
        wait_until(Duration::from_secs(1), || find("(uid=pccarol)").contains("dn: uid=pccarol")),
        "new user not visible"
    );
    server.cli(&["group", "add-member", "pcdevs", "pccarol"], None);
    assert!(wait_until(Duration::from_secs(1), || find("(&(cn=pcdevs)(memberUid=pccarol))").contains("dn: cn=pcdevs")));
    server.cli(&["user", "del", "pccarol"], None);
    assert!(
        wait_until(Duration::from_secs(1), || !find("(memberUid=pccarol)").contains("dn:")),
        "membership must go with the user"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Writes an LDIF with `n` posixAccount users.
fn write_users_ldif(path: &Path, n: usize) {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "dn: uid=bulk{i:05},ou=people,{BASE}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\nuid: bulk{i:05}\ncn: Bulk {i}\nsn: {i}\nuidNumber: {}\ngidNumber: 10000\nhomeDirectory: /home/bulk{i:05}\n\n",
            20000 + i
        ));
    }
    std::fs::write(path, s).expect("write LDIF");
}

#[test]
fn paged_search_returns_all_2500_users() {
    let server = setup();
    let ldif = server.dir.path().join("bulk.ldif");
    write_users_ldif(&ldif, 2500);
    server.cli(&["import", "ldif", ldif.to_str().expect("utf-8 path")], None);
    let sssd = service_dn("sssd");
    for t in transports(&server) {
        let mut all = String::new();
        assert!(
            wait_until(Duration::from_secs(2), || {
                all = ok(
                    &ldap(
                        &server,
                        "ldapsearch",
                        &with(
                            &t,
                            &[
                                "-x",
                                "-D",
                                &sssd,
                                "-w",
                                "service-pw-1",
                                "-b",
                                &format!("ou=people,{BASE}"),
                                "-E",
                                "pr=300/noprompt",
                                "(uid=bulk*)",
                                "uid",
                            ],
                        ),
                    ),
                    "paged search",
                );
                all.matches("\ndn: uid=bulk").count() == 2500
            }),
            "expected 2500 entries, got {}",
            all.matches("\ndn: uid=bulk").count()
        );
        // 2500 / 300 → 9 pages, each ending with a paged-results control.
        assert_eq!(all.matches("\npagedresults: cookie=").count(), 9, "page count: {all}");
    }
    // Without paging the server's unpaged limit applies; the client's size limit too.
    let limited = ldap(
        &server,
        "ldapsearch",
        &with(
            &transports(&server)[0],
            &["-x", "-D", &sssd, "-w", "service-pw-1", "-b", BASE, "-z", "10", "(uid=bulk*)", "1.1"],
        ),
    );
    assert_eq!(limited.status.code(), Some(4), "sizeLimitExceeded expected");
    assert_eq!(stdout(&limited).matches("\ndn: ").count(), 10);
}
