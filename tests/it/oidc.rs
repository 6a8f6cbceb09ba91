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
    assert_eq!(meta["grant_types_supported"], serde_json::json!(["authorization_code", "client_credentials"]));
    assert_eq!(meta["code_challenge_methods_supported"], serde_json::json!(["S256"]));
    assert!(meta.get("end_session_endpoint").is_none(), "not implemented yet, so not advertised");
    assert!(meta.get("refresh_token").is_none() && !meta["grant_types_supported"].to_string().contains("refresh"));

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
        &["oidc", "client", "add", "wiki", "--redirect-uri", "https://app.example.org/cb", "--allowed-group", "pcdevs"],
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

    // A user outside the allowed groups gets a page, never a code.
    let denied = code_flow(&server, "wiki", &secret, "pcbob", "bob-pw-123", "denied");
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["not_allowed_page"], true);
    assert_eq!(denied["redirected"], false);

    let neg = code_flow(&server, "wiki", &secret, "pcalice", "alice-pw-1", "negatives");
    assert_eq!(neg["wrong_password_status"], 401);
    assert_eq!(neg["csrf_missing_status"], 403);
    assert_eq!(neg["prompt_none_error"], "login_required");
    assert_eq!(neg["bad_redirect_status"], 400);
    assert_eq!(neg["bad_redirect_location"], serde_json::Value::Null);
    assert_eq!(neg["pkce_mismatch"], "invalid_grant");
    assert_eq!(neg["code_reuse"], "invalid_grant");
}
