//! Store access for the OpenID provider: signing keys and clients.

use sqlx::Row;

use super::{Store, StoreError, StoreResult, WriteTx};
use crate::model::{Actor, Kind, OidcClient, SigningKeyRecord, validate_name};

fn split(list: &str) -> Vec<String> {
    list.split('\n').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

fn client_from_row(r: &sqlx::sqlite::SqliteRow) -> OidcClient {
    OidcClient {
        id: r.get(0),
        name: r.get(1),
        secret_hash: r.get(2),
        redirect_uris: split(&r.get::<String, _>(3)),
        post_logout_redirect_uris: split(&r.get::<String, _>(4)),
        allowed_groups: split(&r.get::<String, _>(5)),
        created_at: r.get(6),
        updated_at: r.get(7),
        consent_required: r.get(8),
        // The column's CHECK constraint admits only the names SigningAlg parses.
        id_token_signed_response_alg: r.get::<String, _>("id_token_signed_response_alg").parse().unwrap_or_default(),
        backchannel_logout_uri: r.get("backchannel_logout_uri"),
        mfa_required: r.get("mfa_required"),
    }
}

const CLIENT_COLUMNS: &str = "id, name, secret_hash, redirect_uris, post_logout_redirect_uris, allowed_groups, \
     created_at, updated_at, consent_required, id_token_signed_response_alg, backchannel_logout_uri, mfa_required";

impl Store {
    /// Every registered client, by name.
    ///
    /// # Errors
    /// Database errors.
    pub async fn oidc_clients(&self) -> StoreResult<Vec<OidcClient>> {
        let rows = sqlx::query(&format!("SELECT {CLIENT_COLUMNS} FROM oidc_clients ORDER BY name"))
            .fetch_all(self.pool())
            .await?;
        Ok(rows.iter().map(client_from_row).collect())
    }

    /// One client by name (`client_id`).
    ///
    /// # Errors
    /// Database errors.
    pub async fn oidc_client(&self, name: &str) -> StoreResult<Option<OidcClient>> {
        let row = sqlx::query(&format!("SELECT {CLIENT_COLUMNS} FROM oidc_clients WHERE name = ?"))
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(client_from_row))
    }

    /// Every signing key, newest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        let rows = sqlx::query(
            "SELECT kid, alg, private_key, public_jwk, created_at, retired_at FROM signing_keys \
             ORDER BY created_at DESC, kid DESC",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| SigningKeyRecord {
                kid: r.get(0),
                alg: r.get(1),
                private_key: r.get(2),
                public_jwk: r.get(3),
                created_at: r.get(4),
                retired_at: r.get(5),
            })
            .collect())
    }
}

