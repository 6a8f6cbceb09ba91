//! Tests of the LDIF import against an in-memory store.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

use super::*;
use crate::auth::password::{Verdict, verify_password};

fn ssha(password: &str, salt: &[u8]) -> String {
    let mut d = Sha1::new();
    d.update(password.as_bytes());
    d.update(salt);
    let mut raw = d.finalize().to_vec();
    raw.extend_from_slice(salt);
    format!("{{SSHA}}{}", STANDARD.encode(raw))
}

fn sha512_crypt(password: &str) -> String {
    let params = sha_crypt::Sha512Params::new(5000).unwrap();
    format!("{{CRYPT}}{}", sha_crypt::sha512_simple(password, &params).unwrap())
}

/// An OpenLDAP-style export: groups before users, folded lines, base64,
/// comments, structural entries and a collection of bad entries.
fn fixture() -> String {
    let alice_pw = STANDARD.encode(ssha("alice-secret", b"s4lt"));
    let bob_pw = sha512_crypt("bob-secret");
    let carol_pw = format!("{{CRYPT}}{}", bcrypt::hash("carol-secret", 4).unwrap());
    let (bob_a, bob_b) = bob_pw.split_at(40);
    format!(
        "# slapcat output\n\
version: 1\n\
\n\
dn: dc=example,dc=org\n\
objectClass: top\n\
objectClass: dcObject\n\
objectClass: organization\n\
o: Example\n\
dc: example\n\
\n\
dn: ou=people,dc=example,dc=org\n\
objectClass: organizationalUnit\n\
ou: people\n\
\n\
dn: ou=groups,dc=example,dc=org\n\
objectClass: organizationalUnit\n\
ou: groups\n\
\n\
dn: cn=developers,ou=groups,dc=example,dc=org\n\
objectClass: posixGroup\n\
objectClass: groupOfNames\n\
cn: developers\n\
gidNumber: 5000\n\
description: The developers\n\
memberUid: alice\n\
memberUid: ghost\n\
member: uid=bob,ou=people,dc=example,dc=org\n\
member: cn=Carol Smith,ou=people,dc=example,dc=org\n\
member: cn=admin,dc=example,dc=org\n\
member: cn=ops,ou=groups,dc=example,dc=org\n\
uniqueMember: UID=Alice,OU=People,DC=example,DC=org#'0101'B\n\
\n\
dn: cn=ops,ou=groups,dc=example,dc=org\n\
objectClass: posixGroup\n\
cn: ops\n\
gidNumber: 5001\n\
\n\
dn: cn=admin,dc=example,dc=org\n\
objectClass: simpleSecurityObject\n\
objectClass: organizationalRole\n\
cn: admin\n\
userPassword:: e1NTSEF9eHh4\n\
\n\
# alice: SSHA in base64, as slapcat writes it\n\
dn: uid=alice,ou=people,dc=example,dc=org\n\
objectClass: inetOrgPerson\n\
objectClass: posixAccount\n\
objectClass: ldapPublicKey\n\
uid: alice\n\
cn: Alice Cn\n\
displayName: Alice Example\n\
sn: Example\n\
mail: alice@example.org\n\
mail: alice2@example.org\n\
uidNumber: 2001\n\
gidNumber: 5000\n\
homeDirectory: /home/alice\n\
loginShell: /bin/zsh\n\
sshPublicKey: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA alice@laptop\n\
sshPublicKey: ssh-rsa AAAAB3Nza\n C1yc2E alice@desk\n\
sshPublicKey: not a key\n\
userPassword:: {alice_pw}\n\
\n\
dn: uid=bob,ou=people,dc=example,dc=org\n\
objectClass: account\n\
objectClass: posixAccount\n\
uid: bob\n\
cn: Bob Builder\n\
uidNumber: 2002\n\
gidNumber: 5000\n\
homeDirectory: /home/bob\n\
userPassword: {bob_a}\n {bob_b}\n\
\n\
dn: cn=Carol Smith,ou=people,dc=example,dc=org\n\
objectClass: posixAccount\n\
objectClass: account\n\
uid: carol\n\
cn: Carol Smith\n\
gecos: Carol S,Room 1,555\n\
uidNumber: 2003\n\
gidNumber: 5000\n\
homeDirectory: /home/carol\n\
userPassword: {carol_pw}\n\
\n\
dn: uid=dave,ou=people,dc=example,dc=org\n\
objectClass: posixAccount\n\
uid: dave\n\
gecos: Dave D,,,\n\
uidNumber: 2004\n\
gidNumber: 5000\n\
homeDirectory: /home/dave\n\
userPassword: plain-text-secret\n\
mail: not-an-address\n\
\n\
dn: uid=eve,ou=people,dc=example,dc=org\n\
changetype: add\n\
objectClass: posixAccount\n\
uid: eve\n\
cn: Eve\n\
uidNumber: 2005\n\
gidNumber: 5000\n\
homeDirectory: /home/eve\n\
userPassword: {{MD5}}Xr4ilOzQ4PCOq3aQ0qbuaQ==\n\
\n\
dn: uid=root,ou=people,dc=example,dc=org\n\
objectClass: posixAccount\n\
uid: root\n\
cn: root\n\
uidNumber: 0\n\
gidNumber: 0\n\
homeDirectory: /root\n\
\n\
dn: uid=Mallory,ou=people,dc=example,dc=org\n\
objectClass: posixAccount\n\
uid: Mallory\n\
cn: Mallory\n\
uidNumber: 2006\n\
gidNumber: 5000\n\
homeDirectory: /home/mallory\n\
\n\
dn: uid=twin,ou=people,dc=example,dc=org\n\
objectClass: posixAccount\n\
uid: twin\n\
cn: Twin\n\
uidNumber: 2001\n\
gidNumber: 5000\n\
homeDirectory: /home/twin\n\
\n\
dn: uid=nonum,ou=people,dc=example,dc=org\n\
objectClass: posixAccount\n\
uid: nonum\n\
cn: No Number\n\
homeDirectory: /home/nonum\n\
\n\
dn: uid=alice,ou=people,dc=example,dc=org\n\
changetype: modify\n\
replace: mail\n\
mail: alice@example.com\n\
-\n\
\n\
dn: cn=badgid,ou=groups,dc=example,dc=org\n\
objectClass: posixGroup\n\
cn: badgid\n\
gidNumber: five\n"
    )
}

