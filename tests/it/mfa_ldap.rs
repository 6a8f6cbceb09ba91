//! Push 2FA on LDAP binds, end to end against `portcullis serve`: the
//! reference device (`portcullis device …`) enrolled through
//! `portcullis user mfa enroll-link`, binds sent with ldap3_proto's codec
//! from distinct loopback addresses (each one a "host" to the server).
//!
//! Also the device and audit helpers the SSH acceptance test in `sssd.rs`
//! uses.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ldap3_proto::LdapCodec;
use ldap3_proto::proto::{LdapBindCred, LdapBindRequest, LdapMsg, LdapOp, LdapResultCode};
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::codec::{Decoder, Encoder};

use crate::common::{TestServer, user_dn};

/// The reference approval device of one user, kept in a key file.
pub struct Device {
    pub key_file: PathBuf,
}

impl Device {
    /// Enrolls a device for `user`: an enrollment link from the admin CLI,
    /// then `portcullis device enroll` against the server's HTTPS port.
    pub fn enroll(server: &TestServer, user: &str) -> Device {
        let out = server.cli(&["user", "mfa", "enroll-link", user], None);
        let url = out
            .lines()
            .find_map(|l| l.strip_prefix("enrollment_url:"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no enrollment_url in `user mfa enroll-link {user}`: {out}"))
            .to_string();
        let key_file = server.dir.path().join(format!("device-{user}.json"));
        let key = key_file.display().to_string();
        let ca = server.ca_path().display().to_string();
        server.cli(&["device", "enroll", &url, "--key-file", &key, "--name", "test phone", "--ca", &ca], None);
        Device { key_file }
    }

    /// The open challenges (`device pending`), waiting up to `wait_secs`
    /// for the first one.
    pub fn pending(&self, server: &TestServer, wait_secs: u64) -> Vec<serde_json::Value> {
        let key = self.key_file.display().to_string();
        let out = server.cli(&["device", "pending", "--key-file", &key, "--wait", &wait_secs.to_string()], None);
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("`device pending` printed {l:?}: {e}")))
            .collect()
    }

    /// Waits (up to `limit`) until at least one challenge is open; returns
    /// all open ones.
    pub fn wait_for_challenges(&self, server: &TestServer, limit: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + limit;
        loop {
            let open = self.pending(server, 2);
            if !open.is_empty() {
                return open;
            }
            assert!(Instant::now() < deadline, "no challenge reached the device within {limit:?}:\n{}", server.log());
        }
    }

    /// Answers one challenge (`approve`, `deny` or `fraud`); the CLI's output.
    pub fn answer(&self, server: &TestServer, challenge: &serde_json::Value, verdict: &str) -> String {
        let id = challenge["id"].as_str().unwrap_or_else(|| panic!("challenge without id: {challenge}"));
        let key = self.key_file.display().to_string();
        // Ids are base64url and may start with '-': end the options first.
        server.cli(&["device", "answer", "--key-file", &key, "--", id, verdict], None)
    }
}

/// How many pushes (`mfa.challenge` audit rows) `user` got so far.
pub fn pushes(server: &TestServer, user: &str) -> usize {
    audit_rows(server, "mfa.challenge", user)
}

/// Audit rows with `action` and `target`.
pub fn audit_rows(server: &TestServer, action: &str, target: &str) -> usize {
    let out = server.cli(&["audit", "--limit", "100000"], None);
    out.lines()
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.get(2) == Some(&action) && fields.get(3) == Some(&target)
        })
        .count()
}

