//! `ldap-load`: a small LDAP load generator for `scripts/bench-ldap`.
//!
//! It drives any LDAP server (Portcullis or slapd) the same way: one TCP
//! connection per worker, one request in flight per connection, for a bounded
//! time, and prints one `key=value` line with the throughput and latency
//! percentiles. Requests name random users `{n}` from `--lo..=--hi`,
//! zero-padded to `--width` digits.
//!
//! * `search`: each worker binds once (`--bind-dn`/`--password`), then loops
//!   searches with `--filter`, where `{n}` is replaced in every assertion value.
//! * `bind`: each worker loops simple binds as `--dn` (with `{n}`) on its one
//!   connection.
//! * `argon2-hash`: prints an argon2id PHC hash (m=19456, t=2, p=1, the
//!   parameters Portcullis uses) of `--password`.
//! * `argon2-time`: times `--count` sequential argon2id hashes with those
//!   parameters on each of `--threads` threads; prints the median seconds per
//!   hash and the aggregate hashes per second.
//!
//! This is a benchmark tool, not part of the server.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use ldap3_proto::LdapCodec;
use ldap3_proto::proto::{
    LdapBindCred, LdapBindRequest, LdapDerefAliases, LdapFilter, LdapMsg, LdapOp, LdapSearchRequest, LdapSearchScope,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// LDAP load generator (benchmark helper).
#[derive(Debug, Parser)]
#[command(name = "ldap-load")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Loop searches after one bind per connection.
    Search(SearchArgs),
    /// Loop simple binds as random users.
    Bind(BindArgs),
    /// Print an argon2id (m=19456,t=2,p=1) PHC hash of a password.
    Argon2Hash {
        #[arg(long)]
        password: String,
    },
    /// Time argon2id (m=19456,t=2,p=1) hashes: `--count` sequential hashes on
    /// each of `--threads` threads at once; prints the median seconds per
    /// hash and the aggregate hashes per second (what the machine sustains
    /// with every thread hashing, memory bandwidth shared).
    Argon2Time {
        #[arg(long, default_value_t = 9)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

#[derive(Debug, Clone, Args)]
struct Load {
    /// Server address, e.g. 127.0.0.1:3890.
    #[arg(long)]
    addr: String,
    /// Connections (workers), each with one request in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Lowest user number.
    #[arg(long, default_value_t = 1)]
    lo: u32,
    /// Highest user number.
    #[arg(long, default_value_t = 10_000)]
    hi: u32,
    /// Digits of the zero-padded user number.
    #[arg(long, default_value_t = 5)]
    width: usize,
    /// Worker threads of the client runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Debug, Clone, Args)]
struct SearchArgs {
    #[command(flatten)]
    load: Load,
    #[arg(long)]
    bind_dn: String,
    #[arg(long)]
    password: String,
    #[arg(long)]
    base: String,
    /// RFC 4515 filter; `{n}` in values becomes the user number.
    #[arg(long)]
    filter: String,
    /// Entries each search must return; other counts are reported as mismatches.
    #[arg(long)]
    expect: Option<usize>,
    /// Attributes to request (comma-separated); all user attributes if empty.
    #[arg(long, default_value = "")]
    attrs: String,
}

#[derive(Debug, Clone, Args)]
struct BindArgs {
    #[command(flatten)]
    load: Load,
    /// Bind DN; `{n}` becomes the user number.
    #[arg(long)]
    dn: String,
    #[arg(long)]
    password: String,
}

/// What one worker measured.
#[derive(Debug, Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    mismatches: u64,
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

type Conn = Framed<TcpStream, LiteCodec>;

/// The parts of a server message the load generator looks at.
#[derive(Debug)]
struct Reply {
    msgid: i64,
    /// The protocolOp's BER tag byte, e.g. 0x61 BindResponse, 0x64 entry, 0x65 done.
    op: u8,
    /// The resultCode, for ops that carry an LDAPResult first.
    code: Option<i64>,
}

const OP_BIND_RESPONSE: u8 = 0x61;
const OP_SEARCH_ENTRY: u8 = 0x64;
const OP_SEARCH_DONE: u8 = 0x65;
const OP_EXTENDED_RESPONSE: u8 = 0x78;

/// Encodes requests with `ldap3_proto`; decodes responses only as far as
/// [`Reply`] needs, so the client spends little CPU next to the server.
#[derive(Default)]
struct LiteCodec {
    inner: LdapCodec,
}

impl tokio_util::codec::Encoder<LdapMsg> for LiteCodec {
    type Error = std::io::Error;

    fn encode(&mut self, msg: LdapMsg, buf: &mut bytes::BytesMut) -> std::io::Result<()> {
        self.inner.encode(msg, buf)
    }
}

impl tokio_util::codec::Decoder for LiteCodec {
    type Item = Reply;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut bytes::BytesMut) -> std::io::Result<Option<Reply>> {
        let bad = |what: &str| std::io::Error::other(format!("malformed response: {what}"));
        let Some((tag, body, total)) = tlv(buf, 0)? else { return Ok(None) };
        if tag != 0x30 {
            return Err(bad("not a SEQUENCE"));
        }
        let msg = &buf[body..total];
        let (id_tag, id_body, id_end) = tlv(msg, 0)?.ok_or_else(|| bad("no messageID"))?;
        if id_tag != 0x02 {
            return Err(bad("messageID is not an INTEGER"));
        }
        let msgid = integer(&msg[id_body..id_end]);
        let (op, op_body, op_end) = tlv(msg, id_end)?.ok_or_else(|| bad("no protocolOp"))?;
        let code = match tlv(&msg[..op_end], op_body) {
            Ok(Some((0x0a, b, e))) if matches!(op, OP_BIND_RESPONSE | OP_SEARCH_DONE | OP_EXTENDED_RESPONSE) => {
                Some(integer(&msg[b..e]))
            }
            _ => None,
        };
        bytes::Buf::advance(buf, total);
        Ok(Some(Reply { msgid, op, code }))
    }
}

/// Reads one BER tag-length at `at`: (tag, start of value, end of value),
/// or `None` when `buf` does not yet hold all of it.
fn tlv(buf: &[u8], at: usize) -> std::io::Result<Option<(u8, usize, usize)>> {
    let Some(&tag) = buf.get(at) else { return Ok(None) };
    let Some(&first) = buf.get(at + 1) else { return Ok(None) };
    let (len, start) = if first < 0x80 {
        (usize::from(first), at + 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err(std::io::Error::other("unsupported BER length"));
        }
        let Some(bytes) = buf.get(at + 2..at + 2 + n) else { return Ok(None) };
        (bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b)), at + 2 + n)
    };
    if buf.len() < start + len {
        return Ok(None);
    }
    Ok(Some((tag, start, start + len)))
}

