"""Relying-party check with Authlib: the authorization-code flow with PKCE,
driven like a browser (cookie jar, sign-in form), then ID-token validation
with Authlib's own JOSE code, userinfo, single sign-on with prompt=none, and
the refusals a provider owes its clients.

Usage: authlib_code_flow.py ISSUER CA_FILE CLIENT_ID CLIENT_SECRET USER PASSWORD MODE
MODE: flow | denied | negatives | consent | expired | forwarded
Prints one JSON line with what it saw; exits non-zero on any failure.
"""

import json
import os
import re
import sys
import warnings
from urllib.parse import parse_qs, urlencode, urlparse

warnings.simplefilter("ignore")  # authlib.jose's deprecation notice

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.jose import JsonWebKey, jwt

issuer, ca, client_id, secret, user, password, mode = sys.argv[1:8]
os.environ["REQUESTS_CA_BUNDLE"] = ca
REDIRECT = "https://app.example.org/cb"
meta = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=10).json()
assert meta["issuer"] == issuer


def field(html, name):
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, f"no {name} field in: {html[:300]}"
    return m.group(1).replace("&amp;", "&").replace("&quot;", '"').replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">")


def start(browser, session, **extra):
    verifier = generate_token(64)
    nonce = generate_token(16)
    uri, state = session.create_authorization_url(
        meta["authorization_endpoint"], nonce=nonce, code_verifier=verifier, **extra
    )
    return browser.get(uri, allow_redirects=False), verifier, nonce, state


def sign_in(browser, page, username, pw, csrf=None):
    form = {
        "csrf": field(page.text, "csrf") if csrf is None else csrf,
        "request": field(page.text, "request"),
        "username": username,
        "password": pw,
    }
    return browser.post(f"{issuer}/oidc/signin", data=form, allow_redirects=False)


def new_session():
    return OAuth2Session(
        client_id, secret, scope="openid profile email groups offline_access", redirect_uri=REDIRECT,
        code_challenge_method="S256",
    )


def code_from(resp):
    assert resp.status_code in (302, 303), (resp.status_code, resp.text[:300])
    loc = resp.headers["location"]
    assert loc.startswith(REDIRECT), loc
    return loc, parse_qs(urlparse(loc).query)


out = {}
browser = requests.Session()
session = new_session()
page, verifier, nonce, state = start(browser, session)
assert page.status_code == 200 and "Sign in" in page.text, page.status_code

if mode == "denied":
    resp = sign_in(browser, page, user, password)
    out["status"] = resp.status_code
    out["not_allowed_page"] = "Not allowed" in resp.text
    out["redirected"] = "location" in resp.headers
    print(json.dumps(out))
    sys.exit(0)

def consent_post(browser, page, decision):
    form = {"csrf": field(page.text, "csrf"), "request": field(page.text, "request"), "decision": decision}
    return browser.post(f"{issuer}/oidc/consent", data=form, allow_redirects=False)


if mode == "consent":
    resp = sign_in(browser, page, user, password)
    out["consent_page"] = resp.status_code == 200 and "Allow access?" in resp.text
    denied = consent_post(browser, resp, "deny")
    out["deny_error"] = parse_qs(urlparse(denied.headers.get("location", "")).query).get("error", [None])[0]
    resp, _, _, _ = start(browser, new_session(), prompt="none")
    out["prompt_none_without_consent"] = parse_qs(urlparse(resp.headers.get("location", "")).query).get("error", [None])[0]
    s3 = new_session()
    resp, v3, _, _ = start(browser, s3)
    out["consent_page_again"] = resp.status_code == 200 and "Allow access?" in resp.text
    loc, q = code_from(consent_post(browser, resp, "allow"))
    out["allowed_token"] = "id_token" in s3.fetch_token(meta["token_endpoint"], authorization_response=loc, code_verifier=v3)
    resp, _, _, _ = start(browser, new_session(), prompt="none")
    out["remembered"] = "code" in parse_qs(urlparse(resp.headers.get("location", "")).query)
    print(json.dumps(out))
    sys.exit(0)

