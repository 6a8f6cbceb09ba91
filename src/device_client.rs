//! The reference approval device, `portcullis device …`: a terminal (or
//! headless) approver that enrolls with an enrollment link, keeps its P-256
//! key in a file (mode 0600), long-polls the device API for challenges and
//! answers them with signed decisions. The integration tests drive SSH and
//! web sign-ins through it; admins can run it headless.
//!
//! It talks to the server only over HTTPS through [`crate::outbound`], signs
//! every request as `web/device.rs` expects, prints machine-readable output
//! (JSON, one object per line) on stdout and prompts on stderr. It never
//! prints its key or signatures.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{ArgGroup, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::clock::{Clock, SystemClock};
use crate::mfa::device::{self, DEVICE_HEADER, DeviceKey, SIGNATURE_HEADER, TIMESTAMP_HEADER, Verdict};
use crate::outbound::HttpClient;

/// What separates the issuer from the token in an enrollment link.
pub const ENROLL_MARKER: &str = "/mfa/enroll#";
/// Longest long poll the server grants.
const MAX_WAIT_SECS: u64 = 25;
/// Time for a request beyond its long poll.
const REQUEST_SLACK: Duration = Duration::from_secs(15);

/// `device …`: the reference approval device.
#[derive(Debug, Subcommand)]
pub enum DeviceCmd {
    /// Enroll this terminal as an approval device, from a link made with
    /// `portcullis user mfa enroll-link` or the account page. Prints
    /// {"device_id","issuer"}.
    Enroll {
        /// The enrollment link, ISSUER/mfa/enroll#TOKEN.
        url: String,
        /// Where to keep the device key (created with mode 0600; must not exist).
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
        /// The device's name as its user will see it.
        #[arg(long, default_value = "portcullis device")]
        name: String,
        /// A CA certificate (PEM) to trust for the server besides the
        /// system's roots; remembered in the key file.
        #[arg(long, value_name = "CA_PEM")]
        ca: Option<PathBuf>,
    },
    /// Print the open challenges, one JSON object per line.
    Pending {
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
        /// Wait up to this many seconds (at most 25) for a challenge.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        wait: u64,
    },
    /// Answer one challenge; prints {"id","outcome"}, fails when refused.
    Answer {
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
        /// The challenge id (from `pending`; base64url, so it may start with `-`).
        #[arg(allow_hyphen_values = true)]
        challenge_id: String,
        /// approve, deny, or fraud ("this wasn't me": stops further pushes
        /// to the user until an admin runs `user mfa unlock`).
        verdict: VerdictArg,
        /// The number shown on the sign-in page (number matching).
        #[arg(long)]
        number: Option<u8>,
    },
    /// Wait for challenges and answer each: print it, then its outcome.
    #[command(group(ArgGroup::new("mode").required(true).args(["approve", "deny", "ask"])))]
    Watch {
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
        /// Approve every challenge (those that need number matching are
        /// skipped: they need a person who sees the sign-in page).
        #[arg(long)]
        approve: bool,
        /// Deny every challenge.
        #[arg(long)]
        deny: bool,
        /// Ask on the terminal for each challenge.
        #[arg(long)]
        ask: bool,
        /// Exit after this many answers.
        #[arg(long)]
        count: Option<u64>,
    },
}

/// A verdict on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerdictArg {
    /// Let the sign-in through.
    Approve,
    /// Refuse it.
    Deny,
    /// Refuse it and report it: stops further pushes to the user.
    Fraud,
}

/// The key file: where the device enrolled, as what, and its key.
#[derive(Debug, Serialize, Deserialize)]
struct KeyFile {
    issuer: String,
    device_id: String,
    /// PKCS#8 DER, standard base64.
    key_pkcs8_b64: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_file: Option<PathBuf>,
}

