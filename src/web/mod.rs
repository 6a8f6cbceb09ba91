//! The HTTPS front end (axum over rustls): one router per area, merged here,
//! under shared limits (body size, deadline, requests in flight).

mod account;
mod approve;
mod device;
mod oidc;
mod signin;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use tokio::sync::{Semaphore, watch};

use crate::identity::Identity;
use crate::oidc::SharedProvider;

/// What every handler can reach; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub identity: Arc<Identity>,
    pub provider: SharedProvider,
    /// Outbound HTTP (back-channel logout), one client for the whole server.
    pub outbound: crate::outbound::HttpClient,
    /// The VAPID public key the approval app subscribes to Web Push with;
    /// `None` when Web Push is not configured.
    pub vapid_public_key: Option<String>,
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let limit = state.identity.config.http.max_body_bytes;
    let in_flight = Arc::new(Semaphore::new(state.identity.config.http.max_concurrent_requests));
    Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .merge(oidc::routes())
        .merge(signin::routes())
        .merge(account::routes())
        .merge(device::routes())
        .merge(approve::routes())
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(deadline))
        .layer(axum::middleware::from_fn_with_state(in_flight, shed_load))
        .with_state(state)
}

/// Past `http.max_concurrent_requests` in flight, answers 503 at once (with
/// Retry-After) so an overload neither queues without bound nor starves the
/// requests already being served.
async fn shed_load(
    State(in_flight): State<Arc<Semaphore>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Ok(_permit) = in_flight.try_acquire() else {
        tracing::warn!("HTTP overload: request shed");
        let headers = [(axum::http::header::RETRY_AFTER, "1")];
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, headers, "server busy, retry shortly\n").into_response();
    };
    next.run(req).await
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy,
/// in which case `X-Forwarded-For` is walked from the right past trusted
/// proxies (entries further left are client-supplied and could be forged).
pub fn client_ip(trusted: &[ipnet::IpNet], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    let hops: Vec<&str> = hops.flat_map(|v| v.split(',')).map(str::trim).collect();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.1.1".parse().unwrap());
        // From a trusted proxy: the rightmost untrusted hop (6.6.6.6 is client-supplied).
        assert_eq!(client_ip(&trusted, ip("10.0.0.2"), &headers), ip("203.0.113.9"));
        // From anyone else the header is ignored.
        assert_eq!(client_ip(&trusted, ip("198.51.100.1"), &headers), ip("198.51.100.1"));
        // Nothing trusted configured: always the peer.
        assert_eq!(client_ip(&[], ip("10.0.0.2"), &headers), ip("10.0.0.2"));
        // A garbage hop stops the walk at the last good address.
        headers.insert("x-forwarded-for", "junk, 10.2.2.2".parse().unwrap());
        assert_eq!(client_ip(&trusted, ip("::1"), &headers), ip("10.2.2.2"));
        // No header from a trusted proxy: the proxy itself.
        assert_eq!(client_ip(&trusted, ip("::1"), &HeaderMap::new()), ip("::1"));
    }
}
