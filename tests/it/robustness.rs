//! Abuse of the LDAP transport: random bytes, truncated and oversized
//! messages, absurdly deep filters, thousands of idle connections and
//! slowloris clients. Each abusive connection must be closed (EOF, reset or
//! a Notice of Disconnection) while a well-behaved client keeps getting
//! answers and the server's memory stays bounded. Abusive traffic comes from
//! 127.0.0.2 so per-address limits and lockouts never touch the good client
//! on 127.0.0.1. Also property tests of the BER codec and filter evaluation.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code fails loudly")]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ldap3_proto::LdapCodec;
use ldap3_proto::proto::{
    LdapBindCred, LdapBindRequest, LdapDerefAliases, LdapFilter, LdapMsg, LdapOp, LdapResultCode, LdapSearchRequest,
    LdapSearchScope,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::codec::{Decoder, Encoder};

use crate::common::{BASE, TestServer, service_dn, user_dn, wait_until};

/// Notice of Disconnection (RFC 4511 §4.4.1).
const NOTICE_OID: &str = "1.3.6.1.4.1.1466.20036";
const SERVICE: &str = "robot";
const SERVICE_PW: &str = "robot-pw-123";
const USER: &str = "rbuser";
/// Where abusive connections come from.
const ABUSER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Where the well-behaved client connects from.
const GOOD: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Bound on every single wait of the well-behaved client.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
const MIB: u64 = 1024 * 1024;
/// Most the server's resident memory may grow during one abuse test.
const RSS_GROWTH_LIMIT: u64 = 64 * MIB;

// ---------------------------------------------------------------------------
// A tiny BER encoder, for messages ldap3_proto would refuse to build.

fn ber_len(len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![len as u8];
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let mut out = vec![0x80 | (bytes.len() - skip) as u8];
    out.extend_from_slice(&bytes[skip..]);
    out
}

fn header(tag: u8, len: usize) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(ber_len(len));
    out
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = header(tag, content.len());
    out.extend_from_slice(content);
    out
}

/// `(attr=value)`.
fn equality_ber(attr: &str, value: &str) -> Vec<u8> {
    let mut content = tlv(0x04, attr.as_bytes());
    content.extend(tlv(0x04, value.as_bytes()));
    tlv(0xA3, &content)
}

/// `inner` wrapped `depth` times in the constructed `tag` (O(n), no recursion).
fn nested(tag: u8, depth: usize, inner: &[u8]) -> Vec<u8> {
    let mut headers = Vec::with_capacity(depth);
    let mut len = inner.len();
    for _ in 0..depth {
        let h = header(tag, len);
        len += h.len();
        headers.push(h);
    }
    let mut out = Vec::with_capacity(len);
    for h in headers.iter().rev() {
        out.extend_from_slice(h);
    }
    out.extend_from_slice(inner);
    out
}

/// The SearchRequest fields before the filter: subtree search of BASE.
fn search_fields_before_filter() -> Vec<u8> {
    let mut body = tlv(0x04, BASE.as_bytes());
    body.extend(tlv(0x0A, &[2])); // scope: wholeSubtree
    body.extend(tlv(0x0A, &[0])); // derefAliases: never
    body.extend(tlv(0x02, &[0])); // sizeLimit
    body.extend(tlv(0x02, &[0])); // timeLimit
    body.extend(tlv(0x01, &[0])); // typesOnly: false
    body
}

/// A complete search request (msgid < 128) with a pre-encoded filter.
fn search_ber(msgid: u8, filter: &[u8]) -> Vec<u8> {
    let mut body = search_fields_before_filter();
    body.extend_from_slice(filter);
    body.extend(tlv(0x30, &[])); // attributes: none (all user attributes)
    let mut msg = tlv(0x02, &[msgid]);
    msg.extend(tlv(0x63, &body));
    tlv(0x30, &msg)
}

/// A search request whose `(uid=…)` value is `value_len` bytes long, split
/// into the bytes before the value and the bytes after it, so the value can
/// be streamed without holding it in memory.
fn huge_search_parts(value_len: usize) -> (Vec<u8>, Vec<u8>) {
    let attr = tlv(0x04, b"uid");
    let value_header = header(0x04, value_len);
    let eq_len = attr.len() + value_header.len() + value_len;
    let eq_header = header(0xA3, eq_len);
    let before = search_fields_before_filter();
    let after = tlv(0x30, &[]);
    let op_len = before.len() + eq_header.len() + eq_len + after.len();
    let op_header = header(0x63, op_len);
    let msgid = tlv(0x02, &[7]);
    let msg_len = msgid.len() + op_header.len() + op_len;
    let mut prefix = header(0x30, msg_len);
    for part in [&msgid, &op_header, &before, &eq_header, &attr, &value_header] {
        prefix.extend_from_slice(part);
    }
    (prefix, after)
}

// ---------------------------------------------------------------------------
// LDAP messages through ldap3_proto's codec.

fn encode(msg: LdapMsg) -> Vec<u8> {
    let mut buf = BytesMut::new();
    LdapCodec::default().encode(msg, &mut buf).expect("encode LDAP message");
    buf.to_vec()
}

fn bind_msg(msgid: i32, dn: &str, password: &str) -> LdapMsg {
    LdapMsg::new(
        msgid,
        LdapOp::BindRequest(LdapBindRequest {
            version: 3,
            dn: dn.to_string(),
            cred: LdapBindCred::Simple(password.to_string()),
        }),
    )
}

