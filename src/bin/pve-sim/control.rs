//! The test control API under `/_sim/` (not part of PVE, no auth): fault
//! injection, out-of-band changes and introspection. See the crate doc in
//! `main.rs` for the list. Answers `{"data": …}` or `{"error": "…"}` with
//! 400/404.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::api::ok_response;
use crate::state::{Fault, Latency, RateFault, Sim, TaskFail};

/// Most faults that may be pending at once.
const MAX_FAULTS: usize = 1_000;

fn bad(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// Handles one control request.
pub(crate) fn handle(sim: &Arc<Sim>, method: &str, path: &str, body: &[u8]) -> Response {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).skip(1).collect();
    match (method, segs.as_slice()) {
        ("GET", ["state"]) => ok_response(sim.lock().dump()),
        ("GET", ["requests"]) => ok_response(Value::Array(sim.lock().requests.iter().cloned().collect())),
        ("DELETE", ["requests"]) => {
            sim.lock().requests.clear();
            ok_response(Value::Null)
        }
        ("GET", ["stats"]) => ok_response(sim.lock().stats.dump()),
        ("DELETE", ["stats"]) => {
            sim.lock().stats.reset();
            ok_response(Value::Null)
        }
        ("POST", ["faults"]) => match add_faults(sim, body) {
            Ok(()) => ok_response(Value::Null),
            Err(e) => bad(StatusCode::BAD_REQUEST, e),
        },
        ("DELETE", ["faults"]) => {
            let mut st = sim.lock();
            st.faults.clear();
            st.task_fails.clear();
            st.nextid_collisions = 0;
            st.chaos.clear();
            ok_response(Value::Null)
        }
        ("POST", ["lxc", vmid, action @ ("stop" | "start")]) => {
            let Ok(vmid) = vmid.parse::<u32>() else { return bad(StatusCode::BAD_REQUEST, "bad vmid") };
            let mut st = sim.lock();
            let Some(ct) = st.cts.get_mut(&vmid) else { return bad(StatusCode::NOT_FOUND, "no such container") };
            ct.running = *action == "start";
            ct.started = ct.running.then(std::time::Instant::now);
            ok_response(Value::Null)
        }
        ("POST", ["lxc", vmid, "config"]) => {
            let Ok(vmid) = vmid.parse::<u32>() else { return bad(StatusCode::BAD_REQUEST, "bad vmid") };
            let changes: BTreeMap<String, Value> = match serde_json::from_slice(body) {
                Ok(c) => c,
                Err(e) => return bad(StatusCode::BAD_REQUEST, format!("expected a JSON object: {e}")),
            };
            let mut st = sim.lock();
            let Some(ct) = st.cts.get_mut(&vmid) else { return bad(StatusCode::NOT_FOUND, "no such container") };
            for (k, v) in changes {
                match v {
                    Value::Null => {
                        ct.conf.remove(&k);
                    }
                    Value::String(_) | Value::Number(_) => {
                        ct.conf.insert(k, v);
                    }
                    _ => return bad(StatusCode::BAD_REQUEST, format!("{k}: values are strings, numbers or null")),
                }
            }
            ok_response(Value::Null)
        }
        ("DELETE", ["lxc", vmid]) => {
            let Ok(vmid) = vmid.parse::<u32>() else { return bad(StatusCode::BAD_REQUEST, "bad vmid") };
            match sim.lock().cts.remove(&vmid) {
                Some(_) => ok_response(Value::Null),
                None => bad(StatusCode::NOT_FOUND, "no such container"),
            }
        }
        _ => bad(StatusCode::NOT_FOUND, format!("no control endpoint {method} {path}")),
    }
}

/// What `error_rate` and `latency_ms` rules apply to, and how a rate
/// fault answers.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleOptions {
    #[serde(default)]
    path_prefix: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    after: bool,
}

/// `{"lock_contention": {"rate": R}}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LockContention {
    rate: f64,
}

