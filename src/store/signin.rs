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
    /// The sign-in session's public id, for the ID token's `sid`.
    pub sid: Option<String>,
    /// How the user authenticated (RFC 8176 values, space-separated), for
    /// the ID token's `amr`.
    pub amr: Option<String>,
}

/// A live sign-in session, as stored.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub user_id: String,
    pub auth_time: i64,
    /// The public session id (`sid` in ID and logout tokens); unrelated to
    /// the cookie value.
    pub sid: String,
    /// How the session was authenticated (RFC 8176 values, space-separated):
    /// `pwd`, or with a second factor e.g. `pwd otp mfa`.
    pub amr: String,
}

/// A sign-in session that was just ended, and whom to tell.
#[derive(Debug, Clone)]
pub struct EndedSession {
    pub user_id: String,
    pub sid: String,
    /// The clients the session issued authorization codes to.
    pub clients: Vec<String>,
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
        sid: &str,
        auth_time: i64,
        expires_at: i64,
        amr: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO web_sessions (id_hash, user_id, sid, auth_time, expires_at, amr) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(id_hash)
        .bind(user_id)
        .bind(sid)
        .bind(auth_time)
        .bind(expires_at)
        .bind(amr)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Moves `user_id`'s live session from `old_hash` to a new cookie hash
    /// after they signed in again: new auth time, expiry and `amr`, same
    /// `sid` and clients. Returns the `sid`, or `None` (nothing changed) when the old
    /// session is gone, expired or another user's.
    ///
    /// # Errors
    /// Database errors.
    pub async fn rotate_session(
        &self,
        old_hash: &str,
        new_hash: &str,
        user_id: &str,
        auth_time: i64,
        expires_at: i64,
        amr: &str,
    ) -> StoreResult<Option<String>> {
        // Write first, so the transaction takes SQLite's write lock at once.
        let mut tx = self.pool().begin().await?;
        let moved = sqlx::query(
            "INSERT INTO web_sessions (id_hash, user_id, sid, auth_time, expires_at, amr) \
             SELECT ?, user_id, sid, ?, ?, ? FROM web_sessions WHERE id_hash = ? AND user_id = ? AND expires_at > ? \
             RETURNING sid",
        )
        .bind(new_hash)
        .bind(auth_time)
        .bind(expires_at)
        .bind(amr)
        .bind(old_hash)
        .bind(user_id)
        .bind(auth_time)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = moved else { return Ok(None) };
        sqlx::query("UPDATE session_clients SET session_hash = ? WHERE session_hash = ?")
            .bind(new_hash)
            .bind(old_hash)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM web_sessions WHERE id_hash = ?").bind(old_hash).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Some(row.get(0)))
    }

