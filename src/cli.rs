//! The command line: `serve` and the admin commands. Admin commands open the
//! same store as the server; a running server notices their changes within
//! [`crate::server::REFRESH_INTERVAL`].

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Args, Parser, Subcommand};
use rand::RngCore;

use crate::config::Config;
use crate::model::{Actor, Kind, SigningAlg};
use crate::store::{NewGroup, NewUser, Store};

/// Portcullis: an identity server. It serves LDAP (with StartTLS and LDAPS)
/// so Linux hosts log users in through SSSD/PAM, from one store that this
/// same program administers.
///
/// Configuration comes from built-in defaults, then the TOML file given with
/// --config, then environment variables named PORTCULLIS_<KEY>, with nested
/// keys joined by a double underscore (PORTCULLIS_LDAP__LISTEN=0.0.0.0:389).
/// See portcullis.example.toml for every key.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, long_about)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (database, generated keys); overrides the config's
    /// data_dir and PORTCULLIS_DATA_DIR. Default: ./portcullis-data
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (LDAP on ldap.listen, LDAPS on ldap.ldaps_listen).
    Serve,
    /// Manage users.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage groups and memberships.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Manage service accounts: bind-only identities for SSSD and applications.
    #[command(subcommand, name = "service-account")]
    ServiceAccount(ServiceCmd),
    /// Manage the OpenID provider: clients and signing keys.
    #[command(subcommand)]
    Oidc(OidcCmd),
    /// Import users, groups and memberships from another directory.
    #[command(subcommand)]
    Import(ImportCmd),
    /// The reference approval device: enroll with a link, then list and
    /// answer sign-in challenges (push 2FA from a terminal).
    #[command(subcommand)]
    Device(crate::device_client::DeviceCmd),
    /// Manage sites: the networks containers live in (subnet, DNS domain, address range).
    #[command(subcommand)]
    Site(crate::provision::cli::SiteCmd),
    /// Manage Proxmox VE nodes that containers are placed on.
    #[command(subcommand)]
    Node(crate::provision::cli::NodeCmd),
    /// Manage plans: container size classes.
    #[command(subcommand)]
    Plan(crate::provision::cli::PlanCmd),
    /// Manage entitlements: which groups' members get containers of which plan.
    #[command(subcommand)]
    Entitlement(crate::provision::cli::EntitlementCmd),
    /// Manage per-user and per-group quotas.
    #[command(subcommand)]
    Quota(crate::provision::cli::QuotaCmd),
    /// Request, list, inspect, start, stop and delete containers; follow their progress.
    #[command(subcommand)]
    Container(crate::provision::cli::ContainerCmd),
    /// Container requests beyond a quota, for an admin to approve or decline.
    #[command(subcommand)]
    Request(crate::provision::cli::RequestCmd),
    /// Show the newest audit-log entries.
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

/// `user …`
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user; uidNumber is allocated from the configured range.
    Add(UserAdd),
    /// Set a user's password, read from standard input.
    Passwd {
        name: String,
        /// Read the password from the first line of standard input (required).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Forbid a user to bind or log in (entries stay visible).
    Disable { name: String },
    /// Allow a disabled user again.
    Enable { name: String },
    /// Delete a user and their memberships.
    Del { name: String },
    /// List users.
    List,
    /// Show one user.
    Show { name: String },
    /// Add an SSH public key (served as sshPublicKey).
    AddSshKey { name: String, key: String },
    /// Manage a user's second factors (approval devices, TOTP, recovery codes).
    #[command(subcommand)]
    Mfa(UserMfaCmd),
}

/// `user mfa …`
#[derive(Debug, Subcommand)]
pub enum UserMfaCmd {
    /// Print a one-time link that enrolls an approval device
    /// (`portcullis device enroll URL` or the phone app); it expires after
    /// mfa.enrollment_ttl_secs.
    EnrollLink { name: String },
    /// Show a user's devices, TOTP, recovery codes and push lock.
    Show { name: String },
    /// Remove one approval device (its id from `user mfa show`).
    RemoveDevice { name: String, device_id: String },
    /// Remove all of a user's approval devices and security keys (a lost phone or key).
    Reset { name: String },
    /// Let pushes reach a user again after a "this wasn't me" report.
    Unlock { name: String },
    /// Start TOTP enrollment: prints the otpauth URL and the secret; the
    /// first valid code confirms it.
    Totp { name: String },
    /// Confirm a started TOTP enrollment with a current code from the app
    /// (for users who only log in over SSH: LDAP accepts confirmed TOTP only).
    TotpConfirm { name: String, code: String },
    /// Replace a user's recovery codes; prints the 10 new codes once.
    RecoveryCodes { name: String },
}

