//! `portcullis import ldif` end to end: an OpenLDAP-style export with
//! {SSHA}, {CRYPT}$6$ and bcrypt hashes is imported by the real CLI into the
//! store of a running server; each user then binds with their old password
//! through OpenLDAP's `ldapwhoami`, the server upgrades the hash to argon2id,
//! and a second import (and a dry run) change nothing.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

use crate::common::{TestServer, require_tool, run, service_dn, user_dn, wait_until};

/// `{SSHA}` as slappasswd makes it: base64(sha1(password + salt) + salt).
fn ssha(password: &str, salt: &[u8]) -> String {
    let mut d = Sha1::new();
    d.update(password.as_bytes());
    d.update(salt);
    let mut raw = d.finalize().to_vec();
    raw.extend_from_slice(salt);
    format!("{{SSHA}}{}", STANDARD.encode(raw))
}

/// Folds an LDIF line at 76 columns, as slapcat does.
fn fold(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    let mut width = 76;
    while rest.len() > width {
        let (head, tail) = rest.split_at(width);
        out.push_str(head);
        out.push_str("\n ");
        rest = tail;
        width = 75;
    }
    out.push_str(rest);
    out
}

fn ldif() -> String {
    let sha512 = sha_crypt::sha512_simple("bob-old-pw", &sha_crypt::Sha512Params::new(5000).expect("params"))
        .expect("sha512-crypt");
    let bcrypt = bcrypt::hash("carol-old-pw", 4).expect("bcrypt");
    assert!(bcrypt.starts_with("$2b$"), "{bcrypt}");
    let alice_pw = fold(&format!("userPassword:: {}", STANDARD.encode(ssha("alice-old-pw", b"NaCl1234"))));
    let bob_pw = fold(&format!("userPassword:: {}", STANDARD.encode(format!("{{CRYPT}}{sha512}"))));
    let carol_pw = fold(&format!("userPassword: {{CRYPT}}{bcrypt}"));
    format!(
        "version: 1\n\
         \n\
         dn: dc=example,dc=org\n\
         objectClass: top\n\
         objectClass: dcObject\n\
         objectClass: organization\n\
         o: Example\n\
         dc: example\n\
         \n\
         dn: ou=People,dc=example,dc=org\n\
         objectClass: organizationalUnit\n\
         ou: People\n\
         \n\
         dn: ou=Group,dc=example,dc=org\n\
         objectClass: organizationalUnit\n\
         ou: Group\n\
         \n\
         # the group comes before its members\n\
         dn: cn=engineers,ou=Group,dc=example,dc=org\n\
         objectClass: posixGroup\n\
         objectClass: top\n\
         cn: engineers\n\
         gidNumber: 7100\n\
         description: Engineering\n\
         memberUid: imalice\n\
         memberUid: imbob\n\
         memberUid: nobody-here\n\
         \n\
         dn: cn=admins,ou=Group,dc=example,dc=org\n\
         objectClass: groupOfUniqueNames\n\
         objectClass: posixGroup\n\
         cn: admins\n\
         gidNumber: 7101\n\
         uniqueMember: uid=imcarol,ou=People,dc=example,dc=org\n\
         uniqueMember: cn=engineers,ou=Group,dc=example,dc=org\n\
         \n\
         dn: uid=imalice,ou=People,dc=example,dc=org\n\
         objectClass: inetOrgPerson\n\
         objectClass: posixAccount\n\
         objectClass: shadowAccount\n\
         uid: imalice\n\
         cn: Alice Imported\n\
         sn: Imported\n\
         mail: imalice@example.org\n\
         uidNumber: 7001\n\
         gidNumber: 7100\n\
         homeDirectory: /home/imalice\n\
         loginShell: /bin/bash\n\
         {alice_pw}\n\
         \n\
         dn: uid=imbob,ou=People,dc=example,dc=org\n\
         objectClass: account\n\
         objectClass: posixAccount\n\
         uid: imbob\n\
         cn: Bob Imported\n\
         uidNumber: 7002\n\
         gidNumber: 7100\n\
         homeDirectory: /home/imbob\n\
         {bob_pw}\n\
         \n\
         dn: uid=imcarol,ou=People,dc=example,dc=org\n\
         objectClass: account\n\
         objectClass: posixAccount\n\
         uid: imcarol\n\
         cn: Carol Imported\n\
         uidNumber: 7003\n\
         gidNumber: 7101\n\
         homeDirectory: /home/imcarol\n\
         {carol_pw}\n\
         \n\
         dn: uid=imdave,ou=People,dc=example,dc=org\n\
         objectClass: account\n\
         objectClass: posixAccount\n\
         uid: imdave\n\
         cn: Dave Plaintext\n\
         uidNumber: 7004\n\
         gidNumber: 7100\n\
         homeDirectory: /home/imdave\n\
         userPassword: dave-plain-pw\n\
         \n\
         dn: uid=root,ou=People,dc=example,dc=org\n\
         objectClass: account\n\
         objectClass: posixAccount\n\
         uid: root\n\
         cn: root\n\
         uidNumber: 0\n\
         gidNumber: 0\n\
         homeDirectory: /root\n"
    )
}

/// The number after `label` in an import report.
fn count(report: &str, label: &str) -> usize {
    report
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in report:\n{report}"))
}

fn whoami(server: &TestServer, user: &str, password: &str) -> std::process::Output {
    run("ldapwhoami", &["-x", "-H", &server.ldap_url(), "-D", &user_dn(user), "-w", password], &[])
}

