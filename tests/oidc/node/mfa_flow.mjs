// Relying party (openid-client v6) plus a scripted browser for sign-ins with
// a second factor. The test drives it one step at a time over stdin/stdout,
// because some steps need an outside actor (the approval device answering a
// push, a TOTP code computed by the test) between two page loads.
//
// Usage: node mfa_flow.mjs ISSUER CLIENT_ID CLIENT_SECRET
// Trust the provider's CA with NODE_EXTRA_CA_CERTS.
//
// Commands, one JSON object per stdin line; each answers with one JSON line:
//   {"cmd":"authorize", "prompt"?: "login", "max_age"?: N}
//       a new authorization request (PKCE S256, state, nonce)
//   {"cmd":"password", "user":U, "password":P}   submits the sign-in form
//   {"cmd":"submit", "action":A, "fields"?:{..}} submits the form posting to A
//       on the current page (its hidden fields, CSRF included, plus fields)
//   {"cmd":"refresh"}       follows the page's <meta http-equiv="refresh">
//   {"cmd":"wait_push", "timeout"?: S}  refreshes until the page stops waiting
//   {"cmd":"get", "path":P} loads a page of the provider
//   {"cmd":"fetch_json", "path":P, "form":A, "fields"?:{..}}  POSTs the hidden
//       fields of the form posting to A on the current page (plus fields) to
//       P, as webauthn.js does for WebAuthn options; the page stays as it is
//   {"cmd":"new_browser"}   forgets every cookie
// Answers:
//   {"event":"tokens", "claims":{..}, "userinfo":{..}}: the browser reached
//       the client with a code; openid-client redeemed it and validated the
//       ID token (signature against the JWKS, iss, aud, nonce, state, PKCE)
//   {"event":"error_redirect", "error":E}: the client got an error response
//   {"event":"page", "status":N, "title":T, "alert":A, "number":N, "forms":[..],
//       "refresh":URL, "scripts":[..], "csp":C}: an HTML page of the provider
//   {"event":"json", "status":N, "body":{..}}: the answer to fetch_json
//   {"event":"failed", "message":M}: the driver could not do the step

import * as readline from 'node:readline';
import * as client from 'openid-client';

const [issuer, clientId, secret] = process.argv.slice(2);
if (!secret) {
  console.error('usage: node mfa_flow.mjs ISSUER CLIENT_ID CLIENT_SECRET');
  process.exit(2);
}
const REDIRECT = 'https://app.example.org/cb';
const SCOPE = 'openid profile';

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

// A browser's cookie jar, as far as these flows need one.
const jar = new Map();
async function browse(url, init = {}) {
  const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  const res = await fetch(url, { ...init, redirect: 'manual', headers: { ...init.headers, cookie } });
  for (const line of res.headers.getSetCookie()) {
    const [pair, ...attrs] = line.split(';').map((s) => s.trim());
    const name = pair.slice(0, pair.indexOf('='));
    const lower = attrs.map((a) => a.toLowerCase());
    if (name.startsWith('__Host-')) {
      check(lower.includes('secure') && lower.includes('path=/') && !lower.some((a) => a.startsWith('domain=')),
        `__Host- cookie attributes: ${line}`);
    }
    if (lower.includes('max-age=0')) jar.delete(name);
    else jar.set(name, pair.slice(name.length + 1));
  }
  return res;
}

const unescape = (s) => s.replaceAll('&quot;', '"').replaceAll('&#39;', "'").replaceAll('&lt;', '<')
  .replaceAll('&gt;', '>').replaceAll('&amp;', '&');
const text = (html) => unescape(html.replace(/<[^>]*>/g, '')).trim();

// The POST forms of a page: action → hidden fields.
function forms(html) {
  const found = new Map();
  for (const m of html.matchAll(/<form method="post" action="([^"]*)"[^>]*>([\s\S]*?)<\/form>/g)) {
    const fields = {};
    for (const f of m[2].matchAll(/<input type="hidden" name="([^"]*)" value="([^"]*)">/g)) {
      fields[f[1]] = unescape(f[2]);
    }
    if (!found.has(unescape(m[1]))) found.set(unescape(m[1]), fields);
  }
  return found;
}

const config = await client.discovery(new URL(issuer), clientId, undefined, client.ClientSecretBasic(secret));
client.enableNonRepudiationChecks(config);

let flow = null; // The current authorization request's checks.
let current = { url: null, html: '' }; // The page the browser shows.

