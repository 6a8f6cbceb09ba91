//! Who may log in to a container, and who is root there, as SSSD sees it.
//!
//! Owns the names a container answers to ([`host_names`]: the hostname and
//! the fully qualified name in its site's domain), which the directory
//! serves as `host` values on user entries and as `sudoHost` of the
//! container's sudoRole (`directory/containers.rs` renders both), and the
//! per-container `sssd.conf` that makes SSSD enforce them
//! (`portcullis container sssd-config NAME`). Pure text: it reads no store,
//! file or clock; the CLI passes in what it found.
//!
//! Why the `host` attribute and not a per-container `ldap_access_filter`:
//! the filter would be frozen into each container's configuration when it
//! is generated (`(|(uid=alice)(memberOf=cn=team,…))`), so an owner change,
//! a renamed user or group, or a new admin group would need every
//! container's file rewritten. The `host` values are computed by the server
//! from the current owners, memberships and admin group on every snapshot
//! (rebuilt on each commit), so the configuration never changes; SSSD reads
//! them with the user entry it fetches at every login anyway.

use crate::directory::dn;

/// The names a container answers to, lower-case: `NAME` and, when its
/// site has a domain, `NAME.DOMAIN`. SSSD's host check compares the
/// machine's hostname (`gethostname`) and then its canonical name
/// (`getaddrinfo` with `AI_CANONNAME`) with these, case-insensitively; sudo
/// matches `sudoHost` against the short name, or the long one for values
/// with a dot.
pub fn host_names(name: &str, domain: &str) -> Vec<String> {
    let short = name.to_ascii_lowercase();
    let domain = domain.trim().trim_matches('.').to_ascii_lowercase();
    if domain.is_empty() {
        return vec![short];
    }
    let long = format!("{short}.{domain}");
    vec![short, long]
}

/// Who owns a container, in words for the generated file's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerName {
    User(String),
    Group(String),
    /// Adopted and not assigned yet (or the owner no longer exists).
    Nobody,
}

/// Everything one container's `sssd.conf` says.
#[derive(Debug, Clone)]
pub struct SssdConfig<'a> {
    /// The container's name: its hostname.
    pub name: &'a str,
    /// Its site's DNS domain (may be empty).
    pub domain: &'a str,
    pub owner: OwnerName,
    /// `directory.admin_group` (empty = no instance admins).
    pub admin_group: &'a str,
    /// `ldap.base_dn`.
    pub base_dn: &'a str,
    /// The LDAP URI the container reaches Portcullis at (StartTLS on the
    /// plain port).
    pub uri: &'a str,
    /// Where the CA certificate comes from, for the install steps.
    pub ca_source: &'a str,
    /// The service account SSSD binds as (a name, not a DN).
    pub bind_account: &'a str,
}

/// Where the generated file expects Portcullis's CA inside the container.
pub const CA_PATH: &str = "/etc/sssd/portcullis-ca.pem";

/// The placeholder for the service account's password: secrets are never
/// printed, so the admin fills it in.
pub const PASSWORD_PLACEHOLDER: &str = "CHANGE-ME";

/// How often (seconds) SSSD refetches cached users, groups and sudo rules
/// that it did not just fetch for a login. Logins themselves always ask
/// Portcullis (`pam_initgroups_scheme = always`); this bounds how long a
/// user already logged in keeps a group (and so a group-owned container's
/// sudo rights) after leaving it.
const ENTRY_CACHE_SECS: u32 = 300;
/// SSSD's smart refresh of sudo rules (new and changed rules, by
/// `modifyTimestamp`), and its full refresh (also drops deleted rules; must
/// be longer than the smart one).
const SUDO_SMART_REFRESH_SECS: u32 = 300;
const SUDO_FULL_REFRESH_SECS: u32 = 3600;

