//! Approval challenges, in memory. Each needs-approval event (an LDAP bind,
//! a web sign-in) asks for one; whoever needs the answer waits on it.
//!
//! Safety rules enforced here, not by callers:
//! - **One push per login**: a request for the same user and origin (LDAP:
//!   the host that binds) while one is pending joins it instead of making a
//!   new one; an approval satisfies the same user and origin for
//!   `approval_window_secs` (SSSD re-sends binds; editors open several SSH
//!   sessions at once).
//! - **Fatigue limits**: outstanding challenges per user, pushes per user
//!   and in total per minute, and a growing backoff after denials and
//!   timeouts; refusals say why, for the audit log.
//! - **Answers**: one per challenge, from a device of that user, before
//!   expiry, with the right number when number matching is on; a wrong
//!   number denies (no second guess).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use rand::seq::SliceRandom;
use tokio::sync::watch;

use super::MfaConfig;
use super::device::Verdict;
use crate::clock::SharedClock;

/// Where a challenge comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// An LDAP bind (an SSH login) from a host, e.g. a container.
    Ldap { host: IpAddr },
    /// A web sign-in to an OIDC client.
    Web { client: String },
}

impl Purpose {
    /// Text shown on the device.
    pub fn describe(&self) -> String {
        match self {
            Purpose::Ldap { host } => format!("SSH login to {host}"),
            Purpose::Web { client } => format!("Sign in to {client}"),
        }
    }

    /// The coalescing key part.
    fn origin(&self) -> String {
        match self {
            Purpose::Ldap { host } => format!("ldap:{host}"),
            Purpose::Web { client } => format!("web:{client}"),
        }
    }
}

/// The state of a challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Approved { device_id: String },
    Denied { device_id: String, fraud: bool },
    Expired,
}

/// One approval request.
#[derive(Debug)]
pub struct Challenge {
    /// 128 random bits, base64url: the only thing a push message carries.
    pub id: String,
    pub user_id: String,
    pub username: String,
    pub purpose: Purpose,
    /// Where the person signing in is (web: their address; LDAP: unknown to
    /// us, so the host).
    pub source: Option<IpAddr>,
    pub created_at: i64,
    pub expires_at: i64,
    /// The number the device must pick (web sign-ins).
    pub number: Option<u8>,
    /// The numbers the device offers, the right one among them.
    pub choices: Vec<u8>,
    state: watch::Sender<Outcome>,
}

impl Challenge {
    /// The current state.
    pub fn outcome(&self) -> Outcome {
        self.state.borrow().clone()
    }

    /// Whether the challenge still takes answers at `now`.
    pub fn is_open(&self, now: i64) -> bool {
        *self.state.borrow() == Outcome::Pending && now < self.expires_at
    }
}

/// What a request for approval got.
#[derive(Debug, Clone)]
pub enum Ticket {
    /// Approved within the approval window: no push needed.
    AlreadyApproved,
    /// A challenge to wait on; `fresh` says whether this request made it
    /// (then the caller notifies devices) or joined a pending one.
    Pending { challenge: Arc<Challenge>, fresh: bool },
}

/// Why no challenge was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    TooManyOutstanding,
    UserRateLimited,
    GlobalRateLimited,
    BackingOff { until: i64 },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TooManyOutstanding => f.write_str("too many outstanding challenges"),
            Refusal::UserRateLimited => f.write_str("per-user push rate limit"),
            Refusal::GlobalRateLimited => f.write_str("global push rate limit"),
            Refusal::BackingOff { until } => write!(f, "backing off after denials or timeouts until {until}"),
        }
    }
}

/// Why an answer was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerError {
    /// No such challenge, or another user's (indistinguishable on purpose).
    Unknown,
    /// Already answered or expired.
    Closed,
}

/// What a new challenge is for.
#[derive(Debug, Clone)]
pub struct ChallengeRequest {
    pub user_id: String,
    pub username: String,
    pub purpose: Purpose,
    pub source: Option<IpAddr>,
    /// Ask the device to pick the number shown to the person signing in.
    pub number_matching: bool,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Arc<Challenge>>,
    /// (user, origin) -> pending challenge id.
    pending: HashMap<(String, String), String>,
    /// (user, origin) -> approved until.
    approved: HashMap<(String, String), i64>,
    user_pushes: HashMap<String, VecDeque<i64>>,
    all_pushes: VecDeque<i64>,
    /// user -> (consecutive denials/timeouts, backoff until).
    strikes: HashMap<String, (u32, i64)>,
}

/// The challenge registry.
pub struct Challenges {
    inner: Mutex<Inner>,
    config: MfaConfig,
    clock: SharedClock,
    /// Bumped on every new challenge, so long-polling devices wake up.
    news: watch::Sender<u64>,
}