/// Options of `user add`.
#[derive(Debug, Args)]
pub struct UserAdd {
    pub name: String,
    /// E-mail address.
    #[arg(long)]
    pub email: Option<String>,
    /// Display name (cn, gecos); defaults to the login name.
    #[arg(long)]
    pub display_name: Option<String>,
    /// Read an initial password from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// Fixed uidNumber instead of the next free one.
    #[arg(long)]
    pub uid_number: Option<i64>,
    /// Primary group (name); defaults to directory.default_group.
    #[arg(long)]
    pub primary_group: Option<String>,
    /// Login shell; defaults to directory.default_shell.
    #[arg(long)]
    pub shell: Option<String>,
    /// Home directory; defaults to directory.home_base/NAME.
    #[arg(long)]
    pub home: Option<String>,
    /// SSH public key; may be given more than once.
    #[arg(long = "ssh-key")]
    pub ssh_keys: Vec<String>,
}

/// `group …`
#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Create a group; gidNumber is allocated from the configured range.
    Add {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Fixed gidNumber instead of the next free one.
        #[arg(long)]
        gid_number: Option<i64>,
    },
    /// Delete a group (its members stay).
    Del { name: String },
    /// List groups.
    List,
    /// Show one group with its members.
    Show { name: String },
    /// Add a user to a group.
    AddMember { group: String, user: String },
    /// Remove a user from a group.
    RemoveMember { group: String, user: String },
}