    /// A live session.
    ///
    /// # Errors
    /// Database errors.
    pub async fn session(&self, id_hash: &str, now: i64) -> StoreResult<Option<LiveSession>> {
        let row =
            sqlx::query("SELECT user_id, auth_time, sid, amr FROM web_sessions WHERE id_hash = ? AND expires_at > ?")
                .bind(id_hash)
                .bind(now)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| LiveSession { user_id: r.get(0), auth_time: r.get(1), sid: r.get(2), amr: r.get(3) }))
    }

    /// Remembers that a session signed in to `client` (for back-channel logout).
    ///
    /// # Errors
    /// Database errors (also an unknown session or client).
    pub async fn add_session_client(&self, id_hash: &str, client: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO session_clients (session_hash, client_name) VALUES (?, ?) ON CONFLICT DO NOTHING")
            .bind(id_hash)
            .bind(client)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Ends a session (only if it is `owner`'s, when given) and returns what
    /// it was, with the clients it signed in to; `None` if there was none.
    /// Of two concurrent calls, only one gets the session.
    ///
    /// # Errors
    /// Database errors.
    pub async fn end_session(&self, id_hash: &str, owner: Option<&str>) -> StoreResult<Option<EndedSession>> {
        // Read the clients first: deleting the session cascades to them.
        let clients =
            sqlx::query("SELECT client_name FROM session_clients WHERE session_hash = ? ORDER BY client_name")
                .bind(id_hash)
                .fetch_all(self.pool())
                .await?;
        let ended = sqlx::query(
            "DELETE FROM web_sessions WHERE id_hash = ? AND (? IS NULL OR user_id = ?) RETURNING user_id, sid",
        )
        .bind(id_hash)
        .bind(owner)
        .bind(owner)
        .fetch_optional(self.pool())
        .await?;
        Ok(ended.map(|r| EndedSession {
            user_id: r.get(0),
            sid: r.get(1),
            clients: clients.iter().map(|c| c.get(0)).collect(),
        }))
    }

    /// Stores a new authorization code under its hash.
    ///
    /// # Errors
    /// Database errors.
    pub async fn insert_code(&self, code_hash: &str, grant: &CodeGrant) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO auth_codes (code_hash, client_name, user_id, redirect_uri, scope, nonce, code_challenge, \
             auth_time, expires_at, sid, amr, used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, FALSE)",
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
        .bind(&grant.sid)
        .bind(&grant.amr)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Marks a code used, starting token family `new_family` for what it
    /// issues, and returns it: `None` if it does not exist, else
    /// `Some((grant, family, first_use))`. On a second use `first_use` is
    /// false and `family` is the one the first use started (to revoke).
    ///
    /// # Errors
    /// Database errors.
    pub async fn redeem_code(
        &self,
        code_hash: &str,
        new_family: &str,
    ) -> StoreResult<Option<(CodeGrant, String, bool)>> {
        // One statement claims the code: no read-then-write transaction,
        // which SQLite would refuse under concurrent writers (SQLITE_BUSY).
        const COLUMNS: &str = "client_name, user_id, redirect_uri, scope, nonce, code_challenge, auth_time, expires_at, sid, family_id, amr";
        let claimed = sqlx::query(&format!(
            "UPDATE auth_codes SET used = TRUE, family_id = ? WHERE code_hash = ? AND used = FALSE RETURNING {COLUMNS}"
        ))
        .bind(new_family)
        .bind(code_hash)
        .fetch_optional(self.pool())
        .await?;
        let (row, first_use) = match claimed {
            Some(r) => (r, true),
            None => {
                let spent = sqlx::query(&format!("SELECT {COLUMNS} FROM auth_codes WHERE code_hash = ?"))
                    .bind(code_hash)
                    .fetch_optional(self.pool())
                    .await?;
                match spent {
                    Some(r) => (r, false),
                    None => return Ok(None),
                }
            }
        };
        let grant = CodeGrant {
            client_name: row.get(0),
            user_id: row.get(1),
            redirect_uri: row.get(2),
            scope: row.get(3),
            nonce: row.get(4),
            code_challenge: row.get(5),
            auth_time: row.get(6),
            expires_at: row.get(7),
            sid: row.get(8),
            amr: row.get(10),
        };
        let family: Option<String> = row.get(9);
        Ok(Some((grant, family.unwrap_or_default(), first_use)))
    }
}

/// A refresh token as stored.
#[derive(Debug, Clone)]
pub struct RefreshGrant {
    pub family_id: String,
    pub client_name: String,
    pub user_id: String,
    pub scope: String,
    pub auth_time: i64,
    pub expires_at: i64,
    /// The sign-in session the family started in, for the ID token's `sid`.
    pub sid: Option<String>,
}

/// The columns [`refresh_from_row`] reads, in order.
const REFRESH_COLUMNS: &str = "family_id, client_name, user_id, scope, auth_time, expires_at, sid";

fn refresh_from_row(r: &sqlx::sqlite::SqliteRow) -> RefreshGrant {
    RefreshGrant {
        family_id: r.get(0),
        client_name: r.get(1),
        user_id: r.get(2),
        scope: r.get(3),
        auth_time: r.get(4),
        expires_at: r.get(5),
        sid: r.get(6),
    }
}

/// What redeeming a refresh token found.
#[derive(Debug)]
pub enum RefreshOutcome {
    Unknown,
    /// Spent before, or its family is revoked: the family is now revoked.
    Reused(RefreshGrant),
    Fresh(RefreshGrant),
}

impl Store {
    /// Stores a new refresh token.
    ///
    /// # Errors
    /// Database errors.
    pub async fn insert_refresh(&self, token_hash: &str, g: &RefreshGrant) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, client_name, user_id, scope, auth_time, expires_at, \
             sid, used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, FALSE)",
        )
        .bind(token_hash)
        .bind(&g.family_id)
        .bind(&g.client_name)
        .bind(&g.user_id)
        .bind(&g.scope)
        .bind(g.auth_time)
        .bind(g.expires_at)
        .bind(&g.sid)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Spends a refresh token. A second use, or any use after its family was
    /// revoked, revokes the family and reports [`RefreshOutcome::Reused`].
    ///
    /// # Errors
    /// Database errors.
    pub async fn redeem_refresh(&self, token_hash: &str, now: i64) -> StoreResult<RefreshOutcome> {
        // Claim with one statement (see `redeem_code`); only a miss reads again.
        let claimed = sqlx::query(&format!(
            "UPDATE refresh_tokens SET used = TRUE WHERE token_hash = ? AND used = FALSE \
             AND NOT EXISTS (SELECT 1 FROM revoked_families f WHERE f.family_id = refresh_tokens.family_id) \
             RETURNING {REFRESH_COLUMNS}"
        ))
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await?;
        if let Some(r) = claimed {
            return Ok(RefreshOutcome::Fresh(refresh_from_row(&r)));
        }
        let known = sqlx::query(&format!("SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE token_hash = ?"))
            .bind(token_hash)
            .fetch_optional(self.pool())
            .await?;
        let Some(r) = known else { return Ok(RefreshOutcome::Unknown) };
        let grant = refresh_from_row(&r);
        self.revoke_family(&grant.family_id, now).await?;
        Ok(RefreshOutcome::Reused(grant))
    }

    /// A live (unspent, unexpired, unrevoked) refresh token, for introspection.
    ///
    /// # Errors
    /// Database errors.
    pub async fn live_refresh(&self, token_hash: &str, now: i64) -> StoreResult<Option<RefreshGrant>> {
        let row = sqlx::query(&format!(
            "SELECT {REFRESH_COLUMNS} FROM refresh_tokens t \
             WHERE token_hash = ? AND NOT used AND expires_at > ? \
             AND NOT EXISTS (SELECT 1 FROM revoked_families f WHERE f.family_id = t.family_id)"
        ))
        .bind(token_hash)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(refresh_from_row))
    }

    /// Revokes every token of a family.
    ///
    /// # Errors
    /// Database errors.
    pub async fn revoke_family(&self, family_id: &str, now: i64) -> StoreResult<()> {
        sqlx::query("INSERT INTO revoked_families (family_id, revoked_at) VALUES (?, ?) ON CONFLICT DO NOTHING")
            .bind(family_id)
            .bind(now)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Whether a family was revoked.
    ///
    /// # Errors
    /// Database errors.
    pub async fn family_revoked(&self, family_id: &str) -> StoreResult<bool> {
        let row = sqlx::query("SELECT 1 FROM revoked_families WHERE family_id = ?")
            .bind(family_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.is_some())
    }
}

