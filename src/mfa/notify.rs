//! Pushes new challenges to a user's devices through the configured senders
//! (APNs, FCM, Web Push, webhook). Each push runs in its own task with the
//! challenge's expiry as deadline, so a slow push service never delays the
//! sign-in; a device the push service reports gone falls back to poll mode.

use std::sync::Arc;

use super::Notifier;
use super::challenge::Challenge;
use crate::clock::SharedClock;
use crate::push::{PushError, PushMessage, PushTarget, Senders};
use crate::secrets::Sealer;
use crate::store::{MfaDevice, Store};

/// A [`Notifier`] that delivers through `senders`.
pub fn push_notifier(senders: Senders, store: Store, sealer: Arc<Sealer>, clock: SharedClock) -> Notifier {
    Arc::new(move |challenge: Arc<Challenge>, devices: Vec<MfaDevice>| {
        let Ok(message) = PushMessage::challenge(challenge.id.clone(), challenge.expires_at) else {
            tracing::error!("challenge id unfit for a push message");
            return;
        };
        let left = u64::try_from(challenge.expires_at - clock.now()).unwrap_or(0);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(left);
        for device in devices.into_iter().filter(|d| d.push_kind != "none") {
            let Some(target) = target_of(&device, &sealer) else {
                tracing::warn!(device = %device.id, kind = %device.push_kind, "stored push address unusable");
                continue;
            };
            let (senders, store, message) = (senders.clone(), store.clone(), message.clone());
            tokio::spawn(async move {
                match senders.deliver(&target, &message, deadline).await {
                    Ok(()) => tracing::info!(device = %device.id, kind = target.kind(), "push sent"),
                    Err(PushError::Unregistered) => {
                        tracing::info!(device = %device.id, "push address unregistered; device falls back to polling");
                        if let Err(e) = store.drop_push_address(&device.id).await {
                            tracing::error!(error = %e, "cannot drop a dead push address");
                        }
                    }
                    Err(e) => tracing::warn!(device = %device.id, kind = target.kind(), error = %e, "push failed"),
                }
            });
        }
    })
}

fn target_of(device: &MfaDevice, sealer: &Sealer) -> Option<PushTarget> {
    let plain = match &device.push_address {
        Some(sealed) => String::from_utf8(sealer.open(sealed).ok()?).ok()?,
        None => String::new(),
    };
    PushTarget::from_stored(&device.push_kind, &plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::{DirectoryConfig, PushConfig};
    use crate::mfa::MfaConfig;
    use crate::mfa::challenge::{ChallengeRequest, Challenges, Purpose, Ticket};
    use crate::model::Actor;
    use crate::push::mock::{Mock, Reply};
    use crate::store::NewUser;

    const LIVE: &str = "5e2a9f0c3b1d4e6f8a7b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f";
    const GONE: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    /// A new challenge reaches every device with a push address (and only
    /// those); a token APNs calls unregistered is dropped from its device.
    #[tokio::test]
    async fn challenges_are_pushed_and_dead_tokens_dropped() {
        let (mock, http) = Mock::start(|r, _| {
            if r.path.ends_with(GONE) { Reply::json(410, r#"{"reason":"Unregistered"}"#) } else { Reply::status(200) }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let sealer = Arc::new(Sealer::load_or_create(dir.path()).unwrap());
        let clock: SharedClock = Arc::new(ManualClock::new(1_750_000_000));
        let mut config = PushConfig::default();
        std::fs::write(dir.path().join("AuthKey.p8"), rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        config.apns.base_url = mock.url.clone();
        config.apns.key_file = Some(dir.path().join("AuthKey.p8"));
        config.apns.team_id = Some("TEAM123456".into());
        config.apns.key_id = Some("KEY1234567".into());
        config.apns.topic = Some("org.example.approve".into());
        let senders =
            Senders::from_config(&config, dir.path(), "https://id.example", &http, &sealer, Arc::clone(&clock))
                .unwrap();

        let store = Store::open_in_memory().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        let alice = tx
            .add_user(
                NewUser { name: "alice".into(), ..Default::default() },
                &DirectoryConfig::default(),
                &Actor::system(),
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let device = |id: &str, kind: &str, token: Option<&str>| MfaDevice {
            id: id.into(),
            user_id: alice.id.clone(),
            name: id.into(),
            public_key: "unused".into(),
            push_kind: kind.into(),
            push_address: token.map(|t| sealer.seal(t.as_bytes()).unwrap()),
            created_at: 0,
            last_seen_at: None,
        };
        let devices =
            vec![device("phone", "apns", Some(LIVE)), device("old", "apns", Some(GONE)), device("cli", "none", None)];
        for d in &devices {
            store.add_device(d).await.unwrap();
        }

        let challenges = Challenges::new(MfaConfig::default(), Arc::clone(&clock));
        let ticket = challenges
            .request(ChallengeRequest {
                user_id: alice.id.clone(),
                username: "alice".into(),
                purpose: Purpose::Ldap { host: [10, 0, 0, 5].into() },
                source: None,
                number_matching: false,
            })
            .unwrap();
        let Ticket::Pending { challenge, .. } = ticket else { panic!("expected a challenge") };
        let notify = push_notifier(senders, store.clone(), sealer, clock);
        notify(Arc::clone(&challenge), devices);

        let dropped = async {
            loop {
                if store.device("old").await.unwrap().unwrap().push_kind == "none" {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), dropped).await.expect("dead token dropped");
        let requests = mock.requests();
        let mut paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(paths, [format!("/3/device/{GONE}"), format!("/3/device/{LIVE}")], "one push per push device");
        for r in &requests {
            assert_eq!(r.header("apns-collapse-id"), Some(challenge.id.as_str()));
            let body = String::from_utf8_lossy(&r.body);
            assert!(body.contains(&challenge.id) && !body.contains("alice") && !body.contains("10.0.0.5"), "{body}");
        }
        let phone = store.device("phone").await.unwrap().unwrap();
        assert_eq!(phone.push_kind, "apns", "a live token is kept");
    }
}
