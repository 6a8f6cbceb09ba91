//! `portcullis import ldif FILE [--dry-run]`: imports `posixAccount` users,
//! `posixGroup` groups and their memberships from an LDIF export (`slapcat`,
//! `ldapsearch -L…`) in one write transaction.
//!
//! Users are created first, then groups, then memberships, so the order of
//! entries in the file does not matter. Source uidNumbers and gidNumbers are
//! kept. Password hashes that [`is_supported_hash`] accepts are stored as
//! they are and upgraded to argon2id at the user's next successful bind;
//! plaintext or unknown schemes are not imported (the user gets no password
//! and the report says so). Problems are confined to the entry they occur in:
//! such entries are skipped and listed with the reason; only database errors
//! abort the import (and then nothing is changed).
//!
//! Running an import twice changes nothing the second time: users and groups
//! that already exist (by name) are left untouched and counted as unchanged,
//! existing memberships are counted, not re-added, and when nothing is to be
//! changed the transaction is rolled back rather than committed. `--dry-run`
//! performs every step and then rolls back.

mod parser;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use anyhow::{Context, bail};
use tokio::io::AsyncReadExt;

use self::parser::{Body, Entry, Record};
use crate::auth::password::is_supported_hash;
use crate::config::{Config, DirectoryConfig};
use crate::directory::dn::Dn;
use crate::model::{Actor, Kind, validate_email, validate_name};
use crate::store::{NewGroup, NewUser, Store, StoreError};

/// Largest LDIF file accepted.
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// Skipped entries and notes listed one per line in the report; the rest are counted.
pub const MAX_LISTED: usize = 100;
/// Longest free-text value the store accepts (display name, description, shell, home).
const MAX_TEXT_LEN: usize = 256;
/// Longest SSH public key line the store accepts.
const MAX_SSH_KEY_LEN: usize = 16 * 1024;
/// Largest POSIX id; 4294967295 is `(uid_t)-1`.
const MAX_POSIX_ID: i64 = 4_294_967_294;
/// Object classes of tree structure (suffix, OUs): counted, not reported.
const CONTAINER_CLASSES: &[&str] =
    &["organizationalunit", "organization", "dcobject", "domain", "country", "locality", "container"];
/// Password schemes other directories use that cannot be verified here;
/// named in the report (other `{…}` prefixes are not echoed).
const KNOWN_SCHEMES: &[&str] = &[
    "MD5",
    "SMD5",
    "SASL",
    "UNIX",
    "CLEARTEXT",
    "K5KEY",
    "KERBEROS",
    "BSDMD5",
    "NS-MTA-MD5",
    "PKCS5S2",
    "PBKDF2",
    "PBKDF2-SHA1",
    "PBKDF2-SHA256",
    "PBKDF2-SHA512",
    "SHA384",
    "SSHA384",
    "SHA3-256",
    "SSHA3-256",
    "SHA3-512",
    "SSHA3-512",
    "SCRYPT",
    "BCRYPT",
    "TOTP1",
    "TOTP256",
    "TOTP512",
];
/// What a current argon2id hash (one that needs no upgrade) starts with.
const CURRENT_HASH_PREFIX: &str = "$argon2id$v=19$m=19456,t=2,p=1$";

/// One entry or membership that was not imported, or a remark about one
/// that was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The entry's DN as written in the file (or its line number).
    pub dn: String,
    pub reason: String,
}

/// What an import did (or, for a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// The file imported, for the heading.
    pub source: String,
    pub dry_run: bool,
    /// Whether changes were committed (false for dry runs and no-op imports).
    pub committed: bool,
    /// Records read from the file (entries and change records).
    pub records: usize,
    /// Tree-structure entries (suffix, OUs) ignored without comment.
    pub structural: usize,
    pub users_created: usize,
    pub users_unchanged: usize,
    pub groups_created: usize,
    pub groups_unchanged: usize,
    pub memberships_added: usize,
    pub memberships_unchanged: usize,
    pub entries_skipped: usize,
    pub memberships_skipped: usize,
    /// Created users whose hash is of an older scheme, re-hashed at their next bind.
    pub passwords_to_upgrade: usize,
    /// Created users without a usable password hash.
    pub users_without_password: usize,
    /// Every skipped entry and membership with the reason.
    pub skipped: Vec<Problem>,
    /// Remarks about imported entries (dropped passwords, addresses, keys).
    pub notes: Vec<Problem>,
}

