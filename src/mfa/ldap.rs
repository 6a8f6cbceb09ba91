//! The second factor of an LDAP bind (an SSH login through SSSD): which
//! factor a user's bind needs, how a TOTP code rides in the bind password,
//! and the wait for a push approval. `ldap/ops/bind.rs` asks; this module
//! names no protocol type and never sees a socket.
//!
//! Fail closed: a user who needs a second factor and has none usable over
//! LDAP, a refused push (locked, rate limits, backoff), a denial, an expiry
//! and an approval that does not come before the deadline all refuse the
//! bind.

use std::net::IpAddr;
use std::time::Duration;

use super::challenge::{ChallengeRequest, Outcome, Purpose, Ticket};
use super::{Mfa, PushRefusal, Service};
use crate::directory::{Account, Snapshot};
use crate::store::StoreResult;

/// Digits of a TOTP code appended to an LDAP bind password.
pub const TOTP_SUFFIX_DIGITS: usize = 6;

/// What an LDAP bind of an account needs besides its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LdapFactor {
    /// Nothing: not in a required group, a service account, or LDAP
    /// enforcement is off.
    NotRequired,
    /// An approval on one of the user's devices.
    Push,
    /// A TOTP code at the end of the bind password (no device enrolled,
    /// `ldap_totp_fallback` on, TOTP confirmed).
    TotpSuffix,
    /// Required, but the user has no factor usable over LDAP: refuse.
    Missing,
}

/// How a push approval for a bind ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LdapPush {
    /// Approved now, or (`reused`) within the approval window for this host.
    Approved { reused: bool },
    /// Denied on a device (`fraud`: reported as "this wasn't me").
    Denied { fraud: bool },
    /// The challenge expired unanswered.
    Expired,
    /// No answer before the bind's deadline; the challenge stays pending,
    /// so a re-sent bind from the same host waits on it again.
    TimedOut,
    /// No challenge was made (pushes locked, no device, fatigue limits).
    Refused(PushRefusal),
}

impl LdapPush {
    /// Whether the bind may succeed.
    pub fn approved(&self) -> bool {
        matches!(self, LdapPush::Approved { .. })
    }
}

impl std::fmt::Display for LdapPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LdapPush::Approved { reused: false } => f.write_str("push approved"),
            LdapPush::Approved { reused: true } => f.write_str("approved recently from this host"),
            LdapPush::Denied { fraud: false } => f.write_str("push denied"),
            LdapPush::Denied { fraud: true } => f.write_str("push reported as fraud"),
            LdapPush::Expired => f.write_str("push expired unanswered"),
            LdapPush::TimedOut => f.write_str("no push answer before the LDAP deadline"),
            LdapPush::Refused(r) => write!(f, "push refused: {r}"),
        }
    }
}

/// Splits a bind password into the password and the TOTP code at its end
/// (`password` + 6 digits); `None` when it does not end in 6 digits after
/// at least one other character.
pub fn split_totp_suffix(password: &str) -> Option<(&str, &str)> {
    let cut = password.len().checked_sub(TOTP_SUFFIX_DIGITS).filter(|cut| *cut > 0)?;
    // ASCII digits are single bytes, so `cut` is a char boundary when they all are.
    let code = password.as_bytes().get(cut..)?;
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some((password.get(..cut)?, password.get(cut..)?))
}

impl Mfa {
    /// What a bind of `account` needs besides its password (read before the
    /// password is checked, so a TOTP code can be split off first).
    ///
    /// # Errors
    /// Database errors (the caller refuses the bind).
    pub async fn ldap_factor(
        &self,
        snap: &Snapshot,
        account: &Account,
        source: Option<IpAddr>,
    ) -> StoreResult<LdapFactor> {
        if !self.required(snap, account, Service::Ldap { source }) {
            return Ok(LdapFactor::NotRequired);
        }
        if self.compat().is_some() {
            // The existing push service knows the phones, not us.
            return Ok(LdapFactor::Push);
        }
        let factors = self.factors(&account.id).await?;
        Ok(if !factors.devices.is_empty() {
            LdapFactor::Push
        } else if factors.totp && self.config.ldap_totp_fallback {
            LdapFactor::TotpSuffix
        } else {
            LdapFactor::Missing
        })
    }