#[test]
fn ldif_import_keeps_old_passwords_and_upgrades_them_at_bind() {
    require_tool("ldapwhoami");
    require_tool("ldapsearch");
    let server = TestServer::start();
    let file = server.dir.path().join("export.ldif");
    std::fs::write(&file, ldif()).expect("write LDIF");
    let path = file.to_str().expect("utf-8 path");

    // A dry run reports everything and changes nothing.
    let dry = server.cli(&["import", "ldif", path, "--dry-run"], None);
    assert!(dry.starts_with("Dry run"), "{dry}");
    assert_eq!(count(&dry, "users created:"), 4, "{dry}");
    assert!(!server.cli(&["user", "list"], None).contains("imalice"), "dry run created users");
    assert!(!server.cli(&["group", "list"], None).contains("engineers"), "dry run created groups");

    let report = server.cli(&["import", "ldif", path], None);
    assert_eq!(count(&report, "users created:"), 4, "{report}");
    assert_eq!(count(&report, "groups created:"), 2, "{report}");
    assert_eq!(count(&report, "memberships added:"), 3, "{report}");
    assert_eq!(count(&report, "entries skipped:"), 1, "{report}");
    assert_eq!(count(&report, "memberships skipped:"), 2, "{report}");
    assert_eq!(count(&report, "structural entries ignored:"), 3, "{report}");
    assert_eq!(count(&report, "passwords to upgrade:"), 3, "{report}");
    assert_eq!(count(&report, "users without a password:"), 1, "{report}");
    assert!(report.contains("uid=root,ou=People,dc=example,dc=org: uidNumber 0 (root) is not imported"), "{report}");
    assert!(report.contains("nobody-here"), "{report}");
    assert!(report.contains("nested groups are not supported"), "{report}");
    assert!(report.contains("uid=imdave,ou=People,dc=example,dc=org: userPassword is plaintext"), "{report}");
    assert!(!report.contains("dave-plain-pw"), "passwords never reach the report");
    assert!(dry.lines().skip(2).eq(report.lines().skip(1)), "dry run predicted the import:\n{dry}\n{report}");

    let show = server.cli(&["user", "show", "imalice"], None);
    assert!(show.contains("uidNumber:      7001"), "{show}");
    assert!(show.contains("imported hash"), "{show}");
    assert!(show.contains("groups:         engineers"), "{show}");
    let engineers = server.cli(&["group", "show", "engineers"], None);
    assert!(engineers.contains("members:        imalice, imbob"), "{engineers}");
    assert!(server.cli(&["group", "show", "admins"], None).contains("members:        imcarol"));

    // The server picks up the CLI's changes within its refresh interval. Wait
    // for that as the admin: failed binds while waiting would count towards
    // the lockout.
    let visible = wait_until(Duration::from_secs(10), || {
        let args = ["-x", "-LLL", "-H", &server.ldap_url(), "-D", &service_dn("admin"), "-w", &server.admin_password];
        let base = user_dn("imcarol");
        let out = run("ldapsearch", &[&args[..], &["-b", &base, "-s", "base", "1.1"]].concat(), &[]);
        out.status.success()
    });
    assert!(visible, "imported users never appeared in the directory; server log:\n{}", server.log());
    for (user, password) in [("imalice", "alice-old-pw"), ("imbob", "bob-old-pw"), ("imcarol", "carol-old-pw")] {
        let out = whoami(&server, user, password);
        assert!(
            out.status.success(),
            "{user} cannot bind with the imported password: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        let authzid = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(authzid.contains(&format!("dn:uid={user},")), "{authzid}");
        let upgraded = wait_until(Duration::from_secs(10), || {
            server.cli(&["user", "show", user], None).contains("password:       set (argon2id)")
        });
        assert!(upgraded, "hash of {user} not upgraded: {}", server.cli(&["user", "show", user], None));
        assert!(!whoami(&server, user, "wrong-password").status.success(), "{user} binds with a wrong password");
    }
    let dave = whoami(&server, "imdave", "dave-plain-pw");
    assert_eq!(dave.status.code(), Some(49), "a user without an imported password cannot bind");

    // Importing again changes nothing, and in particular does not put the
    // old hashes back over the upgraded ones.
    let again = server.cli(&["import", "ldif", path], None);
    assert!(again.contains("nothing to change"), "{again}");
    for label in ["users created:", "groups created:", "memberships added:"] {
        assert_eq!(count(&again, label), 0, "{again}");
    }
    assert_eq!(count(&again, "users already present:"), 4, "{again}");
    assert_eq!(count(&again, "groups already present:"), 2, "{again}");
    assert_eq!(count(&again, "memberships already present:"), 3, "{again}");
    assert!(server.cli(&["user", "show", "imalice"], None).contains("set (argon2id)"));
    assert!(whoami(&server, "imalice", "alice-old-pw").status.success(), "the upgraded hash still verifies");
    let audit = server.cli(&["audit", "--limit", "200"], None);
    assert_eq!(audit.matches("import.ldif").count(), 1, "only the first import committed:\n{audit}");
}

#[test]
fn ldif_import_of_a_missing_file_fails_clearly() {
    let server = TestServer::start();
    let missing = server.dir.path().join("missing.ldif");
    let out = server.cli_output(&["import", "ldif", missing.to_str().expect("utf-8 path")], None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot open LDIF file"), "{stderr}");
}
