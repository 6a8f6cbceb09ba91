//! The store: the only source of truth. sqlx over SQLite (WAL, so the admin
//! CLI and a running server share one file), migrations embedded and applied
//! on open. Every write goes through a [`WriteTx`], which bumps the directory
//! generation first: that takes SQLite's write lock up front (no deferred
//! upgrade races) and tells running servers to reload their snapshot.
//!
//! **Architecture Invariant:** nothing outside `store/` names sqlx types.

mod mfa;
mod oidc;
mod provision;
mod signin;
mod webauthn;
mod write;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::model::{AuditEntry, Group, Kind, ServiceAccount, User};

pub use mfa::{MfaDevice, TotpRecord};
pub use provision::{Adopted, NewContainer, Progress};
pub use signin::{CodeGrant, EndedSession, LiveSession, RefreshGrant, RefreshOutcome, SessionInfo};
pub use webauthn::WebauthnCredential;
pub use write::{NewGroup, NewUser, WriteTx};

/// Errors from the store, phrased for the admin who caused them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} {1:?} does not exist")]
    NotFound(Kind, String),
    #[error("{0} {1:?} already exists")]
    Duplicate(Kind, String),
    #[error("{0}")]
    Invalid(String),
    #[error("no free uid/gid numbers left in the configured range {0}..={1}")]
    IdRangeExhausted(i64, i64),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// Everything the directory snapshot is built from, read in one transaction.
#[derive(Debug, Default)]
pub struct DirectoryData {
    pub generation: i64,
    pub users: Vec<User>,
    pub groups: Vec<Group>,
    pub service_accounts: Vec<ServiceAccount>,
    /// Live containers: who may log in to each (`host` on user entries)
    /// and who is root there (their sudoRole entries).
    pub containers: Vec<ContainerAccess>,
}

/// What the directory needs of a live (not deleted) container.
#[derive(Debug, Clone)]
pub struct ContainerAccess {
    pub id: String,
    /// Its hostname (a DNS label).
    pub name: String,
    /// Its site's DNS domain: `NAME.DOMAIN` is its fully qualified name.
    pub domain: String,
    pub owner: crate::provision::model::Owner,
    /// Users (ids) besides the owner who may log in (no sudo).
    pub collaborators: Vec<String>,
    pub created_at: i64,
    /// Last change of the container row; with the owner's, the sudoRole's
    /// modifyTimestamp (SSSD's smart refresh asks for newer rules).
    pub updated_at: i64,
}

