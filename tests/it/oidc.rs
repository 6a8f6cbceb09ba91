//! The OpenID provider so far: discovery, JWKS, client registration, the
//! authorization-code flow with PKCE and web sign-in, userinfo, the
//! client_credentials grant and back-channel logout, checked by Authlib (a
//! real relying-party library with its own JOSE code, driven like a browser),
//! curl, and a stand-in back-channel endpoint.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::{TestServer, require_tool, wait_until};

/// The Python with Authlib that scripts/test prepares.
fn python() -> PathBuf {
    let path = std::env::var_os("AUTHLIB_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".test-venv/bin/python"));
    assert!(
        path.exists(),
        "{} not found: run ./scripts/test (it creates the Python venv with Authlib)",
        path.display()
    );
    path
}

fn authlib(server: &TestServer, args: &[&str]) -> Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc/authlib_client_credentials.py");
    let ca = server.ca_path();
    let mut all = vec![script.to_str().expect("utf-8"), "", ca.to_str().expect("utf-8")];
    let issuer = server.issuer();
    all[1] = &issuer;
    all.extend_from_slice(args);
    Command::new(python()).args(&all).output().expect("run the Authlib client")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "Authlib client failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON from the Authlib client")
}

fn curl(server: &TestServer, args: &[&str]) -> String {
    require_tool("curl");
    let ca = server.ca_path();
    let out = Command::new("curl")
        .args(["-s", "--cacert", ca.to_str().expect("utf-8")])
        .args(args)
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn add_client(server: &TestServer, name: &str) -> String {
    let out = server.cli(&["oidc", "client", "add", name, "--redirect-uri", "https://app.example.org/cb"], None);
    out.lines().find_map(|l| l.strip_prefix("client_secret: ")).expect("secret printed once").to_string()
}

#[test]
fn client_credentials_with_authlib_and_key_rotation() {
    let server = TestServer::start();
    let secret = add_client(&server, "reports");
    server.settle();

    // Discovery is truthful: only what is implemented.
    let meta: serde_json::Value =
        serde_json::from_str(&curl(&server, &[&format!("{}/.well-known/openid-configuration", server.issuer())]))
            .expect("discovery JSON");
    assert_eq!(meta["issuer"], server.issuer());
    assert_eq!(
        meta["grant_types_supported"],
        serde_json::json!(["authorization_code", "refresh_token", "client_credentials"])
    );
    assert_eq!(meta["code_challenge_methods_supported"], serde_json::json!(["S256"]));
    assert_eq!(meta["end_session_endpoint"], format!("{}/oidc/logout", server.issuer()));
    assert_eq!(meta["authorization_response_iss_parameter_supported"], true);

    let first = json(&authlib(&server, &["reports", &secret]));
    assert_eq!(first["sub"], "reports");
    assert_eq!(first["client_id"], "reports");
    assert_eq!(first["scope"], "api.read");
    assert_eq!(first["introspected_scope"], "api.read");
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["expires_in"], 600);
    let token = first["access_token"].as_str().expect("token").to_string();
    assert!(token.starts_with("pcat_") && !token.contains('.'), "access tokens are opaque, not JWTs: {token}");
    let post = json(&authlib(&server, &["reports", &secret, "client_secret_post"]));
    assert_ne!(post["access_token"], first["access_token"]);

    // Wrong secret, unknown client: invalid_client, no token.
    let bad = authlib(&server, &["reports", "not-the-secret"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid_client"));
    let response = curl(
        &server,
        &[
            "-u",
            "ghost:x",
            "-d",
            "grant_type=client_credentials",
            "-w",
            "%{http_code}",
            &format!("{}/oidc/token", server.issuer()),
        ],
    );
    assert!(response.ends_with("401") && response.contains("invalid_client"), "{response}");
    let response = curl(
        &server,
        &[
            "-u",
            &format!("reports:{secret}"),
            "-d",
            "grant_type=password",
            "-w",
            "%{http_code}",
            &format!("{}/oidc/token", server.issuer()),
        ],
    );
    assert!(response.ends_with("400") && response.contains("unsupported_grant_type"), "{response}");

    // Key rotation publishes new ID-token keys and keeps the old ones; access
    // tokens do not depend on them and stay valid.
    server.cli(&["oidc", "key", "rotate"], None);
    let jwks_has_six = || {
        let jwks: serde_json::Value =
            serde_json::from_str(&curl(&server, &[&format!("{}/oidc/jwks", server.issuer())])).unwrap_or_default();
        // Three retired keys (RS256, ES256, EdDSA) and their three successors.
        jwks["keys"].as_array().is_some_and(|k| k.len() == 6)
    };
    assert!(wait_until(Duration::from_secs(2), jwks_has_six), "rotated keys not published within 2 s");
    let introspect = |token: &str| json(&authlib(&server, &["--introspect", "reports", &secret, token]));
    assert_eq!(introspect(&token)["active"], true, "still valid after key rotation");
    // One changed character well before the end: not ours any more.
    let mut tampered = token.clone().into_bytes();
    let at = tampered.len() - 20;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    assert_eq!(introspect(&tampered), serde_json::json!({"active": false}), "tampered token");
    // RFC 7009: revoking a client_credentials token ends it.
    assert_eq!(json(&authlib(&server, &["--revoke", "reports", &secret, &token]))["status"], 200);
    assert_eq!(introspect(&token), serde_json::json!({"active": false}), "revoked token");
    assert_eq!(introspect(post["access_token"].as_str().expect("token"))["active"], true, "others unaffected");

    // Secret rotation: the running server drops the old secret within a second.
    let out = server.cli(&["oidc", "client", "rotate-secret", "reports"], None);
    let new_secret = out.lines().find_map(|l| l.strip_prefix("client_secret: ")).expect("new secret").to_string();
    server.settle();
    assert!(!authlib(&server, &["reports", &secret]).status.success());
    json(&authlib(&server, &["reports", &new_secret]));
}

#[test]
fn client_registration_errors_and_sealed_keys() {
    let server = TestServer::start();
    let out =
        server.cli_output(&["oidc", "client", "add", "web", "--redirect-uri", "http://evil.example.org/cb"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid redirect URI"));
    let out = server.cli_output(&["oidc", "client", "add", "web", "--allowed-group", "nosuchgroup"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    add_client(&server, "web");
    let out = server.cli_output(&["oidc", "client", "add", "web"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let public = server
        .cli(&["oidc", "client", "add", "cli-app", "--public", "--redirect-uri", "http://127.0.0.1:8765/cb"], None);
    assert!(public.contains("no secret") && !public.contains("client_secret:"));
    let list = server.cli(&["oidc", "client", "list"], None);
    assert!(
        list.contains("web") && list.contains("confidential") && list.contains("cli-app") && list.contains("public")
    );
    server.cli(&["oidc", "client", "del", "cli-app"], None);
    assert!(!server.cli(&["oidc", "client", "list"], None).contains("cli-app"));

    // The private key is sealed: the database file never holds its PKCS#8 body.
    let db = std::fs::read(server.data_dir().join("portcullis.db")).expect("db");
    let wal = std::fs::read(server.data_dir().join("portcullis.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("BEGIN PRIVATE KEY") && !text.contains("MIIE"), "unsealed private key in the database");
    }
    assert!(server.data_dir().join("secret.key").exists());
}

fn code_flow(
    server: &TestServer,
    client: &str,
    secret: &str,
    user: &str,
    password: &str,
    mode: &str,
) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc/authlib_code_flow.py");
    let ca = server.ca_path();
    let out = Command::new(python())
        .args([script.to_str().expect("utf-8"), &server.issuer(), ca.to_str().expect("utf-8")])
        .args([client, secret, user, password, mode])
        .output()
        .expect("run the Authlib code-flow client");
    json(&out)
}

#[test]
fn authorization_code_flow_with_authlib() {
    let server = TestServer::start();
    server.add_user("pcalice", "alice-pw-1");
    server.add_user("pcbob", "bob-pw-123");
    server.cli(&["group", "add", "pcdevs"], None);
    server.cli(&["group", "add", "pcops"], None);
    server.cli(&["group", "add-member", "pcdevs", "pcalice"], None);
    server.cli(&["group", "add-member", "pcops", "pcalice"], None);
    let out = server.cli(
        &[
            "oidc",
            "client",
            "add",
            "wiki",
            "--redirect-uri",
            "https://app.example.org/cb",
            "--post-logout-redirect-uri",
            "https://app.example.org/bye",
            "--allowed-group",
            "pcdevs",
        ],
        None,
    );
    let secret = out.lines().find_map(|l| l.strip_prefix("client_secret: ")).expect("secret").to_string();
    server.settle();

    let flow = code_flow(&server, "wiki", &secret, "pcalice", "alice-pw-1", "flow");
    let id = &flow["id_token"];
    let show = server.cli(&["user", "show", "pcalice"], None);
    let uuid = show.lines().find_map(|l| l.strip_prefix("id:")).expect("id line").trim().to_string();
    assert_eq!(id["sub"], uuid.as_str(), "sub is the stable UUID, not the login name");
    assert_eq!(id["preferred_username"], "pcalice");
    assert_eq!(id["email"], "pcalice@example.org");
    assert_eq!(id["groups"], serde_json::json!(["pcdevs"]), "groups are filtered by the client's allowlist");
    assert_eq!(flow["userinfo"]["sub"], uuid.as_str());
    assert_eq!(flow["userinfo"]["preferred_username"], "pcalice");
    assert_eq!(flow["sso_sub"], uuid.as_str(), "prompt=none reuses the browser session");
    assert_eq!(flow["introspect_access"], true);
    assert_eq!(flow["introspect_refresh"], true);
    assert_eq!(flow["refresh_rotated"], true, "each refresh issues a new refresh token");
    assert_eq!(flow["refreshed_id_token_sub"], uuid.as_str());
    assert_eq!(flow["refresh_reuse"], "invalid_grant");
    assert_eq!(flow["after_reuse_rotated"], "invalid_grant", "reuse revokes the whole family");
    assert_eq!(flow["after_reuse_introspect"], false);
    assert_eq!(flow["revoked_introspect"], false);
    assert_eq!(flow["revoked_userinfo"], 401);
    assert_eq!(flow["logout_open_redirect"], serde_json::json!([400, null]), "no open redirect on logout");
    assert_eq!(flow["logout_redirect"], serde_json::json!([303, "https://app.example.org/bye?state=st8"]));
    assert_eq!(flow["after_logout_prompt_none"], "login_required", "the session ended");

    // A user outside the allowed groups gets a page, never a code.
    let denied = code_flow(&server, "wiki", &secret, "pcbob", "bob-pw-123", "denied");
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["not_allowed_page"], true);
    assert_eq!(denied["redirected"], false);

    // A third-party client asks for consent once; deny, prompt=none and allow behave as specified.
    let out = server.cli(
        &["oidc", "client", "add", "partner", "--redirect-uri", "https://app.example.org/cb", "--third-party"],
        None,
    );
    let partner = out.lines().find_map(|l| l.strip_prefix("client_secret: ")).expect("secret").to_string();
    server.settle();
    let consent = code_flow(&server, "partner", &partner, "pcbob", "bob-pw-123", "consent");
    assert_eq!(
        consent,
        serde_json::json!({
            "consent_page": true, "deny_error": "access_denied", "prompt_none_without_consent": "consent_required",
            "consent_page_again": true, "allowed_token": true, "remembered": true
        })
    );

    let neg = code_flow(&server, "wiki", &secret, "pcalice", "alice-pw-1", "negatives");
    assert_eq!(neg["wrong_password_status"], 401);
    assert_eq!(neg["csrf_missing_status"], 403);
    assert_eq!(neg["prompt_none_error"], "login_required");
    assert_eq!(neg["bad_redirect_status"], 400);
    assert_eq!(neg["bad_redirect_location"], serde_json::Value::Null);
    assert_eq!(neg["pkce_mismatch"], "invalid_grant");
    assert_eq!(neg["code_reuse"], "invalid_grant");
    assert_eq!(neg["after_code_reuse_userinfo"], 401, "code reuse revokes the first redemption's tokens");
    assert_eq!(
        neg["form_post"],
        serde_json::json!({"status": 200, "action": "https://app.example.org/cb", "state_ok": true, "csp_script_hash": true, "token": true})
    );
}

#[test]
fn expired_codes_and_forwarded_client_addresses() {
    let server = TestServer::start_with(&[
        ("PORTCULLIS_HTTP__CODE_TTL_SECS", "1"),
        ("PORTCULLIS_HTTP__TRUSTED_PROXIES", "[\"127.0.0.1/32\"]"),
        ("PORTCULLIS_AUTH__SOURCE_MAX_FAILURES", "3"),
    ]);
    server.add_user("pccarol", "carol-pw-1");
    let secret = add_client(&server, "wiki");
    server.settle();

    let expired = code_flow(&server, "wiki", &secret, "pccarol", "carol-pw-1", "expired");
    assert_eq!(expired["fresh_code"], true, "{expired}");
    let refusal = expired["expired_code"].as_str().unwrap_or_default();
    assert!(refusal.starts_with("invalid_grant") && refusal.contains("expired"), "{expired}");

    // Behind a trusted proxy, lockout counts the forwarded client, not the proxy.
    let fwd = code_flow(&server, "wiki", &secret, "pccarol", "carol-pw-1", "forwarded");
    assert_eq!(fwd["failures"], serde_json::json!([401, 401, 401]), "{fwd}");
    assert_eq!(fwd["locked_source_right_password"], 401, "the forwarded source is locked out: {fwd}");
    assert_eq!(fwd["other_source_right_password"], 303, "another client behind the same proxy is not: {fwd}");
    let log = server.log();
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("web sign-in failed")).collect();
    assert!(failed.iter().any(|l| l.contains("203.0.113.7")), "logs name the forwarded client: {failed:?}");
}

/// Past `http.max_concurrent_requests` the server answers 503 + Retry-After
/// at once instead of queueing; capacity returns when the slow request ends.
#[test]
fn http_overload_is_shed_with_retry_after() {
    let server = TestServer::start_with(&[("PORTCULLIS_HTTP__MAX_CONCURRENT_REQUESTS", "1")]);
    let ca = server.ca_path();
    let healthz = format!("{}/healthz", server.issuer());
    let probe = || curl(&server, &["-o", "/dev/null", "-D", "-", &healthz]);
    assert!(probe().starts_with("HTTP/1.1 200"), "idle server answers");

    // A request whose body is still arriving holds the only slot.
    let mut slow = Command::new("curl")
        .args(["-s", "--cacert", ca.to_str().expect("utf-8"), "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-X", "POST", "-H", "Content-Type: application/x-www-form-urlencoded", "-T", "-"])
        .arg(format!("{}/oidc/token", server.issuer()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run curl");
    let shed = wait_until(Duration::from_secs(10), || probe().starts_with("HTTP/1.1 503"));
    assert!(shed, "a second request is shed while the first holds the slot");
    let headers = probe();
    assert!(headers.to_ascii_lowercase().contains("retry-after: 1"), "{headers}");

    // Finishing the slow request frees the slot.
    use std::io::Write;
    let mut body = slow.stdin.take().expect("stdin");
    body.write_all(b"grant_type=client_credentials").expect("write body");
    drop(body);
    let out = slow.wait_with_output().expect("slow curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401", "the slow request itself was served");
    assert!(probe().starts_with("HTTP/1.1 200"), "capacity is back");
}

/// Runs the openid-client relying party (Node) that scripts/test installs.
fn openid_client(server: &TestServer, args: &[&str]) -> Output {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc/node");
    let version = Command::new("node").arg("--version").output().ok().filter(|o| o.status.success());
    let major = version.as_ref().and_then(|o| {
        String::from_utf8_lossy(&o.stdout).trim().strip_prefix('v')?.split('.').next()?.parse::<u32>().ok()
    });
    assert!(
        major.is_some_and(|m| m >= 20),
        "the openid-client test needs Node.js 20 or newer on PATH (found: {}); install nodejs and npm, then run \
         ./scripts/test",
        version.map_or_else(|| "none".into(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    );
    assert!(
        dir.join("node_modules/openid-client/package.json").exists(),
        "{} has no openid-client: run ./scripts/test (it runs npm ci there)",
        dir.display()
    );
    Command::new("node")
        .arg(dir.join("code_flow.mjs"))
        .arg(server.issuer())
        .args(args)
        // Node reads its extra CAs only at start-up.
        .env("NODE_EXTRA_CA_CERTS", server.ca_path())
        .output()
        .expect("run the openid-client relying party")
}

#[test]
fn authorization_code_flow_with_openid_client() {
    let server = TestServer::start();
    server.add_user("ocalice", "alice-pw-1");
    server.cli(&["group", "add", "ocstaff"], None);
    server.cli(&["group", "add", "ocother"], None);
    server.cli(&["group", "add-member", "ocstaff", "ocalice"], None);
    server.cli(&["group", "add-member", "ocother", "ocalice"], None);
    let out = server.cli(
        &[
            "oidc",
            "client",
            "add",
            "nodeapp",
            "--redirect-uri",
            "https://app.example.org/cb",
            "--allowed-group",
            "ocstaff",
        ],
        None,
    );
    let secret = out.lines().find_map(|l| l.strip_prefix("client_secret: ")).expect("secret").to_string();
    server.settle();

    let out = openid_client(&server, &["nodeapp", &secret, "ocalice", "alice-pw-1"]);
    assert!(
        out.status.success(),
        "openid-client relying party failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON from the openid-client script");
    let show = server.cli(&["user", "show", "ocalice"], None);
    let uuid = show.lines().find_map(|l| l.strip_prefix("id:")).expect("id line").trim().to_string();
    let id = &seen["id_token"];
    assert_eq!(id["sub"], uuid.as_str(), "sub is the stable UUID, not the login name");
    assert_eq!(id["iss"], server.issuer());
    assert_eq!(id["aud"], "nodeapp");
    assert_eq!(id["preferred_username"], "ocalice");
    assert_eq!(id["email"], "ocalice@example.org");
    assert_eq!(id["groups"], serde_json::json!(["ocstaff"]), "groups are filtered by the client's allowlist");
    assert_eq!(seen["id_token_header"]["alg"], "RS256");
    assert_eq!(seen["userinfo"]["sub"], uuid.as_str());
    assert_eq!(seen["userinfo"]["preferred_username"], "ocalice");
    assert_eq!(seen["userinfo"]["groups"], serde_json::json!(["ocstaff"]));
    assert_eq!(seen["sso_signed_in_again"], false, "the browser session gives single sign-on");
    assert_eq!(seen["sso_sub"], uuid.as_str());
    // offline_access brings a refresh token; openid-client introspects both tokens.
    assert_eq!(seen["scope"], "openid profile email groups offline_access");
    assert_eq!(seen["refresh_token_issued"], true, "offline_access brings a refresh token");
    let active = |token_type: &str| {
        let mut expected = serde_json::json!({ "active": true, "sub": uuid, "client_id": "nodeapp" });
        expected["token_type"] = token_type.into();
        expected
    };
    let inactive = serde_json::json!({ "active": false });
    assert_eq!(seen["introspect_access"], active("Bearer"));
    assert_eq!(seen["introspect_refresh"], active("refresh_token"));
    // Refresh rotates the refresh token and brings a new, validated ID token.
    let refresh = &seen["refresh"];
    assert_eq!(refresh["new_access_token"], true);
    assert_eq!(refresh["rotated"], true, "each refresh issues a new refresh token");
    assert_eq!(refresh["id_token_sub"], uuid.as_str());
    assert_eq!(refresh["id_token_aud"], "nodeapp");
    assert_eq!(refresh["introspect_access"], active("Bearer"));
    // Replaying the spent refresh token revokes its whole family.
    assert_eq!(seen["refresh_reuse"], "invalid_grant");
    assert_eq!(seen["after_reuse_refresh"], "invalid_grant", "reuse revokes the whole family");
    assert_eq!(seen["after_reuse_introspect_access"], inactive);
    assert_eq!(seen["after_reuse_introspect_refresh"], inactive);
    assert_eq!(seen["after_reuse_userinfo"], 401);
    // Revoking the SSO flow's refresh token revokes its access token too.
    assert_eq!(seen["sso_before_revoke_introspect"], active("Bearer"));
    assert_eq!(seen["sso_before_revoke_userinfo_sub"], uuid.as_str());
    assert_eq!(seen["revoked_introspect_access"], inactive, "revocation reaches the access token");
    assert_eq!(seen["revoked_introspect_refresh"], inactive);
    assert_eq!(seen["revoked_userinfo"], 401);
    assert_eq!(seen["revoked_refresh"], "invalid_grant");
    // The ID token's signature is checked against the JWKS: with a foreign key
    // under the provider's kid, the flow fails.
    assert_eq!(seen["foreign_key_jwks_fetched"], true, "openid-client fetched the JWKS to check the signature");
    assert_eq!(seen["foreign_key"], "JWT signature verification failed");
    // Why the script calls enableNonRepudiationChecks: without it, openid-client
    // trusts an ID token from the token endpoint on TLS alone.
    assert_eq!(seen["foreign_key_unchecked_jwks_fetched"], false);
    assert_eq!(seen["foreign_key_unchecked"], "accepted");
    // The ID token from a refresh is checked against the JWKS as well.
    assert_eq!(seen["foreign_key_refresh_jwks_fetched"], true);
    assert_eq!(seen["foreign_key_refresh"], "JWT signature verification failed");
}

/// Where Debian's libapache2-mod-auth-openidc puts the module.
const MOD_AUTH_OPENIDC: &str = "/usr/lib/apache2/modules/mod_auth_openidc.so";

/// A private Apache httpd (`apache2 -X`, one process in the foreground) with
/// mod_auth_openidc protecting /protected/, from tests/oidc/apache/. It reads
/// nothing under /etc/apache2 and is killed on drop.
struct Apache {
    dir: tempfile::TempDir,
    port: u16,
    child: std::process::Child,
}

impl Apache {
    fn start(server: &TestServer, port: u16, client_secret: &str) -> Self {
        assert!(
            std::path::Path::new("/usr/sbin/apache2").is_file(),
            "/usr/sbin/apache2 is not installed; run ./scripts/test (it installs apache2)"
        );
        assert!(
            std::path::Path::new(MOD_AUTH_OPENIDC).is_file(),
            "{MOD_AUTH_OPENIDC} is missing; run ./scripts/test (it installs libapache2-mod-auth-openidc)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        // Apache drops to www-data when started as root: it must reach its files.
        std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let templates = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc/apache");
        std::fs::create_dir_all(root.join("run")).expect("run dir");
        std::fs::create_dir_all(root.join("htdocs/protected")).expect("htdocs");
        std::fs::copy(templates.join("index.html"), root.join("htdocs/protected/index.html")).expect("page");
        let conf = std::fs::read_to_string(templates.join("httpd.conf"))
            .expect("httpd.conf template")
            .replace("@ROOT@", root.to_str().expect("utf-8"))
            .replace("@PORT@", &port.to_string())
            .replace("@ISSUER@", &server.issuer())
            .replace("@CLIENT_SECRET@", client_secret)
            .replace("@CA@", server.ca_path().to_str().expect("utf-8"))
            .replace("@PASSPHRASE@", &format!("test-{port}-passphrase"));
        std::fs::write(root.join("httpd.conf"), conf).expect("write httpd.conf");
        let child = Command::new("/usr/sbin/apache2")
            .args(["-X", "-f"])
            .arg(root.join("httpd.conf"))
            // mod_auth_openidc's cache mutex files go to the temp dir.
            .env("TMPDIR", root.join("run"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(root.join("stderr.log")).expect("stderr log"))
            .spawn()
            .expect("start apache2");
        let mut apache = Apache { dir, port, child };
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                || apache.child.try_wait().ok().flatten().is_some()
        });
        assert!(up && apache.child.try_wait().ok().flatten().is_none(), "apache2 did not start:\n{}", apache.log());
        apache
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Apache's stderr and error log, for failure messages.
    fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl as a browser: one cookie jar, the provider's CA trusted, redirects
/// not followed so each hop can be checked.
struct Browser {
    dir: tempfile::TempDir,
    ca: PathBuf,
}

/// One response: status, absolute Location (if any), body.
struct Page {
    status: u16,
    location: String,
    body: String,
}

impl Browser {
    fn new(server: &TestServer) -> Self {
        require_tool("curl");
        Browser { dir: tempfile::tempdir().expect("tempdir"), ca: server.ca_path() }
    }

    fn request(&self, url: &str, form: &[(&str, &str)]) -> Page {
        let jar = self.dir.path().join("cookies");
        let body = self.dir.path().join("body");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "-H", "Accept: text/html", "-o"])
            .arg(&body)
            .args(["-w", "%{http_code} %{redirect_url}", "--cacert"])
            .arg(&self.ca)
            .arg("-b")
            .arg(&jar)
            .arg("-c")
            .arg(&jar);
        for (k, v) in form {
            cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        let out = cmd.arg(url).output().expect("run curl");
        let written = String::from_utf8_lossy(&out.stdout).into_owned();
        let (status, location) = written.split_once(' ').unwrap_or((&written, ""));
        let body = if out.status.success() {
            std::fs::read_to_string(&body).unwrap_or_default()
        } else {
            format!("curl {url} failed: {}", String::from_utf8_lossy(&out.stderr))
        };
        Page { status: status.parse().unwrap_or(0), location: location.to_string(), body }
    }

    fn get(&self, url: &str) -> Page {
        self.request(url, &[])
    }
}

/// A hidden field's value from the sign-in form, HTML entities undone.
fn form_field(html: &str, name: &str) -> String {
    let start = format!("name=\"{name}\" value=\"");
    let at = html.find(&start).unwrap_or_else(|| panic!("no {name} field in: {html}")) + start.len();
    let raw = &html[at..at + html[at..].find('"').expect("closing quote")];
    raw.replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

#[test]
fn authorization_code_flow_with_apache_mod_auth_openidc() {
    let server = TestServer::start();
    server.add_user("apalice", "alice-pw-1");
    server.cli(&["group", "add", "apstaff"], None);
    server.cli(&["group", "add", "apops"], None);
    server.cli(&["group", "add-member", "apstaff", "apalice"], None);
    server.cli(&["group", "add-member", "apops", "apalice"], None);
    let port = crate::common::free_port();
    let redirect = format!("http://127.0.0.1:{port}/protected/redirect_uri");
    let out = server.cli(&["oidc", "client", "add", "apache", "--redirect-uri", &redirect], None);
    let secret = out.lines().find_map(|l| l.strip_prefix("client_secret: ")).expect("secret").to_string();
    let show = server.cli(&["user", "show", "apalice"], None);
    let uuid = show.lines().find_map(|l| l.strip_prefix("id:")).expect("id line").trim().to_string();
    server.settle();
    let apache = Apache::start(&server, port, &secret);
    let browser = Browser::new(&server);
    let hop = |what: &str, page: &Page, status: u16| {
        assert_eq!(
            page.status,
            status,
            "{what}: expected {status}, got {} (Location: {})\n{}\napache log:\n{}\nportcullis log:\n{}",
            page.status,
            page.location,
            page.body,
            apache.log(),
            server.log()
        );
    };

    // Not signed in: Apache sends the browser to Portcullis's authorization
    // endpoint, with PKCE (S256), state and nonce.
    let protected = apache.url("/protected/");
    let first = browser.get(&protected);
    hop("unauthenticated /protected/", &first, 302);
    let authorize = format!("{}/oidc/authorize?", server.issuer());
    assert!(first.location.starts_with(&authorize), "redirected to {}, not {authorize}", first.location);
    let query = query_of(&first.location);
    assert_eq!(query.get("client_id").map(String::as_str), Some("apache"));
    assert_eq!(query.get("redirect_uri"), Some(&redirect));
    assert_eq!(query.get("response_type").map(String::as_str), Some("code"));
    assert_eq!(query.get("code_challenge_method").map(String::as_str), Some("S256"));
    assert!(query.contains_key("state") && query.contains_key("nonce"), "{query:?}");

    // The sign-in form, then the code back to Apache's redirect URI.
    let form = browser.get(&first.location);
    hop("authorization endpoint", &form, 200);
    let signed_in = browser.request(
        &format!("{}/oidc/signin", server.issuer()),
        &[
            ("csrf", &form_field(&form.body, "csrf")),
            ("request", &form_field(&form.body, "request")),
            ("username", "apalice"),
            ("password", "alice-pw-1"),
        ],
    );
    hop("sign-in", &signed_in, 303);
    assert!(signed_in.location.starts_with(&format!("{redirect}?")), "{}", signed_in.location);
    let back = query_of(&signed_in.location);
    assert_eq!(back.get("iss"), Some(&server.issuer()));
    assert_eq!(back.get("state"), query.get("state"));

    // Apache redeems the code (client_secret_basic, PKCE), checks the RS256 ID
    // token against the JWKS, and sends the browser back to the page.
    let redeemed = browser.get(&signed_in.location);
    hop("redirect URI", &redeemed, 302);
    assert_eq!(redeemed.location, protected);
    let page = browser.get(&protected);
    hop("protected page", &page, 200);
    for expected in [
        "user=apalice".to_string(),
        "preferred_username=apalice".to_string(),
        format!("sub={uuid}"),
        "email=apalice@example.org".to_string(),
        format!("iss={}", server.issuer()),
    ] {
        assert!(page.body.contains(&expected), "{expected} not on the page:\n{}", page.body);
    }
    let groups = page.body.lines().find_map(|l| l.strip_prefix("<p>groups=")).expect("groups line");
    let mut groups: Vec<&str> = groups.trim_end_matches("</p>").split(',').collect();
    groups.sort_unstable();
    assert_eq!(groups, ["apops", "apstaff"], "{}", page.body);

    // The Apache session cookie keeps the browser signed in; another browser is not.
    hop("second visit", &browser.get(&protected), 200);
    let stranger = Browser::new(&server).get(&protected);
    hop("another browser", &stranger, 302);
    assert!(stranger.location.starts_with(&authorize), "{}", stranger.location);
}

/// The decoded query parameters of a URL.
fn query_of(url: &str) -> std::collections::HashMap<String, String> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

#[test]
fn account_page_password_change_and_sessions() {
    let server = TestServer::start();
    server.add_user("pcdora", "dora-old-pw");
    server.settle();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc/account_page.py");
    let ca = server.ca_path();
    let out = Command::new(python())
        .args([script.to_str().expect("utf-8"), &server.issuer(), ca.to_str().expect("utf-8")])
        .args(["pcdora", "dora-old-pw", "dora-new-pw"])
        .output()
        .expect("run the account-page walk");
    let seen = json(&out);
    assert_eq!(
        seen,
        serde_json::json!({
            "wrong_password": 401, "signin": [303, "/account"], "profile_shows_user": true, "csp": true,
            "mismatch": 400, "wrong_current": 400, "no_csrf": 403, "changed": [303, "/account?done=password"],
            "old_password_after_change": 401, "new_password_signin": 303, "sessions_listed": 2, "revoke": 303,
            "other_browser_signed_out": true, "signed_out": true
        })
    );
    // The web change is the directory's password: LDAP binds see it too.
    let bind = crate::common::run(
        "ldapwhoami",
        &["-x", "-H", &server.ldap_url(), "-D", &crate::common::user_dn("pcdora"), "-w", "dora-new-pw"],
        &[],
    );
    assert!(bind.status.success(), "LDAP bind with the new password: {}", String::from_utf8_lossy(&bind.stderr));
}

/// The provider's published keys.
fn jwks_keys(server: &TestServer) -> Vec<serde_json::Value> {
    let jwks: serde_json::Value =
        serde_json::from_str(&curl(server, &[&format!("{}/oidc/jwks", server.issuer())])).unwrap_or_default();
    jwks["keys"].as_array().cloned().unwrap_or_default()
}

/// The `kid` of the one published key of `alg` that is not in `old`.
fn new_kid(keys: &[serde_json::Value], alg: &str, old: &[&str]) -> String {
    let kids: Vec<&str> = keys
        .iter()
        .filter(|k| k["alg"] == alg)
        .filter_map(|k| k["kid"].as_str())
        .filter(|k| !old.contains(k))
        .collect();
    assert_eq!(kids.len(), 1, "one new {alg} key in {keys:?}");
    kids[0].to_string()
}

/// RP-initiated logout with `hint` and no session: a hint that verifies names
/// the client, so the browser goes back to its registered address (303); a
/// hint that does not gets an error page (400). Returns "CODE LOCATION".
fn logout_with_hint(server: &TestServer, hint: &str) -> String {
    let url = format!(
        "{}/oidc/logout?id_token_hint={hint}&post_logout_redirect_uri=https%3A%2F%2Fapp.example.org%2Fbye&state=s1",
        server.issuer()
    );
    curl(server, &["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", &url])
}

#[test]
fn id_tokens_signed_es256_and_eddsa_per_client() {
    let server = TestServer::start();
    server.add_user("algalice", "alice-pw-1");
    let add = |name: &str, alg: Option<&str>| {
        let mut args = vec![
            "oidc",
            "client",
            "add",
            name,
            "--redirect-uri",
            "https://app.example.org/cb",
            "--post-logout-redirect-uri",
            "https://app.example.org/bye",
        ];
        args.extend(alg.map(|a| ["--id-token-alg", a]).into_iter().flatten());
        let out = server.cli(&args, None);
        out.lines().find_map(|l| l.strip_prefix("client_secret: ")).expect("secret").to_string()
    };
    // Anything but the three algorithms is refused, naming the choices.
    let out = server.cli_output(
        &["oidc", "client", "add", "hsapp", "--redirect-uri", "https://app.example.org/cb", "--id-token-alg", "HS256"],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("HS256") && err.contains("RS256, ES256, EdDSA"), "{err}");
    let secrets = [("ecapp", "ES256", add("ecapp", Some("ES256"))), ("edapp", "EdDSA", add("edapp", Some("eddsa")))];
    add("rsapp", None);
    for (name, alg) in [("ecapp", "ES256"), ("edapp", "EdDSA"), ("rsapp", "RS256")] {
        let show = server.cli(&["oidc", "client", "show", name], None);
        assert!(show.contains(&format!("ID token alg:   {alg}\n")), "{show}");
    }
    server.settle();

    let meta: serde_json::Value =
        serde_json::from_str(&curl(&server, &[&format!("{}/.well-known/openid-configuration", server.issuer())]))
            .expect("discovery JSON");
    assert_eq!(meta["id_token_signing_alg_values_supported"], serde_json::json!(["RS256", "ES256", "EdDSA"]));
    // One key per algorithm, each with its JWK shape.
    let keys = jwks_keys(&server);
    assert_eq!(keys.len(), 3, "{keys:?}");
    for (alg, kty, crv) in [("RS256", "RSA", None), ("ES256", "EC", Some("P-256")), ("EdDSA", "OKP", Some("Ed25519"))] {
        let key = keys.iter().find(|k| k["alg"] == alg).unwrap_or_else(|| panic!("no {alg} key in {keys:?}"));
        assert_eq!(key["kty"], kty);
        assert_eq!(key["use"], "sig");
        assert_eq!(key["crv"].as_str(), crv);
    }
    let first: Vec<String> = ["RS256", "ES256", "EdDSA"].iter().map(|alg| new_kid(&keys, alg, &[])).collect();

    // openid-client, registered with the client's alg, validates the ID token
    // (signature against the JWKS, then iss, aud, nonce...), and refuses it
    // when a foreign key of the same type sits under the provider's kid.
    let mut hints = Vec::new();
    for (name, alg, secret) in &secrets {
        let out = openid_client(&server, &[name, secret, "algalice", "alice-pw-1", alg]);
        assert!(
            out.status.success(),
            "openid-client with {alg} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let seen: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON from openid-client");
        assert_eq!(seen["id_token_header"]["alg"], *alg);
        assert_eq!(seen["id_token_header"]["kid"], new_kid(&keys, alg, &[]).as_str());
        assert_eq!(seen["id_token"]["aud"], *name);
        assert_eq!(seen["id_token"]["preferred_username"], "algalice");
        assert_eq!(seen["refresh"]["id_token_aud"], *name, "the refreshed ID token validated too");
        assert_eq!(seen["foreign_key"], "JWT signature verification failed", "{alg}");
        assert_eq!(seen["foreign_key_refresh"], "JWT signature verification failed", "{alg}");
        hints.push(seen["id_token_jwt"].as_str().expect("raw ID token").to_string());
    }

    // Authlib (its own JOSE code) validates both too, and its logout with
    // the ID token as id_token_hint returns to the client's address.
    for (name, alg, secret) in &secrets {
        let flow = code_flow(&server, name, secret, "algalice", "alice-pw-1", "flow");
        assert_eq!(flow["id_token"]["aud"], *name, "{alg}");
        assert_eq!(flow["id_token_alg"], *alg);
        assert_eq!(flow["id_token"]["preferred_username"], "algalice");
        assert_eq!(flow["logout_redirect"], serde_json::json!([303, "https://app.example.org/bye?state=st8"]), "{alg}");
    }

    // id_token_hint takes every algorithm, but only with the key's own alg.
    for hint in &hints {
        assert_eq!(logout_with_hint(&server, hint), "303 https://app.example.org/bye?state=s1");
        let (header, rest) = hint.split_once('.').expect("JWS");
        let header: serde_json::Value = serde_json::from_slice(&base64_url_decode(header)).expect("header JSON");
        let confused = serde_json::json!({ "typ": "JWT", "alg": "RS256", "kid": header["kid"] });
        let confused = format!("{}.{rest}", base64_url_encode(confused.to_string().as_bytes()));
        assert_eq!(logout_with_hint(&server, &confused), "400 ", "header alg must match the key's alg");
    }

    // Rotation makes a new key for each algorithm; the old ones stay published.
    let out = server.cli(&["oidc", "key", "rotate"], None);
    assert_eq!(out.lines().filter(|l| l.starts_with("new ")).count(), 3, "{out}");
    assert!(
        wait_until(Duration::from_secs(2), || jwks_keys(&server).len() == 6),
        "rotated keys not published within 2 s"
    );
    let keys = jwks_keys(&server);
    let published: Vec<&str> = keys.iter().filter_map(|k| k["kid"].as_str()).collect();
    for kid in &first {
        assert!(published.contains(&kid.as_str()), "retired key {kid} must stay published: {published:?}");
    }
    let old: Vec<&str> = first.iter().map(String::as_str).collect();
    let second: Vec<String> = ["RS256", "ES256", "EdDSA"].iter().map(|alg| new_kid(&keys, alg, &old)).collect();
    // Tokens signed by the retired keys still verify.
    for hint in &hints {
        assert_eq!(logout_with_hint(&server, hint), "303 https://app.example.org/bye?state=s1");
    }
    // --alg rotates one algorithm; the others keep their key.
    let out = server.cli(&["oidc", "key", "rotate", "--alg", "ES256"], None);
    assert!(out.contains("new ES256 signing key"), "{out}");
    assert!(wait_until(Duration::from_secs(2), || jwks_keys(&server).len() == 7), "ES256 rotation not published");
    let list = server.cli(&["oidc", "key", "list"], None);
    let active: Vec<&str> = list.lines().filter(|l| l.ends_with("active")).collect();
    assert_eq!(active.len(), 3, "one active key per algorithm:\n{list}");
    assert!(active.iter().any(|l| l.starts_with(&second[2])), "EdDSA key unchanged:\n{list}");
    let (name, alg, secret) = &secrets[0];
    let out = openid_client(&server, &[name, secret, "algalice", "alice-pw-1", alg]);
    assert!(out.status.success(), "openid-client after rotation: {}", String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON from openid-client");
    let newest = new_kid(&jwks_keys(&server), "ES256", &[&first[1], &second[1]]);
    assert_eq!(seen["id_token_header"]["kid"], newest.as_str(), "new ID tokens use the newest ES256 key");
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).expect("base64url")
}

fn base64_url_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Verifies a JWT against the provider's JWKS (signature, issuer, audience,
/// expiry) and returns its header and claims.
fn verify_jwt(server: &TestServer, token: &str, audience: &str) -> (jsonwebtoken::Header, serde_json::Value) {
    let header = jsonwebtoken::decode_header(token).expect("JWT header");
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(&curl(server, &[&format!("{}/oidc/jwks", server.issuer())])).expect("JWKS");
    let jwk = jwks.find(header.kid.as_deref().expect("kid")).expect("the signing key is in the JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("decoding key from the JWK");
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[server.issuer()]);
    validation.set_audience(&[audience]);
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).expect("JWT verifies");
    (data.header, data.claims)
}

#[test]
fn backchannel_logout_reaches_the_client() {
    let server = TestServer::start();
    server.add_user("bcerin", "erin-pw-123");
    let (port, delivered) = crate::common::http_sink();
    // A client whose endpoint accepts the connection and never answers: the
    // provider times out and retries, and no sign-out waits for it.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent = format!("http://127.0.0.1:{}/bc", black_hole.local_addr().expect("address").port());
    let cb = "https://app.example.org/cb";
    let endpoint = format!("http://127.0.0.1:{port}/backchannel");
    let add = |name: &str, backchannel: Option<&str>| {
        let mut args = vec!["oidc", "client", "add", name, "--redirect-uri", cb];
        if let Some(uri) = backchannel {
            args.extend(["--backchannel-logout-uri", uri]);
        }
        let out = server.cli(&args, None);
        out.lines().find_map(|l| l.strip_prefix("client_secret: ")).expect("secret").to_string()
    };
    let secret = add("bcapp", Some(&endpoint));
    let plain_secret = add("plainapp", None);
    add("silentapp", Some(&silent));
    // https is verified against the system's CA roots, which do not hold the
    // test server's private CA: delivery fails on the certificate.
    add("tlsapp", Some(&format!("{}/bc", server.issuer())));
    for bad in ["ftp://app.example.org/bc", "/bc", "https://app.example.org/bc#x"] {
        let out = server.cli_output(&["oidc", "client", "add", "badbc", "--backchannel-logout-uri", bad], None);
        assert!(!out.status.success(), "{bad} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid back-channel logout URI"), "{bad}: {err}");
    }
    let show = server.cli(&["oidc", "client", "show", "bcapp"], None);
    assert!(show.contains(&format!("back-channel:   {endpoint}")), "{show}");
    assert!(server.cli(&["oidc", "client", "show", "plainapp"], None).contains("back-channel:   (none)"));
    server.settle();

    let meta: serde_json::Value =
        serde_json::from_str(&curl(&server, &[&format!("{}/.well-known/openid-configuration", server.issuer())]))
            .expect("discovery JSON");
    assert_eq!(meta["backchannel_logout_supported"], true);
    assert_eq!(meta["backchannel_logout_session_supported"], true);

    let authorize = |client: &str, extra: &[(&str, &str)]| {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.extend_pairs([
            ("client_id", client),
            ("redirect_uri", cb),
            ("response_type", "code"),
            ("scope", "openid profile"),
            ("state", "st"),
            ("nonce", "n-0S6_WzA2Mj"),
        ]);
        query.extend_pairs(extra);
        format!("{}/oidc/authorize?{}", server.issuer(), query.finish())
    };
    let sign_in = |browser: &Browser, client: &str, extra: &[(&str, &str)]| -> String {
        let form = browser.get(&authorize(client, extra));
        assert_eq!(form.status, 200, "sign-in form: {}", form.body);
        let done = browser.request(
            &format!("{}/oidc/signin", server.issuer()),
            &[
                ("csrf", &form_field(&form.body, "csrf")),
                ("request", &form_field(&form.body, "request")),
                ("username", "bcerin"),
                ("password", "erin-pw-123"),
            ],
        );
        assert_eq!(done.status, 303, "sign-in: {}\n{}", done.body, server.log());
        query_of(&done.location).get("code").expect("code").clone()
    };
    // Signed in already: straight back with a code.
    let sso = |browser: &Browser, client: &str| -> String {
        let page = browser.get(&authorize(client, &[]));
        assert_eq!(page.status, 303, "{client} SSO: {}", page.body);
        query_of(&page.location).get("code").expect("code").clone()
    };
    let token_response = |client: &str, secret: &str, code: &str| -> serde_json::Value {
        let body = curl(
            &server,
            &[
                "-u",
                &format!("{client}:{secret}"),
                "--data-urlencode",
                "grant_type=authorization_code",
                "--data-urlencode",
                &format!("code={code}"),
                "--data-urlencode",
                &format!("redirect_uri={cb}"),
                &format!("{}/oidc/token", server.issuer()),
            ],
        );
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("token response: {e}: {body}"))
    };
    let redeem = |client: &str, secret: &str, code: &str| -> serde_json::Value {
        let tokens = token_response(client, secret, code);
        let id_token = tokens["id_token"].as_str().unwrap_or_else(|| panic!("no ID token: {tokens}"));
        verify_jwt(&server, id_token, client).1
    };
    let next_delivery = || delivered.recv_timeout(Duration::from_secs(10)).expect("a back-channel POST within 10 s");
    let check_logout_token = |got: &crate::common::Delivered, id: &serde_json::Value| -> String {
        assert_eq!(got.request_line, "POST /backchannel HTTP/1.1");
        assert_eq!(got.header("content-type"), "application/x-www-form-urlencoded");
        let form: Vec<(String, String)> = form_urlencoded::parse(got.body.as_bytes()).into_owned().collect();
        assert_eq!(form.len(), 1, "only logout_token is sent: {form:?}");
        assert_eq!(form[0].0, "logout_token");
        let token = form[0].1.clone();
        let (header, claims) = verify_jwt(&server, &token, "bcapp");
        assert_eq!(header.typ.as_deref(), Some("logout+jwt"));
        assert_eq!(claims["iss"], server.issuer());
        assert_eq!(claims["aud"], "bcapp");
        assert_eq!(claims["sub"], id["sub"]);
        assert_eq!(claims["sid"], id["sid"]);
        assert_eq!(claims["events"], serde_json::json!({"http://schemas.openid.net/event/backchannel-logout": {}}));
        assert!(claims.get("nonce").is_none(), "a logout token never carries a nonce: {claims}");
        assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()), "{claims}");
        let (iat, exp) = (claims["iat"].as_i64().expect("iat"), claims["exp"].as_i64().expect("exp"));
        assert!(exp > iat && exp - iat <= 300, "short-lived: {claims}");
        token
    };

    // One browser signs in to three clients; the ID tokens share the session's sid.
    let browser = Browser::new(&server);
    let id = redeem("bcapp", &secret, &sign_in(&browser, "bcapp", &[]));
    let sid = id["sid"].as_str().expect("the ID token carries sid").to_string();
    assert_eq!(id["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(redeem("plainapp", &plain_secret, &sso(&browser, "plainapp"))["sid"], sid.as_str());
    sso(&browser, "silentapp");
    sso(&browser, "tlsapp");
    let cookies = std::fs::read_to_string(browser.dir.path().join("cookies")).expect("cookie jar");
    let cookie_value = cookies
        .lines()
        .find(|l| l.contains("__Host-portcullis_session"))
        .and_then(|l| l.split('\t').next_back())
        .expect("session cookie")
        .to_string();
    assert_ne!(sid, cookie_value, "sid is not the session cookie");
    assert!(!sid.contains(&cookie_value) && !cookie_value.contains(&sid));
    // Signing in again as the same user (prompt=login) keeps the session: same sid.
    let again = redeem("bcapp", &secret, &sign_in(&browser, "bcapp", &[("prompt", "login")]));
    assert_eq!(again["sid"], sid.as_str(), "re-authentication keeps the session id");

    // RP-initiated logout: the page answers at once; bcapp gets a verified
    // logout token, plainapp (no URI) nothing, silentapp's timeouts are logged.
    let id_token_hint = {
        let code = sso(&browser, "bcapp");
        token_response("bcapp", &secret, &code)["id_token"].as_str().expect("ID token").to_string()
    };
    let started = std::time::Instant::now();
    let out = browser.get(&format!("{}/oidc/logout?id_token_hint={id_token_hint}", server.issuer()));
    assert_eq!(out.status, 200, "{}", out.body);
    assert!(out.body.contains("You are signed out"), "{}", out.body);
    assert!(started.elapsed() < Duration::from_secs(3), "sign-out waited on a client: {:?}", started.elapsed());
    let token = check_logout_token(&next_delivery(), &id);
    let ended = browser.get(&authorize("bcapp", &[("prompt", "none")]));
    assert_eq!(query_of(&ended.location).get("error").map(String::as_str), Some("login_required"));
    assert!(
        wait_until(Duration::from_secs(20), || server.log().matches("back-channel logout not delivered").count() == 2),
        "silentapp's and tlsapp's failures are not logged:\n{}",
        server.log()
    );
    let log = server.log();
    assert!(log.contains("back-channel logout delivered"), "{log}");
    let failures = |client: &str| log.lines().filter(|l| l.contains(client) && l.contains("logout failed")).count();
    assert_eq!(failures("silentapp"), 2, "one retry at most:\n{log}");
    assert_eq!(failures("tlsapp"), 2, "{log}");
    assert!(
        log.lines().any(|l| l.contains("tlsapp") && l.contains("certificate")),
        "an untrusted certificate is refused:\n{log}"
    );
    assert!(!log.contains(&token) && !log.contains("eyJ"), "a token reached the log:\n{log}");

    // A session revoked from "my account" in another browser is told too.
    let laptop = Browser::new(&server);
    let id = redeem("bcapp", &secret, &sign_in(&laptop, "bcapp", &[]));
    assert_ne!(id["sid"], sid.as_str(), "a new session, a new sid");
    let phone = Browser::new(&server);
    let form = phone.get(&format!("{}/account", server.issuer()));
    let signed_in = phone.request(
        &format!("{}/account/signin", server.issuer()),
        &[("csrf", &form_field(&form.body, "csrf")), ("username", "bcerin"), ("password", "erin-pw-123")],
    );
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    let account = phone.get(&format!("{}/account", server.issuer()));
    let other = account.body.split("<li>").find(|li| li.contains("name=\"id\"") && !li.contains("(this browser)"));
    let other = other.unwrap_or_else(|| panic!("the laptop's session is listed: {}", account.body));
    let revoked = phone.request(
        &format!("{}/account/sessions/revoke", server.issuer()),
        &[("csrf", &form_field(&account.body, "csrf")), ("id", &form_field(other, "id"))],
    );
    assert_eq!(revoked.status, 303, "{}", revoked.body);
    check_logout_token(&next_delivery(), &id);

    // Signing out on the account page ends the session and tells its clients.
    let id = redeem("bcapp", &secret, &sso(&phone, "bcapp"));
    let account = phone.get(&format!("{}/account", server.issuer()));
    let out =
        phone.request(&format!("{}/account/signout", server.issuer()), &[("csrf", &form_field(&account.body, "csrf"))]);
    assert_eq!(out.status, 200, "{}", out.body);
    check_logout_token(&next_delivery(), &id);

    // Nothing else was sent: one POST per ended session, to bcapp only.
    assert!(delivered.recv_timeout(Duration::from_millis(1500)).is_err(), "unexpected extra back-channel request");
    drop(black_hole);
}