/// A simple bind over plain LDAP from the loopback address `src`; the
/// result code, or why there was none within `limit`.
pub fn bind_from(
    src: Ipv4Addr,
    port: u16,
    dn: &str,
    password: &str,
    limit: Duration,
) -> Result<LdapResultCode, String> {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(|e| e.to_string())?;
    sock.bind(&SocketAddr::from((src, 0)).into()).map_err(|e| format!("bind {src}: {e}"))?;
    sock.connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into(), Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    let mut stream: TcpStream = sock.into();
    stream.set_write_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let msg = LdapMsg::new(
        1,
        LdapOp::BindRequest(LdapBindRequest {
            version: 3,
            dn: dn.to_string(),
            cred: LdapBindCred::Simple(password.to_string()),
        }),
    );
    let mut codec = LdapCodec::default();
    let mut buf = BytesMut::new();
    codec.encode(msg, &mut buf).map_err(|e| e.to_string())?;
    stream.write_all(&buf).map_err(|e| format!("send: {e}"))?;
    let deadline = Instant::now() + limit;
    let mut buf = BytesMut::new();
    loop {
        if let Some(m) = codec.decode(&mut buf).map_err(|e| format!("undecodable response: {e}"))? {
            return match m.op {
                LdapOp::BindResponse(r) => Ok(r.res.code),
                other => Err(format!("not a bind response: {other:?}")),
            };
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no bind response within {limit:?}"));
        }
        stream.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return Err("connection closed".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

const USER: &str = "mfflood";
const USER_PW: &str = "flood-Right-pw-1";
const OTHER: &str = "mfother";
const OTHER_PW: &str = "other-Right-pw-2";
/// Configured fatigue limits for the flood test.
const MAX_OUTSTANDING: usize = 2;
const PUSHES_PER_MINUTE: usize = 4;
const DEADLINE_SECS: u64 = 4;

/// Source address number `n` (127.0.1.n): each is another host to the server.
fn host(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, n)
}

/// Binds at once, `per_host` from each of `hosts` (see [`host`]); the
/// result of each and how long it took, in order of hosts.
fn flood(
    server: &TestServer,
    hosts: impl IntoIterator<Item = u8>,
    per_host: usize,
) -> Vec<(Ipv4Addr, Result<LdapResultCode, String>, Duration)> {
    let dn = user_dn(USER);
    std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .into_iter()
            .flat_map(|h| std::iter::repeat_n(h, per_host))
            .map(|h| {
                let dn = dn.as_str();
                s.spawn(move || {
                    let started = Instant::now();
                    let res =
                        bind_from(host(h), server.ldap_port, dn, USER_PW, Duration::from_secs(DEADLINE_SECS + 10));
                    (host(h), res, started.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("bind thread")).collect()
    })
}

/// Many concurrent binds for one user, from one host and from many: one
/// challenge per host while it is pending, never more than
/// `max_outstanding_per_user` at once nor `user_pushes_per_minute` in all;
/// everything else is refused at once (and audited) instead of pushed, and
/// other users' binds are not held up meanwhile.
#[test]
fn bind_flood_is_capped_to_the_configured_pushes() {
    let server = TestServer::start_with(&[
        ("PORTCULLIS_MFA__REQUIRED_GROUPS", "[\"mfausers\"]"),
        ("PORTCULLIS_MFA__LDAP_DEADLINE_SECS", &DEADLINE_SECS.to_string()),
        ("PORTCULLIS_MFA__MAX_OUTSTANDING_PER_USER", &MAX_OUTSTANDING.to_string()),
        ("PORTCULLIS_MFA__USER_PUSHES_PER_MINUTE", &PUSHES_PER_MINUTE.to_string()),
        // Failed binds must not lock the flooding hosts out before MFA is reached.
        ("PORTCULLIS_AUTH__SOURCE_MAX_FAILURES", "1000"),
        ("PORTCULLIS_AUTH__MAX_FAILURES", "1000"),
    ]);
    server.add_user(USER, USER_PW);
    server.add_user(OTHER, OTHER_PW);
    server.cli(&["group", "add", "mfausers"], None);
    server.cli(&["group", "add-member", "mfausers", USER], None);
    server.settle();
    let device = Device::enroll(&server, USER);

    // Round 1: 3 hosts x 10 binds while nothing is answered. Two hosts get
    // a challenge each; their binds all wait on it; the third host is
    // refused at once (too many outstanding).
    let waiting = std::thread::scope(|s| {
        let flood = s.spawn(|| flood(&server, 1..=3, 10));
        let open = device.wait_for_challenges(&server, Duration::from_secs(10));
        // Every bind has arrived by now or soon; none may add a challenge.
        std::thread::sleep(Duration::from_millis(1500));
        let open_now = device.pending(&server, 0);
        assert!(open.len() <= MAX_OUTSTANDING && open_now.len() == MAX_OUTSTANDING, "open: {open_now:?}");
        // A user without MFA binds at once from a flooding host meanwhile.
        let started = Instant::now();
        let other = bind_from(host(1), server.ldap_port, &user_dn(OTHER), OTHER_PW, Duration::from_secs(5));
        assert_eq!(other, Ok(LdapResultCode::Success));
        assert!(started.elapsed() < Duration::from_secs(2), "another user's bind took {:?}", started.elapsed());
        for c in &open_now {
            device.answer(&server, c, "approve");
        }
        flood.join().expect("flood thread")
    });
    let ok = waiting.iter().filter(|(_, r, _)| *r == Ok(LdapResultCode::Success)).count();
    let refused: Vec<_> = waiting.iter().filter(|(_, r, _)| *r == Ok(LdapResultCode::InvalidCredentials)).collect();
    assert_eq!(ok, 20, "the binds of the two pushed hosts all take the approval: {waiting:?}");
    assert_eq!(refused.len(), 10, "{waiting:?}");
    assert!(refused.iter().all(|(_, _, took)| *took < Duration::from_secs(2)), "refusals are immediate: {refused:?}");
    assert_eq!(pushes(&server, USER), MAX_OUTSTANDING, "one push per host, at most max_outstanding_per_user");
    assert!(audit_rows(&server, "mfa.push_refused", USER) >= 1, "refusals are audited");

    // Round 2: the approved hosts bind again within the approval window: no push.
    let mut approved: Vec<u8> =
        waiting.iter().filter(|(_, r, _)| *r == Ok(LdapResultCode::Success)).map(|(ip, _, _)| ip.octets()[3]).collect();
    approved.dedup();
    assert_eq!(approved.len(), MAX_OUTSTANDING, "{waiting:?}");
    let again = flood(&server, approved, 3);
    assert!(again.iter().all(|(_, r, _)| *r == Ok(LdapResultCode::Success)), "{again:?}");
    assert_eq!(pushes(&server, USER), MAX_OUTSTANDING, "the approval window needs no new push");

    // Round 3: 10 new hosts x 3 binds; the device denies what reaches it.
    // The per-minute budget (4) leaves 2 pushes.
    let denied = std::thread::scope(|s| {
        let flood = s.spawn(|| flood(&server, 10..20, 3));
        let open = device.wait_for_challenges(&server, Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(1500));
        let open_now = device.pending(&server, 0);
        assert!(open.len() <= MAX_OUTSTANDING && open_now.len() == MAX_OUTSTANDING, "open: {open_now:?}");
        for c in &open_now {
            device.answer(&server, c, "deny");
        }
        flood.join().expect("flood thread")
    });
    assert!(
        denied.iter().all(|(_, r, _)| *r == Ok(LdapResultCode::InvalidCredentials)),
        "nothing was approved: {denied:?}"
    );
    assert_eq!(pushes(&server, USER), PUSHES_PER_MINUTE, "never more than user_pushes_per_minute");

    // Round 4: within the same minute, nothing outstanding, more hosts: the
    // per-user rate limit refuses every push, at once.
    let more = flood(&server, 30..35, 2);
    assert!(
        more.iter().all(|(_, r, took)| *r == Ok(LdapResultCode::InvalidCredentials) && *took < Duration::from_secs(2)),
        "{more:?}"
    );
    assert_eq!(pushes(&server, USER), PUSHES_PER_MINUTE);
    assert!(device.pending(&server, 0).is_empty());
    let log = server.log();
    assert!(log.contains("per-user push rate limit"), "the refusals are logged with their reason:\n{log}");
    assert!(!log.contains(USER_PW), "the password never reaches the log");
}

/// The server keeps answering other connections while binds wait for an
/// approval that an Unbind or a closed connection does not cancel: the
/// same host's next bind joins the pending challenge and takes its answer.
#[test]
fn closed_connection_keeps_the_challenge_for_the_next_bind() {
    let server = TestServer::start_with(&[
        ("PORTCULLIS_MFA__REQUIRED_GROUPS", "[\"mfausers\"]"),
        ("PORTCULLIS_MFA__LDAP_DEADLINE_SECS", "20"),
    ]);
    server.add_user(USER, USER_PW);
    server.cli(&["group", "add", "mfausers"], None);
    server.cli(&["group", "add-member", "mfausers", USER], None);
    server.settle();
    let device = Device::enroll(&server, USER);

    // A client gives up after 1 s (as SSSD does after ldap_opt_timeout) and closes.
    let first = bind_from(host(50), server.ldap_port, &user_dn(USER), USER_PW, Duration::from_secs(1));
    assert!(first.is_err(), "the first bind should still be waiting: {first:?}");
    let open = device.pending(&server, 0);
    assert_eq!(open.len(), 1, "{open:?}");
    assert!(open[0]["what"].as_str().is_some_and(|w| w.contains("127.0.1.50")), "{open:?}");

    // The re-sent bind joins; the approval answers it.
    std::thread::scope(|s| {
        let resent =
            s.spawn(|| bind_from(host(50), server.ldap_port, &user_dn(USER), USER_PW, Duration::from_secs(15)));
        // Give the re-sent bind time to arrive and join.
        std::thread::sleep(Duration::from_millis(1000));
        assert_eq!(device.pending(&server, 0).len(), 1, "no second challenge");
        device.answer(&server, &open[0], "approve");
        assert_eq!(resent.join().expect("thread"), Ok(LdapResultCode::Success));
    });
    assert_eq!(pushes(&server, USER), 1);
}

/// A stand-in for the push-approval service existing deployments run
/// (../shared/PUSH-COMPAT.md): `POST /send-notification`, the answer decided
/// by the user name, every request body recorded.
pub struct OldPushService {
    pub port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl OldPushService {
    /// Starts the stand-in on a free loopback port.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = std::sync::Arc::clone(&log);
                std::thread::spawn(move || Self::serve(stream, &log));
            }
        });
        Self { port, seen }
    }

    fn serve(mut stream: TcpStream, log: &std::sync::Mutex<Vec<serde_json::Value>>) {
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head_end, length) = loop {
            let Ok(n) = stream.read(&mut chunk) else { return };
            if n == 0 {
                return;
            }
            raw.extend_from_slice(&chunk[..n]);
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..i]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()))
                    .unwrap_or(0);
                break (i + 4, length);
            }
        };
        while raw.len() < head_end + length {
            let Ok(n) = stream.read(&mut chunk) else { return };
            if n == 0 {
                return;
            }
            raw.extend_from_slice(&chunk[..n]);
        }
        let request_line = String::from_utf8_lossy(&raw[..head_end]).lines().next().unwrap_or_default().to_string();
        let body: serde_json::Value = serde_json::from_slice(&raw[head_end..head_end + length]).unwrap_or_default();
        let user = body["username"].as_str().unwrap_or_default().to_string();
        log.lock().expect("log").push(serde_json::json!({ "request": request_line, "body": body }));
        let (status, answer) = match user.as_str() {
            "cpapprove" => (200, r#"{"success":true,"action":"approve"}"#),
            "cpreject" => (200, r#"{"success":true,"action":"reject"}"#),
            "cptimeout" => (200, r#"{"success":true,"action":"timeout"}"#),
            "cpnodevice" => (404, r#"{"success":false,"message":"no devices","errorCode":"NO_DEVICES"}"#),
            _ => (403, r#"{"success":false,"message":"device not approved","errorCode":"FORBIDDEN"}"#),
        };
        let reply = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
            answer.len()
        );
        let _ = stream.write_all(reply.as_bytes());
    }

    /// Every request body received, in order.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.seen.lock().expect("log").iter().map(|r| r["body"].clone()).collect()
    }

    /// The requests made for `user`, in order.
    pub fn requests_for(&self, user: &str) -> Vec<serde_json::Value> {
        let seen = self.seen.lock().expect("log");
        seen.iter().filter(|r| r["body"]["username"] == user).cloned().collect()
    }
}

/// Sites that already enrolled phones in the old push service keep them:
/// in compatibility mode LDAP binds are approved through its
/// `send-notification` contract, with Portcullis's own rules around it.
#[test]
fn compatibility_push_service_decides_ldap_binds() {
    let old = OldPushService::start();
    let url = format!("http://127.0.0.1:{}", old.port);
    let server = TestServer::start_with(&[
        ("PORTCULLIS_MFA__REQUIRED_GROUPS", "[\"cpusers\"]"),
        ("PORTCULLIS_MFA__LDAP_DEADLINE_SECS", "5"),
        ("PORTCULLIS_PUSH__WEBHOOK__URL", url.as_str()),
        ("PORTCULLIS_PUSH__WEBHOOK__MODE", "compat"),
        ("PORTCULLIS_PUSH__WEBHOOK__APIKEY", "old-service-api-key"),
        ("PORTCULLIS_PUSH__WEBHOOK__TIMEOUT_SECS", "3"),
    ]);
    server.cli(&["group", "add", "cpusers"], None);
    for user in ["cpapprove", "cpreject", "cptimeout", "cpnodevice", "cpforbidden", "cpsuspended"] {
        server.add_user(user, "Compat-pw-123");
        server.cli(&["group", "add-member", "cpusers", user], None);
    }
    server.add_user("cpfree", "Compat-pw-123");
    server.cli(&["user", "disable", "cpsuspended"], None);
    server.settle();
    let bind = |user: &str, password: &str| {
        bind_from(Ipv4Addr::new(127, 0, 2, 1), server.ldap_port, &user_dn(user), password, Duration::from_secs(15))
    };

    assert_eq!(bind("cpapprove", "Compat-pw-123"), Ok(LdapResultCode::Success), "approve lets the bind in");
    let sent = old.requests_for("cpapprove");
    assert_eq!(sent.len(), 1, "one notification per login: {sent:?}");
    assert_eq!(sent[0]["request"], "POST /send-notification HTTP/1.1");
    let body = &sent[0]["body"];
    assert_eq!(body["apikey"], "old-service-api-key");
    assert!(body["body"].as_str().unwrap_or_default().contains("SSH login to 127.0.2.1"), "{body}");
    let actions: Vec<&str> =
        body["actions"].as_array().expect("actions").iter().filter_map(|a| a["title"].as_str()).collect();
    assert_eq!(actions, ["Approve", "Reject"]);
    // Within the approval window the same host needs no new notification.
    assert_eq!(bind("cpapprove", "Compat-pw-123"), Ok(LdapResultCode::Success));
    assert_eq!(old.requests_for("cpapprove").len(), 1);

    for user in ["cpreject", "cptimeout", "cpnodevice", "cpforbidden"] {
        assert_eq!(bind(user, "Compat-pw-123"), Ok(LdapResultCode::InvalidCredentials), "{user} stays out");
        assert_eq!(old.requests_for(user).len(), 1, "{user}");
    }
    // A wrong password or a suspended user never reaches the phone.
    assert_eq!(bind("cpreject", "wrong-password"), Ok(LdapResultCode::InvalidCredentials));
    assert_eq!(old.requests_for("cpreject").len(), 1, "no push before the password verifies");
    assert_eq!(bind("cpsuspended", "Compat-pw-123"), Ok(LdapResultCode::InvalidCredentials));
    assert!(old.requests_for("cpsuspended").is_empty(), "suspended users get no push");
    // Users outside the required groups are not asked.
    assert_eq!(bind("cpfree", "Compat-pw-123"), Ok(LdapResultCode::Success));
    assert!(old.requests_for("cpfree").is_empty());
    assert!(!server.log().contains("old-service-api-key"), "the API key is never logged");
    assert_eq!(pushes(&server, "cpapprove"), 1, "audited as one challenge");
}

/// Without a push device, an SSH-only user appends a TOTP code to the
/// password in the same bind; the admin confirms the enrollment with a code
/// from the app, each code works once, and a bare password is refused.
#[test]
fn totp_code_appended_to_the_ldap_password() {
    let server = TestServer::start_with(&[("PORTCULLIS_MFA__REQUIRED_GROUPS", "[\"otpusers\"]")]);
    server.cli(&["group", "add", "otpusers"], None);
    server.add_user("otpuser", "Otp-pw-123");
    server.cli(&["group", "add-member", "otpusers", "otpuser"], None);
    let out = server.cli(&["user", "mfa", "totp", "otpuser"], None);
    let b32 = out.lines().find_map(|l| l.strip_prefix("secret: ")).expect("secret line").to_string();
    let secret = totp_rs::Secret::Encoded(b32).to_bytes().expect("base32 secret");
    let now = || {
        i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).unwrap()
    };
    let code = |at: i64| portcullis::mfa::totp::code_at(&secret, at).expect("code");
    server.settle();
    let bind = |password: &str| {
        bind_from(Ipv4Addr::new(127, 0, 3, 1), server.ldap_port, &user_dn("otpuser"), password, Duration::from_secs(10))
    };
    assert_eq!(bind("Otp-pw-123"), Ok(LdapResultCode::InvalidCredentials), "unconfirmed TOTP is no factor");

    let wrong = server.cli_output(&["user", "mfa", "totp-confirm", "otpuser", "000000"], None);
    assert!(!wrong.status.success() || code(now()) == "000000", "a wrong code does not confirm");
    server.cli(&["user", "mfa", "totp-confirm", "otpuser", &code(now() - 30)], None);
    assert!(server.cli(&["user", "mfa", "show", "otpuser"], None).contains("totp: yes"));

    let current = code(now());
    assert_eq!(bind("Otp-pw-123"), Ok(LdapResultCode::InvalidCredentials), "the password alone is not enough");
    assert_eq!(bind(&format!("Otp-pw-123{current}")), Ok(LdapResultCode::Success), "password + code");
    assert_eq!(bind(&format!("Otp-pw-123{current}")), Ok(LdapResultCode::InvalidCredentials), "a code works once");
    assert_eq!(bind(&format!("wrong-pw{}", code(now() + 30))), Ok(LdapResultCode::InvalidCredentials));
}

