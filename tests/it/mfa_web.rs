//! Second factors in web sign-in and on the account page: OIDC sign-ins by a
//! real relying party (openid-client, which validates the ID token against
//! the JWKS) through a scripted browser, with push approval and number
//! matching (answered by the reference device, `portcullis device`), a TOTP
//! code and a recovery code; and the refusals: a wrong number, a reused TOTP
//! code, a spent recovery code, too many wrong codes, no factor at all. The
//! factors are enrolled through the account page (curl as the browser).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{TestServer, require_tool};

/// A server whose members of group `mfa` need a second factor.
fn server() -> TestServer {
    let server = TestServer::start_with(&[("PORTCULLIS_MFA__REQUIRED_GROUPS", "[\"mfa\"]")]);
    server.cli(&["group", "add", "mfa"], None);
    server
}

/// Registers the relying party; returns its secret.
pub fn add_client(server: &TestServer) -> String {
    let out = server.cli(&["oidc", "client", "add", "mfaapp", "--redirect-uri", "https://app.example.org/cb"], None);
    out.lines().find_map(|l| l.strip_prefix("client_secret: ")).expect("secret printed once").to_string()
}

/// The openid-client relying party and its scripted browser
/// (tests/oidc/node/mfa_flow.mjs), driven one step at a time.
pub struct Rp {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<String>,
}

impl Rp {
    pub fn start(server: &TestServer, secret: &str) -> Self {
        Self::start_at(server, &server.issuer(), secret)
    }

    /// The driver for a server whose issuer is `issuer` (e.g. a `localhost`
    /// one, which WebAuthn needs).
    pub fn start_at(server: &TestServer, issuer: &str, secret: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc/node");
        require_tool("node");
        assert!(
            dir.join("node_modules/openid-client/package.json").exists(),
            "{} has no openid-client: run ./scripts/test (it runs npm ci there)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg(dir.join("mfa_flow.mjs"))
            .args([issuer, "mfaapp", secret])
            .env("NODE_EXTRA_CA_CERTS", server.ca_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the openid-client relying party");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Rp { child, stdin, answers }
    }

    /// Sends one command; returns the driver's answer.
    pub fn step(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").expect("write to the driver");
        self.stdin.flush().expect("flush");
        let line = self
            .answers
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("no answer from the driver to {cmd}: {e}"));
        let answer: Value = serde_json::from_str(&line).expect("JSON from the driver");
        assert_ne!(answer["event"], "failed", "driver step {cmd} failed: {answer}");
        answer
    }

    pub fn authorize(&mut self) -> Value {
        self.step(json!({"cmd": "authorize"}))
    }

    pub fn password(&mut self, user: &str, password: &str) -> Value {
        self.step(json!({"cmd": "password", "user": user, "password": password}))
    }

    pub fn submit(&mut self, action: &str, fields: Value) -> Value {
        self.step(json!({"cmd": "submit", "action": action, "fields": fields}))
    }

    pub fn new_browser(&mut self) {
        self.step(json!({"cmd": "new_browser"}));
    }

    /// A fresh browser up to the second-factor page.
    pub fn sign_in_to_factor_page(&mut self, user: &str, password: &str) -> Value {
        self.new_browser();
        let page = self.authorize();
        assert_eq!(page["title"], "Sign in", "{page}");
        let page = self.password(user, password);
        assert_eq!(page["title"], "Confirm your sign-in", "{page}");
        page
    }

    /// A fresh browser through the password, to whatever comes next.
    pub fn through_password(&mut self, user: &str, password: &str) -> Value {
        self.new_browser();
        self.authorize();
        self.password(user, password)
    }
}

impl Drop for Rp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn page_of(answer: &Value) -> &Value {
    assert_eq!(answer["event"], "page", "expected a page, got {answer}");
    answer
}

pub fn forms(answer: &Value) -> Vec<String> {
    page_of(answer)["forms"].as_array().expect("forms").iter().filter_map(|f| f.as_str().map(str::to_string)).collect()
}

pub fn alert(answer: &Value) -> String {
    page_of(answer)["alert"].as_str().unwrap_or_default().to_string()
}

/// The validated ID token's claims after a completed sign-in.
pub fn signed_in(answer: &Value) -> &Value {
    assert_eq!(answer["event"], "tokens", "expected the sign-in to complete, got {answer}");
    &answer["claims"]
}

/// curl as a browser for the account pages: one cookie jar, redirects not
/// followed.
pub struct Browser {
    dir: tempfile::TempDir,
    ca: PathBuf,
    base: String,
}

/// One response.
pub struct Page {
    pub status: u16,
    pub location: String,
    pub headers: String,
    pub body: String,
}

impl Browser {
    pub fn new(server: &TestServer) -> Self {
        Self::new_at(server, &server.issuer())
    }