impl SssdConfig<'_> {
    /// The complete `/etc/sssd/sssd.conf` for this container, with a comment
    /// header that says who may log in and how to install it.
    pub fn render(&self) -> String {
        let names = host_names(self.name, self.domain).join(" or ");
        let base = self.base_dn;
        let bind_dn = format!("cn={},ou=services,{base}", dn::escape_value(self.bind_account));
        let who = match &self.owner {
            OwnerName::User(user) => format!("its owner, user {user}"),
            OwnerName::Group(group) => format!("the members of its owning group {group}"),
            OwnerName::Nobody => "nobody but instance admins (it has no owner yet)".to_string(),
        };
        let sudo_role = format!("\n# (the container's sudoRole under ou=sudoers,{base}).");
        let root = match &self.owner {
            OwnerName::User(user) => format!("user {user} may run any command as root with sudo{sudo_role}"),
            OwnerName::Group(group) => {
                format!("members of group {group} may run any command as root with sudo{sudo_role}")
            }
            OwnerName::Nobody => "nobody gets sudo rights until it has an owner.".to_string(),
        };
        let admins = if self.admin_group.is_empty() {
            String::new()
        } else {
            format!(" and the instance admins (group {})", self.admin_group)
        };
        let (name, account, uri) = (self.name, self.bind_account, self.uri);
        let ca_source = self.ca_source;
        format!(
            "\
# /etc/sssd/sssd.conf for container {name}
# (generated by `portcullis container sssd-config {name}`).
#
# Who may log in: {who}{admins}.
# Portcullis lists on every user entry the containers that user may log in
# to (the `host` attribute, recomputed whenever owners or memberships
# change); SSSD refuses everybody else at PAM's account step
# (ldap_access_order = host). It compares this machine's hostname and its
# fully qualified name with that list, so the hostname must be
# {names}.
# Who is root: {root}
#
# Install, as root inside the container:
#   1. apt-get install sssd-ldap libnss-sss libpam-sss libsss-sudo sudo
#   2. Copy Portcullis's CA certificate ({ca_source})
#      to {CA_PATH}.
#   3. Replace {PASSWORD_PLACEHOLDER} below with the password of the service account
#      {account} (on the Portcullis host:
#      portcullis service-account add {account} --password-stdin).
#   4. install -o root -g root -m 0600 sssd.conf /etc/sssd/sssd.conf
#      (sssd refuses to start if the file is readable by others)
#   5. In /etc/nsswitch.conf list `files sss` for passwd, group and shadow,
#      and add the line `sudoers: files sss`.
#   6. Set up PAM and sshd as in Portcullis's pam-config/, then
#      systemctl restart sssd
#
# SSSD only accepts comments on lines of their own, never after a value.
# Keep cache_credentials = False: a cached password logs users in offline,
# without Portcullis, and so without its second factor or lockout.

[sssd]
config_file_version = 2
services = nss, pam, sudo
domains = portcullis

[nss]
# Never look the superuser up in the directory.
filter_users = root
filter_groups = root

[pam]
# Ask Portcullis for the user (and so the current `host` list and groups)
# at every login, even while the user has another session open.
pam_initgroups_scheme = always
pam_id_timeout = 5

[domain/portcullis]
id_provider = ldap
auth_provider = ldap
chpass_provider = ldap
sudo_provider = ldap
# Only users whose `host` values name this machine may log in.
access_provider = ldap
ldap_access_order = host
ldap_user_authorized_host = host

ldap_uri = {uri}
ldap_search_base = {base}
ldap_schema = rfc2307bis
ldap_sudo_search_base = ou=sudoers,{base}

# The service account SSSD searches with.
ldap_default_bind_dn = {bind_dn}
ldap_default_authtok_type = password
ldap_default_authtok = {PASSWORD_PLACEHOLDER}

# StartTLS on every connection; the certificate must verify against the
# Portcullis CA and match the host name in ldap_uri.
ldap_id_use_start_tls = true
ldap_tls_reqcert = demand
ldap_tls_cacert = {CA_PATH}

cache_credentials = False
enumerate = False

# --- Timeouts (seconds) ------------------------------------------------------
# Cached users, groups and sudo rules are refetched after this long; a
# login or a sudo call with older data asks Portcullis first.
entry_cache_timeout = {ENTRY_CACHE_SECS}
# New and changed sudo rules arrive within the smart refresh; deleted ones
# are dropped at the full refresh (or when sudo finds them gone).
ldap_sudo_smart_refresh_interval = {SUDO_SMART_REFRESH_SECS}
ldap_sudo_full_refresh_interval = {SUDO_FULL_REFRESH_SECS}
# Above Portcullis's mfa.ldap_deadline_secs (50 by default), so a login that
# waits for a push approval gets Portcullis's answer.
ldap_opt_timeout = 60
ldap_search_timeout = 15
ldap_network_timeout = 5
"
        )
    }
}