fn search_msg(msgid: i32, filter: LdapFilter) -> LdapMsg {
    LdapMsg::new(
        msgid,
        LdapOp::SearchRequest(LdapSearchRequest {
            base: BASE.to_string(),
            scope: LdapSearchScope::Subtree,
            aliases: LdapDerefAliases::Never,
            sizelimit: 0,
            timelimit: 0,
            typesonly: false,
            filter,
            attrs: Vec::new(),
        }),
    )
}

fn uid_filter(name: &str) -> LdapFilter {
    LdapFilter::Equality("uid".into(), name.into())
}

fn is_notice(msg: &LdapMsg) -> bool {
    matches!(&msg.op, LdapOp::ExtendedResponse(r) if r.name.as_deref() == Some(NOTICE_OID))
}

// ---------------------------------------------------------------------------
// A blocking client connection.

/// How a connection ended, seen from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// A Notice of Disconnection arrived before the close.
    Notice,
    /// Orderly close without a notice.
    Eof,
    /// Connection reset (the server closed with our bytes still unread).
    Reset,
}

/// Result of one read.
enum Fill {
    Data,
    Eof,
    Reset,
    Timeout,
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    codec: LdapCodec,
}

/// A TCP connection to the server's plain LDAP port from `src`.
fn connect_from(src: Ipv4Addr, port: u16) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    sock.bind(&SocketAddr::from((src, 0)).into())?;
    sock.connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into(), Duration::from_secs(5))?;
    let stream: TcpStream = sock.into();
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Conn {
    fn open(src: Ipv4Addr, port: u16) -> io::Result<Conn> {
        let stream = connect_from(src, port)?;
        // Writes never block a test forever, even if the server stops reading.
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(Conn { stream, buf: BytesMut::new(), codec: LdapCodec::new(Some(64 * MIB as usize), None) })
    }

    fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn send(&mut self, msg: LdapMsg) -> io::Result<()> {
        self.send_raw(&encode(msg))
    }

    /// One read, waiting at most until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Fill {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Fill::Timeout;
        }
        if self.stream.set_read_timeout(Some(left)).is_err() {
            return Fill::Reset;
        }
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Fill::Eof,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Fill::Data
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                if Instant::now() >= deadline {
                    Fill::Timeout
                } else {
                    Fill::Data
                }
            }
            Err(_) => Fill::Reset,
        }
    }

    /// The next message from the server.
    fn recv(&mut self, limit: Duration) -> Result<LdapMsg, String> {
        let deadline = Instant::now() + limit;
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {}
                Err(e) => return Err(format!("undecodable response: {e}")),
            }
            match self.fill(deadline) {
                Fill::Data => {}
                Fill::Eof => return Err("connection closed (EOF)".into()),
                Fill::Reset => return Err("connection reset".into()),
                Fill::Timeout => return Err(format!("no response within {limit:?}")),
            }
        }
    }

    /// Waits up to `limit` for the server to close; `None` if still open.
    /// Messages that arrive meanwhile are kept for [`Conn::saw_notice`].
    fn wait_closed(&mut self, limit: Duration) -> Option<Closed> {
        let deadline = Instant::now() + limit;
        let end = loop {
            match self.fill(deadline) {
                Fill::Data => {}
                Fill::Eof => break Closed::Eof,
                Fill::Reset => break Closed::Reset,
                Fill::Timeout => return None,
            }
        };
        Some(if self.saw_notice() { Closed::Notice } else { end })
    }

    /// Whether a Notice of Disconnection is among the buffered messages.
    fn saw_notice(&mut self) -> bool {
        let mut seen = false;
        while let Ok(Some(m)) = self.codec.decode(&mut self.buf) {
            seen |= is_notice(&m);
        }
        seen
    }

    /// Whether the server has closed the connection, without waiting.
    fn closed_now(&mut self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return true;
        }
        let mut chunk = [0u8; 4096];
        let closed = loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break e.kind() != ErrorKind::WouldBlock,
            }
        };
        closed || self.stream.set_nonblocking(false).is_err()
    }

    /// Binds as the test service account and asserts success.
    fn bind_service(&mut self) -> Result<(), String> {
        self.send(bind_msg(1, &service_dn(SERVICE), SERVICE_PW)).map_err(|e| format!("send bind: {e}"))?;
        match self.recv(OP_TIMEOUT)? {
            LdapMsg { op: LdapOp::BindResponse(r), .. } if r.res.code == LdapResultCode::Success => Ok(()),
            other => Err(format!("bind failed: {other:?}")),
        }
    }

    /// Reads one search's results: the entry DNs, or the failing result.
    fn search_results(&mut self) -> Result<Vec<String>, String> {
        let mut dns = Vec::new();
        loop {
            match self.recv(OP_TIMEOUT)?.op {
                LdapOp::SearchResultEntry(e) => dns.push(e.dn.to_ascii_lowercase()),
                LdapOp::SearchResultDone(r) if r.code == LdapResultCode::Success => return Ok(dns),
                other => return Err(format!("search failed: {other:?}")),
            }
        }
    }
}

/// The well-behaved client: connect, bind as a service account, search
/// `(uid=USER)` and check the one entry comes back. Returns how long it took.
fn good_client(port: u16, src: Ipv4Addr) -> Result<Duration, String> {
    let start = Instant::now();
    let mut c = Conn::open(src, port).map_err(|e| format!("connect from {src}: {e}"))?;
    c.bind_service()?;
    c.send(search_msg(2, uid_filter(USER))).map_err(|e| format!("send search: {e}"))?;
    let dns = c.search_results()?;
    if dns != [user_dn(USER).to_ascii_lowercase()] {
        return Err(format!("search for uid={USER} returned {dns:?}"));
    }
    let _ = c.send(LdapMsg::new(3, LdapOp::UnbindRequest));
    Ok(start.elapsed())
}