if mode == "expired":
    # The server runs with http.code_ttl_secs = 1: a code redeemed at once
    # works, one redeemed after 2.5 s is refused.
    loc, q = code_from(sign_in(browser, page, user, password))
    out["fresh_code"] = "id_token" in session.fetch_token(meta["token_endpoint"], authorization_response=loc, code_verifier=verifier)
    s2 = new_session()
    page, v2, _, _ = start(browser, s2, prompt="login")
    loc, q = code_from(sign_in(browser, page, user, password))
    import time
    time.sleep(2.5)
    try:
        s2.fetch_token(meta["token_endpoint"], authorization_response=loc, code_verifier=v2)
        out["expired_code"] = "accepted"
    except Exception as e:
        out["expired_code"] = str(e)
    print(json.dumps(out))
    sys.exit(0)

if mode == "forwarded":
    # The server trusts 127.0.0.1 as a proxy and locks a source out after 3
    # failures: X-Forwarded-For decides whose failures they are.
    def attempt(ip, pw):
        b = requests.Session()
        b.headers["X-Forwarded-For"] = ip
        p, _, _, _ = start(b, new_session())
        return sign_in(b, p, user, pw).status_code
    out["failures"] = [attempt("203.0.113.7", "wrong-password") for _ in range(3)]
    out["locked_source_right_password"] = attempt("203.0.113.7", password)
    out["other_source_right_password"] = attempt("203.0.113.8", password)
    print(json.dumps(out))
    sys.exit(0)

if mode == "negatives":
    # Wrong password: the form again, 401, no redirect.
    resp = sign_in(browser, page, user, "wrong-password")
    out["wrong_password_status"] = resp.status_code
    # Missing CSRF token: 403.
    resp = sign_in(browser, page, user, password, csrf="")
    out["csrf_missing_status"] = resp.status_code
    # prompt=none without a session: login_required at the redirect URI.
    resp, _, _, _ = start(requests.Session(), new_session(), prompt="none")
    out["prompt_none_error"] = parse_qs(urlparse(resp.headers.get("location", "")).query).get("error", [None])[0]
    # Unregistered redirect URI: an error page, never a redirect.
    bad = requests.get(meta["authorization_endpoint"] + "?" + urlencode({
        "client_id": client_id, "redirect_uri": "https://evil.example.org/cb", "response_type": "code",
        "scope": "openid", "state": "s"}), allow_redirects=False)
    out["bad_redirect_status"] = bad.status_code
    out["bad_redirect_location"] = bad.headers.get("location")
    # A good sign-in, then: PKCE mismatch, and code reuse.
    page, verifier, nonce, state = start(browser, session)
    loc, q = code_from(sign_in(browser, page, user, password))
    try:
        session.fetch_token(meta["token_endpoint"], authorization_response=loc, code_verifier=generate_token(64))
        out["pkce_mismatch"] = "accepted"
    except Exception as e:  # authlib raises OAuthError
        out["pkce_mismatch"] = str(e).split(":")[0]
    # That code was consumed by the failed attempt; a fresh one, used twice.
    page, verifier, nonce, state = start(browser, new_session(), prompt="login")
    loc, q = code_from(sign_in(browser, page, user, password))
    s2 = new_session()
    s2.fetch_token(meta["token_endpoint"], authorization_response=loc, code_verifier=verifier, state=q["state"][0])
    assert s2.get(meta["userinfo_endpoint"]).status_code == 200
    try:
        new_session().fetch_token(meta["token_endpoint"], authorization_response=loc, code_verifier=verifier)
        out["code_reuse"] = "accepted"
    except Exception as e:
        out["code_reuse"] = str(e).split(":")[0]
    # The reuse revoked what the first redemption issued.
    out["after_code_reuse_userinfo"] = s2.get(meta["userinfo_endpoint"]).status_code
    # response_mode=form_post: an HTML form that POSTs code and state to the client.
    fp_session = new_session()
    resp, fp_verifier, _, fp_state = start(browser, fp_session, response_mode="form_post")
    action = re.search(r'<form method="post" action="([^"]*)"', resp.text)
    out["form_post"] = {
        "status": resp.status_code,
        "action": action.group(1) if action else None,
        "state_ok": field(resp.text, "state") == fp_state,
        "csp_script_hash": "script-src 'sha256-" in resp.headers.get("content-security-policy", ""),
    }
    fp_token = fp_session.fetch_token(meta["token_endpoint"], code=field(resp.text, "code"), code_verifier=fp_verifier)
    out["form_post"]["token"] = "id_token" in fp_token
    print(json.dumps(out))
    sys.exit(0)

