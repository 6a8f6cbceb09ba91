//! The browser approval app: an installable page (PWA) that Portcullis
//! serves itself, so a phone's browser can be an approval device without an
//! app store.
//!
//! - `GET /approve`: the app (challenges, Approve / Deny / "This wasn't me").
//! - `GET /mfa/enroll`: the same app; enrollment links are
//!   `ISSUER/mfa/enroll#TOKEN`, and the token stays in the fragment, which
//!   browsers never send to a server.
//! - `GET /approve/{app.js,app.css,sw.js,manifest.webmanifest,icon.svg}`:
//!   its static files (`static/approve/`, embedded at build time), with an
//!   ETag so browsers revalidate instead of refetching.
//! - `GET /api/mfa/vapid-public-key`: the VAPID key a browser subscribes
//!   with (`{"key": …}`), 404 when Web Push is off.
//!
//! Everything the app does runs in the browser against the device API
//! (`web/device.rs`): it makes a non-extractable P-256 key with WebCrypto,
//! keeps it in IndexedDB and signs requests and decisions exactly as the
//! reference device does. This module only serves files: it holds no
//! challenge, device or key logic, and every response forbids inline script,
//! framing and other origins.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::AppState;

/// The policy on every response of the app: scripts, styles, images, the
/// manifest, the service worker and fetches from this origin only; no
/// inline script or style, no framing, no forms posted anywhere.
pub(super) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; manifest-src 'self'; worker-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'none'";

/// One embedded file and how it is served.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    /// A strong ETag over the body, so a new build's files are fetched anew.
    etag: LazyLock<String>,
}

macro_rules! asset {
    ($file:literal, $type:literal) => {
        Asset {
            body: include_str!(concat!("../../static/approve/", $file)),
            content_type: $type,
            etag: LazyLock::new(|| etag(include_str!(concat!("../../static/approve/", $file)))),
        }
    };
}

static PAGE: Asset = asset!("index.html", "text/html; charset=utf-8");
static APP_JS: Asset = asset!("app.js", "text/javascript; charset=utf-8");
static APP_CSS: Asset = asset!("app.css", "text/css; charset=utf-8");
static SW_JS: Asset = asset!("sw.js", "text/javascript; charset=utf-8");
static MANIFEST: Asset = asset!("manifest.webmanifest", "application/manifest+json");
static ICON: Asset = asset!("icon.svg", "image/svg+xml");

fn etag(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// The approval app's routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/approve", get(|h: HeaderMap| async move { serve(&PAGE, &h, None) }))
        .route("/mfa/enroll", get(|h: HeaderMap| async move { serve(&PAGE, &h, None) }))
        .route("/approve/app.js", get(|h: HeaderMap| async move { serve(&APP_JS, &h, None) }))
        .route("/approve/app.css", get(|h: HeaderMap| async move { serve(&APP_CSS, &h, None) }))
        // The worker's scope is `/approve` (the page itself has no trailing
        // slash), one level above the script's folder: the header allows it.
        .route("/approve/sw.js", get(|h: HeaderMap| async move { serve(&SW_JS, &h, Some("/approve")) }))
        .route("/approve/manifest.webmanifest", get(|h: HeaderMap| async move { serve(&MANIFEST, &h, None) }))
        .route("/approve/icon.svg", get(|h: HeaderMap| async move { serve(&ICON, &h, None) }))
        .route("/api/mfa/vapid-public-key", get(vapid_public_key))
}

/// An embedded file with the app's headers; 304 when the browser's copy is
/// current.
fn serve(asset: &Asset, request: &HeaderMap, worker_scope: Option<&'static str>) -> Response {
    let etag = asset.etag.as_str();
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let h = r.headers_mut();
    if !fresh {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    }
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    // Cached, but revalidated on every use (a 304 costs a round trip only).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(scope) = worker_scope {
        h.insert("service-worker-allowed", HeaderValue::from_static(scope));
    }
    security_headers(h);
    r
}

fn security_headers(h: &mut HeaderMap) {
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}

/// `GET /api/mfa/vapid-public-key`: `{"key": …}` (base64url, uncompressed
/// P-256 point), or 404 when Web Push is not configured.
async fn vapid_public_key(State(state): State<AppState>) -> Response {
    let mut r = match state.vapid_public_key.as_deref() {
        Some(key) => axum::Json(json!({ "key": key })).into_response(),
        None => (StatusCode::NOT_FOUND, axum::Json(json!({ "error": "Web Push is not configured" }))).into_response(),
    };
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    security_headers(h);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_no_inline_script_and_no_other_origin() {
        let directives: Vec<&str> = CSP.split(';').map(str::trim).collect();
        let script = directives.iter().find(|d| d.starts_with("script-src")).unwrap();
        assert_eq!(*script, "script-src 'self'");
        assert!(!CSP.contains("unsafe"), "{CSP}");
        assert!(!CSP.contains("http") && !CSP.contains('*'), "no other origin: {CSP}");
        for needed in ["default-src 'none'", "connect-src 'self'", "frame-ancestors 'none'", "worker-src 'self'"] {
            assert!(directives.contains(&needed), "missing {needed}: {CSP}");
        }
    }

    #[test]
    fn the_files_carry_no_inline_script_style_or_other_origin() {
        let page = PAGE.body;
        // Every script element loads a file of ours; no handler attributes.
        assert_eq!(page.matches("<script").count(), page.matches("<script src=\"/approve/").count());
        assert!(!page.contains("<style") && !page.contains(" style=") && !page.contains(" onclick"), "{page}");
        for file in [PAGE.body, APP_JS.body, APP_CSS.body, SW_JS.body, MANIFEST.body] {
            assert!(!file.contains("http://") && !file.contains("https://"), "an external resource");
            assert!(!file.contains("innerHTML") && !file.contains("eval("), "no markup from strings");
        }
        let manifest: serde_json::Value = serde_json::from_str(MANIFEST.body).unwrap();
        assert_eq!(manifest["start_url"], "/approve");
        assert_eq!(manifest["scope"], "/approve");
        // The SVG is an image, not a document: no script in it.
        assert!(!ICON.body.contains("<script"));
    }

    #[test]
    fn assets_revalidate_with_their_etag() {
        let mut h = HeaderMap::new();
        let r = serve(&APP_JS, &h, None);
        assert_eq!(r.status(), StatusCode::OK);
        let tag = r.headers()[header::ETAG].clone();
        assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        h.insert(header::IF_NONE_MATCH, tag);
        assert_eq!(serve(&APP_JS, &h, None).status(), StatusCode::NOT_MODIFIED);
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"stale\""));
        assert_eq!(serve(&APP_JS, &h, None).status(), StatusCode::OK);
        let sw = serve(&SW_JS, &HeaderMap::new(), Some("/approve"));
        assert_eq!(sw.headers()["service-worker-allowed"], "/approve");
    }
}
