//! The admin CLI for provisioning: `site`, `node`, `plan`, `entitlement`,
//! `quota`, `container` and `request` commands. Writes go through the store
//! (same transactions as the API); a running server's reconciler notices
//! each commit within a second.

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;

use super::model::{Desired, Entitlement, Node, Owner, Plan, Resources, Site};
use crate::config::Config;
use crate::model::Actor;
use crate::store::{NewContainer, Store};

/// `site …`
#[derive(Debug, Subcommand)]
pub enum SiteCmd {
    /// Add a site: the network its containers live in.
    Add {
        name: String,
        /// The containers' subnet, e.g. 10.20.0.0/24.
        #[arg(long)]
        subnet: ipnet::Ipv4Net,
        #[arg(long)]
        gateway: std::net::Ipv4Addr,
        /// DNS domain of the containers' names, e.g. cluster.internal.
        #[arg(long)]
        domain: String,
        /// Addresses handed to containers: FIRST-LAST, inside the subnet.
        #[arg(long, value_name = "FIRST-LAST")]
        range: String,
    },
    /// List sites.
    List,
}

/// `node …`
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per command line")]
pub enum NodeCmd {
    /// Register a Proxmox VE node; the API token secret is read from
    /// standard input and stored encrypted.
    Add {
        /// The node's name in Proxmox (as in /nodes).
        name: String,
        #[arg(long)]
        site: String,
        /// The API base URL, e.g. https://pve1.example.org:8006.
        #[arg(long)]
        url: String,
        /// The API token id, USER@REALM!TOKENID.
        #[arg(long)]
        token_id: String,
        /// Read the token secret from the first line of standard input (required).
        #[arg(long, required = true)]
        token_secret_stdin: bool,
        /// Trust exactly the certificate with this SHA-256 fingerprint (as
        /// `pvenode cert info` shows it).
        #[arg(long, conflicts_with = "ca")]
        fingerprint: Option<String>,
        /// Trust certificates issued by this PEM CA (e.g. pve-root-ca.pem).
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
        /// Storage for root disks.
        #[arg(long, default_value = "local-lvm")]
        storage: String,
        /// Bridge for the containers' eth0.
        #[arg(long, default_value = "vmbr0")]
        bridge: String,
        /// The default ostemplate, e.g. local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst.
        #[arg(long)]
        template: String,
        /// Container features this node allows, comma-separated (nesting,keyctl,fuse).
        #[arg(long, default_value = "nesting")]
        features: String,
        /// Capacity Portcullis may fill: cores.
        #[arg(long)]
        cores: i64,
        /// Capacity: memory in MiB.
        #[arg(long)]
        memory_mb: i64,
        /// Capacity: disk in GiB.
        #[arg(long)]
        disk_gb: i64,
    },
    /// List nodes with their health.
    List,
}

