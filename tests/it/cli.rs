//! The admin CLI as people script it: exit codes, clear errors, `--help`,
//! configuration precedence, and the bootstrap credential.

use std::process::Command;

use crate::common::{BIN, TestServer};

fn failure(server: &TestServer, args: &[&str], stdin: Option<&str>) -> String {
    let out = server.cli_output(args, stdin);
    assert!(!out.status.success(), "portcullis {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn errors_name_the_problem() {
    let server = TestServer::start();
    server.add_user("pcalice", "alice-pw-1");
    assert!(failure(&server, &["user", "add", "pcalice"], None).contains("user \"pcalice\" already exists"));
    assert!(failure(&server, &["user", "add", "Not Valid"], None).contains("invalid user name"));
    assert!(failure(&server, &["user", "add", "pcbob", "--email", "nope"], None).contains("invalid e-mail"));
    assert!(
        failure(&server, &["user", "passwd", "ghost", "--password-stdin"], Some("long-enough-pw\n"))
            .contains("user \"ghost\" does not exist")
    );
    assert!(
        failure(&server, &["user", "passwd", "pcalice", "--password-stdin"], Some("short\n"))
            .contains("password must be")
    );
    assert!(
        failure(&server, &["group", "add-member", "nogroup", "pcalice"], None)
            .contains("group \"nogroup\" does not exist")
    );
    server.cli(&["group", "add", "pcdevs"], None);
    assert!(failure(&server, &["group", "add", "pcdevs"], None).contains("already exists"));
    assert!(failure(&server, &["group", "remove-member", "pcdevs", "pcalice"], None).contains("is not a member"));
    assert!(failure(&server, &["service-account", "add", "sssd"], None).contains("--password-stdin"));

    let show = server.cli(&["user", "show", "pcalice"], None);
    assert!(show.contains("password:       set (argon2id)"), "{show}");
    assert!(!show.contains("$argon2id$"), "hash must not be shown: {show}");
    let audit = server.cli(&["audit", "--limit", "3"], None);
    assert!(audit.contains("group.add") && audit.contains("pcdevs"), "{audit}");
}

#[test]
fn help_documents_every_command() {
    let out = Command::new(BIN).arg("--help").output().expect("run --help");
    let help = String::from_utf8_lossy(&out.stdout);
    for word in
        ["serve", "user", "group", "service-account", "import", "audit", "--config", "--data-dir", "PORTCULLIS_"]
    {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
    let out = Command::new(BIN).args(["group", "--help"]).output().expect("run group --help");
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["add-member", "remove-member", "list", "show", "del"] {
        assert!(help.contains(word), "group --help lacks {word}");
    }
}

#[test]
fn data_dir_flag_overrides_the_environment_and_bootstrap_prints_once() {
    let server = TestServer::start();
    assert!(server.admin_password.len() >= 20, "bootstrap password printed on first start");
    let other = server.dir.path().join("other");
    server.cli(&["--data-dir", other.to_str().expect("utf-8"), "group", "add", "elsewhere"], None);
    assert!(other.join("portcullis.db").exists());
    let here = server.cli(&["group", "list"], None);
    assert!(!here.contains("elsewhere"), "--data-dir must win over PORTCULLIS_DATA_DIR");

    // The bootstrap admin can read the directory; a restart prints nothing new.
    let mut server = server;
    server.restart();
    assert_eq!(server.log().matches("Bootstrap admin password").count(), 1);
    let out = crate::common::run(
        "ldapwhoami",
        &["-x", "-H", &server.ldap_url(), "-D", &crate::common::service_dn("admin"), "-w", &server.admin_password],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
