// Relying-party check with openid-client (v6): discovery, the authorization-
// code flow with PKCE S256, state and nonce, driven like a browser (cookie
// jar, sign-in form), ID-token validation with the signature checked against
// the provider's JWKS, userinfo; then single sign-on with client_secret_post,
// and a JWKS holding a foreign key under the provider's kid, which must make
// the same flow fail. With offline_access, openid-client also introspects
// both tokens, refreshes (rotation, ID token checked again), replays the spent
// refresh token (which revokes the family), and revokes the SSO flow's tokens.
//
// Usage: node code_flow.mjs ISSUER CLIENT_ID CLIENT_SECRET USER PASSWORD [ID_TOKEN_ALG]
// ID_TOKEN_ALG (RS256, ES256, EdDSA) is registered as the client's
// id_token_signed_response_alg: openid-client then accepts only that alg.
// Trust the provider's CA with NODE_EXTRA_CA_CERTS (read at process start).
// Prints one JSON line with what it saw; exits non-zero on any failure.

import { generateKeyPairSync } from 'node:crypto';
import * as client from 'openid-client';

const [issuer, clientId, secret, user, password, idTokenAlg] = process.argv.slice(2);
if (!password) {
  console.error('usage: node code_flow.mjs ISSUER CLIENT_ID CLIENT_SECRET USER PASSWORD [ID_TOKEN_ALG]');
  process.exit(2);
}
// Client metadata as registered with the provider.
const metadata = idTokenAlg ? { id_token_signed_response_alg: idTokenAlg } : undefined;
const REDIRECT = 'https://app.example.org/cb';
const SCOPE = 'openid profile email groups offline_access';

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

// What an introspection response says about a token, as far as the test cares.
async function introspect(config, token) {
  const r = await client.tokenIntrospection(config, token);
  return r.active ? { active: true, sub: r.sub, client_id: r.client_id, token_type: r.token_type } : { active: false };
}

// The OAuth error code (or HTTP status) a call that must fail failed with.
async function refusal(promise) {
  try {
    await promise;
    return 'accepted';
  } catch (e) {
    if (e instanceof client.ResponseBodyError) return e.error;
    if (e instanceof client.WWWAuthenticateChallengeError) return e.status;
    throw e;
  }
}

// A browser's cookie jar, as far as this flow needs one.
const jar = new Map();
async function browse(url, init = {}) {
  const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  const res = await fetch(url, { ...init, redirect: 'manual', headers: { ...init.headers, cookie } });
  for (const line of res.headers.getSetCookie()) {
    const [pair, ...attrs] = line.split(';').map((s) => s.trim());
    const name = pair.slice(0, pair.indexOf('='));
    const lower = attrs.map((a) => a.toLowerCase());
    if (name.startsWith('__Host-')) {
      // What a browser demands of a __Host- cookie before storing it.
      check(lower.includes('secure') && lower.includes('path=/') && !lower.some((a) => a.startsWith('domain=')),
        `__Host- cookie attributes: ${line}`);
    }
    jar.set(name, pair.slice(name.length + 1));
  }
  return res;
}

function field(html, name) {
  const m = html.match(new RegExp(`name="${name}" value="([^"]*)"`));
  check(m, `no ${name} field in: ${html.slice(0, 300)}`);
  return m[1].replaceAll('&quot;', '"').replaceAll('&#39;', "'").replaceAll('&lt;', '<').replaceAll('&gt;', '>')
    .replaceAll('&amp;', '&');
}

// Starts a flow; signs in through the form when the provider shows it.
// Returns the callback URL the browser was sent to, and the checks for it.
async function authorize(config) {
  const pkceCodeVerifier = client.randomPKCECodeVerifier();
  const expectedState = client.randomState();
  const expectedNonce = client.randomNonce();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: REDIRECT,
    scope: SCOPE,
    code_challenge: await client.calculatePKCECodeChallenge(pkceCodeVerifier),
    code_challenge_method: 'S256',
    state: expectedState,
    nonce: expectedNonce,
  });
  let res = await browse(url);
  let signedIn = false;
  if (res.status === 200) {
    const html = await res.text();
    check(html.includes('Sign in') && jar.has('__Host-portcullis_csrf'), 'sign-in page with a CSRF cookie');
    const form = html.match(/<form method="post" action="([^"]*)"/);
    check(form, 'a POST form on the sign-in page');
    const action = new URL(form[1], url);
    const body = new URLSearchParams({ csrf: field(html, 'csrf'), request: field(html, 'request'), username: user, password });
    res = await browse(action, { method: 'POST', body });
    signedIn = true;
  }
  check([302, 303].includes(res.status), `redirect to the client, got ${res.status}: ${(await res.text()).slice(0, 300)}`);
  check(!signedIn || jar.has('__Host-portcullis_session'), 'session cookie set at sign-in');
  const callback = new URL(res.headers.get('location'));
  check(callback.href.startsWith(`${REDIRECT}?`), `callback ${callback.href}`);
  check(callback.searchParams.get('iss') === issuer, 'iss in the authorization response (RFC 9207)');
  return { callback, signedIn, checks: { pkceCodeVerifier, expectedState, expectedNonce, idTokenExpected: true } };
}