/// `service-account …`
#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create a service account; binds as cn=NAME,ou=services,BASE.
    Add {
        name: String,
        /// Read the password from standard input (required).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Set a service account's password, read from standard input.
    Passwd {
        name: String,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Delete a service account.
    Del { name: String },
    /// List service accounts.
    List,
}

/// `oidc …`
#[derive(Debug, Subcommand)]
pub enum OidcCmd {
    /// Manage relying parties (web apps that sign in with Portcullis).
    #[command(subcommand)]
    Client(OidcClientCmd),
    /// Manage token-signing keys.
    #[command(subcommand)]
    Key(OidcKeyCmd),
}

/// `oidc client …`
#[derive(Debug, Subcommand)]
pub enum OidcClientCmd {
    /// Register a client; prints its secret once (confidential clients).
    Add {
        /// The client_id.
        name: String,
        /// Exact redirect URI (https, or http on loopback); may repeat.
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// Allowed post-logout redirect URI; may repeat.
        #[arg(long = "post-logout-redirect-uri")]
        post_logout_redirect_uris: Vec<String>,
        /// A public client (no secret; PKCE required), e.g. a native app.
        #[arg(long)]
        public: bool,
        /// Only members of this group may sign in; may repeat.
        #[arg(long = "allowed-group")]
        allowed_groups: Vec<String>,
        /// A third-party application: each user must approve it once (consent page).
        #[arg(long)]
        third_party: bool,
        /// How this client's ID tokens are signed (its id_token_signed_response_alg):
        /// RS256 (RSA, every relying party supports it), ES256 (ECDSA P-256) or
        /// EdDSA (Ed25519). Pick what the client's OpenID library verifies.
        #[arg(long, value_name = "ALG", default_value_t = SigningAlg::Rs256, ignore_case = true)]
        id_token_alg: SigningAlg,
        /// Where to POST a logout token when a user's Portcullis session
        /// ends (OpenID Connect Back-Channel Logout): an absolute http(s) URL.
        #[arg(long = "backchannel-logout-uri", value_name = "URI")]
        backchannel_logout_uri: Option<String>,
        /// Everyone signing in to this client needs a second factor, not
        /// only members of mfa.required_groups.
        #[arg(long)]
        require_mfa: bool,
    },
    /// Who needs a second factor to sign in to a client: `required`
    /// (everyone) or `by-group` (members of mfa.required_groups, and admins).
    SetMfa {
        name: String,
        #[arg(value_parser = ["required", "by-group"])]
        policy: String,
    },
    /// List clients.
    List,
    /// Show one client.
    Show { name: String },
    /// Delete a client.
    Del { name: String },
    /// Replace a confidential client's secret; prints the new one once.
    RotateSecret { name: String },
}

/// `oidc key …`
#[derive(Debug, Subcommand)]
pub enum OidcKeyCmd {
    /// Make new signing keys (one per algorithm: RS256, ES256, EdDSA); the
    /// previous keys stay published until the tokens they signed expire.
    Rotate {
        /// Rotate only this algorithm's key; default: all three.
        #[arg(long, value_name = "ALG", ignore_case = true)]
        alg: Option<SigningAlg>,
    },
    /// List signing keys.
    List,
}

/// The JOSE names on the command line (`--id-token-alg`, `--alg`).
impl clap::ValueEnum for SigningAlg {
    fn value_variants<'a>() -> &'a [Self] {
        &SigningAlg::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

/// `import …`
#[derive(Debug, Subcommand)]
pub enum ImportCmd {
    /// Import posixAccount users and posixGroup groups from an LDIF export
    /// (e.g. slapcat), keeping password hashes ({ARGON2}, {SSHA}, {CRYPT}…);
    /// each is upgraded to argon2id at the user's next successful bind.
    /// Running it again changes nothing.
    Ldif {
        file: PathBuf,
        /// Report what would be done without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Runs the parsed command line.
///
/// # Errors
/// Any failure, phrased for the admin.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // The device is a client of some server: no configuration, no store.
    if let Command::Device(cmd) = cli.command {
        return crate::device_client::run(cmd).await;
    }
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    if let Command::Serve = cli.command {
        return crate::server::run(config).await;
    }
    let store = Store::open(&config.database_path())
        .await
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?
        .with_provision_policy(config.provision.policy());
    let result = admin(&config, &store, cli.command).await;
    store.close().await;
    result
}

async fn admin(config: &Config, store: &Store, command: Command) -> anyhow::Result<()> {
    let actor = Actor::cli();
    match command {
        Command::Serve | Command::Device(_) => unreachable_serve(),
        Command::User(cmd) => user(config, store, cmd, &actor).await,
        Command::Group(cmd) => group(config, store, cmd, &actor).await,
        Command::ServiceAccount(cmd) => service(store, cmd, &actor).await,
        Command::Oidc(OidcCmd::Client(cmd)) => oidc_client(store, cmd, &actor).await,
        Command::Oidc(OidcCmd::Key(cmd)) => oidc_key(config, store, cmd, &actor).await,
        Command::Import(ImportCmd::Ldif { file, dry_run }) => {
            let report = crate::import::ldif::import_file(config, store, &file, dry_run, &actor).await?;
            println!("{report}");
            Ok(())
        }
        Command::Site(cmd) => crate::provision::cli::site(store, cmd, &actor).await,
        Command::Node(cmd) => crate::provision::cli::node(config, store, cmd, &actor).await,
        Command::Plan(cmd) => crate::provision::cli::plan(store, cmd, &actor).await,
        Command::Entitlement(cmd) => crate::provision::cli::entitlement(store, cmd, &actor).await,
        Command::Quota(cmd) => crate::provision::cli::quota(store, cmd, &actor).await,
        Command::Container(cmd) => crate::provision::cli::container(config, store, cmd, &actor).await,
        Command::Request(cmd) => crate::provision::cli::request(store, cmd, &actor).await,
        Command::Audit { limit } => {
            for e in store.audit_tail(limit).await? {
                println!(
                    "{}  {:<24} {:<24} {:<16} {} {}",
                    crate::clock::generalized_time(e.at),
                    e.actor,
                    e.action,
                    e.target,
                    e.source,
                    e.detail
                );
            }
            Ok(())
        }
    }
}

fn unreachable_serve() -> anyhow::Result<()> {
    bail!("serve and device are handled before the store is opened")
}

async fn user(config: &Config, store: &Store, cmd: UserCmd, actor: &Actor) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Add(a) => {
            let password_hash = if a.password_stdin { Some(hash_stdin_password()?) } else { None };
            let mut tx = store.begin().await?;
            let gid_number = match &a.primary_group {
                Some(g) => Some(tx.group_gid(g).await?),
                None => None,
            };
            let new = NewUser {
                name: a.name,
                email: a.email,
                display_name: a.display_name,
                password_hash,
                uid_number: a.uid_number,
                gid_number,
                login_shell: a.shell,
                home_directory: a.home,
                ssh_keys: a.ssh_keys,
            };
            let user = tx.add_user(new, &config.directory, actor).await?;
            tx.commit().await?;
            println!("created user {} (uidNumber {}, gidNumber {})", user.name, user.uid_number, user.gid_number);
        }
        UserCmd::Passwd { name, .. } => {
            let hash = hash_stdin_password()?;
            let mut tx = store.begin().await?;
            tx.set_user_password_hash(&name, &hash, actor).await?;
            tx.commit().await?;
            println!("password of user {name} changed");
        }
        UserCmd::Disable { name } => {
            let mut tx = store.begin().await?;
            tx.set_user_disabled(&name, true, actor).await?;
            tx.commit().await?;
            println!("user {name} disabled");
        }
        UserCmd::Enable { name } => {
            let mut tx = store.begin().await?;
            tx.set_user_disabled(&name, false, actor).await?;
            tx.commit().await?;
            println!("user {name} enabled");
        }
        UserCmd::Del { name } => {
            let mut tx = store.begin().await?;
            tx.delete_user(&name, actor).await?;
            tx.commit().await?;
            println!("user {name} deleted");
        }
        UserCmd::List => {
            let data = store.load_directory().await?;
            println!("{:<32} {:>10} {:>10} {:<8} EMAIL", "NAME", "UID", "GID", "STATE");
            for u in data.users {
                let state = if u.disabled { "disabled" } else { "active" };
                println!(
                    "{:<32} {:>10} {:>10} {:<8} {}",
                    u.name,
                    u.uid_number,
                    u.gid_number,
                    state,
                    u.email.unwrap_or_default()
                );
            }
        }
        UserCmd::Show { name } => {
            let Some(u) = store.user(&name).await? else { bail!("{} {name:?} does not exist", Kind::User) };
            let data = store.load_directory().await?;
            let groups: Vec<&str> =
                data.groups.iter().filter(|g| g.member_ids.contains(&u.id)).map(|g| g.name.as_str()).collect();
            println!("name:           {}", u.name);
            println!("id:             {}", u.id);
            println!("uidNumber:      {}", u.uid_number);
            println!("gidNumber:      {}", u.gid_number);
            println!("display name:   {}", u.display_name);
            println!("email:          {}", u.email.unwrap_or_default());
            println!("shell:          {}", u.login_shell);
            println!("home:           {}", u.home_directory);
            println!("state:          {}", if u.disabled { "disabled" } else { "active" });
            println!("password:       {}", password_state(u.password_hash.as_deref()));
            println!("groups:         {}", groups.join(", "));
            for k in u.ssh_keys {
                println!("ssh key:        {k}");
            }
        }
        UserCmd::AddSshKey { name, key } => {
            let mut tx = store.begin().await?;
            tx.add_ssh_key(&name, &key, actor).await?;
            tx.commit().await?;
            println!("SSH key added to user {name}");
        }
        UserCmd::Mfa(cmd) => user_mfa(config, store, cmd, actor).await?,
    }
    Ok(())
}

async fn user_mfa(config: &Config, store: &Store, cmd: UserMfaCmd, actor: &Actor) -> anyhow::Result<()> {
    use crate::clock::Clock;
    let clock = std::sync::Arc::new(crate::clock::SystemClock);
    let now = clock.now();
    let mfa = crate::mfa::Mfa::new(config.mfa.clone(), store.clone(), clock, config.data_dir.clone())
        .with_admin_group(&config.directory.admin_group);
    let name = match &cmd {
        UserMfaCmd::EnrollLink { name }
        | UserMfaCmd::Show { name }
        | UserMfaCmd::RemoveDevice { name, .. }
        | UserMfaCmd::Reset { name }
        | UserMfaCmd::Unlock { name }
        | UserMfaCmd::Totp { name }
        | UserMfaCmd::TotpConfirm { name, .. }
        | UserMfaCmd::RecoveryCodes { name } => name.clone(),
    };
    let Some(user) = store.user(&name).await? else { bail!("{} {name:?} does not exist", Kind::User) };
    let audit = |action: &'static str, detail: String| async move {
        store.audit_event(&actor.name, action, &name, &actor.source, &detail, now).await
    };
    match cmd {
        UserMfaCmd::EnrollLink { .. } => {
            let token = mfa.enrollment_token(&user.id).await?;
            audit("mfa.enrollment_link", String::new()).await?;
            println!("enrollment_url: {}{}{token}", config.http.issuer(), crate::device_client::ENROLL_MARKER);
            println!("(valid once, for {} seconds)", config.mfa.enrollment_ttl_secs);
        }
        UserMfaCmd::Show { .. } => {
            let factors = mfa.factors(&user.id).await?;
            let pending_totp = store.totp(&user.id).await?.is_some_and(|t| !t.confirmed);
            println!("user: {}", user.name);
            println!("devices: {}", factors.devices.len());
            for d in &factors.devices {
                let seen = d.last_seen_at.map_or_else(|| "never".to_string(), crate::clock::generalized_time);
                println!("device: {}  push: {}  last seen: {seen}  name: {}", d.id, d.push_kind, d.name);
            }
            let totp = match (factors.totp, pending_totp) {
                (true, _) => "yes",
                (false, true) => "no (enrollment not confirmed)",
                (false, false) => "no",
            };
            println!("totp: {totp}");
            println!("security keys: {}", store.webauthn_count(&user.id).await?);
            println!("recovery codes left: {}", factors.recovery_codes_left);
            println!("pushes locked: {}", if store.push_locked(&user.id).await? { "yes" } else { "no" });
        }
        UserMfaCmd::RemoveDevice { device_id, .. } => {
            if !store.remove_device(&user.id, &device_id).await? {
                bail!("user {} has no device {device_id:?}", user.name);
            }
            audit("mfa.device_removed", format!("device {device_id}")).await?;
            println!("device {device_id} removed");
        }
        UserMfaCmd::Reset { .. } => {
            let removed = store.remove_devices_of(&user.id).await?;
            let keys = store.remove_webauthn_credentials_of(&user.id).await?;
            audit("mfa.devices_reset", format!("{removed} devices and {keys} security keys removed")).await?;
            println!("{removed} devices and {keys} security keys of user {} removed", user.name);
        }
        UserMfaCmd::Unlock { .. } => {
            let was_locked = store.unlock_push(&user.id).await?;
            audit("mfa.push_unlocked", if was_locked { "" } else { "was not locked" }.to_string()).await?;
            println!("pushes to user {} {}", user.name, if was_locked { "unlocked" } else { "were not locked" });
        }
        UserMfaCmd::Totp { .. } => {
            let (url, secret) = mfa.start_totp(&user.id, &user.name, "Portcullis").await?;
            audit("mfa.totp_started", String::new()).await?;
            println!("otpauth_url: {url}");
            println!("secret: {secret}");
        }
        UserMfaCmd::TotpConfirm { code, .. } => {
            if store.totp(&user.id).await?.is_none() {
                bail!("user {} has no TOTP enrollment; start one with `user mfa totp`", user.name);
            }
            if !mfa.verify_totp(&user.id, &code).await? {
                bail!("the code is wrong, expired or already used");
            }
            audit("mfa.totp_confirmed", String::new()).await?;
            println!("TOTP of user {} confirmed", user.name);
        }
        UserMfaCmd::RecoveryCodes { .. } => {
            let codes = mfa.new_recovery_codes(&user.id).await?;
            audit("mfa.recovery_codes_replaced", String::new()).await?;
            println!("recovery codes (shown once):");
            for c in codes {
                println!("{c}");
            }
        }
    }
    Ok(())
}

fn password_state(hash: Option<&str>) -> &'static str {
    match hash {
        None => "not set",
        Some(h) if h.starts_with("$argon2id$") => "set (argon2id)",
        Some(_) => "set (imported hash; upgraded to argon2id at next bind)",
    }
}

