//! Configuration: defaults, overridden by a TOML file, overridden by
//! `PORTCULLIS_…` environment variables (nested keys joined with `__`, e.g.
//! `PORTCULLIS_LDAP__LISTEN`). Loading never touches the network or the store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The whole configuration. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the SQLite database, generated keys and certificates live.
    pub data_dir: PathBuf,
    pub ldap: LdapConfig,
    pub directory: DirectoryConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub http: HttpConfig,
    pub push: PushConfig,
    pub mfa: crate::mfa::MfaConfig,
    pub provision: crate::provision::ProvisionConfig,
}

/// The HTTPS listener (OpenID provider; later the web UI and admin API).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// HTTPS listener; `None` turns the web server off.
    pub listen: Option<SocketAddr>,
    /// Public base URL (the OIDC issuer); every URL the server publishes is
    /// derived from it. Default: `https://localhost:PORT`.
    pub issuer: Option<String>,
    /// Lifetime of access tokens.
    pub access_token_ttl_secs: u64,
    /// Lifetime of authorization codes (at most 60 s).
    pub code_ttl_secs: u64,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Requests handled at once; more get 503 with Retry-After at once
    /// instead of queueing without bound.
    pub max_concurrent_requests: usize,
    /// Reverse proxies (addresses or CIDR ranges) whose `X-Forwarded-For`
    /// header is believed; from anyone else the header is ignored and the
    /// TCP peer is the client (for lockout, backoff and logs).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 8443))),
            issuer: None,
            access_token_ttl_secs: 600,
            code_ttl_secs: 60,
            max_body_bytes: 64 * 1024,
            max_concurrent_requests: 512,
            trusted_proxies: Vec::new(),
        }
    }
}

impl HttpConfig {
    /// The issuer URL, without a trailing slash.
    pub fn issuer(&self) -> String {
        match (&self.issuer, self.listen) {
            (Some(i), _) => i.trim_end_matches('/').to_string(),
            (None, Some(addr)) => format!("https://localhost:{}", addr.port()),
            (None, None) => "https://localhost".to_string(),
        }
    }
}

/// LDAP listener settings and the limits that keep one client from hurting others.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LdapConfig {
    /// Plain LDAP with StartTLS.
    pub listen: SocketAddr,
    /// LDAP over TLS from the first byte; `None` disables it.
    pub ldaps_listen: Option<SocketAddr>,
    /// Suffix of every entry, e.g. `dc=example,dc=org`.
    pub base_dn: String,
    /// Largest accepted LDAP message; larger ones close the connection.
    pub max_message_bytes: usize,
    /// Deepest accepted BER nesting (bounds filter depth).
    pub max_ber_depth: usize,
    /// Connections served at once; further clients wait in the kernel backlog.
    pub max_connections: usize,
    /// Connections one source address may hold at once.
    pub max_connections_per_ip: usize,
    /// Seconds a connection may sit without sending a request.
    pub idle_timeout_secs: u64,
    /// Seconds within which a started message must arrive completely.
    pub read_timeout_secs: u64,
    /// Most entries a search without the paged-results control may return.
    pub max_unpaged_results: usize,
    /// Open paged-search cursors one connection may hold.
    pub max_paged_cursors: usize,
    /// Refuse password binds without TLS (StartTLS or LDAPS); loopback peers are exempt.
    pub bind_requires_tls: bool,
}

/// How POSIX identities are allocated and shaped.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectoryConfig {
    /// First uidNumber/gidNumber handed out (never 0, never reused).
    pub id_range_start: i64,
    /// Last uidNumber/gidNumber handed out.
    pub id_range_end: i64,
    /// Login shell of new users.
    pub default_shell: String,
    /// Home directories are `HOME_BASE/NAME`.
    pub home_base: String,
    /// Primary group of new users; created on first start.
    pub default_group: String,
    /// Members of this group are instance admins; they always need a second
    /// factor (`mfa`), whatever `mfa.required_groups` says. Empty = none.
    pub admin_group: String,
}

