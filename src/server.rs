//! `portcullis serve`: bootstrap on first start, then run the LDAP listeners
//! and the directory refresher until SIGTERM or ctrl-c.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::identity::Identity;
use crate::ldap::{LdapServer, Listeners};
use crate::model::Actor;
use crate::store::Store;

/// How often the server checks the store for changes made by the CLI or
/// another process.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(250);
/// How often expired sessions, codes and refresh tokens are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// Name of the service account created with a printed password on first start.
pub const BOOTSTRAP_ACCOUNT: &str = "admin";

/// Runs the server until a shutdown signal.
///
/// # Errors
/// The store cannot be opened, TLS material is invalid, or a port cannot be bound.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let store = Store::open(&config.database_path())
        .await
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?
        .with_provision_policy(config.provision.policy());
    bootstrap(&config, &store).await?;
    let tls = crate::tls::server_config(&config)?;
    let identity = Identity::open(Arc::clone(&config), store, Arc::new(SystemClock)).await?;
    let outbound = crate::outbound::HttpClient::new()?;
    let vapid_public_key = start_push(&config, &identity, &outbound)?;

    let ldap = TcpListener::bind(config.ldap.listen)
        .await
        .with_context(|| format!("cannot listen for LDAP on {}", config.ldap.listen))?;
    let ldaps = match config.ldap.ldaps_listen {
        Some(addr) => {
            Some(TcpListener::bind(addr).await.with_context(|| format!("cannot listen for LDAPS on {addr}"))?)
        }
        None => None,
    };
    tracing::info!(
        ldap = %ldap.local_addr()?,
        ldaps = ?ldaps.as_ref().and_then(|l| l.local_addr().ok()),
        base = %config.ldap.base_dn,
        users = identity.directory.load().user_count(),
        "portcullis is serving"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let provider = match config.http.listen {
        Some(_) => Some(open_provider(&config, &identity).await?),
        None => None,
    };
    let refresher = tokio::spawn(refresh(Arc::clone(&identity), provider.clone(), stop_rx.clone()));
    let web = match (config.http.listen, &provider) {
        (Some(addr), Some(p)) => {
            let listener = crate::web::bind(addr)?;
            let state = crate::web::AppState {
                identity: Arc::clone(&identity),
                provider: Arc::clone(&p.0),
                outbound: outbound.clone(),
                vapid_public_key,
            };
            Some(tokio::spawn(crate::web::serve(listener, Arc::clone(&tls), state, stop_rx.clone())))
        }
        _ => None,
    };
    let reconciler = if config.provision.enabled {
        let sealer = Arc::new(crate::secrets::Sealer::load_or_create(&config.data_dir)?);
        let reconciler = crate::provision::reconcile::Reconciler::new(
            identity.store.clone(),
            sealer,
            config.provision.clone(),
            Arc::clone(&identity.clock),
        );
        let mut stop = stop_rx.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        Some(tokio::spawn(reconciler.run(stopped)))
    } else {
        None
    };
    let server = LdapServer::new(Arc::clone(&identity), tls);
    let serving = tokio::spawn(server.serve(Listeners { ldap, ldaps }, stop_rx));

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = serving.await;
    if let Some(web) = web {
        if let Ok(Err(e)) = web.await {
            tracing::error!(error = %e, "web server failed");
        }
    }
    let _ = refresher.await;
    if let Some(reconciler) = reconciler {
        let _ = reconciler.await;
    }
    identity.store.close().await;
    Ok(())
}

/// Builds the configured push senders and has new challenges pushed
/// through them (devices without a push address poll instead); hands the
/// compatibility-mode client, if configured, to the MFA service. Returns
/// the VAPID public key when Web Push is on (the approval app needs it).
fn start_push(
    config: &Config,
    identity: &Identity,
    outbound: &crate::outbound::HttpClient,
) -> anyhow::Result<Option<String>> {
    let sealer = Arc::new(crate::secrets::Sealer::load_or_create(&config.data_dir)?);
    let senders = crate::push::Senders::from_config(
        &config.push,
        &config.data_dir,
        &config.http.issuer(),
        outbound,
        &sealer,
        Arc::clone(&identity.clock),
    )
    .context("push configuration")?;
    let notifier =
        crate::mfa::notify::push_notifier(senders.clone(), identity.store.clone(), sealer, Arc::clone(&identity.clock));
    identity.mfa.set_notifier(notifier);
    if let Some(compat) = senders.compat() {
        identity.mfa.set_compat(compat.clone());
    }
    if let Some(webhook) = senders.webhook() {
        identity.mfa.set_webhook(webhook.clone());
    }
    if let Some(url) = &config.mfa.alert_url {
        let alerter = crate::mfa::alert::Alerter::new(url, config.mfa.alert_secret.clone(), outbound.clone())?;
        identity.mfa.set_alerter(alerter);
    }
    Ok(senders.vapid_public_key().map(str::to_string))
}

