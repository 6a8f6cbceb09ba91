//! Sign-ins whose password checked out and whose second factor is still
//! pending, in memory (like challenges). A front end hands the browser a
//! random token (only its hash is kept here) and looks the state up on each
//! second-factor step. The state is not a session: it only lets its holder
//! try a second factor, a bounded number of times, until it expires; success
//! takes it out, once.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// How long a pending sign-in lasts, in seconds (push challenges expire
/// sooner; this bounds typing a code).
pub const PENDING_SECS: i64 = 300;
/// Wrong codes one pending sign-in may try before it is dropped (the
/// account's lockout also counts them).
pub const MAX_FAILURES: u32 = 3;
/// Pending sign-ins kept at once; past it the ones closest to expiry go.
const MAX_PENDING: usize = 10_000;

/// Where the sign-in goes once the second factor is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterSignin {
    /// Continue an OIDC authorization request (its raw query string, checked
    /// again when it continues).
    Authorization { request: String },
    /// The "my account" pages.
    Account,
}

/// One sign-in waiting for its second factor.
#[derive(Debug, Clone)]
pub struct PendingSignin {
    /// Whose password checked out (the user's stable id).
    pub user_id: String,
    /// For the page, the device and logs.
    pub username: String,
    /// What the user signs in to, as shown on their device and the page.
    pub label: String,
    pub after: AfterSignin,
    /// Unix seconds; [`PENDING_SECS`] after the password.
    pub expires_at: i64,
    /// Wrong codes so far.
    pub failures: u32,
    /// The push challenge this sign-in made, if any (never one it joined).
    pub challenge_id: Option<String>,
}

/// The pending sign-ins.
#[derive(Debug, Default)]
pub struct PendingSignins {
    inner: Mutex<HashMap<String, PendingSignin>>,
}

fn key(token: &str) -> String {
    crate::oidc::hash_client_secret(token)
}

impl PendingSignins {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, PendingSignin>> {
        // Plain data: a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores a new pending sign-in and returns its bearer token; `replaces`
    /// (the browser's previous token, if any) is forgotten.
    pub fn start(&self, pending: PendingSignin, replaces: Option<&str>, now: i64) -> String {
        let token = crate::oidc::random_token();
        let mut map = self.lock();
        if let Some(old) = replaces {
            map.remove(&key(old));
        }
        map.retain(|_, p| p.expires_at > now);
        while map.len() >= MAX_PENDING {
            let Some(first) = map.iter().min_by_key(|(_, p)| p.expires_at).map(|(k, _)| k.clone()) else { break };
            map.remove(&first);
        }
        map.insert(key(&token), pending);
        token
    }

    /// The live pending sign-in behind `token`.
    pub fn get(&self, token: &str, now: i64) -> Option<PendingSignin> {
        self.lock().get(&key(token)).filter(|p| p.expires_at > now).cloned()
    }

    /// Remembers the push challenge this sign-in made.
    pub fn set_challenge(&self, token: &str, challenge_id: &str) {
        if let Some(p) = self.lock().get_mut(&key(token)) {
            p.challenge_id = Some(challenge_id.to_string());
        }
    }

    /// Counts a wrong code; returns whether the sign-in may try again (if
    /// not, it is gone).
    pub fn fail(&self, token: &str) -> bool {
        let mut map = self.lock();
        let k = key(token);
        let Some(p) = map.get_mut(&k) else { return false };
        p.failures += 1;
        if p.failures >= MAX_FAILURES {
            map.remove(&k);
            return false;
        }
        true
    }

    /// Takes the sign-in out (success, denial or cancel): one caller gets it.
    pub fn take(&self, token: &str, now: i64) -> Option<PendingSignin> {
        self.lock().remove(&key(token)).filter(|p| p.expires_at > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(expires_at: i64) -> PendingSignin {
        PendingSignin {
            user_id: "u1".into(),
            username: "alice".into(),
            label: "wiki".into(),
            after: AfterSignin::Account,
            expires_at,
            failures: 0,
            challenge_id: None,
        }
    }

    #[test]
    fn tokens_expire_fail_and_are_taken_once() {
        let p = PendingSignins::default();
        let t = p.start(pending(100), None, 0);
        assert!(p.get(&t, 99).is_some());
        assert!(p.get(&t, 100).is_none(), "expired");
        assert!(p.get("forged", 0).is_none());
        p.set_challenge(&t, "c1");
        assert_eq!(p.get(&t, 0).unwrap().challenge_id.as_deref(), Some("c1"));
        assert!(p.fail(&t));
        assert!(p.fail(&t));
        assert!(!p.fail(&t), "the third wrong code ends it");
        assert!(p.get(&t, 0).is_none());

        let t = p.start(pending(100), None, 0);
        let again = p.start(pending(100), Some(&t), 0);
        assert!(p.get(&t, 0).is_none(), "a new password sign-in replaces the old pending state");
        assert!(p.take(&again, 0).is_some());
        assert!(p.take(&again, 0).is_none(), "taken once");
    }
}