impl ImportReport {
    /// Number of changes made (or, in a dry run, that would be made).
    pub fn changes(&self) -> usize {
        self.users_created + self.groups_created + self.memberships_added
    }

    fn skip_entry(&mut self, dn: &str, reason: impl Into<String>) {
        self.entries_skipped += 1;
        self.skipped.push(Problem { dn: shown(dn), reason: shown(&reason.into()) });
    }

    fn skip_membership(&mut self, dn: &str, reason: impl Into<String>) {
        self.memberships_skipped += 1;
        self.skipped.push(Problem { dn: shown(dn), reason: shown(&reason.into()) });
    }

    fn note(&mut self, dn: &str, note: impl Into<String>) {
        self.notes.push(Problem { dn: shown(dn), reason: shown(&note.into()) });
    }
}

impl fmt::Display for ImportReport {
    /// A heading and one line per count, then the skipped entries and notes
    /// (at most [`MAX_LISTED`] of each); no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            write!(f, "Dry run of the LDIF import from {}: nothing was changed (rolled back).", self.source)?;
            write!(f, "\nAn import would do the following:")?;
        } else if self.committed {
            write!(f, "LDIF import from {}: done.", self.source)?;
        } else {
            write!(f, "LDIF import from {}: nothing to change.", self.source)?;
        }
        let rows = [
            ("records read:", self.records, ""),
            ("users created:", self.users_created, ""),
            ("users already present:", self.users_unchanged, " (unchanged)"),
            ("groups created:", self.groups_created, ""),
            ("groups already present:", self.groups_unchanged, " (unchanged)"),
            ("memberships added:", self.memberships_added, ""),
            ("memberships already present:", self.memberships_unchanged, ""),
            ("entries skipped:", self.entries_skipped, ""),
            ("memberships skipped:", self.memberships_skipped, ""),
            ("structural entries ignored:", self.structural, " (suffix, organizational units)"),
            ("passwords to upgrade:", self.passwords_to_upgrade, " (re-hashed to argon2id at the user's next bind)"),
            ("users without a password:", self.users_without_password, ""),
        ];
        for (label, count, remark) in rows {
            write!(f, "\n  {label:<30}{count}{remark}")?;
        }
        for (title, list) in [("Skipped", &self.skipped), ("Notes", &self.notes)] {
            if list.is_empty() {
                continue;
            }
            write!(f, "\n{title}:")?;
            for p in list.iter().take(MAX_LISTED) {
                write!(f, "\n  {}: {}", p.dn, p.reason)?;
            }
            if list.len() > MAX_LISTED {
                write!(f, "\n  … and {} more", list.len() - MAX_LISTED)?;
            }
        }
        Ok(())
    }
}

/// Imports the users, groups and memberships in the LDIF file `file`.
/// With `dry_run`, everything is done inside a transaction that is then
/// rolled back, and the same report is returned.
///
/// # Errors
/// The file cannot be read or exceeds [`MAX_FILE_BYTES`], or the database
/// fails (then nothing is changed). Problems with single entries are not
/// errors: they are listed in the report.
pub async fn import_file(
    config: &Config,
    store: &Store,
    file: &Path,
    dry_run: bool,
    actor: &Actor,
) -> anyhow::Result<ImportReport> {
    let data = read_bounded(file).await?;
    let records = parser::parse(&data);
    drop(data);
    import_records(&config.directory, store, records, &file.display().to_string(), dry_run, actor).await
}

