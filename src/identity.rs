//! The identity service: the one place that joins the store, the directory
//! snapshot, password checking and lockout. Protocol front ends (LDAP now,
//! HTTP later) call it; it never names a protocol type.

use std::net::IpAddr;
use std::sync::Arc;

use crate::auth::{Hasher, Lockout, LockoutPolicy, Verdict};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::directory::{Account, AccountKind, Directory, Snapshot, dn};
use crate::model::Actor;
use crate::store::{Store, StoreError, StoreResult};

/// Called after each snapshot swap to hand freed memory back to the OS;
/// set once by the binary (the allocator call needs `unsafe`, which this
/// library forbids).
static RELEASE_MEMORY: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Installs the function run after each snapshot swap (first call wins).
pub fn set_release_memory_hook(hook: fn()) {
    let _ = RELEASE_MEMORY.set(hook);
}

fn release_memory() {
    if let Some(hook) = RELEASE_MEMORY.get() {
        hook();
    }
}

/// Why a bind failed. Clients only ever see "invalid credentials"; this is for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindFailure {
    UnknownDn,
    Locked,
    Disabled,
    NoPassword,
    WrongPassword,
    /// The password was right but the second factor in the same bind
    /// (a TOTP code) was wrong, missing or already used.
    WrongSecondFactor,
    /// The second factor could not be checked (database error).
    SecondFactorUnavailable,
}

/// Shared state of a running server or CLI invocation.
pub struct Identity {
    pub config: Arc<Config>,
    pub store: Store,
    pub directory: Directory,
    pub hasher: Hasher,
    pub lockout: Lockout,
    pub clock: SharedClock,
    /// Second factors: policy, challenges, TOTP, recovery codes.
    pub mfa: crate::mfa::Mfa,
    /// Verified against when the DN is unknown, so timing does not reveal which accounts exist.
    dummy_hash: String,
}

impl Identity {
    /// Opens the store and builds the first snapshot.
    ///
    /// # Errors
    /// The store cannot be opened or read.
    pub async fn open(config: Arc<Config>, store: Store, clock: SharedClock) -> StoreResult<Arc<Self>> {
        let data = store.load_directory().await?;
        let snapshot = Snapshot::build_with_admins(&data, &config.ldap.base_dn, &config.directory.admin_group);
        drop(data);
        release_memory();
        let hasher = Hasher::new(config.auth.hash_concurrency);
        let dummy_hash = hasher.hash("portcullis-dummy-password".into()).await.map_err(StoreError::Invalid)?;
        let a = &config.auth;
        let lockout = Lockout::new(LockoutPolicy {
            account_max_failures: a.max_failures.max(1),
            account_lock_secs: i64::try_from(a.lockout_secs).unwrap_or(i64::MAX),
            source_max_failures: a.source_max_failures.max(1),
            source_lock_secs: i64::try_from(a.source_lockout_secs).unwrap_or(i64::MAX),
        });
        let mfa = crate::mfa::Mfa::new(config.mfa.clone(), store.clone(), Arc::clone(&clock), config.data_dir.clone())
            .with_admin_group(&config.directory.admin_group);
        if let Err(e) = mfa.set_webauthn_issuer(&config.http.issuer()) {
            tracing::warn!(error = %e, "security keys and passkeys (WebAuthn) are unavailable");
        }
        Ok(Arc::new(Self {
            directory: Directory::new(snapshot),
            config,
            store,
            hasher,
            lockout,
            clock,
            mfa,
            dummy_hash,
        }))
    }

    /// Rebuilds the snapshot if the store changed since it was built.
    ///
    /// # Errors
    /// The store cannot be read; the old snapshot stays in force.
    pub async fn reload_if_changed(&self) -> StoreResult<bool> {
        let current = self.directory.load().generation;
        if self.store.generation().await? == current {
            return Ok(false);
        }
        self.reload().await?;
        Ok(true)
    }

    /// Rebuilds the snapshot from the store unconditionally.
    ///
    /// # Errors
    /// The store cannot be read; the old snapshot stays in force.
    pub async fn reload(&self) -> StoreResult<()> {
        let data = self.store.load_directory().await?;
        let base = self.config.ldap.base_dn.clone();
        let admins = self.config.directory.admin_group.clone();
        let snapshot = tokio::task::spawn_blocking(move || Snapshot::build_with_admins(&data, &base, &admins))
            .await
            .map_err(|e| StoreError::Invalid(format!("snapshot build failed: {e}")))?;
        self.directory.replace(snapshot);
        tokio::task::spawn_blocking(release_memory);
        Ok(())
    }

