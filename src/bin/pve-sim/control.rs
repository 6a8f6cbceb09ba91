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
use crate::state::{Fault, Sim, TaskFail};

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
        ("POST", ["faults"]) => add_faults(sim, body),
        ("DELETE", ["faults"]) => {
            let mut st = sim.lock();
            st.faults.clear();
            st.task_fails.clear();
            st.nextid_collisions = 0;
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

/// `POST /_sim/faults`: a JSON object with a request fault (`path_prefix`,
/// `method`, `status`, `reason`, `count`, `delay_ms`), `nextid_collision`
/// and/or `task_fail` (`type`, `message`, `count`).
fn add_faults(sim: &Sim, body: &[u8]) -> Response {
    let mut map: serde_json::Map<String, Value> = match serde_json::from_slice(body) {
        Ok(m) => m,
        Err(e) => return bad(StatusCode::BAD_REQUEST, format!("expected a JSON object: {e}")),
    };
    let collisions = match map.remove("nextid_collision").map(serde_json::from_value::<u32>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => return bad(StatusCode::BAD_REQUEST, format!("nextid_collision: {e}")),
    };
    let task_fail = match map.remove("task_fail").map(serde_json::from_value::<TaskFail>) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return bad(StatusCode::BAD_REQUEST, format!("task_fail: {e}")),
    };
    let fault = if map.is_empty() {
        None
    } else {
        match serde_json::from_value::<Fault>(Value::Object(map)) {
            Ok(f) => Some(f),
            Err(e) => return bad(StatusCode::BAD_REQUEST, format!("invalid fault: {e}")),
        }
    };
    if fault.is_none() && collisions.is_none() && task_fail.is_none() {
        return bad(StatusCode::BAD_REQUEST, "give path_prefix, nextid_collision or task_fail");
    }
    let mut st = sim.lock();
    if st.faults.len() + st.task_fails.len() >= MAX_FAULTS {
        return bad(StatusCode::BAD_REQUEST, "too many pending faults");
    }
    if let Some(f) = fault {
        if f.status.is_some_and(|s| !(400..=999).contains(&s)) {
            return bad(StatusCode::BAD_REQUEST, "status must be 400-999");
        }
        st.faults.push(f);
    }
    if let Some(n) = collisions {
        st.nextid_collisions = st.nextid_collisions.saturating_add(n);
    }
    if let Some(t) = task_fail {
        st.task_fails.push(t);
    }
    ok_response(Value::Null)
}
