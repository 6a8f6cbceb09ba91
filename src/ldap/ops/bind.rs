//! Simple bind (RFC 4511 §4.2, RFC 4513 §5). Anonymous binds are allowed but
//! read only the rootDSE; unauthenticated binds (DN without password) are
//! refused; every credential failure is `invalidCredentials`.
//!
//! Users who need a second factor (`mfa::ldap`) get one of: a push approval
//! waited for in this bind, until `mfa.ldap_deadline_secs` after the bind
//! arrived (the connection's task waits; other connections go on), or a TOTP
//! code at the end of the password. A missing factor, a refusal, a denial
//! and no answer in time are all `invalidCredentials`, with the reason in
//! the log only.

use std::net::SocketAddr;
use std::time::Duration;

use ldap3_proto::proto::{LdapBindCred, LdapBindRequest, LdapBindResponse, LdapResult, LdapResultCode};

use crate::ldap::error::{result, success};
use crate::ldap::session::Session;
use crate::mfa::ldap::LdapFactor;

/// Applies a bind request to the session.
pub async fn apply(session: &mut Session, req: &LdapBindRequest) -> LdapBindResponse {
    // A bind always resets the connection to anonymous first (RFC 4511 §4.2.1).
    session.bound = None;
    let res = if req.version != 3 {
        result(LdapResultCode::ProtocolError, "only LDAPv3 is supported")
    } else {
        match &req.cred {
            LdapBindCred::Simple(password) => simple(session, &req.dn, password).await,
            _ => result(LdapResultCode::AuthMethodNotSupported, "only simple binds are supported"),
        }
    };
    LdapBindResponse { res, saslcreds: None }
}

async fn simple(session: &mut Session, dn: &str, password: &str) -> LdapResult {
    if dn.is_empty() && password.is_empty() {
        return success();
    }
    if password.is_empty() {
        return result(LdapResultCode::UnwillingToPerform, "unauthenticated bind (DN without password) is not allowed");
    }
    if !session.tls && session.identity.config.ldap.bind_requires_tls && !session.peer.ip().is_loopback() {
        return result(LdapResultCode::ConfidentialityRequired, "use StartTLS or LDAPS before binding with a password");
    }
    let started = tokio::time::Instant::now();
    let identity = std::sync::Arc::clone(&session.identity);
    let peer = session.peer;
    // Which second factor this account needs decides how the password is read.
    let snapshot = identity.directory.load();
    let factor = match crate::directory::dn::normalize(dn).and_then(|ndn| snapshot.account(&ndn).cloned()) {
        Some(account) => match identity.mfa.ldap_factor(&snapshot, &account, Some(peer.ip())).await {
            Ok(factor) => factor,
            Err(e) => {
                tracing::error!(dn = %dn, %peer, error = %e, "cannot read the second factors; refusing the bind");
                return refused(dn, peer, "second factors unreadable");
            }
        },
        None => LdapFactor::NotRequired,
    };
    drop(snapshot);
    let bound = match factor {
        LdapFactor::TotpSuffix => identity.bind_with_totp(dn, password, Some(peer.ip())).await,
        _ => identity.bind(dn, password, Some(peer.ip())).await,
    };
    let account = match bound {
        Ok(account) => account,
        Err(why) => {
            tracing::info!(dn = %dn, peer = %peer, reason = ?why, "bind failed");
            return invalid();
        }
    };
    let how = match factor {
        LdapFactor::NotRequired => None,
        LdapFactor::TotpSuffix => Some("TOTP code".to_string()),
        LdapFactor::Missing => {
            // Warn: the account cannot log in until it enrolls a factor.
            tracing::warn!(dn = %account.dn, %peer, reason = "MFA required but no factor enrolled", "bind failed");
            return invalid();
        }
        LdapFactor::Push => {
            let deadline = started + Duration::from_secs(identity.mfa.config.ldap_deadline_secs);
            let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
            match identity.mfa.ldap_push(&account, peer.ip(), limit).await {
                Ok(push) if push.approved() => {
                    // The wait may be long: an account disabled or removed
                    // meanwhile does not get in on an approval.
                    let ndn = crate::directory::dn::normalize(&account.dn).unwrap_or_default();
                    if identity.directory.load().account(&ndn).is_none_or(|a| a.disabled) {
                        return refused(&account.dn, peer, "account disabled while waiting for approval");
                    }
                    Some(push.to_string())
                }
                Ok(push) => return refused(&account.dn, peer, &push.to_string()),
                Err(e) => {
                    tracing::error!(dn = %account.dn, %peer, error = %e, "cannot ask for push approval");
                    return refused(&account.dn, peer, "push approval unavailable");
                }
            }
        }
    };
    match how {
        Some(how) => tracing::info!(dn = %account.dn, peer = %peer, mfa = %how, "bind succeeded"),
        None => tracing::info!(dn = %account.dn, peer = %peer, "bind succeeded"),
    }
    session.bound = Some(account);
    success()
}

