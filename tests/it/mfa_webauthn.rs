//! WebAuthn (security keys and passkeys) as the second factor of web
//! sign-in, with a Rust software authenticator (webauthn-authenticator-rs's
//! `SoftPasskey`) in place of the browser's `navigator.credentials`: the
//! test fetches the options JSON from the endpoints `webauthn.js` calls, has
//! the soft authenticator answer them for the issuer's origin, and posts the
//! answer as the form would. Keys are registered on the account page (curl
//! as the browser); sign-ins go through openid-client (`mfa_flow.mjs`),
//! which validates the ID token. Refused: an unregistered authenticator, a
//! replayed assertion (no open challenge, and a stale challenge), another
//! user's credential.
//!
//! WebAuthn needs a domain name, so these servers' issuer is
//! `https://localhost:PORT` (the generated certificate names `localhost`).

use serde_json::{Value, json};
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};

use crate::common::TestServer;
use crate::mfa_web::{Browser, Rp, add_client, alert, field, forms, page_of, signed_in};

type Authenticator = WebauthnAuthenticator<SoftPasskey>;

/// A server whose members of group `mfa` need a second factor, with a
/// `localhost` issuer; returns it and the issuer.
fn server() -> (TestServer, String) {
    let mut server = TestServer::start_with(&[("PORTCULLIS_MFA__REQUIRED_GROUPS", "[\"mfa\"]")]);
    let issuer = format!("https://localhost:{}", server.http_port);
    server.env.push(("PORTCULLIS_HTTP__ISSUER".into(), issuer.clone()));
    server.restart();
    server.cli(&["group", "add", "mfa"], None);
    (server, issuer)
}

fn authenticator() -> Authenticator {
    WebauthnAuthenticator::new(SoftPasskey::new(true))
}

/// The first `value="…"` of a hidden input `name` after `marker` in `html`.
fn field_after(html: &str, marker: &str, name: &str) -> String {
    let at = html.find(marker).unwrap_or_else(|| panic!("no {marker} in: {html}"));
    field(&html[at..], name)
}

/// Registers a key on the account page as `webauthn.js` would; returns the
/// registration answer (its `id` is the credential id, base64url).
fn register(browser: &Browser, issuer: &str, key: &mut Authenticator, name: &str) -> Value {
    let account = browser.get("/account");
    assert!(account.body.contains("<h3>Security keys and passkeys</h3>"), "{}", account.body);
    let csrf = field(&account.body, "csrf");
    let options = browser.post("/account/mfa/webauthn/options", &csrf, &[]);
    assert_eq!(options.status, 200, "{}", options.body);
    assert!(options.headers.to_ascii_lowercase().contains("content-type: application/json"), "{}", options.headers);
    let options: Value = serde_json::from_str(&options.body).expect("JSON options");
    assert_eq!(options["publicKey"]["rp"]["id"], "localhost", "RP id = the issuer's host: {options}");
    assert!(options["publicKey"].get("hints").is_none_or(Value::is_null), "no hints: {options}");
    let options: CreationChallengeResponse = serde_json::from_value(options).expect("creation options");
    let answer = key.do_registration(Url::parse(issuer).unwrap(), options).expect("the soft key registers");
    let answer = serde_json::to_value(&answer).unwrap();
    let added =
        browser.post("/account/mfa/webauthn/add", &csrf, &[("name", name), ("credential", &answer.to_string())]);
    assert_eq!(
        (added.status, added.location.as_str()),
        (303, format!("{issuer}/account?done=webauthn-added").as_str())
    );
    // The same answer again: its registration challenge is spent.
    let again =
        browser.post("/account/mfa/webauthn/add", &csrf, &[("name", name), ("credential", &answer.to_string())]);
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(again.body.contains("no security key request is open"), "{}", again.body);
    answer
}

/// The sign-in options for the factor page the driver shows.
fn sign_in_options(rp: &mut Rp) -> Value {
    let answer = rp.step(json!({"cmd": "fetch_json", "path": "/signin/factor/webauthn/options",
                                "form": "/signin/factor/webauthn"}));
    assert_eq!((answer["event"].as_str(), answer["status"].as_u64()), (Some("json"), Some(200)), "{answer}");
    answer["body"].clone()
}

/// The assertion `key` makes for `options` at `issuer`.
fn assert_with(key: &mut Authenticator, issuer: &str, options: Value) -> String {
    let options: RequestChallengeResponse = serde_json::from_value(options).expect("request options");
    let answer = key.do_authentication(Url::parse(issuer).unwrap(), options).expect("the soft key signs");
    serde_json::to_string(&answer).unwrap()
}

/// `options` with its allowed credentials replaced by `credential_id`, so
/// a key that holds that credential answers it.
fn allowing(mut options: Value, credential_id: &str) -> Value {
    options["publicKey"]["allowCredentials"] = json!([{"type": "public-key", "id": credential_id}]);
    options
}