/// A BER INTEGER/ENUMERATED value (two's complement, big-endian).
fn integer(bytes: &[u8]) -> i64 {
    let init = if bytes.first().is_some_and(|b| b & 0x80 != 0) { -1 } else { 0 };
    bytes.iter().take(8).fold(init, |acc: i64, &b| (acc << 8) | i64::from(b))
}

fn owasp_argon2() -> anyhow::Result<Argon2<'static>> {
    let params = Params::new(19 * 1024, 2, 1, None).map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Argon2Hash { password } => {
            let salt = SaltString::generate(&mut OsRng);
            let hash = owasp_argon2()?
                .hash_password(password.as_bytes(), &salt)
                .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
            println!("{hash}");
            Ok(())
        }
        Cmd::Argon2Time { count, threads } => {
            let started = Instant::now();
            let workers: Vec<_> =
                (0..threads.max(1)).map(|_| std::thread::spawn(move || time_hashes(count.max(1)))).collect();
            let mut times = Vec::new();
            for w in workers {
                times.extend(w.join().map_err(|_| anyhow::anyhow!("hashing thread panicked"))??);
            }
            let wall = started.elapsed().as_secs_f64();
            times.sort_by(f64::total_cmp);
            println!("seconds_per_hash={:.6}", times[times.len() / 2]);
            println!("hashes_per_second={:.1}", times.len() as f64 / wall);
            Ok(())
        }
        Cmd::Search(args) => run_load(args.load.clone(), Mode::Search(args)),
        Cmd::Bind(args) => run_load(args.load.clone(), Mode::Bind(args)),
    }
}

