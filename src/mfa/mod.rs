//! Second factors: push approval on enrolled devices (with number matching
//! for web sign-ins), TOTP, recovery codes; the policy that says who needs
//! them. Protocol front ends (LDAP binds, web sign-in) ask [`Mfa`]; the
//! device API and push senders talk to it; it names no protocol type.

pub mod alert;
pub mod challenge;
pub mod device;
pub mod ldap;
pub mod notify;
pub mod pending;
pub mod recovery;
pub mod totp;
pub mod webauthn;

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;
use crate::directory::{Account, AccountKind, Snapshot};
use crate::store::{MfaDevice, Store, StoreError, StoreResult};
use challenge::{AnswerError, Challenge, ChallengeRequest, Challenges, Outcome, Refusal, Ticket};
use device::Verdict;

/// Who needs a second factor, and the limits that keep pushes safe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MfaConfig {
    /// Members of these groups need a second factor (service accounts never).
    pub required_groups: Vec<String>,
    /// Every user binding over LDAP from these addresses (a container, a
    /// subnet of containers) needs a second factor.
    pub ldap_required_sources: Vec<ipnet::IpNet>,
    /// Enforce on LDAP binds (SSH logins through SSSD).
    pub ldap: bool,
    /// Enforce on web sign-ins.
    pub web: bool,
    /// An LDAP bind waiting for approval answers by then; keep it below
    /// SSSD's `ldap_opt_timeout`.
    pub ldap_deadline_secs: u64,
    /// LDAP users without a push device may append a TOTP code to their
    /// password in the same bind (`password123456`).
    pub ldap_totp_fallback: bool,
    /// How long a challenge takes answers.
    pub challenge_ttl_secs: u64,
    /// After an approval, further binds of that user from the same host need
    /// no new push for this long (0 = off).
    pub approval_window_secs: u64,
    /// Challenges open at once per user.
    pub max_outstanding_per_user: usize,
    /// New challenges per user per minute.
    pub user_pushes_per_minute: usize,
    /// New challenges in total per minute.
    pub global_pushes_per_minute: usize,
    /// Consecutive denials or timeouts before pushes back off.
    pub backoff_after_failures: u32,
    /// First backoff; it doubles with each further failure, up to an hour.
    pub backoff_secs: u64,
    /// Lifetime of a device enrollment link.
    pub enrollment_ttl_secs: u64,
    /// Where admins are alerted (HTTP POST, JSON) when a user reports a push
    /// as fraud; `None` = audit log only.
    pub alert_url: Option<String>,
    /// Signs alerts (`X-Portcullis-Signature: sha256=HEX`, HMAC-SHA256 of the
    /// body) so the receiver knows they came from Portcullis.
    pub alert_secret: Option<crate::config::Secret>,
}

impl Default for MfaConfig {
    fn default() -> Self {
        Self {
            required_groups: Vec::new(),
            ldap_required_sources: Vec::new(),
            ldap: true,
            web: true,
            ldap_deadline_secs: 50,
            ldap_totp_fallback: true,
            challenge_ttl_secs: 60,
            approval_window_secs: 30,
            max_outstanding_per_user: 3,
            user_pushes_per_minute: 5,
            global_pushes_per_minute: 600,
            backoff_after_failures: 3,
            backoff_secs: 60,
            enrollment_ttl_secs: 600,
            alert_url: None,
            alert_secret: None,
        }
    }
}

/// Where a sign-in happens, for the MFA policy ([`Mfa::required`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// An LDAP bind (an SSH login through SSSD) from `source`.
    Ldap { source: Option<std::net::IpAddr> },
    /// A web sign-in; `client_requires_mfa` when the OIDC client being
    /// signed in to demands a second factor of everyone.
    Web { client_requires_mfa: bool },
}

/// Called with each new challenge and the user's devices, to push it.
pub type Notifier = Arc<dyn Fn(Arc<Challenge>, Vec<MfaDevice>) + Send + Sync>;

/// A user's second factors.
#[derive(Debug, Clone, Default)]
pub struct Factors {
    pub devices: Vec<MfaDevice>,
    /// A confirmed TOTP secret.
    pub totp: bool,
    pub recovery_codes_left: i64,
    /// Registered WebAuthn credentials (0 when WebAuthn is unavailable).
    pub webauthn: usize,
}

impl Factors {
    /// Whether the user has any second factor at all.
    pub fn any(&self) -> bool {
        !self.devices.is_empty() || self.totp || self.recovery_codes_left > 0 || self.webauthn > 0
    }
}

/// Why a push was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushRefusal {
    /// The user reported a push as fraud; an admin must clear it.
    Locked,
    /// The user has no device.
    NoDevice,
    Limit(Refusal),
}

