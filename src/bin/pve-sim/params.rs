//! Request parameters the way pveproxy and PVE's JSONSchema treat them:
//! query string and body (form or JSON) merged, then checked strictly
//! against each method's schema. Unknown parameters, `"True"` booleans,
//! out-of-range numbers and malformed property strings all become a 400
//! "Parameter verification failed." with one message per parameter.

use std::collections::BTreeMap;

use crate::api::ApiError;
use crate::format;

/// A raw parameter value: text from a query string or form, or a JSON scalar.
#[derive(Debug, Clone)]
pub(crate) enum Raw {
    Text(String),
    Json(serde_json::Value),
}

impl Raw {
    /// The value as PVE would show it in an error message.
    fn shown(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Json(serde_json::Value::String(s)) => s.clone(),
            Self::Json(v) => v.to_string(),
        }
    }

    /// The value for the request log.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Text(s) => serde_json::Value::String(s.clone()),
            Self::Json(v) => v.clone(),
        }
    }
}

/// The raw parameters of one request.
pub(crate) type RawParams = BTreeMap<String, Raw>;

/// Most parameters one request may carry (PVE has no such limit, but a
/// simulator must not be made to allocate without bound).
const MAX_PARAMS: usize = 200;

/// Merges `query` and `body` into one map. Errors: a repeated parameter, a
/// JSON body that is not an object of scalars, an unsupported content type.
pub(crate) fn collect(query: Option<&str>, content_type: Option<&str>, body: &[u8]) -> Result<RawParams, ApiError> {
    let mut params = RawParams::new();
    let mut errors = BTreeMap::new();
    let add = |params: &mut RawParams, errors: &mut BTreeMap<String, String>, k: String, v: Raw| {
        if params.contains_key(&k) {
            errors.insert(k, "duplicate parameter (multiple values are not supported)".to_string());
        } else if params.len() < MAX_PARAMS {
            params.insert(k, v);
        }
    };
    if let Some(q) = query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            add(&mut params, &mut errors, k.into_owned(), Raw::Text(v.into_owned()));
        }
    }
    let ct = content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !body.iter().all(u8::is_ascii_whitespace) {
        match ct.as_str() {
            "application/json" => {
                let value: serde_json::Value = serde_json::from_slice(body)
                    .map_err(|e| ApiError::new(400, format!("malformed JSON body: {e}")))?;
                let serde_json::Value::Object(map) = value else {
                    return Err(ApiError::new(400, "malformed JSON body: not an object"));
                };
                for (k, v) in map {
                    match v {
                        serde_json::Value::Null => {}
                        serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
                            errors.insert(k, "type check failed - got a JSON array or object".to_string());
                        }
                        scalar => add(&mut params, &mut errors, k, Raw::Json(scalar)),
                    }
                }
            }
            "application/x-www-form-urlencoded" | "" => {
                for (k, v) in form_urlencoded::parse(body) {
                    add(&mut params, &mut errors, k.into_owned(), Raw::Text(v.into_owned()));
                }
            }
            other => return Err(ApiError::new(415, format!("Unsupported content type '{other}'"))),
        }
    }
    if errors.is_empty() { Ok(params) } else { Err(ApiError::params(errors)) }
}

/// A check applied to a string after the type check; returns PVE's text
/// that follows "invalid format - ".
pub(crate) type Check = fn(&str) -> Result<(), String>;

/// A parameter's type.
#[derive(Clone, Copy)]
pub(crate) enum Ty {
    Bool,
    Int { min: i64, max: i64 },
    Num { min: f64, max: f64 },
    Str { max: usize, check: Option<Check> },
    Enum(&'static [&'static str]),
}

/// One schema entry.
#[derive(Clone, Copy)]
pub(crate) struct Prop {
    pub(crate) name: &'static str,
    pub(crate) ty: Ty,
    pub(crate) required: bool,
}

/// An optional parameter.
pub(crate) const fn opt(name: &'static str, ty: Ty) -> Prop {
    Prop { name, ty, required: false }
}

/// A required parameter.
pub(crate) const fn req(name: &'static str, ty: Ty) -> Prop {
    Prop { name, ty, required: true }
}

/// A free string of at most `max` bytes.
pub(crate) const fn text(max: usize) -> Ty {
    Ty::Str { max, check: None }
}

/// A string of at most `max` bytes that must pass `check`.
pub(crate) const fn checked(max: usize, check: Check) -> Ty {
    Ty::Str { max, check: Some(check) }
}

/// An integer in `min..=max`.
pub(crate) const fn int(min: i64, max: i64) -> Ty {
    Ty::Int { min, max }
}