    /// Checks a simple bind. On success with an imported hash, the password
    /// is re-hashed to argon2id and stored.
    ///
    /// # Errors
    /// Why the bind failed (for logs; the client sees invalid credentials).
    pub async fn bind(&self, bind_dn: &str, password: &str, source: Option<IpAddr>) -> Result<Account, BindFailure> {
        let (account, ndn) = self.check_password(bind_dn, password, source).await?;
        self.lockout.record_success(&ndn);
        Ok(account)
    }

    /// Checks a simple bind whose password carries a TOTP code at its end
    /// (`password` + 6 digits, LDAP's fallback second factor). A wrong or
    /// missing code counts as a failed bind for lockout, exactly like a
    /// wrong password, and the caller cannot tell the two apart.
    ///
    /// # Errors
    /// Why the bind failed (for logs; the client sees invalid credentials).
    pub async fn bind_with_totp(
        &self,
        bind_dn: &str,
        password_and_code: &str,
        source: Option<IpAddr>,
    ) -> Result<Account, BindFailure> {
        let (password, code) = match crate::mfa::ldap::split_totp_suffix(password_and_code) {
            Some((password, code)) => (password, Some(code)),
            // Still check the whole value, so a missing code costs the same time.
            None => (password_and_code, None),
        };
        let (account, ndn) = self.check_password(bind_dn, password, source).await?;
        let verified = match code {
            Some(code) => self.mfa.verify_totp(&account.id, code).await.map_err(|e| {
                tracing::error!(user = %account.name, error = %e, "cannot check a TOTP code");
                BindFailure::SecondFactorUnavailable
            })?,
            None => false,
        };
        if !verified {
            self.lockout.record_failure(&ndn, source, self.clock.now());
            return Err(BindFailure::WrongSecondFactor);
        }
        self.lockout.record_success(&ndn);
        Ok(account)
    }

    /// Lockout, lookup and password check; counts failures but leaves the
    /// success to the caller (a second factor may still fail). Returns the
    /// account and its normalised DN.
    async fn check_password(
        &self,
        bind_dn: &str,
        password: &str,
        source: Option<IpAddr>,
    ) -> Result<(Account, String), BindFailure> {
        let now = self.clock.now();
        let ndn = dn::normalize(bind_dn).unwrap_or_default();
        let account = self.directory.load().account(&ndn).cloned();
        if self.lockout.is_locked(&ndn, source, now) {
            return Err(BindFailure::Locked);
        }
        let Some(account) = account else {
            self.hasher.verify(self.dummy_hash.clone(), password.to_string()).await;
            // Unknown DNs count against the address only, so an account
            // created later does not start out locked.
            self.lockout.record_source_failure(source, now);
            return Err(BindFailure::UnknownDn);
        };
        if account.disabled {
            return Err(BindFailure::Disabled);
        }
        let Some(stored) = account.password_hash.clone() else {
            return Err(BindFailure::NoPassword);
        };
        match self.hasher.verify(stored.clone(), password.to_string()).await {
            Verdict::Mismatch => {
                self.lockout.record_failure(&ndn, source, self.clock.now());
                Err(BindFailure::WrongPassword)
            }
            verdict => {
                if verdict == Verdict::MatchNeedsRehash && account.kind == AccountKind::User {
                    if let Err(e) = self.rehash(&account.name, &stored, password).await {
                        tracing::warn!(user = %account.name, error = %e, "could not upgrade password hash");
                    }
                }
                Ok((account, ndn))
            }
        }
    }

    async fn rehash(&self, user: &str, old: &str, password: &str) -> StoreResult<()> {
        let new = self.hasher.hash(password.to_string()).await.map_err(StoreError::Invalid)?;
        let mut tx = self.store.begin().await?;
        tx.upgrade_user_password_hash(user, old, &new).await?;
        tx.commit().await?;
        // No reload here: the refresher picks the change up within 250 ms,
        // and until then the old hash still verifies (a second upgrade
        // attempt finds the hash changed and does nothing).
        Ok(())
    }

    /// Sets the password of `account` (hashing it first) and reloads.
    ///
    /// # Errors
    /// The password is unacceptable or the store fails.
    pub async fn set_password(&self, account: &Account, password: &str, actor: &Actor) -> StoreResult<()> {
        check_new_password(password).map_err(StoreError::Invalid)?;
        let hash = self.hasher.hash(password.to_string()).await.map_err(StoreError::Invalid)?;
        let mut tx = self.store.begin().await?;
        match account.kind {
            AccountKind::User => tx.set_user_password_hash(&account.name, &hash, actor).await?,
            AccountKind::Service => tx.set_service_account_password_hash(&account.name, &hash, actor).await?,
        }
        tx.commit().await?;
        self.reload().await
    }
}