/// Reads at most [`MAX_FILE_BYTES`] of `file`.
async fn read_bounded(file: &Path) -> anyhow::Result<Vec<u8>> {
    let handle =
        tokio::fs::File::open(file).await.with_context(|| format!("cannot open LDIF file {}", file.display()))?;
    let meta = handle.metadata().await.with_context(|| format!("cannot read LDIF file {}", file.display()))?;
    if meta.is_dir() {
        bail!("{} is a directory, not an LDIF file", file.display());
    }
    let too_big = || {
        anyhow::anyhow!(
            "{} is larger than {} MiB; split it into several LDIF files and import them one by one",
            file.display(),
            MAX_FILE_BYTES / (1024 * 1024)
        )
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_big());
    }
    let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    handle
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut data)
        .await
        .with_context(|| format!("cannot read LDIF file {}", file.display()))?;
    if u64::try_from(data.len()).unwrap_or(u64::MAX) > MAX_FILE_BYTES {
        return Err(too_big());
    }
    Ok(data)
}

/// What the store holds before the import, for conflict checks.
#[derive(Debug, Default)]
struct Existing {
    users: HashSet<String>,
    uid_owner: HashMap<i64, String>,
    groups: HashSet<String>,
    gid_owner: HashMap<i64, String>,
    /// Group name → names of its members.
    members: HashMap<String, HashSet<String>>,
}

impl Existing {
    async fn load(store: &Store) -> anyhow::Result<Self> {
        let data = store.load_directory().await.context("cannot read the store")?;
        let names: HashMap<&str, &str> = data.users.iter().map(|u| (u.id.as_str(), u.name.as_str())).collect();
        let mut existing = Self::default();
        for u in &data.users {
            existing.users.insert(u.name.clone());
            existing.uid_owner.insert(u.uid_number, u.name.clone());
        }
        for g in &data.groups {
            existing.groups.insert(g.name.clone());
            existing.gid_owner.insert(g.gid_number, g.name.clone());
            let members = g.member_ids.iter().filter_map(|id| names.get(id.as_str())).map(|n| (*n).to_string());
            existing.members.insert(g.name.clone(), members.collect());
        }
        Ok(existing)
    }
}

/// A user entry that passed the checks.
#[derive(Debug)]
struct UserPlan {
    dn: String,
    /// Normalised DN, to resolve `member:` values.
    ndn: Option<String>,
    name: String,
    /// `None` when a user of this name already exists.
    new: Option<NewUser>,
    notes: Vec<String>,
}

/// A group entry that passed the checks.
#[derive(Debug)]
struct GroupPlan {
    dn: String,
    name: String,
    /// `None` when a group of this name already exists.
    new: Option<NewGroup>,
    members: Vec<Member>,
    notes: Vec<String>,
}

/// A membership as written in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Member {
    /// `memberUid: NAME`.
    Uid(String),
    /// `member: DN` or `uniqueMember: DN`.
    Dn(String),
}

/// Everything to do, in order.
#[derive(Debug, Default)]
struct Plan {
    users: Vec<UserPlan>,
    groups: Vec<GroupPlan>,
    /// Normalised DNs of every posixGroup entry, to explain nested groups.
    group_dns: HashSet<String>,
}

/// Names and numbers already claimed by earlier entries of the file.
#[derive(Debug, Default)]
struct Seen {
    user_names: HashMap<String, String>,
    uid_numbers: HashMap<i64, String>,
    group_names: HashMap<String, String>,
    gid_numbers: HashMap<i64, String>,
}

