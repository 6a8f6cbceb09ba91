//! Outbound HTTP: the one client the server uses to call other machines
//! (back-channel logout, push notifications; Proxmox later). Built once at
//! start-up and shared, so connections and TLS sessions are reused.
//!
//! This is the only module that names `reqwest`. It sends what its callers
//! give it and logs nothing itself: callers log with their own context, and
//! request bodies (which may carry tokens) never reach a log. Errors never
//! carry the URL (push URLs hold device tokens).

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

impl OutboundError {
    /// Whether the request ran out of its time budget (as opposed to a
    /// refused connection or a TLS failure).
    pub fn is_timeout(&self) -> bool {
        self.0.is_timeout()
    }
}

/// Largest response body [`HttpClient::post`] reads; the rest is dropped, so
/// a peer cannot make the server buffer without bound.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A response to [`HttpClient::post`]: status, headers and the first
/// [`MAX_RESPONSE_BYTES`] of the body.
#[derive(Debug)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    headers: reqwest::header::HeaderMap,
    /// The body, cut at [`MAX_RESPONSE_BYTES`].
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive), if present and
    /// visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl HttpClient {
    /// Builds the client. Redirects are not followed: a server-to-server call
    /// goes exactly where it was configured to go.
    ///
    /// # Errors
    /// The TLS configuration cannot be built.
    pub fn new() -> anyhow::Result<Self> {
        Self::build(Vec::new())
    }

    /// Like [`HttpClient::new`], but also trusts the CA certificates in
    /// `extra_ca_pem` (one or more PEM certificates) besides the system's
    /// roots: for services behind a private CA, and for tests.
    ///
    /// # Errors
    /// No certificate in `extra_ca_pem`, or the TLS configuration cannot be built.
    pub fn with_extra_roots(extra_ca_pem: &[u8]) -> anyhow::Result<Self> {
        let certs = reqwest::Certificate::from_pem_bundle(extra_ca_pem)
            .map_err(|e| anyhow::anyhow!("invalid CA certificate: {e}"))?;
        if certs.is_empty() {
            anyhow::bail!("no CA certificate in the given PEM");
        }
        Self::build(certs)
    }

    fn build(extra_roots: Vec<reqwest::Certificate>) -> anyhow::Result<Self> {
        let inner = reqwest::Client::builder()
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .tls_certs_merge(extra_roots)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the outbound HTTP client: {e}"))?;
        Ok(Self { inner })
    }

    /// POSTs `body` with `headers` to `url` and returns the status, headers
    /// and at most [`MAX_RESPONSE_BYTES`] of the response body. The whole
    /// exchange, body included, is bounded by `timeout`. HTTP/2 is used when
    /// the server offers it in ALPN (APNs requires it).
    ///
    /// # Errors
    /// Invalid URL or header, connection or TLS failure, or timeout.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Response, OutboundError> {
        Self::exchange(self.inner.post(url).timeout(timeout).body(body), headers).await
    }

    /// GETs `url` with `headers` and returns the status, headers and at most
    /// [`MAX_RESPONSE_BYTES`] of the response body, the whole exchange
    /// bounded by `timeout` (the reference device's API calls).
    ///
    /// # Errors
    /// Invalid URL or header, connection or TLS failure, or timeout.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<Response, OutboundError> {
        Self::exchange(self.inner.get(url).timeout(timeout), headers).await
    }

    /// Sends `request` with `headers`; the status, headers and at most
    /// [`MAX_RESPONSE_BYTES`] of the body.
    async fn exchange(
        mut request: reqwest::RequestBuilder,
        headers: &[(&str, &str)],
    ) -> Result<Response, OutboundError> {
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut response = request.send().await.map_err(|e| OutboundError(e.without_url()))?;
        let status = response.status().as_u16();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| OutboundError(e.without_url()))? {
            let room = MAX_RESPONSE_BYTES - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() == MAX_RESPONSE_BYTES {
                break;
            }
        }
        Ok(Response { status, headers, body })
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
