//! `oidc-load`: a small OpenID provider load generator for `scripts/bench-oidc`.
//!
//! It drives any provider (Portcullis or node oidc-provider) the same way:
//! one keep-alive HTTPS/1.1 connection per worker (a minimal hand-written
//! client over tokio-rustls), one request in flight per connection, for a
//! bounded time, and prints one `key=value` line with the throughput, latency
//! percentiles and the client's own CPU time. Endpoints come from the
//! provider's discovery document, so nothing is provider-specific.
//!
//! * `discovery`: alternates GETs of the discovery document and the JWKS.
//! * `client-credentials`: token requests with `grant_type=client_credentials`.
//! * `refresh`: each worker signs in once (not timed), then loops refresh-token
//!   grants along its own rotating chain.
//! * `signin`: complete browser-like sign-ins with a fresh cookie jar each:
//!   authorization request (PKCE S256), same-origin redirects, the sign-in
//!   form (hidden fields kept, `username`/`password` filled in) posted, more
//!   redirects until the client's redirect URI carries a code, then the
//!   token exchange.
//!
//! This is a benchmark tool, not part of the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Parser, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// OpenID provider load generator (benchmark helper).
#[derive(Debug, Clone, Parser)]
#[command(name = "oidc-load")]
struct Cli {
    /// What to load.
    #[arg(value_enum)]
    mode: Mode,
    /// Issuer URL, e.g. https://127.0.0.1:8443 (loopback only).
    #[arg(long)]
    issuer: String,
    /// CA certificate (PEM) to trust.
    #[arg(long)]
    ca: String,
    /// Connections (workers), each with one request in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Worker threads of the client runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value = "")]
    client_id: String,
    #[arg(long, default_value = "")]
    client_secret: String,
    #[arg(long, default_value = "https://app.example.org/cb")]
    redirect_uri: String,
    #[arg(long, default_value = "")]
    user: String,
    #[arg(long, default_value = "")]
    password: String,
    /// Scope of the authorization requests.
    #[arg(long, default_value = "openid profile email offline_access")]
    scope: String,
    /// `prompt` of the authorization requests (oidc-provider honours
    /// offline_access only with prompt=consent; Portcullis ignores it).
    #[arg(long, default_value = "consent")]
    prompt: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Discovery,
    ClientCredentials,
    Refresh,
    Signin,
}

/// Endpoints from the discovery document, as paths on the issuer's origin.
#[derive(Debug, Clone)]
struct Endpoints {
    discovery: String,
    jwks: String,
    authorize: String,
    token: String,
}

struct Ctx {
    cli: Cli,
    host: String,
    port: u16,
    tls: TlsConnector,
    ep: Endpoints,
    basic: String,
}

/// One HTTP response.
struct Response {
    status: u16,
    location: Option<String>,
    cookies: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
}

/// A keep-alive HTTPS/1.1 connection.
struct Conn {
    io: BufReader<TlsStream<TcpStream>>,
}

impl Conn {
    async fn open(ctx: &Ctx) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect((ctx.host.as_str(), ctx.port)).await.context("connect")?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(ctx.host.clone())?;
        let tls = ctx.tls.connect(name, tcp).await.context("TLS handshake")?;
        Ok(Self { io: BufReader::with_capacity(32 * 1024, tls) })
    }

    async fn request(
        &mut self,
        ctx: &Ctx,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> anyhow::Result<Response> {
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: oidc-load\r\n", ctx.host, ctx.port);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ));
        } else {
            req.push_str("\r\n");
        }
        let stream = self.io.get_mut();
        stream.write_all(req.as_bytes()).await?;
        stream.flush().await?;
        self.read_response(method == "HEAD").await
    }

    async fn read_line(&mut self, line: &mut String) -> anyhow::Result<()> {
        line.clear();
        if self.io.read_line(line).await? == 0 {
            bail!("server closed the connection");
        }
        Ok(())
    }

    async fn read_response(&mut self, head: bool) -> anyhow::Result<Response> {
        let mut line = String::new();
        self.read_line(&mut line).await?;
        let status: u16 =
            line.split(' ').nth(1).and_then(|s| s.parse().ok()).with_context(|| format!("bad status line {line:?}"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        let (mut location, mut cookies) = (None, Vec::new());
        loop {
            self.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let Some((k, v)) = l.split_once(':') else { continue };
            let v = v.trim();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => length = v.parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                "location" => location = Some(v.to_string()),
                "set-cookie" => {
                    let pair = v.split(';').next().unwrap_or("");
                    if let Some((n, val)) = pair.split_once('=') {
                        cookies.push((n.trim().to_string(), val.trim().to_string()));
                    }
                }
                _ => {}
            }
        }
        let mut body = Vec::new();
        if head || status == 204 || status == 304 {
        } else if chunked {
            loop {
                self.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .with_context(|| format!("bad chunk size {line:?}"))?;
                if size == 0 {
                    // Trailers, then the blank line.
                    loop {
                        self.read_line(&mut line).await?;
                        if line.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let at = body.len();
                body.resize(at + size, 0);
                self.io.read_exact(&mut body[at..]).await?;
                self.read_line(&mut line).await?;
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.io.read_exact(&mut body).await?;
        } else {
            self.io.read_to_end(&mut body).await?;
            close = true;
        }
        Ok(Response { status, location, cookies, body, close })
    }
}

/// What one worker measured.
#[derive(Debug, Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn fail(&mut self, why: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(why);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(cli.threads).enable_all().build()?
    };
    runtime.block_on(drive(cli))
}

/// This process's user + system CPU seconds (Linux, 100 ticks/s).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command.
    (tick(11) + tick(12)) / 100.0
}

