"""Relying-party check with Authlib: discovery, the client_credentials grant,
and the resource-server side: access tokens are opaque, so a resource server
checks them with RFC 7662 introspection and drops them with RFC 7009
revocation (Authlib's OAuth2Session methods for both).

Usage: authlib_client_credentials.py ISSUER CA_FILE CLIENT_ID CLIENT_SECRET [METHOD]
       authlib_client_credentials.py ISSUER CA_FILE --introspect CLIENT_ID CLIENT_SECRET TOKEN
       authlib_client_credentials.py ISSUER CA_FILE --revoke CLIENT_ID CLIENT_SECRET TOKEN
Prints one JSON line with what it saw; exits non-zero on any failure.
"""

import json
import os
import sys

import requests
from authlib.integrations.requests_client import OAuth2Session

issuer, ca = sys.argv[1:3]
# Trust only the provider's generated CA, for every request Authlib makes.
os.environ["REQUESTS_CA_BUNDLE"] = ca
meta = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=10).json()
assert meta["issuer"] == issuer, meta

if sys.argv[3] in ("--introspect", "--revoke"):
    client_id, secret, token = sys.argv[4:7]
    session = OAuth2Session(client_id, secret)
    if sys.argv[3] == "--revoke":
        resp = session.revoke_token(meta["revocation_endpoint"], token=token)
        print(json.dumps({"status": resp.status_code}))
    else:
        resp = session.introspect_token(meta["introspection_endpoint"], token=token)
        assert resp.status_code == 200, (resp.status_code, resp.text)
        print(json.dumps(resp.json()))
    sys.exit(0)

client_id, secret = sys.argv[3:5]
method = sys.argv[5] if len(sys.argv) > 5 else "client_secret_basic"
assert method in meta["token_endpoint_auth_methods_supported"], meta
session = OAuth2Session(client_id, secret, token_endpoint_auth_method=method, scope="api.read")
token = session.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
info = session.introspect_token(meta["introspection_endpoint"], token=token["access_token"]).json()
assert info["active"] is True, info
assert info["iss"] == issuer and info["exp"] > info["iat"], info
print(json.dumps({"sub": info["sub"], "client_id": info["client_id"], "scope": token.get("scope"),
                  "introspected_scope": info["scope"], "token_type": token["token_type"],
                  "expires_in": token["expires_in"], "access_token": token["access_token"]}))