/// A checked parameter value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(String),
}

/// The checked parameters of one request.
#[derive(Debug, Default)]
pub(crate) struct Params(pub(crate) BTreeMap<String, Val>);

impl Params {
    pub(crate) fn has(&self, k: &str) -> bool {
        self.0.contains_key(k)
    }

    pub(crate) fn str(&self, k: &str) -> Option<&str> {
        match self.0.get(k) {
            Some(Val::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn int(&self, k: &str) -> Option<i64> {
        match self.0.get(k) {
            Some(Val::Int(n)) => Some(*n),
            _ => None,
        }
    }

    pub(crate) fn bool(&self, k: &str) -> bool {
        matches!(self.0.get(k), Some(Val::Bool(true)))
    }

    /// The value as a config entry (booleans as 0/1, as PVE stores them).
    pub(crate) fn conf_value(&self, k: &str) -> Option<serde_json::Value> {
        Some(match self.0.get(k)? {
            Val::Bool(b) => serde_json::Value::from(u8::from(*b)),
            Val::Int(n) => serde_json::Value::from(*n),
            Val::Num(f) => serde_json::Value::from(*f),
            Val::Str(s) => serde_json::Value::from(s.clone()),
        })
    }
}

/// Checks `raw` against `schema` (names ending in `[n]` stand for `name0`
/// to `name9`). Every problem is reported at once, one per parameter.
pub(crate) fn check(raw: &RawParams, schema: &[Prop]) -> Result<Params, ApiError> {
    let mut errors = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (name, value) in raw {
        let Some(prop) = lookup(schema, name) else {
            errors.insert(
                name.clone(),
                "property is not defined in schema and the schema does not allow additional properties".to_string(),
            );
            continue;
        };
        match check_one(prop.ty, value) {
            Ok(v) => {
                out.insert(name.clone(), v);
            }
            Err(e) => {
                errors.insert(name.clone(), e);
            }
        }
    }
    for prop in schema.iter().filter(|p| p.required) {
        if !raw.contains_key(prop.name) {
            errors.insert(prop.name.to_string(), "property is missing and it is not optional".to_string());
        }
    }
    if errors.is_empty() { Ok(Params(out)) } else { Err(ApiError::params(errors)) }
}

fn lookup<'a>(schema: &'a [Prop], name: &str) -> Option<&'a Prop> {
    schema.iter().find(|p| match p.name.strip_suffix("[n]") {
        Some(base) => name.strip_prefix(base).is_some_and(|n| n.len() == 1 && n.bytes().all(|b| b.is_ascii_digit())),
        None => p.name == name,
    })
}

fn check_one(ty: Ty, value: &Raw) -> Result<Val, String> {
    let shown = value.shown();
    match ty {
        Ty::Bool => match value {
            Raw::Json(serde_json::Value::Bool(b)) => Ok(Val::Bool(*b)),
            _ if shown == "1" => Ok(Val::Bool(true)),
            _ if shown == "0" => Ok(Val::Bool(false)),
            _ => Err(format!("type check ('boolean') failed - got '{shown}'")),
        },
        Ty::Int { min, max } => {
            let n = match value {
                Raw::Json(serde_json::Value::Bool(_)) => None,
                _ => shown.parse::<i64>().ok().filter(|_| !shown.starts_with('+')),
            }
            .ok_or_else(|| format!("type check ('integer') failed - got '{shown}'"))?;
            if n < min {
                Err(format!("value must have a minimum value of {min}"))
            } else if n > max {
                Err(format!("value must have a maximum value of {max}"))
            } else {
                Ok(Val::Int(n))
            }
        }
        Ty::Num { min, max } => {
            let n = match value {
                Raw::Json(serde_json::Value::Bool(_)) => None,
                _ => shown.parse::<f64>().ok().filter(|f| f.is_finite()),
            }
            .ok_or_else(|| format!("type check ('number') failed - got '{shown}'"))?;
            if n < min {
                Err(format!("value must have a minimum value of {min}"))
            } else if n > max {
                Err(format!("value must have a maximum value of {max}"))
            } else {
                Ok(Val::Num(n))
            }
        }
        Ty::Str { max, check } => {
            if matches!(value, Raw::Json(serde_json::Value::Bool(_))) {
                return Err(format!("type check ('string') failed - got '{shown}'"));
            }
            if shown.len() > max {
                return Err(format!("value may only be {max} characters long"));
            }
            if shown.contains('\0') {
                return Err("invalid format - value contains a NUL character".into());
            }
            if let Some(check) = check {
                check(&shown).map_err(|e| format!("invalid format - {e}"))?;
            }
            Ok(Val::Str(shown))
        }
        Ty::Enum(allowed) => {
            if allowed.contains(&shown.as_str()) {
                Ok(Val::Str(shown))
            } else {
                Err(format!("value '{shown}' does not have a value in the enumeration '{}'", allowed.join(", ")))
            }
        }
    }
}

/// Shared checks used by several schemas.
pub(crate) mod checks {
    use super::format;

