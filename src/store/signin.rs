//! Sign-in sessions and authorization codes. These writes are frequent and
//! do not change the directory, so they bypass [`super::WriteTx`] (which
//! bumps the generation and would trigger a snapshot rebuild).

use sqlx::Row;

use super::{Store, StoreResult};

/// A pending authorization code, as stored.
#[derive(Debug, Clone)]
pub struct CodeGrant {
    pub client_name: String,
    pub user_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub auth_time: i64,
    pub expires_at: i64,
}

impl Store {
    /// Records a sign-in session under the hash of its cookie value.
    ///
    /// # Errors
    /// Database errors.
    pub async fn insert_session(
        &self,
        id_hash: &str,
        user_id: &str,
        auth_time: i64,
        expires_at: i64,
    ) -> StoreResult<()> {
        sqlx::query("INSERT INTO web_sessions (id_hash, user_id, auth_time, expires_at) VALUES (?, ?, ?, ?)")
            .bind(id_hash)
            .bind(user_id)
            .bind(auth_time)
            .bind(expires_at)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The (user id, auth time) of a live session.
    ///
    /// # Errors
    /// Database errors.
    pub async fn session(&self, id_hash: &str, now: i64) -> StoreResult<Option<(String, i64)>> {
        let row = sqlx::query("SELECT user_id, auth_time FROM web_sessions WHERE id_hash = ? AND expires_at > ?")
            .bind(id_hash)
            .bind(now)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Ends a session.
    ///
    /// # Errors
    /// Database errors.
    pub async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM web_sessions WHERE id_hash = ?").bind(id_hash).execute(self.pool()).await?;
        Ok(())
    }

    /// Stores a new authorization code under its hash.
    ///
    /// # Errors
    /// Database errors.
    pub async fn insert_code(&self, code_hash: &str, grant: &CodeGrant) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO auth_codes (code_hash, client_name, user_id, redirect_uri, scope, nonce, code_challenge, \
             auth_time, expires_at, used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, FALSE)",
        )
        .bind(code_hash)
        .bind(&grant.client_name)
        .bind(&grant.user_id)
        .bind(&grant.redirect_uri)
        .bind(&grant.scope)
        .bind(&grant.nonce)
        .bind(&grant.code_challenge)
        .bind(grant.auth_time)
        .bind(grant.expires_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Marks a code used and returns it: `Ok(None)` if it does not exist;
    /// `Err`-free `Some((grant, first_use))` otherwise, where `first_use` is
    /// false when the code had already been redeemed.
    ///
    /// # Errors
    /// Database errors.
    pub async fn redeem_code(&self, code_hash: &str) -> StoreResult<Option<(CodeGrant, bool)>> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(
            "SELECT client_name, user_id, redirect_uri, scope, nonce, code_challenge, auth_time, expires_at, used \
             FROM auth_codes WHERE code_hash = ?",
        )
        .bind(code_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let used: bool = r.get(8);
        if !used {
            sqlx::query("UPDATE auth_codes SET used = TRUE WHERE code_hash = ?")
                .bind(code_hash)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let grant = CodeGrant {
            client_name: r.get(0),
            user_id: r.get(1),
            redirect_uri: r.get(2),
            scope: r.get(3),
            nonce: r.get(4),
            code_challenge: r.get(5),
            auth_time: r.get(6),
            expires_at: r.get(7),
        };
        Ok(Some((grant, !used)))
    }
}
