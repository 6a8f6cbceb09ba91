//! The HTTP face of the simulator: `/api2/json/…` with PVE's envelope,
//! token auth, error reason phrases, strict parameters and 501 for unknown
//! paths; `/_sim/…` goes to `control.rs`. Every request is logged (without
//! secrets) for `/_sim/requests`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State as Axum};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::params::{self, Prop, RawParams, Ty, checked, checks, int, opt, req, text};
use crate::state::{self, Power, Sim, no_such_node};

/// Largest request body accepted (pveproxy's limit is of the same order).
pub(crate) const MAX_BODY: usize = 512 * 1024;

/// An error answer: the status, PVE's message (sent as the reason phrase
/// and as `message`) and per-parameter errors.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) message: String,
    pub(crate) errors: BTreeMap<String, String>,
}

impl ApiError {
    pub(crate) fn new(status: u16, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), errors: BTreeMap::new() }
    }

    /// 400 "Parameter verification failed." with `errors`.
    pub(crate) fn params(errors: BTreeMap<String, String>) -> Self {
        Self { status: 400, message: "Parameter verification failed.".into(), errors }
    }
}

/// A handler's result: the `data` value or an error.
pub(crate) type ApiResult = Result<Value, ApiError>;

/// `{"data": …}` with 200.
pub(crate) fn ok_response(data: Value) -> Response {
    json_response(StatusCode::OK, &json!({ "data": data }))
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json;charset=UTF-8"));
    r
}

/// The error with its text as the HTTP reason phrase (first line, control
/// characters replaced), as pveproxy sends it, and in the body.
pub(crate) fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = json!({ "data": null, "message": format!("{}\n", e.message) });
    if !e.errors.is_empty() {
        if let Some(obj) = body.as_object_mut() {
            obj.insert("errors".into(), json!(e.errors));
        }
    }
    let mut r = json_response(status, &body);
    let first = e.message.lines().next().unwrap_or("").trim_end();
    let reason: Vec<u8> = first.bytes().take(512).map(|b| if b < 0x20 || b == 0x7f { b' ' } else { b }).collect();
    if !reason.is_empty() {
        if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(reason) {
            r.extensions_mut().insert(phrase);
        }
    }
    r
}

/// The one handler behind the router.
pub(crate) async fn handle(Axum(sim): Axum<Arc<Sim>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return error_response(&ApiError::new(413, "request entity too large")),
    };
    if path == "/_sim" || path.starts_with("/_sim/") {
        return crate::control::handle(&sim, parts.method.as_str(), &path, &body);
    }
    let Some(api_path) = path.strip_prefix("/api2/json") else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let api_path = if api_path.is_empty() { "/".to_string() } else { api_path.to_string() };
    let method = parts.method.as_str().to_string();
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let auth = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());

    let mut logged_params = Value::Null;
    let mut token = None;
    let result = async {
        let user = authenticate(&sim, auth).await?;
        token = Some(user.clone());
        let raw = params::collect(parts.uri.query(), content_type, &body)?;
        logged_params = redact(&raw);
        let lost_answer = chaos(&sim, &method, &api_path).await?;
        inject_fault(&sim, &method, &api_path).await?;
        let data = dispatch(&sim, &method, &api_path, raw, &user).await?;
        match lost_answer {
            Some(e) => Err(e),
            None => Ok(data),
        }
    }
    .await;

    let status = result.as_ref().map_or_else(|e| e.status, |_| 200);
    {
        let mut st = sim.lock();
        st.request_seq += 1;
        st.stats.count(&method, &api_path, status);
        let max = sim.settings.max_logged_requests;
        if max > 0 {
            let entry = json!({
                "seq": st.request_seq, "method": method, "path": api_path, "params": logged_params,
                "status": status, "token": token,
            });
            st.requests.push_back(entry);
        }
        while st.requests.len() > max {
            st.requests.pop_front();
        }
    }
    match result {
        Ok(data) => ok_response(data),
        Err(e) => error_response(&e),
    }
}

/// Parameters for the log, without secrets.
fn redact(raw: &RawParams) -> Value {
    let map: serde_json::Map<String, Value> = raw
        .iter()
        .map(|(k, v)| {
            let shown = if k == "password" { json!("<redacted>") } else { v.to_json() };
            (k.clone(), shown)
        })
        .collect();
    Value::Object(map)
}

/// Checks `Authorization: PVEAPIToken=USER@REALM!NAME=SECRET`; the token id.
async fn authenticate(sim: &Sim, header: Option<&str>) -> Result<String, ApiError> {
    let Some(value) = header.and_then(|h| h.strip_prefix("PVEAPIToken=")) else {
        return Err(ApiError::new(401, "No ticket"));
    };
    let known = value
        .split_once('=')
        .filter(|(id, _)| id.contains('!'))
        .and_then(|(id, secret)| sim.settings.tokens.get(id).filter(|s| *s == secret).map(|_| id.to_string()));
    match known {
        Some(id) => Ok(id),
        None => {
            if !sim.settings.auth_fail_delay.is_zero() {
                tokio::time::sleep(sim.settings.auth_fail_delay).await;
            }
            Err(ApiError::new(401, "Authentication failed!"))
        }
    }
}