/// Imports parsed records: plans every entry, then applies the plan in one
/// transaction that is committed unless `dry_run` or there is nothing to do.
async fn import_records(
    dir: &DirectoryConfig,
    store: &Store,
    records: Vec<Record>,
    source: &str,
    dry_run: bool,
    actor: &Actor,
) -> anyhow::Result<ImportReport> {
    let mut report = ImportReport { source: shown(source), dry_run, ..ImportReport::default() };
    // Read before the transaction: an in-memory store has a single connection.
    let existing = Existing::load(store).await?;
    let plan = plan(records, &existing, &mut report);
    let mut tx = store.begin().await.context("cannot start the import transaction")?;

    let mut known_users = existing.users.clone();
    let mut user_dns: HashMap<String, String> = HashMap::new();
    for user in plan.users {
        if let Some(new) = user.new {
            let hash = new.password_hash.clone();
            if let Err(e) = tx.add_user(new, dir, actor).await {
                report.skip_entry(&user.dn, per_entry(e)?);
                continue;
            }
            report.users_created += 1;
            match hash {
                Some(h) if !h.starts_with(CURRENT_HASH_PREFIX) => report.passwords_to_upgrade += 1,
                Some(_) => {}
                None => report.users_without_password += 1,
            }
            for note in user.notes {
                report.note(&user.dn, note);
            }
        } else {
            report.users_unchanged += 1;
        }
        if let Some(ndn) = user.ndn {
            user_dns.insert(ndn, user.name.clone());
        }
        known_users.insert(user.name);
    }

    let mut groups = Vec::with_capacity(plan.groups.len());
    for mut group in plan.groups {
        if let Some(new) = group.new.take() {
            if let Err(e) = tx.add_group(new, dir, actor).await {
                report.skip_entry(&group.dn, per_entry(e)?);
                continue;
            }
            report.groups_created += 1;
            for note in std::mem::take(&mut group.notes) {
                report.note(&group.dn, note);
            }
        } else {
            report.groups_unchanged += 1;
        }
        groups.push(group);
    }

    let no_members = HashSet::new();
    for group in groups {
        let present = existing.members.get(&group.name).unwrap_or(&no_members);
        let mut done: HashSet<String> = HashSet::new();
        for member in &group.members {
            let user = match resolve(member, &known_users, &user_dns, &plan.group_dns) {
                Ok(user) => user,
                Err(reason) => {
                    report.skip_membership(&group.dn, reason);
                    continue;
                }
            };
            if !done.insert(user.clone()) {
                continue;
            }
            if present.contains(&user) {
                report.memberships_unchanged += 1;
                continue;
            }
            match tx.add_member(&group.name, &user, actor).await {
                Ok(()) => report.memberships_added += 1,
                Err(e) => report.skip_membership(&group.dn, format!("member {user}: {}", per_entry(e)?)),
            }
        }
    }

    if dry_run || report.changes() == 0 {
        // Dropping the transaction rolls it back, generation bump included.
        drop(tx);
        return Ok(report);
    }
    let summary = format!(
        "users={} groups={} memberships={} skipped={}",
        report.users_created,
        report.groups_created,
        report.memberships_added,
        report.entries_skipped + report.memberships_skipped
    );
    tx.audit(actor, "import.ldif", source, &summary).await?;
    tx.commit().await.context("cannot commit the import; nothing was changed")?;
    report.committed = true;
    Ok(report)
}

/// The message of an error that concerns one entry; database errors abort.
fn per_entry(e: StoreError) -> anyhow::Result<String> {
    match e {
        StoreError::Db(_) | StoreError::Migrate(_) => {
            Err(anyhow::Error::new(e).context("import aborted by a database error; nothing was changed"))
        }
        other => Ok(other.to_string()),
    }
}

/// Checks every record and decides what to do with it.
fn plan(records: Vec<Record>, existing: &Existing, report: &mut ImportReport) -> Plan {
    let mut plan = Plan::default();
    let mut seen = Seen::default();
    for record in records {
        report.records += 1;
        let dn = record.dn.unwrap_or_else(|| format!("(record at line {})", record.line));
        let entry = match record.body {
            Body::Entry(entry) => entry,
            Body::Skip(reason) => {
                report.skip_entry(&dn, reason);
                continue;
            }
        };
        let is_user = entry.has_object_class("posixAccount");
        let is_group = entry.has_object_class("posixGroup");
        if !is_user && !is_group {
            let classes = entry.object_classes();
            if classes.iter().any(|c| CONTAINER_CLASSES.contains(&c.as_str())) {
                report.structural += 1;
            } else if classes.is_empty() {
                report.skip_entry(&dn, "no objectClass");
            } else {
                let written: Vec<String> =
                    entry.values("objectClass").iter().map(|v| String::from_utf8_lossy(v).trim().to_string()).collect();
                let reason = format!("neither posixAccount nor posixGroup (objectClass: {})", written.join(", "));
                report.skip_entry(&dn, reason);
            }
            continue;
        }
        let parsed = Dn::parse(&dn).ok();
        if is_user {
            match plan_user(&dn, parsed.as_ref(), &entry, existing, &mut seen) {
                Ok(user) => plan.users.push(user),
                Err(reason) => report.skip_entry(&dn, reason),
            }
        }
        if is_group {
            if let Some(d) = &parsed {
                plan.group_dns.insert(d.normalized());
            }
            match plan_group(&dn, parsed.as_ref(), &entry, existing, &mut seen) {
                Ok(group) => plan.groups.push(group),
                Err(reason) => report.skip_entry(&dn, reason),
            }
        }
    }
    plan
}

