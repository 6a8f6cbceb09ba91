//! Store access for provisioning: sites, nodes, plans, entitlements,
//! quotas, containers, their events and over-quota requests.
//!
//! Desired state changes (a new container, an entitlement lost, a quota
//! reservation) happen in a [`WriteTx`], so a quota check and the row it
//! admits commit together and concurrent requests cannot overrun a quota
//! (every write transaction takes SQLite's write lock first). The
//! reconciler's own bookkeeping (status, observed state, errors, events) goes
//! through single statements on the pool instead: it is not directory data
//! and must not make every server rebuild its directory snapshot.

use std::net::Ipv4Addr;

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{Store, StoreError, StoreResult, WriteTx};
use crate::model::Actor;
use crate::provision::model::{
    Container, ContainerEvent, ContainerRequest, Desired, Entitlement, Node, Owner, Plan, Resources, Site, label_of,
    split_list, validate_container_name,
};

const CONTAINER_COLUMNS: &str = "id, name, owner_kind, owner_id, origin, entitlement, plan, cores, memory_mb, \
     swap_mb, disk_gb, features, template, site, node, vmid, mac, ip, desired, status, observed, over_quota, \
     delete_after, last_error, attempts, next_attempt, created_at, updated_at";

fn container_from_row(r: &SqliteRow) -> Container {
    Container {
        id: r.get("id"),
        name: r.get("name"),
        owner: Owner::from_parts(&r.get::<String, _>("owner_kind"), r.get("owner_id")),
        origin: r.get("origin"),
        entitlement: r.get("entitlement"),
        plan: r.get("plan"),
        size: Resources {
            containers: 1,
            cores: r.get("cores"),
            memory_mb: r.get("memory_mb"),
            disk_gb: r.get("disk_gb"),
        },
        swap_mb: r.get("swap_mb"),
        features: split_list(&r.get::<String, _>("features")),
        template: r.get("template"),
        site: r.get("site"),
        node: r.get("node"),
        vmid: r.get("vmid"),
        mac: r.get("mac"),
        ip: r.get::<Option<String>, _>("ip").and_then(|s| s.parse().ok()),
        desired: Desired::parse(&r.get::<String, _>("desired")),
        status: r.get("status"),
        observed: r.get("observed"),
        over_quota: r.get("over_quota"),
        delete_after: r.get("delete_after"),
        last_error: r.get("last_error"),
        attempts: r.get("attempts"),
        next_attempt: r.get("next_attempt"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

fn site_from_row(r: &SqliteRow) -> Option<Site> {
    Some(Site {
        name: r.get("name"),
        subnet: r.get::<String, _>("subnet").parse().ok()?,
        gateway: r.get::<String, _>("gateway").parse().ok()?,
        domain: r.get("domain"),
        range_start: r.get::<String, _>("range_start").parse().ok()?,
        range_end: r.get::<String, _>("range_end").parse().ok()?,
    })
}

fn node_from_row(r: &SqliteRow) -> Node {
    Node {
        name: r.get("name"),
        site: r.get("site"),
        api_url: r.get("api_url"),
        token_id: r.get("token_id"),
        token_secret_sealed: r.get("token_secret"),
        tls_fingerprint: r.get("tls_fingerprint"),
        tls_ca: r.get("tls_ca"),
        storage: r.get("storage"),
        bridge: r.get("bridge"),
        template: r.get("template"),
        features: split_list(&r.get::<String, _>("features")),
        capacity: Resources {
            containers: i64::MAX,
            cores: r.get("cores"),
            memory_mb: r.get("memory_mb"),
            disk_gb: r.get("disk_gb"),
        },
        enabled: r.get("enabled"),
        last_seen_at: r.get("last_seen_at"),
        last_error: r.get("last_error"),
    }
}

fn plan_from_row(r: &SqliteRow) -> Plan {
    Plan {
        name: r.get("name"),
        cores: r.get("cores"),
        memory_mb: r.get("memory_mb"),
        swap_mb: r.get("swap_mb"),
        disk_gb: r.get("disk_gb"),
        features: split_list(&r.get::<String, _>("features")),
        template: r.get("template"),
        description: r.get("description"),
    }
}

/// A quota check that failed: which limit, in use, requested, allowed, and
/// by how much it is over.
fn quota_error(who: &str, used: Resources, add: Resources, limit: &Resources) -> Option<String> {
    let (name, total, allowed, unit) = used.plus(add).first_excess(limit)?;
    let requested = match name {
        "containers" => add.containers,
        "cores" => add.cores,
        "memory" => add.memory_mb,
        _ => add.disk_gb,
    };
    Some(format!(
        "quota exceeded for {who}: {name} would be {total}{unit} ({} in use + {requested} requested) but {allowed}{unit} \
         are allowed, over by {}{unit}",
        total - requested,
        total - allowed
    ))
}

/// A subject's quota (its own row, else the policy's default) and what its
/// live containers use.
async fn quota_and_usage(
    conn: &mut sqlx::SqliteConnection,
    policy: &crate::provision::Policy,
    kind: &str,
    id: &str,
) -> StoreResult<(Resources, Resources)> {
    let row = sqlx::query(
        "SELECT containers, cores, memory_mb, disk_gb FROM quotas WHERE subject_kind = ? AND subject_id = ?",
    )
    .bind(kind)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let limit = match row {
        Some(r) => Resources { containers: r.get(0), cores: r.get(1), memory_mb: r.get(2), disk_gb: r.get(3) },
        None if kind == "group" => policy.default_group_quota,
        None => policy.default_user_quota,
    };
    let r = sqlx::query(
        "SELECT COUNT(*), COALESCE(SUM(cores), 0), COALESCE(SUM(memory_mb), 0), COALESCE(SUM(disk_gb), 0) \
         FROM containers WHERE owner_kind = ? AND owner_id = ? AND desired <> 'deleted' AND status <> 'deleted'",
    )
    .bind(kind)
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    let used = Resources { containers: r.get(0), cores: r.get(1), memory_mb: r.get(2), disk_gb: r.get(3) };
    Ok((limit, used))
}

/// A container found on a node that is being registered.
#[derive(Debug, Clone)]
pub struct Adopted {
    pub node: String,
    pub site: String,
    pub vmid: i64,
    pub hostname: String,
    pub size: Resources,
    pub swap_mb: i64,
    pub mac: Option<String>,
    pub running: bool,
}

/// What a new container needs.
#[derive(Debug, Clone)]
pub struct NewContainer {
    pub name: String,
    pub owner: Owner,
    pub origin: &'static str,
    pub entitlement: Option<String>,
    pub plan: Plan,
    /// `None` = the only (or first) site.
    pub site: Option<String>,
}

impl Store {
    /// A user's or group's (by name) quota and usage: (limit, used).
    ///
    /// # Errors
    /// Unknown user or group; database errors.
    pub async fn quota_of(&self, kind: &str, name: &str) -> StoreResult<(Resources, Resources)> {
        let sql = match kind {
            "user" => "SELECT id FROM users WHERE name = ?",
            "group" => "SELECT id FROM groups WHERE name = ?",
            _ => return Err(StoreError::Invalid(format!("quota subject must be user or group, not {kind:?}"))),
        };
        let mut conn = self.pool().acquire().await?;
        let row = sqlx::query(sql).bind(name).fetch_optional(&mut *conn).await?;
        let Some(row) = row else { return Err(StoreError::Invalid(format!("{kind} {name:?} does not exist"))) };
        let id: String = row.get(0);
        quota_and_usage(&mut conn, &self.policy, kind, &id).await
    }

    /// Every site.
    ///
    /// # Errors
    /// Database errors.
    pub async fn sites(&self) -> StoreResult<Vec<Site>> {
        let rows = sqlx::query("SELECT * FROM sites ORDER BY name").fetch_all(self.pool()).await?;
        Ok(rows.iter().filter_map(site_from_row).collect())
    }

    /// Every node.
    ///
    /// # Errors
    /// Database errors.
    pub async fn nodes(&self) -> StoreResult<Vec<Node>> {
        let rows = sqlx::query("SELECT * FROM pve_nodes ORDER BY name").fetch_all(self.pool()).await?;
        Ok(rows.iter().map(node_from_row).collect())
    }

    /// Every plan.
    ///
    /// # Errors
    /// Database errors.
    pub async fn plans(&self) -> StoreResult<Vec<Plan>> {
        let rows = sqlx::query("SELECT * FROM plans ORDER BY cores, memory_mb, name").fetch_all(self.pool()).await?;
        Ok(rows.iter().map(plan_from_row).collect())
    }

    /// Every entitlement.
    ///
    /// # Errors
    /// Database errors.
    pub async fn entitlements(&self) -> StoreResult<Vec<Entitlement>> {
        let rows = sqlx::query("SELECT group_name, plan, shared FROM entitlements ORDER BY group_name, plan")
            .fetch_all(self.pool())
            .await?;
        Ok(rows.iter().map(|r| Entitlement { group: r.get(0), plan: r.get(1), shared: r.get(2) }).collect())
    }

    /// Containers, newest first; deleted ones only with `include_deleted`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn containers(&self, include_deleted: bool) -> StoreResult<Vec<Container>> {
        let filter = if include_deleted { "" } else { "WHERE status <> 'deleted'" };
        let rows = sqlx::query(&format!("SELECT {CONTAINER_COLUMNS} FROM containers {filter} ORDER BY name"))
            .fetch_all(self.pool())
            .await?;
        Ok(rows.iter().map(container_from_row).collect())
    }

    /// A live container by name, or any container by id.
    ///
    /// # Errors
    /// Database errors.
    pub async fn container(&self, name_or_id: &str) -> StoreResult<Option<Container>> {
        let row = sqlx::query(&format!(
            "SELECT {CONTAINER_COLUMNS} FROM containers WHERE (name = ? AND status <> 'deleted') OR id = ? LIMIT 1"
        ))
        .bind(name_or_id)
        .bind(name_or_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(container_from_row))
    }

    /// A container's history, oldest first (the last `limit` events).
    ///
    /// # Errors
    /// Database errors.
    pub async fn container_events(&self, id: &str, limit: i64) -> StoreResult<Vec<ContainerEvent>> {
        let rows = sqlx::query(
            "SELECT at, kind, message FROM (SELECT id, at, kind, message FROM container_events \
             WHERE container_id = ? ORDER BY id DESC LIMIT ?) ORDER BY id",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(|r| ContainerEvent { at: r.get(0), kind: r.get(1), message: r.get(2) }).collect())
    }

    /// Requests with `status` (pending, approved, declined), oldest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn container_requests(&self, status: &str) -> StoreResult<Vec<ContainerRequest>> {
        let rows = sqlx::query(
            "SELECT r.id, u.name, r.name, r.plan, r.reason, r.status, r.created_at, r.kind FROM container_requests r \
             JOIN users u ON u.id = r.user_id WHERE r.status = ? ORDER BY r.created_at, r.id",
        )
        .bind(status)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| ContainerRequest {
                id: r.get(0),
                user: r.get(1),
                name: r.get(2),
                plan: r.get(3),
                reason: r.get(4),
                status: r.get(5),
                created_at: r.get(6),
                kind: r.get(7),
            })
            .collect())
    }

    /// Appends an event to a container's history.
    ///
    /// # Errors
    /// Database errors.
    pub async fn container_event(&self, id: &str, now: i64, kind: &str, message: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO container_events (id, container_id, at, kind, message) VALUES (?, ?, ?, ?, ?)")
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(id)
            .bind(now)
            .bind(kind)
            .bind(message)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Records what the reconciler saw and did: status, observed state, the
    /// last error (cleared on success) and when to look again.
    ///
    /// # Errors
    /// Database errors.
    pub async fn set_container_progress(&self, id: &str, progress: &Progress<'_>, now: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE containers SET status = ?, observed = ?, last_error = ?, attempts = ?, next_attempt = ?, \
             updated_at = ? WHERE id = ?",
        )
        .bind(progress.status)
        .bind(progress.observed)
        .bind(progress.error)
        .bind(progress.attempts)
        .bind(progress.next_attempt)
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records the node and vmid chosen for a container *before* the create
    /// call, so a crash in between finds it again (by vmid and tag).
    ///
    /// # Errors
    /// Database errors, or the vmid taken by another container on that node.
    pub async fn set_container_placement(&self, id: &str, node: &str, vmid: Option<i64>) -> StoreResult<()> {
        sqlx::query("UPDATE containers SET node = ?, vmid = ? WHERE id = ?")
            .bind(node)
            .bind(vmid)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Records `vmid` on `node` for a container before its create call,
    /// unless another container already holds it (the unique index is the
    /// reservation: concurrent creates that got the same `/cluster/nextid`
    /// answer cannot both take it). Returns whether it was taken.
    ///
    /// # Errors
    /// Database errors.
    pub async fn reserve_vmid(&self, id: &str, node: &str, vmid: i64) -> StoreResult<bool> {
        let result = sqlx::query("UPDATE containers SET node = ?, vmid = ? WHERE id = ?")
            .bind(node)
            .bind(vmid)
            .bind(id)
            .execute(self.pool())
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Marks a container deleted: it keeps its history, and releases its
    /// name, address, MAC and vmid.
    ///
    /// # Errors
    /// Database errors.
    pub async fn set_container_deleted(&self, id: &str, now: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE containers SET status = 'deleted', observed = 'absent', desired = 'deleted', ip = NULL, \
             mac = NULL, vmid = NULL, last_error = NULL, updated_at = ? WHERE id = ?",
        )
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records a node's health after talking to it.
    ///
    /// # Errors
    /// Database errors.
    pub async fn set_node_health(&self, node: &str, now: i64, error: Option<&str>) -> StoreResult<()> {
        let query = match error {
            None => sqlx::query("UPDATE pve_nodes SET last_error = NULL, last_seen_at = ? WHERE name = ?").bind(now),
            Some(e) => sqlx::query("UPDATE pve_nodes SET last_error = ? WHERE name = ?").bind(e),
        };
        query.bind(node).execute(self.pool()).await?;
        Ok(())
    }

    /// Starts the grace-period deletions that are due: containers whose
    /// `delete_after` passed get `desired = deleted`. Returns their names.
    ///
    /// # Errors
    /// Database errors.
    pub async fn expire_grace_periods(&self, now: i64) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "UPDATE containers SET desired = 'deleted', next_attempt = 0, updated_at = ? \
             WHERE delete_after IS NOT NULL AND delete_after <= ? AND desired <> 'deleted' RETURNING id, name",
        )
        .bind(now)
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        for r in &rows {
            let id: String = r.get(0);
            self.container_event(&id, now, "desired", "grace period over: deleting").await?;
        }
        Ok(rows.iter().map(|r| r.get(1)).collect())
    }
}