// Turns a response into an answer, following same-origin redirects.
async function land(res, url) {
  for (let hops = 0; hops < 5 && [302, 303].includes(res.status); hops++) {
    const location = new URL(res.headers.get('location'), url);
    if (location.href.startsWith(`${REDIRECT}?`)) {
      if (location.searchParams.has('error')) return { event: 'error_redirect', error: location.searchParams.get('error') };
      check(flow, 'a code without an authorization request');
      check(location.searchParams.get('iss') === issuer, 'iss in the authorization response (RFC 9207)');
      const tokens = await client.authorizationCodeGrant(config, location, flow);
      flow = null;
      const claims = tokens.claims();
      const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
      return { event: 'tokens', claims, userinfo };
    }
    check(location.origin === new URL(issuer).origin, `redirect to ${location.href}`);
    url = location;
    res = await browse(url);
  }
  const html = await res.text();
  current = { url, html };
  const title = html.match(/<h1>([\s\S]*?)<\/h1>/);
  const alert = html.match(/<p role="alert"[^>]*>([\s\S]*?)<\/p>/);
  const number = html.match(/<span class="number" id="number">(\d+)<\/span>/);
  const refresh = html.match(/<meta http-equiv="refresh" content="(\d+);url=([^"]*)">/);
  const scripts = [...html.matchAll(/<script src="([^"]*)"><\/script>/g)].map((m) => unescape(m[1]));
  return {
    event: 'page',
    status: res.status,
    title: title ? text(title[1]) : null,
    alert: alert ? text(alert[1]) : null,
    number: number ? Number(number[1]) : null,
    forms: [...forms(html).keys()],
    refresh: refresh ? new URL(unescape(refresh[2]), url).href : null,
    refresh_secs: refresh ? Number(refresh[1]) : null,
    scripts,
    csp: res.headers.get('content-security-policy'),
  };
}

async function submit(action, extra) {
  const all = forms(current.html);
  check(all.has(action), `no form posting to ${action} on ${current.url}: ${current.html.slice(0, 400)}`);
  const url = new URL(action, current.url);
  const body = new URLSearchParams({ ...all.get(action), ...extra });
  return land(await browse(url, { method: 'POST', body }), url);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function refresh() {
  const m = current.html.match(/<meta http-equiv="refresh" content="(\d+);url=([^"]*)">/);
  check(m, 'the page does not refresh itself');
  await sleep(Number(m[1]) * 1000);
  const url = new URL(unescape(m[2]), current.url);
  return land(await browse(url), url);
}

async function step(cmd) {
  switch (cmd.cmd) {
    case 'authorize': {
      const pkceCodeVerifier = client.randomPKCECodeVerifier();
      const expectedState = client.randomState();
      const expectedNonce = client.randomNonce();
      const params = {
        redirect_uri: REDIRECT,
        scope: SCOPE,
        code_challenge: await client.calculatePKCECodeChallenge(pkceCodeVerifier),
        code_challenge_method: 'S256',
        state: expectedState,
        nonce: expectedNonce,
      };
      if (cmd.prompt) params.prompt = cmd.prompt;
      if (cmd.max_age !== undefined) params.max_age = String(cmd.max_age);
      const url = client.buildAuthorizationUrl(config, params);
      flow = { pkceCodeVerifier, expectedState, expectedNonce, idTokenExpected: true };
      if (cmd.max_age !== undefined) flow.maxAge = cmd.max_age;
      return land(await browse(url), url);
    }
    case 'password':
      return submit('/oidc/signin', { username: cmd.user, password: cmd.password });
    case 'submit':
      return submit(cmd.action, cmd.fields ?? {});
    case 'refresh':
      return refresh();
    case 'wait_push': {
      const deadline = Date.now() + (cmd.timeout ?? 30) * 1000;
      let answer;
      do {
        answer = await refresh();
      } while (answer.event === 'page' && answer.refresh && Date.now() < deadline);
      return answer;
    }
    case 'get': {
      const url = new URL(cmd.path, issuer);
      return land(await browse(url), url);
    }
    case 'fetch_json': {
      const all = forms(current.html);
      check(all.has(cmd.form), `no form posting to ${cmd.form} on ${current.url}`);
      const url = new URL(cmd.path, current.url);
      const body = new URLSearchParams({ ...all.get(cmd.form), ...(cmd.fields ?? {}) });
      const res = await browse(url, { method: 'POST', body, headers: { accept: 'application/json' } });
      check((res.headers.get('content-type') ?? '').startsWith('application/json'), `JSON from ${url}`);
      return { event: 'json', status: res.status, body: await res.json() };
    }
    case 'new_browser':
      jar.clear();
      flow = null;
      current = { url: null, html: '' };
      return { event: 'ok' };
    default:
      throw new Error(`unknown command ${cmd.cmd}`);
  }
}

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let answer;
  try {
    answer = await step(JSON.parse(line));
  } catch (e) {
    answer = { event: 'failed', message: `${e?.message ?? e} ${e?.cause?.message ?? ''}`.trim() };
  }
  console.log(JSON.stringify(answer));
}
