"""Relying-party check with Authlib: discovery, client_credentials grant, and
JWT access-token validation against the provider's JWKS (Authlib's own JOSE
code, independent of Portcullis's signer).

Usage: authlib_client_credentials.py ISSUER CA_FILE CLIENT_ID CLIENT_SECRET [METHOD]
       authlib_client_credentials.py ISSUER CA_FILE --verify TOKEN
Prints one JSON line with what it saw; exits non-zero on any failure.
"""

import base64
import json
import os
import sys
import warnings

warnings.simplefilter("ignore")  # authlib.jose's deprecation notice

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.jose import JsonWebKey, jwt

issuer, ca, client_id, secret = sys.argv[1:5]
method = sys.argv[5] if len(sys.argv) > 5 else "client_secret_basic"
# Trust only the provider's generated CA, for every request Authlib makes.
os.environ["REQUESTS_CA_BUNDLE"] = ca


def verify(meta, access_token):
    keys = JsonWebKey.import_key_set(requests.get(meta["jwks_uri"], timeout=10).json())
    claims = jwt.decode(
        access_token,
        keys,
        claims_options={"iss": {"essential": True, "value": issuer}, "exp": {"essential": True}},
    )
    claims.validate()
    return claims

meta = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=10).json()
assert meta["issuer"] == issuer, meta
if client_id == "--verify":
    print(json.dumps({"sub": verify(meta, secret)["sub"]}))
    sys.exit(0)
assert method in meta["token_endpoint_auth_methods_supported"], meta

session = OAuth2Session(client_id, secret, token_endpoint_auth_method=method, scope="api.read")
token = session.fetch_token(meta["token_endpoint"], grant_type="client_credentials")

claims = verify(meta, token["access_token"])
header = json.loads(base64.urlsafe_b64decode(token["access_token"].split(".")[0] + "=="))
print(json.dumps({"sub": claims["sub"], "client_id": claims["client_id"], "scope": token.get("scope"),
                  "kid": header["kid"], "alg": header["alg"], "typ": header.get("typ"),
                  "token_type": token["token_type"], "access_token": token["access_token"]}))