impl WriteTx {
    /// Stores a new signing key and retires the active keys of its algorithm
    /// (keys of other algorithms keep signing).
    ///
    /// # Errors
    /// Database errors.
    pub async fn add_signing_key(&mut self, key: &SigningKeyRecord, actor: &Actor) -> StoreResult<()> {
        sqlx::query("UPDATE signing_keys SET retired_at = ? WHERE retired_at IS NULL AND alg = ?")
            .bind(key.created_at)
            .bind(&key.alg)
            .execute(self.conn())
            .await?;
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, private_key, public_jwk, created_at, retired_at) \
             VALUES (?, ?, ?, ?, ?, NULL)",
        )
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(&key.private_key)
        .bind(&key.public_jwk)
        .bind(key.created_at)
        .execute(self.conn())
        .await?;
        self.audit(actor, "oidc.key.add", &key.kid, &key.alg).await
    }

    /// Registers a client.
    ///
    /// # Errors
    /// Invalid or duplicate name, or an invalid redirect or back-channel logout URI.
    pub async fn add_oidc_client(&mut self, client: &OidcClient, actor: &Actor) -> StoreResult<()> {
        validate_name(Kind::OidcClient, &client.name).map_err(StoreError::Invalid)?;
        for uri in client.redirect_uris.iter().chain(&client.post_logout_redirect_uris) {
            check_redirect_uri(uri)?;
        }
        if let Some(uri) = &client.backchannel_logout_uri {
            check_backchannel_logout_uri(uri)?;
        }
        let exists = sqlx::query("SELECT 1 FROM oidc_clients WHERE name = ?")
            .bind(&client.name)
            .fetch_optional(self.conn())
            .await?;
        if exists.is_some() {
            return Err(StoreError::Duplicate(Kind::OidcClient, client.name.clone()));
        }
        sqlx::query(&format!(
            "INSERT INTO oidc_clients ({CLIENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&client.id)
        .bind(&client.name)
        .bind(&client.secret_hash)
        .bind(client.redirect_uris.join("\n"))
        .bind(client.post_logout_redirect_uris.join("\n"))
        .bind(client.allowed_groups.join("\n"))
        .bind(client.created_at)
        .bind(client.updated_at)
        .bind(client.consent_required)
        .bind(client.id_token_signed_response_alg.as_str())
        .bind(&client.backchannel_logout_uri)
        .bind(client.mfa_required)
        .execute(self.conn())
        .await?;
        self.audit(actor, "oidc.client.add", &client.name, "").await
    }

    /// Replaces a confidential client's secret hash.
    ///
    /// # Errors
    /// Unknown client, or a public client (which has no secret).
    pub async fn set_oidc_client_secret_hash(&mut self, name: &str, hash: &str, actor: &Actor) -> StoreResult<()> {
        let done = sqlx::query("UPDATE oidc_clients SET secret_hash = ? WHERE name = ? AND secret_hash IS NOT NULL")
            .bind(hash)
            .bind(name)
            .execute(self.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Invalid(format!("no confidential client named {name:?}")));
        }
        self.audit(actor, "oidc.client.rotate_secret", name, "").await
    }

    /// Sets whether everyone signing in to the client needs a second factor.
    ///
    /// # Errors
    /// Unknown client.
    pub async fn set_oidc_client_mfa(&mut self, name: &str, required: bool, actor: &Actor) -> StoreResult<()> {
        let done = sqlx::query("UPDATE oidc_clients SET mfa_required = ?, updated_at = ? WHERE name = ?")
            .bind(required)
            .bind(self.now())
            .bind(name)
            .execute(self.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(Kind::OidcClient, name.to_string()));
        }
        let policy = if required { "required" } else { "by-group" };
        self.audit(actor, "oidc.client.mfa", name, policy).await
    }

    /// Deletes a client.
    ///
    /// # Errors
    /// Unknown client.
    pub async fn delete_oidc_client(&mut self, name: &str, actor: &Actor) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM oidc_clients WHERE name = ?").bind(name).execute(self.conn()).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(Kind::OidcClient, name.to_string()));
        }
        self.audit(actor, "oidc.client.delete", name, "").await
    }
}

/// Redirect URIs are absolute https URLs (http only for loopback hosts),
/// without fragments; they are later matched exactly.
fn check_redirect_uri(uri: &str) -> StoreResult<()> {
    let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"];
    let scheme_ok = uri.starts_with("https://")
        || loopback.iter().any(|p| uri.strip_prefix(p).is_some_and(|r| r.is_empty() || r.starts_with([':', '/'])));
    if !scheme_ok || uri.contains('#') || uri.len() > 2048 || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StoreError::Invalid(format!(
            "invalid redirect URI {uri:?}: use an absolute https:// URL (http:// only on loopback), without a fragment"
        )));
    }
    Ok(())
}

/// A back-channel logout URI is an absolute http or https URL with a host,
/// without credentials or a fragment (OIDC Back-Channel Logout 1.0 §2.2).
/// Unlike redirect URIs, plain http may go to any host: the provider calls
/// it server to server (no browser is sent there), and a logout token is
/// signed and can only end a session at that client.
fn check_backchannel_logout_uri(uri: &str) -> StoreResult<()> {
    let rest = uri.strip_prefix("https://").or_else(|| uri.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', '?']).next().unwrap_or(""));
    let host_ok = host.is_some_and(|h| !h.is_empty() && !h.starts_with(':') && !h.contains('@'));
    if !host_ok || uri.contains('#') || uri.len() > 2048 || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StoreError::Invalid(format!(
            "invalid back-channel logout URI {uri:?}: use an absolute http:// or https:// URL with a host, without a fragment"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backchannel_logout_uris() {
        for ok in ["https://app.example.org/bc", "http://10.0.0.5:8080/logout?x=1", "http://localhost"] {
            assert!(check_backchannel_logout_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://app.example.org/bc",
            "/relative",
            "app.example.org/bc",
            "https://",
            "https:///path",
            "https://:443/x",
            "https://app.example.org/bc#frag",
            "https://user:pw@app.example.org/bc",
            "https://app.example.org/b c",
        ] {
            let e = check_backchannel_logout_uri(bad).expect_err(bad).to_string();
            assert!(e.contains("back-channel logout URI"), "{e}");
        }
    }
}
