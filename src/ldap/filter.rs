//! RFC 4515 filter evaluation over directory entries, with RFC 4511's
//! three-valued logic: an assertion on an unknown attribute, or with a value
//! invalid for the attribute's syntax, is Undefined (as in slapd), never an
//! error. Also picks index candidates so most searches touch few entries.

use std::borrow::Cow;

use ldap3_proto::proto::{LdapFilter, LdapMatchingRuleAssertion, LdapSubstringFilter};

use crate::directory::schema::{self, Rule};
use crate::directory::{Entry, Snapshot};

/// Most filter nodes accepted in one search.
pub const MAX_FILTER_NODES: usize = 4096;

/// A filter's truth value for one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tri {
    True,
    False,
    Undefined,
}

/// Counts the nodes of a filter (its depth is already bounded by the BER parser).
pub fn node_count(f: &LdapFilter) -> usize {
    match f {
        LdapFilter::And(v) | LdapFilter::Or(v) => 1 + v.iter().map(node_count).sum::<usize>(),
        LdapFilter::Not(inner) => 1 + node_count(inner),
        _ => 1,
    }
}

/// Evaluates `f` against `entry`.
pub fn eval(f: &LdapFilter, entry: &Entry) -> Tri {
    match f {
        LdapFilter::And(parts) => {
            let mut out = Tri::True;
            for p in parts {
                match eval(p, entry) {
                    Tri::False => return Tri::False,
                    Tri::Undefined => out = Tri::Undefined,
                    Tri::True => {}
                }
            }
            out
        }
        LdapFilter::Or(parts) => {
            let mut out = Tri::False;
            for p in parts {
                match eval(p, entry) {
                    Tri::True => return Tri::True,
                    Tri::Undefined => out = Tri::Undefined,
                    Tri::False => {}
                }
            }
            out
        }
        LdapFilter::Not(inner) => match eval(inner, entry) {
            Tri::True => Tri::False,
            Tri::False => Tri::True,
            Tri::Undefined => Tri::Undefined,
        },
        LdapFilter::Present(attr) => match schema::canonical(attr) {
            Some(canon) => bool_tri(entry.get(canon).is_some()),
            None => Tri::False,
        },
        LdapFilter::Equality(attr, value) | LdapFilter::Approx(attr, value) => equality(entry, attr, value),
        LdapFilter::Substring(attr, sub) => substring(entry, attr, sub),
        LdapFilter::GreaterOrEqual(attr, value) => ordering(entry, attr, value, true),
        LdapFilter::LessOrEqual(attr, value) => ordering(entry, attr, value, false),
        LdapFilter::Extensible(mra) => extensible(entry, mra),
    }
}

fn bool_tri(b: bool) -> Tri {
    if b { Tri::True } else { Tri::False }
}

fn equality(entry: &Entry, attr: &str, value: &str) -> Tri {
    let Some(canon) = schema::canonical(attr) else { return Tri::Undefined };
    let rule = schema::rule(canon);
    let Some(want) = schema::normalize(rule, value) else { return Tri::Undefined };
    let Some(a) = entry.get(canon) else { return Tri::False };
    bool_tri(a.values().any(|v| schema::normalize(rule, v).as_deref() == Some(want.as_str())))
}

fn ordering(entry: &Entry, attr: &str, value: &str, greater: bool) -> Tri {
    let Some(canon) = schema::canonical(attr) else { return Tri::Undefined };
    let rule = schema::rule(canon);
    if matches!(rule, Rule::Dn | Rule::Octet) {
        return Tri::Undefined;
    }
    let Some(want) = schema::normalize(rule, value) else { return Tri::Undefined };
    let Some(a) = entry.get(canon) else { return Tri::False };
    let hit = a.values().filter_map(|v| schema::normalize(rule, v)).any(|have| {
        let ord = if schema::is_numeric(rule) {
            match (have.parse::<i64>(), want.parse::<i64>()) {
                (Ok(h), Ok(w)) => h.cmp(&w),
                _ => return false,
            }
        } else {
            have.as_str().cmp(want.as_str())
        };
        if greater { ord.is_ge() } else { ord.is_le() }
    });
    bool_tri(hit)
}