#[test]
fn security_key_sign_in() {
    let (server, issuer) = server();
    let secret = add_client(&server);
    server.add_user("kim", "kim-password-1");
    server.add_user("lee", "lee-password-1");
    server.settle();

    // The account page offers keys, with the one script from our origin.
    let kim_browser = Browser::new_at(&server, &issuer);
    let r = kim_browser.account_signin("kim", "kim-password-1");
    assert_eq!(r.status, 303, "{}", r.body);
    let account = kim_browser.get("/account");
    assert!(account.body.contains("No security keys or passkeys."), "{}", account.body);
    assert!(account.body.contains("data-webauthn=\"create\""), "{}", account.body);
    assert!(account.body.contains("<script src=\"/static/webauthn.js\"></script>"), "{}", account.body);
    let csp = account.headers.lines().find(|l| l.to_ascii_lowercase().starts_with("content-security-policy:"));
    let csp = csp.expect("a CSP").to_string();
    let script_src = csp.split(';').map(str::trim).find(|d| d.starts_with("script-src"));
    assert_eq!(script_src, Some("script-src 'self'"), "scripts from our origin only, none inline: {csp}");
    assert!(!account.body.contains(" onclick=") && !account.body.contains("<script>"), "no inline script");
    let script = kim_browser.get("/static/webauthn.js");
    assert_eq!(script.status, 200);
    assert!(script.headers.to_ascii_lowercase().contains("content-type: text/javascript"), "{}", script.headers);
    assert!(script.body.contains("navigator.credentials.create") && script.body.contains("navigator.credentials.get"));
    let forged = kim_browser.post("/account/mfa/webauthn/options", "forged", &[]);
    assert_eq!(forged.status, 403, "CSRF-protected");

    // kim registers a key, renames it; lee registers his own.
    let mut kim_key = authenticator();
    let kim_cred = register(&kim_browser, &issuer, &mut kim_key, "kim's key");
    let account = kim_browser.get("/account?done=webauthn-added");
    assert!(account.body.contains("The security key was added."), "{}", account.body);
    assert!(account.body.contains("<strong>kim&#39;s key</strong>, added"), "{}", account.body);
    let (csrf, id) = (field(&account.body, "csrf"), field_after(&account.body, "/account/mfa/webauthn/rename", "id"));
    let renamed = kim_browser.post("/account/mfa/webauthn/rename", &csrf, &[("id", &id), ("name", "Kim's YubiKey")]);
    assert_eq!(renamed.status, 303, "{}", renamed.body);
    assert!(kim_browser.get("/account").body.contains("<strong>Kim&#39;s YubiKey</strong>, added"));
    let forged = kim_browser.post("/account/mfa/webauthn/rename", "forged", &[("id", &id), ("name", "x")]);
    assert_eq!(forged.status, 403, "CSRF-protected");
    let lee_browser = Browser::new_at(&server, &issuer);
    lee_browser.account_signin("lee", "lee-password-1");
    let mut lee_key = authenticator();
    let lee_cred = register(&lee_browser, &issuer, &mut lee_key, "lee's key");
    let audit = server.cli(&["audit", "--limit", "30"], None);
    assert!(audit.contains("mfa.webauthn_added") && audit.contains("mfa.webauthn_renamed"), "{audit}");

    server.cli(&["group", "add-member", "mfa", "kim"], None);
    server.settle();
    let mut rp = Rp::start_at(&server, &issuer, &secret);

    // The factor page offers the key (and nothing kim lacks); the options
    // name kim's credential only; the soft key's assertion signs in.
    let factor = rp.sign_in_to_factor_page("kim", "kim-password-1");
    assert_eq!(forms(&factor), ["/signin/factor/webauthn", "/signin/factor/cancel"], "{factor}");
    assert_eq!(factor["scripts"], json!(["/static/webauthn.js"]), "{factor}");
    assert!(factor["csp"].as_str().is_some_and(|c| c.contains("script-src 'self'")), "{factor}");
    let forged = rp.step(json!({"cmd": "fetch_json", "path": "/signin/factor/webauthn/options",
                                "form": "/signin/factor/webauthn", "fields": {"csrf": "forged"}}));
    assert_eq!(forged["status"], 403, "CSRF-protected: {forged}");
    let options = sign_in_options(&mut rp);
    let allowed = options["publicKey"]["allowCredentials"].as_array().expect("allowCredentials").clone();
    assert_eq!(allowed.len(), 1, "{options}");
    assert_eq!(allowed[0]["id"], kim_cred["id"], "only kim's key: {options}");
    let challenge = options["publicKey"]["challenge"].as_str().expect("challenge").to_string();
    let first = assert_with(&mut kim_key, &issuer, options);
    let done = rp.submit("/signin/factor/webauthn", json!({"credential": first}));
    let claims = signed_in(&done);
    assert_eq!(claims["preferred_username"], "kim");
    assert_eq!(claims["amr"], json!(["pwd", "hwk", "mfa"]), "{claims}");
    let sso = rp.authorize();
    assert_eq!(signed_in(&sso)["preferred_username"], "kim", "the session counts");

    // Replays: the same assertion with no open challenge, then against a
    // fresh challenge; then lee's credential for kim's sign-in. Three
    // failures end the pending sign-in.
    rp.sign_in_to_factor_page("kim", "kim-password-1");
    let replay = rp.submit("/signin/factor/webauthn", json!({"credential": first}));
    assert_eq!(replay["status"], 401, "{replay}");
    assert!(alert(&replay).contains("not accepted"), "{replay}");
    sign_in_options(&mut rp);
    let stale = rp.submit("/signin/factor/webauthn", json!({"credential": first}));
    assert_eq!(stale["status"], 401, "a signature over an old challenge: {stale}");
    let options = sign_in_options(&mut rp);
    let lees = assert_with(&mut lee_key, &issuer, allowing(options, lee_cred["id"].as_str().unwrap()));
    let over = rp.submit("/signin/factor/webauthn", json!({"credential": lees}));
    assert_eq!(over["title"], "Sign in", "back to the password after three failures: {over}");
    assert!(alert(&over).contains("3 failed attempts"), "{over}");

    // An authenticator nobody registered (its credential made for the same
    // RP by another relying-party instance): refused. Without JavaScript the
    // form posts no answer: a message, not a failure. Then kim's key, whose
    // signature counter moved on, still signs in.
    let mut stranger = authenticator();
    let rp_elsewhere = webauthn_rs::prelude::WebauthnBuilder::new("localhost", &Url::parse(&issuer).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let (creation, _state) = rp_elsewhere
        .start_securitykey_registration(webauthn_rs::prelude::Uuid::new_v4(), "kim", "kim", None, None, None)
        .unwrap();
    let stranger_cred = stranger.do_registration(Url::parse(&issuer).unwrap(), creation).unwrap();
    let factor = rp.sign_in_to_factor_page("kim", "kim-password-1");
    page_of(&factor);
    let options = sign_in_options(&mut rp);
    let unknown = assert_with(&mut stranger, &issuer, allowing(options, &stranger_cred.id));
    let refused = rp.submit("/signin/factor/webauthn", json!({"credential": unknown}));
    assert_eq!(refused["status"], 401, "an unregistered authenticator: {refused}");
    let nojs = rp.submit("/signin/factor/webauthn", json!({}));
    assert_eq!(nojs["status"], 400, "{nojs}");
    assert!(alert(&nojs).contains("needs JavaScript"), "{nojs}");
    let options = sign_in_options(&mut rp);
    let done = rp.submit("/signin/factor/webauthn", json!({"credential": assert_with(&mut kim_key, &issuer, options)}));
    assert_eq!(signed_in(&done)["amr"], json!(["pwd", "hwk", "mfa"]));

    // lee removes his key on the account page (audited).
    let account = lee_browser.get("/account");
    let (csrf, id) = (field(&account.body, "csrf"), field_after(&account.body, "/account/mfa/webauthn/remove", "id"));
    let removed = lee_browser.post("/account/mfa/webauthn/remove", &csrf, &[("id", &id)]);
    assert_eq!(removed.status, 303, "{}", removed.body);
    assert!(lee_browser.get("/account").body.contains("No security keys or passkeys."));
    let audit = server.cli(&["audit", "--limit", "50"], None);
    assert!(audit.contains("mfa.webauthn_removed") && audit.contains("mfa.webauthn_used"), "{audit}");
    let log = server.log();
    // Each refusal for its own reason (the reasons are only in the log).
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("security key refused")).collect();
    assert_eq!(refusals.len(), 4, "{refusals:#?}");
    assert!(refusals[0].contains("no security key request is open"), "replay, no challenge: {}", refusals[0]);
    assert!(refusals[1].contains("challenge differs"), "replay, stale challenge: {}", refusals[1]);
    assert!(refusals[2..].iter().all(|l| l.contains("could not be found")), "not kim's credential: {refusals:#?}");
    assert!(!log.contains(&challenge), "challenges never reach the log");
    assert!(!log.contains(kim_cred["id"].as_str().unwrap()), "credential ids never reach the log");
}

#[test]
fn ip_issuer_offers_no_security_keys() {
    // The default test issuer is https://127.0.0.1:PORT: browsers refuse
    // WebAuthn on IP addresses, so the account page says so and offers no form.
    let server = TestServer::start();
    server.add_user("ivy", "ivy-password-1");
    server.settle();
    let browser = Browser::new(&server);
    browser.account_signin("ivy", "ivy-password-1");
    let account = browser.get("/account");
    assert!(account.body.contains("need this server to be reached by a domain name"), "{}", account.body);
    assert!(!account.body.contains("data-webauthn") && !account.body.contains("<script"), "{}", account.body);
    let csrf = field(&account.body, "csrf");
    let options = browser.post("/account/mfa/webauthn/options", &csrf, &[]);
    assert_eq!(options.status, 400, "{}", options.body);
}
