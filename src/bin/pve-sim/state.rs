//! The simulated cluster: nodes, containers, tasks, injected faults and the
//! request log, behind one std `Mutex` that is never held across `.await`.
//! Long operations run as tasks: a tokio timer that finishes them after
//! `--task-ms`. This file owns the semantics (locks, capacity, state
//! errors, messages); `api.rs` owns HTTP and parameters.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sha1::{Digest, Sha1};

use crate::api::{ApiError, ApiResult};
use crate::format;
use crate::params::Params;

/// Tasks kept for status queries; older finished ones are forgotten.
const MAX_TASKS: usize = 10_000;
/// Distinct endpoints counted separately by `/_sim/stats`; the rest are
/// counted under `other` (paths come from clients, so the map is bounded).
const MAX_STAT_ENDPOINTS: usize = 1_000;
/// Files and bytes read from `--dhcp-hostsdir` at most.
const MAX_DHCP_FILES: usize = 1_000;
const MAX_DHCP_FILE_BYTES: u64 = 1 << 20;

/// Fixed settings from the command line.
#[derive(Debug)]
pub(crate) struct Settings {
    /// Token id (`user@realm!name`) → secret.
    pub(crate) tokens: HashMap<String, String>,
    /// How long every task runs.
    pub(crate) task: Duration,
    /// How far `/cluster/resources` lags behind.
    pub(crate) resources_lag: Duration,
    /// How long a config change waits for a held lock (PVE: 10 s).
    pub(crate) lock_wait: Duration,
    /// Delay before answering a wrong token (PVE: ~3 s).
    pub(crate) auth_fail_delay: Duration,
    /// Where dnsmasq's `dhcp-host` files are, for `ip=dhcp` interfaces.
    pub(crate) dhcp_hostsdir: Option<PathBuf>,
    /// Prefix length reported with a DHCP address.
    pub(crate) dhcp_prefix_len: u8,
    /// Most containers the simulator holds.
    pub(crate) max_containers: usize,
    /// Requests kept in the log served by `/_sim/requests`.
    pub(crate) max_logged_requests: usize,
    /// The certificate fingerprint shown in `/nodes`.
    pub(crate) fingerprint: Option<String>,
}

/// A node's capacity.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) cores: u32,
    /// Bytes.
    pub(crate) memory: u64,
    /// Bytes of `local-lvm`, the only storage for container disks.
    pub(crate) disk: u64,
}

/// A container.
#[derive(Debug)]
pub(crate) struct Ct {
    pub(crate) vmid: u32,
    pub(crate) node: String,
    /// The config as `GET …/config` shows it (without `digest`), including
    /// the `lock` property while an operation holds it.
    pub(crate) conf: BTreeMap<String, Value>,
    pub(crate) running: bool,
    pub(crate) started: Option<Instant>,
    /// The task holding the config file lock, if any.
    pub(crate) flock: Option<String>,
    /// Bytes allocated on the node.
    pub(crate) disk: u64,
}

impl Ct {
    fn num(&self, key: &str, default: u64) -> u64 {
        match self.conf.get(key) {
            Some(Value::Number(n)) => n.as_u64().unwrap_or(default),
            Some(Value::String(s)) => s.parse().unwrap_or(default),
            _ => default,
        }
    }

    fn text(&self, key: &str) -> Option<&str> {
        self.conf.get(key).and_then(Value::as_str)
    }

    /// The config's `lock` property.
    pub(crate) fn lock_prop(&self) -> Option<String> {
        self.text("lock").map(str::to_string)
    }

    fn uptime(&self) -> u64 {
        match (self.running, self.started) {
            (true, Some(t)) => t.elapsed().as_secs(),
            _ => 0,
        }
    }

    /// The config file as PVE would write it; its SHA-1 is the digest.
    pub(crate) fn digest(&self) -> String {
        let mut text = String::new();
        for (k, v) in &self.conf {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            text.push_str(&format!("{k}: {v}\n"));
        }
        let d = Sha1::digest(text.as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn status_json(&self, with_vmid_as_string: bool) -> Value {
        let maxmem = self.num("memory", 512).saturating_mul(1 << 20);
        let maxswap = self.num("swap", 512).saturating_mul(1 << 20);
        let mut v = json!({
            "vmid": if with_vmid_as_string { json!(self.vmid.to_string()) } else { json!(self.vmid) },
            "name": self.text("hostname").unwrap_or(""),
            "type": "lxc",
            "status": if self.running { "running" } else { "stopped" },
            "uptime": self.uptime(),
            "cpus": self.num("cores", 1),
            "cpu": if self.running { 0.01 } else { 0.0 },
            "maxmem": maxmem,
            "mem": if self.running { maxmem / 8 } else { 0 },
            "maxswap": maxswap,
            "swap": 0,
            "maxdisk": self.disk,
            "disk": if self.running { self.disk / 4 } else { 0 },
            "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0,
            "ha": {"managed": 0},
        });
        if let Some(obj) = v.as_object_mut() {
            if let Some(t) = self.text("tags") {
                obj.insert("tags".into(), json!(t));
            }
            if let Some(l) = self.lock_prop() {
                obj.insert("lock".into(), json!(l));
            }
            if self.running {
                obj.insert("pid".into(), json!(10_000 + self.vmid));
            }
        }
        v
    }
}

/// A task.
#[derive(Debug)]
struct Task {
    upid: String,
    node: String,
    kind: String,
    id: String,
    user: String,
    pid: u32,
    pstart: u64,
    starttime: u64,
    exit: Option<String>,
    log: Vec<String>,
    /// An injected failure to report instead of the task's own result.
    injected: Option<String>,
}

/// A request fault (`POST /_sim/faults` with `path_prefix`).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Fault {
    /// Matches API paths (after `/api2/json`) starting with this.
    pub(crate) path_prefix: String,
    /// Only this method (any when absent).
    #[serde(default)]
    pub(crate) method: Option<String>,
    /// The status to answer; absent with `delay_ms` only delays.
    #[serde(default)]
    pub(crate) status: Option<u16>,
    /// The reason phrase / message.
    #[serde(default)]
    pub(crate) reason: Option<String>,
    /// How many matching requests it hits.
    #[serde(default = "one")]
    pub(crate) count: u32,
    /// Delay before answering (or before passing the request on).
    #[serde(default)]
    pub(crate) delay_ms: Option<u64>,
}

fn one() -> u32 {
    1
}

/// A task failure (`POST /_sim/faults` with `task_fail`).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TaskFail {
    /// The task type, e.g. `vzcreate`, `vzstart`.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// The exit status text.
    pub(crate) message: String,
    /// How many tasks of that type fail.
    #[serde(default = "one")]
    pub(crate) count: u32,
}