async fn group(config: &Config, store: &Store, cmd: GroupCmd, actor: &Actor) -> anyhow::Result<()> {
    match cmd {
        GroupCmd::Add { name, description, gid_number } => {
            let mut tx = store.begin().await?;
            let gid = tx
                .add_group(NewGroup { name: name.clone(), description, gid_number }, &config.directory, actor)
                .await?;
            tx.commit().await?;
            println!("created group {name} (gidNumber {gid})");
        }
        GroupCmd::Del { name } => {
            let mut tx = store.begin().await?;
            tx.delete_group(&name, actor).await?;
            tx.commit().await?;
            println!("group {name} deleted");
        }
        GroupCmd::List => {
            let data = store.load_directory().await?;
            println!("{:<32} {:>10} {:>8} DESCRIPTION", "NAME", "GID", "MEMBERS");
            for g in data.groups {
                println!("{:<32} {:>10} {:>8} {}", g.name, g.gid_number, g.member_ids.len(), g.description);
            }
        }
        GroupCmd::Show { name } => {
            let data = store.load_directory().await?;
            let Some(g) = data.groups.iter().find(|g| g.name == name) else {
                bail!("{} {name:?} does not exist", Kind::Group)
            };
            let members: Vec<&str> =
                data.users.iter().filter(|u| g.member_ids.contains(&u.id)).map(|u| u.name.as_str()).collect();
            println!("name:           {}", g.name);
            println!("gidNumber:      {}", g.gid_number);
            println!("description:    {}", g.description);
            println!("members:        {}", members.join(", "));
        }
        GroupCmd::AddMember { group, user } => {
            let mut tx = store.begin().await?;
            tx.add_member(&group, &user, actor).await?;
            tx.commit().await?;
            println!("added {user} to {group}");
        }
        GroupCmd::RemoveMember { group, user } => {
            let mut tx = store.begin().await?;
            tx.remove_member(&group, &user, actor).await?;
            tx.commit().await?;
            println!("removed {user} from {group}");
        }
    }
    Ok(())
}

