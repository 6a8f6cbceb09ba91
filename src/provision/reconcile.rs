//! The reconciler: compares each container's desired state (the store) with
//! what Proxmox reports and acts, one step at a time, until they match.
//!
//! Level-triggered and idempotent: every pass starts from what it observes,
//! never from what it remembers, so a crash (or `kill -9`) at any point
//! leaves nothing it cannot pick up. The one ordering rule that makes
//! creates crash-safe: the chosen node and vmid are stored *before* the
//! create call, and the container carries its Portcullis id in a Proxmox tag;
//! the next pass finds a half-done create by vmid (or by tag) and adopts it
//! instead of creating a second one. A vmid that someone else took (the
//! `/cluster/nextid` race) is dropped and a new one chosen.
//!
//! Work is scheduled per container (never two operations on one container
//! at once), at most `max_concurrent` at a time; errors back off
//! exponentially per container; Proxmox's error text is recorded verbatim
//! as the container's last error and event.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::model::{Container, Desired, Node, Owner};
use super::{DriftPolicy, ProvisionConfig};
use crate::clock::SharedClock;
use crate::proxmox::{CreateLxc, Endpoint, ErrorKind, LxcStatus, ProxmoxClient, ProxmoxError, TlsTrust, Upid};
use crate::secrets::Sealer;
use crate::store::{Progress, Store, StoreError};

/// The reconciler service; `serve` runs [`Reconciler::run`].
pub struct Reconciler {
    store: Store,
    sealer: Arc<Sealer>,
    config: ProvisionConfig,
    clock: SharedClock,
    clients: Mutex<HashMap<String, (String, ProxmoxClient)>>,
    in_flight: Mutex<HashSet<String>>,
    wake: Notify,
}

