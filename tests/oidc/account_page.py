"""Browser-like walk through the "my account" pages: sign in, profile,
password change (with its refusals), two sessions and revoking one, CSRF,
sign-out. Usage: account_page.py ISSUER CA_FILE USER OLD_PASSWORD NEW_PASSWORD
Prints one JSON line; exits non-zero on any failure."""

import json
import os
import re
import sys

import requests

issuer, ca, user, old, new = sys.argv[1:6]
os.environ["REQUESTS_CA_BUNDLE"] = ca
out = {}


def csrf(html):
    return re.search(r'name="csrf" value="([^"]*)"', html).group(1)


def sign_in(browser, password):
    page = browser.get(f"{issuer}/account")
    assert "Sign in to manage your account" in page.text, page.text[:200]
    return browser.post(f"{issuer}/account/signin", allow_redirects=False,
                        data={"csrf": csrf(page.text), "username": user, "password": password})


b1 = requests.Session()
r = sign_in(b1, "wrong-password")
out["wrong_password"] = r.status_code
r = sign_in(b1, old)
out["signin"] = [r.status_code, r.headers.get("location")]
page = b1.get(f"{issuer}/account")
out["profile_shows_user"] = f"<dd>{user}</dd>" in page.text
out["csp"] = "default-src 'none'" in page.headers.get("content-security-policy", "")
token = csrf(page.text)
post = lambda data: b1.post(f"{issuer}/account/password", data=dict(csrf=token, **data), allow_redirects=False)
out["mismatch"] = post({"current": old, "new": new, "confirm": new + "x"}).status_code
out["wrong_current"] = post({"current": "nope-nope", "new": new, "confirm": new}).status_code
out["no_csrf"] = b1.post(f"{issuer}/account/password", data={"csrf": "", "current": old, "new": new, "confirm": new}).status_code
r = post({"current": old, "new": new, "confirm": new})
out["changed"] = [r.status_code, r.headers.get("location")]

b2 = requests.Session()
out["old_password_after_change"] = sign_in(b2, old).status_code
out["new_password_signin"] = sign_in(b2, new).status_code
page = b1.get(f"{issuer}/account")
ids = re.findall(r'name="id" value="([^"]*)"', page.text)
out["sessions_listed"] = len(ids)
other = [i for i in ids if f'value="{i}"' in page.text and "(this browser)" not in page.text.split(f'value="{i}"')[0].rsplit("<li>", 1)[-1]]
r = b1.post(f"{issuer}/account/sessions/revoke", data={"csrf": csrf(page.text), "id": other[0]}, allow_redirects=False)
out["revoke"] = r.status_code
out["other_browser_signed_out"] = "Sign in to manage your account" in b2.get(f"{issuer}/account").text
page = b1.get(f"{issuer}/account")
b1.post(f"{issuer}/account/signout", data={"csrf": csrf(page.text)})
out["signed_out"] = "Sign in to manage your account" in b1.get(f"{issuer}/account").text
print(json.dumps(out))