fn substring(entry: &Entry, attr: &str, sub: &LdapSubstringFilter) -> Tri {
    let Some(canon) = schema::canonical(attr) else { return Tri::Undefined };
    let rule = schema::rule(canon);
    if matches!(rule, Rule::Integer | Rule::Dn | Rule::GeneralizedTime) {
        return Tri::Undefined;
    }
    let norm = |s: &str| schema::normalize(rule, s).unwrap_or_default();
    let initial = sub.initial.as_deref().map(norm);
    let any: Vec<String> = sub.any.iter().map(|s| norm(s)).collect();
    let final_ = sub.final_.as_deref().map(norm);
    let Some(a) = entry.get(canon) else { return Tri::False };
    bool_tri(a.values().any(|v| {
        let v = norm(v);
        let mut rest = v.as_str();
        if let Some(i) = &initial {
            match rest.strip_prefix(i.as_str()) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        for piece in &any {
            match rest.find(piece.as_str()) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        final_.as_ref().is_none_or(|f| rest.ends_with(f.as_str()))
    }))
}

fn extensible(entry: &Entry, mra: &LdapMatchingRuleAssertion) -> Tri {
    // Supported: an attribute with its own equality rule or one of the
    // common equality rules named by OID or name; dnAttributes is not.
    let known_rule = match mra.matching_rule.as_deref() {
        None => true,
        Some(r) => matches!(
            r.to_ascii_lowercase().as_str(),
            "2.5.13.2" | "caseignorematch" | "2.5.13.5" | "caseexactmatch" | "2.5.13.14" | "integermatch"
        ),
    };
    match (&mra.type_, known_rule, mra.dn_attributes) {
        (Some(attr), true, false) => equality(entry, attr, &mra.match_value),
        _ => Tri::Undefined,
    }
}

/// Positions of entries that can match `f`, from equality indexes; `None`
/// when the filter gives no usable index (the caller scans instead).
/// Borrowed from the snapshot where possible: no copy on the hot path.
pub fn candidates<'a>(f: &LdapFilter, snap: &'a Snapshot) -> Option<Cow<'a, [u32]>> {
    match f {
        LdapFilter::Equality(attr, value) => {
            let canon = schema::canonical(attr)?;
            match schema::normalize(schema::rule(canon), value) {
                Some(norm) => snap.lookup(canon, &norm).map(Cow::Borrowed),
                // An invalid value can match nothing.
                None => Some(Cow::Borrowed(&[])),
            }
        }
        // The smallest indexed part bounds the result.
        LdapFilter::And(parts) => parts.iter().filter_map(|p| candidates(p, snap)).min_by_key(|c| c.len()),
        LdapFilter::Or(parts) if !parts.is_empty() => {
            let mut all = Vec::new();
            for p in parts {
                all.extend_from_slice(&candidates(p, snap)?);
            }
            all.sort_unstable();
            all.dedup();
            Some(Cow::Owned(all))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Group, User};
    use crate::store::DirectoryData;
    use ldap3_proto::parse_ldap_filter_str;

    fn snapshot() -> Snapshot {
        let user = |id: &str, name: &str, uid: i64, email: Option<&str>| User {
            id: id.into(),
            name: name.into(),
            uid_number: uid,
            gid_number: 20000,
            display_name: format!("{name} Example"),
            email: email.map(String::from),
            login_shell: "/bin/bash".into(),
            home_directory: format!("/home/{name}"),
            ssh_keys: vec![],
            password_hash: None,
            disabled: false,
            created_at: 1_795_000_000,
            updated_at: 1_795_000_100,
        };
        let data = DirectoryData {
            generation: 1,
            users: vec![
                user("u1", "alice", 10001, Some("Alice@Example.org")),
                user("u2", "bob", 10002, None),
                user("u3", "carol", 10003, None),
            ],
            groups: vec![Group {
                id: "g1".into(),
                name: "devs".into(),
                gid_number: 20001,
                description: String::new(),
                member_ids: vec!["u1".into(), "u3".into()],
                created_at: 1,
                updated_at: 2,
            }],
            service_accounts: vec![],
            containers: vec![],
        };
        Snapshot::build(&data, "dc=example,dc=org")
    }

    /// Containers on top of `snapshot()`'s people: alice owns alice-small,
    /// group devs (alice, carol) owns devs-shared, nobody owns stray,
    /// disabled dave owns dave-small; bob is an instance admin.
    fn container_snapshot() -> Snapshot {
        use crate::provision::model::Owner;
        use crate::store::ContainerAccess;
        let user = |id: &str, name: &str, uid: i64, disabled: bool| User {
            id: id.into(),
            name: name.into(),
            uid_number: uid,
            gid_number: 20000,
            display_name: format!("{name} Example"),
            email: None,
            login_shell: "/bin/bash".into(),
            home_directory: format!("/home/{name}"),
            ssh_keys: vec![],
            password_hash: None,
            disabled,
            created_at: 1_795_000_000,
            updated_at: 1_795_000_100,
        };
        let group = |id: &str, name: &str, gid: i64, members: &[&str]| Group {
            id: id.into(),
            name: name.into(),
            gid_number: gid,
            description: String::new(),
            member_ids: members.iter().map(|m| m.to_string()).collect(),
            created_at: 1,
            updated_at: 2,
        };
        let container = |id: &str, name: &str, domain: &str, owner: Owner, updated_at: i64| ContainerAccess {
            id: id.into(),
            name: name.into(),
            domain: domain.into(),
            owner,
            collaborators: Vec::new(),
            created_at: 1_795_000_200,
            updated_at,
        };
        let data = DirectoryData {
            generation: 1,
            users: vec![
                user("u1", "alice", 10001, false),
                user("u2", "bob", 10002, false),
                user("u3", "carol", 10003, false),
                user("u4", "dave", 10004, true),
            ],
            groups: vec![group("g1", "devs", 20001, &["u1", "u3"]), group("g2", "admins", 20002, &["u2", "u4"])],
            service_accounts: vec![],
            containers: vec![
                container("c1", "alice-small", "lab.test", Owner::User("u1".into()), 1_795_000_300),
                container("c2", "devs-shared", "Lab.Test.", Owner::Group("g1".into()), 1_795_000_500),
                container("c3", "stray", "", Owner::None, 1_795_000_300),
                container("c4", "dave-small", "lab.test", Owner::User("u4".into()), 1_795_000_300),
            ],
        };
        Snapshot::build_with_admins(&data, "dc=example,dc=org", "admins")
    }

    /// Names (uid or cn) of the entries `filter` matches, by scanning and by index.
    fn check(filter: &str, expected: &[&str]) {
        check_filter(filter, &parse_ldap_filter_str(filter).unwrap(), expected);
    }

    /// `(&(member=DN)(objectClass=posixGroup))`, built directly: the string
    /// parser used by these tests does not accept '=' inside values.
    fn member_filter(dn: &str) -> LdapFilter {
        LdapFilter::And(vec![
            LdapFilter::Equality("member".into(), dn.into()),
            LdapFilter::Equality("objectClass".into(), "posixGroup".into()),
            LdapFilter::Present("cn".into()),
        ])
    }

    fn check_filter(filter: &str, f: &LdapFilter, expected: &[&str]) {
        check_in(&snapshot(), filter, f, expected);
    }

    /// Like `check`, against `container_snapshot()`.
    fn check_containers(filter: &str, expected: &[&str]) {
        check_in(&container_snapshot(), filter, &parse_ldap_filter_str(filter).unwrap(), expected);
    }

    fn check_in(snap: &Snapshot, filter: &str, f: &LdapFilter, expected: &[&str]) {
        let f = f.clone();
        let matched: Vec<u32> =
            (0..snap.entries.len() as u32).filter(|&i| eval(&f, &snap.entries[i as usize]) == Tri::True).collect();
        let names = |ids: &[u32]| -> Vec<String> {
            ids.iter()
                .map(|&i| {
                    let e = &snap.entries[i as usize];
                    ["uid", "cn", "ou"]
                        .iter()
                        .find_map(|a| e.values(a).first().map(|v| v.to_string()))
                        .unwrap_or_else(|| e.dn.to_string())
                })
                .collect()
        };
        assert_eq!(names(&matched), expected, "filter {filter}");
        if let Some(cands) = candidates(&f, snap) {
            for m in &matched {
                assert!(cands.contains(m), "index lost a match for {filter}");
            }
        }
    }

    #[test]
    fn sssd_user_filters() {
        check("(&(uid=alice)(objectclass=posixAccount)(uid=*)(&(uidNumber=*)(!(uidNumber=0))))", &["alice"]);
        check("(&(uidNumber=10002)(objectclass=posixAccount)(uid=*)(&(uidNumber=*)(!(uidNumber=0))))", &["bob"]);
        check("(&(UID=ALICE)(objectClass=POSIXACCOUNT))", &["alice"]);
        check("(&(uid=nobody)(objectclass=posixAccount))", &[]);
    }

    #[test]
    fn sssd_group_filters() {
        check("(&(memberuid=alice)(objectClass=posixGroup)(cn=*)(&(gidNumber=*)(!(gidNumber=0))))", &["devs"]);
        check("(&(memberuid=ALICE)(objectClass=posixGroup))", &[]);
        check_filter("alice", &member_filter("uid=alice,ou=people,dc=example,dc=org"), &["devs"]);
        check_filter("carol", &member_filter("UID=Carol, OU=People,DC=Example,DC=ORG"), &["devs"]);
        check_filter("bob", &member_filter("uid=bob,ou=people,dc=example,dc=org"), &[]);
    }

    #[test]
    fn unknown_attributes_are_undefined_not_errors() {
        check("(&(objectClass=sudoRole)(|(&(!(sudoHost=*))(cn=defaults))(sudoHost=ALL)(sudoHost=+*)))", &[]);
        check("(&(objectclass=nisNetgroup)(cn=x))", &[]);
        // NOT of Undefined stays Undefined, so nothing matches either way.
        check("(!(fooBar=1))", &[]);
        check("(fooBar=1)", &[]);
        check("(|(fooBar=1)(uid=bob))", &["bob"]);
        // Present on an unknown attribute is False, so its negation is True.
        check("(&(uid=bob)(!(fooBar=*)))", &["bob"]);
        check("(&(uid=bob)(!(sudoHost=*)))", &["bob"]);
        // Invalid integer: Undefined.
        check("(uidNumber=abc)", &[]);
    }

    #[test]
    fn substrings_ordering_and_approx() {
        check("(uid=a*)", &["alice"]);
        check("(uid=*o*)", &["bob", "carol"]);
        check("(uid=c*r*l)", &["carol"]);
        check("(uid=*ob)", &["bob"]);
        check("(mail=*@example.ORG)", &["alice"]);
        check("(&(objectClass=posixAccount)(uidNumber>=10002))", &["bob", "carol"]);
        check("(&(objectClass=posixAccount)(uidNumber<=10002))", &["alice", "bob"]);
        check("(&(objectClass=posixAccount)(modifyTimestamp>=20261118110640Z))", &["alice", "bob", "carol"]);
        check("(&(objectClass=posixAccount)(modifyTimestamp>=20261118110641Z))", &["alice", "bob", "carol"]);
        check("(&(objectClass=posixAccount)(modifyTimestamp>=20261118110841Z))", &[]);
        check("(uid~=BOB)", &["bob"]);
        check("(uid:caseExactMatch:=bob)", &["bob"]);
        check("(uid:1.2.3.4:=bob)", &[]);
    }

    #[test]
    fn structure_entries() {
        check("(objectClass=organizationalUnit)", &["people", "groups", "sudoers"]);
        check("(ou=people)", &["people"]);
        check("(!(objectClass=posixAccount))", &["dc=example,dc=org", "people", "groups", "sudoers", "devs"]);
    }

    #[test]
    fn host_lists_who_may_log_in() {
        // Owner, instance admin; a disabled owner gets nothing.
        check_containers("(host=alice-small)", &["alice", "bob"]);
        check_containers("(host=ALICE-SMALL.lab.test)", &["alice", "bob"]);
        // Group-owned: its members and the admin.
        check_containers("(host=devs-shared.lab.test)", &["alice", "bob", "carol"]);
        // Unowned: admins only.
        check_containers("(host=stray)", &["bob"]);
        check_containers("(host=dave-small)", &["bob"]);
        check_containers("(&(uid=dave)(host=*))", &[]);
        check_containers("(&(objectClass=hostObject)(uid=carol))", &["carol"]);
    }

    #[test]
    fn sssd_sudo_refreshes_find_the_owners_rule() {
        // SSSD's full refresh as seen on the wire (SSSD-FACTS), for each host.
        let full = |host: &str| {
            format!(
                "(&(objectClass=sudoRole)(|(&(!(sudoHost=*))(cn=defaults))(sudoHost=ALL)(sudoHost={host})\
                 (sudoHost={host}.lab.test)(sudoHost=192.0.2.2)(sudoHost=192.0.2.0/24)(sudoHost=fd00::2)\
                 (sudoHost=fd00::/64)(sudoHost=+*)))"
            )
        };
        check_containers(&full("alice-small"), &["alice-small"]);
        check_containers(&full("devs-shared"), &["devs-shared"]);
        check_containers(&full("stray"), &[]);
        check_containers(&full("dave-small"), &[]);
        check_containers(&full("elsewhere"), &[]);
        check_containers("(&(objectClass=sudoRole)(sudoUser=alice)(sudoCommand=ALL))", &["alice-small"]);
        check_containers("(&(objectClass=sudoRole)(sudoUser=%devs)(sudoRunAsUser=ALL))", &["devs-shared"]);
        // Smart refresh: rules modified at or after the newest one seen.
        let smart = |at: i64| {
            let t = crate::clock::generalized_time(at);
            format!("(&(&(objectClass=sudoRole)(modifyTimestamp>={t}))(|(sudoHost=ALL)(sudoHost=devs-shared)))")
        };
        check_containers(&smart(1_795_000_500), &["devs-shared"]);
        check_containers(&smart(1_795_000_501), &[]);
        // Nothing else looks like a sudo rule or a user.
        check_containers("(objectClass=sudoRole)", &["alice-small", "devs-shared"]);
        check_containers("(&(objectClass=posixAccount)(cn=alice-small))", &[]);
    }
}