/// The OpenID provider with the sealer that opens its keys.
type ProviderParts = (Arc<crate::oidc::Provider>, Arc<crate::secrets::Sealer>);

/// Creates the first signing key if needed and loads the key set.
async fn open_provider(config: &Config, identity: &Identity) -> anyhow::Result<ProviderParts> {
    let sealer = Arc::new(crate::secrets::Sealer::load_or_create(&config.data_dir)?);
    crate::oidc::keys::ensure(&identity.store, &sealer).await?;
    let ttl = i64::try_from(config.http.access_token_ttl_secs).unwrap_or(i64::MAX);
    let keys = crate::oidc::keys::load(&identity.store, &sealer, identity.clock.now(), ttl).await?;
    let access = crate::oidc::access::AccessTokenCodec::new(&sealer.derive_key("oidc access tokens")?)?;
    let clients = crate::oidc::client_map(identity.store.oidc_clients().await?);
    let provider = crate::oidc::Provider {
        issuer: config.http.issuer(),
        access_token_ttl: ttl,
        keys: arc_swap::ArcSwap::from_pointee(keys),
        access,
        clients: arc_swap::ArcSwap::from_pointee(clients),
    };
    Ok((Arc::new(provider), sealer))
}

/// Polls the store's generation and rebuilds the snapshot (and reloads the
/// signing keys and OIDC clients) when it moved.
async fn refresh(identity: Arc<Identity>, provider: Option<ProviderParts>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(REFRESH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        if last_prune.elapsed() >= PRUNE_INTERVAL {
            last_prune = std::time::Instant::now();
            match identity.store.prune_expired(identity.clock.now()).await {
                Ok(n) => tracing::debug!(rows = n, "expired sign-in state pruned"),
                Err(e) => tracing::warn!(error = %e, "pruning expired sign-in state failed"),
            }
        }
        match identity.reload_if_changed().await {
            Ok(true) => {
                tracing::debug!(generation = identity.directory.load().generation, "directory reloaded");
                if let Some((p, sealer)) = &provider {
                    let now = identity.clock.now();
                    match crate::oidc::keys::load(&identity.store, sealer, now, p.access_token_ttl).await {
                        Ok(keys) => p.keys.store(Arc::new(keys)),
                        Err(e) => tracing::warn!(error = %e, "signing keys reload failed; keeping the previous set"),
                    }
                    match identity.store.oidc_clients().await {
                        Ok(clients) => p.clients.store(Arc::new(crate::oidc::client_map(clients))),
                        Err(e) => tracing::warn!(error = %e, "client reload failed; keeping the previous list"),
                    }
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "directory reload failed; serving the previous snapshot"),
        }
    }
}

/// On an empty store: creates the default group and an `admin` service
/// account whose password is printed once, on stderr, and never stored in clear.
async fn bootstrap(config: &Config, store: &Store) -> anyhow::Result<()> {
    if store.setting("bootstrapped").await?.is_some() {
        return Ok(());
    }
    let password = crate::cli::random_password();
    let hash = crate::auth::password::hash_password(&password).map_err(anyhow::Error::msg)?;
    let actor = Actor::system();
    let mut tx = store.begin().await?;
    if !tx.exists(crate::model::Kind::Group, &config.directory.default_group).await? {
        let group = crate::store::NewGroup {
            name: config.directory.default_group.clone(),
            description: "Default primary group of Portcullis users".into(),
            gid_number: None,
        };
        tx.add_group(group, &config.directory, &actor).await?;
    }
    let created = !tx.exists(crate::model::Kind::ServiceAccount, BOOTSTRAP_ACCOUNT).await?;
    if created {
        tx.add_service_account(BOOTSTRAP_ACCOUNT, &hash, &actor).await?;
    }
    tx.set_setting("bootstrapped", "1").await?;
    tx.commit().await?;
    if created {
        eprintln!(
            "\n=== Portcullis first start ===\n\
             Bootstrap admin bind DN: cn={BOOTSTRAP_ACCOUNT},ou=services,{}\n\
             Bootstrap admin password (shown once): {password}\n\
             Change it with: portcullis service-account passwd {BOOTSTRAP_ACCOUNT} --password-stdin\n",
            config.ldap.base_dn
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
