//! Write transactions. Each mutation validates its input, records one audit
//! row and fails with a [`StoreError`] that names what was wrong.

use sqlx::{Row, Sqlite, SqlitePool, Transaction};

use super::{StoreError, StoreResult};
use crate::clock::{Clock, SystemClock};
use crate::config::DirectoryConfig;
use crate::model::{Actor, Kind, User, validate_email, validate_name};

/// Longest accepted free-text field (display name, description, shell, home).
const MAX_TEXT_LEN: usize = 256;
/// Longest accepted SSH public key line.
const MAX_SSH_KEY_LEN: usize = 16 * 1024;

/// What `user add` needs; everything but the name has a default.
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    pub name: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    /// Already hashed (argon2id PHC or an imported `{SCHEME}` hash).
    pub password_hash: Option<String>,
    pub uid_number: Option<i64>,
    pub gid_number: Option<i64>,
    pub login_shell: Option<String>,
    pub home_directory: Option<String>,
    pub ssh_keys: Vec<String>,
}

/// What `group add` needs.
#[derive(Debug, Clone, Default)]
pub struct NewGroup {
    pub name: String,
    pub description: String,
    pub gid_number: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
enum NumberKind {
    Uid,
    Gid,
}

/// An open write transaction; dropped without [`WriteTx::commit`] it rolls back.
pub struct WriteTx {
    tx: Transaction<'static, Sqlite>,
    now: i64,
    pub(super) policy: std::sync::Arc<crate::provision::Policy>,
    /// Memberships, users, groups or entitlements changed: the desired
    /// containers are brought in line before the commit (same transaction).
    pub(super) entitlements_dirty: bool,
}

impl WriteTx {
    pub(super) async fn begin(
        pool: &SqlitePool,
        policy: std::sync::Arc<crate::provision::Policy>,
    ) -> StoreResult<Self> {
        let mut tx = pool.begin().await?;
        // Writing first takes the lock now rather than at a later upgrade.
        sqlx::query(
            "INSERT INTO counters (name, value) VALUES ('generation', 1) \
             ON CONFLICT (name) DO UPDATE SET value = counters.value + 1",
        )
        .execute(&mut *tx)
        .await?;
        Ok(Self { tx, now: SystemClock.now(), policy, entitlements_dirty: false })
    }

    /// Commits every change made in this transaction.
    ///
    /// # Errors
    /// Database errors; nothing is committed then.
    pub async fn commit(mut self) -> StoreResult<()> {
        if self.entitlements_dirty {
            self.sync_entitlements().await?;
        }
        self.tx.commit().await?;
        Ok(())
    }

