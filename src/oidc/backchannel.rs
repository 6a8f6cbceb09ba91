//! OpenID Connect Back-Channel Logout 1.0, the provider's side: when a
//! sign-in session ends, each client it signed in to that registered a
//! back-channel logout URI is sent a logout token by a direct POST.
//!
//! Delivery runs in its own task: the user's sign-out never waits on a
//! client. Each attempt is bounded, a failed one is retried once, and the
//! outcome is logged with the client's name, never with the token (a logout
//! token is a bearer credential for ending the user's session at the client).
//! Tasks still running at shutdown are dropped with the runtime.

use std::time::Duration;

use super::Provider;
use crate::model::OidcClient;
use crate::outbound::HttpClient;

/// Each attempt (connect, send, response status) must finish within this.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause before the one retry.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Sends logout tokens for the ended session `sid` of user `sub` to every
/// client in `clients` that has a back-channel logout URI, in the background;
/// returns at once with the number of deliveries started.
pub fn notify<C: AsRef<OidcClient>>(
    provider: &Provider,
    http: &HttpClient,
    clients: &[C],
    sub: &str,
    sid: &str,
    now: i64,
) -> usize {
    let mut started = 0;
    for client in clients.iter().map(AsRef::as_ref) {
        let Some(uri) = client.backchannel_logout_uri.clone() else { continue };
        let Ok(token) = provider.logout_token(client, sub, sid, now) else {
            tracing::error!(client = %client.name, "cannot sign a logout token");
            continue;
        };
        tokio::spawn(deliver(http.clone(), client.name.clone(), uri, token));
        started += 1;
    }
    started
}

/// POSTs one logout token: success on 2xx; one retry after a transport
/// failure or a 5xx; other answers (the client rejected the token) are final.
async fn deliver(http: HttpClient, client: String, uri: String, token: String) {
    for attempt in 1..=2 {
        match http.post_form(&uri, &[("logout_token", &token)], ATTEMPT_TIMEOUT).await {
            Ok(status) if (200..300).contains(&status) => {
                tracing::info!(client = %client, status, "back-channel logout delivered");
                return;
            }
            Ok(status) if status < 500 => {
                tracing::warn!(client = %client, status, "back-channel logout rejected by the client");
                return;
            }
            Ok(status) => tracing::warn!(client = %client, status, attempt, "back-channel logout failed"),
            Err(e) => tracing::warn!(client = %client, error = %e, attempt, "back-channel logout failed"),
        }
        if attempt == 1 {
            tokio::time::sleep(RETRY_DELAY).await;
        }
    }
    tracing::warn!(client = %client, "back-channel logout not delivered; giving up");
}