    /// A browser for a server reached at `base` (its issuer).
    pub fn new_at(server: &TestServer, base: &str) -> Self {
        require_tool("curl");
        Browser { dir: tempfile::tempdir().expect("tempdir"), ca: server.ca_path(), base: base.to_string() }
    }

    pub fn request(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let jar = self.dir.path().join("cookies");
        let body = self.dir.path().join("body");
        let headers = self.dir.path().join("headers");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "-o"])
            .arg(&body)
            .arg("-D")
            .arg(&headers)
            .args(["-w", "%{http_code} %{redirect_url}", "--cacert"])
            .arg(&self.ca)
            .arg("-b")
            .arg(&jar)
            .arg("-c")
            .arg(&jar);
        for (k, v) in form {
            cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        let out = cmd.arg(format!("{}{path}", self.base)).output().expect("run curl");
        assert!(out.status.success(), "curl {path}: {}", String::from_utf8_lossy(&out.stderr));
        let written = String::from_utf8_lossy(&out.stdout).into_owned();
        let (status, location) = written.split_once(' ').unwrap_or((&written, ""));
        Page {
            status: status.parse().unwrap_or(0),
            location: location.to_string(),
            headers: std::fs::read_to_string(&headers).unwrap_or_default(),
            body: std::fs::read_to_string(&body).unwrap_or_default(),
        }
    }

    pub fn get(&self, path: &str) -> Page {
        self.request(path, &[])
    }

    /// Posts a form of the last page with its CSRF token.
    pub fn post(&self, path: &str, csrf: &str, fields: &[(&str, &str)]) -> Page {
        let mut all = vec![("csrf", csrf)];
        all.extend_from_slice(fields);
        self.request(path, &all)
    }

    /// Signs in on the account page with a password only.
    pub fn account_signin(&self, user: &str, password: &str) -> Page {
        let form = self.get("/account");
        assert!(form.body.contains("Sign in to manage your account"), "{}", form.body);
        let csrf = field(&form.body, "csrf");
        self.request("/account/signin", &[("csrf", &csrf), ("username", user), ("password", password)])
    }
}