/// Times `count` sequential argon2id hashes (seconds each). Like the
/// server's hashing workers, it reuses one block buffer, so the figure is the
/// hash's compute cost, not page faults on 19 MiB of fresh memory.
fn time_hashes(count: usize) -> anyhow::Result<Vec<f64>> {
    let a = owasp_argon2()?;
    let mut blocks = vec![argon2::Block::default(); a.params().block_count()];
    let mut out = [0u8; 32];
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        a.hash_password_into_with_memory(b"benchmark-password", b"benchmark-salt-16", &mut out, &mut blocks)
            .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(times)
}

#[derive(Debug, Clone)]
enum Mode {
    Search(SearchArgs),
    Bind(BindArgs),
}

fn run_load(load: Load, mode: Mode) -> anyhow::Result<()> {
    let runtime = if load.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(load.threads).enable_all().build()?
    };
    runtime.block_on(drive(load, mode))
}

async fn drive(load: Load, mode: Mode) -> anyhow::Result<()> {
    if load.hi < load.lo {
        bail!("--hi must not be below --lo");
    }
    let template = match &mode {
        Mode::Search(s) => Some(
            ldap3_proto::parse_ldap_filter_str(&s.filter)
                .map_err(|e| anyhow::anyhow!("cannot parse filter {}: {e:?}", s.filter))?,
        ),
        Mode::Bind(_) => None,
    };
    // Connect (and, for searches, bind) every worker before the clock starts.
    let mut conns = Vec::with_capacity(load.concurrency);
    for _ in 0..load.concurrency.max(1) {
        let stream =
            TcpStream::connect(&load.addr).await.with_context(|| format!("cannot connect to {}", load.addr))?;
        stream.set_nodelay(true)?;
        let mut conn = Framed::new(stream, LiteCodec::default());
        if let Mode::Search(s) = &mode {
            let code = bind(&mut conn, 1, &s.bind_dn, &s.password).await?;
            if code != 0 {
                bail!("bind as {} failed: {code:?}", s.bind_dn);
            }
        }
        conns.push(conn);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(load.seconds);
    let mut tasks = Vec::with_capacity(conns.len());
    for conn in conns {
        let (load, mode, template) = (load.clone(), mode.clone(), template.clone());
        tasks.push(tokio::spawn(async move { worker(conn, &load, &mode, template.as_ref(), deadline).await }));
    }
    let mut all = Tally::default();
    for t in tasks {
        let mut one = t.await.context("worker panicked")?;
        all.latencies_us.append(&mut one.latencies_us);
        all.errors += one.errors;
        all.mismatches += one.mismatches;
        if all.first_error.is_none() {
            all.first_error = one.first_error;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        let v = &all.latencies_us;
        if v.is_empty() {
            return 0.0;
        }
        // Nearest-rank percentile.
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        f64::from(v[rank.min(v.len()) - 1]) / 1000.0
    };
    let ok = all.latencies_us.len();
    println!(
        "ops={ok} seconds={elapsed:.3} rate={:.1} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} errors={} mismatches={} first_error={:?}",
        ok as f64 / elapsed,
        pct(50.0),
        pct(99.0),
        pct(100.0),
        all.errors,
        all.mismatches,
        all.first_error.unwrap_or_default(),
    );
    Ok(())
}

async fn worker(mut conn: Conn, load: &Load, mode: &Mode, template: Option<&LdapFilter>, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut rng = StdRng::from_entropy();
    let mut msgid: i32 = 2;
    while Instant::now() < deadline {
        let n = format!("{:0width$}", rng.gen_range(load.lo..=load.hi), width = load.width);
        msgid = msgid.wrapping_add(1).max(2);
        let started = Instant::now();
        let outcome = match (mode, template) {
            (Mode::Search(s), Some(t)) => search(&mut conn, msgid, s, substitute(t, &n)).await,
            (Mode::Bind(b), _) => bind(&mut conn, msgid, &b.dn.replace("{n}", &n), &b.password)
                .await
                .map(|code| if code == 0 { Outcome::Ok } else { Outcome::Failed(format!("bind: resultCode {code}")) }),
            (Mode::Search(_), None) => Ok(Outcome::Failed("no filter".into())),
        };
        let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        match outcome {
            Ok(Outcome::Ok) => tally.latencies_us.push(micros),
            Ok(Outcome::Count(c)) => {
                tally.latencies_us.push(micros);
                if let Mode::Search(SearchArgs { expect: Some(want), .. }) = mode {
                    if c != *want {
                        tally.mismatches += 1;
                    }
                }
            }
            Ok(Outcome::Failed(why)) => tally.fail(why),
            Err(e) => {
                // The connection is unusable after an I/O error.
                tally.fail(format!("{e:#}"));
                break;
            }
        }
    }
    let _ = conn.send(LdapMsg::new(msgid.wrapping_add(1), LdapOp::UnbindRequest)).await;
    tally
}

enum Outcome {
    Ok,
    Count(usize),
    Failed(String),
}

async fn next(conn: &mut Conn) -> anyhow::Result<Reply> {
    match conn.next().await {
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => Err(e.into()),
        None => bail!("server closed the connection"),
    }
}

/// Sends a simple bind and returns its resultCode.
async fn bind(conn: &mut Conn, msgid: i32, dn: &str, password: &str) -> anyhow::Result<i64> {
    let req = LdapBindRequest { version: 3, dn: dn.to_string(), cred: LdapBindCred::Simple(password.to_string()) };
    conn.send(LdapMsg::new(msgid, LdapOp::BindRequest(req))).await?;
    loop {
        let r = next(conn).await?;
        match r.op {
            OP_BIND_RESPONSE if r.msgid == i64::from(msgid) => return Ok(r.code.unwrap_or(-1)),
            OP_EXTENDED_RESPONSE if r.msgid == 0 => bail!("notice of disconnection"),
            _ => {}
        }
    }
}

async fn search(conn: &mut Conn, msgid: i32, args: &SearchArgs, filter: LdapFilter) -> anyhow::Result<Outcome> {
    let attrs = args.attrs.split(',').filter(|a| !a.is_empty()).map(str::to_string).collect();
    let req = LdapSearchRequest {
        base: args.base.clone(),
        scope: LdapSearchScope::Subtree,
        aliases: LdapDerefAliases::Never,
        sizelimit: 0,
        timelimit: 0,
        typesonly: false,
        filter,
        attrs,
    };
    conn.send(LdapMsg::new(msgid, LdapOp::SearchRequest(req))).await?;
    let mut entries = 0;
    loop {
        let r = next(conn).await?;
        match r.op {
            OP_SEARCH_ENTRY if r.msgid == i64::from(msgid) => entries += 1,
            OP_SEARCH_DONE if r.msgid == i64::from(msgid) => {
                return Ok(match r.code {
                    Some(0) => Outcome::Count(entries),
                    code => Outcome::Failed(format!("search: resultCode {code:?}")),
                });
            }
            OP_EXTENDED_RESPONSE if r.msgid == 0 => bail!("notice of disconnection"),
            _ => {}
        }
    }
}

/// `f` with `{n}` replaced by `n` in every assertion value.
fn substitute(f: &LdapFilter, n: &str) -> LdapFilter {
    let s = |v: &String| v.replace("{n}", n);
    match f {
        LdapFilter::And(v) => LdapFilter::And(v.iter().map(|p| substitute(p, n)).collect()),
        LdapFilter::Or(v) => LdapFilter::Or(v.iter().map(|p| substitute(p, n)).collect()),
        LdapFilter::Not(inner) => LdapFilter::Not(Box::new(substitute(inner, n))),
        LdapFilter::Equality(a, v) => LdapFilter::Equality(a.clone(), s(v)),
        LdapFilter::Approx(a, v) => LdapFilter::Approx(a.clone(), s(v)),
        LdapFilter::GreaterOrEqual(a, v) => LdapFilter::GreaterOrEqual(a.clone(), s(v)),
        LdapFilter::LessOrEqual(a, v) => LdapFilter::LessOrEqual(a.clone(), s(v)),
        other => other.clone(),
    }
}
