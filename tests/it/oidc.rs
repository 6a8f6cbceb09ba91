//! The OpenID provider so far: discovery, JWKS, client registration, the
//! authorization-code flow with PKCE and web sign-in, userinfo, and the
//! client_credentials grant, checked by Authlib (a real relying-party library
//! with its own JOSE code, driven like a browser) and curl.

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
    assert_eq!(first["alg"], "RS256");
    assert_eq!(first["typ"], "at+jwt");
    assert_eq!(first["scope"], "api.read");
    let post = json(&authlib(&server, &["reports", &secret, "client_secret_post"]));
    assert_eq!(post["kid"], first["kid"]);

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

    // Rotation: new tokens use the new key; the old key stays published, so
    // tokens it signed still verify.
    let old_token = first["access_token"].as_str().expect("token").to_string();
    server.cli(&["oidc", "key", "rotate"], None);
    let jwks_has_two = || {
        let jwks: serde_json::Value =
            serde_json::from_str(&curl(&server, &[&format!("{}/oidc/jwks", server.issuer())])).unwrap_or_default();
        jwks["keys"].as_array().is_some_and(|k| k.len() == 2)
    };
    assert!(wait_until(Duration::from_secs(2), jwks_has_two), "rotated key not published within 2 s");
    let second = json(&authlib(&server, &["reports", &secret]));
    assert_ne!(second["kid"], first["kid"], "new tokens are signed with the new key");
    assert_eq!(json(&authlib(&server, &["--verify", &old_token]))["sub"], "reports");
    // Change one signature character well before the end (the last one may carry only padding bits).
    let mut tampered = old_token.clone().into_bytes();
    let at = tampered.len() - 20;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    assert!(!authlib(&server, &["--verify", &tampered]).status.success(), "tampered token must not verify");

    // Secret rotation: the old secret stops working at once.
    let out = server.cli(&["oidc", "client", "rotate-secret", "reports"], None);
    let new_secret = out.lines().find_map(|l| l.strip_prefix("client_secret: ")).expect("new secret").to_string();
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