/// What the reconciler records after a pass over one container.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    pub status: &'a str,
    pub observed: &'a str,
    pub error: Option<&'a str>,
    pub attempts: i64,
    pub next_attempt: i64,
}

impl WriteTx {
    /// Adds a site.
    ///
    /// # Errors
    /// A bad name, range outside the subnet, or a duplicate.
    pub async fn add_site(&mut self, site: &Site, actor: &Actor) -> StoreResult<()> {
        validate_container_name(&site.name).map_err(|e| StoreError::Invalid(e.replace("container", "site")))?;
        let net = crate::dnsmasq::SiteNet {
            subnet: site.subnet,
            gateway: site.gateway,
            range_start: site.range_start,
            range_end: site.range_end,
            domain: site.domain.clone(),
        };
        net.validate().map_err(|e| StoreError::Invalid(e.to_string()))?;
        let done = sqlx::query(
            "INSERT INTO sites (name, subnet, gateway, domain, range_start, range_end, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&site.name)
        .bind(site.subnet.to_string())
        .bind(site.gateway.to_string())
        .bind(&site.domain)
        .bind(site.range_start.to_string())
        .bind(site.range_end.to_string())
        .bind(self.now())
        .execute(self.conn())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Invalid(format!("site {:?} already exists", site.name)));
        }
        self.audit(actor, "site.add", &site.name, &site.subnet.to_string()).await
    }

    /// Registers a node (its token secret already sealed).
    ///
    /// # Errors
    /// Unknown site, bad values, or a duplicate.
    pub async fn add_node(&mut self, node: &Node, actor: &Actor) -> StoreResult<()> {
        validate_container_name(&node.name).map_err(|e| StoreError::Invalid(e.replace("container", "node")))?;
        if !(node.api_url.starts_with("https://") || node.api_url.starts_with("http://")) {
            return Err(StoreError::Invalid(format!("node API URL {:?} must be http(s)://host:port", node.api_url)));
        }
        let site =
            sqlx::query("SELECT 1 FROM sites WHERE name = ?").bind(&node.site).fetch_optional(self.conn()).await?;
        if site.is_none() {
            return Err(StoreError::Invalid(format!("site {:?} does not exist", node.site)));
        }
        let done = sqlx::query(
            "INSERT INTO pve_nodes (name, site, api_url, token_id, token_secret, tls_fingerprint, tls_ca, storage, \
             bridge, template, features, cores, memory_mb, disk_gb, enabled, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&node.name)
        .bind(&node.site)
        .bind(&node.api_url)
        .bind(&node.token_id)
        .bind(&node.token_secret_sealed)
        .bind(&node.tls_fingerprint)
        .bind(&node.tls_ca)
        .bind(&node.storage)
        .bind(&node.bridge)
        .bind(&node.template)
        .bind(node.features.join(","))
        .bind(node.capacity.cores)
        .bind(node.capacity.memory_mb)
        .bind(node.capacity.disk_gb)
        .bind(node.enabled)
        .bind(self.now())
        .execute(self.conn())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Invalid(format!("node {:?} already exists", node.name)));
        }
        self.audit(actor, "node.add", &node.name, &node.api_url).await
    }

    /// Adds a plan.
    ///
    /// # Errors
    /// A bad name or size, or a duplicate.
    pub async fn add_plan(&mut self, plan: &Plan, actor: &Actor) -> StoreResult<()> {
        validate_container_name(&plan.name).map_err(|e| StoreError::Invalid(e.replace("container", "plan")))?;
        let done = sqlx::query(
            "INSERT INTO plans (name, cores, memory_mb, swap_mb, disk_gb, features, template, description, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&plan.name)
        .bind(plan.cores)
        .bind(plan.memory_mb)
        .bind(plan.swap_mb)
        .bind(plan.disk_gb)
        .bind(plan.features.join(","))
        .bind(&plan.template)
        .bind(&plan.description)
        .bind(self.now())
        .execute(self.conn())
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.message().contains("CHECK") => StoreError::Invalid(
                "plan sizes: 1-128 cores, 64 MiB-1 TiB memory, 0-1 TiB swap, 1-65536 GiB disk".to_string(),
            ),
            e => StoreError::Db(e),
        })?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Invalid(format!("plan {:?} already exists", plan.name)));
        }
        self.audit(actor, "plan.add", &plan.name, "").await
    }

    /// Entitles members of `group` to a container of `plan` (each, or one
    /// shared); the containers follow in this same transaction.
    ///
    /// # Errors
    /// Unknown group or plan, or a duplicate.
    pub async fn add_entitlement(&mut self, e: &Entitlement, actor: &Actor) -> StoreResult<()> {
        self.plan(&e.plan).await?;
        self.group_id(&e.group).await?;
        let done = sqlx::query(
            "INSERT INTO entitlements (group_name, plan, shared, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&e.group)
        .bind(&e.plan)
        .bind(e.shared)
        .bind(self.now())
        .execute(self.conn())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Invalid(format!("group {:?} is already entitled to plan {:?}", e.group, e.plan)));
        }
        self.entitlements_dirty = true;
        let how = if e.shared { "shared" } else { "per member" };
        self.audit(actor, "entitlement.add", &e.group, &format!("{} {how}", e.plan)).await
    }

    /// Removes an entitlement; its containers get the grace period.
    ///
    /// # Errors
    /// No such entitlement.
    pub async fn remove_entitlement(&mut self, group: &str, plan: &str, actor: &Actor) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM entitlements WHERE group_name = ? AND plan = ?")
            .bind(group)
            .bind(plan)
            .execute(self.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Invalid(format!("group {group:?} is not entitled to plan {plan:?}")));
        }
        self.entitlements_dirty = true;
        self.audit(actor, "entitlement.remove", group, plan).await
    }

    /// Sets a user's or group's quota (an admin override of the default).
    /// Lowering it destroys nothing: containers beyond it are flagged
    /// over-quota for an admin to resolve.
    ///
    /// # Errors
    /// Unknown user or group, or negative limits.
    pub async fn set_quota(&mut self, kind: &str, name: &str, limit: Resources, actor: &Actor) -> StoreResult<()> {
        let id = match kind {
            "user" => self.user_id(name).await?,
            "group" => self.group_id(name).await?,
            _ => return Err(StoreError::Invalid(format!("quota subject must be user or group, not {kind:?}"))),
        };
        if limit.containers < 0 || limit.cores < 0 || limit.memory_mb < 0 || limit.disk_gb < 0 {
            return Err(StoreError::Invalid("quota limits cannot be negative".to_string()));
        }
        sqlx::query(
            "INSERT INTO quotas (subject_kind, subject_id, containers, cores, memory_mb, disk_gb, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (subject_kind, subject_id) DO UPDATE SET \
             containers = excluded.containers, cores = excluded.cores, memory_mb = excluded.memory_mb, \
             disk_gb = excluded.disk_gb, updated_at = excluded.updated_at",
        )
        .bind(kind)
        .bind(&id)
        .bind(limit.containers)
        .bind(limit.cores)
        .bind(limit.memory_mb)
        .bind(limit.disk_gb)
        .bind(self.now())
        .execute(self.conn())
        .await?;
        self.flag_over_quota(kind, &id).await?;
        let detail = format!(
            "containers={} cores={} memory_mb={} disk_gb={}",
            limit.containers, limit.cores, limit.memory_mb, limit.disk_gb
        );
        self.audit(actor, "quota.set", &format!("{kind}:{name}"), &detail).await
    }

    /// A user's or group's quota and usage: (limit, used).
    ///
    /// # Errors
    /// Database errors.
    pub async fn quota_and_usage(&mut self, kind: &str, id: &str) -> StoreResult<(Resources, Resources)> {
        let policy = std::sync::Arc::clone(&self.policy);
        quota_and_usage(self.conn(), &policy, kind, id).await
    }

    /// Flags (or clears) over-quota on a subject's containers, newest first
    /// beyond the limit.
    async fn flag_over_quota(&mut self, kind: &str, id: &str) -> StoreResult<()> {
        let (limit, _) = self.quota_and_usage(kind, id).await?;
        let rows = sqlx::query(
            "SELECT id, cores, memory_mb, disk_gb, over_quota FROM containers WHERE owner_kind = ? AND owner_id = ? \
             AND desired <> 'deleted' AND status <> 'deleted' ORDER BY created_at, id",
        )
        .bind(kind)
        .bind(id)
        .fetch_all(self.conn())
        .await?;
        let mut sum = Resources::default();
        for r in rows {
            let size = Resources { containers: 1, cores: r.get(1), memory_mb: r.get(2), disk_gb: r.get(3) };
            sum = sum.plus(size);
            let over = sum.first_excess(&limit).is_some();
            let (cid, was): (String, bool) = (r.get(0), r.get(4));
            if over != was {
                sqlx::query("UPDATE containers SET over_quota = ? WHERE id = ?")
                    .bind(over)
                    .bind(&cid)
                    .execute(self.conn())
                    .await?;
                let message = if over {
                    "over quota after a quota change: kept running; an admin decides (container delete)"
                } else {
                    "within quota again"
                };
                self.event(&cid, "quota", message).await?;
            }
        }
        Ok(())
    }

    /// Records a new container's desired state after checking the owner's
    /// quota, in this transaction: the check and the reservation commit
    /// together. Allocates its MAC and IP address from its site's range.
    ///
    /// # Errors
    /// Over quota (the message says which limit and by how much), a taken
    /// name, no site, or the site's range exhausted.
    pub async fn add_container(&mut self, new: &NewContainer, actor: &Actor) -> StoreResult<Container> {
        validate_container_name(&new.name).map_err(StoreError::Invalid)?;
        let taken = sqlx::query("SELECT 1 FROM containers WHERE name = ? AND status <> 'deleted'")
            .bind(&new.name)
            .fetch_optional(self.conn())
            .await?;
        if taken.is_some() {
            return Err(StoreError::Invalid(format!("container name {:?} is taken", new.name)));
        }
        if let (kind, Some(id)) = new.owner.parts() {
            let (limit, used) = self.quota_and_usage(kind, id).await?;
            let who = format!("{kind} {}", self.subject_name(kind, id).await?);
            if let Some(message) = quota_error(&who, used, new.plan.resources(), &limit) {
                return Err(StoreError::Invalid(message));
            }
        }
        let site = self.site_for(new.site.as_deref()).await?;
        let ip = self.free_ip(&site).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let mac = crate::dnsmasq::MacAddr::local_from(id.as_bytes()).to_string();
        let (owner_kind, owner_id) = new.owner.parts();
        let now = self.now();
        let row = sqlx::query(&format!(
            "INSERT INTO containers (id, name, owner_kind, owner_id, origin, entitlement, plan, cores, memory_mb, \
             swap_mb, disk_gb, features, template, site, mac, ip, desired, status, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', 'pending', ?, ?) \
             RETURNING {CONTAINER_COLUMNS}"
        ))
        .bind(&id)
        .bind(&new.name)
        .bind(owner_kind)
        .bind(owner_id)
        .bind(new.origin)
        .bind(&new.entitlement)
        .bind(&new.plan.name)
        .bind(new.plan.cores)
        .bind(new.plan.memory_mb)
        .bind(new.plan.swap_mb)
        .bind(new.plan.disk_gb)
        .bind(new.plan.features.join(","))
        .bind(&new.plan.template)
        .bind(&site.name)
        .bind(&mac)
        .bind(ip.to_string())
        .bind(now)
        .bind(now)
        .fetch_one(self.conn())
        .await?;
        let container = container_from_row(&row);
        let why = match &new.entitlement {
            Some(group) => format!("entitled through group {group}"),
            None => format!("{} by {}", new.origin, actor.name),
        };
        self.event(&id, "desired", &format!("{} {} at {ip} ({why})", new.plan.name, new.name)).await?;
        self.audit(actor, "container.add", &new.name, &why).await?;
        Ok(container)
    }

    /// Records a container found on a node being registered: owner none
    /// (an admin assigns one), its size as configured, its power state as
    /// observed; the caller tags the CT with the returned container's id so
    /// the reconciler recognises it.
    ///
    /// # Errors
    /// A name no valid or free label can be made from; database errors.
    pub async fn adopt_container(&mut self, found: &Adopted, actor: &Actor) -> StoreResult<Container> {
        let name = self.free_name(&label_of(&found.hostname)).await?;
        validate_container_name(&name).map_err(StoreError::Invalid)?;
        let id = uuid::Uuid::new_v4().to_string();
        let now = self.now();
        let desired = if found.running { "running" } else { "stopped" };
        let status = if found.running { "starting" } else { "stopped" };
        let row = sqlx::query(&format!(
            "INSERT INTO containers (id, name, owner_kind, owner_id, origin, plan, cores, memory_mb, swap_mb, disk_gb, \
             site, node, vmid, mac, desired, status, observed, created_at, updated_at) \
             VALUES (?, ?, 'none', NULL, 'adopted', 'adopted', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             RETURNING {CONTAINER_COLUMNS}"
        ))
        .bind(&id)
        .bind(&name)
        .bind(found.size.cores)
        .bind(found.size.memory_mb)
        .bind(found.swap_mb)
        .bind(found.size.disk_gb)
        .bind(&found.site)
        .bind(&found.node)
        .bind(found.vmid)
        .bind(&found.mac)
        .bind(desired)
        .bind(status)
        .bind(if found.running { "running" } else { "stopped" })
        .bind(now)
        .bind(now)
        .fetch_one(self.conn())
        .await?;
        let detail = format!("CT {} on {} adopted, waiting for an owner", found.vmid, found.node);
        self.event(&id, "adopted", &detail).await?;
        self.audit(actor, "container.adopt", &name, &detail).await?;
        Ok(container_from_row(&row))
    }

    /// Gives a container an owner (a user, or a group for a shared one);
    /// the new owner's quota must hold it.
    ///
    /// # Errors
    /// Unknown container, user or group; over quota.
    pub async fn assign_container(&mut self, name: &str, kind: &str, owner: &str, actor: &Actor) -> StoreResult<()> {
        let owner_id = match kind {
            "user" => self.user_id(owner).await?,
            "group" => self.group_id(owner).await?,
            _ => return Err(StoreError::Invalid(format!("owner kind must be user or group, not {kind:?}"))),
        };
        let row =
            sqlx::query("SELECT cores, memory_mb, disk_gb FROM containers WHERE name = ? AND status <> 'deleted'")
                .bind(name)
                .fetch_optional(self.conn())
                .await?;
        let Some(row) = row else { return Err(StoreError::Invalid(format!("container {name:?} does not exist"))) };
        let size = Resources { containers: 1, cores: row.get(0), memory_mb: row.get(1), disk_gb: row.get(2) };
        let (limit, used) = self.quota_and_usage(kind, &owner_id).await?;
        if let Some(message) = quota_error(&format!("{kind} {owner}"), used, size, &limit) {
            return Err(StoreError::Invalid(message));
        }
        sqlx::query(
            "UPDATE containers SET owner_kind = ?, owner_id = ?, updated_at = ? WHERE name = ? AND status <> 'deleted'",
        )
        .bind(kind)
        .bind(&owner_id)
        .bind(self.now())
        .bind(name)
        .execute(self.conn())
        .await?;
        self.audit(actor, "container.assign", name, &format!("{kind} {owner}")).await
    }

    /// Resizes a container to `plan` (cores, memory, swap; the disk only
    /// grows) after checking its owner's quota for the growth, in this
    /// transaction; the reconciler applies it to Proxmox.
    ///
    /// # Errors
    /// Unknown container, a smaller disk, or over quota (which limit, by how much).
    pub async fn resize_container(&mut self, name: &str, plan: &Plan, actor: &Actor) -> StoreResult<()> {
        let row = sqlx::query(
            "SELECT id, owner_kind, owner_id, cores, memory_mb, disk_gb FROM containers \
             WHERE name = ? AND status <> 'deleted'",
        )
        .bind(name)
        .fetch_optional(self.conn())
        .await?;
        let Some(row) = row else { return Err(StoreError::Invalid(format!("container {name:?} does not exist"))) };
        let (id, kind, owner): (String, String, Option<String>) = (row.get(0), row.get(1), row.get(2));
        let current = Resources { containers: 1, cores: row.get(3), memory_mb: row.get(4), disk_gb: row.get(5) };
        if plan.disk_gb < current.disk_gb {
            return Err(StoreError::Invalid(format!(
                "plan {} has a {} GiB disk, smaller than {name}'s {} GiB: disks only grow",
                plan.name, plan.disk_gb, current.disk_gb
            )));
        }
        if let Some(owner) = &owner {
            let (limit, used) = self.quota_and_usage(&kind, owner).await?;
            let growth = Resources {
                containers: 0,
                cores: (plan.cores - current.cores).max(0),
                memory_mb: (plan.memory_mb - current.memory_mb).max(0),
                disk_gb: plan.disk_gb - current.disk_gb,
            };
            let who = format!("{kind} {}", self.subject_name(&kind, owner).await?);
            if let Some(message) = quota_error(&who, used, growth, &limit) {
                return Err(StoreError::Invalid(message));
            }
        }
        sqlx::query(
            "UPDATE containers SET plan = ?, cores = ?, memory_mb = ?, swap_mb = ?, disk_gb = ?, status = 'resizing', \
             next_attempt = 0, attempts = 0, updated_at = ? WHERE id = ?",
        )
        .bind(&plan.name)
        .bind(plan.cores)
        .bind(plan.memory_mb)
        .bind(plan.swap_mb)
        .bind(plan.disk_gb)
        .bind(self.now())
        .bind(&id)
        .execute(self.conn())
        .await?;
        self.event(&id, "desired", &format!("resize to {} (by {})", plan.name, actor.name)).await?;
        self.audit(actor, "container.resize", name, &plan.name).await
    }

    async fn live_size(&mut self, name: &str) -> StoreResult<Resources> {
        let row =
            sqlx::query("SELECT cores, memory_mb, disk_gb FROM containers WHERE name = ? AND status <> 'deleted'")
                .bind(name)
                .fetch_optional(self.conn())
                .await?;
        let Some(row) = row else { return Err(StoreError::Invalid(format!("container {name:?} does not exist"))) };
        Ok(Resources { containers: 1, cores: row.get(0), memory_mb: row.get(1), disk_gb: row.get(2) })
    }

    /// Lets `user` log in to container `name` besides its owner (`share`
    /// true), or no longer (false). Collaborators get no sudo.
    ///
    /// # Errors
    /// Unknown container or user; already (or not) a collaborator.
    pub async fn set_collaborator(&mut self, name: &str, user: &str, share: bool, actor: &Actor) -> StoreResult<()> {
        let user_id = self.user_id(user).await?;
        let row = sqlx::query("SELECT id FROM containers WHERE name = ? AND status <> 'deleted'")
            .bind(name)
            .fetch_optional(self.conn())
            .await?;
        let Some(row) = row else { return Err(StoreError::Invalid(format!("container {name:?} does not exist"))) };
        let id: String = row.get(0);
        let done = if share {
            sqlx::query(
                "INSERT INTO container_collaborators (container_id, user_id, created_at) VALUES (?, ?, ?) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&id)
            .bind(&user_id)
            .bind(self.now())
            .execute(self.conn())
            .await?
        } else {
            sqlx::query("DELETE FROM container_collaborators WHERE container_id = ? AND user_id = ?")
                .bind(&id)
                .bind(&user_id)
                .execute(self.conn())
                .await?
        };
        if done.rows_affected() == 0 {
            let what = if share { "already" } else { "not" };
            return Err(StoreError::Invalid(format!("user {user:?} is {what} a collaborator on {name:?}")));
        }
        let action = if share { "container.share" } else { "container.unshare" };
        self.audit(actor, action, name, user).await
    }

    /// Sets a container's desired power state or deletion (an admin's or
    /// owner's decision; deletion here is immediate, without grace).
    ///
    /// # Errors
    /// Unknown container.
    pub async fn set_container_desired(&mut self, name: &str, desired: Desired, actor: &Actor) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE containers SET desired = ?, delete_after = NULL, next_attempt = 0, attempts = 0, updated_at = ? \
             WHERE name = ? AND status <> 'deleted' RETURNING id",
        )
        .bind(desired.as_str())
        .bind(self.now())
        .bind(name)
        .fetch_optional(self.conn())
        .await?;
        let Some(row) = done else {
            return Err(StoreError::Invalid(format!("container {name:?} does not exist")));
        };
        let id: String = row.get(0);
        self.event(&id, "desired", &format!("{desired} (by {})", actor.name)).await?;
        self.audit(actor, "container.desired", name, desired.as_str()).await
    }

    /// Files a request beyond a quota for an admin; returns its id.
    ///
    /// # Errors
    /// Unknown user or plan.
    pub async fn file_container_request(
        &mut self,
        user: &str,
        name: &str,
        plan: &str,
        reason: &str,
        actor: &Actor,
    ) -> StoreResult<String> {
        self.file_request("create", user, name, plan, reason, actor).await
    }

    /// Files a request for an admin: `kind` `create` (a new container) or
    /// `resize` (container `name` to `plan`); returns its id.
    ///
    /// # Errors
    /// Unknown user or plan.
    pub async fn file_request(
        &mut self,
        kind: &str,
        user: &str,
        name: &str,
        plan: &str,
        reason: &str,
        actor: &Actor,
    ) -> StoreResult<String> {
        validate_container_name(name).map_err(StoreError::Invalid)?;
        let user_id = self.user_id(user).await?;
        self.plan(plan).await?;
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO container_requests (id, user_id, name, plan, reason, status, created_at, kind) \
             VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
        )
        .bind(&id)
        .bind(&user_id)
        .bind(name)
        .bind(plan)
        .bind(reason)
        .bind(self.now())
        .bind(kind)
        .execute(self.conn())
        .await?;
        self.audit(actor, &format!("container.request.{kind}"), name, reason).await?;
        Ok(id)
    }

    /// Approves (raising the user's quota just enough, an admin override)
    /// or declines a pending request.
    ///
    /// # Errors
    /// No such pending request; on approval, a taken name.
    pub async fn decide_container_request(&mut self, id: &str, approve: bool, actor: &Actor) -> StoreResult<()> {
        let row = sqlx::query(
            "SELECT r.user_id, u.name, r.name, r.plan, r.kind FROM container_requests r \
             JOIN users u ON u.id = r.user_id WHERE r.id = ? AND r.status = 'pending'",
        )
        .bind(id)
        .fetch_optional(self.conn())
        .await?;
        let Some(row) = row else { return Err(StoreError::Invalid(format!("no pending request {id:?}"))) };
        let (user_id, user, name, plan, kind): (String, String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let status = if approve { "approved" } else { "declined" };
        sqlx::query("UPDATE container_requests SET status = ?, decided_by = ?, decided_at = ? WHERE id = ?")
            .bind(status)
            .bind(&actor.name)
            .bind(self.now())
            .bind(id)
            .execute(self.conn())
            .await?;
        if approve {
            let plan = self.plan(&plan).await?;
            let (limit, used) = self.quota_and_usage("user", &user_id).await?;
            let growth = if kind == "resize" {
                let current = self.live_size(&name).await?;
                Resources {
                    containers: 0,
                    cores: (plan.cores - current.cores).max(0),
                    memory_mb: (plan.memory_mb - current.memory_mb).max(0),
                    disk_gb: (plan.disk_gb - current.disk_gb).max(0),
                }
            } else {
                plan.resources()
            };
            let needed = used.plus(growth);
            let raised = Resources {
                containers: limit.containers.max(needed.containers),
                cores: limit.cores.max(needed.cores),
                memory_mb: limit.memory_mb.max(needed.memory_mb),
                disk_gb: limit.disk_gb.max(needed.disk_gb),
            };
            if raised != limit {
                self.set_quota("user", &user, raised, actor).await?;
            }
            if kind == "resize" {
                self.resize_container(&name, &plan, actor).await?;
                return self.audit(actor, &format!("container.request.{status}"), id, &user).await;
            }
            let new = NewContainer {
                name,
                owner: Owner::User(user_id),
                origin: "request",
                entitlement: None,
                plan,
                site: None,
            };
            self.add_container(&new, actor).await?;
        }
        self.audit(actor, &format!("container.request.{status}"), id, &user).await
    }

    /// Brings entitlement containers in line with groups and memberships:
    /// each member of an entitled group has one container of the plan (one
    /// per group when shared), within quota; containers whose right is gone
    /// get `delete_after = now + grace`, and get it cleared when the right
    /// comes back in time. A member over quota gets a pending request for
    /// an admin instead of a container. Runs inside the transaction that
    /// changed the memberships, before it commits.
    ///
    /// # Errors
    /// Database errors.
    pub async fn sync_entitlements(&mut self) -> StoreResult<()> {
        self.entitlements_dirty = false;
        let rows = sqlx::query(
            "SELECT e.group_name, g.id, e.plan, e.shared FROM entitlements e JOIN groups g ON g.name = e.group_name \
             ORDER BY e.group_name, e.plan",
        )
        .fetch_all(self.conn())
        .await?;
        let actor = Actor::system();
        // (owner kind, owner id, entitlement group, plan) that should exist.
        let mut wanted: Vec<(String, String, String, String, String)> = Vec::new();
        for r in &rows {
            let (group, group_id, plan, shared): (String, String, String, bool) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            if shared {
                wanted.push(("group".into(), group_id, group.clone(), plan, label_of(&group)));
                continue;
            }
            let members = sqlx::query(
                "SELECT u.id, u.name FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.group_id = ? \
                 ORDER BY u.name",
            )
            .bind(&group_id)
            .fetch_all(self.conn())
            .await?;
            for m in members {
                wanted.push(("user".into(), m.get(0), group.clone(), plan.clone(), label_of(&m.get::<String, _>(1))));
            }
        }
        let live = sqlx::query(&format!(
            "SELECT {CONTAINER_COLUMNS} FROM containers WHERE origin = 'entitlement' AND desired <> 'deleted' \
             AND status <> 'deleted'"
        ))
        .fetch_all(self.conn())
        .await?;
        let live: Vec<Container> = live.iter().map(container_from_row).collect();
        let now = self.now();
        for c in &live {
            let (kind, id) = c.owner.parts();
            let still = wanted.iter().any(|(k, i, g, p, _)| {
                k == kind && Some(i.as_str()) == id && Some(g) == c.entitlement.as_ref() && *p == c.plan
            });
            match (still, c.delete_after) {
                (false, None) => {
                    let grace = i64::try_from(self.policy.grace_secs).unwrap_or(i64::MAX);
                    let at = now.saturating_add(grace);
                    sqlx::query("UPDATE containers SET delete_after = ?, updated_at = ? WHERE id = ?")
                        .bind(at)
                        .bind(now)
                        .bind(&c.id)
                        .execute(self.conn())
                        .await?;
                    self.event(
                        &c.id,
                        "desired",
                        &format!("entitlement lost: deleted after the grace period ({grace} s) unless restored"),
                    )
                    .await?;
                }
                (true, Some(_)) => {
                    sqlx::query("UPDATE containers SET delete_after = NULL, updated_at = ? WHERE id = ?")
                        .bind(now)
                        .bind(&c.id)
                        .execute(self.conn())
                        .await?;
                    self.event(&c.id, "desired", "entitlement restored within the grace period: kept").await?;
                }
                _ => {}
            }
        }
        for (kind, owner_id, group, plan_name, label) in wanted {
            let exists = live.iter().any(|c| {
                c.owner.parts() == (kind.as_str(), Some(owner_id.as_str()))
                    && c.entitlement.as_deref() == Some(group.as_str())
                    && c.plan == plan_name
            });
            if exists {
                continue;
            }
            let plan = self.plan(&plan_name).await?;
            let name = self.free_name(&format!("{label}-{plan_name}")).await?;
            let owner = if kind == "group" { Owner::Group(owner_id.clone()) } else { Owner::User(owner_id.clone()) };
            let new = NewContainer {
                name: name.clone(),
                owner,
                origin: "entitlement",
                entitlement: Some(group.clone()),
                plan,
                site: None,
            };
            match self.add_container(&new, &actor).await {
                Ok(_) => {}
                Err(StoreError::Invalid(reason)) => {
                    // Over quota (or no site yet): nothing is created; a
                    // user's case waits for an admin as a request.
                    if kind == "user" {
                        let pending = sqlx::query(
                            "SELECT 1 FROM container_requests WHERE user_id = ? AND plan = ? AND status = 'pending'",
                        )
                        .bind(&owner_id)
                        .bind(&plan_name)
                        .fetch_optional(self.conn())
                        .await?;
                        if pending.is_none() {
                            let user = self.subject_name("user", &owner_id).await?;
                            self.file_container_request(&user, &name, &plan_name, &reason, &actor).await?;
                        }
                    } else {
                        self.audit(&actor, "container.refused", &name, &reason).await?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn event(&mut self, id: &str, kind: &str, message: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO container_events (id, container_id, at, kind, message) VALUES (?, ?, ?, ?, ?)")
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(id)
            .bind(self.now())
            .bind(kind)
            .bind(message)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    async fn plan(&mut self, name: &str) -> StoreResult<Plan> {
        let row = sqlx::query("SELECT * FROM plans WHERE name = ?").bind(name).fetch_optional(self.conn()).await?;
        row.as_ref().map(plan_from_row).ok_or_else(|| StoreError::Invalid(format!("plan {name:?} does not exist")))
    }

    async fn user_id(&mut self, name: &str) -> StoreResult<String> {
        let row = sqlx::query("SELECT id FROM users WHERE name = ?").bind(name).fetch_optional(self.conn()).await?;
        row.map(|r| r.get(0)).ok_or_else(|| StoreError::NotFound(crate::model::Kind::User, name.to_string()))
    }

    async fn group_id(&mut self, name: &str) -> StoreResult<String> {
        let row = sqlx::query("SELECT id FROM groups WHERE name = ?").bind(name).fetch_optional(self.conn()).await?;
        row.map(|r| r.get(0)).ok_or_else(|| StoreError::NotFound(crate::model::Kind::Group, name.to_string()))
    }

    async fn subject_name(&mut self, kind: &str, id: &str) -> StoreResult<String> {
        let sql = if kind == "group" {
            "SELECT name FROM groups WHERE id = ?"
        } else {
            "SELECT name FROM users WHERE id = ?"
        };
        let row = sqlx::query(sql).bind(id).fetch_optional(self.conn()).await?;
        Ok(row.map(|r| r.get::<String, _>(0)).unwrap_or_else(|| id.to_string()))
    }

    async fn site_for(&mut self, name: Option<&str>) -> StoreResult<Site> {
        let row = match name {
            Some(n) => sqlx::query("SELECT * FROM sites WHERE name = ?").bind(n).fetch_optional(self.conn()).await?,
            None => sqlx::query("SELECT * FROM sites ORDER BY name LIMIT 1").fetch_optional(self.conn()).await?,
        };
        row.as_ref().and_then(site_from_row).ok_or_else(|| {
            StoreError::Invalid(match name {
                Some(n) => format!("site {n:?} does not exist"),
                None => "no site is configured yet: add one with `portcullis site add`".to_string(),
            })
        })
    }

    /// The lowest address of the site's range that no live container holds
    /// (never the gateway).
    async fn free_ip(&mut self, site: &Site) -> StoreResult<Ipv4Addr> {
        let rows = sqlx::query("SELECT ip FROM containers WHERE site = ? AND ip IS NOT NULL")
            .bind(&site.name)
            .fetch_all(self.conn())
            .await?;
        let used: std::collections::HashSet<Ipv4Addr> =
            rows.iter().filter_map(|r| r.get::<String, _>(0).parse().ok()).collect();
        (u32::from(site.range_start)..=u32::from(site.range_end))
            .map(Ipv4Addr::from)
            .find(|ip| *ip != site.gateway && !used.contains(ip))
            .ok_or_else(|| {
                StoreError::Invalid(format!(
                    "site {:?} has no free address left in {}-{}",
                    site.name, site.range_start, site.range_end
                ))
            })
    }

    /// `base`, or `base-2`, `base-3`… whichever no live container has.
    async fn free_name(&mut self, base: &str) -> StoreResult<String> {
        let base: String = base.chars().take(56).collect::<String>().trim_end_matches('-').to_string();
        for n in 1..1000 {
            let name = if n == 1 { base.clone() } else { format!("{base}-{n}") };
            let taken = sqlx::query("SELECT 1 FROM containers WHERE name = ? AND status <> 'deleted'")
                .bind(&name)
                .fetch_optional(self.conn())
                .await?;
            if taken.is_none() {
                return Ok(name);
            }
        }
        Err(StoreError::Invalid(format!("no free container name like {base:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DirectoryConfig;
    use crate::store::{NewGroup, NewUser};

    const SYS: fn() -> Actor = Actor::system;

    fn small() -> Plan {
        Plan {
            name: "small".into(),
            cores: 1,
            memory_mb: 1024,
            swap_mb: 512,
            disk_gb: 8,
            features: vec!["nesting".into()],
            template: None,
            description: String::new(),
        }
    }

    /// A store with site `lab` (four addresses), plan `small`, users
    /// alice and bob, group `students` entitled to `small` per member.
    async fn setup(store: &Store) {
        let dir = DirectoryConfig::default();
        let mut tx = store.begin().await.unwrap();
        let site = Site {
            name: "lab".into(),
            subnet: "10.20.0.0/24".parse().unwrap(),
            gateway: "10.20.0.1".parse().unwrap(),
            domain: "cluster.internal".into(),
            range_start: "10.20.0.10".parse().unwrap(),
            range_end: "10.20.0.13".parse().unwrap(),
        };
        tx.add_site(&site, &SYS()).await.unwrap();
        tx.add_plan(&small(), &SYS()).await.unwrap();
        for name in ["alice", "bob"] {
            tx.add_user(NewUser { name: name.into(), ..Default::default() }, &dir, &SYS()).await.unwrap();
        }
        tx.add_group(NewGroup { name: "students".into(), ..Default::default() }, &dir, &SYS()).await.unwrap();
        let e = Entitlement { group: "students".into(), plan: "small".into(), shared: false };
        tx.add_entitlement(&e, &SYS()).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn member(store: &Store, user: &str, add: bool) {
        let mut tx = store.begin().await.unwrap();
        if add {
            tx.add_member("students", user, &SYS()).await.unwrap();
        } else {
            tx.remove_member("students", user, &SYS()).await.unwrap();
        }
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn membership_drives_containers_with_grace() {
        let policy = crate::provision::Policy { grace_secs: 3600, ..Default::default() };
        let store = Store::open_in_memory().await.unwrap().with_provision_policy(policy);
        setup(&store).await;
        member(&store, "alice", true).await;
        let live = store.containers(false).await.unwrap();
        assert_eq!(live.len(), 1);
        let c = &live[0];
        assert_eq!((c.name.as_str(), c.plan.as_str(), c.status.as_str()), ("alice-small", "small", "pending"));
        assert_eq!(c.ip, Some("10.20.0.10".parse().unwrap()), "the range's first address");
        assert!(c.mac.as_deref().is_some_and(|m| m.starts_with("02:") || m.len() == 17));
        assert_eq!(c.entitlement.as_deref(), Some("students"));

        // Leaving the group starts the grace period; coming back ends it.
        member(&store, "alice", false).await;
        let c = store.container("alice-small").await.unwrap().unwrap();
        let after = c.delete_after.expect("grace period started");
        assert!(after >= c.updated_at + 3600 - 1);
        member(&store, "alice", true).await;
        let c = store.container("alice-small").await.unwrap().unwrap();
        assert_eq!(c.delete_after, None, "restored in time");
        assert_eq!(store.containers(false).await.unwrap().len(), 1, "no second container");
        let events = store.container_events(&c.id, 10).await.unwrap();
        assert!(events.iter().any(|e| e.message.contains("restored")), "{events:?}");

        // Past the grace period the container is marked for deletion.
        member(&store, "alice", false).await;
        assert!(store.expire_grace_periods(after - 10).await.unwrap().is_empty());
        let c = store.container("alice-small").await.unwrap().unwrap();
        assert_eq!(store.expire_grace_periods(c.delete_after.unwrap()).await.unwrap(), ["alice-small"]);
        assert_eq!(store.container("alice-small").await.unwrap().unwrap().desired, Desired::Deleted);
    }

    #[tokio::test]
    async fn quotas_refuse_clearly_file_requests_and_flag_lowered_limits() {
        let store = Store::open_in_memory().await.unwrap();
        setup(&store).await;
        // Bob's quota holds no container: joining files a request instead.
        let mut tx = store.begin().await.unwrap();
        tx.set_quota("user", "bob", Resources { containers: 0, cores: 2, memory_mb: 2048, disk_gb: 20 }, &SYS())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        member(&store, "bob", true).await;
        assert!(store.containers(false).await.unwrap().is_empty());
        let pending = store.container_requests("pending").await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(
            pending[0].reason,
            "quota exceeded for user bob: containers would be 1 (0 in use + 1 requested) but 0 are allowed, over by 1"
        );
        // A direct request over the memory limit names memory and the excess.
        let bob = store.user("bob").await.unwrap().unwrap();
        let big = Plan { name: "big".into(), memory_mb: 4096, ..small() };
        let mut tx = store.begin().await.unwrap();
        tx.add_plan(&big, &SYS()).await.unwrap();
        tx.set_quota("user", "bob", Resources { containers: 2, cores: 2, memory_mb: 2048, disk_gb: 20 }, &SYS())
            .await
            .unwrap();
        let new = NewContainer {
            name: "bobs-db".into(),
            owner: Owner::User(bob.id.clone()),
            origin: "request",
            entitlement: None,
            plan: big,
            site: None,
        };
        let err = tx.add_container(&new, &SYS()).await.unwrap_err().to_string();
        assert_eq!(
            err,
            "quota exceeded for user bob: memory would be 4096 MiB (0 in use + 4096 requested) but 2048 MiB are allowed, over by 2048 MiB"
        );
        tx.commit().await.unwrap();
        // The admin approves the entitlement's request: quota raised, container made.
        let mut tx = store.begin().await.unwrap();
        tx.decide_container_request(&pending[0].id, true, &SYS()).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(store.containers(false).await.unwrap().len(), 1);
        // Lowering the quota below usage flags, never deletes.
        let mut tx = store.begin().await.unwrap();
        tx.set_quota("user", "bob", Resources::default(), &SYS()).await.unwrap();
        tx.commit().await.unwrap();
        let c = &store.containers(false).await.unwrap()[0];
        assert!(c.over_quota && c.desired == Desired::Running);
    }

    #[tokio::test]
    async fn concurrent_requests_never_exceed_a_quota() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("db.sqlite")).await.unwrap();
        setup(&store).await;
        let alice = store.user("alice").await.unwrap().unwrap();
        let mut tx = store.begin().await.unwrap();
        tx.set_quota("user", "alice", Resources { containers: 2, cores: 8, memory_mb: 8192, disk_gb: 80 }, &SYS())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (store, owner) = (store.clone(), alice.id.clone());
                tokio::spawn(async move {
                    let mut tx = store.begin().await?;
                    let new = NewContainer {
                        name: format!("c{i}"),
                        owner: Owner::User(owner),
                        origin: "request",
                        entitlement: None,
                        plan: small(),
                        site: None,
                    };
                    tx.add_container(&new, &SYS()).await?;
                    tx.commit().await
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => ok += 1,
                Err(e) => assert!(e.to_string().starts_with("quota exceeded for user alice: containers"), "{e}"),
            }
        }
        assert_eq!(ok, 2);
        let ips: std::collections::HashSet<_> = store.containers(false).await.unwrap().iter().map(|c| c.ip).collect();
        assert_eq!(ips.len(), 2, "distinct addresses");
    }
}