/// Removes `key` from `map` and decodes it.
fn take<T: serde::de::DeserializeOwned>(
    map: &mut serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<T>, String> {
    map.remove(key).map(|v| serde_json::from_value(v).map_err(|e| format!("{key}: {e}"))).transpose()
}

fn rate(name: &str, value: Option<f64>) -> Result<Option<f64>, String> {
    match value {
        Some(r) if !(0.0..=1.0).contains(&r) => Err(format!("{name} must be between 0 and 1")),
        other => Ok(other),
    }
}

/// `POST /_sim/faults`: a JSON object with any of a counted request fault
/// (`path_prefix`, `method`, `status`, `reason`, `count`, `delay_ms`),
/// `nextid_collision`, `task_fail` (`type`, `message`, `count`), a rate
/// fault (`error_rate` with `path_prefix`, `method`, `status`, `reason`,
/// `after`), `latency_ms` (with `path_prefix`, `method`),
/// `lock_contention` (`rate`), `nextid_collision_rate`, `node_offline`,
/// `node_online` and `seed`. Nothing changes unless all of it is valid.
fn add_faults(sim: &Sim, body: &[u8]) -> Result<(), String> {
    let mut map: serde_json::Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| format!("expected a JSON object: {e}"))?;
    let seed = take::<u64>(&mut map, "seed")?;
    let collisions = take::<u32>(&mut map, "nextid_collision")?;
    let collision_rate = rate("nextid_collision_rate", take::<f64>(&mut map, "nextid_collision_rate")?)?;
    let task_fail = take::<TaskFail>(&mut map, "task_fail")?;
    let contention = take::<LockContention>(&mut map, "lock_contention")?;
    let contention = rate("lock_contention.rate", contention.map(|c| c.rate))?;
    let offline = take::<String>(&mut map, "node_offline")?;
    let online = take::<String>(&mut map, "node_online")?;
    let error_rate = rate("error_rate", take::<f64>(&mut map, "error_rate")?)?;
    let latency_ms = take::<u64>(&mut map, "latency_ms")?;

    let mut fault = None;
    let mut rate_fault = None;
    let mut latency = None;
    if error_rate.is_some() || latency_ms.is_some() {
        let o: RuleOptions = serde_json::from_value(Value::Object(map)).map_err(|e| format!("invalid rule: {e}"))?;
        if error_rate.is_none() && (o.status.is_some() || o.reason.is_some() || o.after) {
            return Err("status, reason and after need error_rate".into());
        }
        if latency_ms.is_some_and(|ms| ms > 600_000) {
            return Err("latency_ms must be at most 600000".into());
        }
        let status = o.status.unwrap_or(500);
        if !(400..=999).contains(&status) {
            return Err("status must be 400-999".into());
        }
        rate_fault = error_rate.map(|r| RateFault {
            path_prefix: o.path_prefix.clone(),
            method: o.method.clone(),
            error_rate: r,
            status,
            reason: o.reason.clone().unwrap_or_else(|| "injected fault".into()),
            after: o.after,
        });
        latency = latency_ms.map(|ms| Latency { path_prefix: o.path_prefix, method: o.method, latency_ms: ms });
    } else if !map.is_empty() {
        let f: Fault = serde_json::from_value(Value::Object(map)).map_err(|e| format!("invalid fault: {e}"))?;
        if f.status.is_some_and(|s| !(400..=999).contains(&s)) {
            return Err("status must be 400-999".into());
        }
        fault = Some(f);
    }
    let given = [
        fault.is_some(),
        rate_fault.is_some(),
        latency.is_some(),
        seed.is_some(),
        collisions.is_some(),
        collision_rate.is_some(),
        task_fail.is_some(),
        contention.is_some(),
        offline.is_some(),
        online.is_some(),
    ];
    if !given.contains(&true) {
        return Err("give path_prefix, error_rate, latency_ms, lock_contention, nextid_collision, \
                    nextid_collision_rate, node_offline, node_online, task_fail or seed"
            .into());
    }

    let mut st = sim.lock();
    for name in offline.iter().chain(online.iter()) {
        if st.node(name).is_none() {
            return Err(format!("no node {name:?}"));
        }
    }
    let pending = st.faults.len() + st.task_fails.len() + st.chaos.rate_faults.len() + st.chaos.latency.len();
    let adding =
        [fault.is_some(), task_fail.is_some(), rate_fault.is_some(), latency.is_some()].iter().filter(|a| **a).count();
    if pending + adding > MAX_FAULTS {
        return Err("too many pending faults".into());
    }
    if let Some(seed) = seed {
        st.chaos.reseed(seed);
    }
    if let Some(f) = fault {
        st.faults.push(f);
    }
    if let Some(n) = collisions {
        st.nextid_collisions = st.nextid_collisions.saturating_add(n);
    }
    if let Some(r) = collision_rate {
        st.chaos.nextid_collision_rate = r;
    }
    if let Some(t) = task_fail {
        st.task_fails.push(t);
    }
    if let Some(r) = contention {
        st.chaos.lock_contention = r;
    }
    if let Some(f) = rate_fault {
        st.chaos.rate_faults.push(f);
    }
    if let Some(l) = latency {
        st.chaos.latency.push(l);
    }
    if let Some(name) = offline {
        st.chaos.offline.insert(name);
    }
    if let Some(name) = online {
        st.chaos.offline.remove(&name);
    }
    Ok(())
}