assert mode == "flow", mode
resp = sign_in(browser, page, user, password)
loc, q = code_from(resp)
assert q["state"] == [state] and q["iss"] == [issuer], q
assert any(c.name == "__Host-portcullis_session" and c.secure for c in browser.cookies), browser.cookies
token = session.fetch_token(meta["token_endpoint"], authorization_response=loc, code_verifier=verifier)
keys = JsonWebKey.import_key_set(requests.get(meta["jwks_uri"], timeout=10).json())
claims = jwt.decode(token["id_token"], keys, claims_options={
    "iss": {"essential": True, "value": issuer},
    "aud": {"essential": True, "value": client_id},
    "nonce": {"essential": True, "value": nonce},
    "exp": {"essential": True},
})
claims.validate()
out["id_token"] = dict(claims)
out["id_token_alg"] = claims.header["alg"]
out["userinfo"] = session.get(meta["userinfo_endpoint"]).json()


def introspect(tok):
    r = requests.post(meta["introspection_endpoint"], data={"token": tok}, auth=(client_id, secret), timeout=10)
    return r.json()["active"]


# Refresh: rotation, then reuse detection revokes the whole family.
first_refresh = token["refresh_token"]
out["introspect_access"] = introspect(token["access_token"])
out["introspect_refresh"] = introspect(first_refresh)
rotated = session.refresh_token(meta["token_endpoint"], refresh_token=first_refresh)
out["refresh_rotated"] = rotated["refresh_token"] != first_refresh
out["refreshed_id_token_sub"] = jwt.decode(rotated["id_token"], keys)["sub"]
try:
    new_session().refresh_token(meta["token_endpoint"], refresh_token=first_refresh)
    out["refresh_reuse"] = "accepted"
except Exception as e:
    out["refresh_reuse"] = str(e).split(":")[0]
try:
    new_session().refresh_token(meta["token_endpoint"], refresh_token=rotated["refresh_token"])
    out["after_reuse_rotated"] = "accepted"
except Exception as e:
    out["after_reuse_rotated"] = str(e).split(":")[0]
out["after_reuse_introspect"] = introspect(rotated["access_token"])

# Single sign-on: the browser session satisfies prompt=none at once.
sso_session = new_session()
resp, verifier2, nonce2, _ = start(browser, sso_session, prompt="none")
loc2, q2 = code_from(resp)
t2 = sso_session.fetch_token(meta["token_endpoint"], authorization_response=loc2, code_verifier=verifier2)
out["sso_sub"] = jwt.decode(t2["id_token"], keys)["sub"]
# Revocation (RFC 7009) of the refresh token ends the whole family.
sso_session.revoke_token(meta["revocation_endpoint"], token=t2["refresh_token"], token_type_hint="refresh_token")
out["revoked_introspect"] = introspect(t2["access_token"])
out["revoked_userinfo"] = sso_session.get(meta["userinfo_endpoint"]).status_code

# RP-initiated logout: an unregistered return address gets an error page, no redirect.
evil = browser.get(meta["end_session_endpoint"], params={
    "id_token_hint": t2["id_token"], "post_logout_redirect_uri": "https://evil.example.org/"}, allow_redirects=False)
out["logout_open_redirect"] = [evil.status_code, evil.headers.get("location")]
bye = browser.get(meta["end_session_endpoint"], params={
    "id_token_hint": t2["id_token"], "post_logout_redirect_uri": "https://app.example.org/bye", "state": "st8"},
    allow_redirects=False)
out["logout_redirect"] = [bye.status_code, bye.headers.get("location")]
resp, _, _, _ = start(browser, new_session(), prompt="none")
out["after_logout_prompt_none"] = parse_qs(urlparse(resp.headers.get("location", "")).query).get("error", [None])[0]
print(json.dumps(out))