impl std::fmt::Display for PushRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushRefusal::Locked => f.write_str("pushes locked after a fraud report"),
            PushRefusal::NoDevice => f.write_str("no approval device enrolled"),
            PushRefusal::Limit(r) => r.fmt(f),
        }
    }
}

/// The second-factor service.
pub struct Mfa {
    pub config: MfaConfig,
    pub challenges: Challenges,
    /// Web sign-ins past the password, waiting for their second factor.
    pub pending: pending::PendingSignins,
    store: Store,
    clock: SharedClock,
    data_dir: std::path::PathBuf,
    sealer: OnceLock<crate::secrets::Sealer>,
    notifier: OnceLock<Notifier>,
    compat: OnceLock<crate::push::webhook::CompatClient>,
    webhook: OnceLock<crate::push::webhook::WebhookSender>,
    /// The WebAuthn relying party (`webauthn.rs`), once the issuer is known.
    webauthn: OnceLock<webauthn::RelyingParty>,
    /// Members of this group always need a second factor.
    admin_group: Option<String>,
    /// Tells admins about fraud reports (`mfa.alert_url`).
    alerter: OnceLock<alert::Alerter>,
}

impl Mfa {
    /// The service over `store`; `data_dir` holds `secret.key` (opened on
    /// first use, for TOTP secrets).
    pub fn new(config: MfaConfig, store: Store, clock: SharedClock, data_dir: std::path::PathBuf) -> Self {
        Self {
            challenges: Challenges::new(config.clone(), Arc::clone(&clock)),
            config,
            pending: pending::PendingSignins::default(),
            store,
            clock,
            data_dir,
            sealer: OnceLock::new(),
            notifier: OnceLock::new(),
            compat: OnceLock::new(),
            webhook: OnceLock::new(),
            webauthn: OnceLock::new(),
            admin_group: None,
            alerter: OnceLock::new(),
        }
    }

    /// Names the instance admins' group, whose members always need a second
    /// factor whatever the rest of the policy says.
    #[must_use]
    pub fn with_admin_group(mut self, group: &str) -> Self {
        self.admin_group = (!group.is_empty()).then(|| group.to_string());
        self
    }

    /// Installs what alerts admins about fraud reports (first call wins).
    pub fn set_alerter(&self, alerter: alert::Alerter) {
        let _ = self.alerter.set(alerter);
    }

