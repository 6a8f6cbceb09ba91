//! Push 2FA from the device's side: enrollment links, the signed device API
//! (`/api/mfa/…`, called with curl and with the reference device
//! `portcullis device`), the admin commands `user mfa …`, and LDAP binds
//! (ldapwhoami) that wait for the device's approval, including the attacks
//! the issue lists: replayed approvals, another user's device, late
//! approvals, a decision signed for another challenge, and fraud reports.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use portcullis::mfa::device::{DeviceKey, Verdict, decision_message, request_message};
use serde_json::{Value, json};

use crate::common::{BIN, TestServer, require_tool, user_dn};

const GROUP: &str = "mfausers";

/// A server where members of `mfausers` need a second factor, with
/// `pcalice` and `pcbob` in that group and `pccarol` outside it.
fn setup(extra: &[(&str, &str)]) -> TestServer {
    let mut env = vec![("PORTCULLIS_MFA__REQUIRED_GROUPS", "[\"mfausers\"]")];
    env.extend_from_slice(extra);
    let server = TestServer::start_with(&env);
    server.add_user("pcalice", "alice-pw-1");
    server.add_user("pcbob", "bob-pw-123");
    server.add_user("pccarol", "carol-pw-1");
    server.cli(&["group", "add", GROUP], None);
    server.cli(&["group", "add-member", GROUP, "pcalice"], None);
    server.cli(&["group", "add-member", GROUP, "pcbob"], None);
    server.settle();
    server
}

