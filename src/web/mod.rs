//! The HTTPS front end (axum over rustls): one router per area, merged here.
//! Today: the OpenID provider's discovery, JWKS and token endpoints.

mod account;
mod oidc;
mod signin;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::sync::watch;

use crate::identity::Identity;
use crate::oidc::SharedProvider;

/// What every handler can reach; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub identity: Arc<Identity>,
    pub provider: SharedProvider,
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let limit = state.identity.config.http.max_body_bytes;
    Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .merge(oidc::routes())
        .merge(signin::routes())
        .merge(account::routes())
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(deadline))
        .with_state(state)
}

/// Every request gets an answer within 30 s (a stuck handler gives 503).
async fn deadline(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(Duration::from_secs(30), next.run(req)).await {
        Ok(r) => r,
        Err(_) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response(),
    }
}

/// Binds the HTTPS listener (at start-up, so a taken port fails loudly).
///
/// # Errors
/// The address cannot be bound.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("cannot listen for HTTPS on {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves HTTPS on `listener` until `shutdown` turns true.
///
/// # Errors
/// The server fails.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
        stopper.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    tracing::info!(https = %listener.local_addr()?, "web server listening");
    let mut server = axum_server::from_tcp_rustls(listener, config)?;
    // A client must send its request headers promptly (slowloris).
    server.http_builder().http1().header_read_timeout(Duration::from_secs(10));
    server.handle(handle).serve(app(state).into_make_service_with_connect_info::<SocketAddr>()).await?;
    Ok(())
}