/// Password checking and brute-force protection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Failed binds after which an account is locked.
    pub max_failures: u32,
    /// Seconds an account stays locked.
    pub lockout_secs: u64,
    /// Failed binds from one address (any account) before it is locked out.
    pub source_max_failures: u32,
    /// Seconds an address stays locked out.
    pub source_lockout_secs: u64,
    /// Password hashes computed at once; 0 means one per CPU core.
    pub hash_concurrency: usize,
}

/// TLS material. Without files, a CA and server certificate are generated
/// in `DATA_DIR/tls/` on first start and reused afterwards.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; with `key_file`, replaces the generated one.
    pub cert_file: Option<PathBuf>,
    /// PEM private key for `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Names and addresses the generated certificate is valid for.
    pub hostnames: Vec<String>,
}

/// A secret configuration value (API key, shared secret): its `Debug` shows
/// only that it is set, so a logged config never reveals it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Push notifications that ask a user's device to approve a sign-in. Every
/// sender is off until its keys are configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Sends per push: the first one plus retries after 429, 5xx or network
    /// errors (never after "unregistered" or other refusals).
    pub max_attempts: u32,
    /// Pause before the first retry; it doubles with each retry up to
    /// `max_backoff_ms`. A Retry-After from the push service is honoured.
    pub initial_backoff_ms: u64,
    /// Longest pause between two attempts.
    pub max_backoff_ms: u64,
    pub apns: ApnsConfig,
    pub fcm: FcmConfig,
    pub webpush: WebPushConfig,
    pub webhook: WebhookConfig,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff_ms: 500,
            max_backoff_ms: 8000,
            apns: ApnsConfig::default(),
            fcm: FcmConfig::default(),
            webpush: WebPushConfig::default(),
            webhook: WebhookConfig::default(),
        }
    }
}

/// Apple Push Notification service, token-based (a `.p8` signing key).
/// Enabled when `key_file` is set; `team_id`, `key_id` and `topic` must then be set too.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApnsConfig {
    /// `https://api.push.apple.com`, or `https://api.sandbox.push.apple.com`
    /// for development builds of the app.
    pub base_url: String,
    /// The Apple developer team id (the provider token's `iss`).
    pub team_id: Option<String>,
    /// The id of the signing key (the provider token's `kid`).
    pub key_id: Option<String>,
    /// The `AuthKey_KEYID.p8` file (PKCS#8 PEM, P-256).
    pub key_file: Option<PathBuf>,
    /// The app's bundle id (`apns-topic`).
    pub topic: Option<String>,
}

impl Default for ApnsConfig {
    fn default() -> Self {
        Self { base_url: "https://api.push.apple.com".into(), team_id: None, key_id: None, key_file: None, topic: None }
    }
}

/// Firebase Cloud Messaging, HTTP v1 API. Enabled when
/// `service_account_file` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FcmConfig {
    /// The FCM API's base URL.
    pub base_url: String,
    /// The service account's JSON key file (from the Firebase console); it
    /// names the project, the OAuth token endpoint and the signing key.
    pub service_account_file: Option<PathBuf>,
}

impl Default for FcmConfig {
    fn default() -> Self {
        Self { base_url: "https://fcm.googleapis.com".into(), service_account_file: None }
    }
}

/// Web Push (RFC 8030/8291/8292) to browsers. Enabled when `subject` is set;
/// the VAPID key pair is generated on first use (`DATA_DIR/vapid.sealed`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebPushConfig {
    /// Contact for push services (VAPID `sub`): `mailto:` or `https:` URL.
    pub subject: Option<String>,
    /// Hosts a subscription's endpoint may name; a leading dot matches any
    /// subdomain. Keeps a registered "subscription" from making the server
    /// POST to arbitrary hosts. Empty allows any https endpoint.
    pub allowed_endpoint_hosts: Vec<String>,
}

impl Default for WebPushConfig {
    fn default() -> Self {
        Self {
            subject: None,
            allowed_endpoint_hosts: vec![
                "fcm.googleapis.com".into(),
                "updates.push.services.mozilla.com".into(),
                "web.push.apple.com".into(),
                ".notify.windows.com".into(),
            ],
        }
    }
}