/// A probabilistic request fault (`POST /_sim/faults` with `error_rate`):
/// it stays until `DELETE /_sim/faults`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct RateFault {
    /// Matches API paths (after `/api2/json`) starting with this.
    pub(crate) path_prefix: String,
    /// Only this method (any when absent).
    pub(crate) method: Option<String>,
    /// The probability that a matching request fails.
    pub(crate) error_rate: f64,
    pub(crate) status: u16,
    pub(crate) reason: String,
    /// Carry the request out and fail only its answer (a lost response).
    pub(crate) after: bool,
}

/// Added latency (`POST /_sim/faults` with `latency_ms`).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Latency {
    pub(crate) path_prefix: String,
    pub(crate) method: Option<String>,
    pub(crate) latency_ms: u64,
}

/// Which requests a rule applies to.
fn matches(prefix: &str, rule_method: Option<&str>, method: &str, path: &str) -> bool {
    path.starts_with(prefix) && rule_method.is_none_or(|m| m.eq_ignore_ascii_case(method))
}

/// The lasting, random faults: rates, latency, offline nodes. Every
/// random decision comes from one generator, seedable through the control
/// API so a run can be repeated (the same seed and the same request order
/// give the same failures).
#[derive(Debug)]
pub(crate) struct Chaos {
    rng: StdRng,
    /// The last seed given (or drawn at start), shown in `/_sim/state`.
    pub(crate) seed: u64,
    pub(crate) rate_faults: Vec<RateFault>,
    pub(crate) latency: Vec<Latency>,
    /// The probability that a config change, power action or delete finds
    /// the config file lock taken.
    pub(crate) lock_contention: f64,
    /// The probability that a nextid answer is taken by someone else at once.
    pub(crate) nextid_collision_rate: f64,
    /// Cluster nodes that are down: requests for them fail with 595.
    pub(crate) offline: BTreeSet<String>,
}

impl Chaos {
    fn new() -> Self {
        let seed = rand::random();
        Self {
            rng: StdRng::seed_from_u64(seed),
            seed,
            rate_faults: Vec::new(),
            latency: Vec::new(),
            lock_contention: 0.0,
            nextid_collision_rate: 0.0,
            offline: BTreeSet::new(),
        }
    }

    /// Restarts the generator from `seed`.
    pub(crate) fn reseed(&mut self, seed: u64) {
        self.seed = seed;
        self.rng = StdRng::seed_from_u64(seed);
    }

    /// True with probability `p` (draws only for 0 < p < 1, so rules at 0
    /// or 1 do not shift the sequence of the others).
    pub(crate) fn roll(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            false
        } else if p >= 1.0 {
            true
        } else {
            self.rng.r#gen::<f64>() < p
        }
    }

    /// Forgets every rule and brings every node back (the generator keeps
    /// its state).
    pub(crate) fn clear(&mut self) {
        self.rate_faults.clear();
        self.latency.clear();
        self.lock_contention = 0.0;
        self.nextid_collision_rate = 0.0;
        self.offline.clear();
    }

    /// What the lasting rules do to one request: the total added latency,
    /// and the first rate fault that fires (each matching rule rolls in
    /// order until one does).
    pub(crate) fn plan(&mut self, method: &str, path: &str) -> (Duration, Option<RateFault>) {
        let delay: u64 = self
            .latency
            .iter()
            .filter(|l| matches(&l.path_prefix, l.method.as_deref(), method, path))
            .map(|l| l.latency_ms)
            .fold(0, u64::saturating_add);
        let mut hit = None;
        for i in 0..self.rate_faults.len() {
            let Some(f) = self.rate_faults.get(i) else { break };
            if !matches(&f.path_prefix, f.method.as_deref(), method, path) {
                continue;
            }
            let rate = f.error_rate;
            if self.roll(rate) {
                hit = self.rate_faults.get(i).cloned();
                break;
            }
        }
        (Duration::from_millis(delay.min(600_000)), hit)
    }

    pub(crate) fn dump(&self) -> Value {
        json!({
            "seed": self.seed, "error_rates": self.rate_faults, "latency": self.latency,
            "lock_contention": self.lock_contention, "nextid_collision_rate": self.nextid_collision_rate,
            "offline_nodes": self.offline,
        })
    }
}

/// Request counters for `/_sim/stats`: unlike the log they never drop
/// anything, so a long benchmark can count every call.
#[derive(Debug)]
pub(crate) struct Stats {
    since: Instant,
    total: u64,
    by_method: BTreeMap<String, u64>,
    by_status: BTreeMap<u16, u64>,
    /// `METHOD /path` with vmids as `{vmid}` and UPIDs as `{upid}`.
    by_endpoint: BTreeMap<String, u64>,
}

impl Stats {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            total: 0,
            by_method: BTreeMap::new(),
            by_status: BTreeMap::new(),
            by_endpoint: BTreeMap::new(),
        }
    }

    /// Counts one answered API request.
    pub(crate) fn count(&mut self, method: &str, path: &str, status: u16) {
        self.total += 1;
        *self.by_method.entry(method.to_string()).or_default() += 1;
        *self.by_status.entry(status).or_default() += 1;
        let endpoint = format!("{method} {}", endpoint_of(path));
        let key = if self.by_endpoint.contains_key(&endpoint) || self.by_endpoint.len() < MAX_STAT_ENDPOINTS {
            endpoint
        } else {
            "other".to_string()
        };
        *self.by_endpoint.entry(key).or_default() += 1;
    }

    pub(crate) fn reset(&mut self) {
        *self = Self::new();
    }

    pub(crate) fn dump(&self) -> Value {
        let by_status: BTreeMap<String, u64> = self.by_status.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        json!({
            "total": self.total, "seconds": self.since.elapsed().as_secs_f64(),
            "by_method": self.by_method, "by_status": by_status, "by_endpoint": self.by_endpoint,
        })
    }
}

/// A path with its variable parts replaced: numeric segments by `{vmid}`,
/// UPIDs by `{upid}`.
fn endpoint_of(path: &str) -> String {
    let segs: Vec<&str> = path
        .split('/')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "{vmid}"
            } else if s.starts_with("UPID") {
                "{upid}"
            } else {
                s
            }
        })
        .collect();
    segs.join("/")
}

/// Everything mutable.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) nodes: Vec<Node>,
    pub(crate) cts: BTreeMap<u32, Ct>,
    tasks: HashMap<String, Task>,
    task_order: VecDeque<String>,
    pub(crate) faults: Vec<Fault>,
    pub(crate) nextid_collisions: u32,
    pub(crate) task_fails: Vec<TaskFail>,
    pub(crate) requests: VecDeque<Value>,
    pub(crate) request_seq: u64,
    pub(crate) stats: Stats,
    pub(crate) chaos: Chaos,
    /// Snapshots of `/cluster/resources` for the lag.
    history: VecDeque<(Instant, Arc<Value>)>,
    next_pid: u32,
    mac_counter: u32,
    boot: Instant,
}

