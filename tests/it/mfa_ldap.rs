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