async fn service(store: &Store, cmd: ServiceCmd, actor: &Actor) -> anyhow::Result<()> {
    match cmd {
        ServiceCmd::Add { name, .. } => {
            let hash = hash_stdin_password()?;
            let mut tx = store.begin().await?;
            tx.add_service_account(&name, &hash, actor).await?;
            tx.commit().await?;
            println!("created service account {name}");
        }
        ServiceCmd::Passwd { name, .. } => {
            let hash = hash_stdin_password()?;
            let mut tx = store.begin().await?;
            tx.set_service_account_password_hash(&name, &hash, actor).await?;
            tx.commit().await?;
            println!("password of service account {name} changed");
        }
        ServiceCmd::Del { name } => {
            let mut tx = store.begin().await?;
            tx.delete_service_account(&name, actor).await?;
            tx.commit().await?;
            println!("service account {name} deleted");
        }
        ServiceCmd::List => {
            let data = store.load_directory().await?;
            for s in data.service_accounts {
                println!("{}{}", s.name, if s.disabled { " (disabled)" } else { "" });
            }
        }
    }
    Ok(())
}

async fn oidc_client(store: &Store, cmd: OidcClientCmd, actor: &Actor) -> anyhow::Result<()> {
    match cmd {
        OidcClientCmd::Add {
            name,
            redirect_uris,
            post_logout_redirect_uris,
            public,
            allowed_groups,
            third_party,
            id_token_alg,
            backchannel_logout_uri,
            require_mfa,
        } => {
            let secret = (!public).then(client_secret);
            let data = store.load_directory().await?;
            for g in &allowed_groups {
                if !data.groups.iter().any(|x| &x.name == g) {
                    bail!("{} {g:?} does not exist", Kind::Group);
                }
            }
            let mut tx = store.begin().await?;
            let client = crate::model::OidcClient {
                id: uuid::Uuid::new_v4().to_string(),
                name: name.clone(),
                secret_hash: secret.as_deref().map(crate::oidc::hash_client_secret),
                redirect_uris,
                post_logout_redirect_uris,
                allowed_groups,
                consent_required: third_party,
                id_token_signed_response_alg: id_token_alg,
                backchannel_logout_uri,
                mfa_required: require_mfa,
                created_at: tx.now(),
                updated_at: tx.now(),
            };
            tx.add_oidc_client(&client, actor).await?;
            tx.commit().await?;
            println!("client_id:     {name}");
            match secret {
                Some(s) => println!("client_secret: {s}\n(shown once; store it now)"),
                None => println!("public client: no secret, PKCE required"),
            }
        }
        OidcClientCmd::List => {
            for c in store.oidc_clients().await? {
                let kind = if c.secret_hash.is_some() { "confidential" } else { "public" };
                println!("{:<32} {:<12} {}", c.name, kind, c.redirect_uris.join(" "));
            }
        }
        OidcClientCmd::Show { name } => {
            let Some(c) = store.oidc_client(&name).await? else {
                bail!("{} {name:?} does not exist", Kind::OidcClient)
            };
            println!("client_id:      {}", c.name);
            println!("type:           {}", if c.secret_hash.is_some() { "confidential" } else { "public" });
            println!("redirect URIs:  {}", c.redirect_uris.join(" "));
            println!("logout URIs:    {}", c.post_logout_redirect_uris.join(" "));
            println!("back-channel:   {}", c.backchannel_logout_uri.as_deref().unwrap_or("(none)"));
            println!(
                "allowed groups: {}",
                if c.allowed_groups.is_empty() { "(everyone)".to_string() } else { c.allowed_groups.join(", ") }
            );
            println!("ID token alg:   {}", c.id_token_signed_response_alg);
            println!("second factor:  {}", if c.mfa_required { "required" } else { "by group" });
        }
        OidcClientCmd::SetMfa { name, policy } => {
            let mut tx = store.begin().await?;
            tx.set_oidc_client_mfa(&name, policy == "required", actor).await?;
            tx.commit().await?;
            println!("client {name}: second factor {policy}");
        }
        OidcClientCmd::Del { name } => {
            let mut tx = store.begin().await?;
            tx.delete_oidc_client(&name, actor).await?;
            tx.commit().await?;
            println!("client {name} deleted");
        }
        OidcClientCmd::RotateSecret { name } => {
            let secret = client_secret();
            let mut tx = store.begin().await?;
            tx.set_oidc_client_secret_hash(&name, &crate::oidc::hash_client_secret(&secret), actor).await?;
            tx.commit().await?;
            println!("client_secret: {secret}\n(shown once; the old secret no longer works)");
        }
    }
    Ok(())
}