fn plan_user(
    dn: &str,
    parsed: Option<&Dn>,
    entry: &Entry,
    existing: &Existing,
    seen: &mut Seen,
) -> Result<UserPlan, String> {
    let uids = entry.texts("uid")?;
    let name = pick(parsed, "uid", &uids).ok_or("no uid attribute (login name)")?.to_string();
    validate_name(Kind::User, &name)?;
    if let Some(first) = seen.user_names.get(&name) {
        return Err(format!("user {name} is already defined by {first} earlier in the file"));
    }
    let ndn = parsed.map(Dn::normalized);
    if existing.users.contains(&name) {
        seen.user_names.insert(name.clone(), dn.to_string());
        return Ok(UserPlan { dn: dn.to_string(), ndn, name, new: None, notes: Vec::new() });
    }
    let uid_number = match posix_number(entry, "uidNumber")? {
        None => return Err("no uidNumber".into()),
        Some(0) => return Err("uidNumber 0 (root) is not imported".into()),
        Some(n) => n,
    };
    if let Some(owner) = existing.uid_owner.get(&uid_number) {
        return Err(format!("uidNumber {uid_number} already belongs to user {owner} in the store"));
    }
    if let Some(other) = seen.uid_numbers.get(&uid_number) {
        return Err(format!("uidNumber {uid_number} is already used by {other} earlier in the file"));
    }
    let gid_number = match posix_number(entry, "gidNumber")? {
        Some(0) => return Err("gidNumber 0 (root) is not imported".into()),
        n => n,
    };
    let login_shell = optional_text(entry, "loginShell")?;
    let home_directory = optional_text(entry, "homeDirectory")?;

    let mut notes = Vec::new();
    let display_name = display_name(entry, &mut notes);
    let email = match entry.first_text("mail") {
        Ok(Some(mail)) if validate_email(mail.trim()).is_ok() => Some(mail.trim().to_string()),
        Ok(Some(mail)) => {
            notes.push(format!("mail {:?} is not a valid address; not imported", mail.trim()));
            None
        }
        Ok(None) => None,
        Err(e) => {
            notes.push(format!("{e}; mail not imported"));
            None
        }
    };
    let ssh_keys = ssh_keys(entry, &mut notes);
    let (password_hash, note) = password_hash(entry, &name);
    notes.extend(note);

    seen.user_names.insert(name.clone(), dn.to_string());
    seen.uid_numbers.insert(uid_number, dn.to_string());
    let new = NewUser {
        name: name.clone(),
        email,
        display_name,
        password_hash,
        uid_number: Some(uid_number),
        gid_number,
        login_shell,
        home_directory,
        ssh_keys,
    };
    Ok(UserPlan { dn: dn.to_string(), ndn, name, new: Some(new), notes })
}