/// Applies the lasting faults (`/_sim/faults` with `latency_ms`,
/// `node_offline`, `error_rate`): waits the added latency, then fails a
/// request for an offline node with 595, or a request a rate fault hits.
/// A rate fault with `after` lets the request through and is returned, to
/// replace its answer.
async fn chaos(sim: &Sim, method: &str, path: &str) -> Result<Option<ApiError>, ApiError> {
    let (delay, hit, offline) = {
        let mut st = sim.lock();
        let node = path.strip_prefix("/nodes/").map(|rest| rest.split('/').next().unwrap_or(""));
        let offline = node.is_some_and(|n| st.chaos.offline.contains(n));
        let (delay, hit) = st.chaos.plan(method, path);
        (delay, hit, offline)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if offline {
        return Err(state::node_unreachable());
    }
    match hit {
        Some(f) if f.after => Ok(Some(ApiError::new(f.status, f.reason))),
        Some(f) => Err(ApiError::new(f.status, f.reason)),
        None => Ok(None),
    }
}

/// Applies the first matching injected fault, if any.
async fn inject_fault(sim: &Sim, method: &str, path: &str) -> Result<(), ApiError> {
    let hit = {
        let mut st = sim.lock();
        let i = st.faults.iter().position(|f| {
            f.count > 0
                && path.starts_with(&f.path_prefix)
                && f.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method))
        });
        match i.and_then(|i| st.faults.get_mut(i).map(|f| (i, f))) {
            Some((i, f)) => {
                f.count -= 1;
                let hit = f.clone();
                if f.count == 0 {
                    st.faults.remove(i);
                }
                Some(hit)
            }
            None => None,
        }
    };
    let Some(fault) = hit else { return Ok(()) };
    if let Some(ms) = fault.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
    }
    match fault.status {
        Some(status) => Err(ApiError::new(status, fault.reason.unwrap_or_else(|| "injected fault".into()))),
        None => Ok(()),
    }
}

/// Path parameters shared by the node and container routes.
const NODE: Prop = req("node", checked(64, checks::node));
const VMID: Prop = req("vmid", int(100, 999_999_999));

const BOOL: Ty = Ty::Bool;

/// `POST /nodes/{node}/lxc`.
const CREATE: &[Prop] = &[
    NODE,
    VMID,
    req("ostemplate", checked(255, checks::ostemplate)),
    opt("arch", Ty::Enum(&["amd64", "i386", "arm64", "armhf", "riscv32", "riscv64"])),
    opt("cmode", Ty::Enum(&["shell", "console", "tty"])),
    opt("console", BOOL),
    opt("cores", int(1, 8192)),
    opt("cpulimit", Ty::Num { min: 0.0, max: 8192.0 }),
    opt("cpuunits", int(0, 500_000)),
    opt("debug", BOOL),
    opt("description", text(8192)),
    opt("features", checked(256, checks::features)),
    opt("force", BOOL),
    opt("hookscript", text(255)),
    opt("hostname", checked(255, checks::dns_name)),
    opt("ignore-unpack-errors", BOOL),
    opt("memory", int(16, i64::MAX)),
    opt("nameserver", text(255)),
    opt("net[n]", checked(512, checks::net)),
    opt("onboot", BOOL),
    opt(
        "ostype",
        Ty::Enum(&[
            "debian",
            "devuan",
            "ubuntu",
            "centos",
            "fedora",
            "opensuse",
            "archlinux",
            "alpine",
            "gentoo",
            "nixos",
            "unmanaged",
        ]),
    ),
    opt("password", text(1024)),
    opt("pool", text(64)),
    opt("protection", BOOL),
    opt("restore", BOOL),
    opt("rootfs", checked(512, checks::rootfs)),
    opt("searchdomain", text(255)),
    opt("ssh-public-keys", text(65536)),
    opt("start", BOOL),
    opt("startup", text(128)),
    opt("storage", text(64)),
    opt("swap", int(0, i64::MAX)),
    opt("tags", checked(1024, checks::tags)),
    opt("template", BOOL),
    opt("timezone", text(64)),
    opt("tty", int(0, 6)),
    opt("unique", BOOL),
    opt("unprivileged", BOOL),
];