/// `https://host:port` → (host, port, path of the issuer).
fn split_url(url: &str) -> anyhow::Result<(String, u16, String)> {
    let rest = url.strip_prefix("https://").context("the issuer must be an https:// URL")?;
    let (authority, path) = rest.split_once('/').map_or((rest, String::new()), |(a, p)| (a, format!("/{p}")));
    let (host, port) = authority.rsplit_once(':').map_or((authority, "443"), |(h, p)| (h, p));
    Ok((host.to_string(), port.parse()?, path))
}

async fn drive(cli: Cli) -> anyhow::Result<()> {
    let (host, port, issuer_path) = split_url(&cli.issuer)?;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&cli.ca).with_context(|| format!("cannot read {}", cli.ca))?;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert?)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        form_urlencoded::byte_serialize(cli.client_id.as_bytes()).collect::<String>(),
        form_urlencoded::byte_serialize(cli.client_secret.as_bytes()).collect::<String>()
    ));
    let discovery = format!("{issuer_path}/.well-known/openid-configuration");
    let mut ctx = Ctx {
        cli: cli.clone(),
        host,
        port,
        tls: TlsConnector::from(Arc::new(tls)),
        ep: Endpoints { discovery, jwks: String::new(), authorize: String::new(), token: String::new() },
        basic: format!("Basic {basic}"),
    };
    // Endpoints from the discovery document.
    let mut probe = Conn::open(&ctx).await?;
    let r = probe.request(&ctx, "GET", &ctx.ep.discovery, &[], None).await?;
    if r.status != 200 {
        bail!("discovery answered {}", r.status);
    }
    let meta: serde_json::Value = serde_json::from_slice(&r.body).context("discovery is not JSON")?;
    let path_of = |key: &str| -> anyhow::Result<String> {
        let url = meta[key].as_str().with_context(|| format!("discovery has no {key}"))?;
        local_path(&cli.issuer, url).with_context(|| format!("{key} {url} is not on the issuer's origin"))
    };
    ctx.ep.jwks = path_of("jwks_uri")?;
    ctx.ep.authorize = path_of("authorization_endpoint")?;
    ctx.ep.token = path_of("token_endpoint")?;
    drop(probe);
    let ctx = Arc::new(ctx);

    // Connect (and, for refresh, sign in once) every worker before the clock starts.
    let mut conns = Vec::with_capacity(cli.concurrency.max(1));
    for _ in 0..cli.concurrency.max(1) {
        let mut conn = Conn::open(&ctx).await?;
        let refresh = if cli.mode == Mode::Refresh {
            let mut rng = StdRng::from_entropy();
            let tokens = signin(&ctx, &mut conn, &mut rng).await.context("initial sign-in")?;
            Some(tokens["refresh_token"].as_str().context("no refresh_token in the token response")?.to_string())
        } else {
            None
        };
        conns.push((conn, refresh));
    }
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(cli.seconds);
    let mut tasks = Vec::with_capacity(conns.len());
    for (i, (conn, refresh)) in conns.into_iter().enumerate() {
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move { worker(ctx, conn, refresh, i, deadline).await }));
    }
    let mut all = Tally::default();
    for t in tasks {
        let mut one = t.await.context("worker panicked")?;
        all.latencies_us.append(&mut one.latencies_us);
        all.errors += one.errors;
        if all.first_error.is_none() {
            all.first_error = one.first_error;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    all.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        let v = &all.latencies_us;
        if v.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        f64::from(v[rank.min(v.len()) - 1]) / 1000.0
    };
    let ok = all.latencies_us.len();
    println!(
        "ops={ok} seconds={elapsed:.3} rate={:.1} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} errors={} client_cpu_s={cpu:.2} client_cpu_pct={:.1} first_error={:?}",
        ok as f64 / elapsed,
        pct(50.0),
        pct(99.0),
        pct(100.0),
        all.errors,
        100.0 * cpu / elapsed,
        all.first_error.unwrap_or_default(),
    );
    Ok(())
}