    /// Installs what pushes new challenges to devices (first call wins).
    pub fn set_notifier(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// Installs the client of an existing push-approval service
    /// (`push.webhook.mode = "compat"`, first call wins).
    pub fn set_compat(&self, client: crate::push::webhook::CompatClient) {
        let _ = self.compat.set(client);
    }

    /// The existing push-approval service's client, when configured: LDAP
    /// approvals then go through it instead of enrolled devices.
    pub fn compat(&self) -> Option<&crate::push::webhook::CompatClient> {
        self.compat.get()
    }

    /// Installs the generic webhook, whose signed callbacks may answer
    /// challenges of users with a webhook device (first call wins).
    pub fn set_webhook(&self, sender: crate::push::webhook::WebhookSender) {
        let _ = self.webhook.set(sender);
    }

    /// Takes a decision callback from the generic webhook: `body` must be
    /// signed (`signature` header) with the webhook secret and name an open
    /// challenge of a user who enrolled a webhook device; it is answered on
    /// that device's behalf. `None` when the callback is not acceptable
    /// (unsigned, bad signature, malformed, no such challenge or device).
    ///
    /// # Errors
    /// Database errors.
    pub async fn webhook_decision(
        &self,
        body: &[u8],
        signature: &str,
    ) -> StoreResult<Option<Result<Outcome, AnswerError>>> {
        #[derive(Deserialize)]
        struct Decision {
            challenge_id: String,
            verdict: String,
            #[serde(default)]
            number: Option<u8>,
        }
        let Some(webhook) = self.webhook.get() else { return Ok(None) };
        if !webhook.verify_callback(body, signature) {
            return Ok(None);
        }
        let Ok(decision) = serde_json::from_slice::<Decision>(body) else { return Ok(None) };
        let Some(verdict) = Verdict::parse(&decision.verdict, decision.number) else { return Ok(None) };
        let Some(challenge) = self.challenges.find(&decision.challenge_id) else { return Ok(None) };
        let devices = self.store.devices_of(&challenge.user_id).await?;
        let Some(device) = devices.iter().find(|d| d.push_kind == "webhook") else { return Ok(None) };
        self.answer(&challenge.id, device, verdict).await.map(Some)
    }

    fn sealer(&self) -> StoreResult<&crate::secrets::Sealer> {
        if let Some(s) = self.sealer.get() {
            return Ok(s);
        }
        let sealer = crate::secrets::Sealer::load_or_create(&self.data_dir)
            .map_err(|e| StoreError::Invalid(format!("cannot open secret.key: {e:#}")))?;
        Ok(self.sealer.get_or_init(|| sealer))
    }

    /// Whether `account` needs a second factor for `service`. Service
    /// accounts never do; members of the admin group always do, on every
    /// service; other users when the service is enforced (`mfa.ldap`,
    /// `mfa.web`) and they are in a required group, or the service asks it
    /// of everyone (an LDAP source in `ldap_required_sources`, an OIDC client
    /// registered with `--require-mfa`).
    pub fn required(&self, snap: &Snapshot, account: &Account, service: Service) -> bool {
        if account.kind != AccountKind::User {
            return false;
        }
        let groups = snap.groups_of(&account.name);
        if self.admin_group.as_deref().is_some_and(|admin| groups.iter().any(|g| g == admin)) {
            return true;
        }
        let (enforced, everyone) = match service {
            Service::Ldap { source } => (
                self.config.ldap,
                source.is_some_and(|ip| self.config.ldap_required_sources.iter().any(|net| net.contains(&ip))),
            ),
            Service::Web { client_requires_mfa } => (self.config.web, client_requires_mfa),
        };
        enforced && (everyone || self.config.required_groups.iter().any(|g| groups.contains(g)))
    }

    /// A user's enrolled factors.
    ///
    /// # Errors
    /// Database errors.
    pub async fn factors(&self, user_id: &str) -> StoreResult<Factors> {
        Ok(Factors {
            devices: self.store.devices_of(user_id).await?,
            totp: self.store.totp(user_id).await?.is_some_and(|t| t.confirmed),
            recovery_codes_left: self.store.recovery_codes_left(user_id).await?,
            webauthn: if self.webauthn_available() {
                usize::try_from(self.store.webauthn_count(user_id).await?).unwrap_or(0)
            } else {
                0
            },
        })
    }

    /// Asks the user's devices for approval (see [`Challenges::request`]):
    /// refused while the user's pushes are locked or without a device.
    ///
    /// # Errors
    /// Database errors.
    pub async fn request_approval(&self, req: ChallengeRequest) -> StoreResult<Result<Ticket, PushRefusal>> {
        let now = self.clock.now();
        if self.store.push_locked(&req.user_id).await? {
            self.audit(&req.username, "mfa.push_refused", "pushes locked after a fraud report", now).await;
            return Ok(Err(PushRefusal::Locked));
        }
        let devices = self.store.devices_of(&req.user_id).await?;
        if devices.is_empty() {
            return Ok(Err(PushRefusal::NoDevice));
        }
        let username = req.username.clone();
        let what = req.purpose.describe();
        match self.challenges.request(req) {
            Ok(Ticket::Pending { challenge, fresh: true }) => {
                self.audit(&username, "mfa.challenge", &format!("{what} (challenge {})", challenge.id), now).await;
                if let Some(notify) = self.notifier.get() {
                    notify(Arc::clone(&challenge), devices);
                }
                Ok(Ok(Ticket::Pending { challenge, fresh: true }))
            }
            Ok(ticket) => Ok(Ok(ticket)),
            Err(refusal) => {
                self.audit(&username, "mfa.push_refused", &format!("{what}: {refusal}"), now).await;
                Ok(Err(PushRefusal::Limit(refusal)))
            }
        }
    }

    /// Takes a device's signed answer (the signature is the caller's check).
    /// A fraud report locks the user's pushes and is audited.
    ///
    /// # Errors
    /// Database errors (outer); a closed or unknown challenge (inner).
    pub async fn answer(
        &self,
        challenge_id: &str,
        device: &MfaDevice,
        verdict: Verdict,
    ) -> StoreResult<Result<Outcome, AnswerError>> {
        let now = self.clock.now();
        let challenge = self.challenges.get(challenge_id, &device.user_id);
        let outcome = match self.challenges.answer(challenge_id, &device.user_id, &device.id, verdict) {
            Ok(o) => o,
            Err(e) => return Ok(Err(e)),
        };
        let detail = format!("challenge {challenge_id}: {} by device {}", verdict.word(), device.name);
        if let Outcome::Denied { fraud: true, .. } = outcome {
            self.store.lock_push(&device.user_id, "reported as fraud from a device", now).await?;
            tracing::warn!(user = %device.user_id, device = %device.name, "push reported as fraud; pushes locked");
            self.audit(&device.user_id, "mfa.fraud_reported", &detail, now).await;
            if let (Some(alerter), Some(challenge)) = (self.alerter.get(), challenge) {
                alerter.send(alert::Alert {
                    event: "mfa.fraud_reported",
                    username: challenge.username.clone(),
                    user_id: device.user_id.clone(),
                    device: device.name.clone(),
                    what: challenge.purpose.describe(),
                    source: challenge.source.map(|ip| ip.to_string()),
                    time: now,
                });
            }
        } else {
            self.audit(&device.user_id, "mfa.answer", &detail, now).await;
        }
        Ok(Ok(outcome))
    }

    /// Checks a TOTP code, accepting each code at most once.
    ///
    /// # Errors
    /// Database errors, or a sealed secret that cannot be opened.
    pub async fn verify_totp(&self, user_id: &str, code: &str) -> StoreResult<bool> {
        let Some(record) = self.store.totp(user_id).await? else { return Ok(false) };
        let secret = self.open_secret(&record.secret)?;
        let Some(step) = totp::matching_step(&secret, code, self.clock.now()) else { return Ok(false) };
        if step <= record.last_step {
            return Ok(false);
        }
        let claimed = self.store.claim_totp_step(user_id, step).await?;
        if claimed && !record.confirmed {
            self.store.confirm_totp(user_id).await?;
        }
        Ok(claimed)
    }

    /// Starts TOTP enrollment: a new secret (unconfirmed until a code
    /// verifies); returns the `otpauth://` URL and the base32 secret.
    ///
    /// # Errors
    /// Database or sealing errors.
    pub async fn start_totp(&self, user_id: &str, username: &str, issuer: &str) -> StoreResult<(String, String)> {
        let secret = totp::new_secret();
        let sealed = self.sealer()?.seal(&secret).map_err(|e| StoreError::Invalid(format!("{e:#}")))?;
        self.store.set_totp(user_id, &sealed, self.clock.now()).await?;
        let url = totp::otpauth_url(&secret, issuer, username)
            .ok_or_else(|| StoreError::Invalid("cannot build the otpauth URL".into()))?;
        Ok((url, totp::secret_base32(&secret)))
    }

    fn open_secret(&self, sealed: &str) -> StoreResult<Vec<u8>> {
        self.sealer()?.open(sealed).map_err(|e| StoreError::Invalid(format!("{e:#}")))
    }

    /// Seals a device's push address for `mfa_devices.push_address` (the
    /// plain form per kind is described in `web/device.rs`).
    ///
    /// # Errors
    /// `secret.key` cannot be opened, or sealing failed.
    pub fn seal_push_address(&self, plain: &str) -> StoreResult<String> {
        self.sealer()?.seal(plain.as_bytes()).map_err(|e| StoreError::Invalid(format!("{e:#}")))
    }

    /// Opens a push address sealed by [`Mfa::seal_push_address`].
    ///
    /// # Errors
    /// `secret.key` cannot be opened, or the value was not sealed with it.
    pub fn open_push_address(&self, sealed: &str) -> StoreResult<String> {
        let plain = self.open_secret(sealed)?;
        String::from_utf8(plain).map_err(|_| StoreError::Invalid("a sealed push address is not UTF-8".into()))
    }

    /// Replaces a user's recovery codes; the plain codes, shown once.
    ///
    /// # Errors
    /// Database errors.
    pub async fn new_recovery_codes(&self, user_id: &str) -> StoreResult<Vec<String>> {
        let codes = recovery::generate();
        let hashes: Vec<String> = codes.iter().map(|c| recovery::hash(c)).collect();
        self.store.replace_recovery_codes(user_id, &hashes).await?;
        Ok(codes)
    }

    /// Spends a recovery code.
    ///
    /// # Errors
    /// Database errors.
    pub async fn use_recovery_code(&self, user_id: &str, code: &str) -> StoreResult<bool> {
        let used = self.store.use_recovery_code(user_id, &recovery::hash(code), self.clock.now()).await?;
        if used {
            self.audit(user_id, "mfa.recovery_code_used", "", self.clock.now()).await;
        }
        Ok(used)
    }

    /// A one-time device enrollment token for a user (valid
    /// `enrollment_ttl_secs`); only its hash is stored.
    ///
    /// # Errors
    /// Database errors.
    pub async fn enrollment_token(&self, user_id: &str) -> StoreResult<String> {
        let token = crate::oidc::random_token();
        let ttl = i64::try_from(self.config.enrollment_ttl_secs).unwrap_or(600);
        let hash = crate::oidc::hash_client_secret(&token);
        self.store.create_enrollment(&hash, user_id, self.clock.now() + ttl).await?;
        Ok(token)
    }

    async fn audit(&self, target: &str, action: &str, detail: &str, now: i64) {
        if let Err(e) = self.store.audit_event("mfa", action, target, "", detail, now).await {
            tracing::error!(error = %e, action, "cannot write an audit row");
        }
    }
}
