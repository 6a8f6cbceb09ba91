//! Alerts to admins: when a user answers a push with "this wasn't me", the
//! user's pushes lock (see [`super::Mfa::answer`]) and a JSON alert is POSTed
//! to `mfa.alert_url` — a chat webhook relay, a pager, a ticket system.
//! Sent in the background (a slow receiver never delays the device's
//! answer), retried once, signed with HMAC-SHA256 like the push webhook so
//! the receiver can tell it from a forgery. It names the user and what was
//! refused, never a secret.

use std::time::Duration;

use serde::Serialize;

use crate::config::Secret;
use crate::outbound::HttpClient;

/// Time a receiver gets to answer one attempt.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The alert body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Alert {
    /// What happened, e.g. `mfa.fraud_reported`.
    pub event: &'static str,
    pub username: String,
    pub user_id: String,
    /// The device that reported it.
    pub device: String,
    /// What the refused challenge asked, e.g. "SSH login to 10.0.0.5".
    pub what: String,
    /// Where the refused sign-in came from, when known.
    pub source: Option<String>,
    /// Unix seconds.
    pub time: i64,
}

/// Sends alerts to one URL.
#[derive(Clone)]
pub struct Alerter {
    url: String,
    secret: Option<Secret>,
    client: HttpClient,
}

impl std::fmt::Debug for Alerter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerter").field("signed", &self.secret.is_some()).finish_non_exhaustive()
    }
}

impl Alerter {
    /// An alerter for `url` (http or https), signing with `secret` if given.
    ///
    /// # Errors
    /// A URL that is not absolute http(s).
    pub fn new(url: &str, secret: Option<Secret>, client: HttpClient) -> anyhow::Result<Self> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            anyhow::bail!("mfa.alert_url must be an http(s) URL");
        }
        Ok(Self { url: url.to_string(), secret, client })
    }

    /// POSTs `alert` in the background: one retry after a network error or
    /// a 5xx, then it is logged and dropped (the audit log has it anyway).
    pub fn send(&self, alert: Alert) {
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(body) = serde_json::to_vec(&alert) else { return };
            let signature = this.secret.as_ref().map(|s| crate::push::webhook::signature(s.expose().as_bytes(), &body));
            let mut headers = vec![("content-type", "application/json")];
            if let Some(sig) = &signature {
                headers.push((crate::push::webhook::SIGNATURE_HEADER, sig.as_str()));
            }
            for attempt in 1..=2 {
                match this.client.post(&this.url, &headers, body.clone(), TIMEOUT).await {
                    Ok(r) if (200..300).contains(&r.status) => return,
                    Ok(r) if r.status < 500 => {
                        tracing::warn!(status = r.status, event = alert.event, "admin alert refused by its receiver");
                        return;
                    }
                    Ok(r) => tracing::warn!(status = r.status, attempt, "admin alert receiver failed"),
                    Err(e) => tracing::warn!(error = %e, attempt, "cannot reach the admin alert receiver"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
}