/// Why one step failed: Proxmox said so, or our own store did.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("{0}")]
    Proxmox(#[from] ProxmoxError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

/// Where a container stands after a step.
struct Standing {
    status: &'static str,
    observed: &'static str,
    /// Look again after this many seconds (0 = at the next pass).
    again_in: i64,
}

impl Reconciler {
    /// A reconciler over `store`; node token secrets open with `sealer`.
    pub fn new(store: Store, sealer: Arc<Sealer>, config: ProvisionConfig, clock: SharedClock) -> Arc<Self> {
        Arc::new(Self {
            store,
            sealer,
            config,
            clock,
            clients: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashSet::new()),
            wake: Notify::new(),
        })
    }

    /// Asks for a pass now (after a change).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs passes until `shutdown` resolves: at every interval, and when
    /// woken. Containers being worked on are skipped by later passes.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let interval = Duration::from_secs(self.config.interval_secs.max(1));
        let mut last_generation = -1;
        // Wake-ups (a finished task, a commit) coalesce: passes start at most
        // this often, so a burst of completions costs one listing, not one each.
        let min_gap = Duration::from_millis(300);
        loop {
            let started = tokio::time::Instant::now();
            // A write transaction bumps the generation: pass at once.
            if let Ok(g) = self.store.generation().await
                && g != last_generation
            {
                last_generation = g;
            }
            if let Err(e) = self.pass().await {
                tracing::error!(error = %e, "provisioning pass failed");
            }
            let changed = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if self.store.generation().await.is_ok_and(|g| g != last_generation) {
                        return;
                    }
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(interval) => {}
                () = self.wake.notified() => {}
                () = changed => {}
            }
            tokio::time::sleep_until(started + min_gap).await;
        }
    }

    /// One pass: due grace periods, the dnsmasq files, one container
    /// listing per node, then work on each container whose listing entry
    /// differs from its desired state (spawned, bounded, one task per
    /// container). A healthy container costs no API call beyond its node's
    /// listing.
    ///
    /// # Errors
    /// Store errors.
    pub async fn pass(self: &Arc<Self>) -> Result<(), StoreError> {
        let now = self.clock.now();
        for name in self.store.expire_grace_periods(now).await? {
            tracing::info!(container = %name, "grace period over; deleting");
        }
        self.write_dnsmasq().await;
        let containers = self.store.containers(false).await?;
        let listings = self.list_nodes(&containers).await?;
        // Each CT's tags parsed once per pass: (node, container id) → entry.
        let by_id: HashMap<(&str, String), &LxcStatus> = listings
            .iter()
            .flat_map(|(node, list)| {
                list.iter()
                    .filter_map(move |ct| Some(((node.as_str(), ct.tags().value(crate::proxmox::ID_TAG_PREFIX)?), ct)))
            })
            .collect();
        for c in containers {
            if c.next_attempt > now || !Self::needs_work(&c, &listings, &by_id) {
                continue;
            }
            {
                let mut busy = self.lock_in_flight();
                if busy.len() >= self.config.max_concurrent.max(1) || !busy.insert(c.id.clone()) {
                    continue;
                }
            }
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let id = c.id.clone();
                this.reconcile(c).await;
                this.lock_in_flight().remove(&id);
                this.wake();
            });
        }
        Ok(())
    }

    /// `GET /nodes/{node}/lxc` once for each node that holds a live
    /// container; a node that cannot be listed is absent from the map (its
    /// containers wait for the next pass) and its error recorded.
    async fn list_nodes(&self, containers: &[Container]) -> Result<HashMap<String, Vec<LxcStatus>>, StoreError> {
        let mut listings = HashMap::new();
        let now = self.clock.now();
        for node in self.store.nodes().await? {
            if !containers.iter().any(|c| c.node.as_deref() == Some(node.name.as_str())) {
                continue;
            }
            let listed = match self.client(&node) {
                Ok(client) => client.lxc_list(&node.name).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match listed {
                Ok(list) => {
                    if node.last_error.is_some() || node.last_seen_at.is_none_or(|t| t + 60 < now) {
                        self.store.set_node_health(&node.name, now, None).await?;
                    }
                    listings.insert(node.name.clone(), list);
                }
                Err(e) => {
                    tracing::warn!(node = %node.name, error = %e, "cannot list the node's containers");
                    if node.last_error.as_deref() != Some(e.as_str()) {
                        self.store.set_node_health(&node.name, now, Some(&e)).await?;
                    }
                }
            }
        }
        Ok(listings)
    }

    /// Whether the listing shows `c` differing from its desired state
    /// (`by_id`: the listed CTs by node and the container id in their tag).
    fn needs_work(
        c: &Container,
        listings: &HashMap<String, Vec<LxcStatus>>,
        by_id: &HashMap<(&str, String), &LxcStatus>,
    ) -> bool {
        if c.desired == Desired::Deleted {
            return true;
        }
        let Some(node) = &c.node else { return true };
        if !listings.contains_key(node) {
            return false; // the node could not be listed: wait for the next pass
        }
        let Some(ct) = by_id.get(&(node.as_str(), c.id.clone())) else { return true };
        if c.vmid != Some(i64::from(ct.vmid)) || ct.lock.is_some() {
            return true;
        }
        match c.desired {
            Desired::Running => !(ct.is_running() && c.status == "ready"),
            _ => ct.is_running() || c.status != "stopped",
        }
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Works on one container and records the outcome.
    async fn reconcile(&self, c: Container) {
        let now = self.clock.now();
        let result = match c.desired {
            Desired::Deleted => self.remove(&c).await,
            Desired::Running | Desired::Stopped => self.ensure(&c).await,
        };
        let (progress_status, observed, error, attempts, next) = match &result {
            Ok(s) => (s.status, s.observed, None, 0, now + s.again_in),
            Err(e) => {
                let attempts = c.attempts + 1;
                let shift = u32::try_from(attempts.min(16)).unwrap_or(16);
                let base = i64::try_from(self.config.retry_base_secs.max(1)).unwrap_or(2);
                let max = i64::try_from(self.config.retry_max_secs.max(1)).unwrap_or(300);
                let auth = matches!(e, StepError::Proxmox(p) if p.kind() == ErrorKind::Auth);
                let delay = if auth { max } else { base.saturating_mul(1 << (shift - 1)).min(max) };
                // A resize not yet applied stays pending through errors.
                let status = if c.status == "resizing" { "resizing" } else { "error" };
                (status, "unknown", Some(e.to_string()), attempts, now + delay)
            }
        };
        if let Some(message) = &error {
            tracing::warn!(container = %c.name, error = %message, "provisioning step failed");
            if c.last_error.as_deref() != Some(message.as_str()) {
                self.event(&c.id, "error", message).await;
            }
        }
        if progress_status == "deleted" {
            return;
        }
        let progress =
            Progress { status: progress_status, observed, error: error.as_deref(), attempts, next_attempt: next };
        if let Err(e) = self.store.set_container_progress(&c.id, &progress, now).await {
            tracing::error!(container = %c.name, error = %e, "cannot record provisioning progress");
        }
        if progress_status != c.status && error.is_none() {
            self.event(&c.id, progress_status, &format!("now {progress_status}")).await;
        }
    }

    async fn event(&self, id: &str, kind: &str, message: &str) {
        if let Err(e) = self.store.container_event(id, self.clock.now(), kind, message).await {
            tracing::error!(error = %e, "cannot record a container event");
        }
    }

    /// Makes a container exist, with its power state as desired.
    async fn ensure(&self, c: &Container) -> Result<Standing, StepError> {
        let node = match &c.node {
            Some(n) => self.node(n).await?,
            None => {
                let node = self.place(c).await?;
                self.store.set_container_placement(&c.id, &node.name, None).await?;
                self.event(&c.id, "placed", &format!("on node {}", node.name)).await;
                node
            }
        };
        let client = self.client(&node)?;
        let mut current = c.clone();
        let Some(status) = self.find(&client, &node, &mut current).await? else {
            return self.create(&client, &node, &current).await;
        };
        let c = &current;
        let vmid = status.vmid;
        if status.lock.is_some() {
            return Ok(Standing { status: "creating", observed: "locked", again_in: 2 });
        }
        if c.status == "resizing" {
            self.resize(&client, &node, vmid, c).await?;
        }
        match (c.desired, status.is_running()) {
            (Desired::Running, false) => {
                if c.status == "ready" && c.observed == "running" {
                    self.event(&c.id, "drift", "stopped outside Portcullis").await;
                    if self.config.drift == DriftPolicy::Report {
                        return Ok(Standing { status: "drifted", observed: "stopped", again_in: 60 });
                    }
                }
                let upid = client.start(&node.name, vmid).await?;
                self.task(&client, c, "container.start", &upid).await?;
                self.event(&c.id, "started", &format!("CT {vmid} started")).await;
                Ok(Standing { status: "starting", observed: "running", again_in: 1 })
            }
            (Desired::Running, true) => self.check_network(&client, &node, vmid, c).await,
            (_, true) => {
                let upid = client.shutdown(&node.name, vmid).await?;
                self.task(&client, c, "container.shutdown", &upid).await?;
                self.event(&c.id, "stopped", &format!("CT {vmid} shut down")).await;
                Ok(Standing { status: "stopped", observed: "stopped", again_in: 0 })
            }
            (_, false) => Ok(Standing { status: "stopped", observed: "stopped", again_in: 0 }),
        }
    }

    /// The container's vmid on its node: the recorded one if the CT there
    /// carries our id, else any CT on the node tagged with our id (a create
    /// that finished after a crash). A recorded vmid held by someone else's
    /// CT is dropped.
    async fn find(
        &self,
        client: &ProxmoxClient,
        node: &Node,
        c: &mut Container,
    ) -> Result<Option<LxcStatus>, StepError> {
        let list = client.lxc_list(&node.name).await?;
        let id = c.id.clone();
        let ours = |ct: &LxcStatus| ct.tags().value(crate::proxmox::ID_TAG_PREFIX).as_deref() == Some(id.as_str());
        if let Some(vmid) = c.vmid.and_then(|v| u32::try_from(v).ok()) {
            match list.iter().find(|ct| ct.vmid == vmid) {
                Some(ct) if ours(ct) => return Ok(Some(ct.clone())),
                Some(_) => {
                    self.event(&c.id, "vmid", &format!("vmid {vmid} belongs to another container; choosing another"))
                        .await;
                    self.store.set_container_placement(&c.id, &node.name, None).await?;
                    c.vmid = None;
                }
                None => {}
            }
        }
        let tagged = list.into_iter().find(|ct| ours(ct));
        if let Some(ct) = &tagged
            && c.vmid != Some(i64::from(ct.vmid))
        {
            self.store.set_container_placement(&c.id, &node.name, Some(i64::from(ct.vmid))).await?;
            self.event(&c.id, "adopted", &format!("found CT {} carrying this container's id", ct.vmid)).await;
            c.vmid = Some(i64::from(ct.vmid));
        }
        Ok(tagged)
    }

    /// Creates the CT (not started: the next pass starts it).
    async fn create(&self, client: &ProxmoxClient, node: &Node, c: &Container) -> Result<Standing, StepError> {
        let existed = matches!(c.status.as_str(), "ready" | "stopped" | "drifted" | "starting");
        if existed && c.observed != "absent" {
            self.event(&c.id, "drift", "deleted outside Portcullis").await;
            if self.config.drift == DriftPolicy::Report {
                return Ok(Standing { status: "drifted", observed: "absent", again_in: 60 });
            }
        }
        let vmid = match c.vmid.and_then(|v| u32::try_from(v).ok()) {
            Some(v) => v,
            None => {
                // nextid reserves nothing: containers created at once get the
                // same answer. The first to record it keeps it; the others
                // take the next ids no container of ours holds.
                let mut candidate = client.next_id().await?;
                let mut attempts = 0;
                while !self.store.reserve_vmid(&c.id, &node.name, i64::from(candidate)).await? {
                    attempts += 1;
                    if attempts > 64 {
                        return Err(StepError::Other("no free vmid near /cluster/nextid's answer".into()));
                    }
                    candidate = candidate.saturating_add(1);
                }
                candidate
            }
        };
        // Recorded before the call: a crash from here on is found by vmid.
        self.store.set_container_placement(&c.id, &node.name, Some(i64::from(vmid))).await?;
        let spec = self.spec(node, c, vmid)?;
        let upid = match client.create_lxc(&node.name, &spec).await {
            Ok(upid) => upid,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                // Someone else took the id between nextid and create.
                self.store.set_container_placement(&c.id, &node.name, None).await?;
                self.event(&c.id, "vmid", &format!("{e}; choosing another id")).await;
                return Ok(Standing { status: "creating", observed: "absent", again_in: 0 });
            }
            Err(e) => return Err(e.into()),
        };
        self.event(&c.id, "creating", &format!("CT {vmid} on {} ({})", node.name, upid.as_str())).await;
        self.task(client, c, "container.create", &upid).await?;
        self.event(&c.id, "created", &format!("CT {vmid} created")).await;
        Ok(Standing { status: "creating", observed: "stopped", again_in: 0 })
    }

    /// Applies a new size: cores, memory and swap in the config (live for
    /// a running CT), the root disk grown (never shrunk).
    async fn resize(&self, client: &ProxmoxClient, node: &Node, vmid: u32, c: &Container) -> Result<(), StepError> {
        let config = client.lxc_config(&node.name, vmid).await?;
        let want = [("cores", c.size.cores), ("memory", c.size.memory_mb), ("swap", c.swap_mb)];
        let have = [config.cores(), config.memory_mib(), config.swap_mib()];
        let changes: Vec<(&str, String)> = want
            .iter()
            .zip(have)
            .filter(|((_, w), h)| u64::try_from(*w).ok() != *h)
            .map(|((k, w), _)| (*k, w.to_string()))
            .collect();
        if !changes.is_empty() {
            let params: Vec<(&str, &str)> = changes.iter().map(|(k, v)| (*k, v.as_str())).collect();
            client.update_lxc_config(&node.name, vmid, &params).await?;
        }
        let disk_bytes = config.rootfs().and_then(|r| r.size_bytes).unwrap_or(0);
        let want_bytes = u64::try_from(c.size.disk_gb).unwrap_or(0) << 30;
        if want_bytes > disk_bytes
            && let Some(upid) = client.resize(&node.name, vmid, "rootfs", &format!("{}G", c.size.disk_gb)).await?
        {
            self.task(client, c, "container.resize", &upid).await?;
        }
        let detail = format!("{} cores, {} MiB, {} GiB", c.size.cores, c.size.memory_mb, c.size.disk_gb);
        self.event(&c.id, "resized", &detail).await;
        Ok(())
    }

    /// Running: ready once eth0 has the reserved address.
    async fn check_network(
        &self,
        client: &ProxmoxClient,
        node: &Node,
        vmid: u32,
        c: &Container,
    ) -> Result<Standing, StepError> {
        let interfaces = client.interfaces(&node.name, vmid).await?.unwrap_or_default();
        let got = interfaces.iter().find(|i| i.name == "eth0").and_then(crate::proxmox::Interface::ipv4);
        // Adopted containers keep the addressing they had: running is ready.
        if c.ip.is_none() || (got.is_some() && got == c.ip) {
            return Ok(Standing { status: "ready", observed: "running", again_in: 0 });
        }
        if c.status == "starting" && c.updated_at + 120 < self.clock.now() {
            let want = c.ip.map_or_else(|| "?".to_string(), |ip| ip.to_string());
            let seen = got.map_or_else(|| "none".to_string(), |ip| ip.to_string());
            return Err(StepError::Other(format!("eth0 has address {seen}, expected {want} (is dnsmasq serving it?)")));
        }
        Ok(Standing { status: "starting", observed: "running", again_in: 2 })
    }

    /// Stops and deletes the CT, then marks the container deleted.
    async fn remove(&self, c: &Container) -> Result<Standing, StepError> {
        let gone = Standing { status: "deleted", observed: "absent", again_in: 0 };
        let (Some(node_name), Some(_)) = (&c.node, c.vmid) else {
            self.finish_delete(c).await?;
            return Ok(gone);
        };
        let node = self.node(node_name).await?;
        let client = self.client(&node)?;
        let mut current = c.clone();
        let Some(status) = self.find(&client, &node, &mut current).await? else {
            self.finish_delete(c).await?;
            return Ok(gone);
        };
        let vmid = status.vmid;
        if status.lock.is_some() {
            return Ok(Standing { status: "deleting", observed: "locked", again_in: 2 });
        }
        if status.is_running() {
            let upid = client.stop(&node.name, vmid).await?;
            self.task(&client, c, "container.stop", &upid).await?;
        }
        let upid = client.delete_lxc(&node.name, vmid).await?;
        self.task(&client, c, "container.destroy", &upid).await?;
        self.event(&c.id, "deleted", &format!("CT {vmid} deleted from {}", node.name)).await;
        self.finish_delete(c).await?;
        Ok(gone)
    }

    async fn finish_delete(&self, c: &Container) -> Result<(), StepError> {
        self.store.set_container_deleted(&c.id, self.clock.now()).await?;
        self.event(&c.id, "deleted", "released name, address and quota").await;
        self.write_dnsmasq().await;
        Ok(())
    }

    /// Waits for a Proxmox task and audits it: the action, the container,
    /// the task id and its result (Proxmox's text on failure).
    async fn task(&self, client: &ProxmoxClient, c: &Container, action: &str, upid: &Upid) -> Result<(), StepError> {
        let timeout = Duration::from_secs(self.config.task_timeout_secs.max(1));
        let result = client.wait_task(upid, timeout, Duration::from_millis(250)).await;
        let outcome = match &result {
            Ok(()) => "OK".to_string(),
            Err(e) => e.to_string(),
        };
        let detail = format!("{} task {}: {outcome}", upid.node(), upid.as_str());
        if let Err(e) =
            self.store.audit_event("reconciler", action, &c.name, "provision", &detail, self.clock.now()).await
        {
            tracing::error!(error = %e, "cannot write an audit row");
        }
        result.map_err(StepError::from)
    }

    /// The create parameters: size, template, MAC, DHCP, tags with our id
    /// and owner.
    fn spec(&self, node: &Node, c: &Container, vmid: u32) -> Result<CreateLxc, StepError> {
        let mut tags = crate::proxmox::Tags::new();
        let bad_tag = |e: crate::proxmox::InvalidTag| StepError::Other(e.to_string());
        tags.insert("portcullis").map_err(bad_tag)?;
        tags.set_value(crate::proxmox::ID_TAG_PREFIX, &c.id).map_err(bad_tag)?;
        let owner = match &c.owner {
            Owner::User(id) | Owner::Group(id) => id.as_str(),
            Owner::None => "none",
        };
        tags.set_value(crate::proxmox::OWNER_TAG_PREFIX, owner).map_err(bad_tag)?;
        let features = crate::proxmox::Features {
            nesting: c.features.iter().any(|f| f == "nesting"),
            keyctl: c.features.iter().any(|f| f == "keyctl"),
            fuse: c.features.iter().any(|f| f == "fuse"),
        };
        let net = crate::proxmox::Net {
            name: "eth0".into(),
            bridge: Some(node.bridge.clone()),
            hwaddr: c.mac.clone(),
            ip: Some(crate::proxmox::NetIp::Dhcp),
            gw: None,
            firewall: None,
            vlan: None,
            other: Vec::new(),
        };
        Ok(CreateLxc {
            vmid,
            ostemplate: c.template.clone().unwrap_or_else(|| node.template.clone()),
            hostname: Some(c.name.clone()),
            cores: u32::try_from(c.size.cores).ok(),
            memory_mib: u64::try_from(c.size.memory_mb).ok(),
            swap_mib: u64::try_from(c.swap_mb).ok(),
            rootfs: Some(crate::proxmox::RootFs {
                storage: node.storage.clone(),
                size_gib: u32::try_from(c.size.disk_gb).unwrap_or(8),
            }),
            net0: Some(net),
            tags,
            unprivileged: Some(true),
            features: Some(features),
            start: Some(false),
            description: Some(format!("Managed by Portcullis (container {}). Changes here may be reverted.", c.id)),
            ..CreateLxc::default()
        })
    }

    /// Picks the enabled node of the container's site with the most free
    /// memory (by what Portcullis placed there) that allows its features
    /// and still fits it; never one that does not fit.
    async fn place(&self, c: &Container) -> Result<Node, StepError> {
        let nodes = self.store.nodes().await?;
        let placed = self.store.containers(false).await?;
        let mut best: Option<(i64, Node)> = None;
        for node in nodes.into_iter().filter(|n| n.enabled && n.site == c.site) {
            if !c.features.iter().all(|f| node.features.contains(f)) {
                continue;
            }
            let used = placed
                .iter()
                .filter(|p| p.node.as_deref() == Some(node.name.as_str()) && p.id != c.id)
                .fold(super::model::Resources::default(), |acc, p| acc.plus(p.size));
            let after = used.plus(c.size);
            if after.first_excess(&node.capacity).is_some() {
                continue;
            }
            let free = node.capacity.memory_mb - after.memory_mb;
            if best.as_ref().is_none_or(|(f, _)| free > *f) {
                best = Some((free, node));
            }
        }
        best.map(|(_, n)| n).ok_or_else(|| {
            StepError::Other(format!(
                "no node of site {} has room for {} cores, {} MiB, {} GiB with features [{}]",
                c.site,
                c.size.cores,
                c.size.memory_mb,
                c.size.disk_gb,
                c.features.join(",")
            ))
        })
    }

    async fn node(&self, name: &str) -> Result<Node, StepError> {
        self.store
            .nodes()
            .await?
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| StepError::Other(format!("node {name:?} is no longer registered")))
    }

    /// The node's API client, built once per endpoint configuration.
    fn client(&self, node: &Node) -> Result<ProxmoxClient, StepError> {
        let key = format!("{}|{}|{:?}|{:?}", node.api_url, node.token_id, node.tls_fingerprint, node.tls_ca);
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((k, client)) = clients.get(&node.name)
            && *k == key
        {
            return Ok(client.clone());
        }
        let secret = self
            .sealer
            .open(&node.token_secret_sealed)
            .map_err(|e| StepError::Other(format!("cannot open node {}'s token: {e:#}", node.name)))?;
        let tls = match (&node.tls_fingerprint, &node.tls_ca) {
            (Some(fp), _) => TlsTrust::Fingerprint(fp.clone()),
            (None, Some(ca)) => TlsTrust::CaPem(ca.clone()),
            (None, None) => TlsTrust::System,
        };
        let endpoint = Endpoint {
            base_url: node.api_url.clone(),
            token_id: node.token_id.clone(),
            token_secret: String::from_utf8_lossy(&secret).into_owned(),
            tls,
        };
        let client = ProxmoxClient::new(&endpoint)?;
        clients.insert(node.name.clone(), (key, client.clone()));
        Ok(client)
    }

    /// Writes the local dnsmasq's reservation files for its site from the
    /// live containers (unchanged files are left alone).
    async fn write_dnsmasq(&self) {
        let d = &self.config.dnsmasq;
        let (Some(site_name), Some(hosts), Some(dhcp)) = (&d.site, &d.hosts_dir, &d.dhcp_hosts_dir) else { return };
        let (sites, containers) = match (self.store.sites().await, self.store.containers(false).await) {
            (Ok(s), Ok(c)) => (s, c),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot read containers for dnsmasq");
                return;
            }
        };
        let Some(site) = sites.iter().find(|s| &s.name == site_name) else {
            tracing::warn!(site = %site_name, "provision.dnsmasq.site names no site");
            return;
        };
        let wanted: Vec<crate::dnsmasq::Reservation> = containers
            .iter()
            .filter(|c| c.site == site.name && c.desired != Desired::Deleted)
            .filter_map(|c| {
                Some(crate::dnsmasq::Reservation {
                    container_id: c.id.clone(),
                    mac: c.mac.as_deref()?.parse().ok()?,
                    ip: c.ip?,
                    hostname: c.name.clone(),
                })
            })
            .collect();
        let files = match crate::dnsmasq::DnsmasqFiles::new(hosts, dhcp, &site.domain) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "dnsmasq directories unusable");
                return;
            }
        };
        match tokio::task::spawn_blocking(move || files.apply(&wanted)).await {
            Ok(Ok(report)) if report.changed() => {
                tracing::info!(?report, "dnsmasq reservations updated");
                if report.dhcp_reload_needed {
                    self.reload_dnsmasq().await;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot write dnsmasq reservations"),
            Err(e) => tracing::error!(error = %e, "dnsmasq writer failed"),
        }
    }

    /// Runs `provision.dnsmasq.reload_command` (bounded to 30 s).
    async fn reload_dnsmasq(&self) {
        let Some((program, args)) = self.config.dnsmasq.reload_command.split_first() else {
            tracing::warn!("dnsmasq must re-read changed leases (SIGHUP); set provision.dnsmasq.reload_command");
            return;
        };
        let run = tokio::process::Command::new(program).args(args).kill_on_drop(true).status();
        match tokio::time::timeout(Duration::from_secs(30), run).await {
            Ok(Ok(status)) if status.success() => tracing::info!("dnsmasq reloaded"),
            Ok(Ok(status)) => tracing::error!(%status, "dnsmasq reload command failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "cannot run the dnsmasq reload command"),
            Err(_) => tracing::error!("dnsmasq reload command timed out"),
        }
    }
}