    /// Asks `account`'s devices to approve an SSH login from `host` and
    /// waits at most `limit` for the answer. Binds for the same user and
    /// host share one challenge (and one recent approval); dropping this
    /// future does not cancel the challenge.
    ///
    /// # Errors
    /// Database errors (the caller refuses the bind).
    pub async fn ldap_push(&self, account: &Account, host: IpAddr, limit: Duration) -> StoreResult<LdapPush> {
        let req = ChallengeRequest {
            user_id: account.id.clone(),
            username: account.name.clone(),
            purpose: Purpose::Ldap { host },
            source: Some(host),
            number_matching: false,
        };
        if let Some(compat) = self.compat() {
            return self.compat_push(compat, req, limit).await;
        }
        let challenge = match self.request_approval(req).await? {
            Err(refusal) => return Ok(LdapPush::Refused(refusal)),
            Ok(Ticket::AlreadyApproved) => return Ok(LdapPush::Approved { reused: true }),
            Ok(Ticket::Pending { challenge, .. }) => challenge,
        };
        Ok(self.wait_push(&challenge, limit).await)
    }
}

impl Mfa {
    /// Waits at most `limit` for a bind's challenge to be answered.
    async fn wait_push(&self, challenge: &super::challenge::Challenge, limit: Duration) -> LdapPush {
        match self.challenges.wait(challenge, limit).await {
            Outcome::Approved { .. } => LdapPush::Approved { reused: false },
            Outcome::Denied { fraud, .. } => LdapPush::Denied { fraud },
            Outcome::Expired => LdapPush::Expired,
            Outcome::Pending => LdapPush::TimedOut,
        }
    }