/// `PUT …/config`.
const UPDATE: &[Prop] = &[
    NODE,
    VMID,
    opt("arch", Ty::Enum(&["amd64", "i386", "arm64", "armhf", "riscv32", "riscv64"])),
    opt("cmode", Ty::Enum(&["shell", "console", "tty"])),
    opt("console", BOOL),
    opt("cores", int(1, 8192)),
    opt("cpulimit", Ty::Num { min: 0.0, max: 8192.0 }),
    opt("cpuunits", int(0, 500_000)),
    opt("delete", checked(4096, checks::config_keys)),
    opt("description", text(8192)),
    opt("digest", checked(64, checks::digest)),
    opt("features", checked(256, checks::features)),
    opt("hookscript", text(255)),
    opt("hostname", checked(255, checks::dns_name)),
    opt("memory", int(16, i64::MAX)),
    opt("nameserver", text(255)),
    opt("net[n]", checked(512, checks::net)),
    opt("onboot", BOOL),
    opt(
        "ostype",
        Ty::Enum(&[
            "debian",
            "devuan",
            "ubuntu",
            "centos",
            "fedora",
            "opensuse",
            "archlinux",
            "alpine",
            "gentoo",
            "nixos",
            "unmanaged",
        ]),
    ),
    opt("protection", BOOL),
    opt("revert", checked(4096, checks::config_keys)),
    opt("rootfs", text(512)),
    opt("searchdomain", text(255)),
    opt("startup", text(128)),
    opt("swap", int(0, i64::MAX)),
    opt("tags", checked(1024, checks::tags)),
    opt("timezone", text(64)),
    opt("tty", int(0, 6)),
    opt("unprivileged", BOOL),
];

/// Routes one authenticated API request.
async fn dispatch(sim: &Arc<Sim>, method: &str, path: &str, mut raw: RawParams, user: &str) -> ApiResult {
    let not_implemented = || ApiError::new(501, format!("Method '{method} {path}' not implemented"));
    let segs: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(percent_decode).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();

    match (method, segs.as_slice()) {
        ("GET", []) => Ok(json!([{"subdir": "version"}, {"subdir": "cluster"}, {"subdir": "nodes"}])),
        ("GET", ["version"]) => {
            params::check(&raw, &[])?;
            Ok(state::State::version())
        }
        ("GET", ["nodes"]) => {
            params::check(&raw, &[])?;
            Ok(sim.lock().nodes_json(sim.settings.fingerprint.as_deref()))
        }
        ("GET", ["cluster", "nextid"]) => {
            let p = params::check(&raw, &[opt("vmid", int(100, 999_999_999))])?;
            let wanted = p.int("vmid").and_then(|v| u32::try_from(v).ok());
            sim.lock().next_id(wanted)
        }
        ("GET", ["cluster", "resources"]) => {
            let p = params::check(&raw, &[opt("type", Ty::Enum(&["vm", "storage", "node", "sdn"]))])?;
            Ok(sim.lock().resources(sim.settings.resources_lag, p.str("type")))
        }
        (_, ["nodes", node, rest @ ..]) => {
            add_path(&mut raw, "node", node)?;
            let node_only = |raw: &RawParams, extra: &[Prop]| {
                let mut schema = vec![NODE];
                schema.extend_from_slice(extra);
                params::check(raw, &schema)
            };
            match (method, rest) {
                ("GET", ["status"]) => {
                    node_only(&raw, &[])?;
                    sim.lock().node_status(node)
                }
                ("GET", ["lxc"]) => {
                    node_only(&raw, &[])?;
                    known_node(sim, node)?;
                    Ok(sim.lock().lxc_list(node))
                }
                ("POST", ["lxc"]) => {
                    let p = params::check(&raw, CREATE)?;
                    known_node(sim, node)?;
                    state::create(sim, node, &p, user)
                }
                ("GET", ["tasks", upid, what @ ("status" | "log")]) => {
                    add_path(&mut raw, "upid", upid)?;
                    let extra: &[Prop] = if *what == "log" {
                        &[
                            req("upid", text(512)),
                            opt("start", int(0, i64::MAX)),
                            opt("limit", int(0, i64::MAX)),
                            opt("download", BOOL),
                        ]
                    } else {
                        &[req("upid", text(512))]
                    };
                    let p = node_only(&raw, extra)?;
                    known_node(sim, node)?;
                    let st = sim.lock();
                    if *what == "log" {
                        let start = usize::try_from(p.int("start").unwrap_or(0)).unwrap_or(usize::MAX);
                        let limit = usize::try_from(p.int("limit").unwrap_or(50)).unwrap_or(usize::MAX);
                        st.task_log(node, upid, start, limit)
                    } else {
                        st.task_status(node, upid)
                    }
                }
                (_, ["lxc", vmid, tail @ ..]) => {
                    add_path(&mut raw, "vmid", vmid)?;
                    lxc_route(sim, method, node, tail, &raw, user).await.map_err(|e| match e {
                        Some(e) => e,
                        None => not_implemented(),
                    })
                }
                _ => Err(not_implemented()),
            }
        }
        _ => Err(not_implemented()),
    }
}

