//! Outbound HTTP: the one client the server uses to call other machines
//! (back-channel logout today; push notifications and Proxmox later). Built
//! once at start-up and shared, so connections and TLS sessions are reused.
//!
//! This is the only module that names `reqwest`. It sends what its callers
//! give it and logs nothing itself: callers log with their own context, and
//! request bodies (which may carry tokens) never reach a log.

use std::time::Duration;

/// A shared HTTP client: rustls with aws-lc-rs, the system's CA roots for
/// https, HTTP/2 where the server offers it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
}

/// Why a request got no HTTP response.
#[derive(Debug)]
pub struct OutboundError(reqwest::Error);

/// The error and its causes on one line ("error sending request: … : invalid
/// peer certificate: UnknownIssuer"), so a log line says what went wrong.
impl std::fmt::Display for OutboundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = std::error::Error::source(&self.0);
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl std::error::Error for OutboundError {}

impl HttpClient {
    /// Builds the client. Redirects are not followed: a server-to-server call
    /// goes exactly where it was configured to go.
    ///
    /// # Errors
    /// The TLS configuration cannot be built.
    pub fn new() -> anyhow::Result<Self> {
        let inner = reqwest::Client::builder()
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the outbound HTTP client: {e}"))?;
        Ok(Self { inner })
    }

    /// POSTs `pairs` as `application/x-www-form-urlencoded` to `url` and
    /// returns the response status; the whole exchange is bounded by
    /// `timeout`. The response body is never read (a peer cannot make the
    /// server buffer it).
    ///
    /// # Errors
    /// Invalid URL, connection or TLS failure, or timeout.
    pub async fn post_form(&self, url: &str, pairs: &[(&str, &str)], timeout: Duration) -> Result<u16, OutboundError> {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        let response = self
            .inner
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| OutboundError(e.without_url()))?;
        Ok(response.status().as_u16())
    }
}
