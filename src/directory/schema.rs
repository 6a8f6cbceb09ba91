//! The slice of LDAP schema the directory serves: which attributes exist,
//! their canonical spelling, and how their values compare (matching rules).
//! Shared by the snapshot's indexes and the LDAP filter evaluator so both
//! normalise values the same way.

use super::dn;

/// How values of an attribute compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// caseIgnoreMatch / caseIgnoreIA5Match (spaces collapsed).
    CaseIgnore,
    /// caseExactMatch / caseExactIA5Match (spaces collapsed).
    CaseExact,
    /// integerMatch / integerOrderingMatch.
    Integer,
    /// distinguishedNameMatch.
    Dn,
    /// generalizedTimeMatch / generalizedTimeOrderingMatch.
    GeneralizedTime,
    /// octetStringMatch: bytes as they are.
    Octet,
}

/// Known attributes: (canonical name, rule). Lookups are case-insensitive.
const ATTRIBUTES: &[(&str, Rule)] = &[
    ("objectClass", Rule::CaseIgnore),
    ("uid", Rule::CaseIgnore),
    ("cn", Rule::CaseIgnore),
    ("sn", Rule::CaseIgnore),
    ("givenName", Rule::CaseIgnore),
    ("displayName", Rule::CaseIgnore),
    ("gecos", Rule::CaseIgnore),
    ("mail", Rule::CaseIgnore),
    ("uidNumber", Rule::Integer),
    ("gidNumber", Rule::Integer),
    ("homeDirectory", Rule::CaseExact),
    ("loginShell", Rule::CaseExact),
    ("memberUid", Rule::CaseExact),
    ("member", Rule::Dn),
    ("memberOf", Rule::Dn),
    ("description", Rule::CaseIgnore),
    ("sshPublicKey", Rule::Octet),
    ("ou", Rule::CaseIgnore),
    ("dc", Rule::CaseIgnore),
    ("o", Rule::CaseIgnore),
    ("entryUUID", Rule::CaseIgnore),
    ("entryDN", Rule::Dn),
    ("createTimestamp", Rule::GeneralizedTime),
    ("modifyTimestamp", Rule::GeneralizedTime),
    ("structuralObjectClass", Rule::CaseIgnore),
    ("subschemaSubentry", Rule::Dn),
    ("hasSubordinates", Rule::CaseIgnore),
    ("creatorsName", Rule::Dn),
    ("modifiersName", Rule::Dn),
    // account (RFC 4524 / nis.schema): the hosts a user may log in to, which
    // SSSD's `ldap_access_order = host` compares with the machine's names.
    ("host", Rule::CaseIgnore),
    // sudoRole (sudo's schema). sudoHost compares case-insensitively, as
    // host names do in sudo itself (the schema says caseExactIA5Match).
    ("sudoUser", Rule::CaseExact),
    ("sudoHost", Rule::CaseIgnore),
    ("sudoCommand", Rule::CaseExact),
    ("sudoRunAs", Rule::CaseExact),
    ("sudoRunAsUser", Rule::CaseExact),
    ("sudoRunAsGroup", Rule::CaseExact),
    ("sudoOption", Rule::CaseExact),
    ("sudoNotBefore", Rule::GeneralizedTime),
    ("sudoNotAfter", Rule::GeneralizedTime),
    ("sudoOrder", Rule::Integer),
];

/// Canonical names of the known attributes, in table order.
pub const NAMES: [&str; ATTRIBUTES.len()] = {
    let mut out = [""; ATTRIBUTES.len()];
    let mut i = 0;
    while i < ATTRIBUTES.len() {
        out[i] = ATTRIBUTES[i].0;
        i += 1;
    }
    out
};

/// Other names (lower-case) for known attributes.
const ALIASES: &[(&str, &str)] = &[
    ("commonname", "cn"),
    ("userid", "uid"),
    ("surname", "sn"),
    ("gn", "givenName"),
    ("rfc822mailbox", "mail"),
    ("organizationalunitname", "ou"),
    ("organizationname", "o"),
    ("domaincomponent", "dc"),
    ("2.5.4.0", "objectClass"),
    ("2.5.4.3", "cn"),
    ("0.9.2342.19200300.100.1.1", "uid"),
    ("1.3.6.1.1.1.1.0", "uidNumber"),
    ("1.3.6.1.1.1.1.1", "gidNumber"),
    ("1.3.6.1.1.1.1.12", "memberUid"),
    ("2.5.4.31", "member"),
];

/// The canonical spelling of a known attribute, or `None` for unknown ones.
/// Options such as `;binary` make an attribute unknown here.
pub fn canonical(name: &str) -> Option<&'static str> {
    if let Some((canon, _)) = ATTRIBUTES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        return Some(canon);
    }
    ALIASES.iter().find(|(alias, _)| alias.eq_ignore_ascii_case(name)).map(|(_, canon)| *canon)
}

/// The matching rule of a canonical attribute name.
pub fn rule(canonical: &str) -> Rule {
    ATTRIBUTES.iter().find(|(n, _)| *n == canonical).map_or(Rule::Octet, |(_, r)| *r)
}

/// Normalises `value` under `rule` for equality and ordering; `None` when the
/// value is not valid for the rule (such an assertion evaluates to Undefined).
pub fn normalize(rule: Rule, value: &str) -> Option<String> {
    match rule {
        Rule::CaseIgnore => Some(collapse_spaces(value).to_lowercase()),
        Rule::CaseExact => Some(collapse_spaces(value)),
        Rule::Integer => value.trim().parse::<i64>().ok().map(|n| n.to_string()),
        Rule::Dn => dn::normalize(value),
        Rule::GeneralizedTime => crate::clock::parse_generalized_time(value).map(|t| t.to_string()),
        Rule::Octet => Some(value.to_string()),
    }
}

/// Whether the rule orders values as numbers (integers, times).
pub fn is_numeric(rule: Rule) -> bool {
    matches!(rule, Rule::Integer | Rule::GeneralizedTime)
}

fn collapse_spaces(value: &str) -> String {
    value.split(' ').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_are_case_insensitive_with_aliases() {
        assert_eq!(canonical("UIDNUMBER"), Some("uidNumber"));
        assert_eq!(canonical("commonName"), Some("cn"));
        assert_eq!(canonical("sudoRole"), None, "an object class, not an attribute");
        assert_eq!(canonical("SUDOHOST"), Some("sudoHost"));
        assert_eq!(canonical("userCertificate;binary"), None);
    }

    #[test]
    fn normalisation_follows_rules() {
        assert_eq!(normalize(Rule::CaseIgnore, "  Alice   Smith "), Some("alice smith".into()));
        assert_eq!(normalize(Rule::CaseExact, "Bob"), Some("Bob".into()));
        assert_eq!(normalize(Rule::Integer, "007"), Some("7".into()));
        assert_eq!(normalize(Rule::Integer, "x"), None);
        assert_eq!(normalize(Rule::Dn, "UID=A, DC=X"), Some("uid=a,dc=x".into()));
    }
}