/// The schema of a container route: node, vmid and `extra`.
fn ct_schema(extra: &[Prop]) -> Vec<Prop> {
    let mut schema = vec![NODE, VMID];
    schema.extend_from_slice(extra);
    schema
}

/// The per-container routes; `Err(None)` means "no such method".
async fn lxc_route(
    sim: &Arc<Sim>,
    method: &str,
    node: &str,
    tail: &[&str],
    raw: &RawParams,
    user: &str,
) -> Result<Value, Option<ApiError>> {
    let with = |extra: &[Prop]| params::check(raw, &ct_schema(extra));
    let result = match (method, tail) {
        ("GET", []) => with(&[]).and_then(|p| {
            let vmid = vmid_of(&p)?;
            sim.lock().ct_on(node, vmid)?;
            Ok(json!([{"subdir": "config"}, {"subdir": "status"}, {"subdir": "interfaces"}, {"subdir": "resize"}]))
        }),
        ("DELETE", []) => {
            let p = with(&[opt("purge", BOOL), opt("destroy-unreferenced-disks", BOOL), opt("force", BOOL)])?;
            let vmid = vmid_of(&p)?;
            known_node(sim, node)?;
            state::destroy(sim, node, vmid, &p, user).await
        }
        ("GET", ["config"]) => with(&[opt("current", BOOL), opt("snapshot", text(64))]).and_then(|p| {
            known_node(sim, node)?;
            sim.lock().lxc_config(node, vmid_of(&p)?)
        }),
        ("PUT", ["config"]) => {
            let p = params::check(raw, UPDATE)?;
            let vmid = vmid_of(&p)?;
            known_node(sim, node)?;
            state::update_config(sim, node, vmid, &p).await
        }
        ("PUT", ["resize"]) => {
            let p = with(&[
                req("disk", checked(16, checks::disk)),
                req("size", checked(32, checks::size)),
                opt("digest", checked(64, checks::digest)),
            ])?;
            let vmid = vmid_of(&p)?;
            known_node(sim, node)?;
            state::resize(sim, node, vmid, &p, user).await
        }
        ("GET", ["interfaces"]) => with(&[]).and_then(|p| {
            known_node(sim, node)?;
            sim.lock().interfaces(node, vmid_of(&p)?, &sim.settings)
        }),
        ("GET", ["status"]) => with(&[]).and_then(|p| {
            sim.lock().ct_on(node, vmid_of(&p)?)?;
            Ok(json!([
                {"subdir": "current"}, {"subdir": "start"}, {"subdir": "stop"}, {"subdir": "shutdown"}, {"subdir": "reboot"}
            ]))
        }),
        ("GET", ["status", "current"]) => with(&[]).and_then(|p| {
            known_node(sim, node)?;
            sim.lock().lxc_status(node, vmid_of(&p)?)
        }),
        ("POST", ["status", action]) => {
            let (action, extra): (Power, &[Prop]) = match *action {
                "start" => (Power::Start, &[opt("skiplock", BOOL), opt("debug", BOOL)]),
                "stop" => (Power::Stop, &[opt("skiplock", BOOL), opt("overrule-shutdown", BOOL)]),
                "shutdown" => (Power::Shutdown, &[opt("timeout", int(0, i64::MAX)), opt("forceStop", BOOL)]),
                "reboot" => (Power::Reboot, &[opt("timeout", int(0, i64::MAX))]),
                _ => return Err(None),
            };
            let p = with(extra)?;
            let vmid = vmid_of(&p)?;
            known_node(sim, node)?;
            state::power(sim, node, vmid, action, &p, user).await
        }
        // PVE answers 501 before looking at any parameter.
        _ => return Err(None),
    };
    result.map_err(Some)
}

/// Adds a path parameter; it is checked like body parameters (PVE merges them).
fn add_path(raw: &mut RawParams, name: &str, value: &str) -> Result<(), ApiError> {
    if raw.insert(name.to_string(), params::Raw::Text(value.to_string())).is_some() {
        let errors = BTreeMap::from([(name.to_string(), "duplicate parameter (also in the path)".to_string())]);
        return Err(ApiError::params(errors));
    }
    Ok(())
}

fn vmid_of(p: &params::Params) -> Result<u32, ApiError> {
    p.int("vmid").and_then(|v| u32::try_from(v).ok()).ok_or_else(|| ApiError::new(500, "missing vmid"))
}

fn known_node(sim: &Sim, node: &str) -> Result<(), ApiError> {
    if sim.lock().node(node).is_some() { Ok(()) } else { Err(no_such_node(node)) }
}

/// Decodes `%XX` escapes in a path segment (invalid escapes stay as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
