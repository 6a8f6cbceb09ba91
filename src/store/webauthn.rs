//! WebAuthn credentials (security keys and passkeys) as stored: the
//! credential itself is an opaque JSON text that `mfa/webauthn.rs` writes and
//! reads (this module names no webauthn type). None of it changes the
//! directory, so these writes bypass [`super::WriteTx`] (no snapshot
//! rebuild); callers write the audit rows ([`Store::audit_event`]).

use sqlx::Row;

use super::mfa::FactorTable;
use super::{Store, StoreError, StoreResult};

/// One registered WebAuthn credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebauthnCredential {
    /// Our id for it (forms name this, never the credential id).
    pub id: String,
    pub user_id: String,
    /// The authenticator's credential id, base64url without padding; unique
    /// across all users.
    pub credential_id: String,
    /// The serialised credential (public key, counter, flags), JSON.
    pub credential: String,
    /// The user's label for it.
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

const COLUMNS: &str = "id, user_id, credential_id, credential, name, created_at, last_used_at";

fn from_row(r: &sqlx::sqlite::SqliteRow) -> WebauthnCredential {
    WebauthnCredential {
        id: r.get(0),
        user_id: r.get(1),
        credential_id: r.get(2),
        credential: r.get(3),
        name: r.get(4),
        created_at: r.get(5),
        last_used_at: r.get(6),
    }
}

impl Store {
    /// Adds a credential.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] when the credential id is already registered
    /// (to anyone); other database errors.
    pub async fn add_webauthn_credential(&self, c: &WebauthnCredential) -> StoreResult<()> {
        let done = sqlx::query(&format!(
            "INSERT INTO mfa_webauthn ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (credential_id) DO NOTHING"
        ))
        .bind(&c.id)
        .bind(&c.user_id)
        .bind(&c.credential_id)
        .bind(&c.credential)
        .bind(&c.name)
        .bind(c.created_at)
        .bind(c.last_used_at)
        .execute(self.pool())
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Invalid("this security key is already registered".into()));
        }
        Ok(())
    }

    /// A user's credentials, oldest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn webauthn_credentials_of(&self, user_id: &str) -> StoreResult<Vec<WebauthnCredential>> {
        let rows =
            sqlx::query(&format!("SELECT {COLUMNS} FROM mfa_webauthn WHERE user_id = ? ORDER BY created_at, id"))
                .bind(user_id)
                .fetch_all(self.pool())
                .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// How many credentials a user has.
    ///
    /// # Errors
    /// Database errors.
    pub async fn webauthn_count(&self, user_id: &str) -> StoreResult<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM mfa_webauthn WHERE user_id = ?")
            .bind(user_id)
            .fetch_one(self.pool())
            .await?;
        Ok(row.get(0))
    }

    /// One of `user_id`'s credentials by our id.
    ///
    /// # Errors
    /// Database errors.
    pub async fn webauthn_credential(&self, user_id: &str, id: &str) -> StoreResult<Option<WebauthnCredential>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM mfa_webauthn WHERE id = ? AND user_id = ?"))
            .bind(id)
            .bind(user_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(from_row))
    }

    /// Records a sign-in with a credential: its rewritten serialised form
    /// (the counter moved) if any, and the time.
    ///
    /// # Errors
    /// Database errors.
    pub async fn webauthn_used(&self, id: &str, credential: Option<&str>, now: i64) -> StoreResult<()> {
        sqlx::query("UPDATE mfa_webauthn SET credential = COALESCE(?, credential), last_used_at = ? WHERE id = ?")
            .bind(credential)
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Renames one of `user_id`'s credentials; false if there is no such one.
    ///
    /// # Errors
    /// Database errors.
    pub async fn rename_webauthn_credential(&self, user_id: &str, id: &str, name: &str) -> StoreResult<bool> {
        self.rename_factor(FactorTable::Webauthn, user_id, id, name).await
    }

    /// Removes one of `user_id`'s credentials; false if there is no such one.
    ///
    /// # Errors
    /// Database errors.
    pub async fn remove_webauthn_credential(&self, user_id: &str, id: &str) -> StoreResult<bool> {
        self.remove_factor(FactorTable::Webauthn, user_id, id).await
    }

    /// Removes every credential of a user (admin reset); how many went.
    ///
    /// # Errors
    /// Database errors.
    pub async fn remove_webauthn_credentials_of(&self, user_id: &str) -> StoreResult<u64> {
        self.remove_factors_of(FactorTable::Webauthn, user_id).await
    }
}