/// The simulator: settings plus state.
#[derive(Debug)]
pub(crate) struct Sim {
    pub(crate) settings: Settings,
    state: Mutex<State>,
}

impl Sim {
    pub(crate) fn new(settings: Settings, nodes: Vec<Node>) -> Arc<Self> {
        let state = State {
            nodes,
            cts: BTreeMap::new(),
            tasks: HashMap::new(),
            task_order: VecDeque::new(),
            faults: Vec::new(),
            nextid_collisions: 0,
            task_fails: Vec::new(),
            requests: VecDeque::new(),
            request_seq: 0,
            stats: Stats::new(),
            chaos: Chaos::new(),
            history: VecDeque::new(),
            next_pid: 0x0001_2000,
            mac_counter: 0,
            boot: Instant::now(),
        };
        Arc::new(Self { settings, state: Mutex::new(state) })
    }

    /// The state; a panic elsewhere does not poison it for good.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// 500 "Configuration file … does not exist".
pub(crate) fn missing(node: &str, vmid: u32) -> ApiError {
    ApiError::new(500, format!("Configuration file 'nodes/{node}/lxc/{vmid}.conf' does not exist"))
}

fn locked(lock: &str) -> ApiError {
    ApiError::new(500, format!("CT is locked ({lock})"))
}

fn lock_timeout(vmid: u32) -> ApiError {
    ApiError::new(500, format!("can't lock file '/run/lock/lxc/pve-config-{vmid}.lock' - got timeout"))
}

/// What pveproxy answers when it cannot reach the node a request is for
/// (the node is powered off or its network is gone): 595 "No route to
/// host". When the node is up but its pveproxy is not, the text is "Errors
/// during connection establishment, proxy handshake: Connection refused";
/// both are 595, and clients should treat them alike.
pub(crate) fn node_unreachable() -> ApiError {
    ApiError::new(595, "No route to host")
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl State {
    /// Whether the config file lock is taken by someone else this time
    /// (`lock_contention`).
    fn contended(&mut self) -> bool {
        let rate = self.chaos.lock_contention;
        self.chaos.roll(rate)
    }

    /// Makes a task fail with `message` (unless another failure is injected).
    fn fail_task(&mut self, upid: &str, message: String) {
        if let Some(t) = self.tasks.get_mut(upid) {
            t.injected.get_or_insert(message);
        }
    }

    pub(crate) fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Container `vmid` if it lives on `node` (PVE looks for the config
    /// file under that node).
    pub(crate) fn ct_on(&self, node: &str, vmid: u32) -> Result<&Ct, ApiError> {
        self.cts.get(&vmid).filter(|c| c.node == node).ok_or_else(|| missing(node, vmid))
    }

    fn ct_on_mut(&mut self, node: &str, vmid: u32) -> Result<&mut Ct, ApiError> {
        self.cts.get_mut(&vmid).filter(|c| c.node == node).ok_or_else(|| missing(node, vmid))
    }

    fn disk_used(&self, node: &str) -> u64 {
        self.cts.values().filter(|c| c.node == node).map(|c| c.disk).fold(0, u64::saturating_add)
    }

    fn mem_used(&self, node: &str) -> u64 {
        self.cts
            .values()
            .filter(|c| c.node == node && c.running)
            .map(|c| c.num("memory", 512).saturating_mul(1 << 20))
            .fold(0, u64::saturating_add)
    }

    fn cores_used(&self, node: &str) -> u64 {
        self.cts.values().filter(|c| c.node == node && c.running).map(|c| c.num("cores", 1)).sum()
    }

    fn new_mac(&mut self) -> String {
        self.mac_counter = self.mac_counter.wrapping_add(1);
        // A scrambled counter, so MACs look random but never repeat.
        let c = self.mac_counter.wrapping_mul(0x9E37_79B1) >> 8;
        format!("BC:24:11:{:02X}:{:02X}:{:02X}", (c >> 16) & 0xff, (c >> 8) & 0xff, c & 0xff)
    }

    /// Registers a running task and returns its UPID.
    fn new_task(&mut self, node: &str, kind: &str, id: &str, user: &str) -> String {
        self.next_pid = self.next_pid.wrapping_add(1 + (self.next_pid % 7));
        let pid = self.next_pid;
        let pstart = 1_000_000 + self.boot.elapsed().as_millis() as u64 / 10;
        let starttime = unix_now();
        let upid = format!("UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{kind}:{id}:{user}:");
        let injected = self.take_task_fail(kind);
        let task = Task {
            upid: upid.clone(),
            node: node.to_string(),
            kind: kind.to_string(),
            id: id.to_string(),
            user: user.to_string(),
            pid,
            pstart,
            starttime,
            exit: None,
            log: Vec::new(),
            injected,
        };
        self.tasks.insert(upid.clone(), task);
        self.task_order.push_back(upid.clone());
        while self.task_order.len() > MAX_TASKS {
            let Some(old) = self.task_order.pop_front() else { break };
            if self.tasks.get(&old).is_some_and(|t| t.exit.is_none()) {
                // Still running: keep it (at the back) and stop pruning.
                self.task_order.push_back(old);
                break;
            }
            self.tasks.remove(&old);
        }
        upid
    }

    fn take_task_fail(&mut self, kind: &str) -> Option<String> {
        let i = self.task_fails.iter().position(|f| f.kind == kind && f.count > 0)?;
        let f = self.task_fails.get_mut(i)?;
        f.count -= 1;
        let message = f.message.clone();
        if f.count == 0 {
            self.task_fails.remove(i);
        }
        Some(message)
    }

    fn log_task(&mut self, upid: &str, line: String) {
        if let Some(t) = self.tasks.get_mut(upid) {
            t.log.push(line);
        }
    }

    fn finish_task(&mut self, upid: &str, result: Result<(), String>) {
        for ct in self.cts.values_mut() {
            if ct.flock.as_deref() == Some(upid) {
                ct.flock = None;
            }
        }
        if let Some(t) = self.tasks.get_mut(upid) {
            match result {
                Ok(()) => {
                    t.log.push("TASK OK".into());
                    t.exit = Some("OK".into());
                }
                Err(e) => {
                    t.log.push(format!("TASK ERROR: {e}"));
                    t.exit = Some(e);
                }
            }
        }
    }

    pub(crate) fn task_status(&self, node: &str, upid: &str) -> ApiResult {
        let t = self.tasks.get(upid).filter(|t| t.node == node).ok_or_else(|| no_such_task(upid))?;
        let (user, tokenid) = match t.user.split_once('!') {
            Some((u, tok)) => (u, Some(tok)),
            None => (t.user.as_str(), None),
        };
        let mut v = json!({
            "upid": t.upid, "node": t.node, "pid": t.pid, "pstart": t.pstart, "starttime": t.starttime,
            "type": t.kind, "id": t.id, "user": user,
            "status": if t.exit.is_some() { "stopped" } else { "running" },
        });
        if let Some(obj) = v.as_object_mut() {
            if let Some(tok) = tokenid {
                obj.insert("tokenid".into(), json!(tok));
            }
            if let Some(e) = &t.exit {
                obj.insert("exitstatus".into(), json!(e));
            }
        }
        Ok(v)
    }

    pub(crate) fn task_log(&self, node: &str, upid: &str, start: usize, limit: usize) -> ApiResult {
        let t = self.tasks.get(upid).filter(|t| t.node == node).ok_or_else(|| no_such_task(upid))?;
        let lines: Vec<Value> =
            t.log.iter().enumerate().skip(start).take(limit).map(|(i, line)| json!({"n": i + 1, "t": line})).collect();
        Ok(Value::Array(lines))
    }

    pub(crate) fn version() -> Value {
        json!({"version": "8.2.4", "release": "8.2", "repoid": "faa83925c9641325"})
    }

    pub(crate) fn nodes_json(&self, fingerprint: Option<&str>) -> Value {
        let list: Vec<Value> = self
            .nodes
            .iter()
            .map(|n| {
                let mut v = self.node_resource(n);
                if self.chaos.offline.contains(&n.name) {
                    // PVE lists a node that is down with its name and status only.
                    return json!({"node": n.name, "status": "offline", "type": "node", "level": ""});
                }
                if let (Some(obj), Some(fp)) = (v.as_object_mut(), fingerprint) {
                    obj.insert("ssl_fingerprint".into(), json!(fp));
                    obj.remove("id");
                }
                v
            })
            .collect();
        Value::Array(list)
    }

    fn node_resource(&self, n: &Node) -> Value {
        if self.chaos.offline.contains(&n.name) {
            return json!({"id": format!("node/{}", n.name), "type": "node", "node": n.name, "status": "offline"});
        }
        json!({
            "id": format!("node/{}", n.name), "type": "node", "node": n.name, "status": "online", "level": "",
            "maxcpu": n.cores, "cpu": self.cpu_load(n),
            "maxmem": n.memory, "mem": self.mem_used(&n.name),
            "maxdisk": n.disk, "disk": self.disk_used(&n.name),
            "uptime": self.boot.elapsed().as_secs(),
        })
    }

    fn cpu_load(&self, n: &Node) -> f64 {
        // A plausible figure: each running core adds 1% of one core.
        let used = self.cores_used(&n.name) as f64 * 0.01;
        (used / f64::from(n.cores.max(1))).min(1.0)
    }

    pub(crate) fn node_status(&self, node: &str) -> ApiResult {
        let n = self.node(node).ok_or_else(|| no_such_node(node))?;
        let mem = self.mem_used(node).min(n.memory);
        let disk = self.disk_used(node).min(n.disk);
        Ok(json!({
            "cpu": self.cpu_load(n),
            "wait": 0,
            "uptime": self.boot.elapsed().as_secs(),
            "loadavg": ["0.00", "0.00", "0.00"],
            "memory": {"total": n.memory, "used": mem, "free": n.memory - mem},
            "swap": {"total": 0, "used": 0, "free": 0},
            "rootfs": {"total": n.disk, "used": disk, "free": n.disk - disk, "avail": n.disk - disk},
            "cpuinfo": {"cpus": n.cores, "cores": n.cores, "sockets": 1, "model": "pve-sim virtual CPU", "mhz": "2400.000"},
            "kversion": "Linux 6.8.12-1-pve #1 SMP PREEMPT_DYNAMIC PMX 6.8.12-1 x86_64",
            "pveversion": "pve-manager/8.2.4/faa83925c9641325",
        }))
    }

    pub(crate) fn lxc_list(&self, node: &str) -> Value {
        // Older PVE releases answer the vmid as a string here; clients must
        // accept both, so the simulator keeps that quirk.
        Value::Array(self.cts.values().filter(|c| c.node == node).map(|c| c.status_json(true)).collect())
    }

    pub(crate) fn lxc_status(&self, node: &str, vmid: u32) -> ApiResult {
        Ok(self.ct_on(node, vmid)?.status_json(false))
    }

    pub(crate) fn lxc_config(&self, node: &str, vmid: u32) -> ApiResult {
        let ct = self.ct_on(node, vmid)?;
        let mut conf: serde_json::Map<String, Value> = ct.conf.clone().into_iter().collect();
        conf.insert("digest".into(), json!(ct.digest()));
        Ok(Value::Object(conf))
    }

    /// Every guest, node and storage as `/cluster/resources` lists them.
    fn resources_now(&self) -> Value {
        let mut list: Vec<Value> = Vec::new();
        for n in &self.nodes {
            list.push(self.node_resource(n));
            let used = self.disk_used(&n.name);
            list.push(json!({
                "id": format!("storage/{}/local-lvm", n.name), "type": "storage", "storage": "local-lvm",
                "node": n.name, "status": "available", "plugintype": "lvmthin", "content": "rootdir,images",
                "shared": 0, "maxdisk": n.disk, "disk": used,
            }));
            list.push(json!({
                "id": format!("storage/{}/local", n.name), "type": "storage", "storage": "local",
                "node": n.name, "status": "available", "plugintype": "dir", "content": "iso,vztmpl,backup",
                "shared": 0, "maxdisk": 100u64 << 30, "disk": 1u64 << 30,
            }));
        }
        for ct in self.cts.values() {
            let mut v = ct.status_json(false);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("id".into(), json!(format!("lxc/{}", ct.vmid)));
                obj.insert("node".into(), json!(ct.node));
                obj.insert("template".into(), json!(0));
                let cpus = obj.remove("cpus").unwrap_or(json!(1));
                obj.insert("maxcpu".into(), cpus);
                obj.remove("ha");
                obj.remove("pid");
                obj.remove("maxswap");
                obj.remove("swap");
                if self.chaos.offline.contains(&ct.node) {
                    // The guests of a node that is down: last known config, unknown state.
                    obj.insert("status".into(), json!("unknown"));
                }
            }
            list.push(v);
        }
        Value::Array(list)
    }

    /// Records a snapshot for the lag; keeps what the lag still needs.
    pub(crate) fn record_resources(&mut self, lag: Duration) {
        let now = Instant::now();
        let snap = Arc::new(self.resources_now());
        self.history.push_back((now, snap));
        // Drop snapshots older than the newest one that is already old enough.
        while self.history.len() > 1
            && self.history.get(1).is_some_and(|(t, _)| now.saturating_duration_since(*t) >= lag)
        {
            self.history.pop_front();
        }
    }

    /// `/cluster/resources`, as it was `lag` ago, filtered by `kind`.
    pub(crate) fn resources(&self, lag: Duration, kind: Option<&str>) -> Value {
        let snapshot = if lag.is_zero() {
            Arc::new(self.resources_now())
        } else {
            let now = Instant::now();
            self.history
                .iter()
                .rev()
                .find(|(t, _)| now.saturating_duration_since(*t) >= lag)
                .or_else(|| self.history.front())
                .map_or_else(|| Arc::new(Value::Array(Vec::new())), |(_, s)| Arc::clone(s))
        };
        let list = snapshot.as_array().cloned().unwrap_or_default();
        let keep = |v: &Value| {
            let t = v.get("type").and_then(Value::as_str).unwrap_or("");
            match kind {
                None => true,
                Some("vm") => t == "lxc" || t == "qemu",
                Some(k) => t == k,
            }
        };
        Value::Array(list.into_iter().filter(keep).collect())
    }

    /// `GET /cluster/nextid`: the lowest free id ≥ 100, not reserved. With
    /// an injected collision another "client" takes the id at once.
    pub(crate) fn next_id(&mut self, wanted: Option<u32>) -> ApiResult {
        if let Some(v) = wanted {
            if self.cts.contains_key(&v) {
                return Err(ApiError::params(BTreeMap::from([("vmid".into(), format!("VM {v} already exists"))])));
            }
            return Ok(json!(v.to_string()));
        }
        let id = (100u32..1_000_000_000)
            .find(|i| !self.cts.contains_key(i))
            .ok_or_else(|| ApiError::new(500, "unable to get any free VMID"))?;
        let rate = self.chaos.nextid_collision_rate;
        if self.nextid_collisions > 0 {
            self.nextid_collisions -= 1;
            self.insert_foreign(id);
        } else if self.chaos.roll(rate) {
            self.insert_foreign(id);
        }
        Ok(json!(id.to_string()))
    }

    /// A stopped container made by "someone else" (a nextid race).
    fn insert_foreign(&mut self, vmid: u32) {
        let Some(node) = self.nodes.first().map(|n| n.name.clone()) else { return };
        let mac = self.new_mac();
        let conf = BTreeMap::from([
            ("arch".to_string(), json!("amd64")),
            ("hostname".to_string(), json!(format!("race-{vmid}"))),
            ("memory".to_string(), json!(512)),
            ("swap".to_string(), json!(512)),
            ("ostype".to_string(), json!("debian")),
            ("net0".to_string(), json!(format!("name=eth0,bridge=vmbr0,hwaddr={mac},ip=dhcp,type=veth"))),
            ("rootfs".to_string(), json!(format!("local-lvm:vm-{vmid}-disk-0,size=1G"))),
        ]);
        let ct = Ct { vmid, node, conf, running: false, started: None, flock: None, disk: 1 << 30 };
        self.cts.insert(vmid, ct);
    }

    /// The running container's interfaces; `null` while stopped.
    pub(crate) fn interfaces(&self, node: &str, vmid: u32, settings: &Settings) -> ApiResult {
        let ct = self.ct_on(node, vmid)?;
        if !ct.running {
            return Ok(Value::Null);
        }
        let mut list = vec![json!({
            "name": "lo", "hwaddr": "00:00:00:00:00:00", "inet": "127.0.0.1/8", "inet6": "::1/128",
        })];
        for (key, value) in &ct.conf {
            let Some(n) = key.strip_prefix("net") else { continue };
            if n.parse::<u8>().is_err() {
                continue;
            }
            let Some(net) = value.as_str() else { continue };
            let kv: BTreeMap<&str, &str> = net.split(',').filter_map(|i| i.split_once('=')).collect();
            let name = kv.get("name").copied().unwrap_or("eth0");
            let hwaddr = kv.get("hwaddr").copied().unwrap_or("");
            let mut iface = json!({"name": name, "hwaddr": hwaddr.to_ascii_lowercase()});
            let inet = match kv.get("ip").copied() {
                Some("dhcp") => settings
                    .dhcp_hostsdir
                    .as_deref()
                    .and_then(|dir| dhcp_lease(dir, hwaddr))
                    .map(|ip| format!("{ip}/{}", settings.dhcp_prefix_len)),
                Some("manual") | None => None,
                Some(cidr) => Some(cidr.to_string()),
            };
            if let Some(obj) = iface.as_object_mut() {
                if let Some(inet) = inet {
                    obj.insert("inet".into(), json!(inet));
                }
                if let Some(mac) = format::parse_mac(hwaddr) {
                    obj.insert("inet6".into(), json!(format::link_local(mac)));
                }
            }
            list.push(iface);
        }
        Ok(Value::Array(list))
    }

    /// Everything, for `/_sim/state`.
    pub(crate) fn dump(&self) -> Value {
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "name": n.name, "cores": n.cores, "memory": n.memory, "disk": n.disk,
                    "disk_used": self.disk_used(&n.name), "memory_used": self.mem_used(&n.name),
                })
            })
            .collect();
        let cts: Vec<Value> = self
            .cts
            .values()
            .map(|c| {
                json!({
                    "vmid": c.vmid, "node": c.node, "status": if c.running { "running" } else { "stopped" },
                    "config": c.conf, "lock": c.lock_prop(), "flock": c.flock, "disk": c.disk,
                })
            })
            .collect();
        let tasks: Vec<Value> = self
            .task_order
            .iter()
            .filter_map(|u| self.tasks.get(u))
            .map(|t| json!({"upid": t.upid, "type": t.kind, "id": t.id, "exitstatus": t.exit}))
            .collect();
        json!({
            "nodes": nodes, "containers": cts, "tasks": tasks, "faults": self.faults,
            "task_fails": self.task_fails, "nextid_collisions": self.nextid_collisions,
            "chaos": self.chaos.dump(),
        })
    }
}