/// Runs [`good_client`] once and fails the test if it does not work.
fn assert_good(server: &TestServer, when: &str) {
    if let Err(e) = good_client(server.ldap_port, GOOD) {
        panic!("well-behaved client failed {when}: {e}\nserver log (tail):\n{}", log_tail(server));
    }
}

fn log_tail(server: &TestServer) -> String {
    let log = server.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The well-behaved client in a loop on its own thread.
struct GoodLoop {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    handle: JoinHandle<LoopStats>,
}

#[derive(Debug, Default)]
struct LoopStats {
    ok: usize,
    errors: Vec<String>,
    slowest: Duration,
}

impl GoodLoop {
    fn start(port: u16) -> GoodLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let (flag, done) = (Arc::clone(&stop), Arc::clone(&rounds));
        let handle = thread::spawn(move || {
            let mut stats = LoopStats::default();
            let give_up = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::Relaxed) && Instant::now() < give_up && stats.errors.len() < 20 {
                match good_client(port, GOOD) {
                    Ok(took) => {
                        stats.ok += 1;
                        stats.slowest = stats.slowest.max(took);
                    }
                    Err(e) => stats.errors.push(e),
                }
                done.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(25));
            }
            stats
        });
        GoodLoop { stop, rounds, handle }
    }

    /// Stops the loop (after at least one round) and asserts every round worked.
    fn finish(self, server: &TestServer, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.rounds.load(Ordering::Relaxed) == 0 && !self.handle.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        self.stop.store(true, Ordering::Relaxed);
        let stats = self.handle.join().expect("good client thread");
        eprintln!("[{what}] good client: {} rounds ok, slowest {:?}", stats.ok, stats.slowest);
        assert!(
            stats.errors.is_empty(),
            "[{what}] well-behaved client failed during the abuse: {:?}\nserver log (tail):\n{}",
            stats.errors,
            log_tail(server)
        );
        assert!(stats.ok > 0, "[{what}] well-behaved client never completed a round");
    }
}

// ---------------------------------------------------------------------------
// Server memory.

/// A `kB` field of /proc/PID/status, in bytes; `None` once the process is gone.
fn try_proc_status(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    line.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|kib| kib * 1024)
}

/// A `kB` field of /proc/PID/status, in bytes.
fn proc_status(pid: u32, field: &str) -> u64 {
    try_proc_status(pid, field).unwrap_or_else(|| panic!("server process {pid} is gone (no {field} in its status)"))
}

/// Samples the server's VmRSS every 20 ms and keeps the maximum.
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let mut max = 0;
            let give_up = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::Relaxed) && Instant::now() < give_up {
                match try_proc_status(pid, "VmRSS") {
                    Some(rss) => max = max.max(rss),
                    None => break,
                }
                thread::sleep(Duration::from_millis(20));
            }
            max
        });
        RssSampler { stop, handle }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("RSS sampler thread")
    }
}

/// Asserts the server's peak RSS grew less than [`RSS_GROWTH_LIMIT`].
fn assert_rss_bounded(server: &TestServer, what: &str, before: u64, peak: u64) {
    let after = proc_status(server.pid(), "VmRSS");
    let peak = peak.max(after);
    eprintln!(
        "[{what}] server VmRSS: before {} KiB, peak {} KiB, after {} KiB",
        before / 1024,
        peak / 1024,
        after / 1024
    );
    assert!(
        peak.saturating_sub(before) < RSS_GROWTH_LIMIT,
        "[{what}] server RSS grew from {} MiB to {} MiB (limit +{} MiB)",
        before / MIB,
        peak / MIB,
        RSS_GROWTH_LIMIT / MIB
    );
}

// ---------------------------------------------------------------------------
// Setup.

/// A server with a service account and a user; `extra` adds settings.
fn setup(extra: &[(&str, &str)]) -> TestServer {
    let mut env = vec![
        ("PORTCULLIS_LDAP__MAX_CONNECTIONS_PER_IP", "500"),
        // At most one argon2 block (19 MiB) live at a time, not one per core,
        // so the good client's binds stay a small part of the RSS budget.
        ("PORTCULLIS_AUTH__HASH_CONCURRENCY", "1"),
    ];
    env.extend_from_slice(extra);
    let server = TestServer::start_with(&env);
    server.add_service(SERVICE, SERVICE_PW);
    server.add_user(USER, "user-pw-123");
    // The server picks up CLI changes by polling; wait from a third address
    // so binds that fail meanwhile never count against the good client's.
    let port = server.ldap_port;
    let visible = wait_until(Duration::from_secs(15), || good_client(port, Ipv4Addr::new(127, 0, 0, 3)).is_ok());
    assert!(visible, "the new accounts never became usable over LDAP\nlog:\n{}", log_tail(&server));
    assert_good(&server, "before the abuse");
    server
}

/// Some valid requests to mutate (none binds with a real account's DN, so
/// mutations cannot lock an account out).
fn seed_messages() -> Vec<Vec<u8>> {
    vec![
        encode(bind_msg(1, "", "")),
        encode(search_msg(2, uid_filter(USER))),
        encode(search_msg(
            3,
            LdapFilter::And(vec![
                LdapFilter::Equality("objectClass".into(), "posixAccount".into()),
                LdapFilter::Not(Box::new(LdapFilter::Present("sudoHost".into()))),
                LdapFilter::Substring(
                    "cn".into(),
                    ldap3_proto::proto::LdapSubstringFilter {
                        initial: Some("a".into()),
                        any: vec!["b".into()],
                        final_: Some("c".into()),
                    },
                ),
            ]),
        )),
        search_ber(4, &nested(0xA1, 3, &equality_ber("uidNumber", "10001"))),
        encode(LdapMsg::new(5, LdapOp::UnbindRequest)),
    ]
}

