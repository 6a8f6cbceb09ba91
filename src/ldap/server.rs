//! The LDAP transport: accept loops with global and per-address connection
//! limits, implicit TLS (LDAPS) and StartTLS, the `ldap3_proto` codec with a
//! message-size and BER-depth cap, idle and read timeouts, and graceful
//! shutdown. A malformed message closes only its own connection, after a
//! Notice of Disconnection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ldap3_proto::LdapCodec;
use ldap3_proto::proto::{LdapExtendedResponse, LdapMsg, LdapOp, LdapResultCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;

use super::error::result;
use super::ops::OID_NOTICE_OF_DISCONNECTION;
use super::session::{Reply, Session};
use crate::identity::Identity;

/// A byte stream the codec can run over: plain TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The bound sockets: plain LDAP (with StartTLS) and optional LDAPS.
#[derive(Debug)]
pub struct Listeners {
    pub ldap: TcpListener,
    pub ldaps: Option<TcpListener>,
}

/// The LDAP server: shared state for every connection.
pub struct LdapServer {
    identity: Arc<Identity>,
    acceptor: TlsAcceptor,
    connections: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Decrements the per-address count when a connection ends.
struct IpSlot {
    ip: IpAddr,
    table: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Ok(mut t) = self.table.lock() {
            if let Some(n) = t.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    t.remove(&self.ip);
                }
            }
        }
    }
}

impl LdapServer {
    /// A server over `identity`, presenting `tls` for LDAPS and StartTLS.
    pub fn new(identity: Arc<Identity>, tls: Arc<rustls::ServerConfig>) -> Arc<Self> {
        let max = identity.config.ldap.max_connections.max(1);
        Arc::new(Self {
            identity,
            acceptor: TlsAcceptor::from(tls),
            connections: Arc::new(Semaphore::new(max)),
            per_ip: Arc::default(),
        })
    }

    /// Serves until `shutdown` turns true, then stops accepting, tells
    /// connections to finish, and waits for them.
    pub async fn serve(self: Arc<Self>, listeners: Listeners, mut shutdown: watch::Receiver<bool>) {
        let mut loops = vec![tokio::spawn(Arc::clone(&self).accept_loop(listeners.ldap, false, shutdown.clone()))];
        if let Some(l) = listeners.ldaps {
            loops.push(tokio::spawn(Arc::clone(&self).accept_loop(l, true, shutdown.clone())));
        }
        stopped(&mut shutdown).await;
        for l in loops {
            let _ = l.await;
        }
        // Every connection holds a permit; getting them all back means all are done.
        let max = u32::try_from(self.identity.config.ldap.max_connections.max(1)).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.connections.acquire_many(max)).await;
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        implicit_tls: bool,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(10);
        loop {
            let accepted = tokio::select! {
                _ = stopped(&mut shutdown) => return,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => {
                    backoff = Duration::from_millis(10);
                    a
                }
                Err(e) => {
                    // Usually fd exhaustion: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
                tracing::warn!(%peer, "connection limit reached; closing new connection");
                continue;
            };
            let Some(slot) = self.take_ip_slot(peer.ip()) else {
                tracing::warn!(%peer, "per-address connection limit reached; closing new connection");
                continue;
            };
            let server = Arc::clone(&self);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _slot = slot;
                if let Err(e) = server.connection(stream, peer, implicit_tls, shutdown).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    }

    fn take_ip_slot(&self, ip: IpAddr) -> Option<IpSlot> {
        let mut t = self.per_ip.lock().ok()?;
        let n = t.entry(ip).or_insert(0);
        if *n >= self.identity.config.ldap.max_connections_per_ip {
            return None;
        }
        *n += 1;
        Some(IpSlot { ip, table: Arc::clone(&self.per_ip) })
    }

    fn codec(&self) -> LdapCodec {
        let c = &self.identity.config.ldap;
        LdapCodec::new(Some(c.max_message_bytes), Some(c.max_ber_depth))
    }

    async fn connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        implicit_tls: bool,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let c = &self.identity.config.ldap;
        let read_timeout = Duration::from_secs(c.read_timeout_secs.max(1));
        let idle_timeout = Duration::from_secs(c.idle_timeout_secs.max(1));
        stream.set_nodelay(true)?;
        let io: Box<dyn Io> = if implicit_tls {
            let tls = tokio::time::timeout(read_timeout, self.acceptor.accept(stream)).await.map_err(timed_out)??;
            Box::new(tls)
        } else {
            Box::new(stream)
        };
        let mut framed = Framed::new(io, self.codec());
        let mut session = Session::new(Arc::clone(&self.identity), peer, implicit_tls);
        let mut idle = Duration::ZERO;
        loop {
            let next = tokio::select! {
                _ = stopped(&mut shutdown) => {
                    notice(&mut framed, LdapResultCode::Unavailable, "server shutting down", read_timeout).await;
                    return Ok(());
                }
                n = tokio::time::timeout(read_timeout, framed.next()) => n,
            };
            let msg = match next {
                Err(_) if !framed.read_buffer().is_empty() => {
                    notice(&mut framed, LdapResultCode::ProtocolError, "message not completed in time", read_timeout)
                        .await;
                    return Ok(());
                }
                Err(_) => {
                    idle += read_timeout;
                    if idle >= idle_timeout {
                        return Ok(());
                    }
                    continue;
                }
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => {
                    tracing::info!(%peer, error = %e, "malformed LDAP message; closing connection");
                    notice(&mut framed, LdapResultCode::ProtocolError, "malformed or oversized message", read_timeout)
                        .await;
                    return Ok(());
                }
                Ok(Some(Ok(m))) => m,
            };
            idle = Duration::ZERO;
            match session.handle(msg).await {
                Reply::Send(msgs) => {
                    tokio::time::timeout(read_timeout, async {
                        for m in msgs {
                            framed.feed(m).await?;
                        }
                        framed.flush().await
                    })
                    .await
                    .map_err(timed_out)??;
                }
                Reply::Close => return Ok(()),
                Reply::StartTls(ok) => {
                    tokio::time::timeout(read_timeout, framed.send(ok)).await.map_err(timed_out)??;
                    let parts = framed.into_parts();
                    if !parts.read_buf.is_empty() {
                        // Data sent before the TLS handshake would be spliced into the session.
                        return Err(std::io::Error::other("data after StartTLS request"));
                    }
                    let tls = tokio::time::timeout(read_timeout, self.acceptor.accept(parts.io))
                        .await
                        .map_err(timed_out)??;
                    framed = Framed::new(Box::new(tls) as Box<dyn Io>, self.codec());
                    session.tls = true;
                }
            }
        }
    }
}

/// Resolves once shutdown is requested (or the sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

fn timed_out(_: tokio::time::error::Elapsed) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")
}

/// Sends a Notice of Disconnection (RFC 4511 §4.4.1), best effort.
async fn notice(framed: &mut Framed<Box<dyn Io>, LdapCodec>, code: LdapResultCode, message: &str, limit: Duration) {
    let msg = LdapMsg::new(
        0,
        LdapOp::ExtendedResponse(LdapExtendedResponse {
            res: result(code, message),
            name: Some(OID_NOTICE_OF_DISCONNECTION.to_string()),
            value: None,
        }),
    );
    let _ = tokio::time::timeout(limit, framed.send(msg)).await;
}