fn random_id() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::thread_rng().r#gen();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Challenges {
    /// An empty registry.
    pub fn new(config: MfaConfig, clock: SharedClock) -> Self {
        Self { inner: Mutex::new(Inner::default()), config, clock, news: watch::Sender::new(0) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data; keep serving.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks for approval: joins a pending challenge for the same user and
    /// origin, reuses a recent approval, or makes a new challenge within the
    /// fatigue limits.
    ///
    /// # Errors
    /// A fatigue limit refuses a new challenge.
    pub fn request(&self, req: ChallengeRequest) -> Result<Ticket, Refusal> {
        let now = self.clock.now();
        let key = (req.user_id.clone(), req.purpose.origin());
        let mut inner = self.lock();
        self.expire_due(&mut inner, now);
        // Number matching ties a challenge to one screen: never share it.
        if let Some(c) = inner.pending.get(&key).and_then(|id| inner.by_id.get(id)).filter(|_| !req.number_matching) {
            if c.is_open(now) {
                return Ok(Ticket::Pending { challenge: Arc::clone(c), fresh: false });
            }
        }
        // Number matching proves the person at the screen is the one
        // approving; a cached approval would skip that, so web sign-ins
        // always get a fresh challenge.
        if !req.number_matching && inner.approved.get(&key).is_some_and(|until| *until > now) {
            return Ok(Ticket::AlreadyApproved);
        }
        if let Some((_, until)) = inner.strikes.get(&req.user_id).filter(|(_, until)| *until > now) {
            return Err(Refusal::BackingOff { until: *until });
        }
        let outstanding = inner.by_id.values().filter(|c| c.user_id == req.user_id && c.is_open(now)).count();
        if outstanding >= self.config.max_outstanding_per_user {
            return Err(Refusal::TooManyOutstanding);
        }
        let minute_ago = now - 60;
        let user_recent = inner.user_pushes.entry(req.user_id.clone()).or_default();
        user_recent.retain(|t| *t > minute_ago);
        if user_recent.len() >= self.config.user_pushes_per_minute {
            return Err(Refusal::UserRateLimited);
        }
        inner.all_pushes.retain(|t| *t > minute_ago);
        if inner.all_pushes.len() >= self.config.global_pushes_per_minute {
            return Err(Refusal::GlobalRateLimited);
        }
        let (number, choices) = if req.number_matching {
            let mut rng = rand::thread_rng();
            let mut choices: Vec<u8> = rand::seq::index::sample(&mut rng, 90, 3)
                .into_iter()
                .filter_map(|i| u8::try_from(i + 10).ok())
                .collect();
            let number = choices.first().copied();
            choices.shuffle(&mut rng);
            (number, choices)
        } else {
            (None, Vec::new())
        };
        let ttl = i64::try_from(self.config.challenge_ttl_secs).unwrap_or(60);
        let challenge = Arc::new(Challenge {
            id: random_id(),
            user_id: req.user_id.clone(),
            username: req.username,
            purpose: req.purpose,
            source: req.source,
            created_at: now,
            expires_at: now + ttl,
            number,
            choices,
            state: watch::Sender::new(Outcome::Pending),
        });
        inner.user_pushes.entry(req.user_id).or_default().push_back(now);
        inner.all_pushes.push_back(now);
        if challenge.number.is_none() {
            inner.pending.insert(key, challenge.id.clone());
        }
        inner.by_id.insert(challenge.id.clone(), Arc::clone(&challenge));
        drop(inner);
        self.news.send_modify(|n| *n = n.wrapping_add(1));
        Ok(Ticket::Pending { challenge, fresh: true })
    }

    /// Waits until the challenge is answered, expires, or `limit` passes
    /// (then it is still pending: a re-sent bind may pick it up).
    pub async fn wait(&self, challenge: &Challenge, limit: Duration) -> Outcome {
        let mut rx = challenge.state.subscribe();
        let until_expiry = u64::try_from(challenge.expires_at - self.clock.now()).unwrap_or(0);
        let limit = limit.min(Duration::from_secs(until_expiry));
        let answered = tokio::time::timeout(limit, rx.wait_for(|o| *o != Outcome::Pending)).await;
        match answered {
            Ok(Ok(outcome)) => outcome.clone(),
            _ => {
                let mut inner = self.lock();
                self.expire_due(&mut inner, self.clock.now());
                challenge.outcome()
            }
        }
    }

    /// Takes a device's answer.
    ///
    /// # Errors
    /// Unknown challenge (or another user's), or no longer open.
    pub fn answer(
        &self,
        challenge_id: &str,
        user_id: &str,
        device_id: &str,
        verdict: Verdict,
    ) -> Result<Outcome, AnswerError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        self.expire_due(&mut inner, now);
        let Some(c) = inner.by_id.get(challenge_id).filter(|c| c.user_id == user_id).cloned() else {
            return Err(AnswerError::Unknown);
        };
        if !c.is_open(now) {
            return Err(AnswerError::Closed);
        }
        let device_id = device_id.to_string();
        let outcome = match verdict {
            Verdict::Approve { number } if c.number.is_none() || number == c.number => Outcome::Approved { device_id },
            // A wrong number denies: guessing again is not allowed.
            Verdict::Approve { .. } | Verdict::Deny => Outcome::Denied { device_id, fraud: false },
            Verdict::Fraud => Outcome::Denied { device_id, fraud: true },
        };
        let key = (c.user_id.clone(), c.purpose.origin());
        if inner.pending.get(&key) == Some(&c.id) {
            inner.pending.remove(&key);
        }
        if matches!(outcome, Outcome::Approved { .. }) {
            inner.strikes.remove(&c.user_id);
            if c.number.is_none() && self.config.approval_window_secs > 0 {
                let window = i64::try_from(self.config.approval_window_secs).unwrap_or(0);
                inner.approved.insert(key, now + window);
            }
        } else {
            self.strike(&mut inner, &c.user_id, now);
        }
        c.state.send_replace(outcome.clone());
        Ok(outcome)
    }

    /// The user's open challenges, oldest first.
    pub fn open_for(&self, user_id: &str) -> Vec<Arc<Challenge>> {
        let now = self.clock.now();
        let mut inner = self.lock();
        self.expire_due(&mut inner, now);
        let mut open: Vec<_> =
            inner.by_id.values().filter(|c| c.user_id == user_id && c.is_open(now)).cloned().collect();
        open.sort_by_key(|c| c.created_at);
        open
    }

    /// A challenge by id, whoever's it is (for callers that then check the
    /// user themselves).
    pub fn find(&self, challenge_id: &str) -> Option<Arc<Challenge>> {
        self.lock().by_id.get(challenge_id).cloned()
    }

    /// One challenge of a user by id.
    pub fn get(&self, challenge_id: &str, user_id: &str) -> Option<Arc<Challenge>> {
        self.lock().by_id.get(challenge_id).filter(|c| c.user_id == user_id).cloned()
    }

    /// A receiver that changes whenever a challenge is made (long polling).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.news.subscribe()
    }

    fn strike(&self, inner: &mut Inner, user_id: &str, now: i64) {
        let threshold = self.config.backoff_after_failures.max(1);
        let base = i64::try_from(self.config.backoff_secs).unwrap_or(60);
        let entry = inner.strikes.entry(user_id.to_string()).or_insert((0, 0));
        entry.0 += 1;
        if entry.0 >= threshold {
            // Doubles with each further failure, capped at one hour.
            let doublings = (entry.0 - threshold).min(6);
            entry.1 = now + (base << doublings).min(3600);
        }
    }

    /// Expires pending challenges past their time and forgets old ones.
    fn expire_due(&self, inner: &mut Inner, now: i64) {
        let due: Vec<Arc<Challenge>> = inner
            .by_id
            .values()
            .filter(|c| *c.state.borrow() == Outcome::Pending && c.expires_at <= now)
            .cloned()
            .collect();
        for c in due {
            c.state.send_replace(Outcome::Expired);
            let key = (c.user_id.clone(), c.purpose.origin());
            if inner.pending.get(&key) == Some(&c.id) {
                inner.pending.remove(&key);
            }
            self.strike(inner, &c.user_id, now);
        }
        // Closed challenges stay visible a while (late answers get "closed").
        inner.by_id.retain(|_, c| c.expires_at + 300 > now);
        inner.approved.retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn setup() -> (Challenges, ManualClock) {
        let clock = ManualClock::new(1_000_000);
        let config = MfaConfig { approval_window_secs: 30, ..MfaConfig::default() };
        (Challenges::new(config, Arc::new(clock.clone())), clock)
    }

    fn ldap(user: &str, host: [u8; 4]) -> ChallengeRequest {
        ChallengeRequest {
            user_id: user.into(),
            username: user.into(),
            purpose: Purpose::Ldap { host: IpAddr::from(host) },
            source: None,
            number_matching: false,
        }
    }

    fn pending(t: Ticket) -> (Arc<Challenge>, bool) {
        match t {
            Ticket::Pending { challenge, fresh } => (challenge, fresh),
            Ticket::AlreadyApproved => panic!("expected a challenge"),
        }
    }

    #[test]
    fn repeated_binds_share_one_challenge_and_one_approval() {
        let (ch, clock) = setup();
        let (first, fresh) = pending(ch.request(ldap("alice", [10, 0, 0, 5])).unwrap());
        assert!(fresh);
        let (again, fresh) = pending(ch.request(ldap("alice", [10, 0, 0, 5])).unwrap());
        assert!(!fresh, "a re-sent bind joins the pending challenge");
        assert_eq!(again.id, first.id);
        let (other_host, fresh) = pending(ch.request(ldap("alice", [10, 0, 0, 6])).unwrap());
        assert!(fresh && other_host.id != first.id, "another host is another login");

        assert_eq!(ch.answer(&first.id, "bob", "dev-b", Verdict::Approve { number: None }), Err(AnswerError::Unknown));
        let ok = ch.answer(&first.id, "alice", "dev-a", Verdict::Approve { number: None });
        assert_eq!(ok, Ok(Outcome::Approved { device_id: "dev-a".into() }));
        assert_eq!(ch.answer(&first.id, "alice", "dev-a", Verdict::Deny), Err(AnswerError::Closed), "one answer");
        assert!(matches!(ch.request(ldap("alice", [10, 0, 0, 5])).unwrap(), Ticket::AlreadyApproved));
        clock.advance(31);
        assert!(matches!(ch.request(ldap("alice", [10, 0, 0, 5])).unwrap(), Ticket::Pending { fresh: true, .. }));
    }

    #[test]
    fn number_matching_and_expiry() {
        let (ch, clock) = setup();
        let web = ChallengeRequest {
            purpose: Purpose::Web { client: "wiki".into() },
            number_matching: true,
            ..ldap("alice", [0, 0, 0, 0])
        };
        let (c, _) = pending(ch.request(web.clone()).unwrap());
        let number = c.number.unwrap();
        assert!((10..=99).contains(&number) && c.choices.len() == 3 && c.choices.contains(&number));
        let wrong = (10..=99).find(|n| *n != number).unwrap();
        let denied = ch.answer(&c.id, "alice", "d", Verdict::Approve { number: Some(wrong) });
        assert_eq!(denied, Ok(Outcome::Denied { device_id: "d".into(), fraud: false }), "wrong number denies");
        let (c, _) = pending(ch.request(web.clone()).unwrap());
        assert_eq!(
            ch.answer(&c.id, "alice", "d", Verdict::Approve { number: c.number }),
            Ok(Outcome::Approved { device_id: "d".into() })
        );
        let (c, fresh) = pending(ch.request(web.clone()).unwrap());
        assert!(fresh, "number matching never reuses an approval");
        let (other, fresh) = pending(ch.request(web).unwrap());
        assert!(fresh && other.id != c.id, "nor joins another screen's challenge");
        clock.advance(61);
        assert_eq!(ch.answer(&c.id, "alice", "d", Verdict::Approve { number: c.number }), Err(AnswerError::Closed));
        assert_eq!(c.outcome(), Outcome::Expired);
    }

    #[test]
    fn fatigue_limits() {
        let (ch, clock) = setup();
        // Outstanding: three hosts at once, the fourth refused.
        for host in 1..=3 {
            ch.request(ldap("alice", [10, 0, 0, host])).unwrap();
        }
        assert_eq!(ch.request(ldap("alice", [10, 0, 0, 4])).unwrap_err(), Refusal::TooManyOutstanding);
        // Other users are not affected.
        ch.request(ldap("bob", [10, 0, 0, 4])).unwrap();
        // Three timeouts: backoff.
        clock.advance(61);
        assert!(ch.open_for("alice").is_empty(), "all expired");
        let refusal = ch.request(ldap("alice", [10, 0, 0, 9])).unwrap_err();
        assert!(matches!(refusal, Refusal::BackingOff { until } if until > clock.now()), "{refusal:?}");
        clock.advance(61);
        // Rate limit: 5 pushes per user per minute (3 were 122 s ago).
        let (ch, _) = setup();
        for i in 0..5 {
            let (c, _) = pending(ch.request(ldap("carol", [10, 0, 1, i])).unwrap());
            ch.answer(&c.id, "carol", "d", Verdict::Approve { number: None }).unwrap();
        }
        assert_eq!(ch.request(ldap("carol", [10, 0, 1, 9])).unwrap_err(), Refusal::UserRateLimited);
    }

    #[tokio::test]
    async fn waiters_see_the_answer() {
        let (ch, _) = setup();
        let ch = Arc::new(ch);
        let (c, _) = pending(ch.request(ldap("alice", [10, 0, 0, 5])).unwrap());
        let waiter = {
            let (ch, c) = (Arc::clone(&ch), Arc::clone(&c));
            tokio::spawn(async move { ch.wait(&c, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        ch.answer(&c.id, "alice", "d", Verdict::Deny).unwrap();
        assert_eq!(waiter.await.unwrap(), Outcome::Denied { device_id: "d".into(), fraud: false });
        // A wait that runs out leaves the challenge pending for the next bind.
        let (c, _) = pending(ch.request(ldap("alice", [10, 0, 0, 6])).unwrap());
        assert_eq!(ch.wait(&c, Duration::from_millis(20)).await, Outcome::Pending);
    }
}