    /// Records an audit row.
    ///
    /// # Errors
    /// Database errors.
    pub async fn audit(&mut self, actor: &Actor, action: &str, target: &str, detail: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor, action, target, source, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(self.now)
        .bind(&actor.name)
        .bind(action)
        .bind(target)
        .bind(&actor.source)
        .bind(detail)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Stores a setting, replacing any previous value.
    ///
    /// # Errors
    /// Database errors.
    pub async fn set_setting(&mut self, key: &str, value: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Hands out the next free uid/gid number from the range; never reuses one.
    async fn allocate_id(&mut self, dir: &DirectoryConfig) -> StoreResult<i64> {
        let current: Option<i64> = sqlx::query("SELECT value FROM counters WHERE name = 'next_id'")
            .fetch_optional(&mut *self.tx)
            .await?
            .map(|r| r.get(0));
        let mut candidate = current.unwrap_or(dir.id_range_start).max(dir.id_range_start);
        while candidate <= dir.id_range_end {
            if !self.id_taken(candidate).await? {
                sqlx::query(
                    "INSERT INTO counters (name, value) VALUES ('next_id', ?) \
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                )
                .bind(candidate + 1)
                .execute(&mut *self.tx)
                .await?;
                return Ok(candidate);
            }
            candidate += 1;
        }
        Err(StoreError::IdRangeExhausted(dir.id_range_start, dir.id_range_end))
    }

    /// The requested uid/gid number if it is valid and free, else the next allocated one.
    async fn choose_number(
        &mut self,
        requested: Option<i64>,
        kind: NumberKind,
        dir: &DirectoryConfig,
    ) -> StoreResult<i64> {
        let (label, sql) = match kind {
            NumberKind::Uid => ("uidNumber", "SELECT 1 FROM users WHERE uid_number = ?"),
            NumberKind::Gid => ("gidNumber", "SELECT 1 FROM groups WHERE gid_number = ?"),
        };
        match requested {
            None => self.allocate_id(dir).await,
            Some(n) if n <= 0 => Err(StoreError::Invalid(format!("{label} {n} must be positive"))),
            Some(n) => {
                if sqlx::query(sql).bind(n).fetch_optional(&mut *self.tx).await?.is_some() {
                    return Err(StoreError::Invalid(format!("{label} {n} is already in use")));
                }
                Ok(n)
            }
        }
    }

    async fn id_taken(&mut self, id: i64) -> StoreResult<bool> {
        let row =
            sqlx::query("SELECT 1 FROM users WHERE uid_number = ? UNION ALL SELECT 1 FROM groups WHERE gid_number = ?")
                .bind(id)
                .bind(id)
                .fetch_optional(&mut *self.tx)
                .await?;
        Ok(row.is_some())
    }

    /// The time this transaction stamps on rows (unix seconds).
    pub fn now(&self) -> i64 {
        self.now
    }

    /// The connection of this transaction, for sibling modules' queries.
    pub(super) fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.tx
    }

    async fn id_of(&mut self, kind: Kind, name: &str) -> StoreResult<String> {
        let sql = match kind {
            Kind::User => "SELECT id FROM users WHERE name = ?",
            Kind::Group => "SELECT id FROM groups WHERE name = ?",
            Kind::ServiceAccount => "SELECT id FROM service_accounts WHERE name = ?",
            Kind::OidcClient => "SELECT id FROM oidc_clients WHERE name = ?",
        };
        sqlx::query(sql)
            .bind(name)
            .fetch_optional(&mut *self.tx)
            .await?
            .map(|r| r.get(0))
            .ok_or_else(|| StoreError::NotFound(kind, name.to_string()))
    }

    /// Whether a user, group or service account with this name exists.
    ///
    /// # Errors
    /// Database errors.
    pub async fn exists(&mut self, kind: Kind, name: &str) -> StoreResult<bool> {
        match self.id_of(kind, name).await {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound(..)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The gidNumber of a group.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown group.
    pub async fn group_gid(&mut self, name: &str) -> StoreResult<i64> {
        sqlx::query("SELECT gid_number FROM groups WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *self.tx)
            .await?
            .map(|r| r.get(0))
            .ok_or_else(|| StoreError::NotFound(Kind::Group, name.to_string()))
    }

    /// Creates a user. A missing uid is allocated; a missing primary gid is
    /// the default group's (created if absent).
    ///
    /// # Errors
    /// Invalid fields, a duplicate name or uidNumber, an exhausted id range.
    pub async fn add_user(&mut self, new: NewUser, dir: &DirectoryConfig, actor: &Actor) -> StoreResult<User> {
        validate_name(Kind::User, &new.name).map_err(StoreError::Invalid)?;
        if let Some(email) = &new.email {
            validate_email(email).map_err(StoreError::Invalid)?;
        }
        for (what, value) in [
            ("display name", new.display_name.as_deref()),
            ("login shell", new.login_shell.as_deref()),
            ("home directory", new.home_directory.as_deref()),
        ] {
            check_text(what, value.unwrap_or(""))?;
        }
        for key in &new.ssh_keys {
            check_ssh_key(key)?;
        }
        if self.exists(Kind::User, &new.name).await? {
            return Err(StoreError::Duplicate(Kind::User, new.name));
        }
        let uid_number = self.choose_number(new.uid_number, NumberKind::Uid, dir).await?;
        let gid_number = match new.gid_number {
            Some(n) if n <= 0 => return Err(StoreError::Invalid(format!("gidNumber {n} must be positive"))),
            Some(n) => n,
            None => self.ensure_default_group(dir, actor).await?,
        };
        let user = User {
            id: uuid::Uuid::new_v4().to_string(),
            display_name: new.display_name.unwrap_or_else(|| new.name.clone()),
            login_shell: new.login_shell.unwrap_or_else(|| dir.default_shell.clone()),
            home_directory: new
                .home_directory
                .unwrap_or_else(|| format!("{}/{}", dir.home_base.trim_end_matches('/'), new.name)),
            name: new.name,
            uid_number,
            gid_number,
            email: new.email,
            ssh_keys: new.ssh_keys,
            password_hash: new.password_hash,
            disabled: false,
            created_at: self.now,
            updated_at: self.now,
        };
        sqlx::query(
            "INSERT INTO users (id, name, uid_number, gid_number, display_name, email, login_shell, \
             home_directory, password_hash, disabled, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&user.id)
        .bind(&user.name)
        .bind(user.uid_number)
        .bind(user.gid_number)
        .bind(&user.display_name)
        .bind(&user.email)
        .bind(&user.login_shell)
        .bind(&user.home_directory)
        .bind(&user.password_hash)
        .bind(user.disabled)
        .bind(user.created_at)
        .bind(user.updated_at)
        .execute(&mut *self.tx)
        .await?;
        for key in &user.ssh_keys {
            self.insert_ssh_key(&user.id, key).await?;
        }
        self.audit(actor, "user.add", &user.name, &format!("uidNumber={}", user.uid_number)).await?;
        Ok(user)
    }

    async fn ensure_default_group(&mut self, dir: &DirectoryConfig, actor: &Actor) -> StoreResult<i64> {
        match self.group_gid(&dir.default_group).await {
            Ok(gid) => Ok(gid),
            Err(StoreError::NotFound(..)) => {
                let group = NewGroup {
                    name: dir.default_group.clone(),
                    description: "Default primary group of Portcullis users".into(),
                    gid_number: None,
                };
                self.add_group(group, dir, actor).await
            }
            Err(e) => Err(e),
        }
    }

    async fn insert_ssh_key(&mut self, user_id: &str, key: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO ssh_keys (user_id, public_key, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
            .bind(user_id)
            .bind(key.trim())
            .bind(self.now)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Adds an SSH public key to a user.
    ///
    /// # Errors
    /// Unknown user or a malformed key.
    pub async fn add_ssh_key(&mut self, user: &str, key: &str, actor: &Actor) -> StoreResult<()> {
        check_ssh_key(key)?;
        let id = self.id_of(Kind::User, user).await?;
        self.insert_ssh_key(&id, key).await?;
        self.touch(Kind::User, &id).await?;
        self.audit(actor, "user.ssh_key.add", user, "").await
    }

    /// Bumps `updated_at` (hence modifyTimestamp) of a user or group.
    async fn touch(&mut self, kind: Kind, id: &str) -> StoreResult<()> {
        let sql = match kind {
            Kind::User => "UPDATE users SET updated_at = ? WHERE id = ?",
            Kind::Group => "UPDATE groups SET updated_at = ? WHERE id = ?",
            Kind::ServiceAccount => "UPDATE service_accounts SET updated_at = ? WHERE id = ?",
            Kind::OidcClient => "UPDATE oidc_clients SET updated_at = ? WHERE id = ?",
        };
        sqlx::query(sql).bind(self.now).bind(id).execute(&mut *self.tx).await?;
        Ok(())
    }

    /// Replaces a user's password hash.
    ///
    /// # Errors
    /// Unknown user.
    pub async fn set_user_password_hash(&mut self, user: &str, hash: &str, actor: &Actor) -> StoreResult<()> {
        let done = sqlx::query("UPDATE users SET password_hash = ?, updated_at = ? WHERE name = ?")
            .bind(hash)
            .bind(self.now)
            .bind(user)
            .execute(&mut *self.tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(Kind::User, user.to_string()));
        }
        self.audit(actor, "user.password", user, "").await
    }

    /// Replaces a user's password hash only if it still is `old`: used when a
    /// bind upgrades an imported hash, so a concurrent admin change wins.
    ///
    /// # Errors
    /// Database errors.
    pub async fn upgrade_user_password_hash(&mut self, user: &str, old: &str, new: &str) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE users SET password_hash = ? WHERE name = ? AND password_hash = ?")
            .bind(new)
            .bind(user)
            .bind(old)
            .execute(&mut *self.tx)
            .await?;
        if done.rows_affected() == 1 {
            self.audit(&Actor::system(), "user.password.rehash", user, "argon2id").await?;
        }
        Ok(done.rows_affected() == 1)
    }

    /// Disables or enables a user.
    ///
    /// # Errors
    /// Unknown user.
    pub async fn set_user_disabled(&mut self, user: &str, disabled: bool, actor: &Actor) -> StoreResult<()> {
        let done = sqlx::query("UPDATE users SET disabled = ?, updated_at = ? WHERE name = ?")
            .bind(disabled)
            .bind(self.now)
            .bind(user)
            .execute(&mut *self.tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(Kind::User, user.to_string()));
        }
        let action = if disabled { "user.disable" } else { "user.enable" };
        self.audit(actor, action, user, "").await
    }

    /// Deletes a user with their memberships and keys.
    ///
    /// # Errors
    /// Unknown user.
    pub async fn delete_user(&mut self, user: &str, actor: &Actor) -> StoreResult<()> {
        let id = self.id_of(Kind::User, user).await?;
        self.touch_groups_of(&id).await?;
        sqlx::query("DELETE FROM users WHERE id = ?").bind(&id).execute(&mut *self.tx).await?;
        self.entitlements_dirty = true;
        self.audit(actor, "user.delete", user, "").await
    }

    async fn touch_groups_of(&mut self, user_id: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE groups SET updated_at = ? WHERE id IN (SELECT group_id FROM memberships WHERE user_id = ?)",
        )
        .bind(self.now)
        .bind(user_id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Creates a group and returns its gidNumber.
    ///
    /// # Errors
    /// Invalid name or description, duplicate name or gidNumber.
    pub async fn add_group(&mut self, new: NewGroup, dir: &DirectoryConfig, actor: &Actor) -> StoreResult<i64> {
        validate_name(Kind::Group, &new.name).map_err(StoreError::Invalid)?;
        check_text("description", &new.description)?;
        if self.exists(Kind::Group, &new.name).await? {
            return Err(StoreError::Duplicate(Kind::Group, new.name));
        }
        let gid = self.choose_number(new.gid_number, NumberKind::Gid, dir).await?;
        sqlx::query(
            "INSERT INTO groups (id, name, gid_number, description, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(&new.name)
        .bind(gid)
        .bind(&new.description)
        .bind(self.now)
        .bind(self.now)
        .execute(&mut *self.tx)
        .await?;
        self.audit(actor, "group.add", &new.name, &format!("gidNumber={gid}")).await?;
        Ok(gid)
    }

    /// Deletes a group and its memberships.
    ///
    /// # Errors
    /// Unknown group.
    pub async fn delete_group(&mut self, group: &str, actor: &Actor) -> StoreResult<()> {
        let id = self.id_of(Kind::Group, group).await?;
        sqlx::query("DELETE FROM groups WHERE id = ?").bind(&id).execute(&mut *self.tx).await?;
        self.entitlements_dirty = true;
        self.audit(actor, "group.delete", group, "").await
    }

    /// Adds a user to a group; adding an existing member is an error.
    ///
    /// # Errors
    /// Unknown group or user, or already a member.
    pub async fn add_member(&mut self, group: &str, user: &str, actor: &Actor) -> StoreResult<()> {
        let gid = self.id_of(Kind::Group, group).await?;
        let uid = self.id_of(Kind::User, user).await?;
        let done = sqlx::query(
            "INSERT INTO memberships (group_id, user_id, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&gid)
        .bind(&uid)
        .bind(self.now)
        .execute(&mut *self.tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Invalid(format!("user {user:?} is already a member of group {group:?}")));
        }
        self.touch(Kind::Group, &gid).await?;
        self.entitlements_dirty = true;
        self.audit(actor, "group.member.add", group, user).await
    }

    /// Removes a user from a group.
    ///
    /// # Errors
    /// Unknown group or user, or not a member.
    pub async fn remove_member(&mut self, group: &str, user: &str, actor: &Actor) -> StoreResult<()> {
        let gid = self.id_of(Kind::Group, group).await?;
        let uid = self.id_of(Kind::User, user).await?;
        let done = sqlx::query("DELETE FROM memberships WHERE group_id = ? AND user_id = ?")
            .bind(&gid)
            .bind(&uid)
            .execute(&mut *self.tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Invalid(format!("user {user:?} is not a member of group {group:?}")));
        }
        self.touch(Kind::Group, &gid).await?;
        self.entitlements_dirty = true;
        self.audit(actor, "group.member.remove", group, user).await
    }

    /// Creates a service account (bind-only identity).
    ///
    /// # Errors
    /// Invalid or duplicate name.
    pub async fn add_service_account(&mut self, name: &str, hash: &str, actor: &Actor) -> StoreResult<()> {
        validate_name(Kind::ServiceAccount, name).map_err(StoreError::Invalid)?;
        if self.exists(Kind::ServiceAccount, name).await? {
            return Err(StoreError::Duplicate(Kind::ServiceAccount, name.to_string()));
        }
        sqlx::query(
            "INSERT INTO service_accounts (id, name, password_hash, disabled, created_at, updated_at) \
             VALUES (?, ?, ?, FALSE, ?, ?)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(name)
        .bind(hash)
        .bind(self.now)
        .bind(self.now)
        .execute(&mut *self.tx)
        .await?;
        self.audit(actor, "service_account.add", name, "").await
    }

    /// Replaces a service account's password hash.
    ///
    /// # Errors
    /// Unknown service account.
    pub async fn set_service_account_password_hash(
        &mut self,
        name: &str,
        hash: &str,
        actor: &Actor,
    ) -> StoreResult<()> {
        let done = sqlx::query("UPDATE service_accounts SET password_hash = ?, updated_at = ? WHERE name = ?")
            .bind(hash)
            .bind(self.now)
            .bind(name)
            .execute(&mut *self.tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(Kind::ServiceAccount, name.to_string()));
        }
        self.audit(actor, "service_account.password", name, "").await
    }

    /// Deletes a service account.
    ///
    /// # Errors
    /// Unknown service account.
    pub async fn delete_service_account(&mut self, name: &str, actor: &Actor) -> StoreResult<()> {
        let id = self.id_of(Kind::ServiceAccount, name).await?;
        sqlx::query("DELETE FROM service_accounts WHERE id = ?").bind(&id).execute(&mut *self.tx).await?;
        self.audit(actor, "service_account.delete", name, "").await
    }
}

fn check_text(what: &str, value: &str) -> StoreResult<()> {
    if value.len() > MAX_TEXT_LEN || value.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "{what} must be at most {MAX_TEXT_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

fn check_ssh_key(key: &str) -> StoreResult<()> {
    let key = key.trim();
    let mut parts = key.split_whitespace();
    let kind = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("");
    let known = kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
    if key.len() > MAX_SSH_KEY_LEN || !known || body.is_empty() || key.contains(['\n', '\r']) {
        return Err(StoreError::Invalid("SSH public key must be one line like 'ssh-ed25519 AAAA… comment'".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn dir() -> DirectoryConfig {
        DirectoryConfig { id_range_start: 500, id_range_end: 503, ..DirectoryConfig::default() }
    }

    async fn add(store: &Store, name: &str) -> StoreResult<User> {
        let mut tx = store.begin().await?;
        let u = tx.add_user(NewUser { name: name.into(), ..Default::default() }, &dir(), &Actor::system()).await?;
        tx.commit().await?;
        Ok(u)
    }

    #[tokio::test]
    async fn ids_are_allocated_in_range_and_never_reused() {
        let store = Store::open_in_memory().await.unwrap();
        let a = add(&store, "alice").await.unwrap();
        assert_eq!((a.uid_number, a.gid_number), (500, 501), "alice, then her default group");
        let mut tx = store.begin().await.unwrap();
        tx.delete_user("alice", &Actor::system()).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(add(&store, "bob").await.unwrap().uid_number, 502);
        assert_eq!(add(&store, "carol").await.unwrap().uid_number, 503);
        assert!(matches!(add(&store, "dave").await, Err(StoreError::IdRangeExhausted(500, 503))));
    }

    #[tokio::test]
    async fn clear_errors_and_rollback() {
        let store = Store::open_in_memory().await.unwrap();
        add(&store, "alice").await.unwrap();
        let dup = add(&store, "alice").await.unwrap_err();
        assert_eq!(dup.to_string(), "user \"alice\" already exists");
        assert!(add(&store, "Bad Name").await.unwrap_err().to_string().contains("invalid user name"));
        let mut tx = store.begin().await.unwrap();
        let err = tx.add_member("nogroup", "alice", &Actor::system()).await.unwrap_err();
        assert_eq!(err.to_string(), "group \"nogroup\" does not exist");
        tx.add_group(NewGroup { name: "devs".into(), ..Default::default() }, &dir(), &Actor::system()).await.unwrap();
        tx.add_member("devs", "alice", &Actor::system()).await.unwrap();
        assert!(
            tx.add_member("devs", "alice", &Actor::system())
                .await
                .unwrap_err()
                .to_string()
                .contains("already a member")
        );
        drop(tx); // rolled back
        let data = store.load_directory().await.unwrap();
        assert!(data.groups.iter().all(|g| g.name != "devs"));
        let before = data.generation;
        add(&store, "bob").await.unwrap();
        assert!(store.generation().await.unwrap() > before);
    }

    #[tokio::test]
    async fn deleting_a_user_drops_memberships_and_audits() {
        let store = Store::open_in_memory().await.unwrap();
        add(&store, "alice").await.unwrap();
        let mut tx = store.begin().await.unwrap();
        tx.add_group(NewGroup { name: "devs".into(), ..Default::default() }, &dir(), &Actor::cli()).await.unwrap();
        tx.add_member("devs", "alice", &Actor::cli()).await.unwrap();
        tx.delete_user("alice", &Actor::cli()).await.unwrap();
        tx.commit().await.unwrap();
        let data = store.load_directory().await.unwrap();
        let devs = data.groups.iter().find(|g| g.name == "devs").unwrap();
        assert!(devs.member_ids.is_empty());
        let actions: Vec<String> = store.audit_tail(3).await.unwrap().into_iter().map(|e| e.action).collect();
        assert_eq!(actions, ["user.delete", "group.member.add", "group.add"]);
    }

    #[tokio::test]
    async fn ssh_keys_are_validated() {
        let store = Store::open_in_memory().await.unwrap();
        add(&store, "alice").await.unwrap();
        let mut tx = store.begin().await.unwrap();
        assert!(tx.add_ssh_key("alice", "not a key", &Actor::cli()).await.is_err());
        tx.add_ssh_key("alice", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample alice@laptop", &Actor::cli())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(store.user("alice").await.unwrap().unwrap().ssh_keys.len(), 1);
    }
}