fn no_such_task(upid: &str) -> ApiError {
    ApiError::new(500, format!("no such task '{}'", upid.chars().take(200).collect::<String>()))
}

/// What PVE answers for a node that is not in the cluster.
pub(crate) fn no_such_node(node: &str) -> ApiError {
    ApiError::new(
        500,
        format!("hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"),
    )
}

/// The address dnsmasq would lease to `mac`: the first `dhcp-host` line
/// (with or without the `dhcp-host=` prefix, as `--dhcp-hostsdir` files
/// hold them) naming that MAC and an IPv4 address. Files whose names start
/// with `.` or end with `~` are skipped, as dnsmasq does.
fn dhcp_lease(dir: &Path, mac: &str) -> Option<Ipv4Addr> {
    let wanted = format::parse_mac(mac)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !name.starts_with('.') && !name.ends_with('~')
        })
        .filter(|e| e.metadata().is_ok_and(|m| m.is_file() && m.len() <= MAX_DHCP_FILE_BYTES))
        .map(|e| e.path())
        .take(MAX_DHCP_FILES)
        .collect();
    files.sort();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        for line in text.lines() {
            let line = line.trim();
            let line = line.strip_prefix("dhcp-host=").unwrap_or(line);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.contains(&"ignore") {
                continue;
            }
            let has_mac = fields.iter().any(|f| format::parse_mac(f) == Some(wanted));
            if has_mac {
                if let Some(ip) = fields.iter().find_map(|f| f.parse::<Ipv4Addr>().ok()) {
                    return Some(ip);
                }
            }
        }
    }
    None
}