/// How the webhook sender talks to its URL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookMode {
    /// POST the challenge id, signed with HMAC-SHA256; the decision comes back separately.
    #[default]
    Generic,
    /// The existing push-approval service's `send-notification` contract,
    /// whose response is the decision.
    Compat,
}

/// An external notification service. Enabled when `url` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// In generic mode the URL POSTed to; in compat mode the service's base
    /// URL (`/send-notification` is appended). https, or http to loopback.
    pub url: Option<String>,
    pub mode: WebhookMode,
    /// Generic mode: the HMAC-SHA256 key (at least 16 bytes) for the
    /// `X-Portcullis-Signature` header. Or `secret_file`.
    pub secret: Option<Secret>,
    /// A file holding `secret` (surrounding whitespace ignored).
    pub secret_file: Option<PathBuf>,
    /// Compat mode: `apikey` sent in the body when the service forces auth.
    pub apikey: Option<Secret>,
    /// Compat mode: `client_id` sent with the `apikey`.
    pub client_id: Option<String>,
    /// Longest wait for the service's answer (the old service holds a
    /// request up to 25 s); the sign-in's own deadline may cut it shorter.
    pub timeout_secs: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: None,
            mode: WebhookMode::Generic,
            secret: None,
            secret_file: None,
            apikey: None,
            client_id: None,
            timeout_secs: 30,
        }
    }
}

impl PushConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if self.max_attempts == 0 || self.max_attempts > 20 {
            anyhow::bail!("push.max_attempts must be between 1 and 20");
        }
        if self.initial_backoff_ms == 0 || self.max_backoff_ms < self.initial_backoff_ms {
            anyhow::bail!("push.initial_backoff_ms must be above 0 and at most push.max_backoff_ms");
        }
        for (key, url) in [("push.apns.base_url", &self.apns.base_url), ("push.fcm.base_url", &self.fcm.base_url)] {
            if !url.starts_with("https://") {
                anyhow::bail!("{key} must be an https:// URL");
            }
        }
        let a = &self.apns;
        if a.key_file.is_some() && (a.team_id.is_none() || a.key_id.is_none() || a.topic.is_none()) {
            anyhow::bail!("push.apns.key_file needs push.apns.team_id, key_id and topic");
        }
        if let Some(subject) = &self.webpush.subject {
            if !subject.starts_with("mailto:") && !subject.starts_with("https://") {
                anyhow::bail!("push.webpush.subject must be a mailto: or https: URL");
            }
        }
        let w = &self.webhook;
        if let Some(url) = &w.url {
            let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                .iter()
                .any(|p| url.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/'])));
            if !url.starts_with("https://") && !loopback {
                anyhow::bail!("push.webhook.url must be an https:// URL (http:// only to loopback)");
            }
            if w.secret.is_some() && w.secret_file.is_some() {
                anyhow::bail!("push.webhook.secret and push.webhook.secret_file are exclusive");
            }
            if w.mode == WebhookMode::Generic && w.secret.is_none() && w.secret_file.is_none() {
                anyhow::bail!("push.webhook in generic mode needs a secret or secret_file");
            }
            if w.secret.as_ref().is_some_and(|s| s.expose().len() < 16) {
                anyhow::bail!("push.webhook.secret must be at least 16 bytes");
            }
            if w.timeout_secs == 0 {
                anyhow::bail!("push.webhook.timeout_secs must be at least 1");
            }
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./portcullis-data"),
            ldap: LdapConfig::default(),
            directory: DirectoryConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            http: HttpConfig::default(),
            push: PushConfig::default(),
            mfa: crate::mfa::MfaConfig::default(),
            provision: crate::provision::ProvisionConfig::default(),
        }
    }
}