/// The path (and query) of `url` when it is on the issuer's origin.
fn local_path(issuer: &str, url: &str) -> Option<String> {
    if url.starts_with('/') {
        return Some(url.to_string());
    }
    let origin_end = issuer.strip_prefix("https://")?.find('/').map_or(issuer.len(), |i| i + "https://".len());
    let origin = &issuer[..origin_end];
    let rest = url.strip_prefix(origin)?;
    if rest.is_empty() {
        Some("/".into())
    } else if rest.starts_with('/') || rest.starts_with('?') {
        Some(rest.to_string())
    } else {
        None
    }
}

async fn worker(ctx: Arc<Ctx>, mut conn: Conn, mut refresh: Option<String>, i: usize, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut rng = StdRng::from_entropy();
    let mut n = i;
    while Instant::now() < deadline {
        n += 1;
        let started = Instant::now();
        let outcome = match ctx.cli.mode {
            Mode::Discovery => {
                let path = if n % 2 == 0 { &ctx.ep.discovery } else { &ctx.ep.jwks };
                get_ok(&ctx, &mut conn, path).await
            }
            Mode::ClientCredentials => {
                token(&ctx, &mut conn, "grant_type=client_credentials&scope=api").await.map(|_| ())
            }
            Mode::Refresh => match &refresh {
                Some(rt) => {
                    let body = format!("grant_type=refresh_token&refresh_token={}", enc(rt));
                    match token(&ctx, &mut conn, &body).await {
                        Ok(v) => match v["refresh_token"].as_str() {
                            Some(next) => {
                                refresh = Some(next.to_string());
                                Ok(())
                            }
                            None => {
                                refresh = None;
                                Err(anyhow::anyhow!("no new refresh_token: {v}"))
                            }
                        },
                        Err(e) => {
                            refresh = None;
                            Err(e)
                        }
                    }
                }
                None => {
                    // The chain broke: sign in again (counted as an error, not timed).
                    match signin(&ctx, &mut conn, &mut rng).await {
                        Ok(v) => refresh = v["refresh_token"].as_str().map(str::to_string),
                        Err(e) => tally.fail(format!("re-sign-in: {e:#}")),
                    }
                    continue;
                }
            },
            Mode::Signin => signin(&ctx, &mut conn, &mut rng).await.map(|_| ()),
        };
        let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        match outcome {
            Ok(()) => tally.latencies_us.push(micros),
            Err(e) => {
                tally.fail(format!("{e:#}"));
                // Start over on a fresh connection.
                match Conn::open(&ctx).await {
                    Ok(c) => conn = c,
                    Err(e) => {
                        tally.fail(format!("reconnect: {e:#}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
    tally
}

/// Sends a request, reconnecting first when the server closed the connection.
async fn send(
    ctx: &Ctx,
    conn: &mut Conn,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<Response> {
    let r = conn.request(ctx, method, path, headers, body).await?;
    if r.close {
        *conn = Conn::open(ctx).await?;
    }
    Ok(r)
}

async fn get_ok(ctx: &Ctx, conn: &mut Conn, path: &str) -> anyhow::Result<()> {
    let r = send(ctx, conn, "GET", path, &[], None).await?;
    if r.status != 200 || r.body.is_empty() {
        bail!("GET {path}: {}", r.status);
    }
    Ok(())
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A token request with client_secret_basic; the JSON answer.
async fn token(ctx: &Ctx, conn: &mut Conn, body: &str) -> anyhow::Result<serde_json::Value> {
    let r = send(ctx, conn, "POST", &ctx.ep.token, &[("Authorization", &ctx.basic)], Some(body)).await?;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
    if r.status != 200 || v["access_token"].as_str().is_none() {
        bail!("token: {} {}", r.status, String::from_utf8_lossy(&r.body).chars().take(200).collect::<String>());
    }
    Ok(v)
}

fn random_string(rng: &mut StdRng, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..len).map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())])).collect()
}

/// Cookie header value from a jar.
fn cookie_header(jar: &[(String, String)]) -> String {
    jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
}

fn remember(jar: &mut Vec<(String, String)>, cookies: Vec<(String, String)>) {
    for (k, v) in cookies {
        jar.retain(|(n, _)| *n != k);
        if !v.is_empty() {
            jar.push((k, v));
        }
    }
}

/// One complete sign-in with a fresh cookie jar; the token response.
async fn signin(ctx: &Ctx, conn: &mut Conn, rng: &mut StdRng) -> anyhow::Result<serde_json::Value> {
    let cli = &ctx.cli;
    let verifier = random_string(rng, 64);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let state = random_string(rng, 16);
    let nonce = random_string(rng, 16);
    let query = {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &cli.client_id)
            .append_pair("redirect_uri", &cli.redirect_uri)
            .append_pair("scope", &cli.scope)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        if !cli.prompt.is_empty() {
            query.append_pair("prompt", &cli.prompt);
        }
        query.finish()
    };
    let sep = if ctx.ep.authorize.contains('?') { '&' } else { '?' };
    let mut next = (String::from("GET"), format!("{}{sep}{query}", ctx.ep.authorize), None::<String>);
    let mut jar: Vec<(String, String)> = Vec::new();
    let mut posted = false;
    let mut code = None;
    for _hop in 0..12 {
        let (method, path, body) = &next;
        let cookie = cookie_header(&jar);
        let headers: Vec<(&str, &str)> = if cookie.is_empty() { vec![] } else { vec![("Cookie", cookie.as_str())] };
        let r = send(ctx, conn, method, path, &headers, body.as_deref()).await?;
        remember(&mut jar, r.cookies);
        match (r.status, r.location) {
            (300..=399, Some(loc)) => {
                if let Some(q) = loc.strip_prefix(&cli.redirect_uri) {
                    let params: Vec<(String, String)> =
                        form_urlencoded::parse(q.trim_start_matches('?').as_bytes()).into_owned().collect();
                    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                    if get("state").as_deref() != Some(state.as_str()) {
                        bail!("redirect with a wrong state: {loc}");
                    }
                    code = Some(get("code").with_context(|| format!("redirect without a code: {loc}"))?);
                    break;
                }
                let path = local_path(&cli.issuer, &loc).with_context(|| format!("redirect off-site: {loc}"))?;
                next = ("GET".into(), path, None);
            }
            (200, _) if !posted => {
                let html = String::from_utf8_lossy(&r.body);
                let (action, mut fields) = parse_form(&html).context("no sign-in form on the page")?;
                fields.retain(|(k, _)| k != "username" && k != "password");
                fields.push(("username".into(), cli.user.clone()));
                fields.push(("password".into(), cli.password.clone()));
                let posted_body = {
                    let mut ser = form_urlencoded::Serializer::new(String::new());
                    for (k, v) in &fields {
                        ser.append_pair(k, v);
                    }
                    ser.finish()
                };
                let path =
                    local_path(&cli.issuer, &action).with_context(|| format!("form posts off-site: {action}"))?;
                next = ("POST".into(), path, Some(posted_body));
                posted = true;
            }
            (status, _) => {
                let text = String::from_utf8_lossy(&r.body).chars().take(200).collect::<String>();
                bail!("{method} {path}: unexpected {status}: {text}");
            }
        }
    }
    let code = code.context("too many redirects")?;
    let body = format!(
        "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
        enc(&code),
        enc(&cli.redirect_uri),
        enc(&verifier)
    );
    let v = token(ctx, conn, &body).await?;
    if v["id_token"].as_str().is_none() {
        bail!("no id_token in the token response");
    }
    Ok(v)
}

/// The first form's action and its inputs' (name, value) pairs.
fn parse_form(html: &str) -> Option<(String, Vec<(String, String)>)> {
    let form_at = html.find("<form")?;
    let form_end = html[form_at..].find("</form>").map_or(html.len(), |e| form_at + e);
    let form = &html[form_at..form_end];
    let tag_end = form.find('>')?;
    let action = attr(&form[..tag_end], "action")?;
    let mut fields = Vec::new();
    let mut rest = form;
    while let Some(at) = rest.find("<input") {
        let end = rest[at..].find('>').map_or(rest.len(), |e| at + e);
        let tag = &rest[at..end];
        if let Some(name) = attr(tag, "name") {
            fields.push((name, attr(tag, "value").unwrap_or_default()));
        }
        rest = &rest[end..];
    }
    Some((unescape(&action), fields.into_iter().map(|(k, v)| (unescape(&k), unescape(&v))).collect()))
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let at = tag.find(&needle)? + needle.len();
    let end = tag[at..].find('"')?;
    Some(tag[at..at + end].to_string())
}

/// Undoes HTML escaping of attribute values (named and numeric references).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(end) = rest.find(';').filter(|&e| e <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let c = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16).ok().and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}