impl Store {
    /// Whether `user_id` already consented to `client` for every scope in `scope`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn has_consent(&self, user_id: &str, client: &str, scope: &str) -> StoreResult<bool> {
        let row = sqlx::query("SELECT scope FROM consents WHERE user_id = ? AND client_name = ?")
            .bind(user_id)
            .bind(client)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.is_some_and(|r| {
            let granted: String = r.get(0);
            scope.split(' ').filter(|s| !s.is_empty()).all(|s| granted.split(' ').any(|g| g == s))
        }))
    }

    /// Records (or widens) a user's consent to a client.
    ///
    /// # Errors
    /// Database errors.
    pub async fn grant_consent(&self, user_id: &str, client: &str, scope: &str, now: i64) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO consents (user_id, client_name, scope, granted_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (user_id, client_name) DO UPDATE SET scope = excluded.scope, granted_at = excluded.granted_at",
        )
        .bind(user_id)
        .bind(client)
        .bind(scope)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

/// One sign-in session, as listed on the account page.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The stored hash; safe to show the session's owner as an identifier.
    pub id_hash: String,
    pub auth_time: i64,
    pub expires_at: i64,
}

impl Store {
    /// The live sessions of a user, newest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn sessions_of(&self, user_id: &str, now: i64) -> StoreResult<Vec<SessionInfo>> {
        let rows = sqlx::query(
            "SELECT id_hash, auth_time, expires_at FROM web_sessions WHERE user_id = ? AND expires_at > ? \
             ORDER BY auth_time DESC",
        )
        .bind(user_id)
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(|r| SessionInfo { id_hash: r.get(0), auth_time: r.get(1), expires_at: r.get(2) }).collect())
    }
}

