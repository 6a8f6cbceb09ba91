//! Second-factor state: approval devices, enrollment tokens, TOTP secrets,
//! recovery codes and push locks. None of it changes the directory, so these
//! writes bypass [`super::WriteTx`] (no snapshot rebuild); they write their
//! own audit rows.

use sqlx::Row;

use super::{Store, StoreResult};

/// An enrolled approval device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaDevice {
    pub id: String,
    pub user_id: String,
    pub name: String,
    /// P-256 public key, SEC1 uncompressed point, base64url.
    pub public_key: String,
    /// `none` (poll mode), `apns`, `fcm`, `webpush` or `webhook`.
    pub push_kind: String,
    /// Sealed push address, if any.
    pub push_address: Option<String>,
    pub created_at: i64,
    pub last_seen_at: Option<i64>,
}

/// A user's TOTP secret as stored.
#[derive(Debug, Clone)]
pub struct TotpRecord {
    /// Sealed secret bytes.
    pub secret: String,
    pub confirmed: bool,
    pub last_step: i64,
}

/// Per-user second-factor tables whose rows have an `id` and a `name`.
#[derive(Debug, Clone, Copy)]
pub(super) enum FactorTable {
    Devices,
    Webauthn,
}

impl FactorTable {
    /// The table; a fixed name, never input.
    fn name(self) -> &'static str {
        match self {
            FactorTable::Devices => "mfa_devices",
            FactorTable::Webauthn => "mfa_webauthn",
        }
    }
}

const DEVICE_COLUMNS: &str = "id, user_id, name, public_key, push_kind, push_address, created_at, last_seen_at";

fn device_from_row(r: &sqlx::sqlite::SqliteRow) -> MfaDevice {
    MfaDevice {
        id: r.get(0),
        user_id: r.get(1),
        name: r.get(2),
        public_key: r.get(3),
        push_kind: r.get(4),
        push_address: r.get(5),
        created_at: r.get(6),
        last_seen_at: r.get(7),
    }
}