fn plan_group(
    dn: &str,
    parsed: Option<&Dn>,
    entry: &Entry,
    existing: &Existing,
    seen: &mut Seen,
) -> Result<GroupPlan, String> {
    let cns = entry.texts("cn")?;
    let name = pick(parsed, "cn", &cns).ok_or("no cn attribute (group name)")?.to_string();
    validate_name(Kind::Group, &name)?;
    if let Some(first) = seen.group_names.get(&name) {
        return Err(format!("group {name} is already defined by {first} earlier in the file"));
    }
    let mut members: Vec<Member> = Vec::new();
    for uid in entry.texts("memberUid")? {
        let uid = uid.trim();
        if !uid.is_empty() {
            members.push(Member::Uid(uid.to_string()));
        }
    }
    for attr in ["member", "uniqueMember"] {
        for member in entry.texts(attr)? {
            if !member.trim().is_empty() {
                members.push(Member::Dn(member.trim().to_string()));
            }
        }
    }
    if existing.groups.contains(&name) {
        seen.group_names.insert(name.clone(), dn.to_string());
        return Ok(GroupPlan { dn: dn.to_string(), name, new: None, members, notes: Vec::new() });
    }
    let gid_number = match posix_number(entry, "gidNumber")? {
        None => return Err("no gidNumber".into()),
        Some(0) => return Err("gidNumber 0 (root) is not imported".into()),
        Some(n) => n,
    };
    if let Some(owner) = existing.gid_owner.get(&gid_number) {
        return Err(format!("gidNumber {gid_number} already belongs to group {owner} in the store"));
    }
    if let Some(other) = seen.gid_numbers.get(&gid_number) {
        return Err(format!("gidNumber {gid_number} is already used by {other} earlier in the file"));
    }
    let mut notes = Vec::new();
    let description = match entry.first_text("description") {
        Ok(Some(d)) if text_ok(d.trim()) => d.trim().to_string(),
        Ok(None) => String::new(),
        Ok(Some(_)) | Err(_) => {
            notes.push(format!(
                "description is longer than {MAX_TEXT_LEN} bytes, has control characters or is not UTF-8; not imported"
            ));
            String::new()
        }
    };
    seen.group_names.insert(name.clone(), dn.to_string());
    seen.gid_numbers.insert(gid_number, dn.to_string());
    let new = NewGroup { name: name.clone(), description, gid_number: Some(gid_number) };
    Ok(GroupPlan { dn: dn.to_string(), name, new: Some(new), members, notes })
}

/// The value of `attr` named in the entry's RDN if it is among `values`,
/// else the first non-empty value.
fn pick<'a>(dn: Option<&Dn>, attr: &str, values: &[&'a str]) -> Option<&'a str> {
    let values: Vec<&'a str> = values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()).collect();
    let leaf = dn.and_then(|d| d.leaf_value(attr));
    leaf.and_then(|l| values.iter().find(|v| **v == l).copied()).or_else(|| values.first().copied())
}

/// A uidNumber/gidNumber: a decimal in `0..=MAX_POSIX_ID`.
fn posix_number(entry: &Entry, attr: &str) -> Result<Option<i64>, String> {
    let Some(text) = entry.first_text(attr)? else { return Ok(None) };
    let text = text.trim();
    let n: i64 = text.parse().map_err(|_| format!("{attr} {:?} is not a number", shown_short(text)))?;
    if !(0..=MAX_POSIX_ID).contains(&n) {
        return Err(format!("{attr} {n} is out of range (0 to {MAX_POSIX_ID})"));
    }
    Ok(Some(n))
}

/// An optional free-text attribute the user cannot do without if present
/// (shell, home): a bad value skips the entry rather than inventing one.
fn optional_text(entry: &Entry, attr: &str) -> Result<Option<String>, String> {
    match entry.first_text(attr)?.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) if text_ok(v) => Ok(Some(v.to_string())),
        Some(_) => Err(format!("{attr} is longer than {MAX_TEXT_LEN} bytes or has control characters")),
    }
}

fn text_ok(value: &str) -> bool {
    value.len() <= MAX_TEXT_LEN && !value.chars().any(char::is_control)
}

/// displayName, else cn, else the name part of gecos.
fn display_name(entry: &Entry, notes: &mut Vec<String>) -> Option<String> {
    let candidates = [
        entry.first_text("displayName").ok().flatten(),
        entry.first_text("cn").ok().flatten(),
        entry.first_text("gecos").ok().flatten().map(|g| g.split(',').next().unwrap_or(g)),
    ];
    let chosen = candidates.into_iter().flatten().map(str::trim).find(|v| !v.is_empty())?;
    if text_ok(chosen) {
        Some(chosen.to_string())
    } else {
        notes.push(format!(
            "display name is longer than {MAX_TEXT_LEN} bytes or has control characters; the login name is used instead"
        ));
        None
    }
}