/// The LDAP URI a container should use: `ldap://HOST:PORT` with the LDAP
/// port Portcullis listens on and the first name that is known to be in
/// its certificate and public: the issuer's host when one is configured,
/// else the first `tls.hostnames` entry, else `machine_hostname` (the
/// generated certificate covers it).
pub fn default_uri(config: &crate::config::Config, machine_hostname: &str) -> String {
    let port = config.ldap.listen.port();
    let from_issuer = config.http.issuer.as_deref().and_then(|i| {
        let rest = i.split_once("://").map_or(i, |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or_default();
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().map(|h| format!("[{h}]")),
            None => authority.split(':').next().map(str::to_string),
        };
        host.filter(|h| !h.is_empty())
    });
    let host = from_issuer
        .or_else(|| config.tls.hostnames.first().cloned())
        .unwrap_or_else(|| machine_hostname.trim().to_string());
    format!("ldap://{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_qualified() {
        assert_eq!(host_names("alice-small", "Cluster.Internal."), ["alice-small", "alice-small.cluster.internal"]);
        assert_eq!(host_names("web", ""), ["web"]);
    }

    fn sample(owner: OwnerName) -> String {
        SssdConfig {
            name: "alice-small",
            domain: "cluster.internal",
            owner,
            admin_group: "portcullis-admins",
            base_dn: "dc=example,dc=org",
            uri: "ldap://idp.example.org:3890",
            ca_source: "/var/lib/portcullis/tls/ca.pem on the Portcullis host",
            bind_account: "sssd",
        }
        .render()
    }

    #[test]
    fn config_enforces_host_access_and_sudo() {
        let text = sample(OwnerName::User("alice".into()));
        for line in [
            "services = nss, pam, sudo",
            "access_provider = ldap",
            "ldap_access_order = host",
            "ldap_user_authorized_host = host",
            "sudo_provider = ldap",
            "ldap_sudo_search_base = ou=sudoers,dc=example,dc=org",
            "ldap_uri = ldap://idp.example.org:3890",
            "ldap_default_bind_dn = cn=sssd,ou=services,dc=example,dc=org",
            "ldap_default_authtok = CHANGE-ME",
            "ldap_tls_cacert = /etc/sssd/portcullis-ca.pem",
            "ldap_tls_reqcert = demand",
            "ldap_id_use_start_tls = true",
            "cache_credentials = False",
            "pam_initgroups_scheme = always",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("its owner, user alice and the instance admins (group portcullis-admins)"), "{text}");
        assert!(text.contains("# alice-small or alice-small.cluster.internal.\n"), "{text}");
        // SSSD rejects comments after values: every comment has its own line.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(!line.contains('#'), "inline comment in {line:?}");
        }
        let group = sample(OwnerName::Group("team".into()));
        assert!(group.contains("members of group team may run any command as root with sudo"), "{group}");
    }

    #[test]
    fn uri_prefers_the_issuer_then_tls_names() {
        let mut config = crate::config::Config::default();
        config.http.issuer = Some("https://idp.example.org:8443/".into());
        assert_eq!(default_uri(&config, "box"), "ldap://idp.example.org:3890");
        config.http.issuer = None;
        config.tls.hostnames = vec!["ldap.example.org".into()];
        assert_eq!(default_uri(&config, "box"), "ldap://ldap.example.org:3890");
        config.tls.hostnames.clear();
        assert_eq!(default_uri(&config, "box\n"), "ldap://box:3890");
    }
}