/// Shortest password accepted for new passwords.
pub const MIN_PASSWORD_LEN: usize = 8;

/// Checks a new password's length.
///
/// # Errors
/// A message saying what is wrong.
pub fn check_new_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_LEN || password.len() > crate::auth::password::MAX_PASSWORD_LEN {
        return Err(format!(
            "password must be {MIN_PASSWORD_LEN} to {} bytes long",
            crate::auth::password::MAX_PASSWORD_LEN
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::NewUser;

    async fn identity(clock: ManualClock) -> Arc<Identity> {
        let mut config = Config::default();
        config.auth.max_failures = 3;
        config.auth.lockout_secs = 60;
        let store = Store::open_in_memory().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        let hash = crate::auth::password::hash_password("right-password").unwrap();
        let new = NewUser { name: "alice".into(), password_hash: Some(hash), ..Default::default() };
        tx.add_user(new, &config.directory, &Actor::system()).await.unwrap();
        let ssha = {
            use base64::Engine;
            use sha1::{Digest, Sha1};
            let mut raw = Sha1::digest(b"old-secretsalt").to_vec();
            raw.extend_from_slice(b"salt");
            format!("{{SSHA}}{}", base64::engine::general_purpose::STANDARD.encode(raw))
        };
        let new = NewUser { name: "imported".into(), password_hash: Some(ssha), ..Default::default() };
        tx.add_user(new, &config.directory, &Actor::system()).await.unwrap();
        tx.commit().await.unwrap();
        Identity::open(Arc::new(config), store, Arc::new(clock)).await.unwrap()
    }

    const ALICE: &str = "uid=alice,ou=people,dc=example,dc=org";

    #[tokio::test]
    async fn lockout_follows_the_injected_clock() {
        let clock = ManualClock::new(1_000);
        let id = identity(clock.clone()).await;
        let ip: IpAddr = [192, 0, 2, 1].into();
        assert!(id.bind(ALICE, "right-password", Some(ip)).await.is_ok());
        for _ in 0..3 {
            assert_eq!(id.bind(ALICE, "wrong", Some(ip)).await.unwrap_err(), BindFailure::WrongPassword);
        }
        // Locked: even the right password fails, from any address, and DN spelling does not matter.
        assert_eq!(
            id.bind("UID=Alice, OU=People,DC=example,DC=org", "right-password", None).await.unwrap_err(),
            BindFailure::Locked
        );
        clock.advance(59);
        assert_eq!(id.bind(ALICE, "right-password", None).await.unwrap_err(), BindFailure::Locked);
        clock.advance(2);
        assert!(id.bind(ALICE, "right-password", None).await.is_ok());
    }

    #[tokio::test]
    async fn disabled_unknown_and_empty() {
        let id = identity(ManualClock::new(0)).await;
        assert_eq!(
            id.bind("uid=nobody,ou=people,dc=example,dc=org", "x", None).await.unwrap_err(),
            BindFailure::UnknownDn
        );
        let mut tx = id.store.begin().await.unwrap();
        tx.set_user_disabled("alice", true, &Actor::system()).await.unwrap();
        tx.commit().await.unwrap();
        assert!(id.reload_if_changed().await.unwrap());
        assert_eq!(id.bind(ALICE, "right-password", None).await.unwrap_err(), BindFailure::Disabled);
        assert!(!id.reload_if_changed().await.unwrap(), "no change, no reload");
    }

    #[tokio::test]
    async fn imported_hash_is_upgraded_on_bind() {
        let id = identity(ManualClock::new(0)).await;
        let dn = "uid=imported,ou=people,dc=example,dc=org";
        assert_eq!(id.bind(dn, "wrong", None).await.unwrap_err(), BindFailure::WrongPassword);
        assert!(id.bind(dn, "old-secret", None).await.is_ok());
        let stored = id.store.user("imported").await.unwrap().unwrap().password_hash.unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{stored}");
        assert!(id.reload_if_changed().await.unwrap());
        assert!(id.bind(dn, "old-secret", None).await.is_ok(), "the new hash verifies");
        let audit = id.store.audit_tail(1).await.unwrap();
        assert_eq!(audit[0].action, "user.password.rehash");
    }
}