/// Runs the CLI with extra environment on top of the server's.
fn cli_env(server: &TestServer, extra: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .envs(server.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run portcullis")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn enroll_link(server: &TestServer, user: &str) -> String {
    let out = server.cli(&["user", "mfa", "enroll-link", user], None);
    out.lines().find_map(|l| l.strip_prefix("enrollment_url: ")).expect("enrollment_url line").to_string()
}

/// Runs `portcullis device …` (no server configuration: it is a client).
fn device(args: &[&str]) -> Output {
    Command::new(BIN).arg("device").args(args).stdin(Stdio::null()).output().expect("run portcullis device")
}

fn device_ok(args: &[&str]) -> String {
    let out = device(args);
    assert!(out.status.success(), "portcullis device {args:?} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An enrolled reference device.
struct Dev {
    key_file: PathBuf,
    id: String,
}

impl Dev {
    fn key(&self) -> &str {
        self.key_file.to_str().expect("utf-8 path")
    }

    /// The device's private key, read from its key file.
    fn signing_key(&self) -> DeviceKey {
        let state: Value = serde_json::from_slice(&std::fs::read(&self.key_file).unwrap()).unwrap();
        let der = base64::engine::general_purpose::STANDARD.decode(state["key_pkcs8_b64"].as_str().unwrap()).unwrap();
        DeviceKey::from_pkcs8(&der).unwrap()
    }
}

fn enroll(server: &TestServer, user: &str, file: &str) -> Dev {
    let key_file = server.dir.path().join(file);
    let url = enroll_link(server, user);
    let ca = server.ca_path();
    let out = device_ok(&[
        "enroll",
        &url,
        "--key-file",
        key_file.to_str().unwrap(),
        "--name",
        &format!("{user}'s terminal"),
        "--ca",
        ca.to_str().unwrap(),
    ]);
    let reply: Value = serde_json::from_str(out.trim()).expect("enroll prints JSON");
    assert_eq!(reply["issuer"], server.issuer());
    Dev { key_file, id: reply["device_id"].as_str().expect("device_id").to_string() }
}

fn now() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

/// One HTTP exchange with curl: (status, JSON body or Null).
fn curl(server: &TestServer, method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> (u16, Value) {
    require_tool("curl");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "40", "--cacert"])
        .arg(server.ca_path())
        .args(["-X", method]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    if method == "POST" {
        cmd.args(["-H", "content-type: application/json", "--data-binary", "@-"]);
    }
    let mut child =
        cmd.arg(format!("{}{path}", server.issuer())).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(body).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, status) = stdout.rsplit_once('\n').expect("status line");
    (status.trim().parse().expect("status"), serde_json::from_str(json).unwrap_or(Value::Null))
}

/// The three signature headers for a request signed by `key` as `device_id` at `ts`.
fn signed(key: &DeviceKey, device_id: &str, method: &str, path: &str, ts: i64, body: &[u8]) -> Vec<(String, String)> {
    let sig = key.sign(&request_message(method, path, ts, body)).unwrap();
    vec![
        ("x-portcullis-device".into(), device_id.into()),
        ("x-portcullis-timestamp".into(), ts.to_string()),
        ("x-portcullis-signature".into(), sig),
    ]
}

/// A signed API call as `dev`.
fn api(server: &TestServer, dev: &Dev, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let headers = signed(&dev.signing_key(), &dev.id, method, path, now(), body);
    curl(server, method, path, &headers, body)
}

/// A signed decision body.
fn decision(key: &DeviceKey, challenge: &str, verdict: Verdict, ts: i64) -> Vec<u8> {
    let number = match verdict {
        Verdict::Approve { number } => number,
        _ => None,
    };
    let signature = key.sign(&decision_message(challenge, verdict, ts)).unwrap();
    json!({ "verdict": verdict.word(), "number": number, "timestamp": ts, "signature": signature })
        .to_string()
        .into_bytes()
}

fn show(server: &TestServer, user: &str) -> String {
    server.cli(&["user", "mfa", "show", user], None)
}

#[test]
fn enrollment_links_signed_requests_and_admin_commands() {
    let server = setup(&[]);
    let alice = enroll(&server, "pcalice", "alice.key");
    // The key file is private, and names the server and the device.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&alice.key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "key file mode {mode:o}");
    }
    let state: Value = serde_json::from_slice(&std::fs::read(&alice.key_file).unwrap()).unwrap();
    assert_eq!((state["issuer"].as_str(), state["device_id"].as_str()), (Some(&*server.issuer()), Some(&*alice.id)));

    // A link works once; a second use and an expired link are refused, and
    // a refused enrollment leaves no key file behind.
    let url = enroll_link(&server, "pcbob");
    let ca = server.ca_path();
    let bob_key = server.dir.path().join("bob.key");
    device_ok(&["enroll", &url, "--key-file", bob_key.to_str().unwrap(), "--ca", ca.to_str().unwrap()]);
    let again = server.dir.path().join("again.key");
    let out = device(&["enroll", &url, "--key-file", again.to_str().unwrap(), "--ca", ca.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("400"), "{}", text(&out));
    assert!(!again.exists());
    let out =
        cli_env(&server, &[("PORTCULLIS_MFA__ENROLLMENT_TTL_SECS", "1")], &["user", "mfa", "enroll-link", "pcbob"]);
    let short = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("enrollment_url: ").map(str::to_string));
    let short = short.expect("enrollment_url");
    std::thread::sleep(Duration::from_millis(2100));
    let out = device(&["enroll", &short, "--key-file", again.to_str().unwrap(), "--ca", ca.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("expired"), "{}", text(&out));
    // An existing key file is never overwritten.
    let out =
        device(&["enroll", &enroll_link(&server, "pcbob"), "--key-file", alice.key(), "--ca", ca.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("must not exist"), "{}", text(&out));

    // Malformed enrollments are refused before the token is spent.
    let link = enroll_link(&server, "pccarol");
    let token = link.split_once("/mfa/enroll#").unwrap().1.to_string();
    let (key, _) = DeviceKey::generate().unwrap();
    for (body, why) in [
        (json!({ "token": token, "public_key": "AAAA", "name": "x" }), "public_key"),
        (json!({ "token": token, "public_key": key.public_key(), "name": "x".repeat(65) }), "name"),
        (json!({ "token": token, "public_key": key.public_key(), "name": "a\u{1b}[31m" }), "name"),
        (
            json!({ "token": token, "public_key": key.public_key(), "name": "x", "push": { "kind": "apns", "address": "zz" } }),
            "push",
        ),
        (json!({ "token": token, "public_key": key.public_key(), "name": "x", "push": { "kind": "pager" } }), "push"),
    ] {
        let (status, reply) = curl(&server, "POST", "/api/mfa/enroll", &[], body.to_string().as_bytes());
        assert_eq!(status, 400, "{body}: {reply}");
        assert!(reply["error"].as_str().unwrap().contains(why), "{reply}");
    }
    let (status, reply) = curl(&server, "POST", "/api/mfa/enroll", &[], &vec![b' '; 20_000]);
    assert_eq!(status, 413, "{reply}");
    let good = json!({ "token": token, "public_key": key.public_key(), "name": "carol's phone",
        "push": { "kind": "apns", "address": "ab".repeat(32) } });
    let (status, reply) = curl(&server, "POST", "/api/mfa/enroll", &[], good.to_string().as_bytes());
    assert_eq!(status, 201, "{reply}");
    let carol_id = reply["device_id"].as_str().unwrap().to_string();
    let (status, _) = curl(&server, "POST", "/api/mfa/enroll", &[], good.to_string().as_bytes());
    assert_eq!(status, 400, "a token works once");
    let carol_show = show(&server, "pccarol");
    assert!(carol_show.contains(&format!("device: {carol_id}  push: apns")), "{carol_show}");
    assert!(carol_show.contains("name: carol's phone"), "{carol_show}");

    // Signed requests: the right signature passes; anything else is 401.
    let path = "/api/mfa/challenges";
    let (status, reply) = api(&server, &alice, "GET", path, b"");
    assert_eq!((status, reply.clone()), (200, json!({ "challenges": [] })), "{reply}");
    let k = alice.signing_key();
    let cases: Vec<(&str, Vec<(String, String)>)> = vec![
        ("no headers", Vec::new()),
        ("stale", signed(&k, &alice.id, "GET", path, now() - 300, b"")),
        ("future", signed(&k, &alice.id, "GET", path, now() + 300, b"")),
        ("unknown device", signed(&k, "00000000-0000-0000-0000-000000000000", "GET", path, now(), b"")),
        ("other key", signed(&key, &alice.id, "GET", path, now(), b"")),
        ("other path", signed(&k, &alice.id, "GET", "/api/mfa/challenges?wait=1", now(), b"")),
        ("other method", signed(&k, &alice.id, "POST", path, now(), b"")),
    ];
    for (what, headers) in cases {
        let (status, reply) = curl(&server, "GET", path, &headers, b"");
        assert_eq!(status, 401, "{what}: {reply}");
        assert!(reply["error"].is_string(), "{what}: {reply}");
    }
    let mut bad_sig = signed(&k, &alice.id, "GET", path, now(), b"");
    bad_sig[2].1 = "AAAA".into();
    assert_eq!(curl(&server, "GET", path, &bad_sig, b"").0, 401);
    // The body is signed too.
    let answer_path = "/api/mfa/challenges/nope/answer";
    let headers = signed(&k, &alice.id, "POST", answer_path, now(), b"{}");
    assert_eq!(curl(&server, "POST", answer_path, &headers, b"{\"x\":1}").0, 401);
    // Unknown challenges: 404; a malformed decision: 400; bad wait: 400.
    assert_eq!(api(&server, &alice, "GET", "/api/mfa/challenges/nope", b"").0, 404);
    let body = decision(&k, "nope", Verdict::Approve { number: None }, now());
    assert_eq!(api(&server, &alice, "POST", answer_path, &body).0, 404);
    assert_eq!(api(&server, &alice, "POST", answer_path, b"{\"verdict\":\"maybe\"}").0, 400);
    assert_eq!(api(&server, &alice, "GET", "/api/mfa/challenges?wait=soon", b"").0, 400);

    // A long poll with nothing to report returns after the wait.
    let started = Instant::now();
    assert_eq!(api(&server, &alice, "GET", "/api/mfa/challenges?wait=2", b"").1, json!({ "challenges": [] }));
    assert!(started.elapsed() >= Duration::from_millis(1900), "{:?}", started.elapsed());
    let started = Instant::now();
    assert_eq!(device_ok(&["pending", "--key-file", alice.key(), "--wait", "1"]), "");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // Admin commands.
    let shown = show(&server, "pcalice");
    assert!(shown.contains("devices: 1"), "{shown}");
    assert!(shown.contains(&format!("device: {}  push: none  last seen: ", alice.id)), "{shown}");
    assert!(shown.contains("name: pcalice's terminal"), "{shown}");
    for line in ["totp: no", "recovery codes left: 0", "pushes locked: no"] {
        assert!(shown.lines().any(|l| l == line), "{line:?} in {shown}");
    }
    let codes = server.cli(&["user", "mfa", "recovery-codes", "pcalice"], None);
    let mut lines = codes.lines();
    assert_eq!(lines.next(), Some("recovery codes (shown once):"));
    assert_eq!(lines.filter(|l| !l.trim().is_empty()).count(), 10, "{codes}");
    assert!(show(&server, "pcalice").contains("recovery codes left: 10"));
    let totp = server.cli(&["user", "mfa", "totp", "pcalice"], None);
    assert!(totp.lines().any(|l| l.starts_with("otpauth_url: otpauth://totp/")), "{totp}");
    assert!(totp.lines().any(|l| l.starts_with("secret: ") && l.len() > 20), "{totp}");
    assert!(show(&server, "pcalice").contains("totp: no (enrollment not confirmed)"));
    assert!(server.cli(&["user", "mfa", "unlock", "pcalice"], None).contains("were not locked"));
    let out = server.cli_output(&["user", "mfa", "show", "nobody"], None);
    assert!(!out.status.success() && text(&out).contains("does not exist"));

    // Removing a device cuts it off at once.
    let out = server.cli_output(&["user", "mfa", "remove-device", "pcalice", &carol_id], None);
    assert!(!out.status.success(), "another user's device: {}", text(&out));
    server.cli(&["user", "mfa", "remove-device", "pccarol", &carol_id], None);
    assert!(show(&server, "pccarol").contains("devices: 0"));
    assert!(
        server
            .cli(&["user", "mfa", "reset", "pcalice"], None)
            .contains("1 devices and 0 security keys of user pcalice removed")
    );
    assert!(show(&server, "pcalice").contains("devices: 0"));
    assert_eq!(api(&server, &alice, "GET", path, b"").0, 401);
    let out = device(&["pending", "--key-file", alice.key()]);
    assert!(!out.status.success() && text(&out).contains("401"), "{}", text(&out));

    let audit = server.cli(&["audit", "--limit", "100"], None);
    for action in
        ["mfa.device_enrolled", "mfa.device_removed", "mfa.devices_reset", "mfa.push_unlocked", "mfa.enrollment_link"]
    {
        assert!(audit.contains(action), "{action} in {audit}");
    }
    // Nothing secret reaches the log.
    let log = server.log();
    assert!(!log.contains(&token), "the enrollment token was logged");
}

// ---- challenges through LDAP binds ---------------------------------------

/// Binds as `user` with ldapwhoami over StartTLS in a background thread.
fn bind_in_background(server: &TestServer, user: &str, password: &str) -> std::thread::JoinHandle<Output> {
    require_tool("ldapwhoami");
    let (url, ca, dn, password) = (server.ldap_url(), server.ca_path(), user_dn(user), password.to_string());
    std::thread::spawn(move || {
        Command::new("ldapwhoami")
            .args(["-x", "-ZZ", "-H", &url, "-D", &dn, "-w", &password])
            .env("LDAPTLS_CACERT", &ca)
            .env("LDAPTLS_REQCERT", "demand")
            .stdin(Stdio::null())
            .output()
            .expect("run ldapwhoami")
    })
}

/// Waits (up to 20 s) until `dev` sees exactly one open challenge; returns it.
fn one_challenge(dev: &Dev) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = device_ok(&["pending", "--key-file", dev.key(), "--wait", "5"]);
        let list: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
        if !list.is_empty() {
            assert_eq!(list.len(), 1, "exactly one challenge: {out}");
            return list.into_iter().next().unwrap();
        }
        assert!(Instant::now() < deadline, "no challenge arrived");
    }
}

fn bind_result(handle: std::thread::JoinHandle<Output>) -> Output {
    handle.join().expect("bind thread")
}

#[test]
fn ldap_binds_wait_for_the_device() {
    // No approval window: every bind below needs its own answer.
    let server = setup(&[("PORTCULLIS_MFA__APPROVAL_WINDOW_SECS", "0")]);
    let alice = enroll(&server, "pcalice", "alice.key");
    let bob = enroll(&server, "pcbob", "bob.key");

    // Approve: the bind succeeds.
    let bind = bind_in_background(&server, "pcalice", "alice-pw-1");
    let c = one_challenge(&alice);
    let id = c["id"].as_str().unwrap().to_string();
    assert!(c["what"].as_str().unwrap().contains("127.0.0.1"), "{c}");
    assert_eq!(c["choices"], json!([]), "{c}");
    assert!(c["expires_at"].as_i64().unwrap() > c["created_at"].as_i64().unwrap());
    // Bob's device sees none of Alice's challenges, and cannot answer them.
    assert_eq!(device_ok(&["pending", "--key-file", bob.key()]), "");
    assert_eq!(api(&server, &bob, "GET", &format!("/api/mfa/challenges/{id}"), b"").0, 404);
    let forged = decision(&bob.signing_key(), &id, Verdict::Approve { number: None }, now());
    let (status, _) = api(&server, &bob, "POST", &format!("/api/mfa/challenges/{id}/answer"), &forged);
    assert_eq!(status, 404, "another user's device");
    // Nor can Alice's device carry a decision signed by Bob's key.
    let (status, _) = api(&server, &alice, "POST", &format!("/api/mfa/challenges/{id}/answer"), &forged);
    assert_eq!(status, 401, "a decision signed by another device");
    // A decision signed for another challenge fails the signature.
    let other = decision(&alice.signing_key(), "some-other-challenge", Verdict::Approve { number: None }, now());
    let (status, _) = api(&server, &alice, "POST", &format!("/api/mfa/challenges/{id}/answer"), &other);
    assert_eq!(status, 401, "a decision for another challenge");
    // A stale decision is refused.
    let stale = decision(&alice.signing_key(), &id, Verdict::Approve { number: None }, now() - 600);
    let (status, _) = api(&server, &alice, "POST", &format!("/api/mfa/challenges/{id}/answer"), &stale);
    assert_eq!(status, 401, "a stale decision");
    // The real approval, sent once, then replayed byte for byte (same
    // request signature too): the replay finds the challenge closed.
    let path = format!("/api/mfa/challenges/{id}/answer");
    let body = decision(&alice.signing_key(), &id, Verdict::Approve { number: None }, now());
    let headers = signed(&alice.signing_key(), &alice.id, "POST", &path, now(), &body);
    let (status, reply) = curl(&server, "POST", &path, &headers, &body);
    assert_eq!((status, reply["outcome"].as_str()), (200, Some("approved")), "{reply}");
    let out = bind_result(bind);
    assert!(out.status.success(), "approved bind: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("pcalice"));
    let (status, reply) = curl(&server, "POST", &path, &headers, &body);
    assert_eq!(status, 409, "replayed approval: {reply}");
    let (status, got) = api(&server, &alice, "GET", &format!("/api/mfa/challenges/{id}"), b"");
    assert_eq!((status, got["state"].as_str()), (200, Some("approved")), "{got}");

    // Deny (from Bob's device, through the reference device CLI): the bind fails.
    let bind = bind_in_background(&server, "pcbob", "bob-pw-123");
    let c = one_challenge(&bob);
    let id = c["id"].as_str().unwrap();
    let out = device_ok(&["answer", "--key-file", bob.key(), id, "deny"]);
    assert_eq!(serde_json::from_str::<Value>(out.trim()).unwrap(), json!({ "id": id, "outcome": "denied" }));
    let out = bind_result(bind);
    assert!(!out.status.success(), "denied bind succeeded");
    assert!(text(&out).contains("Invalid credentials"), "{}", text(&out));
    // Answering again is refused, with a non-zero exit.
    let out = device(&["answer", "--key-file", bob.key(), id, "approve"]);
    assert!(!out.status.success() && text(&out).contains("409"), "{}", text(&out));

    // `watch --approve --count 1` approves a bind end to end.
    let watcher = {
        let key = bob.key().to_string();
        std::thread::spawn(move || device(&["watch", "--key-file", &key, "--approve", "--count", "1"]))
    };
    let bind = bind_in_background(&server, "pcbob", "bob-pw-123");
    let out = bind_result(bind);
    assert!(out.status.success(), "bind approved by watch: {}", text(&out));
    let out = watcher.join().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[1]["outcome"], "approved", "{lines:?}");

    // `watch --ask` asks on the terminal (stderr) and reads the answer.
    let watcher = {
        let key = alice.key().to_string();
        std::thread::spawn(move || {
            let mut child = Command::new(BIN)
                .args(["device", "watch", "--key-file", &key, "--ask", "--count", "1"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let out = {
                use std::io::Write;
                stdin.write_all(b"a\n").unwrap();
                child.wait_with_output().unwrap()
            };
            drop(stdin);
            out
        })
    };
    let out = bind_result(bind_in_background(&server, "pcalice", "alice-pw-1"));
    assert!(out.status.success(), "bind approved by watch --ask: {}", text(&out));
    let out = watcher.join().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SSH login to 127.0.0.1"), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"outcome\":\"approved\""), "{}", text(&out));

    // A user outside the required groups binds without any challenge.
    let out = bind_result(bind_in_background(&server, "pccarol", "carol-pw-1"));
    assert!(out.status.success(), "{}", text(&out));

    let audit = server.cli(&["audit", "--limit", "200"], None);
    assert!(audit.contains("mfa.challenge") && audit.contains("mfa.answer"), "{audit}");
    let log = server.log();
    let signature = serde_json::from_slice::<Value>(&body).unwrap()["signature"].as_str().unwrap().to_string();
    assert!(!log.contains(&signature), "a decision signature was logged");
}

#[test]
fn late_approvals_and_fraud_reports_are_refused() {
    let (alert_port, alerts) = crate::common::http_sink();
    let alert_url = format!("http://127.0.0.1:{alert_port}/portcullis-alerts");
    let alert_secret = "alert-secret-0123456789";
    let server = setup(&[
        ("PORTCULLIS_MFA__CHALLENGE_TTL_SECS", "3"),
        ("PORTCULLIS_MFA__LDAP_DEADLINE_SECS", "10"),
        ("PORTCULLIS_MFA__ALERT_URL", &alert_url),
        ("PORTCULLIS_MFA__ALERT_SECRET", alert_secret),
    ]);
    let alice = enroll(&server, "pcalice", "alice.key");

    // No answer in time: the bind fails, a late approval gets 409.
    let bind = bind_in_background(&server, "pcalice", "alice-pw-1");
    let c = one_challenge(&alice);
    let id = c["id"].as_str().unwrap().to_string();
    let out = bind_result(bind);
    assert!(!out.status.success(), "unanswered bind succeeded");
    assert!(text(&out).contains("Invalid credentials"), "{}", text(&out));
    let late = decision(&alice.signing_key(), &id, Verdict::Approve { number: None }, now());
    let (status, reply) = api(&server, &alice, "POST", &format!("/api/mfa/challenges/{id}/answer"), &late);
    assert_eq!(status, 409, "late approval: {reply}");

    // "This wasn't me": the bind fails, pushes stop until an admin unlocks.
    let bind = bind_in_background(&server, "pcalice", "alice-pw-1");
    let c = one_challenge(&alice);
    let out = device_ok(&["answer", "--key-file", alice.key(), c["id"].as_str().unwrap(), "fraud"]);
    assert!(out.contains("denied"), "{out}");
    assert!(!bind_result(bind).status.success());
    assert!(show(&server, "pcalice").lines().any(|l| l == "pushes locked: yes"));
    let bind = bind_in_background(&server, "pcalice", "alice-pw-1");
    assert_eq!(device_ok(&["pending", "--key-file", alice.key(), "--wait", "3"]), "", "no challenge while locked");
    assert!(!bind_result(bind).status.success(), "bind succeeded while pushes are locked");
    let audit = server.cli(&["audit", "--limit", "200"], None);
    assert!(audit.contains("mfa.fraud_reported"), "{audit}");
    // ...and admins are alerted through the hook, with a signed body.
    let alert = alerts.recv_timeout(Duration::from_secs(10)).expect("an admin alert arrives");
    assert_eq!(alert.request_line, "POST /portcullis-alerts HTTP/1.1");
    assert_eq!(alert.header("content-type"), "application/json");
    let expected = portcullis::push::webhook::signature(alert_secret.as_bytes(), alert.body.as_bytes());
    assert_eq!(alert.header("x-portcullis-signature"), expected, "the alert is signed");
    let body: Value = serde_json::from_str(&alert.body).expect("JSON alert");
    assert_eq!(body["event"], "mfa.fraud_reported");
    assert_eq!(body["username"], "pcalice");
    assert!(body["what"].as_str().unwrap().starts_with("SSH login to "), "{body}");
    assert!(!alert.body.contains("alice-pw-1"), "no secret in the alert");
    assert!(alerts.recv_timeout(Duration::from_millis(300)).is_err(), "one alert per report");

    assert!(server.cli(&["user", "mfa", "unlock", "pcalice"], None).contains("unlocked"));
    assert!(show(&server, "pcalice").lines().any(|l| l == "pushes locked: no"));
}
