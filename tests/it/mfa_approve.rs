//! The browser approval app (`/approve`, `/mfa/enroll`), end to end in a
//! real headless Chromium driven over the DevTools protocol
//! (tests/approve/browser.mjs, no npm packages): the enrollment link from
//! `portcullis user mfa enroll-link` opened in the browser, which makes its
//! WebCrypto key and enrolls; LDAP binds that wait on the challenge while
//! the page shows it and the test clicks Approve, then Deny. Also the
//! app's headers (strict CSP, no inline script) fetched with curl.
//!
//! Web Push: the server has it on, so the app offers notifications and
//! tries to subscribe; headless Chromium has no push service to reach
//! offline, so the subscription fails and the test enrolls in poll mode, as
//! the app then offers. (Sending Web Push is covered against a mock in
//! `push::webpush`.) If a subscription does succeed, the device must be
//! listed with `push: webpush`.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ldap3_proto::proto::LdapResultCode;
use serde_json::{Value, json};

use crate::common::{TestServer, require_tool, user_dn};
use crate::mfa_ldap::bind_from;

const USER: &str = "apprbrowser";
const USER_PW: &str = "browser-Right-pw-1";

/// The Chromium binary Debian installs.
const CHROMIUM: &str = "chromium";

/// A headless Chromium, one command at a time.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<String>,
}