// ---------------------------------------------------------------------------
// The abuse tests.

#[test]
fn hand_rolled_ber_matches_ldap3_proto() {
    let mut codec = LdapCodec::default();
    let eq = equality_ber("uid", USER);
    let mut buf = BytesMut::from(&search_ber(9, &nested(0xA2, 2, &eq))[..]);
    let msg = codec.decode(&mut buf).expect("decodes").expect("complete");
    let LdapOp::SearchRequest(req) = msg.op else { panic!("not a search: {msg:?}") };
    let inner = Box::new(LdapFilter::Not(Box::new(uid_filter(USER))));
    assert_eq!(req.filter, LdapFilter::Not(inner));

    let (prefix, suffix) = huge_search_parts(300);
    let mut bytes = prefix;
    bytes.extend(std::iter::repeat_n(b'a', 300));
    bytes.extend(suffix);
    let mut buf = BytesMut::from(&bytes[..]);
    let msg = codec.decode(&mut buf).expect("decodes").expect("complete");
    let LdapOp::SearchRequest(req) = msg.op else { panic!("not a search: {msg:?}") };
    assert_eq!(req.filter, LdapFilter::Equality("uid".into(), "a".repeat(300)));
    assert!(buf.is_empty());
}

/// A few hundred connections of random bytes, garbage in a valid frame, and
/// mutated valid requests: each one is closed, nobody else notices.
#[test]
fn random_bytes_close_only_their_connection() {
    let server = setup(&[("PORTCULLIS_LDAP__READ_TIMEOUT_SECS", "2")]);
    let port = server.ldap_port;
    let before = proc_status(server.pid(), "VmRSS");
    let sampler = RssSampler::start(server.pid());
    let good = GoodLoop::start(port);
    let workers: Vec<JoinHandle<(Vec<String>, [usize; 4])>> = (0..3u64)
        .map(|t| {
            thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(0x5EED_0000 + t);
                let seeds = seed_messages();
                let mut failures = Vec::new();
                // Counts of: notice, EOF, reset, dropped by us.
                let mut counts = [0usize; 4];
                for i in 0..100 {
                    let bytes: Vec<u8> = match i % 3 {
                        0 => {
                            let n = rng.gen_range(1..4096);
                            (0..n).map(|_| rng.r#gen::<u8>()).collect()
                        }
                        1 => {
                            let n = rng.gen_range(0..2048);
                            let inner: Vec<u8> = (0..n).map(|_| rng.r#gen::<u8>()).collect();
                            tlv(0x30, &inner)
                        }
                        _ => {
                            let mut m = seeds[rng.gen_range(0..seeds.len())].clone();
                            for _ in 0..rng.gen_range(1..5) {
                                let at = rng.gen_range(0..m.len());
                                m[at] = rng.r#gen();
                            }
                            m
                        }
                    };
                    let mut c = match Conn::open(ABUSER, port) {
                        Ok(c) => c,
                        Err(e) => {
                            failures.push(format!("connect #{i}: {e}"));
                            continue;
                        }
                    };
                    // The server may close mid-write; that is fine.
                    let _ = c.send_raw(&bytes);
                    if rng.gen_bool(0.2) {
                        counts[3] += 1;
                        continue;
                    }
                    let _ = c.stream.shutdown(Shutdown::Write);
                    match c.wait_closed(Duration::from_secs(10)) {
                        Some(Closed::Notice) => counts[0] += 1,
                        Some(Closed::Eof) => counts[1] += 1,
                        Some(Closed::Reset) => counts[2] += 1,
                        None => failures.push(format!(
                            "worker {t} #{i}: still open 10 s after sending {} bytes {:02x?}… and shutting down",
                            bytes.len(),
                            &bytes[..bytes.len().min(16)]
                        )),
                    }
                }
                (failures, counts)
            })
        })
        .collect();
    let mut failures = Vec::new();
    let mut totals = [0usize; 4];
    for w in workers {
        let (f, counts) = w.join().expect("worker thread");
        failures.extend(f);
        for (t, c) in totals.iter_mut().zip(counts) {
            *t += c;
        }
    }
    eprintln!(
        "[random bytes] notice {}, EOF {}, reset {}, dropped by client {}",
        totals[0], totals[1], totals[2], totals[3]
    );
    good.finish(&server, "random bytes");
    assert!(failures.is_empty(), "abusive connections not closed: {failures:#?}\nlog:\n{}", log_tail(&server));
    assert_good(&server, "after the random bytes");
    assert_rss_bounded(&server, "random bytes", before, sampler.finish());
}