/// How long spent or expired codes are kept after expiry, so a late reuse
/// is still recognised (and revokes what the first use produced).
const CODE_KEEP_SECS: i64 = 3600;

impl Store {
    /// Deletes sign-in state nobody can use any more: expired sessions (with
    /// their client lists), codes an hour past expiry, expired refresh
    /// tokens, and revocation marks older than any token they could stop.
    /// Returns how many rows went.
    ///
    /// # Errors
    /// Database errors.
    pub async fn prune_expired(&self, now: i64) -> StoreResult<u64> {
        let mut gone = 0;
        let family_horizon = now - crate::oidc::REFRESH_TOKEN_SECS - 24 * 3600;
        let statements: [(&str, i64); 4] = [
            ("DELETE FROM web_sessions WHERE expires_at <= ?", now),
            ("DELETE FROM auth_codes WHERE expires_at <= ?", now - CODE_KEEP_SECS),
            ("DELETE FROM refresh_tokens WHERE expires_at <= ?", now),
            ("DELETE FROM revoked_families WHERE revoked_at <= ?", family_horizon),
        ];
        for (sql, cutoff) in statements {
            gone += sqlx::query(sql).bind(cutoff).execute(self.pool()).await?.rows_affected();
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DirectoryConfig;
    use crate::model::Actor;
    use crate::store::NewUser;

    /// A session keeps its sid and clients when the same user signs in again;
    /// ending it returns them once; another user's session cannot be taken over.
    #[tokio::test]
    async fn sessions_rotate_and_end_with_their_clients() {
        let store = Store::open_in_memory().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        let config = DirectoryConfig::default();
        let actor = Actor::system();
        let alice = tx.add_user(NewUser { name: "alice".into(), ..Default::default() }, &config, &actor).await.unwrap();
        let bob = tx.add_user(NewUser { name: "bob".into(), ..Default::default() }, &config, &actor).await.unwrap();
        tx.commit().await.unwrap();
        for name in ["wiki", "chat"] {
            sqlx::query("INSERT INTO oidc_clients (id, name, created_at, updated_at) VALUES (?, ?, 0, 0)")
                .bind(name)
                .bind(name)
                .execute(store.pool())
                .await
                .unwrap();
        }
        store.insert_session("h1", &alice.id, "sid-1", 10, 100, "pwd").await.unwrap();
        store.add_session_client("h1", "wiki").await.unwrap();
        store.add_session_client("h1", "wiki").await.unwrap();
        store.add_session_client("h1", "chat").await.unwrap();
        assert_eq!(store.rotate_session("h1", "h2", &bob.id, 20, 200, "pwd otp mfa").await.unwrap(), None, "not bob's");
        assert_eq!(
            store.rotate_session("h1", "h2", &alice.id, 20, 200, "pwd otp mfa").await.unwrap().as_deref(),
            Some("sid-1")
        );
        assert!(store.session("h1", 20).await.unwrap().is_none(), "the old cookie is dead");
        let live = store.session("h2", 20).await.unwrap().unwrap();
        assert_eq!((live.user_id.as_str(), live.auth_time, live.sid.as_str()), (alice.id.as_str(), 20, "sid-1"));
        assert_eq!(live.amr, "pwd otp mfa", "the new sign-in's methods");
        assert!(store.end_session("h2", Some(&bob.id)).await.unwrap().is_none(), "only the owner may end it");
        let ended = store.end_session("h2", None).await.unwrap().unwrap();
        assert_eq!((ended.user_id.as_str(), ended.sid.as_str()), (alice.id.as_str(), "sid-1"));
        assert_eq!(ended.clients, ["chat", "wiki"]);
        assert!(store.end_session("h2", None).await.unwrap().is_none(), "ended once");
    }

    /// Pruning removes only what has expired.
    #[tokio::test]
    async fn prune_keeps_live_state() {
        let store = Store::open_in_memory().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        let config = DirectoryConfig::default();
        let alice = tx
            .add_user(NewUser { name: "alice".into(), ..Default::default() }, &config, &Actor::system())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        store.insert_session("old", &alice.id, "sid-old", 0, 100, "pwd").await.unwrap();
        store.insert_session("new", &alice.id, "sid-new", 0, 10_000, "pwd").await.unwrap();
        let grant = |expires_at| RefreshGrant {
            family_id: "fam".into(),
            client_name: "c".into(),
            user_id: alice.id.clone(),
            scope: "openid".into(),
            auth_time: 0,
            expires_at,
            sid: None,
        };
        store.insert_refresh("dead", &grant(100)).await.unwrap();
        store.insert_refresh("live", &grant(10_000)).await.unwrap();
        store.revoke_family("fam", 0).await.unwrap();
        assert_eq!(store.prune_expired(200).await.unwrap(), 2, "one session, one refresh token");
        assert!(store.session("new", 200).await.unwrap().is_some());
        assert!(store.live_refresh("live", 200).await.unwrap().is_none(), "still revoked");
        assert!(store.family_revoked("fam").await.unwrap(), "revocation outlives the tokens it stops");
        let much_later = 40 * 24 * 3600;
        store.prune_expired(much_later).await.unwrap();
        assert!(!store.family_revoked("fam").await.unwrap(), "old revocations go eventually");
    }

    /// Concurrent redemptions on a file-backed (WAL) store: each token is
    /// claimed exactly once and nothing fails with SQLITE_BUSY.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_redemptions_claim_each_token_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let mut tx = store.begin().await.unwrap();
        let user = tx
            .add_user(
                NewUser { name: "alice".into(), ..Default::default() },
                &DirectoryConfig::default(),
                &Actor::system(),
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let grant = |i: usize| RefreshGrant {
            family_id: format!("fam{i}"),
            client_name: "c".into(),
            user_id: user.id.clone(),
            scope: "openid".into(),
            auth_time: 0,
            expires_at: i64::MAX,
            sid: None,
        };
        for i in 0..32 {
            store.insert_refresh(&format!("t{i}"), &grant(i)).await.unwrap();
        }
        // Every token redeemed twice at once: one Fresh and one Reused each.
        let mut tasks = Vec::new();
        for i in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move { store.redeem_refresh(&format!("t{}", i % 32), 1).await }));
        }
        let (mut fresh, mut reused) = (0, 0);
        for t in tasks {
            match t.await.unwrap().unwrap() {
                RefreshOutcome::Fresh(_) => fresh += 1,
                RefreshOutcome::Reused(_) => reused += 1,
                RefreshOutcome::Unknown => panic!("token lost"),
            }
        }
        assert_eq!((fresh, reused), (32, 32));
        assert!(store.family_revoked("fam0").await.unwrap(), "reuse revokes the family");
    }
}