impl Browser {
    fn start(server: &TestServer) -> Self {
        require_tool("node");
        require_tool(CHROMIUM);
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/approve/browser.mjs");
        let mut child = Command::new("node")
            .arg(script)
            .args([CHROMIUM, &server.issuer(), &server.ca_path().display().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the Chromium driver");
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
        Browser { child, stdin, answers }
    }

    /// Sends one command; its answer, which must be `ok`.
    fn step(&mut self, cmd: Value) -> Value {
        let answer = self.try_step(cmd.clone());
        assert_eq!(answer["ok"], true, "browser step {cmd} failed: {answer}\npage log: {}", self.log());
        answer
    }

    fn try_step(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").expect("write to the driver");
        self.stdin.flush().expect("flush");
        let line = self
            .answers
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("no answer from the Chromium driver to {cmd}: {e}"));
        serde_json::from_str(&line).expect("JSON from the driver")
    }

    fn open(&mut self, url: &str) {
        self.step(json!({"cmd": "open", "url": url}));
    }

    /// Waits until `expr` is truthy in the page; its value.
    fn wait(&mut self, expr: &str) -> Value {
        self.step(json!({"cmd": "wait", "expr": expr, "timeout_ms": 30_000}))["value"].take()
    }

    fn eval(&mut self, expr: &str) -> Value {
        self.step(json!({"cmd": "eval", "expr": expr}))["value"].take()
    }

    fn click(&mut self, selector: &str) {
        self.step(json!({"cmd": "click", "selector": selector}));
    }

    fn log(&mut self) -> String {
        let answer = self.try_step(json!({"cmd": "log"}));
        answer["log"].to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        let _ = self.stdin.flush();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server whose group `mfa` needs a second factor, with `USER` in it.
fn server(extra: &[(&str, &str)]) -> TestServer {
    let mut env = vec![("PORTCULLIS_MFA__REQUIRED_GROUPS", "[\"mfa\"]"), ("PORTCULLIS_MFA__LDAP_DEADLINE_SECS", "25")];
    env.extend_from_slice(extra);
    let server = TestServer::start_with(&env);
    server.add_user(USER, USER_PW);
    server.cli(&["group", "add", "mfa"], None);
    server.cli(&["group", "add-member", "mfa", USER], None);
    server.settle();
    server
}

fn enroll_link(server: &TestServer) -> String {
    let out = server.cli(&["user", "mfa", "enroll-link", USER], None);
    out.lines()
        .find_map(|l| l.strip_prefix("enrollment_url:"))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| panic!("no enrollment_url: {out}"))
}

/// `GET path` with curl: the status line and headers (lower-cased), and the body.
fn get(server: &TestServer, path: &str) -> (String, String) {
    require_tool("curl");
    let out = Command::new("curl")
        .args(["-sS", "--cacert", &server.ca_path().display().to_string(), "-i"])
        .arg(format!("{}{path}", server.issuer()))
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl {path}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (headers.to_ascii_lowercase(), body.to_string())
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).map(str::trim)
}

/// Every file of the app carries a CSP that allows scripts from this origin
/// only (no 'unsafe-inline', no other origin) and no framing; the pages
/// hold no inline script; the worker may control `/approve`; without Web
/// Push configured there is no VAPID key.
#[test]
fn the_app_is_served_under_a_strict_policy() {
    let server = TestServer::start();
    for path in [
        "/approve",
        "/mfa/enroll",
        "/approve/app.js",
        "/approve/app.css",
        "/approve/sw.js",
        "/approve/manifest.webmanifest",
        "/approve/icon.svg",
    ] {
        let (headers, body) = get(&server, path);
        assert!(headers.starts_with("http/1.1 200"), "{path}: {headers}");
        let csp = header(&headers, "content-security-policy").unwrap_or_else(|| panic!("{path}: no CSP: {headers}"));
        let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
        assert!(directives.contains(&"script-src 'self'"), "{path}: {csp}");
        assert!(directives.contains(&"connect-src 'self'"), "{path}: {csp}");
        assert!(directives.contains(&"frame-ancestors 'none'"), "{path}: {csp}");
        assert!(directives.contains(&"default-src 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{path}: {csp}");
        assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"), "{path}");
        assert!(header(&headers, "etag").is_some(), "{path}: cacheable with revalidation: {headers}");
        if path == "/approve" || path == "/mfa/enroll" {
            assert!(header(&headers, "content-type").is_some_and(|t| t.starts_with("text/html")), "{headers}");
            assert!(body.contains("<script src=\"/approve/app.js\""), "{body}");
            let inline = body.matches("<script").count() - body.matches("<script src=").count();
            assert_eq!(inline, 0, "no inline script: {body}");
            assert!(!body.contains(" onclick=") && !body.contains("javascript:"), "{body}");
        }
        if path == "/approve/sw.js" {
            assert_eq!(header(&headers, "service-worker-allowed"), Some("/approve"), "{headers}");
        }
        if path == "/approve/manifest.webmanifest" {
            let manifest: Value = serde_json::from_str(&body).expect("the manifest is JSON");
            assert_eq!(manifest["start_url"], "/approve");
        }
    }
    let (headers, body) = get(&server, "/api/mfa/vapid-public-key");
    assert!(headers.starts_with("http/1.1 404"), "Web Push is off: {headers}{body}");
}

/// The acceptance path: enroll a browser from the enrollment link, then an
/// SSH-style LDAP bind is approved in the page (bind succeeds) and another
/// is denied (bind fails); the device is listed by `user mfa show`.
#[test]
fn a_browser_enrolls_and_answers_ldap_binds() {
    let server = server(&[("PORTCULLIS_PUSH__WEBPUSH__SUBJECT", "mailto:admin@example.org")]);
    let (headers, body) = get(&server, "/api/mfa/vapid-public-key");
    assert!(headers.starts_with("http/1.1 200"), "{headers}{body}");
    let key: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(key["key"].as_str().map(str::len), Some(87), "a P-256 point, base64url: {body}");

    let mut browser = Browser::start(&server);
    let link = enroll_link(&server);
    browser.open(&link);
    browser.wait("document.body.dataset.view === 'enroll'");
    // The token left the address bar (and the history) at once.
    assert_eq!(browser.eval("location.href"), json!(format!("{}/mfa/enroll", server.issuer())));
    // Web Push is on: the app offers notifications.
    // (shown once the app has fetched the VAPID key: wait, bounded, rather than race it)
    browser.wait("document.getElementById('push-choice').hidden === false");
    browser.step(json!({"cmd": "type", "selector": "#device-name", "text": "test browser"}));
    browser.step(json!({"cmd": "grant", "permissions": ["notifications"]}));
    browser.click("#enroll-button");
    let outcome = browser.wait(
        "document.body.dataset.view === 'approvals' ? 'enrolled' : \
         (/Notifications could not be turned on/.test(document.getElementById('status').textContent) && \
          !document.getElementById('enroll-push').checked ? 'no push' : '')",
    );
    let push = if outcome == "no push" {
        // No push service offline: enroll without notifications (poll mode).
        browser.click("#enroll-button");
        browser.wait("document.body.dataset.view === 'approvals'");
        "none"
    } else {
        "webpush"
    };
    let status = browser.wait("document.getElementById('status').textContent");
    assert!(status.as_str().is_some_and(|s| s.contains("test browser")), "{status}");

    let shown = server.cli(&["user", "mfa", "show", USER], None);
    let line = shown.lines().find(|l| l.starts_with("device:")).unwrap_or_else(|| panic!("no device: {shown}"));
    assert!(line.ends_with("name: test browser") && line.contains(&format!("push: {push}")), "{shown}");
    // The key stayed in the browser and cannot be exported.
    let key = browser.eval(
        "new Promise((ok, bad) => { const r = indexedDB.open('portcullis-approve'); r.onerror = bad; \
           r.onsuccess = () => { const g = r.result.transaction('device').objectStore('device').get('current'); \
             g.onsuccess = () => ok({ extractable: g.result.privateKey.extractable, \
               type: g.result.privateKey.type, curve: g.result.privateKey.algorithm.namedCurve }); }; })",
    );
    assert_eq!(key, json!({"extractable": false, "type": "private", "curve": "P-256"}));
    // The worker is installed for the app's scope.
    browser.wait("navigator.serviceWorker.getRegistration('/approve').then(r => Boolean(r && r.active) && r.scope)");

    // Approve: a bind from 127.0.0.1 waits; the page shows it; Approve.
    let dn = user_dn(USER);
    let bind = |src: Ipv4Addr| {
        let (port, dn) = (server.ldap_port, dn.clone());
        std::thread::spawn(move || bind_from(src, port, &dn, USER_PW, Duration::from_secs(30)))
    };
    let pending = "li.challenge[data-state=pending]";
    let approved = bind(Ipv4Addr::LOCALHOST);
    let card = browser.wait(&format!(
        "(() => {{ const c = document.querySelector('{pending}'); return c && {{ id: c.dataset.challenge, \
           what: c.querySelector('.what').textContent, source: c.querySelector('.source').textContent }}; }})()"
    ));
    assert!(card["what"].as_str().is_some_and(|w| w.starts_with("SSH login to")), "{card}");
    assert!(card["source"].as_str().is_some_and(|s| s.contains("127.0.0.1")), "{card}");
    browser.click(&format!("{pending} [data-verdict=approve]"));
    let id = card["id"].as_str().expect("challenge id").to_string();
    browser.wait(&format!("document.querySelector('li[data-challenge=\"{id}\"]').dataset.state === 'approved'"));
    assert_eq!(approved.join().expect("bind thread"), Ok(LdapResultCode::Success), "{}", server.log());

    // Deny: a bind from another host (the first one is inside its approval
    // window) is refused.
    let denied = bind(Ipv4Addr::new(127, 0, 2, 7));
    let card = browser.wait(&format!(
        "(() => {{ const c = document.querySelector('{pending}'); return c && c.dataset.challenge !== '{id}' && \
           {{ id: c.dataset.challenge, source: c.querySelector('.source').textContent }}; }})()"
    ));
    assert!(card["source"].as_str().is_some_and(|s| s.contains("127.0.2.7")), "{card}");
    browser.click(&format!("{pending} [data-verdict=deny]"));
    let id = card["id"].as_str().expect("challenge id").to_string();
    browser.wait(&format!("document.querySelector('li[data-challenge=\"{id}\"]').dataset.state === 'denied'"));
    assert_eq!(denied.join().expect("bind thread"), Ok(LdapResultCode::InvalidCredentials));

    // The page ran without errors or policy violations.
    let log = browser.log();
    let entries: Vec<Value> = serde_json::from_str(&log).expect("log JSON");
    let bad: Vec<&Value> = entries
        .iter()
        .filter(|e| {
            let kind = e["kind"].as_str().unwrap_or("");
            let text = e["text"].as_str().unwrap_or("");
            kind == "exception" || text.contains("Content Security Policy") || text.contains("Refused to")
        })
        .collect();
    assert!(bad.is_empty(), "page errors: {bad:?}");
}