    /// [`Mfa::ldap_push`] through an existing push-approval service
    /// (`push.webhook.mode = "compat"`). Portcullis keeps its own rules
    /// around it: push locks, fatigue limits and coalescing come from the
    /// challenge registry (the old service keeps one pending request per
    /// user and lets a newer one replace it, so sending two would let one
    /// answer approve the other), the wait is bounded by the bind's
    /// deadline, and a timeout or any error denies.
    async fn compat_push(
        &self,
        compat: &crate::push::webhook::CompatClient,
        req: ChallengeRequest,
        limit: Duration,
    ) -> StoreResult<LdapPush> {
        use super::device::Verdict;
        use crate::push::webhook::CompatDecision;
        let now = self.clock.now();
        let username = req.username.clone();
        let user_id = req.user_id.clone();
        if self.store.push_locked(&user_id).await? {
            self.audit(&username, "mfa.push_refused", "pushes locked after a fraud report", now).await;
            return Ok(LdapPush::Refused(PushRefusal::Locked));
        }
        let what = req.purpose.describe();
        let challenge = match self.challenges.request(req) {
            Err(refusal) => {
                self.audit(&username, "mfa.push_refused", &format!("{what}: {refusal}"), now).await;
                return Ok(LdapPush::Refused(PushRefusal::Limit(refusal)));
            }
            Ok(Ticket::AlreadyApproved) => return Ok(LdapPush::Approved { reused: true }),
            Ok(Ticket::Pending { challenge, fresh: false }) => challenge,
            Ok(Ticket::Pending { challenge, fresh: true }) => {
                let detail = format!("{what} (challenge {}, via the compatibility push service)", challenge.id);
                self.audit(&username, "mfa.challenge", &detail, now).await;
                let wait = compat.timeout().min(limit);
                let body = format!("{what}. Approve only if this is you.");
                let verdict = match compat.send_notification(&username, "Sign-in request", &body, wait).await {
                    Ok(CompatDecision::Approve) => Verdict::Approve { number: None },
                    Ok(decision) => {
                        tracing::info!(user = %username, ?decision, "compatibility push not approved");
                        Verdict::Deny
                    }
                    Err(e) => {
                        tracing::warn!(user = %username, error = %e, "compatibility push service failed; denying");
                        Verdict::Deny
                    }
                };
                let answered = self.challenges.answer(&challenge.id, &user_id, "compat", verdict);
                let detail =
                    format!("challenge {}: {} by the compatibility push service", challenge.id, verdict.word());
                self.audit(&username, "mfa.answer", &detail, self.clock.now()).await;
                return Ok(match answered {
                    Ok(Outcome::Approved { .. }) => LdapPush::Approved { reused: false },
                    Ok(_) => LdapPush::Denied { fraud: false },
                    // Expired while the service was asked.
                    Err(_) => LdapPush::Expired,
                });
            }
        };
        Ok(self.wait_push(&challenge, limit).await)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::directory::AccountKind;
    use crate::mfa::MfaConfig;
    use crate::mfa::device::Verdict;
    use crate::model::Actor;
    use crate::store::{MfaDevice, NewGroup, NewUser, Store};

    #[test]
    fn totp_suffix_split() {
        assert_eq!(split_totp_suffix("secret123456"), Some(("secret", "123456")));
        assert_eq!(split_totp_suffix("pässwörd000000"), Some(("pässwörd", "000000")));
        assert_eq!(split_totp_suffix("1234567"), Some(("1", "234567")));
        assert_eq!(split_totp_suffix("123456"), None, "a code alone has no password");
        assert_eq!(split_totp_suffix("secret12345"), None);
        assert_eq!(split_totp_suffix("secret12345x"), None);
        assert_eq!(split_totp_suffix("secretü23456"), None);
        assert_eq!(split_totp_suffix(""), None);
    }

    async fn setup(config: MfaConfig) -> (Arc<Mfa>, Arc<crate::directory::Snapshot>, Store, tempfile::TempDir) {
        let dir_config = crate::config::Config::default().directory;
        let store = Store::open_in_memory().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        for name in ["alice", "bob", "carol"] {
            let new = NewUser { name: name.into(), ..Default::default() };
            tx.add_user(new, &dir_config, &Actor::system()).await.unwrap();
        }
        let group = NewGroup { name: "mfausers".into(), description: String::new(), gid_number: None };
        tx.add_group(group, &dir_config, &Actor::system()).await.unwrap();
        for name in ["alice", "bob"] {
            tx.add_member("mfausers", name, &Actor::system()).await.unwrap();
        }
        tx.add_service_account("sssd", "x", &Actor::system()).await.unwrap();
        tx.commit().await.unwrap();
        let data = store.load_directory().await.unwrap();
        let snap = Arc::new(crate::directory::Snapshot::build(&data, "dc=example,dc=org"));
        let tmp = tempfile::tempdir().unwrap();
        let mfa = Mfa::new(config, store.clone(), Arc::new(ManualClock::new(1_700_000_000)), tmp.path().into());
        (Arc::new(mfa), snap, store, tmp)
    }

    fn account(snap: &crate::directory::Snapshot, dn: &str) -> Account {
        snap.account(dn).cloned().unwrap()
    }

    async fn add_device(store: &Store, user_id: &str) {
        let d = MfaDevice {
            id: format!("dev-{user_id}"),
            user_id: user_id.into(),
            name: "phone".into(),
            public_key: "unused".into(),
            push_kind: "none".into(),
            push_address: None,
            created_at: 0,
            last_seen_at: None,
        };
        store.add_device(&d).await.unwrap();
    }

    const ALICE: &str = "uid=alice,ou=people,dc=example,dc=org";
    const BOB: &str = "uid=bob,ou=people,dc=example,dc=org";
    const CAROL: &str = "uid=carol,ou=people,dc=example,dc=org";
    const SSSD: &str = "cn=sssd,ou=services,dc=example,dc=org";

    #[tokio::test]
    async fn factor_policy() {
        let config = MfaConfig { required_groups: vec!["mfausers".into()], ..MfaConfig::default() };
        let (mfa, snap, store, tmp) = setup(config.clone()).await;
        let (alice, bob, carol) = (account(&snap, ALICE), account(&snap, BOB), account(&snap, CAROL));
        let sssd = account(&snap, SSSD);
        assert_eq!(sssd.kind, AccountKind::Service);
        add_device(&store, &alice.id).await;
        assert_eq!(mfa.ldap_factor(&snap, &alice, None).await.unwrap(), LdapFactor::Push);
        assert_eq!(mfa.ldap_factor(&snap, &bob, None).await.unwrap(), LdapFactor::Missing, "no factor: refuse");
        assert_eq!(mfa.ldap_factor(&snap, &carol, None).await.unwrap(), LdapFactor::NotRequired, "not in the group");
        assert_eq!(mfa.ldap_factor(&snap, &sssd, None).await.unwrap(), LdapFactor::NotRequired, "service account");

        // TOTP counts only once confirmed, and only with the fallback on.
        let (_, b32) = mfa.start_totp(&bob.id, "bob", "test").await.unwrap();
        assert_eq!(mfa.ldap_factor(&snap, &bob, None).await.unwrap(), LdapFactor::Missing, "unconfirmed");
        let secret = totp_rs::Secret::Encoded(b32).to_bytes().unwrap();
        let code = crate::mfa::totp::code_at(&secret, 1_700_000_000).unwrap();
        assert!(mfa.verify_totp(&bob.id, &code).await.unwrap());
        assert_eq!(mfa.ldap_factor(&snap, &bob, None).await.unwrap(), LdapFactor::TotpSuffix);
        let with = |config: MfaConfig| {
            Mfa::new(config, store.clone(), Arc::new(ManualClock::new(1_700_000_000)), tmp.path().into())
        };
        let strict = with(MfaConfig { ldap_totp_fallback: false, ..config.clone() });
        assert_eq!(strict.ldap_factor(&snap, &bob, None).await.unwrap(), LdapFactor::Missing, "fallback off");
        let off = with(MfaConfig { ldap: false, ..config });
        assert_eq!(
            off.ldap_factor(&snap, &alice, None).await.unwrap(),
            LdapFactor::NotRequired,
            "LDAP enforcement off"
        );
    }

    #[tokio::test]
    async fn policy_per_source_per_client_and_for_admins() {
        let config = MfaConfig {
            required_groups: vec!["mfausers".into()],
            ldap_required_sources: vec!["10.9.0.0/24".parse().unwrap()],
            ..MfaConfig::default()
        };
        let (mfa, snap, store, tmp) = setup(config.clone()).await;
        let (alice, carol, sssd) = (account(&snap, ALICE), account(&snap, CAROL), account(&snap, SSSD));
        let inside = Some(IpAddr::from([10, 9, 0, 7]));
        let outside = Some(IpAddr::from([10, 8, 0, 7]));
        let ldap = |source| Service::Ldap { source };
        let web = |client_requires_mfa| Service::Web { client_requires_mfa };
        // Carol is in no required group: only the sensitive subnet and the
        // strict client ask her for a second factor; never the service account.
        assert!(!mfa.required(&snap, &carol, ldap(outside)));
        assert!(mfa.required(&snap, &carol, ldap(inside)));
        assert!(!mfa.required(&snap, &sssd, ldap(inside)), "service accounts are exempt");
        assert!(!mfa.required(&snap, &carol, web(false)));
        assert!(mfa.required(&snap, &carol, web(true)));
        assert!(!mfa.required(&snap, &sssd, web(true)));
        assert!(mfa.required(&snap, &alice, ldap(outside)) && mfa.required(&snap, &alice, web(false)));

        // Enforcement switched off per service wins for ordinary users...
        let lax = MfaConfig { ldap: false, web: false, ..config };
        let with = |config: MfaConfig| {
            Mfa::new(config, store.clone(), Arc::new(ManualClock::new(1_700_000_000)), tmp.path().into())
        };
        let off = with(lax.clone());
        assert!(!off.required(&snap, &alice, ldap(inside)) && !off.required(&snap, &carol, web(true)));
        // ...but never for admins.
        let admins = with(lax).with_admin_group("mfausers");
        assert!(admins.required(&snap, &alice, ldap(None)) && admins.required(&snap, &alice, web(false)));
        assert!(!admins.required(&snap, &carol, ldap(None)), "carol is no admin");
    }

    #[tokio::test]
    async fn push_outcomes_and_coalescing() {
        let config = MfaConfig { required_groups: vec!["mfausers".into()], ..MfaConfig::default() };
        let (mfa, snap, store, _tmp) = setup(config).await;
        let alice = account(&snap, ALICE);
        let bob = account(&snap, BOB);
        let host: IpAddr = [10, 0, 0, 5].into();
        assert_eq!(
            mfa.ldap_push(&bob, host, Duration::from_millis(10)).await.unwrap(),
            LdapPush::Refused(PushRefusal::NoDevice)
        );
        add_device(&store, &alice.id).await;
        let device = store.devices_of(&alice.id).await.unwrap().remove(0);

        // Three binds from one host (SSSD re-sending, several sessions): one
        // challenge, every waiter sees the approval.
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (mfa, alice) = (Arc::clone(&mfa), alice.clone());
                tokio::spawn(async move { mfa.ldap_push(&alice, host, Duration::from_secs(5)).await.unwrap() })
            })
            .collect();
        let open = loop {
            let open = mfa.challenges.open_for(&alice.id);
            if !open.is_empty() {
                break open;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(mfa.challenges.open_for(&alice.id).len(), 1, "one challenge for one host");
        assert_eq!(open[0].purpose, Purpose::Ldap { host });
        assert_eq!(open[0].source, Some(host));
        assert!(open[0].number.is_none(), "LDAP has no screen for number matching");
        mfa.answer(&open[0].id, &device, Verdict::Approve { number: None }).await.unwrap().unwrap();
        for w in waiters {
            assert_eq!(w.await.unwrap(), LdapPush::Approved { reused: false });
        }
        // Within the approval window the same host needs no new push.
        assert_eq!(
            mfa.ldap_push(&alice, host, Duration::from_millis(10)).await.unwrap(),
            LdapPush::Approved { reused: true }
        );

        // Another host: a new challenge; an unanswered wait leaves it
        // pending for the next bind, which a denial then refuses.
        let other: IpAddr = [10, 0, 0, 6].into();
        assert_eq!(mfa.ldap_push(&alice, other, Duration::from_millis(20)).await.unwrap(), LdapPush::TimedOut);
        let pending = mfa.challenges.open_for(&alice.id);
        assert_eq!(pending.len(), 1);
        let again = {
            let (mfa, alice) = (Arc::clone(&mfa), alice.clone());
            tokio::spawn(async move { mfa.ldap_push(&alice, other, Duration::from_secs(5)).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(mfa.challenges.open_for(&alice.id).len(), 1, "the re-sent bind joined the pending challenge");
        mfa.answer(&pending[0].id, &device, Verdict::Deny).await.unwrap().unwrap();
        assert_eq!(again.await.unwrap(), LdapPush::Denied { fraud: false });
        let audit = store.audit_tail(20).await.unwrap();
        assert_eq!(audit.iter().filter(|a| a.action == "mfa.challenge").count(), 2, "two pushes in all");

        // A fraud report locks further pushes.
        let third: IpAddr = [10, 0, 0, 7].into();
        let waiting = {
            let (mfa, alice) = (Arc::clone(&mfa), alice.clone());
            tokio::spawn(async move { mfa.ldap_push(&alice, third, Duration::from_secs(5)).await.unwrap() })
        };
        let c = loop {
            if let Some(c) = mfa.challenges.open_for(&alice.id).pop() {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        mfa.answer(&c.id, &device, Verdict::Fraud).await.unwrap().unwrap();
        assert_eq!(waiting.await.unwrap(), LdapPush::Denied { fraud: true });
        assert_eq!(
            mfa.ldap_push(&alice, third, Duration::from_millis(10)).await.unwrap(),
            LdapPush::Refused(PushRefusal::Locked)
        );
    }
}