/// Every well-formed `sshPublicKey` value, without duplicates.
fn ssh_keys(entry: &Entry, notes: &mut Vec<String>) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut bad = 0;
    for value in entry.values("sshPublicKey") {
        let key = std::str::from_utf8(value).map(str::trim).unwrap_or("");
        let mut parts = key.split_whitespace();
        let kind = parts.next().unwrap_or("");
        let body = parts.next().unwrap_or("");
        let known = kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
        if !known || body.is_empty() || key.len() > MAX_SSH_KEY_LEN || key.contains(['\n', '\r']) {
            bad += 1;
        } else if !keys.iter().any(|k| k == key) {
            keys.push(key.to_string());
        }
    }
    if bad > 0 {
        notes.push(format!("{bad} sshPublicKey value(s) are not OpenSSH public key lines; not imported"));
    }
    keys
}

/// The first `userPassword` value in a supported scheme; otherwise `None`
/// and a note saying why (never the value itself).
fn password_hash(entry: &Entry, name: &str) -> (Option<String>, Option<String>) {
    let values = entry.values("userPassword");
    let texts: Vec<Option<&str>> = values.iter().map(|v| std::str::from_utf8(v).ok().map(str::trim)).collect();
    if let Some(hash) = texts.iter().flatten().find(|h| is_supported_hash(h)) {
        return (Some((*hash).to_string()), None);
    }
    let Some(&first) = texts.first() else { return (None, None) };
    let why = match first.and_then(|t| t.strip_prefix('{')).and_then(|t| t.split_once('}')) {
        None if first.is_none() => "userPassword is not text".to_string(),
        None => "userPassword is plaintext, not a hash".to_string(),
        Some((scheme, _)) => {
            let scheme = scheme.to_ascii_uppercase();
            match scheme.as_str() {
                "CRYPT" => "{CRYPT} hash of an unsupported kind (supported: $5$, $6$, $2a$, $2b$, $2y$)".to_string(),
                "ARGON2" => "{ARGON2} value is not a readable argon2 hash".to_string(),
                // Only well-known names are echoed: `{…}` might be the start of a plaintext password.
                s if KNOWN_SCHEMES.contains(&s) => format!("password scheme {{{s}}} is not supported"),
                _ => "userPassword has an unknown {SCHEME} prefix".to_string(),
            }
        }
    };
    (None, Some(format!("{why}; imported without a password (set one with `portcullis user passwd {name}`)")))
}

/// Resolves a membership to a user name.
fn resolve(
    member: &Member,
    known_users: &HashSet<String>,
    user_dns: &HashMap<String, String>,
    group_dns: &HashSet<String>,
) -> Result<String, String> {
    match member {
        Member::Uid(uid) if known_users.contains(uid) => Ok(uid.clone()),
        Member::Uid(uid) => Err(format!("memberUid {uid:?}: no such user (not imported, not in the store)")),
        Member::Dn(text) => {
            // uniqueMember may carry an optional `#'0101'B` unique identifier.
            let dn_text = match text.rsplit_once("#'") {
                Some((dn, bits)) if bits.ends_with("'B") => dn,
                _ => text.as_str(),
            };
            let Ok(dn) = Dn::parse(dn_text) else {
                return Err(format!("member {text:?} is not a valid DN"));
            };
            let ndn = dn.normalized();
            if let Some(name) = user_dns.get(&ndn) {
                return Ok(name.clone());
            }
            if group_dns.contains(&ndn) {
                return Err(format!("member {text:?} is a group; nested groups are not supported"));
            }
            match dn.leaf_value("uid") {
                Some(uid) if known_users.contains(uid) => Ok(uid.to_string()),
                _ => Err(format!("member {text:?} is not a user of this file or the store")),
            }
        }
    }
}

/// Text from the file made safe for one report line: control characters
/// replaced, length bounded.
fn shown(text: &str) -> String {
    bounded(text, 300)
}

fn shown_short(text: &str) -> String {
    bounded(text, 24)
}

fn bounded(text: &str, max_chars: usize) -> String {
    let mut out: String = text.chars().take(max_chars).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect();
    if text.chars().nth(max_chars).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests;