/// `plan …`
#[derive(Debug, Subcommand)]
pub enum PlanCmd {
    /// Add a size class.
    Add {
        name: String,
        #[arg(long)]
        cores: i64,
        #[arg(long)]
        memory_mb: i64,
        /// Swap in MiB; default: as much as memory.
        #[arg(long)]
        swap_mb: Option<i64>,
        #[arg(long)]
        disk_gb: i64,
        /// Features its containers need, comma-separated (nesting,keyctl,fuse).
        #[arg(long, default_value = "")]
        features: String,
        /// An ostemplate; default: the node's.
        #[arg(long)]
        template: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List plans.
    List,
}

/// `entitlement …`
#[derive(Debug, Subcommand)]
pub enum EntitlementCmd {
    /// Members of GROUP get a container of PLAN each (or, with --shared,
    /// the group gets one); the containers follow at once.
    Add {
        group: String,
        plan: String,
        #[arg(long)]
        shared: bool,
    },
    /// Remove an entitlement; its containers are deleted after the grace period.
    Del { group: String, plan: String },
    /// List entitlements.
    List,
}

/// `quota …`
#[derive(Debug, Subcommand)]
pub enum QuotaCmd {
    /// Set a user's or group's limits (an override of the configured
    /// default). Lowering it never deletes containers: those beyond it are
    /// flagged over-quota.
    Set {
        #[arg(value_parser = ["user", "group"])]
        kind: String,
        name: String,
        #[arg(long)]
        containers: i64,
        #[arg(long)]
        cores: i64,
        #[arg(long)]
        memory_mb: i64,
        #[arg(long)]
        disk_gb: i64,
    },
    /// Show limits and usage.
    Show {
        #[arg(value_parser = ["user", "group"])]
        kind: String,
        name: String,
    },
}

/// `container …`
#[derive(Debug, Subcommand)]
pub enum ContainerCmd {
    /// Request a container for a user within their quota; over quota it is
    /// refused with the limit and the excess, or filed for an admin with
    /// --file-request.
    Request {
        name: String,
        #[arg(long)]
        plan: String,
        /// The user it is for.
        #[arg(long)]
        owner: String,
        /// Over quota: file a request for an admin instead of failing.
        #[arg(long)]
        file_request: bool,
    },
    /// List containers (with --all also deleted ones).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Show one container.
    Show { name: String },
    /// Show a container's history.
    Events {
        name: String,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Start a container (desired state: running).
    Start { name: String },
    /// Stop a container (desired state: stopped).
    Stop { name: String },
    /// Delete a container now (no grace period).
    Delete { name: String },
    /// Resize a container to another plan (the disk only grows), within
    /// its owner's quota; over quota it is refused with the limit and the
    /// excess, or filed for an admin with --file-request.
    Resize {
        name: String,
        #[arg(long)]
        plan: String,
        #[arg(long)]
        file_request: bool,
    },
    /// Let another user log in to a container (a collaborator; no sudo).
    Share { name: String, user: String },
    /// Take a collaborator's access away.
    Unshare { name: String, user: String },
    /// Give a container (e.g. one adopted from a node) an owner: a user, or
    /// a group for a shared one. The owner's quota must hold it.
    Assign {
        name: String,
        #[arg(long, conflicts_with = "group", required_unless_present = "group")]
        user: Option<String>,
        #[arg(long)]
        group: Option<String>,
    },
    /// Follow a container's progress until it is ready (or deleted, or
    /// failing), printing each step.
    Wait {
        name: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Print a complete sssd.conf for the container: logins limited to its
    /// owner (or owning group's members) and instance admins, sudo for the
    /// owner. Install steps are in its comment header.
    SssdConfig {
        name: String,
        /// The service account SSSD binds as (its password stays a
        /// placeholder to fill in).
        #[arg(long, default_value = "sssd")]
        bind_account: String,
        /// The LDAP URI containers reach Portcullis at (StartTLS). Default:
        /// ldap://HOST:PORT with the issuer's host (or the first
        /// tls.hostnames entry, or this machine's name) and ldap.listen's port.
        #[arg(long)]
        uri: Option<String>,
    },
}

/// `request …`
#[derive(Debug, Subcommand)]
pub enum RequestCmd {
    /// List requests (pending by default).
    List {
        #[arg(long, default_value = "pending", value_parser = ["pending", "approved", "declined"])]
        status: String,
    },
    /// Approve: raises the user's quota just enough and creates the container.
    Approve { id: String },
    /// Decline.
    Decline { id: String },
}

fn range(text: &str) -> anyhow::Result<(std::net::Ipv4Addr, std::net::Ipv4Addr)> {
    let (a, b) = text.split_once('-').context("--range must be FIRST-LAST, e.g. 10.20.0.100-10.20.0.199")?;
    Ok((a.trim().parse().context("range start")?, b.trim().parse().context("range end")?))
}

fn features(list: &str) -> anyhow::Result<Vec<String>> {
    let out = super::model::split_list(list);
    if let Some(bad) = out.iter().find(|f| !matches!(f.as_str(), "nesting" | "keyctl" | "fuse")) {
        bail!("unknown container feature {bad:?}: use nesting, keyctl or fuse");
    }
    Ok(out)
}

fn size(r: &Resources) -> String {
    format!("{} cores, {} MiB, {} GiB", r.cores, r.memory_mb, r.disk_gb)
}

/// `site …`
///
/// # Errors
/// Invalid input or store errors, phrased for the admin.
pub async fn site(store: &Store, cmd: SiteCmd, actor: &Actor) -> anyhow::Result<()> {
    match cmd {
        SiteCmd::Add { name, subnet, gateway, domain, range: r } => {
            let (range_start, range_end) = range(&r)?;
            let site = Site { name: name.clone(), subnet, gateway, domain, range_start, range_end };
            let mut tx = store.begin().await?;
            tx.add_site(&site, actor).await?;
            tx.commit().await?;
            println!("site {name} added");
        }
        SiteCmd::List => {
            for s in store.sites().await? {
                println!(
                    "{:<16} {:<18} gw {:<15} {}-{} .{}",
                    s.name, s.subnet, s.gateway, s.range_start, s.range_end, s.domain
                );
            }
        }
    }
    Ok(())
}

/// `node …`
///
/// # Errors
/// Invalid input or store errors, phrased for the admin.
pub async fn node(config: &Config, store: &Store, cmd: NodeCmd, actor: &Actor) -> anyhow::Result<()> {
    match cmd {
        NodeCmd::Add {
            name,
            site,
            url,
            token_id,
            token_secret_stdin: _,
            fingerprint,
            ca,
            storage,
            bridge,
            template,
            features: f,
            cores,
            memory_mb,
            disk_gb,
        } => {
            let mut secret = String::new();
            std::io::stdin().take(4096).read_to_string(&mut secret).context("read the token secret")?;
            let secret = secret.lines().next().unwrap_or("").trim().to_string();
            if secret.is_empty() {
                bail!("no token secret on standard input");
            }
            if !token_id.contains('@') || !token_id.contains('!') {
                bail!("--token-id must look like USER@REALM!TOKENID, e.g. portcullis@pve!provision");
            }
            let tls_ca = match ca {
                Some(path) => Some(std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?),
                None => None,
            };
            let sealer = crate::secrets::Sealer::load_or_create(&config.data_dir)?;
            let node = Node {
                name: name.clone(),
                site,
                api_url: url,
                token_id,
                token_secret_sealed: sealer.seal(secret.as_bytes())?,
                tls_fingerprint: fingerprint,
                tls_ca,
                storage,
                bridge,
                template,
                features: features(&f)?,
                capacity: Resources { containers: i64::MAX, cores, memory_mb, disk_gb },
                enabled: true,
                last_seen_at: None,
                last_error: None,
            };
            let endpoint = crate::proxmox::Endpoint {
                base_url: node.api_url.clone(),
                token_id: node.token_id.clone(),
                token_secret: secret,
                tls: match (&node.tls_fingerprint, &node.tls_ca) {
                    (Some(fp), _) => crate::proxmox::TlsTrust::Fingerprint(fp.clone()),
                    (None, Some(ca)) => crate::proxmox::TlsTrust::CaPem(ca.clone()),
                    (None, None) => crate::proxmox::TlsTrust::System,
                },
            };
            let mut tx = store.begin().await?;
            tx.add_node(&node, actor).await?;
            tx.commit().await?;
            println!("node {name} registered (token stored encrypted)");
            adopt(store, &node, &endpoint, actor).await?;
        }
        NodeCmd::List => {
            for n in store.nodes().await? {
                let health = match (&n.last_error, n.last_seen_at) {
                    (Some(e), _) => format!("error: {e}"),
                    (None, Some(_)) => "ok".to_string(),
                    (None, None) => "not contacted yet".to_string(),
                };
                println!("{:<12} site {:<10} {:<36} {} — {health}", n.name, n.site, n.api_url, size(&n.capacity));
            }
        }
    }
    Ok(())
}

/// Adopts the containers a newly registered node already runs: each gets a
/// row without an owner (`container assign` gives it one) and the CT gets
/// our id tag, so the reconciler manages it from now on instead of
/// ignoring it or creating a twin.
async fn adopt(store: &Store, node: &Node, endpoint: &crate::proxmox::Endpoint, actor: &Actor) -> anyhow::Result<()> {
    let client = crate::proxmox::ProxmoxClient::new(endpoint)?;
    let listed = client.lxc_list(&node.name).await.with_context(|| {
        format!("node {} is registered, but its existing containers could not be listed", node.name)
    })?;
    for ct in listed {
        let mut tags = ct.tags();
        if tags.value(crate::proxmox::ID_TAG_PREFIX).is_some() {
            continue; // already one of ours
        }
        let config = client.lxc_config(&node.name, ct.vmid).await?;
        let found = crate::store::Adopted {
            node: node.name.clone(),
            site: node.site.clone(),
            vmid: i64::from(ct.vmid),
            hostname: config.hostname().or(ct.name.clone()).unwrap_or_else(|| format!("ct{}", ct.vmid)),
            size: Resources {
                containers: 1,
                cores: config.cores().and_then(|c| i64::try_from(c).ok()).unwrap_or(1),
                memory_mb: config.memory_mib().and_then(|m| i64::try_from(m).ok()).unwrap_or(512),
                disk_gb: config
                    .rootfs()
                    .and_then(|r| r.size_bytes)
                    .and_then(|b| i64::try_from(b >> 30).ok())
                    .unwrap_or(0),
            },
            swap_mb: config.swap_mib().and_then(|m| i64::try_from(m).ok()).unwrap_or(0),
            mac: config.net(0).and_then(|n| n.hwaddr).map(|m| m.to_ascii_lowercase()),
            running: ct.is_running(),
        };
        let mut tx = store.begin().await?;
        let c = tx.adopt_container(&found, actor).await?;
        tags.set_value(crate::proxmox::ID_TAG_PREFIX, &c.id)?;
        client.update_lxc_config(&node.name, ct.vmid, &[("tags", &tags.encode())]).await?;
        tx.commit().await?;
        println!(
            "adopted CT {} as container {} (no owner yet: portcullis container assign {} --user NAME)",
            ct.vmid, c.name, c.name
        );
    }
    Ok(())
}

/// `plan …`
///
/// # Errors
/// Invalid input or store errors, phrased for the admin.
pub async fn plan(store: &Store, cmd: PlanCmd, actor: &Actor) -> anyhow::Result<()> {
    match cmd {
        PlanCmd::Add { name, cores, memory_mb, swap_mb, disk_gb, features: f, template, description } => {
            let plan = Plan {
                name: name.clone(),
                cores,
                memory_mb,
                swap_mb: swap_mb.unwrap_or(memory_mb),
                disk_gb,
                features: features(&f)?,
                template,
                description,
            };
            let mut tx = store.begin().await?;
            tx.add_plan(&plan, actor).await?;
            tx.commit().await?;
            println!("plan {name} added");
        }
        PlanCmd::List => {
            for p in store.plans().await? {
                println!("{:<12} {} (swap {} MiB) {}", p.name, size(&p.resources()), p.swap_mb, p.features.join(","));
            }
        }
    }
    Ok(())
}

/// `entitlement …`
///
/// # Errors
/// Invalid input or store errors, phrased for the admin.
pub async fn entitlement(store: &Store, cmd: EntitlementCmd, actor: &Actor) -> anyhow::Result<()> {
    match cmd {
        EntitlementCmd::Add { group, plan, shared } => {
            let mut tx = store.begin().await?;
            tx.add_entitlement(&Entitlement { group: group.clone(), plan: plan.clone(), shared }, actor).await?;
            tx.commit().await?;
            println!("group {group} entitled to {plan} ({})", if shared { "shared" } else { "one per member" });
        }
        EntitlementCmd::Del { group, plan } => {
            let mut tx = store.begin().await?;
            tx.remove_entitlement(&group, &plan, actor).await?;
            tx.commit().await?;
            println!("entitlement removed; its containers go after the grace period");
        }
        EntitlementCmd::List => {
            for e in store.entitlements().await? {
                println!("{:<20} {:<12} {}", e.group, e.plan, if e.shared { "shared" } else { "per member" });
            }
        }
    }
    Ok(())
}

/// `quota …`
///
/// # Errors
/// Invalid input or store errors, phrased for the admin.
pub async fn quota(store: &Store, cmd: QuotaCmd, actor: &Actor) -> anyhow::Result<()> {
    match cmd {
        QuotaCmd::Set { kind, name, containers, cores, memory_mb, disk_gb } => {
            let mut tx = store.begin().await?;
            tx.set_quota(&kind, &name, Resources { containers, cores, memory_mb, disk_gb }, actor).await?;
            tx.commit().await?;
            println!("quota of {kind} {name} set");
        }
        QuotaCmd::Show { kind, name } => {
            let (limit, used) = store.quota_of(&kind, &name).await?;
            println!("containers: {} of {}", used.containers, limit.containers);
            println!("cores:      {} of {}", used.cores, limit.cores);
            println!("memory:     {} of {} MiB", used.memory_mb, limit.memory_mb);
            println!("disk:       {} of {} GiB", used.disk_gb, limit.disk_gb);
        }
    }
    Ok(())
}

/// `container …`
///
/// # Errors
/// Invalid input or store errors, phrased for the admin.
pub async fn container(config: &Config, store: &Store, cmd: ContainerCmd, actor: &Actor) -> anyhow::Result<()> {
    match cmd {
        ContainerCmd::Request { name, plan, owner, file_request } => {
            let Some(user) = store.user(&owner).await? else { bail!("user {owner:?} does not exist") };
            let Some(plan_row) = store.plans().await?.into_iter().find(|p| p.name == plan) else {
                bail!("plan {plan:?} does not exist")
            };
            let new = NewContainer {
                name: name.clone(),
                owner: Owner::User(user.id),
                origin: "request",
                entitlement: None,
                plan: plan_row,
                site: None,
            };
            let mut tx = store.begin().await?;
            match tx.add_container(&new, actor).await {
                Ok(c) => {
                    tx.commit().await?;
                    println!(
                        "container {name} requested: {} at {}",
                        c.plan,
                        c.ip.map(|ip| ip.to_string()).unwrap_or_default()
                    );
                }
                Err(crate::store::StoreError::Invalid(reason))
                    if file_request && reason.starts_with("quota exceeded") =>
                {
                    drop(tx);
                    let mut tx = store.begin().await?;
                    let id = tx.file_container_request(&owner, &name, &plan, &reason, actor).await?;
                    tx.commit().await?;
                    println!("{reason}\nfiled as request {id} for an admin (portcullis request approve {id})");
                }
                Err(e) => return Err(e.into()),
            }
        }
        ContainerCmd::List { all } => {
            for c in store.containers(all).await? {
                let flags = [(c.over_quota, " over-quota"), (c.delete_after.is_some(), " leaving")]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, t)| *t)
                    .collect::<String>();
                println!(
                    "{:<24} {:<8} {:<10} {:<15} {:<8} {}{flags}",
                    c.name,
                    c.plan,
                    c.status,
                    c.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                    c.node.as_deref().unwrap_or("-"),
                    c.vmid.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                );
            }
        }
        ContainerCmd::Show { name } => {
            let Some(c) = store.container(&name).await? else { bail!("container {name:?} does not exist") };
            println!("name:        {}", c.name);
            println!("id:          {}", c.id);
            println!("owner:       {}", owner_text(store, &c.owner).await?);
            println!("origin:      {}{}", c.origin, c.entitlement.map(|g| format!(" (group {g})")).unwrap_or_default());
            println!("plan:        {} ({})", c.plan, size(&c.size));
            println!("desired:     {}", c.desired);
            println!("status:      {}", c.status);
            println!("observed:    {}", c.observed);
            println!("node:        {}", c.node.as_deref().unwrap_or("-"));
            println!("vmid:        {}", c.vmid.map(|v| v.to_string()).unwrap_or_else(|| "-".into()));
            println!(
                "address:     {} ({})",
                c.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                c.mac.unwrap_or_default()
            );
            println!("over quota:  {}", if c.over_quota { "yes" } else { "no" });
            if let Some(at) = c.delete_after {
                println!("deleted at:  {at} (grace period)");
            }
            if let Some(e) = c.last_error {
                println!("last error:  {e}");
            }
        }
        ContainerCmd::Events { name, limit } => {
            let Some(c) = store.container(&name).await? else { bail!("container {name:?} does not exist") };
            for e in store.container_events(&c.id, limit).await? {
                println!("{} {:<9} {}", crate::clock::generalized_time(e.at), e.kind, e.message);
            }
        }
        ContainerCmd::Start { name } => set_desired(store, &name, Desired::Running, actor).await?,
        ContainerCmd::Stop { name } => set_desired(store, &name, Desired::Stopped, actor).await?,
        ContainerCmd::Delete { name } => set_desired(store, &name, Desired::Deleted, actor).await?,
        ContainerCmd::Resize { name, plan, file_request } => {
            let Some(plan_row) = store.plans().await?.into_iter().find(|p| p.name == plan) else {
                bail!("plan {plan:?} does not exist")
            };
            let mut tx = store.begin().await?;
            match tx.resize_container(&name, &plan_row, actor).await {
                Ok(()) => {
                    tx.commit().await?;
                    println!("container {name}: resizing to {plan}");
                }
                Err(crate::store::StoreError::Invalid(reason))
                    if file_request && reason.starts_with("quota exceeded") =>
                {
                    drop(tx);
                    let Some(c) = store.container(&name).await? else { bail!("container {name:?} does not exist") };
                    let Owner::User(owner_id) = &c.owner else { bail!("{reason}") };
                    let data = store.load_directory().await?;
                    let Some(user) = data.users.iter().find(|u| &u.id == owner_id) else { bail!("{reason}") };
                    let mut tx = store.begin().await?;
                    let id = tx.file_request("resize", &user.name, &name, &plan, &reason, actor).await?;
                    tx.commit().await?;
                    println!("{reason}\nfiled as request {id} for an admin (portcullis request approve {id})");
                }
                Err(e) => return Err(e.into()),
            }
        }
        ContainerCmd::Share { name, user } | ContainerCmd::Unshare { name, user }
            if name.is_empty() || user.is_empty() =>
        {
            bail!("give a container and a user")
        }
        ContainerCmd::Share { name, user } => {
            let mut tx = store.begin().await?;
            tx.set_collaborator(&name, &user, true, actor).await?;
            tx.commit().await?;
            println!("{user} may now log in to {name}");
        }
        ContainerCmd::Unshare { name, user } => {
            let mut tx = store.begin().await?;
            tx.set_collaborator(&name, &user, false, actor).await?;
            tx.commit().await?;
            println!("{user} may no longer log in to {name}");
        }
        ContainerCmd::Assign { name, user, group } => {
            let (kind, owner) = match (user, group) {
                (Some(u), _) => ("user", u),
                (None, Some(g)) => ("group", g),
                (None, None) => bail!("give --user or --group"),
            };
            let mut tx = store.begin().await?;
            tx.assign_container(&name, kind, &owner, actor).await?;
            tx.commit().await?;
            println!("container {name} now belongs to {kind} {owner}");
        }
        ContainerCmd::Wait { name, timeout } => wait(store, &name, Duration::from_secs(timeout)).await?,
        ContainerCmd::SssdConfig { name, bind_account, uri } => {
            print!("{}", sssd_config(config, store, &name, &bind_account, uri).await?);
        }
    }
    Ok(())
}

/// The text of `container sssd-config`; warns on stderr when the bind
/// account does not exist (yet).
async fn sssd_config(
    config: &Config,
    store: &Store,
    name: &str,
    bind_account: &str,
    uri: Option<String>,
) -> anyhow::Result<String> {
    use super::access::{OwnerName, SssdConfig, default_uri};
    let Some(c) = store.container(name).await? else { bail!("container {name:?} does not exist") };
    if c.status == "deleted" {
        bail!("container {name:?} is deleted");
    }
    let domain = store.sites().await?.into_iter().find(|s| s.name == c.site).map(|s| s.domain).unwrap_or_default();
    let data = store.load_directory().await?;
    let owner = match &c.owner {
        Owner::User(id) => data.users.iter().find(|u| &u.id == id).map(|u| OwnerName::User(u.name.clone())),
        Owner::Group(id) => data.groups.iter().find(|g| &g.id == id).map(|g| OwnerName::Group(g.name.clone())),
        Owner::None => None,
    };
    if !data.service_accounts.iter().any(|s| s.name == bind_account) {
        eprintln!(
            "warning: service account {bind_account:?} does not exist; create it with \
             `portcullis service-account add {bind_account} --password-stdin`"
        );
    }
    let uri = uri.unwrap_or_else(|| {
        let machine = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
        default_uri(config, &machine)
    });
    let ca_source = match &config.tls.cert_file {
        Some(_) => "the CA that issued tls.cert_file".to_string(),
        None => format!("{} on the Portcullis host", config.data_dir.join("tls").join("ca.pem").display()),
    };
    let text = SssdConfig {
        name: &c.name,
        domain: &domain,
        owner: owner.unwrap_or(OwnerName::Nobody),
        admin_group: &config.directory.admin_group,
        base_dn: &config.ldap.base_dn,
        uri: &uri,
        ca_source: &ca_source,
        bind_account,
    }
    .render();
    Ok(text)
}

async fn owner_text(store: &Store, owner: &Owner) -> anyhow::Result<String> {
    let data = store.load_directory().await?;
    Ok(match owner {
        Owner::User(id) => {
            data.users.iter().find(|u| &u.id == id).map_or_else(|| id.clone(), |u| format!("user {}", u.name))
        }
        Owner::Group(id) => {
            data.groups.iter().find(|g| &g.id == id).map_or_else(|| id.clone(), |g| format!("group {}", g.name))
        }
        Owner::None => "(unassigned)".to_string(),
    })
}

async fn set_desired(store: &Store, name: &str, desired: Desired, actor: &Actor) -> anyhow::Result<()> {
    let mut tx = store.begin().await?;
    tx.set_container_desired(name, desired, actor).await?;
    tx.commit().await?;
    println!("container {name}: desired {desired}");
    Ok(())
}

/// Prints each new event until the container is ready, deleted or
/// failing, or `timeout` passes.
async fn wait(store: &Store, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let Some(c) = store.container(name).await? else { bail!("container {name:?} does not exist") };
    let deadline = Instant::now() + timeout;
    let mut shown = 0;
    loop {
        let events = store.container_events(&c.id, 1000).await?;
        for e in events.iter().skip(shown) {
            println!("  {:<9} {}", e.kind, e.message);
        }
        shown = events.len();
        let Some(now) = store.container(&c.id).await? else { bail!("container {name:?} vanished") };
        match (now.desired, now.status.as_str()) {
            (Desired::Running, "ready") | (Desired::Stopped, "stopped") | (Desired::Deleted, "deleted") => {
                println!("{name}: {}", now.status);
                return Ok(());
            }
            (_, "error") if now.attempts >= 3 => {
                bail!("{name}: failing after {} attempts: {}", now.attempts, now.last_error.unwrap_or_default())
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            bail!("{name}: still {} after {} s", now.status, timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `request …`
///
/// # Errors
/// Invalid input or store errors, phrased for the admin.
pub async fn request(store: &Store, cmd: RequestCmd, actor: &Actor) -> anyhow::Result<()> {
    match cmd {
        RequestCmd::List { status } => {
            for r in store.container_requests(&status).await? {
                println!("{}  {:<6} {:<16} {:<24} {:<8} {}", r.id, r.kind, r.user, r.name, r.plan, r.reason);
            }
        }
        RequestCmd::Approve { id } | RequestCmd::Decline { id } if id.is_empty() => bail!("no request id"),
        RequestCmd::Approve { id } => {
            let mut tx = store.begin().await?;
            tx.decide_container_request(&id, true, actor).await?;
            tx.commit().await?;
            println!("request {id} approved");
        }
        RequestCmd::Decline { id } => {
            let mut tx = store.begin().await?;
            tx.decide_container_request(&id, false, actor).await?;
            tx.commit().await?;
            println!("request {id} declined");
        }
    }
    Ok(())
}