/// A field's value (`name="N" value="V"` or `id="N" readonly value="V"`), entities undone.
pub fn field(html: &str, name: &str) -> String {
    let starts = [format!("name=\"{name}\" value=\""), format!("id=\"{name}\" readonly value=\"")];
    let (at, start) = starts
        .iter()
        .find_map(|s| html.find(s.as_str()).map(|at| (at, s)))
        .unwrap_or_else(|| panic!("no {name} field in: {html}"));
    let at = at + start.len();
    let raw = &html[at..at + html[at..].find('"').expect("closing quote")];
    raw.replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// The reference device: enrolls from a link, lists and answers challenges.
fn device(server: &TestServer, args: &[&str]) -> std::process::Output {
    server.cli_output(&[&["device"], args].concat(), None)
}

fn key_file(server: &TestServer, name: &str) -> PathBuf {
    server.dir.path().join(format!("{name}.key"))
}

/// The device's one open challenge.
fn open_challenge(server: &TestServer, key: &Path) -> Value {
    let out = device(server, &["pending", "--key-file", key.to_str().expect("utf-8"), "--wait", "10"]);
    assert!(out.status.success(), "device pending: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("JSON challenge"))
        .collect();
    assert_eq!(lines.len(), 1, "exactly one challenge: {lines:?}");
    lines[0].clone()
}

fn answer(server: &TestServer, key: &Path, challenge: &str, number: u64) -> String {
    let number = number.to_string();
    let key = key.to_str().expect("utf-8");
    let out = device(server, &["answer", "--key-file", key, challenge, "approve", "--number", &number]);
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn decode_base32(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut acc, mut out) = (0u32, 0u64, Vec::new());
    for c in s.trim_end_matches('=').bytes() {
        let v = ALPHABET.iter().position(|a| *a == c.to_ascii_uppercase()).expect("base32") as u64;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn now() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs())
        .expect("time")
}

/// A TOTP code for a step after `after_step` that the server accepts now
/// (it allows one step of skew either way); returns the code and its step.
fn next_code(secret: &[u8], after_step: i64) -> (String, i64) {
    let step = (after_step + 1).max(now() / 30);
    (portcullis::mfa::totp::code_at(secret, step * 30).expect("code"), step)
}

/// A six-digit code that is none of the three the server accepts now.
fn wrong_code(secret: &[u8]) -> String {
    let t = now();
    let valid: Vec<String> = [t - 30, t, t + 30, t + 60]
        .iter()
        .map(|at| portcullis::mfa::totp::code_at(secret, *at).expect("code"))
        .collect();
    (0..10).map(|d| d.to_string().repeat(6)).find(|c| !valid.contains(c)).expect("a wrong code")
}

#[test]
fn push_with_number_matching() {
    let server = server();
    let secret = add_client(&server);
    server.add_user("pia", "pia-password-1");
    server.settle();

    // Enroll a device from the account page (MFA not yet required).
    let browser = Browser::new(&server);
    let r = browser.account_signin("pia", "pia-password-1");
    assert_eq!((r.status, r.location.as_str()), (303, format!("{}/account", server.issuer()).as_str()));
    let account = browser.get("/account");
    assert!(account.body.contains("<h2>Second factors</h2>") && account.body.contains("No approval devices."));
    let csrf = field(&account.body, "csrf");
    let add = browser.post("/account/mfa/devices/add", &csrf, &[]);
    assert_eq!(add.status, 200, "{}", add.body);
    assert!(add.body.contains("<svg role=\"img\" aria-label=\"QR code\""), "inline SVG QR code: {}", add.body);
    assert!(!add.body.contains("data:"), "no data: URL");
    let csp = add.headers.lines().find(|l| l.to_ascii_lowercase().starts_with("content-security-policy:"));
    assert!(csp.is_some_and(|l| l.contains("default-src 'none'")), "the usual CSP: {}", add.headers);
    let link = field(&add.body, "link");
    assert!(link.starts_with(&format!("{}/mfa/enroll#", server.issuer())), "{link}");
    let key = key_file(&server, "pia");
    let ca = server.ca_path();
    let out = device(
        &server,
        &["enroll", &link, "--key-file", key.to_str().unwrap(), "--ca", ca.to_str().unwrap(), "--name", "pia phone"],
    );
    assert!(out.status.success(), "device enroll: {}", String::from_utf8_lossy(&out.stderr));
    let reused = device(
        &server,
        &["enroll", &link, "--key-file", key_file(&server, "again").to_str().unwrap(), "--ca", ca.to_str().unwrap()],
    );
    assert!(!reused.status.success(), "an enrollment link works once");

    // Rename the device on the account page; the change is audited.
    let account = browser.get("/account");
    assert!(account.body.contains("<strong>pia phone</strong>"), "{}", account.body);
    let (csrf, id) = (field(&account.body, "csrf"), field(&account.body, "id"));
    let r = browser.post("/account/mfa/devices/rename", &csrf, &[("id", &id), ("name", "Pia's phone")]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(browser.get("/account").body.contains("<strong>Pia&#39;s phone</strong>"));
    let forged = browser.post("/account/mfa/devices/rename", "forged", &[("id", &id), ("name", "x")]);
    assert_eq!(forged.status, 403, "CSRF-protected");
    let audit = server.cli(&["audit", "--limit", "20"], None);
    assert!(audit.contains("mfa.enrollment_link") && audit.contains("mfa.device_renamed"), "{audit}");

    server.cli(&["group", "add-member", "mfa", "pia"], None);
    server.settle();
    // The password-only session no longer counts: the account page asks to sign in.
    assert!(browser.get("/account").body.contains("Sign in to manage your account"));

    let mut rp = Rp::start(&server, &secret);
    // Push with number matching: the page shows the number, the device picks it.
    let factor = rp.sign_in_to_factor_page("pia", "pia-password-1");
    assert_eq!(forms(&factor), ["/signin/factor/push", "/signin/factor/cancel"], "only what pia has");
    let waiting = rp.submit("/signin/factor/push", json!({}));
    assert_eq!(waiting["title"], "Approve on your device", "{waiting}");
    assert!(waiting["refresh"].as_str().is_some_and(|u| u.ends_with("/signin/factor/status")), "{waiting}");
    let number = waiting["number"].as_u64().expect("the number to pick");
    let challenge = open_challenge(&server, &key);
    assert!(challenge["what"].as_str().is_some_and(|w| w.contains("mfaapp")), "{challenge}");
    assert!(challenge["choices"].as_array().is_some_and(|c| c.len() == 3 && c.contains(&json!(number))), "{challenge}");
    // The page keeps waiting until the device answers.
    let still = rp.step(json!({"cmd": "refresh"}));
    assert_eq!((still["title"].as_str(), still["number"].as_u64()), (Some("Approve on your device"), Some(number)));
    let outcome = answer(&server, &key, challenge["id"].as_str().unwrap(), number);
    assert!(outcome.contains("approved"), "{outcome}");
    let done = rp.step(json!({"cmd": "wait_push"}));
    let claims = signed_in(&done);
    assert_eq!(claims["preferred_username"], "pia");
    assert_eq!(claims["amr"], json!(["pwd", "mfa"]), "{claims}");
    // The session now counts: single sign-on without a second push.
    let sso = rp.authorize();
    assert_eq!(signed_in(&sso)["preferred_username"], "pia");

    // prompt=login redoes the password and the second factor; a wrong
    // number denies the challenge and the sign-in starts over.
    let page = rp.step(json!({"cmd": "authorize", "prompt": "login"}));
    assert_eq!(page["title"], "Sign in", "{page}");
    let factor = rp.password("pia", "pia-password-1");
    assert_eq!(factor["title"], "Confirm your sign-in", "{factor}");
    let waiting = rp.submit("/signin/factor/push", json!({}));
    let number = waiting["number"].as_u64().expect("number");
    let challenge = open_challenge(&server, &key);
    let wrong = challenge["choices"].as_array().unwrap().iter().filter_map(Value::as_u64).find(|n| *n != number);
    let outcome = answer(&server, &key, challenge["id"].as_str().unwrap(), wrong.expect("a wrong choice"));
    assert!(outcome.contains("denied"), "a wrong number denies: {outcome}");
    let refused = rp.step(json!({"cmd": "wait_push"}));
    assert_eq!(refused["title"], "Sign in", "back to the password: {refused}");
    assert!(alert(&refused).contains("denied"), "{refused}");
    let replay = answer(&server, &key, challenge["id"].as_str().unwrap(), number);
    assert!(!replay.contains("approved"), "one answer per challenge: {replay}");

    // max_age=0 also asks again, and the right number signs in.
    let page = rp.step(json!({"cmd": "authorize", "max_age": 0}));
    assert_eq!(page["title"], "Sign in", "{page}");
    rp.password("pia", "pia-password-1");
    let waiting = rp.submit("/signin/factor/push", json!({}));
    let number = waiting["number"].as_u64().expect("number");
    let challenge = open_challenge(&server, &key);
    assert!(answer(&server, &key, challenge["id"].as_str().unwrap(), number).contains("approved"));
    // The "Check now" button instead of the automatic refresh.
    let done = rp.submit("/signin/factor/status", json!({}));
    assert_eq!(signed_in(&done)["amr"], json!(["pwd", "mfa"]));

    // The account page needs the second factor too; after an admin reset
    // (a lost phone) pia has no factor left: refused, no tokens.
    let account = browser.account_signin("pia", "pia-password-1");
    assert_eq!(account.status, 200, "the account page needs the second factor too");
    assert!(account.body.contains("Confirm your sign-in"), "{}", account.body);
    server.cli(&["user", "mfa", "reset", "pia"], None);
    let page = rp.through_password("pia", "pia-password-1");
    assert_eq!((page["status"].as_u64(), page["title"].as_str()), (Some(403), Some("Second factor needed")));
    assert!(alert(&page).contains("none is set up"), "{page}");
}

#[test]
fn totp_and_recovery_codes() {
    let server = server();
    let secret = add_client(&server);
    server.add_user("otto", "otto-password-1");
    server.settle();

    // Set up TOTP and recovery codes on the account page.
    let browser = Browser::new(&server);
    browser.account_signin("otto", "otto-password-1");
    let account = browser.get("/account");
    let csrf = field(&account.body, "csrf");
    let start = browser.post("/account/mfa/totp/start", &csrf, &[]);
    assert_eq!(start.status, 200, "{}", start.body);
    assert!(start.body.contains("<svg role=\"img\""), "QR code of the otpauth URL");
    let totp_secret = decode_base32(&field(&start.body, "secret"));
    assert_eq!(totp_secret.len(), 20);
    let csrf = field(&start.body, "csrf");
    let wrong = browser.post("/account/mfa/totp/confirm", &csrf, &[("code", &wrong_code(&totp_secret))]);
    assert_eq!(wrong.status, 400, "a wrong confirmation code");
    let csrf = field(&wrong.body, "csrf");
    let (code, mut step) = next_code(&totp_secret, 0);
    let confirmed = browser.post("/account/mfa/totp/confirm", &csrf, &[("code", &code)]);
    assert_eq!(confirmed.status, 303, "{}", confirmed.body);
    let account = browser.get("/account?done=totp");
    assert!(account.body.contains("Your authenticator app is set up."));
    let csrf = field(&account.body, "csrf");
    let codes_page = browser.post("/account/mfa/recovery", &csrf, &[]);
    let codes: Vec<String> = codes_page
        .body
        .split("<code class=\"recovery-code\">")
        .skip(1)
        .filter_map(|s| s.split('<').next().map(str::to_string))
        .collect();
    assert_eq!(codes.len(), 10, "{}", codes_page.body);
    assert!(browser.get("/account").body.contains("10 unused recovery codes."));

    server.cli(&["group", "add-member", "mfa", "otto"], None);
    server.settle();
    let mut rp = Rp::start(&server, &secret);

    // TOTP.
    let factor = rp.sign_in_to_factor_page("otto", "otto-password-1");
    assert_eq!(forms(&factor), ["/signin/factor/totp", "/signin/factor/recovery", "/signin/factor/cancel"]);
    let (code, used) = next_code(&totp_secret, step);
    step = used;
    let done = rp.submit("/signin/factor/totp", json!({"code": code}));
    assert_eq!(signed_in(&done)["amr"], json!(["pwd", "otp", "mfa"]));

    // The same TOTP code again: refused; a recovery code instead.
    rp.sign_in_to_factor_page("otto", "otto-password-1");
    let reused = rp.submit("/signin/factor/totp", json!({"code": code}));
    assert_eq!(reused["status"], 401, "{reused}");
    assert!(alert(&reused).contains("already used"), "{reused}");
    assert!(forms(&reused).contains(&"/signin/factor/recovery".to_string()), "other factors still offered");
    let done = rp.submit("/signin/factor/recovery", json!({"code": codes[0]}));
    assert_eq!(signed_in(&done)["amr"], json!(["pwd", "mfa"]));

    // A spent recovery code: refused; another one works (dashes optional).
    rp.sign_in_to_factor_page("otto", "otto-password-1");
    let spent = rp.submit("/signin/factor/recovery", json!({"code": codes[0]}));
    assert_eq!(spent["status"], 401, "{spent}");
    assert!(alert(&spent).contains("already used"), "{spent}");
    let done = rp.submit("/signin/factor/recovery", json!({"code": codes[1].replace('-', "").to_uppercase()}));
    assert_eq!(signed_in(&done)["preferred_username"], "otto");

    // Bounded attempts: three wrong codes end the pending sign-in; with the
    // lockout's five failures even a right code is refused for a while.
    rp.sign_in_to_factor_page("otto", "otto-password-1");
    for _ in 0..2 {
        let wrong = rp.submit("/signin/factor/totp", json!({"code": wrong_code(&totp_secret)}));
        assert_eq!(wrong["title"], "Confirm your sign-in", "{wrong}");
    }
    let over = rp.submit("/signin/factor/totp", json!({"code": wrong_code(&totp_secret)}));
    assert_eq!(over["title"], "Sign in", "back to the password after three wrong codes: {over}");
    assert!(alert(&over).contains("3 wrong codes"), "{over}");
    rp.sign_in_to_factor_page("otto", "otto-password-1");
    for _ in 0..2 {
        rp.submit("/signin/factor/recovery", json!({"code": "aaaa-bbbb-cccc-dddd"}));
    }
    let (code, _) = next_code(&totp_secret, step);
    let locked = rp.submit("/signin/factor/totp", json!({"code": code}));
    assert_eq!(locked["status"], 429, "{locked}");
    assert!(alert(&locked).contains("Too many wrong codes"), "{locked}");
    let again = rp.through_password("otto", "otto-password-1");
    assert_eq!(again["status"], 429, "still locked at the password step: {again}");
    assert!(!server.log().contains(&codes[0]), "codes never reach the log");
}

#[test]
fn pending_sign_in_is_not_a_session() {
    let server = server();
    let secret = add_client(&server);
    server.add_user("rita", "rita-password-1");
    server.add_user("bare", "bare-password-1");
    server.cli(&["group", "add-member", "mfa", "rita"], None);
    server.cli(&["group", "add-member", "mfa", "bare"], None);
    let out = server.cli(&["user", "mfa", "recovery-codes", "rita"], None);
    let codes: Vec<&str> = out.lines().skip_while(|l| !l.starts_with("recovery codes")).skip(1).collect();
    assert_eq!(codes.len(), 10, "{out}");
    server.settle();

    // Password accepted, second factor pending: neither the account page nor
    // the authorization endpoint treats the browser as signed in.
    let browser = Browser::new(&server);
    let pending = browser.account_signin("rita", "rita-password-1");
    assert_eq!(pending.status, 200);
    assert!(pending.body.contains("Confirm your sign-in"), "{}", pending.body);
    assert!(pending.headers.contains("__Host-portcullis_mfa="), "{}", pending.headers);
    assert!(!pending.headers.contains("__Host-portcullis_session="), "no session before the second factor");
    assert!(browser.get("/account").body.contains("Sign in to manage your account"));
    let authorize = browser.get(
        "/oidc/authorize?client_id=mfaapp&redirect_uri=https%3A%2F%2Fapp.example.org%2Fcb&response_type=code\
         &scope=openid&prompt=none&state=s1",
    );
    assert!(authorize.location.contains("error=login_required"), "{}", authorize.location);
    // The factor page is still there; a recovery code finishes the account sign-in.
    let factor = browser.get("/signin/factor");
    assert_eq!(factor.status, 200);
    let csrf = field(&factor.body, "csrf");
    let forged = browser.post("/signin/factor/recovery", "forged", &[("code", codes[0])]);
    assert_eq!(forged.status, 403, "CSRF-protected");
    let done = browser.post("/signin/factor/recovery", &csrf, &[("code", codes[0])]);
    assert_eq!((done.status, done.location.as_str()), (303, format!("{}/account", server.issuer()).as_str()));
    assert!(done.headers.contains("__Host-portcullis_session="));
    let account = browser.get("/account");
    assert!(account.body.contains("9 unused recovery codes."), "{}", account.body);
    // The spent pending sign-in is gone.
    assert_eq!(browser.get("/signin/factor").status, 401);

    // A user who must use a second factor but has none: a clear page, no tokens.
    let mut rp = Rp::start(&server, &secret);
    let page = rp.through_password("bare", "bare-password-1");
    assert_eq!((page["status"].as_u64(), page["title"].as_str()), (Some(403), Some("Second factor needed")));
    assert!(alert(&page).contains("none is set up"), "{page}");
    assert!(page["forms"].as_array().is_some_and(Vec::is_empty), "{page}");
    let none = rp.step(json!({"cmd": "authorize", "prompt": "none"}));
    assert_eq!(none["error"], "login_required", "no session was started: {none}");
}

/// The policy beyond groups: a client registered to require a second factor
/// asks it of everyone (a password-only session steps up), and members of
/// the admin group always need one.
#[test]
fn client_policy_and_admins() {
    let server = server();
    let secret = add_client(&server);
    server.add_user("paula", "paula-password-1");
    server.add_user("adam", "adam-password-1");
    server.cli(&["group", "add", "portcullis-admins"], None);
    server.cli(&["group", "add-member", "portcullis-admins", "adam"], None);
    let recovery = |user: &str| -> Vec<String> {
        let out = server.cli(&["user", "mfa", "recovery-codes", user], None);
        out.lines().skip_while(|l| !l.starts_with("recovery codes")).skip(1).map(String::from).collect()
    };
    let paula_codes = recovery("paula");
    let adam_codes = recovery("adam");
    assert_eq!((paula_codes.len(), adam_codes.len()), (10, 10));
    server.settle();
    let mut rp = Rp::start(&server, &secret);

    // Paula is in no MFA group: the password alone signs her in...
    let done = rp.through_password("paula", "paula-password-1");
    assert_eq!(signed_in(&done)["amr"], json!(["pwd"]));

    // ...until the client requires a second factor: her password-only
    // session is not enough, she signs in again and confirms.
    let out = server.cli(&["oidc", "client", "set-mfa", "mfaapp", "required"], None);
    assert!(out.contains("second factor required"), "{out}");
    assert!(server.cli(&["oidc", "client", "show", "mfaapp"], None).contains("second factor:  required"));
    server.settle();
    let again = rp.authorize();
    assert_eq!(again["title"], "Sign in", "{again}");
    assert!(alert(&again).contains("needs a second factor"), "{again}");
    let factor = rp.password("paula", "paula-password-1");
    assert_eq!(factor["title"], "Confirm your sign-in", "{factor}");
    let done = rp.submit("/signin/factor/recovery", json!({"code": paula_codes[0]}));
    assert_eq!(signed_in(&done)["amr"], json!(["pwd", "mfa"]));

    // Back to the group policy: an admin still needs the second factor.
    server.cli(&["oidc", "client", "set-mfa", "mfaapp", "by-group"], None);
    server.settle();
    let done = rp.through_password("paula", "paula-password-1");
    assert_eq!(signed_in(&done)["amr"], json!(["pwd"]), "by group again");
    let factor = rp.sign_in_to_factor_page("adam", "adam-password-1");
    assert!(forms(&factor).contains(&"/signin/factor/recovery".to_string()), "{factor}");
    let done = rp.submit("/signin/factor/recovery", json!({"code": adam_codes[0]}));
    assert_eq!(signed_in(&done)["preferred_username"], "adam");
    let audit = server.cli(&["audit", "--limit", "100"], None);
    assert!(audit.contains("oidc.client.mfa"), "{audit}");
}