/// Waits until nobody holds container `vmid`'s config file lock, for at
/// most `--lock-wait-ms`; returns the state with the lock free. The guard is
/// taken after the last `.await`.
async fn wait_flock<'a>(sim: &'a Sim, node: &str, vmid: u32) -> Result<MutexGuard<'a, State>, ApiError> {
    let deadline = Instant::now() + sim.settings.lock_wait;
    loop {
        {
            let st = sim.lock();
            if st.ct_on(node, vmid)?.flock.is_none() {
                return Ok(st);
            }
        }
        if Instant::now() >= deadline {
            return Err(lock_timeout(vmid));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs a task: after `--task-ms`, `finish` applies its effect (given the
/// injected failure, if any) and the task ends with its result.
fn spawn_task<F>(sim: &Arc<Sim>, upid: String, finish: F)
where
    F: FnOnce(&mut State, Option<String>) -> Result<(), String> + Send + 'static,
{
    let sim = Arc::clone(sim);
    tokio::spawn(async move {
        tokio::time::sleep(sim.settings.task).await;
        let mut st = sim.lock();
        let injected = st.tasks.get(&upid).and_then(|t| t.injected.clone());
        let result = finish(&mut st, injected);
        st.finish_task(&upid, result);
    });
}

/// PVE's guess of the OS from the template's file name.
fn ostype_of(template: &str) -> &'static str {
    let file = template.rsplit('/').next().unwrap_or("");
    for os in ["debian", "ubuntu", "alpine", "centos", "fedora", "archlinux", "devuan", "gentoo", "opensuse", "nixos"] {
        if file.starts_with(os) {
            return os;
        }
    }
    "unmanaged"
}

/// Keys copied verbatim from create/update parameters into the config.
const PLAIN_KEYS: [&str; 18] = [
    "arch",
    "cmode",
    "console",
    "cores",
    "cpulimit",
    "cpuunits",
    "description",
    "hookscript",
    "hostname",
    "memory",
    "nameserver",
    "onboot",
    "ostype",
    "protection",
    "searchdomain",
    "startup",
    "swap",
    "timezone",
];

/// Checks a storage for container disks.
fn rootdir_storage(storage: &str) -> Result<(), ApiError> {
    match storage {
        "local-lvm" => Ok(()),
        "local" => Err(ApiError::new(500, "storage 'local' does not support container directories")),
        other => Err(ApiError::new(500, format!("storage '{other}' does not exist"))),
    }
}

/// `POST /nodes/{node}/lxc`.
pub(crate) fn create(sim: &Arc<Sim>, node: &str, p: &Params, user: &str) -> ApiResult {
    let vmid = p.int("vmid").and_then(|v| u32::try_from(v).ok()).ok_or_else(|| ApiError::new(500, "bad vmid"))?;
    let mut st = sim.lock();
    if let Some(ct) = st.cts.get(&vmid) {
        return Err(ApiError::new(500, format!("CT {vmid} already exists on node '{}'", ct.node)));
    }
    if st.cts.len() >= sim.settings.max_containers {
        return Err(ApiError::new(
            500,
            format!("pve-sim: too many containers (limit {})", sim.settings.max_containers),
        ));
    }
    let template = p.str("ostemplate").unwrap_or("");
    match template.split_once(':').map(|(s, _)| s) {
        Some("local") => {}
        Some("local-lvm") => {
            let name = template.split_once(':').map_or("", |(_, n)| n);
            return Err(ApiError::new(500, format!("unable to parse lvm volume name '{name}'")));
        }
        Some(other) => return Err(ApiError::new(500, format!("storage '{other}' does not exist"))),
        None => return Err(ApiError::new(500, format!("unable to parse volume ID '{template}'"))),
    }
    let default_rootfs = format!("{}:4", p.str("storage").unwrap_or("local"));
    let (storage, size, opts) =
        format::parse_rootfs_create(p.str("rootfs").unwrap_or(&default_rootfs)).map_err(|e| ApiError::new(500, e))?;
    rootdir_storage(&storage)?;

    let mut conf: BTreeMap<String, Value> = BTreeMap::new();
    for key in PLAIN_KEYS {
        if let Some(v) = p.conf_value(key) {
            conf.insert(key.to_string(), v);
        }
    }
    conf.entry("arch".into()).or_insert_with(|| json!("amd64"));
    conf.entry("hostname".into()).or_insert_with(|| json!(format!("CT{vmid}")));
    conf.entry("memory".into()).or_insert_with(|| json!(512));
    conf.entry("swap".into()).or_insert_with(|| json!(512));
    conf.entry("ostype".into()).or_insert_with(|| json!(ostype_of(template)));
    if p.bool("unprivileged") {
        conf.insert("unprivileged".into(), json!(1));
    }
    if let Some(tags) = p.str("tags") {
        let tags = format::normalise_tags(tags).map_err(|e| ApiError::new(500, e))?;
        if !tags.is_empty() {
            conf.insert("tags".into(), json!(tags));
        }
    }
    if let Some(f) = p.str("features") {
        conf.insert("features".into(), json!(format::normalise_features(f).map_err(|e| ApiError::new(500, e))?));
    }
    for n in 0..10 {
        let key = format!("net{n}");
        if let Some(v) = p.str(&key) {
            let mac = st.new_mac();
            conf.insert(key, json!(format::normalise_net(v, &mac).map_err(|e| ApiError::new(500, e))?));
        }
    }
    let mut rootfs_items = opts;
    rootfs_items.push(format!("size={}", format::format_size(size)));
    rootfs_items.sort();
    conf.insert("rootfs".into(), json!(format!("{storage}:vm-{vmid}-disk-0,{}", rootfs_items.join(","))));
    conf.insert("lock".into(), json!("create"));

    let free = st.node(node).map_or(0, |n| n.disk).saturating_sub(st.disk_used(node));
    let no_space = (size > free).then(|| {
        format!(
            "unable to create CT {vmid} - lvcreate 'pve/vm-{vmid}-disk-0' error:   Volume group \"pve\" has insufficient free space ({} extents): {} required.",
            free >> 22,
            size >> 22
        )
    });
    let upid = st.new_task(node, "vzcreate", &vmid.to_string(), user);
    let ct = Ct {
        vmid,
        node: node.to_string(),
        conf,
        running: false,
        started: None,
        flock: Some(upid.clone()),
        disk: if no_space.is_some() { 0 } else { size },
    };
    st.cts.insert(vmid, ct);
    st.log_task(&upid, format!("extracting archive '{template}'"));
    drop(st);

    let start = p.bool("start");
    let task = upid.clone();
    spawn_task(sim, upid.clone(), move |st, injected| {
        let ours = st.cts.get(&vmid).is_some_and(|c| c.flock.as_deref() == Some(task.as_str()));
        if let Some(err) = injected.or(no_space) {
            if ours {
                st.cts.remove(&vmid);
            }
            return Err(err);
        }
        let Some(ct) = st.cts.get_mut(&vmid).filter(|_| ours) else {
            return Err(format!("unable to create CT {vmid} - container vanished during create"));
        };
        ct.conf.remove("lock");
        if start {
            ct.running = true;
            ct.started = Some(Instant::now());
        }
        st.log_task(&task, "Total bytes read: 524288000 (500MiB, 166MiB/s)".into());
        Ok(())
    });
    Ok(json!(upid))
}

/// A power action on a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Power {
    Start,
    Stop,
    Shutdown,
    Reboot,
}

/// `POST …/status/{start|stop|shutdown|reboot}`.
pub(crate) async fn power(sim: &Arc<Sim>, node: &str, vmid: u32, action: Power, p: &Params, user: &str) -> ApiResult {
    let skiplock = p.bool("skiplock");
    {
        let st = sim.lock();
        let ct = st.ct_on(node, vmid)?;
        if let Some(l) = ct.lock_prop().filter(|_| !skiplock) {
            return Err(locked(&l));
        }
    }
    let mut st = wait_flock(sim, node, vmid).await?;
    let ct = st.ct_on(node, vmid)?;
    if let Some(l) = ct.lock_prop().filter(|_| !skiplock) {
        return Err(locked(&l));
    }
    match (action, ct.running) {
        (Power::Start, true) => return Err(ApiError::new(500, format!("CT {vmid} already running"))),
        (Power::Stop | Power::Shutdown | Power::Reboot, false) => {
            return Err(ApiError::new(500, format!("CT {vmid} not running")));
        }
        _ => {}
    }
    // PVE takes the config lock in the API call itself, before forking the
    // task: a lock timeout is an immediate 500.
    if action != Power::Reboot && st.contended() {
        return Err(lock_timeout(vmid));
    }
    let kind = match action {
        Power::Start => "vzstart",
        Power::Stop => "vzstop",
        Power::Shutdown => "vzshutdown",
        Power::Reboot => "vzreboot",
    };
    let upid = st.new_task(node, kind, &vmid.to_string(), user);
    st.ct_on_mut(node, vmid)?.flock = Some(upid.clone());
    drop(st);
    spawn_task(sim, upid.clone(), move |st, injected| {
        if let Some(err) = injected {
            return Err(err);
        }
        let ct = st.cts.get_mut(&vmid).ok_or_else(|| format!("CT {vmid} vanished"))?;
        match action {
            Power::Start | Power::Reboot => {
                ct.running = true;
                ct.started = Some(Instant::now());
            }
            Power::Stop | Power::Shutdown => {
                ct.running = false;
                ct.started = None;
            }
        }
        Ok(())
    });
    Ok(json!(upid))
}

/// Config keys PUT may not change.
const READ_ONLY: [&str; 2] = ["unprivileged", "rootfs"];

/// `PUT …/config`: waits for the lock, then applies synchronously.
pub(crate) async fn update_config(sim: &Arc<Sim>, node: &str, vmid: u32, p: &Params) -> ApiResult {
    let mut st = wait_flock(sim, node, vmid).await?;
    if st.contended() {
        return Err(lock_timeout(vmid));
    }
    let ct = st.ct_on(node, vmid)?;
    if let Some(l) = ct.lock_prop() {
        return Err(locked(&l));
    }
    if let Some(d) = p.str("digest") {
        if !d.eq_ignore_ascii_case(&ct.digest()) {
            return Err(ApiError::new(500, "detected modified configuration - file changed by other user? Try again."));
        }
    }
    for key in READ_ONLY {
        if p.has(key) {
            return Err(ApiError::new(500, format!("unable to modify read-only option: '{key}'")));
        }
    }
    let deletes: Vec<String> =
        p.str("delete").unwrap_or("").split([',', ';', ' ']).filter(|k| !k.is_empty()).map(str::to_string).collect();
    for key in &deletes {
        if p.has(key) {
            return Err(ApiError::new(500, format!("can't set and delete option '{key}' at the same time")));
        }
        let deletable = PLAIN_KEYS.contains(&key.as_str())
            || ["tags", "features"].contains(&key.as_str())
            || key.strip_prefix("net").is_some_and(|n| n.len() == 1 && n.bytes().all(|b| b.is_ascii_digit()));
        if ["hostname", "arch", "ostype", "rootfs", "memory"].contains(&key.as_str()) || !deletable {
            return Err(ApiError::new(500, format!("unable to delete required option '{key}'")));
        }
    }
    let mut changes: Vec<(String, Value)> = Vec::new();
    for key in PLAIN_KEYS {
        if let Some(v) = p.conf_value(key) {
            changes.push((key.to_string(), v));
        }
    }
    if let Some(t) = p.str("tags") {
        changes.push(("tags".into(), json!(format::normalise_tags(t).map_err(|e| ApiError::new(500, e))?)));
    }
    if let Some(f) = p.str("features") {
        changes.push(("features".into(), json!(format::normalise_features(f).map_err(|e| ApiError::new(500, e))?)));
    }
    for n in 0..10 {
        let key = format!("net{n}");
        if let Some(v) = p.str(&key) {
            // Like PVE: a net value without hwaddr gets a new random MAC.
            let mac = st.new_mac();
            changes.push((key, json!(format::normalise_net(v, &mac).map_err(|e| ApiError::new(500, e))?)));
        }
    }
    let ct = st.ct_on_mut(node, vmid)?;
    for key in deletes {
        ct.conf.remove(&key);
    }
    for (k, v) in changes {
        if v.as_str() == Some("") {
            ct.conf.remove(&k);
        } else {
            ct.conf.insert(k, v);
        }
    }
    Ok(Value::Null)
}

/// `PUT …/resize`: a task that grows the root disk.
pub(crate) async fn resize(sim: &Arc<Sim>, node: &str, vmid: u32, p: &Params, user: &str) -> ApiResult {
    {
        let st = sim.lock();
        if let Some(l) = st.ct_on(node, vmid)?.lock_prop() {
            return Err(locked(&l));
        }
    }
    let mut st = wait_flock(sim, node, vmid).await?;
    if st.contended() {
        return Err(lock_timeout(vmid));
    }
    let ct = st.ct_on(node, vmid)?;
    if let Some(l) = ct.lock_prop() {
        return Err(locked(&l));
    }
    if let Some(d) = p.str("digest") {
        if !d.eq_ignore_ascii_case(&ct.digest()) {
            return Err(ApiError::new(500, "detected modified configuration - file changed by other user? Try again."));
        }
    }
    let disk = p.str("disk").unwrap_or("");
    if disk != "rootfs" {
        return Err(ApiError::new(500, format!("disk '{disk}' does not exist")));
    }
    let size = p.str("size").unwrap_or("");
    let (grow, amount) = match size.strip_prefix('+') {
        Some(s) => (true, s),
        None => (false, size),
    };
    let amount = format::parse_size(amount, 1).ok_or_else(|| ApiError::new(500, format!("invalid size '{size}'")))?;
    let current = ct.disk;
    let new_size = if grow { current.checked_add(amount) } else { Some(amount) }
        .ok_or_else(|| ApiError::new(500, "size overflow"))?;
    if new_size < current {
        return Err(ApiError::new(500, "unable to shrink disk size"));
    }
    let upid = st.new_task(node, "resize", &vmid.to_string(), user);
    st.ct_on_mut(node, vmid)?.flock = Some(upid.clone());
    drop(st);
    let node = node.to_string();
    spawn_task(sim, upid.clone(), move |st, injected| {
        if let Some(err) = injected {
            return Err(err);
        }
        let used = st.disk_used(&node);
        let total = st.node(&node).map_or(0, |n| n.disk);
        let ct = st.cts.get_mut(&vmid).ok_or_else(|| format!("CT {vmid} vanished"))?;
        let delta = new_size.saturating_sub(ct.disk);
        if used.saturating_add(delta) > total {
            return Err(format!(
                "lvextend 'pve/vm-{vmid}-disk-0' error:   Insufficient free space: {} extents needed, but only {} available",
                delta >> 22,
                total.saturating_sub(used) >> 22
            ));
        }
        ct.disk = new_size;
        if let Some(rootfs) = ct.conf.get("rootfs").and_then(Value::as_str) {
            let mut items: Vec<String> =
                rootfs.split(',').filter(|i| !i.starts_with("size=")).map(str::to_string).collect();
            items.push(format!("size={}", format::format_size(new_size)));
            let (volume, rest) =
                items.split_first().map_or((String::new(), Vec::new()), |(v, r)| (v.clone(), r.to_vec()));
            let mut rest = rest;
            rest.sort();
            let joined = std::iter::once(volume).chain(rest).collect::<Vec<_>>().join(",");
            ct.conf.insert("rootfs".into(), json!(joined));
        }
        Ok(())
    });
    Ok(json!(upid))
}

/// `DELETE …/lxc/{vmid}`.
pub(crate) async fn destroy(sim: &Arc<Sim>, node: &str, vmid: u32, p: &Params, user: &str) -> ApiResult {
    let force = p.bool("force");
    let check = |ct: &Ct| -> Result<(), ApiError> {
        if let Some(l) = ct.lock_prop() {
            return Err(locked(&l));
        }
        if ct.running && !force {
            return Err(ApiError::new(500, format!("unable to destroy CT {vmid} - container is running")));
        }
        if ct.num("protection", 0) == 1 {
            return Err(ApiError::new(500, format!("can't remove CT {vmid} - protection mode enabled")));
        }
        Ok(())
    };
    {
        let st = sim.lock();
        check(st.ct_on(node, vmid)?)?;
    }
    let mut st = wait_flock(sim, node, vmid).await?;
    check(st.ct_on(node, vmid)?)?;
    let upid = st.new_task(node, "vzdestroy", &vmid.to_string(), user);
    st.ct_on_mut(node, vmid)?.flock = Some(upid.clone());
    // PVE takes the config lock inside the destroy task: contention makes
    // the task fail and the container stays.
    if st.contended() {
        st.fail_task(&upid, lock_timeout(vmid).message);
    }
    drop(st);
    let task = upid.clone();
    spawn_task(sim, upid.clone(), move |st, injected| {
        if let Some(err) = injected {
            return Err(err);
        }
        if st.cts.get(&vmid).is_some_and(|c| c.flock.as_deref() == Some(task.as_str())) {
            st.cts.remove(&vmid);
        }
        st.log_task(&task, format!("  Logical volume \"vm-{vmid}-disk-0\" successfully removed"));
        Ok(())
    });
    Ok(json!(upid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_hide_vmids_and_upids() {
        assert_eq!(endpoint_of("/nodes/pve1/lxc/104/status/start"), "/nodes/pve1/lxc/{vmid}/status/start");
        assert_eq!(endpoint_of("/nodes/pve1/tasks/UPID%3Apve1%3A0001%3A/status"), "/nodes/pve1/tasks/{upid}/status");
        assert_eq!(endpoint_of("/cluster/nextid"), "/cluster/nextid");
    }

    #[test]
    fn chaos_is_reproducible_and_rules_add_up() {
        let rule = |prefix: &str, rate: f64| RateFault {
            path_prefix: prefix.into(),
            method: Some("POST".into()),
            error_rate: rate,
            status: 500,
            reason: "x".into(),
            after: false,
        };
        let mut a = Chaos::new();
        a.rate_faults.push(rule("/nodes", 0.3));
        a.latency.push(Latency { path_prefix: "/nodes".into(), method: None, latency_ms: 5 });
        a.latency.push(Latency { path_prefix: "".into(), method: None, latency_ms: 7 });
        let run = |c: &mut Chaos| {
            c.reseed(9);
            (0..200).map(|_| c.plan("POST", "/nodes/pve1/lxc").1.is_some()).collect::<Vec<_>>()
        };
        let first = run(&mut a);
        assert_eq!(first, run(&mut a));
        let hits = first.iter().filter(|h| **h).count();
        assert!((30..=90).contains(&hits), "{hits} of 200 at 30%");
        assert_eq!(a.plan("POST", "/nodes/x").0, Duration::from_millis(12));
        assert_eq!(a.plan("GET", "/version"), (Duration::from_millis(7), None), "method and prefix filter");
        a.clear();
        assert_eq!(a.plan("POST", "/nodes/x"), (Duration::ZERO, None));
    }

    #[test]
    fn dhcp_lines() {
        let dir = std::env::temp_dir().join(format!("pve-sim-dhcp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("hosts"),
            "# comment\nbc:24:11:00:00:09,ignore\ndhcp-host=BC:24:11:00:00:01,10.1.2.3,web\nBC:24:11:00:00:02,set:x,10.1.2.4,db,12h\n",
        )
        .unwrap();
        std::fs::write(dir.join(".hidden"), "BC:24:11:00:00:03,10.9.9.9\n").unwrap();
        assert_eq!(dhcp_lease(&dir, "bc:24:11:00:00:01"), Some(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!(dhcp_lease(&dir, "BC:24:11:00:00:02"), Some(Ipv4Addr::new(10, 1, 2, 4)));
        assert_eq!(dhcp_lease(&dir, "BC:24:11:00:00:03"), None);
        assert_eq!(dhcp_lease(&dir, "BC:24:11:00:00:09"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