/// A valid bind and a valid search, cut at every prefix length: closed by
/// the client, dropped, or left idle. Idle halves are cut off at the read
/// timeout with a notice; the good client works while they hang.
#[test]
fn truncated_messages_never_hang_the_server() {
    let server = setup(&[("PORTCULLIS_LDAP__READ_TIMEOUT_SECS", "1")]);
    let port = server.ldap_port;
    let good = GoodLoop::start(port);
    let messages = [encode(bind_msg(1, &service_dn(SERVICE), SERVICE_PW)), encode(search_msg(2, uid_filter(USER)))];
    let mut failures = Vec::new();
    let mut idle = Vec::new();
    for (m, msg) in messages.iter().enumerate() {
        for cut in 1..msg.len() {
            let part = &msg[..cut];
            // Client closes its side after the fragment.
            let mut c = Conn::open(ABUSER, port).expect("connect");
            c.send_raw(part).expect("send fragment");
            c.stream.shutdown(Shutdown::Write).expect("shutdown");
            if c.wait_closed(Duration::from_secs(5)).is_none() {
                failures.push(format!("message {m} cut at {cut}/{}: still open 5 s after client EOF", msg.len()));
            }
            // Client vanishes after the fragment.
            let mut c = Conn::open(ABUSER, port).expect("connect");
            c.send_raw(part).expect("send fragment");
            drop(c);
            // Client stalls after the fragment.
            let mut c = Conn::open(ABUSER, port).expect("connect");
            c.send_raw(part).expect("send fragment");
            idle.push((m, cut, c, Instant::now()));
        }
    }
    eprintln!("[truncated] {} stalled fragments open", idle.len());
    assert_good(&server, "while truncated messages stall");
    for (m, cut, mut c, sent) in idle {
        match c.wait_closed(Duration::from_secs(6)) {
            Some(Closed::Notice) => {
                let took = sent.elapsed();
                if took > Duration::from_secs(6) {
                    failures.push(format!("message {m} cut at {cut}: closed only after {took:?}"));
                }
            }
            Some(other) => failures.push(format!("message {m} cut at {cut}: closed with {other:?}, no notice")),
            None => failures.push(format!("message {m} cut at {cut}: still open long after the read timeout")),
        }
    }
    good.finish(&server, "truncated");
    assert!(failures.is_empty(), "truncated messages mishandled: {failures:#?}\nlog:\n{}", log_tail(&server));
    assert_good(&server, "after truncated messages");
}

/// Bytes the socket took, how the connection ended, and when.
type Streamed = Result<(usize, Closed, Duration), String>;

/// 10 MiB messages, both a real search with a 10 MiB value and a header
/// claiming 10 MiB followed by random bytes, on concurrent connections: all
/// closed, memory bounded by the message cap.
#[test]
fn ten_mib_messages_are_refused_with_bounded_memory() {
    const SIZE: usize = 10 * 1024 * 1024;
    let server = setup(&[]);
    let port = server.ldap_port;
    let before = proc_status(server.pid(), "VmRSS");
    let sampler = RssSampler::start(server.pid());
    let good = GoodLoop::start(port);
    // Six connections at once, five times over.
    let workers: Vec<JoinHandle<Streamed>> = (0..30u64)
        .map(|t| {
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(100 * (t / 6)));
                let start = Instant::now();
                let mut rng = StdRng::seed_from_u64(0xB16 + t);
                let mut c = Conn::open(ABUSER, port).map_err(|e| format!("connect: {e}"))?;
                let (prefix, suffix) = if t % 2 == 0 {
                    huge_search_parts(SIZE)
                } else {
                    // SEQUENCE claiming exactly 10 MiB, then noise.
                    (vec![0x30, 0x84, 0x00, 0xA0, 0x00, 0x00], Vec::new())
                };
                let mut sent = 0;
                let mut chunk = vec![b'a'; 64 * 1024];
                let mut stream_ok = c.send_raw(&prefix).is_ok();
                while stream_ok && sent < SIZE && start.elapsed() < Duration::from_secs(20) {
                    if t % 2 == 1 {
                        rng.fill(&mut chunk[..]);
                    }
                    let n = chunk.len().min(SIZE - sent);
                    stream_ok = c.send_raw(&chunk[..n]).is_ok();
                    if stream_ok {
                        sent += n;
                    }
                }
                if stream_ok {
                    let _ = c.send_raw(&suffix);
                }
                match c.wait_closed(Duration::from_secs(10)) {
                    Some(closed) => Ok((sent, closed, start.elapsed())),
                    None => Err(format!("connection {t} still open after streaming {sent} bytes")),
                }
            })
        })
        .collect();
    let results: Vec<_> = workers.into_iter().map(|w| w.join().expect("worker thread")).collect();
    eprintln!("[10 MiB] (bytes accepted by the socket, close, time): {:?}", &results[..6]);
    good.finish(&server, "10 MiB");
    for r in &results {
        assert!(r.is_ok(), "oversized message not refused: {r:?}\nlog:\n{}", log_tail(&server));
    }
    assert_good(&server, "after 10 MiB messages");
    assert_rss_bounded(&server, "10 MiB", before, sampler.finish());
}