async fn oidc_key(config: &Config, store: &Store, cmd: OidcKeyCmd, actor: &Actor) -> anyhow::Result<()> {
    match cmd {
        OidcKeyCmd::Rotate { alg } => {
            let sealer = crate::secrets::Sealer::load_or_create(&config.data_dir)?;
            let algs = alg.map_or_else(|| SigningAlg::ALL.to_vec(), |a| vec![a]);
            for (alg, kid) in crate::oidc::keys::rotate(store, &sealer, actor, &algs).await? {
                println!("new {alg} signing key {kid}");
            }
            println!("the previous keys stay published until the tokens they signed expire");
        }
        OidcKeyCmd::List => {
            for k in store.signing_keys().await? {
                let state = match k.retired_at {
                    None => "active".to_string(),
                    Some(t) => format!("retired {}", crate::clock::generalized_time(t)),
                };
                println!("{}  {}  created {}  {state}", k.kid, k.alg, crate::clock::generalized_time(k.created_at));
            }
        }
    }
    Ok(())
}

/// A 256-bit random client secret, URL-safe.
fn client_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Reads one password line from standard input and hashes it with argon2id.
fn hash_stdin_password() -> anyhow::Result<String> {
    let mut input = String::new();
    std::io::stdin()
        .take(crate::auth::password::MAX_PASSWORD_LEN as u64 + 2)
        .read_to_string(&mut input)
        .context("cannot read the password from standard input")?;
    let password = input.lines().next().unwrap_or("");
    crate::identity::check_new_password(password).map_err(anyhow::Error::msg)?;
    crate::auth::password::hash_password(password).map_err(anyhow::Error::msg)
}

/// A random 24-character password for bootstrap credentials.
pub fn random_password() -> String {
    let mut bytes = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