/// Generic webhook mode: each challenge is POSTed, signed, to an external
/// notification service with the recipient the device registered; the
/// service answers with a signed decision callback.
#[test]
fn generic_webhook_push_and_signed_decision_callback() {
    use portcullis::push::webhook::signature;
    const SECRET: &str = "webhook-shared-secret-0123456789";
    let hook = OldPushService::start();
    let url = format!("http://127.0.0.1:{}/hook", hook.port);
    let server = TestServer::start_with(&[
        ("PORTCULLIS_MFA__REQUIRED_GROUPS", "[\"whusers\"]"),
        ("PORTCULLIS_MFA__LDAP_DEADLINE_SECS", "10"),
        ("PORTCULLIS_PUSH__WEBHOOK__URL", url.as_str()),
        ("PORTCULLIS_PUSH__WEBHOOK__SECRET", SECRET),
    ]);
    server.cli(&["group", "add", "whusers"], None);
    for user in ["whuser", "whphone"] {
        server.add_user(user, "Webhook-pw-123");
        server.cli(&["group", "add-member", "whusers", user], None);
    }
    server.settle();
    // whuser's device is the external service (recipient "ext-user-7");
    // whphone has an ordinary device only.
    let enroll = |user: &str, push: serde_json::Value| {
        let out = server.cli(&["user", "mfa", "enroll-link", user], None);
        let link = out.lines().find_map(|l| l.strip_prefix("enrollment_url: ")).expect("link").to_string();
        let token = link.split_once('#').expect("fragment").1.to_string();
        let (key, _) = portcullis::mfa::device::DeviceKey::generate().expect("key");
        let body = serde_json::json!({ "token": token, "public_key": key.public_key(), "name": "hook", "push": push });
        let ca = server.ca_path();
        let out = std::process::Command::new("curl")
            .args(["-s", "--cacert", ca.to_str().expect("utf-8"), "-H", "content-type: application/json"])
            .args(["-d", &body.to_string(), "-w", "\n%{http_code}"])
            .arg(format!("{}/api/mfa/enroll", server.issuer()))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.ends_with("201"), "enrollment failed: {text}");
    };
    enroll("whuser", serde_json::json!({ "kind": "webhook", "address": "ext-user-7" }));
    enroll("whphone", serde_json::Value::Null);
    let decide = |body: &serde_json::Value, sig: &str| {
        let ca = server.ca_path();
        let out = std::process::Command::new("curl")
            .args(["-s", "--cacert", ca.to_str().expect("utf-8"), "-H", "content-type: application/json"])
            .args(["-H", &format!("x-portcullis-signature: {sig}"), "-d", &body.to_string(), "-w", "\n%{http_code}"])
            .arg(format!("{}/api/mfa/webhook/decision", server.issuer()))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string()
    };
    let bind = |user: &str| {
        bind_from(
            Ipv4Addr::new(127, 0, 4, 1),
            server.ldap_port,
            &user_dn(user),
            "Webhook-pw-123",
            Duration::from_secs(20),
        )
    };

    std::thread::scope(|s| {
        let login = s.spawn(|| bind("whuser"));
        let posted = crate::common::wait_until(Duration::from_secs(10), || !hook.bodies().is_empty());
        assert!(posted, "no webhook POST; log:\n{}", server.log());
        let pushed = hook.bodies().remove(0);
        assert_eq!(pushed["recipient"], "ext-user-7");
        assert_eq!(pushed["kind"], "challenge");
        assert!(pushed.get("username").is_none() && !pushed.to_string().contains("whuser"), "{pushed}");
        let id = pushed["challenge_id"].as_str().expect("id").to_string();
        let approve = serde_json::json!({ "challenge_id": id, "verdict": "approve" });
        let signed = signature(SECRET.as_bytes(), approve.to_string().as_bytes());
        assert_eq!(decide(&approve, "sha256=00"), "401", "bad signature");
        let forged = signature(b"not-the-webhook-secret-at-all!!", approve.to_string().as_bytes());
        assert_eq!(decide(&approve, &forged), "401", "another secret");
        assert_eq!(decide(&approve, &signed), "200");
        assert_eq!(login.join().expect("thread"), Ok(LdapResultCode::Success), "the callback approved the bind");
        assert_eq!(decide(&approve, &signed), "409", "a replayed callback changes nothing");
    });

    // The webhook cannot answer for users who did not enroll it.
    std::thread::scope(|s| {
        let login = s.spawn(|| bind("whphone"));
        let ok = crate::common::wait_until(Duration::from_secs(10), || pushes(&server, "whphone") == 1);
        assert!(ok, "no challenge for whphone");
        let out = server.cli(&["audit", "--limit", "100000"], None);
        let id = out
            .lines()
            .filter(|l| l.contains("mfa.challenge") && l.contains("whphone"))
            .find_map(|l| l.split("challenge ").nth(1).map(|r| r.trim_end_matches(')').to_string()))
            .expect("challenge id in the audit log");
        let approve = serde_json::json!({ "challenge_id": id, "verdict": "approve" });
        let signed = signature(SECRET.as_bytes(), approve.to_string().as_bytes());
        assert_eq!(decide(&approve, &signed), "401", "no webhook device for this user");
        assert_eq!(login.join().expect("thread"), Ok(LdapResultCode::InvalidCredentials), "unanswered: refused");
    });
}