/// Runs a `device` command.
///
/// # Errors
/// Any failure, phrased for the person at the terminal; a refused answer too.
pub async fn run(cmd: DeviceCmd) -> anyhow::Result<()> {
    match cmd {
        DeviceCmd::Enroll { url, key_file, name, ca } => enroll(&url, &key_file, &name, ca.as_deref()).await,
        DeviceCmd::Pending { key_file, wait } => {
            let device = Device::load(&key_file)?;
            for c in device.pending(wait).await? {
                println!("{c}");
            }
            Ok(())
        }
        DeviceCmd::Answer { key_file, challenge_id, verdict, number } => {
            let device = Device::load(&key_file)?;
            let outcome = device.answer(&challenge_id, verdict_of(verdict, number)).await?;
            println!("{}", json!({ "id": challenge_id, "outcome": outcome }));
            Ok(())
        }
        DeviceCmd::Watch { key_file, approve, deny, ask: _, count } => {
            let mode = if approve {
                Mode::Approve
            } else if deny {
                Mode::Deny
            } else {
                Mode::Ask
            };
            Device::load(&key_file)?.watch(mode, count).await
        }
    }
}

fn verdict_of(v: VerdictArg, number: Option<u8>) -> Verdict {
    match v {
        VerdictArg::Approve => Verdict::Approve { number },
        VerdictArg::Deny => Verdict::Deny,
        VerdictArg::Fraud => Verdict::Fraud,
    }
}

fn http_client(ca: Option<&Path>) -> anyhow::Result<HttpClient> {
    match ca {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("cannot read CA file {}", path.display()))?;
            HttpClient::with_extra_roots(&pem)
        }
        None => HttpClient::new(),
    }
}

/// Splits an enrollment link into the issuer and the token.
fn parse_link(url: &str) -> anyhow::Result<(String, String)> {
    let Some((issuer, token)) = url.trim().split_once(ENROLL_MARKER) else {
        bail!("not an enrollment link (expected ISSUER{ENROLL_MARKER}TOKEN)");
    };
    if !issuer.starts_with("https://") || issuer.len() <= "https://".len() {
        bail!("the enrollment link must be an https URL");
    }
    if token.is_empty()
        || token.len() > 128
        || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("the enrollment link carries no valid token");
    }
    Ok((issuer.trim_end_matches('/').to_string(), token.to_string()))
}

async fn enroll(url: &str, key_file: &Path, name: &str, ca: Option<&Path>) -> anyhow::Result<()> {
    let (issuer, token) = parse_link(url)?;
    let ca_file = match ca {
        Some(p) => Some(std::fs::canonicalize(p).with_context(|| format!("cannot find CA file {}", p.display()))?),
        None => None,
    };
    let http = http_client(ca_file.as_deref())?;
    let (key, pkcs8) = DeviceKey::generate()?;
    // Claim the file first (never overwriting a key that may be enrolled),
    // so a link is not spent on a key that cannot be kept.
    let mut file = create_private(key_file)?;
    let body = json!({ "token": token, "public_key": key.public_key(), "name": name, "push": null });
    let result = async {
        let response = http
            .post(
                &format!("{issuer}/api/mfa/enroll"),
                &[("content-type", "application/json")],
                body.to_string().into_bytes(),
                REQUEST_SLACK,
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {issuer}: {e}"))?;
        let reply = json_of(response.status, &response.body)?;
        let Some(device_id) = reply.get("device_id").and_then(Value::as_str) else {
            bail!("the server's answer has no device_id");
        };
        let state = KeyFile {
            issuer: issuer.clone(),
            device_id: device_id.to_string(),
            key_pkcs8_b64: STANDARD.encode(&pkcs8),
            ca_file: ca_file.clone(),
        };
        file.write_all(serde_json::to_string_pretty(&state)?.as_bytes())?;
        file.sync_all()?;
        Ok(state.device_id)
    }
    .await;
    match result {
        Ok(device_id) => {
            println!("{}", json!({ "device_id": device_id, "issuer": issuer }));
            Ok(())
        }
        Err(e) => {
            drop(file);
            let _ = std::fs::remove_file(key_file);
            Err(e)
        }
    }
}

/// Creates `path` for writing with mode 0600; fails if it exists.
fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).with_context(|| format!("cannot create key file {} (it must not exist yet)", path.display()))
}

/// The JSON body of a 2xx answer; otherwise an error with the server's message.
fn json_of(status: u16, body: &[u8]) -> anyhow::Result<Value> {
    let value: Option<Value> = serde_json::from_slice(body).ok();
    if (200..300).contains(&status) {
        return value.ok_or_else(|| anyhow::anyhow!("the server answered {status} without JSON"));
    }
    let message = value
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(Value::as_str)
        .map(|m| m.chars().filter(|c| !c.is_control()).take(200).collect::<String>())
        .unwrap_or_default();
    Err(Refused { status, message }.into())
}