impl Store {
    /// Appends an audit row outside a directory transaction.
    ///
    /// # Errors
    /// Database errors.
    pub async fn audit_event(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        source: &str,
        detail: &str,
        now: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor, action, target, source, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(now)
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(source)
        .bind(detail)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Stores a one-time enrollment token (hashed) for `user_id`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn create_enrollment(&self, token_hash: &str, user_id: &str, expires_at: i64) -> StoreResult<()> {
        sqlx::query("INSERT INTO mfa_enrollments (token_hash, user_id, expires_at) VALUES (?, ?, ?)")
            .bind(token_hash)
            .bind(user_id)
            .bind(expires_at)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Spends an unexpired enrollment token: the user it was for, once.
    ///
    /// # Errors
    /// Database errors.
    pub async fn claim_enrollment(&self, token_hash: &str, now: i64) -> StoreResult<Option<String>> {
        let row = sqlx::query("DELETE FROM mfa_enrollments WHERE token_hash = ? RETURNING user_id, expires_at")
            .bind(token_hash)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.filter(|r| r.get::<i64, _>(1) > now).map(|r| r.get(0)))
    }

    /// Adds a device.
    ///
    /// # Errors
    /// Database errors.
    pub async fn add_device(&self, d: &MfaDevice) -> StoreResult<()> {
        sqlx::query(&format!("INSERT INTO mfa_devices ({DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"))
            .bind(&d.id)
            .bind(&d.user_id)
            .bind(&d.name)
            .bind(&d.public_key)
            .bind(&d.push_kind)
            .bind(&d.push_address)
            .bind(d.created_at)
            .bind(d.last_seen_at)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// One device by id.
    ///
    /// # Errors
    /// Database errors.
    pub async fn device(&self, id: &str) -> StoreResult<Option<MfaDevice>> {
        let row = sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM mfa_devices WHERE id = ?"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(device_from_row))
    }

    /// A user's devices, oldest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn devices_of(&self, user_id: &str) -> StoreResult<Vec<MfaDevice>> {
        let rows =
            sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM mfa_devices WHERE user_id = ? ORDER BY created_at, id"))
                .bind(user_id)
                .fetch_all(self.pool())
                .await?;
        Ok(rows.iter().map(device_from_row).collect())
    }

    /// Renames one of `user_id`'s devices; false if there is no such device.
    ///
    /// # Errors
    /// Database errors.
    pub async fn rename_device(&self, user_id: &str, id: &str, name: &str) -> StoreResult<bool> {
        self.rename_factor(FactorTable::Devices, user_id, id, name).await
    }

    /// Removes one of `user_id`'s devices; false if there is no such device.
    ///
    /// # Errors
    /// Database errors.
    pub async fn remove_device(&self, user_id: &str, id: &str) -> StoreResult<bool> {
        self.remove_factor(FactorTable::Devices, user_id, id).await
    }

    /// Removes every device of a user (admin reset); how many went.
    ///
    /// # Errors
    /// Database errors.
    pub async fn remove_devices_of(&self, user_id: &str) -> StoreResult<u64> {
        self.remove_factors_of(FactorTable::Devices, user_id).await
    }

    /// Renames one of `user_id`'s rows in a factor table.
    pub(super) async fn rename_factor(
        &self,
        table: FactorTable,
        user_id: &str,
        id: &str,
        name: &str,
    ) -> StoreResult<bool> {
        let sql = format!("UPDATE {} SET name = ? WHERE id = ? AND user_id = ?", table.name());
        let done = sqlx::query(&sql).bind(name).bind(id).bind(user_id).execute(self.pool()).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes one of `user_id`'s rows in a factor table.
    pub(super) async fn remove_factor(&self, table: FactorTable, user_id: &str, id: &str) -> StoreResult<bool> {
        let sql = format!("DELETE FROM {} WHERE id = ? AND user_id = ?", table.name());
        let done = sqlx::query(&sql).bind(id).bind(user_id).execute(self.pool()).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes all of a user's rows in a factor table; how many went.
    pub(super) async fn remove_factors_of(&self, table: FactorTable, user_id: &str) -> StoreResult<u64> {
        let sql = format!("DELETE FROM {} WHERE user_id = ?", table.name());
        Ok(sqlx::query(&sql).bind(user_id).execute(self.pool()).await?.rows_affected())
    }

    /// Records that a device talked to us.
    ///
    /// # Errors
    /// Database errors.
    pub async fn touch_device(&self, id: &str, now: i64) -> StoreResult<()> {
        sqlx::query("UPDATE mfa_devices SET last_seen_at = ? WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Forgets a device's push address (the push service said it is gone);
    /// the device falls back to poll mode.
    ///
    /// # Errors
    /// Database errors.
    pub async fn drop_push_address(&self, id: &str) -> StoreResult<()> {
        sqlx::query("UPDATE mfa_devices SET push_kind = 'none', push_address = NULL WHERE id = ?")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Starts (or restarts) TOTP enrollment with a sealed secret, unconfirmed.
    ///
    /// # Errors
    /// Database errors.
    pub async fn set_totp(&self, user_id: &str, sealed_secret: &str, now: i64) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO mfa_totp (user_id, secret, confirmed, last_step, created_at) VALUES (?, ?, FALSE, 0, ?) \
             ON CONFLICT (user_id) DO UPDATE SET secret = excluded.secret, confirmed = FALSE, last_step = 0, \
             created_at = excluded.created_at",
        )
        .bind(user_id)
        .bind(sealed_secret)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A user's TOTP record.
    ///
    /// # Errors
    /// Database errors.
    pub async fn totp(&self, user_id: &str) -> StoreResult<Option<TotpRecord>> {
        let row = sqlx::query("SELECT secret, confirmed, last_step FROM mfa_totp WHERE user_id = ?")
            .bind(user_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|r| TotpRecord { secret: r.get(0), confirmed: r.get(1), last_step: r.get(2) }))
    }

    /// Marks a user's TOTP confirmed.
    ///
    /// # Errors
    /// Database errors.
    pub async fn confirm_totp(&self, user_id: &str) -> StoreResult<()> {
        sqlx::query("UPDATE mfa_totp SET confirmed = TRUE WHERE user_id = ?")
            .bind(user_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Claims time step `step` for a user's TOTP: true only if no code for
    /// this or a later step was accepted before (each code works once).
    ///
    /// # Errors
    /// Database errors.
    pub async fn claim_totp_step(&self, user_id: &str, step: i64) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE mfa_totp SET last_step = ? WHERE user_id = ? AND last_step < ?")
            .bind(step)
            .bind(user_id)
            .bind(step)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes a user's TOTP.
    ///
    /// # Errors
    /// Database errors.
    pub async fn delete_totp(&self, user_id: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM mfa_totp WHERE user_id = ?").bind(user_id).execute(self.pool()).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces a user's recovery codes with these hashes.
    ///
    /// # Errors
    /// Database errors.
    pub async fn replace_recovery_codes(&self, user_id: &str, hashes: &[String]) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = ?").bind(user_id).execute(&mut *tx).await?;
        for h in hashes {
            sqlx::query("INSERT INTO mfa_recovery_codes (user_id, code_hash) VALUES (?, ?)")
                .bind(user_id)
                .bind(h)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Spends a recovery code: true once per code.
    ///
    /// # Errors
    /// Database errors.
    pub async fn use_recovery_code(&self, user_id: &str, code_hash: &str, now: i64) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE mfa_recovery_codes SET used_at = ? WHERE user_id = ? AND code_hash = ? AND used_at IS NULL",
        )
        .bind(now)
        .bind(user_id)
        .bind(code_hash)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// How many unused recovery codes a user has.
    ///
    /// # Errors
    /// Database errors.
    pub async fn recovery_codes_left(&self, user_id: &str) -> StoreResult<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM mfa_recovery_codes WHERE user_id = ? AND used_at IS NULL")
            .bind(user_id)
            .fetch_one(self.pool())
            .await?;
        Ok(row.get(0))
    }

    /// Stops pushes to a user (after a "this wasn't me" report).
    ///
    /// # Errors
    /// Database errors.
    pub async fn lock_push(&self, user_id: &str, reason: &str, now: i64) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO mfa_push_locks (user_id, locked_at, reason) VALUES (?, ?, ?) ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_id)
        .bind(now)
        .bind(reason)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Whether pushes to a user are stopped.
    ///
    /// # Errors
    /// Database errors.
    pub async fn push_locked(&self, user_id: &str) -> StoreResult<bool> {
        let row = sqlx::query("SELECT 1 FROM mfa_push_locks WHERE user_id = ?")
            .bind(user_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.is_some())
    }

    /// Lets pushes reach a user again; false if they were not stopped.
    ///
    /// # Errors
    /// Database errors.
    pub async fn unlock_push(&self, user_id: &str) -> StoreResult<bool> {
        let done =
            sqlx::query("DELETE FROM mfa_push_locks WHERE user_id = ?").bind(user_id).execute(self.pool()).await?;
        Ok(done.rows_affected() == 1)
    }
}