/// Filters nested 10,000 deep (NOT, AND, OR) and one 10,000 wide: the
/// connection is closed or gets an error; a filter just inside the BER depth
/// cap still works.
#[test]
fn deep_and_wide_filters_are_refused() {
    let server = setup(&[]);
    let port = server.ldap_port;
    let good = GoodLoop::start(port);
    let eq = equality_ber("uid", USER);
    let mut failures = Vec::new();
    let wide: Vec<u8> = (0..10_000).flat_map(|i| equality_ber("uid", &format!("u{i}"))).collect();
    let cases = [
        ("NOT x10000", nested(0xA2, 10_000, &eq)),
        ("AND x10000", nested(0xA0, 10_000, &eq)),
        ("OR x10000", nested(0xA1, 10_000, &eq)),
        ("NOT x100", nested(0xA2, 100, &eq)),
        ("AND of 10000", tlv(0xA0, &wide)),
    ];
    for (what, filter) in &cases {
        let mut c = Conn::open(ABUSER, port).expect("connect");
        c.bind_service().unwrap_or_else(|e| panic!("{what}: {e}"));
        let msg = search_ber(2, filter);
        let started = Instant::now();
        if let Err(e) = c.send_raw(&msg) {
            failures.push(format!("{what}: could not send {} bytes: {e}", msg.len()));
            continue;
        }
        // Either the connection ends or the search fails; never a success.
        let outcome = match c.recv(OP_TIMEOUT) {
            Ok(m) if is_notice(&m) => "closed with a notice".to_string(),
            Ok(LdapMsg { op: LdapOp::SearchResultDone(r), .. }) if r.code != LdapResultCode::Success => {
                format!("search error {:?}", r.code)
            }
            Ok(other) => {
                failures.push(format!("{what}: unexpected answer {other:?}"));
                continue;
            }
            Err(e) if e.contains("no response") => {
                failures.push(format!("{what}: no answer and not closed within {OP_TIMEOUT:?}"));
                continue;
            }
            Err(e) => e,
        };
        eprintln!("[deep filters] {what} ({} bytes): {outcome} after {:?}", msg.len(), started.elapsed());
        assert_good(&server, &format!("after a {what} filter"));
    }
    // 50 NOTs (even, so the filter still means uid=USER) fit the depth cap.
    let mut c = Conn::open(ABUSER, port).expect("connect");
    c.bind_service().expect("bind");
    c.send_raw(&search_ber(2, &nested(0xA2, 50, &eq))).expect("send");
    match c.search_results() {
        Ok(dns) if dns == [user_dn(USER).to_ascii_lowercase()] => {}
        other => failures.push(format!("50 nested NOTs (inside the depth cap) answered {other:?}")),
    }
    good.finish(&server, "deep filters");
    assert!(failures.is_empty(), "deep filters mishandled: {failures:#?}\nlog:\n{}", log_tail(&server));
}

/// One opener's connections, connect errors, and connects slower than 200 ms.
type Opened = (Vec<Conn>, Vec<String>, usize);

/// Raises the soft open-files limit to at least `want` or fails with a clear message.
fn raise_nofile(want: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let current = lim.current.unwrap_or(u64::MAX);
    if current < want {
        let target = want.max(65_536).min(lim.maximum.unwrap_or(u64::MAX));
        let _ = setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: lim.maximum });
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    assert!(
        now >= want,
        "this test needs {want} open files but RLIMIT_NOFILE is {now} (hard limit {:?}); raise it, e.g. `ulimit -n 65536`",
        lim.maximum
    );
}