/// A bind refused for a second-factor reason, logged (the client sees only
/// invalid credentials).
fn refused(dn: &str, peer: SocketAddr, reason: &str) -> LdapResult {
    tracing::info!(dn = %dn, peer = %peer, reason = %reason, "bind failed");
    invalid()
}

fn invalid() -> LdapResult {
    result(LdapResultCode::InvalidCredentials, "invalid credentials")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ldap3_proto::proto::LdapBindRequest;

    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Config;
    use crate::identity::Identity;
    use crate::mfa::device::Verdict;
    use crate::model::Actor;
    use crate::store::{MfaDevice, NewGroup, NewUser, Store};

    const NOW: i64 = 1_700_000_000;

    struct Fixture {
        identity: Arc<Identity>,
        clock: ManualClock,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config { data_dir: dir.path().into(), ..Config::default() };
        config.auth.max_failures = 3;
        config.mfa.required_groups = vec!["mfausers".into()];
        config.mfa.ldap_deadline_secs = 1;
        let store = Store::open_in_memory().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        let hash = crate::auth::password::hash_password("right-password").unwrap();
        for name in ["alice", "bob", "carol", "dave"] {
            let new = NewUser { name: name.into(), password_hash: Some(hash.clone()), ..Default::default() };
            tx.add_user(new, &config.directory, &Actor::system()).await.unwrap();
        }
        let group = NewGroup { name: "mfausers".into(), description: String::new(), gid_number: None };
        tx.add_group(group, &config.directory, &Actor::system()).await.unwrap();
        for name in ["alice", "bob", "carol"] {
            tx.add_member("mfausers", name, &Actor::system()).await.unwrap();
        }
        tx.add_service_account("sssd", &hash, &Actor::system()).await.unwrap();
        tx.commit().await.unwrap();
        let clock = ManualClock::new(NOW);
        let identity = Identity::open(Arc::new(config), store, Arc::new(clock.clone())).await.unwrap();
        let alice = identity.store.user("alice").await.unwrap().unwrap();
        let device = MfaDevice {
            id: "dev-alice".into(),
            user_id: alice.id,
            name: "phone".into(),
            public_key: "unused".into(),
            push_kind: "none".into(),
            push_address: None,
            created_at: NOW,
            last_seen_at: None,
        };
        identity.store.add_device(&device).await.unwrap();
        Fixture { identity, clock, _dir: dir }
    }

    fn dn(name: &str) -> String {
        if name == "sssd" {
            "cn=sssd,ou=services,dc=example,dc=org".into()
        } else {
            format!("uid={name},ou=people,dc=example,dc=org")
        }
    }

    async fn bind(identity: &Arc<Identity>, name: &str, password: &str) -> LdapResultCode {
        let peer: SocketAddr = "10.0.0.5:40000".parse().unwrap();
        let mut session = Session::new(Arc::clone(identity), peer, true);
        let req = LdapBindRequest { version: 3, dn: dn(name), cred: LdapBindCred::Simple(password.into()) };
        let code = apply(&mut session, &req).await.res.code;
        assert_eq!(session.bound.is_some(), code == LdapResultCode::Success, "bound state follows the result");
        code
    }

    fn spawn_bind(identity: &Arc<Identity>, name: &'static str) -> tokio::task::JoinHandle<LdapResultCode> {
        let identity = Arc::clone(identity);
        tokio::spawn(async move { bind(&identity, name, "right-password").await })
    }

    async fn next_challenge(identity: &Identity, user: &str) -> Arc<crate::mfa::challenge::Challenge> {
        let user_id = identity.store.user(user).await.unwrap().unwrap().id;
        for _ in 0..500 {
            if let Some(c) = identity.mfa.challenges.open_for(&user_id).pop() {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no challenge for {user}");
    }

    async fn answer(identity: &Identity, challenge_id: &str, verdict: Verdict) {
        let device = identity.store.device("dev-alice").await.unwrap().unwrap();
        identity.mfa.answer(challenge_id, &device, verdict).await.unwrap().unwrap();
    }

    fn pushes(audit: &[crate::model::AuditEntry]) -> usize {
        audit.iter().filter(|a| a.action == "mfa.challenge").count()
    }

    #[tokio::test]
    async fn push_approval_denial_and_deadline() {
        let f = fixture().await;
        let id = &f.identity;
        // A wrong password sends no push.
        assert_eq!(bind(id, "alice", "wrong").await, LdapResultCode::InvalidCredentials);
        assert_eq!(pushes(&id.store.audit_tail(50).await.unwrap()), 0);

        // Approve: the waiting bind succeeds; the next bind from that host
        // within the approval window needs no push.
        let waiting = spawn_bind(id, "alice");
        let c = next_challenge(id, "alice").await;
        assert_eq!(c.purpose.describe(), "SSH login to 10.0.0.5");
        answer(id, &c.id, Verdict::Approve { number: None }).await;
        assert_eq!(waiting.await.unwrap(), LdapResultCode::Success);
        assert_eq!(bind(id, "alice", "right-password").await, LdapResultCode::Success);
        assert_eq!(pushes(&id.store.audit_tail(50).await.unwrap()), 1);

        // Deny, after the window.
        f.clock.advance(31);
        let waiting = spawn_bind(id, "alice");
        let c = next_challenge(id, "alice").await;
        answer(id, &c.id, Verdict::Deny).await;
        assert_eq!(waiting.await.unwrap(), LdapResultCode::InvalidCredentials);

        // No answer: refused at the deadline (1 s), the challenge stays open.
        let started = std::time::Instant::now();
        assert_eq!(bind(id, "alice", "right-password").await, LdapResultCode::InvalidCredentials);
        assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        let c = next_challenge(id, "alice").await;
        // A re-sent bind joins it (no new push) and takes its late approval.
        let waiting = spawn_bind(id, "alice");
        tokio::time::sleep(Duration::from_millis(50)).await;
        answer(id, &c.id, Verdict::Approve { number: None }).await;
        assert_eq!(waiting.await.unwrap(), LdapResultCode::Success);
        assert_eq!(pushes(&id.store.audit_tail(50).await.unwrap()), 3);
    }

    #[tokio::test]
    async fn account_disabled_while_waiting_gets_no_approval() {
        let f = fixture().await;
        let id = &f.identity;
        let waiting = spawn_bind(id, "alice");
        let c = next_challenge(id, "alice").await;
        let mut tx = id.store.begin().await.unwrap();
        tx.set_user_disabled("alice", true, &Actor::system()).await.unwrap();
        tx.commit().await.unwrap();
        id.reload().await.unwrap();
        answer(id, &c.id, Verdict::Approve { number: None }).await;
        assert_eq!(waiting.await.unwrap(), LdapResultCode::InvalidCredentials);
    }

    #[tokio::test]
    async fn no_factor_service_accounts_and_others() {
        let f = fixture().await;
        let id = &f.identity;
        // bob must use MFA but has no factor: refused even with the right password.
        assert_eq!(bind(id, "bob", "right-password").await, LdapResultCode::InvalidCredentials);
        // Service accounts and users outside the required groups: no push.
        assert_eq!(bind(id, "sssd", "right-password").await, LdapResultCode::Success);
        assert_eq!(bind(id, "dave", "right-password").await, LdapResultCode::Success);
        let audit = id.store.audit_tail(50).await.unwrap();
        assert_eq!(pushes(&audit), 0);
        // Push refused (locked after a fraud report): refused at once.
        let waiting = spawn_bind(id, "alice");
        let c = next_challenge(id, "alice").await;
        answer(id, &c.id, Verdict::Fraud).await;
        assert_eq!(waiting.await.unwrap(), LdapResultCode::InvalidCredentials);
        let started = std::time::Instant::now();
        assert_eq!(bind(id, "alice", "right-password").await, LdapResultCode::InvalidCredentials);
        assert!(started.elapsed() < Duration::from_millis(900), "a refused push does not wait");
    }

    #[tokio::test]
    async fn totp_suffix_fallback_and_lockout() {
        let f = fixture().await;
        let id = &f.identity;
        let carol = id.store.user("carol").await.unwrap().unwrap().id;
        let (_, b32) = id.mfa.start_totp(&carol, "carol", "test").await.unwrap();
        let secret = totp_rs::Secret::Encoded(b32).to_bytes().unwrap();
        let code = |now: i64| crate::mfa::totp::code_at(&secret, now).unwrap();
        // Unconfirmed TOTP is no factor yet.
        assert_eq!(
            bind(id, "carol", &format!("right-password{}", code(NOW))).await,
            LdapResultCode::InvalidCredentials
        );
        assert!(id.mfa.verify_totp(&carol, &code(NOW)).await.unwrap(), "confirms the secret");

        f.clock.advance(30);
        let good = format!("right-password{}", code(NOW + 30));
        assert_eq!(bind(id, "carol", &good).await, LdapResultCode::Success);
        assert_eq!(bind(id, "carol", &good).await, LdapResultCode::InvalidCredentials, "a code works once");
        f.clock.advance(30);
        assert_eq!(bind(id, "carol", "right-password").await, LdapResultCode::InvalidCredentials, "code missing");
        let wrong = if code(NOW + 60) == "000000" { "111111" } else { "000000" };
        assert_eq!(bind(id, "carol", &format!("right-password{wrong}")).await, LdapResultCode::InvalidCredentials);
        // Three failures (a used code, no code, a wrong code) with the right
        // password lock the account like wrong passwords do.
        let fresh = format!("right-password{}", code(NOW + 60));
        assert_eq!(bind(id, "carol", &fresh).await, LdapResultCode::InvalidCredentials, "locked");
        let failures: Vec<_> = id.store.audit_tail(50).await.unwrap();
        assert_eq!(pushes(&failures), 0, "TOTP users get no push");
        let wait = i64::try_from(id.config.auth.lockout_secs).unwrap() + 1;
        f.clock.advance(wait);
        let fresh = format!("right-password{}", code(NOW + 60 + wait));
        assert_eq!(bind(id, "carol", &fresh).await, LdapResultCode::Success, "unlocked");
    }
}