/// A handle to the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    /// What entitlement changes need (grace period, default quotas).
    policy: std::sync::Arc<crate::provision::Policy>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    ///
    /// # Errors
    /// The file cannot be created or opened, or a migration fails.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Invalid(format!("cannot create data directory {}: {e}", dir.display())))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // Switching a brand-new file to WAL (and migrating it) while another
        // process opens it too can fail with "database is locked" without
        // waiting for the busy timeout; such a start is retried briefly.
        let mut attempt = 0;
        loop {
            match Self::with_options(options.clone(), 4).await {
                Err(e) if attempt < 5 && e.to_string().contains("database is locked") => {
                    attempt += 1;
                    tracing::debug!(attempt, "store busy while opening; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                result => return result,
            }
        }
    }

    /// A private in-memory database, for tests.
    ///
    /// # Errors
    /// A migration fails.
    pub async fn open_in_memory() -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        Self::with_options(options, 1).await
    }

    async fn with_options(options: SqliteConnectOptions, max: u32) -> StoreResult<Self> {
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool, policy: std::sync::Arc::default() })
    }

    /// Sets the provisioning policy that write transactions apply when
    /// memberships or entitlements change (default quotas, grace period).
    #[must_use]
    pub fn with_provision_policy(mut self, policy: crate::provision::Policy) -> Self {
        self.policy = std::sync::Arc::new(policy);
        self
    }

    /// Starts a write transaction (taking the write lock and bumping the generation).
    ///
    /// # Errors
    /// The database is unreachable or stays locked past the busy timeout.
    pub async fn begin(&self) -> StoreResult<WriteTx> {
        WriteTx::begin(&self.pool, std::sync::Arc::clone(&self.policy)).await
    }

    /// The directory generation: changes whenever any write commits.
    ///
    /// # Errors
    /// Database errors.
    pub async fn generation(&self) -> StoreResult<i64> {
        let row =
            sqlx::query("SELECT value FROM counters WHERE name = 'generation'").fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.get::<i64, _>(0)).unwrap_or(0))
    }

    /// Reads a setting.
    ///
    /// # Errors
    /// Database errors.
    pub async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = ?").bind(key).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Reads all users, groups, service accounts and live containers
    /// consistently.
    ///
    /// # Errors
    /// Database errors.
    pub async fn load_directory(&self) -> StoreResult<DirectoryData> {
        let mut tx = self.pool.begin().await?;
        let generation: i64 = sqlx::query("SELECT value FROM counters WHERE name = 'generation'")
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get(0))
            .unwrap_or(0);
        let mut users: Vec<User> = sqlx::query(
            "SELECT id, name, uid_number, gid_number, display_name, email, login_shell, \
             home_directory, password_hash, disabled, created_at, updated_at \
             FROM users ORDER BY name",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(user_from_row)
        .collect();
        let keys = sqlx::query("SELECT user_id, public_key FROM ssh_keys ORDER BY user_id, created_at")
            .fetch_all(&mut *tx)
            .await?;
        attach(&mut users, keys.iter().map(|r| (r.get(0), r.get(1))), |u| &u.id, |u, k| u.ssh_keys.push(k));
        let mut groups: Vec<Group> =
            sqlx::query("SELECT id, name, gid_number, description, created_at, updated_at FROM groups ORDER BY name")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(group_from_row)
                .collect();
        let members = sqlx::query("SELECT group_id, user_id FROM memberships ORDER BY group_id, user_id")
            .fetch_all(&mut *tx)
            .await?;
        attach(&mut groups, members.iter().map(|r| (r.get(0), r.get(1))), |g| &g.id, |g, m| g.member_ids.push(m));
        let service_accounts = sqlx::query(
            "SELECT id, name, password_hash, disabled, created_at, updated_at \
             FROM service_accounts ORDER BY name",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| ServiceAccount {
            id: r.get(0),
            name: r.get(1),
            password_hash: r.get(2),
            disabled: r.get(3),
            created_at: r.get(4),
            updated_at: r.get(5),
        })
        .collect();
        let containers = sqlx::query(
            "SELECT c.id, c.name, s.domain, c.owner_kind, c.owner_id, c.created_at, c.updated_at \
             FROM containers c JOIN sites s ON s.name = c.site WHERE c.status <> 'deleted' ORDER BY c.name",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| ContainerAccess {
            id: r.get(0),
            name: r.get(1),
            domain: r.get(2),
            owner: crate::provision::model::Owner::from_parts(&r.get::<String, _>(3), r.get(4)),
            collaborators: Vec::new(),
            created_at: r.get(5),
            updated_at: r.get(6),
        })
        .collect::<Vec<_>>();
        let mut containers = containers;
        let shared =
            sqlx::query("SELECT container_id, user_id FROM container_collaborators ORDER BY container_id, user_id")
                .fetch_all(&mut *tx)
                .await?;
        attach(&mut containers, shared.iter().map(|r| (r.get(0), r.get(1))), |c| &c.id, |c, u| c.collaborators.push(u));
        tx.commit().await?;
        Ok(DirectoryData { generation, users, groups, service_accounts, containers })
    }

    /// Looks up one user by login name.
    ///
    /// # Errors
    /// Database errors.
    pub async fn user(&self, name: &str) -> StoreResult<Option<User>> {
        let row = sqlx::query(
            "SELECT id, name, uid_number, gid_number, display_name, email, login_shell, \
             home_directory, password_hash, disabled, created_at, updated_at \
             FROM users WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut user = user_from_row(&row);
        user.ssh_keys = sqlx::query("SELECT public_key FROM ssh_keys WHERE user_id = ? ORDER BY created_at")
            .bind(&user.id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(Some(user))
    }

    /// The newest `limit` audit entries, newest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn audit_tail(&self, limit: i64) -> StoreResult<Vec<AuditEntry>> {
        let rows =
            sqlx::query("SELECT at, actor, action, target, source, detail FROM audit_log ORDER BY id DESC LIMIT ?")
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                at: r.get(0),
                actor: r.get(1),
                action: r.get(2),
                target: r.get(3),
                source: r.get(4),
                detail: r.get(5),
            })
            .collect())
    }

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Appends child rows (sorted by parent id) to their parents.
fn attach<P, F, G>(parents: &mut [P], rows: impl Iterator<Item = (String, String)>, id: F, push: G)
where
    F: Fn(&P) -> &String,
    G: Fn(&mut P, String),
{
    let index: std::collections::HashMap<String, usize> =
        parents.iter().enumerate().map(|(i, p)| (id(p).clone(), i)).collect();
    for (parent, child) in rows {
        if let Some(&i) = index.get(&parent) {
            push(&mut parents[i], child);
        }
    }
}

fn user_from_row(r: &sqlx::sqlite::SqliteRow) -> User {
    User {
        id: r.get(0),
        name: r.get(1),
        uid_number: r.get(2),
        gid_number: r.get(3),
        display_name: r.get(4),
        email: r.get(5),
        login_shell: r.get(6),
        home_directory: r.get(7),
        ssh_keys: Vec::new(),
        password_hash: r.get(8),
        disabled: r.get(9),
        created_at: r.get(10),
        updated_at: r.get(11),
    }
}

fn group_from_row(r: &sqlx::sqlite::SqliteRow) -> Group {
    Group {
        id: r.get(0),
        name: r.get(1),
        gid_number: r.get(2),
        description: r.get(3),
        member_ids: Vec::new(),
        created_at: r.get(4),
        updated_at: r.get(5),
    }
}