async fn run(store: &Store, ldif: &str, dry_run: bool) -> ImportReport {
    let records = parser::parse(ldif.as_bytes());
    import_records(&DirectoryConfig::default(), store, records, "test.ldif", dry_run, &Actor::system()).await.unwrap()
}

fn reason_for<'a>(report: &'a ImportReport, dn_part: &str) -> Vec<&'a str> {
    report.skipped.iter().filter(|p| p.dn.contains(dn_part)).map(|p| p.reason.as_str()).collect()
}

async fn members_of(store: &Store, group: &str) -> Vec<String> {
    let data = store.load_directory().await.unwrap();
    let g = data.groups.iter().find(|g| g.name == group).unwrap();
    let mut names: Vec<String> =
        data.users.iter().filter(|u| g.member_ids.contains(&u.id)).map(|u| u.name.clone()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn imports_users_groups_and_memberships() {
    let store = Store::open_in_memory().await.unwrap();
    let report = run(&store, &fixture(), false).await;
    let text = report.to_string();

    assert_eq!(report.records, 17, "{text}");
    assert_eq!(report.structural, 3, "{text}");
    assert_eq!(report.users_created, 5, "{text}");
    assert_eq!(report.groups_created, 2, "{text}");
    // alice (memberUid + uniqueMember, counted once), bob (uid DN), carol (cn DN).
    assert_eq!(report.memberships_added, 3, "{text}");
    assert_eq!(report.passwords_to_upgrade, 3, "{text}");
    assert_eq!(report.users_without_password, 2, "{text}");
    assert!(report.committed);
    // admin, root, Mallory, twin, nonum, the modify record, badgid.
    assert_eq!(report.entries_skipped, 7, "{text}");
    // ghost, admin DN, ops DN.
    assert_eq!(report.memberships_skipped, 3, "{text}");

    let alice = store.user("alice").await.unwrap().unwrap();
    assert_eq!(alice.uid_number, 2001);
    assert_eq!(alice.gid_number, 5000);
    assert_eq!(alice.display_name, "Alice Example");
    assert_eq!(alice.email.as_deref(), Some("alice@example.org"));
    assert_eq!(alice.login_shell, "/bin/zsh");
    assert_eq!(alice.home_directory, "/home/alice");
    assert_eq!(
        alice.ssh_keys,
        ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA alice@laptop", "ssh-rsa AAAAB3NzaC1yc2E alice@desk"]
    );
    let alice_hash = alice.password_hash.unwrap();
    assert!(alice_hash.starts_with("{SSHA}"), "kept as stored");
    assert_eq!(verify_password(&alice_hash, "alice-secret"), Verdict::MatchNeedsRehash);

    let bob = store.user("bob").await.unwrap().unwrap();
    assert_eq!(bob.display_name, "Bob Builder");
    assert_eq!(bob.login_shell, "/bin/bash", "default shell");
    assert_eq!(verify_password(&bob.password_hash.unwrap(), "bob-secret"), Verdict::MatchNeedsRehash);

    let carol = store.user("carol").await.unwrap().unwrap();
    assert_eq!(carol.display_name, "Carol Smith", "cn before gecos");
    assert_eq!(verify_password(&carol.password_hash.unwrap(), "carol-secret"), Verdict::MatchNeedsRehash);

    let dave = store.user("dave").await.unwrap().unwrap();
    assert_eq!(dave.display_name, "Dave D", "name part of gecos");
    assert_eq!(dave.password_hash, None, "plaintext is not imported");
    assert_eq!(dave.email, None);

    let eve = store.user("eve").await.unwrap().unwrap();
    assert_eq!(eve.password_hash, None, "unsupported scheme is not imported");

    assert_eq!(members_of(&store, "developers").await, ["alice", "bob", "carol"]);
    assert!(members_of(&store, "ops").await.is_empty());
    let data = store.load_directory().await.unwrap();
    let dev = data.groups.iter().find(|g| g.name == "developers").unwrap();
    assert_eq!(dev.gid_number, 5000);
    assert_eq!(dev.description, "The developers");
    assert!(data.groups.iter().all(|g| g.name != "badgid"));

    assert!(reason_for(&report, "cn=admin")[0].contains("neither posixAccount nor posixGroup"));
    assert!(reason_for(&report, "uid=root")[0].contains("uidNumber 0"));
    assert!(reason_for(&report, "uid=Mallory")[0].contains("invalid user name"));
    assert!(reason_for(&report, "uid=twin")[0].contains("uidNumber 2001 is already used by uid=alice"));
    assert!(reason_for(&report, "uid=nonum")[0].contains("no uidNumber"));
    assert!(reason_for(&report, "cn=badgid")[0].contains("not a number"));
    let dev_reasons = reason_for(&report, "cn=developers");
    assert!(dev_reasons.iter().any(|r| r.contains("memberUid \"ghost\": no such user")), "{dev_reasons:?}");
    assert!(dev_reasons.iter().any(|r| r.contains("cn=admin") && r.contains("not a user")), "{dev_reasons:?}");
    assert!(dev_reasons.iter().any(|r| r.contains("nested groups")), "{dev_reasons:?}");
    assert!(report.skipped.iter().any(|p| p.reason.contains("changetype: modify")));

    let notes: Vec<String> = report.notes.iter().map(|n| format!("{}: {}", n.dn, n.reason)).collect();
    assert!(notes.iter().any(|n| n.contains("uid=dave") && n.contains("plaintext")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("uid=dave") && n.contains("not a valid address")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("uid=eve") && n.contains("{MD5} is not supported")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("uid=alice") && n.contains("1 sshPublicKey")), "{notes:?}");
    assert!(!text.contains("plain-text-secret"), "passwords never reach the report");
    assert!(text.lines().any(|l| l.trim_start().starts_with("users created:") && l.ends_with(" 5")), "{text}");

    let audit = store.audit_tail(1).await.unwrap();
    assert_eq!(audit[0].action, "import.ldif");
}

#[tokio::test]
async fn second_import_changes_nothing() {
    let store = Store::open_in_memory().await.unwrap();
    let first = run(&store, &fixture(), false).await;
    let generation = store.generation().await.unwrap();
    let audit_rows = store.audit_tail(10_000).await.unwrap().len();

    let second = run(&store, &fixture(), false).await;
    let text = second.to_string();
    assert_eq!(second.changes(), 0, "{text}");
    assert_eq!(second.users_unchanged, first.users_created, "{text}");
    assert_eq!(second.groups_unchanged, first.groups_created, "{text}");
    assert_eq!(second.memberships_unchanged, first.memberships_added, "{text}");
    assert!(!second.committed);
    assert!(text.contains("nothing to change"), "{text}");
    assert_eq!(store.generation().await.unwrap(), generation, "no commit, no reload");
    assert_eq!(store.audit_tail(10_000).await.unwrap().len(), audit_rows);
}

#[tokio::test]
async fn dry_run_reports_the_same_and_changes_nothing() {
    let store = Store::open_in_memory().await.unwrap();
    let generation = store.generation().await.unwrap();
    let dry = run(&store, &fixture(), true).await;
    assert!(dry.to_string().starts_with("Dry run"), "{dry}");
    assert!(!dry.committed);
    let data = store.load_directory().await.unwrap();
    assert!(data.users.is_empty() && data.groups.is_empty());
    assert_eq!(store.generation().await.unwrap(), generation);

    let real = run(&store, &fixture(), false).await;
    assert_eq!(
        ImportReport { dry_run: true, committed: false, ..real.clone() },
        dry,
        "a dry run predicts the real import exactly"
    );
}

#[tokio::test]
async fn existing_entries_are_kept_and_conflicts_skipped() {
    let store = Store::open_in_memory().await.unwrap();
    let dir = DirectoryConfig::default();
    let actor = Actor::system();
    let mut tx = store.begin().await.unwrap();
    let new = |name: &str, uid: i64| NewUser {
        name: name.into(),
        uid_number: Some(uid),
        gid_number: Some(100),
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".into()),
        ..NewUser::default()
    };
    tx.add_user(new("alice", 9001), &dir, &actor).await.unwrap();
    tx.add_user(new("zed", 2002), &dir, &actor).await.unwrap();
    tx.add_group(
        NewGroup { name: "developers".into(), description: "mine".into(), gid_number: Some(7000) },
        &dir,
        &actor,
    )
    .await
    .unwrap();
    tx.add_group(NewGroup { name: "staff".into(), description: String::new(), gid_number: Some(5001) }, &dir, &actor)
        .await
        .unwrap();
    tx.add_member("developers", "alice", &actor).await.unwrap();
    tx.commit().await.unwrap();

    let report = run(&store, &fixture(), false).await;
    let text = report.to_string();
    assert_eq!(report.users_unchanged, 1, "{text}");
    assert!(reason_for(&report, "uid=bob")[0].contains("uidNumber 2002 already belongs to user zed"), "{text}");
    assert!(reason_for(&report, "cn=ops")[0].contains("gidNumber 5001 already belongs to group staff"), "{text}");
    assert_eq!(report.groups_unchanged, 1, "{text}");
    // alice was a member already; carol is added; bob was skipped.
    assert_eq!(report.memberships_unchanged, 1, "{text}");
    assert_eq!(report.memberships_added, 1, "{text}");
    let alice = store.user("alice").await.unwrap().unwrap();
    assert_eq!(alice.uid_number, 9001, "existing users are not modified");
    assert!(alice.password_hash.unwrap().starts_with("$argon2id$"));
    let data = store.load_directory().await.unwrap();
    let dev = data.groups.iter().find(|g| g.name == "developers").unwrap();
    assert_eq!((dev.gid_number, dev.description.as_str()), (7000, "mine"));
    assert_eq!(members_of(&store, "developers").await, ["alice", "carol"]);
}

#[tokio::test]
async fn members_may_be_existing_store_users() {
    let store = Store::open_in_memory().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let new = NewUser { name: "olduser".into(), gid_number: Some(100), ..NewUser::default() };
    tx.add_user(new, &DirectoryConfig::default(), &Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    let ldif = "dn: cn=g,ou=groups,dc=x\nobjectClass: posixGroup\ncn: g\ngidNumber: 300\n\
                member: uid=olduser,ou=people,dc=elsewhere\nmemberUid: olduser\n";
    let report = run(&store, ldif, false).await;
    assert_eq!((report.groups_created, report.memberships_added), (1, 1), "{report}");
    assert_eq!(members_of(&store, "g").await, ["olduser"]);
}

#[tokio::test]
async fn long_lists_are_capped() {
    let store = Store::open_in_memory().await.unwrap();
    let ldif: String = (0..150)
        .map(|i| format!("dn: uid=U{i},dc=x\nobjectClass: posixAccount\nuid: U{i}\nuidNumber: {}\n\n", 3000 + i))
        .collect();
    let report = run(&store, &ldif, false).await;
    assert_eq!(report.entries_skipped, 150);
    let text = report.to_string();
    assert_eq!(text.lines().filter(|l| l.contains("invalid user name")).count(), MAX_LISTED);
    assert!(text.contains("… and 50 more"), "{text}");
}

#[tokio::test]
async fn many_users_and_groups_in_one_transaction() {
    let users = 2_000;
    let groups = 100;
    let mut ldif = String::new();
    for g in 0..groups {
        ldif.push_str(&format!(
            "dn: cn=g{g},ou=groups,dc=x\nobjectClass: posixGroup\ncn: g{g}\ngidNumber: {}\n",
            20_000 + g
        ));
        for m in 0..20 {
            ldif.push_str(&format!("memberUid: u{}\n", (g * 20 + m) % users));
        }
        ldif.push('\n');
    }
    for u in 0..users {
        ldif.push_str(&format!(
            "dn: uid=u{u},ou=people,dc=x\nobjectClass: posixAccount\nuid: u{u}\ncn: User {u}\n\
             uidNumber: {}\ngidNumber: 100\nhomeDirectory: /home/u{u}\n\
             userPassword: {{SSHA}}AAAAAAAAAAAAAAAAAAAAAAAAAAAA\n\n",
            30_000 + u
        ));
    }
    let store = Store::open_in_memory().await.unwrap();
    let started = std::time::Instant::now();
    let report = run(&store, &ldif, false).await;
    eprintln!("imported {users} users, {groups} groups in {:?}", started.elapsed());
    assert_eq!(report.users_created, users, "{report}");
    assert_eq!(report.groups_created, groups, "{report}");
    assert_eq!(report.memberships_added, groups * 20, "{report}");
    assert_eq!(report.passwords_to_upgrade, users);
    let again = run(&store, &ldif, false).await;
    assert_eq!(again.changes(), 0, "{again}");
}

#[tokio::test]
async fn file_limits() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default();
    let store = Store::open_in_memory().await.unwrap();
    let actor = Actor::system();

    let missing = import_file(&config, &store, &dir.path().join("nope.ldif"), false, &actor).await.unwrap_err();
    assert!(missing.to_string().contains("cannot open LDIF file"), "{missing:#}");

    let is_dir = import_file(&config, &store, dir.path(), false, &actor).await.unwrap_err();
    assert!(is_dir.to_string().contains("is a directory"), "{is_dir:#}");

    let big = dir.path().join("big.ldif");
    std::fs::File::create(&big).unwrap().set_len(MAX_FILE_BYTES + 1).unwrap();
    let too_big = import_file(&config, &store, &big, false, &actor).await.unwrap_err();
    assert!(too_big.to_string().contains("larger than 256 MiB"), "{too_big:#}");

    let small = dir.path().join("small.ldif");
    std::fs::write(&small, "dn: uid=x,dc=y\nobjectClass: posixAccount\nuid: x\nuidNumber: 4000\n").unwrap();
    let report = import_file(&config, &store, &small, false, &actor).await.unwrap();
    assert_eq!(report.users_created, 1, "{report}");
    assert!(report.to_string().contains("small.ldif"));
}

#[test]
fn password_notes_name_schemes_but_never_values() {
    let note_for = |values: &[&str]| {
        let ldif: String = values.iter().map(|v| format!("userPassword: {v}\n")).collect();
        let records = parser::parse(format!("dn: uid=x\n{ldif}").as_bytes());
        let Body::Entry(entry) = &records[0].body else { panic!("entry") };
        password_hash(entry, "x")
    };
    assert_eq!(note_for(&[]), (None, None));
    let (hash, note) = note_for(&["{SMD5}abcd", "{SSHA}AAAAAAAAAAAAAAAAAAAAAAAAAAAA"]);
    assert_eq!(hash.as_deref(), Some("{SSHA}AAAAAAAAAAAAAAAAAAAAAAAAAAAA"), "first supported value wins");
    assert_eq!(note, None);
    let (hash, note) = note_for(&["{smd5}abcd"]);
    assert_eq!(hash, None);
    assert!(note.unwrap().starts_with("password scheme {SMD5} is not supported"));
    let note = note_for(&["{CRYPT}$1$salt$hash"]).1.unwrap();
    assert!(note.contains("{CRYPT} hash of an unsupported kind") && !note.contains("salt"), "{note}");
    let note = note_for(&["{hunter2}rest"]).1.unwrap();
    assert!(note.contains("unknown {SCHEME} prefix") && !note.to_lowercase().contains("hunter2"), "{note}");
    let note = note_for(&["hunter2"]).1.unwrap();
    assert!(note.contains("plaintext") && !note.contains("hunter2") && note.contains("user passwd x"), "{note}");
}