impl Default for LdapConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 3890)),
            ldaps_listen: Some(SocketAddr::from(([0, 0, 0, 0], 6360))),
            base_dn: "dc=example,dc=org".into(),
            max_message_bytes: 64 * 1024,
            max_ber_depth: 64,
            max_connections: 4096,
            max_connections_per_ip: 256,
            idle_timeout_secs: 300,
            read_timeout_secs: 30,
            max_unpaged_results: 50_000,
            max_paged_cursors: 8,
            bind_requires_tls: true,
        }
    }
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            id_range_start: 10_000,
            id_range_end: 60_000,
            default_shell: "/bin/bash".into(),
            home_base: "/home".into(),
            default_group: "domain-users".into(),
            admin_group: "portcullis-admins".into(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            max_failures: 5,
            lockout_secs: 300,
            source_max_failures: 50,
            source_lockout_secs: 300,
            hash_concurrency: 0,
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (if any), then the environment.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, an unknown key, or a value of
    /// the wrong type.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                anyhow::bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        // PORTCULLIS_LOG and PORTCULLIS_CONFIG are read by main and clap, not here.
        figment = figment.merge(Env::prefixed("PORTCULLIS_").ignore(&["log", "config"]).split("__"));
        let config: Config = figment.extract()?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let d = &self.directory;
        if d.id_range_start < 1 || d.id_range_end < d.id_range_start {
            anyhow::bail!("directory.id_range_start..id_range_end must be a non-empty range above 0");
        }
        if self.ldap.max_message_bytes < 1024 {
            anyhow::bail!("ldap.max_message_bytes must be at least 1024");
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            anyhow::bail!("tls.cert_file and tls.key_file must be given together");
        }
        if let Some(issuer) = &self.http.issuer {
            if !issuer.starts_with("https://") || issuer.contains(['?', '#']) {
                anyhow::bail!("http.issuer must be an https:// URL without query or fragment");
            }
        }
        if !(1..=60).contains(&self.http.code_ttl_secs) {
            anyhow::bail!("http.code_ttl_secs must be between 1 and 60");
        }
        if self.http.max_concurrent_requests == 0 {
            anyhow::bail!("http.max_concurrent_requests must be at least 1");
        }
        self.push.validate()?;
        crate::directory::dn::Dn::parse(&self.ldap.base_dn)
            .map_err(|e| anyhow::anyhow!("ldap.base_dn is not a valid DN: {e}"))?;
        Ok(())
    }

    /// Path of the SQLite database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("portcullis.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_is_valid_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("portcullis.example.toml");
        let from_file: Config = Figment::from(Toml::file(&path)).extract().unwrap();
        let defaults = Config::default();
        assert_eq!(toml_of(&from_file), toml_of(&defaults), "example file must document the defaults");
    }

    fn toml_of(c: &Config) -> String {
        format!("{c:?}")
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[ldap]\nlisen = \"0.0.0.0:1\"\n").unwrap();
        assert!(Config::load(Some(&file)).unwrap_err().to_string().contains("lisen"));
        std::fs::write(&file, "[ldap]\nbase_dn = \"not a dn\"\n").unwrap();
        assert!(Config::load(Some(&file)).is_err());
        assert!(Config::load(Some(&dir.path().join("missing.toml"))).is_err());
        for bad in [
            "[push.apns]\nkey_file = \"/k.p8\"\n",
            "[push.webhook]\nurl = \"http://example.org/hook\"\nsecret = \"0123456789abcdef\"\n",
            "[push.webhook]\nurl = \"https://example.org/hook\"\n",
            "[push.webhook]\nurl = \"https://example.org/hook\"\nsecret = \"short\"\n",
            "[push.webpush]\nsubject = \"admin@example.org\"\n",
            "[push]\nmax_attempts = 0\n",
        ] {
            std::fs::write(&file, bad).unwrap();
            assert!(Config::load(Some(&file)).is_err(), "accepted: {bad}");
        }
        std::fs::write(&file, "[push.webhook]\nurl = \"http://127.0.0.1:9/\"\nmode = \"compat\"\napikey = \"k-123\"\n")
            .unwrap();
        let c = Config::load(Some(&file)).unwrap();
        assert_eq!(c.push.webhook.mode, WebhookMode::Compat);
        assert_eq!(c.push.webhook.apikey.as_ref().map(Secret::expose), Some("k-123"));
        assert!(!format!("{c:?}").contains("k-123"), "a secret reached Debug output");
    }
}