/// 10,000 idle connections from one address with a per-address limit of
/// 500: at most 500 are held, the rest are closed promptly, the good client
/// on another address keeps working, memory stays bounded, and the slots
/// come back when the idle connections go.
#[test]
fn ten_thousand_idle_connections_are_capped_per_address() {
    const TOTAL: usize = 10_000;
    const PER_IP: usize = 500;
    raise_nofile(TOTAL as u64 + 1024);
    let server = setup(&[]);
    let port = server.ldap_port;
    let before = proc_status(server.pid(), "VmRSS");
    let sampler = RssSampler::start(server.pid());
    let good = GoodLoop::start(port);

    // Four openers: a stray SYN retransmission (1 s) stalls only one of them.
    const OPENERS: usize = 4;
    let started = Instant::now();
    let openers: Vec<JoinHandle<Opened>> = (0..OPENERS)
        .map(|_| {
            thread::spawn(move || {
                let mut conns = Vec::with_capacity(TOTAL / OPENERS);
                let mut errors = Vec::new();
                let mut slow = 0;
                for i in 0..TOTAL / OPENERS {
                    let t = Instant::now();
                    match Conn::open(ABUSER, port) {
                        Ok(c) => conns.push(c),
                        Err(e) => errors.push(format!("#{i}: {e}")),
                    }
                    if t.elapsed() > Duration::from_millis(200) {
                        slow += 1;
                    }
                    // Pace: once past the limit, let the server reject each
                    // batch before opening the next so the backlog never fills.
                    if (i + 1) % 100 == 0 && i >= PER_IP / OPENERS {
                        if let Some(last) = conns.last_mut() {
                            let _ = last.wait_closed(Duration::from_secs(2));
                        }
                    }
                    if errors.len() > 5 || started.elapsed() > Duration::from_secs(45) {
                        errors.push(format!("gave up after {i} connections in {:?}", started.elapsed()));
                        break;
                    }
                }
                (conns, errors, slow)
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(TOTAL);
    let mut connect_errors = Vec::new();
    let mut slow_connects = 0;
    for o in openers {
        let (c, e, slow) = o.join().expect("opener thread");
        conns.extend(c);
        connect_errors.extend(e);
        slow_connects += slow;
    }
    let connected = started.elapsed();
    assert!(connect_errors.is_empty(), "connects failed: {connect_errors:?}");

    // Connections beyond the limit must see EOF promptly.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut open: Vec<Conn> = conns;
    loop {
        open.retain_mut(|c| !c.closed_now());
        if open.len() <= PER_IP || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let settled = started.elapsed();
    // Nothing else should close: the survivors are legitimately held.
    thread::sleep(Duration::from_millis(300));
    open.retain_mut(|c| !c.closed_now());
    let held = open.len();
    eprintln!(
        "[10k idle] opened {TOTAL} in {connected:?} ({slow_connects} connects took over 200 ms); {} closed by \
         the server, {held} held (limit {PER_IP}); settled after {settled:?}",
        TOTAL - held
    );
    assert!(held <= PER_IP, "{held} connections from {ABUSER} held open, more than the per-address limit {PER_IP}");
    assert!(held > 0, "no connection from {ABUSER} was served at all");

    // At the limit: the good client on 127.0.0.1 works, a new one from 127.0.0.2 is turned away.
    assert_good(&server, "with 127.0.0.2 at its connection limit");
    let mut extra = Conn::open(ABUSER, port).expect("connect");
    assert!(
        extra.wait_closed(Duration::from_secs(2)).is_some(),
        "a connection beyond the per-address limit was not closed within 2 s"
    );
    good.finish(&server, "10k idle");
    assert_rss_bounded(&server, "10k idle", before, sampler.finish());

    // Slots come back once the idle connections go.
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = Err(String::new());
    while Instant::now() < deadline {
        last = good_client(port, ABUSER);
        if last.is_ok() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    if let Err(e) = last {
        panic!("127.0.0.2 still refused 10 s after its idle connections closed: {e}");
    }
}

/// How a drip-fed connection ended, after how many bytes, and when.
type Dripped = Result<(Closed, usize, Duration), String>;

/// Half a message then silence, or one byte every 200 ms: cut off at the
/// one-second read timeout with a notice. A silent connection is not a
/// slowloris: it lasts until the idle timeout.
#[test]
fn slowloris_is_cut_off_at_the_read_timeout() {
    let server = setup(&[("PORTCULLIS_LDAP__READ_TIMEOUT_SECS", "1"), ("PORTCULLIS_LDAP__IDLE_TIMEOUT_SECS", "3")]);
    let port = server.ldap_port;
    let bind = encode(bind_msg(1, &service_dn(SERVICE), SERVICE_PW));
    let good = GoodLoop::start(port);
    let start = Instant::now();
    let mut stallers: Vec<Conn> = (0..20)
        .map(|_| {
            let mut c = Conn::open(ABUSER, port).expect("connect");
            c.send_raw(&bind[..bind.len() / 2]).expect("send half");
            c
        })
        .collect();
    let mut silent = Conn::open(ABUSER, port).expect("connect");
    let drippers: Vec<JoinHandle<Dripped>> = (0..5)
        .map(|_| {
            let bind = bind.clone();
            thread::spawn(move || {
                let begin = Instant::now();
                let mut c = Conn::open(ABUSER, port).map_err(|e| e.to_string())?;
                for (i, b) in bind.iter().enumerate() {
                    if c.send_raw(&[*b]).is_err() {
                        let closed = c.wait_closed(Duration::from_secs(2)).unwrap_or(Closed::Reset);
                        return Ok((closed, i, begin.elapsed()));
                    }
                    if let Some(closed) = c.wait_closed(Duration::from_millis(200)) {
                        return Ok((closed, i + 1, begin.elapsed()));
                    }
                    if begin.elapsed() > Duration::from_secs(8) {
                        break;
                    }
                }
                Err(format!("drip-fed connection not cut off after {:?}", begin.elapsed()))
            })
        })
        .collect();

    thread::sleep(Duration::from_millis(1700));
    assert!(!silent.closed_now(), "a silent connection was closed before the idle timeout (after the read timeout)");
    assert_good(&server, "while slowloris connections stall");

    let mut failures = Vec::new();
    for (i, c) in stallers.iter_mut().enumerate() {
        match c.wait_closed(Duration::from_secs(5)) {
            Some(Closed::Notice) => {}
            other => failures.push(format!("staller {i}: {other:?} (want a notice)")),
        }
    }
    let stalled_for = start.elapsed();
    for d in drippers {
        match d.join().expect("dripper thread") {
            Ok((Closed::Notice, bytes, took)) if took < Duration::from_secs(4) => {
                eprintln!("[slowloris] dripper cut off after {bytes} of {} bytes, {took:?}", bind.len());
            }
            other => failures.push(format!("dripper: {other:?} (want a notice within 4 s)")),
        }
    }
    match silent.wait_closed(Duration::from_secs(8)) {
        Some(_) => {
            let took = start.elapsed();
            eprintln!("[slowloris] silent connection closed after {took:?} (idle timeout 3 s)");
            assert!(
                took >= Duration::from_millis(2500),
                "silent connection closed after {took:?}, before the idle timeout"
            );
        }
        None => failures.push("silent connection outlived the 3 s idle timeout by 5 s".into()),
    }
    eprintln!("[slowloris] stallers all checked {stalled_for:?} after start");
    good.finish(&server, "slowloris");
    assert!(failures.is_empty(), "slowloris mishandled: {failures:#?}\nlog:\n{}", log_tail(&server));
    assert_good(&server, "after slowloris");
}

// ---------------------------------------------------------------------------
// Property tests without a server.

mod props {
    use bytes::BytesMut;
    use ldap3_proto::LdapCodec;
    use ldap3_proto::parse_ldap_filter_str;
    use portcullis::directory::Snapshot;
    use portcullis::ldap::filter::{Tri, candidates, eval, node_count};
    use portcullis::ldap::ops::Op;
    use portcullis::model::{Group, ServiceAccount, User};
    use portcullis::store::DirectoryData;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use proptest::test_runner::Config;
    use tokio_util::codec::Decoder;

    fn config() -> Config {
        Config { cases: 256, failure_persistence: None, ..Config::default() }
    }

    /// Decodes everything in `bytes` the way the server's framing does,
    /// classifying each message as the session would.
    fn decode_all(bytes: &[u8]) {
        let codecs =
            [LdapCodec::default(), LdapCodec::new(Some(256 * 1024), Some(64)), LdapCodec::new(Some(1024), Some(4))];
        for mut codec in codecs {
            let mut buf = BytesMut::from(bytes);
            for _ in 0..64 {
                match codec.decode(&mut buf) {
                    Ok(Some(msg)) => {
                        let _ = Op::parse(&msg);
                    }
                    Ok(None) => {
                        let _ = codec.decode_eof(&mut buf);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
    }

    fn snapshot() -> Snapshot {
        let user = |id: &str, name: &str, uid: i64, email: Option<&str>| User {
            id: id.into(),
            name: name.into(),
            uid_number: uid,
            gid_number: 20000,
            display_name: format!("{name} Example"),
            email: email.map(String::from),
            login_shell: "/bin/bash".into(),
            home_directory: format!("/home/{name}"),
            ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample user@host".into()],
            password_hash: None,
            disabled: false,
            created_at: 1_795_000_000,
            updated_at: 1_795_000_100,
        };
        let data = DirectoryData {
            generation: 1,
            users: vec![
                user("u1", "alice", 10001, Some("Alice@Example.org")),
                user("u2", "bob", 10002, None),
                user("u3", "Ünïcødé", 10003, Some("x@y")),
            ],
            groups: vec![Group {
                id: "g1".into(),
                name: "devs".into(),
                gid_number: 20001,
                description: "Developers (all)".into(),
                member_ids: vec!["u1".into(), "u3".into()],
                created_at: 1,
                updated_at: 2,
            }],
            containers: vec![],
            service_accounts: vec![ServiceAccount {
                id: "s1".into(),
                name: "sssd".into(),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".into(),
                disabled: false,
                created_at: 1,
                updated_at: 2,
            }],
        };
        Snapshot::build(&data, "dc=example,dc=org")
    }

    fn attr() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "uid",
                "UID",
                "cn",
                "objectClass",
                "uidNumber",
                "gidNumber",
                "member",
                "memberUid",
                "mail",
                "modifyTimestamp",
                "createTimestamp",
                "entryUUID",
                "homeDirectory",
                "sshPublicKey",
                "ou",
                "dc",
                "sudoHost",
                "2.5.4.3",
                "fooBar",
            ])
            .prop_map(String::from),
            "[a-zA-Z][a-zA-Z0-9;.-]{0,12}",
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9 .,=@*-]{0,20}",
            "(\\\\[0-9a-fA-F]{2}){1,4}",
            "-?[0-9]{1,25}",
            "[0-9]{14}(\\.[0-9]{1,3})?Z",
            "uid=[a-z]{1,6}, ?ou=[Pp]eople,dc=example,dc=org",
            "[^()\\\\]{0,12}",
        ]
    }

    fn leaf() -> impl Strategy<Value = String> {
        let rules =
            prop::sample::select(vec!["caseExactMatch", "2.5.13.2", "integerMatch", "1.2.3.4", "caseIgnoreMatch"]);
        prop_oneof![
            (attr(), prop::sample::select(vec!["=", ">=", "<=", "~="]), value())
                .prop_map(|(a, op, v)| format!("({a}{op}{v})")),
            attr().prop_map(|a| format!("({a}=*)")),
            (attr(), rules.clone(), value()).prop_map(|(a, r, v)| format!("({a}:{r}:={v})")),
            (attr(), rules.clone(), value()).prop_map(|(a, r, v)| format!("({a}:dn:{r}:={v})")),
            (rules, value()).prop_map(|(r, v)| format!("(:{r}:={v})")),
        ]
    }

    fn filter_string() -> impl Strategy<Value = String> {
        let tree = leaf().prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("(&{})", v.concat())),
                prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("(|{})", v.concat())),
                inner.prop_map(|f| format!("(!{f})")),
            ]
        });
        prop_oneof![
            4 => tree.clone(),
            // Damaged filters: one character replaced or removed.
            2 => (tree, any::<Index>(), any::<char>(), any::<bool>()).prop_map(|(s, at, c, remove)| {
                let mut chars: Vec<char> = s.chars().collect();
                let i = at.index(chars.len());
                if remove { chars.remove(i); } else { chars[i] = c; }
                chars.into_iter().collect()
            }),
            1 => "[()&|!=*<>~:\\\\a-zA-Z0-9 ]{0,60}",
            1 => any::<String>(),
        ]
    }

    /// Seeds for BER mutations: valid requests of several kinds.
    fn seeds() -> Vec<Vec<u8>> {
        let mut s = super::seed_messages();
        s.push(super::encode(super::bind_msg(6, "cn=x,ou=services,dc=example,dc=org", "secret")));
        s
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn codec_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            decode_all(&bytes);
        }

        #[test]
        fn codec_never_panics_on_framed_garbage(inner in prop::collection::vec(any::<u8>(), 0..2048)) {
            decode_all(&super::tlv(0x30, &inner));
        }

        #[test]
        fn codec_never_panics_on_mutated_requests(
            seed in any::<Index>(),
            edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..8),
            cut in any::<Index>(),
        ) {
            let seeds = seeds();
            let mut msg = seeds[seed.index(seeds.len())].clone();
            for (at, byte) in edits {
                let i = at.index(msg.len());
                msg[i] = byte;
            }
            decode_all(&msg);
            let keep = cut.index(msg.len() + 1);
            decode_all(&msg[..keep]);
        }

        #[test]
        fn filter_eval_never_panics(s in filter_string()) {
            let snap = snapshot();
            if let Ok(f) = parse_ldap_filter_str(&s) {
                let _ = node_count(&f);
                let matched: Vec<u32> = (0..snap.entries.len() as u32)
                    .filter(|&i| eval(&f, &snap.entries[i as usize]) == Tri::True)
                    .collect();
                // The index may over-approximate, never lose a match.
                if let Some(cands) = candidates(&f, &snap) {
                    for m in &matched {
                        prop_assert!(cands.contains(m), "index lost entry {} for {s}", snap.entries[*m as usize].dn);
                    }
                }
            }
        }
    }
}
