//! Brute-force protection: counts failed password checks per account and per
//! source address, and locks either out for a while once a threshold is
//! reached. Time comes from the caller, so tests advance it without sleeping.
//! Memory is bounded: at most [`MAX_TRACKED`] keys of each kind are kept.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Most accounts (and, separately, addresses) tracked at once.
pub const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    locked_until: i64,
    last_failure: i64,
}

#[derive(Debug)]
struct Table<K> {
    map: HashMap<K, Record>,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Self { map: HashMap::new() }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Table<K> {
    fn locked(&self, key: &K, now: i64) -> bool {
        self.map.get(key).is_some_and(|r| r.locked_until > now)
    }

    fn fail(&mut self, key: &K, now: i64, limit: u32, lock_secs: i64) {
        if self.map.len() >= MAX_TRACKED && !self.map.contains_key(key) {
            // Forget records whose lock ended and that are quiet for a lock period.
            self.map.retain(|_, r| r.locked_until > now || now - r.last_failure < lock_secs);
            if self.map.len() >= MAX_TRACKED {
                return;
            }
        }
        let r = self.map.entry(key.clone()).or_insert(Record { failures: 0, locked_until: 0, last_failure: now });
        // Failures older than one lock period no longer count.
        if now - r.last_failure >= lock_secs {
            r.failures = 0;
        }
        r.failures += 1;
        r.last_failure = now;
        if r.failures >= limit {
            r.locked_until = now + lock_secs;
            r.failures = 0;
        }
    }

    fn clear(&mut self, key: &K) {
        self.map.remove(key);
    }
}

/// Thresholds for [`Lockout`].
#[derive(Debug, Clone, Copy)]
pub struct LockoutPolicy {
    pub account_max_failures: u32,
    pub account_lock_secs: i64,
    pub source_max_failures: u32,
    pub source_lock_secs: i64,
}

/// Failure counters per account and per source address.
#[derive(Debug)]
pub struct Lockout {
    policy: LockoutPolicy,
    accounts: Mutex<Table<String>>,
    sources: Mutex<Table<IpAddr>>,
}

impl Lockout {
    /// Empty counters under `policy`.
    pub fn new(policy: LockoutPolicy) -> Self {
        Self { policy, accounts: Mutex::default(), sources: Mutex::default() }
    }

    /// Whether the account or the address is locked at `now`.
    pub fn is_locked(&self, account: &str, source: Option<IpAddr>, now: i64) -> bool {
        let account_locked = self.accounts.lock().is_ok_and(|t| t.locked(&account.to_string(), now));
        let source_locked = source.is_some_and(|ip| self.sources.lock().is_ok_and(|t| t.locked(&ip, now)));
        account_locked || source_locked
    }

    /// Records a failed password check.
    pub fn record_failure(&self, account: &str, source: Option<IpAddr>, now: i64) {
        let p = self.policy;
        if let Ok(mut t) = self.accounts.lock() {
            t.fail(&account.to_string(), now, p.account_max_failures, p.account_lock_secs);
        }
        if let (Some(ip), Ok(mut t)) = (source, self.sources.lock()) {
            t.fail(&ip, now, p.source_max_failures, p.source_lock_secs);
        }
    }

    /// Records a failure that names no existing account: only the address counts.
    pub fn record_source_failure(&self, source: Option<IpAddr>, now: i64) {
        let p = self.policy;
        if let (Some(ip), Ok(mut t)) = (source, self.sources.lock()) {
            t.fail(&ip, now, p.source_max_failures, p.source_lock_secs);
        }
    }

    /// Records a successful check: the account's failures are forgotten.
    pub fn record_success(&self, account: &str) {
        if let Ok(mut t) = self.accounts.lock() {
            t.clear(&account.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LockoutPolicy {
        LockoutPolicy { account_max_failures: 3, account_lock_secs: 60, source_max_failures: 5, source_lock_secs: 120 }
    }

    #[test]
    fn account_locks_after_threshold_and_unlocks_after_period() {
        let l = Lockout::new(policy());
        let ip: IpAddr = [10, 0, 0, 1].into();
        l.record_failure("alice", Some(ip), 1000);
        l.record_failure("alice", Some(ip), 1001);
        assert!(!l.is_locked("alice", None, 1002));
        l.record_failure("alice", Some(ip), 1002);
        assert!(l.is_locked("alice", None, 1002));
        assert!(l.is_locked("alice", None, 1061));
        assert!(!l.is_locked("alice", None, 1062));
        assert!(!l.is_locked("bob", None, 1003));
    }

    #[test]
    fn success_resets_and_old_failures_expire() {
        let l = Lockout::new(policy());
        l.record_failure("alice", None, 0);
        l.record_failure("alice", None, 1);
        l.record_success("alice");
        l.record_failure("alice", None, 2);
        assert!(!l.is_locked("alice", None, 2));
        l.record_failure("alice", None, 3);
        // 60 s later the earlier failures no longer count.
        l.record_failure("alice", None, 100);
        assert!(!l.is_locked("alice", None, 100));
    }

    #[test]
    fn source_locks_across_accounts() {
        let l = Lockout::new(policy());
        let ip: IpAddr = [10, 0, 0, 2].into();
        for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            l.record_failure(name, Some(ip), i as i64);
        }
        assert!(l.is_locked("zed", Some(ip), 5));
        assert!(!l.is_locked("zed", Some([10, 0, 0, 3].into()), 5));
        assert!(!l.is_locked("zed", Some(ip), 125));
    }
}