/// The server refused a request.
#[derive(Debug)]
struct Refused {
    status: u16,
    message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the server refused ({}): {}", self.status, self.message)
    }
}

impl std::error::Error for Refused {}

/// How `watch` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Approve,
    Deny,
    Ask,
}

/// An enrolled device, loaded from its key file.
struct Device {
    issuer: String,
    /// The issuer's path (empty unless the server lives under a prefix):
    /// signatures cover the path the server sees.
    prefix: String,
    device_id: String,
    key: DeviceKey,
    http: HttpClient,
}

impl Device {
    fn load(path: &Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read key file {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!("key file {} is accessible by others (mode {mode:o}); chmod 600 it", path.display());
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read key file {}", path.display()))?;
        let state: KeyFile = serde_json::from_str(&text).context("the key file is not a Portcullis device key file")?;
        let der = STANDARD.decode(state.key_pkcs8_b64.trim()).context("the key in the key file is not base64")?;
        let key = DeviceKey::from_pkcs8(&der)?;
        let issuer = state.issuer.trim_end_matches('/').to_string();
        let Some(rest) = issuer.strip_prefix("https://") else { bail!("the key file's issuer is not an https URL") };
        let prefix = rest.find('/').map_or_else(String::new, |i| rest[i..].to_string());
        Ok(Self { http: http_client(state.ca_file.as_deref())?, issuer, prefix, device_id: state.device_id, key })
    }

    /// A signed request to `path` (under the issuer); the JSON answer.
    async fn call(&self, method: &str, path: &str, body: Vec<u8>, timeout: Duration) -> anyhow::Result<Value> {
        let ts = SystemClock.now();
        let message = device::request_message(method, &format!("{}{path}", self.prefix), ts, &body);
        let signature = self.key.sign(&message)?;
        let ts = ts.to_string();
        let mut headers = vec![
            (DEVICE_HEADER, self.device_id.as_str()),
            (TIMESTAMP_HEADER, ts.as_str()),
            (SIGNATURE_HEADER, signature.as_str()),
        ];
        let url = format!("{}{path}", self.issuer);
        let response = if method == "GET" {
            self.http.get(&url, &headers, timeout).await
        } else {
            headers.push(("content-type", "application/json"));
            self.http.post(&url, &headers, body, timeout).await
        };
        let response = response.map_err(|e| anyhow::anyhow!("cannot reach {}: {e}", self.issuer))?;
        json_of(response.status, &response.body)
    }

    /// The open challenges, after waiting up to `wait` seconds for one.
    async fn pending(&self, wait: u64) -> anyhow::Result<Vec<Value>> {
        let wait = wait.min(MAX_WAIT_SECS);
        let reply = self
            .call(
                "GET",
                &format!("/api/mfa/challenges?wait={wait}"),
                Vec::new(),
                Duration::from_secs(wait) + REQUEST_SLACK,
            )
            .await?;
        match reply.get("challenges").and_then(Value::as_array) {
            Some(list) => Ok(list.clone()),
            None => bail!("the server's answer has no challenge list"),
        }
    }

    /// Signs and sends a decision; the outcome word (approved/denied).
    async fn answer(&self, challenge_id: &str, verdict: Verdict) -> anyhow::Result<String> {
        if challenge_id.is_empty()
            || challenge_id.len() > 128
            || !challenge_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!("not a challenge id");
        }
        let ts = SystemClock.now();
        let signature = self.key.sign(&device::decision_message(challenge_id, verdict, ts))?;
        let number = match verdict {
            Verdict::Approve { number } => number,
            _ => None,
        };
        let body = json!({ "verdict": verdict.word(), "number": number, "timestamp": ts, "signature": signature });
        let path = format!("/api/mfa/challenges/{challenge_id}/answer");
        let reply = self.call("POST", &path, body.to_string().into_bytes(), REQUEST_SLACK).await?;
        reply
            .get("outcome")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("the server's answer has no outcome"))
    }

    /// Long-polls and answers challenges until `count` answers were given.
    async fn watch(&self, mode: Mode, count: Option<u64>) -> anyhow::Result<()> {
        let mut handled: HashSet<String> = HashSet::new();
        let mut answered = 0u64;
        loop {
            if count.is_some_and(|n| answered >= n) {
                return Ok(());
            }
            let open = match self.pending(MAX_WAIT_SECS).await {
                Ok(open) => open,
                Err(e) if e.downcast_ref::<Refused>().is_some() => return Err(e),
                Err(e) => {
                    eprintln!("warning: {e:#}; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            };
            let ids: HashSet<String> =
                open.iter().filter_map(|c| c.get("id").and_then(Value::as_str).map(str::to_string)).collect();
            // Forget what is no longer open: it cannot come back.
            handled.retain(|id| ids.contains(id));
            let fresh: Vec<&Value> = open
                .iter()
                .filter(|c| c.get("id").and_then(Value::as_str).is_some_and(|id| !handled.contains(id)))
                .collect();
            if fresh.is_empty() {
                // Only challenges already seen are open: the server answers
                // at once, so pause instead of spinning.
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            for c in fresh {
                let Some(id) = c.get("id").and_then(Value::as_str) else { continue };
                handled.insert(id.to_string());
                println!("{}", json!({ "challenge": c }));
                let Some(verdict) = decide(mode, c).await? else { continue };
                match self.answer(id, verdict).await {
                    Ok(outcome) => {
                        answered += 1;
                        println!("{}", json!({ "id": id, "verdict": verdict.word(), "outcome": outcome }));
                    }
                    Err(e) => println!("{}", json!({ "id": id, "verdict": verdict.word(), "error": format!("{e:#}") })),
                }
                std::io::stdout().flush()?;
                if count.is_some_and(|n| answered >= n) {
                    return Ok(());
                }
            }
        }
    }
}

/// What to answer to challenge `c`; `None` skips it.
async fn decide(mode: Mode, c: &Value) -> anyhow::Result<Option<Verdict>> {
    let id = c.get("id").and_then(Value::as_str).unwrap_or_default();
    let choices: Vec<u8> = c
        .get("choices")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok())).collect())
        .unwrap_or_default();
    match mode {
        Mode::Deny => Ok(Some(Verdict::Deny)),
        Mode::Approve if choices.is_empty() => Ok(Some(Verdict::Approve { number: None })),
        Mode::Approve => {
            println!("{}", json!({ "id": id, "skipped": "number matching needs a person: use --ask" }));
            Ok(None)
        }
        Mode::Ask => {
            let what = c.get("what").and_then(Value::as_str).unwrap_or("sign-in");
            let source = c.get("source").and_then(Value::as_str).unwrap_or("unknown address");
            let answer =
                prompt(&format!("{what} from {source}: [a]pprove, [d]eny, [f]raud (this wasn't me), [s]kip? ")).await?;
            match answer.trim() {
                "a" | "approve" if choices.is_empty() => Ok(Some(Verdict::Approve { number: None })),
                "a" | "approve" => {
                    let list: Vec<String> = choices.iter().map(u8::to_string).collect();
                    let picked =
                        prompt(&format!("Which number does the sign-in page show ({})? ", list.join(", "))).await?;
                    match picked.trim().parse::<u8>() {
                        Ok(n) => Ok(Some(Verdict::Approve { number: Some(n) })),
                        Err(_) => Ok(Some(Verdict::Deny)),
                    }
                }
                "d" | "deny" => Ok(Some(Verdict::Deny)),
                "f" | "fraud" => Ok(Some(Verdict::Fraud)),
                _ => Ok(None),
            }
        }
    }
}

/// Asks on stderr and reads one line from stdin (end of input is an error).
async fn prompt(question: &str) -> anyhow::Result<String> {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|n| (n, line))
    })
    .await??;
    match line {
        (0, _) => bail!("end of input"),
        (_, text) => Ok(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollment_links_are_split_strictly() {
        let (issuer, token) = parse_link("https://id.example:8443/mfa/enroll#abc-_123").unwrap();
        assert_eq!((issuer.as_str(), token.as_str()), ("https://id.example:8443", "abc-_123"));
        assert!(parse_link("http://id.example/mfa/enroll#abc").is_err());
        assert!(parse_link("https://id.example/mfa/enroll#").is_err());
        assert!(parse_link("https://id.example/mfa/enroll#a b").is_err());
        assert!(parse_link("https://id.example/enroll#abc").is_err());
    }

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        drop(create_private(&path).unwrap());
        assert!(create_private(&path).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