    pub(crate) fn dns_name(s: &str) -> Result<(), String> {
        format::check_dns_name(s)
    }

    pub(crate) fn node(s: &str) -> Result<(), String> {
        format::check_node_name(s)
    }

    pub(crate) fn tags(s: &str) -> Result<(), String> {
        format::normalise_tags(s).map(|_| ())
    }

    pub(crate) fn net(s: &str) -> Result<(), String> {
        format::normalise_net(s, "BC:24:11:00:00:00").map(|_| ())
    }

    pub(crate) fn rootfs(s: &str) -> Result<(), String> {
        format::parse_rootfs_create(s).map(|_| ())
    }

    pub(crate) fn features(s: &str) -> Result<(), String> {
        format::normalise_features(s).map(|_| ())
    }

    pub(crate) fn ostemplate(s: &str) -> Result<(), String> {
        match s.split_once(':') {
            Some((storage, path)) if !storage.is_empty() && path.starts_with("vztmpl/") && path.len() > 7 => Ok(()),
            _ => Err(format!("unable to parse volume ID '{s}'")),
        }
    }

    pub(crate) fn digest(s: &str) -> Result<(), String> {
        if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err("value does not look like a config digest".into())
        }
    }

    pub(crate) fn size(s: &str) -> Result<(), String> {
        let t = s.strip_prefix('+').unwrap_or(s);
        if format::parse_size(t, 1).is_some() {
            Ok(())
        } else {
            Err(format!("value does not match the regex pattern ('\\+?\\d+(\\.\\d+)?[KMGT]?') - got '{s}'"))
        }
    }

    pub(crate) fn disk(s: &str) -> Result<(), String> {
        let ok = s == "rootfs"
            || s.strip_prefix("mp").is_some_and(|n| n.parse::<u16>().is_ok_and(|n| n <= 255) && !n.starts_with('+'));
        if ok { Ok(()) } else { Err(format!("value '{s}' is not a mount point key")) }
    }

    pub(crate) fn config_keys(s: &str) -> Result<(), String> {
        if s.split([',', ';', ' '])
            .filter(|k| !k.is_empty())
            .all(|k| k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            Ok(())
        } else {
            Err("value does not look like a list of option names".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_types() {
        let schema =
            [req("vmid", int(100, 999_999_999)), opt("start", Ty::Bool), opt("net[n]", checked(512, checks::net))];
        let raw =
            |pairs: &[(&str, Raw)]| pairs.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect::<RawParams>();
        let ok = check(&raw(&[("vmid", Raw::Text("101".into())), ("start", Raw::Json(true.into()))]), &schema).unwrap();
        assert!(ok.bool("start"));
        let e = check(
            &raw(&[
                ("vmid", Raw::Text("99".into())),
                ("start", Raw::Text("True".into())),
                ("net10", Raw::Text("x".into())),
            ]),
            &schema,
        )
        .unwrap_err();
        assert_eq!(e.errors["start"], "type check ('boolean') failed - got 'True'");
        assert_eq!(e.errors["vmid"], "value must have a minimum value of 100");
        assert!(e.errors["net10"].starts_with("property is not defined"));
        let e = check(&raw(&[("start", Raw::Text("true".into()))]), &schema).unwrap_err();
        assert!(e.errors.contains_key("vmid") && e.errors.contains_key("start"));
    }

    #[test]
    fn collect_rejects_duplicates_and_non_scalars() {
        assert!(collect(Some("a=1&a=2"), None, b"").is_err());
        assert!(collect(Some("a=1"), Some("application/x-www-form-urlencoded"), b"a=2").is_err());
        assert!(collect(None, Some("application/json"), br#"{"a":[1]}"#).is_err());
        assert!(collect(None, Some("application/json"), b"[1]").is_err());
        let p = collect(Some("x=1"), Some("application/json; charset=utf-8"), br#"{"a":true,"b":null}"#).unwrap();
        assert_eq!(p.len(), 2);
        assert!(collect(None, Some("text/plain"), b"a").is_err());
    }
}