async function main() {
  const out = {};
  // Discovery; the Configuration checks that the metadata's issuer is ours.
  const config = await client.discovery(new URL(issuer), clientId, metadata, client.ClientSecretBasic(secret));
  const meta = config.serverMetadata();
  // Without this, openid-client trusts an ID token from the token endpoint on
  // TLS alone; with it, the signature is checked against jwks_uri.
  client.enableNonRepudiationChecks(config);

  // The flow: authorizationCodeGrant checks state, iss, PKCE, and the ID
  // token's signature, iss, aud, exp, iat, nonce.
  const first = await authorize(config);
  check(first.signedIn, 'a fresh browser gets the sign-in form');
  const tokens = await client.authorizationCodeGrant(config, first.callback, first.checks);
  out.id_token = tokens.claims();
  out.id_token_header = JSON.parse(Buffer.from(tokens.id_token.split('.')[0], 'base64url'));
  out.id_token_jwt = tokens.id_token;
  out.userinfo = await client.fetchUserInfo(config, tokens.access_token, out.id_token.sub);
  out.scope = tokens.scope;
  out.refresh_token_issued = typeof tokens.refresh_token === 'string' && tokens.refresh_token.length > 0;
  out.introspect_access = await introspect(config, tokens.access_token);
  out.introspect_refresh = await introspect(config, tokens.refresh_token);

  // Refresh: rotation, and a new ID token, checked like the first (signature
  // included: non-repudiation checks are still on).
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
  out.refresh = {
    new_access_token: refreshed.access_token !== tokens.access_token,
    rotated: typeof refreshed.refresh_token === 'string' && refreshed.refresh_token !== tokens.refresh_token,
    id_token_sub: refreshed.claims()?.sub,
    id_token_aud: refreshed.claims()?.aud,
    introspect_access: await introspect(config, refreshed.access_token),
  };
  // Replaying the spent refresh token revokes the whole family: the newest
  // refresh token and access token die with it.
  out.refresh_reuse = await refusal(client.refreshTokenGrant(config, tokens.refresh_token));
  out.after_reuse_refresh = await refusal(client.refreshTokenGrant(config, refreshed.refresh_token));
  out.after_reuse_introspect_access = await introspect(config, refreshed.access_token);
  out.after_reuse_introspect_refresh = await introspect(config, refreshed.refresh_token);
  out.after_reuse_userinfo = await refusal(client.fetchUserInfo(config, refreshed.access_token, out.id_token.sub));

  // Single sign-on with the browser's session, client_secret_post this time.
  const post = new client.Configuration(meta, clientId, metadata, client.ClientSecretPost(secret));
  client.enableNonRepudiationChecks(post);
  const sso = await authorize(post);
  out.sso_signed_in_again = sso.signedIn;
  const ssoTokens = await client.authorizationCodeGrant(post, sso.callback, sso.checks);
  out.sso_sub = ssoTokens.claims().sub;
  // Revoking the refresh token (client_secret_post) revokes the family,
  // access token included.
  check(typeof ssoTokens.refresh_token === 'string', 'a refresh token in the SSO flow');
  out.sso_before_revoke_introspect = await introspect(post, ssoTokens.access_token);
  out.sso_before_revoke_userinfo_sub = (await client.fetchUserInfo(post, ssoTokens.access_token, out.sso_sub)).sub;
  await client.tokenRevocation(post, ssoTokens.refresh_token);
  out.revoked_introspect_access = await introspect(post, ssoTokens.access_token);
  out.revoked_introspect_refresh = await introspect(post, ssoTokens.refresh_token);
  out.revoked_userinfo = await refusal(client.fetchUserInfo(post, ssoTokens.access_token, out.sso_sub));
  out.revoked_refresh = await refusal(client.refreshTokenGrant(post, ssoTokens.refresh_token));

  // A JWKS with a foreign key of the same type under each of the provider's kids: the ID token's
  // signature no longer verifies, so the token response must be refused.
  // Without enableNonRepudiationChecks the same flow passes (the JWKS is
  // never fetched): that is why the option is set above. The same holds for
  // the ID token of a refresh.
  const real = await (await fetch(meta.jwks_uri)).json();
  const foreignKey = (k) => {
    const [type, options] = { RSA: ['rsa', { modulusLength: 2048 }], EC: ['ec', { namedCurve: 'P-256' }], OKP: ['ed25519', {}] }[k.kty];
    return generateKeyPairSync(type, options).publicKey.export({ format: 'jwk' });
  };
  const foreign = { keys: real.keys.map((k) => ({ ...foreignKey(k), kid: k.kid, alg: k.alg, use: k.use })) };
  const forgedConfig = (key, nonRepudiation) => {
    const forged = new client.Configuration(meta, clientId, metadata, client.ClientSecretBasic(secret));
    out[`${key}_jwks_fetched`] = false;
    forged[client.customFetch] = (url, options) => {
      if (url !== meta.jwks_uri) return fetch(url, options);
      out[`${key}_jwks_fetched`] = true;
      return Promise.resolve(Response.json(foreign));
    };
    if (nonRepudiation) client.enableNonRepudiationChecks(forged);
    return forged;
  };
  let unchecked;
  for (const [key, nonRepudiation] of [['foreign_key', true], ['foreign_key_unchecked', false]]) {
    const forged = forgedConfig(key, nonRepudiation);
    const bad = await authorize(forged);
    try {
      unchecked = await client.authorizationCodeGrant(forged, bad.callback, bad.checks);
      out[key] = 'accepted';
    } catch (e) {
      out[key] = e.cause?.message ?? e.message;
    }
  }
  // The ID token a refresh brings is checked the same way.
  check(unchecked?.refresh_token, 'a refresh token from the unchecked flow');
  try {
    await client.refreshTokenGrant(forgedConfig('foreign_key_refresh', true), unchecked.refresh_token);
    out.foreign_key_refresh = 'accepted';
  } catch (e) {
    out.foreign_key_refresh = e.cause?.message ?? e.message;
  }
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e?.stack ?? e, e?.cause ?? '');
  process.exit(1);
});
